"""A regression dataset gets every metric that supports real targets, and they agree on which
feature set predicts the target."""

import numpy as np
import pytest

import scoring


def _features():
    rng = np.random.default_rng(0)
    n = 400
    latent = rng.normal(size=(n, 3))
    target = latent @ np.array([1.5, -1.0, 0.5]) + 0.2 * rng.normal(size=n)
    predictive = np.hstack([latent, 0.3 * rng.normal(size=(n, 13))]) @ rng.normal(size=(16, 16))
    noise = rng.normal(size=(n, 16))
    return predictive, noise, target


def test_a_regression_target_gets_several_metrics():
    names = scoring.default_metrics("regression")
    assert {"logme_regression", "knn_regression", "linear_probe_r2"} <= set(names)
    for name in names:
        assert "regression" in scoring.REGISTRY[name].targets
    assert (
        scoring.applicable(names, has_features=True, has_probs=False, target="regression") == names
    )
    assert scoring.default_metrics("classification") == list(scoring.DEFAULT_METRICS)


def test_they_order_a_predictive_feature_set_above_noise():
    predictive, noise, y = _features()
    names = scoring.default_metrics("regression")
    good = scoring.compute(names, y, features=predictive, target="regression")
    bad = scoring.compute(names, y, features=noise, target="regression")
    assert set(good) == set(names)
    for name in names:
        assert good[name] > bad[name], name
    assert good["linear_probe_r2"] > 0.9 and bad["linear_probe_r2"] < 0.05
    assert good["knn_regression"] > 0.5 and bad["knn_regression"] < 0.1


def test_values_equal_sklearn_s_where_it_has_them():
    from sklearn.linear_model import RidgeCV
    from sklearn.model_selection import KFold, cross_val_predict
    from sklearn.neighbors import KNeighborsRegressor
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from scoring.linear_probe import RIDGE_ALPHAS

    predictive, _, y = _features()
    folds = KFold(n_splits=5, shuffle=True, random_state=0)
    pipe = make_pipeline(StandardScaler(), RidgeCV(alphas=RIDGE_ALPHAS))
    pred = cross_val_predict(pipe, predictive, y, cv=folds)
    r2 = 1 - ((y - pred) ** 2).sum() / ((y - y.mean()) ** 2).sum()
    assert scoring.linear_probe_r2(predictive, y) == pytest.approx(r2, rel=1e-9)
    # Leave-one-out 6-NN including the query itself at distance 0, minus the query's own share.
    knn = KNeighborsRegressor(n_neighbors=6).fit(predictive, y)
    _, idx = knn.kneighbors(predictive)
    loo = np.array([y[row[row != i][:5]].mean() for i, row in enumerate(idx)])
    r2 = 1 - ((y - loo) ** 2).sum() / ((y - y.mean()) ** 2).sum()
    got = scoring.knn_regression(predictive, y, metric="euclidean")
    assert got == pytest.approx(r2, rel=1e-5)


def test_several_target_columns_average_their_r2():
    predictive, noise, y = _features()
    both = np.column_stack([y, noise[:, 0]])
    r2 = scoring.linear_probe_r2(predictive, both)
    assert r2 == pytest.approx(
        (scoring.linear_probe_r2(predictive, y) + scoring.linear_probe_r2(predictive, noise[:, 0]))
        / 2,
        rel=1e-9,
    )


def test_a_constant_target_is_degenerate():
    predictive, _, _ = _features()
    constant = np.full(predictive.shape[0], 3.0)
    result = scoring.compute_detailed(
        ["knn_regression", "linear_probe_r2"], constant, features=predictive, target="regression"
    )
    assert result.degenerate == {"knn_regression", "linear_probe_r2"}
    assert "constant" in result.errors["knn_regression"]
    with pytest.raises(scoring.TransferabilityError, match="NaN or inf"):
        scoring.knn_regression(predictive, np.r_[np.nan, np.zeros(predictive.shape[0] - 1)])
