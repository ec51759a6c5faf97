"""Paths to shared test data (importable by test modules; conftest.py is not a module to import)."""

from __future__ import annotations

import os
from pathlib import Path

#: ../shared/corpus beside the checkout, or $MAILVM_CORPUS
CORPUS = Path(os.environ.get("MAILVM_CORPUS", Path(__file__).resolve().parents[2] / "shared" / "corpus"))
