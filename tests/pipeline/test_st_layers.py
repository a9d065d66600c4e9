"""Layers of a sentence-transformers pipeline (``st:``): its transformer's hidden states,
mean-pooled over real tokens, from the pipeline's one forward pass, and its own sentence
embedding as the last layer. The real MiniLM pipeline that ships in a registry package; the
expected features are computed here from the transformer itself, without the pipeline."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from workers.pipeline.datasets import Dataset, open_dataset
from workers.pipeline.extraction import ExtractionStats, extract
from workers.pipeline.models import CandidateModel, load_model
from workers.pipeline.models.zoo import minilm_dir
from workers.pipeline.rank import RankRequest, run_rank
from workers.settings import Settings

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def st_model() -> CandidateModel:
    settings = Settings.load().model_copy(update={"runtime": "torch"})
    return load_model(f"st:{minilm_dir()}", settings)


@pytest.fixture(scope="module")
def texts() -> Dataset:
    return open_dataset("fortunes").subsample(4, seed=0)


def test_st_layers_equal_the_transformers_own_hidden_states(st_model, texts) -> None:
    assert st_model.layers_unsupported() is None
    names = st_model.layer_names()
    assert len(names) == 7 and names[-1] == "sentence_embedding"
    chosen = st_model.select_layers("all")
    assert chosen == tuple(range(7))
    stats = ExtractionStats()
    got = extract([st_model], texts, layers={st_model.name: chosen}, stats=stats)[st_model.name]
    plain = extract([st_model], texts)[st_model.name]
    np.testing.assert_array_equal(got.layers[6], got.features)  # the last: the embedding
    np.testing.assert_allclose(got.features, plain.features, rtol=1e-5, atol=1e-6)

    pipeline = st_model.model  # type: ignore[attr-defined]
    encoder = pipeline[0].auto_model
    tokens = st_model.tokenize([str(t) for t in texts.samples])
    inputs = {
        k: v for k, v in tokens.items() if k in ("input_ids", "attention_mask", "token_type_ids")
    }
    with torch.inference_mode():
        hidden = encoder(**inputs, output_hidden_states=True).hidden_states
        own = pipeline.encode([str(t) for t in texts.samples], convert_to_numpy=True)
    mask = tokens["attention_mask"].numpy()[..., None].astype(np.float64)
    assert len(hidden) == 7
    for index in range(6):
        expected = (hidden[index].numpy() * mask).sum(1) / mask.sum(1)
        np.testing.assert_allclose(got.layers[index], expected, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(got.features, own, rtol=1e-4, atol=1e-5)
    assert not encoder.config.output_hidden_states  # left as it was


def test_st_layers_cost_one_forward_pass(st_model, texts) -> None:
    calls: list[int] = []
    handle = st_model.model[0].register_forward_pre_hook(lambda *_: calls.append(1))  # type: ignore[attr-defined]
    try:
        extract([st_model], texts, batch_size=64)
        last_only = len(calls)
        calls.clear()
        extract(
            [st_model], texts, layers={st_model.name: st_model.select_layers("all")}, batch_size=64
        )
    finally:
        handle.remove()
    assert last_only >= 1 and len(calls) == last_only


def test_rank_an_st_model_by_layers() -> None:
    result = run_rank(
        RankRequest(
            dataset="fortunes", models=[f"st:{minilm_dir()}"], metrics=["logme"],
            per_class=6, layers="all", use_cache=False,
        )
    )  # fmt: skip
    (row,) = result.rows
    assert row.error is None and row.layers is not None
    assert list(row.layers) == [str(i) for i in range(7)]
    assert row.layer == "6" and row.best_layer in row.layers


def test_st_word_features_of_every_layer(st_model, tmp_path) -> None:
    """Token classification by layer on an ``st:`` pipeline: each layer's word features are
    the word means of the transformer's own hidden states, from one pass per batch."""
    from tests.nlp_data import ner_rows, write_jsonl
    from tests.pipeline.test_token_classification import _own_word_means

    dataset = open_dataset(str(write_jsonl(tmp_path / "ner.jsonl", ner_rows(12))))
    stats = ExtractionStats()
    layers = {st_model.name: (1, 3, 6)}
    (got,) = extract([st_model], dataset, layers=layers, stats=stats).values()
    plain = ExtractionStats()
    (last,) = extract([st_model], dataset, stats=plain).values()
    assert stats.forward_calls[st_model.name] == plain.forward_calls[st_model.name]
    sentences = [list(r["tokens"]) for r in ner_rows(12)]
    for layer in (1, 3, 6):
        expected = np.concatenate(_own_word_means(sentences, layer))
        np.testing.assert_allclose(got.layers[layer], expected, atol=2e-5)
    np.testing.assert_array_equal(got.layers[6], got.features)
    np.testing.assert_allclose(got.features, last.features, atol=2e-5)
