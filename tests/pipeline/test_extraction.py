"""Extraction on 64 real Fashion-MNIST images with real zoo models."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from workers.pipeline.cache import FeatureCache, feature_key
from workers.pipeline.datasets.images import ArrayImage
from workers.pipeline.errors import PipelineError
from workers.pipeline.extraction import ExtractionStats, extract


@pytest.fixture(scope="module")
def first_run(zoo, fmnist64, tmp_path_factory):
    """mobilenet-v2 + open-nsfw + minilm-free image job, cached in a fresh folder."""
    cache = FeatureCache(tmp_path_factory.mktemp("cache"))
    models = [zoo("mobilenet-v2"), zoo("open-nsfw")]
    stats = ExtractionStats()
    seen: list[tuple[int, int]] = []
    result = extract(
        models, fmnist64, cache=cache, stats=stats, progress=lambda d, t: seen.append((d, t))
    )
    return result, cache, stats, seen


def test_shapes_and_dtypes(first_run) -> None:
    result, _, _, _ = first_run
    mob, nsfw = result["mobilenet-v2"], result["open-nsfw"]
    assert mob.features.shape == (64, 1280) and mob.features.dtype == np.float32
    assert mob.probs is not None and mob.probs.shape == (64, 1000) and mob.probs.dtype == np.float32
    assert nsfw.features.shape == (64, 1024)
    assert nsfw.probs is not None and nsfw.probs.shape == (64, 2)
    np.testing.assert_allclose(mob.probs.sum(1), 1.0, rtol=1e-4)
    assert np.isfinite(mob.features).all() and mob.features.std() > 0
    assert not mob.from_cache


def test_progress_reports_samples_done(first_run) -> None:
    _, _, _, seen = first_run
    assert seen[-1] == (64, 64)
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)
    assert len(seen) > 1


def test_cache_hit_does_no_forward_pass(first_run, zoo, fmnist64) -> None:
    result, cache, stats, _ = first_run
    assert stats.forward_calls["mobilenet-v2"] > 0
    models = [zoo("mobilenet-v2"), zoo("open-nsfw")]
    calls = {"n": 0}
    originals = {m.name: m.forward for m in models}
    for m in models:

        def counting(batch, _orig=originals[m.name]):
            calls["n"] += 1
            return _orig(batch)

        m.forward = counting  # type: ignore[method-assign]
    try:
        again_stats = ExtractionStats()
        again = extract(models, fmnist64, cache=cache, stats=again_stats)
    finally:
        for m in models:
            del m.forward  # back to the class method
    assert calls["n"] == 0
    assert sum(again_stats.forward_calls.values()) == 0
    assert again_stats.cache_hits == ["mobilenet-v2", "open-nsfw"]
    assert again["mobilenet-v2"].from_cache
    np.testing.assert_array_equal(again["mobilenet-v2"].features, result["mobilenet-v2"].features)
    np.testing.assert_array_equal(again["open-nsfw"].probs, result["open-nsfw"].probs)


def test_cache_key_covers_dataset_and_layer(zoo, fmnist64) -> None:
    model = zoo("mobilenet-v2")
    key = feature_key(model, fmnist64.content_hash)
    assert key != feature_key(model, fmnist64.select(np.arange(63)).content_hash)
    assert key != feature_key(zoo("efficientnet-lite0"), fmnist64.content_hash)
    assert len(key) == 64


def test_cache_files_are_whole_and_no_temp_left(first_run) -> None:
    _, cache, _, _ = first_run
    files = list(Path(cache.root).rglob("*"))
    entries = [f for f in files if f.is_file()]
    assert len(entries) == 2
    assert all(f.suffix == ".npz" and not f.name.startswith(".") for f in entries)


def test_deterministic_and_batch_size_independent(zoo, fmnist64) -> None:
    model = zoo("mobilenet-v2")
    subset = fmnist64.select(np.arange(12))
    a = extract([model], subset, batch_size=4)["mobilenet-v2"]
    b = extract([model], subset, batch_size=4)["mobilenet-v2"]
    c = extract([model], subset, batch_size=12)["mobilenet-v2"]
    np.testing.assert_array_equal(a.features, b.features)
    np.testing.assert_allclose(a.features, c.features, rtol=1e-4, atol=1e-4)


def test_shared_recipe_decodes_each_image_once(zoo, fmnist64, monkeypatch) -> None:
    """Three models, two geometries: every image is decoded exactly once."""
    subset = fmnist64.select(np.arange(8))
    loads = {"n": 0}
    original = ArrayImage.load

    def counting(self, draft=None):
        loads["n"] += 1
        return original(self, draft)

    monkeypatch.setattr(ArrayImage, "load", counting)
    models = [zoo("mobilenet-v2"), zoo("efficientnet-lite0"), zoo("open-nsfw")]
    stats = ExtractionStats()
    result = extract(models, subset, stats=stats, batch_size=4)
    assert loads["n"] == 8
    assert stats.images_decoded == 8
    assert set(result) == {"mobilenet-v2", "efficientnet-lite0", "open-nsfw"}


def test_text_extraction_keeps_order(zoo) -> None:
    from workers.pipeline.datasets.base import Dataset, sha256_bytes

    texts = ["short", "a much longer sentence about the weather in spring", "mid length text"]
    labels = np.asarray(["a", "b", "a"])
    ds = Dataset("t", "text", texts, labels, [sha256_bytes(t.encode()) for t in texts])
    model = zoo("minilm-l6")
    together = extract([model], ds, batch_size=2)["minilm-l6"].features
    alone = model.forward(model.tokenize([texts[1]])).features[0]
    np.testing.assert_allclose(together[1], alone, atol=1e-5)


def test_modality_mismatch_is_an_error(zoo, fmnist64) -> None:
    with pytest.raises(PipelineError, match="text model"):
        extract([zoo("minilm-l6")], fmnist64)


def test_time_waiting_for_input_is_accounted(zoo, fmnist64, monkeypatch) -> None:
    """A slow decode shows up as the forward loop waiting for input; a fast one does not."""
    model = zoo("mobilenet-v2")
    subset = fmnist64.select(np.arange(16))
    quick = ExtractionStats()
    extract([model], subset, stats=quick, batch_size=4)
    assert quick.forward_calls["mobilenet-v2"] == 4
    assert 0 < quick.forward_s["mobilenet-v2"] <= quick.total_s
    assert quick.input_wait_s < 0.5 * quick.total_s

    original = ArrayImage.load

    def slow(self, draft=None):
        time.sleep(0.05)  # 0.2 s per batch of 4: far slower than its forward pass
        return original(self, draft)

    monkeypatch.setattr(ArrayImage, "load", slow)
    waiting = ExtractionStats()
    extract([model], subset, stats=waiting, batch_size=4)
    assert waiting.input_wait_s > 0.5 * waiting.total_s
    assert waiting.input_wait_s + waiting.forward_s["mobilenet-v2"] <= waiting.total_s
