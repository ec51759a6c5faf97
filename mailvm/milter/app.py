"""The pymilter application: callbacks only collect, ``eom`` delegates.

pymilter creates one :class:`MailvmMilter` per SMTP connection and calls it
from that connection's thread.  The callbacks record the envelope, the raw
header fields and the body (spooled to a size-capped temporary file); nothing
here parses MIME or decides.  At end of message :meth:`eom` hands the spooled
message to a worker process (:mod:`mailvm.milter.pipeline`), keeps Postfix
waiting with ``progress()``, asks the pure :func:`mailvm.policy.decide_for_recipients`
for a :class:`~mailvm.policy.Decision`, and lets :mod:`mailvm.milter.actions`
carry it out.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Callable

import Milter

from mailvm.milter import actions
from mailvm.milter.msgcache import MessageDigest
from mailvm.milter.spoolfile import MessageSpool
from mailvm.milter.service import MilterService
from mailvm.policy import REPLY_INTERNAL

log = logging.getLogger(__name__)

#: header fields of ours that a message from outside must not carry
OWN_HEADER_PREFIX = "x-mailvm-"
MAX_HEADER_BYTES = 1024 * 1024
MAX_RCPTS = 1000


@dataclass
class MessageState:
    """Everything collected for one message (reset at MAIL FROM)."""

    sender: str = ""
    recipients: list[str] = field(default_factory=list)
    headers: list[tuple[str, bytes]] = field(default_factory=list)
    header_bytes: int = 0
    body: Any = None  # the message's spool file (MessageSpool), written once
    body_bytes: int = 0
    truncated: bool = False
    own_headers: dict[str, int] = field(default_factory=dict)  # lower-case name -> occurrences seen
    release_header: str | None = None
    #: the message as the analysis sees it, hashed while it streams in (mailvm.milter.msgcache)
    digest: MessageDigest = field(default_factory=MessageDigest)
    auth_user: str = ""
    message_id: str = ""

    def close(self) -> None:
        if self.body is not None:
            try:
                self.body.close()
            except OSError:
                pass
            self.body = None


class MailvmMilter(Milter.Base):
    """One instance per SMTP connection (pymilter's model)."""

    service: MilterService  # set by the factory

    @classmethod
    def protocol_mask(cls) -> int:
        """Ask for SMFIP_HDR_LEADSPC (pymilter masks it off): the MTA then sends each header value with
        its leading whitespace as received, so the stored copy can be byte-exact (``Subject:x`` and
        ``Subject: x`` differ).  An MTA that does not offer it strips one space as before."""
        return Milter.Base.protocol_mask.__func__(cls) & ~Milter.P_HDR_LEADSPC

    @property
    def leadspc(self) -> bool:
        """Whether header values come (and go back to the MTA) with their leading whitespace."""
        return bool(getattr(self, "_protocol", 0) & Milter.P_HDR_LEADSPC)

    def __init__(self, service: MilterService) -> None:
        self.service = service
        self.id = Milter.uniqueID()
        self.client = ""
        self.client_ip = ""
        self.client_name = ""
        self.helo_name = ""
        self.msg: MessageState | None = None

    # -- collecting ----------------------------------------------------------
    @Milter.noreply
    def connect(self, IPname, family, hostaddr):  # noqa: N803 (pymilter's names)
        self.client = f"{IPname} [{hostaddr[0] if hostaddr else '?'}]"
        self.client_ip = str(hostaddr[0]) if hostaddr else ""
        self.client_name = _addr(IPname)[:255]
        return Milter.CONTINUE

    @Milter.noreply
    def hello(self, heloname):
        self.helo_name = _addr(heloname)[:255]
        return Milter.CONTINUE

    @Milter.noreply  # never refuses a sender: no reply round trip (a spool failure tempfails at eom)
    def envfrom(self, mailfrom, *params):
        self._reset()
        self.msg = MessageState(sender=_addr(mailfrom))
        self.msg.auth_user = _addr(self.getsymval("{auth_authen}") or "")[:256]
        try:
            self.msg.body = MessageSpool(self.service.spool_dir)
        except OSError as exc:
            log.error("cannot spool the message in %s: %s; it will be deferred", self.service.spool_dir, exc)
        return Milter.CONTINUE

    def envrcpt(self, to, *params):
        if self.msg is None:
            return Milter.CONTINUE
        if len(self.msg.recipients) >= MAX_RCPTS:
            # never drop a recipient: refuse it for now, the client sends it again in a later transaction
            self.setreply("452", "4.5.3", f"mailvm: more than {MAX_RCPTS} recipients, send the rest later")
            return Milter.TEMPFAIL
        self.msg.recipients.append(_addr(to))
        return Milter.CONTINUE

    @Milter.decode("bytes")
    @Milter.noreply
    def header(self, name, value):
        msg = self.msg
        if msg is None:
            return Milter.CONTINUE
        lname = name.lower()
        if lname.startswith(OWN_HEADER_PREFIX) or lname in self.service.own_header_names():
            # a header of ours (or any name a domain's policy writes) from outside: a forgery; removed at
            # eom before delivery, but kept in the stored copy (quarantine keeps the message as received)
            msg.own_headers[name] = msg.own_headers.get(name, 0) + 1
            if lname == "x-mailvm-release" and msg.release_header is None:
                msg.release_header = (value.decode("ascii", "replace") if isinstance(value, bytes)
                                      else str(value)).strip()
        raw = value if isinstance(value, bytes) else str(value).encode("utf-8", "surrogateescape")
        if lname == "message-id" and not msg.message_id:
            msg.message_id = raw.decode("utf-8", "replace").strip()[:200]
        msg.header_bytes += len(name) + len(raw) + 4
        if msg.header_bytes <= MAX_HEADER_BYTES:
            msg.headers.append((name, raw))
            msg.digest.header(name, raw)
        else:
            msg.truncated = True
        return Milter.CONTINUE

    @Milter.noreply
    def body(self, chunk):
        msg = self.msg
        if msg is None or msg.body is None:
            return Milter.CONTINUE
        room = self.service.max_message_bytes - msg.body_bytes
        if room <= 0:
            msg.truncated = True
            return Milter.CONTINUE
        if len(chunk) > room:
            chunk = chunk[:room]
            msg.truncated = True
        if not msg.body.head_written:
            msg.body.write_head(self._head(msg))
            msg.digest.end_of_headers()
        msg.body.write(chunk)
        msg.digest.body(chunk)
        msg.body_bytes += len(chunk)
        return Milter.CONTINUE

    # -- deciding --------------------------------------------------------------
    def eom(self):
        msg = self.msg
        if msg is None:
            return Milter.TEMPFAIL
        queue_id = self.getsymval("i") or ""
        try:
            if msg.body is None:
                raise OSError("the message could not be spooled")
            if not msg.body.head_written:  # a message without a body
                msg.body.write_head(self._head(msg))
                msg.digest.end_of_headers()
            raw = msg.body.finish()
            from mailvm.policy import ClientInfo

            outcome = self.service.handle(
                raw=raw,
                sender=msg.sender,
                recipients=list(msg.recipients),
                queue_id=queue_id,
                truncated=msg.truncated,
                release_header=msg.release_header,
                progress=self._progress,
                client=ClientInfo(ip=self.client_ip, name=self.client_name, helo=self.helo_name,
                                  auth_user=msg.auth_user, sender=msg.sender),
                message_id=msg.message_id,
                size=msg.header_bytes + msg.body_bytes,
                spooled=msg.body.path,
                digest=msg.digest.hexdigest(),
            )
            return actions.apply(self, outcome, msg.own_headers)
        except Exception:  # never lose a message: tempfail and log the reason
            log.exception("%s: internal error at end of message; deferring", queue_id or self.id)
            code, ext = REPLY_INTERNAL  # mailvm itself failed (docs/policy.md): 451 4.3.0
            self.setreply(code, ext, "mailvm: temporary failure, please retry")
            return Milter.TEMPFAIL
        finally:
            self._reset()

    def _progress(self) -> None:
        try:
            self.progress()
        except Exception as exc:  # the MTA went away: eom will fail to reply anyway
            log.debug("progress() failed: %s", exc)

    def _head(self, msg: MessageState) -> bytes:
        """The header block as received: the MTA hands a folded value over with bare LF between its
        lines (restored to CRLF) and, without SMFIP_HDR_LEADSPC, with one leading space taken off."""
        sep = b":" if self.leadspc else b": "
        return b"".join(n.encode("ascii", "replace") + sep + _crlf(v) + b"\r\n" for n, v in msg.headers) + b"\r\n"

    def abort(self):
        self._reset()
        return Milter.CONTINUE

    def close(self):
        self._reset()
        return Milter.CONTINUE

    def _reset(self) -> None:
        if self.msg is not None:
            self.msg.close()
        self.msg = None


def _crlf(value: bytes) -> bytes:
    """Line ends inside a folded header value as they travel in SMTP: CRLF."""
    return value.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n") if b"\n" in value else value


def _addr(value: Any) -> str:
    text = value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
    text = text.strip()
    if text.startswith("<") and text.endswith(">"):
        text = text[1:-1]
    return "".join(ch for ch in text if ch.isprintable())[:320]


def make_factory(service: MilterService) -> Callable[[], MailvmMilter]:
    def factory() -> MailvmMilter:
        return MailvmMilter(service)

    return factory


def milter_flags() -> int:
    return Milter.ADDHDRS | Milter.CHGHDRS | Milter.CHGBODY | Milter.QUARANTINE


