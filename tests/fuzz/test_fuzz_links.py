"""Fuzzing the link finder (mailvm.extract.links: URL finding and the pure URL/address checks; no network).

Inputs: text and HTML assembled from URL-ish and tag-ish fragments (schemes, hosts, IPv6, entities,
backslashes, ``<base>``, ``srcset``, meta refresh, comments, unterminated tags), random text, and
long repetitions of the fragments that back-tracking expressions choke on.  Properties:

* find_urls never fails internally (it catches and logs; a logged failure counts as a crash here);
* at most ``limit`` URLs, no duplicates, each an absolute http(s) URL with a host, without fragment,
  at most MAX_URL_CHARS long, and already in normal form (normalize_url(u) == u);
* each one can be turned into a request line (_parse_hop) or is refused with the module's own
  _Failure, never another exception;
* address_refusal() answers for any IPv4/IPv6 address (refusal text or None);
* bounded time for inputs up to a few hundred kilobytes.
"""

from __future__ import annotations

import ipaddress
import logging
import time

from hypothesis import given
from hypothesis import strategies as st

from fuzzkit import budget, check_memory, count, keep_on_failure
from mailvm.extract import links as L

FRAGMENTS = [
    "http://", "https://", "HTTP:\\\\", "http:/", "https:", "www.", "ftp://", "javascript:", "data:text/html,",
    "example.com", "xn--80ak6aa92e.com", "пример.рф", "[::1]", "[fe80::1%25eth0]", "127.0.0.1", "0x7f.1",
    "2130706433", "user:pass@", ":8080", ":99999", ":-1", "/path", "?q=1&r=2", "#frag", "%2e%2e/", "\\", "\t",
    "\n", "\u00a0", "\u202e", "(", ")", "[", "]", "{", "}", ".", ",", "\"", "'", "`", ">", "<", "&amp;", "&#x68;",
    "&#104;ttp", "&colon;", "<a href=", "<a href='", "<A HREF=\"", "<img src=", "<img srcset=\"", " 2x, ",
    "<base href=\"", "<meta http-equiv=refresh content=\"0;url=", "<form action=", "<button formaction=",
    "<area href=", "<iframe src=", "<!--", "-->", "<script>", "</script>", "<", "/>", " ", "=", "\x00",
]

fragment_docs = st.lists(st.sampled_from(FRAGMENTS) | st.text(max_size=8), max_size=80).map("".join)
long_repeats = st.tuples(st.sampled_from(FRAGMENTS + ["a", "<a ", "http://a", "www.a.", "<a href=x "]),
                         st.integers(100, 40_000)).map(lambda t: t[0] * t[1])
docs = st.one_of(fragment_docs, st.text(max_size=500), long_repeats)


class _Failures(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def check_find_urls(text: str, html: str, limit: int) -> list[str]:
    failures = _Failures()
    L.log.addHandler(failures)
    try:
        t0 = time.monotonic()
        urls = L.find_urls(text, html, limit)
        elapsed = time.monotonic() - t0
        assert not failures.records, failures.records[0].getMessage()
    finally:
        L.log.removeHandler(failures)
    assert elapsed < 5.0, f"find_urls took {elapsed:.1f} s on {len(text) + len(html)} characters"
    assert len(urls) <= limit and len(set(urls)) == len(urls)
    for u in urls:
        assert u.startswith(("http://", "https://")) and "#" not in u and len(u) <= L.MAX_URL_CHARS, u
        assert L.normalize_url(u) == u, u
        try:
            hop = L._parse_hop(u)
        except L._Failure:
            continue
        assert hop.scheme in L.SCHEMES and 0 <= hop.port <= 65535
        assert hop.host, (u, hop)
        assert hop.target.startswith("/") and not any(c in hop.target for c in " \r\n\t")
    return urls


@budget(800)
@given(docs, docs, st.integers(0, 50))
def test_find_urls_properties(text, html, limit):
    count("links.find_urls")
    with keep_on_failure("links", (text + "\n\x00HTML\x00\n" + html).encode("utf-8", "surrogatepass"), ".txt"):
        check_find_urls(text, html, limit)
    check_memory()


@budget(500)
@given(st.one_of(fragment_docs, st.text(max_size=200)), st.one_of(st.none(), fragment_docs))
def test_normalize_url_is_total_and_idempotent(raw, base):
    count("links.normalize_url")
    with keep_on_failure("links_normalize", f"{raw}\n{base}".encode("utf-8", "surrogatepass"), ".txt"):
        base_url = L.normalize_url(base) if base is not None else None
        u = L.normalize_url(raw, base_url)
        if u is not None:
            assert u.startswith(("http://", "https://")) and L.normalize_url(u) == u


addresses = st.one_of(
    st.ip_addresses(v=4), st.ip_addresses(v=6),
    st.sampled_from(["127.0.0.1", "::1", "::ffff:127.0.0.1", "64:ff9b::7f00:1", "2002:7f00:1::", "100.64.0.1",
                     "169.254.169.254", "fd00::1", "fe80::1", "0.0.0.0", "::", "224.0.0.1", "255.255.255.255",
                     "2001::7f00:1", "::127.0.0.1"]).map(ipaddress.ip_address),
)
networks = st.lists(st.sampled_from(["10.0.0.0/8", "127.0.0.0/8", "::1/128", "192.168.1.0/24", "fd00::/8"])
                    .map(ipaddress.ip_network), max_size=3)


@budget(500)
@given(addresses, networks)
def test_address_refusal_answers_for_any_address(ip, allowed):
    count("links.address_refusal")
    why = L.address_refusal(ip, allowed)
    assert why is None or (isinstance(why, str) and why)
    inner = L._embedded_v4(ip) if ip.version == 6 else None
    candidates = [ip] + ([inner] if inner is not None else [])
    if why is None and not any(c in n for c in candidates for n in allowed if n.version == c.version):
        # contacted: the address and any IPv4 address it carries are public
        assert all(c.is_global and not c.is_multicast for c in candidates), ip
