"""Office documents detonated in LibreOffice: the profile and its hook, the trace, the macro evidence and who
decides, the document rules, and real documents opened in the process backend's sandbox.

Every document is built by the test itself (tests/office_builder.py: ODF with a Basic macro bound to "Open
Document", OOXML with a VBA project written here).  The macros only run ``sh -c id``-like commands: harmless
outside the sandbox too.  The sandbox tests carry ``sandbox`` and ``slow`` and skip, saying why, where
LibreOffice or the sandbox tools are missing.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
import zipfile
from pathlib import Path

import pytest

from mailvm.guest import docrules, execproof, office
from mailvm.guest import launcher as L
from mailvm.guest.detonate import detonate
from mailvm.guest.rules import RULES, RuleContext, evaluate
from mailvm.guest.sandbox import sandbox_tools

sys.path.insert(0, str(Path(__file__).parent))
from office_builder import docx, odt, vba_project, xlsx  # noqa: E402

# ------------------------------------------------------------------ macros of the crafted documents

#: a Word auto-open macro that starts a shell (VBA's Shell, as maldocs do)
VBA_SHELL = 'Private Sub Document_Open()\n    Shell "/bin/sh -c ""id > /tmp/owned; uname -a"""\nEnd Sub\n'
#: the same through UNO, the service name split (olevba sees no Shell/system keyword, so static triage alone is
#: not conclusive and the scan detonates it)
VBA_UNO_SHELL = ('Sub AutoOpen()\n    Dim o\n    Set o = createUnoService("com.sun.star.sy" & "stem.SystemShellExecute")\n'
                 '    o.execute("/bin/sh", "-c ""id > /tmp/owned""", 1)\nEnd Sub\n')
#: Windows-only: LibreOffice cannot run it (the static analysis must decide)
VBA_WSH = 'Private Sub Document_Open()\n    CreateObject("WScript.Shell").Run "powershell -enc AAAA"\nEnd Sub\n'
BASIC_SHELL = 'Shell("/bin/sh", 0, "-c ""id > /tmp/owned""")'


# ------------------------------------------------------------------ pure: the builder, the profile, the trace


def test_vba_project_reads_back_with_olevba(tmp_path):
    from oletools.olevba import VBA_Parser
    p = tmp_path / "a.docm"
    p.write_bytes(docx("x", vba={"ThisDocument": VBA_SHELL, "Module1": "Sub AutoOpen()\nEnd Sub\n"}))
    vp = VBA_Parser(str(p))
    try:
        codes = {name: code for _f, _s, name, code in vp.extract_macros()}
        kinds = {(t, kw) for t, kw, _d in vp.analyze_macros()}
    finally:
        vp.close()
    assert "Document_Open" in codes["ThisDocument.cls"] and "AutoOpen" in codes["Module1.bas"]
    assert ("AutoExec", "Document_Open") in kinds and ("AutoExec", "AutoOpen") in kinds


def test_profile_files_are_well_formed_and_lower_macro_security():
    files = office.profile_files()
    for rel, text in files.items():
        ET.fromstring(text.split("\n", 2)[-1] if "<!DOCTYPE" in text else text.encode())
    xcu = files["registrymodifications.xcu"]
    assert '<prop oor:name="MacroSecurityLevel" oor:op="fuse"><value>0</value>' in xcu
    assert "ooSetupInstCompleted" in xcu and "ooSetupSystemLocale" in xcu  # no preset copy, no paperconf
    assert "Standard.MailvmHook.OnLoad" in xcu
    assert "MailvmHook" in files["basic/Standard/script.xlb"]
    assert "Sub OnLoad(oEvent As Object)" in office.HOOK_BASIC and office.TRACE_REL in office.HOOK_BASIC


def test_write_profile_owns_files_and_lists_only_fetchable_targets(tmp_path):
    targets = [office.ExternalTarget("template", "http://t.example/a.dotm"),
               office.ExternalTarget("hyperlink", "http://click.example/"),
               office.ExternalTarget("ole_link", "file:///etc/passwd"),
               office.ExternalTarget("frame", "https://f.example/x\tinjected")]
    office.write_profile(str(tmp_path), os.getuid(), targets)
    fetch = (tmp_path / office.FETCH_REL).read_text()
    assert fetch == "template\thttp://t.example/a.dotm\n"  # no click-only links, no local files, no tab tricks
    assert (tmp_path / office.PROFILE_REL / "nss").is_dir()
    assert (tmp_path / office.PROFILE_REL / "basic/Standard/MailvmHook.xba").is_file()


