"""How to run (or open) a sample: an explicit registry of launchers.

Standard library only (runs inside the guest).

Each :class:`Launcher` scores a :class:`SampleInfo` (magic bytes beat a
shebang, which beats the extension, which beats the MIME type, which beats the
triage kind) and names the programs it needs.  :func:`choose` picks the
best-scoring launcher whose programs are installed and returns a
:class:`Launch`: the argv to run inside the sandbox plus what the rules need to
know about it (a document viewer, a script interpreter, a program; which
processes are its own helpers; where it writes its own profile).  When the best
launchers for a file all lack their programs, :func:`choose` says which program
was missing; the caller turns that into the ``no_launcher`` finding.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
from dataclasses import dataclass, field
from typing import Callable

log = logging.getLogger(__name__)

SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
#: Debian's wine64 package installs its loader outside $PATH
EXTRA_TOOL_DIRS = ("/usr/lib/wine", "/usr/lib/x86_64-linux-gnu/wine", "/opt/wine-stable/bin")

HOME_IN = "/home/user"
HOSTNAME = "desktop-7f3a"
WORK_IN = "/work"
WINEPREFIX_IN = HOME_IN + "/.wine"
WINEDEBUG = "+reg,+loaddll,+process,+winsock"

WINE_HELPERS = frozenset({
    "wineserver", "wineserver64", "services.exe", "winedevice.exe", "explorer.exe", "plugplay.exe", "svchost.exe",
    "rpcss.exe", "conhost.exe", "wineboot.exe", "tabtip.exe", "rundll32.exe", "winemenubuilder.exe",
})

MAX_NAME = 100
_SAFE_NAME = re.compile(r"[^A-Za-z0-9._+\-]")


def find_tool(name: str) -> str | None:
    """Absolute path of a program the sandbox can see (only system directories count)."""
    if "/" in name:
        return name if os.access(name, os.X_OK) else None
    return shutil.which(name, path=SYSTEM_PATH + ":" + ":".join(EXTRA_TOOL_DIRS))


def safe_name(name: str) -> str:
    """A file name for the sample inside the sandbox: basename, safe characters, extension kept."""
    base = (name or "").replace("\\", "/").rsplit("/", 1)[-1].strip()
    base = _SAFE_NAME.sub("_", base).lstrip(".-")
    if not base:
        base = "sample"
    if len(base) > MAX_NAME:
        stem, dot, ext = base.rpartition(".")
        base = (stem[: MAX_NAME - len(ext) - 1] + "." + ext) if dot and len(ext) < 12 else base[:MAX_NAME]
    return base


@dataclass(frozen=True)
class SampleInfo:
    """What the launchers look at: name, declared type, triage kind, first bytes."""

    name: str
    mime: str = ""
    kind: str = "unknown"
    head: bytes = b""
    hint: str = ""

    @classmethod
    def from_file(cls, path: str, name: str, mime: str = "", kind: str = "unknown", hint: str = "") -> "SampleInfo":
        with open(path, "rb") as fh:
            head = fh.read(4096)
        return cls(safe_name(name), (mime or "").lower(), (kind or "unknown").lower(), head, hint or "")

    @property
    def ext(self) -> str:
        _, dot, ext = self.name.rpartition(".")
        return "." + ext.lower() if dot else ""

    @property
    def shebang(self) -> str:
        """The interpreter's basename from a ``#!`` line (``env`` resolved), or ``""``."""
        if not self.head.startswith(b"#!"):
            return ""
        line = self.head[2:].split(b"\n", 1)[0].decode("latin-1").strip().split()
        if not line:
            return ""
        prog = line[0].rsplit("/", 1)[-1]
        if prog == "env":
            rest = [w for w in line[1:] if not w.startswith("-")]
            prog = rest[0].rsplit("/", 1)[-1] if rest else ""
        return prog

    def text_head(self) -> str:
        return self.head.lstrip(b"\xef\xbb\xbf \t\r\n").lower()[:512].decode("latin-1")


@dataclass(frozen=True)
class Launch:
    """One decided way to run a sample (argv is inside-the-sandbox)."""

    launcher: str
    argv: tuple[str, ...]
    role: str  # program | script | viewer
    platform: str = "linux"  # linux | windows
    env: dict[str, str] = field(default_factory=dict)
    viewer_exes: frozenset[str] = frozenset()
    helper_exes: frozenset[str] = frozenset()
    quiet_prefixes: tuple[str, ...] = ()
    unlimited_address_space: bool = False
    prepare: str = ""  # "wine" | "libreoffice" | ""
    make_executable: bool = False


