"""The durable quarantine store: keep a whole message, list it, release it once, delete it.

Layout under ``root`` (mode 0700; quarantined mail is live malware)::

    items/<id>/message.eml   the original message, byte for byte
    items/<id>/meta.json     envelope, domain, queue id, hashes, the decision report (never changes)
    items/<id>/state.json    quarantined | releasing | released, attempts, last error
    items/<id>/lock          flock()ed while a release or a delete runs
    tmp/                     items being written and items being deleted

**Durability.**  :meth:`QuarantineStore.add` writes every file of an item into a
fresh directory under ``tmp/``, fsyncs each file and the directory, then renames
the directory to ``items/<id>`` (one atomic rename) and fsyncs ``items/``.  An
item is therefore either completely there or not listed at all: a crash
mid-write leaves only a directory in ``tmp/``, which :meth:`~QuarantineStore.list`
never looks at and :meth:`~QuarantineStore.expire` removes later.  State changes
(``state.json``) are written to a temporary file, fsynced and renamed the same way.

**Release** (:meth:`QuarantineStore.release`) holds an exclusive ``flock`` on the
item while it moves the state ``quarantined -> releasing -> released``, so two
administrators (threads or processes) releasing the same item deliver it once:
the second waits for the lock and then finds ``released``.  A delivery failure
puts the state back to ``quarantined`` with the error recorded.  A crash during
delivery leaves ``releasing``: the message may or may not have gone out, so a
later release refuses (status ``interrupted``) unless called with ``force=True``.

The released copy carries the ``X-Mailvm-Release`` header (see :mod:`mailvm.release`)
so the milter lets it pass; :func:`smtp_deliver` is the default way to send it:
SMTP to the local MTA.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import logging
import os
import re
import secrets
import shutil
import smtplib
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Sequence

from mailvm.policy import normalize_domain
from mailvm.release import add_release_header, make_token, message_body_sha256, valid_item_id

log = logging.getLogger(__name__)

MESSAGE_FILE = "message.eml"
META_FILE = "meta.json"
STATE_FILE = "state.json"
LOCK_FILE = "lock"

QUARANTINED = "quarantined"
RELEASING = "releasing"
RELEASED = "released"
STATES = (QUARANTINED, RELEASING, RELEASED)

#: ReleaseResult.status values
ST_RELEASED = "released"
ST_ALREADY = "already_released"
ST_FAILED = "failed"
ST_NOT_FOUND = "not_found"
ST_INTERRUPTED = "interrupted"

MAX_ERROR = 1000
STALE_TMP_S = 24 * 3600
MAX_RECIPIENTS = 10000

Deliver = Callable[[bytes, str, list[str]], None]


class PartialDelivery(Exception):
    """Raised by a deliver function when some recipients were refused but others accepted.

    The message did go out, so the item becomes ``released`` (a retry would
    duplicate it for the accepted recipients); the refusals are recorded.
    """

    def __init__(self, refused: dict[str, Any]):
        self.refused = refused
        super().__init__(f"refused recipients: {', '.join(sorted(refused))}")


@dataclass(frozen=True)
class QuarantineItem:
    """Metadata of one quarantined message (never the message itself)."""

    id: str
    created: float
    domain: str
    sender: str
    recipients: tuple[str, ...]
    queue_id: str
    size: int
    sha256: str
    body_sha256: str
    verdict: str
    score: int
    action: str
    reason: str
    state: str = QUARANTINED
    attempts: int = 0
    released_at: float | None = None
    last_error: str = ""
    report: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    @property
    def created_iso(self) -> str:
        return datetime.fromtimestamp(self.created, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class ReleaseResult:
    """What one :meth:`QuarantineStore.release` call did.

    ``delivered`` is True only for the call that actually handed the message to
    the MTA; ``status`` is one of released, already_released, failed, not_found,
    interrupted.
    """

    id: str
    status: str
    delivered: bool
    message: str


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_file(path: Path, data: bytes) -> None:
    from mailvm.privilege import inherit_owner

    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        inherit_owner(fd, path.parent)  # mvctl (root) writing into the store of a milter run as mailvm
        view = memoryview(data)
        while view:
            n = os.write(fd, view)
            view = view[n:]
        os.fsync(fd)
    finally:
        os.close(fd)


def _replace_file(path: Path, data: bytes) -> None:
    """Atomically replace ``path``: temp file in the same directory, fsync, rename, fsync dir."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        _write_file(tmp, data)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    _fsync_dir(path.parent)


