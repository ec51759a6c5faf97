"""What a Windows sample finds in its Wine prefix: user folders, decoy credential stores, fixes.

Standard library only (runs inside the guest).

:func:`seed_prefix` is called on every detonation's own copy of the prefix
(:func:`mailvm.guest.wine.prepare_prefix`) before Wine starts, so a stealer
has something to steal and a ransomware something to encrypt, and the trace
shows it reaching for them:

* the user's shell folders (``C:\\users\\user\\Documents``, ``Desktop``...) are
  links to the sandbox HOME's folders that hold the decoy documents (the
  template's links point at the HOME it was created with, which is gone);
* decoy credential stores where stealers look: Chrome/Edge ``Login Data`` and
  ``Local State``, Firefox and Thunderbird profiles (``logins.json``,
  ``key4.db``), an Outlook data file and mail profile, FileZilla's
  ``sitemanager.xml``/``recentservers.xml``, an Electrum wallet; registry
  sessions of PuTTY and WinSCP and an Outlook mail profile;
* ADO's type library registered under the version Wine 8's ``msado15.dll``
  asks for (1.0; its embedded library says 2.8, so ``ADODB.Stream`` cannot be
  scripted at all without it): JScript/VBScript downloaders then get as far as
  ``SaveToFile``, which Wine 8 does not implement but traces with the target
  path.

Every secret is fake (``mailvm-decoy``), the files are small and the work takes
milliseconds.
"""

from __future__ import annotations

import json
import logging
import os
import struct
from typing import Iterable

from mailvm.guest.winpath import HOME, SHELL_FOLDERS, WIN_USER

log = logging.getLogger(__name__)

ADODB_LIBID = "{2A75196C-D9EB-4129-B803-931327F72D5C}"
ADODB_TLB = "msado15-v1.tlb"
_ADO_DLL = ("Program Files/Common Files/System/ADO/msado15.dll",
            "Program Files (x86)/Common Files/System/ADO/msado15.dll")
REG_STAMP = 1700000000

_LOCAL = "AppData/Local"
_ROAMING = "AppData/Roaming"
_FF = "k3x9w2.default-release"
_TB = "q7w1e2.default"
_LOGINS_JSON = json.dumps({"nextId": 2, "logins": [{
    "id": 1, "hostname": "https://mail.example.com", "httpRealm": None, "formSubmitURL": "https://mail.example.com",
    "usernameField": "user", "passwordField": "pass",
    "encryptedUsername": "MDoEEPgAAAAAAAAAAAAAAAAAAAEwFAYIKoZIhvcNAwcECG1haWx2bWRlY295",
    "encryptedPassword": "MDoEEPgAAAAAAAAAAAAAAAAAAAEwFAYIKoZIhvcNAwcECG1haWx2bS1kZWNveQ==",
    "guid": "{5b0c55a2-1c4e-4f5e-9a7f-6d5a3f2b1c0d}", "encType": 1, "timesUsed": 4}]}).encode()

