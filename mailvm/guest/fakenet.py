"""A simulated internet for one detonation, inside the sample's network namespace.

Standard library only.  Two halves in one file:

* the **server** (``main()``, run as ``python3 -I -S fakenet.py ...`` inside the
  namespace by :class:`FakeNet`): a DNS responder on UDP port 53 that answers
  every ``A`` query with an address of its own (one per name, from
  198.18.0.0/15) and logs the name; a catch-all TCP listener that receives every
  outgoing TCP connection through an iptables ``REDIRECT`` and recovers the real
  destination with ``SO_ORIGINAL_DST``; on it an HTTP responder (logs method,
  Host, path, User-Agent, the request body's size, type and upload file names;
  answers a request for an executable or a script with a *harmless stand-in of
  that type* (:func:`standin_for`: a PE that just returns, an ELF that exits, a
  script that does nothing) so download-and-execute chains go on), a TLS
  ClientHello reader (logs the SNI name), an SMTP and an FTP server that accept
  a whole dialogue (a mail sent, a file uploaded: exfiltration), an IRC server
  that welcomes a bot, banners for other server-speaks-first protocols, and a
  logger of the first bytes of anything else.  Every event is one JSON line in
  the events file.
  When iptables is not usable it binds the common ports on 0.0.0.0 instead (every
  IPv4 address is local, so ``getsockname()`` is the original destination).
* the **host side** (:func:`setup_namespace`, :class:`FakeNet`): configure the
  namespace (``lo`` up, ``local 0.0.0.0/0`` route, the NAT rule), start the
  server, wait for it to be ready, stop it.

All input from the sample is hostile: reads are bounded in size and time,
connections are capped, and parsing never raises out of a handler.
"""

from __future__ import annotations

import base64
import ipaddress
import json
import logging
import os
import re
import select
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

CATCHALL_PORT = 9
DNS_PORT = 53
POOL = ipaddress.ip_network("198.18.0.0/15")
FALLBACK_PORTS = (21, 23, 25, 80, 110, 143, 443, 465, 587, 993, 995, 1337, 2525, 3389, 4444, 5555, 6667, 8000,
                  8080, 8443, 8888, 9001, 31337)
PAYLOAD_MARKER = "mailvm-fakenet-payload-executed"
PAYLOAD = ("#!/bin/sh\necho mailvm-fakenet-payload\nexec /bin/true " + PAYLOAD_MARKER + "\n").encode()
STANDIN_MARKER = b"mailvm-fakenet-standin"
HTML = b"<!doctype html><html><head><title>ok</title></head><body>ok</body></html>\n"
BANNERS = {21: b"220 FTP server ready\r\n", 25: b"220 mail.example ESMTP\r\n", 587: b"220 mail.example ESMTP\r\n",
           2525: b"220 mail.example ESMTP\r\n", 110: b"+OK POP3 ready\r\n", 143: b"* OK IMAP4rev1 ready\r\n",
           23: b"login: "}
SMTP_PORTS = (25, 587, 2525)
FTP_PORTS = (21,)
HTML_EXT = (".htm", ".html", ".php", ".asp", ".aspx", ".jsp", "/")
SO_ORIGINAL_DST = 80
IP_PKTINFO = getattr(socket, "IP_PKTINFO", 8)
MAX_CONNECTIONS = 64
MAX_EVENTS = 5000
MAX_HEAD = 16 * 1024
MAX_BODY = 64 * 1024
PREVIEW = 96
CONN_TIMEOUT_S = 5.0
SILENCE_FOR_BANNER_S = 1.0
#: how long a stopping responder gives the connections it has (and those still in the backlog) to be logged
DRAIN_S = 1.0
SESSION_S = 30.0  # the longest an SMTP/FTP/IRC dialogue may last
MAX_SESSION_LINES = 200
MAX_LINE_BYTES = 4096
MAX_SMTP_DATA = 1 << 20
MAX_FTP_DATA = 16 << 20
MAX_RCPT = 100
IRC_LOGGED_LINES = 20
FTP_DATA_PORTS = (40000, 41000)  # the ports fakenet announces for FTP passive data connections
_HTTP_RE = re.compile(rb"^([A-Z]{3,10}) (\S{1,4096}) HTTP/(1\.[01]|2)\r?\n")
_LABEL_OK = re.compile(r"^[A-Za-z0-9_\-*.]+$")


# ------------------------------------------------------------------ DNS


@dataclass(frozen=True)
class DnsQuery:
    id: int
    flags: int
    name: str
    qtype: int
    qclass: int
    question: bytes  # the raw question section (echoed in the answer)


QTYPES = {1: "A", 2: "NS", 5: "CNAME", 6: "SOA", 12: "PTR", 15: "MX", 16: "TXT", 28: "AAAA", 33: "SRV", 255: "ANY",
          65: "HTTPS"}


def parse_dns_query(data: bytes) -> DnsQuery | None:
    """Parse the first question of a DNS query; ``None`` for anything malformed."""
    if len(data) < 12 or len(data) > 4096:
        return None
    qid, flags, qd, _an, _ns, _ar = struct.unpack("!6H", data[:12])
    if flags & 0x8000 or qd < 1:  # a response, or no question
        return None
    labels: list[str] = []
    i = 12
    total = 0
    while True:
        if i >= len(data):
            return None
        ln = data[i]
        if ln == 0:
            i += 1
            break
        if ln & 0xC0:  # compression pointers do not belong in a query's first name
            return None
        label = data[i + 1 : i + 1 + ln]
        if len(label) != ln:
            return None
        total += ln + 1
        if total > 255 or len(labels) > 127:
            return None
        labels.append(label.decode("ascii", "backslashreplace"))
        i += 1 + ln
    if i + 4 > len(data):
        return None
    qtype, qclass = struct.unpack("!HH", data[i : i + 4])
    return DnsQuery(qid, flags, ".".join(labels).lower(), qtype, qclass, data[12 : i + 4])


