"""``mvctl top``: a live terminal view of the running service's Prometheus metrics.

It reads the same ``/metrics`` endpoint Prometheus scrapes (``[metrics] listen``)
and shows messages per second by action and verdict, cache hit ratio, latency
quantiles estimated from the histograms, pool slots, queue depth and errors.
``--once`` prints one screen and exits (for scripts: ``--json``).
"""

from __future__ import annotations

import argparse
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import Any

from mailvm.cli.common import EXIT_ERROR, EXIT_OK, print_json

DEFAULT_LISTEN = "127.0.0.1:9841"
MAX_BODY = 4 * 1024 * 1024


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("top", help="live view of messages, verdicts, latency and the pool (from /metrics)",
                       description="Show the running mailvm's figures, refreshed every few seconds. "
                       "Reads the Prometheus endpoint of `mailvm serve` ([metrics] listen).")
    p.add_argument("--url", help="metrics URL (default: http://<[metrics] listen>/metrics)")
    p.add_argument("--interval", type=float, default=2.0, metavar="S", help="seconds between refreshes (default 2)")
    p.add_argument("--once", action="store_true", help="print one snapshot and exit")
    p.add_argument("--json", action="store_true", help="one snapshot as JSON (implies --once)")
    p.set_defaults(func=cmd_top)


@dataclass
class Snapshot:
    at: float
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float] = field(default_factory=dict)

    def get(self, name: str, **labels: str) -> float:
        return self.samples.get((name, tuple(sorted(labels.items()))), 0.0)

    def by(self, name: str, label: str) -> dict[str, float]:
        out: dict[str, float] = {}
        for (n, labels), value in self.samples.items():
            if n == name:
                key = dict(labels).get(label, "")
                out[key] = out.get(key, 0.0) + value
        return out


def fetch(url: str) -> Snapshot:
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(url, timeout=5) as resp:  # noqa: S310 (an admin-given local URL)
        body = resp.read(MAX_BODY).decode("utf-8", "replace")
    snap = Snapshot(time.time())
    for family in text_string_to_metric_families(body):
        for s in family.samples:
            snap.samples[(s.name, tuple(sorted(s.labels.items())))] = float(s.value)
    return snap


def quantile(snap: Snapshot, name: str, q: float, **labels: str) -> float | None:
    """Estimate a quantile from a histogram's cumulative buckets (upper bound of the bucket reached)."""
    buckets = []
    for (n, lab), value in snap.samples.items():
        d = dict(lab)
        if n != name + "_bucket" or any(d.get(k) != v for k, v in labels.items()):
            continue
        le = d.get("le", "+Inf")
        buckets.append((float("inf") if le == "+Inf" else float(le), value))
    buckets.sort()
    if not buckets or buckets[-1][1] <= 0:
        return None
    target = q * buckets[-1][1]
    for bound, count in buckets:
        if count >= target:
            return bound
    return None


