"""Triage core: kind classification, the analyzer registry, error isolation,
the max_scan_bytes cap and sharing one Triage between threads."""

from __future__ import annotations

import hashlib
import io
import shutil
import struct
import zipfile
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pycdlib
import pytest

from mailvm.config import TriageConfig
from mailvm.extract.spool import detect_type
from mailvm.triage import ANALYZERS, DETONATE_KINDS, KINDS, Analyzer, Triage, TriageResult, classify
from mailvm.verdict import ERROR, Artifact, Finding

EICAR = b"X5O!P%@AP[4\\PZX54(P^)7CC)7}$" + b"EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*"


def art(path: Path, name: str | None = None) -> Artifact:
    mime, desc = detect_type(path)
    return Artifact("0" * 64, name or path.name, path.stat().st_size, mime, str(path), ("test",), desc)


@pytest.fixture(scope="module")
def triage(tmp_path_factory) -> Triage:
    return Triage(TriageConfig(yara_rules_dir=str(tmp_path_factory.mktemp("noyara") / "absent")))


def png_bytes() -> bytes:
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    ihdr = struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00\xff\x00\x00")) + chunk(b"IEND", b"")


def docx_bytes() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("[Content_Types].xml", '<?xml version="1.0"?><Types xmlns="http://schemas.openxmlformats.org/package/2006/content-types"/>')
        z.writestr("word/document.xml", "<w:document/>")
    return buf.getvalue()


def plain_zip_bytes() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("readme.txt", "hello")
    return buf.getvalue()


def iso_file(path: Path) -> None:
    iso = pycdlib.PyCdlib()
    iso.new()
    iso.add_fp(io.BytesIO(b"hello"), 5, "/HELLO.TXT;1")
    iso.write(str(path))
    iso.close()


MHT = (b'MIME-Version: 1.0\r\nContent-Type: multipart/related; boundary="b1"\r\n\r\n--b1\r\n'
       b"Content-Type: text/html\r\n\r\n<html><body>hi</body></html>\r\n--b1--\r\n")

