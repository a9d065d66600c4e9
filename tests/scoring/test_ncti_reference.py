"""NCTI's three components against the authors' code on identical inputs, its pool step, and
its degenerate inputs."""

import numpy as np
import pytest
from sklearn.decomposition import PCA
from sklearn.discriminant_analysis import LinearDiscriminantAnalysis

import scoring


# Transcribed from BUserName/NCTI, metrics.py, NCTI_Score(X, y) (commit
# b18d39514a3f2a7a949500b467a38b93de1428e4), with one change: PCA(n_components=64,
# svd_solver="full"). The reference's PCA(n_components=64) lets scikit-learn choose, and above
# 500 x 500 it chooses a randomized solver with no seed, so the reference's own value changes
# from run to run. The LDA is scikit-learn's, as in the reference.
def reference_ncti(x, y):
    c = np.unique(y).shape[0]
    pca = PCA(n_components=64, svd_solver="full")
    x = pca.fit_transform(x, y)
    temp = max(np.exp(-pca.explained_variance_[:32].sum()), 1e-10)
    if temp == 1e-10:
        clf = LinearDiscriminantAnalysis(solver="svd")
    else:
        clf = LinearDiscriminantAnalysis(solver="eigen", shrinkage=float(temp))
    low_feat = clf.fit_transform(x, y)
    low_feat = low_feat - np.mean(low_feat, axis=0, keepdims=True)
    all_lowfeat_nuc = np.linalg.norm(low_feat, ord="nuc")
    low_pred = clf.predict_proba(x)
    sfda_score = np.sum(low_pred[np.arange(x.shape[0]), y]) / x.shape[0]
    class_pred_nuc = 0
    for k in range(c):
        class_pred_nuc += np.linalg.norm(low_pred[(y == k).flatten()], ord="nuc")
    return all_lowfeat_nuc, sfda_score, np.log(class_pred_nuc)


# The same repository, evaluate_metric_group1_cpu.py: the pool step over the candidate models.
def reference_pool(score_dict):
    models = list(score_dict)
    all_score = np.array([score_dict[m][0] for m in models])
    cls_score = np.array([score_dict[m][1] for m in models])
    cls_compact = np.array([score_dict[m][2] for m in models])
    out = {}
    for m in models:
        mascore = (score_dict[m][0] - all_score.min()) / (all_score.max() - all_score.min())
        mcscore = (score_dict[m][1] - cls_score.min()) / (cls_score.max() - cls_score.min())
        cpscore = (score_dict[m][2] - cls_compact.min()) / (cls_compact.max() - cls_compact.min())
        out[m] = mcscore + mascore - cpscore
    return out


def _problem(n, d, c, seed, scale):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, c, n)
    return scale * (rng.normal(size=(n, d)) + 0.5 * rng.normal(size=(c, d))[y]), y


def _ours(x, y):
    got = scoring.compute(["ncti_seli", "ncti_ncc", "ncti_vc"], y, features=x)
    return got["ncti_seli"], got["ncti_ncc"], -got["ncti_vc"]


@pytest.mark.parametrize(
    ("n", "d", "c", "seed", "scale"),
    [
        (600, 100, 5, 0, 1.0),  # svd solver (the 32 leading variances sum past 23)
        (600, 100, 5, 1, 0.05),  # eigen solver, shrinkage 0.85
        (500, 80, 12, 2, 0.02),  # eigen solver, shrinkage 0.97
        (400, 70, 2, 3, 1.0),  # two classes: one discriminant direction
    ],
)
def test_components_equal_the_reference_code(n, d, c, seed, scale):
    x, y = _problem(n, d, c, seed, scale)
    np.testing.assert_allclose(_ours(x, y), reference_ncti(x, y), rtol=1e-6)
    alone = (scoring.ncti_seli(x, y), scoring.ncti_ncc(x, y), -scoring.ncti_vc(x, y))
    np.testing.assert_allclose(alone, reference_ncti(x, y), rtol=1e-6)


def test_pool_equals_the_reference_pool_step_plus_one():
    models = {f"m{i}": _problem(600, 100, 5, 10 + i, s) for i, s in enumerate((1.0, 0.7, 0.05))}
    ref = reference_pool({m: reference_ncti(x, y) for m, (x, y) in models.items()})
    stored = {
        m: scoring.compute(["ncti_seli", "ncti_ncc", "ncti_vc"], y, features=x)
        for m, (x, y) in models.items()
    }
    got = scoring.ncti_pool(stored)
    assert got == pytest.approx({m: v + 1.0 for m, v in ref.items()}, rel=1e-6)
    # A stored component is the model's alone: a fourth model changes the pool's NCTI, not it.
    x4, y4 = _problem(600, 100, 5, 20, 0.3)
    grown = {**stored, "m3": scoring.compute(["ncti_seli", "ncti_ncc", "ncti_vc"], y4, features=x4)}
    assert grown["m0"] == stored["m0"]
    assert scoring.ncti_pool(grown)["m0"] != pytest.approx(got["m0"])


def test_a_component_equal_across_the_pool_adds_nothing():
    stored = {
        "a": {"ncti_seli": 1.0, "ncti_ncc": 0.5, "ncti_vc": -2.0},
        "b": {"ncti_seli": 1.0, "ncti_ncc": 0.7, "ncti_vc": -3.0},
    }
    with np.errstate(all="ignore"):
        ref = reference_pool(
            {m: (c["ncti_seli"], c["ncti_ncc"], -c["ncti_vc"]) for m, c in stored.items()}
        )
    assert all(np.isnan(v) for v in ref.values())  # the reference divides 0 by 0
    assert scoring.ncti_pool(stored) == pytest.approx({"a": 1.0, "b": 1.0})


def test_fewer_samples_than_components_per_class_is_degenerate():
    """Unregularised LDA with N - C < k: the classes separate perfectly in-sample."""
    x, y = _problem(50, 200, 4, 4, 1.0)
    result = scoring.compute_detailed(["ncti_seli", "ncti_ncc", "ncti_vc", "logme"], y, features=x)
    assert result.degenerate == {"ncti_seli", "ncti_ncc", "ncti_vc"}
    assert "N - C = 46" in result.errors["ncti_ncc"]
    with pytest.raises(scoring.DegenerateScore, match="NCTI is degenerate"):
        scoring.ncti_ncc(x, y)


def test_informative_features_are_closer_to_collapse_than_noise():
    x, y = _problem(600, 100, 5, 5, 1.0)
    noise = np.random.default_rng(7).normal(size=x.shape)
    for name in ("ncti_seli", "ncti_ncc", "ncti_vc"):
        assert scoring.REGISTRY[name].function(x, y) > scoring.REGISTRY[name].function(noise, y)
