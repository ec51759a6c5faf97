"""What a PDF is made of, read with pypdf under hard bounds: pages, links, actions, forms, embedded files.

:func:`read_facts` returns a :class:`PdfFacts` record that :mod:`mailvm.triage.pdf`
turns into findings, and that :func:`link_urls` / :func:`embedded_files` expose
to the rest of mailvm (the link downloader follows a lure's links; embedded
files can be carved out as artifacts).

pypdf resolves what a byte scanner cannot see: objects inside compressed
object streams, names in name trees, actions chained with ``/Next``.  Every
walk is bounded (pages, annotations, fields, tree nodes, chain length, URLs,
decompressed bytes, a wall-clock deadline checked between steps) and pypdf's
own decoding limits are lowered for the call (:func:`pypdf.apply_configuration`,
a context variable: other threads keep theirs).  What could not be read is
listed in ``PdfFacts.errors`` / ``PdfFacts.partial``; nothing here raises.
"""

from __future__ import annotations

import io
import logging
import re
import time
from dataclasses import dataclass, field, replace
from typing import Any, Iterator

import pypdf
import zxingcpp
from pypdf.generic import ArrayObject, DictionaryObject, IndirectObject, StreamObject

log = logging.getLogger(__name__)

#: pages whose annotations, fields and images are read
MAX_PAGES = 500
#: documents with at most this many pages have their text extracted (lure check)
MAX_TEXT_PAGES = 3
MAX_TEXT_CHARS = 20_000
MAX_FRAGMENTS = 5_000
MAX_ANNOTS_PER_PAGE = 300
MAX_FIELDS = 500
MAX_TREE_NODES = 2_000
MAX_ACTIONS = 500
MAX_URLS = 200
MAX_EMBEDDED = 50
MAX_EMBEDDED_BYTES = 32 * 1024 * 1024
#: a file with more objects than this is not walked (``partial``): real lures are tiny
MAX_OBJECTS = 500_000
DEADLINE_S = 5.0

#: pypdf limits for one call (its defaults allow 75 MB per stream)
PYPDF_LIMITS = dict(
    maximum_declared_stream_length=64 * 1024 * 1024,
    zlib_maximum_output_length=32 * 1024 * 1024,
    lzw_maximum_output_length=32 * 1024 * 1024,
    run_length_maximum_output_length=32 * 1024 * 1024,
    array_based_stream_maximum_output_length=32 * 1024 * 1024,
    jbig2_maximum_output_length=8 * 1024 * 1024,
    brotli_maximum_output_length=32 * 1024 * 1024,
    image_maximum_buffer_size=16 * 1024 * 1024,
    stream_decoding_work_maximum_length=64 * 1024 * 1024,
    stream_parsing_work_maximum_count=300_000,
    page_tree_maximum_entries=20_000,
    page_tree_maximum_page_entries=200_000,
    form_fields_maximum_entries=MAX_FIELDS * 4,
    xform_maximum_invocations_per_extraction=200,
    jbig2dec_binary=None,  # never start a subprocess
)

#: images read for QR codes (on documents whose text is read), and their size bounds
MAX_QR_IMAGES = 4
MAX_QR_PIXELS = 4_000_000
QR_FORMATS = (zxingcpp.BarcodeFormat.QRCode, zxingcpp.BarcodeFormat.MicroQRCode, zxingcpp.BarcodeFormat.RMQRCode)
MAX_SCRIPT_CHARS = 64 * 1024
_SCRIPT_URL_RE = re.compile(r"https?://[^\s'\"()<>\\]{1,2000}", re.I)
PASSWORD_FLAG = 1 << 13  # /Ff bit 14: a text field whose input is hidden (password)
_WORD_RE = re.compile(r"\w{2,}")


@dataclass(frozen=True)
class Link:
    """A link annotation (or a link-like widget): where it goes and how much of its page it covers."""

    url: str
    page: int
    area: float  # share of the page (0-1), rectangles clipped to the page
    rect: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0)
    #: the text drawn inside the link's rectangle (``None``: the page's text was not extracted)
    text: str | None = None


