"""``mvctl web passwd NAME`` / ``mvctl web users``: logins of the web console ([web] users_file)."""

from __future__ import annotations

import argparse
import getpass
import sys

from mailvm.cli.common import EXIT_ERROR, EXIT_OK, config_from, print_json


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("web", help="logins of the web console",
                       description="Manage who may log in to the web console of `mailvm serve` ([web] listen).")
    ws = p.add_subparsers(dest="web_command", metavar="ACTION")
    ws.required = True
    s = ws.add_parser("passwd", help="add a login or change its password",
                      description="Reads the password twice from the terminal, or once from standard input "
                      "with --stdin (for scripts). Passwords are stored salted and hashed.")
    s.add_argument("name")
    s.add_argument("--stdin", action="store_true", help="read the password from standard input")
    s.set_defaults(func=cmd_passwd)
    s = ws.add_parser("users", help="list the logins")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_users)


def _users(args: argparse.Namespace):
    from mailvm.web.auth import UsersFile

    return UsersFile(config_from(args).web.users_file)


def cmd_passwd(args: argparse.Namespace) -> int:
    if args.stdin:
        password = sys.stdin.readline().rstrip("\n")
    else:
        password = getpass.getpass(f"password for {args.name}: ")
        if getpass.getpass("again: ") != password:
            print("mvctl web passwd: the passwords differ", file=sys.stderr)
            return EXIT_ERROR
    try:
        _users(args).set_password(args.name, password)
    except (ValueError, OSError) as exc:
        print(f"mvctl web passwd: {exc}", file=sys.stderr)
        return EXIT_ERROR
    print(f"{args.name}: password set")
    return EXIT_OK


def cmd_users(args: argparse.Namespace) -> int:
    names = _users(args).names()
    if args.json:
        print_json(names)
    else:
        print("\n".join(names) if names else "no logins (mvctl web passwd NAME adds one)")
    return EXIT_OK
