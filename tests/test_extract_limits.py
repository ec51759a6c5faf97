"""Every extraction limit is a ``*_limit_exceeded`` finding of low severity (CONTRACTS C3, issue 12 item 9).

A limit is a way to smuggle malware past the filter (EICAR behind six nested
zips, a 50-deep ``.eml``, a 3,000-deep multipart, 2,000+ attachments): what a
limit kept from analysis must say so with its own finding id, which the policy
maps to ``actions.unchecked``; the severity stays at most 2 (a limit is not
evidence of malice).
"""

from __future__ import annotations

import dataclasses
import io
import time
import zipfile
from email.message import EmailMessage

from mailvm.config import ExtractConfig
from mailvm.extract import extract_file, extract_message
from mailvm.extract.spool import LIMIT_FINDINGS, LIMIT_SEVERITY, OTHER_LIMIT, Spool

EICAR = b"X5O!P%@AP[4\\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*"


def limits(res) -> dict[str, str]:
    return {f.id: f.detail for f in res.findings if f.id.endswith("_limit_exceeded")}


def assert_low(res) -> None:
    for f in res.findings:
        if f.id.endswith("_limit_exceeded"):
            assert f.severity <= 2, f


def zipped(name: str, data: bytes) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr(name, data)
    return buf.getvalue()


def message(subject: str = "x") -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = "a@example.org"
    msg["To"] = "b@example.com"
    msg["Subject"] = subject
    msg.set_content("see attached")
    return msg


def test_every_limit_id_ends_in_limit_exceeded_and_is_low(tmp_path):
    assert LIMIT_SEVERITY <= 2
    for what, fid in LIMIT_FINDINGS.items():
        assert fid.endswith("_limit_exceeded"), what
    assert OTHER_LIMIT.endswith("_limit_exceeded")
    spool = Spool(tmp_path / "s", ExtractConfig())
    spool.note_limit("max_members", "a.zip: more than 1000 entries")
    spool.note_limit("max_members", "b.zip: more than 1000 entries")  # one finding per kind of limit
    spool.note_limit("something_new", "a limit added later without a table entry")
    assert [(f.id, f.severity) for f in spool.findings] == [
        ("archive_members_limit_exceeded", LIMIT_SEVERITY), (OTHER_LIMIT, LIMIT_SEVERITY)]


def test_eicar_behind_six_nested_zips(tmp_path, extract_cfg, make_spool):
    data = EICAR
    for level in range(6):
        data = zipped(f"level{level}.zip" if level else "eicar.com", data)
    src = tmp_path / "nested.zip"
    src.write_bytes(data)
    res = extract_file(src, "nested.zip", make_spool(extract_cfg), extract_cfg)
    assert "archive_depth_limit_exceeded" in limits(res)
    assert_low(res)


def test_eml_nested_fifty_deep(extract_cfg, make_spool):
    inner = message("level0")
    inner.add_attachment(EICAR, maintype="application", subtype="octet-stream", filename="eicar.com")
    for level in range(1, 50):
        outer = message(f"level{level}")
        outer.add_attachment(inner)
        inner = outer
    res = extract_message(inner.as_bytes(), make_spool(extract_cfg), extract_cfg)
    assert "nested_message_limit_exceeded" in limits(res)
    assert not any(a.name == "eicar.com" for a in res.artifacts)
    assert_low(res)


def test_attached_eml_files_nested_too_deep(tmp_path, make_spool):
    """The same through ``.eml`` *files* attached as octet-streams (expanded as containers, not walked inline)."""
    cfg = dataclasses.replace(ExtractConfig(), max_depth=3)
    data = b"From: a@example.org\nTo: b@example.com\nSubject: bottom\n\nhello\n"
    for level in range(6):
        wrapper = message(f"w{level}")
        wrapper.add_attachment(data, maintype="application", subtype="octet-stream", filename=f"w{level}.eml")
        data = wrapper.as_bytes()
    src = tmp_path / "outer.eml"
    src.write_bytes(data)
    res = extract_file(src, "outer.eml", make_spool(cfg), cfg)
    assert "nested_message_limit_exceeded" in limits(res)
    assert_low(res)


def test_multipart_nested_three_thousand_deep(extract_cfg, make_spool):
    depth = 3000
    head = b"".join(b"Content-Type: multipart/mixed; boundary=b%d\n\n--b%d\n" % (i, i) for i in range(depth))
    raw = b"Subject: deep\n" + head + b"Content-Type: application/octet-stream; name=eicar.com\n\n" + EICAR + b"\n"
    res = extract_message(raw, make_spool(extract_cfg), extract_cfg)
    assert "mime_depth_limit_exceeded" in limits(res)
    assert_low(res)


def test_more_than_two_thousand_attachments(extract_cfg, make_spool):
    parts = [b"--B\nContent-Type: application/octet-stream; name=f%d.bin\n\nfile %d\n" % (i, i) for i in range(2100)]
    raw = b"Subject: many\nContent-Type: multipart/mixed; boundary=B\n\n" + b"".join(parts) + b"--B--\n"
    res = extract_message(raw, make_spool(extract_cfg), extract_cfg)
    assert "parts_limit_exceeded" in limits(res)
    assert_low(res)


def test_archive_members_ratio_bytes_and_time(tmp_path, make_spool):
    cfg = dataclasses.replace(ExtractConfig(), max_members=5, max_ratio=10, max_total_bytes=4 << 20)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for i in range(8):
            z.writestr(f"f{i}.txt", b"member %d" % i)
    src = tmp_path / "many.zip"
    src.write_bytes(buf.getvalue())
    assert "archive_members_limit_exceeded" in limits(extract_file(src, "many.zip", make_spool(cfg), cfg))

    src.write_bytes(zipped("zeros.bin", bytes(8 << 20)))
    res = extract_file(src, "bomb.zip", make_spool(cfg), cfg)
    assert "archive_ratio_limit_exceeded" in limits(res) or "archive_bytes_limit_exceeded" in limits(res)
    assert_low(res)

    res = extract_file(src, "late.zip", make_spool(cfg, deadline=time.monotonic() - 1), cfg)
    assert "time_limit_exceeded" in limits(res)

