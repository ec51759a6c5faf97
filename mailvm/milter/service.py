"""What the milter's ``eom`` calls: run the pipeline, wait, decide, quarantine.

One :class:`MilterService` per ``mailvm serve`` process, shared by every
connection thread.  It owns the worker process pool, the current policy set
(reloaded on request, keeping the last good one when a reload fails), the
quarantine store and the release key.  :meth:`MilterService.handle` returns an
:class:`Outcome`; applying it to the SMTP transaction is
:mod:`mailvm.milter.actions`' job.
"""

from __future__ import annotations

import concurrent.futures as cf
import logging
import os
import threading
import time
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from pebble import ProcessExpired

from mailvm.config import Config, ConfigError
from mailvm.job import ScanJob
from mailvm.milter.pipeline import init_worker, scan_path, worker_ready
from mailvm.obs.msglog import MessageRecord
from mailvm.obs.msglog import emit as emit_message_line
from mailvm.policy import (
    ACTION_RANK,
    ArtifactOutcome,
    ClientInfo,
    Policy,
    bypass_decision,
    bypass_for,
    failure_decision,
    Decision,
    PolicySet,
    analysis_settings,
    decide_for_recipients,
    decision_report,
    load_policies,
    oversize_decision,
)
from mailvm.verdict import Finding

log = logging.getLogger(__name__)

#: the finding extraction leaves when it stopped on an internal error (files may be missing)
EXTRACT_ERROR = "extract_error"
#: extra time past the policy's maximum wait before the worker is given up on
WORKER_GRACE_S = 10.0
PROGRESS_EVERY_S = 10.0
#: the worker pool is checked this often, and started again when it stopped
WATCH_EVERY_S = 1.0
#: restarts of a stopped worker pool back off: none for the first, then 1 s doubling to 60 s;
#: from the fifth restart within ten minutes each one is logged CRITICAL
RESTART_BACKOFF_FIRST_S = 1.0
RESTART_BACKOFF_MAX_S = 60.0
RESTART_WINDOW_S = 600.0
RESTART_LOUD_AFTER = 5


class WorkersRestarting(RuntimeError):
    """The scan worker pool stopped and its restart is backing off: no worker for this message."""


@dataclass
class Outcome:
    decision: Decision
    report: dict[str, Any] | None
    raw: bytes
    sender: str = ""
    recipients: list[str] = field(default_factory=list)
    quarantine_id: str | None = None
    released_id: str | None = None
    #: for a strip decision: the body with every offending part replaced, verified (actions.StripResult)
    stripped: Any = None
    #: why an allow-list let this message skip (part of) the analysis, or ""
    bypass: str = ""