def test_parse_trace_is_bounded_and_tracks_calls():
    data = ("loaded\tMS Word 2007 XML VBA\tfile:///work/a.docm\nmodule\tvba\tProject.ThisDocument\t180\n"
            "event\tOnLoad\tvnd.sun.star.script:Standard.M.Main?language=Basic&location=document\n"
            "call\tProject.Module1.AutoOpen\nreturned\tProject.Module1.AutoOpen\n"
            "call\tProject.ThisDocument.Document_Open\n"
            "fetch\ttemplate\thttp://t.example/a.dotm\nfetched\thttp://t.example/a.dotm\t85\n"
            "returned\tnever.called\n").encode()
    t = office.parse_trace(data)
    assert t.loaded and t.filter == "MS Word 2007 XML VBA"
    assert t.returned == ["Project.Module1.AutoOpen"] and t.pending == ["Project.ThisDocument.Document_Open"]
    assert t.macro_events and t.fetches["http://t.example/a.dotm"] == "template: fetched 85 bytes"
    assert "never.called" not in t.calls
    flood = office.parse_trace(b"module\tvba\tx\t1\n" * 100_000 + b"\xff\xfe\x00garbage")
    assert len(flood.modules) == 50 and not flood.loaded


def test_macro_presence_and_external_targets(tmp_path):
    cases = {"a.docm": docx("x", vba={"ThisDocument": VBA_SHELL}), "b.odt": odt("x", basic="Beep"),
             "c.docx": docx("x"), "d.odt": odt("x"), "e.xlsm": xlsx(vba={"ThisWorkbook": "Sub Workbook_Open()\nEnd Sub"}),
             "f.bin": b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + vba_project({"Module1": "Sub A()\nEnd Sub"})[8:],
             "g.txt": b"hello"}
    got = {}
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
        got[name] = office.macro_presence(str(tmp_path / name))
    assert got == {"a.docm": "vba", "b.odt": "basic", "c.docx": "", "d.odt": "", "e.xlsm": "vba", "f.bin": "vba",
                   "g.txt": ""}
    (tmp_path / "t.docx").write_bytes(docx("x", remote_template="http://evil.example/t.dotm"))
    assert office.external_targets(str(tmp_path / "t.docx")) == [
        office.ExternalTarget("template", "http://evil.example/t.dotm")]
    assert office.external_targets(str(tmp_path / "g.txt")) == []


def test_document_proof_needs_an_open_by_soffice_and_a_load():
    exes = {10: "/usr/lib/libreoffice/program/soffice.bin", 11: "/bin/cat"}
    w = execproof.ProofWatcher("libreoffice", "document", "/work/a.docx", exe_of=exes.get)
    w.event({"type": "file", "op": "read", "path": "/work/a.docx", "pid": 11})
    w.document_loaded("MS Word 2007 XML")
    assert not w.result().executed  # cat reading it proves nothing
    w.event({"type": "file", "op": "read", "path": "/work/a.docx", "pid": 10})
    r = w.result()
    assert not r.executed and r.reason.startswith("bad format:")  # opened, never loaded
    w.document_loaded("MS Word 2007 XML")
    w.note("macro ran: X")
    r = w.result()
    assert r.executed and "soffice.bin opened /work/a.docx and loaded it" in r.proof and "macro ran: X" in r.proof
    crash = execproof.ProofWatcher("libreoffice", "document", "/work/a.docx", exe_of=exes.get)
    crash.event({"type": "file", "op": "read", "path": "/work/a.docx", "pid": 10})
    crash.event({"type": "exit", "signal": "SIGSEGV", "pid": 10})
    assert crash.result().reason.startswith("crash at load: soffice.bin died of SIGSEGV while loading")
    never = execproof.ProofWatcher("libreoffice", "document", "/work/a.docx", exe_of=exes.get)
    assert never.result().reason.startswith("launcher error: LibreOffice never opened")


