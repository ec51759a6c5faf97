"""Overhead of each pipeline component, per message and per file, for a cache-hit and an unseen file.

The real pipeline pieces are called one after the other with a timer around
each, in the order the milter's worker runs them (``mailvm.scan.Scanner``) and
the pool then does (``mailvm.vmpool.pool``):

==================  ===========================================================
mime_parse          ``mime.walk_message``: the MIME tree, decoded parts to the spool
archive_extraction  ``extract.expand`` on each attachment (password guesses, made lazily when
                    an encrypted container asks for them, included)
link_download       ``links.find_urls`` + ``links.download_links`` from a local
                    HTTP server on 127.0.0.1 (``links.allow_networks``), downloads expanded
static_triage       ``Triage.analyze`` on every file the table did not answer
table_lookup_claim  ``ScanTable.get`` for every file; for misses ``claim`` (detonated
                    kinds) or claim + publish of the static verdict (inert kinds)
queueing            ``JobQueue.push`` + ``pop``: the durable queue between the scan
                    workers and the pool service (file copied next to the queue)
handover            job written on a pre-warmed slot's page + doorbell -> agent RUNNING
execution           RUNNING -> DONE: the sample runs in the guest's sandbox
verdict_return      ``read_result`` (bounds/schema checks) + ``compose_verdict`` +
                    ``ScanTable.publish``
action              ``decide_for_recipients``: policy, verdict and the header text
==================  ===========================================================

The message: a text body with one link (the server answers with a shell
script), and a zip attachment holding a shell script and a text file: four
files, two of them (the two scripts) detonated.  *Unseen*: every repetition
uses new random file contents; *cache hit*: the same message again after its
verdicts were published (the link is still downloaded: the file behind a URL
may change, so only its hash is cached).  Slots are created before the timer
starts (pre-warmed, as in the pool).  The guest steps run on the ``process``
backend and, when a guest image is built, on the ``qemu`` backend too (same
files, same run).

As a check, the whole ``Scanner.scan_message`` (with an in-process pool) is
timed for the same two cases: the sum of the parts should be close to it.
"""

from __future__ import annotations

import argparse
import dataclasses
import http.server
import io
import logging
import os
import random
import shutil
import sys
import tempfile
import threading
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from bench.bench_postfix import RECIPIENT, _words, benign_script, email_bytes
from bench.common import QEMU_WORK, RESULTS, machine, pyplot, save_figure, summary, write_json

log = logging.getLogger(__name__)

COMPONENTS: tuple[tuple[str, str], ...] = (
    ("mime_parse", "MIME parse"),
    ("archive_extraction", "archive extraction"),
    ("link_download", "link download"),
    ("static_triage", "static triage"),
    ("table_lookup_claim", "scanned-table lookup + claim"),
    ("queueing", "queueing"),
    ("handover", "hand-over to the slot"),
    ("execution", "execution in the guest"),
    ("verdict_return", "verdict return"),
    ("action", "action (decide + headers)"),
)
GUEST_STEPS = ("handover", "execution", "verdict_return")
PAGE_BYTES = 8 << 20


# ----------------------------------------------------------------------------- a local web server


class _Files(http.server.BaseHTTPRequestHandler):
    files: dict[str, bytes] = {}

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        data = self.files.get(self.path)
        if data is None:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: Any) -> None:
        pass


class FileServer:
    """``http://127.0.0.1:PORT/<path>`` -> bytes, in a thread; for link downloads."""

    def __init__(self) -> None:
        handler = type("Handler", (_Files,), {"files": {}})
        self.files: dict[str, bytes] = handler.files
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> "FileServer":
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


# ----------------------------------------------------------------------------- the measured message


@dataclass
class Sample:
    raw: bytes
    token: str


def make_sample(server: FileServer, rng: random.Random, body: str) -> Sample:
    token = rng.randbytes(8).hex()
    server.files[f"/dl/{token}/tool"] = benign_script(token + "-download")
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("install", benign_script(token + "-zip"))
        z.writestr("readme.txt", f"Release notes {token}\n" + body[:2000])
    text = f"Hello,\nthe tool is at http://127.0.0.1:{server.port}/dl/{token}/tool and the bundle is attached.\n\n{body}"
    raw = email_bytes(f"bundle {token}", text, [("bundle.zip", buf.getvalue(), "application/zip")])
    return Sample(raw, token)


