"""Image models that are torch ``nn.Module``s: torchvision, timm, EfficientNet-Lite, state dicts.

Features come from a forward hook: by default the input of the last ``nn.Linear`` (the
penultimate, pooled layer), or the output of any named module (pooled to ``(B, D)``).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from workers.pipeline.errors import PipelineError
from workers.pipeline.models.base import (
    CandidateModel,
    ExportSpec,
    ModelOutput,
    pool,
    random_images,
    softmax,
)
from workers.pipeline.models.fingerprint import module_sha256
from workers.pipeline.models.preprocessing import ImageRecipe

PENULTIMATE = "penultimate"


def last_linear(module: nn.Module) -> str | None:
    """Name of the last ``nn.Linear`` in registration order (the classifier), if any."""
    found = None
    for name, child in module.named_modules():
        if isinstance(child, nn.Linear):
            found = name
    return found


class Tapped(nn.Module):
    """``module`` with its feature layer tapped: ``x`` -> ``(features (B, D),)``, or
    ``(features, logits)`` with ``logits``. The PyTorch path runs this module and the ONNX
    export traces it, so both compute the same layer and head.

    ``tap``: the submodule whose ``capture`` (its input or output) is the feature; None takes
    the module's own output.
    """

    def __init__(self, module: nn.Module, tap: str | None, capture: str, logits: bool) -> None:
        super().__init__()
        self.module = module
        self.tap, self.capture, self.logits = tap, capture, logits

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        store: list[torch.Tensor] = []
        handle = None
        if self.tap is not None:

            def hook(_m: nn.Module, args: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
                store.append(args[0] if self.capture == "input" else out)

            handle = self.module.get_submodule(self.tap).register_forward_hook(hook)
        try:
            out = self.module(x)
        finally:
            if handle is not None:
                handle.remove()
        features = pool(store[-1] if store else out)
        return (features, out) if self.logits else (features,)


class TorchImageModel(CandidateModel):
    """An ``nn.Module`` classifier (or trunk) with features tapped by a hook."""

    def __init__(
        self,
        *,
        name: str,
        source: str,
        module: nn.Module,
        recipe: ImageRecipe,
        layer: str = PENULTIMATE,
        head_classes: tuple[str, ...] | None = None,
        fingerprint: str | None = None,
    ) -> None:
        self.name = name
        self.source = source
        self.module = module.eval()
        self.recipe: ImageRecipe = recipe
        linear = last_linear(module)
        if layer == PENULTIMATE:
            if linear is None:
                # A trunk without a classifier: its output is the feature.
                self._tap, self._capture = None, "output"
                self.layer = "output"
            else:
                self._tap, self._capture = linear, "input"
                self.layer = f"{PENULTIMATE}:{linear}"
        else:
            names = dict(module.named_modules())
            if layer not in names:
                raise PipelineError(
                    f"{name}: no layer named {layer!r}; some names: {', '.join(list(names)[-8:])}"
                )
            self._tap, self._capture, self.layer = layer, "output", layer
        logits_out = linear is not None and head_classes is not None
        if logits_out and linear is not None:
            out_features = dict(module.named_modules())[linear].out_features
            if out_features != len(head_classes or ()):
                raise PipelineError(
                    f"{name}: classifier has {out_features} outputs but {len(head_classes or ())}"
                    " class names were given"
                )
        self.head_classes = head_classes if logits_out else None
        self.net = Tapped(self.module, self._tap, self._capture, self.head_classes is not None)
        self.fingerprint = fingerprint or module_sha256(module)
        # channels_last on the CPU too: oneDNN's NHWC convolutions ran MobileNetV2 ~40% faster
        # than NCHW on the 2-core build machine (33 -> 48 images/s, batch 8).
        self.module.to(memory_format=torch.channels_last)
        self.channels_last = True

    def to(self, device: torch.device, precision: str = "auto") -> TorchImageModel:
        self.place(device, precision)
        self.module.to(device)
        return self

    def feeds(self, batch: torch.Tensor) -> dict[str, torch.Tensor]:
        """``batch``: ``(B, 3, H, W)`` uint8 -> the normalised float input, contiguous (what
        the exported graph takes)."""
        return {"pixels": self.recipe.normalize(batch.to(self.device, non_blocking=True))}

    def finish(self, features: torch.Tensor, logits: torch.Tensor | None) -> ModelOutput:
        probs = softmax(logits) if self.head_classes is not None and logits is not None else None
        return ModelOutput(features.float().cpu().numpy().astype(np.float32, copy=False), probs)

    def forward(self, batch: torch.Tensor) -> ModelOutput:
        """``batch``: ``(B, 3, H, W)`` uint8 -> features ``(B, D)``, probs ``(B, 1000)``."""
        # Normalised straight into the layout the module runs in: no transpose afterwards.
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        x = self.recipe.normalize(batch.to(self.device, non_blocking=True), memory_format=fmt)
        with self.computing():
            out = self.net(x)
        return self.finish(out[0], out[1] if len(out) > 1 else None)

    def export_spec(self) -> ExportSpec:
        """Random images, normalised as the recipe does; batch axis dynamic."""
        example = random_images(self.recipe, 2, seed=0)
        return ExportSpec(
            module=self.net,
            example={"pixels": example},
            check={"pixels": random_images(self.recipe, 3, seed=1)},
            dynamic={"pixels": {0: "batch"}},
            outputs=("features", "logits") if self.net.logits else ("features",),
            weights=self.fingerprint,
            identity={"kind": "torch-image", "layer": self.layer, "input": list(example.shape[1:])},
        )
