"""A simulated internet for one detonation, inside the sample's network namespace.

Standard library only.  Two halves in one file:

* the **server** (``main()``, run as ``python3 -I -S fakenet.py ...`` inside the
  namespace by :class:`FakeNet`): a DNS responder on UDP port 53 that answers
  every ``A`` query with an address of its own (one per name, from
  198.18.0.0/15) and logs the name; a catch-all TCP listener that receives every
  outgoing TCP connection through an iptables ``REDIRECT`` and recovers the real
  destination with ``SO_ORIGINAL_DST``; on it an HTTP responder (logs method,
  Host, path, User-Agent, serves a small shell-script payload so
  download-and-execute chains go on), a TLS ClientHello reader (logs the SNI
  name), banners for server-speaks-first protocols, and a logger of the first
  bytes of anything else.  Every event is one JSON line in the events file.
  When iptables is not usable it binds the common ports on 0.0.0.0 instead (every
  IPv4 address is local, so ``getsockname()`` is the original destination).
* the **host side** (:func:`setup_namespace`, :class:`FakeNet`): configure the
  namespace (``lo`` up, ``local 0.0.0.0/0`` route, the NAT rule), start the
  server, wait for it to be ready, stop it.

All input from the sample is hostile: reads are bounded in size and time,
connections are capped, and parsing never raises out of a handler.
"""

from __future__ import annotations

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
FALLBACK_PORTS = (21, 23, 25, 80, 110, 143, 443, 465, 587, 993, 995, 1337, 3389, 4444, 5555, 6667, 8000,
                  8080, 8443, 8888, 9001, 31337)
PAYLOAD_MARKER = "mailvm-fakenet-payload-executed"
PAYLOAD = ("#!/bin/sh\necho mailvm-fakenet-payload\nexec /bin/true " + PAYLOAD_MARKER + "\n").encode()
HTML = b"<!doctype html><html><head><title>ok</title></head><body>ok</body></html>\n"
BANNERS = {21: b"220 FTP server ready\r\n", 25: b"220 mail.example ESMTP\r\n", 587: b"220 mail.example ESMTP\r\n",
           110: b"+OK POP3 ready\r\n", 143: b"* OK IMAP4rev1 ready\r\n", 23: b"login: "}
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


def looks_like_download(path: str) -> bool:
    """Everything that is not an obvious web page gets the payload."""
    p = path.split("?", 1)[0].lower()
    return not (p == "" or p.endswith(HTML_EXT))


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
                ready, _, _ = select.select(self.listeners, [], [], 0.5)
            except (OSError, ValueError):
                return
            for s in ready:
                try:
                    conn, peer = s.accept()
                except OSError:
                    continue
                if not self.slots.acquire(blocking=False):
                    self.events.write(type="fakenet_error", error="connection limit reached")
                    conn.close()
                    continue
                threading.Thread(target=self._handle, args=(conn, peer), daemon=True).start()

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
        try:
            conn.settimeout(CONN_TIMEOUT_S)
            ip, port, redirected = self.original_destination(conn)
            name = self.book.name_for(ip)
            dst = f"{ip}:{port}"
            base = {"dst": dst, "ip": ip, "port": port}
            if name:
                base["name"] = name
            self.events.write(type="tcp", redirected=redirected, **base)
            first = self._first_bytes(conn, port)
            if first is None:
                return
            if first[:1] == b"\x16":
                self.events.write(type="tls", sni=parse_tls_sni(first), **base)
                return
            req = parse_http_head(first)
            if req is not None:
                self._http(conn, first, req, base, name)
                return
            self.events.write(type="tcp_data", bytes=len(first), preview=preview(first), **base)
        except Exception as exc:  # a handler must never take the server down
            try:
                self.events.write(type="fakenet_error", error=repr(exc)[:200])
            except Exception:
                pass
        finally:
            try:
                conn.close()
            finally:
                self.slots.release()

    def _first_bytes(self, conn: socket.socket, port: int) -> bytes | None:
        r, _, _ = select.select([conn], [], [], SILENCE_FOR_BANNER_S)
        if not r and port in BANNERS:
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
            if first_chunk_complete(data):
                break
        return data or None

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
            body_len = max(0, min(int(headers.get("content-length", "0")), MAX_BODY))
        except ValueError:
            body_len = 0
        head_end = first.find(b"\r\n\r\n")
        have = len(first) - (head_end + 4) if head_end >= 0 else 0
        body = first[head_end + 4 :] if head_end >= 0 else b""
        while have < body_len:
            try:
                chunk = conn.recv(min(65536, body_len - have))
            except (socket.timeout, OSError):
                break
            if not chunk:
                break
            body += chunk
            have += len(chunk)
        download = looks_like_download(path)
        content = PAYLOAD if download else HTML
        ctype = "application/octet-stream" if download else "text/html"
        self.events.write(type="http", method=req["method"], url=url[:2048], host=host[:255], path=path[:2048],
                          ua=headers.get("user-agent", "")[:512], served="payload" if download else "html",
                          body_bytes=have, body_preview=preview(body) if body else "", **base)
        resp = (f"HTTP/1.1 200 OK\r\nContent-Type: {ctype}\r\nContent-Length: {len(content)}\r\n"
                f"Connection: close\r\n\r\n").encode() + (content if req["method"] != "HEAD" else b"")
        conn.sendall(resp)


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
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    if args.parent:
        threading.Thread(target=_watch_parent, args=(args.parent, server), daemon=True).start()
    events.write(type="ready", redirect=args.redirect, ports=server.ports)
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    server.serve_forever()
    return 0


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
