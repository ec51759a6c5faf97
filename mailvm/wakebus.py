"""Cross-process wake-ups on one host: "look again now", instead of a sleep loop.

The local scanned table (diskcache/SQLite) is shared by processes that cannot
share a condition variable: the scan workers wait for verdicts that the pool
service publishes.  Each process that waits binds one UNIX datagram socket in
the bus directory (``<dir>/<pid>-<random>.sock``); a process that changes an
entry sends the entry's key to every socket there.  The receiving thread wakes
that process's waiters of that key.

A wake-up is a hint, never the truth: the waiter reads the table again, and it
still re-reads on a slow fallback timer, so a lost datagram costs latency, never
a verdict.  Sending never blocks (``MSG_DONTWAIT``); a socket whose process is
gone (``ECONNREFUSED``) is removed by the sender.  The directory is the table's,
so the same group permissions apply (mailvm.privilege).

Standard library only: a UNIX datagram socket per waiting process is the
cheapest primitive with a blocking receive (no idle CPU) that works between
processes of different users sharing a group; no library wraps this.
"""

from __future__ import annotations

import errno
import logging
import os
import secrets
import socket
import threading
from pathlib import Path
from typing import Callable

log = logging.getLogger(__name__)

#: sockets a notification is sent to at most (one per waiting process: workers, pool, mvctl)
MAX_LISTENERS = 256
MAX_TOPIC = 128
SUFFIX = ".sock"


class WakeBus:
    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.dir = Path(directory)
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self._path: Path | None = None
        self._callback: Callable[[str], None] | None = None
        self._pid = 0
        self._out: socket.socket | None = None
        self._pid_out = 0

    # -- listening -----------------------------------------------------------
    def listen(self, callback: Callable[[str], None]) -> bool:
        """Start receiving (once per process); ``callback(topic)`` runs in the receiving thread.
        False when the bus cannot be used here (the caller keeps its fallback timer)."""
        with self._lock:
            if self._sock is not None and self._pid == os.getpid():
                return True
            try:
                self.dir.mkdir(parents=True, exist_ok=True)
                path = self.dir / f"{os.getpid()}-{secrets.token_hex(4)}{SUFFIX}"
                s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                s.bind(str(path))
                os.chmod(path, 0o660)  # the other side may run as another user of the same group
            except OSError as exc:
                log.debug("wake bus %s unavailable: %s", self.dir, exc)
                return False
            self._sock, self._path, self._callback, self._pid = s, path, callback, os.getpid()
        threading.Thread(target=self._receive, args=(s,), name="mailvm-wakebus", daemon=True).start()
        return True

    def _receive(self, s: socket.socket) -> None:
        while True:
            try:
                data = s.recv(MAX_TOPIC)
            except OSError:
                return  # closed
            if self._sock is not s:
                return  # closed (shutdown wakes the receive with nothing)
            cb = self._callback
            if cb is not None and data:
                try:
                    cb(data.decode("ascii", "replace"))
                except Exception:  # a wake-up is a hint: never let one kill the thread
                    log.exception("wake bus callback failed")

    # -- sending -------------------------------------------------------------
    def notify(self, topic: str) -> int:
        """Send ``topic`` to every listener (this process's own included); returns how many got it."""
        data = topic.encode("ascii", "replace")[:MAX_TOPIC]
        try:
            entries = [e for e in os.scandir(self.dir) if e.name.endswith(SUFFIX)][:MAX_LISTENERS]
        except OSError:
            return 0
        with self._lock:
            if self._out is None or self._pid_out != os.getpid():
                self._out = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                self._pid_out = os.getpid()
            out = self._out
        sent = 0
        for e in entries:
            try:
                out.sendto(data, socket.MSG_DONTWAIT, e.path)
                sent += 1
            except OSError as exc:
                if exc.errno in (errno.ECONNREFUSED, errno.ENOENT):
                    _unlink_quietly(e.path)  # its process is gone
                # EAGAIN (a listener's queue is full: it has wake-ups to read anyway), EACCES: skip
        return sent

    def close(self) -> None:
        with self._lock:
            s, path, self._sock, self._path, self._callback = self._sock, self._path, None, None, None
            out, self._out = self._out, None
        for sock in (s, out):
            if sock is not None:
                try:
                    if sock is s:
                        sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                try:
                    sock.close()
                except OSError:
                    pass
        if path is not None:
            _unlink_quietly(str(path))


def _unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


__all__ = ["WakeBus"]
