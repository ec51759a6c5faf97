"""Scan workers: a hard limit per message kills and replaces a stuck worker, a crash is retried once,
and workers die with their parent (issue 12 items 3 and 11)."""

from __future__ import annotations

import os
import signal
import time

import pytest

from job_helpers import settings
from mailvm.config import parse_config
from mailvm.milter import pipeline
from mailvm.milter.service import MilterService


def _service(tmp_path, workers=1):
    cfg_path = tmp_path / "mailvm.toml"
    cfg_path.write_text(f'[spool]\ndir = "{tmp_path}/spool"\n[scantable]\npath = "{tmp_path}/t"\n'
                        f'[pool]\nwork_dir = "{tmp_path}/pool"\n[links]\nenabled = false\n')
    cfg = parse_config({"spool": {"dir": str(tmp_path / "spool")}})
    svc = MilterService(cfg, str(cfg_path), None, None, b"k" * 32, workers=workers)
    svc.start()
    return svc


def _stuck(job):  # stands in for an analyzer that never returns on a hostile file
    time.sleep(3600)


def _crash_once(job):
    flag = job.path + ".crashed"
    if not os.path.exists(flag):
        open(flag, "w").close()
        os.kill(os.getpid(), signal.SIGKILL)
    return {"verdict": "clean", "score": 0, "findings": [], "artifacts": []}


@pytest.mark.slow
def test_a_stuck_scan_is_killed_at_the_hard_limit_and_the_worker_replaced(tmp_path, monkeypatch):
    svc = _service(tmp_path)
    try:
        monkeypatch.setattr("mailvm.milter.service.scan_path", _stuck)
        t0 = time.monotonic()
        assert svc._run_pipeline(b"Subject: x\r\n\r\nhi\r\n", settings(), 0, False, None,
                                 time.monotonic() + 3, "t") is None
        assert time.monotonic() - t0 < 30
        # the pool still answers: the stuck worker was replaced, not leaked
        monkeypatch.setattr("mailvm.milter.service.scan_path", pipeline.scan_path)
        report = svc._run_pipeline(b"Subject: x\r\n\r\nhello\r\n", settings(detonate=False),
                                   time.monotonic() + 20, False, None, time.monotonic() + 60, "t")
        assert report is not None and report["verdict"] == "clean"
    finally:
        svc.close()


@pytest.mark.slow
def test_a_worker_crash_is_retried_once_on_a_fresh_worker(tmp_path, monkeypatch):
    svc = _service(tmp_path)
    try:
        monkeypatch.setattr("mailvm.milter.service.scan_path", _crash_once)
        report = svc._run_pipeline(b"Subject: x\r\n\r\nhi\r\n", settings(), 0, False, None,
                                   time.monotonic() + 60, "t")
        assert report is not None and report["verdict"] == "clean"
    finally:
        svc.close()


def test_die_with_parent_sets_the_death_signal():
    import subprocess
    import sys

    code = ("from mailvm.milter.pipeline import die_with_parent; import ctypes, signal\n"
            "die_with_parent(); v = ctypes.c_int(); libc = ctypes.CDLL(None)\n"
            "libc.prctl(2, ctypes.byref(v), 0, 0, 0); print(v.value)")  # PR_GET_PDEATHSIG
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert int(out) == int(signal.SIGKILL)


@pytest.mark.slow
def test_an_idle_worker_killed_does_not_fail_the_next_message(tmp_path):
    """Pebble stops the whole pool when a worker dies while no task runs; the service starts a new
    one (under its lock, the old workers stopped) and the next message is scanned as usual."""
    from mailvm.procfs import is_gone

    svc = _service(tmp_path, workers=2)
    try:
        args = lambda: (settings(detonate=False), time.monotonic() + 30, False, None, time.monotonic() + 60, "t")  # noqa: E731
        assert svc._run_pipeline(b"Subject: x\r\n\r\nhi\r\n", *args()) is not None
        old = svc._executor
        victims = [w.pid for w in old._pool_manager.worker_manager.workers.values()]
        os.kill(victims[0], signal.SIGKILL)
        report = svc._run_pipeline(b"Subject: y\r\n\r\nhello\r\n", *args())
        assert report is not None and report["verdict"] == "clean"
        end = time.monotonic() + 30
        while time.monotonic() < end and not all(is_gone(p) for p in victims):
            time.sleep(0.1)
        assert all(is_gone(p) for p in victims)  # the old pool's other worker was stopped, not leaked
    finally:
        svc.close()
