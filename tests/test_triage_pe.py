"""pe analyzer: real PE files built with the MinGW cross compiler (never run),
plus the corpus' calc.exe and malformed input."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from mailvm.config import TriageConfig
from mailvm.extract.spool import detect_type
from mailvm.triage import Triage, pe
from mailvm.verdict import Artifact

CC = shutil.which("x86_64-w64-mingw32-gcc")
OBJCOPY = shutil.which("x86_64-w64-mingw32-objcopy")
pytestmark = pytest.mark.skipif(CC is None, reason="x86_64-w64-mingw32-gcc not installed (apt-get install gcc-mingw-w64-x86-64)")

SOURCES = {
    "hello": "#include <stdio.h>\nint main(void) { puts(\"hello\"); return 0; }\n",
    "inject": r"""
#include <windows.h>
int main(int argc, char **argv) {
    if (argc > 5) {  /* never taken: the imports are what matters */
        HANDLE p = OpenProcess(PROCESS_ALL_ACCESS, FALSE, (DWORD)argc);
        LPVOID m = VirtualAllocEx(p, NULL, 4096, MEM_COMMIT, PAGE_EXECUTE_READWRITE);
        WriteProcessMemory(p, m, argv[0], 16, NULL);
        CreateRemoteThread(p, NULL, 0, (LPTHREAD_START_ROUTINE)m, NULL, 0, NULL);
    }
    return 0;
}
""",
    "keylog": r"""
#include <windows.h>
static LRESULT CALLBACK hook(int c, WPARAM w, LPARAM l) { return CallNextHookEx(NULL, c, w, l); }
int main(int argc, char **argv) {
    if (argc > 5) {
        SetWindowsHookExA(WH_KEYBOARD_LL, hook, NULL, 0);
        GetAsyncKeyState(VK_SHIFT);
        GetForegroundWindow();
    }
    return 0;
}
""",
    "hollow": r"""
