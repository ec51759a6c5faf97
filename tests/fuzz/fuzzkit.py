"""What every fuzz target shares: the budget (hypothesis profiles), byte mutations, the count of
inputs tried, the peak memory, and the checks that an extraction stayed inside its spool and limits.

Budget: ``MAILVM_FUZZ=ci`` (the default; deterministic, the whole suite in about two minutes)
or ``MAILVM_FUZZ=nightly`` (random, ``MAILVM_FUZZ_FACTOR`` times the examples, 40 by default,
failures remembered in the hypothesis database: ``.hypothesis/`` or ``$MAILVM_FUZZ_DB``).  docs/reliability.md, "Fuzzing", says how to run both.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import resource
import stat
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Callable, Iterator

from hypothesis import HealthCheck, settings
from hypothesis.database import DirectoryBasedExampleDatabase
from hypothesis import strategies as st

PROFILE = os.environ.get("MAILVM_FUZZ", "ci").strip().lower() or "ci"
if PROFILE not in ("ci", "nightly"):
    raise ValueError(f"MAILVM_FUZZ={PROFILE!r}: expected ci or nightly")
FACTOR = int(os.environ.get("MAILVM_FUZZ_FACTOR", "40")) if PROFILE == "nightly" else 1

_COMMON = dict(
    deadline=None,  # time is checked per input against the target's own bound, not hypothesis' 200 ms
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
    print_blob=True,
)


def budget(ci_examples: int) -> settings:
    """Settings for one fuzz test: ``ci_examples`` inputs in CI (fixed seed), FACTOR times more at night."""
    if PROFILE == "ci":
        return settings(max_examples=ci_examples, derandomize=True, database=None, **_COMMON)
    db = os.environ.get("MAILVM_FUZZ_DB")  # where failing examples are kept between nightly runs
    extra = {"database": DirectoryBasedExampleDatabase(db)} if db else {}
    return settings(max_examples=ci_examples * FACTOR, derandomize=False, **extra, **_COMMON)


# -- figures for docs/reliability.md -------------------------------------------------------------

#: target name -> inputs tried (every call of a target counts, shrinking included)
TRIED: Counter[str] = Counter()
#: finer counts inside one input (e.g. the steps of a hostile guest session), not inputs themselves
STEPS: Counter[str] = Counter()
#: the process' peak resident set when the run started (KiB), to tell the fuzzers' share
RSS_AT_START_KIB = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
#: an input may not raise the process' peak resident set above this (MiB)
MAX_RSS_MIB = int(os.environ.get("MAILVM_FUZZ_MAX_RSS_MIB", "1536"))


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def count(target: str) -> None:
    TRIED[target] += 1


def count_step(what: str) -> None:
    STEPS[what] += 1


def check_memory() -> None:
    peak = peak_rss_mib()
    assert peak < MAX_RSS_MIB, f"peak RSS {peak:.0f} MiB exceeds {MAX_RSS_MIB} MiB"


# -- isolation: a crash in C code (libarchive, libmagic...) must not take the test run with it ------

#: wall-clock limit for one isolated input (the targets' own bounds are far below it)
ISOLATED_TIMEOUT_S = 120.0
#: the largest peak RSS an isolated worker reported (MiB)
PEAK_WORKER_RSS_MIB = 0.0
_EXECUTOR = None


class ChildCrashed(AssertionError):
    """The isolated worker died (by a signal: a segfault in a C library) or hung."""


def _executor():
    global _EXECUTOR
    if _EXECUTOR is None:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        _sandbox_parent()  # made here, so that every worker (forked later) uses the same one
        # one long-lived forked worker: a fork per input would cost more than most inputs
        _EXECUTOR = ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("fork"))
    return _EXECUTOR


def _drop_executor(kill: bool) -> list[int | None]:
    global _EXECUTOR
    ex, _EXECUTOR = _EXECUTOR, None
    if ex is None:
        return []
    procs = list(getattr(ex, "_processes", {}).values())
    if kill:
        for proc in procs:
            proc.kill()
    ex.shutdown(wait=True, cancel_futures=True)
    return [proc.exitcode for proc in procs]


def isolated(fn: Callable, *args, timeout: float = ISOLATED_TIMEOUT_S):
    """``fn(*args)`` in the worker process; its return value, or its exception (assertions included).
    A worker that dies (a segfault in C code) or hangs becomes :class:`ChildCrashed`, so hypothesis
    can shrink the input instead of the whole run dying."""
    import concurrent.futures
    from concurrent.futures.process import BrokenProcessPool

    global PEAK_WORKER_RSS_MIB
    fut = _executor().submit(fn, *args)
    try:
        value, rss_mib = fut.result(timeout=timeout)
    except BrokenProcessPool:
        codes = _drop_executor(kill=False)
        raise ChildCrashed(f"the isolated worker died (exit codes {codes}; negative = killed by that signal, "
                           "-11 = SIGSEGV)") from None
    except concurrent.futures.TimeoutError:
        _drop_executor(kill=True)
        raise ChildCrashed(f"no answer after {timeout:.0f} s (worker killed)") from None
    PEAK_WORKER_RSS_MIB = max(PEAK_WORKER_RSS_MIB, rss_mib)
    return value


def shutdown_worker() -> None:
    """End the worker and remove what killed inputs left behind."""
    import shutil

    _drop_executor(kill=False)
    if _SANDBOX_PARENT is not None:
        shutil.rmtree(_SANDBOX_PARENT, ignore_errors=True)


def extraction_job(kind: str, data: bytes, name: str, cfg):
    """Run in the worker: extract a message (``kind="message"``) or a file in a Sandbox, check the
    properties, return ``(ExtractionResult, peak RSS MiB)``."""
    from mailvm.extract import extract_file, extract_message
    from mailvm.extract import mime as M
    from mailvm.extract.spool import Spool

    with Sandbox() as box:
        box.input.write_bytes(data)
        spool = Spool(box.spool_dir, cfg)
        t0 = time.monotonic()
        with box.in_work_dir():
            res = extract_message(data, spool, cfg) if kind == "message" else extract_file(box.input, name, spool, cfg)
        check_extraction(res, spool, cfg, t0)
        box.check_contained(spool)
        if kind == "message":
            assert isinstance(res.text, str) and len(res.text) <= M.MAX_TEXT + 1024
            assert isinstance(res.html, str) and len(res.html) <= M.MAX_HTML + 1024
            for k, v in res.headers.items():
                assert isinstance(k, str) and isinstance(v, str) and len(v) <= M.MAX_HEADER + 16, (k, len(v))
        return res, peak_rss_mib()


# -- crash reproducers ---------------------------------------------------------------------------

#: failing inputs are written here (then copied by hand to tests/fuzz/corpus/ with a regression test)
CRASH_DIR = Path(os.environ.get("MAILVM_FUZZ_CRASHES") or Path(tempfile.gettempdir()) / "mailvm-fuzz-crashes")


@contextlib.contextmanager
def keep_on_failure(target: str, data: bytes, suffix: str = ".bin") -> Iterator[None]:
    """Write ``data`` to CRASH_DIR/<target>/<sha256><suffix> if the block fails (shrinking writes
    several; the smallest is the minimal reproducer)."""
    try:
        yield
    except BaseException:
        d = CRASH_DIR / target
        d.mkdir(parents=True, exist_ok=True)
        (d / (hashlib.sha256(data).hexdigest()[:16] + suffix)).write_bytes(data)
        raise


# -- mutations -----------------------------------------------------------------------------------

#: byte strings that parsers give meaning to
TOKENS = [
    b"\x00", b"\xff", b"\xff\xff\xff\xff", b"\x7f\xff\xff\xff", b"\x80\x00\x00\x00", b"\x00\x00\x00\x80",
    b"\xff\xff\xff\xff\xff\xff\xff\x7f", b"PK\x03\x04", b"PK\x01\x02", b"PK\x05\x06", b"7z\xbc\xaf\x27\x1c",
    b"Rar!\x1a\x07\x00", b"Rar!\x1a\x07\x01\x00", b"MSCF\x00\x00\x00\x00", b"ustar\x00", b"CD001",
    b"\x78\x9f\x3e\x22", b"../", b"..\\", b"/etc/passwd", b"C:\\", b"\r\n\r\n", b"\n--", b"=?utf-8?b?",
    b"Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n", b"Content-Transfer-Encoding: base64\r\n",
    b"begin 644 x.exe\n", b"%PDF-1.7\n", b"MZ\x90\x00",
]

mutation = st.one_of(
    st.tuples(st.just("flip"), st.integers(0, 1 << 30), st.integers(1, 255)),  # xor one byte
    st.tuples(st.just("set"), st.integers(0, 1 << 30), st.sampled_from(TOKENS)),  # overwrite with a token
    st.tuples(st.just("insert"), st.integers(0, 1 << 30), st.one_of(st.sampled_from(TOKENS), st.binary(min_size=1, max_size=64))),
    st.tuples(st.just("delete"), st.integers(0, 1 << 30), st.integers(1, 512)),
    st.tuples(st.just("truncate"), st.integers(0, 1 << 30), st.just(0)),
    st.tuples(st.just("repeat"), st.integers(0, 1 << 30), st.integers(2, 64)),  # duplicate a short run
)


def mutate(data: bytes, ops) -> bytes:
    buf = bytearray(data)
    for kind, where, arg in ops:
        pos = where % (len(buf) + 1)
        if kind == "flip" and buf:
            buf[pos % len(buf)] ^= arg
        elif kind == "set":
            buf[pos : pos + len(arg)] = arg
        elif kind == "insert":
            buf[pos:pos] = arg
        elif kind == "delete":
            del buf[pos : pos + arg]
        elif kind == "truncate":
            del buf[pos:]
        elif kind == "repeat":
            run = bytes(buf[pos : pos + 16])
            buf[pos:pos] = run * arg
    return bytes(buf)


mutations = st.lists(mutation, min_size=1, max_size=8)

#: member names as an attacker writes them
hostile_names = st.one_of(
    st.sampled_from([
        "invoice.pdf.exe", "../../../../tmp/evil", "/etc/cron.d/x", "C:\\Windows\\x.dll", "..\\..\\x.bat",
        "a/../../b", "con", "nul.txt", "", ".", "..", "dir/", "\u202eexe.pdf", "x" * 300, "a\x00b", "\x1b[31mred",
        "dir/sub/file.txt", "\u00e9t\u00e9.doc",
    ]),
    st.text(min_size=0, max_size=40),
)
small_data = st.one_of(st.binary(max_size=2048), st.sampled_from([b"", b"MZ\x90\x00" + b"\x00" * 60, b"%PDF-1.4\n%%EOF\n"]))


# -- extraction checks -----------------------------------------------------------------------------


def is_limit(fid: str) -> bool:
    """A finding that says a limit stopped extraction (contract C3 names them ``*_limit_exceeded``)."""
    return fid.endswith("_limit_exceeded")


def _tree(root: Path) -> set[str]:
    out = set()
    for dirpath, dirnames, filenames in os.walk(root):
        for n in dirnames + filenames:
            out.add(os.path.relpath(os.path.join(dirpath, n), root))
    return out


_SANDBOX_PARENT: str | None = None


def _sandbox_parent() -> str:
    """One directory per test run for the sandboxes (a worker killed mid-input cannot clean up its own)."""
    global _SANDBOX_PARENT
    if _SANDBOX_PARENT is None:
        _SANDBOX_PARENT = tempfile.mkdtemp(prefix="mailvm-fuzz-run-")
    return _SANDBOX_PARENT


class Sandbox:
    """A private directory for one input: ``work/`` (the current directory during the run, must stay
    empty), ``spool/`` (the spool) and the input file; anything else appearing is a path-traversal."""

    def __init__(self) -> None:
        self._tmp = tempfile.TemporaryDirectory(prefix="mailvm-fuzz-", dir=_sandbox_parent())
        self.root = Path(self._tmp.name)
        self.work = self.root / "work"
        self.work.mkdir()
        self.spool_dir = self.root / "spool"
        self.input = self.root / "input"

    def __enter__(self) -> "Sandbox":
        return self

    def __exit__(self, *exc) -> None:
        self._tmp.cleanup()

    @contextlib.contextmanager
    def in_work_dir(self) -> Iterator[None]:
        with contextlib.chdir(self.work):
            yield

    def check_contained(self, spool) -> None:
        """Nothing was written outside the spool: the sandbox holds only work/ (empty), spool/, input."""
        extra = {p for p in _tree(self.root) if not p.startswith(("spool", "work")) and p != "input"}
        assert extra == set(), f"files written outside the spool: {sorted(extra)[:5]}"
        assert _tree(self.work) == set(), f"files written in the current directory: {sorted(_tree(self.work))[:5]}"
        for p in spool.root.iterdir():
            st_ = os.lstat(p)
            assert stat.S_ISREG(st_.st_mode), f"{p.name} in the spool is not a regular file"


def check_extraction(res, spool, cfg, started: float, slack_s: float = 5.0) -> None:
    """The properties every extraction must keep, whatever the input."""
    elapsed = time.monotonic() - started
    assert elapsed < cfg.time_budget_s + slack_s, f"extraction took {elapsed:.1f} s (budget {cfg.time_budget_s} s)"
    internal = [f for f in [*res.findings, *(f for a in res.artifacts for f in a.findings)] if f.id == "extract_error"]
    assert not internal, f"internal error (a crash caught as a finding): {internal[0].detail}"
    assert len(spool.artifacts) <= cfg.max_artifacts
    assert spool.budget.total_bytes <= cfg.max_total_bytes
    on_disk = 0
    root = spool.root.resolve()
    for art in res.artifacts:
        p = Path(art.path)
        assert p.resolve().parent == root, f"artifact outside the spool: {art.path}"
        st_ = os.lstat(p)
        assert stat.S_ISREG(st_.st_mode)
        assert st_.st_size == art.size <= cfg.max_file_bytes
        assert art.depth <= cfg.max_depth, f"{art.name} at depth {art.depth} > {cfg.max_depth}"
        on_disk += st_.st_size
    assert on_disk <= cfg.max_total_bytes
    check_memory()


def run_target(target: str, fn: Callable[[], object]) -> object:
    count(target)
    return fn()
