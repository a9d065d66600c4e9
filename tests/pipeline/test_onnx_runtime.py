"""The optimised CPU runtime (ONNX Runtime) against the PyTorch reference, on real zoo models
and real data: equal features, equal scores, the same ranking; its own cache keys; the
exported graphs kept on disk; PyTorch as the fallback, logged once."""

from __future__ import annotations

import logging
from collections import OrderedDict
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

import scoring
from workers.pipeline.cache import FeatureCache, feature_key
from workers.pipeline.datasets import open_dataset
from workers.pipeline.extraction import ExtractionStats, extract
from workers.pipeline.models import exported, load_model, onnxrt, zoo_names
from workers.pipeline.models.base import ExportSpec
from workers.pipeline.models.exported import OnnxRuntimeModel, choose_runtime
from workers.pipeline.models.onnxrt import disagreement, fold_affine_into_conv
from workers.pipeline.models.torch_image import TorchImageModel
from workers.pipeline.ranking import ModelArrays, rank_models
from workers.settings import Settings, SettingsError, default_data_dir

CLASSIFICATION_METRICS = [m for m, e in scoring.REGISTRY.items() if "classification" in e.targets]


def _reference(model, name: str):
    """The PyTorch (or, for an ONNX file, unoptimised) twin of a zoo model."""
    if isinstance(model, OnnxRuntimeModel):
        return model.reference
    return load_model(name, Settings(runtime="torch"))


@pytest.fixture(scope="module")
def fortunes_small():
    """~120 real fortunes, three per class: long and short texts, so batches pad."""
    return open_dataset("fortunes").subsample(3, seed=0)


@pytest.fixture(scope="module")
def both_runtimes(zoo, fmnist64, fortunes_small):
    """Every zoo model's features on real data from each runtime: name -> (fast, reference)."""
    out = {}
    for name in zoo_names():
        fast = zoo(name)
        assert fast.runtime.startswith("onnxruntime"), f"{name} is not on ONNX Runtime"
        ref = _reference(fast, name)
        assert ref.runtime != fast.runtime
        data = fmnist64 if fast.modality == "image" else fortunes_small
        out[name] = (
            extract([fast], data, batch_size=16)[name],
            extract([ref], data, batch_size=16)[name],
            data,
        )
    return out


@pytest.mark.parametrize("name", zoo_names())
def test_features_equal_pytorch(both_runtimes, name: str) -> None:
    """1e-4 relative and cosine >= 0.99999 per sample; probabilities within 1e-4."""
    fast, ref, _ = both_runtimes[name]
    assert fast.features.shape == ref.features.shape and fast.features.dtype == np.float32
    scale = np.abs(ref.features).max()
    assert np.abs(fast.features - ref.features).max() <= 1e-4 * scale
    cosine = (fast.features * ref.features).sum(1) / (
        np.linalg.norm(fast.features, axis=1) * np.linalg.norm(ref.features, axis=1)
    )
    assert cosine.min() >= 0.99999
    assert (fast.probs is None) == (ref.probs is None)
    if ref.probs is not None:
        np.testing.assert_allclose(fast.probs, ref.probs, atol=1e-4)


@pytest.mark.parametrize("modality", ["image", "text"])
def test_scores_and_ranking_equal_pytorch(both_runtimes, modality: str) -> None:
    """Every classification metric within 1e-4 (relative to max(1, |score|)); same ranking."""
    names = zoo_names(modality)
    labels = both_runtimes[names[0]][2].labels
    rankings = []
    for side in (0, 1):
        arrays = {
            n: ModelArrays(both_runtimes[n][side].features, both_runtimes[n][side].probs)
            for n in names
        }
        rankings.append(rank_models(arrays, labels, CLASSIFICATION_METRICS))
    fast, ref = ({row.model: row for row in rows} for rows in rankings)
    compared = 0
    for name in names:
        for metric, expected in ref[name].scores.items():
            got = fast[name].scores[metric]
            assert (got is None) == (expected is None), (name, metric)
            if expected is not None and got is not None:
                assert abs(got - expected) <= 1e-4 * max(1.0, abs(expected)), (name, metric)
                compared += 1
    assert compared >= len(names) * 5
    assert [(r.model, r.rank) for r in rankings[0]] == [(r.model, r.rank) for r in rankings[1]]


