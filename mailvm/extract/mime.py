"""Walking a MIME message: attachments out as artifacts, body text and HTML kept for links and passwords.

:func:`walk_message` parses a raw message with the standard library's
``email`` package (``compat32`` policy: the most tolerant) and walks the
*whole* tree (``iter_attachments()`` does not recurse):

* every leaf that is an attachment or a non-text inline part becomes an
  artifact (origin ``attachment:<name>``), including ``text/*`` parts that
  carry a file name (an ``.html`` attachment is HTML smuggling);
* ``text/plain`` and ``text/html`` bodies are decoded into ``text`` / ``html``
  (bounded); ``begin 644 name`` uuencoded blocks inside them become artifacts
  (origin ``uuencode:<name>``);
* ``message/rfc822`` parts are walked as nested messages (origin
  ``message:<subject>``), up to ``max_depth``.

Parsing is bounded: the raw size (``max_message_bytes``; past it only the head
is scanned), the number of MIME parts (fed in chunks, stopped at
:data:`MAX_PARTS`) and the multipart nesting (:data:`MAX_MULTIPART_DEPTH`).
Malformed MIME never raises: the parser's defects become one ``mime_defect``
finding.

Outlook's ``winmail.dat`` (TNEF) is opened with tnefparse by
:func:`expand_tnef`, its attachments become artifacts (origin ``tnef:<name>``).
"""

from __future__ import annotations

import binascii
import codecs
import email
import email.header
import email.message
import email.policy
import email.utils
import hashlib
import html as htmllib
import io
import logging
import mimetypes
import re
from collections import Counter
from dataclasses import dataclass, field
from email.feedparser import BytesFeedParser

from mailvm.config import ExtractConfig
from mailvm.extract.archives import ExpandContext
from mailvm.extract.spool import Spool, clean_name, keep_char
from mailvm.verdict import Artifact, Finding

log = logging.getLogger(__name__)

SOURCE = "extract"
MAX_PARTS = 1000
MAX_MULTIPART_DEPTH = 50
MAX_PARSE_DEPTH = 100
MAX_TEXT = 1024 * 1024
MAX_HTML = 1024 * 1024
#: HTML fed to the visible-text extractor (the rest is kept raw only)
MAX_HTML_FOR_TEXT = 512 * 1024
MAX_HEADER = 998
FEED_CHUNK = 8 * 1024
HEADERS = ("Subject", "From", "To", "Cc", "Date", "Message-ID", "Reply-To")
#: headers always present in ``headers`` (empty when absent)
REQUIRED_HEADERS = ("Subject", "From", "To", "Message-ID")
TEXT_BODY_TYPES = ("text/plain", "text/html")
#: TNEF (winmail.dat) signature, little-endian 0x223E9F78
TNEF_MAGIC = b"\x78\x9f\x3e\x22"
#: tnefparse copies the rest of the file once per TNEF object: bound objects x size
TNEF_MAX_WORK = 1 << 31
TNEF_MAX_BYTES = 64 * 1024 * 1024


# -- results ----------------------------------------------------------------------


@dataclass
class MessageWalk:
    """What a message walk produced (artifacts are also in the spool)."""

    artifacts: list[Artifact] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)
    headers: dict[str, str] = field(default_factory=dict)
    text_parts: list[str] = field(default_factory=list)
    html_parts: list[str] = field(default_factory=list)
    text_len: int = 0
    html_len: int = 0
    defects: Counter = field(default_factory=Counter)
    parts: int = 0

    @property
    def text(self) -> str:
        return "\n".join(self.text_parts)

    @property
    def html(self) -> str:
        return "\n".join(self.html_parts)

    def add_text(self, text: str) -> None:
        room = MAX_TEXT - self.text_len
        if room <= 0 or not text:
            return
        text = text[:room]
        self.text_parts.append(text)
        self.text_len += len(text) + 1

    def add_html(self, html: str) -> None:
        room = MAX_HTML - self.html_len
        if room <= 0 or not html:
            return
        html = html[:room]
        self.html_parts.append(html)
        self.html_len += len(html) + 1


# -- parsing ------------------------------------------------------------------------


class _TooDeep(Exception):
    pass


