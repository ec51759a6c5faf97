"""The Redis scanned table and job queue against a real redis-server on 127.0.0.1."""

from __future__ import annotations

import hashlib
import multiprocessing
import threading
import time

import pytest

from mailvm.config import ScanTableConfig
from mailvm.verdict import Finding, Verdict
from redis_helpers import REDIS_SERVER, RedisServer

pytestmark = [pytest.mark.redis,
              pytest.mark.skipif(not REDIS_SERVER, reason="redis-server is not installed (make setup installs it)")]


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory):
    srv = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield srv
    srv.stop()


@pytest.fixture
def table(redis_server, request):
    from mailvm.store.redis_table import RedisScanTable

    cfg = ScanTableConfig(path="unused", pending_ttl_s=2.0)
    t = RedisScanTable(cfg, redis_server.url, prefix=f"t{abs(hash(request.node.name))}:")
    yield t
    t.close()


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def test_claim_single_flight_publish_wakes_waiter(table):
    key = sha("a")
    assert table.get(key) is None
    assert table.claim(key, "host:1:a").won
    lost = table.claim(key, "host:2:b")
    assert not lost.won and lost.entry.state == "pending"
    got = {}

    def waiter():
        got["v"] = table.wait(key, time.monotonic() + 20)
        got["at"] = time.monotonic()

    th = threading.Thread(target=waiter)
    th.start()
    time.sleep(0.3)
    published = time.monotonic()
    table.publish(key, Verdict.from_findings([Finding("eicar", 10)], source="triage"))
    th.join(20)
    assert got["v"].verdict == "malicious"
    assert got["at"] - published < 2.0  # woken by pub/sub, not by the 5 s re-read
    assert table.get(key).verdict == "malicious"
    assert table.stats()["done"] == 1


def test_many_processes_claim_one_winner(redis_server):
    key = sha("race")
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(4) as pool:
        results = pool.starmap(_claim_in_process, [(redis_server.url, key, f"h:{i}:x") for i in range(8)])
    assert sum(results) == 1


def _claim_in_process(url, key, owner):
    from mailvm.store.redis_table import RedisScanTable

    return RedisScanTable(ScanTableConfig(path="unused"), url, prefix="race:").claim(key, owner).won


def test_claim_expires_unless_refreshed_and_release_wakes(table):
    key = sha("b")
    assert table.claim(key, "host:1:a").won
    time.sleep(1.2)
    assert table.refresh(key, "host:1:a")
    time.sleep(1.2)
    assert not table.claim(key, "host:2:b").won  # refreshed: still live after 2.4 s > ttl
    assert not table.refresh(key, "someone-else")
    time.sleep(2.3)
    assert table.claim(key, "host:2:b").won  # not refreshed: expired, taken over
    t0 = time.monotonic()
    threading.Timer(0.3, lambda: table.release(key, "host:2:b")).start()
    assert table.wait(key, time.monotonic() + 20) is None
    assert time.monotonic() - t0 < 2.0


def test_other_engine_version_is_a_miss_and_reclaimable(redis_server, table):
    from mailvm.store.redis_table import RedisScanTable

    key = sha("c")
    table.publish(key, Verdict.from_findings([], source="triage"))
    newer = RedisScanTable(table.cfg, redis_server.url, engine_version="other", prefix=table.prefix)
    assert newer.get(key) is None
    assert newer.claim(key, "host:1:z").won
    assert table.forget(key) and table.get(key) is None


