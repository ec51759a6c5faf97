"""``mvctl scan`` and ``mvctl cache`` end to end: real files, real diskcache, real sandbox.

The CLI runs as a subprocess, as an administrator would run it; its JSON
output, exit statuses and the scanned table it leaves behind are checked.
"""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import sys
import zipfile
from email.message import EmailMessage
from pathlib import Path

import pytest
from testdata import corpus_file

from mailvm.lab.samples import clean_message, eicar, eicar_zip

EICAR = eicar()
EICAR_SHA = "275a021bbfb6489e54d471899f7db9d1663fc695ec2fe2a2c4538aabf651fd0f"
SPAM = Path("apache-spamassassin-tdata") / "t" / "data" / "spam" / "olevbmacro"


@pytest.fixture
def eicar_zipped_twice(tmp_path: Path) -> Path:
    """eicar.com in a zip in a zip (as the EICAR site's eicarcom2.zip), built here."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("eicar_com.zip", eicar_zip())
    path = tmp_path / "eicarcom2.zip"
    path.write_bytes(buf.getvalue())
    return path


@pytest.fixture
def config(tmp_path: Path) -> Path:
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
job_timeout_s = 20
idle_s = 2
[triage]
yara_rules_dir = "{tmp_path}/yara"
""")
    return cfg


def mvctl(config: Path, *args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mailvm.cli.mvctl", "-c", str(config), *args],
                          input=stdin, capture_output=True, timeout=300)


def as_json(res: subprocess.CompletedProcess):
    assert res.stdout, res.stderr.decode(errors="replace")
    return json.loads(res.stdout)


def test_eicar_zipped_twice_is_malicious_and_cached(config, eicar_zipped_twice):
    res = mvctl(config, "scan", "--json", "--no-detonate", str(eicar_zipped_twice))
    assert res.returncode == 1, res.stderr
    report = as_json(res)
    assert report["verdict"] == "malicious" and report["score"] == 10
    eicar = [a for a in report["artifacts"] if a["sha256"] == EICAR_SHA]
    assert eicar and eicar[0]["source"] == "triage"
    assert eicar[0]["origin"].count("member:") == 2
    assert {"sha256", "name", "type", "origin", "size", "verdict", "score", "source", "findings"} <= set(eicar[0])
    # the second scan is answered from the scanned table
    again = as_json(mvctl(config, "scan", "--json", "--no-detonate", str(eicar_zipped_twice)))
    assert [a for a in again["artifacts"] if a["sha256"] == EICAR_SHA][0]["source"] == "cache"
    shown = mvctl(config, "cache", "show", "--json", EICAR_SHA)
    assert shown.returncode == 0 and as_json(shown)["verdict"] == "malicious"
    stats = as_json(mvctl(config, "cache", "stats", "--json"))
    assert stats["done"] >= 1 and stats["hits"] >= 1
    assert mvctl(config, "cache", "forget", EICAR_SHA).returncode == 0
    assert mvctl(config, "cache", "show", EICAR_SHA).returncode == 1


def test_clean_message_from_stdin_exit_zero(config):
    raw = clean_message()
    res = mvctl(config, "scan", "--json", "--no-detonate", "-", stdin=raw)
    assert res.returncode == 0, res.stdout + res.stderr
    assert as_json(res)["verdict"] == "clean"


@pytest.mark.parametrize("name,expected", [
    ("macro.eml", {"suspicious", "malicious"}),
    ("malicemacro.eml", {"suspicious", "malicious"}),  # auto-exec macro: at least suspicious (corpus README)
    ("renamedmacro.eml", {"suspicious", "malicious"}),
    ("target_uri.eml", {"suspicious", "malicious"}),
    ("encrypted.eml", {"suspicious", "malicious"}),
    ("nomacro.eml", {"clean"}),
    ("goodcsv.eml", {"clean"}),
    ("zippwmacro.eml", {"clean", "suspicious", "malicious"}),  # handled gracefully, whatever it holds
])
def test_spamassassin_office_mails_get_their_labels(config, name, expected):
    path = corpus_file(SPAM / name)  # skips, saying why, without the external corpus
    res = mvctl(config, "scan", "--json", "--no-detonate", str(path))
    report = as_json(res)
    assert report["verdict"] in expected, json.dumps(report, indent=1)[:3000]
    assert res.returncode == (0 if report["verdict"] == "clean" else 1)