class _CountingFactory:
    """Message factory for the feed parser: counts the parts it creates, refuses deep nesting.

    The feed parser recurses once per nesting level (about 1000 levels exhaust
    Python's stack), so parts nested deeper than :data:`MAX_PARSE_DEPTH` stop the parse.
    """

    def __init__(self) -> None:
        self.count = 0
        self.parser: BytesFeedParser | None = None

    def open_parts(self) -> list:
        # CPython's feed parser keeps the chain of parts being parsed in ``_msgstack``
        stack = getattr(self.parser, "_msgstack", None)
        return stack if isinstance(stack, list) else []

    def __call__(self, policy=email.policy.compat32) -> email.message.Message:
        self.count += 1
        if len(self.open_parts()) >= MAX_PARSE_DEPTH:
            raise _TooDeep()
        return email.message.Message(policy=policy)


def parse_message(raw: bytes, max_parts: int = MAX_PARTS) -> tuple[email.message.Message, str]:
    """Parse ``raw`` (compat32, tolerant); stop at ``max_parts`` parts or :data:`MAX_PARSE_DEPTH` levels.

    Returns the message (what was parsed until a limit) and a problem description ("" when none).
    """
    factory = _CountingFactory()
    parser = BytesFeedParser(_factory=factory, policy=email.policy.compat32)
    factory.parser = parser
    factory.count = 0
    problem = ""
    try:
        for off in range(0, len(raw), FEED_CHUNK):
            parser.feed(raw[off : off + FEED_CHUNK])
            if factory.count > max_parts:
                problem = f"more than {max_parts} MIME parts, the rest not parsed"
                break
    except (_TooDeep, RecursionError):
        parts = factory.open_parts()
        root = parts[0] if parts else email.message.Message()
        return root, f"MIME parts nested deeper than {MAX_PARSE_DEPTH} levels, the rest not parsed"
    except Exception as exc:  # the feed parser is tolerant; be safe anyway
        parts = factory.open_parts()
        root = parts[0] if parts else email.message.Message()
        return root, f"MIME parser failed: {type(exc).__name__}: {exc}"
    try:
        msg = parser.close()
    except Exception as exc:
        log.info("MIME parser could not finish: %s", exc)
        parts = factory.open_parts()
        msg = parts[0] if parts else email.message.Message()
        problem = problem or f"MIME parser failed: {type(exc).__name__}"
    if not isinstance(msg, email.message.Message):
        msg = email.message.Message()
    return msg, problem


def _unescape_8bit(text: str) -> str:
    """Raw 8-bit header bytes (surrogate escapes after parsing): UTF-8 if they are, else Latin-1."""
    try:
        data = text.encode("utf-8", "surrogateescape")
    except Exception:
        return text.encode("utf-8", "replace").decode("utf-8", "replace")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("latin-1")


def decode_header_value(value: object, limit: int = MAX_HEADER) -> str:
    """RFC 2047 decoded, printable, bounded header text; never raises."""
    if value is None:
        return ""
    try:
        text = str(value)
        if "=?" in text:
            text = str(email.header.make_header(email.header.decode_header(text)))
    except Exception:
        text = str(value)
    text = _unescape_8bit(text)
    text = " ".join(text.split())
    text = "".join(ch for ch in text if keep_char(ch))
    return text[:limit]


def _raw_header(part: email.message.Message, name: str) -> str | None:
    """First value of header ``name`` as sent (compat32 would turn 8-bit text into U+FFFD)."""
    try:
        for key, value in part.raw_items():
            if key.lower() == name.lower():
                return _unescape_8bit(str(value))
    except Exception:
        pass
    return None


def _header(msg: email.message.Message, name: str) -> str:
    try:
        return decode_header_value(_raw_header(msg, name))
    except Exception:
        return ""


def part_filename(part: email.message.Message) -> str:
    """The part's file name (Content-Disposition filename, else Content-Type name), decoded; "" if none."""
    # re-parse the two headers from their raw text so 8-bit names survive
    probe = email.message.Message()
    for hname in ("Content-Disposition", "Content-Type"):
        raw = _raw_header(part, hname)
        if raw is not None:
            probe[hname] = raw
    name = None
    for getter in (lambda: probe.get_filename(), lambda: probe.get_param("name")):
        try:
            value = getter()
        except Exception:
            value = None
        if isinstance(value, tuple):  # undecoded RFC 2231 triple
            try:
                value = email.utils.collapse_rfc2231_value(value)
            except Exception:
                value = str(value[-1])
        if value:
            name = value
            break
    if not name:
        return ""
    return decode_header_value(name, 255)


