"""PDF analyzer: the keywords that matter, counted with Didier Stevens' pdfid, and the
document's structure, read with pypdf.

pdfid reads byte by byte (about 0.5-2 MB/s: 1 s of a scan worker for a 2 MB
PDF, measured by bench/bench_extract.py): files up to :data:`PDFID_MAX_BYTES`
go through it; larger ones are counted by
:func:`count_names`, a regular-expression scan over the whole buffer that
decodes ``#xx`` escapes the same way.  Both yield ``{name: (count, hex_count)}``
and one function maps counts to findings:

``/JS`` ``/JavaScript`` (stronger with ``/OpenAction`` or ``/AA``), ``/Launch``,
``/EmbeddedFile``, ``/RichMedia``, ``/XFA``, ``/URI`` (count), ``/SubmitForm``,
``/GoToE`` ``/GoToR``, ``/Encrypt``, ``/JBIG2Decode``, and names written with
``#xx`` escapes (``/J#61vaScript``: evasion).

Then the document's structure, read with pypdf (:mod:`mailvm.triage.pdfdoc`),
which also sees what object streams hide from a byte scanner:

* **lure shape** (``pdf_link_lure``): at most 3 pages and 1-3 link targets
  (annotations, URI actions, URLs in scripts, QR codes), and the link is the
  page's main content: a link covering 15 %+ of a page; or little text (one page
  of at most 200 words, two of at most 120) with a link, button or QR code that
  does not show where it goes (typically an image of a blurred "document" or a
  "View invoice" button); or up to 400 words with a call to action hiding its
  address; or a link that looks like a phishing link by itself; a longer document
  (up to 30 pages) counts when its first page is a big link;
* **deceptive link text** (``pdf_deceptive_link``): the text shows one domain, the
  link goes to another;
* **links** rated by :mod:`mailvm.triage.urlrisk` (``pdf_suspicious_link``), and a
  URI action run on open (``pdf_uri_on_open``);
* **forms**: password fields (``pdf_password_form``), submission to a remote URL;
* **actions** by what starts them (open, an automatic event, a click): JavaScript,
  /Launch, remote GoTo with UNC targets, under the same ids as the counts so that
  each piece of evidence counts once;
* **embedded files** with an executable or script name (``pdf_embedded_executable``).

:func:`link_urls` (the targets a reader would click, most prominent first) is
what the link downloader follows for a PDF attachment
(:mod:`mailvm.triage.doclinks`).
"""

from __future__ import annotations

import re
import urllib.parse

from pdfid import pdfid

from mailvm.triage import urlrisk
from mailvm.triage.base import Context, clip, extension
from mailvm.triage.pdfdoc import PdfFacts, link_urls, read_facts
from mailvm.verdict import Artifact, Finding

SOURCE = "triage:pdf"
PDFID_MAX_BYTES = 256 * 1024

WATCHED = ("/JS", "/JavaScript", "/AA", "/OpenAction", "/Launch", "/EmbeddedFile", "/RichMedia", "/XFA", "/URI",
           "/AcroForm", "/JBIG2Decode", "/Encrypt", "/SubmitForm", "/GoToE", "/GoToR", "/ImportData", "/ObjStm", "/Page")

_NAME = re.compile(rb"/[^\x00\x09\x0a\x0c\x0d\x20()<>\[\]{}/%]{1,127}")
_HEX = re.compile(rb"#([0-9A-Fa-f]{2})")


def count_names(data: bytes) -> dict[str, tuple[int, int]]:
    """``{name: (count, count written with #xx escapes)}`` for :data:`WATCHED` names."""
    watched = set(WATCHED)
    counts: dict[str, list[int]] = {}
    for m in _NAME.finditer(data):
        raw = m.group(0)
        hexed = b"#" in raw
        name = _HEX.sub(lambda h: bytes([int(h.group(1), 16)]), raw).decode("latin-1") if hexed else raw.decode("latin-1")
        if name not in watched:
            continue
        c = counts.setdefault(name, [0, 0])
        c[0] += 1
        if hexed:
            c[1] += 1
    return {k: (v[0], v[1]) for k, v in counts.items()}


