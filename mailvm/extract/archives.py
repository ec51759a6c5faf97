"""Archive members out, bounded: zip (incl. ZipCrypto/AES), 7z (incl. AES), rar, tar, gzip/bzip2/xz, ISO 9660, cab.

Every archive is read by a library (pyzipper, py7zr, libarchive; rarfile lists
the RAR 4 headers that libarchive does not return); nothing here parses an
archive format.  What this module adds is the hostile-input policy
around the libraries:

* the kind of an archive comes from its detected MIME type and magic bytes,
  never from its name (:func:`archive_kind`);
* members are streamed into the :class:`~mailvm.extract.spool.Spool`, which
  applies the size, ratio, count and time limits; a member's name is data only;
* directories, links and device nodes are skipped (``archive_special_member``
  for links and devices), absolute or ``..`` names are flagged
  (``archive_path_traversal``) and their content kept under a generated path;
* encrypted archives are tried with the candidate passwords
  (``encrypted_archive`` when one opens it, ``encrypted_archive_unopened`` when none does);
* any library exception on a damaged or hostile archive becomes
  ``archive_corrupt`` on that archive; what was read before stays.

Each expander takes an :class:`ExpandContext` (the archive's artifact and the
message's spool) and returns the new artifacts; recursion into them is the
caller's job (:func:`mailvm.extract.expand`).
"""

from __future__ import annotations

import io
import logging
import os
import stat
from dataclasses import dataclass, field
from typing import BinaryIO, Callable, Iterator, Sequence

from mailvm.config import ExtractConfig
from mailvm.extract.spool import LimitExceeded, Spool, basename, clean_name
from mailvm.verdict import Artifact, Finding

log = logging.getLogger(__name__)

SOURCE = "extract"
#: bytes read from the head of a file to recognise its kind
HEAD_BYTES = 0x9006
#: bytes of a member decompressed to check that a guessed password is right
VERIFY_BYTES = 1024 * 1024
#: a zip central directory that declares more entries than this many times
#: ``max_members`` is not loaded at all (its index alone would cost memory)
ZIP_INDEX_FACTOR = 20
MAX_DETAIL_NAMES = 5

# -- kinds ----------------------------------------------------------------------

#: detected MIME type -> archive kind
MIME_KINDS: dict[str, str] = {
    "application/zip": "zip",
    "application/x-zip-compressed": "zip",
    "application/x-zip": "zip",
    "application/x-7z-compressed": "7z",
    "application/x-rar": "rar",
    "application/x-rar-compressed": "rar",
    "application/vnd.rar": "rar",
    "application/x-tar": "tar",
    "application/x-gtar": "tar",
    "application/gzip": "gzip",
    "application/x-gzip": "gzip",
    "application/x-bzip2": "bzip2",
    "application/x-xz": "xz",
    "application/x-lzma": "lzma",
    "application/zstd": "zstd",
    "application/x-zstd": "zstd",
    "application/x-lzip": "lzip",
    "application/x-iso9660-image": "iso",
    "application/vnd.ms-cab-compressed": "cab",
}

#: (offset, magic bytes, kind), checked when the MIME type does not decide
MAGIC_KINDS: tuple[tuple[int, bytes, str], ...] = (
    (0, b"PK\x03\x04", "zip"),
    (0, b"PK\x05\x06", "zip"),
    (0, b"PK\x07\x08", "zip"),
    (0, b"7z\xbc\xaf\x27\x1c", "7z"),
    (0, b"Rar!\x1a\x07", "rar"),
    (0, b"\x1f\x8b", "gzip"),
    (0, b"BZh", "bzip2"),
    (0, b"\xfd7zXZ\x00", "xz"),
    (0, b"\x28\xb5\x2f\xfd", "zstd"),
    (0, b"LZIP", "lzip"),
    (0, b"MSCF\x00\x00\x00\x00", "cab"),
    (257, b"ustar", "tar"),
    (0x8001, b"CD001", "iso"),
    (0x8801, b"CD001", "iso"),
    (0x9001, b"CD001", "iso"),
)

