"""Image models that are torch ``nn.Module``s: torchvision, timm, EfficientNet-Lite, state dicts.

Features come from a forward hook: by default the input of the last ``nn.Linear`` (the
penultimate, pooled layer), or the output of any named module (pooled to ``(B, D)``).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from workers.pipeline.errors import PipelineError
from workers.pipeline.layers import LayersUnsupported
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
    the module's own output. ``extra``: submodules whose outputs, pooled, come first, in this
    order (other layers, from the same forward pass): ``(*extra, features[, logits])``.
    """

    def __init__(
        self,
        module: nn.Module,
        tap: str | None,
        capture: str,
        logits: bool,
        extra: tuple[str, ...] = (),
    ) -> None:
        super().__init__()
        self.module = module
        self.tap, self.capture, self.logits = tap, capture, logits
        self.extra = extra
        # where the channels of its 4-D outputs are (timm names it; NCHW elsewhere): a stage
        # of a channels-last model pooled over (2, 3) averaged its width with its channels
        fmt = getattr(module, "output_fmt", "NCHW")
        self.layout = str(getattr(fmt, "value", fmt))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        store: list[torch.Tensor] = []
        taken: dict[str, torch.Tensor] = {}
        handles = []
        if self.tap is not None:

            def hook(_m: nn.Module, args: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
                store.append(args[0] if self.capture == "input" else out)

            handles.append(self.module.get_submodule(self.tap).register_forward_hook(hook))
        for name in self.extra:

            def keep(_m: nn.Module, _a: object, out: torch.Tensor, _name: str = name) -> None:
                taken[_name] = out

            handles.append(self.module.get_submodule(name).register_forward_hook(keep))
        try:
            out = self.module(x)
        finally:
            for handle in handles:
                handle.remove()
        features = pool(store[-1] if store else out, self.layout)
        layers = tuple(pool(taken[name], self.layout) for name in self.extra)
        return (*layers, features, out) if self.logits else (*layers, features)


#: the containers whose children are an image model's main stages or blocks, by attribute:
#: torchvision (features: MobileNet, EfficientNet, VGG, DenseNet), timm (blocks, stages),
#: EfficientNet-Lite (_blocks), Swin (layers)
STAGE_CONTAINERS = ("features", "blocks", "_blocks", "stages", "layers")


def stage_modules(module: nn.Module) -> list[str]:
    """The names of ``module``'s main stages or blocks, in forward order: the children of its
    largest top-level container among :data:`STAGE_CONTAINERS` (children with weights), else
    its top-level ``layer1``, ``layer2``, ... (ResNet); empty when it has neither."""
    best: list[str] = []
    for attr in STAGE_CONTAINERS:
        container = getattr(module, attr, None)
        if isinstance(container, nn.Sequential | nn.ModuleList):
            names = [
                f"{attr}.{name}"
                for name, child in container.named_children()
                if any(True for _ in child.parameters())
            ]
            if len(names) > len(best):
                best = names
    if best:
        return best
    return [
        name
        for name, _ in module.named_children()
        if name.startswith("layer") and name[5:].isdigit()
    ]


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
        self._stages: tuple[str, ...] | None = None
        self._layered: dict[tuple[int, ...], Tapped] = {}

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
        out = self._run(self.net, batch)
        return self.finish(out[0], out[1] if len(out) > 1 else None)

    def _run(self, net: Tapped, batch: torch.Tensor) -> tuple[torch.Tensor, ...]:
        # Normalised straight into the layout the module runs in: no transpose afterwards.
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        x = self.recipe.normalize(batch.to(self.device, non_blocking=True), memory_format=fmt)
        with self.computing():
            return tuple(net(x))

    # -- layers ----------------------------------------------------------------------------
    def layers_unsupported(self) -> str | None:
        if self._tap is not None and self._capture == "output":
            return (
                f"{self.name} was loaded with a chosen layer ({self.layer}); load it without "
                "?layer= to rank its layers"
            )
        if not self.layer_names()[:-1]:
            return (
                f"{self.name}: no main stages or blocks found (no {', '.join(STAGE_CONTAINERS)} "
                "container, no layer1..); load a layer with ?layer=NAME instead"
            )
        return None

    def layer_names(self) -> tuple[str, ...]:
        """Its main stages or blocks (:func:`stage_modules`), each pooled by global average as
        its features are, then its feature layer. A last stage whose pooled output is the
        feature layer already (ResNet's layer4, MobileNetV2's last conv: the classifier reads
        its global average) is that layer, named once: a probe image decides."""
        if self._stages is None:
            stages = stage_modules(self.module) if self._capture == "input" or not self._tap else []
            if stages and self._duplicates_features(stages[-1]):
                stages = stages[:-1]
            self._stages = tuple(stages)
        return (*self._stages, self.layer)

    def _duplicates_features(self, stage: str) -> bool:
        net = Tapped(self.module, self._tap, self._capture, False, (stage,))
        probe = random_images(self.recipe, 1, seed=2)
        with self.computing():
            out = net(probe.to(self.device))
        pooled, features = out[0], out[1]
        return pooled.shape == features.shape and bool(
            torch.allclose(pooled.float(), features.float(), rtol=1e-4, atol=1e-5)
        )

    def _layer_net(self, extra: tuple[int, ...]) -> Tapped:
        if extra not in self._layered:
            names = self.layer_names()
            if any(i >= len(names) - 1 for i in extra):
                raise LayersUnsupported(f"{self.name}: layers {extra} are beyond its stages")
            self._layered[extra] = Tapped(
                self.module,
                self._tap,
                self._capture,
                self.head_classes is not None,
                tuple(names[i] for i in extra),
            )
        return self._layered[extra]

    def forward_layers(self, batch: torch.Tensor, extra: tuple[int, ...]) -> ModelOutput:
        if not extra:
            return self.forward(batch)
        out = self._run(self._layer_net(extra), batch)
        n = len(extra)
        result = self.finish(out[n], out[n + 1] if len(out) > n + 1 else None)
        layers = tuple(t.float().cpu().numpy().astype(np.float32, copy=False) for t in out[:n])
        return ModelOutput(result.features, result.probs, layers)

    def export_spec(self, extra: tuple[int, ...] = ()) -> ExportSpec:
        """Random images, normalised as the recipe does; batch axis dynamic. With ``extra``
        (layer indices), the graph also gives those layers, first (:meth:`forward_layers`)."""
        example = random_images(self.recipe, 2, seed=0)
        net = self._layer_net(extra) if extra else self.net
        identity: dict[str, object] = {
            "kind": "torch-image",
            "layer": self.layer,
            "input": list(example.shape[1:]),
        }
        if extra:
            identity["layers"] = list(net.extra)
        return ExportSpec(
            module=net,
            example={"pixels": example},
            check={"pixels": random_images(self.recipe, 3, seed=1)},
            dynamic={"pixels": {0: "batch"}},
            outputs=(
                *(f"layer{i}" for i in extra),
                *(("features", "logits") if net.logits else ("features",)),
            ),
            weights=self.fingerprint,
            identity=identity,
        )
