"""Run one sample in a throw-away sandbox: own network, own user, own pid namespace.

Standard library only (runs inside the guest, as root; the ``process`` backend
runs it on the host).

Layers, from the outside in::

    unshare --net sleep infinity    holds a fresh network namespace (dies with the agent: pdeathsig)
    setpriv --pdeathsig KILL        strace dies with the agent thread that started it
    nsenter --net=/proc/H/ns/net    into that namespace: loopback + the simulated internet only
    strace -f --seccomp-bpf ...     monitor, started OUTSIDE bubblewrap (sees every descendant)
    prlimit --nproc --nofile ...    resource limits (RLIMIT_NPROC counts the sandbox's own uid only)
    unshare --mount sh -c STAGE     as root: join the per-detonation pids/memory cgroups where
                                    available; bind the box directories onto STAGE_DIR (reachable by
                                    any uid) in a private mount namespace, so the work directory itself
                                    may stay 0700
    setpriv --reuid=U               a uid used by nothing else on the machine (U is per detonation)
    bwrap --unshare-user,pid,ipc,uts --as-pid-1 ...
                                    read-only /usr /etc /sys, tmpfs /tmp, a fresh writable HOME with
                                    decoy documents, the sample's directory writable, /proc, /dev;
                                    the host's configuration that is none of the sample's business
                                    (mail, filter, services, keys: HIDDEN_DIRS, HIDDEN_FILES), its
                                    machine id, /opt and the hardware identity in /sys are masked
    python3 -I -S -c INIT marker    pid 1 of the sandbox: reaps orphans so daemonised children live
                                    on until the detonation ends; its exec marks where the sample
                                    begins in the trace
    <launcher argv>                 the sample

Where the kernel lacks a feature the sandbox degrades instead of failing: without
a usable iptables NAT table (a guest kernel without netfilter modules) fakenet
listens on common ports only; without cgroup controllers only the rlimits bound
the sample.  ``Sandbox.degraded`` says what was given up (the detonation puts it
in its ``sandbox`` log event).

At the end every process of uid U is killed (the init first, which tears the
pid namespace down; then the cgroup; then a sweep of ``/proc`` until nothing of
uid U is left), then fakenet and the namespace holder; the cgroups and the
detonation's directory are removed.  Nothing is named globally except the
cgroups, and those left by a killed agent are removed once empty and old.
"""

from __future__ import annotations

import errno
import logging
import os
import random
import secrets
import shutil
import signal
import subprocess
import threading
import time
from dataclasses import dataclass
from typing import Callable, Iterable

from mailvm.guest import fakenet
from mailvm.guest.launcher import HOME_IN, HOSTNAME, WORK_IN, find_tool
from mailvm.guest.monitor import STRACE_SYSCALLS

log = logging.getLogger(__name__)

REQUIRED_TOOLS = ("bwrap", "strace", "ip", "nsenter", "unshare", "setpriv", "prlimit", "mount", "sleep", "sh",
                  "python3")
OPTIONAL_TOOLS = ("iptables-restore",)
INIT_MARKER = "mailvm-sandbox-init"
UID_IN = 1000
NAME_PREFIX = "mailvm-"
MAX_OUTPUT = 16 * 1024
STAGE_DIR = "/run/mailvm-sandbox"  # empty mount points; each detonation binds its box here privately
STALE_CGROUP_S = 60  # an empty cgroup this old belongs to no live detonation (samples join within ms)
MAX_STDERR_LINE = 64 * 1024

#: pid 1 inside the sandbox: ignore the signals a sample could send it, run the launcher argv
#: in a child, reap every orphan, exit when no process is left (with the first command's status).
#: An argv "--mailvm-seq SLICE cmd1... --mailvm-then cmd2..." (launcher.SEQ_START / SEQ_THEN) runs
#: the commands one after the other: the next starts when the previous has exited or after SLICE
#: seconds (the previous one is not stopped); at most 16 commands.
INIT_CODE = r"""
import os, signal, sys, time
argv = sys.argv[2:]
slice_s = 0.0
if argv[:1] == ["--mailvm-seq"] and len(argv) > 2:
    try:
        slice_s = min(max(float(argv[1]), 0.0), 600.0)
    except ValueError:
        pass
    argv = argv[2:]
cmds = [[]]
for a in argv:
    if a == "--mailvm-then" and slice_s:
        cmds.append([])
    else:
        cmds[-1].append(a)
cmds = [c for c in cmds if c][:16]
sigs = [signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2,
        signal.SIGPIPE, signal.SIGTSTP, signal.SIGTTIN, signal.SIGTTOU]
for s in sigs:
    signal.signal(s, signal.SIG_IGN)
os.closerange(3, 65536)
def spawn(cmd):
    pid = os.fork()
    if pid == 0:
        for s in sigs:
            signal.signal(s, signal.SIG_DFL)
        try:
            os.execv(cmd[0], cmd)
        except OSError as e:
            sys.stderr.write("mailvm-init: exec %s: %s\n" % (cmd[0], e))
        os._exit(127)
    return pid
first = current = spawn(cmds.pop(0))
since = time.monotonic()
code = 0
done = False
while True:
    if cmds and (done or time.monotonic() - since >= slice_s):
        current, since, done = spawn(cmds.pop(0)), time.monotonic(), False
    try:
        p, st = os.waitpid(-1, os.WNOHANG if cmds else 0)
    except ChildProcessError:
        if cmds:
            done = True
            continue
        break
    except InterruptedError:
        continue
    if p == 0:
        time.sleep(0.05)
        continue
    if p == current:
        done = True
    if p == first:
        code = os.waitstatus_to_exitcode(st)
os._exit(code & 255 if code >= 0 else 128 - code)
"""

