"""PARC against the authors' code on identical inputs, and its degenerate inputs."""

import numpy as np
import pytest
import scipy.stats
import sklearn.preprocessing

import scoring
from scoring._context import FeatureStats
from scoring._validation import check_labels
from scoring.parc import reduce_dims


# Transcribed from dbolya/parc, methods.py, class PARC (commit
# ddfca43a84d35328897d107d6f86e860b11801ce): forward() and get_parc_correlation(), with
# n_dims=None (feature_reduce returns the features unchanged) and the class count from y.
# ``exact_labels`` rounds the label dissimilarity to the two values it has in exact arithmetic
# (0 and C / (C - 1)); the reference's own floating point splits them in the last bit.
def reference_parc(features, y, exact_labels=True):
    num_classes = len(np.unique(y))
    labels = np.eye(num_classes)[y] if y.ndim == 1 else y
    feats1 = sklearn.preprocessing.StandardScaler().fit_transform(features)
    rdm1 = 1 - np.corrcoef(feats1)
    rdm2 = 1 - np.corrcoef(labels)
    if exact_labels:
        rdm2 = np.round(rdm2, 12)
    lt = np.triu_indices(rdm1.shape[0], 1)
    return scipy.stats.spearmanr(rdm1[lt], rdm2[lt])[0] * 100


def _problem(n, d, c, seed):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, c, n)
    return rng.normal(size=(n, d)) + 0.4 * rng.normal(size=(c, d))[y], y


@pytest.mark.parametrize(
    ("n", "d", "c", "seed"), [(300, 16, 3, 0), (250, 40, 5, 1), (400, 8, 37, 2)]
)
def test_equals_the_reference_code(n, d, c, seed):
    x, y = _problem(n, d, c, seed)
    assert scoring.parc(x, y, dims=None) == pytest.approx(reference_parc(x, y), rel=1e-6)


def test_the_reference_s_rounded_label_dissimilarities_move_its_score():
    """Unrounded, 1 - corrcoef(one_hot) splits the different-class pairs of 37 classes into two
    neighbouring doubles that spearmanr ranks apart: the reference then reports 1.2, not 3.9."""
    x, y = _problem(300, 16, 37, 0)
    exact = scoring.parc(x, y, dims=None)
    assert exact == pytest.approx(reference_parc(x, y), rel=1e-6)
    assert abs(reference_parc(x, y, exact_labels=False) - exact) > 1.0


def test_with_pca_equals_the_reference_on_the_same_components():
    """dims=32 (the paper's runs): the reference on the exact leading components (scikit-learn's
    randomized PCA with iterated_power=1 only approximates them)."""
    x, y = _problem(300, 80, 4, 3)
    stats = FeatureStats(x, check_labels(y, 300), "cpu")
    z = reduce_dims(stats, 32)
    assert z.shape == (300, 32)
    pca = sklearn.decomposition.PCA(n_components=32, svd_solver="full").fit_transform(x)
    np.testing.assert_allclose(np.abs(z), np.abs(pca), atol=1e-8)
    np.testing.assert_allclose(z, pca, atol=1e-8)  # the same signs as scikit-learn's
    assert scoring.parc(x, y) == pytest.approx(reference_parc(pca, y), rel=1e-6)


def test_informative_features_score_above_noise():
    x, y = _problem(300, 16, 4, 4)
    noise = np.random.default_rng(9).normal(size=x.shape)
    assert scoring.parc(x, y) > 5.0 > abs(scoring.parc(noise, y))


def test_subsampling_above_the_cap_is_seeded_and_the_same_for_every_model():
    x, y = _problem(400, 16, 4, 5)
    a = scoring.parc(x, y, max_samples=200)
    assert a == scoring.parc(x, y, max_samples=200)
    keep = np.sort(np.random.default_rng(0).choice(400, 200, replace=False))
    assert a == pytest.approx(scoring.parc(x[keep], y[keep]), rel=1e-12)


def test_degenerate_inputs():
    x, _ = _problem(30, 6, 3, 6)
    with pytest.raises(scoring.DegenerateScore, match="no two samples share a class"):
        scoring.parc(x, np.arange(30))
    result = scoring.compute_detailed(["parc", "logme"], np.arange(30), features=x)
    assert result.degenerate == {"parc"} and "logme" in result.values
    with pytest.raises(scoring.TransferabilityError, match="dims"):
        scoring.parc(x, np.arange(30) % 3, dims=0)
