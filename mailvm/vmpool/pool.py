"""The detonation pool: pre-warmed slots, the job queues and the threads that drive them.

DESIGN.md "vmpool": an *in-queue* of jobs; a *dispatcher* pairs each job with a
pre-warmed slot (agent already idle on its shared page); a *runner* thread per
busy slot writes the file on the page, rings the doorbell, measures the
hand-over (submit start -> state RUNNING observed) and waits for the result;
finished verdicts go to an *out-queue* whose *retrieve* thread publishes them
to the scanned table and then resolves the job's Future, so every waiter on the
table and on the Future wakes together; a *refill* thread keeps ``cfg.slots``
fresh slots ready, creating them in the background, never on the hand-over
path.  Threads only, no signals; one condition variable (``Pool._cond``)
guards every piece of pool state (queue, ready/busy slots, counters), so the
scheduling can be read top to bottom in :meth:`Pool._dispatch_loop`.

Capacity: ``cfg.slots`` is both the number of slots kept ready and the number
of jobs run at once.  A slot is single-use: it is destroyed after its job and
refilled at once, so up to ``2 * cfg.slots`` slots exist while the pool is
saturated (``slots`` busy, ``slots`` ready or starting).

How a job ends (every path resolves the Future with a :class:`Verdict`; no
exception reaches the caller).  How findings become the verdict (host-side
scoring, guest ``error``, guest timeout) is :mod:`mailvm.vmpool.outcome`'s job.

* **result**: the guest wrote a valid result (DONE, or FAILED with its own
  error result).  Published to the table as final.  A guest-reported timeout
  (finding ``timed_out``) is a normal result, not a slot failure.
* **slot failure**: the page was malformed or hostile (``PageError``), the
  slot died, its heartbeat stopped, or no result came within the job's run
  time plus :data:`RESULT_GRACE_S`.  The slot is destroyed and the job
  retried on a fresh slot, ``cfg.retries`` times (first in line); after that
  the verdict is ``error`` with finding ``slot_failed`` (detail: every
  reason).  Published as final (a sample that kills two sandboxes in a row
  will do it again).  A ready slot found dead *before* its job was written
  is not an attempt: the job simply goes to the next slot.
* **file_too_large**: the file does not fit the page with room left for a
  full result (:func:`max_file_bytes`); no slot is used.  Published as final
  (the answer will not change).
* **not analysed** -- the job waited in the queue past ``job.deadline``
  (``timed_out``, "queued too long"), the deadline passed while it ran
  (``timed_out``, "deadline passed while running"; the guest is told to stop
  :data:`RESULT_MARGIN_S` before the deadline, so this is rare and a slow
  sample normally ends as a guest timeout with its evidence), the pool was
  closed (``pool_closed``), no slot could be created at all (``vm_error``,
  after :data:`BROKEN_AFTER` consecutive creation failures with no slot
  ready; while that lasts new jobs get it at once), the spooled file was
  gone (``file_unreadable``), or the job's fields were malformed (``bad_job``:
  jobs may come from a queue record).  The verdict is ``error`` and the table claim is
  *released*, not published: the pool never looked at the file, so the next
  message carrying it may try again.

While jobs are in flight the pool refreshes their table claims every third of
the table's ``pending_ttl_s``, so a long queue never lets a live claim go stale.

``status()`` returns counters and timings and the same dict is written
atomically to ``<cfg.work_dir>/status.json`` at most once a second (on
changes, and every :data:`STATUS_KEEPALIVE_S` anyway) for ``mvctl pool status``
in another process (:func:`read_status`).
"""

from __future__ import annotations

import atexit
import collections
import concurrent.futures
import itertools
import json
import logging
import math
import os
import queue
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mailvm.config import PoolConfig
from mailvm.guest import protocol
from mailvm.job import Job  # noqa: F401 (defined with its wire form in mailvm.job; re-exported)
from mailvm.verdict import CLEAN, ERROR, MALICIOUS, SUSPICIOUS, Finding, Verdict
from mailvm.vmpool.backends.base import Backend, Slot
from mailvm.vmpool.evidence import evidence_dir, store_screenshots
from mailvm.vmpool.outcome import ENGINE, compose_verdict, failure_verdict
from mailvm.vmpool.shmpage import PageError, RequestTooLarge

if TYPE_CHECKING:
    from mailvm.scantable import ScanTable


log = logging.getLogger(__name__)

