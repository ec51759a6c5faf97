"""No QEMU outlives its pool: a watchdog process per backend, and a sweep at start-up.

The raw launcher starts every QEMU as a child in its own session, and QEMU
drops root with ``-runas``.  ``PR_SET_PDEATHSIG`` cannot tie a QEMU to its
pool: it fires when the spawning *thread* exits (slots are spawned from
short-lived threads), and the kernel clears it when QEMU changes its uid.
So each backend has:

* an **owner record** ``<work_dir>/qemu-owner-<instance>.json`` (pid and start
  time of the pool process; every QEMU, slot directory and page file of the
  backend carries ``mailvm-<instance>-`` / ``qslot-<instance>-`` in its name);
* a **watchdog** (:func:`start_watchdog`): a small process of its own
  (``python -m mailvm.vmpool.reaper``, own session) that waits on a pidfd of the
  pool process and on a pipe.  ``stop()`` (the backend's close) writes ``q``:
  it exits.  When the pool process dies instead (SIGKILL, OOM), it kills the
  instance's QEMUs, removes its slot directories, page files and owner record,
  and exits;
* a **sweep** (:func:`sweep`) when a backend prepares: instances in the same
  work dir whose owner is gone (the watchdog was killed too) are reaped the same way.

QEMUs are found by their ``-name`` (``mailvm-<instance>-``) and killed through
a pidfd after re-checking their command line (:func:`mailvm.procfs.kill_if`).
Nothing here imports the backends: the watchdog process stays small.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import select
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from mailvm.procfs import cwd_of, find_processes, is_gone, kill_if, start_ticks, stat_fields

log = logging.getLogger(__name__)

OWNER_PREFIX = "qemu-owner-"
SLOT_PREFIX = "qslot-"
NAME_PREFIX = "mailvm-"
_INSTANCE = re.compile(r"^[0-9a-f]{8,32}$")
_NAME_IN_CMDLINE = re.compile(rb"-name\x00mailvm-([0-9a-f]{8,32})-")
KILL_WAIT_S = 5.0


def owner_path(work_dir: str, instance: str) -> Path:
    return Path(work_dir, f"{OWNER_PREFIX}{instance}.json")


def write_owner(work_dir: str, instance: str, pid: int | None = None) -> None:
    """Record that process ``pid`` (default: this one) owns ``instance``'s QEMUs."""
    pid = pid or os.getpid()
    path = owner_path(work_dir, instance)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps({"pid": pid, "start": start_ticks(pid), "at": time.time()}))
    os.replace(tmp, path)


def owner_alive(work_dir: str, instance: str) -> bool:
    """True when ``instance``'s owner record names a live process (same pid and start time)."""
    try:
        rec = json.loads(owner_path(work_dir, instance).read_text())
        pid, start = int(rec["pid"]), rec.get("start")
    except (OSError, ValueError, KeyError, TypeError):
        return False
    return not is_gone(pid) and start_ticks(pid) == start


def instance_qemus(instance: str) -> list[int]:
    """Live QEMU processes of ``instance`` (by their ``-name``)."""
    return find_processes(b"qemu-system", f"{NAME_PREFIX}{instance}-".encode())


def reap_instance(work_dir: str, shm_dir: str, instance: str) -> list[int]:
    """Kill every QEMU of ``instance`` and remove its slot dirs, page files and owner record.

    Returns the pids killed.  Never raises on a file or process that is gone already.
    """
    if not _INSTANCE.match(instance):
        raise ValueError(f"not an instance name: {instance!r}")
    needle = f"{NAME_PREFIX}{instance}-".encode()
    killed = [pid for pid in instance_qemus(instance) if kill_if(pid, needle)]
    end = time.monotonic() + KILL_WAIT_S
    while any(not is_gone(p) for p in killed) and time.monotonic() < end:
        time.sleep(0.01)
    for d in Path(work_dir).glob(f"{SLOT_PREFIX}{instance}-*"):
        shutil.rmtree(d, ignore_errors=True)
    for p in Path(shm_dir).glob(f"{NAME_PREFIX}{instance}-*.page"):
        try:
            p.unlink()
        except OSError:
            pass
    try:
        owner_path(work_dir, instance).unlink()
    except OSError:
        pass
    return killed


