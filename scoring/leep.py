"""LEEP: log expected empirical prediction.

Nguyen, Hassner, Seeger and Archambeau, "LEEP: A New Measure to Evaluate Transferability of
Learned Representations", ICML 2020 (Eq. 1-2).

With theta(x_i): (Z,) the source model's class probabilities, the empirical joint of target
label y and source label z is P(y, z) = 1/N sum_{i: y_i = y} theta(x_i)_z (Eq. 1), and

    LEEP = 1/N sum_i log( sum_z P(y_i | z) theta(x_i)_z ),   P(y | z) = P(y, z) / P(z)  (Eq. 2).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from scoring._validation import Labels, check_labels, check_probs

F64 = npt.NDArray[np.float64]


def conditional_from_joint(joint: F64) -> F64:
    """P(y | z): (C, Z) from a joint P(y, z): (C, Z); columns with no mass get zeros."""
    pz = joint.sum(axis=0)
    out: F64 = np.divide(joint, pz[None, :], out=np.zeros_like(joint), where=pz[None, :] > 0)
    return out


def expected_log_prediction(theta: F64, labels: Labels) -> float:
    """LEEP's formula for any soft assignment theta: (N, Z) of samples to source labels."""
    n = theta.shape[0]
    joint = np.zeros((labels.n_classes, theta.shape[1]))
    np.add.at(joint, labels.codes, theta)
    joint /= n
    cond = conditional_from_joint(joint)  # (C, Z)
    # Only the true class's probability is needed: sum_z P(y_i | z) theta_iz.
    pred = np.einsum("iz,iz->i", theta, cond[labels.codes])
    return float(np.log(np.maximum(pred, np.finfo(np.float64).tiny)).mean())


def leep(probs: Any, labels: Any) -> float:
    """LEEP (Nguyen et al., ICML 2020). Higher is better; always <= 0.

    probs: (N, Z) the source model's softmax probabilities over its Z source classes;
    labels: (N,) target labels, any hashable values.
    """
    theta = check_probs(probs)
    return expected_log_prediction(theta, check_labels(labels, theta.shape[0]))
