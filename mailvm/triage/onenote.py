"""OneNote sections (``.one``; triage kind ``onenote``) and the files embedded in them.

In 2023 OneNote replaced macro documents as a mail lure: a page shows a
"Double click to view the document" picture laid over an embedded ``.hta``,
``.cmd``, ``.vbs``, ``.lnk`` or ``.exe``, which OneNote runs after one warning.

Every file a section carries (inserted pictures and attachments alike) is
stored in a *FileDataStoreObject* ([MS-ONESTORE] 2.6.13): a header GUID
``{BDE316E7-2665-4511-A4C4-8D4D0B7A9EAC}``, a 64-bit length, 12 unused bytes,
the file's bytes, padding to 8 bytes and a footer GUID.  :func:`carve` finds
them (bounded in count and bytes, lengths checked against the file) and
returns ``(name, bytes)`` pairs for extraction to turn into artifacts.  The
original file names live in the section's property sets; this module does not
parse those, it names each file by its content (``embedded_1.hta``) and lists
the UTF-16 file names it sees in the section in the findings' details.

No maintained Python library parses OneNote files; the carving follows the
published format.  OneNote itself is not available in the sandbox, so the
kind is analysed statically (the carved files are what gets detonated).
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass

from mailvm.triage import script
from mailvm.triage.base import Context, clip, decode_text, extension, looks_binary
from mailvm.verdict import Artifact, Finding

SOURCE = "triage:onenote"
FILE_DATA_HEADER = bytes.fromhex("e716e3bd65261145a4c48d4d0b7a9eac")
FILE_DATA_FOOTER = bytes.fromhex("22a7fb71790f0b4abb13899256426b24")
HEADER_SIZE = 16 + 8 + 4 + 8
MAX_FILES = 200

IMAGE_MAGICS = (b"\x89PNG", b"\xff\xd8\xff", b"GIF87a", b"GIF89a", b"BM", b"II*\x00", b"MM\x00*", b"\xd7\xcd\xc6\x9a",
                b"RIFF")
DANGEROUS_EXTENSIONS = frozenset({
    "exe", "scr", "com", "pif", "bat", "cmd", "js", "jse", "vbs", "vbe", "wsf", "wsh", "hta", "lnk", "ps1", "psm1",
    "jar", "msi", "dll", "cpl", "reg", "url", "iso", "img", "vhd", "vhdx", "chm", "sct", "xll", "docm", "xlsm",
    "pptm", "library-ms", "search-ms", "scf", "application", "appx", "msix",
})
_UTF16_NAME = re.compile(rb"((?:[\x20-\x7e]\x00){1,120}\.\x00(?:[A-Za-z0-9]\x00){2,10})(?=\x00\x00|[^\x20-\x7e])")
_CLICK_LURE = re.compile(r"(?i)double[- ]?click|click (?:twice|to view)|open (?:the )?(?:attached )?document")
_HTA = re.compile(rb"(?i)<\s*hta:application|<\s*script[^>]*language\s*=\s*[\"']?vbscript")
_SCRIPT_HINTS: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("bat", re.compile(r"(?im)^\s*@?echo\s+off\b|^\s*(?:start|call|set)\s+\S|%comspec%|\bcmd(?:\.exe)?\s+/[ck]\b")),
    ("ps1", re.compile(r"(?i)\b(?:invoke-expression|iex\s*\(|new-object\s+net\.webclient|start-process|-encodedcommand)\b")),
    ("vbs", re.compile(r"(?i)\bcreateobject\s*\(\s*[\"']w?script\.shell|\bwscript\.(?:shell|createobject|sleep)\b")),
    ("js", re.compile(r"(?i)\bnew\s+activexobject\s*\(|\bwscript\.createobject\s*\(")),
    ("sh", re.compile(r"^#!\s*/")),
)


@dataclass(frozen=True)
class Embedded:
    """One file carved out of a section: a name from its content, its type, offset and bytes."""

    name: str
    kind: str  # exe, elf, lnk, hta, bat, ps1, vbs, js, sh, ole, zip, pdf, rar, 7z, cab, image, text, bin
    offset: int
    data: bytes

    @property
    def is_image(self) -> bool:
        return self.kind == "image"

    @property
    def runs(self) -> bool:
        """Windows runs it on a double click (an executable, shortcut or script)."""
        return self.kind in ("exe", "elf", "lnk", "hta", "bat", "ps1", "vbs", "js", "sh", "msi")


def _content_kind(blob: bytes) -> str:
    head = blob[:4096]
    if head.startswith(b"MZ"):
        return "exe"
    if head.startswith(b"\x7fELF"):
        return "elf"
    if head[:4] == b"L\x00\x00\x00" and head[4:20] == bytes.fromhex("0114020000000000c000000000000046"):
        return "lnk"
    if head.startswith(b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"):
        return "msi" if b"M\x00S\x00I\x00" in blob[:65536] or b"Installer" in blob[:65536] else "ole"
    if head.startswith(b"PK\x03\x04"):
        return "zip"
    if head.startswith(b"%PDF"):
        return "pdf"
    if head.startswith(b"Rar!"):
        return "rar"
    if head.startswith(b"7z\xbc\xaf"):
        return "7z"
    if head.startswith(b"MSCF"):
        return "cab"
    if head.startswith(IMAGE_MAGICS) or (head[:4] == b"\x01\x00\x00\x00" and head[40:44] == b" EMF"):
        return "image"
    if _HTA.search(head):
        return "hta"
    if not looks_binary(head):
        text = decode_text(head, 4096)
        for kind, rx in _SCRIPT_HINTS:
            if rx.search(text):
                return kind
        if re.search(r"(?i)<\s*(html|script|body)\b", text):
            return "html"
        return "text"
    return "bin"


def embedded(data: bytes, max_files: int = MAX_FILES, max_bytes: int | None = None) -> list[Embedded]:
    """Every FileDataStoreObject in ``data`` (bounded; a length past the end of the file ends the carving)."""
    out: list[Embedded] = []
    budget = len(data) if max_bytes is None else max_bytes
    pos = 0
    while len(out) < max_files:
        at = data.find(FILE_DATA_HEADER, pos)
        if at < 0 or at + HEADER_SIZE > len(data):
            break
        (length,) = struct.unpack_from("<Q", data, at + 16)
        start = at + HEADER_SIZE
        if length > len(data) - start or length > budget:
            pos = at + 16  # a false match or a truncated file: keep searching after it
            continue
        blob = data[start : start + length]
        budget -= length
        kind = _content_kind(blob)
        out.append(Embedded(f"embedded_{len(out) + 1}.{kind}", kind, at, blob))
        pos = start + length
    return out


def carve(data: bytes, images: bool = False) -> list[tuple[str, bytes]]:
    """``(name, bytes)`` of the files embedded in a OneNote section, pictures left out unless ``images``.

    For extraction (one artifact per file); never raises for hostile input.
    """
    return [(e.name, e.data) for e in embedded(data) if images or not e.is_image]


def file_names(data: bytes, limit: int = 20) -> list[str]:
    """UTF-16 strings in the section that look like file names (``invoice.hta``)."""
    names: list[str] = []
    for m in _UTF16_NAME.finditer(data[: 64 * 1024 * 1024]):
        name = m.group(1).decode("utf-16-le", "replace").strip()
        if name not in names and not re.match(r"(?i)^(https?|www)\b", name):
            names.append(name)
        if len(names) >= limit:
            break
    return names


def analyze(artifact: Artifact, data_path: str, ctx: Context) -> list[Finding]:
    data = ctx.data
    files = embedded(data)
    names = file_names(data)
    bad_names = [n for n in names if extension(n) in DANGEROUS_EXTENSIONS]
    lure_text = bool(_CLICK_LURE.search(data[: 16 * 1024 * 1024].decode("utf-16-le", "ignore"))
                     or _CLICK_LURE.search(data[: 16 * 1024 * 1024].decode("latin-1")))
    out: list[Finding] = []
    shown = f"; names in the section: {', '.join(clip(n, 40) for n in names[:6])}" if names else ""
    running = [f for f in files if f.runs]
    others = [f for f in files if not f.runs and not f.is_image]
    if running:
        kinds = ", ".join(sorted({f.kind for f in running}))
        out.append(Finding("onenote_embedded_executable", 8, f"{len(running)} embedded file(s) that run when "
                                                             f"double-clicked ({kinds}){shown}", SOURCE))
        for f in running:
            if f.kind in ("bat", "ps1", "vbs", "js", "sh", "hta"):
                out += script.text_findings(decode_text(f.data, 4 * 1024 * 1024), SOURCE)
    elif bad_names:
        out.append(Finding("onenote_embedded_name", 6, f"the section names files that run: "
                                                       f"{', '.join(clip(n, 40) for n in bad_names[:6])}", SOURCE))
    if others:
        kinds = ", ".join(sorted({f.kind for f in others}))
        sev = 5 if lure_text else 4
        lure = "; the page asks to double-click" if lure_text else ""
        out.append(Finding("onenote_embedded_file", sev, f"{len(others)} embedded file(s) ({kinds}){lure}{shown}", SOURCE))
    if lure_text and running:
        out.append(Finding("onenote_click_lure", 5, "the page asks the reader to double-click", SOURCE))
    if not files:
        out.append(Finding("onenote_section", 1, f"OneNote section without embedded files{shown}", SOURCE))
    return out


__all__ = ["Embedded", "analyze", "carve", "embedded", "file_names"]