Scorer = Callable[[SampleInfo], int]
ArgvBuilder = Callable[[dict[str, str], str], list[str]]


@dataclass(frozen=True)
class Launcher:
    """A registry entry: how well it fits a sample, what it needs, how to build argv."""

    name: str
    score: Scorer
    tools: tuple[tuple[str, ...], ...]  # each entry: alternatives, the first found wins
    argv: ArgvBuilder
    role: str
    platform: str = "linux"
    env: tuple[tuple[str, str], ...] = ()
    viewer_exes: frozenset[str] = frozenset()
    helper_exes: frozenset[str] = frozenset()
    quiet_prefixes: tuple[str, ...] = ()
    unlimited_address_space: bool = False
    prepare: str = ""
    make_executable: bool = False

    def resolve(self, find: Callable[[str], str | None]) -> tuple[dict[str, str] | None, str]:
        """Tool paths keyed by each entry's first name, or ``(None, missing)``."""
        found: dict[str, str] = {}
        for alternatives in self.tools:
            path = next((p for p in (find(a) for a in alternatives) if p), None)
            if path is None:
                return None, " or ".join(alternatives)
            found[alternatives[0]] = path
        return found, ""


# ------------------------------------------------------------------ scorers

MAGIC_ELF = b"\x7fELF"
MAGIC_MZ = b"MZ"
MAGIC_OLE = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"
MAGIC_LNK = b"L\x00\x00\x00\x01\x14\x02\x00"
MAGIC_ZIP = b"PK\x03\x04"

OFFICE_EXT = {".doc", ".dot", ".docx", ".docm", ".dotm", ".xls", ".xlsx", ".xlsm", ".xlsb", ".xlt", ".xltm",
              ".ppt", ".pptx", ".pptm", ".pps", ".ppsm", ".rtf", ".odt", ".ods", ".odp", ".odg"}
OFFICE_MIME = ("msword", "ms-excel", "ms-powerpoint", "officedocument", "opendocument", "application/rtf", "text/rtf",
               "ms-office", "vnd.ms-word")
PE_EXT = {".exe", ".scr", ".com", ".pif", ".cpl"}
WSH_EXT = {".js", ".jse", ".vbs", ".vbe", ".wsf", ".wsh"}
HTML_EXT = {".htm", ".html", ".xhtml", ".shtml", ".svg"}
SHELLS = {"sh": "sh", "dash": "sh", "bash": "bash", "zsh": "bash", "ksh": "bash"}


def _py(i: SampleInfo) -> int:
    sb = i.shebang
    if sb.startswith("python"):
        return 90
    if i.ext in (".py", ".pyw"):
        return 60
    if "python" in i.mime:
        return 50
    return 0


def _perl(i: SampleInfo) -> int:
    if i.shebang.startswith("perl"):
        return 90
    if i.ext in (".pl", ".pm"):
        return 60
    return 50 if "perl" in i.mime else 0


def _sh(i: SampleInfo) -> int:
    if SHELLS.get(i.shebang) == "sh":
        return 90
    if i.shebang:
        return 0
    if i.ext == ".sh":
        return 60
    return 50 if "shellscript" in i.mime else 0


def _bash(i: SampleInfo) -> int:
    if SHELLS.get(i.shebang) == "bash":
        return 90
    return 60 if i.ext == ".bash" else 0


def _elf(i: SampleInfo) -> int:
    return 100 if i.head.startswith(MAGIC_ELF) else 0


def _pe(i: SampleInfo) -> int:
    if i.head.startswith(MAGIC_MZ) and i.ext not in (".msi",):
        return 95
    if i.ext in PE_EXT:
        return 60
    if "dosexec" in i.mime or "x-msdownload" in i.mime or "vnd.microsoft.portable-executable" in i.mime:
        return 50
    return 0


def _bat(i: SampleInfo) -> int:
    return 60 if i.ext in (".bat", ".cmd") else (40 if "x-msdos-batch" in i.mime else 0)


def _wsh(i: SampleInfo) -> int:
    return 60 if i.ext in WSH_EXT else (40 if "vbscript" in i.mime or "jscript" in i.mime else 0)


def _hta(i: SampleInfo) -> int:
    return 65 if i.ext == ".hta" else 0


def _msi(i: SampleInfo) -> int:
    if i.ext == ".msi":
        return 95 if i.head.startswith(MAGIC_OLE) else 60
    return 50 if "x-msi" in i.mime or "x-ole-storage" in i.mime and i.ext == ".msi" else 0


def _lnk(i: SampleInfo) -> int:
    if i.head.startswith(MAGIC_LNK):
        return 95
    if i.ext == ".lnk":
        return 60
    return 50 if "ms-shortcut" in i.mime or i.kind == "lnk" else 0


