"""Apple configuration profiles (``.mobileconfig``; triage kind ``mobileconfig``).

A profile is a property list (XML or binary), often wrapped in a CMS
SignedData envelope, whose ``PayloadContent`` array lists payloads that iOS
and macOS install after a few taps.  Sent by mail, the dangerous ones hand the
device to the sender:

* a **root certificate** (``com.apple.security.root``, or a CA certificate in a
  ``pkcs1``/``pem`` payload): every TLS connection can be intercepted;
* **MDM enrolment** (``com.apple.mdm``): remote control of the device;
* a **VPN**, a **global HTTP proxy**, a proxy in a Wi-Fi/APN payload, or
  **DNS settings**: traffic goes through the sender;
* **mail/Exchange/CalDAV accounts** pointing at the sender's server;
* **web clips**: a home-screen icon that opens the sender's page full screen.

:func:`is_profile` recognises profiles by content (for :mod:`mailvm.triage.kinds`).
The CMS envelope is opened with asn1crypto (the signature is reported, not
trusted: anyone can sign a profile); the plist is read with the standard
library's ``plistlib``, which refuses XML entity declarations.  Certificates
are read with ``cryptography``.
"""

from __future__ import annotations

import plistlib
from dataclasses import dataclass, field
from typing import Any

from asn1crypto import cms
from cryptography import x509

from mailvm.triage import urlrisk
from mailvm.triage.base import Context, clip
from mailvm.verdict import Artifact, Finding

SOURCE = "triage:mobileconfig"
MAX_PAYLOADS = 500
SIGNED_DATA_OID = bytes.fromhex("06092a864886f70d010702")
_PROFILE_KEYS = (b"PayloadType", b"PayloadContent")

#: payload type -> (finding id, severity, what it does)
PAYLOAD_RULES: dict[str, tuple[str, int, str]] = {
    "com.apple.security.root": ("mobileconfig_root_ca", 7, "installs a trusted root certificate (TLS interception)"),
    "com.apple.mdm": ("mobileconfig_mdm", 7, "enrols the device in remote management (MDM)"),
    "com.apple.vpn.managed": ("mobileconfig_vpn", 5, "configures a VPN"),
    "com.apple.vpn.managed.applayer": ("mobileconfig_vpn", 5, "configures a per-app VPN"),
    "com.apple.proxy.http.global": ("mobileconfig_proxy", 6, "sets a global HTTP proxy for all traffic"),
    "com.apple.dnsSettings.managed": ("mobileconfig_dns", 5, "sets the DNS servers (encrypted DNS)"),
    "com.apple.dnsProxy.managed": ("mobileconfig_dns", 5, "installs a DNS proxy"),
    "com.apple.webcontent-filter": ("mobileconfig_content_filter", 5, "installs a web content filter"),
    "com.apple.mail.managed": ("mobileconfig_account", 4, "adds a mail account"),
    "com.apple.eas.account": ("mobileconfig_account", 4, "adds an Exchange account"),
    "com.apple.caldav.account": ("mobileconfig_account", 3, "adds a CalDAV account"),
    "com.apple.carddav.account": ("mobileconfig_account", 3, "adds a CardDAV account"),
    "com.apple.ldap.account": ("mobileconfig_account", 3, "adds an LDAP account"),
    "com.apple.webClip.managed": ("mobileconfig_webclip", 4, "adds a home-screen web clip"),
    "com.apple.security.scep": ("mobileconfig_cert_enrolment", 4, "enrols a certificate from a SCEP server"),
    "com.apple.security.acme": ("mobileconfig_cert_enrolment", 4, "enrols a certificate from an ACME server"),
    "com.apple.security.pkcs12": ("mobileconfig_identity", 3, "installs an identity (certificate and private key)"),
}
CERT_TYPES = frozenset({"com.apple.security.pkcs1", "com.apple.security.pem", "com.apple.security.root"})
PROXY_KEYS = ("ProxyServer", "ProxyPACURL", "ProxyURL", "HTTPProxy", "ProxyServerURL")
HOST_KEYS = ("ServerURL", "CheckInURL", "RemoteAddress", "IncomingMailServerHostName", "OutgoingMailServerHostName",
             "Host", "CalDAVHostName", "CardDAVHostName", "LDAPAccountHostName", "URL", "ProxyServer", "ProxyPACURL",
             "ServerURLs", "ServerAddresses", "URLString", "Challenge")


