"""``mvctl policy check [DIR]`` and ``mvctl policy show DOMAIN``."""

from __future__ import annotations

import argparse
import dataclasses
import sys

from mailvm.cli.common import EXIT_ERROR, EXIT_OK, config_from, print_json
from mailvm.config import resolve_config_path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("policy", help="validate and inspect per-domain policies",
                       description="Per-recipient-domain policies: the [policy] table of mailvm.toml "
                       "plus policy.d/<domain>.toml files merged over it.")
    ps = p.add_subparsers(dest="policy_command", metavar="ACTION")
    ps.required = True
    s = ps.add_parser("check", help="validate the global file and a policy directory; list every error")
    s.add_argument("dir", nargs="?", help="policy directory (default: milter.policy_dir)")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_check)
    s = ps.add_parser("show", help="the effective policy for a recipient domain")
    s.add_argument("domain")
    s.add_argument("dir", nargs="?", help="policy directory (default: milter.policy_dir)")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_show)


def cmd_check(args: argparse.Namespace) -> int:
    from mailvm.policy import check_policy_dir

    cfg = config_from(args)
    directory = args.dir or cfg.milter.policy_dir
    errors = check_policy_dir(resolve_config_path(args.config), directory)
    if args.json:
        print_json({"ok": not errors, "dir": directory,
                    "errors": [{"file": e.file, "key": e.key, "problem": e.problem} for e in errors]})
    else:
        for e in errors:
            print(f"{e.file}: {e.key}: {e.problem}", file=sys.stderr)
        print(f"{directory}: {'OK' if not errors else f'{len(errors)} error(s)'}")
    return EXIT_OK if not errors else EXIT_ERROR


def cmd_show(args: argparse.Namespace) -> int:
    from mailvm.policy import load_policies

    cfg = config_from(args)
    policies = load_policies(resolve_config_path(args.config), args.dir or cfg.milter.policy_dir)
    policy = policies.for_domain(args.domain)
    data = dataclasses.asdict(policy)
    if args.json:
        print_json({"domain": args.domain, "policy": data})
    else:
        _print_tree(data)
    return EXIT_OK


def _print_tree(data: dict, prefix: str = "") -> None:
    for key, value in data.items():
        if isinstance(value, dict):
            _print_tree(value, f"{prefix}{key}.")
        else:
            print(f"{prefix}{key} = {value!r}")
