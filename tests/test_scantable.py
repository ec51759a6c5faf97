"""The scanned table on a real diskcache: single flight across threads and processes,
waiting, expiry of claims and verdicts, corrupt values, counters."""

from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing
import os
import sqlite3
import threading
import time
from pathlib import Path

import diskcache
import pytest

from mailvm import scantable
from mailvm.config import ScanTableConfig
from mailvm.scantable import Claim, ScanTable, ScanTableError
from mailvm.verdict import DONE, ENGINE_VERSION, MALICIOUS, PENDING, Finding, Verdict

MP = multiprocessing.get_context("spawn")


def sha(n: int | str) -> str:
    return hashlib.sha256(str(n).encode()).hexdigest()


def cfg_for(path: Path, **kw) -> ScanTableConfig:
    return ScanTableConfig(path=str(path), **kw)


def bad_verdict() -> Verdict:
    return Verdict.from_findings([Finding("ransom_note_written", 9, "README.txt", "guest")], source="detonation")


@pytest.fixture
def table(tmp_path):
    t = ScanTable(cfg_for(tmp_path / "st"))
    yield t
    t.close()


# ---------------------------------------------------------------- helpers run in child processes


def _claim_worker(path: str, pending_ttl_s: float, keys: list[str], barrier, results, name: str) -> None:
    t = ScanTable(ScanTableConfig(path=path, pending_ttl_s=pending_ttl_s))
    try:
        for key in keys:
            barrier.wait(timeout=60)
            c = t.claim(key, name)
            results.put((key, name, c.won, None if c.entry is None else c.entry.state))
    finally:
        t.close()


def _publish_later(path: str, key: str, delay: float, score: int) -> None:
    t = ScanTable(ScanTableConfig(path=path))
    time.sleep(delay)
    t.publish(key, Verdict.from_findings([Finding("child_published", score, "", "test")]))
    t.close()


def _get_and_close(path: str, key: str) -> None:
    t = ScanTable(ScanTableConfig(path=path))
    assert t.get(key) is not None
    t.get(sha("nothing here"))
    t.close()


def _run_claimers(path: str, keys: list[str], n: int, pending_ttl_s: float = 600.0) -> list[tuple]:
    barrier = MP.Barrier(n)
    results = MP.Queue()
    procs = [
        MP.Process(target=_claim_worker, args=(path, pending_ttl_s, keys, barrier, results, f"proc{i}"))
        for i in range(n)
    ]
    for p in procs:
        p.start()
    out = [results.get(timeout=120) for _ in range(n * len(keys))]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    return out


class _Bomb:
    """Pickles fine, explodes when unpickled: an undecodable stored value."""

    def __reduce__(self):
        return (_explode, ())


def _explode():
    raise ValueError("cannot rebuild this object")


# ---------------------------------------------------------------- basic flow


def test_miss_claim_pending_publish_done(table):
    key = sha(1)
    assert table.get(key) is None
    first = table.claim(key, "dispatcher-1")
    assert first == Claim(True, None)
    for other in ("dispatcher-2", "dispatcher-3", "dispatcher-1"):  # even the same owner cannot claim twice
        lost = table.claim(key, other)
        assert not lost.won
        assert lost.entry is not None and lost.entry.state == PENDING
    pending = table.get(key)
    assert pending is not None and pending.state == PENDING and pending.verdict != "clean"
    table.publish(key, bad_verdict())
    done = table.get(key)
    assert done is not None and done.state == DONE and done.verdict == MALICIOUS and done.score == 9
    assert done.findings == [Finding("ransom_note_written", 9, "README.txt", "guest")]
    again = table.claim(key, "dispatcher-4")
    assert not again.won and again.entry is not None and again.entry.verdict == MALICIOUS
    # other keys are independent
    assert table.get(sha(2)) is None


