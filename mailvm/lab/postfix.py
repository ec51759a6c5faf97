"""A private, loopback-only Postfix instance for ``make run``, tests and benchmarks.

It has its own configuration directory (``postfix -c DIR``), listens on
127.0.0.1 only, accepts mail for any domain and delivers it into Maildirs under
``DIR/mail/<domain>/<user>/`` through Postfix's ``virtual`` agent.  A milter can
be attached (``smtpd_milters``) or left out (the benchmark's baseline).  It never
relays anywhere: there is no transport towards the outside world.
"""

from __future__ import annotations

import logging
import os
import pwd
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

MASTER_CF = """\
{listen} inet n - n - - smtpd
pickup    unix n - n 60 1 pickup
cleanup   unix n - n - 0 cleanup
qmgr      unix n - n 300 1 qmgr
tlsmgr    unix - - n 1000? 1 tlsmgr
rewrite   unix - - n - - trivial-rewrite
bounce    unix - - n - 0 bounce
defer     unix - - n - 0 bounce
trace     unix - - n - 0 bounce
verify    unix - - n - 1 verify
flush     unix n - n 1000? 0 flush
proxymap  unix - - n - - proxymap
proxywrite unix - - n - 1 proxymap
smtp      unix - - n - - smtp
relay     unix - - n - - smtp
showq     unix n - n - - showq
error     unix - - n - - error
retry     unix - - n - - error
discard   unix - - n - - discard
local     unix - n n - - local
virtual   unix - n n - - virtual
lmtp      unix - - n - - lmtp
anvil     unix - - n - 1 anvil
scache    unix - - n - 1 scache
postlog   unix-dgram n - n - 1 postlogd
"""