def build_dns_response(q: DnsQuery, address: str | None, ttl: int = 60) -> bytes:
    """An answer to ``q``: one A record with ``address``, or no records (NOERROR)."""
    flags = 0x8000 | (q.flags & 0x7800) | 0x0400 | (q.flags & 0x0100) | 0x0080  # QR, opcode, AA, RD, RA
    answers = b""
    count = 0
    if address is not None:
        answers = struct.pack("!HHHIH", 0xC00C, 1, 1, ttl, 4) + socket.inet_aton(address)
        count = 1
    return struct.pack("!6H", q.id, flags, 1, count, 0, 0) + q.question + answers


class AddressBook:
    """Name -> fake address, stable within one detonation; reverse look-up for logging."""

    def __init__(self, network: ipaddress.IPv4Network = POOL, max_names: int = 20000) -> None:
        self.network = network
        self.max_names = max_names
        self.by_name: dict[str, str] = {}
        self.by_ip: dict[str, str] = {}
        self.lock = threading.Lock()

    def address_for(self, name: str) -> str:
        with self.lock:
            ip = self.by_name.get(name)
            if ip is None:
                n = len(self.by_name)
                if n >= self.max_names or n + 1 >= self.network.num_addresses - 1:
                    return str(self.network[self.network.num_addresses - 2])
                ip = str(self.network[n + 1])
                self.by_name[name] = ip
                self.by_ip[ip] = name
            return ip

    def name_for(self, ip: str) -> str | None:
        with self.lock:
            return self.by_ip.get(ip)


# ------------------------------------------------------------------ TCP protocols


def parse_http_head(data: bytes) -> dict[str, Any] | None:
    """Request line and headers of an HTTP/1.x request; ``None`` if it is not one."""
    m = _HTTP_RE.match(data)
    if not m:
        return None
    head = data.split(b"\r\n\r\n", 1)[0].split(b"\n\n", 1)[0]
    lines = head.split(b"\n")[1:200]
    headers: dict[str, str] = {}
    for raw in lines:
        k, sep, v = raw.decode("latin-1").partition(":")
        if sep and k.strip():
            headers.setdefault(k.strip().lower(), v.strip()[:1024])
    return {"method": m.group(1).decode(), "target": m.group(2).decode("latin-1"), "headers": headers}


def parse_tls_sni(data: bytes) -> str | None:
    """The server_name of a TLS ClientHello record, or ``None``."""
    try:
        if len(data) < 5 or data[0] != 0x16 or data[1] != 0x03:
            return None
        rec_len = struct.unpack("!H", data[3:5])[0]
        body = data[5 : 5 + rec_len]
        if not body or body[0] != 0x01:
            return None
        i = 4 + 2 + 32  # handshake header, version, random
        sid_len = body[i]
        i += 1 + sid_len
        cs_len = struct.unpack("!H", body[i : i + 2])[0]
        i += 2 + cs_len
        cm_len = body[i]
        i += 1 + cm_len
        ext_total = struct.unpack("!H", body[i : i + 2])[0]
        i += 2
        end = min(len(body), i + ext_total)
        while i + 4 <= end:
            etype, elen = struct.unpack("!HH", body[i : i + 4])
            i += 4
            if etype == 0:
                ext = body[i : i + elen]
                j = 2  # server name list length
                while j + 3 <= len(ext):
                    ntype = ext[j]
                    nlen = struct.unpack("!H", ext[j + 1 : j + 3])[0]
                    name = ext[j + 3 : j + 3 + nlen]
                    if ntype == 0 and name:
                        return name.decode("ascii", "backslashreplace")[:255]
                    j += 3 + nlen
                return None
            i += elen
    except (IndexError, struct.error):
        return None
    return None


def first_chunk_complete(data: bytes) -> bool:
    """Enough of the client's first message to classify it (TLS record, HTTP head, anything else)."""
    if data[:1] == b"\x16":
        return len(data) >= 5 and len(data) >= 5 + struct.unpack("!H", data[3:5])[0]
    if re.match(rb"^[A-Z]{1,10}( |$)", data[:11]):
        return b"\r\n\r\n" in data or b"\n\n" in data
    return True


# ------------------------------------------------------------------ stand-ins for downloads


def pe_image(dll: bool = False) -> bytes:
    """A tiny valid x86-64 PE (1 KiB, no imports) whose entry point just returns.

    An EXE's entry returns 0 (the process exits with 0); a DLL's DllMain returns
    TRUE.  It runs under any 64-bit Windows or Wine and does nothing else.
    """
    code = (b"\xb8\x01\x00\x00\x00\xc3" if dll else b"\x31\xc0\xc3") + b"\x00" + STANDIN_MARKER
    dos = b"MZ" + b"\x00" * 58 + struct.pack("<I", 0x40)
    coff = struct.pack("<HHIIIHH", 0x8664, 1, 0, 0, 0, 0xF0, 0x2022 if dll else 0x0022)
    opt = struct.pack("<HBBIIIIIQIIHHHHHHIIIIHHQQQQII", 0x20B, 14, 0, 0x200, 0, 0, 0x1000, 0x1000,
                      0x180000000 if dll else 0x140000000, 0x1000, 0x200, 6, 0, 0, 0, 6, 0, 0, 0x2000, 0x200, 0,
                      2, 0, 0x100000, 0x1000, 0x100000, 0x1000, 0, 16) + b"\x00" * 128
    section = struct.pack("<8sIIIIIIHHI", b".text", len(code), 0x1000, 0x200, 0x200, 0, 0, 0, 0, 0x60000020)
    head = dos + b"PE\x00\x00" + coff + opt + section
    return head.ljust(0x200, b"\x00") + code.ljust(0x200, b"\x00")


def elf_image() -> bytes:
    """A tiny valid x86-64 Linux ELF (129 bytes) that calls exit(0)."""
    code = b"\xb8\x3c\x00\x00\x00\x31\xff\x0f\x05"
    entry = 0x400000 + 64 + 56
    ehdr = (b"\x7fELF" + bytes([2, 1, 1, 0]) + b"\x00" * 8
            + struct.pack("<HHIQQQIHHHHHH", 2, 0x3E, 1, entry, 64, 0, 0, 64, 56, 1, 0, 0, 0))
    total = 64 + 56 + len(code)
    return ehdr + struct.pack("<IIQQQQQQ", 1, 5, 0, 0x400000, 0x400000, total, total, 0x1000) + code


