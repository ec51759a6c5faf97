"""Detonate one file inside the guest: the entry point the guest agent calls.

Standard library only (runs inside the guest, as root).

:func:`detonate` picks a launcher (:mod:`~mailvm.guest.launcher`), runs the
sample in a :class:`~mailvm.guest.sandbox.Sandbox` with a simulated internet
(:mod:`~mailvm.guest.fakenet`), tails the behaviour trace
(:mod:`~mailvm.guest.monitor`, :mod:`~mailvm.guest.wine`) while the sample
runs, evaluates the rules (:mod:`~mailvm.guest.rules`) on every event, and
stops at the first of:

* ``malicious``: a conclusive finding (score 9 or more) when ``stop_on_malicious``;
* ``exited_idle``: every process of the sample has exited (or only the
  launcher's helper processes, e.g. wineserver, remain and nothing happened for
  ``idle_s``);
* ``timeout``: ``timeout_s`` elapsed (finding ``timed_out``);
* ``error``: the host asked for the slot back (``should_stop()``), or the
  sandbox failed.

It never raises: internal errors become the verdict ``error`` with an
``agent_error`` finding.  The result dict is JSON-able and goes back to the
host on the shared page.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import queue
import subprocess
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any, Callable

from mailvm.guest import browser, docrules, execproof, monoreg, office, warmclient, winearch, wine
from mailvm.guest.execproof import Execution, ProofWatcher
from mailvm.guest.launcher import BROWSER_DIR_IN, HOME_IN, HOSTNAME, WORK_IN, Launch, SampleInfo, choose, find_tool
from mailvm.guest.monitor import JsonLinesMonitor, StraceMonitor
from mailvm.guest.rules import RULES, RuleContext, RuleEngine, prog_name, quiet
from mailvm.guest.sandbox import INIT_MARKER, Limits, Sandbox, SandboxError
from mailvm.verdict import ERROR, Finding, score_findings

log = logging.getLogger(__name__)

SCHEMA = 1
SOURCE = "detonation"
CONCLUSIVE_SCORE = 9
SUSPICIOUS_SCORE = 4
POLL_S = 0.05
KINDS = ("executable", "script", "office", "pdf", "html", "lnk", "disk_image", "unknown")
MAX_TIMEOUT_S = 3600.0
MAX_LOG_EVENTS = 100_000
OUTPUT_PREVIEW = 2048
RESERVED_LOG_SLOTS = 3  # the truncation marker and the two output previews
MAX_TRACE_BYTES = 256 << 20  # strace output beyond this stops the detonation (a syscall flood fills disks)
FINAL_DRAIN_S = 5.0
#: per-type caps inside the log, so a fork bomb cannot crowd out everything else
TYPE_CAPS = {"fork": 300, "exit": 300, "clone_failed": 50, "file": 1000, "image": 200, "mmap_exec": 50,
             "reg_set": 300, "kill": 100, "sleep": 100, "dns": 300, "tcp": 300}
QUIET_READ_PREFIXES = ("/usr/", "/lib", "/etc/", "/proc/", "/dev/", "/sys/devices/system/cpu", "/bin/", "/sbin/")


@dataclass(frozen=True)
class Options:
    """Validated detonation options (anything missing or invalid gets its default)."""

    name: str = ""
    type: str = ""
    kind: str = "unknown"
    timeout_s: float = 60.0
    idle_s: float = 3.0
    stop_on_malicious: bool = True
    launcher: str = ""
    max_log_events: int = 2000


def parse_options(raw: Any) -> Options:
    """Options from the host's JSON: strict types, bounded numbers, defaults otherwise."""
    d = raw if isinstance(raw, dict) else {}
    default = Options()

    def text(key: str, limit: int) -> str:
        v = d.get(key)
        return v[:limit] if isinstance(v, str) else getattr(default, key)

    def number(key: str, lo: float, hi: float) -> float:
        v = d.get(key)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or v != v or not lo <= v <= hi:
            return getattr(default, key)
        return float(v)

    kind = text("kind", 32).lower()
    stop = d.get("stop_on_malicious")
    max_log = d.get("max_log_events")
    return Options(
        name=text("name", 255),
        type=text("type", 255),
        kind=kind if kind in KINDS else "unknown",
        timeout_s=number("timeout_s", 1, MAX_TIMEOUT_S),
        idle_s=number("idle_s", 0.1, 600),
        stop_on_malicious=stop if isinstance(stop, bool) else default.stop_on_malicious,
        launcher=text("launcher", 64),
        max_log_events=max_log if isinstance(max_log, int) and not isinstance(max_log, bool)
        and 10 <= max_log <= MAX_LOG_EVENTS else default.max_log_events,
    )


