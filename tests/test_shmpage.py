"""The shared-page protocol: host <-> agent round trips, and a hostile guest against the host.

No sandbox needed: the agent's ``serve()`` runs in a thread with a runner
written here (the CLI passes the real ``detonate``), and the CLI itself runs
as a subprocess for start-up, heartbeat and hang-up.  The hostile tests use a
"guest" written by the test that puts arbitrary bytes on the page.
"""

from __future__ import annotations

import hashlib
import json
import mmap
import os
import random
import subprocess
import sys
import textwrap
import threading
import time
import tracemalloc
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mailvm.guest import agent as A
from mailvm.guest import protocol as P
from mailvm.guest.doorbell import AnswerBell, FdDoorbell, PollDoorbell, open_doorbell
from mailvm.guest.page import GuestPage
from mailvm.vmpool.shmpage import HostPage, PageError, RequestTooLarge, check_result

SIZE = 1 << 20


def soon(seconds: float = 5.0) -> float:
    return time.monotonic() + seconds


def good_result(**over) -> dict:
    res = {
        "schema": 1, "verdict": "clean", "score": 0,
        "findings": [{"id": "exec_ok", "severity": 1, "detail": "ran", "source": "test"}],
        "log": [{"t": 0.1, "ev": "exec"}], "duration_s": 0.5, "stopped": "idle", "launcher": "sh", "events": 3,
    }
    res.update(over)
    return res


# -- a real agent loop in a thread -------------------------------------------
class Runner:
    """A real runner: hashes the sample and reports what it was given (records every call)."""

    def __init__(self, result_extra: dict | None = None, fail: Exception | None = None, sleep: float = 0.0):
        self.calls: list[dict] = []
        self.extra = result_extra or {}
        self.fail = fail
        self.sleep = sleep

    def __call__(self, sample: str, options: dict, workdir: str, should_stop) -> dict:
        data = Path(sample).read_bytes()
        self.calls.append({"sample": sample, "data": data, "options": options, "workdir": workdir,
                           "workdir_exists": os.path.isdir(workdir), "mode": os.stat(sample).st_mode & 0o777})
        if self.sleep:
            time.sleep(self.sleep)
        if self.fail:
            raise self.fail
        sha = hashlib.sha256(data).hexdigest()
        return good_result(findings=[{"id": "sha256", "severity": 2, "detail": sha, "source": "test"}], **self.extra)


class AgentThread:
    def __init__(self, path: str, workdir: str, runner, once: bool = True, poll: float | None = None,
                 heartbeat_s: float = 0.1, answer: bool = False):
        self.page = GuestPage.open(path, SIZE)
        self.answer_fd = None
        bell_back = None
        if answer:  # the doorbell back: the host blocks on answer_fd
            self.answer_fd, w = os.pipe()
            os.set_blocking(self.answer_fd, False)
            bell_back = AnswerBell(w)
        if poll is None:
            r, self.wfd = os.pipe()
            self.bell = FdDoorbell(r)
        else:
            self.wfd = None
            self.bell = PollDoorbell(poll)
        self.stop = threading.Event()
        self.jobs: list[int] = []
        self.thread = threading.Thread(
            target=lambda: self.jobs.append(A.serve(self.page, self.bell, runner, workdir, once=once,
                                                     heartbeat_s=heartbeat_s, stop=self.stop, answer=bell_back)),
            daemon=True,
        )
        self.thread.start()

    def ring(self) -> None:
        if self.wfd is not None:
            os.write(self.wfd, b"\x01")

    def hang_up(self) -> None:
        if self.wfd is not None:
            os.close(self.wfd)
            self.wfd = None

    def close(self) -> None:
        self.stop.set()
        self.ring()
        self.thread.join(5)
        assert not self.thread.is_alive()
        self.hang_up()
        self.bell.close()
        self.page.close()


@pytest.fixture
def host(tmp_path):
    page = HostPage.create(str(tmp_path / "slot.page"), SIZE)
    yield page
    page.close()


@pytest.fixture
def agents(tmp_path):
    started: list[AgentThread] = []

    def start(runner, **kw) -> AgentThread:
        a = AgentThread(str(tmp_path / "slot.page"), str(tmp_path / "work"), runner, **kw)
        started.append(a)
        return a

    yield start
    for a in started:
        a.close()


def run_job(host: HostPage, agent: AgentThread, data: bytes, name: str, options: dict) -> dict:
    host.wait_ready(soon())
    seq = host.submit(data, name, options)
    agent.ring()
    state = host.wait_state({P.RUNNING, P.DONE, P.FAILED}, soon())
    assert state in (P.RUNNING, P.DONE, P.FAILED)
    state = host.wait_state({P.DONE, P.FAILED}, soon())
    raw = P.unpack_header(Path(host.path).read_bytes()[: P.HEADER.size])
    assert raw.ack_seq == seq == raw.seq
    return host.read_result(1 << 20)


