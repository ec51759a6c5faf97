"""A small QMP client: JSON commands over a QEMU domain's unix monitor socket.

Only what the qemu backend needs: connect (with retries while QEMU creates
the socket), the capabilities handshake, ``execute(cmd, args, fds=...)``
(file descriptors travel with SCM_RIGHTS, for ``getfd``), and events kept in
a bounded list.  Replies are size-capped; QEMU is trusted less than the
host but more than the guest (it runs the guest's emulation), so a malformed
or oversized reply is an error, never a crash.
"""

from __future__ import annotations

import json
import logging
import socket
import time
from collections import deque
from typing import Any

log = logging.getLogger(__name__)

MAX_LINE = 1 << 20
MAX_EVENTS = 256


class QMPError(Exception):
    """QEMU answered with an error, closed the socket, or did not answer in time."""


class QMP:
    """One QMP connection.  Not thread-safe: one caller at a time (the slot's owner)."""

    def __init__(self, sock: socket.socket, timeout: float) -> None:
        self._sock = sock
        self._buf = b""
        self.timeout = timeout
        self.events: deque[dict[str, Any]] = deque(maxlen=MAX_EVENTS)
        self.greeting: dict[str, Any] = {}

    @classmethod
    def connect(cls, path: str, deadline: float, timeout: float = 10.0,
                alive: Any = None) -> "QMP":
        """Connect to ``path`` (retrying until it exists or ``deadline``), then negotiate capabilities."""
        while True:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
            try:
                s.connect(path)
                break
            except (FileNotFoundError, ConnectionRefusedError) as exc:
                s.close()
                if alive is not None and not alive():
                    raise QMPError(f"QEMU exited before its monitor socket {path} accepted") from None
                if time.monotonic() >= deadline:
                    raise QMPError(f"QMP socket {path}: {exc}") from None
                time.sleep(0.002)
        q = cls(s, timeout)
        try:
            q.greeting = q._read_message(time.monotonic() + timeout)
            if "QMP" not in q.greeting:
                raise QMPError(f"not a QMP greeting: {str(q.greeting)[:200]}")
            q.execute("qmp_capabilities")
        except BaseException:
            q.close()
            raise
        return q

    def close(self) -> None:
        try:
            self._sock.close()
        except OSError:
            pass

    def _read_message(self, deadline: float) -> dict[str, Any]:
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise QMPError("QMP: no answer in time")
            self._sock.settimeout(left)
            try:
                chunk = self._sock.recv(65536)
            except socket.timeout:
                raise QMPError("QMP: no answer in time") from None
            except OSError as exc:
                raise QMPError(f"QMP: {exc}") from None
            if not chunk:
                raise QMPError("QMP: QEMU closed the monitor")
            self._buf += chunk
            if len(self._buf) > MAX_LINE:
                raise QMPError("QMP: reply too long")
        line, _, self._buf = self._buf.partition(b"\n")
        try:
            msg = json.loads(line)
        except ValueError as exc:
            raise QMPError(f"QMP: bad JSON: {exc}") from None
        if not isinstance(msg, dict):
            raise QMPError("QMP: message is not an object")
        return msg

    def execute(self, cmd: str, args: dict[str, Any] | None = None, fds: list[int] | None = None,
                timeout: float | None = None) -> Any:
        """Run ``cmd``; its ``return`` value, or QMPError with QEMU's error description."""
        req: dict[str, Any] = {"execute": cmd}
        if args:
            req["arguments"] = args
        data = json.dumps(req).encode() + b"\n"
        try:
            self._sock.settimeout(timeout or self.timeout)
            if fds:
                socket.send_fds(self._sock, [data], fds)
            else:
                self._sock.sendall(data)
        except OSError as exc:
            raise QMPError(f"QMP {cmd}: {exc}") from None
        deadline = time.monotonic() + (timeout or self.timeout)
        while True:
            msg = self._read_message(deadline)
            if "event" in msg:
                self.events.append(msg)
                continue
            if "error" in msg:
                err = msg["error"]
                desc = err.get("desc") if isinstance(err, dict) else err
                raise QMPError(f"QMP {cmd}: {str(desc)[:500]}")
            if "return" in msg:
                return msg["return"]

    def wait_event(self, name: str, deadline: float, match: dict[str, Any] | None = None) -> dict[str, Any]:
        """The first event ``name`` (whose data contains ``match``) seen so far or arriving before ``deadline``."""
        def ok(ev: dict[str, Any]) -> bool:
            data = ev.get("data") or {}
            return ev.get("event") == name and all(data.get(k) == v for k, v in (match or {}).items())

        for ev in list(self.events):
            if ok(ev):
                self.events.remove(ev)
                return ev
        while True:
            ev = self._read_message(deadline)
            if ok(ev):
                return ev
            if "event" in ev:
                self.events.append(ev)

    def fileno(self) -> int:
        return self._sock.fileno()


def send_fd(qmp: QMP, name: str, fd: int) -> None:
    """``getfd``: hand QEMU a file descriptor under ``name`` (for ``fd:NAME`` migration URIs)."""
    qmp.execute("getfd", {"fdname": name}, fds=[fd])


__all__ = ["QMP", "QMPError", "send_fd"]
