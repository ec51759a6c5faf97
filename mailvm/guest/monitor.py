"""Turn raw behaviour traces into events: strace output, fakenet's log, Wine's.

Standard library only (runs inside the guest).

Three layers, each usable on its own:

* :func:`parse_line` / :class:`StraceParser`: one line of ``strace -f -ttt -y
  --pidns-translation`` output -> a :class:`Call` (pid, time, syscall name,
  raw argument strings, return value, errno, fd path).  Handles
  ``<unfinished ...>`` / ``<... resumed>`` pairs, quoted strings with escapes,
  ``/* comments */``, ``-y`` fd annotations and truncated strings.  Lines longer
  than ``max_line`` are dropped (counted), never parsed.
* :class:`EventBuilder`: calls -> event dicts (``exec``, ``fork``, ``exit``,
  ``kill``, ``ptrace``, ``inject``, ``file``, ``connect``, ``sendto``, ``bind``,
  ``listen``, ``image``, ``mmap_exec``, ``memfd``, ``sleep``, ``clone_failed``),
  with a process table.  Everything before the sandbox init's ``execve`` (whose
  argv carries the marker) and every event of the init itself is infrastructure
  and is not reported: only the sample's own process tree is.
* :class:`FileTail`: incremental reader of a growing file, line by line, with
  bounded line length, used for strace's ``-o`` file and fakenet's JSON lines.

Event dicts are JSON-able; every event carries ``t`` (seconds since the
detonation started, from the trace's own clock) and ``type``.
"""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass, field
from typing import Any, Iterator

from mailvm.guest.winpath import HOME, PREFIX, SHELL_FOLDERS, WIN_USER

log = logging.getLogger(__name__)

#: syscalls strace is asked to trace (on top of its classes); keep in step with
#: :meth:`EventBuilder._handlers`
STRACE_SYSCALLS = (
    "process,%file,%network,mmap,ptrace,process_vm_writev,nanosleep,clock_nanosleep,memfd_create,fchmod,fchdir"
)

MAX_LINE = 256 * 1024
MAX_ARGV = 64
MAX_STR = 512
LONG_SLEEP_MIN_S = 1.0  # shorter sleeps are not reported at all

_HEAD_RE = re.compile(r"^(\d+)\s+(\d+(?:\.\d+)?)\s+(.*)$", re.S)
_EXIT_RE = re.compile(r"^\+\+\+ exited with (-?\d+) \+\+\+")
_KILLED_RE = re.compile(r"^\+\+\+ killed by (SIG\w+)")
_RESUMED_RE = re.compile(r"^<\.\.\. (\w+) resumed>\s?(.*)$", re.S)
_NAME_RE = re.compile(r"^(\w+)\(")
_RET_RE = re.compile(r"^\s*=\s*(\?|-?\d+|0x[0-9a-fA-F]+)(.*)$", re.S)
_ERRNO_RE = re.compile(r"^\s*(E[A-Z0-9_]+)\b")
_PIDNS_RE = re.compile(r"/\*\s*(\d+) in strace's PID NS\s*\*/")
_FDPATH_RE = re.compile(r"^-?\d+<(.*)>", re.S)

_ESCAPES = {"n": 10, "t": 9, "r": 13, "v": 11, "f": 12, "a": 7, "b": 8, "\\": 92, '"': 34, "'": 39, "?": 63}


def unquote(token: str) -> str:
    """Decode one strace C string literal (``"a\\nb\\33"...``) to text.

    Bytes that are not UTF-8 come back as ``\\xNN`` escapes.  A token that is
    not a quoted string is returned stripped, unchanged.
    """
    s = token.strip()
    if not s.startswith('"'):
        return s
    out = bytearray()
    i, n = 1, len(s)
    while i < n:
        c = s[i]
        if c == '"':
            break
        if c == "\\" and i + 1 < n:
            d = s[i + 1]
            if d in _ESCAPES:
                out.append(_ESCAPES[d])
                i += 2
                continue
            if d == "x":
                m = re.match(r"[0-9a-fA-F]{1,2}", s[i + 2 : i + 4])
                if m:
                    out.append(int(m.group(0), 16))
                    i += 2 + len(m.group(0))
                    continue
            if d in "01234567":
                m = re.match(r"[0-7]{1,3}", s[i + 1 : i + 4])
                assert m is not None
                out.append(int(m.group(0), 8) & 0xFF)
                i += 1 + len(m.group(0))
                continue
            out.extend(d.encode("utf-8", "surrogateescape"))
            i += 2
            continue
        out.extend(c.encode("utf-8", "surrogateescape"))
        i += 1
    return out.decode("utf-8", "backslashreplace")


