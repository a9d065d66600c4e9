"""Image models saved as TorchScript files.

TorchScript graphs cannot be hooked, so the file states its outputs: a module returning a
tensor gives features (pooled to ``(B, D)``), no head; one returning a ``(features, logits)``
tuple also gives source-class probabilities.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from workers.pipeline.errors import PipelineError
from workers.pipeline.models.base import CandidateModel, ModelOutput, pool, softmax
from workers.pipeline.models.fingerprint import file_sha256
from workers.pipeline.models.preprocessing import ImageRecipe


class TorchScriptImageModel(CandidateModel):
    """A ``torch.jit`` file: ``forward(x: (B, 3, H, W) float)`` -> features, or
    (features, logits)."""

    def __init__(
        self, *, name: str, source: str, path: Path, recipe: ImageRecipe, has_head: bool
    ) -> None:
        if not path.is_file():
            raise PipelineError(f"TorchScript file not found: {path}")
        try:
            # torch.jit.load reads a graph and tensors, never pickled Python objects.
            self.module = torch.jit.load(str(path), map_location="cpu").eval()  # type: ignore[no-untyped-call]  # torch.jit.load is unannotated
        except Exception as exc:
            raise PipelineError(
                f"{path}: not a TorchScript file ({exc.__class__.__name__}); "
                "save one with torch.jit.script(model).save(path)"
            ) from exc
        self.name = name
        self.source = source
        self.recipe: ImageRecipe = recipe
        self.layer = "output[0]" if has_head else "output"
        self.fingerprint = file_sha256(path)
        self._has_head = has_head
        self.head_classes = None  # known after the first batch, see forward

    def to(self, device: torch.device) -> TorchScriptImageModel:
        self.device = device
        self.module.to(device)
        return self

    def forward(self, batch: torch.Tensor) -> ModelOutput:
        x = self.recipe.normalize(batch.to(self.device))
        with torch.inference_mode():
            out = self.module(x)
        if isinstance(out, tuple | list):
            if not self._has_head or len(out) != 2:
                raise PipelineError(
                    f"{self.name}: the module returned {len(out)} outputs; "
                    "expected a tensor, or (features, logits) with ?head=1"
                )
            feats, logits = out
            probs = softmax(logits)
            if self.head_classes is None:
                self.head_classes = tuple(str(i) for i in range(probs.shape[1]))
        else:
            if self._has_head:
                raise PipelineError(
                    f"{self.name}: ?head=1 but the module returned one tensor, not "
                    "(features, logits)"
                )
            feats, probs = out, None
        return ModelOutput(pool(feats).float().cpu().numpy().astype(np.float32), probs)

    @property
    def has_head(self) -> bool:
        return self._has_head
