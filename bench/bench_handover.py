"""Benchmark of the hand-over with the process backend: job written -> agent acknowledges RUNNING.

For each doorbell kind (a pipe, and adaptive polling for comparison), ``--runs``
fresh pre-warmed slots each get one job:

* ``handover_ms``: from just before ``HostPage.submit()`` (file + options
  written, REQUEST set, doorbell rung) until the host sees RUNNING;
* ``verdict_s``: from the same start until DONE, for a benign shell script run
  through the real ``mailvm.guest.detonate`` (idle detection should end it
  well before the timeout); reported only when that module is importable and
  the jobs finish DONE;
* ``ready_ms``: slot creation (agent start -> READY), i.e. the refill cost;
* ``idle_cpu_pct``: CPU of one idle pre-warmed slot (all its processes) over
  ``--idle-s`` seconds, in percent of one core.

Medians and p95 are printed, written to ``bench/results/handover_process.json``
and drawn as histograms in ``bench/results/handover_process.png``.

Usage: ``python bench/bench_handover.py [--runs 50] [--doorbells pipe poll:0.001]``
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

from tqdm import tqdm

from bench.common import pyplot, save_figure

from mailvm.config import PoolConfig
from mailvm.guest import protocol as P
from mailvm.procfs import cpu_seconds, process_tree
from mailvm.vmpool.backends.process import ProcessBackend

BENIGN = b"#!/bin/sh\necho hello > greeting.txt\ncat greeting.txt\n"
RESULTS = Path(__file__).resolve().parent / "results"


def pct(values: list[float], q: float) -> float:
    vals = sorted(values)
    if not vals:
        return float("nan")
    k = min(len(vals) - 1, max(0, round(q / 100 * (len(vals) - 1))))
    return vals[k]


def summary(values: list[float]) -> dict:
    if not values:
        return {"n": 0}
    return {"n": len(values), "median": statistics.median(values), "p95": pct(values, 95),
            "min": min(values), "max": max(values)}


def detonate_available() -> bool:
    try:
        import mailvm.guest.detonate  # noqa: F401
    except ImportError:
        return False
    return True


def idle_cpu(backend: ProcessBackend, seconds: float) -> float:
    with backend.lease("idle") as slot:
        time.sleep(0.3)  # let the start-up settle
        pids = process_tree(slot.proc.pid)
        c0, t0 = cpu_seconds(pids), time.monotonic()
        time.sleep(seconds)
        return 100.0 * (cpu_seconds(pids) - c0) / (time.monotonic() - t0)


def run_doorbell(doorbell: str, runs: int, work: Path, page_bytes: int, timeout_s: float, verdicts: bool,
                 idle_s: float) -> dict:
    cfg = PoolConfig(backend="process", work_dir=str(work / doorbell.replace(":", "_")), page_bytes=page_bytes,
                     ready_timeout_s=60.0)
    backend = ProcessBackend(cfg, doorbell=doorbell)
    backend.prepare()
    handover, verdict_s, ready, states, verdict_names = [], [], [], {}, {}
    options = {"name": "hello.sh", "type": "text/x-shellscript", "kind": "script", "timeout_s": timeout_s,
               "idle_s": 2.0, "stop_on_malicious": True, "max_result_bytes": 1 << 20}
    for i in tqdm(range(runs), desc=f"{doorbell:<12}", file=sys.stderr, mininterval=0.5):
        slot = backend.create_slot(f"b{i}")
        try:
            ready.append(slot.ready_s * 1000)
            time.sleep(0.02)  # an idle slot, as in the pool: the agent is asleep on its doorbell
            t0 = time.perf_counter()
            slot.page.submit(BENIGN, "hello.sh", options)
            slot.ring()
            st = slot.page.wait_state({P.RUNNING, P.DONE, P.FAILED}, time.monotonic() + 10, alive=slot.alive)
            handover.append((time.perf_counter() - t0) * 1000)
            if verdicts:
                st = slot.page.wait_state({P.DONE, P.FAILED}, time.monotonic() + timeout_s + 30,
                                          alive=slot.alive, heartbeat_timeout=10)
                elapsed = time.perf_counter() - t0
                res = slot.page.read_result(1 << 20)
                states[P.state_name(st)] = states.get(P.state_name(st), 0) + 1
                verdict_names[res["verdict"]] = verdict_names.get(res["verdict"], 0) + 1
                if st == P.DONE:
                    verdict_s.append(elapsed)
        finally:
            slot.destroy()
    out = {
        "handover_ms": summary(handover), "ready_ms": summary(ready),
        "idle_cpu_pct": idle_cpu(backend, idle_s),
        "pid_namespace": bool(backend.pid_namespace),
        "samples": {"handover_ms": handover, "verdict_s": verdict_s, "ready_ms": ready},
    }
    if verdicts:
        out["verdict_s"] = summary(verdict_s)
        out["final_states"] = states
        out["verdicts"] = verdict_names
    backend.close()
    return out


def plot(results: dict, path: Path) -> None:
    plt = pyplot()

    with_verdicts = any(r["samples"]["verdict_s"] for r in results.values())
    fig, axes = plt.subplots(1, 2 if with_verdicts else 1, figsize=(11 if with_verdicts else 6, 4), squeeze=False)
    ax = axes[0][0]
    for name, r in results.items():
        h = r["handover_ms"]
        ax.hist(r["samples"]["handover_ms"], bins=30, alpha=0.6,
                label=f"{name}: median {h['median']:.2f} ms, p95 {h['p95']:.2f} ms, idle {r['idle_cpu_pct']:.1f} % CPU")
    ax.set_xlabel("hand-over: job written -> RUNNING (ms)")
    ax.set_ylabel("runs")
    ax.set_title("process backend hand-over")
    ax.legend(fontsize=7)
    if with_verdicts:
        ax = axes[0][1]
        for name, r in results.items():
            if r["samples"]["verdict_s"]:
                v = r["verdict_s"]
                ax.hist(r["samples"]["verdict_s"], bins=30, alpha=0.6,
                        label=f"{name}: median {v['median']:.2f} s, p95 {v['p95']:.2f} s")
        ax.set_xlabel("benign script: job written -> DONE (s)")
        ax.set_title("verdict time")
        ax.legend(fontsize=7)
    save_figure(fig, path, dpi=110)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=50)
    ap.add_argument("--doorbells", nargs="+", default=["pipe", "poll:0.001"])
    ap.add_argument("--page-bytes", type=int, default=8 << 20)
    ap.add_argument("--timeout", type=float, default=30.0, help="guest timeout per benign job")
    ap.add_argument("--idle-s", type=float, default=3.0)
    ap.add_argument("--no-verdict", action="store_true", help="hand-over only (do not wait for the detonation)")
    ap.add_argument("--out", default=str(RESULTS / "handover_process.json"))
    ap.add_argument("--png", default=str(RESULTS / "handover_process.png"))
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.ERROR)
    have_detonate = detonate_available()
    verdicts = have_detonate and not args.no_verdict
    if not have_detonate:
        print("mailvm.guest.detonate is not importable: hand-over only (no verdict times)", file=sys.stderr)
    results = {}
    with tempfile.TemporaryDirectory(prefix="bench-handover-") as tmp:
        for doorbell in args.doorbells:
            results[doorbell] = run_doorbell(doorbell, args.runs, Path(tmp), args.page_bytes, args.timeout,
                                             verdicts, args.idle_s)
    print(f"\nprocess backend, {args.runs} fresh slots per doorbell ({os.cpu_count()} CPUs)")
    print(f"{'doorbell':<14}{'hand-over median':>18}{'p95':>10}{'idle CPU':>10}{'ready median':>14}"
          f"{'verdict median':>16}{'p95':>9}")
    for name, r in results.items():
        h, rd = r["handover_ms"], r["ready_ms"]
        v = r.get("verdict_s", {"n": 0})
        vtxt = f"{v['median']:>14.2f} s{v['p95']:>7.2f} s" if v.get("n") else f"{'-':>16}{'-':>9}"
        print(f"{name:<14}{h['median']:>15.3f} ms{h['p95']:>7.3f} ms{r['idle_cpu_pct']:>8.2f} %"
              f"{rd['median']:>11.1f} ms{vtxt}")
        if "final_states" in r:
            print(f"{'':<14}final states {r['final_states']}, verdicts {r['verdicts']}")
    record = {
        "benchmark": "handover_process",
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "runs": args.runs,
        "page_bytes": args.page_bytes,
        "detonate": have_detonate,
        "results": results,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2) + "\n")
    plot(results, Path(args.png))
    print(f"wrote {out} and {args.png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
