"""File hashes pinned by an administrator: ``clean`` after a false positive, ``malicious`` to block.

A pin beats everything else: the scanner answers a pinned file from here before
it looks at the scanned table, triages or detonates anything (source ``pinned``),
and the verdict carries a finding that names the pin's reason, who set it and
when.  Pins never expire and do not change with the engine version; they live
beside the scanned table (``<scantable.path>-pins``, a diskcache Index: safe
across processes) so ``mvctl cache forget`` and expiry leave them alone.
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator

from mailvm.verdict import CLEAN, MALICIOUS, Finding, Verdict

log = logging.getLogger(__name__)

PIN_VERDICTS = (CLEAN, MALICIOUS)
SOURCE_PINNED = "pinned"
_SHA_RE = re.compile(r"^[0-9a-f]{64}$")
MAX_REASON = 300


@dataclass(frozen=True)
class Pin:
    sha256: str
    verdict: str
    reason: str
    who: str
    at: float

    def as_verdict(self) -> Verdict:
        severity = 10 if self.verdict == MALICIOUS else 0
        when = time.strftime("%Y-%m-%d", time.gmtime(self.at))
        finding = Finding(f"pinned_{self.verdict}", severity, f"pinned by {self.who} on {when}: {self.reason}", "pin")
        return Verdict(verdict=self.verdict, score=severity, findings=[finding], source=SOURCE_PINNED)


def pins_path(scantable_path: str) -> Path:
    p = Path(scantable_path)
    return p.with_name(p.name + "-pins")


class PinStore:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._index = None

    def _idx(self):
        if self._index is None:
            from diskcache import Index

            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._index = Index(str(self.path))
        return self._index

    @staticmethod
    def _check(sha256: str) -> str:
        sha = sha256.strip().lower()
        if not _SHA_RE.match(sha):
            raise ValueError("a SHA-256 is 64 hex digits")
        return sha

    def pin(self, sha256: str, verdict: str, reason: str, who: str) -> Pin:
        if verdict not in PIN_VERDICTS:
            raise ValueError(f"a pin is one of {', '.join(PIN_VERDICTS)}")
        reason = " ".join(str(reason).split())[:MAX_REASON]
        if not reason:
            raise ValueError("a pin needs a reason (--reason)")
        pin = Pin(self._check(sha256), verdict, reason, who[:100], time.time())
        self._idx()[pin.sha256] = asdict(pin)
        log.info("pinned %s %s by %s: %s", pin.sha256, verdict, who, reason)
        return pin

    def unpin(self, sha256: str) -> bool:
        try:
            del self._idx()[self._check(sha256)]
            return True
        except KeyError:
            return False

    def get(self, sha256: str) -> Pin | None:
        if not self.path.exists() and self._index is None:
            return None  # no pin was ever set: do not create the store on a read
        raw = self._idx().get(sha256)
        if not isinstance(raw, dict):
            return None
        try:
            return Pin(**raw)
        except TypeError:
            return None

    def all(self) -> Iterator[Pin]:
        if not self.path.exists() and self._index is None:
            return
        for sha in list(self._idx().keys()):
            pin = self.get(sha)
            if pin is not None:
                yield pin
