"""What every candidate model offers the pipeline."""

from __future__ import annotations

import contextlib
import warnings
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from workers.pipeline.errors import PipelineError
from workers.pipeline.layers import LayerChoice, LayersUnsupported, resolve
from workers.pipeline.models.preprocessing import ImageRecipe, Recipe, TextRecipe

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
_DTYPE_NAMES = {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}


@dataclass(frozen=True)
class ModelOutput:
    """One batch through a model.

    - ``features``: ``(B, D)`` float32, the chosen layer's activations.
    - ``probs``: ``(B, Z)`` float32 source-class probabilities (rows sum to 1), or ``None``
      for a model without a source classifier head.
    - ``layers``: from :meth:`CandidateModel.forward_layers`, the ``(B, D_i)`` float32
      features of the other layers asked for, in the order asked; empty otherwise.
    """

    features: np.ndarray
    probs: np.ndarray | None
    layers: tuple[np.ndarray, ...] = ()


@dataclass(frozen=True)
class ExportSpec:
    """What a PyTorch model hands the ONNX exporter (:mod:`workers.pipeline.models.exported`).

    - ``module``: the very ``nn.Module`` the PyTorch path runs: the feeds, positionally in the
      order of ``example``, -> ``(features (B, D),)`` or ``(features (B, D), logits (B, Z))``.
    - ``example``: input name -> tensor the graph is traced with; ``check``: other inputs (other
      batch size, other length) the exported graph is verified with against the module.
    - ``dynamic``: input name -> its dynamic axes, e.g. ``{0: "batch", 1: "tokens"}``.
    - ``weights``: fingerprint of the weights inside ``module`` (two models sharing a trunk
      share the exported file).
    - ``identity``: everything else that decides the graph (layer, input size, ...).
    - ``tracing``: a context the export runs in (e.g. attention traced as plain ops).
    """

    module: nn.Module
    example: dict[str, torch.Tensor]
    check: dict[str, torch.Tensor]
    dynamic: dict[str, dict[int, str]]
    outputs: tuple[str, ...]
    weights: str
    identity: dict[str, Any]
    tracing: Callable[[], AbstractContextManager[None]] = contextlib.nullcontext


