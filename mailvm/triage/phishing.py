"""Message-level phishing signs: who a message claims to be against where it comes from and where it leads.

The per-file analyzers see one artifact at a time; a credential-phishing mail is
often harmless file by file (a short text, a link, a small HTML form) and only
its parts together betray it.  :func:`message_findings` looks at the message as
a whole (:class:`MessageView`: From, Reply-To, Subject, text, HTML, attachment
names) for these signs:

* **brand claim** (:func:`brand_claim`): the From display name *is* a well-known
  brand ("PayPal", "Apple Support", "Microsoft account team": the brand and
  only service words such as support/security/team), or the Subject names one;
* **foreign sender**: the brand claimed in the display name while the sender's
  registrable domain (or the Reply-To's) is not one the brand owns
  (:data:`mailvm.triage.urlrisk.BRANDS`, the one brand table of mailvm);
* **foreign links**: the brand claimed while the links go only to other domains;
* **lure language** (:data:`LURE_PHRASES` here and
  :data:`mailvm.triage.body.LURE_PHRASES`): account limited/suspended, verify
  or update your information, in English, German, French, Spanish, Italian,
  Dutch and Portuguese, read after look-alike letters are undone;
* **look-alike letters** (:func:`mixed_script_words`): words that mix Latin with
  Cyrillic or Greek letters that look the same ("Yοur аccount"), a way past
  word filters that ordinary mail in any language does not use;
* **deceptive anchors** (:func:`mailvm.triage.body.deceptive_anchor`) and an
  **attached web page** (``.html``/``.htm``... a local form needs no link);
* **script in the HTML body**: mail readers never run it, phishing kits leave it.

Each sign alone is common enough in honest mail (a colleague called Chase, a
newsletter naming Apple, a bank saying "verify") to stay informational; the
severity comes from their sum (:func:`impersonation_severity`): a brand claim
from a foreign domain with lure language reaches suspicious, with two more
signs malicious.  Bounded: at most :data:`MAX_TEXT` characters of text and HTML
and :data:`MAX_LINKS` links are read.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, field
from email.utils import getaddresses
from typing import Any, Callable, Iterable

from mailvm.triage import body, urlrisk
from mailvm.triage.base import clip, extension
from mailvm.verdict import Finding

SOURCE = "triage:message"
MAX_TEXT = 256 * 1024
MAX_LINKS = 300
MAX_WORDS = 20000

#: how a brand is written in display names and subjects -> its key in :data:`urlrisk.BRANDS`
BRAND_NAMES: dict[str, str] = {
    "paypal": "paypal", "apple": "apple", "apple id": "apple", "icloud": "icloud", "itunes": "apple",
    "microsoft": "microsoft", "office 365": "office365", "office365": "office365", "microsoft 365": "microsoft",
    "outlook": "outlook", "onedrive": "onedrive", "sharepoint": "sharepoint", "docusign": "docusign",
    "adobe": "adobe", "dropbox": "dropbox", "wetransfer": "wetransfer", "amazon": "amazon", "netflix": "netflix",
    "google": "google", "gmail": "gmail", "facebook": "facebook", "instagram": "instagram", "linkedin": "linkedin",
    "dhl": "dhl", "fedex": "fedex", "usps": "usps", "ups": "ups", "wells fargo": "wellsfargo",
    "chase": "chase", "bank of america": "bankofamerica", "citibank": "citibank", "hsbc": "hsbc",
    "coinbase": "coinbase", "binance": "binance", "metamask": "metamask", "steam": "steam", "roblox": "roblox",
}

#: words that may stand beside a brand in a display name that claims to be the brand itself
SERVICE_WORDS = frozenset({
    "support", "security", "service", "services", "team", "account", "accounts", "billing", "customer", "customers",
    "care", "help", "center", "centre", "helpdesk", "desk", "notification", "notifications", "notice", "alert",
    "alerts", "no", "reply", "noreply", "do", "not", "online", "id", "inc", "ltd", "llc", "corp", "corporation",
    "official", "verification", "verify", "update", "updates", "info", "information", "mail", "email", "the",
    "department", "dept", "resolution", "safety", "protection", "assistance", "member", "members", "payments",
    "payment", "store", "express", "bank", "banking", "secure", "admin", "administrator", "system", "server",
    "mailbox", "webmail", "storage", "drive", "cloud", "login", "signin", "identity", "privacy", "fraud", "claims",
    "delivery", "shipping", "parcel", "tracking", "and", "contact",
    # a brand written as its web address ("Amazon.com", "PayPal.de")
    "com", "net", "org", "co", "uk", "de", "fr", "es", "it", "nl", "ca", "au",
    # the same in a few other languages
    "kundenservice", "kundendienst", "sicherheit", "konto", "kundenkonto", "client", "clients", "clientele",
    "compte", "securite", "servicio", "cliente", "clientes", "soporte", "seguridad", "cuenta", "assistenza",
    "sicurezza", "klantenservice", "beveiliging", "conta", "suporte", "seguranca",
})

#: account-takeover lures in several languages (lower-case, after :func:`skeleton`)
LURE_PHRASES = re.compile(
    r"account\s+(?:has|have|had|is|was)\s+(?:been\s+)?(?:limited|suspended|locked|restricted|disabled|blocked|on\s+hold)"
    r"|(?:update|confirm|verify|review|restore)\s+(?:your|the)\s+(?:records|account\s+information|information|"
    r"billing\s+information|details|account\s+details)"
    r"|(?:outdated|out-?dated|missing|invalid|incomplete)\s+(?:or\s+(?:missing|invalid|outdated)\s+)?"
    r"(?:account\s+)?(?:information|records|details)"
    r"|(?:limited|restricted)\s+access\s+to\s+your\s+account|access\s+limitation"
    r"|konto\s+(?:wurde\s+|ist\s+)?(?:vor[üu]bergehend\s+)?(?:gesperrt|eingeschr[äa]nkt|deaktiviert)"
    r"|(?:best[äa]tigen|verifizieren|aktualisieren)\s+sie\s+(?:ihr|ihre)"
    r"|votre\s+compte\s+(?:a\s+[ée]t[ée]\s+|est\s+)?(?:suspendu|bloqu[ée]|limit[ée]|restreint|d[ée]sactiv[ée])"
    r"|(?:v[ée]rifi|confirm|mett)(?:er|ez)\s+(?:vos|votre)\s+(?:informations|identit[ée]|compte|donn[ée]es)"
    r"|su\s+cuenta\s+(?:ha\s+sido\s+|est[áa]\s+)?(?:suspendida|bloqueada|limitada|restringida|desactivada)"
    r"|(?:verifique|confirme|actualice)\s+(?:su|sus)\s+(?:cuenta|informaci[óo]n|datos|identidad)"
    r"|(?:il\s+tuo|il\s+suo)\s+(?:account|conto)\s+(?:[èe]\s+stato\s+)?(?:sospeso|limitato|bloccato)"
    r"|(?:uw|je)\s+(?:account|rekening)\s+(?:is\s+)?(?:geblokkeerd|beperkt|opgeschort)"
    r"|sua\s+conta\s+(?:foi\s+)?(?:suspensa|bloqueada|limitada)",
    re.I,
)

#: Cyrillic and Greek letters drawn like Latin ones -> the Latin letter (the common confusables)
CONFUSABLES: dict[str, str] = {
    # Cyrillic lower and upper case
    "а": "a", "в": "b", "е": "e", "о": "o", "р": "p", "с": "c", "у": "y", "х": "x", "і": "i", "ј": "j", "ѕ": "s",
    "һ": "h", "ԁ": "d", "ԝ": "w", "ӏ": "l", "г": "r", "к": "k", "п": "n", "ь": "b", "ү": "y", "ԛ": "q",
    "А": "A", "В": "B", "Е": "E", "К": "K", "М": "M", "Н": "H", "О": "O", "Р": "P", "С": "C", "Т": "T", "У": "Y",
    "Х": "X", "І": "I", "Ј": "J", "Ѕ": "S", "Ь": "b", "Ԝ": "W", "Ү": "Y", "Ԁ": "D",
    # Greek lower and upper case
    "α": "a", "ο": "o", "ρ": "p", "υ": "u", "ν": "v", "κ": "k", "ι": "i", "τ": "t", "ϲ": "c", "ϳ": "j",
    "Α": "A", "Β": "B", "Ε": "E", "Ζ": "Z", "Η": "H", "Ι": "I", "Κ": "K", "Μ": "M", "Ν": "N", "Ο": "O",
    "Ρ": "P", "Τ": "T", "Υ": "Y", "Χ": "X", "Ϲ": "C",
    # Latin letters from other blocks that stand in for plain ones
    "ɡ": "g", "ɩ": "i", "ı": "i", "ɑ": "a", "ℓ": "l",
}
_CONFUSABLE_TABLE = str.maketrans(CONFUSABLES)
_WORD = re.compile(r"[^\W\d_]{2,40}")
_ASCII_LETTER = re.compile(r"[A-Za-z]")
#: attachment extensions a browser opens as a page
PAGE_EXTENSIONS = frozenset({"html", "htm", "shtml", "xhtml", "mht", "mhtml", "svg", "xht"})
_SCRIPT_TAG = re.compile(r"<script\b([^>]{0,300})>", re.I)
_NON_JS_TYPE = re.compile(r"""type\s*=\s*["']?(?:application/(?:ld\+)?json|text/template|text/x-template)""", re.I)
_TITLE = re.compile(r"<title[^>]{0,200}>([^<]{1,300})", re.I)
_URL_SCHEME = re.compile(r"^https?://", re.I)


