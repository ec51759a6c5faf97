"""HTML in headless Chromium: a DevTools-protocol driver, and what its report means.

Standard library only, and no import from ``mailvm``: the detonation copies
this file into the sandbox and runs it there as the launcher
(``python3 -I -S browser.py --url file:///work/x.html --out DIR``).  The
driver starts Chromium with ``--remote-debugging-pipe`` (the DevTools protocol
over fds 3 and 4, ``\\0``-separated JSON; no port, nothing to connect to from
outside), with flags that keep it from calling Google's services, and:

* allows downloads into ``DIR/downloads`` (files named by their guid) and
  records each one (URL: ``blob:``/``data:`` means the page's own script built
  it, i.e. HTML smuggling), and accepts JavaScript dialogs;
* opens the page and follows it while it moves on by itself (HTTP redirects,
  meta refresh, script navigation), for at most ``--budget`` seconds, until
  it has been quiet for ``--settle`` seconds;
* reads the rendered page (title, final URL, forms with their resolved
  action and whether they ask for a password, image names, the visible text's
  start) and takes a PNG screenshot of the viewport;
* writes ``DIR/result.json`` (bounded) and ``DIR/page.png``.

Everything it reads from Chromium is bounded (message size, counts, time).
:func:`report_events` turns the report into behaviour events for the rules
(:mod:`mailvm.guest.docrules`): ``page``, ``form``, ``download``;
:func:`brands_in` finds brand names in what the page shows.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import select
import subprocess
import sys
import time
from typing import Any

MAX_MESSAGE = 16 << 20  # a screenshot is the largest message
MAX_EVENTS = 5000
MAX_FORMS = 20
MAX_DOWNLOADS = 10
MAX_SCREENSHOT = 4 << 20
VIEWPORT = (1024, 768)
RESULT_NAME = "result.json"
SCREENSHOT_NAME = "page.png"

#: keep Chromium from calling Google's services; the sandbox is ours (--no-sandbox)
CHROMIUM_FLAGS = (
    "--headless", "--no-sandbox", "--no-zygote", "--disable-gpu", "--remote-debugging-pipe", "--no-first-run",
    "--no-default-browser-check", "--disable-background-networking", "--disable-component-update",
    "--disable-sync", "--disable-quic", "--disable-default-apps", "--disable-extensions", "--disable-breakpad",
    "--disable-crash-reporter", "--disable-domain-reliability", "--disable-client-side-phishing-detection",
    "--disable-features=Translate,OptimizationHints,MediaRouter,DialMediaRouteProvider,AutofillServerCommunication,"
    "CertificateTransparencyComponentUpdater,InterestFeedContentSuggestions,PrivacySandboxSettings4,"
    "NetworkTimeServiceQuerying,DnsOverHttps,SafeBrowsingEnhancedProtection,OptimizationGuideModelDownloading",
    "--safebrowsing-disable-auto-update", "--disable-field-trial-config",
    "--metrics-recording-only", "--no-pings", "--password-store=basic", "--use-mock-keychain", "--mute-audio",
    "--hide-scrollbars", "--disable-dev-shm-usage", "--ignore-certificate-errors",
    f"--window-size={VIEWPORT[0]},{VIEWPORT[1]}",
)

#: what the page shows (run in the page after it settled); returns plain JSON
EXTRACT_JS = r"""
(() => {
  const abs = (u) => { try { return new URL(u, document.baseURI).href; } catch (e) { return String(u || ''); } };
  const forms = Array.from(document.forms).slice(0, 20).map(f => ({
    action: f.getAttribute('action') === null ? '' : abs(f.getAttribute('action')),
    method: (f.method || 'get').toLowerCase(),
    password: !!f.querySelector('input[type=password]'),
    inputs: Array.from(f.elements).slice(0, 30).map(e => (e.type || e.tagName || '').toLowerCase() + ':' + (e.name || e.id || '')),
  }));
  const loose = document.querySelectorAll('input[type=password]').length;
  const imgs = Array.from(document.images).slice(0, 50).map(i => ({src: (i.currentSrc || i.src || '').slice(0, 300),
    alt: (i.alt || '').slice(0, 100), cls: (i.className && i.className.baseVal === undefined ? i.className : '').slice(0, 100)}));
  const meta = document.querySelector('meta[http-equiv="refresh" i]');
  return JSON.stringify({
    url: location.href, title: (document.title || '').slice(0, 300), forms: forms, passwords: loose,
    images: imgs, text: (document.body ? document.body.innerText : '').slice(0, 2000),
    refresh: meta ? (meta.getAttribute('content') || '').slice(0, 300) : '',
    iframes: Array.from(document.querySelectorAll('iframe')).slice(0, 10).map(f => abs(f.getAttribute('src') || '')),
    scripts: document.scripts.length,
  });
})()
"""


class CdpError(Exception):
    pass


class Pipe:
    """The DevTools protocol over Chromium's fds 3 (commands) and 4 (answers and events)."""

    def __init__(self, wfd: int, rfd: int) -> None:
        self.wfd, self.rfd = wfd, rfd
        self.buf = b""
        self.next_id = 0
        self.events: list[dict[str, Any]] = []
        self.dropped = 0

    def send(self, method: str, params: dict | None = None, session: str = "") -> int:
        self.next_id += 1
        msg: dict[str, Any] = {"id": self.next_id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        data = json.dumps(msg).encode() + b"\0"
        while data:
            n = os.write(self.wfd, data)
            data = data[n:]
        return self.next_id

    def _read(self, timeout: float) -> list[dict[str, Any]]:
        r, _, _ = select.select([self.rfd], [], [], max(0.0, timeout))
        if not r:
            return []
        chunk = os.read(self.rfd, 1 << 20)
        if not chunk:
            raise CdpError("Chromium closed the DevTools pipe")
        self.buf += chunk
        if len(self.buf) > MAX_MESSAGE:
            raise CdpError("DevTools message too large")
        out = []
        while b"\0" in self.buf:
            raw, self.buf = self.buf.split(b"\0", 1)
            try:
                msg = json.loads(raw)
            except ValueError:
                continue
            if isinstance(msg, dict):
                out.append(msg)
        return out

    def pump(self, timeout: float) -> None:
        """Read what arrives within ``timeout`` into :attr:`events`."""
        for msg in self._read(timeout):
            if "method" in msg:
                if len(self.events) < MAX_EVENTS:
                    self.events.append(msg)
                else:
                    self.dropped += 1
            else:
                self.events.append(msg)  # an answer; call() picks it out

    def call(self, method: str, params: dict | None = None, session: str = "", timeout: float = 10.0) -> dict:
        mid = self.send(method, params, session)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for k, msg in enumerate(self.events):
                if msg.get("id") == mid:
                    del self.events[k]
                    if "error" in msg:
                        raise CdpError(f"{method}: {str(msg['error'])[:200]}")
                    res = msg.get("result")
                    return res if isinstance(res, dict) else {}
            self.pump(deadline - time.monotonic())
        raise CdpError(f"{method}: no answer within {timeout:g} s")

    def take_events(self) -> list[dict[str, Any]]:
        ev = [m for m in self.events if "method" in m]
        self.events = [m for m in self.events if "method" not in m]
        return ev


def start_chromium(chromium: str, profile: str) -> tuple[subprocess.Popen, Pipe]:
    to_chrome_r, to_chrome_w = os.pipe()
    from_chrome_r, from_chrome_w = os.pipe()

    def fds() -> None:  # in the child: its fd 3 reads our commands, its fd 4 carries the answers
        a, b = os.dup(to_chrome_r), os.dup(from_chrome_w)  # out of the way of 3 and 4 first
        os.dup2(a, 3)
        os.dup2(b, 4)

    proc = subprocess.Popen([chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "about:blank"],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            preexec_fn=fds, pass_fds=(3, 4), close_fds=True)
    os.close(to_chrome_r)
    os.close(from_chrome_w)
    return proc, Pipe(to_chrome_w, from_chrome_r)


def drive(url: str, out: str, chromium: str, budget_s: float, settle_s: float,
          start_s: float = 120.0) -> dict[str, Any]:
    """Open ``url`` in Chromium and return the report (see the module docstring).  ``start_s`` bounds
    Chromium's start (its first DevTools answer: tens of seconds in an emulated guest), ``budget_s`` the page."""
    downloads_dir = os.path.join(out, "downloads")
    os.makedirs(downloads_dir, exist_ok=True)
    t0 = time.monotonic()
    wait = 10.0
    report: dict[str, Any] = {"url": url, "loaded": False, "navigations": [], "http_redirects": 0, "downloads": [],
                              "dialogs": [], "error": ""}
    proc, cdp = start_chromium(chromium, os.path.join(out, "profile"))
    try:
        t_start = time.monotonic()
        try:
            cdp.call("Browser.setDownloadBehavior", {"behavior": "allowAndName", "downloadPath": downloads_dir,
                                                     "eventsEnabled": True}, timeout=start_s)
        except CdpError as exc:
            raise CdpError(f"Chromium did not start within {start_s:g} s ({exc})") from None
        report["start_s"] = round(time.monotonic() - t_start, 2)
        # an emulated guest is tens of times slower: every later bound scales with how long the start took
        slow = min(max(1.0, report["start_s"] / 2.0), 12.0)
        wait = 10.0 * slow
        budget_s *= slow
        t0 = time.monotonic()  # the page's budget starts now
        target = cdp.call("Target.createTarget", {"url": "about:blank"}, timeout=wait)["targetId"]
        session = cdp.call("Target.attachToTarget", {"targetId": target, "flatten": True}, timeout=wait)["sessionId"]
        for method, params in (("Page.enable", {}), ("Network.enable", {}), ("Runtime.enable", {}),
                               ("Emulation.setDeviceMetricsOverride", {"width": VIEWPORT[0], "height": VIEWPORT[1],
                                                                       "deviceScaleFactor": 1, "mobile": False})):
            cdp.call(method, params, session, timeout=wait)
        tree = cdp.call("Page.getFrameTree", {}, session, timeout=wait)
        main_frame = tree.get("frameTree", {}).get("frame", {}).get("id", "")
        cdp.call("Page.navigate", {"url": url}, session, timeout=3 * wait)
        last = time.monotonic()
        downloads: dict[str, dict[str, Any]] = {}
        while time.monotonic() - t0 < budget_s:
            cdp.pump(0.2)
            events = cdp.take_events()
            for ev in events:
                m, p = ev.get("method"), ev.get("params") or {}
                if m == "Page.frameNavigated" and not (p.get("frame") or {}).get("parentId"):
                    nav = str((p.get("frame") or {}).get("url", ""))[:2048]
                    if len(report["navigations"]) < 50 and (not report["navigations"] or report["navigations"][-1] != nav):
                        report["navigations"].append(nav)
                elif m == "Network.requestWillBeSent" and p.get("type") == "Document" and p.get("redirectResponse") \
                        and p.get("frameId") == main_frame:
                    report["http_redirects"] += 1
                elif m == "Page.loadEventFired":
                    report["loaded"] = True
                elif m == "Page.javascriptDialogOpening":
                    if len(report["dialogs"]) < 10:
                        report["dialogs"].append(f"{p.get('type')}: {str(p.get('message', ''))[:200]}")
                    cdp.send("Page.handleJavaScriptDialog", {"accept": True}, session)
                elif m == "Browser.downloadWillBegin" and len(downloads) < MAX_DOWNLOADS:
                    downloads[str(p.get("guid"))] = {"url": str(p.get("url", ""))[:500],
                                                     "name": str(p.get("suggestedFilename", ""))[:200], "state": ""}
                elif m == "Browser.downloadProgress" and str(p.get("guid")) in downloads:
                    d = downloads[str(p.get("guid"))]
                    d["state"] = str(p.get("state", ""))[:20]
                    d["size"] = p.get("receivedBytes") if isinstance(p.get("receivedBytes"), int) else 0
            if events:
                last = time.monotonic()
            pending = any(d["state"] not in ("completed", "canceled") for d in downloads.values())
            if report["loaded"] and not pending and time.monotonic() - last >= settle_s:
                break
        for guid, d in downloads.items():
            path = os.path.join(downloads_dir, guid)
            d["magic"] = ""
            try:
                with open(path, "rb") as fh:
                    d["head"] = base64.b64encode(fh.read(16)).decode()
                d["size"] = os.path.getsize(path)
            except OSError:
                d["head"] = ""
            report["downloads"].append(d)
        facts = cdp.call("Runtime.evaluate", {"expression": EXTRACT_JS, "returnByValue": True}, session,
                         timeout=2 * wait)
        value = (facts.get("result") or {}).get("value")
        if isinstance(value, str) and len(value) < 1 << 20:
            report["page"] = json.loads(value)
        shot = cdp.call("Page.captureScreenshot", {"format": "png"}, session, timeout=3 * wait).get("data", "")
        png = base64.b64decode(shot) if isinstance(shot, str) else b""
        if png and len(png) <= MAX_SCREENSHOT:
            with open(os.path.join(out, SCREENSHOT_NAME), "wb") as fh:
                fh.write(png)
            report["screenshot"] = SCREENSHOT_NAME
        try:
            cdp.call("Browser.close", {}, timeout=3.0)
        except CdpError:
            pass
    except (CdpError, OSError, KeyError, ValueError) as exc:
        report["error"] = f"{type(exc).__name__}: {exc}"[:300]
    finally:
        report["seconds"] = round(time.monotonic() - t0, 2)
        report["events_dropped"] = cdp.dropped
        try:
            proc.wait(timeout=3)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=3)
    return report