@dataclass(frozen=True)
class Action:
    """An action found in the document: ``trigger`` says what starts it."""

    kind: str  # JavaScript, Launch, URI, SubmitForm, GoToR, GoToE, ImportData, ResetForm...
    trigger: str  # open (OpenAction), auto (an /AA event), click (a link or widget), names (document JavaScript)
    target: str = ""  # URL, file, script excerpt
    urls: tuple[str, ...] = ()  # http(s) URLs written in a script (app.launchURL, this.submitForm...)


@dataclass
class PdfFacts:
    pages: int = 0
    objects: int = 0
    encrypted: bool = False
    decrypted: bool = False
    words: int | None = None  # None when the text was not extracted (too many pages, error)
    text: str = ""  # the text of the pages read (documents of at most MAX_TEXT_PAGES), at most MAX_TEXT_CHARS
    images: int = 0  # image XObjects on the pages read
    links: list[Link] = field(default_factory=list)
    actions: list[Action] = field(default_factory=list)
    fields: int = 0
    password_fields: int = 0
    field_names: list[str] = field(default_factory=list)
    xfa: bool = False
    embedded: list[str] = field(default_factory=list)  # file names (embedded file tree, file attachment annotations)
    #: resources fetched from elsewhere when a page is shown (external image XObjects: URL or UNC /F)
    remote_refs: list[str] = field(default_factory=list)
    #: URLs in QR codes drawn as images ("quishing": a link the mail filter cannot click, the phone can)
    qr_urls: list[str] = field(default_factory=list)
    #: fonts whose /FontMatrix holds something other than numbers (CVE-2024-4367, code run by PDF.js)
    bad_font_matrix: list[str] = field(default_factory=list)
    rebuilt: str = ""  # why the cross-reference table had to be rebuilt ("" when it was usable)
    partial: list[str] = field(default_factory=list)  # what was not read and why
    errors: list[str] = field(default_factory=list)

    def urls(self) -> list[str]:
        """Every link and URI action target, deduplicated, in document order."""
        seen: dict[str, None] = {}
        for link in self.links:
            seen.setdefault(link.url, None)
        for a in self.actions:
            if a.kind == "URI" and a.target:
                seen.setdefault(a.target, None)
            for u in a.urls:
                seen.setdefault(u, None)
        for u in self.qr_urls:
            seen.setdefault(u, None)
        return list(seen)[:MAX_URLS]


class _Stop(Exception):
    """The deadline passed: stop walking, keep what was read."""


class _Walk:
    """Shared state of one read: the deadline and a visited set against reference cycles."""

    def __init__(self, facts: PdfFacts, deadline: float):
        self.facts = facts
        self.deadline = deadline
        self.seen: set[tuple[int, int]] = set()
        self.nodes = 0

    def tick(self) -> None:
        self.nodes += 1
        if time.monotonic() > self.deadline:
            raise _Stop("deadline")

    def first_visit(self, obj: Any) -> bool:
        if isinstance(obj, IndirectObject):
            key = (obj.idnum, obj.generation)
            if key in self.seen:
                return False
            self.seen.add(key)
        return True


def _resolve(obj: Any) -> Any:
    return obj.get_object() if isinstance(obj, IndirectObject) else obj


def _text(obj: Any, limit: int = 2000) -> str:
    """A PDF string/name/stream as text (file specs: their /UF or /F)."""
    obj = _resolve(obj)
    if isinstance(obj, DictionaryObject) and not isinstance(obj, StreamObject):
        for key in ("/UF", "/F", "/Unix", "/DOS", "/Mac"):
            if key in obj:
                return _text(obj[key], limit)
        return ""
    if isinstance(obj, StreamObject):
        try:
            data = obj.get_data()[:limit]
        except Exception:  # pypdf decoding errors of every kind
            return ""
        return data.decode("latin-1")
    if isinstance(obj, bytes):
        return obj[:limit].decode("latin-1")
    return str(obj)[:limit] if obj is not None else ""