def _charset_of(part: email.message.Message) -> str:
    try:
        cs = part.get_content_charset() or "utf-8"
        codecs.lookup(cs)
        return cs
    except Exception:
        return "utf-8"


def decode_text(payload: bytes, charset: str) -> str:
    try:
        return payload.decode(charset, "replace")
    except Exception:
        return payload.decode("utf-8", "replace")


_HIDDEN_ELEMENTS = ("script", "style", "head", "title", "noscript", "template")
_BLOCK_TAG = re.compile(r"(?:br|p|div|tr|li|h[1-6]|table|td)\b")
_SPACES = re.compile(r"[ \t\r\f\v]+")


def html_visible_text(html: str) -> str:
    """Text a reader would see in ``html`` (tags, comments, script and style removed).

    One forward scan with ``str.find`` (linear time whatever the input; the
    standard library's HTMLParser is quadratic on unclosed tags), bounded to
    :data:`MAX_HTML_FOR_TEXT` characters of input.
    """
    src = html[:MAX_HTML_FOR_TEXT]
    low = src.lower()
    out: list[str] = []
    i, n = 0, len(src)
    while i < n:
        lt = src.find("<", i)
        if lt < 0:
            out.append(src[i:])
            break
        out.append(src[i:lt])
        if low.startswith("<!--", lt):
            end = low.find("-->", lt + 4)
            i = n if end < 0 else end + 3
            continue
        gt = src.find(">", lt + 1)
        if gt < 0:
            break  # an unclosed tag runs to the end
        tag = low[lt + 1 : gt].lstrip("/").strip()
        name = re.match(r"[a-z0-9]*", tag).group(0)
        i = gt + 1
        if name in _HIDDEN_ELEMENTS and not low[lt + 1 : lt + 2] == "/":
            close = low.find("</" + name, i)
            if close < 0:
                break
            gt2 = low.find(">", close)
            i = n if gt2 < 0 else gt2 + 1
        elif _BLOCK_TAG.match(tag):
            out.append("\n")
    text = "".join(out)
    if "&" in text:
        text = htmllib.unescape(text)
    return _SPACES.sub(" ", text)[:MAX_TEXT]


# -- uuencode inside text bodies ------------------------------------------------------

_UU_BEGIN = re.compile(rb"^begin(?:-base64)? +([0-7]{3,4}) +([^\r\n]+?)[ \t]*\r?$", re.MULTILINE)


def _uu_line(line: bytes) -> bytes:
    try:
        return binascii.a2b_uu(line)
    except binascii.Error:
        # some encoders pad lines oddly: decode only the length the line announces
        nbytes = (((line[0] - 32) & 63) * 4 + 5) // 3 if line else 0
        try:
            return binascii.a2b_uu(line[:nbytes])
        except binascii.Error:
            return b""


def uu_blocks(payload: bytes, max_blocks: int) -> list[tuple[str, bytes, tuple[int, int]]]:
    """``(name, data, (start, end))`` for each ``begin NNN name`` ... ``end`` block."""
    found: list[tuple[str, bytes, tuple[int, int]]] = []
    pos = 0
    while len(found) < max_blocks:
        m = _UU_BEGIN.search(payload, pos)
        if not m:
            break
        name = m.group(2).decode("utf-8", "replace")
        body_start = payload.find(b"\n", m.end())
        if body_start < 0:
            break
        out = bytearray()
        cursor = body_start + 1
        end = len(payload)
        while cursor < len(payload):
            nl = payload.find(b"\n", cursor)
            line_end = len(payload) if nl < 0 else nl
            line = payload[cursor:line_end].rstrip(b"\r")
            cursor = line_end + 1
            if line.strip() == b"end":
                end = cursor
                break
            if not line or line == b"`":
                continue
            if m.group(0).startswith(b"begin-base64"):
                try:
                    out += binascii.a2b_base64(line)
                except binascii.Error:
                    pass
            else:
                out += _uu_line(line)
        else:
            end = len(payload)
        found.append((name, bytes(out), (m.start(), end)))
        pos = max(end, m.end())
    return found


