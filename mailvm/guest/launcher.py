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

from mailvm.guest import peinfo
from mailvm.guest.peinfo import PeInfo

log = logging.getLogger(__name__)

SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
#: Debian's wine64 package installs its loader outside $PATH
EXTRA_TOOL_DIRS = ("/usr/lib/wine", "/usr/lib/x86_64-linux-gnu/wine", "/opt/wine-stable/bin")

HOME_IN = "/home/user"
HOSTNAME = "desktop-7f3a"
WORK_IN = "/work"
WINEPREFIX_IN = HOME_IN + "/.wine"
WINEDEBUG = "+reg,+loaddll,+process,+winsock"
#: Wine's relay channel with relay thunks for no function (see execproof.RELAY_INCLUDE): it then prints only
#: "Starting thread proc <entry>" and "Call PE DLL ... PROCESS_ATTACH": proof that the sample's code ran
WINE_PROOF_CHANNELS = "+relay"

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
    pe: PeInfo | None = None  # the PE facts of an MZ file (None: not read, or not MZ)

    @classmethod
    def from_file(cls, path: str, name: str, mime: str = "", kind: str = "unknown", hint: str = "") -> "SampleInfo":
        with open(path, "rb") as fh:
            head = fh.read(4096)
        pe = peinfo.parse(path) if head[:2] == MAGIC_MZ else None
        return cls(safe_name(name), (mime or "").lower(), (kind or "unknown").lower(), head, hint or "", pe)

    @property
    def pe_kind(self) -> str:
        """``exe32`` | ``exe64`` | ``dll32`` | ``dll64`` | ``dotnet`` | ``dotnet_dll`` | ``pe_other`` |
        ``pe_unknown`` (MZ, not parsed) | ``dos`` (MZ without a PE header) | ``""`` (not MZ)."""
        if self.head[:2] != MAGIC_MZ:
            return ""
        pe = self.pe
        if pe is None or (pe.error and not pe.machine):
            return "dos" if pe is not None and "DOS" in pe.error else "pe_unknown"
        if pe.clr:
            return "dotnet_dll" if pe.dll else "dotnet"
        if pe.machine not in ("i386", "amd64"):
            return "pe_other"
        return ("dll" if pe.dll else "exe") + ("32" if pe.machine == "i386" else "64")

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
    prepare: str = ""  # "wine" | "libreoffice" | "chromium" | ""
    make_executable: bool = False
    #: exact command lines the viewer itself runs (LibreOffice asking gpg for its version): not the sample's doing
    helper_argv: frozenset[tuple[str, ...]] = frozenset()
    #: the viewer's own background traffic (host names, and exact destinations such as Chromium's IPv6
    #: reachability probe) and the files it reads about the machine: kept out of the rules
    helper_hosts: frozenset[str] = frozenset()
    helper_dsts: frozenset[str] = frozenset()
    helper_reads: tuple[str, ...] = ()
    #: how the detonation proves the sample ran (see mailvm.guest.execproof): "wine_module" (the sample's PE
    #: loaded and its entry thread started), "wine_dll" (the DLL's DllMain or an export called), "wine_host"
    #: (a Wine script host started on the file and did not reject it), "mono" (the .NET entry method entered),
    #: "process" (the sample, or its interpreter with the sample, was exec'd), "viewer" (the viewer opened it),
    #: "document" (LibreOffice opened the file and its filter loaded it), "browser" (Chromium rendered it)
    proof: str = "process"

    @property
    def started_programs(self) -> tuple[str, ...]:
        """The Windows programs the launcher itself starts through Wine (``rundll32.exe``, ``wscript.exe``, the
        sample...), once per command: their process creation is the launcher's doing, not the sample's."""
        if self.platform != "windows":
            return ()
        argv = list(self.argv[2:] if self.argv[:1] == (SEQ_START,) else self.argv)
        out = []
        cmd: list[str] = []
        for a in argv + [SEQ_THEN]:
            if a != SEQ_THEN:
                cmd.append(a)
                continue
            if len(cmd) > 1:
                prog = cmd[1].replace("\\", "/").rsplit("/", 1)[-1].lower()
                out.append(prog if "." in prog else prog + ".exe")
            cmd = []
        return tuple(out)


Scorer = Callable[[SampleInfo], int]
#: (tool paths, the sample's path inside the sandbox, the sample's facts) -> argv
ArgvBuilder = Callable[[dict[str, str], str, SampleInfo], list[str]]


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
    helper_argv: frozenset[tuple[str, ...]] = frozenset()
    helper_hosts: frozenset[str] = frozenset()
    helper_dsts: frozenset[str] = frozenset()
    helper_reads: tuple[str, ...] = ()
    proof: str = "process"
    #: a runtime the launcher needs, named in ``not_executed`` when its programs are missing
    runtime: str = ""

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


