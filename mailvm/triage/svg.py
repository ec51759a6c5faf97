"""SVG images that are really web pages (analyzer for kind ``html`` when the root element is ``<svg>``).

An SVG attachment opens in the browser, where it may run script like any page.
Since 2024 phishing mail carries SVG "images" that redirect to a credential
page, show a login form inside ``<foreignObject>``, or smuggle a file.  Findings:

* ``<script>`` in an SVG (``svg_script``), worse when it navigates away
  (``svg_redirect``: ``location``/``window.open``/``location.replace``);
* ``on*`` event handlers (``svg_event_handler``), including SMIL's ``onbegin``;
* ``javascript:`` or ``data:text/html`` targets in ``href``/``xlink:href`` and
  in animations that rewrite them (``svg_javascript_href``);
* HTML forms, inputs, iframes or embedded objects inside ``<foreignObject>``
  (``svg_foreign_form``, worse with a password field);
* links rated by :mod:`mailvm.triage.urlrisk` (``svg_suspicious_link``).

The HTML analyzers (``html``, ``script``) run on the same file too; this one
adds what is specific to an image that should contain no code at all.  The tag
scanner is a single forward pass with bounded tokens (no backtracking parser),
over at most :data:`MAX_CHARS` characters.
"""

from __future__ import annotations

import html
import re
from dataclasses import dataclass, field

from mailvm.triage import urlrisk
from mailvm.triage.base import Context, clip, decode_text
from mailvm.verdict import Artifact, Finding

SOURCE = "triage:svg"
MAX_CHARS = 8 * 1024 * 1024
MAX_TAGS = 200_000
MAX_TEXTS = 500

_ROOT = re.compile(r"^\s*(?:<\?xml[^>]{0,500}\?>\s*)?(?:<!--.{0,4000}?-->\s*|<!DOCTYPE[^>]{0,2000}>\s*)*<\s*(?:[a-z0-9]+:)?svg\b",
                   re.I | re.S)
_TOKEN = re.compile(r"<!--|<!\[CDATA\[|<(/?)([A-Za-z][A-Za-z0-9:._-]{0,63})")
_ATTR = re.compile(r"""[\s/]*([^\s/>=][^\s/>=]{0,127})(?:\s*=\s*(?:"([^"]*)"?|'([^']*)'?|([^\s>]*)))?""")
_NAVIGATE = re.compile(
    r"(?i)(?:\b(?:window|document|top|self|parent)\s*\.\s*location\b|\blocation\s*\.\s*(?:href|replace|assign)\b"
    r"|\blocation\s*=|\bwindow\s*\.\s*open\s*\(|\bmeta\s+http-equiv\s*=\s*[\"']?refresh)"
)
_SCRIPT_END = re.compile(r"</\s*(?:[a-z0-9]+:)?script", re.I)
_FORM_TAGS = frozenset({"form", "input", "iframe", "embed", "object", "button", "textarea", "select"})
_URL_ATTRS = frozenset({"href", "xlink:href", "src", "action", "formaction", "data"})
_ANIM_TAGS = frozenset({"animate", "set"})


@dataclass
class SvgScan:
    scripts: list[str] = field(default_factory=list)
    handlers: list[tuple[str, str, str]] = field(default_factory=list)  # tag, attribute, code
    script_urls: list[str] = field(default_factory=list)  # javascript:/data: targets
    foreign: list[str] = field(default_factory=list)  # HTML tags inside foreignObject
    password: bool = False
    links: list[str] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)  # text between tags (what the image shows), bounded


def is_svg(text: str) -> bool:
    """Whether the document's root element is ``<svg>`` (prolog, comments and doctype may precede it)."""
    return bool(_ROOT.match(text[:8192]))


def _attrs(doc: str, pos: int) -> tuple[dict[str, str], int]:
    attrs: dict[str, str] = {}
    while True:  # each round consumes input: linear
        m = _ATTR.match(doc, pos)
        if m is None or m.end() == pos:
            break
        pos = m.end()
        value = next((g for g in m.group(2, 3, 4) if g is not None), "")
        attrs.setdefault(m.group(1).lower(), html.unescape(value))
    end = doc.find(">", pos)
    return attrs, (len(doc) if end < 0 else end + 1)


