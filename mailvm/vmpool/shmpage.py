"""The host side of a slot's shared page: submit a job, wait for the guest, read its result.

Everything the guest writes is hostile.  :class:`HostPage` keeps its own
record of the job (the host owns ``seq``; it knows which states may follow
which) and checks every header it reads against it: magic, version, state
value, the legal transitions ``EMPTY -> READY -> (host) REQUEST -> RUNNING ->
DONE | FAILED``, ``ack_seq``, the agent's boot id, offsets and lengths
against the region, the result's size, JSON and schema.  Any violation raises
:class:`PageError`: the pool destroys such a slot.  Memory stays bounded:
nothing longer than the header or ``max_bytes`` is ever read.

The host never maps the page: it uses ``pread``/``pwrite`` on the file.  The
bytes are the same page-cache pages the agent (or QEMU's ``share=on``
NVDIMM backend) has mapped, but a guest that truncates the backing file can
only cause a short read (PageError), not a SIGBUS in the host process.  Each
``pwrite`` is a system call, which also orders the host's stores: data, then
offsets, then ``seq``, then ``state`` last.

Layout and constants: ``mailvm.guest.protocol`` (shared with the agent);
prose: ``docs/protocol.md``.
"""

from __future__ import annotations

import json
import math
import os
import select
import stat
import threading
import time
from typing import Any, Callable, Iterable

from mailvm.guest import protocol as P
from mailvm.verdict import VERDICTS, Finding
from mailvm.vmpool.evidence import check_screenshots

#: result limits beyond the byte cap
MAX_FINDINGS = 500
MAX_LOG_ENTRIES = 2000
MAX_EVENTS = 2000
MAX_TEXT = 1000

#: wait_state(): spin this long, then sleep from SLEEP_MIN growing to SLEEP_FAST, later SLEEP_SLOW
SPIN_S = 0.0002
SLEEP_MIN = 0.00005
SLEEP_FAST = 0.001
SLEEP_SLOW = 0.005
FAST_PHASE_S = 0.25
#: with an answer descriptor, wait_state() blocks on it at most this long between looks at the
#: heartbeat, the deadline and whether the slot is alive
WAKE_CHECK_S = 0.5

_BOOT, _IDLE, _SUBMITTED, _RUNNING, _FINISHED = "boot", "idle", "submitted", "running", "finished"


class PageError(Exception):
    """The page is malformed or the guest broke the protocol: the slot must be destroyed."""


class RequestTooLarge(ValueError):
    """The job (file + options) does not fit this page: a property of the job, not of the slot."""


def _reject_constant(name: str) -> Any:
    raise ValueError(f"JSON constant {name} is not allowed")


def _text(value: Any, key: str, limit: int = MAX_TEXT, default: str = "") -> str:
    if value is None:
        return default
    if not isinstance(value, str):
        raise PageError(f"result.{key} must be a string, not {type(value).__name__}")
    return value[:limit]


def _finite(x: int | float) -> bool:
    """A number a float can hold (a JSON integer may have thousands of digits: OverflowError in isfinite)."""
    try:
        return math.isfinite(x)
    except OverflowError:
        return False


def _show(value: Any, limit: int = 40) -> str:
    """A guest's value, shortened for an error message (a huge integer by its size, not its digits)."""
    if isinstance(value, int) and value.bit_length() > 128:
        return f"<integer of {value.bit_length()} bits>"
    return str(value)[:limit]


