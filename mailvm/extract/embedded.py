"""Files hidden in a message's text: parts recovered past MIME tricks, and base64 blobs.

Two ways attackers keep a file away from a MIME walker, and the answer to each:

* **Broken or reused boundaries.**  A nested multipart that declares its parent's
  boundary, or a part after a missing close delimiter, is invisible to a
  standard parser (the zip after it is simply not there).  When the parse
  reported boundary defects, :func:`salvage_parts` scans the raw message for
  every ``--boundary`` line itself and reads each part's headers and body as a
  mail client would; files not already found become artifacts (origin
  ``recovered:<name>``) with a ``mime_part_recovered`` finding.
* **A file inside text.**  A ``text/html`` part whose decoded bytes are a zip, a
  base64 blob pasted into a text or HTML body, a ``data:application/...`` URI:
  :func:`carve_text` decodes base64 runs and keeps those that start with the
  signature of a file type worth analysing (archives, executables, documents,
  shortcuts), as artifacts with origin ``embedded:<name>``.

Both are bounded: parts and blobs per message, bytes per blob (the spool's own
limits apply on top), and every regular expression is linear.
"""

from __future__ import annotations

import binascii
import email.message
import email.parser
import email.policy
import quopri
import re
from dataclasses import dataclass
from typing import Iterator

SOURCE = "extract"
MAX_SALVAGED_PARTS = 500
MAX_BLOBS = 20
#: shortest base64 run considered (a file header needs a few hundred bytes to be worth it)
MIN_B64 = 128
MAX_HEADER_BLOCK = 16 * 1024

#: signature -> (extension, what it is); only types that are run, opened or expanded
SIGNATURES: tuple[tuple[bytes, str], ...] = (
    (b"PK\x03\x04", "zip"),
    (b"MZ", "exe"),
    (b"\x7fELF", "elf"),
    (b"%PDF-", "pdf"),
    (b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1", "doc"),
    (b"Rar!\x1a\x07", "rar"),
    (b"7z\xbc\xaf\x27\x1c", "7z"),
    (b"\x1f\x8b\x08", "gz"),
    (b"{\\rtf", "rtf"),
    (b"L\x00\x00\x00\x01\x14\x02\x00", "lnk"),
    (b"\xe4\x52\x5c\x7b\x8c\xd8\xa7\x4d", "one"),
    (b"MSCF\x00\x00\x00\x00", "cab"),
)

# a boundary line ends with LF or CRLF (SMTP and the milter hand messages over with CRLF)
_BOUNDARY_LINE = re.compile(rb"^--[!-~][ -~]{0,199}\r?$", re.M)
_HEADER_END = re.compile(rb"\r?\n\r?\n")
# a base64 run: groups of 4 with optional line breaks between them (no nested ambiguity: linear)
_B64_RUN = re.compile(rb"(?:[A-Za-z0-9+/]{4}(?:\r?\n)?){32,}(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?")
#: a stretch of base64 letters and line ends long enough to hold a run: every _B64_RUN match lies in
#: one (its padding just after), and ordinary text has none, so the costly pattern runs only there
_B64_STRETCH = re.compile(rb"[A-Za-z0-9+/\r\n]{%d,}" % MIN_B64)


def _b64_runs(data: bytes) -> Iterator[re.Match[bytes]]:
    """The matches of :data:`_B64_RUN` in ``data``, in order (searched only inside stretches)."""
    for stretch in _B64_STRETCH.finditer(data):
        yield from _B64_RUN.finditer(data, stretch.start(), min(len(data), stretch.end() + 2))


def file_signature(data: bytes, whole: bool = False) -> str | None:
    """The extension of a file type worth analysing that ``data`` starts with, or None.

    ``MZ`` is two bytes: with ``whole`` (all of the file) a PE must also have its
    ``PE\\0\\0`` header where the DOS header points.
    """
    for magic, ext in SIGNATURES:
        if data.startswith(magic):
            if ext == "exe" and whole:
                if len(data) < 64:
                    return None
                off = int.from_bytes(data[0x3C:0x40], "little")
                if data[off : off + 4] != b"PE\0\0":
                    return None
            return ext
    return None


@dataclass
class Salvaged:
    name: str
    content_type: str
    data: bytes


def _decode_body(body: bytes, cte: str) -> bytes:
    cte = cte.strip().lower()
    if cte == "base64":
        cleaned = re.sub(rb"[^A-Za-z0-9+/=]", b"", body)
        cleaned = cleaned[: len(cleaned) - len(cleaned) % 4]
        try:
            return binascii.a2b_base64(cleaned)
        except (binascii.Error, ValueError):
            return b""
    if cte == "quoted-printable":
        return quopri.decodestring(body)
    return body


def salvage_parts(raw: bytes, max_bytes: int) -> Iterator[Salvaged]:
    """Every part that carries a file, read past the structure the parser believed.

    A part counts when it names a file (``filename`` / ``name``) or is base64 of
    a non-text type; its body runs to the next boundary-looking line.
    """
    from mailvm.extract.mime import part_filename

    starts = []
    for m in _BOUNDARY_LINE.finditer(raw):
        starts.append((m.start(), m.end()))
        if len(starts) > MAX_SALVAGED_PARTS:
            break
    parser = email.parser.BytesHeaderParser(policy=email.policy.compat32)
    for i, (_s, end) in enumerate(starts):
        stop = starts[i + 1][0] if i + 1 < len(starts) else len(raw)
        segment = raw[end:stop].lstrip(b"\r\n")
        m = _HEADER_END.search(segment, 0, MAX_HEADER_BLOCK)
        if m is None:
            continue
        try:
            headers: email.message.Message = parser.parsebytes(segment[: m.start()] + b"\n")
        except Exception:
            continue
        ctype = (headers.get_content_type() or "").lower()
        cte = str(headers.get("Content-Transfer-Encoding", "") or "")
        name = part_filename(headers)
        if ctype.startswith("multipart/"):
            continue
        if not name and not (cte.strip().lower() == "base64" and not ctype.startswith("text/")):
            continue
        data = _decode_body(segment[m.end():], cte)[: max_bytes + 1]
        if data:
            yield Salvaged(name or "", ctype, data)


def carve_text(data: bytes, max_bytes: int, limit: int = MAX_BLOBS) -> Iterator[tuple[str, bytes]]:
    """``(extension, bytes)`` of base64 blobs inside ``data`` that decode to a known file type."""
    found = 0
    for m in _b64_runs(data):
        run = m.group(0)
        if len(run) < MIN_B64:
            continue
        head = re.sub(rb"\s", b"", run[:120])
        try:
            start = binascii.a2b_base64(head[: len(head) - len(head) % 4])
        except (binascii.Error, ValueError):
            continue
        ext = file_signature(start)
        if ext is None:
            continue
        cleaned = re.sub(rb"\s", b"", run)
        cleaned = cleaned[: len(cleaned) - len(cleaned) % 4]
        try:
            blob = binascii.a2b_base64(cleaned[: (max_bytes + 3) // 3 * 4 + 4])
        except (binascii.Error, ValueError):
            continue
        if file_signature(blob, whole=True) is None:
            continue
        yield ext, blob
        found += 1
        if found >= limit:
            return
