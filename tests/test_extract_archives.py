"""Archive expansion (mailvm.extract.archives, officecrypt, passwords) on real archives built here."""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import io
import json
import os
import random
import shutil
import stat
import subprocess
import sys
import tarfile
import time
import zipfile
from email.message import EmailMessage
from pathlib import Path

import pytest

from mailvm.config import ExtractConfig
from mailvm.extract import extract_file, extract_message
from mailvm.extract.archives import archive_kind, is_traversal
from mailvm.extract.passwords import candidate_passwords

EICAR_SHA256 = "275a021bbfb6489e54d471899f7db9d1663fc695ec2fe2a2c4538aabf651fd0f"
EXECUTABLE_TYPES = {"application/x-executable", "application/x-pie-executable", "application/x-sharedlib"}
ELF = Path(shutil.which("true") or "/bin/true").read_bytes()


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def finding(art, fid):
    return next((f for f in art.findings if f.id == fid), None)


def limit_findings(res, what: str = ""):
    return [f for f in res.findings if f.id.endswith("_limit_exceeded") and f.severity <= 2 and what in f.detail]


def run_file(tmp_path: Path, data: bytes, name: str, cfg, make_spool, deadline=None):
    src = tmp_path / "input" / name
    src.parent.mkdir(exist_ok=True)
    src.write_bytes(data)
    spool = make_spool(cfg, deadline)
    return extract_file(src, name, spool, cfg), spool


def zip_bytes(members: dict[str, bytes], method=zipfile.ZIP_DEFLATED) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", method) as z:
        for name, data in members.items():
            z.writestr(name, data)
    return buf.getvalue()


def aes_zip(members: dict[str, bytes], password: bytes) -> bytes:
    import pyzipper

    buf = io.BytesIO()
    with pyzipper.AESZipFile(buf, "w", compression=pyzipper.ZIP_DEFLATED, encryption=pyzipper.WZ_AES) as z:
        z.setpassword(password)
        for name, data in members.items():
            z.writestr(name, data)
    return buf.getvalue()


def message_with(attachment: bytes, filename: str, body: str) -> bytes:
    m = EmailMessage()
    m["Subject"] = "documents"
    m["From"] = "sender@example.com"
    m["To"] = "victim@example.org"
    m.set_content(body)
    m.add_attachment(attachment, maintype="application", subtype="octet-stream", filename=filename)
    return m.as_bytes()


# -- EICAR (corpus) --------------------------------------------------------------------


@pytest.mark.parametrize("name,depth", [("eicar_com.zip", 1), ("eicarcom2.zip", 2)])
def test_eicar_zips_yield_the_eicar_file(corpus, name, depth, extract_cfg, make_spool):
    spool = make_spool(extract_cfg)
    res = extract_file(corpus / "eicar" / name, name, spool, extract_cfg)
    eicar = [a for a in res.artifacts if a.sha256 == EICAR_SHA256]
    assert len(eicar) == 1 and eicar[0].size == 68 and eicar[0].name == "eicar.com"
    assert eicar[0].depth == depth and eicar[0].origin[0] == f"file:{name}"
    assert res.artifacts[0].origin == (f"file:{name}",)


# -- encrypted zips and the password guesser ----------------------------------------------


def test_aes_zip_opened_with_password_from_body(extract_cfg, make_spool):
    payload = b"MZ" + os.urandom(2000)
    raw = message_with(aes_zip({"invoice.exe": payload}, b"xY7!kq"), "invoice.zip", "Hello,\nPassword: xY7!kq\nRegards")
    res = extract_message(raw, make_spool(extract_cfg), extract_cfg)
    zipart, member = res.artifacts
    assert member.sha256 == sha(payload) and member.origin == ("attachment:invoice.zip", "member:invoice.exe")
    enc = finding(zipart, "encrypted_archive")
    assert enc is not None and enc.severity == 3
    assert "AES" in enc.detail and "xY7!kq" in enc.detail and "keyword in the message text" in enc.detail
    assert finding(zipart, "encrypted_archive_unopened") is None