def _pe_of(*kinds: str) -> Scorer:
    """Scores an MZ file whose PE kind is one of ``kinds`` (magic beats extension); a file with a PE
    extension but unreadable headers goes to the 64-bit loader (which starts either bitness)."""
    def score(i: SampleInfo) -> int:
        k = i.pe_kind
        if k in kinds:
            return 97
        if k == "pe_unknown" and "exe64" in kinds and i.ext != ".msi":
            return 90
        return 0
    return score


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
    if i.ext == ".hta":
        return 0  # an HTML Application is a program for mshta, not a page: a browser would not run it
    t = i.text_head()
    if t.startswith(("<!doctype html", "<html", "<head", "<script", "<body")):
        return 70
    if i.ext in HTML_EXT:
        return 60
    if "html" in i.mime:
        return 50
    return 30 if i.kind == "html" else 0


# ------------------------------------------------------------------ registry

_WINE_ENV = (("WINEPREFIX", WINEPREFIX_IN), ("WINEDEBUG", WINEDEBUG + "," + WINE_PROOF_CHANNELS),
             ("WINEDLLOVERRIDES", "mscoree,mshtml="), ("WINEARCH", "win64"))
_WINE_QUIET = (WINEPREFIX_IN + "/drive_c/windows", WINEPREFIX_IN + "/system.reg", WINEPREFIX_IN + "/user.reg",
               WINEPREFIX_IN + "/userdef.reg", WINEPREFIX_IN + "/.update-timestamp", WINEPREFIX_IN + "/dosdevices",
               WINEPREFIX_IN + "/wineserver", WINEPREFIX_IN + "/reg*", "/tmp/wine-*", "/tmp/.wine-*",
               WINEPREFIX_IN + "/drive_c/users/user/AppData/Local/Temp", HOME_IN + "/.cache/wine",
               HOME_IN + "/.local/share/applications/wine", HOME_IN + "/.local/share/mime",
               HOME_IN + "/.local/share/icons", HOME_IN + "/.config/menus",
               HOME_IN + "/.local/share/desktop-directories")
_WINE = "wine64"
#: the 32-bit loader (Debian's wine32:i386); "wine" is also the name of Debian's wrapper script, which runs it
_WINE32 = "wine"
_WINE_TOOLS = (("wine64", "wine"), ("wineserver",))
_WINE32_TOOLS = (("/usr/lib/wine/wine", "wine"), ("wineserver",))
#: Windows programs run by the DLL launcher's export calls and by the script hosts
DLL_EXPORT_PRIORITY = ("DllRegisterServer", "DllInstall", "ServiceMain", "Start", "Run", "Main", "Install", "Init",
                       "Initialize", "Execute", "Launch", "Control_RunDLL", "EntryPoint", "Entry")
#: exports never called: COM class-factory plumbing that only crashes when called with rundll32's arguments
DLL_EXPORT_SKIP = ("DllGetClassObject", "DllCanUnloadNow", "DllUnregisterServer", "DllGetVersion")
MAX_DLL_EXPORTS = 4
#: seconds the sandbox's init gives one export call before it starts the next (it does not stop it)
DLL_EXPORT_SLICE_S = 5.0
#: sandbox init argv conventions (mailvm.guest.sandbox.INIT_CODE): a sequence of commands
SEQ_START = "--mailvm-seq"
SEQ_THEN = "--mailvm-then"


def _win_path(sample: str) -> str:
    return "Z:" + sample.replace("/", "\\")


def _wine_loader(t: dict[str, str]) -> str:
    return t.get(_WINE) or t.get("/usr/lib/wine/wine") or t[_WINE32]


def _pe_argv(t: dict[str, str], s: str, i: SampleInfo) -> list[str]:
    # a screen saver runs its saver with /S (what Windows does when it starts one)
    return [_wine_loader(t), s] + (["/S"] if i.ext == ".scr" else [])


def dll_exports(info: SampleInfo, limit: int = MAX_DLL_EXPORTS) -> list[str]:
    """The exports the DLL launcher calls, best first: well-known entry names, then the others in table order
    (code only, no forwarders, no COM plumbing); none when the DLL exports no code."""
    exports = [e for e in (info.pe.exports if info.pe else ()) if e.code and not e.forwarded
               and e.name.split("@", 1)[0] not in DLL_EXPORT_SKIP]
    rank = {n.lower(): k for k, n in enumerate(DLL_EXPORT_PRIORITY)}
    exports.sort(key=lambda e: rank.get(e.name.split("@", 1)[0].lstrip("_").lower(), len(rank)))
    return [e.name for e in exports[:limit]]