def _pdf(i: SampleInfo) -> int:
    if i.head.lstrip()[:5] == b"%PDF-" or b"%PDF-" in i.head[:1024]:
        return 95
    if i.ext == ".pdf":
        return 60
    if "pdf" in i.mime:
        return 50
    return 30 if i.kind == "pdf" else 0


def _office(i: SampleInfo) -> int:
    if i.head.startswith(MAGIC_OLE) and i.ext != ".msi":
        return 90
    if i.head.startswith(b"{\\rt"):
        return 90
    if i.head.startswith(MAGIC_ZIP) and i.ext in OFFICE_EXT:
        return 85
    if i.ext in OFFICE_EXT:
        return 60
    if any(m in i.mime for m in OFFICE_MIME):
        return 50
    return 30 if i.kind == "office" else 0


def _html(i: SampleInfo) -> int:
    t = i.text_head()
    if t.startswith(("<!doctype html", "<html", "<head", "<script", "<body")):
        return 70
    if i.ext in HTML_EXT:
        return 60
    if "html" in i.mime:
        return 50
    return 30 if i.kind == "html" else 0


# ------------------------------------------------------------------ registry

_WINE_ENV = (("WINEPREFIX", WINEPREFIX_IN), ("WINEDEBUG", WINEDEBUG), ("WINEDLLOVERRIDES", "mscoree,mshtml="),
             ("WINEARCH", "win64"))
_WINE_QUIET = (WINEPREFIX_IN + "/drive_c/windows", WINEPREFIX_IN + "/system.reg", WINEPREFIX_IN + "/user.reg",
               WINEPREFIX_IN + "/userdef.reg", WINEPREFIX_IN + "/.update-timestamp", WINEPREFIX_IN + "/dosdevices",
               WINEPREFIX_IN + "/wineserver", WINEPREFIX_IN + "/reg*", "/tmp/wine-*", "/tmp/.wine-*",
               WINEPREFIX_IN + "/drive_c/users/user/AppData/Local/Temp", HOME_IN + "/.cache/wine",
               HOME_IN + "/.local/share/applications/wine", HOME_IN + "/.local/share/mime",
               HOME_IN + "/.local/share/icons", HOME_IN + "/.config/menus",
               HOME_IN + "/.local/share/desktop-directories")
_WINE = "wine64"
_WINE_TOOLS = (("wine64", "wine"), ("wineserver",))


def _win_path(sample: str) -> str:
    return "Z:" + sample.replace("/", "\\")


