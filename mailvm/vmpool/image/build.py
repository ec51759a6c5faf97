"""Build the qemu backend's guest image from Debian packages: ``mvctl image build``.

Stages, each cached under ``cache_dir`` and redone only when its inputs change:

1. **kernel** -- Debian's cloud kernel (``linux-image-cloud-amd64`` resolved
   to its versioned package through the local apt cache), fetched with
   ``apt-get download`` and unpacked with ``dpkg -x``;
2. **rootfs** -- ``debootstrap --variant=minbase --include=python3,strace,...``
   from the Debian mirror named in apt's own sources (the only network access),
   trimmed (docs, man pages, apt lists);
2a. **documents** (``with_docs`` only) -- LibreOffice (core, Writer, Calc,
   Impress) and Chromium installed in the debootstrapped tree through its own
   apt (``--no-install-recommends``, plus one font family), part of the rootfs
   recipe and so of its key: a rootfs with them is its own cached tree; the
   bytes they add are measured and kept in the stamp and the manifest;
2b. **wine** (``with_wine`` only) -- in the rootfs tree: DWARF stripped from
   Wine's PE DLLs/EXEs (``x86_64-w64-mingw32-strip --strip-debug``) and its
   unix-side ``.so`` files (``strip --strip-debug``), then a ready Wine prefix
   made by the image's own wine in a chroot (``wineboot -i``, ``wineserver -w``)
   at :data:`mailvm.guest.wine.DEFAULT_TEMPLATE`;
3. **image** -- the guest agent (``mailvm/guest/*.py`` and ``mailvm/verdict.py``
   from this package, byte-compiled in the guest's Python) and PID 1's script
   are put in the tree, which becomes an ext4 file ``root.img`` (``mke2fs -d``,
   no loop mounts); an uncompressed initramfs (busybox-static, the virtio
   modules, ``/init``); the kernel's ``vmlinuz``; ``manifest.json`` (package
   versions, input hashes) written last.

The image's key is the hash of every input (kernel package and its hash,
the rootfs recipe, the agent's files, the init scripts, this recipe's
version); ``<cache_dir>/current`` points at the newest complete image.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import struct
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

from mailvm.guest import wine as guest_wine
from mailvm.vmpool.image import guestinit
from mailvm.vmpool.image.layout import (
    CURRENT, DEFAULT_CACHE_DIR, INITRD, KERNEL, MANIFEST, ROOTFS, Image, ImageMissing, load_image,
)

log = logging.getLogger(__name__)

#: bump when the recipe changes in a way the inputs below do not capture
RECIPE_VERSION = "1"
DEFAULT_SUITE = "bookworm"
KERNEL_META = "linux-image-cloud-amd64"
BASE_PACKAGES = ("python3", "strace", "bubblewrap", "iproute2", "iptables", "procps")
#: Windows runtimes: Wine (64-bit, and its 32-bit side below) and Mono for .NET assemblies
WINE_PACKAGES = ("wine64", "mono-runtime")
#: documents and web pages: LibreOffice opens Office files (macros run), headless Chromium renders HTML
DOCS_PACKAGES = ("libreoffice-core", "libreoffice-writer", "libreoffice-calc", "libreoffice-impress", "chromium",
                 "fonts-dejavu-core")
#: packages of another architecture (Debian multiarch), installed in the tree after debootstrap
WINE_FOREIGN = {"i386": ("wine32:i386",)}
BUSYBOX = "/bin/busybox"
STAGE_STAMP = ".mailvm-stage.json"
#: what the trim step deletes from the rootfs (paths relative to its root)
TRIM = ("usr/share/doc", "usr/share/man", "usr/share/info", "usr/share/locale", "var/cache/apt",
        "var/lib/apt/lists", "var/log")
COMMAND_TIMEOUT_S = 1800
#: bump when the Wine stage (stripping, prefix creation) changes in a way its inputs do not capture
WINE_STAGE_VERSION = "4"
WINE_STAMP = ".mailvm-wine-stage.json"
WINE_LIB = "usr/lib/x86_64-linux-gnu/wine"
WINE_LIB32 = "usr/lib/i386-linux-gnu/wine"
PE_STRIP = "x86_64-w64-mingw32-strip"
WINE_PREFIX_TIMEOUT_S = 600
ROOTFS_SLACK_BYTES = 64 << 20


class BuildError(Exception):
    """The image could not be built (the message says which step and why)."""


@dataclass
class BuildOptions:
    cache_dir: str = DEFAULT_CACHE_DIR
    suite: str = DEFAULT_SUITE
    mirror: str | None = None  # default: the Debian mirror in apt's sources
    kernel_package: str = KERNEL_META
    packages: tuple[str, ...] = BASE_PACKAGES
    with_wine: bool = False
    with_docs: bool = False
    force: bool = False
    keep: int = 2  # complete images kept (the current one included)


@dataclass
class BuildResult:
    image: Image
    cached: bool
    seconds: float
    stages: dict[str, str] = field(default_factory=dict)  # stage -> "cached" | "built"


# -- helpers -------------------------------------------------------------------
def _run(cmd: list[str], what: str, **kw: Any) -> subprocess.CompletedProcess:
    log.debug("run: %s", " ".join(cmd))
    try:
        res = subprocess.run(cmd, capture_output=True, timeout=kw.pop("timeout", COMMAND_TIMEOUT_S), **kw)
    except FileNotFoundError:
        raise BuildError(f"{what}: {cmd[0]} is not installed") from None
    except subprocess.TimeoutExpired:
        raise BuildError(f"{what}: {cmd[0]} timed out") from None
    if res.returncode != 0:
        tail = (res.stderr or b"")[-2000:].decode("utf-8", "replace")
        raise BuildError(f"{what}: {' '.join(cmd[:3])}... exited {res.returncode}: {tail}")
    return res


def sha256_file(path: str | Path, bufsize: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(bufsize):
            h.update(chunk)
    return h.hexdigest()


def _hash_obj(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _read_stamp(d: Path) -> dict | None:
    try:
        return json.loads((d / STAGE_STAMP).read_text())
    except (OSError, ValueError):
        return None


def _write_json_atomic(path: Path, obj: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


# -- the Debian mirror -------------------------------------------------------
def _sources_entries(root: str = "/etc/apt") -> Iterable[tuple[str, list[str]]]:
    """(uri, suites) from apt's one-line and deb822 source files."""
    files = [Path(root, "sources.list")] + sorted(Path(root, "sources.list.d").glob("*"))
    for f in files:
        try:
            text = f.read_text()
        except OSError:
            continue
        if f.suffix == ".sources":
            for stanza in re.split(r"\n\s*\n", text):
                fields: dict[str, str] = {}
                for line in stanza.splitlines():
                    if line.startswith("#") or ":" not in line or line[:1].isspace():
                        continue
                    k, _, v = line.partition(":")
                    fields[k.strip().lower()] = v.strip()
                if "deb" in fields.get("types", "").split():
                    for uri in fields.get("uris", "").split():
                        yield uri, fields.get("suites", "").split()
        else:
            for line in text.splitlines():
                parts = re.sub(r"\[[^]]*\]", "", line.split("#", 1)[0]).split()
                if len(parts) >= 3 and parts[0] == "deb":
                    yield parts[1], [parts[2]]


