"""strip removes exactly the offending part, or the message is quarantined (issue 12 items 1 and 8).

The MIME part identity travels as data (Artifact.part_id); a file named ``x > y.zip`` next
to a benign part named ``x`` used to make strip remove ``x`` and deliver the EICAR zip.
"""

from __future__ import annotations

import email
import email.message
import email.policy
import hashlib
import io
import zipfile

import pytest

from mailvm.config import parse_config
from mailvm.milter.actions import notices, strip_parts
from mailvm.milter.service import MilterService, outcomes_from_report
from mailvm.policy import ActionsPolicy, Policy, decide
from mailvm.scan import Scanner
from mailvm.triage import Triage

EICAR = b"X5O!P%@AP[4\\PZX54(P^)7CC)7}$" + b"EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*"


def _zip(name: str, data: bytes) -> bytes:
    """The same bytes every time (a fixed member date): the tests compare the zip part's SHA-256 with
    one computed again later, which failed when the clock's 2-second zip resolution ticked between."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr(zipfile.ZipInfo(name, date_time=(2026, 1, 1, 0, 0, 0)), data)
    return buf.getvalue()


def _trick_message() -> bytes:
    m = email.message.EmailMessage()
    m["From"], m["To"], m["Subject"] = "a@b.example", "lab@lab.example.org", "tricky names"
    m.set_content("see attachments")
    m.add_attachment(b"just a harmless note\n", maintype="text", subtype="plain", filename="x")
    m.add_attachment(_zip("eicar.com", EICAR), maintype="application", subtype="zip", filename="x > y.zip")
    return m.as_bytes()


@pytest.fixture
def scanner(tmp_path):
    cfg = parse_config({"scantable": {"path": str(tmp_path / "t")}, "spool": {"dir": str(tmp_path / "s")},
                        "links": {"enabled": False}})
    return Scanner(cfg, Triage(cfg.triage), None, None)


def _leaves(raw: bytes) -> dict[str, bytes]:
    msg = email.message_from_bytes(raw, policy=email.policy.compat32)
    out = {}
    for part in msg.walk():
        if not part.is_multipart():
            out[part.get_filename() or "(body)"] = part.get_payload(decode=True) or b""
    return out


def test_strip_removes_the_zip_named_like_a_chain_not_the_benign_part(scanner):
    raw = _trick_message()
    report = scanner.scan_message(raw).to_dict()
    outcomes = outcomes_from_report(report)
    pol = Policy(actions=ActionsPolicy(malicious="strip"))
    d = decide(pol, outcomes)
    zip_part = hashlib.sha256(_zip("eicar.com", EICAR)).hexdigest()
    assert d.action == "strip" and d.strip_parts == (zip_part,)
    result = strip_parts(raw, d.strip_parts, notices(report))
    assert result.complete
    new = b"From: a\r\nMIME-Version: 1.0\r\n" + raw[raw.index(b"Content-Type"):raw.index(b"\n\n") + 2] + result.body
    leaves = _leaves(new)
    assert leaves["x"] == b"just a harmless note\n"  # the benign part is untouched
    assert "x > y.zip" not in leaves and not any(b"EICAR" in v for v in leaves.values())
    notice = leaves["removed-by-mailvm.txt"].decode()
    assert "inside: eicar.com" in notice and "malicious" in notice and "x > y.zip" in notice


def test_strip_fails_closed_when_a_part_cannot_be_found(scanner, tmp_path):
    raw = _trick_message()
    report = scanner.scan_message(raw).to_dict()
    pol = Policy(actions=ActionsPolicy(malicious="strip"))
    d = decide(pol, outcomes_from_report(report))
    svc = MilterService.__new__(MilterService)
    # the message handed to strip differs from the one analysed: the offending part is not there
    other = raw.replace(b"x > y.zip", b"renamed.zip").replace(b"UEsDB", b"UEsDC")
    new, stripped = MilterService._verified_strip(svc, other, d, report, "test")
    assert new.action == "quarantine" and stripped is None and "quarantined" in new.reason
    ok, stripped = MilterService._verified_strip(svc, raw, d, report, "test")
    assert ok.action == "strip" and stripped.complete


def test_strip_fails_closed_when_a_copy_of_the_part_hides_behind_a_reused_boundary(scanner):
    """The zip is attached twice: once as a normal part, once behind a nested multipart that reuses
    the outer boundary (a standard parser never sees that copy; the extractor skips it as already
    known).  Removing the visible copy is not enough: the hidden one would be delivered."""
    import base64

    zb = base64.encodebytes(_zip("eicar.com", EICAR)).decode()
    raw = ("From: a@b.example\nTo: c@d.example\nSubject: reuse\nMIME-Version: 1.0\n"
           'Content-Type: multipart/mixed; boundary="XYZ"\n\n'
           '--XYZ\nContent-Type: application/zip; name="a.zip"\nContent-Disposition: attachment; filename="a.zip"\n'
           f"Content-Transfer-Encoding: base64\n\n{zb}"
           '--XYZ\nContent-Type: multipart/alternative; boundary="XYZ"\n\n'
           "--XYZ\nContent-Type: text/plain\n\nhello\n"
           "--XYZ\nContent-Type: text/html\n\n<p>hello</p>\n--XYZ--\n"
           '--XYZ\nContent-Type: application/zip; name="b.zip"\nContent-Disposition: attachment; filename="b.zip"\n'
           f"Content-Transfer-Encoding: base64\n\n{zb}--XYZ--\n").encode()
    report = scanner.scan_message(raw).to_dict()
    d = decide(Policy(actions=ActionsPolicy(malicious="strip")), outcomes_from_report(report))
    assert d.action == "strip"
    result = strip_parts(raw, d.strip_parts, notices(report))
    assert not result.complete and result.missing == set(d.strip_parts)
    svc = MilterService.__new__(MilterService)
    new, stripped = MilterService._verified_strip(svc, raw, d, report, "test")
    assert new.action == "quarantine" and stripped is None
