"""The agent's side of the warm Wine daemon: its socket, wire limits and client.

Standard library only (runs inside the guest, as root).

One job: hand a Wine detonation to the daemon of :mod:`mailvm.guest.winewarm`
over its unix socket and read back its result.  :mod:`mailvm.guest.detonate`
uses this module and :mod:`mailvm.guest.winewarm` serves it; neither of those
two imports the other's side, so the guest has no import cycle between the
detonation and the warm daemon that runs one (``winewarm`` -> ``detonate``
-> ``warmclient``).

The wire format: one JSON line ``{"sample", "options", "workdir"}`` (at most
:data:`MAX_REQUEST` bytes), then one JSON line with the detonation's result
dict (at most :data:`MAX_REPLY` bytes).  Any byte the client sends after its
request asks the daemon to stop the detonation (it still answers).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import stat
from typing import TYPE_CHECKING, Callable, Protocol

if TYPE_CHECKING:  # annotations only; sandbox is a lower layer of both sides
    from mailvm.guest.sandbox import Sandbox

log = logging.getLogger(__name__)

#: the environment variable that names the daemon's socket (set by the VM's ``mailvm-init`` only)
SOCKET_ENV = "MAILVM_WINE_WARM"
DEFAULT_SOCKET = "/run/mailvm-wine/warm.sock"
MAX_REQUEST = 1 << 20
MAX_REPLY = 256 << 20


class WarmError(Exception):
    """The warm sandbox could not be made or used."""


class WarmSandbox(Protocol):
    """What a detonation needs of a warm Wine sandbox (:class:`mailvm.guest.winewarm.WarmWine`):
    its open :class:`~mailvm.guest.sandbox.Sandbox` (None until opened / once closed)."""

    box: "Sandbox | None"


def run_remote(sock_path: str, sample_path: str, options: dict, workdir: str,
               should_stop: Callable[[], bool] | None) -> dict | None:
    """Hand one detonation to the warm daemon; its result, or None when it cannot take the job."""
    try:
        st = os.stat(sock_path)
        if not stat.S_ISSOCK(st.st_mode) or st.st_uid != os.geteuid():
            return None
        conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        conn.settimeout(5)
        conn.connect(sock_path)
        conn.sendall(json.dumps({"sample": os.path.abspath(sample_path), "options": options,
                                 "workdir": os.path.abspath(workdir)}).encode() + b"\n")
    except OSError as exc:
        log.warning("warm Wine sandbox unavailable (%s): cold run", exc)
        return None
    with conn:
        buf = b""
        conn.settimeout(0.2)
        while b"\n" not in buf:
            try:
                chunk: bytes | None = conn.recv(1 << 20)
            except socket.timeout:
                chunk = None
            except OSError as exc:
                raise WarmError(f"the warm Wine sandbox failed: {exc}") from exc
            if chunk == b"":
                raise WarmError("the warm Wine sandbox closed the connection without a result")
            if chunk:
                buf += chunk
                if len(buf) > MAX_REPLY:
                    raise WarmError("the warm Wine sandbox's result is too large")
            if should_stop is not None and should_stop():
                try:
                    conn.sendall(b"x")  # the daemon aborts the detonation and still answers
                except OSError:
                    pass
                should_stop = None
        try:
            result = json.loads(buf.split(b"\n", 1)[0])
        except ValueError as exc:
            raise WarmError(f"unreadable result from the warm Wine sandbox: {exc}") from exc
        if not isinstance(result, dict):
            raise WarmError("the warm Wine sandbox's result is not an object")
        return result