# ------------------------------------------------------------------ what the report means (the detonation's side)

#: brands phishing pages wear, and the sites that are really theirs (a login posting there is the brand's own)
BRANDS: dict[str, tuple[str, ...]] = {
    "microsoft": ("microsoft", "office 365", "microsoft 365", "outlook", "onedrive", "sharepoint", "office.com",
                  "hotmail", "live.com", "teams"),
    "google": ("google", "gmail", "google drive", "google docs"),
    "apple": ("apple id", "icloud", "itunes"),
    "paypal": ("paypal",), "amazon": ("amazon",), "netflix": ("netflix",), "facebook": ("facebook",),
    "instagram": ("instagram",), "linkedin": ("linkedin",), "dropbox": ("dropbox",), "docusign": ("docusign",),
    "adobe": ("adobe", "acrobat"), "wetransfer": ("wetransfer",), "dhl": ("dhl",), "fedex": ("fedex",),
    "ups": ("ups.com", "united parcel"), "usps": ("usps",), "chase": ("chase bank", "jpmorgan chase"),
    "wellsfargo": ("wells fargo",), "bankofamerica": ("bank of america",), "americanexpress": ("american express",),
    "yahoo": ("yahoo",), "aol": ("aol mail",), "zoom": ("zoom",), "webex": ("webex",), "coinbase": ("coinbase",),
    "binance": ("binance",), "metamask": ("metamask",), "steam": ("steam",), "roundcube": ("roundcube",),
    "zimbra": ("zimbra",), "owa": ("outlook web app", "outlook web access"),
}
#: a brand's own registrable names (a form posting to a site containing one of these is the brand's own login)
BRAND_SITES: dict[str, tuple[str, ...]] = {
    "microsoft": ("microsoft", "microsoftonline", "office", "live", "outlook", "sharepoint", "onedrive", "office365"),
    "google": ("google", "gmail"), "apple": ("apple", "icloud"), "amazon": ("amazon",), "owa": (),
    "roundcube": (), "zimbra": (),
}