def split_args(text: str, start: int = 0) -> tuple[list[str], int]:
    """Split ``text[start:]`` at top-level commas until the unbalanced ``)``.

    Returns the argument strings (stripped) and the index just past the closing
    parenthesis, or ``len(text)`` when the call is not closed (a truncated or
    unfinished line).  Quoted strings, ``[]{}()`` nesting, ``/* */`` comments
    and ``-y`` fd annotations (``3</path>``) are skipped as units.
    """
    return _split_top(text, start, ")")


def split_list(text: str) -> list[str]:
    """Elements of a strace array ``[a, b, ...]`` (the brackets included)."""
    s = text.strip()
    if not s.startswith("["):
        return []
    return _split_top(s, 1, "]")[0]


def _split_top(text: str, start: int, close: str) -> tuple[list[str], int]:
    """``split_args`` for any closing bracket ``close`` (``)`` for a call, ``]`` for an array)."""
    args: list[str] = []
    depth = 0
    i = start
    n = len(text)
    tok_start = start
    while i < n:
        c = text[i]
        if c == '"':
            i += 1
            while i < n and text[i] != '"':
                i += 2 if text[i] == "\\" else 1
            i += 1
            continue
        if c == "/" and text.startswith("/*", i):
            j = text.find("*/", i + 2)
            i = n if j < 0 else j + 2
            continue
        if c == "<" and i > start and (text[i - 1].isdigit() or text.endswith("AT_FDCWD", start, i)):
            j = text.find(">", i + 1)
            i = n if j < 0 else j + 1
            continue
        if c in "[{(":
            depth += 1
        elif c in ")]}":
            if depth == 0 and c == close:
                piece = text[tok_start:i].strip()
                if piece or args:
                    args.append(piece)
                return args, i + 1
            depth -= 1
        elif c == "," and depth == 0:
            args.append(text[tok_start:i].strip())
            tok_start = i + 1
        i += 1
    piece = text[tok_start:].strip()
    if piece:
        args.append(piece)
    return args, n


#: path prefixes that name the same files as shorter ones: Wine's drive links (``dosdevices/c:`` is
#: ``drive_c``, ``z:`` the root) and the Wine user's shell folders (links to the sandbox HOME's).  strace
#: shows a path argument as the program passed it; the rules compare the files.
PATH_ALIASES: tuple[tuple[str, str], ...] = (
    (PREFIX + "/dosdevices/c:/", PREFIX + "/drive_c/"),
    (PREFIX + "/dosdevices/z:/", "/"),
) + tuple((f"{PREFIX}/drive_c/users/{WIN_USER}/{f}/", f"{HOME}/{f}/") for f in SHELL_FOLDERS)


def canonical_path(path: str, aliases: tuple[tuple[str, str], ...] = PATH_ALIASES) -> str:
    """``/home/user/.wine/dosdevices/c:/users/user/Documents/x`` -> ``/home/user/Documents/x``."""
    for _ in range(3):  # an alias may lead into another (c: -> drive_c -> a shell folder)
        for old, new in aliases:
            if path.startswith(old) or path + "/" == old:
                path = new + path[len(old):] if path.startswith(old) else new.rstrip("/") or "/"
                break
        else:
            return path
    return path


def fd_path(arg: str) -> str | None:
    """The path strace ``-y`` printed for an fd argument (``3</x/y>`` -> ``/x/y``)."""
    m = _FDPATH_RE.match(arg.strip())
    if not m:
        return None
    return unquote('"' + m.group(1) + '"')


def dirfd_path(arg: str) -> str | None:
    """``AT_FDCWD</cwd>`` or ``3</dir>`` -> the directory path."""
    a = arg.strip()
    if a.startswith("AT_FDCWD<") and a.endswith(">"):
        return unquote('"' + a[len("AT_FDCWD<") : -1] + '"')
    return fd_path(a)


def join_path(base: str | None, path: str) -> str:
    """Resolve ``path`` against ``base`` lexically (no file system access)."""
    if not path.startswith("/") and base:
        path = base.rstrip("/") + "/" + path
    return os.path.normpath(path) if path else path


