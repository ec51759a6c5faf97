"""The milter's UNIX socket when ``mailvm serve`` gives up root (docs/operations.md).

libmilter creates the socket after the drop, as the milter user: the directory made before the
drop (owner mailvm, the MTA's group, set-group-id 2750) gives it the MTA's group, and serve sets
its mode; on SIGTERM serve removes it.  A real ``mailvm serve`` (no pool) on a socket under /var/tmp.
"""

from __future__ import annotations

import grp
import os
import pwd
import shutil
import signal
import stat
import subprocess
import sys
import time

import pytest

from mailvm.lab.common import lab_config, lab_dir


def _ids() -> tuple[int, int] | None:
    try:
        return pwd.getpwnam("mailvm").pw_uid, grp.getgrnam("postfix").gr_gid
    except KeyError:
        return None


@pytest.mark.skipif(os.geteuid() != 0, reason="serve drops root only when it starts as root")
@pytest.mark.skipif(_ids() is None, reason="needs the mailvm user and the postfix group (make setup makes both)")
def test_unix_socket_is_the_mtas_after_the_drop_and_removed_at_stop():
    uid, postfix_gid = _ids()
    root = lab_dir("mailvm-sock-")
    try:
        (root / "policy.d").mkdir()
        sock = root / "spool" / "mailvm" / "mailvm.sock"
        text = lab_config(root, 1, backend="process", slots=1, workers=1)
        text = text.replace('socket = "inet:1@127.0.0.1"', f'socket = "unix:{sock}"')
        text = text.replace("[milter]\n", "[milter]\npool_service = false\n", 1)
        (root / "mailvm.toml").write_text(text)
        log = open(root / "serve.log", "ab")
        serve = subprocess.Popen([sys.executable, "-m", "mailvm.cli.mailvm_main", "-c", str(root / "mailvm.toml"),
                                  "-v", "serve"], stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            end = time.monotonic() + 60
            while time.monotonic() < end and not (sock.exists() and "milter socket" in (root / "serve.log").read_text()):
                assert serve.poll() is None, (root / "serve.log").read_text()[-2000:]
                time.sleep(0.1)
            st, dst = os.stat(sock), os.stat(sock.parent)
            assert stat.S_ISSOCK(st.st_mode) and (st.st_uid, st.st_gid) == (uid, postfix_gid)
            assert stat.S_IMODE(st.st_mode) == 0o660
            assert (dst.st_uid, dst.st_gid, stat.S_IMODE(dst.st_mode)) == (uid, postfix_gid, 0o2750)
            assert "now runs as mailvm" in (root / "serve.log").read_text()
            serve.send_signal(signal.SIGTERM)
            serve.wait(timeout=60)
            assert not sock.exists(), "serve left its socket behind"
        finally:
            if serve.poll() is None:
                os.killpg(serve.pid, signal.SIGKILL)
                serve.wait()
    finally:
        shutil.rmtree(root, ignore_errors=True)
