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
import threading
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import numpy.typing as npt
from sqlalchemy import ColumnElement, or_, select
from sqlalchemy.orm import Session

import scoring
from app.db import scores as stored_scores
from app.db.models import (
    DatasetRow,
    ExternalMetricRow,
    JobRow,
    ModelAliasRow,
    ModelRow,
    OutcomeRow,
    RecommenderFitRow,
    now,
)
from app.db.scores import insert_ignore
from app.errors import Invalid
from app.services import models as model_service
from app.tenancy import visible
from scoring.recommend import (
    HISTORY,
    METRIC_ONLY,
    MIN_OUTCOMES,
    RECOMMENDED,
    Fit,
    fit_fingerprint,
    has_history,
    noise_only,
    why_uncalibrated,
)

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
    """One scope's inputs: dataset id -> record, and metric -> higher_is_better; ``aliased``:
    registered model id -> the name of the reference model whose rows were counted as its
    (``aliases``); ``reference``: the ids of the datasets of imported tables."""

    datasets: dict[str, scoring.DatasetRecord]
    directions: dict[str, bool]
    aliased: dict[str, str] = field(default_factory=dict)
    reference: frozenset[str] = frozenset()


def aliases(session: Session, tenant: str | None) -> dict[str, tuple[str, str]]:
    """reference model id -> (registered model id, reference name) of the explicit aliases
    the tenant has: the operator's (shared) and its own, its own winning (``tenant`` None:
    the operator's only). Never inferred from a name."""
    owners: list[ColumnElement[bool]] = [ModelAliasRow.tenant.is_(None)]
    if tenant is not None:
        owners.append(ModelAliasRow.tenant == tenant)
    rows = session.execute(
        select(ModelAliasRow, ModelRow.name)
        .join(ModelRow, ModelRow.id == ModelAliasRow.reference_id)
        .where(or_(*owners))
    ).all()
    out: dict[str, tuple[str, str]] = {}
    for alias, name in sorted(rows, key=lambda r: r[0].tenant is not None):  # own last: wins
        out[alias.reference_id] = (alias.model_id, str(name))
    return out


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
    for (ds, metric, model), value in stored_scores.current_values(session, dataset_ids).items():
        out.setdefault(ds, {}).setdefault(metric, {})[model] = value
    return out


def outcome_se(row: OutcomeRow) -> float | None:
    """The standard error of a stored outcome: its ``details["se"]`` (a table's
    ``OUTCOME_se`` column, a fine-tuning run's binomial error), else, for a fine-tuning
    run's top-1 stored before runs recorded it, the binomial error of its held-out count
    (``n_validation``); None: not known (typed in, or a table without errors)."""
    details = row.details or {}
    se = details.get("se")
    if isinstance(se, int | float) and not isinstance(se, bool) and math.isfinite(se) and se >= 0:
        return float(se)
    n = details.get("n_validation")
    if "finetune_id" in details and isinstance(n, int) and row.measure == DEFAULT_MEASURE:
        derived = scoring.binomial_se(row.value, n)  # a run's top-1, in percent (0011)
        return None if math.isnan(derived) else derived
    return None


