"""Outlook ``.msg`` files (OLE compound files of MAPI properties) opened with extract-msg.

Their attachments become artifacts (origin ``msg:<name>``); an attached Outlook
message (an embedded ``.msg``) is opened in turn, within the same depth and
member limits as archives; the HTML body becomes an artifact of its own
(``body.html``) so the HTML analyzers and the link finder see it, and the plain
text body feeds the archive-password guesses.

extract-msg is a maintained parser of the format (it follows the MS-OXMSG
specification); a malformed file is a finding, never an exception.
"""

from __future__ import annotations

import io
import logging
from typing import Any

from mailvm.extract.archives import ExpandContext
from mailvm.extract.passwords import candidate_passwords
from mailvm.extract.spool import LimitExceeded
from mailvm.verdict import Artifact, Finding

log = logging.getLogger(__name__)

SOURCE = "extract"
#: Outlook message property streams: an OLE file with these is a .msg, not an Office document
MSG_MARKERS = ("__properties_version1.0", "__substg1.0_")
MAX_BODY = 2 * 1024 * 1024
#: embedded messages opened inside one .msg (each also counts against max_members)
MAX_EMBEDDED = 20


def is_outlook_msg(path: str) -> bool:
    """True for an OLE compound file whose streams are MAPI message properties."""
    import olefile

    try:
        if not olefile.isOleFile(path):
            return False
        with olefile.OleFileIO(path) as ole:
            names = ["/".join(e) for e in ole.listdir(streams=True, storages=True)[:500]]
    except Exception:  # not a valid OLE file: the Office expander says so
        return False
    return any(n.split("/")[0].startswith(MSG_MARKERS) for n in names)


def _text(value: Any, limit: int = MAX_BODY) -> str:
    if value is None:
        return ""
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    return str(value)[:limit]


def expand_msg(ctx: ExpandContext) -> list[Artifact]:
    """Attachments, embedded messages and the HTML body of an Outlook ``.msg``."""
    import extract_msg

    art = ctx.artifact
    try:
        msg = extract_msg.openMsg(art.path, delayAttachments=False, strict=False)
    except Exception as exc:
        art.findings.append(Finding("msg_unreadable", 2, f"{art.name}: not a readable Outlook message: "
                                    f"{type(exc).__name__}: {str(exc)[:120]}", SOURCE))
        return ctx.children
    try:
        _walk(ctx, msg, prefix="", embedded=[0])
    except LimitExceeded:
        raise
    except Exception as exc:  # a parser failure half-way: what was read stays, the rest is a finding
        art.findings.append(Finding("msg_unreadable", 2, f"{art.name}: stopped reading: {type(exc).__name__}", SOURCE))
    finally:
        try:
            msg.close()
        except Exception:
            pass
    return ctx.children


def _walk(ctx: ExpandContext, msg: Any, prefix: str, embedded: list[int]) -> None:
    body = _text(getattr(msg, "body", None) if _safe(lambda: msg.body) is not None else None)
    if body:
        more = candidate_passwords(body, (), ctx.cfg.max_password_tries)
        ctx.passwords = list(dict.fromkeys([*ctx.passwords, *more]))[: max(ctx.cfg.max_password_tries, 1)]
    html = _safe(lambda: msg.htmlBody)
    if html:
        data = html if isinstance(html, bytes) else str(html).encode("utf-8", "replace")
        if ctx.count_entry():
            ctx.add_member(io.BytesIO(data[:MAX_BODY]).read, f"{prefix}body.html", label="msg")
    for att in _safe(lambda: list(msg.attachments)) or []:
        if ctx.stopped or not ctx.count_entry():
            return
        name = _text(_safe(lambda: att.longFilename) or _safe(lambda: att.shortFilename) or "", 255) or "unnamed"
        data = _safe(lambda: att.data)
        if isinstance(data, (bytes, bytearray)):
            ctx.add_member(io.BytesIO(bytes(data)).read, f"{prefix}{name}", label="msg")
        elif data is not None and hasattr(data, "attachments"):  # an attached Outlook message
            embedded[0] += 1
            if embedded[0] > MAX_EMBEDDED or ctx.depth + prefix.count("/") >= ctx.cfg.max_depth:
                ctx.spool.note_limit("max_message_depth", f"{ctx.artifact.name}: Outlook messages nested too deep")
                continue
            subject = _text(_safe(lambda: data.subject), 60).replace("/", "_") or f"message{embedded[0]}"
            _walk(ctx, data, prefix=f"{prefix}{subject}/", embedded=embedded)


def _safe(get: Any) -> Any:
    """One property read; extract-msg raises on malformed properties, which are simply absent here."""
    try:
        return get()
    except LimitExceeded:
        raise
    except Exception:
        return None
