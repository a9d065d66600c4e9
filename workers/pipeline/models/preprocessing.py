"""Preprocessing recipes: how a model wants its input.

An image recipe splits in two halves:

- the *geometry* (resize, crop, interpolation): done on the decoded PIL image, producing a
  ``(3, size, size)`` uint8 tensor. Models whose geometry matches share one decoded and resized
  batch (:func:`ImageRecipe.geometry_key`).
- the *normalisation* (channel order, mean, std, layout): a cheap batched tensor op each model
  applies to the shared uint8 batch (:meth:`ImageRecipe.normalize`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

import torch
from PIL import Image
from torchvision.transforms.v2 import functional as TF

IMAGENET_MEAN = (0.485 * 255, 0.456 * 255, 0.406 * 255)
IMAGENET_STD = (0.229 * 255, 0.224 * 255, 0.225 * 255)

_INTERPOLATION = {
    "bilinear": TF.InterpolationMode.BILINEAR,
    "bicubic": TF.InterpolationMode.BICUBIC,
    "nearest": TF.InterpolationMode.NEAREST,
}


@dataclass(frozen=True)
class ImageRecipe:
    """Input contract of an image model.

    ``mean`` and ``std`` are in 0..255 pixel units and in the model's ``channel_order``.
    ``resize_mode``: ``shorter`` scales the shorter side to ``resize`` keeping the aspect ratio;
    ``square`` squashes to ``resize x resize``. Then a centre crop of ``size``.
    """

    size: int = 224
    resize: int = 256
    resize_mode: Literal["shorter", "square"] = "shorter"
    interpolation: Literal["bilinear", "bicubic", "nearest"] = "bilinear"
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    channel_order: Literal["RGB", "BGR"] = "RGB"
    layout: Literal["NCHW", "NHWC"] = "NCHW"

    modality = "image"

    def geometry_key(self) -> tuple[Any, ...]:
        """Models with equal keys are fed from the same decoded, resized uint8 batch."""
        return (self.size, self.resize, self.resize_mode, self.interpolation)

    def to_dict(self) -> dict[str, Any]:
        return {"modality": "image", **asdict(self)}

    def cache_identity(self) -> dict[str, Any]:
        """What the feature cache keys on: the whole recipe."""
        return self.to_dict()

    def geometry(self, image: Image.Image) -> torch.Tensor:
        """RGB PIL image -> ``(3, size, size)`` uint8 tensor."""
        mode = _INTERPOLATION[self.interpolation]
        if self.resize_mode == "square":
            image = TF.resize(image, [self.resize, self.resize], interpolation=mode)
        else:
            image = TF.resize(image, self.resize, interpolation=mode)
        image = TF.center_crop(image, [self.size, self.size])
        tensor: torch.Tensor = TF.pil_to_tensor(image)
        return tensor

    def normalize(self, batch: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """``(B, 3, H, W)`` uint8 RGB -> float tensor in the model's order and layout."""
        x = batch.to(dtype)
        if self.channel_order == "BGR":
            x = x.flip(1)
        mean = torch.tensor(self.mean, dtype=dtype, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, dtype=dtype, device=x.device).view(1, 3, 1, 1)
        x = (x - mean) / std
        if self.layout == "NHWC":
            x = x.permute(0, 2, 3, 1).contiguous()
        return x


@dataclass(frozen=True)
class TextRecipe:
    """Input contract of a text model: its tokenizer (id or folder, plus a fingerprint of the
    tokenizer files) and the max length in tokens."""

    tokenizer: str
    max_length: int = 256
    tokenizer_fingerprint: str = ""

    modality = "text"

    def geometry_key(self) -> tuple[Any, ...]:
        """Models with equal keys share one tokenised batch."""
        return (self.tokenizer_fingerprint or self.tokenizer, self.max_length)

    def to_dict(self) -> dict[str, Any]:
        return {"modality": "text", **asdict(self)}

    def cache_identity(self) -> dict[str, Any]:
        """What the feature cache keys on: the tokenizer's content, not where it lives."""
        ident = self.tokenizer_fingerprint or self.tokenizer
        return {"modality": "text", "tokenizer": ident, "max_length": self.max_length}


Recipe = ImageRecipe | TextRecipe
