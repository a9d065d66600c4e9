"""How well the recommender ranks on the scopes the product ships, as the service sees them.

``bench/evaluation.py`` measures one published table on its own. The service learns from every
shipped reference table of a scope at once (``app.services.reference``): the image scope holds
the published image table and the project's own ground truth (``bench/groundtruth.py``), whose
outcomes were measured on 600 to 1,000 held-out samples per task and carry their standard errors
(``finetune_top1_se``). This imports the shipped tables into a new SQLite database exactly as
``transferbench serve`` does, reads each scope's datasets as the recommender does
(``app.services.recommender.records``), and reports ``scoring.evaluate_lodo`` on them:

- ``shipped``: each dataset counted by the reliability of its outcomes
  (``scoring.reliability``: the share of their spread that is not noise) times the
  information in the order of its models (``scoring.recommend.order_information``); a dataset
  whose outcomes are no more spread than their errors is neither learned from nor held out;
- ``exact``: the same with the standard errors dropped, every outcome taken as exact;
- ``alike``: every outcome exact and every dataset counted alike, whatever its number of
  models: the recommender before it weighed datasets (version 4 as first shipped).

For each, the mean weighted tau and top-1 regret (points of the outcome) of the full
recommender, the metric-only order and LogME, over the datasets of each shipped table and
over all of them, with their number. Rows are comparable only on the same datasets: the
others also hold out the datasets ``shipped`` leaves out, so the table gives them on those
common datasets too (``..._same``). Run from the repository root:

    .venv/bin/python bench/shipped_scope.py

Prints a table and writes ``bench/results/shipped_scope.json``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a file: this file's folder would shadow `scoring`
    _here = Path(__file__).resolve().parent
    sys.path[:] = [str(_here.parent)] + [p for p in sys.path if Path(p or ".").resolve() != _here]

import numpy as np
from sqlalchemy import select

import scoring
from app.db.models import DatasetRow, ReferenceTableRow
from app.db.session import Database
from app.services import recommender
from app.services.reference import prepare
from bench._common import machine, write_report
from scoring import recommend as rec
from scoring.recommend import METRIC_ONLY, RECOMMENDED

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "results" / "shipped_scope.json"
METHODS = (RECOMMENDED, METRIC_ONLY, "logme")
FIGS = ("weighted_tau", "top1_regret")


def scope_records(url: str) -> dict[str, tuple[dict[str, scoring.DatasetRecord], Any, dict]]:
    """Each shipped scope with outcomes: key -> (dataset name -> record, directions, dataset
    name -> the table it came from), as the recommender reads them."""
    db = Database(url)
    try:
        with db.session() as s:
            table_of = {
                str(ds): row.name
                for row in s.scalars(select(ReferenceTableRow))
                for ds in row.datasets
            }
            names = {d: n for d, n in s.execute(select(DatasetRow.id, DatasetRow.name))}
            out = {}
            for scope in sorted(recommender.scopes_with_outcomes(s), key=lambda c: c.key):
                recs = recommender.records(s, scope)
                named = {f"{table_of[d]}/{names[d]}": r for d, r in recs.datasets.items()}
                tables = {f"{table_of[d]}/{names[d]}": table_of[d] for d in recs.datasets}
                out[scope.key] = (named, dict(recs.directions), tables)
            return out
    finally:
        db.dispose()


def summary(ev: scoring.Evaluation, names: Sequence[str]) -> dict[str, dict[str, float]]:
    """Per method, the mean of each figure over ``names`` (those ``ev`` held out), and n."""
    out = {}
    for method in METHODS:
        row: dict[str, float] = {}
        for fig in FIGS:
            vals = np.array([ev.per_dataset[n][method][fig] for n in names if n in ev.per_dataset])
            vals = vals[np.isfinite(vals)]
            row[fig] = float(vals.mean()) if vals.size else float("nan")
            row["datasets"] = int(vals.size)
        out[method] = row
    return out


def measure(
    records: Mapping[str, scoring.DatasetRecord], directions: Mapping[str, bool], tables: dict
) -> dict[str, Any]:
    exact = {n: replace(r, outcome_se={}) for n, r in records.items()}
    shipped = scoring.evaluate_lodo(records, directions=directions)
    plain = scoring.evaluate_lodo(exact, directions=directions)
    informed = rec.order_information
    rec.order_information = lambda n: 1.0  # every dataset alike: the method before
    try:
        alike = scoring.evaluate_lodo(exact, directions=directions)
    finally:
        rec.order_information = informed
    groups = {t: [n for n in records if tables[n] == t] for t in sorted(set(tables.values()))}
    groups["all"] = list(records)
    out: dict[str, Any] = {
        "reliability": {n: scoring.reliability(r) for n, r in records.items() if r.outcomes},
        "groups": {},
    }
    for group, names in groups.items():
        kept = [n for n in names if n in shipped.per_dataset]
        out["groups"][group] = {
            "shipped": summary(shipped, kept),
            "exact": summary(plain, names),
            "exact_same": summary(plain, kept),
            "alike": summary(alike, names),
            "alike_same": summary(alike, kept),
        }
    return out


def print_scope(key: str, result: Mapping[str, Any]) -> None:
    print(f"\n{key}: mean weighted tau / top-1 regret (datasets), leave-one-dataset-out")
    head = "group".ljust(34) + "variant".ljust(14)
    print(head + "".join(f"{m:>22s}" for m in METHODS))
    for group, variants in result["groups"].items():
        for variant, rows in variants.items():
            cells = "".join(
                f"{r['weighted_tau']:>9.3f} / {r['top1_regret']:5.2f} ({r['datasets']:>2d})"
                for r in (rows[m] for m in METHODS)
            )
            print(group[:33].ljust(34) + variant.ljust(14) + cells)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{Path(tmp) / 'shipped.db'}"
        prepare(url, reference_tables=True)
        scopes = scope_records(url)
    report: dict[str, Any] = {"machine": machine(), "scopes": {}}
    for key, (records, directions, tables) in scopes.items():
        if sum(len(r.outcomes) >= scoring.recommend.MIN_OUTCOMES for r in records.values()) < 2:
            print(f"\n{key}: fewer than 2 datasets with outcomes; nothing to hold out")
            continue
        report["scopes"][key] = result = measure(records, directions, tables)
        print_scope(key, result)
    write_report(args.out, report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
