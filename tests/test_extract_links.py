"""Link extraction and SSRF-safe download, against real HTTP(S) servers on 127.0.0.1."""

from __future__ import annotations

import hashlib
import http.server
import ipaddress
import shutil
import socket
import ssl
import subprocess
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mailvm.config import ExtractConfig, LinksConfig
from mailvm.extract import links
from mailvm.extract.links import MAX_SCAN_CHARS, address_refusal, download_links, find_urls
from mailvm.extract.spool import Spool

PAYLOAD = bytes(range(256)) * 40 + b"MZ-not-really-an-exe"
PAYLOAD_SHA = hashlib.sha256(PAYLOAD).hexdigest()
LOCAL = ["127.0.0.0/8"]


# -- a real HTTP server that records every request ---------------------------------


@dataclass
class Seen:
    path: str
    headers: dict[str, str]


@dataclass
class Recorder:
    requests: list[Seen] = field(default_factory=list)
    sni: list[str | None] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def paths(self) -> list[str]:
        with self.lock:
            return [r.path for r in self.requests]


def make_handler(rec: Recorder):
    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args):  # keep test output clean
            pass

        def _send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
            self.send_response(status)
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _drip(self, data: bytes, every: float) -> None:
            try:
                for i in range(len(data)):
                    if rec.stop.wait(every):
                        return
                    self.wfile.write(data[i : i + 1])
                    self.wfile.flush()
            except OSError:
                pass  # the client gave up, as it should

        def do_GET(self):
            with rec.lock:
                rec.requests.append(Seen(self.path, {k.lower(): v for k, v in self.headers.items()}))
            url = urllib.parse.urlsplit(self.path)
            query = urllib.parse.parse_qs(url.query)
            path = url.path
            if path.startswith("/files/"):
                self._send(200, PAYLOAD, {"Content-Type": "application/octet-stream"})
            elif path == "/cd":
                cd = "attachment; filename=\"fallback.txt\"; filename*=UTF-8''r%C3%A9sum%C3%A9.exe"
                self._send(200, PAYLOAD, {"Content-Disposition": cd})
            elif path == "/cd-plain":
                self._send(200, PAYLOAD, {"Content-Disposition": 'attachment; filename="../../invoice 7.pdf"'})
            elif path == "/":
                self._send(200, PAYLOAD)
            elif path == "/redirect":
                self._send(int(query.get("code", ["302"])[0]), b"", {"Location": query["to"][0]})
            elif path.startswith("/chain/"):
                n = int(path.rsplit("/", 1)[1])
                self._send(302, b"", {"Location": f"/chain/{n + 1}"})
            elif path == "/big":
                self._send(200, b"A" * (256 * 1024))
            elif path == "/slow":
                body = b"B" * 1000
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.flush()
                self._drip(body, 0.25)
            elif path == "/slow-headers":
                self.wfile.write(b"HTTP/1.0 200 OK\r\n")
                self._drip(b"X-Drip: " + b"d" * 1000 + b"\r\n\r\n", 0.25)
            else:
                self._send(404, b"not here")

    return Handler


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True


@dataclass
class Running:
    rec: Recorder
    port: int
    scheme: str = "http"
    host: str = "127.0.0.1"

    def url(self, path: str) -> str:
        return f"{self.scheme}://{self.host}:{self.port}{path}"


def _serve(tls: ssl.SSLContext | None = None, host: str = "127.0.0.1"):
    rec = Recorder()
    server = _Server(("127.0.0.1", 0), make_handler(rec))
    if tls is not None:
        server.socket = tls.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield Running(rec, server.server_address[1], "https" if tls else "http", host)
    finally:
        rec.stop.set()
        server.shutdown()
        server.server_close()
        thread.join(5)


@pytest.fixture
def web():
    yield from _serve()


@pytest.fixture
def spool(tmp_path: Path) -> Spool:
    return Spool(tmp_path / "spool", ExtractConfig())


def cfg(**kw) -> LinksConfig:
    kw.setdefault("allow_networks", list(LOCAL))
    kw.setdefault("timeout_s", 5.0)
    return LinksConfig(**kw)


def ids(findings) -> list[str]:
    return [f.id for f in findings]


