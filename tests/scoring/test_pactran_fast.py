"""PACTran-Gauss as it is now computed (per-class sums formed once, the risk minimised in the
covariance's eigenbasis scaled by its curvature) still gives the reference's value where that
change of variables could matter: fewer samples than dimensions (the basis then spans only
the features' row space), features of very different scales across dimensions, and classes
of very different sizes."""

import numpy as np
import pytest

import scoring
from tests.scoring.test_pactran_reference import reference_pac_gauss


def _at_optimum(x, y, lda_factor=1.0):
    return -reference_pac_gauss(x, y, lda_factor, maxiter=100_000, tol=1e-14)


def test_fewer_samples_than_dimensions():
    rng = np.random.default_rng(7)
    y = rng.integers(0, 4, 40)
    x = rng.normal(size=(40, 90)) + rng.normal(size=(4, 90))[y]
    assert scoring.pactran_gauss(x, y) == pytest.approx(_at_optimum(x, y), rel=1e-6)


def test_dimensions_of_very_different_scales_and_unequal_classes():
    rng = np.random.default_rng(8)
    y = np.repeat([0, 1, 2], [150, 40, 10])
    x = (rng.normal(size=(200, 16)) + 0.7 * rng.normal(size=(3, 16))[y]) * np.logspace(
        -1.5, 1.5, 16
    )
    assert scoring.pactran_gauss(x, y) == pytest.approx(_at_optimum(x, y), rel=1e-6)


def test_repeated_calls_agree_and_leave_the_input_alone():
    rng = np.random.default_rng(9)
    y = rng.integers(0, 5, 300)
    x = (rng.normal(size=(300, 24)) + rng.normal(size=(5, 24))[y]).astype(np.float32) + 100.0
    before = x.copy()
    first = scoring.pactran_gauss(x, y)
    assert scoring.pactran_gauss(x, y) == first
    np.testing.assert_array_equal(x, before)
    assert first == pytest.approx(_at_optimum(x.astype(np.float64), y), rel=1e-6)