# -- the walk ------------------------------------------------------------------------------


def _ext_for(ctype: str) -> str:
    try:
        return mimetypes.guess_extension(ctype, strict=False) or ".bin"
    except Exception:
        return ".bin"


def _decoded_payload(part: email.message.Message) -> bytes:
    try:
        payload = part.get_payload(decode=True)
    except Exception as exc:
        log.debug("payload decode failed: %s", exc)
        payload = None
    if payload is None:
        try:
            raw = part.get_payload()
            if isinstance(raw, str):
                payload = raw.encode("utf-8", "surrogateescape")
        except Exception:
            payload = None
    if isinstance(payload, str):
        payload = payload.encode("utf-8", "surrogateescape")
    return payload if isinstance(payload, bytes) else b""


def walk_message(
    raw: bytes,
    spool: Spool,
    cfg: ExtractConfig,
    origin: tuple[str, ...] = (),
    depth: int = 0,
    result: MessageWalk | None = None,
) -> MessageWalk:
    """Walk one raw message; artifacts go to ``spool``; never raises for bad input.

    ``LimitExceeded`` (the message's time budget) is the only exception that
    escapes, after the partial result is stored in ``result``.
    """
    res = result if result is not None else MessageWalk()
    if len(raw) > cfg.max_message_bytes:
        spool.note_limit(
            "max_message_bytes", f"message of {len(raw)} bytes, only the first {cfg.max_message_bytes} scanned"
        )
        raw = raw[: cfg.max_message_bytes]
    msg, problem = parse_message(raw)
    if problem:
        res.defects[problem] += 1
        if "parts," in problem:
            spool.note_limit("max_mime_parts", problem)
        elif "nested" in problem:
            spool.note_limit("max_mime_depth", problem)
    for name in HEADERS:
        value = _header(msg, name)
        if value or name in REQUIRED_HEADERS:
            res.headers.setdefault(name, value)
    try:
        _walk_tree(msg, spool, cfg, origin, depth, res)
        if any("Boundary" in d or "Multipart" in d for d in res.defects) and not problem:
            _recover_parts(raw, spool, cfg, origin, depth, res)
    finally:
        if res.defects:
            summary = ", ".join(f"{k} x{v}" if v > 1 else k for k, v in res.defects.most_common(8))
            if not any(f.id == "mime_defect" for f in res.findings):
                res.findings.append(Finding("mime_defect", 1, f"malformed MIME: {summary}", SOURCE))
    return res


def _recover_parts(raw: bytes, spool: Spool, cfg: ExtractConfig, origin: tuple[str, ...], depth: int,
                   res: MessageWalk) -> None:
    """The parser met broken or reused boundaries: read every part again past them (see embedded.py)."""
    from mailvm.extract.embedded import salvage_parts

    known = {a.sha256 for a in spool.artifacts}
    heads = set()
    for a in spool.artifacts:
        try:
            with open(a.path, "rb") as fh:
                heads.add(fh.read(4096))
        except OSError:
            pass
    recovered = []
    room = max(0, MAX_PARTS - res.parts)
    for n, part in enumerate(salvage_parts(raw, cfg.max_file_bytes)):
        if n >= room:
            spool.note_limit("max_mime_parts", f"more than {MAX_PARTS} MIME parts, the rest not scanned")
            break
        if hashlib.sha256(part.data).hexdigest() in known or part.data[:4096] in heads:
            continue  # found by the walk already (a truncated copy decodes a few bytes differently)
        name = clean_name(part.name) if part.name else f"recovered{n}{_ext_for(part.content_type)}"
        art = spool.add_bytes(part.data, name, origin + (f"recovered:{name}",), depth)
        if art is None:
            break
        art.role = "attachment"
        known.add(art.sha256)
        res.artifacts.append(art)
        recovered.append(name)
    if recovered:
        res.findings.append(Finding("mime_part_recovered", 3,
                                    f"{len(recovered)} part(s) hidden from a standard MIME parser by broken or reused "
                                    f"boundaries: {', '.join(recovered[:5])}", SOURCE))


