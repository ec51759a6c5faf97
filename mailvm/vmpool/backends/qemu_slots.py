"""The qemu backend's slots: flash clones of the current template, and the spare QEMUs kept for them.

One job: turn the current :class:`~.qemu_generation.Generation` into a
pre-warmed slot.  A clone is a new QEMU (``-incoming defer``, its own page
file and slot directory, the template's RAM mapped copy-on-write) that
restores the template's device state, continues and rings its agent until it
publishes READY on its fresh page (:meth:`CloneMaker.create`).  ``spares``
QEMUs wait started and connected so that a refill is only restore + ``cont``;
they are started in the background and discarded when the template changes.

Which template is current is :mod:`.qemu_generation`'s; starting QEMU is the
backend's launcher (:data:`~.qemu_templates.StartVM`).
"""

from __future__ import annotations

import logging
import os
import re
import secrets
import shutil
import threading
import time
import weakref
from dataclasses import dataclass, field
from typing import Any, Callable

from mailvm.guest.protocol import READY
from mailvm.procfs import cpu_seconds, pss_kib
from mailvm.vmpool import reaper
from mailvm.vmpool.backends.base import BackendError, Slot, close_quietly
from mailvm.vmpool.backends.qemu_generation import Generation, GenerationWatcher
from mailvm.vmpool.backends.qemu_templates import StartVM
from mailvm.vmpool.backends.qemu_vm import VM, VMPaths, _tail
from mailvm.vmpool.backends.qmp import QMPError
from mailvm.vmpool.shmpage import HostPage, PageError

log = logging.getLogger(__name__)

#: empty rings after READY so the guest's wake-up path is translated before the first job
WARM_RINGS = 0  # measured: empty rings before the job did not shorten the hand-over
WARM_RING_GAP_S = 0.004
_SAFE = re.compile(r"[^A-Za-z0-9_.-]+")


class QemuSlot(Slot):
    """A flash clone: its QEMU, its page file and its slot directory."""

    def __init__(self, slot_id: str, vm: VM, page: HostPage, slot_dir: str, gen: Generation | None = None) -> None:
        self.id = slot_id
        self.vm = vm
        self.page = page
        self.slot_dir = slot_dir
        self.gen = gen  # the template it was cloned from
        self.created_at = time.time()
        self.ready_s = 0.0
        self.timings: dict[str, float] = {}
        self.from_spare = False  # its QEMU was started before the slot was asked for
        self._lock = threading.Lock()
        self._destroyed = False
        self._afd: int | None = None  # see answer_fd()

    def ring(self) -> None:
        if not self._destroyed:
            self.vm.ring()

    def answer_fd(self) -> int | None:
        """The doorbell socket, when the image's agent rings back on it (manifest ``agent_answers``;
        an older image's agent does not, and the host then looks at the page itself).  A duplicate
        the slot owns, closed when the slot object goes: a runner may be blocked on it while the
        QEMU is killed, and a number closed under it could be reused by another open."""
        if self._afd is not None:
            return self._afd
        bell = getattr(self.vm, "bell", None)
        image = getattr(self.gen, "image", None)
        if self._destroyed or bell is None or image is None or not image.manifest.get("agent_answers"):
            return None
        try:
            fd = os.dup(bell.fileno())
        except (OSError, ValueError):
            return None
        self._afd = fd
        weakref.finalize(self, close_quietly, fd)
        return fd

    def alive(self) -> bool:
        """False once QEMU is gone, and also for a clone of a retired template that was never given
        a job (the pool then treats it as a dead ready slot: not an attempt, the job takes another)."""
        if self._destroyed or not self.vm.alive():
            return False
        return not (self.outdated and self.unused())

    @property
    def outdated(self) -> bool:
        """Cloned from a template the backend no longer uses (the image changed)."""
        return self.gen is not None and self.gen.retired

    def unused(self) -> bool:
        """The page is still READY: no job was ever written on it (single-use slots)."""
        try:
            return self.page.state() == READY
        except PageError:
            return False  # the pool's own page checks report a broken page

    def stats(self) -> dict[str, Any]:
        pid = self.vm.pid
        return {"pid": pid, "pss_kib": pss_kib(pid), "cpu_s": cpu_seconds([pid]), "page": self.page.path,
                "template": self.gen.template.key[:12] if self.gen else None,
                "accel": self.vm.spec.accel, "doorbell": self.vm.spec.doorbell, "launcher": self.vm.spec.launcher,
                "timings_ms": {k: round(v * 1000, 2) for k, v in self.timings.items()}}

    def console(self) -> str:
        return _tail(self.vm.paths.console)

    def destroy(self) -> None:
        with self._lock:
            if self._destroyed:
                return
            self._destroyed = True
        if self.gen is not None:
            self.gen.slots.discard(self)
        try:
            self.vm.kill()
            self.page.close()
            self.page.unlink()
            shutil.rmtree(self.slot_dir, ignore_errors=True)
            if self.vm.alive():
                log.warning("slot %s: QEMU pid %d still running after destroy", self.id, self.vm.pid)
        except Exception:  # never raises: the pool calls it on every error path
            log.exception("slot %s: destroy failed", self.id)


