"""Encrypted Office documents (msoffcrypto-tool).

An encrypted document hides its content from every scanner: that alone is a
finding (``office_encrypted``).  Office also has *well-known* passwords: an
Excel workbook encrypted with ``VelvetSweatshop`` (and PowerPoint's
``/01Hannes Ruescher/01``) opens without asking anyone, which is why malware
uses them.  Such documents are decrypted in memory and the decrypted bytes go
through the VBA/XLM, embedded-object and DDE analyzers; their findings say
``decrypted``.  msodde only reads files: the plaintext is written to a private
temporary file (mode 0600, system temp directory) for the DDE check and removed
right after.

Bounds: only the well-known passwords are tried (passwords from the message
belong to extraction); agile encryption with a spin count above
:data:`MAX_SPIN_COUNT` is not attempted (msoffcrypto accepts up to 10 million
SHA-512 rounds); decrypted output is capped at ``max_scan_bytes``.
"""

from __future__ import annotations

import io
import logging
import os
import tempfile
from typing import Callable

import msoffcrypto

from mailvm.triage import office_dde, office_objects, office_vba
from mailvm.triage.base import Context
from mailvm.verdict import Artifact, Finding

log = logging.getLogger(__name__)

SOURCE = "triage:office_crypto"
WELL_KNOWN_PASSWORDS = ("VelvetSweatshop", "/01Hannes Ruescher/01")
MAX_SPIN_COUNT = 100_000


class _CappedWriter(io.BytesIO):
    """A BytesIO that refuses to grow past ``cap`` bytes."""

    def __init__(self, cap: int):
        super().__init__()
        self.cap = cap

    def write(self, b) -> int:  # type: ignore[override]
        if self.tell() + len(b) > self.cap:
            raise OverflowError(f"decrypted document larger than {self.cap} bytes")
        return super().write(b)


_ENCRYPTED_PACKAGE = "EncryptedPackage".encode("utf-16-le")


def _office_file(data: bytes):
    try:
        return msoffcrypto.OfficeFile(io.BytesIO(data))
    except Exception as exc:  # hostile input breaks msoffcrypto's parsers in many ways: "cannot tell"
        log.debug("msoffcrypto cannot open: %s: %s", type(exc).__name__, exc)
        return None


def decrypt_well_known(data: bytes, cap: int) -> tuple[bytes, str] | tuple[None, str]:
    """``(plaintext, password)`` if a well-known password opens the document, else ``(None, why)``."""
    probe = _office_file(data)
    if probe is None:
        return None, "format not supported"
    if getattr(probe, "type", "") == "agile":
        spin = int(getattr(probe, "info", {}).get("spinValue", 0) or 0)
        if spin > MAX_SPIN_COUNT:
            return None, f"spin count {spin} too high to try passwords"
    last = "no password tried"
    for pw in WELL_KNOWN_PASSWORDS:
        f = _office_file(data)
        if f is None:
            break
        out = _CappedWriter(cap)
        try:
            f.load_key(password=pw)
            f.decrypt(out)
        except OverflowError as exc:
            return None, str(exc)
        except Exception as exc:  # wrong password and unsupported variants both land here
            last = f"{type(exc).__name__}: {exc}"
            continue
        return out.getvalue(), pw
    return None, last


def is_encrypted(data: bytes) -> bool:
    """msoffcrypto's answer; for files it cannot parse, whether an ``EncryptedPackage`` stream is named."""
    f = _office_file(data)
    if f is not None:
        try:
            return bool(f.is_encrypted())
        except Exception as exc:  # malformed streams: fall back to the directory entry name
            log.debug("msoffcrypto is_encrypted failed: %s", exc)
    return _ENCRYPTED_PACKAGE in data


def analyze(artifact: Artifact, data_path: str, ctx: Context) -> list[Finding]:
    data = ctx.data
    if data[:8] != b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" or not is_encrypted(data):
        return []
    plain, how = decrypt_well_known(data, ctx.cfg.max_scan_bytes)
    if plain is None:
        return [Finding("office_encrypted", 4, "password-protected document: content cannot be inspected", SOURCE)]
    out = [Finding("office_encrypted_default_password", 5,
                   f"encrypted with Office's well-known password {how!r}: opens without a prompt", SOURCE)]
    note = "decrypted"
    checks: list[tuple[str, Callable[[], list[Finding]]]] = [
        ("office_vba", lambda: office_vba.vba_findings(plain, artifact.name, note)),
        ("office_objects", lambda: office_objects.object_findings(plain, artifact.name, note)),
        ("office_dde", lambda: _dde_on_copy(plain, note)),
    ]
    if plain[:4] == b"PK\x03\x04":
        checks.append(("office_vba", lambda: office_vba.ooxml_part_findings(plain, note)))
    for name, check in checks:
        try:
            out += check()
        except Exception as exc:  # one failing check on the plaintext must not hide the others
            log.warning("office_crypto: %s failed on the decrypted %s: %s", name, artifact.name, exc)
            out.append(Finding("analyzer_error", 0, f"office_crypto/{name}: {type(exc).__name__}: {exc}", SOURCE))
    return out


def _dde_on_copy(plain: bytes, note: str) -> list[Finding]:
    """msodde needs a file: a private (0600) temporary copy, removed at once."""
    fd, tmp = tempfile.mkstemp(prefix="mailvm-decrypted-")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(plain)
        return office_dde.dde_findings(tmp, plain, note)
    finally:
        try:
            os.unlink(tmp)
        except OSError:
            pass
