"""Windows paths as a Wine sample names them -> the unix paths the behaviour trace shows.

Standard library only (runs inside the guest).  Pure.

Inside the sandbox the Wine prefix is ``/home/user/.wine``: ``C:\\`` is its
``drive_c`` and ``Z:\\`` is the unix root.  The user's shell folders
(``C:\\users\\user\\Documents``...) are symlinks to the sandbox HOME's folders
(:mod:`mailvm.guest.windecoys` makes them so), and strace shows the resolved
path, so they map straight to ``/home/user/Documents``.
"""

from __future__ import annotations

import posixpath

HOME = "/home/user"
PREFIX = HOME + "/.wine"
WIN_USER = "user"
#: folders of C:\users\user that are links to the sandbox HOME's folders of the same name
SHELL_FOLDERS = ("Desktop", "Documents", "Downloads", "Music", "Pictures", "Videos")


def win_to_unix(path: str, prefix: str = PREFIX, home: str = HOME) -> str:
    """``C:\\users\\user\\Temp\\a.exe`` -> ``/home/user/.wine/drive_c/users/user/Temp/a.exe``.

    ``Z:\\work\\x`` -> ``/work/x``; NT forms (``\\??\\C:\\``, ``\\\\?\\C:\\``) are
    accepted.  Anything else (another drive, a relative or UNC path) gives ``""``.
    """
    p = (path or "").strip().strip('"').replace("/", "\\")
    for lead in ("\\??\\", "\\\\?\\", "\\\\.\\"):
        if p.startswith(lead):
            p = p[len(lead):]
    if len(p) < 2 or p[1] != ":" or not p[0].isalpha():
        return ""
    drive = p[0].lower()
    rest = p[2:].replace("\\", "/")
    if drive == "z":
        out = posixpath.normpath("/" + rest.lstrip("/"))
    elif drive == "c":
        out = posixpath.normpath(prefix.rstrip("/") + "/drive_c/" + rest.lstrip("/"))
        users = (prefix.rstrip("/") + f"/drive_c/users/{WIN_USER}/").lower()
        if out.lower().startswith(users):
            first, _, tail = out[len(users):].partition("/")
            for folder in SHELL_FOLDERS:
                if first.lower() == folder.lower():
                    out = home.rstrip("/") + "/" + folder + ("/" + tail if tail else "")
                    break
    else:
        return ""
    return out


def same_path(a: str, b: str) -> bool:
    """Windows compares paths without case; unix paths of a Wine prefix too."""
    return a.lower() == b.lower()
