"""LibreOffice in the sandbox: a user profile in which document macros run, and what its hook saw.

Standard library only (runs inside the guest).

:func:`write_profile` writes the detonation's LibreOffice user profile
(``$HOME/.config/libreoffice/4/user``) before the document is opened:

* macro security at its lowest (``MacroSecurityLevel`` 0, macro execution
  enabled), VBA code loaded and made executable for Writer, Calc and Impress,
  links (OLE links, linked sections, external data) updated on load, no lock
  files, no recovery, the setup marked completed (so LibreOffice does not copy
  its presets over the profile) and a system locale (so it does not run
  ``sh -c paperconf`` itself);
* an application-level ``OnLoad`` hook in the profile's own Basic library
  (``Standard.MailvmHook``).  LibreOffice runs Basic macros bound to document
  events and, for spreadsheets, VBA's ``Workbook_Open``/``Auto_Open`` by
  itself; Writer runs VBA document events only for binary ``.doc`` files.  The
  hook does what Word does on open for the others (``.docm``/``.docx``/
  ``.dotm``): it calls ``AutoOpen`` and ``Document_Open`` of the imported VBA
  project.  It also writes a trace (:data:`TRACE_REL`): the document's filter
  and URL once loaded, its Basic/VBA modules, the macros bound to its events,
  each call it makes (``call``/``returned``/``error``).

:func:`read_trace` parses that trace (it is written inside the sandbox: the
sample runs with the same uid and could write it too, so it is bounded and
only ever adds evidence of loading and macros, never clears anything).
:func:`macro_presence` says, from the file itself, whether it carries macros
(a VBA project or a Basic library), for the report when none was seen to run.
"""

from __future__ import annotations

import os
import re
import zipfile
from dataclasses import dataclass, field
from xml.sax.saxutils import escape

PROFILE_REL = ".config/libreoffice/4/user"
TRACE_REL = ".config/libreoffice/mailvm-trace.txt"
#: the external targets (kind TAB url per line) the hook fetches once the document is loaded, as Word does
FETCH_REL = ".config/libreoffice/mailvm-fetch.txt"
MAX_FETCH = 8
#: the relationship kinds Word fetches when it opens a document (hyperlinks wait for a click)
FETCH_KINDS = ("template", "ole_link", "frame", "subdocument", "image")
MAX_TRACE = 64 * 1024
MAX_TRACE_LINES = 500
#: the macros the hook calls in a text document's VBA project (Word's auto-open macros)
WORD_AUTO_OPEN = ("AutoOpen", "Document_Open")

_SETTINGS: tuple[tuple[str, str, str], ...] = (
    ("/org.openoffice.Office.Common/Security/Scripting", "MacroSecurityLevel", "0"),
    ("/org.openoffice.Office.Common/Security/Scripting", "DisableMacrosExecution", "false"),
    ("/org.openoffice.Office.Common/Security/Scripting", "BlockUntrustedRefererLinks", "false"),
    ("/org.openoffice.Office.Common/Misc", "UseLocking", "false"),
    ("/org.openoffice.Office.Common/Misc", "FirstRun", "false"),
    ("/org.openoffice.Office.Common/Save/Document", "AutoSave", "false"),
    ("/org.openoffice.Office.Recovery/AutoSave", "Enabled", "false"),
    ("/org.openoffice.Office.Recovery/RecoveryInfo", "Enabled", "false"),
    ("/org.openoffice.Office.Writer/Filter/Import/VBA", "Load", "true"),
    ("/org.openoffice.Office.Writer/Filter/Import/VBA", "Executable", "true"),
    ("/org.openoffice.Office.Calc/Filter/Import/VBA", "Load", "true"),
    ("/org.openoffice.Office.Calc/Filter/Import/VBA", "Executable", "true"),
    ("/org.openoffice.Office.Impress/Filter/Import/VBA", "Load", "true"),
    # 1 = always: linked objects, sections and external data are fetched when the document loads
    ("/org.openoffice.Office.Writer/Content/Update", "Link", "1"),
    ("/org.openoffice.Office.Calc/Content/Update", "Link", "1"),
    ("/org.openoffice.Setup/Office", "ooSetupInstCompleted", "true"),
    ("/org.openoffice.Setup/L10N", "ooSetupSystemLocale", "en-US"),
    ("/org.openoffice.Setup/L10N", "ooLocale", "en-US"),
)