def outcome_values(
    session: Session, scope: Scope
) -> tuple[dict[str, dict[str, float]], dict[str, dict[str, float]]]:
    """dataset -> model -> outcome, sign-flipped where lower is better (so higher is better),
    and dataset -> model -> its standard error where one is known (``outcome_se``)."""
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
    errors: dict[str, dict[str, float]] = {}
    for r in rows:
        out.setdefault(r.dataset_id, {})[r.model_id] = r.value if r.higher_is_better else -r.value
        if (se := outcome_se(r)) is not None:
            errors.setdefault(r.dataset_id, {})[r.model_id] = se
    return out, errors


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
    outcomes, errors = outcome_values(session, scope)
    linked = aliases(session, scope.tenant)
    rename = {ref: model for ref, (model, _) in linked.items()}
    datasets = {
        ds: scoring.DatasetRecord(
            scores={
                k: {rename.get(m, m): v for m, v in per.items()} for k, per in scores[ds].items()
            },
            outcomes={rename.get(m, m): v for m, v in outcomes.get(ds, {}).items()},
            outcome_se={rename.get(m, m): v for m, v in errors.get(ds, {}).items()},
        )
        for ds in ids
        if ds in scores
    }
    metrics = {m for r in datasets.values() for m in r.scores}
    reference = frozenset(
        session.scalars(
            select(DatasetRow.id).where(DatasetRow.id.in_(ids), DatasetRow.reference.is_(True))
        )
    )
    return Records(
        datasets,
        directions(session, metrics, scope.tenant),
        aliased={model: name for model, name in linked.values()},
        reference=reference,
    )


def quality_of(evaluation: scoring.Evaluation) -> dict[str, Any]:
    """The recommender's leave-one-dataset-out figures: what to expect of its picks."""
    return _quality(evaluation, RECOMMENDED, "datasets with outcomes")


#: The per-dataset figures a stored quality keeps (``_quality``), in this order.
_PER_DATASET = ("weighted_tau", "top1_regret", "top1_hit")


def _quality(evaluation: scoring.Evaluation, method: str, datasets: str) -> dict[str, Any]:
    """``method``'s leave-one-dataset-out figures in ``evaluation`` and the sentence a
    recommendation states (``_summary``), with each held-out dataset's own figures kept
    under ``per_dataset`` (dataset -> ``_PER_DATASET``, None where not measured): what
    ``for_models`` narrows to the datasets of the models an order ranks. ``datasets`` names
    what it was measured on ("reference datasets")."""
    per = {
        name: [_finite(rows[method][fig]) for fig in _PER_DATASET]
        for name, rows in evaluation.per_dataset.items()
    }
    return _summary(per, method, datasets) | {"per_dataset": per}


def _summary(
    per: Mapping[str, Sequence[float | None]], method: str, datasets: str, prefix: str = ""
) -> dict[str, Any]:
    """The figures over the held-out datasets of ``per`` (dataset -> ``_PER_DATASET``), as
    ``scoring.evaluate_lodo`` makes its means: the mean weighted tau with its standard error
    (how far the mean is known) and its range over the held-out datasets (how far one new
    dataset may land from it), and the mean top-1 regret with its standard error; and the
    sentence stating them ("calibrated on" ``prefix`` n ``datasets``)."""

    def values(fig: str) -> npt.NDArray[np.float64]:
        k = _PER_DATASET.index(fig)
        return np.array([v[k] for v in per.values() if v[k] is not None], dtype=np.float64)

    def mean(fig: str) -> float | None:
        vals = values(fig)
        return float(vals.mean()) if vals.size else None

    def sem(fig: str) -> float | None:
        vals = values(fig)
        return float(vals.std(ddof=1) / math.sqrt(vals.size)) if vals.size > 1 else None

    taus = values("weighted_tau")
    n = int(taus.size)
    tau, tau_se = mean("weighted_tau"), sem("weighted_tau")
    regret, regret_se = mean("top1_regret"), sem("top1_regret")
    low, high = (float(taus.min()), float(taus.max())) if n else (None, None)
    if tau is None:
        statement = f"calibrated on {datasets} too few to hold one out and measure it"
    else:
        statement = f"calibrated on {prefix}{n} {datasets}: weighted tau {two(tau)}"
        if tau_se is not None and low is not None and high is not None:
            statement += (
                f" ± {two(tau_se)} (one standard error; single datasets {two(low)} to {two(high)})"
            )
        if regret is not None:
            statement += f", top-1 regret {two(regret)}"
            statement += f" ± {two(regret_se)} points" if regret_se is not None else " points"
    return {
        "method": method,
        "weighted_tau": tau,
        "weighted_tau_se": tau_se,
        "weighted_tau_range": [low, high] if low is not None and high is not None else None,
        "top1_regret": regret,
        "top1_regret_se": regret_se,
        "top1_hit": mean("top1_hit"),
        "datasets": n,
        "statement": statement,
    }


