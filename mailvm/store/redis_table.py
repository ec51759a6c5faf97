"""The scanned table on Redis: the same interface as :class:`mailvm.scantable.ScanTable`,
shared by every MX host and every pool host that points at one Redis.

Layout (``P`` is the key prefix, ``mailvm:`` by default):

* ``P v:<sha256>``: the entry, the same JSON record as the local table (a done
  verdict plus ``stored_at``, or a pending placeholder with ``owner`` and
  ``claimed_at``).  A done verdict carries a Redis TTL of its freshness
  (``verdict_ttl_s``, ``error_ttl_s`` for errors); a pending claim a TTL of
  ``pending_ttl_s``, renewed by :meth:`refresh`: a claimer that dies simply lets
  its claim expire, and a claim whose owner process is gone *on this host* is
  replaced at once (as in the local table).
* ``P ch:<sha256>``: a pub/sub channel; publish, release and forget send one
  message there, so waiters block in ``SUBSCRIBE`` instead of polling.
* ``P counters``: a hash of the shared counters (``HINCRBY``, batched per second).

Atomicity: a miss is claimed with ``SET NX PX`` (one command).  Replacing an
entry that exists but does not count (expired, another engine version, a dead
owner's claim, an undecodable value), releasing and refreshing are
compare-and-set transactions (``WATCH``/``MULTI``) on the entry, so concurrent
claimers on any host serialise and exactly one wins.
"""

from __future__ import annotations

import collections
import json
import logging
import threading
import time
from typing import Any, Iterator

from mailvm.config import ScanTableConfig
from mailvm.scantable import (
    COUNTER_NAMES,
    MAX_STORED_FINDINGS,
    MAX_VALUE_BYTES,
    Claim,
    ScanTableError,
    _check_owner,
    check_key,
    owner_is_dead,
)
from mailvm.verdict import DONE, ENGINE_VERSION, ERROR, PENDING, VERDICTS, Verdict

log = logging.getLogger(__name__)

COUNTER_FLUSH_S = 1.0
#: socket timeout for one command (a waiter's blocking read has its own deadline)
COMMAND_TIMEOUT_S = 5.0
#: how long a waiter blocks before it re-reads the entry (a claim whose owner died without a word)
REREAD_S = 5.0

_MISSING, _DONE, _LIVE, _STALE, _EXPIRED, _OTHER, _CORRUPT = (
    "missing", "done", "pending", "stale", "expired", "other_version", "corrupt")
_REPLACEABLE = (_MISSING, _STALE, _EXPIRED, _OTHER, _CORRUPT)


def connect(url: str):
    """A Redis client for ``redis://host:port/db`` (``rediss://`` for TLS, ``unix:///path``)."""
    import redis

    return redis.Redis.from_url(url, socket_timeout=COMMAND_TIMEOUT_S, socket_connect_timeout=COMMAND_TIMEOUT_S,
                                health_check_interval=30)


