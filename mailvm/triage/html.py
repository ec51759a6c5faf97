"""HTML attachments (and SVG, MHT, HTA pages): smuggling, auto-downloads,
credential forms, obfuscated script, Office protocol handlers.

* HTML smuggling: a script builds a ``Blob`` and makes the browser save it
  (``msSaveOrOpenBlob``, or ``createObjectURL`` plus a ``download`` attribute),
  usually from a base64 literal; the literal is decoded (its head only) to name
  what it carries (PE, zip, ISO...);
* ``data:`` URIs with a download attribute or a binary MIME type;
* meta refresh and script redirects to executables, archives and disk images;
* password fields (local phishing pages);
* ``document.write(unescape(...))``, ``eval(atob(...))``;
* ``ms-msdt:``, ``search-ms:`` and other protocol handlers abused from HTML
  (CVE-2022-30190 "Follina").

Script-level indicators (WScript.Shell, eval...) come from
:mod:`mailvm.triage.script`, which also runs on this kind.
"""

from __future__ import annotations

import base64
import binascii
import re

from mailvm.triage.base import Context, clip, decode_text
from mailvm.triage.filetype import DANGEROUS_EXTENSIONS
from mailvm.verdict import Artifact, Finding

SOURCE = "triage:html"
MAX_CHARS = 8 * 1024 * 1024
I = re.I | re.S

_BLOB = re.compile(r"new\s+Blob\s*\(|\bBlob\s*\(\s*\[", I)
_SAVE = re.compile(r"msSaveOrOpenBlob|msSaveBlob|createObjectURL", I)
_DOWNLOAD = re.compile(r"\.download\s*=|\bdownload\s*=\s*[\"']?|setAttribute\s*\(\s*[\"']download|msSaveOrOpenBlob|msSaveBlob", I)
_DECODE = re.compile(r"\batob\s*\(|base64|Uint8Array|fromCharCode|charCodeAt", I)
_B64_LITERAL = re.compile(r"[\"'`]([A-Za-z0-9+/]{400,}={0,2})[\"'`]")
_DATA_URI_IMG = re.compile(r"data:(?:image|font)/[\w.+\-]{0,40};base64,", I)
_DATA_BIN = re.compile(
    r"data:(application/(?:octet-stream|zip|x-zip-compressed|x-msdownload|x-msdos-program|x-iso9660-image|"
    r"vnd\.ms-|x-rar|x-7z|java-archive|hta|x-ms-shortcut|vnd\.openxmlformats)[\w.+\-]*)[^\"'\s,]{0,60};base64,", I)
_A_TAG = re.compile(r"<a\b", re.I)
_HREF_DATA = re.compile(r"\bhref\s*=\s*[\"']?data:", re.I)
_DOWNLOAD_ATTR = re.compile(r"\sdownload\b", re.I)
MAX_ANCHORS = 5000
MAX_TAG_CHARS = 256 * 1024
_META_REFRESH = re.compile(r"<meta\b[^>]{0,500}?http-equiv\s*=\s*[\"']?refresh[^>]{0,500}?>", I)
_REFRESH_URL = re.compile(r"url\s*=\s*[\"']?([^\"'>\s]{1,500})", I)
_JS_REDIRECT = re.compile(
    r"(?:location(?:\.href)?|window\.open|location\.(?:replace|assign))\s*(?:=|\()\s*[\"']([^\"']{1,500})[\"']", I)
_PASSWORD = re.compile(r"<input\b[^>]{0,500}?type\s*=\s*[\"']?password", I)
_REMOTE_POST = re.compile(r"<form\b[^>]{0,500}?action\s*=\s*[\"']?https?://|\bfetch\s*\(\s*[\"']https?://|XMLHttpRequest|\$\.(?:ajax|post)\s*\(|api\.telegram\.org", I)
_OBFUSCATED = re.compile(
    r"document\.write\s*\(\s*(?:unescape|atob|decodeURIComponent|window\.atob)\s*\(|"
    r"eval\s*\(\s*(?:unescape|atob|decodeURIComponent|window\.atob|String\.fromCharCode)\s*\(", I)
_MS_PROTOCOL_STRONG = re.compile(r"ms-msdt\s*:|search-ms\s*:|ms-officecmd\s*:|ms-appinstaller\s*:|ms-(?:excel|word|powerpoint)\s*:\s*of[eu]\|", I)

#: "paste and run" lures (ClickFix): the page tells the reader to open a command prompt and paste into it
_RUN_PROMPT = re.compile(
    r"\bwin(?:dows)?(?:\s*(?:key|logo\s*key))?\s*\+\s*(?:r|x)\b|\brun\s+(?:dialog|box|window)|"
    r"open\s+(?:windows\s+)?(?:powershell|terminal|command\s+prompt|cmd)|type\s+[\"'\u201c]?(?:powershell|cmd|terminal)\b|"
    r"(?:cmd|command|\u2318)\s*\+\s*space", re.I)
