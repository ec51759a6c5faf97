"""The fuzzing suite (docs/reliability.md, "Fuzzing"): every test here carries the ``fuzz`` marker,
and the run ends with the figures the document records (inputs tried, peak memory)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

import fuzzkit


def pytest_collection_modifyitems(config, items):
    here = Path(__file__).parent
    for item in items:
        if Path(str(item.fspath)).parent == here:
            item.add_marker(pytest.mark.fuzz)


def pytest_sessionfinish(session, exitstatus):
    fuzzkit.shutdown_worker()


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if not fuzzkit.TRIED:
        return
    total = sum(fuzzkit.TRIED.values())
    per = ", ".join(f"{k} {v}" for k, v in sorted(fuzzkit.TRIED.items()))
    terminalreporter.write_sep("-", f"fuzz ({fuzzkit.PROFILE}): {total} inputs tried")
    terminalreporter.write_line(per)
    if fuzzkit.STEPS:
        terminalreporter.write_line("within them: " + ", ".join(f"{k} {v}" for k, v in sorted(fuzzkit.STEPS.items())))
    terminalreporter.write_line(f"peak RSS {fuzzkit.peak_rss_mib():.0f} MiB in the test process "
                                f"({fuzzkit.RSS_AT_START_KIB / 1024:.0f} MiB before the fuzzers ran), "
                                f"{fuzzkit.PEAK_WORKER_RSS_MIB:.0f} MiB in the extraction worker "
                                "(getrusage ru_maxrss of each process)")
    out = os.environ.get("MAILVM_FUZZ_STATS")
    if out:
        Path(out).write_text(json.dumps({
            "profile": fuzzkit.PROFILE, "factor": fuzzkit.FACTOR, "inputs": dict(fuzzkit.TRIED), "total": total, "steps": dict(fuzzkit.STEPS),
            "peak_rss_mib": round(fuzzkit.peak_rss_mib(), 1), "peak_worker_rss_mib": round(fuzzkit.PEAK_WORKER_RSS_MIB, 1), "rss_before_mib": round(fuzzkit.RSS_AT_START_KIB / 1024, 1),
            "exitstatus": int(exitstatus),
        }, indent=1) + "\n")
