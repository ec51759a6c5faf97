"""Windows PE executables, with pefile.

The file is loaded with ``fast_load`` and only the import directory is parsed
(pefile bounds symbol counts and name lengths); .NET is recognised by its CLR
header (data directory 14).  Findings: import combinations typical of injection, hollowing,
keylogging, anti-debugging and downloading; packer section names; high-entropy
executable sections; no imports or only the dynamic-resolution pair
(``LoadLibrary``/``GetProcAddress``); writable and executable sections; an entry
point outside every section.  .NET assemblies are noted (informational).  A
missing Authenticode signature is *not* a finding: most software is unsigned.
"""

from __future__ import annotations

import pefile

from mailvm.triage.base import Context, clip
from mailvm.verdict import Artifact, Finding

SOURCE = "triage:pe"
HIGH_ENTROPY = 7.2
MIN_ENTROPY_SECTION = 4096
MAX_SECTIONS_LOOKED = 96

COM_DESCRIPTOR = 14
COR20_SIZE = 0x48
IMAGE_SCN_MEM_EXECUTE = 0x20000000
IMAGE_SCN_MEM_WRITE = 0x80000000
IMAGE_SCN_CNT_CODE = 0x20

PACKER_SECTIONS = {
    "upx0": "UPX", "upx1": "UPX", "upx2": "UPX", ".aspack": "ASPack", ".adata": "ASPack", "aspack": "ASPack",
    ".petite": "Petite", ".nsp0": "NsPack", ".nsp1": "NsPack", "nsp0": "NsPack", ".mpress1": "MPRESS",
    ".mpress2": "MPRESS", ".themida": "Themida", ".winlice": "WinLicense", ".vmp0": "VMProtect",
    ".vmp1": "VMProtect", ".vmp2": "VMProtect", ".enigma1": "Enigma", ".enigma2": "Enigma", "pec1": "PECompact",
    "pec2": "PECompact", ".pec": "PECompact", "pecompact2": "PECompact", ".packed": "packer", ".kkrunchy": "kkrunchy",
    "fsg!": "FSG", ".yp": "Y0da", ".perplex": "Perplex", "bitarts": "Crunch", ".boom": "Boomerang", "mew": "MEW",
    ".rlpack": "RLPack", ".spack": "Simple Pack", ".ccg": "CCG", ".taz": "PESpin", ".svkp": "SVKP",
}

#: (finding id, severity, description, groups): every group must have at least one import
IMPORT_RULES: tuple[tuple[str, int, str, tuple[frozenset[str], ...]], ...] = (
    ("pe_injection_imports", 6, "remote process injection",
     (frozenset({"virtualallocex", "ntallocatevirtualmemory", "zwallocatevirtualmemory"}),
      frozenset({"writeprocessmemory", "ntwritevirtualmemory", "zwwritevirtualmemory"}),
      frozenset({"createremotethread", "createremotethreadex", "ntcreatethreadex", "rtlcreateuserthread", "queueuserapc",
                 "ntqueueapcthread"}))),
    ("pe_hollowing_imports", 6, "process hollowing",
     (frozenset({"ntunmapviewofsection", "zwunmapviewofsection"}),
      frozenset({"setthreadcontext", "wow64setthreadcontext", "ntsetcontextthread"}),
      frozenset({"resumethread", "ntresumethread"}))),
    ("pe_keylogger_imports", 5, "keylogging",
     (frozenset({"setwindowshookexa", "setwindowshookexw", "registerrawinputdevices"}),
      frozenset({"getasynckeystate", "getkeystate", "getkeyboardstate", "getrawinputdata", "mapvirtualkeya",
                 "mapvirtualkeyw"}))),
    ("pe_antidebug_imports", 2, "anti-debugging",
     (frozenset({"checkremotedebuggerpresent", "ntqueryinformationprocess", "zwqueryinformationprocess",
                 "outputdebugstringa", "ntsetinformationthread"}),
      frozenset({"isdebuggerpresent", "gettickcount", "queryperformancecounter"}))),
    ("pe_download_imports", 3, "downloading",
     (frozenset({"urldownloadtofilea", "urldownloadtofilew", "internetopenurla", "internetopenurlw",
                 "winhttpopenrequest", "httpopenrequesta", "httpopenrequestw", "internetreadfile"}),)),
    ("pe_credential_imports", 4, "credential theft",
     (frozenset({"credenumeratea", "credenumeratew", "cryptunprotectdata", "lsaretrieveprivatedata",
                 "minidumpwritedump"}),)),
)


