"""Wine support for detonating Windows files: prefix, trace channels, registry diff.

Standard library only (runs inside the guest).

* :func:`ensure_template` creates a Wine prefix once (5-12 s; the guest image
  ships one) and :func:`prepare_prefix` gives each detonation its own copy in
  milliseconds: fresh directories owned by the sandbox user, files hard-linked
  from the template (read-only for that user, so the template cannot be
  changed through them) except the registry hives, which are copied.
* :class:`WineTraceParser` reads ``WINEDEBUG=+reg,+loaddll,+process,+winsock,+relay``
  lines (the sample's stderr) into events: ``reg_set``, ``reg_open`` (keys of
  credential stores and VM artefacts only), ``image``, ``exec`` (a process Wine
  created), ``exec_request`` (a program asked for by command line, also one that
  does not exist), ``connect``,
  ``dns_lookup``, ``api`` (the Windows API calls of :data:`RELAY_FUNCTIONS`:
  relay thunks for these few functions only, their arguments with strings),
  and ``file`` for a script's ``ADODB.Stream.SaveToFile`` (Wine 8 leaves it
  unimplemented and says so with the target path).  strace attributes a Wine
  program's file and network calls to wineserver, so Wine's own channels carry
  the attribution.
* :func:`parse_reg` / :func:`diff_registry` compare ``user.reg`` and
  ``system.reg`` before and after the run (after wineserver has flushed them)
  into ``reg_set`` / ``reg_delete`` events.
"""

from __future__ import annotations

import logging
import os
import re
import secrets
import shutil
import subprocess
import threading
import time
from typing import Any

from mailvm.guest import windecoys, winestubs
from mailvm.guest.winpath import win_to_unix

log = logging.getLogger(__name__)

DEFAULT_TEMPLATE = "/var/lib/mailvm/wine-prefix"
TEMPLATE_ENV = "MAILVM_WINE_TEMPLATE"
HIVES = ("user.reg", "system.reg", "userdef.reg")
MAX_REG_BYTES = 64 << 20
MAX_VALUES_REPORTED = 500

_TRACE_RE = re.compile(r"^([0-9a-f]{4,8}):trace:(\w+):(\w+) ?(.*)$")
_WSTR_RE = re.compile(r'L"((?:[^"\\]|\\.)*)"')
_HANDLE_RE = re.compile(r"^\((0x[0-9a-f]+|\(nil\))")
_RET_HANDLE_RE = re.compile(r"^<- (0x[0-9a-f]+)")
_SPECIAL_ROOT_RE = re.compile(r"^(\S+) -> ([0-9A-Fa-f]+)")
_CONNECT_RE = re.compile(r"addr \{ family AF_INET6?, address ([0-9a-fA-F:.]+), port (\d+)")
_GETADDR_RE = re.compile(r'^node "([^"]{1,255})"')
_LOADED_RE = re.compile(r'Loaded L"((?:[^"\\]|\\.)*)" at [0-9A-Fa-f]+: (\w+)')
_RELAY_RE = re.compile(r"^([0-9a-f]{4,8}):Call ([\w.-]+)\.(\w+)\((.*)\) ret=[0-9a-f]+$")
_CREATED_RE = re.compile(r'^L"((?:[^"\\]|\\.)*)" pid ([0-9a-f]+) tid ([0-9a-f]+)')
_FIXME_RE = re.compile(r"^([0-9a-f]{4,8}):fixme:(\w+):(\w+) ?(.*)$")
_QUERY_VALUE_RE = re.compile(r'^\((0x[0-9a-f]+),L"((?:[^"\\]|\\.){1,200})"')

