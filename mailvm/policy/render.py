"""What reaches an SMTP reply or a header: reply codes, sanitised text, templates, folding.

Everything here takes hostile text (file names, finding ids) and makes it printable
ASCII and bounded: :func:`smtp_reply_text` for libmilter's ``setreply``,
:func:`fill_template` for the policy's ``reject_text``/``tempfail_text``, and
:func:`report_headers` for the verdict and report headers, folded so that unfolding
restores the value.  No decision is taken here.
"""

from __future__ import annotations

import re
import string
from typing import Any, Sequence

from mailvm.policy.model import DEFAULT_REJECT_TEXT, OUTCOME_VERDICTS, ArtifactOutcome, Policy, clamp_score
from mailvm.verdict import CLEAN, ERROR, MALICIOUS, PENDING, SUSPICIOUS, Finding

#: SMTP replies: (basic code, enhanced status code, RFC 3463)
REPLY_REJECT: tuple[str, str] = ("550", "5.7.1")  # delivery not authorized, message refused
REPLY_TEMPFAIL: tuple[str, str] = ("451", "4.7.1")  # analysis not finished / failed: try later
REPLY_INTERNAL: tuple[str, str] = ("451", "4.3.0")  # mailvm itself failed (fail_open = false)
#: SMTP reply for a message mailvm cannot take whole (RFC 3463: message too big for system)
REPLY_TOO_BIG: tuple[str, str] = ("552", "5.3.4")

# Bounds on what decide() emits.
MAX_REPLY_TEXT = 200  # characters of SMTP reply text before %-escaping (<= 400 after)
MAX_REASON = 300
MAX_HEADER_VALUE = 900  # report header value, folding included
HEADER_LINE = 76  # fold report header lines at about this width
MAX_NAME_IN_HEADER = 60
MAX_FINDINGS_PER_ARTIFACT = 3
MAX_NAMES_IN_REASON = 3

_SAFE_NAME = re.compile(r"[^A-Za-z0-9._+\-=@#~!&()\[\],]")
_SAFE_ID = re.compile(r"[^a-z0-9_]")
_HEX = re.compile(r"^[0-9a-f]+$")


def safe_name(name: Any, limit: int = MAX_NAME_IN_HEADER) -> str:
    """A file name made safe for a header or a reply: ASCII, no spaces or separators, bounded.

    Every other character becomes ``_``; a long name keeps its start and its
    extension (``very_lo...exe``), which is what an administrator looks for.
    """
    text = "" if name is None else str(name)
    if len(text) > 4 * limit:
        text = text[: 2 * limit] + text[-16:]
    text = _SAFE_NAME.sub("_", text)
    if not text.strip("_"):
        return "(unnamed)"
    if len(text) > limit:
        last = text[-12:]
        tail = last[last.rindex("."):] if "." in last else text[-8:]
        text = text[: limit - len(tail) - 3] + "..." + tail
    return text


def safe_id(fid: Any) -> str:
    """A finding id for a header or a reason: lower-case ``[a-z0-9_]``, at most 32 characters."""
    return _SAFE_ID.sub("_", str(fid).lower())[:32] or "finding"


def _safe_sha(sha: Any) -> str:
    s = str(sha).lower()[:12]
    return s if len(s) == 12 and _HEX.match(s) else "-"


def ascii_text(text: str) -> str:
    """Printable ASCII only: CR, LF, TAB -> space, others -> '?', spaces collapsed."""
    out = []
    for ch in text:
        o = ord(ch)
        if ch in "\r\n\t\v\f":
            out.append(" ")
        elif 0x20 <= o < 0x7F:
            out.append(ch)
        else:
            out.append("?")
    return re.sub(r" {2,}", " ", "".join(out)).strip()


