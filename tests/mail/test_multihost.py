"""Past one host (issue 14 item 3), on this machine with separate processes: two Postfix
instances, each with its own ``mailvm serve`` (no pool of its own), two ``mailvm pool`` workers
with their own work directories, and one real ``redis-server`` holding the scanned table and the
job stream.

* A file seen through the first Postfix is answered from the table through the second.
* A burst of 20 messages carrying 5 distinct unseen files, through both, gives exactly 5
  detonations.
* A pool worker killed with SIGKILL mid-job has its job redelivered to the other one (the stream's
  consumer group, ``XAUTOCLAIM`` once it is silent for ``[pool] job_takeover_s``), and the message is
  answered.

Every mailvm process is real (``python -m mailvm.cli.mailvm_main``); detonation uses the
process backend (bubblewrap), so the test needs Postfix, redis-server and the sandbox.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from maillab import MailLab, make_message
from redis_helpers import REDIS_SERVER, RedisServer
from test_windows_launchers import SANDBOX as SANDBOX_REASON

from mailvm.lab.common import free_port, lab_config, lab_dir
from mailvm.procfs import find_processes, process_tree

pytestmark = [
    pytest.mark.postfix, pytest.mark.redis, pytest.mark.sandbox, pytest.mark.slow,
    pytest.mark.skipif(shutil.which("postfix") is None, reason="postfix is not installed (make setup installs it)"),
    pytest.mark.skipif(not REDIS_SERVER, reason="redis-server is not installed (make setup installs it)"),
    pytest.mark.skipif(SANDBOX_REASON is not None, reason=f"sandbox unavailable: {SANDBOX_REASON}"),
]

JOB_TIMEOUT_S = 15
#: a job silent this long ([pool] job_takeover_s; 30 s by default) goes to another pool worker
TAKEOVER_S = 6
DETONATED = re.compile(r" detonated ([0-9a-f]{12}) ")


def _script(tag: str, body: str = "echo done") -> bytes:
    """A small shell script never seen before (the tag makes its SHA-256 new)."""
    return f"#!/bin/sh\n# {tag} {time.time_ns()}\n{body}\n".encode()


class Farm:
    def __init__(self, tmp: Path) -> None:
        self.redis = RedisServer(tmp / "redis").start()
        self.hosts: list[MailLab] = []
        self.pools: list[tuple[Path, subprocess.Popen]] = []
        self.roots: list[Path] = []

    def _config(self, root: Path, milter_port: int, smtp_port: int, pool_work: Path | None = None) -> Path:
        (root / "policy.d").mkdir(exist_ok=True)
        text = lab_config(root, milter_port, smtp_port=smtp_port, backend="process", slots=1, workers=2,
                          job_timeout_s=JOB_TIMEOUT_S, idle_s=1, max_wait_s=170, malicious="reject",
                          pool_work=pool_work,
                          pool_extra=f'queue_url = "{self.redis.url}"\njob_takeover_s = {TAKEOVER_S}')
        text = text.replace("[scantable]\n", f'[scantable]\nurl = "{self.redis.url}"\n', 1)
        text = text.replace("[milter]\n", "[milter]\npool_service = false\n", 1)
        path = root / "mailvm.toml"
        path.write_text(text)
        return path

    def start(self) -> None:
        from mailvm.lab.postfix import LabPostfix

        for name in ("a", "b"):
            root = lab_dir(f"mailvm-mx-{name}-")
            self.roots.append(root)
            smtp_port, milter_port = free_port(), free_port()
            config = self._config(root, milter_port, smtp_port)
            postfix = LabPostfix(root / "postfix", port=smtp_port, milter=f"inet:127.0.0.1:{milter_port}")
            lab = MailLab(root, config, smtp_port, milter_port, postfix)
            self.hosts.append(lab)
            lab.start_mailvm()
            postfix.start()
        for name in ("p1", "p2"):
            root = lab_dir(f"mailvm-pool-{name}-")
            self.roots.append(root)
            config = self._config(root, free_port(), 25, pool_work=root / "work")
            log = open(root / "pool.log", "ab")
            proc = subprocess.Popen([sys.executable, "-m", "mailvm.cli.mailvm_main", "-c", str(config), "-v", "pool"],
                                    stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
            self.pools.append((root, proc))
        end = time.monotonic() + 120
        while time.monotonic() < end and not all(self.agents(r) for r, _ in self.pools):
            time.sleep(0.2)
        assert all(self.agents(r) for r, _ in self.pools), self.pool_logs()[-3000:]

    @staticmethod
    def agents(root: Path) -> list[int]:
        return find_processes(b"mailvm.guest.agent", str(root).encode())

    def busy_pool(self) -> tuple[Path, subprocess.Popen] | None:
        """The pool whose slot is running a sample (its agent has processes under it)."""
        for root, proc in self.pools:
            if proc.poll() is None and any(len(process_tree(a)) > 2 for a in self.agents(root)):
                return root, proc
        return None

    def pool_logs(self) -> str:
        return "".join((r / "pool.log").read_text(errors="replace") for r, _ in self.pools)

    def detonations(self) -> list[str]:
        return DETONATED.findall(self.pool_logs())

    def stop(self) -> None:
        for lab in self.hosts:
            lab.postfix.stop()
            lab.kill_mailvm(signal.SIGTERM)
        for _, proc in self.pools:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
        self.redis.stop()
        for root in self.roots:
            shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def farm(tmp_path_factory):
    f = Farm(tmp_path_factory.mktemp("multihost"))
    try:
        f.start()
        yield f
    finally:
        f.stop()


def _send(lab: MailLab, subject: str, name: str, data: bytes, rcpt: str = "user@example.com") -> dict:
    return lab.send(make_message(subject, to=rcpt, attachments=[(name, data)]), [rcpt])


def _delivered(lab: MailLab, rcpt: str, subject: str, timeout: float = 60.0):
    import email

    end = time.monotonic() + timeout
    while time.monotonic() < end:
        for raw in lab.postfix.delivered(rcpt):
            msg = email.message_from_bytes(raw)
            if msg.get("Subject") == subject:
                return msg
        time.sleep(0.2)
    return None


def _sha12(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()[:12]


def test_a_file_seen_through_one_mx_is_a_cache_hit_through_the_other(farm):
    a, b = farm.hosts
    data = _script("cross-host")
    assert _send(a, "first via A", "job.sh", data) == {}
    assert _delivered(a, "user@example.com", "first via A") is not None
    assert farm.detonations().count(_sha12(data)) == 1
    t0 = time.monotonic()
    assert _send(b, "then via B", "job.sh", data) == {}
    got = _delivered(b, "user@example.com", "then via B")
    assert got is not None and got["X-Mailvm-Verdict"].startswith("clean")
    # no second detonation: B found the verdict in the shared table
    assert farm.detonations().count(_sha12(data)) == 1
    print(f"\nsecond MX answered from the shared table in {time.monotonic() - t0:.2f} s (delivery included)")


def test_a_burst_of_20_messages_with_5_unseen_files_through_both_gives_5_detonations(farm):
    files = [_script(f"burst-{i}") for i in range(5)]
    before = farm.detonations()
    jobs = [(farm.hosts[i % 2], f"burst {i} {time.time_ns()}", files[i % 5]) for i in range(20)]
    with ThreadPoolExecutor(max_workers=6) as ex:
        replies = list(ex.map(lambda j: _send(j[0], j[1], "tool.sh", j[2]), jobs))
    assert replies == [{}] * 20
    for lab, subject, _ in jobs:
        assert _delivered(lab, "user@example.com", subject, timeout=120) is not None, subject
    from collections import Counter

    # (two logs, concatenated: compare counts, not positions)
    new = sorted((Counter(farm.detonations()) - Counter(before)).elements())
    assert new == sorted(_sha12(f) for f in files), new
    # both pool workers took part or one did all: either way each file ran exactly once
    print(f"\nburst: 20 messages, {len(new)} detonations; per pool: "
          f"{[len(DETONATED.findall((r / 'pool.log').read_text())) for r, _ in farm.pools]}")


def test_a_pool_worker_killed_mid_job_has_its_job_redelivered_and_the_message_answered(farm):
    a, _ = farm.hosts
    data = _script("slow-job", "sleep 8\necho finished")
    result: dict = {}

    def send() -> None:
        try:
            result["refused"] = _send(a, "killed pool", "slow.sh", data)
        except Exception as exc:  # an SMTP refusal or deferral is an answer too; recorded
            result["error"] = exc

    t = threading.Thread(target=send)
    t.start()
    end = time.monotonic() + 120
    busy = None
    while busy is None and time.monotonic() < end:
        busy = farm.busy_pool()
        time.sleep(0.05)
    assert busy is not None, "no pool worker started the job\n" + farm.pool_logs()[-3000:]
    root, proc = busy
    os.killpg(proc.pid, signal.SIGKILL)  # the pool worker and its slot, mid-job
    proc.wait(timeout=30)
    killed_at = time.monotonic()
    t.join(timeout=300)
    assert not t.is_alive(), "the SMTP transaction never got an answer"
    assert result.get("refused") == {}, result
    got = _delivered(a, "user@example.com", "killed pool")
    assert got is not None and got["X-Mailvm-Verdict"].startswith("clean"), got
    survivor = next(r for r, p in farm.pools if p is not proc)
    log = (survivor / "pool.log").read_text(errors="replace")
    assert "taken over from a consumer idle" in log, log[-3000:]
    # it ran to the end exactly once (the killed worker never finished it)
    assert farm.detonations().count(_sha12(data)) == 1
    print(f"\nkilled pool {root.name}; the message was answered {time.monotonic() - killed_at:.0f} s later")
