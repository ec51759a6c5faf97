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


def _pool_process_main(path: str | None, verbose: int) -> None:
    _logging(verbose)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    from mailvm.vmpool import service

    service.run(load_config(path), stop)


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
        os.chown(path, uid, gid)
        os.chmod(path, mode)
        parent = os.path.dirname(path)
        os.chown(parent, uid, gid)
        log.info("milter socket %s owner %s group %s mode %o", path, owner, group, mode)
    except (KeyError, OSError) as exc:
        log.error("cannot set owner/mode of %s (%s): Postfix may get 'Permission denied'", path, exc)


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
    service = MilterService(cfg, path, cfg.milter.policy_dir, quarantine, key, cfg.milter.workers)
    service.start()

    pool_proc = None
    if cfg.milter.pool_service and not args.no_pool:
        ctx = multiprocessing.get_context("spawn")
        pool_proc = ctx.Process(target=_pool_process_main, args=(path, args.verbose), name="mailvm-pool")
        pool_proc.start()
        log.info("pool service started (pid %d)", pool_proc.pid)

    stop = threading.Event()
    sock_path = _prepare_unix_socket(socket_spec)
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
            if pool_proc is not None and not pool_proc.is_alive():
                log.error("pool service exited (code %s); restarting it", pool_proc.exitcode)
                time.sleep(1.0)
                ctx = multiprocessing.get_context("spawn")
                pool_proc = ctx.Process(target=_pool_process_main, args=(path, args.verbose), name="mailvm-pool")
                pool_proc.start()
    finally:
        log.info("mailvm stopping")
        try:
            Milter.milter.stop()
        except Exception:
            pass
        thread.join(timeout=10)
        service.close()
        if pool_proc is not None and pool_proc.is_alive():
            pool_proc.terminate()
            pool_proc.join(timeout=30)
            if pool_proc.is_alive():
                pool_proc.kill()
        if sock_path and os.path.exists(sock_path):
            os.unlink(sock_path)
    if failure:
        log.error("milter failed: %s", failure[0])
        return EXIT_ERROR
    return EXIT_OK


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