def test_round_trip(host, agents, tmp_path):
    runner = Runner()
    agent = agents(runner)
    data = os.urandom(100_000)
    res = run_job(host, agent, data, "../../etc/invoice 2024.sh", {"timeout_s": 5, "kind": "script"})
    assert res["failed"] is False and res["verdict"] == "clean"
    assert res["findings"] == [{"id": "sha256", "severity": 2, "detail": hashlib.sha256(data).hexdigest(),
                                "source": "test"}]
    (call,) = runner.calls
    assert call["data"] == data
    assert os.path.basename(call["sample"]) == "invoice 2024.sh"
    assert call["sample"].startswith(str(tmp_path / "work"))
    assert call["options"] == {"timeout_s": 5, "kind": "script"}
    assert call["workdir_exists"]
    agent.thread.join(5)
    assert agent.jobs == [1]
    assert os.listdir(tmp_path / "work") == []  # the job directory is removed after the job
    assert host.boot_id != 0


def test_the_host_blocks_on_the_doorbell_back_instead_of_looking_in_a_loop(host, agents, monkeypatch):
    """With the agent's doorbell back, waiting for READY, RUNNING and DONE never sleeps in a loop:
    the page is read again only when the agent rang (or at the WAKE_CHECK_S safety look)."""
    import types

    from mailvm.vmpool import shmpage

    def no_sleep(_s):
        raise AssertionError("wait_state slept in a loop although the agent rings back")

    monkeypatch.setattr(shmpage, "time", types.SimpleNamespace(monotonic=time.monotonic, sleep=no_sleep))
    reads = {"n": 0}
    real_read = HostPage._read

    def counting_read(self):
        reads["n"] += 1
        return real_read(self)

    monkeypatch.setattr(HostPage, "_read", counting_read)
    agent = agents(Runner(sleep=0.6), answer=True)
    host.wait_ready(soon(), wake_fd=agent.answer_fd)
    host.submit(b"#!/bin/sh\necho hi\n", "a.sh", {})
    agent.ring()
    assert host.wait_state({P.RUNNING, P.DONE, P.FAILED}, soon(), wake_fd=agent.answer_fd) in (P.RUNNING, P.DONE)
    reads["n"] = 0
    assert host.wait_state({P.DONE, P.FAILED}, soon(), wake_fd=agent.answer_fd) == P.DONE
    # 0.6 s of running: a sleep loop looks hundreds of times; blocking looks a handful (spin + rings)
    assert reads["n"] < 100, reads
    assert host.read_result(1 << 20)["verdict"] == "clean"


def test_the_answer_bell_can_be_the_doorbells_own_device(tmp_path):
    """``--answer bell``: a device doorbell opened read-write rings the host back through the same
    device (a virtio-serial port cannot be opened twice); a doorbell that cannot write gives none."""
    from mailvm.guest.doorbell import open_answer

    port = tmp_path / "port"
    os.mkfifo(port)
    host_end = os.open(port, os.O_RDONLY | os.O_NONBLOCK)
    bell = open_doorbell(f"dev:{port}")
    try:
        assert bell.writable
        answer = open_answer("bell", bell)
        answer.ring()
        assert os.read(host_end, 16) == b"\x01"
        answer.close()
    finally:
        bell.close()
        os.close(host_end)
    assert open_answer("bell", PollDoorbell(0.01)) is None
    assert open_answer(None) is None
    with pytest.raises(ValueError):
        open_answer("nonsense")


def test_heartbeat_advances_while_idle_and_while_running(host, agents):
    agent = agents(Runner(sleep=0.6), heartbeat_s=0.1)
    host.wait_ready(soon())
    hb0 = host.heartbeat()
    time.sleep(0.35)
    assert host.heartbeat() >= hb0 + 2
    host.submit(b"x", "x", {})
    agent.ring()
    assert host.wait_state({P.RUNNING}, soon()) == P.RUNNING
    hb1 = host.heartbeat()
    time.sleep(0.35)
    assert host.heartbeat() >= hb1 + 2  # the heartbeat thread keeps beating during the job
    assert host.wait_state({P.DONE}, soon(), heartbeat_timeout=0.5) == P.DONE


def test_runner_exception_is_failed_with_error_result(host, agents):
    agent = agents(Runner(fail=RuntimeError("launcher crashed")))
    res = run_job(host, agent, b"MZ", "a.exe", {})
    assert res["failed"] is True and res["verdict"] == "error"
    assert "launcher crashed" in res["error"]
    assert res["findings"][0]["id"] == "agent_error"


def test_runner_returning_garbage_is_failed(host, agents):
    agent = agents(lambda *a: ["not", "a", "dict"])
    res = run_job(host, agent, b"x", "x", {})
    assert res["failed"] and "list" in res["error"]