class MilterService:
    def __init__(
        self,
        cfg: Config,
        config_path: str | None,
        policy_dir: str | None,
        quarantine: Any,
        release_key: bytes,
        workers: int = 2,
    ) -> None:
        self.cfg = cfg
        self.config_path = config_path
        self.policy_dir = policy_dir
        self.quarantine = quarantine
        self.release_key = release_key
        self.workers = max(1, workers)
        self.spool_dir = cfg.spool.dir
        self.max_message_bytes = cfg.extract.max_message_bytes
        self._policies: PolicySet = load_policies(config_path, policy_dir)
        self._lock = threading.Lock()
        self._executor: Any = None  # pebble.ProcessPool
        self._restarts: list[float] = []
        self._stopping = threading.Event()
        #: Prometheus metrics (mailvm.obs.metrics.Metrics) when [metrics] listen is set
        self.metrics: Any = None
        self.counters: dict[str, int] = {}
        #: who the scan workers become (mailvm.privilege); None: they stay as this process
        self.worker_identity: Any = None
        from mailvm.holdindex import HoldIndex
        from mailvm.notify import load_templates

        #: notice templates (validated when the config was loaded; mailvm.notify)
        self.templates = load_templates(cfg.notify.template_dir)
        self.hold_index = HoldIndex(cfg.quarantine.dir)
        from mailvm.milter.msgcache import MessageCache

        #: reports of messages seen lately (mailvm.milter.msgcache); its table is opened by start_workers
        self.msgcache = MessageCache(cfg.milter.message_cache_entries, cfg.milter.message_cache_ttl_s)

    # -- lifecycle ---------------------------------------------------------------
    def start(self) -> None:
        """:meth:`prepare` then :meth:`start_workers` (``mailvm serve`` drops root in between)."""
        self.prepare()
        self.start_workers()

    def prepare(self) -> None:
        """What needs root: the spool and the directories shared with the workers, and who they become."""
        from mailvm.privilege import UMASK, plan_workers, share_dirs

        os.umask(UMASK)  # what this process creates in the shared directories stays the workers' group's
        os.makedirs(self.spool_dir, mode=0o700, exist_ok=True)
        ident, why = plan_workers(self.cfg)
        if ident is not None:
            problems = share_dirs(self.cfg, ident)
            if problems:
                ident, why = None, "cannot share " + "; ".join(problems)[:300]
        if ident is None:
            log.warning("scan workers run as root: %s", why)
        else:
            log.info("scan workers run as %s (uid %d) with rlimits and no_new_privs", ident.user, ident.uid)
        self.worker_identity = ident

    def start_workers(self) -> None:
        """Start the scan workers.  After ``mailvm serve`` dropped root (multiprocessing's forkserver
        listens on a socket in a directory private to the user that started it: one started as root
        could not be asked for a new worker once serve is not root any more)."""
        self._executor = self._new_executor()
        self._open_message_cache()
        threading.Thread(target=self._watch, name="mailvm-workers-watch", daemon=True).start()

    def _open_message_cache(self) -> None:
        """The message cache checks files against the scanned table and the pins as this process
        (after ``mailvm serve`` dropped root); without them it stays off and says why."""
        if self.msgcache.max_entries <= 0:
            return
        try:
            from mailvm.pins import PinStore, pins_path
            from mailvm.store import open_table

            self.msgcache.table = open_table(self.cfg)
            self.msgcache.pins = PinStore(pins_path(self.cfg.scantable.path))
        except Exception as exc:
            self.msgcache.table = None
            log.warning("message cache off: cannot open the scanned table (%s)", exc)

    def _new_executor(self):
        """The scan workers: a Pebble process pool, the one owner of the worker processes.

        Pebble kills a worker whose task overruns its timeout and starts a fresh one, and
        replaces a worker that died (its task fails alone); ``forkserver`` workers never
        inherit the milter's threads or sockets.  Pebble starts its workers on the first task:
        one is scheduled at once (the YARA rules compiled, the table open before any message,
        and a broken worker set-up is in the log at start).
        """
        import multiprocessing

        import pebble

        ctx = multiprocessing.get_context("forkserver")
        from mailvm.procfs import start_ticks

        me = os.getpid()  # the workers die with this process (not only with the forkserver)
        ex = pebble.ProcessPool(max_workers=self.workers, initializer=init_worker,
                                initargs=(self.config_path, me, start_ticks(me), self.worker_identity),
                                context=ctx)
        ex.schedule(worker_ready)
        return ex

    def close(self) -> None:
        self._stopping.set()
        with self._lock:
            ex, self._executor = self._executor, None
        if ex is not None:
            _stop_pool(ex)
        table, self.msgcache.table = self.msgcache.table, None
        if table is not None and hasattr(table, "close"):
            try:
                table.close()
            except Exception as exc:  # closing is best effort
                log.debug("closing the message cache's table: %s", exc)

    def _watch(self) -> None:
        """Start the worker pool again soon after it stopped, not only when the next message comes."""
        while not self._stopping.wait(WATCH_EVERY_S):
            try:
                self._pool()
            except RuntimeError:
                pass  # not started, closed, or backing off: said in the log
            except Exception:
                log.exception("checking the scan worker pool failed")

    def _pool(self):
        """The worker pool; one that stopped is stopped for good and replaced, under the lock.

        Pebble stops the whole pool when a worker dies while no task runs (an idle worker killed,
        a worker whose set-up fails).  Restarts back off (:data:`RESTART_BACKOFF_FIRST_S` doubling
        to :data:`RESTART_BACKOFF_MAX_S`); meanwhile :class:`WorkersRestarting` is raised.
        """
        with self._lock:
            ex = self._executor
            if ex is None:
                raise RuntimeError("service not started or closed")
            if ex.active:
                return ex
            now = time.monotonic()
            self._restarts = [t for t in self._restarts if now - t < RESTART_WINDOW_S]
            n = len(self._restarts)
            delay = 0.0 if n == 0 else min(RESTART_BACKOFF_MAX_S, RESTART_BACKOFF_FIRST_S * 2 ** (n - 1))
            if n and now - self._restarts[-1] < delay:
                raise WorkersRestarting(f"scan workers restarting in {delay - (now - self._restarts[-1]):.0f} s")
            self._restarts.append(now)
            level = logging.CRITICAL if n + 1 >= RESTART_LOUD_AFTER else logging.ERROR
            log.log(level, "the scan worker pool stopped (a worker died with no task running, or its set-up "
                    "failed); starting a new one (restart %d in %.0f min%s)", n + 1, RESTART_WINDOW_S / 60,
                    f", next one waits {min(RESTART_BACKOFF_MAX_S, RESTART_BACKOFF_FIRST_S * 2 ** n):.0f} s")
            old, ex = ex, self._new_executor()
            self._executor = ex
        # the old pool's workers are stopped (SIGTERM, then SIGKILL) off this thread: stop() only marks it
        threading.Thread(target=_stop_pool, args=(old,), name="mailvm-workers-stop", daemon=True).start()
        return ex

    @property
    def policies(self) -> PolicySet:
        return self._policies

    def own_header_names(self) -> frozenset[str]:
        """Lower-case names of every header any policy writes: inbound copies are removed (forgery)."""
        pset = self._policies
        cached = getattr(self, "_own_names", None)
        if cached is not None and cached[0] is pset:
            return cached[1]
        names = {"x-mailvm-verdict", "x-mailvm-report"}
        for pol in [pset.default, *pset.domains.values()]:
            names.add(pol.headers.verdict.lower())
            names.add(pol.headers.report.lower())
        self._own_names = (pset, frozenset(names))
        return self._own_names[1]

    def reload(self) -> bool:
        """Reload the policies; on any error keep the last good set and say why."""
        try:
            new = load_policies(self.config_path, self.policy_dir, previous=self._policies)
        except ConfigError as exc:
            log.error("policy reload failed, keeping the last good policy: %s", exc)
            return False
        self._policies = new
        self.msgcache.clear()  # reports were made under the old policies' settings
        log.info("policies reloaded")
        return True

    def _verified_strip(self, raw: bytes, decision: Decision, report: dict[str, Any] | None, tag: str):
        """Strip the offending parts, or fail closed: if any is left (not found, undecodable),
        the message is quarantined whole instead of delivered with malware inside."""
        from dataclasses import replace

        from mailvm.milter.actions import notices, strip_parts

        try:
            result = strip_parts(raw, decision.strip_parts, notices(report))
        except Exception as exc:  # a message the parser cannot rewrite: never deliver it half-cleaned
            log.error("%s: strip failed (%s); quarantining instead", tag, exc)
            result = None
        if result is not None and result.complete:
            return decision, result
        why = "strip could not remove every offending part, quarantined"
        log.warning("%s: %s (missing %s)", tag, why, sorted(result.missing)[:3] if result else "all")
        return replace(decision, action="quarantine", reason=(decision.reason + "; " + why)[:300], strip_parts=()), None

    def _count(self, key: str) -> None:
        with self._lock:
            self.counters[key] = self.counters.get(key, 0) + 1

    # -- one message ---------------------------------------------------------------
    def handle(
        self,
        raw: bytes,
        sender: str,
        recipients: Sequence[str],
        queue_id: str = "",
        truncated: bool = False,
        release_header: str | None = None,
        progress: Callable[[], Any] | None = None,
        client: ClientInfo | None = None,
        message_id: str = "",
        size: int = 0,
        spooled: str | None = None,
        digest: str | None = None,
    ) -> Outcome:
        """Decide one message; then one log line (and the metrics) say what happened to it.

        ``spooled``: a file already holding exactly ``raw`` (the milter's :class:`MessageSpool`),
        which the scan worker then reads; without it ``raw`` is spooled here.  ``digest``: the
        milter's :class:`~mailvm.milter.msgcache.MessageDigest` of it (the message cache's key)."""
        started = time.monotonic()
        client = client or ClientInfo(sender=sender)
        if self.metrics is not None:
            self.metrics.inflight.inc()
        try:
            outcome = self._handle(raw, sender, recipients, queue_id, truncated, release_header, progress, client,
                                   spooled, digest)
        except Exception:
            if self.metrics is not None:
                self.metrics.error("milter")
            raise
        finally:
            if self.metrics is not None:
                self.metrics.inflight.dec()
        elapsed = time.monotonic() - started
        d = outcome.decision
        timings = dict((outcome.report or {}).get("timings", {}) or {})
        timings["total"] = round(elapsed, 4)
        rec = MessageRecord(
            queue_id=queue_id, client_ip=client.ip, client_name=client.name, helo=client.helo,
            auth_user=client.auth_user, sender=sender, recipients=list(recipients), size=size or len(raw),
            message_id=message_id, verdict=d.verdict, score=d.score, action=d.action, domain=d.policy,
            rule=d.rule, reason=d.reason, bypass=outcome.bypass, quarantine_id=outcome.quarantine_id or "",
            answered="message-cache" if (outcome.report or {}).get("message_cache") else "", timings=timings)
        emit_message_line(rec, self.cfg.log.format)
        if self.metrics is not None:
            self.metrics.observe_message(d.verdict, d.action, elapsed, timings, (outcome.report or {}).get("artifacts", ()))
            if outcome.bypass:
                self.metrics.bypassed(outcome.bypass.split(" ", 1)[0])
        return outcome

    def _handle(
        self,
        raw: bytes,
        sender: str,
        recipients: Sequence[str],
        queue_id: str,
        truncated: bool,
        release_header: str | None,
        progress: Callable[[], Any] | None,
        client: ClientInfo,
        spooled: str | None = None,
        digest: str | None = None,
    ) -> Outcome:
        policies = [p for _, p in self._policies.for_recipients(list(recipients))]
        tag = queue_id or "-"
        if release_header is not None:
            released = self._check_release(raw, release_header)
            if released is not None:
                self._count("released")
                log.info("%s: released quarantine item %s, delivered without a new scan", tag, released)
                return Outcome(self._released_decision(policies, released), None, raw, sender, list(recipients),
                               released_id=released)
            log.warning("%s: invalid X-Mailvm-Release header ignored; scanning normally", tag)
        message_findings: list[Finding] = []
        started = time.monotonic()
        if truncated:
            # mailvm holds only part of it: never scan, store or drop a partial copy (Postfix keeps it whole)
            decision = oversize_decision(
                policies, f"message larger than {self.max_message_bytes} bytes (or its header over the cap)")
            self._count(f"action_{decision.action}")
            log.warning("%s: from=<%s> rcpts=%d %s -> %s", tag, sender, len(recipients), decision.reason, decision.action)
            if decision.action == "hold":  # `mvctl hold list` says why, as for any other hold
                self._record_hold(queue_id, decision, decision.policy, recipients, tag)
            return Outcome(decision, None, raw, sender, list(recipients))
        skip, why = bypass_for(policies, client)
        if skip == "scan":
            log.info("%s: bypass (%s): not analysed", tag, why)
            decision = bypass_decision(policies[0] if policies else Policy(), why)
            return Outcome(decision, None, raw, sender, list(recipients), bypass=why)
        if skip:
            log.info("%s: bypass (%s): static analysis only, no detonation", tag, why)
        settings = analysis_settings(policies)  # frozen: the worker reads it unchanged (mailvm.job)
        max_wait = settings.max_wait_s
        key = self.msgcache.key(digest, settings, bool(skip)) if digest and self.msgcache.enabled else None
        report = self.msgcache.get(key) if key else None
        if report is not None:
            report["message_cache"] = True  # the same message's report, every file's verdict re-checked
            self._count("message_cache_hits")
            log.debug("%s: answered from the message cache", tag)
        else:
            report = self._run_pipeline(raw, settings, started + max_wait, bool(skip), progress,
                                        started + max_wait + WORKER_GRACE_S, tag, spooled)
            if key and report is not None:
                self.msgcache.put(key, report)
        if report is None:
            # mailvm itself failed and has no verdict at all: each domain's fail_open decides (tempfail 451
            # 4.3.0, or deliver marked "failed-open"); the strictest wins
            if self.metrics is not None:
                self.metrics.error("pipeline")
            outcomes = []
            decision = max((failure_decision(p, "the analysis did not complete") for p in policies or [Policy()]),
                           key=lambda d: ACTION_RANK[d.action])
        else:
            outcomes = outcomes_from_report(report)
            message_findings.extend(
                Finding(f["id"], f["severity"], f.get("detail", ""), "extract") for f in report.get("findings", [])
            )
            decision = decide_for_recipients(policies, outcomes, message_findings)
        self._count(f"action_{decision.action}")
        if decision.action == "strip":
            decision, stripped = self._verified_strip(raw, decision, report, tag)
        else:
            stripped = None
        outcome = Outcome(decision, report, raw, sender, list(recipients), stripped=stripped, bypass=why)
        if decision.action in ("quarantine", "hold"):
            # filed under the domain whose policy decided (its retention and notices apply)
            domain = decision.policy if decision.policy != "default" else (
                recipients[0].rpartition("@")[2].lower() if recipients else "")
            record = decision_report(decision, outcomes, message_findings)
            record["subject"] = str((report or {}).get("headers", {}).get("subject", ""))[:300]
            if decision.action == "quarantine":
                record.update(client_ip=client.ip, client_name=client.name, helo=client.helo,
                              auth_user=client.auth_user, deciding_domain=decision.policy,
                              received=_received_chain(raw))
                record["scan"] = report
                outcome.quarantine_id = self.quarantine.add(raw, sender, list(recipients), record, domain, queue_id)
                log.info("%s: quarantined as %s", tag, outcome.quarantine_id)
                ident = outcome.quarantine_id
            else:
                self._record_hold(queue_id, decision, domain, recipients, tag)
                ident = queue_id or "-"
            self._send_notices(decision.action, ident, queue_id, domain, sender, recipients, record)
        return outcome

    def _record_hold(self, queue_id: str, decision: Decision, domain: str, recipients: Sequence[str],
                     tag: str) -> None:
        """Why this message is held, for ``mvctl hold list`` (mailvm.holdindex); never raises."""
        from mailvm.holdindex import HoldRecord

        try:
            self.hold_index.record(HoldRecord(queue_id, time.time(), decision.verdict, int(decision.score),
                                              decision.reason, domain, decision.rule, tuple(recipients)))
        except (OSError, ValueError) as exc:  # the message is held all the same: Postfix keeps it
            log.warning("%s: hold reason not recorded (%s); mailvm's log line says why it is held", tag, exc)

    def _send_notices(self, event: str, ident: str, queue_id: str, domain: str, sender: str,
                      recipients: Sequence[str], record: dict[str, Any]) -> None:
        """Tell each domain's ``[notify]`` admins (and its recipients where asked) about a quarantined
        or held message, in a thread: never on the SMTP transaction's critical path, and a failure
        here never changes what happens to the message."""
        try:
            self._start_notices(event, ident, queue_id, domain, sender, recipients, record)
        except Exception:
            log.exception("%s %s: notices not sent", event, ident)

    def _start_notices(self, event: str, ident: str, queue_id: str, domain: str, sender: str,
                       recipients: Sequence[str], record: dict[str, Any]) -> None:
        import socket

        from mailvm.notify import facts_from_record, send_notices
        from mailvm.quarantine import smtp_deliver

        notices = self.notice_plan(event, recipients)
        if not notices:
            return
        host = socket.gethostname()
        facts = facts_from_record(event, ident, queue_id, domain, sender, recipients, record, time.time(), host)
        from_addr = self.cfg.notify.from_address or f"mailvm@{host if '.' in host else host + '.localdomain'}"
        deliver = smtp_deliver(self.cfg.quarantine.reinject_host, self.cfg.quarantine.reinject_port)
        threading.Thread(target=send_notices, args=(self.templates, facts, notices, deliver, from_addr),
                         name="mailvm-notices", daemon=True).start()

    def notice_plan(self, event: str, recipients: Sequence[str]) -> list[Any]:
        """Who is told about a message of ``recipients`` that was quarantined or held (``event``): each
        recipient domain's ``[notify]`` (and the older ``quarantine.notify``), by :func:`mailvm.notify.plan_notices`."""
        from mailvm.notify import DomainNotify, plan_notices
        from mailvm.policy import recipient_domain

        domains = []
        for name, pol in self._policies.for_recipients(list(recipients)):
            admins = list(pol.notify.admin)
            if event == "quarantine" and pol.quarantine.notify:
                admins.append(pol.quarantine.notify)  # the older key, kept working
            domains.append(DomainNotify(
                domain=name, admin=tuple(admins), recipients=pol.notify.recipients, events=tuple(pol.notify.events),
                domain_recipients=tuple(r for r in recipients if (recipient_domain(r) or "") == name)))
        return plan_notices(event, domains)

    def _run_pipeline(
        self, raw: bytes, settings: Any, deadline: float, static_only: bool, progress: Callable[[], Any] | None,
        hard_deadline: float, tag: str, spooled: str | None = None,
    ) -> dict[str, Any] | None:
        """The scan worker's report on the message, or None (no verdict: the caller's fail_open applies)."""
        if spooled is not None:
            return self._scan_in_worker(ScanJob(spooled, settings, deadline, static_only), progress, hard_deadline, tag)
        from mailvm.milter.spoolfile import MessageSpool

        spool = MessageSpool(self.spool_dir)  # a caller that did not spool the message (tests, tools)
        try:
            spool.write(raw)
            spool.finish()
            return self._scan_in_worker(ScanJob(spool.path, settings, deadline, static_only), progress,
                                        hard_deadline, tag)
        finally:
            spool.close()

    def _scan_in_worker(self, job: ScanJob, progress: Callable[[], Any] | None, hard_deadline: float,
                        tag: str) -> dict[str, Any] | None:
        for attempt in (1, 2):
            left = hard_deadline - time.monotonic()
            if left <= 0:
                return None
            # the hard limit is Pebble's: past it the worker is killed and replaced, so a stuck
            # analyzer (pdfid, oletools, pefile on a hostile file) never keeps a worker for good
            try:
                fut = self._pool().schedule(scan_path, args=(job,), timeout=left)
            except RuntimeError as exc:  # stopped between the check and the call, or restarting
                log.error("%s: no scan worker (%s)%s", tag, exc, "; trying again" if attempt == 1 else "")
                time.sleep(min(1.0, max(0.0, hard_deadline - time.monotonic())))
                continue
            while not fut.done():
                cf.wait([fut], timeout=min(PROGRESS_EVERY_S, max(0.1, hard_deadline - time.monotonic())))
                if not fut.done() and progress is not None:
                    progress()
            try:
                return fut.result()
            except TimeoutError:
                log.error("%s: the scan did not finish in %.0f s; its worker was killed and replaced", tag, left)
                return None
            except (ProcessExpired, BrokenProcessPool) as exc:
                # the worker died under this message (others go on), or the pool stopped before the
                # task ran: try once more on a fresh worker
                log.error("%s: scan worker died (%s)%s", tag, exc, "; retrying once" if attempt == 1 else "")
                continue
            except Exception:
                log.exception("%s: scan failed", tag)
                return None
        return None

    # -- release -------------------------------------------------------------------
    def _check_release(self, raw: bytes, header: str) -> str | None:
        from mailvm.release import message_body_sha256, verify_token

        item_id = verify_token(self.release_key, header, message_body_sha256(raw))
        if item_id is None:
            return None
        # the MTA runs this milter *during* the release's SMTP delivery, while the
        # item is still "releasing"; the HMAC over the body is what authenticates
        try:
            state = self.quarantine.get(item_id).state
        except (KeyError, ValueError):
            return None
        return item_id if state in ("releasing", "released") else None

    def _released_decision(self, policies: Sequence[Any], item_id: str) -> Decision:
        name = policies[0].headers.verdict if policies else "X-Mailvm-Verdict"
        return Decision(
            action="accept",
            verdict="released",
            score=0,
            reason=f"released from quarantine ({item_id})",
            smtp_code=None,
            smtp_ext=None,
            smtp_text=None,
            headers=((name, f"released id={item_id}"),),
        )


