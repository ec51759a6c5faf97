"""What every static analyzer shares: the :class:`Analyzer` record, the per-file
:class:`Context`, and small helpers for names and text.

An analyzer is a plain function ``analyze(artifact, data_path, ctx) -> list[Finding]``
wrapped in an :class:`Analyzer` that declares its name, the kinds of file it
applies to and an optional ``setup(cfg)`` run once by :class:`~mailvm.triage.Triage`
(compiled rules and the like; the result is read-only afterwards and reached
through ``ctx.state[name]``).  Analyzers read the file's bytes from ``ctx.data``
(at most ``max_scan_bytes``), never more.
"""

from __future__ import annotations

import codecs
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from mailvm.config import TriageConfig
from mailvm.verdict import Artifact, Finding

AnalyzeFn = Callable[[Artifact, str, "Context"], list[Finding]]
SetupFn = Callable[[TriageConfig], Any]


@dataclass
class Context:
    """Everything an analyzer may look at besides the artifact itself."""

    cfg: TriageConfig
    kind: str
    data: bytes
    truncated: bool = False
    state: Mapping[str, Any] = field(default_factory=dict)

    @property
    def size(self) -> int:
        return len(self.data)


@dataclass(frozen=True)
class Analyzer:
    """One static analyzer: ``kinds`` is ``None`` when it applies to every kind."""

    name: str
    kinds: frozenset[str] | None
    run: AnalyzeFn
    setup: SetupFn | None = None

    def applies(self, kind: str) -> bool:
        return self.kinds is None or kind in self.kinds

    def analyze(self, artifact: Artifact, data_path: str, ctx: Context) -> list[Finding]:
        return self.run(artifact, data_path, ctx)


# -- names -------------------------------------------------------------------

_EXT_RE = re.compile(r"\.([A-Za-z0-9_\-~]{1,12})$")


def base_name(name: str) -> str:
    """Last path component of a (hostile) file name, ``/`` or ``\\`` separated."""
    return re.split(r"[\\/]", name or "")[-1]


def extension(name: str) -> str:
    """Lower-case extension without the dot (``""`` when there is none).

    Trailing dots and spaces are ignored, as Windows ignores them.
    """
    stem = base_name(name).rstrip(" .\t")
    m = _EXT_RE.search(stem)
    return m.group(1).lower() if m else ""


def extensions(name: str, limit: int = 4) -> list[str]:
    """All dot-separated extensions, outermost last: ``a.pdf.exe`` -> ``["pdf", "exe"]``."""
    stem = base_name(name).rstrip(" .\t")
    parts = stem.split(".")[1:]
    out = [p.strip().lower() for p in parts if 0 < len(p.strip()) <= 12]
    return out[-limit:]


# -- text --------------------------------------------------------------------

def decode_text(data: bytes, limit: int) -> str:
    """Best-effort text of a script or HTML file: BOM-aware, UTF-16 aware, never raises."""
    head = data[:limit]
    for bom, enc in ((codecs.BOM_UTF8, "utf-8"), (codecs.BOM_UTF16_LE, "utf-16-le"), (codecs.BOM_UTF16_BE, "utf-16-be")):
        if head.startswith(bom):
            return head[len(bom):].decode(enc, "replace")
    if is_utf16le(head):
        return head.decode("utf-16-le", "replace")
    try:
        return head.decode("utf-8")
    except UnicodeDecodeError:
        return head.decode("latin-1")


def is_utf16le(data: bytes) -> bool:
    """UTF-16LE text, with or without BOM: NULs at odd positions, few at even ones."""
    sample = data[:4096]
    if sample.startswith(codecs.BOM_UTF16_LE):
        return True
    return len(sample) >= 8 and sample[1::2].count(0) > len(sample) // 4 and sample[0::2].count(0) < len(sample) // 16


def looks_binary(data: bytes, sample: int = 4096) -> bool:
    """True when the head of ``data`` has NUL bytes or many control characters (UTF-16 text is not binary)."""
    head = data[:sample]
    if not head:
        return False
    if is_utf16le(head):
        return False
    if b"\x00" in head:
        return True
    ctrl = sum(1 for b in head if b < 9 or 13 < b < 32)
    return ctrl > len(head) // 10


def clip(text: str, limit: int = 160) -> str:
    """A short, printable excerpt of hostile text for a finding's detail."""
    text = "".join(ch if ch.isprintable() else " " for ch in str(text))
    text = re.sub(r"\s+", " ", text).strip()
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"