def cfb_image() -> bytes:
    """An empty OLE compound file with the MSI database CLSID (msiexec rejects it as a package)."""
    free, end, fatsect, nostream = 0xFFFFFFFF, 0xFFFFFFFE, 0xFFFFFFFD, 0xFFFFFFFF
    header = (b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + b"\x00" * 16
              + struct.pack("<HHHHH6xIIIIIIIII", 0x3E, 3, 0xFFFE, 9, 6, 0, 1, 1, 0, 0x1000, end, 0, end, 0)
              + struct.pack("<109I", 0, *([free] * 108)))
    fat = struct.pack("<128I", fatsect, end, *([free] * 126))
    name = "Root Entry".encode("utf-16-le") + b"\x00\x00"
    msi_clsid = bytes.fromhex("84100c0000000000c000000000000046")  # {000C1084-...-C000-000000000046}
    root = (name.ljust(64, b"\x00") + struct.pack("<HBBIII", len(name), 5, 1, nostream, nostream, nostream)
            + msi_clsid + struct.pack("<IQQIQ", 0, 0, 0, end, 0))
    empty = b"\x00" * 64 + struct.pack("<HBBIII", 0, 0, 0, nostream, nostream, nostream) + b"\x00" * 48
    return header + fat + root + empty * 3


#: stand-in kind -> (content type, body).  Every body is harmless: it runs (or opens) and does nothing.
STANDINS: dict[str, tuple[str, bytes]] = {
    "pe_exe": ("application/x-msdownload", pe_image()),
    "pe_dll": ("application/x-msdownload", pe_image(dll=True)),
    "elf": ("application/x-executable", elf_image()),
    "msi": ("application/x-msi", cfb_image()),
    "sh": ("application/x-sh", PAYLOAD),
    "ps1": ("text/plain", b"exit 0\r\n"),
    "vbs": ("text/vbscript", b"WScript.Quit 0\r\n"),
    "js": ("application/javascript", b"WScript.Quit(0);\r\n"),
    "wsf": ("text/xml", b'<job><script language="JScript">WScript.Quit(0);</script></job>\r\n'),
    "hta": ("application/hta", b"<html><head><script>window.close();</script></head><body></body></html>\r\n"),
    "bat": ("application/x-bat", b"@exit /b 0\r\n"),
    "py": ("text/x-python", b"raise SystemExit(0)\n"),
    "text": ("text/plain", b"ok\n"),
}
STANDIN_EXT = {
    ".exe": "pe_exe", ".scr": "pe_exe", ".com": "pe_exe", ".pif": "pe_exe", ".cpl": "pe_dll", ".dll": "pe_dll",
    ".ocx": "pe_dll", ".sys": "pe_dll", ".msi": "msi", ".elf": "elf", ".out": "elf", ".so": "elf",
    ".sh": "sh", ".bash": "sh", ".ps1": "ps1", ".psm1": "ps1", ".vbs": "vbs", ".vbe": "vbs", ".js": "js",
    ".jse": "js", ".wsf": "wsf", ".hta": "hta", ".bat": "bat", ".cmd": "bat", ".py": "py",
    ".txt": "text", ".json": "text", ".xml": "text", ".css": "text", ".csv": "text", ".ini": "text",
}
_WINDOWS_CLIENT = re.compile(r"windows|win32|win64|wow64|msie|trident|winhttp|microsoft|bits/|powershell|certutil"
                             r"|\.net clr|urlmon|wininet", re.I)
_WINDOWS_ACCEPT = ("x-msdownload", "x-msdos-program", "x-dosexec", "vnd.microsoft.portable-executable")
_QUERY_NAME = re.compile(r"[=/]([^=&/?#]{1,200}(\.[A-Za-z0-9]{1,5}))(?:[&#]|$)")


def _ext(name: str) -> str:
    base = name.rsplit("/", 1)[-1]
    return "." + base.rsplit(".", 1)[1].lower() if "." in base.strip(".") else ""


def standin_for(path: str, headers: dict[str, str]) -> str | None:
    """The stand-in kind for a request (``None``: a web page); see :func:`standin_choice`."""
    return standin_choice(path, headers)[0]


def standin_choice(path: str, headers: dict[str, str]) -> tuple[str | None, str]:
    """The stand-in kind for a request and why: ``(kind, "name" | "accept" | "client" | "default" | "page")``.

    By the URL's extension (of the path, or of a file name in the query string
    such as ``?file=a.exe``): ``"name"``, the client asked for that type.  A
    bare path (no extension) gets a PE when the client asks for one (Accept,
    ``"accept"``) or looks like Windows (User-Agent, ``"client"``) and the
    shell-script payload otherwise (``"default"``: it runs both as ``sh file``
    and as an executable).  A web page's path (``/``, ``.html``, ``.php``...)
    gets ``(None, "page")``.
    """
    p, _, query = path.partition("?")
    low = p.lower()
    ext = _ext(low)
    if ext in STANDIN_EXT:
        return STANDIN_EXT[ext], "name"
    m = _QUERY_NAME.search(query) if query else None
    if m and m.group(2).lower() in STANDIN_EXT:
        return STANDIN_EXT[m.group(2).lower()], "name"
    if low == "" or low.endswith(HTML_EXT):
        return None, "page"
    if any(a in headers.get("accept", "").lower() for a in _WINDOWS_ACCEPT):
        return "pe_exe", "accept"
    if _WINDOWS_CLIENT.search(headers.get("user-agent", "")):
        return "pe_exe", "client"
    return "sh", "default"


def looks_like_download(path: str) -> bool:
    """Everything that is not an obvious web page gets a stand-in."""
    return standin_for(path, {}) is not None


def preview(data: bytes) -> str:
    return data[:PREVIEW].decode("latin-1").encode("unicode_escape").decode("ascii")


# ------------------------------------------------------------------ server


