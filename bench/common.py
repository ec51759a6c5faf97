"""Shared helpers of the evaluation suite (``make bench``): the machine record, summaries,
CPU accounting from /proc, and small file/port utilities.

Every JSON result of the suite carries :func:`machine` (cores, memory, the
accelerator the qemu backend would use or ``"none"``, date, git revision) so
that figures from different runs are never compared blindly.  Nothing here
starts a server or touches the network.
"""

from __future__ import annotations

import json
import math
import os
import platform
import statistics
import subprocess
import time
from pathlib import Path
from typing import Any, Iterable

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
#: where the qemu backend of the suite keeps its template (reused between runs)
QEMU_WORK = Path(os.environ.get("MAILVM_BENCH_QEMU_WORK", "/var/cache/mailvm-bench/qemu"))
#: image directories tried in order when none is given
IMAGE_DIRS = (
    os.environ.get("MAILVM_BENCH_IMAGE_DIR", ""),
    os.environ.get("MAILVM_TEST_IMAGE_DIR", ""),
    "/var/cache/mailvm-test/image",
    "/var/lib/mailvm/image",
)


# ----------------------------------------------------------------------------- statistics


def pct(values: Iterable[float], q: float) -> float:
    vals = sorted(values)
    if not vals:
        return float("nan")
    k = min(len(vals) - 1, max(0, math.ceil(q / 100 * len(vals)) - 1))
    return vals[k]


def summary(values: Iterable[float], digits: int = 3) -> dict[str, Any]:
    """n, median, p95, min, max (rounded); ``{"n": 0}`` for no values."""
    vals = [float(v) for v in values]
    if not vals:
        return {"n": 0}
    return {
        "n": len(vals),
        "median": round(statistics.median(vals), digits),
        "p95": round(pct(vals, 95), digits),
        "min": round(min(vals), digits),
        "max": round(max(vals), digits),
    }


def median(values: Iterable[float]) -> float:
    vals = list(values)
    return statistics.median(vals) if vals else float("nan")


# ----------------------------------------------------------------------------- the machine


def git_rev() -> str:
    try:
        res = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=REPO,
                             timeout=10)
        rev = res.stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True, cwd=REPO, timeout=10).stdout.strip()
        return rev + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return ""


def memory_bytes() -> int:
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def find_image_dir(explicit: str | None = None, update: bool = True) -> str | None:
    """The guest image the qemu benchmarks use, brought up to date with this tree; None without one.

    The first directory holding a complete image (``explicit`` first).  With ``update`` the image
    is rebuilt there when one of its inputs changed (the agent's files, most often: only that
    stage is redone, seconds), so figures are never taken with an old guest agent; with no image
    anywhere one is built into the test image cache (about a minute from Debian packages).
    """
    from mailvm.vmpool.image.layout import ImageMissing, load_image

    dirs = ([explicit] if explicit else []) + [d for d in IMAGE_DIRS if d]
    found = None
    for d in dirs:
        try:
            found = (d, load_image(d))
            break
        except (ImageMissing, OSError, ValueError):
            continue
    if not update:
        return found[0] if found else None
    from mailvm.vmpool.image.build import BuildError, BuildOptions, build

    target = found[0] if found else (explicit or "/var/cache/mailvm-test/image")
    wine = bool(found and found[1].manifest.get("with_wine"))
    t0 = time.monotonic()
    try:
        res = build(BuildOptions(cache_dir=target, with_wine=wine))
    except (BuildError, OSError) as exc:
        print(f"bench: guest image in {target} not brought up to date ({exc})", flush=True)
        return found[0] if found else None
    built = [s for s, how in res.stages.items() if how == "built"]
    if built:
        print(f"bench: guest image {res.image.version} in {target}: rebuilt {', '.join(built)} "
              f"({time.monotonic() - t0:.1f} s)", flush=True)
    return target


def accelerator(image_dir: str | None) -> dict[str, str]:
    """What the qemu backend would run guests with here, without booting anything.

    ``accel`` is the outcome remembered by an earlier qemu probe in the suite's
    work directory when there is one, else ``kvm`` when /dev/kvm opens and
    ``tcg`` otherwise; ``none`` when the qemu backend cannot run at all.
    """
    from mailvm.config import PoolConfig
    from mailvm.vmpool.backends.qemu import QemuBackend, kvm_openable

    if image_dir is None:
        return {"accel": "none", "reason": "no guest image built (mvctl image build)"}
    why = QemuBackend.probe(PoolConfig(backend="qemu", image_dir=image_dir))
    if why:
        return {"accel": "none", "reason": why}
    memo = QEMU_WORK / "vport" / "qemu-accel.json"
    try:
        data = json.loads(memo.read_text())
        if data.get("accel") in ("kvm", "tcg"):
            return {"accel": data["accel"], "reason": str(data.get("reason", "")) or "probed by a reference VM"}
    except (OSError, ValueError):
        pass
    kvm = kvm_openable()
    return {"accel": "tcg" if kvm else "kvm", "reason": kvm or "/dev/kvm opens (not yet probed with a guest)"}


def loadavg() -> list[float]:
    try:
        return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]
    except (OSError, ValueError):
        return []


