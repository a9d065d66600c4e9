"""What a ranking costs through the embedded service, end to end, against a baseline revision.

Starts ``transferbench serve`` in the embedded mode (SQLite, the worker in the process,
``TB_NUM_THREADS=1``, the shipped reference tables imported) on a new ``TB_DATA_DIR``, waits
for ``/readyz``, then uploads ``--rankings`` small Fashion-MNIST datasets one after another
(``--per-class`` images of each of 4 classes, a different seed each) and ranks each on the whole
image zoo, timing each from the POST to the ranking's ``done``. Afterwards it counts the
recommender fits the database recorded. The same is run for the code of ``--baseline`` (a
git revision, checked out into a temporary worktree) and for this checkout, alternating
``--repeats`` times, so the figures are a ratio measured side by side in one run.

Run from the repository root:

    .venv/bin/python bench/embedded_ranking.py --baseline ac85d53 [--repeats 2]

Prints a table and writes ``bench/results/embedded_ranking.json``.
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a file: this file's folder would shadow `scoring`
    _here = Path(__file__).resolve().parent
    sys.path[:] = [str(_here.parent)] + [p for p in sys.path if Path(p or ".").resolve() != _here]

import httpx

from bench._common import machine, write_report
from tests.conftest import fashion_zip
from tests.faults import free_port

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "results" / "embedded_ranking.json"


def run(code: Path, work: Path, rankings: int, per_class: int) -> dict[str, Any]:
    """One service of the code at ``code`` on a new data folder under ``work``."""
    data = Path(tempfile.mkdtemp(dir=work))
    env = {k: v for k, v in os.environ.items() if k not in ("TB_BROKER_URL", "TB_DATABASE_URL")}
    env |= {"TB_DATA_DIR": str(data), "TB_AUTH": "off", "HF_HUB_OFFLINE": "1",
            "TB_NUM_THREADS": "1", "TB_SCHEDULER_TICK_S": "3600", "PYTHONPATH": str(code)}  # fmt: skip
    port = free_port()
    start = time.perf_counter()
    with (data / "serve.log").open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "workers.cli", "serve", "--port", str(port)],
            cwd=code, env=env, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        while True:
            if proc.poll() is not None:
                raise SystemExit(f"serve exited: {(data / 'serve.log').read_text()[-2000:]}")
            try:
                if httpx.get(f"{base}/readyz", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        ready = time.perf_counter() - start
        times = []
        with httpx.Client(base_url=base, timeout=60) as client:
            for i in range(rankings):
                body = fashion_zip(per_class=per_class, seed=i)
                r = client.post("/v1/datasets", files={"file": (f"d{i}.zip", body)},
                                data={"name": f"bench-{i}"})  # fmt: skip
                r.raise_for_status()
                t = time.perf_counter()
                r = client.post("/v1/rankings", json={"dataset_id": r.json()["id"]})
                r.raise_for_status()
                job = r.json()["id"]
                while (status := client.get(f"/v1/rankings/{job}").json()["status"]) not in (
                    "done",
                    "failed",
                ):
                    time.sleep(0.1)
                if status != "done":
                    raise SystemExit(f"ranking {job} {status}")
                times.append(time.perf_counter() - t)
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    with sqlite3.connect(data / "transferbench.db") as con:
        fits = int(con.execute("SELECT count(*) FROM recommender_fits").fetchone()[0])
    return {"ready_s": ready, "ranking_s": times, "fits_recorded": fits}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--baseline", required=True, help="a git revision to compare against")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--rankings", type=int, default=2)
    parser.add_argument("--per-class", type=int, default=10)
    args = parser.parse_args()
    rev = subprocess.run(["git", "rev-parse", "--short", args.baseline], cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                          capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        tree = Path(tmp) / "baseline"
        subprocess.run(["git", "worktree", "add", "-q", "--detach", str(tree), rev], cwd=ROOT,
                       check=True)  # fmt: skip
        try:
            codes = {f"baseline {rev}": tree, f"this checkout ({head})": ROOT}
            runs: dict[str, list[dict[str, Any]]] = {name: [] for name in codes}
            for _ in range(args.repeats):
                for name, code in codes.items():
                    runs[name].append(run(code, Path(tmp), args.rankings, args.per_class))
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=ROOT,
                           check=False)  # fmt: skip
    print(f"{'code':<26} {'ready s':>8} " + " ".join(
        f"{'ranking ' + str(i + 1) + ' s':>12}" for i in range(args.rankings)
    ) + f" {'fits':>5}")  # fmt: skip
    rows = {}
    for name, got in runs.items():
        best = [min(r["ranking_s"][i] for r in got) for i in range(args.rankings)]
        ready = min(r["ready_s"] for r in got)
        rows[name] = {"ready_s": ready, "ranking_s": best, "fits_recorded": got[0]["fits_recorded"]}
        print(f"{name:<26} {ready:8.1f} " + " ".join(f"{b:12.1f}" for b in best)
              + f" {got[0]['fits_recorded']:5d}")  # fmt: skip
    report = {
        "machine": machine(),
        "baseline": rev,
        "head": head,
        "setup": {
            "rankings": args.rankings,
            "per_class": args.per_class,
            "classes": 4,
            "TB_NUM_THREADS": 1,
            "models": "the image zoo",
        },  # fmt: skip
        "best_of": args.repeats,
        "rows": rows,
        "runs": runs,
    }
    write_report(OUT, report, note="best of each column over the repeats")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
