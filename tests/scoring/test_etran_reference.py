"""ETran's energy and LDA scores against the authors' code on identical inputs."""

import numpy as np
import pytest
import torch

import scoring


# Transcribed from mgholamikn/ETran, metrics.py (commit
# d4551ed8f41f4ed6eba08b9cc1a78bae178acd19): Energy_Score(logits, percent, tail) with tail='bot'
# as evaluate_metric.py calls it (percent=0.5).
def reference_energy(logits, percent=0.5):
    energy_score = torch.logsumexp(torch.from_numpy(logits), dim=-1).numpy()
    chs = list(np.argsort(energy_score)[0 : int(percent * 10) * len(energy_score) // 1000])
    return energy_score[chs].mean()


# The same file: class LDA (_cov, softmax, iterative_A, _solve_eigen, fit, predict_proba) and
# LDA_Score(X, y), in full, so that the cancellation of its Fisher directions is the reference's.
def reference_lda_score(x, y):
    def _cov(x, shrinkage=-1):
        emp_cov = np.cov(np.asarray(x).T, bias=1)
        if shrinkage < 0:
            return emp_cov
        n_features = emp_cov.shape[0]
        mu = np.trace(emp_cov) / n_features
        shrunk_cov = (1.0 - shrinkage) * emp_cov
        shrunk_cov.flat[:: n_features + 1] += shrinkage * mu
        return shrunk_cov

    def iterative_a(a, max_iterations=3):
        v = a.sum(axis=1)
        for _ in range(max_iterations):
            temp = np.dot(a, v)
            w = temp / np.linalg.norm(temp, 2)
            temp = np.dot(a, w)
            v = temp / np.linalg.norm(temp, 2)
        return np.dot(np.dot(v.T, a), w)

    classes, yt = np.unique(y, return_inverse=True)
    priors = np.bincount(yt) / float(len(y))
    cnt = np.bincount(yt)
    means = np.zeros(shape=(len(classes), x.shape[1]))
    np.add.at(means, yt, x)
    means /= cnt[:, None]
    cov = np.zeros(shape=(x.shape[1], x.shape[1]))
    for idx, group in enumerate(classes):
        cov += priors[idx] * np.atleast_2d(_cov(x[yt == group, :]))
    sw = cov
    shrinkage = max(np.exp(-5 * iterative_a(sw, max_iterations=3)), 1e-10)
    st = _cov(x, shrinkage=shrinkage)
    n_features = sw.shape[0]
    mu = np.trace(sw) / n_features
    shrunk_sw = (1.0 - shrinkage) * sw
    shrunk_sw.flat[:: n_features + 1] += shrinkage * mu
    sb = st - shrunk_sw
    evals, evecs = np.linalg.eigh(np.linalg.inv(shrunk_sw) @ sb)
    evecs = evecs[:, np.argsort(evals)[::-1]]
    coef = np.dot(means, evecs).dot(evecs.T)
    intercept = -0.5 * np.diag(np.dot(means, coef.T)) + np.log(priors)
    logits = np.dot(x, coef.T) + intercept
    logits -= logits.max(axis=1, keepdims=True)
    prob = np.exp(logits)
    prob /= prob.sum(axis=1, keepdims=True)
    return np.sum(prob[np.arange(len(y)), y]) / len(y)


def _problem(n, d, c, seed, scale=1.0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, c, n)
    return scale * (rng.normal(size=(n, d)) + 0.5 * rng.normal(size=(c, d))[y]), y


@pytest.mark.parametrize(("n", "d", "c", "seed"), [(400, 10, 3, 0), (1000, 32, 8, 1)])
def test_energy_equals_the_reference_code(n, d, c, seed):
    x, y = _problem(n, d, c, seed)
    assert scoring.etran_energy(x, y) == pytest.approx(reference_energy(x), rel=1e-6)
    assert scoring.etran_energy(x, y, percent=10) == pytest.approx(
        reference_energy(x, 10), rel=1e-6
    )


def test_energy_uses_one_sample_where_the_reference_selects_none():
    x, y = _problem(100, 5, 2, 2)
    with np.errstate(all="ignore"), pytest.warns(RuntimeWarning):
        assert np.isnan(reference_energy(x))  # 5 * 100 // 1000 = 0 samples
    assert scoring.etran_energy(x, y) == pytest.approx(
        float(torch.logsumexp(torch.from_numpy(x), dim=-1).min()), rel=1e-12
    )


@pytest.mark.parametrize(
    ("n", "d", "c", "seed", "scale"),
    [(300, 10, 3, 0, 0.3), (500, 20, 6, 1, 0.2), (200, 6, 2, 2, 0.5)],
)
def test_lda_equals_the_reference_code(n, d, c, seed, scale):
    x, y = _problem(n, d, c, seed, scale)
    assert scoring.etran_lda(x, y) == pytest.approx(reference_lda_score(x, y), rel=1e-6)


def test_lda_saturated_at_one_is_degenerate():
    rng = np.random.default_rng(3)
    y = np.arange(200) % 2
    x = 50.0 * (rng.normal(size=(200, 10)) + 10.0 * np.eye(2, 10)[y])  # logit gaps ~1e6
    with pytest.raises(scoring.DegenerateScore, match="ETran's LDA score is degenerate"):
        scoring.etran_lda(x, y)


def test_pool_combination_is_the_authors_tw_py():
    """tw.py: min-max scale each score over the models, 0.15 energy + 0.85 LDA; a stored
    component never changes when the pool grows, the combination does."""
    stored = {
        "a": {"etran_energy": 3.0, "etran_lda": 0.5},
        "b": {"etran_energy": 5.0, "etran_lda": 0.4},
        "c": {"etran_energy": 4.0, "etran_lda": 0.9},
    }
    got = scoring.etran_pool(stored)
    assert got == pytest.approx({"a": 0.85 * 0.2, "b": 0.15, "c": 0.15 * 0.5 + 0.85})
    two = scoring.etran_pool({m: stored[m] for m in ("a", "b")})
    assert two == pytest.approx({"a": 0.85, "b": 0.15})
    with pytest.raises(scoring.DegenerateScore, match="at least 2 models"):
        scoring.etran_pool({"a": stored["a"]})
    with pytest.raises(scoring.TransferabilityError, match="lacks etran_lda"):
        scoring.etran_pool({"a": stored["a"], "b": {"etran_energy": 1.0}})
