"""Fine-tuning (:mod:`workers.pipeline.finetune`): the held-out split, and real zoo models
trained for a short epoch on real Fashion-MNIST images and fortunes."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from workers.pipeline.datasets import Dataset
from workers.pipeline.datasets.builtin import fortunes
from workers.pipeline.errors import PipelineError
from workers.pipeline.finetune import (
    FineTuneRecipe,
    Limits,
    column_split,
    finetune,
    finetune_model,
    open_for_finetune,
    stratified_split,
)
from workers.pipeline.models import CandidateModel, load_model
from workers.pipeline.models.zoo import minilm_dir
from workers.settings import Settings

THREE = ("Trouser", "Bag", "Sneaker")
HEAD_ONE_EPOCH = FineTuneRecipe(mode="head", epochs=1, batch_size=16)


def _three_classes(fmnist_full: Dataset, per_class: int) -> Dataset:
    small = fmnist_full.subsample(per_class, seed=3)
    keep = np.flatnonzero(np.isin(small.labels, THREE))
    return small.select(keep)


@pytest.fixture(scope="module")
def clothes(fmnist_full: Dataset) -> Dataset:
    """60 real Fashion-MNIST images, 20 of each of three classes."""
    return _three_classes(fmnist_full, 20)


@pytest.fixture(scope="module")
def mobilenet() -> CandidateModel:
    """MobileNetV2 on PyTorch (fine-tuning trains the module, not an ONNX export)."""
    return load_model("mobilenet-v2", Settings.load().model_copy(update={"runtime": "torch"}))


# -- the split ---------------------------------------------------------------------------------


def test_the_split_is_stratified_seeded_and_disjoint() -> None:
    labels = np.repeat(np.array(["a", "b", "c"]), [50, 30, 20])
    digests = [bytes([i % 256, i // 256]) for i in range(len(labels))]
    split = stratified_split(labels, digests, 0.2, seed=7)
    assert np.intersect1d(split.train, split.validation).size == 0
    assert np.array_equal(np.union1d(split.train, split.validation), np.arange(100))
    held = dict(zip(*np.unique(labels[split.validation], return_counts=True), strict=True))
    assert held == {"a": 10, "b": 6, "c": 4}
    again = stratified_split(labels, digests, 0.2, seed=7)
    assert np.array_equal(again.validation, split.validation)
    other = stratified_split(labels, digests, 0.2, seed=8)
    assert not np.array_equal(other.validation, split.validation)
    by_count = stratified_split(labels, digests, 3, seed=7)
    assert np.array_equal(np.unique(labels[by_count.validation], return_counts=True)[1], [3, 3, 3])


def test_identical_samples_never_sit_on_both_sides() -> None:
    """A duplicated sample in the training side and the validation side would be validated on
    what was trained on: equal digests are held out together or not at all."""
    labels = np.repeat(np.array(["a", "b"]), 40)
    digests = [bytes([i % 10, i // 40]) for i in range(80)]  # each content 4 times per class
    for seed in range(5):
        split = stratified_split(labels, digests, 0.25, seed=seed)
        trained = {digests[i] for i in split.train}
        assert trained.isdisjoint(digests[i] for i in split.validation)
        assert len(split.validation) == 2 * 4 * round(0.25 * 10)


def test_a_class_too_small_to_hold_out_is_refused_with_what_to_do() -> None:
    labels = np.array(["a", "a", "a", "b"])
    with pytest.raises(PipelineError, match=r"class 'b' has 1 distinct sample.*split"):
        stratified_split(labels, [b"1", b"2", b"3", b"4"], 0.2, seed=0)
    with pytest.raises(PipelineError, match="leaves none to train on"):
        stratified_split(np.array(["a", "a", "b", "b"]), [b"1", b"2", b"3", b"4"], 2, seed=0)


def test_the_manifest_split_column_is_the_split(tmp_path: Path) -> None:
    rows = ["text,label,split", "alpha one,a,train", "beta one,b,train", "alpha two,a,val",
            "beta two,b,validation", "alpha one,a,val"]  # fmt: skip
    manifest = tmp_path / "texts.csv"
    manifest.write_text("\n".join(rows) + "\n")
    _, split = open_for_finetune(str(manifest))
    assert split is not None
    assert split.train.tolist() == [0, 1]
    assert split.validation.tolist() == [2, 3]  # row 4 repeats a training text: left out
    assert split.dropped == 1
    with pytest.raises(PipelineError, match="drop --per-class"):
        open_for_finetune(str(manifest), per_class=1)
    with pytest.raises(PipelineError, match="row 2 has split 'test'; write train or validation"):
        column_split(["train", "test"], [b"1", b"2"], "m.csv")
    # a bad cell is named by its line, as the dataset's reader names a row (the header is 1):
    # the same row was "row 5" here and "row 6" there
    manifest.write_text("\n".join([*rows[:4], "beta two,b,test", "gamma one,c,train"]) + "\n")
    with pytest.raises(PipelineError, match="row 5 has split 'test'"):
        open_for_finetune(str(manifest))


# -- training real models ----------------------------------------------------------------------


@pytest.mark.slow
def test_head_only_for_one_epoch_beats_chance_on_held_out_images(
    clothes: Dataset, mobilenet: CandidateModel
) -> None:
    split = stratified_split(clothes.labels, clothes.digests, 0.2, seed=0)
    result = finetune_model(mobilenet, clothes, split, HEAD_ONE_EPOCH, device=torch.device("cpu"))
    assert result.error is None
    assert (result.n_train, result.n_validation) == (48, 12)
    assert result.epochs == 1 and len(result.train_loss) == len(result.val_top1) == 1
    assert result.top1 is not None and result.top1 >= 0.75  # chance: 1/3
    assert result.recipe["split"] == "stratified, 0.2 of each class, seed 0"


@pytest.mark.slow
def test_the_validation_accuracy_is_measured_on_the_held_out_samples_alone(
    clothes: Dataset, mobilenet: CandidateModel
) -> None:
    """The held-out samples carry labels rotated against the training samples' (a Bag held out
    is called a Trouser, and so on): a model that learnt the training samples scores ~0 on
    them, where it would score high were any training sample among those measured."""
    split = stratified_split(clothes.labels, clothes.digests, 0.2, seed=0)
    rotate = dict(zip(THREE, THREE[1:] + THREE[:1], strict=True))
    labels = clothes.labels.copy()
    labels[split.validation] = [rotate[str(label)] for label in labels[split.validation]]
    relabelled = Dataset(clothes.name, "image", clothes.samples, labels, clothes.digests)
    result = finetune_model(mobilenet, relabelled, split, HEAD_ONE_EPOCH,
                            device=torch.device("cpu"))  # fmt: skip
    assert result.top1 is not None and result.top1 <= 0.25
    on_training = finetune_model(
        mobilenet, relabelled, split.__class__(split.train, split.train, "train as validation"),
        HEAD_ONE_EPOCH, device=torch.device("cpu"),
    )  # fmt: skip
    assert on_training.top1 is not None and on_training.top1 >= 0.75


@pytest.mark.slow
def test_the_same_seed_gives_the_same_result_on_a_cpu(fmnist_full: Dataset) -> None:
    """Full fine-tuning (dropout, batch norm in training mode, augmentation) twice with one
    seed: the same losses and accuracy to the bit; another seed, another run."""
    tiny = _three_classes(fmnist_full, 6)
    recipe = FineTuneRecipe(mode="full", epochs=1, batch_size=6, validation=2)
    first, second = (finetune(tiny, ["mobilenet-v2"], recipe, device="cpu")[0] for _ in range(2))
    assert first.error is None and first.n_validation == 6
    assert first.train_loss == second.train_loss and first.top1 == second.top1
    other = finetune(
        tiny,
        ["mobilenet-v2"],
        FineTuneRecipe(mode="full", epochs=1, batch_size=6, validation=2, seed=1),
        device="cpu",
    )
    assert other[0].train_loss != first.train_loss  # fmt: skip


@pytest.mark.slow
def test_an_onnx_model_fails_alone_with_the_reason(fmnist_full: Dataset) -> None:
    tiny = _three_classes(fmnist_full, 6)
    results = finetune(tiny, ["open-nsfw", "mobilenet-v2"], HEAD_ONE_EPOCH, device="cpu")
    assert [r.model for r in results] == ["open-nsfw", "mobilenet-v2"]
    failed, trained = results
    assert failed.top1 is None and failed.error is not None
    assert "ONNX file" in failed.error and "cannot be fine-tuned" in failed.error
    assert trained.error is None and trained.top1 is not None


@pytest.mark.slow
def test_text_encoders_fine_tune_and_leave_the_shared_encoder_as_it_was() -> None:
    """MiniLM from the zoo (transformers, whose encoder the zoo shares between two models) and
    the same folder as a sentence-transformers pipeline, fully fine-tuned for a short epoch."""
    texts = fortunes().subsample(6, seed=0)
    three = np.flatnonzero(np.isin(texts.labels, np.unique(texts.labels)[:3]))
    small = texts.select(three)
    shared = load_model("minilm-l6", Settings.load().model_copy(update={"runtime": "torch"}))
    before = {k: v.clone() for k, v in shared.model.state_dict().items()}  # type: ignore[attr-defined]
    recipe = FineTuneRecipe(mode="full", epochs=1, batch_size=6, validation=2)
    results = finetune(small, ["minilm-l6", f"st:{minilm_dir()}"], recipe, device="cpu")
    for result in results:
        assert result.error is None, result.error
        assert (result.n_train, result.n_validation) == (12, 6)
        assert result.top1 is not None and 0 <= result.top1 <= 1
        assert math.isfinite(result.train_loss[0]) and result.recipe["learning_rate"] == 5e-5
    after = shared.model.state_dict()  # type: ignore[attr-defined]
    assert all(torch.equal(before[k], after[k]) for k in before)


@pytest.mark.slow
def test_a_batch_that_does_not_fit_is_halved_and_accumulated(
    clothes: Dataset, mobilenet: CandidateModel
) -> None:
    """Out of memory at more than 4 images per forward pass: torch's own OutOfMemoryError,
    raised by a forward pre-hook on the real module (a CPU cannot be made to run out of memory
    at a chosen batch). The step is retried at 8, then 4 images, gradients accumulating over
    the 16; a frozen backbone makes that the same arithmetic as one batch of 16."""
    split = stratified_split(clothes.labels, clothes.digests, 0.2, seed=0)
    cpu = torch.device("cpu")
    whole = finetune_model(mobilenet, clothes, split, HEAD_ONE_EPOCH, device=cpu)
    capped = finetune_model(mobilenet, clothes, split, HEAD_ONE_EPOCH, device=cpu,
                            limits=Limits(max_micro_batch=4))  # fmt: skip
    assert (whole.micro_batch, whole.accumulation) == (16, 1)
    assert (capped.micro_batch, capped.accumulation) == (4, 4)

    def out_of_memory_above(limit: int):  # type: ignore[no-untyped-def]
        def hook(_module: torch.nn.Module, args: tuple[torch.Tensor, ...]) -> None:
            if args[0].shape[0] > limit:
                raise torch.OutOfMemoryError(f"CUDA out of memory at {args[0].shape[0]} images")

        return mobilenet.module.register_forward_pre_hook(hook)  # type: ignore[attr-defined]

    handle = out_of_memory_above(4)
    try:
        halved = finetune_model(mobilenet, clothes, split, HEAD_ONE_EPOCH, device=cpu)
    finally:
        handle.remove()
    assert (halved.micro_batch, halved.accumulation) == (4, 4)
    assert halved.train_loss == pytest.approx(whole.train_loss, rel=1e-5)
    assert halved.top1 == capped.top1 == whole.top1

    probed: list[int] = []

    def out_of_memory_after_the_probe(_module: torch.nn.Module, args: tuple[torch.Tensor]) -> None:
        probed.append(1)  # the first pass measures the feature width, then none fits
        if len(probed) > 1:
            raise torch.OutOfMemoryError("CUDA out of memory at one image")

    handle = mobilenet.module.register_forward_pre_hook(out_of_memory_after_the_probe)  # type: ignore[attr-defined]
    try:
        with pytest.raises(PipelineError, match="does not fit the memory of cpu even one sample"):
            finetune_model(mobilenet, clothes, split, HEAD_ONE_EPOCH, device=cpu)
    finally:
        handle.remove()


@pytest.mark.slow
def test_an_epoch_cut_short_by_its_time_budget_reports_the_loss_of_what_it_trained_on(
    clothes: Dataset, mobilenet: CandidateModel
) -> None:
    """The training-loss curve is the mean loss per sample stepped on. An epoch a time budget
    ended after its first step of 8 samples divided their loss by all 48 training samples: a
    loss 6 times too small (0.19). A new head's first step predicts the 3 classes about
    evenly, so its loss per sample is about ln 3 (1.10)."""
    split = stratified_split(clothes.labels, clothes.digests, 0.2, seed=0)
    recipe = FineTuneRecipe(mode="head", epochs=1, batch_size=8, time_budget_s=1e-6)
    cut = finetune_model(mobilenet, clothes, split, recipe, device=torch.device("cpu"))
    assert cut.epochs == pytest.approx(8 / len(split.train), abs=1e-3)  # one step
    assert cut.train_loss[0] == pytest.approx(math.log(3), abs=0.4), cut.train_loss


def test_a_stop_ends_the_model_at_its_next_step(
    clothes: Dataset, mobilenet: CandidateModel
) -> None:
    """A cancelled job: the check before each step says stop at the second, and the model
    stops there; a run already stopped fails every model before it loads."""
    split = stratified_split(clothes.labels, clothes.digests, 0.2, seed=0)
    asked: list[int] = []

    def stop_at_second_step() -> bool:
        asked.append(1)
        return len(asked) >= 2

    with pytest.raises(PipelineError, match="stopped at epoch 1, step 2: the run was cancelled"):
        finetune_model(mobilenet, clothes, split, HEAD_ONE_EPOCH, device=torch.device("cpu"),
                       limits=Limits(should_stop=stop_at_second_step))  # fmt: skip
    results = finetune(clothes, ["mobilenet-v2", "efficientnet-lite0"], HEAD_ONE_EPOCH,
                       device="cpu", limits=Limits(deadline=0.0))  # fmt: skip
    assert [r.error for r in results] == ["stopped at the start of the model: the job's time "
                                          "ran out"] * 2  # fmt: skip


@pytest.mark.slow
def test_torchscript_trains_unless_frozen_and_a_frozen_one_trains_head_only(
    fmnist_full: Dataset, tmp_path: Path
) -> None:
    """A scripted MobileNetV3 (random weights: no download) trains in full; frozen, it has no
    weights that take gradients, so full fine-tuning fails it with the reason, head-only not."""
    import torchvision

    module = torchvision.models.mobilenet_v3_small(num_classes=10).eval()
    torch.jit.script(module).save(str(tmp_path / "open.pt"))
    torch.jit.freeze(torch.jit.script(module)).save(str(tmp_path / "frozen.pt"))
    specs = [f"torchscript:{tmp_path / 'open.pt'}", f"torchscript:{tmp_path / 'frozen.pt'}"]
    tiny = _three_classes(fmnist_full, 4)
    for mode in ("full", "head"):
        recipe = FineTuneRecipe(mode=mode, epochs=1, batch_size=8, validation=1)
        open_one, frozen = finetune(tiny, specs, recipe, device="cpu")
        assert open_one.error is None and math.isfinite(open_one.train_loss[0])
        if mode == "full":
            assert frozen.error is not None and "no weights that take gradients" in frozen.error
        else:
            assert frozen.error is None and frozen.top1 is not None
