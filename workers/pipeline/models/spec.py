"""A model spec's image options as a preprocessing recipe (the grammar itself, torch-free, is
:mod:`workers.pipeline.specs`)."""

from __future__ import annotations

from typing import Any

from workers.pipeline.errors import PipelineError
from workers.pipeline.models.preprocessing import ImageRecipe
from workers.pipeline.specs import ModelSpec


def image_recipe(spec: ModelSpec, base: ImageRecipe | None = None) -> ImageRecipe:
    """The recipe from ``base`` (default ImageNet 224/256) overridden by the spec's options."""
    base = base or ImageRecipe()
    size = spec.option_int("size", base.size)
    default_resize = base.resize if "size" not in spec.options else round(size / 0.875)
    kwargs: dict[str, Any] = {
        "size": size,
        "resize": spec.option_int("resize", default_resize),
        "resize_mode": spec.options.get("resize_mode", base.resize_mode),
        "interpolation": spec.options.get("interpolation", base.interpolation),
        "mean": spec.option_triple("mean", base.mean),
        "std": spec.option_triple("std", base.std),
        "channel_order": spec.options.get("order", base.channel_order).upper(),
        "layout": spec.options.get("layout", base.layout).upper(),
    }
    checks = {
        "resize_mode": {"shorter", "square"},
        "interpolation": {"bilinear", "bicubic", "nearest"},
        "channel_order": {"RGB", "BGR"},
        "layout": {"NCHW", "NHWC"},
    }
    for key, allowed in checks.items():
        if kwargs[key] not in allowed:
            raise PipelineError(f"{spec}: {key} must be one of {sorted(allowed)}")
    return ImageRecipe(**kwargs)
