"""A candidate model as a trainable classifier: its backbone (a private copy, so the loaded
model and anything sharing its weights stay as they were) and a new linear head on the
features the ranking scores (the penultimate layer of an image model, the pooled embedding of
a text encoder), plus how a batch of samples becomes its input."""

from __future__ import annotations

import copy
import io
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn
from torchvision.transforms.v2 import functional as TF

from workers.pipeline.errors import PipelineError
from workers.pipeline.models.base import CandidateModel, pool
from workers.pipeline.models.exported import OnnxRuntimeModel
from workers.pipeline.models.onnx_image import OnnxImageModel
from workers.pipeline.models.preprocessing import ImageRecipe
from workers.pipeline.models.text import HFTextModel, SentenceTransformerModel
from workers.pipeline.models.torch_image import Tapped, TorchImageModel
from workers.pipeline.models.torchscript_image import TorchScriptImageModel

#: light augmentation: a random crop of this share of the image's area, resized back
CROP_SCALE = (0.8, 1.0)
CROP_RATIO = (3 / 4, 4 / 3)


class Untrainable(PipelineError):
    """A model the fine-tuner cannot train; the message says why and what to give instead."""


class ScriptedFeatures(nn.Module):
    """A TorchScript image module: ``x`` -> ``(features (B, D),)``, its first output pooled."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor]:
        out = self.module(x)
        return (pool(out[0] if isinstance(out, tuple | list) else out),)


class Classifier(nn.Module):
    """``backbone`` (inputs -> ``(features (B, D),)``) then ``head``, a new ``nn.Linear(D, K)``.

    ``frozen``: the backbone stays in eval mode (batch-norm statistics and dropout as
    pretrained) and runs without gradients; only the head trains.
    """

    def __init__(self, backbone: nn.Module, dim: int, classes: int, frozen: bool) -> None:
        super().__init__()
        self.backbone, self.head, self.frozen = backbone, nn.Linear(dim, classes), frozen
        if frozen:
            self.backbone.requires_grad_(False)

    def train(self, mode: bool = True) -> Classifier:
        super().train(mode)
        if self.frozen:
            self.backbone.eval()
        return self

    def forward(self, inputs: Any) -> torch.Tensor:
        """``inputs``: a ``(B, 3, S, S)`` float batch or a dict of ``(B, T)`` token tensors
        -> ``(B, K)`` logits."""
        args = tuple(inputs.values()) if isinstance(inputs, dict) else (inputs,)
        with torch.no_grad() if self.frozen else torch.enable_grad():
            (features,) = self.backbone(*args)
        logits: torch.Tensor = self.head(features)
        return logits


class ImageInputs:
    """Image samples -> normalised float batches on ``device``: decoded and resized as the
    model's recipe says, with the light augmentation when a generator is given."""

    def __init__(self, samples: Sequence[Any], recipe: ImageRecipe, device: torch.device) -> None:
        self.samples, self.recipe, self.device = samples, recipe, device

    def batch(self, rows: Sequence[int], generator: torch.Generator | None) -> torch.Tensor:
        """``rows`` -> ``(B, 3, S, S)`` float, channels-last. ``generator``: draws each
        sample's augmentation in row order (None: none, as for validation)."""
        size = self.recipe.size
        out = torch.empty((len(rows), 3, size, size), dtype=torch.uint8)
        for j, row in enumerate(rows):
            pixels = self.recipe.geometry(self.samples[row].load(draft=self.recipe.resize))
            out[j] = pixels if generator is None else augment(pixels, generator)
        return self.recipe.normalize(
            out.to(self.device, non_blocking=True), memory_format=torch.channels_last
        )


