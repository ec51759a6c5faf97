"""Why mailvm held each message: a small index beside the quarantine store.

Postfix's hold queue keeps the message but not the milter's reason (it only logs
it), so ``mvctl hold list`` could show an envelope but not why.  When the ``hold``
action is chosen, the service writes ``<quarantine dir>/held/<queue id>.json``
with the verdict, score, reason, deciding domain and recipients; ``mvctl hold
list`` joins these records with ``postqueue -j`` by queue id.

A record is written atomically (temporary file, rename) with mode 0640; a
failure to write it is logged and never changes the action (the message is still
held: the record is a convenience, the hold queue is the truth).  Records whose
message is no longer held are pruned by ``mvctl hold list`` and by the service's
housekeeping once older than the quarantine retention.
"""

from __future__ import annotations

import json
import logging
import os
import re
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable

log = logging.getLogger(__name__)

#: Postfix queue ids: short (hex) or long (base 52 with a 'z'...) form
QUEUE_ID = re.compile(r"[0-9A-Za-z]{5,32}")
MAX_RECORD_BYTES = 64 * 1024
MAX_TEXT = 300


@dataclass(frozen=True)
class HoldRecord:
    queue_id: str
    at: float
    verdict: str
    score: int
    reason: str
    domain: str
    rule: str = ""
    recipients: tuple[str, ...] = field(default=())


def _text(value: Any, limit: int = MAX_TEXT) -> str:
    return "".join(c if c.isprintable() else "?" for c in str(value))[:limit]


class HoldIndex:
    def __init__(self, quarantine_dir: str | os.PathLike[str]):
        self.dir = Path(quarantine_dir) / "held"

    def _path(self, queue_id: str) -> Path:
        if not QUEUE_ID.fullmatch(queue_id or ""):
            raise ValueError(f"not a queue id: {queue_id!r}")
        return self.dir / f"{queue_id}.json"

    def record(self, rec: HoldRecord) -> None:
        """Write (or replace) the record of ``rec.queue_id``; raises OSError/ValueError (caller logs)."""
        path = self._path(rec.queue_id)
        data = asdict(rec)
        data.update(reason=_text(rec.reason), domain=_text(rec.domain, 253), rule=_text(rec.rule, 100),
                    verdict=_text(rec.verdict, 20), recipients=[_text(r, 254) for r in rec.recipients[:100]])
        blob = json.dumps(data, separators=(",", ":")).encode()
        self.dir.mkdir(mode=0o750, parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".hold-", dir=self.dir)
        try:
            os.fchmod(fd, 0o640)
            os.write(fd, blob)
            os.fsync(fd)
            os.close(fd)
            fd = -1
            os.replace(tmp, path)
        finally:
            if fd >= 0:
                os.close(fd)
            if os.path.exists(tmp):
                os.unlink(tmp)

    def get(self, queue_id: str) -> HoldRecord | None:
        """The record of ``queue_id``, or None (none, unreadable, malformed: never raises)."""
        try:
            path = self._path(queue_id)
            with open(path, "rb") as fh:
                d = json.loads(fh.read(MAX_RECORD_BYTES + 1)[:MAX_RECORD_BYTES])
            rcpts = d.get("recipients", [])
            return HoldRecord(queue_id=queue_id, at=float(d.get("at", 0)), verdict=_text(d.get("verdict", ""), 20),
                              score=int(d.get("score", 0)), reason=_text(d.get("reason", "")),
                              domain=_text(d.get("domain", ""), 253), rule=_text(d.get("rule", ""), 100),
                              recipients=tuple(_text(r, 254) for r in rcpts[:100]) if isinstance(rcpts, list) else ())
        except (OSError, ValueError, TypeError, AttributeError):
            return None

    def prune(self, held: Iterable[str] | None = None, older_than_s: float | None = None) -> int:
        """Remove records whose message is not in ``held`` (when given) and older than
        ``older_than_s`` (when given; a record of a message still held is kept).  Returns how many."""
        keep = set(held) if held is not None else None
        now = time.time()
        n = 0
        try:
            entries = list(os.scandir(self.dir))
        except OSError:  # none yet, or not ours to read (mvctl run by another user)
            return 0
        for e in entries:
            qid = e.name.removesuffix(".json")
            if not e.name.endswith(".json") or (keep is not None and qid in keep):
                continue
            try:
                old = older_than_s is None or now - e.stat(follow_symlinks=False).st_mtime > older_than_s
                if (keep is not None or older_than_s is not None) and old:
                    os.unlink(e.path)
                    n += 1
            except OSError:
                continue
        return n


__all__ = ["HoldIndex", "HoldRecord", "QUEUE_ID"]
