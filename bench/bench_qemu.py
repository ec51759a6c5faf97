"""Benchmark of the qemu backend (flash clones) against a classic full-snapshot revert, same image, same run.

Measured, each with median and p95:

* ``handover_ms`` per doorbell (vport, serial, poll): a pre-warmed clone's page
  gets a job + ring -> the agent acknowledges RUNNING; with the idle CPU of
  such a slot (% of one core, over ``--idle-s`` seconds);
* ``refill_ms``: template -> a new clone whose agent is READY on its page (raw
  QEMU: exec, QMP, x-ignore-shared restore, cont, READY), and its parts;
* ``classic_restore_ms``: per file, a disk image with the file is made, QEMU
  starts and restores a *full* snapshot of the same image (all RAM in the
  state file, no shared template memory), runs, and its agent answers on its
  page.  The guest does not read the disk in this timing (that would only add
  to the classic figure);
* ``cold_boot_s``: QEMU exec -> agent READY in a fresh VM;
* ``pss_mib``: proportional and private memory per clone with 1, 4 and 8 clones;
* ``variants`` (same template, rounds interleaved so host load hits all alike):
  the clone's QEMU with the full kernel and no spare (the previous
  configuration), with the stub kernel, with a spare QEMU waiting, and TCG
  translation caches of 64/32/16 MiB: refill (template -> restored paused
  clone, and -> READY), hand-over, anonymous memory idle and right after a
  job, the job's guest time;
* ``libvirt``: the libvirt launcher (raw QEMU in the same rounds): refill
  through libvirt; hand-over by doorbell vs. a paused slot woken by ``cont``
  over the domain's own QMP socket vs. over libvirt's QMP passthrough; one
  QMP round trip over each path;
* ``warmup``: what the reference VM warms up before the template is saved
  (none / files / a whole detonation): the clones' job time.

Results: ``bench/results/qemu.json`` and a PNG next to it.

Usage: ``python -m bench.bench_qemu [--image-dir /var/cache/mailvm-test/image] [--reps 10]
[--sections doorbells variants libvirt warmup memory classic]``
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from tqdm import tqdm

from bench.common import plot_memory_per_clone, pyplot, save_figure

from mailvm.config import PoolConfig
from mailvm.guest import protocol as P
from mailvm.procfs import cpu_seconds
from mailvm.vmpool.backends.qemu import QemuBackend, QemuVM, VMPaths, VMSpec, send_fd
from mailvm.vmpool.shmpage import HostPage

PAGE = 8 << 20
SAMPLE = b"#!/bin/sh\ntrue\n"


def summary(xs: list[float], digits: int = 2) -> dict[str, Any]:
    if not xs:
        return {"n": 0}
    s = sorted(xs)
    p95 = s[min(len(s) - 1, int(round(0.95 * (len(s) - 1))))]
    return {"n": len(s), "median": round(statistics.median(s), digits), "p95": round(p95, digits),
            "min": round(s[0], digits), "max": round(s[-1], digits)}


def smaps(pid: int) -> dict[str, int]:
    out = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        k, _, v = line.partition(":")
        if v.strip().endswith("kB"):
            out[k] = int(v.split()[0])
    return out


def make_backend(args: argparse.Namespace, doorbell: str, work: str, **options: Any) -> QemuBackend:
    """A prepared backend; ``options`` go to QemuBackend (launcher, spares, stub_kernel, tb_mib, warmup...)."""
    cfg = PoolConfig(backend="qemu", accel=args.accel, work_dir=work, page_bytes=PAGE, ready_timeout_s=120)
    b = QemuBackend(cfg, image_dir=args.image_dir, doorbell=doorbell, **options)
    b.prepare()
    return b


def anon_mib(pid: int) -> float:
    """Anonymous memory of a QEMU: its own heap, TCG code, copy-on-write copies of template pages."""
    return round(smaps(pid).get("Anonymous", 0) / 1024, 1)


def _submit(slot: Any, data: bytes = SAMPLE) -> None:
    slot.page.submit(data, "t.sh", {"timeout_s": 20, "idle_s": 0.2})


def _wait_running(slot: Any) -> int:
    return slot.page.wait_state({P.RUNNING, P.DONE, P.FAILED}, time.monotonic() + 30, alive=slot.alive)


def bench_variants(variants: dict[str, QemuBackend], reps: int, bar: tqdm) -> dict[str, Any]:
    """Interleaved rounds over backends sharing one template: refill, hand-over, memory, job time."""
    data: dict[str, dict[str, list[float]]] = {n: {} for n in variants}

    def add(name: str, key: str, value: float) -> None:
        data[name].setdefault(key, []).append(value)

    for i in range(reps):
        for name, b in variants.items():
            slot = b.create_slot(f"var{i}")
            try:
                add(name, "refill_paused_ms", slot.timings["paused"] * 1000)
                add(name, "refill_ready_ms", slot.timings["total"] * 1000)
                time.sleep(0.4)
                add(name, "anon_idle_mib", anon_mib(slot.vm.pid))
                with b.clones.lock:
                    spare = b.clones.waiting[0] if b.clones.waiting else None
                if spare is not None:
                    add(name, "spare_anon_mib", anon_mib(spare.vm.pid))
                t0 = time.perf_counter()
                _submit(slot)
                slot.ring()
                st = _wait_running(slot)
                add(name, "handover_ms", (time.perf_counter() - t0) * 1000)
                if st == P.RUNNING:
                    slot.page.wait_state({P.DONE, P.FAILED}, time.monotonic() + 120, alive=slot.alive)
                add(name, "e2e_ms", (time.perf_counter() - t0) * 1000)
                add(name, "anon_after_job_mib", anon_mib(slot.vm.pid))
                add(name, "guest_job_s", float(slot.page.read_result(1 << 20).get("duration_s") or 0))
            finally:
                slot.destroy()
            bar.update(1)
    return {n: {k: summary(v) for k, v in d.items()} for n, d in data.items()}


def bench_libvirt(raw: QemuBackend, lvb: QemuBackend, reps: int, bar: tqdm) -> dict[str, Any]:
    """libvirt launcher vs. raw QEMU in the same rounds (no spares: QEMU's start is on the refill path)."""
    from mailvm.vmpool.backends import libvirt_util as lv

    d: dict[str, list[float]] = {}

    def add(key: str, value: float) -> None:
        d.setdefault(key, []).append(value)

    for i in range(reps):
        for label, b in (("raw", raw), ("libvirt", lvb)):
            slot = b.create_slot(f"lv{i}")
            try:
                add(f"{label}_refill_paused_ms", slot.timings["paused"] * 1000)
                add(f"{label}_refill_spawn_ms", slot.timings["spawn_connect"] * 1000)
                add(f"{label}_refill_ready_ms", slot.timings["total"] * 1000)
                time.sleep(0.3)
                if label == "libvirt":
                    for _ in range(5):  # one QMP round trip over each path
                        t0 = time.perf_counter()
                        slot.vm.qmp.execute("query-status")
                        add("qmp_call_own_socket_ms", (time.perf_counter() - t0) * 1000)
                        t0 = time.perf_counter()
                        lv.monitor(slot.vm.dom, "query-status")
                        add("qmp_call_libvirt_ms", (time.perf_counter() - t0) * 1000)
                t0 = time.perf_counter()
                _submit(slot)
                slot.ring()
                _wait_running(slot)
                add(f"{label}_handover_doorbell_ms", (time.perf_counter() - t0) * 1000)
            finally:
                slot.destroy()
            bar.update(1)
        for via in ("own_qmp", "libvirt"):  # a paused slot, woken by cont
            slot = lvb.create_slot(f"lvp{i}")
            try:
                slot.vm.qmp.execute("stop")
                time.sleep(0.3)
                t0 = time.perf_counter()
                _submit(slot)
                if via == "libvirt":
                    lv.monitor(slot.vm.dom, "cont")
                else:
                    slot.vm.qmp.execute("cont")
                slot.ring()
                _wait_running(slot)
                add(f"libvirt_handover_paused_cont_{via}_ms", (time.perf_counter() - t0) * 1000)
            finally:
                slot.destroy()
            bar.update(1)
    return {k: summary(v) for k, v in d.items()}


def bench_warmup(backends: dict[str, QemuBackend], reps: int, bar: tqdm) -> dict[str, Any]:
    """The clones' job time per warm-up of the template (interleaved rounds)."""
    d: dict[str, dict[str, list[float]]] = {n: {} for n in backends}
    for i in range(reps):
        for name, b in backends.items():
            slot = b.create_slot(f"warm{i}")
            try:
                time.sleep(0.3)
                t0 = time.perf_counter()
                _submit(slot, b"#!/bin/sh\necho hi > x.txt\ncat x.txt\n")
                slot.ring()
                slot.page.wait_state({P.DONE, P.FAILED}, time.monotonic() + 120, alive=slot.alive)
                d[name].setdefault("e2e_ms", []).append((time.perf_counter() - t0) * 1000)
                r = slot.page.read_result(1 << 20)
                d[name].setdefault("guest_job_s", []).append(float(r.get("duration_s") or 0))
            finally:
                slot.destroy()
            bar.update(1)
    out = {n: {k: summary(v) for k, v in x.items()} for n, x in d.items()}
    for n, b in backends.items():
        out[n]["template_boot_s"] = b.template.meta.get("boot_s")
    return out


def bench_doorbell(b: QemuBackend, reps: int, idle_s: float, bar: tqdm, e2e: bool = False,
                   idle_slots: int = 3) -> dict[str, Any]:
    """Hand-over (and with ``e2e`` the whole job: written -> DONE) on fresh pre-warmed clones."""
    hand, idle, refill, whole = [], [], {}, []
    for i in range(reps):
        slot = b.create_slot(f"bench{i}")
        try:
            for k, v in slot.timings.items():
                refill.setdefault(k, []).append(v * 1000)
            time.sleep(0.3)
            if i < idle_slots:  # idle cost: a few slots, long enough for 10 ms clock ticks
                c0, t0 = cpu_seconds([slot.vm.pid]), time.monotonic()
                time.sleep(idle_s)
                idle.append((cpu_seconds([slot.vm.pid]) - c0) / (time.monotonic() - t0) * 100)
            t0 = time.perf_counter()
            slot.page.submit(SAMPLE, "t.sh", {"timeout_s": 10})
            slot.ring()
            st = slot.page.wait_state({P.RUNNING, P.DONE, P.FAILED}, time.monotonic() + 30, alive=slot.alive)
            hand.append((time.perf_counter() - t0) * 1000)
            if e2e:
                if st == P.RUNNING:
                    slot.page.wait_state({P.DONE, P.FAILED}, time.monotonic() + 60, alive=slot.alive)
                whole.append((time.perf_counter() - t0) * 1000)
        finally:
            slot.destroy()
        bar.update(1)
    out = {"handover_ms": summary(hand), "idle_cpu_pct": summary(idle),
           "refill_ms": {k: summary(v) for k, v in refill.items()}}
    if e2e:
        out["e2e_ms"] = summary(whole)
    return out


def bench_memory(b: QemuBackend, counts: list[int], bar: tqdm) -> dict[str, Any]:
    out = {}
    for n in counts:
        slots = []
        try:
            for i in range(n):
                slots.append(b.create_slot(f"mem{n}-{i}"))
            time.sleep(1.0)
            rs = [smaps(s.vm.pid) for s in slots]
            out[str(n)] = {
                "pss_mib_per_clone": round(sum(r.get("Pss", 0) for r in rs) / n / 1024, 1),
                "private_mib_per_clone": round(sum(r.get("Private_Clean", 0) + r.get("Private_Dirty", 0)
                                                   for r in rs) / n / 1024, 1),
                "anon_mib_per_clone": round(sum(r.get("Pss_Anon", 0) for r in rs) / n / 1024, 1),
            }
        finally:
            for s in slots:
                s.destroy()
        bar.update(1)
    return out


def _paths(d: str, ram: str, shared: bool, private: bool, extra: tuple[str, ...] = ()) -> VMPaths:
    return VMPaths(ram, shared, os.path.join(d, "page"), os.path.join(d, "qmp.sock"), os.path.join(d, "bell.sock"),
                   os.path.join(d, "console.log"), private_ram=private, extra_args=extra)


def _sample_disk(path: str, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.truncate(1 << 20)


def bench_classic_and_cold(b: QemuBackend, reps: int, bar: tqdm, boots: int = 3, e2e: bool = False) -> dict[str, Any]:
    """Cold boots, then a full snapshot of the same image restored per file (no shared memory).

    With ``e2e`` the restored VM also runs the job (on its page, as a clone would), so
    ``classic_e2e_ms`` is restore + answer + the same job as the clones' ``e2e_ms``.
    """
    spec: VMSpec = b.spec
    tmp = tempfile.mkdtemp(prefix="mailvm-classic-", dir="/dev/shm")
    disk = os.path.join(tmp, "sample.img")
    extra = ("-drive", f"file={disk},if=none,id=sample,format=raw,readonly=on", "-device", "virtio-blk-pci,drive=sample")
    cold, classic, parts, whole = [], [], {"disk": [], "restore": [], "ready": []}, []
    boots = max(1, boots)
    state_bytes = 0
    try:
        # cold boot + the classic snapshot (taken from the last boot)
        state = os.path.join(tmp, "full.state")
        for i in range(boots):
            d = tempfile.mkdtemp(dir=tmp)
            _sample_disk(disk, SAMPLE)
            page = HostPage.create(os.path.join(d, "page"), spec.page_bytes)
            t0 = time.monotonic()
            vm = QemuVM(spec, _paths(d, "", False, True, extra), d, incoming=False, qemu=b.qemu)
            try:
                vm.connect(t0 + 30)
                page.wait_ready(t0 + 180, alive=vm.alive)
                cold.append(time.monotonic() - t0)
                if i == boots - 1:
                    time.sleep(1.0)
                    vm.qmp.execute("stop")
                    fd = os.open(state, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                    send_fd(vm.qmp, "state", fd)
                    os.close(fd)
                    vm.qmp.execute("migrate", {"uri": "fd:state"})
                    vm.wait_migration(time.monotonic() + 120)
            finally:
                vm.kill()
                page.close()
            bar.update(1)
        state_bytes = os.path.getsize(state)
        # classic: per file, a fresh disk with the file, a full restore, the agent answering
        for i in range(reps):
            d = tempfile.mkdtemp(dir=tmp)
            t0 = time.monotonic()
            _sample_disk(disk, SAMPLE + os.urandom(16))
            page = HostPage.create(os.path.join(d, "page"), spec.page_bytes)
            t1 = time.monotonic()
            sfd = os.open(state, os.O_RDONLY)
            vm = QemuVM(spec, _paths(d, "", False, True, extra), d, incoming=True, qemu=b.qemu, pass_fds=(sfd,))
            os.close(sfd)
            try:
                vm.connect(t0 + 30)
                vm.qmp.execute("migrate-incoming", {"uri": f"fd:{sfd}"})
                vm.wait_migration(t0 + 60)
                vm.qmp.execute("cont")
                t2 = time.monotonic()
                # the full state carried the snapshot's page too (a READY header): the guest answering is
                # its heartbeat moving on after the restore
                hb0 = page.heartbeat() if page.state() == P.READY else None
                while True:
                    st = page.state()
                    if st == P.READY and hb0 is not None and page.heartbeat() != hb0:
                        break
                    if time.monotonic() > t0 + 30:
                        raise TimeoutError("classic VM never answered")
                    vm.ring()
                    time.sleep(0.0005)
                t3 = time.monotonic()
                if e2e:
                    page.submit(SAMPLE, "t.sh", {"timeout_s": 10})
                    vm.ring()
                    page.wait_state({P.DONE, P.FAILED}, time.monotonic() + 60, alive=vm.alive)
                    whole.append((time.monotonic() - t0) * 1000)
            finally:
                vm.kill()
                page.close()
                shutil.rmtree(d, ignore_errors=True)
            parts["disk"].append((t1 - t0) * 1000)
            parts["restore"].append((t2 - t1) * 1000)
            parts["ready"].append((t3 - t2) * 1000)
            classic.append((t3 - t0) * 1000)
            bar.update(1)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    out = {"cold_boot_s": summary(cold), "classic_restore_ms": summary(classic),
           "classic_parts_ms": {k: summary(v) for k, v in parts.items()}, "classic_state_bytes": state_bytes}
    if e2e:
        out["classic_e2e_ms"] = summary(whole)
    return out


def plot(res: dict[str, Any], path: Path) -> None:
    plt = pyplot()

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4))
    names, med, p95 = [], [], []
    for bell, r in res["doorbells"].items():
        names.append(f"hand-over\n{bell}")
        med.append(r["handover_ms"]["median"])
        p95.append(r["handover_ms"]["p95"])
    names += ["refill\n(raw QEMU)", "classic\nfull restore"]
    first = next(iter(res["doorbells"].values()))
    med += [first["refill_ms"]["total"]["median"], res["classic_restore_ms"]["median"]]
    p95 += [first["refill_ms"]["total"]["p95"], res["classic_restore_ms"]["p95"]]
    x = range(len(names))
    a1.bar([i - 0.2 for i in x], med, 0.4, label="median")
    a1.bar([i + 0.2 for i in x], p95, 0.4, label="p95")
    a1.set_xticks(list(x), names, fontsize=8)
    a1.set_yscale("log")
    a1.set_ylabel("ms (log)")
    a1.set_title(f"qemu backend under {res['accel'].upper()}")
    a1.legend()
    plot_memory_per_clone(a2, res["memory"])
    save_figure(fig, path, dpi=110)


SECTIONS = ("doorbells", "variants", "libvirt", "warmup", "memory", "classic")
#: name -> QemuBackend options; the first is the configuration before this round of work
VARIANTS = {
    "full-kernel, no spare (before)": {"stub_kernel": False, "spares": 0},
    "stub kernel": {"stub_kernel": True, "spares": 0},
    "stub kernel + spare (default)": {"stub_kernel": True, "spares": 1},
    "default, tb-size 32": {"stub_kernel": True, "spares": 1, "tb_mib": 32},
    "default, tb-size 16": {"stub_kernel": True, "spares": 1, "tb_mib": 16},
}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--image-dir", default=os.environ.get("MAILVM_TEST_IMAGE_DIR", "/var/cache/mailvm-test/image"))
    ap.add_argument("--work-dir", default="/var/cache/mailvm-test/bench-pool")
    ap.add_argument("--accel", default="auto", choices=("auto", "kvm", "tcg"))
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--idle-s", type=float, default=4.0)
    ap.add_argument("--doorbells", nargs="+", default=["vport", "serial", "poll:0.0002:0.002"])
    ap.add_argument("--clones", type=int, nargs="+", default=[1, 4, 8])
    ap.add_argument("--sections", nargs="+", default=list(SECTIONS), choices=SECTIONS)
    ap.add_argument("--warmups", nargs="+", default=["none", "files", "run"])
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "qemu.json"))
    ap.add_argument("--keep-templates", action="store_true",
                    help="keep the templates (256 MiB of /dev/shm each) for the next run")
    args = ap.parse_args(argv)
    sec = set(args.sections)
    reps = args.reps
    small = max(3, reps // 2)
    total = ((len(args.doorbells) * reps if "doorbells" in sec else 0) + (len(VARIANTS) * reps if "variants" in sec else 0)
             + (4 * small if "libvirt" in sec else 0) + (len(args.warmups) * small if "warmup" in sec else 0)
             + (len(args.clones) if "memory" in sec else 0) + (3 + reps if "classic" in sec else 0))
    res: dict[str, Any] = {"host": {"cpus": os.cpu_count(), "platform": platform.platform()}, "doorbells": {},
                           "reps": reps, "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                           "load_avg_start": os.getloadavg()}
    backends: list[QemuBackend] = []

    def make(doorbell: str, sub: str, **options: Any) -> QemuBackend:
        b = make_backend(args, doorbell, os.path.join(args.work_dir, sub), **options)
        backends.append(b)
        res["accel"], res["qemu"] = b.spec.accel, b.qemu_version
        return b

    try:
        with tqdm(total=total, desc="qemu bench", unit="step") as bar:
            default = make("vport", "vport")
            res["template_vport"] = default.template.meta
            if "doorbells" in sec:
                bells = {bell: default if bell == "vport" else make(bell, bell.replace(":", "_"))
                         for bell in args.doorbells}
                bar.set_description("doorbells")
                for bell, b in bells.items():  # one after the other: idle CPU needs a quiet slot each
                    res["doorbells"][bell] = bench_doorbell(b, reps, args.idle_s, bar, e2e=True)
            if "variants" in sec:
                bar.set_description("variants")
                vs = {name: make("vport", "vport", **opts) for name, opts in VARIANTS.items()}
                res["variants"] = bench_variants(vs, reps, bar)
                res["variants_options"] = VARIANTS
            if "libvirt" in sec:
                bar.set_description("libvirt")
                raw = make("vport", "vport", spares=0)
                lvb = make("vport", "libvirt", launcher="libvirt", spares=0)
                res["libvirt"] = bench_libvirt(raw, lvb, small, bar)
            if "warmup" in sec:
                bar.set_description("warm-up")
                ws = {w: make("vport", f"warmup-{w}", warmup=w, spares=0) for w in args.warmups}
                res["warmup"] = bench_warmup(ws, small, bar)
            if "memory" in sec:
                bar.set_description("memory")
                res["memory"] = bench_memory(default, args.clones, bar)
            if "classic" in sec:
                bar.set_description("cold boot + classic")
                res.update(bench_classic_and_cold(default, reps, bar))
    finally:
        for b in backends:
            b.close()
        if not args.keep_templates:
            for b in backends:
                b.discard_template()
    res["load_avg_end"] = os.getloadavg()
    if "doorbells" in sec and "classic" in sec:
        first = next(iter(res["doorbells"].values()))
        res["speedup_handover_vs_classic"] = round(res["classic_restore_ms"]["median"]
                                                   / first["handover_ms"]["median"], 1)
        res["speedup_refill_vs_classic"] = round(res["classic_restore_ms"]["median"]
                                                 / first["refill_ms"]["total"]["median"], 1)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2) + "\n")
    if "doorbells" in sec and "classic" in sec and "memory" in sec:
        plot(res, out.with_suffix(".png"))
    print(json.dumps({k: v for k, v in res.items() if not k.startswith("template_")}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
