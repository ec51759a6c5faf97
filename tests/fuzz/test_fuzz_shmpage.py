"""Fuzzing the host side of the shared page (mailvm.vmpool.shmpage) with a hostile guest.

The "guest" here is the test: between the host's calls it writes whatever it likes on the page
(whole headers with chosen or random fields, raw bytes at any offset, result JSON of any shape at any
offset and length, a truncated or grown page file).  Properties:

* every host call returns, or raises PageError / TimeoutError (and submit RequestTooLarge); nothing else;
* a result that is returned satisfies the documented bounds and is JSON-serialisable (the pool stores it);
* reading never goes beyond ``max_bytes`` (the cap is checked before the read);
* the host writes only its own fields: state, seq, the job fields and name, and the request and
  options areas of a job it submits; never the result area, never past the region;
* each call ends in bounded time.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from fuzzkit import budget, check_memory, count, count_step, keep_on_failure
from mailvm.guest import protocol as P
from mailvm.verdict import VERDICTS
from mailvm.vmpool import shmpage
from mailvm.vmpool.shmpage import HostPage, PageError, RequestTooLarge, check_result

SIZE = P.MIN_REGION + 4 * P.DATA_ALIGN
BOOT_ID = 0xB007
ALLOWED = (PageError, TimeoutError)

# -- JSON values a guest can produce (what json.loads can return) ------------------------------------

json_scalars = st.one_of(
    st.none(), st.booleans(),
    st.integers(-(2**63), 2**64),
    st.integers(10**308, 10**4000) | st.integers(-(10**4000), -(10**308)),  # beyond a float's range, still JSON
    st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=60),
    st.sampled_from(list(VERDICTS) + ["", "CLEAN", "malicious\x00"]),
)
json_values = st.recursive(
    json_scalars,
    lambda kids: st.lists(kids, max_size=6) | st.dictionaries(st.text(max_size=12), kids, max_size=6),
    max_leaves=25,
)
findings = st.lists(
    st.one_of(
        st.fixed_dictionaries({"id": st.text(max_size=20), "severity": st.integers(-2, 12) | json_scalars},
                              optional={"detail": json_values, "source": json_values}),
        json_values,
    ),
    max_size=8,
)
#: hostile values per key, drawn on top of a valid result so that validation reaches every key
OVERRIDES = {
    "schema": st.just(1) | json_scalars,
    "verdict": st.sampled_from(list(VERDICTS)) | json_scalars,
    "score": st.integers(0, 10) | json_scalars,
    "findings": findings | json_values,
    "log": st.lists(json_values, max_size=5) | json_values,
    "duration_s": st.floats(0, 1e6) | json_scalars,
    "stopped": st.text(max_size=30) | json_values,
    "launcher": st.text(max_size=30) | json_values,
    "error": st.text(max_size=30) | json_values,
    "events": st.integers(0, 100) | json_values,
    "truncated": st.lists(json_values, max_size=4) | json_values,
    "executed": st.booleans() | json_values,
    "execution": st.dictionaries(st.text(max_size=10), json_values, max_size=10) | json_values,
    "extra": json_values,
}
VALID = {"schema": 1, "verdict": "clean", "score": 0, "findings": [], "log": [], "duration_s": 0.5,
         "stopped": "exited", "launcher": "sh", "events": 3, "executed": True,
         "execution": {"launcher": "sh", "proof": "exec seen"}}


def _with(overrides: dict, drop: list[str]) -> dict:
    out = {**VALID, **overrides}
    for k in drop:
        out.pop(k, None)
    return out


results = st.one_of(
    # a valid result with a few keys replaced by anything a guest could write, or missing
    st.builds(_with, st.fixed_dictionaries({}, optional=OVERRIDES), st.lists(st.sampled_from(sorted(VALID)), max_size=2)),
    # keys present or not, any values
    st.fixed_dictionaries({}, optional=OVERRIDES),
)


def assert_result_shape(r: dict) -> None:
    assert r["schema"] == P.RESULT_SCHEMA and r["verdict"] in VERDICTS
    assert isinstance(r["score"], int) and not isinstance(r["score"], bool) and 0 <= r["score"] <= 10
    assert len(r["findings"]) <= shmpage.MAX_FINDINGS
    for f in r["findings"]:
        assert isinstance(f["id"], str) and f["id"] and 0 <= f["severity"] <= 10
    assert len(r["log"]) <= shmpage.MAX_LOG_ENTRIES
    assert isinstance(r["duration_s"], float) and math.isfinite(r["duration_s"]) and r["duration_s"] >= 0
    assert r["stopped"] is None or isinstance(r["stopped"], bool) or len(r["stopped"]) <= 200
    assert len(r["launcher"]) <= 200 and (r["error"] is None or len(r["error"]) <= shmpage.MAX_TEXT)
    assert len(r["truncated"]) <= 20 and all(len(t) <= 40 for t in r["truncated"])
    events = r["events"]
    assert (isinstance(events, list) and len(events) <= shmpage.MAX_EVENTS) or isinstance(events, dict) or (
        isinstance(events, int) and not isinstance(events, bool) and events >= 0)
    assert r["executed"] in (True, False, None)
    assert r["execution"] is None or (len(r["execution"]) <= 8 and all(len(v) <= 300 for v in r["execution"].values()))
    json.dumps(r, allow_nan=False)  # the pool stores and forwards it


@budget(600)
@given(results | json_values)
def test_check_result_returns_a_bounded_result_or_page_error(obj):
    count("shmpage.check_result")
    raw = json.dumps(obj).encode()
    with keep_on_failure("check_result", raw, ".json"):
        try:
            r = check_result(json.loads(raw))
        except PageError:
            return
        assert_result_shape(r)


# -- a hostile guest against a real HostPage -----------------------------------------------------------

u32 = st.sampled_from([0, 1, 2, 5, 6, 2**31, 2**32 - 1]) | st.integers(0, 2**32 - 1)
u64 = st.sampled_from([0, 1, 2, 2**63, 2**64 - 1]) | st.integers(0, 2**64 - 1)
offsets = st.sampled_from([0, P.HEADER_SIZE - 1, P.HEADER_SIZE, 2 * P.HEADER_SIZE, 3 * P.HEADER_SIZE, SIZE - 100,
                           SIZE - 1, SIZE, SIZE + 1]) | u64

header_write = st.fixed_dictionaries(
    {},
    optional={
        "magic": st.sampled_from([P.MAGIC, P.ZERO_MAGIC]) | st.binary(min_size=8, max_size=8),
        "version": st.just(P.VERSION) | u32,
        "state": st.integers(0, 5) | u32,
        "seq": st.sampled_from(["host", "host+1", "host-1"]) | u64,
        "ack_seq": st.sampled_from(["host", "host+1", "host-1"]) | u64,
        "heartbeat": u64,
        "result_off": offsets,
        "result_len": st.sampled_from([0, 1, 100, 4096, 1 << 20, 1 << 40]) | u64,
        "boot_id": st.just(BOOT_ID) | u64,
        "agent_pid": u32,
        "name_raw": st.binary(max_size=256),
    },
)

guest_action = st.one_of(
    st.tuples(st.just("header"), header_write),
    st.tuples(st.just("raw"), offsets, st.binary(min_size=1, max_size=64)),
    st.tuples(st.just("result"), st.one_of(results.map(lambda r: json.dumps(r).encode()), st.binary(max_size=200)),
              st.sampled_from(["planned", "header", "overlap_header", "past_end"]) | offsets),
    st.tuples(st.just("truncate"), st.sampled_from([0, 100, P.HEADER.size - 1, P.HEADER_SIZE, SIZE // 2, SIZE + 4096])),
)
host_action = st.one_of(
    st.tuples(st.just("state")),
    st.tuples(st.just("heartbeat")),
    st.tuples(st.just("wait"), st.booleans()),
    st.tuples(st.just("submit"), st.binary(max_size=64) | st.integers(0, SIZE).map(lambda n: b"x" * n),
              st.text(max_size=300), st.dictionaries(st.text(max_size=5), st.integers() | st.text(max_size=5), max_size=3)),
    st.tuples(st.just("read"), st.sampled_from([1, 100, 4096, 1 << 20])),
    st.tuples(st.just("recycle")),
)
script = st.lists(st.one_of(guest_action.map(lambda a: ("guest", a)), host_action.map(lambda a: ("host", a))),
                  min_size=1, max_size=14)


class HostileGuest:
    """Writes on the page file with pwrite, as a guest's stores would land there."""

    def __init__(self, path: str, host: HostPage):
        self.fd = os.open(path, os.O_RDWR)
        self.host = host

    def close(self) -> None:
        os.close(self.fd)

    def header(self) -> P.Header:
        raw = os.pread(self.fd, P.HEADER.size, 0)
        if len(raw) < P.HEADER.size:
            raw = raw.ljust(P.HEADER.size, b"\x00")
        return P.unpack_header(raw)

    def write_header(self, fields: dict) -> None:
        h = self.header()
        seq = self.host._seq
        values = dict(h.__dict__)
        values.update({"magic": P.MAGIC, "version": P.VERSION, "boot_id": BOOT_ID})
        for k, v in fields.items():
            if isinstance(v, str):
                v = {"host": seq, "host+1": seq + 1, "host-1": max(seq - 1, 0)}[v]
            values[k] = v
        values["name_raw"] = bytes(values["name_raw"]).ljust(P.NAME_BYTES, b"\x00")[: P.NAME_BYTES]
        os.pwrite(self.fd, P.pack_header(P.Header(**values)), 0)

    def act(self, action) -> None:
        kind = action[0]
        if kind == "header":
            self.write_header(action[1])
        elif kind == "raw":
            _, off, data = action
            if off < SIZE + 4096:
                os.pwrite(self.fd, data, off)
        elif kind == "result":
            _, payload, where = action
            h = self.header()
            if where == "planned":
                off = P.result_offset(h.request_off, h.request_len, h.options_off, h.options_len) \
                    if h.request_off < SIZE and h.options_off < SIZE else 2 * P.HEADER_SIZE
            elif where == "header":
                off = 0
            elif where == "overlap_header":
                off = P.HEADER_SIZE - 10
            elif where == "past_end":
                off = SIZE - len(payload) // 2
            else:
                off = where
            if off < SIZE:
                os.pwrite(self.fd, payload, off)
            self.write_header({"result_off": off, "result_len": len(payload)})
        elif kind == "truncate":
            os.ftruncate(self.fd, action[1])


