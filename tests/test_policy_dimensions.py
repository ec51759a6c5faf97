"""Policy dimensions that are not verdicts (blocked types, unchecked, encrypted,
not executed), broken domain files, and bypass: decide() and loading."""

from __future__ import annotations

import dataclasses

from mailvm.policy import (
    ActionsPolicy,
    ArtifactOutcome,
    BypassPolicy,
    ClientInfo,
    Policy,
    bypass_for,
    decide,
    decide_for_recipients,
    file_types,
    load_policies,
)
from mailvm.verdict import Finding

SHA = "a" * 64


def art(name="a.bin", verdict="clean", score=0, findings=(), **kw):
    return ArtifactOutcome(SHA, name, verdict, score, tuple(findings), part_id=kw.pop("part_id", "2"), **kw)


def pol(**kw):
    actions = kw.pop("actions", {})
    bypass = kw.pop("bypass", {})
    p = Policy(**kw)
    p.actions = dataclasses.replace(ActionsPolicy(), **actions)
    p.bypass = dataclasses.replace(BypassPolicy(), **bypass)
    return p


def test_file_types_extension_double_extension_real_type_and_kind():
    assert {"pdf", "exe"} <= file_types(art("Invoice.PDF.exe "))
    assert "exe" in file_types(art("invoice.pdf", mime="application/x-dosexec", kind="executable"))
    assert "executable" in file_types(art("x", kind="executable"))
    assert file_types(art("README")) == frozenset()


def test_blocked_type_takes_its_action_but_is_not_a_verdict():
    p = pol(blocked_types=["exe", "js"])
    d = decide(p, [art("setup.exe", mime="application/x-dosexec", kind="executable")])
    assert d.action == "reject" and d.verdict == "clean" and "blocked" in d.flags and d.rule == "actions.blocked"
    assert "blocked type: setup.exe (exe)" in d.reason and d.smtp_code == "550"
    # a renamed PE is still an exe; a member of an archive counts like an attachment
    assert decide(p, [art("scan.pdf", mime="application/x-dosexec")]).action == "reject"
    # nothing blocked: the verdict's action
    assert decide(p, [art("report.pdf", mime="application/pdf", kind="pdf")]).action == "tag"
    # the message body is never a blocked type
    assert decide(p, [art("body.html", role="body", kind="html")]).action == "tag"
    # a stricter verdict action still wins, and tag-for-blocked marks without refusing
    p2 = pol(blocked_types=["exe"], actions={"blocked": "tag"})
    d = decide(p2, [art("setup.exe")])
    assert d.action == "tag" and dict(d.headers)["X-Mailvm-Verdict"] == "clean score=0 blocked"
    assert decide(p2, [art("setup.exe", "malicious", 9)]).action == "reject"


def test_blocked_strip_removes_the_blocked_part_only():
    p = pol(blocked_types=["js"], actions={"blocked": "strip"})
    d = decide(p, [art("ok.pdf", part_id="2"), art("run.js", part_id="3")])
    assert d.action == "strip" and d.strip_parts == ("3",)


def test_unchecked_content_is_never_delivered_silently():
    limit = Finding("archive_limit_exceeded", 2, "depth 6 > 5")
    d = decide(pol(), [art("nested.zip", "suspicious", 5, [limit])])
    assert d.action == "reject" and "unchecked" in d.flags and "archive_limit_exceeded" in d.reason
    assert decide(pol(), [], [Finding("mime_depth_limit_exceeded", 1)]).action == "reject"
    assert decide(pol(), [], [Finding("message_truncated", 4)]).action == "reject"
    assert decide(pol(actions={"unchecked": "quarantine"}), [art("x.zip", findings=[limit])]).action == "quarantine"
    # a link limit is not unchecked content (newsletters have many links)
    assert decide(pol(), [], [Finding("link_limit_exceeded", 1)]).action == "tag"


def test_encrypted_content_goes_to_its_action():
    enc = Finding("encrypted_archive_unopened", 4, "no password opened it")
    d = decide(pol(), [art("secret.zip", "suspicious", 4, [enc])])
    assert d.action == "quarantine" and "encrypted" in d.flags
    assert decide(pol(actions={"encrypted": "reject", "suspicious": "tag"}), [art("s.zip", findings=[enc])]).action == "reject"


def test_not_executed_raises_a_clean_file():
    ne = Finding("not_executed", 0, "missing runtime: mono")
    d = decide(pol(), [art("x.exe", findings=[ne], not_executed="missing runtime: mono")])
    assert d.verdict == "suspicious" and d.score >= 4 and "not_executed" in d.flags
    assert decide(pol(not_executed="clean"), [art("x.exe", not_executed="crash at load")]).verdict == "clean"
    assert decide(pol(not_executed="malicious"), [art("x.exe", not_executed="crash")]).verdict == "malicious"
    # it only raises: a malicious file that did not run stays malicious, a file that ran is untouched
    assert decide(pol(), [art("x.exe", "malicious", 9, not_executed="crash")]).verdict == "malicious"
    assert decide(pol(), [art("x.exe")]).verdict == "clean"


