"""The console's pages (Flask).  Everything it changes goes through the same store
and the same audit log as ``mvctl``; it never reads a file outside the quarantine
store and the scanned table.

Pages: ``/quarantine`` (search), ``/quarantine/<id>`` (view, release to all, to
some or to another address, delete, with the item's audit entries), ``/audit``,
``/file/<sha256>`` (a file's analysis report: findings, behaviour timeline,
screenshots), ``/pool`` (pool and throughput figures, refreshed).

Security: a login for every page (users file, :mod:`mailvm.web.auth`); session
cookie HttpOnly and SameSite=Strict; every POST carries a per-session CSRF token;
message content is never rendered as HTML (headers and report fields are
escaped text).  The console listens on loopback unless configured otherwise.
"""

from __future__ import annotations

import hmac
import logging
import re
import secrets
from dataclasses import dataclass
from email.parser import BytesHeaderParser
from email.policy import default as default_policy
from pathlib import Path
from typing import Any, Callable

from flask import Flask, abort, redirect, render_template, request, send_file, session, url_for

from mailvm.audit import AuditLog
from mailvm.web.auth import UsersFile

log = logging.getLogger(__name__)

SHA_RE = re.compile(r"^[0-9a-f]{64}$")
ADDR_RE = re.compile(r"^[^\s<>@,;:\"]{1,64}@[A-Za-z0-9.-]{1,253}$")
MAX_LIST = 500
MAX_HEADERS_SHOWN = 60


@dataclass
class ConsoleDeps:
    store: Any  # mailvm.quarantine.QuarantineStore
    audit: AuditLog
    users: UsersFile
    #: (item id, recipients or None for the original ones, who) -> ReleaseResult
    release: Callable[[str, list[str] | None, str], Any]
    #: sha256 -> the scanned table's verdict dict (or None)
    verdict_of: Callable[[str], dict[str, Any] | None]
    pool_status: Callable[[], dict[str, Any] | None]
    #: live throughput figures (mvctl top's summary of the metrics), may be empty
    figures: Callable[[], dict[str, Any]]
    secret_key: bytes
    #: directory under which the guest's screenshots are stored (only files under it are served)
    evidence_dir: str = ""


