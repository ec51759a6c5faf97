"""The job queue on a Redis stream: scan workers on any MX push, pool workers on any
hypervisor host take jobs, and a job taken by a worker that dies is redelivered.

* Jobs are entries of the stream ``P jobs`` with one field, ``job`` (the JSON
  record, as the local :class:`mailvm.vmpool.jobqueue.JobQueue` makes it).  The
  file travels with it as ``P file:<sha256>`` (a string key with a TTL), so a
  pool host needs no shared file system.
* Pool workers read through the consumer group ``P pool`` (``XREADGROUP ... BLOCK``:
  they sleep in Redis until a job arrives, no polling).  Before reading new
  entries a worker takes over entries that another consumer has held idle for
  longer than ``reclaim_idle_s`` (``XAUTOCLAIM``): that consumer died mid-job.
* While a job runs, its worker calls :meth:`RedisJobQueue.heartbeat` (``XCLAIM``
  to itself, which resets the idle time), so a long detonation is not taken
  over; :meth:`done` acknowledges and deletes the entry and the file.

A job is thus delivered at least once; the scanned table's claims make a
second delivery harmless (a popped job whose verdict is already known is not
run again: the pool checks the table first).
"""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import time
from pathlib import Path
from typing import Any, Iterator

from mailvm.store.redis_table import connect

log = logging.getLogger(__name__)

_SHA_RE = re.compile(r"^[0-9a-f]{64}$")
FILE_TTL_S = 86400
MAX_RECORD_BYTES = 256 * 1024
#: at most this many stream entries are listed per claim refresh (a third of pending_ttl_s apart)
WAITING_SCAN_MAX = 20000