#: types that are containers in form but documents in substance: not expanded
#: (OOXML, OpenDocument, Java/Android packages are analysed whole by triage)
DOCUMENT_TYPES_PREFIXES = (
    "application/vnd.openxmlformats-officedocument",
    "application/vnd.ms-excel.",
    "application/vnd.ms-word.",
    "application/vnd.ms-powerpoint.",
    "application/vnd.oasis.opendocument",
    "application/java-archive",
    "application/vnd.android.package-archive",
    "application/epub+zip",
)

#: kinds whose data is one compressed stream (maybe a tar inside)
COMPRESSORS = {"gzip": "gzip", "bzip2": "bzip2", "xz": "xz", "lzma": "lzma", "zstd": "zstd", "lzip": "lzip"}
#: suffixes dropped from a compressed file's name to name what is inside
_COMPRESSED_SUFFIXES = {
    ".tgz": ".tar",
    ".tbz": ".tar",
    ".tbz2": ".tar",
    ".txz": ".tar",
    ".gz": "",
    ".bz2": "",
    ".xz": "",
    ".lzma": "",
    ".zst": "",
    ".lz": "",
    ".z": "",
}


def read_head(path: str, size: int = HEAD_BYTES) -> bytes:
    try:
        with open(path, "rb") as fh:
            return fh.read(size)
    except OSError:
        return b""


def archive_kind(mime: str, head: bytes) -> str | None:
    """The archive kind of a file from its MIME type and first bytes, or ``None``."""
    mime = (mime or "").lower()
    if mime in MIME_KINDS:
        kind = MIME_KINDS[mime]
        if kind == "rar" and head.startswith(b"Rar!\x1a\x07\x01\x00"):
            return "rar5"
        return kind
    if mime.startswith(DOCUMENT_TYPES_PREFIXES):
        return None
    for offset, magic, kind in MAGIC_KINDS:
        if head[offset : offset + len(magic)] == magic:
            if kind == "rar" and head.startswith(b"Rar!\x1a\x07\x01\x00"):
                return "rar5"
            return kind
    return None


def is_traversal(name: str) -> bool:
    """Absolute, drive-qualified or ``..`` member names (they aim outside any extraction dir)."""
    if not name:
        return False
    if name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":" and name[0].isalpha()):
        return True
    parts = name.replace("\\", "/").split("/")
    return ".." in parts


# -- context shared by the expanders --------------------------------------------