def test_aes_zip_without_password_in_body_is_unopened(extract_cfg, make_spool):
    raw = message_with(aes_zip({"invoice.exe": b"MZ" + b"\x00" * 500}, b"xY7!kq"), "invoice.zip", "See the attached file.")
    res = extract_message(raw, make_spool(extract_cfg), extract_cfg)
    (zipart,) = res.artifacts
    unopened = finding(zipart, "encrypted_archive_unopened")
    assert unopened is not None and unopened.severity == 4
    assert finding(zipart, "encrypted_archive") is None


def test_zipcrypto_zip_opened_with_quoted_password(tmp_path, extract_cfg, make_spool):
    tool = shutil.which("zip")
    if tool is None:
        pytest.skip("Info-ZIP zip not installed")
    src = tmp_path / "doc.js"
    src.write_bytes(b"WScript.Shell.Run('calc')\n" * 20)
    out = tmp_path / "legacy.zip"
    subprocess.run([tool, "-q", "-j", "-P", "s3cret 99", str(out), str(src)], check=True)
    raw = message_with(out.read_bytes(), "legacy.zip", 'Open with "s3cret 99" please')
    res = extract_message(raw, make_spool(extract_cfg), extract_cfg)
    zipart, member = res.artifacts
    assert member.sha256 == sha(src.read_bytes()) and member.name == "doc.js"
    enc = finding(zipart, "encrypted_archive")
    assert enc is not None and "ZipCrypto" in enc.detail and "quoted" in enc.detail


def test_mixed_zip_keeps_plain_members_when_password_unknown(tmp_path, extract_cfg, make_spool):
    import pyzipper

    buf = io.BytesIO()
    with pyzipper.AESZipFile(buf, "w", compression=pyzipper.ZIP_DEFLATED) as z:
        z.writestr("readme.txt", b"plain text member")
        z.setencryption(pyzipper.WZ_AES)
        z.setpassword(b"unguessable-Passw0rd")
        z.writestr("payload.exe", b"MZ" + b"\x01" * 300)
    res, _ = run_file(tmp_path, buf.getvalue(), "mixed.zip", extract_cfg, make_spool)
    assert [a.name for a in res.artifacts] == ["mixed.zip", "readme.txt"]
    assert finding(res.artifacts[0], "encrypted_archive_unopened") is not None


def test_candidate_passwords_order_languages_and_bounds():
    text = (
        "Hallo, das Passwort ist: Geheim123.\n"
        "Mot de passe = azerty7\n"
        "contraseña: hola99 / senha é pao1 / parola: ciao2 / wachtwoord: hallo3\n"
        "Kennwort \u201ezitat 1\u201c and pwd=zz9\n"
        "the archive password is \"two words\"\n"
        + " ".join(f"tok{i}" for i in range(500))
    )
    got = candidate_passwords(text, ["infected", "malware"], 40)
    assert len(got) == 40 and len(set(got)) == 40
    assert got[-2:] == ["infected", "malware"]  # configured ones always fit
    keyword = [p for p in got if p.source == "keyword in the message text"]
    for expected in ("Geheim123", "azerty7", "hola99", "pao1", "ciao2", "hallo3", "zitat 1", "zz9", "two words"):
        assert expected in keyword, expected
    sources = [p.source for p in got]
    assert sources.index("word of the message text") > max(i for i, s in enumerate(sources) if s.startswith("keyword"))
    assert candidate_passwords(text, ["a"], 0) == []
    assert candidate_passwords("", ["infected", "infected", ""], 10) == ["infected"]


# -- bombs and limits ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def gigabyte_of_zeros_zip(tmp_path_factory) -> bytes:
    """A zip holding 1 GiB of zeros (about 1 MB compressed), built once."""
    path = tmp_path_factory.mktemp("bomb") / "zeros.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as z:
        with z.open("zeros.bin", "w", force_zip64=True) as out:
            block = b"\0" * (1 << 20)
            for _ in range(1024):
                out.write(block)
    return path.read_bytes()


def _with_comment(zip_data: bytes, comment: bytes) -> bytes:
    buf = io.BytesIO(zip_data)
    with zipfile.ZipFile(buf, "a") as z:
        z.comment = comment
    return buf.getvalue()


