"""Behaviour rules for documents opened in a viewer (LibreOffice) and pages rendered in the browser.

Standard library only (runs inside the guest).  Pure: no I/O.

These rows use :class:`mailvm.guest.rules.Rule` and run in the same
:class:`~mailvm.guest.rules.RuleEngine` as the general rules (the detonation
passes ``rules.RULES + docrules.rules_for(...)`` for the viewer launchers);
they are kept apart because they need facts about the document itself (its
external targets) and read the browser's own events.  The general rules still
apply: a macro that starts a shell is ``viewer_spawns_shell`` (9), one that
writes and runs a program ``drop_execute`` (7), a download it runs
``download_execute`` (9).

Browser events (from :mod:`mailvm.guest.browser`): ``page`` (the final URL,
title, redirects), ``form`` (a form, its action, whether it asks for a
password), ``download`` (a file the page made the browser save), ``brand``
(brand names the page shows against the domains it uses).
"""

from __future__ import annotations

import posixpath
from typing import Any, Iterable
from urllib.parse import urlsplit

from mailvm.guest.browser import BRAND_SITES
from mailvm.guest.rules import DOWNLOAD, EXEC, INTERPRETERS, SHELLS, DOWNLOADERS, Rule, RuleContext, State, _f, _s, \
    _t, prog_name

#: file types a page should never hand over by itself (HTML smuggling delivers these)
SMUGGLED_EXT = frozenset({
    "exe", "scr", "com", "pif", "cpl", "dll", "msi", "msix", "appx", "bat", "cmd", "ps1", "vbs", "vbe", "js", "jse",
    "wsf", "wsh", "hta", "lnk", "jar", "iso", "img", "vhd", "vhdx", "zip", "rar", "7z", "gz", "tgz", "cab", "ace",
    "arj", "docm", "xlsm", "pptm", "dotm", "xlam", "one", "svg", "html", "htm", "url", "library-ms", "apk", "elf",
    "sh", "py", "dmg", "pkg",
})
ARCHIVE_EXT = frozenset({"zip", "rar", "7z", "gz", "tgz", "cab", "ace", "arj", "iso", "img", "vhd", "vhdx"})
#: magic bytes of what was saved (the name may lie)
MAGIC = ((b"MZ", "a Windows program"), (b"\x7fELF", "an ELF program"), (b"PK\x03\x04", "a zip archive"),
         (b"Rar!", "a RAR archive"), (b"7z\xbc\xaf", "a 7-zip archive"), (b"\xd0\xcf\x11\xe0", "an OLE document"),
         (b"CD001", "an ISO image"))


def host_of(url: str) -> str:
    try:
        return (urlsplit(url).hostname or "").lower().rstrip(".")
    except ValueError:
        return ""


def site_of(host: str) -> str:
    """The registrable part of a host, roughly (the last two labels; three under a two-letter country SLD)."""
    labels = [x for x in host.lower().rstrip(".").split(".") if x]
    if len(labels) >= 3 and len(labels[-1]) == 2 and labels[-2] in ("co", "com", "net", "org", "gov", "ac", "edu"):
        return ".".join(labels[-3:])
    return ".".join(labels[-2:])


# ------------------------------------------------------------------ documents (LibreOffice)


def _targets_rule(kinds: tuple[str, ...], urls: dict[str, str]) -> Any:
    hosts = {host_of(u): u for u, k in urls.items() if k in kinds and host_of(u)}

    def check(ev: dict[str, Any], ctx: RuleContext, st: State) -> str | None:
        typ = ev.get("type")
        if typ == "http":
            host = _s(ev.get("host")).split(":", 1)[0].lower().rstrip(".")
        elif typ == "tls":
            host = _s(ev.get("sni")).lower().rstrip(".")
        elif typ == "dns":
            host = _s(ev.get("name")).lower().rstrip(".")
        else:
            return None
        if host in hosts:
            what = f"{ev.get('method', 'GET')} {ev.get('url')}" if typ == "http" else f"{typ} {host}"
            return f"{what} (the document's {urls[hosts[host]]} {hosts[host][:200]})"
        return None
    return check


def _macro_program(ev: dict[str, Any], ctx: RuleContext, st: State) -> str | None:
    """A program started by the office viewer that is neither the viewer itself nor a shell (shells are
    ``viewer_spawns_shell``): only a macro makes LibreOffice start other programs."""
    if ctx.role != "viewer" or ev.get("type") != "exec" or not ev.get("ok", True) or ev.get("src") == "wine":
        return None
    name = prog_name(_s(ev.get("path")))
    parent = prog_name(_s(ev.get("parent_exe")))
    if parent not in ctx.viewer_exes or name in ctx.viewer_exes or name in SHELLS or name in INTERPRETERS \
            or name in DOWNLOADERS:
        return None
    return f"{parent} started {_s(ev.get('path'))} {' '.join(_s(a) for a in (ev.get('argv') or [])[1:])[:200]}"


