"""Windows shell files that point somewhere else: ``.url``/``.website`` Internet shortcuts,
``.scf`` shell command files, ``.library-ms`` libraries and ``.searchConnector-ms`` /
``.search-ms`` saved searches (triage kind ``shortcut``).

None of them carries a payload; each makes Explorer open something remote:

* ``URL=file://host/share/x.exe`` or ``\\\\host\\share`` runs a file from another
  machine over SMB/WebDAV (Mark-of-the-Web and SmartScreen bypasses,
  CVE-2023-36025, CVE-2024-21412);
* ``IconFile=\\\\host\\icon.ico`` (``.url``, ``.scf``) makes Explorer fetch the icon
  when the folder is merely shown, sending the user's NTLM hash to that host;
* a library or search connector whose location is ``\\\\host\\share`` or a WebDAV
  URL shows the attacker's share as a local folder (and leaks NTLM as soon as
  the file is extracted, CVE-2025-24054);
* ``URL=search-ms:``/``ms-msdt:``... start Windows protocol handlers; ``javascript:``
  runs script.

:func:`is_shortcut` recognises the formats by content (for :mod:`mailvm.triage.kinds`);
:func:`link_urls` gives the http(s) targets to the link downloader
(:mod:`mailvm.triage.doclinks`).  XML is parsed with the standard library's expat
after refusing documents that declare entities; INI text with a line parser
(duplicate keys and junk lines are normal in the wild).
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field

from mailvm.triage import script, urlrisk
from mailvm.triage.base import Context, clip, decode_text
from mailvm.verdict import Artifact, Finding

SOURCE = "triage:shortcut"
MAX_TEXT = 256 * 1024
MAX_LOCATIONS = 100

_INI_SECTION = re.compile(r"(?im)^[ \t]*\[(InternetShortcut|\{000214A0-0000-0000-C000-000000000046\}|Shell)\][ \t]*\r?$")
_INI_KEY = re.compile(r"(?im)^[ \t]*(URL|IconFile|Command|BASEURL)[ \t]*=")
_XML_ROOT = re.compile(rb"<\s*(?:[A-Za-z0-9_]+:)?(libraryDescription|searchConnectorDescription|persistedQuery)\b")
_LOCATION_TAGS = frozenset({"url", "path", "location", "simplelocation", "folder", "scope", "include", "exclude"})
_LOCATION_ATTRS = frozenset({"url", "path", "location", "knownfolder"})
_REMOTE = re.compile(r"(?i)^\s*(\\\\|//|(https?|ftp|file)://|[a-z][a-z0-9+.-]{1,31}:)")


@dataclass
class ShortcutInfo:
    """What a shortcut file says: its format and every place it points to."""

    format: str  # internet-shortcut | shell-command | library | search-connector | saved-search
    url: str = ""
    icon: str = ""
    command: str = ""
    locations: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def _text(data: bytes) -> str:
    return decode_text(data, MAX_TEXT)


def is_shortcut(head: bytes) -> bool:
    """Whether the head of a file is one of this module's formats (content, not name)."""
    if _XML_ROOT.search(head[:4096]) or _XML_ROOT.search(head[:8192].replace(b"\x00", b"")):
        return True
    text = _text(head[:4096])
    return bool(_INI_SECTION.search(text) and _INI_KEY.search(text))


def _parse_ini(text: str, fmt: str) -> ShortcutInfo:
    info = ShortcutInfo(fmt)
    section = ""
    for line in text.splitlines()[:5000]:
        line = line.strip()
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1].strip().lower()
            continue
        if "=" not in line:
            continue
        key, _, value = line.partition("=")
        key = key.strip().lower()
        value = value.strip().strip('"')
        if key == "url" and not info.url and section in ("internetshortcut", "default", ""):
            info.url = value
        elif key == "url" and not info.url:
            info.url = value
        elif key == "iconfile" and not info.icon:
            info.icon = value
        elif key == "command" and not info.command:
            info.command = value
        elif key in ("workingdirectory", "baseurl") and value:
            if len(info.locations) < MAX_LOCATIONS:
                info.locations.append(value)
    if fmt == "internet-shortcut" and not info.url:
        info.errors.append("no URL= line")
    return info


def _parse_xml(data: bytes, fmt: str) -> ShortcutInfo:
    info = ShortcutInfo(fmt)
    if b"<!ENTITY" in data[:MAX_TEXT].upper() or b"<\x00!\x00E\x00N\x00T\x00I\x00T\x00Y" in data[:MAX_TEXT].upper():
        info.errors.append("declares XML entities (refused)")
        return _regex_locations(_text(data), info)
    try:
        root = ET.fromstring(data[:MAX_TEXT])
    except (ET.ParseError, LookupError, ValueError) as exc:  # bad XML, an unknown declared encoding
        info.errors.append(f"XML: {type(exc).__name__}: {clip(exc, 120)}")
        return _regex_locations(_text(data), info)
    for el in root.iter():
        if len(info.locations) >= MAX_LOCATIONS:
            break
        tag = el.tag.rsplit("}", 1)[-1].lower()
        if tag in _LOCATION_TAGS and el.text and el.text.strip():
            info.locations.append(el.text.strip())
        for name, value in el.attrib.items():
            if name.rsplit("}", 1)[-1].lower() in _LOCATION_ATTRS and value.strip():
                info.locations.append(value.strip())
    return info


_UNC_OR_URL = re.compile(r"(\\\\[^\s<>\"'\\]{1,255}\\[^\s<>\"']{0,512}|(?:https?|file)://[^\s<>\"']{1,1024})", re.I)