class EventLog:
    """The behaviour log sent to the host: noise dropped, per-type and total caps, drops counted.

    The sample's own events come first.  Until the proof of execution arrives
    (:attr:`proof_t`, set by the detonation) an event belongs to the start-up
    (Wine's wineboot, services, DLL loads, the runtime's own files); once the
    log is full, a later event of the sample evicts the oldest start-up event
    that no rule matched.  :meth:`finish` orders the log by importance: the
    summary events (``sandbox``, ``wine``, ``execution``), the events a rule
    matched, the sample's events after the proof, its output, then what is left
    of the start-up; each part in time order (every event carries ``t``).  The
    host keeps the first entries, so an administrator sees the sample, not
    Wine starting.
    """

    def __init__(self, max_events: int, quiet_prefixes: tuple[str, ...] = ()) -> None:
        self.max_events = max_events
        self.quiet_prefixes = quiet_prefixes
        self.meta: list[dict[str, Any]] = []
        self.startup: list[dict[str, Any]] = []  # before the proof, no rule matched: evictable
        self.events: list[dict[str, Any]] = []  # matched, or after the proof
        self.output: list[dict[str, Any]] = []
        self.per_type: Counter = Counter()
        self.dropped = 0
        self.proof_t: float | None = None

    def __len__(self) -> int:
        return len(self.meta) + len(self.startup) + len(self.events) + len(self.output)

    def is_noise(self, ev: dict[str, Any], matched: bool) -> bool:
        if matched:
            return False
        typ = ev.get("type")
        if typ == "file":
            path = str(ev.get("path", ""))
            if quiet(path, self.quiet_prefixes):
                return True
            if ev.get("op") in ("read", "probe"):
                return path.startswith(QUIET_READ_PREFIXES) or path.startswith(WORK_IN + "/") or not path.startswith(
                    HOME_IN)
        if typ == "connect" and ev.get("family") == "unix" and not ev.get("ok", True):
            return True  # nscd, dbus probes
        if typ == "image":
            path = str(ev.get("path", ""))
            return ev.get("src") == "wine" and not ev.get("native") or path.startswith(("/usr/", "/lib"))
        if typ == "reg_set" and ev.get("src") == "wine_trace":
            return True
        if typ == "reg_delete":
            return True
        return False

    def _sample_phase(self, ev: dict[str, Any]) -> bool:
        t = ev.get("t")
        return self.proof_t is not None and isinstance(t, (int, float)) and t >= self.proof_t

    def add(self, ev: dict[str, Any], matched: list[str]) -> None:
        if self.is_noise(ev, bool(matched)):
            return
        typ = str(ev.get("type"))
        cap = TYPE_CAPS.get(typ)
        room = self.max_events - RESERVED_LOG_SLOTS
        important = bool(matched) or self._sample_phase(ev)
        if cap is not None and self.per_type[typ] >= cap and not matched:
            if not (important and self._evict(typ)):
                self.dropped += 1
                return
        if len(self) >= room and not (important and self._evict(None)):
            self.dropped += 1
            return
        self.per_type[typ] += 1
        if matched:
            ev = dict(ev, rules=matched)
        (self.events if important else self.startup).append(ev)

    def _evict(self, typ: str | None) -> bool:
        """Drop the oldest start-up event (of ``typ`` when given); False when there is none."""
        for k, old in enumerate(self.startup):
            if typ is None or old.get("type") == typ:
                del self.startup[k]
                self.per_type[str(old.get("type"))] -= 1
                self.dropped += 1
                return True
        return False

    def add_meta(self, ev: dict[str, Any]) -> None:
        """A summary event (the sandbox, Wine's state, the execution record): always kept, listed first."""
        if len(self.meta) < RESERVED_LOG_SLOTS + 5:
            self.meta.append(ev)

    def add_output(self, ev: dict[str, Any]) -> None:
        """The sample's output: kept in the slots reserved for it."""
        if len(self) < self.max_events - 1:
            self.output.append(ev)

    def finish(self, proof_t: float | None = None) -> list[dict[str, Any]]:
        if proof_t is not None:
            self.proof_t = proof_t
        by_t = (lambda e: e.get("t", 0.0) if isinstance(e.get("t"), (int, float)) else 0.0)
        matched = [e for e in self.events if e.get("rules")]
        after = [e for e in self.events if not e.get("rules")]
        out = (self.meta + sorted(matched, key=by_t) + sorted(after, key=by_t) + self.output
               + sorted(self.startup, key=by_t))
        if self.dropped:
            last = max((by_t(e) for e in out), default=0.0)
            out.append({"t": last, "type": "log_truncated", "dropped": self.dropped})
        return out


def _size(path: str) -> int:
    try:
        return os.stat(path).st_size
    except OSError:
        return 0


def _result(verdict: str, score: int, findings: list[Finding], log_events: list[dict[str, Any]], duration: float,
            stopped: str, launcher: str, counts: dict[str, int], execution: Execution | None = None) -> dict[str, Any]:
    """The result dict; ``execution`` (contract C1) says whether the sample ran (None: it did not, the
    detonation failed before it could)."""
    ex = execution or execproof.not_run(launcher, "launcher error: the detonation failed before the sample ran")
    return {"schema": SCHEMA, "verdict": verdict, "score": score, "findings": [f.to_dict() for f in findings],
            "log": log_events, "duration_s": round(duration, 3), "stopped": stopped, "launcher": launcher,
            "events": dict(counts), "executed": ex.executed, "execution": ex.to_dict()}


