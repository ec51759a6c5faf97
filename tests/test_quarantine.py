"""Quarantine store (durability, listing, delete, expire, release) and the release token."""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import signal
import socketserver
import stat
import subprocess
import sys
import threading
import time
from email import message_from_bytes

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mailvm.quarantine import (
    QUARANTINED,
    RELEASED,
    RELEASING,
    PartialDelivery,
    QuarantineStore,
    smtp_deliver,
)
from mailvm.release import (
    BodyHasher,
    add_release_header,
    body_sha256,
    load_or_create_key,
    make_token,
    message_body_sha256,
    split_message,
    verify_token,
)

KEY = bytes(range(32))
MSG = (
    b"From: a@sender.test\r\nTo: u@example.com\r\nSubject: invoice\r\n"
    b"MIME-Version: 1.0\r\nContent-Type: text/plain\r\n\r\n"
    b"Please see the attachment.\r\n.leading dot line\r\n\r\n"
)
REPORT = {"action": "quarantine", "verdict": "malicious", "score": 9, "reason": "malicious: invoice.exe (eicar)",
          "artifacts": [{"name": "invoice\u202eexe.pdf", "sha256": "ab" * 32, "verdict": "malicious"}]}


@pytest.fixture
def store(tmp_path) -> QuarantineStore:
    return QuarantineStore(tmp_path / "q")


class Recorder:
    """A deliver function that records its calls (optionally slow or failing)."""

    def __init__(self, delay: float = 0.0, fail: BaseException | None = None):
        self.calls: list[tuple[bytes, str, list[str]]] = []
        self.delay = delay
        self.fail = fail
        self._lock = threading.Lock()

    def __call__(self, raw: bytes, sender: str, recipients: list[str]) -> None:
        with self._lock:
            self.calls.append((raw, sender, recipients))
        time.sleep(self.delay)
        if self.fail is not None:
            raise self.fail


# --------------------------------------------------------------------------- store basics


def test_add_get_read(store):
    qid = store.add(MSG, "a@sender.test", ["u@example.com", "v@example.com"], REPORT, "Example.COM", "4XyZ1")
    assert store.read_message(qid) == MSG
    item = store.get(qid)
    assert item.id == qid and len(qid) == 24 and qid[8] == "T"
    assert (item.domain, item.sender, item.recipients, item.queue_id) == (
        "example.com", "a@sender.test", ("u@example.com", "v@example.com"), "4XyZ1")
    assert (item.verdict, item.score, item.action, item.state) == ("malicious", 9, "quarantine", QUARANTINED)
    assert item.size == len(MSG) and item.sha256 == hashlib.sha256(MSG).hexdigest()
    assert item.body_sha256 == message_body_sha256(MSG)
    assert item.report["artifacts"][0]["name"] == "invoice\u202eexe.pdf"
    assert [i.id for i in store.list()] == [qid]
    # quarantined mail is live malware: private directory and files
    assert stat.S_IMODE(os.stat(store.root).st_mode) == 0o700
    for f in (store.items_dir / qid).iterdir():
        assert stat.S_IMODE(f.stat().st_mode) == 0o600


def test_add_accepts_nested_decision_report(store):
    qid = store.add(MSG, "", ["u@x.org"], {"decision": {"verdict": "suspicious", "score": 5, "action": "quarantine",
                                                          "reason": "r"}, "report": {"x": object()}}, "x.org")
    item = store.get(qid)
    assert (item.verdict, item.score, item.sender) == ("suspicious", 5, "")
    assert isinstance(item.report["report"]["x"], str)  # not JSON-able values are stored as text


def test_ids_are_validated(store):
    store.add(MSG, "a@b.c", ["u@x.org"], REPORT, "x.org")
    for bad in ("../x", "..", "", "a/b", "20261126T101500-ab12cd34/../../x", "20261126T101500-AB12CD34",
                "20261126T101500-ab12cd34\n", "/etc/passwd"):
        for call in (store.get, store.read_message, store.delete):
            with pytest.raises(ValueError):
                call(bad)
        with pytest.raises(ValueError):
            store.release(bad, Recorder(), KEY)
        assert store.is_released(bad) is False
    with pytest.raises(KeyError):
        store.get("20000101T000000-00000000")
    with pytest.raises(KeyError):
        store.read_message("20000101T000000-00000000")