def test_big_result_is_shrunk_to_the_cap(host, agents):
    log = [{"i": i, "line": "x" * 100} for i in range(5000)]
    agent = agents(Runner(result_extra={"log": log}))
    res = run_job(host, agent, b"x", "x", {"max_result_bytes": 8192})
    assert res["failed"] is False
    assert 0 < len(res["log"]) < 5000 and res["log"][0] == log[0]
    assert res["truncated"] == ["log"]
    assert res["findings"][0]["id"] == "sha256"  # kept: only the log had to go


def test_poll_doorbell_needs_no_ring(host, agents):
    agent = agents(Runner(), poll=0.001)
    host.wait_ready(soon())
    t0 = time.monotonic()
    host.submit(b"data", "a.txt", {})
    assert host.wait_state({P.RUNNING, P.DONE}, soon()) in (P.RUNNING, P.DONE)
    assert time.monotonic() - t0 < 0.5
    assert host.wait_state({P.DONE}, soon()) == P.DONE
    assert agent.jobs or agent.thread.join(2) is None


def test_multi_job_agent_with_recycle(host, agents):
    runner = Runner()
    agent = agents(runner, once=False)
    for i in range(3):
        res = run_job(host, agent, f"job {i}".encode(), f"f{i}.txt", {"i": i})
        assert not res["failed"]
        host.recycle()
    assert [c["data"] for c in runner.calls] == [b"job 0", b"job 1", b"job 2"]
    assert agent.thread.is_alive()


def test_idle_agent_exits_when_the_host_hangs_up(host, agents):
    agent = agents(Runner())
    host.wait_ready(soon())
    agent.hang_up()
    agent.thread.join(3)
    assert not agent.thread.is_alive() and agent.jobs == [0]


def test_agent_republishes_ready_on_a_fresh_page(host, agents, tmp_path):
    """A flash clone is restored onto a new, zeroed page: the idle agent must publish READY again."""
    agent = agents(Runner(), heartbeat_s=0.05)
    host.wait_ready(soon())
    with open(host.path, "r+b") as f:
        f.write(b"\x00" * P.HEADER.size)
    fresh = HostPage.attach(host.path, SIZE)
    try:
        fresh.wait_ready(soon(2))
        res = run_job(fresh, agent, b"after restore", "r.txt", {})
        assert not res["failed"]
    finally:
        fresh.close()


# -- the guest distrusts the host too ----------------------------------------
def raw_request(path: str, **fields) -> None:
    """Write a REQUEST the way a broken host might (bypassing HostPage's checks)."""
    with open(path, "r+b") as f:
        mm = mmap.mmap(f.fileno(), SIZE)
        h = P.unpack_header(mm[: P.HEADER.size])
        vals = {"request_off": P.HEADER_SIZE, "request_len": 4, "options_off": P.HEADER_SIZE + 4096,
                "options_len": 2, "seq": h.seq + 1}
        vals.update(fields)
        mm[P.HEADER_SIZE : P.HEADER_SIZE + 4] = b"data"
        mm[P.HEADER_SIZE + 4096 : P.HEADER_SIZE + 4098] = b"{}"
        P.JOB_FIELDS.pack_into(mm, P.OFF_REQUEST_OFF, vals["request_off"], vals["request_len"],
                               vals["options_off"], vals["options_len"], 0, 0)
        P.U64.pack_into(mm, P.OFF_SEQ, vals["seq"])
        P.U32.pack_into(mm, P.OFF_STATE, P.REQUEST)
        mm.close()


def wait_raw_terminal(path: str) -> P.Header:
    end = soon()
    while time.monotonic() < end:
        h = P.unpack_header(Path(path).read_bytes()[: P.HEADER.size])
        if h.state in P.TERMINAL:
            return h
        time.sleep(0.005)
    raise AssertionError("agent never finished")


@pytest.mark.parametrize("fields", [
    {"request_off": 0},  # the request would overlap the header
    {"request_off": SIZE - 2, "request_len": 4},  # runs off the end
    {"request_len": 1 << 62},
    {"options_off": 100},
    {"options_len": P.MAX_OPTIONS_BYTES + 1},
])
def test_agent_refuses_bad_request_spans(host, agents, fields):
    runner = Runner()
    agent = agents(runner)
    host.wait_ready(soon())
    raw_request(host.path, **fields)
    agent.ring()
    h = wait_raw_terminal(host.path)
    assert h.state == P.FAILED and h.ack_seq == h.seq
    assert P.span_ok(h.result_off, h.result_len, SIZE)
    body = json.loads(Path(host.path).read_bytes()[h.result_off : h.result_off + h.result_len])
    assert body["findings"][0]["id"] == "agent_bad_request"
    assert runner.calls == []


