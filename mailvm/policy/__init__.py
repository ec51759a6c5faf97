"""Per-recipient-domain policy: the typed model, its loading, and the pure ``decide()``.

The package is split along its seams; each module has one job and they import each
other in one direction only (``tests/test_import_layers.py`` checks it)::

    domains   recipient domains, parent-domain fallback            (no policy imports)
    model     actions, situations, the Policy dataclasses and tables, ArtifactOutcome, Decision
    render    SMTP reply codes and text, templates, header sanitising and folding  <- model
    checks    per-key value checks (VALUE_CHECKS)                  <- model, domains
    load      reading and merging policy files, PolicySet lookup   <- model, domains, checks, render
    bypass    allow-lists (ClientInfo, bypass_for)                 <- model, render
    decide    decide(), decide_for_recipients(), failure/oversize answers, analysis_settings()
                                                                   <- model, render

The rules of ``decide()`` are documented in ``docs/policy.md`` (the decision table) and
on the function itself.  Everything that reaches a header or an SMTP reply from a
message (file names, finding ids) is sanitised and bounded in :mod:`.render`.

Callers import from ``mailvm.policy``: every public name of the modules is re-exported
here, so where a name lives is an internal matter.
"""

from __future__ import annotations

from mailvm.job import AnalysisSettings  # the contract lives in mailvm.job
from mailvm.policy.bypass import ClientInfo, bypass_decision, bypass_for, bypass_reason
from mailvm.policy.checks import (
    MAX_TEMPLATE,
    VALUE_CHECKS,
    address_problem,
    header_name_problem,
    template_problem,
)
from mailvm.policy.decide import (
    analysis_settings,
    blocked_outcomes,
    decide,
    decide_for_recipients,
    decision_report,
    encrypted_findings,
    failure_decision,
    file_types,
    oversize_decision,
    unchecked_findings,
)
from mailvm.policy.domains import normalize_domain, parent_domains, recipient_domain
from mailvm.policy.load import (
    DEFAULT_POLICY_DIR,
    MAX_POLICY_FILE,
    PolicySet,
    check_policy_dir,
    load_policies,
    parse_policy,
)
from mailvm.policy.model import (
    ACCEPT,
    ACTION_RANK,
    ACTIONS,
    ALLOWED_ACTIONS,
    BLOCKED,
    BYPASS_SKIPS,
    DECISION_VERDICTS,
    DEFAULT_REJECT_TEXT,
    DEFAULT_TEMPFAIL_TEXT,
    DELIVERING_ACTIONS,
    DISCARD,
    ENCRYPTED,
    ENCRYPTED_IDS,
    HEADER_ACTIONS,
    HOLD,
    NOT_EXECUTED_EXEMPT,
    NOT_EXECUTED_ID,
    NOT_EXECUTED_VERDICTS,
    NOT_UNCHECKED_PREFIXES,
    NOTIFY_EVENTS,
    OUTCOME_VERDICTS,
    QUARANTINE,
    REJECT,
    SCALAR_KEYS,
    SITUATIONS,
    STRIP,
    TABLES,
    TAG,
    TEMPFAIL,
    TIMEOUT,
    TRIAGE_KINDS,
    UNCHECKED,
    UNCHECKED_IDS,
    UNCHECKED_SUFFIX,
    ActionsPolicy,
    ArtifactOutcome,
    BypassPolicy,
    Decision,
    HeadersPolicy,
    LinksPolicy,
    NotifyPolicy,
    Policy,
    QuarantinePolicy,
    key_doc,
    policy_keys,
)
from mailvm.policy.render import (
    HEADER_LINE,
    MAX_FINDINGS_PER_ARTIFACT,
    MAX_HEADER_VALUE,
    MAX_NAME_IN_HEADER,
    MAX_NAMES_IN_REASON,
    MAX_REASON,
    MAX_REPLY_TEXT,
    REPLY_INTERNAL,
    REPLY_REJECT,
    REPLY_TEMPFAIL,
    REPLY_TOO_BIG,
    safe_name,
    smtp_reply_text,
)

__all__ = [
    # the model
    "ACCEPT", "TAG", "STRIP", "HOLD", "QUARANTINE", "TEMPFAIL", "REJECT", "DISCARD",
    "ACTIONS", "ACTION_RANK", "DELIVERING_ACTIONS", "HEADER_ACTIONS",
    "TIMEOUT", "BLOCKED", "UNCHECKED", "ENCRYPTED", "SITUATIONS", "ALLOWED_ACTIONS",
    "UNCHECKED_IDS", "UNCHECKED_SUFFIX", "NOT_UNCHECKED_PREFIXES", "ENCRYPTED_IDS",
    "NOT_EXECUTED_ID", "NOT_EXECUTED_VERDICTS", "NOT_EXECUTED_EXEMPT", "BYPASS_SKIPS",
    "DECISION_VERDICTS", "OUTCOME_VERDICTS", "TRIAGE_KINDS", "NOTIFY_EVENTS",
    "DEFAULT_REJECT_TEXT", "DEFAULT_TEMPFAIL_TEXT",
    "ActionsPolicy", "LinksPolicy", "QuarantinePolicy", "NotifyPolicy", "BypassPolicy", "HeadersPolicy",
    "Policy", "TABLES", "SCALAR_KEYS", "policy_keys", "key_doc", "ArtifactOutcome", "Decision",
    "AnalysisSettings",
    # checks, domains, loading
    "MAX_TEMPLATE", "VALUE_CHECKS", "address_problem", "header_name_problem", "template_problem",
    "normalize_domain", "parent_domains", "recipient_domain",
    "DEFAULT_POLICY_DIR", "MAX_POLICY_FILE", "PolicySet", "check_policy_dir", "load_policies", "parse_policy",
    # rendering
    "REPLY_REJECT", "REPLY_TEMPFAIL", "REPLY_INTERNAL", "REPLY_TOO_BIG",
    "MAX_REPLY_TEXT", "MAX_REASON", "MAX_HEADER_VALUE", "HEADER_LINE", "MAX_NAME_IN_HEADER",
    "MAX_FINDINGS_PER_ARTIFACT", "MAX_NAMES_IN_REASON", "safe_name", "smtp_reply_text",
    # bypass and decisions
    "ClientInfo", "bypass_reason", "bypass_for", "bypass_decision",
    "analysis_settings", "blocked_outcomes", "decide", "decide_for_recipients", "decision_report",
    "encrypted_findings", "failure_decision", "file_types", "oversize_decision", "unchecked_findings",
]