class EventLog:
    """Thread-safe, capped JSON-lines writer (flushed per line)."""

    def __init__(self, path: str, max_events: int = MAX_EVENTS) -> None:
        self.fh = open(path, "a", encoding="utf-8")
        self.lock = threading.Lock()
        self.count = 0
        self.max_events = max_events

    def write(self, **ev: Any) -> None:
        ev.setdefault("ts", time.time())
        line = json.dumps(ev, ensure_ascii=True, default=str)[:60000]
        with self.lock:
            if self.count >= self.max_events:
                return
            self.count += 1
            self.fh.write(line + "\n")
            self.fh.flush()


class Server:
    """The simulated internet's listeners and handlers."""

    def __init__(self, events: EventLog, redirect: bool, catchall_port: int = CATCHALL_PORT,
                 dns_port: int = DNS_PORT, fallback_ports: tuple[int, ...] = FALLBACK_PORTS) -> None:
        self.events = events
        self.redirect = redirect
        self.catchall_port = catchall_port
        self.dns_port = dns_port
        self.fallback_ports = fallback_ports
        self.book = AddressBook()
        self.slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        self.stop = threading.Event()
        self.listeners: list[socket.socket] = []
        self.pktinfo = False
        self.ports: list[int] = []
        self.data_slots: dict[int, DataSlot] = {}
        self.data_lock = threading.Lock()
        self.handlers: list[threading.Thread] = []

    # -- setup
    def bind(self) -> None:
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        udp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:  # answer from the address the query was sent to (resolvers drop replies from elsewhere)
            udp.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 1)
            self.pktinfo = True
        except OSError:
            self.pktinfo = False
        udp.bind(("0.0.0.0", self.dns_port))
        self.udp = udp
        ports = [self.catchall_port] if self.redirect else list(self.fallback_ports)
        for port in ports:
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind(("0.0.0.0", port))
            except OSError as exc:
                self.events.write(type="fakenet_error", error=f"bind {port}: {exc}")
                s.close()
                continue
            s.listen(128)
            self.listeners.append(s)
            self.ports.append(port)

    def serve_forever(self) -> None:
        threading.Thread(target=self._dns_loop, daemon=True, name="fakenet-dns").start()
        while not self.stop.is_set():
            try:
                ready, _, _ = select.select(self.listeners, [], [], 0.2)
            except (OSError, ValueError):
                return
            for s in ready:
                self._accept(s)

    def _accept(self, s: socket.socket) -> bool:
        try:
            conn, peer = s.accept()
        except OSError:
            return False
        if not self.slots.acquire(blocking=False):
            self.events.write(type="fakenet_error", error="connection limit reached")
            conn.close()
            return True
        t = threading.Thread(target=self._handle, args=(conn, peer), daemon=True)
        with self.data_lock:
            self.handlers = [h for h in self.handlers if h.is_alive()] + [t]
        t.start()
        return True

    def drain(self, grace_s: float = DRAIN_S) -> None:
        """On the way out: take the connections still waiting in the listen backlog (a sample's last
        connect, made just before the run ended, is accepted by the kernel before fakenet's loop sees
        it) and give the running handlers ``grace_s`` to write their events."""
        deadline = time.monotonic() + grace_s
        for s in self.listeners:
            s.setblocking(False)
            while time.monotonic() < deadline and self._accept(s):
                pass
        with self.data_lock:
            handlers = list(self.handlers)
        for t in handlers:
            t.join(max(0.0, deadline - time.monotonic()))

    # -- DNS
    def _dns_loop(self) -> None:
        while not self.stop.is_set():
            try:
                data, anc, _flags, peer = self.udp.recvmsg(4096, socket.CMSG_SPACE(12))
            except OSError:
                return
            local = b""
            for level, typ, cdata in anc:
                if level == socket.IPPROTO_IP and typ == IP_PKTINFO and len(cdata) >= 12:
                    local = cdata[8:12]
            try:
                self._answer(data, local, peer)
            except Exception as exc:  # one bad packet must not end the responder
                self.events.write(type="fakenet_error", error=f"dns: {exc!r}"[:200])

    def _answer(self, data: bytes, local: bytes, peer: Any) -> None:
        q = parse_dns_query(data)
        if q is None:
            return
        answer = None
        if q.qtype in (1, 255) and q.qclass == 1 and q.name and not q.name.endswith(".arpa"):
            answer = self.book.address_for(q.name)
        self.events.write(type="dns", name=q.name[:255], qtype=QTYPES.get(q.qtype, str(q.qtype)),
                          answer=answer, client=f"{peer[0]}:{peer[1]}")
        reply = build_dns_response(q, answer)
        try:
            if self.pktinfo and local:
                info = struct.pack("=i4s4s", 0, local, b"\0\0\0\0")
                self.udp.sendmsg([reply], [(socket.IPPROTO_IP, IP_PKTINFO, info)], 0, peer)
            else:
                self.udp.sendto(reply, peer)
        except OSError:
            pass

    # -- TCP
    def original_destination(self, conn: socket.socket) -> tuple[str, int, bool]:
        if self.redirect:
            try:
                raw = conn.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, 16)
                port, packed = struct.unpack("!2xH4s8x", raw)
                return socket.inet_ntoa(packed), port, True
            except OSError:
                pass
        ip, port = conn.getsockname()[:2]
        return ip, port, False

    def _handle(self, conn: socket.socket, peer: Any) -> None:
        handed_over = False
        try:
            conn.settimeout(CONN_TIMEOUT_S)
            ip, port, redirected = self.original_destination(conn)
            slot = self.data_slots.get(port) if self.redirect else None
            if slot is not None:  # an FTP data connection to a port fakenet announced
                handed_over = slot.put(conn)
                return
            name = self.book.name_for(ip)
            dst = f"{ip}:{port}"
            base = {"dst": dst, "ip": ip, "port": port}
            if name:
                base["name"] = name
            self.events.write(type="tcp", redirected=redirected, **base)
            first, banner = self._first_bytes(conn, port)
            if banner and port in SMTP_PORTS:
                self._smtp(conn, first or b"", base)
                return
            if banner and port in FTP_PORTS:
                self._ftp(conn, first or b"", base)
                return
            if first is None:
                return
            if first[:1] == b"\x16":
                self.events.write(type="tls", sni=parse_tls_sni(first), **base)
                return
            req = parse_http_head(first)
            if req is not None:
                self._http(conn, first, req, base, name)
                return
            if _IRC_START.match(first):
                self._irc(conn, first, base)
                return
            self.events.write(type="tcp_data", bytes=len(first), preview=preview(first), **base)
        except Exception as exc:  # a handler must never take the server down
            try:
                self.events.write(type="fakenet_error", error=repr(exc)[:200])
            except Exception:
                pass
        finally:
            try:
                if not handed_over:
                    conn.close()
            finally:
                self.slots.release()

    def _first_bytes(self, conn: socket.socket, port: int) -> tuple[bytes | None, bool]:
        """The client's first message, and whether fakenet spoke first (a banner: the client was silent)."""
        r, _, _ = select.select([conn], [], [], SILENCE_FOR_BANNER_S)
        banner = not r and port in BANNERS
        if banner:
            conn.sendall(BANNERS[port])
        data = b""
        deadline = time.monotonic() + CONN_TIMEOUT_S
        while len(data) < MAX_HEAD and time.monotonic() < deadline:
            try:
                chunk = conn.recv(MAX_HEAD - len(data))
            except (socket.timeout, OSError):
                break
            if not chunk:
                break
            data += chunk
            if banner or first_chunk_complete(data):
                break
        return data or None, banner

    def _http(self, conn: socket.socket, first: bytes, req: dict[str, Any], base: dict[str, Any],
              name: str | None) -> None:
        headers = req["headers"]
        target = req["target"]
        host = headers.get("host") or name or base["ip"]
        if target.startswith(("http://", "https://")):
            url = target
            path = "/" + target.split("://", 1)[1].partition("/")[2]
        else:
            path = target if target.startswith("/") else "/" + target
            default = 80
            hostpart = host if (":" in host or base["port"] == default) else f"{host}:{base['port']}"
            url = f"http://{hostpart}{path}"
        body_len = 0
        try:
            body_len = max(0, int(headers.get("content-length", "0")))
        except ValueError:
            body_len = 0
        head_end = first.find(b"\r\n\r\n")
        body = first[head_end + 4 :] if head_end >= 0 else b""
        have = len(body)
        while have < body_len and have < MAX_BODY:
            try:
                chunk = conn.recv(min(65536, body_len - have))
            except (socket.timeout, OSError):
                break
            if not chunk:
                break
            body += chunk
            have += len(chunk)
        while have < body_len and have < MAX_FTP_DATA:  # count the rest of an upload without keeping it
            try:
                chunk = conn.recv(65536)
            except (socket.timeout, OSError):
                break
            if not chunk:
                break
            have += len(chunk)
        method = req["method"]
        kind, chosen_by = standin_choice(path, headers) if method in ("GET", "HEAD") else (None, "")
        if method in ("POST", "PUT", "PATCH"):
            served, ctype, content = "json", "application/json", b'{"ok":true,"result":{"message_id":1}}'
        elif kind is None:
            served, ctype, content = "html", "text/html", HTML
        else:
            ctype, content = STANDINS[kind]
            served = "text" if kind == "text" else "payload"
        ev: dict[str, Any] = {"method": method, "url": url[:2048], "host": host[:255], "path": path[:2048],
                              "ua": headers.get("user-agent", "")[:512], "served": served, "body_bytes": have,
                              "body_preview": preview(body) if body else ""}
        if kind:
            ev["standin"] = kind
            ev["standin_by"] = chosen_by
        if headers.get("content-type"):
            ev["content_type"] = headers["content-type"][:200]
        files = upload_file_names(body)
        if files:
            ev["upload_files"] = files
        self.events.write(type="http", **ev, **base)
        resp = (f"HTTP/1.1 200 OK\r\nContent-Type: {ctype}\r\nContent-Length: {len(content)}\r\n"
                f"Connection: close\r\n\r\n").encode() + (content if method != "HEAD" else b"")
        conn.sendall(resp)

    # -- dialogue protocols
    def _smtp(self, conn: socket.socket, first: bytes, base: dict[str, Any]) -> None:
        """Accept mail: log one ``smtp`` event per message (or one for a session that sent none)."""
        lc = LineConn(conn, first, time.monotonic() + SESSION_S)
        info: dict[str, Any] = {"helo": "", "auth_user": "", "mail_from": "", "rcpt": []}
        messages = 0
        while True:
            line = lc.readline()
            if line is None:
                break
            verb, _, arg = line.decode("latin-1").partition(" ")
            verb = verb.upper()
            if verb in ("EHLO", "HELO"):
                info["helo"] = arg.strip()[:255]
                lc.send(b"250-mail.example\r\n250-AUTH PLAIN LOGIN\r\n250-SIZE 10485760\r\n250 8BITMIME\r\n"
                        if verb == "EHLO" else b"250 mail.example\r\n")
            elif verb == "AUTH":
                info["auth_user"] = self._smtp_auth(lc, arg.strip())
                lc.send(b"235 2.7.0 Authentication successful\r\n")
            elif verb == "MAIL":
                info["mail_from"] = _angle(arg)
                info["rcpt"] = []
                lc.send(b"250 2.1.0 Ok\r\n")
            elif verb == "RCPT":
                if len(info["rcpt"]) < MAX_RCPT:
                    info["rcpt"].append(_angle(arg))
                lc.send(b"250 2.1.5 Ok\r\n")
            elif verb == "DATA":
                lc.send(b"354 End data with <CR><LF>.<CR><LF>\r\n")
                data, total = lc.read_data(MAX_SMTP_DATA)
                lc.send(b"250 2.0.0 Ok: queued\r\n")
                messages += 1
                self.events.write(type="smtp", message=True, bytes=total, **info, **mail_summary(data), **base)
            elif verb in ("RSET", "NOOP"):
                lc.send(b"250 2.0.0 Ok\r\n")
            elif verb == "STARTTLS":
                lc.send(b"454 4.7.0 TLS not available\r\n")
            elif verb == "QUIT":
                lc.send(b"221 2.0.0 Bye\r\n")
                break
            else:
                lc.send(b"502 5.5.2 Command not recognized\r\n")
        if not messages and (info["helo"] or info["auth_user"] or info["mail_from"]):
            self.events.write(type="smtp", message=False, bytes=0, **info, **base)

    @staticmethod
    def _smtp_auth(lc: "LineConn", arg: str) -> str:
        mech, _, rest = arg.partition(" ")
        mech = mech.upper()
        if mech == "PLAIN":
            if not rest:
                lc.send(b"334 \r\n")
                rest = (lc.readline() or b"").decode("latin-1")
            parts = _b64(rest).split("\x00")
            return (parts[1] if len(parts) > 1 else parts[0])[:255]
        if mech == "LOGIN":
            if not rest:
                lc.send(b"334 VXNlcm5hbWU6\r\n")
                rest = (lc.readline() or b"").decode("latin-1")
            lc.send(b"334 UGFzc3dvcmQ6\r\n")
            lc.readline()
            return _b64(rest)[:255]
        return ""

    def _ftp(self, conn: socket.socket, first: bytes, base: dict[str, Any]) -> None:
        """Accept a login and passive-mode transfers: an ``ftp`` event per login and per file stored or fetched."""
        lc = LineConn(conn, first, time.monotonic() + SESSION_S)
        user = ""
        slot: DataSlot | None = None
        try:
            while True:
                line = lc.readline()
                if line is None:
                    break
                verb, _, arg = line.decode("latin-1").partition(" ")
                verb, arg = verb.upper(), arg.strip()[:512]
                if verb == "USER":
                    user = arg[:255]
                    lc.send(b"331 Password required\r\n")
                elif verb == "PASS":
                    lc.send(b"230 Login successful\r\n")
                    self.events.write(type="ftp", command="LOGIN", user=user, **base)
                elif verb in ("PASV", "EPSV"):
                    if slot is not None:
                        slot.close()
                    slot = self._data_slot()
                    if slot is None:
                        lc.send(b"425 Cannot open data connection\r\n")
                    elif verb == "PASV":
                        h = base["ip"].replace(".", ",")
                        lc.send(f"227 Entering Passive Mode ({h},{slot.port >> 8},{slot.port & 255})\r\n".encode())
                    else:
                        lc.send(f"229 Entering Extended Passive Mode (|||{slot.port}|)\r\n".encode())
                elif verb in ("STOR", "STOU", "APPE", "RETR", "LIST", "NLST", "MLSD"):
                    if slot is None:
                        lc.send(b"425 Use PASV first\r\n")
                        continue
                    self._ftp_transfer(lc, slot, verb, arg, user, base)
                    slot = None
                elif verb in ("PORT", "EPRT"):
                    lc.send(b"502 Active mode not supported, use PASV\r\n")
                elif verb == "SYST":
                    lc.send(b"215 UNIX Type: L8\r\n")
                elif verb == "FEAT":
                    lc.send(b"211-Features:\r\n PASV\r\n EPSV\r\n UTF8\r\n211 End\r\n")
                elif verb in ("PWD", "XPWD"):
                    lc.send(b'257 "/" is the current directory\r\n')
                elif verb in ("CWD", "CDUP", "DELE", "RMD", "RNTO"):
                    lc.send(b"250 Ok\r\n")
                elif verb == "MKD":
                    lc.send(b'257 "' + arg.encode("latin-1", "replace")[:200] + b'" created\r\n')
                elif verb == "RNFR":
                    lc.send(b"350 Ready for RNTO\r\n")
                elif verb in ("SIZE", "MDTM"):
                    lc.send(b"550 No such file\r\n")
                elif verb in ("TYPE", "MODE", "STRU", "OPTS", "ALLO", "NOOP", "CLNT"):
                    lc.send(b"200 Ok\r\n")
                elif verb == "QUIT":
                    lc.send(b"221 Goodbye\r\n")
                    break
                else:
                    lc.send(b"502 Command not implemented\r\n")
        finally:
            if slot is not None:
                slot.close()

    def _ftp_transfer(self, lc: "LineConn", slot: "DataSlot", verb: str, arg: str, user: str,
                      base: dict[str, Any]) -> None:
        lc.send(b"150 Opening data connection\r\n")
        data_conn = slot.accept(CONN_TIMEOUT_S * 2)
        slot.close()
        if data_conn is None:
            lc.send(b"425 No data connection\r\n")
            return
        total, head = 0, b""
        try:
            data_conn.settimeout(CONN_TIMEOUT_S)
            if verb in ("STOR", "STOU", "APPE"):
                while total < MAX_FTP_DATA:
                    try:
                        chunk = data_conn.recv(65536)
                    except (socket.timeout, OSError):
                        break
                    if not chunk:
                        break
                    if len(head) < PREVIEW:
                        head += chunk[: PREVIEW - len(head)]
                    total += len(chunk)
            elif verb == "RETR":
                kind = standin_for("/" + arg.rsplit("/", 1)[-1], {}) or "text"
                data_conn.sendall(STANDINS[kind][1])
        finally:
            data_conn.close()
        lc.send(b"226 Transfer complete\r\n")
        if verb in ("STOR", "STOU", "APPE", "RETR"):
            self.events.write(type="ftp", command=verb, user=user, file=arg[:255], bytes=total, preview=preview(head),
                              **base)

    def _data_slot(self) -> "DataSlot | None":
        """A passive-mode data port: a registered port the catch-all hands over (REDIRECT), or a real listener."""
        with self.data_lock:
            if self.redirect:
                for port in range(*FTP_DATA_PORTS):
                    if port not in self.data_slots:
                        slot = DataSlot(port, None, self)
                        self.data_slots[port] = slot
                        return slot
                return None
        try:
            listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            listener.bind(("0.0.0.0", 0))
            listener.listen(1)
        except OSError:
            return None
        return DataSlot(listener.getsockname()[1], listener, self)

    def _irc(self, conn: socket.socket, first: bytes, base: dict[str, Any]) -> None:
        """Welcome an IRC client (so a bot goes on to join its channel) and log its commands."""
        lc = LineConn(conn, first, time.monotonic() + SESSION_S)
        nick, user_seen, welcomed, logged = "", False, False, 0
        while True:
            line = lc.readline()
            if line is None:
                break
            verb, _, arg = line.decode("latin-1").partition(" ")
            verb, arg = verb.upper(), arg.strip()
            if verb == "PING":
                lc.send(b"PONG " + arg.encode("latin-1", "replace")[:200] + b"\r\n")
            elif verb == "NICK":
                nick = (arg.split() or ["bot"])[0][:30]
            elif verb == "USER":
                user_seen = True
            elif verb == "JOIN" and nick:
                chan = (arg.split() or ["#"])[0][:50]
                lc.send(f":{nick}!u@fakenet JOIN {chan}\r\n:irc.example 366 {nick} {chan} :End of /NAMES list.\r\n"
                        .encode("latin-1", "replace"))
            if nick and user_seen and not welcomed:
                welcomed = True
                lc.send(f":irc.example 001 {nick} :Welcome to the IRC network {nick}\r\n"
                        f":irc.example 376 {nick} :End of /MOTD command.\r\n".encode("latin-1", "replace"))
            if verb in ("NICK", "USER", "PASS", "JOIN", "PRIVMSG", "NOTICE", "MODE") and logged < IRC_LOGGED_LINES:
                logged += 1
                self.events.write(type="irc", command=verb, args=arg[:200], **base)
            if verb == "QUIT":
                break


