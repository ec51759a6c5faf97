"""Static triage: what kind of file an artifact is, what static analyzers say
about it, and whether it must be detonated.

:class:`Triage` is built once (it compiles the YARA rules) and shared by every
thread; :meth:`Triage.analyze` reads at most ``TriageConfig.max_scan_bytes`` of
the file, classifies it (:func:`classify`), runs every analyzer of
:data:`ANALYZERS` that applies to its kind, and scores the findings with
:func:`mailvm.verdict.score_findings`.  One failing analyzer (an exception,
YARA's timeout) is logged and becomes an ``analyzer_error`` finding of
severity 0; the others go on.  docs/triage.md lists every finding id.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Sequence

from mailvm.config import TriageConfig
from mailvm.kinds import DETONATE_KINDS as _DETONATE_KINDS
from mailvm.kinds import KINDS as _KINDS
from mailvm.triage import (
    body,
    elf,
    filetype,
    html,
    lnk,
    mobileconfig,
    office_crypto,
    office_dde,
    office_objects,
    office_vba,
    onenote,
    pdf,
    pe,
    rtf,
    script,
    shortcut,
    svg,
    yarascan,
)
from mailvm.triage.base import Analyzer, Context
from mailvm.triage.kinds import classify, classify_bytes
from mailvm.verdict import ERROR, Artifact, Finding, score_findings

log = logging.getLogger(__name__)

#: the kinds (one list for all of mailvm: mailvm.kinds); static-only kinds are never detonated
KINDS = _KINDS
#: kinds whose files are detonated; archives and emails are containers (their members are artifacts)
DETONATE_KINDS = frozenset(_DETONATE_KINDS)
SLOW_ANALYZER_S = 2.0

_OFFICE = frozenset({"office"})

#: every static analyzer, in the order they run
ANALYZERS: list[Analyzer] = [
    Analyzer("filetype", None, filetype.analyze),
    Analyzer("yara", None, yarascan.analyze, setup=yarascan.setup),
    Analyzer("office_vba", _OFFICE, office_vba.analyze, setup=office_vba.setup),
    Analyzer("office_objects", _OFFICE, office_objects.analyze),
    Analyzer("office_dde", frozenset({"office", "text"}), office_dde.analyze),
    Analyzer("office_crypto", _OFFICE, office_crypto.analyze),
    Analyzer("rtf", _OFFICE, rtf.analyze),
    Analyzer("pdf", frozenset({"pdf"}), pdf.analyze),
    Analyzer("pe", frozenset({"executable"}), pe.analyze),
    Analyzer("elf", frozenset({"executable"}), elf.analyze),
    Analyzer("script", frozenset({"script", "html"}), script.analyze),
    Analyzer("html", frozenset({"html", "script"}), html.analyze),
    Analyzer("lnk", frozenset({"lnk"}), lnk.analyze),
    Analyzer("svg", frozenset({"html"}), svg.analyze),
    Analyzer("onenote", frozenset({"onenote"}), onenote.analyze),
    Analyzer("shortcut", frozenset({"shortcut"}), shortcut.analyze),
    Analyzer("mobileconfig", frozenset({"mobileconfig"}), mobileconfig.analyze),
    # the message's own text and HTML (role "body"): link-only lures
    Analyzer("body", frozenset({"html", "text", "script"}), body.analyze),
]


@dataclass
class TriageResult:
    kind: str
    findings: list[Finding]
    verdict: str
    score: int
    detonate: bool
    errors: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "findings": [f.to_dict() for f in self.findings],
            "verdict": self.verdict,
            "score": self.score,
            "detonate": self.detonate,
            "errors": list(self.errors),
        }


def _merge(findings: list[Finding]) -> list[Finding]:
    """One finding per id (the most severe; errors are all kept)."""
    out: list[Finding] = []
    index: dict[str, int] = {}
    for f in findings:
        if f.id == "analyzer_error":
            out.append(f)
            continue
        i = index.get(f.id)
        if i is None:
            index[f.id] = len(out)
            out.append(f)
        elif f.severity > out[i].severity:
            out[i] = f
    return out


class Triage:
    """Static analysis of artifacts; build once, share between threads (read-only after init)."""

    def __init__(self, cfg: TriageConfig, analyzers: Sequence[Analyzer] | None = None):
        self.cfg = cfg
        self.analyzers: tuple[Analyzer, ...] = tuple(ANALYZERS if analyzers is None else analyzers)
        state: dict[str, Any] = {}
        for a in self.analyzers:
            if a.setup is not None:
                state[a.name] = a.setup(cfg)
        self.state = MappingProxyType(state)

    def _run(self, analyzer: Analyzer, artifact: Artifact, ctx: Context) -> list[Finding]:
        found = analyzer.analyze(artifact, artifact.path, ctx)
        if not isinstance(found, list) or not all(isinstance(f, Finding) for f in found):
            raise TypeError(f"analyzer {analyzer.name} returned {type(found).__name__}, not list[Finding]")
        return found

    def analyze(self, artifact: Artifact) -> TriageResult:
        limit = self.cfg.max_scan_bytes
        try:
            with open(artifact.path, "rb") as fh:
                data = fh.read(limit + 1)
        except OSError as exc:
            log.error("cannot read artifact %s (%s): %s", artifact.name, artifact.path, exc)
            kind = "unknown"
            err = f"read: {exc.strerror or exc}"
            return TriageResult(kind, [Finding("analyzer_error", 0, err, "triage")], ERROR, 0,
                                kind in DETONATE_KINDS, [err])
        truncated = len(data) > limit
        if truncated:
            data = data[:limit]
            kind = classify(artifact)  # the whole file: zip directories live at the end
        else:
            kind = classify_bytes(artifact, data)
        ctx = Context(cfg=self.cfg, kind=kind, data=data, truncated=truncated, state=self.state)
        findings: list[Finding] = []
        if truncated:
            findings.append(Finding("scan_truncated", 1, f"only the first {limit} bytes were analyzed", "triage"))
        for analyzer in self.analyzers:
            if not analyzer.applies(kind):
                continue
            t0 = time.monotonic()
            try:
                findings += self._run(analyzer, artifact, ctx)
            except (Exception, SystemExit) as exc:  # errors become data; SystemExit: pdfid calls sys.exit()
                detail = f"{analyzer.name}: {type(exc).__name__}: {exc}"
                log.warning("triage analyzer %s failed on %s (%s): %s", analyzer.name, artifact.name,
                            artifact.sha256[:12], exc, exc_info=log.isEnabledFor(logging.DEBUG))
                findings.append(Finding("analyzer_error", 0, detail, "triage"))
            elapsed = time.monotonic() - t0
            if elapsed > SLOW_ANALYZER_S:
                log.warning("triage analyzer %s took %.1fs on %s (%d bytes)", analyzer.name, elapsed,
                            artifact.name, len(data))
        findings = _merge(findings)
        errors = [f.detail for f in findings if f.id == "analyzer_error"]  # also those analyzers record themselves
        verdict, score = score_findings(findings)
        return TriageResult(kind, findings, verdict, score, kind in DETONATE_KINDS, errors)


__all__ = ["ANALYZERS", "Analyzer", "Context", "DETONATE_KINDS", "KINDS", "Triage", "TriageResult", "classify"]
