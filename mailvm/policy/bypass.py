"""Allow-lists: which clients skip analysis (``[bypass]``), and the answer when they skip it all."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Sequence

from mailvm.policy.model import TAG, Decision, Policy
from mailvm.policy.render import MAX_REASON, ascii_text, clip
from mailvm.verdict import CLEAN


@dataclass(frozen=True)
class ClientInfo:
    """Who sent the message, as the MTA told the milter (all hostile text, only compared)."""

    ip: str = ""
    name: str = ""
    helo: str = ""
    auth_user: str = ""
    sender: str = ""


def bypass_reason(policy: Policy, client: ClientInfo) -> str:
    """Why ``policy`` lets this client skip analysis ("" when it does not)."""
    b = policy.bypass
    if client.ip and b.networks:
        try:
            addr = ipaddress.ip_address(client.ip.strip("[]").removeprefix("IPv6:"))
        except ValueError:
            addr = None
        if addr is not None:
            for net in b.networks:
                network = ipaddress.ip_network(net, strict=False)
                if addr.version == network.version and addr in network:
                    return f"client {addr} in {network}"
    if client.auth_user:
        if b.authenticated:
            return f"authenticated user {client.auth_user[:64]}"
        if client.auth_user in b.auth_users:
            return f"authenticated user {client.auth_user[:64]} listed"
    sender = client.sender.strip().strip("<>").lower()
    if sender and "@" in sender and b.senders:
        domain = "@" + sender.rsplit("@", 1)[1]
        for entry in b.senders:
            e = entry.lower()
            if e == sender or e == domain:
                return f"sender {sender[:100]} listed"
    return ""


def bypass_for(policies: Sequence[Policy], client: ClientInfo) -> tuple[str, str]:
    """``(skip, reason)`` for the message: a bypass only when *every* recipient policy grants one.

    ``skip`` is ``"scan"`` only when every policy skips the whole scan, else ``"detonation"``;
    ``("", "")`` when any policy does not bypass this client.
    """
    pols = list(policies) or [Policy()]
    reasons = [bypass_reason(p, client) for p in pols]
    if not all(reasons):
        return "", ""
    skip = "scan" if all(p.bypass.skip == "scan" for p in pols) else "detonation"
    return skip, reasons[0]


def bypass_decision(policy: Policy, reason: str) -> Decision:
    """The answer for a message that skipped the whole scan: delivered, marked ``bypassed``."""
    return Decision(
        action=TAG, verdict=CLEAN, score=0, reason=clip(ascii_text(f"bypassed: {reason}"), MAX_REASON),
        headers=((policy.headers.verdict, "clean score=0 bypassed"),), policy=policy.name,
        flags=("bypassed",), rule="bypass",
    )
