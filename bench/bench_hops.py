"""The data path hop by hop, and what the whole service costs while it waits.

Two measurements of issue 14's "one hand-off and no polling", in one run:

* **hops**: each hand-over an unseen file makes, timed on the real parts in this run --
  milter -> scan worker -> milter (a Pebble round trip carrying a ScanJob; the worker's own
  scan time is subtracted), scan worker -> pool service (durable local queue, blocking pop
  woken by the wake bus), pool -> slot (hand-over to a pre-warmed process-backend slot: the
  file on the page and the doorbell, until the agent says RUNNING), and the verdict back
  (published to the scanned table -> the waiting scan worker awake).  Medians in ms.
* **idle**: ``mailvm serve`` (milter, 2 scan workers, pool service with 2 pre-warmed
  process-backend slots) started from a lab configuration, left alone for ``--idle-s``
  seconds once warm: CPU of its whole process tree per second, in % of one core.

Usage: ``python -m bench.bench_hops [--rounds 30] [--idle-s 30] [--out bench/results/hops.json]``
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import RESULTS, machine, pyplot, save_figure, summary, tree_cpu_by_part, tree_cpu_seconds, write_json


def milter_worker_round_trip(work: Path, rounds: int) -> dict[str, Any]:
    """Pebble round trip of a real ScanJob to a real scan worker, minus the worker's scan time."""
    from mailvm.config import load_config
    from mailvm.job import AnalysisSettings, ScanJob
    from mailvm.milter.service import MilterService

    work.mkdir(parents=True, exist_ok=True)
    cfg_path = work / "mailvm.toml"
    cfg_path.write_text(f'[spool]\ndir = "{work}/spool"\n[scantable]\npath = "{work}/table"\n'
                        f'[pool]\nwork_dir = "{work}/pool"\n[links]\nenabled = false\n'
                        f'[quarantine]\ndir = "{work}/q"\n[milter]\nworker_user = ""\n')
    cfg = load_config(str(cfg_path))
    svc = MilterService(cfg, str(cfg_path), None, None, b"k" * 32, workers=1)
    svc.start()
    settings = AnalysisSettings(max_wait_s=30, detonate=False, detonate_kinds=(), links_enabled=False,
                                max_links=0, max_link_bytes=0, archive_passwords=())
    msg = work / "spool" / "m.eml"
    msg.write_bytes(b"From: a@b.example\r\nSubject: hop\r\n\r\nhello\r\n")
    total, scan = [], []
    try:
        for i in range(rounds + 3):
            t0 = time.monotonic()
            report = svc._scan_in_worker(ScanJob(str(msg), settings, time.monotonic() + 30), None,
                                         time.monotonic() + 60, "bench")
            dt = time.monotonic() - t0
            if report is None:
                raise RuntimeError("the scan worker gave no report")
            if i >= 3:  # the first tasks start the worker
                total.append(dt * 1000)
                scan.append(float(report.get("duration_s", 0)) * 1000)
    finally:
        svc.close()
    transport = [t - s for t, s in zip(total, scan)]
    return {"round_trip_ms": summary(total), "worker_scan_ms": summary(scan), "transport_ms": summary(transport)}


def slot_handover(work: Path, rounds: int) -> dict[str, Any]:
    """Hand-over to a pre-warmed process-backend slot (job written -> agent RUNNING), from the pool."""
    from mailvm.config import PoolConfig
    from mailvm.job import Job
    from mailvm.vmpool.backends.process import ProcessBackend
    from mailvm.vmpool.pool import Pool

    work.mkdir(parents=True, exist_ok=True)
    cfg = PoolConfig(backend="process", slots=1, work_dir=str(work / "pool"), page_bytes=8 << 20, job_timeout_s=10,
                     idle_s=0.5)
    sample = work / "s.sh"
    pool = Pool(cfg, ProcessBackend(cfg))
    handover: Any = {}
    try:
        pool.start()
        pool.wait_warm(300)
        for i in range(rounds):
            sample.write_text(f"#!/bin/sh\necho hop {i}\n")
            job = Job(sha256=f"{i:064x}", path=str(sample), name="s.sh", type="text/x-shellscript", kind="script")
            pool.submit(job).result(60)
        st = pool.status()
        handover = st.get("handover_ms") or {}
    finally:
        pool.close()
    return {"handover_ms": handover}


def wakeups(work: Path, rounds: int) -> dict[str, Any]:
    """The two cross-process wake-ups (mailvm.wakebus): job pushed -> pool's pop; verdict -> worker's wait."""
    from bench.bench_wakeup import job_round, verdict_round

    job = job_round(work / "job", rounds, True)
    verdict = verdict_round(work / "verdict", rounds, True)
    return {"queue_to_pool_ms": job["latency_ms"], "verdict_to_worker_ms": verdict["latency_ms"],
            "pool_wait_cpu_per_s": job["cpu_per_wait_s"], "worker_wait_cpu_per_s": verdict["cpu_per_wait_s"]}