def pdfid_counts(data: bytes, name: str) -> dict[str, tuple[int, int]]:
    """The same counts from pdfid (``ValueError`` when pdfid reports an error)."""
    doc = pdfid.PDFiD(name or "document.pdf", allNames=True, filebuffer=data)
    root = doc.documentElement
    if root.getAttribute("ErrorOccured") == "True":
        msg = root.getAttribute("ErrorMessage").strip().splitlines()
        raise ValueError(f"pdfid could not parse the file: {msg[-1][:160] if msg else 'unknown error'}")
    counts: dict[str, tuple[int, int]] = {}
    keywords = root.getElementsByTagName("Keywords")
    if keywords:
        for node in keywords[0].childNodes:
            kw = node.getAttribute("Name")
            if kw in WATCHED:
                counts[kw] = (int(node.getAttribute("Count") or 0), int(node.getAttribute("HexcodeCount") or 0))
    return counts


def count_findings(counts: dict[str, tuple[int, int]]) -> list[Finding]:
    def n(k: str) -> int:
        return counts.get(k, (0, 0))[0]

    out: list[Finding] = []
    js = n("/JS") + n("/JavaScript")
    auto = n("/OpenAction") + n("/AA")
    if js and auto:
        out.append(Finding("pdf_auto_javascript", 8, f"JavaScript run on open (/JS {n('/JS')}, /JavaScript {n('/JavaScript')}, "
                                                     f"/OpenAction {n('/OpenAction')}, /AA {n('/AA')})", SOURCE))
    elif js:
        out.append(Finding("pdf_javascript", 6, f"JavaScript (/JS {n('/JS')}, /JavaScript {n('/JavaScript')})", SOURCE))
    elif auto:
        out.append(Finding("pdf_auto_action", 3, f"automatic action (/OpenAction {n('/OpenAction')}, /AA {n('/AA')})", SOURCE))
    if n("/Launch"):
        out.append(Finding("pdf_launch", 8, f"/Launch action starts a program ({n('/Launch')})", SOURCE))
    if n("/EmbeddedFile"):
        out.append(Finding("pdf_embedded_file", 4, f"embedded file(s) ({n('/EmbeddedFile')})", SOURCE))
    if n("/RichMedia"):
        out.append(Finding("pdf_richmedia", 5, f"/RichMedia (Flash/multimedia) ({n('/RichMedia')})", SOURCE))
    if n("/XFA"):
        out.append(Finding("pdf_xfa", 4, f"XFA form ({n('/XFA')})", SOURCE))
    if n("/GoToE") or n("/GoToR") or n("/ImportData"):
        out.append(Finding("pdf_remote_goto", 4, f"/GoToE {n('/GoToE')}, /GoToR {n('/GoToR')}, /ImportData {n('/ImportData')}", SOURCE))
    if n("/SubmitForm"):
        out.append(Finding("pdf_submit_form", 3, f"form submits data ({n('/SubmitForm')})", SOURCE))
    if n("/Encrypt"):
        out.append(Finding("pdf_encrypted", 2, "encrypted PDF (content hidden from scanners)", SOURCE))
    if n("/JBIG2Decode"):
        out.append(Finding("pdf_jbig2", 2, f"JBIG2 images ({n('/JBIG2Decode')}), an exploited decoder", SOURCE))
    if n("/URI"):
        out.append(Finding("pdf_uri", 1, f"/URI x{n('/URI')} (links; each URI action names it twice)", SOURCE))
    hexed = sorted(k for k, (_c, h) in counts.items() if h and k != "/Page")
    if hexed:
        out.append(Finding("pdf_obfuscated_names", 6, f"names written with #xx escapes: {', '.join(hexed)}", SOURCE))
    return out