def not_executed_finding(execution: Execution) -> Finding:
    return Finding("not_executed", 0, execution.reason or "the sample did not run", SOURCE)


def detonate(sample_path: str, options: dict, workdir: str,
             should_stop: Callable[[], bool] | None = None, warm: warmclient.WarmSandbox | None = None) -> dict:
    """Run ``sample_path`` in the sandbox and return the result dict (never raises).

    A Wine job goes to the warm Wine sandbox when ``warm`` is given (the warm
    daemon itself) or when :data:`~mailvm.guest.warmclient.SOCKET_ENV` names the
    socket of one (set by the VM's ``mailvm-init`` only); otherwise, or when
    that daemon cannot take it, it runs cold in a fresh sandbox.
    """
    t_start = time.monotonic()
    try:
        opts = parse_options(options)
        if warm is None and os.environ.get(warmclient.SOCKET_ENV):
            remote = _run_warm(sample_path, options, opts, workdir, should_stop)
            if remote is not None:
                return remote
        return Detonation(sample_path, opts, workdir, should_stop, warm=warm).run()
    except Exception as exc:  # the agent must always answer the host
        log.exception("detonation failed")
        finding = Finding("agent_error", 0, f"{type(exc).__name__}: {exc}"[:400], SOURCE)
        ex = execproof.not_run("", f"launcher error: the agent failed ({type(exc).__name__})")
        return _result(ERROR, 0, [finding, not_executed_finding(ex)], [], time.monotonic() - t_start, "error", "",
                       {}, ex)


def _run_warm(sample_path: str, raw_options: dict, opts: Options, workdir: str,
              should_stop: Callable[[], bool] | None) -> dict | None:
    """A Wine job through the warm daemon's socket; None when it is not a Wine job or the daemon cannot take it."""
    info = SampleInfo.from_file(sample_path, opts.name or os.path.basename(sample_path), opts.type, opts.kind,
                                opts.launcher)
    launch, _ = choose(info, WORK_IN + "/" + info.name)
    if launch is None or launch.prepare != "wine":
        return None
    try:
        return warmclient.run_remote(os.environ[warmclient.SOCKET_ENV], sample_path, raw_options, workdir, should_stop)
    except warmclient.WarmError as exc:
        log.error("%s; running it cold", exc)
        return None


