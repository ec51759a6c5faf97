"""How fast a waiting process learns of a change made in another process, on one host.

Two hand-offs of the local data path (issue 14 item 2), each measured with the wake
bus (mailvm.wakebus: a UNIX datagram per change) and without it (the sleep loop the
bus replaced: 5 ms doubling to 100 ms for the table, 5 ms doubling to 100 ms for the
queue), interleaved in the same run:

* ``verdict``: a scan worker waits in ``ScanTable.wait()``; another process
  publishes the verdict; latency = wake-up time - publish time;
* ``job``: the pool service blocks in ``JobQueue.pop()``; another process pushes a
  job; latency = pop return time - push time.

The publisher waits a random 50-400 ms before each change, as real detonations end at
random moments (a fixed delay would flatter a poll whose period divides it).  Times
are ``time.monotonic()``, one clock for every process on Linux.  Also reported: the
CPU time the waiting process used per second of waiting (idle cost).

Usage: ``python -m bench.bench_wakeup [--rounds 40] [--out bench/results/wakeup.json]``
"""

from __future__ import annotations

import argparse
import multiprocessing
import random
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

from bench.common import RESULTS, machine, pyplot, save_figure, summary, write_json
from mailvm.config import ScanTableConfig

MP = multiprocessing.get_context("spawn")


def _key(i: int, tag: str) -> str:
    import hashlib

    return hashlib.sha256(f"{tag}-{i}-{time.time_ns()}".encode()).hexdigest()


def _publisher(path: str, keys: list[str], conn) -> None:
    from mailvm.scantable import ScanTable
    from mailvm.verdict import Finding, Verdict

    t = ScanTable(ScanTableConfig(path=path))
    rng = random.Random(7)
    for key in keys:
        conn.recv()  # the waiter is waiting
        time.sleep(rng.uniform(0.05, 0.4))
        at = time.monotonic()
        t.publish(key, Verdict.from_findings([Finding("bench", 1)]))
        conn.send(at)
    t.close()


def _pusher(root: str, n: int, sample: str, conn) -> None:
    from mailvm.vmpool.jobqueue import JobQueue

    q = JobQueue(root)
    rng = random.Random(11)
    for i in range(n):
        conn.recv()
        time.sleep(rng.uniform(0.05, 0.4))
        at = time.monotonic()
        q.push({"sha256": _key(i, "job"), "path": sample, "name": "x", "kind": "script", "static_findings": []})
        conn.send(at)
    q.close()


def _cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def verdict_round(work: Path, rounds: int, bus: bool) -> dict:
    import mailvm.scantable as st
    from mailvm.scantable import ScanTable

    path = str(work / f"table-{'bus' if bus else 'poll'}")
    table = ScanTable(ScanTableConfig(path=path))
    if not bus:
        table._bus.listen = lambda _cb: False  # the sleep loop the bus replaced
    keys = [_key(i, "v") for i in range(rounds)]
    for k in keys:
        assert table.claim(k, "bench:1:w").won
    parent, child = MP.Pipe()
    proc = MP.Process(target=_publisher, args=(path, keys, child))
    proc.start()
    lat, cpu, waited = [], 0.0, 0.0
    for k in keys:
        parent.send("ready")
        c0, t0 = _cpu(), time.monotonic()
        v = table.wait(k, time.monotonic() + 30)
        woke = time.monotonic()
        cpu += _cpu() - c0
        waited += woke - t0
        at = parent.recv()
        assert v is not None and v.state == "done"
        lat.append((woke - at) * 1000)
    proc.join(30)
    table.close()
    assert st.BUS_FALLBACK_S > 0
    return {"latency_ms": summary(lat), "cpu_per_wait_s": round(cpu / max(waited, 1e-9), 4), "samples": lat}


def job_round(work: Path, rounds: int, bus: bool) -> dict:
    from mailvm.vmpool.jobqueue import JobQueue

    root = work / f"queue-{'bus' if bus else 'poll'}"
    work.mkdir(parents=True, exist_ok=True)
    sample = work / "sample.sh"
    sample.write_bytes(b"#!/bin/sh\necho bench\n")
    q = JobQueue(root)
    parent, child = MP.Pipe()
    proc = MP.Process(target=_pusher, args=(str(root), rounds, str(sample), child))
    proc.start()
    lat, cpu, waited = [], 0.0, 0.0
    for _ in range(rounds):
        parent.send("ready")
        c0, t0 = _cpu(), time.monotonic()
        if bus:
            rec = q.pop(block_s=30)
        else:  # the pool service's former loop: pop, sleep 5 ms doubling to 100 ms
            delay, rec = 0.005, None
            while rec is None:
                rec = q.pop()
                if rec is None:
                    time.sleep(delay)
                    delay = min(0.1, delay * 2)
        woke = time.monotonic()
        cpu += _cpu() - c0
        waited += woke - t0
        at = parent.recv()
        assert rec is not None
        q.done(rec)
        lat.append((woke - at) * 1000)
    proc.join(30)
    q.close()
    return {"latency_ms": summary(lat), "cpu_per_wait_s": round(cpu / max(waited, 1e-9), 4), "samples": lat}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=40)
    ap.add_argument("--out", type=Path, default=RESULTS / "wakeup.json")
    args = ap.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="mailvm-bench-wakeup-"))
    results: dict = {"machine": machine(), "rounds": args.rounds}
    try:
        for what, fn in (("verdict", verdict_round), ("job", job_round)):
            # interleaved: bus, poll, bus, poll (halves), so load changes hit both alike
            half = max(1, args.rounds // 2)
            runs = {"bus": [], "poll": []}
            cpu = {"bus": [], "poll": []}
            for rep in range(2):
                for mode in ("bus", "poll"):
                    r = fn(work / f"{what}-{rep}", half, mode == "bus")
                    runs[mode] += r["samples"]
                    cpu[mode].append(r["cpu_per_wait_s"])
            results[what] = {m: {"latency_ms": summary(runs[m]), "cpu_per_wait_s": round(sum(cpu[m]) / len(cpu[m]), 4),
                                 "samples": [round(x, 3) for x in runs[m]]} for m in runs}
            b, p = results[what]["bus"]["latency_ms"]["median"], results[what]["poll"]["latency_ms"]["median"]
            results[what]["ratio_poll_over_bus"] = round(p / b, 1) if b else None
            print(f"{what:8s} wake-up median: bus {b:.3f} ms, sleep loop {p:.3f} ms ({results[what]['ratio_poll_over_bus']}x); "
                  f"CPU per second waited: bus {results[what]['bus']['cpu_per_wait_s']:.4f} s, "
                  f"sleep loop {results[what]['poll']['cpu_per_wait_s']:.4f} s")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    write_json(args.out, results)
    plt = pyplot()
    if plt is not None:
        fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
        for ax, what in zip(axes, ("verdict", "job")):
            data = [results[what]["bus"]["samples"], results[what]["poll"]["samples"]]
            ax.boxplot(data, showfliers=False)
            ax.set_xticks([1, 2], ["wake bus", "sleep loop"])
            ax.set_title(f"{what}: change -> waiter awake")
            ax.set_ylabel("ms")
        save_figure(fig, args.out.with_suffix(".png"))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
