"""pdf analyzer: PDFs written by the test (auto-run JavaScript, /Launch,
embedded files, #xx-obfuscated names, links) through pdfid and the fallback
counter for large files."""

from __future__ import annotations

import os

import pytest

from mailvm.config import TriageConfig
from mailvm.triage import Triage, pdf
from triage_helpers import art, ids


def make_pdf(*objects: bytes, pad: bytes = b"") -> bytes:
    """A PDF with the given object bodies, a page tree and a correct xref table."""
    body = [b"<< /Type /Catalog /Pages 2 0 R " + (objects[0] if objects else b"") + b">>",
            b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
            b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] >>"]
    body += list(objects[1:])
    out = bytearray(b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n")
    offsets = []
    for i, obj in enumerate(body, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % i + obj + b"\nendobj\n"
    if pad:
        offsets.append(len(out))
        out += b"%d 0 obj\n<< /Length %d >>\nstream\n" % (len(body) + 1, len(pad)) + pad + b"\nendstream\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(offsets) + 1)
    for off in offsets:
        out += b"%010d 00000 n \n" % off
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(offsets) + 1, xref)
    return bytes(out)


PLAIN = make_pdf()
AUTO_JS = make_pdf(b"/OpenAction 4 0 R", b"<< /Type /Action /S /JavaScript /JS (app.alert('hi');) >>")
JS_ONLY = make_pdf(b"", b"<< /Names << /JavaScript 5 0 R >> >>", b"<< /S /JavaScript /JS (1) >>")
LAUNCH = make_pdf(b"/OpenAction 4 0 R", b"<< /Type /Action /S /Launch /F (cmd.exe) /Win << /F (cmd.exe) /P (/c calc) >> >>")
EMBEDDED = make_pdf(b"/Names << /EmbeddedFiles << /Names [(a.exe) 4 0 R] >> >>",
                    b"<< /Type /Filespec /F (a.exe) /EF << /F 5 0 R >> >>",
                    b"<< /Type /EmbeddedFile /Length 2 >>\nstream\nMZ\nendstream")
OBFUSCATED = make_pdf(b"/OpenAction 4 0 R", b"<< /S /J#61vaScript /J#53 (app.alert(1)) >>")
LINKS = make_pdf(b"", b"<< /Type /Annot /Subtype /Link /A << /S /URI /URI (https://e.test/a) >> >>",
                 b"<< /Type /Annot /Subtype /Link /A << /S /URI /URI (https://e.test/b) >> >>")


@pytest.fixture(scope="module")
def triage(tmp_path_factory) -> Triage:
    return Triage(TriageConfig(yara_rules_dir=str(tmp_path_factory.mktemp("noyara") / "absent")))


def run(triage, tmp_path, data: bytes, name: str = "doc.pdf"):
    p = tmp_path / name
    p.write_bytes(data)
    return triage.analyze(art(p))


def test_plain_pdf_is_clean(triage, tmp_path):
    r = run(triage, tmp_path, PLAIN)
    assert (r.kind, r.verdict, r.detonate, r.errors) == ("pdf", "clean", True, [])
    assert not ids(r)


def test_openaction_javascript(triage, tmp_path):
    r = run(triage, tmp_path, AUTO_JS)
    assert ids(r)["pdf_auto_javascript"] == 8
    assert r.verdict == "malicious"


def test_javascript_without_auto_action(triage, tmp_path):
    assert ids(run(triage, tmp_path, JS_ONLY)) == {"pdf_javascript": 6}


def test_launch(triage, tmp_path):
    found = ids(run(triage, tmp_path, LAUNCH))
    assert found["pdf_launch"] == 8 and found["pdf_auto_action"] == 3


def test_embedded_file(triage, tmp_path):
    assert ids(run(triage, tmp_path, EMBEDDED))["pdf_embedded_file"] == 4


def test_hex_obfuscated_names(triage, tmp_path):
    found = ids(run(triage, tmp_path, OBFUSCATED))
    assert found["pdf_obfuscated_names"] == 6
    assert found["pdf_auto_javascript"] == 8  # /J#61vaScript still counts as /JavaScript


def test_uri_count(triage, tmp_path):
    r = run(triage, tmp_path, LINKS)
    f = next(f for f in r.findings if f.id == "pdf_uri")
    assert f.detail.startswith("/URI x4") and r.verdict == "clean"  # two links, /S /URI /URI (...) each


def test_header_after_junk(triage, tmp_path):
    r = run(triage, tmp_path, b"junk junk\n" + AUTO_JS)
    assert r.kind == "pdf" and {"pdf_header_offset", "pdf_auto_javascript"} <= set(ids(r))


@pytest.mark.parametrize("data", [PLAIN, AUTO_JS, JS_ONLY, LAUNCH, EMBEDDED, OBFUSCATED, LINKS])
def test_fallback_counter_agrees_with_pdfid(data):
    assert pdf.count_names(data) == {k: v for k, v in pdf.pdfid_counts(data, "x.pdf").items() if v[0]}


def test_large_pdf_uses_fallback(triage, tmp_path):
    big = make_pdf(b"/OpenAction 4 0 R", b"<< /S /JavaScript /JS (x) >>", pad=os.urandom(pdf.PDFID_MAX_BYTES + 1024))
    assert len(big) > pdf.PDFID_MAX_BYTES
    r = run(triage, tmp_path, big)
    assert ids(r)["pdf_auto_javascript"] == 8 and r.errors == []


@pytest.mark.parametrize("data", [b"%PDF-", b"%PDF-1.4\n/JS", b"%PDF-1.4\n" + b"/" * 5000, b"%PDF-1.4 << /#zz#4 >>"])
def test_malformed_pdfs_do_not_raise(triage, tmp_path, data):
    r = run(triage, tmp_path, data)
    assert r.errors == []


def test_pdfid_error_falls_back_to_counting(triage, tmp_path):
    r = run(triage, tmp_path, b"%PDF-")
    assert "pdf_malformed" in ids(r)
