"""Emails per second through a real loopback Postfix, with and without mailvm, same run, same mix.

Two private Postfix instances (``mailvm.lab.postfix.LabPostfix``) run side by
side with identical settings, one without a milter (the reference) and one
with ``mailvm serve`` as its milter; both deliver into Maildirs.  Load comes
from Postfix's own ``smtp-source``.  A run ends when the last expected message
is in the Maildir (end to end, not when SMTP returns), or when nothing has
arrived for ``STALL_S`` seconds (recorded as incomplete).

**Message mixes** (:data:`MIXES`).  Every message has the same ~12 KB text
body; ``cached`` attachments are four 36 KB PDF-like files whose verdicts are
put in the scanned table first by sending each once through the milter;
``unseen`` files are made unique per message with random content:

* ``no_attachment``: text only;
* ``cached``: one cached PDF per message (the cache-hit mix);
* ``unseen_inert``: one unique PNG image per message (inert: triage answers, no VM);
* ``unseen_benign_10``: the cached PDF, and in 1 message of 10 also a unique
  harmless shell script (detonated: the pool runs it);
* ``unseen_malicious_1``: the cached PDF, and in 1 message of 100 also a unique
  script that writes ~/.bashrc and an autostart entry inside the sandbox
  (detonated; malicious, so the message is rejected with 5.7.1).

**How smtp-source sends a mix.**  ``smtp-source -F FILE`` reads its one message
file once at start-up, so distinct messages need distinct processes.  A *plan*
is a list of batches (file, count); ``--sessions`` lanes (threads) each run
``smtp-source -4 -A -f FROM -t TO -F FILE -m COUNT -s 1 127.0.0.1:PORT`` for
the next batch until the plan is empty.  A message with a unique file is a
batch of 1; runs of messages without one are cut into batches of at most
``BATCH`` (10).  The reference and mailvm get exactly the same plan (the same
files), so the client's own cost (one exec per batch) is the same on both
sides; it is why a mix with a unique file in every message shows a lower
reference rate.  In addition the *canonical* figure is the plain
``smtp-source -m N -s SESSIONS`` with one cached-mix message file.

**Figures.**  msg/s per run (messages sent / time to the last delivery or
rejection), medians over ``--repeats`` runs, the ratio mailvm/reference per
repeat (median), the CPU seconds per message of the whole ``mailvm serve``
process tree (milter, scan workers, pool service and its slots: utime+stime of
the live tree plus what reaped children used, from /proc, before and after),
and the machine's busy cores during the run.

    python -m bench.bench_postfix [--messages 300] [--repeats 3] [--slots 2] [--mixes cached unseen_inert]
"""

from __future__ import annotations

import argparse
import itertools
import logging
import os
import random
import re
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path
from typing import Any

from tqdm import tqdm

from mailvm.lab.common import lab_config

from bench.common import (
    RESULTS,
    CpuMeter,
    free_port,
    lab_dir,
    machine,
    median,
    pyplot,
    save_figure,
    summary,
    tree_cpu_seconds,
    CPU_PARTS,
    tree_cpu_by_part,
    wait_port,
    write_json,
)

log = logging.getLogger(__name__)

SMTP_SOURCE = shutil.which("smtp-source") or "/usr/sbin/smtp-source"
SENDER = "sender@bench.test"
RECIPIENT = "user@example.com"
#: most identical messages one smtp-source process sends in a mix plan
BATCH = 10
#: a run is over when nothing was delivered for this long after the last SMTP session ended
STALL_S = 15.0
CACHED_FILES = 4
ATTACHMENT_BYTES = 36 * 1024
BODY_WORDS = 2000

# ----------------------------------------------------------------------------- message content


def _words(rng: random.Random, n: int) -> str:
    vocab = ("invoice meeting report quarter budget please find attached the document as discussed "
             "regards thanks schedule review project update numbers draft final version").split()
    lines, line = [], []
    for _ in range(n):
        line.append(rng.choice(vocab))
        if len(line) == 12:
            lines.append(" ".join(line))
            line = []
    lines.append(" ".join(line))
    return "\n".join(lines) + "\n"


