"""``mailvm``: the services.

* ``mailvm serve``  the milter for Postfix/Sendmail, its scan workers and (by
  default) the detonation pool service;
* ``mailvm pool``   only the pool service (a hypervisor host of its own).

libmilter blocks SIGHUP/SIGTERM in the thread that runs it and waits for them
itself, so the milter runs in a background thread and the main thread owns the
signals: SIGHUP reloads the policies (keeping the last good set on error),
SIGTERM/SIGINT stop cleanly.
"""

from __future__ import annotations

import argparse
import grp
import logging
import multiprocessing
import os
import pwd
import signal
import sys
import threading
import time
from typing import Sequence

from mailvm.config import DEFAULT_CONFIG_PATH, ConfigError, load_config, resolve_config_path

log = logging.getLogger("mailvm.serve")

EXIT_OK = 0
EXIT_ERROR = 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mailvm", description="mailvm services: the milter and the detonation pool.")
    parser.add_argument("-c", "--config", metavar="FILE",
                        help=f"global config (default: $MAILVM_CONFIG, else {DEFAULT_CONFIG_PATH} if it exists)")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv for debug)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    p = sub.add_parser("serve", help="run the milter (and the pool service unless disabled)")
    p.add_argument("--socket", help="override milter.socket, e.g. inet:8894@127.0.0.1")
    p.add_argument("--no-pool", action="store_true", help="do not start the pool service in this process tree")
    p.set_defaults(func=cmd_serve)
    p = sub.add_parser("pool", help="run only the detonation pool service")
    p.set_defaults(func=cmd_pool)
    return parser


def config_path(args: argparse.Namespace) -> str | None:
    return resolve_config_path(args.config)


def _pool_process_main(path: str | None, verbose: int, supervisor: int = 0) -> None:
    _logging(verbose)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    from mailvm.privilege import UMASK, plan_workers, share_dirs
    from mailvm.vmpool import service

    cfg = load_config(path)
    os.umask(UMASK)  # verdicts and queue entries it writes stay readable by the scan workers' group
    ident, _ = plan_workers(cfg)
    if ident is not None and not supervisor:  # a pool of its own (`mailvm pool`): nobody else shares them
        share_dirs(cfg, ident)
    service.run(cfg, stop, supervisor=supervisor)


def cmd_pool(args: argparse.Namespace) -> int:
    _pool_process_main(config_path(args), args.verbose)
    return EXIT_OK


def _prepare_unix_socket(spec: str) -> str | None:
    if not spec.startswith("unix:"):
        return None
    path = spec[5:]
    os.makedirs(os.path.dirname(path), exist_ok=True)
    if os.path.exists(path):
        os.unlink(path)  # a stale socket from a previous run
    return path


def _fix_socket(path: str, owner: str, group: str, mode: int, stop: threading.Event) -> None:
    """Wait for libmilter to create the socket, then give it to Postfix (it is 0755 root otherwise)."""
    while not stop.is_set() and not os.path.exists(path):
        stop.wait(0.05)
    if stop.is_set():
        return
    try:
        uid = pwd.getpwnam(owner).pw_uid if owner else -1
        gid = grp.getgrnam(group).gr_gid if group else -1
        if os.geteuid() == 0:
            os.chown(path, uid, gid)
            os.chown(os.path.dirname(path), uid, gid)
        else:
            # mailvm serve runs as the milter user: the socket is its own, and its group is Postfix's
            # through the set-group-id directory made at start (_prepare_socket_dir)
            owner = pwd.getpwuid(os.geteuid()).pw_name
            if gid != -1 and os.stat(path).st_gid != gid:
                os.chown(path, -1, gid)
        os.chmod(path, mode)
        log.info("milter socket %s owner %s group %s mode %o", path, owner, group, mode)
    except (KeyError, OSError) as exc:
        log.error("cannot set owner/mode of %s (%s): Postfix may get 'Permission denied'", path, exc)


