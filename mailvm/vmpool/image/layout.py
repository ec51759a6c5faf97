"""Where a built guest image lives and how to read its manifest (no building here).

An image directory holds ``vmlinuz``, ``initrd.img``, ``root.img`` (ext4,
mounted read-only by the guest under a tmpfs overlay) and ``manifest.json``.
The builder keeps several under ``<cache_dir>/image-<key>/`` and points the
symlink ``<cache_dir>/current`` at the newest complete one; the manifest is
written last, so an image without one is incomplete and ignored.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any

DEFAULT_CACHE_DIR = "/var/lib/mailvm/image"
CURRENT = "current"
MANIFEST = "manifest.json"
KERNEL = "vmlinuz"
INITRD = "initrd.img"
ROOTFS = "root.img"
MAX_MANIFEST_BYTES = 1 << 20


class ImageMissing(Exception):
    """No complete guest image in the cache directory."""


@dataclass(frozen=True)
class Image:
    """A complete, built image: its files and its manifest."""

    dir: str
    manifest: dict[str, Any]

    @property
    def key(self) -> str:
        return str(self.manifest.get("key", ""))

    @property
    def kernel(self) -> str:
        return os.path.join(self.dir, KERNEL)

    @property
    def initrd(self) -> str:
        return os.path.join(self.dir, INITRD)

    @property
    def rootfs(self) -> str:
        return os.path.join(self.dir, ROOTFS)

    @property
    def version(self) -> str:
        """Short human-readable id: the first 12 hex digits of the input hash."""
        return self.key[:12]


def load_image(cache_dir: str = DEFAULT_CACHE_DIR) -> Image:
    """The current image under ``cache_dir``; ImageMissing when there is none or it is incomplete."""
    d = os.path.realpath(os.path.join(cache_dir, CURRENT))
    path = os.path.join(d, MANIFEST)
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_MANIFEST_BYTES + 1)
    except OSError as exc:
        raise ImageMissing(f"no guest image in {cache_dir} ({exc.strerror}); run `mvctl image build`") from None
    try:
        manifest = json.loads(raw)
    except ValueError as exc:
        raise ImageMissing(f"{path}: unreadable manifest: {exc}") from None
    if not isinstance(manifest, dict) or not manifest.get("key"):
        raise ImageMissing(f"{path}: manifest has no key")
    img = Image(d, manifest)
    for p in (img.kernel, img.initrd, img.rootfs):
        if not os.path.isfile(p):
            raise ImageMissing(f"image {d} is incomplete: {os.path.basename(p)} missing")
    return img
