"""The default zoo: real pretrained weights with the right preprocessing."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from PIL import Image
from sklearn.datasets import load_sample_images

from workers.pipeline.models.zoo import ZOO, intent_head, zoo_names

PALACE = 698
IMAGENET_MODELS = ["efficientnet-lite0", "efficientnet-lite1", "efficientnet-lite2", "mobilenet-v2"]


@pytest.fixture(scope="module")
def china() -> Image.Image:
    return Image.fromarray(load_sample_images().images[0])


@pytest.mark.parametrize("name", IMAGENET_MODELS)
def test_imagenet_models_see_a_palace(zoo, china, name: str) -> None:
    """china.jpg is ImageNet class 698 for every ImageNet model: weights + recipe are right."""
    model = zoo(name)
    out = model.forward(model.recipe.geometry(china)[None])
    assert out.probs is not None
    assert out.probs.shape == (1, 1000)
    assert int(out.probs.argmax()) == PALACE
    assert model.head_classes is not None and model.head_classes[PALACE] == "palace"
    assert out.features.shape == (1, 1280)
    assert out.features.dtype == np.float32
    np.testing.assert_allclose(out.probs.sum(), 1.0, rtol=1e-5)


def test_open_nsfw_two_class_head(zoo, china) -> None:
    model = zoo("open-nsfw")
    out = model.forward(model.recipe.geometry(china)[None])
    assert out.features.shape == (1, 1024)
    assert out.probs is not None and out.probs.shape == (1, 2)
    assert model.head_classes == ("sfw", "nsfw")
    assert out.probs[0, 0] > 0.9  # a landscape photo is safe for work


def test_fingerprints_differ_and_are_sha256(zoo) -> None:
    prints = {zoo(n).fingerprint for n in [*IMAGENET_MODELS, "open-nsfw"]}
    assert len(prints) == 5
    assert all(len(p) == 64 and int(p, 16) >= 0 for p in prints)


def test_minilm_features(zoo) -> None:
    model = zoo("minilm-l6")
    out = model.forward(model.tokenize(["a cat sat on the mat", "stock markets fell today"]))
    assert out.features.shape == (2, 384)
    assert out.features.dtype == np.float32
    assert out.probs is None and not model.has_head


def test_intent_head_matches_the_sklearn_classifier(zoo) -> None:
    """Our plain-array head reproduces LogisticRegression.predict_proba on MiniLM embeddings."""
    import joblib
    import rag_intent_classifier

    model = zoo("minilm-intent")
    texts = ["what time is it in tokyo", "translate good morning into spanish", "set a timer"]
    out = model.forward(model.tokenize(texts))
    assert out.probs is not None and out.probs.shape == (3, 157)
    from pathlib import Path

    path = Path(rag_intent_classifier.__file__).parent / "models" / "LogisticRegression.joblib"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        classifier = joblib.load(path)  # the pinned trusted file, as the zoo loads it
    normed = out.features / np.linalg.norm(out.features, axis=1, keepdims=True)
    np.testing.assert_allclose(out.probs, classifier.predict_proba(normed), atol=1e-4)
    predicted = [model.head_classes[i] for i in out.probs.argmax(1)]  # type: ignore[index]
    assert predicted[0] == "time" and predicted[1] == "translate"
    assert intent_head() is intent_head()  # loaded once


def test_zoo_listing() -> None:
    assert zoo_names("image") == [*IMAGENET_MODELS, "open-nsfw"]
    assert zoo_names("text") == ["minilm-l6", "minilm-intent"]
    assert ZOO["minilm-intent"].has_head and not ZOO["minilm-l6"].has_head
