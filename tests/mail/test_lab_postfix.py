"""The lab Postfix is self-contained: it never edits the system's /etc/postfix (issue 12 item 9).

It used to append its configuration directory (and, once, a second ``compatibility_level``
line) to /etc/postfix/main.cf so that ``postqueue -c`` and ``postsuper -c`` would accept it,
and ran ``postfix set-permissions``, which resets the files Postfix shares with the system's
own instance.  As root, ``-c DIR`` needs no registration: this test starts and stops a lab
instance, puts a message on hold, lists and deletes it through ``-c DIR``, and checks that
every file under /etc/postfix is left exactly as it was (content, owner, mode, times).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import smtplib
import subprocess
import time
from pathlib import Path

import pytest

from mailvm.lab.common import free_port, lab_dir

pytestmark = [pytest.mark.postfix]

SYSTEM_DIR = Path("/etc/postfix")


def _snapshot(top: Path) -> dict[str, tuple]:
    """Every file and directory under ``top``: content hash, owner, mode, mtime and ctime."""
    out: dict[str, tuple] = {}
    if not top.exists():
        return out
    for path in [top, *sorted(top.rglob("*"))]:
        st = path.lstat()
        digest = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() and not path.is_symlink() else ""
        out[str(path)] = (digest, st.st_uid, st.st_gid, st.st_mode, st.st_mtime_ns, st.st_ctime_ns)
    return out


def _changed(before: dict[str, tuple], after: dict[str, tuple]) -> list[str]:
    return sorted(p for p in set(before) | set(after) if before.get(p) != after.get(p))


@pytest.fixture
def need_postfix():
    if shutil.which("postfix") is None:
        pytest.skip("postfix is not installed (scripts/setup.sh installs it)")
    if os.geteuid() != 0:
        pytest.skip("the lab Postfix needs root (it starts a master and delivers as nobody)")


def test_lab_start_and_stop_leave_etc_postfix_untouched(need_postfix):
    from mailvm.lab.postfix import LabPostfix

    before = _snapshot(SYSTEM_DIR)
    root = lab_dir("mailvm-labpf-")
    # a milter nobody listens on, with milter_default_action = quarantine: Postfix accepts the
    # message and puts it on hold, so postqueue/postsuper -c have something to work on
    lab = LabPostfix(root / "postfix", port=free_port(), milter=f"inet:127.0.0.1:{free_port()}",
                     milter_default_action="quarantine")
    try:
        lab.start()
        with smtplib.SMTP("127.0.0.1", lab.port, timeout=60) as smtp:
            assert smtp.sendmail("a@outside.test", ["u@lab.test"], b"Subject: held\r\n\r\nhello\r\n") == {}
        cfg = str(lab.config_dir)
        held = []
        end = time.monotonic() + 30
        while not held and time.monotonic() < end:
            res = subprocess.run(["postqueue", "-c", cfg, "-j"], capture_output=True, text=True, timeout=30)
            assert res.returncode == 0, res.stderr
            held = [json.loads(line) for line in res.stdout.splitlines() if line.strip()]
            held = [h for h in held if h.get("queue_name") == "hold"]
            time.sleep(0.2)
        assert len(held) == 1 and held[0]["recipients"][0]["address"] == "u@lab.test", held
        res = subprocess.run(["postsuper", "-c", cfg, "-d", held[0]["queue_id"], "hold"],
                             capture_output=True, text=True, timeout=30)
        assert res.returncode == 0 and "Deleted: 1 message" in res.stderr, res.stderr
    finally:
        lab.stop()
        shutil.rmtree(root, ignore_errors=True)
    assert _changed(before, _snapshot(SYSTEM_DIR)) == []