# -- find_urls ----------------------------------------------------------------------


def test_find_urls_plain_text_punctuation_www_and_dedup():
    text = (
        "Invoice at http://evil.example/inv.zip. Also (see https://a.example/x_(1)) and "
        "www.shop.example/path, then <http://b.example/q?a=1&b=2>; again http://evil.example/inv.zip!\n"
        "HTTPS://UPPER.example/Doc ignore ftp://files.example/x mailto:a@b.example file:///etc/passwd"
    )
    assert find_urls(text, "", 20) == [
        "http://evil.example/inv.zip",
        "https://a.example/x_(1)",
        "http://www.shop.example/path",
        "http://b.example/q?a=1&b=2",
        "https://UPPER.example/Doc",
    ]


def test_find_urls_html_attributes_entities_and_order():
    doc = """<html><body>
    <img src="http://cdn.example/logo.png">
    <a title="a > b" href="h&#116;tp://evil.example/a?x=1&amp;y=2#frag">click</a>
    <A HREF='http:\\\\backslash.example\\p.exe'>x</A>
    <!-- <a href="http://in-comment.example/"> -->
    <a href="javascript:alert(1)">j</a><a href="mailto:x@y.example">m</a><a href="data:text/html,hi">d</a>
    <meta http-equiv="refresh" content="0; url=http://refresh.example/go">
    <form action=http://form.example/post method=post></form>
    <p>Visit https://text.example/page today</p>
    <iframe src="http://frame.example/f"></iframe>
    <a href="http://evil.example/a?x=1&y=2">same link again</a>
    </body></html>"""
    urls = find_urls("", doc, 50)
    # clickable links first (first-seen order), then embedded resources
    assert urls == [
        "http://evil.example/a?x=1&y=2",
        "http://backslash.example/p.exe",
        "http://refresh.example/go",
        "http://form.example/post",
        "https://text.example/page",
        "http://cdn.example/logo.png",
        "http://frame.example/f",
    ]


def test_find_urls_many_attributes_before_href():
    junk = " ".join(f'data-x{i}="{i}"' for i in range(500))
    assert find_urls("", f'<a {junk} href="http://late-attr.example/x">x</a>', 5) == ["http://late-attr.example/x"]


def test_find_urls_base_href_resolves_relative_links():
    doc = '<base href="http://base.example/dir/"><a href="payload.exe">x</a><a href="/abs.zip">y</a>'
    assert find_urls("", doc, 10) == ["http://base.example/dir/payload.exe", "http://base.example/abs.zip"]


def test_find_urls_relative_without_base_is_ignored():
    assert find_urls("", '<a href="/x.exe">x</a><a href="www.nope.example">y</a>', 10) == []


def test_hosts_of_dots_are_not_links(spool, monkeypatch):
    """``http://.`` was kept as a link, and _parse_hop stripped the dot after its empty-host check, so the
    downloader asked DNS for "" (found by the fuzzers)."""
    doc = '<a href=http://.>x</a><a href="http://../y">y</a><img src="https://...:8443/z"><a href=http://a.example.>ok</a>'
    assert find_urls("see http://. or http://.../x", doc, 10) == ["http://a.example."]
    for u in ("http://.", "http://..", "https://.:443/", "http://user@./"):
        assert links.normalize_url(u) is None, u
        with pytest.raises(links._Failure, match="no host"):
            links._parse_hop(u)

    looked_up: list[str] = []
    real = socket.getaddrinfo

    def recording(host, *args, **kwargs):  # the real resolver, with a record of what it was asked
        looked_up.append(host)
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", recording)
    arts, found = download_links(["http://./", "http://../x"], spool, cfg())
    assert arts == [] and looked_up == []
    assert [f.id for f in found] == ["link_download_failed"] * 2 and all("no host" in f.detail for f in found)


def test_find_urls_limit_and_text_before_html():
    text = " ".join(f"http://t{i}.example/" for i in range(5))
    html_doc = "".join(f'<a href="http://h{i}.example/">x</a>' for i in range(5))
    assert find_urls(text, html_doc, 3) == ["http://t0.example/", "http://t1.example/", "http://t2.example/"]
    assert len(find_urls(text, html_doc, 7)) == 7
    assert find_urls(text, html_doc, 0) == []


