"""Guest-side doorbells: how an idle agent sleeps until the host has put a job on its page.

The page itself carries the job; the doorbell only wakes the agent, so a lost
or extra ring is harmless (the agent always re-reads the page).  Three kinds,
chosen by a spec string (``--doorbell``) through the explicit registry
:data:`DOORBELLS`:

``fd:N``
    an inherited file descriptor (the read end of a pipe: the process
    backend).  A byte means "look at the page"; end-of-file means the host
    side is gone (``hung_up()``), and the agent exits.
``dev:PATH``
    a character device: ``/dev/vport0p1`` (virtio-console), ``/dev/ttyS1``
    (16550 serial; put in raw mode here).  Bytes wake the agent; a device
    reporting hang-up (a virtio port with no host side) is not an exit
    reason: the waiter falls back to polling the page until it recovers.
``poll:MIN[:MAX]``
    no doorbell: the agent polls the page, every MIN seconds for a second
    after each wake-up, then backing off geometrically to MAX (default
    ``min(0.05, 16*MIN)``, never below MIN).  Hand-over costs up to the
    current interval; idle cost falls with MAX.

Event doorbells block in ``poll(2)``: an idle agent costs nothing but its
heartbeat wake-ups.  Standard library only (runs inside the VM).
"""

from __future__ import annotations

import abc
import logging
import os
import select
import time
from typing import Callable

log = logging.getLogger(__name__)

#: how often a waiter with no usable event source looks at the page
FALLBACK_POLL_S = 0.01
#: the first second after a wake-up polls at the fastest interval
POLL_BURST_S = 1.0


class Doorbell(abc.ABC):
    """Blocks an idle agent until it is rung, the host hung up, or ``timeout`` passed."""

    @abc.abstractmethod
    def wait(self, timeout: float, pending: Callable[[], bool]) -> bool:
        """Sleep up to ``timeout`` s; True when rung or ``pending()`` (work on the page) became true."""

    def hung_up(self) -> bool:
        """Non-blocking: True once the host side of the doorbell is gone for good."""
        return False

    def close(self) -> None:
        pass


class FdDoorbell(Doorbell):
    """A readable file descriptor: a pipe (``fd:N``) or a character device (``dev:PATH``)."""

    def __init__(self, fd: int, eof_is_hangup: bool = True, label: str = "", writable: bool = False) -> None:
        self.fd = fd
        self.label = label or f"fd:{fd}"
        #: opened for writing too: the same device can ring the host back (``--answer bell``)
        self.writable = writable
        self._eof_is_hangup = eof_is_hangup
        self._hung_up = False
        self._degraded = False
        os.set_blocking(fd, False)
        os.set_inheritable(fd, False)  # the sample and its launcher must not get the doorbell
        self._poll = select.poll()
        self._poll.register(fd, select.POLLIN | select.POLLHUP | select.POLLERR)

    def _drain(self) -> bool:
        """Read every queued byte; True when something was read.  Records EOF."""
        got = False
        while True:
            try:
                chunk = os.read(self.fd, 4096)
            except BlockingIOError:
                return got
            except OSError as exc:
                log.debug("doorbell %s read failed: %s", self.label, exc)
                self._on_eof()
                return got
            if not chunk:
                self._on_eof()
                return got
            got = True
            if len(chunk) < 4096:
                return got  # queue emptied: no second read (its EAGAIN costs an exception)

    def _on_eof(self) -> None:
        if self._eof_is_hangup:
            self._hung_up = True
        elif not self._degraded:
            self._degraded = True
            log.warning("doorbell %s reports hang-up; polling the page every %.0f ms instead",
                        self.label, FALLBACK_POLL_S * 1000)

    def wait(self, timeout: float, pending: Callable[[], bool]) -> bool:
        if self._hung_up:
            return False
        if self._degraded:
            return self._wait_degraded(timeout, pending)
        try:
            events = self._poll.poll(max(0, int(timeout * 1000)))
        except InterruptedError:  # pragma: no cover - PEP 475 retries; kept for clarity
            return False
        if not events:
            return False
        if pending():  # the usual wake-up: a job is there; the ring byte is drained at the next wait
            return True
        flags = 0
        for _fd, ev in events:
            flags |= ev
        rung = False
        if flags & select.POLLIN:
            rung = self._drain()
        if flags & (select.POLLHUP | select.POLLERR) and not rung:
            self._on_eof()
        return rung or pending()

    def _wait_degraded(self, timeout: float, pending: Callable[[], bool]) -> bool:
        end = time.monotonic() + timeout
        while True:
            if self._poll.poll(0) and self._drain():
                self._degraded = False  # bytes again: the device is back
                return True
            if pending():
                return True
            left = end - time.monotonic()
            if left <= 0:
                return False
            time.sleep(min(FALLBACK_POLL_S, left))

    def hung_up(self) -> bool:
        if not self._hung_up and self._eof_is_hangup:
            for _fd, ev in self._poll.poll(0):
                if ev & select.POLLIN:
                    self._drain()
                elif ev & (select.POLLHUP | select.POLLERR):
                    self._hung_up = True
        return self._hung_up

    def close(self) -> None:
        try:
            os.close(self.fd)
        except OSError:
            pass