#: the hook (StarBasic, in the profile's Standard library), bound to the application's OnLoad event
HOOK_BASIC = r'''Option Explicit

Sub Trace(s As String)
    Dim n As Integer
    n = FreeFile
    Open Environ("HOME") & "/''' + TRACE_REL + r'''" For Append As #n
    Print #n, s
    Close #n
End Sub

Sub OnLoad(oEvent As Object)
    On Error GoTo Failed
    Dim oDoc As Object, sFilter As String, i As Integer, aArgs
    oDoc = oEvent.Source
    aArgs = oDoc.getArgs()
    For i = LBound(aArgs) To UBound(aArgs)
        If aArgs(i).Name = "FilterName" Then sFilter = aArgs(i).Value
    Next i
    Trace "loaded" & Chr(9) & sFilter & Chr(9) & oDoc.getURL()
    ListEvents(oDoc)
    FetchExternal()
    If IsNull(oDoc.BasicLibraries) Then Exit Sub
    Dim aLibs, aMods, oLib As Object, sSrc As String, j As Integer, k As Integer, bWord As Boolean
    bWord = oDoc.supportsService("com.sun.star.text.TextDocument") And Left(sFilter, 10) <> "MS Word 97"
    aLibs = oDoc.BasicLibraries.getElementNames()
    For j = LBound(aLibs) To UBound(aLibs)
        oDoc.BasicLibraries.loadLibrary(aLibs(j))
        oLib = oDoc.BasicLibraries.getByName(aLibs(j))
        aMods = oLib.getElementNames()
        For k = LBound(aMods) To UBound(aMods)
            sSrc = oLib.getByName(aMods(k))
            If InStr(sSrc, "Option VBASupport 1") > 0 Then
                Trace "module" & Chr(9) & "vba" & Chr(9) & aLibs(j) & "." & aMods(k) & Chr(9) & Len(sSrc)
                If bWord And HasSub(sSrc, "AutoOpen") Then CallMacro(oDoc, aLibs(j) & "." & aMods(k) & ".AutoOpen")
                If bWord And HasSub(sSrc, "Document_Open") Then CallMacro(oDoc, aLibs(j) & "." & aMods(k) & ".Document_Open")
            ElseIf Len(sSrc) > 0 Then
                Trace "module" & Chr(9) & "basic" & Chr(9) & aLibs(j) & "." & aMods(k) & Chr(9) & Len(sSrc)
            End If
        Next k
    Next j
    Trace "hook_done"
    Exit Sub
Failed:
    Trace "hook_error" & Chr(9) & Err & " " & Error$
End Sub

Sub ListEvents(oDoc As Object)
    On Error GoTo Failed
    Dim aNames, aProps, i As Integer, k As Integer
    aNames = oDoc.Events.getElementNames()
    For i = LBound(aNames) To UBound(aNames)
        aProps = oDoc.Events.getByName(aNames(i))
        If Not IsEmpty(aProps) Then
            For k = LBound(aProps) To UBound(aProps)
                If aProps(k).Name = "Script" Then
                    If aProps(k).Value <> "" Then Trace "event" & Chr(9) & aNames(i) & Chr(9) & aProps(k).Value
                End If
            Next k
        End If
    Next i
Failed:
End Sub

Sub FetchExternal()
    On Error GoTo Failed
    Dim sPath As String, n As Integer, sLine As String, aParts, nDone As Integer
    sPath = Environ("HOME") & "/''' + FETCH_REL + r'''"
    If Not FileExists(sPath) Then Exit Sub
    n = FreeFile
    Open sPath For Input As #n
    Do While Not EOF(n) And nDone < ''' + str(MAX_FETCH) + r'''
        Line Input #n, sLine
        aParts = Split(sLine, Chr(9))
        If UBound(aParts) >= 1 Then FetchOne(aParts(0), aParts(1))
        nDone = nDone + 1
    Loop
    Close #n
    Kill sPath
Failed:
End Sub

Sub FetchOne(sKind As String, sUrl As String)
    On Error GoTo Failed
    Dim oSFA As Object, oIn As Object, aBytes(), nRead As Long
    Trace "fetch" & Chr(9) & sKind & Chr(9) & sUrl
    oSFA = createUnoService("com.sun.star.ucb.SimpleFileAccess")
    oIn = oSFA.openFileRead(sUrl)
    nRead = oIn.readBytes(aBytes, 65536)
    oIn.closeInput()
    Trace "fetched" & Chr(9) & sUrl & Chr(9) & nRead
    Exit Sub
Failed:
    Trace "fetch_error" & Chr(9) & sUrl & Chr(9) & Err & " " & Error$
End Sub

Function HasSub(sSrc As String, sName As String) As Boolean
    Dim s As String
    s = LCase(sSrc)
    HasSub = InStr(s, "sub " & LCase(sName) & "(") > 0 Or InStr(s, "sub " & LCase(sName) & " (") > 0
End Function

Sub CallMacro(oDoc As Object, sName As String)
    On Error GoTo Failed
    Trace "call" & Chr(9) & sName
    Dim oScript As Object
    oScript = oDoc.getScriptProvider().getScript("vnd.sun.star.script:" & sName & "?language=Basic&location=document")
    oScript.invoke(Array(), Array(), Array())
    Trace "returned" & Chr(9) & sName
    Exit Sub
Failed:
    Trace "error" & Chr(9) & sName & Chr(9) & Err & " " & Error$
End Sub
'''