#: Windows API functions given relay thunks (``RelayInclude``): process injection and hollowing, keyboard
#: hooks, debugger and sandbox checks, sleeps, copies of files.  Only calls of these are traced (the rest of
#: the relay channel prints thread starts and DLL attaches, the proof of execution); none of them is called
#: in a loop by ordinary programs.
RELAY_FUNCTIONS = (
    "kernel32.VirtualAllocEx", "kernel32.VirtualAllocExNuma", "kernel32.VirtualProtectEx",
    "kernel32.WriteProcessMemory", "kernel32.CreateRemoteThread", "kernel32.CreateRemoteThreadEx",
    "kernel32.QueueUserAPC", "kernel32.SetThreadContext", "kernel32.Wow64SetThreadContext",
    "kernel32.CreateProcessA", "kernel32.CreateProcessW", "kernel32.IsDebuggerPresent",
    "kernel32.CheckRemoteDebuggerPresent", "kernel32.Sleep", "kernel32.SleepEx", "kernel32.CopyFileA",
    "kernel32.CopyFileW", "kernel32.CopyFileExA", "kernel32.CopyFileExW", "kernel32.MoveFileA", "kernel32.MoveFileW",
    "kernel32.MoveFileExA", "kernel32.MoveFileExW", "kernel32.GetModuleHandleA", "kernel32.GetModuleHandleW",
    "ntdll.NtWriteVirtualMemory", "ntdll.ZwWriteVirtualMemory", "ntdll.NtUnmapViewOfSection",
    "ntdll.ZwUnmapViewOfSection", "ntdll.NtQueueApcThread", "ntdll.NtSetContextThread",
    "ntdll.NtSetInformationThread", "ntdll.ZwSetInformationThread",
    "user32.SetWindowsHookExA", "user32.SetWindowsHookExW", "user32.RegisterRawInputDevices",
)
RELAY_INCLUDE = ";".join(RELAY_FUNCTIONS)
_RELAY_NAMES = {f.split(".", 1)[1] for f in RELAY_FUNCTIONS}
#: registry keys whose opening is reported (``reg_open``): credential stores and VM/sandbox artefacts
INTERESTING_KEY_RE = re.compile(
    r"\\SimonTatham\\PuTTY|\\Martin Prikryl\\WinSCP|\\Outlook\\Profiles|\\Windows Messaging Subsystem\\Profiles"
    r"|\\Internet Account Manager\\Accounts|\\FileZilla|\\(?:TightVNC|RealVNC)|\\ORL\\WinVNC"
    r"|VMware|VirtualBox|\\VBox|\\vmci\b|\\vmhgfs|\\vmmouse|\\vmtools|\\ACPI\\(?:DSDT|FADT|RSDT)\\(?:VBOX|BOCHS|BXPC)"
    r"|\\Services\\Disk\\Enum|Sandboxie|\\SbieDrv|\\Wow6432Node\\Oracle|\\qemu-ga|\\Xen", re.I)
#: registry value names whose reading is reported (``reg_query``): BIOS/hardware strings VM checks compare
INTERESTING_VALUES = frozenset({"systembiosversion", "videobiosversion", "systemmanufacturer", "systemproductname",
                                "biosvendor", "identifier", "0"})
MAX_ARGS = 12
#: relay events per function at most (a sample calling one in a loop must not flood the trace)
MAX_CALLS_PER_FUNCTION = 50
#: DLLs of sandboxes, debuggers and analysis tools whose presence samples test with GetModuleHandle
ANALYSIS_DLLS = frozenset({"sbiedll.dll", "sbiedll", "dbghelp.dll", "api_log.dll", "dir_watch.dll", "pstorec.dll",
                           "vmcheck.dll", "wpespy.dll", "cmdvrt32.dll", "cmdvrt64.dll", "cuckoomon.dll",
                           "snxhk.dll", "sxin.dll", "avghookx.dll", "avghooka.dll", "sf2.dll", "deploy.dll",
                           "guard32.dll", "guard64.dll", "vboxhook.dll", "vboxmrxnp.dll", "vmguestlib.dll",
                           "dbgcore.dll", "winedbg.exe", "olly.dll", "x64dbg.dll"})