@dataclass
class Call:
    """One completed system call (or a process lifecycle line) from strace."""

    pid: int
    ts: float
    name: str
    args: list[str] = field(default_factory=list)
    ret: str = ""
    errno: str = ""
    ret_path: str | None = None  # -y annotation on the return value
    ret_pid: int | None = None  # --pidns-translation of a returned pid

    @property
    def ok(self) -> bool:
        return not self.errno and self.ret not in ("-1",)

    @property
    def ret_int(self) -> int | None:
        try:
            return int(self.ret, 0)
        except ValueError:
            return None


class StraceParser:
    """Stateful line parser: remembers unfinished calls per pid."""

    def __init__(self, max_line: int = MAX_LINE) -> None:
        self.max_line = max_line
        self.pending: dict[int, str] = {}
        self.dropped_lines = 0
        self.bad_lines = 0

    def feed(self, line: str) -> Call | None:
        if len(line) > self.max_line:
            self.dropped_lines += 1
            return None
        m = _HEAD_RE.match(line.rstrip("\n"))
        if not m:
            self.bad_lines += 1
            return None
        pid = int(m.group(1))
        try:
            ts = float(m.group(2))
        except ValueError:
            self.bad_lines += 1
            return None
        rest = m.group(3)
        if rest.startswith("+++"):
            self.pending.pop(pid, None)
            em = _EXIT_RE.match(rest)
            if em:
                return Call(pid, ts, "+exit", ret=em.group(1))
            km = _KILLED_RE.match(rest)
            if km:
                return Call(pid, ts, "+killed", ret=km.group(1))
            return None
        if rest.startswith("---"):
            return None  # signal delivery
        rm = _RESUMED_RE.match(rest)
        if rm:
            head = self.pending.pop(pid, None)
            if head is None:
                # a resumed call whose start we never saw: parse what is left
                rest = rm.group(1) + "(" + rm.group(2)
            else:
                rest = head + rm.group(2)
        elif rest.rstrip().endswith("<unfinished ...>"):
            if len(self.pending) > 100_000:
                self.pending.clear()
            self.pending[pid] = rest.rstrip()[: -len("<unfinished ...>")].rstrip()
            return None
        return self._parse_call(pid, ts, rest)

    def _parse_call(self, pid: int, ts: float, text: str) -> Call | None:
        nm = _NAME_RE.match(text)
        if not nm:
            self.bad_lines += 1
            return None
        args, end = split_args(text, nm.end())
        call = Call(pid, ts, nm.group(1), args)
        rm = _RET_RE.match(text[end:])
        if rm:
            call.ret = rm.group(1)
            tail = rm.group(2)
            if tail.startswith("<"):
                j = tail.find(">")
                if j > 0:
                    call.ret_path = unquote('"' + tail[1:j] + '"')
                    tail = tail[j + 1 :]
            em = _ERRNO_RE.match(tail)
            if em and call.ret.startswith("-"):
                call.errno = em.group(1)
            pm = _PIDNS_RE.search(tail)
            if pm:
                call.ret_pid = int(pm.group(1))
        return call


# ---------------------------------------------------------------- events

_WRITE_FLAGS = ("O_WRONLY", "O_RDWR", "O_CREAT", "O_TRUNC", "O_APPEND")
_SOCK_PORT_RE = re.compile(r"sin6?_port=htons\((\d+)\)")
_SOCK_V4_RE = re.compile(r'sin_addr=inet_addr\("([0-9.]+)"\)')
_SOCK_V6_RE = re.compile(r'inet_pton\(AF_INET6,\s*"([0-9a-fA-F:.]+)"')
_SOCK_FAM_RE = re.compile(r"sa_family=(AF_\w+)")
_SUN_PATH_RE = re.compile(r'sun_path=(@?"(?:[^"\\]|\\.)*")')
_TIMESPEC_RE = re.compile(r"tv_sec=(\d+),\s*tv_nsec=(\d+)")

_STAT_CALLS = {
    "stat", "lstat", "newfstatat", "fstatat64", "statx", "access", "faccessat", "faccessat2",
    "readlink", "readlinkat", "statfs", "getxattr", "lgetxattr", "listxattr", "llistxattr",
}


