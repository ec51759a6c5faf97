"""How much a link in a document looks like a credential-phishing or payload link.

Used by the document analyzers (PDF, shortcuts, SVG, Apple profiles) on the
URLs they find.  :func:`assess` looks only at the URL's text (no network, no
DNS) and returns a :class:`UrlRisk`: a severity 0-6 and the reasons behind it.

Reasons and their weights (the severity is the highest weight, plus one when
two or more reasons of weight >= 3 agree, at most 6: a URL's look alone is
never conclusive):

=================  ======  ===================================================
reason             weight  what
=================  ======  ===================================================
script-uri           6     ``javascript:`` / ``vbscript:``
data-uri             6     ``data:`` (a whole page or file inside the link)
unc-or-file          6     ``file:`` to another host, ``\\\\host\\share`` (SMB/WebDAV: leaks
                           the Windows credentials, runs remote files)
protocol-handler     6     ``search-ms:``, ``ms-msdt:``, ``ms-officecmd:``... (Windows handlers)
userinfo             5     ``https://bank.com@evil.example/``: what precedes ``@`` is not the host
numeric-host         5     the host written as one number, in hex or octal (``http://3232235777``)
lookalike            5     a brand name in the host on a domain the brand does not own
ip-host              4     an IP address instead of a host name
payload-path         4     the path ends in an executable, script, disk image or archive
punycode             3     an internationalised (``xn--``) host: look-alike letters
email-in-url         3     the path, query or fragment carries an e-mail address, plain or base64
                           (a page pre-filled for one recipient: ``#dmljdGltQGNvcnAuZXhhbXBsZQ==``)
redirector           3     the URL carries another URL to go to (``?url=https://...``,
                           ``google.com/url?q=``, ``/amp/s/``): open redirects hide the target
shared-hosting       3     a user's site on a shared platform (web.app, github.io, pages.dev...,
                           the Public Suffix List's private section and a short list of others)
shortener            2     a URL shortener hides the real target
risky-tld            2     a top-level domain mostly seen in abuse reports
odd-port             2     an explicit port other than 80/443/8080/8443
credential-words     1     login/verify/account/password... in host or path (only adds
                           to other reasons)
=================  ======  ===================================================

The Public Suffix List comes from the ``publicsuffixlist`` package (it ships
the list; nothing is fetched at run time).
"""

from __future__ import annotations

import base64
import functools
import ipaddress
import re
import urllib.parse
from dataclasses import dataclass

from publicsuffixlist import PublicSuffixList

MAX_URL_CHARS = 4096
MAX_SEVERITY = 6

WEIGHTS: dict[str, int] = {
    "script-uri": 6,
    "data-uri": 6,
    "unc-or-file": 6,
    "protocol-handler": 6,
    "userinfo": 5,
    "numeric-host": 5,
    "lookalike": 5,
    "ip-host": 4,
    "payload-path": 4,
    "punycode": 3,
    "redirector": 3,
    "email-in-url": 3,
    "shared-hosting": 3,
    "shortener": 2,
    "risky-tld": 2,
    "odd-port": 2,
    "credential-words": 1,
}

SHORTENERS = frozenset({
    "bit.ly", "bitly.com", "tinyurl.com", "t.co", "goo.gl", "ow.ly", "is.gd", "v.gd", "buff.ly", "rebrand.ly",
    "cutt.ly", "shorturl.at", "rb.gy", "t.ly", "tiny.cc", "s.id", "bit.do", "lnkd.in", "qrco.de", "x.co", "u.to",
    "clck.ru", "tr.ee", "bl.ink", "shorte.st", "adf.ly", "soo.gd", "urlz.fr", "1url.com", "t2m.io", "tiny.one",
    "shrtco.de", "short.gy", "y2u.be", "surl.li", "gg.gg", "did.li", "linktr.ee", "tinu.be", "rotf.lol",
})

#: registrable domains where anyone publishes pages that the Public Suffix List does not list
SHARED_HOSTS = frozenset({
    "000webhostapp.com", "weebly.com", "godaddysites.com", "jimdosite.com", "mystrikingly.com", "yolasite.com",
    "wixstudio.io", "glitch.me", "ipfs.io", "dweb.link", "w3s.link", "nftstorage.link", "fleek.co", "typedream.app",
    "webwave.dev", "site123.me", "weeblysite.com", "square.site", "sites.google.com", "forms.gle", "formstack.com",
    "jotform.com", "ngrok.io", "serveo.net", "loca.lt", "firebasestorage.googleapis.com", "storage.googleapis.com",
    "backblazeb2.com", "ufs.sh", "filesusr.com", "pinata.cloud",
})

