"""``mvctl image build|status``: the qemu backend's guest image (kernel, initramfs, root fs).

``build`` makes or refreshes the cached image from Debian packages (see
``mailvm.vmpool.image.build``) with a progress bar; it is a no-op when no
input changed.  ``status`` shows the current image's version and manifest
summary (exit 1 when none is built).
"""

from __future__ import annotations

import argparse
import logging
import os
from typing import Any

from mailvm.cli.common import EXIT_BAD, EXIT_ERROR, EXIT_OK, config_from, print_json

log = logging.getLogger(__name__)

STAGES = ("kernel", "rootfs", "image", "root.img")
WINE_STAGES = ("kernel", "rootfs", "wine", "image", "root.img")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("image", help="the qemu backend's guest image: build, status",
                       description="Build or inspect the guest image the qemu backend boots.")
    isub = p.add_subparsers(dest="image_command", metavar="ACTION")
    isub.required = True
    b = isub.add_parser("build", help="build (or refresh) the guest image from Debian packages")
    b.add_argument("--cache-dir", help="image cache (default: [pool] image_dir, else /var/lib/mailvm/image)")
    b.add_argument("--mirror", help="Debian mirror URL (default: the one in apt's sources)")
    b.add_argument("--suite", default=None, help="Debian suite (default bookworm)")
    b.add_argument("--with-wine", action="store_true",
                   help="add wine64 (DLLs stripped, a ready prefix) for Windows samples; give such guests "
                        "[pool] guest_mem_mib >= 512")
    b.add_argument("--with-docs", action="store_true",
                   help="add LibreOffice and Chromium for Office documents and HTML (about +600 MB)")
    b.add_argument("--force", action="store_true", help="rebuild the image even when no input changed")
    b.add_argument("--json", action="store_true", help="print the result as JSON")
    b.set_defaults(func=cmd_build)
    s = isub.add_parser("status", help="the current image: version, kernel, packages, files")
    s.add_argument("--cache-dir")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_status)


def _cache_dir(args: argparse.Namespace) -> str:
    if args.cache_dir:
        return args.cache_dir
    from mailvm.vmpool.image.layout import DEFAULT_CACHE_DIR

    cfg_path = getattr(args, "config", None) or os.environ.get("MAILVM_CONFIG")
    if cfg_path or os.path.exists("/etc/mailvm/mailvm.toml"):
        return str(getattr(config_from(args).pool, "image_dir", DEFAULT_CACHE_DIR))
    return DEFAULT_CACHE_DIR


def cmd_build(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from mailvm.vmpool.image import build as B

    opts = B.BuildOptions(cache_dir=_cache_dir(args), mirror=args.mirror, with_wine=args.with_wine,
                          with_docs=args.with_docs, force=args.force)
    if args.suite:
        opts.suite = args.suite
    bar = tqdm(total=len(WINE_STAGES if args.with_wine else STAGES), unit="step", disable=args.json, desc="image")

    def progress(stage: str) -> None:
        bar.set_description(f"image: {stage}")
        bar.update(1)

    try:
        result = B.build(opts, progress=progress)
    except B.BuildError as exc:
        bar.close()
        print(f"mvctl image build: {exc}")
        return EXIT_ERROR
    bar.update(bar.total - bar.n)
    bar.close()
    out: dict[str, Any] = {
        "dir": result.image.dir, "version": result.image.version, "cached": result.cached,
        "seconds": round(result.seconds, 1), "stages": result.stages,
    }
    if args.json:
        print_json(out)
    else:
        state = "up to date" if result.cached else "built"
        print(f"image {result.image.version} {state} in {out['seconds']} s: {result.image.dir}")
    return EXIT_OK


def cmd_status(args: argparse.Namespace) -> int:
    from mailvm.vmpool.image.build import status

    st = status(_cache_dir(args))
    if args.json:
        print_json(st)
    elif not st["built"]:
        print(st["reason"])
    else:
        print(f"image {st['version']} built {st['built_at']} in {st['dir']}")
        wine = st.get("wine") or {}
        wine_text = "no" if not st["with_wine"] else (
            f"{wine.get('version', 'yes')}, prefix {wine.get('prefix', '?')} ({wine.get('prefix_bytes', 0) / 1e6:.0f} MB)")
        print(f"kernel {st['kernel']}, {st['packages']} packages, wine: {wine_text}")
        docs = st.get("docs") or {}
        if st.get("with_docs"):
            print(f"documents: {', '.join(sorted(docs.get('packages', {})))} (+{docs.get('added_bytes', 0) / 1e6:.0f} MB)")
        for name, f in st["files"].items():
            print(f"  {name:<11} {f.get('bytes', 0) / 1e6:8.1f} MB")
        print(f"  {'total':<11} {st.get('size_bytes', 0) / 1e6:8.1f} MB")
    return EXIT_OK if st["built"] else EXIT_BAD
