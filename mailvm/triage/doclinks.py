"""Links inside attached documents, for the link downloader to follow like the message's own links.

A PDF lure's payload is the page behind its one link; an Internet shortcut
(``.url``) is nothing but a link.  :func:`document_urls` looks at every
artifact extraction produced, and for the kinds in :data:`URL_SOURCES` asks
that kind's analyzer module which targets a reader would open (most prominent
first).  The pipeline (:meth:`mailvm.scan.Scanner._download`) downloads them
with the same SSRF-safe downloader and limits as message links, before the
message's own links, and the downloads are triaged and detonated like any file.

Bounded: at most :data:`MAX_PER_DOCUMENT` URLs per document, ``budget`` in all
(the rest is reported by a ``doc_links_not_followed`` finding, severity 0),
documents larger than :data:`MAX_READ_BYTES` are not read.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Callable, Iterable

from mailvm.extract.links import normalize_url
from mailvm.triage import pdfdoc, shortcut
from mailvm.triage.kinds import classify
from mailvm.verdict import Artifact, Finding

log = logging.getLogger(__name__)

SOURCE = "links"
MAX_PER_DOCUMENT = 3
MAX_READ_BYTES = 16 * 1024 * 1024

#: triage kind -> function(file bytes, limit) -> http(s) URLs a reader would open, most prominent first
URL_SOURCES: dict[str, Callable[[bytes, int], list[str]]] = {
    "pdf": pdfdoc.link_urls,
    "shortcut": shortcut.link_urls,
}


@dataclass
class DocumentLinks:
    urls: list[str] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)


def document_urls(artifacts: Iterable[Artifact], budget: int) -> DocumentLinks:
    """URLs to follow from the documents among ``artifacts`` (see the module doc); never raises."""
    out = DocumentLinks()
    skipped: list[str] = []
    seen: set[str] = set()
    for art in artifacts:
        if art.sha256 in seen:
            continue
        seen.add(art.sha256)
        try:
            kind = classify(art)
            source = URL_SOURCES.get(kind)
            if source is None:
                continue
            if art.size > MAX_READ_BYTES:
                skipped.append(f"{art.name} (larger than {MAX_READ_BYTES} bytes)")
                continue
            with open(art.path, "rb") as fh:
                data = fh.read(MAX_READ_BYTES)
            found = (normalize_url(u) for u in source(data, MAX_PER_DOCUMENT))
            urls = [u for u in dict.fromkeys(found) if u is not None and u not in out.urls]
        except Exception as exc:  # a document we cannot read has no links to follow; triage reports why
            log.warning("links of %s not read: %s: %s", art.name, type(exc).__name__, exc)
            continue
        if not urls:
            continue
        room = budget - len(out.urls)
        if room <= 0:
            skipped.append(f"{art.name} ({len(urls)} link(s))")
            continue
        out.urls += urls[:room]
        if len(urls) > room:
            skipped.append(f"{art.name} ({len(urls) - room} of {len(urls)} link(s))")
        log.debug("following %d link(s) of %s (%s)", min(len(urls), room), art.name, kind)
    if skipped:
        out.findings.append(Finding("doc_links_not_followed", 0,
                                    f"links of attached documents not followed (budget {budget}): "
                                    + ", ".join(skipped)[:400], SOURCE))
    return out


__all__ = ["DocumentLinks", "MAX_PER_DOCUMENT", "URL_SOURCES", "document_urls"]
