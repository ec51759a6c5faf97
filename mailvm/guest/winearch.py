"""Which Windows architectures this machine's Wine runs, and a prefix template that serves them all.

Standard library only (runs inside the guest).

Debian's Wine 8 is two packages: ``wine64`` (the 64-bit loader and DLLs) and,
with the i386 multiarch, ``wine32:i386`` (the 32-bit loader
:data:`WINE32_LOADER` and the DLLs a 64-bit prefix keeps in ``syswow64``).
Without the second, a 32-bit program fails at load
(``load_wow64_ntdll ... c0000135``).  A prefix made while only ``wine64`` was
installed has an empty ``syswow64``: once ``wine32`` is there, such a template
is stale and :func:`ensure_template` makes it anew (running detonations keep
their own hard-linked copies).
"""

from __future__ import annotations

import logging
import os
import shutil

from mailvm.guest import wine

log = logging.getLogger(__name__)

WINE32_LOADER = "/usr/lib/wine/wine"
#: a file every prefix made with the 32-bit side installed has
WOW64_MARKER = os.path.join("drive_c", "windows", "syswow64", "kernel32.dll")


def has_wine32() -> bool:
    return os.access(WINE32_LOADER, os.X_OK)


def serves_wow64(template: str) -> bool:
    return os.path.isfile(os.path.join(template, WOW64_MARKER))


def ensure_template(template: str, wine_bin: str) -> None:
    """:func:`mailvm.guest.wine.ensure_template`, after moving aside a template made without the 32-bit side
    when that side is now installed."""
    if has_wine32() and os.path.isfile(os.path.join(template, "system.reg")) and not serves_wow64(template):
        stale = f"{template}.stale-{os.getpid()}"
        try:
            os.rename(template, stale)
            log.warning("Wine prefix template %s has no 32-bit side (made before wine32 was installed): "
                        "making it anew", template)
            shutil.rmtree(stale, ignore_errors=True)
        except OSError as exc:
            log.warning("could not replace the stale Wine template %s: %s", template, exc)
    wine.ensure_template(template, wine_bin)
