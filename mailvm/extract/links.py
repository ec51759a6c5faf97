"""Links in a message's text: find them, and download the files behind them, SSRF-safe.

:func:`find_urls` pulls http(s) URLs out of a message's text/plain and text/html
bodies with bounded work (inputs are cut at :data:`MAX_SCAN_CHARS`, the HTML
scanner is a single forward pass, never a backtracking parser).

:func:`download_links` fetches them with ``http.client`` under the limits of
:class:`~mailvm.config.LinksConfig`.  Every hop (the first request and each
redirect) is checked the same way:

* the scheme must be http or https;
* the host is resolved once, and *every* address it resolves to must be
  public (not private, loopback, link-local, multicast, reserved, unspecified,
  shared, nor an IPv4-mapped / 6to4 / NAT64 form of those) unless it lies in
  ``allow_networks``;
* the connection goes to the address that was checked, never to a second
  resolution of the name (DNS rebinding), with the original host name in the
  ``Host`` header and as TLS SNI; certificates are verified.

Every read is bounded by one deadline per download (so a server that drips a
byte a second cannot hold a thread), all downloads of a message share
``total_timeout_s``, bodies are cut at ``max_bytes``, and the bytes go through
:meth:`~mailvm.extract.spool.Spool.add_stream`, which applies the message's
own limits.  Failures are findings with source ``links``; nothing here raises
for hostile input, and nothing contacts the network when ``enabled`` is false.
"""

from __future__ import annotations

import html
import http.client
import io
import ipaddress
import logging
import re
import socket
import ssl
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from typing import Sequence

from mailvm.config import LinksConfig
from mailvm.extract.spool import LimitExceeded, Spool, basename
from mailvm.verdict import Artifact, Finding

log = logging.getLogger(__name__)

SOURCE = "links"

#: characters of each body that :func:`find_urls` looks at
MAX_SCAN_CHARS = 2 * 1024 * 1024
#: longer URLs are ignored (no real download link needs more)
MAX_URL_CHARS = 4096

REDIRECT_CODES = frozenset({301, 302, 303, 307, 308})
SCHEMES = ("http", "https")
READ_CHUNK = 64 * 1024

# -- finding URLs -------------------------------------------------------------

# A bare URL in plain text: starts at a word boundary with a scheme or "www.",
# runs until whitespace or a character that cannot appear unquoted in a URL.
_TEXT_URL_RE = re.compile(r"(?i)\b(?:https?://|www\.)[^\s<>\"'`{}|\\^\x00-\x1f\x7f]{1,%d}" % MAX_URL_CHARS)
_TRAILING = ".,;:!?'\"*>]}\u00bb\u201d\u2019\u3002\u3001\uff0c"
_PAIRS = {")": "(", "]": "[", "}": "{"}

# HTML: the next comment or tag start; then one attribute at a time.
_HTML_TOKEN_RE = re.compile(r"<!--|<([a-zA-Z][^\s/>]{0,63})")
_HTML_ATTR_RE = re.compile(
    r"""[\s/]*([^\s/>][^\s/>=]{0,255})(?:\s*=\s*(?:"([^"]*)"?|'([^']*)'?|([^\s>]*)))?"""
)
_META_REFRESH_URL_RE = re.compile(r"""(?i)url\s*=\s*['"]?([^'"\s>]+)""")
_SPECIAL_SCHEME_RE = re.compile(r"(?i)^(https?):[\\/]*")
_CTRL_RE = re.compile(r"[\t\n\r]")

#: (tag, attribute) pairs a reader clicks or a form submits: listed before embedded resources
_CLICKABLE = {("a", "href"), ("area", "href"), ("form", "action"), ("button", "formaction"), ("input", "formaction")}
#: attributes that carry a URL on any tag (``srcset`` is a comma-separated list)
_URL_ATTRS = ("href", "src", "action", "formaction", "background", "poster", "data", "cite", "longdesc", "srcset")


