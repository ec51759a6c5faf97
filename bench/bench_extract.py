"""Extraction + triage time per message, and scanned-table lookups per second.

Two message shapes (as in the foundation issue): 50 KB with one PDF-like
attachment, and 5 MB with three attachments (a zip with an executable, a PDF,
an Office document from the corpus when present).  Prints median and p95,
writes ``bench/results/extract.json`` and a PNG box plot.

    .venv/bin/python -m bench.bench_extract [--runs N]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import random
import shutil
import statistics
import subprocess
import tempfile
import time
import zipfile
from email.message import EmailMessage
from pathlib import Path

from tqdm import tqdm

from bench.common import pyplot, save_figure

RESULTS = Path(__file__).resolve().parent / "results"
#: the external test corpus (as in tests/testdata.py); without it a generated PDF stands in for the .docx
CORPUS = Path(os.environ.get("MAILVM_CORPUS") or Path(__file__).resolve().parents[1].parent / "shared" / "corpus")


def _pdf(size: int, rng: random.Random) -> bytes:
    head = b"%PDF-1.4\n1 0 obj << /Type /Catalog /Pages 2 0 R >> endobj\n"
    filler = bytes(rng.getrandbits(8) for _ in range(max(0, size - len(head) - 20)))
    return head + b"stream\n" + filler + b"\nendstream\n%%EOF\n"


def _message(attachments: list[tuple[str, bytes]]) -> bytes:
    m = EmailMessage()
    m["From"] = "a@bench.test"
    m["To"] = "b@example.com"
    m["Subject"] = "benchmark"
    m.set_content("Hello,\nthe documents you asked for.\n" * 20)
    for name, data in attachments:
        m.add_attachment(data, maintype="application", subtype="octet-stream", filename=name)
    return m.as_bytes()


def messages() -> dict[str, bytes]:
    rng = random.Random(42)
    small = _message([("report.pdf", _pdf(36 * 1024, rng))])  # ~50 KB once base64-encoded
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        z.write("/bin/true", "setup.exe")
        z.writestr("data.bin", bytes(rng.getrandbits(8) for _ in range(1024 * 1024)))
    doc = CORPUS / "oletools-test-data" / "msodde" / "harmless-clean.docx"
    office = doc.read_bytes() if doc.exists() else _pdf(200 * 1024, rng)
    big = _message([("bundle.zip", buf.getvalue()), ("manual.pdf", _pdf(2 * 1024 * 1024, rng)), ("letter.docx", office)])
    return {"50KB_1_attachment": small, "5MB_3_attachments": big}


def pct(values: list[float], p: float) -> float:
    values = sorted(values)
    k = max(0, min(len(values) - 1, round(p / 100 * (len(values) - 1))))
    return values[k]


def main() -> None:
    from mailvm.config import Config, ScanTableConfig
    from mailvm.extract import extract_message
    from mailvm.extract.spool import Spool
    from mailvm.scantable import ScanTable
    from mailvm.triage import Triage
    from mailvm.verdict import Verdict

    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=30)
    args = ap.parse_args()
    cfg = Config()
    triage = Triage(cfg.triage)
    results: dict = {"machine": machine(), "runs": args.runs, "messages": {}}
    tmp = Path(tempfile.mkdtemp(prefix="mailvm-bench-"))
    try:
        for name, raw in messages().items():
            ext_t, tri_t = [], []
            for i in tqdm(range(args.runs), desc=f"{name} ({len(raw) // 1024} KB)", unit="msg"):
                spool_dir = tmp / f"{name}-{i}"
                t0 = time.perf_counter()
                spool = Spool(spool_dir, cfg.extract)
                res = extract_message(raw, spool, cfg.extract)
                t1 = time.perf_counter()
                for art in spool.artifacts or res.artifacts:
                    triage.analyze(art)
                t2 = time.perf_counter()
                ext_t.append((t1 - t0) * 1000)
                tri_t.append((t2 - t1) * 1000)
                shutil.rmtree(spool_dir, ignore_errors=True)
            total = [a + b for a, b in zip(ext_t, tri_t)]
            results["messages"][name] = {
                "size_bytes": len(raw),
                "artifacts": len(spool.artifacts),
                "extract_ms": {"median": statistics.median(ext_t), "p95": pct(ext_t, 95)},
                "triage_ms": {"median": statistics.median(tri_t), "p95": pct(tri_t, 95)},
                "total_ms": {"median": statistics.median(total), "p95": pct(total, 95)},
                "samples_total_ms": total,
            }
        table = ScanTable(ScanTableConfig(path=str(tmp / "table")))
        keys = [os.urandom(32).hex() for _ in range(1000)]
        for k in keys:
            if table.claim(k, "bench").won:
                table.publish(k, Verdict())
        n = 20000
        t0 = time.perf_counter()
        for i in tqdm(range(n), desc="table lookups", unit="op"):
            table.get(keys[i % len(keys)])
        hit_rate = n / (time.perf_counter() - t0)
        table.close()
        results["scantable_lookups_per_s"] = hit_rate
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "extract.json").write_text(json.dumps(results, indent=2))
    for name, r in results["messages"].items():
        print(f"{name:<20} extract {r['extract_ms']['median']:7.1f} ms (p95 {r['extract_ms']['p95']:.1f})  "
              f"triage {r['triage_ms']['median']:7.1f} ms (p95 {r['triage_ms']['p95']:.1f})  "
              f"total {r['total_ms']['median']:7.1f} ms (p95 {r['total_ms']['p95']:.1f})")
    print(f"scanned-table lookups: {results['scantable_lookups_per_s']:.0f}/s (one process, hits)")
    plot(results)


def plot(results: dict) -> None:
    plt = pyplot()

    names = list(results["messages"])
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.boxplot([results["messages"][n]["samples_total_ms"] for n in names], tick_labels=names)
    ax.set_ylabel("extraction + triage per message (ms)")
    ax.set_title(f"mailvm extraction + triage ({results['machine']['cores']} cores)")
    save_figure(fig, RESULTS / "extract.png")


def machine() -> dict:
    def rev() -> str:
        try:
            return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                  cwd=Path(__file__).parent).stdout.strip()
        except OSError:
            return ""

    mem = 0
    try:
        for line in open("/proc/meminfo"):
            if line.startswith("MemTotal:"):
                mem = int(line.split()[1]) * 1024
    except OSError:
        pass
    return {"cores": os.cpu_count(), "memory_bytes": mem, "python": platform.python_version(),
            "kernel": platform.release(), "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "git_rev": rev()}


if __name__ == "__main__":
    main()
