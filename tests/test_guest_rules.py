"""Detonation rules over hand-written event lists (pure: no sandbox, no I/O but the docs table)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mailvm.guest.rules import ENGINE_FINDINGS, RULES, PAYLOAD_MARKER, RuleContext, RuleEngine, evaluate
from mailvm.verdict import score_findings

H = "/home/user"
DECOYS = tuple(f"{H}/Documents/d{i}.docx" for i in range(6))
CTX = RuleContext(sample_path="/work/s.sh", role="script", decoys=DECOYS)
PROGRAM = RuleContext(sample_path="/work/a.out", role="program")
VIEWER = RuleContext(sample_path="/work/x.docx", role="viewer", viewer_exes=frozenset({"soffice.bin"}))
WINDOWS = RuleContext(sample_path="/work/x.exe", role="program", platform="windows",
                      quiet_prefixes=(f"{H}/.wine/drive_c/windows", "/tmp/wine-*"))


def ids(events, ctx=CTX) -> set[str]:
    return {f.id for f in evaluate(events, ctx)}


def w(path, op="write", t=1.0, **kw):
    return {"t": t, "type": "file", "op": op, "path": path, "pid": 10, **kw}


def ex(path, argv=None, t=2.0, parent="", **kw):
    return {"t": t, "type": "exec", "path": path, "argv": argv or [path], "pid": 11, "parent_exe": parent, **kw}


def conn(ip, port, t=1.0, **kw):
    return {"t": t, "type": "connect", "family": "inet", "ip": ip, "port": port, "dst": f"{ip}:{port}", **kw}


# one (rule id, events, context) row per behaviour; each must raise exactly that rule (among others)
POSITIVE = [
    ("persistence_autostart", [w(f"{H}/.config/autostart/x.desktop", create=True)], CTX),
    ("persistence_autostart", [w("/etc/xdg/autostart/x.desktop", ok=False, err="EROFS")], CTX),
    ("persistence_cron", [ex("/usr/bin/crontab", ["crontab", "/tmp/c"])], CTX),
    ("persistence_cron", [w("/var/spool/cron/crontabs/user")], CTX),
    ("persistence_cron", [w("/usr/local/bin/crontab", op="probe", ok=False, err="ENOENT")], CTX),
    ("persistence_systemd", [w(f"{H}/.config/systemd/user/x.service")], CTX),
    ("persistence_systemd", [ex("/usr/bin/systemctl", ["systemctl", "--user", "enable", "x"])], CTX),
    ("persistence_shell_rc", [w(f"{H}/.bashrc")], CTX),
    ("persistence_shell_rc", [w("/tmp/x", op="rename", path2=f"{H}/.profile")], CTX),
    ("persistence_ld_preload", [w("/etc/ld.so.preload", ok=False, err="EROFS")], CTX),
    ("persistence_registry_run", [{"type": "reg_set", "key": r"HKCU\Software\Microsoft\Windows\CurrentVersion\Run",
                                   "value": "u", "data": r"C:\u.exe"}], WINDOWS),
    ("persistence_registry_run", [{"type": "reg_set", "value": "Shell",
                                   "key": r"HKLM\Software\Microsoft\Windows NT\CurrentVersion\Winlogon"}], WINDOWS),
    ("persistence_startup_folder",
     [w(f"{H}/.wine/drive_c/users/user/AppData/Roaming/Microsoft/Windows/Start Menu/Programs/Startup/u.lnk")],
     WINDOWS),
    ("ssh_authorized_keys", [w(f"{H}/.ssh/authorized_keys")], CTX),
    ("write_outside_workdir", [w(f"{H}/.local/bin/x")], CTX),
    ("write_outside_workdir", [w("/etc/hosts", ok=False, err="EROFS")], CTX),
    ("user_file_modified", [w(DECOYS[0])], CTX),
    ("mass_file_modification", [w(d, op="rename", path2=d + ".locked") for d in DECOYS[:5]], CTX),
    ("self_delete", [w("/work/s.sh", op="unlink")], CTX),
    ("credential_access", [w(f"{H}/.ssh/id_rsa", op="read")], CTX),
    ("credential_access", [w(f"{H}/.mozilla/firefox/p.default/logins.json", op="read")], CTX),
    ("credential_access", [w("/etc/shadow", op="read", ok=False, err="EACCES")], CTX),
    ("log_tampering", [w(f"{H}/.bash_history", op="unlink")], CTX),
    ("drop_execute", [w("/tmp/.x", create=True, t=1), ex("/tmp/.x", t=2)], CTX),
    ("drop_execute", [w("/tmp/p", t=1), ex("/bin/sh", ["sh", "/tmp/p"], t=2)], CTX),
    ("drop_execute", [w("/work/y", op="chmod", exec_bit=True, mode="0o755"), ex("/work/y")], CTX),
    ("download_execute", [{"t": 1, "type": "http", "served": "payload", "url": "http://x/p"},
                          w("/tmp/p", t=2), ex("/tmp/p", t=3)], CTX),
    ("download_execute", [ex("/bin/true", ["/bin/true", PAYLOAD_MARKER])], CTX),
    ("fileless_execution", [ex("/proc/self/fd/3")], CTX),
    ("shell_spawned", [ex("/bin/sh", ["sh", "-c", "id"], parent="/work/a.out")], PROGRAM),
    ("shell_spawned", [{"type": "exec", "src": "wine", "path": r"C:\windows\system32\cmd.exe",
                        "argv": ["cmd /c whoami"]}], WINDOWS),
    ("viewer_spawns_shell", [ex("/bin/sh", ["sh", "-c", "curl x|sh"], parent="/usr/lib/libreoffice/soffice.bin")],
     VIEWER),
    ("privilege_escalation_attempt", [ex("/usr/bin/sudo", ["sudo", "-n", "id"])], CTX),
    ("process_injection", [{"type": "ptrace", "request": "PTRACE_ATTACH", "target": 1, "pid": 10}], CTX),
    ("process_injection", [{"type": "inject", "call": "process_vm_writev", "target": 5}], CTX),
    ("process_injection", [w("/proc/1/mem")], CTX),
    ("anti_debug", [{"type": "ptrace", "request": "PTRACE_TRACEME", "ok": False, "err": "EPERM"}], CTX),
    ("anti_vm_probe", [w("/sys/class/dmi/id/product_name", op="read")], CTX),
    ("anti_vm_probe", [ex("/usr/bin/systemd-detect-virt")], CTX),
    ("cpu_info_probe", [w("/proc/cpuinfo", op="read")], CTX),
    ("long_sleep", [{"type": "sleep", "seconds": 600}], CTX),
    ("resource_exhaustion", [{"type": "clone_failed", "err": "EAGAIN"}] * 5, CTX),
    ("resource_exhaustion", [{"type": "fork", "child": i} for i in range(100)], CTX),
    ("listens_for_connections", [{"type": "bind", "family": "inet", "ip": "0.0.0.0", "port": 4444,
                                  "dst": "0.0.0.0:4444", "socket": "socket:[7]"},
                                 {"type": "listen", "socket": "socket:[7]"}], CTX),
    ("library_from_writable_dir", [{"type": "image", "path": "/tmp/x.so"}], CTX),
    ("library_from_writable_dir", [{"type": "image", "src": "wine", "path": r"Z:\work\evil.dll", "native": True}],
     WINDOWS),
    ("network_raw_ip", [conn("203.0.113.10", 4444)], CTX),
    ("network_raw_ip", [{"type": "sendto", "family": "inet", "ip": "198.51.100.7", "port": 9999}], CTX),
    ("network_resolved_host", [{"type": "dns", "name": "c2.example", "answer": "198.18.0.1"},
                               conn("198.18.0.1", 443)], CTX),
    ("dns_query", [{"type": "dns", "name": "c2.example", "qtype": "A"}], CTX),
    ("http_request", [{"type": "http", "method": "GET", "url": "http://c2.example/x"}], CTX),
    ("tls_connection", [{"type": "tls", "sni": "c2.example", "dst": "198.18.0.1:443"}], CTX),
]


@pytest.mark.parametrize("rule_id,events,ctx", POSITIVE, ids=[f"{r[0]}-{i}" for i, r in enumerate(POSITIVE)])
def test_rule_fires(rule_id, events, ctx):
    assert rule_id in ids(events, ctx)


def test_every_rule_has_a_positive_case():
    assert {r.id for r in RULES} == {row[0] for row in POSITIVE}


# look-alikes that must stay quiet (a 4th column names the only rules that must not fire)
NEGATIVE = [
    ("benign script", [ex("/usr/bin/python3", ["python3", "/work/s.py"]), w("/work/out.txt"),
                       w("/tmp/cache", op="mkdir"), w("/usr/lib/python3.11/os.py", op="read"),
                       w("/dev/null"), w("/proc/10/task/11/comm")], CTX),
    ("script runs a shell (normal for scripts)", [ex("/bin/sh", ["sh", "-c", "ls"], parent="/usr/bin/python3")],
     CTX),
    ("executing the sample itself", [ex("/work/a.out")], PROGRAM),
    ("exec before any write", [ex("/tmp/x", t=1), w("/tmp/x", t=2)], CTX),
    ("download but no execution", [{"t": 1, "type": "http", "served": "payload", "url": "http://x/p"},
                                   w("/tmp/p", t=2)], CTX, {"download_execute", "drop_execute"}),
    ("loopback and DNS server connections", [conn("127.0.0.1", 8080), conn("127.0.0.53", 53),
                                             conn("8.8.8.8", 53)], CTX),
    ("own host name lookup", [{"type": "dns_lookup", "name": "desktop-7f3a"}],
     RuleContext(ignore_names=frozenset({"desktop-7f3a"}))),
    ("four decoys are not mass modification", [w(d) for d in DECOYS[:4]], CTX, {"mass_file_modification"}),
    ("system libraries", [{"type": "image", "path": "/usr/lib/x86_64-linux-gnu/libc.so.6"}], CTX),
    ("the Wine sample and Wine's own files", [
        {"type": "image", "src": "wine", "path": r"Z:\work\x.exe", "native": True},
        {"type": "image", "src": "wine", "path": r"C:\windows\system32\kernel32.dll", "native": False},
        w(f"{H}/.wine/drive_c/windows/win.ini"), w("/tmp/wine-abc/server-1/lock"),
        w("/sys/class/dmi/id/sys_vendor", op="read"), w("/proc/cpuinfo", op="read"),
        {"type": "image", "path": "/tmp/wine-abc/server-1/tmpmap-1"},
        {"type": "reg_set", "key": r"HKLM\Software\Microsoft\Windows NT\CurrentVersion\Winlogon", "value": "Build"},
        {"type": "exec", "src": "wine", "path": r"C:\windows\system32\services.exe", "argv": ["services.exe"]},
    ], WINDOWS),
    ("unix socket listen", [{"type": "listen", "socket": "socket:[9]"}], CTX),
    ("short sleeps", [{"type": "sleep", "seconds": 5}], CTX),
    ("a few processes", [{"type": "fork", "child": i} for i in range(20)], CTX),
    ("many processes one after the other", [{"type": e, "child": i} for i in range(300) for e in ("fork", "exit")],
     CTX),
    ("cache files", [w(f"{H}/.cache/fontconfig/x.cache-8")], CTX),
    ("mkdir -p of an existing dir is not reported by the monitor; reads of ~/.bashrc are fine",
     [w(f"{H}/.bashrc", op="read")], CTX),
    ("crontab -l only lists", [ex("/usr/bin/crontab", ["crontab", "-l"])], CTX),
]


@pytest.mark.parametrize("row", NEGATIVE, ids=[n[0] for n in NEGATIVE])
def test_lookalikes_stay_quiet(row):
    """No finding at all, or (4th column) none of the named ones."""
    name, events, ctx, *forbidden = row
    found = ids(events, ctx)
    if forbidden:
        assert not found & forbidden[0]
    else:
        assert found == set()


def test_failed_attempts_are_marked_in_the_detail():
    [f] = [f for f in evaluate([w(f"{H}/.config/autostart/a.desktop", ok=False, err="EROFS")], CTX)
           if f.id == "persistence_autostart"]
    assert "attempt: EROFS" in f.detail


def test_one_finding_per_rule_with_a_count():
    events = [conn("203.0.113.10", p) for p in range(4000, 4010)]
    [f] = evaluate(events, CTX)
    assert f.id == "network_raw_ip" and f.severity == 6
    assert f.detail.count("203.0.113.10") == 3 and f.detail.endswith("(+7 more)")


def test_engine_reports_new_findings_once_and_in_order():
    eng = RuleEngine(CTX)
    assert [f.id for f in eng.feed(w(f"{H}/.bashrc"))] == ["persistence_shell_rc", "write_outside_workdir"]
    assert eng.feed(w(f"{H}/.bashrc")) == []
    assert [f.id for f in eng.findings()] == ["persistence_shell_rc", "write_outside_workdir"]


def test_resolved_name_is_in_the_detail_and_not_a_raw_ip():
    fs = evaluate([{"type": "dns", "name": "updates.example.test", "answer": "198.18.0.9"},
                   conn("198.18.0.9", 80),
                   {"type": "tcp", "ip": "198.18.0.9", "port": 80, "dst": "198.18.0.9:80",
                    "name": "updates.example.test"}], CTX)
    assert {f.id for f in fs} == {"dns_query", "network_resolved_host"}
    assert "updates.example.test -> 198.18.0.9:80" in next(f for f in fs if f.id == "network_resolved_host").detail


def test_scores_of_typical_combinations():
    dropper = [{"t": 1, "type": "dns", "name": "x.example", "answer": "198.18.0.1"}, conn("198.18.0.1", 80, t=1.1),
               {"t": 1.2, "type": "http", "method": "GET", "url": "http://x.example/p", "served": "payload"},
               w("/tmp/p", t=1.3), ex("/tmp/p", t=1.4)]
    assert score_findings(evaluate(dropper, CTX)) == ("malicious", 10)
    assert score_findings(evaluate([conn("203.0.113.10", 4444)], CTX)) == ("suspicious", 6)
    assert score_findings(evaluate([{"type": "dns", "name": "x.example"}], CTX)) == ("clean", 1)


EVENT = st.dictionaries(
    st.sampled_from(["t", "type", "op", "path", "path2", "pid", "ip", "port", "argv", "name", "answer", "key",
                     "value", "ok", "err", "seconds", "src", "family", "socket", "request", "served", "native"]),
    st.one_of(st.none(), st.booleans(), st.integers(-5, 70000), st.floats(allow_nan=True), st.text(max_size=30),
              st.lists(st.text(max_size=10), max_size=4),
              st.sampled_from(["file", "exec", "connect", "dns", "http", "reg_set", "image", "fork", "tcp",
                               "write", "rename", "/home/user/.bashrc", "203.0.113.1", "198.18.0.1", "wine"])),
    max_size=10)


@settings(max_examples=300, deadline=None)
@given(st.lists(EVENT, max_size=20))
def test_hostile_events_never_raise(events):
    for ctx in (CTX, WINDOWS, VIEWER):
        for f in evaluate(events, ctx):
            assert 0 <= f.severity <= 10


def test_docs_table_lists_every_rule_with_its_severity():
    doc = (Path(__file__).resolve().parents[1] / "docs" / "guest-rules.md").read_text()
    rows = {m.group(1): int(m.group(2)) for m in re.finditer(r"^\|\s*`([a-z_]+)`\s*\|\s*(\d+)\s*\|", doc, re.M)}
    expected = {r.id: r.severity for r in RULES} | {fid: sev for fid, sev, _ in ENGINE_FINDINGS}
    assert rows == expected