#: run as root in a private mount namespace: join the cgroups ($1 = how many, then their cgroup.procs files),
#: bind HOME and the work directory onto STAGE_DIR, then exec the rest (setpriv ... bwrap ...)
_STAGE = (
    'n=$1; shift; while [ "$n" -gt 0 ]; do echo $$ > "$1" 2>/dev/null; shift; n=$((n-1)); done; '
    'mount -n --bind "$1" "$3" && mount -n --bind "$2" "$4" || exit 125; shift 4; exec "$@"'
)


#: host paths a sample has no business reading, masked by an empty tmpfs (directories) or an empty
#: file (files) on top of the read-only /etc and /sys: this machine's mail, filter, cache and
#: hypervisor configuration, its keys and credentials, and the hardware identity that anti-VM
#: checks read (the reads still show in the trace, and fail). Programs the launchers run need none
#: of them. /opt is not shown at all, except the tool folders of :data:`OPT_TOOL_DIRS`.
HIDDEN_DIRS = ("/etc/mailvm", "/etc/postfix", "/etc/mail", "/etc/redis", "/etc/libvirt", "/etc/ssh",
               "/etc/ssl/private", "/etc/sasl2", "/etc/dovecot", "/etc/opendkim", "/etc/letsencrypt",
               "/etc/sudoers.d", "/etc/cron.d", "/etc/systemd", "/etc/apache2", "/etc/nginx",
               "/etc/lighttpd", "/etc/mysql", "/etc/postgresql", "/etc/openvpn", "/etc/wireguard", "/etc/ipsec.d",
               "/etc/docker", "/etc/kubernetes", "/etc/ldap", "/etc/netplan", "/etc/krb5kdc", "/etc/grafana",
               "/etc/prometheus",
               "/sys/firmware", "/sys/devices/virtual/dmi", "/sys/class/dmi", "/sys/hypervisor", "/sys/kernel/debug",
               "/sys/kernel/security", "/sys/module")
HIDDEN_FILES = ("/etc/shadow", "/etc/gshadow", "/etc/shadow-", "/etc/gshadow-", "/etc/sudoers", "/etc/aliases",
                "/etc/aliases.db", "/etc/mailname", "/etc/krb5.keytab", "/etc/fstab", "/etc/crypttab",
                "/etc/crontab", "/etc/network/interfaces", "/etc/wpa_supplicant.conf")
#: folders under /opt whose programs a launcher may run (WineHQ's packages install there)
OPT_TOOL_DIRS = ("/opt/wine-stable", "/opt/wine-staging", "/opt/wine-devel")
#: a machine id of the sandbox's own (the host's would identify it: D-Bus and systemd read it)
SANDBOX_MACHINE_ID = b"5d1f0e2a9c3b4e7f8a6b2c1d0e9f8a7b\n"


class SandboxError(Exception):
    """The sandbox could not be set up (missing tool, not root, namespace failure)."""


@dataclass(frozen=True)
class Limits:
    """Caps on the sample (per detonation)."""

    nproc: int = 512  # RLIMIT_NPROC and pids.max: processes + threads of the sandbox uid
    nofile: int = 1024
    file_size: int = 64 << 20
    address_space: int = 8 << 30  # launchers that need more (Wine, browsers) are exempt
    memory: int = 2 << 30  # memory cgroup, where available
    tmp_size: int = 256 << 20
    cpu_s: int = 600


def sandbox_tools() -> tuple[dict[str, str], list[str]]:
    """Paths of the programs the sandbox needs, and the names of the missing ones."""
    found: dict[str, str] = {}
    missing: list[str] = []
    for name in REQUIRED_TOOLS + OPTIONAL_TOOLS:
        path = shutil.which(name, path="/usr/bin:/bin:/usr/sbin:/sbin") if name == "python3" else find_tool(name)
        if path:
            found[name] = path
        elif name in REQUIRED_TOOLS:
            missing.append(name)
    return found, missing


