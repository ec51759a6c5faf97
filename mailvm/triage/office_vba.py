"""VBA and Excel 4 (XLM) macros, with oletools' olevba.

What it reports (see docs/triage.md for the table):

* macros present (moderate on their own: many businesses use them);
* auto-executing entry points (``AutoOpen``, ``Document_Open``, ``Workbook_Open``,
  ActiveX events...), stronger with execution keywords (``Shell``,
  ``WScript.Shell``, ``CreateObject``, ``powershell``...), strongest together;
* VBA stomping (source and p-code differ);
* Excel 4 macro sheets, in OLE/BIFF files (olevba's plugin_biff), in SLK, and in
  OOXML workbooks (``xl/macrosheets/``, which olevba does not inspect), with an
  ``Auto_Open`` name;
* ActiveX controls in OOXML parts.

The macro source given to olevba's scanner is capped at :data:`MAX_VBA_CODE`
characters; zip containers and ActiveMime blobs pass the guards of
:mod:`mailvm.triage.officeutil` first.
"""

from __future__ import annotations

import logging
import re

from oletools import olevba

from mailvm.triage import officeutil, ziputil
from mailvm.triage.base import Context, clip
from mailvm.verdict import Artifact, Finding

log = logging.getLogger(__name__)

SOURCE = "triage:office_vba"
MAX_VBA_CODE = 4 * 1024 * 1024
MAX_WORKBOOK_PART = 4 * 1024 * 1024

#: olevba "Suspicious" keywords that mean code execution, download or memory tricks
EXEC_KEYWORDS = frozenset(k.lower() for k in (
    "Shell", "WScript.Shell", "Shell.Application", "ShellExecute", "ShellExecuteA", "ShellExecuteW", "vbHide",
    "powershell", "cmd.exe", "mshta", "certutil", "regsvr32", "rundll32", "bitsadmin", "schtasks",
    "URLDownloadToFileA", "URLDownloadToFileW", "URLDownloadToFile", "Microsoft.XMLHTTP", "MSXML2.XMLHTTP",
    "MSXML2.ServerXMLHTTP", "WinHttp.WinHttpRequest", "ADODB.Stream", "SaveToFile", "DownloadFile", "DownloadString",
    "CallByName", "MacScript", "Exec", "system", "popen", "execve", "Win32_Process", "ExecuteExcel4Macro",
    "VirtualAlloc", "VirtualAllocEx", "RtlMoveMemory", "CreateThread", "WriteProcessMemory",
    "EnumSystemLanguageGroupsW", "EnumDateFormats", "CreateProcessA", "CreateProcessW",
    "Invoke-Expression", "IEX", "FromBase64String",
))
#: olevba "Suspicious" entries that describe encoding, reported as obfuscation
ENCODING_KEYWORDS = frozenset(k.lower() for k in (
    "Hex Strings", "Base64 Strings", "Dridex Strings", "VBA obfuscated Strings", "StrReverse", "Chr", "ChrB",
    "ChrW", "Xor",
))
OBFUSCATION_TYPES = frozenset({"Hex String", "Base64 String", "Dridex string", "Dridex String", "VBA string"})
XLM_AUTO = ("auto_open", "auto_close", "auto_activate", "auto_deactivate")

_WB_AUTO_XML = re.compile(rb"<(?:\w+:)?definedName\b[^>]*\bname\s*=\s*[\"'](?:_xlnm\.)?(Auto_(?:Open|Close|Activate|Deactivate))\d*[\"']", re.I)
_WB_AUTO_BIN = re.compile(b"|".join(re.escape(w.encode("utf-16-le")) for w in ("Auto_Open", "Auto_Close", "Auto_Activate",
                                                                             "Auto_Deactivate")), re.I)


def _list(items: list[str], limit: int = 10) -> str:
    uniq: list[str] = []
    for it in items:
        if it not in uniq:
            uniq.append(it)
    more = f" (+{len(uniq) - limit} more)" if len(uniq) > limit else ""
    return ", ".join(clip(i, 40) for i in uniq[:limit]) + more


