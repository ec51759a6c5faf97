"""The ``process`` backend: a slot is the guest agent as a host process, on a /dev/shm page.

For development, CI and evaluation where no hypervisor is usable.  Isolation
is weak: namespaces only, no VM.  The agent itself runs on the host (as the
pool's user, root here); the *sample* is sandboxed by the agent's runner
(``mailvm.guest.detonate``: bubblewrap with its own user/pid/mount/network
namespaces, strace outside it).  The backend logs this as a WARNING when it
is prepared.

A slot is:

* a page file ``<page_dir>/mailvm-<slot>-<token>.page`` (``HostPage.create``,
  mode 0600, ``cfg.page_bytes``, sparse);
* a work directory ``<cfg.work_dir>/slot-<slot>-<token>/`` (agent log, the
  agent's job directories);
* the agent, ``python -m mailvm.guest.agent --once``, started in its own
  session/process group and, where ``unshare`` works (checked once in
  :meth:`ProcessBackend.prepare`), as PID 1 of its own PID namespace
  (``unshare --pid --fork --mount-proc --kill-child``).  Everything the job
  starts lives in that namespace, so killing the agent kills all of it, even
  processes that left the process group (the sandbox's strace, fakenet and
  network-namespace holder run in sessions of their own); the mount namespace
  only gets a private /proc, which bubblewrap, strace, nsenter and ``ip``
  inside it do not mind.  The price: every agent is PID 1 and sees only its
  own processes, so guest code must not derive host-unique names or uids
  from its pid alone;
* a doorbell: a pipe whose read end the agent inherits (``fd:N``); ring() is
  one byte written to the non-blocking write end.  Closing the write end
  tells an idle agent its host is gone.

``create_slot`` returns once the agent has published READY (pre-warmed).
``destroy`` kills the namespace (or the process group), reaps, removes the
page and the work directory, and logs anything left over.  When the pool
itself is killed, its idle agents see the doorbell hang up and exit;
``prepare`` of the next pool on the same work directory removes the slots
nobody holds any more (:func:`sweep_orphans`).
"""

from __future__ import annotations

import logging
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time
import weakref
from pathlib import Path
from typing import Any

from mailvm.config import PoolConfig
from mailvm.procfs import cpu_seconds, group_members, process_tree
from mailvm.vmpool.backends.base import Backend, BackendError, BackendInfo, Slot, close_quietly
from mailvm.vmpool.shmpage import HostPage, PageError

log = logging.getLogger(__name__)

ISOLATION = "namespaces only (weak): bubblewrap + network namespace, no VM"
REQUIRED_TOOLS = ("bwrap", "strace", "ip")
UNSHARE = ("unshare", "--pid", "--fork", "--mount-proc", "--kill-child")
AGENT_MODULE = "mailvm.guest.agent"
KILL_WAIT_S = 5.0
LOG_TAIL_BYTES = 4096
ORPHAN_MIN_AGE_S = 60.0
_SAFE = re.compile(r"[^A-Za-z0-9_.-]+")
_PACKAGE_ROOT = str(Path(__file__).resolve().parents[3])












def _held(prefix: str) -> set[str]:
    """Paths under ``prefix`` that some process has open or mapped (a /proc scan)."""
    held: set[str] = set()
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            for fd in os.listdir(f"/proc/{name}/fd"):
                try:
                    target = os.readlink(f"/proc/{name}/fd/{fd}")
                except OSError:
                    continue
                if target.startswith(prefix):
                    held.add(target)
            with open(f"/proc/{name}/maps") as maps:
                for line in maps:
                    if prefix in line:
                        held.add(line.split(None, 5)[-1].strip())
        except OSError:
            continue
    return held


