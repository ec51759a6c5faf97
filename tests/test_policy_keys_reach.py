"""Every policy key reaches the place that uses it (issue 14 item 1).

For each key of :func:`mailvm.policy.policy_keys`, a domain whose policy file sets it to a
non-default value must behave differently, at the key's user, from a domain without a file:
the analysis keys in the scan worker's :class:`~mailvm.scan.Scanner` built from the
:class:`~mailvm.job.ScanJob` the milter service hands over (no re-mapping on the way), the
decision keys in the service's decision, the notice keys in its notice plan, the retention in
the quarantine's expiry, the bypass keys in whether and how the message is analysed.

The completeness test fails when a key is added without a probe here.
"""

from __future__ import annotations

import time
from typing import Any, Callable

import pytest

from mailvm.config import parse_config
from mailvm.milter import pipeline
from mailvm.milter.service import MilterService
from mailvm.policy import ClientInfo, policy_keys

SHA = "ab" * 32
PROBE = "u@probe.test"
PLAIN = "u@plain.test"
OUTSIDE = ClientInfo(ip="203.0.113.7", name="mx.outside.example", helo="mx.outside.example", sender="a@b.example")


def _report(verdict="clean", score=0, name="a.pdf", findings=(), message_findings=(), kind="pdf"):
    art = {"sha256": SHA, "name": name, "verdict": verdict, "score": score, "kind": kind, "type": "application/pdf",
           "role": "attachment", "source": "cache", "part_id": SHA,
           "findings": [{"id": i, "severity": s, "detail": "probe"} for i, s in findings]}
    return {"verdict": verdict, "score": score, "artifacts": [art], "headers": {"subject": "probe"},
            "findings": [{"id": i, "severity": s, "detail": "probe"} for i, s in message_findings]}


class Harness:
    """A real MilterService over a policy directory; the scan worker's answer is given per test,
    and the ScanJob it was handed is kept (and turned into the worker's Scanner)."""

    def __init__(self, tmp_path, key_text: str) -> None:
        pdir = tmp_path / "policy.d"
        pdir.mkdir(parents=True)
        (pdir / "probe.test.toml").write_text(key_text)
        self.cfg = parse_config({"spool": {"dir": str(tmp_path / "spool")},
                                 "scantable": {"path": str(tmp_path / "table")},
                                 "quarantine": {"dir": str(tmp_path / "quarantine")}})
        (tmp_path / "spool").mkdir()
        from mailvm.quarantine import QuarantineStore

        self.quarantine = QuarantineStore(str(tmp_path / "quarantine"))
        self.svc = MilterService(self.cfg, None, str(pdir), self.quarantine, b"k" * 32)
        self.report: dict[str, Any] | None = _report()
        self.jobs: list[Any] = []
        self.svc._scan_in_worker = self._worker  # the worker process: its answer is the test's

    def _worker(self, job, progress, hard_deadline, tag):
        self.jobs.append(job)
        return self.report

    def handle(self, rcpt: str, client: ClientInfo = OUTSIDE, sender: str = "a@b.example"):
        self.jobs.clear()
        return self.svc.handle(b"Subject: probe\r\n\r\nhello\r\n", sender, [rcpt], "QPROBE", client=client)

    def scanner(self, rcpt: str):
        """The Scanner the worker builds for this recipient's message, and the job."""
        self.handle(rcpt)
        job = self.jobs[-1]
        worker = pipeline._Worker(self.cfg, triage=None, table=None, detonator="the pool's detonator")
        return pipeline.scanner_for(worker, job), job


def _analysis(get: Callable[[Any, Any], Any]):
    def probe(h: Harness, rcpt: str):
        scanner, job = h.scanner(rcpt)
        return get(scanner, job)
    return probe


def _decision(report: dict[str, Any] | None, get: Callable[[Any], Any] = lambda o: o.decision.action):
    def probe(h: Harness, rcpt: str):
        h.report = report
        return get(h.handle(rcpt))
    return probe


def _notices(event: str):
    def probe(h: Harness, rcpt: str):
        return sorted((n.to, n.audience) for n in h.svc.notice_plan(event, [rcpt]))
    return probe


def _retention(h: Harness, rcpt: str):
    """Whether a 10-day-old quarantined item of the recipient's domain is expired, as the housekeeping
    loop of ``mailvm serve`` asks (per-domain retention from the policies)."""
    domain = rcpt.rpartition("@")[2]
    item = h.quarantine.add(b"Subject: old\r\n\r\nx\r\n", "a@b.example", [rcpt], {"verdict": "malicious"}, domain, "Q")
    pset = h.svc.policies
    removed = h.quarantine.expire(30, now=time.time() + 10 * 86400,
                                  retention_for=lambda d: pset.for_domain(d).quarantine.retention_days)
    return removed, item in [i.id for i in h.quarantine.list()]


def _bypass(client: ClientInfo, sender: str = "a@b.example"):
    def probe(h: Harness, rcpt: str):
        out = h.handle(rcpt, client=client, sender=sender)
        return out.bypass, [j.detonate for j in h.jobs]
    return probe


INSIDE = ClientInfo(ip="198.51.100.9", name="relay.inside.example", helo="relay", auth_user="alice",
                    sender="a@inside.example")

