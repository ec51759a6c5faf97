"""The scanned table: sha256 -> verdict, shared by every mailvm process on one host.

A file seen before costs one lookup here; a file never seen is *claimed*
atomically so that, when it arrives in fifty messages at once, exactly one
claimer analyses it and the other forty-nine wait for its verdict (single
flight).  Built on :mod:`diskcache` (SQLite), so it is shared by threads and by
processes on one host.

Entries (values are JSON text, never pickles of classes, so that an upgrade
cannot make the table unreadable):

* **done**: ``Verdict.to_dict()`` plus ``stored_at``.  It is served while it is
  *fresh*: younger than ``verdict_ttl_s`` (measured from the earlier of
  ``analyzed_at`` and ``stored_at``) and produced by this table's
  ``engine_version``.  Otherwise it counts as a miss and may be re-claimed.
* **pending**: a placeholder ``Verdict(state="pending", verdict="error")`` plus
  ``owner`` and ``claimed_at``.  It is *live* for ``pending_ttl_s`` after the
  claim or the owner's last :meth:`ScanTable.refresh`; after that it is *stale*
  (the claimer crashed) and the next :meth:`ScanTable.claim` replaces it.  A
  pending entry is live whatever engine version made it: someone is working on
  the file, and a result of another version is re-analysed when it arrives.

Atomicity: the miss case is one ``Cache.add`` (insert-if-absent in one SQLite
transaction); every read-decide-write on an existing entry (replace a stale
claim, release, refresh, drop a corrupt value) runs inside ``Cache.transact()``
(``BEGIN IMMEDIATE``), so concurrent claimers in any process serialise.

Waiting: :meth:`ScanTable.wait` polls the table with a backoff from 5 ms to
100 ms (the only signal that crosses processes); within a process a per-key
condition wakes waiters at once on publish/release/forget, and waiters of the
same key share one poll, so the database load grows with the number of keys
waited on, not with the number of waiters.

Counters (hits, misses, claims won/lost...) are summed in memory and added to
one counters entry in the cache at most once a second (and on :meth:`stats`
and :meth:`close`), so all processes see the same totals without a write on
every lookup; a process that dies loses at most its last second of counts.

A busy database (another process holding the write lock longer than the
timeout, 5 s) or an SQLite error raises :class:`ScanTableError`; a value that
cannot be decoded is logged, dropped and treated as a miss.
"""

from __future__ import annotations

import collections
import json
import logging
import math
import os
import re
import sqlite3
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import diskcache

from mailvm.config import ScanTableConfig
from mailvm.procfs import is_gone
from mailvm.verdict import DONE, ENGINE_VERSION, ERROR, PENDING, VERDICTS, Verdict
from mailvm.wakebus import WakeBus

log = logging.getLogger(__name__)

#: SQLite busy timeout: how long an operation waits for another writer
DB_TIMEOUT_S = 5.0
#: wait() polling backoff, cross-process, where the wake bus cannot be used
POLL_MIN_S = 0.005
POLL_MAX_S = 0.1
#: with the wake bus (mailvm.wakebus) a waiter re-reads on this timer only as a safety net
BUS_FALLBACK_S = 1.0
#: shared counters are written at most this often per process
COUNTER_FLUSH_S = 1.0
#: the one non-sha256 key of the table
COUNTERS_KEY = "mailvm:counters"
MAX_OWNER = 200
#: shortest diskcache-level expiry given to a stored verdict
MIN_DISKCACHE_EXPIRE_S = 60.0
#: a stored verdict is cut down (log dropped, then findings) above this size
MAX_VALUE_BYTES = 1024 * 1024
MAX_STORED_FINDINGS = 200

_SHA256_RE = re.compile(r"[0-9a-f]{64}")

# classification of a stored value
_MISSING = "missing"  # no entry
_DONE = "done"  # fresh verdict of this engine version
_LIVE = "pending"  # pending claim within its lease
_STALE = "stale"  # pending claim past pending_ttl_s
_EXPIRED = "expired"  # verdict older than verdict_ttl_s
_OTHER_VERSION = "other_version"  # verdict of another engine version
_CORRUPT = "corrupt"  # undecodable value
#: states a claim may take over
_REPLACEABLE = (_MISSING, _STALE, _EXPIRED, _OTHER_VERSION, _CORRUPT)

