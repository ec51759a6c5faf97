"""Global configuration (``/etc/mailvm/mailvm.toml``): typed sections, validated once.

Every section is a dataclass whose fields declare their type and, through
``field(metadata=...)``, their bounds.  :func:`load_config` reads the TOML
file, refuses unknown sections and keys, checks types and ranges, and raises
:class:`ConfigError` naming the file, the key and the problem.  Code that
handles mail only ever sees the parsed :class:`Config`.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mailvm.kinds import DETONATE_KINDS, kinds_problem

DEFAULT_CONFIG_PATH = Path("/etc/mailvm/mailvm.toml")
MiB = 1024 * 1024
#: the qemu backend's clones: the largest guest RAM it starts (one bound, used there too)
MAX_GUEST_MEM_MIB = 3072


class ConfigError(ValueError):
    """A configuration or policy problem: which file, which key, what is wrong."""

    def __init__(self, file: str | os.PathLike[str] | None, key: str, problem: str):
        self.file = str(file) if file is not None else "<defaults>"
        self.key = key
        self.problem = problem
        super().__init__(f"{self.file}: {key}: {problem}")


def _bounded(default: Any, lo: float | None = None, hi: float | None = None, doc: str = "") -> Any:
    meta = {"min": lo, "max": hi, "doc": doc}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class ExtractConfig:
    """Limits for MIME walking and archive extraction (per message)."""

    max_depth: int = _bounded(5, 1, 20, "archive/message nesting depth")
    max_members: int = _bounded(1000, 1, 100000, "members read per archive")
    max_artifacts: int = _bounded(2000, 1, 100000, "artifacts per message")
    max_total_bytes: int = _bounded(256 * MiB, 1, 16 * 1024 * MiB, "expanded bytes per message")
    max_file_bytes: int = _bounded(64 * MiB, 1, 16 * 1024 * MiB, "bytes per extracted file")
    max_ratio: int = _bounded(200, 2, 100000, "expanded/compressed ratio per archive member")
    time_budget_s: float = _bounded(30.0, 0.1, 3600, "wall time for extraction of one message")
    max_message_bytes: int = _bounded(64 * MiB, 1024, 16 * 1024 * MiB, "raw message size accepted for scanning")
    passwords: list[str] = _bounded(["infected", "malware", "virus", "password", "1234"], doc="archive passwords always tried")
    max_password_tries: int = _bounded(50, 0, 10000, "passwords tried per encrypted archive")


@dataclass
class LinksConfig:
    """Downloading the files behind links (SSRF-safe)."""

    enabled: bool = True
    max_links: int = _bounded(10, 0, 1000, "links downloaded per message")
    max_bytes: int = _bounded(16 * MiB, 1, 1024 * MiB, "bytes kept per download")
    timeout_s: float = _bounded(10.0, 0.1, 600, "connect+read timeout per download")
    total_timeout_s: float = _bounded(30.0, 0.1, 3600, "wall time for all downloads of one message")
    max_redirects: int = _bounded(3, 0, 10, "redirect hops followed")
    allow_networks: list[str] = _bounded([], doc="CIDRs allowed despite being private/loopback (tests, intranets)")
    user_agent: str = "Mozilla/5.0 (compatible; mailvm link checker)"


@dataclass
class TriageConfig:
    """Static analyzers."""

    yara_rules_dir: str = "/etc/mailvm/yara"
    max_scan_bytes: int = _bounded(64 * MiB, 1, 16 * 1024 * MiB, "bytes scanned per file by the analyzers")


@dataclass
class ScanTableConfig:
    """The persistent scanned table (diskcache)."""

    path: str = "/var/lib/mailvm/scantable"
    pending_ttl_s: float = _bounded(180.0, 1, 86400, "a pending claim not refreshed for this long is stale")
    verdict_ttl_s: float = _bounded(30 * 86400.0, 60, 3650 * 86400, "a verdict older than this is re-analysed")
    error_ttl_s: float = _bounded(3600.0, 1, 3650 * 86400, "an error verdict (VM fault) older than this is re-analysed")
    size_limit_bytes: int = _bounded(1024 * MiB, MiB, 1024 * 1024 * MiB, "diskcache size limit")
    # "" = the local table (diskcache at `path`); "redis://HOST:PORT/DB" = shared by every host
    url: str = ""


@dataclass
class SpoolConfig:
    """Where messages' files are written while they are analysed."""

    dir: str = "/var/spool/mailvm"


