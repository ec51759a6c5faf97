"""The qemu backend's template store: the saved reference VMs clones start from.

One job: the templates in one work directory.  A template is a reference VM
booted once, stopped and saved (device state file, RAM file on /dev/shm,
``meta.json`` written last), keyed by everything that shapes the guest
(:meth:`~mailvm.vmpool.backends.qemu_vm.VMSpec.key`).  This module finds a
valid one or boots the reference VM to make it (:meth:`TemplateStore.load_or_make`),
coordinates the pools that share the work directory through a file lock per
template (users hold it shared, the maker exclusively, a remover must get it
exclusively without waiting), removes templates nobody holds, and remembers
which accelerator the reference VM booted under per image and QEMU version.

It does not decide which template is current (:mod:`.qemu_generation`) nor
start clones (:mod:`.qemu_slots`); it starts QEMU only through the launcher
it is given (:data:`StartVM`).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from mailvm.vmpool.backends.base import BackendError, BackendUnavailable
from mailvm.vmpool.backends.qemu_vm import VM, VMPaths, VMSpec, make_stub_kernel
from mailvm.vmpool.backends.qmp import QMPError, send_fd
from mailvm.vmpool.image.layout import Image
from mailvm.vmpool.shmpage import HostPage, PageError

log = logging.getLogger(__name__)

KVM_PROBE_S = 30.0
SETTLE_S = 1.0
#: the reference VM of a Wine image warms Wine before READY (52 s measured under TCG; the guest stops at 100 s)
WINE_READY_S = 180.0

#: the backend's launcher: (spec, paths, workdir, incoming, name) -> a started QEMU; BackendError when it cannot
StartVM = Callable[[VMSpec, VMPaths, str, bool, str], VM]


@dataclass
class Template:
    key: str
    dir: str
    ram: str
    state: str
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def stub_kernel(self) -> str:
        return os.path.join(self.dir, "kernel.stub")


@dataclass(frozen=True)
class AccelMemo:
    """The accelerator an earlier reference VM booted under, for one image and QEMU version."""

    accel: str | None
    reason: str


@dataclass(eq=False)
class TemplateStore:
    """The templates of one work directory (and their RAM files on ``shm_dir``)."""

    work_dir: str
    shm_dir: str
    ready_timeout_s: float
    start_vm: StartVM
    ref_name: str  # the reference VM's QEMU/domain name
    qemu_version: str = ""  # set by the backend's prepare(); part of every template key
    reference: VM | None = None  # the reference VM while one boots (close() kills it)
    closed: bool = False

    # -- where a template lives --------------------------------------------------------
    def shm_prefix(self) -> str:
        """/dev/shm names are per work dir: two pools (tests, bench) never share a template's RAM file."""
        wd = hashlib.sha256(os.path.realpath(self.work_dir).encode()).hexdigest()[:8]
        return os.path.join(self.shm_dir, f"mailvm-template-{wd}-")

    def paths(self, key: str) -> Template:
        d = os.path.join(self.work_dir, f"qemu-template-{key[:16]}")
        return Template(key, d, f"{self.shm_prefix()}{key[:16]}.ram", os.path.join(d, "state"))

    @staticmethod
    def ram_identity(path: str) -> list[int]:
        st = os.stat(path)
        return [st.st_ino, st.st_mtime_ns, st.st_size]

    def lock_path(self, tag: str) -> str:
        return os.path.join(self.work_dir, f"qemu-template-{tag}.lock")

    def flock(self, tag: str, mode: int, deadline: float | None) -> int | None:
        """An fd holding ``mode`` (LOCK_EX/LOCK_SH) on template ``tag``'s lock file; None when
        ``deadline`` is None and the lock is busy.  A lock file unlinked meanwhile is retried."""
        path = self.lock_path(tag)
        while True:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            while True:
                try:
                    fcntl.flock(fd, mode | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if deadline is None or time.monotonic() >= deadline:
                        os.close(fd)
                        if deadline is None:
                            return None
                        raise BackendError(f"template {tag} stays locked by another pool (making it?)") from None
                    time.sleep(0.05)
            try:
                same = os.fstat(fd).st_ino == os.stat(path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                return fd
            os.close(fd)

    # -- using, making and removing templates -------------------------------------------
    def reference_bound(self, spec: VMSpec) -> float:
        """How long the reference VM may take to reach READY."""
        if spec.accel == "kvm":
            return KVM_PROBE_S
        floor = WINE_READY_S if spec.image.manifest.get("with_wine") else 120.0
        return max(self.ready_timeout_s, floor)

    def load_or_make(self, spec: VMSpec) -> tuple[Template, int]:
        """The valid template for ``spec`` (made if needed) and the fd holding its shared lock.

        Pools sharing a work directory (tests run side by side, a restart while the old
        process still drains) coordinate through ``qemu-template-<key>.lock``: users hold
        it shared; whoever makes the template holds it exclusively (others wait for the
        result and reuse it); an old template is removed only when nobody holds its lock.
        """
        key = spec.key(self.qemu_version)
        t = self.paths(key)
        bound = self.reference_bound(spec)
        wait_until = time.monotonic() + bound + 60
        fd = self.flock(key[:16], fcntl.LOCK_SH, wait_until)  # waits only while someone makes it
        assert fd is not None
        try:
            if self.valid(t):
                log.info("qemu backend: reusing template %s (%s, made %.0f s ago)", key[:12], spec.accel,
                         time.time() - t.meta.get("created_at", 0))
            else:
                os.close(fd)
                fd = -1
                fd = self.flock(key[:16], fcntl.LOCK_EX, wait_until)
                assert fd is not None
                if not self.valid(t):  # nobody made it while we waited
                    self.remove_old(keep=key)
                    self.make(spec, t)
                fcntl.flock(fd, fcntl.LOCK_SH)  # others may use it now; nobody may remove it
        except BaseException:
            if fd >= 0:
                os.close(fd)
            raise
        return t, fd

    def valid(self, t: Template) -> bool:
        try:
            meta = json.loads(Path(t.dir, "meta.json").read_text())
            if (meta.get("key") == t.key and os.path.isfile(t.state) and os.path.isfile(t.ram)
                    and meta.get("ram_identity") == self.ram_identity(t.ram)
                    and (not meta.get("stub_kernel") or os.path.isfile(t.stub_kernel))):
                t.meta = meta
                return True
        except (OSError, ValueError):
            pass
        return False

    def remove_old(self, keep: str) -> None:
        """Remove templates of other keys in this work dir that no pool holds."""
        tags = {p.name[len("qemu-template-"):].split(".", 1)[0] for p in Path(self.work_dir).glob("qemu-template-*")}
        for tag in sorted(tags):
            if keep.startswith(tag):
                continue
            if not self.delete(tag):
                log.info("qemu backend: old template %s is still in use (by a pool or a clone starting); kept", tag)

    def delete(self, tag: str) -> bool:
        """Remove template ``tag`` (directory, RAM and reference page on /dev/shm, lock) unless a pool
        holds its lock; True when removed."""
        fd = self.flock(tag, fcntl.LOCK_EX, None)
        if fd is None:
            return False
        try:
            shutil.rmtree(os.path.join(self.work_dir, f"qemu-template-{tag}"), ignore_errors=True)
            for p in (f"{self.shm_prefix()}{tag}.ram", f"{self.shm_prefix()}{tag}.page", self.lock_path(tag)):
                try:
                    os.unlink(p)
                except FileNotFoundError:
                    pass
        finally:
            os.close(fd)
        return True

    def kill_reference(self) -> None:
        """Kill a reference VM still booting (its template build then fails)."""
        vm, self.reference = self.reference, None
        if vm is not None:
            vm.kill()

    def close(self) -> None:
        """No template is made any more; a reference VM still booting is killed."""
        self.closed = True
        self.kill_reference()

    def make(self, spec: VMSpec, t: Template) -> Template:
        """Boot the reference VM for ``spec``, let it settle at READY, save its device state
        (``x-ignore-shared``: the RAM file *is* the memory image) and write ``meta.json`` last."""
        shutil.rmtree(t.dir, ignore_errors=True)
        os.makedirs(t.dir, mode=0o700)
        try:
            os.unlink(t.ram)
        except FileNotFoundError:
            pass
        st = os.statvfs(os.path.dirname(t.ram))
        if st.f_bavail * st.f_frsize < (spec.mem_mib << 20) + 2 * spec.page_bytes:
            raise BackendUnavailable(f"{os.path.dirname(t.ram)} has {st.f_bavail * st.f_frsize >> 20} MiB free: "
                                     f"too little for the template RAM ({spec.mem_mib} MiB) and a page")
        fd = os.open(t.ram, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        os.ftruncate(fd, spec.mem_mib << 20)
        os.close(fd)
        page_path = f"{self.shm_prefix()}{t.key[:16]}.page"
        try:
            os.unlink(page_path)
        except FileNotFoundError:
            pass
        page = HostPage.create(page_path, spec.page_bytes)
        paths = VMPaths(t.ram, True, page_path, os.path.join(t.dir, "qmp.sock"), os.path.join(t.dir, "bell.sock"),
                        os.path.join(t.dir, "console.log"))
        t0 = time.monotonic()
        bound = self.reference_bound(spec)
        log.info("qemu backend: booting the reference VM under %s via %s (image %s)", spec.accel.upper(),
                 spec.launcher, spec.image.version)
        try:
            vm = self.start_vm(spec, paths, t.dir, False, self.ref_name)
        except BackendError:
            page.close()
            page.unlink()
            raise
        self.reference = vm
        try:
            if self.closed:  # close() ran while it started: it did not see it
                raise BackendError("backend closed")
            vm.connect(t0 + 30)
            try:
                page.wait_ready(t0 + bound, alive=vm.alive)
            except (PageError, TimeoutError) as exc:
                raise BackendError(f"agent not READY under {spec.accel} within {bound:.0f} s: {exc}; "
                                   f"{vm.log_tail()}") from None
            boot_s = time.monotonic() - t0
            time.sleep(SETTLE_S)  # let boot-time work finish: clones inherit an idle guest
            if page.state() != 1 or not vm.alive():
                raise BackendError(f"reference VM left READY while settling; {vm.log_tail()}")
            assert vm.qmp is not None
            vm.qmp.execute("stop")
            vm.qmp.execute("migrate-set-capabilities",
                           {"capabilities": [{"capability": "x-ignore-shared", "state": True}]})
            tmp_state = t.state + ".tmp"
            sfd = os.open(tmp_state, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
            try:
                send_fd(vm.qmp, "state", sfd)
            finally:
                os.close(sfd)
            t1 = time.monotonic()
            vm.qmp.execute("migrate", {"uri": "fd:state"})
            vm.wait_migration(time.monotonic() + 60)
            save_s = time.monotonic() - t1
            try:  # QEMU closes (flushes) the state file on its way out: wait for that
                vm.qmp.execute("quit")
            except QMPError:
                pass
            end = time.monotonic() + 10
            while vm.alive() and time.monotonic() < end:
                time.sleep(0.005)
            if vm.alive():
                raise BackendError("reference VM did not quit after saving its state")
            os.replace(tmp_state, t.state)
        except (QMPError, OSError) as exc:
            raise BackendError(f"reference VM: {exc}; {vm.log_tail()}") from None
        finally:
            vm.kill()
            self.reference = None
            page.close()
            page.unlink()
        stub = make_stub_kernel(spec.image.kernel, t.stub_kernel)
        t.meta = {"key": t.key, "accel": spec.accel, "image": spec.image.key, "qemu": self.qemu_version,
                  "stub_kernel": stub,
                  "mem_mib": spec.mem_mib, "page_bytes": spec.page_bytes, "doorbell": spec.doorbell,
                  "launcher": spec.launcher, "boot_s": round(boot_s, 3), "save_s": round(save_s, 4),
                  "state_bytes": os.path.getsize(t.state), "created_at": time.time(),
                  "ram_identity": self.ram_identity(t.ram)}
        tmp = Path(t.dir, "meta.json.tmp")
        tmp.write_text(json.dumps(t.meta, indent=2))
        os.replace(tmp, Path(t.dir, "meta.json"))
        os.chmod(t.ram, 0o600)
        log.info("qemu backend: template %s saved (boot %.1f s, save %.0f ms, state %d bytes)", t.key[:12],
                 boot_s, save_s * 1000, t.meta["state_bytes"])
        return t

    # -- the accelerator the reference VM booted under ------------------------------------
    def _accel_memo(self) -> Path:
        return Path(self.work_dir, "qemu-accel.json")

    def read_accel_memo(self, image: Image) -> AccelMemo | None:
        """What an earlier probe with ``image`` and this QEMU decided; None when nothing (valid) is known."""
        try:
            memo = json.loads(self._accel_memo().read_text())
        except (OSError, ValueError):
            return None
        if (isinstance(memo, dict) and memo.get("image") == image.key
                and memo.get("qemu") == self.qemu_version):
            return AccelMemo(memo.get("accel"), str(memo.get("reason", "")))
        return None

    def write_accel_memo(self, image: Image, accel: str, reason: str) -> None:
        memo = {"image": image.key, "qemu": self.qemu_version, "accel": accel, "reason": reason,
                "at": time.time()}
        tmp = self._accel_memo().with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(memo))
        os.replace(tmp, self._accel_memo())
