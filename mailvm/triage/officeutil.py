"""Guards and vocabulary shared by the Office analyzers.

oletools is written for analysts, not for hostile input at a mail gateway: it
opens every zip member, decompresses ActiveMime blobs with an unbounded
``zlib.decompress`` and, when the usual offsets fail, tries one at every
``0x78`` byte.  The guards here run first and refuse what would make that
unbounded:

* :func:`ooxml_refusal` — too many zip entries, too many uncompressed bytes,
  extreme compression ratios;
* :func:`activemime_refusal` — ActiveMime blobs (Word 2003 XML, MHT) whose zlib
  stream is larger than the cap or not at the offsets oletools tries first.

A refusal becomes an ``office_parse_refused`` finding (severity 4: a document
built to defeat parsers is itself suspicious) and the analyzer skips oletools.
"""

from __future__ import annotations

import binascii
import re
import struct
import zlib

from mailvm.triage import ziputil

OLE_MAGIC = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"
MAX_OOXML_UNCOMPRESSED = 512 * 1024 * 1024
MAX_MEMBER_RATIO = 1000
MAX_ACTIVEMIME_BYTES = 64 * 1024 * 1024
MAX_ACTIVEMIME_BLOBS = 16

#: programs a DDE field or an embedded object starts to run code
EXEC_RE = re.compile(
    r"(?<![\w.])(cmd(\.exe)?|powershell(\.exe)?|pwsh|mshta|wscript|cscript|rundll32|regsvr32|certutil|bitsadmin|"
    r"msiexec|schtasks|wmic|calc(\.exe)?|conhost|forfiles|explorer\.exe|hh\.exe|scriptrunner)(?![\w])",
    re.I,
)


def is_zip(data: bytes) -> bool:
    return data[:4] == b"PK\x03\x04"


def is_ole(data: bytes) -> bool:
    return data[:8] == OLE_MAGIC


def ooxml_refusal(data: bytes) -> str | None:
    """Why a zip-based document must not be handed to oletools (``None`` if it may)."""
    try:
        zf = ziputil.open_zip(data)
    except ziputil.ZipRefused as exc:
        return f"zip container refused: {exc}"
    with zf:
        total = 0
        for info in zf.infolist():
            total += max(0, info.file_size)
            if info.file_size > 1024 * 1024 and info.file_size > max(1, info.compress_size) * MAX_MEMBER_RATIO:
                return f"member {info.filename[:80]!r} expands {info.file_size // max(1, info.compress_size)}x"
        if total > MAX_OOXML_UNCOMPRESSED:
            return f"{total} bytes uncompressed (limit {MAX_OOXML_UNCOMPRESSED})"
    return None


_AM_B64 = re.compile(rb"QWN0aXZlTWlt[A-Za-z0-9+/=\s]*")
_AM_RAW = re.compile(rb"ActiveMime")


def _bounded_zlib_ok(blob: bytes, cap: int) -> str | None:
    """``None`` if one of oletools' first offsets holds a complete zlib stream within ``cap``."""
    offsets = [0x32, 0x22A]
    if len(blob) >= 0x20:
        offsets.insert(0, struct.unpack_from("<H", blob, 0x1E)[0] + 46)
    for start in offsets:
        if start >= len(blob):
            continue
        d = zlib.decompressobj()
        try:
            out = d.decompress(blob[start:], cap)
        except zlib.error:
            continue
        if d.eof:
            return None
        if len(out) >= cap:
            return f"ActiveMime blob expands beyond {cap} bytes"
    return "ActiveMime blob without a complete zlib stream at the usual offsets"


def activemime_refusal(data: bytes, cap: int = MAX_ACTIVEMIME_BYTES) -> str | None:
    """Why a text-based Office file (Word 2003 XML, MHT) must not go to olevba."""
    if b"QWN0aXZlTWlt" not in data and b"ActiveMime" not in data:
        return None
    blobs: list[bytes] = []
    for m in _AM_B64.finditer(data):
        raw = re.sub(rb"\s+", b"", m.group(0))
        raw = raw[: len(raw) - len(raw) % 4]
        try:
            blobs.append(binascii.a2b_base64(raw))
        except (binascii.Error, ValueError):
            continue
        if len(blobs) > MAX_ACTIVEMIME_BLOBS:
            return f"more than {MAX_ACTIVEMIME_BLOBS} ActiveMime blobs"
    for m in _AM_RAW.finditer(data):
        blobs.append(data[m.start():])
        if len(blobs) > MAX_ACTIVEMIME_BLOBS:
            return f"more than {MAX_ACTIVEMIME_BLOBS} ActiveMime blobs"
    for blob in blobs:
        if not blob.startswith(b"ActiveMime"):
            continue
        why = _bounded_zlib_ok(blob, cap)
        if why:
            return why
    return None
