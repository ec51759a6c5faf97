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
import socket
from dataclasses import dataclass
from typing import Any, Iterable

import Milter

from mailvm.policy import REPLY_REJECT, REPLY_TEMPFAIL
from mailvm.verdict import ENGINE_VERSION

log = logging.getLogger(__name__)

#: "mailvm/<version> on <host>", appended to the verdict header of every message this host decides
SCANNER_ID = f"mailvm/{ENGINE_VERSION.split('/', 1)[0].removeprefix('mailvm-')} on {socket.gethostname()[:64]}"

STRIP_NOTICE = (
    "This attachment was removed by mailvm: {what}.\r\n"
    "Attachment: {name}\r\nSHA-256: {sha}\r\n"
)


@dataclass
class StripResult:
    """What :func:`strip_parts` did: the new body, and whether every offending part is gone."""

    head_changes: list[tuple[str, str]]
    body: bytes
    #: offending part ids not removed: not found in the message, or a copy still in the new body (seen by
    #: the standard parser or hidden behind broken boundaries)
    missing: set[str]
    undecodable: int  # leaves whose content could not be decoded (so not compared)

    @property
    def complete(self) -> bool:
        """Every offending part found and gone, and no leaf that could not be compared: a part that
        cannot be decoded cannot be shown not to be an offending one, so it fails closed too."""
        return not self.missing and not self.undecodable


def apply(ctx: Any, outcome: Any, own_headers: dict[str, int]) -> int:
    """Apply ``outcome`` (a :class:`mailvm.milter.service.Outcome`) through the milter context."""
    d = outcome.decision
    _remove_own_headers(ctx, own_headers)
    if d.action == "reject":
        ctx.setreply(d.smtp_code or REPLY_REJECT[0], d.smtp_ext or REPLY_REJECT[1], d.smtp_text or "Message rejected")
        return Milter.REJECT
    if d.action == "tempfail":
        # the reply codes have one source, mailvm.policy (documented in docs/policy.md): 451 4.7.1 for a
        # tempfail decision, 451 4.3.0 (REPLY_INTERNAL) when mailvm itself failed (set by the decision)
        ctx.setreply(d.smtp_code or REPLY_TEMPFAIL[0], d.smtp_ext or REPLY_TEMPFAIL[1],
                     d.smtp_text or "Analysis in progress, try again later")
        return Milter.TEMPFAIL
    if d.action in ("discard", "quarantine"):
        # quarantine: the service already stored the message durably in mailvm's store
        return Milter.DISCARD
    for i, (name, value) in enumerate(d.headers):
        if i == 0:  # the verdict header says which mailvm, where (like clamav-milter's ReportHostname)
            value = f"{value} ({SCANNER_ID})"
        ctx.addheader(name, _value(ctx, value), -1)
    if d.action == "hold":
        ctx.quarantine(_oneline(d.reason)[:200] or "mailvm hold")
    elif d.action == "strip":
        _strip(ctx, outcome)
    return Milter.ACCEPT


def _remove_own_headers(ctx: Any, own_headers: dict[str, int]) -> None:
    for name, count in own_headers.items():
        for idx in range(count, 0, -1):  # highest index first keeps lower indices valid
            ctx.chgheader(name, idx, "")


def _value(ctx: Any, value: str) -> str:
    """A header value for the MTA: with SMFIP_HDR_LEADSPC negotiated it inserts no space after the
    colon itself, so the value brings its own."""
    return " " + value if getattr(ctx, "leadspc", False) and value and not value[0].isspace() else value


def _oneline(text: str) -> str:
    return re.sub(r"[\r\n\t]+", " ", text or "").strip()


def _strip(ctx: Any, outcome: Any) -> None:
    """Replace the body with the one the service computed and verified (see :func:`strip_parts`)."""
    result = outcome.stripped
    if result is None:
        raise RuntimeError("strip decision without a verified stripped body")
    for name, value in result.head_changes:
        ctx.chgheader(name, 1, _value(ctx, value))
    ctx.replacebody(result.body)


def notices(report: dict[str, Any] | None) -> dict[str, tuple[str, str]]:
    """part id -> (the attachment's name, why it goes): the worst file inside it, named, with its verdict.

    A zip is removed for its malicious member: the notice says which member and why,
    not the zip's own (clean) verdict.
    """
    rank = {"malicious": 3, "suspicious": 2, "pending": 1, "error": 1, "clean": 0}
    out: dict[str, tuple[str, str, int]] = {}
    arts = (report or {}).get("artifacts", [])
    tops = {a.get("part_id"): a.get("name", "") for a in arts if a.get("part_id") and a.get("part_id") == a.get("sha256")}
    for a in arts:
        pid = a.get("part_id")
        if not pid:
            continue
        r = rank.get(a.get("verdict", ""), 0)
        if pid not in out or r > out[pid][2]:
            top = tops.get(pid, a.get("name", ""))
            inner = "" if a.get("part_id") == a.get("sha256") else f" (inside: {a.get('name', '')})"
            out[pid] = (top, f"found {a.get('verdict', 'malicious')}{inner}", r)
    return {k: (v[0], v[1]) for k, v in out.items()}


def strip_parts(raw: bytes, bad_part_ids: Iterable[str],
                names: dict[str, tuple[str, str]] | None = None) -> StripResult:
    """Replace every MIME leaf whose decoded content is one of ``bad_part_ids`` by a text notice.

    Part ids are the SHA-256 of a leaf's decoded content, recorded at extraction
    (:attr:`mailvm.verdict.Artifact.part_id`).  The result says which offending
    ids were not found; the caller must not deliver unless every one was removed,
    and the new body is parsed again to check that none is left, both as a mail
    client's parser sees it and as the extractor's recovery of parts hidden behind
    broken or reused boundaries does.
    """
    bad = set(bad_part_ids)
    names = names or {}
    msg = email.message_from_bytes(raw, policy=email.policy.compat32)
    head_changes: list[tuple[str, str]] = []
    found: set[str] = set()
    undecodable = 0
    for part in msg.walk():
        if part.is_multipart():
            continue
        try:
            payload = part.get_payload(decode=True) or b""
        except Exception:  # undecodable: it cannot be compared, so it cannot be shown to be clean
            undecodable += 1
            continue
        sha = hashlib.sha256(payload).hexdigest()
        if sha not in bad:
            continue
        found.add(sha)
        name, why = names.get(sha, (part.get_filename() or "attachment", "found malicious"))
        notice = STRIP_NOTICE.format(what=_oneline(why)[:200], name=_oneline(str(name))[:200], sha=sha)
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
    missing = bad - found
    # check the result the way a mail client will read it: no offending content may be left
    for part in email.message_from_bytes(data, policy=email.policy.compat32).walk():
        if part.is_multipart():
            continue
        try:
            payload = part.get_payload(decode=True) or b""
        except Exception:  # not compared: counted, so the caller does not deliver
            undecodable += 1
            continue
        if hashlib.sha256(payload).hexdigest() in bad:
            missing.add(hashlib.sha256(payload).hexdigest())
    # and the way the extractor reads past broken or reused boundaries (mime_part_recovered): a copy of
    # an offending part hidden from the standard parser is still in the body, though no leaf shows it
    from mailvm.extract.embedded import salvage_parts

    for hidden in salvage_parts(data, len(data)):
        sha = hashlib.sha256(hidden.data).hexdigest()
        if sha in bad:
            missing.add(sha)
    sep = data.find(b"\r\n\r\n")
    body = data[sep + 4:] if sep >= 0 else b""
    return StripResult(head_changes, body, missing, undecodable)