def summary(now: Snapshot, before: Snapshot | None) -> dict[str, Any]:
    span = max(1e-6, now.at - before.at) if before else None

    def rate(name: str, **labels: str) -> float | None:
        if before is None or span is None:
            return None
        return max(0.0, now.get(name, **labels) - before.get(name, **labels)) / span

    actions = now.by("mailvm_messages_total", "action")
    verdicts = now.by("mailvm_messages_total", "verdict")
    hits, misses = now.get("mailvm_cache_lookups_total", result="hit"), now.get("mailvm_cache_lookups_total", result="miss")
    total = sum(actions.values())
    return {
        "messages": int(total),
        "messages_per_s": None if before is None else round(
            max(0.0, total - sum(before.by("mailvm_messages_total", "action").values())) / (span or 1), 3),
        "by_action": {k: int(v) for k, v in sorted(actions.items())},
        "by_verdict": {k: int(v) for k, v in sorted(verdicts.items())},
        "cache_hit_ratio": round(hits / (hits + misses), 3) if hits + misses else None,
        "latency_s": {"p50": quantile(now, "mailvm_message_seconds", 0.5),
                      "p95": quantile(now, "mailvm_message_seconds", 0.95)},
        "in_flight": int(now.get("mailvm_messages_in_flight")),
        "errors": {k: int(v) for k, v in sorted(now.by("mailvm_errors_total", "stage").items())},
        "bypass": {k: int(v) for k, v in sorted(now.by("mailvm_bypass_total", "reason").items())},
        "pool": {
            "up": bool(now.get("mailvm_pool_up")),
            "slots": {k: int(v) for k, v in sorted(now.by("mailvm_pool_slots", "state").items())},
            "queue": int(now.get("mailvm_pool_queue_depth")),
            "oldest_job_s": now.get("mailvm_pool_oldest_job_seconds"),
            "handover_ms_p50": round(now.get("mailvm_pool_handover_seconds", quantile="0.5") * 1000, 2),
            "detonations_per_min": None if rate("mailvm_pool_jobs_total", outcome="done") is None
            else round(60 * (rate("mailvm_pool_jobs_total", outcome="done") or 0.0), 2),
        },
    }


def render(s: dict[str, Any], url: str) -> str:
    def fmt(v: Any, unit: str = "") -> str:
        return "-" if v is None else f"{v}{unit}"

    pool = s["pool"]
    lines = [
        f"mailvm top   {time.strftime('%H:%M:%S')}   {url}",
        "",
        f"messages   {s['messages']} total   {fmt(s['messages_per_s'], '/s')}   in flight {s['in_flight']}",
        "  actions  " + ("  ".join(f"{k} {v}" for k, v in s["by_action"].items()) or "-"),
        "  verdicts " + ("  ".join(f"{k} {v}" for k, v in s["by_verdict"].items()) or "-"),
        f"latency    p50 <= {fmt(s['latency_s']['p50'], ' s')}   p95 <= {fmt(s['latency_s']['p95'], ' s')}",
        f"cache      hit ratio {fmt(s['cache_hit_ratio'])}",
        f"pool       {'up' if pool['up'] else 'DOWN'}   slots " + ("  ".join(f"{k} {v}" for k, v in pool["slots"].items()) or "-")
        + f"   queue {pool['queue']}   oldest job {pool['oldest_job_s']:.0f} s",
        f"           hand-over p50 {pool['handover_ms_p50']} ms   detonations {fmt(pool['detonations_per_min'], '/min')}",
        "errors     " + ("  ".join(f"{k} {v}" for k, v in s["errors"].items()) or "none"),
        "bypass     " + ("  ".join(f"{k} {v}" for k, v in s["bypass"].items()) or "none"),
    ]
    return "\n".join(lines)


def _default_url(args: argparse.Namespace) -> str:
    listen = DEFAULT_LISTEN
    try:
        from mailvm.cli.common import config_from

        cfg = config_from(args)
        listen = getattr(getattr(cfg, "metrics", None), "listen", "") or DEFAULT_LISTEN
    except Exception:  # the view works without a readable config, on the default address
        pass
    return f"http://{listen}/metrics"


def cmd_top(args: argparse.Namespace) -> int:
    url = args.url or _default_url(args)
    before: Snapshot | None = None
    interval = max(0.2, float(args.interval))
    try:
        while True:
            try:
                now = fetch(url)
            except (urllib.error.URLError, OSError, ValueError) as exc:
                print(f"mvctl top: cannot read {url}: {exc} (is `mailvm serve` running with [metrics] listen set?)",
                      file=sys.stderr)
                return EXIT_ERROR
            s = summary(now, before)
            if args.json:
                print_json(s)
                return EXIT_OK
            if args.once:
                print(render(s, url))
                return EXIT_OK
            sys.stdout.write("\x1b[H\x1b[2J" + render(s, url) + "\n\n(ctrl-c to quit)\n")
            sys.stdout.flush()
            before = now
            time.sleep(interval)
    except KeyboardInterrupt:
        return EXIT_OK
