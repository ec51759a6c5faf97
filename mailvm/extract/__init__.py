"""Extraction: a message (or a file) in, every file inside it out as artifacts.

Step 1 of the pipeline (DESIGN.md).  :func:`extract_message` walks the MIME
tree (:mod:`.mime`), guesses archive passwords from the body
(:mod:`.passwords`), then :func:`expand` opens every container it finds,
recursively: archives (:mod:`.archives`), TNEF and attached messages
(:mod:`.mime`), encrypted Office documents (:mod:`.officecrypt`).  Every file
is written through the message's :class:`~mailvm.extract.spool.Spool`, which
names files itself and enforces the per-message limits.

Nothing here raises for bad input: problems are findings on the artifact
concerned (``archive_corrupt``, ``encrypted_archive_unopened``...) or on the
message (``*_limit_exceeded``, ``mime_defect``).  An unexpected internal
error ends extraction early with an ``extract_error`` finding (severity 0: an
error, not evidence) and whatever was extracted until then.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from mailvm.config import ExtractConfig
from mailvm.extract import archives, mime, officecrypt, outlook
from mailvm.extract.archives import ExpandContext, archive_kind, read_head, run_expander
from mailvm.extract.passwords import Candidate, LazyPasswords, candidate_passwords
from mailvm.extract.spool import LimitExceeded, Spool
from mailvm.verdict import Artifact, Finding

log = logging.getLogger(__name__)

SOURCE = "extract"


@dataclass
class ExtractionResult:
    """Everything extraction found in one message (or file)."""

    artifacts: list[Artifact] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)
    text: str = ""
    html: str = ""
    headers: dict[str, str] = field(default_factory=dict)


# -- what kind of container is a file -------------------------------------------------


def _expand_message_file(ctx: ExpandContext) -> list[Artifact]:
    """An attached or archived ``.eml``: walk it as a message; its text adds password guesses."""
    art = ctx.artifact
    with open(art.path, "rb") as fh:
        raw = fh.read(ctx.cfg.max_message_bytes + 1)
    walk = mime.MessageWalk()
    try:
        mime.walk_message(raw, ctx.spool, ctx.cfg, tuple(art.origin), ctx.depth, walk)
    finally:
        ctx.children.extend(walk.artifacts)
        for f in walk.findings:
            ctx.artifact.findings.append(f)
    more = candidate_passwords(walk.text, (), ctx.cfg.max_password_tries)
    ctx.passwords = list(dict.fromkeys([*more, *ctx.passwords]))[: max(ctx.cfg.max_password_tries, 1)]
    return ctx.children


#: container kind -> expander: the explicit registry of everything that has files inside
EXPANDERS: dict[str, Callable[[ExpandContext], list[Artifact]]] = {
    **archives.EXPANDERS,
    "tnef": mime.expand_tnef,
    "office": officecrypt.expand_office,
    "message": _expand_message_file,
    "msg": outlook.expand_msg,
}


def container_kind(art: Artifact) -> str | None:
    """Which expander (if any) applies to ``art``: by detected type and magic bytes, never by name."""
    head = read_head(art.path)
    if not head:
        return None
    kind = archive_kind(art.type, head)
    if kind:
        return kind
    if mime.is_tnef(head):
        return "tnef"
    if officecrypt.is_ole(head):
        return "msg" if outlook.is_outlook_msg(art.path) else "office"
    if (art.type or "").lower() in ("message/rfc822", "message/global"):
        return "message"
    return None


# -- recursion ----------------------------------------------------------------------------


def _expand(art: Artifact, spool: Spool, cfg: ExtractConfig, passwords: Sequence[str]) -> None:
    kind = container_kind(art)
    if kind is None:
        return
    if art.depth >= cfg.max_depth:
        what = "max_message_depth" if kind in ("message", "msg") else "max_depth"
        spool.note_limit(what, f"{art.name} ({kind}) nested deeper than {cfg.max_depth}, not opened")
        return
    if art.sha256 in spool.expanded:
        return  # the same file elsewhere in the message: listed again, expanded once
    spool.expanded.add(art.sha256)
    spool.check_time()
    ctx = ExpandContext(art, spool, cfg, passwords)
    children = run_expander(ctx, EXPANDERS[kind])
    for child in list(children):
        # identity as data: a member lives in the MIME part that carries its container (strip
        # removes that part); never recovered from the origin display string
        child.part_id = art.part_id
        child.role = "member" if art.role != "download" else "download"
        _expand(child, spool, cfg, ctx.passwords)


def expand(artifact: Artifact, spool: Spool, cfg: ExtractConfig, passwords: Sequence[str]) -> None:
    """Open ``artifact`` if it is a container, recursively; new files go to ``spool``.

    Used for attachments and for downloads; never raises for bad input.
    """
    try:
        _expand(artifact, spool, cfg, list(passwords))
    except LimitExceeded:
        pass  # the spool recorded which limit
    except Exception as exc:  # a bug or an unforeseen library failure: report, do not crash
        log.exception("expanding %s failed", artifact.name)
        artifact.findings.append(Finding("extract_error", 0, f"expansion stopped: {type(exc).__name__}: {exc}", SOURCE))


def _passwords(text: str, cfg: ExtractConfig, extra: Sequence[str]) -> list[str]:
    return candidate_passwords(text, [*extra, *cfg.passwords], cfg.max_password_tries)


def extract_message(
    raw: bytes,
    spool: Spool,
    cfg: ExtractConfig,
    extra_passwords: Sequence[str] = (),
) -> ExtractionResult:
    """Every file in a raw RFC 822 message, expanded; plus its text, HTML and main headers."""
    first_artifact, first_finding = len(spool.artifacts), len(spool.findings)
    walk = mime.MessageWalk()
    findings: list[Finding] = []
    try:
        mime.walk_message(bytes(raw), spool, cfg, (), 0, walk)
        passwords = LazyPasswords(lambda: _passwords(walk.text, cfg, extra_passwords))
        for art in list(walk.artifacts):
            _expand(art, spool, cfg, passwords)
    except LimitExceeded:
        pass
    except Exception as exc:
        log.exception("extraction failed")
        findings.append(Finding("extract_error", 0, f"extraction stopped: {type(exc).__name__}: {exc}", SOURCE))
    findings = walk.findings + findings + spool.findings[first_finding:]
    return ExtractionResult(
        artifacts=spool.artifacts[first_artifact:],
        findings=findings,
        text=walk.text,
        html=walk.html,
        headers=dict(walk.headers),
    )


def extract_file(
    path: str | Path,
    name: str,
    spool: Spool,
    cfg: ExtractConfig,
    extra_passwords: Sequence[str] = (),
) -> ExtractionResult:
    """A file given on its own (command line, API): it is an artifact, expanded if it is a container."""
    first_artifact, first_finding = len(spool.artifacts), len(spool.findings)
    findings: list[Finding] = []
    try:
        with open(path, "rb") as fh:
            art = spool.add_stream(fh, name, (f"file:{name}",), 0)
        if art is not None:
            _expand(art, spool, cfg, _passwords("", cfg, extra_passwords))
    except LimitExceeded:
        pass
    except OSError as exc:
        findings.append(Finding("extract_error", 0, f"cannot read {name}: {exc.strerror or exc}", SOURCE))
    except Exception as exc:
        log.exception("extraction of %s failed", name)
        findings.append(Finding("extract_error", 0, f"extraction stopped: {type(exc).__name__}: {exc}", SOURCE))
    return ExtractionResult(
        artifacts=spool.artifacts[first_artifact:],
        findings=findings + spool.findings[first_finding:],
    )


__all__ = [
    "Candidate",
    "EXPANDERS",
    "ExtractionResult",
    "container_kind",
    "expand",
    "extract_file",
    "extract_message",
]
