"""Scores that are defined over a pool of candidate models, not one model at a time.

NCTI (Wang et al., ICCV 2023) and ETran (Gholami et al., ICCV 2023) publish a combination of
per-model components that are min-max scaled across the models being compared. A number
scaled that way changes whenever a model joins or leaves the pool, so the service never stores
it: each component is a registry metric of its own (``ncti_seli``, ``ncti_ncc``, ``ncti_vc``;
``etran_energy``, ``etran_lda``), stored per model and independent of the others, and these
functions combine the stored components of whatever pool is being ranked, when it is ranked.

Both take ``{model: {component: value}}`` and return ``{model: combined}``. A component that
is the same for every model of the pool adds nothing (the authors' scripts divide 0 by 0 there
and get NaN); fewer than two models is degenerate (no pool to scale against).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from math import isfinite

from scoring.errors import DegenerateScore, TransferabilityError

#: NCTI = ncc + seli - vc, each min-max scaled over the pool (the stored ``ncti_vc`` is -vc).
NCTI_WEIGHTS: dict[str, float] = {"ncti_ncc": 1.0, "ncti_seli": 1.0, "ncti_vc": 1.0}
#: ETran = 0.15 energy + 0.85 LDA, each min-max scaled over the pool (the authors' ``tw.py``).
ETRAN_WEIGHTS: dict[str, float] = {"etran_energy": 0.15, "etran_lda": 0.85}


def _minmax_sum(
    name: str, scores: Mapping[str, Mapping[str, float]], weights: Mapping[str, float]
) -> dict[str, float]:
    if len(scores) < 2:
        raise DegenerateScore(
            f"{name} scales each component across the candidate models, so it needs at least 2 "
            f"models; got {len(scores)}. Rank with the components themselves"
        )
    for model, comps in scores.items():
        missing = sorted(set(weights) - set(comps))
        if missing:
            raise TransferabilityError(
                f"{name} needs {', '.join(sorted(weights))} for every model; {model!r} lacks "
                f"{', '.join(missing)}: compute those metrics for it first"
            )
    out = dict.fromkeys(scores, 0.0)
    for comp, weight in weights.items():
        values = {m: float(c[comp]) for m, c in scores.items()}
        low, high = min(values.values()), max(values.values())
        if high > low:
            for m, v in values.items():
                out[m] += weight * (v - low) / (high - low)
    return out


def ncti(scores: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    """The paper's NCTI for a pool: ncc + seli - vc, each min-max scaled over the models.

    scores: {model: {"ncti_seli": .., "ncti_ncc": .., "ncti_vc": ..}} as the registry stores
    them (``ncti_vc`` negated, so its scaled value is 1 - the reference's). The result is the
    reference's NCTI plus 1 for every model: the same order and the same gaps.
    """
    return _minmax_sum("NCTI", scores, NCTI_WEIGHTS)


def etran(scores: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    """ETran for a pool of models (classification): 0.15 energy + 0.85 LDA, each min-max
    scaled over the models. scores: {model: {"etran_energy": .., "etran_lda": ..}}."""
    return _minmax_sum("ETran", scores, ETRAN_WEIGHTS)


#: The pooled scores a ranking shows, each computed from the registry metrics it combines.
POOLED: dict[
    str, tuple[Callable[[Mapping[str, Mapping[str, float]]], dict[str, float]], tuple[str, ...]]
] = {
    "etran": (etran, tuple(ETRAN_WEIGHTS)),
    "ncti": (ncti, tuple(NCTI_WEIGHTS)),
}


def expand(names: Sequence[str]) -> list[str]:
    """``names`` with each pooled score's name replaced by the metrics it combines, in
    order and once each: ``["etran", "logme"]`` -> ``["etran_energy", "etran_lda", "logme"]``.
    A pooled score is never a metric of its own (it is computed when a ranking is shown), so
    asking for it means asking for its components."""
    out: list[str] = []
    for name in names:
        key = name.strip().lower()
        out += POOLED[key][1] if key in POOLED else [name]
    return list(dict.fromkeys(out))


@dataclass(frozen=True)
class Pooled:
    """One pooled score of a ranking. ``values``: model -> combined score, None for a model
    left out of the pool (it lacks a component); ``models``: how many models it is pooled
    over; ``error``: why no model has a value (fewer than two models have every component)."""

    name: str
    components: tuple[str, ...]
    values: dict[str, float | None]
    models: int
    error: str | None = None

    @property
    def note(self) -> str:
        """What the numbers are, in a sentence a ranking can show beside them."""
        what = ", ".join(self.components)
        if self.error is not None:
            return f"not computed: {self.error}"
        return (
            f"pooled over the {self.models} models of this ranking that have {what} (each "
            "min-max scaled across them): computed when shown, never stored, so it moves when "
            "the pool changes"
        )


def pool_scores(
    scores: Mapping[str, Mapping[str, float | None]], metrics: Sequence[str]
) -> dict[str, Pooled]:
    """The pooled scores of a ranking whose ``metrics`` include all of their components.

    scores: model -> metric -> value (None: not computed) for the models of one ranking. Each
    pooled score is computed over the models that have every one of its components as a
    finite number; the others get None. With fewer than two such models it has no value
    and ``error`` says why."""
    out: dict[str, Pooled] = {}
    for name, (combine, components) in POOLED.items():
        if not set(components) <= set(metrics):
            continue
        pool = {
            model: {c: float(v) for c in components if (v := row.get(c)) is not None}
            for model, row in scores.items()
        }
        pool = {
            m: comps
            for m, comps in pool.items()
            if len(comps) == len(components) and all(isfinite(v) for v in comps.values())
        }
        values: dict[str, float | None] = dict.fromkeys(scores)
        if len(pool) < 2:
            reason = (
                f"it scales each of {', '.join(components)} across the models, so it needs at "
                f"least 2 models with all of them; {len(pool)} of the {len(scores)} here "
                "have them"
            )
            out[name] = Pooled(name, components, values, len(pool), reason)
            continue
        values.update(combine(pool))
        out[name] = Pooled(name, components, values, len(pool))
    return out
