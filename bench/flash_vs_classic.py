"""Flash clones against a classic full-snapshot revert: same guest image, same run, ratios.

Runs ``bench.bench_qemu``'s own measurements on one qemu backend (doorbell
``vport``, the default):

* **flash clone** (``bench_doorbell`` with ``e2e``): fresh pre-warmed clones;
  *hand-over* = job written on the page + doorbell -> agent RUNNING;
  *end to end* = the same start -> DONE for a one-line shell script (the
  guest's whole detonation: sandbox, trace, rules, result); *refill* = a new
  clone from the template (off the critical path, but it is the CPU cost a
  file leaves behind);
* **classic** (``bench_classic_and_cold`` with ``e2e``): per file, a disk image
  with the file, QEMU started and a *full* snapshot of the same image restored
  (all RAM from the state file, nothing shared), the agent answering; then the
  same job on its page, so its end to end differs from the clone's only by the
  revert;
* cold boots (the snapshot is taken from the last one) and PSS/private memory
  per clone.

Ratios: classic restore / clone hand-over (the DESIGN target: >= 50x);
classic end to end / clone end to end (latency per file); classic end to end /
(clone refill + end to end) (cost per file, refill included).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

from tqdm import tqdm

from bench.common import QEMU_WORK, RESULTS, find_image_dir, machine, plot_memory_per_clone, pyplot, save_figure, write_json

log = logging.getLogger(__name__)


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 1) if a and b else None


def bench(image_dir: str | None, reps: int = 8, boots: int = 3, idle_s: float = 4.0,
          clones: tuple[int, ...] = (1, 4, 8)) -> dict[str, Any]:
    result: dict[str, Any] = {"benchmark": "flash_vs_classic", "machine": machine(image_dir), "backend": "qemu",
                              "reps": reps, "boots": boots}
    if image_dir is None:
        result["skipped"] = "no guest image is built (mvctl image build): flash clone vs classic revert not measured"
        return result
    from bench import bench_qemu as BQ

    args = argparse.Namespace(accel="auto", image_dir=image_dir)
    total = reps + len(clones) + boots + reps
    b = BQ.make_backend(args, "vport", str(QEMU_WORK / "vport"))
    try:
        result["accel"] = b.spec.accel
        result["qemu"] = b.qemu_version
        result["template"] = {k: b.template.meta.get(k) for k in ("boot_s", "save_s", "state_bytes", "mem_mib",
                                                                 "page_bytes", "doorbell")}
        with tqdm(total=total, desc="flash vs classic", unit="step") as bar:
            bar.set_description("flash clones")
            result["flash"] = BQ.bench_doorbell(b, reps, idle_s, bar, e2e=True, idle_slots=min(3, reps))
            bar.set_description("memory per clone")
            result["memory"] = BQ.bench_memory(b, list(clones), bar)
            bar.set_description("cold boot + classic")
            result["classic"] = BQ.bench_classic_and_cold(b, reps, bar, boots=boots, e2e=True)
    finally:
        b.close()
    f, c = result["flash"], result["classic"]
    hand = f["handover_ms"].get("median")
    e2e = f.get("e2e_ms", {}).get("median")
    refill = f["refill_ms"].get("total", {}).get("median")
    result["machine"]["accelerator"] = result["accel"]
    result["ratios"] = {
        "restore_vs_handover": _ratio(c["classic_restore_ms"].get("median"), hand),
        "e2e_classic_vs_flash": _ratio(c.get("classic_e2e_ms", {}).get("median"), e2e),
        "e2e_classic_vs_flash_with_refill": _ratio(c.get("classic_e2e_ms", {}).get("median"),
                                                   (e2e or 0) + (refill or 0)),
        "restore_vs_refill": _ratio(c["classic_restore_ms"].get("median"), refill),
    }
    return result


def plot(result: dict[str, Any], path: Path) -> Path | None:
    if "flash" not in result:
        return None
    plt = pyplot()

    f, c = result["flash"], result["classic"]
    rows = [
        ("flash: hand-over", f["handover_ms"], "tab:green"),
        ("flash: refill\n(off the path)", f["refill_ms"]["total"], "tab:olive"),
        ("classic: full\nrestore", c["classic_restore_ms"], "tab:red"),
        ("flash: end to end\n(1 script)", f.get("e2e_ms", {}), "tab:green"),
        ("classic: end to end\n(same script)", c.get("classic_e2e_ms", {}), "tab:red"),
        ("cold boot", {k: v * 1000 for k, v in c["cold_boot_s"].items() if k != "n"}, "tab:gray"),
    ]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(12, 4.5), gridspec_kw={"width_ratios": [2.2, 1]})
    med = [r[1].get("median", 0) or 0 for r in rows]
    lo = [m - (r[1].get("min", m) or m) for m, r in zip(med, rows)]
    hi = [(r[1].get("p95", m) or m) - m for m, r in zip(med, rows)]
    a1.bar(range(len(rows)), med, 0.6, yerr=[lo, hi], color=[r[2] for r in rows], capsize=3)
    for i, m in enumerate(med):
        a1.text(i, m, f"{m:.1f} ms" if m < 1000 else f"{m / 1000:.2f} s", ha="center", va="bottom", fontsize=8)
    a1.set_yscale("log")
    a1.set_xticks(range(len(rows)), [r[0] for r in rows], fontsize=8)
    a1.set_ylabel("ms (log scale; median, bars min..p95)")
    r = result["ratios"]
    a1.set_title(f"qemu under {result['accel'].upper()}: restore/hand-over {r['restore_vs_handover']}x, "
                 f"end to end {r['e2e_classic_vs_flash']}x", fontsize=9)
    plot_memory_per_clone(a2, result["memory"], target_mib=32)
    return save_figure(fig, path)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--image-dir", default=None)
    ap.add_argument("--reps", type=int, default=8)
    ap.add_argument("--boots", type=int, default=3)
    ap.add_argument("--idle-s", type=float, default=4.0)
    ap.add_argument("--clones", type=int, nargs="+", default=[1, 4, 8])
    ap.add_argument("--out", default=str(RESULTS / "flash_vs_classic.json"))
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.ERROR)
    result = bench(find_image_dir(args.image_dir), args.reps, args.boots, args.idle_s, tuple(args.clones))
    out = Path(args.out)
    write_json(out, result)
    plot(result, out.with_suffix(".png"))
    if "skipped" in result:
        print(result["skipped"])
    else:
        print({k: v for k, v in result["ratios"].items()})
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
