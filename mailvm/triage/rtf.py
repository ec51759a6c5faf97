"""RTF documents: embedded objects, with oletools' rtfobj.

RTF is the favourite wrapper of Office exploits: Equation Editor objects
(CVE-2017-11882), OLE2Link / URL monikers (CVE-2017-0199), OLE Packages that
drop executables, ``\\objupdate`` to load objects without a click, and headers
mangled so scanners miss them while Word still opens the file (it only needs
``{\\rt``).

rtfobj's parser is pure Python (about 1 MB/s on dense files): it runs only when
the document mentions ``\\object`` or ``objdata`` at all, on at most
:data:`MAX_RTF_BYTES`.  The raw object bytes are also searched for class
names rtfobj could not parse (obfuscated objects).
"""

from __future__ import annotations

import re

import olefile
from oletools import rtfobj
from oletools.common import clsid as known_clsids

from mailvm.triage.base import Context, clip, extension
from mailvm.triage.filetype import DANGEROUS_EXTENSIONS
from mailvm.triage.office_objects import EQUATION_CLSIDS
from mailvm.verdict import Artifact, Finding

SOURCE = "triage:rtf"
MAX_RTF_BYTES = 8 * 1024 * 1024
MAX_OBJECTS = 256
_HEADER_OK = re.compile(rb"^\{\\rtf1[\\{}\s\d]")


def control_word(word: bytes) -> re.Pattern[bytes]:
    """Regex for the RTF control word ``word``: not escaped text (``\\\\word``), not a longer word."""
    return re.compile(rb"(?<!\\)(?:\\\\)*\\" + word + rb"(?![a-zA-Z])")


_OBJUPDATE = control_word(rb"objupdate")
_OBJECT = re.compile(rb"(?<!\\)(?:\\\\)*\\(?:object|objdata)(?![a-zA-Z])")


def _class(obj: rtfobj.RtfObject) -> str:
    name = obj.class_name or b""
    if isinstance(name, bytes):
        name = name.rstrip(b"\x00").decode("latin-1", "replace")
    return name


def object_findings(objects: list[rtfobj.RtfObject]) -> list[Finding]:
    out: list[Finding] = []
    classes: list[str] = []
    for obj in objects[:MAX_OBJECTS]:
        cls = _class(obj)
        classes.append(cls or "?")
        raw = (obj.rawdata or b"")[:1 << 20].lower()
        if cls.lower().startswith("equation") or b"equation.3" in raw or b"equation.2" in raw \
                or (obj.clsid or "").upper() in EQUATION_CLSIDS:
            out.append(Finding("rtf_equation_editor", 8, f"Equation Editor object ({cls or 'obfuscated class name'}): "
                                                         "CVE-2017-11882 / CVE-2018-0802 vector", SOURCE))
        if cls.lower() == "ole2link" or b"ole2link" in raw:
            out.append(Finding("rtf_ole2link", 8, "OLE2Link object: loads a remote document (CVE-2017-0199)", SOURCE))
        if obj.is_package:
            names = [n for n in (obj.filename, obj.src_path, obj.temp_path) if n]
            head = (obj.olepkgdata or b"")[:2]
            if {extension(n) for n in names} & DANGEROUS_EXTENSIONS or head == b"MZ":
                out.append(Finding("rtf_package_executable", 8, f"OLE Package carries {clip(obj.filename or '?', 80)}", SOURCE))
            else:
                out.append(Finding("rtf_package", 4, f"OLE Package carries {clip(obj.filename or '?', 80)}", SOURCE))
        desc = obj.clsid_desc or ""
        if obj.clsid and "CVE" in desc and (obj.clsid or "").upper() not in EQUATION_CLSIDS:
            out.append(Finding("rtf_exploit_clsid", 7, f"embedded object class {obj.clsid}: {clip(desc, 120)}", SOURCE))
        if obj.is_ole and obj.oledata and obj.oledata[:8] == b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" and not obj.clsid:
            try:
                with olefile.OleFileIO(obj.oledata) as ole:
                    cid = (ole.root.clsid or "").upper()
                d = known_clsids.KNOWN_CLSIDS.get(cid, "")
                if "CVE" in d:
                    out.append(Finding("rtf_exploit_clsid", 7, f"embedded object class {cid}: {clip(d, 120)}", SOURCE))
            except Exception:  # an unreadable nested OLE: the object finding below still stands
                pass
    if objects:
        out.insert(0, Finding("rtf_object", 4, f"{len(objects)} embedded object(s): {clip(', '.join(classes), 120)}", SOURCE))
    return out


def rtf_findings(data: bytes) -> list[Finding]:
    out: list[Finding] = []
    if not _HEADER_OK.match(data):
        out.append(Finding("rtf_malformed_header", 4, f"non-standard RTF header {clip(data[:12].decode('latin-1'), 20)!r} "
                                                      "(Word accepts it, parsers may not)", SOURCE))
    if _OBJUPDATE.search(data):
        out.append(Finding("rtf_objupdate", 5, "\\objupdate: objects load when the document opens", SOURCE))
    if _OBJECT.search(data):
        if len(data) > MAX_RTF_BYTES:
            out.append(Finding("rtf_partial_scan", 1, f"objects searched in the first {MAX_RTF_BYTES} bytes only", SOURCE))
        parser = rtfobj.RtfObjParser(data[:MAX_RTF_BYTES])
        try:
            parser.parse()
        except Exception as exc:  # rtfobj gives up on some malformed files: keep what it found so far
            out.append(Finding("analyzer_error", 0, f"rtf/rtfobj: {type(exc).__name__}: {clip(exc, 160)}", SOURCE))
        out += object_findings(parser.objects)
    return _dedupe(out)


def _dedupe(findings: list[Finding]) -> list[Finding]:
    best: dict[str, Finding] = {}
    for f in findings:
        if f.id == "analyzer_error":
            best[f"{f.id}{len(best)}"] = f
            continue
        if f.id not in best or f.severity > best[f.id].severity:
            best[f.id] = f
    return list(best.values())


def analyze(artifact: Artifact, data_path: str, ctx: Context) -> list[Finding]:
    if ctx.data[:4] != b"{\\rt":
        return []
    return rtf_findings(ctx.data)