@dataclass
class _Collector:
    """URLs in two tiers (clickable first, then embedded), deduplicated, bounded."""

    limit: int
    seen: set[str] = field(default_factory=set)
    clickable: list[str] = field(default_factory=list)
    embedded: list[str] = field(default_factory=list)

    def full(self) -> bool:
        return len(self.clickable) >= self.limit

    def add(self, url: str | None, clickable: bool) -> None:
        if url is None or url in self.seen:
            return
        if clickable:
            if len(self.clickable) < self.limit:
                self.seen.add(url)
                self.clickable.append(url)
        elif len(self.clickable) + len(self.embedded) < self.limit:
            self.seen.add(url)
            self.embedded.append(url)

    def result(self) -> list[str]:
        return (self.clickable + self.embedded)[: self.limit]


def normalize_url(raw: str, base: str | None = None) -> str | None:
    """An absolute http(s) URL without fragment, or ``None`` for anything else.

    Applies what browsers do to special schemes so that obfuscated links are
    not missed: surrounding whitespace dropped, tabs/newlines removed,
    backslashes read as slashes, ``http:host`` / ``http:/host`` read as
    ``http://host``.  Relative references are resolved against ``base`` when given.
    """
    url = _CTRL_RE.sub("", raw.strip(" \t\n\r\f\v\x00"))
    if not url or len(url) > MAX_URL_CHARS:
        return None
    m = _SPECIAL_SCHEME_RE.match(url)
    if m:
        url = m.group(1).lower() + "://" + url[m.end():].replace("\\", "/")
    elif base is not None and not re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:", url):
        url = urllib.parse.urljoin(base, url.replace("\\", "/"))
    try:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in SCHEMES or not (parts.hostname or "").strip("."):
            return None  # no host, or only dots ("http://."): nothing a browser would open
        parts.port  # raises ValueError on a bad port
    except ValueError:
        return None
    return urllib.parse.urlunsplit(parts._replace(fragment=""))


def _strip_trailing(url: str) -> str:
    """Drop sentence punctuation that a plain-text URL picked up, keeping balanced brackets."""
    while url:
        last = url[-1]
        if last in _TRAILING:
            url = url[:-1]
        elif last in _PAIRS and url.count(_PAIRS[last]) < url.count(last):
            url = url[:-1]
        else:
            break
    return url


def _text_urls(text: str, out: _Collector) -> None:
    for m in _TEXT_URL_RE.finditer(text):
        if out.full():
            return
        raw = _strip_trailing(m.group(0))
        if raw[:4].lower() == "www.":
            raw = "http://" + raw
        out.add(normalize_url(raw), clickable=True)


def _parse_attrs(doc: str, pos: int) -> tuple[dict[str, str], int]:
    """Attributes of the tag whose name ends at ``pos``; returns them and the position after the tag."""
    attrs: dict[str, str] = {}
    n = len(doc)
    while True:  # every round consumes input, so the whole scan stays linear
        m = _HTML_ATTR_RE.match(doc, pos)
        if m is None or m.end() == pos:
            break
        pos = m.end()
        name = m.group(1).lower()
        value = next((g for g in m.group(2, 3, 4) if g is not None), "")
        attrs.setdefault(name, value)
    end = doc.find(">", pos)
    return attrs, (n if end < 0 else end + 1)


def _tag_urls(tag: str, attrs: dict[str, str], base: str | None, out: _Collector) -> None:
    for attr in _URL_ATTRS:
        value = attrs.get(attr)
        if value is None:
            continue
        value = html.unescape(value)
        clickable = (tag, attr) in _CLICKABLE
        if attr == "srcset":
            for item in value.split(",")[:16]:
                out.add(normalize_url(item.strip().split(" ")[0], base), clickable)
        else:
            out.add(normalize_url(value, base), clickable)
    if tag == "meta" and attrs.get("http-equiv", "").strip().lower() == "refresh":
        m = _META_REFRESH_URL_RE.search(html.unescape(attrs.get("content", "")))
        if m:
            out.add(normalize_url(m.group(1), base), clickable=True)


