"""What a first start costs: the schema and the shipped reference tables on a new database.

``transferbench serve``, ``transferbench migrate`` and the first local command on a new
``TB_DATA_DIR`` run ``app.services.reference.prepare`` before anything else: the migrations,
then the shipped tables imported with their leaderboards, whose recommended boards fit the
recommender of their scope. This measures that step on a new SQLite file (the embedded
default), each run in a process of its own, with the in-memory cache of fits
(``scoring.recommend.MAX_CACHED_FITS``) as shipped and turned off (0), alternating, so the
gain is a ratio measured side by side in one run. Also counted: how many fits were computed.
Then, on the database that start made, the two computations a scope's new data costs (what a
ranking's recommended order waits for when its scores change the fit): ``fit`` and
``evaluate_lodo`` (the expected quality a recommendation states) of the image scope, which
holds the published image table and the zoo's ground truth, best of ``--repeats``.

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

# the scope's fit and evaluation, timed on the database a first start made
SCOPE = """
import json, sys, time
import scoring.recommend as rec
from app.db.session import Database
from app.services import recommender
db = Database("sqlite:///" + sys.argv[1])
with db.session() as s:
    scope = recommender.Scope("image", "classification", recommender.DEFAULT_MEASURE, None)
    recs = recommender.records(s, scope)
db.dispose()
data, dirs = recs.datasets, rec._check_datasets(recs.datasets, recs.directions)
out = {"datasets": len(data), "metrics": len(dirs),
       "models": len({m for r in data.values() for per in r.scores.values() for m in per})}
for name, run in (("fit", lambda: rec._fit(data, dirs, "")),
                  ("evaluate_lodo", lambda: rec.evaluate_lodo(data, directions=dirs))):
    times = []
    for _ in range(int(sys.argv[2])):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    out[name] = min(times)
print(json.dumps(out))
"""


def child(code: str, *args: str) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, "-c", code, *args], cwd=ROOT, capture_output=True, text=True, check=True
    )
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    from scoring.recommend import MAX_CACHED_FITS

    configs = {f"fits cached ({MAX_CACHED_FITS})": MAX_CACHED_FITS, "no fit cache (0)": 0}
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in configs}
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.repeats):
            for name, cache in configs.items():
                runs[name].append(child(CHILD, str(Path(tmp) / f"{i}-{cache}.db"), str(cache)))
        scope = child(SCOPE, str(Path(tmp) / f"0-{MAX_CACHED_FITS}.db"), str(args.repeats))
    base = min(r["seconds"] for r in runs["no fit cache (0)"])
    rows = {}
    print(f"{'configuration':<22} {'best s':>8} {'median s':>9} {'fits':>5} {'speed-up':>9}")
    for name, got in runs.items():
        secs = sorted(r["seconds"] for r in got)
        best, median = secs[0], secs[len(secs) // 2]
        rows[name] = {"best_s": best, "median_s": median, "fits": got[0]["fits"],
                      "speedup_vs_no_cache": base / best}  # fmt: skip
        print(f"{name:<22} {best:8.2f} {median:9.2f} {got[0]['fits']:5d} {base / best:8.2f}x")
    print(
        f"\nimage scope ({scope['datasets']} datasets, {scope['models']} models, "
        f"{scope['metrics']} metrics): fit {scope['fit']:.2f} s, "
        f"evaluate_lodo {scope['evaluate_lodo']:.2f} s (best of {args.repeats})"
    )
    report = {"machine": machine(), "repeats": args.repeats, "rows": rows, "runs": runs,
              "image_scope": scope}  # fmt: skip
    write_report(OUT, report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
