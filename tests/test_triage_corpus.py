"""Triage against the labelled external corpus (its README.md lists the labels; location: tests/testdata.py).

A regression table: every labelled file -> the least verdict triage must give
and a finding id that must be among its findings.  Zipped corpus files are
unzipped to a temporary directory (password ``infected-test``; unzipping is not
executing) and their member is triaged, as extraction would hand it over; mail
attachments are taken out of the .eml files with the standard library.  Also:
every file under oletools-test-data is analyzed without an analyzer error.
"""

from __future__ import annotations

import email
import email.policy
import io
import zipfile
from pathlib import Path

import pytest
import pyzipper

from mailvm.config import TriageConfig
from mailvm.extract.spool import detect_type
from mailvm.triage import Triage
from mailvm.verdict import VERDICT_RANK, Artifact

OT = "oletools-test-data"
SA = "apache-spamassassin-tdata/t/data"
PASSWORD = b"infected-test"

#: (corpus path, how to get the file, least verdict, finding id that must be present)
#: how: "file" = the file itself, "zip" = the single member of a password-protected zip,
#: "eicarzip" = members of plain nested zips, "eml" = the attachment of a mail
LABELLED: list[tuple[str, str, str, str]] = [
    ("eicar/eicar.com", "file", "malicious", "eicar"),
    ("eicar/eicar_com.zip", "eicarzip", "malicious", "eicar"),
    ("eicar/eicarcom2.zip", "eicarzip", "malicious", "eicar"),
    (f"{OT}/olevba/sample_with_vba.ppt", "file", "suspicious", "office_vba_autoexec"),
    (f"{OT}/oleform/oleform-PR314.docm", "file", "suspicious", "office_vba_autoexec"),
    *[(f"{OT}/encrypted/autostart-encrypt-standardpassword.{e}", "file", "malicious", "office_encrypted_default_password")
      for e in ("xls", "xlsb", "xlsm")],
    *[(f"{OT}/excel4-macros/{n}", "file", "malicious", "office_xlm_auto_open")
      for n in ("excel4_sample_macro.slk", "excel4_sample_macro.xls", "excel4_sample_macro.xlsb", "excel4_sample_macro.xlsm",
                "excel4_sample_macro.xlt", "excel4_sample_macro.xltm", "excel4_sample_macro_excel5_format.xls")],
    *[(f"{OT}/msodde/dde-test.{e}", "file", "malicious", "office_dde_command") for e in ("docx", "docm", "xlsx", "xlsm", "xlsb")],
    *[(f"{OT}/msodde/{n}", "zip", "malicious", "office_dde_command")
      for n in ("dde-test-from-office2003.doc.zip", "dde-test-from-office2013-utf_16le-korean.doc.zip",
                "dde-test-from-office2016.doc.zip")],
    (f"{OT}/oleobj/sample_with_calc_embedded.doc", "file", "malicious", "office_embedded_executable"),
    *[(f"{OT}/oleobj/sample_with_lnk_file.{e}", "file", "malicious", "office_embedded_executable") for e in ("doc", "ppt", "pps")],
    (f"{OT}/oleobj/sample_with_lnk_to_calc.doc", "file", "malicious", "office_embedded_executable"),
    *[(f"{OT}/oleobj/external_link/sample_with_external_link_to_doc.{e}", "file", "suspicious", "office_external_ole_object")
      for e in ("docm", "docx", "dotm", "dotx", "potm", "potx", "ppsm", "ppsx", "pptm", "pptx", "xlsb", "xlsm", "xlsx")],
    (f"{OT}/rtfobj/issue_251.rtf", "file", "malicious", "rtf_equation_editor"),
    (f"{OT}/rtfobj/issue_185.rtf.zip", "zip", "suspicious", "rtf_objupdate"),
    (f"{SA}/spam/olevbmacro/macro.eml", "eml", "suspicious", "office_vba_macro"),
    (f"{SA}/spam/olevbmacro/malicemacro.eml", "eml", "suspicious", "office_vba_autoexec"),
    (f"{SA}/spam/olevbmacro/renamedmacro.eml", "eml", "suspicious", "filetype_extension_mismatch"),
    (f"{SA}/spam/olevbmacro/target_uri.eml", "eml", "suspicious", "office_external_hyperlink"),
    (f"{SA}/spam/olevbmacro/encrypted.eml", "eml", "suspicious", "office_encrypted"),
]

CLEAN: list[tuple[str, str]] = [
    *[(f"{OT}/msodde/{n}", "file") for n in ("harmless-clean.doc", "harmless-clean.docm", "harmless-clean.docx",
                                           "harmless-clean.xml", "harmless-clean-2003.xml")],
    (f"{OT}/basic/text", "file"),
    (f"{OT}/basic/empty", "file"),
    (f"{OT}/other/presentation.xps", "file"),
    (f"{SA}/spam/olevbmacro/nomacro.eml", "eml"),
    (f"{SA}/spam/olevbmacro/goodcsv.eml", "eml"),
]