SHORT_SLEEP_MS = 1000  # shorter Sleep() calls are not reported
CURRENT_PROCESS = (0xFFFFFFFF, 0xFFFFFFFFFFFFFFFF)  # GetCurrentProcess() of a 32-bit and a 64-bit caller
CURRENT_THREAD = (0xFFFFFFFE, 0xFFFFFFFFFFFFFFFE)
_ON_A_PROCESS = frozenset({"VirtualAllocEx", "VirtualAllocExNuma", "VirtualProtectEx", "WriteProcessMemory",
                           "CreateRemoteThread", "CreateRemoteThreadEx", "NtWriteVirtualMemory", "ZwWriteVirtualMemory",
                           "NtUnmapViewOfSection", "ZwUnmapViewOfSection"})
_ON_A_THREAD = frozenset({"SetThreadContext", "Wow64SetThreadContext", "NtSetContextThread", "NtQueueApcThread"})


def template_path() -> str:
    return os.environ.get(TEMPLATE_ENV) or DEFAULT_TEMPLATE


def prefix_env(prefix: str, home: str) -> dict[str, str]:
    """The environment a prefix is created in (no Gecko/Mono prompts, no debug output)."""
    return {"PATH": "/usr/bin:/bin", "HOME": home, "USER": "user", "LOGNAME": "user", "WINEPREFIX": prefix,
            "WINEDEBUG": "-all", "WINEDLLOVERRIDES": "mscoree,mshtml=", "WINEARCH": "win64", "LANG": "C.UTF-8"}


def ensure_template(template: str, wine: str, timeout_s: float = 180.0) -> None:
    """Create the Wine prefix template if it does not exist (idempotent)."""
    if os.path.isfile(os.path.join(template, "system.reg")):
        return
    tmp = f"{template}.tmp-{os.getpid()}-{threading.get_ident()}-{secrets.token_hex(4)}"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(os.path.dirname(template) or "/", exist_ok=True)
    home = tmp + "-home"
    os.makedirs(home, exist_ok=True)
    env = prefix_env(tmp, home)
    t0 = time.monotonic()
    umask = ["/bin/sh", "-c", 'umask 022; exec "$@"', "sh"]  # files readable by the sandbox users
    server = os.path.join(os.path.dirname(wine), "wineserver")
    if not os.access(server, os.X_OK):
        server = shutil.which("wineserver") or "wineserver"
    try:
        subprocess.run(umask + [wine, "wineboot", "-i"], env=env, stdin=subprocess.DEVNULL,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=timeout_s, check=False)
        subprocess.run(umask + [server, "-w"], env=env, timeout=60, check=False)
    finally:
        shutil.rmtree(home, ignore_errors=True)
    if not os.path.isfile(os.path.join(tmp, "system.reg")):
        shutil.rmtree(tmp, ignore_errors=True)
        raise OSError("wineboot did not create a prefix")
    windecoys.register_adodb_typelib(tmp, os.getuid(), os.getgid())  # once here; copies only link the library
    try:
        os.rename(tmp, template)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)  # a concurrent creator won
    log.info("created Wine prefix template %s in %.1f s", template, time.monotonic() - t0)