def family(outcome_ranks: Mapping[str, Mapping[str, float]], models: Iterable[str]) -> set[str]:
    """The datasets with outcomes (``outcome_ranks``: dataset -> model -> outcome rank) that
    hold one of ``models``, or a model compared with one of them on some dataset, or so on
    (the component of the dataset-model graph that ``models`` are in)."""
    seen = set(models)
    held: set[str] = set()
    grew = True
    while grew:
        new = {d for d, per in outcome_ranks.items() if d not in held and seen.intersection(per)}
        grew = bool(new)
        held |= new
        for d in new:
            seen.update(outcome_ranks[d])
    return held


def for_models(
    quality: Mapping[str, Any],
    outcome_ranks: Mapping[str, Mapping[str, float]],
    models: Iterable[str],
) -> dict[str, Any]:
    """The expected quality of the recommender's order of ``models`` (those of them with a
    history): ``quality`` (``quality_of``) narrowed to the held-out datasets of their
    ``family``, where the other datasets' models are another family.

    A model's history comes from its family's datasets only, and how far a history persists
    differs from one family of models to another (docs/recommender.md): the order of a
    family's models is measured on that family's datasets. With every dataset in the family,
    the figures are ``quality``'s; with fewer than 2 of them (no spread to state), they stay
    ``quality``'s and the statement says how few hold these models. Otherwise the figures
    and statement are the family's, and ``all_datasets`` keeps the figures over all of them.
    The per-dataset figures are not repeated; with no ``models`` (an order that weighs no
    history) the figures are ``quality``'s."""
    per: Mapping[str, Sequence[float | None]] = quality.get("per_dataset") or {}
    shown = {k: v for k, v in quality.items() if k != "per_dataset"}
    models = list(models)
    if not per or not models:
        return shown
    mine = family(outcome_ranks, models)
    kept = {d: v for d, v in per.items() if d in mine}
    if len(kept) == len(per):
        return shown
    if len(kept) < 2:
        shown["statement"] = (
            f"{shown['statement']}; only {len(kept)} of them holds these models or models "
            "compared with them, too few to measure their family alone"
        )
        return shown
    narrowed = _summary(kept, str(quality["method"]), "datasets with outcomes", "the ")
    total = shown.get("datasets")
    narrowed["statement"] = narrowed["statement"].replace(
        f"calibrated on the {narrowed['datasets']} datasets with outcomes",
        f"calibrated on the {narrowed['datasets']} of {total} datasets with outcomes that hold "
        "these models or models compared with them",
        1,
    )
    if shown.get("weighted_tau") is not None:
        narrowed["statement"] += f" (all {total}: weighted tau {two(shown['weighted_tau'])})"
    narrowed["all_datasets"] = {k: v for k, v in shown.items() if k != "statement"}
    return narrowed


#: Leave-one-dataset-out evaluations kept by the fingerprint of their inputs
#: (``scoring.recommend.fit_fingerprint``: every value the evaluation reads, the method's
#: version and parameters), so that a repeated ``GET /v1/evaluation``, the dashboard's metrics
#: page and a fit's quality measure a scope again only when something it reads changed (one
#: took 1 to 2 s on the shipped image table, minutes on a table of thousands of models).
MAX_CACHED_EVALUATIONS = 32
_EVALUATIONS: OrderedDict[str, scoring.Evaluation] = OrderedDict()
_EVALUATIONS_LOCK = threading.Lock()


