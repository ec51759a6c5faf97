"""Helpers shared by the ``mvctl`` command modules."""

from __future__ import annotations

import json
import sys
from typing import Any

from mailvm.config import Config, load_config

EXIT_OK = 0
EXIT_BAD = 1
EXIT_ERROR = 2


def config_from(args: Any) -> Config:
    return load_config(getattr(args, "config", None))


def print_json(obj: Any) -> None:
    json.dump(obj, sys.stdout, indent=2, sort_keys=False, default=str)
    sys.stdout.write("\n")


def open_table(cfg: Config):
    from mailvm.store import open_table

    return open_table(cfg)
