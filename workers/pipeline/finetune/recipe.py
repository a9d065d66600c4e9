"""What a fine-tuning run is asked to do (:class:`FineTuneRecipe`) and what it reports for each
model (:class:`FineTuneResult`). The defaults and the reasons for them are in the package's
docstring (:mod:`workers.pipeline.finetune`)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from scoring.recommend import binomial_se
from workers.pipeline.errors import PipelineError

Mode = Literal["full", "head"]
MODES: tuple[Mode, ...] = ("full", "head")

#: learning rates by (mode, modality): the backbone's in ``full`` mode, the head's in ``head``
DEFAULT_LEARNING_RATES: dict[tuple[str, str], float] = {
    ("full", "image"): 1e-4,
    ("full", "text"): 5e-5,
    ("head", "image"): 1e-2,
    ("head", "text"): 1e-2,
}
#: AdamW weight decay by modality
DEFAULT_WEIGHT_DECAY = {"image": 0.05, "text": 0.01}
#: in ``full`` mode the new head learns this many times faster than the pretrained backbone
HEAD_LR_SCALE = 10.0


@dataclass(frozen=True)
class FineTuneRecipe:
    """How each model is fine-tuned; every field has a default (see the package docstring).

    - ``mode``: ``full`` (every weight trains) or ``head`` (the backbone frozen, a new linear
      head on its features trains).
    - ``epochs``: passes over the training samples; ``time_budget_s``: seconds of training per
      model, after which it stops at its next step (then validates); either may end a run.
    - ``learning_rate``, ``weight_decay``: None takes the default for the mode and modality.
    - ``batch_size``: samples per optimiser step (the effective batch: a smaller micro-batch
      with gradient accumulation keeps it when memory is short).
    - ``warmup``: the fraction of the planned steps the learning rate warms up over, linearly
      from 0, before a cosine decay to 0.
    - ``validation``: the held-out split when the dataset brings none: a fraction of each class
      (``0 < v < 1``) or a count per class (an integer >= 1).
    - ``seed``: the split, the head's initial weights, the sample order and the augmentation.
    """

    mode: Mode = "full"
    epochs: int = 3
    time_budget_s: float | None = None
    learning_rate: float | None = None
    batch_size: int = 32
    weight_decay: float | None = None
    seed: int = 0
    warmup: float = 0.1
    label_smoothing: float = 0.1
    augment: bool = True
    validation: float | int = 0.2

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise PipelineError(f"unknown fine-tuning mode {self.mode!r}: use full or head")
        if not isinstance(self.epochs, int) or self.epochs < 1:
            raise PipelineError(f"epochs must be a whole number >= 1, got {self.epochs!r}")
        if self.time_budget_s is not None and not self.time_budget_s > 0:
            raise PipelineError(f"the time budget must be > 0 seconds, got {self.time_budget_s}")
        for name in ("learning_rate", "weight_decay"):
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and value >= 0):
                raise PipelineError(f"{name} must be a finite number >= 0, got {value!r}")
        if self.learning_rate == 0:
            raise PipelineError("learning_rate must be > 0: at 0 nothing would train")
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise PipelineError(f"batch size must be a whole number >= 1, got {self.batch_size!r}")
        if not 0 <= self.warmup < 1:
            raise PipelineError(f"warmup is a fraction of the steps in [0, 1), got {self.warmup}")
        if not 0 <= self.label_smoothing < 1:
            raise PipelineError(f"label smoothing must be in [0, 1), got {self.label_smoothing}")
        check_validation(self.validation)

    def learning_rate_for(self, modality: str) -> float:
        return self.learning_rate or DEFAULT_LEARNING_RATES[(self.mode, modality)]

    def weight_decay_for(self, modality: str) -> float:
        if self.weight_decay is not None:
            return self.weight_decay
        return DEFAULT_WEIGHT_DECAY[modality]

    def resolved(self, modality: str) -> dict[str, Any]:
        """The recipe as run on a model of ``modality``: every default filled in (JSON-able)."""
        return {
            **asdict(self),
            "learning_rate": self.learning_rate_for(modality),
            "head_learning_rate": self.learning_rate_for(modality)
            * (HEAD_LR_SCALE if self.mode == "full" else 1.0),
            "weight_decay": self.weight_decay_for(modality),
            "optimizer": "AdamW",
            "schedule": "linear warm-up, cosine decay",
            "gradient_clip_norm": GRADIENT_CLIP_NORM,
        }


#: the largest gradient norm an optimiser step takes (clipped above), as BERT's recipe does
GRADIENT_CLIP_NORM = 1.0


def check_validation(validation: float | int) -> None:
    """A held-out size is a fraction in (0, 1) or a whole count per class >= 1."""
    if isinstance(validation, bool) or not isinstance(validation, int | float):
        raise PipelineError(f"validation must be a fraction or a count, got {validation!r}")
    if isinstance(validation, int):
        if validation < 1:
            raise PipelineError(
                f"validation count per class must be >= 1, got {validation}; or give a "
                "fraction such as 0.2"
            )
    elif not 0 < validation < 1:
        raise PipelineError(
            f"validation fraction must be between 0 and 1, got {validation}; or give a whole "
            "count per class such as 5"
        )


def top1_se(top1: float | None, n_validation: int) -> float | None:
    """The standard error of a held-out top-1 (a fraction, as ``FineTuneResult.top1``)
    measured on ``n_validation`` samples (binomial: how far it could move by which samples
    were held out), rounded to 1e-6; None when there is none. Stored as the outcome's
    ``details["se"]``: the recommender counts a dataset by how much of its outcomes' spread
    exceeds it (``scoring.reliability``)."""
    if top1 is None:
        return None
    se = binomial_se(top1, n_validation, scale=1.0)
    return None if math.isnan(se) else round(se, 6)


def top1_outcome(top1: float, n_validation: int) -> tuple[float, float | None]:
    """A held-out top-1 (a fraction, as ``FineTuneResult.top1``) as the ``finetune_top1``
    outcome it is stored as: in percent, the unit of the reference tables, the ground truth
    and an outcome typed in (``outcomes add DATASET MODEL 91.2``), so that a dataset's
    outcomes, and a mean regret over datasets, are in one unit; and its binomial standard
    error in points (``top1_se`` times 100), or None."""
    se = top1_se(top1, n_validation)
    return round(100.0 * top1, 6), None if se is None else round(100.0 * se, 6)


@dataclass
class FineTuneResult:
    """One model's fine-tuning: what it reached and how.

    ``top1``: accuracy on the held-out validation samples after the last epoch (None when the
    model failed; ``error`` says why). ``epochs``: the epochs run, a fraction when a time
    budget ended one early. ``train_loss`` and ``val_top1``: one value per epoch (the mean
    training loss over the epoch, then the validation accuracy after it). ``micro_batch``:
    the samples per forward pass (below ``batch_size`` when memory was short; gradients
    accumulate over ``accumulation`` of them).
    """

    model: str
    top1: float | None = None
    epochs: float = 0.0
    seconds: float = 0.0
    device: str = "cpu"
    mode: str = "full"
    seed: int = 0
    n_train: int = 0
    n_validation: int = 0
    train_loss: list[float] = field(default_factory=list)
    val_top1: list[float] = field(default_factory=list)
    recipe: dict[str, Any] = field(default_factory=dict)
    micro_batch: int | None = None
    accumulation: int | None = None
    error: str | None = None

    @property
    def failed(self) -> bool:
        return self.error is not None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