def sweep_orphans(work_dir: str, page_dir: str, min_age_s: float = ORPHAN_MIN_AGE_S) -> list[str]:
    """Remove slots (work dir + page) that no live process holds: left by a pool that was killed.

    Only ``slot-<tag>`` directories in *this* pool's work dir are considered,
    with their page ``<page_dir>/mailvm-<tag>.page``; a slot is an orphan when
    neither the host (an open fd) nor an agent (a mapping) holds its page and
    its directory is older than ``min_age_s`` (one being created right now has
    no page yet).  Returns the tags removed.
    """
    try:
        slots = [d for d in os.listdir(work_dir) if d.startswith("slot-")]
    except OSError:
        return []
    if not slots:
        return []
    held = _held(os.path.join(page_dir, "mailvm-"))
    now = time.time()
    removed = []
    for d in slots:
        tag = d[len("slot-"):]
        page = os.path.join(page_dir, f"mailvm-{tag}.page")
        slot_dir = os.path.join(work_dir, d)
        try:
            young = now - os.stat(slot_dir).st_mtime < min_age_s
        except OSError:
            continue
        if young or page in held:
            continue
        try:
            os.unlink(page)
        except FileNotFoundError:
            pass
        except OSError as exc:
            log.warning("cannot remove orphaned page %s: %s", page, exc)
            continue
        shutil.rmtree(slot_dir, ignore_errors=True)
        removed.append(tag)
    return removed


