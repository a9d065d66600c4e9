"""Best-first ordering of models by one metric: the one rule the CLI, the API's rankings and
its leaderboards share."""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence
from typing import TypeVar

from scoring.recommend import RECOMMENDED, tie_groups
from scoring.registry import REGISTRY

K = TypeVar("K", bound=Hashable)


def rank_best_first(
    values: Mapping[K, float | None], *, higher_is_better: bool = True
) -> list[tuple[K, int | None]]:
    """``values``: one score per model (None or non-finite: not scored).

    Returns the models best first with competition ranks: tied scores share the better rank
    (1, 1, 3), since nothing tells tied models apart; ties keep the input order. Scores tie
    when equal up to ``scoring.recommend.TIE_RTOL`` of the largest magnitude among them
    (``tie_groups``), so rounding noise (-2.8e-17 against 0.0) orders nothing. Models
    without a score come last, in input order, with rank None.
    """
    scored = [(k, float(v)) for k, v in values.items() if v is not None and math.isfinite(float(v))]
    sign = 1.0 if higher_is_better else -1.0
    out: list[tuple[K, int | None]] = []
    for group in tie_groups([sign * v for _, v in scored]):
        rank = len(out) + 1
        out += [(scored[i][0], rank) for i in group]
    seen = {k for k, _ in scored}
    out += [(k, None) for k in values if k not in seen]
    return out


def rank_rows(
    scores: Mapping[K, Mapping[str, float | None]], metrics: Sequence[str]
) -> list[tuple[K, int | None]]:
    """The order of a ranking's rows: ``scores`` model -> column -> value.

    By the ``recommended`` column where any model has one (the recommender's combined score,
    higher is better), otherwise by the first of ``metrics`` in its own direction; ties share
    a rank (``rank_best_first``).
    """
    if any(row.get(RECOMMENDED) is not None for row in scores.values()):
        return rank_best_first({k: row.get(RECOMMENDED) for k, row in scores.items()})
    first = metrics[0]
    return rank_best_first(
        {k: row.get(first) for k, row in scores.items()},
        higher_is_better=REGISTRY[first].higher_is_better,
    )
