"""Choosing the detonation backend from ``[pool] backend`` (DESIGN.md "Backends").

* ``auto``: the registered backends in :data:`AUTO_ORDER` (``qemu`` first,
  then ``process``); the first whose ``probe()`` returns ``None`` is used, and
  every refusal is logged with its reason.  ``xen`` is never chosen
  automatically: it is used only when named.
* an explicit name: that backend, or :class:`BackendUnavailable` carrying the
  probe's reason -- except ``qemu``: when it was chosen but cannot run here,
  the pool falls back to ``process`` *loudly* (a warning naming the reason and
  the weaker isolation), because a mail server that stops scanning is worse
  than one that scans with weaker isolation.  If ``process`` cannot run either,
  BackendUnavailable names both reasons.

The registry is the explicit dict ``mailvm.vmpool.backends.BACKENDS``.
"""

from __future__ import annotations

import logging
from typing import Mapping

from mailvm.config import POOL_BACKENDS, PoolConfig
from mailvm.vmpool.backends.base import Backend, BackendUnavailable

log = logging.getLogger(__name__)

#: the order ``auto`` tries registered backends in
AUTO_ORDER = ("qemu", "process")
#: an explicit choice that cannot run falls back to this backend (only for these names)
FALLBACK = {"qemu": "process"}


def _probe(cls: type[Backend], cfg: PoolConfig) -> str | None:
    """``cls.probe(cfg)``; a probe that raises counts as a refusal."""
    try:
        return cls.probe(cfg)
    except Exception as exc:  # a probe is a best-effort check: its crash is a reason
        return f"probe failed: {type(exc).__name__}: {exc}"


def make_backend(cfg: PoolConfig, registry: Mapping[str, type[Backend]] | None = None) -> Backend:
    """The backend ``cfg.backend`` names (see the module docstring); raises BackendUnavailable."""
    if registry is None:
        from mailvm.vmpool.backends import BACKENDS

        registry = BACKENDS
    choice = cfg.backend
    if choice == "auto":
        reasons: list[str] = []
        for name in AUTO_ORDER:
            cls = registry.get(name)
            if cls is None:
                reasons.append(f"{name}: not registered")
                continue
            why = _probe(cls, cfg)
            if why is None:
                log.info("pool backend: %s (auto)", name)
                return cls(cfg)
            log.info("pool backend auto: %s cannot run here: %s", name, why)
            reasons.append(f"{name}: {why}")
        raise BackendUnavailable("no backend can run here (" + "; ".join(reasons) + ")")

    if choice not in registry and choice not in POOL_BACKENDS:
        known = ", ".join(["auto", *sorted(registry)])
        raise BackendUnavailable(f"unknown backend {choice!r} (known: {known})")
    cls = registry.get(choice)
    why = "not registered" if cls is None else _probe(cls, cfg)
    if why is None:
        assert cls is not None
        log.info("pool backend: %s", choice)
        return cls(cfg)
    fallback = FALLBACK.get(choice)
    if fallback is None:
        raise BackendUnavailable(f"backend {choice!r} cannot run here: {why}")
    fb_cls = registry.get(fallback)
    fb_why = "not registered" if fb_cls is None else _probe(fb_cls, cfg)
    if fb_why is not None:
        raise BackendUnavailable(
            f"backend {choice!r} cannot run here: {why}; fallback {fallback!r} cannot either: {fb_why}"
        )
    assert fb_cls is not None
    log.warning(
        "pool backend %r was configured but cannot run here (%s): FALLING BACK to %r, "
        "whose isolation is weaker; fix the %s set-up or set [pool] backend explicitly",
        choice, why, fallback, choice,
    )
    return fb_cls(cfg)