def find_mirror(suite: str = DEFAULT_SUITE, apt_root: str = "/etc/apt") -> str:
    """The URI of the apt source that serves ``suite`` itself (not -updates/-security)."""
    for uri, suites in _sources_entries(apt_root):
        if suite in suites:
            return uri.rstrip("/")
    raise BuildError(f"no apt source for suite {suite!r} in {apt_root}; pass --mirror")


# -- stage 1: kernel -------------------------------------------------------------
def resolve_kernel(meta: str = KERNEL_META) -> tuple[str, str]:
    """(package, version) of the kernel a meta package depends on, from the local apt cache."""
    pkg = meta
    if not re.match(r"linux-image-\d", meta):  # a meta package: follow its dependency
        out = _run(["apt-cache", "depends", meta], "resolving the kernel").stdout.decode()
        m = re.search(r"Depends:\s*(linux-image-\S+)", out)
        if not m:
            raise BuildError(f"apt-cache depends {meta}: no linux-image dependency (run apt-get update?)")
        pkg = m.group(1)
    out = _run(["apt-cache", "show", "--no-all-versions", pkg], "kernel version").stdout.decode()
    m = re.search(r"^Version:\s*(\S+)", out, re.M)
    if not m:
        raise BuildError(f"apt-cache show {pkg}: no version")
    return pkg, m.group(1)


