"""DDE fields and DDE links, with oletools' msodde.

Word documents (doc, docx, Word XML, RTF) hide ``DDE``/``DDEAUTO`` fields;
Excel files (xls, xlsx/xlsb, Excel XML, SLK) and CSV hold DDE link formulas
(``=cmd|'/c calc'!A0``).  msodde is run in "DDE only" mode; every line it
returns is a DDE field or link.  A command interpreter or LOLBin in it is the
strongest finding; the command line also goes through the script indicators.

msodde needs a path: the analyzer is skipped (with an informational finding)
when the file was larger than ``max_scan_bytes``.  RTF is only parsed when it
contains a field instruction at all (msodde's RTF parser is slow on big files).
"""

from __future__ import annotations

import csv
import logging
import re
from xml.etree.ElementTree import ParseError

from oletools import msodde, ooxml

from mailvm.triage import officeutil, script
from mailvm.triage.base import Context, clip, extension
from mailvm.verdict import Artifact, Finding

log = logging.getLogger(__name__)

SOURCE = "triage:office_dde"
MAX_RTF_BYTES = 8 * 1024 * 1024
_CSV_DDE = re.compile(rb"(?m)^[\"']?[=+\-@][^\n|]{0,200}\|[^\n!]{0,300}!")


def dde_findings(path: str, data: bytes, note: str = "", csv_text: bool = False) -> list[Finding]:
    """Findings for the document at ``path`` (``data`` is its content, for the guards)."""
    pre = f"{note}: " if note else ""
    if officeutil.is_zip(data):
        why = officeutil.ooxml_refusal(data)
        if why:
            return [Finding("office_parse_refused", 4, pre + why, SOURCE)]
    if data[:4] == b"{\\rt":
        if len(data) > MAX_RTF_BYTES or b"fldinst" not in data.lower():
            return []
    elif not (officeutil.is_zip(data) or officeutil.is_ole(data) or data.lstrip(b"\xef\xbb\xbf \t\r\n")[:1] == b"<" or csv_text):
        return []  # OneNote, SLK, ODF...: msodde would read them as CSV
    try:
        text = msodde.process_file(path, field_filter_mode=msodde.FIELD_FILTER_DDE) or ""
    except (csv.Error, UnicodeDecodeError, ooxml.BadOOXML, ParseError) as exc:
        log.debug("msodde could not parse %s: %s", path, exc)
        return []
    lines = [ln.replace("\x00", "").strip() for ln in text.splitlines()]
    lines = [ln for ln in lines if ln]
    if not lines:
        return []
    joined = " | ".join(lines)
    cmd = officeutil.EXEC_RE.search(joined)
    auto = any(re.match(r"DDEAUTO\b", ln, re.I) for ln in lines)
    out: list[Finding] = []
    if cmd:
        out.append(Finding("office_dde_command", 8, pre + f"DDE {'auto-' if auto else ''}field or link runs "
                                                          f"{cmd.group(0)}: {clip(joined, 200)}", SOURCE))
    else:
        out.append(Finding("office_dde", 6 if auto else 5, pre + f"DDE field or link: {clip(joined, 200)}", SOURCE))
    out += script.command_findings(joined, SOURCE)
    return out


def analyze(artifact: Artifact, data_path: str, ctx: Context) -> list[Finding]:
    if ctx.kind == "text":
        is_csv = extension(artifact.name) == "csv" or artifact.type == "text/csv"
        if not is_csv or not _CSV_DDE.search(ctx.data):
            return []
    if ctx.truncated:
        return [Finding("office_dde_skipped", 0, "file larger than max_scan_bytes: DDE not checked", SOURCE)]
    return dde_findings(data_path, ctx.data, csv_text=ctx.kind == "text")
