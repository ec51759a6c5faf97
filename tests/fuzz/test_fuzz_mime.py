"""Fuzzing the MIME walker (mailvm.extract.mime through extract_message) with hostile messages.

Messages are written byte by byte here (not through the email package, which would tidy them):
random trees of multiparts with odd boundaries, nested message/rfc822, every transfer encoding
(and broken ones), uuencoded blocks in bodies, RFC 2047/2231 names with path traversal and control
characters, bad charsets, and containers as attachments (zip, TNEF, tar); then optionally mutated.
Properties (fuzzkit.check_extraction): no internal error, bounded time and memory, every file a
regular file inside the spool (nothing written anywhere else, not even the current directory), the
per-message limits (artifacts, bytes, depth) kept; plus bounded text, HTML and header values.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import quopri

from hypothesis import given
from hypothesis import strategies as st

from builders import tar_archive, tnef_blob, zip_archive
from fuzzkit import budget, count, extraction_job, hostile_names, isolated, keep_on_failure, mutate, mutations
from mailvm.config import ExtractConfig

#: small limits so that the fuzzer reaches them
CFG = dataclasses.replace(ExtractConfig(), max_depth=3, max_members=40, max_artifacts=60,
                          max_total_bytes=4 * 1024 * 1024, max_file_bytes=1024 * 1024, max_ratio=50,
                          time_budget_s=5.0, max_message_bytes=2 * 1024 * 1024, max_password_tries=5)

boundaries = st.sampled_from(["b", "=_b", "----=_Part_0_1", "a" * 70, "a" * 200, " spaced ", "\"quoted\"", "", "b;x=1",
                              "--", "b\x00", "\u00e9"]) | st.text(max_size=12)
charsets = st.sampled_from(["utf-8", "us-ascii", "iso-8859-1", "windows-1252", "utf-16", "utf-7", "gb2312",
                            "x-unknown", "", "utf-8\"; x=\"", "../../etc"])
encodings = st.sampled_from(["7bit", "8bit", "binary", "base64", "quoted-printable", "x-uuencode", "uuencode",
                             "BASE64 ", "base64; x", "gzip", ""])
header_values = st.one_of(
    st.text(max_size=60),
    st.sampled_from(["=?utf-8?b?SGVsbG8=?=", "=?utf-8?q?caf=C3=A9?=", "=?x-unknown?b?AAAA?=", "=?utf-8?b?####?=",
                     "=?utf-8?q?" + "=41" * 400 + "?=", "a\r\n b", "\x00\x01", "<" * 300, "x" * 2000]),
)
names = st.one_of(hostile_names, st.sampled_from(["=?utf-8?b?Li4vLi4vZXZpbC5leGU=?=", "invoice.pdf\u202eexe.scr"]))


def _encode(data: bytes, enc: str) -> bytes:
    e = enc.strip().lower()
    if e.startswith("base64"):
        return base64.encodebytes(data)
    if e == "quoted-printable":
        return quopri.encodestring(data)
    if e in ("x-uuencode", "uuencode"):
        lines = [binascii.b2a_uu(data[i : i + 45]) for i in range(0, len(data), 45)]
        return b"begin 644 f.bin\n" + b"".join(lines) + b"`\nend\n"
    return data


def _disposition(name: str, style: str) -> bytes:
    if style == "2231":
        q = "".join(c if c.isalnum() else "%%%02X" % (ord(c) & 0xFF) for c in name)
        return f"Content-Disposition: attachment; filename*=utf-8''{q}\r\n".encode("utf-8", "replace")
    if style == "2231-split":
        half = len(name) // 2
        return (f"Content-Disposition: attachment; filename*0=\"{name[:half]}\"; filename*1=\"{name[half:]}\"\r\n"
                .encode("utf-8", "replace"))
    if style == "ctype-name":
        return b""
    return f"Content-Disposition: attachment; filename=\"{name}\"\r\n".encode("utf-8", "replace")


payloads = st.one_of(
    st.binary(max_size=600),
    st.lists(hostile_names, min_size=1, max_size=3).map(lambda ns: zip_archive([(n, b"member " + n.encode("utf-8", "replace")) for n in ns])),
    st.lists(hostile_names, min_size=1, max_size=3).map(lambda ns: tnef_blob([(n, b"tnef " + n.encode("utf-8", "replace")) for n in ns])),
    st.lists(hostile_names, min_size=1, max_size=2).map(lambda ns: tar_archive([(n or "x", b"tar") for n in ns])),
    st.just(b"MZ\x90\x00" + b"\x00" * 60 + b"PE\x00\x00"),
)
leaf = st.builds(
    lambda kind, data, enc, charset, name, style, text: ("leaf", kind, data, enc, charset, name, style, text),
    st.sampled_from(["text/plain", "text/html", "application/octet-stream", "application/zip", "application/ms-tnef",
                     "image/png", "text/x-unknown", "message/delivery-status", ""]),
    payloads, encodings, charsets, names, st.sampled_from(["plain", "2231", "2231-split", "ctype-name", "none"]),
    st.text(max_size=200) | st.sampled_from(["begin 644 evil.exe\nM5&AI<R!I<R!A('1E<W0*\n`\nend\n",
                                             "<html><a href='http://x.test/a.exe'>x</a><script>" + "a" * 50]),
)
trees = st.recursive(
    leaf,
    lambda kids: st.one_of(
        st.tuples(st.just("multi"), st.sampled_from(["mixed", "alternative", "related", "signed", "digest", "x-odd"]),
                  boundaries, st.lists(kids, max_size=4), st.sampled_from(["ok", "no-close", "no-open", "nested-same"])),
        st.tuples(st.just("rfc822"), kids, st.sampled_from(["message/rfc822", "message/global"])),
    ),
    max_leaves=10,
)


def render(node, headers: list[tuple[str, str]] | None = None) -> bytes:
    """One part (with its own headers) as bytes."""
    head = b"".join(f"{k}: {v}\r\n".encode("utf-8", "surrogateescape") for k, v in (headers or []))
    if node[0] == "leaf":
        _, ctype, data, enc, charset, name, style, text = node
        if ctype.startswith("text/"):
            data = text.encode(charset if charset in ("utf-8", "iso-8859-1", "us-ascii") else "utf-8", "replace")
        name_param = f'; name="{name}"' if style == "ctype-name" else ""
        head += f"Content-Type: {ctype}; charset=\"{charset}\"{name_param}\r\n".encode("utf-8", "replace")
        head += f"Content-Transfer-Encoding: {enc}\r\n".encode()
        if style != "none":
            head += _disposition(name, style)
        return head + b"\r\n" + _encode(data, enc)
    if node[0] == "rfc822":
        _, inner, ctype = node
        body = render(inner, [("Subject", "inner"), ("From", "a@b.test")])
        return head + f"Content-Type: {ctype}\r\n\r\n".encode() + body
    _, sub, boundary, kids, shape = node
    b = boundary.encode("utf-8", "replace")
    head += b'Content-Type: multipart/' + sub.encode() + b'; boundary="' + b + b'"\r\n\r\n'
    parts = [render(k) for k in kids]
    if shape == "nested-same" and parts:
        parts[0] = b'Content-Type: multipart/mixed; boundary="' + b + b'"\r\n\r\n--' + b + b"\r\n" + parts[0]
    body = b"preamble\r\n"
    for p in parts:
        if shape != "no-open":
            body += b"--" + b + b"\r\n"
        body += p + b"\r\n"
    if shape != "no-close":
        body += b"--" + b + b"--\r\nepilogue\r\n"
    return head + body


messages = st.builds(
    lambda top, hdrs, tree: render(tree, [*top, *hdrs]),
    st.lists(st.tuples(st.sampled_from(["Subject", "From", "To", "Cc", "Message-ID", "Date", "X-Mailvm-Verdict"]),
                       header_values), max_size=6),
    st.lists(st.tuples(st.sampled_from(["Content-Type", "MIME-Version", "Content-Transfer-Encoding", "X-A"]),
                       header_values), max_size=2),
    trees,
)


def run_message(raw: bytes) -> None:
    """Extract ``raw`` in the isolated worker (a C library's crash fails the test, not the run)."""
    count("mime")
    with keep_on_failure("mime", raw, ".eml"):
        isolated(extraction_job, "message", raw, "message.eml", CFG)


@budget(400)
@given(messages)
def test_generated_messages(raw):
    run_message(raw)


@budget(500)
@given(messages, mutations)
def test_mutated_messages(raw, ops):
    run_message(mutate(raw, ops))


@budget(150)
@given(st.binary(max_size=4000))
def test_random_bytes(raw):
    run_message(raw)


@budget(20)
@given(st.sampled_from(["multipart", "rfc822", "parts", "headers", "uuencode"]), st.integers(50, 3000))
def test_pathological_shapes(shape, n):
    """Deep nesting, many parts, huge header counts, many uuencoded blocks: limits, not exhaustion."""
    if shape == "multipart":
        raw = b"".join(b'Content-Type: multipart/mixed; boundary="b%d"\r\n\r\n--b%d\r\n' % (i, i) for i in range(n))
    elif shape == "rfc822":
        raw = b"Subject: x\r\nContent-Type: message/rfc822\r\n\r\n" * n + b"Subject: inner\r\n\r\nbody"
    elif shape == "parts":
        raw = b'Content-Type: multipart/mixed; boundary="b"\r\n\r\n' + b"".join(
            b'--b\r\nContent-Type: application/octet-stream\r\nContent-Disposition: attachment; filename="f%d"\r\n\r\n%d\r\n'
            % (i, i) for i in range(n)) + b"--b--\r\n"
    elif shape == "headers":
        raw = b"".join(b"X-H%d: %s\r\n" % (i, b"v" * 50) for i in range(n)) + b"\r\nbody"
    else:
        raw = b"Subject: uu\r\n\r\n" + b"".join(b"begin 644 f%d.exe\nM5&AI<R!I<R!A('1E<W0*\n`\nend\n" % i for i in range(n))
    run_message(raw)