#: lure shape: a document this short whose main content is a link
LURE_MAX_PAGES = 3
#: a longer document still counts when its first page is a big link (at most this many pages)
LURE_MAX_PAGES_COVER = 30
LURE_MAX_TARGETS = 3
LURE_TEXT_PAGES = 2
#: "little text": at most this many words on a one-page document, and on a two-page one
LURE_MAX_WORDS_ONE_PAGE = 200
LURE_MAX_WORDS = 120
#: a hidden link whose text is a call to action ("View document") makes a lure of a longer text too
LURE_MAX_WORDS_CTA = 400
PROMINENT_AREA = 0.15

DOCUMENT_EXTENSIONS = frozenset({"txt", "pdf", "doc", "docx", "xls", "xlsx", "ppt", "pptx", "odt", "ods", "odp", "rtf",
                                 "csv", "jpg", "jpeg", "png", "gif", "tif", "tiff", "md", "xml"})
EXECUTABLE_EXTENSIONS = frozenset({
    "exe", "scr", "com", "pif", "bat", "cmd", "js", "jse", "vbs", "vbe", "wsf", "wsh", "hta", "lnk", "ps1", "psm1",
    "jar", "msi", "dll", "cpl", "reg", "url", "iso", "img", "vhd", "vhdx", "one", "xll", "docm", "xlsm", "pptm",
    "dotm", "xlam", "sh", "apk", "app", "dmg", "pkg", "chm", "library-ms", "search-ms", "appx", "msix",
})


def _describe_shape(facts: PdfFacts) -> str:
    text = "" if facts.words is None else f", {facts.words} words"
    images = f", {facts.images} image(s)" if facts.images else ""
    return f"{facts.pages} page(s){text}{images}"


#: link rewriters of mail security gateways (visible text != target host, harmlessly: "Print to PDF" of a mail)
REDIRECTORS = ("safelinks.protection.outlook.com", "urldefense.com", "urldefense.proofpoint.com", "mimecast.com",
               "mimecastprotect.com", "cudasvc.com")
COMMON_TLDS = frozenset({"com", "net", "org", "edu", "gov", "info", "biz", "io"})
_DOMAIN_IN_TEXT = re.compile(r"(?i)\b(?:https?://)?((?:[a-z0-9](?:[a-z0-9-]{0,62}[a-z0-9])?\.){1,8}[a-z]{2,24})\b")


def _host(url: str) -> str:
    try:
        return (urllib.parse.urlsplit(url).hostname or "").rstrip(".")
    except ValueError:
        return ""


def _shows_target(text: str, url: str) -> bool:
    """Whether a link's visible text names where it goes (its registrable domain)."""
    host = _host(url)
    if not text or not host:
        return False
    return urlrisk.registrable_domain(host) in text.lower()


def _shown_domain(text: str) -> str:
    """The domain a link's text shows: a URL, a ``www.`` name, or a whole text like ``paypal.com`` ("" when none)."""
    text = text.strip()[:300]
    for m in _DOMAIN_IN_TEXT.finditer(text):
        dom = m.group(1).lower()
        written = m.group(0).lower()
        whole = m.group(0) == text.rstrip("/") and dom.rsplit(".", 1)[-1] in COMMON_TLDS
        if (written.startswith(("http://", "https://", "www.")) or whole) and urlrisk.known_suffix(dom):
            return dom
    return ""


def _deceptive(facts: PdfFacts) -> Finding | None:
    """A link whose text shows one domain and whose target is another (``pdf_deceptive_link``)."""
    for link in facts.links:
        if not link.text:
            continue
        shown = _shown_domain(link.text)
        host = _host(link.url)
        if not shown or not host:
            continue
        target = urlrisk.registrable_domain(host)
        if target == urlrisk.registrable_domain(shown) or any(host == r or host.endswith("." + r) for r in REDIRECTORS):
            continue
        return Finding("pdf_deceptive_link", 5, f"link text shows {clip(shown, 80)} but goes to {clip(link.url, 120)} "
                                                f"(page {link.page})", SOURCE)
    return None


