"""ELF executables: basic facts from the headers, parsed with bounds checks.

Reports the class, machine and linkage as an informational finding, and
modest indicators common in Linux/IoT malware: statically linked *and*
stripped binaries, section headers removed altogether (``sstrip``, packers).
Malformed headers are reported, not raised.
"""

from __future__ import annotations

import struct

from mailvm.triage.base import Context
from mailvm.verdict import Artifact, Finding

SOURCE = "triage:elf"
PT_DYNAMIC = 2
PT_INTERP = 3
SHT_SYMTAB = 2
MAX_PHNUM = 512
MAX_SHNUM = 8192
MACHINES = {3: "x86", 8: "MIPS", 20: "PowerPC", 21: "PowerPC64", 40: "ARM", 42: "SuperH", 50: "IA-64",
            62: "x86-64", 183: "AArch64", 243: "RISC-V", 2: "SPARC", 43: "SPARCv9", 22: "S390"}
TYPES = {1: "relocatable", 2: "executable", 3: "shared object/PIE", 4: "core"}


def elf_findings(data: bytes) -> list[Finding]:
    if len(data) < 52 or not data.startswith(b"\x7fELF"):
        return [Finding("elf_malformed", 3, "truncated ELF header", SOURCE)]
    cls, enc = data[4], data[5]
    if cls not in (1, 2) or enc not in (1, 2):
        return [Finding("elf_malformed", 3, f"bad ELF class/encoding {cls}/{enc}", SOURCE)]
    e = "<" if enc == 1 else ">"
    try:
        if cls == 1:
            (etype, machine, _ver, _entry, phoff, shoff, _flags, _ehsize, phentsize, phnum, shentsize, shnum,
             _shstrndx) = struct.unpack_from(e + "HHIIIIIHHHHHH", data, 16)
        else:
            (etype, machine, _ver, _entry, phoff, shoff, _flags, _ehsize, phentsize, phnum, shentsize, shnum,
             _shstrndx) = struct.unpack_from(e + "HHIQQQIHHHHHH", data, 16)
    except struct.error:
        return [Finding("elf_malformed", 3, "truncated ELF header", SOURCE)]
    out: list[Finding] = []
    interp = dynamic = False
    if phnum > MAX_PHNUM or (phnum and (phentsize < 8 or phoff + phnum * phentsize > len(data))):
        out.append(Finding("elf_malformed", 3, f"program headers out of bounds ({phnum} at 0x{phoff:x})", SOURCE))
    else:
        for i in range(phnum):
            (ptype,) = struct.unpack_from(e + "I", data, phoff + i * phentsize)
            interp |= ptype == PT_INTERP
            dynamic |= ptype == PT_DYNAMIC
    symtab = False
    if shnum == 0 or shoff == 0:
        out.append(Finding("elf_no_section_headers", 3, "section headers removed (sstrip or packer)", SOURCE))
    elif shnum > MAX_SHNUM or shentsize < 16 or shoff + shnum * shentsize > len(data):
        out.append(Finding("elf_malformed", 3, f"section headers out of bounds ({shnum} at 0x{shoff:x})", SOURCE))
    else:
        for i in range(shnum):
            (sh_type,) = struct.unpack_from(e + "I", data, shoff + i * shentsize + 4)
            if sh_type == SHT_SYMTAB:
                symtab = True
                break
    static = not interp and not dynamic
    facts = (f"ELF {32 if cls == 1 else 64}-bit {MACHINES.get(machine, f'machine {machine}')} "
             f"{TYPES.get(etype, f'type {etype}')}, {'statically' if static else 'dynamically'} linked"
             f"{'' if symtab else ', stripped'}")
    out.insert(0, Finding("elf_binary", 0, facts, SOURCE))
    if static and not symtab and etype == 2:
        out.append(Finding("elf_static_stripped", 3, "statically linked and stripped (typical of IoT malware)", SOURCE))
    return out


def analyze(artifact: Artifact, data_path: str, ctx: Context) -> list[Finding]:
    if not ctx.data.startswith(b"\x7fELF"):
        return []
    return elf_findings(ctx.data)
