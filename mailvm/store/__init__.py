"""Shared state of mailvm processes: the scanned table and the job queue, local or on Redis.

The local implementations (one host) are :class:`mailvm.scantable.ScanTable` and
:class:`mailvm.vmpool.jobqueue.JobQueue`; the Redis ones (several MX and pool hosts)
are :mod:`mailvm.store.redis_table` and :mod:`mailvm.store.redis_queue`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def open_table(cfg: Any) -> Any:
    """The scanned table the config names: Redis when ``[scantable] url`` is set, else the local one."""
    if cfg.scantable.url:
        from mailvm.store.redis_table import RedisScanTable

        return RedisScanTable(cfg.scantable, cfg.scantable.url)
    from mailvm.scantable import ScanTable

    return ScanTable(cfg.scantable)


def open_queue(cfg: Any, consumer: str | None = None) -> Any:
    """The job queue the config names: a Redis stream when ``[pool] queue_url`` is set, else the local one."""
    if cfg.pool.queue_url:
        from mailvm.store.redis_queue import RedisJobQueue

        # a running job is marked alive by its pool worker (mailvm.vmpool.service.heartbeat_interval): one
        # silent for [pool] job_takeover_s belongs to a dead worker, and another one takes it over
        return RedisJobQueue(cfg.pool.queue_url, Path(cfg.pool.work_dir) / "redis-jobs", consumer=consumer,
                             max_file_bytes=cfg.extract.max_file_bytes, reclaim_idle_s=cfg.pool.job_takeover_s)
    from mailvm.vmpool.jobqueue import JobQueue

    return JobQueue(Path(cfg.pool.work_dir) / "jobs")