def test_cache_keys_never_mix_runtimes(zoo, fmnist64, tmp_path) -> None:
    fast = zoo("mobilenet-v2")
    ref = fast.reference
    assert fast.fingerprint == ref.fingerprint and fast.layer == ref.layer
    assert feature_key(fast, fmnist64.content_hash) != feature_key(ref, fmnist64.content_hash)
    cache = FeatureCache(tmp_path)
    subset = fmnist64.select(np.arange(4))
    extract([fast], subset, cache=cache)
    stats = ExtractionStats()
    extract([ref], subset, cache=cache, stats=stats)
    assert stats.cache_hits == [] and stats.forward_calls["mobilenet-v2"] > 0
    entries = sorted(p.stem for p in tmp_path.rglob("*.npz"))
    assert entries == sorted(
        [feature_key(fast, subset.content_hash), feature_key(ref, subset.content_hash)]
    )
    metas = {FeatureCache(tmp_path).get(k).meta["runtime"] for k in entries}  # type: ignore[union-attr]
    assert metas == {fast.runtime, "torch"}


def test_runtime_setting(monkeypatch) -> None:
    assert choose_runtime(Settings(runtime="auto")) == "onnx"  # no GPU here
    assert choose_runtime(Settings(runtime="torch")) == "torch"
    monkeypatch.setattr(exported, "resolve_device", lambda _: torch.device("cuda"))
    assert choose_runtime(Settings(runtime="auto")) == "torch"
    assert choose_runtime(Settings(runtime="onnx")) == "onnx"
    monkeypatch.setenv("TB_RUNTIME", "torch")
    assert Settings.load().runtime == "torch"
    monkeypatch.setenv("TB_RUNTIME", "tensorrt")
    with pytest.raises(SettingsError, match="TB_RUNTIME"):
        Settings.load()


def test_an_empty_folder_setting_means_unset_not_the_working_directory(monkeypatch) -> None:
    monkeypatch.setenv("TB_GRAPH_DIR", "")
    monkeypatch.setenv("TB_MODEL_DIR", " ")
    settings = Settings.load()
    assert settings.graph_dir is None and settings.model_dir is None
    assert settings.graph_store_dir == settings.data_dir / "runtimes" / "onnx"
    monkeypatch.setenv("TB_GRAPH_DIR", "~/graphs")
    assert Settings.load().graph_store_dir == Path("~/graphs").expanduser()
    monkeypatch.setenv("TB_DATA_DIR", "")
    assert Settings.load().data_dir == default_data_dir() != Path(".")


@pytest.mark.slow
def test_torch_runtime_turns_it_off(monkeypatch) -> None:
    monkeypatch.delenv("TB_GRAPH_DIR")  # the default store, in this test's own TB_DATA_DIR
    monkeypatch.setenv("TB_RUNTIME", "torch")
    model = load_model("mobilenet-v2")
    assert isinstance(model, TorchImageModel) and model.runtime == "torch"
    assert Settings.load().graph_store_dir == Settings.load().data_dir / "runtimes" / "onnx"
    assert not (Settings.load().data_dir / "runtimes").exists()
    nsfw = load_model("open-nsfw")
    assert "+fold" not in nsfw.runtime