def _clean_url(raw: str) -> str:
    return raw.strip().strip("\x00")[:4096]


def _action_chain(walk: _Walk, action: Any, trigger: str) -> None:
    """One action and those chained after it with /Next (bounded, cycle-safe)."""
    todo = [action]
    steps = 0
    while todo and steps < 32 and len(walk.facts.actions) < MAX_ACTIONS:
        walk.tick()
        raw = todo.pop()
        steps += 1
        if not walk.first_visit(raw):
            continue
        act = _resolve(raw)
        if isinstance(act, ArrayObject):  # an OpenAction that is a destination array: no action
            continue
        if not isinstance(act, DictionaryObject):
            continue
        kind = str(act.get("/S", "")).lstrip("/")
        target = ""
        urls: tuple[str, ...] = ()
        if kind == "URI":
            target = _clean_url(_text(act.get("/URI", "")))
        elif kind == "JavaScript":
            code = _text(act.get("/JS", ""), MAX_SCRIPT_CHARS)
            target = code[:300]
            urls = tuple(dict.fromkeys(m.group(0) for m in _SCRIPT_URL_RE.finditer(code)))[:10]
        elif kind == "Launch":
            win = _resolve(act.get("/Win"))
            if isinstance(win, DictionaryObject):
                target = (_text(win.get("/F", "")) + " " + _text(win.get("/P", ""))).strip()
            else:
                target = _text(act.get("/F", ""))
        elif kind in ("SubmitForm", "GoToR", "GoToE", "ImportData", "Thread"):
            target = _clean_url(_text(act.get("/F", "")))
        if kind:
            walk.facts.actions.append(Action(kind, trigger, target, urls))
        nxt = act.get("/Next")
        if nxt is not None:
            nxt_r = _resolve(nxt)
            if isinstance(nxt_r, ArrayObject):
                todo.extend(list(nxt_r)[:16])
            else:
                todo.append(nxt)


def _additional_actions(walk: _Walk, holder: DictionaryObject) -> None:
    aa = _resolve(holder.get("/AA"))
    if isinstance(aa, DictionaryObject):
        for _event, act in list(aa.items())[:16]:
            _action_chain(walk, act, "auto")


def _name_tree(walk: _Walk, node: Any, depth: int = 0) -> Iterator[tuple[str, Any]]:
    """(name, value) pairs of a name tree, bounded in depth and nodes."""
    if depth > 16 or walk.nodes > MAX_TREE_NODES * 4 or not walk.first_visit(node):
        return
    walk.tick()
    node = _resolve(node)
    if not isinstance(node, DictionaryObject):
        return
    names = _resolve(node.get("/Names"))
    if isinstance(names, ArrayObject):
        items = list(names)[: MAX_TREE_NODES * 2]
        for i in range(0, len(items) - 1, 2):
            yield _text(items[i], 300), items[i + 1]
    kids = _resolve(node.get("/Kids"))
    if isinstance(kids, ArrayObject):
        for kid in list(kids)[:MAX_TREE_NODES]:
            yield from _name_tree(walk, kid, depth + 1)


def _catalog(walk: _Walk, root: DictionaryObject) -> None:
    facts = walk.facts
    if "/OpenAction" in root:
        _action_chain(walk, root.get("/OpenAction"), "open")
    _additional_actions(walk, root)
    names = _resolve(root.get("/Names"))
    if isinstance(names, DictionaryObject):
        js = names.get("/JavaScript")
        if js is not None:
            for _name, act in _name_tree(walk, js):
                _action_chain(walk, act, "names")
        ef = names.get("/EmbeddedFiles")
        if ef is not None:
            for name, spec in _name_tree(walk, ef):
                if len(facts.embedded) >= MAX_EMBEDDED:
                    break
                spec_r = _resolve(spec)
                facts.embedded.append(_text(spec_r, 300) or name or "(unnamed)")
    form = _resolve(root.get("/AcroForm"))
    if isinstance(form, DictionaryObject):
        if form.get("/XFA") is not None:
            facts.xfa = True
        _fields(walk, form.get("/Fields"))


