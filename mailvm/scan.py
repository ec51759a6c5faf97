"""The analysis pipeline shared by ``mvctl scan`` and the milter's workers.

Steps (DESIGN.md data flow 1-4): extract the message (or file) into a private
spool directory, download linked files, then for every distinct file:

1. a fresh verdict in the scanned table answers at once (``source=cache``);
2. otherwise static triage runs; files of an inert kind, and files whose static
   verdict is already conclusive, get that verdict (``source=triage``) and it is
   stored in the table;
3. otherwise, when a detonator is available, the file is claimed in the table
   (single flight) and handed to it; a file already claimed elsewhere is waited
   for (``source=detonation``);
4. whatever is not finished when the deadline passes is reported ``pending``.

The overall verdict is the worst of the artifacts' verdicts and of the
message-level findings.  Nothing here decides what to do with the message:
that is :func:`mailvm.policy.decide`.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
import uuid
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, Sequence

from mailvm.config import Config
from mailvm.extract import ExtractionResult, expand, extract_file, extract_message
from mailvm.extract.links import download_links, find_urls
from mailvm.extract.spool import Spool
from mailvm.triage.doclinks import document_urls
from mailvm.verdict import (
    CLEAN,
    ERROR,
    MALICIOUS_THRESHOLD,
    Artifact,
    Finding,
    Verdict,
    score_findings,
    worst,
)

log = logging.getLogger(__name__)

PENDING = "pending"
SOURCE_CACHE = "cache"
SOURCE_TRIAGE = "triage"
SOURCE_DETONATION = "detonation"


class Detonator(Protocol):
    """What the pipeline needs from the pool (``mailvm.vmpool.pool.Pool`` fits)."""

    def submit(self, job: Any) -> Future: ...


@dataclass
class ArtifactReport:
    artifact: Artifact
    kind: str
    verdict: str
    score: int
    source: str  # cache | triage | detonation | pending | pinned
    findings: list[Finding] = field(default_factory=list)
    log: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        a = self.artifact
        return {
            "sha256": a.sha256,
            "name": a.name,
            "type": a.type,
            "kind": self.kind,
            "origin": a.origin_str,
            "part_id": a.part_id,
            "role": a.role,
            "size": a.size,
            "verdict": self.verdict,
            "score": self.score,
            "source": self.source,
            "findings": [{"id": f.id, "severity": f.severity, "detail": f.detail} for f in self.findings],
        }


@dataclass
class ScanReport:
    verdict: str
    score: int
    findings: list[Finding]
    artifacts: list[ArtifactReport]
    duration_s: float
    headers: dict[str, str] = field(default_factory=dict)

    @property
    def pending(self) -> list[ArtifactReport]:
        return [a for a in self.artifacts if a.verdict == PENDING]

    def to_dict(self) -> dict[str, Any]:
        return {
            "verdict": self.verdict,
            "score": self.score,
            "findings": [{"id": f.id, "severity": f.severity, "detail": f.detail} for f in self.findings],
            "artifacts": [a.to_dict() for a in self.artifacts],
            "duration_s": round(self.duration_s, 4),
            "headers": {k.lower(): v for k, v in self.headers.items()},
        }


def combine(own: Sequence[Finding], verdict: Verdict | None) -> tuple[str, int, list[Finding]]:
    """Merge an artifact's extraction findings with its stored/computed verdict."""
    findings = list(own) + (list(verdict.findings) if verdict else [])
    name, score = score_findings(findings)
    if verdict is not None:
        score = max(score, verdict.score)
        name = worst([name, verdict.verdict]) if verdict.verdict != ERROR or name == CLEAN else name
    return name, score, findings


