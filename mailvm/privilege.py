"""Least privilege for the scan workers: the processes that parse hostile bytes.

``mailvm serve`` starts as root (the detonation pool needs namespaces, cgroups and
QEMU).  Its scan workers, which read every message, archive, document and download,
do not: each one drops to ``[milter] worker_user`` (``mailvm`` by default, made by
``make setup``) right after it has read the configuration and compiled the YARA rules,
and runs with resource limits and ``no_new_privs``.

What the workers write is shared with the root side through group permissions:
the spool, the scanned table and its pins, and the job queue's directories are
owned by the worker user's group with mode ``2770`` (set-group-id, so what either
side creates belongs to that group), and every mailvm process runs with umask
``007``.  :func:`share_dirs` sets this up at start (and repairs what an earlier run
as root left); :func:`plan_workers` says whether the workers can drop at all, and
why not (no such user, not root, a directory the user cannot reach): then they keep
running as root, loudly, rather than fail mail.

Standard library only (``os``, ``pwd``, ``resource``): no library covers dropping
to a user with a bounded set of limits, and the few calls are the documented ones.
"""

from __future__ import annotations

import ctypes
import logging
import os
import pwd
import resource
import stat
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

log = logging.getLogger(__name__)

#: what every mailvm process creates is readable and writable by the worker group, by nobody else
UMASK = 0o007
SHARED_MODE = 0o2770
#: entries fixed per shared directory at start (a large table is repaired over several starts)
MAX_REPAIR_ENTRIES = 200_000
PR_SET_NO_NEW_PRIVS = 38
#: the database file of a diskcache directory
DISKCACHE_DB = "cache.db"


@dataclass(frozen=True)
class WorkerIdentity:
    """Who the scan workers become, and the limits they run under."""

    user: str
    uid: int
    gid: int
    max_file_bytes: int  # RLIMIT_FSIZE: the largest file a worker may write (the table's size bounds it)
    max_address_space: int  # RLIMIT_AS
    max_open_files: int = 4096  # RLIMIT_NOFILE


def shared_paths(cfg: Any) -> list[Path]:
    """The directories a scan worker writes: spool, local table and its pins, the job queue's."""
    work = Path(cfg.pool.work_dir)
    paths = [Path(cfg.spool.dir)] + cache_dirs(cfg)
    if cfg.pool.queue_url:
        paths.append(work / "redis-jobs")
    else:
        paths += [work / "jobs", work / "jobs" / "files"]
    return paths


def cache_dirs(cfg: Any) -> list[Path]:
    """The diskcache (SQLite) directories among them: their database is made by the worker user
    (SQLite creates a database 0644, whoever asks: a root-made one would be read-only to the workers)."""
    from mailvm.pins import pins_path

    dirs = [] if cfg.scantable.url else [Path(cfg.scantable.path), pins_path(cfg.scantable.path)]
    if not cfg.pool.queue_url:
        dirs.append(Path(cfg.pool.work_dir) / "jobs" / "queue")
    return dirs


def _reachable(path: Path, uid: int, gids: set[int]) -> str | None:
    """None when ``uid`` can traverse every directory above ``path``; else the first that stops it."""
    for parent in list(path.parents)[::-1]:
        try:
            st = os.stat(parent)
        except FileNotFoundError:
            return None  # created below by root with the shared mode
        mode = st.st_mode
        ok = (mode & stat.S_IXOTH or (st.st_gid in gids and mode & stat.S_IXGRP)
              or (st.st_uid == uid and mode & stat.S_IXUSR))
        if not ok:
            return f"{parent} (mode {stat.S_IMODE(mode):04o}, owner {st.st_uid}:{st.st_gid})"
    return None


def plan_workers(cfg: Any) -> tuple[WorkerIdentity | None, str]:
    """(identity, "") when the scan workers can run as ``[milter] worker_user``; else (None, why not)."""
    user = cfg.milter.worker_user
    if not user or user == "root":
        return None, "milter.worker_user is empty: the scan workers run as root"
    if os.geteuid() != 0:
        return None, f"mailvm runs as uid {os.geteuid()}, not root: the workers keep that user"
    try:
        pw = pwd.getpwnam(user)
    except KeyError:
        return None, f"milter.worker_user {user!r} does not exist (make setup creates 'mailvm')"
    gids = {pw.pw_gid}
    # the interpreter's standard library and the installed code too: a worker imports lazily
    code = [Path(os.__file__).parent / "x", Path(sys.prefix) / "x", Path(__file__).parent / "x"]
    work = Path(cfg.pool.work_dir)
    for path in shared_paths(cfg) + [Path(cfg.triage.yara_rules_dir)] + code:
        # share_dirs makes the pool's work directory traversable for the group and repairs the
        # shared directories in it: only what lies above it must be open already
        stop = _reachable(work if work in path.parents else path, pw.pw_uid, gids)
        if stop:
            what = path.parent if path.name == "x" else path
            return None, f"user {user} cannot reach {what}: {stop} is closed to it"
    table = 0 if cfg.scantable.url else cfg.scantable.size_limit_bytes
    biggest = max(table, cfg.extract.max_total_bytes, cfg.extract.max_message_bytes, cfg.links.max_bytes)
    return WorkerIdentity(user, pw.pw_uid, pw.pw_gid, max_file_bytes=2 * biggest + (64 << 20),
                          max_address_space=max(8 << 30, 4 * cfg.extract.max_total_bytes)), ""


