"""Check a ranking's answer by fine-tuning its top candidates: successive halving.

A ranking predicts an order; fine-tuning measures one. Fine-tuning every candidate for the
full budget costs ``k`` full runs; successive halving (Jamieson & Talwalkar 2016, the inner
loop of Hyperband, Li et al. 2018) spends most of the budget on the candidates still in the
running:

- **Rounds.** With ``n`` candidates left, ``ceil(log2 n)`` halvings remain, and this round
  trains each of them for ``ceil(E / 2**halvings)`` epochs of the total budget ``E``
  (``recipe.epochs``): with three or four candidates a quarter of ``E``, with two a half, the
  last one left the whole of ``E``. Four candidates and ``E = 4``: 1 epoch each, the better two
  2 epochs, the winner 4.
- **Each round retrains from the pretrained weights** with the larger budget; it does not
  continue the previous round's weights. A run of ``e`` epochs is then exactly what
  ``transferbench finetune --epochs e`` measures with the same recipe and seed (its warm-up and
  cosine decay planned for ``e`` epochs), so every measured top-1 is reproducible and
  comparable with any other outcome of that recipe; continuing would restart the schedule
  midway and measure a run no recipe describes. The cost: at most twice the epochs, as the
  budgets double. A round whose budget equals the previous round's (``E`` too small to
  halve) trains nothing again: the same recipe, seed and data give the same result (exactly
  so on a CPU), so the earlier measurement stands.
- **Each round keeps the better half**, ``ceil(n / 2)`` of the candidates that trained, by
  measured top-1, ties broken by the predicted order; a candidate that failed (its reason
  kept) is out. The rounds end with one winner, trained for the full ``E``.
- **One held-out split for all**: every candidate, every round, is measured on the same
  validation samples (``split``, default stratified by ``recipe.validation`` and seeded by
  ``recipe.seed``), and on those only.

The measured order: the winner first, then the candidates out in the last round, then those
out in the round before, and so on; within a round by measured top-1, ties by the predicted
order. Each candidate's last measured top-1 (after the epochs its last round gave it: the
``epochs`` of its outcome's details) is its outcome (:meth:`Verification.outcomes`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from scoring import rank_quality
from workers.pipeline.datasets import Dataset
from workers.pipeline.errors import PipelineError
from workers.pipeline.finetune.halving import keep, measured_order, round_epochs
from workers.pipeline.finetune.recipe import FineTuneRecipe, FineTuneResult, top1_outcome
from workers.pipeline.finetune.run import finetune
from workers.pipeline.finetune.split import Split, stratified_split
from workers.pipeline.finetune.trainer import Limits, Progress
from workers.settings import Settings

#: the outcome measure a verification stores, as ``transferbench outcomes add`` does by default
MEASURE = "finetune_top1"


@dataclass
class Round:
    """One round: the epochs its candidates (``models``) are measured after, those of them
    trained in it (the others were measured after as many epochs in an earlier round, whose
    result stands), and those that went on (the last round: the winner)."""

    epochs: int
    models: list[str]
    trained: list[str]
    kept: list[str]

    def to_dict(self) -> dict[str, Any]:
        return {"epochs": self.epochs, "models": self.models, "trained": self.trained,
                "kept": self.kept}  # fmt: skip


@dataclass
class Verified:
    """One candidate: its place in the predicted order (1 first), its last measurement (or
    its failed run when it was never measured), the round it went out in (1-based; None: the
    winner), the round that measured it, its place in the measured order (None when it was
    never measured: then it is not placed), and the run that failed after it was measured
    (``failed``: it went out in that round, placed by what it measured before)."""

    model: str
    predicted_rank: int
    result: FineTuneResult
    out_in_round: int | None = None
    measured_rank: int | None = None
    measured_in_round: int | None = None
    failed: FineTuneResult | None = None

    @property
    def error(self) -> str | None:
        if self.failed is not None:
            return f"round {self.out_in_round} failed: {self.failed.error}"
        return self.result.error

    def to_dict(self) -> dict[str, Any]:
        r = self.result
        return {
            "model": self.model,
            "predicted_rank": self.predicted_rank,
            "measured_rank": self.measured_rank,
            "top1": r.top1,
            "epochs": r.epochs,
            "seconds": r.seconds,
            "device": r.device,
            "out_in_round": self.out_in_round,
            "error": self.error,
        }


@dataclass
class Verification:
    """What successive halving measured: the candidates in the predicted order, the rounds,
    the winner (None when every candidate failed), whether it is the predicted first, and
    Kendall's tau-b between the predicted and the measured order of the candidates measured
    (None below three of them, where :func:`scoring.rank_quality` leaves it undefined)."""

    candidates: list[Verified]
    rounds: list[Round]
    epochs: int
    mode: str
    split: str
    n_train: int
    n_validation: int
    winner: str | None = None
    agrees: bool | None = None
    kendall_tau: float | None = None
    measured_order: list[str] = field(default_factory=list)

    def outcomes(self) -> list[dict[str, Any]]:
        """One outcome per measured candidate, in the shape ``POST .../outcomes`` and
        ``transferbench outcomes add`` store (``model_id`` is the model's name): its last
        measured top-1 in percent (``top1_outcome``), with the recipe, the epochs it reflects,
        seconds, device and seed as details, and which round of how many measured it."""
        out = []
        for c in self.candidates:
            r = c.result
            if r.top1 is None:
                continue
            value, se = top1_outcome(r.top1, r.n_validation)
            details = {
                "recipe": r.recipe,
                "epochs": r.epochs,
                "seconds": r.seconds,
                "device": r.device,
                "seed": r.seed,
                "n_train": r.n_train,
                "n_validation": r.n_validation,
                "se": se,
                "verification": {
                    "method": "successive halving",
                    "round": c.measured_in_round,
                    "rounds": len(self.rounds),
                    "budget_epochs": self.epochs,
                    "predicted_rank": c.predicted_rank,
                    "measured_rank": c.measured_rank,
                },
            }
            out.append({"model_id": c.model, "value": value, "measure": MEASURE,
                        "higher_is_better": True, "details": details})  # fmt: skip
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": "successive halving",
            "measure": MEASURE,
            "epochs": self.epochs,
            "mode": self.mode,
            "held_out": {"samples": self.n_validation, "split": self.split},
            "trained_on": self.n_train,
            "candidates": [c.to_dict() for c in self.candidates],
            "rounds": [r.to_dict() for r in self.rounds],
            "winner": self.winner,
            "winner_top1": next(
                (c.result.top1 for c in self.candidates if c.model == self.winner), None
            ),
            "agrees_with_predicted_first": self.agrees,
            "measured_order": self.measured_order,
            "kendall_tau": self.kendall_tau,
        }


def successive_halving(
    dataset: Dataset,
    models: Sequence[str],
    recipe: FineTuneRecipe,
    *,
    split: Split | None = None,
    settings: Settings | None = None,
    device: str | None = None,
    limits: Limits | None = None,
    progress: Progress | None = None,
) -> Verification:
    """Fine-tune ``models`` (zoo names or specs, best predicted first) on ``dataset`` by
    successive halving with a total budget of ``recipe.epochs`` (see the module docstring),
    and measure how far the predicted order held. ``split``, ``settings``, ``device``,
    ``limits`` and ``progress`` are :func:`~workers.pipeline.finetune.finetune`'s; progress
    starts again from step 1 for each model in each round."""
    names = list(dict.fromkeys(models))
    if not names:
        raise PipelineError("nothing to verify: give at least one candidate model")
    if split is None:
        split = stratified_split(dataset.labels, dataset.digests, recipe.validation, recipe.seed)
    predicted = {name: i + 1 for i, name in enumerate(names)}
    # each candidate's last measurement and the round that took it; a run that fails after
    # one is kept apart (``failed``): the candidate is out, placed by what it measured
    last: dict[str, FineTuneResult] = {}
    measured_in: dict[str, int] = {}
    failed: dict[str, FineTuneResult] = {}
    out_in: dict[str, int] = {}
    rounds: list[Round] = []
    measured: dict[tuple[str, int], FineTuneResult] = {}
    alive = names
    while alive:
        epochs = round_epochs(recipe.epochs, len(alive))
        todo = [name for name in alive if (name, epochs) not in measured]
        if todo:
            this = replace(recipe, epochs=epochs)
            results = finetune(dataset, todo, this, split=split, settings=settings,
                               device=device, limits=limits, progress=progress)  # fmt: skip
            measured.update(((r.model, epochs), r) for r in results)
        now = {name: measured[(name, epochs)] for name in alive}
        for name, result in now.items():
            if result.top1 is not None or name not in measured_in:
                last[name] = result
                if result.top1 is not None:
                    measured_in[name] = len(rounds) + 1
            else:
                failed[name] = result
        kept, finished = keep(alive, {name: r.top1 for name, r in now.items()}, predicted)
        rounds.append(Round(epochs, list(alive), todo, kept))
        for name in alive:
            if name not in kept:
                out_in[name] = len(rounds)
        if finished:
            break
        alive = kept
    return _verification(names, predicted, last, out_in, rounds, recipe, split, measured_in, failed)


def _verification(
    names: list[str],
    predicted: dict[str, int],
    last: dict[str, FineTuneResult],
    out_in: dict[str, int],
    rounds: list[Round],
    recipe: FineTuneRecipe,
    split: Split,
    measured_in: dict[str, int],
    failed: dict[str, FineTuneResult],
) -> Verification:
    """The measured order and its agreement with the predicted one."""
    winner = rounds[-1].kept[0] if rounds[-1].kept else None

    top1 = {name: last[name].top1 for name in names}
    order = measured_order(names, predicted, top1, out_in, len(rounds), measured_in)
    measured_rank = {name: i + 1 for i, name in enumerate(order)}
    candidates = [
        Verified(
            n,
            predicted[n],
            last[n],
            out_in.get(n),
            measured_rank.get(n),
            measured_in.get(n),
            failed.get(n),
        )
        for n in names
    ]
    tau = None
    if order:
        figures = rank_quality([-measured_rank[n] for n in order], [-predicted[n] for n in order])
        tau = None if math.isnan(figures["kendall_tau"]) else figures["kendall_tau"]
    return Verification(
        candidates=candidates,
        rounds=rounds,
        epochs=recipe.epochs,
        mode=recipe.mode,
        split=split.describe,
        n_train=len(split.train),
        n_validation=len(split.validation),
        winner=winner,
        agrees=None if winner is None else winner == names[0],
        kendall_tau=tau,
        measured_order=order,
    )
