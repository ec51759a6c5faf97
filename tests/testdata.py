"""Where test data comes from: the ONE place that knows the external corpus' location.

The external corpus (real files from other projects' test suites: oletools,
SpamAssassin, CPython, mail-mime-parser, EICAR) does not travel with the
repository.  Its directory is ``$MAILVM_CORPUS``, by default ``../shared/corpus``
beside the checkout.  Tests that need it use the ``corpus`` fixture
(tests/conftest.py), :func:`corpus_file` or :func:`corpus_params`; all of them skip
with :data:`CORPUS_MISSING` when it is absent.  What is essential is also covered
without it, by data the tests build (e.g. :mod:`mailvm.lab.samples`) or that the
repository ships (:func:`shipped_sample`, tests/data/).

Importable by test modules (conftest.py is not a module to import).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

#: the repository's tests/ directory
TESTS = Path(__file__).resolve().parent
#: data that travels with the repository
DATA = TESTS / "data"

#: $MAILVM_CORPUS, else ../shared/corpus beside the checkout
CORPUS = Path(os.environ.get("MAILVM_CORPUS") or TESTS.parent.parent / "shared" / "corpus")

#: why a corpus test is skipped
CORPUS_MISSING = (f"external test corpus not found at {CORPUS} "
                  "(set MAILVM_CORPUS to its directory; the repository's own data covers the essentials)")


def corpus_available() -> bool:
    return CORPUS.is_dir()


def corpus_file(rel: str | Path) -> Path:
    """``CORPUS / rel``; the calling test is skipped (with the reason) when the corpus or the file is absent."""
    if not corpus_available():
        pytest.skip(CORPUS_MISSING)
    path = CORPUS / rel
    if not path.exists():
        pytest.skip(f"{rel} is not in the external test corpus at {CORPUS}")
    return path


def corpus_params(values: list, argnames: str = "path") -> list:
    """Parametrize values drawn from the corpus, or one skipped param saying why when the corpus is absent
    (an empty parameter set would only say "got empty parameter set")."""
    if values:
        return values
    n = len(argnames.split(","))
    return [pytest.param(*([None] * n), marks=pytest.mark.skip(reason=CORPUS_MISSING), id="no-corpus")]


#: files in tests/data/samples.zip (AES zip, password ``infected``; see tests/data/README.md)
SAMPLES_ZIP = DATA / "samples.zip"
SAMPLES_PASSWORD = b"infected"


def shipped_sample(name: str, dest: Path) -> Path:
    """Unzip the shipped sample ``name`` (a path inside tests/data/samples.zip) to ``dest`` and return it.

    Unzipping is not executing: the file is only handed to static analysis."""
    import pyzipper

    with pyzipper.AESZipFile(SAMPLES_ZIP) as zf:
        zf.setpassword(SAMPLES_PASSWORD)
        data = zf.read(name)
    out = dest / Path(name).name
    out.write_bytes(data)
    return out


def shipped_names() -> list[str]:
    import pyzipper

    with pyzipper.AESZipFile(SAMPLES_ZIP) as zf:
        return [n for n in zf.namelist() if not n.endswith("/")]