def test_unreadable_path_is_an_error(config, tmp_path):
    res = mvctl(config, "scan", "--json", str(tmp_path / "missing.eml"))
    assert res.returncode == 2
    assert as_json(res)["verdict"] == "error"


def test_bad_config_names_file_and_key(tmp_path):
    cfg = tmp_path / "bad.toml"
    cfg.write_text("[extract]\nmax_depht = 3\n")
    (tmp_path / "eicar.com").write_bytes(EICAR)
    res = mvctl(cfg, "scan", "--no-detonate", str(tmp_path / "eicar.com"))
    assert res.returncode == 2
    err = res.stderr.decode()
    assert "bad.toml" in err and "extract.max_depht" in err and "unknown key" in err


def _message_with(name: str, data: bytes) -> bytes:
    m = EmailMessage()
    m["From"] = "a@outside.test"
    m["To"] = "b@example.com"
    m["Subject"] = "tools"
    m.set_content("Install this please.")
    m.add_attachment(data, maintype="application", subtype="octet-stream", filename=name)
    return m.as_bytes()


@pytest.mark.sandbox
def test_unseen_scripts_are_detonated_in_the_process_backend(config, tmp_path):
    benign = b"#!/bin/sh\necho hello from a harmless script\n# " + tmp_path.name.encode() + b"\n"
    # obfuscated enough that static triage only finds it suspicious: detonation decides
    evil = (b"#!/bin/sh\nd=$HOME/.con\"\"fig/auto\"\"start\nmkdir -p \"$d\"\n"
            b"echo '[Desktop Entry]' > \"$d/u.desktop\"\nh=203.0.113; p=44\n"
            b"python3 -c \"import socket,sys;s=socket.socket();s.settimeout(2);"
            b"s.connect((sys.argv[1]+'.10',int(sys.argv[2]+'44')))\" $h $p || true\n# "
            + tmp_path.name.encode() + b"\n")
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("update.sh", evil)
    msg = tmp_path / "m.eml"
    msg.write_bytes(_message_with("tools.zip", buf.getvalue()))
    plain = tmp_path / "hello"  # no .sh: the extension alone is a (static) suspicious indicator
    plain.write_bytes(benign)
    res = mvctl(config, "scan", "--json", str(msg), str(plain))
    reports = as_json(res)
    assert res.returncode == 1
    bad, good = reports
    evil_art = [a for a in bad["artifacts"] if a["sha256"] == hashlib.sha256(evil).hexdigest()][0]
    assert evil_art["source"] == "detonation" and evil_art["verdict"] == "malicious", evil_art
    ids = {f["id"] for f in evil_art["findings"]}
    assert "persistence_autostart" in ids and "network_raw_ip" in ids, ids
    assert good["verdict"] == "clean" and good["artifacts"][0]["source"] == "detonation"
    # both verdicts are in the table now: no detonation on the next scan
    again = as_json(mvctl(config, "scan", "--json", str(plain)))
    assert again["artifacts"][0]["source"] == "cache"


def test_password_applies_to_a_plain_archive(tmp_path, capsys):
    """An oletools-style sample.zip (AES, password 'secret42' that no default list holds): --password opens
    it when the input is the archive itself, not only inside a message (issue 12 item 13)."""
    import json

    import pyzipper

    from mailvm.cli.mvctl import main

    eicar = b"X5O!P%@AP[4\\PZX54(P^)7CC)7}$" + b"EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*"
    z = tmp_path / "sample.doc.zip"
    with pyzipper.AESZipFile(z, "w", compression=pyzipper.ZIP_DEFLATED, encryption=pyzipper.WZ_AES) as zf:
        zf.setpassword(b"secret42")
        zf.writestr("sample.doc", eicar)
    cfg = tmp_path / "mailvm.toml"
    cfg.write_text(f'[scantable]\npath = "{tmp_path}/t"\n[spool]\ndir = "{tmp_path}/s"\n')
    main(["-c", str(cfg), "scan", str(z), "--json", "--no-detonate", "--no-cache"])
    without = json.loads(capsys.readouterr().out)
    assert not any(a["name"] == "sample.doc" for a in without["artifacts"])  # the control: not opened
    assert main(["-c", str(cfg), "scan", str(z), "--json", "--no-detonate", "--no-cache", "--password", "secret42"]) == 1
    out = json.loads(capsys.readouterr().out)
    assert out["verdict"] == "malicious" and any(a["name"] == "sample.doc" for a in out["artifacts"])