@pytest.mark.slow
def test_nested_zip_bomb_is_bounded(tmp_path, gigabyte_of_zeros_zip, extract_cfg, make_spool):
    # three different 1 GiB bombs (a comment makes each unique), inside a zip, inside a zip
    inner = {f"part{i}.zip": _with_comment(gigabyte_of_zeros_zip, b"copy %d" % i) for i in range(3)}
    level2 = zip_bytes(inner)
    level3 = zip_bytes({"archive.zip": level2})
    t0 = time.monotonic()
    res, spool = run_file(tmp_path, level3, "bomb.zip", extract_cfg, make_spool)
    elapsed = time.monotonic() - t0
    assert elapsed < 60
    assert limit_findings(res)
    on_disk = sum(p.stat().st_size for p in spool.root.iterdir())
    assert spool.budget.total_bytes <= extract_cfg.max_total_bytes
    assert on_disk <= extract_cfg.max_total_bytes
    cut = [a for a in res.artifacts if a.name == "zeros.bin"]
    assert cut and all(finding(a, "file_truncated") for a in cut)
    assert all(a.size <= extract_cfg.max_file_bytes for a in res.artifacts)


def test_compression_ratio_limit_cuts_a_member(tmp_path, make_spool):
    cfg = dataclasses.replace(ExtractConfig(), max_ratio=50)
    data = zip_bytes({"zeros.bin": b"\0" * (40 << 20)})
    res, _ = run_file(tmp_path, data, "ratio.zip", cfg, make_spool)
    zipart, member = res.artifacts
    assert member.size < 40 << 20
    assert member.size <= len(data) * 50 + (1 << 20)
    assert limit_findings(res, "max_ratio")
    assert finding(member, "file_truncated") is not None


def test_compressed_tar_stops_after_a_cut_member(tmp_path, extract_cfg, make_spool):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz", compresslevel=1) as t:
        big = tarfile.TarInfo("zeros.bin")
        big.size = 200 << 20
        t.addfile(big, io.BytesIO(bytes(big.size)))
        small = tarfile.TarInfo("after.txt")
        small.size = 5
        t.addfile(small, io.BytesIO(b"after"))
    t0 = time.monotonic()
    res, _ = run_file(tmp_path, buf.getvalue(), "bomb.tgz", extract_cfg, make_spool)
    assert time.monotonic() - t0 < 20
    names = [a.name for a in res.artifacts]
    assert names == ["bomb.tgz", "zeros.bin"]  # reaching after.txt would mean inflating the rest
    assert res.artifacts[1].size == extract_cfg.max_file_bytes
    assert limit_findings(res, "stream_after_cut") and limit_findings(res, "max_file_bytes")


def test_member_count_limit(tmp_path, make_spool):
    cfg = dataclasses.replace(ExtractConfig(), max_members=100)
    data = zip_bytes({f"f{i:04d}.txt": b"%d" % i for i in range(150)}, zipfile.ZIP_STORED)
    res, _ = run_file(tmp_path, data, "many.zip", cfg, make_spool)
    assert len(res.artifacts) == 1 + 100
    assert limit_findings(res, "max_members")
    # an index declaring far more entries than allowed is not even loaded
    data = zip_bytes({f"g{i:05d}": b"" for i in range(2500)}, zipfile.ZIP_STORED)
    res, _ = run_file(tmp_path, data, "huge-index.zip", cfg, make_spool)
    assert len(res.artifacts) == 1 and limit_findings(res, "2500 entries")


def test_nesting_depth_limit(tmp_path, extract_cfg, make_spool):
    data = b"MZ innermost payload"
    for level in range(8):
        data = zip_bytes({f"level{level}.zip" if level else "payload.exe": data})
    res, _ = run_file(tmp_path, data, "deep.zip", extract_cfg, make_spool)
    depths = [a.depth for a in res.artifacts]
    assert max(depths) == extract_cfg.max_depth
    assert not any(a.name == "payload.exe" for a in res.artifacts)
    assert limit_findings(res, "max_depth")


