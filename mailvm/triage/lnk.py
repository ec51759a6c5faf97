"""Windows shortcut (.lnk) files, parsed per [MS-SHLLINK] with bounds checks.

:func:`parse` reads the 76-byte header (size 0x4C and the shell-link CLSID), the
optional LinkTargetIDList (only its strings are kept), LinkInfo (local base
path, common path suffix), the StringData fields (name, relative path, working
directory, command-line arguments, icon location) and the environment-variable
extra block.  Every offset and count is checked against the buffer: a
truncated or inconsistent file yields what could be read plus ``errors``.

The analyzer flags shortcuts that start interpreters and LOLBins (``cmd``,
``powershell``, ``mshta``...), hide long or padded arguments, point at remote
files, or wear a document icon; the command line also goes through the script
indicators of :mod:`mailvm.triage.script`.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass, field

from mailvm.triage import script
from mailvm.triage.base import Context, base_name, clip, extension
from mailvm.verdict import Artifact, Finding

SOURCE = "triage:lnk"
HEADER_SIZE = 0x4C
LNK_CLSID = bytes.fromhex("0114020000000000c000000000000046")
MAX_STRING_CHARS = 32768

F_HAS_IDLIST = 0x1
F_HAS_LINKINFO = 0x2
F_HAS_NAME = 0x4
F_HAS_RELPATH = 0x8
F_HAS_WORKDIR = 0x10
F_HAS_ARGS = 0x20
F_HAS_ICON = 0x40
F_UNICODE = 0x80

SW_SHOWMINNOACTIVE = 7
ENV_BLOCK_SIG = 0xA0000001

LOLBINS = frozenset({
    "cmd.exe", "powershell.exe", "pwsh.exe", "mshta.exe", "wscript.exe", "cscript.exe", "rundll32.exe",
    "regsvr32.exe", "certutil.exe", "bitsadmin.exe", "msiexec.exe", "forfiles.exe", "conhost.exe",
    "schtasks.exe", "wmic.exe", "curl.exe", "hh.exe", "msbuild.exe", "installutil.exe", "regasm.exe",
    "regsvcs.exe", "odbcconf.exe", "cmstp.exe", "pcalua.exe", "scriptrunner.exe", "explorer.exe", "ftp.exe",
    "bash.exe", "wsl.exe", "finger.exe", "expand.exe", "extrac32.exe", "replace.exe", "xcopy.exe",
})
DECOY_ICON_EXT = frozenset({"pdf", "doc", "docx", "xls", "xlsx", "ppt", "pptx", "txt", "jpg", "jpeg", "png", "rtf", "html", "htm"})
DECOY_ICON_NAMES = ("msedge.exe", "acrord32.exe", "acrobat.exe", "winword.exe", "excel.exe", "wordpad.exe", "notepad.exe")


@dataclass
class LnkInfo:
    flags: int = 0
    show_command: int = 0
    local_base_path: str = ""
    common_path_suffix: str = ""
    name: str = ""
    relative_path: str = ""
    working_dir: str = ""
    arguments: str = ""
    icon_location: str = ""
    env_target: str = ""
    idlist_strings: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def target(self) -> str:
        """Best guess of what the shortcut starts."""
        if self.local_base_path:
            return self.local_base_path + self.common_path_suffix
        if self.env_target:
            return self.env_target
        if self.relative_path:
            return self.relative_path
        exes = [s for s in self.idlist_strings if "." in s]
        return exes[-1] if exes else ""

    def command_line(self) -> str:
        return " ".join(p for p in (self.target(), self.arguments) if p)

    def all_text(self) -> str:
        return " ".join(p for p in (self.local_base_path, self.common_path_suffix, self.relative_path,
                                    self.working_dir, self.env_target, self.arguments, self.name) if p)


def is_lnk(data: bytes) -> bool:
    return len(data) >= 20 and data[:4] == b"L\x00\x00\x00" and data[4:20] == LNK_CLSID


def _cstring(data: bytes, off: int, limit: int = 1024) -> str:
    if off < 0 or off >= len(data):
        return ""
    end = data.find(b"\x00", off, off + limit)
    end = end if end >= 0 else min(len(data), off + limit)
    return data[off:end].decode("cp1252", "replace")


def _idlist_strings(blob: bytes) -> list[str]:
    out = [m.group(0).decode("ascii") for m in re.finditer(rb"[\x20-\x7e]{4,260}", blob)]
    out += [m.group(0).decode("utf-16-le", "replace") for m in re.finditer(rb"(?:[\x20-\x7e]\x00){4,260}", blob)]
    return out[:64]


def parse(data: bytes) -> LnkInfo | None:
    """Parse a shortcut; ``None`` when the header is not a shell link."""
    if not is_lnk(data) or len(data) < HEADER_SIZE:
        return None
    info = LnkInfo()
    (info.flags,) = struct.unpack_from("<I", data, 0x14)
    (info.show_command,) = struct.unpack_from("<I", data, 0x3C)
    pos = HEADER_SIZE
    try:
        if info.flags & F_HAS_IDLIST:
            (size,) = struct.unpack_from("<H", data, pos)
            if pos + 2 + size > len(data):
                raise ValueError("LinkTargetIDList runs past the end")
            info.idlist_strings = _idlist_strings(data[pos + 2 : pos + 2 + size])
            pos += 2 + size
        if info.flags & F_HAS_LINKINFO:
            (size, hsize, liflags, _vol, lbp, _cnr, cps) = struct.unpack_from("<7I", data, pos)
            if size < 0x1C or pos + size > len(data):
                raise ValueError("LinkInfo size out of bounds")
            block = data[pos : pos + size]
            if liflags & 0x1 and lbp < size:
                info.local_base_path = _cstring(block, lbp)
            if cps and cps < size:
                info.common_path_suffix = _cstring(block, cps)
            if hsize >= 0x24 and len(block) >= 0x24:
                (lbp_u, cps_u) = struct.unpack_from("<2I", block, 0x1C)
                if liflags & 0x1 and 0 < lbp_u < size and not info.local_base_path:
                    info.local_base_path = _wstring0(block, lbp_u)
            pos += size
        unicode = bool(info.flags & F_UNICODE)
        for flag, attr in ((F_HAS_NAME, "name"), (F_HAS_RELPATH, "relative_path"), (F_HAS_WORKDIR, "working_dir"),
                           (F_HAS_ARGS, "arguments"), (F_HAS_ICON, "icon_location")):
            if info.flags & flag:
                (count,) = struct.unpack_from("<H", data, pos)
                pos += 2
                nbytes = count * (2 if unicode else 1)
                if pos + nbytes > len(data):
                    raise ValueError(f"StringData {attr} runs past the end")
                raw = data[pos : pos + nbytes]
                setattr(info, attr, raw.decode("utf-16-le" if unicode else "cp1252", "replace")[:MAX_STRING_CHARS])
                pos += nbytes
        for _ in range(64):  # ExtraData blocks
            if pos + 4 > len(data):
                break
            (bsize,) = struct.unpack_from("<I", data, pos)
            if bsize < 8 or pos + bsize > len(data):
                break
            (sig,) = struct.unpack_from("<I", data, pos + 4)
            if sig == ENV_BLOCK_SIG and bsize >= 0x314:
                ansi = _cstring(data, pos + 8, 260)
                wide = _wstring0(data[pos + 8 + 260 : pos + 8 + 260 + 520], 0)
                info.env_target = wide or ansi
            pos += bsize
    except (struct.error, ValueError) as exc:
        info.errors.append(str(exc))
    return info


def _wstring0(data: bytes, off: int, limit: int = 2048) -> str:
    out = bytearray()
    i = off
    while i + 1 < len(data) and len(out) < limit:
        pair = data[i : i + 2]
        if pair == b"\x00\x00":
            break
        out += pair
        i += 2
    return out.decode("utf-16-le", "replace")


def _exe_name(path: str) -> str:
    return base_name(path.strip().strip('"')).lower()


def lnk_findings(info: LnkInfo) -> list[Finding]:
    out: list[Finding] = []
    if info.errors:
        out.append(Finding("lnk_malformed", 3, "; ".join(info.errors)[:200], SOURCE))
    target = info.target()
    exe = _exe_name(target)
    if exe and "." not in exe:
        exe += ".exe"
    mentioned = {b for b in LOLBINS if re.search(r"(?<![\w.])" + re.escape(b[:-4]) + r"(\.exe)?(?![\w])", info.all_text(), re.I)}
    lolbin = exe in LOLBINS
    if lolbin:
        out.append(Finding("lnk_suspicious_target", 7, f"starts {exe}: {clip(info.command_line(), 200)}", SOURCE))
    elif mentioned and info.arguments:
        out.append(Finding("lnk_suspicious_target", 6, f"arguments call {', '.join(sorted(mentioned))}: {clip(info.command_line(), 200)}", SOURCE))
    args = info.arguments
    if args:
        lead = len(args) - len(args.lstrip())
        if lead >= 64 or re.search(r"\s{100,}", args):
            out.append(Finding("lnk_padded_arguments", 6, f"arguments hidden behind {max(lead, 100)}+ blanks", SOURCE))
        elif len(args) > 260:
            out.append(Finding("lnk_long_arguments", 5, f"{len(args)} characters of arguments", SOURCE))
    if re.match(r"^\s*(\\\\|https?:|file:)", target) or re.search(r"(?<![\w])\\\\[\w.\-]+@?\w*\\", args):
        out.append(Finding("lnk_remote_target", 6, f"points at a remote file: {clip(info.command_line(), 160)}", SOURCE))
    icon = info.icon_location.strip().lower()
    if icon and (lolbin or mentioned) and (extension(icon) in DECOY_ICON_EXT or icon.endswith(DECOY_ICON_NAMES)):
        out.append(Finding("lnk_icon_decoy", 5, f"document icon ({clip(info.icon_location, 80)}) on a shortcut to {exe or 'a program'}", SOURCE))
    if (lolbin or mentioned) and info.show_command == SW_SHOWMINNOACTIVE:
        out.append(Finding("lnk_hidden_window", 4, "runs minimized without focus", SOURCE))
    cmd = info.command_line()
    if cmd:
        out += script.command_findings(cmd, SOURCE)
    return out


def analyze(artifact: Artifact, data_path: str, ctx: Context) -> list[Finding]:
    info = parse(ctx.data)
    if info is None:
        return [Finding("lnk_malformed", 3, "not a shell link header", SOURCE)]
    return lnk_findings(info)