def _dll_argv(t: dict[str, str], s: str, i: SampleInfo) -> list[str]:
    """rundll32 once per chosen export (the sandbox init starts the next after a slice of time); with no code
    export, one call of a name it does not have: the DLL is still loaded and its DllMain runs."""
    loader = _wine_loader(t)
    names = dll_exports(i) or ["DllMain"]
    argv = [SEQ_START, f"{DLL_EXPORT_SLICE_S:g}"]
    for k, name in enumerate(names):
        if k:
            argv.append(SEQ_THEN)
        argv += [loader, "rundll32", f"{_win_path(s)},{name}"]
    return argv


def _mono_argv(t: dict[str, str], s: str, i: SampleInfo) -> list[str]:
    """Mono with its tracer on the entry method's name only: 'ENTER: Type:Name' proves the entry ran."""
    entry = i.pe.clr_entry if i.pe else ""
    return [t["mono"]] + ([f"--trace=M::{entry}"] if entry else []) + [s]


#: LibreOffice's launcher: oosplash (what the soffice script execs; it restarts soffice.bin when the first start
#: of a fresh profile asks for it), or the soffice script itself on other layouts
LIBREOFFICE_TOOLS = ("/usr/lib/libreoffice/program/oosplash", "soffice", "libreoffice")
LIBREOFFICE_EXES = frozenset({"soffice.bin", "soffice", "oosplash", "libreoffice"})
#: what LibreOffice runs by itself when it starts (xmlsecurity's GnuPG probes)
LIBREOFFICE_HELPER_ARGV = frozenset({
    ("/usr/bin/gpgconf", "--list-dirs"), ("/usr/bin/gpgconf", "--list-components"), ("/usr/bin/gpgconf", "--version"),
    ("/usr/bin/gpg", "--version"), ("/usr/bin/gpgsm", "--version"), ("/usr/bin/gpg2", "--version"),
})
#: the profile LibreOffice uses in the sandbox (mailvm.guest.office writes it)
LIBREOFFICE_INSTALLATION = "file://" + HOME_IN + "/.config/libreoffice/4"
#: LibreOffice's certificate store: its own (empty) directory, not the decoy Firefox profile it would find in HOME
LIBREOFFICE_NSS_DIR = HOME_IN + "/.config/libreoffice/4/user/nss"


def _office_argv(t: dict[str, str], s: str, i: SampleInfo) -> list[str]:
    """Open the document (not --convert-to: a conversion runs no macros) headless, in the sandbox's profile."""
    return [t[LIBREOFFICE_TOOLS[0]], "--headless", "--norestore", "--nolockcheck", "--nologo",
            f"-env:UserInstallation={LIBREOFFICE_INSTALLATION}", s]


#: the browser driver (mailvm.guest.browser, copied into the sandbox) and where it reports
BROWSER_DIR_IN = HOME_IN + "/.cache/mailvm-browser"
BROWSER_DRIVER_IN = BROWSER_DIR_IN + "/browser.py"
BROWSER_OUT_IN = BROWSER_DIR_IN + "/out"
#: Google services Chromium calls by itself even with background networking off (network time, component and
#: variations updates, safe browsing); a page cannot make it call them in a way that matters here
CHROMIUM_SERVICE_HOSTS = frozenset({
    "clients2.google.com", "clients1.google.com", "update.googleapis.com", "clientservices.googleapis.com",
    "safebrowsing.googleapis.com", "optimizationguide-pa.googleapis.com", "content-autofill.googleapis.com",
    "redirector.gvt1.com", "edgedl.me.gvt1.com", "www.gstatic.com", "accounts.google.com", "dns.google",
    "chromewebstore.googleapis.com", "www.google.com", "android.clients.google.com", "mtalk.google.com",
    "www.googleapis.com",
})
#: the IPv6 reachability probe: a UDP connect to Google's public DNS (no packet is sent)
CHROMIUM_PROBES = frozenset({"[2001:4860:4860::8888]:443", "8.8.8.8:443"})
#: what Chromium reads about the machine (hardware model, CPU): not a page's doing (pages cannot read files)
CHROMIUM_READS = ("/sys/devices/virtual/dmi/id/", "/sys/class/dmi/id/", "/proc/cpuinfo")
CHROMIUM_EXES = frozenset({"chromium", "chrome", "chromium-browser", "google-chrome", "chrome_crashpad_handler"})


