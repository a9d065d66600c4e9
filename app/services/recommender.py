"""The recommender as the service runs it: the stored scores and outcomes of one scope
(modality, task, outcome measure) become ``scoring.recommend`` records; a fit is recorded
once per fingerprint with its leave-one-dataset-out quality; a finished ranking gets its
recommended ordering from the current fit; evaluations compare every metric and the
recommender with the stored outcomes.

Everything is recomputed from the rows (a fit takes well under a second on thousands of
rows), so there is no fitted state to go stale: the fingerprint says which inputs a fit saw.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, or_, select
from sqlalchemy.orm import Session

import scoring
from app.db import scores as stored_scores
from app.db.models import (
    DatasetRow,
    ExternalMetricRow,
    JobRow,
    OutcomeRow,
    RecommenderFitRow,
    now,
)
from app.db.scores import insert_ignore
from app.errors import Invalid
from app.services import models as model_service
from app.tenancy import visible
from scoring.recommend import HISTORY, MIN_OUTCOMES, RECOMMENDED, Fit

DEFAULT_MEASURE = "finetune_top1"


@dataclass(frozen=True)
class Scope:
    """Datasets whose outcomes inform each other: same modality, task and outcome measure,
    within one tenant's view: its own datasets and the shared ones (``tenant`` None: only the
    shared ones). A tenant never learns from another tenant's outcomes."""

    modality: str
    task: str
    measure: str = DEFAULT_MEASURE
    tenant: str | None = None

    @property
    def key(self) -> str:
        base = f"{self.modality}/{self.task}/{self.measure}"
        return base if self.tenant is None else f"{self.tenant}:{base}"

    @classmethod
    def of(
        cls, dataset: DatasetRow, measure: str = DEFAULT_MEASURE, *, tenant: str | None = None
    ) -> Scope:
        """The dataset's scope, seen by ``tenant`` (default: the dataset's own tenant)."""
        return cls(dataset.modality, dataset.task, measure, tenant or dataset.tenant)

    def datasets(self) -> ColumnElement[bool]:
        """The datasets this scope learns from."""
        shared = DatasetRow.tenant.is_(None)
        return shared if self.tenant is None else or_(shared, DatasetRow.tenant == self.tenant)


@dataclass(frozen=True)
class Records:
    """One scope's inputs: dataset id -> record, and metric -> higher_is_better."""

    datasets: dict[str, scoring.DatasetRecord]
    directions: dict[str, bool]


def directions(session: Session, metrics: Iterable[str], tenant: str | None) -> dict[str, bool]:
    """metric -> higher_is_better: the registry's, else the declaration of the imported
    table: the tenant's own or a shared one (``tenant`` None: the shared ones only)."""
    wanted = set(metrics)
    owners = ("", tenant) if tenant else ("",)
    query = select(ExternalMetricRow).where(
        ExternalMetricRow.name.in_(wanted), ExternalMetricRow.owner.in_(owners)
    )
    external = {
        r.name: r.higher_is_better
        for r in sorted(session.scalars(query), key=lambda r: r.owner)  # the tenant's wins
    }
    out = {}
    for m in wanted:
        spec = scoring.REGISTRY.get(m)
        out[m] = spec.higher_is_better if spec is not None else external.get(m, True)
    return out


