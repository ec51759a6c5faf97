"""Guessing the password of an encrypted attachment from the message's own text.

Malware campaigns send an encrypted zip and put its password in the body
("Password: 1234", "Kennwort ist abc", "mot de passe = xyz") so that gateways
cannot look inside.  :func:`candidate_passwords` turns the body text into an
ordered, de-duplicated, bounded list of strings to try:

1. values after a password keyword in one of several languages
   (``password: X``, ``pwd = X``, ``Passwort ist X``...);
2. quoted strings of plausible length;
3. every other short token of the body (no spaces, 3-32 characters);
4. the configured passwords (``extract.passwords``), always tried.

The list never exceeds ``limit``; room is kept for the configured passwords
so that a long body cannot push them out.
"""

from __future__ import annotations

import logging
import re
from typing import Callable, Iterable, Iterator, Sequence

log = logging.getLogger(__name__)

#: how much of the body is searched (the password is near the top in practice)
MAX_TEXT = 256 * 1024
MIN_TOKEN = 3
MAX_TOKEN = 32

#: keywords that introduce a password, lower-case; several languages
KEYWORDS = (
    "password",
    "passwort",
    "passwd",
    "passcode",
    "pwd",
    "pw",
    "pass",
    "kennwort",
    "mot de passe",
    "contraseña",
    "contrasena",
    "senha",
    "parola",
    "wachtwoord",
    "hasło",
    "haslo",
    "пароль",
    "密码",
)

_KEYWORD_RE = "|".join(re.escape(k) for k in sorted(KEYWORDS, key=len, reverse=True))
_QUOTES = "\"'“”‘’«»„"
# keyword, an optional "(zip)" and up to four filler words ("for the archive"),
# then ":", "=", "-" or "is"/"ist"/"est"/"es"/"é" (optional before a quote), then the value: a quoted string
# or one token; the rest of the line is captured too (passwords with spaces)
_PATTERN = re.compile(
    r"(?<![^\W_])(?:" + _KEYWORD_RE + r")(?![^\W_])"
    r"(?:[^\S\n]*\([^)\n]{0,30}\))?"
    r"(?:[^\S\n]+[^\s:=()]{1,20}){0,4}?"
    r"[^\S\n]*(?:\b(?:is|ist|est|es|é|è)\b[^\S\n]*[:=]?|[:=]|-|(?=[" + _QUOTES + r"]))[^\S\n]*"
    r"(?=(?P<line>[^\n]{1,64}))"
    r"(?P<value>[" + _QUOTES + r"][^" + _QUOTES + r"\n]{1,64}[" + _QUOTES + r"]|\S{1,64})",
    re.IGNORECASE,
)
_QUOTED = re.compile(r"""["'“”‘’«»„]([^"'“”‘’«»„\n]{%d,%d})["'“”‘’«»„]""" % (1, MAX_TOKEN))
_TOKEN = re.compile(r"\S{%d,%d}" % (MIN_TOKEN, MAX_TOKEN))
_STRIP = "\"'“”‘’«»„.,;:!?()[]{}<>*"


class Candidate(str):
    """A password guess that remembers where it came from (``source``), for findings."""

    source: str = ""

    def __new__(cls, value: str, source: str) -> "Candidate":
        obj = super().__new__(cls, value)
        obj.source = source
        return obj


def _values_after_keyword(text: str) -> Iterable[str]:
    for m in _PATTERN.finditer(text):
        value = m.group("value")
        if value[0] in _QUOTES and len(value) > 2:
            yield value[1:-1]
            continue
        # "Password: xY7!kq." -> the token as written, then without trailing punctuation
        yield value
        trimmed = value.strip(_STRIP)
        if trimmed != value:
            yield trimmed
        line = m.group("line").strip()
        if " " in line and len(line) <= MAX_TOKEN:
            yield line


def _quoted(text: str) -> Iterable[str]:
    for m in _QUOTED.finditer(text):
        yield m.group(1).strip()


def _tokens(text: str) -> Iterable[str]:
    for m in _TOKEN.finditer(text):
        tok = m.group(0)
        yield tok
        trimmed = tok.strip(_STRIP)
        if trimmed != tok and len(trimmed) >= MIN_TOKEN:
            yield trimmed


def candidate_passwords(text: str, configured: Sequence[str], limit: int) -> list[str]:
    """Ordered, unique password guesses from ``text``, then ``configured``; at most ``limit``.

    The items are :class:`Candidate` strings whose ``source`` says where each
    came from (``keyword in the message text``, ``quoted in the message text``,
    ``word of the message text``, ``configured``).
    """
    if limit <= 0:
        return []
    text = (text or "")[:MAX_TEXT]
    reserved = [p for p in dict.fromkeys(str(c) for c in configured) if p][:limit]
    pending = set(reserved)  # configured passwords not yet in ``out``
    seen: set[str] = set()
    out: list[str] = []

    def take(values: Iterable[str], source: str, allow_configured: bool) -> None:
        for v in values:
            if len(out) + len(pending) >= limit:
                return
            if not v or len(v) > 64 or v in seen:
                continue
            if v in pending:
                if not allow_configured:
                    continue
                pending.discard(v)
            seen.add(v)
            out.append(Candidate(v, source))

    try:
        take(_values_after_keyword(text), "keyword in the message text", True)
        take(_quoted(text), "quoted in the message text", False)
        take(_tokens(text), "word of the message text", False)
    except Exception as exc:  # defensive: a regex on hostile text must not stop extraction
        log.debug("password candidates from text failed: %s", exc)
    return out + [Candidate(p, "configured") for p in reserved if p in pending]


class LazyPasswords(Sequence[str]):
    """Candidate passwords computed on first use.

    Guessing scans the whole body text (about 7 ms for a 15 KB body, measured):
    most messages carry no encrypted archive, so the list is only built when an
    expander first asks for it, then kept for the rest of the message.
    """

    def __init__(self, compute: Callable[[], list[str]]) -> None:
        self._compute: Callable[[], list[str]] | None = compute
        self._items: list[str] = []

    def _get(self) -> list[str]:
        if self._compute is not None:
            self._items, self._compute = self._compute(), None
        return self._items

    def __getitem__(self, index):  # type: ignore[override]
        return self._get()[index]

    def __len__(self) -> int:
        return len(self._get())

    def __iter__(self) -> Iterator[str]:
        return iter(self._get())


__all__ = ["Candidate", "LazyPasswords", "candidate_passwords", "KEYWORDS"]