#: decoy files: path under C:\users\user -> content (bytes, or "sqlite:<schema>" for a small SQLite file)
DECOY_FILES: tuple[tuple[str, bytes | str], ...] = (
    (f"{_LOCAL}/Google/Chrome/User Data/Local State",
     b'{"os_crypt":{"encrypted_key":"RFBBUEkBAAAA0Iyd3wEV0RGMegDAT8KX6wEAAABtYWlsdm0tZGVjb3k="}}'),
    (f"{_LOCAL}/Google/Chrome/User Data/Default/Login Data", "sqlite:chrome"),
    (f"{_LOCAL}/Google/Chrome/User Data/Default/Network/Cookies", "sqlite:cookies"),
    (f"{_LOCAL}/Microsoft/Edge/User Data/Local State",
     b'{"os_crypt":{"encrypted_key":"RFBBUEkBAAAA0Iyd3wEV0RGMegDAT8KX6wEAAABtYWlsdm0tZGVjb3k="}}'),
    (f"{_LOCAL}/Microsoft/Edge/User Data/Default/Login Data", "sqlite:chrome"),
    (f"{_ROAMING}/Mozilla/Firefox/profiles.ini",
     f"[Profile0]\r\nName=default-release\r\nIsRelative=1\r\nPath=Profiles/{_FF}\r\nDefault=1\r\n".encode()),
    (f"{_ROAMING}/Mozilla/Firefox/Profiles/{_FF}/logins.json", _LOGINS_JSON),
    (f"{_ROAMING}/Mozilla/Firefox/Profiles/{_FF}/key4.db", "sqlite:key4"),
    (f"{_ROAMING}/Mozilla/Firefox/Profiles/{_FF}/cookies.sqlite", "sqlite:cookies"),
    (f"{_ROAMING}/Thunderbird/profiles.ini",
     f"[Profile0]\r\nName=default\r\nIsRelative=1\r\nPath=Profiles/{_TB}\r\nDefault=1\r\n".encode()),
    (f"{_ROAMING}/Thunderbird/Profiles/{_TB}/logins.json", _LOGINS_JSON),
    (f"{_ROAMING}/Thunderbird/Profiles/{_TB}/key4.db", "sqlite:key4"),
    (f"{_ROAMING}/Thunderbird/Profiles/{_TB}/prefs.js",
     b'user_pref("mail.server.server1.hostname", "imap.example.com");\r\n'
     b'user_pref("mail.server.server1.userName", "j.doe@example.com");\r\n'),
    (f"{_LOCAL}/Microsoft/Outlook/j.doe@example.com.ost", b"!BDN" + b"\x00" * 508),
    (f"{_ROAMING}/FileZilla/sitemanager.xml",
     b'<?xml version="1.0" encoding="UTF-8"?>\r\n<FileZilla3><Servers><Server><Host>ftp.example.com</Host>'
     b'<Port>21</Port><Protocol>0</Protocol><User>webadmin</User>'
     b'<Pass encoding="base64">bWFpbHZtLWRlY295</Pass><Name>website</Name></Server></Servers></FileZilla3>\r\n'),
    (f"{_ROAMING}/FileZilla/recentservers.xml",
     b'<?xml version="1.0" encoding="UTF-8"?>\r\n<FileZilla3><RecentServers><Server><Host>10.0.0.5</Host>'
     b'<Port>22</Port><Protocol>1</Protocol><User>backup</User><Pass encoding="base64">bWFpbHZtLWRlY295</Pass>'
     b'</Server></RecentServers></FileZilla3>\r\n'),
    (f"{_ROAMING}/Electrum/wallets/default_wallet", b'{"seed_version": 18, "wallet_type": "standard", '
                                                     b'"keystore": {"type": "bip32", "xprv": "mailvm-decoy"}}'),
)

#: decoy registry keys (HKCU-relative, as user.reg writes them): key -> values
DECOY_USER_KEYS: tuple[tuple[str, tuple[tuple[str, str], ...]], ...] = (
    ("Software\\SimonTatham\\PuTTY\\Sessions\\prod-db", (
        ("HostName", "db01.corp.example.com"), ("UserName", "dbadmin"), ("PortNumber", "dword:00000016"),
        ("PublicKeyFile", "C:\\users\\user\\Documents\\keys\\dbadmin.ppk"))),
    ("Software\\SimonTatham\\PuTTY\\SshHostKeys", (
        ("ssh-ed25519@22:db01.corp.example.com", "0x6d61696c766d2d6465636f79"),)),
    ("Software\\Martin Prikryl\\WinSCP 2\\Sessions\\backup@files.corp.example.com", (
        ("HostName", "files.corp.example.com"), ("UserName", "backup"),
        ("Password", "A35C4E5D5B5C5B5D6F6E726F6F6D6A6D726B686D6A6E6D"))),
    ("Software\\Microsoft\\Office\\16.0\\Outlook\\Profiles\\Outlook\\9375CFF0413111d3B88A00104B2A6676\\00000002", (
        ("Account Name", "j.doe@example.com"), ("Email", "j.doe@example.com"),
        ("IMAP Server", "imap.example.com"), ("IMAP User", "j.doe@example.com"),
        ("IMAP Password", "hex:02,6d,61,69,6c,76,6d,2d,64,65,63,6f,79"))),
)
_SQL = {
    "chrome": ("CREATE TABLE logins (origin_url VARCHAR NOT NULL, action_url VARCHAR, username_element VARCHAR, "
               "username_value VARCHAR, password_element VARCHAR, password_value BLOB, date_created INTEGER);",
               "INSERT INTO logins VALUES ('https://mail.example.com/', 'https://mail.example.com/login', 'user', "
               "'j.doe@example.com', 'pass', X'7631306d61696c766d2d6465636f79', 13300000000000000);"),
    "cookies": ("CREATE TABLE cookies (host_key TEXT, name TEXT, value TEXT, encrypted_value BLOB);",
                "INSERT INTO cookies VALUES ('.example.com', 'session', '', X'7631306d61696c766d');"),
    "key4": ("CREATE TABLE metadata (id PRIMARY KEY UNIQUE ON CONFLICT REPLACE, item1, item2);",
             "INSERT INTO metadata VALUES ('password', X'6d61696c766d', X'6465636f79');"),
}