def current_scores(
    session: Session, dataset_ids: Iterable[str]
) -> dict[str, dict[str, dict[str, float]]]:
    """dataset -> metric -> model -> value of every current score (``app.db.scores.current``)."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    for (ds, metric, model), row in stored_scores.current(session, dataset_ids).items():
        out.setdefault(ds, {}).setdefault(metric, {})[model] = row.value
    return out


def outcome_values(session: Session, scope: Scope) -> dict[str, dict[str, float]]:
    """dataset -> model -> outcome, sign-flipped where lower is better (so higher is better)."""
    rows = session.execute(
        select(OutcomeRow)
        .join(DatasetRow, DatasetRow.id == OutcomeRow.dataset_id)
        .where(
            OutcomeRow.measure == scope.measure,
            DatasetRow.modality == scope.modality,
            DatasetRow.task == scope.task,
            scope.datasets(),
        )
    ).scalars()
    out: dict[str, dict[str, float]] = {}
    for r in rows:
        out.setdefault(r.dataset_id, {})[r.model_id] = r.value if r.higher_is_better else -r.value
    return out


def records(session: Session, scope: Scope, *, reference_only: bool = False) -> Records:
    """Every dataset of the scope that has scores, with its outcomes under the measure
    (``reference_only``: only the datasets of imported benchmark tables)."""
    query = select(DatasetRow.id).where(
        DatasetRow.modality == scope.modality, DatasetRow.task == scope.task, scope.datasets()
    )
    if reference_only:
        query = query.where(DatasetRow.reference.is_(True))
    ids = list(session.scalars(query))
    scores = current_scores(session, ids)
    outcomes = outcome_values(session, scope)
    datasets = {
        ds: scoring.DatasetRecord(scores=scores[ds], outcomes=outcomes.get(ds, {}))
        for ds in ids
        if ds in scores
    }
    metrics = {m for r in datasets.values() for m in r.scores}
    return Records(datasets, directions(session, metrics, scope.tenant))


def quality_of(evaluation: scoring.Evaluation) -> dict[str, Any]:
    """The recommender's leave-one-dataset-out means: what to expect of its picks."""
    mean = evaluation.mean[RECOMMENDED]
    return {
        "weighted_tau": _finite(mean["weighted_tau"]),
        "top1_regret": _finite(mean["top1_regret"]),
        "top1_hit": _finite(mean["top1_hit"]),
        "datasets": evaluation.count[RECOMMENDED]["weighted_tau"],
    }


def current_fit(session: Session, scope: Scope) -> tuple[Fit, RecommenderFitRow] | None:
    """The fit on the scope's current rows, recorded once per fingerprint; None when the
    scope has no scores at all."""
    recs = records(session, scope)
    if not recs.datasets:
        return None
    fit = scoring.fit_recommender(recs.datasets, directions=recs.directions)
    lookup = select(RecommenderFitRow).where(
        RecommenderFitRow.scope == scope.key, RecommenderFitRow.fingerprint == fit.fingerprint
    )
    row = session.scalar(lookup)
    if row is None:
        quality: dict[str, Any] = {}
        if fit.calibrated:
            evaluation = scoring.evaluate_lodo(recs.datasets, directions=recs.directions)
            quality = quality_of(evaluation)
        # Another process (the scheduled refit, a concurrent request) may record the same
        # fit at the same moment: insert-or-ignore on (scope, fingerprint), then read it back.
        insert_ignore(
            session,
            RecommenderFitRow,
            {
                "scope": scope.key,
                "fingerprint": fit.fingerprint,
                "version": fit.version,
                "calibrated": fit.calibrated,
                "n_datasets": fit.n_datasets,
                "weights": dict(fit.weights),
                "quality": quality,
                "created_at": now(),
            },
            key=("scope", "fingerprint"),
        )
        row = session.scalar(lookup)
        if row is None:  # pragma: no cover - the insert or the other writer made it
            raise RuntimeError(f"the fit {fit.fingerprint} of {scope.key} could not be stored")
    return fit, row


def scopes_with_outcomes(session: Session, tenant: str | None = None) -> set[Scope]:
    """Every scope with outcomes the tenant can see; ``tenant`` None: every tenant's scopes
    (shared outcomes inform each tenant that has datasets of their modality and task)."""
    rows = session.execute(
        select(DatasetRow.tenant, DatasetRow.modality, DatasetRow.task, OutcomeRow.measure)
        .join(OutcomeRow, OutcomeRow.dataset_id == DatasetRow.id)
        .where(visible(DatasetRow.tenant, tenant))
        .distinct()
    ).all()
    if tenant is not None:
        return {Scope(m, t, measure, tenant) for _, m, t, measure in rows}
    tenants = set(session.scalars(select(DatasetRow.tenant).distinct()))
    scopes = set()
    for owner, modality, task, measure in rows:
        for t in tenants if owner is None else {owner}:
            scopes.add(Scope(modality, task, measure, t))
    return scopes