def _carve_embedded(data: bytes, spool: Spool, origin: tuple[str, ...], depth: int, res: MessageWalk,
                    label: str) -> None:
    """Base64 blobs in a text part that decode to a file type worth analysing become artifacts."""
    from mailvm.extract.embedded import carve_text

    if len(data) < 256:
        return
    for n, (ext, blob) in enumerate(carve_text(data, spool.limits.max_file_bytes)):
        name = f"{label}-embedded{n}.{ext}"
        art = spool.add_bytes(blob, name, origin + (f"embedded:{name}",), depth)
        if art is None:
            return
        art.role = "embedded"
        res.artifacts.append(art)


#: a body worth judging as content: it links somewhere or asks for input
_BODY_CONTENT = re.compile(rb"https?:|www\.|<a\b|<form|<script|<meta\b", re.I)


def _body_artifact(data: bytes, ctype: str, spool: Spool, origin: tuple[str, ...], depth: int,
                   res: MessageWalk) -> None:
    """The message's own text or HTML as an artifact (role ``body``): the body analyzers judge
    link-only lures.  Only bodies that link somewhere or ask for input; never detonated."""
    if not data or not _BODY_CONTENT.search(data[:MAX_HTML]):
        return
    name = "body.html" if ctype == "text/html" else "body.txt"
    art = spool.add_bytes(data[:MAX_HTML], name, origin + (f"body:{name}",), depth)
    if art is not None:
        art.role = "body"
        res.artifacts.append(art)


def _collect_defects(part: email.message.Message, res: MessageWalk) -> None:
    for d in getattr(part, "defects", ()) or ():
        res.defects[type(d).__name__] += 1


def _walk_tree(
    root: email.message.Message,
    spool: Spool,
    cfg: ExtractConfig,
    origin: tuple[str, ...],
    depth: int,
    res: MessageWalk,
) -> None:
    # explicit stack: (part, origin, artifact depth, multipart nesting)
    stack: list[tuple[email.message.Message, tuple[str, ...], int, int]] = [(root, origin, depth, 0)]
    nested_index = 0
    while stack:
        part, p_origin, p_depth, mp_depth = stack.pop()
        res.parts += 1
        if res.parts > MAX_PARTS:
            spool.note_limit("max_mime_parts", f"more than {MAX_PARTS} MIME parts, the rest not scanned")
            return
        if not isinstance(part, email.message.Message):
            continue
        try:
            ctype = part.get_content_type()
        except Exception:
            ctype = "application/octet-stream"
        _collect_defects(part, res)
        try:
            payload = part.get_payload()
        except Exception:
            payload = None
        if isinstance(payload, list):
            if mp_depth >= MAX_MULTIPART_DEPTH:
                spool.note_limit("max_mime_depth", f"multipart nesting deeper than {MAX_MULTIPART_DEPTH}")
                continue
            children = [c for c in payload if isinstance(c, email.message.Message)]
            if ctype in ("message/rfc822", "message/global") and part is not root:
                if p_depth + 1 > cfg.max_depth:
                    spool.note_limit("max_message_depth", f"message/rfc822 nested deeper than {cfg.max_depth}")
                    continue
                nested_index += 1
                for child in reversed(children):
                    subject = _header(child, "Subject")[:80]
                    label = f"message:{subject or nested_index}"
                    stack.append((child, p_origin + (label,), p_depth + 1, mp_depth + 1))
                    _add_nested_headers(child, res)
                continue
            for child in reversed(children):
                stack.append((child, p_origin, p_depth, mp_depth + 1))
            continue
        _leaf(part, ctype, spool, p_origin, p_depth, res)


def _add_nested_headers(child: email.message.Message, res: MessageWalk) -> None:
    subject = _header(child, "Subject")
    if subject:
        res.add_text(f"Subject: {subject}")