def stage_kernel(cache: Path, meta: str) -> tuple[Path, dict, bool]:
    pkg, version = resolve_kernel(meta)
    d = cache / f"kernel-{pkg}_{version}"
    stamp = _read_stamp(d)
    if stamp and stamp.get("package") == pkg and stamp.get("version") == version:
        return d, stamp, True
    shutil.rmtree(d, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=".kernel-", dir=cache))
    try:
        os.chmod(tmp, 0o755)  # apt's _apt user writes the download here
        _run(["apt-get", "download", "-q", f"{pkg}={version}"], "downloading the kernel", cwd=tmp)
        debs = list(tmp.glob("*.deb"))
        if len(debs) != 1:
            raise BuildError(f"apt-get download {pkg}: expected one .deb, got {len(debs)}")
        deb_sha = sha256_file(debs[0])
        _run(["dpkg-deb", "-x", str(debs[0]), str(tmp / "x")], "unpacking the kernel")
        kvers = [p.name for p in (tmp / "x/lib/modules").iterdir()]
        vmlinuz = list((tmp / "x/boot").glob("vmlinuz-*"))
        if len(kvers) != 1 or len(vmlinuz) != 1:
            raise BuildError(f"{debs[0].name}: unexpected layout (modules {kvers}, kernels {vmlinuz})")
        debs[0].unlink()
        stamp = {"package": pkg, "version": version, "deb_sha256": deb_sha, "kernel_release": kvers[0]}
        _write_json_atomic(tmp / STAGE_STAMP, stamp)
        os.rename(tmp, d)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return d, stamp, False


def modinfo(path: Path) -> dict[str, str]:
    """The ``.modinfo`` section of a kernel module (ELF64 little-endian): ``key=value`` strings."""
    data = path.read_bytes()
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        raise BuildError(f"{path.name}: not an ELF64 little-endian module")
    shoff, = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)

    def section(i: int) -> tuple[int, int, int]:
        name, _type, _flags, _addr, off, size = struct.unpack_from("<IIQQQQ", data, shoff + i * shentsize)
        return name, off, size

    _, stroff, strsize = section(shstrndx)
    info: dict[str, str] = {}
    for i in range(shnum):
        name, off, size = section(i)
        end = data.index(b"\x00", stroff + name)
        if data[stroff + name:end] == b".modinfo":
            for item in data[off:off + size].split(b"\x00"):
                k, sep, v = item.decode("utf-8", "replace").partition("=")
                if sep:
                    info.setdefault(k, v)
    return info


def module_closure(modroot: Path, wanted: Iterable[str]) -> list[str]:
    """Module files (relative to ``modroot``) for ``wanted`` and their dependencies, dependencies first.

    Dependencies come from each module's own ``.modinfo`` (``depends=``), so
    no ``depmod`` is needed; names absent from the tree must be built in.
    """
    by_name: dict[str, Path] = {}
    for p in (modroot / "kernel").rglob("*.ko"):
        by_name[p.name[:-3].replace("-", "_")] = p
    builtin: set[str] = set()
    try:
        builtin = {os.path.basename(l).split(".ko")[0].replace("-", "_")
                   for l in (modroot / "modules.builtin").read_text().split()}
    except OSError:
        pass
    order: list[str] = []

    def visit(name: str, depth: int) -> None:
        name = name.replace("-", "_")
        if depth > 50:
            raise BuildError(f"module dependency loop at {name}")
        path = by_name.get(name)
        if path is None:
            if name in builtin:
                return
            raise BuildError(f"kernel module {name} is neither a module nor built in")
        rel = str(path.relative_to(modroot))
        if rel in order:
            return
        for dep in filter(None, modinfo(path).get("depends", "").split(",")):
            visit(dep, depth + 1)
        order.append(rel)

    for name in wanted:
        visit(name, 0)
    return order


# -- stage 2: rootfs ------------------------------------------------------------------
def _install_foreign(tree: Path, foreign: dict[str, tuple[str, ...]], extra: tuple[str, ...] = ()) -> None:
    """Multiarch packages (``wine32:i386``) and ``extra`` packages (the documents stage) in the debootstrapped
    tree: add the architecture, update, install, through the tree's own apt (its sources name the same mirror),
    with /proc and /dev bound for the duration."""
    if not foreign and not extra:
        return
    mounts: list[Path] = []
    try:
        for src in ("/proc", "/dev"):
            mp = tree / src.lstrip("/")
            mp.mkdir(exist_ok=True)
            if _mounted(mp):
                raise BuildError(f"{mp} is already a mount point (a build killed half-way?); unmount it first")
            _run(["mount", "--bind", src, str(mp)], f"mounting {src} into the tree")
            mounts.append(mp)
        env = ["/usr/bin/env", "-i", "PATH=/usr/sbin:/usr/bin:/sbin:/bin", "DEBIAN_FRONTEND=noninteractive"]
        for arch in sorted(foreign):
            _run(["chroot", str(tree), *env, "dpkg", "--add-architecture", arch], f"adding architecture {arch}")
        _run(["chroot", str(tree), *env, "apt-get", "update", "-qq"], "apt-get update in the tree")
        pkgs = sorted(p for ps in foreign.values() for p in ps) + sorted(extra)
        _run(["chroot", str(tree), *env, "apt-get", "install", "-y", "-qq", "--no-install-recommends", *pkgs],
             f"installing {' '.join(pkgs)} in the tree")
        _run(["chroot", str(tree), *env, "apt-get", "clean"], "apt-get clean in the tree")
    finally:
        for mp in reversed(mounts):
            res = subprocess.run(["umount", str(mp)], capture_output=True, timeout=60)
            if res.returncode != 0:
                subprocess.run(["umount", "-l", str(mp)], capture_output=True, timeout=60)