@pytest.mark.slow
def test_exported_graph_is_stored_once_and_reused(monkeypatch) -> None:
    monkeypatch.delenv("TB_GRAPH_DIR")
    settings = Settings.load()  # this test's own TB_DATA_DIR, and the store in it
    monkeypatch.setattr(exported, "_SESSIONS", OrderedDict())
    first = load_model("mobilenet-v2", settings)
    assert isinstance(first, OnnxRuntimeModel)
    files = list((settings.data_dir / "runtimes" / "onnx").iterdir())
    assert len(files) == 1 and files[0].suffix == ".onnx"  # no temp file left behind
    onnx.checker.check_model(str(files[0]))

    def no_export(spec):
        raise AssertionError("exported again instead of reading the stored graph")

    monkeypatch.setattr(exported, "_SESSIONS", OrderedDict())
    monkeypatch.setattr(exported, "export_onnx", no_export)
    again = load_model("mobilenet-v2", settings)
    assert isinstance(again, OnnxRuntimeModel) and again.runtime == first.runtime
    x = torch.randint(0, 256, (2, 3, 224, 224), dtype=torch.uint8)
    np.testing.assert_array_equal(again.forward(x).features, first.forward(x).features)


@pytest.mark.slow
def test_a_shared_graph_folder_serves_other_data_dirs(monkeypatch, tmp_path) -> None:
    """TB_GRAPH_DIR: a graph exported for one data directory is read, not exported again, by
    another, and neither data directory holds a graph."""
    monkeypatch.setattr(exported, "_SESSIONS", OrderedDict())
    shared = tmp_path / "graphs"
    first = load_model(
        "mobilenet-v2", Settings(data_dir=tmp_path / "a", graph_dir=shared, runtime="onnx")
    )
    assert isinstance(first, OnnxRuntimeModel)
    assert [p.suffix for p in shared.iterdir()] == [".onnx"]

    def no_export(spec):
        raise AssertionError("exported again instead of reading the shared graph")

    monkeypatch.setattr(exported, "_SESSIONS", OrderedDict())
    monkeypatch.setattr(exported, "export_onnx", no_export)
    again = load_model(
        "mobilenet-v2", Settings(data_dir=tmp_path / "b", graph_dir=shared, runtime="onnx")
    )
    assert isinstance(again, OnnxRuntimeModel) and again.runtime == first.runtime
    x = torch.randint(0, 256, (2, 3, 224, 224), dtype=torch.uint8)
    np.testing.assert_array_equal(again.forward(x).features, first.forward(x).features)
    assert not (tmp_path / "a" / "runtimes").exists() and not (tmp_path / "b").exists()


@pytest.mark.slow
def test_a_graph_folder_that_cannot_be_written_still_runs_on_onnx_runtime(
    monkeypatch, tmp_path, caplog
) -> None:
    """A store it cannot write (here a path under a file; a read-only mount alike): the graph
    runs from memory, is not kept, and the reason is logged once."""
    monkeypatch.setattr(exported, "_SESSIONS", OrderedDict())
    monkeypatch.setattr(onnxrt, "_FALLBACKS", set())
    (blocker := tmp_path / "not-a-folder").write_text("")
    settings = Settings(data_dir=tmp_path / "data", graph_dir=blocker / "graphs", runtime="onnx")
    models = []
    with caplog.at_level(logging.WARNING, logger="workers.pipeline.models.onnxrt"):
        for _ in range(2):  # exported twice: no session kept between the loads
            monkeypatch.setattr(exported, "_SESSIONS", OrderedDict())
            models.append(load_model("mobilenet-v2", settings))
    assert all(isinstance(m, OnnxRuntimeModel) for m in models)
    x = torch.randint(0, 256, (2, 3, 224, 224), dtype=torch.uint8)
    reference = load_model("mobilenet-v2", Settings(runtime="torch"))
    assert disagreement([reference.forward(x).features], [models[0].forward(x).features]) is None
    unkept = [r.getMessage() for r in caplog.records if "cannot be written" in r.getMessage()]
    assert len(unkept) == 1 and "TB_GRAPH_DIR" in unkept[0], caplog.text
    assert list(tmp_path.iterdir()) == [blocker]  # nothing written anywhere else


