"""What a first start costs: the schema and the shipped reference tables on a new database.

``transferbench serve``, ``transferbench migrate`` and the first local command on a new
``TB_DATA_DIR`` run ``app.services.reference.prepare`` before anything else: the migrations,
then the shipped tables imported with their leaderboards, whose recommended boards fit the
recommender of their scope. This measures that step on a new SQLite file (the embedded
default), each run in a process of its own, with the in-memory cache of fits
(``scoring.recommend.MAX_CACHED_FITS``) as shipped and turned off (0), alternating, so the
gain is a ratio measured side by side in one run. Also counted: how many fits were computed.

Run from the repository root:

    .venv/bin/python bench/first_start.py [--repeats 3]

Prints a table and writes ``bench/results/first_start.json``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a file: this file's folder would shadow `scoring`
    _here = Path(__file__).resolve().parent
    sys.path[:] = [str(_here.parent)] + [p for p in sys.path if Path(p or ".").resolve() != _here]

from bench._common import machine, write_report

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "results" / "first_start.json"

# one measurement, in a fresh interpreter: nothing imported or cached by an earlier one
CHILD = """
import json, sys, time
import scoring.recommend as rec
rec.MAX_CACHED_FITS = int(sys.argv[2])
made = []
inner = rec._fit
def counted(*args, **kwargs):
    made.append(1)
    return inner(*args, **kwargs)
rec._fit = counted
from app.services.reference import prepare
start = time.perf_counter()
prepare("sqlite:///" + sys.argv[1], reference_tables=True)
print(json.dumps({"seconds": time.perf_counter() - start, "fits": len(made)}))
"""


def once(cache: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "transferbench.db"
        out = subprocess.run(
            [sys.executable, "-c", CHILD, str(db), str(cache)],
            cwd=ROOT, capture_output=True, text=True, check=True,
        )  # fmt: skip
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    from scoring.recommend import MAX_CACHED_FITS

    configs = {f"fits cached ({MAX_CACHED_FITS})": MAX_CACHED_FITS, "no fit cache (0)": 0}
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in configs}
    for _ in range(args.repeats):
        for name, cache in configs.items():
            runs[name].append(once(cache))
    base = min(r["seconds"] for r in runs["no fit cache (0)"])
    rows = {}
    print(f"{'configuration':<22} {'best s':>8} {'median s':>9} {'fits':>5} {'speed-up':>9}")
    for name, got in runs.items():
        secs = sorted(r["seconds"] for r in got)
        best, median = secs[0], secs[len(secs) // 2]
        rows[name] = {"best_s": best, "median_s": median, "fits": got[0]["fits"],
                      "speedup_vs_no_cache": base / best}  # fmt: skip
        print(f"{name:<22} {best:8.2f} {median:9.2f} {got[0]['fits']:5d} {base / best:8.2f}x")
    report = {"machine": machine(), "repeats": args.repeats, "rows": rows, "runs": runs}
    write_report(OUT, report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
