"""Bounded access to zip containers (OOXML, ODF, XPS, JAR...) for classification
and the Office analyzers.

``zipfile.ZipFile`` parses the whole central directory when it opens a file: a
hostile zip with a million entries costs hundreds of megabytes before any check
can run.  :func:`open_zip` first reads the end-of-central-directory record
itself and refuses archives with more than ``max_entries`` entries or a central
directory that does not fit the file.  :func:`read_member` never returns more
than the caller's limit, whatever sizes the archive declares.
"""

from __future__ import annotations

import io
import logging
import struct
import zipfile
import zlib
from typing import BinaryIO

log = logging.getLogger(__name__)

MAX_ENTRIES = 5000
EOCD_SIG = b"PK\x05\x06"
ZIP64_LOCATOR_SIG = b"PK\x06\x07"
#: EOCD is 22 bytes plus a comment of at most 65535 bytes
EOCD_SEARCH = 22 + 65535


class ZipRefused(Exception):
    """The container is not a zip we are willing to open (too many entries, broken)."""


def entry_count(fh: BinaryIO) -> int:
    """Number of entries the end-of-central-directory record declares (``ZipRefused`` if none)."""
    fh.seek(0, io.SEEK_END)
    size = fh.tell()
    start = max(0, size - EOCD_SEARCH)
    fh.seek(start)
    tail = fh.read(size - start)
    pos = tail.rfind(EOCD_SIG)
    if pos < 0 or pos + 22 > len(tail):
        raise ZipRefused("no end-of-central-directory record")
    (_sig, _disk, _cd_disk, _n_disk, n_total, cd_size, cd_off, _clen) = struct.unpack_from("<4sHHHHIIH", tail, pos)
    if n_total == 0xFFFF or cd_off == 0xFFFFFFFF:
        # zip64: the locator sits just before the EOCD
        loc = pos - 20
        if loc < 0 or tail[loc : loc + 4] != ZIP64_LOCATOR_SIG:
            raise ZipRefused("zip64 without locator")
        (z64_off,) = struct.unpack_from("<Q", tail, loc + 8)
        if z64_off + 56 > size:
            raise ZipRefused("zip64 record outside the file")
        fh.seek(z64_off)
        rec = fh.read(56)
        if len(rec) < 56 or rec[:4] != b"PK\x06\x06":
            raise ZipRefused("bad zip64 record")
        (n_total64,) = struct.unpack_from("<Q", rec, 32)
        return int(n_total64)
    if cd_size > size:
        raise ZipRefused("central directory larger than the file")
    return n_total


def open_zip(source: bytes | BinaryIO, max_entries: int = MAX_ENTRIES) -> zipfile.ZipFile:
    """Open a zip from bytes or a seekable file after checking its entry count."""
    fh: BinaryIO = io.BytesIO(source) if isinstance(source, (bytes, bytearray, memoryview)) else source
    try:
        n = entry_count(fh)
    except (OSError, struct.error) as exc:
        raise ZipRefused(str(exc)) from None
    if n > max_entries:
        raise ZipRefused(f"{n} entries (limit {max_entries})")
    fh.seek(0)
    try:
        return zipfile.ZipFile(fh)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError, NotImplementedError, EOFError) as exc:
        raise ZipRefused(f"not a readable zip: {exc}") from None


def names(zf: zipfile.ZipFile) -> list[str]:
    return [i.filename for i in zf.infolist()]


def read_member(zf: zipfile.ZipFile, name: str, limit: int) -> bytes:
    """At most ``limit`` bytes of member ``name``; ``b""`` when it cannot be read."""
    try:
        with zf.open(name) as fh:
            return fh.read(limit)
    except (KeyError, RuntimeError, zipfile.BadZipFile, OSError, ValueError, NotImplementedError, EOFError,
            zlib.error) as exc:
        log.debug("cannot read zip member %r: %s", name, exc)
        return b""


def total_uncompressed(zf: zipfile.ZipFile) -> int:
    return sum(max(0, i.file_size) for i in zf.infolist())


def is_encrypted(zf: zipfile.ZipFile) -> bool:
    return any(i.flag_bits & 0x1 for i in zf.infolist())