@dataclass
class ExpandContext:
    """One container being expanded: where its members go and what went wrong."""

    artifact: Artifact
    spool: Spool
    cfg: ExtractConfig
    passwords: Sequence[str] = field(default_factory=list)  # may be a LazyPasswords
    children: list[Artifact] = field(default_factory=list)
    entries: int = 0
    traversal: list[str] = field(default_factory=list)
    special: list[str] = field(default_factory=list)
    bad_names: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    stopped: bool = False

    @property
    def depth(self) -> int:
        return self.artifact.depth + 1

    def origin(self, label: str, name: str) -> tuple[str, ...]:
        return tuple(self.artifact.origin) + (f"{label}:{name}",)

    def count_entry(self) -> bool:
        """Count one archive entry; ``False`` once past ``max_members`` (finding recorded)."""
        self.entries += 1
        if self.entries > self.cfg.max_members:
            self.spool.note_limit(
                "max_members", f"{self.artifact.name}: more than {self.cfg.max_members} entries, rest not read"
            )
            self.stopped = True
            return False
        return True

    def note_error(self, exc: BaseException | str) -> None:
        if isinstance(exc, str):
            text = exc
        elif hasattr(exc, "retcode") and isinstance(getattr(exc, "msg", None), str):
            text = f"{type(exc).__name__}: {exc.msg}"  # libarchive's text without its object's address
        else:
            text = f"{type(exc).__name__}: {exc}"
        log.info("archive %s: %s", self.artifact.name, text)
        if len(self.errors) < MAX_DETAIL_NAMES:
            self.errors.append(clean_name(text)[:200])

    def note_special(self, name: str, what: str) -> None:
        if len(self.special) < 1000:
            self.special.append(f"{clean_name(name)} ({what})")

    def note_bad_name(self, name: str, what: str) -> None:
        if len(self.bad_names) < 1000:
            self.bad_names.append(f"{clean_name(name, '(empty)')} ({what})")

    def add_member(
        self,
        reader: Callable[[int], bytes],
        raw_name: object,
        *,
        label: str = "member",
        ratio_base: int | None = None,
        max_bytes: int | None = None,
    ) -> Artifact | None:
        """Stream one member into the spool; its name is kept as data only."""
        full = clean_name(raw_name)
        if is_traversal(full):
            self.traversal.append(full)
        display = basename(full) or "unnamed"
        art = self.spool.add_stream(
            self.guard(reader), display, self.origin(label, full), self.depth, max_bytes=max_bytes, ratio_base=ratio_base
        )
        if art is None:
            self.stopped = True
        else:
            self.children.append(art)
        return art

    def guard(self, reader: Callable[[int], bytes]) -> Callable[[int], bytes]:
        """A reader whose library errors end the member (partial data kept) instead of raising."""
        failed = False

        def read(n: int) -> bytes:
            nonlocal failed
            if failed:
                return b""
            try:
                return reader(n)
            except LimitExceeded:
                raise
            except Exception as exc:  # hostile data makes libraries raise anything
                failed = True
                self.note_error(exc)
                return b""

        return read

    def finish(self) -> None:
        """Attach this container's aggregated findings to its artifact."""
        art = self.artifact
        if self.traversal:
            names = ", ".join(self.traversal[:MAX_DETAIL_NAMES])
            art.findings.append(
                Finding(
                    "archive_path_traversal",
                    6,
                    f"{len(self.traversal)} member name(s) point outside the extraction directory: {names}",
                    SOURCE,
                )
            )
        if self.special:
            names = ", ".join(self.special[:MAX_DETAIL_NAMES])
            art.findings.append(
                Finding("archive_special_member", 3, f"{len(self.special)} link/device member(s) skipped: {names}", SOURCE)
            )
        if self.bad_names:
            names = ", ".join(self.bad_names[:MAX_DETAIL_NAMES])
            art.findings.append(
                Finding(
                    "archive_bad_member_name",
                    3,
                    f"{len(self.bad_names)} member(s) with an empty name or one cut at a NUL, analysed all the same: {names}",
                    SOURCE,
                )
            )
        if self.errors:
            art.findings.append(Finding("archive_corrupt", 2, "; ".join(self.errors), SOURCE))

    def add_finding(self, fid: str, severity: int, detail: str) -> None:
        self.artifact.findings.append(Finding(fid, severity, detail, SOURCE))


def _password_source(pw: str) -> str:
    return getattr(pw, "source", "given")


def _describe_password(pw: str) -> str:
    return f"password {pw!r} ({_password_source(pw)})"


# -- zip (pyzipper) -------------------------------------------------------------


def _zip_index_too_big(fh: BinaryIO, ctx: ExpandContext) -> bool:
    """True when the central directory alone would cost too much to load (finding recorded)."""
    import pyzipper.zipfile as pz

    try:
        endrec = pz._EndRecData(fh)  # the library's own end-of-directory reader
    except Exception:
        return False  # let the real open report it
    if not endrec:
        return False
    entries, cd_size = endrec[pz._ECD_ENTRIES_TOTAL], endrec[pz._ECD_SIZE]
    max_entries = ZIP_INDEX_FACTOR * ctx.cfg.max_members
    if entries > max_entries or cd_size > max_entries * 1024:
        ctx.spool.note_limit(
            "max_members", f"{ctx.artifact.name}: zip declares {entries} entries ({cd_size} bytes of index), not read"
        )
        return True
    return False


