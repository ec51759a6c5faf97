"""The message body as content: link-only phishing judged from the body (issue 11 item 5)."""

from __future__ import annotations

import email.message
import glob
import os

import pytest

from mailvm.config import ExtractConfig, TriageConfig
from mailvm.extract import extract_message
from mailvm.triage import Triage
from mailvm.triage.body import body_findings, deceptive_anchor
from mailvm.verdict import score_findings
from testdata import CORPUS


@pytest.fixture(scope="module")
def triage():
    return Triage(TriageConfig(yara_rules_dir="/nonexistent"))


def _body_verdict(raw: bytes, triage, make_spool):
    res = extract_message(raw, make_spool(ExtractConfig()), ExtractConfig())
    bodies = [a for a in res.artifacts if a.role == "body"]
    results = [triage.analyze(a) for a in bodies]
    return max((r.score for r in results), default=0), [f for r in results for f in r.findings]


def _html_mail(html: str) -> bytes:
    m = email.message.EmailMessage()
    m["From"], m["To"], m["Subject"] = "it-desk@notice.example", "v@example.com", "Action required"
    m.set_content("see the HTML part")
    m.add_alternative(html, subtype="html")
    return m.as_bytes()


LURE = ("<p>Your mailbox is almost full. Verify your account within 24 hours.</p>"
        '<p><a href="https://micros0ft-login.web.app/owa?u=v@example.com">Verify now</a></p>')


def test_link_only_lure_is_flagged(triage, make_spool):
    score, found = _body_verdict(_html_mail(LURE), triage, make_spool)
    assert score >= 4 and any(f.id == "body_credential_lure" for f in found)


def test_deceptive_anchor_and_plain_text_lure(triage, make_spool):
    assert deceptive_anchor("http://198.51.100.7/login", "https://outlook.office.com") == "office.com"
    assert deceptive_anchor("https://www.example.com/a", "example.com") is None
    assert deceptive_anchor("https://click.mailer.example/t?x=1", "Read more") is None
    m = email.message.EmailMessage()
    m["Subject"] = "password"
    m.set_content("Your password expires today. Keep it here: http://login.account-verify.duckdns.org/reset\n")
    score, found = _body_verdict(m.as_bytes(), triage, make_spool)
    assert score >= 4, found


def test_each_signal_alone_is_informational():
    # lure language with an ordinary link, a click-tracking redirect, a risky link with no lure
    assert score_findings(body_findings(
        '<p>Please verify your email address.</p><a href="https://accounts.example.com/verify">Verify</a>', True))[0] == "clean"
    assert score_findings(body_findings(
        '<a href="https://click.newsletter.example/r?u=https%3A%2F%2Fshop.example">Read the offer</a>', True))[0] == "clean"
    assert score_findings(body_findings("see http://bit.ly/abc for the slides", False))[0] == "clean"


def test_attachment_is_not_judged_as_a_body(triage, make_spool):
    m = email.message.EmailMessage()
    m["Subject"] = "x"
    m.set_content("hello")
    m.add_attachment(LURE.encode(), maintype="text", subtype="html", filename="page.html")
    res = extract_message(m.as_bytes(), make_spool(ExtractConfig()), ExtractConfig())
    page = [a for a in res.artifacts if a.name == "page.html"][0]
    assert page.role == "attachment"
    assert not any(f.id.startswith("body_") for f in triage.analyze(page).findings)


def test_ham_bodies_stay_clean(triage, make_spool):
    if not CORPUS.is_dir():
        pytest.skip(f"test corpus not found at {CORPUS} (set MAILVM_CORPUS)")
    files = [f for f in glob.glob(str(CORPUS / "apache-spamassassin-tdata/t/data/nice/*")) if os.path.isfile(f)]
    files += [f for f in glob.glob(str(CORPUS / "cpython-test_email-data/*")) if os.path.isfile(f)]
    assert files
    flagged = []
    for path in files:
        with open(path, "rb") as fh:
            score, found = _body_verdict(fh.read(), triage, make_spool)
        if score >= 4:
            flagged.append((path, [f.id for f in found]))
    assert flagged == []
