"""How a detonation's outcome becomes a :class:`~mailvm.verdict.Verdict` (pure functions, no I/O).

The pool (:mod:`mailvm.vmpool.pool`) calls these with the job's static
findings and kind, and the guest's result as validated by
:func:`mailvm.vmpool.shmpage.check_result`.

Rules:

* **The host scores.**  The verdict is :func:`mailvm.verdict.score_findings`
  over the static findings plus the guest's findings.  The guest's own
  ``verdict``/``score`` are kept in the log for comparison but decide nothing,
  except that a guest verdict of ``error`` marks the analysis as failed.
* **Guest error.**  When the guest reports ``error`` (its launcher, sandbox or
  monitor failed), the verdict stays ``error`` (score 0, every finding kept)
  unless the findings gathered so far (static plus guest) already score
  ``suspicious`` or ``malicious``: evidence seen before the failure is not
  doubtful.  (This counts the guest's behaviour findings too, not only the
  static ones: a sample that connected to a raw IP and then crashed the
  monitor is still a sample that connected to a raw IP.)
* **Guest timeout.**  A result with the finding ``timed_out`` (severity 0) is
  a normal result: the verdict is scored from the evidence like any other.  A
  sample that did nothing suspicious until the timeout stays ``clean``, and
  the ``timed_out`` finding stays in the findings so the policy and the
  administrator can see the analysis was cut short.
* **Not executed** (contract C1): a result with ``"executed": false`` (the
  guest found no launcher or runtime, the format was bad, the sample crashed at
  load, the launcher failed) is scored like any other, but its ``source`` is
  ``triage``, never ``detonation``: nothing was seen to run, so nothing was
  cleared by running it.  The guest's ``not_executed`` finding (severity 0,
  detail = the reason) is kept next to the static findings (the policy's
  ``not_executed`` key raises such a file's verdict); when the guest omitted
  it, the host adds it.  The ``run`` summary carries ``executed`` and the
  ``execution`` record.
* **No result** (slot failure, deadline, pool closed, file refused):
  :func:`failure_verdict`, ``error`` with one engine finding naming why, under
  the same rule as a guest error (static evidence that is already suspicious
  or malicious stands); its source is ``triage`` too: the file did not run.

The verdict's log starts with ``{"type": "kind", "kind": ...}`` (the scan
pipeline reads a cached file's triage kind from there), then one ``run``
summary (slot, hand-over ms, run s, the guest's verdict, why it stopped,
launcher, event count), then the guest's behaviour log capped at
:data:`MAX_LOG_ENTRIES` entries and :data:`MAX_LOG_BYTES` of JSON.
"""

from __future__ import annotations

import json
from typing import Any, Iterable, Sequence

from mailvm.verdict import ERROR, MALICIOUS, SUSPICIOUS, Finding, Verdict, score_findings

SOURCE = "detonation"
#: the source of a verdict whose file did not run (static evidence only, as far as running it goes)
SOURCE_NOT_RUN = "triage"
NOT_EXECUTED = "not_executed"
#: ``Finding.source`` of the pool's own findings (slot_failed, timed_out in the queue...)
ENGINE = "engine"
#: the guest's behaviour log kept in the verdict: entries, and JSON bytes in all
MAX_LOG_ENTRIES = 200
MAX_LOG_BYTES = 64 * 1024
MAX_LOG_TEXT = 1000


def cap_log(entries: Iterable[Any]) -> list[dict[str, Any]]:
    """The guest's log, capped in entries and bytes; text lines become ``{"type": "text"}`` entries."""
    out: list[dict[str, Any]] = []
    used = 0
    for entry in entries:
        if len(out) >= MAX_LOG_ENTRIES:
            break
        if isinstance(entry, str):
            entry = {"type": "text", "text": entry[:MAX_LOG_TEXT]}
        if not isinstance(entry, dict):
            continue
        try:
            size = len(json.dumps(entry))
        except (TypeError, ValueError):
            continue
        if used + size > MAX_LOG_BYTES:
            break
        used += size
        out.append(entry)
    return out