def refit_all(session: Session) -> list[str]:
    """Record the current fit of every scope that has outcomes; returns the new fingerprints."""
    scopes = scopes_with_outcomes(session)
    before = set(session.scalars(select(RecommenderFitRow.fingerprint)))
    made = []
    for scope in sorted(scopes, key=lambda s: s.key):
        current = current_fit(session, scope)
        if current is not None and current[1].fingerprint not in before:
            made.append(current[1].fingerprint)
    return made


def recommend(
    session: Session, dataset: DatasetRow, model_ids: Iterable[str] | None = None
) -> dict[str, Any] | None:
    """The recommended ordering of the dataset's scored models (optionally only
    ``model_ids``), as stored on a ranking and served by the leaderboard; None when no
    model has a score the recommender can use.

    The models are compared on equal evidence (``compared``): the order uses only the
    metrics every ordered model has (``metrics_used``), since a metric missing for one model
    would otherwise count as a neutral rank and sink or lift it for want of a score nobody
    computed. ``missing_metrics`` names, per model, what others have and it lacks;
    ``left_out_metrics`` what some models have but the order could not use; ``unranked`` the
    models left out of the order (only when no metric is shared by all: see ``compared``).
    """
    scope = Scope.of(dataset)
    current = current_fit(session, scope)
    if current is None:
        return None
    fit, row = current
    scores = current_scores(session, [dataset.id]).get(dataset.id, {})
    if model_ids is not None:
        keep = set(model_ids)
        scores = {m: {k: v for k, v in per.items() if k in keep} for m, per in scores.items()}
    held: dict[str, set[str]] = {}  # model -> the fitted metrics it has a finite score for
    for metric in fit.metrics:
        for model, value in scores.get(metric, {}).items():
            if math.isfinite(value):
                held.setdefault(model, set()).add(metric)
    if not held:
        return None  # none of the fitted metrics was computed here
    ranked, metrics = compared(held)
    every = set().union(*held.values())
    names = model_service.names_of(session, ranked)
    try:
        rec = fit.recommend(
            {k: {m: scores[k][m] for m in ranked} for k in metrics},
            exclude_dataset=dataset.id if dataset.id in fit.outcome_ranks else None,
        )
    except scoring.TransferabilityError:
        # the metrics they all have are equal for every one of them and none has an outcome
        # history: on equal evidence they tie (the metric another model has is no tiebreak)
        used: list[str] = []
        dropped = dict.fromkeys(sorted(metrics), "equal for every model ranked")
        combined = dict.fromkeys(ranked, 0.0)
        evidence = {
            m: {"score": 0.0, "values": {}, "contributions": {}, "history_datasets": 0,
                "notes": [f"{', '.join(sorted(metrics))} equal for every model: a tie"]}
            for m in ranked
        }  # fmt: skip
    else:
        used, combined = sorted(rec.metrics_used), dict(rec.scores)
        dropped = dict(rec.dropped_metrics)
        evidence = {
            m: {
                "score": e.score,
                "values": {k: v for k, v in e.values.items() if k in metrics or k == HISTORY},
                "contributions": {
                    k: v for k, v in e.contributions.items() if k in metrics or k == HISTORY
                },
                "history_datasets": e.history_count,
                # every ordered model has every metric used: the fit's notes on missing
                # metrics speak of the ones left out for all, which "left_out_metrics" names
                "notes": [n for n in e.notes if not n.startswith("missing ")],
            }
            for m, e in rec.evidence.items()
        }
    return {
        "fit": row.fingerprint,
        "version": row.version,
        "scope": scope.key,
        "calibrated": row.calibrated,
        "expected_quality": row.quality if row.calibrated else "uncalibrated",
        "learned_from_datasets": row.n_datasets,
        "weights": dict(fit.weights),
        "metrics_used": used,
        "left_out_metrics": sorted(every - metrics),
        # metrics every model has that cannot tell them apart (equal for all): not weighed
        "dropped_metrics": dropped,
        "ignored_metrics": sorted(k for k, per in scores.items() if per and k not in fit.metrics),
        "missing_metrics": {m: sorted(every - h) for m, h in sorted(held.items()) if every - h},
        "unranked": sorted(set(held) - set(ranked)),
        "scores": combined,
        "evidence": {
            m: {
                "model": names.get(m, m),
                "metrics": used,
                "missing_metrics": sorted(every - held[m]),
                **e,
            }
            for m, e in evidence.items()
        },
    }


