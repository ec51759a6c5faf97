"""Detection evaluation: ``make eval`` / ``python -m bench.detection``.

Scans a labelled development corpus (:mod:`bench.detection_corpus`, described in
``bench/corpus/README.md``) with the real :class:`mailvm.scan.Scanner` (the code
``mvctl scan`` runs: extraction, triage, the process backend's sandbox), decides
every sample with the default policy (:func:`mailvm.policy.decide`, as the milter
does), and writes ``docs/detection.md`` plus JSON and a PNG under
``bench/results/``: per class the detection rate (suspicious or worse, and
malicious), the false-positive rate of the benign classes, the verdict counts,
the findings that fired, the samples that did not run and the median time, with
and without detonation side by side (the second run is ``--no-detonate``).

    python -m bench.detection [--classes C ...] [--limit N] [--jobs N] [--corpus DIR] [--no-detonate]
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.detection_corpus import BENIGN_CLASSES, CLASSES, MALICIOUS_CLASSES, Sample, build

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
DOC = ROOT / "docs" / "detection.md"
FLAGGED = ("suspicious", "malicious")
NOT_DELIVERED = ("reject", "quarantine", "discard", "hold", "strip", "tempfail")
TOP_N = 8


@dataclass
class Result:
    cls: str
    name: str
    label: str
    source: str
    verdict: str
    score: int
    action: str
    seconds: float
    #: (id, severity) of every finding of the message and its artifacts, worst first, each id once
    findings: list[tuple[str, int]] = field(default_factory=list)
    #: the artifacts' sources (triage, detonation, ...)
    sources: list[str] = field(default_factory=list)
    #: why a detonatable artifact did not run (not_executed findings), empty when everything ran
    not_executed: list[str] = field(default_factory=list)
    error: str = ""

    @property
    def flagged(self) -> bool:
        return self.verdict in FLAGGED

    def fired(self, min_severity: int = 4) -> list[str]:
        return [f for f, s in self.findings if s >= min_severity]


# -- scanning -----------------------------------------------------------------------------


class Evaluator:
    """One Scanner (with a lazily started in-process pool of one slot, as ``mvctl scan``)."""

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
        self.work = work
        self.timeout = timeout
        self.policy = Policy()
        self.pool = LazyPool(cfg, None) if detonate else None
        self.scanner = Scanner(cfg, Triage(cfg.triage), None, self.pool, pins=_NoPins())

    def scan(self, s: Sample) -> Result:
        from mailvm.milter.service import outcomes_from_report
        from mailvm.policy import decide
        from mailvm.verdict import Finding

        t0 = time.monotonic()
        deadline = t0 + self.timeout
        try:
            if s.message:
                report = self.scanner.scan_message(s.path.read_bytes(), deadline=deadline, links=False)
            else:
                report = self.scanner.scan_file(s.path, s.name, deadline=deadline)
            d = report.to_dict()
            msg_findings = [Finding(f["id"], f["severity"], f.get("detail", "")) for f in d["findings"]]
            decision = decide(self.policy, outcomes_from_report(d), msg_findings)
        except Exception as exc:  # one broken sample must not end the evaluation; it is reported as an error
            return Result(s.cls, s.name, s.label, s.source, "error", 0, "error", time.monotonic() - t0,
                          error=f"{type(exc).__name__}: {exc}"[:200])
        worst: dict[str, int] = {}
        for f in d["findings"] + [f for a in d["artifacts"] for f in a["findings"]]:
            worst[f["id"]] = max(worst.get(f["id"], 0), int(f["severity"]))
        not_run = sorted({f.get("detail", "")[:80] for a in d["artifacts"] for f in a["findings"]
                          if f["id"] == "not_executed"})
        return Result(s.cls, s.name, s.label, s.source, decision.verdict, decision.score, decision.action,
                      time.monotonic() - t0, sorted(worst.items(), key=lambda kv: (-kv[1], kv[0])),
                      sorted({a["source"] for a in d["artifacts"]}), not_run)

    def close(self) -> None:
        if self.pool is not None:
            self.pool.close()
        shutil.rmtree(self.work, ignore_errors=True)


class _NoPins:
    """The evaluation never consults an administrator's pins."""

    def get(self, sha: str) -> None:
        return None


_WORKER: Evaluator | None = None


def _worker_init(detonate: bool, timeout: float) -> None:
    import logging
    from multiprocessing import util

    global _WORKER
    logging.basicConfig(level=logging.ERROR)
    _WORKER = Evaluator(detonate, Path(tempfile.mkdtemp(prefix="mailvm-eval-")), timeout)
    util.Finalize(_WORKER, _WORKER.close, exitpriority=10)


def _worker_scan(s: Sample) -> Result:
    assert _WORKER is not None
    return _WORKER.scan(s)


