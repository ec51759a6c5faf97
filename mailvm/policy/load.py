"""Reading policy files: the global ``[policy]`` table, ``policy.d/<domain>.toml``, and lookup.

Global defaults come from the ``[policy]`` table of ``mailvm.toml``;
``policy.d/<domain>.toml`` holds partial policies per recipient domain, merged key by
key over the global defaults.  A lookup (:meth:`PolicySet.for_domain`) falls back
through parent domains (``a.b.example.com`` -> ``b.example.com`` -> ``example.com`` ->
``com`` -> the default).  Unknown keys and bad values are
:class:`~mailvm.config.ConfigError` naming the file and the key;
:func:`check_policy_dir` collects every problem of a directory at once.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from mailvm.config import ConfigError, build_section
from mailvm.policy.checks import VALUE_CHECKS
from mailvm.policy.domains import normalize_domain, parent_domains, recipient_domain
from mailvm.policy.model import SCALAR_KEYS, TABLES, Policy
from mailvm.policy.render import MAX_REASON, ascii_text, clip

log = logging.getLogger(__name__)

MAX_POLICY_FILE = 1024 * 1024
DEFAULT_POLICY_DIR = "/etc/mailvm/policy.d"


def _set_key(
    obj: Any, cls: type, key: str, value: Any, file: str, prefix: str, check_key: str, errors: list[ConfigError]
) -> Any:
    """A copy of ``obj`` with one key set, or ``obj`` unchanged and the problem recorded.

    ``prefix`` is how the key's table is spelled in error messages (``policy.actions``),
    ``check_key`` the dotted key in :data:`VALUE_CHECKS` (``actions.malicious``).
    """
    try:
        new = build_section(cls, {key: value}, file, prefix, base=obj)
    except ConfigError as exc:
        errors.append(exc)
        return obj
    check = VALUE_CHECKS.get(check_key)
    problem = check(getattr(new, key)) if check else None
    if problem:
        errors.append(ConfigError(file, f"{prefix}.{key}" if prefix else key, problem))
        return obj
    return new


def parse_policy(
    data: Any, file: str, base: Policy | None = None, prefix: str = "", errors: list[ConfigError] | None = None
) -> Policy:
    """Build a :class:`Policy` from a TOML table over ``base`` (or the built-in defaults).

    With ``errors`` given, problems are appended and the bad keys keep their base
    value; without it, the first problem is raised.
    """
    collect: list[ConfigError] = [] if errors is None else errors
    before = len(collect)
    pol = dataclasses.replace(base) if base is not None else Policy()
    pol.source = file if base is None or base.source == "<defaults>" else f"{base.source} + {file}"
    dot = f"{prefix}." if prefix else ""
    if not isinstance(data, dict):
        collect.append(ConfigError(file, prefix or "-", "must be a table"))
    else:
        known = sorted(SCALAR_KEYS + tuple(TABLES))
        for key, value in data.items():
            if key in TABLES:
                cls = TABLES[key]
                if not isinstance(value, dict):
                    collect.append(ConfigError(file, f"{dot}{key}", "must be a table"))
                    continue
                sub = getattr(pol, key)
                for subkey, subvalue in value.items():
                    sub = _set_key(sub, cls, subkey, subvalue, file, f"{dot}{key}", f"{key}.{subkey}", collect)
                setattr(pol, key, sub)
            elif key in SCALAR_KEYS:
                pol = _set_key(pol, Policy, key, value, file, prefix, key, collect)
            else:
                collect.append(ConfigError(file, f"{dot}{key}", f"unknown key (known: {', '.join(known)})"))
        if pol.headers.verdict.lower() == pol.headers.report.lower():
            collect.append(ConfigError(file, f"{dot}headers.report", "must differ from headers.verdict"))
    if errors is None and len(collect) > before:
        raise collect[before]
    return pol


def _read_toml(path: Path, errors: list[ConfigError]) -> dict[str, Any] | None:
    try:
        with open(path, "rb") as fh:
            raw = fh.read(MAX_POLICY_FILE + 1)
    except OSError as exc:
        errors.append(ConfigError(path, "-", f"cannot read: {exc.strerror}"))
        return None
    if len(raw) > MAX_POLICY_FILE:
        errors.append(ConfigError(path, "-", f"larger than {MAX_POLICY_FILE} bytes"))
        return None
    try:
        return tomllib.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        errors.append(ConfigError(path, "-", f"not valid TOML: {exc}"))
        return None


@dataclass
class PolicySet:
    """The default policy plus one merged policy per configured domain."""

    default: Policy = field(default_factory=Policy)
    domains: dict[str, Policy] = field(default_factory=dict)
    #: domain -> the first problem of its policy file, for the domains whose file could not be used
    broken: dict[str, str] = field(default_factory=dict)

    def for_domain(self, domain: str) -> Policy:
        """The policy of ``domain``, falling back through its parent domains to the default."""
        d = normalize_domain(domain)
        if d is None:
            return self.default
        for candidate in parent_domains(d):
            pol = self.domains.get(candidate)
            if pol is not None:
                return pol
        return self.default

    def for_recipients(self, rcpts: Iterable[str]) -> list[tuple[str, Policy]]:
        """``(recipient domain, policy)`` once per distinct domain, in first-seen order.

        A recipient without a usable domain maps to ``("", default policy)``.
        """
        seen: dict[str, Policy] = {}
        for rcpt in rcpts:
            d = recipient_domain(rcpt) or ""
            if d not in seen:
                seen[d] = self.for_domain(d) if d else self.default
        return list(seen.items())


def _policy_files(policy_dir: Path, errors: list[ConfigError]) -> list[tuple[str, Path]]:
    try:
        names = sorted(os.listdir(policy_dir))
    except OSError as exc:
        errors.append(ConfigError(policy_dir, "-", f"cannot read directory: {exc.strerror}"))
        return []
    result = []
    for name in names:
        path = policy_dir / name
        if name.startswith(".") or not name.endswith(".toml"):
            log.debug("policy.d: ignoring %s (not <domain>.toml)", path)
            continue
        stem = name[: -len(".toml")]
        if normalize_domain(stem) != stem:
            errors.append(
                ConfigError(path, "-", "file name must be <domain>.toml with the domain in lower-case IDNA (A-label) form")
            )
            continue
        if not path.is_file():
            errors.append(ConfigError(path, "-", "not a regular file"))
            continue
        result.append((stem, path))
    return result


def _load(global_path: str | os.PathLike[str] | None, policy_dir: str | os.PathLike[str] | None,
          errors: list[ConfigError], domain_errors: dict[str, ConfigError] | None = None) -> PolicySet:
    """Load everything; problems go to ``errors``, and with ``domain_errors`` the first problem
    of each domain's own file also goes there (keyed by domain), so a caller can set that domain
    aside and use the others."""
    default = Policy()
    if global_path is not None:
        gpath = Path(global_path)
        data = _read_toml(gpath, errors)
        if data is not None and "policy" in data:
            default = parse_policy(data["policy"], str(gpath), prefix="policy", errors=errors)
            default.source = str(gpath)
    pset = PolicySet(default=default)
    if policy_dir is not None:
        for domain, path in _policy_files(Path(policy_dir), errors):
            before = len(errors)
            data = _read_toml(path, errors)
            if data is not None:
                pol = parse_policy(data, str(path), base=default, errors=errors)
                pol.name = domain
                pset.domains[domain] = pol
            if domain_errors is not None and len(errors) > before:
                domain_errors[domain] = errors[before]
    return pset


def load_policies(global_toml_path: str | os.PathLike[str] | None, policy_dir: str | os.PathLike[str] | None,
                  previous: PolicySet | None = None) -> PolicySet:
    """Read the ``[policy]`` table of the global file and every ``policy.d/<domain>.toml``.

    Either path may be None (built-in defaults / no domain policies).  A problem in
    the global file, or in the directory itself, raises the first
    :class:`ConfigError` (the default policy is everybody's fallback: without it
    nothing can be decided).  A problem in *one domain's* file does not stop the
    others: that domain keeps its policy from ``previous`` (the last good set, on
    a reload) when there is one, and otherwise gets a *broken* policy whose
    :func:`decide` defers every message (451) with the file, key and problem in
    the reason; :attr:`PolicySet.broken` lists them and each is logged as an error.
    :func:`check_policy_dir` lists every problem.
    """
    errors: list[ConfigError] = []
    domain_errors: dict[str, ConfigError] = {}
    pset = _load(global_toml_path, policy_dir, errors, domain_errors)
    gfile = str(global_toml_path) if global_toml_path is not None else None
    dfile = str(policy_dir) if policy_dir is not None else None
    fatal = [e for e in errors if e.file in (gfile, dfile)]
    if fatal:
        raise fatal[0]
    for err in errors:
        if err in domain_errors.values() or err.file in (gfile, dfile):
            continue
        # a file in policy.d that is not <domain>.toml: the domain it seems meant for (if any) is deferred
        stem = Path(err.file).name.removesuffix(".toml")
        meant = normalize_domain(stem)
        if meant is not None and meant not in domain_errors:
            domain_errors[meant] = err
        else:
            log.error("policy.d: ignoring %s", err)
    for domain, err in domain_errors.items():
        kept = previous.domains.get(domain) if previous is not None else None
        if kept is not None and not kept.error:
            pset.domains[domain] = kept
            log.error("policy for %s is invalid, keeping its last good policy: %s", domain, err)
            continue
        broken = dataclasses.replace(pset.default, name=domain, source=str(err.file),
                                     error=clip(ascii_text(str(err)), MAX_REASON))
        pset.domains[domain] = broken
        pset.broken[domain] = str(err)
        log.error("policy for %s is invalid: its mail is deferred (451) until the file is fixed: %s", domain, err)
    return pset


def check_policy_dir(global_path: str | os.PathLike[str] | None, policy_dir: str | os.PathLike[str] | None) -> list[ConfigError]:
    """Every problem of the global ``[policy]`` table and of the policy directory (for ``mvctl policy check``)."""
    errors: list[ConfigError] = []
    _load(global_path, policy_dir, errors)
    return errors