def _trim(tree: Path) -> None:
    for rel in TRIM:
        p = tree / rel
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
            p.mkdir(mode=0o755)


def stage_rootfs(cache: Path, suite: str, mirror: str, packages: tuple[str, ...],
                 foreign: dict[str, tuple[str, ...]] | None = None,
                 docs: tuple[str, ...] = ()) -> tuple[Path, dict, bool]:
    recipe = {"suite": suite, "mirror": mirror, "variant": "minbase", "packages": sorted(set(packages)),
              "trim": list(TRIM), "recipe": RECIPE_VERSION}
    if foreign:
        recipe["foreign"] = {arch: sorted(p) for arch, p in sorted(foreign.items())}
    if docs:
        recipe["docs"] = sorted(set(docs))
    key = _hash_obj(recipe)
    d = cache / f"rootfs-{key[:16]}"
    stamp = _read_stamp(d)
    if stamp and stamp.get("key") == key and (d / "tree/usr/bin").is_dir():
        return d, stamp, True
    if shutil.which("debootstrap") is None:
        raise BuildError("debootstrap is not installed (apt-get install debootstrap)")
    shutil.rmtree(d, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=".rootfs-", dir=cache))
    try:
        tree = tmp / "tree"
        _run(["debootstrap", "--variant=minbase", f"--include={','.join(recipe['packages'])}",
              suite, str(tree), mirror], "debootstrap")
        _trim(tree)
        before = _tree_bytes(tree)
        t_docs = time.monotonic()
        _install_foreign(tree, foreign or {}, tuple(recipe.get("docs", ())))
        _trim(tree)
        added = _tree_bytes(tree) - before
        out = _run(["dpkg-query", f"--admindir={tree}/var/lib/dpkg", "-W", "-f", "${Package}\t${Version}\n"],
                   "listing packages").stdout.decode()
        versions = dict(line.split("\t", 1) for line in out.splitlines() if "\t" in line)
        stamp = {"key": key, "recipe": recipe, "packages": versions}
        if docs:
            # what the documents stage added (with the multiarch packages when both are asked for), after the trim
            stamp["docs"] = {"packages": {p: versions.get(p, "?") for p in recipe["docs"]},
                             "added_bytes": added, "seconds": round(time.monotonic() - t_docs, 1),
                             "with_foreign": bool(foreign)}
        _write_json_atomic(tmp / STAGE_STAMP, stamp)
        os.rename(tmp, d)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return d, stamp, False