def _leaf(
    part: email.message.Message,
    ctype: str,
    spool: Spool,
    origin: tuple[str, ...],
    depth: int,
    res: MessageWalk,
) -> None:
    filename = part_filename(part)
    data = _decoded_payload(part)
    _collect_defects(part, res)  # decoding adds defects (bad base64 padding...)
    is_text = ctype in TEXT_BODY_TYPES
    if is_text and not filename:
        from mailvm.extract.embedded import file_signature

        ext = file_signature(data[:16])
        if ext is not None:
            # a "text" part whose bytes are a file (a zip sent as inline text/html): a file, not a body
            filename = f"part{res.parts}.{ext}"
            is_text = False
            res.findings.append(Finding("mime_text_part_is_file", 4,
                                        f"a {ctype} part without a name holds a .{ext} file", SOURCE))
    if is_text:
        text = decode_text(data, _charset_of(part))
        if ctype == "text/html":
            res.add_html(text)
            res.add_text(html_visible_text(text))
        else:
            res.add_text(text)
        if not filename:
            first = len(res.artifacts)
            _uudecoded(data, spool, origin, depth, res)
            _carve_embedded(data, spool, origin, depth, res, "html" if ctype == "text/html" else "text")
            _body_artifact(data, ctype, spool, origin, depth, res)
            text_part = hashlib.sha256(data).hexdigest()
            for art in res.artifacts[first:]:
                art.part_id = text_part  # inside this text part: stripping means replacing the part
                if art.role == "attachment":
                    art.role = "embedded"
            return
    if not filename:
        res_index = res.parts
        filename = f"part{res_index}{_ext_for(ctype)}"
    art = spool.add_bytes(data, filename, origin + (f"attachment:{filename}",), depth)
    if art is not None:
        art.part_id = art.sha256  # the leaf's decoded content: how strip finds this part again
        res.artifacts.append(art)


def _uudecoded(data: bytes, spool: Spool, origin: tuple[str, ...], depth: int, res: MessageWalk) -> None:
    if b"begin " not in data and b"begin-base64 " not in data:
        return
    room = max(0, spool.limits.max_artifacts - len(spool.artifacts))
    for name, blob, _span in uu_blocks(data, min(room, 100)):
        name = clean_name(name)
        art = spool.add_bytes(blob, name, origin + (f"uuencode:{name}",), depth)
        if art is not None:
            res.artifacts.append(art)


# -- TNEF (winmail.dat) ----------------------------------------------------------------------


def is_tnef(head: bytes) -> bool:
    """TNEF is recognised by its signature (libmagic's type for it varies)."""
    return head.startswith(TNEF_MAGIC)


def _tnef_objects(data: bytes) -> int:
    """How many objects tnefparse would iterate over (its loop, without parsing them)."""
    count, offset = 0, 6
    while offset + 12 < len(data):
        length = int.from_bytes(data[offset + 5 : offset + 9], "little")
        offset += min(len(data) - offset, length + 11)
        count += 1
    return count


def expand_tnef(ctx: ExpandContext) -> list[Artifact]:
    """Attachments of an Outlook TNEF blob (winmail.dat) as artifacts."""
    import tnefparse

    art = ctx.artifact
    if art.size > TNEF_MAX_BYTES:
        ctx.spool.note_limit("max_tnef_bytes", f"{art.name}: TNEF of {art.size} bytes not opened")
        return ctx.children
    with open(art.path, "rb") as fh:
        data = fh.read(TNEF_MAX_BYTES + 1)
    objects = _tnef_objects(data)
    if objects * max(len(data), 1) > TNEF_MAX_WORK:
        ctx.spool.note_limit("max_members", f"{art.name}: TNEF with {objects} objects not opened")
        return ctx.children
    tnef = tnefparse.TNEF(data, do_checksum=False)
    for att in tnef.attachments:
        if not ctx.count_entry():
            break
        try:
            name = att.long_filename() or att.name
        except Exception:
            name = ""
        if isinstance(name, bytes):
            name = name.decode("utf-8", "replace")
        payload = att.data if isinstance(att.data, (bytes, bytearray)) else b""
        ctx.add_member(io.BytesIO(bytes(payload)).read, clean_name(name, "unnamed") if name else "unnamed", label="tnef")
        if ctx.stopped:
            break
    return ctx.children


__all__ = [
    "MAX_PARTS",
    "MessageWalk",
    "decode_header_value",
    "expand_tnef",
    "html_visible_text",
    "is_tnef",
    "parse_message",
    "part_filename",
    "uu_blocks",
    "walk_message",
]
