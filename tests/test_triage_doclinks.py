"""doclinks: which links inside attached documents the link downloader follows (PDF lures,
Internet shortcuts), per-document and per-message bounds, and what is reported when some
are left out."""

from __future__ import annotations

import dataclasses
import hashlib

from mailvm.triage import doclinks
from pdf_builder import Doc
from triage_helpers import art

FULL_PAGE = (40.0, 60.0, 572.0, 740.0)


def _write(tmp_path, name: str, data: bytes):
    p = tmp_path / name
    p.write_bytes(data)
    return dataclasses.replace(art(p), sha256=hashlib.sha256(data).hexdigest())


def test_pdf_and_shortcut_links_in_order(tmp_path):
    pdf = _write(tmp_path, "a.pdf", Doc().page(links=(("https://lure.example/x y", FULL_PAGE, ""),)).build())
    url = _write(tmp_path, "b.url", b"[InternetShortcut]\r\nURL=http://203.0.113.8/scan.js\r\n")
    text = _write(tmp_path, "c.txt", b"see https://not-followed.example/ here")
    out = doclinks.document_urls([pdf, url, text], budget=5)
    assert out.urls == ["https://lure.example/x y", "http://203.0.113.8/scan.js"] and out.findings == []


def test_per_document_and_budget_limits(tmp_path):
    links = tuple((f"https://e.example/{i}", (72, 72 + 20 * i, 200, 90 + 20 * i), "x") for i in range(6))
    a = _write(tmp_path, "many.pdf", Doc().page(links=links).build())
    b = _write(tmp_path, "b.url", b"[InternetShortcut]\r\nURL=https://b.example/\r\n")
    out = doclinks.document_urls([a, b], budget=doclinks.MAX_PER_DOCUMENT)
    assert len(out.urls) == doclinks.MAX_PER_DOCUMENT and all(u.startswith("https://e.example/") for u in out.urls)
    assert [f.id for f in out.findings] == ["doc_links_not_followed"] and "b.url" in out.findings[0].detail


def test_unreadable_and_duplicate_documents(tmp_path):
    a = _write(tmp_path, "a.url", b"[InternetShortcut]\r\nURL=https://b.example/\r\n")
    gone = _write(tmp_path, "gone.pdf", b"%PDF-1.4\n")
    (tmp_path / "gone.pdf").unlink()
    out = doclinks.document_urls([a, a, gone], budget=5)
    assert out.urls == ["https://b.example/"] and out.findings == []