def brands_in(*texts: str) -> list[str]:
    """Brand names the page shows (title, text, image names and alt texts), at most 5."""
    hay = " ".join(t.lower() for t in texts if t)[:20000]
    out = []
    for brand, words in BRANDS.items():
        if any(w in hay for w in words):
            out.append(brand)
    return out[:5]


MAGIC_NAMES = ((b"MZ", "a Windows program"), (b"\x7fELF", "an ELF program"), (b"PK\x03\x04", "a zip archive"),
               (b"Rar!", "a RAR archive"), (b"7z\xbc\xaf\x27\x1c", "a 7-zip archive"),
               (b"\xd0\xcf\x11\xe0", "an OLE document"), (b"%PDF", "a PDF"), (b"\x1f\x8b", "a gzip file"))


def _host(url: str) -> str:
    rest = url.split("://", 1)[1] if "://" in url else ""
    return rest.split("/", 1)[0].rsplit("@", 1)[-1].split(":", 1)[0].lower()


def report_events(report: dict[str, Any], t: float = 0.0) -> list[dict[str, Any]]:
    """Behaviour events from the driver's report: one ``page``, a ``form`` per form, a ``download`` per file."""
    page = report.get("page") if isinstance(report.get("page"), dict) else {}
    final = str(page.get("url") or (report.get("navigations") or [report.get("url", "")])[-1])[:2048]
    navs = [str(n) for n in report.get("navigations") or [] if isinstance(n, str)]
    images = [i for i in page.get("images") or [] if isinstance(i, dict)][:50]
    image_words = " ".join(f"{str(i.get('src', '')).rsplit('/', 1)[-1]} {i.get('alt', '')} {i.get('cls', '')}"
                           for i in images)
    brands = brands_in(str(page.get("title", "")), str(page.get("text", ""))[:2000], image_words)
    forms = [f for f in page.get("forms") or [] if isinstance(f, dict)][:MAX_FORMS]
    password = any(f.get("password") for f in forms) or bool(page.get("passwords"))
    redirects = max(0, len(navs) - 1) + (report.get("http_redirects") if isinstance(report.get("http_redirects"), int)
                                         else 0)
    out: list[dict[str, Any]] = [{
        "t": t, "type": "page", "url": final, "start": str(report.get("url", ""))[:2048],
        "title": str(page.get("title", ""))[:300], "redirects": redirects, "navigations": navs[:10],
        "password_form": password, "brands": brands, "loaded": bool(report.get("loaded")),
        "logos": [str(i.get("src", "")).rsplit("/", 1)[-1][:100] for i in images
                  if "logo" in f"{i.get('src', '')} {i.get('alt', '')} {i.get('cls', '')}".lower()][:5],
        "iframes": [str(u)[:300] for u in page.get("iframes") or []][:5],
    }]
    for f in forms:
        action = str(f.get("action", ""))[:2048]
        out.append({"t": t, "type": "form", "page": final, "action": action, "method": str(f.get("method", ""))[:10],
                    "password": bool(f.get("password")), "brands": brands,
                    "inputs": [str(x)[:60] for x in f.get("inputs") or []][:30],
                    "other_host": bool(_host(action)) and _host(action) != _host(final)})
    for d in report.get("downloads") or []:
        if not isinstance(d, dict):
            continue
        url = str(d.get("url", ""))[:500]
        try:
            head = base64.b64decode(str(d.get("head", "")))[:16]
        except ValueError:
            head = b""
        magic = next((name for sig, name in MAGIC_NAMES if head.startswith(sig)), "")
        out.append({"t": t, "type": "download", "name": str(d.get("name", ""))[:200], "url": url,
                    "size": d.get("size") if isinstance(d.get("size"), int) else 0, "state": str(d.get("state", "")),
                    "scripted": url.startswith(("blob:", "data:")), "magic": magic})
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="render a page in headless Chromium and report what it does")
    ap.add_argument("--url", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--chromium", default="/usr/bin/chromium")
    ap.add_argument("--budget", type=float, default=25.0)
    ap.add_argument("--settle", type=float, default=2.5)
    ap.add_argument("--start-timeout", type=float, default=120.0)
    a = ap.parse_args(argv)
    os.makedirs(a.out, exist_ok=True)
    report = drive(a.url, a.out, a.chromium, min(max(a.budget, 2.0), 600.0), min(max(a.settle, 0.2), 30.0),
                   min(max(a.start_timeout, 5.0), 600.0))
    tmp = os.path.join(a.out, RESULT_NAME + ".tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(report, fh)
    os.replace(tmp, os.path.join(a.out, RESULT_NAME))
    print("mailvm-browser: " + ("rendered " if report.get("loaded") else "did not load ") + a.url, flush=True)
    return 0 if report.get("loaded") else 3


if __name__ == "__main__":
    sys.exit(main())
