"""``TB_DECODE=device``: images decoded by torchvision and resized in float32 on the device the
models run on (here the CPU, the same code a GPU runs with nvJPEG). The pixels stay within
rounding of the recipe's PIL geometry on the full-size image, every kind of image gets
through, a broken one fails naming its file, and the features have their own cache key."""

from __future__ import annotations

import io
import itertools
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.datasets import load_sample_images

from workers.pipeline import device_input
from workers.pipeline.cache import FeatureCache, feature_key
from workers.pipeline.datasets.images import read_image_folder
from workers.pipeline.device_input import device_batches
from workers.pipeline.errors import PipelineError
from workers.pipeline.extraction import ExtractionStats, extract
from workers.pipeline.models import load_model
from workers.pipeline.models.preprocessing import ImageRecipe
from workers.settings import Settings, SettingsError

CPU = torch.device("cpu")

RECIPES = [
    ImageRecipe(size=size, resize=resize, resize_mode=mode, interpolation=interpolation)
    for (size, resize), mode, interpolation in itertools.product(
        [(224, 256), (240, 274)], ["shorter", "square"], ["bilinear", "bicubic", "nearest"]
    )
]
#: float32 against PIL's fixed point: a grey level for bilinear; for bicubic up to 13 at the
#: sharp edges of an upscaled palette image (PIL rounds and clips between its two passes, and
#: bicubic overshoots), a grey level elsewhere; nearest picks the same pixels bar float32
#: ties on exact half-pixel positions (under 1% of pixels)
MAX_DIFF = {"bilinear": 1, "bicubic": 16, "nearest": 255}


def _save(image: Image.Image, path: Path, **options: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, **options)


@pytest.fixture(scope="module")
def photo_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Real photographs in every form the device path must take: colour JPEGs large and
    small, greyscale, progressive and CMYK JPEGs, an RGBA PNG and a palette PNG."""
    china, flower = (Image.fromarray(p) for p in load_sample_images().images)
    root = tmp_path_factory.mktemp("photos")
    _save(china.resize((1365, 1024)), root / "a" / "big.jpg", quality=90)
    _save(flower.resize((300, 420)), root / "a" / "portrait.jpg", quality=85)
    _save(china.convert("L").resize((500, 333)), root / "a" / "grey.jpg")
    _save(flower.resize((40, 28)), root / "a" / "tiny.jpg")
    _save(china.resize((640, 427)), root / "b" / "progressive.jpg", progressive=True)
    _save(flower.convert("CMYK").resize((400, 300)), root / "b" / "cmyk.jpg")
    _save(china.convert("RGBA").resize((300, 200)), root / "b" / "rgba.png")
    _save(flower.convert("P").resize((256, 256)), root / "b" / "palette.png")
    _save(china.resize((640, 427)), root / "b" / "same-size.jpg", quality=70)
    return root


def _pil_full(samples, recipe: ImageRecipe) -> torch.Tensor:
    """The recipe's PIL geometry on each image decoded in full (no reduced-scale decode)."""
    return torch.stack([recipe.geometry(s.load()).contiguous() for s in samples])


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda r: "-".join(map(str, r.geometry_key())))
def test_pixels_are_the_recipe_geometry_within_rounding(photo_folder, recipe) -> None:
    samples = read_image_folder(photo_folder).samples
    (got,) = next(device_batches(samples, [recipe], 64, CPU))
    want = _pil_full(samples, recipe)
    assert got.shape == want.shape == (len(samples), 3, recipe.size, recipe.size)
    assert got.dtype == torch.uint8
    assert got.is_contiguous(memory_format=torch.channels_last)
    diff = (got.int() - want.int()).abs()
    assert int(diff.max()) <= MAX_DIFF[recipe.interpolation]
    assert float(diff.float().mean()) < 0.2
    assert float((diff > 0).float().mean()) < (0.01 if recipe.interpolation == "nearest" else 0.5)


