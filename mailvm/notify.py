"""Notices about quarantined and held messages, from templates (issue 13 item 6).

Who is told is per recipient domain (``[notify]`` in its policy file, see
:class:`mailvm.policy.NotifyPolicy`): an administrator address, and optionally
each recipient of that domain ("a message to you was quarantined, quote this
id").  The *sender* is never told: mail that mailvm stops is mostly sent with
forged senders, and a notice to them would be backscatter.

The text comes from four templates, ``{event}-{audience}.txt`` for the events
``quarantine`` and ``hold`` and the audiences ``admin`` and ``recipient``.  The
built-in ones live in ``mailvm/notify_templates/``; a file of the same name in
``[notify] template_dir`` replaces one.  A template is a ``Subject:`` line, an
empty line, and the body, with ``string.Template`` placeholders (``$verdict``,
``${id}``...).  :func:`load_templates` checks every template once, at start-up
and by ``mvctl policy check``: an unknown placeholder or a missing subject is a
:class:`~mailvm.config.ConfigError` naming the file.

Every value put into a notice comes from a hostile message: it is made one line
of printable text and bounded (:func:`_line`) and the file list is capped, so a
notice can neither grow without bound nor carry header lines of its own.  A notice
never includes the message or any of its attachments.

Sending is :func:`send_notices`: best effort, off the SMTP transaction's path,
through the local MTA with the null sender ``<>`` (RFC 3834: automatic notices
must not provoke replies or bounce loops); a failure is logged and never affects
the message itself.
"""

from __future__ import annotations

import logging
import os
import re
import string
import unicodedata
from dataclasses import dataclass, field
from datetime import datetime, timezone
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid
from importlib import resources
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from mailvm.config import ConfigError

log = logging.getLogger(__name__)

#: the events a notice is sent for; the action of the same name triggers it
EVENTS = ("quarantine", "hold")
#: who a template is written for
AUDIENCES = ("admin", "recipient")

#: placeholder -> what it holds (docs/policy.md lists the same)
FIELDS: dict[str, str] = {
    "event": "quarantine or hold",
    "id": "the quarantine item id (quarantine) or the Postfix queue id (hold)",
    "queue_id": "the MTA's queue id of the message",
    "domain": "the recipient domain whose policy decided",
    "to": "the address this notice goes to",
    "sender": "the envelope sender (as claimed; it may be forged)",
    "recipients": "the message's envelope recipients (admin notices) or the notified recipient",
    "subject": "the message's Subject header",
    "verdict": "mailvm's verdict (malicious, suspicious...)",
    "score": "the verdict's score",
    "reason": "why the message was stopped",
    "files": "one line per analysed file: name, verdict, SHA-256 (at most 50)",
    "release": "how an administrator releases it (an mvctl command)",
    "host": "the host that stopped the message",
    "date": "when it was stopped (UTC)",
}

MAX_TEMPLATE_BYTES = 16 * 1024
MAX_FIELD = 300  # characters of one value
MAX_FILES = 50
MAX_RECIPIENTS_LISTED = 20

_SUBJECT = re.compile(r"\ASubject:[ \t]*(?P<subject>[^\r\n]*)\r?\n\r?\n", re.IGNORECASE)


@dataclass(frozen=True)
class NoticeTemplate:
    """One parsed template: the subject line and the body, and where they came from."""

    subject: string.Template
    body: string.Template
    source: str


@dataclass(frozen=True)
class NoticeFacts:
    """What happened to one message: every value a template may use (raw, sanitised on render)."""

    event: str
    id: str
    queue_id: str
    domain: str
    sender: str
    recipients: tuple[str, ...]
    subject: str
    verdict: str
    score: int
    reason: str
    files: tuple[tuple[str, str, str], ...] = ()  # (name, verdict, sha256), at most MAX_FILES
    files_total: int = 0  # how many files the message had (more than ``files`` when capped)
    when: float = 0.0
    host: str = ""


@dataclass(frozen=True)
class Notice:
    """One notice to send: to whom, as which audience."""

    to: str
    audience: str
    domain: str


@dataclass(frozen=True)
class DomainNotify:
    """The ``[notify]`` settings of one recipient domain, with that domain's recipients."""

    domain: str
    admin: tuple[str, ...]
    recipients: bool
    events: tuple[str, ...]
    domain_recipients: tuple[str, ...] = field(default=())


