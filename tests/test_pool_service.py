"""The pool service and the durable queue (issue 12 items 4 and 11): claims of queued jobs stay
alive, a dead pool's jobs are handed back at once, a known verdict is not run again, and two pool
services never share one queue.

Each test runs the real ``mailvm pool`` process (process backend: real agents and sandboxes) on
its own work directory, with a real scanned table and job queue; this test process plays the scan
workers (it claims files in the table and pushes job records, as ``QueueDetonator`` does).
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from mailvm.config import PoolConfig, load_config
from mailvm.procfs import find_processes, is_gone
from mailvm.scantable import ScanTable
from mailvm.verdict import Verdict
from mailvm.vmpool.backends.process import ProcessBackend
from mailvm.vmpool.jobqueue import JobQueue
from mailvm.vmpool.pool import Job
from mailvm.vmpool.queuelock import QueueLock, read_holder, sweep

pytestmark = [pytest.mark.sandbox, pytest.mark.slow]


@pytest.fixture
def need_sandbox():
    reason = ProcessBackend.probe(PoolConfig())
    if reason:
        pytest.skip(f"process backend cannot run here: {reason}")


def owner() -> str:
    """A claim owner naming this (live) process, as a scan worker's does."""
    return f"{os.uname().nodename}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class PoolLab:
    """A config, the table and queue it names, and the ``mailvm pool`` processes started on it."""

    def __init__(self, root: Path, slots: int = 1, pending_ttl_s: float = 180.0) -> None:
        self.root = root
        self.config = root / "mailvm.toml"
        self.config.write_text(
            f'[spool]\ndir = "{root}/spool"\n'
            f'[scantable]\npath = "{root}/table"\npending_ttl_s = {pending_ttl_s}\n'
            f'[pool]\nbackend = "process"\nslots = {slots}\nwork_dir = "{root}/pool"\n'
            f'job_timeout_s = 30\nidle_s = 1\nheartbeat_timeout_s = 5\n'
            f'[links]\nenabled = false\n')
        self.cfg = load_config(str(self.config))
        self.table = ScanTable(self.cfg.scantable)
        self.queue = JobQueue(Path(self.cfg.pool.work_dir) / "jobs")
        self.procs: list[tuple[subprocess.Popen, Path]] = []

    def start_pool(self) -> tuple[subprocess.Popen, Path]:
        log = self.root / f"pool-{len(self.procs)}.log"
        proc = subprocess.Popen([sys.executable, "-m", "mailvm.cli.mailvm_main", "-c", str(self.config), "pool"],
                                stdout=open(log, "ab"), stderr=subprocess.STDOUT, start_new_session=True)
        self.procs.append((proc, log))
        return proc, log

    def submit(self, name: str, script: str) -> tuple[Job, str]:
        """Claim and queue a file as a scan worker does; returns the job and its claim owner."""
        data = script.encode()
        path = self.root / "spool-in" / name
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(data)
        sha = hashlib.sha256(data).hexdigest()
        who = owner()
        assert self.table.claim(sha, who).won
        job = Job(sha256=sha, path=str(path), name=name, type="text/x-shellscript", kind="script", owner=who)
        self.queue.push(job)
        return job, who

    def detonations(self, sha: str) -> int:
        return sum(log.read_text(errors="replace").count(f"detonated {sha[:12]}") for _, log in self.procs)

    def log_text(self) -> str:
        return "\n".join(log.read_text(errors="replace") for _, log in self.procs)

    def close(self) -> None:
        for proc, _ in self.procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait(timeout=10)
        self.table.close()


@pytest.fixture
def lab(need_sandbox, tmp_path):
    made: list[PoolLab] = []

    def make(**kw) -> PoolLab:
        made.append(PoolLab(tmp_path, **kw))
        return made[-1]

    yield make
    for lab_ in made:
        lab_.close()
        assert find_processes(str(tmp_path).encode()) == [], "agents of the test's pool are left"


def wait_for(pred, timeout: float, what: str):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = pred()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def test_queued_claims_stay_alive_and_a_backlog_detonates_each_file_once(lab):
    """Three 4-second jobs on one slot with pending_ttl_s = 3: the last one waits ~8 s in the queues.
    Before the fix its claim went stale after 3 s, a later message claimed the file again and queued
    it a second time, and both copies ran."""
    pl = lab(slots=1, pending_ttl_s=3)
    jobs = [pl.submit(f"backlog{i}.sh", f"#!/bin/sh\nsleep 4\necho {i} {uuid.uuid4().hex}\n")[0] for i in range(3)]
    pl.start_pool()
    later = owner()  # a later message carrying the same files
    end = time.monotonic() + 120
    done: set[str] = set()
    while len(done) < len(jobs) and time.monotonic() < end:
        for job in jobs:
            if job.sha256 in done:
                continue
            claim = pl.table.claim(job.sha256, later)
            assert not claim.won, f"the claim of queued {job.name} went stale while it waited"
            if claim.entry is not None and claim.entry.state == "done":
                done.add(job.sha256)
        time.sleep(0.3)
    assert len(done) == len(jobs), pl.log_text()[-3000:]
    for job in jobs:
        assert pl.detonations(job.sha256) == 1
    assert list((Path(pl.cfg.pool.work_dir) / "jobs" / "files").iterdir()) == []  # every copy removed


