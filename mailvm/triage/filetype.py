"""File-name tricks and type/name disagreements.

* dangerous extensions: what Windows runs on a double click (``.exe``, ``.js``,
  ``.hta``, ``.lnk``, ``.iso``...);
* double extensions: ``invoice.pdf.exe``, worse with blank padding before the
  real extension;
* type/extension mismatch: the content is an executable, Office document, PDF...
  but the name claims another type (a macro workbook named ``.jpg``, a PE named
  ``.txt``);
* Unicode tricks: right-to-left override and other bidi controls, zero-width
  characters, look-alike dots.

Applies to every kind.  Works on ``Artifact.name`` and the kind chosen by
:mod:`mailvm.triage.kinds`; reads no bytes.
"""

from __future__ import annotations

import re

from mailvm.triage.base import Context, base_name, clip, extension, extensions
from mailvm.verdict import Artifact, Finding

SOURCE = "triage:filetype"

#: extensions Windows (or a double-clicked handler) executes or mounts
DANGEROUS_EXTENSIONS = frozenset({
    "exe", "scr", "com", "pif", "bat", "cmd", "js", "jse", "vbs", "vbe", "wsf", "wsh", "ws", "hta", "lnk",
    "iso", "img", "vhd", "vhdx", "msi", "msp", "msix", "appx", "appxbundle", "ps1", "psm1", "jar", "one",
    "cpl", "dll", "ocx", "sys", "reg", "inf", "scf", "url", "chm", "xll", "application", "gadget", "sct",
    "msc", "settingcontent-ms", "library-ms", "search-ms", "iqy", "slk", "hlp", "appref-ms", "diagcab",
    "wsc", "ade", "adp", "mde", "mst", "jnlp", "sh", "command", "apk", "dmg", "pkg", "app",
})

#: extensions a lure pretends to be
DOCUMENT_EXTENSIONS = frozenset({
    "pdf", "doc", "docx", "docm", "xls", "xlsx", "xlsm", "ppt", "pptx", "rtf", "txt", "csv", "odt", "ods",
    "jpg", "jpeg", "png", "gif", "bmp", "tif", "tiff", "mp3", "mp4", "avi", "wav", "zip", "rar", "7z",
    "htm", "html", "xml", "eml", "msg", "one", "mov", "wmv",
})

_TEXTISH = frozenset({"text", "script", "html", "email"})
_OFFICE_EXT = ("doc docx docm dot dotx dotm xls xlsx xlsm xlsb xlt xltx xltm xla xlam ppt pptx pptm pps ppsx ppsm "
               "pot potx potm odt ods odp rtf slk one vsd vsdx vsdm pub")
_ARCHIVE_EXT = "zip 7z rar gz tgz tar bz2 tbz2 xz txz cab lzh lha arj zst z cpio"
_IMAGE_EXT = "jpg jpeg png gif bmp tif tiff webp ico heic heif jfif"
_AV_EXT = "mp3 wav ogg flac m4a aac wma mp4 m4v mov avi mkv wmv webm mpg mpeg"

#: extension -> kinds its content may legitimately have
EXPECTED_KINDS: dict[str, frozenset[str]] = {}
for _e in _OFFICE_EXT.split():
    EXPECTED_KINDS[_e] = frozenset({"office"})
for _e in _ARCHIVE_EXT.split():
    EXPECTED_KINDS[_e] = frozenset({"archive", "office"})
for _e in _IMAGE_EXT.split():
    EXPECTED_KINDS[_e] = frozenset({"image"})
for _e in _AV_EXT.split():
    EXPECTED_KINDS[_e] = frozenset({"audio", "video"})
for _e in ("txt", "csv", "log", "md", "json", "ini", "cfg"):
    EXPECTED_KINDS[_e] = _TEXTISH
for _e in ("htm", "html", "xhtml", "mht", "mhtml", "svg"):
    EXPECTED_KINDS[_e] = frozenset({"html", "text", "image"})
for _e in ("exe", "dll", "scr", "cpl", "sys", "ocx", "msi", "xll"):
    EXPECTED_KINDS[_e] = frozenset({"executable"})