REGISTRY: tuple[Launcher, ...] = (
    Launcher("elf", _elf, (), lambda t, s: [s], role="program", make_executable=True),
    Launcher("python", _py, (("python3",),), lambda t, s: [t["python3"], s], role="script"),
    Launcher("perl", _perl, (("perl",),), lambda t, s: [t["perl"], s], role="script"),
    Launcher("bash", _bash, (("bash",),), lambda t, s: [t["bash"], s], role="script"),
    Launcher("sh", _sh, (("sh", "dash", "bash"),), lambda t, s: [t["sh"], s], role="script"),
    Launcher("wine_pe", _pe, _WINE_TOOLS, lambda t, s: [t[_WINE], s], role="program", platform="windows",
             env=_WINE_ENV, helper_exes=WINE_HELPERS, quiet_prefixes=_WINE_QUIET, unlimited_address_space=True,
             prepare="wine"),
    Launcher("wine_msi", _msi, _WINE_TOOLS, lambda t, s: [t[_WINE], "msiexec", "/i", _win_path(s), "/qn"],
             role="program", platform="windows", env=_WINE_ENV, helper_exes=WINE_HELPERS | {"msiexec.exe"},
             quiet_prefixes=_WINE_QUIET, unlimited_address_space=True, prepare="wine"),
    Launcher("wine_cmd", _bat, _WINE_TOOLS, lambda t, s: [t[_WINE], "cmd", "/c", _win_path(s)], role="script",
             platform="windows", env=_WINE_ENV, helper_exes=WINE_HELPERS, quiet_prefixes=_WINE_QUIET,
             unlimited_address_space=True, prepare="wine"),
    Launcher("wine_wsh", _wsh, _WINE_TOOLS, lambda t, s: [t[_WINE], "wscript", _win_path(s)], role="script",
             platform="windows", env=_WINE_ENV, helper_exes=WINE_HELPERS, quiet_prefixes=_WINE_QUIET,
             unlimited_address_space=True, prepare="wine"),
    Launcher("wine_mshta", _hta, _WINE_TOOLS, lambda t, s: [t[_WINE], "mshta", _win_path(s)], role="script",
             platform="windows", env=_WINE_ENV, helper_exes=WINE_HELPERS, quiet_prefixes=_WINE_QUIET,
             unlimited_address_space=True, prepare="wine"),
    Launcher("wine_lnk", _lnk, _WINE_TOOLS, lambda t, s: [t[_WINE], "start", "/wait", "/unix", s], role="viewer",
             platform="windows", env=_WINE_ENV, viewer_exes=frozenset({"start.exe"}), helper_exes=WINE_HELPERS,
             quiet_prefixes=_WINE_QUIET, unlimited_address_space=True, prepare="wine"),
    Launcher("libreoffice", _office, (("soffice", "libreoffice"),),
             lambda t, s: [t["soffice"], "--headless", "--norestore", "--nolockcheck", "--nodefault",
                           "--convert-to", "pdf", "--outdir", "/tmp/lo-out", s],
             role="viewer", viewer_exes=frozenset({"soffice.bin", "soffice", "oosplash", "libreoffice"}),
             quiet_prefixes=(HOME_IN + "/.config/libreoffice", HOME_IN + "/.cache", "/tmp/lo-out"),
             unlimited_address_space=True, prepare="libreoffice"),
    Launcher("pdf_mutool", _pdf, (("mutool",),), lambda t, s: [t["mutool"], "draw", "-q", "-F", "txt", "-o",
                                                                "/dev/null", s],
             role="viewer", viewer_exes=frozenset({"mutool"})),
    Launcher("pdf_poppler", _pdf, (("pdftotext",),), lambda t, s: [t["pdftotext"], "-q", s, "/dev/null"],
             role="viewer", viewer_exes=frozenset({"pdftotext"})),
    Launcher("html_chromium", _html, (("chromium", "chromium-browser", "google-chrome"),),
             lambda t, s: [t["chromium"], "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                           "--virtual-time-budget=10000", "--dump-dom", "file://" + s],
             role="viewer", viewer_exes=frozenset({"chromium", "chrome", "chromium-browser", "google-chrome"}),
             quiet_prefixes=(HOME_IN + "/.config/chromium", HOME_IN + "/.cache", HOME_IN + "/.pki",
                             HOME_IN + "/.local/share"),
             unlimited_address_space=True),
    Launcher("html_firefox", _html, (("firefox", "firefox-esr"),),
             lambda t, s: [t["firefox"], "--headless", "--screenshot", "/tmp/shot.png", "file://" + s],
             role="viewer", viewer_exes=frozenset({"firefox", "firefox-esr", "firefox-bin"}),
             quiet_prefixes=(HOME_IN + "/.mozilla", HOME_IN + "/.cache"), unlimited_address_space=True),
)

BY_NAME = {entry.name: entry for entry in REGISTRY}


def _launch(entry: Launcher, tools: dict[str, str], sample_in: str) -> Launch:
    return Launch(
        launcher=entry.name, argv=tuple(entry.argv(tools, sample_in)), role=entry.role, platform=entry.platform,
        env=dict(entry.env), viewer_exes=entry.viewer_exes, helper_exes=entry.helper_exes,
        quiet_prefixes=entry.quiet_prefixes, unlimited_address_space=entry.unlimited_address_space,
        prepare=entry.prepare, make_executable=entry.make_executable,
    )


def choose(info: SampleInfo, sample_in: str, registry: tuple[Launcher, ...] = REGISTRY,
           find: Callable[[str], str | None] = find_tool) -> tuple[Launch | None, str]:
    """The launcher for ``info`` and a one-line reason (why this one, or why none)."""
    if info.hint and info.hint in {e.name for e in registry}:
        entry = next(e for e in registry if e.name == info.hint)
        tools, missing = entry.resolve(find)
        if tools is not None:
            return _launch(entry, tools, sample_in), f"{entry.name} (hint)"
        log.info("launcher hint %s unusable: %s missing", info.hint, missing)
    scored = [(entry.score(info), i, entry) for i, entry in enumerate(registry)]
    candidates = sorted((c for c in scored if c[0] > 0), key=lambda c: (-c[0], c[1]))
    first_missing = ""
    for score, _, entry in candidates:
        tools, missing = entry.resolve(find)
        if tools is not None:
            return _launch(entry, tools, sample_in), f"{entry.name} (score {score})"
        if not first_missing:
            first_missing = f"{entry.name} needs {missing}, not installed"
    if first_missing:
        return None, first_missing
    return None, f"no launcher for name={info.name!r} type={info.mime!r} kind={info.kind!r}"
