"""The scoring library at work on real data: every metric on scikit-learn's digits.

Four feature maps of the same 1,797 handwritten digits, from informative to useless, should be
ranked in that order by a good metric: raw pixels, their top 16 principal components, the top
2 components, and pure noise. Run with ``python -m scoring.demo``.
"""

from __future__ import annotations

import time

import numpy as np
from sklearn.datasets import load_digits
from sklearn.decomposition import PCA

import scoring


def feature_maps() -> tuple[dict[str, np.ndarray], np.ndarray]:
    x, y = load_digits(return_X_y=True)
    rng = np.random.default_rng(0)
    return {
        "pixels (64-d)": x,
        "PCA-16": PCA(16, random_state=0).fit_transform(x),
        "PCA-2": PCA(2, random_state=0).fit_transform(x),
        "noise (64-d)": rng.normal(size=x.shape),
    }, y


def main() -> None:
    maps, labels = feature_maps()
    metrics = scoring.applicable(has_features=True, has_probs=False)
    width = max(len(m) for m in metrics)
    print(f"digits: {labels.shape[0]} samples, {np.unique(labels).size} classes\n")
    print(f"{'metric':<{width}}  " + "  ".join(f"{name:>14}" for name in maps) + "   seconds")
    for metric in metrics:
        row, start = [], time.perf_counter()
        for x in maps.values():
            row.append(scoring.compute([metric], labels, features=x)[metric])
        took = time.perf_counter() - start
        print(f"{metric:<{width}}  " + "  ".join(f"{v:>14.4f}" for v in row) + f"   {took:7.2f}")


if __name__ == "__main__":
    main()
