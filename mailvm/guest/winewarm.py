"""A warm Wine sandbox, made in the reference VM before its RAM becomes every clone's memory.

Standard library only (runs inside the guest, as root).

A Windows sample's first Wine run in a fresh prefix pays for wineserver's
start, the session's wineboot (services.exe, winedevice, plugplay...) and
reading Wine's DLLs: seconds under TCG.  A clone is used for one file and
thrown away, so that work can be done once, in the template:

* :class:`WarmWine` opens an ordinary :class:`~mailvm.guest.sandbox.Sandbox`
  (own network namespace with the simulated internet, a uid of its own, bwrap,
  strace outside it) whose payload is a small *waiter* (:data:`WAITER_CODE`)
  instead of the sample.  Through two FIFOs (unlinked once open) the waiter
  starts ``wineserver -p`` and one ``wine64 cmd /c exit`` inside the sandbox:
  wineserver, its session processes and the page cache are warm, all of them in
  the sandbox's namespaces, as the sandbox uid.  wineserver opens files and
  sockets on its clients' behalf, so it must live where the sample lives: it
  does, nothing of Wine runs outside the sandbox.
* For the job, the waiter ``exec``\\ s the ordinary sandbox init carrying
  :data:`~mailvm.guest.sandbox.INIT_MARKER` with the launcher's argv: the
  behaviour trace starts there (:class:`WarmStraceMonitor` skips the warm-up
  part of strace's log and counts the warm wineserver as the sample's, as it is
  in a cold run), the Wine trace channels go to the detonation's stderr reader,
  and the registry diff, fakenet's log and the final kill work as in a cold run.
* :func:`serve` is the daemon PID 1 of the guest starts before the agent
  (``mailvm-init`` waits for its socket, so the template is saved warm); it
  serves one job, then tears the sandbox down.
  :func:`~mailvm.guest.warmclient.run_remote` is the agent's side:
  :func:`mailvm.guest.detonate.detonate` hands a Wine job to the socket named
  by :data:`~mailvm.guest.warmclient.SOCKET_ENV` (set only by ``mailvm-init``:
  the process backend never sees one) and falls back to a cold run when it cannot.

Imports go one way: this daemon runs :func:`mailvm.guest.detonate.detonate`,
which knows the daemon only through :mod:`mailvm.guest.warmclient`.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import socket
import sys
import threading
import time
from typing import Any, Callable

from mailvm.guest import execproof, winearch, wine
from mailvm.guest.detonate import detonate
from mailvm.guest.launcher import WINEPREFIX_IN, WORK_IN, find_tool
from mailvm.guest.monitor import StraceMonitor
from mailvm.guest.sandbox import INIT_CODE, INIT_MARKER, Limits, Sandbox, SandboxError, _cmdline, _state
from mailvm.guest.warmclient import (  # noqa: F401 (re-exported: the client side lives there)
    DEFAULT_SOCKET,
    MAX_REPLY,
    MAX_REQUEST,
    SOCKET_ENV,
    WarmError,
    run_remote,
)

log = logging.getLogger(__name__)

WARM_MARKER = "mailvm-sandbox-warm-init"
CTL_DIR = ".mailvm-warm"
STEP_TIMEOUT_S = 300.0
#: Debian's 32-bit Wine loader (package wine32:i386)
WINE32_LOADER = winearch.WINE32_LOADER
WARM_CPU_S = 3600  # RLIMIT_CPU of the warm sandbox's processes: warm-up and the job's timeout together

#: the warm sandbox's payload (run by its init, as the sandbox uid): read JSON commands from the
#: command FIFO; "run" = fork, exec, wait (bounded), reply {"rc": n}; "exec" = become the job's init.
WAITER_CODE = r"""
import json, os, signal, sys, time
cmd = open(sys.argv[1], "rb")
reply = open(sys.argv[2], "wb", buffering=0)
for line in cmd:
    try:
        c = json.loads(line)
        argv, env = [str(a) for a in c["argv"]], {str(k): str(v) for k, v in c["env"].items()}
    except (ValueError, KeyError, TypeError, AttributeError):
        reply.write(b'{"rc": -1}\n')
        continue
    if c.get("op") == "exec":
        cmd.close()
        reply.close()
        os.execve(argv[0], argv, env)
    t0 = time.monotonic()
    pid = os.fork()
    if pid == 0:
        try:
            os.execve(argv[0], argv, env)
        finally:
            os._exit(127)
    deadline = t0 + float(c.get("timeout", 600))
    while True:
        p, st = os.waitpid(pid, os.WNOHANG)
        if p:
            rc = os.waitstatus_to_exitcode(st)
            break
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            rc = -9
            break
        time.sleep(0.02)
    reply.write(json.dumps({"rc": rc, "s": round(time.monotonic() - t0, 3)}).encode() + b"\n")