@dataclass
class PoolConfig:
    """The detonation pool: backend, slots and per-job limits."""

    backend: str = "auto"  # auto | qemu | process | xen
    slots: int = _bounded(2, 1, 256, "pre-warmed slots")
    accel: str = "auto"  # auto | kvm | tcg (qemu backend)
    job_timeout_s: float = _bounded(60.0, 1, 3600, "time a sample may run in the guest")
    idle_s: float = _bounded(3.0, 0.1, 600, "stop early when nothing happened for this long and every process exited")
    stop_on_malicious: bool = True
    # room for a whole extract.max_file_bytes file plus a max_result_bytes result
    page_bytes: int = _bounded(72 * MiB, MiB, 1024 * MiB, "shared page region per slot")
    max_result_bytes: int = _bounded(4 * MiB, 4096, 64 * MiB, "largest result JSON accepted from a guest")
    heartbeat_timeout_s: float = _bounded(10.0, 2.0, 600, "a slot whose heartbeat stops this long is destroyed")
    ready_timeout_s: float = _bounded(60.0, 1, 3600, "time a new slot may take to report READY")
    retries: int = _bounded(1, 0, 5, "retries on a fresh slot after a slot failure")
    work_dir: str = "/var/lib/mailvm/pool"
    image_dir: str = "/var/lib/mailvm/image"  # guest image of the qemu backend (mvctl image build)
    guest_mem_mib: int = _bounded(256, 64, MAX_GUEST_MEM_MIB, "guest RAM of the qemu reference VM and its clones")
    doorbell: str = "vport"  # vport | serial | poll:MIN[:MAX] (how an idle qemu slot learns of a job)
    qemu_launcher: str = "raw"  # raw (QEMU started directly) | libvirt (transient libvirt domains)
    libvirt_uri: str = "qemu:///system"
    qemu_spares: int = _bounded(1, 0, 16, "QEMU processes started and waiting for a restore (refill = restore only)")
    qemu_tb_mib: int = _bounded(32, 1, 1024, "TCG translation cache per clone (TCG only)")
    qemu_warmup: str = "none"  # none | files | run: exercise the guest before saving the template
    # QEMU drops root to this user (-runas); "" or "root" keeps root (a warning at start)
    qemu_user: str = "mailvm-qemu"
    qemu_image_poll_s: float = _bounded(5.0, 0, 3600, "how often a running pool looks for a rebuilt image (0: never)")
    # "" = the local job queue under work_dir; "redis://HOST:PORT/DB" = a stream shared by several pool hosts
    queue_url: str = ""
    #: a shared queue's job silent this long (its pool worker died) is taken over by another worker;
    #: running jobs are marked alive every sixth of it
    job_takeover_s: float = _bounded(30.0, 3.0, 3600, "seconds of silence before another pool worker takes a job")
    detonate_kinds: list[str] = _bounded(list(DETONATE_KINDS), doc="triage kinds that are detonated (mailvm.kinds)")


@dataclass
class MilterConfig:
    """``mailvm serve``: the milter socket, workers and where policies live."""

    socket: str = "unix:/var/spool/postfix/mailvm/mailvm.sock"  # or inet:PORT@HOST
    socket_owner: str = "postfix"
    socket_group: str = "postfix"
    socket_mode: str = "0660"
    workers: int = _bounded(2, 1, 256, "scan worker processes")
    timeout_s: int = _bounded(600, 10, 3600, "libmilter's I/O timeout towards the MTA")
    policy_dir: str = "/etc/mailvm/policy.d"
    pool_service: bool = True  # run the detonation pool inside `mailvm serve`
    #: the user the scan workers (every parser of hostile bytes) drop to when mailvm serve runs as root;
    #: "" (or "root") keeps them root. See mailvm.privilege.
    worker_user: str = "mailvm"
    #: the same message again (a retry, one campaign in several transactions) is answered from
    #: memory without the worker round trip (mailvm.milter.msgcache); 0 turns it off
    message_cache_entries: int = _bounded(2000, 0, 1_000_000, "messages whose report the milter keeps in memory")
    message_cache_ttl_s: float = _bounded(900.0, 1, 86400, "seconds a kept message report may be reused")