def pdf_bytes(rng: random.Random, size: int = ATTACHMENT_BYTES) -> bytes:
    head = b"%PDF-1.4\n1 0 obj << /Type /Catalog /Pages 2 0 R >> endobj\n"
    filler = rng.randbytes(max(0, size - len(head) - 30))
    return head + b"stream\n" + filler + b"\nendstream\n%%EOF\n"


def png_bytes(rng: random.Random, size: int = ATTACHMENT_BYTES) -> bytes:
    """A valid PNG of random pixels (incompressible, so about ``size`` bytes): unique and inert."""
    side = max(8, int((size / 3) ** 0.5))
    raw = b"".join(b"\x00" + rng.randbytes(side * 3) for _ in range(side))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw, 1)) + chunk(b"IEND", b"")


def benign_script(token: str) -> bytes:
    return (f"#!/bin/sh\n# build helper {token}\necho hello > greeting.txt\ncat greeting.txt\n").encode()


def malicious_script(token: str) -> bytes:
    """Harmless on any host, but behaves like persistence inside the sandbox (rules: malicious)."""
    return (f"#!/bin/sh\n# updater {token}\necho 'alias ls=ls' >> ~/.bashrc\nmkdir -p ~/.config/autostart\n"
            f"echo '[Desktop Entry]' > ~/.config/autostart/upd.desktop\n").encode()


def email_bytes(subject: str, body: str, attachments: list[tuple[str, bytes, str]]) -> bytes:
    m = EmailMessage()
    m["From"] = f"Sender <{SENDER}>"
    m["To"] = RECIPIENT
    m["Subject"] = subject
    m.set_content(body)
    for name, data, ctype in attachments:
        maintype, _, subtype = ctype.partition("/")
        m.add_attachment(data, maintype=maintype, subtype=subtype, filename=name)
    return m.as_bytes()


# ----------------------------------------------------------------------------- mixes and plans


@dataclass(frozen=True)
class Mix:
    name: str
    title: str
    cached: bool  # every message carries a cached attachment
    unseen: str | None = None  # None | inert | benign | malicious
    every: int = 1  # one message in ``every`` carries the unseen file


MIXES: dict[str, Mix] = {
    "no_attachment": Mix("no_attachment", "no attachments", cached=False),
    "cached": Mix("cached", "all attachments in the scanned table", cached=True),
    "unseen_inert": Mix("unseen_inert", "unseen inert attachment in every message", cached=False, unseen="inert"),
    "unseen_benign_10": Mix("unseen_benign_10", "10 % unseen benign files (detonated)", cached=True,
                            unseen="benign", every=10),
    "unseen_malicious_1": Mix("unseen_malicious_1", "1 % unseen malicious files (detonated, rejected)",
                              cached=True, unseen="malicious", every=100),
}
#: plot labels
SHORT = {"no_attachment": "no\nattachment", "cached": "all in the\nscanned table", "unseen_inert": "unseen inert\nevery message",
         "unseen_benign_10": "10 % unseen\nbenign", "unseen_malicious_1": "1 % unseen\nmalicious"}
ISSUE4_MIXES = ("cached", "unseen_inert")
ISSUE6_MIXES = ("no_attachment", "cached", "unseen_benign_10", "unseen_malicious_1")


@dataclass
class Batch:
    file: Path
    count: int
    rejected: int = 0  # messages of the batch mailvm is expected to reject


@dataclass
class Plan:
    batches: list[Batch]

    @property
    def messages(self) -> int:
        return sum(b.count for b in self.batches)

    @property
    def rejected(self) -> int:
        return sum(b.rejected for b in self.batches)

    @property
    def unique_files(self) -> int:
        return sum(1 for b in self.batches if b.count == 1 and b.file.name.startswith("u-"))