@dataclass(frozen=True)
class MessageView:
    """What :func:`message_findings` reads of one message (all hostile, already bounded by extraction)."""

    sender: str = ""  # the From header (decoded)
    reply_to: str = ""
    subject: str = ""
    text: str = ""  # every visible text of the message (extraction adds the HTML's); the HTML's when empty
    html: str = ""
    attachment_names: tuple[str, ...] = field(default_factory=tuple)

    @classmethod
    def from_headers(cls, headers: dict[str, str], text: str, html: str, names: Iterable[str]) -> "MessageView":
        low = {k.lower(): v for k, v in headers.items()}
        return cls(low.get("from", ""), low.get("reply-to", ""), low.get("subject", ""), text[:MAX_TEXT],
                   html[:MAX_TEXT], tuple(names)[:100])


@dataclass(frozen=True)
class Claim:
    """A brand the message says it comes from (``where``: ``display name`` or ``subject``)."""

    brand: str
    where: str
    shown: str


def skeleton(text: str) -> str:
    """``text`` with Cyrillic/Greek look-alike letters replaced by the Latin ones they imitate."""
    return text.translate(_CONFUSABLE_TABLE)


#: any look-alike letter at all (the fast first test of mixed_script_words)
_CONFUSABLE_ANY = re.compile("[" + re.escape("".join(CONFUSABLES)) + "]")


