"""rtf analyzer: corpus exploit samples, RTFs with OLE objects written by the
test (OLE Package carrying an executable, OLE2Link), clean RTFs, control-word
matching."""

from __future__ import annotations

import email
import email.policy
import struct
from pathlib import Path

import pytest
import pyzipper

from mailvm.config import TriageConfig
from mailvm.extract.spool import detect_type
from mailvm.triage import Triage, rtf
from mailvm.verdict import Artifact


def art(path: Path, name: str | None = None) -> Artifact:
    mime, desc = detect_type(path)
    return Artifact("0" * 64, name or path.name, path.stat().st_size, mime, str(path), ("test",), desc)


@pytest.fixture(scope="module")
def triage(tmp_path_factory) -> Triage:
    return Triage(TriageConfig(yara_rules_dir=str(tmp_path_factory.mktemp("noyara") / "absent")))


def ids(result) -> dict[str, int]:
    return {f.id: f.severity for f in result.findings if f.source == rtf.SOURCE}


def ole1(class_name: bytes, native: bytes) -> bytes:
    """An OLE 1.0 embedded object ([MS-OLEDS] 2.2): header, class name, native data."""
    lp = lambda s: struct.pack("<I", len(s) + 1) + s + b"\x00" if s else struct.pack("<I", 0)  # noqa: E731
    return struct.pack("<II", 0x00000501, 2) + lp(class_name) + lp(b"") + lp(b"") + struct.pack("<I", len(native)) + native


def package(filename: bytes, payload: bytes) -> bytes:
    temp = b"C:\\Users\\u\\AppData\\Local\\Temp\\" + filename
    return (struct.pack("<H", 2) + filename + b"\x00" + b"C:\\Users\\u\\Desktop\\" + filename + b"\x00"
            + struct.pack("<II", 0x00030000, len(temp) + 1) + temp + b"\x00" + struct.pack("<I", len(payload)) + payload)


def rtf_with(obj: bytes, cls: bytes, update: bool = False) -> bytes:
    hexdata = obj.hex().encode()
    lines = b"\n".join(hexdata[i : i + 64] for i in range(0, len(hexdata), 64))
    return (b"{\\rtf1\\ansi\\deff0{\\fonttbl{\\f0 Arial;}}\\pard Please see below.\\par"
            b"{\\object\\objemb" + (b"\\objupdate" if update else b"") + b"{\\*\\objclass " + cls + b"}"
            b"{\\*\\objdata\n" + lines + b"\n}{\\result {\\pict\\wmetafile8 0100}}}\\par}")


def test_equation_editor_exploit(triage, corpus):
    r = triage.analyze(art(corpus / "oletools-test-data/rtfobj/issue_251.rtf"))
    found = ids(r)
    assert found["rtf_equation_editor"] == 8
    assert {"rtf_malformed_header", "rtf_objupdate", "rtf_object"} <= set(found)
    assert r.verdict == "malicious"


def test_mangled_header_with_autoupdate_object(triage, corpus, tmp_path):
    with pyzipper.AESZipFile(corpus / "oletools-test-data/rtfobj/issue_185.rtf.zip") as zf:
        zf.setpassword(b"infected-test")
        p = tmp_path / "issue_185.rtf"
        p.write_bytes(zf.read("issue_185.rtf"))
    r = triage.analyze(art(p))
    assert r.kind == "office"  # starts with {\rt, not {\rtf1
    assert {"rtf_malformed_header": 4, "rtf_objupdate": 5, "rtf_object": 4}.items() <= ids(r).items()
    assert r.verdict == "suspicious"


def test_package_with_executable(triage, tmp_path):
    p = tmp_path / "doc.rtf"
    p.write_bytes(rtf_with(ole1(b"Package", package(b"invoice.exe", b"MZ\x90\x00" + b"\x00" * 60)), b"Package", update=True))
    r = triage.analyze(art(p))
    found = ids(r)
    assert found["rtf_package_executable"] == 8 and found["rtf_objupdate"] == 5
    assert "invoice.exe" in next(f.detail for f in r.findings if f.id == "rtf_package_executable")
    assert "rtf_malformed_header" not in found and r.verdict == "malicious"


def test_package_with_text_file(triage, tmp_path):
    p = tmp_path / "doc.rtf"
    p.write_bytes(rtf_with(ole1(b"Package", package(b"notes.txt", b"hello")), b"Package"))
    assert ids(triage.analyze(art(p))) == {"rtf_object": 4, "rtf_package": 4}


def test_ole2link(triage, tmp_path):
    p = tmp_path / "doc.rtf"
    p.write_bytes(rtf_with(ole1(b"OLE2Link", b"\x01\x00\x00\x02" + b"\x00" * 64), b"Word.Document.8"))
    assert ids(triage.analyze(art(p)))["rtf_ole2link"] == 8


def test_plain_rtf_is_clean(triage, tmp_path):
    p = tmp_path / "letter.rtf"
    p.write_bytes(b"{\\rtf1\\ansi\\deff0{\\fonttbl{\\f0 Times;}}\\f0\\fs24 Dear colleague,\\par see you.\\par}")
    r = triage.analyze(art(p))
    assert r.kind == "office" and r.verdict == "clean" and not r.findings


def test_spamassassin_rtf_attachment_is_clean(triage, corpus, tmp_path):
    msg = email.message_from_bytes((corpus / "apache-spamassassin-tdata/t/data/nice/004").read_bytes(), policy=email.policy.default)
    part = next(p for p in msg.walk() if (p.get_filename() or "").endswith(".rtf"))
    p = tmp_path / "att.rtf"
    p.write_bytes(part.get_payload(decode=True))
    r = triage.analyze(art(p, part.get_filename()))
    assert r.kind == "office" and r.verdict == "clean" and r.errors == []


@pytest.mark.slow
def test_rtf_specification_is_clean(triage, corpus):
    """The RTF 1.7 specification (2 MB) mentions \\objupdate and \\objdata as escaped text only."""
    r = triage.analyze(art(corpus / "oletools-test-data/msodde/RTF-Spec-1.7.rtf"))
    assert r.verdict == "clean" and ids(r) == {} and r.errors == []


def test_control_word_matching():
    cw = rtf.control_word(b"objupdate")
    assert cw.search(b"{\\object\\objupdate ")
    assert cw.search(b"\\\\\\objupdate")  # an escaped backslash, then the control word
    assert not cw.search(b"text \\\\objupdate in prose")  # escaped: literal text
    assert not cw.search(b"\\objupdatex")
