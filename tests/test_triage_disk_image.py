"""Disk images (ISO) in mail: the files inside are triaged AND detonated, not only listed.

An ISO built with xorriso (as the 2022-2023 ISO campaigns shipped their payloads) carries
a shell script; ``mvctl scan`` with the process backend must extract it, triage it, run it
in the sandbox and report its behaviour (``source: detonation``).  The image itself has no
launcher: whatever its report says, it is never called detonated without having run."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from mailvm.config import PoolConfig
from mailvm.vmpool.backends.process import ProcessBackend

pytestmark = [pytest.mark.sandbox, pytest.mark.slow]


def mvctl(config: Path, *args: str) -> subprocess.CompletedProcess:
    """The CLI as an administrator runs it."""
    return subprocess.run([sys.executable, "-m", "mailvm.cli.mvctl", "-c", str(config), *args],
                          capture_output=True, timeout=300)


def as_json(res: subprocess.CompletedProcess):
    assert res.stdout, res.stderr.decode(errors="replace")
    return json.loads(res.stdout)


def _iso(tmp_path: Path, files: dict[str, bytes]) -> Path:
    if shutil.which("xorriso") is None:
        pytest.skip("xorriso is not installed (scripts/setup.sh installs it)")
    root = tmp_path / "isoroot"
    root.mkdir()
    for name, data in files.items():
        (root / name).write_bytes(data)
        (root / name).chmod(0o755)
    out = tmp_path / "Invoice_0412.iso"
    subprocess.run(["xorriso", "-as", "mkisofs", "-quiet", "-R", "-J", "-V", "INVOICE", "-o", str(out), str(root)],
                   check=True, capture_output=True, timeout=120)
    return out


@pytest.fixture
def config(tmp_path: Path) -> Path:
    why = ProcessBackend.probe(PoolConfig())
    if why:
        pytest.skip(why)
    cfg = tmp_path / "mailvm.toml"
    cfg.write_text(f"""
[spool]
dir = "{tmp_path}/spool"
[scantable]
path = "{tmp_path}/table"
[links]
enabled = false
[pool]
backend = "process"
slots = 1
work_dir = "{tmp_path}/pool"
job_timeout_s = 20
idle_s = 2
[triage]
yara_rules_dir = "{tmp_path}/yara"
""")
    return cfg


def test_script_inside_an_iso_is_detonated(config, tmp_path):
    # persistence plus a connection to a raw address, written so that static triage alone is not conclusive
    evil = (b"#!/bin/sh\nd=$HOME/.con\"\"fig/auto\"\"start\nmkdir -p \"$d\"\n"
            b"echo '[Desktop Entry]' > \"$d/u.desktop\"\nh=203.0.113; p=44\n"
            b"python3 -c \"import socket,sys;s=socket.socket();s.settimeout(2);"
            b"s.connect((sys.argv[1]+'.10',int(sys.argv[2]+'44')))\" $h $p || true\n# " + tmp_path.name.encode() + b"\n")
    iso = _iso(tmp_path, {"invoice.sh": evil, "readme.txt": b"Open invoice.sh to view the invoice.\n"})
    res = mvctl(config, "scan", "--json", str(iso))
    report = as_json(res)
    by_sha = {a["sha256"]: a for a in report["artifacts"]}
    inner = by_sha[hashlib.sha256(evil).hexdigest()]
    assert inner["kind"] == "script" and "invoice.sh" in inner["origin"], inner
    assert inner["source"] == "detonation" and inner["verdict"] == "malicious", inner["findings"]
    assert {"persistence_autostart", "network_raw_ip"} <= {f["id"] for f in inner["findings"]}, inner["findings"]
    image = next(a for a in report["artifacts"] if a["kind"] == "disk_image")
    if any(f["id"] == "not_executed" for f in image["findings"]):
        assert image["source"] != "detonation", image  # no launcher ran: never reported as detonated
    assert report["verdict"] == "malicious" and res.returncode == 1