#: key -> (the policy file text that sets it, the probe observing its user)
PROBES: dict[str, tuple[str, Callable[[Harness, str], Any]]] = {
    "max_wait_s": ("max_wait_s = 7\n", _analysis(lambda s, j: round(j.deadline - time.monotonic()))),
    "detonate": ("detonate = false\n", _analysis(lambda s, j: (j.detonate, s.detonator is None))),
    "detonate_kinds": ('detonate_kinds = ["script"]\n', _analysis(lambda s, j: sorted(s.detonate_kinds))),
    "archive_passwords": ('archive_passwords = ["s3cret"]\n', _analysis(lambda s, j: j.settings.archive_passwords)),
    "links.enabled": ("[links]\nenabled = false\n", _analysis(lambda s, j: s.cfg.links.enabled)),
    "links.max_links": ("[links]\nmax_links = 2\n", _analysis(lambda s, j: s.cfg.links.max_links)),
    "links.max_bytes": ("[links]\nmax_bytes = 1000\n", _analysis(lambda s, j: s.cfg.links.max_bytes)),
    "reject_text": ('reject_text = "go away ({verdict})"\n',
                    _decision(_report("malicious", 10, findings=[("x", 10)]), lambda o: o.decision.smtp_text)),
    "tempfail_text": ('tempfail_text = "later please"\n',
                      _decision(_report("error", 0, findings=[("vm_error", 0)]), lambda o: o.decision.smtp_text)),
    "fail_open": ("fail_open = true\n", _decision(None)),
    "not_executed": ('not_executed = "malicious"\n',
                     _decision(_report("clean", 0, name="a.exe", kind="executable",
                                       findings=[("not_executed", 0)]), lambda o: o.decision.verdict)),
    "blocked_types": ('blocked_types = ["exe"]\n', _decision(_report("clean", 0, name="a.exe", kind="executable"))),
    "actions.clean": ('[actions]\nclean = "hold"\n', _decision(_report())),
    "actions.suspicious": ('[actions]\nsuspicious = "reject"\n', _decision(_report("suspicious", 5, findings=[("x", 5)]))),
    "actions.malicious": ('[actions]\nmalicious = "hold"\n', _decision(_report("malicious", 10, findings=[("x", 10)]))),
    "actions.timeout": ('[actions]\ntimeout = "tag"\n', _decision(_report("pending", 0))),
    "actions.error": ('[actions]\nerror = "tag"\n', _decision(_report("error", 0, findings=[("vm_error", 0)]))),
    "actions.blocked": ('blocked_types = ["exe"]\n[actions]\nblocked = "hold"\n',
                        _decision(_report("clean", 0, name="a.exe", kind="executable"))),
    "actions.unchecked": ('[actions]\nunchecked = "tag"\n', _decision(_report(findings=[("file_truncated", 0)]))),
    "actions.encrypted": ('[actions]\nencrypted = "hold"\n',
                          _decision(_report(findings=[("encrypted_archive_unopened", 0)]))),
    "headers.verdict": ('[headers]\nverdict = "X-Probe-Verdict"\n',
                        _decision(_report(), lambda o: [n for n, _ in o.decision.headers])),
    "headers.report": ('[headers]\nreport = "X-Probe-Report"\n',
                       _decision(_report(), lambda o: [n for n, _ in o.decision.headers])),
    "quarantine.notify": ('quarantine = { notify = "qa@probe.test" }\n', _notices("quarantine")),
    "quarantine.retention_days": ("[quarantine]\nretention_days = 5\n", _retention),
    "notify.admin": ('[notify]\nadmin = ["adm@probe.test"]\n', _notices("hold")),
    "notify.recipients": ("[notify]\nrecipients = true\n", _notices("quarantine")),
    "notify.events": ('[notify]\nadmin = ["adm@probe.test"]\nevents = ["hold"]\n', _notices("quarantine")),
    "bypass.networks": ('[bypass]\nnetworks = ["198.51.100.0/24"]\n', _bypass(INSIDE)),
    "bypass.authenticated": ("[bypass]\nauthenticated = true\n", _bypass(INSIDE)),
    "bypass.auth_users": ('[bypass]\nauth_users = ["alice"]\n', _bypass(INSIDE)),
    "bypass.senders": ('[bypass]\nsenders = ["@inside.example"]\n', _bypass(INSIDE, "a@inside.example")),
    "bypass.skip": ('[bypass]\nauthenticated = true\nskip = "scan"\n', _bypass(INSIDE)),
}

#: keys whose probe compares against a control domain that sets a companion key too
CONTROL_TEXT = {
    # whom `notify.events` silences must first be told: the control has the same admin, default events
    "notify.events": '[notify]\nadmin = ["adm@probe.test"]\n',
    # `bypass.skip` changes what a bypass skips: the control bypasses with the default (detonation)
    "bypass.skip": "[bypass]\nauthenticated = true\n",
    # `actions.blocked` is the action for blocked types: the control blocks with the default action
    "actions.blocked": 'blocked_types = ["exe"]\n',
}


def test_every_policy_key_has_a_probe():
    assert set(PROBES) == set(policy_keys()), "a policy key without a probe (or a probe for no key)"


@pytest.mark.parametrize("key", sorted(PROBES))
def test_the_key_reaches_its_user(tmp_path, key):
    text, probe = PROBES[key]
    with_key = Harness(tmp_path / "with", text)
    control = Harness(tmp_path / "control", CONTROL_TEXT.get(key, "# defaults\n"))
    seen, default = probe(with_key, PROBE), probe(control, PROBE)
    assert seen != default, f"{key}: setting it changed nothing where it is used ({seen!r})"
    # and a domain without a policy file in the same service keeps the defaults
    if key not in CONTROL_TEXT:
        assert probe(with_key, PLAIN) == default, f"{key}: leaked to another domain"
