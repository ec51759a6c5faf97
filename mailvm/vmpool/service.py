"""The pool service: pops jobs from the durable queue and detonates them.

Runs as its own process (a child of ``mailvm serve``, or ``mailvm pool`` on a
hypervisor host of its own).  Verdicts go to the scanned table, where the scan
workers wait; the pool publishes them itself (each job carries the owner of
its claim).
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

from mailvm.config import Config
from mailvm.verdict import Finding

log = logging.getLogger(__name__)

IDLE_POLL_MIN_S = 0.005
IDLE_POLL_MAX_S = 0.1


def job_from_record(record: dict[str, Any]):
    from mailvm.vmpool.pool import Job

    findings = []
    for f in record.get("static_findings", []):
        try:
            findings.append(Finding.from_dict(f))
        except ValueError:
            continue
    return Job(
        sha256=record["sha256"],
        path=record["path"],
        name=str(record.get("name", "")),
        type=str(record.get("type", "")),
        kind=str(record.get("kind", "unknown")),
        static_findings=findings,
        timeout_s=record.get("timeout_s"),
        deadline=None,  # a queued job runs to completion: the verdict serves the sender's retry
        owner=str(record.get("owner", "")),
    )


def run(cfg: Config, stop: threading.Event) -> None:
    """Serve jobs until ``stop`` is set; the pool and its slots are closed on every exit path."""
    from mailvm.store import open_queue, open_table
    from mailvm.vmpool.pool import Pool
    from mailvm.vmpool.select import make_backend

    queue = open_queue(cfg)  # local, or a Redis stream several pool hosts share ([pool] queue_url)
    table = open_table(cfg)
    backend = make_backend(cfg.pool)
    info = backend.info()
    level = logging.WARNING if info.accel in ("tcg", "none") else logging.INFO
    log.log(level, "pool service: backend %s, isolation %s, accelerator %s", info.name, info.isolation, info.accel)
    pool = Pool(cfg.pool, backend, table)
    try:
        pool.start()
        delay = IDLE_POLL_MIN_S
        while not stop.is_set():
            # back-pressure: leave jobs in the durable queue while the pool is busy,
            # so a crash loses nothing and `mvctl pool status` shows the real backlog
            if pool.queued() >= cfg.pool.slots:
                stop.wait(delay)
                delay = min(IDLE_POLL_MAX_S, delay * 2)
                continue
            record = queue.pop()
            if record is None:
                stop.wait(delay)
                delay = min(IDLE_POLL_MAX_S, delay * 2)
                continue
            delay = IDLE_POLL_MIN_S
            try:
                job = job_from_record(record)
            except (KeyError, TypeError) as exc:
                log.error("dropping malformed job record: %s", exc)
                continue
            fut = pool.submit(job)
            fut.add_done_callback(lambda _f, r=record: queue.done(r))
    finally:
        pool.close()
        table.close()