@dataclass
class QuarantineConfig:
    """mailvm's own quarantine store and how released messages are re-injected."""

    dir: str = "/var/lib/mailvm/quarantine"
    release_key: str = "/var/lib/mailvm/release.key"
    reinject_host: str = "127.0.0.1"
    reinject_port: int = _bounded(25, 1, 65535, "SMTP port of the local MTA for released messages")
    retention_days: float = _bounded(30.0, 0.01, 3650, "quarantined messages older than this are deleted")


@dataclass
class NotifyConfig:
    """Notices about quarantined and held messages (who gets them: each domain's ``[notify]``)."""

    #: {quarantine,hold}-{admin,recipient}.txt here replace the built-in templates (mailvm.notify)
    template_dir: str = "/etc/mailvm/templates"
    from_address: str = ""  # the notices' From: header; "" = mailvm@<this host's name>


@dataclass
class MetricsConfig:
    """Prometheus metrics of ``mailvm serve`` (``/metrics``)."""

    listen: str = ""  # host:port, e.g. "127.0.0.1:9841"; "" = off


@dataclass
class LogConfig:
    """The per-message log line (and where mailvm's log goes)."""

    format: str = "text"  # text | json
    target: str = "stderr"  # stderr | syslog (facility below, on /dev/log)
    facility: str = "mail"


@dataclass
class WebConfig:
    """The web console served by ``mailvm serve``."""

    listen: str = ""  # host:port, e.g. "127.0.0.1:9842"; "" = off
    users_file: str = "/etc/mailvm/web-users"  # `mvctl web passwd NAME` writes it
    secret_file: str = "/var/lib/mailvm/web.key"  # session signing key, created on first start


