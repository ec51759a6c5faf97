"""Per-key value checks of a policy, beyond the types and bounds the dataclasses declare.

:data:`VALUE_CHECKS` maps a dotted key to a function that returns the problem with a
value (or None); :mod:`mailvm.policy.load` runs it after the type check and turns the
problem into a :class:`~mailvm.config.ConfigError` naming the file and the key.
"""

from __future__ import annotations

import ipaddress
import re
import string
from typing import Any, Callable

from mailvm.kinds import KINDS, kinds_problem
from mailvm.policy.domains import normalize_domain
from mailvm.policy.model import (
    ACTIONS,
    ALLOWED_ACTIONS,
    BYPASS_SKIPS,
    NOT_EXECUTED_VERDICTS,
    NOTIFY_EVENTS,
    SITUATIONS,
    TRIAGE_KINDS,
)
from mailvm.release import RELEASE_HEADER

#: a policy may not name its headers like the release header (mailvm.release) or
#: like headers the message structure depends on
_RESERVED_HEADERS = frozenset(
    h.lower()
    for h in (
        RELEASE_HEADER, "From", "To", "Cc", "Bcc", "Subject", "Date", "Message-ID", "Received",
        "Return-Path", "Sender", "Reply-To", "MIME-Version", "Content-Type",
        "Content-Transfer-Encoding", "Content-Disposition", "DKIM-Signature", "ARC-Seal",
        "ARC-Message-Signature", "ARC-Authentication-Results", "Authentication-Results",
    )
)

MAX_TEMPLATE = 300

_FIELD_NAME = re.compile(r"^[\x21-\x39\x3b-\x7e]{1,76}$")  # RFC 5322 ftext: printable ASCII but ':'
_TEMPLATE_FIELDS = frozenset({"verdict", "score", "reason", "names", "action"})
_ADDR = re.compile(r"^[^\s<>(),;:\\\"@\[\]]{1,64}@[a-z0-9.-]{1,253}$", re.IGNORECASE)


def header_name_problem(name: str) -> str | None:
    """Why ``name`` cannot be a header name we add, or None."""
    if not _FIELD_NAME.match(name):
        return "not an RFC 5322 header field name (1-76 printable ASCII characters, no ':' or space)"
    if name.lower() in _RESERVED_HEADERS:
        return f"{name!r} is reserved (message structure or the release header)"
    return None


def template_problem(text: str) -> str | None:
    """Why ``text`` cannot be a reply template, or None."""
    if len(text) > MAX_TEMPLATE:
        return f"longer than {MAX_TEMPLATE} characters"
    if any(not 0x20 <= ord(c) < 0x7F for c in text):
        return "only printable ASCII is allowed in an SMTP reply (no control characters or newlines)"
    try:
        parts = list(string.Formatter().parse(text))
    except ValueError as exc:
        return f"bad template: {exc} (write {{{{ and }}}} for literal braces)"
    for _lit, fname, spec, conv in parts:
        if fname is None:
            continue
        if fname not in _TEMPLATE_FIELDS or spec or conv:
            return f"unknown placeholder {{{fname}}} (known: {', '.join('{%s}' % f for f in sorted(_TEMPLATE_FIELDS))})"
    return None


def address_problem(addr: str) -> str | None:
    if addr == "":
        return None
    if not _ADDR.match(addr) or ".." in addr.split("@", 1)[1]:
        return "must be an e-mail address (local@domain) or empty"
    return None


def _addresses_check(value: list[str]) -> str | None:
    if len(value) > 20:
        return "at most 20 addresses"
    for addr in value:
        if not addr or address_problem(addr):
            return f"{addr!r} is not an e-mail address (local@domain)"
    return None


def _events_check(value: list[str]) -> str | None:
    bad = [v for v in value if v not in NOTIFY_EVENTS]
    if bad:
        return f"unknown event(s) {', '.join(map(repr, bad))} (known: {', '.join(NOTIFY_EVENTS)})"
    return None


def _action_check(situation: str) -> Callable[[Any], str | None]:
    def check(value: Any) -> str | None:
        allowed = ALLOWED_ACTIONS[situation]
        if value not in allowed:
            if value in ACTIONS:
                return f"{value!r} is not allowed for {situation} (allowed: {', '.join(allowed)})"
            return f"unknown action {value!r} (allowed for {situation}: {', '.join(allowed)})"
        return None

    return check


def _kinds_check(value: list[str]) -> str | None:
    return kinds_problem(value, TRIAGE_KINDS)


_TYPE_NAME = re.compile(r"^[a-z0-9][a-z0-9_+-]{0,15}$")


def _blocked_types_check(value: list[str]) -> str | None:
    if len(value) > 300:
        return "at most 300 types"
    bad = [t for t in value if not _TYPE_NAME.match(t)]
    if bad:
        return (f"{', '.join(map(repr, bad[:5]))}: a type is a lower-case extension without the dot "
                f"(exe, js, docm) or a kind ({', '.join(KINDS)})")
    return None


def _choice_check(allowed: tuple[str, ...]) -> Callable[[Any], str | None]:
    def check(value: Any) -> str | None:
        return None if value in allowed else f"must be one of {', '.join(allowed)} (got {value!r})"

    return check


def _networks_check(value: list[str]) -> str | None:
    for v in value:
        try:
            ipaddress.ip_network(v, strict=False)
        except ValueError:
            return f"{v!r} is not an IP network (CIDR)"
    return None


def _senders_check(value: list[str]) -> str | None:
    for v in value:
        if v.startswith("@"):
            if normalize_domain(v[1:]) is None:
                return f"{v!r} is not @domain"
        elif address_problem(v) or not v:
            return f"{v!r} is not user@domain or @domain"
    return None


def _auth_users_check(value: list[str]) -> str | None:
    if any(not u or len(u) > 256 or any(c in u for c in "\r\n\0") for u in value):
        return "user names must be 1-256 characters on one line"
    return None


def _passwords_check(value: list[str]) -> str | None:
    if len(value) > 100:
        return "at most 100 passwords"
    if any(not p or len(p) > 256 for p in value):
        return "passwords must be 1-256 characters"
    return None


#: dotted key -> extra check (returns a problem or None); run after the type check
VALUE_CHECKS: dict[str, Callable[[Any], str | None]] = {
    **{f"actions.{s}": _action_check(s) for s in SITUATIONS},
    "detonate_kinds": _kinds_check,
    "blocked_types": _blocked_types_check,
    "not_executed": _choice_check(NOT_EXECUTED_VERDICTS),
    "bypass.networks": _networks_check,
    "bypass.senders": _senders_check,
    "bypass.auth_users": _auth_users_check,
    "bypass.skip": _choice_check(BYPASS_SKIPS),
    "archive_passwords": _passwords_check,
    "headers.verdict": header_name_problem,
    "headers.report": header_name_problem,
    "reject_text": template_problem,
    "tempfail_text": template_problem,
    "quarantine.notify": address_problem,
    "notify.admin": _addresses_check,
    "notify.events": _events_check,
}
