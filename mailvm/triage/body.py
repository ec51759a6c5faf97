"""The message body as content: phishing lures that carry no attachment at all.

Runs on the artifacts extraction makes of a message's own text and HTML bodies
(``Artifact.role == "body"``), never on attachments.  A phishing mail that
only links out is judged from what a reader sees:

* **Credential-lure language**: the phrases such mails are made of ("verify
  your account", "your password expires", "mailbox is full", "unusual sign-in
  activity", "your account will be suspended", "shared a document with you").
* **Risky links**: each link rated by :func:`mailvm.triage.urlrisk.assess`
  (look-alike brand domains, IP or numeric hosts, ``user@host``, punycode,
  shared hosting, shorteners and redirectors, payload paths).
* **Deceptive anchors**: a link whose visible text is an address or a domain
  other than the one it really points to (``<a href="http://evil.example">
  https://bank.example</a>``).
* **Call to action**: a short button-like link text ("Verify now", "View
  document", "Sign in").

Each signal alone is common in ordinary mail (newsletters track clicks through
redirectors and say "sign in"; banks say "verify"), so alone each is
informational; the severity comes from their combination, which is what a lure
is (:func:`body_findings`).  Bounded: the text and the anchors read.
"""

from __future__ import annotations

import html as htmllib
import re
from dataclasses import dataclass

from mailvm.triage import urlrisk
from mailvm.triage.base import Context, clip, decode_text
from mailvm.verdict import Artifact, Finding

SOURCE = "triage:body"
MAX_CHARS = 1024 * 1024
MAX_ANCHORS = 500
MAX_URLS = 200

#: phrases of credential phishing and account-takeover lures (lower-case, matched on visible text)
LURE_PHRASES = re.compile(
    r"(?:verify|confirm|validate|update|re-?activate|restore|unlock|secure)\s+(?:your\s+|the\s+)?"
    r"(?:account|identity|mailbox|e-?mail|password|login|credentials|payment|billing|information|details)"
    r"|(?:password|passcode)\s+(?:will\s+)?(?:expire|expires|expired|expiring|reset)"
    r"|mailbox\s+(?:is\s+)?(?:full|almost\s+full|over\s+(?:its\s+)?quota|quota|storage)"
    r"|(?:storage|quota)\s+(?:is\s+)?(?:full|exceeded|limit)"
    r"|unusual\s+(?:sign-?\s?in|login|activity)|suspicious\s+(?:sign-?\s?in|login|activity)"
    r"|(?:account|mailbox|access)\s+(?:has\s+been\s+|will\s+be\s+)?(?:suspended|disabled|locked|limited|"
    r"restricted|deactivated|terminated|closed)"
    r"|(?:shared|sent)\s+(?:a\s+)?(?:secure\s+)?(?:document|file|fax|voice\s*mail|invoice)s?\s+with\s+you"
    r"|(?:pending|undelivered|held|blocked)\s+(?:incoming\s+)?(?:messages?|e-?mails?)"
    r"|(?:failed|declined|unsuccessful)\s+(?:payment|transaction)"
    r"|(?:sign|log)\s*-?\s*in\s+(?:to\s+)?(?:view|access|review|download|continue|confirm|verify)"
    r"|within\s+(?:24|48|72)\s+hours|immediate(?:ly)?\s+action|action\s+required"
    r"|(?:enter|with|using|confirm|provide)\s+your\s+(?:e-?mail\s+|account\s+|mailbox\s+)?password"
    r"|(?:parcel|package|shipment)\s+(?:is\s+|has\s+been\s+)?(?:on\s+hold|held|awaiting\s+payment)"
    r"|(?:unpaid|outstanding)\s+(?:customs|shipping|delivery|import)\s+(?:fees?|charges?|duties|duty)",
    re.I,
)
_TEXT_URL = re.compile(r"\b(?:https?://|www\.)[^\s<>\"'()]{1,500}", re.I)
#: visible text that is an address or a bare domain (what a reader believes the link goes to)
_SHOWN_DOMAIN = re.compile(r"^\s*(?:https?://)?((?:[a-z0-9-]{1,63}\.)+[a-z]{2,24})(?:[/:?#]\S*)?\s*$", re.I)
MAX_TEXT_OUT = 256 * 1024
MAX_ANCHOR_TEXT = 200


_HREF = re.compile(r"""\bhref\s*=\s*(?:"([^"]*)"|'([^']*)'|([^\s>]+))""", re.I)
MAX_TAG = 2000


@dataclass
class _Read:
    text: list[str]
    links: list[tuple[str, str]]


