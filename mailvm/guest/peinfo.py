"""What the launchers need to know about a Windows PE file, read with the standard library only.

The guest has no ``pefile``; this reads just enough, with every offset and
count checked and bounded, from a file that is hostile by definition:

* the machine (``i386`` / ``amd64`` / other) and whether it is a DLL, its
  subsystem and entry point;
* whether it is a .NET assembly (a CLR header in data directory 14) and, for
  one, the *name* of its entry-point method (from the ``MethodDef`` table of
  the ECMA-335 metadata), so the Mono launcher can trace that method's entry;
* its exports (names or ordinals, at most :data:`MAX_EXPORTS`), marking the
  forwarded ones and those outside executable sections, so the DLL launcher
  can call code exports through ``rundll32``.

:func:`parse` never raises on a malformed file: :attr:`PeInfo.error` says what
was wrong, and whatever was read before that is kept.
"""

from __future__ import annotations

import os
import re
import struct
from dataclasses import dataclass

MAX_READ = 64 << 20  # the part of a file the parser may look at
MAX_SECTIONS = 96
MAX_EXPORTS = 2048
MAX_NAME = 256
MACHINES = {0x014C: "i386", 0x8664: "amd64", 0xAA64: "arm64", 0x01C4: "armnt", 0x0200: "ia64"}
IMAGE_FILE_DLL = 0x2000
SCN_MEM_EXECUTE = 0x20000000
SCN_CNT_CODE = 0x00000020
COMIMAGE_FLAGS_NATIVE_ENTRYPOINT = 0x10
_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_.`<>$]{0,200}$")


@dataclass(frozen=True)
class Export:
    name: str  # the export's name, or "#<ordinal>" for an ordinal-only export
    ordinal: int
    rva: int
    forwarded: bool = False
    code: bool = True  # inside an executable section


@dataclass(frozen=True)
class PeInfo:
    machine: str = ""
    dll: bool = False
    subsystem: int = 0
    entry_rva: int = 0
    clr: bool = False
    clr_entry: str = ""  # the .NET entry method's name ("Main"), "" when none or unreadable
    clr_native_entry: bool = False
    exports: tuple[Export, ...] = ()
    exports_total: int = 0
    error: str = ""

    @property
    def bits(self) -> int:
        return 64 if self.machine in ("amd64", "arm64", "ia64") else 32


class _Bad(Exception):
    pass


class _Image:
    """Bounded reads by file offset and by RVA."""

    def __init__(self, fh, size: int) -> None:
        self.fh = fh
        self.size = min(size, MAX_READ)
        self.sections: list[tuple[int, int, int, int, int]] = []  # va, vsize, raw_off, raw_size, flags

    def read(self, off: int, n: int) -> bytes:
        if off < 0 or n < 0 or off + n > self.size:
            raise _Bad(f"read of {n} bytes at {off:#x} past the end ({self.size:#x})")
        self.fh.seek(off)
        data = self.fh.read(n)
        if len(data) != n:
            raise _Bad("short read")
        return data

    def section_of(self, rva: int) -> tuple[int, int, int, int, int] | None:
        for s in self.sections:
            va, vsize, _, raw_size, _ = s
            if va <= rva < va + max(vsize, raw_size):
                return s
        return None

    def offset(self, rva: int) -> int:
        s = self.section_of(rva)
        if s is None:
            if self.sections and rva < min(x[0] for x in self.sections):
                return rva  # inside the headers (mapped as they are in the file)
            raise _Bad(f"rva {rva:#x} in no section")
        va, _, raw_off, raw_size, _ = s
        if rva - va >= raw_size:
            raise _Bad(f"rva {rva:#x} not backed by file data")
        return raw_off + rva - va

    def read_rva(self, rva: int, n: int) -> bytes:
        return self.read(self.offset(rva), n)

    def cstring(self, rva: int, limit: int = MAX_NAME) -> str:
        off = self.offset(rva)
        data = self.read(off, min(limit, self.size - off))
        end = data.find(b"\0")
        return (data if end < 0 else data[:end]).decode("latin-1")


def is_pe(head: bytes) -> bool:
    """An ``MZ`` header whose ``e_lfanew`` points at ``PE\\0\\0`` (when it lies within ``head``)."""
    if len(head) < 0x40 or head[:2] != b"MZ":
        return False
    lfanew = struct.unpack_from("<I", head, 0x3C)[0]
    if lfanew + 4 > len(head):
        return True  # unknown from the head alone: let parse() decide
    return head[lfanew:lfanew + 4] == b"PE\0\0"


def parse(path: str) -> PeInfo | None:
    """The file's PE facts, ``None`` when it does not start with ``MZ``."""
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as fh:
            if fh.read(2) != b"MZ":
                return None
            return _parse(_Image(fh, size))
    except OSError as exc:
        return PeInfo(error=f"unreadable: {exc.strerror or exc}")


def _parse(img: _Image) -> PeInfo:
    facts: dict = {}
    try:
        lfanew = struct.unpack("<I", img.read(0x3C, 4))[0]
        if img.read(lfanew, 4) != b"PE\0\0":
            return PeInfo(error="MZ without a PE header (a DOS program?)")
        machine, nsect, _, _, _, opt_size, chars = struct.unpack("<HHIIIHH", img.read(lfanew + 4, 20))
        facts["machine"] = MACHINES.get(machine, f"0x{machine:04x}")
        facts["dll"] = bool(chars & IMAGE_FILE_DLL)
        opt = lfanew + 24
        magic = struct.unpack("<H", img.read(opt, 2))[0]
        if magic not in (0x10B, 0x20B):
            return PeInfo(**facts, error=f"unknown optional header magic {magic:#x}")
        facts["entry_rva"] = struct.unpack("<I", img.read(opt + 16, 4))[0]
        facts["subsystem"] = struct.unpack("<H", img.read(opt + 68, 2))[0]
        dd_off = opt + (96 if magic == 0x10B else 112)
        ndirs = min(struct.unpack("<I", img.read(dd_off - 4, 4))[0], 16)
        dirs = [struct.unpack("<II", img.read(dd_off + 8 * i, 8)) for i in range(ndirs)]
        sect_off = opt + opt_size
        for i in range(min(nsect, MAX_SECTIONS)):
            _name, vsize, va, raw_size, raw_off = struct.unpack("<8sIIII", img.read(sect_off + 40 * i, 24))
            flags = struct.unpack("<I", img.read(sect_off + 40 * i + 36, 4))[0]
            img.sections.append((va, vsize, raw_off, raw_size, flags))
        if len(dirs) > 14 and dirs[14][0] and dirs[14][1] >= 72:
            facts["clr"] = True
            facts.update(_clr(img, dirs[14][0]))
        if dirs and dirs[0][0] and dirs[0][1]:
            exports, total = _exports(img, dirs[0][0], dirs[0][1])
            facts["exports"], facts["exports_total"] = exports, total
    except (_Bad, struct.error) as exc:
        return PeInfo(**facts, error=str(exc) or type(exc).__name__)
    return PeInfo(**facts)


def _exports(img: _Image, rva: int, size: int) -> tuple[tuple[Export, ...], int]:
    (_, _, _, _, _, base, nfuncs, nnames, funcs_rva, names_rva,
     ords_rva) = struct.unpack("<IIHHIIIIIII", img.read_rva(rva, 40))
    nfuncs = min(nfuncs, 65536)
    nnames = min(nnames, nfuncs, 65536)
    count = min(nfuncs, MAX_EXPORTS)
    funcs = struct.unpack(f"<{count}I", img.read_rva(funcs_rva, 4 * count)) if count else ()
    names: dict[int, str] = {}
    if nnames:
        n = min(nnames, MAX_EXPORTS)
        name_rvas = struct.unpack(f"<{n}I", img.read_rva(names_rva, 4 * n))
        ords = struct.unpack(f"<{n}H", img.read_rva(ords_rva, 2 * n))
        for nrva, idx in zip(name_rvas, ords):
            if idx < count and idx not in names:
                try:
                    names[idx] = img.cstring(nrva)
                except _Bad:
                    continue
    out = []
    for idx, frva in enumerate(funcs):
        if not frva:
            continue
        sect = img.section_of(frva)
        code = bool(sect and sect[4] & (SCN_MEM_EXECUTE | SCN_CNT_CODE))
        out.append(Export(names.get(idx) or f"#{base + idx}", base + idx, frva, rva <= frva < rva + size, code))
    return tuple(out), nfuncs


# ------------------------------------------------------------------ .NET metadata (ECMA-335 II.24)


def _clr(img: _Image, rva: int) -> dict:
    cb, _, _, md_rva, md_size, flags, entry = struct.unpack("<IHHIIII", img.read_rva(rva, 24))
    out: dict = {"clr_native_entry": bool(flags & COMIMAGE_FLAGS_NATIVE_ENTRYPOINT)}
    if out["clr_native_entry"] or entry >> 24 != 0x06 or not md_rva:
        return out
    try:
        out["clr_entry"] = _method_name(img, md_rva, min(md_size, 64 << 20), entry & 0xFFFFFF)
    except (_Bad, struct.error, ValueError):
        pass  # the runtime may still run it: the proof then falls back to the module load
    return out


def _method_name(img: _Image, md_rva: int, md_size: int, row: int) -> str:
    root = img.offset(md_rva)
    if img.read(root, 4) != b"BSJB":
        raise _Bad("no metadata signature")
    vlen = struct.unpack("<I", img.read(root + 12, 4))[0]
    if vlen > 256:
        raise _Bad("metadata version string too long")
    pos = root + 16 + vlen + 2
    nstreams = min(struct.unpack("<H", img.read(pos, 2))[0], 16)
    pos += 2
    streams: dict[str, tuple[int, int]] = {}
    for _ in range(nstreams):
        off, size = struct.unpack("<II", img.read(pos, 8))
        raw = img.read(pos + 8, 32)
        name = raw[: raw.index(b"\0")].decode("latin-1")
        streams[name] = (root + off, size)
        pos += 8 + (len(name) + 4) // 4 * 4
    if "#~" not in streams or "#Strings" not in streams:
        raise _Bad("no compressed metadata tables")
    tpos, _ = streams["#~"]
    heap_sizes = img.read(tpos + 6, 1)[0]
    valid = struct.unpack("<Q", img.read(tpos + 8, 8))[0]
    rows: dict[int, int] = {}
    p = tpos + 24
    for t in range(64):
        if valid >> t & 1:
            rows[t] = struct.unpack("<I", img.read(p, 4))[0]
            p += 4
    if not 1 <= row <= rows.get(0x06, 0):
        raise _Bad("entry point row out of range")
    s = 4 if heap_sizes & 1 else 2
    g = 4 if heap_sizes & 2 else 2
    b = 4 if heap_sizes & 4 else 2

    def idx(*tables: int, tag_bits: int = 0) -> int:
        return 2 if max(rows.get(t, 0) for t in tables) < 1 << (16 - tag_bits) else 4

    widths = {
        0x00: 2 + s + 3 * g,                                            # Module
        0x01: idx(0x00, 0x1A, 0x23, 0x01, tag_bits=2) + 2 * s,           # TypeRef
        0x02: 4 + 2 * s + idx(0x02, 0x01, 0x1B, tag_bits=2) + idx(0x04) + idx(0x06),  # TypeDef
        0x03: idx(0x04),                                                # FieldPtr
        0x04: 2 + s + b,                                                # Field
        0x05: idx(0x06),                                                # MethodPtr
    }
    for t in range(0x06):
        p += rows.get(t, 0) * widths[t]
    method_width = 4 + 2 + 2 + s + b + idx(0x08)
    name_off = p + (row - 1) * method_width + 8
    str_index = struct.unpack("<I" if s == 4 else "<H", img.read(name_off, s))[0]
    spos, ssize = streams["#Strings"]
    if str_index >= ssize:
        raise _Bad("method name outside #Strings")
    data = img.read(spos + str_index, min(MAX_NAME, ssize - str_index))
    name = data.split(b"\0", 1)[0].decode("utf-8", "replace")
    return name if _IDENT.match(name) else ""