def test_partial_writes_are_never_listed(store):
    good = store.add(MSG, "a@b.c", ["u@x.org"], REPORT, "x.org")
    # what a crash in the middle of add() leaves: a staging directory in tmp/
    stage = store.tmp_dir / "20261126T101500-ab12cd34.1234abcd.new"
    stage.mkdir()
    (stage / "message.eml").write_bytes(MSG[:10])
    # and things that are not complete items in items/: a stray temp file, a dir without meta
    (store.items_dir / ".20261126T101501-00000000.tmp").write_bytes(b"x")
    (store.items_dir / "20261126T101502-00000001").mkdir()
    (store.items_dir / "20261126T101502-00000001" / "message.eml").write_bytes(MSG)
    assert [i.id for i in store.list()] == [good]
    # stale leftovers are cleaned, fresh ones kept (a write may be in progress)
    assert store.clean_tmp(now=time.time()) == 0
    assert store.clean_tmp(now=time.time() + 2 * 86400) == 1
    assert not stage.exists()


def test_failed_add_leaves_nothing(store, monkeypatch):
    store.add(MSG, "a@b.c", ["u@x.org"], REPORT, "x.org")

    def boom(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "rename", boom)
    with pytest.raises(OSError):
        store.add(MSG, "a@b.c", ["u@x.org"], REPORT, "x.org")
    monkeypatch.undo()
    assert len(store.list()) == 1
    assert list(store.tmp_dir.iterdir()) == []


_WRITER = r"""
import os, sys
from mailvm.quarantine import QuarantineStore
s = QuarantineStore(sys.argv[1])
i = 0
while True:
    body = (b"%d " % i) * (200000 + 7919 * (i % 50))
    s.add(b"Subject: n%d\r\n\r\n" % i + body, "a@b.c", ["u@x.org"], {"verdict": "malicious"}, "x.org")
    i += 1
"""


@pytest.mark.slow
def test_killed_writer_leaves_only_complete_items(tmp_path):
    """SIGKILL a process that adds large messages in a loop: every listed item is whole."""
    root = tmp_path / "q"
    for delay in (0.25, 0.4, 0.55):
        proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(root)])
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    store = QuarantineStore(root)
    items = store.list()
    assert items, "the writer should have completed some items"
    for item in items:
        raw = store.read_message(item.id)
        assert len(raw) == item.size and hashlib.sha256(raw).hexdigest() == item.sha256
    assert len({i.id for i in items}) == len(items)


def test_list_filters(store):
    t0 = 1_800_000_000.0
    a = store.add(MSG, "s@x", ["u@example.com"], {"verdict": "malicious"}, "example.com", now=t0)
    b = store.add(MSG, "s@x", ["u@other.org"], {"verdict": "suspicious"}, "other.org", now=t0 + 100)
    c = store.add(MSG, "s@x", ["u@example.com"], {"verdict": "suspicious"}, "example.com", now=t0 + 200)
    ids = lambda items: [i.id for i in items]  # noqa: E731
    assert ids(store.list()) == [a, b, c]  # oldest first
    assert ids(store.list(domain="EXAMPLE.com")) == [a, c]
    assert ids(store.list(verdict="suspicious")) == [b, c]
    assert ids(store.list(domain="example.com", verdict="suspicious")) == [c]
    assert ids(store.list(older_than=t0 + 150)) == [a, b]
    assert ids(store.list(newer_than=t0 + 50)) == [b, c]
    from datetime import datetime, timezone

    assert ids(store.list(newer_than=datetime.fromtimestamp(t0 + 50, timezone.utc), older_than=t0 + 150)) == [b]
    assert ids(store.list(state=RELEASED)) == []
    assert store.get(a).created_iso == "2027-01-15T08:00:00Z"