def _imports(pe: pefile.PE) -> tuple[set[str], int]:
    names: set[str] = set()
    dlls = 0
    for entry in getattr(pe, "DIRECTORY_ENTRY_IMPORT", []) or []:
        dlls += 1
        for imp in entry.imports or []:
            if imp.name:
                names.add(imp.name.decode("latin-1", "replace").lower())
    return names, dlls


def _is_dotnet(pe: pefile.PE) -> bool:
    """A CLR header: data directory 14 points at an IMAGE_COR20_HEADER (``cb`` = 72)."""
    dirs = pe.OPTIONAL_HEADER.DATA_DIRECTORY
    if len(dirs) <= COM_DESCRIPTOR or not dirs[COM_DESCRIPTOR].VirtualAddress or dirs[COM_DESCRIPTOR].Size < COR20_SIZE:
        return False
    try:
        return pe.get_data(dirs[COM_DESCRIPTOR].VirtualAddress, 4) == COR20_SIZE.to_bytes(4, "little")
    except pefile.PEFormatError:
        return False


def pe_findings(data: bytes) -> list[Finding]:
    out: list[Finding] = []
    try:
        pe = pefile.PE(data=data, fast_load=True)
    except pefile.PEFormatError as exc:
        return [Finding("pe_malformed", 3, f"not a loadable PE: {clip(exc, 120)}", SOURCE)]
    try:
        pe.parse_data_directories(directories=[pefile.DIRECTORY_ENTRY["IMAGE_DIRECTORY_ENTRY_IMPORT"]])
        is_dotnet = _is_dotnet(pe)
        if is_dotnet:
            out.append(Finding("pe_dotnet", 1, ".NET assembly", SOURCE))
        imports, dlls = _imports(pe)
        for fid, sev, desc, groups in IMPORT_RULES:
            hits = [sorted(g & imports) for g in groups]
            if all(hits):
                out.append(Finding(fid, sev, f"{desc} imports: {', '.join(h[0] for h in hits)}", SOURCE))
        if not is_dotnet:
            if not imports:
                out.append(Finding("pe_no_imports", 4, "no import table (packed or resolves APIs itself)", SOURCE))
            elif len(imports) <= 4 and {"getprocaddress"} <= imports and imports & {"loadlibrarya", "loadlibraryw", "loadlibraryexa", "loadlibraryexw", "ldrloaddll"}:
                out.append(Finding("pe_dynamic_imports_only", 4, f"only {len(imports)} imports, APIs resolved at run time", SOURCE))
        packers: set[str] = set()
        entropic: list[str] = []
        wx: list[str] = []
        ep = pe.OPTIONAL_HEADER.AddressOfEntryPoint
        ep_inside = False
        for sec in pe.sections[:MAX_SECTIONS_LOOKED]:
            name = sec.Name.rstrip(b"\x00").decode("latin-1", "replace")
            if name.lower() in PACKER_SECTIONS:
                packers.add(f"{PACKER_SECTIONS[name.lower()]} ({name})")
            chars = sec.Characteristics
            executable = bool(chars & (IMAGE_SCN_MEM_EXECUTE | IMAGE_SCN_CNT_CODE))
            if executable and sec.SizeOfRawData >= MIN_ENTROPY_SECTION and sec.get_entropy() >= HIGH_ENTROPY:
                entropic.append(f"{name} ({sec.get_entropy():.2f})")
            if chars & IMAGE_SCN_MEM_EXECUTE and chars & IMAGE_SCN_MEM_WRITE:
                wx.append(name)
            if sec.VirtualAddress <= ep < sec.VirtualAddress + max(sec.Misc_VirtualSize, sec.SizeOfRawData):
                ep_inside = True
        if packers:
            out.append(Finding("pe_packer_section", 5, f"packer section names: {', '.join(sorted(packers))}", SOURCE))
        if entropic:
            out.append(Finding("pe_high_entropy_code", 4, f"compressed or encrypted code sections: {', '.join(entropic[:4])}", SOURCE))
        if wx:
            out.append(Finding("pe_writable_code", 3, f"writable and executable sections: {', '.join(wx[:4])}", SOURCE))
        if ep and not ep_inside and pe.sections:
            out.append(Finding("pe_entrypoint_outside_sections", 4, f"entry point 0x{ep:x} outside every section", SOURCE))
    finally:
        pe.close()
    return out


def analyze(artifact: Artifact, data_path: str, ctx: Context) -> list[Finding]:
    if not ctx.data.startswith(b"MZ"):
        return []
    return pe_findings(ctx.data)
