"""Text pairs: CSV or JSONL ``text, text_pair, label``, encoded by the tokenizer's own pair
encoding. Real fortunes paired by topic (``tests/nlp_data.py``); the zoo's MiniLM."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.nlp_data import pair_rows, write_jsonl
from workers.pipeline.datasets import check_upload, open_dataset, open_upload
from workers.pipeline.datasets.pairs import TextPair
from workers.pipeline.errors import PipelineError
from workers.pipeline.extraction import extract
from workers.pipeline.models.text_tasks import sample_tokens
from workers.pipeline.models.zoo import minilm_dir


def _csv(path: Path, rows: list[dict[str, str]]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=["text", "text_pair", "label"])
        writer.writeheader()
        writer.writerows(rows)
    return path


@pytest.fixture(params=["jsonl", "csv"])
def pair_file(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    rows = pair_rows(24)
    if request.param == "csv":
        return _csv(tmp_path / "pairs.csv", rows)
    return write_jsonl(tmp_path / "pairs.jsonl", rows)  # type: ignore[arg-type]


def test_a_sample_is_a_pair_and_the_scan_equals_reading_whole(pair_file: Path) -> None:
    rows = pair_rows(24)
    dataset = open_dataset(str(pair_file))
    assert dataset.kind == "pairs" and dataset.modality == "text" and len(dataset) == 24
    assert dataset.samples[0] == TextPair(rows[0]["text"], rows[0]["text_pair"])
    assert dataset.classes == ["other", "same"]
    summary = check_upload(pair_file)
    assert summary.content_hash == open_upload(pair_file).content_hash == dataset.content_hash
    assert summary.kind == "pairs" and summary.classes == [("other", 12), ("same", 12)]


def test_a_pair_never_hashes_as_a_text_holding_both(tmp_path: Path) -> None:
    pairs = [{"text": "a", "text_pair": "b", "label": x} for x in "xy"]
    texts = [{"text": '["a", "b"]', "label": x} for x in "xy"]
    pair = write_jsonl(tmp_path / "p.jsonl", pairs)  # type: ignore[arg-type]
    text = write_jsonl(tmp_path / "t.jsonl", texts)  # type: ignore[arg-type]
    assert open_dataset(str(pair)).content_hash != open_dataset(str(text)).content_hash


@pytest.mark.parametrize("suffix", ["jsonl", "csv"])
@pytest.mark.parametrize(
    ("row", "message"),
    [
        ({"text": "one", "text_pair": "", "label": "x"}, "has no second text ('text_pair')"),
        ({"text": " ", "text_pair": "two", "label": "x"}, "has no first text ('text')"),
        ({"text": "one", "text_pair": "two", "label": ""}, "has no 'label'"),
    ],
)
def test_a_missing_pair_names_its_row(
    tmp_path: Path, suffix: str, row: dict[str, str], message: str
) -> None:
    rows = [*pair_rows(3), row]
    path = tmp_path / f"bad.{suffix}"
    if suffix == "csv":
        _csv(path, rows)
        line = 5  # the header, three good rows
    else:
        write_jsonl(path, rows)  # type: ignore[arg-type]
        line = 4
    for read in (lambda: open_dataset(str(path)), lambda: check_upload(path)):
        with pytest.raises(PipelineError) as caught:
            read()
        assert f"row {line} {message}" in str(caught.value)


def test_a_jsonl_row_without_its_pair_key_is_refused(tmp_path: Path) -> None:
    rows: list[dict[str, object]] = [*pair_rows(3), {"text": "alone", "label": "x"}]
    path = tmp_path / "p.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(PipelineError, match="row 4 has no second text"):
        check_upload(path)
    with pytest.raises(PipelineError, match="row 4 has no second text"):
        open_dataset(str(path))


@pytest.mark.slow
def test_pairs_are_the_tokenizers_own_pair_encoding(zoo, tmp_path: Path) -> None:
    from transformers import AutoModel, AutoTokenizer

    rows = pair_rows(12)
    path = write_jsonl(tmp_path / "pairs.jsonl", rows)  # type: ignore[arg-type]
    dataset = open_dataset(str(path))
    model = zoo("minilm-l6")
    tokenizer = AutoTokenizer.from_pretrained(str(minilm_dir()))
    firsts, seconds = [r["text"] for r in rows], [r["text_pair"] for r in rows]
    own = tokenizer(firsts, seconds, padding=True, truncation=True, max_length=256)
    tokens = sample_tokens(model, list(dataset.samples))
    assert tokens["input_ids"].tolist() == own["input_ids"]
    assert tokens["token_type_ids"].tolist() == own["token_type_ids"]
    sep = tokenizer.sep_token_id
    for ids, types in zip(own["input_ids"], own["token_type_ids"], strict=True):
        assert ids.count(sep) == 2 and 1 in types  # two segments, the second marked
    # features: the mean of the last hidden state over each pair's own encoding
    encoder = AutoModel.from_pretrained(str(minilm_dir())).eval()
    expected = []
    for first, second in zip(firsts, seconds, strict=True):
        encoded = tokenizer(first, second, return_tensors="pt", truncation=True, max_length=256)
        with torch.no_grad():
            expected.append(encoder(**encoded).last_hidden_state[0].mean(dim=0).numpy())
    features = extract([model], dataset)["minilm-l6"].features
    np.testing.assert_allclose(features, np.stack(expected), atol=2e-5)
    plain = extract([model], open_dataset(str(write_texts(tmp_path, rows))))["minilm-l6"]
    assert not np.allclose(plain.features, features, atol=1e-3)  # not the first text alone


def write_texts(tmp_path: Path, rows: list[dict[str, str]]) -> Path:
    return write_jsonl(
        tmp_path / "firsts.jsonl",
        [{"text": r["text"], "label": r["label"]} for r in rows],  # type: ignore[misc]
    )


@pytest.mark.slow
def test_fine_tuning_refuses_pairs_and_words_rather_than_training_on_their_repr(
    zoo, tmp_path: Path
) -> None:
    from tests.nlp_data import ner_rows
    from workers.pipeline.finetune.run import _inputs

    pairs = open_dataset(str(write_jsonl(tmp_path / "p.jsonl", pair_rows(6))))  # type: ignore[arg-type]
    words = open_dataset(str(write_jsonl(tmp_path / "n.jsonl", ner_rows(4))))  # type: ignore[arg-type]
    for dataset, held in ((pairs, "holds text pairs"), (words, "holds the words")):
        with pytest.raises(PipelineError, match=held):
            _inputs(zoo("minilm-l6"), dataset, torch.device("cpu"))
