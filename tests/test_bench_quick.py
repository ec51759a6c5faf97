"""CI check of the evaluation suite: ``python -m bench.run --quick`` completes and writes its files.

No timing is asserted (the machine is shared; figures vary): only that every
measurement ran, that each wrote its JSON with the machine record and its plot,
and that the generated performance.md has its sections and working image links.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
STAGES = ("components", "flash_vs_classic", "postfix", "scaling", "redis_scaling", "hops")


@pytest.mark.slow
@pytest.mark.postfix
@pytest.mark.sandbox
def test_quick_suite_writes_results(tmp_path: Path) -> None:
    for tool in ("postfix", "smtp-source", "bwrap", "strace"):
        if shutil.which(tool) is None and not Path("/usr/sbin", tool).exists():
            pytest.skip(f"{tool} is not installed (scripts/setup.sh installs it)")
    out = tmp_path / "results"
    proc = subprocess.run([sys.executable, "-m", "bench.run", "--quick", "--out", str(out)], cwd=REPO,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]

    combined = json.loads((out / "results.json").read_text())
    assert combined["mode"] == "quick"
    assert set(combined["stages"]) == set(STAGES)
    assert all(s["ok"] for s in combined["stages"].values()), combined["stages"]
    machine = combined["machine"]
    assert machine["cores"] >= 1 and machine["memory_bytes"] > 0 and machine["accelerator"]
    assert machine["date"] and "git_rev" in machine

    for name in STAGES:
        res = json.loads((out / f"{name}.json").read_text())
        assert res["benchmark"] == name
        assert res["machine"]["cores"] == machine["cores"] and res["machine"]["date"]
        assert "backend" in res
        if name == "flash_vs_classic" and "skipped" in res:
            assert "image" in res["skipped"] or "qemu" in res["skipped"]
            continue
        if name == "redis_scaling" and "skipped" in res:
            assert "redis-server" in res["skipped"]
            continue
        png = out / f"{name}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name

    # the measurements contain real figures, not placeholders
    comp = json.loads((out / "components.json").read_text())
    assert comp["per_message_ms"]["unseen"]["execution"]["median"] > 0
    assert comp["per_message_ms"]["cache_hit"]["execution"]["median"] == 0  # a cache hit runs nothing
    pf = json.loads((out / "postfix.json").read_text())
    for mix in pf["mixes"].values():
        assert mix["complete"], mix
        assert mix["postfix"]["msg_per_s"]["median"] > 0 and mix["mailvm"]["msg_per_s"]["median"] > 0
    rejected = pf["mixes"]["unseen_malicious_1"]["mailvm"]["runs"][0]
    assert rejected["delivered"] == rejected["messages"] - pf["mixes"]["unseen_malicious_1"]["rejected_expected"]
    sc = json.loads((out / "scaling.json").read_text())
    assert [r["slots"] for r in sc["files"]["process"]] == [1, 2]
    assert all("files_per_min" in r for r in sc["files"]["process"]), sc["files"]

    rs = json.loads((out / "redis_scaling.json").read_text())
    if "skipped" not in rs:  # every file got a real verdict, once, with 1 and then 2 pool workers
        assert [r["workers"] for r in rs["runs"]] == [1, 2]
        assert all(r["verdicts"] == r["files"] and r["files_per_min"] > 0 for r in rs["runs"]), rs["runs"]
        assert all(sum(r["detonations_per_worker"]) == r["files"] for r in rs["runs"]), rs["runs"]
        assert rs["runs"][0]["redis_get"]["median_us"] > 0

    hops = json.loads((out / "hops.json").read_text())
    assert all(h["median_ms"] > 0 for h in hops["hops"]), hops["hops"]  # every hop measured on the real parts
    assert hops["idle"]["seconds"] > 0 and hops["idle"]["cpu_pct_of_core"] >= 0

    md = (out / "performance.md").read_text()
    for heading in ("## Headline figures", "## 1. Overhead of each component", "## 2. Flash clone vs classic",
                    "## 3. Emails per second", "## 4. Scaling", "## 5. Past one host", "## 6. The data path",
                    "## 7. Analysis"):
        assert heading in md
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)
    assert links and all((out / link).is_file() for link in links), links
    # the quick run does not publish into docs/ unless asked to
    assert not (out / "img").exists()
