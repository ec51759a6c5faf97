"""The one contract between mailvm's stages: what each is asked to do, and how it travels.

Two hand-overs carry work, and both are defined here and nowhere else:

* milter -> scan worker: a :class:`ScanJob` -- the spooled message's path, its deadline and the
  recipients' :class:`AnalysisSettings`, frozen when the policy decided them and read unchanged
  by the worker (:func:`mailvm.milter.pipeline.scanner_for`); nothing re-maps them on the way.
* scan worker -> pool (local diskcache queue or Redis stream): a :class:`Job`, one file to
  detonate, as the JSON-ready record of :func:`job_record`, read back by :func:`job_from_record`.

Verdicts travel back as :meth:`mailvm.verdict.Verdict.to_dict` (scanned table, local or Redis)
and a message's report as :meth:`mailvm.scan.ScanReport.to_dict`.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from typing import Any

from mailvm.scantable import check_key
from mailvm.verdict import Finding

#: characters kept of a job record's text fields (a name or type is attacker data)
MAX_RECORD_TEXT = 1024


@dataclass(frozen=True)
class AnalysisSettings:
    """What the pipeline does for one message whose recipients have these policies
    (:func:`mailvm.policy.analysis_settings` builds it; the scan worker reads it as is).

    The most thorough wins: detonate if any policy detonates (union of kinds), wait
    as long as the longest ``max_wait_s``, follow links if any policy does (largest
    limits), try every policy's archive passwords.  Link limits never exceed the host's
    ``[links]`` (the policy's are capped by them: :meth:`links_config`).
    """

    max_wait_s: float
    detonate: bool
    detonate_kinds: tuple[str, ...]
    links_enabled: bool
    max_links: int
    max_link_bytes: int
    archive_passwords: tuple[str, ...]

    def links_config(self, host: Any) -> Any:
        """The host's ``[links]`` (:class:`mailvm.config.LinksConfig`) narrowed by these settings."""
        return dataclasses.replace(
            host,
            enabled=bool(host.enabled and self.links_enabled),
            max_links=min(host.max_links, self.max_links),
            max_bytes=min(host.max_bytes, self.max_link_bytes) if self.max_link_bytes > 0 else host.max_bytes,
        )


@dataclass(frozen=True)
class ScanJob:
    """One message for a scan worker."""

    path: str  # the message as received, spooled once by the milter
    settings: AnalysisSettings
    deadline: float  # time.monotonic() based (CLOCK_MONOTONIC is system-wide)
    #: an allow-list (``bypass.skip = "detonation"``) lets this message skip detonation
    static_only: bool = False

    @property
    def detonate(self) -> bool:
        return self.settings.detonate and not self.static_only


@dataclass
class Job:
    """One file to detonate."""

    sha256: str
    path: str  # file on the host (spool, or the queue's own copy)
    name: str
    type: str  # mime
    kind: str  # triage kind
    static_findings: list[Finding] = field(default_factory=list)
    timeout_s: float | None = None  # guest run time (default cfg.job_timeout_s)
    deadline: float | None = None  # monotonic: give up (verdict error / timed_out) if not done by then
    owner: str = ""  # scan-table claim owner; the pool publishes when a table is given


def job_record(job: Job | dict[str, Any]) -> dict[str, Any]:
    """The JSON-ready record of ``job`` as queues store it (with ``queued_at``); raises
    ``ValueError`` when it could not be read back.  ``deadline`` (a monotonic time of this
    host) does not travel: a queued job runs to completion, its verdict serves the sender's retry."""
    record = dataclasses.asdict(job) if not isinstance(job, dict) else dict(job)
    check_key(record.get("sha256"))  # ValueError: not a lower-case hex sha256
    record["static_findings"] = [f.to_dict() if isinstance(f, Finding) else f
                                 for f in record.get("static_findings", [])]
    record.pop("deadline", None)
    record["queued_at"] = time.time()
    return record


def job_from_record(record: dict[str, Any]) -> Job:
    """A :class:`Job` from a queue record (hostile until checked: a malformed finding is
    dropped, text is bounded; a bad sha256 or path raises ``ValueError``/``KeyError``)."""
    sha = check_key(record["sha256"])
    findings = []
    for f in record.get("static_findings", []) or []:
        try:
            findings.append(Finding.from_dict(f))
        except (ValueError, TypeError, AttributeError):
            continue
    timeout = record.get("timeout_s")
    return Job(
        sha256=sha,
        path=str(record["path"]),
        name=str(record.get("name", ""))[:MAX_RECORD_TEXT],
        type=str(record.get("type", ""))[:MAX_RECORD_TEXT],
        kind=str(record.get("kind", "unknown"))[:64],
        static_findings=findings,
        timeout_s=float(timeout) if isinstance(timeout, (int, float)) and not isinstance(timeout, bool) else None,
        deadline=None,  # a queued job runs to completion: the verdict serves the sender's retry
        owner=str(record.get("owner", ""))[:MAX_RECORD_TEXT],
    )