def test_agent_fails_on_options_that_are_not_an_object(host, agents):
    agent = agents(Runner())
    host.wait_ready(soon())
    raw_request(host.path, options_len=1)  # "{" alone
    agent.ring()
    h = wait_raw_terminal(host.path)
    assert h.state == P.FAILED


@pytest.mark.parametrize("name,expected", [
    ("invoice.pdf", "invoice.pdf"),
    ("../../etc/passwd", "passwd"),
    ("C:\\Users\\x\\evil.exe", "evil.exe"),
    ("..", "sample"),
    ("", "sample"),
    ("a\x00b\nc\u202eexe.txt", "abcexe.txt"),
    ("-rf", "rf"),
    ("x" * 300 + ".docm", "x" * 195 + ".docm"),  # cut to 200 bytes, extension kept
])
def test_safe_name(name, expected):
    assert A.safe_name(name) == expected


def test_encode_result_shrinks_in_order():
    res = good_result(log=["l" * 50] * 200, events=[{"e": "x" * 40}] * 100,
                      findings=[{"id": f"f{i}", "severity": i % 11, "detail": "d" * 400, "source": "s"}
                                for i in range(40)])
    full = A.encode_result(res, 1 << 20)
    assert json.loads(full) == res
    for cap in (len(full) - 100, 12000, 4000, 1500):
        out = A.encode_result(res, cap)
        assert len(out) <= cap
        body = check_result(json.loads(out))
        assert body["truncated"][0] == "log"
        if "findings" in body["truncated"]:
            sevs = [f["severity"] for f in body["findings"]]
            assert sevs == sorted(sevs, reverse=True) and sevs[0] == 10
    with pytest.raises(ValueError):
        A.encode_result(res, 50)


def test_encode_result_rejects_nan():
    with pytest.raises(ValueError):
        A.encode_result(good_result(duration_s=float("nan")), 4096)


def test_doorbell_specs(tmp_path):
    r, w = os.pipe()
    try:
        bell = open_doorbell(f"fd:{r}")
        assert bell.wait(0.01, lambda: False) is False
        os.write(w, b"\x01\x01")
        assert bell.wait(1, lambda: False) is True
        assert bell.wait(0.01, lambda: False) is False  # drained
        os.close(w)
        assert bell.hung_up()
    finally:
        os.close(r)
    poll = open_doorbell("poll:0.001:0.02")
    assert isinstance(poll, PollDoorbell) and poll.max_s == 0.02
    assert poll.current_interval(poll._active_at + 0.5) == 0.001
    assert poll.current_interval(poll._active_at + 100) == 0.02
    for bad in ("fd", "nope:1", "poll:0", "poll:0.01:0.001", "dev:relative", "poll:1:2:3"):
        with pytest.raises(ValueError):
            open_doorbell(bad)