def run(samples: list[Sample], detonate: bool, timeout: float, progress: bool, jobs: int = 1) -> list[Result]:
    """Scan every sample; ``jobs`` worker processes, each with its own Scanner, table and one-slot pool."""
    from tqdm import tqdm

    desc = "with detonation" if detonate else "static only"
    bar = tqdm(total=len(samples), desc=desc, unit="sample", disable=not progress, file=sys.stderr)
    results: list[Result] = []
    try:
        if jobs <= 1:
            ev = Evaluator(detonate, Path(tempfile.mkdtemp(prefix="mailvm-eval-")), timeout)
            try:
                for s in samples:
                    results.append(ev.scan(s))
                    bar.update()
            finally:
                ev.close()
        else:
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor, as_completed

            ctx = multiprocessing.get_context("spawn")
            with ProcessPoolExecutor(jobs, mp_context=ctx, initializer=_worker_init,
                                     initargs=(detonate, timeout)) as ex:
                futures = {ex.submit(_worker_scan, s): i for i, s in enumerate(samples)}
                done: dict[int, Result] = {}
                for fut in as_completed(futures):
                    i = futures[fut]
                    s = samples[i]
                    try:
                        done[i] = fut.result()
                    except Exception as exc:  # a worker died: the sample is an error, the run goes on
                        done[i] = Result(s.cls, s.name, s.label, s.source, "error", 0, "error", 0.0,
                                         error=f"{type(exc).__name__}: {exc}"[:200])
                    bar.update()
                results = [done[i] for i in range(len(samples))]
    finally:
        bar.close()
    return results


# -- summaries ----------------------------------------------------------------------------


def summarise(results: list[Result], top_n: int = TOP_N) -> dict[str, Any]:
    by_cls: dict[str, list[Result]] = collections.defaultdict(list)
    for r in results:
        by_cls[r.cls].append(r)
    order = [c for c in CLASSES if c in by_cls] + sorted(c for c in by_cls if c not in CLASSES)
    out = {}
    for cls in order:
        rs = by_cls[cls]
        label = rs[0].label
        fired = collections.Counter(f for r in rs for f in r.fired())
        wrong = [r for r in rs if r.flagged != (label == "malicious")]
        out[cls] = {
            "label": label,
            "n": len(rs),
            "flagged": sum(r.flagged for r in rs),
            "malicious": sum(r.verdict == "malicious" for r in rs),
            "not_delivered": sum(r.action in NOT_DELIVERED for r in rs),
            "verdicts": dict(sorted(collections.Counter(r.verdict for r in rs).items())),
            "errors": sum(r.verdict in ("error", "pending") for r in rs),
            "median_s": round(statistics.median(r.seconds for r in rs), 2),
            "detonated": sum("detonation" in r.sources for r in rs),
            "not_executed": sum(bool(r.not_executed) for r in rs),
            "not_executed_reasons": collections.Counter(x for r in rs for x in r.not_executed).most_common(5),
            "top_findings": fired.most_common(top_n),
            ("misses" if label == "malicious" else "false_positives"): [
                {"name": r.name, "verdict": r.verdict, "score": r.score, "findings": r.findings[:6],
                 "not_executed": r.not_executed, "source": r.source, "error": r.error} for r in wrong],
        }
    return out


def totals(summary: dict[str, Any], label: str) -> dict[str, int]:
    ds = [d for d in summary.values() if d["label"] == label]
    return {k: sum(d[k] for d in ds) for k in ("n", "flagged", "malicious", "not_delivered")}


# -- the report ---------------------------------------------------------------------------


def _pct(a: int, n: int) -> str:
    return f"{100 * a / n:.0f} %" if n else "-"


def _cell(d: dict[str, Any] | None, key: str) -> str:
    if not d:
        return "-"
    return f"{d[key]} ({_pct(d[key], d['n'])})"