def test_a_killed_pool_hands_its_job_back_at_once(lab):
    """The claim of a job taken by a pool service killed with -9 is stale at once (not after
    pending_ttl_s, 180 s here): the next claimer queues it again and a new pool runs it."""
    pl = lab(slots=1)
    job, _ = pl.submit("long.sh", f"#!/bin/sh\nsleep 25\necho {uuid.uuid4().hex}\n")
    proc, log = pl.start_pool()
    wait_for(lambda: len(pl.queue) == 0 and "pool:" in log.read_text(errors="replace"), 60, "the pool to take the job")
    time.sleep(2)  # the job is on its slot now
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    again = owner()
    claim = wait_for(lambda: (c := pl.table.claim(job.sha256, again)).won and c, 10,
                     "the dead pool's claim to be handed back")
    assert claim.won
    pl.queue.push(Job(sha256=job.sha256, path=job.path, name=job.name, type=job.type, kind=job.kind, owner=again))
    pl.start_pool()
    wait_for(lambda: (v := pl.table.get(job.sha256)) is not None and v.state == "done", 120,
             "the new pool's verdict")


def test_a_popped_job_whose_verdict_is_known_is_not_run(lab):
    pl = lab(slots=1)
    job, who = pl.submit("known.sh", f"#!/bin/sh\necho {uuid.uuid4().hex}\n")
    pl.table.publish(job.sha256, Verdict(verdict="clean", score=0, source="detonation"))  # answered meanwhile
    _, log = pl.start_pool()
    wait_for(lambda: "its verdict is already known" in log.read_text(errors="replace"), 60, "the pool to skip it")
    assert pl.detonations(job.sha256) == 0
    assert list((Path(pl.cfg.pool.work_dir) / "jobs" / "files").iterdir()) == []


def test_two_pool_services_never_share_one_queue(lab):
    pl = lab(slots=1)
    first, _ = pl.start_pool()
    lock = Path(pl.cfg.pool.work_dir) / "jobs" / "consumer.lock"
    wait_for(lambda: (h := read_holder(lock)) is not None and h.pid == first.pid, 60, "the first pool's lock")
    second, log2 = pl.start_pool()
    wait_for(lambda: "served by another pool service" in log2.read_text(errors="replace"), 60,
             "the second pool to refuse the queue")
    job, _ = pl.submit("one.sh", f"#!/bin/sh\necho {uuid.uuid4().hex}\n")
    wait_for(lambda: (v := pl.table.get(job.sha256)) is not None and v.state == "done", 120, "the verdict")
    assert f"detonated {job.sha256[:12]}" not in log2.read_text(errors="replace")
    os.kill(first.pid, signal.SIGKILL)  # the second takes over once the first is gone
    first.wait(timeout=30)
    wait_for(lambda: (h := read_holder(lock)) is not None and h.pid == second.pid, 60, "the second pool's lock")


def test_sweep_kills_a_pool_left_over_from_a_dead_serve_and_spares_a_standalone_one(tmp_path):
    lock = tmp_path / "jobs" / "consumer.lock"
    code = ("import sys, threading, time\nfrom mailvm.vmpool.queuelock import QueueLock\n"
            "QueueLock(sys.argv[1]).acquire(threading.Event(), int(sys.argv[2])); print('locked', flush=True)\n"
            "time.sleep(600)\n")
    supervisor = subprocess.Popen(["sleep", "600"])
    holder = subprocess.Popen([sys.executable, "-c", code, str(lock), str(supervisor.pid)], stdout=subprocess.PIPE)
    try:
        assert holder.stdout.readline().strip() == b"locked"
        assert sweep(lock) is None  # its serve is alive: a peer, not a leftover
        supervisor.kill()
        supervisor.wait()
        assert sweep(lock) == holder.pid
        holder.wait(timeout=10)
        assert QueueLock(lock).try_acquire()
    finally:
        for p in (holder, supervisor):
            if p.poll() is None:
                p.kill()
                p.wait()
    standalone = subprocess.Popen([sys.executable, "-c", code, str(tmp_path / "b.lock"), "0"], stdout=subprocess.PIPE)
    try:
        assert standalone.stdout.readline().strip() == b"locked"
        assert sweep(tmp_path / "b.lock") is None and not is_gone(standalone.pid)
    finally:
        standalone.kill()
        standalone.wait()