# ----------------------------------------------------------------------------- the pipeline, step by step


class Pieces:
    """The real pipeline objects of one run (config, triage, table, queue, policies, backends)."""

    def __init__(self, root: Path, backends: dict[str, Any]) -> None:
        from mailvm.config import Config
        from mailvm.policy import load_policies
        from mailvm.scantable import ScanTable
        from mailvm.triage import Triage
        from mailvm.vmpool.jobqueue import JobQueue

        cfg = Config()
        cfg.links = dataclasses.replace(cfg.links, enabled=True, allow_networks=["127.0.0.0/8"], timeout_s=5.0)
        cfg.spool = dataclasses.replace(cfg.spool, dir=str(root / "spool"))
        cfg.scantable = dataclasses.replace(cfg.scantable, path=str(root / "table"))
        cfg.pool = dataclasses.replace(cfg.pool, page_bytes=PAGE_BYTES, idle_s=1.0, job_timeout_s=20.0)
        self.cfg = cfg
        self.root = root
        Path(cfg.spool.dir).mkdir(parents=True, exist_ok=True, mode=0o700)
        self.triage = Triage(cfg.triage)
        self.table = ScanTable(cfg.scantable)
        self.queue = JobQueue(root / "jobs")
        self.policies = [p for _, p in load_policies(None, None).for_recipients([RECIPIENT])]
        self.backends = backends
        self.detonate_kinds = frozenset(cfg.pool.detonate_kinds)
        self._n = 0

    def close(self) -> None:
        self.table.close()

    def message(self, raw: bytes, guest: str) -> tuple[dict[str, float], dict[str, int], dict[str, Any]]:
        """Run one message through every step; returns (ms per component, files per component, extra)."""
        from mailvm.extract import expand, mime
        from mailvm.extract.links import download_links, find_urls
        from mailvm.extract.passwords import LazyPasswords, candidate_passwords
        from mailvm.extract.spool import Spool
        from mailvm.policy import ArtifactOutcome, decide_for_recipients
        from mailvm.scan import combine
        from mailvm.verdict import MALICIOUS_THRESHOLD, Verdict
        from mailvm.vmpool.pool import Job

        cfg = self.cfg
        self._n += 1
        ms: dict[str, float] = {k: 0.0 for k, _ in COMPONENTS}
        files: dict[str, int] = {k: 0 for k, _ in COMPONENTS}
        spool_dir = Path(tempfile.mkdtemp(prefix="msg-", dir=cfg.spool.dir))
        try:
            t = time.perf_counter()
            spool = Spool(spool_dir, cfg.extract)
            walk = mime.MessageWalk()
            mime.walk_message(raw, spool, cfg.extract, (), 0, walk)
            ms["mime_parse"] = _ms(t)
            files["mime_parse"] = len(walk.artifacts)

            t = time.perf_counter()
            # as extract_message does: guesses from the body only when an encrypted container asks for them
            passwords = LazyPasswords(lambda: candidate_passwords(walk.text, list(cfg.extract.passwords),
                                                                  cfg.extract.max_password_tries))
            before = len(spool.artifacts)
            for art in list(walk.artifacts):
                expand(art, spool, cfg.extract, passwords)
            ms["archive_extraction"] = _ms(t)
            files["archive_extraction"] = len(spool.artifacts) - before

            t = time.perf_counter()
            urls = find_urls(walk.text, walk.html, cfg.links.max_links * 4)
            downloads, link_findings = download_links(urls, spool, cfg.links)
            for art in downloads:
                expand(art, spool, cfg.extract, ())
            ms["link_download"] = _ms(t)
            files["link_download"] = len(downloads)

            artifacts = list(spool.artifacts)
            outcomes: list[Any] = []
            todo = []  # (artifact, triage result, static verdict) of table misses
            t = time.perf_counter()
            cached = {a.sha256: self.table.get(a.sha256) for a in artifacts}
            ms["table_lookup_claim"] += _ms(t)
            files["table_lookup_claim"] = len(artifacts)
            for art in artifacts:
                v = cached[art.sha256]
                if v is not None and v.state == "done":
                    name, score, findings = combine(art.findings, v)
                    outcomes.append(ArtifactOutcome(art.sha256, art.name, name, score, tuple(findings)))
                    continue
                t = time.perf_counter()
                res = self.triage.analyze(art)
                ms["static_triage"] += _ms(t)
                files["static_triage"] += 1
                static = Verdict.from_findings(res.findings, source="triage", log=[{"type": "kind", "kind": res.kind}])
                todo.append((art, res, static))

            jobs = []
            for art, res, static in todo:
                needs_vm = res.kind in self.detonate_kinds and static.score < MALICIOUS_THRESHOLD
                owner = f"bench:{os.getpid()}:{self._n}:{art.sha256[:8]}"
                t = time.perf_counter()
                claim = self.table.claim(art.sha256, owner)
                if claim.won and not needs_vm:
                    self.table.publish(art.sha256, static)
                ms["table_lookup_claim"] += _ms(t)
                if not needs_vm:
                    name, score, findings = combine(art.findings, static)
                    outcomes.append(ArtifactOutcome(art.sha256, art.name, name, score, tuple(findings)))
                    continue
                job = Job(sha256=art.sha256, path=art.path, name=art.name, type=art.type, kind=res.kind,
                          static_findings=list(res.findings), owner=owner)
                t = time.perf_counter()
                self.queue.push(job)
                record = self.queue.pop()
                ms["queueing"] += _ms(t)
                files["queueing"] += 1
                jobs.append((art, job, record))

            extra: dict[str, Any] = {"artifacts": len(artifacts), "detonated": len(jobs), "verdicts": []}
            for art, job, record in jobs:
                g = self._detonate(guest, job, record["path"])
                for k in GUEST_STEPS:
                    ms[k] += g[k]
                    files[k] += 1
                verdict = g["verdict"]
                extra["verdicts"].append(verdict.verdict)
                name, score, findings = combine(art.findings, verdict)
                outcomes.append(ArtifactOutcome(art.sha256, art.name, name, score, tuple(findings)))
                self.queue.done(record)

            t = time.perf_counter()
            decision = decide_for_recipients(self.policies, outcomes, list(link_findings))
            ms["action"] = _ms(t)
            files["action"] = len(outcomes)
            extra["action"] = decision.action
            extra["verdict"] = decision.verdict
            return ms, files, extra
        finally:
            shutil.rmtree(spool_dir, ignore_errors=True)

    def _detonate(self, guest: str, job: Any, path: str) -> dict[str, Any]:
        """Hand-over, execution and verdict return of one job on a fresh pre-warmed slot of ``guest``."""
        from mailvm.guest import protocol as P
        from mailvm.vmpool.outcome import compose_verdict

        backend = self.backends[guest]
        pool_cfg = self.cfg.pool
        with open(path, "rb") as fh:
            data = fh.read()
        slot = backend.create_slot(f"comp{self._n}")  # pre-warmed before the clock starts
        try:
            time.sleep(0.05)  # an idle slot, its agent asleep on the doorbell
            options = {"name": job.name, "type": job.type, "kind": job.kind, "timeout_s": pool_cfg.job_timeout_s,
                       "idle_s": pool_cfg.idle_s, "stop_on_malicious": True,
                       "max_result_bytes": pool_cfg.max_result_bytes}
            t0 = time.perf_counter()
            slot.page.submit(data, job.name, options)
            slot.ring()
            st = slot.page.wait_state({P.RUNNING, P.DONE, P.FAILED}, time.monotonic() + 30, alive=slot.alive)
            t1 = time.perf_counter()
            if st == P.RUNNING:
                slot.page.wait_state({P.DONE, P.FAILED}, time.monotonic() + pool_cfg.job_timeout_s + 30,
                                     alive=slot.alive, heartbeat_timeout=pool_cfg.heartbeat_timeout_s)
            t2 = time.perf_counter()
            result = slot.page.read_result(pool_cfg.max_result_bytes)
            verdict = compose_verdict(job.static_findings, job.kind, result, slot.id, t2 - t0, (t1 - t0) * 1000)
            self.table.publish(job.sha256, verdict)
            t3 = time.perf_counter()
        finally:
            slot.destroy()
        return {"handover": (t1 - t0) * 1000, "execution": (t2 - t1) * 1000, "verdict_return": (t3 - t2) * 1000,
                "verdict": verdict}


