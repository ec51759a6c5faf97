"""mobileconfig analyzer: Apple configuration profiles written by the test (XML and binary
plists, and profiles signed into a CMS envelope with a throw-away certificate), each
payload type that hands the device to the sender, benign profiles, hostile input."""

from __future__ import annotations

import datetime
import plistlib
import uuid

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import pkcs7
from cryptography.x509.oid import NameOID

from mailvm.config import TriageConfig
from mailvm.triage import Triage, mobileconfig
from mailvm.triage.kinds import classify
from triage_helpers import art, ids


def _cert(name: str, ca: bool, issuer: tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None = None):
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    issuer_name, signing_key = (subject, key) if issuer is None else (issuer[0].subject, issuer[1])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer_name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now).not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
            .sign(signing_key, hashes.SHA256()))
    return cert, key


ROOT, ROOT_KEY = _cert("Corp Secure Root CA", ca=True)
LEAF, LEAF_KEY = _cert("vpn.corp.example", ca=False, issuer=(ROOT, ROOT_KEY))


def payload(ptype: str, **keys) -> dict:
    return {"PayloadType": ptype, "PayloadIdentifier": f"x.{uuid.uuid4()}", "PayloadUUID": str(uuid.uuid4()),
            "PayloadVersion": 1, **keys}


def profile(*payloads: dict, fmt=plistlib.FMT_XML, **top) -> bytes:
    doc = {"PayloadType": "Configuration", "PayloadDisplayName": "Security Update", "PayloadIdentifier": "com.x.p",
           "PayloadUUID": str(uuid.uuid4()), "PayloadVersion": 1, "PayloadContent": list(payloads), **top}
    return plistlib.dumps(doc, fmt=fmt)


def signed(data: bytes) -> bytes:
    """A CMS SignedData envelope with the profile inside, as Apple Configurator and openssl smime -nodetach make."""
    return (pkcs7.PKCS7SignatureBuilder().set_data(data).add_signer(LEAF, LEAF_KEY, hashes.SHA256())
            .sign(serialization.Encoding.DER, []))


ROOT_CA = payload("com.apple.security.root", PayloadContent=ROOT.public_bytes(serialization.Encoding.DER),
                  PayloadCertificateFileName="root.cer")
MDM = payload("com.apple.mdm", ServerURL="https://mdm.evil.example/server", CheckInURL="https://mdm.evil.example/checkin",
              Topic="com.apple.mgmt.External.1", AccessRights=8191)
WIFI = payload("com.apple.wifi.managed", SSID_STR="CorpGuest", EncryptionType="WPA2", Password="guestpass")


@pytest.fixture(scope="module")
def triage(tmp_path_factory) -> Triage:
    return Triage(TriageConfig(yara_rules_dir=str(tmp_path_factory.mktemp("noyara") / "absent")))


def run(triage, tmp_path, data: bytes, name: str = "Security_Update.mobileconfig"):
    p = tmp_path / name
    p.write_bytes(data)
    return triage.analyze(art(p))


@pytest.mark.parametrize("wrap", [lambda d: d, signed], ids=["xml", "signed"])
def test_root_ca_profile_is_malicious(triage, tmp_path, wrap):
    r = run(triage, tmp_path, wrap(profile(ROOT_CA)))
    assert r.kind == "mobileconfig" and not r.detonate
    assert ids(r)["mobileconfig_root_ca"] == 7 and r.verdict == "malicious"
    assert "Corp Secure Root CA" in next(f.detail for f in r.findings if f.id == "mobileconfig_root_ca")


def test_signed_profile_names_its_signer(triage, tmp_path):
    r = run(triage, tmp_path, signed(profile(WIFI)))
    info = next(f.detail for f in r.findings if f.id == "mobileconfig_profile")
    assert "signed by vpn.corp.example" in info and "com.apple.wifi.managed" in info


def test_ca_certificate_in_a_generic_certificate_payload(triage, tmp_path):
    pem = payload("com.apple.security.pem", PayloadContent=ROOT.public_bytes(serialization.Encoding.PEM))
    leaf = payload("com.apple.security.pkcs1", PayloadContent=LEAF.public_bytes(serialization.Encoding.DER))
    found = ids(run(triage, tmp_path, profile(pem, leaf)))
    assert found["mobileconfig_root_ca"] == 7 and found["mobileconfig_certificate"] == 3


def test_mdm_enrolment_binary_plist(triage, tmp_path):
    r = run(triage, tmp_path, profile(MDM, fmt=plistlib.FMT_BINARY), "enroll.mobileconfig")
    assert r.kind == "mobileconfig" and ids(r)["mobileconfig_mdm"] == 7
    assert "mdm.evil.example" in next(f.detail for f in r.findings if f.id == "mobileconfig_mdm")


