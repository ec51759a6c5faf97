"""Helpers for the mail-path tests: a real ``mailvm serve`` and a real Postfix on loopback.

Like aiosmtpd's and firecracker's test frameworks: the fixtures start real
servers, track every process they start, kill them all at teardown, and print
the services' logs when a test fails.
"""

from __future__ import annotations

import os
import signal
import smtplib
import subprocess
import sys
import time
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path

from mailvm.lab.common import wait_port

EICAR = b"X5O!P%@AP[4\\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*"

#: the lab Postfix's SMTP-AUTH user (a sasldb of its own; see mailvm.lab.postfix.LabPostfix.sasl_users)
SASL_USER, SASL_PASSWORD = "alice@lab.example", "correct horse battery staple"

POLICIES = {
    "reject.test": '[actions]\nmalicious = "reject"\n',
    "quarantine.test": '[actions]\nmalicious = "quarantine"\nsuspicious = "quarantine"\n',
    "hold.test": '[actions]\nmalicious = "hold"\n[notify]\nadmin = ["postmaster@hold.test"]\n',
    "notify.test": '[actions]\nmalicious = "quarantine"\n[notify]\nadmin = ["soc@notify.test"]\nrecipients = true\n',
    "strip.test": '[actions]\nmalicious = "strip"\n',
    "slow.test": 'max_wait_s = 3\n[actions]\ntimeout = "tempfail"\n',
    "trusted.test": '[bypass]\nnetworks = ["127.0.0.0/8"]\n',
    "authbypass.test": '[bypass]\nauthenticated = true\n',
    "custom.test": '[headers]\nverdict = "X-Other-Verdict"\nreport = "X-Other-Report"\n',
}


@dataclass
class MailLab:
    root: Path
    config: Path
    smtp_port: int
    milter_port: int
    postfix: object
    proc: subprocess.Popen | None = None

    @property
    def log(self) -> Path:
        return self.root / "mailvm.log"

    def start_mailvm(self) -> None:
        logf = open(self.log, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mailvm.cli.mailvm_main", "-c", str(self.config), "-v", "serve"],
            stdout=logf, stderr=subprocess.STDOUT, start_new_session=True,
        )
        proc = self.proc
        wait_port(self.milter_port, 90, alive=lambda: proc.poll() is None)

    def kill_mailvm(self, sig: int = signal.SIGKILL) -> None:
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, sig)
        except ProcessLookupError:
            pass
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)
        self.proc = None

    def send(self, msg: bytes | EmailMessage, rcpts: list[str], sender: str = "sender@outside.test",
             login: tuple[str, str] | None = None) -> dict:
        raw = msg.as_bytes() if isinstance(msg, EmailMessage) else msg
        with smtplib.SMTP("127.0.0.1", self.smtp_port, timeout=600) as smtp:
            if login is not None:
                smtp.ehlo()
                smtp.login(*login)  # SMTP-AUTH (PLAIN) against the lab's sasldb
            return smtp.sendmail(sender, rcpts, raw)

    def mvctl(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "mailvm.cli.mvctl", "-c", str(self.config), *args],
                              capture_output=True, text=True, timeout=300)

    def log_text(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""


def make_message(subject: str, to: str = "user@example.com", attachments: list[tuple[str, bytes]] = (),
                 body: str = "Hello,\nplease find the document attached.\n") -> EmailMessage:
    m = EmailMessage()
    m["From"] = "Sender <sender@outside.test>"
    m["To"] = to
    m["Subject"] = subject
    m["Message-ID"] = f"<{time.time_ns()}@outside.test>"
    m.set_content(body)
    for name, data in attachments:
        m.add_attachment(data, maintype="application", subtype="octet-stream", filename=name)
    return m


def eicar_zip() -> bytes:
    import io
    import zipfile

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("eicar.com", EICAR)
    return buf.getvalue()


