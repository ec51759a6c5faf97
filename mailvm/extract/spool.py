"""A message's spool directory and the budget its extraction may spend.

Every file found in a message (attachment, archive member, decrypted document,
download) is written here by :meth:`Spool.add_bytes` or :meth:`Spool.add_stream`.
Names on disk are generated (``0007.bin``): a name taken from an email or an
archive is kept only as data in :class:`~mailvm.verdict.Artifact`, never used as a
path, so nothing can be written outside the directory whatever a sender claims.

The spool also enforces the per-message limits of :class:`~mailvm.config.ExtractConfig`
(total expanded bytes, bytes per file, artifacts per message, wall time) and
records what was cut as findings: one id per kind of limit, every id ending in
``_limit_exceeded`` (:data:`LIMIT_FINDINGS`), severity :data:`LIMIT_SEVERITY`.  A
limit is not evidence against a message (the severity stays low); it says that
part of the message went unchecked, which the policy maps to ``actions.unchecked``.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import threading
import time
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Callable

from mailvm.config import ExtractConfig
from mailvm.verdict import Artifact, Finding

log = logging.getLogger(__name__)

CHUNK = 64 * 1024
MAX_NAME = 255
#: a limit says "not checked", not "bad": low severity (the policy's ``unchecked`` action decides)
LIMIT_SEVERITY = 2
#: which limit stopped extraction (the ``what`` of :meth:`Spool.note_limit`) -> finding id
LIMIT_FINDINGS: dict[str, str] = {
    "max_depth": "archive_depth_limit_exceeded",
    "max_members": "archive_members_limit_exceeded",
    "max_total_bytes": "archive_bytes_limit_exceeded",
    "stream_after_cut": "archive_bytes_limit_exceeded",
    "max_tnef_bytes": "archive_bytes_limit_exceeded",
    "max_msg_bytes": "archive_bytes_limit_exceeded",
    "max_ratio": "archive_ratio_limit_exceeded",
    "max_file_bytes": "file_size_limit_exceeded",
    "max_bytes": "file_size_limit_exceeded",
    "time_budget": "time_limit_exceeded",
    "max_artifacts": "artifacts_limit_exceeded",
    "max_message_bytes": "message_size_limit_exceeded",
    "max_mime_parts": "parts_limit_exceeded",
    "max_mime_depth": "mime_depth_limit_exceeded",
    "max_message_depth": "nested_message_limit_exceeded",
    "max_embedded": "embedded_limit_exceeded",
    "max_bodies": "body_limit_exceeded",
    "max_recovered": "recovered_parts_limit_exceeded",
}
#: the id for a limit missing from :data:`LIMIT_FINDINGS` (still ends in ``_limit_exceeded``)
OTHER_LIMIT = "extract_limit_exceeded"

_magic_local = threading.local()


def _magic_pair():
    """Per-thread libmagic handles (a handle is not safe to share between threads)."""
    pair = getattr(_magic_local, "pair", None)
    if pair is None:
        import magic  # python-magic; imported lazily to keep import cheap

        pair = (magic.Magic(mime=True), magic.Magic())
        _magic_local.pair = pair
    return pair


def detect_type(path: str | os.PathLike[str]) -> tuple[str, str]:
    """``(mime type, libmagic description)`` of a file; never raises."""
    try:
        mime, desc = _magic_pair()
        with open(path, "rb") as fh:
            head = fh.read(1024 * 1024)
        return mime.from_buffer(head) or "application/octet-stream", desc.from_buffer(head) or "data"
    except Exception as exc:  # libmagic errors on odd input are not fatal
        log.debug("libmagic failed on %s: %s", path, exc)
        return "application/octet-stream", "data"


def keep_char(ch: str) -> bool:
    """Printable, or a format character (Cf) kept as evidence of a name trick."""
    return ch.isprintable() or unicodedata.category(ch) == "Cf"


def clean_name(name: object, fallback: str = "unnamed") -> str:
    """A display name from hostile input: no control characters, bounded.

    Format characters (Unicode category Cf: right-to-left override, zero-width
    joiners...) are kept: they are the evidence of name tricks such as
    ``invoice\u202efdp.exe`` that triage reports.  Every place that shows a
    name in a header or an SMTP reply sanitises it again (``policy.safe_name``).
    """
    if isinstance(name, bytes):
        name = name.decode("utf-8", "replace")
    text = unicodedata.normalize("NFC", str(name or ""))
    text = "".join(ch for ch in text if keep_char(ch))
    text = text.strip()
    if len(text) > MAX_NAME:
        text = text[:MAX_NAME]
    return text or fallback


def basename(name: str) -> str:
    """Last component of an archive member name (``/`` or ``\\`` separated)."""
    parts = [p for p in re.split(r"[\\/]+", name) if p not in ("", ".", "..")]
    return parts[-1] if parts else ""


class LimitExceeded(Exception):
    """Raised inside extraction code when a per-message limit is reached."""


@dataclass
class Budget:
    deadline: float
    total_bytes: int = 0

    def time_left(self) -> float:
        return self.deadline - time.monotonic()


class Spool:
    """Owns one message's spool directory, its artifacts and its limits."""

    def __init__(self, root: str | os.PathLike[str], limits: ExtractConfig, deadline: float | None = None):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.limits = limits
        self.budget = Budget(deadline if deadline is not None else time.monotonic() + limits.time_budget_s)
        self.artifacts: list[Artifact] = []
        self.findings: list[Finding] = []
        self._counter = 0
        self._limit_ids: set[str] = set()
        self._lock = threading.Lock()
        #: sha256 of artifacts already expanded (a file seen twice is expanded once)
        self.expanded: set[str] = set()

    # -- limits --------------------------------------------------------------
    def note_limit(self, what: str, detail: str) -> None:
        """Record one ``*_limit_exceeded`` finding per kind of limit (:data:`LIMIT_FINDINGS`)."""
        with self._lock:
            if what in self._limit_ids:
                return
            self._limit_ids.add(what)
        log.info("extraction limit %s: %s", what, detail)
        fid = LIMIT_FINDINGS.get(what, OTHER_LIMIT)
        self.findings.append(Finding(fid, LIMIT_SEVERITY, f"{what}: {detail}", "extract"))

    def expired(self) -> bool:
        return self.budget.time_left() <= 0

    def check_time(self) -> None:
        if self.expired():
            self.note_limit("time_budget", f"extraction took longer than {self.limits.time_budget_s}s")
            raise LimitExceeded("time budget")

    def bytes_left(self) -> int:
        return max(0, self.limits.max_total_bytes - self.budget.total_bytes)

    def room_for_artifact(self) -> bool:
        if len(self.artifacts) >= self.limits.max_artifacts:
            self.note_limit("max_artifacts", f"more than {self.limits.max_artifacts} files in one message")
            return False
        return True

    # -- writing -------------------------------------------------------------
    def _new_path(self) -> Path:
        with self._lock:
            self._counter += 1
            n = self._counter
        return self.root / f"{n:04d}.bin"

    def add_bytes(
        self,
        data: bytes,
        name: str,
        origin: tuple[str, ...],
        depth: int = 0,
        *,
        part_id: str = "",
        role: str = "attachment",
    ) -> Artifact | None:
        """Store ``data`` as a new artifact; ``None`` when a limit forbids it (finding recorded)."""
        import io

        return self.add_stream(io.BytesIO(data), name, origin, depth, part_id=part_id, role=role)

    def add_stream(
        self,
        reader: BinaryIO | Callable[[int], bytes],
        name: str,
        origin: tuple[str, ...],
        depth: int = 0,
        max_bytes: int | None = None,
        ratio_base: int | None = None,
        *,
        part_id: str = "",
        role: str = "attachment",
    ) -> Artifact | None:
        """Copy a stream into the spool, bounded by the file, total and ratio limits.

        ``ratio_base`` is the compressed size of an archive member: reading stops
        once the output exceeds ``max_ratio`` times it (zip bombs).  A truncated
        copy is still kept as an artifact (its head is what analyzers need) with
        a finding saying it was cut.
        """
        writer = self.open_writer(name, origin, depth, max_bytes, ratio_base, part_id=part_id, role=role)
        if writer is None:
            return None
        read = reader if callable(reader) else reader.read
        try:
            while not writer.full:
                chunk = read(min(CHUNK, writer.room + 1))
                if not chunk:
                    break
                writer.write(chunk)
        except BaseException:
            writer.discard()
            raise
        return writer.close()

    def open_writer(
        self,
        name: str,
        origin: tuple[str, ...],
        depth: int = 0,
        max_bytes: int | None = None,
        ratio_base: int | None = None,
        *,
        part_id: str = "",
        role: str = "attachment",
    ) -> "SpoolWriter | None":
        """A push-style writer for one new artifact (for libraries that write: py7zr, msoffcrypto).

        Same limits as :meth:`add_stream`; ``None`` when no artifact may be added
        (finding recorded).  Call :meth:`SpoolWriter.close` to get the artifact,
        or :meth:`SpoolWriter.discard` to drop a copy that turned out wrong.
        """
        if not self.room_for_artifact():
            return None
        self.check_time()
        if self.bytes_left() <= 0:
            self.note_limit("max_total_bytes", f"{clean_name(name)} not stored: {self.limits.max_total_bytes} bytes already expanded")
            return None
        cap = min(self.limits.max_file_bytes, self.bytes_left())
        if max_bytes is not None:
            cap = min(cap, max_bytes)
        if ratio_base is not None:
            cap = min(cap, max(ratio_base, 1) * self.limits.max_ratio + 1024 * 1024)
        writer = SpoolWriter(self, self._new_path(), name, tuple(origin), depth, cap, max_bytes, ratio_base)
        writer.part_id, writer.role = part_id, role
        return writer

    def _why_cut(self, size: int, max_bytes: int | None, ratio_base: int | None) -> str:
        if self.bytes_left() <= 0:
            return "max_total_bytes"
        if ratio_base is not None and size >= max(ratio_base, 1) * self.limits.max_ratio:
            return "max_ratio"
        if max_bytes is not None and size >= max_bytes:
            return "max_bytes"
        if self.expired():
            return "time_budget"
        return "max_file_bytes"