def _zip_special(info) -> str | None:
    mode = (info.external_attr >> 16) & 0xFFFF
    if info.create_system == 3 and mode:  # unix attributes
        if stat.S_ISLNK(mode):
            return "symlink"
        if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
            return "device"
        if stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode):
            return "fifo/socket"
    return None


def _zip_password_works(zf, info, pw: str) -> bool:
    for encoding in ("utf-8", "cp437"):
        try:
            raw = pw.encode(encoding)
        except UnicodeEncodeError:
            continue
        try:
            with zf.open(info, pwd=raw) as member:
                got = 0
                while got < VERIFY_BYTES:
                    chunk = member.read(64 * 1024)
                    if not chunk:
                        break
                    got += len(chunk)
            return True
        except LimitExceeded:
            raise
        except Exception:
            continue
    return False


def _zip_find_password(zf, infos, ctx: ExpandContext) -> tuple[str | None, bytes | None]:
    probe = min(infos, key=lambda i: i.compress_size)
    for pw in ctx.passwords:
        ctx.spool.check_time()
        if _zip_password_works(zf, probe, pw):
            for encoding in ("utf-8", "cp437"):
                try:
                    return pw, pw.encode(encoding)
                except UnicodeEncodeError:
                    continue
    return None, None


def expand_zip(ctx: ExpandContext) -> list[Artifact]:
    import pyzipper

    art = ctx.artifact
    with open(art.path, "rb") as fh:
        if _zip_index_too_big(fh, ctx):
            return ctx.children
        fh.seek(0)
        with pyzipper.AESZipFile(fh) as zf:
            infos = zf.infolist()
            encrypted = [i for i in infos if i.flag_bits & 0x1 and not i.filename.endswith("/")]
            pwd: bytes | None = None
            if encrypted:
                method = "AES" if any(getattr(i, "wz_aes_vendor_id", None) for i in encrypted) else "ZipCrypto"
                pw, pwd = _zip_find_password(zf, encrypted, ctx)
                if pw is None:
                    ctx.add_finding(
                        "encrypted_archive_unopened",
                        4,
                        f"{method} zip, {len(encrypted)} encrypted member(s); none of {len(ctx.passwords)} candidate passwords opened it",
                    )
                else:
                    ctx.add_finding("encrypted_archive", 3, f"{method} zip opened with {_describe_password(pw)}")
            for info in infos:
                if not ctx.count_entry():
                    break
                if info.filename.endswith("/"):  # ZipInfo.is_dir() raises on an empty name
                    continue
                if not info.filename or "\x00" in info.orig_filename:
                    # readers differ on such a name (zipfile cuts it at the NUL): the data is analysed anyway
                    why = "NUL in the name" if "\x00" in info.orig_filename else "empty name"
                    ctx.note_bad_name(info.orig_filename.replace("\x00", "\\x00"), why)
                special = _zip_special(info)
                if special:
                    ctx.note_special(info.filename, special)
                    continue
                is_enc = bool(info.flag_bits & 0x1)
                if is_enc and pwd is None:
                    continue
                try:
                    member = zf.open(info, pwd=pwd if is_enc else None)
                except LimitExceeded:
                    raise
                except Exception as exc:
                    ctx.note_error(exc)
                    continue
                with member:
                    base = min(max(info.compress_size, 1), max(art.size, 1))
                    ctx.add_member(member.read, info.filename, ratio_base=base)
                if ctx.stopped:
                    break
    return ctx.children


# -- 7z (py7zr) -----------------------------------------------------------------


class _Stop(Exception):
    """Ends a py7zr extraction early (limit reached or probe done)."""