def _when(value: float | datetime | None) -> float | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=timezone.utc)
        return value.timestamp()
    return float(value)


def _json_safe(data: Any) -> Any:
    """``data`` after a JSON round trip (odd values become strings), so what is stored is what is read."""
    return json.loads(json.dumps(data, default=str))


class QuarantineStore:
    """A directory of quarantined messages; safe to share between threads and processes."""

    def __init__(self, root: str | os.PathLike[str]):
        self.root = Path(root)
        self.items_dir = self.root / "items"
        self.tmp_dir = self.root / "tmp"

    # ---------------------------------------------------------------- helpers
    def _ensure(self) -> None:
        for d in (self.root, self.items_dir, self.tmp_dir):
            d.mkdir(mode=0o700, parents=True, exist_ok=True)

    def _item_dir(self, item_id: str) -> Path:
        if not valid_item_id(item_id):
            raise ValueError(f"not a quarantine item id: {item_id!r}")
        return self.items_dir / item_id

    @staticmethod
    def new_id(now: float | None = None) -> str:
        t = time.time() if now is None else now
        stamp = datetime.fromtimestamp(t, timezone.utc).strftime("%Y%m%dT%H%M%S")
        return f"{stamp}-{secrets.token_hex(4)}"

    # ---------------------------------------------------------------- add
    def add(
        self,
        raw: bytes,
        sender: str,
        recipients: list[str],
        decision_report: dict[str, Any],
        domain: str,
        queue_id: str = "",
        now: float | None = None,
    ) -> str:
        """Store a message durably; returns its id.  Raises OSError when it cannot be stored
        (the caller must then not drop the message: tempfail)."""
        self._ensure()
        created = time.time() if now is None else now
        report = _json_safe(decision_report if isinstance(decision_report, dict) else {})
        rcpts = [str(r) for r in list(recipients)[:MAX_RECIPIENTS]]
        # a Decision.to_report()/decision_report() dict, or one that nests it under "decision"
        summary = report.get("decision") if isinstance(report.get("decision"), dict) else report
        verdict = summary.get("verdict", "")
        score = summary.get("score", 0)
        meta = {
            "created": created,
            "domain": normalize_domain(domain) or str(domain)[:253],
            "sender": str(sender),
            "recipients": rcpts,
            "queue_id": str(queue_id)[:64],
            "size": len(raw),
            "sha256": _sha256(raw),
            "body_sha256": message_body_sha256(raw),
            "verdict": verdict if isinstance(verdict, str) else "",
            "score": score if isinstance(score, int) and not isinstance(score, bool) else 0,
            "action": str(summary.get("action", "")),
            "reason": str(summary.get("reason", ""))[:1000],
            "report": report,
        }
        state = {"state": QUARANTINED, "attempts": 0, "released_at": None, "last_error": ""}
        for _attempt in range(5):
            item_id = self.new_id(created)
            meta["id"] = item_id
            stage = self.tmp_dir / f"{item_id}.{secrets.token_hex(4)}.new"
            stage.mkdir(mode=0o700)
            try:
                _write_file(stage / MESSAGE_FILE, raw)
                _write_file(stage / META_FILE, json.dumps(meta).encode("utf-8"))
                _write_file(stage / STATE_FILE, json.dumps(state).encode("utf-8"))
                _write_file(stage / LOCK_FILE, b"")
                _fsync_dir(stage)
                os.rename(stage, self.items_dir / item_id)
            except OSError as exc:
                shutil.rmtree(stage, ignore_errors=True)
                if exc.errno in (errno.EEXIST, errno.ENOTEMPTY):
                    continue  # id collision: draw another
                raise
            _fsync_dir(self.items_dir)
            log.info("quarantined %s (%s, %d bytes, domain %s)", item_id, meta["verdict"], len(raw), meta["domain"])
            return item_id
        raise OSError(errno.EEXIST, "could not find a free quarantine id")

    # ---------------------------------------------------------------- read
    def _load(self, d: Path) -> QuarantineItem | None:
        try:
            meta = json.loads((d / META_FILE).read_bytes())
            state = json.loads((d / STATE_FILE).read_bytes())
            return QuarantineItem(
                id=d.name,
                created=float(meta["created"]),
                domain=str(meta["domain"]),
                sender=str(meta["sender"]),
                recipients=tuple(str(r) for r in meta["recipients"]),
                queue_id=str(meta.get("queue_id", "")),
                size=int(meta["size"]),
                sha256=str(meta["sha256"]),
                body_sha256=str(meta["body_sha256"]),
                verdict=str(meta.get("verdict", "")),
                score=int(meta.get("score", 0)),
                action=str(meta.get("action", "")),
                reason=str(meta.get("reason", "")),
                state=str(state.get("state", QUARANTINED)),
                attempts=int(state.get("attempts", 0)),
                released_at=state.get("released_at"),
                last_error=str(state.get("last_error", "")),
                report=meta.get("report", {}) if isinstance(meta.get("report"), dict) else {},
            )
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("quarantine item %s unreadable: %s", d, exc)
            return None

    def list(
        self,
        domain: str | None = None,
        verdict: str | None = None,
        older_than: float | datetime | None = None,
        newer_than: float | datetime | None = None,
        state: str | None = None,
    ) -> list[QuarantineItem]:
        """Items, oldest first, filtered: ``domain`` exact (normalised), ``verdict``,
        ``older_than``/``newer_than`` as an instant (epoch seconds or datetime) the
        item was created before/after, ``state``."""
        try:
            names = sorted(os.listdir(self.items_dir))
        except FileNotFoundError:
            return []
        want_domain = (normalize_domain(domain) or domain.lower()) if domain is not None else None
        before, after = _when(older_than), _when(newer_than)
        items = []
        for name in names:
            if not valid_item_id(name):
                continue
            item = self._load(self.items_dir / name)
            if item is None:
                continue
            if want_domain is not None and item.domain != want_domain:
                continue
            if verdict is not None and item.verdict != verdict:
                continue
            if before is not None and not item.created < before:
                continue
            if after is not None and not item.created > after:
                continue
            if state is not None and item.state != state:
                continue
            items.append(item)
        return items

    def get(self, item_id: str) -> QuarantineItem:
        """The item's metadata; KeyError when there is none, ValueError for a malformed id."""
        item = self._load(self._item_dir(item_id))
        if item is None:
            raise KeyError(item_id)
        return item

    def is_released(self, item_id: str) -> bool:
        """True when the item exists and its state is ``released`` (never raises for a bad id)."""
        if not valid_item_id(item_id):
            return False
        try:
            return self._read_state(item_id).get("state") == RELEASED
        except (OSError, ValueError):
            return False

    def read_message(self, item_id: str) -> bytes:
        """The original message bytes; KeyError when there is no such item."""
        try:
            return (self._item_dir(item_id) / MESSAGE_FILE).read_bytes()
        except FileNotFoundError:
            raise KeyError(item_id) from None

    # ---------------------------------------------------------------- locking
    def _lock(self, item_id: str, blocking: bool = True) -> int | None:
        """An fd holding the item's exclusive lock, or None (no such item / busy when not blocking)."""
        d = self._item_dir(item_id)
        try:
            fd = os.open(d / LOCK_FILE, os.O_RDWR)
        except FileNotFoundError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
            # the item may have been deleted (moved away) while we waited for the lock
            st = os.stat(d / LOCK_FILE)
            if st.st_ino != os.fstat(fd).st_ino:
                raise FileNotFoundError
        except (BlockingIOError, FileNotFoundError):
            os.close(fd)
            return None
        except BaseException:
            os.close(fd)
            raise
        return fd

    def _write_state(self, item_id: str, **state: Any) -> None:
        _replace_file(self._item_dir(item_id) / STATE_FILE, json.dumps(state).encode("utf-8"))

    def _read_state(self, item_id: str) -> dict[str, Any]:
        return json.loads((self._item_dir(item_id) / STATE_FILE).read_bytes())

    # ---------------------------------------------------------------- delete / expire
    def _remove_locked(self, item_id: str) -> None:
        grave = self.tmp_dir / f"{item_id}.{secrets.token_hex(4)}.del"
        os.rename(self._item_dir(item_id), grave)
        _fsync_dir(self.items_dir)
        shutil.rmtree(grave, ignore_errors=True)

    def delete(self, item_id: str, blocking: bool = True) -> bool:
        """Remove an item; False when there is none (or it is busy and ``blocking`` is False)."""
        fd = self._lock(item_id, blocking)
        if fd is None:
            return False
        try:
            self._ensure()
            self._remove_locked(item_id)
        finally:
            os.close(fd)
        log.info("quarantine item %s deleted", item_id)
        return True

    def expire(
        self,
        retention_days: float,
        domain: str | None = None,
        now: float | None = None,
        retention_for: Callable[[str], float] | None = None,
    ) -> int:
        """Delete items created more than ``retention_days`` ago (of one domain, or all).

        ``retention_for(domain)``, when given, overrides the retention per item's
        domain (for example ``lambda d: policies.for_domain(d).quarantine.retention_days``).
        Items being released are skipped.  Also removes stale half-written items
        from ``tmp/``.  Returns how many items were deleted.
        """
        now = time.time() if now is None else now
        count = 0
        for item in self.list(domain=domain):
            days = retention_for(item.domain) if retention_for is not None else retention_days
            if item.created < now - days * 86400.0 and self.delete(item.id, blocking=False):
                count += 1
        self.clean_tmp(now=now)
        return count

    def clean_tmp(self, max_age_s: float = STALE_TMP_S, now: float | None = None) -> int:
        """Remove leftovers in ``tmp/`` (crashed writes, interrupted deletes) older than ``max_age_s``."""
        now = time.time() if now is None else now
        removed = 0
        try:
            entries = list(os.scandir(self.tmp_dir))
        except FileNotFoundError:
            return 0
        for e in entries:
            try:
                if now - e.stat(follow_symlinks=False).st_mtime < max_age_s:
                    continue
                if e.is_dir(follow_symlinks=False):
                    shutil.rmtree(e.path, ignore_errors=True)
                else:
                    os.unlink(e.path)
                removed += 1
            except OSError as exc:
                log.warning("cannot remove %s: %s", e.path, exc)
        return removed

    # ---------------------------------------------------------------- release
    def release(self, item_id: str, deliver: Deliver, key: bytes, force: bool = False,
                recipients: Sequence[str] | None = None) -> ReleaseResult:
        """Deliver the message once, with the release header; see the module docstring.

        ``deliver(raw_with_header, sender, recipients)`` must raise on failure.

        ``recipients`` (like ``amavisd-release mail_id alt_recip``) delivers a copy to those
        addresses only, original recipients or not; unless they are all of the original
        recipients, the item stays quarantined for the others (and may be released again).
        """
        fd = self._lock(item_id)
        if fd is None:
            return ReleaseResult(item_id, ST_NOT_FOUND, False, "no such item")
        try:
            state = self._read_state(item_id)
            attempts = int(state.get("attempts", 0))
            if recipients is not None:
                item = self.get(item_id)
                chosen = list(dict.fromkeys(recipients))
                if not chosen:
                    return ReleaseResult(item_id, ST_FAILED, False, "no recipient given")
                if {r.lower() for r in chosen} != {r.lower() for r in item.recipients}:
                    return self._copy_to(item, key, deliver, chosen, state)
            if state.get("state") == RELEASED:
                return ReleaseResult(item_id, ST_ALREADY, False, "already released")
            if state.get("state") == RELEASING and not force:
                return ReleaseResult(
                    item_id,
                    ST_INTERRUPTED,
                    False,
                    "an earlier release was interrupted during delivery; it may have been delivered (use force)",
                )
            item = self.get(item_id)
            raw = self.read_message(item_id)
            token = make_token(key, item_id, message_body_sha256(raw))
            out = add_release_header(raw, token)
            self._write_state(item_id, state=RELEASING, attempts=attempts + 1, released_at=None, last_error="")
            try:
                deliver(out, item.sender, list(item.recipients))
            except PartialDelivery as exc:
                msg = str(exc)[:MAX_ERROR]
                self._write_state(item_id, state=RELEASED, attempts=attempts + 1, released_at=time.time(), last_error=msg)
                log.warning("quarantine item %s released with %s", item_id, msg)
                return ReleaseResult(item_id, ST_RELEASED, True, f"released; {msg}")
            except Exception as exc:  # any delivery failure rolls back
                msg = f"{type(exc).__name__}: {exc}"[:MAX_ERROR]
                self._write_state(item_id, state=QUARANTINED, attempts=attempts + 1, released_at=None, last_error=msg)
                log.warning("quarantine item %s: release failed: %s", item_id, msg)
                return ReleaseResult(item_id, ST_FAILED, False, f"delivery failed: {msg}")
            self._write_state(item_id, state=RELEASED, attempts=attempts + 1, released_at=time.time(), last_error="")
            log.info("quarantine item %s released to %d recipients", item_id, len(item.recipients))
            return ReleaseResult(item_id, ST_RELEASED, True, "released")
        finally:
            os.close(fd)


    def _copy_to(self, item: QuarantineItem, key: bytes, deliver: Deliver, chosen: list[str],
                 state: dict[str, Any]) -> ReleaseResult:
        """A released copy to ``chosen`` only; the item's state stays what it was (caller holds the lock).

        While the copy is being delivered the state is ``releasing`` (the milter accepts the release
        token only then or once released), and goes back afterwards; a crash in between leaves
        ``releasing``, which a later release treats as interrupted (``--force``), never as released.
        """
        raw = self.read_message(item.id)
        out = add_release_header(raw, make_token(key, item.id, message_body_sha256(raw)))
        self._write_state(item.id, **{**state, "state": RELEASING})
        try:
            deliver(out, item.sender, chosen)
        except PartialDelivery as exc:
            msg = str(exc)[:MAX_ERROR]
            log.warning("quarantine item %s: copy to %s delivered with %s", item.id, ", ".join(chosen), msg)
            return ReleaseResult(item.id, ST_RELEASED, True, f"copy to {len(chosen)} address(es); {msg}")
        except Exception as exc:
            msg = f"{type(exc).__name__}: {exc}"[:MAX_ERROR]
            log.warning("quarantine item %s: copy to %s failed: %s", item.id, ", ".join(chosen), msg)
            return ReleaseResult(item.id, ST_FAILED, False, f"delivery failed: {msg}")
        finally:
            self._write_state(item.id, **state)
        log.info("quarantine item %s: copy released to %s", item.id, ", ".join(chosen))
        left = "still quarantined for the others" if state.get("state") != RELEASED else "already released to all"
        return ReleaseResult(item.id, ST_RELEASED, True, f"copy released to {', '.join(chosen)}; {left}")


