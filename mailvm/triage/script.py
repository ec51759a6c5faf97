"""Script indicators: PowerShell, JScript/JavaScript, VBScript, batch, shell,
Python/Perl one-liners, and the scripts inside HTML/HTA pages.

A table of :class:`Indicator` (finding id, severity, one regular expression)
is run over the decoded text (at most :data:`MAX_CHARS` characters; every
expression is linear: no nested unbounded repetition).  Counting heuristics add
obfuscation findings (character-code chains, string concatenation density,
long base64 blobs), and combinations add the strongest ones (download then
execute).  :func:`command_findings` runs the same table over a single command
line: shortcuts (:mod:`mailvm.triage.lnk`) and DDE fields use it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from mailvm.triage.base import Context, clip, decode_text
from mailvm.verdict import Artifact, Finding

SOURCE = "triage:script"
MAX_CHARS = 4 * 1024 * 1024
I = re.I


@dataclass(frozen=True)
class Indicator:
    id: str
    severity: int
    pattern: re.Pattern[str]
    description: str


def _ind(fid: str, sev: int, rx: str, desc: str, flags: int = I) -> Indicator:
    return Indicator(fid, sev, re.compile(rx, flags), desc)


INDICATORS: tuple[Indicator, ...] = (
    _ind("script_powershell_encoded", 7,
         r"\b(?:powershell|pwsh)(?:\.exe)?\b[^\n]{0,200}?\s[-/]e(?:c|n|nc|nco|ncod|ncode|ncoded|ncodedcommand)?\s+['\"]?[A-Za-z0-9+/=]{20}",
         "PowerShell with an encoded command"),
    _ind("script_execution_policy_bypass", 5,
         r"(?:\s[-/](?:ep|ex|exec|executionpolicy)\s+(?:bypass|unrestricted)\b|Set-ExecutionPolicy\s+(?:-\w+\s+)?(?:bypass|unrestricted))",
         "PowerShell execution policy bypass"),
    _ind("script_hidden_window", 3,
         r"(?:\s[-/]w(?:in|ind|indo|indow|indowstyle)?\s+(?:hidden|1)\b|-WindowStyle\s+Hidden|\.Run\b\s*\(?[^\n]{0,300}?,\s*0\s*(?:,|\)|$))",
         "starts a hidden window"),
    _ind("script_download", 3,
         r"(?:Net\.WebClient|DownloadString|DownloadFile|DownloadData|Invoke-WebRequest|Invoke-RestMethod|\biwr\s+|"
         r"Start-BitsTransfer|Net\.Http\.HttpClient|MSXML2\.(?:Server)?XMLHTTP|Microsoft\.XMLHTTP|WinHttp\.WinHttpRequest|"
         r"URLDownloadToFile|bitsadmin(?:\.exe)?\s+/transfer|\b(?:curl|wget)(?:\.exe)?\s[^\n]{0,200}?(?:https?|ftp)://)",
         "downloads from the network"),
    _ind("script_dynamic_exec", 3,
         r"(?:\bIEX\b|Invoke-Expression|\beval\s*\(|\bExecuteGlobal\b|\bExecute\s*\(|\bnew\s+Function\s*\(|\bexecScript\s*\(|"
         r"\[scriptblock\]::Create|Reflection\.Assembly\]::Load|\bexec\s*\(\s*(?:compile|base64|zlib|marshal|codecs))",
         "evaluates code built at run time"),
    _ind("script_base64_decode", 3,
         r"(?:FromBase64String|\batob\s*\(|base64\s+(?:-d|--decode|-D)\b|b64decode|base64_decode|decode_base64|"
         r"MIME::Base64|Base64ToString|\.decode\(\s*['\"]base64)",
         "decodes base64"),
    _ind("script_exec_encoded", 7,
         r"(?:\b(?:eval|exec|IEX|Invoke-Expression)\s*\(?\s*\(?\s*(?:base64\.b64decode|zlib\.decompress|atob|unescape|"
         r"decodeURIComponent|gzinflate|base64_decode|str_rot13|\[System\.Text\.Encoding\]|\[Text\.Encoding\]|"
         r"\[System\.Convert\]::FromBase64String|\[Convert\]::FromBase64String))",
         "executes decoded or decompressed code"),
    _ind("script_certutil", 7, r"certutil(?:\.exe)?['\"]?\s+[^\n]{0,40}?[-/](?:decode|decodehex|urlcache)\b",
         "certutil used to decode or download"),
    _ind("script_lolbin", 6,
         r"(?:mshta(?:\.exe)?['\"]?\s+['\"]?(?:https?:|javascript:|vbscript:|\\\\)|regsvr32(?:\.exe)?\s[^\n]{0,100}?/i:\s*(?:https?|\\\\)|"
         r"scrobj\.dll|rundll32(?:\.exe)?\s[^\n]{0,100}?(?:javascript:|url\.dll,|ShellExec_RunDLL|advpack\.dll,|zipfldr\.dll,)|"
         r"msiexec(?:\.exe)?\s[^\n]{0,60}?/(?:i|package)\s*['\"]?https?:|wmic(?:\.exe)?\s[^\n]{0,100}?process\s+call\s+create|"
         r"forfiles(?:\.exe)?\s[^\n]{0,100}?/c\s|\bcmstp(?:\.exe)?\s|InstallUtil(?:\.exe)?\s|odbcconf(?:\.exe)?\s)",
         "living-off-the-land binary used to run or fetch code"),
    _ind("script_wscript_shell", 5,
         r"(?:WScript\.Shell|Shell\.Application|\.ShellExecute\s*\(|WScript\.CreateObject|\bShellExecute\b)",
         "runs programs through WScript.Shell / Shell.Application"),
    _ind("script_activex", 3, r"(?:\bnew\s+ActiveXObject\s*\(|\bCreateObject\s*\(|\bGetObject\s*\()",
         "instantiates COM/ActiveX objects"),
    _ind("script_file_write", 3, r"(?:ADODB\.Stream|SaveToFile|CreateTextFile|Out-File|Set-Content|WriteAllBytes)",
         "writes files"),
    _ind("script_reverse_shell", 8,
         r"(?:/dev/(?:tcp|udp)/[\w.\-]+/\d+|\bnc(?:at)?\s[^\n]{0,60}?\s-[ec]\s|\bbash\s+-i\s*[>&]|mkfifo\s+/tmp/|"
         r"socket\.socket\([^\n]{0,300}?(?:pty\.spawn|subprocess|os\.dup2)|Net\.Sockets\.TCPClient\([^\n]{0,300}?GetStream)",
         "reverse shell"),
    _ind("script_shell_pipe_exec", 7,
         r"(?:\b(?:curl|wget)\s[^\n|;]{0,300}?\|\s*(?:sudo\s+)?(?:ba|z|da|k)?sh\b|base64\s+(?:-d|--decode)[^\n]{0,100}?\|\s*(?:ba|z)?sh\b|"
         r"\bsh\s+-c\s+['\"]?\$\(\s*(?:curl|wget))",
         "downloaded or decoded data piped into a shell"),
    _ind("script_chmod_exec", 5,
         r"chmod\s+(?:\+x|[ua]\+x|[0-7]?[0-7][0-7][5-7])\s+\S+[^\n]{0,40}?(?:&&|;|\|\|)\s*(?:\./|/tmp/|/var/tmp/|/dev/shm/)",
         "makes a file executable and runs it"),
    _ind("script_persistence", 3,
         r"(?:crontab\s+(?:-[lr]\s*\|?|-\s)|/etc/cron\.|schtasks(?:\.exe)?\s+/create|reg(?:\.exe)?\s+add\s+[^\n]{0,100}?\\(?:Run|RunOnce)\b|"
         r"CurrentVersion\\Run\b|Start Menu\\Programs\\Startup|Register-ScheduledTask|New-ScheduledTask|systemctl\s+enable|"
         r">>\s*~?/?[\w/.]*\.bashrc|authorized_keys)",
         "installs persistence"),
    _ind("script_amsi_bypass", 8, r"(?:AmsiUtils|amsiInitFailed|AmsiScanBuffer|amsiContext)", "disables AMSI"),
    _ind("script_defender_tamper", 7,
         r"(?:Set-MpPreference\s[^\n]{0,80}?-Disable|Add-MpPreference\s[^\n]{0,80}?-Exclusion|DisableRealtimeMonitoring)",
         "tampers with Windows Defender"),
    _ind("script_shadow_delete", 8,
         r"(?:vssadmin(?:\.exe)?['\"]?\s+delete\s+shadows|wmic(?:\.exe)?['\"]?\s+shadowcopy\s+delete|"
         r"bcdedit(?:\.exe)?['\"]?\s+/set\s+\{default\}\s+recoveryenabled\s+no|wbadmin\s+delete\s+catalog)",
         "deletes shadow copies / backups"),
    _ind("script_oneliner", 5,
         r"(?:\bpython[23]?(?:\.exe)?\s+-c\s+['\"][^\n]{0,300}?(?:exec|eval|b64decode|socket|urllib|os\.system|subprocess)|"
         r"\bperl\s+-e\s+['\"][^\n]{0,300}?(?:eval|unpack|socket|system|exec)|"
         r"\bphp\s+-r\s+['\"][^\n]{0,300}?(?:eval|base64_decode|system|exec|fsockopen)|"
         r"\bruby\s+-e\s+['\"][^\n]{0,300}?(?:eval|TCPSocket|system|exec))",
         "interpreter one-liner that runs hidden code"),
    _ind("script_shellcode_loader", 7,
         r"(?:GetDelegateForFunctionPointer|VirtualAlloc(?:Ex)?\b[^\n]{0,400}?(?:Marshal\]?::Copy|CreateThread|RtlMoveMemory)|"
         r"ctypes\.windll\.kernel32\.VirtualAlloc)",
         "loads shellcode into memory"),
)

_CHR_CALL = re.compile(r"\bChr[WB]?\$?\s*\(\s*\d", I)
_PS_CHAR = re.compile(r"\[char\]\s*\(?\s*\d", I)
_FROMCHARCODE = re.compile(r"fromCharCode\s*\(\s*[\d\s,x+\-*/^]{100}", I)
_NUM_ARRAY = re.compile(r"[\[(]\s*[\d\s,]{300}")
_CONCAT = re.compile(r"""["']\s*\+\s*["']|"\s*&\s*"|'\s*\.\s*'""")
_BASE64_RUN = re.compile(r"[A-Za-z0-9+/]{1000}")
_DATA_URI = re.compile(r"data:(?:image|font|audio|video|application/(?:x-)?font[\w\-]*)/?[\w.+\-]{0,40};base64,[A-Za-z0-9+/=\s]*", I)


def _excerpt(text: str, m: re.Match[str]) -> str:
    return clip(text[m.start() : m.start() + 120], 120)


def indicator_findings(text: str, source: str = SOURCE) -> list[Finding]:
    """One finding per indicator that matches (with the first match as excerpt)."""
    out: list[Finding] = []
    for ind in INDICATORS:
        m = ind.pattern.search(text)
        if m:
            out.append(Finding(ind.id, ind.severity, f"{ind.description}: {_excerpt(text, m)}", source))
    return out


def obfuscation_findings(text: str, source: str = SOURCE) -> list[Finding]:
    out: list[Finding] = []
    chr_calls = len(_CHR_CALL.findall(text))
    ps_chars = len(_PS_CHAR.findall(text))
    if chr_calls >= 40 or ps_chars >= 20 or _FROMCHARCODE.search(text) or _NUM_ARRAY.search(text):
        out.append(Finding("script_charcode_obfuscation", 5,
                           f"code built from character codes (Chr x{chr_calls}, [char] x{ps_chars})", source))
    concat = len(_CONCAT.findall(text))
    if concat >= 40 and concat * 300 >= len(text):
        out.append(Finding("script_concat_obfuscation", 4,
                           f"{concat} string concatenations in {len(text)} characters", source))
    m = _BASE64_RUN.search(_DATA_URI.sub("data:", text))
    if m:
        out.append(Finding("script_long_base64", 4, f"base64 blob of 1000+ characters at offset {m.start()}", source))
    return out


#: capabilities that ordinary programs have too (a debugger evaluates code, a codec decodes
#: base64, an installer downloads): each alone stays below "suspicious"; together they count
WEAK_CAPABILITIES = frozenset({
    "script_dynamic_exec", "script_base64_decode", "script_hidden_window", "script_download", "script_activex",
    "script_file_write", "script_persistence", "script_wscript_shell", "script_charcode_obfuscation",
    "script_concat_obfuscation", "script_long_base64",
})
#: how many distinct weak capabilities make a script suspicious without any strong indicator
WEAK_CAPABILITIES_NEEDED = 4


def combination_findings(found: list[Finding], source: str = SOURCE) -> list[Finding]:
    """Indicators that mean more together: download and execute, download and save,
    obfuscation around code evaluation, persistence with a download, many weak capabilities."""
    ids = {f.id for f in found}
    out: list[Finding] = []
    runs = ids & {"script_dynamic_exec", "script_wscript_shell", "script_exec_encoded", "script_shell_pipe_exec"}
    if "script_download" in ids and runs:
        out.append(Finding("script_download_exec", 8, f"downloads and executes ({', '.join(sorted(runs))})", source))
    elif "script_download" in ids and "script_file_write" in ids:
        out.append(Finding("script_download_save", 6, "downloads and writes the data to a file (a dropper's first half)",
                           source))
    obfuscated = ids & {"script_charcode_obfuscation", "script_concat_obfuscation", "script_long_base64"}
    if obfuscated and ids & {"script_dynamic_exec", "script_base64_decode"}:
        out.append(Finding("script_obfuscated_eval", 5,
                           f"obfuscated code that is decoded or evaluated at run time ({', '.join(sorted(obfuscated))})",
                           source))
    if "script_persistence" in ids and ids & {"script_download", "script_hidden_window"}:
        out.append(Finding("script_persistence_with_payload", 6, "installs persistence and downloads or hides", source))
    weak = ids & WEAK_CAPABILITIES
    if len(weak) >= WEAK_CAPABILITIES_NEEDED:
        out.append(Finding("script_many_capabilities", 5,
                           f"{len(weak)} capabilities malware combines: {', '.join(sorted(weak))}", source))
    return out


# --- Windows Script Host droppers (JScript, VBScript, WSF) --------------------------------------
#
# Obfuscated droppers hide what a plain reading would show (the names "WScript.Shell",
# "ActiveXObject", a URL) and build the code they run at run time.  The signs below are weak
# alone (a library indexes arrays, an installer calls Execute) and only looked for in files that
# Windows Script Host would run: a .js that reads like a Node.js module or a browser script is
# not one.  Each sign is a finding of severity 3 at most; :func:`wsh_combination_findings` makes
# a suspicious one when obfuscation meets dynamic code or a hidden COM object.

#: extensions Windows Script Host runs (the launcher's list); .jse/.vbe are encoded and opaque
WSH_EXTENSIONS = {".js": "jscript", ".jse": "jscript", ".vbs": "vbscript", ".vbe": "vbscript", ".wsf": "wsf",
                  ".wsh": "wsf"}
_NODE_OR_BROWSER = re.compile(
    r"(?:\brequire\s*\(\s*['\"`]|\bmodule\.exports\b|\bexports\.[\w$]+\s*=|\bprocess\.(?:env|argv|exit|stdout|nextTick)\b|"
    r"^\s*(?:import|export)\s+[\w{*]|^#!.*\bnode\b|\bwindow\.[\w$]|\bdocument\.[\w$]|\bdefine\s*\(\s*(?:\[|function))",
    re.M)
_WSH_MARKER = re.compile(r"(?:\bWScript\s*[.\[]|@cc_on)", I)

_IDENT = r"(?<![\w$])[A-Za-z_$][\w$]{0,79}"  # bounded: no quadratic backtracking in long words
#: one operand of a string-building chain: a table lookup by number, a property, a short literal
_LOOKUP = rf"(?:{_IDENT}\s*\[\s*(?:\d+|0x[0-9a-fA-F]+)\s*\]|{_IDENT}\.{_IDENT}|\"[^\"\n]{{0,4}}\"|'[^'\n]{{0,4}}')"
_LOOKUP_CHAIN = re.compile(rf"{_LOOKUP}(?:\s*\+\s*{_LOOKUP}){{5,}}")
#: a 1-2 character string as an element of an array or object literal: the table of fragments
_TABLE_FRAGMENT = re.compile(r"""[\[,:]\s*(?:"[^"\\\n]{1,2}"|'[^'\\\n]{1,2}')\s*(?=[,\]}])""")
_TABLE_INDEX = re.compile(rf"{_IDENT}\s*\[\s*(?:\d+|0x[0-9a-fA-F]+)\s*\]")
_HEX_NAME = re.compile(r"\b_0x[0-9a-fA-F]{4,}\b")
_SHORT_STRING_VAR = re.compile(r"(?:^|[;,{(]|\bvar\b|\blet\b|\bconst\b)[ \t]*[A-Za-z_$][\w$]{0,79}[ \t]*=\s*(?:\"[^\"\n]{1,5}\"|'[^'\n]{1,5}')\s*[;,\n]",
                               re.M)
_ESCAPE = re.compile(r"\\(?:x[0-9a-fA-F]{2}|u[0-9a-fA-F]{4})")
_SPACED_LETTERS = re.compile(r"[\"'](?:[A-Za-z] ){10,}")
#: Replace(x, "token", "") / .replace("token", "") / .replace(/token/g, "") / .split("token").join("")
_REMOVE_TOKEN = re.compile(
    r"(?:\bReplace\s*\(\s*[^,\n]{1,200},\s*\"([^\"\n]{2,40})\"\s*,\s*\"\"|"
    r"\.replace\s*\(\s*(?:\"([^\"\n]{2,40})\"|'([^'\n]{2,40})'|/((?:[^/\\\n]|\\.){2,40})/g?i?)\s*,\s*(?:\"\"|'')\s*\)|"
    r"\.split\s*\(\s*(?:\"([^\"\n]{2,40})\"|'([^'\n]{2,40})')\s*\)\s*\.join\s*\(\s*(?:\"\"|'')\s*\))",
    I)
#: code evaluated at run time: eval / Execute / ExecuteGlobal / execScript / new Function / Function(...)
#: (not a method: RegExp.Execute, Command.Execute)
_DYN_CALL = re.compile(r"(?:(?<![.\w$])(?:eval|Execute|ExecuteGlobal|execScript)\b|(?-i:\bFunction\b)(?=\s*\())\s*\(?[ \t]*(?:_[ \t]*\r?\n\s*)?",
                       I)
_LITERAL_ONLY = re.compile(r"(?:\"[^\"\n]*\"|'[^'\n]*')\s*\)")
_LOOP = re.compile(r"\b(?:for|while|do)\b", I)
_COM_CALL = re.compile(r"(?:\bnew\s+ActiveXObject|\bCreateObject|\bGetObject)\s*\(\s*", I)
_COM_ALIAS = re.compile(r"(?:=\s*ActiveXObject\s*[,;\n)]|\bWScript\s*\[|\bthis\s*\[\s*[^\]\n]{0,80}\+)", I)

WSH_MIN_LOOKUP_CHAINS = 5
WSH_MIN_TABLE_FRAGMENTS = 30
WSH_MIN_TABLE_INDEXES = 150
WSH_MIN_HEX_NAMES = 20
WSH_MIN_SHORT_STRING_VARS = 25
WSH_MIN_ESCAPES = 200
WSH_ESCAPE_DENSITY = 60  # at least one escape per this many characters
WSH_MIN_JUNK_REPEATS = 10
WSH_MAX_TOKENS_TRIED = 32


def wsh_language(name: str, mime: str, text: str) -> str | None:
    """``jscript``, ``vbscript`` or ``wsf`` when Windows Script Host would run the file, else None.

    A .js that reads like a Node.js module or a browser script (require, module.exports, import,
    window., document.) is not one, unless it names WScript itself."""
    ext = "." + name.rsplit(".", 1)[-1].lower() if "." in name else ""
    lang = WSH_EXTENSIONS.get(ext)
    if lang is None:
        m = mime.lower()
        lang = "vbscript" if "vbscript" in m else ("jscript" if "jscript" in m else None)
    if lang == "jscript" and _NODE_OR_BROWSER.search(text) and not _WSH_MARKER.search(text):
        return None
    return lang


def _computed_dynamic_calls(text: str) -> tuple[int, int]:
    """(call sites whose argument is not one string literal, of them with a loop keyword in the
    300 characters before)."""
    computed = looped = 0
    for m in _DYN_CALL.finditer(text):
        rest = text[m.end(): m.end() + 200]
        if not rest or rest[0] in ")\n;" or _LITERAL_ONLY.match(rest):
            continue
        computed += 1
        if _LOOP.search(text[max(0, m.start() - 300): m.start()]):
            looped += 1
    return computed, looped


def _computed_com(text: str) -> int:
    n = 0
    for m in _COM_CALL.finditer(text):
        rest = text[m.end(): m.end() + 200]
        if rest and not _LITERAL_ONLY.match(rest):
            n += 1
    return n + len(_COM_ALIAS.findall(text))


def _junk_tokens(text: str) -> list[str]:
    """Tokens removed from strings by Replace/replace/split-join that occur often in the text:
    noise sprinkled through a payload string."""
    out: list[str] = []
    tried: set[str] = set()
    for m in _REMOVE_TOKEN.finditer(text):
        token = next(g for g in m.groups() if g)
        if token in tried or (m.group(4) and re.search(r"[\\.*+?()\[\]{}|^$]", token)):
            continue  # seen, or a real regular expression rather than a literal junk token
        tried.add(token)
        if text.count(token) >= WSH_MIN_JUNK_REPEATS:
            out.append(token)
        if len(tried) >= WSH_MAX_TOKENS_TRIED:
            break  # each try counts over the whole text: bounded
    return out


def wsh_findings(text: str, lang: str, source: str = SOURCE) -> list[Finding]:
    """The weak obfuscation and dynamic-code signs of a Windows Script Host file (severity 3 at most)."""
    out: list[Finding] = []
    # chains of lookups count only where there are tables of fragments to look up (number
    # crunching code indexes arrays of numbers: h[0] + h[1] + ...)
    fragments = len(_TABLE_FRAGMENT.findall(text))
    chains = len(_LOOKUP_CHAIN.findall(text)) if fragments >= WSH_MIN_TABLE_FRAGMENTS else 0
    indexes = len(_TABLE_INDEX.findall(text)) if lang != "vbscript" else 0
    hex_names = len(set(_HEX_NAME.findall(text)))
    short_vars = len(_SHORT_STRING_VAR.findall(text))
    escapes = len(_ESCAPE.findall(text))
    spaced = len(_SPACED_LETTERS.findall(text))
    signs = []
    if chains >= WSH_MIN_LOOKUP_CHAINS:
        signs.append(f"{chains} chains of lookups in tables of {fragments} fragments")
    if hex_names >= WSH_MIN_HEX_NAMES:
        signs.append(f"{hex_names} _0x names")
    if short_vars >= WSH_MIN_SHORT_STRING_VARS:
        signs.append(f"{short_vars} variables holding 1-5 character fragments")
    if escapes >= WSH_MIN_ESCAPES and escapes * WSH_ESCAPE_DENSITY >= len(text):
        signs.append(f"{escapes} escaped characters")
    if spaced >= 2:
        signs.append(f"{spaced} letter-spaced strings")
    if indexes >= WSH_MIN_TABLE_INDEXES and chains:
        signs.append(f"{indexes} lookups by number")
    if signs:
        out.append(Finding("wsh_string_obfuscation", 3,
                           f"{lang} built from string fragments: {'; '.join(signs)}", source))
    junk = _junk_tokens(text)
    if junk:
        out.append(Finding("wsh_junk_token_removal", 3,
                           f"{lang} strips a repeated junk token from its strings: {clip(junk[0], 40)!r}", source))
    computed, looped = _computed_dynamic_calls(text)
    if computed:
        how = f", {looped} in a loop" if looped else ""
        out.append(Finding("wsh_computed_eval", 3,
                           f"{lang} evaluates code built at run time ({computed} call sites{how})", source))
    com = _computed_com(text)
    if com:
        out.append(Finding("wsh_computed_com_object", 3,
                           f"{lang} creates COM/ActiveX objects whose names are built at run time ({com})", source))
    return out


#: obfuscation signs (a WSH file's own and the general ones)
WSH_OBFUSCATION = frozenset({"wsh_string_obfuscation", "wsh_junk_token_removal", "script_charcode_obfuscation",
                             "script_concat_obfuscation", "script_long_base64"})
#: COM use: plain or with a computed name
WSH_COM = frozenset({"wsh_computed_com_object", "script_activex", "script_wscript_shell"})


def wsh_combination_findings(found: list[Finding], lang: str, source: str = SOURCE) -> list[Finding]:
    """A Windows script that hides its strings and runs code it builds, or hides the COM objects it
    creates, is a dropper's shape: suspicious (5), or 6 when it also uses COM objects."""
    ids = {f.id for f in found}
    obf = sorted(ids & WSH_OBFUSCATION)
    dyn = "wsh_computed_eval" in ids
    com = sorted(ids & WSH_COM)
    if obf and dyn:
        sev = 6 if com else 5
        what = f"obfuscated ({', '.join(obf)}) and evaluates code built at run time" + (
            f", with COM objects ({', '.join(com)})" if com else "")
    elif obf and "wsh_computed_com_object" in ids:
        sev, what = 5, f"obfuscated ({', '.join(obf)}) and hides the names of the COM objects it creates"
    elif dyn and "wsh_computed_com_object" in ids:
        sev, what = 5, "evaluates code built at run time and hides the names of the COM objects it creates"
    else:
        return []
    return [Finding("wsh_obfuscated_dropper", sev, f"Windows script ({lang}) {what}", source)]


def command_findings(text: str, source: str = SOURCE) -> list[Finding]:
    """Script indicators for one command line (shortcut target + arguments, DDE field)."""
    found = indicator_findings(text[:MAX_CHARS], source)
    return found + combination_findings(found, source)


def text_findings(text: str, source: str = SOURCE) -> list[Finding]:
    text = text[:MAX_CHARS]
    found = indicator_findings(text, source) + obfuscation_findings(text, source)
    return found + combination_findings(found, source)


def script_findings(text: str, name: str = "", mime: str = "", source: str = SOURCE) -> list[Finding]:
    """:func:`text_findings` plus the Windows Script Host signs when the file is one
    (:func:`wsh_language`)."""
    text = text[:MAX_CHARS]
    found = text_findings(text, source)
    lang = wsh_language(name, mime, text)
    if lang is None:
        return found
    wsh = wsh_findings(text, lang, source)
    return found + wsh + wsh_combination_findings(found + wsh, lang, source)


def analyze(artifact: Artifact, data_path: str, ctx: Context) -> list[Finding]:
    return script_findings(decode_text(ctx.data, MAX_CHARS * 2), artifact.name, artifact.type)
