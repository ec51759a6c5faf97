"""office_dde analyzer: DDE fields in Word files (doc, docx, Word XML), DDE
links in Excel files and CSV, clean documents, the max_scan_bytes skip."""

from __future__ import annotations

from pathlib import Path

import pytest
import pyzipper

from mailvm.config import TriageConfig
from mailvm.extract.spool import detect_type
from mailvm.triage import Triage, office_dde
from mailvm.verdict import Artifact

MSODDE = "oletools-test-data/msodde"
PASSWORD = b"infected-test"


def art(path: Path, name: str | None = None) -> Artifact:
    mime, desc = detect_type(path)
    return Artifact("0" * 64, name or path.name, path.stat().st_size, mime, str(path), ("test",), desc)


def unzip(zip_path: Path, dest: Path) -> Path:
    """The single member of a password-protected corpus zip, written under ``dest`` (not executed)."""
    with pyzipper.AESZipFile(zip_path) as zf:
        zf.setpassword(PASSWORD)
        (name,) = zf.namelist()
        out = dest / Path(name).name
        out.write_bytes(zf.read(name))
    return out


@pytest.fixture(scope="module")
def triage(tmp_path_factory) -> Triage:
    return Triage(TriageConfig(yara_rules_dir=str(tmp_path_factory.mktemp("noyara") / "absent")))


def dde(result) -> dict[str, object]:
    return {f.id: f for f in result.findings if f.source == office_dde.SOURCE}


@pytest.mark.parametrize("name", ["dde-test.docx", "dde-test.docm", "dde-test.xlsx", "dde-test.xlsm", "dde-test.xlsb",
                                  "dde-in-excel2003.xml"])
def test_dde_command_in_documents(triage, corpus, name):
    r = triage.analyze(art(corpus / MSODDE / name))
    f = dde(r)["office_dde_command"]
    assert f.severity == 8 and ("cmd" in f.detail.lower())
    assert r.verdict == "malicious" and r.errors == []


@pytest.mark.parametrize("name", ["dde-test-from-office2003.doc.zip", "dde-test-from-office2016.doc.zip",
                                  "dde-test-from-office2013-utf_16le-korean.doc.zip", "dde-in-word2003.xml.zip",
                                  "dde-in-word2007.xml.zip"])
def test_dde_in_zipped_corpus_documents(triage, corpus, tmp_path, name):
    doc = unzip(corpus / MSODDE / name, tmp_path)
    r = triage.analyze(art(doc))
    assert r.kind == "office"
    assert dde(r)["office_dde_command"].severity == 8
    assert "DDE auto-field" in dde(r)["office_dde_command"].detail


def test_dde_in_csv(triage, corpus):
    r = triage.analyze(art(corpus / MSODDE / "dde-in-csv.csv"))
    assert r.kind == "text" and not r.detonate
    assert dde(r)["office_dde_command"].severity == 8 and r.verdict == "malicious"


def test_crafted_csv_with_powershell(triage, tmp_path):
    p = tmp_path / "prices.csv"
    p.write_text("item,price\r\nwidget,3\r\n=cmd|' /C powershell -nop -w hidden -enc SQBFAFgAIAAoAE4AZQB3AC0ATwBiAGoA'!A0,1\r\n")
    ids = {f.id for f in triage.analyze(art(p)).findings}
    assert {"office_dde_command", "script_powershell_encoded"} <= ids


def test_dde_link_without_known_program(triage, tmp_path):
    p = tmp_path / "links.csv"
    p.write_text("a,b\r\n=Finance|'Quarter'!R1C1,2\r\n")
    assert dde(triage.analyze(art(p)))["office_dde"].severity == 5


@pytest.mark.parametrize("text", ["a,b,c\r\n1,2,3\r\n", "=SUM(A1:A3),x\r\n", "name;mail\r\nbob;bob@example.org\r\n"])
def test_plain_csv(triage, tmp_path, text):
    p = tmp_path / "data.csv"
    p.write_text(text)
    r = triage.analyze(art(p))
    assert dde(r) == {} and r.verdict == "clean"


@pytest.mark.parametrize("name", ["harmless-clean.doc", "harmless-clean.docm", "harmless-clean.docx", "harmless-clean.xml",
                                  "harmless-clean-2003.xml"])
def test_clean_documents(triage, corpus, name):
    r = triage.analyze(art(corpus / MSODDE / name))
    assert dde(r) == {} and r.verdict == "clean" and r.errors == []


def test_skipped_when_file_exceeds_scan_cap(corpus, tmp_path):
    path = corpus / MSODDE / "dde-test.docx"
    t = Triage(TriageConfig(yara_rules_dir=str(tmp_path / "none"), max_scan_bytes=path.stat().st_size - 1))
    r = t.analyze(art(path))
    assert "office_dde_skipped" in dde(r) and "office_dde_command" not in dde(r)