class Detonation:
    """One run of :func:`detonate` (state shared by its steps)."""

    def __init__(self, sample_path: str, opts: Options, workdir: str,
                 should_stop: Callable[[], bool] | None, limits: Limits = Limits(),
                 warm: warmclient.WarmSandbox | None = None) -> None:
        self.warm = warm
        self.sample_path = sample_path
        self.opts = opts
        self.workdir = workdir
        self.should_stop = should_stop
        self.limits = limits
        self.t_start = time.monotonic()
        self.counts: Counter = Counter()
        self.log = EventLog(opts.max_log_events)
        self.extra: list[Finding] = []
        self.stderr_events: queue.Queue = queue.Queue(maxsize=50_000)
        self.t0 = 0.0
        self.wine_state: dict[str, Any] = {}  # the "wine" log event: warm or cold, prefix time
        self.info: SampleInfo | None = None
        self.proof: ProofWatcher | None = None
        self.proof_t: float | None = None  # when the proof arrived (seconds from t0): the log's priority split
        self.launcher_starts: Counter = Counter()  # Windows programs the launcher starts (not the sample's doing)
        self.helper_argv: frozenset[tuple[str, ...]] = frozenset()
        self.helper_pids: set[int] = set()  # processes the viewer started by itself (and their children)
        self.helper_ips: set[str] = set()  # fake addresses of the viewer's own service hosts
        self.office: OfficeRun | None = None
        self.browser: BrowserRun | None = None
        self.screenshots: list[dict[str, Any]] = []

    # -- the whole run
    def run(self) -> dict[str, Any]:
        o = self.opts
        info = SampleInfo.from_file(self.sample_path, o.name or os.path.basename(self.sample_path), o.type, o.kind,
                                    o.launcher)
        sample_in = WORK_IN + "/" + info.name
        self.info = info
        launch, reason = choose(info, sample_in)
        if launch is None:
            ex = execproof.not_run("", reason)
            findings = [Finding("no_launcher", 0, reason, SOURCE), not_executed_finding(ex)]
            verdict, score = score_findings(findings)
            return _result(verdict, score, findings, [], self.elapsed(), "exited_idle", "", {}, ex)
        log.info("detonating %s with %s%s", info.name, reason, " (warm Wine)" if self._warm(launch) else "")
        if self._warm(launch):
            assert self.warm is not None and self.warm.box is not None
            return self._run_in(self.warm.box, launch, sample_in)  # the warm daemon closes its box
        try:
            binds = (os.path.realpath(wine.template_path()),) if launch.prepare == "wine" else ()
            with Sandbox(self.workdir, self.limits, ro_binds=binds) as box:
                return self._run_in(box, launch, sample_in)
        except SandboxError as exc:
            log.error("sandbox: %s", exc)
            ex = execproof.not_run(launch.launcher, f"launcher error: sandbox: {exc}")
            findings = [Finding("sandbox_error", 0, str(exc)[:400], SOURCE), not_executed_finding(ex)]
            return _result(ERROR, 0, findings, [], self.elapsed(), "error", launch.launcher, {}, ex)

    def _warm(self, launch: Launch) -> bool:
        return self.warm is not None and self.warm.box is not None and launch.prepare == "wine"

    def elapsed(self) -> float:
        return time.monotonic() - self.t_start

    def _prepare(self, box: Sandbox, launch: Launch) -> str:
        """Launcher-specific HOME set-up; returns the host path of a Wine prefix ("" otherwise)."""
        if launch.prepare == "wine":
            wine_bin = find_tool("wine64") or find_tool("wine")
            if wine_bin is None:
                raise SandboxError("wine disappeared")
            template = wine.template_path()
            prefix = os.path.join(box.home, ".wine")
            t0 = time.monotonic()
            shipped = os.path.isfile(os.path.join(template, "system.reg"))
            try:
                winearch.ensure_template(template, wine_bin)
                wine.prepare_prefix(template, prefix, box.uid, box.uid)
                execproof.enable_relay_markers(prefix)
            except (OSError, subprocess.SubprocessError) as exc:
                raise SandboxError(f"Wine prefix: {exc}") from exc
            self.wine_state = {"type": "wine", "warm": False, "prefix": "copied" if shipped else "created",
                               "prefix_s": round(time.monotonic() - t0, 3)}
            return prefix
        if launch.prepare == "libreoffice":
            self.office = OfficeRun(box.home, office.external_targets(self.sample_path))
            office.write_profile(box.home, box.uid, self.office.targets)
        if launch.prepare == "chromium":
            self.browser = BrowserRun(box.home)
            self.browser.stage(box.uid)
        return ""

    def _run_in(self, box: Sandbox, launch: Launch, sample_in: str) -> dict[str, Any]:
        o = self.opts
        warm = self.warm if self._warm(launch) else None
        if warm is not None:
            prefix = warm.prefix
            self.wine_state = warm.state()
        else:
            prefix = self._prepare(box, launch)
        reg_before = wine.snapshot_registry(prefix) if prefix else {}
        mono = launch.launcher == "dotnet_mono"
        mono_before = monoreg.snapshot(box.home) if mono else {}
        self.launcher_starts = Counter(launch.started_programs)
        box.stage(self.sample_path, sample_in.rsplit("/", 1)[1], launch.make_executable)
        ctx = RuleContext(sample_path=sample_in, launcher=launch.launcher, role=launch.role, platform=launch.platform,
                          viewer_exes=launch.viewer_exes, quiet_prefixes=launch.quiet_prefixes,
                          decoys=tuple(box.decoys), nproc_limit=self.limits.nproc,
                          ignore_names=frozenset({"localhost", HOSTNAME}))
        self.log.quiet_prefixes = launch.quiet_prefixes
        self.helper_argv = launch.helper_argv
        self.launch = launch
        engine = RuleEngine(ctx, RULES + self._extra_rules(launch))
        self.t0 = time.time()
        strace = warm.monitor(self.t0) if warm is not None else StraceMonitor(box.strace_log, INIT_MARKER, self.t0)
        strace.builder.initial_cwd = WORK_IN
        net = JsonLinesMonitor(box.fakenet_log, self.t0)
        if warm is not None:
            net.tail.offset = _size(box.fakenet_log)  # the warm-up's own lines (none expected) are not the sample's
        parser = wine.WineTraceParser() if launch.platform == "windows" else None
        pe = self.info.pe if self.info is not None else None
        self.proof = ProofWatcher(launch.launcher, launch.proof, sample_in, launch.argv,
                                  entry_rva=pe.entry_rva if pe else None, clr_entry=pe.clr_entry if pe else "",
                                  has_dllmain=bool(pe.entry_rva) if pe else True, exe_of=strace.builder.exe_of)
        if warm is not None:
            warm.launch(launch.argv, launch.env, self._stderr_handler(parser), self._stdout_handler())
        else:
            box.start(launch.argv, launch.env, launch.unlimited_address_space,
                      on_stderr_line=self._stderr_handler(parser), cpu_s=int(o.timeout_s) + 30,
                      on_stdout_line=self._stdout_handler())
        self.log.add_meta({"t": 0.0, "type": "sandbox", "launcher": launch.launcher, "argv": list(launch.argv),
                           "network": box.net_detail,
                           "cgroups": list(box.cgroups.controllers) if box.cgroups else [],
                           "degraded": list(box.degraded)})
        if self.wine_state:
            self.log.add_meta(dict(self.wine_state, t=0.0))
        started = time.monotonic()
        last_activity = started
        began = False
        stopped = ""
        while not stopped:
            time.sleep(POLL_S)
            exited = box.exited() if warm is None else self._warm_job_exited(strace, launch)
            batch = self._collect(strace, net)
            if self.office is not None and self.office.poll():
                last_activity = time.monotonic()
                self._office_progress()
            if batch:
                last_activity = time.monotonic()
            if self._feed(engine, batch) and o.stop_on_malicious:
                stopped = "malicious"
                break
            if exited:
                time.sleep(POLL_S)  # let fakenet finish logging the last connection
                if self._feed(engine, self._collect(strace, net)) and o.stop_on_malicious:
                    stopped = "malicious"
                else:
                    stopped = "exited_idle"
                break
            if self._aborted():
                stopped = "error"
                self.extra.append(Finding("detonation_aborted", 0, "the host asked for the slot back", SOURCE))
                break
            now = time.monotonic()
            if now - started >= o.timeout_s:
                stopped = "timeout"
                self.extra.append(Finding("timed_out", 0, f"still running after {o.timeout_s:g} s", SOURCE))
                break
            if not began and strace.builder.sample_began:
                # the idle clock starts with the sample, not with the sandbox's own start-up (seconds under TCG)
                began = True
                last_activity = now
            if began and now - last_activity >= o.idle_s and not self._working(strace, launch) and not (
                    self.office is not None and self.office.busy(box.exited(), now - last_activity)):
                stopped = "exited_idle"
                break
            if _size(box.strace_log) > MAX_TRACE_BYTES:
                stopped = "timeout"
                self.extra.append(Finding("trace_truncated", 0, f"behaviour trace passed {MAX_TRACE_BYTES >> 20} MiB",
                                          SOURCE))
                break
        leftover = box.stop(graceful=("wineserver",) if prefix else ())
        if leftover:
            self.extra.append(Finding("sandbox_leftover", 0, f"{leftover} processes killed by the final sweep",
                                      SOURCE))
        box.stop_network()  # logs the connections made in the last moments, read by the drain below
        ooms = box.oom_kills()
        if ooms:
            self._feed(engine, [{"t": round(time.time() - self.t0, 4), "type": "oom_kill", "count": ooms,
                                 "limit": self.limits.memory}])
        deadline = time.monotonic() + FINAL_DRAIN_S  # the rest of the trace (bounded: a flood may have outrun us)
        while time.monotonic() < deadline and strace.tail.offset <= MAX_TRACE_BYTES:
            batch = self._collect(strace, net)
            if not batch:
                break
            self._feed(engine, batch)
        if prefix:
            self._feed(engine, [dict(ev, t=round(time.time() - self.t0, 4))
                                for ev in wine.diff_registry(reg_before, wine.snapshot_registry(prefix))])
        if mono:
            self._feed(engine, [dict(ev, t=round(time.time() - self.t0, 4))
                                for ev in monoreg.diff(mono_before, monoreg.snapshot(box.home))])
        if self.browser is not None:
            evs = self.browser.finish(self.proof, round(time.time() - self.t0, 4))
            self._proved()
            self._feed(engine, evs)
            self.screenshots = self.browser.screenshots
        if self.office is not None:
            self.office.poll(force=True)
            self._office_progress()
            self.extra += self.office.findings(self.sample_path, self.proof, score_findings(engine.findings())[1])
        launch_error = self._launch_problems(box, strace)
        execution = self.proof.result(launch_error)
        if not execution.executed:
            self.extra.append(not_executed_finding(execution))
        self.log.add_meta({"t": round(time.time() - self.t0, 4), "type": "execution",
                           "executed": execution.executed, **execution.to_dict()})
        findings = engine.findings() + self.extra
        verdict, score = score_findings(findings)
        if stopped == "error" and score < 4:
            verdict = ERROR
        self._add_output(box, launch)
        counts = dict(self.counts)
        if strace.lines_dropped:
            counts["trace_lines_dropped"] = strace.lines_dropped
        if self.log.dropped:
            counts["log_dropped"] = self.log.dropped
        res = _result(verdict, score, findings, self.log.finish(self.proof_t), self.elapsed(), stopped,
                      launch.launcher, counts, execution)
        if self.screenshots:
            res["screenshots"] = self.screenshots
        return res

    # -- helpers
    def _proved(self) -> None:
        if self.proof_t is None and self.proof is not None and self.proof.proof:
            self.proof_t = round(time.time() - self.t0, 4)
            self.log.proof_t = self.proof_t

    def _stdout_handler(self) -> Callable[[str], None]:
        def on_line(line: str) -> None:
            if self.proof is not None:
                self.proof.stdout_line(line)
                self._proved()
        return on_line

    def _stderr_handler(self, parser: wine.WineTraceParser | None) -> Callable[[str], None]:
        def on_line(line: str) -> None:
            if self.proof is not None:
                if parser is not None:
                    self.proof.wine_line(line)
                else:
                    self.proof.stderr_line(line)
                self._proved()
            if parser is None:
                return
            for ev in parser.feed(line):
                ev["t"] = round(time.time() - self.t0, 4)
                try:
                    self.stderr_events.put_nowait(ev)
                except queue.Full:
                    self.counts["wine_events_dropped"] += 1
        return on_line

    def _collect(self, strace: StraceMonitor, net: JsonLinesMonitor) -> list[dict[str, Any]]:
        # strace first: a connect in the trace implies the DNS answer before it is already in fakenet's log
        batch = strace.poll()
        batch += net.poll()
        while True:
            try:
                batch.append(self.stderr_events.get_nowait())
            except queue.Empty:
                break
        batch.sort(key=lambda e: e.get("t", 0.0))
        return batch

    def _feed(self, engine: RuleEngine, batch: list[dict[str, Any]]) -> bool:
        """Rules over a batch; True once the findings are conclusive."""
        for ev in batch:
            self.counts[str(ev.get("type"))] += 1
            if self.proof is not None:
                self.proof.event(ev)
                self._proved()
            if self._launcher_start(ev) or self._viewer_helper(ev):
                self.log.add(dict(ev, launcher=True), [])
                continue
            if self.office is not None:
                self.office.event(ev)
            before = dict(engine.counts)
            engine.feed(ev)
            matched = [rid for rid, n in engine.counts.items() if n != before.get(rid, 0)]
            self.log.add(ev, matched)
        if not batch:
            return False
        _, score = score_findings(engine.findings())
        return score >= CONCLUSIVE_SCORE

    def _launcher_start(self, ev: dict[str, Any]) -> bool:
        """Is ``ev`` Wine creating a process the launcher asked for (rundll32.exe for a DLL, wscript.exe for a
        script, the sample itself)?  Each counts once per launcher command; the rules never see them."""
        if ev.get("type") != "exec" or ev.get("src") != "wine":
            return False
        name = str(ev.get("path", "")).replace("\\", "/").rsplit("/", 1)[-1].lower()
        if self.launcher_starts[name] > 0:
            self.launcher_starts[name] -= 1
            return True
        return False

    def _viewer_helper(self, ev: dict[str, Any]) -> bool:
        """Is ``ev`` from a program the viewer runs by itself (LibreOffice's gpg probes), or such a program's
        start?  Matched on the exact command line; its later events and children belong to it too."""
        if self._viewer_noise(ev):
            return True
        pid = ev.get("pid")
        if not isinstance(pid, int):
            return False
        if pid in self.helper_pids:
            if ev.get("type") == "fork" and isinstance(ev.get("child"), int) and len(self.helper_pids) < 1000:
                self.helper_pids.add(ev["child"])
            return True
        if ev.get("type") == "exec" and self.helper_argv and ev.get("ok", True) and tuple(
                str(a) for a in ev.get("argv") or ()) in self.helper_argv:
            self.helper_pids.add(pid)
            return True
        return False

    def _viewer_noise(self, ev: dict[str, Any]) -> bool:
        """The viewer's own background traffic and machine probes (Launch.helper_hosts/dsts/reads)."""
        launch = getattr(self, "launch", None)
        if launch is None or not (launch.helper_hosts or launch.helper_dsts or launch.helper_reads):
            return False
        typ = ev.get("type")
        if typ == "dns":
            name = str(ev.get("name", "")).lower().rstrip(".")
            if name in launch.helper_hosts:
                if ev.get("answer") and len(self.helper_ips) < 100:
                    self.helper_ips.add(str(ev["answer"]))
                return True
            return False
        if typ in ("http", "tls"):
            host = str(ev.get("host") or ev.get("sni") or "").split(":", 1)[0].lower().rstrip(".")
            return host in launch.helper_hosts or str(ev.get("ip", "")) in self.helper_ips
        if typ in ("connect", "tcp", "sendto", "udp"):
            return str(ev.get("dst", "")) in launch.helper_dsts or str(ev.get("ip", "")) in self.helper_ips
        if typ == "file" and ev.get("op") in ("read", "probe") and launch.helper_reads:
            return str(ev.get("path", "")).startswith(launch.helper_reads)
        return False

    def _extra_rules(self, launch: Launch) -> tuple:
        if launch.prepare == "libreoffice":
            return docrules.office_rules(self.office.targets if self.office else ())
        if launch.prepare == "chromium":
            return docrules.browser_rules()
        return ()

    def _office_progress(self) -> None:
        assert self.office is not None and self.proof is not None
        if self.office.trace.loaded:
            self.proof.document_loaded(self.office.trace.filter)
            self._proved()

    def _aborted(self) -> bool:
        if self.should_stop is None:
            return False
        try:
            return bool(self.should_stop())
        except Exception as exc:
            log.warning("should_stop() failed: %r", exc)
            return False

    def _warm_job_exited(self, strace: StraceMonitor, launch: Launch) -> bool:
        """A warm box never exits by itself (its wineserver is persistent): the job has ended when its
        init has (after its children) and none of the sample's processes but Wine's helpers is left."""
        exited = getattr(strace, "job_exited", None)
        return bool(exited and exited()) and not self._working(strace, launch)

    @staticmethod
    def _working(strace: StraceMonitor, launch: Launch) -> bool:
        """Is any process of the sample alive that is not one of the launcher's helpers?"""
        b = strace.builder
        for pid in b.alive_sample_pids():
            p = b.procs[pid]
            names = {prog_name(p.exe)} | {prog_name(a) for a in p.argv[:2]}
            if not names & launch.helper_exes:
                return True
        return False

    def _launch_problems(self, box: Sandbox, strace: StraceMonitor) -> str:
        """``launch_failed`` findings; the launcher error for the execution record ("" when none)."""
        _, err = box.output()
        text = err.decode("utf-8", "replace")
        if "mailvm-init: exec" in text:
            line = text[text.index("mailvm-init: exec"):].split("\n", 1)[0]
            self.extra.append(Finding("launch_failed", 0, line[:300], SOURCE))
            return line[:300]
        if not strace.builder.started:
            detail = "the sandbox never started the sample: " + text.strip()[-300:]
            self.extra.append(Finding("launch_failed", 0, detail, SOURCE))
            return detail
        return ""

    def _add_output(self, box: Sandbox, launch: Launch) -> None:
        out, err = box.output()
        streams = [("stdout", out)] + ([] if launch.platform == "windows" else [("stderr", err)])
        for name, data in streams:
            if data:
                self.log.add_output({"t": round(time.time() - self.t0, 4), "type": "output", "stream": name,
                                     "text": data[:OUTPUT_PREVIEW].decode("utf-8", "replace")})