def _html_urls(doc: str, out: _Collector) -> None:
    """One forward pass over the HTML: tags' URL attributes, bare URLs in the text between tags."""
    pos = 0
    n = len(doc)
    base: str | None = None
    while pos < n and not out.full():
        m = _HTML_TOKEN_RE.search(doc, pos)
        text_end = m.start() if m else n
        if text_end > pos:
            _text_urls(html.unescape(doc[pos:text_end]), out)
        if m is None:
            break
        if m.group(0) == "<!--":
            end = doc.find("-->", m.end())
            pos = n if end < 0 else end + 3
            continue
        tag = m.group(1).lower()
        attrs, pos = _parse_attrs(doc, m.end())
        if tag == "base" and base is None and "href" in attrs:
            base = normalize_url(html.unescape(attrs["href"]))
            continue
        _tag_urls(tag, attrs, base, out)


def find_urls(text: str, html: str, limit: int) -> list[str]:
    """http(s) URLs in a text/plain body and a text/html body, at most ``limit``.

    Plain text: bare ``http(s)://`` and ``www.`` URLs, trailing punctuation
    stripped.  HTML: URL attributes (``href``, ``src``, form ``action``...),
    ``<meta http-equiv=refresh>`` and bare URLs in the text, entities decoded;
    comments are skipped.  Deduplicated in first-seen order, except that links
    a reader can click (text URLs, ``a``/``area`` ``href``, form actions,
    refresh) come before embedded resources (images, scripts, frames), so that
    a newsletter's pictures do not use up the download budget.  Only the first
    :data:`MAX_SCAN_CHARS` characters of each body are read.
    """
    if limit <= 0:
        return []
    out = _Collector(limit)
    try:
        _text_urls((text or "")[:MAX_SCAN_CHARS], out)
        if not out.full():
            _html_urls((html or "")[:MAX_SCAN_CHARS], out)
    except Exception:  # defensive: a bug here must not lose the message
        log.exception("URL extraction failed; keeping %d URLs found so far", len(out.seen))
    return out.result()


# -- address policy -----------------------------------------------------------

_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_SHARED = ipaddress.ip_network("100.64.0.0/10")
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def _allowed_networks(cfg: LinksConfig) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    nets = []
    for text in cfg.allow_networks:
        try:
            nets.append(ipaddress.ip_network(text, strict=False))
        except ValueError:
            log.warning("links.allow_networks: ignoring %r (not a CIDR)", text)
    return nets


def _embedded_v4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip in _NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    if ip.teredo is not None:
        return ip.teredo[1]
    return None


def _why_not_public(ip: IPAddress) -> str | None:
    """Why ``ip`` must not be contacted, or ``None`` when it is a public unicast address."""
    for attr in ("is_unspecified", "is_loopback", "is_link_local", "is_multicast", "is_private", "is_reserved"):
        if getattr(ip, attr):
            return attr[3:].replace("_", "-")
    if isinstance(ip, ipaddress.IPv4Address) and ip in _SHARED:
        return "shared (carrier-grade NAT)"
    if isinstance(ip, ipaddress.IPv6Address) and ip.is_site_local:
        return "site-local"
    if not ip.is_global:
        return "not globally routable"
    return None


