"""SMTP reply codes have one source (mailvm.policy) and docs/policy.md states them (issue 12 item 12).

``451 4.7.1`` answers a tempfail *decision* (analysis not finished); ``451 4.3.0`` ("other or
undefined mail system status", RFC 3463) answers when mailvm itself failed and has no verdict.
"""

from __future__ import annotations

from pathlib import Path

from mailvm.config import parse_config
from mailvm.milter import actions
from mailvm.milter.service import MilterService, Outcome
from mailvm.policy import REPLY_INTERNAL, REPLY_REJECT, REPLY_TEMPFAIL, Decision

DOCS = Path(__file__).resolve().parents[1] / "docs" / "policy.md"


class RecordingContext:
    """The libmilter side of ``actions.apply``: records what would be sent to the MTA."""

    def __init__(self) -> None:
        self.replies: list[tuple[str, str, str]] = []

    def setreply(self, code, ext, text):
        self.replies.append((code, ext, text))

    def chgheader(self, *a):
        pass

    def addheader(self, *a):
        pass


def _apply(decision: Decision) -> tuple[str, str]:
    ctx = RecordingContext()
    actions.apply(ctx, Outcome(decision, None, b""), {})
    return ctx.replies[-1][:2]


def test_a_decision_without_its_own_code_gets_the_policy_constants():
    assert _apply(Decision(action="tempfail", verdict="timeout", score=0, reason="x")) == REPLY_TEMPFAIL
    assert _apply(Decision(action="reject", verdict="malicious", score=9, reason="x")) == REPLY_REJECT


def test_no_scan_worker_at_all_answers_the_internal_failure_code(tmp_path):
    """A service whose workers never started has no verdict: 451 4.3.0, not the tempfail action's code."""
    cfg = parse_config({"spool": {"dir": str(tmp_path / "spool")}, "policy": {"max_wait_s": 1}})
    svc = MilterService(cfg, None, None, None, b"k" * 32)
    (tmp_path / "spool").mkdir()
    svc._executor = None  # never started: every attempt finds no worker
    out = svc.handle(b"Subject: x\r\n\r\nhello\r\n", "a@b.example", ["u@c.example"], "Q1")
    assert out.decision.action == "tempfail"
    assert _apply(out.decision) == REPLY_INTERNAL == ("451", "4.3.0")


def test_docs_state_the_codes_the_code_uses():
    text = DOCS.read_text()
    for code, ext in (REPLY_INTERNAL, REPLY_TEMPFAIL, REPLY_REJECT):
        assert f"{code} {ext}" in text, f"docs/policy.md does not mention {code} {ext}"
    assert REPLY_INTERNAL != REPLY_TEMPFAIL
