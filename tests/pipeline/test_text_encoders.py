"""What decides a text encoder's features besides its weights, on the offline MiniLM folder
copied and changed as a user's folder may be: its tokenizer's padding side, a
sentence-transformers pipeline's pooling, and a length over the model's positions."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from workers.pipeline.cache import FeatureCache, feature_key
from workers.pipeline.datasets.base import Dataset
from workers.pipeline.errors import PipelineError
from workers.pipeline.extraction import extract
from workers.pipeline.models import load_model
from workers.pipeline.models.zoo import minilm_dir

pytestmark = pytest.mark.slow

TEXTS = [
    "the cat sat on the mat",
    "stock markets fell sharply in early trading on tuesday after the report",
    "ok",
]


def _texts() -> Dataset:
    return Dataset("d", "text", TEXTS, np.array(["x", "y", "x"]), [t.encode() for t in TEXTS])


def _copy(tmp_path: Path, name: str) -> Path:
    folder = tmp_path / name
    shutil.copytree(minilm_dir(), folder)
    return folder


def _edit(path: Path, **changes: object) -> None:
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


def test_a_left_padding_tokenizer_gives_each_text_the_same_features_in_any_batch(
    tmp_path: Path,
) -> None:
    """Its folder said padding_side=left: the padding before a short text shifted its
    positions, and its features changed with the texts it was batched with (cosine 0.40)."""
    folder = _copy(tmp_path, "left")
    _edit(folder / "tokenizer_config.json", padding_side="left")
    model = load_model(f"hf:{folder}")
    alone = extract([model], _texts(), batch_size=1)[model.name].features
    batched = extract([model], _texts(), batch_size=3)[model.name].features
    np.testing.assert_allclose(alone, batched, atol=1e-5)


def test_pipelines_of_the_same_weights_pooled_differently_keep_their_own_features(
    tmp_path: Path,
) -> None:
    """A copy pooled by its first token, without the Normalize step, had the same weights, so
    the same cache key and exported graph: it was served the mean-pooled, unit-length
    features of the original."""
    folder = _copy(tmp_path, "cls")
    _edit(folder / "1_Pooling" / "config.json", pooling_mode_cls_token=True,
          pooling_mode_mean_tokens=False)  # fmt: skip
    modules = json.loads((folder / "modules.json").read_text())
    (folder / "modules.json").write_text(json.dumps(modules[:2]))  # no Normalize
    mean, cls = load_model(f"st:{minilm_dir()}"), load_model(f"st:{folder}")
    data = _texts()
    assert feature_key(mean, data.content_hash) != feature_key(cls, data.content_hash)
    cache = FeatureCache(tmp_path / "cache")
    first = extract([mean], data, cache=cache)[mean.name].features
    second = extract([cls], data, cache=cache)[cls.name]
    assert not second.from_cache
    np.testing.assert_allclose(np.linalg.norm(first, axis=1), 1.0, atol=1e-5)
    assert np.linalg.norm(second.features, axis=1).min() > 2.0  # CLS, not normalised


def test_a_max_length_over_the_models_positions_is_refused_with_its_limit() -> None:
    """It was accepted, then every long text crashed with a tensor-size mismatch."""
    with pytest.raises(PipelineError, match=r"max_length=1024 is over the 512 positions"):
        load_model(f"hf:{minilm_dir()}?max_length=1024")
