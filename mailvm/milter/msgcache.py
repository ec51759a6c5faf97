"""The milter's message cache: the same message again is answered without the worker round trip.

The scanned table answers for *files*; every message still crosses to a scan worker, which
parses its MIME structure and judges its own text (phishing, lures) before it looks files up.
When the very same message comes again -- a sender's retry after a temporary failure, one
campaign or newsletter sent in separate SMTP transactions, a list fan-out -- the worker would
do exactly the same work and reach exactly the same report.  This cache keeps that report in
the milter process, keyed by a digest the milter computes while the message streams in
(:class:`MessageDigest`), and reuses it only when it is provably the same answer:

* the key covers every byte the analysis reads: each header field except trace fields
  (``Received``, ``Return-Path``) in plain printable ASCII, which no analyzer reads (each hop
  adds its own, so a retry differs there only), the whole body, and the frozen per-message
  :class:`~mailvm.job.AnalysisSettings` with the allow-list's ``static_only``;
* only final reports are kept (:func:`reusable`): no file pending, failed or not analysed by
  a limit, and nothing fetched from the network (a link's target may change between two
  copies);
* at each reuse, every file's entry in the scanned table (and the administrator pins) must
  still be what it was when the report was made (:meth:`MessageCache.get`): a verdict that
  changed, expired or was pinned since sends the message to the worker again;
* entries are bounded in number, size (:data:`MAX_FILES`) and age, kept in memory only, and
  dropped on a policy reload.

Why not in the scanned table (shared, on disk): a message is one sender's content, unlike a
file; it is kept only as long as a retry or a burst lasts, and only in the process that saw it.
"""

from __future__ import annotations

import collections
import copy
import hashlib
import logging
import threading
import time
from dataclasses import astuple, dataclass
from typing import Any

log = logging.getLogger(__name__)

#: header fields left out of the digest (lower case): trace fields, added by every hop
TRACE_FIELDS = frozenset({"received", "return-path"})
#: a trace field is left out only when its value is this short and plain printable ASCII
MAX_TRACE_VALUE = 2048
#: finding id prefixes that say the network was asked (a link followed, or tried)
NETWORK_PREFIXES = ("link_", "doc_link")
#: the verdicts a reusable report may hold
FINAL_VERDICTS = frozenset({"clean", "suspicious", "malicious"})
#: a report with more files than this is not kept (memory: entries are bounded in number, so each
#: one is bounded in size)
MAX_FILES = 100


def _plain(value: bytes) -> bool:
    return len(value) <= MAX_TRACE_VALUE and all(32 <= b < 127 or b in (9, 10, 13) for b in value)


class MessageDigest:
    """SHA-256 over the message as the analysis sees it, fed while the message streams in."""

    def __init__(self) -> None:
        self._h = hashlib.sha256()
        self._fields = 0

    def header(self, name: str, value: bytes) -> None:
        if name.lower() in TRACE_FIELDS and _plain(value):
            return
        encoded = name.encode("ascii", "replace")
        # length-prefixed: no two different header lists give the same bytes
        self._h.update(len(encoded).to_bytes(4, "big") + encoded + len(value).to_bytes(8, "big") + value)
        self._fields += 1

    def end_of_headers(self) -> None:
        self._h.update(b"\0end-of-headers\0" + self._fields.to_bytes(4, "big"))

    def body(self, chunk: bytes) -> None:
        self._h.update(chunk)

    def hexdigest(self) -> str:
        return self._h.copy().hexdigest()


@dataclass(frozen=True)
class _Entry:
    report: dict[str, Any]
    files: tuple[tuple[str, tuple | None], ...]  # (sha256, table snapshot) of every file of the report
    stored: float