# --------------------------------------------------------------------------------------
# Templates
# --------------------------------------------------------------------------------------


def template_name(event: str, audience: str) -> str:
    return f"{event}-{audience}.txt"


def parse_template(text: str, source: str) -> NoticeTemplate:
    """A template from its text; :class:`ConfigError` (naming ``source``) when it is not usable."""
    if len(text.encode("utf-8", "surrogatepass")) > MAX_TEMPLATE_BYTES:
        raise ConfigError(source, "-", f"template larger than {MAX_TEMPLATE_BYTES} bytes")
    m = _SUBJECT.match(text)
    if m is None:
        raise ConfigError(source, "Subject", "a template starts with a 'Subject: ...' line and an empty line")
    subject, body = string.Template(m.group("subject").strip()), string.Template(text[m.end():])
    for part, tmpl in (("Subject", subject), ("body", body)):
        if not tmpl.is_valid():
            raise ConfigError(source, part, "invalid placeholder (write $$ for a literal $)")
        unknown = sorted(set(tmpl.get_identifiers()) - set(FIELDS))
        if unknown:
            raise ConfigError(source, part, f"unknown placeholder(s) {', '.join('$' + u for u in unknown)} "
                                            f"(known: {', '.join('$' + f for f in FIELDS)})")
    if not subject.template:
        raise ConfigError(source, "Subject", "empty subject")
    return NoticeTemplate(subject, body, source)


def load_templates(template_dir: str | os.PathLike[str] | None) -> dict[tuple[str, str], NoticeTemplate]:
    """Every (event, audience) template: the file in ``template_dir`` where there is one, else the
    built-in one.  Raises :class:`ConfigError` naming the first bad file."""
    builtin = resources.files("mailvm") / "notify_templates"
    out: dict[tuple[str, str], NoticeTemplate] = {}
    for event in EVENTS:
        for audience in AUDIENCES:
            name = template_name(event, audience)
            path = Path(template_dir) / name if template_dir else None
            if path is not None and path.is_file():
                try:
                    text = path.read_bytes().decode("utf-8")
                except OSError as exc:
                    raise ConfigError(path, "-", f"cannot read: {exc.strerror}") from None
                except UnicodeDecodeError:
                    raise ConfigError(path, "-", "not UTF-8 text") from None
                out[(event, audience)] = parse_template(text, str(path))
            else:
                out[(event, audience)] = parse_template((builtin / name).read_text("utf-8"),
                                                        f"<built-in {name}>")
    return out


# --------------------------------------------------------------------------------------
# Who is told (pure)
# --------------------------------------------------------------------------------------


def plan_notices(event: str, domains: Sequence[DomainNotify]) -> list[Notice]:
    """The notices for ``event``: each domain's admins, and its own recipients where it asks for
    that.  One notice per address (an admin of two domains gets one; a recipient who is also an
    admin gets the admin notice)."""
    if event not in EVENTS:
        raise ValueError(f"unknown notice event {event!r}")
    seen: dict[str, Notice] = {}
    for d in domains:
        if event not in d.events:
            continue
        for addr in d.admin:
            seen.setdefault(addr.lower(), Notice(addr, "admin", d.domain))
    for d in domains:
        if event not in d.events or not d.recipients:
            continue
        for addr in d.domain_recipients:
            seen.setdefault(addr.lower(), Notice(addr, "recipient", d.domain))
    return list(seen.values())


# --------------------------------------------------------------------------------------
# Rendering (pure)
# --------------------------------------------------------------------------------------


