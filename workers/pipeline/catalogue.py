"""The built-in zoo as a list: each model's name, modality, description and whether it has a
classifier head; no weights and no torch.

The service needs to know what the zoo holds before any weights load: ``transferbench serve``
records every zoo model as a pending registration before it answers a request, so that
``/readyz`` can say what it still waits for and a ranking made meanwhile can include them. It
runs in the API image, which has no torch; the loaders live in
:mod:`workers.pipeline.models.zoo`, which builds ``ZOO`` from this list.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Builtin:
    """A zoo model as the service sees it before its weights load."""

    name: str
    modality: str
    description: str
    has_head: bool


CATALOGUE: tuple[Builtin, ...] = (
    Builtin("efficientnet-lite0", "image", "EfficientNet-Lite0, ImageNet-1k, 224 px, 1280-d", True),
    Builtin("efficientnet-lite1", "image", "EfficientNet-Lite1, ImageNet-1k, 240 px, 1280-d", True),
    Builtin("efficientnet-lite2", "image", "EfficientNet-Lite2, ImageNet-1k, 260 px, 1280-d", True),
    Builtin(
        "mobilenet-v2", "image", "MobileNetV2 (torchvision), ImageNet-1k, 224 px, 1280-d", True
    ),
    Builtin(
        "open-nsfw", "image", "Open-NSFW ResNet-50-thin (ONNX), 2-class sfw/nsfw, 1024-d", True
    ),
    Builtin("minilm-l6", "text", "all-MiniLM-L6-v2 encoder, mean-pooled, 384-d, no head", False),
    Builtin("minilm-intent", "text", "all-MiniLM-L6-v2 + 157-intent linear head, 384-d", True),
)
