"""Policy loading (defaults, merge, parent domains, errors) and the decide() rules."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mailvm.config import ConfigError, load_config
from mailvm.policy import (
    ACTIONS,
    ALLOWED_ACTIONS,
    MAX_HEADER_VALUE,
    REPLY_INTERNAL,
    REPLY_REJECT,
    REPLY_TEMPFAIL,
    ArtifactOutcome,
    Policy,
    PolicySet,
    analysis_settings,
    check_policy_dir,
    decide,
    decide_for_recipients,
    decision_report,
    failure_decision,
    key_doc,
    load_policies,
    normalize_domain,
    parse_policy,
    policy_keys,
    recipient_domain,
)
from mailvm.verdict import Finding

ROOT = Path(__file__).resolve().parent.parent
SHA_A = "a" * 64
SHA_B = "b" * 64
SHA_C = "c" * 64


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def art(verdict: str, name: str = "f.bin", sha: str = SHA_A, score: int | None = None, part: str | None = "1", fids=()) -> ArtifactOutcome:
    if score is None:
        score = {"clean": 0, "suspicious": 5, "malicious": 9}.get(verdict, 0)
    return ArtifactOutcome(sha, name, verdict, score, tuple(Finding(f, 8, "", "t") for f in fids), part)


def pol(**actions: str) -> Policy:
    p = Policy()
    p.actions = dataclasses.replace(p.actions, **actions)
    return p


# --------------------------------------------------------------------------- loading


def test_builtin_defaults():
    ps = load_policies(None, None)
    d = ps.default
    assert (d.actions.clean, d.actions.suspicious, d.actions.malicious, d.actions.timeout, d.actions.error) == (
        "tag", "tag", "reject", "tempfail", "tempfail")
    assert d.max_wait_s == 120.0 and d.fail_open is False and d.detonate is True
    assert d.headers.verdict == "X-Mailvm-Verdict" and d.headers.report == "X-Mailvm-Report"
    assert ps.for_domain("example.com") is d


def test_global_policy_table_and_other_sections_ignored(tmp_path):
    g = write(tmp_path / "mailvm.toml", """