def parse_sockaddr(arg: str) -> dict[str, Any]:
    """``{sa_family=AF_INET, sin_port=htons(80), sin_addr=inet_addr("1.2.3.4")}`` -> dict."""
    fam_m = _SOCK_FAM_RE.search(arg)
    fam = fam_m.group(1) if fam_m else ""
    out: dict[str, Any] = {"family": {"AF_INET": "inet", "AF_INET6": "inet6", "AF_UNIX": "unix"}.get(fam, fam.lower())}
    if fam == "AF_UNIX":
        sm = _SUN_PATH_RE.search(arg)
        if sm:
            raw = sm.group(1)
            abstract = raw.startswith("@")
            out["path"] = ("@" if abstract else "") + unquote(raw.lstrip("@"))
        return out
    pm = _SOCK_PORT_RE.search(arg)
    if fam == "AF_INET":
        am = _SOCK_V4_RE.search(arg)
    elif fam == "AF_INET6":
        am = _SOCK_V6_RE.search(arg)
    else:
        am = None
    if am:
        out["ip"] = am.group(1)
    if pm:
        out["port"] = int(pm.group(1))
    if "ip" in out and "port" in out:
        ip = out["ip"]
        out["dst"] = f"[{ip}]:{out['port']}" if ":" in ip else f"{ip}:{out['port']}"
    return out


@dataclass
class Proc:
    pid: int
    ppid: int | None = None
    exe: str = ""
    argv: list[str] = field(default_factory=list)
    alive: bool = True
    sample: bool = True
    cwd: str = ""


