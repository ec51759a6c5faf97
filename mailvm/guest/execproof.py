"""Did the sample really run?  Proof of execution for every launcher (contract C1).

Standard library only (runs inside the guest).

A detonation whose sample never ran has seen nothing, and "nothing seen" must
not read as "clean".  :class:`ProofWatcher` is fed everything the detonation
sees (Wine's stderr trace lines, the sample's stdout lines, the behaviour
events, the exit codes) and decides, per the launcher's ``proof`` kind:

``wine_module``
    Wine's loader printed ``Loaded L"...\\<sample>" at <base>: native`` and then,
    in the same thread, ``Starting thread proc <entry>`` (or a TLS callback of
    that module): the sample's own first instructions were called.  The relay
    channel prints these two lines only because the prefix's ``RelayInclude``
    names no function (:func:`enable_relay_markers`): no relay thunks, no cost.
``wine_dll``
    ``Call PE DLL (... L"<sample>",reason=PROCESS_ATTACH ...)``: the DLL's
    DllMain was called by rundll32 (a DLL without DllMain: loaded, and
    rundll32 called one of its exports).
``wine_host``
    A Wine script host (wscript, cmd, msiexec) started on the file and did not
    reject it (a JScript/VBScript parse error, an invalid package).
``mono``
    Mono's tracer printed ``ENTER: <Type>:<entry method>``: the assembly's entry
    method was entered.
``process`` / ``viewer``
    The sample (or its interpreter, or the viewer, with the sample in argv)
    was exec'd successfully.
``browser``
    The browser driver (:mod:`mailvm.guest.browser`) reported that Chromium
    fired the page's load event (fed through :meth:`ProofWatcher.viewer_report`);
    a driver that reports a failure, or none, is ``crash at load`` / ``launcher
    error``.
``document``
    LibreOffice's ``soffice.bin`` opened the file (strace) and its import
    filter loaded it (the profile hook's ``loaded`` line, see
    :mod:`mailvm.guest.office`, fed through :meth:`ProofWatcher.document_loaded`).
    Opened but never loaded is ``bad format`` (no filter took it), or ``crash
    at load`` when soffice.bin died of a signal; never opened is a launcher
    error or a crash at start.  Whether a *macro* ran is told apart
    (:meth:`ProofWatcher.note`): the proof names it when one did.

Otherwise the reason, in the words of C1: ``missing runtime: ...``,
``bad format: ...``, ``crash at load: <status> (...)``, ``launcher error: ...``.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Any, Callable

from mailvm.guest.wine import RELAY_INCLUDE  # noqa: F401  (relay thunks only for the behaviour rules' few functions)
MAX_REASON = 300

_LOADED_RE = re.compile(r'^([0-9a-f]{4,8}):trace:loaddll:\w+ Loaded L"((?:[^"\\]|\\.)*)" at ([0-9A-Fa-f]+): (\w+)')
_START_RE = re.compile(r"^([0-9a-f]{4,8}):Starting (?:thread|process) proc ([0-9A-Fa-f]+)")
_TLS_RE = re.compile(r"^([0-9a-f]{4,8}):Call TLS callback \(proc=[0-9A-Fa-f]+,module=([0-9A-Fa-f]+),")
_DLLMAIN_RE = re.compile(r'^([0-9a-f]{4,8}):Call PE DLL \(proc=[0-9A-Fa-f]+,module=[0-9A-Fa-f]+ L"([^"]*)",'
                         r"reason=PROCESS_ATTACH")
_RUNDLL_RE = re.compile(r'^([0-9a-f]{4,8}):trace:rundll32:\w+ Calling L?"?([^"( ]*)')
_ERR_RE = re.compile(r"^(?:[0-9a-f]{4,8}:)?err:module:(\w+) (.*)$")
_STATUS_RE = re.compile(r"(?:status|error) ?(c0000[0-9a-f]{3})", re.I)
_WINE_FATAL = ("wine: Bad EXE format", "wine: could not load", "wine: failed to start", "wine: cannot find",
               "wine: could not open", "wine: failed to open", "Application could not be started")
_UNHANDLED_RE = re.compile(r"^(?:[0-9a-f]{4,8}:)?(?:err:seh:\w+ )?(?:Unhandled exception|wine: Unhandled) ?(.*)$")
_WSH_PARSE = "ParseScriptText failed"
_MONO_ENTER_RE = re.compile(r"\] ENTER: (?!\(wrapper)([^ (]{1,300}):([^ (:]{1,200}) \(")
_MONO_BAD = ("File does not contain a valid CIL image", "Cannot open assembly", "is not a valid Win32 application")
_MONO_MISSING = ("The assembly mscorlib.dll was not found", "Missing method", "Could not load file or assembly")

#: a host's exit codes that say it did not take the file (msiexec: ERROR_INSTALL_PACKAGE_OPEN_FAILED 1619,
#: ERROR_INSTALL_PACKAGE_INVALID 1620; the sandbox sees the low byte)
MSI_REJECTED = {1619 & 255: "the package could not be opened (1619)", 1620 & 255: "not a valid installer package (1620)"}
#: the programs whose open() of the sample proves a "document" launcher read it
DOCUMENT_READERS = frozenset({"soffice.bin"})
#: the engines a Wine script host loads for a script file
SCRIPT_ENGINES = ("jscript.dll", "vbscript.dll")


@dataclass(frozen=True)
class Execution:
    """What the result says about running the sample (C1's ``executed`` and ``execution``)."""

    executed: bool
    launcher: str
    proof: str = ""
    reason: str = ""

    def to_dict(self) -> dict[str, str]:
        return {"launcher": self.launcher, "proof": self.proof[:MAX_REASON], "reason": self.reason[:MAX_REASON]}


def not_run(launcher: str, reason: str) -> Execution:
    return Execution(False, launcher, "", reason[:MAX_REASON])


def _unescape(s: str) -> str:
    return s.replace("\\\\", "\\")


def _basename_win(path: str) -> str:
    return _unescape(path).replace("/", "\\").rsplit("\\", 1)[-1].lower()


def enable_relay_markers(prefix: str) -> None:
    """Relay tracing with no relay thunks in the prefix at ``prefix`` (its user.reg is the detonation's copy):
    Wine then prints thread starts, TLS callbacks and DllMain calls, the proof that a module's code ran."""
    path = os.path.join(prefix, "user.reg")
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(f'\n[Software\\\\Wine\\\\Debug] 1700000000\n"RelayInclude"="{RELAY_INCLUDE}"\n')


class ProofWatcher:
    """Collects the evidence that the sample ran; :meth:`result` decides."""

    def __init__(self, launcher: str, proof: str, sample_in: str, argv: tuple[str, ...] = (),
                 entry_rva: int | None = None, clr_entry: str = "", has_dllmain: bool = True,
                 exe_of: Callable[[int], str] | None = None, readers: frozenset[str] = DOCUMENT_READERS) -> None:
        self.launcher = launcher
        self.kind = proof
        self.sample_in = sample_in
        self.sample_name = sample_in.rsplit("/", 1)[-1]
        self.sample_base = self.sample_name.lower()  # Wine's paths are compared without case
        self.argv = argv
        self.entry_rva = entry_rva
        self.clr_entry = clr_entry
        self.has_dllmain = has_dllmain
        self.loaded: dict[str, int] = {}  # tid -> base of the sample's module
        self.proof = ""
        self.failure = ""
        self.host_started = False
        self.engines: set[str] = set()
        self.root_pid: int | None = None
        self.root_exit: int | None = None
        self.exec_failed = ""
        self.lines = 0
        self.exe_of = exe_of  # pid (or thread id) -> the program it runs (the monitor's process table)
        self.readers = readers
        self.opened = ""  # "soffice.bin opened /work/x.docm"
        self.viewer_signal = ""  # the reader died of this signal
        self.notes: list[str] = []  # added to the proof (e.g. which macro ran)

    # -- evidence
    def wine_line(self, line: str) -> None:
        self.lines += 1
        if self.proof and self.failure:
            return
        line = line.strip()[:4096]
        m = _LOADED_RE.match(line)
        if m:
            tid, path, base, how = m.groups()
            name = _basename_win(path)
            if name == self.sample_base and how == "native":
                self.loaded[tid] = int(base, 16)
            elif self.kind == "wine_host" and name.endswith(SCRIPT_ENGINES):
                self.engines.add(name.rsplit("\\", 1)[-1])
            return
        if self.kind == "wine_module" and self.loaded and not self.proof:
            m = _START_RE.match(line)
            if m and m.group(1) in self.loaded:
                addr, base = int(m.group(2), 16), self.loaded[m.group(1)]
                where = (f"its entry point {base + self.entry_rva:#x}" if self.entry_rva is not None
                         and addr == base + self.entry_rva else f"{addr:#x}")
                self.proof = f"Wine loaded {self.sample_name} at {base:#x} and started its main thread at {where}"
                return
            m = _TLS_RE.match(line)
            if m and int(m.group(2), 16) in self.loaded.values():
                self.proof = f"Wine loaded {self.sample_name} and called its TLS callback"
                return
        if self.kind == "wine_dll" and not self.proof:
            m = _DLLMAIN_RE.match(line)
            if m and _basename_win(m.group(2)) == self.sample_base:
                self.proof = f"rundll32 loaded {self.sample_name} and called its DllMain (PROCESS_ATTACH)"
                return
            m = _RUNDLL_RE.match(line)
            if m and self.loaded:
                self.proof = f"rundll32 loaded {self.sample_name} and called its export {m.group(2)[:80]}"
                return
        if self.kind == "wine_host":
            if _WSH_PARSE in line and not self.failure:
                status = line.rsplit(":", 1)[-1].strip()[:20]
                self.failure = f"bad format: the script host could not parse the script ({status})"
                return
            if ":Starting thread proc" in line or ":Starting process proc" in line:
                self.host_started = True
        self._failure_line(line)

    def _failure_line(self, line: str) -> None:
        if self.failure or self.proof:
            return
        m = _ERR_RE.match(line)
        if m:
            func, rest = m.groups()
            status = _STATUS_RE.search(rest)
            if func in ("import_dll", "LdrInitializeThunk", "load_wow64_ntdll", "attach_dlls", "process_attach",
                        "load_dll", "build_module") and (status or "not found" in rest):
                code = status.group(1).lower() if status else "c0000135"
                self.failure = f"crash at load: {code} ({func}: {_unescape(rest)[:200]})"
            return
        for fatal in _WINE_FATAL:
            if fatal in line:
                self.failure = f"crash at load: {line[line.index(fatal):][:200]}"
                return
        m = _UNHANDLED_RE.match(line)
        if m and self.kind in ("wine_module", "wine_dll") and not self.proof:
            self.failure = f"crash at load: unhandled exception before the sample's code ran ({m.group(1)[:160]})"

    def stdout_line(self, line: str) -> None:
        if self.kind != "mono" or self.proof:
            return
        m = _MONO_ENTER_RE.search(line[:2048])
        if m and (not self.clr_entry or m.group(2) == self.clr_entry):
            self.proof = f"mono entered the assembly's entry method {m.group(1)}:{m.group(2)}"

    def stderr_line(self, line: str) -> None:
        """The sample's own stderr (native launchers, Mono)."""
        if self.failure or self.proof:
            return
        text = line.strip()[:1024]
        if self.kind == "mono":
            if any(b in text for b in _MONO_BAD):
                self.failure = f"bad format: {text[:200]}"
            elif any(m in text for m in _MONO_MISSING):
                self.failure = f"missing runtime: {text[:200]}"
            elif text.startswith(("Unhandled Exception", "[ERROR] FATAL UNHANDLED EXCEPTION")):
                self.failure = f"crash at load: {text[:200]}"
        elif self.launcher == "python" and text.startswith(("SyntaxError", "IndentationError", "TabError")):
            self.failure = f"bad format: {text[:200]}"

    def event(self, ev: dict[str, Any]) -> None:
        typ = ev.get("type")
        if typ == "exec" and ev.get("src") != "wine":
            argv = [str(a) for a in ev.get("argv") or []]
            if self.root_pid is None and ev.get("ok", True):
                self.root_pid = ev.get("pid") if isinstance(ev.get("pid"), int) else None
            if self.kind in ("process", "viewer") and not self.proof:
                if not ev.get("ok", True):
                    if str(ev.get("path")) == self.sample_in or (self.argv and str(ev.get("path")) == self.argv[0]):
                        self.exec_failed = f"exec {ev.get('path')}: {ev.get('err')}"
                    return
                if str(ev.get("path")) == self.sample_in:
                    self.proof = f"execve {self.sample_in} succeeded"
                elif any(a == self.sample_in or a.endswith("://" + self.sample_in) for a in argv[1:]):
                    self.proof = f"{os.path.basename(str(ev.get('path')))} started with {self.sample_in}"
        elif typ == "exit" and self.root_pid is not None and ev.get("pid") == self.root_pid:
            if isinstance(ev.get("code"), int):
                self.root_exit = ev["code"]
        if self.kind != "document":
            return
        if typ == "file" and ev.get("op") in ("read", "write") and ev.get("ok", True) and not self.opened and str(
                ev.get("path")) == self.sample_in:
            exe = self._exe(ev.get("pid"))
            if exe in self.readers:
                self.opened = f"{exe} opened {self.sample_in}"
        elif typ == "exit" and ev.get("signal") and self._exe(ev.get("pid")) in self.readers and not self.viewer_signal:
            self.viewer_signal = str(ev.get("signal"))[:20]

    def _exe(self, pid: Any) -> str:
        if self.exe_of is None or not isinstance(pid, int):
            return ""
        return os.path.basename(self.exe_of(pid) or "")

    def document_loaded(self, detail: str) -> None:
        """The viewer's own report that its filter loaded the document (LibreOffice's profile hook)."""
        if self.kind == "document" and self.opened and not self.proof:
            self.proof = f"{self.opened} and loaded it{(' (' + detail[:120] + ')') if detail else ''}"

    def viewer_report(self, ok: bool, detail: str) -> None:
        """A viewer driver's own account (the browser driver's report): it rendered the file, or why not."""
        if self.kind != "browser" or self.proof:
            return
        if ok:
            self.proof = detail[:MAX_REASON]
        elif not self.failure:
            self.failure = detail[:MAX_REASON]

    def note(self, text: str) -> None:
        """More about the run, appended to the proof (what macro ran)."""
        if text and text not in self.notes and len(self.notes) < 5:
            self.notes.append(text[:200])

    # -- the decision
    def result(self, launch_error: str = "") -> Execution:
        if self.proof:
            return Execution(True, self.launcher, "; ".join([self.proof] + self.notes))
        if self.kind == "wine_host" and not self.failure:
            code = self.root_exit
            if self.launcher == "wine_msi" and code in MSI_REJECTED:
                return not_run(self.launcher, f"bad format: msiexec: {MSI_REJECTED[code]}")
            if self.launcher == "wine_wsh" and self.host_started and not self.engines:
                return not_run(self.launcher, "bad format: wscript loaded no script engine for the file")
            if self.host_started:
                host = {"wine_msi": "msiexec", "wine_cmd": "cmd", "wine_wsh": "wscript"}.get(self.launcher, "host")
                engines = f" ({', '.join(sorted(self.engines))} loaded)" if self.engines else ""
                return Execution(True, self.launcher, f"{host} ran the file{engines}")
        if self.failure:
            return not_run(self.launcher, self.failure)
        if launch_error:
            return not_run(self.launcher, f"launcher error: {launch_error}")
        if self.exec_failed:
            return not_run(self.launcher, f"bad format: {self.exec_failed}")
        if self.kind == "wine_module":
            if self.loaded:
                return not_run(self.launcher, f"crash at load: Wine loaded {self.sample_name} but never started it")
            return not_run(self.launcher, f"crash at load: Wine never loaded {self.sample_name}")
        if self.kind == "wine_dll":
            if self.loaded and not self.has_dllmain:
                return Execution(True, self.launcher, f"rundll32 loaded {self.sample_name} (it has no DllMain)")
            return not_run(self.launcher, f"crash at load: rundll32 never called into {self.sample_name}")
        if self.kind == "mono":
            return not_run(self.launcher, "crash at load: mono never entered the assembly's entry method")
        if self.kind == "browser":
            return not_run(self.launcher, "launcher error: the browser driver wrote no report")
        if self.kind == "document":
            name = self.sample_name
            if self.viewer_signal:
                return not_run(self.launcher, f"crash at load: soffice.bin died of {self.viewer_signal} "
                                              f"{'while loading' if self.opened else 'before it opened'} {name}")
            if self.opened:
                return not_run(self.launcher, f"bad format: LibreOffice opened {name} but no import filter loaded it")
            return not_run(self.launcher, f"launcher error: LibreOffice never opened {name}")
        if self.kind == "wine_host":
            return not_run(self.launcher, "launcher error: the Wine script host never started")
        return not_run(self.launcher, "launcher error: the sample was never started")