@pytest.mark.slow
@pytest.mark.parametrize("name", ["mobilenet-v2", "open-nsfw"])
def test_a_damaged_stored_graph_is_built_again_not_used(monkeypatch, tmp_path, name) -> None:
    """A graph file in the store that does not load (a shared folder someone wrote into, a
    disk fault) is built, checked and stored again: the model stays on its optimised runtime
    with the features it had."""
    settings = Settings(data_dir=tmp_path / "data", graph_dir=tmp_path / "graphs")
    monkeypatch.setattr(exported, "_SESSIONS", OrderedDict())
    first = load_model(name, settings)
    (stored,) = (tmp_path / "graphs").iterdir()
    stored.write_bytes(b"not an onnx graph")
    monkeypatch.setattr(exported, "_SESSIONS", OrderedDict())
    again = load_model(name, settings)
    assert again.runtime == first.runtime and again.runtime.startswith("onnxruntime")
    assert "+fold" in again.runtime or isinstance(again, OnnxRuntimeModel)
    assert stored.read_bytes() != b"not an onnx graph"  # built again, in place
    onnxrt.make_session(stored, 1)
    x = torch.randint(0, 256, (2, 3, 224, 224), dtype=torch.uint8)
    np.testing.assert_array_equal(again.forward(x).features, first.forward(x).features)


@pytest.mark.slow
def test_the_session_cache_is_bounded_and_a_model_keeps_its_own(monkeypatch) -> None:
    """A worker meets many models: only the most recent sessions stay cached, and a model
    still in use keeps working after its session left the cache."""
    settings = Settings.load()
    monkeypatch.setattr(exported, "_SESSIONS", OrderedDict())
    monkeypatch.setattr(exported, "MAX_SESSIONS", 1)
    first = load_model("mobilenet-v2", settings)
    x = torch.randint(0, 256, (2, 3, 224, 224), dtype=torch.uint8)
    before = first.forward(x).features
    first_keys = list(exported._SESSIONS)
    second = load_model("efficientnet-lite0", settings)
    assert isinstance(first, OnnxRuntimeModel) and isinstance(second, OnnxRuntimeModel)
    assert len(first_keys) == len(exported._SESSIONS) == 1
    assert list(exported._SESSIONS) != first_keys  # the older session left the cache
    np.testing.assert_array_equal(first.forward(x).features, before)


@pytest.mark.slow
def test_export_failure_falls_back_to_pytorch_logged_once(monkeypatch, caplog) -> None:
    monkeypatch.delenv("TB_GRAPH_DIR")  # a store of its own: the run's may hold the graph
    monkeypatch.setattr(exported, "_FAILED", {})
    monkeypatch.setattr(onnxrt, "_FALLBACKS", set())

    def broken(spec):
        raise RuntimeError("unsupported operator aten::boom")

    monkeypatch.setattr(exported, "export_onnx", broken)
    with caplog.at_level(logging.WARNING, logger="workers.pipeline.models.onnxrt"):
        models = [load_model("mobilenet-v2") for _ in range(2)]
    assert all(isinstance(m, TorchImageModel) and m.runtime == "torch" for m in models)
    warnings = [r for r in caplog.records if "aten::boom" in r.getMessage()]
    assert len(warnings) == 1
    assert "mobilenet-v2" in warnings[0].getMessage() and warnings[0].levelno == logging.WARNING


