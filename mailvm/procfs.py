"""Reading /proc: process state, trees, CPU time and memory (Linux only, stdlib only).

One place for what the backends, the scanned table's owner check, the tests
and the benchmarks read about processes.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Iterable


def stat_fields(pid: int) -> list[str] | None:
    """Fields of /proc/<pid>/stat after the command name (field 3, the state, onwards), or None."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return None
    # the command name may hold spaces and parentheses: split after the last ")"
    return raw[raw.rfind(b")") + 2:].decode("ascii", "replace").split()


def is_gone(pid: int) -> bool:
    """True when ``pid`` does not exist or is a zombie (killed, not yet reaped)."""
    fields = stat_fields(pid)
    return fields is None or not fields or fields[0] in ("Z", "X")


def process_tree(pid: int) -> list[int]:
    """``pid`` and its live descendants (from /proc/<pid>/task/*/children)."""
    seen: list[int] = []
    todo = [pid]
    while todo:
        p = todo.pop()
        if p in seen or not os.path.exists(f"/proc/{p}"):
            continue
        seen.append(p)
        try:
            tasks = os.listdir(f"/proc/{p}/task")
        except OSError:
            continue
        for t in tasks:
            try:
                todo.extend(int(c) for c in Path(f"/proc/{p}/task/{t}/children").read_text().split())
            except (OSError, ValueError):
                pass
    return seen


def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes whose process group is ``pgid``."""
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        fields = stat_fields(int(name))
        if fields and len(fields) > 2 and fields[2] == str(pgid) and fields[0] != "Z":
            found.append(int(name))
    return found


def cpu_seconds(pids: Iterable[int]) -> float:
    """utime + stime of ``pids`` in seconds (processes that are gone count 0)."""
    ticks = 0
    for pid in pids:
        fields = stat_fields(pid)
        if fields and len(fields) > 12:
            ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def pss_kib(pid: int) -> int | None:
    """Proportional set size of ``pid`` in KiB (smaps_rollup), None when gone."""
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except (OSError, ValueError):
        return None
    return None


def find_processes(*needles: bytes) -> list[int]:
    """Live (non-zombie) processes whose command line contains every one of ``needles``."""
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            cmd = Path(f"/proc/{name}/cmdline").read_bytes()
        except OSError:
            continue
        if all(n in cmd for n in needles) and not is_gone(int(name)):
            found.append(int(name))
    return found


def start_ticks(pid: int) -> int | None:
    """When ``pid`` started (clock ticks after boot, /proc/<pid>/stat field 22), None when gone.

    A pid together with its start time names one process for good: a pid reused
    by a later process has a different start time.
    """
    fields = stat_fields(pid)
    try:
        return int(fields[19]) if fields and len(fields) > 19 else None
    except ValueError:
        return None


def cwd_of(pid: int) -> str | None:
    """The current directory of ``pid`` (root may read any process's), None when unreadable."""
    try:
        return os.readlink(f"/proc/{pid}/cwd")
    except OSError:
        return None


def kill_if(pid: int, needle: bytes, sig: int = 9) -> bool:
    """Send ``sig`` to ``pid`` only if its command line still contains ``needle``; True when sent.

    The check and the signal go through one pidfd, so a pid reused in between is never hit.
    """
    try:
        fd = os.pidfd_open(pid)
    except OSError:
        return False
    try:
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            return False
        if needle not in cmd:
            return False
        try:
            signal.pidfd_send_signal(fd, sig)
        except OSError:
            return False
        return True
    finally:
        os.close(fd)