_IRC_START = re.compile(rb"^(NICK|USER|PASS|CAP) \S", re.I)


class LineConn:
    """Bounded line I/O over a socket for the dialogue protocols (SMTP, FTP, IRC)."""

    def __init__(self, conn: socket.socket, initial: bytes, deadline: float) -> None:
        self.conn = conn
        self.buf = initial
        self.deadline = deadline
        self.lines = 0

    def _fill(self) -> bool:
        if time.monotonic() > self.deadline:
            return False
        try:
            chunk = self.conn.recv(65536)
        except (socket.timeout, OSError):
            return False
        if not chunk:
            return False
        self.buf += chunk
        return True

    def readline(self) -> bytes | None:
        """The next line (without CR LF; cut at MAX_LINE_BYTES), or None at the end of the dialogue."""
        self.lines += 1
        if self.lines > MAX_SESSION_LINES:
            return None
        while b"\n" not in self.buf[:MAX_LINE_BYTES]:
            if len(self.buf) >= MAX_LINE_BYTES:
                line, self.buf = self.buf[:MAX_LINE_BYTES], b""
                return line
            if not self._fill():
                if self.buf:
                    line, self.buf = self.buf, b""
                    return line.rstrip(b"\r")
                return None
        line, _, self.buf = self.buf.partition(b"\n")
        return line.rstrip(b"\r")

    def read_data(self, cap: int) -> tuple[bytes, int]:
        """An SMTP DATA body up to the lone ``.`` line: (the first ``cap`` bytes, the total size)."""
        kept = bytearray()
        total = 0
        while True:
            nl = self.buf.find(b"\n")
            if nl < 0:
                if len(self.buf) > 65536:  # a huge line: count it without keeping it all
                    total += len(self.buf)
                    if len(kept) < cap:
                        kept += self.buf[: cap - len(kept)]
                    self.buf = b""
                if not self._fill():
                    break
                continue
            line, self.buf = self.buf[: nl + 1], self.buf[nl + 1 :]
            if line.rstrip(b"\r\n") == b".":
                break
            if line.startswith(b".."):
                line = line[1:]
            total += len(line)
            if len(kept) < cap:
                kept += line[: cap - len(kept)]
        return bytes(kept), total

    def send(self, data: bytes) -> None:
        self.conn.sendall(data)


