"""The registry and the compute entry point."""

import numpy as np
import pytest

import scoring
from scoring import TransferabilityError

from .helpers import separable_features, softmax_probs


def test_every_entry_declares_a_well_formed_metric():
    for spec in scoring.REGISTRY.values():
        assert spec.version >= 1
        assert spec.needs <= {"features", "probs"} and spec.needs
        assert spec.targets <= {"classification", "regression"} and spec.targets
        assert spec.higher_is_better
        low, high = spec.bounds
        assert low < high, spec.name


def test_applicable_follows_needs_and_targets():
    headless = scoring.applicable(has_features=True, has_probs=False)
    assert "logme" in headless and "leep" not in headless and "logme_regression" not in headless
    assert scoring.applicable(["logme", "leep"], has_features=False, has_probs=True) == ["leep"]
    assert scoring.applicable(has_features=True, has_probs=True, target="regression") == [
        "logme_regression",
        "knn_regression",
        "linear_probe_r2",
    ]
    with pytest.raises(TransferabilityError, match=r"unknown metric 'logmee'.*known metrics"):
        scoring.applicable(["logmee"], has_features=True, has_probs=False)


def test_compute_equals_each_entry_s_public_function():
    x, labels = separable_features(200, 12, 4, strength=1.5)
    probs = softmax_probs(x, 30)
    names = [n for n, spec in scoring.REGISTRY.items() if "classification" in spec.targets]
    got = scoring.compute(names, labels, features=x, probs=probs)
    for name in names:
        spec = scoring.REGISTRY[name]
        alone = spec.function(probs if spec.needs == {"probs"} else x, labels)
        assert got[name] == pytest.approx(alone, rel=1e-12), name


def test_regression_through_compute():
    x, _ = separable_features(100, 5, 2, strength=0.0)
    y = x[:, 0] * 2.0
    got = scoring.compute(["logme_regression"], y, features=x, target="regression")
    assert got["logme_regression"] == pytest.approx(scoring.logme_regression(x, y))


def test_per_metric_problems_do_not_stop_the_others():
    x, labels = separable_features(20, 500, 2, strength=2.0)
    labels = labels.copy()
    labels[0] = 7  # a class with one sample
    result = scoring.compute_detailed(["logme", "hscore", "gbc", "leep"], labels, features=x)
    assert set(result.values) == {"logme"}
    assert "hscore_shrinkage" in result.errors["hscore"]
    assert "at least 2 samples per class" in result.errors["gbc"]
    assert "needs probs" in result.errors["leep"]
    with pytest.raises(TransferabilityError, match="hscore"):
        scoring.compute(["logme", "hscore"], labels, features=x)


def test_compute_rejects_bad_requests():
    x, labels = separable_features(20, 3, 2, strength=1.0)
    with pytest.raises(TransferabilityError, match="no metrics"):
        scoring.compute([], labels, features=x)
    with pytest.raises(TransferabilityError, match="pass features, probs or both"):
        scoring.compute(["logme"], labels)
    with pytest.raises(TransferabilityError, match="rows"):
        scoring.compute(["logme", "leep"], labels, features=x, probs=softmax_probs(x, 3)[:-1])
    with pytest.raises(TransferabilityError, match="options were given for 'gbc'"):
        scoring.compute(["logme"], labels, features=x, options={"gbc": {"gaussian": "spherical"}})
    with pytest.raises(TransferabilityError, match="unknown target"):
        scoring.compute(["logme"], labels, features=x, target="ranking")  # type: ignore[arg-type]


def test_options_reach_the_metric():
    x, labels = separable_features(100, 6, 3, strength=1.0)
    spherical = scoring.compute(
        ["gbc"], labels, features=x, options={"gbc": {"gaussian": "spherical"}}
    )
    assert spherical["gbc"] == pytest.approx(scoring.gbc(x, labels, gaussian="spherical"))
    assert spherical["gbc"] != pytest.approx(scoring.gbc(x, labels))
    assert np.isfinite(spherical["gbc"])