COUNTER_NAMES = (
    "hits",
    "misses",
    "pending_hits",
    "claims_won",
    "claims_lost",
    "claims_replaced",
    "published",
    "released",
    "refreshed",
    "forgotten",
    "expired_removed",
    "corrupt_dropped",
)


class ScanTableError(RuntimeError):
    """The scanned table could not be used (database busy past the timeout, SQLite error)."""


@dataclass
class Claim:
    """What :meth:`ScanTable.claim` returns.

    ``won``: the caller must analyse the file and :meth:`~ScanTable.publish` (or
    :meth:`~ScanTable.release`).  Otherwise ``entry`` is the current entry: a
    done verdict to use, or a pending one to :meth:`~ScanTable.wait` for.
    """

    won: bool
    entry: Verdict | None = None


@dataclass
class _Entry:
    """A stored value after decoding and classification."""

    status: str
    verdict: Verdict | None = None
    record: dict[str, Any] | None = None
    problem: str = ""


@dataclass
class _Watch:
    """In-process state shared by the waiters of one key."""

    cond: threading.Condition
    waiters: int = 0
    generation: int = 0  # bumped by this process's publish/release/forget
    polled_gen: int = -1  # generation current when the last poll started
    polled_at: float = -math.inf  # monotonic time of the last poll
    observed: _Entry | None = None


def check_key(sha256: Any) -> str:
    """Return ``sha256`` if it is 64 lower-case hex characters, else raise ValueError."""
    if not isinstance(sha256, str) or not _SHA256_RE.fullmatch(sha256):
        raise ValueError(f"scanned table key must be a lower-case hex sha256, got {sha256!r:.80}")
    return sha256


def owner_is_dead(owner: str) -> bool:
    """True for an owner ``"<this host>:<pid>:..."`` whose process no longer exists.

    Claims name their owner ``node:pid:...`` (see :class:`mailvm.scan.Scanner`); when
    that process died on this host (a killed ``mailvm serve``), its claims are
    stale at once rather than after ``pending_ttl_s``: a restarted service
    re-claims and re-queues the file immediately.  Owners in other formats, or
    from other hosts, only go stale by age.
    """
    node, _, rest = owner.partition(":")
    pid_text = rest.split(":", 1)[0]
    if node != os.uname().nodename or not pid_text.isdigit():
        return False
    # a killed process whose parent died too stays a zombie until init reaps it
    return is_gone(int(pid_text))


def _check_owner(owner: Any) -> str:
    if not isinstance(owner, str) or not owner or len(owner) > MAX_OWNER:
        raise ValueError(f"claim owner must be a non-empty string of at most {MAX_OWNER} characters")
    return owner


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