def _ms(t: float) -> float:
    return (time.perf_counter() - t) * 1000


def whole_pipeline(pieces: Pieces, raw_unseen: bytes, raw_cached: bytes, pool: Any) -> dict[str, float]:
    """``Scanner.scan_message`` + decide, end to end in one process, for the two cases (ms)."""
    from mailvm.milter.service import outcomes_from_report
    from mailvm.policy import decide_for_recipients
    from mailvm.scan import Scanner

    scanner = Scanner(pieces.cfg, pieces.triage, pieces.table, pool)
    out = {}
    for case, raw in (("unseen", raw_unseen), ("cache_hit", raw_cached)):
        t = time.perf_counter()
        report = scanner.scan_message(raw, deadline=time.monotonic() + 120).to_dict()
        decide_for_recipients(pieces.policies, outcomes_from_report(report), [])
        out[case] = _ms(t)
    return out


def postfix_mix(pieces: Pieces, rng: random.Random, reps: int) -> dict[str, Any]:
    """The Postfix benchmark's cache-hit message (text + one cached PDF) in this process.

    Per-component times, and the CPU time (``time.process_time``) of the whole
    ``Scanner.scan_message`` + decide: compared with the CPU per message of
    ``mailvm serve`` in the Postfix run, the difference is what the milter
    protocol, the hand-off to the worker processes and the logging cost.
    """
    from bench.bench_postfix import BODY_WORDS, pdf_bytes
    from mailvm.milter.service import outcomes_from_report
    from mailvm.policy import decide_for_recipients
    from mailvm.scan import Scanner
    from mailvm.verdict import Verdict

    raw = email_bytes("report", _words(rng, BODY_WORDS), [("report.pdf", pdf_bytes(rng), "application/pdf")])
    scanner = Scanner(pieces.cfg, pieces.triage, pieces.table, None)
    for a in scanner.scan_message(raw).artifacts:  # its verdict in the table, as after a detonation
        pieces.table.claim(a.artifact.sha256, "bench-warm")
        pieces.table.publish(a.artifact.sha256, Verdict())
    per: dict[str, list[float]] = {}
    cpu, wall = [], []
    for _ in range(reps):
        ms, _files, _extra = pieces.message(raw, "process")
        for k, v in ms.items():
            per.setdefault(k, []).append(v)
        c, t = time.process_time(), time.perf_counter()
        report = scanner.scan_message(raw).to_dict()
        decide_for_recipients(pieces.policies, outcomes_from_report(report), [])
        cpu.append((time.process_time() - c) * 1000)
        wall.append(_ms(t))
    return {"message_bytes": len(raw), "reps": reps, "per_message_ms": {k: summary(v) for k, v in per.items()},
            "scan_cpu_ms": summary(cpu), "scan_wall_ms": summary(wall),
            "sources": sorted({a["source"] for a in report["artifacts"]})}


