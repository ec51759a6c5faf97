"""The essentials without the external corpus: shipped samples (tests/data/samples.zip) and
documents built here (a DDE docx, the same encrypted with Office's well-known password and with
an unknown one, EICAR zipped twice).

The corpus tests (test_triage_corpus.py and the ``corpus`` fixture users) cover far more files;
these make sure that a fresh clone still tests every analyzer that decides a verdict.
"""

from __future__ import annotations

import io
import tempfile
import zipfile
from pathlib import Path

from msoffcrypto.format.ooxml import OOXMLFile
import pytest
from testdata import shipped_names, shipped_sample

from mailvm.config import TriageConfig
from mailvm.extract import extract_file
from mailvm.extract.spool import detect_type
from mailvm.lab.samples import eicar, eicar_zip
from mailvm.triage import Triage, office_crypto
from mailvm.verdict import VERDICT_RANK, Artifact

OT = "oletools"
#: (member of samples.zip, least verdict, finding that must be present)
SHIPPED: list[tuple[str, str, str]] = [
    (f"{OT}/olevba/sample_with_vba.ppt", "suspicious", "office_vba_autoexec"),
    (f"{OT}/oleform/oleform-PR314.docm", "suspicious", "office_vba_autoexec"),
    (f"{OT}/excel4-macros/excel4_sample_macro.xls", "malicious", "office_xlm_auto_open"),
    (f"{OT}/encrypted/autostart-encrypt-standardpassword.xlsm", "malicious", "office_encrypted_default_password"),
    (f"{OT}/encrypted/encrypted.docx", "suspicious", "office_encrypted"),
    (f"{OT}/encrypted/encrypted.doc", "suspicious", "office_encrypted"),
    (f"{OT}/msodde/dde-test.docx", "malicious", "office_dde_command"),
    (f"{OT}/oleobj/sample_with_calc_embedded.doc", "malicious", "office_embedded_executable"),
    (f"{OT}/oleobj/sample_with_lnk_file.doc", "malicious", "office_embedded_executable"),
    (f"{OT}/rtfobj/issue_251.rtf", "malicious", "rtf_equation_editor"),
]
CLEAN = [f"{OT}/msodde/harmless-clean.docx", f"{OT}/msodde/harmless-clean.doc"]


def art(path: Path, name: str | None = None) -> Artifact:
    mime, desc = detect_type(path)
    return Artifact("0" * 64, name or path.name, path.stat().st_size, mime, str(path), ("test",), desc)


@pytest.fixture(scope="module")
def triage(tmp_path_factory) -> Triage:
    return Triage(TriageConfig(yara_rules_dir=str(tmp_path_factory.mktemp("noyara") / "absent")))


def test_the_table_lists_every_shipped_sample():
    assert sorted(shipped_names()) == sorted([n for n, _l, _f in SHIPPED] + CLEAN)


@pytest.mark.parametrize("name,least,finding", SHIPPED, ids=[n.split("/", 1)[1] for n, _l, _f in SHIPPED])
def test_shipped_sample_gets_its_label(triage, tmp_path, name, least, finding):
    r = triage.analyze(art(shipped_sample(name, tmp_path)))
    assert VERDICT_RANK[r.verdict] >= VERDICT_RANK[least], (r.verdict, r.findings)
    assert finding in {f.id for f in r.findings}, r.findings
    assert r.errors == []


@pytest.mark.parametrize("name", CLEAN)
def test_shipped_clean_document_is_clean(triage, tmp_path, name):
    r = triage.analyze(art(shipped_sample(name, tmp_path)))
    assert r.verdict == "clean" and r.findings == [] and r.errors == []


# -- documents built here ---------------------------------------------------------------------

_CT = ('<?xml version="1.0" encoding="UTF-8" standalone="yes"?>'
       '<Types xmlns="http://schemas.openxmlformats.org/package/2006/content-types">'
       '<Default Extension="rels" ContentType="application/vnd.openxmlformats-package.relationships+xml"/>'
       '<Default Extension="xml" ContentType="application/xml"/>'
       '<Override PartName="/word/document.xml" '
       'ContentType="application/vnd.openxmlformats-officedocument.wordprocessingml.document.main+xml"/></Types>')
_RELS = ('<?xml version="1.0" encoding="UTF-8" standalone="yes"?>'
         '<Relationships xmlns="http://schemas.openxmlformats.org/package/2006/relationships">'
         '<Relationship Id="rId1" Type="http://schemas.openxmlformats.org/officeDocument/2006/relationships/'
         'officeDocument" Target="word/document.xml"/></Relationships>')


_STYLES = ('<?xml version="1.0" encoding="UTF-8" standalone="yes"?>'
           '<w:styles xmlns:w="http://schemas.openxmlformats.org/wordprocessingml/2006/main">'
           + "".join(f'<w:style w:type="paragraph" w:styleId="Style{i}"><w:name w:val="Style {i}"/></w:style>'
                     for i in range(80)) + "</w:styles>")


