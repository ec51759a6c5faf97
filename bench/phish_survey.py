"""Static phishing survey: ``python -m bench.phish_survey [--json OUT]``.

A quick, static-only (``mvctl scan --no-detonate``) look at how mailvm judges
phishing and benign mail and pages, for work on the phishing heuristics without
the full ``make eval`` (no sandbox, a few seconds of CPU):

* phishing: the committed ``phishing-eml`` and ``html-phish`` classes of
  ``bench/corpus/dev-malware.zip`` (unpacked into a private temporary directory,
  only those two classes, never run) and the made ``link-lure-eml`` messages;
* benign: every message of ``$MAILVM_CORPUS`` that is ham (SpamAssassin's ``nice``,
  CPython's and mail-mime-parser's test messages), the made ham of ``make eval``,
  and every ``.html`` under ``/usr/share/doc`` (at most ``--max-html``).

Prints per group how many samples reach suspicious or worse (the default policy's
``decide``), and each flagged benign and each missed phishing sample with its
strongest findings.
"""

from __future__ import annotations

import argparse
import dataclasses
import glob
import json
import random
import shutil
import sys
import tempfile
from pathlib import Path

from bench.detection_corpus import SEED, Sample, external_corpus, ham, link_lures, unpack_committed

PHISH_CLASSES = ("phishing-eml", "html-phish")


def _messages(root: Path) -> list[Path]:
    out = []
    for p in sorted(root.rglob("*")):
        if not p.is_file() or p.stat().st_size > 2_000_000:
            continue
        head = p.read_bytes()[:2048].lower()
        if b"\nfrom:" in b"\n" + head or b"\nsubject:" in b"\n" + head:
            out.append(p)
    return out


def samples(tmp: Path, max_html: int) -> list[Sample]:
    out = [s for s in unpack_committed(tmp / "committed") if s.cls in PHISH_CLASSES]
    for p in (tmp / "committed").iterdir():  # only the two classes stay on disk
        if p.name not in PHISH_CLASSES:
            shutil.rmtree(p, ignore_errors=True)
    out += link_lures(tmp)
    corpus = external_corpus()
    if corpus is not None:
        for sub in ("apache-spamassassin-tdata/t/data/nice", "cpython-test_email-data",
                    "zbateson-mail-mime-parser"):
            for p in _messages(corpus / sub):
                out.append(Sample("ham-corpus", p.name, p, True, "benign", sub))
    out += [dataclasses.replace(s, cls="ham-made") for s in ham(tmp, random.Random(SEED + 5), 0, None)]
    for p in sorted(glob.glob("/usr/share/doc/**/*.html", recursive=True))[:max_html]:
        out.append(Sample("benign-html", Path(p).name, Path(p), False, "benign", "this machine"))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.phish_survey", description=__doc__.split("\n")[0])
    ap.add_argument("--json", help="write every result here")
    ap.add_argument("--max-html", type=int, default=1000)
    args = ap.parse_args(argv)
    from bench.detection import Evaluator

    tmp = Path(tempfile.mkdtemp(prefix="phish-survey-"))
    try:
        ev = Evaluator(False, tmp / "work", 60)
        rows = []
        groups: dict[str, list[int]] = {}
        for s in samples(tmp / "samples", args.max_html):
            r = ev.scan(s)
            flagged = r.verdict in ("suspicious", "malicious")
            g = groups.setdefault(s.cls, [0, 0, 0])
            g[0] += 1
            g[1] += flagged
            g[2] += r.verdict == "malicious"
            rows.append({"class": s.cls, "name": s.name, "label": s.label, "verdict": r.verdict, "score": r.score,
                         "findings": r.findings[:6]})
            if flagged == (s.label == "benign"):
                top = ", ".join(f"{f}:{v}" for f, v in r.findings[:4]) or "no finding"
                print(f"  {'FP ' if flagged else 'miss'} {s.cls}/{s.name}: {r.verdict} {r.score} ({top})")
        ev.close()
        for cls, (n, fl, mal) in groups.items():
            print(f"{cls:16s} n={n:4d} suspicious+={fl:4d} malicious={mal:4d}")
        if args.json:
            Path(args.json).write_text(json.dumps(rows, indent=1))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
