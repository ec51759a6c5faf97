"""One QEMU process of the ``qemu`` backend: its command line and its control channels.

:class:`VMSpec` is everything that shapes the guest (and keys a template),
:class:`VMPaths` the host files of one VM; :func:`qemu_argv` turns both into
QEMU's command line (no network device, RAM from a file, the shared page as
an NVDIMM, the doorbell port, ``-sandbox``, ``-runas``).  :class:`QemuVM`
(raw launcher: our child) and :class:`LibvirtVM` (a transient libvirt
domain) start it and give the backend the same handle: pid, liveness, QMP
control, the doorbell ``ring()``, the migration restore, and ``kill()``.
Templates, slots and the pool of VMs are :mod:`mailvm.vmpool.backends.qemu`'s.
"""

from __future__ import annotations

import abc
import hashlib
import json
import logging
import os
import pwd
import select
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mailvm.vmpool.backends import libvirt_util as lv
from mailvm.vmpool.image.layout import Image
from mailvm.vmpool.backends.base import BackendError, BackendUnavailable
from mailvm.vmpool.backends.qmp import QMP, QMPError

log = logging.getLogger(__name__)

QEMU_BIN = "qemu-system-x86_64"
#: the NVDIMM region sits at the start of the hot-plug memory area: 4 GiB on ``pc`` with <= 3 GiB of RAM
PAGE_ADDR = 0x100000000
TB_SIZE_MIB = 32  # measured: 64 -> 32 MiB cuts a busy clone by ~37 MiB for ~7 % job time; 16 doubles it
QMP_TIMEOUT_S = 10.0
KILL_WAIT_S = 5.0
LOG_TAIL = 4000
PORT_NAME = "mailvm.bell"
GUEST_CMDLINE = "console=ttyS0 panic=-1 mitigations=off nowatchdog quiet loglevel=4"
#: added under TCG only (see VMSpec.cmdline)
TCG_SMAP_OFF = "clearcpuid=smap"


@dataclass(frozen=True)
class VMSpec:
    """Everything that shapes a guest's machine: identical for the template and its clones."""

    image: Image
    accel: str  # kvm | tcg
    mem_mib: int
    page_bytes: int
    doorbell: str  # vport | serial | poll:MIN:MAX
    launcher: str = "raw"  # raw | libvirt: a libvirt domain carries an extra (unused) RAM block
    tb_mib: int = TB_SIZE_MIB  # TCG translation cache: host-side only, not part of the template key
    warmup: str = "none"  # none | files | run: what the guest warms up before the template is saved
    runas: str | None = None  # QEMU's -runas user (host-only, not part of the key); None: stays as started

    def guest_doorbell(self) -> str:
        if self.doorbell == "vport":
            return f"vport:{PORT_NAME}"
        if self.doorbell == "serial":
            return "dev:/dev/ttyS1"
        return self.doorbell  # poll:MIN[:MAX]

    def cmdline(self) -> str:
        warm = f" mailvm.warmup={self.warmup}" if self.warmup != "none" else ""
        # QEMU 7.2's TCG pops a user-mode IRETQ frame with supervisor accesses: with SMAP on, the
        # guest kernel oopses on Wine's syscall returns and thread starts.  KVM keeps SMAP.
        smap = f" {TCG_SMAP_OFF}" if self.accel == "tcg" else ""
        return (f"{GUEST_CMDLINE}{smap} mailvm.page_addr={PAGE_ADDR:#x} mailvm.page_size={self.page_bytes} "
                f"mailvm.doorbell={self.guest_doorbell()}{warm}")

    def key(self, qemu_version: str) -> str:
        obj = {"image": self.image.key, "accel": self.accel, "mem": self.mem_mib, "page": self.page_bytes,
               "doorbell": self.doorbell, "qemu": qemu_version, "cmdline": self.cmdline(),
               "launcher": self.launcher, "layout": 2}
        return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()


@dataclass
class VMPaths:
    """Per-VM host files: RAM backing, page file, sockets, logs."""

    ram: str
    ram_shared: bool  # True for the reference VM, False (copy-on-write) for clones
    page: str
    qmp: str
    bell: str
    console: str
    private_ram: bool = False  # anonymous RAM (memory-backend-ram): the classic baseline only
    extra_args: tuple[str, ...] = ()
    kernel: str | None = None  # a clone's stub kernel (see make_stub_kernel); None: the image's


SANDBOX = "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny"
#: with ``-runas``: QEMU installs its filter while parsing its options, before it drops root, so
#: ``elevateprivileges=deny`` (or ``children``) kills it at its own setgid/setuid (measured: "Bad
#: system call").  After that drop (real, effective and saved uid, no capabilities, setuid(0)
#: checked to fail) there is nothing to elevate to, and ``spawn=deny`` forbids exec (no set-uid binaries).
SANDBOX_RUNAS = "on,obsolete=deny,elevateprivileges=allow,spawn=deny,resourcecontrol=deny"


