"""Image decode and resize on the device the models run on (``TB_DECODE=device``).

On a GPU, photos are bound by the CPU's JPEG decode: 1024-px JPEGs fed ResNet-50 in bf16 at
9% of its pure forward pass on an H200 with 16 cores, while nvJPEG on the same GPU decoded
5,981 images/s. Here a batch's JPEGs are decoded by ``torchvision.io.decode_jpeg`` on the
device (nvJPEG on CUDA, libjpeg-turbo on a CPU), then resized there in float32 with
antialiasing, rounded and centre-cropped. Images of the same size are resized together.

The pixels are not PIL's (:meth:`ImageRecipe.geometry`): the rounding differs by a grey level,
and photos are decoded in full rather than at reduced scale. ``bench/device_geometry.py``
measures what that changes: scores within 1.5% and the same ranking on Fashion-MNIST.
Features from here have their own cache key (``decode`` in
:func:`workers.pipeline.cache.feature_key`).

What a device decoder does not take (PNG, WebP, CMYK JPEGs, in-memory images, a JPEG it
rejects) is decoded by PIL in full, then resized the same way, so every image of a dataset goes
through the same resize arithmetic. A JPEG neither decoder reads fails with its file named.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torchvision.io import ImageReadMode, decode_jpeg
from torchvision.transforms.v2 import functional as TF

from workers.pipeline.datasets.images import decode, plain_jpeg
from workers.pipeline.errors import PipelineError
from workers.pipeline.loader import empty_batch
from workers.pipeline.models.preprocessing import INTERPOLATION, ImageRecipe

#: images decoded in one call of the device's decoder (nvJPEG decodes a list in one batch)
DECODE_CHUNK = 64
#: pixel values converted to float32 for one resize call (256 MB)
RESIZE_ELEMENTS = 1 << 26
#: the recipe's modes, but on tensors: PIL's ``nearest`` samples pixel centres, as torch's
#: ``nearest-exact`` does and its ``nearest`` does not
_MODES = {**INTERPOLATION, "nearest": TF.InterpolationMode.NEAREST_EXACT}


def _pil_decoded(sample: Any, data: bytes | None, device: torch.device) -> torch.Tensor:
    """``sample`` (its bytes ``data`` when already read) decoded in full by PIL ->
    ``(C, H, W)`` uint8 on ``device``, C 1 or 3."""
    image = sample.load() if data is None else decode(data, sample.origin)
    pixels = torch.from_numpy(np.array(image, dtype=np.uint8))
    pixels = pixels.unsqueeze(-1) if pixels.ndim == 2 else pixels
    if device.type == "cuda":
        # From page-locked memory the copy is queued without waiting for the forward pass
        # running on the device (a copy from pageable memory would wait for it).
        pixels = pixels.pin_memory().to(device, non_blocking=True)
    else:
        pixels = pixels.to(device)
    return pixels.permute(2, 0, 1)


def decode_images(samples: Sequence[Any], device: torch.device) -> list[torch.Tensor]:
    """Each sample -> ``(C, H, W)`` uint8 on ``device`` (C: 1 for greyscale, else 3); the
    JPEGs in one call of the device's decoder."""
    images: list[torch.Tensor | None] = [None] * len(samples)
    jpegs: list[int] = []
    blobs: list[bytes] = []
    for i, sample in enumerate(samples):
        data = sample.read()
        if data is not None and plain_jpeg(data, sample.origin):
            jpegs.append(i)
            blobs.append(data)
        else:
            images[i] = _pil_decoded(sample, data, device)
    if blobs:
        tensors = [torch.frombuffer(bytearray(data), dtype=torch.uint8) for data in blobs]
        try:
            decoded = decode_jpeg(tensors, mode=ImageReadMode.UNCHANGED, device=device)
        except RuntimeError:  # one bad file fails the call: decode them one by one
            decoded = [
                _one_jpeg(samples[i], data, device) for i, data in zip(jpegs, blobs, strict=True)
            ]
        for i, image in zip(jpegs, decoded, strict=True):
            images[i] = image
    done = [image for image in images if image is not None]
    assert len(done) == len(samples)
    return done


def _one_jpeg(sample: Any, data: bytes, device: torch.device) -> torch.Tensor:
    """One JPEG on the device's decoder, else PIL's (which raises naming the file)."""
    blob = torch.frombuffer(bytearray(data), dtype=torch.uint8)
    try:
        image: torch.Tensor = decode_jpeg(blob, mode=ImageReadMode.UNCHANGED, device=device)
    except RuntimeError:
        return _pil_decoded(sample, data, device)
    return image


def resize_crop(images: torch.Tensor, recipe: ImageRecipe) -> torch.Tensor:
    """``(N, C, H, W)`` uint8 images of one size -> ``(N, 3, S, S)`` uint8: the recipe's
    resize and centre crop in float32 with antialiasing, rounded; a grey band repeated."""
    size = [recipe.resize, recipe.resize] if recipe.resize_mode == "square" else [recipe.resize]
    x = TF.resize(images.float(), size, interpolation=_MODES[recipe.interpolation], antialias=True)
    x = TF.center_crop(x, [recipe.size, recipe.size])
    pixels: torch.Tensor = x.round_().clamp_(0, 255).to(torch.uint8)
    return pixels.expand(-1, 3, -1, -1) if pixels.shape[1] == 1 else pixels


def device_batches(
    samples: Sequence[Any],
    recipes: Sequence[ImageRecipe],
    batch_size: int,
    device: torch.device,
) -> Iterator[tuple[torch.Tensor, ...]]:
    """What :func:`workers.pipeline.loader.decoded_batches` yields, decoded and resized on
    ``device``: ``DECODE_CHUNK`` images decoded at a time, resized ``RESIZE_ELEMENTS`` at a
    time, so a batch of large photos never holds all its full-size pixels at once."""
    for start in range(0, len(samples), batch_size):
        chunk = samples[start : start + batch_size]
        batch = [empty_batch(len(chunk), r.size, device) for r in recipes]
        for offset in range(0, len(chunk), DECODE_CHUNK):
            try:
                images = decode_images(chunk[offset : offset + DECODE_CHUNK], device)
            except RuntimeError as exc:  # the device's own failure, e.g. out of memory
                raise PipelineError(
                    f"decoding images on {device} failed ({exc}); use TB_DECODE=pil"
                ) from exc
            by_shape: dict[tuple[int, ...], list[int]] = defaultdict(list)
            for j, image in enumerate(images):
                by_shape[tuple(image.shape)].append(offset + j)
            for shape, indices in by_shape.items():
                step = max(1, RESIZE_ELEMENTS // math.prod(shape))
                for part in range(0, len(indices), step):
                    some = indices[part : part + step]
                    stacked = torch.stack([images[j - offset] for j in some])
                    for out, recipe in zip(batch, recipes, strict=True):
                        _place(out, some, resize_crop(stacked, recipe))
        yield tuple(batch)


def _place(out: torch.Tensor, indices: list[int], rows: torch.Tensor) -> None:
    """``out[indices] = rows`` by one slice copy per run of consecutive indices (a whole
    group, for a dataset of one image size): no index tensor to send to the device, whose
    copy from pageable memory would wait for the forward pass running there."""
    start = 0
    for k in range(1, len(indices) + 1):
        if k == len(indices) or indices[k] != indices[k - 1] + 1:
            first = indices[start]
            out[first : first + k - start].copy_(rows[start:k])
            start = k
