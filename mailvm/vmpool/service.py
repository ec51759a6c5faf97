"""The pool service: pops jobs from the durable queue and detonates them.

Runs as its own process (a child of ``mailvm serve``, or ``mailvm pool`` on a
hypervisor host of its own).  Verdicts go to the scanned table, where the scan
workers wait; the pool publishes them itself (each job carries the owner of
its claim).

Claims and the queue (issue 12 item 4):

* while a record waits in the durable queue its claim is refreshed (every third
  of ``pending_ttl_s``), so a backlog never lets a live claim go stale and a later
  message queue the same file a second time;
* a popped record's claim is taken over by this process (:func:`admit`): when the
  pool service dies, every claim it held is stale at once (the table checks that
  the owner process is gone), so the waiting scans queue those files again
  without waiting for the claim's TTL;
* a popped record whose verdict is already in the table, or whose file was
  queued again by another claimer, is not run;
* a local queue has one consumer: the service holds its lock
  (:mod:`mailvm.vmpool.queuelock`) while it runs.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from typing import Any

from mailvm.config import Config
from mailvm.job import job_from_record

log = logging.getLogger(__name__)



#: the claims of records waiting in the durable queue are refreshed this often (a third of pending_ttl_s)
REFRESH_FRACTION = 3.0
#: how often file copies that no waiting record names are swept
SWEEP_EVERY_S = 3600.0
#: an idle pool service blocks this long in one pop (then looks at stop, heartbeats, refreshes)
POP_BLOCK_S = 0.5
#: a running job of a shared queue (Redis) is marked alive this often (RedisJobQueue.heartbeat); a job
#: silent for [pool] job_takeover_s (six heartbeats) belongs to a dead pool worker and is taken over
HEARTBEATS_PER_TAKEOVER = 6


def heartbeat_interval(cfg: Config) -> float:
    return cfg.pool.job_takeover_s / HEARTBEATS_PER_TAKEOVER


def pool_owner() -> str:
    """A claim owner naming this pool process (``node:pid:...``): its claims die with it."""
    return f"{os.uname().nodename}:{os.getpid()}:pool-{uuid.uuid4().hex[:8]}"


def admit(table: Any, record: dict[str, Any]) -> str:
    """Whether a popped record runs: ``"run"`` (its claim is now this process's, ``record["owner"]``
    updated), ``"known"`` (a fresh verdict exists: not run again) or ``"other"`` (another claimer
    queued the file again after this record's claim went stale: that record runs, not this one).
    """
    sha, owner = str(record.get("sha256", "")), str(record.get("owner", "") or "")
    take_over = getattr(table, "take_over", None)
    if take_over is not None and owner:
        new_owner = pool_owner()
        claim = take_over(sha, owner, new_owner)
        if claim.won:
            record["owner"] = new_owner
            return "run"
        return "known" if claim.entry is not None and claim.entry.state == "done" else "other"
    # a table without take-over (Redis: its claims expire by themselves): still never run a known file
    entry = table.get(sha)
    return "known" if entry is not None and entry.state == "done" else "run"


def refresh_waiting(queue: Any, table: Any) -> int:
    """Keep the claims of the records waiting in the queue alive; returns how many were refreshed."""
    waiting = getattr(queue, "waiting", None)
    if waiting is None:
        return 0
    n = 0
    for record in waiting():
        sha, owner = record.get("sha256"), record.get("owner")
        if not sha or not owner:
            continue
        try:
            n += bool(table.refresh(sha, owner))
        except Exception as exc:  # the table is a cache: never stop serving for it
            log.warning("pool service: refreshing the claim of queued %s failed: %s", str(sha)[:12], exc)
    return n


def run(cfg: Config, stop: threading.Event, supervisor: int = 0) -> None:
    """Serve jobs until ``stop`` is set; the pool and its slots are closed on every exit path.

    ``supervisor``: pid of the ``mailvm serve`` that started this process (0: a pool of its own),
    written into the queue lock so that a restarted service can tell a leftover from a peer.
    """
    from mailvm.store import open_queue, open_table
    from mailvm.vmpool.pool import Pool
    from mailvm.vmpool.queuelock import QueueLock
    from mailvm.vmpool.select import make_backend

    queue = open_queue(cfg)  # local, or a Redis stream several pool hosts share ([pool] queue_url)
    lock = None
    lock_path = getattr(queue, "lock_path", None)
    if lock_path is not None:  # a local queue has one consumer: never two pools on it
        lock = QueueLock(lock_path)
        if not lock.acquire(stop, supervisor):
            return
    try:
        _serve(cfg, stop, queue, open_table(cfg), Pool, make_backend)
    finally:
        if lock is not None:
            lock.release()


def _serve(cfg: Config, stop: threading.Event, queue: Any, table: Any, pool_cls: Any, make_backend: Any) -> None:
    backend = make_backend(cfg.pool)
    log.info("pool service: backend %s, preparing it (a VM backend boots its reference VM first)",
             backend.info().name)
    pool = pool_cls(cfg.pool, backend, table)
    refresh_every = max(1.0, float(cfg.scantable.pending_ttl_s) / REFRESH_FRACTION)
    sweep = getattr(queue, "sweep_files", None)
    try:
        pool.start()
        # the accelerator is known once the backend is prepared (before, a VM backend says "none")
        info = backend.info()
        level = logging.WARNING if info.accel in ("tcg", "none") else logging.INFO
        log.log(level, "pool service: backend %s ready, isolation %s, accelerator %s", info.name, info.isolation,
                info.accel)
        if sweep is not None:
            sweep()
        last_refresh = last_sweep = last_beat = time.monotonic()
        # jobs running here; a shared queue (Redis) is told they are alive, so that no other pool
        # worker takes them over (it takes a job silent for JOB_RECLAIM_IDLE_S: this worker died)
        beat = getattr(queue, "heartbeat", None)
        heartbeat_s = heartbeat_interval(cfg)
        running: dict[int, dict[str, Any]] = {}
        running_lock = threading.Lock()

        def finished(record: dict[str, Any]) -> None:
            with running_lock:
                running.pop(id(record), None)
            queue.done(record)

        while not stop.is_set():
            now = time.monotonic()
            if beat is not None and now - last_beat >= heartbeat_s:
                last_beat = now
                with running_lock:
                    alive = list(running.values())
                for record in alive:
                    beat(record)
            if now - last_refresh >= refresh_every:
                last_refresh = now
                refresh_waiting(queue, table)
            if sweep is not None and now - last_sweep >= SWEEP_EVERY_S:
                last_sweep = now
                sweep()
            # back-pressure: leave jobs in the durable queue while the pool is busy,
            # so a crash loses nothing and `mvctl pool status` shows the real backlog
            if not pool.wait_for_room(cfg.pool.slots, POP_BLOCK_S):
                continue  # woken by the dispatcher taking a job, or at POP_BLOCK_S to look at stop
            # a blocking pop: woken by the push itself (local: mailvm.wakebus; Redis: XREADGROUP BLOCK)
            record = queue.pop(block_s=POP_BLOCK_S)
            if record is None:
                continue
            try:
                verdict_state = admit(table, record)
            except Exception as exc:  # table unusable: run it anyway (a detonation too many, never one lost)
                log.warning("pool service: cannot check the table for %s (%s); running it",
                            str(record.get("sha256"))[:12], exc)
                verdict_state = "run"
            if verdict_state != "run":
                log.info("pool service: not running %s: %s", str(record.get("sha256"))[:12],
                         "its verdict is already known" if verdict_state == "known"
                         else "another claimer queued it again")
                queue.done(record)
                continue
            try:
                job = job_from_record(record)
            except (KeyError, TypeError, ValueError) as exc:
                log.error("dropping malformed job record: %s", exc)
                queue.done(record)
                continue
            with running_lock:
                running[id(record)] = record
            fut = pool.submit(job)
            fut.add_done_callback(lambda _f, r=record: finished(r))
    finally:
        pool.close()
        table.close()
        close = getattr(queue, "close", None)
        if close is not None:
            close()