def _changed(before: bytes, after: bytes) -> list[tuple[int, int]]:
    """[start, end) ranges where two snapshots differ (coarse: 64-byte blocks)."""
    out = []
    n = max(len(before), len(after))
    before, after = before.ljust(n, b"\x00"), after.ljust(n, b"\x00")  # a file's sparse growth reads as zeros
    for i in range(0, n, 64):
        if before[i : i + 64] != after[i : i + 64]:
            if out and out[-1][1] == i:
                out[-1] = (out[-1][0], i + 64)
            else:
                out.append((i, i + 64))
    return out


def _inside(ranges: list[tuple[int, int]], allowed: list[tuple[int, int]]) -> bool:
    def block_ok(b: int) -> bool:
        return any(lo <= b + 63 and b < hi for lo, hi in allowed)

    return all(block_ok(b) for s, e in ranges for b in range(s, e, 64))


def _snapshot(path: str) -> bytes:
    with open(path, "rb") as fh:
        return fh.read(SIZE + 8192)


def _run_host(page: HostPage, action, path: str) -> None:
    kind = action[0]
    before = _snapshot(path)
    t0 = time.monotonic()
    allowed_writes: list[tuple[int, int]] = []
    try:
        if kind == "state":
            assert 0 <= page.state() < 2**32
        elif kind == "heartbeat":
            assert 0 <= page.heartbeat() < 2**64
        elif kind == "wait":
            st_ = page.wait_state({P.READY, P.RUNNING}, time.monotonic() + 0.003, alive=lambda: action[1],
                                  heartbeat_timeout=0.002)
            assert st_ in P.STATE_NAMES
        elif kind == "submit":
            _, data, name, options = action
            allowed_writes = [(P.OFF_STATE, P.OFF_STATE + 4), (P.OFF_SEQ, P.OFF_SEQ + 8),
                              (P.OFF_REQUEST_OFF, P.OFF_NAME + P.NAME_BYTES)]
            try:
                plan = P.plan_request(page.size, len(data), len(json.dumps(options, ensure_ascii=False).encode()))
                allowed_writes += [(plan.request_off, plan.request_off + len(data)),
                                   (plan.options_off, plan.options_off + P.MAX_OPTIONS_BYTES)]
            except P.ProtocolError:
                pass
            try:
                seq = page.submit(data, name, options)
            except RequestTooLarge:
                pass
            else:
                assert seq == page._seq
        elif kind == "read":
            r = page.read_result(action[1])
            assert_result_shape(r)
            assert isinstance(r["failed"], bool)
        elif kind == "recycle":
            allowed_writes = [(P.OFF_STATE, P.OFF_STATE + 4)]
            page.recycle()
    except ALLOWED:
        pass
    assert time.monotonic() - t0 < 5.0
    changed = _changed(before, _snapshot(path))
    assert _inside(changed, allowed_writes), f"host {kind} wrote outside its fields: {changed[:4]}"


