"""Which kind of file an artifact is: the first decision of triage.

:func:`classify` combines three sources, in this order of trust:

1. magic bytes read from the file itself (PE/ELF/Mach-O headers, LNK header and
   CLSID, OLE2, RTF, PDF, zip contents, disk-image signatures...);
2. libmagic's MIME type and description (``Artifact.type`` / ``description``);
3. the file name's extension, used only as a hint to tell scripts from plain
   text (``.js``, ``.vbs``, ``.ps1``...), never to overrule content.

The kind decides which analyzers run and whether the file is detonated
(:data:`mailvm.triage.DETONATE_KINDS`).  Never raises: unreadable files are
``unknown`` (and therefore detonated).
"""

from __future__ import annotations

import io
import logging
import os
import re
from typing import BinaryIO, Callable

from mailvm.triage import mobileconfig, shortcut, ziputil
from mailvm.triage.base import extension, looks_binary
from mailvm.verdict import Artifact

log = logging.getLogger(__name__)

HEAD_BYTES = 64 * 1024  # enough for the ISO 9660 / UDF descriptors at 32 KiB
TAIL_BYTES = 512

SCRIPT_EXTENSIONS = frozenset({
    "js", "jse", "vbs", "vbe", "ps1", "psm1", "psd1", "bat", "cmd", "sh", "bash", "zsh", "ksh",
    "py", "pyw", "pl", "rb", "php", "hta", "wsf", "wsh", "sct", "vba", "bas", "applescript", "scpt", "lua",
    "command", "tcl",
})

#: Office extensions Word/Excel also open as MHT ("single file web page", the ActiveMime macro trick)
MHT_OFFICE_EXTENSIONS = frozenset({"doc", "docm", "dot", "dotm", "xls", "xlsm", "xlt", "xltm", "xla", "ppt", "pptm", "pps",
                                   "ppsm", "rtf"})

LNK_CLSID = bytes.fromhex("0114020000000000c000000000000046")
OLE_MAGIC = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"
ONENOTE_MAGIC = bytes.fromhex("e4525c7b8cd8a74daeb15378d02996d3")
MACHO_MAGICS = (b"\xfe\xed\xfa\xce", b"\xfe\xed\xfa\xcf", b"\xce\xfa\xed\xfe", b"\xcf\xfa\xed\xfe")

ARCHIVE_MAGICS: tuple[tuple[int, bytes], ...] = (
    (0, b"7z\xbc\xaf\x27\x1c"),
    (0, b"Rar!\x1a\x07"),
    (0, b"\x1f\x8b"),          # gzip
    (0, b"BZh"),
    (0, b"\xfd7zXZ\x00"),
    (0, b"\x28\xb5\x2f\xfd"),  # zstd
    (0, b"MSCF"),              # cabinet
    (0, b"ISc("),              # InstallShield cabinet
    (0, b"!<arch>\n"),
    (0, b"\x60\xea"),          # arj
    (2, b"-lh"),               # lzh
    (257, b"ustar"),           # tar
    (0, b"070701"), (0, b"070707"),  # cpio
    (0, b"xar!"),
    (0, b"\x1f\x9d"),          # compress
    (0, b"PK\x05\x06"),        # empty zip
)

_OFFICE_XML_RE = re.compile(
    rb"<\?mso-application\s+progid=\"(Word\.Document|Excel\.Sheet|PowerPoint\.Show)"
    rb"|schemas\.microsoft\.com/office/word/2003/wordml"
    rb"|urn:schemas-microsoft-com:office:spreadsheet"
    rb"|schemas\.microsoft\.com/office/2006/xmlPackage",
    re.I,
)
_HTML_RE = re.compile(rb"<\s*(!doctype\s+html|html[\s>]|head[\s>]|body[\s>]|script[\s>]|iframe[\s>]|meta\s+http-equiv|svg[\s>])", re.I)
_MHT_RE = re.compile(rb"^(MIME-Version:|Content-Type:\s*multipart/related)", re.I | re.M)
_SHEBANG_RE = re.compile(rb"^#!\s*/\S+")