def _lure(facts: PdfFacts, targets: list[str], risk: urlrisk.UrlRisk | None) -> Finding | None:
    """``pdf_link_lure`` when the document is a short carrier for one prominent link (see the module doc)."""
    if not 1 <= len(targets) <= LURE_MAX_TARGETS or facts.pages < 1:
        return None
    if facts.pages > LURE_MAX_PAGES:
        # a long text behind a big link on its first page: the "captcha"/"play" image of SEO spam PDFs
        first = [link for link in facts.links if link.page == 1 and link.area >= PROMINENT_AREA]
        if facts.pages > LURE_MAX_PAGES_COVER or not first:
            return None
        return Finding("pdf_link_lure", 5, f"{_describe_shape(facts)}, {len(targets)} link target(s): the first page's "
                                           f"link covers {min(first[0].area, 1.0):.0%} of it; top link "
                                           f"{clip(first[0].url, 120)}", SOURCE)
    area: dict[str, float] = {}
    for link in facts.links:
        area[link.url] = area.get(link.url, 0.0) + link.area
    top = max(area, key=lambda u: area[u]) if area else targets[0]
    why: list[str] = []
    if area and area[top] >= PROMINENT_AREA:
        why.append(f"the link covers {min(area[top], 1.0):.0%} of its page")
    hidden = [(link.url, f"{link.text!r}" if link.text else "an image or a drawn button")
              for link in facts.links if link.text is not None and not _shows_target(link.text, link.url)]
    annotated = {link.url for link in facts.links}
    hidden += [(u, "a button running an action") for a in facts.actions if a.trigger == "click"
               for u in ((a.target,) if a.kind == "URI" and a.target else a.urls) if u not in annotated]
    hidden += [(u, "a QR code") for u in facts.qr_urls if u not in annotated]
    limit = LURE_MAX_WORDS_ONE_PAGE if facts.pages == 1 else LURE_MAX_WORDS
    cta = [(u, shown) for u, shown in hidden if urlrisk.is_call_to_action(shown)]
    if facts.pages <= LURE_TEXT_PAGES and facts.words is not None and hidden and facts.words <= limit:
        why.append(f"little text besides a link shown as {clip(hidden[0][1], 60)}")
        top = hidden[0][0] if top not in {u for u, _ in hidden} else top
    elif facts.pages <= LURE_TEXT_PAGES and facts.words is not None and cta and facts.words <= LURE_MAX_WORDS_CTA:
        why.append(f"a call to action hiding its address: {clip(cta[0][1], 60)}")
        top = cta[0][0]
    risky = risk is not None and risk.severity >= 4
    if risky:
        why.append(f"the link looks like phishing ({risk.describe()})")
    if not why:
        return None
    sev = 6 if risky and len(why) >= 2 else 5
    return Finding("pdf_link_lure", sev, f"{_describe_shape(facts)}, {len(targets)} link target(s): "
                                         f"{'; '.join(why)}; top link {clip(top, 120)}", SOURCE)


#: callback phishing ("telephone-oriented attack delivery"): a fake invoice or renewal whose only call to action
#: is a phone number; brands whose names these campaigns use, billing words, action words, a phone number
CALLBACK_BRANDS = re.compile(
    r"(?i)\b(norton|mcafee|geek ?squad|best ?buy|paypal|pay ?pal|bitdefender|avast|kaspersky|malwarebytes|lifelock|"
    r"windows defender|microsoft|amazon|apple|coinbase|ebay|netflix|hulu|spotify|zelle|venmo|cash ?app|quickbooks|"
    r"webroot|totalav|avg|intuit)\b")