_PASTE = re.compile(r"\bctrl\s*\+\s*v\b|(?:\u2318|cmd|command)\s*\+\s*v\b|\bpaste\b", re.I)
_CLIPBOARD_WRITE = re.compile(r"clipboard\s*\.\s*write(?:Text)?\s*\(|execCommand\s*\(\s*[\"']copy|"
                              r"clipboardData\s*\.\s*setData\s*\(", re.I)
_FAKE_CHECK = re.compile(r"\b(?:verify|verification|human|robot|captcha|ray\s+id|fix|error|blocked|update)\b", re.I)

#: a North American toll-free number (the support-scam pages' "call us")
_TOLL_FREE = re.compile(r"(?<!\d)(?:\+?1[\s.\-]?)?\(?8(?:00|33|44|55|66|77|88)\)?[\s.\-]?\d{3}[\s.\-]?\d{4}(?!\d)")
_DEAD_HREF = re.compile(r"^\s*(?:#|javascript:\s*(?:void\s*\(\s*0?\s*\)|;)?\s*;?)?\s*$", re.I)
_PAGE_TITLE = re.compile(r"<title[^>]{0,200}>([^<]{1,300})", re.I)
MIN_DEAD_LINKS = 8
#: an input field for payment-card data (name, id, autocomplete or placeholder)
_CARD_INPUT = re.compile(
    r"<input\b[^>]{0,500}?(?:name|id|autocomplete|placeholder)\s*=\s*[\"']?[^\"'>]{0,40}?"
    r"(?:cc-?(?:number|csc|exp)|card[\s_-]?(?:number|num|no)\b|\bcvv2?\b|\bcvc\b|security[\s_-]?code|"
    r"expir(?:y|ation)[\s_-]?date)", I)
_FORM_ACTION = re.compile(r"<form\b[^>]{0,500}?\baction\s*=\s*[\"']?\s*(data:|javascript:|https?://)", I)

PAYLOAD_MAGICS: tuple[tuple[bytes, str], ...] = (
    (b"MZ", "PE executable"),
    (b"PK\x03\x04", "zip archive"),
    (b"7z\xbc\xaf\x27\x1c", "7z archive"),
    (b"Rar!", "RAR archive"),
    (b"\xd0\xcf\x11\xe0", "OLE (Office/MSI) file"),
    (b"L\x00\x00\x00\x01\x14\x02\x00", "Windows shortcut"),
    (b"\x7fELF", "ELF executable"),
    (b"%PDF", "PDF"),
    (b"\x1f\x8b", "gzip data"),
)


def _risky_url(url: str) -> bool:
    path = url.split("?", 1)[0].split("#", 1)[0].lower()
    ext = path.rsplit(".", 1)[-1] if "." in path.rsplit("/", 1)[-1] else ""
    return ext in DANGEROUS_EXTENSIONS or ext in ("zip", "rar", "7z", "gz", "cab", "ace", "arj", "r00")


def embedded_payloads(text: str) -> list[str]:
    """What long base64 literals in the page decode to (first bytes only)."""
    found: list[str] = []
    for m in _B64_LITERAL.finditer(text):
        head = m.group(1)[:64]
        head = head[: len(head) - len(head) % 4]
        try:
            raw = base64.b64decode(head)
        except (binascii.Error, ValueError):
            continue
        for magic, what in PAYLOAD_MAGICS:
            if raw.startswith(magic):
                found.append(f"{what} ({len(m.group(1)) * 3 // 4} bytes)")
                break
        if len(found) >= 5:
            break
    return found


def _data_download_anchor(text: str) -> bool:
    """An ``<a>`` tag with both ``href="data:..."`` and a ``download`` attribute (bounded scan)."""
    for i, m in enumerate(_A_TAG.finditer(text)):
        if i >= MAX_ANCHORS:
            break
        end = text.find(">", m.start(), m.start() + MAX_TAG_CHARS)
        tag = text[m.start() : end if end >= 0 else m.start() + MAX_TAG_CHARS]
        if _HREF_DATA.search(tag) and _DOWNLOAD_ATTR.search(tag):
            return True
    return False


def paste_command_lure(text: str) -> Finding | None:
    """A page that tells its reader to open a Run box or a shell and paste into it (ClickFix), most of all
    one whose script puts the command on the clipboard, under a fake check or error."""
    from mailvm.triage.body import _visible  # the bounded visible-text reader of the body analyzer

    visible = _visible(text[:MAX_CHARS])
    run, paste = _RUN_PROMPT.search(visible), _PASTE.search(visible)
    if not run or not paste:
        return None
    clipboard = bool(_CLIPBOARD_WRITE.search(text))
    check = _FAKE_CHECK.search(visible)
    sev = 3 + (2 if clipboard else 0) + (2 if check and clipboard else 0)
    what = f"tells to {clip(run.group(0), 30)!r} and {clip(paste.group(0), 20)!r}"
    if clipboard:
        what += "; its script writes to the clipboard"
    if check:
        what += f"; framed as {clip(check.group(0), 20)!r}"
    return Finding("html_paste_command_lure", sev, what, SOURCE)


