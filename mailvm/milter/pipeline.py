"""The end-of-message pipeline, run in worker processes.

pymilter runs one thread per connection in a single process, and Python's GIL
would serialise MIME parsing and triage for every connection; so the milter
passes little more than a file name to a process pool, and each worker runs
:class:`mailvm.scan.Scanner` with its own compiled YARA rules, its own handle on
the scanned table and the durable job queue of the pool service.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from dataclasses import dataclass
from typing import Any

from mailvm.config import Config, load_config
from mailvm.job import ScanJob

log = logging.getLogger(__name__)


@dataclass
class _Worker:
    cfg: Config
    triage: Any
    table: Any
    detonator: Any
    #: the administrator pins (mailvm.pins), opened once per worker, not once per message
    pins: Any = None


_worker: _Worker | None = None  # set by init_worker() in each worker process only


def die_with_parent(expected_parent: int | None = None) -> None:
    """Ask Linux to SIGKILL this process when its parent dies (prctl PR_SET_PDEATHSIG): a worker never
    outlives a killed ``mailvm serve``.  SIGTERM, SIGINT and SIGHUP get their default action and are
    unblocked: a process forked from a thread that blocks them (libmilter's) would inherit the block
    and shrug off a plain ``kill``.  With ``expected_parent``, a parent that died before the prctl
    (the signal would never come) ends this process at once."""
    import ctypes
    import signal

    try:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM, signal.SIGINT, signal.SIGHUP})
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, int(signal.SIGKILL), 0, 0, 0)  # PR_SET_PDEATHSIG = 1
    except (OSError, AttributeError, ValueError) as exc:  # not Linux: the supervisor's process group is the fallback
        log.debug("PR_SET_PDEATHSIG unavailable: %s", exc)
    if expected_parent is not None and os.getppid() != expected_parent:
        os._exit(1)  # the parent is already gone: nobody would ever stop this process


def die_with_process(pid: int, start: int | None) -> None:
    """End this process (SIGKILL) as soon as process ``pid`` (started at ``start`` ticks) ends.

    A scan worker's parent is multiprocessing's forkserver, not ``mailvm serve``; and the forkserver
    only exits once every process it forked is gone, so PR_SET_PDEATHSIG alone left a busy worker
    (and with it the forkserver) running until its message was done.  A daemon thread waits on a
    pidfd of ``mailvm serve`` instead: readable the moment it dies.
    """
    import select
    import signal
    import threading

    from mailvm.procfs import start_ticks

    try:
        fd = os.pidfd_open(pid)
    except OSError:
        os._exit(1)  # already gone
    if start is not None and start_ticks(pid) != start:
        os._exit(1)  # the pid was reused: the process meant is gone

    def watch() -> None:
        select.select([fd], [], [])
        os.kill(os.getpid(), signal.SIGKILL)

    threading.Thread(target=watch, name="mailvm-die-with-serve", daemon=True).start()


def init_worker(config_path: str | None, supervisor: int | None = None, supervisor_start: int | None = None,
                identity: Any = None) -> None:
    """Pebble's initializer: build the heavy, reusable parts once per worker.

    ``supervisor``: the pid (and start time) of the ``mailvm serve`` that owns the workers; the
    worker dies with it. ``identity`` (:class:`mailvm.privilege.WorkerIdentity`): the user the
    worker becomes once the configuration is read and the YARA rules are compiled; the table and
    the queue are opened as that user, so a permission problem shows at start.
    """
    global _worker
    die_with_parent()
    if supervisor:
        die_with_process(supervisor, supervisor_start)
    from mailvm.triage import Triage
    from mailvm.vmpool.jobqueue import QueueDetonator

    cfg = load_config(config_path)
    triage = Triage(cfg.triage)
    if identity is not None:
        from mailvm.privilege import drop_privileges

        drop_privileges(identity)  # raises rather than go on as root: Pebble reports the failed start
        die_with_parent()  # a change of user clears the parent-death signal: set it again
    from mailvm.store import open_queue, open_table

    queue = open_queue(cfg)  # local, or the Redis stream of [pool] queue_url
    from mailvm.pins import PinStore, pins_path

    _worker = _Worker(cfg, triage, open_table(cfg), QueueDetonator(queue), PinStore(pins_path(cfg.scantable.path)))
    log.debug("scan worker %d ready", os.getpid())


def worker_ready() -> bool:
    """A task that only proves a worker started (``MilterService.start`` warms the pool with it)."""
    return _worker is not None


def scanner_for(w: _Worker, job: ScanJob) -> Any:
    """The :class:`mailvm.scan.Scanner` for one message: the worker's parts with the job's
    :class:`~mailvm.job.AnalysisSettings` read as they are -- the one place they meet the
    host configuration (link limits only ever narrowed; an empty kind list detonates nothing)."""
    from mailvm.scan import Scanner

    s = job.settings
    cfg = dataclasses.replace(w.cfg, links=s.links_config(w.cfg.links))
    return Scanner(cfg, w.triage, w.table, w.detonator if job.detonate else None,
                   detonate_kinds=s.detonate_kinds, pins=w.pins)


def scan_path(job: ScanJob) -> dict[str, Any]:
    """Scan the raw message stored at ``job.path``; returns ``ScanReport.to_dict()``."""
    if _worker is None:
        raise RuntimeError("scan worker not initialised")
    scanner = scanner_for(_worker, job)
    with open(job.path, "rb") as fh:
        raw = fh.read(scanner.cfg.extract.max_message_bytes + 1)
    report = scanner.scan_message(raw, job.settings.archive_passwords, job.deadline)
    return report.to_dict()