@dataclass
class Profile:
    """A parsed profile: its top-level dictionary, payloads, and the envelope's signer (if any)."""

    top: dict[str, Any]
    payloads: list[dict[str, Any]] = field(default_factory=list)
    signed: bool = False
    signers: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def is_profile(head: bytes) -> bool:
    """Whether the head of a file is an Apple configuration profile (plist or signed envelope)."""
    if not any(k in head for k in _PROFILE_KEYS):
        return False
    if head.startswith(b"bplist00"):
        return True
    if head[:1] == b"\x30" and SIGNED_DATA_OID in head[:64]:
        return True
    return b"<plist" in head[:4096] or b"<!DOCTYPE plist" in head[:4096]


def _unwrap(data: bytes, profile_errors: list[str]) -> tuple[bytes, bool, list[str]]:
    """The plist inside a CMS SignedData envelope (or ``data`` itself), whether it was signed, signer names."""
    if not (data[:1] == b"\x30" and SIGNED_DATA_OID in data[:64]):
        return data, False, []
    signers: list[str] = []
    try:
        info = cms.ContentInfo.load(data)
        signed = info["content"]
        inner = signed["encap_content_info"]["content"].native
        for cert in (signed["certificates"].native or [])[:8] if signed["certificates"] else []:
            subject = cert.get("tbs_certificate", {}).get("subject", {})
            name = subject.get("common_name") or subject.get("organization_name") or ""
            if name:
                signers.append(str(name))
        if isinstance(inner, bytes):
            return inner, True, signers
        profile_errors.append("signed envelope without content")
    except (ValueError, TypeError, KeyError) as exc:
        profile_errors.append(f"CMS envelope: {type(exc).__name__}: {clip(exc, 120)}")
    # fall back to the plist bytes inside the envelope (DER keeps them contiguous)
    start = min((i for i in (data.find(b"<?xml"), data.find(b"<plist")) if i >= 0), default=-1)
    end = data.find(b"</plist>", max(start, 0))
    if start >= 0 and end > start:
        return data[start : end + 8], True, signers
    return b"", True, signers


def parse(data: bytes) -> Profile:
    """The profile in ``data``; what could not be read is in ``Profile.errors`` (never raises)."""
    errors: list[str] = []
    inner, signed, signers = _unwrap(data, errors)
    if not inner:
        return Profile({}, signed=signed, signers=signers, errors=errors or ["no property list found"])
    try:
        top = plistlib.loads(inner)
    except Exception as exc:  # InvalidFileException, ExpatError, ValueError, RecursionError... on hostile input
        return Profile({}, signed=signed, signers=signers, errors=errors + [f"plist: {type(exc).__name__}: {clip(exc, 120)}"])
    if not isinstance(top, dict):
        return Profile({}, signed=signed, signers=signers, errors=errors + ["top level is not a dictionary"])
    profile = Profile(top, signed=signed, signers=signers, errors=errors)
    content = top.get("PayloadContent")
    if isinstance(content, list):
        profile.payloads = [p for p in content[:MAX_PAYLOADS] if isinstance(p, dict)]
        if len(content) > MAX_PAYLOADS:
            profile.errors.append(f"{len(content)} payloads, first {MAX_PAYLOADS} read")
    elif str(top.get("PayloadType", "")) != "Configuration":
        profile.payloads = [top]  # a bare payload dictionary
    return profile


