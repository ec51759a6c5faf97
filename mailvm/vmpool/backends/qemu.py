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
  the background, then the old template is retired
  (:class:`~mailvm.vmpool.backends.qemu_generation.Generation`).
  A watchdog process kills this backend's QEMUs and removes its slot files if
  the pool process dies, and prepare() does the same for dead pools
  (:mod:`mailvm.vmpool.reaper`).

The backend is split along its seams; this module is the thin facade the
registry names (``qemu``): it validates the options once, probes, reports
:meth:`QemuBackend.info`, owns the launcher and the watchdog, and wires the
parts together:

* :mod:`~mailvm.vmpool.backends.qemu_vm` -- one QEMU process (command line,
  launchers, QMP, doorbell);
* :mod:`~mailvm.vmpool.backends.qemu_templates` -- the template store: find,
  make (boot the reference VM, save it), lock and remove templates in the work
  directory; the accelerator memo;
* :mod:`~mailvm.vmpool.backends.qemu_generation` -- which template is current,
  the image watcher thread and the switch to a new image;
* :mod:`~mailvm.vmpool.backends.qemu_slots` -- the clones (slots) and the spare
  QEMUs waiting for them.

Every name these modules used to export from here is still importable from here.
"""

from __future__ import annotations

import logging
import os
import re
import secrets
import shutil
import threading
import time
from typing import Any

from mailvm.config import MAX_GUEST_MEM_MIB, PoolConfig
from mailvm.procfs import pss_kib  # noqa: F401 (re-exported)
from mailvm.vmpool import reaper
from mailvm.vmpool.backends import libvirt_util as lv
from mailvm.vmpool.backends.base import Backend, BackendError, BackendInfo, BackendUnavailable
from mailvm.vmpool.backends.qemu_generation import (  # noqa: F401 (some re-exported)
    IMAGE_POLL_S,
    IMAGE_RETRY_S,
    RETIRE_GRACE_S,
    Generation,
    GenerationWatcher,
)
from mailvm.vmpool.backends.qemu_slots import (  # noqa: F401 (some re-exported)
    _SAFE,
    WARM_RING_GAP_S,
    WARM_RINGS,
    CloneMaker,
    QemuSlot,
    Spawned,
)
from mailvm.vmpool.backends.qemu_templates import (  # noqa: F401 (some re-exported)
    KVM_PROBE_S,
    SETTLE_S,
    WINE_READY_S,
    AccelMemo,
    Template,
    TemplateStore,
)
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
from mailvm.vmpool.backends.qmp import QMPError, send_fd  # noqa: F401 (re-exported: bench)
from mailvm.vmpool.image.layout import DEFAULT_CACHE_DIR, Image, ImageMissing, load_image

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
DOORBELLS = ("vport", "serial", "poll")
#: who starts QEMU: ourselves, or libvirt (transient domains)
LAUNCHERS = ("raw", "libvirt")
#: how a libvirt clone's restore and cont reach QEMU: its own QMP socket, or libvirt's passthrough
CONTROL_PATHS = ("qmp", "libvirt")
ISOLATION = {"kvm": "hardware VM (KVM)", "tcg": "VM (TCG emulation; no hardware virtualisation)"}
#: a guest image with Wine thrashes below this (every Wine run hung at 256 MiB under TCG; 512 and 1024 alike)
WINE_MIN_MEM_MIB = 512
#: the unprivileged user QEMU switches to (``-runas``) once its files are open (``pool.qemu_user``)
DEFAULT_QEMU_USER = "mailvm-qemu"
_USER_NAME = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")


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
        self.accel_reason = ""
        #: every QEMU of this backend has ``mailvm-<instance>-`` in its name (tests find leftovers by it)
        self.instance = secrets.token_hex(4)
        self._lock = threading.Lock()  # prepare() runs once
        self.run_as: str | None = None  # -runas user (resolved in prepare)
        self.user_warning = ""
        self._watchdog: reaper.Watchdog | None = None
        self._owner_written = False
        self._conn: Any = None  # libvirt connection (libvirt launcher)
        self._conn_lock = threading.Lock()
        self._closed = False
        self._template_discarded = False
        #: the templates of the work dir (made by booting the reference VM)
        self.templates = TemplateStore(cfg.work_dir, shm_dir, cfg.ready_timeout_s, self._start_vm,
                                       self.vm_name("ref"))
        #: the current template and the image watcher
        self.generations = GenerationWatcher(self.image_dir, self.image_poll_s, self._make_generation,
                                             self.templates.remove_old, self._switched)
        #: the slots and the spare QEMUs
        self.clones = CloneMaker(cfg.work_dir, shm_dir, self.instance, cfg.ready_timeout_s, self.spares,
                                 self.stub_kernel, self._start_vm, self.vm_name, self.generations)

    # -- what the parts hold, under the names the backend always had --------------------
    @property
    def template(self) -> Template | None:
        gen = self.generations.current
        return None if gen is None or self._template_discarded else gen.template

    @property
    def spec(self) -> VMSpec | None:
        gen = self.generations.current
        return gen.spec if gen is not None else None

    @property
    def image(self) -> Image | None:
        gen = self.generations.current
        return gen.image if gen is not None else None

    @property
    def qemu_version(self) -> str:
        return self.templates.qemu_version

    @property
    def image_pending(self) -> str | None:
        """Version of a new image whose template is being made."""
        return self.generations.pending

    @property
    def image_error(self) -> str:
        return self.generations.error

    @property
    def warm_rings(self) -> int:
        return self.clones.warm_rings

    @warm_rings.setter
    def warm_rings(self, n: int) -> None:
        self.clones.warm_rings = n

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

    def prepare(self) -> None:
        with self._lock:
            if self.generations.current is not None:
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
            self.templates.qemu_version = qemu_version(self.qemu)
            os.makedirs(self.cfg.work_dir, mode=0o700, exist_ok=True)
            self.run_as, self.user_warning = resolve_qemu_user(self.qemu_user)
            if self.user_warning:
                log.warning("qemu backend: %s", self.user_warning)
            self._guard_orphans()
            gen = self._make_generation(image)
            self.generations.set_first(gen)
            if gen.spec.accel == "tcg":
                log.warning(
                    "qemu backend: guests run under TCG EMULATION (no usable KVM: %s); isolation is still a VM, "
                    "but expect samples to run 10-50x slower than on a KVM host",
                    self.accel_reason or f"accel = {self.accel_wanted}")
            else:
                log.info("qemu backend: KVM accelerator in use")
            log.info("qemu backend: launcher %s, doorbell %s, QEMU as %s", self.launcher, self.doorbell,
                     self.run_as or "the pool's user")
            self.generations.start()

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

    def _make_generation(self, image: Image) -> Generation:
        """The template for ``image`` (reused or made; the accelerator chosen as configured), locked shared."""
        candidates = self._accel_candidates()
        found = self.templates.read_accel_memo(image)
        memo = None
        if found is not None:
            self.accel_reason, memo = found.reason, found.accel
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
                t, fd = self.templates.load_or_make(spec)
            except BackendError as exc:
                errors.append(f"{accel}: {exc}")
                log.warning("qemu backend: reference VM under %s failed: %s", accel.upper(), exc)
                continue
            if self.accel_wanted == "auto":
                self.templates.write_accel_memo(image, accel, self.accel_reason)
            if accel == "tcg" and errors:
                self.accel_reason = errors[0]
            return Generation(t, spec, image, fd)
        raise BackendError("qemu backend: no reference VM could boot: " + " | ".join(errors))

    # -- a new image while running ---------------------------------------------------
    def _switched(self, gen: Generation) -> None:
        self.clones.switched(gen)

    def check_image(self) -> bool:
        """Switch to the image ``<image_dir>/current`` points at, if it changed; True when switched
        (:meth:`~mailvm.vmpool.backends.qemu_generation.GenerationWatcher.check_image`)."""
        return self.generations.check_image()

    def discard_template(self) -> bool:
        """After close(): remove this backend's template (state, stub, RAM file on /dev/shm) unless
        another pool holds it.  True when removed.  For throw-away pools (tests, CI)."""
        t = self.template
        gen = self.generations.current
        if t is None or not self._closed or (gen is not None and gen.lock_fd >= 0):
            return False
        if not self.templates.delete(t.key[:16]):
            return False
        self._template_discarded = True
        return True

    # -- slots ---------------------------------------------------------------------
    def create_slot(self, slot_id: str) -> QemuSlot:
        self.prepare()
        return self.clones.create(slot_id)

    def close(self) -> None:
        """Stop the image watcher, kill a reference VM still booting and the spare QEMUs, release the
        template locks, stop the watchdog and the libvirt connection (destroying any domain of ours
        still running)."""
        self.clones.close_begin()
        self._closed = True
        self.generations.stop()
        self.templates.close()
        if self.generations.join(self.cfg.ready_timeout_s):  # a template build in flight fails once its
            self.templates.kill_reference()                  # reference VM is killed
        self.clones.close(self.cfg.ready_timeout_s)
        self.generations.release_all()
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


#: the names these classes had before the backend was split (tests, bench)
_Generation = Generation
_Spawned = Spawned

__all__ = ["LAUNCHERS", "CloneMaker", "Generation", "GenerationWatcher", "LibvirtVM", "QemuBackend", "QemuSlot",
           "QemuVM", "Template", "TemplateStore", "VM", "VMPaths", "VMSpec", "guest_args", "kvm_openable", "pss_kib",
           "qemu_argv"]
