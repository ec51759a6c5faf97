"""Fuzzing the archive extractors (zip, AES zip, tar/tgz/tbz2/txz, 7z, ISO 9660, RAR 4, RAR 5, CAB,
TNEF) through extract_file: valid archives built here (tests/fuzz/builders.py says how, and which
variants cannot be generated on this machine), then mutated byte by byte; archives nested in each other;
format magic followed by noise.

Properties (fuzzkit.check_extraction and Sandbox.check_contained): no internal error, bounded time
and memory, every file a regular file inside the spool whatever the member names say (``../``,
absolute, drive letters), nothing written elsewhere (not even in the current directory), the limits
on members, artifacts, bytes and depth kept.  For intact archives, additionally: every member's
bytes come out (unless a limit finding says why not), and no ``archive_corrupt``.
"""

from __future__ import annotations

import dataclasses
import hashlib

from hypothesis import assume, given
from hypothesis import strategies as st

from builders import ARCHIVE_FORMATS, zip_archive
from fuzzkit import (budget, count, extraction_job, hostile_names, is_limit, isolated, keep_on_failure, mutate, mutations,
                     small_data)
from mailvm.config import ExtractConfig

CFG = dataclasses.replace(ExtractConfig(), max_depth=3, max_members=30, max_artifacts=60,
                          max_total_bytes=4 * 1024 * 1024, max_file_bytes=1024 * 1024, max_ratio=50,
                          time_budget_s=5.0, max_password_tries=5)
FORMATS = sorted(ARCHIVE_FORMATS)
members = st.lists(st.tuples(hostile_names, small_data), min_size=1, max_size=6)


def run_file(data: bytes, name: str, fmt: str, check=None) -> None:
    """Extract ``data`` in the isolated worker (a C library's crash fails the test, not the run) with the
    fuzzer's properties checked there; then ``check(result)`` here when given."""
    count(f"archive.{fmt}")
    with keep_on_failure(f"archive_{fmt}", data, ARCHIVE_FORMATS.get(fmt, (None, ".bin"))[1]):
        res = isolated(extraction_job, "file", data, name, CFG)
        if check is not None:
            check(res)


def build(fmt: str, ms) -> bytes:
    return ARCHIVE_FORMATS[fmt][0](ms)


def tnef_tiny_last_attachment(fmt: str, last: bytes) -> bool:
    """tnefparse stops reading 12 bytes before the end (``offset + MIN_OBJ_SIZE < len(data)``): a last
    attachment of 0 or 1 byte is not seen.  A library limit without consequence (no 1-byte file is
    executable), found by this fuzzer and accepted."""
    return fmt == "tnef" and len(last) <= 1


@budget(400)
@given(st.sampled_from(FORMATS), members)
def test_intact_archives_give_every_member(fmt, ms):
    # a name ending in a slash is a directory to every reader (tar's old convention): its data is not a file's
    ms = [(n.rstrip("/\\") or "unnamed", d) for n, d in ms]
    assume(not tnef_tiny_last_attachment(fmt, ms[-1][1]))

    def every_member(res) -> None:
        container = res.artifacts[0]
        found = {a.sha256 for a in res.artifacts[1:]}
        all_findings = [*res.findings, *(f for a in res.artifacts for f in a.findings)]
        assert not [f for f in container.findings if f.id == "archive_corrupt"], container.findings
        if any(is_limit(f.id) for f in all_findings):
            return
        missing = [n for n, d in ms if hashlib.sha256(d).hexdigest() not in found]
        assert not missing, f"{fmt}: members not extracted: {missing[:3]} (findings {all_findings})"

    run_file(build(fmt, ms), "archive" + ARCHIVE_FORMATS[fmt][1], fmt, every_member)


@budget(900)
@given(st.sampled_from(FORMATS), members, mutations, hostile_names)
def test_mutated_archives(fmt, ms, ops, name):
    run_file(mutate(build(fmt, ms), ops), (name or "a") + ARCHIVE_FORMATS[fmt][1], fmt)


@budget(150)
@given(st.lists(st.sampled_from(FORMATS), min_size=2, max_size=6), small_data, st.booleans())
def test_nested_archives(chain, leaf, mutated):
    """An archive in an archive in ...: the depth limit holds, and the leaf comes out when within it."""
    data = leaf
    for fmt in chain:
        data = build(fmt, [("inner" + ARCHIVE_FORMATS[fmt][1], data)])
    if mutated:
        data = mutate(data, [("flip", len(data) // 2, 0x55)])

    def leaf_found(res) -> None:
        if not mutated and len(chain) <= CFG.max_depth and not tnef_tiny_last_attachment(chain[0], leaf) and not any(
                is_limit(f.id) for f in [*res.findings, *(f for a in res.artifacts for f in a.findings)]):
            assert hashlib.sha256(leaf).hexdigest() in {a.sha256 for a in res.artifacts}

    run_file(data, "outer" + ARCHIVE_FORMATS[chain[-1]][1], "nested", leaf_found)


MAGICS = [b"PK\x03\x04", b"7z\xbc\xaf\x27\x1c\x00\x04", b"Rar!\x1a\x07\x00", b"Rar!\x1a\x07\x01\x00",
          b"MSCF\x00\x00\x00\x00", b"\x78\x9f\x3e\x22", b"\x1f\x8b\x08", b"BZh9", b"\xfd7zXZ\x00", b"\x28\xb5\x2f\xfd",
          b"LZIP\x01", b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"]


@budget(250)
@given(st.sampled_from(MAGICS), st.binary(max_size=3000))
def test_magic_then_noise(magic, tail):
    run_file(magic + tail, "noise.bin", "magic")


@budget(10)
@given(st.integers(200, 2000))
def test_many_members_stop_at_the_limit(n):
    """More entries than max_members: a limit finding, never more artifacts than allowed."""
    data = zip_archive([(f"m{i}.txt", b"%d" % i) for i in range(n)])

    def stopped(res) -> None:
        assert len(res.artifacts) - 1 <= CFG.max_members
        assert any(is_limit(f.id) for f in res.findings), res.findings

    run_file(data, "many.zip", "zip", stopped)
