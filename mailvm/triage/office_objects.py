"""Embedded objects and external references in Office documents (oletools' oleobj).

* OLE Package objects (``\\x01Ole10Native`` streams) in OLE files, in the OLE
  parts of OOXML/ODF zips and in PowerPoint records: what file they carry and
  whether it runs (executable or script extension, ``MZ`` or LNK content), or a
  *linked* package pointing at a program;
* storages whose CLSID oletools knows as an exploit vector (Equation Editor,
  monikers, MSCOMCTL...);
* OOXML relationships with ``TargetMode="External"``: remote templates
  (``attachedTemplate``), remote OLE objects and frames, ``mhtml:`` targets
  (CVE-2021-40444), hyperlinks;
* ``customUI`` ``onLoad`` callbacks.

Relationship parts are read directly with bounded sizes (a regular expression
over ``<Relationship>`` tags, which also covers flat-OPC XML); oleobj's
``OleNativeStream`` parses the package streams.
"""

from __future__ import annotations

import html
import logging
import re

import olefile
from oletools import oleobj
from oletools.common import clsid as known_clsids

from mailvm.triage import lnk, officeutil, ziputil
from mailvm.triage.base import Context, clip, extension
from mailvm.triage.filetype import DANGEROUS_EXTENSIONS
from mailvm.verdict import Artifact, Finding

log = logging.getLogger(__name__)

SOURCE = "triage:office_objects"
MAX_OLE_MEMBERS = 64
MAX_STREAMS = 2000
MAX_RELS_PART = 2 * 1024 * 1024
MAX_RELS_PARTS = 200
MAX_NATIVE_STREAM = 64 * 1024 * 1024
EQUATION_CLSIDS = frozenset({
    "0002CE02-0000-0000-C000-000000000046", "0002CE03-0000-0000-C000-000000000046",
    "00021700-0000-0000-C000-000000000046", "0003000B-0000-0000-C000-000000000046",
    "0004A6B0-0000-0000-C000-000000000046",
})
LNK_HEAD = b"L\x00\x00\x00\x01\x14\x02\x00"

_REL_TAG = re.compile(rb"<(?:\w+:)?Relationship\b([^>]*)>", re.I)
_ATTR = re.compile(rb"\b(Type|Target|TargetMode)\s*=\s*(\"[^\"]*\"|'[^']*')", re.I)
_ONLOAD = re.compile(rb"<(?:\w+:)?customUI\b[^>]*\bonLoad\s*=\s*[\"']([^\"']{1,200})[\"']", re.I)
_REMOTE = re.compile(r"^\s*(https?:|ftp:|file:|mhtml:|\\\\|//)", re.I)

#: relationship type -> (finding id, severity) for remote targets
REL_SEVERITY: dict[str, tuple[str, int]] = {
    "attachedtemplate": ("office_remote_template", 7),
    "oleobject": ("office_external_ole_object", 6),
    "frame": ("office_external_frame", 6),
    "subdocument": ("office_external_frame", 6),
    "hyperlink": ("office_external_hyperlink", 4),
}


def _rel_attrs(tag: bytes) -> dict[str, str]:
    out: dict[str, str] = {}
    for m in _ATTR.finditer(tag):
        out[m.group(1).decode().lower()] = html.unescape(m.group(2)[1:-1].decode("utf-8", "replace"))
    return out


def relationship_findings(blobs: list[bytes], pre: str = "") -> list[Finding]:
    """Findings for ``<Relationship TargetMode="External">`` entries in the given XML parts."""
    out: list[Finding] = []
    seen: set[tuple[str, str]] = set()
    for blob in blobs:
        for m in _REL_TAG.finditer(blob):
            attrs = _rel_attrs(m.group(1))
            if attrs.get("targetmode", "").lower() != "external":
                continue
            rtype = attrs.get("type", "").rsplit("/", 1)[-1].lower()
            target = attrs.get("target", "")
            key = (rtype, target)
            if key in seen:
                continue
            seen.add(key)
            remote = bool(_REMOTE.match(target))
            if target.lower().lstrip().startswith("mhtml:"):
                out.append(Finding("office_mhtml_exploit", 9,
                                   pre + f"{rtype} relationship to mhtml: target (CVE-2021-40444): {clip(target, 150)}", SOURCE))
                continue
            fid, sev = REL_SEVERITY.get(rtype, ("office_external_link", 5))
            if rtype == "hyperlink":
                if not remote:
                    continue
                if extension(target.split("?")[0].split("#")[0]) in DANGEROUS_EXTENSIONS:
                    sev = 6
            elif not remote:
                sev = min(sev, 3)
            out.append(Finding(fid, sev, pre + f"external {rtype} relationship: {clip(target, 150)}", SOURCE))
    return _dedupe(out)


def _dedupe(findings: list[Finding]) -> list[Finding]:
    """One finding per id: the most severe, with a count of the others."""
    by_id: dict[str, list[Finding]] = {}
    for f in findings:
        by_id.setdefault(f.id, []).append(f)
    out = []
    for fid, group in by_id.items():
        top = max(group, key=lambda f: f.severity)
        extra = f" (+{len(group) - 1} more)" if len(group) > 1 else ""
        out.append(Finding(fid, top.severity, top.detail + extra, top.source))
    return out