# ----------------------------------------------------------------------------- the benchmark


def bench(reps: int = 10, qemu_reps: int = 3, image_dir: str | None = None, with_qemu: bool = True) -> dict[str, Any]:
    from mailvm.config import PoolConfig
    from mailvm.vmpool.backends.process import ProcessBackend
    from mailvm.vmpool.pool import Pool

    root = Path(tempfile.mkdtemp(prefix="mailvm-bench-components-"))
    rng = random.Random(7)
    body = _words(rng, 600)
    backends: dict[str, Any] = {}
    notes: list[str] = []
    result: dict[str, Any] = {"benchmark": "components", "machine": machine(image_dir), "reps": reps,
                              "components": [{"id": k, "title": t} for k, t in COMPONENTS]}
    try:
        pcfg = PoolConfig(backend="process", work_dir=str(root / "pool"), page_bytes=PAGE_BYTES, idle_s=1.0,
                          job_timeout_s=20.0)
        backends["process"] = ProcessBackend(pcfg)
        backends["process"].prepare()
        if with_qemu and image_dir:
            try:
                from mailvm.vmpool.backends.qemu import QemuBackend

                qcfg = PoolConfig(backend="qemu", work_dir=str(QEMU_WORK / "vport"), page_bytes=PAGE_BYTES,
                                  image_dir=image_dir, idle_s=1.0, job_timeout_s=60.0, ready_timeout_s=180)
                qb = QemuBackend(qcfg, image_dir=image_dir)
                qb.prepare()
                backends["qemu"] = qb
                result["qemu_accel"] = qb.spec.accel
            except Exception as exc:  # the suite goes on without the qemu column
                notes.append(f"qemu backend not measured: {exc}")
        elif with_qemu:
            notes.append("qemu backend not measured: no guest image is built (mvctl image build)")
        else:
            notes.append("qemu backend not measured in this run (--quick or --no-qemu)")
        pieces = Pieces(root, backends)
        per_case: dict[str, dict[str, list[float]]] = {}
        per_file: dict[str, dict[str, list[float]]] = {}
        extras: dict[str, list] = {}
        guests = list(backends)
        total = reps * 2 + qemu_reps * ("qemu" in backends) + 2
        with FileServer() as server, tqdm(total=total, desc="components", unit="msg") as bar:
            # one warm-up message: imports, compiled rules, first-use caches are not what we measure
            pieces.message(make_sample(server, rng, body).raw, "process")
            for guest in guests:
                n = reps if guest == "process" else qemu_reps
                for _ in range(n):
                    sample = make_sample(server, rng, body)
                    for case in ("unseen", "cache_hit"):
                        if case == "cache_hit" and guest != "process":
                            continue
                        key = case if guest == "process" else f"{case}_{guest}"
                        ms, files, extra = pieces.message(sample.raw, guest)
                        for k, v in ms.items():
                            per_case.setdefault(key, {}).setdefault(k, []).append(v)
                            if files[k]:
                                per_file.setdefault(key, {}).setdefault(k, []).append(v / files[k])
                        extras.setdefault(key, []).append(extra)
                        bar.update(1)
            # the whole pipeline as one call, for the sum check
            pool = Pool(dataclasses.replace(pieces.cfg.pool, backend="process", slots=2,
                                            work_dir=str(root / "pool-whole")),
                        ProcessBackend(dataclasses.replace(pcfg, work_dir=str(root / "pool-whole"))), pieces.table)
            pool.start()
            pool.wait_warm(60)
            try:
                wholes = [whole_pipeline(pieces, make_sample(server, rng, body).raw, sample.raw, pool)
                          for _ in range(2)]
            finally:
                pool.close()
            bar.update(2)
            result["postfix_mix_cache_hit"] = postfix_mix(pieces, rng, max(reps, 5) * 4)
        pieces.close()
        result["per_message_ms"] = {case: {k: summary(v) for k, v in comps.items()} for case, comps in per_case.items()}
        result["per_file_ms"] = {case: {k: summary(v) for k, v in comps.items()} for case, comps in per_file.items()}
        result["files_per_message"] = {case: {"artifacts": ex[0]["artifacts"], "detonated": ex[0]["detonated"]}
                                       for case, ex in extras.items()}
        result["outcomes"] = {case: sorted({f"{e['verdict']}/{e['action']}" for e in ex}) for case, ex in extras.items()}
        result["whole_pipeline_ms"] = {c: summary([w[c] for w in wholes]) for c in ("unseen", "cache_hit")}
        result["backends"] = {name: {"accel": b.info().accel, "isolation": b.info().isolation}
                              for name, b in backends.items()}
        result["backend"] = " + ".join(backends)
    finally:
        for b in backends.values():
            try:
                b.close()
            except Exception as exc:
                log.warning("closing backend: %s", exc)
        shutil.rmtree(root, ignore_errors=True)
    result["notes"] = notes
    return result


