"""``mvctl lab start|stop|status|send|inbox``: a complete mailvm on loopback to try it out.

``start`` writes a self-contained configuration under ``--dir`` (default
``/var/lib/mailvm-lab``), starts ``mailvm serve`` on 127.0.0.1:8894 and a
private Postfix on 127.0.0.1:2525 that uses it and delivers into a Maildir.
``send`` submits a message file (or a built-in sample, ``--sample clean|eicar-zip``, made
by :mod:`mailvm.lab.samples`) to that Postfix and prints the SMTP answer;
``inbox`` lists what was delivered with mailvm's verdict headers.
"""

from __future__ import annotations

import argparse
import email
import email.policy
import os
import signal
import smtplib
import subprocess
import sys
import time
from pathlib import Path

from mailvm.cli.common import EXIT_BAD, EXIT_ERROR, EXIT_OK, print_json
from mailvm.lab.common import lab_config, wait_port
from mailvm.lab.samples import SAMPLES

DEFAULT_DIR = "/var/lib/mailvm-lab"
SMTP_PORT = 2525
MILTER_PORT = 8894
METRICS_PORT = 9841
WEB_PORT = 9842


QUARANTINE_POLICY = """\
# recipients at quarantine.example get malicious mail quarantined instead of rejected
[actions]
malicious = "quarantine"
suspicious = "quarantine"
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("lab", help="a loopback Postfix + mailvm to try things out",
                       description="Run a complete mailvm on loopback: a private Postfix on 127.0.0.1:2525 "
                       "filtering through mailvm on 127.0.0.1:8894, delivering into a Maildir.")
    p.add_argument("--dir", default=DEFAULT_DIR, help=f"lab directory (default {DEFAULT_DIR})")
    lsub = p.add_subparsers(dest="lab_command", metavar="ACTION")
    lsub.required = True
    s = lsub.add_parser("start", help="write the lab config, start mailvm and Postfix")
    s.add_argument("--backend", default="auto", choices=("auto", "qemu", "process"), help="detonation backend")
    s.add_argument("--slots", type=int, default=2, help="pre-warmed slots")
    s.set_defaults(func=cmd_start)
    s = lsub.add_parser("stop", help="stop Postfix and mailvm")
    s.set_defaults(func=cmd_stop)
    s = lsub.add_parser("send", help="send a message file (or a built-in sample) through the lab Postfix")
    s.add_argument("message", nargs="?", help="an RFC 5322 message file")
    s.add_argument("--sample", choices=sorted(SAMPLES), help="send a built-in sample message instead of a file")
    s.add_argument("--to", action="append", default=[], help="recipient (repeatable; default user@example.com)")
    s.add_argument("--from", dest="sender", default="sender@lab.test", help="envelope sender")
    s.set_defaults(func=cmd_send)
    s = lsub.add_parser("inbox", help="list delivered messages and their mailvm headers")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_inbox)


def _pidfile(d: Path) -> Path:
    return d / "mailvm.pid"


def _postfix(d: Path):
    from mailvm.lab.postfix import LabPostfix

    return LabPostfix(d / "postfix", port=SMTP_PORT, milter=f"inet:127.0.0.1:{MILTER_PORT}")


def cmd_start(args: argparse.Namespace) -> int:
    d = Path(args.dir)
    d.mkdir(parents=True, exist_ok=True)
    (d / "policy.d").mkdir(exist_ok=True)
    cfg_path = d / "mailvm.toml"
    cfg_path.write_text(lab_config(d, MILTER_PORT, smtp_port=SMTP_PORT, backend=args.backend,
                                   slots=max(1, args.slots), max_wait_s=120,
                                   extra=f'[metrics]\nlisten = "127.0.0.1:{METRICS_PORT}"\n'
                                         f'[web]\nlisten = "127.0.0.1:{WEB_PORT}"\nusers_file = "{d}/web-users"\n'
                                         f'secret_file = "{d}/web.key"\n'))
    (d / "policy.d" / "quarantine.example.toml").write_text(QUARANTINE_POLICY)
    _stop_mailvm(d)
    log = open(d / "mailvm.log", "ab")
    proc = subprocess.Popen(
        [sys.executable, "-m", "mailvm.cli.mailvm_main", "-c", str(cfg_path), "serve"],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    _pidfile(d).write_text(str(proc.pid))
    try:
        wait_port(MILTER_PORT, 60, alive=lambda: proc.poll() is None)
    except RuntimeError as exc:
        print(f"mvctl lab: mailvm did not start ({exc}); see {d / 'mailvm.log'}", file=sys.stderr)
        return EXIT_ERROR
    pf = _postfix(d)
    pf.start()
    print(f"mailvm lab running (config {cfg_path}, log {d / 'mailvm.log'})")
    print(f"  Postfix : 127.0.0.1:{SMTP_PORT} -> mailvm milter 127.0.0.1:{MILTER_PORT} -> Maildir {pf.inbox}")
    print(f"  metrics : http://127.0.0.1:{METRICS_PORT}/metrics   (mvctl top --url http://127.0.0.1:{METRICS_PORT}/metrics)")
    print(f"  console : http://127.0.0.1:{WEB_PORT}/   (mvctl -c {cfg_path} web passwd admin)")
    print("  send    : mvctl lab send MESSAGE.eml --to user@example.com")
    print("  inbox   : mvctl lab inbox")
    print("  stop    : mvctl lab stop")
    return EXIT_OK


def _stop_mailvm(d: Path) -> None:
    try:
        pid = int(_pidfile(d).read_text().strip())
    except (OSError, ValueError):
        return
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    for _ in range(100):
        try:
            os.killpg(pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        try:
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    _pidfile(d).unlink(missing_ok=True)


def cmd_stop(args: argparse.Namespace) -> int:
    d = Path(args.dir)
    _postfix(d).stop()
    _stop_mailvm(d)
    print("mailvm lab stopped")
    return EXIT_OK


def cmd_send(args: argparse.Namespace) -> int:
    rcpts = args.to or ["user@example.com"]
    if (args.message is None) == (args.sample is None):
        print("mvctl lab send: give a message file or --sample NAME (one of them)", file=sys.stderr)
        return EXIT_BAD
    if args.sample:
        raw = SAMPLES[args.sample](", ".join(rcpts), args.sender)
        args.message = f"sample {args.sample}"
    else:
        try:
            raw = Path(args.message).read_bytes()
        except OSError as exc:
            print(f"mvctl lab send: cannot read {args.message}: {exc.strerror}", file=sys.stderr)
            return EXIT_BAD
    try:
        with smtplib.SMTP("127.0.0.1", SMTP_PORT, timeout=900) as smtp:
            refused = smtp.sendmail(args.sender, rcpts, raw)
    except smtplib.SMTPResponseException as exc:
        print(f"{args.message}: {exc.smtp_code} {exc.smtp_error.decode(errors='replace')}")
        return EXIT_BAD
    except smtplib.SMTPRecipientsRefused as exc:
        print(f"{args.message}: recipients refused: {exc.recipients}")
        return EXIT_BAD
    except OSError as exc:
        print(f"{args.message}: cannot reach the lab Postfix on 127.0.0.1:{SMTP_PORT}: {exc}", file=sys.stderr)
        return EXIT_ERROR
    print(f"{args.message}: accepted for {', '.join(r for r in rcpts if r not in refused)} (250)")
    return EXIT_OK


def cmd_inbox(args: argparse.Namespace) -> int:
    pf = _postfix(Path(args.dir))
    rows = []
    for data in pf.delivered():
        msg = email.message_from_bytes(data, policy=email.policy.compat32)
        rows.append({
            "to": msg.get("Delivered-To", ""),
            "subject": str(msg.get("Subject", ""))[:80],
            "verdict": msg.get("X-Mailvm-Verdict", ""),
            "report": msg.get("X-Mailvm-Report", ""),
        })
    if args.json:
        print_json(rows)
    else:
        for r in rows:
            print(f"{r['to']:<28} {r['verdict']:<28} {r['subject']}")
        print(f"{len(rows)} message(s) in {pf.inbox}")
    return EXIT_OK