class Corpus:
    """Message files of one benchmark run (cached attachments made once, unique ones per plan)."""

    def __init__(self, root: Path, seed: int = 42) -> None:
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)
        self.rng = random.Random(seed)
        self.body = _words(self.rng, BODY_WORDS)
        self.cached_atts = [(f"report-{i}.pdf", pdf_bytes(self.rng), "application/pdf") for i in range(CACHED_FILES)]
        self.cached_msgs = [self._write(f"c-{i}.eml", email_bytes(f"report {i}", self.body, [att]))
                            for i, att in enumerate(self.cached_atts)]
        self.plain_msg = self._write("plain.eml", email_bytes("hello", self.body, []))
        self._ids = itertools.count(1)

    def _write(self, name: str, data: bytes) -> Path:
        path = self.root / name
        path.write_bytes(data)
        return path

    def unique_message(self, mix: Mix, cached_index: int) -> tuple[Path, bool]:
        n = next(self._ids)
        token = self.rng.randbytes(12).hex()
        atts = [self.cached_atts[cached_index % CACHED_FILES]] if mix.cached else []
        if mix.unseen == "inert":
            atts.append((f"photo-{n}.png", png_bytes(self.rng), "image/png"))
        elif mix.unseen == "benign":
            atts.append(("install", benign_script(token), "application/octet-stream"))
        elif mix.unseen == "malicious":
            atts.append(("update", malicious_script(token), "application/octet-stream"))
        return self._write(f"u-{n}.eml", email_bytes(f"message {n}", self.body, atts)), mix.unseen == "malicious"

    def plan(self, mix: Mix, n: int) -> Plan:
        batches: list[Batch] = []
        run: list[int] = []  # positions of a current run of identical messages
        lane = 0

        def flush() -> None:
            nonlocal lane
            while run:
                k = min(BATCH, len(run))
                base = self.cached_msgs[lane % CACHED_FILES] if mix.cached else self.plain_msg
                batches.append(Batch(base, k))
                del run[:k]
                lane += 1

        for i in range(n):
            if mix.unseen is not None and i % mix.every == mix.every - 1:
                flush()
                path, bad = self.unique_message(mix, i)
                batches.append(Batch(path, 1, rejected=1 if bad else 0))
            else:
                run.append(i)
        flush()
        return Plan(batches)

    def drop_unique(self) -> None:
        for p in self.root.glob("u-*.eml"):
            p.unlink()


# ----------------------------------------------------------------------------- the lab


def mailvm_config(root: Path, milter_port: int, *, backend: str, slots: int, workers: int, pool_work: Path,
                  spool_dir: Path, image_dir: str | None, page_bytes: int, job_timeout_s: float, idle_s: float,
                  max_wait_s: float) -> str:
    image = f'image_dir = "{image_dir}"\n' if image_dir else ""
    return lab_config(root, milter_port, backend=backend, slots=slots, workers=workers, pool_work=pool_work,
                      spool_dir=spool_dir, pool_extra=f"{image}page_bytes = {page_bytes}",
                      job_timeout_s=job_timeout_s, idle_s=idle_s, max_wait_s=max_wait_s)


@dataclass
class LabSettings:
    backend: str = "process"
    slots: int = 2
    workers: int = 2
    image_dir: str | None = None
    pool_work: Path | None = None  # default: <root>/pool (qemu: a persistent dir so the template is reused)
    page_bytes: int = 8 << 20
    job_timeout_s: float = 20.0
    idle_s: float = 1.0
    max_wait_s: float = 120.0
    # where mailvm writes each message's files: "tmpfs" (/dev/shm, as README recommends) or "disk" (the lab dir)
    spool: str = "tmpfs"