def check_result(obj: Any) -> dict[str, Any]:
    """Validate a parsed result JSON from a guest; a normalised dict, or PageError.

    Required: ``schema`` (1), ``verdict`` (one of VERDICTS), ``score`` (int
    0-10), ``findings`` (list of Finding dicts; at most MAX_FINDINGS kept, the
    most severe).  Optional: ``log`` (list, str/dict entries kept, capped),
    ``duration_s`` (finite number >= 0), ``stopped`` (str or bool),
    ``launcher``, ``error`` (str), ``events`` (count >= 0, list or dict), ``truncated``
    (list of str), ``executed`` (bool, else None), ``execution`` (object of strings, else None) and
    ``screenshots`` (validated PNGs, see :mod:`mailvm.vmpool.evidence`).
    Unknown keys are dropped.
    """
    if not isinstance(obj, dict):
        raise PageError(f"result is a {type(obj).__name__}, not an object")
    schema = obj.get("schema")
    if isinstance(schema, bool) or schema != P.RESULT_SCHEMA:
        raise PageError(f"result.schema {schema!r} is not {P.RESULT_SCHEMA}")
    verdict = obj.get("verdict")
    if verdict not in VERDICTS:
        raise PageError(f"result.verdict {_show(verdict)!r} is not one of {VERDICTS}")
    score = obj.get("score")
    if isinstance(score, bool) or not isinstance(score, int) or not 0 <= score <= 10:
        raise PageError(f"result.score {_show(score)!r} is not an integer 0-10")
    raw_findings = obj.get("findings")
    if not isinstance(raw_findings, list):
        raise PageError("result.findings is not a list")
    try:
        findings = [Finding.from_dict(f) for f in raw_findings]
    except (ValueError, TypeError) as exc:
        raise PageError(f"result.findings: {exc}") from None
    if len(findings) > MAX_FINDINGS:
        findings = sorted(findings, key=lambda f: f.severity, reverse=True)[:MAX_FINDINGS]
    raw_log = obj.get("log", [])
    if not isinstance(raw_log, list):
        raise PageError("result.log is not a list")
    log_entries = [e for e in raw_log[:MAX_LOG_ENTRIES] if isinstance(e, (dict, str))]
    duration = obj.get("duration_s", 0.0)
    if isinstance(duration, bool) or not isinstance(duration, (int, float)) or not _finite(duration) or duration < 0:
        raise PageError(f"result.duration_s {_show(duration)!r} is not a finite number >= 0")
    stopped = obj.get("stopped")
    if not isinstance(stopped, (str, bool)) and stopped is not None:
        raise PageError("result.stopped must be a string or a boolean")
    events = obj.get("events", [])
    if isinstance(events, list):
        events = events[:MAX_EVENTS]
    elif isinstance(events, bool) or not isinstance(events, (int, dict)) or (isinstance(events, int) and events < 0):
        raise PageError("result.events must be a count, a list or an object")
    truncated = obj.get("truncated", [])
    if not isinstance(truncated, list):
        raise PageError("result.truncated must be a list")
    return {
        "schema": P.RESULT_SCHEMA,
        "verdict": verdict,
        "score": score,
        "findings": [f.to_dict() for f in findings],
        "log": log_entries,
        "duration_s": float(duration),
        "stopped": stopped[:200] if isinstance(stopped, str) else stopped,
        "launcher": _text(obj.get("launcher"), "launcher", 200),
        "events": events,
        "truncated": [str(t)[:40] for t in truncated[:20]],
        "error": _text(obj.get("error"), "error") or None,
        # contract C1: did the sample run, and what proved it (or why not)
        "executed": obj["executed"] if isinstance(obj.get("executed"), bool) else None,
        "execution": {k: str(v)[:300] for k, v in list(obj["execution"].items())[:8] if isinstance(k, str)}
        if isinstance(obj.get("execution"), dict) else None,
        # rendered pages' screenshots (validated PNGs; mailvm.vmpool.evidence stores them)
        "screenshots": check_screenshots(obj.get("screenshots")),
    }