def guest_args(spec: VMSpec, paths: VMPaths, incoming: bool, sandbox: bool = True) -> list[str]:
    """The machine and its devices (pure): what both launchers pass to QEMU verbatim."""
    img = spec.image
    argv = [
        "-no-reboot",
        "-machine", "pc,nvdimm=on,memory-backend=ram0",
        "-m", f"{spec.mem_mib}M,slots=1,maxmem={spec.mem_mib + (spec.page_bytes >> 20) + 256}M",
        "-object", (f"memory-backend-ram,id=ram0,size={spec.mem_mib}M" if paths.private_ram else
                    f"memory-backend-file,id=ram0,size={spec.mem_mib}M,mem-path={paths.ram},"
                    f"share={'on' if paths.ram_shared else 'off'}"),
        "-object", f"memory-backend-file,id=nv0m,size={spec.page_bytes},mem-path={paths.page},share=on",
        "-device", "nvdimm,memdev=nv0m,id=nv0",
        "-kernel", paths.kernel or img.kernel, "-initrd", img.initrd, "-append", spec.cmdline(),
        "-drive", f"file={img.rootfs},if=none,id=root,format=raw,readonly=on",
        "-device", "virtio-blk-pci,drive=root",
        "-chardev", f"file,id=con,path={paths.console}", "-serial", "chardev:con",
        "-qmp", f"unix:{paths.qmp},server=on,wait=off",
    ]
    if spec.doorbell == "vport":
        argv += ["-device", "virtio-serial-pci,id=vser0",
                 "-chardev", f"socket,id=bell,path={paths.bell},server=on,wait=off",
                 "-device", f"virtserialport,chardev=bell,name={PORT_NAME}"]
    elif spec.doorbell == "serial":
        argv += ["-chardev", f"socket,id=bell,path={paths.bell},server=on,wait=off", "-serial", "chardev:bell"]
    argv += list(paths.extra_args)
    if spec.runas:
        argv += ["-runas", spec.runas]
    if sandbox:
        argv += ["-sandbox", SANDBOX_RUNAS if spec.runas else SANDBOX]
    if incoming:
        argv += ["-incoming", "defer"]
    return argv


def accel_arg(spec: VMSpec) -> str:
    return "kvm" if spec.accel == "kvm" else f"tcg,tb-size={spec.tb_mib}"


def qemu_argv(spec: VMSpec, paths: VMPaths, incoming: bool, qemu: str = QEMU_BIN,
              sandbox: bool = True, name: str = "mailvm") -> list[str]:
    """The raw launcher's QEMU command line (pure; the same machine for template and clones)."""
    head = [qemu, "-name", name, "-nodefaults", "-no-user-config", "-display", "none",
            "-accel", accel_arg(spec), "-cpu", "host" if spec.accel == "kvm" else "max", "-smp", "1"]
    return head + guest_args(spec, paths, incoming, sandbox)


def make_stub_kernel(kernel: str, out: str) -> bool:
    """Write the real-mode setup part of bzImage ``kernel`` to ``out``; False when it is no bzImage.

    A clone never boots: its guest was restored from the template.  But QEMU
    reads ``-kernel`` whole into its own heap at start-up (14 MB for Debian's
    cloud kernel: private memory in every clone, and ~50 ms of start-up), and
    the machine must still be the template's (``-kernel`` adds the linuxboot
    option ROM, a RAM block of the migration stream).  The setup sectors alone
    are a valid bzImage header for QEMU, so the clone gets the same ROM and
    none of the kernel.  Should a clone ever reboot, ``-no-reboot`` ends it.
    """
    with open(kernel, "rb") as f:
        head = f.read(0x8000)
    if len(head) < 0x210 or head[0x202:0x206] != b"HdrS":
        return False
    setup = ((head[0x1F1] or 4) + 1) * 512
    if setup > len(head):
        return False
    tmp = f"{out}.{os.getpid()}.tmp"
    with open(tmp, "wb") as f:
        f.write(head[:setup])
    os.replace(tmp, out)
    return True


def qemu_version(qemu: str = QEMU_BIN) -> str:
    try:
        out = subprocess.run([qemu, "--version"], capture_output=True, timeout=10).stdout.decode()
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise BackendUnavailable(f"{qemu}: {exc}") from None
    return out.splitlines()[0].strip() if out else "unknown"


def kvm_openable() -> str | None:
    """None when /dev/kvm can be opened read-write, else why not."""
    try:
        fd = os.open("/dev/kvm", os.O_RDWR | os.O_CLOEXEC)
    except OSError as exc:
        return f"/dev/kvm: {exc.strerror}"
    os.close(fd)
    return None