#: time after the guest's own run timeout for it to stop the sample and write its result
RESULT_GRACE_S = 10.0
#: with a job deadline near, the guest is told to stop this long before it
RESULT_MARGIN_S = 2.0
#: shortest and longest run time ever given to a guest
MIN_GUEST_TIMEOUT_S = 1.0
MAX_GUEST_TIMEOUT_S = 3600.0
#: samples kept for the median/p95 figures in status()
RECENT = 256
#: slots created at the same time by the refill thread
MAX_PARALLEL_STARTS = 4
#: slot creation retry backoff: first wait, doubled per consecutive failure, capped
CREATE_BACKOFF_FIRST_S = 0.5
CREATE_BACKOFF_MAX_S = 30.0
#: consecutive creation failures, with no slot ready, after which queued jobs fail with vm_error
BROKEN_AFTER = 3
#: how often the refill thread checks that ready slots are still alive
READY_CHECK_S = 1.0
#: status.json: written at most this often, and at least this often while running
STATUS_INTERVAL_S = 1.0
STATUS_KEEPALIVE_S = 5.0
STATUS_FILE = "status.json"
#: while the backend is being prepared (the reference VM boots), status.json is rewritten this often
STARTING_STATUS_S = 2.0
#: how long close() waits for a thread that is stuck in a backend call
JOIN_SLACK_S = 5.0

#: text options are cut to this many characters (the options JSON must stay far below 64 KiB)
MAX_OPTION_TEXT = 1024


@dataclass
class _Work:
    """A job inside the pool: its Future and its history."""

    job: Job
    future: concurrent.futures.Future
    submitted_at: float
    attempts: int = 0  # slots that failed under this job
    failures: list[str] = field(default_factory=list)
    stage: str = "queued"  # queued | hand-over | running (shown in status)


@dataclass
class _Done:
    """A finished job on its way through the out-queue."""

    work: _Work
    verdict: Verdict
    final: bool  # publish to the table (True) or release the claim (False)
    handover_ms: float | None = None
    run_s: float | None = None
    slot: str = ""


@dataclass
class _Refusal:
    """A job answered without running: its verdict and whether it is final for the table."""

    verdict: Verdict
    final: bool


class _SlotFailed(Exception):
    """Internal: the slot, not the job, failed (retry on a fresh slot)."""