@dataclass
class Spawned:
    """A clone's QEMU started with ``-incoming defer`` and connected, not yet restored."""

    tag: str
    slot_dir: str
    page: HostPage
    vm: VM
    spawn_s: float
    spawned_at: float
    gen: Generation | None = None

    def discard(self) -> None:
        self.vm.kill()
        self.page.close()
        self.page.unlink()
        shutil.rmtree(self.slot_dir, ignore_errors=True)


@dataclass(eq=False)
class CloneMaker:
    """Makes slots from the current generation and keeps ``spares`` QEMUs waiting for the next one."""

    work_dir: str
    shm_dir: str
    instance: str  # every QEMU, slot directory and page file carries it (the watchdog and sweep find them)
    ready_timeout_s: float
    spares: int
    stub_kernel: bool  # clones boot the template's stub kernel (the real one is never needed after restore)
    start_vm: StartVM
    vm_name: Callable[[str], str]
    generations: GenerationWatcher
    warm_rings: int = WARM_RINGS
    waiting: list[Spawned] = field(default_factory=list)  # spare QEMUs, started and connected
    threads: list[threading.Thread] = field(default_factory=list)  # spare spawns in flight
    lock: threading.Lock = field(default_factory=threading.Lock)  # guards waiting, threads and closed
    closed: bool = False

    def spawn(self, hint: str, gen: Generation) -> Spawned:
        """Start a clone's QEMU (``-incoming defer``) of ``gen`` with its own page and directory, and connect.

        Its name, slot directory and page file carry ``mailvm-<instance>-`` / ``qslot-<instance>-``
        (the watchdog and the start-up sweep find what a dead pool left by that).
        """
        t, spec = gen.template, gen.spec
        t0 = time.monotonic()
        tag = f"{_SAFE.sub('_', hint)[:40]}-{secrets.token_hex(6)}"
        slot_dir = os.path.join(self.work_dir, f"{reaper.SLOT_PREFIX}{self.instance}-{tag}")
        page_path = os.path.join(self.shm_dir, f"{reaper.NAME_PREFIX}{self.instance}-{tag}.page")
        try:
            os.mkdir(slot_dir, 0o700)
            page = HostPage.create(page_path, spec.page_bytes)
        except OSError as exc:
            shutil.rmtree(slot_dir, ignore_errors=True)
            raise BackendError(f"cannot create a clone's files: {exc}") from None
        stub = t.stub_kernel if self.stub_kernel and t.meta.get("stub_kernel") else None
        paths = VMPaths(t.ram, False, page_path, os.path.join(slot_dir, "qmp.sock"),
                        os.path.join(slot_dir, "bell.sock"), os.path.join(slot_dir, "console.log"), kernel=stub)
        try:
            vm = self.start_vm(spec, paths, slot_dir, True, self.vm_name(tag))
        except BackendError:
            page.close()
            page.unlink()
            shutil.rmtree(slot_dir, ignore_errors=True)
            raise
        sp = Spawned(tag, slot_dir, page, vm, 0.0, t0, gen)
        try:
            vm.connect(t0 + self.ready_timeout_s)
        except (QMPError, BackendError, OSError) as exc:
            tail = vm.log_tail()
            sp.discard()
            raise BackendError(f"clone QEMU did not start: {exc}; {tail}") from None
        sp.spawn_s = time.monotonic() - t0
        return sp

    # -- spares ----------------------------------------------------------------------
    def take_spare(self, gen: Generation) -> Spawned | None:
        """A waiting spare QEMU of ``gen`` (spares of other generations are discarded)."""
        while True:
            with self.lock:
                if not self.waiting:
                    return None
                sp = self.waiting.pop(0)
            if sp.gen is gen and sp.vm.alive():
                return sp
            if sp.gen is gen:
                log.warning("qemu backend: spare QEMU %s died while waiting: %s", sp.tag, sp.vm.log_tail())
            sp.discard()

    def top_up(self) -> None:
        """Start background spawns until ``spares`` QEMUs are waiting (or being started)."""
        with self.lock:
            self.threads = [th for th in self.threads if th.is_alive()]
            missing = self.spares - len(self.waiting) - len(self.threads)
            if self.closed or missing <= 0:
                return
            for _ in range(missing):
                th = threading.Thread(target=self._spawn_spare, name="qemu-spare", daemon=True)
                self.threads.append(th)
                th.start()

    def _spawn_spare(self) -> None:
        gen = self.generations.use()
        try:
            sp = self.spawn("spare", gen)
        except BackendError as exc:
            log.warning("qemu backend: spare QEMU failed: %s", exc)
            return
        finally:
            self.generations.unuse(gen)
        with self.lock:
            if not self.closed and not gen.retired:
                self.waiting.append(sp)
                return
        sp.discard()

    def switched(self, gen: Generation) -> None:
        """``gen`` is now current: discard the spares of older generations and start new ones."""
        with self.lock:
            stale = [sp for sp in self.waiting if sp.gen is not gen]
            self.waiting = [sp for sp in self.waiting if sp.gen is gen]
        for sp in stale:
            sp.discard()
        if self.spares:
            self.top_up()

    def close_begin(self) -> None:
        """No new spares from now on (a spawn in flight discards its QEMU itself once it sees this)."""
        with self.lock:
            self.closed = True

    def close(self, timeout: float) -> None:
        """Wait for the spawns in flight and discard the waiting spares."""
        with self.lock:
            self.closed = True
            spares, self.waiting = self.waiting, []
            threads, self.threads = self.threads, []
        for th in threads:
            th.join(timeout=timeout)
        for sp in spares:
            sp.discard()

    # -- slots -------------------------------------------------------------------------
    def create(self, slot_id: str) -> QemuSlot:
        """A READY clone of the current generation (once more if its template was retired meanwhile)."""
        for _ in range(2):
            gen = self.generations.use()
            try:
                slot = self.clone(slot_id, gen)
            finally:
                self.generations.unuse(gen)
            if not gen.retired:
                return slot
            # the image changed while it was made: one more, from the new template
            log.info("slot %s: its template was retired while it started; cloning the new one", slot_id)
            slot.destroy()
        raise BackendError(f"slot {slot_id}: the template changed twice while the slot started")

    def clone(self, slot_id: str, gen: Generation) -> QemuSlot:
        t0 = time.monotonic()
        deadline = t0 + self.ready_timeout_s
        sp = self.take_spare(gen)
        from_spare = sp is not None
        if sp is None:
            try:
                sp = self.spawn(slot_id, gen)
            except BackendError as exc:
                raise BackendError(f"slot {slot_id}: {exc}") from None
        vm, page = sp.vm, sp.page
        slot = QemuSlot(slot_id, vm, page, sp.slot_dir, gen)
        gen.slots.add(slot)
        try:
            t2 = time.monotonic()
            vm.restore(gen.template.state, deadline)
            t3 = time.monotonic()
            vm.control("cont")
            vm.ring()  # the agent finds its page zeroed and publishes READY on it
            page.wait_ready(deadline, alive=vm.alive)
            t4 = time.monotonic()
            for _ in range(self.warm_rings):  # translate the wake-up path now, not during the hand-over
                time.sleep(WARM_RING_GAP_S)
                vm.ring()
            if self.warm_rings:
                time.sleep(WARM_RING_GAP_S)
        except (QMPError, PageError, TimeoutError, BackendError, OSError) as exc:
            tail = vm.log_tail()
            slot.destroy()
            raise BackendError(f"slot {slot_id}: clone did not become READY: {exc}; {tail}") from None
        except BaseException:
            slot.destroy()
            raise
        finally:
            if self.spares:  # the next spare starts once this clone no longer needs the CPU
                self.top_up()
        t5 = time.monotonic()
        # spawn_connect: QEMU exec -> QMP connected (0: a spare had done it earlier); paused: template ->
        # restored, paused clone (the refill figure); ready: cont -> agent READY on its page
        base = t0 if from_spare else sp.spawned_at
        slot.timings = {"spawn_connect": 0.0 if from_spare else sp.spawn_s, "restore": t3 - t2,
                        "paused": t3 - base, "ready": t4 - t3, "warm": t5 - t4, "total": t5 - base}
        slot.from_spare = from_spare
        slot.ready_s = slot.timings["total"]
        log.debug("slot %s ready in %.1f ms (restore %.1f ms, spare %s)", slot_id, slot.ready_s * 1000,
                  (t3 - t2) * 1000, from_spare)
        return slot
