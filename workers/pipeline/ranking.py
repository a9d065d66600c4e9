"""Scores every model's features with the transferability metrics and orders them."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

import scoring
from scoring.pool import POOLED, Pooled, expand, pool_scores
from scoring.recommend import has_history
from workers.pipeline.errors import PipelineError
from workers.pipeline.layers import best_layer
from workers.pipeline.score_cache import ScoreCache, compute_cached


@dataclass(frozen=True)
class ModelArrays:
    """What a metric sees of one model: ``features`` ``(N, D)``, ``probs`` ``(N, Z)`` or None.

    With layers: ``layers``, label (``"3"``, ``"mean"``) -> ``(N, D_i)`` features, each
    scored with ``probs``; ``order``, the label whose scores order the model."""

    features: np.ndarray
    probs: np.ndarray | None
    layers: Mapping[str, np.ndarray] | None = None
    order: str | None = None


@dataclass(frozen=True)
class RankedModel:
    """One row of a ranking: ``scores`` holds ``recommended`` (the recommender's combined
    score) and each metric; ``rank`` is None when the row could not be ordered. ``errors``:
    why a metric is missing; ``error``: why the whole model failed (it could not be loaded).

    With layers: ``layers``, each layer's scores by label; ``layer``, the label ``scores``
    are of (the one it is ordered by); ``best_layer``, the layer its first metric scores
    best (:func:`workers.pipeline.layers.best_layer`)."""

    model: str
    rank: int | None
    scores: dict[str, float | None]
    errors: dict[str, str] = field(default_factory=dict)
    error: str | None = None
    layers: dict[str, dict[str, float | None]] | None = None
    layer: str | None = None
    best_layer: str | None = None

    def to_dict(self) -> dict[str, object]:
        row: dict[str, object] = {"model": self.model, "rank": self.rank, "scores": self.scores}
        if self.layers is not None:
            row.update(layer=self.layer, best_layer=self.best_layer, layers=self.layers)
        if self.error is not None:
            row["error"] = self.error
        return row


def failed_row(model: str, reason: str, metrics: Sequence[str]) -> RankedModel:
    """The row of a model that failed as a whole: unranked, no score, ``reason`` as its error."""
    scores: dict[str, float | None] = {scoring.RECOMMENDED: None, **dict.fromkeys(metrics)}
    return RankedModel(model, None, scores, error=reason)


#: the names a user may ask for that stand for several metrics (``rank --metrics etran``)
POOLED_NAMES = tuple(POOLED)


def resolve_metrics(requested: Sequence[str] | None, target: scoring.Target) -> list[str]:
    """Validated metric names; ``None`` -> the defaults that suit ``target``. A pooled
    score's name (``etran``, ``ncti``: :data:`scoring.pool.POOLED`) stands for the metrics it
    combines, and the ranking then shows it (:func:`pooled`)."""
    if requested is None:
        return scoring.default_metrics(target)
    requested = expand(requested)
    unknown = [m for m in requested if m not in scoring.REGISTRY]
    if unknown:
        raise PipelineError(
            f"unknown metric {', '.join(unknown)}; choose from {', '.join(scoring.REGISTRY)}, "
            f"or a pooled score ({', '.join(POOLED_NAMES)})"
        )
    if not requested:
        raise PipelineError("no metrics given")
    return list(dict.fromkeys(requested))


def pooled(rows: Sequence[RankedModel], metrics: Sequence[str]) -> dict[str, Pooled]:
    """The pooled scores (ETran, NCTI) of a ranking whose ``metrics`` include their
    components, over the models of ``rows`` that were scored (``scoring.pool.pool_scores``):
    computed from the rows as shown, never stored."""
    return pool_scores({r.model: r.scores for r in rows if r.error is None}, metrics)


def rank_models(
    arrays: Mapping[str, ModelArrays],
    labels: np.ndarray,
    metrics: Sequence[str],
    target: scoring.Target = "classification",
    cache: ScoreCache | None = None,
) -> list[RankedModel]:
    """Score each model on ``labels`` ``(N,)`` with every metric that applies to it (others
    None, with the reason in ``errors``) and order by the first metric, best first (tied
    models share a rank); models it does not apply to come last. A model with ``layers`` is
    scored on each, and ordered by its ``order`` layer's scores. ``cache``: scores already
    computed on the same arrays are read from it, the others stored in it."""
    rows = []
    for name, model in arrays.items():
        if model.layers is None:
            scores, errors = score_arrays(
                name, model.features, model.probs, labels, metrics, target, cache
            )
            rows.append(RankedModel(name, None, scores, errors))
            continue
        per_layer: dict[str, dict[str, float | None]] = {}
        layer_errors: dict[str, dict[str, str]] = {}
        for label, features in model.layers.items():
            per_layer[label], layer_errors[label] = score_arrays(
                f"{name} layer {label}", features, model.probs, labels, metrics, target, cache
            )
        order = model.order or next(iter(model.layers))
        rows.append(
            RankedModel(
                name, None, per_layer[order], layer_errors[order],
                layers=per_layer, layer=order, best_layer=best_layer(per_layer, metrics),
            )
        )  # fmt: skip
    return with_recommendation(rows, metrics)


def score_arrays(
    name: str,
    features: np.ndarray,
    probs: np.ndarray | None,
    labels: np.ndarray,
    metrics: Sequence[str],
    target: scoring.Target,
    cache: ScoreCache | None = None,
) -> tuple[dict[str, float | None], dict[str, str]]:
    """Every metric of ``metrics`` on one set of arrays: values (None where not computed) and
    why each missing one is missing; through ``cache`` where one is given."""
    usable = scoring.applicable(
        metrics, has_features=True, has_probs=probs is not None, target=target
    )
    try:
        result = compute_cached(
            cache, usable, labels, features=features, probs=probs, target=target
        )
    except scoring.TransferabilityError as exc:  # inputs no metric can use (e.g. NaN)
        raise PipelineError(f"{name}: {exc}") from exc
    return {m: result.values.get(m) for m in metrics}, result.errors


def uses_metric_only(fit: scoring.Fit, rows: Sequence[RankedModel]) -> bool:
    """Whether ``fit`` orders ``rows`` by its metric-only weights: it is calibrated and none
    of the rows' models has a history in it (``scoring.recommend.has_history``)."""
    return fit.calibrated and not has_history(fit, (r.model for r in rows))