def _mime_kind(mime: str, desc: str) -> str | None:
    """Kind from libmagic alone (``None`` when it says nothing decisive)."""
    d = desc.lower()
    if mime in ("application/x-empty", "inode/x-empty"):
        return "text"
    if "outlook message" in d or mime in ("message/rfc822", "message/news", "application/vnd.ms-outlook"):
        return "email"
    if "msi installer" in d or mime == "application/x-msi":
        return "executable"
    if mime in ("application/x-dosexec", "application/vnd.microsoft.portable-executable", "application/x-executable",
                "application/x-sharedlib", "application/x-pie-executable", "application/x-mach-binary",
                "application/x-msdownload", "application/java-archive", "application/x-java-applet",
                "application/vnd.android.package-archive"):
        return "executable"
    if mime == "application/x-ms-shortcut" or "ms windows shortcut" in d:
        return "lnk"
    if mime == "application/pdf":
        return "pdf"
    if mime in ("application/msword", "application/rtf", "text/rtf", "application/encrypted", "application/x-sylk",
                "application/vnd.ms-office", "application/onenote") \
            or mime.startswith(("application/vnd.ms-", "application/vnd.openxmlformats-officedocument",
                                "application/vnd.oasis.opendocument")) \
            or "composite document file" in d or "cdfv2" in d:
        return "office"
    if mime in ("text/html", "application/xhtml+xml", "image/svg+xml", "application/x-mimearchive", "multipart/related"):
        return "html"
    if mime in ("application/x-iso9660-image", "application/x-udf-image", "application/x-virtualbox-vhd",
                "application/x-virtualbox-vhdx", "application/x-apple-diskimage", "application/x-qemu-disk",
                "application/x-vmdk") or "iso 9660" in d or "udf filesystem" in d or "microsoft disk image" in d \
            or "dos/mbr boot sector" in d:
        return "disk_image"
    if mime in ("application/zip", "application/x-7z-compressed", "application/x-rar", "application/vnd.rar",
                "application/x-rar-compressed", "application/gzip", "application/x-gzip", "application/x-bzip2",
                "application/x-xz", "application/x-tar", "application/x-lzh-compressed", "application/x-lzip",
                "application/vnd.ms-cab-compressed", "application/x-arj", "application/zstd", "application/x-cpio",
                "application/x-archive", "application/x-compress", "application/x-lzma", "application/x-ace-compressed",
                "application/x-stuffit"):
        return "archive"
    if mime.startswith(("text/x-shellscript", "text/x-python", "text/x-perl", "text/x-php", "text/x-ruby",
                        "text/x-script", "text/x-msdos-batch", "application/javascript", "text/javascript",
                        "application/x-powershell", "text/x-tcl", "text/x-lua", "text/x-awk")) \
            or "dos batch file" in d or "script text executable" in d:
        return "script"
    if mime.startswith("image/"):
        return "image"
    if mime.startswith("audio/"):
        return "audio"
    if mime.startswith("video/"):
        return "video"
    if mime.startswith("text/") or mime in ("application/json", "application/xml", "application/csv"):
        return "text"
    return None


def _zip_kind(open_fh: Callable[[], BinaryIO]) -> str:
    """office / executable / archive for a zip, from its member names."""
    try:
        with open_fh() as fh:
            zf = ziputil.open_zip(fh)
            with zf:
                names = ziputil.names(zf)
                lower = {n.lower() for n in names}
                if "[content_types].xml" in lower:
                    if any(n.startswith("appxmanifest.xml") or n == "appxblockmap.xml" for n in lower):
                        return "executable"  # appx / msix installer package
                    return "office"  # OOXML: docx/xlsx/pptx, also xps/vsdx
                if "mimetype" in lower:
                    mt = ziputil.read_member(zf, "mimetype", 200)
                    if mt.startswith(b"application/vnd.oasis.opendocument"):
                        return "office"
                    if mt.startswith(b"application/epub"):
                        return "archive"
                if any(n.startswith(("word/", "xl/", "ppt/")) for n in lower):
                    return "office"
                if "androidmanifest.xml" in lower and any(n.endswith(".dex") for n in lower):
                    return "executable"
                if "meta-inf/manifest.mf" in lower and any(n.endswith(".class") for n in lower):
                    return "executable"  # jar
    except ziputil.ZipRefused as exc:
        log.debug("zip not listed: %s", exc)
    except OSError as exc:
        log.debug("zip not readable: %s", exc)
    return "archive"


def _ole_is_outlook_message(open_fh: Callable[[], BinaryIO]) -> bool:
    """An OLE compound file whose top-level streams are MAPI properties (``__substg1.0_*``)."""
    import olefile

    try:
        with open_fh() as fh, olefile.OleFileIO(fh) as ole:
            return any(entry[0].startswith(("__substg1.0_", "__properties_version1.0"))
                       for entry in ole.listdir(streams=True, storages=True)[:500])
    except Exception:  # a damaged OLE file: the Office analyzers report it
        return False


def _disk_image(head: bytes, tail: bytes) -> bool:
    for off in (0x8001, 0x8801, 0x9001):
        if head[off : off + 5] in (b"CD001", b"BEA01", b"NSR02", b"NSR03"):
            return True
    if head.startswith((b"vhdxfile", b"conectix", b"QFI\xfb", b"KDMV")) or tail[-512:].startswith(b"conectix"):
        return True
    if len(tail) >= 512 and tail[-512:-508] == b"koly":  # Apple DMG trailer
        return True
    return False