class CandidateModel(ABC):
    """A loaded model plus everything the pipeline needs to run it and key its features.

    Subclasses set the attributes in ``__init__`` and implement :meth:`forward`.

    - ``name``: display name (a zoo name or the spec string).
    - ``source``: the spec it was loaded from, e.g. ``torchvision:resnet18``.
    - ``recipe``: :class:`ImageRecipe` or :class:`TextRecipe`.
    - ``layer``: which layer gives the features, e.g. ``penultimate:classifier.1``.
    - ``fingerprint``: sha256 of the weights (hex).
    - ``head_classes``: names of the source classes when it has a classifier head, else None.
    - ``runtime``: what computes the forward pass: ``torch`` (float32 on the CPU),
      ``torch-cuda-fp32`` / ``-bf16`` / ``-fp16`` (PyTorch on a GPU in that precision), or ONNX
      Runtime with its version; part of the feature cache key, so cached features never mix
      runtimes or precisions.
    - ``autocast_dtype``: the reduced precision the forward pass runs in (None: float32).
    - ``decode``: image models, where their input is decoded and resized (``TB_DECODE``):
      ``pil`` or ``device`` (:mod:`workers.pipeline.device_input`); part of the feature cache
      key when not ``pil``.
    - ``trunk``: set when the features come from an encoder that other models may share, with
      the head applied afterwards in :meth:`finish` (MiniLM with and without its intent head):
      models with equal trunks give equal features for a batch, so extraction runs it once.

    A model the optimised CPU runtime can run also implements :meth:`export_spec`,
    :meth:`feeds` and :meth:`finish`; its own :meth:`forward` is then
    ``finish(*module(*feeds(batch).values()))``, and the exported graph replaces only the middle.
    """

    name: str
    source: str
    recipe: Recipe
    layer: str
    fingerprint: str
    head_classes: tuple[str, ...] | None
    device: torch.device = torch.device("cpu")
    runtime: str = "torch"
    trunk: str | None = None
    autocast_dtype: torch.dtype | None = None
    decode: str = "pil"

    @property
    def modality(self) -> str:
        return "image" if isinstance(self.recipe, ImageRecipe) else "text"

    @property
    def has_head(self) -> bool:
        return self.head_classes is not None

    def describe(self) -> dict[str, Any]:
        """JSON-able summary, also stored next to cached features."""
        return {
            "name": self.name,
            "source": self.source,
            "modality": self.modality,
            "layer": self.layer,
            "fingerprint": self.fingerprint,
            "runtime": self.runtime,
            "recipe": self.recipe.to_dict(),
            "num_source_classes": len(self.head_classes) if self.head_classes else None,
        }

    def to(self, device: torch.device, precision: str = "auto") -> CandidateModel:
        """Move the weights to ``device`` and set the precision of the forward pass there
        (``TB_PRECISION``; see :func:`autocast_dtype`). A no-op for CPU-only runtimes."""
        return self

    def place(self, device: torch.device, precision: str) -> None:
        """Record where and in what precision a PyTorch forward pass runs: ``device``,
        ``autocast_dtype`` and the ``runtime`` name that keys the feature cache."""
        dtype = autocast_dtype(device, precision)
        self.device, self.autocast_dtype = device, dtype
        self.runtime = (
            "torch" if device.type == "cpu" else f"torch-{device.type}-{_DTYPE_NAMES[dtype]}"
        )

    def computing(self) -> AbstractContextManager[None]:
        """The context a PyTorch forward pass runs in: see :func:`computing`."""
        return computing(self.device, self.autocast_dtype)

    def tokenize(self, texts: list[str]) -> dict[str, torch.Tensor]:
        """Text models only: ``texts`` -> padded token tensors ``(B, T)``."""
        raise NotImplementedError(f"{self.name} is not a text model")

    def token_lengths(self, texts: list[str]) -> list[int]:
        """Text models: each text's length in tokens after truncation (batches of similar
        lengths pad less). This default counts characters."""
        return [len(t) for t in texts]

    def export_spec(self, extra: tuple[int, ...] = ()) -> ExportSpec | None:
        """How to export the forward pass to ONNX, or None for a model that cannot be. With
        ``extra`` (layer indices, the last excluded): a graph that also gives those layers,
        first, as :meth:`forward_layers` does."""
        return None

    def feeds(self, batch: Any) -> dict[str, torch.Tensor]:
        """The tensors :attr:`ExportSpec.module` takes for ``batch``, by input name."""
        raise NotImplementedError(f"{self.name} has no exportable forward pass")

    def finish(self, features: torch.Tensor, logits: torch.Tensor | None) -> ModelOutput:
        """The module's outputs ``(B, D)`` and ``(B, Z)`` -> :class:`ModelOutput` (softmax or the
        model's own head)."""
        raise NotImplementedError(f"{self.name} has no exportable forward pass")

    @abstractmethod
    def forward(self, batch: Any) -> ModelOutput:
        """Image models: ``(B, 3, H, W)`` uint8 tensor from the recipe's geometry.
        Text models: the dict :meth:`tokenize` returned. Runs without gradients."""

    # -- layers (see workers.pipeline.layers) ------------------------------------------------
    def layers_unsupported(self) -> str | None:
        """Why this model gives its last layer only, or None when it gives every layer of
        :meth:`layer_names`. This default: it has no other layer to give."""
        return (
            f"{self.name} gives only the layer it is loaded with ({self.layer}); "
            "rank it with layers=last"
        )

    def layer_names(self) -> tuple[str, ...]:
        """Every layer it can give, in forward order; the last is :attr:`layer` (so the last
        layer's cache key is the one its features always had)."""
        return (self.layer,)

    def select_layers(self, choice: LayerChoice) -> tuple[int, ...]:
        """The absolute indices of ``choice`` on this model; ``LayersUnsupported`` (with the
        reason) when it asks for more than the last layer of a model that gives only that."""
        if choice != "last":
            reason = self.layers_unsupported()
            if reason is not None:
                raise LayersUnsupported(reason)
        return resolve(choice, len(self.layer_names()), self.name)

    def for_layers(self, extra: tuple[int, ...]) -> CandidateModel:
        """The model that computes the layers ``extra`` (indices, the last excluded) beside
        its features in one forward pass: this one, or one it hands the work to (an ONNX
        Runtime model whose multi-layer graph failed: its PyTorch reference)."""
        return self

    def forward_layers(self, batch: Any, extra: tuple[int, ...]) -> ModelOutput:
        """:meth:`forward` that also gives the layers ``extra`` (indices, the last excluded)
        in ``ModelOutput.layers``, from the same forward pass."""
        if extra:
            raise LayersUnsupported(self.layers_unsupported() or f"{self.name}: no layers")
        return self.forward(batch)


