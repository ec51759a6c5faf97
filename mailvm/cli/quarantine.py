"""``mvctl quarantine list|show|release|delete|expire|audit`` and ``mvctl hold list|release``.

The quarantine is mailvm's own durable store (``[quarantine] dir``); *hold* is
Postfix's hold queue, used by the ``hold`` policy action.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import time
from typing import Any

from mailvm.cli.common import EXIT_BAD, EXIT_ERROR, EXIT_OK, config_from, print_json

_AGE_RE = re.compile(r"^(\d+(?:\.\d+)?)([smhdw]?)$")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def age(text: str) -> float:
    """``30m``, ``12h``, ``2d``, ``1w`` -> seconds."""
    m = _AGE_RE.match(text.strip().lower())
    if not m:
        raise argparse.ArgumentTypeError(f"{text!r} is not an age such as 30m, 12h, 2d")
    return float(m.group(1)) * _UNITS[m.group(2)]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("quarantine", help="list, inspect, release or delete quarantined messages",
                       description="mailvm's own quarantine store: whole original messages with envelope and report.")
    q = p.add_subparsers(dest="q_command", metavar="ACTION")
    q.required = True
    s = q.add_parser("list", help="quarantined messages, oldest first")
    s.add_argument("--domain", help="recipient domain")
    s.add_argument("--verdict", choices=("clean", "suspicious", "malicious", "error", "pending"))
    s.add_argument("--older-than", type=age, metavar="AGE", help="e.g. 2d")
    s.add_argument("--newer-than", type=age, metavar="AGE", help="e.g. 12h")
    s.add_argument("--state", choices=("quarantined", "releasing", "released"))
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_list)
    s = q.add_parser("show", help="one item's envelope, verdict and report")
    s.add_argument("id")
    s.add_argument("--raw", action="store_true", help="print the original message instead")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_show)
    s = q.add_parser("release", help="deliver an item to its original recipients (once), or a copy to --to",
                     description="Deliver a quarantined message, with a release token so mailvm lets it through. "
                                 "Without --to: to all original recipients, once. With --to: a copy to those "
                                 "addresses only (like amavisd-release's alt_recip); the item stays quarantined "
                                 "for the others. Every release is written to the audit log.")
    s.add_argument("id")
    s.add_argument("--to", action="append", metavar="ADDRESS", dest="to",
                   help="deliver to this address only (repeatable; an original recipient or another address)")
    s.add_argument("--force", action="store_true", help="retry an interrupted release (may duplicate)")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_release)
    s = q.add_parser("delete", help="remove an item for good")
    s.add_argument("id")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_delete)
    s = q.add_parser("audit", help="who released or deleted what, and when (newest first)",
                     description="The append-only audit log of releases, deletions, expiry, hold releases, "
                                 "pins and console logins.")
    s.add_argument("--item", metavar="ID", help="entries about this item (quarantine id, queue id or SHA-256)")
    s.add_argument("--limit", type=int, default=50, help="entries shown (default 50)")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_audit)
    s = q.add_parser("expire", help="delete items older than the retention period")
    s.add_argument("--days", type=float, help="retention in days (default: quarantine.retention_days)")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_expire)

    h = sub.add_parser("hold", help="Postfix hold queue (the `hold` policy action)",
                       description="Messages the `hold` action parked in Postfix's hold queue.")
    hs = h.add_subparsers(dest="hold_command", metavar="ACTION")
    hs.required = True
    for name, func, helptext in (("list", cmd_hold_list,
                                  "held messages: id, arrival, size, sender, recipients, verdict and reason"),
                                 ("release", cmd_hold_release, "release QUEUEID from hold (postsuper -H)")):
        s = hs.add_parser(name, help=helptext)
        if name == "release":
            s.add_argument("queue_id", metavar="QUEUEID")
        else:
            s.add_argument("--json", action="store_true", help="machine-readable output")
        s.add_argument("--postfix-config", metavar="DIR", help="Postfix config directory (postfix -c DIR)")
        s.set_defaults(func=func)


def _store(args: argparse.Namespace):
    from mailvm.quarantine import QuarantineStore

    cfg = config_from(args)
    return cfg, QuarantineStore(cfg.quarantine.dir)


def _item_dict(item: Any) -> dict[str, Any]:
    return {
        "id": item.id, "created": item.created_iso, "domain": item.domain, "sender": item.sender,
        "recipients": list(item.recipients), "queue_id": item.queue_id, "size": item.size,
        "verdict": item.verdict, "score": item.score, "action": item.action, "reason": item.reason,
        "state": item.state, "subject": str(item.report.get("subject", ""))[:300],
        "sha256": item.sha256,
    }


def cmd_list(args: argparse.Namespace) -> int:
    _, store = _store(args)
    now = time.time()
    items = store.list(
        domain=args.domain, verdict=args.verdict, state=args.state,
        older_than=now - args.older_than if args.older_than else None,
        newer_than=now - args.newer_than if args.newer_than else None,
    )
    rows = [_item_dict(i) for i in items]
    if args.json:
        print_json(rows)
        return EXIT_OK
    for r in rows:
        print(f"{r['id']}  {r['created']}  {r['state']:<11} {r['verdict']:<10} {r['domain']:<20} "
              f"<{r['sender']}> {r['subject'][:50]}")
    print(f"{len(rows)} item(s)")
    return EXIT_OK


def _get(store, item_id: str):
    try:
        return store.get(item_id)
    except (KeyError, ValueError):
        return None


def cmd_show(args: argparse.Namespace) -> int:
    _, store = _store(args)
    item = _get(store, args.id)
    if item is None:
        print(f"mvctl quarantine: no item {args.id!r}", file=sys.stderr)
        return EXIT_BAD
    if args.raw:
        sys.stdout.buffer.write(store.read_message(item.id))
        return EXIT_OK
    data = _item_dict(item)
    data["report"] = item.report
    if args.json:
        print_json(data)
        return EXIT_OK
    for key in ("id", "created", "state", "domain", "sender", "recipients", "queue_id", "verdict", "score",
                "action", "reason", "subject", "size", "sha256"):
        print(f"{key:<11} {data[key]}")
    for a in item.report.get("artifacts", []):
        print(f"  {a.get('verdict', ''):<10} {a.get('score', 0):2}  {a.get('name', '')}  sha256 {a.get('sha256', '')[:16]}")
        for f in a.get("findings", [])[:5]:
            print(f"      [{f.get('severity', 0):2}] {f.get('id', '')}: {f.get('detail', '')}")
    return EXIT_OK


def _audit(cfg: Any):
    from pathlib import Path

    from mailvm.audit import AuditLog

    return AuditLog(Path(cfg.quarantine.dir) / "audit.log")


def cmd_release(args: argparse.Namespace) -> int:
    from mailvm.audit import current_user
    from mailvm.policy import address_problem
    from mailvm.quarantine import release_audited, smtp_deliver
    from mailvm.release import load_or_create_key

    for addr in args.to or ():
        if not addr or address_problem(addr):
            print(f"mvctl quarantine release: --to {addr!r} is not an e-mail address", file=sys.stderr)
            return EXIT_ERROR
    cfg, store = _store(args)
    key = load_or_create_key(cfg.quarantine.release_key)
    deliver = smtp_deliver(cfg.quarantine.reinject_host, cfg.quarantine.reinject_port)
    result = release_audited(store, _audit(cfg), deliver, key, args.id, args.to, current_user(), force=args.force)
    if args.json:
        print_json({"id": result.id, "status": result.status, "delivered": result.delivered, "message": result.message})
    else:
        print(f"{result.id}: {result.status} ({result.message})")
    if result.status in ("released", "already_released"):
        return EXIT_OK
    return EXIT_BAD if result.status == "not_found" else EXIT_ERROR


def cmd_delete(args: argparse.Namespace) -> int:
    from mailvm.audit import current_user

    cfg, store = _store(args)
    try:
        gone = store.delete(args.id)
    except ValueError:
        gone = False
    _audit(cfg).record(current_user(), "delete", args.id, "mvctl" if gone else "mvctl: no such item", ok=gone)
    if args.json:
        print_json({"id": args.id, "deleted": gone})
    else:
        print(f"{args.id}: {'deleted' if gone else 'no such item'}")
    return EXIT_OK if gone else EXIT_BAD


def cmd_audit(args: argparse.Namespace) -> int:
    cfg = config_from(args)
    entries = _audit(cfg).entries(item=args.item, limit=max(1, min(args.limit, 10000)))
    if args.json:
        print_json([{"at": e.at_iso, "who": e.who, "action": e.action, "item": e.item, "detail": e.detail,
                     "ok": e.ok} for e in entries])
        return EXIT_OK
    for e in entries:
        print(f"{e.at_iso}  {e.who:<16} {e.action:<13} {e.item:<24} {'' if e.ok else '(failed) '}{e.detail}")
    print(f"{len(entries)} entr{'y' if len(entries) == 1 else 'ies'}")
    return EXIT_OK


def cmd_expire(args: argparse.Namespace) -> int:
    from mailvm.config import resolve_config_path
    from mailvm.policy import load_policies

    cfg, store = _store(args)
    days = args.days if args.days is not None else cfg.quarantine.retention_days
    retention_for = None
    if args.days is None:  # per-domain retention from the policies, the global value as the default
        policies = load_policies(resolve_config_path(args.config), cfg.milter.policy_dir)
        retention_for = lambda d: policies.for_domain(d).quarantine.retention_days  # noqa: E731
    removed = store.expire(days, retention_for=retention_for)
    if args.json:
        print_json({"removed": removed, "retention_days": days})
    else:
        print(f"removed {removed} item(s) older than {days} days")
    return EXIT_OK


def _pf(args: argparse.Namespace) -> list[str]:
    return ["-c", args.postfix_config] if args.postfix_config else []


#: a hold record whose message is no longer held is removed once this old (a fresh one may belong
#: to a message Postfix is moving into the hold queue right now)
HOLD_RECORD_GRACE_S = 3600.0


def cmd_hold_list(args: argparse.Namespace) -> int:
    """Held messages from ``postqueue -j`` (one JSON object per message): id, arrival, size,
    sender and every recipient, joined with mailvm's hold records (mailvm.holdindex: verdict,
    score, reason, deciding domain; Postfix itself keeps no reason)."""
    import json as _json

    from mailvm.holdindex import HoldIndex

    index = HoldIndex(config_from(args).quarantine.dir)

    res = subprocess.run(["postqueue", *_pf(args), "-j"], capture_output=True, text=True, timeout=60)
    if res.returncode != 0:
        print(res.stderr.strip(), file=sys.stderr)
        return EXIT_ERROR
    held = []
    for line in res.stdout.splitlines():
        try:
            item = _json.loads(line)
        except ValueError:
            continue
        if item.get("queue_name") != "hold":
            continue
        qid = str(item.get("queue_id", ""))
        rec = index.get(qid)
        held.append({"queue_id": qid, "arrival_time": item.get("arrival_time"),
                     "size": item.get("message_size"), "sender": str(item.get("sender", "")),
                     "recipients": [str(r.get("address", "")) for r in item.get("recipients", [])],
                     "verdict": rec.verdict if rec else None, "score": rec.score if rec else None,
                     "reason": rec.reason if rec else None, "domain": rec.domain if rec else None,
                     "held_by": "mailvm" if rec else "other (no mailvm record)"})
    index.prune(held=[h["queue_id"] for h in held], older_than_s=HOLD_RECORD_GRACE_S)
    if getattr(args, "json", False):
        print_json(held)
        return EXIT_OK
    for h in held:
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(h["arrival_time"] or 0))
        print(f"{h['queue_id']}  {when}  {h['size']} B  <{h['sender']}> -> {', '.join(h['recipients'])}")
        if h["verdict"] is not None:
            print(f"    {h['verdict']} score={h['score']} ({h['domain']}): {h['reason']}")
        else:
            print("    not held by mailvm (no record): see the mail log for this queue id")
    print(f"{len(held)} held message(s)")
    return EXIT_OK


def cmd_hold_release(args: argparse.Namespace) -> int:
    if not re.fullmatch(r"[0-9A-Za-z]{5,32}", args.queue_id):
        print(f"mvctl hold release: {args.queue_id!r} is not a Postfix queue id", file=sys.stderr)
        return EXIT_ERROR
    res = subprocess.run(["postsuper", *_pf(args), "-H", args.queue_id], capture_output=True, text=True, timeout=60)
    out = (res.stdout + res.stderr).strip()
    if res.returncode != 0:
        print(out, file=sys.stderr)
        return EXIT_ERROR
    # postsuper says "postsuper: Released from hold: N messages"; N = 0 means no such held message
    m = re.search(r"Released from hold:\s*(\d+)", out)
    if not m or int(m.group(1)) < 1:
        print(f"{args.queue_id}: not in the hold queue" + (f" ({out})" if out else ""), file=sys.stderr)
        return EXIT_BAD
    subprocess.run(["postqueue", *_pf(args), "-i", args.queue_id], capture_output=True, timeout=60)
    from mailvm.audit import current_user

    _audit(config_from(args)).record(current_user(), "hold_release", args.queue_id, "postsuper -H")
    print(f"{args.queue_id}: released from hold")
    return EXIT_OK