def write_report(dyn: dict[str, Any], static: dict[str, Any] | None, meta: dict[str, Any]) -> str:
    lines = [
        "# Detection evaluation",
        "",
        "Made by `make eval` (`python -m bench.detection`; options in `--help`). Every sample of the development",
        "corpus goes through the real pipeline (`mailvm.scan.Scanner`, the code of `mvctl scan`: extraction, triage,",
        "the **process** backend's sandbox) and is decided by the **default policy** (`mailvm.policy.decide`).",
        "*Flagged* is suspicious or worse: for malicious classes the detection rate, for benign classes the",
        "false-positive rate. *Static* columns are the same samples with `--no-detonate`, so the value of",
        "detonation is visible. *Not run* counts samples with a detonatable file that the sandbox could not run",
        "(`not_executed`). Figures on this small development set are guidance, not a measurement of held-out mail.",
        "",
        f"Run {meta['date']} at `{meta['git_rev']}`: {meta['samples']} samples, {meta['seconds']:.0f} s, "
        f"{meta['jobs']} job(s), sample timeout {meta['timeout']:g} s, {meta['cores']} cores, "
        f"load {meta['loadavg_at_start']}.",
        "",
    ]
    for title, label in (("Malicious classes (detection)", "malicious"), ("Benign classes (false positives)", "benign")):
        lines += [f"## {title}", "",
                  "| class | n | flagged | malicious | not delivered | static flagged | static malicious | "
                  "detonated | not run | median s |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for cls, d in dyn.items():
            if d["label"] != label:
                continue
            st = (static or {}).get(cls)
            lines.append(f"| {cls} | {d['n']} | {_cell(d, 'flagged')} | {_cell(d, 'malicious')} | "
                         f"{_cell(d, 'not_delivered')} | {_cell(st, 'flagged')} | {_cell(st, 'malicious')} | "
                         f"{d['detonated']} | {d['not_executed']} | {d['median_s']} |")
        t, ts = totals(dyn, label), totals(static or {}, label) if static else None
        if t["n"]:
            lines.append(f"| **all** | {t['n']} | {t['flagged']} ({_pct(t['flagged'], t['n'])}) | {t['malicious']} "
                         f"({_pct(t['malicious'], t['n'])}) | {t['not_delivered']} ({_pct(t['not_delivered'], t['n'])}) | "
                         + (f"{ts['flagged']} ({_pct(ts['flagged'], ts['n'])}) | {ts['malicious']} "
                            f"({_pct(ts['malicious'], ts['n'])}) |" if ts and ts["n"] else "- | - |")
                         + " | | |")
        lines.append("")
    lines += ["## Verdicts and the findings that fired (severity 4 or more)", ""]
    for cls, d in dyn.items():
        tops = ", ".join(f"`{f}` {n}" for f, n in d["top_findings"]) or "none"
        nr = "; ".join(f"{why} ({n})" for why, n in d["not_executed_reasons"])
        lines.append(f"* **{cls}** {d['verdicts']}: {tops}" + (f". Not run: {nr}" if nr else ""))
    lines += ["", "## Misses and false positives", "",
              "Each with its verdict, score and strongest findings (id:severity); the full list is in the JSON.", ""]
    for cls, d in dyn.items():
        items = d.get("misses") or d.get("false_positives") or []
        if not items:
            continue
        kind = "missed" if "misses" in d else "false positives"
        shown = "; ".join(
            f"{i['name'][:42]} -> {i['verdict']} {i['score']} ("
            + (", ".join(f"{f}:{s}" for f, s in i["findings"][:3]) or "no finding") + ")" for i in items[:12])
        more = f"; and {len(items) - 12} more" if len(items) > 12 else ""
        lines.append(f"* **{cls}** ({kind}, {len(items)}): {shown}{more}")
    lines += ["", "## Corpus", "",
              "Real samples from public collections, each with its SHA-256, source repository and path and a licence",
              "note in `bench/corpus/manifest.json`, kept in `bench/corpus/dev-malware.zip` (AES, password `infected`);",
              "malspam messages built around them at run time (zip, zip in zip, password zip with the password in the",
              "body, 7z, plain attachment); crafted link-only lures and documents (the test suite's builders); benign",
              "files of the machine the evaluation runs on (Python modules, shell scripts, ELF tools, PE launchers and",
              "Windows scripts that packages ship, PDF/HTML documentation, Office files LibreOffice makes from the",
              "machine's own texts) and ham (SpamAssassin's test ham when `MAILVM_CORPUS` is present, plus made mail).",
              "`bench/corpus/README.md` lists the sources per class."]
    return "\n".join(lines) + "\n"


def plot(dyn: dict[str, Any], static: dict[str, Any] | None, path: Path) -> Path | None:
    try:
        from bench.common import pyplot, save_figure

        plt = pyplot()
    except Exception:  # plotting is optional (matplotlib)
        return None
    classes = list(dyn)
    x = list(range(len(classes)))
    fig, ax = plt.subplots(figsize=(12, 5))
    rate = [100 * dyn[c]["flagged"] / dyn[c]["n"] for c in classes]
    mal = [100 * dyn[c]["malicious"] / dyn[c]["n"] for c in classes]
    ax.bar([i - 0.2 for i in x], rate, 0.4, label="flagged, with detonation", color="#1f77b4")
    ax.bar([i - 0.2 for i in x], mal, 0.4, label="malicious, with detonation", color="#0b3c6b")
    if static:
        srate = [100 * static.get(c, {}).get("flagged", 0) / dyn[c]["n"] for c in classes]
        smal = [100 * static.get(c, {}).get("malicious", 0) / dyn[c]["n"] for c in classes]
        ax.bar([i + 0.2 for i in x], srate, 0.4, label="flagged, static only", color="#ff7f0e")
        ax.bar([i + 0.2 for i in x], smal, 0.4, label="malicious, static only", color="#8a4200")
    for i, c in enumerate(classes):
        if dyn[c]["label"] == "benign":
            ax.axvspan(i - 0.5, i + 0.5, color="#eeeeee", zorder=-1)
    ax.set_xticks(x, [f"{c}\n(n={dyn[c]['n']})" for c in classes], rotation=40, ha="right", fontsize=8)
    ax.set_ylabel("% of the class")
    ax.set_ylim(0, 105)
    ax.set_title("mailvm detection per class, default policy (grey: benign classes, bars are false positives)",
                 fontsize=10)
    ax.legend(fontsize=8, loc="upper right")
    return save_figure(fig, path, dpi=110)


# -- main ---------------------------------------------------------------------------------


def _meta(args: argparse.Namespace, n: int, seconds: float) -> dict[str, Any]:
    from bench.common import git_rev, loadavg

    return {"date": time.strftime("%Y-%m-%d %H:%M"), "git_rev": git_rev(), "samples": n, "seconds": round(seconds, 1),
            "timeout": args.timeout, "jobs": args.jobs, "cores": os.cpu_count(), "loadavg_at_start": loadavg(),
            "backend": "process", "policy": "default"}


def select(samples: list[Sample], classes: list[str] | None, limit: int) -> list[Sample]:
    if classes:
        samples = [s for s in samples if s.cls in classes]
    if limit:
        count: collections.Counter[str] = collections.Counter()
        kept = []
        for s in samples:
            if count[s.cls] < limit:
                kept.append(s)
                count[s.cls] += 1
        samples = kept
    return samples


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.detection", description=__doc__.split("\n\n")[0])
    ap.add_argument("--classes", nargs="+", metavar="CLASS",
                    help=f"only these classes ({', '.join(CLASSES)}, or an outside corpus's folders)")
    ap.add_argument("--limit", type=int, default=0, help="at most N samples per class (0: all)")
    ap.add_argument("--per-class", type=int, default=20,
                    help="size of the machine's benign classes: benign-technical is 4x this (default 20 -> 80)")
    ap.add_argument("--corpus", default=os.environ.get("MAILVM_EVAL_CORPUS") or None, metavar="DIR",
                    help="also scan DIR/<class>/<file> (default $MAILVM_EVAL_CORPUS)")
    ap.add_argument("--jobs", type=int, default=1, help="worker processes, each with a one-slot pool (default 1)")
    ap.add_argument("--no-detonate", action="store_true", help="static analysis only (one run, no comparison)")
    ap.add_argument("--no-static-column", action="store_true", help="skip the --no-detonate comparison run")
    ap.add_argument("--timeout", type=float, default=150.0, help="seconds per sample (default 150)")
    ap.add_argument("--top", type=int, default=TOP_N, help=f"findings listed per class (default {TOP_N})")
    ap.add_argument("--out", default=str(DOC), help="the Markdown report (default docs/detection.md)")
    ap.add_argument("--results", default=str(RESULTS), help="directory of the JSON and PNG (default bench/results)")
    ap.add_argument("--quiet", action="store_true", help="no progress bar")
    args = ap.parse_args(argv)
    if args.classes:
        unknown = [c for c in args.classes if c not in CLASSES and not args.corpus]
        if unknown:
            ap.error(f"unknown class(es) {', '.join(unknown)}; known: {', '.join(CLASSES)}")
    if args.corpus and not Path(args.corpus).is_dir():
        ap.error(f"--corpus {args.corpus}: not a directory")

    import logging

    logging.basicConfig(level=logging.ERROR)
    t0 = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="mailvm-corpus-"))
    try:
        samples = select(build(work, args.per_class, args.corpus), args.classes, args.limit)
        if not samples:
            print("bench.detection: no samples selected", file=sys.stderr)
            return 2
        dyn_results = run(samples, not args.no_detonate, args.timeout, not args.quiet, args.jobs)
        static_results = None
        if not (args.no_detonate or args.no_static_column):
            static_results = run(samples, False, args.timeout, not args.quiet, args.jobs)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    dyn = summarise(dyn_results, args.top)
    static = summarise(static_results, args.top) if static_results is not None else None
    meta = _meta(args, len(dyn_results), time.monotonic() - t0)
    if args.no_detonate:
        meta["backend"] = "none (static only)"
    results_dir = Path(args.results)
    results_dir.mkdir(parents=True, exist_ok=True)
    from bench.common import write_json

    write_json(results_dir / "detection.json", {
        "meta": meta, "detonation": dyn, "static": static,
        "samples": [dataclasses.asdict(r) for r in dyn_results],
        "samples_static": [dataclasses.asdict(r) for r in static_results] if static_results else None})
    plot(dyn, static, results_dir / "detection.png")
    text = write_report(dyn, static, meta)
    Path(args.out).write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