def share_dirs(cfg: Any, ident: WorkerIdentity) -> list[str]:
    """Create the shared directories (group ``ident.gid``, mode 2770) and repair what is in them;
    the problems found (each also logged). Run as root before the workers start."""
    problems: list[str] = []
    work = Path(cfg.pool.work_dir)
    caches = set(cache_dirs(cfg))
    for path in shared_paths(cfg):
        try:
            path.mkdir(parents=True, exist_ok=True)
            if work in path.parents:
                _traversable(work, ident.gid)
            _repair(path, ident)
            if path in caches:
                _database(path / DISKCACHE_DB, ident)
        except OSError as exc:
            problems.append(f"{path}: {exc}")
            log.error("cannot share %s with the scan workers (%s): they will fail to write there", path, exc)
    return problems


def _database(db: Path, ident: WorkerIdentity) -> None:
    """An empty SQLite database (a valid one) owned by the worker user, mode 0660, unless there is one;
    SQLite gives its -wal and -shm files the database's mode and owner."""
    try:
        fd = os.open(db, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o660)
    except FileExistsError:
        return
    try:
        os.fchown(fd, ident.uid, ident.gid)
        os.fchmod(fd, 0o660)
    finally:
        os.close(fd)


def _traversable(path: Path, gid: int) -> None:
    """The pool's work directory stays the root side's; the worker group may only pass through it."""
    st = os.stat(path)
    if st.st_gid != gid:
        os.chown(path, -1, gid)
    os.chmod(path, stat.S_IMODE(st.st_mode) | stat.S_IXGRP)


def _entries(root: Path) -> Iterator[tuple[str, os.stat_result]]:
    """Every entry under ``root`` that is not a symbolic link, with its lstat, at most
    MAX_REPAIR_ENTRIES of them (a warning says when the rest are left as they are)."""
    seen = 0
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            seen += 1
            if seen > MAX_REPAIR_ENTRIES:
                log.warning("%s: more than %d entries, the rest keep their owner", root, MAX_REPAIR_ENTRIES)
                return
            full = os.path.join(dirpath, name)
            try:
                st = os.lstat(full)
            except FileNotFoundError:
                continue
            if not stat.S_ISLNK(st.st_mode):
                yield full, st


def _repair(root: Path, ident: WorkerIdentity) -> None:
    os.chown(root, ident.uid, ident.gid)
    os.chmod(root, SHARED_MODE)
    for full, st in _entries(root):
        try:
            if st.st_gid != ident.gid:
                os.chown(full, -1, ident.gid)
            want = stat.S_IMODE(st.st_mode) | stat.S_IRGRP | stat.S_IWGRP
            if stat.S_ISDIR(st.st_mode):
                want |= stat.S_IXGRP | stat.S_ISGID
            if want != stat.S_IMODE(st.st_mode):
                os.chmod(full, want)
        except FileNotFoundError:
            continue


def drop_privileges(ident: WorkerIdentity) -> None:
    """Become ``ident`` for good (no way back to root), with resource limits and no_new_privs.

    Raises OSError when any step fails: a worker that cannot drop must not go on as root."""
    for res, value in ((resource.RLIMIT_CORE, 0), (resource.RLIMIT_FSIZE, ident.max_file_bytes),
                       (resource.RLIMIT_AS, ident.max_address_space), (resource.RLIMIT_NOFILE, ident.max_open_files)):
        soft, hard = resource.getrlimit(res)
        cap = value if hard == resource.RLIM_INFINITY else min(value, hard)
        resource.setrlimit(res, (cap, cap))
    os.umask(UMASK)
    if os.getresuid() != (ident.uid,) * 3:  # already that user (forked by a process that dropped): limits only
        os.setgroups([ident.gid])
        os.setresgid(ident.gid, ident.gid, ident.gid)
        os.setresuid(ident.uid, ident.uid, ident.uid)
    if os.getresuid() != (ident.uid,) * 3 or os.getresgid() != (ident.gid,) * 3:
        raise OSError(f"still {os.getresuid()}/{os.getresgid()} after dropping to {ident.user}")
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
            log.warning("no_new_privs not set: errno %d", ctypes.get_errno())
    except (OSError, AttributeError) as exc:  # not Linux
        log.warning("no_new_privs not set: %s", exc)