def mixed_script_words(text: str, limit: int = MAX_WORDS) -> list[str]:
    """Words that mix Latin letters with Cyrillic/Greek look-alikes ("Yοur", "аccount"); bounded."""
    out: list[str] = []
    text = text[:MAX_TEXT]
    if not _CONFUSABLE_ANY.search(text):
        return out  # one C-speed scan answers for nearly all mail: no look-alike letter at all
    for i, m in enumerate(_WORD.finditer(text)):
        if i >= limit:
            break
        w = m.group(0)
        if not _ASCII_LETTER.search(w):
            continue
        if any(ch in CONFUSABLES for ch in w):
            out.append(w)
    return out


def _address(value: str) -> tuple[str, str]:
    """(display name, address) of the first address in a From/Reply-To value; never raises."""
    try:
        pairs = getaddresses([value[:998]])
    except Exception:  # hostile header text: read nothing from it
        return "", ""
    for name, addr in pairs:
        if name or addr:
            return name.strip(), addr.strip().lower()
    return "", ""


def _domain(addr: str) -> str:
    if "@" not in addr:
        return ""
    host = addr.rsplit("@", 1)[1].strip(" .>[]")
    return urlrisk.registrable_domain(host) if host else ""


def owns(brand: str, domain: str) -> bool:
    """Whether ``domain`` (a registrable domain) is one of ``brand``'s (:data:`urlrisk.BRANDS`)."""
    if not domain:
        return False
    label = domain.split(".", 1)[0]
    return label == brand or label in urlrisk.BRANDS.get(brand, frozenset())