class _BatchOfTwoOnly(torch.nn.Module):
    """Traces to a graph that is only right for a batch of 2 (a Python branch on the shape)."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor]:
        return (x * (1.0 if x.shape[0] == 2 else 2.0),)


def test_a_graph_that_disagrees_is_never_used(tmp_path) -> None:
    """The check runs another batch size than the export: a traced constant is caught."""
    spec = ExportSpec(
        module=_BatchOfTwoOnly(),
        example={"x": torch.ones(2, 4)},
        check={"x": torch.ones(3, 4)},
        dynamic={"x": {0: "batch"}},
        outputs=("features",),
        weights="none",
        identity={"kind": "test"},
    )

    store = onnxrt.GraphStore(tmp_path)
    with pytest.raises(Exception, match="disagrees with PyTorch"):
        exported.exported_session(spec, "batch-of-two", store, threads=1)
    assert list(tmp_path.iterdir()) == []


def test_disagreement_thresholds() -> None:
    rng = np.random.default_rng(0)
    ref = rng.normal(size=(4, 32)).astype(np.float32)
    assert disagreement([ref], [ref + 1e-7]) is None
    assert "relative difference" in (disagreement([ref], [ref * (1 + 1e-3)]) or "")
    assert "shape" in (disagreement([ref], [ref[:3]]) or "")


def _conv_graph(scale_shape: tuple[int, ...]) -> onnx.ModelProto:
    """x -> Conv(2 -> 3 channels) -> Sub -> Mul -> Add -> Relu, constants as initializers."""
    rng = np.random.default_rng(1)
    inits = [
        numpy_helper.from_array(rng.normal(size=(3, 2, 3, 3)).astype(np.float32), "w"),
        numpy_helper.from_array(rng.normal(size=(3,)).astype(np.float32), "b"),
        numpy_helper.from_array(rng.normal(size=(3, 1, 1)).astype(np.float32), "mean"),
        numpy_helper.from_array(rng.normal(size=scale_shape).astype(np.float32), "scale"),
        numpy_helper.from_array(rng.normal(size=(1, 3, 1, 1)).astype(np.float32), "shift"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Sub", ["c", "mean"], ["s"]),
        helper.make_node("Mul", ["s", "scale"], ["m"]),
        helper.make_node("Add", ["shift", "m"], ["a"]),
        helper.make_node("Relu", ["a"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 2, 5, 5])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 3, 5, 5])],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return np.asarray(session.run(None, {"x": x})[0])


def test_fold_affine_into_conv() -> None:
    x = np.random.default_rng(2).normal(size=(2, 2, 5, 5)).astype(np.float32)
    original = _conv_graph((3, 1, 1))
    expected = _run(original, x)
    folded, count = fold_affine_into_conv(_conv_graph((3, 1, 1)))
    assert count == 1
    assert [n.op_type for n in folded.graph.node] == ["Conv", "Relu"]
    np.testing.assert_allclose(_run(folded, x), expected, rtol=1e-5, atol=1e-5)
    # A scale that varies along the width is not per channel: the chain stops there.
    wide = _conv_graph((1, 1, 5))
    expected = _run(wide, x)
    wide, count = fold_affine_into_conv(wide)
    assert count == 1 and [n.op_type for n in wide.graph.node] == ["Conv", "Mul", "Add", "Relu"]
    np.testing.assert_allclose(_run(wide, x), expected, rtol=1e-5, atol=1e-5)


def test_other_sources_export_too(zoo, tmp_path) -> None:
    """TorchScript files and sentence-transformers folders run on ONNX Runtime as well."""
    from workers.pipeline.models.zoo import minilm_dir

    net = zoo("mobilenet-v2").module
    torch.jit.script(net.eval()).save(str(tmp_path / "m.pt"))
    scripted = load_model(f"torchscript:{tmp_path / 'm.pt'}")
    assert isinstance(scripted, OnnxRuntimeModel)
    st = load_model(f"st:{minilm_dir()}")
    assert isinstance(st, OnnxRuntimeModel) and st.layer == "sentence_embedding"
    texts = ["the weather is nice today", "compilers turn code into programs"]
    out, ref = st.forward(st.tokenize(texts)), st.reference.forward(st.tokenize(texts))
    np.testing.assert_allclose(out.features, ref.features, atol=1e-5)


def test_texts_are_batched_by_tokens(zoo) -> None:
    """By characters these batches of 2 would pair a 4-token text with a 13-token one; by
    tokens they pair equal lengths and pad nothing."""
    from workers.pipeline.datasets.base import Dataset, sha256_bytes

    model = zoo("minilm-l6")
    texts = ["responsibilities all", "k l m n o p q r s t u", "governments decide",
             "kk l m n o p q r s t"]  # fmt: skip
    lengths = model.token_lengths(texts)
    assert lengths[0] == lengths[2] < lengths[1] == lengths[3]
    ds = Dataset("t", "text", texts, np.asarray(["a", "b", "a", "b"]),
                 [sha256_bytes(t.encode()) for t in texts])  # fmt: skip
    seen: list[torch.Tensor] = []
    original = model.forward

    def spy(batch):
        seen.append(batch["attention_mask"])
        return original(batch)

    model.forward = spy  # type: ignore[method-assign]
    try:
        result = extract([model], ds, batch_size=2)["minilm-l6"]
    finally:
        del model.forward
    assert all(bool(mask.all()) for mask in seen)  # no padding at all
    alone = model.forward(model.tokenize([texts[1]])).features[0]
    np.testing.assert_allclose(result.features[1], alone, atol=1e-5)


def test_models_sharing_an_encoder_run_it_once(zoo, fortunes_small) -> None:
    """minilm-l6 and minilm-intent share MiniLM: one forward pass per batch feeds both, and
    the intent head's probabilities equal those of minilm-intent run alone."""
    subset = fortunes_small.select(np.arange(24))
    plain, intent = zoo("minilm-l6"), zoo("minilm-intent")
    assert plain.trunk is not None and plain.trunk == intent.trunk
    stats = ExtractionStats()
    both = extract([plain, intent], subset, batch_size=8, stats=stats)
    assert stats.forward_calls["minilm-l6"] > 0 and stats.forward_calls["minilm-intent"] == 0
    alone = extract([intent], subset, batch_size=8)["minilm-intent"]
    np.testing.assert_array_equal(both["minilm-intent"].features, alone.features)
    np.testing.assert_allclose(both["minilm-intent"].probs, alone.probs, atol=1e-6)
    assert plain.reference.trunk != plain.trunk  # PyTorch's trunk is another runtime's


