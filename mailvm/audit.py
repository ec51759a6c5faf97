"""An append-only audit log of what administrators did to held and quarantined mail.

One JSON object per line: ``{"at": <unix time>, "who": ..., "action": ..., "item": ..., "detail": ...,
"ok": true|false}``.  Lines are written with ``O_APPEND`` in a single ``write()``
and fsynced, so concurrent writers (``mvctl``, the web console, the service's
expiry) never interleave and a crash loses at most the line being written.
The file is never rewritten; rotation is the log rotator's job (``copytruncate``
is not needed: mailvm reopens the file for every entry).

``who`` is the console login, or for ``mvctl`` the Unix user (``SUDO_USER``
when run through sudo), or ``mailvm`` for the service's own actions (expiry).
"""

from __future__ import annotations

import json
import logging
import os
import pwd
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator

log = logging.getLogger(__name__)

MAX_FIELD = 500
#: entries read back at most (the console and `mvctl quarantine audit` show the newest)
MAX_READ = 10000
ACTIONS = ("release", "delete", "expire", "hold_release", "pin", "unpin", "login", "login_failed")


@dataclass(frozen=True)
class AuditEntry:
    at: float
    who: str
    action: str
    item: str
    detail: str = ""
    ok: bool = True

    @property
    def at_iso(self) -> str:
        return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.at))


def _tame(value: object) -> str:
    text = "".join(ch if ch.isprintable() else "?" for ch in str(value))
    return text[:MAX_FIELD]


def current_user() -> str:
    """Who runs this command: the sudo caller if any, else the Unix user."""
    sudo = os.environ.get("SUDO_USER")
    if sudo:
        return f"{sudo} (sudo)"
    try:
        return pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        return f"uid {os.getuid()}"


class AuditLog:
    def __init__(self, path: str | os.PathLike[str]):
        self.path = Path(path)

    def record(self, who: str, action: str, item: str, detail: str = "", ok: bool = True) -> AuditEntry:
        """Append one entry; raises OSError when it cannot be written (the caller decides what that means)."""
        if action not in ACTIONS:
            raise ValueError(f"unknown audit action {action!r}")
        entry = AuditEntry(time.time(), _tame(who) or "?", action, _tame(item), _tame(detail), bool(ok))
        line = (json.dumps(asdict(entry), separators=(",", ":")) + "\n").encode()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        try:
            from mailvm.privilege import inherit_owner

            inherit_owner(fd, self.path.parent)  # created by mvctl (root): still the milter's to append to
            os.write(fd, line)
            os.fsync(fd)
        finally:
            os.close(fd)
        log.info("audit: %s %s %s %s%s", entry.who, action, entry.item, entry.detail, "" if ok else " (failed)")
        return entry

    def entries(self, item: str | None = None, limit: int = 200) -> list[AuditEntry]:
        """The newest ``limit`` entries (for ``item`` only when given), newest first."""
        found = [e for e in self._read() if item is None or e.item == item]
        return list(reversed(found[-max(0, limit):]))

    def _read(self) -> Iterator[AuditEntry]:
        try:
            with open(self.path, "rb") as fh:
                lines = fh.readlines()[-MAX_READ:]
        except FileNotFoundError:
            return
        for raw in lines:
            try:
                d = json.loads(raw)
                yield AuditEntry(float(d["at"]), str(d["who"]), str(d["action"]), str(d["item"]),
                                 str(d.get("detail", "")), bool(d.get("ok", True)))
            except (ValueError, KeyError, TypeError):
                continue  # a torn last line after a crash, or foreign junk: skipped, never fatal
