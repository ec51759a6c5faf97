"""Per-recipient-domain policy: the typed model, its loading, and ``decide()``.

Two parts live here, and only these two:

* **The policy model and its files.**  Global defaults come from the ``[policy]``
  table of ``mailvm.toml``; ``policy.d/<domain>.toml`` holds partial policies per
  recipient domain, merged key by key over the global defaults.  A lookup falls
  back through parent domains (``a.b.example.com`` -> ``b.example.com`` ->
  ``example.com`` -> ``com`` -> the default).  Unknown keys and bad values are
  :class:`~mailvm.config.ConfigError` naming the file and the key;
  :func:`check_policy_dir` collects every problem of a directory at once.

* **decide()**: one pure function (no I/O, no clock, no globals changed) from a
  policy and what the pipeline knows about each artifact to a :class:`Decision`:
  the action, the SMTP reply for refusals, the parts to strip and the headers to
  add.  :func:`decide_for_recipients` lets each recipient domain decide and keeps
  the strictest action (order in :data:`ACTIONS`).

The rules of ``decide()`` are documented in ``docs/policy.md`` (the decision
table) and on the function itself.  Everything that reaches a header or an SMTP
reply from a message (file names, finding ids) is sanitised and bounded here.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import string
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import ipaddress

from mailvm.config import ConfigError, build_section
from mailvm.job import AnalysisSettings  # the contract lives in mailvm.job (re-exported here)
from mailvm.kinds import DETONATE_KINDS, KINDS, kinds_problem
from mailvm.release import RELEASE_HEADER
from mailvm.verdict import CLEAN, ERROR, MALICIOUS, PENDING, SUSPICIOUS, Finding, score_findings


log = logging.getLogger(__name__)

# --------------------------------------------------------------------------------------
# Actions, verdicts, replies
# --------------------------------------------------------------------------------------

ACCEPT = "accept"  # deliver unchanged, no headers
TAG = "tag"  # deliver with the verdict and report headers
STRIP = "strip"  # remove the offending MIME parts, deliver the rest with headers
HOLD = "hold"  # Postfix hold queue (milter quarantine()); released with postsuper -H
QUARANTINE = "quarantine"  # copy into mailvm's quarantine store, then discard from the MTA
TEMPFAIL = "tempfail"  # 4xx: the sender retries later
REJECT = "reject"  # 5xx: the sender gets a bounce
DISCARD = "discard"  # accept and drop silently

#: every action, from the least to the most strict; several recipient domains ->
#: the action with the highest index wins (see :func:`decide_for_recipients`)
ACTIONS: tuple[str, ...] = (ACCEPT, TAG, STRIP, HOLD, QUARANTINE, TEMPFAIL, REJECT, DISCARD)
ACTION_RANK: dict[str, int] = {a: i for i, a in enumerate(ACTIONS)}
#: actions after which the message (or what is left of it) reaches the recipient now
DELIVERING_ACTIONS = frozenset({ACCEPT, TAG, STRIP})
#: actions whose delivered (or held/stored) message carries the mailvm headers
HEADER_ACTIONS = frozenset({TAG, STRIP, HOLD, QUARANTINE})

#: verdict situations that have an action key (``actions.<situation>``)
TIMEOUT = "timeout"
#: policy dimensions that are not verdicts: a file type the domain refuses whatever it does,
#: content that a limit kept from being analysed, content that could not be decrypted
BLOCKED = "blocked"
UNCHECKED = "unchecked"
ENCRYPTED = "encrypted"
SITUATIONS: tuple[str, ...] = (CLEAN, SUSPICIOUS, MALICIOUS, TIMEOUT, ERROR, BLOCKED, UNCHECKED, ENCRYPTED)

#: which actions each situation may use.  ``strip`` needs offending parts, so it is
#: only for suspicious/malicious.  A timeout or an error says nothing about the
#: message itself, so only actions that lose nothing are allowed there (no
#: reject, discard or strip: "a message is never lost").  Delivering malware with
#: no mark at all (``accept`` for malicious) is refused; ``tag`` is the monitor mode.
ALLOWED_ACTIONS: dict[str, tuple[str, ...]] = {
    CLEAN: (ACCEPT, TAG, HOLD, QUARANTINE),
    SUSPICIOUS: (ACCEPT, TAG, STRIP, HOLD, QUARANTINE, TEMPFAIL, REJECT, DISCARD),
    MALICIOUS: (TAG, STRIP, HOLD, QUARANTINE, TEMPFAIL, REJECT, DISCARD),
    TIMEOUT: (ACCEPT, TAG, HOLD, QUARANTINE, TEMPFAIL),
    ERROR: (ACCEPT, TAG, HOLD, QUARANTINE, TEMPFAIL),
    # an administrator's choice about a type: delivering it unmarked would make the list pointless
    BLOCKED: (TAG, STRIP, HOLD, QUARANTINE, REJECT, DISCARD),
    # unanalysed content is never delivered silently (tag marks it, for monitor mode); strip is
    # not offered: the unchecked part may be the whole message
    UNCHECKED: (TAG, HOLD, QUARANTINE, TEMPFAIL, REJECT, DISCARD),
    ENCRYPTED: (TAG, HOLD, QUARANTINE, REJECT, DISCARD),
}

#: finding ids that say extraction or analysis stopped at a limit, so part of the content was
#: never looked at (see :func:`unchecked_findings`); links are not message content, so a link
#: limit is not one of them
UNCHECKED_IDS = frozenset({"message_truncated", "file_truncated", "scan_truncated"})
UNCHECKED_SUFFIX = "_limit_exceeded"
NOT_UNCHECKED_PREFIXES = ("link_", "doc_link")
#: finding ids that say content could not be decrypted (so it was never analysed)
ENCRYPTED_IDS = frozenset({"encrypted_archive_unopened", "office_encrypted"})
#: the finding id of a file that should have run in a sandbox and did not (CONTRACTS C1)
NOT_EXECUTED_ID = "not_executed"
#: what ``not_executed`` may raise a never-run file to
NOT_EXECUTED_VERDICTS = (CLEAN, SUSPICIOUS, MALICIOUS)
#: not_executed reasons that say nothing about the file: it is built for a platform neither the
#: sandbox nor the desktops mailvm protects run (an ARM64 Windows program), or it is not a script
#: Windows Script Host can parse (a Node.js module named .js would not run on a desktop either);
#: its static verdict stands
NOT_EXECUTED_EXEMPT = ("unsupported architecture", "bad format: the script host could not parse")
BYPASS_SKIPS = ("detonation", "scan")

#: SMTP replies: (basic code, enhanced status code, RFC 3463)
REPLY_REJECT: tuple[str, str] = ("550", "5.7.1")  # delivery not authorized, message refused
REPLY_TEMPFAIL: tuple[str, str] = ("451", "4.7.1")  # analysis not finished / failed: try later
REPLY_INTERNAL: tuple[str, str] = ("451", "4.3.0")  # mailvm itself failed (fail_open = false)

#: the message verdict in a :class:`Decision`, from the least to the most serious
DECISION_VERDICTS: tuple[str, ...] = (CLEAN, ERROR, TIMEOUT, SUSPICIOUS, MALICIOUS)
_DECISION_RANK = {v: i for i, v in enumerate(DECISION_VERDICTS)}
#: what an :class:`ArtifactOutcome` may say
OUTCOME_VERDICTS: tuple[str, ...] = (CLEAN, SUSPICIOUS, MALICIOUS, ERROR, PENDING)

#: triage kinds that ``detonate_kinds`` may name (one list: mailvm.kinds; the pool config uses it too)
TRIAGE_KINDS: tuple[str, ...] = DETONATE_KINDS

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

# Bounds on what decide() emits.
MAX_REPLY_TEXT = 200  # characters of SMTP reply text before %-escaping (<= 400 after)
MAX_REASON = 300
MAX_HEADER_VALUE = 900  # report header value, folding included
HEADER_LINE = 76  # fold report header lines at about this width
MAX_NAME_IN_HEADER = 60
MAX_FINDINGS_PER_ARTIFACT = 3
MAX_NAMES_IN_REASON = 3
MAX_TEMPLATE = 300

# --------------------------------------------------------------------------------------
# The policy model
# --------------------------------------------------------------------------------------


def _opt(default: Any, lo: float | None = None, hi: float | None = None, doc: str = "") -> Any:
    """A dataclass field with the bounds metadata :func:`mailvm.config.build_section` checks."""
    meta = {"min": lo, "max": hi, "doc": doc}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class ActionsPolicy:
    """The action for each verdict situation (``[actions]``)."""

    clean: str = _opt(TAG, doc="every artifact clean (or none at all)")
    suspicious: str = _opt(TAG, doc="worst known verdict suspicious")
    malicious: str = _opt(REJECT, doc="any artifact or the message malicious")
    timeout: str = _opt(TEMPFAIL, doc="an artifact still unanalysed when max_wait_s ran out")
    error: str = _opt(TEMPFAIL, doc="an artifact whose analysis failed")
    blocked: str = _opt(REJECT, doc="a file whose type is in blocked_types (whatever its verdict)")
    unchecked: str = _opt(REJECT, doc="content a limit kept from being analysed (archive bomb, depth, size)")
    encrypted: str = _opt(QUARANTINE, doc="an archive or document no known password opened")


@dataclass
class LinksPolicy:
    """Downloading the files behind links (``[links]``); capped by the global ``[links]``."""

    enabled: bool = _opt(True, doc="download and analyse files behind links")
    max_links: int = _opt(10, 0, 1000, "links followed per message")
    max_bytes: int = _opt(16 * 1024 * 1024, 1, 1024 * 1024 * 1024, "bytes kept per download")


@dataclass
class QuarantinePolicy:
    """The quarantine store (``[quarantine]``)."""

    notify: str = _opt("", doc="address told about each quarantined message, or empty (same as notify.admin "
                               "for the quarantine event)")
    retention_days: int = _opt(30, 1, 3650, "days a quarantined message is kept")


#: events a notice can be sent for (mailvm.notify.EVENTS; kept here to validate without importing it)
NOTIFY_EVENTS = ("quarantine", "hold")


@dataclass
class NotifyPolicy:
    """Notices about quarantined and held messages (``[notify]``; texts from mailvm.notify's templates).

    The sender is never notified (backscatter: stopped mail mostly has a forged sender).
    """

    admin: list[str] = _opt([], doc="addresses told about each message quarantined or held for this domain")
    recipients: bool = _opt(False, doc="also tell each recipient of this domain (never the sender)")
    events: list[str] = _opt(list(NOTIFY_EVENTS), doc="which actions send notices: quarantine, hold")


@dataclass
class BypassPolicy:
    """Who skips analysis (``[bypass]``): trusted networks, authenticated senders, sender addresses.

    A bypass applies only when every recipient domain of the message grants it;
    each one is logged with its reason.
    """

    networks: list[str] = _opt([], doc="client networks (CIDR) whose mail skips analysis")
    authenticated: bool = _opt(False, doc="any SMTP-AUTH user ({auth_authen}) skips analysis")
    auth_users: list[str] = _opt([], doc="these SMTP-AUTH user names skip analysis")
    senders: list[str] = _opt([], doc="envelope senders (user@domain) or whole domains (@domain) that skip analysis")
    skip: str = _opt("detonation", doc="what a bypass skips: detonation (static analysis still runs) or scan (all)")


@dataclass
class HeadersPolicy:
    """Names of the headers added to delivered messages (``[headers]``)."""

    verdict: str = _opt("X-Mailvm-Verdict", doc="verdict header name")
    report: str = _opt("X-Mailvm-Report", doc="per-artifact report header name")


DEFAULT_REJECT_TEXT = "mailvm: message refused ({reason})"
DEFAULT_TEMPFAIL_TEXT = "mailvm: message not analysed yet ({verdict}), please try again later"


@dataclass
class Policy:
    """The full policy for one recipient domain (or the default).

    Treat instances as read-only: they are shared between milter threads.
    """

    max_wait_s: float = _opt(120.0, 1, 600, "seconds the milter waits for verdicts before actions.timeout")
    detonate: bool = _opt(True, doc="run unseen files of detonate_kinds in a VM")
    detonate_kinds: list[str] = _opt(list(TRIAGE_KINDS), doc="triage kinds that are detonated ([] for none)")
    archive_passwords: list[str] = _opt([], doc="passwords tried on encrypted archives (besides the global ones)")
    reject_text: str = _opt(DEFAULT_REJECT_TEXT, doc="SMTP reply text for reject (template)")
    tempfail_text: str = _opt(DEFAULT_TEMPFAIL_TEXT, doc="SMTP reply text for tempfail (template)")
    fail_open: bool = _opt(False, doc="mailvm itself failed: deliver marked (true) or tempfail (false)")
    not_executed: str = _opt(SUSPICIOUS, doc="verdict at least given to a file that should have run and did not")
    blocked_types: list[str] = _opt([], doc="file types refused whatever they do: extensions (exe) or kinds (executable)")
    actions: ActionsPolicy = field(default_factory=ActionsPolicy)
    links: LinksPolicy = field(default_factory=LinksPolicy)
    quarantine: QuarantinePolicy = field(default_factory=QuarantinePolicy)
    headers: HeadersPolicy = field(default_factory=HeadersPolicy)
    bypass: BypassPolicy = field(default_factory=BypassPolicy)
    notify: NotifyPolicy = field(default_factory=NotifyPolicy)
    #: not a key: why this domain's file could not be used ("" when it is fine); such a
    #: policy defers every message (see :func:`decide`)
    error: str = field(default="", metadata={"internal": True})
    #: not a key: which policy this is ("default" or the domain of its file) and the files it came from
    name: str = field(default="default", metadata={"internal": True})
    source: str = field(default="<defaults>", metadata={"internal": True})

    def action_for(self, situation: str) -> str:
        return getattr(self.actions, situation)


#: the explicit registry of nested tables: key -> dataclass
TABLES: dict[str, type] = {
    "actions": ActionsPolicy,
    "links": LinksPolicy,
    "quarantine": QuarantinePolicy,
    "headers": HeadersPolicy,
    "bypass": BypassPolicy,
    "notify": NotifyPolicy,
}
#: top-level scalar/list keys of a policy
SCALAR_KEYS: tuple[str, ...] = tuple(
    f.name for f in dataclasses.fields(Policy) if f.name not in TABLES and not f.metadata.get("internal")
)


def policy_keys() -> list[str]:
    """Every key a policy file may set, dotted (``actions.malicious``), in declaration order."""
    keys = list(SCALAR_KEYS)
    for table, cls in TABLES.items():
        keys += [f"{table}.{f.name}" for f in dataclasses.fields(cls)]
    return keys


def key_doc(key: str) -> tuple[str, Any, str]:
    """``(type, default, meaning)`` of a dotted key, read from the dataclass fields."""
    if "." in key:
        table, name = key.split(".", 1)
        cls = TABLES[table]
    else:
        cls, name = Policy, key
    f = {f.name: f for f in dataclasses.fields(cls)}[name]
    default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
    return str(f.type), default, f.metadata.get("doc", "")


# --------------------------------------------------------------------------------------
# Value checks beyond types and bounds
# --------------------------------------------------------------------------------------

_FIELD_NAME = re.compile(r"^[\x21-\x39\x3b-\x7e]{1,76}$")  # RFC 5322 ftext: printable ASCII but ':'
_TEMPLATE_FIELDS = frozenset({"verdict", "score", "reason", "names", "action"})
_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")
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


# --------------------------------------------------------------------------------------
# Domains
# --------------------------------------------------------------------------------------


def normalize_domain(domain: str) -> str | None:
    """Lower-case ASCII (IDNA A-label) form of ``domain``, or None when it is not a domain."""
    if not isinstance(domain, str):
        return None
    d = domain.strip().rstrip(".").lower()
    if not d or len(d) > 253:
        return None
    if not d.isascii():
        try:
            d = d.encode("idna").decode("ascii")
        except (UnicodeError, ValueError):
            return None
    labels = d.split(".")
    if not all(_LABEL.match(label) for label in labels):
        return None
    for label in labels:
        if label.startswith("xn--"):
            try:
                label.encode("ascii").decode("idna")
            except (UnicodeError, ValueError):
                return None
    return d


def recipient_domain(rcpt: str) -> str | None:
    """The normalised domain of an envelope recipient (``<User@Example.COM>``), or None."""
    if not isinstance(rcpt, str):
        return None
    addr = rcpt.strip()
    if addr.startswith("<") and addr.endswith(">"):
        addr = addr[1:-1]
    if ":" in addr and addr.startswith("@"):  # source route @a,@b:user@domain
        addr = addr.split(":", 1)[1]
    if "@" not in addr:
        return None
    return normalize_domain(addr.rsplit("@", 1)[1])


def parent_domains(domain: str) -> list[str]:
    """``a.b.example.com`` -> ``[a.b.example.com, b.example.com, example.com, com]``."""
    labels = domain.split(".")
    return [".".join(labels[i:]) for i in range(len(labels))]


# --------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------

MAX_POLICY_FILE = 1024 * 1024
DEFAULT_POLICY_DIR = "/etc/mailvm/policy.d"


def _set_key(
    obj: Any, cls: type, key: str, value: Any, file: str, prefix: str, check_key: str, errors: list[ConfigError]
) -> Any:
    """A copy of ``obj`` with one key set, or ``obj`` unchanged and the problem recorded.

    ``prefix`` is how the key's table is spelled in error messages (``policy.actions``),
    ``check_key`` the dotted key in :data:`VALUE_CHECKS` (``actions.malicious``).
    """
    try:
        new = build_section(cls, {key: value}, file, prefix, base=obj)
    except ConfigError as exc:
        errors.append(exc)
        return obj
    check = VALUE_CHECKS.get(check_key)
    problem = check(getattr(new, key)) if check else None
    if problem:
        errors.append(ConfigError(file, f"{prefix}.{key}" if prefix else key, problem))
        return obj
    return new


def parse_policy(
    data: Any, file: str, base: Policy | None = None, prefix: str = "", errors: list[ConfigError] | None = None
) -> Policy:
    """Build a :class:`Policy` from a TOML table over ``base`` (or the built-in defaults).

    With ``errors`` given, problems are appended and the bad keys keep their base
    value; without it, the first problem is raised.
    """
    collect: list[ConfigError] = [] if errors is None else errors
    before = len(collect)
    pol = dataclasses.replace(base) if base is not None else Policy()
    pol.source = file if base is None or base.source == "<defaults>" else f"{base.source} + {file}"
    dot = f"{prefix}." if prefix else ""
    if not isinstance(data, dict):
        collect.append(ConfigError(file, prefix or "-", "must be a table"))
    else:
        known = sorted(SCALAR_KEYS + tuple(TABLES))
        for key, value in data.items():
            if key in TABLES:
                cls = TABLES[key]
                if not isinstance(value, dict):
                    collect.append(ConfigError(file, f"{dot}{key}", "must be a table"))
                    continue
                sub = getattr(pol, key)
                for subkey, subvalue in value.items():
                    sub = _set_key(sub, cls, subkey, subvalue, file, f"{dot}{key}", f"{key}.{subkey}", collect)
                setattr(pol, key, sub)
            elif key in SCALAR_KEYS:
                pol = _set_key(pol, Policy, key, value, file, prefix, key, collect)
            else:
                collect.append(ConfigError(file, f"{dot}{key}", f"unknown key (known: {', '.join(known)})"))
        if pol.headers.verdict.lower() == pol.headers.report.lower():
            collect.append(ConfigError(file, f"{dot}headers.report", "must differ from headers.verdict"))
    if errors is None and len(collect) > before:
        raise collect[before]
    return pol


def _read_toml(path: Path, errors: list[ConfigError]) -> dict[str, Any] | None:
    try:
        with open(path, "rb") as fh:
            raw = fh.read(MAX_POLICY_FILE + 1)
    except OSError as exc:
        errors.append(ConfigError(path, "-", f"cannot read: {exc.strerror}"))
        return None
    if len(raw) > MAX_POLICY_FILE:
        errors.append(ConfigError(path, "-", f"larger than {MAX_POLICY_FILE} bytes"))
        return None
    try:
        return tomllib.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        errors.append(ConfigError(path, "-", f"not valid TOML: {exc}"))
        return None


@dataclass
class PolicySet:
    """The default policy plus one merged policy per configured domain."""

    default: Policy = field(default_factory=Policy)
    domains: dict[str, Policy] = field(default_factory=dict)
    #: domain -> the first problem of its policy file, for the domains whose file could not be used
    broken: dict[str, str] = field(default_factory=dict)

    def for_domain(self, domain: str) -> Policy:
        """The policy of ``domain``, falling back through its parent domains to the default."""
        d = normalize_domain(domain)
        if d is None:
            return self.default
        for candidate in parent_domains(d):
            pol = self.domains.get(candidate)
            if pol is not None:
                return pol
        return self.default

    def for_recipients(self, rcpts: Iterable[str]) -> list[tuple[str, Policy]]:
        """``(recipient domain, policy)`` once per distinct domain, in first-seen order.

        A recipient without a usable domain maps to ``("", default policy)``.
        """
        seen: dict[str, Policy] = {}
        for rcpt in rcpts:
            d = recipient_domain(rcpt) or ""
            if d not in seen:
                seen[d] = self.for_domain(d) if d else self.default
        return list(seen.items())


def _policy_files(policy_dir: Path, errors: list[ConfigError]) -> list[tuple[str, Path]]:
    try:
        names = sorted(os.listdir(policy_dir))
    except OSError as exc:
        errors.append(ConfigError(policy_dir, "-", f"cannot read directory: {exc.strerror}"))
        return []
    result = []
    for name in names:
        path = policy_dir / name
        if name.startswith(".") or not name.endswith(".toml"):
            log.debug("policy.d: ignoring %s (not <domain>.toml)", path)
            continue
        stem = name[: -len(".toml")]
        if normalize_domain(stem) != stem:
            errors.append(
                ConfigError(path, "-", "file name must be <domain>.toml with the domain in lower-case IDNA (A-label) form")
            )
            continue
        if not path.is_file():
            errors.append(ConfigError(path, "-", "not a regular file"))
            continue
        result.append((stem, path))
    return result


def _load(global_path: str | os.PathLike[str] | None, policy_dir: str | os.PathLike[str] | None,
          errors: list[ConfigError], domain_errors: dict[str, ConfigError] | None = None) -> PolicySet:
    """Load everything; problems go to ``errors``, and with ``domain_errors`` the first problem
    of each domain's own file also goes there (keyed by domain), so a caller can set that domain
    aside and use the others."""
    default = Policy()
    if global_path is not None:
        gpath = Path(global_path)
        data = _read_toml(gpath, errors)
        if data is not None and "policy" in data:
            default = parse_policy(data["policy"], str(gpath), prefix="policy", errors=errors)
            default.source = str(gpath)
    pset = PolicySet(default=default)
    if policy_dir is not None:
        for domain, path in _policy_files(Path(policy_dir), errors):
            before = len(errors)
            data = _read_toml(path, errors)
            if data is not None:
                pol = parse_policy(data, str(path), base=default, errors=errors)
                pol.name = domain
                pset.domains[domain] = pol
            if domain_errors is not None and len(errors) > before:
                domain_errors[domain] = errors[before]
    return pset


def load_policies(global_toml_path: str | os.PathLike[str] | None, policy_dir: str | os.PathLike[str] | None,
                  previous: PolicySet | None = None) -> PolicySet:
    """Read the ``[policy]`` table of the global file and every ``policy.d/<domain>.toml``.

    Either path may be None (built-in defaults / no domain policies).  A problem in
    the global file, or in the directory itself, raises the first
    :class:`ConfigError` (the default policy is everybody's fallback: without it
    nothing can be decided).  A problem in *one domain's* file does not stop the
    others: that domain keeps its policy from ``previous`` (the last good set, on
    a reload) when there is one, and otherwise gets a *broken* policy whose
    :func:`decide` defers every message (451) with the file, key and problem in
    the reason; :attr:`PolicySet.broken` lists them and each is logged as an error.
    :func:`check_policy_dir` lists every problem.
    """
    errors: list[ConfigError] = []
    domain_errors: dict[str, ConfigError] = {}
    pset = _load(global_toml_path, policy_dir, errors, domain_errors)
    gfile = str(global_toml_path) if global_toml_path is not None else None
    dfile = str(policy_dir) if policy_dir is not None else None
    fatal = [e for e in errors if e.file in (gfile, dfile)]
    if fatal:
        raise fatal[0]
    for err in errors:
        if err in domain_errors.values() or err.file in (gfile, dfile):
            continue
        # a file in policy.d that is not <domain>.toml: the domain it seems meant for (if any) is deferred
        stem = Path(err.file).name.removesuffix(".toml")
        meant = normalize_domain(stem)
        if meant is not None and meant not in domain_errors:
            domain_errors[meant] = err
        else:
            log.error("policy.d: ignoring %s", err)
    for domain, err in domain_errors.items():
        kept = previous.domains.get(domain) if previous is not None else None
        if kept is not None and not kept.error:
            pset.domains[domain] = kept
            log.error("policy for %s is invalid, keeping its last good policy: %s", domain, err)
            continue
        broken = dataclasses.replace(pset.default, name=domain, source=str(err.file),
                                     error=_clip(_ascii_text(str(err)), MAX_REASON))
        pset.domains[domain] = broken
        pset.broken[domain] = str(err)
        log.error("policy for %s is invalid: its mail is deferred (451) until the file is fixed: %s", domain, err)
    return pset


def check_policy_dir(global_path: str | os.PathLike[str] | None, policy_dir: str | os.PathLike[str] | None) -> list[ConfigError]:
    """Every problem of the global ``[policy]`` table and of the policy directory (for ``mvctl policy check``)."""
    errors: list[ConfigError] = []
    _load(global_path, policy_dir, errors)
    return errors


# --------------------------------------------------------------------------------------
# Combining policies for the analysis (what to detonate, how long to wait)
# --------------------------------------------------------------------------------------


def analysis_settings(policies: Sequence[Policy]) -> AnalysisSettings:
    pols = list(policies) or [Policy()]
    kinds: list[str] = []
    passwords: list[str] = []
    for p in pols:
        if p.detonate:
            kinds += [k for k in p.detonate_kinds if k not in kinds]
        passwords += [pw for pw in p.archive_passwords if pw not in passwords]
    links = [p.links for p in pols if p.links.enabled]
    return AnalysisSettings(
        max_wait_s=max(p.max_wait_s for p in pols),
        detonate=any(p.detonate for p in pols),
        detonate_kinds=tuple(kinds),
        links_enabled=bool(links),
        max_links=max((lk.max_links for lk in links), default=0),
        max_link_bytes=max((lk.max_bytes for lk in links), default=0),
        archive_passwords=tuple(passwords),
    )


# --------------------------------------------------------------------------------------
# Bypass (allow-lists)
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ClientInfo:
    """Who sent the message, as the MTA told the milter (all hostile text, only compared)."""

    ip: str = ""
    name: str = ""
    helo: str = ""
    auth_user: str = ""
    sender: str = ""


def bypass_reason(policy: Policy, client: ClientInfo) -> str:
    """Why ``policy`` lets this client skip analysis ("" when it does not)."""
    b = policy.bypass
    if client.ip and b.networks:
        try:
            addr = ipaddress.ip_address(client.ip.strip("[]").removeprefix("IPv6:"))
        except ValueError:
            addr = None
        if addr is not None:
            for net in b.networks:
                network = ipaddress.ip_network(net, strict=False)
                if addr.version == network.version and addr in network:
                    return f"client {addr} in {network}"
    if client.auth_user:
        if b.authenticated:
            return f"authenticated user {client.auth_user[:64]}"
        if client.auth_user in b.auth_users:
            return f"authenticated user {client.auth_user[:64]} listed"
    sender = client.sender.strip().strip("<>").lower()
    if sender and "@" in sender and b.senders:
        domain = "@" + sender.rsplit("@", 1)[1]
        for entry in b.senders:
            e = entry.lower()
            if e == sender or e == domain:
                return f"sender {sender[:100]} listed"
    return ""


def bypass_for(policies: Sequence[Policy], client: ClientInfo) -> tuple[str, str]:
    """``(skip, reason)`` for the message: a bypass only when *every* recipient policy grants one.

    ``skip`` is ``"scan"`` only when every policy skips the whole scan, else ``"detonation"``;
    ``("", "")`` when any policy does not bypass this client.
    """
    pols = list(policies) or [Policy()]
    reasons = [bypass_reason(p, client) for p in pols]
    if not all(reasons):
        return "", ""
    skip = "scan" if all(p.bypass.skip == "scan" for p in pols) else "detonation"
    return skip, reasons[0]


def bypass_decision(policy: Policy, reason: str) -> Decision:
    """The answer for a message that skipped the whole scan: delivered, marked ``bypassed``."""
    return Decision(
        action=TAG, verdict=CLEAN, score=0, reason=_clip(_ascii_text(f"bypassed: {reason}"), MAX_REASON),
        headers=((policy.headers.verdict, "clean score=0 bypassed"),), policy=policy.name,
        flags=("bypassed",), rule="bypass",
    )


# --------------------------------------------------------------------------------------
# decide()
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ArtifactOutcome:
    """What the pipeline knows about one artifact when it decides.

    ``verdict`` is clean|suspicious|malicious|error, or ``pending`` when the
    analysis had not finished by the policy's maximum wait.  ``part_id`` is the
    MIME part path that holds the artifact (for ``strip``); None for a download
    or anything that is not a part of its own.
    """

    sha256: str
    name: str
    verdict: str
    score: int
    findings: tuple[Finding, ...] = ()
    part_id: str | None = None
    #: why a file that should have run in a sandbox did not ("" when it ran or was not meant to)
    not_executed: str = ""
    #: triage kind (mailvm.kinds) and libmagic MIME type: what the file really is
    kind: str = ""
    mime: str = ""
    #: attachment | member | body | embedded | download
    role: str = ""


@dataclass(frozen=True)
class Decision:
    """The outcome of :func:`decide`: what the milter does with the message."""

    action: str
    verdict: str  # one of DECISION_VERDICTS
    score: int
    reason: str
    smtp_code: str | None = None
    smtp_ext: str | None = None
    smtp_text: str | None = None  # %-escaped for libmilter's setreply, printable ASCII, bounded
    strip_parts: tuple[str, ...] = ()
    headers: tuple[tuple[str, str], ...] = ()
    policy: str = "default"  # name of the policy that decided
    #: policy dimensions that applied besides the verdict: blocked, unchecked, encrypted, not_executed, bypassed
    flags: tuple[str, ...] = ()
    #: which key set the action (``actions.malicious``, ``actions.blocked``, ``policy_error``...)
    rule: str = ""

    def to_report(self) -> dict[str, Any]:
        """A JSON-able summary (stored with quarantined messages, logged)."""
        return {
            "action": self.action,
            "verdict": self.verdict,
            "score": self.score,
            "reason": self.reason,
            "policy": self.policy,
            "rule": self.rule,
            "flags": list(self.flags),
            "strip_parts": list(self.strip_parts),
            "headers": [list(h) for h in self.headers],
        }


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


def _safe_id(fid: Any) -> str:
    return _SAFE_ID.sub("_", str(fid).lower())[:32] or "finding"


def _safe_sha(sha: Any) -> str:
    s = str(sha).lower()[:12]
    return s if len(s) == 12 and _HEX.match(s) else "-"


def _ascii_text(text: str) -> str:
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


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def smtp_reply_text(text: str, limit: int = MAX_REPLY_TEXT) -> str:
    """Reply text for libmilter's setreply: ASCII, one line, bounded, ``%`` doubled."""
    return _clip(_ascii_text(text), limit).replace("%", "%%")


def _render(template: str, values: dict[str, str]) -> str:
    """Fill a validated template; a template that fails anyway gives the default text."""
    out = []
    try:
        for lit, fname, _spec, _conv in string.Formatter().parse(template):
            out.append(lit)
            if fname is not None:
                out.append(values.get(fname, ""))
    except ValueError:
        return _render(DEFAULT_REJECT_TEXT, values)
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
    if verdict in (SUSPICIOUS, MALICIOUS, CLEAN) and _score(o.score):
        entry += f" score={_score(o.score)}"
    top = sorted(o.findings, key=lambda f: -f.severity)[:MAX_FINDINGS_PER_ARTIFACT]
    if top:
        entry += " (" + ",".join(_safe_id(f.id) for f in top) + ")"
    return entry


def _score(value: Any) -> int:
    try:
        return max(0, min(10, int(value)))
    except (TypeError, ValueError):
        return 0


def _names(outcomes: Sequence[ArtifactOutcome], limit: int = MAX_NAMES_IN_REASON) -> str:
    parts = []
    for o in outcomes[:limit]:
        top = sorted(o.findings, key=lambda f: -f.severity)[:1]
        parts.append(safe_name(o.name, 40) + (f" ({_safe_id(top[0].id)})" if top else ""))
    if len(outcomes) > limit:
        parts.append(f"+{len(outcomes) - limit} more")
    return ", ".join(parts)


def unchecked_findings(findings: Iterable[Finding]) -> list[Finding]:
    """The findings that say a limit stopped extraction or analysis (see :data:`UNCHECKED_IDS`)."""
    return [f for f in findings
            if (f.id in UNCHECKED_IDS or f.id.endswith(UNCHECKED_SUFFIX)) and not f.id.startswith(NOT_UNCHECKED_PREFIXES)]


def encrypted_findings(findings: Iterable[Finding]) -> list[Finding]:
    return [f for f in findings if f.id in ENCRYPTED_IDS]


#: what a file really is, from its libmagic type, as the type names blocked_types uses
_REAL_TYPES: tuple[tuple[str, frozenset[str]], ...] = (
    ("application/x-dosexec", frozenset({"exe"})),
    ("application/vnd.microsoft.portable-executable", frozenset({"exe"})),
    ("application/x-msdownload", frozenset({"exe"})),
    ("application/x-executable", frozenset({"elf"})),
    ("application/x-pie-executable", frozenset({"elf"})),
    ("application/x-sharedlib", frozenset({"elf"})),
    ("application/x-msi", frozenset({"msi"})),
    ("application/x-ole-storage", frozenset()),
    ("application/x-ms-shortcut", frozenset({"lnk"})),
    ("application/x-iso9660-image", frozenset({"iso"})),
    ("application/java-archive", frozenset({"jar"})),
    ("application/x-java-archive", frozenset({"jar"})),
    ("application/vnd.ms-cab-compressed", frozenset({"cab"})),
    ("text/x-msdos-batch", frozenset({"bat"})),
    ("application/x-bat", frozenset({"bat"})),
    ("application/hta", frozenset({"hta"})),
)


def file_types(o: ArtifactOutcome) -> frozenset[str]:
    """The type names a file answers to: every extension of its name (``invoice.pdf.exe`` ->
    pdf, exe), its real type from libmagic (a PE named ``invoice.pdf`` is still ``exe``) and its
    triage kind."""
    names: set[str] = set()
    base = str(o.name).replace("\\", "/").rsplit("/", 1)[-1].lower().strip().rstrip(". ")
    parts = base.split(".")
    for ext in parts[1:][-3:]:
        ext = ext.strip()
        if 0 < len(ext) <= 16:
            names.add(ext)
    mime = (o.mime or "").lower().split(";")[0].strip()
    for prefix, types in _REAL_TYPES:
        if mime == prefix:
            names |= types
    if o.kind:
        names.add(o.kind)
    return frozenset(names)


def blocked_outcomes(policy: Policy, outcomes: Sequence[ArtifactOutcome]) -> list[tuple[ArtifactOutcome, str]]:
    """``(artifact, matched type)`` for each file whose type the policy blocks (message bodies never)."""
    wanted = set(policy.blocked_types)
    if not wanted:
        return []
    hits = []
    for o in outcomes:
        if o.role == "body" or not o.sha256:
            continue
        matched = sorted(file_types(o) & wanted)
        if matched:
            hits.append((o, matched[0]))
    return hits


def _raise_not_executed(policy: Policy, o: ArtifactOutcome) -> ArtifactOutcome:
    """A file that should have run and did not is at least ``policy.not_executed``."""
    if not o.not_executed or o.verdict not in (CLEAN, SUSPICIOUS) or policy.not_executed == CLEAN:
        return o
    if o.not_executed.startswith(NOT_EXECUTED_EXEMPT):
        return o
    floor = policy.not_executed
    if _DECISION_RANK.get(floor, 0) <= _DECISION_RANK.get(o.verdict, 0):
        return o
    return dataclasses.replace(o, verdict=floor, score=max(_score(o.score), 4 if floor == SUSPICIOUS else 7))


def _policy_error_decision(policy: Policy) -> Decision:
    code, ext = REPLY_INTERNAL
    return Decision(
        action=TEMPFAIL, verdict=ERROR, score=0,
        reason=_clip(_ascii_text(f"error: the policy of {policy.name} is invalid: {policy.error}"), MAX_REASON),
        smtp_code=code, smtp_ext=ext,
        smtp_text=smtp_reply_text(f"mailvm: the policy for {policy.name} is being fixed, please try again later"),
        policy=policy.name, flags=("policy_error",), rule="policy_error",
    )


def decide(policy: Policy, outcomes: Sequence[ArtifactOutcome], message_findings: Sequence[Finding] = ()) -> Decision:
    """Decide what happens to a message; pure: no I/O, the same inputs give the same Decision.

    0. A domain whose policy file is invalid (``policy.error``) defers every message
       (:data:`REPLY_INTERNAL`), loudly, until the file is fixed.
    1. Each artifact's verdict is clean|suspicious|malicious|error|pending (any
       other value counts as error).  A file that should have run in a sandbox and
       did not (``not_executed``) is raised to at least ``policy.not_executed``.
       Message-level findings are scored with :func:`~mailvm.verdict.score_findings`
       and count like one more artifact.
    2. The *known* verdict is the worst of the finished ones (clean < suspicious <
       malicious); no artifacts and no findings is clean.
    3. Malicious known: ``actions.malicious`` at once (nothing can make it worse);
       but if that action delivers the message now (tag/strip) while artifacts are
       pending, the stricter of it and ``actions.timeout`` applies, so unanalysed
       files are not delivered by the shortcut.
    4. Otherwise the base action is ``actions.suspicious`` when suspicious is known,
       else ``actions.error`` when an artifact failed, else ``actions.clean``.
       With any artifact pending, the stricter of the base action and
       ``actions.timeout`` applies.
    5. Policy dimensions that are not verdicts, each making the action at least as
       strict as its own: a file whose type is in ``blocked_types``
       (``actions.blocked``), content a limit kept from analysis
       (``actions.unchecked``), content no password opened (``actions.encrypted``).
    6. ``strip`` removes the parts of the suspicious, malicious (and, when strip
       came from ``actions.blocked``, blocked) artifacts; when one of them has no
       ``part_id`` (a download, the message body, a message-level finding), the
       offending content cannot be cut out and the action becomes ``quarantine``.
    7. Reject and tempfail carry a reply (:data:`REPLY_REJECT`, :data:`REPLY_TEMPFAIL`)
       whose text is the policy's template, sanitised; tag/strip/hold/quarantine carry
       the verdict and report headers.
    """
    if policy.error:
        return _policy_error_decision(policy)
    outcomes = [_raise_not_executed(policy, o) for o in outcomes]
    clean_o: list[ArtifactOutcome] = []
    susp_o: list[ArtifactOutcome] = []
    mal_o: list[ArtifactOutcome] = []
    err_o: list[ArtifactOutcome] = []
    pend_o: list[ArtifactOutcome] = []
    buckets = {CLEAN: clean_o, SUSPICIOUS: susp_o, MALICIOUS: mal_o, ERROR: err_o, PENDING: pend_o}
    for o in outcomes:
        buckets.get(o.verdict, err_o).append(o)

    msg_verdict, msg_score = score_findings(message_findings)
    score = max([_score(o.score) for o in clean_o + susp_o + mal_o] + [msg_score])

    if mal_o or msg_verdict == MALICIOUS:
        known = MALICIOUS
    elif susp_o or msg_verdict == SUSPICIOUS:
        known = SUSPICIOUS
    else:
        known = CLEAN

    if known == MALICIOUS:
        action, rule = policy.actions.malicious, "actions.malicious"
        if pend_o and action in DELIVERING_ACTIONS:
            action, rule = _stricter_rule((action, rule), (policy.actions.timeout, "actions.timeout"))
    else:
        if known == SUSPICIOUS:
            action, rule = policy.actions.suspicious, "actions.suspicious"
        elif err_o:
            action, rule = policy.actions.error, "actions.error"
        else:
            action, rule = policy.actions.clean, "actions.clean"
        if pend_o:
            action, rule = _stricter_rule((action, rule), (policy.actions.timeout, "actions.timeout"))

    # the dimensions that are not verdicts
    blocked = blocked_outcomes(policy, outcomes)
    unchecked_o = [o for o in outcomes if unchecked_findings(o.findings)]
    unchecked_msg = unchecked_findings(message_findings)
    encrypted_o = [o for o in outcomes if encrypted_findings(o.findings)]
    encrypted_msg = encrypted_findings(message_findings)
    flags: list[str] = []
    strip_blocked = False
    if blocked:
        flags.append(BLOCKED)
        before = action
        action, rule = _stricter_rule((action, rule), (policy.actions.blocked, "actions.blocked"))
        strip_blocked = action == STRIP and (before != STRIP or policy.actions.blocked == STRIP)
    if unchecked_o or unchecked_msg:
        flags.append(UNCHECKED)
        action, rule = _stricter_rule((action, rule), (policy.actions.unchecked, "actions.unchecked"))
    if encrypted_o or encrypted_msg:
        flags.append(ENCRYPTED)
        action, rule = _stricter_rule((action, rule), (policy.actions.encrypted, "actions.encrypted"))
    if any(o.not_executed for o in outcomes):
        flags.append("not_executed")

    if known in (MALICIOUS, SUSPICIOUS):
        verdict = known
    elif pend_o:
        verdict = TIMEOUT
    elif err_o:
        verdict = ERROR
    else:
        verdict = CLEAN

    offending = mal_o + susp_o
    strip_set = offending + ([o for o, _ in blocked if o not in offending] if strip_blocked else [])
    strip_parts: tuple[str, ...] = ()
    fallback = ""
    if action == STRIP:
        if (msg_verdict in (SUSPICIOUS, MALICIOUS) or any(not o.part_id or o.role == "body" for o in strip_set)
                or not strip_set):
            action = QUARANTINE
            fallback = "; strip impossible (no MIME part), quarantined"
        else:
            strip_parts = tuple(dict.fromkeys(str(o.part_id) for o in strip_set))

    # reason: human text about what decided
    if known in (MALICIOUS, SUSPICIOUS):
        arts = mal_o if known == MALICIOUS else susp_o
        what = []
        if arts:
            what.append(_names(arts))
        if msg_verdict == known:
            top = sorted(message_findings, key=lambda f: -f.severity)[0]
            what.append(f"message ({_safe_id(top.id)})")
        reason = f"{known}: {', '.join(what)}"
        if pend_o:
            reason += f"; {len(pend_o)} not analysed in time"
        if err_o:
            reason += f"; {len(err_o)} failed"
    elif pend_o:
        reason = f"timeout: {len(pend_o)} of {len(outcomes)} files not analysed within {policy.max_wait_s:g} s: {_names(pend_o)}"
        if err_o:
            reason += f"; {len(err_o)} failed"
    elif err_o:
        reason = f"error: analysis failed for {_names(err_o)}"
    elif outcomes:
        reason = f"clean: {len(outcomes)} files"
    else:
        reason = "clean: no files"
    if blocked:
        reason += "; blocked type: " + ", ".join(f"{safe_name(o.name, 40)} ({t})" for o, t in blocked[:MAX_NAMES_IN_REASON])
    if unchecked_o or unchecked_msg:
        ids = sorted({f.id for o in unchecked_o for f in unchecked_findings(o.findings)} | {f.id for f in unchecked_msg})
        reason += "; unchecked (a limit stopped the analysis: " + ",".join(_safe_id(i) for i in ids[:3]) + ")"
        if unchecked_o:
            reason += ": " + _names(unchecked_o)
    if encrypted_o or encrypted_msg:
        reason += "; encrypted, not analysed" + (": " + _names(encrypted_o) if encrypted_o else "")
    reason = _clip(_ascii_text(reason + fallback), MAX_REASON)

    code = ext = text = None
    values = {
        "verdict": verdict,
        "score": str(score),
        "reason": reason,
        "names": _names(offending or [o for o, _ in blocked] or unchecked_o or encrypted_o or pend_o or err_o),
        "action": action,
    }
    if action == REJECT:
        code, ext = REPLY_REJECT
        text = smtp_reply_text(_render(policy.reject_text, values))
    elif action == TEMPFAIL:
        code, ext = REPLY_TEMPFAIL
        text = smtp_reply_text(_render(policy.tempfail_text, values))

    headers: tuple[tuple[str, str], ...] = ()
    if action in HEADER_ACTIONS:
        headers = _headers(policy, verdict, score, outcomes, message_findings, msg_score, len(pend_o), len(err_o),
                           tuple(flags))

    return Decision(
        action=action,
        verdict=verdict,
        score=score,
        reason=reason,
        smtp_code=code,
        smtp_ext=ext,
        smtp_text=text,
        strip_parts=strip_parts,
        headers=headers,
        policy=policy.name,
        flags=tuple(flags),
        rule=rule,
    )


_ENTRY_ORDER = {MALICIOUS: 0, SUSPICIOUS: 1, PENDING: 2, ERROR: 3, CLEAN: 4}


def _headers(
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
        entries.append(f"message score={msg_score} (" + ",".join(_safe_id(f.id) for f in top) + ")")
    ordered = sorted(outcomes, key=lambda o: (_ENTRY_ORDER.get(o.verdict, 3), -_score(o.score)))
    entries += [_artifact_entry(o) for o in ordered]
    if not entries:
        entries = ["no files"]
    report = _fold(policy.headers.report, entries, MAX_HEADER_VALUE)
    return ((policy.headers.verdict, value), (policy.headers.report, report))


def _stricter(a: str, b: str) -> str:
    return a if ACTION_RANK.get(a, len(ACTIONS)) >= ACTION_RANK.get(b, len(ACTIONS)) else b


def _stricter_rule(a: tuple[str, str], b: tuple[str, str]) -> tuple[str, str]:
    """The stricter of two ``(action, rule)`` pairs; on a tie the first (the verdict's own rule)."""
    return a if ACTION_RANK.get(a[0], len(ACTIONS)) >= ACTION_RANK.get(b[0], len(ACTIONS)) else b


def decide_for_recipients(
    policies: Sequence[Policy], outcomes: Sequence[ArtifactOutcome], message_findings: Sequence[Finding] = ()
) -> Decision:
    """Several recipient domains: each policy decides, the strictest action wins.

    Strictness follows :data:`ACTIONS` (accept < tag < strip < hold < quarantine <
    tempfail < reject < discard); on a tie the first policy's decision is kept.
    One SMTP transaction gets one answer, so the strictest domain sets it for all
    recipients (a sender who must reach a lenient domain can send separately).
    No policies: the built-in default policy decides.
    """
    pols = list(policies) or [Policy()]
    best: Decision | None = None
    for pol in pols:
        d = decide(pol, outcomes, message_findings)
        if best is None or ACTION_RANK[d.action] > ACTION_RANK[best.action]:
            best = d
    assert best is not None
    return best


def failure_decision(policy: Policy, detail: str = "internal error") -> Decision:
    """What to do when mailvm itself failed before it could decide (no verdicts at all).

    ``fail_open = true``: deliver, marked with the verdict header only
    (``error score=0 failed-open``), as action ``tag``; otherwise tempfail with :data:`REPLY_INTERNAL` so the sender retries.
    """
    reason = _clip(_ascii_text(f"error: mailvm failed: {detail}"), MAX_REASON)
    if policy.fail_open:
        return Decision(
            action=TAG,
            verdict=ERROR,
            score=0,
            reason=reason,
            headers=((policy.headers.verdict, "error score=0 failed-open"),),
            policy=policy.name,
        )
    code, ext = REPLY_INTERNAL
    return Decision(
        action=TEMPFAIL,
        verdict=ERROR,
        score=0,
        reason=reason,
        smtp_code=code,
        smtp_ext=ext,
        smtp_text=smtp_reply_text("mailvm: temporary failure, please try again later"),
        policy=policy.name,
    )


#: SMTP reply for a message mailvm cannot take whole (RFC 3463: message too big for system)
REPLY_TOO_BIG: tuple[str, str] = ("552", "5.3.4")


def oversize_decision(policies: Sequence[Policy], detail: str) -> Decision:
    """A message larger than mailvm reads whole (``max_message_bytes``, or headers past the cap).

    Nothing was analysed, and mailvm only holds part of it, so nothing may store or drop
    a partial copy: each domain's ``actions.unchecked`` is taken, with ``quarantine``
    becoming ``hold`` (Postfix keeps its own, whole queue file) and ``reject``/``discard``
    a ``552 5.3.4`` refusal the sender sees.  Several domains: the strictest.
    """
    mapping = {QUARANTINE: HOLD, DISCARD: REJECT}
    pols = list(policies) or [Policy()]
    best: Decision | None = None
    for pol in pols:
        action = mapping.get(pol.actions.unchecked, pol.actions.unchecked)
        reason = _clip(_ascii_text(f"unchecked: {detail}; not analysed"), MAX_REASON)
        code = ext = text = None
        headers: tuple[tuple[str, str], ...] = ()
        if action == REJECT:
            code, ext = REPLY_TOO_BIG
            text = smtp_reply_text("mailvm: message too large to be analysed")
        elif action == TEMPFAIL:
            code, ext = REPLY_TEMPFAIL
            text = smtp_reply_text("mailvm: message too large to be analysed now")
        else:
            headers = ((pol.headers.verdict, "error score=0 unchecked oversize"),)
        d = Decision(action=action, verdict=ERROR, score=0, reason=reason, smtp_code=code, smtp_ext=ext,
                     smtp_text=text, headers=headers, policy=pol.name, flags=(UNCHECKED,), rule="actions.unchecked")
        if best is None or ACTION_RANK[d.action] > ACTION_RANK[best.action]:
            best = d
    assert best is not None
    return best


def decision_report(decision: Decision, outcomes: Sequence[ArtifactOutcome], message_findings: Sequence[Finding] = ()) -> dict[str, Any]:
    """The decision plus every artifact (JSON-able; names kept as data, bounded)."""
    report = decision.to_report()
    report["artifacts"] = [
        {
            "name": str(o.name)[:255],
            "sha256": str(o.sha256)[:64],
            "verdict": o.verdict if o.verdict in OUTCOME_VERDICTS else ERROR,
            "score": _score(o.score),
            "part_id": o.part_id,
            "findings": [f.to_dict() for f in o.findings[:50]],
        }
        for o in list(outcomes)[:1000]
    ]
    report["message_findings"] = [f.to_dict() for f in list(message_findings)[:50]]
    return report


__all__ = [
    "ACTIONS",
    "ACTION_RANK",
    "ALLOWED_ACTIONS",
    "AnalysisSettings",
    "ArtifactOutcome",
    "ClientInfo",
    "Decision",
    "Policy",
    "PolicySet",
    "REPLY_INTERNAL",
    "REPLY_REJECT",
    "REPLY_TEMPFAIL",
    "analysis_settings",
    "blocked_outcomes",
    "bypass_decision",
    "bypass_for",
    "bypass_reason",
    "check_policy_dir",
    "decide",
    "decide_for_recipients",
    "decision_report",
    "failure_decision",
    "oversize_decision",
    "load_policies",
    "normalize_domain",
    "parse_policy",
    "policy_keys",
    "recipient_domain",
]