def _line(value: Any, limit: int = MAX_FIELD) -> str:
    """``value`` as one bounded line of printable text: control, format and separator characters
    (CR, LF, bidi overrides, zero-width...) become spaces, runs of spaces one space."""
    text = "" if value is None else str(value)
    text = text[: 4 * limit]
    text = "".join(" " if unicodedata.category(c)[0] in "CZ" else c for c in text)
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def values(facts: NoticeFacts, notice: Notice) -> dict[str, str]:
    """The placeholder values for one notice (every one sanitised and bounded)."""
    if notice.audience == "recipient":
        rcpts = [notice.to]
    else:
        rcpts = list(facts.recipients)
    listed = ", ".join(_line(r, 200) for r in rcpts[:MAX_RECIPIENTS_LISTED])
    if len(rcpts) > MAX_RECIPIENTS_LISTED:
        listed += f" (+{len(rcpts) - MAX_RECIPIENTS_LISTED} more)"
    files = [f"  {_line(n, 80)}  {_line(v, 20)}  {_line(s, 64)}" for n, v, s in facts.files[:MAX_FILES]]
    total = max(facts.files_total, len(facts.files))
    if total > len(files):
        files.append(f"  (+{total - len(files)} more)")
    ident = _line(facts.id, 64)
    release = (f"mvctl quarantine release {ident}" if facts.event == "quarantine"
               else f"mvctl hold release {ident}")
    when = datetime.fromtimestamp(facts.when or 0, timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    return {
        "event": facts.event, "id": ident, "queue_id": _line(facts.queue_id, 64) or "-",
        "domain": _line(facts.domain, 253) or "-", "to": _line(notice.to, 254),
        "sender": _line(facts.sender, 254) or "<>", "recipients": listed,
        "subject": _line(facts.subject) or "(no subject)", "verdict": _line(facts.verdict, 20),
        "score": str(int(facts.score)), "reason": _line(facts.reason) or "-",
        "files": "\n".join(files) if files else "  (none)", "release": release,
        "host": _line(facts.host, 64) or "-", "date": when,
    }


def render(template: NoticeTemplate, facts: NoticeFacts, notice: Notice, from_addr: str) -> bytes:
    """The notice as an RFC 5322 message (UTF-8 where needed), marked auto-generated (RFC 3834)."""
    vals = values(facts, notice)
    msg = EmailMessage()
    msg["From"] = from_addr
    msg["To"] = notice.to
    msg["Subject"] = _line(template.subject.safe_substitute(vals), 200)
    msg["Date"] = format_datetime(datetime.now(timezone.utc))
    msg["Message-ID"] = make_msgid(domain="mailvm.invalid")
    msg["Auto-Submitted"] = "auto-generated"
    body = template.body.safe_substitute(vals)
    msg.set_content(body if body.endswith("\n") else body + "\n")
    return msg.as_bytes()


def facts_from_record(event: str, ident: str, queue_id: str, domain: str, sender: str,
                      recipients: Iterable[str], record: dict[str, Any], when: float, host: str) -> NoticeFacts:
    """:class:`NoticeFacts` from a decision report (:func:`mailvm.policy.decision_report`), whose
    values all came from the message (hostile: types are checked, not assumed)."""
    arts = record.get("artifacts") if isinstance(record.get("artifacts"), list) else []
    files = tuple((str(a.get("name", "")), str(a.get("verdict", "")), str(a.get("sha256", "")))
                  for a in arts[:MAX_FILES] if isinstance(a, dict))
    score = record.get("score", 0)
    return NoticeFacts(
        event=event, id=ident, queue_id=queue_id, domain=domain, sender=sender,
        recipients=tuple(recipients), subject=str(record.get("subject", "")),
        verdict=str(record.get("verdict", "")), score=score if isinstance(score, int) else 0,
        reason=str(record.get("reason", "")), files=files, files_total=len(arts), when=when, host=host)


# --------------------------------------------------------------------------------------
# Sending
# --------------------------------------------------------------------------------------

Deliver = Callable[[bytes, str, list[str]], None]


def send_notices(templates: dict[tuple[str, str], NoticeTemplate], facts: NoticeFacts,
                 notices: Sequence[Notice], deliver: Deliver, from_addr: str) -> int:
    """Send each notice with the null sender; returns how many the MTA took.  Never raises."""
    sent = 0
    for n in notices:
        try:
            raw = render(templates[(facts.event, n.audience)], facts, n, from_addr)
            deliver(raw, "", [n.to])
            sent += 1
            log.info("%s %s: notice sent to %s (%s of %s)", facts.event, _line(facts.id, 64), n.to,
                     n.audience, n.domain or "default")
        except Exception as exc:  # a failed notice never affects the message itself
            log.warning("%s %s: notice to %s failed: %s", facts.event, _line(facts.id, 64), n.to, exc)
    return sent


__all__ = [
    "AUDIENCES",
    "EVENTS",
    "FIELDS",
    "DomainNotify",
    "Notice",
    "NoticeFacts",
    "NoticeTemplate",
    "facts_from_record",
    "load_templates",
    "parse_template",
    "plan_notices",
    "render",
    "send_notices",
]