def vba_findings(data: bytes, name: str, note: str = "", path: str | None = None) -> list[Finding]:
    """Findings from olevba for one document (``note`` prefixes details).

    ``path`` names the same bytes on disk: olevba then also checks VBA stomping
    (its p-code disassembler only works on files).
    """
    pre = f"{note}: " if note else ""
    if officeutil.is_zip(data):
        why = officeutil.ooxml_refusal(data)
        if why:
            return [Finding("office_parse_refused", 4, pre + why, SOURCE)]
    elif not officeutil.is_ole(data):
        why = officeutil.activemime_refusal(data)
        if why:
            return [Finding("office_parse_refused", 4, pre + why, SOURCE)]
    try:
        vp = olevba.VBA_Parser(path) if path else olevba.VBA_Parser(name or "document", data=data)
    except olevba.FileOpenError as exc:
        log.debug("olevba cannot open %s: %s", name, exc)
        return []
    try:
        if not path:
            vp.vba_stomping_detected = False  # in memory: pcodedmp cannot run
        if vp.type == olevba.TYPE_TEXT:
            return []  # olevba reads any text as VBA source: not a document
        has_vba = bool(vp.detect_vba_macros())
        has_xlm = bool(vp.detect_xlm_macros())
        if not (has_vba or has_xlm):
            return []
        modules: list[str] = []
        size = 0
        parts: list[str] = []
        for (_fn, _stream, vba_name, code) in vp.extract_all_macros():
            modules.append(str(vba_name))
            if size < MAX_VBA_CODE:
                chunk = (code or "")[: MAX_VBA_CODE - size]
                parts.append(chunk)
                size += len(chunk)
        for (_fn, _stream, form_string) in vp.extract_form_strings():
            if size >= MAX_VBA_CODE:
                break
            parts.append(form_string)
            size += len(form_string)
        vp.vba_code_all_modules = "\n".join(parts)
        results = vp.analyze_macros() or []
        return _map_results(results, has_vba, has_xlm, modules, pre, size >= MAX_VBA_CODE)
    finally:
        vp.close()


def _map_results(results: list, has_vba: bool, has_xlm: bool, modules: list[str], pre: str,
                 capped: bool) -> list[Finding]:
    autoexec = [str(kw) for t, kw, _d in results if t == "AutoExec"]
    suspicious = [str(kw) for t, kw, _d in results if t == "Suspicious"]
    iocs = [str(kw) for t, kw, _d in results if t == "IOC"]
    encoded = [t for t, _kw, _d in results if t in OBFUSCATION_TYPES]
    stomping = any(kw == "VBA Stomping" for kw in suspicious)
    plain = [k for k in suspicious if k.lower() not in ENCODING_KEYWORDS and k not in ("XLM macro", "VBA Stomping", "Template Injection")]
    execs = [k for k in plain if k.lower() in EXEC_KEYWORDS]
    obfusc = [k for k in suspicious if k.lower() in ENCODING_KEYWORDS]
    out: list[Finding] = []
    if has_vba:
        out.append(Finding("office_vba_macro", 5, pre + f"VBA macros in {len(set(modules))} module(s): {_list(modules, 6)}"
                           + (" (source capped for analysis)" if capped else ""), SOURCE))
        vba_auto = [a for a in autoexec if a.lower() not in XLM_AUTO or not has_xlm]
        if vba_auto:
            out.append(Finding("office_vba_autoexec", 6, pre + f"runs automatically: {_list(vba_auto)}", SOURCE))
        if plain:
            out.append(Finding("office_vba_suspicious_keywords", 5, pre + f"suspicious keywords: {_list(plain)}", SOURCE))
        if execs:
            out.append(Finding("office_vba_exec_keywords", 6, pre + f"executes or downloads: {_list(execs)}", SOURCE))
        if vba_auto and execs:
            out.append(Finding("office_vba_autoexec_exec", 8,
                               pre + f"auto-executing macro ({_list(vba_auto, 3)}) that executes or downloads ({_list(execs, 5)})",
                               SOURCE))
        if stomping:
            out.append(Finding("office_vba_stomping", 7, pre + "VBA source and p-code differ (VBA stomping)", SOURCE))
        if obfusc or encoded:
            out.append(Finding("office_vba_obfuscation", 3,
                               pre + f"encoded strings: {_list(obfusc + sorted(set(encoded)))} ({len(encoded)} decoded)", SOURCE))
        if iocs:
            out.append(Finding("office_vba_ioc", 3, pre + f"indicators in macro code: {_list(iocs, 6)}", SOURCE))
    if has_xlm:
        out.append(Finding("office_xlm_macro", 6, pre + "Excel 4.0 (XLM) macro sheet", SOURCE))
        xlm_auto = [a for a in autoexec if a.lower() in XLM_AUTO]
        if xlm_auto:
            out.append(Finding("office_xlm_auto_open", 8, pre + f"Excel 4.0 macros run automatically: {_list(xlm_auto)}", SOURCE))
    return out