class EventBuilder:
    """Calls -> event dicts for the sample's own process tree.

    ``marker`` is an argv element of the sandbox init's ``execve``: the first
    successful exec carrying it names the init; pids seen before it and the
    init itself are infrastructure.  ``t0`` is the wall-clock start of the
    detonation (strace's ``-ttt`` clock).
    """

    def __init__(self, marker: str, t0: float, cwd: str = "/") -> None:
        self.marker = marker
        self.t0 = t0
        self.initial_cwd = cwd
        self.procs: dict[int, Proc] = {}
        self.infra: set[int] = set()
        self.threads: set[int] = set()
        self._missing_execs: set[tuple[int, str]] = set()
        self.init_pid: int | None = None
        self.started = False  # the init has exec'd: the sample tree exists from now on
        self.root_pid: int | None = None  # the first process of the sample
        #: the init has forked the launcher (or a sample event was seen): the idle clock may run from now on
        self.sample_began = False
        self.last_event_t = 0.0
        self.calls = 0
        self._handlers = {
            "execve": self._exec, "execveat": self._exec,
            "clone": self._fork, "clone3": self._fork, "fork": self._fork, "vfork": self._fork,
            "+exit": self._exit, "+killed": self._exit,
            "kill": self._kill, "tkill": self._kill, "tgkill": self._kill,
            "ptrace": self._ptrace, "process_vm_writev": self._inject,
            "open": self._open, "openat": self._open, "openat2": self._open, "creat": self._creat,
            "rename": self._rename, "renameat": self._rename, "renameat2": self._rename,
            "unlink": self._unlink, "unlinkat": self._unlink, "rmdir": self._unlink,
            "chmod": self._chmod, "fchmodat": self._chmod, "fchmodat2": self._chmod, "fchmod": self._fchmod,
            "mkdir": self._mkdir, "mkdirat": self._mkdir,
            "link": self._link, "linkat": self._link, "symlink": self._link, "symlinkat": self._link,
            "truncate": self._truncate,
            "connect": self._connect, "sendto": self._sendto, "sendmsg": self._sendto,
            "bind": self._bind, "listen": self._listen,
            "mmap": self._mmap, "memfd_create": self._memfd,
            "nanosleep": self._sleep, "clock_nanosleep": self._sleep,
            "chdir": self._chdir, "fchdir": self._chdir,
        }
        for name in _STAT_CALLS:
            self._handlers[name] = self._probe

    def _is_init_exec(self, call: Call) -> bool:
        """The sandbox init's exec: ``python3 -I -S -c CODE <marker> argv...`` (not a wrapper carrying it)."""
        if len(call.args) < 2 or self.marker not in call.args[1]:
            return False
        argv = split_list(call.args[1])
        return len(argv) > 5 and unquote(argv[3]) == "-c" and unquote(argv[5]) == self.marker

    # -- process table
    def alive_sample_pids(self) -> list[int]:
        return [p.pid for p in self.procs.values() if p.alive and p.sample]

    def proc(self, pid: int) -> Proc:
        p = self.procs.get(pid)
        if p is None:
            p = Proc(pid, sample=self.started and pid not in self.infra, cwd=self.initial_cwd)
            if len(self.procs) < 200_000:
                self.procs[pid] = p
        return p

    def exe_of(self, pid: int | None) -> str:
        if pid is None:
            return ""
        p = self.procs.get(pid)
        return p.exe if p else ""

    # -- main entry
    def feed(self, call: Call) -> list[dict[str, Any]]:
        self.calls += 1
        pid = call.pid
        if not self.started:
            if call.name == "execve" and call.ok and self._is_init_exec(call):
                self.started = True
                self.init_pid = pid
                self.infra.update(self.procs.keys())
                self.infra.add(pid)
                for p in self.procs.values():
                    p.sample = False
                    p.alive = p.pid == pid
                self.proc(pid).sample = False
                return []
            p = self.proc(pid)
            p.sample = False
            self.infra.add(pid)
            if call.name in ("+exit", "+killed"):
                p.alive = False
            return []
        if pid in self.infra:
            p = self.procs.get(pid)
            if call.name in ("+exit", "+killed") and p:
                p.alive = False
            if call.name in ("clone", "clone3", "fork", "vfork") and pid == self.init_pid and call.ret_pid:
                self.proc(call.ret_pid).ppid = pid
                self.sample_began = True
            return []
        handler = self._handlers.get(call.name)
        if handler is None:
            return []
        p = self.proc(pid)
        self.sample_began = True
        if self.root_pid is None:
            self.root_pid = pid
        try:
            ev = handler(call, p)
        except (IndexError, ValueError) as exc:  # malformed line: data, not a crash
            log.debug("unparsed %s line: %s", call.name, exc)
            return []
        if not ev:
            return []
        evs = ev if isinstance(ev, list) else [ev]
        t = round(call.ts - self.t0, 4)
        for e in evs:
            e.setdefault("t", t)
            e.setdefault("pid", pid)
        self.last_event_t = max(self.last_event_t, call.ts)
        return evs

    # -- helpers
    @staticmethod
    def _err(call: Call) -> dict[str, Any]:
        return {} if call.ok else {"ok": False, "err": call.errno or call.ret}

    def _file(self, call: Call, op: str, path: str, **extra: Any) -> dict[str, Any]:
        ev: dict[str, Any] = {"type": "file", "op": op, "path": canonical_path(path)[:MAX_STR]}
        if "path2" in extra:
            extra["path2"] = canonical_path(extra["path2"])[:MAX_STR]
        ev.update(extra)
        ev.update(self._err(call))
        return ev

    def _path_arg(self, call: Call, p: Proc, dir_i: int | None, path_i: int) -> str:
        """An absolute path for argument ``path_i`` (relative to ``dir_i``'s fd or the cwd)."""
        raw = unquote(call.args[path_i])
        base = None
        if dir_i is not None:
            d = call.args[dir_i].strip()
            base = dirfd_path(d)
            if base and d.startswith("AT_FDCWD"):
                p.cwd = base  # strace told us the cwd: remember it
        if base is None:
            base = p.cwd or self.initial_cwd
        return join_path(base, raw) if raw else base

    # -- process events
    def _exec(self, call: Call, p: Proc) -> dict[str, Any]:
        if call.name == "execveat":
            dirp = dirfd_path(call.args[0])
            raw = unquote(call.args[1])
            path = join_path(dirp, raw) if raw else (dirp or "")
            argv_arg = call.args[2]
        else:
            path = join_path(p.cwd or self.initial_cwd, unquote(call.args[0]))
            argv_arg = call.args[1]
        argv = [unquote(a)[:MAX_STR] for a in split_list(argv_arg)[:MAX_ARGV]]
        ev: dict[str, Any] = {"type": "exec", "path": path[:MAX_STR], "argv": argv, "ppid": p.ppid,
                              "parent_exe": self.exe_of(p.ppid)}
        if call.ok:
            p.exe = path
            p.argv = argv
        else:
            if call.errno == "ENOENT":
                # execvp() tries every $PATH directory: report one attempt per program and process
                key = (p.pid, path.rsplit("/", 1)[-1])
                if key in self._missing_execs or len(self._missing_execs) > 10_000:
                    return {}
                self._missing_execs.add(key)
            ev.update(self._err(call))
        return ev

    def _fork(self, call: Call, p: Proc) -> dict[str, Any]:
        if not call.ok:
            return {"type": "clone_failed", "err": call.errno or call.ret}
        child = call.ret_pid if call.ret_pid is not None else call.ret_int
        if child is None or child <= 0:
            return {}
        flags = " ".join(call.args)
        is_thread = "CLONE_THREAD" in flags
        c = self.proc(child)
        c.ppid = p.pid
        c.sample = True
        c.cwd = p.cwd
        if not c.exe:
            c.exe = p.exe
            c.argv = list(p.argv)
        if is_thread:
            self.threads.add(child)
            return {}
        return {"type": "fork", "child": child}

    def _chdir(self, call: Call, p: Proc) -> dict[str, Any]:
        if call.ok:
            if call.name == "fchdir":
                p.cwd = fd_path(call.args[0]) or p.cwd
            else:
                p.cwd = self._path_arg(call, p, None, 0)
        return {}

    def _exit(self, call: Call, p: Proc) -> dict[str, Any]:
        p.alive = False
        if p.pid in self.threads:
            self.threads.discard(p.pid)
            return {}
        if call.name == "+killed":
            return {"type": "exit", "signal": call.ret}
        return {"type": "exit", "code": call.ret_int}

    def _kill(self, call: Call, p: Proc) -> dict[str, Any]:
        if call.name == "tgkill":
            target, sig = call.args[1], call.args[2]
        else:
            target, sig = call.args[0], call.args[1]
        tm = re.match(r"\s*(-?\d+)", target)
        outer = _PIDNS_RE.search(target)
        tpid = int(outer.group(1)) if outer else (int(tm.group(1)) if tm else None)
        if tpid == p.pid or sig.strip() == "0":
            return {}
        ev = {"type": "kill", "target": tpid, "signal": sig.strip(),
              "ns_target": int(tm.group(1)) if tm else None}  # the pid as the sample named it (its namespace)
        ev.update(self._err(call))
        return ev

    def _ptrace(self, call: Call, p: Proc) -> dict[str, Any]:
        req = call.args[0].strip() if call.args else ""
        target = None
        if len(call.args) > 1:
            outer = _PIDNS_RE.search(call.args[1])
            tm = re.match(r"\s*(\d+)", call.args[1])
            target = int(outer.group(1)) if outer else (int(tm.group(1)) if tm else None)
        ns = re.match(r"\s*(-?\d+)", call.args[1]) if len(call.args) > 1 else None
        ev = {"type": "ptrace", "request": req, "target": target, "ns_target": int(ns.group(1)) if ns else None}
        ev.update(self._err(call))
        return ev

    def _inject(self, call: Call, p: Proc) -> dict[str, Any]:
        outer = _PIDNS_RE.search(call.args[0])
        tm = re.match(r"\s*(\d+)", call.args[0])
        target = int(outer.group(1)) if outer else (int(tm.group(1)) if tm else None)
        ev = {"type": "inject", "call": call.name, "target": target}
        ev.update(self._err(call))
        return ev

    # -- file events
    def _open(self, call: Call, p: Proc) -> dict[str, Any]:
        if call.name == "open":
            path, flags = self._path_arg(call, p, None, 0), call.args[1] if len(call.args) > 1 else ""
        else:
            path, flags = self._path_arg(call, p, 0, 1), call.args[2] if len(call.args) > 2 else ""
        if call.ok and call.ret_path:
            path = call.ret_path
        op = "write" if any(f in flags for f in _WRITE_FLAGS) else "read"
        extra: dict[str, Any] = {}
        if "O_CREAT" in flags:
            extra["create"] = True
        return self._file(call, op, path, **extra)

    def _creat(self, call: Call, p: Proc) -> dict[str, Any]:
        path = call.ret_path if call.ok and call.ret_path else self._path_arg(call, p, None, 0)
        return self._file(call, "write", path, create=True)

    def _rename(self, call: Call, p: Proc) -> dict[str, Any]:
        if call.name == "rename":
            src, dst = self._path_arg(call, p, None, 0), self._path_arg(call, p, None, 1)
        else:
            src, dst = self._path_arg(call, p, 0, 1), self._path_arg(call, p, 2, 3)
        return self._file(call, "rename", src, path2=dst[:MAX_STR])

    def _unlink(self, call: Call, p: Proc) -> dict[str, Any]:
        path = self._path_arg(call, p, 0, 1) if call.name == "unlinkat" else self._path_arg(call, p, None, 0)
        return self._file(call, "rmdir" if call.name == "rmdir" else "unlink", path)

    def _chmod(self, call: Call, p: Proc) -> dict[str, Any]:
        if call.name == "chmod":
            path, mode = self._path_arg(call, p, None, 0), call.args[1]
        else:
            path, mode = self._path_arg(call, p, 0, 1), call.args[2]
        return self._mode_event(call, path, mode)

    def _fchmod(self, call: Call, p: Proc) -> dict[str, Any]:
        path = fd_path(call.args[0]) or ""
        return self._mode_event(call, path, call.args[1])

    def _mode_event(self, call: Call, path: str, mode: str) -> dict[str, Any]:
        try:
            m = int(mode.strip(), 8)
        except ValueError:
            m = 0
        return self._file(call, "chmod", path, mode=oct(m), exec_bit=bool(m & 0o111))

    def _mkdir(self, call: Call, p: Proc) -> dict[str, Any]:
        if call.errno == "EEXIST":
            return {}  # mkdir -p of what exists: nothing happened
        path = self._path_arg(call, p, 0, 1) if call.name == "mkdirat" else self._path_arg(call, p, None, 0)
        return self._file(call, "mkdir", path)

    def _link(self, call: Call, p: Proc) -> dict[str, Any]:
        if call.name == "link":
            src, dst = self._path_arg(call, p, None, 0), self._path_arg(call, p, None, 1)
        elif call.name == "linkat":
            src, dst = self._path_arg(call, p, 0, 1), self._path_arg(call, p, 2, 3)
        elif call.name == "symlink":
            src, dst = unquote(call.args[0]), self._path_arg(call, p, None, 1)
        else:  # symlinkat(target, newdirfd, linkpath)
            src, dst = unquote(call.args[0]), self._path_arg(call, p, 1, 2)
        # the *new* name is what gets written
        return self._file(call, "link", dst, path2=src[:MAX_STR])

    def _probe(self, call: Call, p: Proc) -> dict[str, Any]:
        """stat/access/readlink of a path: reported as ``op: probe`` (existence checks)."""
        if not call.args:
            return {}
        first = call.args[0].strip()
        if first.startswith('"'):
            path = self._path_arg(call, p, None, 0)
        elif len(call.args) > 1 and call.args[1].strip().startswith('"'):
            if unquote(call.args[1]) == "":
                return {}
            path = self._path_arg(call, p, 0, 1)
        else:
            return {}
        return self._file(call, "probe", path)

    def _truncate(self, call: Call, p: Proc) -> dict[str, Any]:
        return self._file(call, "write", self._path_arg(call, p, None, 0))

    # -- network
    def _connect(self, call: Call, p: Proc) -> dict[str, Any]:
        sa = parse_sockaddr(call.args[1]) if len(call.args) > 1 else {}
        if not sa.get("family") or sa["family"] in ("af_netlink", "af_unspec"):
            return {}
        ev = {"type": "connect", **sa}
        if not call.ok and call.errno != "EINPROGRESS":
            ev.update(self._err(call))
        return ev

    def _sendto(self, call: Call, p: Proc) -> dict[str, Any]:
        if call.name == "sendto":
            if len(call.args) < 5 or call.args[4].strip() in ("NULL", "0"):
                return {}
            sa = parse_sockaddr(call.args[4])
        else:
            sa = parse_sockaddr(call.args[1]) if len(call.args) > 1 and "msg_name={" in call.args[1] else {}
        if sa.get("family") not in ("inet", "inet6") or "ip" not in sa:
            return {}
        ev = {"type": "sendto", **sa}
        ev.update(self._err(call))
        return ev

    def _bind(self, call: Call, p: Proc) -> dict[str, Any]:
        sa = parse_sockaddr(call.args[1]) if len(call.args) > 1 else {}
        if sa.get("family") not in ("inet", "inet6") or not sa.get("port"):
            return {}
        ev = {"type": "bind", **sa, "socket": (fd_path(call.args[0]) or "")[:100]}
        ev.update(self._err(call))
        return ev

    def _listen(self, call: Call, p: Proc) -> dict[str, Any]:
        ev = {"type": "listen", "socket": (fd_path(call.args[0]) or "")[:100]}
        ev.update(self._err(call))
        return ev

    # -- memory / images
    def _mmap(self, call: Call, p: Proc) -> dict[str, Any]:
        if len(call.args) < 5 or not call.ok:
            return {}
        prot = call.args[2]
        if "PROT_EXEC" not in prot:
            return {}
        path = fd_path(call.args[4])
        if path:
            return {"type": "image", "path": path[:MAX_STR]}
        if "PROT_WRITE" in prot:
            return {"type": "mmap_exec", "prot": prot[:80], "anonymous": True}
        return {}

    def _memfd(self, call: Call, p: Proc) -> dict[str, Any]:
        ev = {"type": "memfd", "name": unquote(call.args[0])[:MAX_STR] if call.args else ""}
        ev.update(self._err(call))
        return ev

    def _sleep(self, call: Call, p: Proc) -> dict[str, Any]:
        arg = call.args[0] if call.name == "nanosleep" else (call.args[2] if len(call.args) > 2 else "")
        if call.name == "clock_nanosleep" and len(call.args) > 1 and "TIMER_ABSTIME" in call.args[1]:
            return {}
        m = _TIMESPEC_RE.search(arg)
        if not m:
            return {}
        secs = int(m.group(1)) + int(m.group(2)) / 1e9
        if secs < LONG_SLEEP_MIN_S:
            return {}
        return {"type": "sleep", "seconds": round(secs, 3)}