def _py7zr_io_classes():
    from py7zr.io import Py7zIO, WriterFactory

    class SinkIO(Py7zIO):
        """Discards a member (links, skipped names) while py7zr decompresses it."""

        def write(self, s):
            return len(s)

        def read(self, size=None):
            return b""

        def seek(self, offset, whence=0):
            return 0

        def flush(self):
            return None

        def size(self):
            return 0

    class ProbeIO(SinkIO):
        def __init__(self, probe):
            self.probe = probe

        def write(self, s):
            self.probe.got += len(s)
            if self.probe.got >= VERIFY_BYTES:
                raise _Stop("probe done")
            return len(s)

    class SpoolIO(SinkIO):
        """Writes one member into the spool; stops the extraction at the member's cap."""

        def __init__(self, writer, ctx):
            self.writer = writer
            self.ctx = ctx
            self.closed = False

        def write(self, s):
            self.writer.write(s)
            if self.writer.full:
                raise _Stop("member cut")
            return len(s)

        def size(self):
            return self.writer.size

        def close(self):
            if not self.closed:
                self.closed = True
                self.ctx.children.append(self.writer.close())

    class Probe(WriterFactory):
        def __init__(self):
            self.got = 0

        def create(self, filename):
            return ProbeIO(self)

    class ToSpool(WriterFactory):
        def __init__(self, ctx, links: set[str]):
            self.ctx = ctx
            self.links = links

        def create(self, filename):
            ctx = self.ctx
            if filename in self.links:
                return SinkIO()
            if not ctx.count_entry():
                raise _Stop("max members")
            full = clean_name(filename)
            writer = ctx.spool.open_writer(
                basename(full) or "unnamed",
                ctx.origin("member", full),
                ctx.depth,
                ratio_base=max(ctx.artifact.size, 1),
            )
            if writer is None:
                ctx.stopped = True
                raise _Stop("spool full")
            return SpoolIO(writer, ctx)

    return Probe, ToSpool


def _open_7z(path: str, fh: BinaryIO, password: str | None, max_size: int):
    import py7zr

    fh.seek(0)
    return py7zr.SevenZipFile(fh, mode="r", password=password, max_extract_size=max_size)


def _7z_password_works(path: str, fh: BinaryIO, pw: str, probe_cls) -> bool:
    try:
        with _open_7z(path, fh, pw, 8 * VERIFY_BYTES) as sz:
            sz.extractall(factory=probe_cls())
        return True
    except _Stop:
        return True
    except LimitExceeded:
        raise
    except Exception:
        return False


def expand_7z(ctx: ExpandContext) -> list[Artifact]:
    import py7zr
    from py7zr.exceptions import DecompressionBombError, PasswordRequired
    from py7zr.helpers import get_sanitized_output_path

    Probe, ToSpool = _py7zr_io_classes()
    art = ctx.artifact
    budget = ctx.spool.bytes_left() + 1
    with open(art.path, "rb") as fh:
        password: str | None = None
        try:
            sz = _open_7z(art.path, fh, None, budget)
            encrypted = sz.needs_password()
            header_encrypted = False
        except PasswordRequired:
            sz, encrypted, header_encrypted = None, True, True
        if encrypted:
            if sz is not None:
                sz.close()
            for pw in ctx.passwords:
                ctx.spool.check_time()
                if _7z_password_works(art.path, fh, pw, Probe):
                    password = pw
                    break
            what = "7z with encrypted names" if header_encrypted else "7z"
            if password is None:
                ctx.add_finding(
                    "encrypted_archive_unopened",
                    4,
                    f"AES {what}; none of {len(ctx.passwords)} candidate passwords opened it",
                )
                return ctx.children
            ctx.add_finding("encrypted_archive", 3, f"AES {what} opened with {_describe_password(password)}")
            sz = _open_7z(art.path, fh, password, budget)
        with sz:
            links: set[str] = set()
            targets: list[str] = []
            skipped = False
            for f in sz.files:
                name = f.filename
                if is_traversal(name):
                    # py7zr refuses such names outright; flag them and leave their data unread
                    ctx.traversal.append(clean_name(name) + " (not extracted)")
                    skipped = True
                    continue
                targets.append(name)
                if f.is_symlink or f.is_junction or f.is_socket:
                    ctx.note_special(name, "symlink" if f.is_symlink else "junction/socket")
                    try:
                        links.add(get_sanitized_output_path(name, None).as_posix())
                    except Exception:
                        pass
            try:
                sz.extract(targets=targets if skipped else None, factory=ToSpool(ctx, links))
            except _Stop:
                pass
            except DecompressionBombError:
                ctx.spool.note_limit("max_total_bytes", f"{art.name}: 7z expands past the message's byte budget")
    return ctx.children


