"""Notices about quarantined and held messages (mailvm.notify) and hold reasons (mailvm.holdindex).

Issue 13 item 6: optional notifications for quarantine and hold, to recipients and to
an admin, from templates; ``mvctl hold list`` shows why a message is held.  The
lab test in tests/mail/test_postfix_milter.py sends them through a real Postfix.
"""

from __future__ import annotations

import json
import os
import smtplib
import socketserver
import threading
import time
from email import message_from_bytes
from email.policy import default as default_policy

import pytest

from mailvm.config import ConfigError, load_config
from mailvm.holdindex import HoldIndex, HoldRecord
from mailvm.notify import (
    AUDIENCES,
    EVENTS,
    DomainNotify,
    Notice,
    facts_from_record,
    load_templates,
    parse_template,
    plan_notices,
    render,
    send_notices,
)
from mailvm.policy import load_policies
from mailvm.quarantine import smtp_deliver

HOSTILE_SUBJECT = "Invoice\r\nBcc: victim@elsewhere.example\r\n\u202eexe.pdf"
RECORD = {
    "verdict": "malicious", "score": 12, "reason": "malicious: invoice.exe (pe_injection)\nX-Evil: 1",
    "subject": HOSTILE_SUBJECT,
    "artifacts": [{"name": f"file{i}\u202e.exe", "verdict": "malicious", "sha256": "ab" * 32} for i in range(60)],
}


def _facts(event="quarantine", ident="Q123"):
    return facts_from_record(event, ident, "4XyZ1AbC", "example.com", "evil@bad.example",
                             ["alice@example.com", "bob@other.example"], RECORD, 1_800_000_000.0, "mx1.example")


def test_every_built_in_template_parses_and_uses_known_fields():
    t = load_templates(None)
    assert set(t) == {(e, a) for e in EVENTS for a in AUDIENCES}
    for (event, audience), tmpl in t.items():
        raw = render(tmpl, _facts(event), Notice("admin@example.com", audience, "example.com"), "mailvm@mx1.example")
        assert b"$" not in raw, f"{event}-{audience}: a placeholder was left unfilled"


def test_a_file_in_template_dir_replaces_the_built_in_one(tmp_path):
    (tmp_path / "hold-admin.txt").write_text("Subject: HELD $id ($verdict)\n\nReason: $reason\nFiles:\n$files\n")
    t = load_templates(tmp_path)
    assert t[("hold", "admin")].source == str(tmp_path / "hold-admin.txt")
    assert t[("quarantine", "admin")].source.startswith("<built-in")
    msg = message_from_bytes(render(t[("hold", "admin")], _facts("hold", "4XyZ1AbC"),
                                    Notice("pm@example.com", "admin", "example.com"), "m@x.example"),
                             policy=default_policy)
    assert msg["Subject"] == "HELD 4XyZ1AbC (malicious)"


@pytest.mark.parametrize("text, key, problem", [
    ("no subject line\n\nbody\n", "Subject", "starts with a 'Subject: ...' line"),
    ("Subject: $verdict\n\n$not_a_field\n", "body", "unknown placeholder(s) $not_a_field"),
    ("Subject: costs 5$\n\nbody\n", "Subject", "invalid placeholder"),
    ("Subject:\n\nbody\n", "Subject", "empty subject"),
])
def test_a_bad_template_is_a_config_error_naming_file_key_and_problem(tmp_path, text, key, problem):
    (tmp_path / "quarantine-recipient.txt").write_text(text)
    with pytest.raises(ConfigError) as err:
        load_templates(tmp_path)
    assert err.value.file == str(tmp_path / "quarantine-recipient.txt") and err.value.key == key
    assert problem in err.value.problem


def test_load_config_checks_the_templates(tmp_path):
    (tmp_path / "t").mkdir()
    (tmp_path / "t" / "hold-recipient.txt").write_bytes(b"Subject: \xff\n\nx\n")
    cfg = tmp_path / "mailvm.toml"
    cfg.write_text(f'[notify]\ntemplate_dir = "{tmp_path / "t"}"\n')
    with pytest.raises(ConfigError, match="hold-recipient.txt: -: not UTF-8"):
        load_config(cfg)
    cfg.write_text('[notify]\nfrom_address = "not an address"\n')
    with pytest.raises(ConfigError, match="notify.from_address"):
        load_config(cfg)