RISKY_TLDS = frozenset({
    "zip", "mov", "xyz", "top", "click", "link", "icu", "cyou", "rest", "buzz", "sbs", "cfd", "monster", "lat",
    "quest", "bond", "gq", "tk", "ml", "cf", "ga", "work", "support", "cam", "country", "kim", "men", "loan",
    "download", "stream", "gdn", "racing", "win", "bid", "review", "accountant", "date", "faith", "party", "science",
    "trade", "webcam", "cricket", "su", "pw", "live", "online", "site", "website", "space", "fun", "shop",
    "store", "beauty", "hair", "skin", "makeup", "autos", "boats", "yachts", "motorcycles", "mom", "lol", "today",
})

#: brand -> second-level labels it owns (a brand in any other registrable domain is a look-alike).
#: ``exact`` brands match a whole host token only (``apple`` must not match ``pineapple``).
BRANDS: dict[str, frozenset[str]] = {
    "microsoft": frozenset({"microsoft", "microsoftonline", "msft", "live", "office", "office365", "outlook",
                            "sharepoint", "onedrive", "windows", "azure", "bing", "skype", "msn", "hotmail",
                            "xbox", "microsoftstore", "msauth", "windowsupdate", "aka", "sway", "1drv"}),
    "office365": frozenset({"office365", "office", "microsoft"}),
    "outlook": frozenset({"outlook", "live", "office", "microsoft", "office365"}),
    "onedrive": frozenset({"onedrive", "live", "microsoft", "1drv", "sharepoint"}),
    "sharepoint": frozenset({"sharepoint", "microsoft"}),
    "docusign": frozenset({"docusign"}),
    "paypal": frozenset({"paypal", "paypalobjects", "paypal-community"}),
    "adobe": frozenset({"adobe", "adobelogin", "adobesign", "echosign", "typekit"}),
    "dropbox": frozenset({"dropbox", "dropboxusercontent", "db", "dropboxmail"}),
    "wetransfer": frozenset({"wetransfer", "we"}),
    "apple": frozenset({"apple", "icloud", "me", "mzstatic", "itunes"}),
    "icloud": frozenset({"icloud", "apple"}),
    "amazon": frozenset({"amazon", "amazonaws", "aws", "media-amazon", "ssl-images-amazon", "amazontrust"}),
    "netflix": frozenset({"netflix", "nflxext", "nflximg", "nflxvideo"}),
    "google": frozenset({"google", "googleapis", "gstatic", "googleusercontent", "gmail", "youtube", "goo", "g"}),
    "gmail": frozenset({"gmail", "google"}),
    "facebook": frozenset({"facebook", "fb", "fbcdn", "meta", "facebookmail"}),
    "instagram": frozenset({"instagram", "cdninstagram"}),
    "linkedin": frozenset({"linkedin", "licdn", "lnkd"}),
    "dhl": frozenset({"dhl", "dhl-news", "dpdhl", "dhlparcel"}),
    "fedex": frozenset({"fedex"}),
    "usps": frozenset({"usps"}),
    "ups": frozenset({"ups"}),
    "wellsfargo": frozenset({"wellsfargo", "wf"}),
    "chase": frozenset({"chase", "jpmorgan", "jpmorganchase"}),
    "bankofamerica": frozenset({"bankofamerica", "bofa"}),
    "citibank": frozenset({"citibank", "citi"}),
    "hsbc": frozenset({"hsbc"}),
    "coinbase": frozenset({"coinbase"}),
    "binance": frozenset({"binance"}),
    "metamask": frozenset({"metamask"}),
    "steam": frozenset({"steampowered", "steamcommunity", "steamstatic", "steam"}),
    "roblox": frozenset({"roblox", "rbxcdn"}),
}
EXACT_BRANDS = frozenset({"apple", "ups", "dhl", "chase", "steam", "gmail", "usps", "hsbc", "google", "amazon",
                          "outlook", "adobe", "fedex", "icloud"})