class ScanTable:
    """The scanned table on a diskcache directory; one object may be shared by many threads."""

    def __init__(
        self,
        cfg: ScanTableConfig,
        engine_version: str = ENGINE_VERSION,
        *,
        timeout_s: float = DB_TIMEOUT_S,
    ) -> None:
        self.cfg = cfg
        self.path = str(cfg.path)
        self.engine_version = engine_version
        self.timeout_s = timeout_s
        self._lock = threading.Lock()
        self._watches: dict[str, _Watch] = {}
        self._counts: collections.Counter[str] = collections.Counter()
        self._last_flush = time.monotonic()
        #: wake-ups between the processes sharing this table (publish in the pool, wait in a worker)
        self._bus = WakeBus(Path(self.path) / "wake")
        try:
            self._cache = diskcache.Cache(
                self.path,
                timeout=timeout_s,
                size_limit=int(cfg.size_limit_bytes),
                eviction_policy="least-recently-stored",
            )
        except (diskcache.Timeout, sqlite3.Error, OSError) as exc:
            raise ScanTableError(f"scanned table {self.path}: cannot open: {exc!r}") from exc

    # ------------------------------------------------------------------ plumbing

    @contextmanager
    def _db(self, what: str) -> Iterator[None]:
        """Turn diskcache/SQLite failures into ScanTableError naming the operation."""
        try:
            yield
        except diskcache.Timeout as exc:
            raise ScanTableError(
                f"scanned table {self.path}: {what}: database busy for more than {self.timeout_s:g} s"
            ) from exc
        except (sqlite3.Error, OSError) as exc:
            raise ScanTableError(f"scanned table {self.path}: {what}: {exc!r}") from exc

    def _read(self, key: str, now: float) -> _Entry:
        """Read and classify one key (inside or outside a transaction)."""
        try:
            raw = self._cache.get(key, default=None)
        except (diskcache.Timeout, sqlite3.Error):
            raise
        except Exception as exc:  # noqa: BLE001 - an undecodable stored value is data, not a crash
            return _Entry(_CORRUPT, problem=f"undecodable value: {exc!r:.200}")
        if raw is None:
            return _Entry(_MISSING)
        return self._classify(raw, now)

    def _classify(self, raw: Any, now: float) -> _Entry:
        if not isinstance(raw, str):
            return _Entry(_CORRUPT, problem=f"value is {type(raw).__name__}, not JSON text")
        try:
            record = json.loads(raw)
            verdict = Verdict.from_dict(record)
        except (ValueError, TypeError, RecursionError) as exc:
            return _Entry(_CORRUPT, problem=f"{exc!s:.200}")
        if verdict.state == PENDING:
            claimed_at = _number(record.get("claimed_at"))
            owner = record.get("owner")
            if claimed_at is None or not isinstance(owner, str) or not owner:
                return _Entry(_CORRUPT, problem="pending entry without owner/claimed_at")
            ttl = self.cfg.pending_ttl_s
            # a claim from the far future (clock stepped back) must not block the file for ever
            stale = now - claimed_at > ttl or claimed_at - now > ttl or owner_is_dead(owner)
            return _Entry(_STALE if stale else _LIVE, verdict, record)
        if verdict.engine_version != self.engine_version:
            return _Entry(_OTHER_VERSION, verdict, record)
        stored_at = _number(record.get("stored_at"))
        born = verdict.analyzed_at if stored_at is None else min(verdict.analyzed_at, stored_at)
        if now - born > self.ttl_for(verdict):
            return _Entry(_EXPIRED, verdict, record)
        return _Entry(_DONE, verdict, record)

    def ttl_for(self, verdict: Verdict) -> float:
        """How long a done verdict stays fresh: errors (a passing VM fault) much shorter."""
        if verdict.verdict == ERROR:
            return min(self.cfg.error_ttl_s, self.cfg.verdict_ttl_s)
        return self.cfg.verdict_ttl_s

    def _drop_corrupt(self, key: str, entry: _Entry) -> None:
        log.warning("scanned table %s: dropping corrupt entry %s: %s", self.path, key, entry.problem)
        with self._db("drop corrupt entry"), self._cache.transact():
            if self._read(key, time.time()).status == _CORRUPT:
                self._cache.delete(key)
        self._count("corrupt_dropped")

    def _count(self, name: str, n: int = 1) -> None:
        with self._lock:
            self._counts[name] += n
            due = time.monotonic() - self._last_flush >= COUNTER_FLUSH_S
        if due:
            self._flush_counters(quiet=True)

    def _flush_counters(self, quiet: bool) -> None:
        with self._lock:
            deltas = dict(self._counts)
            self._counts.clear()
            self._last_flush = time.monotonic()
        if not deltas:
            return
        try:
            with self._db("flush counters"), self._cache.transact():
                totals = self._read_counters()
                for name, n in deltas.items():
                    totals[name] = totals.get(name, 0) + n
                self._cache.set(COUNTERS_KEY, json.dumps(totals))
        except ScanTableError:
            with self._lock:
                self._counts.update(deltas)  # keep them for the next flush
            if not quiet:
                raise
            log.warning("scanned table %s: could not write counters, will retry", self.path, exc_info=True)

    def _read_counters(self) -> dict[str, int]:
        try:
            data = json.loads(self._cache.get(COUNTERS_KEY, default="{}"))
        except (diskcache.Timeout, sqlite3.Error):
            raise
        except Exception:  # noqa: BLE001 - corrupt counters restart from zero
            log.warning("scanned table %s: counters entry unreadable, restarting from zero", self.path)
            return {}
        if not isinstance(data, dict):
            return {}
        return {k: v for k, v in data.items() if isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool)}

    def _changed(self, key: str) -> None:
        """``key`` changed: wake its waiters here and in every other process sharing the table."""
        self._notify(key)
        self._bus.notify(key)

    def _notify(self, key: str) -> None:
        """Wake this process's waiters of ``key`` so they look again at once."""
        with self._lock:
            watch = self._watches.get(key)
            if watch is not None:
                watch.generation += 1
                watch.cond.notify_all()

    def _pending_record(self, owner: str, now: float) -> dict[str, Any]:
        placeholder = Verdict(
            state=PENDING, verdict=ERROR, score=0, engine_version=self.engine_version, analyzed_at=now, source="pending"
        )
        record = placeholder.to_dict()
        record["owner"] = owner
        record["claimed_at"] = now
        return record

    # ------------------------------------------------------------------ lookups

    def get(self, sha256: str) -> Verdict | None:
        """A fresh done verdict, a live pending entry, or None (miss, expired, stale, other version)."""
        key = check_key(sha256)
        with self._db("get"):
            entry = self._read(key, time.time())
        if entry.status == _CORRUPT:
            self._drop_corrupt(key, entry)
        if entry.status == _DONE:
            self._count("hits")
            return entry.verdict
        if entry.status == _LIVE:
            self._count("pending_hits")
            return entry.verdict
        self._count("misses")
        return None

    def claim(self, sha256: str, owner: str) -> Claim:
        """Claim ``sha256`` for analysis; of all concurrent claimers exactly one wins.

        ``owner`` must be unique per claimer (e.g. ``host:pid:thread:n``); a second
        claim by the same owner while its claim is live loses like any other.
        """
        key = check_key(sha256)
        owner = _check_owner(owner)
        with self._db("claim"):
            if self._cache.add(key, json.dumps(self._pending_record(owner, time.time()))):
                self._count("claims_won")
                return Claim(True, None)
            with self._cache.transact():
                now = time.time()
                entry = self._read(key, now)
                if entry.status not in _REPLACEABLE:
                    won = False
                else:
                    self._cache.set(key, json.dumps(self._pending_record(owner, now)))
                    won = True
        if not won:
            self._count("claims_lost")
            return Claim(False, entry.verdict)
        if entry.status != _MISSING:
            self._count("claims_replaced")
            if entry.status == _STALE:
                assert entry.record is not None
                log.warning(
                    "scanned table: claim on %s by %r went stale (claimed %.0f s ago); re-claimed by %r",
                    key,
                    entry.record.get("owner"),
                    time.time() - entry.record["claimed_at"],
                    owner,
                )
            elif entry.status == _CORRUPT:
                log.warning("scanned table %s: replaced corrupt entry %s: %s", self.path, key, entry.problem)
        self._count("claims_won")
        return Claim(True, None)

    def publish(self, sha256: str, verdict: Verdict) -> None:
        """Store ``verdict`` (state done) for ``sha256`` and wake everyone waiting for it."""
        key = check_key(sha256)
        if not isinstance(verdict, Verdict):
            raise ValueError(f"publish needs a Verdict, got {type(verdict).__name__}")
        if verdict.state != DONE:
            raise ValueError(f"publish needs a done verdict, got state {verdict.state!r}")
        record = verdict.to_dict()
        Verdict.from_dict(record)  # raises ValueError: never store what cannot be read back
        now = time.time()
        record["stored_at"] = now
        blob = self._bounded_json(key, record)
        born = min(verdict.analyzed_at, now)
        # diskcache drops it by itself once expired (culling on writes); expire() does the rest.
        # The floor keeps an already-expired verdict visible to stats/expire() for a while.
        expire = max(MIN_DISKCACHE_EXPIRE_S, born + self.ttl_for(verdict) - now)
        with self._db("publish"):
            self._cache.set(key, blob, expire=expire)
        self._count("published")
        self._changed(key)

    def _bounded_json(self, key: str, record: dict[str, Any]) -> str:
        blob = json.dumps(record)
        if len(blob) <= MAX_VALUE_BYTES:
            return blob
        log.warning("scanned table: verdict for %s is %d bytes; dropping its behaviour log", key, len(blob))
        record["log"] = []
        blob = json.dumps(record)
        if len(blob) > MAX_VALUE_BYTES:
            findings = sorted(record["findings"], key=lambda f: -f["severity"])
            record["findings"] = findings[:MAX_STORED_FINDINGS]
            blob = json.dumps(record)
        return blob

    def release(self, sha256: str, owner: str) -> None:
        """Give up ``owner``'s claim on ``sha256`` (no-op if someone else holds the entry)."""
        key = check_key(sha256)
        owner = _check_owner(owner)
        with self._db("release"), self._cache.transact():
            entry = self._read(key, time.time())
            mine = entry.status in (_LIVE, _STALE) and entry.record is not None and entry.record.get("owner") == owner
            if mine:
                self._cache.delete(key)
        if mine:
            self._count("released")
            self._changed(key)
        else:
            log.debug("scanned table: release of %s by %r ignored (status %s)", key, owner, entry.status)

    def refresh(self, sha256: str, owner: str) -> bool:
        """Extend ``owner``'s pending claim by another ``pending_ttl_s``; False if no longer the owner."""
        key = check_key(sha256)
        owner = _check_owner(owner)
        with self._db("refresh"), self._cache.transact():
            now = time.time()
            entry = self._read(key, now)
            record = entry.record
            mine = entry.status in (_LIVE, _STALE) and record is not None and record.get("owner") == owner
            if mine:
                assert record is not None
                record["claimed_at"] = now
                record["analyzed_at"] = now
                self._cache.set(key, json.dumps(record))
        if mine:
            self._count("refreshed")
        return mine

    def take_over(self, sha256: str, expected_owner: str, owner: str) -> Claim:
        """Hand a queued job's claim to the process that will run it (the pool service), atomically.

        The claim is moved to ``owner`` when it is still ``expected_owner``'s (live or stale),
        or when nobody holds it any more (missing, stale, expired); from then on the claim
        lives and dies with ``owner``: when that process dies the claim is stale at once
        (:func:`owner_is_dead`), so the job it held is handed back to the next claimer
        without waiting for ``pending_ttl_s``.  Not won: ``entry`` is a fresh done verdict
        (the job need not run) or another owner's live claim (that owner queued its own job).
        """
        key = check_key(sha256)
        expected_owner, owner = _check_owner(expected_owner), _check_owner(owner)
        with self._db("take over"), self._cache.transact():
            now = time.time()
            entry = self._read(key, now)
            mine = entry.status in (_LIVE, _STALE) and (entry.record or {}).get("owner") == expected_owner
            won = mine or entry.status in _REPLACEABLE
            if won:
                self._cache.set(key, json.dumps(self._pending_record(owner, now)))
        if entry.status == _CORRUPT:
            log.warning("scanned table %s: replaced corrupt entry %s: %s", self.path, key, entry.problem)
        self._count("claims_won" if won else "claims_lost")
        return Claim(True, None) if won else Claim(False, entry.verdict)

    def wait(self, sha256: str, deadline: float) -> Verdict | None:
        """Wait until ``sha256`` has a done verdict, or ``deadline`` (``time.monotonic()``) passes.

        Returns None at the deadline, and early when there is nothing left to
        wait for (the claim went stale, was released, or the entry vanished or
        expired): the caller may then claim the file itself.
        """
        key = check_key(sha256)
        # listening before the first read: a publish after it wakes this waiter at once
        bus = self._bus.listen(self._notify)
        delay = BUS_FALLBACK_S if bus else POLL_MIN_S
        with self._lock:
            watch = self._watches.get(key)
            if watch is None:
                watch = self._watches[key] = _Watch(threading.Condition(self._lock))
            watch.waiters += 1
        try:
            while True:
                with self._lock:
                    gen = watch.generation
                    shared = (
                        watch.observed
                        if watch.polled_gen == gen and time.monotonic() - watch.polled_at < delay
                        else None
                    )
                entry = shared
                if entry is None:
                    with self._db("wait"):
                        entry = self._read(key, time.time())
                    with self._lock:
                        if gen >= watch.polled_gen:
                            watch.observed, watch.polled_gen, watch.polled_at = entry, gen, time.monotonic()
                        if entry.status != _LIVE:
                            watch.cond.notify_all()  # the other waiters can stop as well
                if entry.status == _DONE:
                    return entry.verdict
                if entry.status != _LIVE:
                    return None
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                with self._lock:
                    if watch.generation == gen:
                        watch.cond.wait(min(delay, remaining))
                    woken = watch.generation != gen
                if not bus:
                    delay = POLL_MIN_S if woken else min(delay * 2, POLL_MAX_S)
        finally:
            with self._lock:
                watch.waiters -= 1
                if watch.waiters == 0 and self._watches.get(key) is watch:
                    del self._watches[key]

    def forget(self, sha256: str) -> bool:
        """Remove the entry for ``sha256`` whatever its state; True if there was one."""
        key = check_key(sha256)
        with self._db("forget"):
            removed = bool(self._cache.delete(key))
        if removed:
            self._count("forgotten")
            self._changed(key)
        return removed

    # ------------------------------------------------------------------ maintenance

    def _keys(self) -> Iterator[str]:
        """Every sha256 key (lazily, in batches; tolerant of concurrent writes)."""
        with self._db("iterate"):
            for key in self._cache.iterkeys():
                if isinstance(key, str) and _SHA256_RE.fullmatch(key):
                    yield key

    def iter_entries(self, include_expired: bool = False) -> Iterator[tuple[str, Verdict]]:
        """Yield ``(sha256, verdict)`` for live entries (all decodable ones with ``include_expired``)."""
        for key in self._keys():
            with self._db("iterate"):
                entry = self._read(key, time.time())
            if entry.verdict is None:
                continue
            if include_expired or entry.status in (_DONE, _LIVE):
                yield key, entry.verdict

    def expire(self) -> int:
        """Remove stale claims, expired or other-version verdicts and corrupt values; return the count."""
        with self._db("expire"):
            removed = int(self._cache.expire())
        for key in self._keys():
            with self._db("expire"):
                if self._read(key, time.time()).status not in (_MISSING, _DONE, _LIVE):
                    with self._cache.transact():  # re-check under the lock: it may just have been re-claimed
                        if self._read(key, time.time()).status not in (_MISSING, _DONE, _LIVE):
                            self._cache.delete(key)
                            removed += 1
                            self._changed(key)
        if removed:
            self._count("expired_removed", removed)
            log.info("scanned table %s: expired %d entries", self.path, removed)
        return removed

    def stats(self) -> dict[str, Any]:
        """Entry counts (a full scan), the counters of all processes, size on disk.

        Keys: ``path engine_version entries done pending stale expired corrupt
        by_verdict size_bytes size_limit_bytes`` and every name of
        :data:`COUNTER_NAMES` (``hits misses pending_hits claims_won claims_lost``...).
        """
        self._flush_counters(quiet=False)
        by_status: collections.Counter[str] = collections.Counter()
        by_verdict: collections.Counter[str] = collections.Counter({v: 0 for v in VERDICTS})
        now = time.time()
        for key in self._keys():
            with self._db("stats"):
                entry = self._read(key, now)
            by_status[entry.status] += 1
            if entry.status == _DONE and entry.verdict is not None:
                by_verdict[entry.verdict.verdict] += 1
        with self._db("stats"):
            counters = self._read_counters()
            volume = int(self._cache.volume())
        result: dict[str, Any] = {
            "path": self.path,
            "engine_version": self.engine_version,
            "entries": sum(n for s, n in by_status.items() if s != _MISSING),
            "done": by_status[_DONE],
            "pending": by_status[_LIVE],
            "stale": by_status[_STALE],
            "expired": by_status[_EXPIRED] + by_status[_OTHER_VERSION],
            "corrupt": by_status[_CORRUPT],
            "by_verdict": dict(by_verdict),
            "size_bytes": volume,
            "size_limit_bytes": int(self.cfg.size_limit_bytes),
        }
        result.update({name: counters.get(name, 0) for name in COUNTER_NAMES})
        return result

    def close(self) -> None:
        """Write pending counters and close this thread's database connection."""
        try:
            self._flush_counters(quiet=True)
        finally:
            self._bus.close()
            self._cache.close()

    def __enter__(self) -> "ScanTable":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


__all__ = ["Claim", "ScanTable", "ScanTableError", "check_key", "COUNTER_NAMES"]