def test_who_is_told_admins_once_recipients_of_their_own_domain_only_never_the_sender():
    a = DomainNotify("example.com", ("pm@example.com",), True, ("quarantine", "hold"),
                     ("alice@example.com", "PM@example.com"))
    b = DomainNotify("other.example", ("pm@example.com", "sec@other.example"), False, ("quarantine",),
                     ("bob@other.example",))
    got = plan_notices("quarantine", [a, b])
    assert [(n.to, n.audience) for n in got] == [
        ("pm@example.com", "admin"), ("sec@other.example", "admin"), ("alice@example.com", "recipient")]
    # other.example does not want hold notices; example.com's recipients do get them
    got = plan_notices("hold", [a, b])
    assert [(n.to, n.audience, n.domain) for n in got] == [
        ("pm@example.com", "admin", "example.com"), ("alice@example.com", "recipient", "example.com")]
    assert plan_notices("hold", [DomainNotify("x.example", (), False, ("quarantine", "hold"), ("u@x.example",))]) == []
    with pytest.raises(ValueError):
        plan_notices("reject", [a])


def test_hostile_values_cannot_add_headers_or_grow_the_notice():
    t = load_templates(None)
    for audience in AUDIENCES:
        raw = render(t[("quarantine", audience)], _facts(), Notice("alice@example.com", audience, "example.com"),
                     "mailvm@mx1.example")
        msg = message_from_bytes(raw, policy=default_policy)
        assert msg["Bcc"] is None and msg["X-Evil"] is None
        assert msg["Auto-Submitted"] == "auto-generated" and msg["To"] == "alice@example.com"
        body = msg.get_content()
        assert "\u202e" not in body and "\u202e" not in str(msg["Subject"])
        if audience == "admin":
            assert body.count("ab" * 32) == 50 and "(+10 more)" in body  # the file list is capped
            assert "mvctl quarantine release Q123" in body and "bob@other.example" in body
        else:  # a recipient sees neither the other recipients nor the release command
            assert "bob@other.example" not in body and "mvctl" not in body and "Q123" in body
        assert len(raw) < 20_000


class _Sink(socketserver.StreamRequestHandler):
    def handle(self):
        self.wfile.write(b"220 sink\r\n")
        txn: dict = {"rcpt": []}
        while line := self.rfile.readline():
            verb = line.split(b" ", 1)[0].split(b":", 1)[0].strip().upper()
            if verb in (b"EHLO", b"HELO"):
                self.wfile.write(b"250 sink\r\n")
            elif verb == b"MAIL":
                txn = {"from": line[10:].strip().decode(), "rcpt": []}
                self.wfile.write(b"250 ok\r\n")
            elif verb == b"RCPT":
                addr = line[8:].strip().decode()
                if "refused" in addr:
                    self.wfile.write(b"550 no such user\r\n")
                else:
                    txn["rcpt"].append(addr)
                    self.wfile.write(b"250 ok\r\n")
            elif verb == b"DATA":
                self.wfile.write(b"354 go\r\n")
                data = b""
                while (chunk := self.rfile.readline()) not in (b".\r\n", b""):
                    data += chunk
                self.server.got.append((txn["from"], txn["rcpt"], data))
                self.wfile.write(b"250 queued\r\n")
            elif verb == b"QUIT":
                self.wfile.write(b"221 bye\r\n")
                return
            else:
                self.wfile.write(b"250 ok\r\n")


def test_notices_go_out_through_smtp_with_the_null_sender_and_a_refusal_is_only_logged(caplog):
    srv = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _Sink)
    srv.daemon_threads = True
    srv.got = []
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        deliver = smtp_deliver("127.0.0.1", srv.server_address[1], timeout=10)
        notices = [Notice("pm@example.com", "admin", "example.com"),
                   Notice("refused@example.com", "recipient", "example.com"),
                   Notice("alice@example.com", "recipient", "example.com")]
        sent = send_notices(load_templates(None), _facts("hold", "4XyZ1AbC"), notices, deliver, "mailvm@mx1.example")
        assert sent == 2
        assert [(f, r) for f, r, _ in srv.got] == [("<>", ["<pm@example.com>"]), ("<>", ["<alice@example.com>"])]
        admin = message_from_bytes(srv.got[0][2], policy=default_policy)
        assert "held" in admin["Subject"] and "mvctl hold release 4XyZ1AbC" in admin.get_content()
        assert "notice to refused@example.com failed" in caplog.text
        # nothing listens: logged, never raised
        srv.shutdown()
        srv.server_close()
        dead = smtp_deliver("127.0.0.1", srv.server_address[1], timeout=2)
        assert send_notices(load_templates(None), _facts(), notices[:1], dead, "m@x.example") == 0
    finally:
        srv.server_close()