def test_text_batches_cap_texts_and_tokens() -> None:
    from workers.pipeline.extraction import text_batches

    lengths = [256, 100, 30, 30, 30, 10, 10]
    assert text_batches(lengths, 4, None) == [slice(0, 4), slice(4, 8)]
    assert text_batches(lengths, 4, 512) == [slice(0, 2), slice(2, 6), slice(6, 10)]
    assert text_batches([600], 4, 512) == [slice(0, 1)]  # one text longer than the budget


def test_prefetched_keeps_order_raises_and_stops() -> None:
    import threading

    from workers.pipeline.extraction import prefetched

    assert list(prefetched(iter(range(50)), 2)) == list(range(50))

    def failing():
        yield 1
        raise ValueError("bad image")

    with pytest.raises(ValueError, match="bad image"):
        list(prefetched(failing(), 2))
    produced: list[int] = []

    def endless():
        i = 0
        while True:
            produced.append(i)
            yield i
            i += 1

    for item in prefetched(endless(), 2):
        if item == 3:
            break
    assert not any(t.name == "tb-prefetch" for t in threading.enumerate())
    assert len(produced) <= 3 + 2 + 2  # it stopped a few items ahead, not running on


def test_tokenizer_fingerprint_ignores_padding_state(zoo) -> None:
    """Tokenizing with padding rewrites the tokenizer's state; its fingerprint (in the recipe,
    so in cache keys) must not change with it, or minilm-intent loaded after minilm-l6 had
    run would key (and group) differently from one loaded before."""
    from workers.pipeline.models.sources import tokenizer_fingerprint

    tokenizer = zoo("minilm-l6").tokenizer
    before = tokenizer_fingerprint(tokenizer)
    tokenizer(["a", "a longer text"], padding=True, truncation=True, max_length=7)
    assert tokenizer_fingerprint(tokenizer) == before
    assert zoo("minilm-l6").recipe.geometry_key() == zoo("minilm-intent").recipe.geometry_key()