def test_values_are_json_text_not_pickles(tmp_path):
    path = tmp_path / "st"
    with ScanTable(cfg_for(path)) as t:
        t.claim(sha(1), "o")
        t.publish(sha(2), bad_verdict())
    raw = diskcache.Cache(str(path))
    pending = json.loads(raw[sha(1)])
    assert pending["state"] == PENDING and pending["owner"] == "o" and isinstance(pending["claimed_at"], float)
    done = json.loads(raw[sha(2)])
    assert done["state"] == DONE and done["verdict"] == MALICIOUS and "stored_at" in done
    raw.close()


def test_threads_single_flight(table):
    keys = [sha(f"t{i}") for i in range(5)]
    n = 16
    barrier = threading.Barrier(n)
    wins: list[tuple[str, str]] = []
    lock = threading.Lock()

    def run(i: int) -> None:
        for key in keys:
            barrier.wait(timeout=30)
            if table.claim(key, f"thread{i}").won:
                with lock:
                    wins.append((key, f"thread{i}"))

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=60)
    assert sorted(k for k, _ in wins) == sorted(keys)


@pytest.mark.slow
def test_processes_single_flight(tmp_path):
    path = str(tmp_path / "st")
    keys = [sha(f"p{i}") for i in range(10)]
    n = 8
    out = _run_claimers(path, keys, n)
    for key in keys:
        rows = [r for r in out if r[0] == key]
        assert len(rows) == n
        winners = [r for r in rows if r[2]]
        assert len(winners) == 1, rows
        assert all(r[3] == PENDING for r in rows if not r[2])
    with ScanTable(ScanTableConfig(path=path)) as t:
        s = t.stats()
        assert s["claims_won"] == len(keys)
        assert s["claims_lost"] == len(keys) * (n - 1)
        assert s["pending"] == len(keys)


# ---------------------------------------------------------------- waiting


def test_wait_wakes_on_publish_from_thread_without_polling(table, monkeypatch):
    # with polling slowed to 5 s, only the in-process condition can wake the waiter in time
    monkeypatch.setattr(scantable, "POLL_MIN_S", 5.0)
    monkeypatch.setattr(scantable, "POLL_MAX_S", 5.0)
    key = sha("w")
    assert table.claim(key, "owner").won
    got: list = []

    def waiter():
        got.append(table.wait(key, time.monotonic() + 30))
        got.append(time.monotonic())

    threads = [threading.Thread(target=waiter) for _ in range(3)]
    for th in threads:
        th.start()
    time.sleep(0.3)
    published = time.monotonic()
    table.publish(key, bad_verdict())
    for th in threads:
        th.join(timeout=10)
    verdicts = [g for g in got if isinstance(g, Verdict)]
    stamps = [g for g in got if isinstance(g, float)]
    assert len(verdicts) == 3 and all(v.verdict == MALICIOUS for v in verdicts)
    assert max(stamps) - published < 2.0


def test_wait_wakes_on_publish_from_other_process(table):
    key = sha("wp")
    assert table.claim(key, "owner").won
    child = MP.Process(target=_publish_later, args=(table.path, key, 0.5, 8))
    child.start()
    start = time.monotonic()
    v = table.wait(key, start + 30)
    elapsed = time.monotonic() - start
    child.join(timeout=30)
    assert child.exitcode == 0
    assert v is not None and v.state == DONE and v.score == 8 and v.findings[0].id == "child_published"
    assert elapsed < 15


def test_wait_is_woken_by_the_wake_bus_not_by_a_timer(table, monkeypatch):
    """The publisher's process tells the waiter's (mailvm.wakebus): with the safety-net timer set
    to 60 s, a verdict published in another process half a second later still ends the wait long
    before the timer could have."""
    import mailvm.scantable as st

    monkeypatch.setattr(st, "BUS_FALLBACK_S", 60.0)
    key = sha("bus")
    assert table.claim(key, "owner").won
    child = MP.Process(target=_publish_later, args=(table.path, key, 0.5, 8))
    child.start()
    start = time.monotonic()
    v = table.wait(key, start + 120)
    elapsed = time.monotonic() - start
    child.join(timeout=30)
    assert v is not None and v.state == DONE and v.score == 8
    assert elapsed < 30, f"woken after {elapsed:.1f} s: by the 60 s timer, not by the bus"
    # one socket per listening process, in the table's own directory, removed on close
    socks = list((Path(table.path) / "wake").glob("*.sock"))
    assert [p.name.split("-")[0] for p in socks] == [str(os.getpid())]
    table.close()
    assert list((Path(table.path) / "wake").glob("*.sock")) == []