def test_find_urls_embedded_resources_do_not_crowd_out_links():
    imgs = "".join(f'<img src="http://img.example/{i}.png">' for i in range(30))
    urls = find_urls("", imgs + '<a href="http://dl.example/malware.exe">get</a>', 5)
    assert urls[0] == "http://dl.example/malware.exe"
    assert len(urls) == 5


@pytest.mark.parametrize(
    "garbage",
    [
        "<a " * 1_000_000,
        '<a href="' * 500_000,
        "<!--" * 800_000,
        "http://" * 500_000,
        "www." * 900_000,
        "<" * 3_000_000,
        "<a b='" + "x" * 3_000_000,
        "<a " + "x=1 " * 700_000,
        "(http://x.example/" + ")" * 3_000_000,
        "".join(chr(c) for c in range(0x20, 0x3000)) * 300,
    ],
    ids=["open-tags", "open-quotes", "comments", "schemes", "www", "lt", "unclosed", "many-attrs", "parens", "unicode"],
)
def test_find_urls_garbage_is_bounded(garbage):
    start = time.monotonic()
    urls = find_urls(garbage, garbage, 10)
    assert time.monotonic() - start < 3.0
    assert len(urls) <= 10
    assert all(u.startswith(("http://", "https://")) for u in urls)


def test_find_urls_reads_only_the_first_scan_window():
    text = "x" * MAX_SCAN_CHARS + " http://late.example/"
    assert find_urls(text, "", 10) == []
    assert find_urls("http://early.example/ " + text, "", 10) == ["http://early.example/"]


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=500), st.text(alphabet=st.sampled_from(list("<>\"'=/ a:href.http&#;!-")), max_size=500))
def test_find_urls_never_raises(text, doc):
    urls = find_urls(text, doc, 5)
    assert len(urls) <= 5
    assert len(set(urls)) == len(urls)
    for u in urls:
        parts = urllib.parse.urlsplit(u)
        assert parts.scheme in ("http", "https") and parts.hostname


# -- address policy ----------------------------------------------------------------

REFUSED = [
    "127.0.0.1", "10.1.2.3", "172.16.0.1", "192.168.1.1", "169.254.169.254", "100.64.0.1", "0.0.0.0",
    "224.0.0.251", "239.255.255.250", "240.0.0.1", "255.255.255.255", "192.0.2.1", "198.18.0.1",
    "::1", "::", "fe80::1", "fc00::1", "fd12:3456::1", "ff02::1", "::ffff:127.0.0.1", "::ffff:10.0.0.1",
    "2002:7f00:1::1", "2002:a9fe:a9fe::", "64:ff9b::a9fe:a9fe", "2001:db8::1", "fec0::1",
]
PUBLIC = ["8.8.8.8", "1.1.1.1", "93.184.216.34", "2606:4700:4700::1111", "2a00:1450:4001:80b::200e"]


@pytest.mark.parametrize("addr", REFUSED)
def test_non_public_addresses_refused(addr):
    assert address_refusal(ipaddress.ip_address(addr), []) is not None


@pytest.mark.parametrize("addr", PUBLIC)
def test_public_addresses_allowed(addr):
    assert address_refusal(ipaddress.ip_address(addr), []) is None


def test_allow_networks_override():
    allowed = [ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("10.5.0.0/16")]
    assert address_refusal(ipaddress.ip_address("127.0.0.2"), allowed) is None
    assert address_refusal(ipaddress.ip_address("10.5.9.9"), allowed) is None
    assert address_refusal(ipaddress.ip_address("10.6.0.1"), allowed) is not None
    assert address_refusal(ipaddress.ip_address("::1"), allowed) is not None


def test_connection_goes_to_checked_address_not_a_new_lookup(web):
    """The name is sent as Host but never resolved again: it does not even exist here."""
    hop = links._parse_hop(f"http://rebind.invalid:{web.port}/files/pinned.bin")
    addrs = [(socket.AF_INET, socket.SOCK_STREAM, 6, ("127.0.0.1", web.port))]
    sock = links._open(hop, addrs, cfg(), time.monotonic() + 5, None)
    try:
        conn = links._PinnedConnection(hop.host, hop.port, 80, sock)
        conn.request("GET", hop.target)
        assert conn.getresponse().read() == PAYLOAD
    finally:
        sock.release()
    assert web.rec.requests[0].headers["host"] == f"rebind.invalid:{web.port}"