def _brands_in(words: list[str]) -> list[tuple[str, int, int]]:
    """(brand key, first word, word count) of every brand name in a word list (longest names first)."""
    found = []
    i = 0
    names = sorted(BRAND_NAMES, key=lambda n: -len(n.split()))
    while i < len(words):
        for name in names:
            parts = name.split()
            if words[i : i + len(parts)] == parts:
                found.append((BRAND_NAMES[name], i, len(parts)))
                i += len(parts) - 1
                break
        i += 1
    return found


def _words(text: str, limit: int) -> list[str]:
    """Lower-case words of a display name or subject, look-alike letters and accents undone."""
    flat = unicodedata.normalize("NFKD", skeleton(text[:998]))
    flat = "".join(ch for ch in flat if not unicodedata.combining(ch)).lower()
    return re.findall(r"[a-z0-9]+", flat)[:limit]


def brand_claim(display: str, subject: str) -> Claim | None:
    """The brand a message claims to be: a display name made of a brand and service words only, else a
    brand named in the Subject (a weaker claim: a news mail names brands too)."""
    words = _words(display, 12)
    hits = _brands_in(words)
    if hits and len(words) <= 6:
        brand, start, n = hits[0]
        rest = words[:start] + words[start + n :]
        if all(w in SERVICE_WORDS or w in BRAND_NAMES for w in rest):
            return Claim(brand, "display name", clip(display, 60))
    swords = _words(subject, 40)
    shits = _brands_in(swords)
    if shits:
        return Claim(shits[0][0], "subject", clip(subject, 60))
    return None


def _links(html: str, text: str) -> tuple[list[str], list[tuple[str, str]]]:
    """(web link targets, (href, text) anchors) of the message's bodies, bounded."""
    anchors = body.anchors(html[:MAX_TEXT])[:MAX_LINKS] if html else []
    urls = [h for h, _ in anchors if _URL_SCHEME.match(h)]
    urls += [m.group(0) for m in body._TEXT_URL.finditer(text[:MAX_TEXT]) if _URL_SCHEME.match(m.group(0))]
    return urls[:MAX_LINKS], anchors


def _link_domain(url: str) -> str:
    host = urlrisk.assess(url).host
    return urlrisk.registrable_domain(host) if host else ""


def _scripts(html: str) -> int:
    return sum(1 for m in _SCRIPT_TAG.finditer(html[:MAX_TEXT]) if not _NON_JS_TYPE.search(m.group(1)))


def impersonation_severity(claim: Claim, lure: bool, signs: int) -> int:
    """The severity of a brand claim from a domain the brand does not own, and what goes with it.

    A display-name claim is 3, a Subject or page-title claim 1 (news and discussions name brands);
    lure language adds 2 and each other sign 1 (:func:`message_findings`); at most 7."""
    sev = 3 if claim.where == "display name" else 1
    if lure:
        sev += 2
    return max(0, min(7, sev + signs))


def lure_phrases(text: str) -> list[str]:
    """The lure phrases of ``text`` read through its look-alike letters, normalised and sorted."""
    readable = skeleton(text)
    return sorted({" ".join(m.group(0).lower().split())
                   for pat in (LURE_PHRASES, body.LURE_PHRASES) for m in pat.finditer(readable)})