def _prepare_socket_dir(sock_path: str, ident, group: str) -> None:
    """Before the drop: the socket's directory belongs to the milter user, with Postfix's group and
    set-group-id (2750), so the socket libmilter creates there later is Postfix's to connect to."""
    parent = os.path.dirname(sock_path)
    try:
        gid = grp.getgrnam(group).gr_gid if group else ident.gid
    except KeyError:
        log.error("milter.socket_group %r does not exist: the MTA may get 'Permission denied' on %s", group, sock_path)
        gid = ident.gid
    os.chown(parent, ident.uid, gid)
    os.chmod(parent, 0o2750)


def cmd_serve(args: argparse.Namespace) -> int:
    import Milter

    from mailvm.milter.app import make_factory, milter_flags
    from mailvm.milter.service import MilterService
    from mailvm.quarantine import QuarantineStore
    from mailvm.release import load_or_create_key

    _logging(args.verbose)
    path = config_path(args)
    cfg = load_config(path)
    socket_spec = args.socket or cfg.milter.socket
    quarantine = QuarantineStore(cfg.quarantine.dir)
    key = load_or_create_key(cfg.quarantine.release_key)
    _sweep_leftovers(cfg)
    service = MilterService(cfg, path, cfg.milter.policy_dir, quarantine, key, cfg.milter.workers)
    for domain, problem in service.policies.broken.items():
        log.error("policy of %s is invalid, its mail is deferred until fixed: %s", domain, problem)
    service.prepare()
    servers = _start_side_servers(cfg, service, quarantine, key)
    housekeeping_stop = threading.Event()
    threading.Thread(target=_housekeeping, args=(cfg, service, quarantine, housekeeping_stop),
                     name="mailvm-housekeeping", daemon=True).start()

    supervisor = None
    restarts: list[float] = []
    if cfg.milter.pool_service and not args.no_pool:
        supervisor = _start_pool_supervisor(path, args.verbose)
        log.info("pool service supervisor started (pid %d)", supervisor.pid)

    stop = threading.Event()
    sock_path = _prepare_unix_socket(socket_spec)
    _drop_serve(cfg, path, service, sock_path)
    service.start_workers()  # after the drop: see MilterService.start_workers
    if sock_path:
        threading.Thread(
            target=_fix_socket,
            args=(sock_path, cfg.milter.socket_owner, cfg.milter.socket_group, int(cfg.milter.socket_mode, 8), stop),
            daemon=True,
        ).start()

    Milter.factory = make_factory(service)
    Milter.set_flags(milter_flags())
    failure: list[BaseException] = []

    def run_milter() -> None:
        try:
            Milter.runmilter("mailvm", socket_spec, cfg.milter.timeout_s)
        except BaseException as exc:  # reported by the main thread
            failure.append(exc)
        finally:
            stop.set()

    signal.signal(signal.SIGHUP, lambda *_: service.reload())
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    thread = threading.Thread(target=run_milter, name="libmilter", daemon=True)
    thread.start()
    log.info("mailvm milter listening on %s (%d scan workers)", socket_spec, service.workers)
    try:
        while not stop.is_set():
            stop.wait(1.0)
            if supervisor is not None and not supervisor.is_alive() and not stop.is_set():
                if os.geteuid() != 0:
                    # the pool needs root, which this process gave up: stop, loudly; the service manager
                    # (Restart=on-failure) starts everything again, Postfix defers meanwhile
                    log.critical("pool service supervisor exited (code %s) and mailvm serve, no longer root, "
                                 "cannot start it again: stopping", supervisor.exitcode)
                    failure.append(RuntimeError("pool service supervisor exited"))
                    break
                now = time.monotonic()
                restarts = [t for t in restarts if now - t < 600] + [now]
                delay = min(60.0, 2.0 ** (len(restarts) - 1))
                log.error("pool service supervisor exited (code %s); starting it again in %.0f s",
                          supervisor.exitcode, delay)
                if stop.wait(delay):
                    break
                supervisor = _start_pool_supervisor(path, args.verbose)
    finally:
        log.info("mailvm stopping")
        try:
            Milter.milter.stop()
        except Exception:
            pass
        thread.join(timeout=10)
        housekeeping_stop.set()
        for server in servers:
            try:
                server.shutdown()
            except Exception:
                pass
        service.close()
        if supervisor is not None and supervisor.is_alive():
            # the supervisor is root and this process may not be: a kill is refused, but the
            # supervisor also ends by itself once it sees this process gone (SUPERVISOR_POLL_S)
            try:
                supervisor.terminate()
            except PermissionError:
                pass
            supervisor.join(timeout=40)
        if sock_path and os.path.exists(sock_path):
            try:
                os.unlink(sock_path)
            except OSError as exc:
                log.warning("cannot remove %s: %s", sock_path, exc)
    if failure:
        log.error("milter failed: %s", failure[0])
        return EXIT_ERROR
    return EXIT_OK


