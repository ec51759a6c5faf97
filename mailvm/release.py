"""The release token: proof that a message re-entering the MTA was released from quarantine.

When an administrator releases a quarantined message, mailvm sends it again
through the local MTA, and so through the milter again.  The milter must let it
pass without a second verdict, and nobody else may be able to make a message pass
that way.  The released copy carries one header::

    X-Mailvm-Release: v1 <item id> <hmac-sha256 hex>

The HMAC (key: a 32-byte secret on the mail host, see :func:`load_or_create_key`)
covers the version, the quarantine item id and the SHA-256 of the message
**body** as the milter sees it (see :func:`body_sha256` for the exact bytes).

Why the body only: between the release and the milter, the MTA adds ``Received:``
and may add or rewrite other headers (``Return-Path``, ``X-Original-To``,
folding); a hash over headers would never verify.  The attachments and text that
were judged live in the body, so a token cannot be moved to a different body.  A
token holder could resend the *same* body with other headers; the milter should
also check that the item exists in the quarantine store in state ``released``.

Stdlib only; no I/O except :func:`load_or_create_key`.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import re
import secrets
import stat
from pathlib import Path

log = logging.getLogger(__name__)

RELEASE_HEADER = "X-Mailvm-Release"
TOKEN_VERSION = "v1"
KEY_BYTES = 32
MIN_KEY_BYTES = 16
_DOMAIN_SEPARATOR = b"mailvm-release"

#: quarantine item ids: ``20261126T101500-ab12cd34`` (UTC time, then 8 random hex digits)
ITEM_ID_RE = re.compile(r"^[0-9]{8}T[0-9]{6}-[0-9a-f]{8}$")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
MAX_HEADER_VALUE = 1000
_RELEASE_LINE = re.compile(rb"(?i)x-mailvm-release[ \t]*:")


def valid_item_id(item_id: object) -> bool:
    """True for a well-formed quarantine item id (and so never a path trick like ``../x``)."""
    return isinstance(item_id, str) and ITEM_ID_RE.fullmatch(item_id) is not None


# --------------------------------------------------------------------------------------
# The body as the milter sees it
# --------------------------------------------------------------------------------------


class BodyHasher:
    """SHA-256 of a message body in canonical form, fed in chunks (as milter body callbacks arrive).

    Canonical form (the same as DKIM's "simple" body canonicalization, RFC 6376
    3.4.3, applied to line endings first):

    1. every line ending (CRLF or a bare LF) becomes CRLF; a bare CR stays data;
    2. all empty lines at the end of the body are removed;
    3. the body then ends with exactly one CRLF (an empty body is a single CRLF).

    Step 1 makes the hash independent of how the message was stored (LF on disk)
    and sent (CRLF on the wire, which is what Postfix hands to a milter); steps 2
    and 3 make it independent of the trailing CRLF smtplib adds and of blank lines
    an MTA may add or drop at the end.
    """

    def __init__(self) -> None:
        self._h = hashlib.sha256()
        self._pending_newlines = 0
        self._carry_cr = False
        self._done: str | None = None

    def update(self, chunk: bytes) -> None:
        if self._done is not None:
            raise ValueError("hexdigest() was already called")
        data = (b"\r" if self._carry_cr else b"") + bytes(chunk)
        self._carry_cr = data.endswith(b"\r")
        if self._carry_cr:
            data = data[:-1]
        data = data.replace(b"\r\n", b"\n")
        content = data.rstrip(b"\n")
        trailing = len(data) - len(content)
        if content:
            self._h.update(b"\r\n" * self._pending_newlines)
            self._h.update(content.replace(b"\n", b"\r\n"))
            self._pending_newlines = trailing
        else:
            self._pending_newlines += trailing

    def hexdigest(self) -> str:
        if self._done is None:
            if self._carry_cr:  # a bare CR at the very end is data
                self._h.update(b"\r\n" * self._pending_newlines + b"\r")
            self._h.update(b"\r\n")
            self._done = self._h.hexdigest()
        return self._done


def body_sha256(body: bytes) -> str:
    """Canonical SHA-256 (hex) of a message body (the bytes after the blank line)."""
    h = BodyHasher()
    h.update(body)
    return h.hexdigest()


def split_message(raw: bytes) -> tuple[bytes, bytes]:
    """``(header section including its last line ending, body)``.

    The header section ends at the first empty line (CRLF or LF); the empty line
    itself belongs to neither.  No empty line: everything is header, the body is empty.
    """
    if raw.startswith(b"\r\n"):
        return b"", raw[2:]
    if raw.startswith(b"\n"):
        return b"", raw[1:]
    pos = 0
    while True:
        nl = raw.find(b"\n", pos)
        if nl < 0:
            return raw, b""
        nxt = nl + 1
        if raw.startswith(b"\n", nxt):
            return raw[:nxt], raw[nxt + 1 :]
        if raw.startswith(b"\r\n", nxt):
            return raw[:nxt], raw[nxt + 2 :]
        pos = nxt


def message_body_sha256(raw: bytes) -> str:
    """:func:`body_sha256` of a whole message's body."""
    return body_sha256(split_message(raw)[1])