class _Lazy:
    """A value computed on first use (the lure-phrase scan costs about as much as the rest of the
    message checks together, and only a look-alike or brand-claim message needs it)."""

    def __init__(self, compute: Callable[[], Any]) -> None:
        self._compute: Callable[[], Any] | None = compute
        self._value: Any = None

    @property
    def value(self) -> Any:
        if self._compute is not None:
            self._value, self._compute = self._compute(), None
        return self._value


def message_findings(view: MessageView) -> list[Finding]:
    """The message-level phishing findings of one message (see the module docstring)."""
    out: list[Finding] = []
    display, addr = _address(view.sender)
    sender_domain = _domain(addr)
    _, reply_addr = _address(view.reply_to)
    reply_domain = _domain(reply_addr)
    text = view.text[:MAX_TEXT] or (body._visible(view.html[:MAX_TEXT]) if view.html else "")
    title = _TITLE.search(view.html[:MAX_TEXT]) if view.html else None

    mixed = mixed_script_words(f"{view.subject} {text}")
    phrases = _Lazy(lambda: lure_phrases(f"{view.subject} {text}"))
    scripts = _scripts(view.html) if view.html else 0
    if len(mixed) >= 3:
        sev = 3 if len(mixed) >= 5 else 2
        if phrases.value and len(mixed) >= 5:
            sev = 5
        out.append(Finding("msg_lookalike_letters", sev,
                           f"{len(mixed)} words mix Latin with Cyrillic/Greek look-alike letters: "
                           f"{', '.join(clip(w, 20) for w in mixed[:4])}"
                           + (f"; reads {phrases.value[0]!r}" if phrases.value else ""), SOURCE))
    if scripts:
        out.append(Finding("msg_body_script", 2, f"the HTML body carries {scripts} script(s); mail readers never "
                                                 "run them", SOURCE))

    claim = brand_claim(display, view.subject)
    if claim is None and title is not None:
        claim = brand_claim("", title.group(1))
        if claim is not None:
            claim = Claim(claim.brand, "HTML title", claim.shown)
    if claim is None or not sender_domain or owns(claim.brand, sender_domain):
        return out  # no claim, or the brand's own domain (a forged one is SPF/DKIM/DMARC's to judge)
    display_claim = claim.where == "display name"
    if not display_claim and not phrases.value:
        return out  # a brand named in a subject or a title: only with a lure is it a claim
    urls, anchors = _links(view.html, view.text)
    link_domains = {d for d in (_link_domain(u) for u in urls) if d}
    foreign_links = sorted(d for d in link_domains if not owns(claim.brand, d))
    own_links = [d for d in link_domains if owns(claim.brand, d)]
    deceptive = [(t, h) for h, t in anchors if body.deceptive_anchor(h, t)]
    pages = [n for n in view.attachment_names if extension(n) in PAGE_EXTENSIONS]
    signs: list[str] = []
    if display_claim and reply_domain and reply_domain != sender_domain and not owns(claim.brand, reply_domain):
        signs.append(f"Reply-To at {reply_domain}")
    if display_claim and foreign_links and not own_links:
        signs.append(f"links only to {', '.join(foreign_links[:3])}")
    if len(mixed) >= 3:
        signs.append("look-alike letters")
    if deceptive:
        signs.append(f"link text shows {clip(deceptive[0][0], 40)} but goes to {clip(deceptive[0][1], 60)}")
    if pages:
        signs.append(f"attached page {clip(pages[0], 40)}")
    if scripts:
        signs.append("script in the HTML body")
    sev = impersonation_severity(claim, bool(phrases.value), len(signs))
    detail = f"{claim.where} {claim.shown!r} claims {claim.brand}, sent from {sender_domain}"
    if phrases.value:
        detail += f"; asks to {phrases.value[0]!r}"
    if signs:
        detail += "; " + "; ".join(signs)
    out.append(Finding("msg_brand_impersonation", sev, detail, SOURCE))
    return out


__all__ = ["BRAND_NAMES", "Claim", "LURE_PHRASES", "MessageView", "brand_claim", "impersonation_severity",
           "message_findings", "mixed_script_words", "owns", "skeleton"]