def idle_service(work: Path, idle_s: float) -> dict[str, Any]:
    """CPU of a warm, idle ``mailvm serve`` (2 scan workers, 2 ready process-backend slots)."""
    from mailvm.lab.common import free_port, lab_config, wait_port
    from mailvm.vmpool.pool import read_status

    root = work / "serve"
    (root / "policy.d").mkdir(parents=True)
    port = free_port()
    cfg = root / "mailvm.toml"
    cfg.write_text(lab_config(root, port, slots=2, workers=2))
    log = open(root / "serve.log", "ab")
    proc = subprocess.Popen([sys.executable, "-m", "mailvm.cli.mailvm_main", "-c", str(cfg), "serve"],
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    log.close()
    try:
        wait_port(port, 120, alive=lambda: proc.poll() is None)
        end = time.monotonic() + 300
        while time.monotonic() < end:
            st = read_status(root / "pool")
            if st and st.get("state") == "running" and st["slots"]["ready"] >= 2:
                break
            time.sleep(0.5)
        else:
            raise RuntimeError("the pool did not get 2 ready slots")
        time.sleep(5)  # start-up work (YARA compile in the workers, first status writes) settles
        c0, p0, t0 = tree_cpu_seconds(proc.pid), tree_cpu_by_part(proc.pid), time.monotonic()
        time.sleep(idle_s)
        c1, p1, t1 = tree_cpu_seconds(proc.pid), tree_cpu_by_part(proc.pid), time.monotonic()
        return {"seconds": round(t1 - t0, 1), "cpu_pct_of_core": round((c1 - c0) / (t1 - t0) * 100, 2),
                "by_part_pct": {k: round((p1[k] - p0.get(k, 0.0)) / (t1 - t0) * 100, 2) for k in p1}}
    finally:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=60)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            os.killpg(proc.pid, signal.SIGKILL)


HOP_NAMES = (
    ("milter_worker", "milter -> scan worker -> milter (Pebble round trip of a ScanJob, scan time subtracted)"),
    ("queue_to_pool", "scan worker -> pool service (durable queue push -> blocking pop, wake bus)"),
    ("slot", "pool -> pre-warmed slot (file on the page + doorbell -> agent RUNNING, process backend)"),
    ("verdict_to_worker", "verdict -> waiting scan worker (table publish -> wait returns, wake bus)"),
)


def bench(rounds: int = 30, idle_s: float = 30.0) -> dict[str, Any]:
    """Both measurements in a fresh work directory; returns the result record."""
    work = Path(tempfile.mkdtemp(prefix="mailvm-bench-hops-"))
    result: dict[str, Any] = {"benchmark": "hops", "backend": "process", "machine": machine(), "rounds": rounds}
    try:
        result["milter_worker"] = milter_worker_round_trip(work / "mw", rounds)
        result["slot"] = slot_handover(work / "slot", rounds)
        result["wakeups"] = wakeups(work / "wake", rounds)
        result["idle"] = idle_service(work / "idle", idle_s)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    med = lambda d: d.get("median") if isinstance(d, dict) else None  # noqa: E731
    values = {"milter_worker": med(result["milter_worker"]["transport_ms"]),
              "queue_to_pool": med(result["wakeups"]["queue_to_pool_ms"]),
              "slot": med(result["slot"]["handover_ms"]),
              "verdict_to_worker": med(result["wakeups"]["verdict_to_worker_ms"])}
    result["hops"] = [{"hop": key, "what": what, "median_ms": values[key]} for key, what in HOP_NAMES]
    return result


def plot(result: dict[str, Any], path: Path) -> Path | None:
    plt = pyplot()
    if plt is None:
        return None
    hops = [h for h in result["hops"] if h["median_ms"] is not None]
    fig, ax = plt.subplots(figsize=(8, 3))
    ax.barh(range(len(hops)), [h["median_ms"] for h in hops], color="tab:blue")
    ax.set_yticks(range(len(hops)), [h["what"].split(" (")[0] for h in hops], fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("median ms")
    ax.set_title(f"hops of an unseen file; idle service {result['idle']['cpu_pct_of_core']:.2f} % of a core",
                 fontsize=9)
    return save_figure(fig, path)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--idle-s", type=float, default=30.0)
    ap.add_argument("--out", type=Path, default=RESULTS / "hops.json")
    args = ap.parse_args(argv)
    result = bench(args.rounds, args.idle_s)
    for h in result["hops"]:
        v = h["median_ms"]
        print(f"{h['what'][:90]:90s} {v if v is not None else float('nan'):8.3f} ms")
    idle = result["idle"]
    print(f"idle mailvm serve (2 workers, 2 ready slots): {idle['cpu_pct_of_core']:.2f} % of a core "
          f"over {idle['seconds']} s; by part {idle['by_part_pct']}")
    write_json(args.out, result)
    plot(result, args.out.with_suffix(".png"))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