# -- downloads ----------------------------------------------------------------------


def test_download_by_path_name(web, spool):
    url = web.url("/files/report%20Q3.bin?x=1")
    arts, findings = download_links([url], spool, cfg())
    assert findings == []
    (art,) = arts
    assert art.sha256 == PAYLOAD_SHA
    assert art.size == len(PAYLOAD)
    assert art.name == "report Q3.bin"
    assert art.origin == (f"url:{url}",)
    assert Path(art.path).read_bytes() == PAYLOAD
    assert spool.artifacts == [art]
    (req,) = web.rec.requests
    assert req.path == "/files/report%20Q3.bin?x=1"
    assert req.headers["host"] == f"127.0.0.1:{web.port}"
    assert req.headers["accept-encoding"] == "identity"
    assert req.headers["user-agent"] == LinksConfig().user_agent


def test_download_name_from_content_disposition(web, spool):
    arts, findings = download_links([web.url("/cd"), web.url("/cd-plain")], spool, cfg(), depth=2)
    assert findings == []
    assert [a.name for a in arts] == ["r\u00e9sum\u00e9.exe", "invoice 7.pdf"]
    assert all(a.sha256 == PAYLOAD_SHA and a.depth == 2 for a in arts)


def test_download_name_falls_back_to_host(web, spool):
    (art,), _ = download_links([web.url("/")], spool, cfg())
    assert art.name == "127.0.0.1"


def test_refused_by_default_and_server_sees_nothing(web, spool):
    arts, findings = download_links([web.url("/files/a.bin")], spool, LinksConfig())
    assert arts == []
    assert ids(findings) == ["link_refused_address"]
    assert "loopback" in findings[0].detail and findings[0].source == "links"
    assert findings[0].severity <= 1
    assert web.rec.paths() == []
    assert spool.artifacts == []


def test_hostname_resolving_to_loopback_refused(web, spool):
    arts, findings = download_links([f"http://localhost:{web.port}/files/a.bin"], spool, LinksConfig())
    assert arts == [] and ids(findings) == ["link_refused_address"]
    assert "localhost" in findings[0].detail
    assert web.rec.paths() == []


def test_ipv4_mapped_ipv6_literal_refused(spool):
    _, findings = download_links(["http://[::ffff:127.0.0.1]:9/", "http://[2002:7f00:1::]:9/"], spool, LinksConfig())
    assert ids(findings) == ["link_refused_address", "link_refused_address"]


def test_disabled_contacts_nothing(web, spool):
    assert download_links([web.url("/files/a.bin")], spool, cfg(enabled=False)) == ([], [])
    assert web.rec.paths() == []


@pytest.mark.parametrize("target", ["http://10.0.0.1/x", "http://169.254.169.254/latest/meta-data/", "http://[::1]/"])
def test_redirect_to_private_address_refused(web, spool, target):
    url = web.url("/redirect?to=" + urllib.parse.quote(target, safe=""))
    arts, findings = download_links([url], spool, cfg())
    assert arts == []
    assert ids(findings) == ["link_refused_address"]
    assert findings[0].severity == 1 and "redirect" in findings[0].detail
    assert len(web.rec.paths()) == 1


def test_redirect_to_other_scheme_refused(web, spool):
    url = web.url("/redirect?to=" + urllib.parse.quote("file:///etc/passwd", safe=""))
    arts, findings = download_links([url], spool, cfg())
    assert arts == [] and ids(findings) == ["link_refused_address"]


@pytest.mark.parametrize("code", [301, 302, 303, 307, 308])
def test_redirect_to_allowed_path_followed(web, spool, code):
    url = web.url(f"/redirect?code={code}&to=/files/final.exe")
    (art,), findings = download_links([url], spool, cfg())
    assert findings == []
    assert art.sha256 == PAYLOAD_SHA and art.name == "final.exe"
    assert art.origin == (f"url:{url}",)
    assert web.rec.paths() == [f"/redirect?code={code}&to=/files/final.exe", "/files/final.exe"]


