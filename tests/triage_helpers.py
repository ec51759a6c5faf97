"""Helpers shared by the triage tests (one place instead of a copy per analyzer's test file)."""

from __future__ import annotations

from pathlib import Path

from mailvm.extract.spool import detect_type
from mailvm.verdict import Artifact


def art(path: Path) -> Artifact:
    """An Artifact for a file the test wrote, typed by libmagic as extraction would."""
    mime, desc = detect_type(path)
    return Artifact("0" * 64, path.name, path.stat().st_size, mime, str(path), ("test",), desc)


def ids(result) -> dict[str, int]:
    """``{finding id: severity}`` of a TriageResult."""
    return {f.id: f.severity for f in result.findings}
