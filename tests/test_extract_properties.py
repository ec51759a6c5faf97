"""Property tests for extraction: hostile bytes, mutated messages, random archive trees, password text.

Properties checked on every example: nothing raises, each example finishes in
bounded time, the spool never holds more than the byte budget, every file is
a regular file inside the spool, and (for intact archive trees) every leaf
within the depth limit is found by its sha256.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import os
import stat
import tarfile
import tempfile
import time
import zipfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from mailvm.config import ExtractConfig
from mailvm.extract import extract_file, extract_message
from mailvm.extract.mime import html_visible_text
from mailvm.extract.passwords import candidate_passwords
from mailvm.extract.spool import Spool

from testdata import CORPUS, CORPUS_MISSING

CFG = dataclasses.replace(
    ExtractConfig(), max_total_bytes=8 * 1024 * 1024, max_file_bytes=4 * 1024 * 1024, time_budget_s=10.0
)
#: wall time allowed per example (the extraction budget is 10 s; this is the hard bound checked)
MAX_SECONDS = 12.0
PROPS = settings(
    max_examples=60,
    deadline=None,  # timing is asserted explicitly (first examples pay library imports)
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def check_spool(spool: Spool, res) -> None:
    assert spool.budget.total_bytes <= CFG.max_total_bytes
    total = 0
    for p in spool.root.iterdir():
        st_ = os.lstat(p)
        assert stat.S_ISREG(st_.st_mode)
        total += st_.st_size
    assert total <= CFG.max_total_bytes
    for art in res.artifacts:
        assert Path(art.path).parent == spool.root
        assert art.size == Path(art.path).stat().st_size
    assert "extract_error" not in [f.id for f in res.findings]
    assert not any(f.id == "extract_error" for a in res.artifacts for f in a.findings)


def run_message(raw: bytes):
    with tempfile.TemporaryDirectory() as d:
        spool = Spool(Path(d) / "spool", CFG)
        t0 = time.monotonic()
        res = extract_message(raw, spool, CFG)
        assert time.monotonic() - t0 < MAX_SECONDS
        check_spool(spool, res)
        return res


def run_file(data: bytes, name: str = "sample.bin"):
    with tempfile.TemporaryDirectory() as d:
        src = Path(d) / "input"
        src.write_bytes(data)
        spool = Spool(Path(d) / "spool", CFG)
        t0 = time.monotonic()
        res = extract_file(src, name, spool, CFG)
        assert time.monotonic() - t0 < MAX_SECONDS
        check_spool(spool, res)
        return res


# -- raw bytes and mutated messages ------------------------------------------------------


@PROPS
@given(st.binary(max_size=20_000))
def test_random_bytes_as_a_message(raw):
    res = run_message(raw)
    assert isinstance(res.text, str) and isinstance(res.headers, dict)


def _sample_messages() -> list[Path]:
    picks = [
        "apache-spamassassin-tdata/t/data/spam/olevbmacro/zippwmacro.eml",
        "apache-spamassassin-tdata/t/data/spam/olevbmacro/encrypted.eml",
        "apache-spamassassin-tdata/t/data/spam/olevbmacro/macro.eml",
        "zbateson-mail-mime-parser/tests/_data/emails/m0018.txt",
        "zbateson-mail-mime-parser/tests/_data/emails/m2013.txt",
        "zbateson-mail-mime-parser/tests/_data/emails/m1014.txt",
        "cpython-test_email-data/msg_43.txt",
        "cpython-test_email-data/msg_02.txt",
    ]
    return [CORPUS / p for p in picks if (CORPUS / p).is_file()]


SAMPLES = _sample_messages()

mutation = st.one_of(
    st.tuples(st.just("truncate"), st.floats(0, 1), st.just(b"")),
    st.tuples(st.just("flip"), st.floats(0, 1), st.binary(min_size=1, max_size=16)),
    st.tuples(st.just("insert"), st.floats(0, 1), st.binary(min_size=1, max_size=64)),
    st.tuples(
        st.just("insert"),
        st.floats(0, 1),
        st.sampled_from(
            [b"\n--", b"\nContent-Type: multipart/mixed; boundary=x\n\n--x\n", b"\nbegin 644 x.exe\nM",
             b"Content-Transfer-Encoding: base64\n", b"=?utf-8?b?", b"\r\n\r\n", b"\x00\xff\xfe"]
        ),
    ),
)


def mutate(data: bytes, ops) -> bytes:
    buf = bytearray(data)
    for kind, where, blob in ops:
        pos = int(where * len(buf))
        if kind == "truncate":
            del buf[pos:]
        elif kind == "flip":
            buf[pos : pos + len(blob)] = blob
        else:
            buf[pos:pos] = blob
    return bytes(buf)


@pytest.mark.skipif(not SAMPLES, reason=CORPUS_MISSING)
@PROPS
@given(st.sampled_from(SAMPLES or [Path("/dev/null")]), st.lists(mutation, min_size=1, max_size=6))
def test_mutated_real_messages(path, ops):
    run_message(mutate(path.read_bytes(), ops))


@PROPS
@given(
    st.recursive(
        st.binary(max_size=200).map(lambda b: ("leaf", b)),
        lambda kids: st.tuples(st.sampled_from(["mixed", "alternative", "rfc822"]), st.lists(kids, min_size=1, max_size=4)),
        max_leaves=12,
    )
)
def test_random_mime_trees(tree):
    """Well-formed random MIME trees: every attachment leaf within the depth limit comes out."""
    from email.message import EmailMessage

    expected: list[bytes] = []
    counter = [0]

    def build(node, depth: int) -> EmailMessage:
        m = EmailMessage()
        if node[0] == "leaf":
            counter[0] += 1
            m.set_content(node[1], maintype="application", subtype="octet-stream", filename=f"f{counter[0]}.bin")
            if depth <= CFG.max_depth:
                expected.append(node[1])
            return m
        kind, kids = node
        if kind == "rfc822":
            inner = EmailMessage()
            inner["Subject"] = "inner"
            inner.make_mixed()
            for k in kids:
                inner.attach(build(k, depth + 1))
            m.set_content(inner)
            return m
        m.make_mixed() if kind == "mixed" else m.make_alternative()
        for k in kids:
            m.attach(build(k, depth))
        return m

    root = EmailMessage()
    root["Subject"] = "tree"
    root.make_mixed()
    root.attach(build(tree, 0))
    res = run_message(root.as_bytes())
    got = {a.sha256 for a in res.artifacts}
    for leaf in expected:
        assert sha(leaf) in got


# -- archives --------------------------------------------------------------------------------

FORMATS = ["zip", "zip_stored", "aeszip", "tar", "tgz", "txz", "7z"]
leaf_bytes = st.one_of(st.binary(max_size=300), st.sampled_from([b"", b"MZ\x90\x00", b"%PDF-1.4\n", b"PK\x03\x04"]))
archive_tree = st.recursive(
    leaf_bytes.map(lambda b: ("leaf", b)),
    lambda kids: st.tuples(st.sampled_from(FORMATS), st.lists(kids, min_size=1, max_size=4)),
    max_leaves=10,
)


def build_archive(node) -> bytes:
    kind, kids = node
    members = {f"m{i}": (build_archive(k) if k[0] != "leaf" else k[1]) for i, k in enumerate(kids)}
    if kind in ("zip", "zip_stored"):
        buf = io.BytesIO()
        method = zipfile.ZIP_DEFLATED if kind == "zip" else zipfile.ZIP_STORED
        with zipfile.ZipFile(buf, "w", method) as z:
            for name, data in members.items():
                z.writestr(name, data)
        return buf.getvalue()
    if kind == "aeszip":
        import pyzipper

        buf = io.BytesIO()
        with pyzipper.AESZipFile(buf, "w", compression=pyzipper.ZIP_DEFLATED, encryption=pyzipper.WZ_AES) as z:
            z.setpassword(b"infected")  # a configured default password
            for name, data in members.items():
                z.writestr(name, data)
        return buf.getvalue()
    if kind in ("tar", "tgz", "txz"):
        buf = io.BytesIO()
        mode = {"tar": "w", "tgz": "w:gz", "txz": "w:xz"}[kind]
        with tarfile.open(fileobj=buf, mode=mode) as t:
            for name, data in members.items():
                ti = tarfile.TarInfo(name)
                ti.size = len(data)
                t.addfile(ti, io.BytesIO(data))
        return buf.getvalue()
    if kind == "7z":
        import py7zr

        buf = io.BytesIO()
        with py7zr.SevenZipFile(buf, "w") as z:
            for name, data in members.items():
                z.writestr(data, name)
        return buf.getvalue()
    raise AssertionError(kind)


def leaves_within_depth(node, depth: int = 0):
    """(bytes, depth) of each leaf; a leaf under n archives has artifact depth n."""
    if node[0] == "leaf":
        yield node[1], depth
        return
    for k in node[1]:
        yield from leaves_within_depth(k, depth + 1)


@PROPS
@given(archive_tree)
def test_random_archive_trees_every_reachable_leaf_found(tree):
    data = tree[1] if tree[0] == "leaf" else build_archive(tree)
    res = run_file(data, "tree.bin")
    got = {a.sha256 for a in res.artifacts}
    too_deep = False
    for leaf, depth in leaves_within_depth(tree):
        if depth <= CFG.max_depth:
            assert sha(leaf) in got
        else:
            too_deep = True
    if too_deep:
        assert any(f.id == "archive_depth_limit_exceeded" and "max_depth" in f.detail for f in res.findings)


@PROPS
@given(archive_tree.filter(lambda t: t[0] != "leaf"), st.lists(mutation, min_size=1, max_size=4))
def test_mutated_archives(tree, ops):
    data = mutate(build_archive(tree), ops)
    assume(data)
    run_file(data, "mutated.bin")


MAGICS = [
    b"PK\x03\x04", b"PK\x05\x06", b"7z\xbc\xaf\x27\x1c", b"Rar!\x1a\x07\x00", b"Rar!\x1a\x07\x01\x00",
    b"\x1f\x8b\x08", b"BZh9", b"\xfd7zXZ\x00", b"\x28\xb5\x2f\xfd", b"MSCF\x00\x00\x00\x00",
    b"\x78\x9f\x3e\x22", b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1", b"From: a@b\nSubject: x\n\n",
]


@PROPS
@given(st.sampled_from(MAGICS), st.binary(max_size=5000))
def test_random_bytes_behind_container_magic(magic, tail):
    res = run_file(magic + tail, "x.bin")
    assert res.artifacts and res.artifacts[0].origin == ("file:x.bin",)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(1, 4), st.integers(10, 60))
def test_zip_bombs_of_random_shape_are_bounded(levels, megabytes):
    data = b"\0" * (megabytes << 20)
    for level in range(levels):
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as z:
            for i in range(3):
                z.writestr(f"l{level}-{i}.bin", data + bytes([i]))
        data = buf.getvalue()
    res = run_file(data, "bomb.zip")
    if levels * megabytes * 3 > 8:
        assert any(f.id.endswith("_limit_exceeded") for f in res.findings)


# -- password guessing --------------------------------------------------------------------------

password_token = st.text(alphabet="abcdefghijkmnopqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ0123456789!#$%&*+@^_~", min_size=3, max_size=20)


@settings(max_examples=100, deadline=2000)
@given(
    st.text(max_size=3000),
    st.lists(st.text(min_size=1, max_size=20), max_size=8),
    st.integers(0, 60),
    password_token,
    st.sampled_from(["Password: {}", "PASSWORD = {}", "Kennwort ist {}", "mot de passe: {}", "pw: {}", 'password "{}"']),
)
def test_candidate_passwords_properties(text, configured, limit, secret, phrase):
    got = candidate_passwords(phrase.format(secret) + "\n" + text, configured, limit)
    assert len(got) <= limit
    assert len(set(got)) == len(got)
    assert all(isinstance(p, str) and p for p in got)
    wanted = list(dict.fromkeys(c for c in configured if c))
    if limit >= len(wanted) + 1:
        assert secret in got  # the value after the keyword is always tried
        assert set(wanted) <= set(got)  # configured passwords are never pushed out
    t0 = time.monotonic()
    candidate_passwords(text * 50, configured, limit)
    assert time.monotonic() - t0 < 1.5


@settings(max_examples=100, deadline=None)
@given(st.lists(st.sampled_from(["<", ">", "<!--", "-->", "<script>", "</script>", "<p>", "&amp;", "&#", "a", " ", "\n", "</", "<style"]), max_size=400), st.integers(1, 500))
def test_html_visible_text_bounded(pieces, repeat):
    html = "".join(pieces) * repeat
    t0 = time.monotonic()
    text = html_visible_text(html)
    assert time.monotonic() - t0 < 2.0
    assert len(text) <= len(html) + 1
    assert "<script>" not in text


_B64_PIECES = st.sampled_from([b"QUJD", b"RA==", b"x", b"/+9", b"\r\n", b"\n", b" ", b"=", b"word ", b"QUJDRA" * 11, b"QUJDRA" * 22 + b"\r\n"])


@settings(max_examples=300, deadline=None)
@given(st.lists(_B64_PIECES, max_size=400))
def test_base64_runs_are_found_as_the_plain_pattern_finds_them(pieces):
    """carve_text searches base64 runs only inside long stretches of base64 letters (the fast
    path for ordinary text): it must find exactly the runs the pattern finds on the whole text."""
    from mailvm.extract.embedded import _B64_RUN, _b64_runs

    data = b"".join(pieces)
    assert [m.span() for m in _b64_runs(data)] == [m.span() for m in _B64_RUN.finditer(data)]