def user_dir(prefix: str) -> str:
    return os.path.join(prefix, "drive_c", "users", WIN_USER)


def seed_prefix(prefix: str, uid: int, gid: int, home_in: str = HOME) -> None:
    """Make a detonation's prefix copy at ``prefix`` (a host path) ready for a Windows sample."""
    udir = user_dir(prefix)
    if os.path.isdir(udir):
        link_shell_folders(udir, home_in, uid, gid)
        write_decoy_files(udir, uid, gid)
    append_reg(os.path.join(prefix, "user.reg"), DECOY_USER_KEYS)
    register_adodb_typelib(prefix, uid, gid)


def link_shell_folders(udir: str, home_in: str, uid: int, gid: int) -> None:
    """``C:\\users\\user\\Documents`` etc. -> the sandbox HOME's folders (where the decoy documents are)."""
    for name in SHELL_FOLDERS:
        path = os.path.join(udir, name)
        if os.path.islink(path):
            os.unlink(path)
        elif os.path.exists(path):
            continue  # a real folder in the template: leave it
        os.symlink(f"{home_in}/{name}", path)
        os.lchown(path, uid, gid)


def _makedirs(root: str, rel_dir: str, uid: int, gid: int) -> str:
    path = root
    for part in [p for p in rel_dir.split("/") if p]:
        path = os.path.join(path, part)
        if not os.path.isdir(path):
            os.mkdir(path, 0o755)
            os.chown(path, uid, gid)
    return path


def _sqlite_bytes(kind: str, dest: str) -> None:
    create, insert = _SQL[kind]
    try:
        import sqlite3  # in Debian's libpython3 stdlib; a guest image without it still gets the header below

        con = sqlite3.connect(dest)
        try:
            con.execute(create)
            con.execute(insert)
            con.commit()
        finally:
            con.close()
    except Exception as exc:  # ImportError, sqlite3.Error: the header alone still looks like the store
        log.warning("decoy %s: %s", dest, exc)
        with open(dest, "wb") as fh:
            fh.write(b"SQLite format 3\x00" + struct.pack(">H", 4096) + b"\x00" * 4078)


def write_decoy_files(udir: str, uid: int, gid: int, files: Iterable[tuple[str, bytes | str]] = DECOY_FILES) -> None:
    for rel, content in files:
        folder, _, name = rel.rpartition("/")
        dest = os.path.join(_makedirs(udir, folder, uid, gid), name)
        if os.path.lexists(dest):
            os.unlink(dest)  # a link into the template must not be written through
        if isinstance(content, str):
            _sqlite_bytes(content.split(":", 1)[1], dest)
        else:
            with open(dest, "wb") as fh:
                fh.write(content)
        os.chown(dest, uid, gid)
        os.chmod(dest, 0o600)


def _reg_string(text: str) -> str:
    if text.startswith(("dword:", "hex:")):
        return text
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def append_reg(hive: str, keys: Iterable[tuple[str, tuple[tuple[str, str], ...]]]) -> None:
    """Append keys to a Wine ``.reg`` hive (read by wineserver when it starts; later sections add to earlier)."""
    if not os.path.isfile(hive):
        return
    out = []
    for key, values in keys:
        out.append(f"\n[{key.replace(chr(92), chr(92) * 2)}] {REG_STAMP}\n")
        for name, data in values:
            vname = "@" if name == "@" else _reg_string(name)
            out.append(f"{vname}={_reg_string(data)}\n")
    with open(hive, "a", encoding="utf-8") as fh:
        fh.write("".join(out))