def augment(pixels: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """``(3, S, S)`` uint8 -> a random crop of 80-100% of its area (aspect 3/4..4/3) resized
    back to ``S``, flipped left-right half the time. Three draws from ``generator`` per image."""
    size = pixels.shape[-1]
    area, log_ratio, flip = torch.rand(3, generator=generator).tolist()
    scale = CROP_SCALE[0] + area * (CROP_SCALE[1] - CROP_SCALE[0])
    low, high = np.log(CROP_RATIO[0]), np.log(CROP_RATIO[1])
    ratio = float(np.exp(low + log_ratio * (high - low)))
    width = min(size, round(size * np.sqrt(scale * ratio)))
    height = min(size, round(size * np.sqrt(scale / ratio)))
    top = int(torch.randint(0, size - height + 1, (1,), generator=generator))
    left = int(torch.randint(0, size - width + 1, (1,), generator=generator))
    crop: torch.Tensor = TF.resized_crop(pixels, top, left, height, width, [size, size],
                                         antialias=True)  # fmt: skip
    flipped: torch.Tensor = TF.horizontal_flip(crop) if flip < 0.5 else crop
    return flipped


class TextInputs:
    """Texts -> token tensors on ``device``, tokenised by the model exactly as the ranking
    tokenises them (its tokenizer, its max length)."""

    def __init__(self, texts: Sequence[str], model: CandidateModel, names: Sequence[str],
                 device: torch.device) -> None:  # fmt: skip
        self.texts, self.model, self.names, self.device = texts, model, tuple(names), device

    def batch(self, rows: Sequence[int], generator: torch.Generator | None) -> dict[str, Any]:
        tokens = self.model.tokenize([self.texts[row] for row in rows])
        return {name: tokens[name].to(self.device) for name in self.names}


def trainable_parts(model: CandidateModel) -> nn.Module:
    """The module that computes ``model``'s features, as a private copy on the CPU; an
    :class:`Untrainable` error for a model whose weights PyTorch cannot train."""
    if isinstance(model, OnnxRuntimeModel):
        model = model.reference
    if isinstance(model, OnnxImageModel):
        raise Untrainable(
            f"{model.name} is an ONNX file: ONNX Runtime runs it but computes no gradients, so it "
            "cannot be fine-tuned; give the model in a PyTorch form (torchvision:, timm:, "
            "statedict:, or torchscript:)"
        )
    if isinstance(model, TorchImageModel):
        module = copy.deepcopy(model.module).cpu()
        return Tapped(module, model.net.tap, model.net.capture, logits=False)
    if isinstance(model, TorchScriptImageModel):
        # saved and loaded again: a deep copy of a scripted module gives weights that are not
        # leaves of the autograd graph, which no optimiser can step
        buffer = io.BytesIO()
        torch.jit.save(model.module, buffer)
        buffer.seek(0)
        scripted = torch.jit.load(buffer, map_location="cpu")  # type: ignore[no-untyped-call]
        return ScriptedFeatures(scripted)
    if isinstance(model, HFTextModel | SentenceTransformerModel):
        return copy.deepcopy(model.net).cpu()
    raise Untrainable(f"{model.name}: a {type(model).__name__} cannot be fine-tuned here")


def build_classifier(model: CandidateModel, classes: int, frozen: bool, example: Any) -> Classifier:
    """``model``'s backbone with a new ``classes``-way head (seeded by the caller's torch
    seed). ``example``: a small input batch, to learn the feature width. A backbone with no
    parameter that takes gradients can only be trained ``frozen``."""
    backbone = trainable_parts(model)
    if not frozen and not any(p.requires_grad for p in backbone.parameters()):
        raise Untrainable(
            f"{model.name} has no weights that take gradients (a frozen TorchScript?), so only "
            "its head can be trained: fine-tune it head-only, or give an unfrozen model"
        )
    backbone.eval()
    args = tuple(example.values()) if isinstance(example, dict) else (example,)
    with torch.no_grad():
        (features,) = backbone(*(a.cpu() for a in args))
    return Classifier(backbone, int(features.shape[-1]), classes, frozen)


def text_input_names(model: CandidateModel) -> tuple[str, ...]:
    """The token tensors a text model's encoder takes, in its order."""
    reference = model.reference if isinstance(model, OnnxRuntimeModel) else model
    names: tuple[str, ...] = reference.net.names  # type: ignore[attr-defined]
    return names