def create_app(deps: ConsoleDeps) -> Flask:
    app = Flask(__name__, template_folder=str(Path(__file__).with_name("templates")))
    app.secret_key = deps.secret_key
    app.config.update(SESSION_COOKIE_HTTPONLY=True, SESSION_COOKIE_SAMESITE="Strict", MAX_CONTENT_LENGTH=64 * 1024)

    def user() -> str | None:
        return session.get("user")

    @app.before_request
    def guard():
        if request.endpoint in ("login", "static"):
            return None
        if not user():
            return redirect(url_for("login", next=request.path))
        if request.method == "POST":
            sent = request.form.get("csrf", "")
            if not sent or not hmac.compare_digest(sent, session.get("csrf", "")):
                abort(400, "bad or missing CSRF token")
        return None

    @app.context_processor
    def common():
        return {"user": user(), "csrf": session.get("csrf", "")}

    @app.route("/login", methods=["GET", "POST"])
    def login():
        error = ""
        if request.method == "POST":
            name = request.form.get("name", "")[:64]
            password = request.form.get("password", "")[:1024]
            client = request.remote_addr or "?"
            if deps.users.check(client, name, password):
                session.clear()
                session["user"] = name
                session["csrf"] = secrets.token_urlsafe(32)
                deps.audit.record(name, "login", "-", f"from {client}")
                nxt = request.args.get("next", "")
                return redirect(nxt if nxt.startswith("/") and not nxt.startswith("//") else url_for("quarantine"))
            deps.audit.record(name or "?", "login_failed", "-", f"from {client}", ok=False)
            error = "wrong name or password (or too many failures: wait a few minutes)"
        return render_template("login.html", error=error), (401 if error else 200)

    @app.post("/logout")
    def logout():
        session.clear()
        return redirect(url_for("login"))

    @app.get("/")
    def index():
        return redirect(url_for("quarantine"))

    @app.get("/quarantine")
    def quarantine():
        q = request.args.get("q", "").strip().lower()[:200]
        verdict = request.args.get("verdict", "") or None
        state = request.args.get("state", "") or None
        domain = request.args.get("domain", "").strip() or None
        items = deps.store.list(domain=domain, verdict=verdict, state=state)
        if q:
            items = [i for i in items if q in _haystack(i)]
        items = list(reversed(items))[:MAX_LIST]
        return render_template("quarantine.html", items=items, q=q, verdict=verdict or "", state=state or "",
                               domain=domain or "")

    def _item(item_id: str):
        try:
            return deps.store.get(item_id)
        except (KeyError, ValueError):
            abort(404, "no such quarantine item")

    @app.get("/quarantine/<item_id>")
    def item(item_id: str):
        it = _item(item_id)
        headers: list[tuple[str, str]] = []
        try:
            msg = BytesHeaderParser(policy=default_policy).parsebytes(deps.store.read_message(item_id))
            headers = [(k, str(v)[:500]) for k, v in list(msg.items())[:MAX_HEADERS_SHOWN]]
        except Exception as exc:  # a hostile header must not break the page
            headers = [("(unreadable)", str(exc)[:200])]
        scan = it.report.get("scan") if isinstance(it.report.get("scan"), dict) else {}
        artifacts = [a for a in (scan.get("artifacts") or []) if isinstance(a, dict)][:200]
        return render_template("item.html", it=it, headers=headers, artifacts=artifacts,
                               audit=deps.audit.entries(item=item_id, limit=50), message=request.args.get("m", ""))

    @app.post("/quarantine/<item_id>/release")
    def release(item_id: str):
        it = _item(item_id)
        chosen = [r for r in request.form.getlist("rcpt") if r in it.recipients]
        alt = request.form.get("alt", "").strip()
        if alt:
            if not ADDR_RE.match(alt):
                return redirect(url_for("item", item_id=item_id, m=f"not an address: {alt[:80]}"))
            chosen.append(alt)
        targets = None if request.form.get("all") == "1" else chosen
        if targets == []:
            return redirect(url_for("item", item_id=item_id, m="choose at least one recipient"))
        result = deps.release(item_id, targets, user() or "?")
        return redirect(url_for("item", item_id=item_id, m=f"{result.status}: {result.message}"))

    @app.post("/quarantine/<item_id>/delete")
    def delete(item_id: str):
        _item(item_id)
        ok = deps.store.delete(item_id)
        deps.audit.record(user() or "?", "delete", item_id, "web console", ok=bool(ok))
        return redirect(url_for("quarantine"))

    @app.get("/audit")
    def audit():
        return render_template("audit.html", entries=deps.audit.entries(limit=500))

    @app.get("/file/<sha256>")
    def file_report(sha256: str):
        if not SHA_RE.match(sha256):
            abort(404)
        v = deps.verdict_of(sha256)
        if v is None:
            abort(404, "this file is not in the scanned table")
        events = [e for e in (v.get("log") or []) if isinstance(e, dict)][:2000]
        shots = [e for e in events if e.get("type") == "screenshot"]
        return render_template("file.html", sha=sha256, v=v, events=events, shots=shots)

    @app.get("/file/<sha256>/screenshot/<int:n>")
    def screenshot(sha256: str, n: int):
        if not SHA_RE.match(sha256) or not deps.evidence_dir:
            abort(404)
        v = deps.verdict_of(sha256) or {}
        shots = [e for e in (v.get("log") or []) if isinstance(e, dict) and e.get("type") == "screenshot"]
        if not 0 <= n < len(shots):
            abort(404)
        root = Path(deps.evidence_dir).resolve()
        path = (root / str(shots[n].get("path", ""))).resolve()
        if root not in path.parents or not path.is_file():
            abort(404)
        return send_file(path, mimetype="image/png")

    @app.get("/pool")
    def pool():
        return render_template("pool.html", status=deps.pool_status() or {}, figures=deps.figures() or {})

    return app


def _haystack(item: Any) -> str:
    return " ".join([item.id, item.sender, " ".join(item.recipients), item.domain, item.verdict, item.reason,
                     str(item.report.get("subject", ""))]).lower()


def serve(app: Flask, listen: str):
    """Serve the console on ``host:port`` in a daemon thread; returns the server (``shutdown()`` stops it)."""
    import threading

    from werkzeug.serving import make_server

    host, _, port = listen.rpartition(":")
    server = make_server(host.strip("[]") or "127.0.0.1", int(port), app, threaded=True)
    threading.Thread(target=server.serve_forever, name="mailvm-web", daemon=True).start()
    log.info("web console on http://%s/", listen)
    return server