def test_office_rules():
    ctx = RuleContext(role="viewer", viewer_exes=L.LIBREOFFICE_EXES, sample_path="/work/a.docx")
    lo = "/usr/lib/libreoffice/program/soffice.bin"
    extra = docrules.office_rules([office.ExternalTarget("template", "http://tpl.example/t.dotm")])
    engine_rules = RULES + extra

    def found(events):
        from mailvm.guest.rules import RuleEngine
        e = RuleEngine(ctx, engine_rules)
        for ev in events:
            e.feed(ev)
        return {f.id: f.severity for f in e.findings()}

    got = found([{"type": "exec", "path": "/usr/bin/touch", "argv": ["touch", "/tmp/x"], "parent_exe": lo, "pid": 5}])
    assert got.get("macro_starts_program") == 6
    assert "macro_starts_program" not in found([{"type": "exec", "path": lo, "argv": [lo], "parent_exe":
                                                 "/usr/lib/libreoffice/program/oosplash", "pid": 5}])
    shell = found([{"type": "exec", "path": "/bin/sh", "argv": ["sh", "-c", "id"], "parent_exe": lo, "pid": 5}])
    assert shell.get("viewer_spawns_shell") == 9 and "macro_starts_program" not in shell
    tpl = found([{"type": "http", "method": "GET", "url": "http://tpl.example/t.dotm", "host": "tpl.example"}])
    assert tpl.get("document_remote_template") == 6
    assert "document_remote_template" not in found([{"type": "http", "method": "GET", "url": "http://x.example/",
                                                     "host": "x.example"}])


def test_launcher_opens_documents_not_converts():
    info = L.SampleInfo("a.docm", head=b"PK\x03\x04")
    launch, why = L.choose(info, "/work/a.docm", find=lambda n: "/usr/lib/libreoffice/program/oosplash"
                           if n.endswith("oosplash") else None)
    assert launch is not None and launch.launcher == "libreoffice", why
    assert "--convert-to" not in launch.argv and launch.argv[-1] == "/work/a.docm"
    assert launch.proof == "document" and "soffice.bin" in launch.helper_exes
    launch, why = L.choose(info, "/work/a.docm", find=lambda n: None)
    assert launch is None and why.startswith("missing runtime: LibreOffice")


# ------------------------------------------------------------------ real documents in the sandbox


def _lo_missing() -> str | None:
    if os.geteuid() != 0:
        return "needs root"
    _, missing = sandbox_tools()
    if missing:
        return "sandbox tools missing: " + ", ".join(missing)
    if L.find_tool(L.LIBREOFFICE_TOOLS[0]) is None and L.find_tool("soffice") is None:
        return "LibreOffice is not installed (scripts/setup.sh installs libreoffice-core/-writer/-calc/-impress)"
    return None


LO_REASON = _lo_missing()
needs_lo = pytest.mark.skipif(LO_REASON is not None, reason=LO_REASON or "")


def _detonate(tmp_path: Path, name: str, data: bytes, **opts) -> dict:
    src = tmp_path / name
    src.write_bytes(data)
    wd = tmp_path / ("wd-" + name)
    wd.mkdir()
    r = detonate(str(src), {"name": name, "kind": "office", "timeout_s": 90, "idle_s": 3, **opts}, str(wd))
    json.dumps(r)
    assert os.listdir(wd) == [], "the detonation left files behind"
    return r


def _ids(r: dict) -> dict[str, int]:
    return {f["id"]: f["severity"] for f in r["findings"]}


@pytest.mark.sandbox
@pytest.mark.slow
@needs_lo
@pytest.mark.parametrize("name,data", [
    ("Invoice_0412.docm", docx("Invoice 0412", vba={"ThisDocument": VBA_SHELL})),
    ("Invoice_0413.docm", docx("Invoice 0413", vba={"Module1": VBA_UNO_SHELL})),
    ("Minutes.odt", odt("Minutes", basic=BASIC_SHELL)),
    ("Payroll.xlsm", xlsx(vba={"ThisWorkbook": 'Private Sub Workbook_Open()\n    Shell "/bin/sh -c ""id"""\nEnd Sub\n'})),
])
def test_auto_open_macro_starting_a_shell_is_malicious(tmp_path, name, data):
    r = _detonate(tmp_path, name, data)
    found = _ids(r)
    assert r["verdict"] == "malicious" and found.get("viewer_spawns_shell") == 9, r["findings"]
    assert r["executed"] is True and r["execution"]["launcher"] == "libreoffice"
    assert f"soffice.bin opened /work/{name} and loaded it" in r["execution"]["proof"]
    # the detonation stops at the first conclusive finding: the shell LibreOffice started is the evidence
    assert "macro ran: " in r["execution"]["proof"] and "LibreOffice started " in r["execution"]["proof"]
    decided = next(f for f in r["findings"] if f["id"] == "office_macro_run")
    assert "Decided by: the detonation" in decided["detail"]