def prepare_prefix(template: str, dest: str, uid: int, gid: int) -> None:
    """Per-detonation prefix at ``dest``: own dirs, hard-linked files, copied hives, then
    :func:`~mailvm.guest.windecoys.seed_prefix` (user folders, decoy credential stores, ADO's type library).

    The template's files belong to root and are not writable by the sandbox
    user, so linking them (hard links, or symlinks across file systems) cannot
    change the template; Wine replaces files it rewrites.  The template's
    directories must be readable by any user.
    """
    for root, dirs, files in os.walk(template):
        rel = os.path.relpath(root, template)
        target = dest if rel == "." else os.path.join(dest, rel)
        os.makedirs(target, exist_ok=True)
        os.chown(target, uid, gid)
        for d in dirs:
            src = os.path.join(root, d)
            if os.path.islink(src):
                os.symlink(os.readlink(src), os.path.join(target, d))
                os.lchown(os.path.join(target, d), uid, gid)
        dirs[:] = [d for d in dirs if not os.path.islink(os.path.join(root, d))]
        for f in files:
            src = os.path.join(root, f)
            dst = os.path.join(target, f)
            if os.path.islink(src):
                os.symlink(os.readlink(src), dst)
                os.lchown(dst, uid, gid)
            elif rel == ".":
                if f == "wineserver":
                    continue  # the template's lock file
                shutil.copyfile(src, dst)
                os.chown(dst, uid, gid)
            else:
                try:
                    os.link(src, dst)
                except OSError:  # another file system: a symlink is as safe (the sandbox user cannot write it)
                    os.symlink(src, dst)
                    os.lchown(dst, uid, gid)
    windecoys.seed_prefix(dest, uid, gid)
    winestubs.install(dest, uid, gid)  # DLLs Debian's Wine lacks (ProcessPrng for Go 1.22+/Rust)


# ------------------------------------------------------------------ trace channels


def _wstr(text: str) -> str:
    m = _WSTR_RE.search(text)
    if not m:
        return ""
    return m.group(1).replace("\\\\", "\\")[:512]