PAYLOAD_EXTENSIONS = frozenset({
    "exe", "scr", "pif", "bat", "cmd", "js", "jse", "vbs", "vbe", "wsf", "wsh", "hta", "lnk", "iso", "img",
    "vhd", "vhdx", "msi", "msix", "appx", "appinstaller", "ps1", "jar", "one", "cpl", "dll", "reg", "url",
    "library-ms", "search-ms", "zip", "rar", "7z", "cab", "gz", "tgz", "z", "ace", "arj", "xll", "docm", "xlsm",
    "pptm", "apk", "dmg", "pkg", "sh", "mobileconfig",
})

PROTOCOL_HANDLERS = frozenset({
    "search-ms", "search", "ms-msdt", "ms-officecmd", "ms-appinstaller", "ms-word", "ms-excel", "ms-powerpoint",
    "ms-settings", "ms-cxh", "ms-cxh-full", "ms-search", "ms-excel", "mk", "its", "ms-its", "hcp", "vbscript",
    "ms-help", "mhtml", "shell", "ldap", "smb", "webdav", "dav", "davs",
})

CREDENTIAL_WORDS = re.compile(
    r"(?i)(log[-_]?in|sign[-_]?in|verif|account|passw|secur|update|unlock|validat|confirm|authenti|webmail|wallet|"
    r"recover|suspend|billing|invoice|docu[-_]?sign|sharepoint|onedrive|office365|mfa|2fa|otp)"
)
_NUMERIC_HOST = re.compile(r"^(0x[0-9a-f]+|[0-9]+)(\.(0x[0-9a-f]+|[0-9]+)){0,3}$", re.I)
#: a query parameter or path that holds another absolute URL (plain or percent-encoded)
_EMBEDDED_URL = re.compile(r"(?i)(?:[?&;][^=&#]{0,40}=|/amp/s/|/)(?:https?(?::|%3a)(?://|%2f%2f)|www\.|www%2e)")
#: redirect endpoints of large sites, abused because their own domain looks trustworthy
_REDIRECT_ENDPOINTS = re.compile(r"(?i)^(?:[a-z0-9-]+\.)*(?:google\.[a-z.]{2,6}/(?:url|amp/s/)|bing\.com/ck/a|"
                                 r"linkedin\.com/slink|l\.facebook\.com/l\.php|youtube\.com/redirect|"
                                 r"l\.instagram\.com/|t\.co/|duckduckgo\.com/l/)")
_EMAIL = re.compile(r"[A-Za-z0-9._%+-]{1,64}(?:@|%40)[A-Za-z0-9-]{1,63}(?:\.[A-Za-z0-9-]{1,63})*\.[A-Za-z]{2,24}")
_B64_RUN = re.compile(r"[A-Za-z0-9+/_-]{16,400}={0,2}")
_UNC = re.compile(r"^(\\\\|//)[^\\/]+[\\/]")


CTA_VERBS = frozenset({"click", "tap", "view", "open", "download", "access", "review", "sign", "verify", "confirm",
                       "listen", "play", "retrieve", "unlock", "validate", "proceed", "continue", "login", "signin",
                       "log in", "sign in", "e-sign", "esign"})
CTA_OBJECTS = frozenset({"here", "now", "document", "documents", "doc", "file", "files", "invoice", "invoices", "message",
                         "messages", "pdf", "attachment", "attachments", "fax", "voicemail", "statement", "order",
                         "payment", "remittance", "contract", "agreement", "proposal", "details", "account", "shared",
                         "secure", "securely", "online", "sign", "mail", "mailbox", "inbox", "quote", "quotation"})
_CTA_WORD = re.compile(r"[a-z][a-z-]*")


def is_call_to_action(text: str) -> bool:
    """A link text such as "VIEW DOCUMENT", "Click here", "Review & sign", "Download PDF", "Sign in"."""
    words = _CTA_WORD.findall(text.lower())
    if not words or len(words) > 6:
        return False
    if len(words) == 1:
        return words[0] in CTA_VERBS or words[0] in CTA_OBJECTS
    two = " ".join(words[:2])
    if two in CTA_VERBS:
        return len(words) == 2 or any(w in CTA_OBJECTS for w in words[2:])
    return words[0] in CTA_VERBS and any(w in CTA_OBJECTS for w in words[1:])


@dataclass(frozen=True)
class UrlRisk:
    """What :func:`assess` found about one URL."""

    url: str
    severity: int
    reasons: tuple[str, ...]
    host: str = ""

    def describe(self) -> str:
        return ", ".join(self.reasons) if self.reasons else "no risk indicator"


