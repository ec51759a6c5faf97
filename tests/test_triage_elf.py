"""elf analyzer: the system's own binaries, a static stripped build, headers
patched to drop the section table, truncated headers."""

from __future__ import annotations

import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from mailvm.config import TriageConfig
from mailvm.triage import Triage, elf
from triage_helpers import art

GCC = shutil.which("gcc")


def ids(findings) -> dict[str, int]:
    return {f.id: f.severity for f in findings}


def test_dynamic_system_binary_is_informational_only():
    found = elf.elf_findings(Path("/bin/true").read_bytes())
    assert list(ids(found)) == ["elf_binary"]
    assert "dynamically linked" in found[0].detail and found[0].severity == 0


@pytest.fixture(scope="module")
def static_stripped(tmp_path_factory) -> Path:
    if GCC is None:
        pytest.skip("gcc not installed")
    d = tmp_path_factory.mktemp("elf")
    (d / "s.c").write_text("int main(void) { return 0; }\n")
    out = d / "static"
    r = subprocess.run([GCC, "-static", "-s", "-O1", "-o", str(out), str(d / "s.c")], capture_output=True, timeout=180)
    if r.returncode != 0:
        pytest.skip(f"static linking unavailable: {r.stderr[-200:]!r}")
    return out


def test_static_stripped(static_stripped):
    found = ids(elf.elf_findings(static_stripped.read_bytes()))
    assert found["elf_static_stripped"] == 3
    assert "statically linked, stripped" in elf.elf_findings(static_stripped.read_bytes())[0].detail


def test_section_headers_removed(tmp_path):
    data = bytearray(Path("/bin/true").read_bytes())
    assert data[4] == 2  # 64-bit
    struct.pack_into("<H", data, 0x3C, 0)  # e_shnum
    assert "elf_no_section_headers" in ids(elf.elf_findings(bytes(data)))


def test_out_of_bounds_headers(tmp_path):
    data = bytearray(Path("/bin/true").read_bytes())
    struct.pack_into("<Q", data, 0x20, len(data) * 4)  # e_phoff past the end
    found = ids(elf.elf_findings(bytes(data)))
    assert found["elf_malformed"] == 3


@pytest.mark.parametrize("data", [b"\x7fELF", b"\x7fELF" + b"\x02\x01" + b"\x00" * 20, b"\x7fELF\x09\x09" + b"\x00" * 60])
def test_truncated_or_bad_header(data):
    assert "elf_malformed" in ids(elf.elf_findings(data))


def test_through_triage(tmp_path):
    p = tmp_path / "true"
    shutil.copyfile("/bin/true", p)
    r = Triage(TriageConfig(yara_rules_dir=str(tmp_path / "none"))).analyze(art(p))
    assert r.kind == "executable" and r.detonate and r.verdict == "clean" and r.errors == []
