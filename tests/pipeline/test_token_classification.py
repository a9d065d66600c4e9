"""Token classification: JSONL ``{"tokens": [...], "tags": [...]}``, one sample per word.

The data are real fortune sentences with rule-derived tags (``tests/nlp_data.py`` says which
rules); the model is the zoo's MiniLM. Word features are checked against the model's own
subword hidden states, pooled here independently of the pipeline.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest
import torch

import scoring
from tests.nlp_data import ner_rows, write_jsonl
from workers.pipeline.cache import FeatureCache, feature_key
from workers.pipeline.datasets import check_upload, open_dataset, open_upload
from workers.pipeline.datasets.tokens import WordSample, entity_type
from workers.pipeline.errors import PipelineError
from workers.pipeline.extraction import ExtractionStats, extract
from workers.pipeline.models.text_tasks import word_chunks, word_features
from workers.pipeline.models.zoo import minilm_dir
from workers.pipeline.rank import RankRequest, run_rank


@pytest.fixture
def ner_file(tmp_path: Path) -> Path:
    return write_jsonl(tmp_path / "ner.jsonl", ner_rows(24))


def test_a_sample_is_a_word_and_classes_are_word_tags(ner_file: Path) -> None:
    rows = ner_rows(24)
    dataset = open_dataset(str(ner_file))
    words = sum(len(row["tokens"]) for row in rows)
    assert dataset.kind == "tokens" and dataset.modality == "text"
    assert len(dataset) == words
    assert dataset.classes == sorted({tag for row in rows for tag in row["tags"]})
    first: WordSample = dataset.samples[0]  # type: ignore[assignment]
    assert first.word == rows[0]["tokens"][0] and first.index == 0
    assert dataset.labels.tolist() == [tag for row in rows for tag in row["tags"]]


def test_entity_tags_merge_bio_prefixes(ner_file: Path) -> None:
    bio = open_dataset(str(ner_file))
    entity = open_dataset(str(ner_file), tags="entity")
    assert set(entity.classes) == {"CAP", "NUM", "O"} & {entity_type(t) for t in bio.classes}
    assert entity.labels.tolist() == [entity_type(t) for t in bio.labels.tolist()]
    assert [entity_type(t) for t in ("B-PER", "I-PER", "E-LOC", "S-ORG", "O", "MISC")] == [
        "PER", "PER", "LOC", "ORG", "O", "MISC",
    ]  # fmt: skip
    assert entity.content_hash != bio.content_hash


def test_per_class_caps_count_words(ner_file: Path) -> None:
    dataset = open_dataset(str(ner_file))
    small = dataset.subsample(3, seed=1)
    _, counts = np.unique(small.labels, return_counts=True)
    assert counts.max() == 3 and len(small) == 3 * len(dataset.classes)
    assert all(isinstance(s, WordSample) for s in small.samples)


def test_the_upload_scan_equals_reading_whole(ner_file: Path) -> None:
    for tags in (None, "bio"):
        summary = check_upload(ner_file, tags=tags)
        dataset = open_upload(ner_file, tags=tags)
        assert summary.content_hash == dataset.content_hash
        assert summary.n_samples == len(dataset) and summary.kind == "tokens"
        assert [label for label, _ in summary.classes] == dataset.classes


def test_an_entity_upload_is_stored_merged_and_reads_back_alike(ner_file: Path) -> None:
    merged = open_dataset(str(ner_file), tags="entity")
    summary = check_upload(ner_file, tags="entity")  # rewrites the file, merged
    assert summary.content_hash == merged.content_hash
    assert [label for label, _ in summary.classes] == ["CAP", "NUM", "O"]
    # the stored file now gives the same dataset however it is opened
    assert open_dataset(str(ner_file)).content_hash == merged.content_hash
    assert open_dataset(str(ner_file), tags="entity").content_hash == merged.content_hash


def _malformed(tmp_path: Path, bad: dict[str, object] | str) -> Path:
    good = ner_rows(3)
    line = bad if isinstance(bad, str) else json.dumps(bad)
    text = "".join(json.dumps(r) + "\n" for r in good[:2]) + "\n" + line + "\n"
    return (tmp_path / "bad.jsonl").write_text(text) and tmp_path / "bad.jsonl"


@pytest.mark.parametrize(
    ("row", "words"),
    [
        ({"tokens": ["Alan", "Turing", "wrote"], "tags": ["B-PER", "I-PER"]},
         "3 tokens but 2 tags"),
        ({"tokens": [], "tags": []}, "'tokens' is empty"),
        ({"tokens": ["a", "b"], "tags": ["O", 7]}, "tag 1 (of token 'b') is 7, not a tag name"),
        ({"tokens": ["a", "b"], "tags": ["O", None]}, "tag 1 (of token 'b') is None"),
        ({"tokens": ["a", " "], "tags": ["O", "O"]}, "token 1 is ' '"),
        ({"tokens": "a b", "tags": ["O", "O"]}, "'tokens' must be a list of words, got str"),
        ({"tokens": ["a", "b"]}, "'tags' must be a list of tags, one per token, got nothing"),
    ],
)  # fmt: skip
def test_malformed_rows_name_their_line(tmp_path: Path, row: dict, words: str) -> None:
    path = _malformed(tmp_path, row)
    # line 4: two good lines and a blank one come first
    for read in (
        lambda: open_dataset(str(path)),
        lambda: open_upload(path),
        lambda: check_upload(path),
    ):
        with pytest.raises(PipelineError) as caught:
            read()
        assert f"bad.jsonl:4: {words}" in str(caught.value)


def test_a_tag_scheme_that_does_not_exist_and_tags_on_other_data_are_refused(
    ner_file: Path, tmp_path: Path
) -> None:
    with pytest.raises(PipelineError, match="use 'bio'"):
        open_dataset(str(ner_file), tags="iob2")
    texts = write_jsonl(tmp_path / "t.jsonl", [{"text": "a b", "label": "x"}] * 2)
    with pytest.raises(PipelineError, match="applies to token-classification datasets"):
        open_dataset(str(texts), tags="entity")
    with pytest.raises(PipelineError, match="applies to token-classification datasets"):
        check_upload(texts, tags="entity")
    csv = tmp_path / "ner.csv"
    csv.write_text('tokens,tags\n"a b","O O"\n')
    with pytest.raises(PipelineError, match="a token-classification dataset is JSONL"):
        open_dataset(str(csv))


def _own_word_means(sentences: list[list[str]], layer: int = -1) -> list[np.ndarray]:
    """Each word's mean subword vector in MiniLM's hidden state ``layer`` (the last by
    default), one sentence at a time (no padding), straight from transformers."""
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(minilm_dir()))
    model = AutoModel.from_pretrained(str(minilm_dir())).eval()
    out = []
    for words in sentences:
        encoded = tokenizer(words, is_split_into_words=True, return_tensors="pt")
        with torch.no_grad():
            hidden = model(**encoded, output_hidden_states=True).hidden_states[layer][0].numpy()
        ids = np.array([-1 if w is None else w for w in encoded.word_ids(0)])
        out.append(np.stack([hidden[ids == w].mean(axis=0) for w in range(len(words))]))
    return out


@pytest.mark.slow
def test_word_features_are_the_mean_of_the_models_own_subword_states(
    zoo, ner_file: Path, data_dir: Path
) -> None:
    dataset = open_dataset(str(ner_file))
    model = zoo("minilm-l6")
    cache = FeatureCache(data_dir / "features")
    stats = ExtractionStats()
    (features,) = extract([model], dataset, cache=cache, batch_size=8, stats=stats).values()
    assert features.features.shape == (len(dataset), 384)
    expected = np.concatenate(_own_word_means([list(r["tokens"]) for r in ner_rows(24)]))
    np.testing.assert_allclose(features.features, expected, atol=2e-5)
    # keyed under the model as loaded, as the service's steps key it; a second extraction
    # is a cache hit
    assert features.cache_key == feature_key(model, dataset.content_hash)
    again = ExtractionStats()
    (cached,) = extract([model], dataset, cache=cache, stats=again).values()
    assert cached.from_cache and again.cache_hits == ["minilm-l6"]
    np.testing.assert_array_equal(cached.features, features.features)


@pytest.mark.slow
def test_a_subsample_runs_each_kept_sentence_once_and_picks_its_words(zoo, ner_file: Path) -> None:
    dataset = open_dataset(str(ner_file))
    model = zoo("minilm-l6")
    full = extract([model], dataset)["minilm-l6"].features
    small = dataset.subsample(4, seed=3)
    picked = extract([model], small)["minilm-l6"].features
    digests = {d: i for i, d in enumerate(dataset.digests)}
    rows = [digests[d] for d in small.digests]
    np.testing.assert_allclose(picked, full[rows], atol=2e-5)


@pytest.mark.slow
def test_a_sentence_longer_than_the_model_is_encoded_in_chunks_of_whole_words(zoo) -> None:
    from workers.pipeline.models.preprocessing import TextRecipe
    from workers.pipeline.models.text import HFTextModel

    reference = getattr(zoo("minilm-l6"), "reference", zoo("minilm-l6"))
    short = HFTextModel(
        name="minilm-16",
        source="test",
        model=reference.model,
        tokenizer=reference.tokenizer,
        recipe=TextRecipe(tokenizer="all-MiniLM-L6-v2", max_length=16),
    )
    words = ner_rows(40, max_words=60)
    sentence = max((list(r["tokens"]) for r in words), key=len)
    (runs,) = word_chunks(short, [sentence])
    assert len(runs) > 1 and runs[0][0] == 0 and runs[-1][1] == len(sentence)
    assert all(a[1] == b[0] for a, b in itertools.pairwise(runs))
    (features,) = word_features(short, [sentence])
    expected = np.concatenate(_own_word_means([sentence[a:b] for a, b in runs]))
    np.testing.assert_allclose(features.numpy(), expected, atol=2e-5)


@pytest.mark.slow
def test_every_label_metric_scores_the_word_features(zoo, ner_file: Path) -> None:
    metrics = [n for n, s in scoring.REGISTRY.items() if "classification" in s.targets]
    result = run_rank(
        RankRequest(
            dataset=str(ner_file),
            models=["minilm-l6", "minilm-intent"],
            metrics=metrics,
            tags="entity",
            use_cache=False,
        )
    )
    assert result.n == len(open_dataset(str(ner_file)))
    for row in result.rows:
        missing = {m: row.errors.get(m) for m in metrics if row.scores.get(m) is None}
        if row.model == "minilm-l6":  # no head: the metrics of source probabilities cannot run
            missing = {m: e for m, e in missing.items() if "probs" not in scoring.REGISTRY[m].needs}
        assert not missing, (row.model, missing)


@pytest.mark.slow
def test_a_sentence_transformers_pipeline_pools_its_token_embeddings(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from workers.pipeline.models.text import SentenceTransformerModel
    from workers.pipeline.models.zoo import load_model

    monkeypatch.setenv("TB_RUNTIME", "torch")
    model = load_model(f"st:{minilm_dir()}")
    assert isinstance(model, SentenceTransformerModel)
    sentences = [list(r["tokens"]) for r in ner_rows(6)]
    got = word_features(model, sentences)
    pipeline = model.model
    for words, features in zip(sentences, got, strict=True):
        encoded = pipeline.tokenizer(words, is_split_into_words=True, return_tensors="pt")
        with torch.no_grad():
            states = pipeline(dict(encoded))["token_embeddings"][0].numpy()
        ids = np.array([-1 if w is None else w for w in encoded.word_ids(0)])
        expected = np.stack([states[ids == w].mean(axis=0) for w in range(len(words))])
        np.testing.assert_allclose(features.numpy(), expected, atol=2e-5)


@pytest.mark.slow
def test_word_features_of_every_layer_come_from_one_pass_and_the_models_own_states(
    zoo, ner_file: Path
) -> None:
    dataset = open_dataset(str(ner_file))
    model = zoo("minilm-l6")
    stats = ExtractionStats()
    (got,) = extract([model], dataset, layers={"minilm-l6": (1, 3, 6)}, stats=stats).values()
    sentences = [list(r["tokens"]) for r in ner_rows(24)]
    batches = stats.forward_calls["minilm-l6"]
    plain = ExtractionStats()
    extract([model], dataset, stats=plain)
    assert batches == plain.forward_calls["minilm-l6"]  # one pass per batch, all layers
    for layer in (1, 3, 6):
        expected = np.concatenate(_own_word_means(sentences, layer))
        np.testing.assert_allclose(got.layers[layer], expected, atol=2e-5)
    np.testing.assert_array_equal(got.layers[6], got.features)


def test_an_entity_upload_keeps_non_ascii_words_as_written(tmp_path: Path) -> None:
    rows = [
        {"tokens": ["Gödel", "taught", "in", "Zürich"], "tags": ["B-PER", "O", "O", "B-LOC"]},
        {"tokens": ["Erdős", "wrote", "1475", "papers"], "tags": ["B-PER", "O", "B-NUM", "O"]},
    ]
    path = write_jsonl(tmp_path / "ner.jsonl", rows)  # type: ignore[arg-type]
    size = path.stat().st_size
    merged = open_dataset(str(path), tags="entity")
    assert check_upload(path, tags="entity").content_hash == merged.content_hash
    assert "Zürich" in path.read_text(encoding="utf-8") and path.stat().st_size <= size
    assert [s.word for s in open_dataset(str(path)).samples][:4] == rows[0]["tokens"]