def extract_typelib(dll: bytes) -> bytes | None:
    """The ``TYPELIB`` resource of a PE (the first one), or None."""
    try:
        pe = struct.unpack_from("<I", dll, 0x3C)[0]
        if dll[pe:pe + 4] != b"PE\x00\x00":
            return None
        nsect, opt_size = struct.unpack_from("<H", dll, pe + 6)[0], struct.unpack_from("<H", dll, pe + 20)[0]
        opt = pe + 24
        magic = struct.unpack_from("<H", dll, opt)[0]
        dirs = opt + (96 if magic == 0x10B else 112)
        rsrc_rva = struct.unpack_from("<I", dll, dirs + 2 * 8)[0]
        sections = []
        for i in range(nsect):
            off = opt + opt_size + 40 * i
            vsize, va, raw_size, raw_ptr = struct.unpack_from("<IIII", dll, off + 8)
            sections.append((va, max(vsize, raw_size), raw_ptr))

        def at(rva: int) -> int:
            for va, size, raw in sections:
                if va <= rva < va + size:
                    return raw + rva - va
            raise ValueError("rva outside the sections")

        root = at(rsrc_rva)

        def entries(table: int) -> list[tuple[int, int]]:
            named, ids = struct.unpack_from("<HH", dll, table + 12)
            return [struct.unpack_from("<II", dll, table + 16 + 8 * i) for i in range(min(named + ids, 4096))]

        def name_of(field: int) -> str:
            if not field & 0x80000000:
                return str(field)
            off = root + (field & 0x7FFFFFFF)
            n = struct.unpack_from("<H", dll, off)[0]
            return dll[off + 2: off + 2 + 2 * n].decode("utf-16-le", "replace")

        for name, sub in entries(root):
            if name_of(name) != "TYPELIB" or not sub & 0x80000000:
                continue
            node = root + (sub & 0x7FFFFFFF)
            for _ in range(2):  # id, then language
                first = entries(node)
                if not first or not first[0][1] & 0x80000000:
                    break
                node = root + (first[0][1] & 0x7FFFFFFF)
            first = entries(node)
            if not first:
                return None
            data_entry = root + (first[0][1] & 0x7FFFFFFF)
            rva, size = struct.unpack_from("<II", dll, data_entry)
            start = at(rva)
            blob = dll[start:start + size]
            return blob if blob[:4] == b"MSFT" and len(blob) == size else None
    except (struct.error, ValueError, IndexError):
        return None
    return None


def register_adodb_typelib(prefix: str, uid: int, gid: int) -> bool:
    """Register Wine's ADO type library as version 1.0 (a patched copy of the one in ``msado15.dll``)."""
    drive = os.path.join(prefix, "drive_c")
    done = False
    keys = []
    for rel, arch, sysdir in ((_ADO_DLL[0], "win64", "windows/system32"), (_ADO_DLL[1], "win32", "windows/syswow64")):
        dll, target = os.path.join(drive, rel), os.path.join(drive, sysdir, ADODB_TLB)
        if not os.path.isfile(dll) or not os.path.isdir(os.path.dirname(target)):
            continue
        if not os.path.isfile(target):
            try:
                with open(dll, "rb") as fh:
                    blob = extract_typelib(fh.read(16 << 20))
            except OSError:
                blob = None
            if blob is None:
                continue
            patched = bytearray(blob)
            patched[0x18:0x1C] = struct.pack("<HH", 1, 0)  # MSFT header: major 1, minor 0
            with open(target, "wb") as fh:
                fh.write(patched)
            os.chown(target, uid, gid)
        winpath = "C:\\" + sysdir.replace("/", "\\") + "\\" + ADODB_TLB
        keys.append((f"Software\\Classes\\Typelib\\{ADODB_LIBID}\\1.0\\0\\{arch}", (("@", winpath),)))
        done = True
    if keys:
        keys.insert(0, (f"Software\\Classes\\Typelib\\{ADODB_LIBID}\\1.0",
                        (("@", "Microsoft ActiveX Data Objects (mailvm)"),)))
        keys.append((f"Software\\Classes\\Typelib\\{ADODB_LIBID}\\1.0\\FLAGS", (("@", "0"),)))
        append_reg(os.path.join(prefix, "system.reg"), keys)
    return done