# -- libarchive: tar, compressors, rar, iso, cab --------------------------------

#: kind -> libarchive read formats to try, in order
LIBARCHIVE_FORMATS: dict[str, tuple[str, ...]] = {
    "tar": ("tar",),
    "rar": ("rar",),
    "rar5": ("rar5",),
    "iso": ("iso9660",),
    "cab": ("cab",),
    "gzip": ("tar", "raw"),
    "bzip2": ("tar", "raw"),
    "xz": ("tar", "raw"),
    "lzma": ("tar", "raw"),
    "zstd": ("tar", "raw"),
    "lzip": ("tar", "raw"),
}


#: libarchive's ARCHIVE_FATAL: after it only freeing the archive object is safe
ARCHIVE_FATAL = -30


class _Blocks:
    """``read(n)`` over libarchive's block generator for one entry.

    ``fatal`` is set when libarchive failed with ARCHIVE_FATAL (or an error without a
    code) while reading this entry's data: the reader must then ask for no other
    header.  libarchive 3.6.2's cab reader crashes (SIGSEGV) when it is asked for
    the next header after "Invalid CFDATA", which ended the scan worker.
    """

    def __init__(self, blocks: Iterator[bytes]):
        self._blocks = blocks
        self._buf = b""
        self.fatal = False

    def read(self, n: int) -> bytes:
        while not self._buf:
            try:
                self._buf = next(self._blocks)
            except StopIteration:
                return b""
            except Exception as exc:  # libarchive.ArchiveError, or anything from a hostile stream
                code = getattr(exc, "retcode", None)
                self.fatal = not isinstance(code, int) or code <= ARCHIVE_FATAL
                raise
        out, self._buf = self._buf[:n], self._buf[n:]
        return out


def _inner_name(name: str) -> str:
    low = name.lower()
    for suffix, repl in _COMPRESSED_SUFFIXES.items():
        if low.endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)] + repl
    return name + ".out"


class _BudgetedInput(io.RawIOBase):
    """The archive file as libarchive's input, ending early once the time budget is spent.

    libarchive decompresses inside C calls that cannot be interrupted; its input
    callback is the one place where a hostile stream (an xz of zeros expands by
    thousands) comes back to Python, so the budget is checked there.

    With ``ranges`` ((offset, length) pairs), the input is those byte ranges of the
    file one after the other, read forward only.
    """

    def __init__(self, fh: BinaryIO, spool: Spool, ranges: Sequence[tuple[int, int]] | None = None) -> None:
        super().__init__()
        self._fh = fh
        self._spool = spool
        self._ranges = list(ranges) if ranges is not None else None
        self._left = 0
        self.out_of_time = False

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return self._ranges is None

    def readinto(self, buf) -> int:
        if self._spool.expired():
            self.out_of_time = True
            return 0
        if self._ranges is None:
            return self._fh.readinto(buf)
        while self._left <= 0:
            if not self._ranges:
                return 0
            offset, self._left = self._ranges.pop(0)
            self._fh.seek(offset)
        view = memoryview(buf)[: min(len(buf), self._left)]
        n = self._fh.readinto(view)
        if not n:  # the file is shorter than the range said
            self._ranges, self._left = [], 0
            return 0
        self._left -= n
        return n

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        return self._fh.seek(offset, whence)

    def tell(self) -> int:
        return self._fh.tell()


