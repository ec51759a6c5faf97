"""Pinned file hashes (mvctl cache pin/unpin/pins) and their audit entries."""

from __future__ import annotations

import json

import pytest

from mailvm.audit import AuditLog
from mailvm.cli.mvctl import main
from mailvm.pins import PinStore

SHA = "ab" * 32


@pytest.fixture
def cfg_file(tmp_path):
    p = tmp_path / "mailvm.toml"
    p.write_text(f'[scantable]\npath = "{tmp_path}/table"\n[quarantine]\ndir = "{tmp_path}/q"\n')
    return p


def test_pin_store_round_trip_and_verdicts(tmp_path):
    store = PinStore(tmp_path / "pins")
    assert store.get(SHA) is None and not (tmp_path / "pins").exists()  # a read creates nothing
    store.pin(SHA, "clean", "  vendor   installer, ticket 42 ", "alice")
    pin = store.get(SHA)
    assert pin.reason == "vendor installer, ticket 42"
    v = pin.as_verdict()
    assert (v.verdict, v.score, v.source) == ("clean", 0, "pinned") and v.findings[0].id == "pinned_clean"
    store.pin(SHA, "malicious", "confirmed stealer", "bob")
    v = store.get(SHA).as_verdict()
    assert (v.verdict, v.score) == ("malicious", 10) and "bob" in v.findings[0].detail
    with pytest.raises(ValueError):
        store.pin(SHA, "suspicious", "x", "bob")
    with pytest.raises(ValueError):
        store.pin("nothex", "clean", "x", "bob")
    with pytest.raises(ValueError):
        store.pin(SHA, "clean", "   ", "bob")
    assert store.unpin(SHA) and not store.unpin(SHA) and store.get(SHA) is None


def test_mvctl_cache_pin_unpin_pins_and_audit(cfg_file, tmp_path, capsys):
    assert main(["-c", str(cfg_file), "cache", "pin", SHA.upper(), "clean", "--reason", "false positive"]) == 0
    assert main(["-c", str(cfg_file), "cache", "pins", "--json"]) == 0
    out = capsys.readouterr().out
    pins = json.loads(out[out.index("["):])
    assert pins[0]["sha256"] == SHA and pins[0]["verdict"] == "clean"
    with pytest.raises(SystemExit) as exit_:  # --reason is required
        main(["-c", str(cfg_file), "cache", "pin", SHA, "clean"])
    assert exit_.value.code == 2
    capsys.readouterr()
    assert main(["-c", str(cfg_file), "cache", "unpin", SHA]) == 0
    assert main(["-c", str(cfg_file), "cache", "unpin", SHA]) == 1
    entries = AuditLog(tmp_path / "q" / "audit.log").entries()
    assert [e.action for e in entries] == ["unpin", "pin"] and entries[1].detail == "clean: false positive"


def test_scanner_answers_pinned_files_first(tmp_path):
    """A file pinned clean is answered clean (no triage); pinned malicious is blocked."""
    import email.message
    import hashlib

    from mailvm.config import parse_config
    from mailvm.policy import Policy, decide
    from mailvm.milter.service import outcomes_from_report
    from mailvm.scan import Scanner
    from mailvm.triage import Triage

    cfg = parse_config({"scantable": {"path": str(tmp_path / "table")}, "spool": {"dir": str(tmp_path / "spool")}})
    eicar = b"X5O!P%@AP[4\\PZX54(P^)7CC)7}$" + b"EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*"
    tool = b"#!/bin/sh\necho harmless build helper\n"
    store = PinStore(tmp_path / "table-pins")
    store.pin(hashlib.sha256(eicar).hexdigest(), "clean", "AV test file on purpose", "alice")
    store.pin(hashlib.sha256(tool).hexdigest(), "malicious", "seen in an incident", "bob")
    m = email.message.EmailMessage()
    m["Subject"] = "x"
    m.set_content("files")
    m.add_attachment(eicar, maintype="application", subtype="octet-stream", filename="eicar.com")
    m.add_attachment(tool, maintype="application", subtype="x-sh", filename="tool.sh")
    scanner = Scanner(cfg, Triage(cfg.triage), None, None)
    report = scanner.scan_message(m.as_bytes()).to_dict()
    by_name = {a["name"]: a for a in report["artifacts"]}
    assert by_name["eicar.com"]["verdict"] == "clean" and by_name["eicar.com"]["source"] == "pinned"
    assert by_name["tool.sh"]["verdict"] == "malicious" and by_name["tool.sh"]["source"] == "pinned"
    assert decide(Policy(), outcomes_from_report(report)).action == "reject"
