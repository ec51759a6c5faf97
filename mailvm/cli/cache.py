"""``mvctl cache stats|show SHA256|forget SHA256``: the scanned table."""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sys
from typing import Any, Callable

from mailvm.cli.common import EXIT_BAD, EXIT_ERROR, EXIT_OK, config_from, open_table, print_json


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("cache", help="inspect the scanned table (sha256 -> verdict)",
                       description="Inspect and edit the persistent scanned table.")
    csub = p.add_subparsers(dest="cache_command", metavar="ACTION")
    csub.required = True
    s = csub.add_parser("stats", help="entries, verdicts, hits and misses")
    s.add_argument("--json", action="store_true", help="machine-readable output")
    s.set_defaults(func=cmd_stats)
    s = csub.add_parser("expire", help="remove stale claims and expired verdicts now")
    s.add_argument("--json", action="store_true", help="machine-readable output")
    s.set_defaults(func=cmd_expire)
    s = csub.add_parser("show", help="the stored verdict of one file")
    s.add_argument("sha256")
    s.add_argument("--json", action="store_true", help="machine-readable output")
    s.set_defaults(func=cmd_show)
    s = csub.add_parser("forget", help="remove a file's verdict so it is analysed again")
    s.add_argument("sha256")
    s.add_argument("--json", action="store_true", help="machine-readable output")
    s.set_defaults(func=cmd_forget)
    s = csub.add_parser("pin", help="pin a file clean (after a false positive) or malicious, for good",
                        description="A pinned file is answered from its pin before any lookup or analysis. "
                        "The action is written to the audit log.")
    s.add_argument("sha256")
    s.add_argument("verdict", choices=("clean", "malicious"))
    s.add_argument("--reason", required=True, help="why (kept with the pin and shown in reports)")
    s.add_argument("--json", action="store_true", help="machine-readable output")
    s.set_defaults(func=cmd_pin)
    s = csub.add_parser("unpin", help="remove a pin: the file is judged by analysis again")
    s.add_argument("sha256")
    s.add_argument("--json", action="store_true", help="machine-readable output")
    s.set_defaults(func=cmd_unpin)
    s = csub.add_parser("pins", help="list pinned files")
    s.add_argument("--json", action="store_true", help="machine-readable output")
    s.set_defaults(func=cmd_pins)


def _sha(args: argparse.Namespace) -> str | None:
    """The SHA256 argument, normalised; None (and a message on stderr) when it is not one."""
    text = args.sha256.strip().lower()
    if len(text) == 64 and all(c in "0123456789abcdef" for c in text):
        return text
    print(f"mvctl cache {args.cache_command}: SHA256 must be 64 hex digits", file=sys.stderr)
    return None


def _with_table(args: argparse.Namespace, op: Callable[[Any], Any]) -> Any:
    """Run ``op(table)`` on the configured scanned table, closing it afterwards."""
    with open_table(config_from(args)) as table:
        return op(table)


def cmd_stats(args: argparse.Namespace) -> int:
    stats = _with_table(args, lambda t: t.stats())
    if args.json:
        print_json(stats)
    else:
        width = max(len(k) for k in stats) if stats else 0
        for key, value in stats.items():
            print(f"{key:<{width}}  {value}")
    return EXIT_OK


def cmd_show(args: argparse.Namespace) -> int:
    sha = _sha(args)
    if sha is None:
        return EXIT_ERROR
    verdict = _with_table(args, lambda t: t.get(sha))
    if verdict is None:
        if args.json:
            print_json({"sha256": sha, "found": False})
        else:
            print(f"{sha}: not in the scanned table")
        return EXIT_BAD
    shots = _screenshot_paths(args, verdict.log)
    if args.json:
        print_json({"sha256": sha, "found": True, **verdict.to_dict(), "screenshots": shots})
        return EXIT_OK
    when = dt.datetime.fromtimestamp(verdict.analyzed_at).isoformat(timespec="seconds")
    print(f"{sha}\n  state     {verdict.state}\n  verdict   {verdict.verdict} (score {verdict.score})")
    print(f"  source    {verdict.source}  slot {verdict.slot or '-'}  {verdict.duration_s:.2f}s")
    print(f"  analyzed  {when}  engine {verdict.engine_version}")
    for f in sorted(verdict.findings, key=lambda f: -f.severity):
        print(f"  [{f.severity:2d}] {f.id}: {f.detail}")
    for path in shots:
        print(f"  screenshot {path}")
    return EXIT_OK


