"""Fine-tuning: train the top candidates on the dataset and measure what they really reach.

A library the CLI (``transferbench finetune``) and the service's worker call alike:
:func:`finetune` takes a dataset and model names and returns one plain
:class:`FineTuneResult` per model (``model``, ``top1``, ``epochs``, ``seconds``, ``device``, the
per-epoch training loss and validation accuracy, the recipe, the seed and the sample counts);
a progress callback, a stop check and a deadline (:class:`Limits`) let a job report and end it.

The recipe (:class:`FineTuneRecipe`), and why
----------------------------------------------

The standard recipe for fine-tuning a pretrained classifier, as the literature on transfer
learning runs it (Kornblith et al. 2019, "Do Better ImageNet Models Transfer Better?"; the
timm and DeiT fine-tuning recipes for images; Devlin et al. 2019, BERT, for text):

- **A new linear head** on the features the ranking scores (the penultimate layer of an image
  model, the pooled embedding of a text encoder), initialised from the seed. The source head
  is left out: the target's classes are not the source's.
- **Full fine-tuning** (``mode="full"``, the default) trains every weight; **head only**
  (``mode="head"``, a linear probe) freezes the backbone, batch-norm statistics and dropout
  included, and trains the head alone: cheaper, and the better choice on very few samples.
- **AdamW** (Loshchilov & Hutter 2019), which needs little tuning of its rate across
  architectures (SGD with momentum wants a search per model). Learning rates: images 1e-4 for
  the backbone, text 5e-5 (BERT's range is 2e-5 to 5e-5); the new head 10x faster than the
  backbone in full mode (it starts from random weights); a head alone 1e-2 (a linear layer
  from random weights with few steps to learn in: at 1e-3 MobileNetV2's head reached 45% on
  500 Fashion-MNIST images in one epoch, at 1e-2 75%). Weight decay 0.05
  for images (DeiT, ConvNeXt fine-tuning), 0.01 for text (BERT), none on biases and
  normalisation weights.
- **Linear warm-up over the first 10% of steps, then cosine decay to 0** (Goyal et al. 2017;
  Loshchilov & Hutter, SGDR): the warm-up keeps the first large gradients of a random head
  from wrecking pretrained features. Gradients are clipped at norm 1 (BERT).
- **Label smoothing 0.1** (Szegedy et al. 2016), the usual guard against over-confidence on
  small targets.
- **The model's own preprocessing**: each model's resize, crop and normalisation (its
  :class:`~workers.pipeline.models.preprocessing.ImageRecipe`), its own tokenizer and max
  length, exactly as the ranking feeds it. **Light augmentation** for images: a random crop of
  80-100% of the area resized back, and a left-right flip half the time; none for text, none
  when validating.
- **Batch 32, 3 epochs** by default; a time budget per model may end training sooner (it stops
  at the next step, then validates).
- **On a GPU**, forward passes autocast to bf16 (fp16 with loss scaling where there is no bf16),
  as ``TB_PRECISION`` says; on a CPU, float32.

The accuracy reported is the last epoch's on the held-out split, not the best epoch's: picking
the best on the validation samples would tune on them. The same seed and data give the same
split and, on a CPU with the same thread count, the same result.

The split (:mod:`~workers.pipeline.finetune.split`): stratified and seeded, 20% of each class by
default (a fraction or a count per class), or the user's own from a ``split`` column of the
manifest; samples of identical content never sit on both sides.

Bounds: a batch that does not fit the device's memory is retried in micro-batches half the
size, gradients accumulating so the effective batch stays the recipe's; one sample at a time
that does not fit fails the model with that reason. A model PyTorch cannot train (an ONNX file;
a TorchScript without gradients, except head-only) fails alone, with the reason.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from workers.pipeline.finetune.networks import Untrainable
    from workers.pipeline.finetune.recipe import FineTuneRecipe, FineTuneResult
    from workers.pipeline.finetune.run import finetune, finetune_model, open_for_finetune
    from workers.pipeline.finetune.split import Split, column_split, stratified_split
    from workers.pipeline.finetune.trainer import Limits, Progress, Stopped

#: where each exported name lives: imported on first use, so that the recipe (torch-free) can be
#: validated by the API, which imports no torch (``from workers.pipeline.finetune.recipe``)
_HOMES = {
    "Untrainable": "networks",
    "FineTuneRecipe": "recipe",
    "FineTuneResult": "recipe",
    "finetune": "run",
    "finetune_model": "run",
    "open_for_finetune": "run",
    "Split": "split",
    "column_split": "split",
    "stratified_split": "split",
    "Limits": "trainer",
    "Progress": "trainer",
    "Stopped": "trainer",
}


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_HOMES[name]}"), name)


__all__ = [
    "FineTuneRecipe",
    "FineTuneResult",
    "Limits",
    "Progress",
    "Split",
    "Stopped",
    "Untrainable",
    "column_split",
    "finetune",
    "finetune_model",
    "open_for_finetune",
    "stratified_split",
]