def test_a_dead_listeners_socket_is_removed_by_the_next_sender(tmp_path):
    import socket as _socket

    from mailvm.wakebus import WakeBus

    bus_dir = tmp_path / "wake"
    bus_dir.mkdir()
    dead = _socket.socket(_socket.AF_UNIX, _socket.SOCK_DGRAM)
    dead.bind(str(bus_dir / "999999-dead.sock"))
    dead.close()  # its file stays: as after a kill -9
    got = []
    bus = WakeBus(bus_dir)
    assert bus.listen(got.append)
    assert bus.notify("k1") == 1  # to itself; the dead one refused and was removed
    assert not (bus_dir / "999999-dead.sock").exists()
    end = time.monotonic() + 10
    while not got and time.monotonic() < end:
        time.sleep(0.01)
    assert got == ["k1"]
    bus.close()


def test_wait_returns_none_at_deadline(table):
    key = sha("dl")
    assert table.claim(key, "owner").won
    start = time.monotonic()
    assert table.wait(key, start + 0.4) is None
    elapsed = time.monotonic() - start
    assert 0.4 <= elapsed < 2.0
    # a deadline already past: no wait at all
    start = time.monotonic()
    assert table.wait(key, start - 1) is None
    assert time.monotonic() - start < 0.5


def test_wait_on_done_and_on_miss_returns_at_once(table):
    key = sha("d")
    table.publish(key, bad_verdict())
    start = time.monotonic()
    v = table.wait(key, start + 30)
    assert v is not None and v.verdict == MALICIOUS
    assert table.wait(sha("never claimed"), start + 30) is None
    assert time.monotonic() - start < 2.0


def test_wait_returns_early_when_claim_goes_stale(tmp_path):
    with ScanTable(cfg_for(tmp_path / "st", pending_ttl_s=0.5)) as t:
        key = sha("stale-wait")
        assert t.claim(key, "crashed").won
        start = time.monotonic()
        assert t.wait(key, start + 30) is None
        elapsed = time.monotonic() - start
        assert 0.4 <= elapsed < 5


def test_wait_returns_early_on_release_and_forget(table):
    for how in ("release", "forget"):
        key = sha(how)
        assert table.claim(key, "owner").won
        got: list = []
        th = threading.Thread(target=lambda: got.append(table.wait(key, time.monotonic() + 30)))
        start = time.monotonic()
        th.start()
        time.sleep(0.2)
        if how == "release":
            table.release(key, "owner")
        else:
            assert table.forget(key)
        th.join(timeout=10)
        assert got == [None]
        assert time.monotonic() - start < 5
        assert table.claim(key, "next").won


# ---------------------------------------------------------------- claims: stale, release, refresh


@pytest.mark.slow
def test_stale_claim_is_reclaimed_by_exactly_one_process(tmp_path):
    path = str(tmp_path / "st")
    keys = [sha(f"s{i}") for i in range(10)]
    with ScanTable(ScanTableConfig(path=path, pending_ttl_s=0.5)) as t:
        for key in keys:
            assert t.claim(key, "crashed-dispatcher").won
            assert not t.claim(key, "early-bird").won
            assert t.get(key).state == PENDING
        time.sleep(0.7)
        for key in keys:
            assert t.get(key) is None  # stale: a miss
    n = 8
    out = _run_claimers(path, keys, n, pending_ttl_s=0.5)
    for key in keys:
        winners = [r for r in out if r[0] == key and r[2]]
        assert len(winners) == 1, out
    with ScanTable(ScanTableConfig(path=path, pending_ttl_s=600)) as t:
        assert t.stats()["claims_replaced"] == len(keys)
        # the crashed claimer has lost its claim for good
        assert not t.refresh(keys[0], "crashed-dispatcher")


