"""Prometheus metrics of ``mailvm serve`` (the ``prometheus_client`` library).

Two sources feed one registry:

* the milter process observes every message itself (:meth:`Metrics.observe_message`):
  messages by verdict and action, whole-message latency, extraction and triage
  time, cache hits and misses, detonations seen by the message path, errors by
  stage, bypasses;
* the pool service is another process (possibly on another host): its figures
  are read at scrape time from the ``status.json`` it writes anyway
  (:class:`PoolStatusCollector`): slots ready/busy/starting, queue depth and
  the oldest job's age, jobs by outcome, hand-over and guest-run quantiles.

Nothing is created at import time: :func:`new_metrics` builds a private
:class:`~prometheus_client.CollectorRegistry`, so tests and several services in
one process never collide on the library's global registry.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

log = logging.getLogger(__name__)

#: seconds; a message answered from the table takes milliseconds, a detonation seconds to minutes
MESSAGE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
STAGE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
#: the stages a message report may time (``report["timings"]``); others are ignored
STAGES = ("extract", "triage", "lookup", "queue_wait", "handover", "guest_run", "decide", "total")


@dataclass
class Metrics:
    registry: CollectorRegistry
    messages: Counter
    message_seconds: Histogram
    stage_seconds: Histogram
    cache: Counter
    detonations: Counter
    errors: Counter
    bypass: Counter
    inflight: Gauge

    def observe_message(self, verdict: str, action: str, seconds: float,
                        timings: Mapping[str, Any] | None = None,
                        artifacts: Iterable[Mapping[str, Any]] = ()) -> None:
        """One finished message: its decision, its time per stage and what each file cost."""
        self.messages.labels(verdict=_label(verdict), action=_label(action)).inc()
        self.message_seconds.observe(max(0.0, float(seconds)))
        for stage, value in (timings or {}).items():
            if stage in STAGES and isinstance(value, (int, float)) and value >= 0:
                self.stage_seconds.labels(stage=stage).observe(float(value))
        for art in artifacts:
            source = str(art.get("source", ""))
            if source == "cache":
                self.cache.labels(result="hit").inc()
            elif source:
                self.cache.labels(result="miss").inc()
            if source == "detonation":
                self.detonations.labels(kind=_label(art.get("kind", "unknown")),
                                        outcome=_label(art.get("verdict", "error"))).inc()

    def error(self, stage: str) -> None:
        self.errors.labels(stage=_label(stage)).inc()

    def bypassed(self, reason: str) -> None:
        self.bypass.labels(reason=_label(reason)).inc()


def _label(value: Any) -> str:
    """Label values come from reports: keep them short and tame (bounded cardinality is the caller's job)."""
    text = "".join(c if c.isalnum() or c in "_-." else "_" for c in str(value))[:40]
    return text or "none"


def new_metrics(pool_status: Callable[[], dict[str, Any] | None] | None = None) -> Metrics:
    """A private registry with mailvm's metrics; ``pool_status`` feeds the pool's figures at scrape time."""
    reg = CollectorRegistry(auto_describe=True)
    m = Metrics(
        registry=reg,
        messages=Counter("mailvm_messages", "Messages decided, by verdict and action", ["verdict", "action"], registry=reg),
        message_seconds=Histogram("mailvm_message_seconds", "Time from end of data to the decision",
                                  buckets=MESSAGE_BUCKETS, registry=reg),
        stage_seconds=Histogram("mailvm_stage_seconds", "Time per stage of a message's analysis", ["stage"],
                                buckets=STAGE_BUCKETS, registry=reg),
        cache=Counter("mailvm_cache_lookups", "Files looked up in the scanned table, hit or miss", ["result"], registry=reg),
        detonations=Counter("mailvm_detonations", "Files whose verdict came from a detonation, by kind and verdict",
                            ["kind", "outcome"], registry=reg),
        errors=Counter("mailvm_errors", "Failures by stage (worker, pipeline, quarantine, policy...)", ["stage"], registry=reg),
        bypass=Counter("mailvm_bypass", "Messages that skipped analysis through an allow-list, by reason", ["reason"],
                       registry=reg),
        inflight=Gauge("mailvm_messages_in_flight", "Messages being analysed now", registry=reg),
    )
    if pool_status is not None:
        reg.register(PoolStatusCollector(pool_status))
    return m


class PoolStatusCollector(Collector):
    """The pool service's own figures, read from its status file when Prometheus scrapes."""

    #: a status older than this is not reported as live figures (the pool is down or stuck)
    STALE_S = 30.0

    def __init__(self, read: Callable[[], dict[str, Any] | None]) -> None:
        self._read = read

    def collect(self):  # type: ignore[override]
        try:
            status = self._read() or {}
        except Exception as exc:  # a scrape must never fail because of the pool
            log.debug("metrics: pool status unreadable: %s", exc)
            status = {}
        age = time.time() - float(status.get("updated_at", 0) or 0)
        up = GaugeMetricFamily("mailvm_pool_up", "1 while the pool service's status is fresh")
        live = bool(status) and age < self.STALE_S and status.get("state") == "running"
        up.add_metric([], 1.0 if live else 0.0)
        yield up
        if not status:
            return
        slots = GaugeMetricFamily("mailvm_pool_slots", "Detonation slots by state", labels=["state"])
        for state in ("ready", "busy", "starting", "target"):
            slots.add_metric([state], float((status.get("slots") or {}).get(state, 0) or 0))
        yield slots
        queue = GaugeMetricFamily("mailvm_pool_queue_depth", "Jobs waiting for a slot")
        queue.add_metric([], float(status.get("queue", 0) or 0))
        yield queue
        oldest = GaugeMetricFamily("mailvm_pool_oldest_job_seconds", "Age of the oldest waiting job")
        oldest.add_metric([], float(status.get("oldest_job_s", 0) or 0))
        yield oldest
        jobs = (status.get("jobs") or {})
        fam = CounterMetricFamily("mailvm_pool_jobs", "Jobs by outcome since the pool service started", labels=["outcome"])
        for outcome in ("submitted", "done", "failed", "retried", "timed_out_queued"):
            fam.add_metric([outcome], float(jobs.get(outcome, 0) or 0))
        yield fam
        verdicts = CounterMetricFamily("mailvm_pool_verdicts", "Detonation verdicts since the pool service started",
                                       labels=["verdict"])
        for verdict, n in (jobs.get("verdicts") or {}).items():
            verdicts.add_metric([_label(verdict)], float(n or 0))
        yield verdicts
        for key, name, unit, scale in (("handover_ms", "mailvm_pool_handover_seconds", "hand-over", 0.001),
                                       ("run_s", "mailvm_pool_guest_run_seconds", "guest run", 1.0)):
            summary = status.get(key) or {}
            fam = GaugeMetricFamily(name, f"Recent {unit} time quantiles (pool's own sample window)", labels=["quantile"])
            for q, field in (("0.5", "median"), ("0.95", "p95")):
                value = summary.get(field)
                if isinstance(value, (int, float)):
                    fam.add_metric([q], float(value) * scale)
            yield fam


def start_server(metrics: Metrics, listen: str) -> Any:
    """Serve ``/metrics`` on ``host:port`` (loopback by default) in a daemon thread; returns the server."""
    from prometheus_client import start_http_server

    host, _, port = listen.rpartition(":")
    host = host.strip("[]") or "127.0.0.1"
    server, _thread = start_http_server(int(port), addr=host, registry=metrics.registry)
    log.info("metrics on http://%s:%s/metrics", host, port)
    return server