def evaluate(
    datasets: Mapping[str, scoring.DatasetRecord],
    directions: Mapping[str, bool],
    key: str | None = None,
) -> scoring.Evaluation:
    """``scoring.evaluate_lodo(datasets, directions=directions)``, kept by its inputs'
    fingerprint (``key``, when the caller has it: the fit of the same inputs'). Raises as
    ``evaluate_lodo`` does; a failure is not kept."""
    key = key or fit_fingerprint(datasets, directions=directions)
    with _EVALUATIONS_LOCK:
        kept = _EVALUATIONS.get(key)
        if kept is not None:
            _EVALUATIONS.move_to_end(key)
            return kept
    made = scoring.evaluate_lodo(datasets, directions=directions)
    with _EVALUATIONS_LOCK:
        _EVALUATIONS[key] = made
        while len(_EVALUATIONS) > MAX_CACHED_EVALUATIONS:
            _EVALUATIONS.popitem(last=False)
    return made


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

    def quality() -> dict[str, Any]:
        return quality_of(evaluate(recs.datasets, recs.directions, fit.fingerprint))

    if row is not None and _stale(row):
        row.quality = quality()
        session.flush()
    if row is None:
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
                "quality": quality() if fit.calibrated else {},
                "created_at": now(),
            },
            key=("scope", "fingerprint"),
        )
        row = session.scalar(lookup)
        if row is None:  # pragma: no cover - the insert or the other writer made it
            raise RuntimeError(f"the fit {fit.fingerprint} of {scope.key} could not be stored")
    return fit, row


def metric_only_fit(
    session: Session, scope: Scope, metrics: Iterable[str]
) -> tuple[Fit, RecommenderFitRow]:
    """The metric-only order for candidates none of which has a history (a model the tables
    do not hold learns nothing from theirs): ``Fit.metric_weights`` fitted on the scope's
    datasets with outcomes (the shipped and imported tables, the tenant's own) over
    ``metrics`` only, recorded once per fingerprint under ``<scope>|metric-only`` with its
    leave-one-dataset-out quality (``metric_quality``). Calibrated when a dataset with
    outcomes scores one of ``metrics``; a metric none scores keeps its prior weight."""
    wanted = set(metrics)
    recs = records(session, scope)
    restricted = {
        ds: replace(r, scores={k: per for k, per in r.scores.items() if k in wanted})
        for ds, r in recs.datasets.items()
    }
    restricted = {ds: r for ds, r in restricted.items() if r.scores}
    dirs = {k: recs.directions[k] for k in {k for r in restricted.values() for k in r.scores}}
    fit = scoring.fit_recommender(restricted, directions=dirs)
    labelled = set(fit.outcome_ranks)
    covered = sorted(k for k in wanted if any(k in restricted[ds].scores for ds in labelled))
    key = f"{scope.key}|metric-only"
    lookup = select(RecommenderFitRow).where(
        RecommenderFitRow.scope == key, RecommenderFitRow.fingerprint == fit.fingerprint
    )
    row = session.scalar(lookup)

    def quality() -> dict[str, Any]:
        evaluation = evaluate(restricted, dirs, fit.fingerprint)
        measured = metric_quality(evaluation, labelled <= recs.reference)
        missing = sorted(wanted - set(covered))
        if missing:
            measured["statement"] += (
                f"; no table covers {', '.join(missing)}: its documented prior weight is used"
            )
        return measured

    if row is not None and _stale(row):
        row.quality = quality()
        session.flush()
    if row is None:
        insert_ignore(
            session,
            RecommenderFitRow,
            {
                "scope": key,
                "fingerprint": fit.fingerprint,
                "version": fit.version,
                "calibrated": bool(covered),
                "n_datasets": fit.n_datasets,
                "weights": {**dict(fit.metric_weights), HISTORY: 0.0},
                "quality": quality() if covered else {},
                "created_at": now(),
            },
            key=("scope", "fingerprint"),
        )
        row = session.scalar(lookup)
        if row is None:  # pragma: no cover - the insert or the other writer made it
            raise RuntimeError(f"the fit {fit.fingerprint} of {key} could not be stored")
    return fit, row


