"""office_crypto analyzer: encrypted documents, decryption with Office's
well-known passwords and analysis of the decrypted bytes, the spin-count guard."""

from __future__ import annotations

import email
import email.policy
import tempfile
from pathlib import Path

import pytest

from mailvm.config import TriageConfig
from mailvm.extract.spool import detect_type
from mailvm.triage import Triage, office_crypto
from mailvm.verdict import Artifact
from triage_helpers import ids

ENC = "oletools-test-data/encrypted"


def art(path: Path, name: str | None = None) -> Artifact:
    mime, desc = detect_type(path)
    return Artifact("0" * 64, name or path.name, path.stat().st_size, mime, str(path), ("test",), desc)


@pytest.fixture(scope="module")
def triage(tmp_path_factory) -> Triage:
    return Triage(TriageConfig(yara_rules_dir=str(tmp_path_factory.mktemp("noyara") / "absent")))


@pytest.mark.parametrize("ext", ["xls", "xlsb", "xlsm"])
def test_autostart_with_well_known_password(triage, corpus, ext, tmp_path, monkeypatch):
    src = corpus / ENC / f"autostart-encrypt-standardpassword.{ext}"
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmpdir))  # where the decrypted copy for msodde goes
    r = triage.analyze(art(src))
    found = ids(r)
    assert found["office_encrypted_default_password"] == 5
    assert "VelvetSweatshop" in next(f.detail for f in r.findings if f.id == "office_encrypted_default_password")
    assert found["office_vba_autoexec"] == 6 and found["office_vba_macro"] == 5
    assert r.verdict == "malicious" and r.errors == []
    assert list(tmpdir.iterdir()) == []  # the decrypted copy is gone


@pytest.mark.parametrize("ext", ["xls", "xlsb", "xlsm", "xlsx"])
def test_dde_with_well_known_password(triage, corpus, ext):
    r = triage.analyze(art(corpus / ENC / f"dde-test-encrypt-standardpassword.{ext}"))
    f = next(f for f in r.findings if f.id == "office_dde_command")
    assert f.severity == 8 and f.detail.startswith("decrypted:")


@pytest.mark.parametrize("name", ["encrypted.doc", "encrypted.docx", "encrypted.xls", "encrypted.xlsx", "encrypted.ppt",
                                  "encrypted.pptx"])
def test_unknown_password(triage, corpus, name):
    r = triage.analyze(art(corpus / ENC / name))
    assert ids(r) == {"office_encrypted": 4}
    assert r.verdict == "suspicious"


def test_spamassassin_encrypted_attachment(triage, corpus, tmp_path):
    msg = email.message_from_bytes((corpus / "apache-spamassassin-tdata/t/data/spam/olevbmacro/encrypted.eml").read_bytes(),
                                   policy=email.policy.default)
    part = next(p for p in msg.walk() if p.get_filename())
    p = tmp_path / "att"
    p.write_bytes(part.get_payload(decode=True))
    assert ids(triage.analyze(art(p, part.get_filename())))["office_encrypted"] == 4


def test_spin_count_guard(corpus):
    data = (corpus / ENC / "encrypted.docx").read_bytes()
    assert data.count(b'spinCount="100000"') == 1
    patched = data.replace(b'spinCount="100000"', b'spinCount="999999"')
    plain, why = office_crypto.decrypt_well_known(patched, 1 << 26)
    assert plain is None and "spin count 999999" in why


def test_decrypted_size_cap(corpus):
    data = (corpus / ENC / "autostart-encrypt-standardpassword.xlsm").read_bytes()
    plain, how = office_crypto.decrypt_well_known(data, 1 << 26)
    assert plain and plain[:2] == b"PK" and how == "VelvetSweatshop"
    capped, why = office_crypto.decrypt_well_known(data, 1024)
    assert capped is None and "larger than 1024" in why


@pytest.mark.parametrize("name", ["msodde/harmless-clean.doc", "olevba/sample_with_vba.ppt", "basic/text"])
def test_not_encrypted(triage, corpus, name):
    r = triage.analyze(art(corpus / "oletools-test-data" / name))
    assert not {"office_encrypted", "office_encrypted_default_password"} & set(ids(r))