class _Samples:
    """Recent timing samples (not thread-safe: used under the pool lock)."""

    def __init__(self) -> None:
        self.values: collections.deque[float] = collections.deque(maxlen=RECENT)
        self.count = 0

    def add(self, value: float) -> None:
        self.values.append(value)
        self.count += 1

    def summary(self, digits: int = 3) -> dict[str, Any]:
        vals = sorted(self.values)
        if not vals:
            return {"n": self.count, "last": None, "median": None, "p95": None}
        n = len(vals)
        mid = vals[n // 2] if n % 2 else (vals[n // 2 - 1] + vals[n // 2]) / 2
        p95 = vals[max(0, math.ceil(0.95 * n) - 1)]
        return {
            "n": self.count,
            "last": round(self.values[-1], digits),
            "median": round(mid, digits),
            "p95": round(p95, digits),
        }


def _fail(job: Job, finding_id: str, detail: str, slot: str = "") -> Verdict:
    """The error verdict of a job that produced no result (see :func:`outcome.failure_verdict`)."""
    return failure_verdict(job.static_findings, job.kind, finding_id, detail, slot)


def _number_or_none(value: Any) -> bool:
    return value is None or (
        isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    )


def _check_job(job: Job) -> _Refusal | None:
    """Jobs may come from a queue record: refuse malformed fields instead of crashing a thread."""
    problems = []
    if not isinstance(job.sha256, str) or not isinstance(job.path, str) or not job.path:
        problems.append("sha256 and path must be strings")
    if not all(isinstance(x, str) for x in (job.name, job.type, job.kind, job.owner)):
        problems.append("name, type, kind and owner must be strings")
    if not _number_or_none(job.deadline):
        problems.append("deadline must be a number (time.monotonic())")
    if not _number_or_none(job.timeout_s) or (job.timeout_s is not None and job.timeout_s <= 0):
        problems.append("timeout_s must be a positive number")
    if not isinstance(job.static_findings, list) or not all(isinstance(f, Finding) for f in job.static_findings):
        problems.append("static_findings must be a list of Finding")
    if not problems:
        return None
    safe = Job(str(job.sha256)[:64], "", "", "", "unknown")
    return _Refusal(_fail(safe, "bad_job", "; ".join(problems)), final=False)


def max_file_bytes(cfg: PoolConfig) -> int:
    """The largest file a slot's page carries while leaving room for the options and a full result.

    The protocol only insists on ``MIN_RESULT_AREA`` for the result; the pool
    keeps ``cfg.max_result_bytes`` free so a big file never starves the guest's
    answer.
    """
    room = (
        cfg.page_bytes
        - protocol.HEADER_SIZE
        - protocol.MAX_OPTIONS_BYTES
        - max(protocol.MIN_RESULT_AREA, cfg.max_result_bytes)
    )
    return max(0, room // protocol.DATA_ALIGN * protocol.DATA_ALIGN)


def _slot_stats(slot: Slot) -> dict[str, Any]:
    try:
        stats = slot.stats()
    except Exception as exc:  # status must not fail because one slot is odd
        return {"stats_error": str(exc)[:200]}
    return dict(stats) if isinstance(stats, dict) else {}


class Pool:
    """Pre-warmed slots, an in-queue, a dispatcher, runners, refill and retrieve threads."""

    def __init__(self, cfg: PoolConfig, backend: Backend, table: "ScanTable | None" = None) -> None:
        self.cfg = cfg
        self.backend = backend
        self.table = table
        self._cond = threading.Condition()
        # --- everything below is guarded by self._cond
        self._queue: collections.deque[_Work] = collections.deque()
        self._ready: collections.deque[Slot] = collections.deque()
        self._busy: dict[str, tuple[Slot, _Work]] = {}
        self._starting = 0
        self._started = False
        self._closing = False
        self._outq_open = True
        self._status_dirty = True
        self._consecutive_create_failures = 0
        self._backoff_until = 0.0
        self._last_create_error = ""
        self._broken = False
        self._counts: collections.Counter[str] = collections.Counter()
        self._handover = _Samples()
        self._run = _Samples()
        self._refill = _Samples()
        self._threads: set[threading.Thread] = set()
        self._ids = itertools.count(1)
        # --- owned by single threads
        self._outq: queue.Queue[_Done | None] = queue.Queue()
        self._info: dict[str, Any] = {"name": getattr(backend, "name", "?")}
        self._preparing_since: float | None = None  # wall clock time start() began preparing the backend
        self._start_error = ""  # why the backend could not be prepared
        self._max_file = max_file_bytes(cfg)
        self._status_path = Path(cfg.work_dir) / STATUS_FILE
        self._status_written = 0.0
        self._status_lock = threading.Lock()
        self._claims_refreshed = time.monotonic()
        self._core: list[threading.Thread] = []
        self._start_lock = threading.Lock()

    # ------------------------------------------------------------------ public API

    def start(self) -> None:
        """Prepare the backend and start the threads; slots warm up in the background.

        A backend that cannot be prepared raises (BackendError) and leaves the pool unstarted.
        """
        with self._start_lock:
            with self._cond:
                if self._closing:
                    raise RuntimeError("pool is closed")
                if self._started:
                    return
            Path(self.cfg.work_dir).mkdir(parents=True, exist_ok=True, mode=0o700)
            # preparing may boot the reference VM (a minute under TCG): say so in status.json meanwhile,
            # so that `mvctl pool status` reports "starting" rather than "has not run"
            self._preparing_since, self._start_error = time.time(), ""
            prepared = threading.Event()
            beat = threading.Thread(target=self._starting_status, args=(prepared,), name="mailvm-pool-starting",
                                    daemon=True)
            beat.start()
            try:
                self.backend.prepare()
            except BaseException as exc:
                self._start_error = f"{type(exc).__name__}: {exc}"[:500]
                raise
            finally:
                prepared.set()
                beat.join(5)
                self._preparing_since = None
                if self._start_error:
                    self._write_status(force=True)
            self._start_threads()

    def _starting_status(self, prepared: threading.Event) -> None:
        while not prepared.is_set():
            self._write_status(force=True)
            prepared.wait(STARTING_STATUS_S)

    def _backend_info(self) -> dict[str, Any]:
        info = self.backend.info()
        return {"name": info.name, "isolation": info.isolation, "accel": info.accel, "details": dict(info.details)}

    def _start_threads(self) -> None:
        self._info = self._backend_info()
        info = self.backend.info()
        log.info(
            "pool: backend %s (%s, accel %s), %d slots, page %d bytes (files up to %d)",
            info.name, info.isolation, info.accel, self.cfg.slots, self.cfg.page_bytes, self._max_file,
        )
        if self._max_file < 1024 * 1024:
            log.warning("pool: page_bytes %d leaves only %d bytes for a file (max_result_bytes %d)",
                        self.cfg.page_bytes, self._max_file, self.cfg.max_result_bytes)
        atexit.register(self.close)
        with self._cond:
            self._started = True
        for name, target in (
            ("dispatch", self._dispatch_loop),
            ("refill", self._refill_loop),
            ("retrieve", self._retrieve_loop),
        ):
            t = threading.Thread(target=target, name=f"mailvm-pool-{name}", daemon=True)
            self._core.append(t)
            t.start()
        self._write_status(force=True)

    def wait_warm(self, timeout: float) -> bool:
        """Wait until ``cfg.slots`` slots are ready; False on timeout, close, or a broken backend."""
        end = time.monotonic() + timeout
        with self._cond:
            while len(self._ready) < self.cfg.slots:
                left = end - time.monotonic()
                if left <= 0 or self._closing or self._broken:
                    return False
                self._cond.wait(left)
            return True

    def submit(self, job: Job) -> concurrent.futures.Future:
        """Queue ``job``; the Future resolves with its :class:`Verdict` (never an exception)."""
        fut: concurrent.futures.Future = concurrent.futures.Future()
        fut.set_running_or_notify_cancel()  # a claimed file is not cancelled half-way
        work = _Work(job, fut, time.monotonic())
        refusal = _check_job(job) or self._precheck(job)
        with self._cond:
            self._counts["submitted"] += 1
            if refusal is None and self._closing:
                refusal = _Refusal(_fail(job, "pool_closed", "the pool was closed"), final=False)
            elif refusal is None and self._broken:
                refusal = _Refusal(self._broken_verdict(job), final=False)
            if refusal is None:
                self._queue.append(work)
                self._status_dirty = True
                self._cond.notify_all()
                return fut
        self._finish(_Done(work, refusal.verdict, refusal.final))
        return fut

    def detonate(self, job: Job, timeout: float | None = None) -> Verdict:
        """Submit ``job`` and wait for its verdict; ``timeout`` also becomes its deadline."""
        if timeout is not None:
            end = time.monotonic() + timeout
            job.deadline = end if job.deadline is None else min(job.deadline, end)
        fut = self.submit(job)
        wait = None if job.deadline is None else max(0.0, job.deadline - time.monotonic()) + JOIN_SLACK_S
        try:
            return fut.result(wait)
        except concurrent.futures.TimeoutError:
            return _fail(job, "timed_out", "no verdict by the deadline")

    def queued(self) -> int:
        """Jobs waiting for a slot (cheap: for back-pressure loops)."""
        with self._cond:
            return len(self._queue)

    def wait_for_room(self, limit: int, timeout: float) -> bool:
        """Block until fewer than ``limit`` jobs wait for a slot (woken by the dispatcher when it
        takes one, not by a timer), the pool closes, or ``timeout`` passes; returns whether there is room."""
        with self._cond:
            return self._cond.wait_for(lambda: len(self._queue) < limit or self._closing, timeout) and \
                len(self._queue) < limit

    def status(self) -> dict[str, Any]:
        """Backend, slots, queue, counters and timings (also in status.json)."""
        if self._started:
            # asked again each time: a backend's image, template and warnings change while it runs
            try:
                self._info = self._backend_info()
            except Exception as exc:  # keep the last known description
                log.debug("pool: backend info failed: %s", exc)
        with self._cond:
            state = ("closed" if self._closing else "broken" if self._broken else "running" if self._started
                     else "starting" if self._preparing_since is not None else "failed" if self._start_error
                     else "new")
            c = self._counts
            busy = [(s, w.job.sha256, w.attempts + 1, w.stage) for s, w in self._busy.values()]
            out = {
                "pid": os.getpid(),
                "updated_at": time.time(),
                "state": state,
                "backend": dict(self._info),
                "starting_since": self._preparing_since,
                "start_error": self._start_error,
                "slots": {
                    "target": self.cfg.slots,
                    "ready": len(self._ready),
                    "busy": len(self._busy),
                    "starting": self._starting,
                },
                "busy_slots": [],
                "queue": len(self._queue),
                "max_file_bytes": self._max_file,
                "jobs": {
                    "submitted": c["submitted"],
                    "done": c["done"],
                    "failed": c["failed"],
                    "retried": c["retried"],
                    "timed_out_queued": c["timed_out_queued"],
                    "verdicts": {v: c[f"verdict_{v}"] for v in (CLEAN, SUSPICIOUS, MALICIOUS, ERROR)},
                },
                "slot_events": {
                    "created": c["slots_created"],
                    "create_failures": c["create_failures"],
                    "failed": c["slot_failures"],
                    "stale": c["stale_slots"],
                    "last_create_error": self._last_create_error,
                },
                "handover_ms": self._handover.summary(3),
                "run_s": self._run.summary(3),
                "refill_ms": self._refill.summary(1),
            }
        # slot.stats() may read /proc: outside the lock
        out["busy_slots"] = [
            {"id": s.id, "sha256": sha, "attempt": n, "stage": stage, **_slot_stats(s)} for s, sha, n, stage in busy
        ]
        return out

    def close(self) -> None:
        """Stop the threads, destroy every slot (busy ones too), fail queued jobs; idempotent."""
        with self._start_lock:  # never half-way through start()
            self._close()

    def _close(self) -> None:
        with self._cond:
            if self._closing:
                return
            self._closing = True
            queued = list(self._queue)
            self._queue.clear()
            slots = list(self._ready) + [s for s, _ in self._busy.values()]
            self._ready.clear()
            self._cond.notify_all()
        log.info("pool: closing (%d queued, %d slots)", len(queued), len(slots))
        for work in queued:
            self._finish(_Done(work, _fail(work.job, "pool_closed", "the pool was closed"), final=False))
        for slot in slots:  # runners see their slot die and finish their job as pool_closed
            slot.destroy()
        me = threading.current_thread()  # close() may run in a Future callback
        for t in self._core:
            if t.name != "mailvm-pool-retrieve" and t is not me:
                t.join(JOIN_SLACK_S)
        # runners and slot starters: counted under the lock before they are spawned
        end = time.monotonic() + max(self.cfg.ready_timeout_s, self.cfg.heartbeat_timeout_s) + JOIN_SLACK_S
        with self._cond:
            while (self._starting or self._busy or self._threads - {me}) and time.monotonic() < end:
                self._cond.wait(0.1)
            if self._starting or self._busy or self._threads - {me}:
                log.error("pool: threads did not stop: %s", sorted(t.name for t in self._threads))
            self._outq_open = False
            leftovers = list(self._ready) + [s for s, _ in self._busy.values()]
            self._ready.clear()
        for slot in leftovers:
            slot.destroy()
        self._outq.put(None)
        for t in self._core:
            if t.name == "mailvm-pool-retrieve" and t is not me:
                t.join(JOIN_SLACK_S)
        try:
            self.backend.close()
        except Exception as exc:  # shutdown goes on whatever a backend does
            log.warning("pool: backend close failed: %s", exc)
        if self._started:
            self._write_status(force=True)
        atexit.unregister(self.close)

    def __enter__(self) -> "Pool":
        self.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # ------------------------------------------------------------------ dispatcher

    def _dispatch_loop(self) -> None:
        self._guarded(self._dispatch_once)

    def _guarded(self, step: Any) -> None:
        """Run ``step()`` until it returns False; a bug in one round is logged, not fatal to the pool."""
        while True:
            try:
                if step() is False:
                    return
            except Exception:
                log.exception("pool: %s failed; going on", threading.current_thread().name)
                time.sleep(0.1)

    def _dispatch_once(self) -> bool:
        """One round of the dispatcher: expire, pair jobs with ready slots, start runners."""
        expired: list[_Work] = []
        dead: list[_Work] = []
        pairs: list[tuple[_Work, Slot]] = []
        with self._cond:
            if self._closing:
                return False
            now = time.monotonic()
            keep: collections.deque[_Work] = collections.deque()
            for work in self._queue:
                if work.job.deadline is not None and now >= work.job.deadline:
                    expired.append(work)
                else:
                    keep.append(work)
            self._queue = keep
            if self._broken and self._queue:
                dead = list(self._queue)
                self._queue.clear()
            while self._queue and self._ready and len(self._busy) < self.cfg.slots:
                work = self._queue.popleft()
                slot = self._ready.popleft()
                self._busy[slot.id] = (slot, work)
                pairs.append((work, slot))
            if expired or dead or pairs:
                self._status_dirty = True
                self._cond.notify_all()  # the refill thread replaces the slots just taken
            else:
                deadlines = [w.job.deadline for w in self._queue if w.job.deadline is not None]
                wait = STATUS_INTERVAL_S
                if deadlines:
                    wait = max(0.0, min(wait, min(deadlines) - now))
                self._cond.wait(wait)
        for work in expired:
            self._counts_add("timed_out_queued")
            waited = time.monotonic() - work.submitted_at
            v = _fail(work.job, "timed_out", f"queued too long ({waited:.1f} s, no free slot)")
            self._finish(_Done(work, v, final=False))
        for work in dead:
            self._finish(_Done(work, self._broken_verdict(work.job), final=False))
        for work, slot in pairs:
            try:
                self._spawn(f"mailvm-slot-{slot.id}", self._run_job, work, slot)
            except BaseException:  # no thread: the job goes back first in line, the slot back to ready
                with self._cond:
                    self._queue.appendleft(work)
                self._release_slot(slot, pristine=True)
                raise
        self._refresh_claims()
        self._write_status()
        return True

    def _spawn(self, name: str, target: Any, *args: Any) -> None:
        """Start a tracked daemon thread (runners and slot starters)."""

        def body() -> None:
            try:
                target(*args)
            finally:
                with self._cond:
                    self._threads.discard(threading.current_thread())
                    self._cond.notify_all()

        t = threading.Thread(target=body, name=name, daemon=True)
        with self._cond:
            self._threads.add(t)
        t.start()

    def _broken_verdict(self, job: Job) -> Verdict:
        return _fail(job, "vm_error", f"no slot could be created: {self._last_create_error}"[:400])

    # ------------------------------------------------------------------ one job on one slot

    def _run_job(self, work: _Work, slot: Slot) -> None:
        """Runner thread body: the job on this slot; then the slot is gone."""
        outcome: _Done | None = None
        reason = ""
        pristine = False  # nothing was written on the page: the slot may serve another job
        try:
            if not self._slot_ok(slot):
                outcome = self._stale_slot(work)
            else:
                got = self._read_file(work.job)
                if isinstance(got, _Refusal):
                    pristine = True
                    outcome = _Done(work, got.verdict, got.final)
                else:
                    outcome = self._detonate_on(slot, work, got)
        except _SlotFailed as exc:
            reason = str(exc)
        except Exception as exc:  # a bug here must not lose the job or the slot
            log.exception("pool: runner for %s on slot %s failed", work.job.sha256[:12], slot.id)
            reason = f"internal error: {exc!r}"
        finally:
            self._release_slot(slot, pristine)
        if outcome is not None:
            self._finish(outcome)
        if reason:
            self._slot_failed(work, slot.id, reason)

    def _release_slot(self, slot: Slot, pristine: bool) -> None:
        """A runner is done with ``slot``: back to the ready list if pristine, else destroyed."""
        with self._cond:
            self._busy.pop(slot.id, None)
            reuse = pristine and not self._closing
            if reuse:
                self._ready.appendleft(slot)
            self._status_dirty = True
            self._cond.notify_all()
        if not reuse:
            slot.destroy()

    def _stale_slot(self, work: _Work) -> _Done | None:
        """The slot died while ready: the job goes back to the head of the queue (not an attempt)."""
        with self._cond:
            self._counts["stale_slots"] += 1
            if not self._closing:
                self._queue.appendleft(work)
                self._cond.notify_all()
                return None
        return _Done(work, _fail(work.job, "pool_closed", "the pool was closed"), final=False)

    def _slot_ok(self, slot: Slot) -> bool:
        try:
            return slot.alive() and slot.page.state() == protocol.READY
        except Exception as exc:  # a hostile page header reads as a broken slot
            log.warning("pool: ready slot %s unusable: %s", slot.id, exc)
            return False

    def _read_file(self, job: Job) -> bytes | _Refusal:
        """The job's bytes, bounded by the page capacity (the file may have grown since submit)."""
        try:
            with open(job.path, "rb") as fh:
                data = fh.read(self._max_file + 1)
        except OSError as exc:
            return _Refusal(_fail(job, "file_unreadable", f"cannot read the spooled file: {exc.strerror}"), False)
        if len(data) > self._max_file:
            return _Refusal(_fail(job, "file_too_large", f"larger than the slot page's {self._max_file} bytes"), True)
        return data

    def _detonate_on(self, slot: Slot, work: _Work, data: bytes) -> _Done:
        """Hand the job to the slot and wait for its result; raises _SlotFailed."""
        job = work.job
        cfg = self.cfg
        now = time.monotonic()
        run_timeout = min(MAX_GUEST_TIMEOUT_S, float(job.timeout_s if job.timeout_s is not None else cfg.job_timeout_s))
        if job.deadline is not None:
            run_timeout = min(run_timeout, max(MIN_GUEST_TIMEOUT_S, job.deadline - now - RESULT_MARGIN_S))
        options = {
            "name": job.name[:MAX_OPTION_TEXT],
            "type": job.type[:MAX_OPTION_TEXT],
            "kind": job.kind[:MAX_OPTION_TEXT],
            "timeout_s": run_timeout,
            "idle_s": cfg.idle_s,
            "stop_on_malicious": cfg.stop_on_malicious,
            "max_result_bytes": cfg.max_result_bytes,  # the agent shrinks its result to fit
        }
        page = slot.page
        hb = cfg.heartbeat_timeout_s
        t0 = time.monotonic()
        stage = work.stage = "hand-over"
        try:
            try:
                page.submit(data, job.name, options)
            except RequestTooLarge as exc:  # refused before anything was written
                v = _fail(job, "file_too_large", str(exc))
                return _Done(work, v, final=True, slot=slot.id)
            slot.ring()
            limit = t0 + hb
            wake = slot.answer_fd()  # the agent's doorbell back, where the backend has one
            state = page.wait_state(
                {protocol.RUNNING, protocol.DONE, protocol.FAILED},
                self._cap_deadline(job, limit), alive=slot.alive, heartbeat_timeout=hb, wake_fd=wake,
            )
            handover_ms = (time.monotonic() - t0) * 1000.0
            stage = work.stage = "running"
            limit = t0 + run_timeout + RESULT_GRACE_S
            if state == protocol.RUNNING:
                state = page.wait_state(
                    {protocol.DONE, protocol.FAILED},
                    self._cap_deadline(job, limit), alive=slot.alive, heartbeat_timeout=hb, wake_fd=wake,
                )
            run_s = time.monotonic() - t0
            stage = "result"
            result = page.read_result(cfg.max_result_bytes)
        except TimeoutError:
            if job.deadline is not None and time.monotonic() >= job.deadline - 0.05:
                v = _fail(job, "timed_out", f"deadline passed while running ({stage})", slot=slot.id)
                return _Done(work, v, final=False, slot=slot.id)
            if stage == "hand-over":
                raise _SlotFailed(f"no acknowledgement within {hb:.1f} s") from None
            raise _SlotFailed(f"no result within {run_timeout + RESULT_GRACE_S:.1f} s") from None
        except PageError as exc:
            raise _SlotFailed(f"{stage}: {exc}") from None
        except (OSError, ValueError) as exc:
            raise _SlotFailed(f"{stage}: {exc!r}") from None
        except Exception as exc:  # BackendError from ring(), or anything a backend raises
            raise _SlotFailed(f"{stage}: {type(exc).__name__}: {exc}") from None
        with self._cond:
            self._handover.add(handover_ms)
            self._run.add(run_s)
        if state == protocol.FAILED:
            log.info("pool: slot %s reported FAILED for %s", slot.id, job.sha256[:12])
        verdict = compose_verdict(job.static_findings, job.kind, result, slot.id, run_s, handover_ms)
        shots = store_screenshots(result.get("screenshots") or [], evidence_dir(cfg.work_dir), job.sha256)
        verdict.log[2:2] = shots  # after the kind and run entries: kept by any later cap
        return _Done(work, verdict, final=True, handover_ms=handover_ms, run_s=run_s, slot=slot.id)

    @staticmethod
    def _cap_deadline(job: Job, limit: float) -> float:
        return limit if job.deadline is None else min(limit, job.deadline)

    def _slot_failed(self, work: _Work, slot_id: str, reason: str) -> None:
        log.warning("pool: slot %s failed under %s: %s", slot_id, work.job.sha256[:12], reason)
        work.failures.append(f"{slot_id}: {reason}")
        with self._cond:
            self._counts["slot_failures"] += 1
            closing = self._closing
            late = work.job.deadline is not None and time.monotonic() >= work.job.deadline
            if not closing and not late and work.attempts < self.cfg.retries:
                work.attempts += 1
                self._counts["retried"] += 1
                work.stage = "queued"
                self._queue.appendleft(work)  # first in line for the next fresh slot
                self._status_dirty = True
                self._cond.notify_all()
                return
        if closing:
            v, final = _fail(work.job, "pool_closed", "the pool was closed"), False
        elif late:
            v, final = _fail(work.job, "timed_out", "deadline passed after a slot failure"), False
        else:
            v, final = _fail(work.job, "slot_failed", "; ".join(work.failures), slot=slot_id), True
        self._finish(_Done(work, v, final=final, slot=slot_id))

    # ------------------------------------------------------------------ refill

    def _refill_loop(self) -> None:
        self._guarded(self._refill_once)

    def _refill_once(self) -> bool:
        """Wait until a slot is missing (and any backoff is over), then start creating one.

        Ready slots that died while waiting (a killed QEMU, a clone of a replaced template)
        are dropped on the way, so their replacements start at once, not when a job finds them.
        """
        dead: list[Slot] = []
        with self._cond:
            while True:
                if self._closing:
                    return False
                dead += self._drop_dead_ready()
                now = time.monotonic()
                short = len(self._ready) + self._starting < self.cfg.slots
                if short and self._starting < MAX_PARALLEL_STARTS and now >= self._backoff_until:
                    break
                wait = self._backoff_until - now if short and now < self._backoff_until else READY_CHECK_S
                if dead:  # destroy outside the lock, then come back
                    break
                self._cond.wait(min(wait, READY_CHECK_S))
            if not dead:
                self._starting += 1
                slot_id = f"{os.getpid()}-{next(self._ids)}"
                self._status_dirty = True
        if dead:
            for slot in dead:
                slot.destroy()
            return True
        try:
            self._spawn(f"mailvm-start-{slot_id}", self._create_slot, slot_id)
        except BaseException:  # could not even start a thread: do not leak the count
            with self._cond:
                self._starting -= 1
            raise
        return True

    def _drop_dead_ready(self) -> list[Slot]:
        """Under ``_cond``: take ready slots whose ``alive()`` is False out of the ready list."""
        dead = []
        for slot in list(self._ready):
            try:
                ok = slot.alive()
            except Exception:  # a backend bug reads as a dead slot
                ok = False
            if not ok:
                self._ready.remove(slot)
                dead.append(slot)
        if dead:
            self._counts["stale_slots"] += len(dead)
            self._status_dirty = True
            log.info("pool: %d ready slot(s) gone (%s); replacing them", len(dead), ", ".join(s.id for s in dead))
        return dead

    def _create_slot(self, slot_id: str) -> None:
        t0 = time.monotonic()
        try:
            slot = self.backend.create_slot(slot_id)
        except Exception as exc:  # BackendError, or a backend bug: both are data here
            with self._cond:
                self._starting -= 1
                self._counts["create_failures"] += 1
                self._consecutive_create_failures += 1
                n = self._consecutive_create_failures
                backoff = min(CREATE_BACKOFF_MAX_S, CREATE_BACKOFF_FIRST_S * 2 ** (n - 1))
                self._backoff_until = time.monotonic() + backoff
                self._last_create_error = str(exc)[:300] or type(exc).__name__
                if n >= BROKEN_AFTER and not self._ready and not self._broken:
                    self._broken = True
                    log.error("pool: %d slot creations failed in a row; queued jobs fail with vm_error", n)
                self._status_dirty = True
                self._cond.notify_all()
            log.warning("pool: creating slot %s failed (%s); retry in %.1f s", slot_id, exc, backoff)
            return
        took = time.monotonic() - t0
        with self._cond:
            self._starting -= 1
            if not self._closing:
                self._ready.append(slot)
                self._counts["slots_created"] += 1
                self._refill.add(took * 1000.0)
                self._consecutive_create_failures = 0
                if self._broken:
                    log.warning("pool: slot creation works again")
                self._broken = False
                self._status_dirty = True
                self._cond.notify_all()
                return
        slot.destroy()

    # ------------------------------------------------------------------ out-queue

    def _finish(self, done: _Done) -> None:
        with self._cond:
            queued = self._outq_open and self._started
            if queued:
                self._outq.put(done)
        if not queued:  # before start or after close: deliver here
            self._deliver(done)

    def _retrieve_loop(self) -> None:
        while True:
            done = self._outq.get()
            if done is None:
                return
            self._deliver(done)

    def _deliver(self, done: _Done) -> None:
        """Publish (or release) in the table, then wake the Future; log one line."""
        job, v = done.work.job, done.verdict
        if self.table is not None and job.owner:
            try:
                if done.final:
                    self.table.publish(job.sha256, v)
                else:
                    self.table.release(job.sha256, job.owner)
            except Exception as exc:  # the table is a cache: the caller still gets its verdict
                log.error("pool: scanned table %s for %s failed: %s",
                          "publish" if done.final else "release", job.sha256[:12], exc)
        with self._cond:
            self._counts["failed" if v.verdict == ERROR else "done"] += 1
            self._counts[f"verdict_{v.verdict}"] += 1
            self._status_dirty = True
        reason = next((f.id for f in v.findings if f.source == ENGINE and v.verdict == ERROR), "")
        log.info(
            "detonated %s %s score=%d handover_ms=%s run_s=%s slot=%s%s",
            job.sha256[:12], v.verdict, v.score,
            "-" if done.handover_ms is None else f"{done.handover_ms:.2f}",
            "-" if done.run_s is None else f"{done.run_s:.2f}",
            done.slot or "-", f" ({reason})" if reason else "",
        )
        if not done.work.future.done():
            done.work.future.set_result(v)

    # ------------------------------------------------------------------ bookkeeping

    def _counts_add(self, name: str, n: int = 1) -> None:
        with self._cond:
            self._counts[name] += n

    def _refresh_claims(self) -> None:
        """Keep the table claims of in-flight jobs live (called from the dispatcher)."""
        if self.table is None:
            return
        every = float(getattr(self.table.cfg, "pending_ttl_s", 600.0)) / 3.0
        now = time.monotonic()
        if now - self._claims_refreshed < every:
            return
        self._claims_refreshed = now
        with self._cond:
            works = list(self._queue) + [w for _, w in self._busy.values()]
        for work in works:
            if work.job.owner:
                try:
                    self.table.refresh(work.job.sha256, work.job.owner)
                except Exception as exc:
                    log.warning("pool: refreshing the claim on %s failed: %s", work.job.sha256[:12], exc)

    def _precheck(self, job: Job) -> _Refusal | None:
        """Refuse at once what no slot can take."""
        try:
            size = os.stat(job.path).st_size
        except OSError as exc:
            return _Refusal(_fail(job, "file_unreadable", f"cannot stat the spooled file: {exc.strerror}"), False)
        if size > self._max_file:
            return _Refusal(_fail(job, "file_too_large", f"{size} bytes; the slot page takes {self._max_file}"), True)
        return None

    def _write_status(self, force: bool = False) -> None:
        """Write status.json atomically, at most once a second (``force``: now)."""
        now = time.monotonic()
        with self._status_lock:
            with self._cond:
                due = now - self._status_written >= (STATUS_INTERVAL_S if self._status_dirty else STATUS_KEEPALIVE_S)
                if not (force or due):
                    return
                self._status_dirty = False
            self._status_written = now
            data = json.dumps(self.status(), indent=1, default=str)
            try:
                fd, tmp = tempfile.mkstemp(prefix=".status-", dir=str(self._status_path.parent))
                try:
                    with os.fdopen(fd, "w") as fh:
                        fh.write(data)
                    os.chmod(tmp, 0o644)
                    os.replace(tmp, self._status_path)
                except BaseException:
                    os.unlink(tmp)
                    raise
            except OSError as exc:
                log.warning("pool: cannot write %s: %s", self._status_path, exc)


def read_status(work_dir: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The last status a pool wrote under ``work_dir`` (None when there is none or it is unreadable)."""
    try:
        data = json.loads((Path(work_dir) / STATUS_FILE).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None
