"""False-positive survey of the script analyzer on benign script files of this machine.

Runs the real triage (:class:`mailvm.triage.Triage`, no detonation) over the JavaScript files
that Debian and npm packages install (``/usr/share``, ``/usr/lib/node_modules``) and the Windows
scripts they ship (.vbs, .vbe, .wsf, .jse, .ps1 under ``/usr/share`` and ``/usr/lib``), plus the
script files of an outside benign corpus given with ``--corpus``, and counts how many are judged
suspicious or worse.  Usage::

    python -m bench.script_fp_survey [--corpus DIR] [--max-bytes N] [--show N]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from collections import Counter
from pathlib import Path

from mailvm.config import TriageConfig
from mailvm.extract.spool import detect_type
from mailvm.triage import Triage
from mailvm.verdict import Artifact, score_findings

ROOTS = ("/usr/share", "/usr/lib/node_modules", "/usr/lib")
SUFFIXES = (".js", ".vbs", ".vbe", ".wsf", ".jse", ".ps1")


def files(roots: list[str], max_bytes: int) -> list[Path]:
    seen: set[str] = set()
    out: list[Path] = []
    for root in roots:
        for dirpath, _dirs, names in os.walk(root):
            for n in names:
                if not n.lower().endswith(SUFFIXES):
                    continue
                p = os.path.join(dirpath, n)
                try:
                    if not os.path.isfile(p) or os.path.islink(p) or os.path.getsize(p) > max_bytes:
                        continue
                    real = os.path.realpath(p)
                except OSError:
                    continue
                if real not in seen:
                    seen.add(real)
                    out.append(Path(p))
    return sorted(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--corpus", action="append", default=[], help="also survey the script files under DIR")
    ap.add_argument("--no-system", action="store_true", help="only the --corpus folders, not this machine's files")
    ap.add_argument("--max-bytes", type=int, default=2 * 1024 * 1024)
    ap.add_argument("--show", type=int, default=30, help="list at most N flagged files")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        triage = Triage(TriageConfig(yara_rules_dir=str(Path(tmp) / "no-yara")))
        paths = files(([] if args.no_system else list(ROOTS)) + args.corpus, args.max_bytes)
        verdicts: Counter[str] = Counter()
        flagged: list[str] = []
        for p in paths:
            mime, desc = detect_type(p)
            art = Artifact("0" * 64, p.name, p.stat().st_size, mime, str(p), ("survey",), desc)
            res = triage.analyze(art)
            verdict, score = score_findings(res.findings)
            verdicts[(p.suffix.lower(), verdict)] += 1
            if verdict != "clean":
                top = sorted(res.findings, key=lambda f: -f.severity)[:4]
                flagged.append(f"{p} -> {verdict} {score} ({', '.join(f'{f.id}:{f.severity}' for f in top)})")
    print(f"{len(paths)} files")
    for (suffix, verdict), n in sorted(verdicts.items()):
        print(f"  {suffix:5} {verdict:10} {n}")
    print(f"flagged (suspicious or worse): {len(flagged)}")
    for line in flagged[: args.show]:
        print("  " + line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