class RedisJobQueue:
    def __init__(self, url: str, local_dir: str | os.PathLike[str], consumer: str | None = None,
                 prefix: str = "mailvm:", reclaim_idle_s: float = 60.0, max_file_bytes: int = 64 * 1024 * 1024,
                 client: Any = None) -> None:
        import redis

        self.url = url
        self.r = client if client is not None else connect(url)
        self.prefix = prefix
        self.stream = prefix + "jobs"
        self.group = prefix + "pool"
        self.consumer = consumer or f"{socket.gethostname()}:{os.getpid()}"
        self.reclaim_idle_ms = max(1000, int(reclaim_idle_s * 1000))
        self.max_file_bytes = max_file_bytes
        self.files = Path(local_dir) / "files"
        self.files.mkdir(parents=True, exist_ok=True, mode=0o770)  # 0770 & ~umask (mailvm.privilege)
        self._errors = (redis.RedisError, OSError)
        self._busy_group = redis.ResponseError
        self._group_ready = False

    def _ensure_group(self) -> None:
        if self._group_ready:
            return
        try:
            self.r.xgroup_create(self.stream, self.group, id="0", mkstream=True)
        except self._busy_group as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        self._group_ready = True

    # -- producer side (scan workers) --------------------------------------------------
    def push(self, job: Any) -> None:
        from mailvm.job import job_record

        record = job_record(job)  # the one wire form (raises ValueError when malformed)
        sha = record["sha256"]
        data = Path(record["path"]).read_bytes()
        if len(data) > self.max_file_bytes:
            raise ValueError(f"job file of {len(data)} bytes is larger than {self.max_file_bytes}")
        record.pop("path", None)
        blob = json.dumps(record, default=str)
        if len(blob) > MAX_RECORD_BYTES:
            raise ValueError("job record too large")
        self._ensure_group()
        pipe = self.r.pipeline(transaction=True)
        pipe.set(self.prefix + "file:" + sha, data, ex=FILE_TTL_S)
        pipe.xadd(self.stream, {"job": blob})
        pipe.execute()

    # -- consumer side (pool workers) --------------------------------------------------
    def pop(self, block_s: float = 0.0) -> dict[str, Any] | None:
        """The next job for this consumer: a dead consumer's job first, else a new one.

        Blocks in Redis up to ``block_s`` seconds for a new job (0: do not block).
        """
        self._ensure_group()
        try:
            claimed = self.r.xautoclaim(self.stream, self.group, self.consumer, self.reclaim_idle_ms,
                                        start_id="0-0", count=1)
            entries = claimed[1] if claimed else []
            entries = [e for e in entries if e and e[1]]
            if entries:
                log.warning("job %s taken over from a consumer idle for more than %.0f s",
                            entries[0][0], self.reclaim_idle_ms / 1000)
            else:
                kw = {"block": int(block_s * 1000)} if block_s > 0 else {}
                got = self.r.xreadgroup(self.group, self.consumer, {self.stream: ">"}, count=1, **kw)
                entries = got[0][1] if got else []
        except self._errors as exc:
            log.warning("job queue %s: %s", self.url, exc)
            if block_s > 0:
                time.sleep(min(block_s, 1.0))  # Redis is down: a blocking caller must not spin
            return None
        if not entries:
            return None
        entry_id, fields = entries[0]
        return self._materialise(entry_id, fields)

    def _materialise(self, entry_id: Any, fields: dict) -> dict[str, Any] | None:
        eid = entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)
        try:
            record = json.loads(fields.get(b"job") or fields.get("job"))
            sha = record["sha256"]
            if not _SHA_RE.match(sha):
                raise ValueError("bad sha256")
        except (ValueError, KeyError, TypeError) as exc:
            log.error("job queue: dropping malformed entry %s: %s", eid, exc)
            self._ack(eid)
            return None
        data = self.r.get(self.prefix + "file:" + sha)
        if data is None:
            log.error("job queue: file of job %s (%s) is gone (expired?); dropping the job", eid, sha)
            self._ack(eid)
            return None
        dest = self.files / sha
        tmp = self.files / f".{sha}.{os.getpid()}.tmp"
        tmp.write_bytes(data)
        os.replace(tmp, dest)
        record["path"] = str(dest)
        record["_stream_id"] = eid
        return record

    def heartbeat(self, record: dict[str, Any]) -> None:
        """Keep a running job ours: reset its idle time so no other worker takes it over."""
        eid = record.get("_stream_id")
        if eid:
            try:
                self.r.xclaim(self.stream, self.group, self.consumer, 0, [eid], justid=True)
            except self._errors as exc:
                log.warning("job queue: heartbeat of %s failed: %s", eid, exc)

    def _ack(self, eid: str) -> None:
        pipe = self.r.pipeline(transaction=True)
        pipe.xack(self.stream, self.group, eid)
        pipe.xdel(self.stream, eid)
        pipe.execute()

    def done(self, record: dict[str, Any]) -> None:
        """The job's verdict is published: acknowledge it and drop both copies of the file."""
        eid = record.get("_stream_id")
        sha = record.get("sha256", "")
        try:
            if eid:
                self._ack(eid)
            if _SHA_RE.match(sha):
                self.r.delete(self.prefix + "file:" + sha)
        except self._errors as exc:
            log.warning("job queue: acknowledging %s failed (it may be redelivered): %s", eid, exc)
        path = Path(record.get("path", ""))
        if path.parent == self.files:
            path.unlink(missing_ok=True)

    def waiting(self, limit: int = WAITING_SCAN_MAX) -> Iterator[dict[str, Any]]:
        """The records in the stream now, oldest first: waiting, and running on some pool host (done
        entries are deleted). The pool service refreshes their table claims with this, so a backlog
        longer than ``pending_ttl_s`` never lets a live claim go stale and the file run twice.
        Bounded by ``limit`` entries; the files are not fetched."""
        start, seen = "-", 0
        while seen < limit:
            try:
                page = self.r.xrange(self.stream, min=start, max="+", count=min(500, limit - seen))
            except self._errors as exc:
                log.warning("job queue %s: listing waiting jobs: %s", self.url, exc)
                return
            if not page:
                return
            for entry_id, fields in page:
                seen += 1
                try:
                    record = json.loads(fields.get(b"job") or fields.get("job"))
                except (ValueError, TypeError):
                    continue
                if isinstance(record, dict):
                    yield record
            last = page[-1][0]
            last = last.decode() if isinstance(last, bytes) else str(last)
            start = "(" + last  # exclusive: the page after the last one seen
            if len(page) < 500:
                return

    def __len__(self) -> int:
        """Jobs waiting or running (stream length: entries are deleted when done)."""
        try:
            return int(self.r.xlen(self.stream))
        except self._errors:
            return 0