@dataclass
class LabPostfix:
    """One lab instance; ``start()`` writes its configuration and starts it."""

    root: Path
    port: int = 2525
    milter: str | None = None  # e.g. "inet:127.0.0.1:8894" or "unix:/path" (Postfix syntax)
    milter_default_action: str = "tempfail"
    milter_content_timeout: int = 300
    myhostname: str = "mailvm-lab.localdomain"
    #: SMTP-AUTH users (name -> password) in a sasldb of the lab's own; empty: no SMTP-AUTH
    sasl_users: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.root = Path(self.root).resolve()

    # -- paths -------------------------------------------------------------------
    @property
    def config_dir(self) -> Path:
        return self.root / "etc"

    @property
    def queue_dir(self) -> Path:
        return self.root / "queue"

    @property
    def mail_dir(self) -> Path:
        return self.root / "mail"

    @property
    def maillog(self) -> Path:
        return self.root / "log" / "maillog"

    # -- configuration -------------------------------------------------------------
    def main_cf(self) -> str:
        nobody = pwd.getpwnam("nobody")
        lines = {
            "compatibility_level": "3.6",
            "queue_directory": str(self.queue_dir),
            "data_directory": str(self.root / "data"),
            "mail_owner": "postfix",
            "setgid_group": "postdrop",
            "inet_interfaces": "loopback-only",
            "inet_protocols": "ipv4",
            "myhostname": self.myhostname,
            "mydestination": "",
            "mynetworks": "127.0.0.0/8",
            "smtpd_relay_restrictions": "permit_mynetworks, reject",
            "virtual_mailbox_domains": f"regexp:{self.config_dir}/virtual_domains",
            "virtual_mailbox_maps": f"regexp:{self.config_dir}/virtual_mailboxes",
            "virtual_mailbox_base": str(self.mail_dir),
            "virtual_uid_maps": f"static:{nobody.pw_uid}",
            "virtual_gid_maps": f"static:{nobody.pw_gid}",
            "virtual_minimum_uid": "1",
            "virtual_mailbox_limit": "0",
            "message_size_limit": str(64 * 1024 * 1024),
            "maillog_file": str(self.maillog),
            "maillog_file_prefixes": str(self.root / "log"),
            "smtpd_banner": "$myhostname ESMTP mailvm-lab",
            "biff": "no",
            "smtputf8_enable": "yes",
            "default_process_limit": "100",
            "smtpd_client_connection_count_limit": "0",
            "smtpd_client_connection_rate_limit": "0",
            "smtpd_client_message_rate_limit": "0",
            "in_flow_delay": "0",
            "anvil_rate_time_unit": "60s",
            "queue_run_delay": "10s",
            "minimal_backoff_time": "10s",
            "maximal_backoff_time": "60s",
            "smtpd_error_sleep_time": "0",
            "smtpd_soft_error_limit": "1000",
            "smtpd_hard_error_limit": "1000",
            "shlib_directory": "/usr/lib/postfix",
            "meta_directory": "/etc/postfix",
        }
        if self.sasl_users:  # Cyrus SASL with a sasldb of the lab's own (PLAIN/LOGIN: loopback only)
            lines.update(
                {
                    "smtpd_sasl_auth_enable": "yes",
                    "smtpd_sasl_type": "cyrus",
                    "smtpd_sasl_path": "smtpd",
                    "cyrus_sasl_config_path": str(self.config_dir / "sasl"),
                    "smtpd_sasl_security_options": "noanonymous",
                    "smtpd_relay_restrictions": "permit_mynetworks, permit_sasl_authenticated, reject",
                }
            )
        if self.milter:
            lines.update(
                {
                    "smtpd_milters": self.milter,
                    "non_smtpd_milters": self.milter,
                    "milter_default_action": self.milter_default_action,
                    "milter_protocol": "6",
                    "milter_connect_timeout": "10s",
                    "milter_command_timeout": "30s",
                    "milter_content_timeout": f"{self.milter_content_timeout}s",
                    "milter_mail_macros": "i {mail_addr} {auth_authen}",
                    "milter_end_of_data_macros": "i",
                }
            )
        return "".join(f"{k} = {v}\n" for k, v in lines.items())

    def write_config(self) -> None:
        for d in (self.config_dir, self.queue_dir, self.mail_dir, self.root / "data", self.root / "log"):
            d.mkdir(parents=True, exist_ok=True)
        (self.config_dir / "main.cf").write_text(self.main_cf())
        (self.config_dir / "master.cf").write_text(MASTER_CF.format(listen=f"127.0.0.1:{self.port}"))
        (self.config_dir / "virtual_domains").write_text("/./ OK\n")
        # Postfix forbids $n substitution in mailbox maps: one catch-all Maildir,
        # recipients told apart by the Delivered-To field the virtual agent adds
        (self.config_dir / "virtual_mailboxes").write_text("/./ inbox/\n")
        nobody = pwd.getpwnam("nobody")
        os.chown(self.mail_dir, nobody.pw_uid, nobody.pw_gid)
        pf = pwd.getpwnam("postfix")
        os.chown(self.root / "data", pf.pw_uid, pf.pw_gid)
        if self.sasl_users:
            self._write_sasl(pf)
        # nothing is registered in the system's /etc/postfix/main.cf: as root, ``postfix -c``,
        # ``postqueue -c`` and ``postsuper -c`` accept a directory that the default configuration
        # does not list in alternate_config_directories (tests/mail/test_postfix_milter.py checks
        # that /etc/postfix is left as it was)

    def _write_sasl(self, pf: pwd.struct_passwd) -> None:
        """smtpd.conf and a sasldb (saslpasswd2, Debian's sasl2-bin) readable by smtpd only."""
        tool = shutil.which("saslpasswd2") or "/usr/sbin/saslpasswd2"
        if not os.path.exists(tool):
            raise RuntimeError("SMTP-AUTH in the lab needs saslpasswd2 (Debian's sasl2-bin: make setup)")
        sasl_dir = self.config_dir / "sasl"
        sasl_dir.mkdir(exist_ok=True)
        db = self.root / "data" / "sasldb2"
        (sasl_dir / "smtpd.conf").write_text(
            f"pwcheck_method: auxprop\nauxprop_plugin: sasldb\nsasldb_path: {db}\nmech_list: PLAIN LOGIN\n")
        for user, password in self.sasl_users.items():
            name, _, realm = user.partition("@")
            cmd = [tool, "-c", "-p", "-f", str(db)] + (["-u", realm] if realm else []) + [name]
            r = subprocess.run(cmd, input=password + "\n", capture_output=True, text=True, timeout=30)
            if r.returncode != 0:
                raise RuntimeError(f"saslpasswd2 for {user} failed: {r.stderr.strip()}")
        os.chown(db, pf.pw_uid, pf.pw_gid)
        os.chmod(db, 0o600)

    # -- lifecycle ---------------------------------------------------------------------
    def _postfix(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run(
            ["postfix", "-c", str(self.config_dir), *args], capture_output=True, text=True, check=check, timeout=60
        )

    def start(self) -> None:
        self.write_config()
        self._postfix("stop", check=False)
        # no "postfix set-permissions": it resets the owner and mode of the files Postfix shares
        # with the system's instance (/etc/postfix, /usr/sbin/postdrop...); "start" creates any
        # missing queue directory of this instance with the right owner and mode by itself
        res = self._postfix("start", check=False)
        if res.returncode != 0:
            raise RuntimeError(f"postfix start failed: {res.stdout}{res.stderr}{self.log_tail()}")
        self.wait_listening(30)
        log.info("lab postfix on 127.0.0.1:%d (config %s)", self.port, self.config_dir)

    def reload(self) -> None:
        self.write_config()
        self._postfix("reload", check=False)

    def stop(self) -> None:
        self._postfix("stop", check=False)

    def wait_listening(self, timeout: float) -> None:
        import socket

        end = time.monotonic() + timeout
        while time.monotonic() < end:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                    if s.recv(100).startswith(b"220"):
                        return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"postfix did not listen on {self.port}: {self.log_tail()}")

    def log_tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.maillog.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    # -- inspection ----------------------------------------------------------------------
    @property
    def inbox(self) -> Path:
        return self.mail_dir / "inbox"

    def delivered(self, address: str | None = None) -> list[bytes]:
        """Messages delivered (to ``address`` when given, by Delivered-To), oldest first."""
        files = []
        for sub in ("new", "cur"):
            d = self.inbox / sub
            if d.is_dir():
                files.extend(p for p in d.iterdir() if p.is_file())
        files.sort(key=lambda p: (p.stat().st_mtime, p.name))
        out = []
        for p in files:
            data = p.read_bytes()
            if address is None or _delivered_to(data) == address.lower():
                out.append(data)
        return out

    def queue(self) -> str:
        res = subprocess.run(["postqueue", "-c", str(self.config_dir), "-p"], capture_output=True, text=True, timeout=30)
        return res.stdout

    def flush(self) -> None:
        subprocess.run(["postqueue", "-c", str(self.config_dir), "-f"], capture_output=True, timeout=30)

    def release_hold(self, queue_id: str) -> bool:
        res = subprocess.run(["postsuper", "-c", str(self.config_dir), "-H", queue_id], capture_output=True, text=True, timeout=30)
        return res.returncode == 0

    def wait_delivered(self, address: str | None, count: int = 1, timeout: float = 30.0) -> list[bytes]:
        end = time.monotonic() + timeout
        while True:
            msgs = self.delivered(address)
            if len(msgs) >= count or time.monotonic() > end:
                return msgs
            time.sleep(0.05)

    def clear_mail(self) -> None:
        if self.mail_dir.exists():
            for child in self.mail_dir.iterdir():
                shutil.rmtree(child, ignore_errors=True)


def _delivered_to(data: bytes) -> str:
    head = data.split(b"\n\n", 1)[0]
    for line in head.splitlines():
        if line.lower().startswith(b"delivered-to:"):
            return line.split(b":", 1)[1].strip().decode("ascii", "replace").lower()
    return ""