def reusable(report: dict[str, Any] | None) -> bool:
    """Whether a worker's report may answer the same message again (pure)."""
    if not report or report.get("verdict") not in FINAL_VERDICTS or len(report.get("artifacts", [])) > MAX_FILES:
        return False
    for f in report.get("findings", []):
        fid = str(f.get("id", ""))
        if fid.startswith(NETWORK_PREFIXES) or fid == "extract_error":
            return False
    for a in report.get("artifacts", []):
        if a.get("verdict") not in FINAL_VERDICTS or "url:" in str(a.get("origin", "")):
            return False
        for f in a.get("findings", []):
            fid = str(f.get("id", ""))
            if fid.startswith(NETWORK_PREFIXES) or fid in ("extract_error", "not_detonated"):
                return False
    return True


def _snapshot(table: Any, sha: str) -> tuple | None:
    """What the scanned table says of ``sha`` now, in comparable form (None: nothing final)."""
    v = table.get(sha)
    if v is None or getattr(v, "state", "done") != "done":
        return None
    return (v.verdict, int(v.score), v.source, v.engine_version, round(float(v.analyzed_at or 0), 3))


class MessageCache:
    """Bounded, in-memory, thread-safe: ``key()``, ``get()``, ``put()``, ``clear()``."""

    def __init__(self, entries: int, ttl_s: float, table: Any = None, pins: Any = None) -> None:
        self.max_entries = max(0, int(entries))
        self.ttl_s = float(ttl_s)
        self.table = table
        self.pins = pins
        self._lock = threading.Lock()
        self._items: collections.OrderedDict[str, _Entry] = collections.OrderedDict()
        self.hits = self.misses = self.stale = 0

    @property
    def enabled(self) -> bool:
        return self.max_entries > 0 and self.table is not None

    @staticmethod
    def key(digest: str, settings: Any, static_only: bool) -> str:
        return hashlib.sha256(repr((digest, astuple(settings), bool(static_only))).encode()).hexdigest()

    def get(self, key: str) -> dict[str, Any] | None:
        """A deep copy of the report stored under ``key`` if every file still has the verdict it had."""
        if not self.enabled:
            return None
        now = time.monotonic()
        with self._lock:
            entry = self._items.get(key)
            if entry is not None and now - entry.stored > self.ttl_s:
                del self._items[key]
                entry = None
            if entry is None:
                self.misses += 1
                return None
            self._items.move_to_end(key)
        try:
            same = all(not self._pinned(sha) and _snapshot(self.table, sha) == snap for sha, snap in entry.files)
        except Exception as exc:  # the table is unreadable: the worker path decides (and says why)
            log.warning("message cache: cannot check the scanned table (%s); scanning the message", exc)
            same = False
        with self._lock:
            if not same:
                self._items.pop(key, None)
                self.stale += 1
                return None
            self.hits += 1
        report = copy.deepcopy(entry.report)
        known = {sha for sha, snap in entry.files if snap is not None}
        for a in report.get("artifacts", []):
            if a.get("sha256") in known and a.get("source") not in ("pinned",):
                a["source"] = "cache"  # as the worker says of a file the table answers for
        return report

    def put(self, key: str, report: dict[str, Any]) -> bool:
        """Keep ``report`` when :func:`reusable`; returns whether it was kept."""
        if not self.enabled or not reusable(report):
            return False
        files = []
        try:
            for sha in dict.fromkeys(a["sha256"] for a in report.get("artifacts", []) if a.get("role") != "body"):
                if self._pinned(sha):
                    return False  # a pin is the administrator's, answered by the worker each time
                files.append((sha, _snapshot(self.table, sha)))
        except Exception as exc:
            log.warning("message cache: cannot read the scanned table (%s); not kept", exc)
            return False
        entry = _Entry(copy.deepcopy(report), tuple(files), time.monotonic())
        with self._lock:
            self._items[key] = entry
            self._items.move_to_end(key)
            while len(self._items) > self.max_entries:
                self._items.popitem(last=False)
        return True

    def clear(self) -> None:
        with self._lock:
            self._items.clear()

    def __len__(self) -> int:
        return len(self._items)

    def _pinned(self, sha: str) -> bool:
        return self.pins is not None and self.pins.get(sha) is not None
