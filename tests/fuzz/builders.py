"""Valid archives and messages, built in memory, as seeds for the fuzzers.

Formats and how each is made here:

* zip (deflated, stored, AES), tar (plain, gz, bz2, xz): the standard library / pyzipper;
* 7z: py7zr;
* ISO 9660 (with Joliet): pycdlib;
* RAR 4 and RAR 5: no RAR writer can be installed here (RAR compression is proprietary;
  ``rar`` is non-free and not in the configured Debian archive), so *stored* (uncompressed)
  archives are written by hand from the published format description.  Compressed RAR members
  are therefore only reached by mutation, never generated;
* CAB: stored (no compression) folders written by hand from [MS-CAB]; MSZIP/LZX folders only by
  mutation (gcab could make MSZIP ones, but one subprocess per example is too slow for the budget);
* TNEF (winmail.dat): written by hand (tnefparse only reads).

Member names are data: they may be hostile (``../x``, absolute, drive letters, control characters).
"""

from __future__ import annotations

import io
import struct
import tarfile
import warnings
import zipfile
import zlib
from email.message import EmailMessage
from typing import Sequence

Members = Sequence[tuple[str, bytes]]


# -- standard formats -----------------------------------------------------------------------


def zip_archive(members: Members, method: int = zipfile.ZIP_DEFLATED) -> bytes:
    buf = io.BytesIO()
    with warnings.catch_warnings(), zipfile.ZipFile(buf, "w", method) as z:
        warnings.simplefilter("ignore", UserWarning)  # duplicate member names are part of the game
        for name, data in members:
            z.writestr(zipfile.ZipInfo(name or "unnamed"), data, compress_type=method)
    return buf.getvalue()


def aes_zip_archive(members: Members, password: bytes = b"infected") -> bytes:
    import pyzipper

    buf = io.BytesIO()
    with warnings.catch_warnings(), pyzipper.AESZipFile(buf, "w", compression=pyzipper.ZIP_DEFLATED,
                                                        encryption=pyzipper.WZ_AES) as z:
        warnings.simplefilter("ignore", UserWarning)  # duplicate member names
        z.setpassword(password)
        for name, data in members:
            # pyzipper cuts a name at NUL and then fails on the empty rest (IndexError): no NUL in AES names
            z.writestr(name.replace("\x00", "_") or "unnamed", data)
    return buf.getvalue()


def tar_archive(members: Members, mode: str = "w") -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=mode, format=tarfile.PAX_FORMAT) as t:
        for name, data in members:
            ti = tarfile.TarInfo(name or "unnamed")
            ti.size = len(data)
            t.addfile(ti, io.BytesIO(data))
    return buf.getvalue()


def seven_zip_archive(members: Members) -> bytes:
    import py7zr

    buf = io.BytesIO()
    with py7zr.SevenZipFile(buf, "w") as z:
        for i, (name, data) in enumerate(members):
            # py7zr refuses some names (absolute, "..") when writing: keep the data, tame the name
            safe = "".join(c for c in name if c.isprintable()).replace("\\", "_").lstrip("/").replace("..", "__")
            z.writestr(data, f"{i}_{safe}")
    return buf.getvalue()


def iso_image(members: Members) -> bytes:
    import pycdlib

    iso = pycdlib.PyCdlib()
    iso.new(interchange_level=3, joliet=3)
    try:
        for i, (name, data) in enumerate(members):
            iso.add_fp(io.BytesIO(data), len(data), f"/F{i}.;1", joliet_path="/" + _joliet_name(name, i))
        out = io.BytesIO()
        iso.write_fp(out)
        return out.getvalue()
    finally:
        iso.close()


def _joliet_name(name: str, i: int) -> str:
    keep = "".join(c for c in name if c.isalnum() or c in "._-")[:40]
    return f"{i}_{keep}" if keep else f"file{i}"


# -- RAR (stored) ------------------------------------------------------------------------------


def _rar4_block(head_type: int, flags: int, body: bytes) -> bytes:
    size = 7 + len(body)
    rest = struct.pack("<BHH", head_type, flags, size) + body
    return struct.pack("<H", zlib.crc32(rest) & 0xFFFF) + rest


def rar4_archive(members: Members) -> bytes:
    """RAR 1.5-4.x ("Rar!\\x1a\\x07\\x00"), every member stored (method 0x30)."""
    out = bytearray(b"Rar!\x1a\x07\x00")
    out += _rar4_block(0x73, 0, b"\x00" * 6)  # archive header: reserved fields
    for name, data in members:
        raw_name = (name or "unnamed").encode("utf-8", "replace")[:1000]
        body = struct.pack(
            "<IIBIIBBHI",
            len(data),  # packed size
            len(data),  # unpacked size
            3,  # host OS: Unix
            zlib.crc32(data),
            0x5A8E3100,  # DOS date/time (2025-04-14)
            20,  # version needed to extract (2.0)
            0x30,  # method: store
            len(raw_name),
            0o100644,  # attributes (Unix mode)
        ) + raw_name
        out += _rar4_block(0x74, 0x8000, body) + data  # 0x8000: a data area follows
    out += _rar4_block(0x7B, 0x4000, b"")  # end of archive
    return bytes(out)


def _vint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _rar5_header(fields: bytes) -> bytes:
    """CRC32, size (vint), then the header fields (type, flags, ...)."""
    size = _vint(len(fields))
    return struct.pack("<I", zlib.crc32(size + fields)) + size + fields


