"""``decide()``: one pure function from a policy and what is known about a message to a Decision.

Pure: no I/O, no clock, no globals changed.  From a policy and what the pipeline
knows about each artifact it returns a :class:`~mailvm.policy.model.Decision`: the
action, the SMTP reply for refusals, the parts to strip and the headers to add (their
text comes from :mod:`mailvm.policy.render`).  :func:`decide_for_recipients` lets each
recipient domain decide and keeps the strictest action (order in
:data:`~mailvm.policy.model.ACTIONS`); :func:`failure_decision` and
:func:`oversize_decision` answer when there is nothing to decide on;
:func:`analysis_settings` combines the recipients' policies into what the analysis may do.
The rules are documented on :func:`decide` and in ``docs/policy.md`` (the decision table).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Iterable, Sequence

from mailvm.job import AnalysisSettings
from mailvm.policy.model import (
    ACTION_RANK,
    ACTIONS,
    BLOCKED,
    DECISION_VERDICTS,
    DELIVERING_ACTIONS,
    DISCARD,
    ENCRYPTED,
    ENCRYPTED_IDS,
    HEADER_ACTIONS,
    HOLD,
    NOT_EXECUTED_EXEMPT,
    NOT_UNCHECKED_PREFIXES,
    OUTCOME_VERDICTS,
    QUARANTINE,
    REJECT,
    STRIP,
    TAG,
    TEMPFAIL,
    TIMEOUT,
    UNCHECKED,
    UNCHECKED_IDS,
    UNCHECKED_SUFFIX,
    ArtifactOutcome,
    Decision,
    Policy,
    clamp_score,
)
from mailvm.policy.render import (
    MAX_NAMES_IN_REASON,
    MAX_REASON,
    REPLY_INTERNAL,
    REPLY_REJECT,
    REPLY_TEMPFAIL,
    REPLY_TOO_BIG,
    ascii_text,
    clip,
    fill_template,
    names_text,
    report_headers,
    safe_id,
    safe_name,
    smtp_reply_text,
)
from mailvm.verdict import CLEAN, ERROR, MALICIOUS, PENDING, SUSPICIOUS, Finding, score_findings

_DECISION_RANK = {v: i for i, v in enumerate(DECISION_VERDICTS)}


# --------------------------------------------------------------------------------------
# Combining policies for the analysis (what to detonate, how long to wait)
# --------------------------------------------------------------------------------------


def analysis_settings(policies: Sequence[Policy]) -> AnalysisSettings:
    """What the analysis of a message may do, combined over its recipients' policies: the longest
    wait, every kind any detonating domain detonates, the largest link limits, every password."""
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
# Policy dimensions that are not verdicts
# --------------------------------------------------------------------------------------


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
    return dataclasses.replace(o, verdict=floor, score=max(clamp_score(o.score), 4 if floor == SUSPICIOUS else 7))


def _policy_error_decision(policy: Policy) -> Decision:
    code, ext = REPLY_INTERNAL
    return Decision(
        action=TEMPFAIL, verdict=ERROR, score=0,
        reason=clip(ascii_text(f"error: the policy of {policy.name} is invalid: {policy.error}"), MAX_REASON),
        smtp_code=code, smtp_ext=ext,
        smtp_text=smtp_reply_text(f"mailvm: the policy for {policy.name} is being fixed, please try again later"),
        policy=policy.name, flags=("policy_error",), rule="policy_error",
    )


# --------------------------------------------------------------------------------------
# decide()
# --------------------------------------------------------------------------------------


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
    score = max([clamp_score(o.score) for o in clean_o + susp_o + mal_o] + [msg_score])

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
            what.append(names_text(arts))
        if msg_verdict == known:
            top = sorted(message_findings, key=lambda f: -f.severity)[0]
            what.append(f"message ({safe_id(top.id)})")
        reason = f"{known}: {', '.join(what)}"
        if pend_o:
            reason += f"; {len(pend_o)} not analysed in time"
        if err_o:
            reason += f"; {len(err_o)} failed"
    elif pend_o:
        reason = f"timeout: {len(pend_o)} of {len(outcomes)} files not analysed within {policy.max_wait_s:g} s: {names_text(pend_o)}"
        if err_o:
            reason += f"; {len(err_o)} failed"
    elif err_o:
        reason = f"error: analysis failed for {names_text(err_o)}"
    elif outcomes:
        reason = f"clean: {len(outcomes)} files"
    else:
        reason = "clean: no files"
    if blocked:
        reason += "; blocked type: " + ", ".join(f"{safe_name(o.name, 40)} ({t})" for o, t in blocked[:MAX_NAMES_IN_REASON])
    if unchecked_o or unchecked_msg:
        ids = sorted({f.id for o in unchecked_o for f in unchecked_findings(o.findings)} | {f.id for f in unchecked_msg})
        reason += "; unchecked (a limit stopped the analysis: " + ",".join(safe_id(i) for i in ids[:3]) + ")"
        if unchecked_o:
            reason += ": " + names_text(unchecked_o)
    if encrypted_o or encrypted_msg:
        reason += "; encrypted, not analysed" + (": " + names_text(encrypted_o) if encrypted_o else "")
    reason = clip(ascii_text(reason + fallback), MAX_REASON)

    code = ext = text = None
    values = {
        "verdict": verdict,
        "score": str(score),
        "reason": reason,
        "names": names_text(offending or [o for o, _ in blocked] or unchecked_o or encrypted_o or pend_o or err_o),
        "action": action,
    }
    if action == REJECT:
        code, ext = REPLY_REJECT
        text = smtp_reply_text(fill_template(policy.reject_text, values))
    elif action == TEMPFAIL:
        code, ext = REPLY_TEMPFAIL
        text = smtp_reply_text(fill_template(policy.tempfail_text, values))

    headers: tuple[tuple[str, str], ...] = ()
    if action in HEADER_ACTIONS:
        headers = report_headers(policy, verdict, score, outcomes, message_findings, msg_score, len(pend_o), len(err_o),
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
    reason = clip(ascii_text(f"error: mailvm failed: {detail}"), MAX_REASON)
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
        reason = clip(ascii_text(f"unchecked: {detail}; not analysed"), MAX_REASON)
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
            "score": clamp_score(o.score),
            "part_id": o.part_id,
            "findings": [f.to_dict() for f in o.findings[:50]],
        }
        for o in list(outcomes)[:1000]
    ]
    report["message_findings"] = [f.to_dict() for f in list(message_findings)[:50]]
    return report
