"""YARA signatures: the shipped ruleset plus the administrator's own rules.

:func:`setup` compiles, once per :class:`~mailvm.triage.Triage`:

* every ``*.yar`` in ``mailvm/triage/rules/`` (shipped with the package; a
  broken shipped rule is a bug and raises);
* every ``*.yar`` / ``*.yara`` in ``TriageConfig.yara_rules_dir`` if that
  directory exists.  Each admin file is compiled alone first: a file that does
  not compile is logged and skipped, the others still load.

Rule metadata carries the finding: ``id`` (snake_case finding id) and
``severity`` (0-10).  Admin rules without them get ``yara_<rule name>`` and
severity :data:`ADMIN_DEFAULT_SEVERITY`.  Rules may use the external variables
``filename``, ``extension`` and ``kind``.

The compiled :class:`yara.Rules` object is shared read-only by every thread;
each scan has a hard timeout (YARA's own, no signals).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import yara

from mailvm.config import TriageConfig
from mailvm.triage.base import Context, extension
from mailvm.verdict import Artifact, Finding

log = logging.getLogger(__name__)

SOURCE = "triage:yara"
SCAN_TIMEOUT_S = 10
ADMIN_DEFAULT_SEVERITY = 7
MAX_MATCHES = 50
EXTERNALS = {"filename": "", "extension": "", "kind": ""}
_ID_RE = re.compile(r"[^a-z0-9_]+")


@dataclass(frozen=True)
class YaraState:
    rules: yara.Rules
    shipped: tuple[str, ...]
    admin: tuple[str, ...]
    skipped: tuple[str, ...]


def shipped_rule_files() -> list[Path]:
    """The ``*.yar`` files shipped in ``mailvm/triage/rules``."""
    root = resources.files("mailvm.triage").joinpath("rules")
    return sorted(Path(str(p)) for p in root.iterdir() if p.name.endswith(".yar"))


def admin_rule_files(directory: str) -> list[Path]:
    d = Path(directory)
    if not directory or not d.is_dir():
        return []
    return sorted(p for p in d.iterdir() if p.suffix.lower() in (".yar", ".yara") and p.is_file())


def _namespace(prefix: str, path: Path, index: int) -> str:
    return f"{prefix}{index}_{_ID_RE.sub('_', path.stem.lower())}"


def setup(cfg: TriageConfig) -> YaraState:
    filepaths: dict[str, str] = {}
    shipped = shipped_rule_files()
    for i, p in enumerate(shipped):
        filepaths[_namespace("mailvm", p, i)] = str(p)
    admin_ok: list[str] = []
    skipped: list[str] = []
    for i, p in enumerate(admin_rule_files(cfg.yara_rules_dir)):
        try:
            yara.compile(filepath=str(p), externals=EXTERNALS)
        except (yara.Error, OSError) as exc:
            log.error("skipping admin YARA file %s: %s", p, exc)
            skipped.append(str(p))
            continue
        filepaths[_namespace("admin", p, i)] = str(p)
        admin_ok.append(str(p))
    rules = yara.compile(filepaths=filepaths, externals=EXTERNALS)
    log.info("YARA: %d shipped and %d admin rule files compiled (%d skipped)", len(shipped), len(admin_ok), len(skipped))
    return YaraState(rules, tuple(str(p) for p in shipped), tuple(admin_ok), tuple(skipped))


def _finding(match: yara.Match) -> Finding:
    meta = match.meta or {}
    admin = match.namespace.startswith("admin")
    fid = meta.get("id")
    if not isinstance(fid, str) or not fid:
        fid = "yara_" + _ID_RE.sub("_", match.rule.lower()).strip("_")
    sev = meta.get("severity")
    if isinstance(sev, bool) or not isinstance(sev, int):
        try:
            sev = int(str(sev))
        except ValueError:
            sev = ADMIN_DEFAULT_SEVERITY if admin else 5
    desc = meta.get("description", "")
    origin = "admin rule" if admin else "rule"
    return Finding(_ID_RE.sub("_", fid.lower()), sev, f"{origin} {match.rule}: {desc}".strip(": "), SOURCE)


def scan(state: YaraState, data: bytes, name: str = "", kind: str = "") -> list[Finding]:
    """Findings for ``data``; raises on YARA errors (timeouts included)."""
    matches = state.rules.match(
        data=data,
        timeout=SCAN_TIMEOUT_S,
        externals={"filename": name, "extension": extension(name), "kind": kind},
    )
    best: dict[str, Finding] = {}
    for m in matches[:MAX_MATCHES]:
        f = _finding(m)
        if f.id not in best or f.severity > best[f.id].severity:
            best[f.id] = f
    return list(best.values())


def analyze(artifact: Artifact, data_path: str, ctx: Context) -> list[Finding]:
    state: YaraState = ctx.state["yara"]
    return scan(state, ctx.data, artifact.name, ctx.kind)
