"""Least privilege of the scan workers (mailvm.privilege): who they become, what they may reach."""

from __future__ import annotations

import os
import re
import shutil
import pwd
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from mailvm.config import parse_config
from mailvm.privilege import SHARED_MODE, WorkerIdentity, plan_workers, share_dirs

ROOT = os.geteuid() == 0


def _user() -> pwd.struct_passwd | None:
    try:
        return pwd.getpwnam("mailvm")
    except KeyError:
        return None


needs_user = pytest.mark.skipif(not ROOT or _user() is None,
                                reason="needs root and the mailvm user (make setup creates it)")


@pytest.fixture
def open_dir():
    """A directory the mailvm user can reach (pytest's tmp_path is under a 0700 directory)."""
    import shutil

    from mailvm.lab.common import lab_dir

    d = lab_dir("mailvm-priv-")
    yield d
    shutil.rmtree(d, ignore_errors=True)


def _cfg(tmp_path: Path, **milter):
    return parse_config({
        "spool": {"dir": str(tmp_path / "spool")},
        "scantable": {"path": str(tmp_path / "table")},
        "pool": {"work_dir": str(tmp_path / "pool")},
        "triage": {"yara_rules_dir": str(tmp_path / "yara")},
        "milter": {k: v for k, v in milter.items()},
    }, "test.toml")


def test_worker_user_is_validated_where_it_is_declared(tmp_path):
    from mailvm.config import ConfigError

    with pytest.raises(ConfigError, match="milter.worker_user"):
        _cfg(tmp_path, worker_user="Bad User!")
    assert plan_workers(_cfg(tmp_path, worker_user=""))[0] is None


@needs_user
def test_plan_names_a_missing_user_and_a_closed_directory(open_dir):
    tmp_path = open_dir
    ident, why = plan_workers(_cfg(tmp_path, worker_user="no-such-user-x"))
    assert ident is None and "does not exist" in why
    closed = tmp_path / "closed"
    closed.mkdir(mode=0o700)
    cfg = _cfg(tmp_path)
    cfg.spool.dir = str(closed / "spool")
    ident, why = plan_workers(cfg)
    assert ident is None and str(closed) in why and "closed to it" in why


@needs_user
def test_share_dirs_gives_the_worker_group_the_shared_directories_and_repairs_old_files(open_dir):
    tmp_path = open_dir
    cfg = _cfg(tmp_path)
    table = Path(cfg.scantable.path)
    table.mkdir()
    old = table / "cache.db"
    old.write_bytes(b"x")
    os.chmod(old, 0o600)  # what an earlier run as root left
    ident, why = plan_workers(cfg)
    if ident is None:
        pytest.skip(f"the workers cannot drop here: {why}")
    assert share_dirs(cfg, ident) == []
    for d in (Path(cfg.spool.dir), table, Path(cfg.pool.work_dir) / "jobs"):
        st = os.stat(d)
        assert st.st_gid == ident.gid and stat.S_IMODE(st.st_mode) == SHARED_MODE, d
    st = os.stat(old)
    assert st.st_gid == ident.gid and st.st_mode & stat.S_IRGRP and st.st_mode & stat.S_IWGRP
    assert os.stat(cfg.pool.work_dir).st_mode & stat.S_IXGRP  # passed through, not opened up


DROP = r"""
import json, os, resource, sys
from mailvm.privilege import WorkerIdentity, drop_privileges
ident = WorkerIdentity(**json.loads(sys.argv[1]))
drop_privileges(ident)
out = {"res": os.getresuid(), "groups": os.getgroups(), "umask": os.umask(0o007),
       "core": resource.getrlimit(resource.RLIMIT_CORE), "fsize": resource.getrlimit(resource.RLIMIT_FSIZE),
       "nnp": [l.split()[1] for l in open("/proc/self/status") if l.startswith("NoNewPrivs")][0]}
try:
    os.setuid(0)
    out["back_to_root"] = True
except PermissionError:
    out["back_to_root"] = False
try:
    open("/etc/shadow").read(1)
    out["shadow"] = True
except PermissionError:
    out["shadow"] = False
print(json.dumps(out))
"""


@needs_user
def test_a_dropped_worker_cannot_become_root_again_and_runs_with_limits():
    import json

    pw = _user()
    ident = WorkerIdentity("mailvm", pw.pw_uid, pw.pw_gid, max_file_bytes=1 << 30, max_address_space=8 << 30)
    r = subprocess.run([sys.executable, "-c", DROP, json.dumps(ident.__dict__)], capture_output=True, text=True,
                       timeout=60, cwd="/")
    if r.returncode != 0 and "No module named" in r.stderr:
        pytest.skip(f"this interpreter is not readable by mailvm: {r.stderr.strip()[-200:]}")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["res"] == [pw.pw_uid] * 3 and out["groups"] == [pw.pw_gid]
    assert out["back_to_root"] is False and out["shadow"] is False
    assert out["umask"] == 0o007 and out["core"] == [0, 0] and out["fsize"] == [1 << 30, 1 << 30]
    assert out["nnp"] == "1"


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_the_units_exposure_does_not_get_worse(tmp_path):
    """systemd-analyze's offline score of the shipped unit (docs/operations.md: 8.4, from 9.6)."""
    unit = tmp_path / "mailvm.service"
    unit.write_text((Path(__file__).resolve().parents[1] / "contrib" / "postfix" / "mailvm.service").read_text())
    r = subprocess.run(["systemd-analyze", "security", "--offline=true", str(unit)], capture_output=True,
                       text=True, timeout=120)
    m = re.search(r"Overall exposure level for mailvm.service: ([0-9.]+)", r.stdout + r.stderr)
    if m is None:
        pytest.skip(f"this systemd-analyze cannot score a unit offline: {(r.stdout + r.stderr).strip()[-200:]}")
    assert float(m.group(1)) <= 8.4, r.stdout[-2000:]