class HostPage:
    """One slot's region, seen from the host.  Thread-safe; one job at a time."""

    def __init__(self, fd: int, path: str, size: int) -> None:
        self._fd = fd
        self.path = path
        self.size = size
        self._lock = threading.Lock()
        self._phase = _BOOT
        self._seq = 0
        self._final = -1
        self.boot_id = 0
        self.agent_pid = 0
        self._last_state = P.EMPTY

    # -- construction ------------------------------------------------------
    @staticmethod
    def _check_size(size: int) -> None:
        if size < P.MIN_REGION or size % P.DATA_ALIGN:
            raise ValueError(f"page size {size} must be >= {P.MIN_REGION} and a multiple of {P.DATA_ALIGN}")

    @classmethod
    def create(cls, path: str, size: int) -> "HostPage":
        """A new zeroed page file (``O_EXCL``, mode 0600), e.g. on /dev/shm."""
        cls._check_size(size)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            os.ftruncate(fd, size)
        except BaseException:
            os.close(fd)
            os.unlink(path)
            raise
        return cls(fd, path, size)

    @classmethod
    def attach(cls, path: str, size: int) -> "HostPage":
        """An existing page file (QEMU's NVDIMM backing file); must be a regular file of >= ``size`` bytes."""
        cls._check_size(size)
        fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode) or st.st_size < size:
                raise ValueError(f"{path}: not a regular file of at least {size} bytes")
        except BaseException:
            os.close(fd)
            raise
        return cls(fd, path, size)

    def close(self) -> None:
        with self._lock:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1

    def unlink(self) -> None:
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass

    def __enter__(self) -> "HostPage":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- raw access --------------------------------------------------------
    def _pread(self, length: int, off: int) -> bytes:
        if self._fd < 0:
            raise PageError("page is closed")
        try:
            data = os.pread(self._fd, length, off)
        except OSError as exc:
            raise PageError(f"reading the page failed: {exc}") from None
        if len(data) != length:
            raise PageError(f"short read at {off}: {len(data)} of {length} bytes (page file truncated?)")
        return data

    def _check_file_size(self) -> None:
        """The page file still spans the region (a guest may truncate it: the host would then write a job
        into a file the guest no longer maps; the slot is broken, not the job)."""
        try:
            size = os.fstat(self._fd).st_size
        except OSError as exc:
            raise PageError(f"page file: {exc}") from None
        if size < self.size:
            raise PageError(f"page file truncated to {size} of {self.size} bytes")

    def _pwrite(self, data: bytes | bytearray | memoryview, off: int) -> None:
        if self._fd < 0:
            raise PageError("page is closed")
        view = memoryview(data).cast("B")
        while view:
            n = os.pwrite(self._fd, view, off)
            view, off = view[n:], off + n

    # -- the state machine ---------------------------------------------------
    def _read(self) -> P.Header:
        """Read and validate the header against what the host knows; PageError on any violation."""
        with self._lock:
            h = P.unpack_header(self._pread(P.HEADER.size, 0))
            self._check(h)
            return h

    def _check(self, h: P.Header) -> None:
        phase, seq = self._phase, self._seq
        if h.magic == P.ZERO_MAGIC:
            # the agent has not published its header yet (or is half way through doing so)
            if phase == _BOOT and h.state == P.EMPTY:
                self._last_state = P.EMPTY
                return
            raise PageError(f"header magic is zero in phase {phase} (state {P.state_name(h.state)})")
        if h.magic != P.MAGIC:
            raise PageError(f"bad magic {h.magic!r}")
        if h.version != P.VERSION:
            raise PageError(f"protocol version {h.version}, expected {P.VERSION}")
        if h.state not in P.STATE_NAMES:
            raise PageError(f"illegal state value {h.state}")
        if h.seq != seq:
            raise PageError(f"seq is {h.seq}, the host wrote {seq}")
        if h.ack_seq > seq:
            raise PageError(f"ack_seq {h.ack_seq} is ahead of seq {seq}")
        st = h.state
        if phase == _BOOT:
            if st == P.EMPTY:
                pass
            elif st == P.READY:
                if h.ack_seq != seq:
                    raise PageError(f"READY with ack_seq {h.ack_seq} != seq {seq}")
                if h.boot_id == 0:
                    raise PageError("READY without a boot id")
                self.boot_id, self.agent_pid = h.boot_id, h.agent_pid
                self._phase = _IDLE
            else:
                raise PageError(f"state {P.state_name(st)} before the agent was READY")
        else:
            if h.boot_id != self.boot_id:
                raise PageError(f"boot id changed from {self.boot_id:016x} to {h.boot_id:016x}: agent restarted")
            if phase == _IDLE:
                if st != P.READY:
                    raise PageError(f"state {P.state_name(st)} while idle (no job submitted)")
            elif phase in (_SUBMITTED, _RUNNING):
                if st == P.REQUEST and phase == _SUBMITTED:
                    pass  # not taken yet, or half-way: the agent writes ack_seq, then RUNNING
                elif st in (P.RUNNING, P.DONE, P.FAILED):
                    if h.ack_seq != seq:
                        raise PageError(f"{P.state_name(st)} with ack_seq {h.ack_seq} != seq {seq}")
                    if st == P.RUNNING:
                        self._phase = _RUNNING
                    else:
                        self._phase, self._final = _FINISHED, st
                else:
                    raise PageError(f"state went from {P.state_name(self._last_state)} back to {P.state_name(st)}")
            elif phase == _FINISHED:
                if st != self._final or h.ack_seq != seq:
                    raise PageError(f"state changed after {P.state_name(self._final)} to {P.state_name(st)}")
        self._last_state = st

    # -- public API ------------------------------------------------------------
    def state(self) -> int:
        """The current state, validated (PageError on a malformed page or an illegal transition)."""
        return self._read().state

    def heartbeat(self) -> int:
        return self._read().heartbeat

    def max_request_bytes(self) -> int:
        """The largest file that always fits with any options (<= MAX_OPTIONS_BYTES)."""
        return self.size - P.HEADER_SIZE - P.MAX_OPTIONS_BYTES - P.MIN_RESULT_AREA - 2 * P.DATA_ALIGN

    def wait_ready(self, deadline: float, alive: Callable[[], bool] | None = None,
                   wake_fd: int | None = None) -> None:
        """Wait until the agent published READY; TimeoutError at ``deadline`` (monotonic), PageError otherwise."""
        st = self.wait_state({P.READY}, deadline, alive, wake_fd=wake_fd)
        if st != P.READY:  # pragma: no cover - a terminal state before READY is already a PageError
            raise PageError(f"agent reached {P.state_name(st)} instead of READY")

    def submit(self, data: bytes | bytearray | memoryview, name: str, options: dict) -> int:
        """Write a job and set REQUEST (last); returns its seq.

        Refuses (PageError) unless the page is READY; RequestTooLarge when the
        file and options do not fit, ValueError when options are not JSON.
        The caller rings the slot's doorbell afterwards.
        """
        try:
            opts = json.dumps(options, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode("utf-8")
        except (TypeError, ValueError) as exc:
            raise ValueError(f"options are not JSON-serialisable: {exc}") from None
        try:
            plan = P.plan_request(self.size, len(data), len(opts))
        except P.ProtocolError as exc:
            raise RequestTooLarge(str(exc)) from None
        with self._lock:
            h = P.unpack_header(self._pread(P.HEADER.size, 0))
            self._check(h)
            if self._phase != _IDLE:
                raise PageError(f"submit refused: page is {P.state_name(h.state)} ({self._phase})")
            self._check_file_size()
            seq = self._seq + 1
            self._pwrite(data, plan.request_off)
            self._pwrite(opts, plan.options_off)
            job = P.JOB_FIELDS.pack(plan.request_off, len(data), plan.options_off, len(opts), 0, 0)
            self._pwrite(job + P.encode_name(name), P.OFF_REQUEST_OFF)
            self._pwrite(P.U64.pack(seq), P.OFF_SEQ)
            self._seq, self._phase, self._last_state = seq, _SUBMITTED, P.REQUEST
            self._pwrite(P.U32.pack(P.REQUEST), P.OFF_STATE)
        return seq

    def recycle(self) -> None:
        """After DONE/FAILED and read_result(): hand the page back to a multi-job agent (READY).

        Slots are single-use; this exists for agents started without ``--once``.
        """
        with self._lock:
            h = P.unpack_header(self._pread(P.HEADER.size, 0))
            self._check(h)
            if self._phase != _FINISHED:
                raise PageError(f"recycle refused: page is {P.state_name(h.state)}")
            self._phase, self._last_state = _IDLE, P.READY
            self._pwrite(P.U32.pack(P.READY), P.OFF_STATE)

    def wait_state(
        self,
        wanted: Iterable[int],
        deadline: float,
        alive: Callable[[], bool] | None = None,
        heartbeat_timeout: float | None = None,
        wake_fd: int | None = None,
    ) -> int:
        """Wait until the state is in ``wanted`` (DONE and FAILED always end the wait); returns it.

        Spins ~0.2 ms; then, with ``wake_fd`` (the slot's answer descriptor: readable when the
        agent changed the page, :meth:`mailvm.vmpool.backends.base.Slot.answer_fd`), blocks on it,
        looking at the heartbeat, the deadline and ``alive()`` every :data:`WAKE_CHECK_S`; without
        one, sleeps from 50 us growing to 1 ms (5 ms after 0.25 s).  TimeoutError at ``deadline``
        (monotonic).  PageError on an illegal page, when the heartbeat has not changed for
        ``heartbeat_timeout`` s, or when ``alive()`` turns False before the wanted state.
        """
        wanted = frozenset(wanted)
        start = time.monotonic()
        hb_value: int | None = None
        hb_at = start
        delay = SLEEP_MIN
        while True:
            h = self._read()
            if h.state in wanted or h.state in P.TERMINAL:
                return h.state
            now = time.monotonic()
            if h.heartbeat != hb_value:
                hb_value, hb_at = h.heartbeat, now
            elif heartbeat_timeout is not None and now - hb_at > heartbeat_timeout:
                raise PageError(f"heartbeat stuck at {hb_value} for {now - hb_at:.1f} s in {P.state_name(h.state)}")
            elapsed = now - start
            if alive is not None and elapsed >= SPIN_S and not alive():
                h = self._read()  # it may have answered just before exiting (a --once agent does)
                if h.state in wanted or h.state in P.TERMINAL:
                    return h.state
                raise PageError(f"slot died with the page in {P.state_name(h.state)}")
            if now >= deadline:
                raise TimeoutError(f"page still {P.state_name(h.state)} at the deadline")
            if elapsed < SPIN_S:
                continue
            if wake_fd is not None:
                if not _wait_answer(wake_fd, min(WAKE_CHECK_S, max(0.0, deadline - now))):
                    wake_fd = None  # the agent's end is closed (it exited): alive() says the rest
                continue
            cap = SLEEP_FAST if elapsed < FAST_PHASE_S else SLEEP_SLOW
            time.sleep(min(delay, max(0.0, deadline - now)))
            delay = min(delay * 1.5, cap)

    def read_result(self, max_bytes: int) -> dict[str, Any]:
        """The guest's result after DONE/FAILED: bounds-, size-, JSON- and schema-checked.

        Returns :func:`check_result`'s dict plus ``failed`` (True for FAILED).
        """
        h = self._read()
        if self._phase != _FINISHED:
            raise PageError(f"no result: page is {P.state_name(h.state)}")
        if not P.span_ok(h.result_off, h.result_len, self.size):
            raise PageError(f"result span {h.result_off}+{h.result_len} outside the data area")
        if h.result_len == 0:
            raise PageError("empty result")
        if h.result_len > max_bytes:
            raise PageError(f"result of {h.result_len} bytes exceeds the cap of {max_bytes}")
        raw = self._pread(h.result_len, h.result_off)
        try:
            obj = json.loads(raw.decode("utf-8"), parse_constant=_reject_constant)
        except (UnicodeDecodeError, ValueError, RecursionError) as exc:
            raise PageError(f"result is not valid JSON: {str(exc)[:200]}") from None
        result = check_result(obj)
        result["failed"] = h.state == P.FAILED
        return result


__all__ = ["HostPage", "PageError", "RequestTooLarge", "check_result"]


def _wait_answer(fd: int, timeout: float) -> bool:
    """Block until the agent rings back on ``fd`` (the bytes are drained) or ``timeout`` passes.
    False when the other end is closed (or the descriptor is unusable): stop waiting on it."""
    try:
        readable, _, _ = select.select([fd], [], [], timeout)
        if not readable:
            return True
        data = os.read(fd, 4096)
    except BlockingIOError:
        return True  # another waiter drained it first
    except (OSError, ValueError):
        return False
    return bool(data)