def test_batches_keep_order_across_batches_and_chunks(photo_folder, monkeypatch) -> None:
    samples = read_image_folder(photo_folder).samples
    recipes = [ImageRecipe(), ImageRecipe(size=240, resize=274, interpolation="bicubic")]
    whole = next(device_batches(samples, recipes, 64, CPU))
    pieces = list(device_batches(samples, recipes, 4, CPU))
    assert [len(p[0]) for p in pieces] == [4, 4, 1]
    # decoded two at a time, and resized one image at a time: the same pixels in the same places
    monkeypatch.setattr(device_input, "DECODE_CHUNK", 2)
    monkeypatch.setattr(device_input, "RESIZE_ELEMENTS", 1)
    chunked = next(device_batches(samples, recipes, 64, CPU))
    for g in range(len(recipes)):
        assert torch.equal(torch.cat([p[g] for p in pieces]), whole[g])
        assert torch.equal(chunked[g], whole[g])


def test_in_memory_greyscale_images_are_resized_as_one_band(fmnist64) -> None:
    recipe = ImageRecipe()
    (got,) = next(device_batches(fmnist64.samples[:8], [recipe], 8, CPU))
    assert torch.equal(got[:, 0], got[:, 1]) and torch.equal(got[:, 1], got[:, 2])
    diff = (got.int() - _pil_full(fmnist64.samples[:8], recipe).int()).abs()
    assert int(diff.max()) <= 1


def test_a_broken_jpeg_fails_naming_its_file(tmp_path) -> None:
    photo = Image.fromarray(load_sample_images().images[0])
    _save(photo, tmp_path / "a" / "fine.jpg")
    buffer = io.BytesIO()
    photo.save(buffer, format="JPEG")
    broken = tmp_path / "b" / "cut-short.jpg"
    broken.parent.mkdir()
    broken.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    samples = read_image_folder(tmp_path).samples
    with pytest.raises(PipelineError, match=r"cut-short\.jpg: cannot decode image"):
        list(device_batches(samples, [ImageRecipe()], 8, CPU))


@pytest.mark.slow
def test_extraction_with_device_decode_has_its_own_cache_entry(photo_folder) -> None:
    dataset = read_image_folder(photo_folder)
    settings = Settings()
    pil = load_model("mobilenet-v2", settings)
    device = load_model("mobilenet-v2", settings.model_copy(update={"decode": "device"}))
    assert (pil.decode, device.decode) == ("pil", "device")
    assert feature_key(device, dataset.content_hash) != feature_key(pil, dataset.content_hash)
    cache = FeatureCache(settings.feature_cache_dir)
    extract([pil], dataset, cache=cache, batch_size=4)
    stats = ExtractionStats()
    got = extract([device], dataset, cache=cache, batch_size=4, stats=stats)["mobilenet-v2"]
    assert stats.cache_hits == []  # PIL's features never stand in for these
    # the model on the recipe's PIL geometry of the full-size images: the same up to rounding
    pixels = _pil_full(dataset.samples, device.recipe)  # type: ignore[arg-type]
    want = np.concatenate([device.forward(pixels[i : i + 4]).features for i in range(0, 9, 4)])
    cosine = np.sum(got.features * want, 1) / (
        np.linalg.norm(got.features, axis=1) * np.linalg.norm(want, axis=1)
    )
    assert cosine.min() > 0.99
    again = extract([device], dataset, cache=cache, batch_size=4)["mobilenet-v2"]
    assert again.from_cache and np.array_equal(again.features, got.features)


@pytest.mark.slow
def test_models_decoding_differently_share_one_extraction(photo_folder) -> None:
    dataset = read_image_folder(photo_folder)
    settings = Settings()
    pil = load_model("mobilenet-v2", settings)
    device = load_model("efficientnet-lite0", settings.model_copy(update={"decode": "device"}))
    together = extract([pil, device], dataset, batch_size=4)
    for model in (pil, device):
        alone = extract([model], dataset, batch_size=4)[model.name]
        assert np.array_equal(together[model.name].features, alone.features)
        assert together[model.name].probs is not None
        assert np.array_equal(together[model.name].probs, alone.probs)


def test_an_unknown_decode_setting_is_refused(monkeypatch) -> None:
    monkeypatch.setenv("TB_DECODE", "gpu")
    with pytest.raises(SettingsError, match="TB_DECODE='gpu'"):
        Settings.load()
