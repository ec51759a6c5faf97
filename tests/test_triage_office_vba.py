"""office_vba analyzer: VBA macros (olevba), Excel 4 macros in OLE, SLK and
OOXML workbooks, ActiveX parts, and the guards in front of oletools."""

from __future__ import annotations

import base64
import io
import struct
import time
import zipfile
import zlib
from pathlib import Path

import pytest
from oletools import olevba

from mailvm.config import TriageConfig
from mailvm.extract.spool import detect_type
from mailvm.triage import Triage, office_vba, officeutil
from mailvm.verdict import Artifact

OLE = "oletools-test-data"


def art(path: Path, name: str | None = None) -> Artifact:
    mime, desc = detect_type(path)
    return Artifact("0" * 64, name or path.name, path.stat().st_size, mime, str(path), ("test",), desc)


@pytest.fixture(scope="module")
def triage(tmp_path_factory) -> Triage:
    return Triage(TriageConfig(yara_rules_dir=str(tmp_path_factory.mktemp("noyara") / "absent")))


def vba_ids(result) -> dict[str, int]:
    return {f.id: f.severity for f in result.findings if f.source == office_vba.SOURCE}


def test_ppt_with_autoexec_macro(triage, corpus):
    r = triage.analyze(art(corpus / OLE / "olevba/sample_with_vba.ppt"))
    found = vba_ids(r)
    assert found["office_vba_macro"] == 5 and found["office_vba_autoexec"] == 6
    assert "Action_Click" in next(f.detail for f in r.findings if f.id == "office_vba_autoexec")
    assert r.verdict == "suspicious"


def test_activex_form_events(triage, corpus):
    found = vba_ids(triage.analyze(art(corpus / OLE / "oleform/oleform-PR314.docm")))
    assert {"office_vba_macro", "office_vba_autoexec"} <= set(found)


@pytest.mark.parametrize("name", ["excel4_sample_macro.xls", "excel4_sample_macro.xlt", "excel4_sample_macro_excel5_format.xls",
                                  "excel4_sample_macro.slk", "excel4_sample_macro.xlsm", "excel4_sample_macro.xlsb",
                                  "excel4_sample_macro.xltm"])
def test_excel4_macros(triage, corpus, name):
    r = triage.analyze(art(corpus / OLE / "excel4-macros" / name))
    found = vba_ids(r)
    assert found["office_xlm_macro"] == 6 and found["office_xlm_auto_open"] == 8, r.findings
    assert r.verdict == "malicious"


@pytest.mark.parametrize("name", ["harmless-clean.doc", "harmless-clean.docm", "harmless-clean.docx", "harmless-clean.xml"])
def test_documents_without_macros(triage, corpus, name):
    r = triage.analyze(art(corpus / OLE / "msodde" / name))
    assert vba_ids(r) == {} and r.errors == []


def scan(code: str, **kw):
    results = olevba.VBA_Scanner(code).scan()
    return {f.id: f.severity for f in office_vba._map_results(results, True, False, ["Module1"], "", False)}


def test_autoexec_with_shell_is_malicious():
    found = scan('Sub AutoOpen()\r\n  x = Shell("cmd.exe /c powershell -w hidden -c calc", vbHide)\r\nEnd Sub\r\n')
    assert found["office_vba_autoexec_exec"] == 8
    assert {"office_vba_macro", "office_vba_autoexec", "office_vba_exec_keywords"} <= set(found)


def test_download_macro_without_autoexec():
    found = scan('Sub Update()\r\n  Set x = CreateObject("MSXML2.XMLHTTP")\r\n  Set s = CreateObject("ADODB.Stream")\r\n'
                 '  s.SaveToFile "a.exe"\r\nEnd Sub\r\n')
    assert found["office_vba_exec_keywords"] == 6 and "office_vba_autoexec_exec" not in found


def test_business_macro_is_moderate():
    found = scan('Sub Workbook_Open()\r\n  Sheets("Summary").Range("A1").Value = Date\r\nEnd Sub\r\n')
    assert found == {"office_vba_macro": 5, "office_vba_autoexec": 6}


