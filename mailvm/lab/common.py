"""What the lab, the mail-path tests and the benchmarks all need: ports, directories, a config.

One place for the loopback plumbing: a free port, waiting for a listener, a
directory Postfix's own users can traverse, and a complete ``mailvm.toml`` for a
mailvm that filters a lab Postfix on 127.0.0.1.
"""

from __future__ import annotations

import os
import socket
import tempfile
import time
from pathlib import Path
from typing import Callable


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float, alive: Callable[[], bool] | None = None) -> None:
    """Return once 127.0.0.1:``port`` accepts connections; RuntimeError after ``timeout``
    or as soon as ``alive()`` says the process meant to listen has exited."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if alive is not None and not alive():
            raise RuntimeError(f"the process meant to listen on 127.0.0.1:{port} exited")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout} s")


def lab_dir(prefix: str) -> Path:
    """A fresh directory under /var/tmp that Postfix's users (postfix, nobody) can traverse.

    pytest's and mkdtemp's defaults are 0700 root: Postfix's master could not open
    its lock file there and the virtual agent could not deliver.
    """
    root = Path(tempfile.mkdtemp(prefix=prefix, dir="/var/tmp"))
    os.chmod(root, 0o755)
    return root


def lab_config(
    root: Path,
    milter_port: int,
    *,
    smtp_port: int = 25,
    backend: str = "process",
    slots: int = 2,
    workers: int = 2,
    job_timeout_s: float = 60.0,
    idle_s: float = 3.0,
    max_wait_s: float = 60.0,
    malicious: str = "reject",
    pool_work: Path | None = None,
    spool_dir: Path | None = None,
    pool_extra: str = "",
    extra: str = "",
) -> str:
    """A complete mailvm.toml whose every path lives under ``root`` (links off: no real-world fetching).

    ``pool_extra`` adds lines to the ``[pool]`` table, ``extra`` whole tables.
    """
    return f"""# written by mailvm.lab.common.lab_config
[spool]
dir = "{spool_dir or f"{root}/spool"}"
[scantable]
path = "{root}/scantable"
[pool]
backend = "{backend}"
slots = {slots}
work_dir = "{pool_work or f"{root}/pool"}"
job_timeout_s = {job_timeout_s}
idle_s = {idle_s}
{pool_extra}
[links]
enabled = false
[milter]
socket = "inet:{milter_port}@127.0.0.1"
policy_dir = "{root}/policy.d"
workers = {workers}
[quarantine]
dir = "{root}/quarantine"
release_key = "{root}/release.key"
reinject_host = "127.0.0.1"
reinject_port = {smtp_port}
{extra}
[policy]
max_wait_s = {max_wait_s}
[policy.actions]
clean = "tag"
suspicious = "tag"
malicious = "{malicious}"
timeout = "tempfail"
error = "tempfail"
"""