def _pool_child_main(path: str | None, verbose: int, supervisor: int) -> None:
    """The pool service as a child of the pool supervisor: it dies with its parent (no orphan QEMUs)."""
    from mailvm.milter.pipeline import die_with_parent

    die_with_parent(expected_parent=supervisor)
    _pool_process_main(path, verbose, supervisor)


def _start_pool_child(path: str | None, verbose: int):
    ctx = multiprocessing.get_context("spawn")
    proc = ctx.Process(target=_pool_child_main, args=(path, verbose, os.getpid()), name="mailvm-pool")
    proc.start()
    return proc


#: the pool supervisor checks this often that mailvm serve is still its parent
SUPERVISOR_POLL_S = 1.0


def _pool_supervisor_main(path: str | None, verbose: int, serve_pid: int) -> None:
    """Root process between ``mailvm serve`` and the pool service: starts the pool, starts it again
    when it exits (1 s doubling to 60 s; CRITICAL from the fifth time in ten minutes), and stops it
    when serve stops or is gone.

    It exists because serve gives up root once started (mailvm.privilege.plan_service) and the pool
    needs root.  PR_SET_PDEATHSIG is not delivered from a parent that gave up root to a child that kept
    it, so besides the prctl (for a serve that stays root) this process polls its parent pid."""
    from mailvm.milter.pipeline import die_with_parent

    die_with_parent(expected_parent=serve_pid)
    _logging(verbose)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    restarts: list[float] = []
    child = _start_pool_child(path, verbose)
    log.info("pool service started (pid %d)", child.pid)
    while not stop.wait(SUPERVISOR_POLL_S):
        if os.getppid() != serve_pid:
            log.error("mailvm serve (pid %d) is gone: stopping the pool service", serve_pid)
            break
        if not child.is_alive():
            now = time.monotonic()
            restarts = [t for t in restarts if now - t < 600] + [now]
            delay = min(60.0, 2.0 ** (len(restarts) - 1))
            level = logging.CRITICAL if len(restarts) >= 5 else logging.ERROR
            log.log(level, "pool service exited (code %s); restart %d in 10 min, next in %.0f s",
                    child.exitcode, len(restarts), delay)
            if stop.wait(delay) or os.getppid() != serve_pid:
                break
            child = _start_pool_child(path, verbose)
    if child.is_alive():
        child.terminate()
        child.join(timeout=30)
        if child.is_alive():
            child.kill()


def _start_pool_supervisor(path: str | None, verbose: int):
    ctx = multiprocessing.get_context("spawn")
    proc = ctx.Process(target=_pool_supervisor_main, args=(path, verbose, os.getpid()),
                       name="mailvm-pool-supervisor")
    proc.start()
    return proc