def address_refusal(ip: IPAddress, allowed: Sequence[ipaddress.IPv4Network | ipaddress.IPv6Network]) -> str | None:
    """``None`` when ``ip`` may be contacted, else the reason it may not."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.scope_id:
        ip = ipaddress.IPv6Address(ip.compressed.split("%", 1)[0])
    inner = _embedded_v4(ip) if isinstance(ip, ipaddress.IPv6Address) else None
    candidates = [ip] if inner is None else [ip, inner]
    if any(c.version == net.version and c in net for c in candidates for net in allowed):
        return None
    for c in candidates:
        why = _why_not_public(c)
        if why is not None:
            return f"{ip} is {why}" if c is ip else f"{ip} embeds {c}, which is {why}"
    return None


# -- downloading --------------------------------------------------------------


class _Failure(Exception):
    """One download stopped: ``finding_id`` and ``reason`` become the finding."""

    def __init__(self, finding_id: str, reason: str, severity: int = 1):
        super().__init__(reason)
        self.finding_id = finding_id
        self.reason = reason
        self.severity = severity


def _show(url: str, limit: int = 300) -> str:
    text = "".join(ch if ch.isprintable() else "?" for ch in url[:limit])
    return text + ("\u2026" if len(url) > limit else "")


def _resolve(host: str, port: int, deadline: float) -> list[tuple]:
    """``getaddrinfo`` bounded by the deadline (it runs in a helper thread, which is left to finish)."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        pass
    else:
        try:
            return socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_NUMERICHOST)
        except OSError as exc:  # e.g. an IPv6 literal on a host without IPv6
            raise _Failure("link_download_failed", f"address {host}: {exc}") from None
    box: dict[str, object] = {}

    def lookup() -> None:
        try:
            box["result"] = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except Exception as exc:  # gaierror, UnicodeError for bad names
            box["error"] = exc

    worker = threading.Thread(target=lookup, name="mailvm-links-dns", daemon=True)
    worker.start()
    worker.join(max(0.0, deadline - time.monotonic()))
    if worker.is_alive():
        raise _Failure("link_download_failed", f"DNS: no answer for {host} before the timeout")
    if "error" in box:
        raise _Failure("link_download_failed", f"DNS: {host}: {box['error']}")
    return box["result"]  # type: ignore[return-value]


class _DeadlineReader(io.RawIOBase):
    """The raw stream under ``HTTPResponse``: every recv bounded by the socket timeout and the deadline."""

    def __init__(self, owner: "_DeadlineSocket"):
        super().__init__()
        self._owner = owner

    def readable(self) -> bool:
        return True

    def readinto(self, buf) -> int:  # type: ignore[override]
        self._owner.arm()
        return self._owner.sock.recv_into(buf)


class _DeadlineSocket:
    """What ``http.client`` sees as its socket: only sendall, makefile and close are used."""

    def __init__(self, sock: socket.socket, deadline: float, timeout: float):
        self.sock = sock
        self.deadline = deadline
        self.timeout = timeout

    def arm(self) -> None:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("download deadline reached")
        self.sock.settimeout(min(self.timeout, left))

    def sendall(self, data: bytes) -> None:
        self.arm()
        self.sock.sendall(data)

    def makefile(self, mode: str = "rb", *args, **kwargs) -> io.BufferedReader:
        return io.BufferedReader(_DeadlineReader(self), buffer_size=READ_CHUNK)

    def close(self) -> None:
        """Ignored: ``http.client`` "closes" the connection while the response is still being read
        (``Connection: close``); the owner closes the real socket with :meth:`release`."""

    def release(self) -> None:
        self.sock.close()


class _PinnedConnection(http.client.HTTPConnection):
    """An HTTP(S) connection to an address chosen (and checked) by the caller, not by a new DNS lookup."""

    def __init__(self, host: str, port: int, default_port: int, sock: _DeadlineSocket):
        super().__init__(host, port)
        self.default_port = default_port  # so that Host omits the port when it is the scheme's own
        self.auto_open = 0
        self.sock = sock

    def connect(self) -> None:  # never reached with auto_open = 0; refuse to dial on our own
        raise http.client.NotConnected("pinned connection cannot reconnect")


@dataclass
class _Hop:
    url: str
    scheme: str
    host: str  # ASCII (IDNA) form
    port: int
    target: str  # path + query, percent-encoded


def _parse_hop(url: str) -> _Hop:
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise _Failure("link_download_failed", f"bad URL: {exc}") from None
    if parts.scheme not in SCHEMES:
        raise _Failure("link_refused_address", f"scheme {parts.scheme or '(none)'!r} is not http(s)", 0)
    host = parts.hostname or ""
    if not host:
        raise _Failure("link_download_failed", "bad URL: no host")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        try:
            host = host.rstrip(".").encode("idna").decode("ascii")
        except UnicodeError as exc:
            raise _Failure("link_download_failed", f"bad host name: {exc}") from None
        if not host:  # the name was only dots: never ask DNS for ""
            raise _Failure("link_download_failed", "bad URL: no host")
    if port is None:
        port = 443 if parts.scheme == "https" else 80
    path = urllib.parse.quote(parts.path or "/", safe="/%:@!$&'()*+,;=-._~")
    query = urllib.parse.quote(parts.query, safe="/%:@!$&'()*+,;=-._~?")
    target = path + ("?" + query if query else "")
    return _Hop(url, parts.scheme, host, port, target)