"""


def _pid_age_s(pid: int) -> float | None:
    """Seconds since ``pid`` started (from /proc), None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            data = fh.read(1024)
        start_ticks = int(data[data.rfind(b")") + 2:].split()[19])
        with open("/proc/uptime") as fh:
            uptime = float(fh.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return uptime - start_ticks / os.sysconf("SC_CLK_TCK")


def _tasks(pid: int) -> list[int]:
    """The thread ids of ``pid`` (itself at least)."""
    try:
        return sorted({pid} | {int(t) for t in os.listdir(f"/proc/{pid}/task") if t.isdigit()})
    except OSError:
        return [pid]


class WarmStraceMonitor(StraceMonitor):
    """strace's log from the job on: the warm-up's part is skipped, its processes are infrastructure,
    except the warm wineserver, which serves the sample as a cold run's own wineserver would."""

    def __init__(self, path: str, t0: float, infra_pids: list[int], server_pids: list[int]) -> None:
        super().__init__(path, INIT_MARKER, t0)
        try:
            self.tail.offset = os.path.getsize(path)  # nothing runs in the box now: the log ends on a line
        except OSError:
            pass
        self.server_pids = list(server_pids)
        self.adopted = False
        b = self.builder
        for pid in infra_pids:
            b.proc(pid).sample = False
            b.infra.add(pid)

    def poll(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for line in self.tail.read_lines():
            call = self.parser.feed(line)
            if call is None:
                continue
            out.extend(self.builder.feed(call))
            if not self.adopted and self.builder.started:
                self._adopt()
        return out

    def _adopt(self) -> None:
        self.adopted = True
        b = self.builder
        for pid in self.server_pids:
            b.infra.discard(pid)
            p = b.proc(pid)
            p.sample, p.alive = True, True
            p.exe = p.exe or "/usr/lib/wine/wineserver64"
            p.argv = p.argv or [p.exe]

    def job_exited(self) -> bool:
        """The job's init has exited (its children too: it waits for them)."""
        b = self.builder
        if not b.started or b.init_pid is None:
            return False
        p = b.procs.get(b.init_pid)
        return p is not None and not p.alive


class WarmWine:
    """One warm Wine sandbox: ``open()`` in the template, ``launch()`` once for the job, ``close()``."""

    def __init__(self, workdir: str, limits: Limits = Limits()) -> None:
        self.workdir = workdir
        self.limits = limits
        self.box: Sandbox | None = None
        self.prefix = ""
        self.wine_bin = ""
        self.server_bin = ""
        self.env: dict[str, str] = {}
        self._cmd: int | None = None
        self._reply: int | None = None
        self._buf = b""
        self.timings: dict[str, float] = {}
        self.used = False

    # -- set-up (template time)
    def open(self, template: str | None = None) -> None:
        t0 = time.monotonic()
        self.wine_bin = find_tool("wine64") or find_tool("wine") or ""
        self.server_bin = find_tool("wineserver") or ""
        if not self.wine_bin or not self.server_bin:
            raise WarmError("wine64/wineserver not installed")
        template = template or wine.template_path()
        self.box = box = Sandbox(self.workdir, self.limits, ro_binds=(os.path.realpath(template),))
        box.open()
        self.prefix = os.path.join(box.home, ".wine")
        try:
            winearch.ensure_template(template, self.wine_bin)
            wine.prepare_prefix(template, self.prefix, box.uid, box.uid)
            execproof.enable_relay_markers(self.prefix)
        except (OSError, ValueError) as exc:
            raise WarmError(f"Wine prefix: {exc}") from exc
        self.timings["prefix_s"] = round(time.monotonic() - t0, 3)
        ctl = os.path.join(box.work, CTL_DIR)
        os.mkdir(ctl, 0o700)
        os.chown(ctl, box.uid, box.uid)
        for name in ("cmd", "reply"):
            os.mkfifo(os.path.join(ctl, name), 0o600)
            os.chown(os.path.join(ctl, name), box.uid, box.uid)
        self.env = box.base_env()
        self.env.update({"WINEPREFIX": WINEPREFIX_IN, "WINEDEBUG": "fixme-all", "WINEDLLOVERRIDES": "mscoree,mshtml=",
                         "WINEARCH": "win64"})
        python = box.tools["python3"]
        box.start([python, "-I", "-S", "-c", WAITER_CODE, f"{WORK_IN}/{CTL_DIR}/cmd", f"{WORK_IN}/{CTL_DIR}/reply"],
                  self.env, unlimited_address_space=True, cpu_s=WARM_CPU_S, marker=WARM_MARKER)
        self._connect(os.path.join(ctl, "cmd"), os.path.join(ctl, "reply"))
        t1 = time.monotonic()
        rc = self.run([self.server_bin, "-p"])
        if rc != 0:
            raise WarmError(f"wineserver -p exited {rc}")
        shutil.rmtree(ctl, ignore_errors=True)  # both ends are open: nothing of the channel stays visible
        self.timings["wineserver_s"] = round(time.monotonic() - t1, 3)
        t2 = time.monotonic()
        rc = self.run([self.wine_bin, "cmd", "/c", "exit"])
        self.timings["first_run_s"] = round(time.monotonic() - t2, 3)
        if rc != 0:
            raise WarmError(f"the warm-up run (wine cmd /c exit) exited {rc}: {self._stderr_tail()}")
        wine32 = find_tool(WINE32_LOADER)
        if wine32:  # the 32-bit side too (WoW64 DLLs in syswow64, the i386 loader): a 32-bit sample starts warm
            t3 = time.monotonic()
            rc = self.run([wine32, "cmd", "/c", "exit"])
            self.timings["first_run32_s"] = round(time.monotonic() - t3, 3)
            if rc != 0:
                log.warning("the 32-bit warm-up run exited %s: %s", rc, self._stderr_tail())
        if not self.server_pids():
            raise WarmError("no wineserver running after the warm-up")
        self.timings["total_s"] = round(time.monotonic() - t0, 3)
        log.info("warm Wine sandbox ready (uid %d): %s", box.uid, self.timings)

    def _connect(self, cmd: str, reply: str, timeout_s: float = 60.0) -> None:
        assert self.box is not None
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                self._cmd = os.open(cmd, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
                break
            except OSError as exc:
                if exc.errno != 6:  # ENXIO: the waiter has not opened its end yet
                    raise WarmError(f"command FIFO: {exc}") from exc
            if self.box.exited() or time.monotonic() > deadline:
                _, err = self.box.output()
                raise WarmError("the warm sandbox did not start: " + err.decode("utf-8", "replace")[-300:])
            time.sleep(0.02)
        os.set_blocking(self._cmd, True)
        self._reply = os.open(reply, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)

    def _send(self, msg: dict[str, Any]) -> None:
        assert self._cmd is not None
        data = json.dumps(msg).encode() + b"\n"
        if len(data) > 60000:
            raise WarmError("command too long")
        os.write(self._cmd, data)

    def run(self, argv: list[str], timeout_s: float = STEP_TIMEOUT_S) -> int:
        """Run ``argv`` in the warm sandbox and wait for it; its exit code."""
        assert self._reply is not None
        self._send({"op": "run", "argv": argv, "env": self.env, "timeout": timeout_s})
        deadline = time.monotonic() + timeout_s + 10
        while b"\n" not in self._buf:
            try:
                chunk = os.read(self._reply, 4096)
            except BlockingIOError:
                chunk = b""
            self._buf += chunk
            if len(self._buf) > 65536:
                raise WarmError("runaway reply")
            if not chunk:
                if self.box is None or self.box.exited() or time.monotonic() > deadline:
                    raise WarmError(f"no answer from the warm sandbox for {argv[-3:]}: {self._stderr_tail()}")
                time.sleep(0.02)
        line, self._buf = self._buf.split(b"\n", 1)
        try:
            return int(json.loads(line)["rc"])
        except (ValueError, KeyError, TypeError):
            raise WarmError(f"bad reply {line[:100]!r}") from None

    def _stderr_tail(self) -> str:
        err = self.box.output()[1].decode("utf-8", "replace")[-800:] if self.box is not None else ""
        try:
            with open("/proc/meminfo") as fh:
                mem = " ".join(line.split(":")[1].strip() for line in fh if line.startswith("MemAvailable"))
        except OSError:
            mem = "?"
        return f"{err.strip()} (guest memory available: {mem})"

    def server_pids(self) -> list[int]:
        """Live wineserver processes of the sandbox (pids as the guest sees them)."""
        if self.box is None:
            return []
        return [p for p in self.box.sandbox_pids() if "wineserver" in _cmdline(p).split(" ", 1)[0]
                and _state(p) not in ("Z", "X")]

    # -- the job
    def monitor(self, t0: float) -> WarmStraceMonitor:
        assert self.box is not None
        tids = [t for p in self.box.sandbox_pids() for t in _tasks(p)]  # strace -f names threads by tid
        return WarmStraceMonitor(self.box.strace_log, t0, tids, [t for p in self.server_pids() for t in _tasks(p)])

    def launch(self, argv: list[str], env: dict[str, str], on_stderr_line: Callable[[str], None] | None,
               on_stdout_line: Callable[[str], None] | None = None) -> None:
        """Start the job: the waiter becomes the sandbox init that runs ``argv`` (once only)."""
        assert self.box is not None
        if self.used:
            raise SandboxError("the warm Wine sandbox was used already")
        self.used = True
        full = self.box.base_env()
        full.update(env)
        self.box.hand_output_to(on_stderr_line, on_stdout_line)
        self._send({"op": "exec", "argv": [self.box.tools["python3"], "-I", "-S", "-c", INIT_CODE, INIT_MARKER]
                    + list(argv), "env": full})
        self._close_channel()

    def state(self) -> dict[str, Any]:
        """What the job found: for the behaviour log (proves the server was warm)."""
        pids = self.server_pids()
        ages = [a for a in (_pid_age_s(p) for p in pids) if a is not None]
        return {"type": "wine", "warm": True, "server_pids": len(pids),
                "server_age_s": round(max(ages), 3) if ages else None, "prefix": "warm", "warmup": self.timings}

    def _close_channel(self) -> None:
        for fd in (self._cmd, self._reply):
            if fd is not None:
                try:
                    os.close(fd)
                except OSError:
                    pass
        self._cmd = self._reply = None

    def close(self) -> None:
        self._close_channel()
        if self.box is not None:
            self.box.close()


# ------------------------------------------------------------------ the daemon and its client


def _recv_line(conn: socket.socket, limit: int, deadline: float | None = None) -> bytes:
    buf = b""
    while b"\n" not in buf:
        if deadline is not None:
            conn.settimeout(max(0.01, deadline - time.monotonic()))
        chunk = conn.recv(65536)
        if not chunk:
            raise EOFError("connection closed")
        buf += chunk
        if len(buf) > limit:
            raise ValueError("message too long")
    return buf.split(b"\n", 1)[0]


def serve(sock_path: str, workdir: str, runner: Callable[..., dict] | None = None) -> int:
    """Warm a Wine sandbox, then serve one detonation on ``sock_path``; exit status."""
    warm = WarmWine(workdir)
    try:
        warm.open()
    except (WarmError, SandboxError, OSError) as exc:
        log.error("no warm Wine sandbox: %s", exc)
        warm.close()
        return 1
    d = os.path.dirname(sock_path)
    os.makedirs(d, mode=0o700, exist_ok=True)
    os.chmod(d, 0o700)
    try:
        os.unlink(sock_path)
    except FileNotFoundError:
        pass
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(sock_path + ".tmp")
    os.chmod(sock_path + ".tmp", 0o600)
    srv.listen(1)
    os.rename(sock_path + ".tmp", sock_path)  # the socket appears only when it is ready
    print(f"mailvm-winewarm: ready {json.dumps(warm.timings)}", flush=True)
    try:
        conn, _ = srv.accept()
    finally:
        srv.close()
        try:
            os.unlink(sock_path)
        except OSError:
            pass
    stop = threading.Event()
    with conn:
        try:
            req = json.loads(_recv_line(conn, MAX_REQUEST, time.monotonic() + 30))
            sample, options, job_dir = str(req["sample"]), req.get("options") or {}, str(req["workdir"])
        except (ValueError, KeyError, TypeError, EOFError, OSError) as exc:
            log.error("bad request: %s", exc)
            warm.close()
            return 1
        conn.settimeout(None)

        def watch() -> None:  # any byte or EOF from the agent = give the slot back
            try:
                conn.recv(1)
            except OSError:
                pass
            stop.set()
        threading.Thread(target=watch, daemon=True, name="winewarm-abort").start()
        try:
            result = (runner or detonate)(sample, options, job_dir, stop.is_set, warm=warm)
        finally:
            warm.close()
        try:
            conn.sendall(json.dumps(result, separators=(",", ":")).encode() + b"\n")
        except OSError as exc:
            log.error("could not return the result: %s", exc)
            return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Warm a Wine sandbox and serve one detonation in it.")
    ap.add_argument("--socket", default=DEFAULT_SOCKET)
    ap.add_argument("--workdir", default="/tmp/mailvm-wine")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="mailvm-winewarm: %(levelname)s %(message)s")
    os.makedirs(args.workdir, mode=0o700, exist_ok=True)
    return serve(args.socket, args.workdir)


if __name__ == "__main__":
    sys.exit(main())
