"""Scaling with the number of VMs: files per minute and emails per second with 1, 2, 4, 8 slots.

* **files per minute**: an in-process :class:`mailvm.vmpool.pool.Pool` with N
  pre-warmed slots gets ``jobs`` unique harmless shell scripts at once; the
  figure is real verdicts / time until the last verdict (slot refills included:
  a slot is single-use, so the pool makes a new clone per file).  ``error``
  verdicts (the sandbox or slot failed: the milter would tempfail the message)
  are not counted as analysed files; their number and reasons are recorded.  Also recorded: the
  machine's busy cores during the run (whole machine, other work included),
  the CPU of this process tree (the pool and every slot), and the pool's
  median hand-over and run time.
* **emails per second**: ``mailvm serve`` restarted with N slots behind the
  lab Postfix (``bench.bench_postfix``), the ``unseen_benign_10`` mix (one
  message in ten carries an unseen script that is detonated), end to end.

Both for the ``process`` backend and, when a guest image is built, the
``qemu`` backend (flash clones).  On a 2-core machine the cores saturate
early; the busy-cores column shows where.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from tqdm import tqdm

from bench.bench_postfix import MIXES, Corpus, LabSettings, MailLab, benign_script, run_once, warm_cache
from bench.common import (
    QEMU_WORK,
    RESULTS,
    CpuMeter,
    lab_dir,
    machine,
    pyplot,
    save_figure,
    tree_cpu_seconds,
    write_json,
)

log = logging.getLogger(__name__)

PAGE_BYTES = 8 << 20
MIX = "unseen_benign_10"


def _backend(name: str, slots: int, work: Path, image_dir: str | None):
    from mailvm.config import PoolConfig
    from mailvm.vmpool.backends.process import ProcessBackend
    from mailvm.vmpool.backends.qemu import QemuBackend

    if name == "qemu":
        cfg = PoolConfig(backend="qemu", slots=slots, work_dir=str(QEMU_WORK / "vport"), page_bytes=PAGE_BYTES,
                         image_dir=image_dir, job_timeout_s=60.0, idle_s=1.0, ready_timeout_s=180)
        return cfg, QemuBackend(cfg, image_dir=image_dir)
    cfg = PoolConfig(backend="process", slots=slots, work_dir=str(work), page_bytes=PAGE_BYTES, job_timeout_s=30.0,
                     idle_s=1.0)
    return cfg, ProcessBackend(cfg)


def files_per_minute(backend: str, slots: int, jobs: int, root: Path, image_dir: str | None,
                     rng: random.Random) -> dict[str, Any]:
    from mailvm.vmpool.pool import Job, Pool

    cfg, b = _backend(backend, slots, root / f"pool-{backend}-{slots}", image_dir)
    files = []
    for i in range(jobs):
        data = benign_script(rng.randbytes(12).hex())
        path = root / f"job-{backend}-{slots}-{i}"
        path.write_bytes(data)
        files.append((hashlib.sha256(data).hexdigest(), path))
    pool = Pool(cfg, b)
    try:
        pool.start()
        t_warm = time.monotonic()
        warm = pool.wait_warm(300)
        warm_s = time.monotonic() - t_warm
        cpu0 = tree_cpu_seconds(os.getpid())
        meter = CpuMeter()
        t0 = time.monotonic()
        futs = [pool.submit(Job(sha256=sha, path=str(p), name="install", type="text/x-shellscript", kind="script"))
                for sha, p in files]
        verdicts = [f.result(timeout=1800) for f in futs]
        elapsed = time.monotonic() - t0
        busy = meter.busy_cores()
        cpu = tree_cpu_seconds(os.getpid()) - cpu0
        st = pool.status()
    finally:
        pool.close()
        b.close()
    counts: dict[str, int] = {}
    reasons: dict[str, int] = {}
    for v in verdicts:
        counts[v.verdict] = counts.get(v.verdict, 0) + 1
        if v.verdict == "error":
            why = next((f"{f.id}: {f.detail[:120]}" for f in v.findings if f.severity == 0), "unknown")
            reasons[why] = reasons.get(why, 0) + 1
    good = jobs - counts.get("error", 0)
    return {
        "backend": backend, "slots": slots, "jobs": jobs, "warm": warm, "warm_s": round(warm_s, 2),
        "seconds": round(elapsed, 2),
        # an error verdict is no analysis (the milter tempfails its message): only real verdicts count
        "files_per_min": round(good / elapsed * 60, 1), "files_per_min_incl_errors": round(jobs / elapsed * 60, 1),
        "errors": counts.get("error", 0), "error_reasons": reasons,
        "busy_cores": round(busy, 2), "cpu_s_per_file": round(cpu / jobs, 3),
        "handover_ms": st["handover_ms"], "run_s": st["run_s"], "refill_ms": st["refill_ms"],
        "verdicts": counts,
    }


def emails_per_second(lab: MailLab, corpus: Corpus, messages: int, sessions: int) -> dict[str, Any]:
    plan = corpus.plan(MIXES[MIX], messages)
    ref = run_once(lab, "plain", plan, sessions)
    st0 = lab.pool_status() or {}
    mv = run_once(lab, "milter", plan, sessions)
    time.sleep(1.5)  # the pool writes status.json at most once a second
    st = lab.pool_status() or {}
    corpus.drop_unique()
    return {"messages": messages, "unique_files": plan.unique_files, "postfix": ref, "mailvm": mv,
            "ratio": round(mv["msg_per_s"] / ref["msg_per_s"], 3) if ref["msg_per_s"] and mv["msg_per_s"] else None,
            "jobs_done": (st.get("jobs") or {}).get("done", 0) - (st0.get("jobs") or {}).get("done", 0),
            "handover_ms": st.get("handover_ms"), "run_s": st.get("run_s")}


def bench(slot_counts: tuple[int, ...] = (1, 2, 4, 8), backends: tuple[str, ...] = ("process", "qemu"),
          image_dir: str | None = None, jobs: dict[str, int] | None = None,
          messages: dict[str, int] | None = None, sessions: int = 20, with_email: bool = True) -> dict[str, Any]:
    jobs = jobs or {"process": 24, "qemu": 16}  # the same count at every slot number
    messages = messages or {"process": 200, "qemu": 80}
    result: dict[str, Any] = {"benchmark": "scaling", "machine": machine(image_dir), "slot_counts": list(slot_counts),
                              "mix": MIX, "files": {}, "emails": {}, "notes": []}
    todo = [b for b in backends if b != "qemu" or image_dir]
    result["backend"] = " + ".join(todo)
    if "qemu" in backends and not image_dir:
        result["notes"].append("qemu backend not measured: no guest image is built (mvctl image build)")
    rng = random.Random(11)
    root = Path(tempfile.mkdtemp(prefix="mailvm-bench-scaling-"))
    steps = len(todo) * len(slot_counts) * (2 if with_email else 1)
    try:
        with tqdm(total=steps, desc="scaling", unit="step") as bar:
            for backend in todo:
                rows = []
                for n in slot_counts:
                    bar.set_description(f"files/min {backend} {n} slots")
                    try:
                        rows.append(files_per_minute(backend, n, jobs[backend], root, image_dir, rng))
                    except Exception as exc:  # one failing point must not lose the others
                        log.exception("scaling %s %d slots", backend, n)
                        rows.append({"backend": backend, "slots": n, "error": str(exc)[:300]})
                    bar.update(1)
                result["files"][backend] = rows
            if with_email:
                lab_root = lab_dir("mailvm-bench-scaling-")
                try:
                    corpus = Corpus(lab_root / "msgs", seed=5)
                    settings = LabSettings(backend=todo[0], slots=slot_counts[0], image_dir=image_dir)
                    with MailLab(lab_root / "lab", settings) as lab:
                        warm_cache(lab, corpus)
                        for backend in todo:
                            rows = []
                            for n in slot_counts:
                                bar.set_description(f"emails/s {backend} {n} slots")
                                try:
                                    lab.restart_mailvm(backend=backend, slots=n, image_dir=image_dir,
                                                       pool_work=QEMU_WORK / "vport" if backend == "qemu" else None)
                                    rows.append({"slots": n, **emails_per_second(lab, corpus, messages[backend],
                                                                                 sessions)})
                                except Exception as exc:
                                    log.exception("emails/s %s %d slots", backend, n)
                                    rows.append({"slots": n, "error": str(exc)[:300], "log": lab.log_tail(10)})
                                bar.update(1)
                            result["emails"][backend] = rows
                finally:
                    shutil.rmtree(lab_root, ignore_errors=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return result


def plot(result: dict[str, Any], path: Path) -> Path:
    plt = pyplot()

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(12, 4.5))
    marks = {"process": "o-", "qemu": "s-"}
    for backend, rows in result["files"].items():
        ok = [r for r in rows if "files_per_min" in r]
        xs = [r["slots"] for r in ok]
        a1.plot(xs, [r["files_per_min"] for r in ok], marks.get(backend, "o-"), label=backend)
        for r in ok:
            note = f"{r['busy_cores']:.1f}" + (f" ({r['errors']} err)" if r.get("errors") else "")
            a1.annotate(note, (r["slots"], r["files_per_min"]), textcoords="offset points",
                        xytext=(0, 6), ha="center", fontsize=7)
    a1.set_xscale("log", base=2)
    a1.set_yscale("log")
    a1.set_xticks(result["slot_counts"], [str(n) for n in result["slot_counts"]])
    a1.set_xlabel("slots")
    a1.set_ylabel("files per minute (log)")
    a1.set_title(f"verdicts per minute, errors excluded (labels: busy cores of {result['machine']['cores']})",
                 fontsize=9)
    a1.legend(fontsize=8)
    colors = {"process": "tab:blue", "qemu": "tab:orange"}
    for backend, rows in result["emails"].items():
        ok = [r for r in rows if "mailvm" in r]
        xs = [r["slots"] for r in ok]
        color = colors.get(backend)
        a2.plot(xs, [r["mailvm"]["msg_per_s"] for r in ok], marks.get(backend, "o-"), color=color,
                label=f"Postfix + mailvm ({backend})")
        if ok:
            a2.plot(xs, [r["postfix"]["msg_per_s"] for r in ok], ":", color=color, alpha=0.6,
                    label=f"Postfix alone, same plan ({backend} runs)")
    a2.set_xscale("log", base=2)
    a2.set_xticks(result["slot_counts"], [str(n) for n in result["slot_counts"]])
    a2.set_yscale("log")
    a2.set_xlabel("slots")
    a2.set_ylabel("emails per second (log)")
    a2.set_title("emails/s through Postfix, 10 % unseen benign files", fontsize=9)
    a2.legend(fontsize=7)
    return save_figure(fig, path)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--slots", type=int, nargs="+", default=[1, 2, 4, 8])
    ap.add_argument("--backends", nargs="+", default=["process", "qemu"], choices=["process", "qemu"])
    ap.add_argument("--image-dir", default=None)
    ap.add_argument("--no-email", action="store_true")
    ap.add_argument("--out", default=str(RESULTS / "scaling.json"))
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.ERROR)
    from bench.common import find_image_dir

    image_dir = find_image_dir(args.image_dir) if "qemu" in args.backends else None
    result = bench(tuple(args.slots), tuple(args.backends), image_dir, with_email=not args.no_email)
    out = Path(args.out)
    write_json(out, result)
    plot(result, out.with_suffix(".png"))
    for backend, rows in result["files"].items():
        for r in rows:
            print(backend, r.get("slots"), r.get("files_per_min"), "files/min, busy cores", r.get("busy_cores"),
                  r.get("error", ""), r.get("error_reasons", ""))
    for backend, rows in result["emails"].items():
        for r in rows:
            print(backend, r.get("slots"), (r.get("mailvm") or {}).get("msg_per_s"), "msg/s", r.get("error", ""))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