def autocast_dtype(device: torch.device, precision: str) -> torch.dtype | None:
    """``TB_PRECISION`` on ``device`` -> the autocast dtype, None for float32.

    ``auto``: bf16 on a GPU that has it, else fp16; float32 on a CPU. ``fp32`` on a GPU turns
    TF32 off too (see :func:`computing`), so its features equal the CPU's to 1e-4.
    """
    if precision not in PRECISIONS:
        raise PipelineError(f"unknown precision {precision!r}: use {', '.join(PRECISIONS)}")
    if device.type != "cuda":
        if precision in ("bf16", "fp16"):
            raise PipelineError(
                f"TB_PRECISION={precision} applies to a CUDA device; on the CPU the forward pass "
                "computes in float32: unset TB_PRECISION, or set TB_DEVICE=cuda on a GPU machine"
            )
        return None
    if precision == "fp32":
        return None
    bf16 = torch.cuda.is_bf16_supported()
    if precision == "bf16" and not bf16:
        raise PipelineError("this GPU has no bfloat16: use TB_PRECISION=fp16 or fp32")
    if precision == "fp16" or (precision == "auto" and not bf16):
        return torch.float16
    return torch.bfloat16


@contextlib.contextmanager
def computing(device: torch.device, dtype: torch.dtype | None) -> Iterator[None]:
    """No gradients; on a GPU, autocast to ``dtype``, or for float32 (``dtype`` None) with
    TF32 off in matrix products and convolutions (PyTorch lets cuDNN use TF32 by default:
    about 1e-3 relative error), restored afterwards."""
    with torch.inference_mode():
        if device.type != "cuda":
            yield
        elif dtype is not None:
            with torch.autocast(device.type, dtype=dtype):
                yield
        else:
            matmul, cudnn = torch.backends.cuda.matmul, torch.backends.cudnn
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # newer PyTorch prefers fp32_precision
                saved = (matmul.allow_tf32, cudnn.allow_tf32)
                matmul.allow_tf32 = cudnn.allow_tf32 = False
            try:
                yield
            finally:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    matmul.allow_tf32, cudnn.allow_tf32 = saved


def softmax(logits: torch.Tensor) -> np.ndarray:
    """``(B, Z)`` logits -> ``(B, Z)`` float32 probabilities, computed in float32."""
    return torch.softmax(logits.float(), dim=-1).cpu().numpy().astype(np.float32, copy=False)


def random_images(recipe: ImageRecipe, n: int, seed: int) -> torch.Tensor:
    """``(n, 3, S, S)`` uint8 noise at the recipe's size, normalised by the recipe: the inputs
    an image model is exported and verified with."""
    generator = torch.Generator().manual_seed(seed)
    size = recipe.size
    raw = torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=generator)
    return recipe.normalize(raw)


def pool(activations: torch.Tensor, layout: str = "NCHW") -> torch.Tensor:
    """Any layer's output -> ``(B, D)``: global average over space, ``(B, C, H, W)`` or, for
    a model whose stages give ``layout="NHWC"`` (timm's Swin and its kin say so in their
    ``output_fmt``), ``(B, H, W, C)``; over tokens ``(B, T, C)``; other shapes flattened."""
    if activations.ndim == 4:
        return activations.mean(dim=(1, 2) if layout == "NHWC" else (2, 3))
    if activations.ndim == 3:
        return activations.mean(dim=1)
    return activations.reshape(activations.shape[0], -1)


__all__ = [
    "PRECISIONS",
    "CandidateModel",
    "ExportSpec",
    "ImageRecipe",
    "LayersUnsupported",
    "ModelOutput",
    "TextRecipe",
    "autocast_dtype",
    "computing",
    "pool",
    "random_images",
    "softmax",
]