class DataSlot:
    """One announced FTP passive data port: a listener of its own, or connections handed over by the catch-all."""

    def __init__(self, port: int, listener: socket.socket | None, server: "Server") -> None:
        self.port = port
        self.listener = listener
        self.server = server
        self.conn: socket.socket | None = None
        self.ready = threading.Event()
        self.closed = False

    def put(self, conn: socket.socket) -> bool:
        with self.server.data_lock:
            if self.closed or self.conn is not None:
                return False
            self.conn = conn
        self.ready.set()
        return True

    def accept(self, timeout: float) -> socket.socket | None:
        if self.listener is not None:
            self.listener.settimeout(timeout)
            try:
                conn, _ = self.listener.accept()
                return conn
            except OSError:
                return None
        if not self.ready.wait(timeout):
            return None
        with self.server.data_lock:
            conn, self.conn = self.conn, None
        return conn

    def close(self) -> None:
        with self.server.data_lock:
            self.closed = True
            self.server.data_slots.pop(self.port, None)
            leftover, self.conn = self.conn, None
        for s in (self.listener, leftover):
            if s is not None:
                try:
                    s.close()
                except OSError:
                    pass


def _angle(arg: str) -> str:
    """``FROM:<a@b> SIZE=1`` -> ``a@b``."""
    m = re.search(r"<([^>]{0,320})>", arg)
    return (m.group(1) if m else arg.partition(":")[2].strip().split(" ")[0])[:320]


