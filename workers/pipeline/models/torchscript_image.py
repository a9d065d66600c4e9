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
from workers.pipeline.models.base import (
    CandidateModel,
    ExportSpec,
    ModelOutput,
    pool,
    random_images,
    softmax,
)
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
        self.head_classes = None  # known after the first batch, see finish

    def to(self, device: torch.device, precision: str = "auto") -> TorchScriptImageModel:
        self.place(device, precision)
        self.module.to(device)
        return self

    def feeds(self, batch: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"pixels": self.recipe.normalize(batch.to(self.device))}

    def finish(self, features: torch.Tensor, logits: torch.Tensor | None) -> ModelOutput:
        """The module's outputs (features of any shape, pooled here) -> :class:`ModelOutput`."""
        if logits is not None and not self._has_head:
            raise PipelineError(
                f"{self.name}: the module returned 2 outputs; expected a tensor, or "
                "(features, logits) with ?head=1"
            )
        if logits is None and self._has_head:
            raise PipelineError(
                f"{self.name}: ?head=1 but the module returned one tensor, not (features, logits)"
            )
        probs = None
        if logits is not None:
            probs = softmax(logits)
            if self.head_classes is None:
                self.head_classes = tuple(str(i) for i in range(probs.shape[1]))
        return ModelOutput(pool(features).float().cpu().numpy().astype(np.float32), probs)

    def forward(self, batch: torch.Tensor) -> ModelOutput:
        with self.computing():
            out = self.module(self.feeds(batch)["pixels"])
        if isinstance(out, tuple | list):
            if len(out) != 2:
                raise PipelineError(
                    f"{self.name}: the module returned {len(out)} outputs; "
                    "expected a tensor, or (features, logits) with ?head=1"
                )
            return self.finish(out[0], out[1])
        return self.finish(out, None)

    def layers_unsupported(self) -> str | None:
        return (
            f"{self.name} is a TorchScript file: it gives only the outputs it was saved with "
            "(a scripted graph cannot be hooked); rank it with layers=last"
        )

    def export_spec(self, extra: tuple[int, ...] = ()) -> ExportSpec | None:
        """The scripted module itself (a wrapper around it cannot be traced); its outputs are
        pooled in :meth:`finish`, on either runtime. Batch axis dynamic."""
        if extra:
            return None
        example = random_images(self.recipe, 2, seed=0)
        return ExportSpec(
            module=self.module,
            example={"pixels": example},
            check={"pixels": random_images(self.recipe, 3, seed=1)},
            dynamic={"pixels": {0: "batch"}},
            outputs=("features", "logits") if self._has_head else ("features",),
            weights=self.fingerprint,
            identity={"kind": "torchscript", "layer": self.layer, "input": list(example.shape[1:])},
        )

    @property
    def has_head(self) -> bool:
        return self._has_head
