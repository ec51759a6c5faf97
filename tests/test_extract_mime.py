"""MIME walking (mailvm.extract.mime via extract_message): corpus messages, built edge cases."""

from __future__ import annotations

import binascii
import dataclasses
import hashlib
import io
import struct
import time
import zipfile
from email.message import EmailMessage
from pathlib import Path

import pytest

from mailvm.config import ExtractConfig
from mailvm.extract import extract_message
from mailvm.extract.mime import decode_header_value, html_visible_text, uu_blocks

CORPUS_MAIL_DIRS = ("zbateson-mail-mime-parser", "cpython-test_email-data", "apache-spamassassin-tdata")
OLEVB = Path("apache-spamassassin-tdata/t/data/spam/olevbmacro")
ZB = Path("zbateson-mail-mime-parser/tests/_data/emails")


def _corpus_files() -> list:
    from testdata import CORPUS, corpus_params

    files: list[Path] = []
    for d in CORPUS_MAIL_DIRS:
        root = CORPUS / d
        if root.is_dir():
            files.extend(sorted(p for p in root.rglob("*") if p.is_file()))
    return corpus_params(files)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def ids(findings) -> list[str]:
    return [f.id for f in findings]


def inside(path: str, root: Path) -> bool:
    return Path(path).resolve().is_relative_to(root.resolve())


# -- every corpus message -----------------------------------------------------------


@pytest.mark.parametrize("path", _corpus_files(), ids=lambda p: str(p).split("corpus/")[-1] if p else "no-corpus")
def test_corpus_message_extracts_without_error(path: Path, extract_cfg, make_spool):
    spool = make_spool(extract_cfg)
    t0 = time.monotonic()
    res = extract_message(path.read_bytes(), spool, extract_cfg)
    assert time.monotonic() - t0 < 10
    assert "extract_error" not in ids(res.findings)
    assert isinstance(res.text, str) and isinstance(res.html, str)
    assert set(res.headers) >= {"Subject", "From", "To", "Message-ID"}
    assert len(res.text) <= 1024 * 1024 + 64 and len(res.html) <= 1024 * 1024 + 64
    assert ids(res.findings).count("mime_defect") <= 1
    for art in res.artifacts:
        assert inside(art.path, spool.root)
        assert Path(art.path).stat().st_size == art.size
        assert hashlib.sha256(Path(art.path).read_bytes()).hexdigest() == art.sha256
        assert art.origin and art.origin[0].split(":")[0] in ("attachment", "uuencode", "message", "recovered", "embedded", "body")
    assert spool.budget.total_bytes <= extract_cfg.max_total_bytes


def _run(corpus: Path, rel: Path | str, cfg, make_spool):
    spool = make_spool(cfg)
    return extract_message((corpus / rel).read_bytes(), spool, cfg), spool


def test_olevbmacro_attachments_named_and_typed(corpus, extract_cfg, make_spool):
    xlsx = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
    for eml, name in (("macro.eml", "macro.xlsm"), ("malicemacro.eml", "automacro.xlsm"), ("nomacro.eml", "nomacro.xlsx")):
        res, _ = _run(corpus, OLEVB / eml, extract_cfg, make_spool)
        assert [(a.name, a.type, a.origin) for a in res.artifacts] == [(name, xlsx, (f"attachment:{name}",))]
    # a macro workbook renamed .jpg: the detected type tells the truth
    res, _ = _run(corpus, OLEVB / "renamedmacro.eml", extract_cfg, make_spool)
    assert [(a.name, a.type) for a in res.artifacts] == [("renamed.jpg", xlsx)]
    # a CSV attachment is text/plain with a file name: an artifact
    res, _ = _run(corpus, OLEVB / "goodcsv.eml", extract_cfg, make_spool)
    assert [(a.name, a.type) for a in res.artifacts] == [("good.csv", "text/plain")]


def test_olevbmacro_encrypted_docx_decrypted_with_password_from_body(corpus, extract_cfg, make_spool):
    res, _ = _run(corpus, OLEVB / "encrypted.eml", extract_cfg, make_spool)
    enc, dec = res.artifacts
    assert enc.name == "encrypted_word_doc.docx" and enc.type == "application/encrypted"
    found = {f.id: f for f in enc.findings}
    assert "office_encrypted" in found and "'password'" in found["office_encrypted"].detail
    assert dec.origin == ("attachment:encrypted_word_doc.docx", "decrypted:encrypted_word_doc.docx")
    assert dec.type == "application/vnd.openxmlformats-officedocument.wordprocessingml.document"
    assert Path(dec.path).read_bytes()[:2] == b"PK"


