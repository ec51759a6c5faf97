"""fail_open has its production caller (issue 12 item 6): when mailvm has no verdict at all (here:
the scan worker dies under the message, twice), each recipient domain's fail_open decides -
deliver marked ``failed-open``, or 451 4.3.0 - and the strictest domain wins."""

from __future__ import annotations

import os
import signal

import pytest

from mailvm.config import parse_config
from mailvm.milter.service import MilterService


def _always_crash(job):  # the worker dies under this message, on every attempt
    os.kill(os.getpid(), signal.SIGKILL)


@pytest.fixture
def svc(tmp_path):
    pdir = tmp_path / "policy.d"
    pdir.mkdir()
    (pdir / "open.test.toml").write_text("fail_open = true\n")
    cfg_path = tmp_path / "mailvm.toml"
    cfg_path.write_text(f'[spool]\ndir = "{tmp_path}/spool"\n[scantable]\npath = "{tmp_path}/t"\n'
                        f'[pool]\nwork_dir = "{tmp_path}/pool"\n[links]\nenabled = false\n')
    cfg = parse_config({"spool": {"dir": str(tmp_path / "spool")}})
    s = MilterService(cfg, str(cfg_path), str(pdir), None, b"k" * 32, workers=1)
    s.start()
    yield s
    s.close()


@pytest.mark.slow
def test_no_verdict_at_all_follows_each_domains_fail_open(svc, monkeypatch):
    monkeypatch.setattr("mailvm.milter.service.scan_path", _always_crash)
    raw = b"Subject: x\r\n\r\nhello\r\n"
    out = svc.handle(raw, "a@b.example", ["u@open.test"], "Q1")
    assert out.decision.action == "tag" and out.report is None
    assert dict(out.decision.headers)["X-Mailvm-Verdict"] == "error score=0 failed-open"
    out = svc.handle(raw, "a@b.example", ["u@closed.test"], "Q2")
    assert out.decision.action == "tempfail" and (out.decision.smtp_code, out.decision.smtp_ext) == ("451", "4.3.0")
    out = svc.handle(raw, "a@b.example", ["u@open.test", "v@closed.test"], "Q3")
    assert out.decision.action == "tempfail"  # the strictest domain wins