#include <windows.h>
LONG NTAPI NtUnmapViewOfSection(HANDLE, PVOID);
int main(int argc, char **argv) {
    if (argc > 5) {
        CONTEXT ctx;
        NtUnmapViewOfSection(NULL, NULL);
        SetThreadContext(NULL, &ctx);
        WriteProcessMemory(NULL, NULL, argv[0], 1, NULL);
        ResumeThread(NULL);
    }
    return 0;
}
""",
    "entropy": "#include <stdio.h>\n#include \"blob.h\"\nint main(void) { return blob[7]; }\n",
    "noimports": "void start(void) { for (;;) {} }\n",
}


def art(path: Path, name: str | None = None) -> Artifact:
    mime, desc = detect_type(path)
    return Artifact("0" * 64, name or path.name, path.stat().st_size, mime, str(path), ("test",), desc)


@pytest.fixture(scope="module")
def exes(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("pe")
    # a high-entropy blob placed in the code section
    blob = os.urandom(96 * 1024)
    (d / "blob.h").write_text("__attribute__((section(\".text\"))) const unsigned char blob[] = {"
                              + ",".join(str(b) for b in blob) + "};\n")
    out: dict[str, Path] = {}
    for name, src in SOURCES.items():
        c = d / f"{name}.c"
        c.write_text(src)
        exe = d / f"{name}.exe"
        cmd = [CC, "-O1", "-s", "-I", str(d), "-o", str(exe), str(c)]
        if name == "hollow":
            cmd.append("-lntdll")
        if name == "noimports":
            cmd[1:1] = ["-nostdlib", "-Wl,-e,start"]
        subprocess.run(cmd, check=True, timeout=180, capture_output=True)
        out[name] = exe
    if OBJCOPY:
        upx = d / "upx.exe"
        subprocess.run([OBJCOPY, "--rename-section", ".text=UPX0", "--rename-section", ".data=UPX1",
                        str(out["hello"]), str(upx)], check=True, timeout=60, capture_output=True)
        out["upx"] = upx
    return out


@pytest.fixture(scope="module")
def triage(tmp_path_factory) -> Triage:
    return Triage(TriageConfig(yara_rules_dir=str(tmp_path_factory.mktemp("noyara") / "absent")))


def ids(findings) -> dict[str, int]:
    return {f.id: f.severity for f in findings}


def test_plain_program_has_no_pe_findings(exes):
    found = ids(pe.pe_findings(exes["hello"].read_bytes()))
    assert not {k for k, v in found.items() if v >= 3}, found


def test_injection_imports(exes, triage):
    found = ids(pe.pe_findings(exes["inject"].read_bytes()))
    assert found["pe_injection_imports"] == 6
    r = triage.analyze(art(exes["inject"]))
    assert r.kind == "executable" and r.detonate
    assert {"pe_injection_imports", "pe_injection_strings"} <= {f.id for f in r.findings}


def test_keylogger_imports(exes):
    assert ids(pe.pe_findings(exes["keylog"].read_bytes()))["pe_keylogger_imports"] == 5


def test_hollowing_imports(exes, triage):
    assert ids(pe.pe_findings(exes["hollow"].read_bytes()))["pe_hollowing_imports"] == 6
    assert "pe_hollowing_strings" in {f.id for f in triage.analyze(art(exes["hollow"])).findings}


def test_high_entropy_code(exes):
    found = pe.pe_findings(exes["entropy"].read_bytes())
    assert "pe_high_entropy_code" in ids(found)
    assert "pe_high_entropy_code" not in ids(pe.pe_findings(exes["hello"].read_bytes()))


def test_no_imports(exes):
    assert ids(pe.pe_findings(exes["noimports"].read_bytes())).get("pe_no_imports") == 4


@pytest.mark.skipif(OBJCOPY is None, reason="x86_64-w64-mingw32-objcopy not installed")
def test_packer_section_names(exes, triage):
    assert ids(pe.pe_findings(exes["upx"].read_bytes()))["pe_packer_section"] == 5
    assert "pe_upx_packed" in {f.id for f in triage.analyze(art(exes["upx"])).findings}


def test_dotnet_header(exes):
    """A CLR header (data directory 14 -> IMAGE_COR20_HEADER) marks a .NET assembly."""
    import pefile

    img = pefile.PE(str(exes["hello"]))
    sec = next(s for s in img.sections if s.Name.startswith(b".data"))
    img.OPTIONAL_HEADER.DATA_DIRECTORY[14].VirtualAddress = sec.VirtualAddress
    img.OPTIONAL_HEADER.DATA_DIRECTORY[14].Size = 0x48
    data = bytearray(img.write())
    img.close()
    data[sec.PointerToRawData : sec.PointerToRawData + 8] = (0x48).to_bytes(4, "little") + b"\x02\x00\x05\x00"
    assert ids(pe.pe_findings(bytes(data))) == {"pe_dotnet": 1}
    assert "pe_dotnet" not in ids(pe.pe_findings(exes["hello"].read_bytes()))


def test_malformed_pe(tmp_path, triage):
    p = tmp_path / "bad.exe"
    p.write_bytes(b"MZ" + b"\x90" * 58 + b"\x40\x00\x00\x00" + b"PE\x00\x00" + b"\xff" * 40)
    r = triage.analyze(art(p))
    assert r.kind == "executable" and r.errors == []
    assert "pe_malformed" in {f.id for f in r.findings}


def test_corpus_calc_exe(corpus, triage):
    r = triage.analyze(art(corpus / "oletools-test-data/oleobj/sample_with_calc_embedded.doc_calc.exe"))
    assert r.kind == "executable" and r.errors == []
    assert not {f.id for f in r.findings if f.source == "triage:pe" and f.severity >= 4}


def test_truncated_pe_does_not_raise(exes):
    data = exes["inject"].read_bytes()
    for cut in (64, 300, 1024, len(data) // 2):
        pe.pe_findings(data[:cut])  # findings or pe_malformed, never an exception