CALLBACK_BILLING = re.compile(r"(?i)\b(subscription|renew(?:al|ed)?|auto[- ]?renew|charged|debited|deducted|"
                              r"membership|invoice|order (?:id|number|no)|billing|purchase|payment)\b")
CALLBACK_ACTION = re.compile(r"(?i)\b(cancel|refund|dispute|unauthori[sz]ed|fraudulent|did not (?:authori[sz]e|make|place)|"
                             r"not (?:you|authori[sz]ed by you))")
PHONE = re.compile(r"(?<![\w.])(?:\+?1[\s.-]*)?\(?[2-9]\d{2}\)?[\s.-]*\d{3}[\s.-]*\d{4}(?![\w.])"
                   r"|(?<![\w.])\+\d{1,3}[\s.-]*\(?\d{2,4}\)?(?:[\s.-]*\d{2,4}){2,4}(?![\w.])")


def _callback(facts: PdfFacts, targets: list[str]) -> Finding | None:
    """``pdf_callback_lure``: a short document with a brand, billing words, a dispute call and a phone number."""
    if not facts.text or facts.pages > LURE_TEXT_PAGES or len(targets) > LURE_MAX_TARGETS:
        return None
    text = facts.text
    brand, billing, action, phone = (rx.search(text) for rx in (CALLBACK_BRANDS, CALLBACK_BILLING, CALLBACK_ACTION, PHONE))
    if not (brand and billing and action and phone):
        return None
    return Finding("pdf_callback_lure", 5, f"{_describe_shape(facts)}: {brand.group(0)} {billing.group(0)} with "
                                           f"'{action.group(0)}' and a phone number {clip(phone.group(0), 30)} "
                                           "(callback phishing)", SOURCE)


def _launch_severity(target: str) -> int:
    """8 for a program, a script, a remote file or anything with parameters; 3 for a local document
    opened by its own viewer."""
    words = target.split()
    remote = re.match(r"(?i)^\s*(\\\\|//|[a-z][a-z0-9+.-]{1,31}://)", target) is not None
    if len(words) == 1 and extension(words[0]) in DOCUMENT_EXTENSIONS and not remote:
        return 3
    return 8