class Scanner:
    """Runs the pipeline; one instance is shared by the threads of a process."""

    def __init__(
        self,
        cfg: Config,
        triage: Any,
        table: Any | None = None,
        detonator: Detonator | None = None,
        detonate_kinds: Sequence[str] | None = None,
        pins: Any | None = None,
    ) -> None:
        self.cfg = cfg
        self.triage = triage
        self.table = table
        if pins is None:
            from mailvm.pins import PinStore, pins_path

            pins = PinStore(pins_path(cfg.scantable.path))
        #: administrator pins (mvctl cache pin): answered before the table, triage or a VM
        self.pins = pins
        self.detonator = detonator
        self.detonate_kinds = frozenset(detonate_kinds if detonate_kinds is not None else cfg.pool.detonate_kinds)
        self.owner = f"{os.uname().nodename}:{os.getpid()}"

    # -- entry points ----------------------------------------------------------
    def scan_message(
        self,
        raw: bytes,
        passwords: Sequence[str] = (),
        deadline: float | None = None,
        links: bool | None = None,
    ) -> ScanReport:
        return self._run(lambda spool: extract_message(raw, spool, self.cfg.extract, passwords), deadline, links)

    def scan_file(self, path: str | os.PathLike[str], name: str | None = None, deadline: float | None = None,
                  passwords: Sequence[str] = ()) -> ScanReport:
        name = name or Path(path).name
        return self._run(
            lambda spool: extract_file(path, name, spool, self.cfg.extract, passwords), deadline, links=False
        )

    # -- pipeline --------------------------------------------------------------
    def _run(self, extract, deadline: float | None, links: bool | None) -> ScanReport:
        t0 = time.monotonic()
        Path(self.cfg.spool.dir).mkdir(parents=True, exist_ok=True, mode=0o700)
        root = tempfile.mkdtemp(prefix="msg-", dir=self.cfg.spool.dir)
        try:
            spool = Spool(root, self.cfg.extract)
            res: ExtractionResult = extract(spool)
            findings = list(res.findings)
            if links if links is not None else self.cfg.links.enabled:
                self._download(res, spool, findings)
            for f in spool.findings:
                if f not in findings:
                    findings.append(f)
            findings += _message_findings(res)
            reports = self._analyze(spool.artifacts or res.artifacts, deadline)
            msg_verdict, msg_score = score_findings(findings)
            overall = worst([msg_verdict] + [r.verdict if r.verdict != PENDING else ERROR for r in reports])
            if any(r.verdict == PENDING for r in reports) and overall in (CLEAN, ERROR):
                overall = PENDING
            score = max([msg_score] + [r.score for r in reports])
            return ScanReport(overall, score, findings, reports, time.monotonic() - t0, dict(res.headers))
        finally:
            shutil.rmtree(root, ignore_errors=True)

    def _download(self, res: ExtractionResult, spool: Spool, findings: list[Finding]) -> None:
        # links inside attached documents (a PDF lure's one link, a .url's target) first, then the message's
        docs = document_urls(spool.artifacts, max(1, self.cfg.links.max_links // 2))
        findings.extend(docs.findings)
        urls = list(dict.fromkeys(docs.urls + find_urls(res.text, res.html, self.cfg.links.max_links * 4)))
        if not urls:
            return
        arts, link_findings = download_links(urls, spool, self.cfg.links)
        findings.extend(link_findings)
        for art in arts:
            try:
                expand(art, spool, self.cfg.extract, ())
            except Exception as exc:  # expansion turns problems into findings; be safe anyway
                log.warning("expanding download %s failed: %s", art.name, exc)

    def _analyze(self, artifacts: Sequence[Artifact], deadline: float | None) -> list[ArtifactReport]:
        by_sha: dict[str, ArtifactReport] = {}
        waits: list[tuple[str, Future | None, Any]] = []
        reports: list[ArtifactReport] = []
        for art in artifacts:
            if art.sha256 in by_sha:
                first = by_sha[art.sha256]
                reports.append(ArtifactReport(art, first.kind, first.verdict, first.score, first.source))
                continue
            rep, fut, job = self._lookup(art, deadline)
            by_sha[art.sha256] = rep
            reports.append(rep)
            if rep.verdict == PENDING:
                waits.append((art.sha256, fut, job))
        for sha, fut, job in waits:
            verdict = self._wait(sha, fut, job, deadline)
            rep = by_sha[sha]
            if verdict is not None:
                self._settle(rep, verdict, SOURCE_DETONATION)
        # duplicates share the first report's outcome
        for r in reports:
            first = by_sha[r.artifact.sha256]
            if r is not first:
                r.verdict, r.score, r.source = first.verdict, first.score, first.source
                r.findings = list(r.artifact.findings) + [f for f in first.findings if f not in first.artifact.findings]
        return reports

    def _settle(self, rep: ArtifactReport, verdict: Verdict, source: str) -> None:
        rep.verdict, rep.score, rep.findings = combine(rep.artifact.findings, verdict)
        rep.source = source if verdict.source != SOURCE_TRIAGE or source == SOURCE_CACHE else SOURCE_TRIAGE
        rep.log = list(verdict.log)

    def _lookup(self, art: Artifact, deadline: float | None) -> tuple[ArtifactReport, Future | None, Any]:
        """The artifact's report; for a file being detonated also its Future (if ours) and Job."""
        rep = ArtifactReport(art, "unknown", PENDING, 0, PENDING, list(art.findings))
        pin = self._pin(art.sha256)
        if pin is not None:
            self._settle(rep, pin.as_verdict(), "pinned")
            rep.source = "pinned"
            return rep, None, None
        if self.table is not None:
            cached = self.table.get(art.sha256)
            if cached is not None and cached.state == "done":
                rep.kind = _kind_of(cached, rep.kind)
                self._settle(rep, cached, SOURCE_CACHE)
                return rep, None, None
        result = self.triage.analyze(art)
        rep.kind = result.kind
        static = Verdict.from_findings(result.findings, source=SOURCE_TRIAGE, log=[{"type": "kind", "kind": result.kind}])
        if art.role == "body":
            # the message's own text: judged statically, never run, never stored (it is one message's)
            self._settle(rep, static, SOURCE_TRIAGE)
            return rep, None, None
        needs_vm = result.kind in self.detonate_kinds and static.score < MALICIOUS_THRESHOLD
        if not needs_vm:
            self._settle(rep, static, SOURCE_TRIAGE)
            if result.kind not in self.detonate_kinds or static.score >= MALICIOUS_THRESHOLD:
                self._publish_static(art.sha256, static)
            return rep, None, None
        if self.detonator is None:
            # nothing can run it: the static verdict stands, and is not cached as final
            self._settle(rep, static, SOURCE_TRIAGE)
            rep.findings.append(Finding("not_detonated", 0, "no detonation backend in this run", "scan"))
            return rep, None, None
        from mailvm.job import Job

        job = Job(
            sha256=art.sha256,
            path=art.path,
            name=art.name,
            type=art.type,
            kind=result.kind,
            static_findings=list(result.findings),
            deadline=deadline,
            owner=self._new_owner(),
        )
        if self.table is None:
            return rep, self.detonator.submit(job), job
        claim = self.table.claim(art.sha256, job.owner)
        if claim.won:
            return rep, self.detonator.submit(job), job
        if claim.entry is not None and claim.entry.state == "done":
            self._settle(rep, claim.entry, SOURCE_CACHE)
            return rep, None, None
        return rep, None, job  # someone else is detonating it: wait on the table

    def _pin(self, sha: str) -> Any:
        try:
            return self.pins.get(sha) if self.pins is not None else None
        except Exception as exc:  # a broken pin store must not stop analysis
            log.warning("pins unreadable: %s", exc)
            return None

    def _new_owner(self) -> str:
        """A unique claim owner ``node:pid:random``: two scans in one process never share a
        lease, and the table can tell when the owning process died (``owner_is_dead``)."""
        return f"{self.owner}:{uuid.uuid4().hex[:8]}"

    def _publish_static(self, sha: str, verdict: Verdict) -> None:
        if self.table is None:
            return
        try:
            claim = self.table.claim(sha, self._new_owner())
            if claim.won:
                self.table.publish(sha, verdict)
        except Exception as exc:  # the table is a cache: failing to store is not fatal
            log.warning("could not store static verdict for %s: %s", sha[:12], exc)

    def _wait(self, sha: str, fut: Future | None, job: Any, deadline: float | None) -> Verdict | None:
        """The file's verdict, or None when it is not there by ``deadline``.

        Waiting on the table ends early when the claim went stale (its owner
        died: a killed service) or was released: then this scan takes the claim
        over and queues the file itself, so a restart never leaves it waiting
        for a detonation that nobody runs.
        """
        left = None if deadline is None else max(0.0, deadline - time.monotonic())
        if fut is not None:
            try:
                return fut.result(timeout=left)
            except TimeoutError:  # not finished by the deadline: reported pending
                return None
            except Exception as exc:  # the pool failed the job: an error verdict, not a crash
                log.error("detonation of %s failed: %s", sha[:12], exc)
                return Verdict(verdict=ERROR, findings=[Finding("vm_error", 0, str(exc)[:200], "scan")])
        if self.table is None:
            return None
        end = deadline if deadline is not None else time.monotonic() + self.cfg.pool.job_timeout_s * 3
        while True:
            verdict = self.table.wait(sha, end)
            if verdict is not None or job is None or self.detonator is None or time.monotonic() >= end:
                return verdict
            job.owner = self._new_owner()
            claim = self.table.claim(sha, job.owner)
            if claim.won:
                log.info("taking over the analysis of %s (its claim went stale or was released)", sha[:12])
                fut = self.detonator.submit(job)
                if fut is not None:
                    return self._wait(sha, fut, None, deadline)
            elif claim.entry is not None and claim.entry.state == "done":
                return claim.entry

def _message_findings(res: ExtractionResult) -> list[Finding]:
    """Message-level phishing signs (:mod:`mailvm.triage.phishing`) of a message (a file has no From)."""
    if not res.headers.get("From"):
        return []
    from mailvm.triage import phishing

    names = [a.name for a in res.artifacts if a.role == "attachment"]
    try:
        return phishing.message_findings(phishing.MessageView.from_headers(res.headers, res.text, res.html, names))
    except Exception as exc:  # errors become data: the rest of the scan goes on
        log.warning("message-level phishing analysis failed: %s", exc)
        return [Finding("analyzer_error", 0, f"phishing: {type(exc).__name__}: {exc}", "triage:message")]


def _kind_of(verdict: Verdict, default: str) -> str:
    for entry in verdict.log[:3]:
        if entry.get("type") == "kind" and isinstance(entry.get("kind"), str):
            return entry["kind"]
    return default

