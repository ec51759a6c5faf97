"""System DLLs that Debian's Wine (8.0) lacks, as forwarder-only PE files written here.

Programs built with current Go (1.22+) and Rust toolchains import ``ProcessPrng``
from ``bcryptprimitives.dll``, a DLL Wine only gained in 9.x.  Without it such a
program stops at load (``c0000135``) and is reported ``not_executed`` -- a modern
Go stealer would never run.  The export only forwards to a function Wine has
(``ADVAPI32.SystemFunction036``, i.e. ``RtlGenRandom``, which fills a buffer the
same way), so the DLL holds no code at all: a DOS and PE header, one section
with the export directory and the forwarder strings.  Both a 64-bit (system32)
and a 32-bit (syswow64) copy go into every detonation prefix.

Standard library only (runs inside the guest).
"""

from __future__ import annotations

import os
import struct

#: dll name -> {export: "DLL.Function" it forwards to}
STUBS: dict[str, dict[str, str]] = {
    "bcryptprimitives.dll": {"ProcessPrng": "ADVAPI32.SystemFunction036"},
}

_FILE_ALIGN = 0x200
_SECT_ALIGN = 0x1000
_RVA = 0x1000


def _align(n: int, a: int) -> int:
    return (n + a - 1) // a * a


def forwarder_dll(name: str, exports: dict[str, str], pe64: bool) -> bytes:
    """A PE DLL (x86-64 when ``pe64``, else i386) whose every export forwards elsewhere."""
    names = sorted(exports)  # the loader binary-searches the name table
    n = len(names)
    # export directory (40) + function RVAs + name RVAs + ordinals, then the strings
    head = 40 + 4 * n + 4 * n + 2 * n
    strings = bytearray()
    offs: dict[str, int] = {}

    def add(text: str) -> int:
        off = _RVA + head + len(strings)
        strings.extend(text.encode("ascii") + b"\0")
        return off

    dll_name = add(name)
    for e in names:
        offs["n:" + e] = add(e)
        offs["f:" + e] = add(exports[e])
    size = head + len(strings)
    # Characteristics, TimeDateStamp, versions, Name, Base, counts, the three table RVAs
    edata = bytearray(struct.pack("<IIHHIIIIIII", 0, 0, 0, 0, dll_name, 1, n, n,
                                  _RVA + 40, _RVA + 40 + 4 * n, _RVA + 40 + 8 * n))
    edata += b"".join(struct.pack("<I", offs["f:" + e]) for e in names)
    edata += b"".join(struct.pack("<I", offs["n:" + e]) for e in names)
    edata += b"".join(struct.pack("<H", i) for i in range(n))
    edata += strings
    raw = bytes(edata).ljust(_align(len(edata), _FILE_ALIGN), b"\0")

    if pe64:
        machine, characteristics, magic, opt_size = 0x8664, 0x2022, 0x20B, 0xF0
    else:
        machine, characteristics, magic, opt_size = 0x14C, 0x2102, 0x10B, 0xE0
    image_size = _SECT_ALIGN + _align(len(edata), _SECT_ALIGN)
    dos = b"MZ" + b"\0" * 58 + struct.pack("<I", 0x40)
    coff = b"PE\0\0" + struct.pack("<HHIIIHH", machine, 1, 0, 0, 0, opt_size, characteristics)
    if pe64:
        opt = struct.pack("<HBBIIIIIQIIHHHHHHIIIIHHQQQQII", magic, 0, 0, 0, len(raw), 0, 0, _RVA,
                          0x180000000, _SECT_ALIGN, _FILE_ALIGN, 6, 0, 0, 0, 6, 0, 0, image_size, _FILE_ALIGN,
                          0, 3, 0x0100, 0x100000, 0x1000, 0x100000, 0x1000, 0, 16)
    else:
        opt = struct.pack("<HBBIIIIIIIIIHHHHHHIIIIHHIIIIII", magic, 0, 0, 0, len(raw), 0, 0, _RVA, _RVA,
                          0x10000000, _SECT_ALIGN, _FILE_ALIGN, 6, 0, 0, 0, 6, 0, 0, image_size, _FILE_ALIGN,
                          0, 3, 0x0100, 0x100000, 0x1000, 0x100000, 0x1000, 0, 16)
    dirs = struct.pack("<II", _RVA, size) + b"\0" * 8 * 15
    section = struct.pack("<8sIIIIIIHHI", b".edata", len(edata), _RVA, len(raw), _FILE_ALIGN, 0, 0, 0, 0,
                          0x40000040)
    headers = (dos + coff + opt + dirs + section).ljust(_FILE_ALIGN, b"\0")
    return headers + raw


def install(prefix: str, uid: int = -1, gid: int = -1) -> list[str]:
    """Write the stub DLLs into a Wine prefix (64-bit in system32, 32-bit in syswow64) where missing."""
    written = []
    for sub, pe64 in (("system32", True), ("syswow64", False)):
        folder = os.path.join(prefix, "drive_c", "windows", sub)
        if not os.path.isdir(folder):
            continue
        for dll, exports in STUBS.items():
            path = os.path.join(folder, dll)
            if os.path.lexists(path):
                continue
            with open(path, "wb") as fh:
                fh.write(forwarder_dll(dll, exports, pe64))
            if uid >= 0:
                os.chown(path, uid, gid)
            written.append(path)
    return written
