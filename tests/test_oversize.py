"""A message mailvm holds only in part is never stored, scanned or dropped partially (issue 12 item 2)."""

from __future__ import annotations

import os

from mailvm.config import parse_config
from mailvm.milter.service import MilterService


class Store:
    def __init__(self):
        self.added = []

    def add(self, *a, **kw):
        self.added.append(a)
        return "id"


def _service(tmp_path, policies: dict[str, str]):
    pdir = tmp_path / "policy.d"
    pdir.mkdir()
    for domain, text in policies.items():
        (pdir / f"{domain}.toml").write_text(text)
    cfg = parse_config({"spool": {"dir": str(tmp_path / "spool")}, "extract": {"max_message_bytes": 1024 * 1024}})
    store = Store()
    return MilterService(cfg, None, str(pdir), store, b"k" * 32), store


def test_oversize_takes_hold_or_552_never_a_partial_quarantine(tmp_path):
    svc, store = _service(tmp_path, {"q.test": '[actions]\nunchecked = "quarantine"\nsuspicious = "quarantine"\n',
                                     "tag.test": '[actions]\nunchecked = "tag"\n'})
    raw = b"Subject: big\r\n\r\n" + b"A" * (1024 * 1024)  # what the milter kept: the head only
    out = svc.handle(raw, "a@b.example", ["u@q.test"], "Q1", truncated=True)
    assert out.decision.action == "hold" and store.added == []  # Postfix keeps its whole queue file
    assert "unchecked" in out.decision.flags and out.report is None
    out = svc.handle(raw, "a@b.example", ["u@other.example"], "Q2", truncated=True)
    assert out.decision.action == "reject" and (out.decision.smtp_code, out.decision.smtp_ext) == ("552", "5.3.4")
    out = svc.handle(raw, "a@b.example", ["u@tag.test"], "Q3", truncated=True)
    assert out.decision.action == "tag" and "unchecked" in dict(out.decision.headers)["X-Mailvm-Verdict"]
    # several domains: the strictest (a partial copy is never quarantined for any of them)
    out = svc.handle(raw, "a@b.example", ["u@tag.test", "v@q.test"], "Q4", truncated=True)
    assert out.decision.action == "hold" and store.added == []


def test_authenticated_sender_bypass_skips_detonation(tmp_path, monkeypatch):
    """The SMTP-AUTH user (Postfix's {auth_authen}, read at MAIL FROM) reaches the policy's bypass."""
    from mailvm.policy import ClientInfo

    svc, _store = _service(tmp_path, {"auth.test": "[bypass]\nauthenticated = true\n",
                                      "scanall.test": "[bypass]\nauthenticated = true\nskip = \"scan\"\n"})
    seen = {}

    def fake_worker(job, progress, hard_deadline, tag):  # stands in for the worker: records the job it got
        seen["detonate"] = job.detonate
        return {"verdict": "clean", "score": 0, "findings": [], "artifacts": []}

    monkeypatch.setattr(svc, "_scan_in_worker", fake_worker)
    os.makedirs(svc.spool_dir, exist_ok=True)  # svc.prepare() makes it in `mailvm serve`
    out = svc.handle(b"Subject: x\r\n\r\nhi\r\n", "a@inside.example", ["u@auth.test"], "Q5",
                     client=ClientInfo(ip="198.51.100.9", auth_user="alice", sender="a@inside.example"))
    assert seen["detonate"] is False and out.bypass == "authenticated user alice"
    seen.clear()
    out = svc.handle(b"Subject: x\r\n\r\nhi\r\n", "a@inside.example", ["u@auth.test"], "Q6",
                     client=ClientInfo(ip="198.51.100.9", sender="a@inside.example"))
    assert seen["detonate"] is True and out.bypass == ""
    seen.clear()
    out = svc.handle(b"Subject: x\r\n\r\nhi\r\n", "a@inside.example", ["u@scanall.test"], "Q7",
                     client=ClientInfo(ip="198.51.100.9", auth_user="alice"))
    assert seen == {} and out.decision.flags == ("bypassed",)
