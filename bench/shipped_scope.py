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
  models: the recommender before it weighed datasets (version 4 as first shipped);
- ``per_group``: as ``shipped``, with the history's spreads (step 2 of ``scoring.recommend``:
  the within-model variance s2 and the between-model variance tau2 of its empirical-Bayes
  shrink) estimated per group of models compared on some dataset (the components of the
  dataset-model graph: each shipped table's models) rather than over every model at once.
  Measured and not shipped (docs/recommender.md);
- ``group_choice``: as ``shipped``, with the combiner (step 5: the ridge's penalty or the
  blend's history share, here with the metric-only order, share 0, among the candidates)
  chosen by the inner cross-validation scored only on the training datasets whose models
  share a group with the held-out dataset's candidates (all of them where fewer than 3 do):
  the history's share per family of models. Measured and not shipped;
- ``within_family``: s2 per group of models (each family's own swing), tau2 pooled over every
  model from those s2. Measured and not shipped;
- ``family_shrunk``: s2 per group, and each group's tau2 its own (from its m models, m - 1
  degrees of freedom) averaged with the pooled one counted as ``FAMILY_PRIOR`` (3) models'
  worth, so a spread estimated from three or four models moves only half way from the pooled
  one. Measured and not shipped.

For each, the mean weighted tau and top-1 regret (points of the outcome) of the full
recommender, the metric-only order and LogME, over the datasets of each shipped table and
over all of them, with their number. Rows are comparable only on the same datasets: the
others also hold out the datasets ``shipped`` leaves out, so the table gives them on those
common datasets too (``..._same``). Run from the repository root:

    .venv/bin/python bench/shipped_scope.py

Prints a table and writes ``bench/results/shipped_scope.json``. ``--subsamples N`` adds N
random copies of each scope, each table without 1 to 3 of its models and 0 to 2 of its
datasets (seeded), and the mean over them of ``shipped`` and the four variants
on the datasets of each table
held out; ``--subsamples-datasets N`` the same with every model kept (only datasets dropped);
``--seed S`` draws other copies.
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
from app.db.models import DatasetRow, ModelRow, ReferenceTableRow
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
    name -> the table it came from), as the recommender reads them, each model named by its
    name (not its id, drawn anew by every import) so that ties and random copies repeat."""
    db = Database(url)
    try:
        with db.session() as s:
            table_of = {
                str(ds): row.name
                for row in s.scalars(select(ReferenceTableRow))
                for ds in row.datasets
            }
            names = {d: n for d, n in s.execute(select(DatasetRow.id, DatasetRow.name))}
            model_names = {str(m): n for m, n in s.execute(select(ModelRow.id, ModelRow.name))}
            out = {}
            for scope in sorted(recommender.scopes_with_outcomes(s), key=lambda c: c.key):
                recs = recommender.records(s, scope)
                named = {
                    f"{table_of[d]}/{names[d]}": _renamed(r, model_names)
                    for d, r in recs.datasets.items()
                }
                tables = {f"{table_of[d]}/{names[d]}": table_of[d] for d in recs.datasets}
                out[scope.key] = (named, dict(recs.directions), tables)
            return out
    finally:
        db.dispose()


def _renamed(r: scoring.DatasetRecord, names: Mapping[str, str]) -> scoring.DatasetRecord:
    """``r`` with every model id replaced by its name."""
    return replace(
        r,
        scores={k: {names[m]: v for m, v in per.items()} for k, per in r.scores.items()},
        outcomes={names[m]: v for m, v in r.outcomes.items()},
        outcome_se={names[m]: v for m, v in r.outcome_se.items()},
    )


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


def _groups(has: np.ndarray) -> np.ndarray:
    """(M,) a label per model: two models share one when some dataset of ``has`` (D, M) has
    outcomes for both, or through a chain of such datasets."""
    parent = list(range(has.shape[1]))

    def root(j: int) -> int:
        while parent[j] != j:
            parent[j] = parent[parent[j]]
            j = parent[j]
        return j

    for row in has:
        seen = np.flatnonzero(row)
        for j in seen[1:]:
            a, b = root(int(seen[0])), root(int(j))
            if a != b:
                parent[max(a, b)] = min(a, b)
    return np.array([root(j) for j in range(len(parent))])


def _per_group_variances(t: Any, pool: np.ndarray) -> tuple[Any, Any, Any, Any]:
    """``scoring.recommend._history_variances`` with s2 and tau2 estimated per ``_groups``
    group of models: (M,) arrays where the shipped method has one number each."""
    has = t.has & (pool & t.labelled)[:, None]
    q = t.target
    n = has.sum(axis=0).astype(np.float64)
    mean = np.divide((q * has).sum(axis=0), n, out=np.zeros(q.shape[1]), where=n > 0)
    ss = (np.where(has, q - mean[None, :], 0.0) ** 2).sum(axis=0)
    group = _groups(has)
    pooled = np.zeros(q.shape[1])
    tau2 = np.full(q.shape[1], rec.MIN_HISTORY_VARIANCE)
    seen = n > 0
    for g in np.unique(group[seen]):
        members = seen & (group == g)
        s2 = float(ss[members].sum()) / max(float(np.maximum(n[members] - 1, 0).sum()), 1.0)
        pooled[members] = s2
        if members.sum() > 1:
            spread = float(np.var(mean[members]) - (s2 / n[members]).mean())
            tau2[members] = max(spread, rec.MIN_HISTORY_VARIANCE)
    return mean, n, pooled, tau2


#: the shipped step 2 (every model pooled), whatever a variant puts in its place meanwhile
_POOLED = rec._history_variances

#: ``family_shrunk``: how many models' worth of evidence the pooled between-model spread
#: counts for against a family's own (a family of m models brings m - 1)
FAMILY_PRIOR = 3.0


def _within_family_variances(t: Any, pool: np.ndarray) -> tuple[Any, Any, Any, Any]:
    """``within_family``: s2 per ``_groups`` group (each family's own swing from dataset to
    dataset), tau2 over every model at once from those s2 (the between-model spread pooled)."""
    mean, n, s2, _ = _per_group_variances(t, pool)
    seen = n > 0
    tau2 = rec.MIN_HISTORY_VARIANCE
    if seen.sum() > 1:
        se2 = s2 / np.maximum(n, 1)
        tau2 = max(float(np.var(mean[seen]) - se2[seen].mean()), rec.MIN_HISTORY_VARIANCE)
    return mean, n, s2, np.full(n.shape, tau2)


def _family_shrunk_variances(t: Any, pool: np.ndarray) -> tuple[Any, Any, Any, Any]:
    """``family_shrunk``: s2 per group; each group's tau2 its own estimate (m - 1 degrees of
    freedom from its m models) averaged with the shipped pooled one counted as
    ``FAMILY_PRIOR`` models' worth: a family of three or four models moves it half way."""
    mean, n, s2, own = _per_group_variances(t, pool)
    pooled = _POOLED(t, pool)[3]
    group = _groups(t.has & (pool & t.labelled)[:, None])
    tau2 = np.full(n.shape, pooled)
    for g in np.unique(group[n > 0]):
        members = (n > 0) & (group == g)
        df = float(members.sum() - 1)
        tau2[members] = (df * own[members] + FAMILY_PRIOR * pooled) / (df + FAMILY_PRIOR)
    return mean, n, s2, tau2


