"""Scaling past one host: 1 and 2 ``mailvm pool`` workers sharing one Redis (issue 14).

For each worker count, separate ``mailvm pool`` processes (process backend, their own work
directories) take jobs from one Redis stream, as pool hosts would.  This process plays the
scan workers of the MX hosts: it claims each of ``files`` unseen harmless scripts in the Redis
table, pushes the job, and waits for every verdict on the table (pub/sub).  Reported:

* **files per minute**: verdicts / time from the first push to the last verdict;
* **CPU per file**: CPU seconds of the pool workers' process trees (slots and sandboxes
  included) over the batch, divided by the files;
* **Redis round trip per lookup**: the median time of one ``get()`` of a known verdict
  from the Redis table (one network round trip on loopback), and the local diskcache
  table's in the same run, as the baseline.

On one 2-core machine the second worker shares the same cores: the figure shows what the
stream and the table cost and that nothing is detonated twice, not what a second host adds.

Usage: ``python -m bench.redis_scaling [--files 12] [--workers 1 2] [--out bench/results/redis_scaling.json]``
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import RESULTS, machine, pyplot, save_figure, tree_cpu_seconds, write_json

POOL_SLOTS = 2
JOB_TIMEOUT_S = 30


def _script(tag: str) -> bytes:
    return f"#!/bin/sh\n# {tag} {time.time_ns()}\nsleep 0.2\necho done\n".encode()


def _pool_config(root: Path, url: str) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    cfg = root / "mailvm.toml"
    cfg.write_text(f'[scantable]\npath = "{root}/table"\nurl = "{url}"\n'
                   f'[pool]\nbackend = "process"\nslots = {POOL_SLOTS}\nwork_dir = "{root}/work"\n'
                   f'queue_url = "{url}"\njob_timeout_s = {JOB_TIMEOUT_S}\nidle_s = 1\n')
    return cfg


def _wait_ready(roots: list[Path], procs: list[subprocess.Popen], timeout: float = 120) -> None:
    from mailvm.procfs import find_processes

    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if all(len(find_processes(b"mailvm.guest.agent", str(r).encode())) >= POOL_SLOTS for r in roots):
            return
        if any(p.poll() is not None for p in procs):
            raise RuntimeError("a pool worker exited at start")
        time.sleep(0.2)
    raise RuntimeError("pool workers not ready")


def lookup_rtt(table: Any, n: int = 2000) -> dict[str, float]:
    """Median and p95 of one get() of a known verdict, in microseconds."""
    from mailvm.verdict import Finding, Verdict

    key = hashlib.sha256(f"rtt-{time.time_ns()}".encode()).hexdigest()
    table.publish(key, Verdict.from_findings([Finding("bench", 1)]))
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        table.get(key)
        times.append((time.perf_counter() - t0) * 1e6)
    times.sort()
    return {"median_us": round(statistics.median(times), 1), "p95_us": round(times[int(0.95 * len(times)) - 1], 1)}


def one_run(workers: int, files: int, work: Path) -> dict[str, Any]:
    from mailvm.config import ScanTableConfig
    from mailvm.lab.redis import RedisServer
    from mailvm.store.redis_queue import RedisJobQueue
    from mailvm.store.redis_table import RedisScanTable

    redis = RedisServer(work / f"redis-{workers}").start()
    roots = [work / f"w{workers}-pool{i}" for i in range(workers)]
    procs = []
    try:
        for r in roots:
            cfg = _pool_config(r, redis.url)
            with open(work / f"{r.name}.log", "ab") as log:
                procs.append(subprocess.Popen(
                    [sys.executable, "-m", "mailvm.cli.mailvm_main", "-c", str(cfg), "-v", "pool"],
                    stdout=log, stderr=subprocess.STDOUT, start_new_session=True))
        _wait_ready(roots, procs)
        table = RedisScanTable(ScanTableConfig(path=str(work / "unused")), redis.url)
        queue = RedisJobQueue(redis.url, work / f"producer-{workers}", consumer="mx")
        batch = []
        for i in range(files):
            data = _script(f"w{workers}-{i}")
            path = work / f"job-{workers}-{i}.sh"
            path.write_bytes(data)
            batch.append((hashlib.sha256(data).hexdigest(), path))
        cpu0 = sum(tree_cpu_seconds(p.pid) for p in procs)
        t0 = time.monotonic()
        for sha, path in batch:
            owner = f"mx:{os.getpid()}:bench"
            assert table.claim(sha, owner).won
            queue.push({"sha256": sha, "path": str(path), "name": path.name, "kind": "script",
                        "static_findings": [], "owner": owner})
        verdicts = [table.wait(sha, time.monotonic() + 300) for sha, _ in batch]
        elapsed = time.monotonic() - t0
        cpu = sum(tree_cpu_seconds(p.pid) for p in procs) - cpu0
        done = [v for v in verdicts if v is not None and v.state == "done" and v.source == "detonation"]
        rtt = lookup_rtt(table)
        table.close()
        per_worker = [(work / f"{r.name}.log").read_text(errors="replace").count(" detonated ") for r in roots]
        return {"workers": workers, "files": files, "verdicts": len(done), "elapsed_s": round(elapsed, 2),
                "files_per_min": round(len(done) / elapsed * 60, 1) if elapsed > 0 else None,
                "cpu_s_per_file": round(cpu / max(1, len(done)), 3), "redis_get": rtt,
                "detonations_per_worker": per_worker}
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
                try:
                    p.wait(30)
                except subprocess.TimeoutExpired:
                    os.killpg(p.pid, signal.SIGKILL)
        redis.stop()


def local_rtt(work: Path) -> dict[str, float]:
    from mailvm.config import ScanTableConfig
    from mailvm.scantable import ScanTable

    t = ScanTable(ScanTableConfig(path=str(work / "local-table")))
    try:
        return lookup_rtt(t)
    finally:
        t.close()


def bench(worker_counts: tuple[int, ...] = (1, 2), files: int = 12) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="mailvm-bench-redis-", dir="/var/tmp"))
    os.chmod(work, 0o755)
    res: dict[str, Any] = {"benchmark": "redis_scaling", "backend": "process", "machine": machine(),
                           "pool_slots": POOL_SLOTS, "runs": [], "notes": [
        "every pool worker is a separate `mailvm pool` process with its own work directory, on this one machine"]}
    try:
        for n in worker_counts:
            r = one_run(n, files, work)
            res["runs"].append(r)
            print(f"{n} pool worker(s): {r['verdicts']}/{files} verdicts, {r['files_per_min']} files/min, "
                  f"{r['cpu_s_per_file']} CPU s/file, Redis get {r['redis_get']['median_us']} us "
                  f"(per worker: {r['detonations_per_worker']} detonations)", flush=True)
        res["local_get"] = local_rtt(work)
        print(f"local diskcache table get: {res['local_get']['median_us']} us (same run)")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return res


def plot(result: dict[str, Any], path: Path) -> Path | None:
    plt = pyplot()
    if plt is None:
        return None
    runs = result.get("runs", [])
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    xs = [str(r["workers"]) for r in runs]
    axes[0].bar(xs, [r["files_per_min"] or 0 for r in runs])
    axes[0].set_xlabel("pool workers on one Redis")
    axes[0].set_ylabel("files per minute")
    axes[1].bar(xs + ["local"], [r["redis_get"]["median_us"] for r in runs] + [result.get("local_get", {}).get(
        "median_us", 0)])
    axes[1].set_ylabel("table lookup, µs (median)")
    return save_figure(fig, path)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--files", type=int, default=12)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--out", type=Path, default=RESULTS / "redis_scaling.json")
    args = ap.parse_args(argv)
    res = bench(tuple(args.workers), args.files)
    write_json(args.out, res)
    plot(res, args.out.with_suffix(".png"))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
