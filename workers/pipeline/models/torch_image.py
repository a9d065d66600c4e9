"""Image models that are torch ``nn.Module``s: torchvision, timm, EfficientNet-Lite, state dicts.

Features come from a forward hook: by default the input of the last ``nn.Linear`` (the
penultimate, pooled layer), or the output of any named module (pooled to ``(B, D)``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import numpy as np
import torch
from torch import nn

from workers.pipeline.errors import PipelineError
from workers.pipeline.models.base import CandidateModel, ModelOutput, pool, softmax
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
        self.fingerprint = fingerprint or module_sha256(module)
        # channels_last on the CPU too: oneDNN's NHWC convolutions ran MobileNetV2 ~40% faster
        # than NCHW on the 2-core build machine (33 -> 48 images/s, batch 8).
        self.module.to(memory_format=torch.channels_last)
        self.channels_last = True
        self.autocast_dtype: torch.dtype | None = None

    def to(self, device: torch.device) -> TorchImageModel:
        self.device = device
        self.module.to(device)
        if device.type == "cuda":
            self.autocast_dtype = (
                torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
            )
        return self

    @contextlib.contextmanager
    def _hooked(self, store: list[torch.Tensor]) -> Iterator[None]:
        if self._tap is None:
            yield
            return
        target = dict(self.module.named_modules())[self._tap]

        def hook(_m: nn.Module, args: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
            store.append(args[0] if self._capture == "input" else out)

        handle = target.register_forward_hook(hook)
        try:
            yield
        finally:
            handle.remove()

    def forward(self, batch: torch.Tensor) -> ModelOutput:
        """``batch``: ``(B, 3, H, W)`` uint8 -> features ``(B, D)``, probs ``(B, 1000)``."""
        x = self.recipe.normalize(batch.to(self.device, non_blocking=True))
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        store: list[torch.Tensor] = []
        autocast = (
            torch.autocast(self.device.type, dtype=self.autocast_dtype)
            if self.autocast_dtype is not None
            else contextlib.nullcontext()
        )
        with torch.inference_mode(), autocast, self._hooked(store):
            out = self.module(x)
        feats = pool(store[-1] if store else out).float()
        probs = softmax(out) if self.head_classes is not None else None
        return ModelOutput(feats.cpu().numpy().astype(np.float32, copy=False), probs)