[pool]
slots = 4
[policy]
max_wait_s = 60
[policy.actions]
malicious = "discard"
""")
    ps = load_policies(g, None)
    assert ps.default.max_wait_s == 60.0 and isinstance(ps.default.max_wait_s, float)
    assert ps.default.actions.malicious == "discard"
    assert ps.default.actions.suspicious == "tag"
    # a global file without [policy] gives the defaults
    g2 = write(tmp_path / "empty.toml", "[pool]\nslots = 2\n")
    assert load_policies(g2, None).default.actions == Policy().actions


def test_domain_file_merges_over_global(tmp_path):
    g = write(tmp_path / "mailvm.toml", '[policy]\nmax_wait_s = 60\n[policy.actions]\nmalicious = "discard"\n')
    write(tmp_path / "policy.d" / "example.com.toml", '[actions]\nsuspicious = "quarantine"\n[links]\nenabled = false\n')
    ps = load_policies(g, tmp_path / "policy.d")
    p = ps.for_domain("example.com")
    assert p.name == "example.com"
    assert p.actions.suspicious == "quarantine"
    assert p.actions.malicious == "discard"  # from the global [policy]
    assert p.max_wait_s == 60.0
    assert p.links.enabled is False and p.links.max_links == 10
    # the global default is not changed by the domain file
    assert ps.default.actions.suspicious == "tag" and ps.default.links.enabled is True


def test_parent_domain_fallback(tmp_path):
    d = tmp_path / "policy.d"
    write(d / "example.com.toml", 'max_wait_s = 30\n')
    write(d / "b.example.com.toml", 'max_wait_s = 40\n')
    write(d / "xn--bcher-kva.example.toml", 'max_wait_s = 50\n')
    ps = load_policies(None, d)
    assert ps.for_domain("a.b.example.com").max_wait_s == 40
    assert ps.for_domain("b.example.com").max_wait_s == 40
    assert ps.for_domain("c.example.com").max_wait_s == 30
    assert ps.for_domain("EXAMPLE.COM.").max_wait_s == 30
    assert ps.for_domain("notexample.com").name == "default"  # label boundary, not a suffix match
    assert ps.for_domain("com").name == "default"
    assert ps.for_domain("bücher.example").max_wait_s == 50  # IDNA
    assert ps.for_domain("shop.BÜCHER.example").max_wait_s == 50
    assert ps.for_domain("").name == "default"
    assert ps.for_domain("../../etc").name == "default"


def test_for_recipients(tmp_path):
    d = tmp_path / "policy.d"
    write(d / "example.com.toml", 'max_wait_s = 30\n')
    ps = load_policies(None, d)
    got = ps.for_recipients(["<A@Sales.Example.COM>", "b@example.com", "c@other.net", "postmaster", "d@sales.example.com"])
    assert [(dom, p.name) for dom, p in got] == [
        ("sales.example.com", "example.com"),
        ("example.com", "example.com"),
        ("other.net", "default"),
        ("", "default"),
    ]


def test_recipient_domain_parsing():
    assert recipient_domain("<user@Example.COM>") == "example.com"
    assert recipient_domain('"a@b"@example.com') == "example.com"
    assert recipient_domain("<@relay.net:user@example.com>") == "example.com"
    assert recipient_domain("user") is None
    assert recipient_domain("user@exa mple.com") is None
    assert normalize_domain("a_b.com") is None
    assert normalize_domain("-a.com") is None
    assert normalize_domain("x" * 64 + ".com") is None
    assert normalize_domain("xn--zz.com") is None  # not a valid A-label


def _one_error(tmp_path, name: str, text: str) -> ConfigError:
    d = tmp_path / f"policy.d-{name}"
    f = write(d / name, text)
    # a broken domain file does not stop loading: that domain is set aside (its mail deferred)
    pset = load_policies(None, d)
    domain = normalize_domain(name[: -len(".toml")])
    if domain is not None:  # a file meant for a domain defers that domain's mail until it is fixed
        assert list(pset.broken) == [domain] and pset.for_domain(domain).error
    else:  # a name that is no domain at all is ignored, loudly
        assert pset.broken == {} and pset.domains == {}
    errs = check_policy_dir(None, d)
    assert len(errs) == 1, errs
    if domain is not None:
        assert pset.broken[domain] == str(errs[0])
    assert errs[0].file == str(f)
    return errs[0]


def test_unknown_key_names_file_and_key(tmp_path):
    e = _one_error(tmp_path, "example.com.toml", '[actions]\nmalicous = "reject"\n')
    assert e.key == "actions.malicous"
    assert e.problem.startswith("unknown key")
    assert str(e).startswith(f"{tmp_path}/policy.d-example.com.toml/example.com.toml: actions.malicous: unknown key")


def test_unknown_top_level_key_and_table(tmp_path):
    assert _one_error(tmp_path, "a.com.toml", "max_wait = 5\n").key == "max_wait"
    e = _one_error(tmp_path, "b.com.toml", "[action]\nclean = 'tag'\n")
    assert e.key == "action" and "unknown key" in e.problem
    e = _one_error(tmp_path, "c.com.toml", "actions = 'tag'\n")
    assert e.key == "actions" and "table" in e.problem


def test_unknown_key_in_global_file(tmp_path):
    g = write(tmp_path / "mailvm.toml", '[policy.actions]\nmalicous = "reject"\n')
    with pytest.raises(ConfigError) as ei:
        load_policies(g, None)
    assert ei.value.key == "policy.actions.malicous" and ei.value.file == str(g)


@pytest.mark.parametrize(
    "text,key,needle",
    [
        ('[actions]\nmalicious = "explode"\n', "actions.malicious", "unknown action"),
        ('[actions]\nmalicious = "accept"\n', "actions.malicious", "not allowed"),
        ('[actions]\nclean = "strip"\n', "actions.clean", "not allowed"),
        ('[actions]\ntimeout = "discard"\n', "actions.timeout", "not allowed"),
        ('[actions]\nerror = "reject"\n', "actions.error", "not allowed"),
        ('[actions]\nsuspicious = 3\n', "actions.suspicious", "string"),
        ('max_wait_s = "fast"\n', "max_wait_s", "number"),
        ("max_wait_s = 0\n", "max_wait_s", ">= 1"),
        ("max_wait_s = 601\n", "max_wait_s", "<= 600"),
        ('detonate = "yes"\n', "detonate", "true or false"),
        ('detonate_kinds = ["exe"]\n', "detonate_kinds", "unknown kind"),
        ('detonate_kinds = ["pdf", "pdf"]\n', "detonate_kinds", "duplicate"),
        ("detonate_kinds = [1]\n", "detonate_kinds", "list of str"),
        ('archive_passwords = [""]\n', "archive_passwords", "1-256"),
        ("[links]\nmax_links = -1\n", "links.max_links", ">= 0"),
        ('[quarantine]\nnotify = "not an address"\n', "quarantine.notify", "e-mail address"),
        ('[quarantine]\nnotify = "a@b..c"\n', "quarantine.notify", "e-mail address"),
        ("[quarantine]\nretention_days = 0\n", "quarantine.retention_days", ">= 1"),
        ('[headers]\nverdict = "X Bad"\n', "headers.verdict", "RFC 5322"),
        ('[headers]\nverdict = "X-Bad:"\n', "headers.verdict", "RFC 5322"),
        ('[headers]\nverdict = ""\n', "headers.verdict", "RFC 5322"),
        ('[headers]\nverdict = "X-Vérdict"\n', "headers.verdict", "RFC 5322"),
        ('[headers]\nreport = "Subject"\n', "headers.report", "reserved"),
        ('[headers]\nreport = "x-mailvm-release"\n', "headers.report", "reserved"),
        ('[headers]\nreport = "X-Mailvm-Verdict"\n', "headers.report", "differ"),
        ('reject_text = "{foo}"\n', "reject_text", "unknown placeholder"),
        ('reject_text = "{reason!r}"\n', "reject_text", "unknown placeholder"),
        ('reject_text = "{reason.__class__}"\n', "reject_text", "unknown placeholder"),
        ('reject_text = "a\\r\\nb"\n', "reject_text", "printable ASCII"),
        ('tempfail_text = "oops {"\n', "tempfail_text", "bad template"),
        ('tempfail_text = "ünïcode"\n', "tempfail_text", "printable ASCII"),
    ],
)
def test_bad_values(tmp_path, text, key, needle):
    e = _one_error(tmp_path, "example.com.toml", text)
    assert e.key == key
    assert needle in e.problem, e.problem


@pytest.mark.parametrize(
    "name",
    ["Example.com.toml", "bücher.example.toml", "-bad.com.toml", "a..b.toml", "a_b.com.toml", "foo bar.toml", "x.com..toml"],
)
def test_invalid_domain_file_names(tmp_path, name):
    e = _one_error(tmp_path, name, "max_wait_s = 5\n")
    assert e.key == "-" and "file name" in e.problem


def test_ignored_files_and_bad_toml(tmp_path):
    d = tmp_path / "policy.d"
    write(d / "README", "not toml")
    write(d / "example.com.toml~", "garbage = = =")
    write(d / ".example.com.toml.swp", "garbage")
    assert load_policies(None, d).domains == {}
    write(d / "example.com.toml", "max_wait_s = = 3")
    errs = check_policy_dir(None, d)
    assert len(errs) == 1 and errs[0].key == "-" and "TOML" in errs[0].problem
    (d / "sub.com.toml").mkdir()
    assert any("regular file" in e.problem for e in check_policy_dir(None, d))


def test_missing_directory_is_an_error(tmp_path):
    errs = check_policy_dir(None, tmp_path / "nope")
    assert len(errs) == 1 and "cannot read directory" in errs[0].problem


def test_check_policy_dir_collects_every_error(tmp_path):
    g = write(tmp_path / "mailvm.toml", '[policy]\nmax_wait_s = 9999\n[policy.headers]\nverdict = "Bad Name"\n')
    d = tmp_path / "policy.d"
    write(d / "example.com.toml", '[actions]\nmalicous = "reject"\nsuspicious = "explode"\n[links]\nmax_links = "ten"\n')
    write(d / "Upper.com.toml", "max_wait_s = 1\n")
    write(d / "ok.org.toml", '[actions]\nmalicious = "discard"\n')
    write(d / "broken.net.toml", "[[[")
    errs = check_policy_dir(g, d)
    got = sorted((Path(e.file).name, e.key) for e in errs)
    assert got == sorted([
        ("mailvm.toml", "policy.max_wait_s"),
        ("mailvm.toml", "policy.headers.verdict"),
        ("example.com.toml", "actions.malicous"),
        ("example.com.toml", "actions.suspicious"),
        ("example.com.toml", "links.max_links"),
        ("Upper.com.toml", "-"),
        ("broken.net.toml", "-"),
    ])
    with pytest.raises(ConfigError):
        load_policies(g, d)


def test_parse_policy_raises_without_collector():
    with pytest.raises(ConfigError) as ei:
        parse_policy({"actions": {"clean": "reject"}}, "x.toml")
    assert ei.value.key == "actions.clean"


def test_shipped_sample_documents_every_key_and_loads():
    sample = (ROOT / "contrib/postfix/mailvm.toml").read_text()
    docs = (ROOT / "docs/policy.md").read_text()
    current = None
    seen = set()
    for line in sample.splitlines():
        m = re.match(r"^\[(policy(?:\.\w+)?)\]", line)
        if m:
            current = m.group(1)
            continue
        m = re.match(r"^# (\w+) = ", line)
        if m and current and current.startswith("policy"):
            table = current[len("policy."):] if "." in current else ""
            seen.add(f"{table}.{m.group(1)}" if table else m.group(1))
    assert seen == set(policy_keys())
    rows = {m.group(1): line for line in docs.splitlines() if (m := re.match(r"^\| `([\w.]+)` \|", line))}
    for key in policy_keys():
        assert key in rows, f"docs/policy.md has no table row for {key}"
        _type, default, _doc = key_doc(key)
        assert f"`{_toml(default)}`" in rows[key], f"docs/policy.md: wrong default for {key}"
    # the sample is accepted by both loaders, and its commented defaults are the defaults
    assert load_policies(ROOT / "contrib/postfix/mailvm.toml", None).default.actions == Policy().actions
    load_config(ROOT / "contrib/postfix/mailvm.toml")
    assert check_policy_dir(ROOT / "contrib/postfix/mailvm.toml", ROOT / "contrib/postfix/policy.d") == []


def _toml(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return f'"{v}"'
    if isinstance(v, list):
        return "[" + ", ".join(_toml(x) for x in v) + "]"
    return repr(v)


def test_sample_documents_every_global_config_key():
    from mailvm.config import SECTIONS

    sample = (ROOT / "contrib/postfix/mailvm.toml").read_text()
    for section, cls in SECTIONS.items():
        body = sample.split(f"\n[{section}]\n", 1)
        assert len(body) == 2, f"[{section}] missing from the sample"
        block = body[1].split("\n[", 1)[0]
        for f in dataclasses.fields(cls):
            assert re.search(rf"^# {f.name} = ", block, re.M), f"{section}.{f.name} missing from the sample"


# --------------------------------------------------------------------------- decide()


def test_no_artifacts_is_clean():
    d = decide(Policy(), [])
    assert (d.action, d.verdict, d.score) == ("tag", "clean", 0)
    assert dict(d.headers)["X-Mailvm-Verdict"] == "clean score=0"
    assert d.smtp_code is None and d.strip_parts == ()


@pytest.mark.parametrize(
    "verdicts,action,verdict",
    [
        (["clean"], "tag", "clean"),
        (["clean", "clean"], "tag", "clean"),
        (["suspicious"], "tag", "suspicious"),
        (["clean", "suspicious"], "tag", "suspicious"),
        (["malicious"], "reject", "malicious"),
        (["clean", "suspicious", "malicious"], "reject", "malicious"),
        (["pending"], "tempfail", "timeout"),
        (["clean", "pending"], "tempfail", "timeout"),
        (["malicious", "pending"], "reject", "malicious"),  # no point waiting
        (["error"], "tempfail", "error"),
        (["clean", "error"], "tempfail", "error"),
        (["suspicious", "error"], "tag", "suspicious"),  # suspicious decided: its action
        (["malicious", "error"], "reject", "malicious"),
        (["error", "pending"], "tempfail", "timeout"),
        (["bogus-verdict"], "tempfail", "error"),  # unknown verdict strings count as errors
    ],
)
def test_default_policy_table(verdicts, action, verdict):
    outs = [art(v, f"f{i}.bin", sha=f"{i:064x}", part=str(i)) for i, v in enumerate(verdicts)]
    d = decide(Policy(), outs)
    assert (d.action, d.verdict) == (action, verdict)
    if action == "reject":
        assert (d.smtp_code, d.smtp_ext) == REPLY_REJECT
    elif action == "tempfail":
        assert (d.smtp_code, d.smtp_ext) == REPLY_TEMPFAIL
    else:
        assert d.smtp_code is None and d.smtp_text is None


def test_pending_combines_with_the_known_verdict():
    p = pol(suspicious="tag", timeout="tempfail")
    assert decide(p, [art("suspicious"), art("pending", sha=SHA_B)]).action == "tempfail"
    p = pol(suspicious="reject", timeout="tempfail")
    assert decide(p, [art("suspicious"), art("pending", sha=SHA_B)]).action == "reject"
    p = pol(suspicious="quarantine", timeout="accept")
    assert decide(p, [art("suspicious"), art("pending", sha=SHA_B)]).action == "quarantine"
    p = pol(clean="hold", timeout="accept")
    assert decide(p, [art("clean"), art("pending", sha=SHA_B)]).action == "hold"
    p = pol(timeout="accept", clean="accept")
    d = decide(p, [art("clean"), art("pending", sha=SHA_B)])
    assert d.action == "accept" and d.verdict == "timeout" and d.headers == ()


def test_malicious_shortcut_does_not_deliver_unanalysed_files():
    # malicious = tag (monitor mode) delivers; a pending file must not ride along
    p = pol(malicious="tag", timeout="tempfail")
    assert decide(p, [art("malicious"), art("pending", sha=SHA_B)]).action == "tempfail"
    p = pol(malicious="tag", timeout="tag")
    assert decide(p, [art("malicious"), art("pending", sha=SHA_B)]).action == "tag"
    p = pol(malicious="discard", timeout="tempfail")
    assert decide(p, [art("malicious"), art("pending", sha=SHA_B)]).action == "discard"


def test_reason_names_the_offender():
    d = decide(Policy(), [art("clean", "ok.txt", sha=SHA_B), art("malicious", "invoice.exe", fids=("eicar",))])
    assert d.reason == "malicious: invoice.exe (eicar)"
    assert "invoice.exe (eicar)" in d.smtp_text
    assert d.score == 9


def test_message_level_findings():
    mf = [Finding("link_to_executable", 8, "http://x/a.exe", "links")]
    d = decide(Policy(), [], mf)
    assert (d.action, d.verdict, d.score) == ("reject", "malicious", 8)
    assert "message (link_to_executable)" in d.reason
    # three distinct findings of severity 5 corroborate: 6, suspicious
    mf = [Finding(f"f{i}", 5) for i in range(3)]
    d = decide(pol(suspicious="hold"), [art("clean")], mf)
    assert (d.action, d.verdict, d.score) == ("hold", "suspicious", 6)
    assert "message score=6" in dict(d.headers)["X-Mailvm-Report"]


def test_strip_names_offending_parts():
    p = pol(malicious="strip", suspicious="strip")
    outs = [
        art("clean", "a.txt", sha="1" * 64, part="1"),
        art("suspicious", "b.doc", sha="2" * 64, part="2"),
        art("malicious", "c.exe", sha="3" * 64, part="3"),
        art("malicious", "d.exe", sha="4" * 64, part="3"),  # two members of one attachment
    ]
    d = decide(p, outs)
    assert d.action == "strip" and d.strip_parts == ("3", "2")
    assert dict(d.headers)["X-Mailvm-Verdict"] == "malicious score=9"


def test_strip_falls_back_to_quarantine():
    p = pol(malicious="strip")
    d = decide(p, [art("malicious", "dl.exe", part=None)])  # a download: no MIME part to cut
    assert d.action == "quarantine" and d.strip_parts == () and "strip impossible" in d.reason
    d = decide(p, [art("clean")], [Finding("link_to_malware", 9)])
    assert d.action == "quarantine"


def test_headers_only_for_delivered_or_kept_messages():
    for action in ("tag", "hold", "quarantine"):
        d = decide(pol(suspicious=action), [art("suspicious")])
        assert [h for h, _ in d.headers] == ["X-Mailvm-Verdict", "X-Mailvm-Report"]
    for action in ("accept", "tempfail", "reject", "discard"):
        assert decide(pol(suspicious=action), [art("suspicious")]).headers == ()
    p = Policy()
    p.headers = dataclasses.replace(p.headers, verdict="X-Scan", report="X-Scan-Report")
    d = decide(p, [art("pending"), art("error", sha=SHA_B)])
    assert d.headers == () and d.action == "tempfail"
    p.actions = dataclasses.replace(p.actions, timeout="tag")
    d = decide(p, [art("pending"), art("error", sha=SHA_B)])
    assert d.action == "tempfail"  # the error action is stricter than the timeout's
    p.actions = dataclasses.replace(p.actions, error="tag")
    d = decide(p, [art("pending"), art("error", sha=SHA_B)])
    assert dict(d.headers)["X-Scan"] == "timeout score=0 pending=1 errors=1"


def test_decide_is_pure():
    p = Policy()
    outs = [art("malicious", fids=("x",)), art("pending", sha=SHA_B)]
    before = repr(p), repr(outs)
    assert decide(p, outs) == decide(p, outs)
    assert (repr(p), repr(outs)) == before


def test_reject_text_escaping():
    p = Policy()
    p.reject_text = "100% sure: {reason} ({names}, score {score})"
    hostile = "evil%s%n\r\n550 5.0.0 injected\r\n.exe"
    d = decide(p, [art("malicious", hostile, fids=("x%y",))])
    t = d.smtp_text
    assert "\r" not in t and "\n" not in t
    assert "100%% sure" in t
    assert "%" not in t.replace("%%", "")  # every % is doubled
    assert all(0x20 <= ord(c) < 0x7F for c in t)
    assert len(t) <= 400
    assert "\r" not in d.reason and "\n" not in d.reason


def test_reply_text_bounded_with_many_artifacts():
    outs = [art("malicious", "x" * 300 + f"{i}.exe", sha=f"{i:064x}", fids=("y" * 80,)) for i in range(200)]
    d = decide(Policy(), outs)
    assert len(d.smtp_text) <= 400 and len(d.reason) <= 300


def _check_header(value: str, limit: int = MAX_HEADER_VALUE) -> None:
    assert "\r" not in value
    assert len(value) <= limit
    for i, ch in enumerate(value):
        if ch == "\n":
            assert value[i + 1 : i + 2] in (" ", "\t"), "a fold must be followed by whitespace"
    for line in value.split("\n"):
        assert len(line) <= 998
        assert all(0x20 <= ord(c) < 0x7F for c in line)


def test_report_header_bounded_with_200_hostile_artifacts():
    hostile = "\u202eexe.txt\r\nX-Injected: yes\x00;\"'<script>" * 10
    outs = [
        art("clean" if i % 3 else "malicious", hostile + str(i), sha=f"{i:064x}", fids=("a\r\nb", "c;d", "e" * 100))
        for i in range(200)
    ]
    d = decide(pol(malicious="tag"), outs)
    report = dict(d.headers)["X-Mailvm-Report"]
    _check_header(report)
    assert re.search(r"\+\d+ more$", report)
    assert "X-Injected:" not in report.replace("X-Injected_", "")
    first = report.replace("\n", "").split("; ")[0]
    assert " malicious " in first  # worst files first
    assert len(report.split("\n")[0]) <= 80


def test_report_header_lists_each_artifact():
    outs = [
        art("malicious", "invoice.exe", sha="0123456789ab" + "0" * 52, fids=("eicar", "pe_packed")),
        art("clean", "notes.txt", sha="fedcba987654" + "1" * 52),
    ]
    d = decide(pol(malicious="tag"), outs)
    report = dict(d.headers)["X-Mailvm-Report"].replace("\n", "")  # unfold
    assert report == "invoice.exe 0123456789ab malicious score=9 (eicar,pe_packed); notes.txt fedcba987654 clean"


# hostile names, ids, verdicts and scores: decide never raises and never lets CR/LF through
_text = st.text(st.characters(min_codepoint=0, max_codepoint=0x10FFFF), max_size=300)
_outcome = st.builds(
    ArtifactOutcome,
    sha256=st.one_of(_text, st.from_regex(r"[0-9a-f]{64}", fullmatch=True)),
    name=_text,
    verdict=st.one_of(st.sampled_from(["clean", "suspicious", "malicious", "error", "pending"]), _text),
    score=st.integers(-1000, 1000),
    findings=st.lists(st.builds(Finding, id=_text, severity=st.integers(-5, 20), detail=_text), max_size=5).map(tuple),
    part_id=st.one_of(st.none(), _text),
)


@settings(max_examples=150, deadline=None)
@given(outs=st.lists(_outcome, max_size=40), action=st.sampled_from(ALLOWED_ACTIONS["malicious"]),
       sact=st.sampled_from(ALLOWED_ACTIONS["suspicious"]), tact=st.sampled_from(ALLOWED_ACTIONS["timeout"]))
def test_decide_total_on_hostile_input(outs, action, sact, tact):
    p = pol(malicious=action, suspicious=sact, timeout=tact)
    p.reject_text = "{reason} {names} {verdict} {score} {action} 50%"
    p.tempfail_text = p.reject_text
    d = decide(p, outs)
    assert d.action in ACTIONS
    assert 0 <= d.score <= 10
    for _name, value in d.headers:
        _check_header(value)
    for text in (d.reason, d.smtp_text or ""):
        assert "\r" not in text and "\n" not in text and "\x00" not in text
    if d.smtp_text:
        assert len(d.smtp_text) <= 400 and "%" not in d.smtp_text.replace("%%", "")
    assert decide(p, outs) == d
    decision_report(d, outs)  # JSON-able summary never raises


# --------------------------------------------------------------------------- several domains


def _named(name: str, **actions: str) -> Policy:
    p = pol(**actions)
    p.name = name
    return p


def test_strictest_action_wins():
    lab = _named("lab", malicious="tag", suspicious="accept")
    corp = _named("corp", malicious="quarantine", suspicious="hold")
    strict = _named("strict", malicious="discard", suspicious="reject")
    mal = [art("malicious")]
    assert decide_for_recipients([lab, corp], mal).action == "quarantine"
    assert decide_for_recipients([lab, corp], mal).policy == "corp"
    assert decide_for_recipients([corp, strict, lab], mal).action == "discard"
    assert decide_for_recipients([lab, corp], [art("suspicious")]).action == "hold"
    assert decide_for_recipients([strict, lab], [art("suspicious")]).smtp_code == "550"
    # tie: the first policy's decision (its headers) is kept
    a = _named("a")
    b = _named("b")
    b.headers = dataclasses.replace(b.headers, verdict="X-B", report="X-B-Report")
    assert decide_for_recipients([a, b], [art("clean")]).policy == "a"
    assert decide_for_recipients([], mal).action == "reject"


def test_action_order_is_documented_order():
    assert ACTIONS == ("accept", "tag", "strip", "hold", "quarantine", "tempfail", "reject", "discard")


# --------------------------------------------------------------------------- failure, analysis settings


def test_failure_decision():
    d = failure_decision(Policy(), "worker\r\ncrashed")
    assert d.action == "tempfail" and (d.smtp_code, d.smtp_ext) == REPLY_INTERNAL
    assert "\n" not in d.reason
    p = Policy()
    p.fail_open = True
    d = failure_decision(p)
    assert d.action == "tag" and d.smtp_code is None and dict(d.headers)["X-Mailvm-Verdict"].startswith("error")


def test_analysis_settings_most_thorough_wins():
    a = Policy()
    a.max_wait_s, a.detonate_kinds, a.archive_passwords = 30.0, ["pdf"], ["x"]
    a.links = dataclasses.replace(a.links, enabled=False, max_links=100)
    b = Policy()
    b.max_wait_s, b.detonate_kinds, b.archive_passwords = 90.0, ["office", "pdf"], ["y", "x"]
    b.links = dataclasses.replace(b.links, max_links=5)
    s = analysis_settings([a, b])
    assert s.max_wait_s == 90.0 and s.detonate_kinds == ("pdf", "office") and s.archive_passwords == ("x", "y")
    assert s.links_enabled and s.max_links == 5  # the disabled policy's limit does not count
    b.detonate = False
    assert analysis_settings([b]).detonate is False and analysis_settings([b]).detonate_kinds == ()


def test_policyset_is_plain_data():
    ps = PolicySet()
    assert ps.for_recipients(["x@y.z"]) == [("y.z", ps.default)]
