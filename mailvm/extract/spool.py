"""A message's spool directory and the budget its extraction may spend.

Every file found in a message (attachment, archive member, decrypted document,
download) is written here by :meth:`Spool.add_bytes` or :meth:`Spool.add_stream`.
Names on disk are generated (``0007.bin``): a name taken from an email or an
archive is kept only as data in :class:`~mailvm.verdict.Artifact`, never used as a
path, so nothing can be written outside the directory whatever a sender claims.

The spool also enforces the per-message limits of :class:`~mailvm.config.ExtractConfig`
(total expanded bytes, bytes per file, artifacts per message, wall time) and
records what was cut as findings (``archive_limit_exceeded``).
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


def clean_name(name: object, fallback: str = "unnamed") -> str:
    """A display name from hostile input: printable, no control chars, bounded."""
    if isinstance(name, bytes):
        name = name.decode("utf-8", "replace")
    text = unicodedata.normalize("NFC", str(name or ""))
    text = "".join(ch for ch in text if ch.isprintable())
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

    # -- limits --------------------------------------------------------------
    def note_limit(self, what: str, detail: str) -> None:
        """Record one ``archive_limit_exceeded`` finding per kind of limit."""
        with self._lock:
            if what in self._limit_ids:
                return
            self._limit_ids.add(what)
        log.info("extraction limit %s: %s", what, detail)
        self.findings.append(Finding("archive_limit_exceeded", 5, f"{what}: {detail}", "extract"))

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

    def add_bytes(self, data: bytes, name: str, origin: tuple[str, ...], depth: int = 0) -> Artifact | None:
        """Store ``data`` as a new artifact; ``None`` when a limit forbids it (finding recorded)."""
        import io

        return self.add_stream(io.BytesIO(data), name, origin, depth)

    def add_stream(
        self,
        reader: BinaryIO | Callable[[int], bytes],
        name: str,
        origin: tuple[str, ...],
        depth: int = 0,
        max_bytes: int | None = None,
        ratio_base: int | None = None,
    ) -> Artifact | None:
        """Copy a stream into the spool, bounded by the file, total and ratio limits.

        ``ratio_base`` is the compressed size of an archive member: reading stops
        once the output exceeds ``max_ratio`` times it (zip bombs).  A truncated
        copy is still kept as an artifact (its head is what analyzers need) with
        a finding saying it was cut.
        """
        if not self.room_for_artifact():
            return None
        self.check_time()
        read = reader if callable(reader) else reader.read
        cap = min(self.limits.max_file_bytes, self.bytes_left())
        if max_bytes is not None:
            cap = min(cap, max_bytes)
        if ratio_base is not None:
            cap = min(cap, max(ratio_base, 1) * self.limits.max_ratio + 1024 * 1024)
        path = self._new_path()
        digest = hashlib.sha256()
        size = 0
        truncated = False
        extra: list[Finding] = []
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "wb") as out:
            while True:
                want = min(CHUNK, cap - size + 1)
                chunk = read(want)
                if not chunk:
                    break
                if size + len(chunk) > cap:
                    chunk = chunk[: cap - size]
                    truncated = True
                size += len(chunk)
                digest.update(chunk)
                out.write(chunk)
                if truncated:
                    break
                if self.expired():
                    truncated = True
                    self.note_limit("time_budget", f"extraction took longer than {self.limits.time_budget_s}s")
                    break
        self.budget.total_bytes += size
        if truncated:
            why = self._why_cut(size, max_bytes, ratio_base)
            self.note_limit(why, f"{clean_name(name)} cut at {size} bytes")
            extra.append(Finding("file_truncated", 3, f"{why}: kept first {size} bytes", "extract"))
        mime, desc = detect_type(path)
        art = Artifact(
            sha256=digest.hexdigest(),
            name=clean_name(name),
            size=size,
            type=mime,
            description=desc,
            path=str(path),
            origin=tuple(origin),
            depth=depth,
            findings=extra,
        )
        self.artifacts.append(art)
        return art

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
