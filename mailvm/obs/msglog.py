"""One log line per message, like amavisd-new's ``Passed CLEAN`` / ``Blocked INFECTED``.

:class:`MessageRecord` holds what an administrator greps for: queue id, client,
authenticated user, envelope, size, Message-ID, verdict, score, the deciding
domain and rule, the action and the time per stage.  :func:`render` turns it
into text (``key=value``, values quoted when needed) or one JSON object; the
line goes to the ``mailvm.message`` logger, which :func:`configure` sends to
syslog (facility ``mail``) or stderr.

Every value comes from the SMTP client or the message: it is cut to a bounded
length and stripped of control characters, so one line stays one line.
"""

from __future__ import annotations

import json
import logging
import logging.handlers
import os
import sys
from dataclasses import asdict, dataclass, field
from typing import Any

LOGGER = "mailvm.message"
FORMATS = ("text", "json")
TARGETS = ("stderr", "syslog")
MAX_VALUE = 200
MAX_RCPTS_LOGGED = 50

#: amavisd-style leading words per action
_WORD = {"accept": "Passed", "tag": "Passed", "strip": "Stripped", "hold": "Held", "quarantine": "Quarantined",
         "tempfail": "Deferred", "reject": "Blocked", "discard": "Discarded"}


@dataclass
class MessageRecord:
    queue_id: str = ""
    client_ip: str = ""
    client_name: str = ""
    helo: str = ""
    auth_user: str = ""
    sender: str = ""
    recipients: list[str] = field(default_factory=list)
    size: int = 0
    message_id: str = ""
    verdict: str = ""
    score: int = 0
    action: str = ""
    domain: str = ""
    rule: str = ""
    reason: str = ""
    bypass: str = ""
    quarantine_id: str = ""
    #: "message-cache" when the report was reused for the same message (mailvm.milter.msgcache)
    answered: str = ""
    timings: dict[str, float] = field(default_factory=dict)


def _tame(value: Any, limit: int = MAX_VALUE) -> str:
    text = "".join(ch if ch.isprintable() else "?" for ch in str(value))
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _quote(text: str) -> str:
    if text and not any(c in text for c in ' "=,'):
        return text
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def render(rec: MessageRecord, fmt: str = "text") -> str:
    """The line for one message (``fmt``: text | json)."""
    rcpts = [_tame(r) for r in rec.recipients[:MAX_RCPTS_LOGGED]]
    more = len(rec.recipients) - len(rcpts)
    if fmt == "json":
        data = asdict(rec)
        data["recipients"] = rcpts
        if more > 0:
            data["recipients_more"] = more
        for key, value in list(data.items()):
            if isinstance(value, str):
                data[key] = _tame(value, 400 if key == "reason" else MAX_VALUE)
        data["timings"] = {_tame(k, 20): round(float(v), 4) for k, v in rec.timings.items()}
        return json.dumps(data, sort_keys=False, separators=(",", ":"))
    word = _WORD.get(rec.action, "Decided")
    head = f"{word} {rec.verdict.upper() or 'UNKNOWN'}"
    parts = [
        ("queue_id", rec.queue_id or "-"),
        ("client", f"[{rec.client_ip}]" + (f" {rec.client_name}" if rec.client_name else "") if rec.client_ip or rec.client_name else "-"),
        ("helo", rec.helo),
        ("auth", rec.auth_user),
        ("from", f"<{rec.sender}>"),
        ("to", _tame(",".join(f"<{r}>" for r in rcpts), 1000) + (f",+{more} more" if more > 0 else "")),
        ("size", str(rec.size)),
        ("message_id", rec.message_id),
        ("score", str(rec.score)),
        ("action", rec.action),
        ("domain", rec.domain),
        ("rule", rec.rule),
        ("bypass", rec.bypass),
        ("quarantine", rec.quarantine_id),
        ("answered", rec.answered),
        ("time", ",".join(f"{k}:{v:.3f}" for k, v in rec.timings.items())),
        ("reason", rec.reason),
    ]
    body = " ".join(f"{k}={_quote(_tame(v, {'to': 1100, 'reason': 400}.get(k, MAX_VALUE)))}" for k, v in parts if v)
    return f"{head} {body}"


def emit(rec: MessageRecord, fmt: str = "text") -> None:
    logging.getLogger(LOGGER).info("%s", render(rec, fmt))


def configure(target: str = "stderr", syslog_socket: str = "/dev/log", facility: str = "mail") -> logging.Handler | None:
    """Send the per-message lines (and the rest of mailvm's log) to syslog or leave them on stderr.

    Returns the handler added, or None for stderr (the root logger's handler, see logsetup).
    When the syslog socket is missing the lines stay on stderr, and a warning says so.
    """
    if target == "stderr":
        return None
    if target != "syslog":
        raise ValueError(f"log target must be one of {TARGETS}")
    address: Any = syslog_socket
    if not os.path.exists(syslog_socket):
        logging.getLogger(__name__).warning("syslog socket %s missing: message lines stay on stderr", syslog_socket)
        return None
    handler = logging.handlers.SysLogHandler(
        address=address, facility=logging.handlers.SysLogHandler.facility_names.get(facility, logging.handlers.SysLogHandler.LOG_MAIL))
    handler.ident = f"mailvm[{os.getpid()}]: "
    handler.setFormatter(logging.Formatter("%(message)s"))
    logging.getLogger().addHandler(handler)
    return handler


def stderr_handler() -> logging.Handler:
    h = logging.StreamHandler(sys.stderr)
    h.setFormatter(logging.Formatter("%(message)s"))
    return h