def test_delete(store):
    a = store.add(MSG, "s@x", ["u@x.org"], REPORT, "x.org")
    b = store.add(MSG, "s@x", ["u@x.org"], REPORT, "x.org")
    assert store.delete(a) is True
    assert store.delete(a) is False
    assert [i.id for i in store.list()] == [b]
    with pytest.raises(KeyError):
        store.read_message(a)
    assert store.release(a, Recorder(), KEY).status == "not_found"
    assert list(store.tmp_dir.iterdir()) == []


def test_expire(store):
    now = 1_800_000_000.0
    old = store.add(MSG, "s@x", ["u@a.org"], REPORT, "a.org", now=now - 40 * 86400)
    mid = store.add(MSG, "s@x", ["u@b.org"], REPORT, "b.org", now=now - 20 * 86400)
    new = store.add(MSG, "s@x", ["u@a.org"], REPORT, "a.org", now=now - 1 * 86400)
    assert store.expire(30, now=now) == 1
    assert [i.id for i in store.list()] == [mid, new]
    # per-domain retention from the policy: b.org keeps 10 days only
    assert store.expire(30, now=now, retention_for=lambda d: 10 if d == "b.org" else 30) == 1
    assert [i.id for i in store.list()] == [new]
    assert store.expire(0.5, domain="other.org", now=now) == 0
    assert store.expire(0.5, domain="a.org", now=now) == 1
    assert old not in [i.id for i in store.list()]