def test_time_budget_stops_extraction(tmp_path, extract_cfg, make_spool):
    data = zip_bytes({"a.txt": b"x"})
    res, _ = run_file(tmp_path, data, "late.zip", extract_cfg, make_spool, deadline=time.monotonic() - 1)
    assert res.artifacts == [] and limit_findings(res, "time_budget")


def test_same_inner_archive_twice_expanded_once(tmp_path, extract_cfg, make_spool):
    inner = zip_bytes({"tool.exe": b"MZ" + b"\x07" * 100})
    res, _ = run_file(tmp_path, zip_bytes({"a/inner.zip": inner, "b/inner.zip": inner}), "dup.zip", extract_cfg, make_spool)
    assert [a.origin[1:] for a in res.artifacts] == [
        (),
        ("member:a/inner.zip",),
        ("member:b/inner.zip",),
        ("member:a/inner.zip", "member:tool.exe"),
    ]


# -- hostile names and special members -----------------------------------------------------


def _files_outside(root: Path, spool_root: Path) -> set[str]:
    return {
        str(p.relative_to(root))
        for p in root.rglob("*")
        if not p.resolve().is_relative_to(spool_root.resolve()) and p != spool_root
    }


def test_path_traversal_and_special_members_stay_in_the_spool(tmp_path, extract_cfg, make_spool):
    tag = os.urandom(4).hex()
    evil_rel = f"../../../../../../tmp/evil-{tag}"
    evil_abs = f"/tmp/abs-{tag}/path"
    zdata = zip_bytes({evil_rel: b"owned", evil_abs: b"owned too", "ok.txt": b"fine"})
    # a zip symlink member (unix mode S_IFLNK in the external attributes)
    buf = io.BytesIO(zdata)
    with zipfile.ZipFile(buf, "a") as z:
        info = zipfile.ZipInfo("link-to-passwd")
        info.create_system = 3
        info.external_attr = (stat.S_IFLNK | 0o777) << 16
        z.writestr(info, "/etc/passwd")
    zdata = buf.getvalue()

    tbuf = io.BytesIO()
    with tarfile.open(fileobj=tbuf, mode="w") as t:
        for name, data in ((f"../evil-tar-{tag}", b"tar owned"), ("normal.txt", b"normal")):
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            t.addfile(ti, io.BytesIO(data))
        sym = tarfile.TarInfo("shadow-link")
        sym.type, sym.linkname = tarfile.SYMTYPE, "/etc/shadow"
        t.addfile(sym)
        dev = tarfile.TarInfo("kmem")
        dev.type, dev.devmajor, dev.devminor = tarfile.CHRTYPE, 1, 2
        t.addfile(dev)
        hard = tarfile.TarInfo("hard-link")
        hard.type, hard.linkname = tarfile.LNKTYPE, "normal.txt"
        t.addfile(hard)
        d = tarfile.TarInfo("somedir")
        d.type = tarfile.DIRTYPE
        t.addfile(d)

    before = _files_outside(tmp_path, tmp_path / "none")
    cwd_before = set(os.listdir("."))
    results = []
    for data, name in ((zdata, "evil.zip"), (tbuf.getvalue(), "evil.tar")):
        res, spool = run_file(tmp_path, data, name, extract_cfg, make_spool)
        results.append(res)
        for p in spool.root.iterdir():
            st = os.lstat(p)
            assert stat.S_ISREG(st.st_mode)  # no links, devices or directories were created
            assert p.name.endswith(".bin")
    after = _files_outside(tmp_path, tmp_path / "none")
    new = {p for p in after - before if not p.startswith(("spool", "input"))}
    assert new == set()
    assert set(os.listdir(".")) == cwd_before
    assert not Path(f"/tmp/evil-{tag}").exists() and not Path(f"/tmp/abs-{tag}").exists()
    assert not Path(f"/tmp/evil-tar-{tag}").exists()

    zres, tres = results
    zip_art = zres.artifacts[0]
    trav = finding(zip_art, "archive_path_traversal")
    assert trav is not None and trav.severity == 6 and f"evil-{tag}" in trav.detail and f"abs-{tag}" in trav.detail
    special = finding(zip_art, "archive_special_member")
    assert special is not None and special.severity == 3 and "link-to-passwd" in special.detail
    members = {a.name: a for a in zres.artifacts[1:]}
    assert set(members) == {f"evil-{tag}", "path", "ok.txt"}  # traversal names' data kept, under generated paths
    assert members[f"evil-{tag}"].origin[-1] == f"member:{evil_rel}"

    tar_art = tres.artifacts[0]
    assert finding(tar_art, "archive_path_traversal") is not None
    special = finding(tar_art, "archive_special_member")
    assert special is not None and "shadow-link" in special.detail and "/etc/shadow" in special.detail
    assert "kmem" in special.detail and "hard-link" not in special.detail
    assert sorted(a.name for a in tres.artifacts[1:]) == sorted([f"evil-tar-{tag}", "normal.txt"])


