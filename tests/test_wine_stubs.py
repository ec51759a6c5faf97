"""System DLLs Debian's Wine lacks: a program importing bcryptprimitives!ProcessPrng (as every
Go 1.22+ and current Rust program does) runs in the sandbox instead of stopping at load."""

from __future__ import annotations

import subprocess

import pytest

from mailvm.guest.winestubs import STUBS, forwarder_dll, install
from test_windows_launchers import _detonate, _ids, _need, _wine_reason, build

PRNG_PROGRAM = r"""
#include <windows.h>
BOOL WINAPI ProcessPrng(PBYTE data, SIZE_T len);
int main(void) {
    BYTE key[32] = {0};
    HKEY run;
    if (!ProcessPrng(key, sizeof key)) return 2;
    /* do something the rules see, so the test can tell it ran past its imports */
    if (RegOpenKeyExA(HKEY_CURRENT_USER, "Software\\Microsoft\\Windows\\CurrentVersion\\Run", 0, KEY_SET_VALUE, &run) == 0) {
        RegSetValueExA(run, "updater", 0, REG_SZ, (const BYTE *)"C:\\Users\\Public\\u.exe", 22);
        RegCloseKey(run);
    }
    return 0;
}
"""


def test_forwarder_dll_is_a_valid_pe_with_forwarded_exports():
    import pefile

    for pe64, machine in ((True, 0x8664), (False, 0x14C)):
        pe = pefile.PE(data=forwarder_dll("bcryptprimitives.dll", STUBS["bcryptprimitives.dll"], pe64))
        assert pe.FILE_HEADER.Machine == machine and pe.is_dll()
        (sym,) = pe.DIRECTORY_ENTRY_EXPORT.symbols
        assert (sym.name, sym.forwarder) == (b"ProcessPrng", b"ADVAPI32.SystemFunction036")


def test_install_writes_both_architectures_once(tmp_path):
    for sub in ("system32", "syswow64"):
        (tmp_path / "drive_c" / "windows" / sub).mkdir(parents=True)
    assert len(install(str(tmp_path))) == 2
    assert install(str(tmp_path)) == []  # never overwrites


@pytest.mark.sandbox
@pytest.mark.slow
@pytest.mark.parametrize("bits", [64, 32])
def test_a_program_importing_process_prng_runs(tmp_path, monkeypatch, bits):
    reason = _wine_reason(bits)
    if reason:
        pytest.skip(reason)
    prefix = "x86_64" if bits == 64 else "i686"
    _need(f"{prefix}-w64-mingw32-dlltool")
    (tmp_path / "bcp.def").write_text("LIBRARY bcryptprimitives.dll\nEXPORTS\nProcessPrng" + ("@8" if bits == 32 else "")
                                      + "\n")
    subprocess.run([f"{prefix}-w64-mingw32-dlltool", "-k", "-d", str(tmp_path / "bcp.def"),
                    "-l", str(tmp_path / "libbcp.a")], check=True)
    exe = build(f"{prefix}-w64-mingw32-gcc", PRNG_PROGRAM, tmp_path / "prng.exe", f"-L{tmp_path}", "-lbcp")
    r = _detonate(tmp_path, exe, "tool.exe", monkeypatch)
    assert r["executed"] is True, r["execution"]
    assert "persistence_registry_run" in _ids(r)