def release_audited(store: QuarantineStore, audit: Any, deliver: Deliver, key: bytes, item_id: str,
                    recipients: Sequence[str] | None, who: str, force: bool = False) -> ReleaseResult:
    """:meth:`QuarantineStore.release` plus its entry in the audit log (mailvm.audit): who released
    what to whom, and how it went.  One function for ``mvctl`` and the web console."""
    result = store.release(item_id, deliver, key, force=force, recipients=recipients)
    target = f"to {', '.join(recipients)}" if recipients else "to all original recipients"
    audit.record(who, "release", item_id, f"{target}: {result.status} ({result.message})"[:480],
                 ok=result.delivered)
    return result


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# --------------------------------------------------------------------------------------
# Delivery and notification
# --------------------------------------------------------------------------------------

_EOL = re.compile(rb"\r?\n")


def to_crlf(raw: bytes) -> bytes:
    """Every line ending as CRLF (what SMTP requires; bare LF may be refused by the MTA)."""
    return _EOL.sub(b"\r\n", raw)


def smtp_deliver(host: str = "127.0.0.1", port: int = 25, timeout: float = 60.0) -> Deliver:
    """A deliver function that sends through the MTA at ``host:port`` with SMTP.

    Raises smtplib/OSError exceptions on failure (nothing was delivered) and
    :class:`PartialDelivery` when only some recipients were refused.
    """

    def deliver(raw: bytes, sender: str, recipients: list[str]) -> None:
        data = to_crlf(raw)
        mail_opts: list[str] = []
        if not all(a.isascii() for a in [sender, *recipients]):
            mail_opts.append("SMTPUTF8")
        with smtplib.SMTP(host, port, timeout=timeout) as smtp:
            smtp.ehlo_or_helo_if_needed()
            if not data.isascii() and smtp.has_extn("8bitmime"):
                mail_opts.append("BODY=8BITMIME")
            refused = smtp.sendmail(sender, recipients, data, mail_options=mail_opts)
        if refused:
            raise PartialDelivery({k: list(v) if isinstance(v, tuple) else v for k, v in refused.items()})

    return deliver


__all__ = [
    "PartialDelivery",
    "QuarantineItem",
    "QuarantineStore",
    "ReleaseResult",
    "release_audited",
    "smtp_deliver",
    "to_crlf",
]