# --------------------------------------------------------------------------------------
# The milter process itself (mailvm serve)
# --------------------------------------------------------------------------------------


def _readable(path: Path, uid: int, gids: set[int]) -> bool:
    try:
        st = os.stat(path)
    except OSError:
        return False
    m = st.st_mode
    return bool(m & stat.S_IROTH or (st.st_gid in gids and m & stat.S_IRGRP) or (st.st_uid == uid and m & stat.S_IRUSR))


def plan_service(cfg: Any, config_path: str | None) -> tuple[WorkerIdentity | None, str]:
    """(identity, "") when ``mailvm serve`` itself can run as ``[milter] worker_user`` once it has
    started (the pool service keeps root in a process of its own); else (None, why not).

    Besides what the workers need (:func:`plan_workers`) the milter re-reads the configuration,
    the policy files and the notice templates on SIGHUP: the user must be able to read them.
    The quarantine, the release key and the console's files are given to it (:func:`own_service_paths`).
    """
    ident, why = plan_workers(cfg)
    if ident is None:
        return None, why
    gids = {ident.gid}
    files = [Path(config_path)] if config_path else []
    policy_dir = Path(cfg.milter.policy_dir)
    if policy_dir.is_dir():
        if _reachable(policy_dir / "x", ident.uid, gids) or not _readable(policy_dir, ident.uid, gids):
            return None, f"user {ident.user} cannot list {policy_dir}"
        files += sorted(policy_dir.glob("*.toml"))
    template_dir = Path(cfg.notify.template_dir)
    if template_dir.is_dir():
        files += sorted(template_dir.glob("*.txt"))
    for f in files:
        stop = _reachable(f, ident.uid, gids)
        if stop or not _readable(f, ident.uid, gids):
            return None, f"user {ident.user} cannot read {f}" + (f": {stop} is closed to it" if stop else "")
    for d in (Path(cfg.quarantine.dir), Path(cfg.quarantine.release_key).parent):
        stop = _reachable(d, ident.uid, gids)
        if stop:
            return None, f"user {ident.user} cannot reach {d}: {stop} is closed to it"
    return ident, ""


def _own_tree(root: Path, uid: int, gid: int) -> None:
    """``root`` and everything in it (bounded) owned by uid:gid; modes unchanged (private stays private)."""
    os.chown(root, uid, gid)
    for full, st in _entries(root):
        try:
            if (st.st_uid, st.st_gid) != (uid, gid):
                os.chown(full, uid, gid)
        except FileNotFoundError:
            continue


def own_service_paths(cfg: Any, ident: WorkerIdentity) -> list[str]:
    """Give the milter user what it writes after the drop: the quarantine (with its audit log and
    hold records; modes stay 0700/0600), the release key and the console's session key (0600),
    and read access to the console's users file (group, 0640).  Run as root; the problems found."""
    problems: list[str] = []
    quarantine = Path(cfg.quarantine.dir)
    try:
        quarantine.mkdir(mode=0o700, parents=True, exist_ok=True)
        _own_tree(quarantine, ident.uid, ident.gid)
    except OSError as exc:
        problems.append(f"{quarantine}: {exc}")
    for key in (Path(cfg.quarantine.release_key), Path(cfg.web.secret_file)):
        try:
            if key.exists():
                os.chown(key, ident.uid, ident.gid)
                os.chmod(key, 0o600)
        except OSError as exc:
            problems.append(f"{key}: {exc}")
    users = Path(cfg.web.users_file)
    try:
        if users.exists():
            os.chown(users, -1, ident.gid)
            os.chmod(users, 0o640)
    except OSError as exc:
        problems.append(f"{users}: {exc}")
    for p in problems:
        log.error("cannot give %s to user %s", p, ident.user)
    return problems


def inherit_owner(fd: int, directory: str | os.PathLike[str]) -> None:
    """A file that root (``mvctl``) creates in a directory the milter user owns gets that owner and
    group, so the milter can still read it (a quarantine item's state after a release, the audit
    log).  No-op unless running as root in a directory root does not own."""
    if os.geteuid() != 0:
        return
    try:
        st = os.stat(directory)
        if st.st_uid != 0:
            os.fchown(fd, st.st_uid, st.st_gid)
    except OSError as exc:
        log.warning("cannot give a new file in %s to its owner: %s", directory, exc)
