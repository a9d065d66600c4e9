"""NCE: negative conditional entropy of target labels given the source model's hard labels.

Tran, Nguyen and Hassner, "Transferability and Hardness of Supervised Classification Tasks",
ICCV 2019 (Eq. 2 and Definition 1): NCE = -H(Y | Z) = sum_{y, z} P(y, z) log P(y | z),
with Z the source model's predicted label argmax_z theta(x)_z.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from scoring._validation import Labels, check_labels, check_probs
from scoring.leep import conditional_from_joint


def _nce(source: np.ndarray[Any, Any], n_source: int, labels: Labels) -> float:
    n = source.shape[0]
    joint = np.zeros((labels.n_classes, n_source))
    np.add.at(joint, (labels.codes, source), 1.0 / n)
    cond = conditional_from_joint(joint)
    mask = joint > 0
    return float((joint[mask] * np.log(cond[mask])).sum())


def nce(probs: Any, labels: Any) -> float:
    """NCE (Tran et al., ICCV 2019). Higher is better; always <= 0.

    probs: (N, Z) source-class probabilities (their argmax is the hard source label);
    labels: (N,) target labels, any hashable values.
    """
    theta = check_probs(probs)
    lab = check_labels(labels, theta.shape[0])
    return _nce(theta.argmax(axis=1), theta.shape[1], lab)
