"""The ``qemu`` backend: every slot is a flash clone of a reference VM, pre-warmed.

How it works (DESIGN.md "Backends", docs/qemu-backend.md):

* **Image**: ``mvctl image build`` (``mailvm.vmpool.image``): Debian's cloud
  kernel, a busybox initramfs, an ext4 root mounted read-only under a tmpfs
  overlay (the base image is never written), the guest agent as PID 1's child.
* **Template** (:meth:`QemuBackend.prepare`): a reference VM boots once with
  its RAM in a ``share=on`` file on /dev/shm and its shared page as an NVDIMM
  region backed by a page file; the agent maps the region (``/dev/mem``),
  publishes READY and sleeps on its doorbell.  The VM is stopped and its
  device state saved with migration capability ``x-ignore-shared`` (RAM is
  not copied: the RAM file *is* the memory image).  The template (state file,
  RAM file, ``meta.json`` written last) is keyed by everything that shapes the
  guest (image, QEMU version, memory, page size, accelerator, doorbell) and
  reused until one of those changes; its directory is mode 0700.
* **Slots** (:meth:`QemuBackend.create_slot`): a new QEMU with the same
  machine, its RAM mapped ``share=off`` (private copy-on-write) from the
  template's RAM file, its own zeroed page file as the NVDIMM (``share=on``),
  ``-incoming defer``; QMP sets ``x-ignore-shared`` and restores the device
  state from an inherited fd; ``cont``; a ring makes the agent notice its
  fresh page and publish READY again.  The slot is now pre-warmed: QEMU
  started, guest running, agent asleep on its doorbell, attached to its page.
  Handing it a job costs a page write plus a doorbell.  A clone's ``-kernel``
  is a stub (the bzImage setup sectors: same option ROM, none of the 14 MB
  kernel in QEMU's heap), and ``spares`` QEMUs wait started and connected
  (``-incoming defer``) so that a refill is only restore + ``cont``.
* **Doorbell** (measured trade-off, see the docs): ``vport`` (default) --
  a virtio-serial port whose host side is a unix socket of the slot's QEMU;
  the agent sleeps in poll(2) on ``/dev/vportNpM``; ring() writes one byte.
  ``serial`` -- the same over a second 16550 UART (``/dev/ttyS1``).
  ``poll:MIN:MAX`` -- no device: the agent polls the page adaptively.
* **No network device**: ``-nodefaults``, no ``-netdev``; the simulated
  internet lives inside the guest on loopback.
* **Accelerator**: ``accel = auto|kvm|tcg``.  KVM is used only when a real
  guest (the reference VM itself) reaches READY under it within
  :data:`KVM_PROBE_S`; otherwise TCG, logged as a warning.  The probe's
  outcome is remembered per image and QEMU version.
* **Launchers**: ``raw`` (default) starts QEMU as our child in its own
  session under ``-sandbox on`` (no spawning);
  ``libvirt`` (``pool.qemu_launcher``) starts the same arguments as a
  transient libvirt domain (``libvirt_util``), restores it over the domain's
  own QMP socket (or libvirt's passthrough: ``control_via``) and rings the
  same doorbell socket: libvirt stays off the hand-over path.
* **Privileges**: QEMU opens its files as root, then drops to
  ``pool.qemu_user`` (``-runas``, default ``mailvm-qemu``; root with a
  warning when that user does not exist), with either launcher.  Templates,
  slot directories and page files stay root-only.
* **Lifecycle**: destroy() SIGKILLs QEMU and removes the slot's page,
  sockets and logs; close() kills any reference VM still up and, with
  libvirt, every domain of this backend still running.  Templates are
  shared between pools in one work dir under a file lock (``.lock``).
  A thread watches ``<image_dir>/current``: a new image gets its template in
  the background, then the old template is retired (:class:`_Generation`).
  A watchdog process kills this backend's QEMUs and removes its slot files if
  the pool process dies, and prepare() does the same for dead pools
  (:mod:`mailvm.vmpool.reaper`).

One QEMU process (command line, launchers, QMP, doorbell) is
:mod:`mailvm.vmpool.backends.qemu_vm`; this module makes templates and slots of them.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import re
import secrets
import shutil
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mailvm.config import MAX_GUEST_MEM_MIB, PoolConfig
from mailvm.vmpool import reaper
from mailvm.vmpool.backends import libvirt_util as lv
from mailvm.procfs import cpu_seconds, pss_kib
from mailvm.vmpool.backends.base import Backend, BackendError, BackendInfo, BackendUnavailable, Slot
from mailvm.vmpool.backends.qmp import QMPError, send_fd  # noqa: F401 (send_fd re-exported: bench)
from mailvm.vmpool.backends.qemu_vm import (  # noqa: F401 (some re-exported: tests, bench)
    QEMU_BIN,
    TB_SIZE_MIB,
    VM,
    LibvirtVM,
    QemuVM,
    VMPaths,
    VMSpec,
    _tail,
    guest_args,
    kvm_openable,
    make_stub_kernel,
    qemu_argv,
    qemu_version,
    resolve_qemu_user,
)
from mailvm.vmpool.image.layout import CURRENT, DEFAULT_CACHE_DIR, Image, ImageMissing, load_image
from mailvm.guest.protocol import READY
from mailvm.vmpool.shmpage import HostPage, PageError

log = logging.getLogger(__name__)

PAGE_ALIGN = 2 << 20
DEFAULT_MEM_MIB = 256
#: QEMUs kept started (``-incoming defer``, connected) for the next clone: refill = restore + cont
DEFAULT_SPARES = 1
#: what the reference VM warms up before its template is saved (mailvm.vmpool.image.guestinit)
WARMUPS = ("none", "files", "run")
DEFAULT_WARMUP = "none"
MAX_SPARES = 16
MAX_MEM_MIB = MAX_GUEST_MEM_MIB  # the config's bound (pool.guest_mem_mib), one source
KVM_PROBE_S = 30.0
SETTLE_S = 1.0
#: empty rings after READY so the guest's wake-up path is translated before the first job
WARM_RINGS = 0  # measured: empty rings before the job did not shorten the hand-over
WARM_RING_GAP_S = 0.004
DOORBELLS = ("vport", "serial", "poll")
#: who starts QEMU: ourselves, or libvirt (transient domains)
LAUNCHERS = ("raw", "libvirt")
#: how a libvirt clone's restore and cont reach QEMU: its own QMP socket, or libvirt's passthrough
CONTROL_PATHS = ("qmp", "libvirt")
ISOLATION = {"kvm": "hardware VM (KVM)", "tcg": "VM (TCG emulation; no hardware virtualisation)"}
_SAFE = re.compile(r"[^A-Za-z0-9_.-]+")
#: a guest image with Wine thrashes below this (every Wine run hung at 256 MiB under TCG; 512 and 1024 alike)
WINE_MIN_MEM_MIB = 512
#: the reference VM of a Wine image warms Wine before READY (52 s measured under TCG; the guest stops at 100 s)
WINE_READY_S = 180.0
#: the unprivileged user QEMU switches to (``-runas``) once its files are open (``pool.qemu_user``)
DEFAULT_QEMU_USER = "mailvm-qemu"
_USER_NAME = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")
#: how often a running backend looks at ``<image_dir>/current`` (one readlink); 0 = never
IMAGE_POLL_S = 5.0
#: after a failed template build for a new image, wait this long before trying that image again
IMAGE_RETRY_S = 600.0
#: after a switch to a new template, idle clones of the old one are destroyed after this grace
RETIRE_GRACE_S = 2.0


class QemuSlot(Slot):
    """A flash clone: its QEMU, its page file and its slot directory."""

    def __init__(self, slot_id: str, vm: VM, page: HostPage, slot_dir: str, gen: "_Generation | None" = None) -> None:
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

    def ring(self) -> None:
        if not self._destroyed:
            self.vm.ring()

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
class Template:
    key: str
    dir: str
    ram: str
    state: str
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def stub_kernel(self) -> str:
        return os.path.join(self.dir, "kernel.stub")


@dataclass(eq=False)
class _Generation:
    """One template this backend clones from, and what still depends on it.

    The backend has one current generation; when the image changes, a new one
    is made in the background and becomes current, and the old one is
    *retired*: its spares are discarded, its clones that never got a job are
    destroyed (:data:`RETIRE_GRACE_S` later), its busy clones finish their
    job.  Its template lock (shared flock) is released once no slot creation
    uses it any more; the template files are then removed unless another pool
    holds them (running clones keep their RAM mapping of an unlinked file).
    """

    template: Template
    spec: VMSpec
    image: Image
    lock_fd: int  # shared flock on the template's lock file; -1 once released
    users: int = 0  # slot creations and spare spawns in flight
    retired: bool = False
    slots: set = field(default_factory=set)  # live QemuSlots cloned from it


@dataclass
class _Spawned:
    """A clone's QEMU started with ``-incoming defer`` and connected, not yet restored."""

    tag: str
    slot_dir: str
    page: HostPage
    vm: VM
    spawn_s: float
    spawned_at: float
    gen: _Generation | None = None

    def discard(self) -> None:
        self.vm.kill()
        self.page.close()
        self.page.unlink()
        shutil.rmtree(self.slot_dir, ignore_errors=True)