EXPECTED_KINDS.update({
    "pdf": frozenset({"pdf"}),
    "eml": frozenset({"email", "text"}),
    "msg": frozenset({"email", "office"}),
    "iso": frozenset({"disk_image"}),
    "vhd": frozenset({"disk_image"}),
    "vhdx": frozenset({"disk_image"}),
    "lnk": frozenset({"lnk"}),
})

#: severity of a mismatch, by the kind the content really has
MISMATCH_SEVERITY = {"executable": 6, "lnk": 6, "disk_image": 5, "office": 5, "script": 4, "html": 4, "pdf": 4,
                     "archive": 3}

BIDI_CONTROLS = {
    "\u202a": "LRE", "\u202b": "RLE", "\u202c": "PDF", "\u202d": "LRO", "\u202e": "RLO",
    "\u2066": "LRI", "\u2067": "RLI", "\u2068": "FSI", "\u2069": "PDI", "\u200e": "LRM", "\u200f": "RLM",
    "\u061c": "ALM",
}
INVISIBLE = {"\u200b": "ZWSP", "\u200c": "ZWNJ", "\u200d": "ZWJ", "\u2060": "WJ", "\ufeff": "BOM", "\u00ad": "SHY",
             "\u180e": "MVS"}
LOOKALIKE_DOTS = {"\u2024": "ONE DOT LEADER", "\uff0e": "FULLWIDTH FULL STOP", "\u3002": "IDEOGRAPHIC FULL STOP",
                  "\ufe52": "SMALL FULL STOP", "\u0701": "SYRIAC SUPRALINEAR FULL STOP", "\u2e33": "RAISED DOT"}

_PADDING_RE = re.compile(r"(\s{4,}|_{8,})\.[A-Za-z0-9]{1,5}\s*$")


def _unicode_findings(name: str) -> list[Finding]:
    out: list[Finding] = []
    bidi = sorted({BIDI_CONTROLS[ch] for ch in name if ch in BIDI_CONTROLS})
    if bidi:
        shown = "".join(f"[{BIDI_CONTROLS[ch]}]" if ch in BIDI_CONTROLS else ch for ch in name)
        out.append(Finding("filetype_bidi_override", 8,
                           f"name contains bidirectional control {','.join(bidi)}: {clip(shown, 120)}", SOURCE))
    tricks = sorted({INVISIBLE[ch] for ch in name if ch in INVISIBLE} | {LOOKALIKE_DOTS[ch] for ch in name if ch in LOOKALIKE_DOTS})
    if tricks:
        out.append(Finding("filetype_unicode_trick", 5, f"name contains {', '.join(tricks)}: {clip(name, 120)}", SOURCE))
    return out


def analyze(artifact: Artifact, data_path: str, ctx: Context) -> list[Finding]:
    name = base_name(artifact.name)
    findings = _unicode_findings(name)
    ext = extension(name)
    exts = extensions(name)
    if ext in DANGEROUS_EXTENSIONS:
        # informational: an administrator who wants such types refused lists them in the policy's
        # blocked_types; a file that ran and did nothing of note is not suspicious for its name
        findings.append(Finding("filetype_dangerous_extension", 1, f".{ext} runs or mounts when opened", SOURCE))
    if len(exts) >= 2 and ext in DANGEROUS_EXTENSIONS and exts[-2] in DOCUMENT_EXTENSIONS:
        padded = bool(_PADDING_RE.search(name))
        findings.append(Finding("filetype_double_extension", 7,
                                f"{clip(name, 120)!r} poses as .{exts[-2]} but is .{ext}"
                                + (" (blank padding hides the real extension)" if padded else ""), SOURCE))
    elif _PADDING_RE.search(name) and ext in DANGEROUS_EXTENSIONS:
        findings.append(Finding("filetype_double_extension", 6,
                                f"{clip(name, 120)!r}: blank padding hides the real extension .{ext}", SOURCE))
    expected = EXPECTED_KINDS.get(ext)
    if expected is not None and ctx.kind not in expected and ctx.kind in MISMATCH_SEVERITY:
        findings.append(Finding("filetype_extension_mismatch", MISMATCH_SEVERITY[ctx.kind],
                                f"named .{ext} but the content is {ctx.kind} ({clip(artifact.description, 80)})",
                                SOURCE))
    return findings