class RedisScanTable:
    """The scanned table on Redis; one object may be shared by many threads."""

    def __init__(self, cfg: ScanTableConfig, url: str, engine_version: str = ENGINE_VERSION,
                 prefix: str = "mailvm:", client: Any = None) -> None:
        import redis

        self.cfg = cfg
        self.url = url
        self.path = url  # what logs and stats call the table
        self.engine_version = engine_version
        self.prefix = prefix
        self._redis_errors = (redis.RedisError, OSError)
        self._watch_error = redis.WatchError
        self.r = client if client is not None else connect(url)
        self._lock = threading.Lock()
        self._counts: collections.Counter[str] = collections.Counter()
        self._last_flush = time.monotonic()

    # ------------------------------------------------------------------ plumbing
    def _key(self, sha: str) -> str:
        return f"{self.prefix}v:{sha}"

    def _channel(self, sha: str) -> str:
        return f"{self.prefix}ch:{sha}"

    def _fail(self, what: str, exc: BaseException) -> ScanTableError:
        return ScanTableError(f"scanned table {self.url}: {what}: {exc!r}")

    def _classify(self, raw: Any, now: float) -> tuple[str, Verdict | None, dict | None]:
        if raw is None:
            return _MISSING, None, None
        try:
            record = json.loads(raw)
            verdict = Verdict.from_dict(record)
        except (ValueError, TypeError, RecursionError):
            return _CORRUPT, None, None
        if verdict.state == PENDING:
            owner = record.get("owner")
            if not isinstance(owner, str) or not owner:
                return _CORRUPT, None, None
            return (_STALE if owner_is_dead(owner) else _LIVE), verdict, record
        if verdict.engine_version != self.engine_version:
            return _OTHER, verdict, record
        stored_at = record.get("stored_at")
        born = verdict.analyzed_at if not isinstance(stored_at, (int, float)) else min(verdict.analyzed_at, stored_at)
        if now - born > self.ttl_for(verdict):
            return _EXPIRED, verdict, record
        return _DONE, verdict, record

    def ttl_for(self, verdict: Verdict) -> float:
        if verdict.verdict == ERROR:
            return min(self.cfg.error_ttl_s, self.cfg.verdict_ttl_s)
        return self.cfg.verdict_ttl_s

    def _pending(self, owner: str, now: float) -> str:
        placeholder = Verdict(state=PENDING, verdict=ERROR, score=0, engine_version=self.engine_version,
                              analyzed_at=now, source="pending")
        record = placeholder.to_dict()
        record["owner"] = owner
        record["claimed_at"] = now
        return json.dumps(record)

    def _count(self, name: str, n: int = 1) -> None:
        with self._lock:
            self._counts[name] += n
            due = time.monotonic() - self._last_flush >= COUNTER_FLUSH_S
        if due:
            self._flush_counters()

    def _flush_counters(self) -> None:
        with self._lock:
            deltas = dict(self._counts)
            self._counts.clear()
            self._last_flush = time.monotonic()
        if not deltas:
            return
        try:
            pipe = self.r.pipeline(transaction=False)
            for name, n in deltas.items():
                pipe.hincrby(self.prefix + "counters", name, n)
            pipe.execute()
        except self._redis_errors:
            with self._lock:
                self._counts.update(deltas)
            log.warning("scanned table %s: could not write counters, will retry", self.url)

    def _cas(self, sha: str, decide, what: str):
        """Read-decide-write on one entry under WATCH; ``decide(status, verdict, record, pipe)`` queues writes."""
        key = self._key(sha)
        try:
            with self.r.pipeline(transaction=True) as pipe:
                while True:
                    try:
                        pipe.watch(key)
                        status, verdict, record = self._classify(pipe.get(key), time.time())
                        pipe.multi()
                        result = decide(status, verdict, record, pipe)
                        pipe.execute()
                        return status, verdict, record, result
                    except self._watch_error:
                        continue  # someone changed the entry meanwhile: read it again
        except self._redis_errors as exc:
            raise self._fail(what, exc) from exc

    # ------------------------------------------------------------------ lookups
    def get(self, sha256: str) -> Verdict | None:
        sha = check_key(sha256)
        try:
            raw = self.r.get(self._key(sha))
        except self._redis_errors as exc:
            raise self._fail("get", exc) from exc
        status, verdict, _ = self._classify(raw, time.time())
        if status == _DONE:
            self._count("hits")
            return verdict
        if status == _LIVE:
            self._count("pending_hits")
            return verdict
        self._count("misses")
        return None

    def claim(self, sha256: str, owner: str) -> Claim:
        sha = check_key(sha256)
        owner = _check_owner(owner)
        ttl_ms = max(1, int(self.cfg.pending_ttl_s * 1000))
        try:
            if self.r.set(self._key(sha), self._pending(owner, time.time()), nx=True, px=ttl_ms):
                self._count("claims_won")
                return Claim(True, None)
        except self._redis_errors as exc:
            raise self._fail("claim", exc) from exc

        def decide(status, verdict, record, pipe):
            if status in _REPLACEABLE:
                pipe.set(self._key(sha), self._pending(owner, time.time()), px=ttl_ms)
                return True
            return False

        status, verdict, record, won = self._cas(sha, decide, "claim")
        if not won:
            self._count("claims_lost")
            return Claim(False, verdict)
        if status != _MISSING:
            self._count("claims_replaced")
            if status == _STALE and record:
                log.warning("scanned table: claim on %s by %r is stale (owner gone); re-claimed by %r",
                            sha, record.get("owner"), owner)
        self._count("claims_won")
        return Claim(True, None)

    def publish(self, sha256: str, verdict: Verdict) -> None:
        sha = check_key(sha256)
        if not isinstance(verdict, Verdict) or verdict.state != DONE:
            raise ValueError("publish needs a done Verdict")
        record = verdict.to_dict()
        Verdict.from_dict(record)
        now = time.time()
        record["stored_at"] = now
        blob = json.dumps(record)
        if len(blob) > MAX_VALUE_BYTES:
            record["log"] = []
            record["findings"] = sorted(record["findings"], key=lambda f: -f["severity"])[:MAX_STORED_FINDINGS]
            blob = json.dumps(record)
        ttl = max(1, int(min(verdict.analyzed_at, now) + self.ttl_for(verdict) - now))
        try:
            pipe = self.r.pipeline(transaction=True)
            pipe.set(self._key(sha), blob, ex=ttl)
            pipe.publish(self._channel(sha), b"done")
            pipe.execute()
        except self._redis_errors as exc:
            raise self._fail("publish", exc) from exc
        self._count("published")

    def release(self, sha256: str, owner: str) -> None:
        sha = check_key(sha256)
        owner = _check_owner(owner)

        def decide(status, verdict, record, pipe):
            mine = status in (_LIVE, _STALE) and record is not None and record.get("owner") == owner
            if mine:
                pipe.delete(self._key(sha))
                pipe.publish(self._channel(sha), b"released")
            return mine

        if self._cas(sha, decide, "release")[3]:
            self._count("released")

    def refresh(self, sha256: str, owner: str) -> bool:
        sha = check_key(sha256)
        owner = _check_owner(owner)
        ttl_ms = max(1, int(self.cfg.pending_ttl_s * 1000))

        def decide(status, verdict, record, pipe):
            mine = status in (_LIVE, _STALE) and record is not None and record.get("owner") == owner
            if mine:
                now = time.time()
                record["claimed_at"] = now
                record["analyzed_at"] = now
                pipe.set(self._key(sha), json.dumps(record), px=ttl_ms)
            return mine

        mine = self._cas(sha, decide, "refresh")[3]
        if mine:
            self._count("refreshed")
        return mine

    def wait(self, sha256: str, deadline: float) -> Verdict | None:
        """Block until a done verdict, ``deadline`` (monotonic), or nothing left to wait for.

        Subscribes to the entry's channel *before* reading it, so a publish between
        the read and the wait is never missed; re-reads on every message and at
        least every :data:`REREAD_S` (a claimer that died says nothing).
        """
        sha = check_key(sha256)
        try:
            pubsub = self.r.pubsub(ignore_subscribe_messages=True)
            pubsub.subscribe(self._channel(sha))
        except self._redis_errors as exc:
            raise self._fail("wait", exc) from exc
        try:
            while True:
                try:
                    raw = self.r.get(self._key(sha))
                except self._redis_errors as exc:
                    raise self._fail("wait", exc) from exc
                status, verdict, _ = self._classify(raw, time.time())
                if status == _DONE:
                    return verdict
                if status != _LIVE:
                    return None
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                try:
                    pubsub.get_message(timeout=min(remaining, REREAD_S))
                except self._redis_errors as exc:
                    raise self._fail("wait", exc) from exc
        finally:
            try:
                pubsub.close()
            except self._redis_errors:
                pass

    def forget(self, sha256: str) -> bool:
        sha = check_key(sha256)
        try:
            pipe = self.r.pipeline(transaction=True)
            pipe.delete(self._key(sha))
            pipe.publish(self._channel(sha), b"forgotten")
            removed = bool(pipe.execute()[0])
        except self._redis_errors as exc:
            raise self._fail("forget", exc) from exc
        if removed:
            self._count("forgotten")
        return removed

    # ------------------------------------------------------------------ maintenance
    def _keys(self) -> Iterator[str]:
        start = len(self.prefix) + 2
        try:
            for key in self.r.scan_iter(match=f"{self.prefix}v:*", count=500):
                text = key.decode() if isinstance(key, bytes) else key
                sha = text[start:]
                try:
                    yield check_key(sha)
                except ValueError:
                    continue
        except self._redis_errors as exc:
            raise self._fail("iterate", exc) from exc

    def iter_entries(self, include_expired: bool = False) -> Iterator[tuple[str, Verdict]]:
        for sha in self._keys():
            status, verdict, _ = self._classify(self.r.get(self._key(sha)), time.time())
            if verdict is not None and (include_expired or status in (_DONE, _LIVE)):
                yield sha, verdict

    def expire(self) -> int:
        """Redis drops timed-out entries itself; this removes other-version, dead-owner and corrupt ones."""
        removed = 0
        for sha in self._keys():
            def decide(status, verdict, record, pipe):
                if status in (_STALE, _EXPIRED, _OTHER, _CORRUPT):
                    pipe.delete(self._key(sha))
                    pipe.publish(self._channel(sha), b"expired")
                    return True
                return False
            if self._cas(sha, decide, "expire")[3]:
                removed += 1
        if removed:
            self._count("expired_removed", removed)
        return removed

    def stats(self) -> dict[str, Any]:
        self._flush_counters()
        by_status: collections.Counter[str] = collections.Counter()
        by_verdict: collections.Counter[str] = collections.Counter({v: 0 for v in VERDICTS})
        now = time.time()
        for sha in self._keys():
            status, verdict, _ = self._classify(self.r.get(self._key(sha)), now)
            by_status[status] += 1
            if status == _DONE and verdict is not None:
                by_verdict[verdict.verdict] += 1
        try:
            counters = {k.decode(): int(v) for k, v in self.r.hgetall(self.prefix + "counters").items()}
            memory = int(self.r.info("memory").get("used_memory", 0))
        except self._redis_errors as exc:
            raise self._fail("stats", exc) from exc
        result: dict[str, Any] = {
            "path": self.url, "backend": "redis", "engine_version": self.engine_version,
            "entries": sum(n for s, n in by_status.items() if s != _MISSING),
            "done": by_status[_DONE], "pending": by_status[_LIVE], "stale": by_status[_STALE],
            "expired": by_status[_EXPIRED] + by_status[_OTHER], "corrupt": by_status[_CORRUPT],
            "by_verdict": dict(by_verdict), "size_bytes": memory, "size_limit_bytes": int(self.cfg.size_limit_bytes),
        }
        result.update({name: counters.get(name, 0) for name in COUNTER_NAMES})
        return result

    def close(self) -> None:
        self._flush_counters()

    def __enter__(self) -> "RedisScanTable":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