def _is_encryption_error(text: str) -> bool:
    return "ncrypt" in text or "assphrase" in text


def _libarchive_pass(ctx: ExpandContext, fmt: str, filt: str) -> bool:
    """Read the archive with one format; ``False`` when libarchive rejects the format outright."""
    import libarchive

    art = ctx.artifact
    seen_any = False
    repeated = 0
    with open(art.path, "rb") as fh:
        source = _BudgetedInput(fh, ctx.spool)
        try:
            with libarchive.stream_reader(source, format_name=fmt, filter_name=filt, block_size=64 * 1024) as archive:
                for entry in archive:
                    seen_any = True
                    if not ctx.count_entry():
                        break
                    ctx.spool.check_time()
                    name = entry.pathname or ""
                    if fmt == "raw":
                        name = _inner_name(art.name)
                    if entry.isdir:
                        continue
                    if entry.issym:
                        ctx.note_special(clean_name(name), f"symlink to {clean_name(entry.linkpath)}")
                        continue
                    if entry.islnk:
                        continue  # hard link: no data of its own
                    if fmt == "rar" and entry.pathname is None and entry.filetype == 0:
                        repeated += 1  # a header repeating the name before it: see _rar4_repeated_members
                        continue
                    if entry.isdev or not entry.isreg:
                        ctx.note_special(clean_name(name), "device/fifo/socket")
                        continue
                    blocks = _Blocks(entry.get_blocks(64 * 1024))
                    member = ctx.add_member(blocks.read, name, ratio_base=max(art.size, 1))
                    if blocks.fatal:
                        # libarchive can no longer be used; asking it for the next header may crash it
                        ctx.note_error(f"entries after {clean_name(name)} not read (fatal error in its data)")
                        break
                    if member is not None and any(f.id == "file_truncated" for f in member.findings):
                        # in a compressed stream, reaching the next entry means decompressing
                        # the rest of this one: stop here instead
                        ctx.spool.note_limit(
                            "stream_after_cut", f"{art.name}: entries after the cut member {clean_name(name)} not read"
                        )
                        ctx.stopped = True
                    if ctx.stopped or any(_is_encryption_error(e) for e in ctx.errors):
                        break
        except LimitExceeded:
            raise
        except libarchive.ArchiveError as exc:
            msg = str(getattr(exc, "msg", exc))
            if not seen_any and not ctx.children and not source.out_of_time:
                if _is_encryption_error(msg):
                    ctx.errors.append(clean_name(msg)[:200])
                    return True
                if fmt != "raw" and filt != "none":
                    return False  # e.g. a gzip that does not hold a tar: try the next format
            if not source.out_of_time:
                ctx.note_error(exc)
    if source.out_of_time:
        ctx.spool.check_time()  # records the limit and ends the message's extraction
    if repeated and not ctx.stopped:
        _rar4_repeated_members(ctx, repeated)
    return True