def _fields(walk: _Walk, fields: Any, depth: int = 0) -> None:
    facts = walk.facts
    arr = _resolve(fields)
    if not isinstance(arr, ArrayObject) or depth > 16:
        return
    for raw in list(arr)[:MAX_FIELDS]:
        if facts.fields >= MAX_FIELDS:
            facts.partial.append(f"more than {MAX_FIELDS} form fields")
            return
        if not walk.first_visit(raw):
            continue
        walk.tick()
        f = _resolve(raw)
        if not isinstance(f, DictionaryObject):
            continue
        kids = f.get("/Kids")
        if "/T" in f or "/FT" in f:
            facts.fields += 1
            name = _text(f.get("/T", ""), 80)
            if name and len(facts.field_names) < 20:
                facts.field_names.append(name)
            try:
                flags = int(_resolve(f.get("/Ff", 0)) or 0)
            except (TypeError, ValueError):
                flags = 0
            if str(f.get("/FT", "")) == "/Tx" and flags & PASSWORD_FLAG:
                facts.password_fields += 1
        if "/A" in f:
            _action_chain(walk, f.get("/A"), "click")
        _additional_actions(walk, f)
        if kids is not None:
            _fields(walk, kids, depth + 1)


def _page_box(page: Any) -> tuple[float, float, float, float]:
    box = page.cropbox if "/CropBox" in page else page.mediabox
    x0, y0, x1, y1 = (float(v) for v in (box.left, box.bottom, box.right, box.top))
    return min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)


Rect = tuple[float, float, float, float]


def _rect(raw: Any) -> Rect:
    """An annotation's /Rect as (x0, y0, x1, y1) with x0 <= x1 and y0 <= y1 (all zero when unusable)."""
    try:
        vals = [float(_resolve(v)) for v in list(_resolve(raw))[:4]]
    except (TypeError, ValueError):
        return (0.0, 0.0, 0.0, 0.0)
    if len(vals) != 4:
        return (0.0, 0.0, 0.0, 0.0)
    return min(vals[0], vals[2]), min(vals[1], vals[3]), max(vals[0], vals[2]), max(vals[1], vals[3])


def _rect_share(rect: Rect, box: Rect) -> float:
    x0, y0, x1, y1 = rect
    bx0, by0, bx1, by1 = box
    w = max(0.0, min(x1, bx1) - max(x0, bx0))
    h = max(0.0, min(y1, by1) - max(y0, by0))
    page_area = (bx1 - bx0) * (by1 - by0)
    return 0.0 if page_area <= 0 else min(1.0, w * h / page_area)


def _inside(x: float, y: float, rect: Rect, slack: float = 3.0) -> bool:
    x0, y0, x1, y1 = rect
    return x0 - slack <= x <= x1 + slack and y0 - slack <= y <= y1 + slack


def _annotations(walk: _Walk, page: Any, number: int) -> None:
    facts = walk.facts
    annots = _resolve(page.get("/Annots"))
    if not isinstance(annots, ArrayObject):
        return
    box = _page_box(page)
    items = list(annots)
    if len(items) > MAX_ANNOTS_PER_PAGE:
        facts.partial.append(f"page {number}: {len(items)} annotations, first {MAX_ANNOTS_PER_PAGE} read")
    for raw in items[:MAX_ANNOTS_PER_PAGE]:
        walk.tick()
        a = _resolve(raw)
        if not isinstance(a, DictionaryObject):
            continue
        subtype = str(a.get("/Subtype", ""))
        if subtype == "/FileAttachment" and len(facts.embedded) < MAX_EMBEDDED:
            facts.embedded.append(_text(a.get("/FS", ""), 300) or "(unnamed attachment)")
        act = _resolve(a.get("/A"))
        if isinstance(act, DictionaryObject) and str(act.get("/S", "")) == "/URI":
            url = _clean_url(_text(act.get("/URI", "")))
            if url and len(facts.links) < MAX_URLS:
                rect = _rect(a.get("/Rect", []))
                facts.links.append(Link(url, number, _rect_share(rect, box), rect))
        if "/A" in a:
            _action_chain(walk, a.get("/A"), "click")
        _additional_actions(walk, a)


