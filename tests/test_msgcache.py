"""The milter's message cache (mailvm.milter.msgcache): the same message again skips the worker
round trip, and only when the answer is provably the same (issue 14 item 4)."""

from __future__ import annotations

import email.message
import time

import pytest

from job_helpers import settings
from mailvm.config import ScanTableConfig
from mailvm.milter.msgcache import MessageCache, MessageDigest, reusable
from mailvm.milter.service import MilterService
from mailvm.pins import PinStore, pins_path
from mailvm.scantable import ScanTable
from mailvm.verdict import Verdict

SHA = "cd" * 32


def _digest(headers, body=b"hello\r\n"):
    d = MessageDigest()
    for name, value in headers:
        d.header(name, value)
    d.end_of_headers()
    d.body(body)
    return d.hexdigest()


def test_trace_fields_are_left_out_of_the_digest_only_when_plain():
    base = [("From", b" a@b.example"), ("Subject", b" hi")]
    plain = _digest([("Received", b" from x by y; Sat, 5 Dec 2026 12:00:00 +0000")] + base)
    other = _digest([("Received", b" from z by y; Sat, 5 Dec 2026 12:09:00 +0000"),
                     ("Return-Path", b" <a@b.example>")] + base)
    assert plain == other == _digest(base)  # a retry: only the hops differ
    # a trace field with bytes an analyzer might trip on is part of the key
    assert _digest([("Received", b" from x\x00 by y")] + base) != _digest(base)
    # every other field and the body are
    assert _digest([("From", b" a@b.example"), ("Subject", b" hi!")]) != _digest(base)
    assert _digest(base, b"hello!\r\n") != _digest(base)
    # header boundaries are part of the key: "a"+"bc" is not "ab"+"c"
    assert _digest([("X", b"ab"), ("Y", b"c")]) != _digest([("X", b"a"), ("Y", b"bc")])


def _report(verdict="clean", **art):
    a = {"sha256": SHA, "name": "a.pdf", "verdict": verdict, "score": 0, "role": "attachment",
         "origin": "a.pdf", "source": "cache", "findings": []}
    a.update(art)
    return {"verdict": verdict, "score": 0, "findings": [], "artifacts": [a], "headers": {}}


def test_only_final_reports_that_asked_no_network_are_reusable():
    assert reusable(_report())
    assert not reusable(_report("pending"))
    assert not reusable(_report("error"))
    assert not reusable(_report(origin="url:http://x.example/a.pdf"))
    assert not reusable(_report(findings=[{"id": "not_detonated", "severity": 0, "detail": ""}]))
    r = _report()
    r["findings"] = [{"id": "link_download_failed", "severity": 0, "detail": ""}]
    assert not reusable(r)
    assert not reusable(None)
    many = _report()
    many["artifacts"] = many["artifacts"] * 101  # more files than one entry may hold
    assert not reusable(many)


@pytest.fixture
def table(tmp_path):
    t = ScanTable(ScanTableConfig(path=str(tmp_path / "table")))
    yield t
    t.close()


def _publish(table, sha, verdict):
    claim = table.claim(sha, "test:1:x")
    assert claim.won
    table.publish(sha, verdict)


def test_a_reused_report_needs_every_file_verdict_unchanged(tmp_path, table):
    pins = PinStore(pins_path(str(tmp_path / "table")))
    cache = MessageCache(10, 900, table, pins)
    _publish(table, SHA, Verdict(verdict="clean", score=0, source="detonation"))
    key = cache.key("d1", settings(), False)
    assert cache.put(key, _report())
    got = cache.get(key)
    assert got is not None and got["artifacts"][0]["sha256"] == SHA
    got["verdict"] = "changed by the caller"
    assert cache.get(key)["verdict"] == "clean"  # callers get copies
    # other settings (another domain's policy) or the allow-list's static-only: another key
    assert cache.get(cache.key("d1", settings(detonate=False), False)) is None
    assert cache.get(cache.key("d1", settings(), True)) is None
    # the file's verdict changed in the table since: the worker decides again
    assert table.forget(SHA)
    _publish(table, SHA, Verdict(verdict="malicious", score=10, source="detonation"))
    assert cache.get(key) is None and cache.stale == 1
    # a pin set since: the worker decides again (pins are answered there)
    assert cache.put(key, _report())
    pins.pin(SHA, "clean", "known good", "admin")
    assert cache.get(key) is None
    assert not cache.put(key, _report())  # and a pinned file's report is not kept at all


