"""The detection evaluation runs end to end on a small subset and writes a sane report."""

from __future__ import annotations

import json

import pytest

from bench import detection


@pytest.mark.slow
def test_detection_eval_small_static_run(tmp_path, monkeypatch):
    monkeypatch.setattr(detection, "RESULTS", tmp_path / "results")
    out = tmp_path / "detection.md"
    rc = detection.main(["--no-detonate", "--limit", "2", "--classes", "office-maldoc", "benign-script", "phish-body",
                         "--per-class", "2", "--out", str(out), "--quiet"])
    assert rc == 0
    text = out.read_text()
    assert "| office-maldoc | malicious | 2 |" in text and "| benign-script | benign | 2 |" in text
    data = json.loads((tmp_path / "results" / "detection.json").read_text())
    dyn = data["detonation"]
    assert set(dyn) == {"office-maldoc", "benign-script", "phish-body"}
    for cls, d in dyn.items():
        assert d["n"] == 2 and 0 <= d["flagged"] <= d["n"] and sum(d["verdicts"].values()) == d["n"]
    # real Emotet/GandCrab droppers: their VBA alone is conclusive
    assert dyn["office-maldoc"]["malicious"] == 2
    assert "/work/" not in text and "../shared" not in text


def test_corpus_manifest_matches_the_zip():
    import hashlib

    import pyzipper

    meta = json.loads(detection.MANIFEST.read_text())
    with pyzipper.AESZipFile(detection.CORPUS_ZIP) as z:
        z.setpassword(meta["password"].encode())
        names = set(z.namelist())
        for s in meta["samples"][:5]:
            assert hashlib.sha256(z.read(s["path"])).hexdigest() == s["sha256"]
    assert {s["path"] for s in meta["samples"]} == names
    assert all(s["source"] and s["class"] in detection.CLASSES for s in meta["samples"])