def plot(result: dict[str, Any], path: Path) -> Path:
    """Left: host-side steps per message, cache hit vs unseen (stacked, ms).  Right: the pool's own
    overhead per detonated file (queueing, hand-over, verdict return) per backend, with the guest's
    execution time written above (it is two to four orders of magnitude larger)."""
    plt = pyplot()

    colors = dict(zip([k for k, _ in COMPONENTS], plt.get_cmap("tab10").colors))
    titles = dict(COMPONENTS)
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(12, 5), gridspec_kw={"width_ratios": [1.3, 1]})

    def stacked(ax, rows, keys, table):
        bottoms = [0.0] * len(rows)
        for k in keys:
            vals = [(result[table].get(c, {}).get(k, {}).get("median", 0.0) or 0.0) for c, _ in rows]
            ax.bar(range(len(rows)), vals, 0.5, bottom=bottoms, label=titles[k], color=colors[k])
            bottoms = [b + v for b, v in zip(bottoms, vals)]
        ax.set_xticks(range(len(rows)), [t for _, t in rows], fontsize=8)
        ax.set_ylim(0, max(bottoms + [1e-3]) * 1.6)
        ax.legend(fontsize=7, loc="upper left", ncol=2)
        return bottoms

    host = [k for k, _ in COMPONENTS if k not in GUEST_STEPS]
    rows = [("cache_hit", "cache-hit message"), ("unseen", "unseen message")]
    tops = stacked(a1, rows, host, "per_message_ms")
    for j, b in enumerate(tops):
        a1.text(j, b, f"{b:.1f} ms", ha="center", va="bottom", fontsize=8)
    a1.set_ylabel("ms per message (median)")
    a1.set_title("host-side pipeline per message (4 files: link + zip)", fontsize=9)

    grows = [(c, c.split("_", 1)[1] if "_" in c else "process") for c in ("unseen", "unseen_qemu")
             if c in result["per_file_ms"]]
    tops = stacked(a2, grows, ["queueing", "handover", "verdict_return"], "per_file_ms")
    for j, (c, _) in enumerate(grows):
        ex = result["per_file_ms"][c].get("execution", {}).get("median")
        if ex is not None:
            a2.text(j, tops[j], f"{tops[j]:.1f} ms\n+ execution {ex / 1000:.2f} s", ha="center", va="bottom",
                    fontsize=8)
    a2.set_ylabel("ms per detonated file (median)")
    a2.set_title("pool overhead per detonated file, by backend", fontsize=9)
    return save_figure(fig, path)


