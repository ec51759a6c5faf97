"""filetype analyzer: dangerous and double extensions, type/name mismatch, Unicode tricks."""

from __future__ import annotations

import email
import email.policy
import shutil
import subprocess
from pathlib import Path

import pytest

from mailvm.config import TriageConfig
from mailvm.extract.spool import detect_type
from mailvm.triage import Triage
from mailvm.verdict import Artifact
from triage_helpers import ids

MINGW = shutil.which("x86_64-w64-mingw32-gcc")


def art(path: Path, name: str | None = None) -> Artifact:
    mime, desc = detect_type(path)
    return Artifact("0" * 64, name or path.name, path.stat().st_size, mime, str(path), ("test",), desc)


@pytest.fixture(scope="module")
def triage(tmp_path_factory) -> Triage:
    return Triage(TriageConfig(yara_rules_dir=str(tmp_path_factory.mktemp("noyara") / "absent")))


@pytest.fixture
def text_file(tmp_path) -> Path:
    p = tmp_path / "content"
    p.write_bytes(b"Dear customer, please find the invoice attached.\n")
    return p


@pytest.mark.parametrize("name", ["setup.exe", "invoice.js", "doc.hta", "x.lnk", "disk.iso", "a.scr", "b.vbs",
                                  "c.one", "d.ps1", "EVIL.BAT", "trailing.exe. "])
def test_dangerous_extensions(triage, text_file, name):
    r = triage.analyze(art(text_file, name))
    # informational only: refusing a type is the policy's blocked_types, not a verdict
    assert ids(r).get("filetype_dangerous_extension") == 1, r.findings
    assert r.verdict == "clean"


@pytest.mark.parametrize("name", ["invoice.pdf", "photo.jpg", "notes.txt", "archive.zip", "README", "x.docx"])
def test_harmless_names_have_no_name_findings(triage, text_file, name):
    r = triage.analyze(art(text_file, name))
    assert not {i for i in ids(r) if i.startswith("filetype_") and i != "filetype_extension_mismatch"}


def test_double_extension(triage, text_file):
    r = triage.analyze(art(text_file, "invoice.pdf.exe"))
    assert ids(r)["filetype_double_extension"] == 7
    assert r.verdict == "malicious"
    padded = triage.analyze(art(text_file, "scan.pdf                              .exe"))
    f = next(f for f in padded.findings if f.id == "filetype_double_extension")
    assert "padding" in f.detail
    assert "filetype_double_extension" not in ids(triage.analyze(art(text_file, "backup.tar.gz")))
    assert "filetype_double_extension" not in ids(triage.analyze(art(text_file, "my.setup.exe")))


def test_right_to_left_override(triage, text_file):
    # what a mail client shows as "invoicexcod.exe" reversed: the real extension is .scr
    r = triage.analyze(art(text_file, "invoice\u202ecod.scr"))
    assert ids(r)["filetype_bidi_override"] == 8
    assert "[RLO]" in next(f.detail for f in r.findings if f.id == "filetype_bidi_override")
    assert r.verdict == "malicious"


def test_zero_width_and_lookalike_dots(triage, text_file):
    assert ids(triage.analyze(art(text_file, "pay\u200bment.txt")))["filetype_unicode_trick"] == 5
    assert ids(triage.analyze(art(text_file, "invoice\u2024pdf")))["filetype_unicode_trick"] == 5


def test_office_document_renamed_jpg(triage, corpus, tmp_path):
    """SpamAssassin's renamedmacro.eml: a macro workbook sent as renamed.jpg."""
    msg = email.message_from_bytes((corpus / "apache-spamassassin-tdata/t/data/spam/olevbmacro/renamedmacro.eml").read_bytes(),
                                   policy=email.policy.default)
    part = next(p for p in msg.walk() if p.get_filename())
    p = tmp_path / "att"
    p.write_bytes(part.get_payload(decode=True))
    r = triage.analyze(art(p, part.get_filename()))
    assert part.get_filename() == "renamed.jpg"
    assert r.kind == "office"
    assert ids(r)["filetype_extension_mismatch"] == 5
    assert r.verdict in ("suspicious", "malicious")


@pytest.mark.skipif(MINGW is None, reason="x86_64-w64-mingw32-gcc not installed")
def test_pe_named_txt(triage, tmp_path):
    src = tmp_path / "hello.c"
    src.write_text("int main(void) { return 0; }\n")
    exe = tmp_path / "hello.exe"
    subprocess.run([MINGW, "-O1", "-s", "-o", str(exe), str(src)], check=True, timeout=120)
    r = triage.analyze(art(exe, "readme.txt"))
    assert r.kind == "executable"
    assert ids(r)["filetype_extension_mismatch"] == 6
    assert "filetype_extension_mismatch" not in ids(triage.analyze(art(exe, "hello.exe")))


def test_pdf_named_pdf_is_not_a_mismatch(triage, tmp_path):
    p = tmp_path / "x"
    p.write_bytes(b"%PDF-1.4\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF\n")
    assert "filetype_extension_mismatch" not in ids(triage.analyze(art(p, "statement.pdf")))
    assert ids(triage.analyze(art(p, "statement.docx")))["filetype_extension_mismatch"] == 4