def _checked_addresses(hop: _Hop, cfg: LinksConfig, deadline: float, allowed: list) -> list[tuple]:
    infos = _resolve(hop.host, hop.port, deadline)
    good: list[tuple] = []
    for family, socktype, proto, _canon, sockaddr in infos:
        try:
            ip = ipaddress.ip_address(sockaddr[0])
        except ValueError:
            raise _Failure("link_refused_address", f"{hop.host} resolved to unparsable {sockaddr[0]!r}", 0) from None
        why = address_refusal(ip, allowed)
        if why is not None:
            raise _Failure("link_refused_address", f"{hop.host}: {why}", 0)
        good.append((family, socktype, proto, sockaddr))
    if not good:
        raise _Failure("link_download_failed", f"DNS: {hop.host} has no address")
    return good


def _open(hop: _Hop, addrs: list[tuple], cfg: LinksConfig, deadline: float, ssl_context: ssl.SSLContext | None) -> _DeadlineSocket:
    """Connect to the first reachable checked address; TLS with SNI and verification for https."""
    last: Exception | None = None
    for family, socktype, proto, sockaddr in addrs:
        left = deadline - time.monotonic()
        if left <= 0:
            raise _Failure("link_download_failed", "timeout while connecting")
        sock = socket.socket(family, socktype, proto)
        try:
            sock.settimeout(min(cfg.timeout_s, left))
            sock.connect(sockaddr)
        except OSError as exc:
            sock.close()
            last = exc
            continue
        if hop.scheme == "https":
            ctx = ssl_context or ssl.create_default_context()
            try:
                sock.settimeout(max(0.001, min(cfg.timeout_s, deadline - time.monotonic())))
                sock = ctx.wrap_socket(sock, server_hostname=hop.host)
            except ssl.SSLCertVerificationError as exc:
                sock.close()
                raise _Failure("link_download_failed", f"TLS: certificate not valid for {hop.host}: {exc.verify_message}") from None
            except (ssl.SSLError, OSError) as exc:
                sock.close()
                raise _Failure("link_download_failed", f"TLS: handshake with {hop.host} failed: {_reason(exc)}") from None
        return _DeadlineSocket(sock, deadline, cfg.timeout_s)
    raise _Failure("link_download_failed", f"connect to {hop.host}:{hop.port} failed: {_reason(last)}")


def _reason(exc: BaseException | None) -> str:
    if exc is None:
        return "no address"
    if isinstance(exc, (TimeoutError, socket.timeout)):
        return "timeout"
    text = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {text}"


def _content_disposition_name(value: str | None) -> str | None:
    """``filename*`` (RFC 5987/6266) preferred over ``filename``; ``None`` when neither is usable."""
    if not value:
        return None
    params: dict[str, str] = {}
    for m in re.finditer(r""";\s*([^\s=;]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^;]*)""", value[:8192]):
        key, raw = m.group(1).lower(), m.group(2).strip()
        if raw.startswith('"'):
            raw = re.sub(r"\\(.)", r"\1", raw[1:-1])
        params.setdefault(key, raw)
    star = params.get("filename*")
    if star and star.count("'") >= 2:
        charset, _lang, encoded = star.split("'", 2)
        try:
            name = urllib.parse.unquote(encoded, encoding=charset.strip() or "utf-8", errors="replace")
        except LookupError:
            name = urllib.parse.unquote(encoded, encoding="utf-8", errors="replace")
        if basename(name):
            return basename(name)
    plain = params.get("filename")
    if plain and basename(plain):
        return basename(plain)
    return None


def _file_name(response: http.client.HTTPResponse, hop: _Hop) -> str:
    name = _content_disposition_name(response.getheader("Content-Disposition"))
    if name:
        return name
    path = urllib.parse.unquote(urllib.parse.urlsplit(hop.url).path, errors="replace")
    return basename(path) or hop.host


