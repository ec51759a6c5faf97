"""The whole unseen-file path over Redis: a scan worker enqueues on the stream and waits on the
Redis table; a pool service (the process backend) takes the job from the stream, detonates it and
publishes the verdict; a second scanner gets it from the table without a second detonation."""

from __future__ import annotations

import email.message
import threading
import time

import pytest

from mailvm.milter import pipeline
from job_helpers import scan_job
from redis_helpers import REDIS_SERVER, RedisServer
from test_windows_launchers import SANDBOX as SANDBOX_REASON

pytestmark = [pytest.mark.redis, pytest.mark.sandbox, pytest.mark.slow,
              pytest.mark.skipif(not REDIS_SERVER, reason="redis-server is not installed (make setup installs it)"),
              pytest.mark.skipif(SANDBOX_REASON is not None, reason=f"sandbox unavailable: {SANDBOX_REASON}")]


def test_unseen_script_detonated_once_through_redis(tmp_path):
    from mailvm.config import load_config
    from mailvm.store import open_table
    from mailvm.vmpool import service

    srv = RedisServer(tmp_path / "redis").start()
    cfg_path = tmp_path / "mailvm.toml"
    cfg_path.write_text(
        f'[spool]\ndir = "{tmp_path}/spool"\n[scantable]\npath = "{tmp_path}/t"\nurl = "{srv.url}"\n'
        f'[pool]\nbackend = "process"\nslots = 1\nwork_dir = "{tmp_path}/pool"\nqueue_url = "{srv.url}"\n'
        f'job_timeout_s = 20\nidle_s = 1\n[links]\nenabled = false\n')
    cfg = load_config(cfg_path)
    stop = threading.Event()
    pool = threading.Thread(target=service.run, args=(cfg, stop), daemon=True)
    pool.start()
    try:
        pipeline.init_worker(str(cfg_path))
        m = email.message.EmailMessage()
        m["Subject"] = "redis path"
        m.set_content("see attached")
        script = b"#!/bin/sh\nmkdir -p ~/.config/autostart\necho unseen-" + str(time.time_ns()).encode() + b"\n"
        m.add_attachment(script, maintype="application", subtype="x-sh", filename="run.sh")
        msg = tmp_path / "m.eml"
        msg.write_bytes(m.as_bytes())
        job = scan_job(msg, time.monotonic() + 120, kinds=["script"])
        report = pipeline.scan_path(job)
        art = [a for a in report["artifacts"] if a["name"] == "run.sh"][0]
        assert art["source"] == "detonation", art
        # the verdict is in the shared table: a second message is answered from it
        again = pipeline.scan_path(job)
        assert [a for a in again["artifacts"] if a["name"] == "run.sh"][0]["source"] == "cache"
        table = open_table(cfg)
        stored = table.get(art["sha256"])
        assert stored is not None and stored.source == "detonation"  # in Redis, for every host
        assert table.r.xlen("mailvm:jobs") == 0  # acknowledged and removed from the stream
    finally:
        stop.set()
        pool.join(timeout=60)
        pipeline._worker = None
        srv.stop()


def test_a_running_job_is_kept_alive_and_no_other_pool_worker_takes_it(tmp_path):
    """The pool service marks the jobs it runs alive (RedisJobQueue.heartbeat): a job that runs
    longer than the reclaim time is not taken over by another consumer while its worker lives."""
    import hashlib

    from mailvm.config import load_config
    from mailvm.store import open_table
    from mailvm.store.redis_queue import RedisJobQueue
    from mailvm.verdict import Finding
    from mailvm.vmpool import service
    from mailvm.vmpool.pool import Pool
    from mailvm.vmpool.select import make_backend

    srv = RedisServer(tmp_path / "redis").start()
    cfg_path = tmp_path / "mailvm.toml"
    cfg_path.write_text(
        f'[scantable]\npath = "{tmp_path}/t"\nurl = "{srv.url}"\n'
        f'[pool]\nbackend = "process"\nslots = 1\nwork_dir = "{tmp_path}/pool"\nqueue_url = "{srv.url}"\n'
        f'job_timeout_s = 30\nidle_s = 1\njob_takeover_s = 3\n')
    cfg = load_config(cfg_path)
    assert service.heartbeat_interval(cfg) == 0.5
    sample = tmp_path / "slow.sh"
    sample.write_bytes(b"#!/bin/sh\n# " + str(time.time_ns()).encode() + b"\nsleep 8\necho done\n")
    digest = hashlib.sha256(sample.read_bytes()).hexdigest()
    table = open_table(cfg)
    owner = "mx1:1:worker"  # as a scan worker does: claim the file, then queue it under that claim
    assert table.claim(digest, owner).won
    producer = RedisJobQueue(srv.url, tmp_path / "p", consumer="mx1")
    producer.push({"sha256": digest, "path": str(sample), "name": "slow.sh", "kind": "script",
                   "static_findings": [Finding("x", 1)], "owner": owner})
    # the other consumer takes over a job silent for 1.5 s; the job runs 8 s; the pool beats every 0.5 s
    worker = RedisJobQueue(srv.url, tmp_path / "w", consumer="pool-a", reclaim_idle_s=3)
    other = RedisJobQueue(srv.url, tmp_path / "o", consumer="pool-b", reclaim_idle_s=1.5)
    stop = threading.Event()
    t = threading.Thread(target=service._serve, args=(cfg, stop, worker, table, Pool, make_backend), daemon=True)
    t.start()
    try:
        end = time.monotonic() + 60
        while time.monotonic() < end and producer.r.xpending(producer.stream, producer.group)["pending"] == 0:
            time.sleep(0.05)
        assert producer.r.xpending(producer.stream, producer.group)["pending"] == 1, "the pool took no job"
        taken = []
        while time.monotonic() < end and getattr(table.get(digest), "state", None) != "done":
            got = other.pop()  # 1 s of silence would hand it over
            if got is not None:
                taken.append(got)
            time.sleep(0.3)
        assert taken == [], "another consumer took over a job that was still running"
        verdict = table.get(digest)
        assert verdict is not None and verdict.source == "detonation"
        end = time.monotonic() + 10
        while time.monotonic() < end and len(producer) > 0:
            time.sleep(0.05)
        assert len(producer) == 0  # acknowledged once done
    finally:
        stop.set()
        t.join(timeout=60)
        srv.stop()
