"""Model specs: ``SOURCE:REF[?key=value&...]`` strings naming a model outside the zoo.

Sources and their options (all optional unless marked):

- ``torchvision:resnet18?weights=IMAGENET1K_V1``: architecture + weights enum name (default DEFAULT)
- ``timm:resnet50.a1_in1k``: any timm model name with pretrained weights
- ``hf:REPO_ID_OR_DIR?max_length=256``: transformers ``AutoModel``, mean-pooled last hidden state
- ``st:REPO_ID_OR_DIR``: a sentence-transformers pipeline
- ``onnx:FILE?layer=VALUE&size=224&...``: onnxruntime; features from the graph value ``layer``
  (default: the input of the last MatMul/Gemm)
- ``torchscript:FILE?head=1&size=224``: a TorchScript file returning features or (features, logits)
- ``statedict:FILE?arch=mobilenet_v2`` (torchvision) or ``?arch=timm:resnet18``; ``num_classes=``

Image options: ``size``, ``resize``, ``resize_mode`` (shorter|square), ``interpolation``,
``mean``/``std`` (three numbers in 0..255 units, comma separated), ``order`` (RGB|BGR),
``layout`` (NCHW|NHWC); ``layer`` picks a module name for torch models.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

from workers.pipeline.errors import PipelineError
from workers.pipeline.models.preprocessing import IMAGENET_MEAN, IMAGENET_STD, ImageRecipe

SOURCES = ("torchvision", "timm", "hf", "st", "onnx", "torchscript", "statedict")


@dataclass(frozen=True)
class ModelSpec:
    """A parsed spec: ``source``, ``ref`` (name, repo id or path) and string ``options``."""

    source: str
    ref: str
    options: dict[str, str] = field(default_factory=dict)

    def __str__(self) -> str:
        query = "&".join(f"{k}={v}" for k, v in sorted(self.options.items()))
        return f"{self.source}:{self.ref}" + (f"?{query}" if query else "")

    def option_int(self, key: str, default: int) -> int:
        raw = self.options.get(key)
        if raw is None:
            return default
        try:
            return int(raw)
        except ValueError as exc:
            raise PipelineError(f"{self}: option {key}={raw!r} must be an integer") from exc

    def option_triple(self, key: str, default: tuple[float, float, float]) -> tuple[float, ...]:
        raw = self.options.get(key)
        if raw is None:
            return default
        try:
            values = tuple(float(v) for v in raw.split(","))
        except ValueError:
            values = ()
        if len(values) != 3:
            raise PipelineError(
                f"{self}: option {key}={raw!r} must be three comma-separated numbers"
            )
        return values

    def image_recipe(self, base: ImageRecipe | None = None) -> ImageRecipe:
        """The recipe from ``base`` (default ImageNet 224/256) overridden by the options."""
        base = base or ImageRecipe()
        size = self.option_int("size", base.size)
        default_resize = base.resize if "size" not in self.options else round(size / 0.875)
        kwargs: dict[str, Any] = {
            "size": size,
            "resize": self.option_int("resize", default_resize),
            "resize_mode": self.options.get("resize_mode", base.resize_mode),
            "interpolation": self.options.get("interpolation", base.interpolation),
            "mean": self.option_triple("mean", base.mean),
            "std": self.option_triple("std", base.std),
            "channel_order": self.options.get("order", base.channel_order).upper(),
            "layout": self.options.get("layout", base.layout).upper(),
        }
        checks = {
            "resize_mode": {"shorter", "square"},
            "interpolation": {"bilinear", "bicubic", "nearest"},
            "channel_order": {"RGB", "BGR"},
            "layout": {"NCHW", "NHWC"},
        }
        for key, allowed in checks.items():
            if kwargs[key] not in allowed:
                raise PipelineError(f"{self}: {key} must be one of {sorted(allowed)}")
        return ImageRecipe(**kwargs)


def parse_spec(text: str) -> ModelSpec:
    """``"onnx:/m.onnx?layer=x"`` -> ``ModelSpec("onnx", "/m.onnx", {"layer": "x"})``."""
    source, sep, rest = text.partition(":")
    if not sep or source not in SOURCES:
        raise PipelineError(
            f"unknown model {text!r}: give a zoo name (see `transferbench models`) or "
            f"SOURCE:REF with SOURCE one of {', '.join(SOURCES)}"
        )
    ref, _, query = rest.partition("?")
    if not ref:
        raise PipelineError(f"model spec {text!r} names no model after {source}:")
    return ModelSpec(source, ref, dict(parse_qsl(query, keep_blank_values=True)))


__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "SOURCES", "ModelSpec", "parse_spec"]
