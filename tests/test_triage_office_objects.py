"""office_objects analyzer: embedded OLE packages (executables, shortcuts,
links), external relationships (templates, OLE objects, mhtml:, hyperlinks),
customUI callbacks."""

from __future__ import annotations

import email
import email.policy
import io
import zipfile
from pathlib import Path

import pytest

from mailvm.config import TriageConfig
from mailvm.extract.spool import detect_type
from mailvm.triage import Triage, office_objects
from mailvm.verdict import Artifact

OLEOBJ = "oletools-test-data/oleobj"


def art(path: Path, name: str | None = None) -> Artifact:
    mime, desc = detect_type(path)
    return Artifact("0" * 64, name or path.name, path.stat().st_size, mime, str(path), ("test",), desc)


@pytest.fixture(scope="module")
def triage(tmp_path_factory) -> Triage:
    return Triage(TriageConfig(yara_rules_dir=str(tmp_path_factory.mktemp("noyara") / "absent")))


def obj(result) -> dict[str, object]:
    return {f.id: f for f in result.findings if f.source == office_objects.SOURCE}


def test_embedded_executable(triage, corpus):
    r = triage.analyze(art(corpus / OLEOBJ / "sample_with_calc_embedded.doc"))
    f = obj(r)["office_embedded_executable"]
    assert f.severity == 8 and "calc.exe" in f.detail and "PE executable" in f.detail
    assert r.verdict == "malicious"


@pytest.mark.parametrize("name", ["sample_with_lnk_file.doc", "sample_with_lnk_file.ppt", "sample_with_lnk_file.pps"])
def test_embedded_shortcut_is_parsed(triage, corpus, name):
    f = obj(triage.analyze(art(corpus / OLEOBJ / name)))["office_embedded_executable"]
    assert f.severity == 8 and "calc.lnk" in f.detail and "shortcut" in f.detail
    assert "calc.exe" in f.detail.lower()  # the shortcut's own target, read by the LNK parser


def test_linked_package_to_executable(triage, corpus):
    f = obj(triage.analyze(art(corpus / OLEOBJ / "sample_with_lnk_to_calc.doc")))["office_embedded_executable"]
    assert f.severity == 7 and "linked" in f.detail


@pytest.mark.parametrize("ext", ["doc", "docx", "xls", "xlsb", "ppt", "pptx", "odt", "ods", "odp", "xla"])
def test_embedded_text_file_is_low(triage, corpus, ext):
    r = triage.analyze(art(corpus / OLEOBJ / f"embedded-simple-2007.{ext}"))
    found = obj(r)
    assert found["office_embedded_object"].severity == 3 and "simple-text-file.txt" in found["office_embedded_object"].detail
    assert r.verdict == "clean"


@pytest.mark.parametrize("ext", ["docx", "docm", "dotx", "xlsx", "xlsb", "pptx", "ppsm"])
def test_external_ole_object(triage, corpus, ext):
    r = triage.analyze(art(corpus / OLEOBJ / "external_link" / f"sample_with_external_link_to_doc.{ext}"))
    f = obj(r)["office_external_ole_object"]
    assert f.severity == 6 and "https://raw.githubusercontent.com/" in f.detail
    assert r.verdict == "suspicious"


def docx(rels: list[tuple[str, str, str]], part: str = "word/_rels/document.xml.rels", extra: dict[str, str] | None = None) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("[Content_Types].xml", '<Types xmlns="http://schemas.openxmlformats.org/package/2006/content-types"/>')
        z.writestr("word/document.xml", "<w:document/>")
        body = "".join(f'<Relationship Id="rId{i}" Type="http://schemas.openxmlformats.org/officeDocument/2006/relationships/{t}" '
                       f'Target="{target}"{mode}/>' for i, (t, target, mode) in enumerate(rels))
        z.writestr(part, f'<?xml version="1.0"?><Relationships xmlns="http://schemas.openxmlformats.org/package/2006/relationships">{body}</Relationships>')
        for name, text in (extra or {}).items():
            z.writestr(name, text)
    return buf.getvalue()


EXT = ' TargetMode="External"'


@pytest.mark.parametrize("rels,fid,sev", [
    ([("attachedTemplate", "http://e.test/t.dotm", EXT)], "office_remote_template", 7),
    ([("oleObject", "mhtml:http://e.test/x.html!x-usc:http://e.test/x.html", EXT)], "office_mhtml_exploit", 9),
    ([("hyperlink", "https://e.test/dl/invoice.exe", EXT)], "office_external_hyperlink", 6),
    ([("hyperlink", "https://www.example.org/", EXT)], "office_external_hyperlink", 4),
    ([("frame", "\\\\198.51.100.7\\share\\x.docx", EXT)], "office_external_frame", 6),
    ([("oleObject", "file:///C:/Windows/notes.txt", EXT)], "office_external_ole_object", 6),
    ([("oleObject", "../local/other.xlsx", EXT)], "office_external_ole_object", 3),
])
def test_external_relationships(triage, tmp_path, rels, fid, sev):
    p = tmp_path / "doc.docx"
    p.write_bytes(docx(rels, part="word/_rels/settings.xml.rels"))
    found = obj(triage.analyze(art(p)))
    assert found[fid].severity == sev


def test_internal_relationships_are_ignored(triage, tmp_path):
    p = tmp_path / "doc.docx"
    p.write_bytes(docx([("styles", "styles.xml", ""), ("hyperlink", "#bookmark", EXT)]))
    assert obj(triage.analyze(art(p))) == {}


def test_customui_onload(triage, tmp_path):
    p = tmp_path / "doc.docm"
    p.write_bytes(docx([], extra={"customUI/customUI14.xml": '<customUI xmlns="http://schemas.microsoft.com/office/2009/07/customui" onLoad="RibbonLoaded"/>'}))
    assert obj(triage.analyze(art(p)))["office_customui_onload"].severity == 5


def test_spamassassin_target_uri(triage, corpus, tmp_path):
    msg = email.message_from_bytes((corpus / "apache-spamassassin-tdata/t/data/spam/olevbmacro/target_uri.eml").read_bytes(),
                                   policy=email.policy.default)
    part = next(p for p in msg.walk() if p.get_filename())
    p = tmp_path / "att"
    p.write_bytes(part.get_payload(decode=True))
    r = triage.analyze(art(p, part.get_filename()))
    assert obj(r)["office_external_hyperlink"].severity == 4 and r.verdict == "suspicious"


def test_flat_opc_relationships():
    flat = (b'<?xml version="1.0"?><?mso-application progid="Word.Document"?><pkg:package xmlns:pkg="http://schemas.microsoft.com/office/2006/xmlPackage">'
            b'<pkg:part pkg:name="/word/_rels/settings.xml.rels"><pkg:xmlData><Relationships><Relationship Id="r1" '
            b'Type="http://schemas.openxmlformats.org/officeDocument/2006/relationships/attachedTemplate" '
            b'Target="https://e.test/tpl.dotm" TargetMode="External"/></Relationships></pkg:xmlData></pkg:part></pkg:package>')
    assert {f.id for f in office_objects.object_findings(flat)} == {"office_remote_template"}


@pytest.mark.parametrize("name", ["msodde/harmless-clean.doc", "msodde/harmless-clean.docx", "other/presentation.xps",
                                  "olevba/sample_with_vba.ppt"])
def test_documents_without_objects(triage, corpus, name):
    r = triage.analyze(art(corpus / "oletools-test-data" / name))
    assert obj(r) == {} and r.errors == []