def classify_data(mime: str, desc: str, name: str, head: bytes, tail: bytes, size: int,
                  open_fh: Callable[[], BinaryIO]) -> str:
    """Kind from the head and tail of a file plus libmagic's answer (see module doc)."""
    mime = (mime or "").lower().split(";")[0].strip()
    desc = desc or ""
    ext = extension(name)
    if size == 0:
        return "text"
    # -- 1. magic bytes --------------------------------------------------------
    if head.startswith(b"MZ") or head.startswith(b"\x7fELF") or head.startswith(MACHO_MAGICS):
        return "executable"
    if head.startswith(b"\xca\xfe\xba\xbe"):  # fat Mach-O or Java class: both run
        return "executable"
    if head[:4] == b"L\x00\x00\x00" and head[4:20] == LNK_CLSID:
        return "lnk"
    if head.startswith(OLE_MAGIC):
        kind = _mime_kind(mime, desc)
        if kind not in ("executable", "email") and _ole_is_outlook_message(open_fh):
            kind = "email"  # an Outlook .msg: a container (extraction opens it), not a document
        return kind if kind in ("executable", "email") else "office"
    if head.startswith(ONENOTE_MAGIC):
        return "onenote"  # OneNote section: analysed statically, its embedded files are carved out
    if head.startswith(b"{\\rt"):  # Word opens anything starting with {\rt as RTF
        return "office"
    if head.startswith(b"PK\x03\x04") or (head.startswith(b"PK") and mime == "application/zip"):
        return _zip_kind(open_fh)
    if head.startswith(b"%PDF"):
        return "pdf"
    for off, magic in ARCHIVE_MAGICS:
        if head[off : off + len(magic)] == magic:
            return "archive"
    if _disk_image(head, tail):
        return "disk_image"
    if b"%PDF-" in head[:1024]:  # readers accept a header anywhere in the first KiB
        return "pdf"
    if head.startswith(b"ID;P") and ext in ("slk", "sylk", "xls", "csv", ""):
        return "office"  # SYLK spreadsheet (can carry Excel 4 macros)
    if shortcut.is_shortcut(head):  # .url/.scf/.library-ms/.search(Connector)-ms: static only
        return "shortcut"
    if mobileconfig.is_profile(head):  # Apple configuration profile, plist or signed: static only
        return "mobileconfig"
    # -- 2. libmagic -----------------------------------------------------------
    kind = _mime_kind(mime, desc)
    text_like = kind in ("text", "html", None) and not looks_binary(head)
    if text_like:
        if _OFFICE_XML_RE.search(head[:4096]):
            return "office"  # Word/Excel 2003 XML, flat OPC
        if ext in SCRIPT_EXTENSIONS or _SHEBANG_RE.match(head):
            return "script"
        if _MHT_RE.search(head[:4096]):
            if ext in MHT_OFFICE_EXTENSIONS:
                return "office"
            if ext in ("mht", "mhtml"):
                return "html"
        if kind is None or kind == "text":
            if _HTML_RE.search(head[:4096]) and ext not in ("txt", "csv", "log", "md", "json", "eml"):
                return "html"
        if kind is None:
            return "text"
    if kind is not None:
        return kind
    return "unknown"


def classify(artifact: Artifact) -> str:
    """Kind of ``artifact`` (one of :data:`mailvm.triage.KINDS`); never raises."""
    try:
        with open(artifact.path, "rb") as fh:
            head = fh.read(HEAD_BYTES)
            size = fh.seek(0, os.SEEK_END)
            fh.seek(max(0, size - TAIL_BYTES))
            tail = fh.read(TAIL_BYTES)
    except OSError as exc:
        log.warning("cannot read %s for classification: %s", artifact.path, exc)
        return "unknown"
    try:
        return classify_data(artifact.type, artifact.description, artifact.name, head, tail, size,
                             lambda: open(artifact.path, "rb"))
    except Exception as exc:  # classification must never take triage down
        log.warning("classification failed for %s: %s", artifact.name, exc)
        return "unknown"


def classify_bytes(artifact: Artifact, data: bytes) -> str:
    """Like :func:`classify` but on bytes already read (used by :class:`~mailvm.triage.Triage`)."""
    try:
        return classify_data(artifact.type, artifact.description, artifact.name, data[:HEAD_BYTES],
                             data[-TAIL_BYTES:], len(data), lambda: io.BytesIO(data))
    except Exception as exc:  # classification must never take triage down
        log.warning("classification failed for %s: %s", artifact.name, exc)
        return "unknown"
