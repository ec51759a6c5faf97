"""``make setup`` makes the venv again when it belongs to another tree (scripts/venv_check.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHECK = ROOT / "scripts" / "venv_check.py"


def _check(tree: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(CHECK), str(tree)], capture_output=True, text=True, timeout=120)


@pytest.mark.skipif(not (ROOT / ".venv" / "bin" / "python").exists(), reason="no .venv in this tree (make setup)")
def test_this_trees_venv_is_accepted():
    r = _check(ROOT)
    assert r.returncode == 0, r.stdout


@pytest.mark.skipif(not (ROOT / ".venv" / "bin" / "python").exists(), reason="no .venv in this tree (make setup)")
def test_a_copied_venv_whose_scripts_start_the_old_tree_is_refused(tmp_path):
    """What `cp -a` to another place leaves: bin/pip still starts the old tree's interpreter."""
    bin_dir = tmp_path / ".venv" / "bin"
    bin_dir.mkdir(parents=True)
    os.symlink(os.path.realpath(ROOT / ".venv" / "bin" / "python"), bin_dir / "python")
    (bin_dir / "pip").write_text(f"#!{ROOT / '.venv' / 'bin' / 'python3'}\nimport pip\n")
    r = _check(tmp_path)
    assert r.returncode == 1 and "another tree's interpreter" in r.stdout, r.stdout


def test_a_venv_without_a_working_interpreter_is_refused(tmp_path):
    bin_dir = tmp_path / ".venv" / "bin"
    bin_dir.mkdir(parents=True)
    os.symlink("/nonexistent/python3.11", bin_dir / "python")  # its base interpreter was removed
    r = _check(tmp_path)
    assert r.returncode == 1 and "missing or points to an interpreter that is gone" in r.stdout, r.stdout


def test_setup_checks_the_venv_before_trusting_it():
    text = (ROOT / "scripts" / "setup.sh").read_text()
    check = text.index("scripts/venv_check.py")
    assert check < text.index("python3 -m venv .venv") and "rm -rf .venv" in text[check:check + 300]