class WineTraceParser:
    """``WINEDEBUG`` lines -> events, keeping a per-thread key-handle table."""

    def __init__(self, max_handles: int = 50_000, prefix: str = "/home/user/.wine") -> None:
        self.keys: dict[tuple[str, str], str] = {}
        self.pending_key: dict[str, str] = {}
        self.max_handles = max_handles
        self.lines = 0
        self.prefix = prefix
        #: thread id -> the image of its process, for the first thread of every process Wine reported
        self.proc_of_tid: dict[str, str] = {}
        self.calls: dict[str, int] = {}

    def _key(self, tid: str, handle: str) -> str:
        if handle in ("(nil)", "0x0", ""):
            return ""
        return self.keys.get((tid, handle.lower()), self.keys.get(("*", handle.lower()), f"<{handle}>"))

    def feed(self, line: str) -> list[dict[str, Any]]:
        self.lines += 1
        text = line.strip()[:4096]
        if ":Call " in text[:12]:
            return self._relay(text)
        m = _TRACE_RE.match(text)
        if not m:
            fm = _FIXME_RE.match(text)
            if fm:
                return self._fixme(*fm.groups())
            return []
        tid, channel, func, rest = m.groups()
        try:
            if channel == "reg":
                return self._reg(tid, func, rest)
            if channel == "loaddll" and "Loaded" in rest:
                lm = _LOADED_RE.search(rest)
                if lm:
                    path = lm.group(1).replace("\\\\", "\\")[:512]
                    native = lm.group(2) == "native"
                    is_program = path.lower().endswith((".exe", ".scr", ".com", ".pif"))
                    if native and is_program and tid not in self.proc_of_tid:
                        self._remember(tid, path)
                    return [{"type": "image", "path": path, "native": native, "src": "wine", **self._proc(tid)}]
                return []
            if channel == "process" and func == "NtCreateUserProcess":
                if " image L" in rest and " cmdline L" in rest:
                    image = _wstr(rest.split(" image ", 1)[1])
                    cmdline = _wstr(rest.split(" cmdline ", 1)[1]).replace('\\"', '"')
                    return [{"type": "exec", "src": "wine", "path": image, "argv": [cmdline], "tid": tid,
                             **self._proc(tid)}]
                cm = _CREATED_RE.match(rest)
                if cm:  # the new process's first thread: what its trace lines will carry
                    self._remember(cm.group(3), cm.group(1).replace("\\\\", "\\"))
                return []
            if channel == "process" and func == "CreateProcessInternalW" and " cmdline " in rest:
                app = _wstr(rest.split(" cmdline ", 1)[0])
                cmdline = _wstr(rest.split(" cmdline ", 1)[1]).replace('\\"', '"')
                if not cmdline and not app:
                    return []
                return [{"type": "exec_request", "src": "wine", "path": app or _first_token(cmdline),
                         "argv": [cmdline or app], "tid": tid, **self._proc(tid)}]
            if channel == "winsock":
                if func == "connect" or func == "WSAConnect":
                    cm = _CONNECT_RE.search(rest)
                    if cm:
                        ip, port = cm.group(1), int(cm.group(2))
                        dst = f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"
                        return [{"type": "connect", "src": "wine", "family": "inet6" if ":" in ip else "inet",
                                 "ip": ip, "port": port, "dst": dst}]
                if func in ("getaddrinfo", "GetAddrInfoW", "gethostbyname"):
                    gm = _GETADDR_RE.match(rest)
                    if gm:
                        return [{"type": "dns_lookup", "src": "wine", "name": gm.group(1)}]
        except (IndexError, ValueError):
            return []
        return []

    def _remember(self, tid: str, image: str) -> None:
        if len(self.proc_of_tid) < self.max_handles:
            self.proc_of_tid[tid] = image

    def _proc(self, tid: str) -> dict[str, str]:
        """``{"proc": <image base name>}`` when the thread is the first one of a process Wine reported."""
        image = self.proc_of_tid.get(tid)
        return {"proc": image.replace("/", "\\").rsplit("\\", 1)[-1].lower()} if image else {}

    def _relay(self, text: str) -> list[dict[str, Any]]:
        m = _RELAY_RE.match(text)
        if not m:
            return []
        tid, dll, func, raw = m.groups()
        if func not in _RELAY_NAMES:
            return []
        args = relay_args(raw)
        if not _worth_reporting(func, args):
            return []
        n = self.calls.get(func, 0)
        if n >= MAX_CALLS_PER_FUNCTION:
            return []
        self.calls[func] = n + 1
        return [{"type": "api", "src": "wine", "fn": func, "dll": dll.lower(), "args": args, "tid": tid,
                 **self._proc(tid)}]

    def _fixme(self, tid: str, channel: str, func: str, rest: str) -> list[dict[str, Any]]:
        if channel == "msado15" and func == "stream_SaveToFile":
            path = _wstr(rest)
            unix = win_to_unix(path, self.prefix)
            return [{"type": "file", "op": "write", "src": "wine", "api": "ADODB.Stream.SaveToFile",
                     "path": unix or path, "winpath": path, "create": True, "ok": False,
                     "err": "SaveToFile is not implemented by Wine", "tid": tid, **self._proc(tid)}]
        return []

    def _reg(self, tid: str, func: str, rest: str) -> list[dict[str, Any]]:
        if func in ("NtCreateKey", "NtOpenKeyEx", "NtOpenKey"):
            if rest.startswith("<- "):  # the handle for the key named on the previous line of this thread
                name = self.pending_key.pop(tid, "")
                rm = _RET_HANDLE_RE.match(rest)
                if rm and name and len(self.keys) < self.max_handles:
                    self.keys[(tid, rm.group(1).lower())] = name
                if name and INTERESTING_KEY_RE.search(name):
                    return [{"type": "reg_open", "src": "wine_trace", "key": name, "ok": rm is not None,
                             "create": func == "NtCreateKey", "tid": tid, **self._proc(tid)}]
                return []
            hm = _HANDLE_RE.match(rest)
            if hm:
                parent = self._key(tid, hm.group(1))
                sub = _wstr(rest)
                self.pending_key[tid] = normalize_key(parent + "\\" + sub if parent else sub)
            return []
        if func == "NtQueryValueKey":
            qm = _QUERY_VALUE_RE.match(rest)
            if qm and qm.group(2).lower() in INTERESTING_VALUES:
                key = self._key(tid, qm.group(1))
                if qm.group(2) in ("0", "Identifier") and "scsi" not in key.lower():
                    return []
                return [{"type": "reg_query", "src": "wine_trace", "key": key, "value": qm.group(2), "tid": tid,
                         **self._proc(tid)}]
            return []
        if func == "create_special_root_hkey":
            sm = _SPECIAL_ROOT_RE.match(rest.strip())
            if sm:
                name = normalize_key(sm.group(1).strip('L"'))
                handle = "0x" + sm.group(2).lstrip("0").lower() if sm.group(2).strip("0") else "0x0"
                self.keys[(tid, handle)] = name
                self.keys[("*", handle)] = name
            return []
        if func in ("NtSetValueKey", "NtDeleteValueKey", "NtDeleteKey"):
            hm = _HANDLE_RE.match(rest)
            if not hm:
                return []
            key = self._key(tid, hm.group(1))
            value = _wstr(rest)
            typ = "reg_delete" if "Delete" in func else "reg_set"
            return [{"type": typ, "src": "wine_trace", "key": key, "value": value}]
        return []