def _drop_serve(cfg, path: str | None, service, sock_path: str | None) -> None:
    """Give up root in this process once everything that needs it has started (the pool, in its
    supervisor; the scan workers' shared directories): see mailvm.privilege.plan_service.  Where
    the milter user cannot work, serve stays root and says why."""
    from mailvm.privilege import drop_privileges, own_service_paths, plan_service

    if os.geteuid() != 0:
        log.info("mailvm serve runs as %s (uid %d)", pwd.getpwuid(os.geteuid()).pw_name, os.geteuid())
        return
    ident, why = plan_service(cfg, path)
    if ident is None:
        log.warning("mailvm serve (the milter) keeps running as root: %s", why)
        return
    if own_service_paths(cfg, ident):
        log.warning("mailvm serve (the milter) keeps running as root: see the errors above")
        return
    try:
        if sock_path:
            _prepare_socket_dir(sock_path, ident, cfg.milter.socket_group)
        drop_privileges(ident)
    except (KeyError, OSError) as exc:
        log.critical("mailvm serve could not drop root to %s (%s): stopping", ident.user, exc)
        raise SystemExit(EXIT_ERROR) from None
    log.info("mailvm serve (the milter) now runs as %s (uid %d); only the pool supervisor and the pool "
             "service, where they run, keep root", ident.user, ident.uid)


def _sweep_leftovers(cfg) -> None:
    """What a killed ``mailvm serve`` may have left: its spool copies, and a pool service that
    outlived it and still holds the job queue (two pools must never share one queue)."""
    from mailvm.store import open_queue
    from mailvm.vmpool.queuelock import sweep

    _clean_spool(cfg.spool.dir)
    if cfg.pool.queue_url:
        return  # a Redis stream is shared by design; its consumers are told apart by Redis
    try:
        lock_path = open_queue(cfg).lock_path
    except Exception as exc:  # the pool service reports a broken queue itself
        log.warning("cannot open the job queue to sweep it: %s", exc)
        return
    killed = sweep(lock_path)
    if killed:
        log.error("killed pool service pid %d left over from an earlier mailvm serve", killed)


#: how often the service expires old quarantine items and scanned-table entries by itself
HOUSEKEEPING_EVERY_S = 3600.0


def _housekeeping(cfg, service, quarantine, stop: threading.Event) -> None:
    """Expiry on a schedule inside the service: quarantine items past their domain's retention
    (audited as ``expire``) and stale scanned-table entries; a failure is logged, never fatal."""
    from pathlib import Path

    from mailvm.audit import AuditLog
    from mailvm.store import open_table

    audit = AuditLog(Path(cfg.quarantine.dir) / "audit.log")
    while not stop.wait(HOUSEKEEPING_EVERY_S):
        try:
            pset = service.policies
            removed = quarantine.expire(cfg.quarantine.retention_days,
                                        retention_for=lambda d: pset.for_domain(d).quarantine.retention_days)
            if removed:
                audit.record("mailvm", "expire", "-", f"{removed} quarantine item(s) past retention")
            table = open_table(cfg)
            try:
                gone = table.expire()
            finally:
                table.close()
            # a scan worker killed at its hard limit leaves its message's extraction directory behind
            _clean_spool(cfg.spool.dir, min_age_s=SPOOL_STALE_S)
            # hold reasons (mvctl hold list) of messages held longer than the retention
            service.hold_index.prune(older_than_s=cfg.quarantine.retention_days * 86400)
            log.info("housekeeping: %d quarantine item(s) and %d table entries expired", removed, gone)
        except Exception:
            log.exception("housekeeping failed; trying again in %.0f s", HOUSEKEEPING_EVERY_S)


#: a spool entry this old belongs to no running scan (a scan's hard limit is max_wait_s <= 600 s + grace)
SPOOL_STALE_S = 3600.0