@pytest.mark.sandbox
@pytest.mark.slow
@needs_lo
@pytest.mark.parametrize("name,data", [
    ("report.docx", docx("Quarterly report\nRevenue up 3 %")), ("notes.odt", odt("Team notes")),
    ("budget.xlsx", xlsx(("Budget", "1200"))),
])
def test_benign_documents_stay_clean_and_are_said_to_have_run(tmp_path, name, data):
    r = _detonate(tmp_path, name, data)
    assert r["verdict"] == "clean" and r["score"] < 4, r["findings"]
    assert r["executed"] is True and "loaded it" in r["execution"]["proof"]
    assert not {"office_macro_run", "office_macros_not_run", "not_executed"} & set(_ids(r))


@pytest.mark.sandbox
@pytest.mark.slow
@needs_lo
def test_windows_only_macro_leaves_the_verdict_to_the_static_analysis(tmp_path):
    r = _detonate(tmp_path, "order.docm", docx("Order", vba={"ThisDocument": VBA_WSH}))
    assert r["executed"] is True and r["verdict"] == "clean"
    note = next(f for f in r["findings"] if f["id"] in ("office_macros_not_run", "office_macro_run"))
    assert "Decided by: the static analysis (oletools)" in note["detail"], note
    assert "the static analysis decides" in r["execution"]["proof"]


@pytest.mark.sandbox
@pytest.mark.slow
@needs_lo
def test_remote_template_is_fetched_from_the_simulated_internet(tmp_path):
    r = _detonate(tmp_path, "offer.docx", docx("Offer", remote_template="http://office-templates.example/offer.dotm"))
    found = _ids(r)
    assert found.get("document_remote_template") == 6 and r["verdict"] in ("suspicious", "malicious"), r["findings"]
    assert any(e.get("type") == "http" and "offer.dotm" in str(e.get("url")) for e in r["log"])


@pytest.mark.sandbox
@pytest.mark.slow
@needs_lo
def test_a_document_libreoffice_cannot_load_is_not_executed(tmp_path):
    r = _detonate(tmp_path, "broken.docx", b"PK\x03\x04" + bytes(range(256)) * 8)
    assert r["executed"] is False and r["execution"]["reason"].startswith("bad format: LibreOffice opened")
    assert _ids(r).get("not_executed") == 0


# ------------------------------------------------------------------ the whole path: mvctl scan, process backend


def _mvctl(config: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mailvm.cli.mvctl", "-c", str(config), *args],
                          capture_output=True, timeout=400)


@pytest.mark.sandbox
@pytest.mark.slow
@needs_lo
def test_scan_with_the_process_backend_detonates_the_document(tmp_path):
    from mailvm.config import PoolConfig
    from mailvm.vmpool.backends.process import ProcessBackend
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
job_timeout_s = 90
idle_s = 3
[triage]
yara_rules_dir = "{tmp_path}/yara"
""")
    data = docx("Invoice " + tmp_path.name, vba={"Module1": VBA_UNO_SHELL})
    doc = tmp_path / "Invoice_0413.docm"
    doc.write_bytes(data)
    res = _mvctl(cfg, "scan", "--json", "--no-cache", str(doc))
    assert res.stdout, res.stderr.decode(errors="replace")
    report = json.loads(res.stdout)
    art = next(a for a in report["artifacts"] if a["sha256"] == hashlib.sha256(data).hexdigest())
    assert art["source"] == "detonation" and art["verdict"] == "malicious", art
    ids = {f["id"] for f in art["findings"]}
    assert "viewer_spawns_shell" in ids and "office_macro_run" in ids, art["findings"]