def machine(image_dir: str | None = None) -> dict[str, Any]:
    """The record every result carries."""
    acc = accelerator(image_dir)
    return {
        "cores": os.cpu_count(),
        "memory_bytes": memory_bytes(),
        "accelerator": acc["accel"],
        "accelerator_reason": acc["reason"],
        "image_dir": image_dir,
        "python": platform.python_version(),
        "kernel": platform.release(),
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "git_rev": git_rev(),
        "loadavg_at_start": loadavg(),
    }


# ----------------------------------------------------------------------------- CPU from /proc


def _stat_fields(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return raw[raw.rfind(")") + 2:].split()


def _proc_scan() -> tuple[dict[int, list[str]], dict[int, list[int]]]:
    """One scan of /proc: each process's stat fields, and each parent's children."""
    stats: dict[int, list[str]] = {}
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        f = _stat_fields(int(entry.name))
        if f is None:
            continue
        stats[int(entry.name)] = f
        children.setdefault(int(f[1]), []).append(int(entry.name))
    return stats, children


def process_tree(root: int) -> list[int]:
    """``root`` and all its descendants (by ppid), from one scan of /proc."""
    _, children = _proc_scan()
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, ()))
    return out


def tree_cpu_seconds(root: int) -> float:
    """utime+stime+cutime+cstime summed over ``root``'s live process tree.

    Differences of this figure count a process that exited between two readings
    through its parent's cutime/cstime (it was reaped by a member of the tree),
    so transient slots and sandboxes are included.
    """
    tck = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in process_tree(root):
        f = _stat_fields(pid)
        if f is not None:
            total += int(f[11]) + int(f[12]) + int(f[13]) + int(f[14])
    return total / tck


#: the parts of ``mailvm serve``'s process tree that tree_cpu_by_part tells apart
CPU_PARTS = ("milter", "scan workers", "pool and slots")


def tree_cpu_by_part(root: int) -> dict[str, float]:
    """:func:`tree_cpu_seconds` of ``mailvm serve`` split by part: the milter process itself (its
    libmilter threads, eom orchestration and Pebble's threads), the scan workers (the forkserver's
    subtree) and the pool (the pool supervisor's subtree: pool service, slots, sandboxes)."""
    tck = os.sysconf("SC_CLK_TCK")
    parts = dict.fromkeys(CPU_PARTS, 0.0)
    stats, children = _proc_scan()
    if root not in stats:
        return parts
    f = stats[root]
    parts["milter"] += (int(f[11]) + int(f[12])) / tck
    parts["pool and slots"] += (int(f[13]) + int(f[14])) / tck  # reaped direct children (rare)
    for top in children.get(root, ()):
        try:
            cmd = Path(f"/proc/{top}/cmdline").read_bytes()
        except OSError:
            cmd = b""
        part = "scan workers" if b"forkserver" in cmd else "pool and slots"
        todo = [top]
        while todo:
            pid = todo.pop()
            g = stats.get(pid)
            if g is not None:
                parts[part] += (int(g[11]) + int(g[12]) + int(g[13]) + int(g[14])) / tck
            todo.extend(children.get(pid, ()))
    return parts


def system_cpu() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot (all cores)."""
    tck = os.sysconf("SC_CLK_TCK")
    with open("/proc/stat") as fh:
        vals = [int(x) for x in fh.readline().split()[1:]]
    idle = vals[3] + (vals[4] if len(vals) > 4 else 0)
    total = sum(vals[:8])
    return (total - idle) / tck, total / tck


class CpuMeter:
    """Whole-machine busy fraction (0..cores) over an interval."""

    def __init__(self) -> None:
        self.b0, self.t0 = system_cpu()

    def busy_cores(self) -> float:
        b1, t1 = system_cpu()
        dt = t1 - self.t0
        return 0.0 if dt <= 0 else (b1 - self.b0) / dt * (os.cpu_count() or 1)


# ----------------------------------------------------------------------------- files, ports


# free_port, wait_port and lab_dir are shared with mvctl lab and the mail tests
from mailvm.lab.common import free_port, lab_dir, wait_port  # noqa: E402,F401 (re-exported to the bench modules)


def write_json(path: Path, obj: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=str) + "\n")
    os.replace(tmp, path)
    return path


def pyplot() -> Any:
    """matplotlib's pyplot on the Agg backend (no display; imported only when a bench plots)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, path: Path, dpi: int = 100) -> Path:
    """Lay out, write and close ``fig`` (the results directory is made on the way)."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path


def plot_memory_per_clone(ax: Any, memory: dict[str, dict[str, float]], target_mib: float | None = None) -> None:
    """PSS and private MiB per clone against the number of clones running (bench_qemu, flash_vs_classic)."""
    ns = sorted(memory, key=int)
    ax.plot([int(n) for n in ns], [memory[n]["pss_mib_per_clone"] for n in ns], "o-", label="PSS")
    ax.plot([int(n) for n in ns], [memory[n]["private_mib_per_clone"] for n in ns], "s-", label="private")
    if target_mib is not None:
        ax.axhline(target_mib, color="gray", ls="--", lw=0.8, label=f"target {target_mib:g} MiB private")
    ax.set_xlabel("clones running")
    ax.set_ylabel("MiB per clone")
    ax.set_title("memory per flash clone", fontsize=9)
    ax.legend(fontsize=8)