def test_release_only_by_owner(table):
    key = sha("rel")
    assert table.claim(key, "a").won
    table.release(key, "b")  # not the owner: ignored
    assert table.get(key).state == PENDING
    assert not table.claim(key, "b").won
    table.release(key, "a")
    assert table.get(key) is None
    assert table.claim(key, "b").won
    table.publish(key, bad_verdict())
    table.release(key, "b")  # a done verdict is never released
    assert table.get(key).state == DONE


def test_refresh_extends_lease(tmp_path):
    with ScanTable(cfg_for(tmp_path / "st", pending_ttl_s=0.6)) as t:
        key = sha("long analysis")
        assert t.claim(key, "a").won
        end = time.monotonic() + 1.5
        while time.monotonic() < end:
            time.sleep(0.15)
            assert t.refresh(key, "a")
            assert not t.claim(key, "b").won
        assert not t.refresh(key, "b")
        time.sleep(0.8)  # stops refreshing: goes stale, b takes over
        assert t.claim(key, "b").won
        assert not t.refresh(key, "a")
        assert t.refresh(key, "b")
        t.publish(key, bad_verdict())
        assert not t.refresh(key, "b")


def test_take_over_moves_a_queued_claim_to_the_process_that_runs_it(tmp_path):
    """The pool takes a popped job's claim: from then on it dies with the pool (issue 12 item 4)."""
    import os
    import subprocess

    with ScanTable(cfg_for(tmp_path / "st")) as t:
        key = sha("queued")
        assert t.claim(key, "worker-1").won
        assert not t.take_over(key, "worker-2", "pool-x").won  # another owner's live claim: not ours
        node = os.uname().nodename
        dead = subprocess.Popen(["true"])
        dead.wait()
        pool_owner = f"{node}:{dead.pid}:pool-1"  # a pool process that is gone
        assert t.take_over(key, "worker-1", pool_owner).won
        assert not t.refresh(key, "worker-1")  # the worker no longer owns it
        assert t.claim(key, "worker-3").won  # the pool is dead: handed back at once, not after the TTL
        t.publish(key, bad_verdict())
        got = t.take_over(key, "worker-3", "pool-y")
        assert not got.won and got.entry.state == DONE  # known: the popped job is not run
        fresh = sha("forgotten")
        assert t.take_over(fresh, "worker-1", "pool-z").won  # nobody holds it any more: the popper does


# ---------------------------------------------------------------- expiry


def test_verdict_expires_by_age(tmp_path):
    with ScanTable(cfg_for(tmp_path / "st", verdict_ttl_s=3600)) as t:
        old = sha("old")
        t.publish(old, Verdict.from_findings([], analyzed_at=time.time() - 3700))
        assert t.get(old) is None
        assert t.claim(old, "re-analyse").won
        fresh = sha("fresh")
        t.publish(fresh, Verdict.from_findings([], analyzed_at=time.time() - 60))
        assert t.get(fresh).state == DONE
        # an analyzed_at in the future does not make a verdict immortal: stored_at counts
        future = sha("future")
        t.publish(future, Verdict.from_findings([], analyzed_at=time.time() + 10**9))
        assert t.get(future) is not None
    with ScanTable(cfg_for(tmp_path / "st", verdict_ttl_s=0.5)) as t:
        young = sha("young")
        t.publish(young, bad_verdict())
        assert t.get(young).verdict == MALICIOUS
        time.sleep(0.7)
        assert t.get(young) is None
        assert t.get(future) is None
        assert t.wait(young, time.monotonic() + 10) is None
        assert t.claim(young, "again").won