class _BodyReader:
    """``Spool.add_stream``'s reader: stops at ``max_bytes`` or the first error and remembers which.

    ``read1`` returns what one receive brought, so bytes that arrived before a
    timeout are kept rather than lost in a half-filled buffer.
    """

    def __init__(self, response: http.client.HTTPResponse, max_bytes: int):
        self.response = response
        self.left = max_bytes
        self.truncated = False
        self.error: str | None = None
        self.received = 0
        self._pending = b""

    def prime(self) -> None:
        """Read the first bytes before a file is created: a body that fails at once is no artifact."""
        self._pending = self._read(READ_CHUNK)
        if not self._pending and self.error is not None:
            raise _Failure("link_download_failed", self.error)

    def __call__(self, n: int) -> bytes:
        if self._pending:
            data, self._pending = self._pending[:n], self._pending[n:]
            return data
        return self._read(n)

    def _read(self, n: int) -> bytes:
        if self.error is not None:
            return b""
        if self.left <= 0:
            self._probe_for_more()
            return b""
        try:
            data = self.response.read1(min(n, self.left, READ_CHUNK))
        except (TimeoutError, socket.timeout):
            self.error = f"timeout after {self.received} bytes"
            return b""
        except (http.client.HTTPException, OSError, ValueError) as exc:
            self.error = f"{_reason(exc)} after {self.received} bytes"
            return b""
        self.left -= len(data)
        self.received += len(data)
        return data

    def _probe_for_more(self) -> None:
        """After ``max_bytes``: one more byte means the body was cut; a stalled server means we cannot tell."""
        if self.truncated:
            return
        try:
            self.truncated = bool(self.response.read1(1))
        except (http.client.HTTPException, OSError, ValueError):
            pass


@dataclass
class _Outcome:
    artifact: Artifact | None = None
    findings: list[Finding] = field(default_factory=list)


def _download_one(
    url: str,
    spool: Spool,
    cfg: LinksConfig,
    depth: int,
    deadline: float,
    allowed: list,
    ssl_context: ssl.SSLContext | None,
) -> _Outcome:
    shown = _show(url)
    current = url
    redirects = 0
    while True:
        try:
            hop = _parse_hop(current)
            addrs = _checked_addresses(hop, cfg, deadline, allowed)
        except _Failure as fail:
            if redirects and fail.finding_id == "link_refused_address":
                # an intranet link in a mail is normal (severity 0); a public
                # server sending us to one is an SSRF attempt (severity 1)
                raise _Failure(fail.finding_id, f"redirect to {_show(current, 200)}: {fail.reason}", 1) from None
            raise
        sock = _open(hop, addrs, cfg, deadline, ssl_context)
        conn: _PinnedConnection | None = None
        try:
            try:
                conn = _PinnedConnection(hop.host, hop.port, 443 if hop.scheme == "https" else 80, sock)
                conn.request(
                    "GET",
                    hop.target,
                    headers={
                        "User-Agent": cfg.user_agent,
                        "Accept": "*/*",
                        "Accept-Encoding": "identity",
                        "Connection": "close",
                    },
                )
                response = conn.getresponse()
            except (TimeoutError, socket.timeout):
                raise _Failure("link_download_failed", "timeout waiting for the response") from None
            except (http.client.HTTPException, OSError, ValueError) as exc:
                raise _Failure("link_download_failed", f"HTTP: {_reason(exc)}") from None
            status = response.status
            if status in REDIRECT_CODES:
                location = response.getheader("Location")
                if not location:
                    raise _Failure("link_download_failed", f"HTTP {status} without Location")
                redirects += 1
                try:
                    nxt = urllib.parse.urljoin(current, location.strip())
                except ValueError:
                    raise _Failure("link_download_failed", f"HTTP {status} with a bad Location: {_show(location, 200)}") from None
                if redirects > cfg.max_redirects:
                    raise _Failure("link_too_many_redirects", f"more than {cfg.max_redirects} redirects (next: {_show(nxt, 200)})")
                log.debug("link %s: HTTP %d -> %s", shown, status, _show(nxt))
                current = nxt
                continue
            if not 200 <= status < 300:
                raise _Failure("link_download_failed", f"HTTP status {status}")
            name = _file_name(response, hop)
            reader = _BodyReader(response, cfg.max_bytes)
            reader.prime()
            try:
                art = spool.add_stream(reader, name, (f"url:{url}",), depth)
            except LimitExceeded as exc:
                raise _Failure("link_download_failed", f"message extraction budget spent ({exc})") from None
            out = _Outcome(art)
            if art is None:
                out.findings.append(Finding("link_download_failed", 1, f"{shown}: message artifact limit reached", SOURCE))
                return out
            if reader.truncated:
                out.findings.append(Finding("link_truncated", 1, f"{shown}: body cut at {cfg.max_bytes} bytes", SOURCE))
            if reader.error is not None:
                out.findings.append(Finding("link_download_failed", 1, f"{shown}: {reader.error} (partial file kept)", SOURCE))
            log.info("downloaded %s (%d bytes, %s) after %d redirect(s)", shown, art.size, art.type, redirects)
            return out
        finally:
            if conn is not None:
                conn.close()
            sock.release()