def _with_variances(
    variances: Any, records: Mapping[str, scoring.DatasetRecord], directions: Mapping[str, bool]
) -> scoring.Evaluation:
    shipped = rec._history_variances
    rec._history_variances = variances
    try:
        return scoring.evaluate_lodo(records, directions=directions)
    finally:
        rec._history_variances = shipped


def per_group(
    records: Mapping[str, scoring.DatasetRecord], directions: Mapping[str, bool]
) -> scoring.Evaluation:
    """``evaluate_lodo`` with the history's spreads estimated per group of models."""
    return _with_variances(_per_group_variances, records, directions)


def within_family(
    records: Mapping[str, scoring.DatasetRecord], directions: Mapping[str, bool]
) -> scoring.Evaluation:
    """``evaluate_lodo`` with s2 per group of models and tau2 pooled over all of them."""
    return _with_variances(_within_family_variances, records, directions)


def family_shrunk(
    records: Mapping[str, scoring.DatasetRecord], directions: Mapping[str, bool]
) -> scoring.Evaluation:
    """``evaluate_lodo`` with s2 per group and tau2 per group shrunk towards the pooled one."""
    return _with_variances(_family_shrunk_variances, records, directions)


def _choose_in_group(t: Any, train: np.ndarray, drop: np.ndarray) -> tuple[str, float]:
    """``scoring.recommend._choose`` with the metric-only order (blend share 0) among the
    candidates and each candidate scored on the training datasets of the held-out dataset's
    group only (``group_choice``). The held-out dataset is known by the models it scored (its
    candidates, as a user names them); its outcomes are not read."""
    cands = [*rec._candidates(), (rec.BLEND, 0.0)]
    idx, taus = rec._inner_taus(t, train, drop, cands)
    if not idx.size:
        return cands[0]
    target = np.flatnonzero(drop & ~train)
    candidates = t.scored[target].any(axis=(0, 2))
    group = _groups(t.has & (train & t.labelled)[:, None])
    mine = set(group[candidates].tolist())
    same = np.array([bool(set(group[t.has[d]].tolist()) & mine) for d in idx])
    if same.sum() < 3:
        same[:] = True
    weight = t.weight[idx] * same
    score = (taus * weight).sum(axis=1) / weight.sum()
    return cands[int(np.argmax(np.round(score, 12)))]


def group_choice(
    records: Mapping[str, scoring.DatasetRecord], directions: Mapping[str, bool]
) -> scoring.Evaluation:
    """``evaluate_lodo`` with the combiner chosen per group (``_choose_in_group``)."""
    shipped = rec._choose
    rec._choose = _choose_in_group
    try:
        return scoring.evaluate_lodo(records, directions=directions)
    finally:
        rec._choose = shipped