def scan(text: str) -> SvgScan:
    """One pass over the document collecting what :func:`findings_for` judges."""
    out = SvgScan()
    doc = text[:MAX_CHARS]
    pos, n, tags, foreign_depth = 0, len(doc), 0, 0
    while pos < n and tags < MAX_TAGS:
        m = _TOKEN.search(doc, pos)
        if m is None:
            break
        tags += 1
        if m.start() > pos and len(out.texts) < MAX_TEXTS:
            between = html.unescape(doc[pos : min(m.start(), pos + 500)]).strip()
            if between:
                out.texts.append(re.sub(r"\s+", " ", between))
        if m.group(0) == "<!--":
            end = doc.find("-->", m.end())
            pos = n if end < 0 else end + 3
            continue
        if m.group(0) == "<![CDATA[":
            end = doc.find("]]>", m.end())
            pos = n if end < 0 else end + 3
            continue
        closing, tag = m.group(1) == "/", m.group(2).lower().split(":")[-1]
        if closing:
            if tag == "foreignobject" and foreign_depth:
                foreign_depth -= 1
            pos = m.end()
            continue
        attrs, pos = _attrs(doc, m.end())
        if tag == "foreignobject":
            foreign_depth += 1
        elif foreign_depth and tag in _FORM_TAGS:
            out.foreign.append(tag)
            if tag == "input" and attrs.get("type", "").strip().lower() == "password":
                out.password = True
        if tag == "script":
            close = _SCRIPT_END.search(doc, pos)
            end = close.start() if close else n
            if len(out.scripts) < 50:
                out.scripts.append((attrs.get("src", "") + " " + doc[pos : min(end, pos + 65536)]).strip())
            pos = end
        for name, value in attrs.items():
            if name.startswith("on") and value.strip() and len(out.handlers) < 100:
                out.handlers.append((tag, name, value))
            target = value.strip().lower()
            carries_url = name in _URL_ATTRS or (tag in _ANIM_TAGS and name in ("to", "values", "from"))
            if not carries_url:
                continue
            if target.startswith(("javascript:", "vbscript:")) or (target.startswith("data:") and "html" in target[:40]):
                out.script_urls.append(value.strip())
            elif target.startswith(("http://", "https://")) and len(out.links) < 200:
                out.links.append(value.strip())
    return out


def findings_for(s: SvgScan) -> list[Finding]:
    out: list[Finding] = []
    code = [c for c in s.scripts if c] + [h[2] for h in s.handlers]
    nav = next((c for c in code if _NAVIGATE.search(c)), None)
    if nav is not None:
        m = _NAVIGATE.search(nav)
        out.append(Finding("svg_redirect", 7, f"script in an SVG image navigates the browser: "
                                              f"{clip(nav[max(0, m.start() - 40): m.end() + 80], 160)}", SOURCE))
    if s.scripts:
        out.append(Finding("svg_script", 6, f"{len(s.scripts)} <script> element(s) in an SVG image: "
                                            f"{clip(s.scripts[0], 120)}", SOURCE))
    if s.handlers:
        tag, name, value = s.handlers[0]
        out.append(Finding("svg_event_handler", 5, f"{len(s.handlers)} event handler(s), e.g. <{tag} {name}="
                                                   f"{clip(value, 100)!r}>", SOURCE))
    if s.script_urls:
        out.append(Finding("svg_javascript_href", 7, f"link or animation target runs script or a page: "
                                                     f"{clip(s.script_urls[0], 140)}", SOURCE))
    if s.foreign:
        sev = 7 if s.password else 6
        what = "a password field" if s.password else ", ".join(sorted(set(s.foreign)))
        out.append(Finding("svg_foreign_form", sev, f"HTML inside <foreignObject>: {what}", SOURCE))
    cta = next((t for t in s.texts if urlrisk.is_call_to_action(t)), None)
    if s.links and cta is not None and len(set(s.links)) <= 3:
        out.append(Finding("svg_link_lure", 5, f"an image that is a link with a call to action ({clip(cta, 60)!r}): "
                                               f"{clip(s.links[0], 140)}", SOURCE))
    risk = urlrisk.worst(s.links)
    if risk is not None and risk.severity >= 3:
        out.append(Finding("svg_suspicious_link", risk.severity, f"{clip(risk.url, 160)}: {risk.describe()}", SOURCE))
    return out


def analyze(artifact: Artifact, data_path: str, ctx: Context) -> list[Finding]:
    if not is_svg(decode_text(ctx.data[:16384], 16384)):  # most HTML is not SVG: decide on the head
        return []
    return findings_for(scan(decode_text(ctx.data, MAX_CHARS)))


__all__ = ["SvgScan", "analyze", "findings_for", "is_svg", "scan"]
