"""The durable in-queue between the milter's workers and the pool service.

Scan workers (separate processes) claim a file in the scanned table, copy it
into the queue's ``files/`` directory (one copy per record) and push a small job
record; the pool service pops records and detonates them, and publishes
verdicts to the table, where the workers wait.  The queue is a diskcache
``Deque`` (SQLite: safe with many processes on one host); past one host the
same interface maps to a Redis stream (:mod:`mailvm.store.redis_queue`).

Claims stay alive while a record waits: the pool service refreshes the claim of
every waiting record (:meth:`JobQueue.waiting`).  When it pops a record it takes
the claim over (:meth:`mailvm.scantable.ScanTable.take_over`), so a pool that dies
hands its jobs back at once; a record whose verdict is already known, or whose
file another claimer has queued again, is not run (:mod:`mailvm.vmpool.service`).
Only one pool service consumes one local queue (:mod:`mailvm.vmpool.queuelock`).
"""

from __future__ import annotations

import logging
import os
import secrets
import shutil
import threading
import time
from pathlib import Path
from typing import Any, Iterator

from mailvm.job import job_record
from mailvm.wakebus import WakeBus

log = logging.getLogger(__name__)

#: a file copy no waiting record names is removed once it is this old (a push copies, then appends)
ORPHAN_FILE_AGE_S = 600.0
#: a blocking pop looks at the queue at least this often (the safety net under the wake-up)
BLOCK_RECHECK_S = 1.0


class JobQueue:
    """``push()`` from any process, ``pop()`` in the pool service."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        import diskcache  # lazy: keep imports of this module cheap

        self.root = Path(root)
        self.files = self.root / "files"
        # 0770 & ~umask: private (umask 077) or shared with the scan workers' group (mailvm.privilege)
        self.files.mkdir(parents=True, exist_ok=True, mode=0o770)
        self._deque = diskcache.Deque(directory=str(self.root / "queue"))
        # a push wakes the pool service's blocking pop at once (mailvm.wakebus), no sleep loop
        self._bus = WakeBus(self.root / "wake")
        self._pushed = threading.Event()

    @property
    def lock_path(self) -> Path:
        """The file a pool service locks while it consumes this queue."""
        return self.root / "consumer.lock"

    def push(self, job: Any) -> None:
        """Copy the job's file next to the queue and enqueue the record (``Job`` or dict)."""
        record = job_record(job)  # mailvm.job: the one wire form (raises ValueError when malformed)
        sha = record["sha256"]
        # a copy of its own per record: two records of one file never share (or delete) one copy
        dest = self.files / f"{sha}.{secrets.token_hex(6)}"
        tmp = self.files / f".{dest.name}.tmp"
        shutil.copyfile(record["path"], tmp)
        os.replace(tmp, dest)
        record["path"] = str(dest)
        try:
            self._deque.append(record)
        except BaseException:
            dest.unlink(missing_ok=True)
            raise
        self._bus.notify("job")

    def pop(self, block_s: float = 0.0) -> dict[str, Any] | None:
        """The oldest record, or ``None`` when the queue is empty (after waiting up to ``block_s``
        for a push: woken by the pusher's notification, or by a re-check every BLOCK_RECHECK_S)."""
        if block_s > 0 and not self._bus.listen(lambda _topic: self._pushed.set()):
            block_s = min(block_s, BLOCK_RECHECK_S)  # no bus here: a short sleep instead
        deadline = time.monotonic() + block_s
        while True:
            self._pushed.clear()
            try:
                return self._deque.popleft()
            except IndexError:
                pass
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            self._pushed.wait(min(left, BLOCK_RECHECK_S))

    def close(self) -> None:
        self._bus.close()

    def waiting(self) -> Iterator[dict[str, Any]]:
        """The records waiting now, oldest first (a snapshot that tolerates concurrent pops)."""
        for record in self._deque:
            if isinstance(record, dict):
                yield record

    def done(self, record: dict[str, Any]) -> None:
        """Remove the record's file copy (its verdict is published, or it will not run)."""
        path = Path(record.get("path", ""))
        if path.parent == self.files:
            try:
                path.unlink()
            except FileNotFoundError:
                pass

    def sweep_files(self, min_age_s: float = ORPHAN_FILE_AGE_S) -> int:
        """Remove file copies no waiting record names (their popper died); returns the count."""
        named = {str(r.get("path", "")) for r in self.waiting()}
        now = time.time()
        removed = 0
        for entry in os.scandir(self.files):
            try:
                if entry.path in named or now - entry.stat(follow_symlinks=False).st_mtime < min_age_s:
                    continue
                os.unlink(entry.path)
                removed += 1
            except OSError:
                continue
        if removed:
            log.info("job queue %s: removed %d file copies no job names any more", self.root, removed)
        return removed

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