_DOCTYPE_LIBS = '<!DOCTYPE library:libraries PUBLIC "-//OpenOffice.org//DTD OfficeDocument 1.0//EN" "libraries.dtd">'
_DOCTYPE_LIB = '<!DOCTYPE library:library PUBLIC "-//OpenOffice.org//DTD OfficeDocument 1.0//EN" "library.dtd">'
_XML = '<?xml version="1.0" encoding="UTF-8"?>\n'
_LIBS = (_XML + _DOCTYPE_LIBS + '\n<library:libraries xmlns:library="http://openoffice.org/2000/library" '
         'xmlns:xlink="http://www.w3.org/1999/xlink">\n <library:library library:name="Standard" '
         'library:link="false"/>\n</library:libraries>\n')


def registry_xcu() -> str:
    """The profile's ``registrymodifications.xcu``."""
    items = [f'<item oor:path="{path}"><prop oor:name="{name}" oor:op="fuse"><value>{value}</value></prop></item>'
             for path, name, value in _SETTINGS]
    url = "vnd.sun.star.script:Standard.MailvmHook.OnLoad?language=Basic&location=application"
    items.append('<item oor:path="/org.openoffice.Office.Events/ApplicationEvents/Bindings"><node oor:name="OnLoad" '
                 f'oor:op="replace"><prop oor:name="BindingURL" oor:op="fuse"><value>{escape(url)}</value></prop>'
                 "</node></item>")
    return (_XML + '<oor:items xmlns:oor="http://openoffice.org/2001/registry" '
            'xmlns:xs="http://www.w3.org/2001/XMLSchema" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">\n'
            + "\n".join(items) + "\n</oor:items>\n")


def profile_files() -> dict[str, str]:
    """Relative path (under the profile's ``user`` directory) -> content."""
    return {
        "registrymodifications.xcu": registry_xcu(),
        "basic/script.xlc": _LIBS,
        "basic/dialog.xlc": _LIBS,
        "basic/Standard/script.xlb": (
            _XML + _DOCTYPE_LIB + '\n<library:library xmlns:library="http://openoffice.org/2000/library" '
            'library:name="Standard" library:readonly="false" library:passwordprotected="false">\n'
            ' <library:element library:name="MailvmHook"/>\n</library:library>\n'),
        "basic/Standard/dialog.xlb": (
            _XML + _DOCTYPE_LIB + '\n<library:library xmlns:library="http://openoffice.org/2000/library" '
            'library:name="Standard" library:readonly="false" library:passwordprotected="false"/>\n'),
        "basic/Standard/MailvmHook.xba": (
            _XML + '<script:module xmlns:script="http://openoffice.org/2000/script" script:name="MailvmHook" '
            f'script:language="StarBasic">{escape(HOOK_BASIC)}</script:module>\n'),
    }


