"""Files that MIME tricks hide from a standard parser are found (issue 10 item 4).

Reused and broken boundaries, a zip sent as an unnamed ``text/html`` part, base64
blobs pasted into bodies, ``data:`` URIs, and Outlook ``.msg`` attachments.
"""

from __future__ import annotations

import base64
import hashlib
import io
import random
import zipfile
from pathlib import Path

from mailvm.extract import extract_file, extract_message

DATA = Path(__file__).resolve().parent / "data" / "msg"


def _zip(name="invoice.js", body=b"var s = new ActiveXObject('WScript.Shell'); s.Run('calc', 0);") -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr(name, body)
    return buf.getvalue()


def _b64(data: bytes) -> str:
    return base64.encodebytes(data).decode()


def _names(res):
    return {a.name for a in res.artifacts}


def test_nested_multipart_reusing_the_parent_boundary_keeps_the_zip(make_spool, extract_cfg):
    z = _zip()
    raw = (
        "From: a@b.example\nTo: c@d.example\nSubject: reuse\nMIME-Version: 1.0\n"
        'Content-Type: multipart/mixed; boundary="XYZ"\n\n'
        '--XYZ\nContent-Type: multipart/alternative; boundary="XYZ"\n\n'
        "--XYZ\nContent-Type: text/plain\n\nhello\n"
        "--XYZ\nContent-Type: text/html\n\n<p>hello</p>\n--XYZ--\n"
        '--XYZ\nContent-Type: application/zip; name="inv.zip"\nContent-Disposition: attachment; filename="inv.zip"\n'
        f"Content-Transfer-Encoding: base64\n\n{_b64(z)}--XYZ--\n"
    ).encode()
    res = extract_message(raw, make_spool(extract_cfg), extract_cfg)
    assert {"inv.zip", "invoice.js"} <= _names(res)
    zipart = [a for a in res.artifacts if a.name == "inv.zip"][0]
    assert zipart.sha256 == hashlib.sha256(z).hexdigest() and zipart.origin[0] == "recovered:inv.zip"
    assert any(f.id == "mime_part_recovered" for f in res.findings)


def test_missing_close_delimiter_and_garbage_boundaries(make_spool, extract_cfg):
    z = _zip("a.vbs", b"CreateObject(\"WScript.Shell\").Run \"cmd\"")
    raw = (
        "From: a@b.example\nSubject: x\nMIME-Version: 1.0\nContent-Type: multipart/mixed; boundary=\"outer\"\n\n"
        "--outer\nContent-Type: text/plain\n\nsee attached\n"
        "--wrong-boundary\nContent-Type: application/octet-stream; name=\"doc.zip\"\n"
        f"Content-Transfer-Encoding: base64\n\n{_b64(z)}"
    ).encode()
    res = extract_message(raw, make_spool(extract_cfg), extract_cfg)
    assert "a.vbs" in _names(res)


def test_zip_sent_as_an_unnamed_text_html_part(make_spool, extract_cfg):
    z = _zip()
    raw = (
        "From: a@b.example\nSubject: x\nMIME-Version: 1.0\nContent-Type: multipart/mixed; boundary=\"b\"\n\n"
        "--b\nContent-Type: text/plain\n\nhi\n"
        f"--b\nContent-Type: text/html\nContent-Transfer-Encoding: base64\n\n{_b64(z)}--b--\n"
    ).encode()
    res = extract_message(raw, make_spool(extract_cfg), extract_cfg)
    assert "invoice.js" in _names(res)
    assert any(f.id == "mime_text_part_is_file" for f in res.findings)


def test_base64_blob_pasted_into_the_body_and_data_uri(make_spool, extract_cfg):
    z = _zip("x.js")
    body = f"Dear customer,\nyour invoice:\n\n{_b64(z)}\nregards\n"
    raw = f"From: a@b.example\nSubject: x\nContent-Type: text/plain\n\n{body}".encode()
    res = extract_message(raw, make_spool(extract_cfg), extract_cfg)
    emb = [a for a in res.artifacts if a.role == "embedded"]
    assert emb and emb[0].sha256 == hashlib.sha256(z).hexdigest() and "x.js" in _names(res)
    html = f'<html><a href="data:application/zip;base64,{base64.b64encode(_zip("y.js")).decode()}">x</a></html>'
    raw = f"From: a@b.example\nSubject: x\nContent-Type: text/html\n\n{html}".encode()
    assert "y.js" in _names(extract_message(raw, make_spool(extract_cfg), extract_cfg))


def test_ordinary_base64_text_and_images_are_not_carved(make_spool, extract_cfg):
    rnd = random.Random(4)
    noise = bytes(rnd.getrandbits(8) for _ in range(3000))
    png = b"\x89PNG\r\n\x1a\n" + noise
    body = f"a key:\n{_b64(noise)}\nan image: <img src=\"data:image/png;base64,{base64.b64encode(png).decode()}\">\n"
    raw = f"From: a@b.example\nSubject: x\nContent-Type: text/html\n\n{body}".encode()
    res = extract_message(raw, make_spool(extract_cfg), extract_cfg)
    assert not [a for a in res.artifacts if a.role == "embedded"]
    assert not any(f.id in ("mime_part_recovered", "mime_text_part_is_file") for f in res.findings)


def test_outlook_msg_attachments_are_expanded(make_spool, extract_cfg, tmp_path):
    res = extract_file(DATA / "two-tif-attachments.msg", "fwd.msg", make_spool(extract_cfg), extract_cfg)
    names = _names(res)
    assert {"import OleFileIO.tif", "raised value error.tif"} <= names
    tif = [a for a in res.artifacts if a.name == "raised value error.tif"][0]
    assert tif.origin == ("file:fwd.msg", "msg:raised value error.tif") and tif.type == "image/tiff"
    plain = extract_file(DATA / "no-attachments.msg", "x.msg", make_spool(extract_cfg), extract_cfg)
    assert plain.findings == [] or all(f.id != "extract_error" for f in plain.findings)


def test_damaged_msg_is_a_finding_not_an_exception(make_spool, extract_cfg, tmp_path):
    data = (DATA / "two-tif-attachments.msg").read_bytes()
    bad = tmp_path / "bad.msg"
    bad.write_bytes(data[:4096] + bytes(len(data) - 4096))
    res = extract_file(bad, "bad.msg", make_spool(extract_cfg), extract_cfg)
    assert not any(f.id == "extract_error" for f in res.findings)