def _b64(text: str) -> str:
    try:
        return base64.b64decode(text.strip() + "===", validate=False).decode("utf-8", "replace")
    except (ValueError, TypeError):
        return ""


_FILENAME_RE = re.compile(rb'filename\*?=(?:UTF-8\'\')?"?([^"\r\n;]{1,200})', re.I)


def upload_file_names(body: bytes) -> list[str]:
    """File names of a multipart upload (``Content-Disposition: ...; filename="x"``), at most 10."""
    out: list[str] = []
    for m in _FILENAME_RE.finditer(body[:MAX_BODY]):
        name = m.group(1).decode("utf-8", "replace").strip()
        if name and name not in out:
            out.append(name)
        if len(out) >= 10:
            break
    return out


def mail_summary(data: bytes) -> dict[str, Any]:
    """Subject and attachment names of a mail sent through fakenet's SMTP (bounded, never raises)."""
    import email
    import email.policy

    out: dict[str, Any] = {"subject": "", "attachments": []}
    try:
        msg = email.message_from_bytes(data[:MAX_SMTP_DATA], policy=email.policy.compat32)
        out["subject"] = str(msg.get("Subject", ""))[:200]
        for i, part in enumerate(msg.walk()):
            if i > 100:
                break
            fn = part.get_filename()
            if fn and len(out["attachments"]) < 10:
                out["attachments"].append(str(fn)[:200])
    except Exception:  # hostile mail: what could be read is enough
        pass
    return out


