"""Fine-tune several models on one dataset, each alone: a model that cannot be loaded or
trained fails with its reason and the others go on."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from workers.pipeline.datasets import BUILTINS, Dataset, open_dataset
from workers.pipeline.datasets.tables import TABLE_SUFFIXES, columns, first_line, read_rows
from workers.pipeline.errors import PipelineError
from workers.pipeline.finetune.networks import (
    Classifier,
    ImageInputs,
    TextInputs,
    build_classifier,
    text_input_names,
)
from workers.pipeline.finetune.recipe import FineTuneRecipe, FineTuneResult
from workers.pipeline.finetune.split import Split, column_split, stratified_split
from workers.pipeline.finetune.trainer import EpochDone, Inputs, Limits, Progress, train
from workers.pipeline.models.base import CandidateModel, autocast_dtype
from workers.pipeline.models.preprocessing import ImageRecipe
from workers.pipeline.models.zoo import load_model
from workers.pipeline.runtime import configure, resolve_device
from workers.settings import Settings

_DTYPE_NAMES = {torch.bfloat16: "bf16", torch.float16: "fp16"}


def open_for_finetune(
    spec: str, per_class: int | None = None, seed: int = 0, *, quiet: bool = True
) -> tuple[Dataset, Split | None]:
    """The dataset ``spec`` names and, when its manifest has a ``split`` column, the user's own
    split. Subsampled to ``per_class`` (a built-in: to its default unless given); a dataset
    with its own split is taken whole."""
    dataset = open_dataset(spec)
    if dataset.modality == "features":
        raise PipelineError(
            f"{spec}: a feature file holds no images or texts to train on; fine-tune on the "
            "dataset the features came from"
        )
    if dataset.target != "classification":
        raise PipelineError(
            f"{spec}: fine-tuning trains a classifier, and this dataset has numeric targets; "
            "give class labels in a 'label' column"
        )
    path = Path(spec).expanduser()
    if spec not in BUILTINS and path.is_file() and path.suffix.lower() in TABLE_SUFFIXES:
        rows = read_rows(path)
        if "split" in columns(rows):
            if per_class is not None:
                raise PipelineError(
                    f"{spec}: its split column fixes which samples train and which validate; "
                    "drop --per-class, or the column to have a split drawn"
                )
            values = [row.get("split") for row in rows]
            return dataset, column_split(values, dataset.digests, str(path), first_line(path))
    if per_class is None and spec in BUILTINS:
        per_class = BUILTINS[spec].default_per_class
        if per_class and not quiet:
            print(f"{spec}: using {per_class} per class (set --per-class)", file=sys.stderr)
    if per_class is not None:
        dataset = dataset.subsample(per_class, seed).validate()
    return dataset, None


def _inputs(model: CandidateModel, dataset: Dataset, device: torch.device) -> Inputs:
    if dataset.modality != model.modality:
        raise PipelineError(
            f"{model.name} is a {model.modality} model and the dataset holds {dataset.modality}s"
        )
    if isinstance(model.recipe, ImageRecipe):
        return ImageInputs(dataset.samples, model.recipe, device)
    if dataset.kind != "plain":  # a pair or a word is no text the classifier takes
        held = "text pairs" if dataset.kind == "pairs" else "the words of tagged sentences"
        raise PipelineError(
            f"{dataset.name} holds {held}; fine-tuning trains a classifier of single texts, "
            "so this dataset can be ranked but not fine-tuned here"
        )
    texts = [str(text) for text in dataset.samples]
    return TextInputs(texts, model, text_input_names(model), device)


def finetune_model(
    model: CandidateModel,
    dataset: Dataset,
    split: Split,
    recipe: FineTuneRecipe,
    *,
    device: torch.device,
    precision: str = "auto",
    limits: Limits | None = None,
    progress: Progress | None = None,
    epoch_done: EpochDone | None = None,
    trained: Callable[[Classifier, list[str]], None] | None = None,
) -> FineTuneResult:
    """Fine-tune a loaded ``model`` (which is left as it was: the training works on a copy) on
    ``split.train`` of ``dataset`` and measure it on ``split.validation``. Raises what stops
    it (:class:`~workers.pipeline.finetune.networks.Untrainable`, ``Stopped``, ...).
    ``epoch_done``: called after each epoch's validation; ``trained``: given the trained
    network and its classes (the head's outputs, in order), e.g. to keep its weights."""
    limits = limits or Limits()
    began = time.monotonic()
    classes, codes = np.unique(dataset.labels, return_inverse=True)
    labels = torch.from_numpy(codes.astype(np.int64))
    dtype = autocast_dtype(device, precision)
    inputs = _inputs(model, dataset, device)
    torch.manual_seed(recipe.seed)  # the head's initial weights, then dropout
    example = _inputs(model, dataset, torch.device("cpu")).batch(split.train[:2].tolist(), None)
    net = build_classifier(model, len(classes), recipe.mode == "head", example)
    record = train(net, inputs, labels, split, recipe, model.modality, name=model.name,
                   device=device, dtype=dtype, limits=limits, progress=progress,
                   epoch_done=epoch_done)  # fmt: skip
    if trained is not None:
        trained(net, [str(c) for c in classes])
    shown = str(device) if dtype is None else f"{device} {_DTYPE_NAMES[dtype]}"
    return FineTuneResult(
        model=model.name,
        top1=record.val_top1[-1],
        epochs=round(record.epochs, 4),
        seconds=round(time.monotonic() - began, 3),
        device=shown,
        mode=recipe.mode,
        seed=recipe.seed,
        n_train=len(split.train),
        n_validation=len(split.validation),
        train_loss=record.train_loss,
        val_top1=record.val_top1,
        recipe={**recipe.resolved(model.modality), "split": split.describe},
        micro_batch=record.micro_batch,
        accumulation=record.accumulation,
    )


def finetune(
    dataset: Dataset,
    models: Sequence[str],
    recipe: FineTuneRecipe | None = None,
    *,
    split: Split | None = None,
    settings: Settings | None = None,
    device: str | None = None,
    limits: Limits | None = None,
    progress: Progress | None = None,
) -> list[FineTuneResult]:
    """Fine-tune each of ``models`` (zoo names or specs) on ``dataset``, one after another, and
    return one result each, in order; a model that fails has ``error`` set and the rest go on.

    ``split``: the held-out split (default: stratified by ``recipe.validation`` and seeded by
    ``recipe.seed``). ``device``: ``auto``, ``cpu`` or ``cuda`` (default ``TB_DEVICE``); on a
    GPU the forward passes autocast to ``TB_PRECISION``. ``limits``: the stop check, deadline and
    memory bound (:class:`~workers.pipeline.finetune.trainer.Limits`). ``progress``:
    ``(model, steps done, steps planned)`` after each step.
    """
    recipe = recipe or FineTuneRecipe()
    settings = settings or Settings.load()
    limits = limits or Limits()
    if split is None:
        split = stratified_split(dataset.labels, dataset.digests, recipe.validation, recipe.seed)
    configure(settings.num_threads)
    target = resolve_device(device or settings.device)
    # PyTorch, not the ONNX export: training needs the module itself
    load_settings = settings.model_copy(update={"runtime": "torch", "device": str(target)})
    results: list[FineTuneResult] = []
    for name in models:
        shown = str(target)
        try:
            limits.check("the start of the model")
            model = load_model(name, load_settings)
            result = finetune_model(model, dataset, split, recipe, device=target,
                                    precision=settings.precision, limits=limits,
                                    progress=progress)  # fmt: skip
            result.model = name
        except Exception as exc:  # any reason at all: that model's, not the run's
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            result = FineTuneResult(model=name, device=shown, mode=recipe.mode, seed=recipe.seed,
                                    n_train=len(split.train), n_validation=len(split.validation),
                                    error=reason)  # fmt: skip
        finally:
            if target.type == "cuda":
                torch.cuda.empty_cache()
        results.append(result)
    return results