class OfficeRun:
    """A document in LibreOffice: the profile hook's trace, the macro evidence, the findings that say who decides."""

    POLL_S = 0.25
    #: a document not loaded after this long without any event is not going to load (an error dialog that
    #: headless LibreOffice answered, a filter that hangs)
    LOAD_IDLE_S = 10.0

    def __init__(self, home: str, targets: list[office.ExternalTarget]) -> None:
        self.home = home
        self.targets = targets
        self.trace = office.OfficeTrace()
        self.size = -1
        self.last_poll = 0.0
        self.started: list[str] = []  # programs the viewer started (not its own helpers): a macro did it
        self.wrote: list[str] = []  # files the viewer wrote outside its profile, /tmp and the work directory

    def poll(self, force: bool = False) -> bool:
        """Re-read the trace when it grew; True when it did."""
        now = time.monotonic()
        if not force and now - self.last_poll < self.POLL_S:
            return False
        self.last_poll = now
        size = _size(os.path.join(self.home, office.TRACE_REL))
        if size == self.size:
            return False
        self.size = size
        self.trace = office.read_trace(self.home)
        return True

    def busy(self, exited: bool, idle_for: float) -> bool:
        """Keep going: LibreOffice is still loading the document (and did something in the last
        :data:`LOAD_IDLE_S`), or a macro or fetch the hook started is still running."""
        if exited:
            return False
        t = self.trace
        if not t.loaded:
            return idle_for < self.LOAD_IDLE_S
        return bool(t.pending) or (not t.done and not t.error) or any(
            v.endswith("requested") for v in t.fetches.values())

    def event(self, ev: dict[str, Any]) -> None:
        typ = ev.get("type")
        if typ == "exec" and ev.get("ok", True) and ev.get("src") != "wine" and len(self.started) < 10:
            parent = prog_name(str(ev.get("parent_exe") or ""))
            name = prog_name(str(ev.get("path") or ""))
            if parent in VIEWER_PROCS and name not in VIEWER_PROCS:
                self.started.append(" ".join(str(a) for a in (ev.get("argv") or [ev.get("path")]))[:120])

    def evidence(self) -> list[str]:
        """What shows a macro ran: a call of the hook that returned, a program LibreOffice started."""
        t = self.trace
        out = [f"{name} ran (called as Word does on open)" for name in t.returned]
        out += [f"{name} could not be called ({state[7:60]})" for name, state in t.calls.items()
                if state.startswith("error")]
        out += [f"LibreOffice started {cmd}" for cmd in self.started[:3]]
        return out

    def findings(self, sample_path: str, proof: ProofWatcher | None, behaviour_score: int) -> list[Finding]:
        """Which of the two decides on the macros: the detonation (a macro ran and did something the rules
        score as suspicious or worse) or the static analysis (no macro seen to run, or one ran and did nothing
        of note: LibreOffice runs VBA only in part)."""
        t = self.trace
        if not t.loaded:
            return []
        out: list[Finding] = []
        modules = [m for _, m in t.modules]
        present = office.macro_presence(sample_path) or ("vba" if any(k == "vba" for k, _ in t.modules) else
                                                         "basic" if t.modules else "")
        what = {"vba": "a VBA project", "basic": "a Basic library"}.get(present, "macros")
        bound = t.macro_events
        evidence = self.evidence()
        ran = bool(t.returned or self.started)
        if ran:
            text = "; ".join(evidence)
            if behaviour_score >= SUSPICIOUS_SCORE:
                decided = "Decided by: the detonation (what the macros did)"
            else:
                decided = ("they did nothing the sandbox scores (Windows-only objects such as WScript.Shell do not "
                           "exist in LibreOffice). Decided by: the static analysis (oletools) of the macros")
            out.append(Finding("office_macro_run", 0, f"macros ran in LibreOffice: {text}; {decided}", SOURCE))
            if proof is not None:
                proof.note("macro ran: " + text[:160])
        elif present or bound or t.calls:
            extra = f" ({', '.join(modules[:4])})" if modules else ""
            events = f", bound to {', '.join(n for n, _ in bound[:3])}" if bound else ""
            failed = f"; {'; '.join(evidence)}" if evidence else ""
            out.append(Finding("office_macros_not_run", 0,
                               f"the document carries {what}{extra}{events}, but no macro was seen to run in "
                               f"LibreOffice{failed} (its VBA support is partial, a macro may wait for a click). "
                               "Decided by: the static analysis (oletools) of the macros", SOURCE))
            if proof is not None:
                proof.note(f"{what} present, none seen to run: the static analysis decides")
        for url, state in list(t.fetches.items())[:office.MAX_FETCH]:
            out.append(Finding("office_external_fetch", 0, f"followed the document's external {state} <- {url[:200]}",
                               SOURCE))
        return out