def test_is_traversal():
    for bad in ("../x", "a/../../x", "/etc/passwd", "\\\\server\\share", "C:\\Windows\\x", "..\\..\\x"):
        assert is_traversal(bad), bad
    for ok in ("a/b/c", "a..b", "..hidden", "dir/file..txt"):
        assert not is_traversal(ok), ok


# -- other formats --------------------------------------------------------------------------


def _assert_elf_member(res, name="true"):
    members = [a for a in res.artifacts if a.name == name]
    assert len(members) == 1, [a.name for a in res.artifacts]
    assert members[0].sha256 == sha(ELF)
    assert members[0].type in EXECUTABLE_TYPES


def test_7z_with_elf(tmp_path, extract_cfg, make_spool):
    import py7zr

    buf = io.BytesIO()
    with py7zr.SevenZipFile(buf, "w") as z:
        z.writestr(ELF, "bin/true")
        z.writestr(b"notes", "notes.txt")
    res, _ = run_file(tmp_path, buf.getvalue(), "tools.7z", extract_cfg, make_spool)
    assert res.artifacts[0].type == "application/x-7z-compressed"
    _assert_elf_member(res)
    assert [a.origin[-1] for a in res.artifacts[1:]] == ["member:bin/true", "member:notes.txt"]


@pytest.mark.parametrize("header_encryption", [False, True])
def test_aes_7z_password_from_body(header_encryption, extract_cfg, make_spool):
    import py7zr

    buf = io.BytesIO()
    with py7zr.SevenZipFile(buf, "w", password="Sommer2024", header_encryption=header_encryption) as z:
        z.writestr(ELF, "true")
    data = buf.getvalue()
    res = extract_message(message_with(data, "a.7z", "Kennwort: Sommer2024"), make_spool(extract_cfg), extract_cfg)
    _assert_elf_member(res)
    assert "Sommer2024" in finding(res.artifacts[0], "encrypted_archive").detail
    res = extract_message(message_with(data, "a.7z", "no password"), make_spool(extract_cfg), extract_cfg)
    assert len(res.artifacts) == 1 and finding(res.artifacts[0], "encrypted_archive_unopened") is not None


@pytest.mark.parametrize("mode,name", [("w:xz", "tools.tar.xz"), ("w:gz", "tools.tgz"), ("w:bz2", "tools.tar.bz2"), ("w", "tools.tar")])
def test_tar_family_with_elf(tmp_path, mode, name, extract_cfg, make_spool):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=mode) as t:
        ti = tarfile.TarInfo("usr/bin/true")
        ti.size = len(ELF)
        t.addfile(ti, io.BytesIO(ELF))
    res, _ = run_file(tmp_path, buf.getvalue(), name, extract_cfg, make_spool)
    _assert_elf_member(res)
    assert len(res.artifacts) == 2  # the tar inside a compressor is read directly, not stored twice
    assert res.artifacts[1].origin == (f"file:{name}", "member:usr/bin/true")


def test_gzip_of_a_single_file(tmp_path, extract_cfg, make_spool):
    res, _ = run_file(tmp_path, gzip.compress(ELF), "true.gz", extract_cfg, make_spool)
    _assert_elf_member(res)