@pytest.mark.parametrize("p, fid, sev", [
    (payload("com.apple.proxy.http.global", ProxyType="Manual", ProxyServer="203.0.113.9", ProxyServerPort=8080),
     "mobileconfig_proxy", 6),
    (payload("com.apple.vpn.managed", VPNType="IKEv2", IKEv2={"RemoteAddress": "vpn.evil.example", "OnDemandEnabled": 1}),
     "mobileconfig_vpn", 6),
    (payload("com.apple.vpn.managed", VPNType="IKEv2", IKEv2={"RemoteAddress": "vpn.evil.example"}), "mobileconfig_vpn", 5),
    (payload("com.apple.dnsSettings.managed", DNSSettings={"DNSProtocol": "HTTPS", "ServerURL": "https://dns.evil.example/q"}),
     "mobileconfig_dns", 5),
    (payload("com.apple.eas.account", Host="mail.corp-sso.example", EmailAddress="x@corp.example"), "mobileconfig_account", 4),
    (payload("com.apple.webClip.managed", URL="https://microsoft-login.web.app/", Label="Outlook", FullScreen=True),
     "mobileconfig_webclip", 5),
    (payload("com.apple.wifi.managed", SSID_STR="Free", ProxyType="Manual", ProxyServer="198.51.100.7"), "mobileconfig_proxy", 5),
])
def test_payloads_that_redirect_traffic_or_accounts(triage, tmp_path, p, fid, sev):
    r = run(triage, tmp_path, profile(p))
    assert ids(r)[fid] == sev and r.verdict == "suspicious", r.findings


def test_not_removable_adds_to_a_dangerous_profile(triage, tmp_path):
    found = ids(run(triage, tmp_path, profile(MDM, PayloadRemovalDisallowed=True)))
    assert found["mobileconfig_not_removable"] == 4


def test_plain_wifi_profile_is_clean(triage, tmp_path):
    r = run(triage, tmp_path, profile(WIFI), "guest-wifi.mobileconfig")
    assert r.kind == "mobileconfig" and r.verdict == "clean" and set(ids(r)) <= {"mobileconfig_profile",
                                                                                  "filetype_dangerous_extension"}


def test_kind_from_content_not_name(tmp_path):
    p = tmp_path / "readme.txt"
    p.write_bytes(signed(profile(ROOT_CA)))
    assert classify(art(p)) == "mobileconfig"
    q = tmp_path / "Info.plist"
    q.write_bytes(plistlib.dumps({"CFBundleName": "App"}))
    assert classify(art(q)) != "mobileconfig"  # a plist, but no payloads


@pytest.mark.parametrize("data", [
    b'<?xml version="1.0"?><!DOCTYPE plist [<!ENTITY a "aaaa"><!ENTITY b "&a;&a;&a;">]><plist><dict>'
    b"<key>PayloadType</key><string>&b;</string></dict></plist>",
    b"<plist><dict><key>PayloadType</key><string>Configuration</string>",  # cut short
    b"bplist00PayloadType" + bytes(range(256)),
    b"\x30\x82\x01\x00\x06\x09\x2a\x86\x48\x86\xf7\x0d\x01\x07\x02PayloadType garbage",
])
def test_hostile_profiles_are_findings_not_errors(triage, tmp_path, data):
    r = run(triage, tmp_path, data)
    assert r.errors == [] and r.kind == "mobileconfig"
    assert ids(r)["mobileconfig_malformed"] == 3


def test_static_only_kinds_are_never_detonated_by_default():
    """No launcher in the sandbox opens these kinds: triage never asks for it, nor does the default pool or policy."""
    from mailvm.config import PoolConfig
    from mailvm.policy import TRIAGE_KINDS
    from mailvm.triage import DETONATE_KINDS, KINDS
    static_only = {"onenote", "shortcut", "mobileconfig"}
    assert static_only <= set(KINDS)
    assert not static_only & (DETONATE_KINDS | set(PoolConfig().detonate_kinds) | set(TRIAGE_KINDS))


def test_encrypted_payloads_hide_what_is_installed(triage, tmp_path):
    data = plistlib.dumps({"PayloadType": "Configuration", "PayloadIdentifier": "x", "PayloadUUID": str(uuid.uuid4()),
                           "PayloadVersion": 1, "EncryptedPayloadContent": b"\x30\x80" + bytes(200)})
    r = run(triage, tmp_path, data)
    assert r.kind == "mobileconfig" and ids(r)["mobileconfig_encrypted_payload"] == 4
