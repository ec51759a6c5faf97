"""Carry out a :class:`~mailvm.policy.Decision` on the SMTP transaction.

Protocol code never decides: this module maps the decision's action to
pymilter calls and return codes, nothing more.  ``X-Mailvm-*`` header fields
that came from outside are always removed first, so only ours reach the
mailbox.
"""

from __future__ import annotations

import email
import email.policy
import hashlib
import logging
import re
from typing import Any, Iterable

import Milter

log = logging.getLogger(__name__)

STRIP_NOTICE = (
    "This attachment was removed by mailvm because it was found {verdict}.\r\n"
    "Name: {name}\r\nSHA-256: {sha}\r\n"
)


def apply(ctx: Any, outcome: Any, own_headers: dict[str, int]) -> int:
    """Apply ``outcome`` (a :class:`mailvm.milter.service.Outcome`) through the milter context."""
    d = outcome.decision
    _remove_own_headers(ctx, own_headers)
    if d.action == "reject":
        ctx.setreply(d.smtp_code or "550", d.smtp_ext or "5.7.1", d.smtp_text or "Message rejected")
        return Milter.REJECT
    if d.action == "tempfail":
        ctx.setreply(d.smtp_code or "451", d.smtp_ext or "4.7.1", d.smtp_text or "Analysis in progress, try again later")
        return Milter.TEMPFAIL
    if d.action in ("discard", "quarantine"):
        # quarantine: the service already stored the message durably in mailvm's store
        return Milter.DISCARD
    for name, value in d.headers:
        ctx.addheader(name, value, -1)
    if d.action == "hold":
        ctx.quarantine(_oneline(d.reason)[:200] or "mailvm hold")
    elif d.action == "strip":
        _strip(ctx, outcome)
    return Milter.ACCEPT


def _remove_own_headers(ctx: Any, own_headers: dict[str, int]) -> None:
    for name, count in own_headers.items():
        for idx in range(count, 0, -1):  # highest index first keeps lower indices valid
            ctx.chgheader(name, idx, "")


def _oneline(text: str) -> str:
    return re.sub(r"[\r\n\t]+", " ", text or "").strip()


def _strip(ctx: Any, outcome: Any) -> None:
    bad = set(outcome.decision.strip_parts)
    if not bad:
        return
    head_changes, body = strip_parts(outcome.raw, bad, _names(outcome))
    for name, value in head_changes:
        ctx.chgheader(name, 1, value)
    ctx.replacebody(body)


def _names(outcome: Any) -> dict[str, tuple[str, str]]:
    names: dict[str, tuple[str, str]] = {}
    for a in (outcome.report or {}).get("artifacts", []):
        names.setdefault(a["sha256"], (a["name"], a["verdict"]))
    return names


def strip_parts(raw: bytes, bad_sha256: Iterable[str], names: dict[str, tuple[str, str]] | None = None) -> tuple[list[tuple[str, str]], bytes]:
    """Replace every MIME leaf whose decoded content has one of ``bad_sha256`` by a text notice.

    Returns the top-level header changes (only when the message itself is the
    offending part) and the new body with CRLF line endings.
    """
    bad = set(bad_sha256)
    names = names or {}
    msg = email.message_from_bytes(raw, policy=email.policy.compat32)
    head_changes: list[tuple[str, str]] = []
    for part in msg.walk():
        if part.is_multipart():
            continue
        try:
            payload = part.get_payload(decode=True) or b""
        except Exception:  # undecodable part: leave it, the verdict already reflects it
            continue
        sha = hashlib.sha256(payload).hexdigest()
        if sha not in bad:
            continue
        name, verdict = names.get(sha, (part.get_filename() or "attachment", "malicious"))
        notice = STRIP_NOTICE.format(verdict=verdict, name=_oneline(str(name))[:200], sha=sha)
        for h in ("Content-Transfer-Encoding", "Content-Disposition", "Content-Type"):
            del part[h]
        part["Content-Type"] = 'text/plain; charset="us-ascii"'
        part["Content-Disposition"] = 'inline; filename="removed-by-mailvm.txt"'
        part["Content-Transfer-Encoding"] = "7bit"
        part.set_payload(notice)
        if part is msg:
            head_changes = [
                ("Content-Type", part["Content-Type"]),
                ("Content-Transfer-Encoding", "7bit"),
                ("Content-Disposition", part["Content-Disposition"]),
            ]
    data = msg.as_bytes(policy=email.policy.compat32.clone(linesep="\r\n"))
    sep = data.find(b"\r\n\r\n")
    body = data[sep + 4:] if sep >= 0 else b""
    return head_changes, body