def sweep(work_dir: str, shm_dir: str) -> dict[str, list[int]]:
    """Reap the instances in ``work_dir`` whose owning pool process is gone.

    An instance with an owner record here is reaped when the record names a
    process that is gone.  QEMUs running in a directory of ``work_dir`` (their
    slot directory) whose instance has no record are killed only when they have
    been re-parented to PID 1 (a live pool is the parent of its raw QEMUs; a
    pool of a version without records, still draining, keeps its QEMUs).
    Slot directories of an instance without a record and without a running QEMU
    (slots a closed backend's caller never destroyed) are removed too.
    Returns {instance: pids killed}.
    """
    wd = os.path.realpath(work_dir)
    recorded = {p.name[len(OWNER_PREFIX):-len(".json")] for p in Path(wd).glob(f"{OWNER_PREFIX}*.json")}
    dead = {i for i in recorded if _INSTANCE.match(i) and not owner_alive(wd, i)}
    for d in Path(wd).glob(f"{SLOT_PREFIX}*-*"):
        inst = d.name[len(SLOT_PREFIX):].split("-", 1)[0]
        if _INSTANCE.match(inst) and inst not in recorded and not instance_qemus(inst):
            dead.add(inst)
    reaped: dict[str, list[int]] = {}
    for pid in find_processes(b"qemu-system", b"-name\x00" + NAME_PREFIX.encode()):
        try:
            m = _NAME_IN_CMDLINE.search(Path(f"/proc/{pid}/cmdline").read_bytes())
        except OSError:
            continue
        cwd = cwd_of(pid) or ""
        if not m or not (cwd == wd or cwd.startswith(wd + os.sep)):
            continue
        inst = m.group(1).decode()
        fields = stat_fields(pid)
        if inst not in recorded and fields and len(fields) > 1 and fields[1] == "1":
            dead.add(inst)
    for inst in sorted(dead):
        reaped[inst] = reap_instance(wd, shm_dir, inst)
        if reaped[inst]:
            log.warning("qemu backend: killed %d QEMU(s) left by a dead pool (instance %s): %s",
                        len(reaped[inst]), inst, reaped[inst])
    return reaped


@dataclass
class Watchdog:
    """The running watchdog process of one backend (see the module docstring)."""

    proc: subprocess.Popen
    ctl: int  # write end of the pipe: "q" = the backend closed normally

    def stop(self, timeout: float = 5.0) -> None:
        """Tell the watchdog that the backend closed (it exits without killing anything)."""
        if self.ctl >= 0:
            try:
                os.write(self.ctl, b"q")
            except OSError:
                pass
            os.close(self.ctl)
            self.ctl = -1
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def alive(self) -> bool:
        return self.proc.poll() is None


def start_watchdog(work_dir: str, shm_dir: str, instance: str) -> Watchdog:
    """Start the watchdog of ``instance`` for this process; returns once it watches (OSError if it cannot)."""
    if not _INSTANCE.match(instance):
        raise ValueError(f"not an instance name: {instance!r}")
    r, w = os.pipe2(os.O_CLOEXEC)
    ready_r, ready_w = os.pipe2(os.O_CLOEXEC)
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "mailvm.vmpool.reaper", "--parent", str(os.getpid()), "--ctl-fd", str(r),
             "--ready-fd", str(ready_w), "--work-dir", work_dir, "--shm-dir", shm_dir, "--instance", instance],
            stdin=subprocess.DEVNULL, pass_fds=(r, ready_w), start_new_session=True, cwd="/")
    except BaseException:
        for fd in (r, w, ready_r, ready_w):
            os.close(fd)
        raise
    os.close(r)
    os.close(ready_w)
    try:
        ok = select.select([ready_r], [], [], 30)[0] and os.read(ready_r, 1) == b"1"
    finally:
        os.close(ready_r)
    if not ok:
        os.close(w)
        proc.kill()
        proc.wait()
        raise OSError("the QEMU watchdog did not start")
    return Watchdog(proc, w)


def _watch(parent: int, ctl: int, ready: int, work_dir: str, shm_dir: str, instance: str) -> int:
    if os.getppid() != parent:  # the pool is gone already (we were re-parented)
        pidfd = -1
    else:
        pidfd = os.pidfd_open(parent)  # our parent cannot be reaped and reused while we run
    os.write(ready, b"1")
    os.close(ready)
    if pidfd >= 0:
        rd = select.select([pidfd, ctl], [], [])[0]
        if ctl in rd:
            try:
                data = os.read(ctl, 1)
            except OSError:
                data = b""
            if data == b"q":
                return 0  # the backend closed normally and cleaned up itself
        # the pidfd is readable (the pool exited) or the pipe hit EOF without "q" (its fds were closed)
    killed = reap_instance(work_dir, shm_dir, instance)
    print(f"mailvm qemu watchdog: pool {parent} died; killed {len(killed)} QEMU(s) of instance {instance}: "
          f"{killed}", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="kill a pool's QEMUs when the pool process dies")
    ap.add_argument("--parent", type=int, required=True)
    ap.add_argument("--ctl-fd", type=int, required=True)
    ap.add_argument("--ready-fd", type=int, required=True)
    ap.add_argument("--work-dir", required=True)
    ap.add_argument("--shm-dir", required=True)
    ap.add_argument("--instance", required=True)
    a = ap.parse_args(argv)
    return _watch(a.parent, a.ctl_fd, a.ready_fd, a.work_dir, a.shm_dir, a.instance)


if __name__ == "__main__":
    sys.exit(main())
