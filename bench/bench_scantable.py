"""Benchmark of the scanned table: lookups/s, claims/s and publishes/s from 1 and 2 processes.

Each phase starts in every worker process at once (a barrier); a phase's rate is
all workers' operations divided by the slowest worker's time.  Phases:

* ``publish``: store a done verdict on keys of its own;
* ``lookup_hit``: ``get()`` of published keys (random order);
* ``lookup_miss``: ``get()`` of keys never stored;
* ``claim``: claim keys nobody else claims (every claim wins: one ``add``);
* ``claim_contended``: all workers claim the *same* keys (one wins each; the
  others take the transaction path and lose).

Usage: ``python bench/bench_scantable.py [--ops 5000] [--procs 1 2] [--out bench/results/scantable.json]``
"""

from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing
import os
import platform
import random
import sys
import tempfile
import time
from pathlib import Path

import diskcache
from tqdm import tqdm

from mailvm.config import ScanTableConfig
from mailvm.scantable import ScanTable
from mailvm.verdict import Finding, Verdict

PHASES = ("publish", "lookup_hit", "lookup_miss", "claim", "claim_contended")


def _key(*parts: object) -> str:
    return hashlib.sha256(":".join(map(str, parts)).encode()).hexdigest()


def _verdict(i: int) -> Verdict:
    findings = [Finding("office_macro_autoopen", 5, "AutoOpen calls Shell", "oletools"), Finding("net_connect", 6, f"10.0.0.{i % 250}:443", "guest")]
    return Verdict.from_findings(findings, source="detonation", duration_s=4.2, slot=f"slot{i % 8}")


def _worker(path: str, rank: int, ops: int, barrier, results) -> None:
    table = ScanTable(ScanTableConfig(path=path))
    rng = random.Random(rank)
    own = [_key("own", rank, i) for i in range(ops)]
    shared = [_key("shared", i) for i in range(ops)]
    work = {
        "publish": lambda: [table.publish(k, _verdict(i)) for i, k in enumerate(_bar(own, rank, "publish"))],
        "lookup_hit": lambda: [table.get(k) for k in _bar(rng.sample(own, len(own)), rank, "lookup_hit")],
        "lookup_miss": lambda: [table.get(_key("absent", rank, i)) for i in _bar(range(ops), rank, "lookup_miss")],
        "claim": lambda: [table.claim(_key("claim", rank, i), f"w{rank}") for i in _bar(range(ops), rank, "claim")],
        "claim_contended": lambda: [table.claim(k, f"w{rank}").won for k in _bar(shared, rank, "claim_contended")],
    }
    out = {}
    for phase in PHASES:
        barrier.wait()
        start = time.perf_counter()
        res = work[phase]()
        out[phase] = {"seconds": time.perf_counter() - start, "ops": ops}
        if phase == "claim_contended":
            out[phase]["won"] = sum(res)
    table.close()
    results.put((rank, out))


def _bar(items, rank: int, phase: str):
    return tqdm(items, desc=f"p{rank} {phase:<15}", position=rank, leave=False, mininterval=0.5, file=sys.stderr)


def run(procs: int, ops: int, root: Path) -> dict:
    path = str(root / f"table-{procs}p")
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(procs)
    results = ctx.Queue()
    workers = [ctx.Process(target=_worker, args=(path, r, ops, barrier, results)) for r in range(procs)]
    for w in workers:
        w.start()
    per_worker = dict(results.get() for _ in workers)
    for w in workers:
        w.join()
    summary: dict[str, dict] = {}
    for phase in PHASES:
        slowest = max(per_worker[r][phase]["seconds"] for r in per_worker)
        total = sum(per_worker[r][phase]["ops"] for r in per_worker)
        summary[phase] = {"ops": total, "seconds": round(slowest, 4), "per_s": round(total / slowest, 1)}
        if phase == "claim_contended":
            summary[phase]["won"] = sum(per_worker[r][phase]["won"] for r in per_worker)
    table = ScanTable(ScanTableConfig(path=path))
    stats = table.stats()
    table.close()
    summary["size_bytes"] = stats["size_bytes"]
    return summary


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ops", type=int, default=5000, help="operations per worker and phase")
    ap.add_argument("--procs", type=int, nargs="+", default=[1, 2], help="process counts to run")
    ap.add_argument("--dir", default=None, help="where to create the tables (default: a temporary directory)")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "scantable.json"))
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-scantable-", dir=args.dir) as tmp:
        results = {str(p): run(p, args.ops, Path(tmp)) for p in args.procs}
    doc = {
        "benchmark": "scantable",
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "python": platform.python_version(),
        "diskcache": diskcache.__version__,
        "cpus": os.cpu_count(),
        "ops_per_worker": args.ops,
        "results": results,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"{'procs':>5} " + " ".join(f"{p + '/s':>18}" for p in PHASES))
    for p, r in results.items():
        print(f"{p:>5} " + " ".join(f"{r[ph]['per_s']:>18,.0f}" for ph in PHASES))
    for p, r in results.items():
        c = r["claim_contended"]
        print(f"{p} process(es): contended claims won {c['won']} of {c['ops']} attempts on {args.ops} keys")
    print(f"written {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