class ProcessSlot(Slot):
    """One agent process (in its own PID namespace when available) and its page."""

    def __init__(self, slot_id: str, page: HostPage, proc: subprocess.Popen, wfd: int | None,
                 slot_dir: str, pid_namespace: bool, afd: int | None = None) -> None:
        self.id = slot_id
        self.page = page
        self.proc = proc
        self.pgid = proc.pid  # start_new_session: the leader's pid is the group id
        self.slot_dir = slot_dir
        self.pid_namespace = pid_namespace
        self.created_at = time.time()
        self.ready_s = 0.0
        self._wfd = wfd
        self._afd = afd  # read end of the agent's doorbell back (non-blocking)
        if afd is not None:
            # closed when the slot object goes, not in destroy(): a runner thread may be blocked on it
            # then, and a closed number reused by another open would be read from
            weakref.finalize(self, close_quietly, afd)
        self._lock = threading.Lock()
        self._destroyed = False

    def ring(self) -> None:
        wfd = self._wfd
        if wfd is None:
            return  # polling doorbell, or destroyed
        try:
            os.write(wfd, b"\x01")
        except BlockingIOError:
            pass  # the pipe is full of unread rings: the agent will look anyway
        except (BrokenPipeError, OSError) as exc:
            log.debug("slot %s: ring failed: %s", self.id, exc)

    def alive(self) -> bool:
        return not self._destroyed and self.proc.poll() is None

    def answer_fd(self) -> int | None:
        return self._afd

    def agent_log(self, limit: int = LOG_TAIL_BYTES) -> str:
        """The tail of the agent's stderr (kept in the slot directory until destroy)."""
        try:
            with open(os.path.join(self.slot_dir, "agent.log"), "rb") as f:
                f.seek(0, os.SEEK_END)
                f.seek(max(0, f.tell() - limit))
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def stats(self) -> dict[str, Any]:
        pids = process_tree(self.proc.pid) if self.alive() else []
        return {
            "pid": self.proc.pid,
            "pids": pids,
            "pid_namespace": self.pid_namespace,
            "agent_pid": self.page.agent_pid,
            "cpu_s": cpu_seconds(pids),
            "page": self.page.path,
        }

    def _kill(self) -> None:
        if self.proc.returncode is None and self.pid_namespace:
            # kill the namespace's init (the agent): the kernel kills the rest of the
            # namespace, and unshare reaps it and exits on its own: no orphaned zombies
            # (unshare 2.38 then exits 1 with "sigprocmask unblock failed": harmless)
            for child in process_tree(self.proc.pid)[1:2]:
                try:
                    os.kill(child, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            try:
                self.proc.wait(timeout=KILL_WAIT_S)
            except subprocess.TimeoutExpired:
                pass
        if self.proc.returncode is None or group_members(self.pgid):
            try:
                os.killpg(self.pgid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            self.proc.wait(timeout=KILL_WAIT_S)
        except subprocess.TimeoutExpired:
            log.error("slot %s: agent pid %d survived SIGKILL for %.0f s", self.id, self.proc.pid, KILL_WAIT_S)

    def leftovers(self) -> list[str]:
        """What destroy() should have removed and did not (empty when clean)."""
        left = [f"process {p}" for p in group_members(self.pgid)]
        left += [p for p in (self.page.path, self.slot_dir) if os.path.exists(p)]
        return left

    def destroy(self) -> None:
        with self._lock:
            if self._destroyed:
                return
            self._destroyed = True
        try:
            wfd, self._wfd = self._wfd, None
            if wfd is not None:
                os.close(wfd)
            self._kill()
            if self.proc.returncode not in (0, None):
                log.debug("slot %s: agent exited %s; log tail:\n%s", self.id, self.proc.returncode, self.agent_log())
            self.page.close()
            self.page.unlink()
            shutil.rmtree(self.slot_dir, ignore_errors=True)
            left = self.leftovers()
            if left:
                log.warning("slot %s: left behind after destroy: %s", self.id, ", ".join(left))
        except Exception:  # destroy never raises: the pool calls it on every error path
            log.exception("slot %s: destroy failed", self.id)


class ProcessBackend(Backend):
    """Slots as sandboxed processes; see the module docstring."""

    name = "process"

    def __init__(self, cfg: PoolConfig, *, page_dir: str | None = None, doorbell: str = "pipe",
                 pid_namespace: bool | None = None) -> None:
        super().__init__(cfg)
        if doorbell != "pipe" and not doorbell.startswith("poll:"):
            raise ValueError(f"doorbell must be 'pipe' or 'poll:MIN[:MAX]', not {doorbell!r}")
        self.page_dir = page_dir
        self.doorbell = doorbell
        self.pid_namespace = pid_namespace
        self._prepared = False
        self._lock = threading.Lock()

    @classmethod
    def probe(cls, cfg: PoolConfig) -> str | None:
        missing = [t for t in REQUIRED_TOOLS if shutil.which(t) is None]
        if not (sys.executable and os.access(sys.executable, os.X_OK)):
            missing.insert(0, "python3")
        return f"missing tools: {', '.join(missing)}" if missing else None

    def prepare(self) -> None:
        with self._lock:
            if self._prepared:
                return
            reason = self.probe(self.cfg)
            if reason:
                raise BackendError(f"process backend unusable: {reason}")
            try:
                os.makedirs(self.cfg.work_dir, mode=0o700, exist_ok=True)
            except OSError as exc:
                raise BackendError(f"cannot create pool work dir {self.cfg.work_dir}: {exc}") from None
            if self.page_dir is None:
                shm = "/dev/shm"
                self.page_dir = shm if os.path.isdir(shm) and os.access(shm, os.W_OK) else self.cfg.work_dir
            if self.pid_namespace is None:
                self.pid_namespace = self._unshare_works()
            swept = sweep_orphans(self.cfg.work_dir, self.page_dir)
            if swept:
                log.warning("process backend: removed %d slot(s) left by a pool that died: %s",
                            len(swept), ", ".join(swept[:5]))
            self._prepared = True
        log.warning(
            "process backend: isolation is %s; each agent runs on this host %s. "
            "For development and evaluation: use the qemu backend to detonate real mail.",
            ISOLATION,
            "in its own PID namespace" if self.pid_namespace else "in a process group (no PID namespace)",
        )

    @staticmethod
    def _unshare_works() -> bool:
        if shutil.which("unshare") is None:
            return False
        try:
            res = subprocess.run([*UNSHARE, "true"], stdin=subprocess.DEVNULL, capture_output=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return False
        if res.returncode != 0:
            log.info("unshare --pid unavailable (%s); agents run in process groups only",
                     res.stderr.decode("utf-8", "replace").strip()[:200])
        return res.returncode == 0

    def info(self) -> BackendInfo:
        return BackendInfo(
            name=self.name,
            isolation=ISOLATION,
            accel="none",
            details={"pid_namespace": bool(self.pid_namespace), "page_dir": self.page_dir, "doorbell": self.doorbell},
        )

    def _agent_env(self) -> dict[str, str]:
        env = {
            "PATH": os.environ.get("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"),
            "LANG": "C.UTF-8",
            "PYTHONDONTWRITEBYTECODE": "1",
        }
        env["PYTHONPATH"] = _PACKAGE_ROOT
        return env

    def create_slot(self, slot_id: str) -> ProcessSlot:
        self.prepare()
        t0 = time.monotonic()
        tag = f"{_SAFE.sub('_', slot_id)[:40]}-{secrets.token_hex(6)}"
        slot_dir = os.path.join(self.cfg.work_dir, f"slot-{tag}")
        page_path = os.path.join(str(self.page_dir), f"mailvm-{tag}.page")
        try:
            os.mkdir(slot_dir, 0o700)
            page = HostPage.create(page_path, self.cfg.page_bytes)
        except OSError as exc:
            shutil.rmtree(slot_dir, ignore_errors=True)
            raise BackendError(f"slot {slot_id}: cannot create page/work dir: {exc}") from None
        rfd = wfd = afd = agent_afd = None
        try:
            answer: list[str] = []
            if self.doorbell == "pipe":
                rfd, wfd = os.pipe2(os.O_CLOEXEC)
                os.set_blocking(wfd, False)
                bell = f"fd:{rfd}"
                # and the doorbell back: the agent rings it after READY, RUNNING and DONE/FAILED
                afd, agent_afd = os.pipe2(os.O_CLOEXEC)
                os.set_blocking(afd, False)
                answer = ["--answer", f"fd:{agent_afd}"]
            else:
                bell = self.doorbell
            cmd = [
                *(UNSHARE if self.pid_namespace else ()),
                sys.executable, "-m", AGENT_MODULE,
                "--page", page_path, "--size", str(self.cfg.page_bytes),
                "--doorbell", bell, *answer, "--once", "--workdir", os.path.join(slot_dir, "work"),
            ]
            with open(os.path.join(slot_dir, "agent.log"), "ab") as logf:
                proc = subprocess.Popen(
                    cmd, stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT,
                    pass_fds=tuple(fd for fd in (rfd, agent_afd) if fd is not None), start_new_session=True,
                    cwd=slot_dir, env=self._agent_env(),
                )
        except BaseException as exc:
            for fd in (rfd, wfd, afd, agent_afd):
                if fd is not None:
                    os.close(fd)
            page.close()
            page.unlink()
            shutil.rmtree(slot_dir, ignore_errors=True)
            if isinstance(exc, OSError):
                raise BackendError(f"slot {slot_id}: cannot start the agent: {exc}") from None
            raise
        for fd in (rfd, agent_afd):  # the agent's ends
            if fd is not None:
                os.close(fd)
        slot = ProcessSlot(slot_id, page, proc, wfd, slot_dir, bool(self.pid_namespace), afd)
        try:
            page.wait_ready(t0 + self.cfg.ready_timeout_s, alive=slot.alive, wake_fd=afd)
        except (PageError, TimeoutError) as exc:
            tail = slot.agent_log(1000)
            slot.destroy()
            raise BackendError(f"slot {slot_id}: agent did not become READY: {exc}; agent log: {tail!r}") from None
        except BaseException:
            slot.destroy()
            raise
        slot.ready_s = time.monotonic() - t0
        log.debug("slot %s ready in %.0f ms (pid %d)", slot_id, slot.ready_s * 1000, proc.pid)
        return slot
