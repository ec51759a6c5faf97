"""``mvctl pool status [--json]``: what the running pool service reports.

The pool service writes ``<pool.work_dir>/status.json`` at least every few
seconds; a status older than :data:`STALE_S`, or from a process that no longer
exists, means the pool service is not running (exit status 2); while it
boots its reference VM the status says ``starting`` (exit status 3).
"""

from __future__ import annotations

import argparse
import os
import time
from typing import Any

from mailvm.cli.common import EXIT_ERROR, EXIT_OK, config_from, print_json

STALE_S = 30.0
#: exit status while the pool service is still preparing its backend (0 running, 2 not running)
EXIT_STARTING = 3


def _fresh(status: dict[str, Any]) -> bool:
    try:
        return time.time() - float(status.get("updated_at", 0)) < STALE_S
    except (TypeError, ValueError):
        return False


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("pool", help="the detonation pool: backend, accelerator, slots",
                       description="Inspect the detonation pool run by `mailvm serve` (or `mailvm pool`).")
    ps = p.add_subparsers(dest="pool_command", metavar="ACTION")
    ps.required = True
    s = ps.add_parser("status", help="backend, isolation, accelerator, slots ready/busy, counters, timings")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_status)


def _alive(pid: Any) -> bool:
    try:
        os.kill(int(pid), 0)
        return True
    except (ProcessLookupError, ValueError, TypeError):
        return False
    except PermissionError:
        return True


def _age(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f} {unit}"
    return f"{seconds:.0f} s"


def cmd_status(args: argparse.Namespace) -> int:
    from mailvm.vmpool.pool import read_status

    cfg = config_from(args)
    status = read_status(cfg.pool.work_dir)
    live = bool(status) and _alive(status.get("pid")) and _fresh(status)
    running = live and status.get("state") not in ("closed", "broken", "starting", "failed")
    starting = live and status.get("state") == "starting"
    if args.json:
        print_json({"running": running, "starting": starting, "work_dir": cfg.pool.work_dir, "status": status})
        return EXIT_OK if running else EXIT_STARTING if starting else EXIT_ERROR
    if not status:
        print(f"no pool status under {cfg.pool.work_dir}: the pool service has not run (mailvm serve / mailvm pool)")
        return EXIT_ERROR
    if starting:
        since = status.get("starting_since")
        took = f" ({_age(time.time() - float(since))})" if isinstance(since, (int, float)) else ""
        print(f"pool       starting: booting the reference VM{took}  pid {status.get('pid')}")
        print("           slots are made once it is up; jobs wait in the queue meanwhile")
        return EXIT_STARTING
    if status.get("state") == "failed" and status.get("start_error"):
        print(f"pool       FAILED TO START: {status.get('start_error')}")
        return EXIT_ERROR
    b = status.get("backend", {})
    accel = str(b.get("accel", "?"))
    print(f"pool       {'running' if running else 'NOT RUNNING (stale status)'}  pid {status.get('pid')}  state {status.get('state')}")
    print(f"backend    {b.get('name', '?')}   isolation: {b.get('isolation', '?')}")
    loud = "   <-- software emulation, slow: no usable KVM here" if accel == "tcg" else ""
    print(f"accel      {accel.upper()}{loud}")
    details = b.get("details", {})
    if not isinstance(details, dict):
        details = {}
    if "image_version" in details:
        pending = details.get("image_pending")
        extra = f"   (switching to {pending}: its template is being made)" if pending else ""
        wine = " with Wine" if details.get("wine") else ""
        mem = f", guest RAM {details['guest_mem_mib']} MiB" if details.get("guest_mem_mib") else ""
        print(f"image      {details['image_version']}{wine}{mem}{extra}")
    if details.get("image_error"):
        print(f"WARNING    the newest image cannot be used: {details['image_error']}")
    created = details.get("template_created_at")
    if isinstance(created, (int, float)) and created > 0:
        print(f"template   {_age(time.time() - created)} old ({details.get('launcher', 'raw')} launcher)")
    if details.get("qemu_user"):
        print(f"qemu user  {details['qemu_user']}")
    warnings = details.get("warnings")
    for w in warnings if isinstance(warnings, list) else []:
        print(f"WARNING    {w}")
    s = status.get("slots", {})
    print(f"slots      ready {s.get('ready')} / busy {s.get('busy')} / starting {s.get('starting')} (target {s.get('target')})")
    j = status.get("jobs", {})
    print(f"queue      {status.get('queue')} waiting;  jobs done {j.get('done')}, failed {j.get('failed')}, "
          f"retried {j.get('retried')}")
    print(f"verdicts   {j.get('verdicts')}")
    for key, unit in (("handover_ms", "ms"), ("run_s", "s"), ("refill_ms", "ms")):
        v = status.get(key) or {}
        if v.get("n"):
            print(f"{key[:-3] if key.endswith('_ms') else key[:-2]:<10} median {v.get('median')} {unit}, "
                  f"p95 {v.get('p95')} {unit} over {v.get('n')}")
    return EXIT_OK if running else EXIT_ERROR
