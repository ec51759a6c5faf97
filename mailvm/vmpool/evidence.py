"""Evidence files a detonation brings back (screenshots of rendered pages), stored next to the verdict.

The guest's result may carry ``screenshots``: ``[{"name", "url", "png_b64"}]`` (see
:mod:`mailvm.guest.detonate`, the browser launcher).  :func:`check_screenshots` validates them as hostile data
(count, size, base64, PNG signature) when the host reads the result; :func:`store_screenshots` writes them under
the evidence directory (``<pool work_dir>/evidence/<sha[:2]>/<sha>/<n>-page.png``, atomically) and returns the
``{"type": "screenshot", "path": <relative to the evidence directory>, ...}`` log events the verdict keeps.
The web console serves only files under that directory (``ConsoleDeps.evidence_dir``); ``mvctl cache show``
prints where they are.
"""

from __future__ import annotations

import base64
import binascii
import logging
import os
import re
import tempfile
from typing import Any

log = logging.getLogger(__name__)

SUBDIR = "evidence"
MAX_SCREENSHOTS = 2
MAX_PNG_BYTES = 1536 * 1024
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_SHA_RE = re.compile(r"^[0-9a-f]{64}$")


def evidence_dir(work_dir: str) -> str:
    """The evidence directory of a pool whose work directory is ``work_dir``."""
    return os.path.join(work_dir, SUBDIR)


def check_screenshots(raw: Any) -> list[dict[str, Any]]:
    """The valid screenshots of a guest result (decoded PNG bytes kept as ``png``); the rest dropped."""
    out: list[dict[str, Any]] = []
    for item in raw[:MAX_SCREENSHOTS] if isinstance(raw, list) else []:
        if not isinstance(item, dict) or not isinstance(item.get("png_b64"), str):
            continue
        b64 = item["png_b64"]
        if len(b64) > (MAX_PNG_BYTES * 4) // 3 + 8:
            continue
        try:
            png = base64.b64decode(b64, validate=True)
        except (binascii.Error, ValueError):
            continue
        if not png.startswith(PNG_MAGIC) or len(png) > MAX_PNG_BYTES:
            continue
        out.append({"url": str(item.get("url", ""))[:500], "png": png})
    return out


def store_screenshots(shots: list[dict[str, Any]], root: str, sha256: str) -> list[dict[str, Any]]:
    """Write validated screenshots for file ``sha256`` under ``root``; their log events (path relative to root)."""
    if not shots or not _SHA_RE.match(sha256):
        return []
    rel_dir = os.path.join(sha256[:2], sha256)
    d = os.path.join(root, rel_dir)
    events: list[dict[str, Any]] = []
    try:
        os.makedirs(d, mode=0o750, exist_ok=True)
        for n, shot in enumerate(shots[:MAX_SCREENSHOTS]):
            name = f"{n}-page.png"
            fd, tmp = tempfile.mkstemp(prefix=".shot-", dir=d)
            with os.fdopen(fd, "wb") as fh:
                fh.write(shot["png"])
            os.replace(tmp, os.path.join(d, name))
            events.append({"type": "screenshot", "path": os.path.join(rel_dir, name), "url": shot.get("url", ""),
                           "bytes": len(shot["png"])})
    except OSError as exc:
        log.warning("evidence: cannot store the screenshot of %s under %s: %s", sha256[:12], root, exc)
    return events