def test_expire_skips_an_item_being_released(store):
    import fcntl

    now = time.time()
    qid = store.add(MSG, "s@x", ["u@a.org"], REPORT, "a.org", now=now - 100 * 86400)
    fd = os.open(store.items_dir / qid / "lock", os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        assert store.expire(30, now=now) == 0
    finally:
        os.close(fd)
    assert store.expire(30, now=now) == 1


# --------------------------------------------------------------------------- release


def test_release_delivers_once_with_a_valid_token(store):
    qid = store.add(MSG, "a@sender.test", ["u@example.com"], REPORT, "example.com")
    rec = Recorder()
    r = store.release(qid, rec, KEY)
    assert (r.status, r.delivered) == ("released", True)
    assert len(rec.calls) == 1
    raw, sender, rcpts = rec.calls[0]
    assert (sender, rcpts) == ("a@sender.test", ["u@example.com"])
    head, body = split_message(raw)
    assert head.startswith(b"X-Mailvm-Release: v1 " + qid.encode() + b" ")
    value = message_from_bytes(raw)["X-Mailvm-Release"]
    assert verify_token(KEY, value, message_body_sha256(raw)) == qid
    assert raw.endswith(split_message(MSG)[1])
    item = store.get(qid)
    assert item.state == RELEASED and item.released_at and item.attempts == 1
    assert store.is_released(qid)
    r2 = store.release(qid, rec, KEY)
    assert (r2.status, r2.delivered, r2.message) == ("already_released", False, "already released")
    assert len(rec.calls) == 1


def test_release_replaces_forged_release_headers(store):
    forged = b"X-Mailvm-Release: v1 20200101T000000-00000000 " + b"0" * 64 + b"\r\n\tcontinued\r\n" + MSG
    qid = store.add(forged, "a@b.c", ["u@x.org"], REPORT, "x.org")
    rec = Recorder()
    store.release(qid, rec, KEY)
    raw = rec.calls[0][0]
    assert raw.count(b"X-Mailvm-Release:") == 1 and b"continued" not in raw
    assert verify_token(KEY, message_from_bytes(raw)["X-Mailvm-Release"], message_body_sha256(raw)) == qid


def test_concurrent_release_threads_deliver_once(store):
    qid = store.add(MSG, "a@b.c", ["u@x.org"], REPORT, "x.org")
    rec = Recorder(delay=0.3)
    results = []
    barrier = threading.Barrier(4)

    def worker():
        barrier.wait()
        results.append(store.release(qid, rec, KEY))

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert len(rec.calls) == 1
    assert sorted(r.status for r in results) == ["already_released"] * 3 + ["released"]
    assert sum(r.delivered for r in results) == 1


def _release_in_process(root: str, qid: str, out: str, barrier) -> None:
    def deliver(raw, sender, rcpts):
        with open(out, "a") as fh:
            fh.write(f"{os.getpid()}\n")
        time.sleep(0.3)

    barrier.wait()
    r = QuarantineStore(root).release(qid, deliver, KEY)
    sys.exit(0 if r.status in ("released", "already_released") else 1)


def test_concurrent_release_processes_deliver_once(store, tmp_path):
    qid = store.add(MSG, "a@b.c", ["u@x.org"], REPORT, "x.org")
    out = tmp_path / "deliveries"
    ctx = multiprocessing.get_context("fork")
    barrier = ctx.Barrier(3)
    procs = [ctx.Process(target=_release_in_process, args=(str(store.root), qid, str(out), barrier)) for _ in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(20)
    assert [p.exitcode for p in procs] == [0, 0, 0]
    assert len(out.read_text().splitlines()) == 1
    assert store.get(qid).state == RELEASED


def test_delivery_failure_rolls_back(store):
    qid = store.add(MSG, "a@b.c", ["u@x.org"], REPORT, "x.org")
    r = store.release(qid, Recorder(fail=ConnectionRefusedError(111, "Connection refused")), KEY)
    assert (r.status, r.delivered) == ("failed", False)
    assert "Connection refused" in r.message
    item = store.get(qid)
    assert item.state == QUARANTINED and "ConnectionRefusedError" in item.last_error and item.attempts == 1
    rec = Recorder()
    assert store.release(qid, rec, KEY).status == "released"
    assert len(rec.calls) == 1
    item = store.get(qid)
    assert item.state == RELEASED and item.attempts == 2 and item.last_error == ""


def test_partial_delivery_counts_as_released(store):
    qid = store.add(MSG, "a@b.c", ["u@x.org", "gone@x.org"], REPORT, "x.org")
    r = store.release(qid, Recorder(fail=PartialDelivery({"gone@x.org": (550, b"no such user")})), KEY)
    assert r.status == "released" and "gone@x.org" in r.message
    assert store.get(qid).state == RELEASED and "gone@x.org" in store.get(qid).last_error


def test_interrupted_release_needs_force(store):
    qid = store.add(MSG, "a@b.c", ["u@x.org"], REPORT, "x.org")
    # what a crash during delivery leaves behind
    (store.items_dir / qid / "state.json").write_text(json.dumps({"state": RELEASING, "attempts": 1}))
    rec = Recorder()
    r = store.release(qid, rec, KEY)
    assert r.status == "interrupted" and rec.calls == []
    assert store.release(qid, rec, KEY, force=True).status == "released"
    assert len(rec.calls) == 1 and store.get(qid).attempts == 2


# --------------------------------------------------------------------------- real SMTP


class _SMTPHandler(socketserver.StreamRequestHandler):
    def handle(self):
        srv = self.server
        self.wfile.write(b"220 test ESMTP\r\n")
        txn = {"from": None, "rcpt": []}
        while True:
            line = self.rfile.readline()
            if not line:
                return
            cmd = line.decode("ascii", "replace").strip()
            verb = cmd.split(" ")[0].upper()
            if verb == "EHLO":
                self.wfile.write(b"250-test\r\n250-8BITMIME\r\n250 SMTPUTF8\r\n")
            elif verb == "MAIL":
                txn = {"from": cmd[10:].split(">")[0] + ">", "rcpt": [], "opts": cmd}
                self.wfile.write(b"250 ok\r\n")
            elif verb == "RCPT":
                addr = cmd[8:].strip()
                if addr.strip("<>") in srv.refuse:
                    self.wfile.write(b"550 5.1.1 no such user\r\n")
                else:
                    txn["rcpt"].append(addr)
                    self.wfile.write(b"250 ok\r\n")
            elif verb == "DATA":
                self.wfile.write(b"354 go\r\n")
                data = b""
                while True:
                    chunk = self.rfile.readline()
                    if chunk in (b".\r\n", b""):
                        break
                    data += chunk[1:] if chunk.startswith(b".") else chunk  # dot-unstuffing
                srv.received.append((txn["from"], txn["rcpt"], data, txn["opts"]))
                self.wfile.write(b"250 queued\r\n")
            elif verb == "QUIT":
                self.wfile.write(b"221 bye\r\n")
                return
            else:
                self.wfile.write(b"250 ok\r\n")


@pytest.fixture
def smtp_server():
    srv = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _SMTPHandler)
    srv.daemon_threads = True
    srv.received = []
    srv.refuse = set()
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def test_release_through_real_smtp(store, smtp_server):
    lf_msg = MSG.replace(b"\r\n", b"\n") + b"\xc3\xa9t\xc3\xa9\n..two dots\nno final newline"
    qid = store.add(lf_msg, "", ["u@example.com", "v@example.com"], REPORT, "example.com")
    deliver = smtp_deliver("127.0.0.1", smtp_server.server_address[1], timeout=10)
    r = store.release(qid, deliver, KEY)
    assert r.status == "released", r.message
    (mail_from, rcpts, data, opts), = smtp_server.received
    assert mail_from == "<>" and rcpts == ["<u@example.com>", "<v@example.com>"]
    assert "BODY=8BITMIME" in opts
    assert b"\n" not in data.replace(b"\r\n", b"")  # CRLF on the wire
    # what the receiving MTA (and so the milter) sees verifies against the token
    value = message_from_bytes(data)["X-Mailvm-Release"]
    assert verify_token(KEY, value, message_body_sha256(data)) == qid
    assert message_body_sha256(data) == store.get(qid).body_sha256


def test_release_a_copy_to_chosen_addresses_keeps_the_item_for_the_others(store, smtp_server, tmp_path):
    """amavisd-release's alt_recip: a copy to one address; the item stays quarantined; audited."""
    from mailvm.audit import AuditLog
    from mailvm.quarantine import release_audited

    audit = AuditLog(tmp_path / "audit.log")
    deliver = smtp_deliver("127.0.0.1", smtp_server.server_address[1], timeout=10)
    qid = store.add(MSG, "a@sender.test", ["u@example.com", "v@example.com"], REPORT, "example.com")
    r = release_audited(store, audit, deliver, KEY, qid, ["analyst@soc.example"], "alice")
    assert r.status == "released" and r.delivered and "still quarantined" in r.message
    assert store.get(qid).state == QUARANTINED
    (mail_from, rcpts, data, _), = smtp_server.received
    assert rcpts == ["<analyst@soc.example>"]
    assert verify_token(KEY, message_from_bytes(data)["X-Mailvm-Release"], message_body_sha256(data)) == qid
    # then to all original recipients: released once, as usual
    r = release_audited(store, audit, deliver, KEY, qid, None, "bob")
    assert r.status == "released" and store.get(qid).state == RELEASED
    assert smtp_server.received[1][1] == ["<u@example.com>", "<v@example.com>"]
    # the chosen set equal to every original recipient is the normal (once-only) release
    assert release_audited(store, audit, deliver, KEY, qid, ["V@example.com", "u@example.com"], "bob").status \
        == "already_released"
    entries = audit.entries(item=qid)
    assert [e.who for e in entries] == ["bob", "bob", "alice"]
    # during a copy's delivery the item is "releasing" (what the milter accepts a token for), then back
    seen = []
    qid2 = store.add(MSG, "a@sender.test", ["u@example.com", "v@example.com"], REPORT, "example.com")
    store.release(qid2, lambda raw, s, r: seen.append(store.get(qid2).state), KEY, recipients=["u@example.com"])
    assert seen == [RELEASING] and store.get(qid2).state == QUARANTINED
    assert "to analyst@soc.example: released" in entries[-1].detail and entries[0].ok is False


def test_smtp_partial_and_failed_delivery(store, smtp_server):
    port = smtp_server.server_address[1]
    smtp_server.refuse = {"gone@x.org"}
    qid = store.add(MSG, "a@b.c", ["u@x.org", "gone@x.org"], REPORT, "x.org")
    r = store.release(qid, smtp_deliver("127.0.0.1", port, 10), KEY)
    assert r.status == "released" and "gone@x.org" in r.message
    qid2 = store.add(MSG, "a@b.c", ["gone@x.org"], REPORT, "x.org")
    r = store.release(qid2, smtp_deliver("127.0.0.1", port, 10), KEY)
    assert r.status == "failed" and store.get(qid2).state == QUARANTINED
    # nothing listens: connection refused, rolled back
    smtp_server.shutdown()
    smtp_server.server_close()
    r = store.release(qid2, smtp_deliver("127.0.0.1", port, 2), KEY)
    assert r.status == "failed" and store.get(qid2).attempts == 2


# --------------------------------------------------------------------------- tokens


ID = "20261126T101500-ab12cd34"


def test_token_valid_and_forgeries():
    body = body_sha256(b"hello\r\n")
    tok = make_token(KEY, ID, body)
    assert tok.startswith(f"v1 {ID} ") and len(tok.split()[2]) == 64
    assert verify_token(KEY, tok, body) == ID
    assert verify_token(KEY, "  " + tok.replace(" ", "\r\n\t ") + "\r\n", body) == ID  # folded
    assert verify_token(KEY, tok.upper().replace("V1", "v1").replace(ID.upper(), ID), body) == ID  # hex case
    mac = tok.split()[2]
    forged = tok[:-1] + ("0" if mac[-1] != "0" else "1")
    assert verify_token(KEY, forged, body) is None
    assert verify_token(KEY, tok, body_sha256(b"hello!\r\n")) is None  # other body
    assert verify_token(bytes(32), tok, body) is None  # other key
    other_id = "20261126T101500-ab12cd35"
    assert verify_token(KEY, tok.replace(ID, other_id), body) is None  # the MAC is bound to the id
    assert verify_token(KEY, tok.replace("v1", "v2"), body) is None
    assert verify_token(KEY, tok.encode(), body) == ID  # bytes header values are fine
    for bad in (None, 3, b"\xff\xfe", "", "v1", f"v1 {ID}", f"v1 ../x {mac}", f"v1 {ID} {mac} extra",
                f"v1 {ID} {mac[:-1]}", f"v1 {ID} {mac}g"[:-1] + "g", "x" * 100000):
        assert verify_token(KEY, bad, body) is None
    assert verify_token(KEY, tok, "not-a-hash") is None
    assert verify_token(b"short", tok, body) is None
    with pytest.raises(ValueError):
        make_token(KEY, "../x", body)
    with pytest.raises(ValueError):
        make_token(b"short", ID, body)


@settings(max_examples=300, deadline=None)
@given(value=st.one_of(st.text(max_size=200), st.binary(max_size=200), st.builds(
    lambda i, m: f"v1 {i} {m}", st.from_regex(r"[0-9]{8}T[0-9]{6}-[0-9a-f]{8}", fullmatch=True),
    st.from_regex(r"[0-9a-fA-F]{64}", fullmatch=True))), body=st.binary(max_size=80),
    garbage_body=st.text(max_size=80))
def test_verify_token_never_raises(value, body, garbage_body):
    assert verify_token(KEY, value, body_sha256(body)) is None
    assert verify_token(KEY, value, garbage_body) is None


@settings(max_examples=100, deadline=None)
@given(parts=st.lists(st.sampled_from(["v1", ID, "a" * 64, "0" * 64, " ", "\t", "\r\n", "x"]), max_size=6))
def test_verify_token_near_misses(parts):
    body = body_sha256(b"")
    value = " ".join(parts)
    assert verify_token(KEY, value, body) is None  # none of these is the real MAC


def test_body_canonical_form():
    assert body_sha256(b"") == hashlib.sha256(b"\r\n").hexdigest()
    assert body_sha256(b"a\nb\n") == body_sha256(b"a\r\nb\r\n") == hashlib.sha256(b"a\r\nb\r\n").hexdigest()
    assert body_sha256(b"a\r\nb") == body_sha256(b"a\r\nb\r\n\r\n\n\r\n")
    assert body_sha256(b"a\rb\r\n") != body_sha256(b"a\nb\r\n")  # a bare CR is data
    assert body_sha256(b"a\r") == hashlib.sha256(b"a\r\r\n").hexdigest()
    assert body_sha256(b"a\r\n\r\nb\r\n") != body_sha256(b"a\r\nb\r\n")  # inner blank lines count
    assert body_sha256(b"x") != body_sha256(b"y")


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=300).map(lambda b: b.replace(b"\x00", b"\r")) | st.lists(
    st.sampled_from([b"a", b"\r", b"\n", b"\r\n", b" ", b"."]), max_size=40).map(b"".join),
    cuts=st.lists(st.integers(0, 300), max_size=8))