def download_links(
    urls: Sequence[str],
    spool: Spool,
    cfg: LinksConfig,
    depth: int = 0,
    ssl_context: ssl.SSLContext | None = None,
) -> tuple[list[Artifact], list[Finding]]:
    """Download ``urls`` into ``spool``: artifacts for what arrived, findings for everything else.

    Each artifact's origin is ``("url:<url>",)``.  At most ``cfg.max_links``
    URLs are tried (``link_limit_exceeded`` when there were more), each within
    ``cfg.timeout_s`` and all within ``cfg.total_timeout_s`` (and the spool's
    own time budget).  ``ssl_context`` replaces the default verifying context
    (tests use it to trust their own CA).  Never raises for hostile input; with
    ``cfg.enabled`` false it returns ``([], [])`` without touching the network.
    """
    if not cfg.enabled:
        return [], []
    artifacts: list[Artifact] = []
    findings: list[Finding] = []
    unique = list(dict.fromkeys(u for u in urls if isinstance(u, str)))
    if len(unique) > cfg.max_links:
        findings.append(
            Finding("link_limit_exceeded", 1, f"{len(unique)} links, only the first {cfg.max_links} downloaded", SOURCE)
        )
        unique = unique[: cfg.max_links]
    if not unique:
        return artifacts, findings
    allowed = _allowed_networks(cfg)
    total_deadline = min(time.monotonic() + cfg.total_timeout_s, spool.budget.deadline)
    for i, url in enumerate(unique):
        now = time.monotonic()
        if now >= total_deadline:
            findings.append(
                Finding("link_download_failed", 1, f"{len(unique) - i} link(s) not tried: time budget for links spent", SOURCE)
            )
            break
        if not spool.room_for_artifact():
            findings.append(
                Finding("link_download_failed", 1, f"{len(unique) - i} link(s) not tried: message artifact limit reached", SOURCE)
            )
            break
        deadline = min(now + cfg.timeout_s, total_deadline)
        try:
            out = _download_one(url, spool, cfg, depth, deadline, allowed, ssl_context)
        except _Failure as fail:
            findings.append(Finding(fail.finding_id, fail.severity, f"{_show(url)}: {fail.reason}", SOURCE))
            log.info("link %s: %s: %s", _show(url), fail.finding_id, fail.reason)
            continue
        except Exception as exc:  # a bug or an unforeseen error: data, not a crash
            log.exception("link %s: unexpected error", _show(url))
            findings.append(Finding("link_download_failed", 1, f"{_show(url)}: internal error {type(exc).__name__}", SOURCE))
            continue
        if out.artifact is not None:
            artifacts.append(out.artifact)
        findings.extend(out.findings)
    return artifacts, findings


__all__ = ["download_links", "find_urls", "normalize_url", "address_refusal", "MAX_SCAN_CHARS"]