def docx(instr: str | None) -> bytes:
    """A small Word document; with ``instr``, one field whose instruction text it is.

    Its styles part is stored uncompressed so that the package is over 4 KiB, as Office's are:
    msoffcrypto-tool 6.1 writes an encrypted package under 4 KiB into the OLE mini stream wrongly
    (it cannot decrypt its own output then)."""
    field = ""
    if instr is not None:
        field = ('<w:r><w:fldChar w:fldCharType="begin"/></w:r>'
                 f'<w:r><w:instrText xml:space="preserve"> {instr} </w:instrText></w:r>'
                 '<w:r><w:fldChar w:fldCharType="separate"/></w:r><w:r><w:t>x</w:t></w:r>'
                 '<w:r><w:fldChar w:fldCharType="end"/></w:r>')
    doc = ('<?xml version="1.0" encoding="UTF-8" standalone="yes"?>'
           '<w:document xmlns:w="http://schemas.openxmlformats.org/wordprocessingml/2006/main"><w:body>'
           f'<w:p><w:r><w:t>Quarterly figures</w:t></w:r>{field}</w:p></w:body></w:document>')
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("[Content_Types].xml", _CT)
        z.writestr("_rels/.rels", _RELS)
        z.writestr("word/document.xml", doc)
        z.writestr("word/styles.xml", _STYLES, compress_type=zipfile.ZIP_STORED)
    data = buf.getvalue()
    assert len(data) > 4096
    return data


def encrypt(plain: bytes, password: str) -> bytes:
    """ECMA-376 agile encryption, as Office does it (msoffcrypto-tool)."""
    out = io.BytesIO()
    OOXMLFile(io.BytesIO(plain)).encrypt(password, out)
    return out.getvalue()


DDE = 'DDEAUTO c:\\\\windows\\\\system32\\\\cmd.exe "/k calc.exe"'


def write(tmp_path: Path, name: str, data: bytes) -> Path:
    p = tmp_path / name
    p.write_bytes(data)
    return p


def test_built_dde_docx_is_malicious_and_plain_docx_clean(triage, tmp_path):
    r = triage.analyze(art(write(tmp_path, "dde.docx", docx(DDE))))
    assert "office_dde_command" in {f.id for f in r.findings} and r.verdict == "malicious", r.findings
    r = triage.analyze(art(write(tmp_path, "plain.docx", docx(None))))
    assert r.verdict == "clean" and r.errors == [], r.findings


def test_well_known_password_is_tried_and_the_content_analysed(triage, tmp_path, monkeypatch):
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmpdir))  # where a decrypted copy for msodde would go
    enc = encrypt(docx(DDE), "VelvetSweatshop")
    r = triage.analyze(art(write(tmp_path, "report.docx", enc)))
    found = {f.id: f for f in r.findings}
    assert "VelvetSweatshop" in found["office_encrypted_default_password"].detail
    assert found["office_dde_command"].detail.startswith("decrypted:")
    assert r.verdict == "malicious" and r.errors == []
    assert list(tmpdir.iterdir()) == []  # no decrypted copy left behind
    plain, how = office_crypto.decrypt_well_known(enc, 1 << 26)
    assert how == "VelvetSweatshop" and plain[:2] == b"PK"
    capped, why = office_crypto.decrypt_well_known(enc, 1024)
    assert capped is None and "larger than 1024" in why


def test_unknown_password_is_suspicious_and_unopened(triage, tmp_path, extract_cfg, make_spool):
    enc = encrypt(docx(DDE), "s3cret-only-the-sender-knows")
    path = write(tmp_path, "report.docx", enc)
    r = triage.analyze(art(path))
    assert {f.id for f in r.findings} == {"office_encrypted"} and r.verdict == "suspicious"
    res = extract_file(path, path.name, make_spool(extract_cfg), extract_cfg)
    (a,) = res.artifacts
    assert any(f.id == "office_encrypted_unopened" for f in a.findings), a.findings


def test_extraction_decrypts_a_well_known_password_document(tmp_path, extract_cfg, make_spool):
    path = write(tmp_path, "report.docx", encrypt(docx(DDE), "VelvetSweatshop"))
    res = extract_file(path, path.name, make_spool(extract_cfg), extract_cfg)
    enc, dec = res.artifacts
    assert any(f.id == "office_encrypted" and "VelvetSweatshop" in f.detail for f in enc.findings), enc.findings
    assert dec.origin == ("file:report.docx", "decrypted:report.docx")
    assert Path(dec.path).read_bytes() == docx(DDE) or Path(dec.path).read_bytes()[:4] == b"PK\x03\x04"


def test_spin_count_guard_on_a_built_document():
    enc = encrypt(docx(None), "VelvetSweatshop")
    assert enc.count(b'spinCount="100000"') == 1
    plain, why = office_crypto.decrypt_well_known(enc.replace(b'spinCount="100000"', b'spinCount="999999"'), 1 << 26)
    assert plain is None and "spin count 999999" in why


def test_eicar_zipped_twice_is_found(triage, tmp_path, extract_cfg, make_spool):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("eicar_com.zip", eicar_zip())
    path = write(tmp_path, "eicarcom2.zip", buf.getvalue())
    res = extract_file(path, path.name, make_spool(extract_cfg), extract_cfg)
    leaf = [a for a in res.artifacts if Path(a.path).read_bytes() == eicar()]
    assert len(leaf) == 1 and leaf[0].depth == 2, [(a.name, a.depth) for a in res.artifacts]
    r = triage.analyze(leaf[0])
    assert "eicar" in {f.id for f in r.findings} and r.verdict == "malicious"


def test_macro_document_renamed_jpg(triage, tmp_path):
    """A macro document sent as a picture: the content decides the kind, the name is a mismatch."""
    p = shipped_sample(f"{OT}/olevba/sample_with_vba.ppt", tmp_path)
    r = triage.analyze(art(p, "renamed.jpg"))
    assert r.kind == "office"
    assert {f.id: f.severity for f in r.findings}["filetype_extension_mismatch"] >= 4
    assert r.verdict in ("suspicious", "malicious")