def office_rules(targets: Iterable[Any] = ()) -> tuple[Rule, ...]:
    """Rules for one document; ``targets`` are its external relationships (``office.ExternalTarget``)."""
    urls = {t.url: t.kind for t in targets}
    out = [
        Rule("macro_starts_program", 6, _t("exec"), _macro_program,
             "a document macro makes the office viewer start a program (Shell(), a UNO process call)",
             "soffice.bin -> /usr/bin/touch /tmp/x", _f(EXEC)),
    ]
    if urls:
        out += [
            Rule("document_remote_template", 6, _t("http", "tls", "dns"), _targets_rule(("template",), urls),
                 "the document's remote template (attachedTemplate) was requested from the internet when it was "
                 "opened (template injection: the template carries the macros)",
                 "GET http://x.example/t.dotm", _f(DOWNLOAD)),
            Rule("document_external_object", 6, _t("http", "tls", "dns"),
                 _targets_rule(("ole_link", "frame", "subdocument"), urls),
                 "an external OLE object, frame or subdocument of the document was fetched when it was opened "
                 "(CVE-2017-0199 style links)", "GET http://x.example/o.hta", _f(DOWNLOAD)),
            Rule("document_external_image", 2, _t("http", "tls", "dns"), _targets_rule(("image",), urls),
                 "a linked (remote) image of the document was fetched when it was opened (a tracking pixel)",
                 "GET http://t.example/p.gif"),
        ]
    return tuple(out)


# ------------------------------------------------------------------ pages (the browser)


def _form_to_other_domain(ev: dict[str, Any], ctx: RuleContext, st: State) -> str | None:
    if ev.get("type") != "form" or not ev.get("password"):
        return None
    action = _s(ev.get("action"))
    page = _s(ev.get("page"))
    ah, ph = host_of(action), host_of(page)
    if not ah or ah == ph or (ph and site_of(ah) == site_of(ph)):
        return None
    return f"password form on {ph or page[:80] or 'a local file'} posts to {action[:200]}"


def _form_password(ev: dict[str, Any], ctx: RuleContext, st: State) -> str | None:
    if ev.get("type") != "form" or not ev.get("password"):
        return None
    return f"password form on {_s(ev.get('page'))[:120] or 'the page'} (action {_s(ev.get('action'))[:160] or 'none'})"


def _form_brand(ev: dict[str, Any], ctx: RuleContext, st: State) -> str | None:
    if ev.get("type") != "form" or not ev.get("password") or not ev.get("brands"):
        return None
    brands = [str(b) for b in ev.get("brands") or []][:3]
    action = _s(ev.get("action"))
    ah = host_of(action)
    if ah and any(name in site_of(ah) for b in brands for name in BRAND_SITES.get(b, (b,))):
        return None  # the brand's own login
    return f"password form showing {', '.join(brands)} posts to {action[:160] or 'script'}"


def _smuggled(ev: dict[str, Any], ctx: RuleContext, st: State) -> str | None:
    if ev.get("type") != "download" or not ev.get("scripted"):
        return None
    name = _s(ev.get("name"))
    ext = posixpath.splitext(name.lower())[1].lstrip(".")
    what = _s(ev.get("magic"))
    if ext in SMUGGLED_EXT or what:
        return f"the page's script saved {name[:120]} ({what or ext}, {ev.get('size')} bytes, from {_s(ev.get('url'))[:80]})"
    return None


def _download_any(ev: dict[str, Any], ctx: RuleContext, st: State) -> str | None:
    if ev.get("type") != "download":
        return None
    return f"{_s(ev.get('name'))[:120]} ({ev.get('size')} bytes) from {_s(ev.get('url'))[:120]}"


def _redirect_to_credentials(ev: dict[str, Any], ctx: RuleContext, st: State) -> str | None:
    if ev.get("type") != "page" or not ev.get("password_form") or not ev.get("redirects"):
        return None
    return f"redirected ({ev.get('redirects')} hop(s)) to {_s(ev.get('url'))[:200]}, which asks for a password"


def _auto_navigation(ev: dict[str, Any], ctx: RuleContext, st: State) -> str | None:
    if ev.get("type") != "page" or not ev.get("redirects"):
        return None
    return f"the page navigated by itself ({ev.get('redirects')} hop(s)) to {_s(ev.get('url'))[:200]}"


def browser_rules() -> tuple[Rule, ...]:
    return (
        Rule("page_password_form_other_domain", 6, _t("form"), _form_to_other_domain,
             "a rendered page's password form posts to another domain than the page's own (credential harvesting)",
             "https://login.example-bank.test/ -> https://collect.evil.test/p.php"),
        Rule("page_password_form_brand", 8, _t("form"), _form_brand,
             "a password form shown under a well-known brand (title, logo, text) that posts elsewhere than the "
             "brand's own domain", "Microsoft 365 sign-in posting to gate.evil.test"),
        Rule("page_password_form", 3, _t("form"), _form_password,
             "a rendered page asks for a password (on its own: login pages are common)", "<input type=password>"),
        Rule("page_smuggled_download", 9, _t("download"), _smuggled,
             "the page's own script made the browser save an executable, script or archive (HTML smuggling: a blob "
             "or data URL download)", "blob: -> invoice.zip", _f(DOWNLOAD)),
        Rule("page_download", 4, _t("download"), _download_any,
             "the page made the browser save a file", "report.pdf"),
        Rule("page_redirect_to_credentials", 6, _t("page"), _redirect_to_credentials,
             "the page sent the browser on by itself (meta refresh, script, HTTP redirect) to a page that asks for "
             "a password", "file:///work/x.html -> http://login.evil.test/"),
        Rule("page_auto_navigation", 3, _t("page"), _auto_navigation,
             "the page sent the browser on by itself (meta refresh, script or an HTTP redirect)",
             "location.href = 'http://x.test/'"),
    )