def _screenshot_paths(args: argparse.Namespace, entries: list) -> list[str]:
    """Where the verdict's screenshots are (the pool's evidence directory, mailvm.vmpool.evidence)."""
    from mailvm.vmpool.evidence import evidence_dir

    rels = [e["path"] for e in entries if isinstance(e, dict) and e.get("type") == "screenshot"
            and isinstance(e.get("path"), str)]
    if not rels:
        return []
    root = evidence_dir(config_from(args).pool.work_dir)
    return [os.path.join(root, rel) for rel in rels]


def cmd_forget(args: argparse.Namespace) -> int:
    sha = _sha(args)
    if sha is None:
        return EXIT_ERROR
    gone = _with_table(args, lambda t: t.forget(sha))
    if args.json:
        print_json({"sha256": sha, "forgotten": gone})
    else:
        print(f"{sha}: {'forgotten' if gone else 'was not in the table'}")
    return EXIT_OK if gone else EXIT_BAD


def cmd_expire(args: argparse.Namespace) -> int:
    removed = _with_table(args, lambda t: t.expire())
    if args.json:
        print_json({"removed": removed})
    else:
        print(f"removed {removed} stale or expired entr{'y' if removed == 1 else 'ies'}")
    return EXIT_OK


def _pins_and_audit(args: argparse.Namespace):
    from pathlib import Path

    from mailvm.audit import AuditLog
    from mailvm.pins import PinStore, pins_path

    cfg = config_from(args)
    return PinStore(pins_path(cfg.scantable.path)), AuditLog(Path(cfg.quarantine.dir) / "audit.log")


def cmd_pin(args: argparse.Namespace) -> int:
    from mailvm.audit import current_user

    sha = _sha(args)
    if sha is None:
        return EXIT_ERROR
    store, audit = _pins_and_audit(args)
    who = current_user()
    try:
        pin = store.pin(sha, args.verdict, args.reason, who)
    except ValueError as exc:
        print(f"mvctl cache pin: {exc}", file=sys.stderr)
        return EXIT_ERROR
    audit.record(who, "pin", sha, f"{pin.verdict}: {pin.reason}")
    if args.json:
        print_json({"sha256": sha, "pinned": pin.verdict, "reason": pin.reason, "who": who})
    else:
        print(f"{sha}: pinned {pin.verdict} ({pin.reason})")
    return EXIT_OK


def cmd_unpin(args: argparse.Namespace) -> int:
    from mailvm.audit import current_user

    sha = _sha(args)
    if sha is None:
        return EXIT_ERROR
    store, audit = _pins_and_audit(args)
    removed = store.unpin(sha)
    if removed:
        audit.record(current_user(), "unpin", sha)
    if args.json:
        print_json({"sha256": sha, "removed": removed})
    else:
        print(f"{sha}: {'pin removed' if removed else 'was not pinned'}")
    return EXIT_OK if removed else EXIT_BAD


def cmd_pins(args: argparse.Namespace) -> int:
    store, _audit = _pins_and_audit(args)
    pins = sorted(store.all(), key=lambda p: p.at)
    if args.json:
        print_json([{"sha256": p.sha256, "verdict": p.verdict, "reason": p.reason, "who": p.who, "at": p.at} for p in pins])
        return EXIT_OK
    for p in pins:
        when = dt.datetime.fromtimestamp(p.at).isoformat(timespec="seconds")
        print(f"{p.sha256}  {p.verdict:<9}  {when}  {p.who}: {p.reason}")
    if not pins:
        print("no pinned files")
    return EXIT_OK
