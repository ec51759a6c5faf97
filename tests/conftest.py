"""Shared pytest fixtures.  Keep each group small and say which tests use it."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from mailvm.config import ExtractConfig
from mailvm.extract.spool import Spool

# -- external test corpus (tests/testdata.py knows where; read-only) ------------------

#: ``$MAILVM_CORPUS`` or its default (tests/testdata.py); tests skip, saying why, when it is absent
from testdata import CORPUS, CORPUS_MISSING, corpus_available  # noqa: E402,F401


@pytest.fixture(scope="session")
def corpus() -> Path:
    if not corpus_available():
        pytest.skip(CORPUS_MISSING)
    return CORPUS


# -- extraction (tests/test_extract_*.py) -----------------------------------------


@pytest.fixture
def extract_cfg() -> ExtractConfig:
    """Default extraction limits, with a smaller byte budget so bombs stay cheap on disk."""
    return dataclasses.replace(ExtractConfig(), max_total_bytes=64 * 1024 * 1024, max_file_bytes=32 * 1024 * 1024)


@pytest.fixture
def make_spool(tmp_path: Path):
    """``make_spool(cfg)`` -> a fresh :class:`Spool` in its own directory under ``tmp_path``."""
    counter = 0

    def make(cfg: ExtractConfig, deadline: float | None = None) -> Spool:
        nonlocal counter
        counter += 1
        return Spool(tmp_path / f"spool{counter}", cfg, deadline=deadline)

    return make


# -- process state a test must not leak into the next ----------------------------------


@pytest.fixture(autouse=True)
def _restore_umask():
    """MilterService.prepare() sets umask 007 in its process: in-process tests would leave it to the
    tests after them (a lab directory made then is closed to the mailvm user, and serve keeps root)."""
    import os

    old = os.umask(0o022)
    os.umask(old)
    yield
    os.umask(old)