def resolve_qemu_user(name: str) -> tuple[str | None, str]:
    """``(user for -runas, warning)`` for ``pool.qemu_user`` = ``name``.

    None means QEMU keeps the uid it is started with: root when the pool runs as
    root and the user does not exist or ``name`` is ``root``/empty (the warning
    says so); the pool's own uid when the pool is not root (no -runas possible).
    """
    if name in ("", "root"):
        return None, "QEMU runs as root (pool.qemu_user = root): a guest escape would own the host"
    if os.geteuid() != 0:
        return None, ""  # started by an unprivileged pool: QEMU has its uid already
    try:
        pw = pwd.getpwnam(name)
    except KeyError:
        return None, (f"QEMU runs as ROOT: user {name!r} does not exist (create it: useradd --system "
                      f"--no-create-home --shell /usr/sbin/nologin {name})")
    if pw.pw_uid == 0:
        return None, f"QEMU runs as root: user {name!r} has uid 0"
    return name, ""






def _tail(path: str, limit: int = LOG_TAIL) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - limit))
            return f.read().decode("utf-8", "replace")
    except OSError:
        return ""


def _connect_unix(path: str, deadline: float, alive: Any) -> socket.socket:
    while True:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            s.connect(path)
            s.setblocking(False)
            return s
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            s.close()
            if not alive():
                raise BackendError(f"QEMU exited before {os.path.basename(path)} accepted") from None
            if time.monotonic() >= deadline:
                raise BackendError(f"{path}: {exc}") from None
            time.sleep(0.002)


class VM(abc.ABC):
    """One QEMU (reference VM or clone): its own QMP socket, its doorbell, and a way to kill it.

    Subclasses differ in who starts and stops QEMU: :class:`QemuVM` (raw: a
    child process in its own session) and :class:`LibvirtVM` (a transient
    libvirt domain).  Control commands (restore, ``cont``) go over the VM's
    own QMP socket, or through libvirt's passthrough when ``control_via`` is
    ``"libvirt"``; the doorbell is always QEMU's own socket.
    """

    spec: VMSpec
    paths: VMPaths
    workdir: str
    name: str
    control_via: str = "qmp"

    def _init_channels(self) -> None:
        self.qmp: QMP | None = None
        self.bell: socket.socket | None = None

    @property
    @abc.abstractmethod
    def pid(self) -> int:
        """QEMU's process id (for /proc figures)."""

    @abc.abstractmethod
    def alive(self) -> bool:
        """False once QEMU has exited."""

    @abc.abstractmethod
    def kill(self) -> None:
        """Stop QEMU now (SIGKILL) and release what the launcher holds; idempotent, never raises."""

    @abc.abstractmethod
    def log_tail(self) -> str:
        """QEMU's stderr and the guest console, for error messages."""

    def connect(self, deadline: float) -> None:
        self.qmp = QMP.connect(self.paths.qmp, deadline, QMP_TIMEOUT_S, alive=self.alive)
        if self.spec.doorbell in ("vport", "serial"):
            self.bell = _connect_unix(self.paths.bell, deadline, self.alive)

    def control(self, cmd: str, args: dict[str, Any] | None = None, fds: list[int] | None = None) -> Any:
        """One QMP command over the VM's own socket (QMPError on failure)."""
        if self.qmp is None:
            raise QMPError(f"QMP {cmd}: not connected")
        return self.qmp.execute(cmd, args, fds=fds)

    def ring(self) -> None:
        s = self.bell
        if s is None:
            return
        try:
            s.send(b"\x01")
        except BlockingIOError:
            pass  # rings already queued: the agent will look at the page anyway
        except OSError as exc:
            log.debug("ring failed: %s", exc)

    def wait_migration(self, deadline: float) -> dict[str, Any]:
        delay = 0.0005
        while True:
            st = self.control("query-migrate")
            status = st.get("status") if isinstance(st, dict) else None
            if status == "completed":
                return st
            if status in ("failed", "cancelled"):
                raise BackendError(f"migration {status}: {st.get('error-desc', '')}")
            if not self.alive():
                raise BackendError("QEMU exited during migration")
            if time.monotonic() >= deadline:
                raise BackendError(f"migration still {status} at the deadline")
            time.sleep(delay)
            delay = min(delay * 2, 0.01)

    def restore(self, state_path: str, deadline: float) -> None:
        """Restore the template's device state (x-ignore-shared: RAM is the mapped file); VM stays paused."""
        self.control("migrate-set-capabilities",
                     {"capabilities": [{"capability": "x-ignore-shared", "state": True}]})
        sfd = os.open(state_path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            self.control("getfd", {"fdname": "state"}, fds=[sfd])
        finally:
            os.close(sfd)
        self.control("migrate-incoming", {"uri": "fd:state"})
        self.wait_migration(deadline)

    def _close_channels(self) -> None:
        for obj in (self.qmp, self.bell):
            try:
                if obj is not None:
                    obj.close()
            except OSError:
                pass
        self.qmp = self.bell = None


class QemuVM(VM):
    """The raw launcher: QEMU as our child, in its own session (killpg on kill)."""

    def __init__(self, spec: VMSpec, paths: VMPaths, workdir: str, incoming: bool, qemu: str,
                 pass_fds: tuple[int, ...] = (), name: str = "mailvm") -> None:
        self.spec = spec
        self.paths = paths
        self.workdir = workdir
        self.name = name
        self.log_path = os.path.join(workdir, "qemu.log")
        self._init_channels()
        argv = qemu_argv(spec, paths, incoming, qemu, name=name)
        with open(self.log_path, "ab") as logf:
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT,
                                         pass_fds=pass_fds, start_new_session=True, cwd=workdir)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        self._close_channels()
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            self.proc.wait(timeout=KILL_WAIT_S)
        except subprocess.TimeoutExpired:
            log.error("QEMU pid %d survived SIGKILL for %.0f s", self.proc.pid, KILL_WAIT_S)

    def log_tail(self) -> str:
        return f"qemu: {_tail(self.log_path, 1500)!r}; console: {_tail(self.paths.console, 2500)!r}"