@functools.lru_cache(maxsize=1)
def _psl() -> tuple[PublicSuffixList, PublicSuffixList]:
    """(all suffixes, ICANN suffixes only): built once, on first use (~40 ms)."""
    return PublicSuffixList(), PublicSuffixList(only_icann=True)


def registrable_domain(host: str) -> str:
    """The domain a registrant owns (``evil.example.co.uk`` -> ``example.co.uk``), ICANN rules; ``host`` if none."""
    _all, icann = _psl()
    return icann.privatesuffix(host.lower().rstrip(".")) or host.lower()


def known_suffix(domain: str) -> bool:
    """Whether ``domain`` ends in a suffix the Public Suffix List knows (``file.pdf`` does not)."""
    _all, icann = _psl()
    return icann.publicsuffix(domain.lower().rstrip("."), accept_unknown=False) is not None \
        and icann.privatesuffix(domain.lower().rstrip("."), accept_unknown=False) is not None


def _shared_hosting(host: str) -> bool:
    full, icann = _psl()
    host = host.lower().rstrip(".")
    if full.publicsuffix(host) != icann.publicsuffix(host) and full.privatesuffix(host):
        return True  # a private suffix (web.app, github.io...) and a user's name under it
    return any(host == d or host.endswith("." + d) for d in SHARED_HOSTS)


def _tokens(host: str) -> list[str]:
    return [t for t in re.split(r"[^a-z0-9]+", host.lower()) if t]


#: characters a look-alike host swaps for a brand's letters (paypa1, micros0ft, rnicrosoft, vvells)
_HOMOGLYPHS = (("rn", "m"), ("vv", "w"), ("0", "o"), ("1", "l"), ("3", "e"), ("4", "a"), ("5", "s"), ("7", "t"),
               ("8", "b"), ("9", "g"), ("@", "a"))


def _deglyph(token: str) -> str:
    for a, b in _HOMOGLYPHS:
        token = token.replace(a, b)
    return token


def lookalike_brand(host: str) -> str | None:
    """The brand a host pretends to be, or ``None`` (the brand's own domains are not look-alikes).

    Tokens are compared as written and with digit and letter-pair homoglyphs undone
    (``paypa1`` is ``paypal``, ``micros0ft`` is ``microsoft``, ``rnicrosoft`` is ``microsoft``);
    an ``l``/``i`` swap is tried both ways (``paypai``).
    """
    host = host.lower().rstrip(".")
    reg = registrable_domain(host)
    sld = reg.split(".", 1)[0]
    tokens = _tokens(host)
    variants = set(tokens) | {_deglyph(t) for t in tokens} | {_deglyph(t).replace("i", "l") for t in tokens}
    for brand, owned in BRANDS.items():
        if brand in EXACT_BRANDS:
            hit = brand in variants
        else:
            hit = any(brand in t for t in variants)
        if not hit or sld in owned or sld == brand:
            continue
        return brand
    return None


def _numeric_host(host: str) -> bool:
    """A host that a browser reads as an IPv4 address although it is not dotted-quad decimal."""
    if not _NUMERIC_HOST.match(host):
        return False
    try:
        ipaddress.IPv4Address(host)
        return False  # the plain form: ip-host, not an obfuscation
    except ValueError:
        return True


