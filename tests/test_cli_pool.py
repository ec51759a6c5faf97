"""``mvctl pool status``: what an administrator reads from a pool's status.json."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from mailvm.cli.mvctl import main as mvctl
from mailvm.vmpool.pool import STATUS_FILE


def _setup(tmp_path: Path, details: dict, pid: int, age_s: float = 0.0) -> Path:
    work = tmp_path / "pool"
    work.mkdir()
    cfg = tmp_path / "mailvm.toml"
    cfg.write_text(f'[pool]\nwork_dir = "{work}"\n')
    status = {
        "pid": pid, "updated_at": time.time() - age_s, "state": "running",
        "backend": {"name": "qemu", "isolation": "VM (TCG)", "accel": "tcg", "details": details},
        "slots": {"target": 2, "ready": 2, "busy": 0, "starting": 0}, "queue": 0,
        "jobs": {"done": 3, "failed": 0, "retried": 0, "verdicts": {}},
        "handover_ms": {"n": 3, "median": 1.2, "p95": 1.9},
    }
    (work / STATUS_FILE).write_text(json.dumps(status))
    return cfg


def test_status_shows_accelerator_image_switch_user_and_warnings(tmp_path, capsys):
    details = {"image_version": "aaaa1111", "image_pending": "bbbb2222", "image_error": "", "wine": True,
               "guest_mem_mib": 512,
               "template_created_at": time.time() - 7200, "launcher": "raw", "qemu_user": "root",
               "warnings": ["QEMU runs as root (pool.qemu_user = root): a guest escape would own the host"]}
    cfg = _setup(tmp_path, details, os.getpid())
    assert mvctl(["-c", str(cfg), "pool", "status"]) == 0
    out = capsys.readouterr().out
    assert "TCG" in out and "software emulation" in out
    assert "image      aaaa1111 with Wine, guest RAM 512 MiB   (switching to bbbb2222" in out
    assert "template   2.0 h old" in out
    assert "qemu user  root" in out
    assert "WARNING    QEMU runs as root" in out
    assert "handover   median 1.2 ms, p95 1.9 ms over 3" in out


def test_status_of_a_dead_pool_exits_2_and_reports_an_image_error(tmp_path, capsys):
    details = {"image_version": "aaaa1111", "image_error": "image cccc: template boot failed"}
    cfg = _setup(tmp_path, details, pid=2 ** 22 + 17, age_s=120)  # no such process
    assert mvctl(["-c", str(cfg), "pool", "status"]) == 2
    out = capsys.readouterr().out
    assert "NOT RUNNING" in out
    assert "WARNING    the newest image cannot be used: image cccc: template boot failed" in out
    assert mvctl(["-c", str(cfg), "pool", "status", "--json"]) == 2
    assert json.loads(capsys.readouterr().out)["running"] is False
