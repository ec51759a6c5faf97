"""Detonation backends: the explicit registry the pool chooses from (``[pool] backend``).

Each backend is one module implementing ``base.Backend``; only that module
touches its hypervisor or sandbox tools.  ``qemu`` and ``xen`` are added here
when they exist.
"""

from __future__ import annotations

from mailvm.vmpool.backends.base import Backend
from mailvm.vmpool.backends.process import ProcessBackend
from mailvm.vmpool.backends.qemu import QemuBackend

#: backend name -> class; the only place a backend is registered
BACKENDS: dict[str, type[Backend]] = {
    "process": ProcessBackend,
    "qemu": QemuBackend,
}

__all__ = ["BACKENDS"]