#: the office viewer's own processes (a program they start that is none of these is a macro's doing)
VIEWER_PROCS = frozenset({"soffice.bin", "oosplash", "soffice", "libreoffice"})


class BrowserRun:
    """A page in Chromium: the driver staged into the sandbox, its report turned into events and the proof, the
    screenshot carried back in the result (``screenshots``: name, PNG as base64, the page's URL)."""

    MAX_REPORT = 1 << 20
    #: the screenshot travels in the result (the shared page's result area): a larger PNG is left out, said so
    MAX_SCREENSHOT = 1536 * 1024

    def __init__(self, home: str) -> None:
        self.home = home
        self.dir = os.path.join(home, os.path.relpath(BROWSER_DIR_IN, HOME_IN))
        self.screenshots: list[dict[str, Any]] = []

    def stage(self, uid: int) -> None:
        os.makedirs(self.dir, exist_ok=True)
        src = browser.__file__
        dst = os.path.join(self.dir, "browser.py")
        with open(src, "rb") as fh, open(dst, "wb") as out:
            out.write(fh.read())
        for path in (os.path.join(self.home, ".cache"), self.dir, dst):
            os.chown(path, uid, uid)

    def report(self) -> dict[str, Any] | None:
        path = os.path.join(self.dir, "out", browser.RESULT_NAME)
        try:
            with open(path, "rb") as fh:
                data = fh.read(self.MAX_REPORT + 1)
        except OSError:
            return None
        if len(data) > self.MAX_REPORT:
            return None
        try:
            rep = json.loads(data)
        except ValueError:
            return None
        return rep if isinstance(rep, dict) else None

    def finish(self, proof: ProofWatcher | None, t: float) -> list[dict[str, Any]]:
        """The report's events (page, forms, downloads, the screenshot); the proof from the report."""
        rep = self.report()
        if rep is None:
            return []
        events = browser.report_events(rep, t)
        page = events[0]
        if proof is not None:
            if rep.get("loaded"):
                final = f"; final URL {page['url'][:120]}" if page["url"] != page["start"] else ""
                proof.viewer_report(True, f"chromium rendered {str(rep.get('url', ''))[:120]} (load event fired"
                                          f"{final})")
            else:
                why = str(rep.get("error") or "no load event")[:160]
                if "did not start within" in why:
                    proof.viewer_report(False, f"launcher error: {why}")
                else:
                    proof.viewer_report(False, f"crash at load: Chromium did not render the page ({why})")
        shot = rep.get("screenshot")
        if shot == browser.SCREENSHOT_NAME:
            path = os.path.join(self.dir, "out", browser.SCREENSHOT_NAME)
            try:
                size = os.path.getsize(path)
                if size <= self.MAX_SCREENSHOT:
                    with open(path, "rb") as fh:
                        png = fh.read(self.MAX_SCREENSHOT)
                    if png.startswith(b"\x89PNG\r\n\x1a\n"):
                        self.screenshots.append({"name": "page.png", "url": page["url"][:500],
                                                 "png_b64": base64.b64encode(png).decode()})
                events.append({"t": t, "type": "screenshot", "name": "page.png", "bytes": size,
                               "url": page["url"][:500], "kept": bool(self.screenshots)})
            except OSError:
                pass
        return events
