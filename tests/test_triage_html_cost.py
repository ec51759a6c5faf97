"""Hostile HTML cannot stall a scan worker (issue 12 item 10): every analyzer stays near-linear.

Pages of ~315 KB made of one construct repeated without ever closing it (the shape that
once cost 16 s per page, and minutes in a naive tag parser), analysed as an attachment and
as a message body.  The bound is generous (a loaded 2-core machine), far below the old cost.
"""

from __future__ import annotations

import hashlib
import time

import pytest

from mailvm.config import TriageConfig
from mailvm.triage import Triage
from mailvm.verdict import Artifact

PAGES = {
    "many-a": "<a href=x>",
    "many-script": "<script>",
    "many-meta": "<meta http-equiv=refresh ",
    "many-input": "<input type=text ",
    "many-form": "<form action=",
    "lt": "<",
    "svg-script": "<svg <script ",
    "on-attr": "<div onclick=",
    "quote-b64": "'" + "A" * 1000,
    "eval-atob": "eval(atob(",
}


@pytest.fixture(scope="module")
def triage():
    return Triage(TriageConfig(yara_rules_dir="/nonexistent"))


@pytest.mark.parametrize("role", ["attachment", "body"])
def test_hostile_pages_are_analysed_quickly(triage, tmp_path, role):
    total = 0.0
    for name, unit in PAGES.items():
        data = (unit * (315_000 // len(unit) + 1)).encode()[:315_000]
        path = tmp_path / f"{name}.html"
        path.write_bytes(data)
        art = Artifact(hashlib.sha256(data).hexdigest(), path.name, len(data), "text/html", str(path), role=role)
        t0 = time.monotonic()
        result = triage.analyze(art)
        spent = time.monotonic() - t0
        total += spent
        assert result.errors == [], (name, result.errors)
        assert spent < 20, f"{name} as {role}: {spent:.1f} s"
    assert total < 60, f"{len(PAGES)} hostile pages as {role}: {total:.1f} s"