def own_pidns() -> str:
    """The inode number of this process's pid namespace (``"0"`` if unknown)."""
    try:
        link = os.readlink("/proc/self/ns/pid")
        return link[link.index("[") + 1 : link.index("]")]
    except (OSError, ValueError):
        return "0"


def processes_of_uid(uid: int) -> list[int]:
    """Pids whose real uid is ``uid`` (a /proc scan)."""
    out = []
    want = str(uid)
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/status", "rb") as fh:
                for line in fh:
                    if line.startswith(b"Uid:"):
                        if line.split()[1].decode() == want:
                            out.append(int(entry))
                        break
        except OSError:
            continue
    return out


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            return fh.read(4096).replace(b"\0", b" ").decode("utf-8", "replace")
    except OSError:
        return ""


#: sandbox uids: far above any real account, and inside the kernel's 32-bit uid space
UID_BASE = 2_000_000
UID_SPAN = 1 << 30
_uid_lock = threading.Lock()


def allocate_uid() -> int:
    """A uid nothing else uses: random in a 2^30 range, checked against /proc.

    Random, not derived from the pid: every process-backend agent runs in its own
    PID namespace where its pid is 1 and /proc shows only its own processes, so
    pid-derived uids collided across concurrent slots (one RLIMIT_NPROC budget
    for all of them).  Two draws colliding among a few hundred slots is ~1e-7.
    """
    with _uid_lock:
        for _ in range(64):
            uid = UID_BASE + secrets.randbelow(UID_SPAN)
            if not processes_of_uid(uid):
                return uid
    raise SandboxError("no free sandbox uid")


# ------------------------------------------------------------------ namespace and cgroups


