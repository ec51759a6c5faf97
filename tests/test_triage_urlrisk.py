"""urlrisk: how a link's text alone rates (no network), over a table of real-world shapes."""

from __future__ import annotations

import pytest

from mailvm.triage import urlrisk


@pytest.mark.parametrize("url, reasons, severity", [
    ("https://www.debian.org/", (), 0),
    ("https://login.microsoftonline.com/common/oauth2/authorize", (), 0),
    ("https://github.com/user/repo", (), 0),
    ("https://www.pineapple.com/", (), 0),  # "apple" only matches a whole label
    ("https://arxiv.org/abs/2401.00001", (), 0),
    ("http://192.0.2.10/x", ("ip-host",), 4),
    ("http://[2001:db8::1]/x", ("ip-host",), 4),
    ("http://3232235777/", ("numeric-host",), 5),
    ("http://0xC0.0xA8.0x01.0x01/", ("numeric-host",), 5),
    ("https://www.paypal.com@evil.example/", ("userinfo",), 5),
    ("https://paypal.com.secure-verify.xyz/login", ("lookalike", "risky-tld", "credential-words"), 6),
    ("https://microsoft-login.web.app/index.html", ("shared-hosting", "lookalike", "credential-words"), 6),
    ("https://someone.github.io/", ("shared-hosting",), 3),
    ("https://storage.googleapis.com/bkt/index.html", ("shared-hosting",), 3),
    ("https://bit.ly/3xYz", ("shortener",), 2),
    ("https://xn--pple-43d.com/", ("punycode",), 3),
    ("https://cdn.example.net/dl/setup.exe", ("payload-path",), 4),
    ("https://example.com:8888/", ("odd-port",), 2),
    ("javascript:alert(1)", ("script-uri",), 6),
    ("data:text/html;base64,PHNjcmlwdD4=", ("data-uri",), 6),
    ("\\\\203.0.113.5\\share\\a.exe", ("unc-or-file",), 6),
    ("file://evil.example/share/a.exe", ("unc-or-file",), 6),
    ("file:///C:/Windows/notepad.exe", (), 0),
    ("search-ms:query=x&crumb=location:\\\\evil.example\\s", ("protocol-handler",), 6),
    ("https://www.google.com/url?q=https://evil.example/x&sa=D", ("redirector",), 3),
    ("https://www.google.com/amp/s/evil.example/x", ("redirector",), 3),
    ("https://news.example/r?next=https%3A%2F%2Fevil.example%2F", ("redirector",), 3),
    ("https://web.archive.org/web/2020/https://example.com/", ("redirector",), 3),
    ("https://docs-view.example/s/#dmljdGltQGNvcnAuZXhhbXBsZQ==", ("email-in-url",), 3),
    ("https://docs-view.example/s/?u=victim%40corp.example", ("email-in-url",), 3),
    ("https://www.example.com/assets/logo-2x.png", (), 0),
    ("mailto:someone@example.org", (), 0),
    ("", (), 0),
    ("http://[not-an-address/", (), 0),
])
def test_assess_table(url, reasons, severity):
    r = urlrisk.assess(url)
    assert (r.reasons, r.severity) == (reasons, severity)


def test_registrable_domain_and_brands():
    assert urlrisk.registrable_domain("a.b.example.co.uk") == "example.co.uk"
    assert urlrisk.lookalike_brand("docusign-review.example") == "docusign"
    assert urlrisk.lookalike_brand("account.docusign.net") is None
    assert urlrisk.lookalike_brand("steam-community.example") == "steam"
    assert urlrisk.lookalike_brand("steamcommunity.com") is None


def test_worst_and_bounds():
    assert urlrisk.worst([]) is None
    assert urlrisk.worst(["https://a.example/", "http://192.0.2.1/"]).url == "http://192.0.2.1/"
    huge = "https://" + "a" * 100_000 + ".example/"
    assert urlrisk.assess(huge).severity <= urlrisk.MAX_SEVERITY


@pytest.mark.parametrize("text, expected", [("VIEW DOCUMENT", True), ("Click here", True), ("Review & sign", True),
                                            ("Download PDF", True), ("Sign in", True), ("Open", True),
                                            ("Open source license", False), ("see the appendix", False),
                                            ("Register", False), ("www.debian.org", False), ("Learn more", False)])
def test_call_to_action_words(text, expected):
    assert urlrisk.is_call_to_action(text) is expected


def test_homoglyph_lookalikes_and_the_brands_own_hosts():
    from mailvm.triage.urlrisk import lookalike_brand

    assert lookalike_brand("paypa1-secure-account.com") == "paypal"
    assert lookalike_brand("rnicrosoft-login.example") == "microsoft"
    assert lookalike_brand("4pple-id.com") == "apple"
    for own in ("www.paypal.com", "login.microsoftonline.com", "appleid.apple.com", "docs.python.org"):
        assert lookalike_brand(own) is None, own