def _stop_pool(ex: Any) -> None:
    """Stop a Pebble pool for good: its workers are terminated (killed if they linger)."""
    try:
        ex.stop()
        ex.join(timeout=30)
    except Exception as exc:  # it has been replaced whatever it says
        log.warning("stopping the old scan worker pool: %s", exc)


def _received_chain(raw: bytes, limit: int = 20) -> list[str]:
    """The message's Received fields (its path), unfolded and bounded, for the quarantine record."""
    head = raw.split(b"\r\n\r\n", 1)[0].split(b"\n\n", 1)[0][:256 * 1024].decode("utf-8", "replace")
    out: list[str] = []
    for field_ in head.replace("\r\n", "\n").replace("\n\t", " ").replace("\n ", " ").split("\n"):
        if field_.lower().startswith("received:"):
            out.append(" ".join(field_[9:].split())[:500])
            if len(out) >= limit:
                break
    return out


def _not_executed(artifact: dict[str, Any]) -> str:
    """The reason a file that should have run did not (its ``not_executed`` finding), or ""."""
    for f in artifact.get("findings", []):
        if f.get("id") == "not_executed":
            return str(f.get("detail", "") or "not executed")[:200]
    return ""


def outcomes_from_report(report: dict[str, Any]) -> list[ArtifactOutcome]:
    """One outcome per artifact.  ``part_id`` is the identity extraction recorded as data on
    each artifact (the decoded content's SHA-256 of the MIME part that carries it; for an
    archive member, the attachment holding the archive), never parsed back from the
    ``origin`` display string: file names are attacker data (``x > y.zip``).
    """
    artifacts = report.get("artifacts", [])
    result = []
    # extraction that stopped on an internal error may have missed files: never "clean" by
    # omission; the policy's error action (tempfail by default) applies
    broken = [f for f in report.get("findings", []) if f.get("id") == EXTRACT_ERROR]
    broken += [f for a in artifacts for f in a.get("findings", []) if f.get("id") == EXTRACT_ERROR]
    if broken:
        result.append(ArtifactOutcome(sha256="", name="(extraction)", verdict="error", score=0,
                                      findings=(Finding(EXTRACT_ERROR, 0, str(broken[0].get("detail", ""))[:200], "extract"),)))
    for a in artifacts:
        result.append(
            ArtifactOutcome(
                sha256=a["sha256"],
                name=a["name"],
                verdict=a["verdict"],
                score=int(a["score"]),
                findings=tuple(Finding(f["id"], f["severity"], f.get("detail", "")) for f in a.get("findings", [])),
                part_id=str(a.get("part_id") or "") or None,
                not_executed=_not_executed(a),
                kind=str(a.get("kind", "")),
                mime=str(a.get("type", "")),
                role=str(a.get("role", "")),
            )
        )
    return result