def _chromium_argv(t: dict[str, str], s: str, i: SampleInfo) -> list[str]:
    """The DevTools driver renders file://<sample> in headless Chromium (see mailvm.guest.browser)."""
    return [t["python3"], "-I", "-S", BROWSER_DRIVER_IN, "--url", "file://" + s, "--out", BROWSER_OUT_IN,
            "--chromium", t["chromium"]]


def _wine(name: str, score: Scorer, argv: ArgvBuilder, role: str, proof: str, tools=_WINE_TOOLS,
          runtime: str = "wine64", helpers: frozenset[str] = frozenset(), **kw) -> Launcher:
    return Launcher(name, score, tools, argv, role=role, platform="windows", env=_WINE_ENV,
                    helper_exes=WINE_HELPERS | helpers, quiet_prefixes=_WINE_QUIET, unlimited_address_space=True,
                    prepare="wine", proof=proof, runtime=runtime, **kw)


REGISTRY: tuple[Launcher, ...] = (
    Launcher("elf", _elf, (), lambda t, s, i: [s], role="program", make_executable=True),
    Launcher("python", _py, (("python3",),), lambda t, s, i: [t["python3"], s], role="script", runtime="python3"),
    Launcher("perl", _perl, (("perl",),), lambda t, s, i: [t["perl"], s], role="script", runtime="perl"),
    Launcher("bash", _bash, (("bash",),), lambda t, s, i: [t["bash"], s], role="script", runtime="bash"),
    Launcher("sh", _sh, (("sh", "dash", "bash"),), lambda t, s, i: [t["sh"], s], role="script", runtime="sh"),
    _wine("wine_pe", _pe_of("exe64"), _pe_argv, "program", "wine_module"),
    _wine("wine_pe32", _pe_of("exe32"), _pe_argv, "program", "wine_module", tools=_WINE32_TOOLS,
          runtime="wine32 (i386 multiarch)"),
    _wine("wine_dll", _pe_of("dll64"), _dll_argv, "program", "wine_dll"),
    _wine("wine_dll32", _pe_of("dll32"), _dll_argv, "program", "wine_dll", tools=_WINE32_TOOLS,
          runtime="wine32 (i386 multiarch)"),
    Launcher("dotnet_mono", _pe_of("dotnet"), (("mono",),), _mono_argv, role="program", platform="dotnet",
             env=(("LANG", "en_US.UTF-8"),), quiet_prefixes=(HOME_IN + "/.mono", "/etc/mono", "/tmp/.mono"),
             unlimited_address_space=True, proof="mono", runtime="mono (mono-runtime)"),
    _wine("wine_msi", _msi, lambda t, s, i: [t[_WINE], "msiexec", "/i", _win_path(s), "/qn"], "program",
          "wine_host", helpers=frozenset({"msiexec.exe"})),
    _wine("wine_cmd", _bat, lambda t, s, i: [t[_WINE], "cmd", "/c", _win_path(s)], "script", "wine_host"),
    _wine("wine_wsh", _wsh, lambda t, s, i: [t[_WINE], "wscript", _win_path(s)], "script", "wine_host"),
    _wine("wine_lnk", _lnk, lambda t, s, i: [t[_WINE], "start", "/wait", "/unix", s], "viewer", "viewer",
          viewer_exes=frozenset({"start.exe"})),
    Launcher("libreoffice", _office, (LIBREOFFICE_TOOLS,), _office_argv, role="viewer",
             viewer_exes=LIBREOFFICE_EXES, helper_exes=LIBREOFFICE_EXES, helper_argv=LIBREOFFICE_HELPER_ARGV,
             quiet_prefixes=(HOME_IN + "/.config/libreoffice", HOME_IN + "/.cache", HOME_IN + "/.local/share/fonts",
                             "/usr/lib/libreoffice"),
             env=(("MOZILLA_CERTIFICATE_FOLDER", LIBREOFFICE_NSS_DIR),),
             unlimited_address_space=True, prepare="libreoffice", proof="document",
             runtime="LibreOffice (libreoffice-core, -writer, -calc, -impress)"),
    Launcher("pdf_mutool", _pdf, (("mutool",),), lambda t, s, i: [t["mutool"], "draw", "-q", "-F", "txt", "-o",
                                                                   "/dev/null", s],
             role="viewer", viewer_exes=frozenset({"mutool"}), proof="viewer", runtime="mupdf-tools"),
    Launcher("pdf_poppler", _pdf, (("pdftotext",),), lambda t, s, i: [t["pdftotext"], "-q", s, "/dev/null"],
             role="viewer", viewer_exes=frozenset({"pdftotext"}), proof="viewer", runtime="poppler-utils"),
    Launcher("html_chromium", _html, (("chromium", "chromium-browser", "google-chrome"), ("python3",)),
             _chromium_argv, role="viewer", viewer_exes=CHROMIUM_EXES, helper_exes=CHROMIUM_EXES,
             quiet_prefixes=(HOME_IN + "/.config/chromium", HOME_IN + "/.cache", HOME_IN + "/.pki",
                             HOME_IN + "/.local/share", HOME_IN + "/Downloads/.org.chromium.Chromium.*"),
             helper_hosts=CHROMIUM_SERVICE_HOSTS, helper_dsts=CHROMIUM_PROBES, helper_reads=CHROMIUM_READS,
             unlimited_address_space=True, prepare="chromium", proof="browser", runtime="chromium"),
    Launcher("html_firefox", _html, (("firefox", "firefox-esr"),),
             lambda t, s, i: [t["firefox"], "--headless", "--screenshot", "/tmp/shot.png", "file://" + s],
             role="viewer", viewer_exes=frozenset({"firefox", "firefox-esr", "firefox-bin"}),
             quiet_prefixes=(HOME_IN + "/.mozilla", HOME_IN + "/.cache"), unlimited_address_space=True,
             proof="viewer", runtime="firefox-esr"),
)

