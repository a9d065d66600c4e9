"""Successive halving (:mod:`workers.pipeline.finetune.verify`): the budget of each round, and
the best candidate kept against the predicted order, with models whose order is known: the
pretrained MobileNetV2 of the zoo against the same architecture randomly initialised and with
every weight zero (constant features: chance accuracy), on real Fashion-MNIST images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision

from workers.pipeline.datasets import Dataset
from workers.pipeline.errors import PipelineError
from workers.pipeline.finetune import FineTuneRecipe
from workers.pipeline.finetune.verify import MEASURE, round_epochs, successive_halving

#: three classes pretrained features tell apart after a few steps of a new head
THREE = ("Trouser", "Bag", "Sneaker")


@pytest.mark.parametrize(
    ("epochs", "candidates", "expected"),
    [(4, 4, 1), (4, 3, 1), (4, 2, 2), (4, 1, 4), (3, 2, 2), (1, 2, 1), (8, 5, 1), (8, 4, 2)],
)
def test_each_round_gets_its_share_of_the_budget(epochs, candidates, expected) -> None:
    """With n candidates left, ceil(log2 n) halvings remain and a round gets E / 2**halvings
    epochs, rounded up so that every round trains; the last one left gets all of E."""
    assert round_epochs(epochs, candidates) == expected


def test_no_candidates_is_refused(fmnist64: Dataset) -> None:
    with pytest.raises(PipelineError, match="at least one candidate"):
        successive_halving(fmnist64, [], FineTuneRecipe(mode="head", epochs=1))


def _statedict(path: Path, zero: bool) -> str:
    """A MobileNetV2 checkpoint of random (seeded) or all-zero weights, as a model spec."""
    torch.manual_seed(5)
    module = torchvision.models.mobilenet_v2(weights=None)
    if zero:
        with torch.no_grad():
            for tensor in module.state_dict().values():
                if tensor.is_floating_point():
                    tensor.zero_()
    torch.save(module.state_dict(), path)
    return f"statedict:{path}?arch=mobilenet_v2"


@pytest.mark.slow
def test_the_pretrained_model_wins_though_predicted_last(
    fmnist_full: Dataset, tmp_path: Path
) -> None:
    small = fmnist_full.subsample(20, seed=3)
    clothes = small.select(np.flatnonzero(np.isin(small.labels, THREE)))
    zero = _statedict(tmp_path / "zero.pt", zero=True)
    random = _statedict(tmp_path / "random.pt", zero=False)
    predicted = [zero, random, "mobilenet-v2"]  # the worst first: the order must not decide
    recipe = FineTuneRecipe(mode="head", epochs=2, batch_size=8, validation=4)
    result = successive_halving(clothes, predicted, recipe, device="cpu")

    assert [r.epochs for r in result.rounds] == [1, 1, 2]
    assert result.rounds[0].models == predicted == result.rounds[0].trained
    assert result.rounds[0].kept[0] == "mobilenet-v2" and len(result.rounds[0].kept) == 2
    assert result.rounds[1].trained == []  # two left: 1 epoch each, as measured in round 1
    assert result.rounds[1].kept == ["mobilenet-v2"] == result.rounds[2].models
    assert result.winner == "mobilenet-v2" and result.agrees is False
    assert result.measured_order[0] == "mobilenet-v2"
    by_name = {c.model: c for c in result.candidates}
    assert by_name["mobilenet-v2"].result.epochs == 2  # the winner: the whole budget
    assert by_name[zero].result.top1 == pytest.approx(1 / 3)  # constant features: one class
    assert by_name[zero].result.epochs == 1 and by_name[zero].out_in_round in (1, 2)
    assert result.n_validation == 12 and result.kendall_tau is not None
    assert result.kendall_tau < 1  # the measured order is not the predicted one

    outcomes = {o["model_id"]: o for o in result.outcomes()}
    assert set(outcomes) == set(predicted)
    winner = outcomes["mobilenet-v2"]
    assert winner["measure"] == MEASURE and winner["higher_is_better"] is True
    # in percent, as the tables and typed-in outcomes: one unit per measure
    assert winner["value"] == pytest.approx(100 * by_name["mobilenet-v2"].result.top1)
    details = winner["details"]
    assert details["epochs"] == 2 and details["seed"] == 0 and details["device"] == "cpu"
    assert details["recipe"]["mode"] == "head" and details["recipe"]["epochs"] == 2
    assert details["verification"]["round"] == 3 and details["verification"]["rounds"] == 3
    assert outcomes[zero]["details"]["epochs"] == 1


@pytest.mark.slow
def test_a_last_round_that_fails_leaves_what_the_first_measured(
    fmnist_full: Dataset, tmp_path: Path
) -> None:
    """The winner's full-budget run fails (a fault after its first step: out of memory, a lost
    device): no winner, but its first-round measurement stands, placed above the model it
    beat there, and is stored as its outcome with the round that took it. Before, its failed
    run replaced that measurement: it was dropped from the measured order, its outcome was not
    stored, and the verdict said nothing had been verified."""
    from workers.cli.verify import block

    small = fmnist_full.subsample(20, seed=3)
    clothes = small.select(np.flatnonzero(np.isin(small.labels, THREE)))
    zero = _statedict(tmp_path / "zero.pt", zero=True)
    recipe = FineTuneRecipe(mode="head", epochs=2, batch_size=8, validation=4)
    first_round_steps: set[int] = set()

    def fault(name: str, done: int, total: int) -> None:
        if not first_round_steps:
            first_round_steps.add(total)
        if total not in first_round_steps:  # a longer round: the last
            raise RuntimeError("CUDA out of memory (injected)")

    result = successive_halving(clothes, [zero, "mobilenet-v2"], recipe, device="cpu",
                                progress=fault)  # fmt: skip

    assert [r.epochs for r in result.rounds] == [1, 2]
    assert result.rounds[0].kept == ["mobilenet-v2"] and result.winner is None
    assert result.measured_order == ["mobilenet-v2", zero] and result.agrees is None
    by_name = {c.model: c for c in result.candidates}
    best = by_name["mobilenet-v2"]
    assert best.result.top1 is not None and best.result.epochs == 1
    assert best.out_in_round == 2 and best.measured_in_round == 1 and best.measured_rank == 1
    assert best.error == "round 2 failed: CUDA out of memory (injected)"
    outcomes = {o["model_id"]: o for o in result.outcomes()}
    assert set(outcomes) == {zero, "mobilenet-v2"}
    assert outcomes["mobilenet-v2"]["value"] == pytest.approx(100 * best.result.top1)
    assert outcomes["mobilenet-v2"]["details"]["verification"]["round"] == 1
    assert outcomes["mobilenet-v2"]["details"]["epochs"] == 1
    text = block(result.to_dict())
    assert "No winner" in text and "nothing verified" not in text
    assert "2 (failed)" in text