CASES = [
    ("report.txt", b"Quarterly numbers attached.\n", "text"),
    ("empty.bin", b"", "text"),
    ("pic.png", png_bytes(), "image"),
    ("page.html", b"<!DOCTYPE html><html><body><p>hi</p></body></html>", "html"),
    ("drawing.svg", b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script></svg>', "html"),
    ("run.js", b"var x = 1;\nWScript.Echo(x);\n", "script"),
    ("run.ps1", b"Write-Host 'hello'\n", "script"),
    ("tool", b"#!/bin/sh\necho hi\n", "script"),
    ("doc.pdf", b"%PDF-1.4\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF\n", "pdf"),
    ("late.pdf", b"garbage before header\n%PDF-1.4\n%%EOF\n", "pdf"),
    ("doc.rtf", b"{\\rtf1\\ansi hello}", "office"),
    ("doc.doc", b"{\\rt{\\object}}", "office"),
    ("book.docx", docx_bytes(), "office"),
    ("files.zip", plain_zip_bytes(), "archive"),
    ("a.7z", b"7z\xbc\xaf\x27\x1c\x00\x04" + b"\x00" * 32, "archive"),
    ("a.gz", b"\x1f\x8b\x08\x00" + b"\x00" * 20, "archive"),
    ("mail.eml", b"From: a@example.org\nTo: b@example.org\nSubject: hi\nMessage-ID: <1@x>\n\nbody\n", "email"),
    ("disk.vhdx", b"vhdxfile" + b"\x00" * 1024, "disk_image"),
    ("page.mht", MHT, "html"),
    ("macro.doc", MHT, "office"),  # Word opens MHT named .doc (ActiveMime macro documents)
    ("blob.bin", b"".join(hashlib.sha256(bytes([i])).digest() for i in range(64)), "unknown"),
]


@pytest.mark.parametrize("name,data,kind", CASES, ids=[c[0] for c in CASES])
def test_classify_content(tmp_path, name, data, kind):
    p = tmp_path / name
    p.write_bytes(data)
    assert classify(art(p)) == kind


def test_classify_executables_and_lnk(tmp_path):
    elf = tmp_path / "true"
    shutil.copyfile("/bin/true", elf)
    assert classify(art(elf)) == "executable"
    pe = tmp_path / "x.dat"
    pe.write_bytes(b"MZ" + b"\x00" * 200)
    assert classify(art(pe)) == "executable"
    lnk = tmp_path / "x.lnk"
    lnk.write_bytes(b"L\x00\x00\x00" + bytes.fromhex("0114020000000000c000000000000046") + b"\x00" * 56)
    assert classify(art(lnk)) == "lnk"


def test_classify_iso(tmp_path):
    p = tmp_path / "x.iso"
    iso_file(p)
    assert classify(art(p)) == "disk_image"


def test_extension_is_only_a_hint_for_scripts(tmp_path):
    p = tmp_path / "invoice.js"
    p.write_bytes(png_bytes())  # an image named .js stays an image
    assert classify(art(p)) == "image"
    q = tmp_path / "notes.vbs"
    q.write_bytes(b"MsgBox \"hi\"\n")
    assert classify(art(q)) == "script"


def test_classify_missing_file_is_unknown(tmp_path):
    a = Artifact("0" * 64, "gone.doc", 0, "application/msword", str(tmp_path / "gone"), (), "")
    assert classify(a) == "unknown"


def test_registry_is_consistent():
    names = [a.name for a in ANALYZERS]
    assert len(names) == len(set(names))
    assert DETONATE_KINDS <= set(KINDS)
    for a in ANALYZERS:
        assert a.kinds is None or a.kinds <= set(KINDS), a.name
    assert {"archive", "email", "text", "image", "audio", "video"}.isdisjoint(DETONATE_KINDS)


def test_result_shape_and_detonation(triage, tmp_path):
    p = tmp_path / "page.html"
    p.write_bytes(b"<html><body>hello</body></html>")
    r = triage.analyze(art(p))
    assert isinstance(r, TriageResult)
    assert (r.kind, r.verdict, r.score, r.detonate, r.errors) == ("html", "clean", 0, True, [])
    t = tmp_path / "notes.txt"
    t.write_bytes(b"just text")
    assert triage.analyze(art(t)).detonate is False


def _boom(artifact, data_path, ctx):
    raise RuntimeError("analyzer exploded")


def _exit(artifact, data_path, ctx):
    raise SystemExit(1)  # pdfid calls sys.exit() on some errors


def _finds(artifact, data_path, ctx):
    return [Finding("test_marker", 5, f"{ctx.kind} {len(ctx.data)}", "test")]


def test_failing_analyzer_becomes_data(tmp_path):
    t = Triage(TriageConfig(yara_rules_dir=str(tmp_path / "none")),
               analyzers=[Analyzer("boom", None, _boom), Analyzer("exit", None, _exit), Analyzer("finds", None, _finds)])
    p = tmp_path / "a.txt"
    p.write_bytes(b"hello")
    r = t.analyze(art(p))
    assert [f.id for f in r.findings] == ["analyzer_error", "analyzer_error", "test_marker"]
    assert r.findings[0].severity == 0 and "boom" in r.findings[0].detail and "exploded" in r.findings[0].detail
    assert len(r.errors) == 2 and r.errors[0].startswith("boom:") and r.errors[1].startswith("exit:")
    assert (r.verdict, r.score) == ("suspicious", 5)


def test_analyzer_returning_garbage_is_an_error(tmp_path):
    t = Triage(TriageConfig(yara_rules_dir=str(tmp_path / "none")),
               analyzers=[Analyzer("bad", None, lambda a, p, c: "not a list")])
    p = tmp_path / "a.txt"
    p.write_bytes(b"x")
    r = t.analyze(art(p))
    assert r.errors and r.findings[0].id == "analyzer_error"


def test_unreadable_artifact_is_an_error_verdict(triage, tmp_path):
    a = Artifact("0" * 64, "x.exe", 10, "application/x-dosexec", str(tmp_path / "missing"), (), "")
    r = triage.analyze(a)
    assert r.verdict == ERROR and r.errors and r.findings[0].id == "analyzer_error"


def test_max_scan_bytes_caps_what_is_read(tmp_path):
    t = Triage(TriageConfig(yara_rules_dir=str(tmp_path / "none"), max_scan_bytes=32))
    p = tmp_path / "eicar.com"
    p.write_bytes(EICAR)
    r = t.analyze(art(p))
    assert "eicar" not in {f.id for f in r.findings}  # the signature needs bytes 28..68
    assert "scan_truncated" in {f.id for f in r.findings}
    full = Triage(TriageConfig(yara_rules_dir=str(tmp_path / "none"))).analyze(art(p))
    assert "eicar" in {f.id for f in full.findings} and full.verdict == "malicious"


def test_one_triage_shared_between_threads(triage, tmp_path, corpus):
    paths = [corpus / "oletools-test-data/msodde/dde-test.docx",
             corpus / "oletools-test-data/olevba/sample_with_vba.ppt",
             corpus / "oletools-test-data/excel4-macros/excel4_sample_macro.xls",
             corpus / "oletools-test-data/rtfobj/issue_251.rtf"]
    eicar = tmp_path / "eicar.com"
    eicar.write_bytes(EICAR)
    paths.append(eicar)
    arts = [art(p) for p in paths]
    expected = [triage.analyze(a).to_dict() for a in arts]
    with ThreadPoolExecutor(max_workers=4) as pool:
        got = list(pool.map(lambda a: triage.analyze(a).to_dict(), arts * 4))
    assert got == expected * 4


def test_mutated_documents_never_raise(triage, corpus, tmp_path):
    """Corrupted corpus documents: analyzers may fail (recorded as data), triage itself never raises."""
    import random

    from mailvm.verdict import VERDICTS

    rnd = random.Random(20240601)
    seeds = [corpus / "oletools-test-data" / n for n in (
        "olevba/sample_with_vba.ppt", "msodde/dde-test.docx", "oleobj/sample_with_lnk_file.doc", "rtfobj/issue_251.rtf",
        "excel4-macros/excel4_sample_macro.xls", "encrypted/autostart-encrypt-standardpassword.xlsm",
        "oleobj/external_link/sample_with_external_link_to_doc.xlsb")]
    for i in range(120):
        src = rnd.choice(seeds)
        data = bytearray(src.read_bytes())
        for _ in range(rnd.randrange(1, 20)):
            pos = rnd.randrange(len(data))
            data[pos : pos + 4] = rnd.choice([b"\xff\xff\xff\xff", b"\x00\x00\x00\x00", bytes([rnd.randrange(256)])])
        if rnd.random() < 0.3:
            data = data[: rnd.randrange(1, len(data))]
        p = tmp_path / f"m{i}{src.suffix}"
        p.write_bytes(bytes(data))
        r = triage.analyze(art(p, src.name))
        assert r.kind in KINDS and r.verdict in VERDICTS
        assert len(r.errors) == sum(f.id == "analyzer_error" for f in r.findings)