# ---------------------------------------------------------------- tails


class FileTail:
    """Read complete lines appended to a file since the last call.

    Lines longer than ``max_line`` are skipped up to their newline and counted
    in ``dropped``; at most ``max_bytes`` are read per call so one flood cannot
    stall the caller.
    """

    def __init__(self, path: str, max_line: int = MAX_LINE, max_bytes: int = 8 << 20) -> None:
        self.path = path
        self.max_line = max_line
        self.max_bytes = max_bytes
        self.offset = 0
        self.buf = b""
        self.skipping = False
        self.dropped = 0
        self.total_bytes = 0

    def read_lines(self) -> Iterator[str]:
        try:
            with open(self.path, "rb") as fh:
                fh.seek(self.offset)
                data = fh.read(self.max_bytes)
        except FileNotFoundError:
            return
        except OSError as exc:
            log.warning("cannot read %s: %s", self.path, exc)
            return
        if not data:
            return
        self.offset += len(data)
        self.total_bytes += len(data)
        buf = self.buf + data
        start = 0
        while True:
            nl = buf.find(b"\n", start)
            if nl < 0:
                break
            if self.skipping:
                self.skipping = False
            else:
                yield buf[start:nl].decode("utf-8", "backslashreplace")
            start = nl + 1
        rest = buf[start:]
        if len(rest) > self.max_line:
            if not self.skipping:
                self.dropped += 1
            self.skipping = True
            rest = b""
        self.buf = rest


