"""The durable in-queue between the milter's workers and the pool service.

Scan workers (separate processes) claim a file in the scanned table, copy it
into the queue's ``files/`` directory and push a small job record; the pool
service pops records and detonates them, and publishes verdicts to the table,
where the workers wait.  The queue is a diskcache ``Deque`` (SQLite: safe with
many processes on one host); past one host the same interface maps to a Redis
stream (DESIGN.md, "Past one machine").

A job whose popper dies is not lost for good: its scanned-table claim goes
stale and the next message carrying the file claims and enqueues it again.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from mailvm.verdict import Finding

log = logging.getLogger(__name__)

_SHA_RE = re.compile(r"^[0-9a-f]{64}$")


class JobQueue:
    """``push()`` from any process, ``pop()`` in the pool service."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        import diskcache  # lazy: keep imports of this module cheap

        self.root = Path(root)
        self.files = self.root / "files"
        self.files.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._deque = diskcache.Deque(directory=str(self.root / "queue"))

    def push(self, job: Any) -> None:
        """Copy the job's file next to the queue and enqueue the record (``Job`` or dict)."""
        record = asdict(job) if not isinstance(job, dict) else dict(job)
        sha = record.get("sha256", "")
        if not _SHA_RE.match(sha):
            raise ValueError(f"job sha256 {sha!r} is not a sha256")
        dest = self.files / sha
        if not dest.exists():
            tmp = self.files / f".{sha}.{os.getpid()}.tmp"
            shutil.copyfile(record["path"], tmp)
            os.replace(tmp, dest)
        record["path"] = str(dest)
        record["static_findings"] = [f.to_dict() if isinstance(f, Finding) else f for f in record.get("static_findings", [])]
        record["queued_at"] = time.time()
        self._deque.append(record)

    def pop(self) -> dict[str, Any] | None:
        """The oldest record, or ``None`` when the queue is empty."""
        try:
            return self._deque.popleft()
        except IndexError:
            return None

    def done(self, record: dict[str, Any]) -> None:
        """Remove the job's file copy once its verdict is published."""
        path = Path(record.get("path", ""))
        if path.parent == self.files:
            try:
                path.unlink()
            except FileNotFoundError:
                pass

    def __len__(self) -> int:
        return len(self._deque)


class QueueDetonator:
    """The scan pipeline's detonator in worker processes: enqueue, then wait on the table.

    ``submit()`` returns ``None``: the pipeline then waits for the verdict in the
    scanned table, where the pool service publishes it.
    """

    def __init__(self, queue: JobQueue) -> None:
        self.queue = queue

    def submit(self, job: Any) -> None:
        self.queue.push(job)
        return None