class QemuBackend(Backend):
    """Flash-clone slots from one reference VM; see the module docstring.

    ``launcher`` chooses who starts QEMU: ``raw`` (a child process, default)
    or ``libvirt`` (transient domains through libvirt-python; config key
    ``pool.qemu_launcher``).  ``control_via`` (libvirt only) chooses how the
    clone's restore and ``cont`` reach QEMU: its own QMP socket (``qmp``,
    default: measured faster) or libvirt's QMP passthrough (``libvirt``).
    """

    name = "qemu"

    def __init__(self, cfg: PoolConfig, *, image_dir: str | None = None, mem_mib: int | None = None,
                 doorbell: str | None = None, shm_dir: str = "/dev/shm", qemu: str = QEMU_BIN,
                 accel: str | None = None, launcher: str | None = None, libvirt_uri: str | None = None,
                 control_via: str = "qmp", tb_mib: int | None = None, spares: int | None = None,
                 stub_kernel: bool = True, warmup: str | None = None, qemu_user: str | None = None,
                 image_poll_s: float | None = None, watchdog: bool = True) -> None:
        super().__init__(cfg)
        self.image_dir = image_dir or getattr(cfg, "image_dir", None) or DEFAULT_CACHE_DIR
        self.mem_mib = int(mem_mib or getattr(cfg, "guest_mem_mib", 0) or DEFAULT_MEM_MIB)
        self.doorbell = doorbell or getattr(cfg, "doorbell", None) or "vport"
        self.accel_wanted = accel or cfg.accel
        self.launcher = launcher or getattr(cfg, "qemu_launcher", None) or "raw"
        self.libvirt_uri = libvirt_uri or getattr(cfg, "libvirt_uri", None) or lv.DEFAULT_URI
        self.control_via = control_via
        self.tb_mib = int(tb_mib or getattr(cfg, "qemu_tb_mib", 0) or TB_SIZE_MIB)
        cfg_spares = getattr(cfg, "qemu_spares", None)
        self.spares = int(spares if spares is not None else cfg_spares if cfg_spares is not None else DEFAULT_SPARES)
        self.stub_kernel = stub_kernel
        self.warmup = warmup or getattr(cfg, "qemu_warmup", None) or DEFAULT_WARMUP
        self.shm_dir = shm_dir
        self.qemu = qemu
        cfg_user = getattr(cfg, "qemu_user", None)
        self.qemu_user = qemu_user if qemu_user is not None else cfg_user if cfg_user is not None else DEFAULT_QEMU_USER
        cfg_poll = getattr(cfg, "qemu_image_poll_s", None)
        self.image_poll_s = float(image_poll_s if image_poll_s is not None else cfg_poll if cfg_poll is not None
                                  else IMAGE_POLL_S)
        self.watchdog = watchdog
        kind = self.doorbell.split(":", 1)[0]
        if kind not in DOORBELLS or (kind == "poll") != (":" in self.doorbell):
            raise ValueError(f"doorbell must be vport, serial or poll:MIN[:MAX], not {self.doorbell!r}")
        if self.accel_wanted not in ("auto", "kvm", "tcg"):
            raise ValueError(f"accel must be auto, kvm or tcg, not {self.accel_wanted!r}")
        if self.launcher not in LAUNCHERS:
            raise ValueError(f"qemu launcher must be one of {', '.join(LAUNCHERS)}, not {self.launcher!r}")
        if control_via not in CONTROL_PATHS:
            raise ValueError(f"control_via must be one of {', '.join(CONTROL_PATHS)}, not {control_via!r}")
        if not 64 <= self.mem_mib <= MAX_MEM_MIB:
            raise ValueError(f"guest memory {self.mem_mib} MiB is not in [64, {MAX_MEM_MIB}]")
        if self.warmup not in WARMUPS:
            raise ValueError(f"warmup must be one of {', '.join(WARMUPS)}, not {self.warmup!r}")
        if not 1 <= self.tb_mib <= 1024:
            raise ValueError(f"TCG translation cache {self.tb_mib} MiB is not in [1, 1024]")
        if not 0 <= self.spares <= MAX_SPARES:
            raise ValueError(f"spares {self.spares} is not in [0, {MAX_SPARES}]")
        if self.qemu_user and not _USER_NAME.match(self.qemu_user):
            raise ValueError(f"qemu_user must be a user name ([a-z_][a-z0-9_-]*, at most 32), not {self.qemu_user!r}")
        if not (self.image_poll_s == 0 or 0.1 <= self.image_poll_s <= 3600):
            raise ValueError(f"image poll interval {self.image_poll_s} s is not 0 (off) or in [0.1, 3600]")
        self.page_bytes = (cfg.page_bytes + PAGE_ALIGN - 1) // PAGE_ALIGN * PAGE_ALIGN
        self.template: Template | None = None
        self.spec: VMSpec | None = None
        self.image: Image | None = None
        self.accel_reason = ""
        self.qemu_version = ""
        #: every QEMU of this backend has ``mailvm-<instance>-`` in its name (tests find leftovers by it)
        self.instance = secrets.token_hex(4)
        self._lock = threading.Lock()
        self._reference: VM | None = None
        self._gen: _Generation | None = None  # the template new clones come from
        self._old: list[_Generation] = []  # retired generations whose template lock is still held
        self.run_as: str | None = None  # -runas user (resolved in prepare)
        self.user_warning = ""
        self.image_pending: str | None = None  # version of a new image whose template is being made
        self.image_error = ""
        self._image_failed: dict[str, float] = {}  # image key -> monotonic time before which it is not retried
        self._rebuild_lock = threading.Lock()
        self._stop = threading.Event()
        self._watcher: threading.Thread | None = None
        self._watchdog: reaper.Watchdog | None = None
        self._owner_written = False
        self._conn: Any = None  # libvirt connection (libvirt launcher)
        self._conn_lock = threading.Lock()
        self._spares: list[_Spawned] = []
        self._spare_threads: list[threading.Thread] = []
        self._spare_lock = threading.Lock()
        self._closed = False
        self.warm_rings = WARM_RINGS

    # -- probing ---------------------------------------------------------------
    @classmethod
    def probe(cls, cfg: PoolConfig) -> str | None:
        if shutil.which(QEMU_BIN) is None:
            return f"{QEMU_BIN} is not installed"
        image_dir = getattr(cfg, "image_dir", None) or DEFAULT_CACHE_DIR
        try:
            load_image(image_dir)
        except ImageMissing as exc:
            return str(exc)
        if not os.access("/dev/shm", os.W_OK):
            return "/dev/shm is not writable"
        try:
            st = os.statvfs("/dev/shm")
        except OSError as exc:
            return f"/dev/shm: {exc.strerror}"
        need = 2 * cfg.page_bytes + (64 << 20)  # two slot pages and room for guest writes to them
        if st.f_bavail * st.f_frsize < need:
            return (f"/dev/shm has {st.f_bavail * st.f_frsize >> 20} MiB free, slots need at least {need >> 20} MiB "
                    f"(a container's default 64 MiB /dev/shm is too small: --shm-size)")
        if (getattr(cfg, "qemu_launcher", None) or "raw") == "libvirt":
            return lv.probe(getattr(cfg, "libvirt_uri", None) or lv.DEFAULT_URI)
        return None

    def info(self) -> BackendInfo:
        accel = self.spec.accel if self.spec else "none"
        t = self.template
        image = self.image
        if image is None:
            try:
                image = load_image(self.image_dir)
            except ImageMissing:
                image = None
        created = t.meta.get("created_at") if t else None
        return BackendInfo(
            name=self.name,
            isolation=ISOLATION.get(accel, "VM (not prepared yet)"),
            accel=accel,
            details={
                "image_version": image.version if image else None,
                "image_built_at": image.manifest.get("built_at") if image else None,
                "template_key": t.key[:12] if t else None,
                "template_created_at": created,
                "template_age_s": round(time.time() - created, 1) if isinstance(created, (int, float)) else None,
                "accel_reason": self.accel_reason,
                "launcher": self.launcher,
                "doorbell": self.doorbell,
                "guest_mem_mib": self.spec.mem_mib if self.spec else self.mem_mib,
                "wine": bool(image and image.manifest.get("with_wine")),
                "page_bytes": self.page_bytes,
                "qemu": self.qemu_version,
                "qemu_user": (self.run_as or ("root" if os.geteuid() == 0 else str(os.geteuid())))
                if self.spec else None,
                "image_pending": self.image_pending,
                "image_error": self.image_error or None,
                "warnings": [w for w in (self.user_warning,) if w],
            },
        )

    # -- launchers -----------------------------------------------------------------
    def _connection(self) -> Any:
        with self._conn_lock:
            if self._conn is None:
                try:
                    self._conn = lv.open_connection(self.libvirt_uri)
                except lv.LibvirtUnavailable as exc:
                    raise BackendUnavailable(str(exc)) from None
            return self._conn

    def _start_vm(self, spec: VMSpec, paths: VMPaths, workdir: str, incoming: bool, name: str) -> VM:
        """A new QEMU through the configured launcher; BackendError when it cannot start."""
        if spec.launcher == "libvirt":
            return LibvirtVM(spec, paths, workdir, incoming, self.qemu, self._connection(), name,
                             control_via=self.control_via)
        try:
            return QemuVM(spec, paths, workdir, incoming, self.qemu, name=name)
        except OSError as exc:
            raise BackendError(f"cannot start {self.qemu}: {exc}") from None

    def vm_name(self, tag: str) -> str:
        return f"{lv.DOMAIN_PREFIX}{self.instance}-{tag}"

    # -- the template ------------------------------------------------------------
    def _accel_candidates(self) -> list[str]:
        if self.accel_wanted in ("kvm", "tcg"):
            return [self.accel_wanted]
        why = kvm_openable()
        if why:
            self.accel_reason = why
            return ["tcg"]
        return ["kvm", "tcg"]

    def _accel_memo(self) -> Path:
        return Path(self.cfg.work_dir, "qemu-accel.json")

    def prepare(self) -> None:
        with self._lock:
            if self._gen is not None:
                return
            if self._closed:
                raise BackendError("qemu backend is closed")
            reason = self.probe(self.cfg) if shutil.which(self.qemu) is None else None
            if reason:
                raise BackendUnavailable(reason)
            try:
                image = load_image(self.image_dir)
            except ImageMissing as exc:
                raise BackendUnavailable(str(exc)) from None
            if self.launcher == "libvirt":
                self._connection()  # BackendUnavailable now rather than at the first clone
            self.qemu_version = qemu_version(self.qemu)
            os.makedirs(self.cfg.work_dir, mode=0o700, exist_ok=True)
            self.run_as, self.user_warning = resolve_qemu_user(self.qemu_user)
            if self.user_warning:
                log.warning("qemu backend: %s", self.user_warning)
            self._guard_orphans()
            gen = self._make_generation(image)
            self._gen, self.template, self.spec, self.image = gen, gen.template, gen.spec, image
            if self.spec.accel == "tcg":
                log.warning(
                    "qemu backend: guests run under TCG EMULATION (no usable KVM: %s); isolation is still a VM, "
                    "but expect samples to run 10-50x slower than on a KVM host",
                    self.accel_reason or f"accel = {self.accel_wanted}")
            else:
                log.info("qemu backend: KVM accelerator in use")
            log.info("qemu backend: launcher %s, doorbell %s, QEMU as %s", self.launcher, self.doorbell,
                     self.run_as or "the pool's user")
            if self.image_poll_s > 0:
                self._watcher = threading.Thread(target=self._watch_image, name="qemu-image-watch", daemon=True)
                self._watcher.start()

    def _guard_orphans(self) -> None:
        """Reap QEMUs and files of dead pools in this work dir, record this pool as the owner of its
        instance and start the watchdog that kills our QEMUs and removes our slot files if this
        process dies (:mod:`reaper`).  With libvirt, AUTODESTROY kills the domains as well; the
        watchdog and the sweep still remove the slot directories and page files."""
        try:
            reaper.sweep(self.cfg.work_dir, self.shm_dir)
        except OSError as exc:
            log.warning("qemu backend: sweeping QEMUs of dead pools failed: %s", exc)
        reaper.write_owner(self.cfg.work_dir, self.instance)
        self._owner_written = True
        if self.watchdog:
            try:
                self._watchdog = reaper.start_watchdog(self.cfg.work_dir, self.shm_dir, self.instance)
            except OSError as exc:
                log.warning("qemu backend: no watchdog (%s): if this process is killed, its QEMUs run on "
                            "until the next pool starts in %s", exc, self.cfg.work_dir)

    def _reference_bound(self, spec: VMSpec) -> float:
        """How long the reference VM may take to reach READY."""
        if spec.accel == "kvm":
            return KVM_PROBE_S
        floor = WINE_READY_S if spec.image.manifest.get("with_wine") else 120.0
        return max(self.cfg.ready_timeout_s, floor)

    def _make_generation(self, image: Image) -> _Generation:
        """The template for ``image`` (reused or made; the accelerator chosen as configured), locked shared."""
        candidates = self._accel_candidates()
        memo = self._read_accel_memo(image)
        if self.accel_wanted == "auto" and memo in candidates:
            candidates = [memo]  # an earlier probe with this image and QEMU decided already
        errors = []
        mem_mib = self.mem_mib
        if image.manifest.get("with_wine") and mem_mib < WINE_MIN_MEM_MIB:
            log.warning("qemu backend: image %s has Wine, which needs %d MiB of guest RAM; using that instead of "
                        "pool.guest_mem_mib = %d", image.version, WINE_MIN_MEM_MIB, mem_mib)
            mem_mib = WINE_MIN_MEM_MIB
        for accel in candidates:
            spec = VMSpec(image, accel, mem_mib, self.page_bytes, self.doorbell, self.launcher,
                          self.tb_mib, self.warmup, self.run_as)
            try:
                t, fd = self._load_or_make_template(spec)
            except BackendError as exc:
                errors.append(f"{accel}: {exc}")
                log.warning("qemu backend: reference VM under %s failed: %s", accel.upper(), exc)
                continue
            if self.accel_wanted == "auto":
                self._write_accel_memo(image, accel)
            if accel == "tcg" and errors:
                self.accel_reason = errors[0]
            return _Generation(t, spec, image, fd)
        raise BackendError("qemu backend: no reference VM could boot: " + " | ".join(errors))

    # -- a new image while running ---------------------------------------------------
    def _watch_image(self) -> None:
        while not self._stop.wait(self.image_poll_s):
            try:
                self.check_image()
            except Exception:  # the watcher must survive anything; the old template keeps serving
                log.exception("qemu backend: checking the image failed")

    def check_image(self) -> bool:
        """Switch to the image ``<image_dir>/current`` points at, if it changed; True when switched.

        Cheap when nothing changed (one readlink).  Otherwise the new template is
        made here (the caller's thread: the image watcher's), while clones of the
        old one keep being made and served; then new clones come from the new
        template and the old generation is retired (see :class:`_Generation`).
        A failed build is logged and retried after :data:`IMAGE_RETRY_S`.
        """
        with self._rebuild_lock:
            cur = self._gen
            if cur is None or self._closed:
                return False
            if os.path.realpath(os.path.join(self.image_dir, CURRENT)) == cur.image.dir:
                return False
            try:
                image = load_image(self.image_dir)
            except ImageMissing as exc:  # e.g. a build half-way: the old image keeps serving
                log.debug("qemu backend: image check: %s", exc)
                return False
            if image.key == cur.image.key or self._image_failed.get(image.key, 0) > time.monotonic():
                return False
            log.info("qemu backend: image changed (%s -> %s): making its template while clones of %s keep serving",
                     cur.image.version, image.version, cur.image.version)
            self.image_pending = image.version
            t0 = time.monotonic()
            try:
                gen = self._make_generation(image)
            except BackendError as exc:
                self._image_failed[image.key] = time.monotonic() + IMAGE_RETRY_S
                self.image_error = f"image {image.version}: {exc}"[:500]
                log.error("qemu backend: no template for the new image %s (%s); still serving image %s, "
                          "retry in %.0f s", image.version, exc, cur.image.version, IMAGE_RETRY_S)
                return False
            finally:
                self.image_pending = None
            self.image_error = ""
            if not self._switch(gen):
                return False
            log.info("qemu backend: now cloning image %s (template %s, ready after %.1f s)", image.version,
                     gen.template.key[:12], time.monotonic() - t0)
        self._stop.wait(RETIRE_GRACE_S)  # a runner that took an old slot just before the switch writes its job now
        self._retire_idle(cur)
        return True

    def _switch(self, gen: _Generation) -> bool:
        """Make ``gen`` current and retire the old generation; False (gen released) when closed."""
        with self._lock:
            old = self._gen
            if self._closed or old is None:
                closed = True
            else:
                closed = False
                old.retired = True
                self._old.append(old)
                self._gen, self.template, self.spec, self.image = gen, gen.template, gen.spec, gen.image
        if closed:
            os.close(gen.lock_fd)
            gen.lock_fd = -1
            return False
        with self._spare_lock:
            stale = [sp for sp in self._spares if sp.gen is not gen]
            self._spares = [sp for sp in self._spares if sp.gen is gen]
        for sp in stale:
            sp.discard()
        self._release_retired()
        if self.spares:
            self._top_up_spares()
        return True

    def _retire_idle(self, gen: _Generation) -> int:
        """Destroy the clones of retired ``gen`` that never got a job; returns how many."""
        n = 0
        for slot in list(gen.slots):
            if slot.unused():
                slot.destroy()
                n += 1
        if n:
            log.info("qemu backend: destroyed %d idle clone(s) of the old template %s", n, gen.template.key[:12])
        return n

    def _use_gen(self) -> _Generation:
        with self._lock:
            gen = self._gen
            assert gen is not None
            gen.users += 1
            return gen

    def _unuse_gen(self, gen: _Generation) -> None:
        with self._lock:
            gen.users -= 1
            last = gen.retired and gen.users == 0
        if last:
            self._release_retired()

    def _release_retired(self) -> None:
        """Release the template locks of retired generations nobody creates clones from any more,
        then remove their templates unless another pool holds them."""
        with self._lock:
            done = [g for g in self._old if g.users == 0]
            self._old = [g for g in self._old if g.users > 0]
            keep = self._gen.template.key if self._gen else None
        for g in done:
            if g.lock_fd >= 0:
                os.close(g.lock_fd)
                g.lock_fd = -1
        if done and keep and not self._closed:
            self._remove_old_templates(keep=keep)

    def _read_accel_memo(self, image: Image) -> str | None:
        try:
            memo = json.loads(self._accel_memo().read_text())
        except (OSError, ValueError):
            return None
        if (isinstance(memo, dict) and memo.get("image") == image.key
                and memo.get("qemu") == self.qemu_version):
            self.accel_reason = str(memo.get("reason", ""))
            return memo.get("accel")
        return None

    def _write_accel_memo(self, image: Image, accel: str) -> None:
        memo = {"image": image.key, "qemu": self.qemu_version, "accel": accel, "reason": self.accel_reason,
                "at": time.time()}
        tmp = self._accel_memo().with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(memo))
        os.replace(tmp, self._accel_memo())

    def _shm_prefix(self) -> str:
        """/dev/shm names are per work dir: two pools (tests, bench) never share a template's RAM file."""
        wd = hashlib.sha256(os.path.realpath(self.cfg.work_dir).encode()).hexdigest()[:8]
        return os.path.join(self.shm_dir, f"mailvm-template-{wd}-")

    def _template_paths(self, key: str) -> Template:
        d = os.path.join(self.cfg.work_dir, f"qemu-template-{key[:16]}")
        return Template(key, d, f"{self._shm_prefix()}{key[:16]}.ram", os.path.join(d, "state"))

    @staticmethod
    def _ram_identity(path: str) -> list[int]:
        st = os.stat(path)
        return [st.st_ino, st.st_mtime_ns, st.st_size]

    def _lock_path(self, tag: str) -> str:
        return os.path.join(self.cfg.work_dir, f"qemu-template-{tag}.lock")

    def _flock(self, tag: str, mode: int, deadline: float | None) -> int | None:
        """An fd holding ``mode`` (LOCK_EX/LOCK_SH) on template ``tag``'s lock file; None when
        ``deadline`` is None and the lock is busy.  A lock file unlinked meanwhile is retried."""
        path = self._lock_path(tag)
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

    def _load_or_make_template(self, spec: VMSpec) -> tuple[Template, int]:
        """The valid template for ``spec`` (made if needed) and the fd holding its shared lock.

        Pools sharing a work directory (tests run side by side, a restart while the old
        process still drains) coordinate through ``qemu-template-<key>.lock``: users hold
        it shared; whoever makes the template holds it exclusively (others wait for the
        result and reuse it); an old template is removed only when nobody holds its lock.
        """
        key = spec.key(self.qemu_version)
        t = self._template_paths(key)
        bound = self._reference_bound(spec)
        wait_until = time.monotonic() + bound + 60
        fd = self._flock(key[:16], fcntl.LOCK_SH, wait_until)  # waits only while someone makes it
        assert fd is not None
        try:
            if self._template_valid(t):
                log.info("qemu backend: reusing template %s (%s, made %.0f s ago)", key[:12], spec.accel,
                         time.time() - t.meta.get("created_at", 0))
            else:
                os.close(fd)
                fd = -1
                fd = self._flock(key[:16], fcntl.LOCK_EX, wait_until)
                assert fd is not None
                if not self._template_valid(t):  # nobody made it while we waited
                    self._remove_old_templates(keep=key)
                    self._make_template(spec, t)
                fcntl.flock(fd, fcntl.LOCK_SH)  # others may use it now; nobody may remove it
        except BaseException:
            if fd >= 0:
                os.close(fd)
            raise
        return t, fd

    def _template_valid(self, t: Template) -> bool:
        try:
            meta = json.loads(Path(t.dir, "meta.json").read_text())
            if (meta.get("key") == t.key and os.path.isfile(t.state) and os.path.isfile(t.ram)
                    and meta.get("ram_identity") == self._ram_identity(t.ram)
                    and (not meta.get("stub_kernel") or os.path.isfile(t.stub_kernel))):
                t.meta = meta
                return True
        except (OSError, ValueError):
            pass
        return False

    def _remove_old_templates(self, keep: str) -> None:
        """Remove templates of other keys in this work dir that no pool holds."""
        tags = {p.name[len("qemu-template-"):].split(".", 1)[0] for p in Path(self.cfg.work_dir).glob("qemu-template-*")}
        for tag in sorted(tags):
            if keep.startswith(tag):
                continue
            if not self._delete_template(tag):
                log.info("qemu backend: old template %s is still in use (by a pool or a clone starting); kept", tag)

    def _delete_template(self, tag: str) -> bool:
        """Remove template ``tag`` (directory, RAM and reference page on /dev/shm, lock) unless a pool
        holds its lock; True when removed."""
        fd = self._flock(tag, fcntl.LOCK_EX, None)
        if fd is None:
            return False
        try:
            shutil.rmtree(os.path.join(self.cfg.work_dir, f"qemu-template-{tag}"), ignore_errors=True)
            for p in (f"{self._shm_prefix()}{tag}.ram", f"{self._shm_prefix()}{tag}.page", self._lock_path(tag)):
                try:
                    os.unlink(p)
                except FileNotFoundError:
                    pass
        finally:
            os.close(fd)
        return True

    def discard_template(self) -> bool:
        """After close(): remove this backend's template (state, stub, RAM file on /dev/shm) unless
        another pool holds it.  True when removed.  For throw-away pools (tests, CI)."""
        t = self.template
        if t is None or not self._closed or (self._gen is not None and self._gen.lock_fd >= 0):
            return False
        if not self._delete_template(t.key[:16]):
            return False
        self.template = None
        return True

    def _make_template(self, spec: VMSpec, t: Template) -> Template:
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
        page_path = f"{self._shm_prefix()}{t.key[:16]}.page"
        try:
            os.unlink(page_path)
        except FileNotFoundError:
            pass
        page = HostPage.create(page_path, spec.page_bytes)
        paths = VMPaths(t.ram, True, page_path, os.path.join(t.dir, "qmp.sock"), os.path.join(t.dir, "bell.sock"),
                        os.path.join(t.dir, "console.log"))
        t0 = time.monotonic()
        bound = self._reference_bound(spec)
        log.info("qemu backend: booting the reference VM under %s via %s (image %s)", spec.accel.upper(),
                 spec.launcher, spec.image.version)
        try:
            vm = self._start_vm(spec, paths, t.dir, incoming=False, name=self.vm_name("ref"))
        except BackendError:
            page.close()
            page.unlink()
            raise
        self._reference = vm
        try:
            if self._closed:  # close() ran while it started: it did not see it
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
            self._reference = None
            page.close()
            page.unlink()
        stub = make_stub_kernel(spec.image.kernel, t.stub_kernel)
        t.meta = {"key": t.key, "accel": spec.accel, "image": spec.image.key, "qemu": self.qemu_version,
                  "stub_kernel": stub,
                  "mem_mib": spec.mem_mib, "page_bytes": spec.page_bytes, "doorbell": spec.doorbell,
                  "launcher": spec.launcher, "boot_s": round(boot_s, 3), "save_s": round(save_s, 4),
                  "state_bytes": os.path.getsize(t.state), "created_at": time.time(),
                  "ram_identity": self._ram_identity(t.ram)}
        tmp = Path(t.dir, "meta.json.tmp")
        tmp.write_text(json.dumps(t.meta, indent=2))
        os.replace(tmp, Path(t.dir, "meta.json"))
        os.chmod(t.ram, 0o600)
        log.info("qemu backend: template %s saved (boot %.1f s, save %.0f ms, state %d bytes)", t.key[:12],
                 boot_s, save_s * 1000, t.meta["state_bytes"])
        return t

    # -- slots ---------------------------------------------------------------------
    def _spawn(self, hint: str, gen: _Generation) -> _Spawned:
        """Start a clone's QEMU (``-incoming defer``) of ``gen`` with its own page and directory, and connect.

        Its name, slot directory and page file carry ``mailvm-<instance>-`` / ``qslot-<instance>-``
        (the watchdog and the start-up sweep find what a dead pool left by that).
        """
        t, spec = gen.template, gen.spec
        t0 = time.monotonic()
        tag = f"{_SAFE.sub('_', hint)[:40]}-{secrets.token_hex(6)}"
        slot_dir = os.path.join(self.cfg.work_dir, f"{reaper.SLOT_PREFIX}{self.instance}-{tag}")
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
            vm = self._start_vm(spec, paths, slot_dir, incoming=True, name=self.vm_name(tag))
        except BackendError:
            page.close()
            page.unlink()
            shutil.rmtree(slot_dir, ignore_errors=True)
            raise
        sp = _Spawned(tag, slot_dir, page, vm, 0.0, t0, gen)
        try:
            vm.connect(t0 + self.cfg.ready_timeout_s)
        except (QMPError, BackendError, OSError) as exc:
            tail = vm.log_tail()
            sp.discard()
            raise BackendError(f"clone QEMU did not start: {exc}; {tail}") from None
        sp.spawn_s = time.monotonic() - t0
        return sp

    def _take_spare(self, gen: _Generation) -> _Spawned | None:
        """A waiting spare QEMU of ``gen`` (spares of other generations are discarded)."""
        while True:
            with self._spare_lock:
                if not self._spares:
                    return None
                sp = self._spares.pop(0)
            if sp.gen is gen and sp.vm.alive():
                return sp
            if sp.gen is gen:
                log.warning("qemu backend: spare QEMU %s died while waiting: %s", sp.tag, sp.vm.log_tail())
            sp.discard()

    def _top_up_spares(self) -> None:
        """Start background spawns until ``spares`` QEMUs are waiting (or being started)."""
        with self._spare_lock:
            self._spare_threads = [th for th in self._spare_threads if th.is_alive()]
            missing = self.spares - len(self._spares) - len(self._spare_threads)
            if self._closed or missing <= 0:
                return
            for _ in range(missing):
                th = threading.Thread(target=self._spawn_spare, name="qemu-spare", daemon=True)
                self._spare_threads.append(th)
                th.start()

    def _spawn_spare(self) -> None:
        gen = self._use_gen()
        try:
            sp = self._spawn("spare", gen)
        except BackendError as exc:
            log.warning("qemu backend: spare QEMU failed: %s", exc)
            return
        finally:
            self._unuse_gen(gen)
        with self._spare_lock:
            if not self._closed and not gen.retired:
                self._spares.append(sp)
                return
        sp.discard()

    def create_slot(self, slot_id: str) -> QemuSlot:
        self.prepare()
        for _ in range(2):
            gen = self._use_gen()
            try:
                slot = self._clone(slot_id, gen)
            finally:
                self._unuse_gen(gen)
            if not gen.retired:
                return slot
            # the image changed while it was made: one more, from the new template
            log.info("slot %s: its template was retired while it started; cloning the new one", slot_id)
            slot.destroy()
        raise BackendError(f"slot {slot_id}: the template changed twice while the slot started")

    def _clone(self, slot_id: str, gen: _Generation) -> QemuSlot:
        t0 = time.monotonic()
        deadline = t0 + self.cfg.ready_timeout_s
        sp = self._take_spare(gen)
        from_spare = sp is not None
        if sp is None:
            try:
                sp = self._spawn(slot_id, gen)
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
                self._top_up_spares()
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

    def close(self) -> None:
        """Stop the image watcher, kill a reference VM still booting and the spare QEMUs, release the
        template locks, stop the watchdog and the libvirt connection (destroying any domain of ours
        still running)."""
        with self._spare_lock:
            self._closed = True
        self._stop.set()
        vm, self._reference = self._reference, None
        if vm is not None:
            vm.kill()
        if self._watcher is not None:  # a template build in flight fails once its reference VM is killed
            self._watcher.join(timeout=self.cfg.ready_timeout_s)
            vm, self._reference = self._reference, None
            if vm is not None:
                vm.kill()
        with self._spare_lock:
            spares, self._spares = self._spares, []
            threads, self._spare_threads = self._spare_threads, []
        for th in threads:  # a spawn in flight discards its QEMU itself once it sees _closed
            th.join(timeout=self.cfg.ready_timeout_s)
        for sp in spares:
            sp.discard()
        with self._lock:
            gens = [g for g in (self._gen, *self._old) if g is not None]
            self._old = []
        for g in gens:
            if g.lock_fd >= 0:
                os.close(g.lock_fd)
                g.lock_fd = -1
        if self._watchdog is not None:
            self._watchdog.stop()
            self._watchdog = None
        if self._owner_written:
            try:
                reaper.owner_path(self.cfg.work_dir, self.instance).unlink()
            except OSError:
                pass
            self._owner_written = False
        with self._conn_lock:
            conn, self._conn = self._conn, None
        if conn is not None:
            # domains of slots nobody destroyed: a domain object keeps the connection open, so
            # AUTODESTROY alone would only act when this process exits
            left = lv.destroy_all(conn, self.vm_name(""))
            if left:
                log.warning("qemu backend: destroyed %d libvirt domain(s) left at close: %s", len(left), left)
            lv.close_connection(conn)


__all__ = ["LAUNCHERS", "LibvirtVM", "QemuBackend", "QemuSlot", "QemuVM", "VM", "VMPaths", "VMSpec", "guest_args",
           "kvm_openable", "pss_kib", "qemu_argv"]