def _ip_host(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
        return True
    except ValueError:
        return False


def _path_extension(path: str) -> str:
    last = urllib.parse.unquote(path).rstrip("/").rsplit("/", 1)[-1].lower()
    if "." not in last:
        return ""
    return last.rsplit(".", 1)[1][:16]


def _file_host(rest: str) -> str:
    """The remote host of a ``file:`` URL's remainder ("" for a local path).

    ``//host/x`` and ``\\\\host\\x`` name a host; ``///C:/x`` is local; four or more
    separators (``////host/x``) are a UNC path again, as Windows reads them.
    """
    n = len(rest) - len(rest.lstrip("/\\"))
    first = re.split(r"[\\/]", rest.lstrip("/\\"), 1)[0]
    if n == 2 or n >= 4:
        host = first.split("@", 1)[0].split(":", 1)[0].lower()
        if host and host not in ("localhost", "127.0.0.1", ".", "?") and not re.fullmatch(r"[a-z]:?", first.lower()):
            return host
    return ""


def _email_in(rest: str) -> bool:
    """Whether the part of a URL after its host carries an e-mail address (plain, %-encoded or base64)."""
    rest = rest[:MAX_URL_CHARS]
    if _EMAIL.search(rest):
        return True
    for m in _B64_RUN.finditer(rest):
        chunk = m.group(0).replace("-", "+").replace("_", "/")
        try:
            decoded = base64.b64decode(chunk + "=" * (-len(chunk) % 4), validate=False).decode("utf-8", "strict")
        except (ValueError, UnicodeDecodeError):
            continue
        if _EMAIL.search(decoded):
            return True
    return False


def _score(reasons: list[str]) -> int:
    if not reasons:
        return 0
    weights = [WEIGHTS[r] for r in reasons]
    sev = max(weights)
    if sum(1 for w in weights if w >= 3) >= 2:
        sev += 1
    elif sev >= 2 and "credential-words" in reasons and len(reasons) >= 2:
        sev += 1
    return min(MAX_SEVERITY, sev)


def assess(url: str) -> UrlRisk:
    """Risk of one URL (any scheme; never raises)."""
    text = (url or "").strip()[:MAX_URL_CHARS]
    reasons: list[str] = []
    if _UNC.match(text) and text.startswith("\\\\"):
        host = re.split(r"[\\/]", text[2:], 1)[0]
        return UrlRisk(text, WEIGHTS["unc-or-file"], ("unc-or-file",), host)
    m = re.match(r"^([a-zA-Z][a-zA-Z0-9+.-]{0,31}):", text)
    scheme = m.group(1).lower() if m else ""
    if scheme in ("javascript", "vbscript"):
        return UrlRisk(text, WEIGHTS["script-uri"], ("script-uri",))
    if scheme == "data":
        return UrlRisk(text, WEIGHTS["data-uri"], ("data-uri",))
    if scheme in PROTOCOL_HANDLERS:
        return UrlRisk(text, WEIGHTS["protocol-handler"], ("protocol-handler",))
    if scheme == "file":
        host = _file_host(text[5:])
        return UrlRisk(text, WEIGHTS["unc-or-file"], ("unc-or-file",), host) if host else UrlRisk(text, 0, ())
    try:
        parts = urllib.parse.urlsplit(text.replace("\\", "/") if scheme in ("http", "https") else text)
        port = parts.port
    except ValueError:
        return UrlRisk(text, 0, ())
    host = (parts.hostname or "").rstrip(".")
    if scheme not in ("http", "https", "ftp", "ftps") or not host:
        return UrlRisk(text, 0, (), host)
    if "@" in parts.netloc:
        reasons.append("userinfo")
    if _numeric_host(host):
        reasons.append("numeric-host")
    elif _ip_host(host):
        reasons.append("ip-host")
    else:
        if any(label.startswith("xn--") for label in host.split(".")):
            reasons.append("punycode")
        if host in SHORTENERS or registrable_domain(host) in SHORTENERS:
            reasons.append("shortener")
        elif _shared_hosting(host):
            reasons.append("shared-hosting")
        if lookalike_brand(host):
            reasons.append("lookalike")
        tld = host.rsplit(".", 1)[-1]
        if tld in RISKY_TLDS:
            reasons.append("risky-tld")
    after_host = text[len(parts.scheme) + 3 + len(parts.netloc):]
    if "userinfo" not in reasons and _email_in(after_host):
        reasons.append("email-in-url")
    if _EMBEDDED_URL.search(after_host) \
            or (_REDIRECT_ENDPOINTS.match(host + parts.path) and "shortener" not in reasons):
        reasons.append("redirector")
    if port is not None and port not in (80, 443, 8080, 8443):
        reasons.append("odd-port")
    if _path_extension(parts.path) in PAYLOAD_EXTENSIONS:
        reasons.append("payload-path")
    if reasons and CREDENTIAL_WORDS.search(host + parts.path):
        reasons.append("credential-words")
    return UrlRisk(text, _score(reasons), tuple(reasons), host)


def worst(urls: list[str]) -> UrlRisk | None:
    """The riskiest of ``urls`` (``None`` for none)."""
    best: UrlRisk | None = None
    for u in urls:
        r = assess(u)
        if best is None or r.severity > best.severity:
            best = r
    return best


__all__ = ["UrlRisk", "assess", "is_call_to_action", "known_suffix", "lookalike_brand", "registrable_domain", "worst", "WEIGHTS"]