class SpoolWriter:
    """One new file in the spool, filled by ``write()`` calls, cut at its cap.

    Bytes past the cap (or past the time budget) are dropped and ``full``
    becomes true; ``write`` still reports them as consumed so that a library
    writing into it finishes or fails on its own terms.
    """

    def __init__(
        self,
        spool: Spool,
        path: Path,
        name: str,
        origin: tuple[str, ...],
        depth: int,
        cap: int,
        max_bytes: int | None,
        ratio_base: int | None,
    ) -> None:
        self._spool = spool
        self.path = path
        self.name = name
        self.origin = origin
        self.depth = depth
        self.cap = max(0, cap)
        self._max_bytes = max_bytes
        self._ratio_base = ratio_base
        self._digest = hashlib.sha256()
        self.size = 0
        self.truncated = False
        self._why = ""
        #: carried into the artifact (see :class:`~mailvm.verdict.Artifact`)
        self.part_id = ""
        self.role = "attachment"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        self._out: BinaryIO | None = os.fdopen(fd, "wb")

    @property
    def full(self) -> bool:
        return self.truncated or self._out is None

    @property
    def room(self) -> int:
        return max(0, self.cap - self.size)

    def write(self, data: bytes | bytearray | memoryview) -> int:
        n = len(data)
        if self.full:
            return n
        if n > self.cap - self.size:
            data = bytes(data[: self.cap - self.size])
            self.truncated = True
        if data:
            self._out.write(data)  # type: ignore[union-attr]
            self._digest.update(data)
            self.size += len(data)
            self._spool.budget.total_bytes += len(data)
        if self.truncated:
            self._why = self._spool._why_cut(self.size, self._max_bytes, self._ratio_base)
        elif self._spool.expired():
            self.truncated = True
            self._why = "time_budget"
            self._spool.note_limit("time_budget", f"extraction took longer than {self._spool.limits.time_budget_s}s")
        return n

    def discard(self) -> None:
        """Drop the file (its bytes stay counted against the message's budget)."""
        if self._out is not None:
            self._out.close()
            self._out = None
        try:
            os.unlink(self.path)
        except OSError:
            pass

    def close(self) -> Artifact:
        """Finish the file and register it as an artifact of the spool."""
        if self._out is None:
            raise ValueError("writer already closed or discarded")
        self._out.close()
        self._out = None
        extra: list[Finding] = []
        if self.truncated:
            self._spool.note_limit(self._why, f"{clean_name(self.name)} cut at {self.size} bytes")
            extra.append(Finding("file_truncated", 3, f"{self._why}: kept first {self.size} bytes", "extract"))
        mime, desc = detect_type(self.path)
        art = Artifact(
            sha256=self._digest.hexdigest(),
            name=clean_name(self.name),
            size=self.size,
            type=mime,
            description=desc,
            path=str(self.path),
            origin=self.origin,
            depth=self.depth,
            findings=extra,
            part_id=self.part_id,
            role=self.role,
        )
        self._spool.artifacts.append(art)
        return art