def test_engine_version_change(tmp_path):
    path = tmp_path / "st"
    old = ScanTable(cfg_for(path), engine_version="engine-1")
    new = ScanTable(cfg_for(path), engine_version="engine-2")
    try:
        key = sha("upgraded")
        assert old.claim(key, "old-dispatcher").won
        old.publish(key, Verdict.from_findings([Finding("x", 5)], engine_version="engine-1"))
        assert old.get(key).score == 5
        assert new.get(key) is None
        assert new.claim(key, "new-dispatcher").won
        assert old.get(key).state == PENDING  # a live claim is honoured by every version
        new.publish(key, Verdict.from_findings([Finding("y", 8)], engine_version="engine-2"))
        assert new.get(key).score == 8
        assert old.get(key) is None
        assert old.stats()["expired"] == 1 and new.stats()["done"] == 1
    finally:
        old.close()
        new.close()


def test_expire_removes_stale_expired_other_version_and_corrupt(tmp_path):
    path = tmp_path / "st"
    with ScanTable(cfg_for(path, pending_ttl_s=0.3, verdict_ttl_s=3600)) as t:
        t.claim(sha("stale"), "crashed")
        time.sleep(0.4)
        t.claim(sha("live"), "alive")
        t.publish(sha("fresh"), bad_verdict())
        t.publish(sha("expired"), Verdict.from_findings([], analyzed_at=time.time() - 7200))
        t.publish(sha("other"), Verdict.from_findings([], engine_version="engine-0"))
        raw = diskcache.Cache(str(path))
        raw.set(sha("corrupt"), "{not json")
        raw.close()
        s = t.stats()
        assert (s["entries"], s["done"], s["pending"], s["stale"], s["expired"], s["corrupt"]) == (6, 1, 1, 1, 2, 1)
        assert t.expire() == 4
        assert t.expire() == 0
        assert sorted(k for k, _ in t.iter_entries()) == sorted([sha("live"), sha("fresh")])
        s = t.stats()
        assert (s["entries"], s["done"], s["pending"], s["expired_removed"]) == (2, 1, 1, 4)


# ---------------------------------------------------------------- bad input


def test_corrupt_values_are_dropped_and_claimable(tmp_path, caplog):
    path = tmp_path / "st"
    raw = diskcache.Cache(str(path))
    bad = {
        sha("c1"): "this is not json",
        sha("c2"): b"\x00\x01 bytes",
        sha("c3"): json.dumps({"state": "done", "verdict": "bogus"}),
        sha("c4"): json.dumps({"state": "done", "score": 99}),
        sha("c5"): json.dumps({"state": "pending"}),  # no owner/claimed_at
        sha("c6"): _Bomb(),
        sha("c7"): json.dumps([1, 2, 3]),
        sha("c8"): "[" * 100000,  # deeply nested
    }
    for key, value in bad.items():
        raw.set(key, value)
    raw.close()
    with ScanTable(cfg_for(path)) as t, caplog.at_level(logging.WARNING, logger="mailvm.scantable"):
        for key in list(bad)[:5]:
            assert t.get(key) is None
        for key in list(bad)[5:]:
            assert t.claim(key, "o").won
        assert t.stats()["corrupt_dropped"] == 5
        assert "corrupt" in caplog.text
        for key in list(bad)[:5]:
            assert t.claim(key, "o").won
        assert t.stats()["entries"] == len(bad)


@pytest.mark.parametrize(
    "key",
    [
        "A" * 64,
        "a" * 63,
        "a" * 65,
        "g" * 64,
        " " + "a" * 63,
        "a" * 64 + "\n",
        b"a" * 64,
        None,
        64,
        "../" + "a" * 61,
        scantable.COUNTERS_KEY,
    ],
)
def test_invalid_keys_rejected(table, key):
    for call in (
        lambda: table.get(key),
        lambda: table.claim(key, "o"),
        lambda: table.publish(key, bad_verdict()),
        lambda: table.release(key, "o"),
        lambda: table.refresh(key, "o"),
        lambda: table.wait(key, time.monotonic() + 1),
        lambda: table.forget(key),
    ):
        with pytest.raises(ValueError):
            call()
    assert list(table.iter_entries()) == []