def _clean_spool(spool_dir: str, min_age_s: float = 0.0) -> int:
    """Remove what a killed ``mailvm serve`` or a killed scan worker left in the spool (copies only:
    Postfix keeps the mail).  At start everything goes; while serving (``min_age_s``) only entries
    older than any scan can run.  Returns how many were removed."""
    import shutil

    try:
        names = os.listdir(spool_dir)
    except FileNotFoundError:
        return 0
    removed = 0
    now = time.time()
    for name in names:
        if not name.startswith(("msg-", "body-")):
            continue
        full = os.path.join(spool_dir, name)
        try:
            if min_age_s and now - os.lstat(full).st_mtime < min_age_s:
                continue
            if os.path.isdir(full) and not os.path.islink(full):
                shutil.rmtree(full)
            else:
                os.unlink(full)
            removed += 1
        except OSError as exc:
            log.warning("spool: cannot remove %s: %s", full, exc)
    if removed:
        log.info("spool: removed %d leftovers of %s", removed,
                 "killed scans" if min_age_s else "an earlier run")
    return removed


def _start_side_servers(cfg, service, quarantine, key: bytes) -> list:
    """Metrics, syslog output and the web console, each only when configured."""
    servers: list = []
    from mailvm.obs import msglog

    msglog.configure(cfg.log.target, facility=cfg.log.facility)
    if cfg.metrics.listen:
        from mailvm.obs.metrics import new_metrics, start_server
        from mailvm.vmpool.pool import read_status

        service.metrics = new_metrics(lambda: read_status(cfg.pool.work_dir))
        servers.append(start_server(service.metrics, cfg.metrics.listen))
    if cfg.web.listen:
        servers.append(_start_console(cfg, service, quarantine, key))
    return servers


def _start_console(cfg, service, quarantine, key: bytes):
    import secrets
    from pathlib import Path

    from mailvm.audit import AuditLog
    from mailvm.quarantine import release_audited, smtp_deliver
    from mailvm.store import open_table
    from mailvm.vmpool.evidence import evidence_dir
    from mailvm.vmpool.pool import read_status
    from mailvm.web.app import ConsoleDeps, create_app, serve
    from mailvm.web.auth import UsersFile

    secret_path = Path(cfg.web.secret_file)
    if not secret_path.exists():
        secret_path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(secret_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(secrets.token_bytes(32))
    audit = AuditLog(Path(cfg.quarantine.dir) / "audit.log")
    deliver = smtp_deliver(cfg.quarantine.reinject_host, cfg.quarantine.reinject_port)

    def release(item_id: str, recipients, who: str):
        return release_audited(quarantine, audit, deliver, key, item_id, recipients, who)

    def verdict_of(sha: str):
        table = open_table(cfg)
        try:
            v = table.get(sha)
            return v.to_dict() if v is not None else None
        finally:
            table.close()

    def figures() -> dict:
        if service.metrics is None:
            return {"metrics": "off ([metrics] listen)"}
        from mailvm.cli.top import Snapshot, summary

        snap = Snapshot(time.time())
        for family in service.metrics.registry.collect():
            for sample in family.samples:
                snap.samples[(sample.name, tuple(sorted(sample.labels.items())))] = float(sample.value)
        return summary(snap, None)

    deps = ConsoleDeps(store=quarantine, audit=audit, users=UsersFile(cfg.web.users_file), release=release,
                       verdict_of=verdict_of, pool_status=lambda: read_status(cfg.pool.work_dir), figures=figures,
                       secret_key=secret_path.read_bytes(), evidence_dir=evidence_dir(cfg.pool.work_dir))
    return serve(create_app(deps), cfg.web.listen)


def _logging(verbose: int) -> None:
    from mailvm.logsetup import setup_logging

    setup_logging(logging.INFO if verbose < 2 else logging.DEBUG,
                  "%(asctime)s mailvm[%(process)d] %(levelname)s %(name)s: %(message)s")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except ConfigError as exc:
        print(f"mailvm: configuration error, not starting: {exc}", file=sys.stderr)
        return EXIT_ERROR


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