def test_iso9660_image(tmp_path, extract_cfg, make_spool):
    import pycdlib

    iso = pycdlib.PyCdlib()
    iso.new(joliet=3, rock_ridge="1.09")
    iso.add_directory("/DOCS", rr_name="docs", joliet_path="/docs")
    iso.add_fp(io.BytesIO(ELF), len(ELF), "/DOCS/INVOICE.;1", rr_name="invoice.pdf.exe", joliet_path="/docs/invoice.pdf.exe")
    out = io.BytesIO()
    iso.write_fp(out)
    iso.close()
    res, _ = run_file(tmp_path, out.getvalue(), "invoice.iso", extract_cfg, make_spool)
    assert res.artifacts[0].type == "application/x-iso9660-image"
    _assert_elf_member(res, "invoice.pdf.exe")


def test_cab_archive(tmp_path, extract_cfg, make_spool):
    tool = shutil.which("gcab")
    if tool is None:
        pytest.skip("gcab not installed")
    src = tmp_path / "true"
    src.write_bytes(ELF)
    out = tmp_path / "x.cab"
    subprocess.run([tool, "-c", "-z", "-n", str(out), str(src)], check=True, cwd=tmp_path)
    res, _ = run_file(tmp_path, out.read_bytes(), "update.cab", extract_cfg, make_spool)
    _assert_elf_member(res)


# -- encrypted Office (corpus) ---------------------------------------------------------------


@pytest.mark.parametrize("ext", ["xls", "xlsm", "xlsb"])
def test_office_default_password_documents_are_decrypted(corpus, ext, extract_cfg, make_spool):
    name = f"autostart-encrypt-standardpassword.{ext}"
    spool = make_spool(extract_cfg)
    res = extract_file(corpus / "oletools-test-data" / "encrypted" / name, name, spool, extract_cfg)
    enc, dec = res.artifacts
    f = finding(enc, "office_encrypted")
    assert f is not None and f.severity == 3 and "VelvetSweatshop" in f.detail
    assert dec.origin == (f"file:{name}", f"decrypted:{name}")
    assert dec.sha256 != enc.sha256
    head = Path(dec.path).read_bytes()[:8]
    assert head.startswith(b"PK\x03\x04") if ext != "xls" else head == b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"
    if ext == "xls":  # the decrypted workbook is no longer encrypted
        import msoffcrypto

        with open(dec.path, "rb") as fh:
            assert not msoffcrypto.OfficeFile(fh).is_encrypted()


def test_office_with_unknown_password_is_unopened(corpus, extract_cfg, make_spool):
    spool = make_spool(extract_cfg)
    res = extract_file(corpus / "oletools-test-data" / "encrypted" / "encrypted.doc", "encrypted.doc", spool, extract_cfg)
    (art,) = res.artifacts
    f = finding(art, "office_encrypted_unopened")
    assert f is not None and f.severity == 5


def test_unencrypted_ole_document_is_left_alone(corpus, extract_cfg, make_spool):
    path = corpus / "oletools-test-data" / "olevba" / "sample_with_vba.ppt"
    res = extract_file(path, path.name, make_spool(extract_cfg), extract_cfg)
    assert len(res.artifacts) == 1 and res.artifacts[0].findings == []


# -- damaged input --------------------------------------------------------------------------