class Netns:
    """A network namespace held by a small process (``unshare --net sleep infinity``).

    The namespace has no name: it lives as long as its holder (and whatever runs
    inside it).  The holder carries ``PDEATHSIG=KILL``, so a killed agent leaves
    nothing behind.
    """

    def __init__(self, tools: dict[str, str]) -> None:
        self.tools = tools
        self.holder: subprocess.Popen | None = None

    @property
    def path(self) -> str:
        assert self.holder is not None
        return f"/proc/{self.holder.pid}/ns/net"

    def create(self, timeout_s: float = 5.0) -> None:
        t = self.tools
        own = os.readlink("/proc/self/ns/net")
        self.holder = subprocess.Popen([t["setpriv"], "--pdeathsig", "KILL", "--", t["unshare"], "--net", "--",
                                        t["sleep"], "infinity"], stdin=subprocess.DEVNULL,
                                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.holder.poll() is not None:
                err = self.holder.stderr.read(500) if self.holder.stderr else b""
                raise SandboxError(f"unshare --net failed: {err.decode('utf-8', 'replace').strip()}")
            try:
                if os.readlink(self.path) != own and _cmdline(self.holder.pid).startswith(t["sleep"]):
                    return
            except OSError:
                pass
            time.sleep(0.002)
        raise SandboxError("the network namespace holder did not start")

    def delete(self) -> None:
        h = self.holder
        if h is None:
            return
        self.holder = None
        if h.poll() is None:
            try:
                os.killpg(h.pid, signal.SIGKILL)
            except OSError:
                pass
        try:
            h.wait(timeout=5)
        except subprocess.TimeoutExpired:
            log.error("network namespace holder %d did not die", h.pid)
        if h.stderr is not None:
            h.stderr.close()


class Cgroups:
    """Per-detonation cgroups for ``pids`` (and ``memory``), v2 or v1, where writable."""

    ROOT = "/sys/fs/cgroup"

    def __init__(self, name: str, limits: Limits) -> None:
        self.name = name
        self.limits = limits
        self.dirs: list[str] = []
        self.controllers: list[str] = []
        self.v2 = False

    @staticmethod
    def _own(controller: str) -> str:
        try:
            with open("/proc/self/cgroup") as fh:
                for line in fh:
                    _, ctrls, path = line.rstrip("\n").split(":", 2)
                    if controller in ctrls.split(","):
                        return path
        except (OSError, ValueError):
            pass
        return "/"

    def create(self) -> list[str]:
        """Create the groups and set limits; the ``cgroup.procs`` files to join (may be empty)."""
        if os.path.isfile(os.path.join(self.ROOT, "cgroup.controllers")):
            self._create_v2()
        else:
            for ctrl, settings in (("pids", {"pids.max": str(self.limits.nproc)}),
                                   ("memory", {"memory.limit_in_bytes": str(self.limits.memory)})):
                base = os.path.join(self.ROOT, ctrl)
                if not os.path.isdir(base):
                    continue
                parent = os.path.join(base, self._own(ctrl).lstrip("/"))
                if self._make(os.path.join(parent, self.name), settings):
                    self.controllers.append(ctrl)
        return [os.path.join(d, "cgroup.procs") for d in self.dirs]

    def _create_v2(self) -> None:
        root = self.ROOT
        try:
            with open(os.path.join(root, "cgroup.subtree_control")) as fh:
                enabled = fh.read().split()
            want = [c for c in ("pids", "memory") if c not in enabled]
            if want:
                with open(os.path.join(root, "cgroup.subtree_control"), "w") as fh:
                    fh.write(" ".join("+" + c for c in want))
        except OSError as exc:
            log.info("cgroup v2 controllers not enabled: %s", exc)
        self.v2 = True
        if self._make(os.path.join(root, self.name), {"pids.max": str(self.limits.nproc),
                                                      "memory.max": str(self.limits.memory)}):
            self.controllers.append("v2")

    def missing(self) -> list[str]:
        """The limits (``pids``, ``memory``) that no cgroup of this detonation enforces (after :meth:`create`)."""
        have: set[str] = set()
        if self.v2:
            for d in self.dirs:
                try:
                    with open(os.path.join(d, "cgroup.controllers")) as fh:
                        have.update(fh.read().split())
                except OSError:
                    continue
        else:
            have.update(self.controllers)
        return [c for c in ("pids", "memory") if c not in have]

    def _make(self, path: str, settings: dict[str, str]) -> bool:
        try:
            os.mkdir(path)
        except OSError as exc:
            log.info("no cgroup %s: %s", path, exc)
            return False
        self.dirs.append(path)
        for key, value in settings.items():
            try:
                with open(os.path.join(path, key), "w") as fh:
                    fh.write(value)
            except OSError as exc:
                log.info("cgroup %s: cannot set %s: %s", path, key, exc)
        return True

    def sweep_stale(self) -> None:
        """Remove empty ``mailvm-*`` cgroups older than :data:`STALE_CGROUP_S` (left by killed agents)."""
        parents = set()
        if os.path.isfile(os.path.join(self.ROOT, "cgroup.controllers")):
            parents.add(self.ROOT)
        else:
            for ctrl in ("pids", "memory"):
                parents.add(os.path.join(self.ROOT, ctrl, self._own(ctrl).lstrip("/")))
        now = time.time()
        for parent in parents:
            try:
                names = [n for n in os.listdir(parent) if n.startswith(NAME_PREFIX)]
            except OSError:
                continue
            for name in names:
                path = os.path.join(parent, name)
                try:
                    if now - os.stat(path).st_mtime > STALE_CGROUP_S and not self.pids(path):
                        os.rmdir(path)
                        log.info("removed stale cgroup %s", path)
                except OSError:
                    continue

    def oom_kills(self) -> int:
        """How many processes the kernel killed for passing this detonation's memory limit
        (``oom_kill`` of v2's ``memory.events``, of v1's ``memory.oom_control``); 0 when unknown."""
        total = 0
        for d in self.dirs:
            for name in ("memory.events", "memory.oom_control"):
                try:
                    with open(os.path.join(d, name)) as fh:
                        for line in fh:
                            key, _, value = line.partition(" ")
                            if key == "oom_kill" and value.strip().isdigit():
                                total += int(value)
                except OSError:
                    continue
        return total

    def kill(self) -> None:
        for d in self.dirs:
            kill_file = os.path.join(d, "cgroup.kill")
            if os.path.exists(kill_file):
                try:
                    with open(kill_file, "w") as fh:
                        fh.write("1")
                    continue
                except OSError:
                    pass
            for _ in range(50):
                pids = self.pids(d)
                if not pids:
                    break
                for pid in pids:
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except OSError:
                        pass
                time.sleep(0.01)

    @staticmethod
    def pids(d: str) -> list[int]:
        try:
            with open(os.path.join(d, "cgroup.procs")) as fh:
                return [int(x) for x in fh.read().split()]
        except (OSError, ValueError):
            return []

    def remove(self) -> None:
        for d in list(self.dirs):
            for _ in range(100):
                try:
                    os.rmdir(d)
                    self.dirs.remove(d)
                    break
                except OSError as exc:
                    if exc.errno == errno.ENOENT:
                        self.dirs.remove(d)
                        break
                    time.sleep(0.02)
            else:
                log.error("could not remove cgroup %s", d)


# ------------------------------------------------------------------ HOME with decoys


def _filler(seed: str, n: int) -> bytes:
    rnd = random.Random(seed)
    return bytes(rnd.getrandbits(8) for _ in range(n))


DECOY_FILES: tuple[tuple[str, bytes], ...] = (
    ("Documents/Q3-financial-report.docx", b"PK\x03\x04\x14\x00\x06\x00" + b"word/document.xml" + b"\0" * 8),
    ("Documents/budget-2024.xlsx", b"PK\x03\x04\x14\x00\x06\x00" + b"xl/workbook.xml" + b"\0" * 8),
    ("Documents/contract-signed.pdf", b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<< /Type /Catalog >>\nendobj\n"),
    ("Documents/meeting-notes.txt", b"Meeting notes\n- renew the supplier contract\n- Q3 numbers due Friday\n"),
    ("Documents/customers.csv", b"name,email,phone\nAlice,alice@example.com,555-0100\n"),
    ("Desktop/passwords.txt", b"bank: hunter2\nmail: correct-horse-battery-staple\n"),
    ("Pictures/family-2023.jpg", b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01\x01"),
    ("Pictures/holiday.png", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR"),
)
DOTFILES: tuple[tuple[str, bytes, int], ...] = (
    (".bashrc", b"# ~/.bashrc\n[ -z \"$PS1\" ] && return\nHISTSIZE=1000\nalias ll='ls -l'\n", 0o644),
    (".profile", b"# ~/.profile\nif [ -n \"$BASH_VERSION\" ] && [ -f \"$HOME/.bashrc\" ]; then\n"
                 b"    . \"$HOME/.bashrc\"\nfi\n", 0o644),
    (".bash_history", b"ls\ncd Documents\nssh admin@fileserver\n", 0o600),
    (".ssh/known_hosts", b"fileserver ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIMailvmDecoyHostKey0000000000000000000\n",
     0o644),
    (".ssh/id_rsa", b"-----BEGIN OPENSSH PRIVATE KEY-----\nbWFpbHZtIGRlY295IGtleSAtIG5vdCBhIHJlYWwga2V5\n"
                    b"-----END OPENSSH PRIVATE KEY-----\n", 0o600),
    (".aws/credentials", b"[default]\naws_access_key_id = AKIAMAILVMDECOY00000\n"
                         b"aws_secret_access_key = mailvmDecoyNotARealSecret0000000000000000\n", 0o600),
    (".mozilla/firefox/profiles.ini", b"[Profile0]\nName=default-release\nIsRelative=1\n"
                                      b"Path=k3x9w2.default-release\nDefault=1\n", 0o644),
    (".mozilla/firefox/k3x9w2.default-release/logins.json", b'{"nextId":2,"logins":[]}', 0o600),
)
DIRS = (".ssh", ".config", ".config/autostart", ".local/share", ".local/bin", ".cache", "Downloads", "Music",
        "Videos", "Desktop", "Documents", "Pictures")


def populate_home(home: str, uid: int, gid: int) -> list[str]:
    """Create the user's HOME with decoys; returns the decoy documents' inside paths."""
    decoys = []
    for d in DIRS:
        os.makedirs(os.path.join(home, d), exist_ok=True)
    for rel, head in DECOY_FILES:
        with open(os.path.join(home, rel), "wb") as fh:
            fh.write(head + _filler(rel, 4096))
        decoys.append(HOME_IN + "/" + rel)
    for rel, content, mode in DOTFILES:
        path = os.path.join(home, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as fh:
            fh.write(content)
        os.chmod(path, mode)
    os.chmod(os.path.join(home, ".ssh"), 0o700)
    for root, dirs, files in os.walk(home):
        for n in dirs + files:
            os.lchown(os.path.join(root, n), uid, gid)
    os.chown(home, uid, gid)
    os.chmod(home, 0o750)
    return decoys


# ------------------------------------------------------------------ the sandbox


class _Reader(threading.Thread):
    """Drain one pipe: keep the first bytes, hand complete lines to a callback."""

    def __init__(self, pipe, keep: int, on_line: Callable[[str], None] | None) -> None:
        super().__init__(daemon=True, name="sandbox-output")
        self.pipe = pipe
        self.keep = keep
        self.on_line = on_line
        self.head = b""
        self.total = 0

    def run(self) -> None:
        partial = b""
        try:
            while True:
                chunk = self.pipe.read1(65536) if hasattr(self.pipe, "read1") else self.pipe.read(65536)
                if not chunk:
                    break
                self.total += len(chunk)
                if len(self.head) < self.keep:
                    self.head += chunk[: self.keep - len(self.head)]
                if self.on_line is None:
                    continue
                partial += chunk
                lines = partial.split(b"\n")
                partial = lines.pop()
                if len(partial) > MAX_STDERR_LINE:
                    partial = b""
                for line in lines:
                    try:
                        self.on_line(line[:MAX_STDERR_LINE].decode("utf-8", "replace"))
                    except Exception as exc:  # a parser bug must not stop the draining
                        log.warning("output line handler failed: %r", exc)
        except (OSError, ValueError):
            pass


class Sandbox:
    """One detonation's sandbox: ``with Sandbox(workdir) as box: box.stage(...); box.start(...)``."""

    def __init__(self, workdir: str, limits: Limits = Limits(), keep_files: bool = False,
                 ro_binds: tuple[str, ...] = ()) -> None:
        self.limits = limits
        #: extra host directories visible read-only at the same path (a Wine prefix template: the
        #: per-detonation prefix links to its files, by symlink when it is on another file system)
        self.ro_binds = tuple(ro_binds)
        self.keep_files = keep_files
        tag = f"{own_pidns()}-{os.getpid()}-{random.getrandbits(32):08x}"
        self.name = NAME_PREFIX + tag
        self.dir = os.path.join(os.path.abspath(workdir), "det-" + tag)
        self.box = os.path.join(self.dir, "box")
        self.home = os.path.join(self.box, "home")
        self.work = os.path.join(self.box, "work")
        self.mon = os.path.join(self.dir, "mon")
        self.strace_log = os.path.join(self.mon, "strace.log")
        self.fakenet_log = os.path.join(self.mon, "fakenet.jsonl")
        self.tools: dict[str, str] = {}
        self.uid = -1
        self.netns: Netns | None = None
        self.cgroups: Cgroups | None = None
        self.fakenet: fakenet.FakeNet | None = None
        self.redirect = False
        self.net_detail = ""
        #: what this sandbox could not set up and worked around (e.g. in a minimal guest kernel)
        self.degraded: list[str] = []
        self.decoys: list[str] = []
        self.proc: subprocess.Popen | None = None
        self.readers: list[_Reader] = []
        self.marker = INIT_MARKER
        self._fds: list[int] = []
        self._closed = False

    # -- set-up
    def __enter__(self) -> "Sandbox":
        try:
            self.open()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def open(self) -> None:
        if os.geteuid() != 0:
            raise SandboxError("the sandbox needs root (namespaces, cgroups, a dedicated uid)")
        self.tools, missing = sandbox_tools()
        if missing:
            raise SandboxError("missing programs: " + ", ".join(missing))
        self.uid = allocate_uid()
        os.makedirs(self.mon, mode=0o700)
        os.chmod(self.dir, 0o700)
        os.makedirs(self.box, mode=0o700)
        for d in (self.home, self.work):
            os.makedirs(d)
            os.chown(d, self.uid, self.uid)
        for d in (STAGE_DIR, STAGE_DIR + "/home", STAGE_DIR + "/work"):
            os.makedirs(d, mode=0o755, exist_ok=True)
        self.decoys = populate_home(self.home, self.uid, self.uid)
        self.netns = Netns(self.tools)
        self.netns.create()
        enter = [self.tools["nsenter"], f"--net={self.netns.path}", "--"]
        try:
            self.redirect, self.net_detail = fakenet.setup_namespace(enter, self.tools)
        except OSError as exc:
            raise SandboxError(f"network namespace set-up failed: {exc}") from exc
        if not self.redirect:
            self.degraded.append(f"network: {self.net_detail}; fakenet listens on {len(fakenet.FALLBACK_PORTS)} "
                                 "common TCP ports only, connections to other ports are refused (strace still logs them)")
        self.fakenet = fakenet.FakeNet(enter, self.fakenet_log, self.redirect)
        try:
            self.fakenet.start()
        except OSError as exc:
            raise SandboxError(str(exc)) from exc
        self.cgroups = Cgroups(self.name, self.limits)
        self.cgroups.sweep_stale()

    def stage(self, sample_path: str, name: str, executable: bool) -> str:
        """Copy the sample into the sandbox's working directory; its path inside."""
        dest = os.path.join(self.work, name)
        shutil.copyfile(sample_path, dest)
        os.chown(dest, self.uid, self.uid)
        os.chmod(dest, 0o755 if executable else 0o644)
        return WORK_IN + "/" + name

    def base_env(self) -> dict[str, str]:
        return {"PATH": "/usr/local/bin:/usr/bin:/bin:/usr/local/sbin:/usr/sbin:/sbin", "HOME": HOME_IN,
                "USER": "user", "LOGNAME": "user", "SHELL": "/bin/bash", "LANG": "C.UTF-8", "TERM": "xterm",
                "TMPDIR": "/tmp", "PWD": WORK_IN, "HOSTNAME": HOSTNAME}

    def _data_fd(self, content: bytes) -> int:
        r, w = os.pipe()
        if len(content) > 60000:
            raise SandboxError("bind data too large for a pipe")
        os.write(w, content)
        os.close(w)
        self._fds.append(r)
        return r

    def _bwrap_args(self) -> tuple[list[str], list[int]]:
        passwd = (f"root:x:0:0:root:/root:/bin/bash\nuser:x:{UID_IN}:{UID_IN}:User,,,:{HOME_IN}:/bin/bash\n"
                  "nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n").encode()
        group = f"root:x:0:\nuser:x:{UID_IN}:\nnogroup:x:65534:\n".encode()
        resolv = b"nameserver 127.0.0.53\noptions edns0\n"
        hosts = f"127.0.0.1\tlocalhost\n127.0.1.1\t{HOSTNAME}\n::1\tlocalhost ip6-localhost ip6-loopback\n".encode()
        a = [self.tools["bwrap"], "--unshare-user", "--unshare-pid", "--unshare-ipc", "--unshare-uts",
             "--unshare-cgroup-try", "--uid", str(UID_IN), "--gid", str(UID_IN), "--hostname", HOSTNAME,
             "--die-with-parent", "--as-pid-1", "--new-session", "--ro-bind", "/usr", "/usr"]
        for d in ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"):
            if os.path.islink(d):
                a += ["--symlink", os.readlink(d), d]
            elif os.path.isdir(d):
                a += ["--ro-bind", d, d]
        a += ["--ro-bind", "/etc", "/etc"]
        for d in ("/sys", "/var/cache/fontconfig") + OPT_TOOL_DIRS + self.ro_binds:
            if os.path.isdir(d):
                a += ["--ro-bind", d, d]
        a += self._mask_args()
        a += ["--proc", "/proc", "--dev", "/dev", "--size", str(self.limits.tmp_size), "--tmpfs", "/tmp",
              "--size", str(self.limits.tmp_size), "--tmpfs", "/var/tmp", "--size", str(16 << 20), "--tmpfs", "/run",
              "--size", str(self.limits.tmp_size), "--tmpfs", "/dev/shm",
              "--dir", "/var/spool/cron/crontabs", "--dir", "/root",
              "--bind", STAGE_DIR + "/home", HOME_IN, "--bind", STAGE_DIR + "/work", WORK_IN]
        for dest, content in (("/etc/passwd", passwd), ("/etc/group", group), ("/etc/hosts", hosts),
                              ("/etc/hostname", (HOSTNAME + "\n").encode()), ("/etc/resolv.conf", resolv),
                              ("/etc/machine-id", SANDBOX_MACHINE_ID)):
            if os.path.islink(dest):
                continue  # a symlinked file cannot be a mount point; every address is local anyway
            if dest == "/etc/machine-id" and not os.path.isfile(dest):
                continue  # nothing to hide, and a read-only root (the guest's) has no place for a new one
            a += ["--ro-bind-data", str(self._data_fd(content)), dest]
        a += ["--chdir", WORK_IN]
        return a, list(self._fds)

    def _mask_args(self) -> list[str]:
        """bwrap arguments that hide :data:`HIDDEN_DIRS` and :data:`HIDDEN_FILES` where this machine has them
        (a symlink is left alone: a mount cannot go on it, and what it points to is masked by its own entry)."""
        a: list[str] = []
        for d in HIDDEN_DIRS:
            if os.path.isdir(d) and not os.path.islink(d):
                a += ["--size", "4096", "--tmpfs", d, "--remount-ro", d]
        for f in HIDDEN_FILES:
            if os.path.isfile(f) and not os.path.islink(f):
                a += ["--ro-bind-data", str(self._data_fd(b"")), f]  # (/dev/null is nodev in there: EACCES)
        return a

    def start(self, argv: Iterable[str], env: dict[str, str], unlimited_address_space: bool = False,
              on_stderr_line: Callable[[str], None] | None = None, cpu_s: int | None = None,
              marker: str = INIT_MARKER, on_stdout_line: Callable[[str], None] | None = None) -> None:
        """Start the sample under strace in the sandbox (returns at once).

        ``marker`` goes into the init's argv; the behaviour trace starts at the
        init that carries :data:`INIT_MARKER` (a warm sandbox's outer init
        carries another, see :mod:`~mailvm.guest.winewarm`).
        """
        assert self.netns is not None and self.cgroups is not None
        argv = list(argv)
        if not argv:
            raise SandboxError("empty argv")
        cg_procs = self.cgroups.create()
        missing = self.cgroups.missing()
        if missing:
            self.degraded.append(f"cgroups: no {' or '.join(missing)} controller; only the rlimits bound the sample")
        bwrap, fds = self._bwrap_args()
        self.marker = marker
        t = self.tools
        lim = self.limits
        rl = [t["prlimit"], f"--nproc={lim.nproc}:{lim.nproc}", f"--nofile={lim.nofile}:{lim.nofile}",
              f"--fsize={lim.file_size}:{lim.file_size}", "--core=0:0",
              f"--cpu={cpu_s or lim.cpu_s}:{cpu_s or lim.cpu_s}"]
        if not unlimited_address_space:
            rl.append(f"--as={lim.address_space}:{lim.address_space}")
        cmd = ([t["setpriv"], "--pdeathsig", "KILL", "--", t["nsenter"], f"--net={self.netns.path}", "--",
                t["strace"], "-f", "-ttt", "-y", "-s", "256", "--seccomp-bpf", "--pidns-translation",
                "-e", "trace=" + STRACE_SYSCALLS, "-o", self.strace_log, "--"]
               + rl + ["--", t["unshare"], "--mount", "--propagation", "private", "--", t["sh"], "-c", _STAGE,
                       "mailvm-stage", str(len(cg_procs)), *cg_procs, self.home, self.work, STAGE_DIR + "/home",
                       STAGE_DIR + "/work", t["setpriv"], f"--reuid={self.uid}", f"--regid={self.uid}",
                       "--clear-groups", "--"]
               + bwrap + ["--", t["python3"], "-I", "-S", "-c", INIT_CODE, marker] + argv)
        full_env = self.base_env()
        full_env.update(env)
        try:
            self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                         stderr=subprocess.PIPE, env=full_env, cwd="/", pass_fds=fds,
                                         start_new_session=True)
        finally:
            for fd in self._fds:
                try:
                    os.close(fd)
                except OSError:
                    pass
            self._fds = []
        self.readers = [_Reader(self.proc.stdout, MAX_OUTPUT, on_stdout_line),
                        _Reader(self.proc.stderr, MAX_OUTPUT, on_stderr_line)]
        for r in self.readers:
            r.start()

    # -- while running
    def hand_output_to(self, on_stderr_line: Callable[[str], None] | None,
                       on_stdout_line: Callable[[str], None] | None = None) -> None:
        """From now on: stderr (stdout) lines to ``on_stderr_line`` (``on_stdout_line``), and :meth:`output`
        starts afresh (a warm box's job)."""
        for r in self.readers:
            r.head = b""
        if len(self.readers) == 2:
            self.readers[0].on_line = on_stdout_line
            self.readers[1].on_line = on_stderr_line

    def exited(self) -> bool:
        return self.proc is None or self.proc.poll() is not None

    def sandbox_pids(self) -> list[int]:
        return processes_of_uid(self.uid) if self.uid >= 0 else []

    def output(self) -> tuple[bytes, bytes]:
        if len(self.readers) < 2:
            return b"", b""
        return self.readers[0].head, self.readers[1].head

    # -- tear-down
    def stop(self, graceful: Iterable[str] = (), grace_s: float = 1.5) -> int:
        """Kill everything of the sandbox; returns how many processes had to be killed by the final sweep.

        ``graceful`` names programs that get SIGTERM first (wineserver flushes the
        registry on SIGTERM) and up to ``grace_s`` seconds to exit.
        """
        names = tuple(graceful)
        if names and self.uid >= 0:
            targets = [p for p in self.sandbox_pids() if any(n in _cmdline(p) for n in names)]
            for pid in targets:
                try:
                    os.kill(pid, signal.SIGTERM)
                except OSError:
                    pass
            deadline = time.monotonic() + grace_s
            while targets and time.monotonic() < deadline:
                targets = [p for p in targets if os.path.exists(f"/proc/{p}") and _state(p) != "Z"]
                time.sleep(0.02)
        if self.uid >= 0:
            for pid in self.sandbox_pids():
                cmd = _cmdline(pid)
                if INIT_MARKER in cmd or self.marker in cmd:  # pid 1 of the sandbox: its death ends the pid namespace
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except OSError:
                        pass
        if self.cgroups is not None:
            self.cgroups.kill()
        swept = 0
        deadline = time.monotonic() + 5.0
        while self.uid >= 0 and time.monotonic() < deadline:
            pids = [p for p in self.sandbox_pids() if _state(p) != "Z"]
            if not pids:
                break
            swept += len(pids)
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass
            time.sleep(0.02)
        if self.proc is not None:
            try:
                self.proc.wait(timeout=3)
            except subprocess.TimeoutExpired:
                log.error("strace did not exit after the sandbox was killed; killing its session")
                try:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                except OSError:
                    pass
                try:
                    self.proc.wait(timeout=3)
                except subprocess.TimeoutExpired:
                    log.error("strace pid %d survives", self.proc.pid)
        for r in self.readers:
            r.join(timeout=2)
        left = [p for p in self.sandbox_pids() if _state(p) != "Z"]
        if left:
            log.error("sandbox uid %d still has processes %s", self.uid, left[:10])
        return len(left) if left else 0

    def stop_network(self) -> None:
        """Stop the simulated internet (it logs what is still in its backlog first); after :meth:`stop`."""
        if self.fakenet is not None:
            self.fakenet.stop()

    def oom_kills(self) -> int:
        """Processes of the sample killed for memory (before :meth:`close`)."""
        return self.cgroups.oom_kills() if self.cgroups is not None else 0

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self.proc is not None and self.proc.poll() is None:
            self.stop()
        for fh in (self.proc.stdout, self.proc.stderr) if self.proc is not None else ():
            if fh is not None:
                fh.close()
        if self.fakenet is not None:
            self.fakenet.stop()
        if self.netns is not None:
            self.netns.delete()
        if self.cgroups is not None:
            self.cgroups.kill()
            self.cgroups.remove()
        for fd in self._fds:
            try:
                os.close(fd)
            except OSError:
                pass
        if not self.keep_files:
            shutil.rmtree(self.dir, ignore_errors=True)


def _state(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            data = fh.read(512)
        return data[data.rfind(b")") + 2 :].split(b" ", 1)[0].decode()
    except OSError:
        return "X"
