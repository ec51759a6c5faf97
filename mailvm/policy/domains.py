"""Recipient domains: normalising them and the parent-domain fallback order of a lookup."""

from __future__ import annotations

import re

_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")


def normalize_domain(domain: str) -> str | None:
    """Lower-case ASCII (IDNA A-label) form of ``domain``, or None when it is not a domain."""
    if not isinstance(domain, str):
        return None
    d = domain.strip().rstrip(".").lower()
    if not d or len(d) > 253:
        return None
    if not d.isascii():
        try:
            d = d.encode("idna").decode("ascii")
        except (UnicodeError, ValueError):
            return None
    labels = d.split(".")
    if not all(_LABEL.match(label) for label in labels):
        return None
    for label in labels:
        if label.startswith("xn--"):
            try:
                label.encode("ascii").decode("idna")
            except (UnicodeError, ValueError):
                return None
    return d


def recipient_domain(rcpt: str) -> str | None:
    """The normalised domain of an envelope recipient (``<User@Example.COM>``), or None."""
    if not isinstance(rcpt, str):
        return None
    addr = rcpt.strip()
    if addr.startswith("<") and addr.endswith(">"):
        addr = addr[1:-1]
    if ":" in addr and addr.startswith("@"):  # source route @a,@b:user@domain
        addr = addr.split(":", 1)[1]
    if "@" not in addr:
        return None
    return normalize_domain(addr.rsplit("@", 1)[1])


def parent_domains(domain: str) -> list[str]:
    """``a.b.example.com`` -> ``[a.b.example.com, b.example.com, example.com, com]``."""
    labels = domain.split(".")
    return [".".join(labels[i:]) for i in range(len(labels))]