def test_olevbmacro_zippwmacro_opened_with_password_from_body(corpus, extract_cfg, make_spool):
    # The corpus README calls this zip an empty stub; it is in fact a ZipCrypto
    # zip holding macro.xlsm, and the body's "Password: sa" opens it.
    res, _ = _run(corpus, OLEVB / "zippwmacro.eml", extract_cfg, make_spool)
    zipart = res.artifacts[0]
    assert zipart.name == "macro.zip" and zipart.type == "application/zip"
    enc = [f for f in zipart.findings if f.id == "encrypted_archive"]
    assert enc and "'sa'" in enc[0].detail and "keyword" in enc[0].detail
    assert [(a.origin, a.type) for a in res.artifacts[1:]] == [
        (("attachment:macro.zip", "member:macro.xlsm"), "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet")
    ]


def test_corpus_uuencoded_blocks_in_body_match_original_files(corpus, extract_cfg, make_spool):
    res, _ = _run(corpus, ZB / "m0018.txt", extract_cfg, make_spool)
    got = {a.name: a for a in res.artifacts}
    assert set(got) == {"blueball.png", "greenball.png", "redball.png"}
    for name, art in got.items():
        assert art.origin == (f"uuencode:{name}",)
        assert art.sha256 == sha((corpus / ZB / "files" / name).read_bytes())
        assert art.type == "image/png"
    assert "begin 644" not in res.text or res.text  # the body text is still collected


def test_corpus_8bit_filename_and_rfc2047_subject_decoded(corpus, extract_cfg, make_spool):
    res, _ = _run(corpus, ZB / "m2013.txt", extract_cfg, make_spool)
    assert res.headers["Subject"] == "Die Hasen und die Frösche"
    names = [a.name for a in res.artifacts]
    assert "HasenundFrösche.txt" in names
    art = res.artifacts[names.index("HasenundFrösche.txt")]
    assert art.sha256 == sha((corpus / ZB / "files" / "HasenundFrosche.txt").read_bytes())


def test_corpus_png_named_winmail_dat_is_not_tnef(corpus, extract_cfg, make_spool):
    # m4006's winmail.dat is really a PNG: decided by content, not by name
    res, _ = _run(corpus, ZB / "m4006.txt", extract_cfg, make_spool)
    assert [(a.name, a.type) for a in res.artifacts] == [("winmail.dat", "image/png")]


# -- built messages -------------------------------------------------------------------------


def _msg(subject: str = "test", body: str = "hello") -> EmailMessage:
    m = EmailMessage()
    m["Subject"] = subject
    m["From"] = "a@example.com"
    m["To"] = "b@example.org"
    m["Message-ID"] = "<1@example.com>"
    m.set_content(body)
    return m


def tiny_png() -> bytes:
    """A valid 1x1 grey PNG."""
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", 1, 1, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00\x80")) + chunk(b"IEND", b"")


