"""The qemu backend's image generations: which template new clones come from, and the switch to a new image.

One job: keep the *current* generation (the template clones are made from)
and replace it when ``<image_dir>/current`` points at a new image.  A
background thread looks at that link every ``poll_s`` (one readlink when
nothing changed); a new image gets its template made in that thread while
clones of the old one keep being made and served; then new clones come from
the new template and the old generation is retired (see :class:`Generation`).

Making a template is not this module's: it is handed ``make`` (the backend's
choice of accelerator over :class:`~.qemu_templates.TemplateStore`) and
``remove_old_templates``; what a switch means for waiting spare QEMUs is the
backend's ``on_switch``.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from mailvm.vmpool.backends.base import BackendError
from mailvm.vmpool.backends.qemu_templates import Template
from mailvm.vmpool.backends.qemu_vm import VMSpec
from mailvm.vmpool.image.layout import CURRENT, Image, ImageMissing, load_image

log = logging.getLogger(__name__)

#: how often a running backend looks at ``<image_dir>/current`` (one readlink); 0 = never
IMAGE_POLL_S = 5.0
#: after a failed template build for a new image, wait this long before trying that image again
IMAGE_RETRY_S = 600.0
#: after a switch to a new template, idle clones of the old one are destroyed after this grace
RETIRE_GRACE_S = 2.0


@dataclass(eq=False)
class Generation:
    """One template this backend clones from, and what still depends on it.

    The backend has one current generation; when the image changes, a new one
    is made in the background and becomes current, and the old one is
    *retired*: its spares are discarded, its clones that never got a job are
    destroyed (:data:`RETIRE_GRACE_S` later), its busy clones finish their
    job.  Its template lock (shared flock) is released once no slot creation
    uses it any more; the template files are then removed unless another pool
    holds them (running clones keep their RAM mapping of an unlinked file).
    """

    template: Template
    spec: VMSpec
    image: Image
    lock_fd: int  # shared flock on the template's lock file; -1 once released
    users: int = 0  # slot creations and spare spawns in flight
    retired: bool = False
    slots: set[Any] = field(default_factory=set)  # live QemuSlots cloned from it

    def release_lock(self) -> None:
        if self.lock_fd >= 0:
            os.close(self.lock_fd)
            self.lock_fd = -1


@dataclass(eq=False)
class GenerationWatcher:
    """The current generation, the retired ones still held, and the thread that watches the image."""

    image_dir: str
    poll_s: float
    #: the template for an image (reused or made), locked shared; BackendError when none can be made
    make: Callable[[Image], Generation]
    #: remove the templates of this work dir other than ``keep`` that no pool holds
    remove_old_templates: Callable[[str], None]
    #: called once a new generation is current (the backend drops spares of the old one)
    on_switch: Callable[[Generation], None]
    current: Generation | None = None
    old: list[Generation] = field(default_factory=list)  # retired generations whose template lock is still held
    pending: str | None = None  # version of a new image whose template is being made
    error: str = ""  # why the newest image has no template ("" when it has)
    closed: bool = False
    _failed: dict[str, float] = field(default_factory=dict)  # image key -> monotonic time before which not retried
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _rebuild_lock: threading.Lock = field(default_factory=threading.Lock)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def set_first(self, gen: Generation) -> None:
        """The generation prepare() made."""
        with self._lock:
            self.current = gen

    def start(self) -> None:
        """Watch the image in the background (when ``poll_s`` > 0)."""
        if self.poll_s > 0:
            self._thread = threading.Thread(target=self._watch, name="qemu-image-watch", daemon=True)
            self._thread.start()

    def _watch(self) -> None:
        while not self._stop.wait(self.poll_s):
            try:
                self.check_image()
            except Exception:  # the watcher must survive anything; the old template keeps serving
                log.exception("qemu backend: checking the image failed")

    def check_image(self) -> bool:
        """Switch to the image ``<image_dir>/current`` points at, if it changed; True when switched.

        Cheap when nothing changed (one readlink).  Otherwise the new template is
        made here (the caller's thread: the image watcher's), while clones of the
        old one keep being made and served; then new clones come from the new
        template and the old generation is retired (see :class:`Generation`).
        A failed build is logged and retried after :data:`IMAGE_RETRY_S`.
        """
        with self._rebuild_lock:
            cur = self.current
            if cur is None or self.closed:
                return False
            if os.path.realpath(os.path.join(self.image_dir, CURRENT)) == cur.image.dir:
                return False
            try:
                image = load_image(self.image_dir)
            except ImageMissing as exc:  # e.g. a build half-way: the old image keeps serving
                log.debug("qemu backend: image check: %s", exc)
                return False
            if image.key == cur.image.key or self._failed.get(image.key, 0) > time.monotonic():
                return False
            log.info("qemu backend: image changed (%s -> %s): making its template while clones of %s keep serving",
                     cur.image.version, image.version, cur.image.version)
            self.pending = image.version
            t0 = time.monotonic()
            try:
                gen = self.make(image)
            except BackendError as exc:
                self._failed[image.key] = time.monotonic() + IMAGE_RETRY_S
                self.error = f"image {image.version}: {exc}"[:500]
                log.error("qemu backend: no template for the new image %s (%s); still serving image %s, "
                          "retry in %.0f s", image.version, exc, cur.image.version, IMAGE_RETRY_S)
                return False
            finally:
                self.pending = None
            self.error = ""
            if not self.switch(gen):
                return False
            log.info("qemu backend: now cloning image %s (template %s, ready after %.1f s)", image.version,
                     gen.template.key[:12], time.monotonic() - t0)
        self._stop.wait(RETIRE_GRACE_S)  # a runner that took an old slot just before the switch writes its job now
        self.retire_idle(cur)
        return True

    def switch(self, gen: Generation) -> bool:
        """Make ``gen`` current and retire the old generation; False (gen released) when closed."""
        with self._lock:
            old = self.current
            if self.closed or old is None:
                closed = True
            else:
                closed = False
                old.retired = True
                self.old.append(old)
                self.current = gen
        if closed:
            gen.release_lock()
            return False
        self.on_switch(gen)
        self.release_retired()
        return True

    def retire_idle(self, gen: Generation) -> int:
        """Destroy the clones of retired ``gen`` that never got a job; returns how many."""
        n = 0
        for slot in list(gen.slots):
            if slot.unused():
                slot.destroy()
                n += 1
        if n:
            log.info("qemu backend: destroyed %d idle clone(s) of the old template %s", n, gen.template.key[:12])
        return n

    def use(self) -> Generation:
        """The current generation, counted as in use until :meth:`unuse`."""
        with self._lock:
            gen = self.current
            assert gen is not None
            gen.users += 1
            return gen

    def unuse(self, gen: Generation) -> None:
        with self._lock:
            gen.users -= 1
            last = gen.retired and gen.users == 0
        if last:
            self.release_retired()

    def release_retired(self) -> None:
        """Release the template locks of retired generations nobody creates clones from any more,
        then remove their templates unless another pool holds them."""
        with self._lock:
            done = [g for g in self.old if g.users == 0]
            self.old = [g for g in self.old if g.users > 0]
            keep = self.current.template.key if self.current else None
        for g in done:
            g.release_lock()
        if done and keep and not self.closed:
            self.remove_old_templates(keep)

    def stop(self) -> None:
        """No more switches; the watcher thread ends at its next look."""
        self.closed = True
        self._stop.set()

    def join(self, timeout: float) -> bool:
        """Wait for the watcher thread (a template build in flight fails once its reference VM is killed);
        False when there was none."""
        if self._thread is None:
            return False
        self._thread.join(timeout=timeout)
        return True

    def release_all(self) -> None:
        """Release the template locks of every generation (the backend is closing)."""
        with self._lock:
            gens = [g for g in (self.current, *self.old) if g is not None]
            self.old = []
        for g in gens:
            g.release_lock()
