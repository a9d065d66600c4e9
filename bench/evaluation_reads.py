"""What a read of the evaluation costs: ``GET /v1/evaluation`` and the dashboard's metrics page.

Both measure the recommender leave-one-dataset-out on a scope's datasets with outcomes
(``scoring.evaluate_lodo``). Each evaluation is kept in memory by the fingerprint of what it
reads (``app.services.recommender.MAX_CACHED_EVALUATIONS``), so a repeated read measures
again only when a value it reads changed. This times, on a new SQLite database holding the
shipped reference tables (the embedded default after its first start), the first read and
then ``--reads`` more of each, in a process of its own per configuration: kept evaluations
as shipped and turned off (0), alternating, ``--repeats`` times, so the gain is a ratio
measured side by side in one run.

Run from the repository root:

    .venv/bin/python bench/evaluation_reads.py [--reads 10] [--repeats 2]

Prints a table and writes ``bench/results/evaluation_reads.json``.
"""

from __future__ import annotations

import argparse
import json
import statistics
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
OUT = ROOT / "bench" / "results" / "evaluation_reads.json"

# one configuration, in a fresh interpreter: nothing kept by an earlier one
CHILD = """
import json, sys, time
from pathlib import Path
from fastapi.testclient import TestClient
from app.db.session import Database
from app.services import recommender
from app.services.reference import prepare
from app.web.main import create_app
from workers.jobs.embedded import LocalQueue
from workers.settings import Settings

recommender.MAX_CACHED_EVALUATIONS = int(sys.argv[2])
reads = int(sys.argv[3])
settings = Settings(data_dir=Path(sys.argv[1]), scheduler_tick_s=3600)
prepare(settings.db_url, reference_tables=True)
db = Database(settings.db_url)
app = create_app(settings, queue=LocalQueue(db, settings), db=db, auth_required=False)
recommender._EVALUATIONS.clear()  # the start measured the fits' quality: read from cold
out = {}
with TestClient(app) as client:
    for name, path in (("GET /v1/evaluation", "/v1/evaluation"),
                       ("GET /dashboard/metrics", "/dashboard/metrics")):
        times = []
        for _ in range(1 + reads):
            start = time.perf_counter()
            r = client.get(path)
            times.append(time.perf_counter() - start)
            assert r.status_code == 200, r.text[:500]
        out[name] = {"first_s": times[0], "repeat_s": times[1:]}
    body = client.get("/v1/evaluation").json()
out["datasets"] = body["datasets"]
out["recommended_weighted_tau"] = body["mean"]["recommended"]["weighted_tau"]
db.dispose()
print(json.dumps(out))
"""


def child(*args: str) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, "-c", CHILD, *args], cwd=ROOT, capture_output=True, text=True
    )
    if out.returncode != 0:
        raise SystemExit(out.stderr[-3000:])
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reads", type=int, default=10, help="reads after the first")
    parser.add_argument("--repeats", type=int, default=2, help="runs of each configuration")
    args = parser.parse_args()
    from app.services.recommender import MAX_CACHED_EVALUATIONS

    configs = {
        f"kept ({MAX_CACHED_EVALUATIONS})": MAX_CACHED_EVALUATIONS,
        "not kept (0)": 0,
    }
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in configs}
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.repeats):
            for name, kept in configs.items():
                folder = Path(tmp) / f"{i}-{kept}"
                folder.mkdir()
                runs[name].append(child(str(folder), str(kept), str(args.reads)))
    answers = {run["recommended_weighted_tau"] for got in runs.values() for run in got}
    assert len(answers) == 1, f"the configurations disagree: {answers}"
    reads = ("GET /v1/evaluation", "GET /dashboard/metrics")
    base = {
        read: statistics.median(s for r in runs["not kept (0)"] for s in r[read]["repeat_s"])
        for read in reads
    }
    rows: dict[str, dict[str, Any]] = {}
    print(
        f"{'configuration':<16} {'read':<24} {'first ms':>9} {'repeat ms (median)':>19} "
        f"{'speed-up':>9}"
    )
    for name, got in runs.items():
        for read in reads:
            first = statistics.median(r[read]["first_s"] for r in got)
            repeat = statistics.median(s for r in got for s in r[read]["repeat_s"])
            rows[f"{name} | {read}"] = {
                "first_ms": first * 1000,
                "repeat_median_ms": repeat * 1000,
                "speedup_vs_not_kept": base[read] / repeat,
            }
            print(
                f"{name:<16} {read:<24} {first * 1000:9.0f} {repeat * 1000:19.0f} "
                f"{base[read] / repeat:8.1f}x"
            )
    sample = runs[next(iter(configs))][0]
    print(
        f"\nshipped image scope: {sample['datasets']} datasets with outcomes, recommended "
        f"weighted tau {sample['recommended_weighted_tau']:.3f} in every configuration"
    )
    report = {"machine": machine(), "reads": args.reads, "repeats": args.repeats,
              "rows": rows, "runs": runs}  # fmt: skip
    write_report(OUT, report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