class MailLab:
    """Postfix without milter, Postfix with mailvm, and ``mailvm serve``, all on 127.0.0.1."""

    def __init__(self, root: Path, settings: LabSettings) -> None:
        from mailvm.lab.postfix import LabPostfix

        self.root = root
        self.settings = settings
        self.milter_port = free_port()
        self.plain = LabPostfix(root / "postfix-plain", port=free_port())
        self.milter = LabPostfix(root / "postfix-milter", port=free_port(), milter=f"inet:127.0.0.1:{self.milter_port}")
        self.proc: subprocess.Popen | None = None
        self.log_path = root / "mailvm.log"
        (root / "policy.d").mkdir(parents=True, exist_ok=True)
        if settings.spool == "tmpfs" and os.path.isdir("/dev/shm"):
            self.spool_dir = Path(tempfile.mkdtemp(prefix="mailvm-bench-spool-", dir="/dev/shm"))
        else:
            self.spool_dir = root / "spool"

    # -- mailvm ------------------------------------------------------------------
    @property
    def pool_work(self) -> Path:
        return self.settings.pool_work or (self.root / "pool")

    def start_mailvm(self, ready_timeout: float = 600.0) -> None:
        s = self.settings
        pool_work = self.pool_work
        pool_work.mkdir(parents=True, exist_ok=True, mode=0o700)
        # a previous run's durable queue and status must not leak into this one
        shutil.rmtree(pool_work / "jobs", ignore_errors=True)
        (pool_work / "status.json").unlink(missing_ok=True)
        config = self.root / "mailvm.toml"
        config.write_text(mailvm_config(self.root, self.milter_port, backend=s.backend, slots=s.slots,
                                        workers=s.workers, pool_work=pool_work, spool_dir=self.spool_dir,
                                        image_dir=s.image_dir,
                                        page_bytes=s.page_bytes, job_timeout_s=s.job_timeout_s, idle_s=s.idle_s,
                                        max_wait_s=s.max_wait_s))
        logf = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mailvm.cli.mailvm_main", "-c", str(config), "serve"],
            stdout=logf, stderr=subprocess.STDOUT, start_new_session=True,
        )
        logf.close()
        proc = self.proc
        wait_port(self.milter_port, 120, alive=lambda: proc.poll() is None)
        self.wait_pool_ready(ready_timeout)

    def pool_status(self) -> dict[str, Any] | None:
        from mailvm.vmpool.pool import read_status

        return read_status(self.pool_work)

    def wait_pool_ready(self, timeout: float) -> dict[str, Any]:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"mailvm serve exited ({self.proc.returncode}): {self.log_tail()}")
            st = self.pool_status()
            if st and st.get("state") == "running" and st["slots"]["ready"] >= self.settings.slots:
                return st
            if st and st.get("state") == "broken":
                raise RuntimeError(f"pool broken: {st['slot_events'].get('last_create_error')}")
            time.sleep(0.2)
        raise RuntimeError(f"pool not warm after {timeout} s: {self.pool_status()} {self.log_tail()}")

    def stop_mailvm(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)

    def restart_mailvm(self, **changes: Any) -> None:
        self.stop_mailvm()
        for k, v in changes.items():
            setattr(self.settings, k, v)
        self.start_mailvm()

    def mailvm_cpu(self) -> float:
        return tree_cpu_seconds(self.proc.pid) if self.proc is not None else 0.0

    def mailvm_cpu_parts(self) -> dict[str, float]:
        return tree_cpu_by_part(self.proc.pid) if self.proc is not None else dict.fromkeys(CPU_PARTS, 0.0)

    def log_offset(self) -> int:
        try:
            return self.log_path.stat().st_size
        except OSError:
            return 0

    def log_since(self, offset: int) -> dict[str, Any]:
        """What mailvm logged since ``offset``: actions taken (one line per message) and warnings/errors."""
        try:
            with open(self.log_path, "rb") as fh:
                fh.seek(offset)
                text = fh.read(64 << 20).decode("utf-8", "replace")
        except OSError:
            return {}
        actions: dict[str, int] = {}
        problems: list[str] = []
        n_problems = 0
        from_message_cache = 0
        for line in text.splitlines():
            m = _ACTION_RE.search(line)
            if m:
                actions[m.group(1)] = actions.get(m.group(1), 0) + 1
                from_message_cache += "answered=message-cache" in line
            if " WARNING " in line or " ERROR " in line:
                n_problems += 1
                if len(problems) < 5:
                    problems.append(line[:300])
        return {"actions": actions, "answered_from_message_cache": from_message_cache, "warnings_errors": n_problems,
                "first_warnings_errors": problems}

    def log_tail(self, n: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    # -- lifecycle -----------------------------------------------------------------
    def start(self) -> None:
        self.start_mailvm()
        self.plain.start()
        self.milter.start()

    def stop(self) -> None:
        for pf in (self.plain, self.milter):
            try:
                pf.stop()
            except Exception as exc:  # keep stopping the rest
                log.warning("stopping postfix %s: %s", pf.root, exc)
        self.stop_mailvm()
        if self.spool_dir.parent != self.root:
            shutil.rmtree(self.spool_dir, ignore_errors=True)

    def __enter__(self) -> "MailLab":
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()


_ACTION_RE = re.compile(r" verdict=\S+ score=\d+ action=(\w+) ")


def maildir_count(postfix: Any) -> int:
    n = 0
    for sub in ("new", "cur"):
        try:
            n += sum(1 for e in os.scandir(postfix.inbox / sub) if e.is_file())
        except FileNotFoundError:
            pass
    return n


# ----------------------------------------------------------------------------- sending


def _smtp_source(file: Path, count: int, port: int, sessions: int = 1) -> subprocess.CompletedProcess:
    return subprocess.run(
        [SMTP_SOURCE, "-4", "-A", "-f", SENDER, "-t", RECIPIENT, "-F", str(file), "-m", str(count),
         "-s", str(sessions), f"127.0.0.1:{port}"],
        capture_output=True, text=True, timeout=3600,
    )


def send_plan(plan: Plan, port: int, sessions: int) -> list[str]:
    """Run the plan's batches over ``sessions`` lanes; returns smtp-source's complaints (first few)."""
    todo = iter(plan.batches)
    lock = threading.Lock()
    errors: list[str] = []

    def lane() -> None:
        while True:
            with lock:
                batch = next(todo, None)
            if batch is None:
                return
            res = _smtp_source(batch.file, batch.count, port)
            if res.returncode != 0 or res.stderr.strip():
                with lock:
                    if len(errors) < 20:
                        errors.append((res.stderr.strip() or f"exit {res.returncode}")[:300])

    threads = [threading.Thread(target=lane, daemon=True) for _ in range(max(1, sessions))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return errors


def run_once(lab: MailLab, target: str, plan: Plan | None, sessions: int,
             canonical: tuple[Path, int] | None = None) -> dict[str, Any]:
    """One timed run on the reference (``plain``) or mailvm (``milter``) Postfix."""
    postfix = lab.plain if target == "plain" else lab.milter
    postfix.clear_mail()
    if canonical is not None:
        messages, rejected = canonical[1], 0
    else:
        assert plan is not None
        messages, rejected = plan.messages, plan.rejected
    expected = messages - (rejected if target == "milter" else 0)
    cpu0 = lab.mailvm_cpu()
    parts0 = lab.mailvm_cpu_parts()
    pf0 = _postfix_cpu(postfix)
    log0 = lab.log_offset()
    meter = CpuMeter()
    t0 = time.monotonic()
    if canonical is not None:
        res = _smtp_source(canonical[0], canonical[1], postfix.port, sessions)
        errors = [res.stderr.strip()[:300]] if res.stderr.strip() else []
    else:
        errors = send_plan(plan, postfix.port, sessions)
    t_smtp = time.monotonic()
    delivered, last_change, t_end = maildir_count(postfix), time.monotonic(), time.monotonic()
    while delivered < expected:
        time.sleep(0.02)
        n = maildir_count(postfix)
        now = time.monotonic()
        if n != delivered:
            delivered, last_change = n, now
        elif now - last_change > STALL_S:
            break
        t_end = now
    t_end = max(t_end, t_smtp)
    elapsed = t_end - t0
    cpu = lab.mailvm_cpu() - cpu0
    parts = {k: v - parts0.get(k, 0.0) for k, v in lab.mailvm_cpu_parts().items()}
    pf_cpu = _postfix_cpu(postfix) - pf0
    mailvm_log = lab.log_since(log0) if target == "milter" else {}
    return {
        "target": "postfix" if target == "plain" else "postfix+mailvm",
        "messages": messages,
        "expected_delivered": expected,
        "delivered": delivered,
        "complete": delivered >= expected,
        "seconds": round(elapsed, 3),
        "smtp_seconds": round(t_smtp - t0, 3),
        "msg_per_s": round(messages / elapsed, 2) if elapsed > 0 else None,
        "mailvm_cpu_s": round(cpu, 3),
        "mailvm_cpu_ms_per_msg": round(cpu / messages * 1000, 2) if messages else None,
        # by part of mailvm serve's tree (bench.common.tree_cpu_by_part)
        "mailvm_cpu_ms_per_msg_by_part": {k: round(v / messages * 1000, 2) for k, v in parts.items()} if messages else {},
        # the Postfix instance's own processes (master's tree: smtpd, cleanup, qmgr, local...)
        "postfix_cpu_ms_per_msg": round(pf_cpu / messages * 1000, 2) if messages else None,
        "busy_cores": round(meter.busy_cores(), 2),
        "smtp_source_complaints": errors[:5],
        "mailvm_log": mailvm_log,
    }


def warm_cache(lab: MailLab, corpus: Corpus, timeout: float = 300.0) -> dict[str, Any]:
    """Send each cached-mix message once through mailvm and wait until delivered (verdicts stored)."""
    lab.milter.clear_mail()
    t0 = time.monotonic()
    for path in corpus.cached_msgs:
        _smtp_source(path, 1, lab.milter.port)
    got = lab.milter.wait_delivered(None, len(corpus.cached_msgs), timeout)
    if len(got) < len(corpus.cached_msgs):
        raise RuntimeError(f"cache warm-up: only {len(got)} of {len(corpus.cached_msgs)} delivered; {lab.log_tail()}")
    verdicts = [_header(m, b"x-mailvm-verdict") for m in got]
    return {"seconds": round(time.monotonic() - t0, 2), "verdicts": verdicts}


def _postfix_cpu(postfix: Any) -> float:
    """CPU seconds of one lab Postfix (its master's process tree, reaped children included)."""
    try:
        pid = int((Path(postfix.queue_dir) / "pid" / "master.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 0.0
    return tree_cpu_seconds(pid)


def _header(raw: bytes, name: bytes) -> str:
    for line in raw.split(b"\n\n", 1)[0].splitlines():
        if line.lower().startswith(name + b":"):
            return line.split(b":", 1)[1].strip().decode("ascii", "replace")
    return ""


def summarize_pairs(runs: list[tuple[dict, dict]]) -> dict[str, Any]:
    plain = [p for p, _ in runs]
    mv = [m for _, m in runs]
    ratios = [m["msg_per_s"] / p["msg_per_s"] for p, m in runs if p.get("msg_per_s") and m.get("msg_per_s")]
    return {
        "postfix": {"msg_per_s": summary([r["msg_per_s"] for r in plain], 2),
                    "postfix_cpu_ms_per_msg": summary([r["postfix_cpu_ms_per_msg"] for r in plain], 2),
                    "runs": plain},
        "mailvm": {
            "msg_per_s": summary([r["msg_per_s"] for r in mv], 2),
            "cpu_ms_per_msg": summary([r["mailvm_cpu_ms_per_msg"] for r in mv], 2),
            "cpu_ms_per_msg_by_part": {k: summary([r["mailvm_cpu_ms_per_msg_by_part"].get(k, 0.0) for r in mv], 2)
                                       for k in CPU_PARTS},
            "postfix_cpu_ms_per_msg": summary([r["postfix_cpu_ms_per_msg"] for r in mv], 2),
            "answered_from_message_cache": sum(r.get("mailvm_log", {}).get("answered_from_message_cache", 0)
                                               for r in mv),
            "messages": sum(r["messages"] for r in mv),
            "runs": mv,
        },
        "ratio": round(median(ratios), 3) if ratios else None,
        "ratios": [round(r, 3) for r in ratios],
        "complete": all(r["complete"] for r in plain + mv),
    }


def run_mixes(lab: MailLab, corpus: Corpus, mixes: list[str], messages: int, repeats: int, sessions: int,
              canonical: bool = True, bar: tqdm | None = None) -> dict[str, Any]:
    """Every mix (and the canonical pair) ``repeats`` times: reference first, then mailvm, same files."""
    out: dict[str, Any] = {"mixes": {}}
    if canonical:
        pairs = []
        for _ in range(repeats):
            p = run_once(lab, "plain", None, sessions, canonical=(corpus.cached_msgs[0], messages))
            m = run_once(lab, "milter", None, sessions, canonical=(corpus.cached_msgs[0], messages))
            pairs.append((p, m))
            if bar is not None:
                bar.update(2)
        out["canonical"] = {"title": f"smtp-source -m {messages} -s {sessions}, one cached-mix message",
                            **summarize_pairs(pairs)}
    for name in mixes:
        mix = MIXES[name]
        pairs = []
        for _ in range(repeats):
            plan = corpus.plan(mix, messages)
            p = run_once(lab, "plain", plan, sessions)
            m = run_once(lab, "milter", plan, sessions)
            pairs.append((p, m))
            corpus.drop_unique()
            if bar is not None:
                bar.update(2)
        out["mixes"][name] = {"title": mix.title, "batches": len(plan.batches), "unique_files": plan.unique_files,
                              "rejected_expected": plan.rejected, **summarize_pairs(pairs)}
    return out


def bench(messages: int = 300, repeats: int = 3, sessions: int = 20, mixes: tuple[str, ...] = tuple(MIXES),
          settings: LabSettings | None = None, canonical: bool = True, keep: bool = False) -> dict[str, Any]:
    """The whole measurement in a fresh lab; returns the result record."""
    settings = settings or LabSettings()
    root = lab_dir("mailvm-bench-postfix-")
    total = repeats * 2 * (len(mixes) + (1 if canonical else 0))
    result: dict[str, Any] = {
        "benchmark": "postfix",
        "machine": machine(settings.image_dir),
        "backend": settings.backend,
        "settings": {"messages": messages, "repeats": repeats, "sessions": sessions, "slots": settings.slots,
                     "workers": settings.workers, "spool": settings.spool, "batch": BATCH, "cached_files": CACHED_FILES,
                     "attachment_bytes": ATTACHMENT_BYTES},
        "method": ("smtp-source lanes: one process per batch (<= %d identical messages, 1 for a unique file), "
                   "%d lanes; end to end = last delivery in the Maildir" % (BATCH, sessions)),
    }
    try:
        corpus = Corpus(root / "msgs")
        result["message_bytes"] = {"plain": corpus.plain_msg.stat().st_size,
                                   "cached": corpus.cached_msgs[0].stat().st_size}
        with MailLab(root / "lab", settings) as lab, tqdm(total=total, desc="postfix runs", unit="run") as bar:
            result["pool"] = (lab.pool_status() or {}).get("backend")
            result["warm_up"] = warm_cache(lab, corpus)
            result.update(run_mixes(lab, corpus, list(mixes), messages, repeats, sessions, canonical, bar))
            st = lab.pool_status() or {}
            result["pool_jobs"] = st.get("jobs")
    finally:
        if not keep:
            shutil.rmtree(root, ignore_errors=True)
    return result


# ----------------------------------------------------------------------------- output


def plot(result: dict[str, Any], path: Path) -> Path:
    plt = pyplot()

    rows = []
    if "canonical" in result:
        rows.append(("canonical\nsmtp-source", result["canonical"]))
    for name, r in result["mixes"].items():
        rows.append((SHORT.get(name, name), r))
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(12, 4.5), gridspec_kw={"width_ratios": [3, 1.2]})
    x = range(len(rows))
    pf = [r["postfix"]["msg_per_s"].get("median", 0) for _, r in rows]
    mv = [r["mailvm"]["msg_per_s"].get("median", 0) for _, r in rows]
    a1.bar([i - 0.2 for i in x], pf, 0.4, label="Postfix, no milter")
    a1.bar([i + 0.2 for i in x], mv, 0.4, label="Postfix + mailvm")
    for i, (_, r) in enumerate(rows):
        if r.get("ratio"):
            a1.text(i + 0.2, mv[i], f"{r['ratio'] * 100:.0f} %", ha="center", va="bottom", fontsize=8)
    a1.set_xticks(list(x), [n for n, _ in rows], fontsize=8)
    a1.set_ylabel("messages per second (median, end to end)")
    a1.set_title(f"smtp-source through a loopback Postfix ({result['machine']['cores']} cores, "
                 f"{result['backend']} backend, {result['settings']['slots']} slots)", fontsize=9)
    a1.legend(fontsize=8)
    cpu = [r["mailvm"]["cpu_ms_per_msg"].get("median", 0) for _, r in rows]
    a2.barh(list(x), cpu, color="tab:orange")
    a2.set_yticks(list(x), [n.replace("\n", " ") for n, _ in rows], fontsize=8)
    a2.invert_yaxis()
    a2.set_xlabel("mailvm CPU per message (ms)")
    return save_figure(fig, path)


def print_table(result: dict[str, Any]) -> None:
    print(f"\n{'mix':<40}{'postfix msg/s':>14}{'mailvm msg/s':>14}{'ratio':>8}{'CPU ms/msg':>12}"
          f"{'milter':>8}{'workers':>8}{'pool':>8}{'Postfix':>9}")
    rows = ([("canonical (smtp-source -m N -s S)", result["canonical"])] if "canonical" in result else [])
    rows += [(r["title"], r) for r in result["mixes"].values()]
    for title, r in rows:
        ratio = f"{r['ratio'] * 100:.0f} %" if r.get("ratio") else "-"
        print(f"{title[:39]:<40}{r['postfix']['msg_per_s'].get('median', 0):>14.1f}"
              f"{r['mailvm']['msg_per_s'].get('median', 0):>14.1f}{ratio:>8}"
              f"{r['mailvm']['cpu_ms_per_msg'].get('median', 0):>12.1f}"
              + "".join(f"{r['mailvm'].get('cpu_ms_per_msg_by_part', {}).get(k, {}).get('median', 0):>8.2f}"
                        for k in CPU_PARTS)
              + f"{r['postfix'].get('postfix_cpu_ms_per_msg', {}).get('median', 0):>9.2f}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--messages", type=int, default=300, help="messages per run")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--sessions", type=int, default=20, help="parallel SMTP sessions (lanes)")
    ap.add_argument("--slots", type=int, default=2)
    ap.add_argument("--workers", type=int, default=2, help="mailvm scan worker processes")
    ap.add_argument("--backend", default="process", choices=("process", "qemu"))
    ap.add_argument("--image-dir", default=None)
    ap.add_argument("--mixes", nargs="+", default=list(ISSUE4_MIXES), choices=list(MIXES))
    ap.add_argument("--spool", choices=("tmpfs", "disk"), default="tmpfs",
                    help="mailvm's spool on /dev/shm (the README's recommendation) or in the lab dir on disk")
    ap.add_argument("--no-canonical", action="store_true")
    ap.add_argument("--keep", action="store_true", help="keep the lab directory (logs, Maildirs)")
    ap.add_argument("--out", default=str(RESULTS / "postfix.json"))
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    from bench.common import QEMU_WORK, find_image_dir

    image_dir = find_image_dir(args.image_dir) if args.backend == "qemu" else args.image_dir
    settings = LabSettings(backend=args.backend, slots=args.slots, workers=args.workers, image_dir=image_dir,
                           spool=args.spool,
                           pool_work=QEMU_WORK / "vport" if args.backend == "qemu" else None)
    result = bench(args.messages, args.repeats, args.sessions, tuple(args.mixes), settings,
                   canonical=not args.no_canonical, keep=args.keep)
    out = Path(args.out)
    write_json(out, result)
    plot(result, out.with_suffix(".png"))
    print_table(result)
    print(f"wrote {out} and {out.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
