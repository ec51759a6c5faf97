"""The web console in a real headless Chromium (selenium + Debian's chromium-driver).

A real QuarantineStore holds an EICAR message; the browser logs in, finds it,
releases it to one of its two recipients, and the release reaches a real SMTP
server on 127.0.0.1 (aiosmtpd) for that recipient only; the audit log shows it.
"""

from __future__ import annotations

import email
import shutil
import socket
import time

import pytest

from mailvm.audit import AuditLog
from mailvm.quarantine import QuarantineStore, release_audited, smtp_deliver
from mailvm.web.app import ConsoleDeps, create_app, serve
from mailvm.web.auth import UsersFile

EICAR = b"X5O!P%@AP[4\\PZX54(P^)7CC)7}$" + b"EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*"

CHROMEDRIVER = shutil.which("chromedriver")
CHROMIUM = shutil.which("chromium")
pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not (CHROMEDRIVER and CHROMIUM),
                       reason="Debian's chromium and chromium-driver are not installed (make setup installs them)"),
]


def _port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


@pytest.fixture
def smtp_sink():
    from aiosmtpd.controller import Controller

    class Sink:
        def __init__(self):
            self.messages = []

        async def handle_DATA(self, server, session, envelope):
            self.messages.append((envelope.mail_from, list(envelope.rcpt_tos), envelope.content))
            return "250 OK"

    handler = Sink()
    ctl = Controller(handler, hostname="127.0.0.1", port=_port())
    ctl.start()
    yield ctl, handler
    ctl.stop()


@pytest.fixture
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--no-first-run", "--disable-quic"):
        opts.add_argument(flag)
    drv = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    drv.set_page_load_timeout(30)
    yield drv
    drv.quit()


def _eicar_message() -> bytes:
    m = email.message.EmailMessage()
    m["From"] = "attacker@bad.example"
    m["To"] = "alice@example.com, bob@example.com"
    m["Subject"] = "Invoice 4711"
    m.set_content("see attachment")
    m.add_attachment(EICAR, maintype="application", subtype="octet-stream", filename="eicar.com")
    return m.as_bytes()


def test_login_find_release_to_one_recipient_and_audit(tmp_path, smtp_sink, browser):
    from selenium.webdriver.common.by import By

    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    def find(elem_id):
        """The element once the page that has it is loaded (a click does not wait for navigation)."""
        return WebDriverWait(browser, 20).until(ec.presence_of_element_located((By.ID, elem_id)))

    ctl, sink = smtp_sink
    store = QuarantineStore(tmp_path / "q")
    decision = {"verdict": "malicious", "score": 10, "action": "quarantine", "reason": "malicious: eicar.com (eicar)",
                "subject": "Invoice 4711"}
    item_id = store.add(_eicar_message(), "attacker@bad.example", ["alice@example.com", "bob@example.com"],
                        decision, "example.com")
    store.add(b"Subject: other\r\n\r\nhello\r\n", "x@y.example", ["carol@example.com"],
              {"verdict": "suspicious", "score": 5, "action": "quarantine", "reason": "suspicious: a.js"}, "example.com")
    audit = AuditLog(tmp_path / "audit.log")
    users = UsersFile(tmp_path / "users")
    users.set_password("admin", "correct horse battery")
    key = b"k" * 32
    deliver = smtp_deliver("127.0.0.1", ctl.port, timeout=10)

    def release(iid, recipients, who):
        return release_audited(store, audit, deliver, key, iid, recipients, who)

    deps = ConsoleDeps(store=store, audit=audit, users=users, release=release, verdict_of=lambda s: None,
                       pool_status=lambda: {"state": "running", "slots": {"ready": 2}}, figures=lambda: {"messages": 1},
                       secret_key=b"s" * 32)
    port = _port()
    server = serve(create_app(deps), f"127.0.0.1:{port}")
    base = f"http://127.0.0.1:{port}"
    try:
        browser.get(base + "/quarantine")
        assert "/login" in browser.current_url  # every page needs a login
        find("name").send_keys("admin")
        find("password").send_keys("wrong password")
        find("login").click()
        assert "wrong name or password" in find("error").text
        find("name").send_keys("admin")
        find("password").send_keys("correct horse battery")
        find("login").click()
        # search finds the EICAR message and not the other one
        find("q").send_keys("invoice")
        find("search-go").click()
        WebDriverWait(browser, 20).until(lambda d: "q=invoice" in d.current_url)
        rows = find("items").find_elements(By.CSS_SELECTOR, "tr.item")
        assert len(rows) == 1 and item_id in rows[0].text and "malicious" in rows[0].text
        rows[0].find_element(By.LINK_TEXT, item_id).click()
        # release to bob only
        find("release-form")
        for box in browser.find_elements(By.CSS_SELECTOR, "input.rcpt"):
            if box.get_attribute("value") == "bob@example.com":
                box.click()
        find("release-some").click()
        WebDriverWait(browser, 20).until(lambda d: "m=" in d.current_url)
        assert "released" in find("flash").text
        deadline = time.monotonic() + 20
        while not sink.messages and time.monotonic() < deadline:
            time.sleep(0.1)
        assert len(sink.messages) == 1
        mail_from, rcpts, content = sink.messages[0]
        assert rcpts == ["bob@example.com"] and mail_from == "attacker@bad.example"
        assert b"X-Mailvm-Release: v1 " + item_id.encode() in content
        # a copy to one of two recipients: the item stays quarantined for the other
        assert store.get(item_id).state == "quarantined"
        # the audit entry, on the item page and on the audit page
        assert "release" in find("item-audit").text
        find("nav-audit").click()
        WebDriverWait(browser, 20).until(lambda d: d.current_url.endswith("/audit"))
        text = find("audit").text
        assert "admin" in text and "to bob@example.com: released" in text and "login_failed" in text
        # a logged-in POST without the CSRF token is refused, and nothing is deleted
        import urllib.error
        import urllib.request
        cookie = browser.get_cookie("session")["value"]
        req = urllib.request.Request(f"{base}/quarantine/{item_id}/delete", data=b"x=1",
                                     headers={"Cookie": f"session={cookie}"})
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(req, timeout=5)
        assert err.value.code == 400
        assert store.get(item_id)
    finally:
        server.shutdown()


def test_mvctl_web_passwd_and_users(tmp_path, monkeypatch, capsys):
    import io

    from mailvm.cli.mvctl import main

    cfg = tmp_path / "mailvm.toml"
    cfg.write_text(f'[web]\nusers_file = "{tmp_path}/users"\n')
    monkeypatch.setattr("sys.stdin", io.StringIO("correct horse battery\n"))
    assert main(["-c", str(cfg), "web", "passwd", "admin", "--stdin"]) == 0
    monkeypatch.setattr("sys.stdin", io.StringIO("short\n"))
    assert main(["-c", str(cfg), "web", "passwd", "bob", "--stdin"]) == 2  # too short
    assert main(["-c", str(cfg), "web", "users", "--json"]) == 0
    assert '"admin"' in capsys.readouterr().out
    assert UsersFile(tmp_path / "users").check("127.0.0.1", "admin", "correct horse battery")
    assert (tmp_path / "users").stat().st_mode & 0o077 == 0