def _rar4_repeated_members(ctx: ExpandContext, hidden: int) -> None:
    """Read the RAR 4 members that libarchive lists without returning them.

    libarchive (3.6) takes a file header that repeats the name of the header just
    before it for the next part of a file split across volumes, whatever its flags
    say, and returns an entry without name, type or data.  An archiver extracts it
    as a file of its own (the second copy replaces the first), so a benign empty
    ``invoice.exe`` followed by a malicious one would hide the malicious one.
    rarfile lists every file header with its offsets; each such member is then
    given to libarchive alone (the archive's blocks before its first file, then that
    member's header and data), so libarchive still does all the decoding.
    """
    import libarchive
    import rarfile

    art = ctx.artifact
    with open(art.path, "rb") as fh:
        try:
            with rarfile.RarFile(fh, part_only=True) as rf:  # a file object: no other volume is looked for
                infos = rf.infolist()
        except LimitExceeded:
            raise
        except Exception as exc:
            ctx.note_error(f"{hidden} member(s) repeating the name before them not read: {type(exc).__name__}: {exc}")
            return
        repeats = [cur for prev, cur in zip(infos, infos[1:]) if cur.filename == prev.filename]
        if len(repeats) < hidden:
            ctx.note_error(f"{hidden - len(repeats)} member(s) repeating the name before them not found by rarfile")
        for info in repeats[:hidden]:
            ctx.spool.check_time()
            name = info.filename
            if info.is_dir():
                continue
            if not info.is_file():
                ctx.note_special(clean_name(name), "symlink" if info.is_symlink() else "not a regular file")
                continue
            ranges = [(0, infos[0].header_offset), (info.header_offset, info.header_size + info.compress_size)]
            source = _BudgetedInput(fh, ctx.spool, ranges)
            try:
                with libarchive.stream_reader(source, format_name="rar", filter_name="none", block_size=64 * 1024) as archive:
                    for entry in archive:
                        if entry.isreg:
                            blocks = _Blocks(entry.get_blocks(64 * 1024))
                            ctx.add_member(blocks.read, entry.pathname or name, ratio_base=max(art.size, 1))
                        else:
                            ctx.note_error(f"{clean_name(name)}: the repeated member is not a regular file")
                        break  # one member in this stream; never ask for another header
            except LimitExceeded:
                raise
            except libarchive.ArchiveError as exc:
                if not source.out_of_time:
                    ctx.note_error(exc)
            if source.out_of_time:
                ctx.spool.check_time()
            if ctx.stopped or any(_is_encryption_error(e) for e in ctx.errors):
                break


def expand_libarchive(ctx: ExpandContext, kind: str) -> list[Artifact]:
    filt = COMPRESSORS.get(kind, "none")
    for fmt in LIBARCHIVE_FORMATS.get(kind, ("all",)):
        if _libarchive_pass(ctx, fmt, filt):
            break
    encrypted_errors = [e for e in ctx.errors if _is_encryption_error(e)]
    if encrypted_errors:
        ctx.errors = [e for e in ctx.errors if not _is_encryption_error(e)]
        ctx.add_finding(
            "encrypted_archive_unopened",
            4,
            f"{kind} archive with encrypted content (no password support for this format): {encrypted_errors[0]}",
        )
    return ctx.children


def _libarchive_expander(kind: str) -> Callable[[ExpandContext], list[Artifact]]:
    def expander(ctx: ExpandContext) -> list[Artifact]:
        return expand_libarchive(ctx, kind)

    expander.__name__ = f"expand_{kind}"
    return expander


#: archive kind -> expander (the explicit registry used by :func:`mailvm.extract.expand`)
EXPANDERS: dict[str, Callable[[ExpandContext], list[Artifact]]] = {
    "zip": expand_zip,
    "7z": expand_7z,
    **{kind: _libarchive_expander(kind) for kind in LIBARCHIVE_FORMATS},
}


def run_expander(ctx: ExpandContext, expander: Callable[[ExpandContext], list[Artifact]]) -> list[Artifact]:
    """Run one expander; library exceptions become ``archive_corrupt`` on the container."""
    try:
        expander(ctx)
    except LimitExceeded:
        ctx.finish()
        raise
    except Exception as exc:  # any library, any hostile input
        ctx.note_error(exc)
    ctx.finish()
    return ctx.children


__all__ = [
    "COMPRESSORS",
    "EXPANDERS",
    "ExpandContext",
    "MAGIC_KINDS",
    "MIME_KINDS",
    "archive_kind",
    "expand_7z",
    "expand_libarchive",
    "expand_zip",
    "is_traversal",
    "read_head",
    "run_expander",
]