def print_table(result: dict[str, Any]) -> None:
    cases = list(result["per_message_ms"])
    print(f"\n{'component (ms per message)':<32}" + "".join(f"{c:>18}" for c in cases))
    for k, title in COMPONENTS:
        row = [result["per_message_ms"][c].get(k, {}).get("median") for c in cases]
        print(f"{title:<32}" + "".join(f"{v:>18.2f}" if v is not None else f"{'-':>18}" for v in row))
    w = result["whole_pipeline_ms"]
    print(f"whole Scanner.scan_message: unseen {w['unseen'].get('median')} ms, cache hit {w['cache_hit'].get('median')} ms")
    for n in result.get("notes", []):
        print("note:", n)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--qemu-reps", type=int, default=3)
    ap.add_argument("--image-dir", default=None)
    ap.add_argument("--no-qemu", action="store_true")
    ap.add_argument("--out", default=str(RESULTS / "components.json"))
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.ERROR)
    from bench.common import find_image_dir

    image_dir = None if args.no_qemu else find_image_dir(args.image_dir)
    result = bench(args.reps, args.qemu_reps, image_dir, with_qemu=not args.no_qemu)
    out = Path(args.out)
    write_json(out, result)
    plot(result, out.with_suffix(".png"))
    print_table(result)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