def measure(
    records: Mapping[str, scoring.DatasetRecord], directions: Mapping[str, bool], tables: dict
) -> dict[str, Any]:
    exact = {n: replace(r, outcome_se={}) for n, r in records.items()}
    shipped = scoring.evaluate_lodo(records, directions=directions)
    plain = scoring.evaluate_lodo(exact, directions=directions)
    grouped = per_group(records, directions)
    chosen = group_choice(records, directions)
    within = within_family(records, directions)
    shrunk = family_shrunk(records, directions)
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
            "per_group": summary(grouped, kept),
            "group_choice": summary(chosen, kept),
            "within_family": summary(within, kept),
            "family_shrunk": summary(shrunk, kept),
        }
    return out


def subsample(
    records: Mapping[str, scoring.DatasetRecord],
    tables: Mapping[str, str],
    rng: Any,
    drop_models: bool = True,
) -> dict[str, scoring.DatasetRecord]:
    """A copy of the scope where each table lost 1 to 3 of its models (at most a third; none
    unless ``drop_models``) and 0 to 2 of its datasets (keeping at least 3)."""
    out: dict[str, scoring.DatasetRecord] = {}
    for table in sorted(set(tables.values())):
        names = sorted(n for n in records if tables[n] == table)
        models = sorted({m for n in names for per in records[n].scores.values() for m in per})
        n_drop = int(rng.integers(1, max(2, min(4, len(models) // 3 + 1)))) if drop_models else 0
        gone = set(rng.choice(models, size=n_drop, replace=False))
        n_sets = int(rng.integers(0, min(3, max(1, len(names) - 2))))
        keep = sorted(set(names) - set(rng.choice(names, size=n_sets, replace=False)))
        for n in keep:
            r = records[n]
            out[n] = replace(
                r,
                scores={
                    k: {m: v for m, v in per.items() if m not in gone}
                    for k, per in r.scores.items()
                },
                outcomes={m: v for m, v in r.outcomes.items() if m not in gone},
                outcome_se={m: v for m, v in r.outcome_se.items() if m not in gone},
            )
    return out


def subsamples(
    records: Mapping[str, scoring.DatasetRecord],
    directions: Mapping[str, bool],
    tables: Mapping[str, str],
    n: int,
    drop_models: bool = True,
    seed: int = 0,
) -> dict[str, Any]:
    """Over ``n`` seeded ``subsample`` copies of the scope: per table, then over all, each
    method's mean figures over every held-out dataset of every copy (``shipped`` and the
    variants)."""
    rng = np.random.default_rng(seed)
    figs: dict[str, dict[str, dict[str, list[float]]]] = {}
    for _ in range(n):
        copy = subsample(records, tables, rng, drop_models)
        dirs = {k: v for k, v in directions.items() if any(k in r.scores for r in copy.values())}
        for name, ev in (
            ("shipped", scoring.evaluate_lodo(copy, directions=dirs)),
            ("per_group", per_group(copy, dirs)),
            ("group_choice", group_choice(copy, dirs)),
            ("within_family", within_family(copy, dirs)),
            ("family_shrunk", family_shrunk(copy, dirs)),
        ):
            for d, per in ev.per_dataset.items():
                for group in (tables[d], "all"):
                    cell = figs.setdefault(group, {}).setdefault(name, {})
                    for m in METHODS:
                        for f in FIGS:
                            cell.setdefault(f"{m}/{f}", []).append(per[m][f])
    return {
        group: {
            name: {
                m: {f: float(np.nanmean(cell[f"{m}/{f}"])) for f in FIGS}
                | {"datasets": len(cell[f"{m}/weighted_tau"])}
                for m in METHODS
            }
            for name, cell in by_name.items()
        }
        for group, by_name in figs.items()
    } | {"copies": n, "models_dropped": drop_models, "seed": seed}


def print_scope(key: str, result: Mapping[str, Any]) -> None:
    print(f"\n{key}: mean weighted tau / top-1 regret (datasets), leave-one-dataset-out")
    print_scope_groups(result["groups"])


def print_scope_groups(groups: Mapping[str, Any]) -> None:
    head = "group".ljust(34) + "variant".ljust(14)
    print(head + "".join(f"{m:>22s}" for m in METHODS))
    for group, variants in groups.items():
        for variant, rows in variants.items():
            cells = "".join(
                f"{r['weighted_tau']:>9.3f} / {r['top1_regret']:5.2f} ({r['datasets']:>3d})"
                for r in (rows[m] for m in METHODS)
            )
            print(group[:33].ljust(34) + variant.ljust(14) + cells)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--subsamples", type=int, default=0, metavar="N")
    ap.add_argument("--subsamples-datasets", type=int, default=0, metavar="N")
    ap.add_argument("--seed", type=int, default=0, help="of the random copies (default 0)")
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
        for flag, drop_models in (("subsamples", True), ("subsamples_datasets", False)):
            copies = getattr(args, flag)
            if copies:
                result[flag] = subs = subsamples(
                    records, directions, tables, copies, drop_models, args.seed
                )
                what = "models and datasets" if drop_models else "datasets only"
                print(f"\n{copies} random copies without {what} (held-out datasets of all copies):")
                print_scope_groups({g: v for g, v in subs.items() if isinstance(v, dict)})
    write_report(args.out, report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
