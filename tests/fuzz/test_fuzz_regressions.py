"""Every input the fuzzers found a defect with, kept in tests/fuzz/corpus/<target>/, replayed.

Each file goes through its target with the fuzzer's properties (no crash, bounded, contained); the
defect each one found has its own explicit test below (or in tests/test_shmpage.py for the page).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from mailvm.vmpool.shmpage import PageError, check_result

CORPUS = Path(__file__).parent / "corpus"
FILES = sorted(p for p in CORPUS.rglob("*") if p.is_file() and p.name != "README.md")

#: corpus files whose replay still fails, and why (strict: they must start passing once fixed)
OPEN: dict[str, str] = {}


def _param(p: Path):
    rel = str(p.relative_to(CORPUS))
    marks = [pytest.mark.xfail(strict=True, reason=OPEN[rel])] if rel in OPEN else []
    return pytest.param(p, id=rel, marks=marks)


@pytest.mark.parametrize("path", [_param(p) for p in FILES])
def test_replay(path: Path):
    target = path.parent.name
    data = path.read_bytes()
    if target == "shmpage":
        if path.suffix == ".json":
            try:
                check_result(json.loads(data))
            except PageError:
                pass
        else:  # a hostile guest session, described in words; its test is in tests/test_shmpage.py
            assert data.startswith(b"# hostile guest session")
    elif target == "archive":
        from test_fuzz_archives import run_file

        run_file(data, path.name, "corpus")
    elif target == "links":
        from test_fuzz_links import check_find_urls

        check_find_urls("", data.decode("utf-8", "surrogateescape"), 50)
    elif target == "mime":
        from test_fuzz_mime import run_message

        run_message(data)
    else:
        raise AssertionError(f"no target for tests/fuzz/corpus/{target}")


def test_corpus_is_not_empty():
    assert {p.parent.name for p in FILES} >= {"shmpage", "archive"}


def test_duration_beyond_float_range_is_a_page_error():
    obj = json.loads((CORPUS / "shmpage" / "result-duration-int-overflow.json").read_bytes())
    with pytest.raises(PageError, match="duration_s"):
        check_result(obj)


def test_rar4_second_entry_with_the_same_name_is_analysed():
    """libarchive returns the second of two consecutive same-named RAR 4 entries as a nameless type-0
    entry; it was skipped as a device, so its bytes were never analysed (fixed: read through rarfile's
    offsets, see archives._rar4_repeated_members)."""
    from test_fuzz_archives import run_file

    path = CORPUS / "archive" / "rar4-same-name-twice.rar"
    hidden = hashlib.sha256(b"MZ hidden payload: the second invoice.exe").hexdigest()

    def analysed(res) -> None:
        assert hidden in {a.sha256 for a in res.artifacts}, [(a.name, a.findings) for a in res.artifacts]

    run_file(path.read_bytes(), path.name, "corpus", analysed)


def test_zip_members_after_an_empty_named_entry_are_analysed():
    from test_fuzz_archives import run_file

    path = CORPUS / "archive" / "zip-empty-name-first.zip"
    hidden = hashlib.sha256(b"MZ hidden payload: invoice.exe after an empty-named entry").hexdigest()

    def analysed(res) -> None:
        assert hidden in {a.sha256 for a in res.artifacts}, [(a.name, a.findings) for a in res.artifacts]

    run_file(path.read_bytes(), path.name, "corpus", analysed)


def test_cab_with_a_bad_data_block_does_not_crash_the_worker():
    """84 bytes: a stored CAB whose CFFILE lost two bytes.  Extraction must end with a finding, not SIGSEGV
    (libarchive 3.6.2 crashed when asked for the next header after "Invalid CFDATA", ARCHIVE_FATAL; fixed:
    no header is asked for after a fatal data error)."""
    from fuzzkit import extraction_job, isolated
    from test_fuzz_archives import CFG

    data = (CORPUS / "archive" / "cab-segfault-libarchive.cab").read_bytes()
    res = isolated(extraction_job, "file", data, "update.cab", CFG)
    assert res.artifacts and res.artifacts[0].name == "update.cab"
    assert any(f.id == "archive_corrupt" and "Invalid CFDATA" in f.detail for f in res.artifacts[0].findings)


def test_a_host_of_dots_is_not_a_link_or_is_refused_before_dns():
    """'http://.' was kept as a link and _parse_hop stripped the dot after its empty-host check, so the
    downloader resolved an empty host name (fixed: a host of dots is no link, and _parse_hop refuses it)."""
    from mailvm.extract import links as L

    html = (CORPUS / "links" / "dot-only-host.html").read_text()
    assert L.find_urls("", html, 10) == []
    for u in L.find_urls("", html, 10):
        try:
            hop = L._parse_hop(u)
        except L._Failure:
            continue
        assert hop.host, (u, hop)


def _crash_in_c() -> None:
    import ctypes
    import faulthandler

    faulthandler.disable()  # this crash is on purpose: no "Fatal Python error" in the log
    ctypes.string_at(0)  # reads address 0: SIGSEGV, as a crash inside libarchive would


def _answer():
    return 42, 0.0


def test_the_harness_reports_a_segfault_and_keeps_going():
    """A crash in C code during an isolated extraction fails that input (and hypothesis shrinks it);
    the run goes on with a fresh worker."""
    from fuzzkit import ChildCrashed, isolated

    with pytest.raises(ChildCrashed, match="-11"):
        isolated(_crash_in_c)
    assert isolated(_answer) == 42
