"""Image recipes: the cheaper geometry and normalisation give the pixels and inputs of the
straightforward ones (convert to RGB first; ``(x.float() - mean) / std``), bit for bit, so
features and their cache entries do not change."""

from __future__ import annotations

import io
import itertools

import pytest
import torch
from PIL import Image
from sklearn.datasets import load_sample_images
from torchvision.transforms.v2 import functional as TF

from workers.pipeline.datasets.images import decode
from workers.pipeline.loader import decoded_batches, in_process_batches
from workers.pipeline.models.preprocessing import ImageRecipe

GEOMETRIES = [
    ImageRecipe(size=size, resize=resize, resize_mode=mode, interpolation=interpolation)
    for (size, resize), mode, interpolation in itertools.product(
        [(224, 256), (240, 274), (64, 64)],
        ["shorter", "square"],
        ["bilinear", "bicubic", "nearest"],
    )
]


def _jpeg(image: Image.Image, size: tuple[int, int]) -> bytes:
    buffer = io.BytesIO()
    image.resize(size, Image.Resampling.BICUBIC).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def grey_images(fmnist_full) -> list[Image.Image]:
    """Real greyscale images as ``decode`` returns them: Fashion-MNIST at 28 px (upscaled by
    every recipe) and a photograph as a greyscale JPEG at 1024 px, decoded at full and at
    draft scale (downscaled)."""
    photo = Image.fromarray(load_sample_images().images[1]).convert("L")
    data = _jpeg(photo, (1024, 768))
    images = [s.load() for s in fmnist_full.samples[:6]]
    images += [decode(data, "photo.jpg"), decode(data, "photo.jpg", draft=256)]
    assert {image.mode for image in images} == {"L"}
    return images


@pytest.mark.parametrize("recipe", GEOMETRIES, ids=lambda r: "-".join(map(str, r.geometry_key())))
def test_grey_geometry_equals_converting_to_rgb_first(grey_images, recipe) -> None:
    for image in grey_images:
        got = recipe.geometry(image)
        want = recipe.geometry(image.convert("RGB"))
        assert got.shape == want.shape == (3, recipe.size, recipe.size)
        assert got.dtype == torch.uint8
        assert torch.equal(got, want)


def test_colour_geometry_is_the_rgb_image_in_chw_order() -> None:
    photo = Image.fromarray(load_sample_images().images[0])  # RGB
    recipe = ImageRecipe(size=200, resize=220)
    got = recipe.geometry(photo)
    # the reference: torchvision's own resize, crop and HWC -> CHW copy of the RGB image
    want = TF.pil_to_tensor(
        TF.center_crop(TF.resize(photo, 220, interpolation=TF.InterpolationMode.BILINEAR), 200)
    )
    assert torch.equal(got, want)


def _reference(recipe: ImageRecipe, batch: torch.Tensor) -> torch.Tensor:
    x = batch.contiguous().float()
    if recipe.channel_order == "BGR":
        x = x.flip(1)
    mean, std = torch.tensor(recipe.mean), torch.tensor(recipe.std)
    x = (x - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1)
    return x.permute(0, 2, 3, 1).contiguous() if recipe.layout == "NHWC" else x


@pytest.mark.parametrize("order", ["RGB", "BGR"])
@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("channels_last_in", [False, True])
@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])
@pytest.mark.parametrize("shape", [(5, 3, 32, 32), (1, 3, 1, 1), (2, 3, 7, 5)])
def test_normalize_equals_the_plain_formula(order, layout, channels_last_in, memory_format, shape):
    recipe = ImageRecipe(
        size=32, mean=(104.0, 117.0, 123.5), std=(58.4, 1.0, 57.1), channel_order=order,
        layout=layout,
    )  # fmt: skip
    batch = torch.randint(0, 256, shape, dtype=torch.uint8, generator=torch.manual_seed(0))
    if channels_last_in:
        batch = batch.contiguous(memory_format=torch.channels_last)
    got = recipe.normalize(batch, memory_format=memory_format)
    want = _reference(recipe, batch)
    assert torch.equal(got, want)
    b, c, h, w = shape
    if layout == "NHWC":
        assert got.shape == (b, h, w, c) and got.is_contiguous()
    else:
        assert got.shape == shape and got.is_contiguous(memory_format=memory_format)


@pytest.mark.parametrize("workers", [0, 2])
def test_batches_are_channels_last(fmnist64, workers) -> None:
    """Images enter batches by plain copies, and every model's normalisation reads them."""
    recipes = [ImageRecipe(), ImageRecipe(size=96, resize=96, resize_mode="square")]
    samples = fmnist64.samples[:6]
    cpu = torch.device("cpu")
    batches = (
        list(in_process_batches(samples, recipes, 4, cpu))
        if workers == 0
        else list(decoded_batches(samples, recipes, 4, workers, cpu, chunk=3))
    )
    for batch in batches:
        for tensor in batch:
            assert tensor.is_contiguous(memory_format=torch.channels_last)