def test_invalid_owner_and_verdict_rejected(table):
    key = sha("v")
    for owner in ("", None, "x" * 201, 7):
        with pytest.raises(ValueError):
            table.claim(key, owner)
    with pytest.raises(ValueError):
        table.publish(key, {"verdict": "clean"})
    with pytest.raises(ValueError):
        table.publish(key, Verdict(state=PENDING))
    with pytest.raises(ValueError):
        table.publish(key, Verdict(score=11))
    with pytest.raises(ValueError):
        table.publish(key, Verdict(verdict="fine"))
    assert table.get(key) is None


def test_oversized_verdict_is_cut_down(table):
    key = sha("big")
    log_entries = [{"event": "write", "path": "x" * 1000, "n": i} for i in range(3000)]
    findings = [Finding(f"f{i}", i % 11, "d" * 400) for i in range(5000)]
    table.publish(key, Verdict.from_findings(findings, log=log_entries))
    v = table.get(key)
    assert v is not None and v.log == [] and len(v.findings) == scantable.MAX_STORED_FINDINGS
    assert all(f.severity == 10 for f in v.findings) and v.score == 10


def test_busy_database_raises_scantable_error(tmp_path):
    path = tmp_path / "st"
    t = ScanTable(cfg_for(path), timeout_s=0.2)
    t.get(sha(0))  # creates the database
    blocker = sqlite3.connect(str(path / "cache.db"), isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    try:
        start = time.monotonic()
        with pytest.raises(ScanTableError, match="busy"):
            t.claim(sha(1), "o")
        with pytest.raises(ScanTableError):
            t.publish(sha(1), bad_verdict())
        assert time.monotonic() - start < 5
        assert t.get(sha(2)) is None  # reads still work while a writer holds the lock
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    assert t.claim(sha(1), "o").won
    t.close()


# ---------------------------------------------------------------- stats, forget, iteration


def test_stats_counts_and_shared_counters(tmp_path):
    path = tmp_path / "st"
    with ScanTable(cfg_for(path)) as t:
        a, b, c = sha("a"), sha("b"), sha("c")
        t.get(a)  # miss
        t.claim(a, "o1")  # won
        t.claim(a, "o2")  # lost
        t.get(a)  # pending hit
        t.publish(a, bad_verdict())
        t.get(a)  # hit
        t.get(a)  # hit
        t.publish(b, Verdict.from_findings([]))
        t.claim(c, "o3")
        s = t.stats()
        assert s["path"] == str(path) and s["engine_version"] == ENGINE_VERSION
        assert (s["entries"], s["done"], s["pending"]) == (3, 2, 1)
        assert s["by_verdict"] == {"clean": 1, "suspicious": 0, "malicious": 1, "error": 0}
        assert (s["hits"], s["misses"], s["pending_hits"]) == (2, 1, 1)
        assert (s["claims_won"], s["claims_lost"], s["published"]) == (2, 1, 2)
        assert s["size_bytes"] > 0 and s["size_limit_bytes"] == ScanTableConfig().size_limit_bytes
        # another process's counts land in the same totals
        child = MP.Process(target=_get_and_close, args=(str(path), a))
        child.start()
        child.join(timeout=60)
        assert child.exitcode == 0
        s = t.stats()
        assert (s["hits"], s["misses"]) == (3, 2)
        # the counters entry is not an entry
        assert s["entries"] == 3


def test_forget_and_iter_entries(table):
    a, b = sha("fa"), sha("fb")
    table.publish(a, bad_verdict())
    table.claim(b, "o")
    entries = dict(table.iter_entries())
    assert set(entries) == {a, b}
    assert entries[a].state == DONE and entries[b].state == PENDING
    assert table.forget(a)
    assert not table.forget(a)
    assert table.get(a) is None
    assert table.forget(b)
    assert list(table.iter_entries()) == []
    assert table.stats()["forgotten"] == 2


def test_include_expired_iteration(tmp_path):
    with ScanTable(cfg_for(tmp_path / "st", verdict_ttl_s=3600)) as t:
        t.publish(sha("old"), Verdict.from_findings([], analyzed_at=time.time() - 7200))
        assert list(t.iter_entries()) == []
        assert [k for k, _ in t.iter_entries(include_expired=True)] == [sha("old")]


def test_size_limit_evicts_oldest(tmp_path):
    # diskcache culls least-recently-stored entries once past the limit
    with ScanTable(cfg_for(tmp_path / "st", size_limit_bytes=1024 * 1024)) as t:
        filler = [{"event": "x" * 900}] * 500  # ~450 KB per verdict, stored in a file
        for i in range(8):
            t.publish(sha(f"e{i}"), Verdict.from_findings([], log=filler))
        assert t.get(sha("e7")) is not None
        assert t.get(sha("e0")) is None
        assert t.stats()["size_bytes"] < 3 * 1024 * 1024


def test_error_verdicts_expire_sooner_than_others(tmp_path):
    """A passing VM fault must not stick for verdict_ttl_s: errors use error_ttl_s."""
    import time as _time

    from mailvm.config import ScanTableConfig
    from mailvm.scantable import ScanTable
    from mailvm.verdict import Verdict, error_verdict

    cfg = ScanTableConfig(path=str(tmp_path / "t"), verdict_ttl_s=3600, error_ttl_s=1)
    with ScanTable(cfg) as table:
        bad, good = "a" * 64, "b" * 64
        for key, verdict in ((bad, error_verdict("slot_failed", "test")), (good, Verdict())):
            assert table.claim(key, "me").won
            table.publish(key, verdict)
        assert table.get(bad) is not None and table.get(good) is not None
        _time.sleep(1.3)
        assert table.get(bad) is None  # expired: the next message re-analyses it
        assert table.get(good) is not None
        assert table.claim(bad, "again").won


def test_claim_of_a_dead_local_process_is_stale_at_once(tmp_path):
    """A killed claimer on this host (node:pid:...) does not block the file for pending_ttl_s."""
    import os as _os
    import subprocess as _sp

    from mailvm.config import ScanTableConfig
    from mailvm.scantable import ScanTable

    dead = _sp.Popen(["true"])
    dead.wait()
    node = _os.uname().nodename
    with ScanTable(ScanTableConfig(path=str(tmp_path / "t"), pending_ttl_s=3600)) as table:
        key, other = "c" * 64, "d" * 64
        assert table.claim(key, f"{node}:{dead.pid}:job1").won
        assert table.claim(key, f"{node}:{_os.getpid()}:job2").won  # the dead owner's claim was stale
        # a live local owner, and owners from other hosts, keep their claims
        assert table.claim(other, f"{node}:{_os.getpid()}:job3").won
        assert not table.claim(other, f"{node}:{_os.getpid()}:job4").won
        assert table.claim("e" * 64, f"elsewhere.example:{dead.pid}:job5").won
        assert not table.claim("e" * 64, f"{node}:{_os.getpid()}:job6").won


def test_claim_of_a_zombie_is_stale(tmp_path):
    """A killed claimer whose parent died too lingers as a zombie until init reaps it: dead all the same."""
    import os as _os

    from mailvm.config import ScanTableConfig
    from mailvm.scantable import ScanTable, owner_is_dead

    pid = _os.fork()
    if pid == 0:
        _os._exit(0)
    try:
        deadline = time.monotonic() + 10
        while open(f"/proc/{pid}/stat", "rb").read().rpartition(b")")[2][1:2] != b"Z":
            assert time.monotonic() < deadline
            time.sleep(0.01)
        owner = f"{_os.uname().nodename}:{pid}:job"
        assert owner_is_dead(owner)
        with ScanTable(ScanTableConfig(path=str(tmp_path / "t"), pending_ttl_s=3600)) as table:
            assert table.claim("f" * 64, owner).won
            assert table.claim("f" * 64, f"{_os.uname().nodename}:{_os.getpid()}:next").won
    finally:
        _os.waitpid(pid, 0)