# --------------------------------------------------------------------------------------
# Tokens
# --------------------------------------------------------------------------------------


def _mac(key: bytes, item_id: str, body_hex: str) -> str:
    msg = b"\n".join((_DOMAIN_SEPARATOR, TOKEN_VERSION.encode(), item_id.encode("ascii"), body_hex.encode("ascii")))
    return hmac.new(key, msg, hashlib.sha256).hexdigest()


def make_token(key: bytes, item_id: str, body_sha256: str) -> str:
    """The release header's value: ``v1 <item id> <hmac hex>``."""
    if not isinstance(key, (bytes, bytearray)) or len(key) < MIN_KEY_BYTES:
        raise ValueError(f"release key must be at least {MIN_KEY_BYTES} bytes")
    if not valid_item_id(item_id):
        raise ValueError(f"not a quarantine item id: {item_id!r}")
    body_hex = body_sha256.lower() if isinstance(body_sha256, str) else ""
    if not _HEX64.fullmatch(body_hex):
        raise ValueError("body_sha256 must be 64 hex digits")
    return f"{TOKEN_VERSION} {item_id} {_mac(bytes(key), item_id, body_hex)}"


def verify_token(key: bytes, header_value: object, body_sha256: object) -> str | None:
    """The item id when ``header_value`` is a valid token for this body and key, else None.

    Never raises, whatever ``header_value`` holds (it comes from a message).
    Folding whitespace inside the value is tolerated; the MAC is compared in
    constant time.
    """
    if isinstance(header_value, (bytes, bytearray)):
        try:
            header_value = bytes(header_value).decode("ascii")
        except UnicodeDecodeError:
            return None
    if not isinstance(header_value, str) or len(header_value) > MAX_HEADER_VALUE:
        return None
    if not isinstance(key, (bytes, bytearray)) or len(key) < MIN_KEY_BYTES:
        return None
    if not isinstance(body_sha256, str) or not _HEX64.fullmatch(body_sha256.lower()):
        return None
    parts = header_value.split()
    if len(parts) != 3 or parts[0] != TOKEN_VERSION:
        return None
    item_id, mac = parts[1], parts[2].lower()
    if not valid_item_id(item_id) or not _HEX64.fullmatch(mac):
        return None
    expected = _mac(bytes(key), item_id, body_sha256.lower())
    if hmac.compare_digest(expected.encode("ascii"), mac.encode("ascii")):
        return item_id
    return None


def add_release_header(raw: bytes, token: str) -> bytes:
    """``raw`` with every existing ``X-Mailvm-Release`` header removed and ``token`` prepended.

    Old release headers (forged by a sender, or left from an earlier release) go,
    continuation lines included.  The new header uses the message's own line
    ending (CRLF when the first line ends with CRLF, LF otherwise).
    """
    if "\r" in token or "\n" in token:
        raise ValueError("token must be one line")
    header, body = split_message(raw)
    has_separator = len(header) + len(body) < len(raw)
    first_nl = raw.find(b"\n")
    eol = b"\r\n" if first_nl > 0 and raw[first_nl - 1 : first_nl] == b"\r" else b"\n"
    kept: list[bytes] = []
    skipping = False
    for line in header.splitlines(keepends=True):
        if skipping and line[:1] in (b" ", b"\t"):
            continue  # continuation line of a removed header
        skipping = _RELEASE_LINE.match(line) is not None
        if not skipping:
            kept.append(line)
    new_header = f"{RELEASE_HEADER}: {token}".encode("ascii") + eol + b"".join(kept)
    if has_separator or body:
        if kept and not kept[-1].endswith(b"\n"):
            new_header += eol
        return new_header + eol + body
    return new_header


# --------------------------------------------------------------------------------------
# The key
# --------------------------------------------------------------------------------------


def load_or_create_key(path: str | os.PathLike[str]) -> bytes:
    """Read the release key, creating it (32 random bytes, mode 0600) when it does not exist.

    Creation is atomic: the key is written to a temporary file, fsynced and
    hard-linked into place, so two processes starting at once end up with the
    same key and nobody ever reads a partial one.  An existing key that is too
    short or readable by group/others is refused (ValueError).
    """
    path = Path(path)
    try:
        return _read_key(path)
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        try:
            os.write(fd, secrets.token_bytes(KEY_BYTES))
            os.fchmod(fd, 0o600)
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(tmp, path)
        except FileExistsError:
            log.debug("release key %s created concurrently; using it", path)
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    finally:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
    return _read_key(path)


def _read_key(path: Path) -> bytes:
    with open(path, "rb") as fh:
        st = os.fstat(fh.fileno())
        key = fh.read(4096)
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ValueError(f"{path}: release key must not be accessible by group or others (chmod 600)")
    if len(key) < MIN_KEY_BYTES:
        raise ValueError(f"{path}: release key is {len(key)} bytes, need at least {MIN_KEY_BYTES}")
    return key


__all__ = [
    "BodyHasher",
    "ITEM_ID_RE",
    "RELEASE_HEADER",
    "add_release_header",
    "body_sha256",
    "load_or_create_key",
    "make_token",
    "message_body_sha256",
    "split_message",
    "valid_item_id",
    "verify_token",
]
