"""The arithmetic of successive halving, torch-free: the local verification
(:mod:`workers.pipeline.finetune.verify`) and the service's fine-tuning jobs
(``app.finetunes``) plan their rounds with it, so both run the same rounds."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence


def round_epochs(total: int, candidates: int) -> int:
    """The epochs each of ``candidates`` trains for in its round, of a total budget ``total``:
    ``ceil(total / 2**h)`` with ``h = ceil(log2 candidates)`` halvings still to come."""
    halvings = math.ceil(math.log2(candidates)) if candidates > 1 else 0
    return math.ceil(total / (1 << halvings))


def keep(
    alive: Sequence[str], top1: Mapping[str, float | None], predicted: Mapping[str, int]
) -> tuple[list[str], bool]:
    """After a round of ``alive`` candidates measured ``top1`` (None: failed): those that go
    on (the better half, ``ceil(n / 2)`` of those measured, by top-1 then by the ``predicted``
    place) and whether the halving ends here (one candidate left, or none measured: then the
    list is every measured candidate, best first, and the first of it won)."""
    trained = sorted(
        (name for name in alive if top1.get(name) is not None),
        key=lambda name: (-(top1[name] or 0.0), predicted[name]),
    )
    finished = len(alive) == 1 or not trained
    return (trained if finished else trained[: math.ceil(len(trained) / 2)]), finished


def measured_order(
    names: Sequence[str],
    predicted: Mapping[str, int],
    top1: Mapping[str, float | None],
    out_in: Mapping[str, int],
    rounds: int,
    measured_in: Mapping[str, int] | None = None,
) -> list[str]:
    """The order fine-tuning measured: the winner first, then those out in the last round,
    then the round before, and so on; within a round by top-1, ties by the predicted place.
    ``top1`` is each candidate's last measurement and ``measured_in`` the round that took it
    (default: the round it went out in). A candidate whose run failed in the round it went out
    in keeps its place by what it measured before: below those measured in that round (it
    never showed it could match them), above those it beat earlier. One never measured (top-1
    None) is not placed."""
    at = measured_in or {}

    def place(name: str) -> tuple[int, int, float, int]:  # later out, better; then top-1
        out = out_in.get(name, rounds + 1)
        return (-out, -at.get(name, out), -(top1[name] or 0.0), predicted[name])

    return sorted((n for n in names if top1.get(n) is not None), key=place)