def test_job_queue_redelivers_a_dead_workers_job(redis_server, tmp_path):
    from mailvm.store.redis_queue import RedisJobQueue

    sample = tmp_path / "sample.sh"
    sample.write_bytes(b"#!/bin/sh\necho hi\n")
    digest = hashlib.sha256(sample.read_bytes()).hexdigest()
    producer = RedisJobQueue(redis_server.url, tmp_path / "p", consumer="mx1", prefix="q1:")
    producer.push({"sha256": digest, "path": str(sample), "name": "sample.sh", "kind": "script",
                   "static_findings": [Finding("x", 1)]})
    a = RedisJobQueue(redis_server.url, tmp_path / "a", consumer="pool-a", prefix="q1:", reclaim_idle_s=1)
    b = RedisJobQueue(redis_server.url, tmp_path / "b", consumer="pool-b", prefix="q1:", reclaim_idle_s=1)
    job = a.pop(block_s=2)
    assert job["sha256"] == digest and open(job["path"], "rb").read() == sample.read_bytes()
    assert b.pop() is None  # held by a, not idle long enough
    time.sleep(0.7)
    a.heartbeat(job)
    time.sleep(0.7)
    assert b.pop() is None  # the heartbeat kept it a's
    time.sleep(1.3)  # a "died": no heartbeat
    again = b.pop()
    assert again is not None and again["sha256"] == digest and again["_stream_id"] == job["_stream_id"]
    b.done(again)
    assert len(b) == 0 and b.pop() is None


def test_job_queue_pop_blocks_until_a_push(redis_server, tmp_path):
    from mailvm.store.redis_queue import RedisJobQueue

    sample = tmp_path / "f"
    sample.write_bytes(b"x" * 10)
    digest = hashlib.sha256(b"x" * 10).hexdigest()
    consumer = RedisJobQueue(redis_server.url, tmp_path / "c", consumer="c", prefix="q2:")
    producer = RedisJobQueue(redis_server.url, tmp_path / "p", consumer="p", prefix="q2:")
    threading.Timer(0.5, lambda: producer.push({"sha256": digest, "path": str(sample)})).start()
    t0 = time.monotonic()
    job = consumer.pop(block_s=10)
    assert job is not None and 0.3 < time.monotonic() - t0 < 5


def test_waiting_jobs_keep_their_claims_live_past_the_ttl(redis_server, tmp_path):
    """A Redis backlog longer than pending_ttl_s: the pool service's refresh keeps each waiting job's
    claim live (its owner, the scan worker that queued it), so no other worker claims and runs it again."""
    from mailvm.store.redis_queue import RedisJobQueue
    from mailvm.store.redis_table import RedisScanTable
    from mailvm.vmpool.service import refresh_waiting

    ttl = 5.0
    table = RedisScanTable(ScanTableConfig(path="unused", pending_ttl_s=ttl), redis_server.url, prefix="t-wait:")
    producer = RedisJobQueue(redis_server.url, tmp_path / "p", consumer="mx1", prefix="q3:")
    pool = RedisJobQueue(redis_server.url, tmp_path / "pool", consumer="pool-a", prefix="q3:")
    digests = []
    for i in range(1203):  # more than two pages of the listing
        f = tmp_path / f"s{i}"
        f.write_bytes(b"sample %d" % i)
        d = hashlib.sha256(f.read_bytes()).hexdigest()
        digests.append(d)
        assert table.claim(d, f"mx1:{i}").won
        producer.push({"sha256": d, "path": str(f), "owner": f"mx1:{i}"})
    running = pool.pop()  # one is running: still listed, and still refreshed
    assert running is not None and running["sha256"] == digests[0]
    assert [r["sha256"] for r in pool.waiting()] == digests
    assert len(list(pool.waiting(limit=700))) == 700
    assert refresh_waiting(pool, table) == len(digests)
    t0 = time.monotonic()
    while time.monotonic() - t0 < ttl + 1:  # refreshed every ttl/3, as the pool service does
        time.sleep(ttl / 3)
        assert refresh_waiting(pool, table) == len(digests)
    assert not table.claim(digests[-1], "mx2:other").won  # still live: nobody queues it twice
    time.sleep(ttl + 0.5)  # no refresh: the claims go stale and may be taken over
    assert table.claim(digests[-1], "mx2:other").won
    table.close()