def write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_one_broken_domain_file_defers_that_domain_only(tmp_path):
    d = tmp_path / "policy.d"
    write(d / "good.example.toml", "[actions]\nsuspicious = 'quarantine'\n")
    bad = write(d / "bad.example.toml", "[actions]\nmalicous = 'reject'\n")
    pset = load_policies(None, d)
    assert set(pset.broken) == {"bad.example"}
    good, broken = pset.for_domain("good.example"), pset.for_domain("x.bad.example")
    assert good.actions.suspicious == "quarantine" and not good.error
    dec = decide(broken, [art()])
    assert dec.action == "tempfail" and (dec.smtp_code, dec.smtp_ext) == ("451", "4.3.0")
    assert str(bad) in dec.reason and "actions.malicous" in dec.reason
    # several domains: the broken one defers the whole transaction (the strictest action)
    assert decide_for_recipients([good, broken], [art()]).action == "tempfail"
    # a reload keeps the last good policy of a domain whose file breaks later
    write(d / "good.example.toml", "[actions]\nsuspicous = 'x'\n")
    again = load_policies(None, d, previous=pset)
    assert again.for_domain("good.example").actions.suspicious == "quarantine" and not again.for_domain("good.example").error


def test_bypass_needs_every_domain_and_says_why():
    trusting = pol(bypass={"networks": ["192.0.2.0/24"], "authenticated": True, "senders": ["@partner.example"]})
    strict = pol()
    assert bypass_for([trusting], ClientInfo(ip="192.0.2.7")) == ("detonation", "client 192.0.2.7 in 192.0.2.0/24")
    assert bypass_for([trusting], ClientInfo(ip="198.51.100.1", auth_user="alice"))[0] == "detonation"
    assert bypass_for([trusting], ClientInfo(ip="198.51.100.1", sender="<Bob@Partner.Example>"))[0] == "detonation"
    assert bypass_for([trusting], ClientInfo(ip="198.51.100.1", sender="bob@evil.example")) == ("", "")
    assert bypass_for([trusting, strict], ClientInfo(ip="192.0.2.7")) == ("", "")
    scan = pol(bypass={"networks": ["192.0.2.0/24"], "skip": "scan"})
    assert bypass_for([scan], ClientInfo(ip="192.0.2.7"))[0] == "scan"
    assert bypass_for([scan, trusting], ClientInfo(ip="192.0.2.7"))[0] == "detonation"
    assert bypass_for([trusting], ClientInfo(ip="not an ip")) == ("", "")


def test_bypass_keys_are_validated(tmp_path):
    from mailvm.policy import check_policy_dir

    d = tmp_path / "policy.d"
    write(d / "a.example.toml", "[bypass]\nnetworks = ['300.1.2.3/8']\nskip = 'everything'\nsenders = ['nobody']\n")
    keys = sorted(e.key for e in check_policy_dir(None, d))
    assert keys == ["bypass.networks", "bypass.senders", "bypass.skip"]
    write(d / "a.example.toml", "blocked_types = ['.exe']\nnot_executed = 'maybe'\n")
    assert sorted(e.key for e in check_policy_dir(None, d)) == ["blocked_types", "not_executed"]


def test_report_fields_reach_the_decision():
    """outcomes_from_report carries kind, type, role and the not_executed reason to decide()."""
    from mailvm.milter.service import outcomes_from_report

    report = {"findings": [], "artifacts": [
        {"sha256": "b" * 64, "name": "invoice.pdf", "type": "application/x-dosexec", "kind": "executable",
         "origin": "attachment:invoice.pdf", "role": "attachment", "verdict": "clean", "score": 0,
         "findings": [{"id": "not_executed", "severity": 0, "detail": "crash at load: c0000135"}]}]}
    (o,) = outcomes_from_report(report)
    assert (o.kind, o.mime, o.role, o.not_executed) == ("executable", "application/x-dosexec", "attachment",
                                                         "crash at load: c0000135")
    d = decide(pol(blocked_types=["exe"]), [o])
    assert d.action == "reject" and d.verdict == "suspicious" and set(d.flags) == {"blocked", "not_executed"}


def test_unsupported_architecture_keeps_its_static_verdict():
    arm = art("t64-arm.exe", not_executed="unsupported architecture: a PE for machine arm64, no runtime for it here")
    d = decide(pol(), [arm])
    assert d.verdict == "clean" and "not_executed" in d.flags  # reported, not raised
    assert decide(pol(), [art("x.exe", not_executed="crash at load: c0000135")]).verdict == "suspicious"


def test_a_script_windows_cannot_parse_keeps_its_static_verdict():
    node = art("index.js", not_executed="bad format: the script host could not parse the script (800a03ea)")
    assert decide(pol(), [node]).verdict == "clean"
