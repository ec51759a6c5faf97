"""Logging set-up shared by ``mailvm`` and ``mvctl`` (called from ``main()`` only)."""

from __future__ import annotations

import logging
import sys

#: third-party loggers that log whole tracebacks for every malformed sample
NOISY = ("olevba", "oleobj", "rtfobj", "msodde", "pdfid", "oletools", "pyzipper", "py7zr", "pypdf")


def setup_logging(level: int, fmt: str) -> None:
    logging.basicConfig(level=level, stream=sys.stderr, format=fmt)
    quiet = logging.CRITICAL if level > logging.DEBUG else logging.WARNING
    for name in NOISY:
        logging.getLogger(name).setLevel(quiet)