class StraceMonitor:
    """Tail strace's ``-o`` file and turn new lines into events."""

    def __init__(self, path: str, marker: str, t0: float, max_line: int = MAX_LINE) -> None:
        self.tail = FileTail(path, max_line=max_line)
        self.parser = StraceParser(max_line=max_line)
        self.builder = EventBuilder(marker, t0)

    def poll(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for line in self.tail.read_lines():
            call = self.parser.feed(line)
            if call is not None:
                out.extend(self.builder.feed(call))
        return out

    @property
    def lines_dropped(self) -> int:
        return self.tail.dropped + self.parser.dropped_lines


class JsonLinesMonitor:
    """Tail a JSON-lines event file written by fakenet: validate, re-time, cap."""

    ALLOWED = {"dns", "tcp", "http", "tls", "udp", "smtp", "ftp", "irc", "tcp_data", "fakenet_error"}

    def __init__(self, path: str, t0: float, max_events: int = 20_000) -> None:
        self.tail = FileTail(path, max_line=64 * 1024)
        self.t0 = t0
        self.max_events = max_events
        self.count = 0
        self.ready = False

    def poll(self) -> list[dict[str, Any]]:
        out = []
        for line in self.tail.read_lines():
            try:
                ev = json.loads(line)
            except ValueError:
                continue
            if not isinstance(ev, dict):
                continue
            typ = ev.get("type")
            if typ == "ready":
                self.ready = True
                continue
            if typ not in self.ALLOWED or self.count >= self.max_events:
                continue
            self.count += 1
            ts = ev.pop("ts", None)
            ev["t"] = round(float(ts) - self.t0, 4) if isinstance(ts, (int, float)) else 0.0
            ev["src"] = "fakenet"
            out.append(ev)
        return out
