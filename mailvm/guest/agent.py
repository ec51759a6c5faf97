"""The guest agent: waits on its shared page, runs each job through a runner, writes the result.

Runs inside every slot (a VM clone, or a sandboxed process for the process
backend)::

    python3 -m mailvm.guest.agent --page PATH [--offset N] --size N \\
        --doorbell fd:N|dev:PATH|poll:MIN[:MAX] [--answer fd:N|dev:PATH|bell] [--once] [--workdir DIR]

:func:`serve` is the whole protocol loop and takes the runner as an argument
(the CLI passes ``mailvm.guest.detonate.detonate``); tests pass their own.
Loop: publish READY (with a random boot id), then sleep on the doorbell,
waking at least every ``heartbeat_s`` to bump the heartbeat.  On REQUEST:
acknowledge at once (``ack_seq``, RUNNING: the hand-over is two field reads
and two stores after the wake-up, see ``GuestPage.take``), bounds-check the
request (FAILED if it is bad), write the file
into a fresh directory, run it while a thread keeps the heartbeat going, and
write the result JSON (shrunk to fit: log entries go first, then events,
finding details, low-severity findings) and DONE; FAILED with an error result
when the agent itself could not do the job.  If the header disappears (a
flash clone restored onto a fresh, zeroed page), READY is published again.

Standard library only (runs inside the VM).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import secrets
import shutil
import sys
import tempfile
import threading
import time
import unicodedata
from typing import Any, Callable

from mailvm.guest import protocol as P
from mailvm.guest.doorbell import AnswerBell, Doorbell, open_answer, open_doorbell
from mailvm.guest.page import GuestPage

log = logging.getLogger(__name__)

AGENT_VERSION = "1"
HEARTBEAT_S = 0.5
MAX_SAFE_NAME = 200

#: runner(sample_path, options, workdir, should_stop) -> result dict (detonate()'s signature)
Runner = Callable[[str, dict, str, Callable[[], bool]], dict]


# -- names and results -----------------------------------------------------
def safe_name(name: str) -> str:
    """A file name from an email made safe for the guest's file system: one component, printable."""
    base = name.replace("\\", "/").rsplit("/", 1)[-1]
    base = "".join(ch for ch in base if ch.isprintable() and unicodedata.category(ch) != "Cf")
    base = base.strip().lstrip("-")
    if base in ("", ".", ".."):
        return "sample"
    raw = base.encode("utf-8")
    if len(raw) > MAX_SAFE_NAME:
        stem, dot, ext = base.rpartition(".")
        ext = ext if dot and len(ext.encode("utf-8")) <= 16 else ""
        keep = MAX_SAFE_NAME - len(ext.encode("utf-8")) - 1
        head = (stem or base).encode("utf-8")[:keep].decode("utf-8", "ignore")
        base = f"{head}.{ext}" if ext else head
    return base


def error_result(finding_id: str, detail: str) -> dict[str, Any]:
    """The result the agent writes with FAILED: schema-valid, verdict ``error``."""
    detail = detail[:400]
    return {
        "schema": P.RESULT_SCHEMA,
        "verdict": "error",
        "score": 0,
        "findings": [{"id": finding_id, "severity": 0, "detail": detail, "source": "agent"}],
        "log": [],
        "duration_s": 0.0,
        "stopped": "error",
        "launcher": "",
        "events": [],
        "error": detail,
    }


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False, allow_nan=False, default=str).encode("utf-8")


def _fit_list(result: dict, key: str, cap: int) -> bytes | None:
    """Keep the longest prefix of ``result[key]`` that lets the whole result fit ``cap``."""
    items = result.get(key)
    if not isinstance(items, list) or not items:
        return None
    lo, hi, best = 0, len(items), None
    while lo <= hi:
        mid = (lo + hi) // 2
        data = _dumps({**result, key: items[:mid]})
        if len(data) <= cap:
            best, lo = (mid, data), mid + 1
        else:
            hi = mid - 1
    if best is None:
        return None
    result[key] = items[: best[0]]
    return best[1]


def _severity(finding: dict) -> int:
    sev = finding.get("severity")
    return sev if isinstance(sev, int) else 0


def encode_result(result: dict[str, Any], cap: int) -> bytes:
    """JSON for the page, at most ``cap`` bytes.

    Shrinks in order of least value: log entries, events, finding details,
    then the lowest-severity findings; ``truncated`` lists what was cut.
    Raises ValueError when the result cannot be encoded at all or ``cap`` is
    too small even for an empty result.
    """
    result = dict(result)
    data = _dumps(result)
    if len(data) <= cap:
        return data
    cut: list[str] = []
    result["truncated"] = cut
    for key in ("screenshots", "log", "events"):
        value = result.get(key)
        if not isinstance(value, (list, dict)) or not value:
            continue  # absent, empty, or a plain count: nothing to gain
        cut.append(key)
        if isinstance(value, list):
            fitted = _fit_list(result, key, cap)
            if fitted is not None:
                return fitted
        result[key] = type(value)()
    findings = result.get("findings")
    findings = [f for f in findings if isinstance(f, dict)] if isinstance(findings, list) else []
    cut.append("details")
    for limit in (100, 0):
        findings = [{**f, "detail": str(f.get("detail", ""))[:limit]} for f in findings]
        result["findings"] = findings
        data = _dumps(result)
        if len(data) <= cap:
            return data
    cut.append("findings")
    result["findings"] = sorted(findings, key=_severity, reverse=True)
    fitted = _fit_list(result, "findings", cap)
    if fitted is not None:
        return fitted
    raise ValueError(f"result does not fit {cap} bytes even without log, events and findings")


