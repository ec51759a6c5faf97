"""Configuration regression table: (artifact verdicts, recipients) -> action, against the
policy files shipped in contrib/postfix/.

A change to the samples or to decide() that changes one of these answers fails
here, row by row.  Artifact shorthand: ``clean``, ``suspicious``, ``malicious``,
``error``, ``pending``; ``malicious-download`` is a malicious file with no MIME
part (fetched from a link).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from mailvm.policy import ArtifactOutcome, PolicySet, check_policy_dir, decide_for_recipients, load_policies
from mailvm.verdict import Finding

CONTRIB = Path(__file__).resolve().parent.parent / "contrib" / "postfix"

SCORES = {"clean": 0, "suspicious": 5, "malicious": 9, "error": 0, "pending": 0}

DEFAULT = ["user@other.net"]
CORP = ["user@example.com"]
SALES = ["alice@Sales.Example.COM"]
LAB = ["analyst@lab.example.org"]
SUBLAB = ["x@team.lab.example.org"]

TABLE: list[tuple[list[str], list[str], str, str]] = [
    # artifacts, recipients, expected action, policy that decided
    # -- default policy (mailvm.toml [policy]: the built-in defaults)
    ([], DEFAULT, "tag", "default"),
    (["clean"], DEFAULT, "tag", "default"),
    (["suspicious"], DEFAULT, "tag", "default"),
    (["malicious"], DEFAULT, "reject", "default"),
    (["pending"], DEFAULT, "tempfail", "default"),
    (["error"], DEFAULT, "tempfail", "default"),
    (["clean", "pending"], DEFAULT, "tempfail", "default"),
    (["malicious", "pending"], DEFAULT, "reject", "default"),
    (["suspicious", "error"], DEFAULT, "tag", "default"),
    (["malicious-download"], DEFAULT, "reject", "default"),
    (["clean"], ["postmaster"], "tag", "default"),
    (["suspicious"], ["user@notexample.com"], "tag", "default"),
    (["suspicious"], ["user@example.org"], "tag", "default"),  # parent of lab.example.org: no file
    # -- example.com (strict business domain) and its subdomains
    (["clean"], CORP, "tag", "example.com"),
    (["suspicious"], CORP, "quarantine", "example.com"),
    (["malicious"], CORP, "reject", "example.com"),
    (["pending"], CORP, "tempfail", "example.com"),
    (["error"], CORP, "hold", "example.com"),
    (["suspicious", "pending"], CORP, "tempfail", "example.com"),
    (["clean", "error", "pending"], CORP, "tempfail", "example.com"),
    (["suspicious"], SALES, "quarantine", "example.com"),
    (["malicious"], SALES, "reject", "example.com"),
    # -- lab.example.org (research team: nothing refused or delayed)
    (["clean"], LAB, "accept", "lab.example.org"),
    ([], LAB, "accept", "lab.example.org"),
    (["suspicious"], LAB, "tag", "lab.example.org"),
    (["malicious"], LAB, "strip", "lab.example.org"),
    (["malicious", "clean"], LAB, "strip", "lab.example.org"),
    (["malicious-download"], LAB, "quarantine", "lab.example.org"),
    (["pending"], LAB, "tag", "lab.example.org"),
    (["error"], LAB, "tag", "lab.example.org"),
    (["malicious", "pending"], LAB, "strip", "lab.example.org"),
    (["malicious"], SUBLAB, "strip", "lab.example.org"),
    # -- several domains: the strictest action wins
    (["malicious"], LAB + CORP, "reject", "example.com"),
    (["suspicious"], LAB + CORP, "quarantine", "example.com"),
    (["suspicious"], LAB + DEFAULT, "tag", "lab.example.org"),  # tie: first recipient's policy
    (["clean"], LAB + DEFAULT, "tag", "default"),
    (["pending"], LAB + SALES, "tempfail", "example.com"),
    (["error"], DEFAULT + CORP, "tempfail", "default"),
    (["malicious-download"], LAB + DEFAULT, "reject", "default"),
    # -- dimensions that are not verdicts: blocked types, unchecked and encrypted content
    (["clean-exe"], DEFAULT, "tag", "default"),  # no blocked_types by default
    (["clean-exe"], CORP, "reject", "example.com"),  # example.com's common-attachment filter
    (["clean-exe"], LAB, "accept", "lab.example.org"),
    (["suspicious-unchecked"], DEFAULT, "reject", "default"),  # a limit never smuggles content through
    (["clean-unchecked"], CORP, "quarantine", "example.com"),
    (["clean-unchecked"], LAB, "tag", "lab.example.org"),
    (["clean-encrypted"], DEFAULT, "quarantine", "default"),
    (["clean-encrypted"], LAB, "tag", "lab.example.org"),
]


@pytest.fixture(scope="module")
def policies() -> PolicySet:
    assert check_policy_dir(CONTRIB / "mailvm.toml", CONTRIB / "policy.d") == []
    return load_policies(CONTRIB / "mailvm.toml", CONTRIB / "policy.d")


def outcomes(kinds: list[str]) -> list[ArtifactOutcome]:
    result = []
    for i, kind in enumerate(kinds):
        verdict, _, variant = kind.partition("-")
        findings = (Finding(f"{verdict}_rule", SCORES[verdict], "", "test"),) if SCORES[verdict] else ()
        if variant == "unchecked":
            findings += (Finding("archive_limit_exceeded", 2, "nesting deeper than 5", "extract"),)
        if variant == "encrypted":
            findings += (Finding("encrypted_archive_unopened", 4, "no password opened it", "extract"),)
        result.append(
            ArtifactOutcome(
                sha256=f"{i + 1:064x}",
                name=f"file{i}.exe" if variant == "exe" else f"file{i}.bin",
                verdict=verdict,
                score=SCORES[verdict],
                findings=findings,
                part_id=None if variant == "download" else f"part{i}",
            )
        )
    return result


@pytest.mark.parametrize("kinds,rcpts,action,policy", TABLE, ids=[f"{'+'.join(k) or 'none'}->{','.join(r)}" for k, r, _, _ in TABLE])
def test_shipped_policy_table(policies, kinds, rcpts, action, policy):
    pols = [p for _dom, p in policies.for_recipients(rcpts)]
    d = decide_for_recipients(pols, outcomes(kinds))
    assert (d.action, d.policy) == (action, policy), d.reason


def test_lab_header_names_and_strip_parts(policies):
    pols = [p for _dom, p in policies.for_recipients(LAB)]
    d = decide_for_recipients(pols, outcomes(["clean", "malicious", "suspicious"]))
    assert d.action == "strip" and d.strip_parts == ("part1", "part2")
    assert [h for h, _ in d.headers] == ["X-Lab-Mailvm-Verdict", "X-Lab-Mailvm-Report"]


def test_example_com_reject_text(policies):
    pols = [p for _dom, p in policies.for_recipients(CORP)]
    d = decide_for_recipients(pols, outcomes(["malicious"]))
    assert (d.smtp_code, d.smtp_ext) == ("550", "5.7.1")
    assert d.smtp_text == "example.com does not accept this message: malicious: file0.bin (malicious_rule)"


def test_table_covers_every_shipped_policy(policies):
    # the table covers every shipped policy file
    used = {policy for _k, _r, _a, policy in TABLE}
    assert used == {"default", *policies.domains}


def test_extraction_that_stopped_on_an_error_is_not_clean_by_omission():
    """A report whose extraction stopped early gets the error action, not 'clean'."""
    from mailvm.milter.service import outcomes_from_report
    from mailvm.policy import Policy, decide

    report = {"verdict": "clean", "score": 0,
              "findings": [{"id": "extract_error", "severity": 0, "detail": "extraction stopped: RuntimeError"}],
              "artifacts": [{"sha256": "a" * 64, "name": "x.txt", "verdict": "clean", "score": 0,
                             "origin": "attachment:x.txt", "findings": []}]}
    decision = decide(Policy(), outcomes_from_report(report))
    assert decision.verdict == "error" and decision.action == "tempfail"
    report["findings"] = []
    assert decide(Policy(), outcomes_from_report(report)).action == "tag"
