"""PACTran-Gauss against the authors' code on identical inputs."""

import numpy as np
import pytest
import scipy.optimize
import scipy.special

import scoring


# Transcribed from google-research/pactran_metrics, compute_metrics.py,
# calculate_pac_gauss(features_np_all, label_np_all, lda_factor) (commit
# a5e49972ed0856bc79f74c5c198d1c25b6fb9025), returning the first pac_gauss it reports
# (s2 = 100 lda_factor / D). Its L-BFGS-B stops at maxiter=100, tol=1e-6 from a random start;
# ``maxiter`` and ``tol`` are parameters here so that it can also be run to the optimum.
# It centres the caller's array in place; a copy is passed.
def reference_pac_gauss(features_np_all, label_np_all, lda_factor, maxiter=100, tol=1e-6, rng=None):
    nclasses = label_np_all.max() + 1
    onehot = np.zeros((label_np_all.size, nclasses))
    onehot[np.arange(label_np_all.size), label_np_all] = 1.0
    features_np_all = features_np_all - np.mean(features_np_all, axis=0, keepdims=True)
    bs = features_np_all.shape[0]
    d = features_np_all.shape[-1]
    kd = d * nclasses
    ldas2 = lda_factor * bs
    dinv = 1.0 / float(d)

    def unpack(theta):
        theta = np.reshape(theta, [d + 1, nclasses])
        return theta[:d, :], theta[d:, :]

    def pac_loss_fn(theta):
        w, b = unpack(theta)
        logits = np.matmul(features_np_all, w) + b
        log_qz = logits - scipy.special.logsumexp(logits, axis=-1, keepdims=True)
        xent = np.sum(np.sum(onehot * (np.log(onehot + 1e-10) - log_qz), axis=-1)) / bs
        return xent + 0.5 * np.sum(np.square(w)) / ldas2

    def pac_grad_fn(theta):
        w, b = unpack(theta)
        logits = np.matmul(features_np_all, w) + b
        grad_f = scipy.special.softmax(logits, axis=-1)
        grad_f -= onehot
        grad_f /= bs
        grad_w = np.matmul(features_np_all.transpose(), grad_f)
        grad_w += w / ldas2
        grad_b = np.sum(grad_f, axis=0, keepdims=True)
        return np.ravel(np.concatenate([grad_w, grad_b], axis=0))

    def pac_grad2(theta):
        w, b = unpack(theta)
        logits = np.matmul(features_np_all, w) + b
        prob_logits = scipy.special.softmax(logits, axis=-1)
        grad2_f = prob_logits - np.square(prob_logits)
        xx = np.square(features_np_all)
        grad2_w = np.matmul(xx.transpose(), grad2_f)
        grad2_w += 1.0 / ldas2
        grad2_b = np.sum(grad2_f, axis=0, keepdims=True)
        return np.ravel(np.concatenate([grad2_w, grad2_b], axis=0))

    # The reference draws from the global np.random state; a seeded generator here.
    theta = (rng or np.random.default_rng(0)).normal(size=[d, nclasses]) * 0.03
    theta_1d = np.ravel(np.concatenate([theta, np.zeros([1, nclasses])], axis=0))
    theta_1d = scipy.optimize.minimize(
        pac_loss_fn,
        theta_1d,
        method="L-BFGS-B",
        jac=pac_grad_fn,
        options=dict(maxiter=maxiter),
        tol=tol,
    ).x
    pac_opt = pac_loss_fn(theta_1d)
    h = pac_grad2(theta_1d)
    sigma2_inv = np.sum(h) * ldas2 / kd + 1e-10
    s2 = 100.0 * lda_factor * dinv
    return pac_opt + 0.5 * kd / ldas2 * s2 * np.log(sigma2_inv)


def _problem(n, d, c, seed):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, c, n)
    return rng.normal(size=(n, d)) + 0.8 * rng.normal(size=(c, d))[y], y


@pytest.mark.parametrize(
    ("n", "d", "c", "seed", "lda_factor"),
    [(300, 12, 3, 0, 1.0), (300, 12, 7, 1, 1.0), (200, 20, 4, 2, 10.0), (200, 8, 2, 3, 0.1)],
)
def test_equals_the_reference_code_at_its_optimum(n, d, c, seed, lda_factor):
    x, y = _problem(n, d, c, seed)
    ref = reference_pac_gauss(x, y, lda_factor, maxiter=100_000, tol=1e-14)
    assert scoring.pactran_gauss(x, y, lda_factor=lda_factor) == pytest.approx(-ref, rel=1e-6)


def test_the_reference_s_early_stop_is_close_but_not_the_optimum():
    x, y = _problem(300, 12, 3, 0)
    early = reference_pac_gauss(x, y, 1.0)  # its own settings: 100 iterations, tol 1e-6
    ours = scoring.pactran_gauss(x, y)
    assert -early == pytest.approx(ours, rel=1e-3)


def test_informative_features_score_above_noise_and_labels_are_any_type():
    x, y = _problem(300, 12, 3, 4)
    noise = np.random.default_rng(5).normal(size=x.shape)
    assert scoring.pactran_gauss(x, y) > scoring.pactran_gauss(noise, y)
    names = np.array(["cat", "dog", "eel"])[y]
    assert scoring.pactran_gauss(x, names) == pytest.approx(scoring.pactran_gauss(x, y), rel=1e-7)
    with pytest.raises(scoring.TransferabilityError, match="lda_factor"):
        scoring.pactran_gauss(x, y, lda_factor=0.0)