BY_NAME = {entry.name: entry for entry in REGISTRY}


def _launch(entry: Launcher, tools: dict[str, str], sample_in: str, info: SampleInfo) -> Launch:
    return Launch(
        launcher=entry.name, argv=tuple(entry.argv(tools, sample_in, info)), role=entry.role,
        platform=entry.platform, env=dict(entry.env), viewer_exes=entry.viewer_exes, helper_exes=entry.helper_exes,
        quiet_prefixes=entry.quiet_prefixes, unlimited_address_space=entry.unlimited_address_space,
        prepare=entry.prepare, make_executable=entry.make_executable, proof=entry.proof,
        helper_argv=entry.helper_argv, helper_hosts=entry.helper_hosts, helper_dsts=entry.helper_dsts,
        helper_reads=entry.helper_reads,
    )


def unrunnable(info: SampleInfo) -> str:
    """Why no launcher can run ``info`` when its format itself says so ("" otherwise): the ``not_executed``
    reason for Windows files that look runnable by name or magic but are not."""
    k = info.pe_kind
    if k == "dos" or (info.ext in (".com", ".pif") and k == ""):
        return "bad format: a DOS program (16-bit) or a PIF; Wine on 64-bit Linux runs no DOS programs"
    if k == "pe_other":
        return f"unsupported architecture: a PE for machine {info.pe.machine if info.pe else '?'}, no runtime for it here"
    if k == "dotnet_dll":
        return "no launcher for a .NET DLL (a library without an entry point)"
    if info.ext == ".hta":
        return "missing runtime: an HTML Application host (Wine's mshta.exe is a stub)"
    if info.ext in PE_EXT and k == "":
        return f"bad format: {info.ext} file without a PE (MZ) header"
    return ""


def choose(info: SampleInfo, sample_in: str, registry: tuple[Launcher, ...] = REGISTRY,
           find: Callable[[str], str | None] = find_tool) -> tuple[Launch | None, str]:
    """The launcher for ``info`` and a one-line reason (why this one, or why none).

    Without a launcher the reason starts with ``missing runtime:`` (the best launchers' programs are not
    installed), ``bad format:`` or ``no launcher for`` (see :func:`unrunnable`): it becomes the
    ``not_executed`` finding's detail.
    """
    if info.hint and info.hint in {e.name for e in registry}:
        entry = next(e for e in registry if e.name == info.hint)
        tools, missing = entry.resolve(find)
        if tools is not None:
            return _launch(entry, tools, sample_in, info), f"{entry.name} (hint)"
        log.info("launcher hint %s unusable: %s missing", info.hint, missing)
    scored = [(entry.score(info), i, entry) for i, entry in enumerate(registry)]
    candidates = sorted((c for c in scored if c[0] > 0), key=lambda c: (-c[0], c[1]))
    first_missing = ""
    for score, _, entry in candidates:
        tools, missing = entry.resolve(find)
        if tools is not None:
            return _launch(entry, tools, sample_in, info), f"{entry.name} (score {score})"
        if not first_missing:
            first_missing = (f"missing runtime: {entry.runtime or missing} ({entry.name} needs {missing}, "
                             "not installed)")
    if first_missing:
        return None, first_missing
    return None, unrunnable(info) or f"no launcher for kind {info.kind} (name={info.name!r} type={info.mime!r})"