@dataclass
class Config:
    extract: ExtractConfig = field(default_factory=ExtractConfig)
    links: LinksConfig = field(default_factory=LinksConfig)
    triage: TriageConfig = field(default_factory=TriageConfig)
    scantable: ScanTableConfig = field(default_factory=ScanTableConfig)
    spool: SpoolConfig = field(default_factory=SpoolConfig)
    pool: PoolConfig = field(default_factory=PoolConfig)
    milter: MilterConfig = field(default_factory=MilterConfig)
    quarantine: QuarantineConfig = field(default_factory=QuarantineConfig)
    notify: NotifyConfig = field(default_factory=NotifyConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    log: LogConfig = field(default_factory=LogConfig)
    web: WebConfig = field(default_factory=WebConfig)
    source: str = "<defaults>"


#: section name -> dataclass; the explicit registry of the global file's tables
SECTIONS: dict[str, type] = {
    "extract": ExtractConfig,
    "links": LinksConfig,
    "triage": TriageConfig,
    "scantable": ScanTableConfig,
    "spool": SpoolConfig,
    "pool": PoolConfig,
    "milter": MilterConfig,
    "quarantine": QuarantineConfig,
    "notify": NotifyConfig,
    "metrics": MetricsConfig,
    "log": LogConfig,
    "web": WebConfig,
}

#: tables of mailvm.toml validated by another loader (mailvm.policy), not here
DELEGATED_SECTIONS = ("policy",)

POOL_BACKENDS = ("auto", "qemu", "process", "xen")
ACCELS = ("auto", "kvm", "tcg")


def _check_value(file: str, key: str, f: dataclasses.Field, value: Any) -> Any:
    hint = f.type if not isinstance(f.type, str) else _resolve(f.type)
    origin = typing.get_origin(hint)
    if origin is list:
        (inner,) = typing.get_args(hint)
        if not isinstance(value, list) or not all(isinstance(v, inner) for v in value):
            raise ConfigError(file, key, f"must be a list of {inner.__name__}")
        return list(value)
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(file, key, "must be true or false")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(file, key, f"must be an integer, not {type(value).__name__}")
    elif hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(file, key, f"must be a number, not {type(value).__name__}")
        value = float(value)
    elif hint is str:
        if not isinstance(value, str):
            raise ConfigError(file, key, f"must be a string, not {type(value).__name__}")
        return value
    lo, hi = f.metadata.get("min"), f.metadata.get("max")
    if lo is not None and value < lo:
        raise ConfigError(file, key, f"must be >= {lo} (got {value})")
    if hi is not None and value > hi:
        raise ConfigError(file, key, f"must be <= {hi} (got {value})")
    return value


_TYPES = {"int": int, "float": float, "bool": bool, "str": str, "list[str]": list[str]}


def _resolve(name: str) -> Any:
    try:
        return _TYPES[name]
    except KeyError:
        raise TypeError(f"unsupported config field type {name!r}") from None


def build_section(cls: type, data: Any, file: str, prefix: str, base: Any = None) -> Any:
    """Build dataclass ``cls`` from a TOML table, over ``base`` (or the defaults)."""
    if not isinstance(data, dict):
        raise ConfigError(file, prefix, "must be a table")
    obj = dataclasses.replace(base) if base is not None else cls()
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key, value in data.items():
        full = f"{prefix}.{key}" if prefix else key
        if key not in fields:
            raise ConfigError(file, full, f"unknown key (known: {', '.join(sorted(fields))})")
        setattr(obj, key, _check_value(file, full, fields[key], value))
    return obj


def validate_networks(file: str, key: str, values: list[str]) -> None:
    for v in values:
        try:
            ipaddress.ip_network(v, strict=False)
        except ValueError:
            raise ConfigError(file, key, f"{v!r} is not an IP network (CIDR)") from None


def parse_config(data: dict[str, Any], file: str = "<string>") -> Config:
    cfg = Config(source=file)
    for name, value in data.items():
        if name in DELEGATED_SECTIONS:
            continue
        if name not in SECTIONS:
            raise ConfigError(file, name, f"unknown section (known: {', '.join(SECTIONS)})")
        setattr(cfg, name, build_section(SECTIONS[name], value, file, name))
    validate_networks(file, "links.allow_networks", cfg.links.allow_networks)
    if cfg.pool.backend not in POOL_BACKENDS:
        raise ConfigError(file, "pool.backend", f"must be one of {', '.join(POOL_BACKENDS)}")
    if cfg.pool.doorbell not in ("vport", "serial") and not re.fullmatch(r"poll:[0-9.]+(:[0-9.]+)?", cfg.pool.doorbell):
        raise ConfigError(file, "pool.doorbell", "must be vport, serial or poll:MIN[:MAX] (seconds)")
    for key, allowed in (("qemu_launcher", ("raw", "libvirt")), ("qemu_warmup", ("none", "files", "run"))):
        if getattr(cfg.pool, key) not in allowed:
            raise ConfigError(file, f"pool.{key}", f"must be one of {', '.join(allowed)}")
    if cfg.pool.qemu_user not in ("", "root") and not re.fullmatch(r"[a-z_][a-z0-9_-]{0,31}", cfg.pool.qemu_user):
        raise ConfigError(file, "pool.qemu_user", "must be a system user name (or \"root\" to keep QEMU as root)")
    if 0 < cfg.pool.qemu_image_poll_s < 0.1:
        raise ConfigError(file, "pool.qemu_image_poll_s", "must be 0 (off) or at least 0.1 s")
    if cfg.pool.accel not in ACCELS:
        raise ConfigError(file, "pool.accel", f"must be one of {', '.join(ACCELS)}")
    problem = kinds_problem(cfg.pool.detonate_kinds)
    if problem:
        raise ConfigError(file, "pool.detonate_kinds", problem)
    for key, value in (("metrics.listen", cfg.metrics.listen), ("web.listen", cfg.web.listen)):
        if value and not re.fullmatch(r"(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.-]+):\d{1,5}", value):
            raise ConfigError(file, key, "must be HOST:PORT (e.g. 127.0.0.1:9841) or empty for off")
        if value and not 0 < int(value.rsplit(":", 1)[1]) < 65536:
            raise ConfigError(file, key, "port must be 1-65535")
    for key, allowed in (("format", ("text", "json")), ("target", ("stderr", "syslog"))):
        if getattr(cfg.log, key) not in allowed:
            raise ConfigError(file, f"log.{key}", f"must be one of {', '.join(allowed)}")
    import logging.handlers

    if cfg.log.facility not in logging.handlers.SysLogHandler.facility_names:
        raise ConfigError(file, "log.facility", "must be a syslog facility name (mail, local0...)")
    for key, value in (("scantable.url", cfg.scantable.url), ("pool.queue_url", cfg.pool.queue_url)):
        if value and not re.fullmatch(r"(rediss?://[^\s/]+(/\d{1,2})?|unix:///\S+)", value):
            raise ConfigError(file, key, "must be redis://HOST:PORT/DB, rediss://..., unix:///PATH or empty (local)")
    _check_socket(file, cfg.milter.socket)
    if cfg.milter.worker_user not in ("", "root") and not re.fullmatch(r"[a-z_][a-z0-9_-]{0,31}",
                                                                       cfg.milter.worker_user):
        raise ConfigError(file, "milter.worker_user", "must be a system user name, or \"\" to keep root")
    from mailvm.notify import load_templates  # here: mailvm.notify imports this module

    load_templates(cfg.notify.template_dir)  # a bad template is a ConfigError naming its file
    if cfg.notify.from_address and not re.fullmatch(r"[^@\s<>\"]{1,64}@[A-Za-z0-9.-]{1,253}", cfg.notify.from_address):
        raise ConfigError(file, "notify.from_address", "must be an e-mail address (local@domain) or empty")
    try:
        if not 0 <= int(cfg.milter.socket_mode, 8) <= 0o777:
            raise ValueError
    except ValueError:
        raise ConfigError(file, "milter.socket_mode", "must be an octal mode such as \"0660\"") from None
    return cfg


def _check_socket(file: str, spec: str) -> None:
    kind, _, rest = spec.partition(":")
    if kind == "unix" and rest.startswith("/"):
        return
    if kind in ("inet", "inet6"):
        port, _, host = rest.partition("@")
        if port.isdigit() and 0 < int(port) < 65536:
            return
    raise ConfigError(file, "milter.socket", "must be unix:/ABSOLUTE/PATH or inet:PORT@HOST")


def resolve_config_path(path: str | os.PathLike[str] | None) -> str | None:
    """The config file that :func:`load_config` would read for ``path`` (None: defaults)."""
    if path is not None:
        return str(path)
    env = os.environ.get("MAILVM_CONFIG")
    if env:
        return env
    return str(DEFAULT_CONFIG_PATH) if DEFAULT_CONFIG_PATH.exists() else None


def load_config(path: str | os.PathLike[str] | None = None) -> Config:
    """Load and validate the global config; ``None`` means the built-in defaults.

    Without ``path``: ``$MAILVM_CONFIG`` when set, else ``/etc/mailvm/mailvm.toml``
    when it exists, else the built-in defaults.
    """
    if path is None:
        path = resolve_config_path(None)
        if path is None:
            return Config()
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(path, "-", f"cannot read: {exc.strerror}") from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(path, "-", f"not valid TOML: {exc}") from None
    return parse_config(data, str(path))


__all__ = [
    "Config",
    "ConfigError",
    "ExtractConfig",
    "LinksConfig",
    "TriageConfig",
    "ScanTableConfig",
    "SpoolConfig",
    "PoolConfig",
    "MilterConfig",
    "QuarantineConfig",
    "SECTIONS",
    "build_section",
    "load_config",
    "parse_config",
]