def write_profile(home: str, uid: int, fetch: list["ExternalTarget"] | tuple = ()) -> None:
    """The LibreOffice user profile under ``home`` (owned by ``uid``): macros run, the hook traces and fetches
    ``fetch`` (the document's external templates, OLE links... that Word would fetch on open)."""
    root = os.path.join(home, ".config")
    user = os.path.join(home, PROFILE_REL)
    files = {os.path.join(user, rel): text for rel, text in profile_files().items()}
    lines = [f"{t.kind}\t{t.url}" for t in fetch if t.kind in FETCH_KINDS and re.match(r"(?i)(https?|ftp)://", t.url)
             and "\t" not in t.url and "\n" not in t.url][:MAX_FETCH]
    if lines:
        files[os.path.join(home, FETCH_REL)] = "\n".join(lines) + "\n"
    os.makedirs(os.path.join(user, "nss"), exist_ok=True)  # the certificate store (MOZILLA_CERTIFICATE_FOLDER)
    for path, text in files.items():
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w", encoding="utf-8") as fh:
            fh.write(text)
    for dirpath, dirs, files in os.walk(root):
        os.chown(dirpath, uid, uid)
        for n in files:
            os.chown(os.path.join(dirpath, n), uid, uid)


# ------------------------------------------------------------------ the hook's trace


@dataclass
class OfficeTrace:
    """What the profile's hook wrote (bounded)."""

    loaded: bool = False
    filter: str = ""
    url: str = ""
    modules: list[tuple[str, str]] = field(default_factory=list)  # (vba | basic, Library.Module)
    events: list[tuple[str, str]] = field(default_factory=list)  # (event name, script URL)
    calls: dict[str, str] = field(default_factory=dict)  # macro -> "called" | "returned" | "error: ..."
    fetches: dict[str, str] = field(default_factory=dict)  # url -> "kind: requested" | "... fetched N bytes" | error
    done: bool = False
    error: str = ""

    @property
    def pending(self) -> list[str]:
        """Macros the hook called that have not returned yet (still running)."""
        return [name for name, state in self.calls.items() if state == "called"]

    @property
    def returned(self) -> list[str]:
        return [name for name, state in self.calls.items() if state == "returned"]

    @property
    def macro_events(self) -> list[tuple[str, str]]:
        """Document events bound to a macro of the document itself (``location=document``)."""
        return [(n, s) for n, s in self.events if "location=document" in s]


def _clean(text: str, limit: int = 200) -> str:
    return "".join(ch if ch.isprintable() else "?" for ch in text)[:limit]


def parse_trace(data: bytes) -> OfficeTrace:
    t = OfficeTrace()
    for raw in data[:MAX_TRACE].decode("utf-8", "replace").splitlines()[:MAX_TRACE_LINES]:
        parts = [_clean(p) for p in raw.rstrip("\r").split("\t")]
        tag = parts[0]
        if tag == "loaded" and len(parts) >= 3 and not t.loaded:
            t.loaded, t.filter, t.url = True, parts[1], parts[2]
        elif tag == "module" and len(parts) >= 3 and len(t.modules) < 50:
            t.modules.append((parts[1], parts[2]))
        elif tag == "event" and len(parts) >= 3 and len(t.events) < 50:
            t.events.append((parts[1], parts[2]))
        elif tag == "call" and len(parts) >= 2 and len(t.calls) < 20:
            t.calls.setdefault(parts[1], "called")
        elif tag == "returned" and len(parts) >= 2 and parts[1] in t.calls:
            t.calls[parts[1]] = "returned"
        elif tag == "error" and len(parts) >= 2 and parts[1] in t.calls:
            t.calls[parts[1]] = "error: " + (parts[2] if len(parts) > 2 else "")
        elif tag == "fetch" and len(parts) >= 3 and len(t.fetches) < MAX_FETCH:
            t.fetches.setdefault(parts[2], f"{parts[1]}: requested")
        elif tag in ("fetched", "fetch_error") and len(parts) >= 3 and parts[1] in t.fetches:
            kind = t.fetches[parts[1]].split(":", 1)[0]
            t.fetches[parts[1]] = f"{kind}: " + (f"fetched {parts[2]} bytes" if tag == "fetched" else f"error {parts[2]}")
        elif tag == "hook_done":
            t.done = True
        elif tag == "hook_error":
            t.error = parts[1] if len(parts) > 1 else "?"
    return t


