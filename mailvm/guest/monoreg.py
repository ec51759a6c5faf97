"""The Windows registry of a .NET sample run by Mono: ``~/.mono/registry`` before and after, as events.

Standard library only (runs inside the guest).

Mono keeps ``Microsoft.Win32.Registry`` in files: one directory per key under
``~/.mono/registry/CurrentUser`` (``LocalMachine`` lives under
``/etc/mono/registry``, read-only in the sandbox), each with a
``values.xml`` of ``<value name=".." type="..">data</value>`` entries.
:func:`snapshot` reads them (bounded) and :func:`diff` turns changes into the
same ``reg_set`` / ``reg_delete`` events the Wine registry diff gives
(``src: "mono_registry"``), so the registry rules see a .NET sample's Run key
like a native one's.
"""

from __future__ import annotations

import logging
import os
import xml.etree.ElementTree as ET
from typing import Any

log = logging.getLogger(__name__)

ROOTS = {"CurrentUser": "HKCU", "LocalMachine": "HKLM", "ClassesRoot": "HKCR", "Users": "HKU"}
MAX_FILES = 2000
MAX_FILE_BYTES = 1 << 20
MAX_VALUES_REPORTED = 500
MAX_DATA = 300


def registry_dir(home: str) -> str:
    return os.path.join(home, ".mono", "registry")


def snapshot(home: str) -> dict[str, dict[str, str]]:
    """``{key: {value name: data}}`` of the Mono registry under ``home`` (keys as ``HKCU\\a\\b``)."""
    base = registry_dir(home)
    out: dict[str, dict[str, str]] = {}
    files = 0
    for root, dirs, names in os.walk(base):
        dirs[:] = sorted(d for d in dirs if not os.path.islink(os.path.join(root, d)))
        if "values.xml" not in names:
            continue
        files += 1
        if files > MAX_FILES:
            log.warning("Mono registry: more than %d keys, the rest not read", MAX_FILES)
            break
        rel = os.path.relpath(root, base).split(os.sep)
        key = "\\".join([ROOTS.get(rel[0], rel[0])] + rel[1:])
        out[key] = _values(os.path.join(root, "values.xml"))
    return out


def _values(path: str) -> dict[str, str]:
    try:
        if os.path.islink(path) or os.path.getsize(path) > MAX_FILE_BYTES:
            return {}
        tree = ET.parse(path)
    except (OSError, ET.ParseError):
        return {}
    values: dict[str, str] = {}
    for v in tree.getroot().iter("value"):
        name = v.get("name") or "@"
        values[name[:256]] = (v.text or "")[:MAX_DATA]
    return values


def diff(before: dict[str, dict[str, str]], after: dict[str, dict[str, str]]) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    for key, values in after.items():
        old = before.get(key, {})
        for name, data in values.items():
            if old.get(name) != data:
                events.append({"type": "reg_set", "src": "mono_registry", "key": key, "value": name, "data": data})
    for key, values in before.items():
        new = after.get(key, {})
        for name in values:
            if name not in new:
                events.append({"type": "reg_delete", "src": "mono_registry", "key": key, "value": name})
    return events[:MAX_VALUES_REPORTED]
