"""What every candidate model offers the pipeline."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from workers.pipeline.models.preprocessing import ImageRecipe, Recipe, TextRecipe


@dataclass(frozen=True)
class ModelOutput:
    """One batch through a model.

    - ``features``: ``(B, D)`` float32, the chosen layer's activations.
    - ``probs``: ``(B, Z)`` float32 source-class probabilities (rows sum to 1), or ``None``
      for a model without a source classifier head.
    """

    features: np.ndarray
    probs: np.ndarray | None


class CandidateModel(ABC):
    """A loaded model plus everything the pipeline needs to run it and key its features.

    Subclasses set the attributes in ``__init__`` and implement :meth:`forward`.

    - ``name``: display name (a zoo name or the spec string).
    - ``source``: the spec it was loaded from, e.g. ``torchvision:resnet18``.
    - ``recipe``: :class:`ImageRecipe` or :class:`TextRecipe`.
    - ``layer``: which layer gives the features, e.g. ``penultimate:classifier.1``.
    - ``fingerprint``: sha256 of the weights (hex).
    - ``head_classes``: names of the source classes when it has a classifier head, else None.
    """

    name: str
    source: str
    recipe: Recipe
    layer: str
    fingerprint: str
    head_classes: tuple[str, ...] | None
    device: torch.device = torch.device("cpu")

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
            "recipe": self.recipe.to_dict(),
            "num_source_classes": len(self.head_classes) if self.head_classes else None,
        }

    def to(self, device: torch.device) -> CandidateModel:
        """Move the weights to ``device`` (a no-op for CPU-only runtimes)."""
        self.device = device
        return self

    def tokenize(self, texts: list[str]) -> dict[str, torch.Tensor]:
        """Text models only: ``texts`` -> padded token tensors ``(B, T)``."""
        raise NotImplementedError(f"{self.name} is not a text model")

    @abstractmethod
    def forward(self, batch: Any) -> ModelOutput:
        """Image models: ``(B, 3, H, W)`` uint8 tensor from the recipe's geometry.
        Text models: the dict :meth:`tokenize` returned. Runs without gradients."""


def softmax(logits: torch.Tensor) -> np.ndarray:
    """``(B, Z)`` logits -> ``(B, Z)`` float32 probabilities, computed in float32."""
    return torch.softmax(logits.float(), dim=-1).cpu().numpy().astype(np.float32, copy=False)


def pool(activations: torch.Tensor) -> torch.Tensor:
    """Any layer's output -> ``(B, D)``: global average over space ``(B, C, H, W)`` or over
    tokens ``(B, T, C)``; other shapes are flattened."""
    if activations.ndim == 4:
        return activations.mean(dim=(2, 3))
    if activations.ndim == 3:
        return activations.mean(dim=1)
    return activations.reshape(activations.shape[0], -1)


__all__ = ["CandidateModel", "ImageRecipe", "ModelOutput", "TextRecipe", "pool", "softmax"]