def _resources(walk: _Walk, page: Any) -> list[tuple[str, int]]:
    """Image XObjects on the page as (name, pixels) (returned); external XObjects and odd font matrices
    (into ``walk.facts``)."""
    facts = walk.facts
    res = _resolve(page.get("/Resources"))
    if not isinstance(res, DictionaryObject):
        return []
    images: list[tuple[str, int]] = []
    xobjs = _resolve(res.get("/XObject"))
    if isinstance(xobjs, DictionaryObject):
        for _name, raw in list(xobjs.items())[:200]:
            x = _resolve(raw)
            if not isinstance(x, DictionaryObject):
                continue
            if str(x.get("/Subtype", "")) == "/Image":
                try:
                    pixels = int(_resolve(x.get("/Width", 0))) * int(_resolve(x.get("/Height", 0)))
                except (TypeError, ValueError):
                    pixels = 0
                images.append((str(_name), pixels))
            if "/F" in x and len(facts.remote_refs) < 20:
                facts.remote_refs.append(_clean_url(_text(x.get("/F")) or "(external stream)"))
    fonts = _resolve(res.get("/Font"))
    if isinstance(fonts, DictionaryObject):
        for name, raw in list(fonts.items())[:200]:
            font = _resolve(raw)
            matrix = _resolve(font.get("/FontMatrix")) if isinstance(font, DictionaryObject) else None
            if isinstance(matrix, ArrayObject) and any(
                    not isinstance(_resolve(v), (int, float)) for v in list(matrix)[:16]):
                if len(facts.bad_font_matrix) < 10:
                    facts.bad_font_matrix.append(f"{name}: {_text(matrix, 200)}")
    return images


def _qr_codes(walk: _Walk, page: Any, images: list[tuple[str, int]]) -> None:
    """URLs in QR codes among the page's images (a few images of bounded size; decoding failures are skipped)."""
    facts = walk.facts
    for name, pixels in images[:MAX_QR_IMAGES]:
        if not 21 * 21 <= pixels <= MAX_QR_PIXELS or len(facts.qr_urls) >= 10:
            continue
        walk.tick()
        try:
            picture = page.images[name].image
            codes = zxingcpp.read_barcodes(picture, formats=QR_FORMATS)
        except Exception as exc:  # undecodable image data, a filter Pillow lacks, a refused bomb
            log.debug("image %s not read for QR codes: %s: %s", name, type(exc).__name__, exc)
            continue
        for code in codes[:4]:
            text = (code.text or "").strip()
            if re.match(r"(?i)^(https?://|www\.)", text):
                facts.qr_urls.append(_clean_url(text if "://" in text else "http://" + text))


def _page_text(page: Any, links: list[Link]) -> tuple[str, list[Link]]:
    """The page's text, and its links with the text drawn inside their rectangles."""
    frags: list[tuple[float, float, str]] = []

    def visit(text: str, cm: Any, tm: Any, _font: Any, _size: Any) -> None:
        if not text or not text.strip() or len(frags) >= MAX_FRAGMENTS:
            return
        try:
            x = tm[4] * cm[0] + tm[5] * cm[2] + cm[4]
            y = tm[4] * cm[1] + tm[5] * cm[3] + cm[5]
        except (TypeError, IndexError):
            return
        frags.append((float(x), float(y), text))

    text = page.extract_text(visitor_text=visit)[:MAX_TEXT_CHARS]
    placed = []
    for link in links:
        inside = " ".join(t.strip() for x, y, t in frags if _inside(x, y, link.rect))
        placed.append(replace(link, text=re.sub(r"\s+", " ", inside)[:300]))
    return text, placed