def test_redirect_with_unparsable_location(web, spool):
    arts, findings = download_links([web.url("/redirect?to=http%3A%2F%2F%5Bbad")], spool, cfg())
    assert arts == [] and ids(findings) == ["link_download_failed"]
    assert "Location" in findings[0].detail


def test_redirect_chain_longer_than_limit_stops(web, spool):
    arts, findings = download_links([web.url("/chain/0")], spool, cfg(max_redirects=2))
    assert arts == []
    assert ids(findings) == ["link_too_many_redirects"]
    assert web.rec.paths() == ["/chain/0", "/chain/1", "/chain/2"]


def test_oversized_body_cut_at_max_bytes(web, spool):
    (art,), findings = download_links([web.url("/big")], spool, cfg(max_bytes=1000))
    assert art.size == 1000
    assert art.sha256 == hashlib.sha256(b"A" * 1000).hexdigest()
    assert ids(findings) == ["link_truncated"]


def test_body_exactly_max_bytes_is_not_truncated(web, spool):
    (art,), findings = download_links([web.url("/files/x")], spool, cfg(max_bytes=len(PAYLOAD)))
    assert art.size == len(PAYLOAD) and findings == []


def test_slow_body_stops_at_timeout(web, spool):
    start = time.monotonic()
    arts, findings = download_links([web.url("/slow")], spool, cfg(timeout_s=1.0))
    elapsed = time.monotonic() - start
    assert elapsed < 2.0
    assert ids(findings) == ["link_download_failed"]
    assert "timeout" in findings[0].detail
    # what arrived before the deadline is kept for the analyzers
    assert len(arts) == 1 and 0 < arts[0].size < 10


def test_slow_headers_stop_at_timeout(web, spool):
    start = time.monotonic()
    arts, findings = download_links([web.url("/slow-headers")], spool, cfg(timeout_s=1.0))
    assert time.monotonic() - start < 2.0
    assert arts == [] and ids(findings) == ["link_download_failed"]
    assert "timeout" in findings[0].detail


def test_total_timeout_shared_by_all_links(web, spool):
    urls = [web.url("/slow?1"), web.url("/slow?2"), web.url("/files/late")]
    start = time.monotonic()
    arts, findings = download_links(urls, spool, cfg(timeout_s=10.0, total_timeout_s=1.0))
    assert time.monotonic() - start < 2.0
    assert ids(findings) == ["link_download_failed", "link_download_failed"]
    assert "2 link(s) not tried" in findings[1].detail
    assert web.rec.paths() == ["/slow?1"]


def test_http_error_status(web, spool):
    arts, findings = download_links([web.url("/missing")], spool, cfg())
    assert arts == [] and ids(findings) == ["link_download_failed"]
    assert "404" in findings[0].detail


def test_connection_refused(spool):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    arts, findings = download_links([f"http://127.0.0.1:{port}/x"], spool, cfg())
    assert arts == [] and ids(findings) == ["link_download_failed"]
    assert "ConnectionRefused" in findings[0].detail


def test_dns_failure(spool):
    arts, findings = download_links(["http://no-such-host.invalid/x"], spool, LinksConfig(timeout_s=3.0))
    assert arts == [] and ids(findings) == ["link_download_failed"]
    assert "DNS" in findings[0].detail


def test_bad_urls_are_findings_not_exceptions(spool):
    _, findings = download_links(["http://[::1/", "http://host:99999/", "gopher://x/", "http:///"], spool, LinksConfig())
    assert len(findings) == 4
    assert set(ids(findings)) <= {"link_download_failed", "link_refused_address"}


def test_more_links_than_max_links(web, spool):
    urls = [web.url(f"/files/{i}") for i in range(4)] + [web.url("/files/0")]
    arts, findings = download_links(urls, spool, cfg(max_links=2))
    assert ids(findings) == ["link_limit_exceeded"]
    assert len(arts) == 2
    assert web.rec.paths() == ["/files/0", "/files/1"]