def clip(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` characters, ending in ``...`` when cut."""
    return text if len(text) <= limit else text[: limit - 3] + "..."


def smtp_reply_text(text: str, limit: int = MAX_REPLY_TEXT) -> str:
    """Reply text for libmilter's setreply: ASCII, one line, bounded, ``%`` doubled."""
    return clip(ascii_text(text), limit).replace("%", "%%")


def fill_template(template: str, values: dict[str, str]) -> str:
    """Fill a validated template; a template that fails anyway gives the default text."""
    out = []
    try:
        for lit, fname, _spec, _conv in string.Formatter().parse(template):
            out.append(lit)
            if fname is not None:
                out.append(values.get(fname, ""))
    except ValueError:
        return fill_template(DEFAULT_REJECT_TEXT, values)
    return "".join(out)


def _fold_line(name: str, text: str) -> str:
    """Fold ``text`` (one line) for header ``name``: a newline goes before a space near
    :data:`HEADER_LINE` columns, so unfolding (removing the newlines) restores ``text``."""
    words = text.split(" ")
    lines: list[str] = []
    cur = words[0]
    width = HEADER_LINE - len(name) - 2
    for w in words[1:]:
        if len(cur) + 1 + len(w) > width and cur.strip():
            lines.append(cur)
            cur = " " + w
            width = HEADER_LINE
        else:
            cur += " " + w
    lines.append(cur)
    return "\n".join(lines)


def _fold(name: str, items: list[str], limit: int) -> str:
    """``items`` joined with ``"; "`` and folded; at most ``limit`` characters.

    The items that do not fit are summarised as ``+N more``.
    """
    n = len(items)

    def build(k: int) -> str:
        shown = items[:k] + ([f"+{n - k} more"] if k < n else [])
        return _fold_line(name, "; ".join(shown))

    # the largest k whose unfolded length leaves room for folds and the note, then verify
    k, total = 0, 0
    budget = limit - limit // 50 - 16
    while k < n and total + len(items[k]) + 2 <= budget:
        total += len(items[k]) + 2
        k += 1
    value = build(k)
    while len(value) > limit and k > 0:
        k -= 1
        value = build(k)
    return value


def _artifact_entry(o: ArtifactOutcome) -> str:
    verdict = o.verdict if o.verdict in OUTCOME_VERDICTS else ERROR
    entry = f"{safe_name(o.name)} {_safe_sha(o.sha256)} {verdict}"
    if verdict in (SUSPICIOUS, MALICIOUS, CLEAN) and clamp_score(o.score):
        entry += f" score={clamp_score(o.score)}"
    top = sorted(o.findings, key=lambda f: -f.severity)[:MAX_FINDINGS_PER_ARTIFACT]
    if top:
        entry += " (" + ",".join(safe_id(f.id) for f in top) + ")"
    return entry


def names_text(outcomes: Sequence[ArtifactOutcome], limit: int = MAX_NAMES_IN_REASON) -> str:
    """The first ``limit`` artifacts for a reason: safe name and top finding id, then ``+N more``."""
    parts = []
    for o in outcomes[:limit]:
        top = sorted(o.findings, key=lambda f: -f.severity)[:1]
        parts.append(safe_name(o.name, 40) + (f" ({safe_id(top[0].id)})" if top else ""))
    if len(outcomes) > limit:
        parts.append(f"+{len(outcomes) - limit} more")
    return ", ".join(parts)


_ENTRY_ORDER = {MALICIOUS: 0, SUSPICIOUS: 1, PENDING: 2, ERROR: 3, CLEAN: 4}


def report_headers(
    policy: Policy,
    verdict: str,
    score: int,
    outcomes: Sequence[ArtifactOutcome],
    message_findings: Sequence[Finding],
    msg_score: int,
    n_pending: int,
    n_error: int,
    flags: tuple[str, ...] = (),
) -> tuple[tuple[str, str], ...]:
    """The verdict header (``verdict score=N [pending=N] [errors=N] [flags]``) and the folded report
    header (one bounded entry per artifact, the most serious first), named as the policy says."""
    value = f"{verdict} score={score}"
    if n_pending:
        value += f" pending={n_pending}"
    if n_error:
        value += f" errors={n_error}"
    for flag in flags:
        value += f" {flag}"
    entries = []
    if message_findings:
        top = sorted(message_findings, key=lambda f: -f.severity)[:MAX_FINDINGS_PER_ARTIFACT]
        entries.append(f"message score={msg_score} (" + ",".join(safe_id(f.id) for f in top) + ")")
    ordered = sorted(outcomes, key=lambda o: (_ENTRY_ORDER.get(o.verdict, 3), -clamp_score(o.score)))
    entries += [_artifact_entry(o) for o in ordered]
    if not entries:
        entries = ["no files"]
    report = _fold(policy.headers.report, entries, MAX_HEADER_VALUE)
    return ((policy.headers.verdict, value), (policy.headers.report, report))