class LibvirtVM(VM):
    """The libvirt launcher: a transient domain (AUTODESTROY) running the same QEMU arguments.

    ``alive()`` watches QEMU through a pidfd (QEMU is libvirtd's child, not
    ours); ``kill()`` SIGKILLs it through that pidfd, then lets libvirt
    destroy and forget the domain, and removes libvirt's log of it.
    """

    def __init__(self, spec: VMSpec, paths: VMPaths, workdir: str, incoming: bool, qemu: str, conn: Any,
                 name: str, control_via: str = "qmp") -> None:
        self.spec = spec
        self.paths = paths
        self.workdir = workdir
        self.name = name
        self.control_via = control_via
        self.log_path = lv.log_path(name)
        self._init_channels()
        self._pid = 0
        self._pidfd = -1
        dspec = lv.DomainSpec(name=name, kind="kvm" if spec.accel == "kvm" else "qemu",
                              emulator=shutil.which(qemu) or qemu, qemu_args=tuple(guest_args(spec, paths, incoming)),
                              tb_cache_mib=spec.tb_mib if spec.accel != "kvm" else None)
        try:
            self.dom = lv.create(conn, lv.domain_xml(dspec), paused=incoming)
        except lv.MonitorError as exc:
            raise BackendError(f"{exc}; {_tail(self.log_path, 1500)!r}") from None
        pid = lv.qemu_pid(name)
        try:
            if pid is None:
                raise OSError(f"no pid file for domain {name}")
            self._pidfd = os.pidfd_open(pid)
            if name.encode() not in Path(f"/proc/{pid}/cmdline").read_bytes():
                raise OSError(f"pid {pid} is not domain {name}'s QEMU")
        except OSError as exc:
            lv.destroy(self.dom)
            if self._pidfd >= 0:
                os.close(self._pidfd)
                self._pidfd = -1
            raise BackendError(f"libvirt domain {name}: {exc}") from None
        self._pid = pid

    @property
    def pid(self) -> int:
        return self._pid

    def alive(self) -> bool:
        fd = self._pidfd
        if fd < 0:
            return False
        try:
            return not select.select([fd], [], [], 0)[0]
        except (OSError, ValueError):
            return False

    def control(self, cmd: str, args: dict[str, Any] | None = None, fds: list[int] | None = None) -> Any:
        if self.control_via != "libvirt":
            return super().control(cmd, args, fds)
        try:
            return lv.monitor(self.dom, cmd, args, fds)
        except lv.MonitorError as exc:
            raise QMPError(str(exc)) from None

    def kill(self) -> None:
        self._close_channels()
        fd, self._pidfd = self._pidfd, -1
        if fd >= 0:
            try:
                signal.pidfd_send_signal(fd, signal.SIGKILL)
            except ProcessLookupError:
                pass
            except OSError as exc:
                log.warning("domain %s: SIGKILL failed: %s", self.name, exc)
            try:
                if not select.select([fd], [], [], KILL_WAIT_S)[0]:
                    log.error("QEMU pid %d of domain %s survived SIGKILL for %.0f s", self._pid, self.name,
                              KILL_WAIT_S)
            finally:
                os.close(fd)
            lv.destroy(self.dom)
            try:
                os.unlink(self.log_path)
            except OSError:
                pass

    def log_tail(self) -> str:
        return f"qemu (libvirt log): {_tail(self.log_path, 1500)!r}; console: {_tail(self.paths.console, 2500)!r}"