def test_spool_artifact_limit_becomes_finding(web, tmp_path):
    small = Spool(tmp_path / "s", ExtractConfig(max_artifacts=1))
    arts, findings = download_links([web.url("/files/a"), web.url("/files/b")], small, cfg())
    assert len(arts) == 1
    assert ids(findings) == ["link_download_failed"]
    assert "artifact limit" in findings[0].detail
    assert web.rec.paths() == ["/files/a"]  # nothing fetched that could not be kept


def test_concurrent_calls_from_threads(web, tmp_path):
    results: dict[int, tuple] = {}

    def run(i: int) -> None:
        sp = Spool(tmp_path / f"s{i}", ExtractConfig())
        results[i] = download_links([web.url(f"/files/t{i}"), web.url(f"/cd?{i}")], sp, cfg())

    threads = [threading.Thread(target=run, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    assert sorted(results) == list(range(6))
    for arts, findings in results.values():
        assert findings == [] and [a.sha256 for a in arts] == [PAYLOAD_SHA, PAYLOAD_SHA]


# -- https ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    if shutil.which("openssl") is None:
        pytest.skip("openssl command not available")
    d = tmp_path_factory.mktemp("pki")

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=d, check=True, capture_output=True, timeout=30)

    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    run("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=mailvm test CA")
    run("req", *ec, "-keyout", "srv.key", "-out", "srv.csr", "-subj", "/CN=localhost")
    (d / "ext.cnf").write_text("subjectAltName=DNS:localhost\n")
    run("x509", "-req", "-in", "srv.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
        "-out", "srv.pem", "-days", "2", "-extfile", "ext.cnf")
    return d


@pytest.fixture
def tls_web(certs):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(certs / "srv.pem", certs / "srv.key")
    holder: list[Recorder] = []

    def note_sni(sslobj, name, _ctx):
        holder[0].sni.append(name)

    ctx.sni_callback = note_sni
    gen = _serve(ctx, host="localhost")
    running = next(gen)
    holder.append(running.rec)
    yield running
    next(gen, None)


def client_ctx(certs) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(certs / "ca.pem"))
    return ctx


def test_https_with_sni_and_host_header(tls_web, certs, spool):
    url = tls_web.url("/files/secure.bin")
    arts, findings = download_links([url], spool, cfg(allow_networks=["127.0.0.0/8", "::1/128"]), ssl_context=client_ctx(certs))
    assert findings == []
    assert [a.sha256 for a in arts] == [PAYLOAD_SHA]
    assert tls_web.rec.sni == ["localhost"]
    assert tls_web.rec.requests[0].headers["host"] == f"localhost:{tls_web.port}"


def test_https_untrusted_certificate_is_a_finding(tls_web, spool):
    arts, findings = download_links([tls_web.url("/files/x")], spool, cfg(allow_networks=["127.0.0.0/8", "::1/128"]))
    assert arts == [] and ids(findings) == ["link_download_failed"]
    assert "TLS" in findings[0].detail and "certificate" in findings[0].detail
    assert tls_web.rec.paths() == []


def test_https_name_mismatch_is_a_finding(tls_web, certs, spool):
    url = f"https://127.0.0.1:{tls_web.port}/files/x"
    arts, findings = download_links([url], spool, cfg(), ssl_context=client_ctx(certs))
    assert arts == [] and ids(findings) == ["link_download_failed"]
    assert "TLS" in findings[0].detail
    assert tls_web.rec.paths() == []


def test_slow_tls_handshake_stops_at_timeout(spool):
    """A server that starts a TLS record and then drips it must not hold the download."""
    stop = threading.Event()
    lsock = socket.create_server(("127.0.0.1", 0))
    port = lsock.getsockname()[1]

    def serve() -> None:
        conn, _ = lsock.accept()
        with conn:
            try:
                conn.sendall(b"\x16\x03\x03\x40\x00")  # handshake record, 16 KiB announced
                while not stop.wait(0.2):
                    conn.sendall(b"\x00")
            except OSError:
                pass

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    try:
        start = time.monotonic()
        arts, findings = download_links([f"https://127.0.0.1:{port}/x"], spool, cfg(timeout_s=1.0))
        assert time.monotonic() - start < 2.0
        assert arts == [] and ids(findings) == ["link_download_failed"]
        assert "TLS" in findings[0].detail
    finally:
        stop.set()
        lsock.close()
        t.join(5)