def structure_findings(facts: PdfFacts) -> list[Finding]:
    """Findings from the document's structure (pages, links, actions, forms, embedded files)."""
    out: list[Finding] = []
    if facts.errors and not facts.pages:
        out.append(Finding("pdf_malformed", 2, f"pypdf: {facts.errors[0]}", SOURCE))
    if facts.rebuilt:
        out.append(Finding("pdf_xref_rebuilt", 2, f"no usable cross-reference table ({facts.rebuilt}); objects "
                                                  "found by scanning, as readers do", SOURCE))
    if facts.partial:
        out.append(Finding("pdf_partial_scan", 1, "; ".join(facts.partial)[:300], SOURCE))
    targets = facts.urls()
    risk = urlrisk.worst(targets)
    if risk is not None and risk.severity >= 3:
        out.append(Finding("pdf_suspicious_link", risk.severity, f"{clip(risk.url, 160)}: {risk.describe()}", SOURCE))
    for extra in (_lure(facts, targets, risk), _deceptive(facts), _callback(facts, targets)):
        if extra is not None:
            out.append(extra)
    remote_submit = ""
    for a in facts.actions:
        auto = a.trigger in ("open", "auto")
        if a.kind == "JavaScript":
            if auto:
                out.append(Finding("pdf_auto_javascript", 8, f"JavaScript run on {a.trigger}: {clip(a.target, 120)}", SOURCE))
            else:
                out.append(Finding("pdf_javascript", 6, f"JavaScript ({a.trigger}): {clip(a.target, 120)}", SOURCE))
        elif a.kind == "Launch":
            out.append(Finding("pdf_launch", _launch_severity(a.target),
                               f"/Launch ({a.trigger}) starts {clip(a.target, 120) or 'a program'}", SOURCE))
        elif a.kind == "URI" and auto and a.target:
            out.append(Finding("pdf_uri_on_open", 5, f"opens {clip(a.target, 160)} by itself ({a.trigger})", SOURCE))
        elif a.kind == "SubmitForm" and re.match(r"(?i)^(https?|ftp)://", a.target):
            remote_submit = a.target
            out.append(Finding("pdf_submit_form", 4, f"form data sent to {clip(a.target, 160)}", SOURCE))
        elif a.kind in ("GoToR", "GoToE", "ImportData", "Thread") and (a.kind != "Thread" or a.target):
            target_risk = urlrisk.assess(a.target) if a.target else None
            sev = 6 if target_risk is not None and "unc-or-file" in target_risk.reasons else 4
            out.append(Finding("pdf_remote_goto", sev, f"/{a.kind} to {clip(a.target, 160) or '(no file)'}", SOURCE))
    if facts.remote_refs:
        unc = any("unc-or-file" in urlrisk.assess(r).reasons for r in facts.remote_refs)
        out.append(Finding("pdf_remote_resource", 6 if unc else 4,
                           f"a page loads content from elsewhere when shown: {clip(facts.remote_refs[0], 160)}"
                           + (" (SMB: leaks the reader's NTLM hash)" if unc else ""), SOURCE))
    if facts.qr_urls:
        out.append(Finding("pdf_qr_link", 3, f"QR code(s) with a link (read on a phone, out of the mail filter's "
                                             f"sight): {clip(facts.qr_urls[0], 160)}", SOURCE))
    if facts.bad_font_matrix:
        out.append(Finding("pdf_font_matrix_injection", 7, f"font matrix with non-numbers (CVE-2024-4367, code run "
                                                           f"by PDF.js): {clip(facts.bad_font_matrix[0], 160)}", SOURCE))
    if facts.password_fields:
        sev = 6 if remote_submit else 5
        where = f", submitted to {clip(remote_submit, 120)}" if remote_submit else ""
        out.append(Finding("pdf_password_form", sev, f"{facts.password_fields} password field(s) among {facts.fields} "
                                                     f"form field(s){where}", SOURCE))
    bad = [n for n in facts.embedded if extension(n) in EXECUTABLE_EXTENSIONS]
    if bad:
        out.append(Finding("pdf_embedded_executable", 7, f"embedded {', '.join(clip(n, 60) for n in bad[:5])}", SOURCE))
    elif facts.embedded:
        out.append(Finding("pdf_embedded_file", 4, f"embedded file(s): {', '.join(clip(n, 60) for n in facts.embedded[:5])}",
                           SOURCE))
    return out


def _complete(facts: PdfFacts) -> bool:
    return facts.pages > 0 and not facts.partial and not facts.errors


def analyze(artifact: Artifact, data_path: str, ctx: Context) -> list[Finding]:
    data = ctx.data
    findings: list[Finding] = []
    if len(data) <= PDFID_MAX_BYTES:
        try:
            counts = pdfid_counts(data, artifact.name)
        except ValueError as exc:  # pdfid's own parse error: count names ourselves
            findings.append(Finding("pdf_malformed", 2, str(exc).splitlines()[0][:200], SOURCE))
            counts = count_names(data)
    else:
        counts = count_names(data)
    start = data.find(b"%PDF")
    if start > 0:
        findings.append(Finding("pdf_header_offset", 3, f"PDF header at offset {start} (polyglot?)", SOURCE))
    facts = read_facts(data)
    counted = count_findings(counts)
    launches = sum(1 for a in facts.actions if a.kind == "Launch")
    if _complete(facts) and launches and launches >= counts.get("/Launch", (0, 0))[0]:
        # the structure accounts for every /Launch name: its per-target severity replaces the count's
        counted = [f for f in counted if f.id != "pdf_launch"]
    return findings + counted + structure_findings(facts)


__all__ = ["analyze", "count_findings", "count_names", "link_urls", "pdfid_counts", "structure_findings"]
