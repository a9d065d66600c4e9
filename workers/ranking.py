"""Scores every model's features with the transferability metrics and orders them."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

import scoring
from workers.errors import PipelineError


@dataclass(frozen=True)
class ModelArrays:
    """What a metric sees of one model: ``features`` ``(N, D)``, ``probs`` ``(N, Z)`` or None."""

    features: np.ndarray
    probs: np.ndarray | None


@dataclass(frozen=True)
class RankedModel:
    """One row of a ranking: ``rank`` is None when the first metric does not apply."""

    model: str
    rank: int | None
    scores: dict[str, float | None]
    errors: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, object]:
        return {"model": self.model, "rank": self.rank, "scores": self.scores}


def resolve_metrics(requested: Sequence[str] | None, target: str) -> list[str]:
    """Validated metric names; ``None`` -> the defaults that suit ``target``."""
    if requested is None:
        if target == "classification":
            return list(scoring.DEFAULT_METRICS)
        return [n for n, spec in scoring.REGISTRY.items() if target in spec.targets]
    unknown = [m for m in requested if m not in scoring.REGISTRY]
    if unknown:
        raise PipelineError(
            f"unknown metric {', '.join(unknown)}; choose from {', '.join(scoring.REGISTRY)}"
        )
    if not requested:
        raise PipelineError("no metrics given")
    return list(dict.fromkeys(requested))


def rank_models(
    arrays: Mapping[str, ModelArrays],
    labels: np.ndarray,
    metrics: Sequence[str],
    target: str = "classification",
) -> list[RankedModel]:
    """Score each model on ``labels`` ``(N,)`` with every metric that applies to it (others
    None) and order by the first metric, best first; models it does not apply to come last."""
    rows = []
    errors: dict[str, dict[str, str]] = {}
    for name, model in arrays.items():
        usable = scoring.applicable(
            metrics, has_features=True, has_probs=model.probs is not None, target=target
        )
        try:
            result = scoring.compute_detailed(
                usable, labels, features=model.features, probs=model.probs, target=target
            )
        except scoring.TransferabilityError as exc:  # inputs no metric can use (e.g. NaN)
            raise PipelineError(f"{name}: {exc}") from exc
        computed = result.values
        errors[name] = result.errors
        scores: dict[str, float | None] = {}
        for metric in metrics:
            value = computed.get(metric)
            scores[metric] = None if value is None or not math.isfinite(value) else float(value)
        rows.append((name, scores))
    first = metrics[0]
    sign = 1.0 if scoring.REGISTRY[first].higher_is_better else -1.0
    scored = sorted(
        (r for r in rows if r[1][first] is not None),
        key=lambda r: -sign * r[1][first],  # type: ignore[operator]
    )
    unscored = [r for r in rows if r[1][first] is None]
    ranked = [RankedModel(n, i + 1, s, errors[n]) for i, (n, s) in enumerate(scored)]
    return ranked + [RankedModel(n, None, s, errors[n]) for n, s in unscored]
