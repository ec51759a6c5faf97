"""Detonating crafted samples in the real sandbox: availability checks, compilers, the run helper.

Used by tests/test_windows_behaviour.py and tests/test_linux_behaviour.py.  Every sample is
written or compiled by the test itself and is harmless outside the sandbox too: it *behaves*
like malware towards decoys and the simulated internet.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import uuid
from pathlib import Path

from mailvm.guest import launcher as L
from mailvm.guest import winearch
from mailvm.guest.detonate import detonate
from mailvm.guest.sandbox import sandbox_tools

#: a prefix template that outlives the test run (creating one takes 5-12 s; the guest image ships one)
WINE_TEMPLATE = "/var/tmp/mailvm-test-wine-template"
MINGW = {64: "x86_64-w64-mingw32-gcc", 32: "i686-w64-mingw32-gcc"}


def sandbox_missing() -> str | None:
    if os.geteuid() != 0:
        return "needs root"
    _, missing = sandbox_tools()
    return "missing: " + ", ".join(missing) if missing else None


def wine_missing(bits: int = 64) -> str | None:
    reason = sandbox_missing()
    if reason:
        return reason
    if not (L.find_tool("wine64") or L.find_tool("wine")):
        return "wine64 not installed (apt-get install wine64)"
    if bits == 32 and not winearch.has_wine32():
        return "wine32 not installed (dpkg --add-architecture i386; apt-get install wine32:i386)"
    return None


def mingw_missing(bits: int) -> str | None:
    if shutil.which(MINGW[bits]) is None:
        pkg = "gcc-mingw-w64-x86-64" if bits == 64 else "gcc-mingw-w64-i686"
        return f"{MINGW[bits]} not installed (apt-get install {pkg})"
    return None


def compile_pe(tmp: Path, source: str, name: str, bits: int = 64, libs: tuple[str, ...] = ()) -> bytes:
    src = tmp / (name + ".c")
    src.write_text(source)
    exe = tmp / (name + ".exe")
    subprocess.run([MINGW[bits], "-O1", "-o", str(exe), str(src), *(f"-l{lib}" for lib in libs)], check=True,
                   timeout=120)
    return exe.read_bytes()


def compile_elf(tmp: Path, source: str, name: str) -> bytes:
    src = tmp / (name + ".c")
    src.write_text(source)
    exe = tmp / name
    subprocess.run(["gcc", "-O1", "-o", str(exe), str(src)], check=True, timeout=120)
    return exe.read_bytes()


def run_sample(tmp: Path, content: bytes, name: str, **options) -> dict:
    """detonate() the bytes as a file called ``name``; the result (checked JSON-able, nothing left behind)."""
    base = Path("/tmp") / f"mailvm-behaviour-{uuid.uuid4().hex[:8]}"  # traversable by the sandbox user
    base.mkdir(mode=0o755)
    try:
        src = base / "in"
        src.mkdir()
        sample = src / name
        sample.write_bytes(content)
        wd = base / "wd"
        wd.mkdir(mode=0o755)
        result = detonate(str(sample), {"name": name, **options}, str(wd))
        json.dumps(result)
        assert [p for p in os.listdir(wd) if p.startswith("det-")] == [], "detonation files left behind"
        return result
    finally:
        shutil.rmtree(base, ignore_errors=True)


def ids(result: dict) -> set[str]:
    return {f["id"] for f in result["findings"]}


def detail(result: dict, fid: str) -> str:
    return next(f["detail"] for f in result["findings"] if f["id"] == fid)


def events(result: dict, typ: str) -> list[dict]:
    return [e for e in result["log"] if e.get("type") == typ]
