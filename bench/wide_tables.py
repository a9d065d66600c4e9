"""The recommender's fit on tables far wider or taller than the published ones, side by side.

A table a user imports may have hundreds of score columns or thousands of models per dataset.
Two parts of the fit grew past what a machine holds there, and both now switch to another
method beyond a size; this measures each against the method it replaces, in one run:

- many score columns (5 datasets, 8 models): step 7's metric-only subset tried over every
  subset of at most four (``exhaustive``: 36 columns are 66,711 subsets, 300 would be 335
  million) against ``forward`` selection, which the fit as shipped uses beyond 24 columns
  (``MAX_EXHAUSTIVE_SUBSETS``); and whether both choose the same subset;
- many models (6 datasets, 2 score columns): weighted tau over every pair of a dataset's
  models at once, in batches of pairs (``pairwise``: memory grows with the square of a
  dataset's models once one dataset's pairs pass a batch) against sorting
  (``scipy.stats.weightedtau`` row by row: ``sorted``), and the fit as shipped, which pairs
  up to 2,048 models a dataset and sorts beyond (``PAIRWISE_MAX_MODELS``); the figures are
  equal.

Each cell: seconds for ``scoring.fit_recommender`` (best of ``--repeats``, no fit reused) and
its peak of memory allocated through Python (``tracemalloc``: numpy's arrays included). The
tables are generated, seeded: quality that persists across datasets, one score that tracks it,
the rest noise. The figures of one run compare with each other only.

    python bench/wide_tables.py [--repeats 2]

Prints a table; writes bench/results/wide_tables.json.
"""

from __future__ import annotations

import argparse
import functools
import sys
import time
import tracemalloc
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

if __package__ in (None, ""):  # run as a file: this file's folder would shadow `scoring`
    _here = Path(__file__).resolve().parent
    sys.path[:] = [str(_here.parent)] + [p for p in sys.path if Path(p or ".").resolve() != _here]

import scoring
from bench._common import machine, write_report
from scoring import recommend as R

RESULTS = Path(__file__).resolve().parent / "results"


def table(n_sets: int, n_models: int, n_noise: int, seed: int = 0) -> dict[str, Any]:
    """dataset -> record: outcome = persistent quality + dataset noise; ``signal`` tracks it,
    ``n_noise`` columns are noise."""
    rng = np.random.default_rng(seed)
    models = [f"m{j:05d}" for j in range(n_models)]
    skill = rng.normal(size=n_models)
    out = {}
    for d in range(n_sets):
        q = skill + 0.7 * rng.normal(size=n_models)
        scores = {"signal": dict(zip(models, q + rng.normal(size=n_models), strict=True))}
        for k in range(n_noise):
            scores[f"c{k:03d}"] = dict(zip(models, rng.normal(size=n_models), strict=True))
        out[f"d{d}"] = scoring.DatasetRecord(
            scores=scores, outcomes=dict(zip(models, 70 + 5 * q, strict=True))
        )
    return out


@contextmanager
def patched(**values: Any) -> Iterator[None]:
    before = {k: getattr(R, k) for k in values}
    for k, v in values.items():
        setattr(R, k, v)
    try:
        yield
    finally:
        for k, v in before.items():
            setattr(R, k, v)


def measure(fit: Callable[[], Any], repeats: int) -> tuple[float, float, Any]:
    """(best seconds, peak MiB, the last result) of ``fit`` with no fit reused."""
    best, peak, got = float("inf"), 0.0, None
    for _ in range(repeats):
        R._FITS.clear()
        tracemalloc.start()
        start = time.perf_counter()
        got = fit()
        best = min(best, time.perf_counter() - start)
        peak = max(peak, tracemalloc.get_traced_memory()[1] / 2**20)
        tracemalloc.stop()
    return best, peak, got


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    rows: list[dict[str, Any]] = []

    for columns in (20, 28, 36, 300):
        data = table(5, 8, columns - 1)
        cell: dict[str, Any] = {"shape": "columns", "size": columns}
        for how, limit in (("exhaustive", 10**12), ("forward", 0)):
            if how == "exhaustive" and R._n_subsets(columns) > 10**6:
                cell[how] = {"skipped": f"{R._n_subsets(columns):,} subsets"}
                continue
            with patched(MAX_EXHAUSTIVE_SUBSETS=limit):
                seconds, mib, fit = measure(
                    functools.partial(scoring.fit_recommender, data), args.repeats
                )
            chosen = sorted(m for m, w in fit.metric_weights.items() if w > 0)
            cell[how] = {"seconds": seconds, "peak_mib": mib, "subset": chosen}
        if "subset" in cell["exhaustive"]:
            cell["same_subset"] = cell["exhaustive"]["subset"] == cell["forward"]["subset"]
        rows.append(cell)

    for models in (256, 1024, 4096):
        data = table(6, models, 1)
        cell = {"shape": "models", "size": models}
        taus = {}
        for how, limit in (("pairwise", 10**9), ("sorted", 0)):
            with patched(PAIRWISE_MAX_MODELS=limit):  # one repeat: these take a while
                seconds, mib, got = measure(functools.partial(scoring.evaluate_lodo, data), 1)
            taus[how] = got.mean["recommended"]
            cell[how] = {"seconds": seconds, "peak_mib": mib}
        cell["shipped"] = "pairwise" if models <= R.PAIRWISE_MAX_MODELS else "sorted"
        cell["same_figures"] = all(
            abs(taus["pairwise"][f] - taus["sorted"][f]) < 1e-9 for f in taus["pairwise"]
        )
        rows.append(cell)

    print(f"\nthe recommender on wide and tall tables, {machine()}")
    print(f"{'shape':<8}{'size':>6}  {'method':<11}{'seconds':>9}{'peak MiB':>10}  note")
    for cell in rows:
        methods = (
            ("exhaustive", "forward") if cell["shape"] == "columns" else ("pairwise", "sorted")
        )
        for how in methods:
            got = cell[how]
            if "skipped" in got:
                print(f"{cell['shape']:<8}{cell['size']:>6}  {how:<11}{'-':>9}{'-':>10}  "
                      f"not run: {got['skipped']}")  # fmt: skip
                continue
            notes = []
            if how == "forward" and "same_subset" in cell:
                notes.append("same subset" if cell["same_subset"] else "another subset")
            if how == "sorted":
                notes.append("same figures" if cell["same_figures"] else "FIGURES DIFFER")
            exhaustive = R._n_subsets(cell["size"]) <= R.MAX_EXHAUSTIVE_SUBSETS
            if cell.get("shipped", "exhaustive" if exhaustive else "forward") == how:
                notes.append("shipped")
            note = ", ".join(notes)
            print(f"{cell['shape']:<8}{cell['size']:>6}  {how:<11}{got['seconds']:>9.2f}"
                  f"{got['peak_mib']:>10.1f}  {note}")  # fmt: skip
    write_report(RESULTS / "wide_tables.json", {"machine": machine(), "rows": rows})


if __name__ == "__main__":
    main()
