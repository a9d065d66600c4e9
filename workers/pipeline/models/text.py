"""Text encoders: Hugging Face transformers and sentence-transformers, with an optional
linear head (weights as plain arrays) on top."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from workers.pipeline.models.base import CandidateModel, ModelOutput, softmax
from workers.pipeline.models.fingerprint import module_sha256, tensors_sha256
from workers.pipeline.models.preprocessing import TextRecipe


@dataclass(frozen=True)
class LinearHead:
    """A source classifier as plain arrays: ``probs = softmax(x @ weight.T + bias)``.

    - ``weight``: ``(Z, D)`` float32, ``bias``: ``(Z,)`` float32, ``classes``: Z names.
    - ``normalize_input``: L2-normalise ``x`` first (the head was fitted on unit embeddings).
    """

    weight: np.ndarray
    bias: np.ndarray
    classes: tuple[str, ...]
    normalize_input: bool = False

    def __call__(self, features: torch.Tensor) -> np.ndarray:
        """``features``: ``(B, D)`` -> ``(B, Z)`` float32 probabilities."""
        x = features.float().cpu()
        if self.normalize_input:
            x = torch.nn.functional.normalize(x, dim=-1)
        logits = x @ torch.from_numpy(self.weight).T + torch.from_numpy(self.bias)
        return softmax(logits)

    def fingerprint(self) -> str:
        return tensors_sha256({"weight": self.weight, "bias": self.bias}, salt=str(self.classes))


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``hidden``: ``(B, T, D)``, ``mask``: ``(B, T)`` -> ``(B, D)`` mean over real tokens."""
    weights = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1e-9)


class HFTextModel(CandidateModel):
    """A transformers encoder (``AutoModel``); features: mean-pooled last hidden state."""

    def __init__(
        self,
        *,
        name: str,
        source: str,
        model: Any,
        tokenizer: Any,
        recipe: TextRecipe,
        head: LinearHead | None = None,
    ) -> None:
        self.name = name
        self.source = source
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.recipe: TextRecipe = recipe
        self.head = head
        self.layer = "last_hidden_state:mean"
        weights = module_sha256(model)
        self.fingerprint = tensors_sha256(
            {}, salt=f"{weights}|{head.fingerprint() if head else ''}"
        )
        self.head_classes = head.classes if head else None

    def to(self, device: torch.device) -> HFTextModel:
        self.device = device
        self.model.to(device)
        return self

    def tokenize(self, texts: list[str]) -> dict[str, torch.Tensor]:
        encoded = self.tokenizer(
            texts,
            padding=True,
            truncation=True,
            max_length=self.recipe.max_length,
            return_tensors="pt",
        )
        return dict(encoded)

    def forward(self, batch: dict[str, torch.Tensor]) -> ModelOutput:
        """``batch``: token tensors ``(B, T)`` -> features ``(B, D)``, probs ``(B, Z)``."""
        inputs = {k: v.to(self.device) for k, v in batch.items()}
        with torch.inference_mode():
            hidden = self.model(**inputs).last_hidden_state
            feats = mean_pool(hidden, inputs["attention_mask"]).float()
        probs = self.head(feats) if self.head is not None else None
        return ModelOutput(feats.cpu().numpy().astype(np.float32), probs)


class SentenceTransformerModel(CandidateModel):
    """A sentence-transformers pipeline; features: its ``sentence_embedding`` (its own
    pooling and normalisation)."""

    def __init__(self, *, name: str, source: str, model: Any, recipe: TextRecipe) -> None:
        self.name = name
        self.source = source
        self.model = model.eval()
        self.recipe: TextRecipe = recipe
        self.layer = "sentence_embedding"
        self.fingerprint = module_sha256(model)
        self.head_classes = None

    def to(self, device: torch.device) -> SentenceTransformerModel:
        self.device = device
        self.model.to(device)
        return self

    def tokenize(self, texts: list[str]) -> dict[str, torch.Tensor]:
        # sentence-transformers 6 renamed tokenize() to preprocess().
        prepare = getattr(self.model, "preprocess", None) or self.model.tokenize
        return dict(prepare(texts))

    def forward(self, batch: dict[str, torch.Tensor]) -> ModelOutput:
        inputs = {
            k: v.to(self.device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()
        }
        with torch.inference_mode():
            feats = self.model(inputs)["sentence_embedding"].float()
        return ModelOutput(feats.cpu().numpy().astype(np.float32), None)