def _pages(walk: _Walk, reader: pypdf.PdfReader) -> None:
    facts = walk.facts
    pages = reader.pages
    facts.pages = len(pages)
    if facts.pages > MAX_PAGES:
        facts.partial.append(f"{facts.pages} pages, links and fields of the first {MAX_PAGES} read")
    words = 0
    want_text = facts.pages <= MAX_TEXT_PAGES
    for i in range(min(facts.pages, MAX_PAGES)):
        walk.tick()
        page = pages[i]
        _additional_actions(walk, page)
        first_link = len(facts.links)
        _annotations(walk, page, i + 1)
        images = _resources(walk, page)
        facts.images += len(images)
        if want_text:
            try:
                text, placed = _page_text(page, facts.links[first_link:])
            except Exception as exc:  # pypdf's text extraction raises many types on odd fonts
                facts.errors.append(f"text of page {i + 1}: {type(exc).__name__}: {exc}"[:200])
                want_text = False
                continue
            facts.links[first_link:] = placed
            words += len(_WORD_RE.findall(text))
            if len(facts.text) < MAX_TEXT_CHARS:
                facts.text = (facts.text + "\n" + text)[:MAX_TEXT_CHARS]
            _qr_codes(walk, page, images)
    if want_text:
        facts.words = words


#: appended when a file has no usable startxref: pypdf then rebuilds the cross-reference table by
#: scanning for objects, as PDF readers do (files without xref are an evasion of strict parsers)
_REBUILD_TAIL = b"\nstartxref\n0\n%%EOF\n"


def _open(data: bytes, facts: PdfFacts) -> pypdf.PdfReader | None:
    try:
        return pypdf.PdfReader(io.BytesIO(data), strict=False)
    except Exception as first:  # PdfReadError (no startxref, no EOF marker...) and hostile-input failures
        try:
            reader = pypdf.PdfReader(io.BytesIO(data + _REBUILD_TAIL), strict=False)
        except Exception:
            facts.errors.append(f"{type(first).__name__}: {first}"[:200])
            return None
        facts.rebuilt = f"{type(first).__name__}: {first}"[:120]
        return reader


def read_facts(data: bytes, deadline_s: float = DEADLINE_S) -> PdfFacts:
    """The structure of the PDF in ``data`` (see the module doc); never raises."""
    facts = PdfFacts()
    walk = _Walk(facts, time.monotonic() + deadline_s)
    try:
        with pypdf.apply_configuration(**PYPDF_LIMITS):
            reader = _open(data, facts)
            if reader is None:
                return facts
            try:
                facts.objects = int(_resolve(reader.trailer.get("/Size", 0)) or 0)
            except (TypeError, ValueError):
                facts.objects = 0
            if facts.objects > MAX_OBJECTS:
                facts.partial.append(f"{facts.objects} objects: structure not walked")
                return facts
            if reader.is_encrypted:
                facts.encrypted = True
                try:
                    facts.decrypted = bool(reader.decrypt(""))
                except Exception as exc:  # unsupported algorithm, missing crypto provider...
                    facts.errors.append(f"decrypt: {type(exc).__name__}: {exc}"[:200])
                if not facts.decrypted:
                    facts.partial.append("encrypted with a user password: structure not read")
                    return facts
            root = _resolve(reader.trailer.get("/Root"))
            if isinstance(root, DictionaryObject):
                _catalog(walk, root)
            _pages(walk, reader)
    except _Stop:
        facts.partial.append(f"stopped after {deadline_s:g} s")
    except RecursionError:
        facts.errors.append("structure nested too deeply")
    except Exception as exc:  # pypdf raises many types (PdfReadError, KeyError, ValueError...) on hostile files
        facts.errors.append(f"{type(exc).__name__}: {exc}"[:200])
    return facts


