"""``mvctl``: the administrator's command line.

Command groups live in their own modules and are listed in :data:`GROUPS`
(an explicit registry).  Each module exposes ``register(subparsers)``, which
adds its sub-commands and sets ``func`` on their parsers; ``func(args)``
returns the process exit status.

Exit statuses (all commands): 0 success / clean, 1 the answer is "bad"
(suspicious or malicious, item not found), 2 error (bad usage, broken config,
analysis failed).
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Callable, Sequence

from mailvm.cli import cache, image, lab, policy, pool, quarantine, scan, top, web
from mailvm.config import ConfigError
from mailvm.logsetup import setup_logging

EXIT_OK = 0
EXIT_BAD = 1
EXIT_ERROR = 2

#: command-group modules, in the order ``--help`` lists them
GROUPS: list[Callable[[argparse._SubParsersAction], None]] = [
    scan.register,
    cache.register,
    quarantine.register,
    policy.register,
    pool.register,
    top.register,
    web.register,
    image.register,
    lab.register,
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mvctl",
        description="Control mailvm: scan files and messages, inspect the scanned table, "
        "manage the detonation pool, policies and quarantine.",
        epilog="Exit status: 0 clean/success, 1 suspicious/malicious/not found, 2 error.",
    )
    parser.add_argument("-c", "--config", metavar="FILE", help="global config (default: $MAILVM_CONFIG, else /etc/mailvm/mailvm.toml if present)")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv for debug)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for register in GROUPS:
        register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.WARNING - 10 * min(args.verbose, 2)
    setup_logging(level, "%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args))
    except ConfigError as exc:
        print(f"mvctl: configuration error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("mvctl: interrupted", file=sys.stderr)
        return EXIT_ERROR
    except BrokenPipeError:
        return EXIT_ERROR


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