def test_notify_policy_keys_are_validated_with_file_and_key(tmp_path):
    pol = tmp_path / "policy.d"
    pol.mkdir()
    (pol / "example.com.toml").write_text('[notify]\nadmin = ["pm@example.com"]\nrecipients = true\n'
                                          'events = ["hold"]\n')
    (pol / "bad.example.toml").write_text('[notify]\nadmin = ["not-an-address"]\n')
    (pol / "worse.example.toml").write_text('[notify]\nevents = ["reject"]\n')
    pset = load_policies(None, str(pol))
    good = pset.for_domain("example.com").notify
    assert good.admin == ["pm@example.com"] and good.recipients and good.events == ["hold"]
    bad, worse = pset.for_domain("bad.example"), pset.for_domain("worse.example")
    assert "notify.admin" in bad.error and "e-mail address" in bad.error
    assert "notify.events" in worse.error and "'reject'" in worse.error
    assert pset.default.notify.admin == [] and not pset.default.notify.recipients


def test_hold_index_records_reads_and_prunes(tmp_path):
    idx = HoldIndex(tmp_path / "q")
    idx.record(HoldRecord("4XyZ1AbC", time.time(), "malicious", 12, "malicious: a.exe\n(x)", "hold.example",
                          "actions.malicious", ("u@hold.example",)))
    got = idx.get("4XyZ1AbC")
    assert got is not None and got.verdict == "malicious" and got.score == 12 and got.domain == "hold.example"
    assert "\n" not in got.reason and got.recipients == ("u@hold.example",)
    assert oct(os.stat(idx.dir / "4XyZ1AbC.json").st_mode & 0o777) == "0o640"
    for bad in ("../../etc/passwd", "a/b", "", "x" * 40):
        with pytest.raises(ValueError):
            idx.record(HoldRecord(bad, 0, "malicious", 1, "", ""))
        assert idx.get(bad) is None
    (idx.dir / "BROKEN1.json").write_text("{not json")
    assert idx.get("BROKEN1") is None
    (idx.dir / "LIST01.json").write_text(json.dumps({"score": "x", "recipients": "u"}))
    assert idx.get("LIST01") is None
    # still held: kept; not held but young: kept (Postfix may be moving it right now); not held and old: removed
    old = time.time() - 7200
    idx.record(HoldRecord("GONE001", old, "suspicious", 5, "r", "d"))
    os.utime(idx.dir / "GONE001.json", (old, old))
    assert idx.prune(held=["4XyZ1AbC"], older_than_s=3600) == 1
    assert idx.get("4XyZ1AbC") is not None and not (idx.dir / "GONE001.json").exists()
    assert (idx.dir / "BROKEN1.json").exists()
    assert idx.prune(held=["4XyZ1AbC"]) == 2 and idx.get("4XyZ1AbC") is not None


def test_smtp_failure_is_no_exception_for_smtplib_users():
    # the deliver function raises on failure; send_notices is what turns that into a log line
    deliver = smtp_deliver("127.0.0.1", 1, timeout=1)
    with pytest.raises((OSError, smtplib.SMTPException)):
        deliver(b"Subject: x\r\n\r\nx\r\n", "", ["a@b.example"])


def test_parse_template_keeps_a_literal_dollar():
    t = parse_template("Subject: Notice $$5\n\nprice $$10 for $id\n", "<test>")
    raw = render(t, _facts(), Notice("a@example.com", "admin", "example.com"), "m@x.example")
    msg = message_from_bytes(raw, policy=default_policy)
    assert msg["Subject"] == "Notice $5" and "price $10 for Q123" in msg.get_content()
