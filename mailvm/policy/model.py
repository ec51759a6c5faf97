"""The policy model: actions, verdict situations, the typed :class:`Policy` and its tables.

This module only declares: the action and situation names and which action each
situation may use, the dataclasses a policy file is parsed into (one per TOML table,
registered in :data:`TABLES`), the keys they make (:func:`policy_keys`), and the plain
data :func:`~mailvm.policy.decide.decide` reads (:class:`ArtifactOutcome`) and returns
(:class:`Decision`).  Loading and checking files is :mod:`mailvm.policy.load`, the
decision :mod:`mailvm.policy.decide`, the text it emits :mod:`mailvm.policy.render`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from mailvm.kinds import DETONATE_KINDS
from mailvm.verdict import CLEAN, ERROR, MALICIOUS, PENDING, SUSPICIOUS, Finding

# --------------------------------------------------------------------------------------
# Actions and verdict situations
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

#: the message verdict in a :class:`Decision`, from the least to the most serious
DECISION_VERDICTS: tuple[str, ...] = (CLEAN, ERROR, TIMEOUT, SUSPICIOUS, MALICIOUS)
#: what an :class:`ArtifactOutcome` may say
OUTCOME_VERDICTS: tuple[str, ...] = (CLEAN, SUSPICIOUS, MALICIOUS, ERROR, PENDING)

#: triage kinds that ``detonate_kinds`` may name (one list: mailvm.kinds; the pool config uses it too)
TRIAGE_KINDS: tuple[str, ...] = DETONATE_KINDS


def clamp_score(value: Any) -> int:
    """A score as decisions and reports use it: an int from 0 to 10 (anything else is 0)."""
    try:
        return max(0, min(10, int(value)))
    except (TypeError, ValueError):
        return 0


# --------------------------------------------------------------------------------------
# The policy of one domain
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
# What decide() reads and returns
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