def ooxml_part_findings(data: bytes, note: str = "") -> list[Finding]:
    """XLM macro sheets, their Auto_Open names and ActiveX parts in an OOXML zip."""
    pre = f"{note}: " if note else ""
    try:
        zf = ziputil.open_zip(data)
    except ziputil.ZipRefused:
        return []
    out: list[Finding] = []
    with zf:
        names = ziputil.names(zf)
        lower = [n.lower() for n in names]
        sheets = [n for n in lower if n.startswith(("xl/macrosheets/", "xl/intlmacrosheets/")) and not n.endswith(".rels")
                  and not n.rsplit("/", 1)[-1].startswith("binaryindex")]
        ctypes = ziputil.read_member(zf, "[Content_Types].xml", MAX_WORKBOOK_PART).lower()
        if sheets or b"macrosheet" in ctypes:
            out.append(Finding("office_xlm_macro", 6, pre + f"Excel 4.0 (XLM) macro sheet(s): {_list(sheets, 4)}", SOURCE))
            auto: list[str] = []
            for part in ("xl/workbook.xml", "xl/workbook.bin"):
                real = next((n for n in names if n.lower() == part), None)
                if real is None:
                    continue
                blob = ziputil.read_member(zf, real, MAX_WORKBOOK_PART)
                auto += [m.group(1).decode("ascii", "replace") for m in _WB_AUTO_XML.finditer(blob)]
                auto += [m.group(0).decode("utf-16-le", "replace") for m in _WB_AUTO_BIN.finditer(blob)]
            if auto:
                out.append(Finding("office_xlm_auto_open", 8, pre + f"Excel 4.0 macros run automatically: {_list(auto)}", SOURCE))
        activex = [n for n in names if "/activex/" in n.lower() and n.lower().endswith((".bin", ".xml")) and "_rels" not in n.lower()]
        if activex:
            out.append(Finding("office_activex", 4, pre + f"{len(activex)} ActiveX control part(s): {_list(activex, 4)}", SOURCE))
    return out


class _NoStompingNoise(logging.Filter):
    """Drops olevba's per-file warning that stomping is not checked in memory (expected here)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "VBA stomping cannot be detected" not in record.getMessage()


def setup(cfg: object) -> None:
    """Install the olevba log filter once (called by :class:`~mailvm.triage.Triage`)."""
    olevba_log = logging.getLogger("olevba")
    if not any(isinstance(f, _NoStompingNoise) for f in olevba_log.filters):
        olevba_log.addFilter(_NoStompingNoise())


def _merge(findings: list[Finding]) -> list[Finding]:
    """One finding per id (the most severe), order kept."""
    best: dict[str, Finding] = {}
    for f in findings:
        if f.id not in best or f.severity > best[f.id].severity:
            best[f.id] = f
    return list(best.values())


def analyze(artifact: Artifact, data_path: str, ctx: Context) -> list[Finding]:
    findings = vba_findings(ctx.data, artifact.name, path=None if ctx.truncated else data_path)
    if officeutil.is_zip(ctx.data):
        findings += ooxml_part_findings(ctx.data)
    return _merge(findings)
