"""Metrics registry and the per-message log line (no services needed)."""

from __future__ import annotations

import json
import time
import urllib.request

import pytest

from mailvm.obs.metrics import new_metrics, start_server
from mailvm.obs.msglog import MessageRecord, render


def _value(metrics, name, labels=None):
    return metrics.registry.get_sample_value(name, labels or {})


def test_observe_message_counts_verdicts_cache_and_stages():
    m = new_metrics()
    arts = [{"source": "cache", "kind": "script", "verdict": "clean"},
            {"source": "detonation", "kind": "executable", "verdict": "malicious"}]
    m.observe_message("malicious", "reject", 1.5, {"extract": 0.01, "triage": 0.02, "bogus": 3}, arts)
    m.observe_message("clean", "tag", 0.01)
    assert _value(m, "mailvm_messages_total", {"verdict": "malicious", "action": "reject"}) == 1
    assert _value(m, "mailvm_messages_total", {"verdict": "clean", "action": "tag"}) == 1
    assert _value(m, "mailvm_cache_lookups_total", {"result": "hit"}) == 1
    assert _value(m, "mailvm_cache_lookups_total", {"result": "miss"}) == 1
    assert _value(m, "mailvm_detonations_total", {"kind": "executable", "outcome": "malicious"}) == 1
    assert _value(m, "mailvm_stage_seconds_count", {"stage": "extract"}) == 1
    assert _value(m, "mailvm_stage_seconds_count", {"stage": "bogus"}) is None
    assert _value(m, "mailvm_message_seconds_count") == 2


def test_pool_collector_reads_status_and_survives_garbage():
    status = {"state": "running", "updated_at": time.time(), "slots": {"ready": 2, "busy": 1, "target": 3},
              "queue": 4, "jobs": {"submitted": 9, "done": 7, "verdicts": {"clean": 5, "malicious": 2}},
              "handover_ms": {"median": 1.6, "p95": 4.0}, "run_s": {"median": 3.0, "p95": None}}
    m = new_metrics(lambda: status)
    assert _value(m, "mailvm_pool_up") == 1
    assert _value(m, "mailvm_pool_slots", {"state": "busy"}) == 1
    assert _value(m, "mailvm_pool_queue_depth") == 4
    assert _value(m, "mailvm_pool_verdicts_total", {"verdict": "malicious"}) == 2
    assert _value(m, "mailvm_pool_handover_seconds", {"quantile": "0.5"}) == pytest.approx(0.0016)

    def broken():
        raise OSError("no status")
    m2 = new_metrics(broken)
    assert _value(m2, "mailvm_pool_up") == 0
    stale = dict(status, updated_at=time.time() - 3600)
    assert _value(new_metrics(lambda: stale), "mailvm_pool_up") == 0


def test_metrics_served_over_http_on_loopback(free_port=None):
    import socket
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    m = new_metrics()
    m.observe_message("clean", "tag", 0.2)
    server = start_server(m, f"127.0.0.1:{port}")
    try:
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    finally:
        server.shutdown()
    assert 'mailvm_messages_total{action="tag",verdict="clean"} 1.0' in body


def test_message_line_text_and_json_are_one_line_and_bounded():
    rec = MessageRecord(queue_id="4Q1x", client_ip="192.0.2.7", client_name="mx.example.net", auth_user="",
                        sender="a@b.example", recipients=[f"u{i}@example.com" for i in range(60)], size=1234,
                        message_id="<id\r\nInjected: yes@x>", verdict="malicious", score=9, action="reject",
                        domain="example.com", rule="actions.malicious", reason="malicious: x.exe (eicar)",
                        timings={"extract": 0.01, "total": 0.5})
    text = render(rec)
    assert text.startswith("Blocked MALICIOUS queue_id=4Q1x client=\"[192.0.2.7] mx.example.net\"")
    assert "\n" not in text and "\r" not in text
    assert "+10 more" in text and "domain=example.com" in text and 'time="extract:0.010,total:0.500"' in text
    data = json.loads(render(rec, "json"))
    assert data["recipients_more"] == 10 and data["action"] == "reject" and "\n" not in data["message_id"]


def test_mvctl_top_once_and_json_against_a_live_endpoint(capsys):
    import socket

    from mailvm.cli.mvctl import main

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    m = new_metrics(lambda: {"state": "running", "updated_at": time.time(), "slots": {"ready": 2, "busy": 0}})
    for _ in range(3):
        m.observe_message("clean", "tag", 0.02, artifacts=[{"source": "cache"}])
    m.observe_message("malicious", "reject", 4.0, artifacts=[{"source": "detonation", "kind": "script", "verdict": "malicious"}])
    server = start_server(m, f"127.0.0.1:{port}")
    try:
        url = f"http://127.0.0.1:{port}/metrics"
        assert main(["top", "--url", url, "--json"]) == 0
        data = json.loads(capsys.readouterr().out)
        assert data["messages"] == 4 and data["by_action"] == {"reject": 1, "tag": 3}
        assert data["cache_hit_ratio"] == 0.75 and data["pool"]["up"] and data["pool"]["slots"]["ready"] == 2
        assert data["latency_s"]["p50"] == 0.025 and data["latency_s"]["p95"] == 5
        assert main(["top", "--url", url, "--once"]) == 0
        assert "verdicts clean 3  malicious 1" in capsys.readouterr().out
    finally:
        server.shutdown()
    assert main(["top", "--url", url, "--once"]) == 2
