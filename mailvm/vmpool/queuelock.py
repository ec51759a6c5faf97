"""One pool service per local job queue: an exclusive lock, and a sweep of a dead service's pool.

Two pool services popping one queue would each run what the other holds, on
twice the slots the host was sized for.  So the pool service holds an
exclusive ``flock`` on ``<queue>/consumer.lock`` for as long as it runs, and
writes into the file who it is: its pid and start time, and the pid and start
time of the ``mailvm serve`` that started it (0 for a ``mailvm pool`` of its
own).  The kernel drops the lock when the process dies, however it dies.

A second pool service waits for the lock (logging loudly) instead of sharing
the queue.  ``mailvm serve`` sweeps at start (:func:`sweep`): a lock holder that
was started by a ``mailvm serve`` which is gone (killed; the holder somehow
outlived it) is a leftover and is killed; a ``mailvm pool`` that an
administrator runs on its own is never touched, the new pool waits for it.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from mailvm.procfs import is_gone, start_ticks

log = logging.getLogger(__name__)

#: how often a waiting pool service tries the lock again, and says so in the log
RETRY_S = 1.0
LOG_EVERY_S = 30.0
KILL_WAIT_S = 10.0


@dataclass(frozen=True)
class Holder:
    """Who holds (or last held) a queue's lock, as written in the lock file."""

    pid: int
    start: int | None
    supervisor: int  # pid of the mailvm serve that started it; 0 for a mailvm pool of its own
    supervisor_start: int | None

    def is_alive(self) -> bool:
        return _same_process(self.pid, self.start)

    def orphaned(self) -> bool:
        """Started by a ``mailvm serve`` that no longer exists."""
        return self.supervisor > 0 and not _same_process(self.supervisor, self.supervisor_start)


def _same_process(pid: int, start: int | None) -> bool:
    return pid > 0 and not is_gone(pid) and (start is None or start_ticks(pid) == start)


class QueueLock:
    """The exclusive consumer lock of one queue (held until :meth:`release` or process exit)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._fd: int | None = None

    def try_acquire(self, supervisor: int = 0) -> bool:
        """Take the lock without waiting; on success write who holds it."""
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                return False
            raise
        me = {"pid": os.getpid(), "start": start_ticks(os.getpid()), "supervisor": supervisor,
              "supervisor_start": start_ticks(supervisor) if supervisor > 0 else None}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(me).encode(), 0)
        self._fd = fd
        return True

    def acquire(self, stop: threading.Event, supervisor: int = 0) -> bool:
        """Wait for the lock until ``stop`` is set; False when stopped first.

        While another pool service holds it, say so loudly (two pools never share a queue).
        """
        last_log = 0.0
        while not stop.is_set():
            if self.try_acquire(supervisor):
                return True
            now = time.monotonic()
            if now - last_log >= LOG_EVERY_S:
                last_log = now
                holder = read_holder(self.path)
                log.critical("job queue %s is served by another pool service (pid %s); waiting for it to end, "
                             "two pools never share one queue", self.path.parent, holder.pid if holder else "?")
            stop.wait(RETRY_S)
        return False

    def release(self) -> None:
        if self._fd is not None:
            try:
                fcntl.flock(self._fd, fcntl.LOCK_UN)
            finally:
                os.close(self._fd)
                self._fd = None


def read_holder(path: str | os.PathLike[str]) -> Holder | None:
    """The holder the lock file names (None when there is none or it is unreadable)."""
    try:
        data = json.loads(Path(path).read_text())
        return Holder(int(data["pid"]), data.get("start"), int(data.get("supervisor") or 0),
                      data.get("supervisor_start"))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def sweep(path: str | os.PathLike[str], wait_s: float = KILL_WAIT_S) -> int | None:
    """Kill a leftover pool service that still holds the queue lock after its ``mailvm serve`` died.

    Returns the pid killed, or None.  The lock must really be held (checked by trying
    it), and the pid and start time written by the holder must still match a live
    process, so neither a free lock nor a reused pid is ever hit.
    """
    probe = QueueLock(path)
    if not Path(path).exists():
        return None
    if probe.try_acquire():
        probe.release()
        return None
    holder = read_holder(path)
    if holder is None or not holder.is_alive() or not holder.orphaned():
        return None
    log.error("pool service pid %d still serves %s after its mailvm serve (pid %d) died: killing it",
              holder.pid, Path(path).parent, holder.supervisor)
    try:
        fd = os.pidfd_open(holder.pid)
    except OSError:
        return None
    try:
        if start_ticks(holder.pid) != holder.start:
            return None
        signal.pidfd_send_signal(fd, signal.SIGKILL)
    except OSError:
        return None
    finally:
        os.close(fd)
    end = time.monotonic() + wait_s
    while time.monotonic() < end:
        if probe.try_acquire():
            probe.release()
            break
        time.sleep(0.05)
    return holder.pid