def _read(markup: str) -> _Read:
    """One linear pass over hostile markup: visible text and links (href, text), both bounded.

    Not :class:`html.parser.HTMLParser`: it goes quadratic on unclosed tags (a page of
    ``<meta ...`` without ``>`` took minutes).  Here every ``<`` costs at most one look for
    the next ``>`` (remembered, so runs of ``<`` stay linear); a tag is at most
    :data:`MAX_TAG` characters; an unclosed ``<script>`` or ``<style>`` hides the rest.
    """
    markup = markup[:MAX_CHARS]
    low = markup.lower()
    n = len(markup)
    text: list[str] = []
    size = 0
    links: list[tuple[str, str]] = []
    href: str | None = None
    atext: list[str] = []
    next_gt = -1
    i = 0

    def close() -> None:
        nonlocal href, atext
        if href is not None and len(links) < MAX_ANCHORS:
            links.append((href.strip()[:2000], " ".join("".join(atext).split())[:MAX_ANCHOR_TEXT]))
        href, atext = None, []

    def add(chunk: str) -> None:
        nonlocal size
        if not chunk:
            return
        chunk = htmllib.unescape(chunk[:MAX_TEXT_OUT])
        if href is not None and sum(map(len, atext)) < MAX_ANCHOR_TEXT:
            atext.append(chunk[:MAX_ANCHOR_TEXT])
        if size < MAX_TEXT_OUT:
            text.append(chunk)
            size += len(chunk)

    while i < n and size < MAX_TEXT_OUT:
        j = markup.find("<", i)
        if j < 0:
            add(markup[i:])
            break
        add(markup[i:j])
        if next_gt < j:
            next_gt = markup.find(">", j)
            if next_gt < 0:
                add(markup[j:])
                break
        if next_gt - j > MAX_TAG:
            add("<")
            i = j + 1
            continue
        tag = low[j + 1 : next_gt].strip()
        name = tag.split(None, 1)[0] if tag else ""
        i = next_gt + 1
        if name in ("script", "style"):
            end = low.find("</" + name, i)
            if end < 0:
                break  # an unclosed script: nothing after it is visible
            gt = low.find(">", end)
            i = n if gt < 0 else gt + 1
        elif name == "a":
            close()
            m = _HREF.search(markup, j, next_gt + 1)
            href = htmllib.unescape(next(g for g in m.groups() if g is not None)) if m else None
        elif name.startswith("/a") and name in ("/a", "/a/"):
            close()
        elif name in ("br", "p", "/p", "div", "/div", "tr", "/tr", "li", "td"):
            add(" ")
    close()
    return _Read(text, links)


def _visible(markup: str) -> str:
    return " ".join(" ".join(_read(markup).text).split())


def anchors(markup: str) -> list[tuple[str, str]]:
    """``(href, visible text)`` of the body's links, bounded."""
    return _read(markup).links


def _registrable(host: str) -> str:
    try:
        return urlrisk.registrable_domain(host.lower().rstrip("."))
    except Exception:  # an odd host: compare it as it is
        return host.lower()


def deceptive_anchor(href: str, text: str) -> str | None:
    """The domain the text shows when the link really goes to another registrable domain."""
    shown = _SHOWN_DOMAIN.match(text)
    if not shown or not re.match(r"^https?://", href, re.I):
        return None
    risk = urlrisk.assess(href)
    if not risk.host:
        return None
    shown_domain = _registrable(shown.group(1))
    if not urlrisk.known_suffix(shown_domain):
        return None  # "Dr.Smith" or "file.pdf" is no domain
    real = _registrable(risk.host)
    return shown_domain if shown_domain != real else None


def body_findings(markup: str, is_html: bool) -> list[Finding]:
    if is_html:
        reader = _read(markup)
        text, links = " ".join(" ".join(reader.text).split()), reader.links
    else:
        text, links = " ".join(markup[:MAX_CHARS].split()), []
    urls = [h for h, _ in links] + [m.group(0) for m in _TEXT_URL.finditer(text)]
    urls = [u if not u.lower().startswith("www.") else "http://" + u for u in urls][:MAX_URLS]

    phrases = sorted({" ".join(m.group(0).lower().split()) for m in LURE_PHRASES.finditer(text[:MAX_CHARS])})[:5]
    risks = [urlrisk.assess(u) for u in urls if re.match(r"^(?:https?|ftp|data|javascript|file):|^\\\\", u, re.I)]
    worst = max(risks, key=lambda r: r.severity, default=None)
    cta = [(h, t) for h, t in links if urlrisk.is_call_to_action(t)]
    deceptive = []
    for href, shown in links:
        d = deceptive_anchor(href, shown)
        if d:
            deceptive.append((shown, href))
    out: list[Finding] = []
    # a shortener hides where the link goes: harmless in a newsletter, a lure's tool next to lure language
    risky = worst is not None and (worst.severity >= 3 or (bool(phrases) and "shortener" in worst.reasons))
    if deceptive:
        shown, href = deceptive[0]
        sev = 5 if (phrases or risky) else 2
        out.append(Finding("body_deceptive_link", sev,
                           f"link text shows {clip(shown, 60)} but goes to {clip(href, 100)}"
                           + (f" (+{len(deceptive) - 1} more)" if len(deceptive) > 1 else ""), SOURCE))
    if phrases and (risky or deceptive):
        sev = 5
        if worst is not None and worst.severity >= 5:
            sev = 6
        if cta and (risky or deceptive):
            sev += 1
        why = worst.describe() if risky and worst is not None else "deceptive link"
        target = worst.url if risky and worst is not None else deceptive[0][1]
        out.append(Finding("body_credential_lure", min(sev, 7),
                           f"asks to {phrases[0]!r} and links to {clip(target, 100)} ({why})", SOURCE))
    elif risky and worst is not None:
        # a risky link without lure language: informational unless the link itself is strong
        sev = 4 if worst.severity >= 5 and cta else min(3, worst.severity)
        out.append(Finding("body_risky_link", sev, f"link {clip(worst.url, 100)}: {worst.describe()}", SOURCE))
    elif phrases:
        out.append(Finding("body_lure_language", 1, f"lure phrases: {', '.join(phrases[:3])}", SOURCE))
    return out


def analyze(artifact: Artifact, data_path: str, ctx: Context) -> list[Finding]:
    if artifact.role != "body":
        return []
    markup = decode_text(ctx.data, MAX_CHARS)
    is_html = ctx.kind == "html" or bool(re.search(r"<\s*(?:html|body|a\s|div|p\b|table)", markup[:65536], re.I))
    return body_findings(markup, is_html)
