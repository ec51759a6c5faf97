"""PDF keywords that matter, counted with Didier Stevens' pdfid.

pdfid reads byte by byte (about 0.5-2 MB/s: 1 s of a scan worker for a 2 MB
PDF, measured by bench/bench_extract.py): files up to :data:`PDFID_MAX_BYTES`
go through it; larger ones are counted by
:func:`count_names`, a regular-expression scan over the whole buffer that
decodes ``#xx`` escapes the same way.  Both yield ``{name: (count, hex_count)}``
and one function maps counts to findings:

``/JS`` ``/JavaScript`` (stronger with ``/OpenAction`` or ``/AA``), ``/Launch``,
``/EmbeddedFile``, ``/RichMedia``, ``/XFA``, ``/URI`` (count), ``/SubmitForm``,
``/GoToE`` ``/GoToR``, ``/Encrypt``, ``/JBIG2Decode``, and names written with
``#xx`` escapes (``/J#61vaScript``: evasion).
"""

from __future__ import annotations

import re

from pdfid import pdfid

from mailvm.triage.base import Context
from mailvm.verdict import Artifact, Finding

SOURCE = "triage:pdf"
PDFID_MAX_BYTES = 256 * 1024

WATCHED = ("/JS", "/JavaScript", "/AA", "/OpenAction", "/Launch", "/EmbeddedFile", "/RichMedia", "/XFA", "/URI",
           "/AcroForm", "/JBIG2Decode", "/Encrypt", "/SubmitForm", "/GoToE", "/GoToR", "/ImportData", "/ObjStm", "/Page")

_NAME = re.compile(rb"/[^\x00\x09\x0a\x0c\x0d\x20()<>\[\]{}/%]{1,127}")
_HEX = re.compile(rb"#([0-9A-Fa-f]{2})")


def count_names(data: bytes) -> dict[str, tuple[int, int]]:
    """``{name: (count, count written with #xx escapes)}`` for :data:`WATCHED` names."""
    watched = set(WATCHED)
    counts: dict[str, list[int]] = {}
    for m in _NAME.finditer(data):
        raw = m.group(0)
        hexed = b"#" in raw
        name = _HEX.sub(lambda h: bytes([int(h.group(1), 16)]), raw).decode("latin-1") if hexed else raw.decode("latin-1")
        if name not in watched:
            continue
        c = counts.setdefault(name, [0, 0])
        c[0] += 1
        if hexed:
            c[1] += 1
    return {k: (v[0], v[1]) for k, v in counts.items()}


def pdfid_counts(data: bytes, name: str) -> dict[str, tuple[int, int]]:
    """The same counts from pdfid (``ValueError`` when pdfid reports an error)."""
    doc = pdfid.PDFiD(name or "document.pdf", allNames=True, filebuffer=data)
    root = doc.documentElement
    if root.getAttribute("ErrorOccured") == "True":
        msg = root.getAttribute("ErrorMessage").strip().splitlines()
        raise ValueError(f"pdfid could not parse the file: {msg[-1][:160] if msg else 'unknown error'}")
    counts: dict[str, tuple[int, int]] = {}
    keywords = root.getElementsByTagName("Keywords")
    if keywords:
        for node in keywords[0].childNodes:
            kw = node.getAttribute("Name")
            if kw in WATCHED:
                counts[kw] = (int(node.getAttribute("Count") or 0), int(node.getAttribute("HexcodeCount") or 0))
    return counts


def count_findings(counts: dict[str, tuple[int, int]]) -> list[Finding]:
    def n(k: str) -> int:
        return counts.get(k, (0, 0))[0]

    out: list[Finding] = []
    js = n("/JS") + n("/JavaScript")
    auto = n("/OpenAction") + n("/AA")
    if js and auto:
        out.append(Finding("pdf_auto_javascript", 8, f"JavaScript run on open (/JS {n('/JS')}, /JavaScript {n('/JavaScript')}, "
                                                     f"/OpenAction {n('/OpenAction')}, /AA {n('/AA')})", SOURCE))
    elif js:
        out.append(Finding("pdf_javascript", 6, f"JavaScript (/JS {n('/JS')}, /JavaScript {n('/JavaScript')})", SOURCE))
    elif auto:
        out.append(Finding("pdf_auto_action", 3, f"automatic action (/OpenAction {n('/OpenAction')}, /AA {n('/AA')})", SOURCE))
    if n("/Launch"):
        out.append(Finding("pdf_launch", 8, f"/Launch action starts a program ({n('/Launch')})", SOURCE))
    if n("/EmbeddedFile"):
        out.append(Finding("pdf_embedded_file", 4, f"embedded file(s) ({n('/EmbeddedFile')})", SOURCE))
    if n("/RichMedia"):
        out.append(Finding("pdf_richmedia", 5, f"/RichMedia (Flash/multimedia) ({n('/RichMedia')})", SOURCE))
    if n("/XFA"):
        out.append(Finding("pdf_xfa", 4, f"XFA form ({n('/XFA')})", SOURCE))
    if n("/GoToE") or n("/GoToR") or n("/ImportData"):
        out.append(Finding("pdf_remote_goto", 4, f"/GoToE {n('/GoToE')}, /GoToR {n('/GoToR')}, /ImportData {n('/ImportData')}", SOURCE))
    if n("/SubmitForm"):
        out.append(Finding("pdf_submit_form", 3, f"form submits data ({n('/SubmitForm')})", SOURCE))
    if n("/Encrypt"):
        out.append(Finding("pdf_encrypted", 2, "encrypted PDF (content hidden from scanners)", SOURCE))
    if n("/JBIG2Decode"):
        out.append(Finding("pdf_jbig2", 2, f"JBIG2 images ({n('/JBIG2Decode')}), an exploited decoder", SOURCE))
    if n("/URI"):
        out.append(Finding("pdf_uri", 1, f"/URI x{n('/URI')} (links; each URI action names it twice)", SOURCE))
    hexed = sorted(k for k, (_c, h) in counts.items() if h and k != "/Page")
    if hexed:
        out.append(Finding("pdf_obfuscated_names", 6, f"names written with #xx escapes: {', '.join(hexed)}", SOURCE))
    return out


def analyze(artifact: Artifact, data_path: str, ctx: Context) -> list[Finding]:
    data = ctx.data
    findings: list[Finding] = []
    if len(data) <= PDFID_MAX_BYTES:
        try:
            counts = pdfid_counts(data, artifact.name)
        except ValueError as exc:  # pdfid's own parse error: count names ourselves
            findings.append(Finding("pdf_malformed", 2, str(exc).splitlines()[0][:200], SOURCE))
            counts = count_names(data)
    else:
        counts = count_names(data)
    start = data.find(b"%PDF")
    if start > 0:
        findings.append(Finding("pdf_header_offset", 3, f"PDF header at offset {start} (polyglot?)", SOURCE))
    return findings + count_findings(counts)