def test_corrupt_archives_become_findings(tmp_path, extract_cfg, make_spool):
    # fixed pseudo-random bytes: some random tails happen to parse as an empty
    # archive (libarchive's RAR5 reader), which is not corruption
    rnd = random.Random(20261126)
    good = zip_bytes({"a.exe": b"MZ" + rnd.randbytes(5000), "b.txt": b"hello" * 100})
    cases = {
        "truncated.zip": good[: len(good) // 2],
        "garbage.zip": b"PK\x03\x04" + rnd.randbytes(3000),
        "garbage.7z": b"7z\xbc\xaf\x27\x1c" + rnd.randbytes(3000),
        "garbage.rar": b"Rar!\x1a\x07\x01\x00" + rnd.randbytes(3000),
        "garbage.gz": b"\x1f\x8b\x08\x00" + rnd.randbytes(3000),
        "garbage.cab": b"MSCF\x00\x00\x00\x00" + rnd.randbytes(3000),
        "badcrc.zip": zip_bytes({"b.txt": b"hello" * 100}, zipfile.ZIP_STORED).replace(b"hello", b"HELLO", 1),
    }
    for name, data in cases.items():
        res, _ = run_file(tmp_path, data, name, extract_cfg, make_spool)
        assert res.artifacts and res.artifacts[0].origin == (f"file:{name}",), name
        assert "extract_error" not in [f.id for f in res.findings], name
        corrupt = finding(res.artifacts[0], "archive_corrupt")
        assert corrupt is not None and corrupt.severity == 2, name


def test_bad_crc_member_is_kept_with_a_finding(tmp_path, extract_cfg, make_spool):
    good = zip_bytes({"b.txt": b"hello" * 100}, zipfile.ZIP_STORED)
    res, _ = run_file(tmp_path, good.replace(b"hello", b"HELLO", 1), "crc.zip", extract_cfg, make_spool)
    zipart, member = res.artifacts
    assert member.name == "b.txt" and "CRC" in finding(zipart, "archive_corrupt").detail


def test_archive_kind_uses_content_not_names():
    assert archive_kind("application/octet-stream", b"MSCF\x00\x00\x00\x00....") == "cab"
    assert archive_kind("application/octet-stream", b"\x00" * 257 + b"ustar\x00") == "tar"
    assert archive_kind("application/x-rar", b"Rar!\x1a\x07\x01\x00") == "rar5"
    assert archive_kind("application/vnd.openxmlformats-officedocument.wordprocessingml.document", b"PK\x03\x04") is None
    assert archive_kind("text/plain", b"just text") is None


# -- defects found by the fuzzers (tests/fuzz, docs/reliability.md "Fuzzing") ------------------

EICAR = b"X5O!P%@AP[4\\PZX54(P^)7CC)7}$" + b"EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*"


def _scanner(tmp_path):
    from mailvm.config import parse_config
    from mailvm.scan import Scanner
    from mailvm.triage import Triage

    cfg = parse_config({"scantable": {"path": str(tmp_path / "t")}, "spool": {"dir": str(tmp_path / "s")},
                        "links": {"enabled": False}})
    return Scanner(cfg, Triage(cfg.triage), None, None)


def test_rar4_members_repeating_the_name_before_them_are_analysed(tmp_path, extract_cfg, make_spool):
    """libarchive returns a RAR 4 header that repeats the previous name as a nameless type-0 entry
    (the next part of a split file to it); it was skipped as a device and never analysed."""
    from fuzz.builders import rar4_archive

    data = rar4_archive([("invoice.exe", b""), ("invoice.exe", EICAR), ("invoice.exe", b"MZ third"),
                         ("readme.txt", b"after them")])
    res, _ = run_file(tmp_path, data, "invoice.rar", extract_cfg, make_spool)
    rar = res.artifacts[0]
    got = sorted((a.name, a.sha256) for a in res.artifacts[1:])
    assert got == sorted([("invoice.exe", sha(b"")), ("invoice.exe", EICAR_SHA256), ("invoice.exe", sha(b"MZ third")),
                          ("readme.txt", sha(b"after them"))])
    assert all(a.origin == ("file:invoice.rar", f"member:{a.name}") and a.depth == 1 for a in res.artifacts[1:])
    assert rar.findings == [], rar.findings  # neither a "device" nor corruption

    report = _scanner(tmp_path).scan_file(tmp_path / "input" / "invoice.rar")
    assert report.verdict == "malicious", report.to_dict()


class _UnnamedZipInfo(zipfile.ZipInfo):
    """Lets zipfile write an entry with an empty name (its is_dir() would raise on one)."""

    def is_dir(self) -> bool:
        return False


def zip_with_odd_names() -> bytes:
    """An empty-named entry first (as unzip and zipfile read it), then EICAR, then a name with a NUL in it."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as z:
        unnamed = _UnnamedZipInfo("x")
        unnamed.filename = ""
        z.writestr(unnamed, b"first")
        z.writestr("invoice.exe", EICAR)
        z.writestr("note.pdf#NUL#.exe", b"MZ cut at a NUL")
    data = buf.getvalue()
    assert data.count(b"#NUL#") == 2  # local header and central directory; the CRCs cover the data only
    return data.replace(b"#NUL#", b"\x00\x00\x00\x00\x00")


def test_zip_members_after_an_empty_named_entry_are_extracted(tmp_path, extract_cfg, make_spool):
    """ZipInfo.is_dir() raised IndexError on an empty name: the whole zip was archive_corrupt and EICAR behind
    such an entry scanned clean 2 (found by the fuzzers)."""
    data = zip_with_odd_names()
    names = [i.orig_filename for i in zipfile.ZipFile(io.BytesIO(data)).infolist()]
    assert names == ["", "invoice.exe", "note.pdf\x00\x00\x00\x00\x00.exe"]
    res, _ = run_file(tmp_path, data, "invoice.zip", extract_cfg, make_spool)
    zipart = res.artifacts[0]
    got = {a.sha256: a.name for a in res.artifacts[1:]}
    assert got == {sha(b"first"): "unnamed", EICAR_SHA256: "invoice.exe", sha(b"MZ cut at a NUL"): "note.pdf"}
    assert finding(zipart, "archive_corrupt") is None, zipart.findings
    bad = finding(zipart, "archive_bad_member_name")
    assert bad is not None and bad.severity == 3 and bad.detail.startswith("2 member(s)"), zipart.findings
    assert "(empty) (empty name)" in bad.detail and "note.pdf\\x00" in bad.detail and "(NUL in the name)" in bad.detail

    report = _scanner(tmp_path).scan_file(tmp_path / "input" / "invoice.zip")
    assert report.verdict == "malicious", report.to_dict()


def test_ordinary_zip_names_are_not_flagged(tmp_path, extract_cfg, make_spool):
    res, _ = run_file(tmp_path, zip_bytes({"dir/": b"", "dir/a.txt": b"a", "b.txt": b"b"}), "ok.zip", extract_cfg, make_spool)
    assert res.artifacts[0].findings == [] and sorted(a.name for a in res.artifacts[1:]) == ["a.txt", "b.txt"]


_EXTRACT_IN_A_CHILD = """
import json, sys
from pathlib import Path
from mailvm.config import ExtractConfig
from mailvm.extract import extract_file
from mailvm.extract.spool import Spool
cfg = ExtractConfig()
res = extract_file(sys.argv[1], Path(sys.argv[1]).name, Spool(sys.argv[2], cfg), cfg)
print(json.dumps([[a.name, a.size, [[f.id, f.detail] for f in a.findings]] for a in res.artifacts]))
"""


def test_cab_with_a_fatal_data_error_ends_with_a_finding_not_a_crash(tmp_path):
    """84 bytes found by the fuzzers (a stored CAB whose CFFILE lost two bytes): after "Invalid CFDATA"
    (ARCHIVE_FATAL) the reader asked libarchive 3.6.2 for the next header and it crashed (SIGSEGV), killing
    the scan worker; the message tempfailed on every retry.  Run in a child so that a crash fails this test."""
    cab = Path(__file__).parent / "fuzz" / "corpus" / "archive" / "cab-segfault-libarchive.cab"
    proc = subprocess.run([sys.executable, "-c", _EXTRACT_IN_A_CHILD, str(cab), str(tmp_path / "spool")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, (proc.returncode, proc.stderr[-2000:])
    (name, size, findings), *members = json.loads(proc.stdout)
    assert name == "cab-segfault-libarchive.cab" and size == 84
    corrupt = [d for fid, d in findings if fid == "archive_corrupt"]
    assert corrupt and "Invalid CFDATA" in corrupt[0] and "entries after voice.pdf.exe not read" in corrupt[0]
    assert [m[0] for m in members] == ["voice.pdf.exe"]  # what was read before the error stays
