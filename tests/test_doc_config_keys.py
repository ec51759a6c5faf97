"""The configuration keys that the documents name exist.

docs/qemu-backend.md named ``spares``, ``warmup`` and ``launcher`` as if they were config keys; they are
``QemuBackend`` constructor arguments, and ``[pool] spares`` is refused as an unknown key (issue 12, item 6).
Every ``section.key`` or ``[section] key`` written as code in README.md or docs/ must be a key of the global
config (mailvm.config.SECTIONS) or of a domain policy (mailvm.policy.Policy), and the QEMU document may not
show a constructor argument that mirrors a ``[pool]`` key under another name as if it were a setting.
"""

from __future__ import annotations

import dataclasses
import inspect
import re
from pathlib import Path

import pytest

from mailvm.config import SECTIONS, ConfigError, parse_config
from mailvm.policy import Policy
from mailvm.vmpool.backends.qemu import QemuBackend

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
CODE_SPAN = re.compile(r"`([^`\n]+)`")
FILE_SUFFIXES = {"py", "md", "toml", "json", "txt", "sh"}


def _keys(cls: type) -> set[str]:
    return {f.name for f in dataclasses.fields(cls) if not f.metadata.get("internal")}


def _known() -> dict[str, set[str]]:
    known = {name: _keys(cls) for name, cls in SECTIONS.items()}
    for f in dataclasses.fields(Policy):  # a domain policy's tables ([actions], [links], [quarantine]...)
        if dataclasses.is_dataclass(f.default_factory if f.default_factory is not dataclasses.MISSING else None):
            known.setdefault(f.name, set()).update(_keys(f.default_factory))
    return known


KNOWN = _known()
REFERENCE = re.compile(r"(?<![\w/.<-])(?:(%s)\.|\[(%s)\]\s+)([a-z_][a-z0-9_]*)(?![\w(])" % ("|".join(KNOWN), "|".join(KNOWN)))


def unknown_keys(text: str) -> list[str]:
    bad = []
    for span in CODE_SPAN.findall(text):
        for m in REFERENCE.finditer(span):
            section, key = m.group(1) or m.group(2), m.group(3)
            if key in FILE_SUFFIXES and m.group(1):  # a module or file name such as scantable.py
                continue
            if key not in KNOWN[section]:
                bad.append(f"{section}.{key} (in `{span}`)")
    return bad


def mirrored_arguments() -> dict[str, str]:
    """QemuBackend arguments that set a [pool] key of another name: argument -> key."""
    pool = _keys(SECTIONS["pool"])
    params = inspect.signature(QemuBackend.__init__).parameters
    return {p: k for p in params if p not in pool for k in pool if k.endswith("_" + p)}


def arguments_shown_as_settings(text: str) -> list[str]:
    mirrors = mirrored_arguments()
    bad = []
    for span in CODE_SPAN.findall(text):
        m = re.fullmatch(r"([a-z_][a-z0-9_]*)\s*(?:=.*)?", span.strip())
        if m and m.group(1) in mirrors:
            bad.append(f"`{span}` (the config key is pool.{mirrors[m.group(1)]})")
    return bad


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_documented_config_keys_exist(doc: Path):
    assert not unknown_keys(doc.read_text()), unknown_keys(doc.read_text())


def test_qemu_document_names_config_keys_not_constructor_arguments():
    assert set(mirrored_arguments()) >= {"spares", "warmup", "launcher", "tb_mib"}
    text = (ROOT / "docs" / "qemu-backend.md").read_text()
    assert not arguments_shown_as_settings(text), arguments_shown_as_settings(text)
    for key in ("qemu_spares", "qemu_warmup", "qemu_launcher", "qemu_tb_mib"):
        assert f"`pool.{key}" in text, key


def test_the_checks_catch_what_the_old_text_said():
    old = ("* **Spare QEMUs** (`spares`, default 1) ... `launcher = raw` (default) ... (kept, `spares = 1`) ... "
           "(`warmup = none|files|run`, kept at `none`) ... `[pool] spares` ... `pool.spares = 2`")
    assert arguments_shown_as_settings(old) == [
        "`spares` (the config key is pool.qemu_spares)", "`launcher = raw` (the config key is pool.qemu_launcher)",
        "`spares = 1` (the config key is pool.qemu_spares)", "`warmup = none|files|run` (the config key is pool.qemu_warmup)",
    ]
    assert unknown_keys(old) == ["pool.spares (in `[pool] spares`)", "pool.spares (in `pool.spares = 2`)"]
    assert unknown_keys("`mailvm/scantable.py`, `scantable.py`, `pool.qemu_spares`, `quarantine.notify`") == []
    with pytest.raises(ConfigError, match="pool.spares: unknown key"):
        parse_config({"pool": {"spares": 1}})