class PollDoorbell(Doorbell):
    """No event source: adaptive polling of the page (see the module docstring)."""

    def __init__(self, min_s: float, max_s: float | None = None) -> None:
        if not 0 < min_s <= 10:
            raise ValueError(f"poll interval {min_s} s is not in (0, 10]")
        if max_s is None:
            max_s = max(min_s, min(0.05, 16 * min_s))
        if max_s < min_s:
            raise ValueError(f"poll MAX {max_s} is below MIN {min_s}")
        self.min_s = min_s
        self.max_s = max_s
        self._active_at = time.monotonic()

    def current_interval(self, now: float) -> float:
        idle = now - self._active_at - POLL_BURST_S
        if idle <= 0:
            return self.min_s
        # doubles every second of idleness past the burst
        return min(self.max_s, self.min_s * (2.0 ** min(60.0, idle)))

    def wait(self, timeout: float, pending: Callable[[], bool]) -> bool:
        end = time.monotonic() + timeout
        while True:
            if pending():
                self._active_at = time.monotonic()
                return True
            now = time.monotonic()
            left = end - now
            if left <= 0:
                return False
            time.sleep(min(self.current_interval(now), left))


def _open_fd(arg: str) -> Doorbell:
    fd = int(arg)
    if fd < 0:
        raise ValueError("fd must be >= 0")
    os.fstat(fd)  # EBADF now rather than at the first wait
    return FdDoorbell(fd, eof_is_hangup=True, label=f"fd:{fd}")


def _open_dev(arg: str) -> Doorbell:
    if not arg.startswith("/"):
        raise ValueError("dev: needs an absolute device path")
    flags = os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
    try:  # read-write: a virtio-serial port is opened once, and its writes reach the host (the answer bell)
        fd, writable = os.open(arg, os.O_RDWR | flags), True
    except OSError:
        fd, writable = os.open(arg, os.O_RDONLY | flags), False
    if os.isatty(fd):
        import termios
        import tty

        tty.setraw(fd, termios.TCSANOW)  # bytes as they come, no line discipline, no echo
    return FdDoorbell(fd, eof_is_hangup=False, label=f"dev:{arg}", writable=writable)


def _open_poll(arg: str) -> Doorbell:
    parts = arg.split(":")
    if len(parts) > 2:
        raise ValueError("poll: takes MIN or MIN:MAX seconds")
    lo = float(parts[0])
    hi = float(parts[1]) if len(parts) == 2 else None
    return PollDoorbell(lo, hi)


#: spec prefix -> opener; the explicit list of doorbell kinds
DOORBELLS: dict[str, Callable[[str], Doorbell]] = {
    "fd": _open_fd,
    "dev": _open_dev,
    "poll": _open_poll,
}


def open_doorbell(spec: str) -> Doorbell:
    """``fd:N`` | ``dev:PATH`` | ``poll:MIN[:MAX]`` -> a Doorbell; ValueError/OSError on a bad spec."""
    kind, sep, arg = spec.partition(":")
    if not sep or kind not in DOORBELLS:
        raise ValueError(f"doorbell {spec!r}: expected one of {', '.join(k + ':...' for k in DOORBELLS)}")
    return DOORBELLS[kind](arg)


class AnswerBell:
    """The doorbell back (guest -> host): one byte after each page change the host waits for
    (READY, RUNNING, DONE/FAILED), so the host blocks instead of looking at the page in a loop.

    ``fd:N``: an inherited pipe's write end (the process backend); ``dev:PATH``: a character
    device whose writes reach the host (a virtio-serial port).  Never blocks and never fails
    the job: a full pipe or a gone host only means the host looks at the page on its own timer.
    """

    def __init__(self, fd: int) -> None:
        self._fd: int | None = fd
        try:
            os.set_inheritable(fd, False)  # a sample the agent starts never gets the host's bell
            os.set_blocking(fd, False)
        except OSError:
            pass

    def ring(self) -> None:
        fd = self._fd
        if fd is None:
            return
        try:
            os.write(fd, b"\x01")
        except BlockingIOError:
            pass  # unread rings pile up: the host will look anyway
        except OSError as exc:  # no host side yet (a port not connected) or gone: it looks on its own timer
            log.debug("answer bell: %s; the host looks at the page on its own", exc)

    def close(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            try:
                os.close(fd)
            except OSError:
                pass


def open_answer(spec: str | None, doorbell: Doorbell | None = None) -> AnswerBell | None:
    """``fd:N`` | ``dev:PATH`` | ``bell`` (the doorbell's own device, opened read-write: a
    virtio-serial port cannot be opened twice) | None -> an AnswerBell (None: no doorbell back)."""
    if not spec:
        return None
    kind, sep, arg = spec.partition(":")
    if kind == "fd" and sep and arg.isdigit():
        return AnswerBell(int(arg))
    if kind == "dev" and sep and arg:
        return AnswerBell(os.open(arg, os.O_WRONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC))
    if spec == "bell":
        if isinstance(doorbell, FdDoorbell) and doorbell.writable:
            return AnswerBell(os.dup(doorbell.fd))
        log.info("answer bell: the doorbell %s cannot be written; the host looks at the page itself",
                 getattr(doorbell, "label", doorbell))
        return None
    raise ValueError(f"answer bell {spec!r}: expected fd:N, dev:PATH or bell")
