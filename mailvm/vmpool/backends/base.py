"""The one small interface every detonation backend implements.

A *backend* knows how to make *slots*: a disposable execution environment
(a flash-cloned VM, a sandboxed process, a Xen fork) whose guest agent is
already running and attached to the slot's shared page before any job exists
("pre-warmed").  The pool (``mailvm.vmpool.pool``) only talks to this
interface; only the backend modules touch libvirt, QEMU, ``xl`` or bubblewrap.

Lifecycle of a slot::

    slot = backend.create_slot(slot_id)   # returns once the agent reported READY
    seq = slot.page.submit(data, name, options)
    slot.ring()                            # doorbell: wake the idle agent
    ... slot.page.wait_state(...) / slot.page.read_result() ...
    slot.destroy()                         # always, also on every error path

``lease()`` wraps create/destroy in a context manager so a slot can never leak.
"""

from __future__ import annotations

import abc
import contextlib
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterator

if TYPE_CHECKING:  # imported for types only: keeps this module import-light
    from mailvm.config import PoolConfig
    from mailvm.vmpool.shmpage import HostPage


class BackendError(Exception):
    """A backend could not create or drive a slot (the pool turns it into data)."""


class BackendUnavailable(BackendError):
    """The backend cannot run on this machine at all (missing hypervisor, tools...)."""


@dataclass
class BackendInfo:
    """What ``mvctl pool status`` shows about a backend."""

    name: str
    isolation: str  # e.g. "hardware VM (KVM)", "VM (TCG emulation)", "namespaces only (weak)"
    accel: str = "none"  # kvm | tcg | xen | none
    details: dict[str, Any] = field(default_factory=dict)


def close_quietly(fd: int) -> None:
    """Close a descriptor a slot owns (its doorbell back), ignoring one already gone."""
    try:
        os.close(fd)
    except OSError:
        pass


class Slot(abc.ABC):
    """One pre-warmed, single-use execution environment."""

    id: str
    page: "HostPage"
    created_at: float
    ready_s: float  # time from create start to agent READY

    @abc.abstractmethod
    def ring(self) -> None:
        """Tell the idle agent that a job is on its page (cheap: the hand-over path)."""

    @abc.abstractmethod
    def alive(self) -> bool:
        """False once the slot's process/VM is gone."""

    def answer_fd(self) -> int | None:
        """A descriptor that turns readable when the agent changed the page (its doorbell back),
        so the host blocks instead of looking at the page in a loop; None: the host looks."""
        return None

    @abc.abstractmethod
    def destroy(self) -> None:
        """Kill everything the slot owns and remove its files; idempotent, never raises."""

    def stats(self) -> dict[str, Any]:
        """Backend-specific figures (pid, memory...)."""
        return {}


class Backend(abc.ABC):
    """Makes slots.  One instance per pool; must be thread-safe for create_slot()."""

    name: str = "base"

    def __init__(self, cfg: "PoolConfig") -> None:
        self.cfg = cfg

    @classmethod
    @abc.abstractmethod
    def probe(cls, cfg: "PoolConfig") -> str | None:
        """``None`` when the backend can run here, else the reason it cannot (for logs)."""

    @abc.abstractmethod
    def prepare(self) -> None:
        """One-time set-up before the first slot (template VM, checks); may be slow."""

    @abc.abstractmethod
    def create_slot(self, slot_id: str) -> Slot:
        """Create a pre-warmed slot; returns when its agent is READY.  Raises BackendError."""

    @abc.abstractmethod
    def info(self) -> BackendInfo:
        """Name, isolation strength and accelerator, for status and logs."""

    def close(self) -> None:
        """Release backend-wide resources (templates, connections)."""

    @contextlib.contextmanager
    def lease(self, slot_id: str) -> Iterator[Slot]:
        """A slot as a context manager: destroyed on every exit path."""
        slot = self.create_slot(slot_id)
        try:
            yield slot
        finally:
            slot.destroy()