def with_recommendation(
    rows: Sequence[RankedModel], metrics: Sequence[str], fit: scoring.Fit | None = None
) -> list[RankedModel]:
    """The rows with the recommender's combined score as their first column, ordered by
    ``scoring.rank_rows`` (the service's rule too). ``fit``: a recommender fit (keys: model
    names) that saw these scores; default: the uncalibrated combination of these scores
    alone. A calibrated fit none of whose ranked models has a history gives the metric-only
    order (``uses_metric_only``: the service's rule). Without any metric the recommender
    uses, rows are ordered by the first metric."""
    by_metric = {
        m: {r.model: v for r in rows if (v := r.scores.get(m)) is not None} for m in metrics
    }
    by_metric = {m: per for m, per in by_metric.items() if per}
    combined: Mapping[str, float] = {}
    if by_metric:
        try:
            fit = fit or scoring.fit_recommender({"target": scoring.DatasetRecord(by_metric)})
            combined = fit.recommend(by_metric, metric_only=uses_metric_only(fit, rows)).scores
        except scoring.TransferabilityError:
            combined = {}  # none of the metrics the recommender combines was computed
    table = {
        r.model: {scoring.RECOMMENDED: combined.get(r.model), **{m: r.scores[m] for m in metrics}}
        for r in rows
    }
    by_name = {r.model: r for r in rows}
    return [
        dataclasses.replace(by_name[name], rank=rank, scores=table[name])
        for name, rank in scoring.rank_rows(table, metrics)
    ]