def xlsm(macrosheet: bool = True, auto_open: bool = True, activex: bool = False) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        ct = '<Types xmlns="http://schemas.openxmlformats.org/package/2006/content-types">'
        if macrosheet:
            ct += '<Override PartName="/xl/macrosheets/sheet1.xml" ContentType="application/vnd.ms-excel.macrosheet+xml"/>'
        z.writestr("[Content_Types].xml", ct + "</Types>")
        names = '<definedNames><definedName name="_xlnm.Auto_Open">Macro1!$A$1</definedName></definedNames>' if auto_open else ""
        z.writestr("xl/workbook.xml", f'<workbook xmlns="http://schemas.openxmlformats.org/spreadsheetml/2006/main">'
                                      f'<sheets><sheet name="Macro1" sheetId="1"/></sheets>{names}</workbook>')
        if macrosheet:
            z.writestr("xl/macrosheets/sheet1.xml", '<xm:macrosheet xmlns:xm="x"><sheetData><row><c><f>EXEC("calc")</f></c>'
                                                    "</row></sheetData></xm:macrosheet>")
        if activex:
            z.writestr("xl/activeX/activeX1.xml", "<ax:ocx/>")
            z.writestr("xl/activeX/activeX1.bin", b"\x00" * 64)
    return buf.getvalue()


def test_crafted_ooxml_macrosheet(triage, tmp_path):
    p = tmp_path / "book.xlsm"
    p.write_bytes(xlsm())
    found = vba_ids(triage.analyze(art(p)))
    assert found == {"office_xlm_macro": 6, "office_xlm_auto_open": 8}
    p.write_bytes(xlsm(auto_open=False))
    assert vba_ids(triage.analyze(art(p))) == {"office_xlm_macro": 6}
    p.write_bytes(xlsm(macrosheet=False, auto_open=False, activex=True))
    assert vba_ids(triage.analyze(art(p))) == {"office_activex": 4}


def _patch_declared_size(data: bytes, member: str, size: int) -> bytes:
    """Make the central directory claim ``member`` expands to ``size`` bytes."""
    buf = bytearray(data)
    pos = buf.find(b"PK\x01\x02")
    while pos >= 0:
        (nlen,) = struct.unpack_from("<H", buf, pos + 28)
        if buf[pos + 46 : pos + 46 + nlen].decode() == member:
            struct.pack_into("<I", buf, pos + 24, size)
            return bytes(buf)
        pos = buf.find(b"PK\x01\x02", pos + 4)
    raise AssertionError(member)


def test_zip_bomb_document_is_refused(triage, tmp_path):
    bomb = _patch_declared_size(xlsm(), "xl/macrosheets/sheet1.xml", 0x7FFFFFFF)
    assert officeutil.ooxml_refusal(bomb)
    p = tmp_path / "bomb.xlsm"
    p.write_bytes(bomb)
    r = triage.analyze(art(p))
    assert "office_parse_refused" in vba_ids(r) and r.errors == []


def activemime(payload: bytes) -> bytes:
    header = b"ActiveMime" + b"\x00" * (0x1E - 10) + struct.pack("<H", 4) + b"\x00" * (0x32 - 0x20)
    return header + payload


def word2003(blob: bytes) -> bytes:
    return (b'<?xml version="1.0"?>\n<?mso-application progid="Word.Document"?>\n'
            b'<w:wordDocument xmlns:w="http://schemas.microsoft.com/office/word/2003/wordml">'
            b'<w:docSuppData><w:binData w:name="editdata.mso">' + base64.encodebytes(blob) +
            b"</w:binData></w:docSuppData><w:body/></w:wordDocument>")


def test_activemime_bomb_is_refused(triage, tmp_path):
    bomb = activemime(zlib.compress(b"\x00" * (officeutil.MAX_ACTIVEMIME_BYTES + 1024 * 1024), 1))
    p = tmp_path / "doc.xml"
    p.write_bytes(word2003(bomb))
    t0 = time.monotonic()
    r = triage.analyze(art(p))
    assert r.kind == "office"
    assert "office_parse_refused" in vba_ids(r) and r.errors == []
    assert time.monotonic() - t0 < 30


def test_activemime_without_zlib_is_refused():
    assert "zlib" in officeutil.activemime_refusal(word2003(activemime(b"\x78\x9c" + b"\xff" * 5000)))
    small = activemime(zlib.compress(b"harmless"))
    assert officeutil.activemime_refusal(word2003(small)) is None