# -- the job ---------------------------------------------------------------
class Heartbeat:
    """The heartbeat counter; ``start()`` keeps it going from a thread while a job runs."""

    def __init__(self, page: GuestPage, interval: float) -> None:
        self.page = page
        self.interval = interval
        self.value = 0
        self._lock = threading.Lock()

    def beat(self) -> None:
        with self._lock:
            self.value += 1
            self.page.beat(self.value)

    def _run(self, stop: threading.Event) -> None:
        while not stop.wait(self.interval):
            self.beat()

    def start(self) -> tuple[threading.Thread, threading.Event]:
        stop = threading.Event()
        t = threading.Thread(target=self._run, args=(stop,), name="heartbeat", daemon=True)
        t.start()
        return t, stop


def _request_problem(h: P.Header, size: int) -> str | None:
    if not P.span_ok(h.request_off, h.request_len, size):
        return f"request span {h.request_off}+{h.request_len} outside the region"
    if not P.span_ok(h.options_off, h.options_len, size):
        return f"options span {h.options_off}+{h.options_len} outside the region"
    if h.options_len > P.MAX_OPTIONS_BYTES:
        return f"options of {h.options_len} bytes exceed {P.MAX_OPTIONS_BYTES}"
    return None


def _result_area(h: P.Header, size: int) -> tuple[int, int]:
    """(offset, room) for the result; the start of the data area when the request spans are bogus."""
    off = P.result_offset(h.request_off, h.request_len, h.options_off, h.options_len)
    if off >= size or size - off < 1024:
        off = P.HEADER_SIZE
    return off, size - off


def _result_cap(options: dict, room: int) -> int:
    want = options.get("max_result_bytes")
    if isinstance(want, int) and not isinstance(want, bool) and want >= 1024:
        return min(room, want)
    return room


