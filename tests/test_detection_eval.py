"""The detection evaluation (``make eval``) runs end to end on a small subset and writes a sane report."""

from __future__ import annotations

import hashlib
import json

import pytest

from behaviour_helpers import sandbox_missing
from bench import detection, detection_corpus

SANDBOX = sandbox_missing()


def _check_summary(summary: dict, classes: set[str], n: int) -> None:
    assert set(summary) == classes
    for cls, d in summary.items():
        assert d["label"] == detection_corpus.label_of(cls)
        assert d["n"] == n
        assert 0 <= d["malicious"] <= d["flagged"] <= d["n"]
        assert sum(d["verdicts"].values()) == d["n"]
        assert d["median_s"] >= 0
        wrong = d.get("misses", d.get("false_positives"))
        assert wrong is not None and len(wrong) == (d["n"] - d["flagged"] if d["label"] == "malicious" else d["flagged"])


@pytest.mark.slow
@pytest.mark.sandbox
@pytest.mark.skipif(SANDBOX is not None, reason=f"sandbox unavailable: {SANDBOX}")
def test_detection_eval_small_run_with_and_without_detonation(tmp_path):
    """Two samples of a malicious and of a benign class through the real Scanner, detonated in the process
    backend and again statically; the Markdown, JSON and PNG come out with a consistent structure."""
    out = tmp_path / "detection.md"
    res = tmp_path / "results"
    rc = detection.main(["--limit", "2", "--classes", "office-macro", "benign-technical", "--per-class", "1",
                         "--out", str(out), "--results", str(res), "--quiet", "--timeout", "240"])
    assert rc == 0
    text = out.read_text()
    assert "| office-macro | 2 |" in text and "| benign-technical | 2 |" in text
    assert "static flagged" in text and "## Misses and false positives" in text
    data = json.loads((res / "detection.json").read_text())
    _check_summary(data["detonation"], {"office-macro", "benign-technical"}, 2)
    _check_summary(data["static"], {"office-macro", "benign-technical"}, 2)
    assert len(data["samples"]) == len(data["samples_static"]) == 4
    for s in data["samples"]:
        assert s["verdict"] in ("clean", "suspicious", "malicious", "error", "pending")
        assert all(isinstance(f, list) and len(f) == 2 for f in s["findings"])
    # the sandbox really ran something: a benign ELF or shell script of this machine is detonated
    assert data["detonation"]["benign-technical"]["detonated"] >= 1
    assert data["static"]["benign-technical"]["detonated"] == 0
    assert (res / "detection.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "/work/" not in text and "../shared" not in text


@pytest.mark.slow
def test_detection_eval_static_jobs_and_outside_corpus(tmp_path):
    """Two worker processes; an outside corpus directory adds its own classes."""
    outside = tmp_path / "outside"
    (outside / "my-lures").mkdir(parents=True)
    (outside / "my-lures" / "a.url").write_text("[InternetShortcut]\r\nURL=file://198.51.100.7/share/x.exe\r\n")
    (outside / "benign-notes").mkdir()
    (outside / "benign-notes" / "n.txt").write_text("Shopping list: bread, milk.\n")
    out = tmp_path / "d.md"
    res = tmp_path / "r"
    rc = detection.main(["--no-detonate", "--jobs", "2", "--classes", "my-lures", "benign-notes", "link-lure-eml",
                         "--limit", "1", "--corpus", str(outside), "--out", str(out), "--results", str(res),
                         "--quiet"])
    assert rc == 0
    data = json.loads((res / "detection.json").read_text())
    _check_summary(data["detonation"], {"my-lures", "benign-notes", "link-lure-eml"}, 1)
    assert data["static"] is None
    assert data["detonation"]["benign-notes"]["label"] == "benign"
    assert data["detonation"]["my-lures"]["label"] == "malicious"


def test_corpus_manifest_matches_the_zip():
    import pyzipper

    meta = json.loads(detection_corpus.MANIFEST.read_text())
    assert meta["password"] == "infected"
    with pyzipper.AESZipFile(detection_corpus.CORPUS_ZIP) as z:
        z.setpassword(meta["password"].encode())
        names = set(z.namelist())
        for s in meta["samples"][::40]:
            assert hashlib.sha256(z.read(s["path"])).hexdigest() == s["sha256"]
    assert {s["path"] for s in meta["samples"]} == names
    assert len({s["sha256"] for s in meta["samples"]}) == len(meta["samples"])
    for s in meta["samples"]:
        assert s["class"] in detection_corpus.MALICIOUS_CLASSES and s["label"] == "malicious"
        assert s["source"] and s["licence"]
        for reserved in ("SpamScope/mail-parser", "GOVCERT-LU/eml_parser", "rf-peixoto/phishing_pot"):
            assert reserved not in s["source"]
    assert detection_corpus.CORPUS_ZIP.stat().st_size < 15_000_000
