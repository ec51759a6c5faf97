"""Encrypted Office documents: decrypt them when the password is known or guessable.

Excel (and the other Office applications) open a document encrypted with the
built-in password ``VelvetSweatshop`` without asking the user: attackers use it
to hide macros from scanners while the victim sees nothing unusual.  Other
encrypted documents often carry their password in the message body.

:func:`expand_office` takes an OLE compound file, asks msoffcrypto-tool
whether it is an encrypted Office document (legacy RC4/XOR ``.doc``/``.xls``/``.ppt``
or ECMA-376 encrypted OOXML), tries ``VelvetSweatshop`` and the message's
candidate passwords, and stores the decrypted document as a new artifact
(origin ``... > decrypted:<name>``).  Findings on the encrypted document:
``office_encrypted`` (decrypted) or ``office_encrypted_unopened``.
"""

from __future__ import annotations

import io
import logging

from mailvm.extract.archives import ExpandContext
from mailvm.extract.spool import LimitExceeded
from mailvm.verdict import Artifact

log = logging.getLogger(__name__)

DEFAULT_PASSWORD = "VelvetSweatshop"
OLE_MAGIC = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"
#: documents larger than this are not decrypted (msoffcrypto works in memory)
MAX_DOCUMENT_BYTES = 64 * 1024 * 1024


class _Password(str):
    source = "Office's built-in default password"


def is_ole(head: bytes) -> bool:
    return head.startswith(OLE_MAGIC)


def _try_key(office, pw: str) -> None:
    """Load ``pw`` as the key; legacy formats verify it here (InvalidKeyError when wrong).

    OOXML keys are not verified here: msoffcrypto's verifier rejects the right
    password on some files (SHA-1 agile encryption, as Excel writes with
    VelvetSweatshop); ``decrypt`` checks the result is a zip package instead.
    """
    office.load_key(password=pw)


def expand_office(ctx: ExpandContext) -> list[Artifact]:
    """Decrypt an encrypted Office document; ``[]`` for anything else."""
    import msoffcrypto
    from msoffcrypto import exceptions as mexc

    art = ctx.artifact
    if art.size > min(MAX_DOCUMENT_BYTES, ctx.cfg.max_file_bytes):
        return []
    with open(art.path, "rb") as fh:
        try:
            office = msoffcrypto.OfficeFile(fh)
            encrypted = office.is_encrypted()
        except LimitExceeded:
            raise
        except Exception as exc:  # not an Office file msoffcrypto knows, or a damaged one
            log.debug("%s: not an encrypted office document: %s", art.name, exc)
            return []
        if not encrypted:
            return []
        kind = type(office).__name__.replace("File", "")
        tries = [_Password(DEFAULT_PASSWORD)] + [p for p in ctx.passwords if p != DEFAULT_PASSWORD]
        unsupported = ""
        for pw in tries:
            ctx.spool.check_time()
            try:
                _try_key(office, pw)
            except (mexc.InvalidKeyError, ValueError, KeyError, AssertionError):
                continue
            except mexc.DecryptionError as exc:
                unsupported = str(exc)
                break
            except Exception as exc:  # library trouble on odd input
                unsupported = f"{type(exc).__name__}: {exc}"
                break
            out = io.BytesIO()
            try:
                office.decrypt(out)
            except mexc.InvalidKeyError:
                continue  # verifier matched by chance, content says otherwise
            except Exception as exc:
                unsupported = f"decryption failed: {type(exc).__name__}: {exc}"
                break
            source = getattr(pw, "source", "given")
            name = art.name
            child = ctx.spool.add_bytes(out.getvalue(), name, ctx.origin("decrypted", name), ctx.depth)
            if child is not None:
                ctx.children.append(child)
            ctx.add_finding(
                "office_encrypted",
                3,
                f"encrypted {kind} document decrypted with password {str(pw)!r} ({source})",
            )
            return ctx.children
        detail = f"encrypted {kind} document; none of {len(tries)} passwords opened it"
        if unsupported:
            detail = f"encrypted {kind} document not decrypted: {unsupported}"
        ctx.add_finding("office_encrypted_unopened", 5, detail)
    return ctx.children


__all__ = ["DEFAULT_PASSWORD", "expand_office", "is_ole"]
