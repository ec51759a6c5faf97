"""The per-message options reach the worker unchanged (issue 12 item 6 regressions).

* ``detonate_kinds = []`` detonates nothing (it used to become "every kind");
* a domain's ``links.max_bytes`` bounds the download (it used to be dropped).

Runs the real worker side (``init_worker`` + ``scan_path``) in this process with a
real scanned table, job queue and HTTP server on 127.0.0.1.
"""

from __future__ import annotations

import email.message
import http.server
import threading
import time

import pytest

from job_helpers import scan_job
from mailvm.milter import pipeline


@pytest.fixture
def worker(tmp_path):
    cfg = tmp_path / "mailvm.toml"
    cfg.write_text(
        f'[scantable]\npath = "{tmp_path}/table"\n[pool]\nwork_dir = "{tmp_path}/pool"\n'
        f'[spool]\ndir = "{tmp_path}/spool"\n[links]\nallow_networks = ["127.0.0.0/8"]\n'
    )
    pipeline.init_worker(str(cfg))
    yield tmp_path
    pipeline._worker = None


@pytest.fixture
def web():
    body = b"#!/bin/sh\n" + b"echo x\n" * 20000

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *a):
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{srv.server_address[1]}/tool.sh"
    srv.shutdown()


def _message(tmp_path, text="hello", attach=True):
    m = email.message.EmailMessage()
    m["From"], m["To"], m["Subject"] = "a@b.example", "c@d.example", "x"
    m.set_content(text)
    if attach:
        m.add_attachment(b"#!/bin/sh\necho unseen " + str(time.time()).encode() + b"\n", maintype="application",
                         subtype="x-sh", filename="run.sh")
    p = tmp_path / "msg.eml"
    p.write_bytes(m.as_bytes())
    return str(p)


def test_empty_detonate_kinds_detonates_nothing(worker):
    report = pipeline.scan_path(scan_job(_message(worker), time.monotonic() + 3, kinds=[]))
    script = [a for a in report["artifacts"] if a["name"] == "run.sh"][0]
    assert script["source"] == "triage"  # not queued for a VM (it would be "pending" at the deadline)
    report = pipeline.scan_path(scan_job(_message(worker), time.monotonic() + 1, kinds=["script"]))
    script = [a for a in report["artifacts"] if a["name"] == "run.sh"][0]
    assert script["source"] == "pending"  # the control: with the kind listed it waits for a VM


def test_domain_links_max_bytes_applies(worker, web):
    report = pipeline.scan_path(scan_job(_message(worker, f"get it at {web}", attach=False), time.monotonic() + 20,
                                         detonate=False, links=True, max_links=5, max_link_bytes=1000))
    downloads = [a for a in report["artifacts"] if a["size"] > 0 and "tool" in a["name"]]
    assert downloads and downloads[0]["size"] <= 1000