def test_streaming_hash_equals_one_shot(data, cuts):
    h = BodyHasher()
    last = 0
    for c in sorted(set(min(c, len(data)) for c in cuts)):
        h.update(data[last:c])
        last = c
    h.update(data[last:])
    assert h.hexdigest() == body_sha256(data)
    # and the canonical form is what the definition says
    canon = data.replace(b"\r\n", b"\n").rstrip(b"\n").replace(b"\n", b"\r\n") + b"\r\n"
    assert body_sha256(data) == hashlib.sha256(canon).hexdigest()


def test_split_message():
    assert split_message(b"A: 1\r\nB: 2\r\n\r\nbody\r\n") == (b"A: 1\r\nB: 2\r\n", b"body\r\n")
    assert split_message(b"A: 1\n\nbody") == (b"A: 1\n", b"body")
    assert split_message(b"A: 1\r\n") == (b"A: 1\r\n", b"")
    assert split_message(b"\r\nbody") == (b"", b"body")
    assert split_message(b"") == (b"", b"")


def test_add_release_header_keeps_body_and_line_endings():
    for raw in (MSG, MSG.replace(b"\r\n", b"\n"), b"Subject: x\r\n", b"", b"Subject: x\r\n\r\n"):
        out = add_release_header(raw, f"v1 {ID} {'0' * 64}")
        assert split_message(out)[1] == split_message(raw)[1]
        assert out.startswith(b"X-Mailvm-Release: v1 ")
        if b"\r\n" in raw:
            assert b"\n" not in out.replace(b"\r\n", b"")
    with pytest.raises(ValueError):
        add_release_header(MSG, "v1 x\r\nBcc: victim@x")


# --------------------------------------------------------------------------- key


def test_key_created_once_private(tmp_path):
    path = tmp_path / "sub" / "release.key"
    k1 = load_or_create_key(path)
    assert len(k1) == 32 and stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_or_create_key(path) == k1
    assert [p.name for p in path.parent.iterdir()] == ["release.key"]  # no temp file left


def test_key_concurrent_creation_agrees(tmp_path):
    path = tmp_path / "release.key"
    keys = []
    barrier = threading.Barrier(8)

    def worker():
        barrier.wait()
        keys.append(load_or_create_key(path))

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(keys) == 8 and len(set(keys)) == 1


def test_key_refused_when_exposed_or_short(tmp_path):
    path = tmp_path / "release.key"
    path.write_bytes(os.urandom(32))
    path.chmod(0o644)
    with pytest.raises(ValueError, match="group or others"):
        load_or_create_key(path)
    path.chmod(0o600)
    path.write_bytes(b"short")
    with pytest.raises(ValueError, match="at least"):
        load_or_create_key(path)