def art(path: Path, name: str | None = None) -> Artifact:
    mime, desc = detect_type(path)
    return Artifact("0" * 64, name or path.name, path.stat().st_size, mime, str(path), ("corpus",), desc)


def attachments(eml: Path, dest: Path) -> list[Artifact]:
    """Every non-multipart part with a file name or a non-text type, written under ``dest``."""
    msg = email.message_from_bytes(eml.read_bytes(), policy=email.policy.default)
    out = []
    for i, part in enumerate(msg.walk()):
        if part.is_multipart():
            continue
        name = part.get_filename()
        if not name and part.get_content_maintype() in ("text", "message"):
            continue
        data = part.get_payload(decode=True) or b""
        p = dest / f"{eml.name}.{i}.bin"
        p.write_bytes(data)
        out.append(art(p, name or f"part{i}"))
    return out


def eicar_members(zip_path: Path, dest: Path) -> list[Artifact]:
    out: list[Artifact] = []

    def walk(data: bytes, depth: int) -> None:
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            for name in zf.namelist():
                member = zf.read(name)
                if name.lower().endswith(".zip") and depth < 3:
                    walk(member, depth + 1)
                else:
                    p = dest / f"m{len(out)}_{Path(name).name}"
                    p.write_bytes(member)
                    out.append(art(p, Path(name).name))

    walk(zip_path.read_bytes(), 0)
    return out


def protected_member(zip_path: Path, dest: Path) -> list[Artifact]:
    with pyzipper.AESZipFile(zip_path) as zf:
        zf.setpassword(PASSWORD)
        out = []
        for name in zf.namelist():
            p = dest / Path(name).name
            p.write_bytes(zf.read(name))
            out.append(art(p))
        return out


def artifacts(corpus: Path, rel: str, how: str, dest: Path) -> list[Artifact]:
    path = corpus / rel
    if how == "file":
        return [art(path)]
    if how == "zip":
        return protected_member(path, dest)
    if how == "eicarzip":
        return eicar_members(path, dest)
    if how == "eml":
        return attachments(path, dest)
    raise ValueError(how)


@pytest.fixture(scope="module")
def triage(tmp_path_factory) -> Triage:
    return Triage(TriageConfig(yara_rules_dir=str(tmp_path_factory.mktemp("noyara") / "absent")))


@pytest.mark.parametrize("rel,how,least,finding", LABELLED, ids=[f"{r}[{h}]" for r, h, _l, _f in LABELLED])
def test_labelled_malicious_or_suspicious(triage, corpus, tmp_path, rel, how, least, finding):
    arts = artifacts(corpus, rel, how, tmp_path)
    assert arts, f"nothing to triage in {rel}"
    for a in arts:
        r = triage.analyze(a)
        assert VERDICT_RANK[r.verdict] >= VERDICT_RANK[least], (a.name, r.verdict, r.findings)
        assert finding in {f.id for f in r.findings}, (a.name, r.findings)
        assert r.errors == []


@pytest.mark.parametrize("rel,how", CLEAN, ids=[r for r, _h in CLEAN])
def test_labelled_clean(triage, corpus, tmp_path, rel, how):
    arts = artifacts(corpus, rel, how, tmp_path)
    assert arts
    for a in arts:
        r = triage.analyze(a)
        assert r.verdict == "clean" and r.errors == [], (a.name, r.findings, r.errors)


def test_spamassassin_nice_attachments_are_clean(triage, corpus, tmp_path):
    mails = [p for p in sorted((corpus / SA / "nice").rglob("*")) if p.is_file()]
    assert len(mails) > 30
    seen = 0
    for eml in mails:
        for a in attachments(eml, tmp_path):
            seen += 1
            r = triage.analyze(a)
            assert r.verdict == "clean" and r.errors == [], (eml.name, a.name, r.findings)
    assert seen >= 2  # nice/004 (RTF) and base64.txt carry attachments


def test_empty_zip_stub_is_handled(triage, corpus, tmp_path):
    """zippwmacro.eml says "Password: sa"; its zip must simply not break triage."""
    arts = attachments(corpus / SA / "spam/olevbmacro/zippwmacro.eml", tmp_path)
    assert arts
    for a in arts:
        r = triage.analyze(a)
        assert r.kind == "archive" and not r.detonate and r.errors == []


@pytest.mark.slow
def test_every_oletools_file_without_analyzer_error(triage, corpus, tmp_path):
    files = [p for p in sorted((corpus / OT).rglob("*")) if p.is_file()]
    assert len(files) > 100
    failures = []
    for p in files:
        arts = [art(p)]
        if p.suffix == ".zip":
            arts += protected_member(p, tmp_path)
        for a in arts:
            r = triage.analyze(a)
            if r.errors:
                failures.append((str(p.relative_to(corpus)), a.name, r.errors))
    assert failures == []