def _package_finding(filename: str, src_path: str, is_link: bool, head: bytes, pre: str) -> Finding:
    names = [n for n in (filename, src_path) if n]
    exts = {extension(n) for n in names}
    runs = bool(exts & DANGEROUS_EXTENSIONS) or head.startswith(b"MZ") or head.startswith(LNK_HEAD)
    shown = clip(filename or src_path or "?", 100)
    if is_link:
        if runs:
            return Finding("office_embedded_executable", 7, pre + f"linked package object starts {shown} ({clip(src_path, 100)})", SOURCE)
        return Finding("office_embedded_object", 3, pre + f"linked package object {shown}", SOURCE)
    if runs:
        what = "executable"
        if head.startswith(LNK_HEAD):
            info = lnk.parse(head)
            what = "shortcut" + (f" -> {clip(info.command_line(), 120)}" if info and info.command_line() else "")
        elif head.startswith(b"MZ"):
            what = "PE executable"
        return Finding("office_embedded_executable", 8, pre + f"embedded package object {shown}: {what}", SOURCE)
    return Finding("office_embedded_object", 3, pre + f"embedded package object {shown}", SOURCE)


def ole_findings(ole: olefile.OleFileIO, pre: str = "") -> list[Finding]:
    """Package objects, exploit CLSIDs and ActiveX controls inside one OLE file."""
    out: list[Finding] = []
    entries = ole.listdir(streams=True, storages=True)[:MAX_STREAMS]
    ocx = 0
    for path in entries:
        leaf = path[-1].lower()
        if leaf == "\x03ocxname":
            ocx += 1
        if leaf == "\x01ole10native":
            try:
                size = ole.get_size(path)
                with ole.openstream(path) as stream:
                    raw = stream.read(min(size, MAX_NATIVE_STREAM))
                pkg = oleobj.OleNativeStream(bindata=raw)
            except Exception as exc:  # malformed native stream: note it, go on
                out.append(Finding("office_embedded_object", 3, pre + f"unparsable embedded object stream: {clip(exc, 80)}", SOURCE))
                continue
            head = (pkg.data or b"")[:4096] if not pkg.is_link else b""
            out.append(_package_finding(pkg.filename or "", pkg.src_path or "", bool(pkg.is_link), head, pre))
    for path in [[]] + [p for p in entries if ole.get_type(p) == olefile.STGTY_STORAGE]:
        try:
            cid = (ole.getclsid(path) if path else ole.root.clsid or "").upper()
        except Exception:
            continue
        if not cid:
            continue
        desc = known_clsids.KNOWN_CLSIDS.get(cid, "")
        if cid in EQUATION_CLSIDS:
            out.append(Finding("office_equation_editor", 8, pre + f"Equation Editor object ({desc})", SOURCE))
        elif "CVE" in desc:
            out.append(Finding("office_exploit_clsid", 6, pre + f"object class {cid}: {desc}", SOURCE))
    if ocx:
        out.append(Finding("office_activex", 4, pre + f"{ocx} ActiveX control(s)", SOURCE))
    return out


def _ole_in_zip(data: bytes) -> tuple[list[bytes], list[bytes]]:
    """(OLE members, relationship/customUI XML parts) of a zip document, bounded."""
    oles: list[bytes] = []
    xml_parts: list[bytes] = []
    try:
        zf = ziputil.open_zip(data)
    except ziputil.ZipRefused:
        return oles, xml_parts
    with zf:
        for info in zf.infolist():
            name = info.filename.lower()
            if name.endswith(".rels") or "customui" in name:
                if len(xml_parts) < MAX_RELS_PARTS:
                    xml_parts.append(ziputil.read_member(zf, info.filename, MAX_RELS_PART))
                continue
            if len(oles) >= MAX_OLE_MEMBERS or info.file_size < 512:
                continue
            head = ziputil.read_member(zf, info.filename, 8)
            if head == officeutil.OLE_MAGIC:
                oles.append(ziputil.read_member(zf, info.filename, MAX_NATIVE_STREAM))
    return oles, xml_parts


def object_findings(data: bytes, name: str = "", note: str = "") -> list[Finding]:
    """All findings of this analyzer for one document in memory."""
    pre = f"{note}: " if note else ""
    out: list[Finding] = []
    xml_parts: list[bytes] = []
    ole_blobs: list[bytes] = []
    if officeutil.is_zip(data):
        why = officeutil.ooxml_refusal(data)
        if why:
            return [Finding("office_parse_refused", 4, pre + why, SOURCE)]
        ole_blobs, xml_parts = _ole_in_zip(data)
    elif officeutil.is_ole(data):
        # oleobj.find_ole also walks PowerPoint records for embedded OLE files
        for ole in oleobj.find_ole(name or "document", data):
            if ole is not None:
                out += ole_findings(ole, pre)
    elif b"Relationship" in data or b"customUI" in data:
        xml_parts = [data]  # flat OPC / Word 2003 XML
    for blob in ole_blobs:
        try:
            with olefile.OleFileIO(blob) as ole:
                out += ole_findings(ole, pre)
        except Exception as exc:  # a broken embedded OLE part: record and go on
            log.debug("embedded OLE part not parsed: %s", exc)
    out += relationship_findings(xml_parts, pre)
    onload = [m.group(1).decode("utf-8", "replace") for blob in xml_parts for m in _ONLOAD.finditer(blob)]
    if onload:
        out.append(Finding("office_customui_onload", 5, pre + f"customUI onLoad callback: {clip(', '.join(onload), 120)}", SOURCE))
    return _dedupe(out)


def analyze(artifact: Artifact, data_path: str, ctx: Context) -> list[Finding]:
    if ctx.data[:4] == b"{\\rt":
        return []  # RTF objects: mailvm.triage.rtf
    return object_findings(ctx.data, artifact.name)