def brand_shell_page(text: str) -> Finding | None:
    """A page titled as a well-known brand's whose links all go nowhere (``#``): a copy of the brand's site
    kept only for its look, as support-scam and phishing pages are; worse with a toll-free number to call."""
    from mailvm.triage.body import _visible, anchors
    from mailvm.triage.phishing import brand_claim

    title = _PAGE_TITLE.search(text[:MAX_CHARS])
    claim = brand_claim(title.group(1), "") if title else None  # the title is the brand (and service words)
    if claim is None or claim.where != "display name":
        return None
    links = anchors(text[:MAX_CHARS])
    dead = sum(1 for h, _ in links if _DEAD_HREF.match(h))
    if dead < MIN_DEAD_LINKS or dead < 0.8 * len(links):
        return None
    phone = _TOLL_FREE.search(_visible(text[:MAX_CHARS]))
    detail = f"page titled {clip(title.group(1), 60)!r} ({claim.brand}) with {dead} of {len(links)} links going nowhere"
    if phone:
        detail += f"; asks to call {clip(phone.group(0), 20)}"
    return Finding("html_brand_shell_page", 5 if phone else 3, detail, SOURCE)


def html_findings(text: str) -> list[Finding]:
    out: list[Finding] = []
    paste = paste_command_lure(text)
    if paste is not None:
        out.append(paste)
    card = _CARD_INPUT.search(text)
    action = _FORM_ACTION.search(text)
    if card:
        remote = bool(action) or bool(_REMOTE_POST.search(text))
        out.append(Finding("html_card_form", 5 if remote else 4,
                           f"page asks for payment-card data ({clip(card.group(0)[-40:], 40)})"
                           + (" and sends it to a remote server" if remote else ""), SOURCE))
    if action and action.group(1).lower() in ("data:", "javascript:"):
        out.append(Finding("html_form_script_action", 5,
                           f"a form submits to a {action.group(1).lower()} URL (its data never leaves by a "
                           "normal post)", SOURCE))
    shell = brand_shell_page(text)
    if shell is not None:
        out.append(shell)
    blob, save, dl, dec = (bool(p.search(text)) for p in (_BLOB, _SAVE, _DOWNLOAD, _DECODE))
    payloads = embedded_payloads(_DATA_URI_IMG.sub("data:", text))
    if blob and save and dl:
        if dec or payloads:
            what = f": {', '.join(payloads)}" if payloads else ""
            out.append(Finding("html_smuggling", 8, f"script assembles a file from encoded data and saves it{what}", SOURCE))
        else:
            out.append(Finding("html_blob_download", 5, "script builds a Blob and triggers a download", SOURCE))
    elif payloads:
        out.append(Finding("html_embedded_payload", 6, f"base64 literal decodes to {', '.join(payloads)}", SOURCE))
    m = _DATA_BIN.search(text)
    if _data_download_anchor(text):
        out.append(Finding("html_data_uri_download", 7, "link with a download attribute serves an embedded data: URI", SOURCE))
    elif m:
        out.append(Finding("html_data_uri_download", 6, f"embedded {clip(m.group(1), 60)} data: URI", SOURCE))
    for tag in _META_REFRESH.finditer(text):
        um = _REFRESH_URL.search(tag.group(0))
        if not um:
            continue
        url = um.group(1)
        if _risky_url(url):
            out.append(Finding("html_meta_refresh_download", 6, f"meta refresh to {clip(url, 120)}", SOURCE))
        elif re.match(r"(https?:)?//", url, re.I):
            out.append(Finding("html_meta_refresh", 3, f"meta refresh to {clip(url, 120)}", SOURCE))
        break
    for jm in _JS_REDIRECT.finditer(text):
        if _risky_url(jm.group(1)):
            out.append(Finding("html_auto_download", 6, f"script navigates to {clip(jm.group(1), 120)}", SOURCE))
            break
    if _PASSWORD.search(text):
        remote = bool(_REMOTE_POST.search(text))
        out.append(Finding("html_password_form", 6 if remote else 5,
                           "page asks for a password" + (" and sends it to a remote server" if remote else ""), SOURCE))
    om = _OBFUSCATED.search(text)
    if om:
        out.append(Finding("html_obfuscated_script", 6, f"writes or evaluates decoded script: {clip(om.group(0), 80)}", SOURCE))
    pm = _MS_PROTOCOL_STRONG.search(text)
    if pm:
        out.append(Finding("html_ms_protocol_handler", 8, f"invokes a Windows protocol handler: {clip(text[pm.start():pm.start() + 100], 100)}", SOURCE))
    return out


def analyze(artifact: Artifact, data_path: str, ctx: Context) -> list[Finding]:
    text = decode_text(ctx.data, MAX_CHARS)
    if ctx.kind == "script" and not re.search(r"<\s*(html|script|body|head|meta|a\s)", text[:65536], re.I):
        return []  # a plain script file: nothing HTML-specific to look at
    return html_findings(text)
