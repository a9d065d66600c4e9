"""The training loop of one model: AdamW, warm-up then cosine decay, autocast on a GPU,
gradient accumulation when memory is short, a stop check every step, validation every epoch."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

from workers.pipeline.errors import PipelineError
from workers.pipeline.extraction import _is_oom
from workers.pipeline.finetune.networks import Classifier
from workers.pipeline.finetune.recipe import GRADIENT_CLIP_NORM, HEAD_LR_SCALE, FineTuneRecipe
from workers.pipeline.finetune.split import Split

#: ``(model, steps done, steps planned)`` after every optimiser step
Progress = Callable[[str, int, int], None]
#: ``(epochs done, that epoch's mean training loss, validation top-1 after it)``
EpochDone = Callable[[int, float, float], None]


class Inputs(Protocol):
    def batch(self, rows: Sequence[int], generator: torch.Generator | None) -> Any: ...


class Stopped(PipelineError):
    """The run was told to stop (cancelled, or past its deadline) in the middle of a model."""


@dataclass
class Training:
    """What the loop did: per-epoch mean loss and validation accuracy, epochs run (a fraction
    when the time budget ended one early), and the micro-batch it settled on."""

    train_loss: list[float] = field(default_factory=list)
    val_top1: list[float] = field(default_factory=list)
    epochs: float = 0.0
    micro_batch: int = 0
    accumulation: int = 1


@dataclass(frozen=True)
class Limits:
    """When to stop, and how much memory to assume.

    - ``should_stop``: asked before every step; True stops the model (a cancelled job).
    - ``deadline``: a ``time.monotonic()`` instant after which the model stops at its next step
      (the job's timeout).
    - ``max_micro_batch``: the most samples one forward pass may take (None: the recipe's
      batch); a batch over it is run in micro-batches with accumulated gradients.
    """

    should_stop: Callable[[], bool] | None = None
    deadline: float | None = None
    max_micro_batch: int | None = None

    def check(self, where: str) -> None:
        if self.should_stop is not None and self.should_stop():
            raise Stopped(f"stopped at {where}: the run was cancelled")
        if self.deadline is not None and time.monotonic() >= self.deadline:
            raise Stopped(f"stopped at {where}: the job's time ran out")


def schedule(step: int, total: int, warmup: float) -> float:
    """The learning-rate factor at optimiser step ``step`` (0-based) of ``total``: linear
    warm-up over ``ceil(warmup * total)`` steps, then a half cosine from 1 to 0."""
    warm = math.ceil(warmup * total)
    if step < warm:
        return (step + 1) / warm
    progress = (step - warm) / max(1, total - warm)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def _step_generator(seed: int, epoch: int, step: int) -> torch.Generator:
    """A generator for one step's augmentation: the same for a retried step, and for any
    micro-batching of it."""
    words = np.random.SeedSequence([seed, epoch, step]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(words[0]) << 32 | int(words[1]))


def optimizer_for(net: Classifier, recipe: FineTuneRecipe, modality: str) -> torch.optim.AdamW:
    """AdamW; in full mode the head at ``HEAD_LR_SCALE`` times the backbone's rate. Biases and
    normalisation weights (1-D tensors) decay by nothing, as is usual for AdamW."""
    lr, decay = recipe.learning_rate_for(modality), recipe.weight_decay_for(modality)
    head_lr = lr * HEAD_LR_SCALE if recipe.mode == "full" else lr
    groups: list[dict[str, Any]] = []
    for part, rate in ((net.backbone, lr), (net.head, head_lr)):
        params = [p for p in part.parameters() if p.requires_grad]  # none when frozen
        decayed = [p for p in params if p.ndim > 1]
        plain = [p for p in params if p.ndim <= 1]
        groups += [{"params": decayed, "lr": rate, "weight_decay": decay, "base_lr": rate},
                   {"params": plain, "lr": rate, "weight_decay": 0.0, "base_lr": rate}]  # fmt: skip
    return torch.optim.AdamW([g for g in groups if g["params"]])


def _autocast(device: torch.device, dtype: torch.dtype | None) -> Any:
    if device.type == "cuda" and dtype is not None:
        return torch.autocast("cuda", dtype=dtype)
    return torch.autocast(device.type, enabled=False)


def train(
    net: Classifier,
    inputs: Inputs,
    labels: torch.Tensor,
    split: Split,
    recipe: FineTuneRecipe,
    modality: str,
    *,
    name: str,
    device: torch.device,
    dtype: torch.dtype | None,
    limits: Limits,
    progress: Progress | None = None,
    epoch_done: EpochDone | None = None,
) -> Training:
    """Train ``net`` on ``split.train`` and measure it on ``split.validation`` after each
    epoch; ``labels``: ``(N,)`` int64 class codes of every row. Raises :class:`Stopped` when
    ``limits`` say so, :class:`PipelineError` when one sample at a time does not fit memory."""
    net.to(device)
    optimizer = optimizer_for(net, recipe, modality)
    scaler = torch.amp.GradScaler("cuda", enabled=device.type == "cuda" and dtype == torch.float16)
    loss_fn = nn.CrossEntropyLoss(reduction="sum", label_smoothing=recipe.label_smoothing)
    batch = recipe.batch_size
    per_epoch = math.ceil(len(split.train) / batch)
    total = per_epoch * recipe.epochs
    micro = min(batch, limits.max_micro_batch or batch)
    record = Training(micro_batch=micro)
    order_rng = np.random.default_rng(recipe.seed)
    began, step = time.monotonic(), 0
    budget_over = False
    for epoch in range(recipe.epochs):
        net.train()
        order = split.train[order_rng.permutation(len(split.train))]
        losses: list[float] = []
        seen = 0  # samples stepped on this epoch: all of them unless a time budget ends it
        for start in range(0, len(order), batch):
            limits.check(f"epoch {epoch + 1}, step {step + 1}")
            rows = order[start : start + batch]
            factor = schedule(step, total, recipe.warmup)
            for group in optimizer.param_groups:
                group["lr"] = group["base_lr"] * factor
            while True:
                try:
                    loss = _step(net, inputs, labels, rows, micro, recipe, device, dtype,
                                 loss_fn, optimizer, scaler, _step_generator(recipe.seed, epoch,
                                                                             step))  # fmt: skip
                    break
                except Exception as exc:
                    if not _is_oom(exc):
                        raise
                    optimizer.zero_grad(set_to_none=True)
                    del exc
                    if device.type == "cuda":
                        torch.cuda.empty_cache()
                    if micro == 1:
                        raise PipelineError(
                            f"{name} does not fit the memory of {device} even one sample at a "
                            "time; use a smaller model, a device with more memory, or "
                            "head-only fine-tuning"
                        ) from None
                    micro = max(1, micro // 2)
            losses.append(loss)
            seen += len(rows)
            step += 1
            if progress is not None:
                progress(name, step, total)
            budget = recipe.time_budget_s
            if budget is not None and time.monotonic() - began >= budget:
                budget_over = True
                record.epochs = epoch + (start + len(rows)) / len(order)
                break
        # the mean loss over the samples this epoch stepped on (a time budget may end it early)
        record.train_loss.append(float(np.sum(losses) / seen) if seen else 0.0)
        record.val_top1.append(evaluate(net, inputs, labels, split.validation, micro, device,
                                        dtype, limits))  # fmt: skip
        if epoch_done is not None:
            epoch_done(len(record.val_top1), record.train_loss[-1], record.val_top1[-1])
        if budget_over:
            break
        record.epochs = epoch + 1
    record.micro_batch, record.accumulation = micro, math.ceil(batch / micro)
    return record


def _step(
    net: nn.Module,
    inputs: Inputs,
    labels: torch.Tensor,
    rows: np.ndarray,
    micro: int,
    recipe: FineTuneRecipe,
    device: torch.device,
    dtype: torch.dtype | None,
    loss_fn: nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    generator: torch.Generator,
) -> float:
    """One optimiser step over ``rows``, in micro-batches of ``micro`` whose gradients add up
    to the mean over all ``rows``; returns the summed loss over ``rows``."""
    optimizer.zero_grad(set_to_none=True)
    total = 0.0
    for start in range(0, len(rows), micro):
        chunk = rows[start : start + micro]
        x = inputs.batch(chunk.tolist(), generator if recipe.augment else None)
        y = labels[torch.from_numpy(chunk)].to(device)
        with _autocast(device, dtype):
            logits = net(x)
        loss = loss_fn(logits.float(), y)
        scaler.scale(loss / len(rows)).backward()
        total += float(loss.detach())
    scaler.unscale_(optimizer)
    params = [p for group in optimizer.param_groups for p in group["params"]]
    torch.nn.utils.clip_grad_norm_(params, GRADIENT_CLIP_NORM)
    scaler.step(optimizer)
    scaler.update()
    return total


def evaluate(
    net: nn.Module,
    inputs: Inputs,
    labels: torch.Tensor,
    rows: np.ndarray,
    micro: int,
    device: torch.device,
    dtype: torch.dtype | None,
    limits: Limits,
) -> float:
    """Top-1 accuracy of ``net`` on ``rows`` (no augmentation, eval mode)."""
    net.eval()
    correct = 0
    with torch.no_grad():
        for start in range(0, len(rows), micro):
            limits.check("validation")
            chunk = rows[start : start + micro]
            with _autocast(device, dtype):
                logits = net(inputs.batch(chunk.tolist(), None))
            predicted = logits.float().argmax(dim=-1).cpu()
            correct += int((predicted == labels[torch.from_numpy(chunk)]).sum())
    return correct / len(rows)