def _watch_parent(parent: int, server: Server) -> None:
    while not server.stop.is_set():
        if os.getppid() != parent:
            os._exit(0)
        time.sleep(0.3)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the server process (inside the namespace, as root)."""
    import argparse

    ap = argparse.ArgumentParser(description="mailvm simulated internet")
    ap.add_argument("--events", required=True)
    ap.add_argument("--redirect", action="store_true", help="iptables REDIRECT is in place")
    ap.add_argument("--catchall-port", type=int, default=CATCHALL_PORT)
    ap.add_argument("--dns-port", type=int, default=DNS_PORT)
    ap.add_argument("--parent", type=int, default=0)
    args = ap.parse_args(argv)
    events = EventLog(args.events)
    server = Server(events, args.redirect, args.catchall_port, args.dns_port)
    server.bind()
    # SIGTERM is the host's "the run is over": stop accepting, log what is still waiting, then leave
    signal.signal(signal.SIGTERM, lambda *_: server.stop.set())
    if args.parent:
        threading.Thread(target=_watch_parent, args=(args.parent, server), daemon=True).start()
    events.write(type="ready", redirect=args.redirect, ports=server.ports)
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    server.serve_forever()
    server.drain()
    os._exit(0)  # handler threads still talking to a client end with the process


# ------------------------------------------------------------------ host side


def _run(cmd: list[str], stdin: str | None = None, timeout: float = 10.0) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, input=stdin, capture_output=True, text=True, timeout=timeout, check=False)


def nat_rules(catchall_port: int) -> str:
    """iptables-restore input: every outgoing TCP connection (but loopback's) -> the catch-all."""
    return (
        "*nat\n"
        ":PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\n"
        "-A OUTPUT -p tcp -d 127.0.0.0/8 -j RETURN\n"
        f"-A OUTPUT -p tcp -j REDIRECT --to-ports {catchall_port}\n"
        "COMMIT\n"
    )


def setup_namespace(nsenter: list[str], tools: dict[str, str], catchall_port: int = CATCHALL_PORT) -> tuple[bool, str]:
    """Make every IPv4 address local inside the namespace and redirect TCP.

    ``nsenter`` is the command prefix that enters the namespace.  Returns
    ``(redirect_ok, detail)``; without a working iptables the caller starts
    fakenet in fallback mode (listeners on common ports).
    """
    ip = tools["ip"]
    for cmd in ([ip, "link", "set", "lo", "up"], [ip, "route", "add", "local", "0.0.0.0/0", "dev", "lo"]):
        r = _run(nsenter + cmd)
        if r.returncode != 0:
            raise OSError(f"{' '.join(cmd)}: {r.stderr.strip()[:200]}")
    restore = tools.get("iptables-restore")
    if not restore:
        return False, "iptables-restore not installed"
    r = _run(nsenter + [restore], stdin=nat_rules(catchall_port))
    if r.returncode != 0:
        return False, f"iptables-restore failed: {r.stderr.strip()[:200]}"
    return True, "iptables REDIRECT"


class FakeNet:
    """Start and stop the server process inside a namespace."""

    def __init__(self, nsenter: list[str], events_path: str, redirect: bool,
                 python: str | None = None, catchall_port: int = CATCHALL_PORT) -> None:
        self.nsenter = nsenter
        self.events_path = events_path
        self.redirect = redirect
        self.python = python or sys.executable or "/usr/bin/python3"
        self.catchall_port = catchall_port
        self.proc: subprocess.Popen | None = None

    #: the responder is a Python process: under TCG with many clones sharing few cores its
    #: start-up alone took over 5 s (make bench, 8 qemu slots on 2 cores: 7 of 16 jobs failed)
    READY_TIMEOUT_S = 30.0

    def start(self, ready_timeout: float = READY_TIMEOUT_S) -> None:
        cmd = self.nsenter + [self.python, "-I", "-S", os.path.abspath(__file__), "--events", self.events_path,
                              "--catchall-port", str(self.catchall_port), "--parent", str(os.getpid())]
        if self.redirect:
            cmd.append("--redirect")
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, start_new_session=True)
        assert self.proc.stdout is not None
        r, _, _ = select.select([self.proc.stdout], [], [], ready_timeout)
        line = self.proc.stdout.readline() if r else b""
        if line.strip() != b"ready":
            err = b""
            if self.proc.poll() is not None and self.proc.stderr is not None:
                err = self.proc.stderr.read(2000)
            self.stop()
            raise OSError(f"fakenet did not start: {err.decode('utf-8', 'replace').strip()[-300:]}")

    def stop(self) -> None:
        p = self.proc
        if p is None:
            return
        self.proc = None
        if p.poll() is None:  # asked first, so that connections made at the very end are still logged
            try:
                os.killpg(p.pid, signal.SIGTERM)
                p.wait(timeout=DRAIN_S + 2.0)
            except (OSError, subprocess.TimeoutExpired):
                pass
        if p.poll() is None:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except OSError:
                pass
        try:
            p.wait(timeout=5)
        except subprocess.TimeoutExpired:
            log.error("fakenet pid %d did not die", p.pid)
        for fh in (p.stdout, p.stderr):
            if fh is not None:
                fh.close()


if __name__ == "__main__":
    sys.exit(main())