def run_job(page: GuestPage, seq: int, runner: Runner, workdir: str, hb: Heartbeat,
            should_stop: Callable[[], bool]) -> int:
    """Take job ``seq``, already acknowledged (RUNNING, see ``GuestPage.take``), to DONE/FAILED.

    Returns the final state.  Never raises.
    """
    h = page.header()
    res_off, room = _result_area(h, page.size)
    problem = _request_problem(h, page.size)
    if h.seq != seq:
        problem = f"the host changed the job ({seq} -> {h.seq}) after it was acknowledged"
    if problem:
        log.warning("job %d refused: %s", seq, problem)
        return _finish(page, seq, res_off, room, error_result("agent_bad_request", problem), P.FAILED)
    t0 = time.monotonic()
    thread, stop_beat = hb.start()
    jobdir = None
    options: dict = {}
    try:
        data = page.read_span(h.request_off, h.request_len)
        raw_opts = page.read_span(h.options_off, h.options_len) if h.options_len else b"{}"
        options = json.loads(raw_opts.decode("utf-8"))
        if not isinstance(options, dict):
            raise P.ProtocolError("options JSON is not an object")
        os.makedirs(workdir, mode=0o700, exist_ok=True)
        jobdir = tempfile.mkdtemp(prefix=f"job{seq}-", dir=workdir)
        sample_dir = os.path.join(jobdir, "sample")
        run_dir = os.path.join(jobdir, "work")
        os.mkdir(sample_dir, 0o755)
        os.mkdir(run_dir, 0o755)
        sample = os.path.join(sample_dir, safe_name(h.name))
        fd = os.open(sample, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        del data
        log.info("job %d: %s (%d bytes)", seq, os.path.basename(sample), h.request_len)
        result = runner(sample, options, run_dir, should_stop)
        if not isinstance(result, dict):
            raise TypeError(f"runner returned {type(result).__name__}, not a dict")
        state = P.DONE
    except Exception as exc:  # the agent must always answer: errors become the result
        log.exception("job %d failed", seq)
        result, state = error_result("agent_error", f"{type(exc).__name__}: {exc}"), P.FAILED
    finally:
        stop_beat.set()
        thread.join()
        if jobdir:
            shutil.rmtree(jobdir, ignore_errors=True)
    log.info("job %d: %s in %.3f s", seq, P.state_name(state), time.monotonic() - t0)
    return _finish(page, seq, res_off, _result_cap(options, room), result, state)


def _finish(page: GuestPage, seq: int, off: int, cap: int, result: dict, state: int) -> int:
    try:
        payload = encode_result(result, cap)
    except (ValueError, TypeError, RecursionError) as exc:
        log.error("job %d: result not encodable: %s", seq, exc)
        payload, state = encode_result(error_result("agent_result_unencodable", str(exc)), cap), P.FAILED
    page.finish(seq, off, payload, state)
    return state


# -- the loop --------------------------------------------------------------
def serve(page: GuestPage, doorbell: Doorbell, runner: Runner, workdir: str, *, once: bool = True,
          heartbeat_s: float = HEARTBEAT_S, stop: threading.Event | None = None,
          answer: AnswerBell | None = None) -> int:
    """Serve jobs on ``page`` until ``once`` job is done, the doorbell hangs up or ``stop`` is set.

    Returns the number of jobs served.  Blocks in the doorbell while idle.  ``answer`` rings the
    host back after READY, RUNNING and DONE/FAILED are on the page.
    """
    ring_back = answer.ring if answer is not None else (lambda: None)
    stop = stop or threading.Event()
    boot_id = secrets.randbits(64) or 1
    hb = Heartbeat(page, heartbeat_s)

    def publish() -> int:
        # the last seq seen is read *before* READY goes out: read after, it could already be
        # the seq of a job the host submitted the moment it saw READY, and that job would be
        # taken for an old one and never run (seen under load: "page still REQUEST")
        seen = page.header().seq
        page.publish_ready(boot_id, os.getpid(), hb.value)
        ring_back()
        return seen

    def should_stop() -> bool:
        return stop.is_set() or doorbell.hung_up()

    last_seq = publish()
    log.info("agent ready: boot id %016x, page %s (%d bytes)", boot_id, page.path, page.size)
    jobs = 0
    next_beat = time.monotonic() + heartbeat_s
    while not stop.is_set():
        seq = page.take(last_seq)  # first thing after every wake-up: the hand-over ends here
        if seq is not None:
            ring_back()  # RUNNING is on the page
            last_seq = seq
            run_job(page, seq, runner, workdir, hb, should_stop)
            ring_back()  # DONE or FAILED is on the page
            jobs += 1
            if once:
                break
            continue
        h = page.header()
        if h.magic != P.MAGIC or h.state == P.EMPTY:
            log.info("page header gone (fresh page); publishing READY again")
            last_seq = publish()
            continue
        if doorbell.hung_up():
            log.info("doorbell hung up: the host is gone; exiting")
            break
        now = time.monotonic()
        if now >= next_beat:
            hb.beat()
            next_beat = now + heartbeat_s
        doorbell.wait(next_beat - now, page.needs_attention)
    return jobs


# -- CLI -------------------------------------------------------------------
def _load_detonate() -> Runner:
    """The real runner; an import failure turns every job into a FAILED result instead of a crash."""
    try:
        from mailvm.guest.detonate import detonate
    except Exception as exc:  # noqa: BLE001 - reported per job as data
        log.error("cannot import the detonation runner: %s", exc)
        reason = f"{type(exc).__name__}: {exc}"

        def unavailable(sample: str, options: dict, workdir: str, should_stop: Callable[[], bool]) -> dict:
            raise RuntimeError(f"detonation runner unavailable: {reason}")

        return unavailable
    return detonate


def _size(text: str) -> int:
    value = int(text, 0)
    if value < P.MIN_REGION:
        raise argparse.ArgumentTypeError(f"at least {P.MIN_REGION}")
    return value


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python3 -m mailvm.guest.agent", description=__doc__.split("\n")[0])
    ap.add_argument("--page", required=True, help="page file, /dev/pmemN or /dev/mem")
    ap.add_argument("--offset", type=lambda s: int(s, 0), default=0, help="byte offset of the region in --page")
    ap.add_argument("--size", type=_size, required=True, help="region size in bytes")
    ap.add_argument("--doorbell", required=True, help="fd:N | dev:PATH | poll:MIN[:MAX]")
    ap.add_argument("--answer", default=None,
                    help="fd:N | dev:PATH | bell (the doorbell's device): rung after each page change the "
                         "host waits for (default: none)")
    ap.add_argument("--once", action="store_true", help="exit after one job (slots are single-use)")
    ap.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "mailvm-agent"))
    ap.add_argument("--heartbeat", type=float, default=HEARTBEAT_S, help="heartbeat interval, seconds")
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, stream=sys.stderr,
                        format="%(asctime)s agent[%(process)d] %(levelname)s %(message)s")
    if not 0.05 <= args.heartbeat <= 60:
        ap.error("--heartbeat must be between 0.05 and 60 seconds")
    runner = _load_detonate()  # imported before READY: its cost stays off the hand-over path
    page = GuestPage.open(args.page, args.size, args.offset)
    doorbell = open_doorbell(args.doorbell)
    answer = open_answer(args.answer, doorbell)
    try:
        serve(page, doorbell, runner, args.workdir, once=args.once, heartbeat_s=args.heartbeat, answer=answer)
    finally:
        doorbell.close()
        if answer is not None:
            answer.close()
        page.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