def two(value: float) -> str:
    """``value`` to two decimals, never as a negative zero."""
    text = f"{value:.2f}"
    return text[1:] if text == "-0.00" else text


def _stale(row: RecommenderFitRow) -> bool:
    """A calibrated fit recorded before its quality carried its spread and each held-out
    dataset's figures (``per_dataset``): measured again, as the fit itself is the same."""
    needed = ("weighted_tau_se", "per_dataset")
    return bool(row.calibrated and row.quality and any(k not in row.quality for k in needed))


def metric_quality(evaluation: scoring.Evaluation, reference: bool) -> dict[str, Any]:
    """The metric-only order's leave-one-dataset-out figures, with the sentence a
    recommendation states (``reference``: every dataset learned from is a table's)."""
    return _quality(evaluation, METRIC_ONLY, "reference datasets" if reference else "datasets")


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
    # the scope's fit names every input it depends on (its fingerprint covers the scores and
    # outcomes of every dataset with outcomes, and the metrics every other one has), and this
    # dataset's own scores rewrite its board where they are written: boards keyed by the fit
    # stay current whichever weights this order uses
    scope_fit = row.fingerprint
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
    # a model's history is its outcomes on the other datasets (its own or an alias's)
    elsewhere = {m for ds, per in fit.outcome_ranks.items() if ds != dataset.id for m in per}
    metric_only = not has_history(fit, ranked, exclude_dataset=dataset.id)
    if metric_only:
        fit, row = metric_only_fit(session, scope, metrics)
    via = {m: name for m, name in _aliased(session, scope).items() if m in elsewhere}
    try:
        rec = fit.recommend(
            {k: {m: scores[k][m] for m in ranked} for k in metrics},
            exclude_dataset=dataset.id if dataset.id in fit.outcome_ranks else None,
            metric_only=metric_only,
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
                **({"history_via": via[m]} if m in via and e.history_count else {}),
                # every ordered model has every metric used: the fit's notes on missing
                # metrics speak of the ones left out for all, which "left_out_metrics" names
                "notes": [n for n in e.notes if not n.startswith("missing ")],
            }
            for m, e in rec.evidence.items()
        }
    return {
        "fit": scope_fit,
        **({"metric_only_fit": row.fingerprint} if metric_only else {}),
        "version": row.version,
        "scope": scope.key,
        "calibrated": row.calibrated,
        **({} if row.calibrated else {"uncalibrated_reason": _why_not(session, scope, metrics)}),
        "expected_quality": _expected(row, fit, ranked, metric_only, dataset.id),
        "learned_from_datasets": row.n_datasets,
        "method": METRIC_ONLY if metric_only else RECOMMENDED,
        "weights": dict(row.weights) if metric_only else dict(fit.weights),
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


def _expected(
    row: RecommenderFitRow, fit: Fit, ranked: Sequence[str], metric_only: bool, dataset: str
) -> dict[str, Any] | str:
    """What a recommendation on ``dataset`` states it can be trusted to: "uncalibrated", the
    metric-only order's quality (it weighs no history, so every dataset measures it), or the
    full recommender's on the datasets of the ranked models' family (``for_models``; their
    history comes from datasets other than this one, so its own outcomes join no family)."""
    if not row.calibrated:
        return "uncalibrated"
    if metric_only:
        return for_models(row.quality, {}, ())
    elsewhere = {d: per for d, per in fit.outcome_ranks.items() if d != dataset}
    return for_models(row.quality, elsewhere, ranked)


def _why_not(session: Session, scope: Scope, metrics: Iterable[str]) -> str:
    """Why the order of ``metrics`` on ``scope`` is uncalibrated, in words: no dataset's
    outcomes can measure an order, or those that can score none of these metrics. Only from
    what the scope's fit covers (``counts=False``): a board stored with this text is current
    while that fit is, so outcomes that teach nothing must not change it."""
    why = why_uncalibrated(records(session, scope).datasets, metrics, counts=False)
    return why or "no dataset with fine-tuning outcomes of this kind scores these metrics"


def _aliased(session: Session, scope: Scope) -> dict[str, str]:
    """registered model id -> the reference model whose history it carries (``aliases``)."""
    return {model: name for model, name in aliases(session, scope.tenant).values()}


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


#: why a dataset with enough outcomes is left out of an evaluation (``evaluation``)
NOISE_ONLY = (
    "its outcomes are no more spread than their standard errors (reliability 0): no order of "
    "its models can be measured on them"
)


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
    # a dataset without outcomes under the measure neither teaches nor tests: its metrics
    # would only be listed with no figure
    with_outcomes = {ds: r for ds, r in recs.datasets.items() if r.outcomes}
    if not with_outcomes:  # say which scopes have some (the evaluation's error spoke of metrics)
        others = sorted(
            s.key for s in scopes_with_outcomes(session, scope.tenant) if s.key != scope.key
        )
        where = (
            f"; outcomes are recorded for {', '.join(others)} (modality/task/measure)"
            if others
            else ""
        )
        raise Invalid(
            f"nothing to evaluate for {scope.key}: no dataset of it has outcomes under the "
            f"measure {scope.measure!r}{where}; record outcomes for at least {MIN_OUTCOMES} "
            "models of a dataset (`transferbench outcomes add`, or POST "
            "/v1/datasets/{id}/outcomes)"
        )
    directions = {
        k: recs.directions[k] for k in {k for r in with_outcomes.values() for k in r.scores}
    }
    try:
        result = evaluate(with_outcomes, directions)
    except scoring.TransferabilityError as exc:
        counted = any(len(r.outcomes) >= MIN_OUTCOMES for r in with_outcomes.values())
        hint = (
            ""  # there are enough outcomes: the error says what is wrong with them
            if counted
            else f"; record outcomes for at least {MIN_OUTCOMES} models of a dataset "
            "(`transferbench outcomes add`, or POST /v1/datasets/{id}/outcomes)"
        )
        raise Invalid(f"nothing to evaluate for {scope.key}: {exc}{hint}") from exc
    if dataset_id is not None:
        if dataset_id not in result.per_dataset:
            rec = recs.datasets.get(dataset_id)
            n = len(rec.outcomes) if rec is not None else 0
            if rec is not None and noise_only(rec):
                raise Invalid(
                    f"dataset {dataset_id!r}: its {n} outcomes under {scope.measure!r} are no "
                    "more spread than their standard errors (reliability 0), so no order of "
                    "its models can be measured on them; measure them on more held-out samples"
                )
            raise Invalid(
                f"dataset {dataset_id!r} has {n} outcome(s) under {scope.measure!r} with scores "
                f"beside them; it needs at least {MIN_OUTCOMES}"
            )
        return {
            "dataset_id": dataset_id,
            "measure": scope.measure,
            "models": len(recs.datasets[dataset_id].outcomes),
            "methods": _clean(result.per_dataset[dataset_id]),
            "compared": dict(result.compared[dataset_id]),
        }
    noise = sorted(ds for ds, r in with_outcomes.items() if noise_only(r))
    return {
        "scope": scope.key,
        "measure": scope.measure,
        "datasets": len(result.datasets),
        "left_out": dict.fromkeys(noise, NOISE_ONLY),
        "mean": _clean(result.mean),
        "median": _clean(result.median),
        "count": {k: dict(v) for k, v in result.count.items()},
        "sem": _clean(result.sem),
        "min": _clean(result.low),
        "max": _clean(result.high),
        "coverage": dict(result.coverage),
    }


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


def _clean(table: Mapping[str, Mapping[str, float]]) -> dict[str, dict[str, float | None]]:
    return {k: {f: _finite(v) for f, v in per.items()} for k, per in table.items()}