def _certificate(payload: dict[str, Any]) -> x509.Certificate | None:
    blob = payload.get("PayloadContent")
    if not isinstance(blob, (bytes, bytearray)):
        return None
    blob = bytes(blob)
    try:
        if b"-----BEGIN CERTIFICATE-----" in blob[:4096]:
            return x509.load_pem_x509_certificate(blob)
        return x509.load_der_x509_certificate(blob)
    except ValueError:
        return None


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return bool(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except x509.ExtensionNotFound:
        return cert.issuer == cert.subject  # a v1 self-signed certificate acts as a root
    except ValueError:
        return False


def _cert_name(cert: x509.Certificate) -> str:
    try:
        cn = cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
        return str(cn[0].value) if cn else cert.subject.rfc4514_string()
    except ValueError:
        return "(unreadable name)"


def _hosts(payload: dict[str, Any]) -> list[str]:
    out: list[str] = []
    for key in HOST_KEYS:
        value = payload.get(key)
        values = value if isinstance(value, list) else [value]
        for v in values[:4]:
            if isinstance(v, str) and v.strip() and key != "Challenge":
                out.append(f"{key}={clip(v, 100)}")
    for sub in ("VPN", "IPSec", "IKEv2", "Proxies", "DNSSettings", "VendorConfig"):
        inner = payload.get(sub)
        if isinstance(inner, dict):
            for key in HOST_KEYS:
                v = inner.get(key)
                if isinstance(v, str) and v.strip():
                    out.append(f"{sub}.{key}={clip(v, 100)}")
    return out[:6]


def _payload_findings(payload: dict[str, Any]) -> list[Finding]:
    ptype = str(payload.get("PayloadType", ""))
    name = clip(payload.get("PayloadDisplayName", "") or "", 60)
    label = f"{ptype}" + (f" ({name})" if name else "")
    out: list[Finding] = []
    if ptype in CERT_TYPES:
        cert = _certificate(payload)
        if cert is not None and _is_ca(cert):
            root = cert.issuer == cert.subject
            out.append(Finding("mobileconfig_root_ca", 7 if root else 6,
                               f"{label}: installs the {'root' if root else 'intermediate'} CA certificate "
                               f"{clip(_cert_name(cert), 80)!r}", SOURCE))
        elif ptype == "com.apple.security.root":
            out.append(Finding("mobileconfig_root_ca", 7, f"{label}: installs a trusted root certificate"
                               + (f" {clip(_cert_name(cert), 80)!r}" if cert else " (content unreadable)"), SOURCE))
        elif cert is not None:
            out.append(Finding("mobileconfig_certificate", 3, f"{label}: installs certificate {clip(_cert_name(cert), 80)!r}",
                               SOURCE))
        return out
    rule = PAYLOAD_RULES.get(ptype)
    hosts = _hosts(payload)
    where = f"; {', '.join(hosts)}" if hosts else ""
    if rule is not None:
        fid, sev, what = rule
        if fid == "mobileconfig_vpn" and _on_demand(payload):
            sev, what = 6, what + " that connects on demand (all traffic)"
        if fid in ("mobileconfig_webclip", "mobileconfig_account"):
            urls = [v for k in ("URL", "Host", "IncomingMailServerHostName", "ServerURL")
                    if isinstance(v := payload.get(k), str) and v]
            risk = urlrisk.worst([u if "://" in u else f"https://{u}/" for u in urls])
            if risk is not None and risk.severity >= 4:
                sev = max(sev, 5)
                what += f" at a phishing-looking address ({risk.describe()})"
        out.append(Finding(fid, sev, f"{label}: {what}{where}", SOURCE))
    if ptype != "com.apple.proxy.http.global" and any(isinstance(payload.get(k), str) and payload.get(k)
                                                        for k in PROXY_KEYS[:2]):
        out.append(Finding("mobileconfig_proxy", 5, f"{label}: sets a proxy{where}", SOURCE))
    return out


def _on_demand(payload: dict[str, Any]) -> bool:
    for sub in ("VPN", "IPSec", "IKEv2"):
        inner = payload.get(sub)
        if isinstance(inner, dict) and inner.get("OnDemandEnabled") in (1, True):
            return True
    return payload.get("OnDemandEnabled") in (1, True)


def findings_for(profile: Profile) -> list[Finding]:
    out: list[Finding] = []
    types = [str(p.get("PayloadType", "?")) for p in profile.payloads]
    signer = f"signed by {', '.join(clip(s, 60) for s in profile.signers[:2])}" if profile.signers else \
        ("signed" if profile.signed else "unsigned")
    if profile.top or profile.payloads:
        org = clip(profile.top.get("PayloadOrganization", "") or profile.top.get("PayloadDisplayName", "") or "", 60)
        out.append(Finding("mobileconfig_profile", 2, f"Apple configuration profile{f' {org!r}' if org else ''}, {signer}, "
                                                      f"{len(types)} payload(s): {', '.join(sorted(set(types)))[:200]}",
                           SOURCE))
    for p in profile.payloads:
        out += _payload_findings(p)
    if "EncryptedPayloadContent" in profile.top:
        out.append(Finding("mobileconfig_encrypted_payload", 4, "the payloads are encrypted to one device: what the "
                                                                "profile installs cannot be seen", SOURCE))
    if profile.top.get("PayloadRemovalDisallowed") in (True, 1) and any(f.severity >= 4 for f in out):
        out.append(Finding("mobileconfig_not_removable", 4, "the user cannot remove the profile", SOURCE))
    if profile.errors:
        out.append(Finding("mobileconfig_malformed", 3, "; ".join(profile.errors)[:200], SOURCE))
    return out


def analyze(artifact: Artifact, data_path: str, ctx: Context) -> list[Finding]:
    return findings_for(parse(ctx.data))


__all__ = ["PAYLOAD_RULES", "Profile", "analyze", "findings_for", "is_profile", "parse"]