def _regex_locations(text: str, info: ShortcutInfo) -> ShortcutInfo:
    for m in _UNC_OR_URL.finditer(text[:MAX_TEXT]):
        if len(info.locations) >= MAX_LOCATIONS:
            break
        info.locations.append(m.group(1))
    return info


def parse(data: bytes) -> ShortcutInfo | None:
    """The shortcut in ``data``, or ``None`` when it is none of this module's formats."""
    m = _XML_ROOT.search(data[:8192]) or _XML_ROOT.search(data[:16384].replace(b"\x00", b""))
    if m:
        root = m.group(1).decode().lower()
        fmt = {"librarydescription": "library", "searchconnectordescription": "search-connector"}.get(root, "saved-search")
        if data[:2] in (b"\xff\xfe", b"\xfe\xff") or data[1:2] == b"\x00":
            data = _text(data).encode("utf-8")
            data = re.sub(rb"^<\?xml[^>]*\?>", b"", data)
        return _parse_xml(data, fmt)
    text = _text(data)
    sec = _INI_SECTION.search(text)
    if not sec:
        return None
    fmt = "shell-command" if sec.group(1).lower() == "shell" else "internet-shortcut"
    return _parse_ini(text, fmt)


def _is_remote_path(value: str) -> bool:
    """A UNC path or file: URL on another host (``\\\\?\\`` and ``\\\\.\\`` device paths are local)."""
    v = value.strip().strip('"')
    if v.startswith(("\\\\?\\", "\\\\.\\", "//?/", "//./")):
        return False
    return urlrisk.assess(v).reasons == ("unc-or-file",)


def _url_findings(info: ShortcutInfo) -> list[Finding]:
    url = info.url.strip()
    if not url:
        return []
    risk = urlrisk.assess(url)
    scheme = url.split(":", 1)[0].lower() if ":" in url else ""
    if "unc-or-file" in risk.reasons or _is_remote_path(url):
        return [Finding("shortcut_remote_file", 7, f"opens a file on another machine: {clip(url, 200)}", SOURCE)]
    if "script-uri" in risk.reasons or "data-uri" in risk.reasons:
        return [Finding("shortcut_script_url", 7, f"URL runs script or carries a page: {clip(url, 160)}", SOURCE)]
    if "protocol-handler" in risk.reasons:
        return [Finding("shortcut_protocol_handler", 7, f"URL starts a Windows protocol handler: {clip(url, 200)}", SOURCE)]
    if scheme == "file" or re.match(r"(?i)^[a-z]:[\\/]", url):
        path = url.split("://", 1)[-1]
        sev = 5 if re.search(r"(?i)\.(exe|com|bat|cmd|ps1|vbs|js|hta|scr|lnk|msi)\b", path) else 3
        return [Finding("shortcut_local_file", sev, f"opens a local file: {clip(url, 200)}", SOURCE)] \
            + script.command_findings(path, SOURCE)
    if scheme in ("http", "https", "ftp"):
        sev = 3 if risk.severity < 4 else min(6, risk.severity + 1)
        why = "" if not risk.reasons else f" ({risk.describe()})"
        return [Finding("shortcut_web_link", sev, f"opens {clip(url, 200)}{why}", SOURCE)]
    return [Finding("shortcut_other_url", 4, f"URL with scheme {clip(scheme, 32)!r}: {clip(url, 160)}", SOURCE)]


def findings_for(info: ShortcutInfo) -> list[Finding]:
    out = _url_findings(info)
    if info.icon and (_is_remote_path(info.icon) or re.match(r"(?i)^\s*https?://", info.icon)):
        out.append(Finding("shortcut_remote_icon", 6, f"icon loaded from another machine when the folder is shown "
                                                      f"(leaks the user's NTLM hash): {clip(info.icon, 160)}", SOURCE))
    if info.command:
        out.append(Finding("shortcut_shell_command", 3, f"shell command file: Command={clip(info.command, 80)}", SOURCE))
    remote = [loc for loc in info.locations if _is_remote_path(loc) or re.match(r"(?i)^\s*(https?|ftp)://", loc)]
    if remote:
        where = "library" if info.format == "library" else "search location"
        out.append(Finding("shortcut_remote_location", 7, f"{where} on another machine (SMB/WebDAV; leaks NTLM, "
                                                          f"shows remote files as local): {clip(remote[0], 160)}"
                                                          + (f" and {len(remote) - 1} more" if len(remote) > 1 else ""),
                           SOURCE))
    elif info.format in ("library", "search-connector", "saved-search"):
        out.append(Finding("shortcut_library", 2, f"{info.format} with {len(info.locations)} local location(s)", SOURCE))
    if info.errors:
        out.append(Finding("shortcut_malformed", 2, "; ".join(info.errors)[:200], SOURCE))
    return out


def analyze(artifact: Artifact, data_path: str, ctx: Context) -> list[Finding]:
    info = parse(ctx.data)
    if info is None:
        return [Finding("shortcut_malformed", 2, "not a shortcut format this analyzer reads", SOURCE)]
    return findings_for(info)


def link_urls(data: bytes, limit: int = 3) -> list[str]:
    """http(s) targets of the shortcut (its URL, WebDAV locations), at most ``limit``."""
    info = parse(data)
    if info is None:
        return []
    cands = ([info.url] if info.url else []) + info.locations
    out = [c.strip() for c in cands if re.match(r"(?i)^https?://", c.strip())]
    return list(dict.fromkeys(out))[:limit]


__all__ = ["ShortcutInfo", "analyze", "findings_for", "is_shortcut", "link_urls", "parse"]
