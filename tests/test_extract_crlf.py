"""Parts hidden behind broken or reused MIME boundaries are found in CRLF mail too.

SMTP and the milter hand a message over with CRLF line ends; the recovery of hidden parts
(``mailvm.extract.embedded.salvage_parts``, finding ``mime_part_recovered``) only knew LF
boundary lines, so in production a zip behind a reused boundary was never seen.
"""

from __future__ import annotations

import base64
import io
import zipfile

import pytest

from mailvm.config import parse_config
from mailvm.scan import Scanner
from mailvm.triage import Triage


def _zip(name: str, data: bytes) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr(name, data)
    return buf.getvalue()


def _reused_boundary_message() -> bytes:
    zb = base64.encodebytes(_zip("invoice.js", b'new ActiveXObject("WScript.Shell").Run("cmd");')).decode()
    return ("From: a@b.example\nTo: c@d.example\nSubject: reuse\nMIME-Version: 1.0\n"
            'Content-Type: multipart/mixed; boundary="XYZ"\n\n'
            '--XYZ\nContent-Type: multipart/alternative; boundary="XYZ"\n\n'
            "--XYZ\nContent-Type: text/plain\n\nhello\n"
            "--XYZ\nContent-Type: text/html\n\n<p>hello</p>\n--XYZ--\n"
            '--XYZ\nContent-Type: application/zip; name="inv.zip"\nContent-Disposition: attachment; filename="inv.zip"\n'
            f"Content-Transfer-Encoding: base64\n\n{zb}--XYZ--\n").encode()


@pytest.mark.parametrize("eol", [b"\n", b"\r\n"], ids=["lf", "crlf"])
def test_a_zip_behind_a_reused_boundary_is_found_whatever_the_line_ends(tmp_path, eol):
    cfg = parse_config({"scantable": {"path": str(tmp_path / "t")}, "spool": {"dir": str(tmp_path / "s")},
                        "links": {"enabled": False}})
    raw = _reused_boundary_message().replace(b"\n", eol)
    report = Scanner(cfg, Triage(cfg.triage), None, None).scan_message(raw).to_dict()
    names = {a["name"] for a in report["artifacts"]}
    assert {"inv.zip", "invoice.js"} <= names, names
    assert any(f["id"] == "mime_part_recovered" for f in report["findings"])