def relay_args(raw: str) -> list[str]:
    """Relay-printed arguments: ``0021fc20 L"C:\\\\x",00000058`` -> ``["C:\\x", "0x58"]``.

    Strings (``"..."`` / ``L"..."`` after the pointer) become their text, numbers ``0x`` hex; at most
    :data:`MAX_ARGS`.
    """
    out: list[str] = []
    i, n = 0, len(raw)
    cur = ""
    while i < n and len(out) < MAX_ARGS:
        c = raw[i]
        if c == '"':
            j = i + 1
            buf = []
            while j < n and raw[j] != '"':
                if raw[j] == "\\" and j + 1 < n:
                    buf.append(raw[j + 1])
                    j += 2
                    continue
                buf.append(raw[j])
                j += 1
            cur = "\x00STR" + "".join(buf)[:512]
            i = j + 1
            continue
        if c == ",":
            out.append(_relay_value(cur))
            cur = ""
        elif not cur.startswith("\x00STR"):
            cur += c
        i += 1
    if (cur or raw.endswith(",")) and len(out) < MAX_ARGS:
        out.append(_relay_value(cur))
    return out


def _int(arg: str) -> int | None:
    try:
        return int(arg, 16)
    except ValueError:
        return None


def _worth_reporting(func: str, args: list[str]) -> bool:
    """Drop the calls ordinary programs make all the time (short sleeps, their own modules' handles)."""
    if func.startswith("GetModuleHandle"):
        return bool(args) and args[0].replace("/", "\\").rsplit("\\", 1)[-1].lower() in ANALYSIS_DLLS
    if func in ("Sleep", "SleepEx"):
        ms = _int(args[0]) if args else None
        return ms is not None and SHORT_SLEEP_MS <= ms & 0xFFFFFFFF < 0xFFFFFFFF  # INFINITE waits, not delays
    if func in _ON_A_PROCESS:  # the calling process itself: Wine's own use
        return bool(args) and _int(args[0]) not in CURRENT_PROCESS
    if func in _ON_A_THREAD:
        return bool(args) and _int(args[0]) not in CURRENT_THREAD
    if func.endswith("SetInformationThread"):
        return len(args) > 1 and _int(args[1]) == 0x11  # ThreadHideFromDebugger
    return True


def _relay_value(token: str) -> str:
    if token.startswith("\x00STR"):
        return token[4:]
    t = token.strip().rstrip("L").strip()
    try:
        return hex(int(t, 16))
    except ValueError:
        return t[:64]


def _first_token(cmdline: str) -> str:
    c = cmdline.strip()
    if c.startswith('"'):
        return c[1:].split('"', 1)[0]
    return c.split(" ", 1)[0]