# -- stage 2b: Wine (stripped, with a ready prefix) ----------------------------------------
def _tool_version(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        raise BuildError(f"{tool} is not installed (apt-get install binutils-mingw-w64-x86-64 binutils)")
    first = _run([path, "--version"], f"{tool} --version").stdout.decode("utf-8", "replace").split("\n", 1)[0]
    return first.strip()


def _strip_batch(tool: str, files: list[Path], what: str) -> None:
    for i in range(0, len(files), 200):
        _run([tool, "--strip-debug", "-p", *map(str, files[i:i + 200])], what)


def _wine_files(tree: Path) -> tuple[list[Path], list[Path]]:
    """(PE files, unix-side ELF files) of the Wine installation in ``tree`` (regular files only)."""
    pe: list[Path] = []
    elf: list[Path] = []
    for p in sorted(list((tree / WINE_LIB).rglob("*")) + list((tree / WINE_LIB32).rglob("*"))):
        if p.is_symlink() or not p.is_file():
            continue
        with open(p, "rb") as f:
            magic = f.read(4)
        if magic[:2] == b"MZ":
            pe.append(p)
        elif magic == b"\x7fELF":
            elf.append(p)
    for loader in ("usr/lib/wine/wine64", "usr/lib/wine/wineserver64", "usr/lib/wine/wine",
                   "usr/lib/wine/wineserver32"):
        p = tree / loader
        if p.is_file() and not p.is_symlink():
            elf.append(p)
    return pe, elf


def _mounted(path: Path) -> bool:
    try:
        with open("/proc/self/mounts") as f:
            return any(line.split()[1] == str(path) for line in f)
    except OSError:
        return False


FONT_DIRS = ("usr/share/fonts", "usr/local/share/fonts", "usr/share/wine")


def _settle_font_dirs(tree: Path) -> None:
    """Whole-second mtimes on the font directories, old fontconfig caches removed.

    fontconfig's caches record their directory's mtime with nanoseconds;
    ``mke2fs -d`` keeps whole seconds only, so caches made on the build tree
    were stale in the guest and every Wine process tried to rewrite them (into
    the sandbox's read-only /var/cache/fontconfig: ``write_outside_workdir``).
    The caches the chroot's wineboot then writes stay valid in the guest.
    """
    for rel in FONT_DIRS:
        top = tree / rel
        if not top.is_dir():
            continue
        for dirpath, _dirs, _files in os.walk(top):
            st = os.stat(dirpath)
            os.utime(dirpath, ns=(st.st_atime_ns // 10**9 * 10**9, st.st_mtime_ns // 10**9 * 10**9))
    for cache in (tree / "var/cache/fontconfig").glob("*.cache-*"):
        cache.unlink()


def _make_wine_prefix(tree: Path, prefix: str) -> str:
    """A Wine prefix at ``prefix`` (a path inside ``tree``), made by the tree's own wine in a chroot; wine's version.

    /proc and /dev are bind-mounted into the tree for the duration (and always
    unmounted); Wine's socket and temporary home stay under the tree's /tmp and
    are removed.  Files are made with umask 022: readable, not writable, by the
    guest's sandbox users.
    """
    target = tree / prefix.lstrip("/")
    shutil.rmtree(target, ignore_errors=True)
    target.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
    home = "/tmp/mailvm-wineboot-home"
    env = guest_wine.prefix_env(prefix, home)
    script = ('umask 022; mkdir -p "$HOME" && /usr/lib/wine/wine64 wineboot -i; rc=$?; '
              '/usr/lib/wine/wineserver -w; rm -rf "$HOME" /tmp/.wine-0 /tmp/wine-*; exit $rc')
    mounts: list[Path] = []
    try:
        for src in ("/proc", "/dev"):
            mp = tree / src.lstrip("/")
            mp.mkdir(exist_ok=True)
            if _mounted(mp):
                raise BuildError(f"{mp} is already a mount point (a build killed half-way?); unmount it first")
            _run(["mount", "--bind", src, str(mp)], f"mounting {src} into the tree")
            mounts.append(mp)
        _run(["chroot", str(tree), "/usr/bin/env", "-i", *(f"{k}={v}" for k, v in env.items()),
              "/bin/sh", "-c", script], "creating the Wine prefix", timeout=WINE_PREFIX_TIMEOUT_S)
        version = _run(["chroot", str(tree), "/usr/lib/wine/wine64", "--version"], "wine --version").stdout
    finally:
        for mp in reversed(mounts):
            res = subprocess.run(["umount", str(mp)], capture_output=True, timeout=60)
            if res.returncode != 0:
                subprocess.run(["umount", "-l", str(mp)], capture_output=True, timeout=60)
    if not (target / "system.reg").is_file():
        raise BuildError(f"wineboot made no prefix at {prefix}")
    try:
        (target / "wineserver").unlink()  # the server's lock file, not part of the prefix
    except FileNotFoundError:
        pass
    for dirpath, dirnames, filenames in os.walk(target):  # readable by every sandbox user, writable by none
        os.chmod(dirpath, 0o755)
        for n in filenames:
            p = os.path.join(dirpath, n)
            if not os.path.islink(p):
                os.chmod(p, os.stat(p).st_mode & 0o755 | 0o444)
    return version.decode("utf-8", "replace").strip()[:100]


def _dedup_prefix(tree: Path, prefix: str) -> int:
    """Hard-link the prefix's copies of Wine's own files (wineboot copies its DLLs into system32) to
    the originals: one inode each in root.img and in the guest's page cache.  Bytes saved."""
    by_size: dict[int, list[Path]] = {}
    for p in list((tree / WINE_LIB).rglob("*")) + list((tree / WINE_LIB32).rglob("*")):
        if p.is_file() and not p.is_symlink():
            by_size.setdefault(p.stat().st_size, []).append(p)
    saved = 0
    for p in sorted((tree / prefix.lstrip("/")).rglob("*")):
        if p.is_symlink() or not p.is_file():
            continue
        st = p.stat()
        if st.st_nlink > 1:
            continue
        data = None
        for cand in by_size.get(st.st_size, ()):
            if data is None:
                data = p.read_bytes()
            if cand.read_bytes() == data:
                tmp = p.with_name(p.name + ".mailvm-link")
                os.link(cand, tmp)
                os.replace(tmp, p)
                saved += st.st_size
                break
    return saved


def stage_wine(rdir: Path, rstamp: dict, prefix: str = guest_wine.DEFAULT_TEMPLATE) -> tuple[dict, bool]:
    """Strip Wine in the rootfs tree and make its ready prefix; (stamp, cached).  Idempotent, in place."""
    tree = rdir / "tree"
    if not (tree / "usr/lib/wine/wine64").exists():
        raise BuildError("the rootfs has no /usr/lib/wine/wine64 (wine64 not installed)")
    recipe = {"stage": WINE_STAGE_VERSION, "rootfs_key": rstamp["key"], "prefix": prefix,
              "prefix_env": guest_wine.prefix_env(prefix, "HOME"), "pe_strip": _tool_version(PE_STRIP),
              "strip": _tool_version("strip")}
    key = _hash_obj(recipe)
    try:
        stamp = json.loads((rdir / WINE_STAMP).read_text())
    except (OSError, ValueError):
        stamp = None
    if stamp and stamp.get("key") == key and (tree / prefix.lstrip("/") / "system.reg").is_file():
        return stamp, True
    try:
        (rdir / WINE_STAMP).unlink()
    except FileNotFoundError:
        pass
    t0 = time.monotonic()
    before = _tree_bytes(tree / WINE_LIB) + _tree_bytes(tree / WINE_LIB32)
    pe, elf = _wine_files(tree)
    _strip_batch(PE_STRIP, pe, "stripping Wine's PE files")
    _strip_batch("strip", elf, "stripping Wine's unix libraries")
    after = _tree_bytes(tree / WINE_LIB) + _tree_bytes(tree / WINE_LIB32)
    t1 = time.monotonic()
    _settle_font_dirs(tree)
    version = _make_wine_prefix(tree, prefix)
    linked = _dedup_prefix(tree, prefix)
    stamp = {"key": key, "recipe": recipe, "wine_version": version,
             "wow64": (tree / prefix.lstrip("/") / "drive_c/windows/syswow64/kernel32.dll").exists(),
             "prefix": prefix, "prefix_bytes": _tree_bytes(tree / prefix.lstrip("/")), "prefix_linked_bytes": linked,
             "wine_lib_bytes": {"before": before, "after": after}, "pe_files": len(pe), "elf_files": len(elf),
             "seconds": {"strip": round(t1 - t0, 1), "prefix": round(time.monotonic() - t1, 1)}}
    _write_json_atomic(rdir / WINE_STAMP, stamp)
    return stamp, False


# -- stage 3: the image ---------------------------------------------------------------
def agent_files() -> dict[str, Path]:
    """Files of this package the guest needs: path inside the guest's /opt/mailvm -> source."""
    pkg = Path(__file__).resolve().parents[2]  # .../mailvm
    files = {"mailvm/verdict.py": pkg / "verdict.py"}
    for p in sorted((pkg / "guest").glob("*.py")):
        files[f"mailvm/guest/{p.name}"] = p
    return files


def _input_key(kstamp: dict, rstamp: dict, agent_hashes: dict[str, str], modules: tuple[str, ...],
               wstamp: dict | None = None) -> tuple[str, dict]:
    busybox_sha = sha256_file(BUSYBOX) if os.path.exists(BUSYBOX) else "missing"
    inputs = {
        "recipe": RECIPE_VERSION,
        "kernel": {k: kstamp[k] for k in ("package", "version", "deb_sha256", "kernel_release")},
        "rootfs_key": rstamp["key"],
        "agent": agent_hashes,
        "initramfs_init_sha256": hashlib.sha256(guestinit.INITRAMFS_INIT.encode()).hexdigest(),
        "guest_init_sha256": hashlib.sha256(guestinit.GUEST_INIT.encode()).hexdigest(),
        "initramfs_modules": list(modules),
        "busybox_sha256": busybox_sha,
    }
    if wstamp is not None:
        inputs["wine_key"] = wstamp["key"]
    return _hash_obj(inputs), inputs


def _install_agent(tree: Path, files: dict[str, Path]) -> None:
    opt = tree / "opt/mailvm"
    shutil.rmtree(opt, ignore_errors=True)
    (opt / "mailvm/guest").mkdir(parents=True, mode=0o755)
    (opt / "mailvm/__init__.py").write_text('"""mailvm guest side (agent only)."""\n')
    (opt / "mailvm/guest/__init__.py").write_text("")
    for rel, src in files.items():
        shutil.copyfile(src, opt / rel)
    init = tree / "sbin/mailvm-init"
    init.write_text(guestinit.GUEST_INIT)
    init.chmod(0o755)
    # byte-compile with the guest's own Python (same tree): imports cost less under emulation
    _run(["chroot", str(tree), "python3", "-m", "compileall", "-q", "/opt/mailvm"], "byte-compiling the agent")


def _make_initramfs(kdir: Path, kstamp: dict, out: Path, modules: tuple[str, ...]) -> list[str]:
    if not os.path.exists(BUSYBOX):
        raise BuildError(f"{BUSYBOX} missing (apt-get install busybox-static)")
    modroot = kdir / "x/lib/modules" / kstamp["kernel_release"]
    mods = module_closure(modroot, modules)
    with tempfile.TemporaryDirectory(prefix=".initramfs-", dir=out.parent) as t:
        root = Path(t)
        for sub in ("bin", "etc", "lib/modules", "proc", "sys", "dev", "lower", "rw", "newroot"):
            (root / sub).mkdir(parents=True, exist_ok=True)
        shutil.copy2(BUSYBOX, root / "bin/busybox")
        names = []
        for m in mods:
            name = os.path.basename(m)
            shutil.copyfile(modroot / m, root / "lib/modules" / name)
            names.append(name)
        (root / "etc/modules.order").write_text("\n".join(names) + "\n")
        init = root / "init"
        init.write_text(guestinit.INITRAMFS_INIT)
        init.chmod(0o755)
        listing = sorted(str(p.relative_to(root)) for p in root.rglob("*"))
        with open(out, "wb") as f:
            res = subprocess.run(["cpio", "--quiet", "-o", "-H", "newc", "-R", "0:0"], cwd=root,
                                 input="\n".join(listing).encode(), stdout=f, stderr=subprocess.PIPE,
                                 timeout=COMMAND_TIMEOUT_S)
        if res.returncode != 0:
            raise BuildError(f"cpio failed: {res.stderr.decode(errors='replace')[-500:]}")
    return names


def _tree_bytes(tree: Path) -> int:
    """Disk use of a tree in 4 KiB blocks, hard-linked files counted once."""
    total = 0
    seen: set[tuple[int, int]] = set()
    for dirpath, dirnames, filenames in os.walk(tree):
        total += 4096 * (len(dirnames) + 1)
        for n in filenames:
            try:
                st = os.lstat(os.path.join(dirpath, n))
            except OSError:
                continue
            if st.st_nlink > 1:
                if (st.st_dev, st.st_ino) in seen:
                    continue
                seen.add((st.st_dev, st.st_ino))
            total += (st.st_size + 4095) // 4096 * 4096
    return total


def _make_rootfs_image(tree: Path, out: Path) -> int:
    size = _tree_bytes(tree) * 11 // 10 + ROOTFS_SLACK_BYTES
    size = (size + (1 << 20) - 1) >> 20 << 20
    _run(["mke2fs", "-q", "-F", "-t", "ext4", "-O", "^has_journal", "-m", "0", "-L", "mailvm-root",
          "-d", str(tree), str(out), f"{size >> 10}k"], "making root.img")
    return size


def status(cache_dir: str = DEFAULT_CACHE_DIR) -> dict[str, Any]:
    """What is built: the current image's manifest summary, or why there is none."""
    try:
        img = load_image(cache_dir)
    except ImageMissing as exc:
        return {"built": False, "cache_dir": cache_dir, "reason": str(exc)}
    m = img.manifest
    return {
        "built": True,
        "cache_dir": cache_dir,
        "dir": img.dir,
        "version": img.version,
        "built_at": m.get("built_at"),
        "kernel": m.get("inputs", {}).get("kernel", {}).get("version"),
        "packages": len(m.get("packages", {})),
        "with_wine": m.get("with_wine", False),
        "wine": m.get("wine"),
        "with_docs": m.get("with_docs", False),
        "docs": m.get("docs"),
        "files": m.get("files", {}),
        "size_bytes": sum(int(f.get("bytes", 0)) for f in m.get("files", {}).values() if isinstance(f, dict)),
    }


def _prune(cache: Path, keep_dir: Path, keep: int) -> None:
    images = sorted((p for p in cache.glob("image-*") if p.is_dir()), key=lambda p: p.stat().st_mtime, reverse=True)
    kept = 0
    for p in images:
        if p == keep_dir or kept < keep - 1:
            kept += p != keep_dir
            continue
        shutil.rmtree(p, ignore_errors=True)


def build(opts: BuildOptions, progress: Callable[[str], None] | None = None) -> BuildResult:
    """Build (or find cached) the guest image; BuildError on failure.  ``progress(stage)`` per step."""
    t0 = time.monotonic()
    note = progress or (lambda stage: None)
    if os.geteuid() != 0:
        raise BuildError("building the guest image needs root (debootstrap, chroot)")
    cache = Path(opts.cache_dir)
    cache.mkdir(parents=True, exist_ok=True, mode=0o755)
    packages = tuple(opts.packages) + (WINE_PACKAGES if opts.with_wine else ())
    stages: dict[str, str] = {}

    note("kernel")
    kdir, kstamp, cached = stage_kernel(cache, opts.kernel_package)
    stages["kernel"] = "cached" if cached else "built"
    note("rootfs")
    mirror = opts.mirror or find_mirror(opts.suite)
    rdir, rstamp, cached = stage_rootfs(cache, opts.suite, mirror, packages,
                                        WINE_FOREIGN if opts.with_wine else None,
                                        DOCS_PACKAGES if opts.with_docs else ())
    stages["rootfs"] = "cached" if cached else "built"
    wstamp: dict | None = None
    if opts.with_wine:
        note("wine")
        wstamp, cached = stage_wine(rdir, rstamp)
        stages["wine"] = "cached" if cached else "built"

    files = agent_files()
    agent_hashes = {rel: sha256_file(src) for rel, src in files.items()}
    key, inputs = _input_key(kstamp, rstamp, agent_hashes, guestinit.INITRAMFS_MODULES, wstamp)
    out = cache / f"image-{key[:16]}"
    if not opts.force:
        try:
            img = load_image(str(cache))
            if img.key == key:
                stages["image"] = "cached"
                return BuildResult(img, True, time.monotonic() - t0, stages)
        except ImageMissing:
            pass
    note("image")
    tmp = Path(tempfile.mkdtemp(prefix=".image-", dir=cache))
    try:
        os.chmod(tmp, 0o755)
        tree = rdir / "tree"
        _install_agent(tree, files)
        shutil.copyfile(next((kdir / "x/boot").glob("vmlinuz-*")), tmp / KERNEL)
        modules = _make_initramfs(kdir, kstamp, tmp / INITRD, guestinit.INITRAMFS_MODULES)
        note("root.img")
        root_bytes = _make_rootfs_image(tree, tmp / ROOTFS)
        for p in (tmp / KERNEL, tmp / INITRD, tmp / ROOTFS):
            p.chmod(0o444)
        manifest = {
            "key": key,
            "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "inputs": inputs,
            "rootfs_recipe": rstamp["recipe"],
            "with_wine": opts.with_wine,
            "with_docs": opts.with_docs,
            # the guest's agent rings the host back on its device doorbell (guestinit: --answer bell)
            "agent_answers": True,
            "docs": rstamp.get("docs"),
            "wine": None if wstamp is None else {
                "version": wstamp["wine_version"], "prefix": wstamp["prefix"],
                "prefix_bytes": wstamp["prefix_bytes"], "prefix_linked_bytes": wstamp.get("prefix_linked_bytes", 0),
                "wine_lib_bytes": wstamp["wine_lib_bytes"], "wow64": wstamp.get("wow64", False),
                "stage_key": wstamp["key"]},
            "packages": rstamp["packages"],
            "initramfs_modules_loaded": modules,
            "files": {
                KERNEL: {"sha256": sha256_file(tmp / KERNEL), "bytes": (tmp / KERNEL).stat().st_size},
                INITRD: {"sha256": sha256_file(tmp / INITRD), "bytes": (tmp / INITRD).stat().st_size},
                ROOTFS: {"bytes": root_bytes},
            },
        }
        _write_json_atomic(tmp / MANIFEST, manifest)
        shutil.rmtree(out, ignore_errors=True)
        os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    link_tmp = cache / f".{CURRENT}.tmp"
    try:
        link_tmp.unlink()
    except FileNotFoundError:
        pass
    os.symlink(out.name, link_tmp)
    os.replace(link_tmp, cache / CURRENT)
    _prune(cache, out, opts.keep)
    stages["image"] = "built"
    return BuildResult(load_image(str(cache)), False, time.monotonic() - t0, stages)


__all__ = ["BuildError", "BuildOptions", "BuildResult", "build", "status", "find_mirror", "resolve_kernel",
           "module_closure", "agent_files", "BASE_PACKAGES", "DOCS_PACKAGES"]
