"""Session fixtures for the mail path (see maillab.py): real servers, all killed at teardown,
their logs attached to a failing test's report."""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
from pathlib import Path

import pytest
from maillab import POLICIES, MailLab, free_port

@pytest.fixture(scope="session")
def mail_lab():
    if shutil.which("postfix") is None:
        pytest.skip("postfix is not installed (scripts/setup.sh installs it)")
    from mailvm.lab.postfix import LabPostfix

    # Postfix's own users (postfix, nobody for delivery) must traverse the path:
    # pytest's tmp dirs are 0700 root, so the lab lives under /var/tmp
    root = Path(tempfile.mkdtemp(prefix="mailvm-maillab-", dir="/var/tmp"))
    os.chmod(root, 0o755)
    smtp_port, milter_port = free_port(), free_port()
    (root / "policy.d").mkdir()
    for domain, text in POLICIES.items():
        (root / "policy.d" / f"{domain}.toml").write_text(text)
    config = root / "mailvm.toml"
    config.write_text(f"""
[spool]
dir = "{root}/spool"
[scantable]
path = "{root}/scantable"
[pool]
backend = "process"
slots = 2
work_dir = "{root}/pool"
job_timeout_s = 20
idle_s = 2
[links]
enabled = false
[milter]
socket = "inet:{milter_port}@127.0.0.1"
policy_dir = "{root}/policy.d"
workers = 2
[quarantine]
dir = "{root}/quarantine"
release_key = "{root}/release.key"
reinject_host = "127.0.0.1"
reinject_port = {smtp_port}
[policy]
max_wait_s = 60
[policy.actions]
clean = "tag"
suspicious = "tag"
malicious = "reject"
timeout = "tempfail"
error = "tempfail"
""")
    postfix = LabPostfix(root / "postfix", port=smtp_port, milter=f"inet:127.0.0.1:{milter_port}")
    lab = MailLab(root, config, smtp_port, milter_port, postfix)
    try:
        lab.start_mailvm()
        postfix.start()
        yield lab
    finally:
        postfix.stop()
        lab.kill_mailvm(signal.SIGTERM)
        shutil.rmtree(root, ignore_errors=True)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    if rep.when == "call" and rep.failed and "mail_lab" in item.fixturenames:
        lab = item.funcargs.get("mail_lab")
        if lab is not None:
            rep.sections.append(("mailvm log (tail)", "\n".join(lab.log_text().splitlines()[-60:])))
            rep.sections.append(("postfix maillog (tail)", lab.postfix.log_tail(40)))
