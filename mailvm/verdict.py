"""Data shared by the host and the guest: findings, artifacts, verdicts, scoring.

Standard library only: this module is copied into the guest image and imported
by the guest agent as well as by the milter, the pool and ``mvctl``.

Scoring (one documented function, :func:`score_findings`):

* every finding carries a severity from 0 (informational) to 10 (conclusive);
* the score is the highest severity, plus one point when at least three
  *distinct* findings have a severity of 5 or more (independent evidence
  corroborates), capped at 10;
* ``malicious`` when the score is 7 or more, ``suspicious`` from 4 to 6,
  ``clean`` below 4.

Errors (a VM that failed, a timeout) are findings too; they do not raise the
score by themselves.  A verdict whose only evidence is an error gets the
verdict ``error`` from whoever produced it (see :func:`error_verdict`).
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from typing import Any, Iterable

ENGINE_VERSION = "mailvm-0.2.0/rules-2"  # bumped: verdicts of the old rules are re-analysed

CLEAN = "clean"
SUSPICIOUS = "suspicious"
MALICIOUS = "malicious"
ERROR = "error"
VERDICTS = (CLEAN, SUSPICIOUS, MALICIOUS, ERROR)
#: order used when several verdicts are combined (higher is worse)
VERDICT_RANK = {CLEAN: 0, ERROR: 1, SUSPICIOUS: 2, MALICIOUS: 3}

PENDING = "pending"
DONE = "done"

SUSPICIOUS_THRESHOLD = 4
MALICIOUS_THRESHOLD = 7
CORROBORATION_MIN_SEVERITY = 5
CORROBORATION_COUNT = 3

MAX_DETAIL = 500
MAX_ID = 64


def _clip(text: Any, limit: int) -> str:
    text = "" if text is None else str(text)
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"


@dataclass(frozen=True)
class Finding:
    """One piece of evidence: ``id`` is a stable snake_case name, ``severity`` 0-10."""

    id: str
    severity: int
    detail: str = ""
    source: str = ""

    def __post_init__(self) -> None:
        sev = int(self.severity)
        object.__setattr__(self, "severity", max(0, min(10, sev)))
        object.__setattr__(self, "id", _clip(self.id, MAX_ID))
        object.__setattr__(self, "detail", _clip(self.detail, MAX_DETAIL))

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "severity": self.severity, "detail": self.detail, "source": self.source}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Finding":
        if not isinstance(data, dict):
            raise ValueError("finding must be an object")
        fid = data.get("id")
        sev = data.get("severity")
        if not isinstance(fid, str) or not fid:
            raise ValueError("finding.id must be a non-empty string")
        if isinstance(sev, bool) or not isinstance(sev, int) or not 0 <= sev <= 10:
            raise ValueError("finding.severity must be an integer 0-10")
        detail = data.get("detail", "")
        source = data.get("source", "")
        if not isinstance(detail, str) or not isinstance(source, str):
            raise ValueError("finding.detail and finding.source must be strings")
        return cls(fid, sev, detail, _clip(source, MAX_ID))


def score_findings(findings: Iterable[Finding]) -> tuple[str, int]:
    """Turn findings into ``(verdict, score)``; see the module docstring."""
    findings = list(findings)
    if not findings:
        return CLEAN, 0
    score = max(f.severity for f in findings)
    strong = {f.id for f in findings if f.severity >= CORROBORATION_MIN_SEVERITY}
    if len(strong) >= CORROBORATION_COUNT:
        score += 1
    score = min(10, score)
    if score >= MALICIOUS_THRESHOLD:
        return MALICIOUS, score
    if score >= SUSPICIOUS_THRESHOLD:
        return SUSPICIOUS, score
    return CLEAN, score


def worst(verdicts: Iterable[str]) -> str:
    """The worst of several verdict names (``clean`` for none)."""
    result = CLEAN
    for v in verdicts:
        if VERDICT_RANK.get(v, 1) > VERDICT_RANK[result]:
            result = v
    return result


@dataclass
class Artifact:
    """A file found in a message: an attachment, an archive member or a download.

    ``origin`` is the chain from the message to the file, for example
    ``("attachment:invoice.zip", "member:docs/inv.exe")``.  ``path`` is where the
    bytes live inside the message's own spool directory.
    """

    sha256: str
    name: str
    size: int
    type: str
    path: str
    origin: tuple[str, ...] = ()
    description: str = ""
    depth: int = 0
    findings: list[Finding] = field(default_factory=list)
    #: the MIME part that carries this file, as the SHA-256 of that leaf's decoded content: for an
    #: attachment its own part, for an archive member the attachment that holds the archive, for a
    #: file found inside a text part that part.  This is the identity ``strip`` uses (every leaf with
    #: that content is replaced, then the result is re-parsed); it is never parsed back from
    #: ``origin`` (names are attacker data).  Empty when no MIME leaf carries the file (a download).
    part_id: str = ""
    #: what the file is to the message: attachment | member | body | embedded | download
    role: str = "attachment"

    @property
    def origin_str(self) -> str:
        return " > ".join(self.origin)

    def to_dict(self) -> dict[str, Any]:
        return {
            "sha256": self.sha256,
            "name": self.name,
            "size": self.size,
            "type": self.type,
            "description": self.description,
            "origin": self.origin_str,
            "path": self.path,
            "depth": self.depth,
            "part_id": self.part_id,
            "role": self.role,
            "findings": [f.to_dict() for f in self.findings],
        }


@dataclass
class Verdict:
    """What the scanned table stores per sha256, and what a detonation returns."""

    state: str = DONE
    verdict: str = CLEAN
    score: int = 0
    findings: list[Finding] = field(default_factory=list)
    engine_version: str = ENGINE_VERSION
    analyzed_at: float = field(default_factory=time.time)
    duration_s: float = 0.0
    source: str = "triage"  # triage | detonation
    slot: str = ""
    log_ref: str = ""
    log: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def from_findings(cls, findings: Iterable[Finding], **kw: Any) -> "Verdict":
        findings = list(findings)
        verdict, score = score_findings(findings)
        return cls(verdict=verdict, score=score, findings=findings, **kw)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["findings"] = [f.to_dict() for f in self.findings]
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Verdict":
        if not isinstance(data, dict):
            raise ValueError("verdict must be an object")
        state = data.get("state", DONE)
        verdict = data.get("verdict", CLEAN)
        score = data.get("score", 0)
        if state not in (PENDING, DONE):
            raise ValueError(f"verdict.state {state!r} is not pending|done")
        if verdict not in VERDICTS:
            raise ValueError(f"verdict.verdict {verdict!r} is not one of {VERDICTS}")
        if isinstance(score, bool) or not isinstance(score, int) or not 0 <= score <= 10:
            raise ValueError("verdict.score must be an integer 0-10")
        findings = data.get("findings", [])
        if not isinstance(findings, list):
            raise ValueError("verdict.findings must be a list")
        log = data.get("log", [])
        if not isinstance(log, list):
            raise ValueError("verdict.log must be a list")
        num = lambda k: float(data.get(k, 0.0) or 0.0)  # noqa: E731
        return cls(
            state=state,
            verdict=verdict,
            score=score,
            findings=[Finding.from_dict(f) for f in findings],
            engine_version=str(data.get("engine_version", "")),
            analyzed_at=num("analyzed_at"),
            duration_s=num("duration_s"),
            source=str(data.get("source", "")),
            slot=str(data.get("slot", "")),
            log_ref=str(data.get("log_ref", "")),
            log=[e for e in log if isinstance(e, dict)],
        )


def error_verdict(finding_id: str, detail: str = "", **kw: Any) -> Verdict:
    """A verdict for an analysis that could not finish: ``timed_out``, ``vm_error``, ``slot_failed``..."""
    return Verdict(verdict=ERROR, score=0, findings=[Finding(finding_id, 0, detail, "engine")], **kw)