def normalize_key(key: str) -> str:
    """Canonical registry path: ``HKCU\\...`` / ``HKLM\\...``, single backslashes."""
    k = key.replace("/", "\\")
    while "\\\\" in k:
        k = k.replace("\\\\", "\\")
    k = k.strip("\\")
    low = k.lower()
    for prefix, short in (("registry\\user\\s-1-5-21-0-0-0-1000", "HKCU"), ("registry\\machine", "HKLM"),
                          ("registry\\user", "HKU"), ("hkey_current_user", "HKCU"),
                          ("hkey_local_machine", "HKLM"), ("\\registry\\machine", "HKLM")):
        if low.startswith(prefix):
            return short + k[len(prefix):]
    return k


# ------------------------------------------------------------------ registry files


def parse_reg(path: str, root: str) -> dict[str, dict[str, str]]:
    """A Wine ``.reg`` hive -> ``{key: {value name: raw data}}`` (keys prefixed with ``root``)."""
    out: dict[str, dict[str, str]] = {}
    try:
        if os.path.getsize(path) > MAX_REG_BYTES:
            log.warning("%s too large to diff", path)
            return out
        with open(path, encoding="utf-8", errors="replace") as fh:
            text = fh.read()
    except OSError:
        return out
    current: dict[str, str] | None = None
    pending = ""
    for raw in text.splitlines():
        line = pending + raw
        if line.endswith("\\") and current is not None and not line.startswith("["):
            pending = line[:-1].rstrip() if line.rstrip().endswith(",\\") else line[:-1]
            continue
        pending = ""
        if line.startswith("["):
            end = line.rfind("]")
            name = line[1:end] if end > 0 else line[1:]
            key = normalize_key(root + "\\" + name.replace("\\\\", "\\"))
            current = out.setdefault(key, {})
        elif current is not None and (line.startswith('"') or line.startswith("@")):
            if line.startswith("@"):
                vname, _, data = line.partition("=")
                current["@"] = data
            else:
                i = 1
                while i < len(line) and line[i] != '"':
                    i += 2 if line[i] == "\\" else 1
                vname = line[1:i].replace("\\\\", "\\")
                data = line[i + 2 :] if line[i + 1 : i + 2] == "=" else ""
                current[vname] = data
    return out


def snapshot_registry(prefix: str) -> dict[str, dict[str, str]]:
    reg = parse_reg(os.path.join(prefix, "user.reg"), "HKCU")
    reg.update(parse_reg(os.path.join(prefix, "system.reg"), "HKLM"))
    return reg


def diff_registry(before: dict[str, dict[str, str]], after: dict[str, dict[str, str]]) -> list[dict[str, Any]]:
    """New or changed values -> ``reg_set``; removed values -> ``reg_delete`` (capped).

    Key names compare without case, as Windows does (wineserver rewrites a hive in its own spelling).
    """
    events: list[dict[str, Any]] = []
    before_ci = {k.lower(): v for k, v in before.items()}
    after_ci = {k.lower(): v for k, v in after.items()}
    for key, values in after.items():
        old = before_ci.get(key.lower(), {})
        for name, data in values.items():
            if old.get(name) != data:
                events.append({"type": "reg_set", "src": "reg_diff", "key": key, "value": name,
                               "data": decode_reg_data(data)[:300]})
    for key, values in before.items():
        new = after_ci.get(key.lower())
        for name in values:
            if new is None or name not in new:
                events.append({"type": "reg_delete", "src": "reg_diff", "key": key, "value": name})
    return events[:MAX_VALUES_REPORTED]


def decode_reg_data(data: str) -> str:
    """``"C:\\\\x.exe"`` -> ``C:\\x.exe``; other encodings (dword:, hex:) stay as written."""
    d = data.strip()
    if d.startswith('"') and d.endswith('"'):
        return d[1:-1].replace("\\\\", "\\").replace('\\"', '"')
    if d.startswith("str(2):"):
        return d[7:].strip('"').replace("\\\\", "\\")
    return d
