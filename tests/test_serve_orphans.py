"""No process outlives ``mailvm serve`` (issue 12 items 5 and 11): its pool service, scan workers
and the pool's agents die with it, workers obey SIGTERM, and a restart cleans the spool.

These run the real ``mailvm serve`` (process backend) on loopback, without Postfix.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mailvm.config import PoolConfig
from mailvm.lab.common import free_port, lab_config, wait_port
from mailvm.procfs import find_processes, is_gone, process_tree, start_ticks
from mailvm.vmpool.backends.process import ProcessBackend


def test_die_with_parent_unblocks_sigterm():
    """A worker forked from a thread that blocks SIGTERM (libmilter's) used to inherit the block:
    SIG_DFL alone did not make it obey ``kill``."""
    code = ("import os, signal\n"
            "signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})\n"
            "from mailvm.milter.pipeline import die_with_parent\n"
            "die_with_parent()\n"
            "os.kill(os.getpid(), signal.SIGTERM)\n"
            "import time; time.sleep(5); print('survived')\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert res.returncode == -signal.SIGTERM and "survived" not in res.stdout


def test_die_with_parent_ends_a_child_whose_parent_is_already_gone():
    code = ("from mailvm.milter.pipeline import die_with_parent\n"
            "die_with_parent(expected_parent=1 if __import__('os').getppid() != 1 else 2)\nprint('running')\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert res.returncode == 1 and "running" not in res.stdout


def _descendants(pid: int) -> dict[int, int | None]:
    return {p: start_ticks(p) for p in process_tree(pid) if p != pid}


def _alive(procs: dict[int, int | None]) -> list[int]:
    return [p for p, t in procs.items() if not is_gone(p) and start_ticks(p) == t]


@pytest.mark.sandbox
@pytest.mark.slow
def _mailvm_user_uid() -> int | None:
    import pwd

    try:
        return pwd.getpwnam("mailvm").pw_uid
    except KeyError:
        return None


@pytest.mark.parametrize("dropped", [False, True], ids=["serve-root", "serve-as-mailvm"])
def test_kill_9_of_serve_leaves_no_process_and_a_restart_cleans_the_spool(tmp_path, dropped):
    """Also when serve gave up root (mailvm.privilege.plan_service): the kernel does not deliver
    PR_SET_PDEATHSIG from such a parent to its root children, the pool supervisor's poll must."""
    reason = ProcessBackend.probe(PoolConfig())
    if reason:
        pytest.skip(f"process backend cannot run here: {reason}")
    if dropped and (os.geteuid() != 0 or _mailvm_user_uid() is None):
        pytest.skip("needs root and the mailvm user (make setup creates it) for serve to drop root")
    if dropped:  # pytest's tmp_path is 0700 root: the mailvm user could not reach it (serve stays root)
        import shutil

        from mailvm.lab.common import lab_dir

        root = lab_dir("mailvm-orphans-")
        request_cleanup = lambda: shutil.rmtree(root, ignore_errors=True)  # noqa: E731
    else:
        root = tmp_path
        request_cleanup = lambda: None  # noqa: E731
    (root / "policy.d").mkdir()
    port = free_port()
    config = root / "mailvm.toml"
    config.write_text(lab_config(root, port, backend="process", slots=2, workers=2))
    spool = root / "spool"
    spool.mkdir()
    (spool / "msg-left.eml").write_bytes(b"Subject: left by a killed serve\r\n\r\nx\r\n")
    (spool / "msg-dir").mkdir()
    (spool / "body-abc").write_bytes(b"partial")
    log = open(root / "serve.log", "ab")
    serve = subprocess.Popen([sys.executable, "-m", "mailvm.cli.mailvm_main", "-c", str(config), "-v", "serve"],
                             stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_port(port, 90, alive=lambda: serve.poll() is None)
        assert sorted(os.listdir(spool)) == []  # the copies of the killed run are gone
        # wait for the whole tree: two scan workers, the pool service and its two idle agents
        end = time.monotonic() + 90
        while time.monotonic() < end and len(find_processes(b"mailvm.guest.agent", str(root).encode())) < 2:
            time.sleep(0.2)
        tree = _descendants(serve.pid)
        agents = [p for p in find_processes(str(root).encode()) if p != serve.pid]
        assert len(agents) >= 2, (root / "serve.log").read_text()[-2000:]
        assert len(_workers(serve.pid, 2)) == 2 and set(_workers(serve.pid, 2)) <= set(tree)
        end = time.monotonic() + 30
        while dropped and time.monotonic() < end and _uid(serve.pid) != _mailvm_user_uid():
            time.sleep(0.1)
        assert _uid(serve.pid) == (_mailvm_user_uid() if dropped else 0), (root / "serve.log").read_text()[-2000:]
        os.kill(serve.pid, signal.SIGKILL)
        serve.wait(timeout=30)
        end = time.monotonic() + 30
        while time.monotonic() < end and _alive(tree):
            time.sleep(0.2)
        left = _alive(tree)
        assert left == [], [Path(f"/proc/{p}/cmdline").read_bytes() for p in left if os.path.exists(f"/proc/{p}")]
        assert [p for p in find_processes(str(root).encode()) if not is_gone(p)] == []
    finally:
        if serve.poll() is None:
            os.killpg(serve.pid, signal.SIGKILL)
            serve.wait()
        for p in find_processes(str(root).encode()):
            try:
                os.kill(p, signal.SIGKILL)
            except OSError:
                pass
        request_cleanup()


def _uid(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("Uid:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


@pytest.mark.slow
def test_a_scan_worker_obeys_sigterm_and_is_replaced(tmp_path):
    """Workers used to block SIGTERM (one survived 223 s after a worker crash)."""
    root = tmp_path
    (root / "policy.d").mkdir()
    port = free_port()
    config = root / "mailvm.toml"
    config.write_text(lab_config(root, port, backend="process", slots=1, workers=2)
                      .replace("[milter]\n", "[milter]\npool_service = false\n"))
    log = open(root / "serve.log", "ab")
    serve = subprocess.Popen([sys.executable, "-m", "mailvm.cli.mailvm_main", "-c", str(config), "-v", "serve"],
                             stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_port(port, 90, alive=lambda: serve.poll() is None)
        workers = _workers(serve.pid, 2)
        victim = workers[0]
        t = start_ticks(victim)
        os.kill(victim, signal.SIGTERM)
        end = time.monotonic() + 20
        while time.monotonic() < end and not (is_gone(victim) or start_ticks(victim) != t):
            time.sleep(0.1)
        assert is_gone(victim) or start_ticks(victim) != t, "the worker ignored SIGTERM"
        end = time.monotonic() + 30  # replaced: two live workers again, the victim not among them
        while time.monotonic() < end and not (len(w := _workers(serve.pid, 2)) == 2 and victim not in w):
            time.sleep(0.2)
        assert len(w) == 2 and victim not in w
    finally:
        os.killpg(serve.pid, signal.SIGKILL)
        serve.wait()


def _parent(pid: int) -> int:
    from mailvm.procfs import stat_fields

    fields = stat_fields(pid) or []
    return int(fields[1]) if len(fields) > 1 else 0


def _workers(serve_pid: int, n: int, timeout: float = 60) -> list[int]:
    """The scan workers: children of the forkserver that ``mailvm serve`` started."""
    end = time.monotonic() + timeout
    found: list[int] = []
    while time.monotonic() < end:
        servers = [p for p in process_tree(serve_pid)
                   if b"forkserver" in _cmdline(p) and _parent(p) == serve_pid]
        found = [p for s in servers for p in process_tree(s) if p != s and not is_gone(p)]
        if len(found) >= n:
            return found
        time.sleep(0.2)
    raise AssertionError(f"{len(found)} scan workers, expected {n}")


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def test_housekeeping_sweeps_only_spool_entries_older_than_any_scan(tmp_path):
    """A scan worker killed at its hard limit leaves its message's extraction directory (``msg-*``);
    serve's hourly housekeeping removes such leftovers without touching a scan that may still run."""
    from mailvm.cli.mailvm_main import SPOOL_STALE_S, _clean_spool

    spool = tmp_path / "spool"
    old_dir, young_dir, old_copy = spool / "msg-old", spool / "msg-young", spool / "msg-old.eml"
    (old_dir / "sub").mkdir(parents=True)
    (old_dir / "sub" / "a.bin").write_bytes(b"x")
    young_dir.mkdir()
    old_copy.write_bytes(b"Subject: x\r\n\r\n")
    other = spool / "keep.txt"  # not a spool entry of mailvm's: never removed
    other.write_text("x")
    past = time.time() - SPOOL_STALE_S - 60
    for p in (old_dir, old_copy, other):
        os.utime(p, (past, past))
    assert _clean_spool(str(spool), min_age_s=SPOOL_STALE_S) == 2
    assert sorted(p.name for p in spool.iterdir()) == ["keep.txt", "msg-young"]
    assert _clean_spool(str(spool)) == 1  # at start: everything of mailvm's goes
    assert [p.name for p in spool.iterdir()] == ["keep.txt"]