def rar5_archive(members: Members) -> bytes:
    """RAR 5 ("Rar!\\x1a\\x07\\x01\\x00"), every member stored (compression method 0)."""
    out = bytearray(b"Rar!\x1a\x07\x01\x00")
    out += _rar5_header(_vint(1) + _vint(0) + _vint(0))  # main archive header, no flags
    for name, data in members:
        raw_name = (name or "unnamed").encode("utf-8", "replace")[:1000]
        fields = (
            _vint(2)  # file header
            + _vint(0x0002)  # header flags: data area present
            + _vint(len(data))  # data size
            + _vint(0x0004)  # file flags: CRC32 present
            + _vint(len(data))  # unpacked size
            + _vint(0o100644)  # attributes
            + struct.pack("<I", zlib.crc32(data))
            + _vint(0)  # compression: version 0, method 0 (store), no dictionary
            + _vint(1)  # host OS: Unix
            + _vint(len(raw_name))
            + raw_name
        )
        out += _rar5_header(fields) + data
    out += _rar5_header(_vint(5) + _vint(0) + _vint(0))  # end of archive
    return bytes(out)


# -- CAB (stored) ------------------------------------------------------------------------------


def cab_archive(members: Members) -> bytes:
    """A cabinet with one uncompressed folder ([MS-CAB] CFHEADER, CFFOLDER, CFFILE, CFDATA)."""
    files = bytearray()
    offset = 0
    names = []
    for name, data in members:
        raw = (name or "unnamed").replace("/", "\\").encode("utf-8", "replace").replace(b"\x00", b"_")[:250]
        names.append(raw)
        files += struct.pack("<IIHHHH", len(data), offset, 0, 0x5A8E, 0x3100, 0x20 | 0x80) + raw + b"\x00"
        offset += len(data)
    blob = b"".join(d for _n, d in members)
    blocks = [blob[i : i + 32768] for i in range(0, len(blob), 32768)]  # none at all when every file is empty
    header_len, folder_len = 36, 8
    coff_files = header_len + folder_len
    coff_data = coff_files + len(files)
    data_area = b"".join(struct.pack("<IHH", 0, len(b), len(b)) + b for b in blocks)
    total = coff_data + len(data_area)
    header = b"MSCF" + struct.pack("<IIIIIBBHHHHH", 0, total, 0, coff_files, 0, 3, 1, 1, len(members), 0, 0x1234, 0)
    folder = struct.pack("<IHH", coff_data, len(blocks), 0)
    return bytes(header + folder + files + data_area)


# -- TNEF ------------------------------------------------------------------------------------


def _tnef_attr(level: int, attr: int, data: bytes) -> bytes:
    return struct.pack("<BII", level, attr, len(data)) + data + struct.pack("<H", sum(data) & 0xFFFF)


def tnef_blob(members: Members) -> bytes:
    """winmail.dat: the TNEF version, a codepage, then per attachment its rendering data, title and data."""
    out = bytearray(struct.pack("<IH", 0x223E9F78, 0x1234))
    out += _tnef_attr(1, 0x00089006, struct.pack("<I", 0x00010000))
    out += _tnef_attr(1, 0x00069007, struct.pack("<II", 1252, 0))
    for name, data in members:
        out += _tnef_attr(2, 0x00069002, b"\x01\x00" + b"\xff" * 4 + b"\x00" * 8)
        out += _tnef_attr(2, 0x00018010, (name or "unnamed").encode("cp1252", "replace") + b"\x00")
        out += _tnef_attr(2, 0x0006800F, data)
    return bytes(out)


#: format name -> (builder, file name suffix); what the archive fuzzer draws from
ARCHIVE_FORMATS = {
    "zip": (zip_archive, ".zip"),
    "zip_stored": (lambda m: zip_archive(m, zipfile.ZIP_STORED), ".zip"),
    "zip_aes": (aes_zip_archive, ".zip"),
    "tar": (tar_archive, ".tar"),
    "tgz": (lambda m: tar_archive(m, "w:gz"), ".tgz"),
    "tbz2": (lambda m: tar_archive(m, "w:bz2"), ".tar.bz2"),
    "txz": (lambda m: tar_archive(m, "w:xz"), ".txz"),
    "7z": (seven_zip_archive, ".7z"),
    "iso": (iso_image, ".iso"),
    "rar4": (rar4_archive, ".rar"),
    "rar5": (rar5_archive, ".rar"),
    "cab": (cab_archive, ".cab"),
    "tnef": (tnef_blob, ".dat"),
}


# -- messages ------------------------------------------------------------------------------


def message(subject: str, body: str, attachments: Sequence[tuple[str, bytes, str]] = (), html: str | None = None) -> bytes:
    """A message with a text (and HTML) body and ``(filename, data, mime type)`` attachments."""
    m = EmailMessage()
    m["From"] = "sender@fuzz.test"
    m["To"] = "rcpt@example.com"
    m["Subject"] = subject
    m["Message-ID"] = "<fuzz@fuzz.test>"
    m.set_content(body)
    if html is not None:
        m.add_alternative(html, subtype="html")
    for name, data, ctype in attachments:
        maintype, _, subtype = ctype.partition("/")
        m.add_attachment(data, maintype=maintype or "application", subtype=subtype or "octet-stream", filename=name)
    return m.as_bytes()