def link_urls(data: bytes, limit: int = 3) -> list[str]:
    """The http(s) targets a reader of this PDF would click, most prominent first, at most ``limit``.

    Ordered by the page area their links cover (largest first), then by
    document order; URI actions started on open come first of all.
    """
    facts = read_facts(data)
    return ranked_urls(facts, limit)


def ranked_urls(facts: PdfFacts, limit: int = 3) -> list[str]:
    area: dict[str, float] = {}
    order: dict[str, int] = {}
    for a in facts.actions:
        if a.kind == "URI" and a.trigger in ("open", "auto") and a.target:
            area[a.target] = 2.0  # opens by itself
            order.setdefault(a.target, len(order))
        if a.kind == "JavaScript" and a.trigger in ("open", "auto"):
            for u in a.urls:
                area[u] = 2.0
                order.setdefault(u, len(order))
    for u in facts.qr_urls:
        area[u] = max(area.get(u, 0.0), 1.0)  # a QR code is the whole point of the page it is on
        order.setdefault(u, len(order))
    for link in facts.links:
        area[link.url] = area.get(link.url, 0.0) + link.area
        order.setdefault(link.url, len(order))
    for a in facts.actions:
        for u in ((a.target,) if a.kind == "URI" and a.target else a.urls):
            area.setdefault(u, 0.0)
            order.setdefault(u, len(order))
    ranked = sorted(order, key=lambda u: (-area[u], order[u]))
    return [u for u in ranked if re.match(r"(?i)^https?://", u)][:limit]


def embedded_files(data: bytes, max_files: int = MAX_EMBEDDED, max_bytes: int = MAX_EMBEDDED_BYTES) -> list[tuple[str, bytes]]:
    """``(name, bytes)`` of the files embedded in the PDF (the EmbeddedFiles name tree), bounded.

    For carving them out as artifacts; a file whose stream cannot be decoded
    within pypdf's lowered limits is skipped.
    """
    out: list[tuple[str, bytes]] = []
    total = 0
    facts = PdfFacts()
    walk = _Walk(facts, time.monotonic() + DEADLINE_S)
    try:
        with pypdf.apply_configuration(**PYPDF_LIMITS):
            reader = _open(data, facts)
            if reader is None or (reader.is_encrypted and not reader.decrypt("")):
                return out
            root = _resolve(reader.trailer.get("/Root"))
            names = _resolve(root.get("/Names")) if isinstance(root, DictionaryObject) else None
            ef_tree = names.get("/EmbeddedFiles") if isinstance(names, DictionaryObject) else None
            if ef_tree is None:
                return out
            for name, spec in _name_tree(walk, ef_tree):
                if len(out) >= max_files:
                    break
                spec_r = _resolve(spec)
                if not isinstance(spec_r, DictionaryObject):
                    continue
                ef = _resolve(spec_r.get("/EF"))
                if not isinstance(ef, DictionaryObject):
                    continue
                stream = _resolve(ef.get("/UF") or ef.get("/F"))
                if not isinstance(stream, StreamObject):
                    continue
                try:
                    body = stream.get_data()
                except Exception as exc:  # bomb refused by the limits, bad filter
                    log.info("embedded file %r not decoded: %s", name, exc)
                    continue
                if total + len(body) > max_bytes:
                    break
                total += len(body)
                out.append((_text(spec_r, 300) or name or "embedded.bin", bytes(body)))
    except _Stop:
        pass
    except RecursionError:
        pass
    except Exception as exc:  # hostile structure: what was carved so far is kept
        log.info("embedded files of a PDF not read: %s: %s", type(exc).__name__, exc)
    return out


__all__ = ["Action", "Link", "PdfFacts", "embedded_files", "link_urls", "ranked_urls", "read_facts"]