def compared(held: Mapping[str, set[str]]) -> tuple[list[str], set[str]]:
    """Which models an order compares, and on which metrics, given ``held``: model -> the
    metrics it has a score for (each set non-empty).

    Every model, on the metrics all of them have. When no metric is shared by all, the models
    that have the metric most models have (name order breaks a tie), on the metrics all of
    those have; the others stay out of the order rather than get a neutral rank for metrics
    they lack. Returns (the models in name order, the metrics).
    """
    models = sorted(held)
    shared = set.intersection(*(held[m] for m in models))
    if not shared:
        counts: dict[str, int] = {}
        for m in models:
            for metric in held[m]:
                counts[metric] = counts.get(metric, 0) + 1
        widest = min(counts, key=lambda metric: (-counts[metric], metric))
        models = [m for m in models if widest in held[m]]
        shared = set.intersection(*(held[m] for m in models))
    return models, shared


def attach(session: Session, job: JobRow) -> None:
    """Store the recommended ordering on a job that just finished (immutable from then on)."""
    dataset = session.get(DatasetRow, job.dataset_id)
    if dataset is not None:
        job.recommendation = recommend(session, dataset, [m.model_id for m in job.models])


def evaluation(
    session: Session,
    scope: Scope,
    dataset_id: str | None = None,
    *,
    reference_only: bool = False,
) -> dict[str, Any]:
    """Every metric and the recommender against the stored outcomes, leave-one-dataset-out:
    across the scope (mean, median, number of datasets), or for one dataset."""
    recs = records(session, scope, reference_only=reference_only)
    try:
        result = scoring.evaluate_lodo(recs.datasets, directions=recs.directions)
    except scoring.TransferabilityError as exc:
        raise Invalid(
            f"nothing to evaluate for {scope.key}: {exc}; record outcomes for at least "
            f"{MIN_OUTCOMES} models of a dataset "
            "(`transferbench outcomes add`, or POST /v1/datasets/{id}/outcomes)"
        ) from exc
    if dataset_id is not None:
        if dataset_id not in result.per_dataset:
            n = len(recs.datasets[dataset_id].outcomes) if dataset_id in recs.datasets else 0
            raise Invalid(
                f"dataset {dataset_id!r} has {n} outcome(s) under {scope.measure!r} with scores "
                f"beside them; it needs at least {MIN_OUTCOMES}"
            )
        return {
            "dataset_id": dataset_id,
            "measure": scope.measure,
            "models": len(recs.datasets[dataset_id].outcomes),
            "methods": _clean(result.per_dataset[dataset_id]),
        }
    return {
        "scope": scope.key,
        "measure": scope.measure,
        "datasets": len(result.datasets),
        "mean": _clean(result.mean),
        "median": _clean(result.median),
        "count": {k: dict(v) for k, v in result.count.items()},
    }


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


def _clean(table: Mapping[str, Mapping[str, float]]) -> dict[str, dict[str, float | None]]:
    return {k: {f: _finite(v) for f, v in per.items()} for k, per in table.items()}