def test_entries_are_bounded_in_number_and_age(table):
    cache = MessageCache(2, 0.2, table)
    for i in range(3):
        assert cache.put(f"k{i}", _report(sha256=f"{i:064x}"))
    assert len(cache) == 2 and cache.get("k0") is None and cache.get("k2") is not None
    time.sleep(0.3)
    assert cache.get("k2") is None  # older than ttl_s
    assert not MessageCache(0, 900, table).put("k", _report())  # 0 entries: off


@pytest.mark.slow
def test_the_same_message_again_skips_the_worker_and_gets_the_same_report(tmp_path):
    """Real scan workers: a second copy differing only in its Received field is answered from the
    message cache with the report the worker gave; the worker itself gives that same report for the
    copy (the trace field is not read by any analyzer), and after a policy reload it runs again."""
    cfg_path = tmp_path / "mailvm.toml"
    text = (f'[spool]\ndir = "{tmp_path}/spool"\n[scantable]\npath = "{tmp_path}/t"\n'
            f'[pool]\nwork_dir = "{tmp_path}/pool"\n[links]\nenabled = false\n'
            f'[quarantine]\ndir = "{tmp_path}/q"\n')
    cfg_path.write_text(text)
    from mailvm.config import load_config

    cfg = load_config(str(cfg_path))
    svc = MilterService(cfg, str(cfg_path), None, None, b"k" * 32, workers=1)
    svc.start()
    try:
        m = email.message.EmailMessage()
        m["From"], m["To"], m["Subject"] = "a@b.example", "c@d.example", "report"
        m.set_content("the figures, as promised")
        m.add_attachment(b"plain text notes " * 50, maintype="text", subtype="plain", filename="notes.txt")
        body = m.as_bytes().replace(b"\n", b"\r\n")
        first = b"Received: from a by b; Sat, 5 Dec 2026 12:00:00 +0000\r\n" + body
        second = b"Received: from c by b; Sat, 5 Dec 2026 12:05:00 +0000\r\n" + body

        def digest(raw):
            d = MessageDigest()
            head, _, rest = raw.partition(b"\r\n\r\n")
            for line in head.split(b"\r\n"):
                name, _, value = line.partition(b":")
                d.header(name.decode(), value)
            d.end_of_headers()
            d.body(rest)
            return d.hexdigest()

        assert digest(first) == digest(second)
        a = svc.handle(first, "a@b.example", ["c@d.example"], "Q1", digest=digest(first))
        assert a.report is not None and not a.report.get("message_cache")
        b = svc.handle(second, "a@b.example", ["c@d.example"], "Q2", digest=digest(second))
        assert b.report.get("message_cache") is True and svc.counters.get("message_cache_hits") == 1
        assert b.decision == a.decision
        # the worker on the second copy: the same report (so leaving the trace field out is exact)
        direct = svc.handle(second, "a@b.example", ["c@d.example"], "Q3")
        strip = lambda r: {k: v for k, v in r.items() if k not in ("duration_s", "message_cache")}  # noqa: E731
        assert strip(direct.report) == strip(b.report)
        assert [x["source"] for x in a.report["artifacts"] if x["role"] != "body"] == ["triage"]  # first seen
        assert [x["source"] for x in b.report["artifacts"] if x["role"] != "body"] == ["cache"]  # table answered
        svc.reload()  # new policies: nothing kept from before
        c = svc.handle(second, "a@b.example", ["c@d.example"], "Q4", digest=digest(second))
        assert not c.report.get("message_cache")
    finally:
        svc.close()