def test_guest_stores_never_expose_a_transient_zero(host):
    """Another process rewriting state/heartbeat must never be read as 0 (struct.pack_into zeroes first)."""
    writer = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import time
        from mailvm.guest.page import GuestPage
        page = GuestPage.open({host.path!r}, {SIZE})
        end, n = time.monotonic() + 0.6, 1 << 40
        while time.monotonic() < end:
            page.acknowledge(1)  # ack_seq then state RUNNING, again and again
            page.beat(n)
            n += 1
        """)])
    fd = os.open(host.path, os.O_RDONLY)
    try:
        while writer.poll() is None:  # until the first acknowledge and beat have landed
            h = P.unpack_header(os.pread(fd, P.HEADER.size, 0))
            if h.state == P.RUNNING and h.heartbeat:
                break
        bad = reads = 0
        while writer.poll() is None:
            h = P.unpack_header(os.pread(fd, P.HEADER.size, 0))
            reads += 1
            bad += h.state != P.RUNNING or h.heartbeat == 0 or h.ack_seq != 1
    finally:
        os.close(fd)
    assert writer.wait() == 0
    assert reads > 1000 and bad == 0


def test_take_acknowledges_only_a_new_request(host):
    g = GuestPage.open(host.path, SIZE)
    try:
        assert g.take(0) is None  # EMPTY
        g.publish_ready(7, os.getpid(), 0)
        host.wait_ready(soon(1))
        assert g.take(0) is None  # READY: nothing to take
        seq = host.submit(b"x", "x", {})
        assert g.take(seq) is None  # the job already seen is not taken twice
        assert host.state() == P.REQUEST
        raw = bytearray(Path(host.path).read_bytes()[:8])
        with open(host.path, "r+b") as f:  # a header that is not ours is never acknowledged
            f.write(b"XXXXXXXX")
        assert g.take(seq - 1) is None
        with open(host.path, "r+b") as f:
            f.write(raw)
        assert g.take(seq - 1) == seq
        h = g.header()
        assert (h.state, h.ack_seq) == (P.RUNNING, seq)
        assert host.state() == P.RUNNING
        assert g.take(seq - 1) is None  # RUNNING now
    finally:
        g.close()


# -- the agent CLI as a real process ------------------------------------------
def test_agent_cli_ready_heartbeat_and_exit_on_hangup(host, tmp_path):
    r, w = os.pipe()
    proc = subprocess.Popen(
        [sys.executable, "-m", "mailvm.guest.agent", "--page", host.path, "--size", str(SIZE),
         "--doorbell", f"fd:{r}", "--once", "--workdir", str(tmp_path / "w"), "--heartbeat", "0.1"],
        pass_fds=(r,), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
    os.close(r)
    try:
        host.wait_ready(soon(20), alive=lambda: proc.poll() is None)
        assert host.agent_pid == proc.pid
        hb = host.heartbeat()
        time.sleep(0.35)
        assert host.heartbeat() > hb
        os.close(w)
        w = -1
        assert proc.wait(5) == 0
    finally:
        if w >= 0:
            os.close(w)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert b"hung up" in proc.stdout.read()


# -- a hostile guest -----------------------------------------------------------
class FakeGuest:
    """Writes whatever the test wants into the header, as a compromised guest could."""

    def __init__(self, path: str):
        self.f = open(path, "r+b")
        self.mm = mmap.mmap(self.f.fileno(), SIZE)

    def close(self):
        self.mm.close()
        self.f.close()

    def set(self, **fields):
        for name, value in fields.items():
            off = getattr(P, f"OFF_{name.upper()}")
            if name == "magic":
                self.mm[off : off + 8] = value
            elif name in ("version", "state", "agent_pid"):
                P.U32.pack_into(self.mm, off, value)
            else:
                P.U64.pack_into(self.mm, off, value)

    def ready(self, boot_id: int = 0xB007):
        self.set(version=P.VERSION, boot_id=boot_id, magic=P.MAGIC, state=P.READY)

    def header(self) -> P.Header:
        return P.unpack_header(self.mm[: P.HEADER.size])

    def answer(self, payload: bytes, state: int = P.DONE, off: int | None = None, length: int | None = None):
        h = self.header()
        off = P.result_offset(h.request_off, h.request_len, h.options_off, h.options_len) if off is None else off
        if P.HEADER_SIZE <= off and off + len(payload) <= SIZE:
            self.mm[off : off + len(payload)] = payload
        self.set(result_off=off, result_len=len(payload) if length is None else length, ack_seq=h.seq, state=state)


@pytest.fixture
def guest(host):
    g = FakeGuest(host.path)
    yield g
    g.close()


def submitted(host: HostPage, guest: FakeGuest) -> int:
    guest.ready()
    host.wait_ready(soon(1))
    return host.submit(b"sample", "s.bin", {})


def test_fresh_page_is_empty_and_a_stuck_agent_times_out(host):
    assert host.state() == P.EMPTY
    t0 = time.monotonic()
    with pytest.raises(TimeoutError):
        host.wait_ready(time.monotonic() + 0.2)
    assert time.monotonic() - t0 < 0.5


@pytest.mark.parametrize("fields,match", [
    ({"magic": b"MALWARE!"}, "magic"),
    ({"magic": P.MAGIC, "version": 1, "state": P.READY}, "version"),
    ({"magic": P.MAGIC, "version": P.VERSION, "state": 9}, "illegal state"),
    ({"magic": P.MAGIC, "version": P.VERSION, "state": P.RUNNING}, "before the agent"),
    ({"magic": P.MAGIC, "version": P.VERSION, "state": P.DONE}, "before the agent"),
    ({"magic": P.MAGIC, "version": P.VERSION, "state": P.READY, "boot_id": 0}, "boot id"),
    ({"magic": P.MAGIC, "version": P.VERSION, "state": P.READY, "boot_id": 5, "seq": 3}, "seq"),
    ({"magic": P.MAGIC, "version": P.VERSION, "state": P.READY, "boot_id": 5, "ack_seq": 7}, "ack_seq"),
    ({"state": P.READY}, "magic is zero"),
])
def test_bad_header_at_boot(host, guest, fields, match):
    guest.set(**fields)
    with pytest.raises(PageError, match=match):
        host.state()
    with pytest.raises(PageError):
        host.wait_ready(soon(1))


def test_random_header_bytes(host, guest):
    rnd = random.Random(1234)
    for _ in range(200):
        guest.mm[: P.HEADER.size] = rnd.randbytes(P.HEADER.size)
        with pytest.raises(PageError):
            host.state()


def test_guest_may_not_write_request_or_move_while_idle(host, guest):
    guest.ready()
    host.wait_ready(soon(1))
    for state in (P.REQUEST, P.RUNNING, P.DONE, P.EMPTY):
        guest.set(state=state)
        with pytest.raises(PageError, match="idle|back|zero"):
            host.state()
    guest.set(state=P.READY)
    assert host.state() == P.READY


def test_submit_refused_unless_ready(host, guest):
    with pytest.raises(PageError, match="refused"):
        host.submit(b"x", "x", {})  # still EMPTY
    submitted(host, guest)
    with pytest.raises(PageError, match="refused"):
        host.submit(b"y", "y", {})  # a job is already on the page


def test_submit_too_large_and_bad_options(host, guest):
    guest.ready()
    host.wait_ready(soon(1))
    with pytest.raises(RequestTooLarge):
        host.submit(b"x" * SIZE, "big", {})
    with pytest.raises(ValueError):
        host.submit(b"x", "x", {"bad": object()})
    with pytest.raises(RequestTooLarge):
        host.submit(b"x", "x", {"pad": "p" * P.MAX_OPTIONS_BYTES})
    assert host.state() == P.READY  # nothing was written
    seq = host.submit(b"x" * host.max_request_bytes(), "max", {"pad": "p" * (P.MAX_OPTIONS_BYTES - 20)})
    assert seq == 1


def test_submit_writes_the_layout(host, guest):
    seq = submitted(host, guest)
    h = guest.header()
    assert (h.state, h.seq, h.request_off, h.request_len) == (P.REQUEST, seq, P.HEADER_SIZE, 6)
    assert guest.mm[h.request_off : h.request_off + 6] == b"sample"
    assert json.loads(guest.mm[h.options_off : h.options_off + h.options_len]) == {}
    assert h.name == "s.bin" and h.options_off % P.DATA_ALIGN == 0


def test_state_backwards_and_ack_mismatch(host, guest):
    seq = submitted(host, guest)
    guest.set(ack_seq=seq - 1, state=P.RUNNING)
    with pytest.raises(PageError, match="ack_seq"):
        host.state()
    guest.set(ack_seq=seq, state=P.RUNNING)
    assert host.state() == P.RUNNING
    guest.set(state=P.REQUEST)
    with pytest.raises(PageError, match="back"):
        host.state()
    guest.set(state=P.READY)
    with pytest.raises(PageError, match="back"):
        host.wait_state({P.DONE}, soon(1))


def test_half_written_acknowledgement_is_legal(host, guest):
    """The agent writes ack_seq, then RUNNING: the host may read in between (found by the backend tests)."""
    seq = submitted(host, guest)
    guest.set(ack_seq=seq)
    assert host.state() == P.REQUEST
    guest.set(state=P.RUNNING)
    assert host.state() == P.RUNNING


def test_seq_and_boot_id_are_not_the_guests(host, guest):
    seq = submitted(host, guest)
    guest.set(seq=seq + 5)
    with pytest.raises(PageError, match="seq"):
        host.state()
    guest.set(seq=seq, boot_id=0xDEAD)
    with pytest.raises(PageError, match="boot id"):
        host.state()


def test_done_then_flip_to_failed(host, guest):
    submitted(host, guest)
    guest.answer(json.dumps(good_result()).encode())
    assert host.read_result(4096)["verdict"] == "clean"
    guest.set(state=P.FAILED)
    with pytest.raises(PageError, match="after DONE"):
        host.read_result(4096)


def test_stuck_request_times_out_quickly(host, guest):
    submitted(host, guest)
    t0 = time.monotonic()
    with pytest.raises(TimeoutError):
        host.wait_state({P.RUNNING}, time.monotonic() + 0.3)
    assert 0.29 < time.monotonic() - t0 < 0.6


def test_stuck_heartbeat(host, guest):
    seq = submitted(host, guest)
    guest.set(ack_seq=seq, state=P.RUNNING)
    t0 = time.monotonic()
    with pytest.raises(PageError, match="heartbeat"):
        host.wait_state({P.DONE}, soon(10), heartbeat_timeout=0.3)
    assert time.monotonic() - t0 < 1.0


def test_dead_slot_detected(host, guest):
    submitted(host, guest)
    t0 = time.monotonic()
    with pytest.raises(PageError, match="died"):
        host.wait_state({P.DONE}, soon(10), alive=lambda: False)
    assert time.monotonic() - t0 < 0.2
    guest.answer(json.dumps(good_result()).encode())
    assert host.wait_state({P.DONE}, soon(1), alive=lambda: False) == P.DONE  # answered, then exited


def test_read_result_before_done(host, guest):
    with pytest.raises(PageError):
        host.read_result(4096)
    submitted(host, guest)
    with pytest.raises(PageError, match="no result"):
        host.read_result(4096)


@pytest.mark.parametrize("off,length,match", [
    (0, 100, "outside"),  # into the header
    (100, 100, "outside"),
    (SIZE - 10, 100, "outside"),  # off the end
    (P.HEADER_SIZE, 1 << 30, "outside"),  # 1 GiB
    (1 << 63, 10, "outside"),
    (P.HEADER_SIZE, 0, "empty"),
    (P.HEADER_SIZE * 4, 10_000, "exceeds"),  # inside the region but over the cap
])
def test_result_spans(host, guest, off, length, match):
    submitted(host, guest)
    guest.answer(b"{}", off=off, length=length)
    tracemalloc.start()
    try:
        with pytest.raises(PageError, match=match):
            host.read_result(4096)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 256 * 1024


@pytest.mark.parametrize("payload,match", [
    (b"{not json", "JSON"),
    (b"\xff\xfe{}", "JSON"),
    (b"[" * 100_000 + b"]" * 100_000, "JSON|object"),
    (b'{"schema": 1, "verdict": "clean", "score": NaN, "findings": []}', "JSON"),
    (json.dumps(good_result(score=99)).encode(), "score"),
    (json.dumps(good_result(score=True)).encode(), "score"),
    (json.dumps(good_result(verdict="pwned")).encode(), "verdict"),
    (json.dumps(good_result(findings={"id": "x"})).encode(), "findings"),
    (json.dumps(good_result(findings=[{"id": "x", "severity": 11}])).encode(), "findings"),
    (json.dumps(good_result(findings=["x"])).encode(), "findings"),
    (json.dumps(good_result(schema=2)).encode(), "schema"),
    (json.dumps(good_result(log="lots")).encode(), "log"),
    (json.dumps(good_result(duration_s=-1)).encode(), "duration"),
    (json.dumps(good_result(duration_s=1e999)).encode(), "JSON"),
    (json.dumps(good_result(events=-5)).encode(), "events"),
    (json.dumps(["a list"]).encode(), "object"),
])
def test_result_content(host, guest, payload, match):
    submitted(host, guest)
    guest.answer(payload)
    with pytest.raises(PageError, match=match):
        host.read_result(1 << 20)


def test_result_normalised_and_capped(host, guest):
    submitted(host, guest)
    res = good_result(
        findings=[{"id": f"f{i}", "severity": i % 11, "detail": "d" * 600, "source": "s"} for i in range(700)],
        log=[{"i": i} for i in range(3000)] + [5, None], launcher="x" * 500, unknown_key="dropped",
    )
    guest.answer(json.dumps(res).encode(), state=P.FAILED)
    out = host.read_result(4 << 20)
    assert out["failed"] is True
    assert len(out["findings"]) == 500 and min(f["severity"] for f in out["findings"]) >= 3
    assert all(len(f["detail"]) <= 500 for f in out["findings"])
    assert len(out["log"]) == 2000 and len(out["launcher"]) == 200
    assert "unknown_key" not in out


def test_truncated_page_file_is_a_page_error_not_a_crash(host, guest):
    submitted(host, guest)
    guest.answer(json.dumps(good_result()).encode())
    os.truncate(host.path, 100)  # a guest (or QEMU) shrinking the backing file
    with pytest.raises(PageError, match="short read"):
        host.state()
    with pytest.raises(PageError):
        host.read_result(4096)


FUZZ_CORPUS = Path(__file__).parent / "fuzz" / "corpus" / "shmpage"


def test_result_number_beyond_a_float_is_a_page_error(host, guest):
    """Found by tests/fuzz: a JSON integer of 310 digits as duration_s made math.isfinite raise OverflowError."""
    payload = (FUZZ_CORPUS / "result-duration-int-overflow.json").read_bytes()
    assert len(json.loads(payload)["duration_s"].__str__()) == 310
    submitted(host, guest)
    guest.answer(payload)
    with pytest.raises(PageError, match="duration_s .*integer of .* bits"):
        host.read_result(1 << 20)
    with pytest.raises(PageError, match="score"):
        check_result(good_result(score=10**400))


def test_submit_to_a_truncated_page_file_is_refused(host, guest):
    """Found by tests/fuzz: with the page file cut to its header page, submit wrote the job past the end
    (growing the file the guest no longer maps).  Now the slot is reported broken, and nothing is written."""
    guest.ready()
    host.wait_ready(soon(1))
    os.truncate(host.path, P.HEADER_SIZE)
    with pytest.raises(PageError, match="truncated to 4096"):
        host.submit(b"sample", "s.bin", {})
    assert os.path.getsize(host.path) == P.HEADER_SIZE


def test_create_is_exclusive_and_private(tmp_path):
    path = str(tmp_path / "p")
    page = HostPage.create(path, SIZE)
    try:
        assert os.stat(path).st_mode & 0o777 == 0o600 and os.path.getsize(path) == SIZE
        with pytest.raises(FileExistsError):
            HostPage.create(path, SIZE)
        with pytest.raises(ValueError):
            HostPage.attach(path, SIZE * 2)
        os.symlink(path, tmp_path / "link")
        with pytest.raises(OSError):
            HostPage.attach(str(tmp_path / "link"), SIZE)
    finally:
        page.close()
        page.unlink()
        page.unlink()  # idempotent
    assert not os.path.exists(path)
    with pytest.raises(ValueError):
        HostPage.create(str(tmp_path / "small"), 4096)


# -- property: any header bytes -> valid values or PageError/TimeoutError ----------
HEADER_FIELDS = st.fixed_dictionaries({
    "magic": st.sampled_from([P.MAGIC, P.ZERO_MAGIC, b"MAILVM\x00\x02"]) | st.binary(min_size=8, max_size=8),
    "version": st.sampled_from([P.VERSION, 1, 0]) | st.integers(0, 2**32 - 1),
    "state": st.integers(0, 6) | st.integers(0, 2**32 - 1),
    "seq": st.sampled_from([0, 1, 2]) | st.integers(0, 2**64 - 1),
    "ack_seq": st.sampled_from([0, 1]) | st.integers(0, 2**64 - 1),
    "heartbeat": st.integers(0, 2**64 - 1),
    "result_off": st.sampled_from([0, P.HEADER_SIZE, 3 * P.HEADER_SIZE, SIZE - 10]) | st.integers(0, 2**64 - 1),
    "result_len": st.sampled_from([0, 2, 100, 1 << 30]) | st.integers(0, 2**64 - 1),
    "boot_id": st.sampled_from([0, 0xB007]) | st.integers(0, 2**64 - 1),
})


@pytest.fixture(scope="module")
def prop_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("prop")


def _exercise(page: HostPage) -> None:
    for call in (
        lambda: page.state(),
        lambda: page.heartbeat(),
        lambda: page.read_result(4096),
        lambda: page.wait_state({P.DONE}, time.monotonic() + 0.002, alive=lambda: True, heartbeat_timeout=0.001),
    ):
        try:
            value = call()
        except (PageError, TimeoutError):
            continue
        if isinstance(value, dict):
            assert check_result(value)["verdict"] == value["verdict"]
        else:
            assert isinstance(value, int) and value >= 0


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(fields=HEADER_FIELDS, submit_first=st.booleans(), payload=st.binary(max_size=300) | st.just(
    json.dumps(good_result()).encode()), noise=st.binary(min_size=P.HEADER.size, max_size=P.HEADER.size),
    raw=st.booleans())
def test_property_any_header(prop_dir, fields, submit_first, payload, noise, raw):
    path = str(prop_dir / "page")
    if os.path.exists(path):
        os.unlink(path)
    page = HostPage.create(path, SIZE)
    guest = FakeGuest(path)
    try:
        if submit_first:
            guest.ready()
            page.wait_ready(soon(1))
            page.submit(b"sample", "s", {})
        guest.mm[3 * P.HEADER_SIZE : 3 * P.HEADER_SIZE + len(payload)] = payload
        if raw:
            guest.mm[: P.HEADER.size] = noise
        else:
            guest.set(**fields)
        _exercise(page)
    finally:
        guest.close()
        page.close()


def test_job_submitted_the_moment_ready_appears_is_not_lost(tmp_path):
    """Regression: the agent must not take a job submitted right after READY for an old one."""
    import threading as _threading

    from mailvm.guest import agent as _agent
    from mailvm.guest import protocol as _P
    from mailvm.guest.page import GuestPage
    from mailvm.vmpool.shmpage import HostPage

    class Doorbell:
        def __init__(self):
            self.event = _threading.Event()

        def wait(self, timeout, attention=None):
            self.event.wait(min(timeout, 0.01))
            self.event.clear()

        def hung_up(self):
            return False

    size = 1 << 20
    host = HostPage.create(str(tmp_path / "page"), size)
    guest = GuestPage.open(str(tmp_path / "page"), size)
    real_publish = guest.publish_ready

    def publish_then_host_submits(*args):
        real_publish(*args)
        host.submit(b"#!/bin/sh\necho hi\n", "x.sh", {"timeout_s": 5})  # the host is fast

    guest.publish_ready = publish_then_host_submits
    ran = []

    def runner(sample, options, workdir, should_stop):
        ran.append(sample)
        return {"schema": 1, "verdict": "clean", "score": 0, "findings": [], "log": [], "duration_s": 0.0,
                "stopped": "exited_idle", "launcher": "sh", "events": {}}

    bell = Doorbell()
    t = _threading.Thread(target=_agent.serve, args=(guest, bell, runner, str(tmp_path / "work")), daemon=True)
    t.start()
    t.join(10)
    assert ran, "the job submitted right after READY was never run"
    assert host.state() in (_P.DONE, _P.FAILED)
