"""Session fixtures for the mail path (see maillab.py): real servers, all killed at teardown,
their logs attached to a failing test's report."""

from __future__ import annotations

import shutil
import signal

import pytest
from maillab import POLICIES, SASL_PASSWORD, SASL_USER, MailLab

from mailvm.lab.common import free_port, lab_config, lab_dir


@pytest.fixture(scope="session")
def mail_lab():
    if shutil.which("postfix") is None:
        pytest.skip("postfix is not installed (scripts/setup.sh installs it)")
    from mailvm.lab.postfix import LabPostfix

    root = lab_dir("mailvm-maillab-")
    smtp_port, milter_port = free_port(), free_port()
    (root / "policy.d").mkdir()
    for domain, text in POLICIES.items():
        (root / "policy.d" / f"{domain}.toml").write_text(text)
    config = root / "mailvm.toml"
    config.write_text(lab_config(root, milter_port, smtp_port=smtp_port, backend="process", slots=2,
                                 job_timeout_s=20, idle_s=2, max_wait_s=60))
    # SMTP-AUTH users where Cyrus SASL's saslpasswd2 is installed (make setup installs sasl2-bin)
    users = {SASL_USER: SASL_PASSWORD} if shutil.which("saslpasswd2", path="/usr/sbin:/usr/bin") else {}
    postfix = LabPostfix(root / "postfix", port=smtp_port, milter=f"inet:127.0.0.1:{milter_port}",
                         sasl_users=users)
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