def _zip(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in members.items():
            z.writestr(name, data)
    return buf.getvalue()


def test_attachment_and_inline_image_become_artifacts_text_does_not(extract_cfg, make_spool):
    m = _msg(body="see attached")
    m.add_alternative("<html><body><p>Hello <a href='http://example.net/x'>there</a></p>"
                      "<script>var secret='hidden';</script></body></html>", subtype="html")
    m.add_attachment(b"MZ\x90\x00" + b"\0" * 200, maintype="application", subtype="octet-stream", filename="run.exe")
    m.add_attachment(tiny_png(), maintype="image", subtype="png", disposition="inline")
    m.add_attachment(b"<html><script>atob('x')</script></html>", maintype="text", subtype="html", filename="invoice.html")
    spool = make_spool(extract_cfg)
    res = extract_message(m.as_bytes(), spool, extract_cfg)
    # the HTML body (it links out) is content of its own, role "body"; the plain one (no link) is not
    (body,) = [a for a in res.artifacts if a.role == "body"]
    assert body.name == "body.html" and body.origin == ("body:body.html",)
    files = [a for a in res.artifacts if a.role != "body"]
    names = [a.name for a in files]
    assert names[0] == "run.exe" and files[0].origin == ("attachment:run.exe",)
    assert names[2] == "invoice.html"  # an .html attachment is an artifact (HTML smuggling)
    assert files[1].type == "image/png" and names[1].startswith("part")
    assert len(files) == 3
    assert "see attached" in res.text and "Hello" in res.text and "there" in res.text
    assert "hidden" not in res.text  # script text is not visible text
    assert "href='http://example.net/x'" in res.html
    assert res.headers["Subject"] == "test" and res.headers["Message-ID"] == "<1@example.com>"


def test_uuencode_block_in_body_and_x_uuencode_part(extract_cfg, make_spool):
    payload = bytes(range(256)) * 3
    lines = [binascii.b2a_uu(payload[i : i + 45]) for i in range(0, len(payload), 45)]
    uu = b"begin 644 evil.exe\n" + b"".join(lines) + b"`\nend\n"
    raw = (
        b"From: a@example.com\nTo: b@example.org\nSubject: uu\nMIME-Version: 1.0\n"
        b"Content-Type: multipart/mixed; boundary=XX\n\n"
        b"--XX\nContent-Type: text/plain\n\nHere it is:\n" + uu + b"bye\n"
        b"--XX\nContent-Type: application/octet-stream; name=\"x.bin\"\nContent-Transfer-Encoding: x-uuencode\n\n"
        + uu.replace(b"evil.exe", b"x.bin") + b"--XX--\n"
    )
    spool = make_spool(extract_cfg)
    res = extract_message(raw, spool, extract_cfg)
    by_origin = {a.origin: a for a in res.artifacts}
    assert by_origin[("uuencode:evil.exe",)].sha256 == sha(payload)
    assert by_origin[("attachment:x.bin",)].sha256 == sha(payload)
    assert "Here it is" in res.text


def test_uu_blocks_tolerates_truncation():
    blocks = uu_blocks(b"begin 644 a.bin\nM" + b"!" * 20 + b"\n", 10)
    assert len(blocks) == 1 and blocks[0][0] == "a.bin"
    assert uu_blocks(b"no blocks here\nbegin nothing\n", 10) == []


def test_nested_rfc822_with_zip_attachment(extract_cfg, make_spool):
    inner = _msg(subject="Invoice 42", body="inner body Password: q1w2e3")
    inner.add_attachment(_zip({"docs/inv.exe": b"MZ" + b"A" * 100}), maintype="application", subtype="zip", filename="invoice.zip")
    outer = _msg(subject="Fwd: Invoice 42", body="forwarding")
    outer.add_attachment(inner)
    spool = make_spool(extract_cfg)
    res = extract_message(outer.as_bytes(), spool, extract_cfg)
    origins = [a.origin for a in res.artifacts]
    assert origins == [
        ("message:Invoice 42", "attachment:invoice.zip"),
        ("message:Invoice 42", "attachment:invoice.zip", "member:docs/inv.exe"),
    ]
    assert res.artifacts[1].name == "inv.exe" and res.artifacts[1].depth == 2
    assert "inner body" in res.text and "forwarding" in res.text


def test_message_rfc822_nesting_past_max_depth_is_a_finding(make_spool):
    cfg = dataclasses.replace(ExtractConfig(), max_depth=3)
    msg = _msg(subject="level0")
    msg.add_attachment(b"payload-0", maintype="application", subtype="octet-stream", filename="f0.bin")
    for level in range(1, 7):
        outer = _msg(subject=f"level{level}")
        outer.add_attachment(b"payload-%d" % level, maintype="application", subtype="octet-stream", filename=f"f{level}.bin")
        outer.add_attachment(msg)
        msg = outer
    spool = make_spool(cfg)
    res = extract_message(msg.as_bytes(), spool, cfg)
    names = sorted(a.name for a in res.artifacts)
    assert names == ["f3.bin", "f4.bin", "f5.bin", "f6.bin"]
    assert any(f.id == "nested_message_limit_exceeded" and "max_message_depth" in f.detail for f in res.findings)


def test_tnef_winmail_dat_attachments_become_artifacts(extract_cfg, make_spool):
    exe = b"MZ\x90\x00" + b"\x01" * 300
    doc = b"%PDF-1.4\n" + b"x" * 100
    m = _msg(body="Outlook message")
    m.add_attachment(
        build_tnef({"setup.exe": exe, "report.pdf": doc}), maintype="application", subtype="ms-tnef", filename="winmail.dat"
    )
    spool = make_spool(extract_cfg)
    res = extract_message(m.as_bytes(), spool, extract_cfg)
    got = {a.origin: a for a in res.artifacts}
    assert got[("attachment:winmail.dat", "tnef:setup.exe")].sha256 == sha(exe)
    assert got[("attachment:winmail.dat", "tnef:report.pdf")].sha256 == sha(doc)
    assert got[("attachment:winmail.dat", "tnef:report.pdf")].type == "application/pdf"


def build_tnef(attachments: dict[str, bytes]) -> bytes:
    """A minimal TNEF stream (MS-OXTNEF): version, codepage, then per attachment rend-data, title, data."""

    def attr(level: int, attr_id: int, attr_type: int, data: bytes) -> bytes:
        return struct.pack("<BHHI", level, attr_id, attr_type, len(data)) + data + struct.pack("<H", sum(data) & 0xFFFF)

    out = struct.pack("<IH", 0x223E9F78, 0x0101)
    out += attr(1, 0x9006, 0x0008, struct.pack("<I", 0x00010000))  # attTnefVersion
    out += attr(1, 0x9007, 0x0006, struct.pack("<II", 1252, 0))  # attOemCodepage
    for name, data in attachments.items():
        out += attr(2, 0x9002, 0x0006, b"\x01\x00" + b"\xff" * 4 + b"\x00" * 8)  # attAttachRendData
        out += attr(2, 0x8010, 0x0001, name.encode() + b"\x00")  # attAttachTitle
        out += attr(2, 0x800F, 0x0006, data)  # attAttachData
    return out


def test_malformed_mime_never_raises_and_reports_defects_once(extract_cfg, make_spool):
    raw = (
        b"From: \xe9\xe8 <x@example.com>\r\nSubject: =?x-unknown?Q?caf=E9?= \xff\xfe\r\n"
        b"Content-Type: multipart/mixed\r\n\r\n"  # no boundary
        b"--abc\r\nContent-Type: application/octet-stream; name=a.bin\r\nContent-Transfer-Encoding: base64\r\n\r\n"
        b"TVqQAAMAAAAEAAAA//8AALgAAAAA!!!AAAAQAAAAAAAAAAAA\r\n"  # bad base64
        b"--abc\r\nContent-Type: text/plain; charset=no-such-charset\r\n\r\n\xe4\xf6\xfc text\r\n"
    )
    spool = make_spool(extract_cfg)
    res = extract_message(raw, spool, extract_cfg)
    assert ids(res.findings).count("mime_defect") == 1
    defect = next(f for f in res.findings if f.id == "mime_defect")
    assert defect.severity == 1 and "Boundary" in defect.detail
    assert res.headers["From"].startswith("\u00e9\u00e8")  # Latin-1 8-bit header decoded
    assert "extract_error" not in ids(res.findings)


def test_truncated_base64_attachment_is_kept(extract_cfg, make_spool):
    m = _msg()
    data = bytes(range(256)) * 40
    m.add_attachment(data, maintype="application", subtype="octet-stream", filename="t.bin")
    raw = m.as_bytes()
    cut = raw[: raw.rindex(b"--") - 500]  # chop the end of the base64 and the closing boundary
    spool = make_spool(extract_cfg)
    res = extract_message(cut, spool, extract_cfg)
    (art,) = res.artifacts
    assert art.name == "t.bin" and 0 < art.size < len(data)
    assert Path(art.path).read_bytes() == data[: art.size]


def test_oversized_message_scans_its_head_only(make_spool):
    cfg = dataclasses.replace(ExtractConfig(), max_message_bytes=64 * 1024)
    m = _msg(body="small body")
    m.add_attachment(b"first" * 100, maintype="application", subtype="octet-stream", filename="first.bin")
    m.add_attachment(b"\x00" * 200 * 1024, maintype="application", subtype="octet-stream", filename="big.bin")
    spool = make_spool(cfg)
    res = extract_message(m.as_bytes(), spool, cfg)
    assert [a.name for a in res.artifacts][0] == "first.bin"
    assert res.artifacts[0].sha256 == sha(b"first" * 100)
    assert any(f.id == "message_size_limit_exceeded" and "max_message_bytes" in f.detail for f in res.findings)


def test_many_parts_are_capped(extract_cfg, make_spool):
    parts = b"".join(
        b"--B\nContent-Type: application/octet-stream; name=p%d.bin\n\nx%d\n" % (i, i) for i in range(3000)
    )
    raw = b"Subject: many\nContent-Type: multipart/mixed; boundary=B\n\n" + parts + b"--B--\n"
    spool = make_spool(extract_cfg)
    t0 = time.monotonic()
    res = extract_message(raw, spool, extract_cfg)
    assert time.monotonic() - t0 < 10
    assert 900 <= len(res.artifacts) <= 1000
    assert any(f.id == "parts_limit_exceeded" and "max_mime_parts" in f.detail for f in res.findings)


def test_deeply_nested_multiparts_are_bounded(extract_cfg, make_spool):
    depth = 3000
    head = b"".join(b"Content-Type: multipart/mixed; boundary=b%d\n\n--b%d\n" % (i, i) for i in range(depth))
    leaf = b"Content-Type: application/octet-stream; name=deep.bin\n\nDEEP\n"
    tail = b"".join(b"--b%d--\n" % i for i in reversed(range(depth)))
    raw = b"Subject: deep\n" + head + leaf + tail
    spool = make_spool(extract_cfg)
    t0 = time.monotonic()
    res = extract_message(raw, spool, extract_cfg)
    assert time.monotonic() - t0 < 10
    assert res.artifacts == []  # the leaf is far below the nesting cap
    assert any(f.id == "mime_depth_limit_exceeded" for f in res.findings)


def test_same_attachment_twice_listed_twice_expanded_once(extract_cfg, make_spool):
    z = _zip({"a.exe": b"MZ" + b"\x02" * 50})
    m = _msg()
    m.add_attachment(z, maintype="application", subtype="zip", filename="one.zip")
    m.add_attachment(z, maintype="application", subtype="zip", filename="two.zip")
    spool = make_spool(extract_cfg)
    res = extract_message(m.as_bytes(), spool, extract_cfg)
    assert [a.origin for a in res.artifacts] == [
        ("attachment:one.zip",),
        ("attachment:two.zip",),
        ("attachment:one.zip", "member:a.exe"),
    ]


def test_decode_header_value_bounds_and_cleans():
    assert decode_header_value("=?utf-8?b?w6lsw6h2ZQ==?=") == "élève"
    assert decode_header_value("a\x00b\r\n c") == "ab c"
    assert len(decode_header_value("x" * 5000)) == 998
    assert decode_header_value(None) == ""


def test_extra_passwords_from_policy_are_tried(extract_cfg, make_spool):
    import pyzipper

    buf = io.BytesIO()
    with pyzipper.AESZipFile(buf, "w", compression=pyzipper.ZIP_DEFLATED, encryption=pyzipper.WZ_AES) as z:
        z.setpassword(b"policy-secret")
        z.writestr("x.exe", b"MZ" + b"\x03" * 40)
    m = _msg(body="no password here")
    m.add_attachment(buf.getvalue(), maintype="application", subtype="zip", filename="x.zip")
    spool = make_spool(extract_cfg)
    res = extract_message(m.as_bytes(), spool, extract_cfg, extra_passwords=["policy-secret"])
    assert [a.name for a in res.artifacts] == ["x.zip", "x.exe"]
    assert any(f.id == "encrypted_archive" and "configured" in f.detail for f in res.artifacts[0].findings)


def test_html_visible_text():
    html = (
        "<html><head><title>T</title><style>p{}</style></head><body><p>Hello &amp; <b>bye</b>"
        "<script>var x='<p>hidden'</script><!-- comment --> end</p><SCRIPT>y()</SCRIPT>ok</body>"
    )
    text = html_visible_text(html)
    assert "Hello & bye" in text and "end" in text and "ok" in text
    assert "hidden" not in text and "comment" not in text and "y()" not in text and "p{}" not in text


@pytest.mark.parametrize(
    "hostile",
    ["<a " * 170_000, "<" * 500_000, "<!--" + "a" * 500_000, "<script>" + "</scr" * 100_000, "<a<b<c>" * 70_000, "&#x41;" * 80_000],
    ids=["unclosed-tags", "lt", "open-comment", "unclosed-script", "nested-lt", "entities"],
)
def test_html_visible_text_is_linear_on_hostile_markup(hostile):
    t0 = time.monotonic()
    html_visible_text(hostile)
    assert time.monotonic() - t0 < 1.0


def test_name_tricks_survive_as_evidence(tmp_path):
    """A right-to-left override in an attachment name reaches triage (it is the evidence)."""
    from email.message import EmailMessage

    from mailvm.config import ExtractConfig, TriageConfig
    from mailvm.extract import extract_message
    from mailvm.extract.spool import Spool
    from mailvm.triage import Triage

    m = EmailMessage()
    m["Subject"] = "invoice"
    m.set_content("see attached")
    m.add_attachment(b"MZ" + b"\0" * 200, maintype="application", subtype="octet-stream",
                     filename="invoice\u202efdp.exe")
    cfg = ExtractConfig()
    spool = Spool(tmp_path / "spool", cfg)
    extract_message(m.as_bytes(), spool, cfg)
    (art,) = [a for a in spool.artifacts if a.name.startswith("invoice")]
    assert "\u202e" in art.name
    ids = {f.id for f in Triage(TriageConfig(yara_rules_dir=str(tmp_path / "none"))).analyze(art).findings}
    assert "filetype_bidi_override" in ids