@budget(500)
@given(script)
def test_hostile_guest_gets_page_errors_never_crashes(steps):
    count("shmpage.session")
    with tempfile.TemporaryDirectory(prefix="mailvm-fuzz-page-") as d:
        path = str(Path(d) / "page")
        page = HostPage.create(path, SIZE)
        guest = HostileGuest(path, page)
        try:
            # the usual start: the agent publishes READY, the host sees it
            guest.write_header({"state": P.READY, "seq": 0, "ack_seq": 0})
            page.wait_ready(time.monotonic() + 1)
            for who, action in steps:
                count_step("shmpage.session steps")
                if who == "guest":
                    guest.act(action)
                else:
                    with keep_on_failure("shmpage", repr(steps).encode(), ".txt"):
                        _run_host(page, action, path)
        finally:
            guest.close()
            page.close()
    check_memory()


@budget(300)
@given(st.one_of(results.map(lambda r: json.dumps(r).encode()), st.binary(max_size=300),
                 json_values.map(lambda v: json.dumps(v).encode())),
       st.sampled_from([P.DONE, P.FAILED]), st.sampled_from([16, 4096, 1 << 20]))
def test_any_result_bytes_after_a_proper_job(payload, final, cap):
    """A guest that follows the hand-shake but answers with arbitrary bytes."""
    count("shmpage.result")
    with tempfile.TemporaryDirectory(prefix="mailvm-fuzz-page-") as d:
        path = str(Path(d) / "page")
        page = HostPage.create(path, SIZE)
        guest = HostileGuest(path, page)
        try:
            guest.write_header({"state": P.READY})
            page.wait_ready(time.monotonic() + 1)
            seq = page.submit(b"sample", "s.bin", {"timeout_s": 5})
            guest.write_header({"ack_seq": seq, "state": P.RUNNING})
            assert page.state() == P.RUNNING
            guest.act(("result", payload, "planned"))
            guest.write_header({"state": final})
            with keep_on_failure("shmpage_result", payload, ".json"):
                try:
                    r = page.read_result(cap)
                except PageError:
                    return
                assert len(payload) <= cap
                assert_result_shape(r)
                assert r["failed"] is (final == P.FAILED)
        finally:
            guest.close()
            page.close()
