"""``make bench``: the evaluation suite in one command (``--quick``: a smoke run under 3 minutes).

Six measurements (issue 6; the fifth and sixth from issue 14), each written as ``OUT/<name>.json`` and ``OUT/<name>.png``:

1. ``components``        overhead of each pipeline component (bench/components.py)
2. ``flash_vs_classic``  flash clone vs classic full revert, same image (bench/flash_vs_classic.py)
3. ``postfix``           emails per second through Postfix with smtp-source (bench/bench_postfix.py)
4. ``scaling``           files/min and emails/s with 1, 2, 4, 8 slots (bench/scaling.py)
5. ``redis_scaling``     1 and 2 pool workers on one Redis: files/min, CPU/file, lookup round trip
                         (bench/redis_scaling.py; skipped without redis-server)
6. ``hops``              each hop of an unseen file, and the idle service's CPU (bench/bench_hops.py)

then ``OUT/results.json`` (all of them plus the machine record and what ran
for how long) and ``OUT/performance.md`` (bench/report.py).  A full run also
publishes the report as ``docs/performance.md`` with its figures in
``docs/img/`` (``--docs DIR`` to choose, ``--no-docs`` to skip); a quick run
publishes only when ``--docs`` is given.  A measurement that fails is recorded
with its error and the others still run; the exit status is then 1.

    python -m bench.run [--quick] [--out DIR] [--only NAME...] [--no-qemu] [--image-dir DIR]
    python -m bench.run --replot [--out DIR]     # redraw plots + report from OUT/results.json
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Callable

from bench.common import REPO, RESULTS, find_image_dir, machine, write_json

log = logging.getLogger(__name__)

STAGES = ("components", "flash_vs_classic", "postfix", "scaling", "redis_scaling", "hops")

#: the counts of a full run and of --quick (the quick run must stay under 3 minutes)
PARAMS: dict[str, dict[str, dict[str, Any]]] = {
    "full": {
        "components": {"reps": 10, "qemu_reps": 3},
        "flash_vs_classic": {"reps": 8, "boots": 3, "idle_s": 4.0, "clones": (1, 4, 8)},
        "postfix": {"messages": 400, "repeats": 3, "sessions": 20},
        "scaling": {"slot_counts": (1, 2, 4, 8), "jobs": {"process": 24, "qemu": 16},
                    "messages": {"process": 200, "qemu": 80}},
        "redis_scaling": {"workers": (1, 2), "files": 24},
        "hops": {"rounds": 30, "idle_s": 30.0},
    },
    "quick": {
        "components": {"reps": 2, "qemu_reps": 1},
        "flash_vs_classic": {"reps": 2, "boots": 1, "idle_s": 1.0, "clones": (1,)},
        "postfix": {"messages": 100, "repeats": 1, "sessions": 20},
        "scaling": {"slot_counts": (1, 2), "jobs": {"process": 4, "qemu": 2}, "messages": {"process": 60, "qemu": 30}},
        "redis_scaling": {"workers": (1, 2), "files": 3},
        "hops": {"rounds": 3, "idle_s": 3.0},
    },
}


def stage_components(p: dict[str, Any], image_dir: str | None, qemu: bool, out: Path) -> dict[str, Any]:
    from bench import components

    r = components.bench(p["reps"], p["qemu_reps"], image_dir if qemu else None, with_qemu=qemu)
    components.plot(r, out / "components.png")
    return r


def stage_flash(p: dict[str, Any], image_dir: str | None, qemu: bool, out: Path) -> dict[str, Any]:
    from bench import flash_vs_classic

    r = flash_vs_classic.bench(image_dir if qemu else None, p["reps"], p["boots"], p["idle_s"], p["clones"])
    if not qemu and image_dir:
        r["skipped"] = "qemu disabled for this run (--no-qemu): flash clone vs classic revert not measured"
    flash_vs_classic.plot(r, out / "flash_vs_classic.png")
    return r


def stage_postfix(p: dict[str, Any], image_dir: str | None, qemu: bool, out: Path) -> dict[str, Any]:
    from bench import bench_postfix

    r = bench_postfix.bench(p["messages"], p["repeats"], p["sessions"], tuple(bench_postfix.MIXES))
    bench_postfix.plot(r, out / "postfix.png")
    return r


def stage_scaling(p: dict[str, Any], image_dir: str | None, qemu: bool, out: Path) -> dict[str, Any]:
    from bench import scaling

    backends = ("process", "qemu") if qemu else ("process",)
    r = scaling.bench(tuple(p["slot_counts"]), backends, image_dir if qemu else None, p["jobs"], p["messages"])
    if not qemu:
        r["notes"].append("qemu backend not measured in this run (--quick or --no-qemu)")
    scaling.plot(r, out / "scaling.png")
    return r


def stage_redis_scaling(p: dict[str, Any], image_dir: str | None, qemu: bool, out: Path) -> dict[str, Any]:
    from bench import redis_scaling
    from mailvm.lab.redis import REDIS_SERVER

    if REDIS_SERVER is None:
        return {"benchmark": "redis_scaling", "backend": "process", "machine": machine(image_dir), "runs": [],
                "skipped": "redis-server is not installed (make setup installs it)"}
    r = redis_scaling.bench(tuple(p["workers"]), p["files"])
    redis_scaling.plot(r, out / "redis_scaling.png")
    return r


def stage_hops(p: dict[str, Any], image_dir: str | None, qemu: bool, out: Path) -> dict[str, Any]:
    from bench import bench_hops

    r = bench_hops.bench(p["rounds"], p["idle_s"])
    bench_hops.plot(r, out / "hops.png")
    return r


RUNNERS: dict[str, Callable[[dict[str, Any], str | None, bool, Path], dict[str, Any]]] = {
    "components": stage_components,
    "flash_vs_classic": stage_flash,
    "postfix": stage_postfix,
    "scaling": stage_scaling,
    "redis_scaling": stage_redis_scaling,
    "hops": stage_hops,
}


def run(out: Path, quick: bool = False, only: tuple[str, ...] = STAGES, image_dir: str | None = None,
        qemu: bool = True, docs: Path | None = None) -> dict[str, Any]:
    """Run the chosen stages into ``out``; returns the combined record (also ``out/results.json``)."""
    from bench import report

    out.mkdir(parents=True, exist_ok=True)
    image_dir = find_image_dir(image_dir)
    mode = "quick" if quick else "full"
    started = time.monotonic()
    combined: dict[str, Any] = {
        "suite": "mailvm evaluation", "mode": mode, "machine": machine(image_dir), "params": PARAMS[mode],
        "stages": {}, "results": {},
    }
    # the quick run keeps qemu to the one measurement that needs it (flash vs classic)
    for name in only:
        use_qemu = (qemu and image_dir is not None and name != "postfix"
                    and not (quick and name in ("components", "scaling")))
        what = ("qemu" if use_qemu else "skipped: no qemu") if name == "flash_vs_classic" else \
            ("process + qemu" if use_qemu else "process")
        print(f"\n== {name} ({mode}, {what})", file=sys.stderr, flush=True)
        t0 = time.monotonic()
        try:
            res = RUNNERS[name](PARAMS[mode][name], image_dir, use_qemu, out)
            write_json(out / f"{name}.json", res)
            combined["results"][name] = res
            combined["stages"][name] = {"ok": True, "seconds": round(time.monotonic() - t0, 1)}
        except Exception as exc:  # record and go on with the other measurements
            log.error("stage %s failed: %s", name, exc)
            combined["stages"][name] = {"ok": False, "seconds": round(time.monotonic() - t0, 1),
                                        "error": f"{type(exc).__name__}: {exc}",
                                        "traceback": traceback.format_exc()[-3000:]}
        write_json(out / "results.json", combined)
    combined["duration_s"] = round(time.monotonic() - started, 1)
    acc = combined["results"].get("flash_vs_classic", {}).get("accel")
    if acc:
        combined["machine"]["accelerator"] = acc  # what the reference VM actually booted with
    write_json(out / "results.json", combined)
    report.write_report(combined, out / "performance.md", image_src=out, image_prefix="")
    if docs is not None:
        report.write_report(combined, docs / "performance.md", image_src=out, image_dir=docs / "img",
                            image_prefix="img/")
    return combined


PLOTTERS = {
    "components": ("bench.components", "plot"),
    "flash_vs_classic": ("bench.flash_vs_classic", "plot"),
    "postfix": ("bench.bench_postfix", "plot"),
    "scaling": ("bench.scaling", "plot"),
    "redis_scaling": ("bench.redis_scaling", "plot"),
    "hops": ("bench.bench_hops", "plot"),
}


def replot(out: Path, docs: Path | None) -> dict[str, Any]:
    """Redraw the plots and rewrite the report from ``out/results.json`` (no measuring)."""
    import importlib
    import json

    from bench import report

    combined = json.loads((out / "results.json").read_text())
    for name, res in combined["results"].items():
        module, func = PLOTTERS[name]
        getattr(importlib.import_module(module), func)(res, out / f"{name}.png")
    report.write_report(combined, out / "performance.md", image_src=out, image_prefix="")
    if docs is not None:
        report.write_report(combined, docs / "performance.md", image_src=out, image_dir=docs / "img",
                            image_prefix="img/")
    return combined


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="smoke run, under 3 minutes")
    ap.add_argument("--out", default=str(RESULTS), help="results directory (default bench/results)")
    ap.add_argument("--only", nargs="+", choices=STAGES, default=list(STAGES))
    ap.add_argument("--image-dir", default=None, help="guest image for the qemu backend (default: found)")
    ap.add_argument("--no-qemu", action="store_true", help="process backend only")
    ap.add_argument("--docs", default=None, help="publish performance.md + img/ here (full run default: docs/)")
    ap.add_argument("--no-docs", action="store_true")
    ap.add_argument("--replot", action="store_true", help="only redraw plots and rewrite the report from OUT")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    docs = None
    if not args.no_docs:
        docs = Path(args.docs) if args.docs else (None if args.quick else REPO / "docs")
    if args.replot:
        replot(Path(args.out), docs)
        print(f"redrew plots and report in {args.out}" + (f" and {docs}" if docs else ""), file=sys.stderr)
        return 0
    res = run(Path(args.out), args.quick, tuple(args.only), args.image_dir, not args.no_qemu, docs)
    failed = [n for n, s in res["stages"].items() if not s["ok"]]
    print(f"\nmailvm bench ({res['mode']}): {len(res['stages']) - len(failed)} of {len(res['stages'])} measurements "
          f"in {res['duration_s']:.0f} s; results in {args.out}" + (f"; report {docs / 'performance.md'}" if docs else ""),
          file=sys.stderr)
    for n in failed:
        print(f"FAILED {n}: {res['stages'][n]['error']}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