def read_trace(home: str) -> OfficeTrace:
    """The hook's trace in the sandbox HOME ``home`` (an empty trace when there is none)."""
    path = os.path.join(home, TRACE_REL)
    try:
        with open(path, "rb") as fh:
            return parse_trace(fh.read(MAX_TRACE))
    except OSError:
        return OfficeTrace()


# ------------------------------------------------------------------ macros in the file


_OLE_MAGIC = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"
_VBA_NAMES = ("_VBA_PROJECT".encode("utf-16-le"), "VBA".encode("utf-16-le") + b"\0\0")
MAX_SCAN = 32 << 20
MAX_MEMBERS = 5000
_EXTERNAL_RE = re.compile(rb'<Relationship\b[^>]*>', re.I)
_ATTR_RE = re.compile(rb'(\w+)\s*=\s*"([^"]*)"')


def macro_presence(path: str) -> str:
    """``"vba"`` (a VBA project), ``"basic"`` (an ODF Basic library), or ``""``: what macros the file carries."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(8)
            if head == _OLE_MAGIC:
                fh.seek(0)
                data = fh.read(MAX_SCAN)
                return "vba" if any(n in data for n in _VBA_NAMES) else ""
        if not zipfile.is_zipfile(path):
            return ""
        with zipfile.ZipFile(path) as z:
            names = [i.filename for i in z.infolist()[:MAX_MEMBERS]]
    except (OSError, zipfile.BadZipFile, ValueError, RuntimeError):
        return ""
    low = [n.lower() for n in names]
    if any(n.endswith("vbaproject.bin") for n in low):
        return "vba"
    if any(n.startswith("basic/") and n.endswith(".xml") and not n.endswith(("script-lc.xml", "script-lb.xml",
                                                                              "dialog-lc.xml", "dialog-lb.xml"))
           for n in low):
        return "basic"
    return ""


@dataclass(frozen=True)
class ExternalTarget:
    """A relationship of an OOXML document that points outside it (a template, an OLE link, a frame...)."""

    kind: str  # template | ole_link | frame | subdocument | image | hyperlink | other
    url: str


_REL_KINDS = {"attachedtemplate": "template", "oleobject": "ole_link", "frame": "frame",
              "subdocument": "subdocument", "image": "image", "hyperlink": "hyperlink"}


def external_targets(path: str, limit: int = 50) -> list[ExternalTarget]:
    """``TargetMode="External"`` relationships of an OOXML file (templates, OLE links, frames...), bounded."""
    out: list[ExternalTarget] = []
    try:
        with zipfile.ZipFile(path) as z:
            for info in z.infolist()[:MAX_MEMBERS]:
                if not info.filename.lower().endswith(".rels") or info.file_size > 1 << 20:
                    continue
                data = z.read(info)
                for m in _EXTERNAL_RE.finditer(data):
                    attrs = {k.decode().lower(): v.decode("utf-8", "replace") for k, v in _ATTR_RE.findall(m.group(0))}
                    if attrs.get("targetmode", "").lower() != "external":
                        continue
                    rtype = attrs.get("type", "").rsplit("/", 1)[-1].lower()
                    out.append(ExternalTarget(_REL_KINDS.get(rtype, "other"), _clean(attrs.get("target", ""), 500)))
                    if len(out) >= limit:
                        return out
    except (OSError, zipfile.BadZipFile, ValueError, RuntimeError, KeyError):
        return out
    return out