def event_count(events: Any) -> int | None:
    """How many behaviour events the guest reported (a count, a list or a per-kind object)."""
    if isinstance(events, bool):
        return None
    if isinstance(events, int):
        return events
    if isinstance(events, list):
        return len(events)
    if isinstance(events, dict):
        return sum(v for v in events.values() if isinstance(v, int) and not isinstance(v, bool))
    return None


def guest_findings(raw: Any) -> tuple[list[Finding], int]:
    """Findings from the guest's result; invalid ones are dropped and counted."""
    findings: list[Finding] = []
    bad = 0
    for item in raw if isinstance(raw, list) else []:
        try:
            findings.append(Finding.from_dict(item))
        except (ValueError, TypeError):
            bad += 1
    return findings, bad


def error_unless_evident(findings: list[Finding], **kw: Any) -> Verdict:
    """Verdict ``error`` with ``findings``, unless they already score suspicious or malicious."""
    name, _ = score_findings(findings)
    if name in (SUSPICIOUS, MALICIOUS):
        return Verdict.from_findings(findings, **kw)
    return Verdict(verdict=ERROR, score=0, findings=findings, **kw)


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def compose_verdict(
    static: Sequence[Finding],
    kind: str,
    result: dict[str, Any],
    slot: str,
    run_s: float,
    handover_ms: float,
) -> Verdict:
    """The verdict from the guest's validated ``result`` (see the module docstring)."""
    guest, bad = guest_findings(result.get("findings"))
    findings = list(static) + guest
    if bad:
        findings.append(Finding("guest_bad_finding", 0, f"{bad} malformed finding(s) dropped", ENGINE))
    summary = {
        "type": "run",
        "slot": slot,
        "handover_ms": round(handover_ms, 3),
        "run_s": round(run_s, 3),
        "guest_verdict": str(result.get("verdict", ""))[:32],
        "guest_score": result.get("score") if isinstance(result.get("score"), int) else None,
        "guest_duration_s": _number(result.get("duration_s")),
        "failed": bool(result.get("failed")),
        "error": str(result.get("error") or "")[:300],
        "stopped": str(result.get("stopped", ""))[:64],
        "launcher": str(result.get("launcher", ""))[:64],
        "events": event_count(result.get("events")),
    }
    executed, execution = execution_of(result)
    summary["executed"] = executed
    summary["execution"] = execution
    if not executed and not any(f.id == NOT_EXECUTED for f in findings):
        findings.append(Finding(NOT_EXECUTED, 0, execution.get("reason") or "the guest did not run the file", ENGINE))
    raw_log = result.get("log")
    entries = [{"type": "kind", "kind": kind}, summary] + cap_log(raw_log if isinstance(raw_log, list) else [])
    kw: dict[str, Any] = dict(source=SOURCE if executed else SOURCE_NOT_RUN, slot=slot, duration_s=round(run_s, 3),
                              log=entries)
    if result.get("verdict") == ERROR:
        return error_unless_evident(findings, **kw)
    return Verdict.from_findings(findings, **kw)


def execution_of(result: dict[str, Any]) -> tuple[bool, dict[str, str]]:
    """(ran?, the ``execution`` record) from a guest result; a result that does not say counts as ran only
    when it carries no ``not_executed`` finding (a guest older than contract C1)."""
    raw = result.get("execution")
    execution = {k: str(raw.get(k) or "")[:300] for k in ("launcher", "proof", "reason")} if isinstance(
        raw, dict) else {"launcher": str(result.get("launcher", ""))[:64], "proof": "", "reason": ""}
    flag = result.get("executed")
    if isinstance(flag, bool):
        return flag, execution
    findings = result.get("findings")
    for item in findings if isinstance(findings, list) else []:
        if isinstance(item, dict) and item.get("id") == NOT_EXECUTED:
            execution["reason"] = execution["reason"] or str(item.get("detail") or "")[:300]
            return False, execution
    return True, execution


def failure_verdict(static: Sequence[Finding], kind: str, finding_id: str, detail: str, slot: str = "") -> Verdict:
    """The verdict of a job that produced no result: ``error`` with ``finding_id``, static evidence kept."""
    err = Finding(finding_id, 0, detail, ENGINE)
    return error_unless_evident(
        list(static) + [err], source=SOURCE_NOT_RUN, slot=slot, log=[{"type": "kind", "kind": kind}]
    )
