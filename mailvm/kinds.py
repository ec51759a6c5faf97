"""File kinds: the one list every part of mailvm names (standard library only).

Triage classifies each file into one of :data:`KINDS`; the files of the kinds in
:data:`DETONATE_KINDS` are the ones a sandbox can run or open; ``detonate_kinds``
in the policy and ``pool.detonate_kinds`` in the config are validated against it.
Archives and messages are containers (their members are files of their own);
static-only kinds are judged by their analyzers alone.
"""

from __future__ import annotations

#: kinds a launcher exists for (in this order in docs and defaults)
DETONATE_KINDS: tuple[str, ...] = ("executable", "script", "office", "pdf", "html", "lnk", "disk_image", "unknown")
#: containers: their members are artifacts of their own
CONTAINER_KINDS: tuple[str, ...] = ("archive", "email")
#: judged statically only (no launcher in the sandbox): lures and inert media
STATIC_KINDS: tuple[str, ...] = ("text", "image", "audio", "video", "onenote", "shortcut", "mobileconfig")
#: every kind triage may give
KINDS: tuple[str, ...] = DETONATE_KINDS + CONTAINER_KINDS + STATIC_KINDS


def kinds_problem(value: list[str], allowed: tuple[str, ...] = DETONATE_KINDS) -> str | None:
    """Why ``value`` is not a list of detonatable kinds, or None."""
    bad = [k for k in value if k not in allowed]
    if bad:
        return f"unknown kind(s) {', '.join(map(repr, bad))} (known: {', '.join(allowed)})"
    if len(set(value)) != len(value):
        return "duplicate kinds"
    return None
