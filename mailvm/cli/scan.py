"""``mvctl scan PATH...``: run the whole pipeline on messages or files.

A PATH is an RFC 5322 message (``.eml``, or anything that starts like one), any
other file (analysed as an attachment would be), or ``-`` for standard input.
Exit status: 0 every input clean, 1 something suspicious or malicious, 2 an
error or a verdict still pending at the deadline.

JSON schema (``--json``; one object per PATH, a list when several PATHs)::

    {"path": str, "verdict": "clean|suspicious|malicious|pending|error", "score": 0-10,
     "duration_s": float,
     "findings": [{"id", "severity", "detail"}],          # message-level
     "artifacts": [{"sha256", "name", "type", "kind", "origin", "size",
                    "verdict", "score", "source": "cache|triage|detonation|pending",
                    "findings": [{"id", "severity", "detail"}]}]}
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import re
import sys
import tempfile
import threading
import time
from typing import Any

from mailvm.cli.common import EXIT_BAD, EXIT_ERROR, EXIT_OK, config_from, open_table, print_json
from mailvm.config import Config

log = logging.getLogger(__name__)

_HEADER_RE = re.compile(rb"^(from|to|subject|date|received|return-path|message-id|mime-version|"
                        rb"content-type|delivered-to|reply-to|cc|x-[a-z0-9-]+)[ \t]*:", re.I)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "scan",
        help="analyse messages (.eml) or files and print a verdict",
        description="Extract attachments, archive members and linked files, triage them, look them up in "
        "the scanned table and detonate the unseen ones in the pool.",
        epilog="Exit status: 0 clean, 1 suspicious or malicious, 2 error or still pending.",
    )
    p.add_argument("paths", nargs="+", metavar="PATH", help="a message, a file, or - for standard input")
    p.add_argument("--json", action="store_true", help="machine-readable output (schema in `mvctl scan --help` docs)")
    p.add_argument("--as", dest="as_", choices=("auto", "message", "file"), default="auto",
                   help="treat PATH as a message or a plain file (default: detect)")
    p.add_argument("--no-detonate", action="store_true", help="static analysis only, no sandbox")
    p.add_argument("--no-cache", action="store_true", help="neither read nor write the scanned table")
    p.add_argument("--no-links", action="store_true", help="do not download linked files")
    p.add_argument("--password", action="append", default=[], metavar="PW", help="extra archive password to try")
    p.add_argument("--timeout", type=float, metavar="S", help="wait at most S seconds for detonation verdicts")
    p.add_argument("--backend", choices=("auto", "qemu", "process", "xen"), help="detonation backend (overrides config)")
    p.add_argument("--slots", type=int, metavar="N", help="pre-warmed slots (overrides config)")
    p.set_defaults(func=cmd_scan)


def looks_like_message(head: bytes) -> bool:
    """True when the first lines are RFC 5322 header fields."""
    lines = head.split(b"\n", 60)[:60]
    seen = 0
    for line in lines:
        line = line.rstrip(b"\r")
        if not line:
            break
        if line[:1] in (b" ", b"\t"):
            continue
        if _HEADER_RE.match(line):
            seen += 1
        elif not re.match(rb"^[!-9;-~]+:", line) and not line.startswith(b"From "):
            return False
    return seen >= 2


class LazyPool:
    """Starts the detonation pool on the first job, so static-only scans never pay for it."""

    def __init__(self, cfg: Config, table: Any | None) -> None:
        self.cfg = cfg
        self.table = table
        self.pool = None
        self._lock = threading.Lock()

    def submit(self, job: Any):
        with self._lock:
            if self.pool is None:
                from mailvm.vmpool.pool import Pool
                from mailvm.vmpool.select import make_backend

                backend = make_backend(self.cfg.pool)
                info = backend.info()
                print(f"mvctl: detonating in the {info.name} backend ({info.isolation}, accel {info.accel})",
                      file=sys.stderr)
                self.pool = Pool(self.cfg.pool, backend, self.table)
                self.pool.start()
        return self.pool.submit(job)

    def close(self) -> None:
        if self.pool is not None:
            self.pool.close()


def _effective_config(cfg: Config, args: argparse.Namespace) -> Config:
    pool = cfg.pool
    if args.backend:
        pool = dataclasses.replace(pool, backend=args.backend)
    if args.slots:
        pool = dataclasses.replace(pool, slots=max(1, args.slots))
    spool = cfg.spool
    if not _writable(spool.dir):
        spool = dataclasses.replace(spool, dir=tempfile.mkdtemp(prefix="mailvm-spool-"))
    links = cfg.links if not args.no_links else dataclasses.replace(cfg.links, enabled=False)
    return dataclasses.replace(cfg, pool=pool, spool=spool, links=links)


def _writable(path: str) -> bool:
    while path and not os.path.exists(path):
        path = os.path.dirname(path)
    return bool(path) and os.access(path, os.W_OK)


def cmd_scan(args: argparse.Namespace) -> int:
    from mailvm.scan import Scanner
    from mailvm.triage import Triage

    cfg = _effective_config(config_from(args), args)
    table = None if args.no_cache else open_table(cfg)
    detonator = None if args.no_detonate else LazyPool(cfg, table)
    scanner = Scanner(cfg, Triage(cfg.triage), table, detonator)
    wait = args.timeout if args.timeout is not None else cfg.pool.job_timeout_s * 2 + cfg.pool.ready_timeout_s
    results: list[dict[str, Any]] = []
    status = EXIT_OK
    try:
        for path in _progress(args.paths):
            try:
                report = _scan_one(scanner, path, args, time.monotonic() + wait)
            except OSError as exc:
                print(f"mvctl scan: {path}: {exc.strerror or exc}", file=sys.stderr)
                results.append({"path": path, "verdict": "error", "score": 0, "error": str(exc),
                                "findings": [], "artifacts": []})
                status = max(status, EXIT_ERROR)
                continue
            data = {"path": path, **report.to_dict()}
            results.append(data)
            status = max(status, _exit_for(report.verdict))
            if not args.json:
                _print_report(data)
    finally:
        if detonator is not None:
            detonator.close()
        if table is not None:
            table.close()
    if args.json:
        print_json(results[0] if len(results) == 1 else results)
    return status


def _progress(paths: list[str]):
    if len(paths) > 1 and sys.stderr.isatty():
        from tqdm import tqdm

        return tqdm(paths, desc="scanning", unit="file", file=sys.stderr)
    return paths


def _scan_one(scanner, path: str, args: argparse.Namespace, deadline: float):
    if path == "-":
        raw = sys.stdin.buffer.read(scanner.cfg.extract.max_message_bytes + 1)
        as_message = args.as_ == "message" or (args.as_ == "auto" and looks_like_message(raw[:8192]))
        if as_message:
            return scanner.scan_message(raw, args.password, deadline)
        with tempfile.NamedTemporaryFile(prefix="mailvm-stdin-", delete=True) as tmp:
            tmp.write(raw)
            tmp.flush()
            return scanner.scan_file(tmp.name, "stdin", deadline, args.password)
    if not os.path.isfile(path):
        raise FileNotFoundError(2, "not a regular file", path)
    as_message = args.as_ == "message"
    if args.as_ == "auto":
        with open(path, "rb") as fh:
            as_message = path.lower().endswith(".eml") or looks_like_message(fh.read(8192))
    if as_message:
        size = os.path.getsize(path)
        with open(path, "rb") as fh:
            raw = fh.read(min(size, scanner.cfg.extract.max_message_bytes + 1))
        return scanner.scan_message(raw, args.password, deadline)
    return scanner.scan_file(path, os.path.basename(path), deadline, args.password)


def _exit_for(verdict: str) -> int:
    if verdict in ("suspicious", "malicious"):
        return EXIT_BAD
    if verdict == "clean":
        return EXIT_OK
    return EXIT_ERROR


def _print_report(data: dict[str, Any]) -> None:
    print(f"{data['path']}: {data['verdict'].upper()} (score {data['score']}) in {data['duration_s']:.2f}s")
    for f in data["findings"]:
        print(f"    message  [{f['severity']:2d}] {f['id']}: {f['detail']}")
    for a in data["artifacts"]:
        print(f"  {a['verdict']:<10} {a['score']:2d}  {a['name']}  ({a['kind']}, {a['type']}, {a['size']} B, "
              f"{a['source']})  sha256 {a['sha256'][:16]}")
        if a["origin"]:
            print(f"      from {a['origin']}")
        for f in sorted(a["findings"], key=lambda f: -f["severity"])[:8]:
            print(f"      [{f['severity']:2d}] {f['id']}: {f['detail']}")
