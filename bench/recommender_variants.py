"""Variants of the recommender's combination, each measured leave-one-dataset-out.

Every variant maps (table, training datasets, metric columns, held-out dataset) to a score
per model for the held-out dataset; any hyper-parameter it has is chosen by an inner
leave-one-dataset-out over the training datasets only (nested selection), never on the
held-out dataset. ``shipped`` is ``scoring.recommend`` as it is (``_fit_weights``: version 4,
which is ``joint_consistency``); ``v3`` is version 3 (``ridge()`` with its defaults); the
others are the ideas measured against them (``docs/recommender.md`` lists the figures and the verdict):

- history shrinkage: the pseudo-count c of a model's history mean (fixed, or chosen inside);
  an empirical-Bayes shrink by how consistent a model's outcomes are;
- outcome scale: standardised outcomes (z-scores within a dataset) instead of outcome ranks,
  for the history, the target, or both; metric z-scores instead of metric ranks;
- the combiner: the ridge without its top-weighted rows; a wider penalty grid; a pairwise
  logistic (RankNet-style) objective with weighted tau's pair weights; the rank of the
  metric-only order blended with history, its share chosen inside; the metric-only order plus
  a history weight chosen inside by weighted tau; the ridge's history weight rescaled inside;
  the ridge shrunk towards a metric/history blend; a choice between the ridge and the blend
  by the inner cross-validation (``select``: one level; ``select_nested``: each with its own
  inner choice; ``joint``: one grid of both);
- features: each metric's deviation from the model's mean rank on the other datasets;
- history weighted by the agreement of the held-out dataset's metric-only order with each
  training dataset's outcomes (similarity).

``evaluate(rows, ...)`` gives, per variant, the mean figures on the table, on the table
with one metric column only (a stand-in for a table that has LogME alone) and, optionally,
the mean over random subsamples (models and datasets dropped, and the same with 15% of the
cells dropped too). ``bench/evaluation.py --variants`` writes them into its JSON.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
from scipy import optimize
from scipy.special import expit

import scoring
from scoring import recommend as R
from scoring.evaluation import rank_quality

Variant = Callable[[Any, np.ndarray, np.ndarray, int], np.ndarray]
#: The inner folds of version 3's ridge (``ridge``); version 4 folds up to R.MAX_INNER_FOLDS.
V3_INNER_FOLDS = 10
FIGS = ("weighted_tau", "top1_regret")
ALPHAS = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8)


def _wt(t: Any, idx: np.ndarray, preds: np.ndarray) -> np.ndarray:
    return R._weighted_tau(np.nan_to_num(t.outcomes[idx], nan=0.0), preds, t.has[idx])


def _cols_without(t: Any, drop: Sequence[int]) -> np.ndarray:
    return np.asarray(np.delete(t.keyed, list(drop), axis=0).any(axis=0), dtype=bool)


def nested(fn: Callable[..., np.ndarray], grid: Sequence[Any]) -> Variant:
    """fn(t, train, cols, i, p) with p chosen by leave-one-out over ``train`` (ties: first)."""

    def variant(t: Any, train: np.ndarray, cols: np.ndarray, i: int) -> np.ndarray:
        idx = np.flatnonzero(train & t.labelled)
        if idx.size < 3:
            return fn(t, train, cols, i, grid[0])
        scores = []
        for p in grid:
            preds = []
            for j in idx:
                inner = train.copy()
                inner[j] = False
                preds.append(fn(t, inner, _cols_without(t, [i, j]), j, p))
            scores.append(float(_wt(t, idx, np.array(preds)).mean()))
        return fn(t, train, cols, i, grid[int(np.argmax(np.round(scores, 12)))])

    return variant


def _zscores(t: Any) -> np.ndarray:
    z = np.zeros_like(t.target)
    for d in np.flatnonzero(t.labelled):
        y = t.outcomes[d, t.has[d]]
        z[d, t.has[d]] = (y - y.mean()) / y.std() if y.std() > 0 else 0.0
    return z / math.sqrt(12)  # the spread of a centred rank


def _raw(t: Any, datasets: Mapping[str, Any], dirs: Mapping[str, bool]) -> np.ndarray:
    index = {m: j for j, m in enumerate(t.models)}
    raw = np.full(t.feats.shape, np.nan)
    for i, name in enumerate(t.names):
        for k, metric in enumerate(t.metrics):
            sign = 1.0 if dirs[metric] else -1.0
            for model, value in datasets[name].scores.get(metric, {}).items():
                raw[i, index[model], k] = sign * float(value)
    return raw


def _zfeats(raw: np.ndarray) -> np.ndarray:
    f = np.zeros_like(raw)
    for d in range(raw.shape[0]):
        for k in range(raw.shape[2]):
            x = raw[d, :, k]
            ok = np.isfinite(x)
            if ok.sum() >= 2 and x[ok].std() > 0:
                f[d, ok, k] = (x[ok] - x[ok].mean()) / x[ok].std() / math.sqrt(12)
    return f


def _delta_feats(t: Any) -> np.ndarray:
    s = (t.feats * t.scored).sum(0)
    n = t.scored.sum(0).astype(float)
    others_n = n[None] - t.scored
    others_s = s[None] - t.feats * t.scored
    mean = np.divide(others_s, others_n, out=np.zeros_like(t.feats), where=others_n > 0)
    return np.where(t.scored, t.feats - mean, 0.0)


def _hist(t: Any, pool: np.ndarray, q: np.ndarray, c: float, eb: bool = False) -> tuple:
    """(M,) history for a dataset outside ``pool`` and (D, M) each pool row's own."""
    p = (pool & t.labelled)[:, None]
    s = (q * p).sum(axis=0)
    n = (t.has & p).sum(axis=0).astype(np.float64)
    own = (s - q * p) / (n - (t.has & p) + c)
    new = s / (n + c)
    if eb:  # shrink each mean by its own spread against the spread between models
        mean = np.divide(s, n, out=np.zeros_like(s), where=n > 0)
        dev = np.where(t.has & p, q - mean[None, :], 0.0)
        pooled = float((dev**2).sum()) / max(float(np.maximum(n - 1, 0).sum()), 1.0)
        se2 = pooled / np.maximum(n, 1)
        seen = n > 0
        tau2 = max(float(np.var(mean[seen]) - se2[seen].mean()), 1e-6) if seen.sum() > 1 else 1e-6
        new = np.where(seen, mean * tau2 / (tau2 + se2), 0.0)
        n_own = n[None, :] - (t.has & p)
        m_own = np.divide(s[None, :] - q * p, n_own, out=np.zeros_like(q), where=n_own > 0)
        own = m_own * tau2 / (tau2 + pooled / np.maximum(n_own, 1))
    return new, own


def ridge(
    *,
    hist: str = "rank",
    target: str = "rank",
    feats: str = "rank",
    rows: str = "top",
    cs: Sequence[float] = (1.0,),
    lams: Sequence[float] = R.LAMBDA_GRID,
    eb: bool = False,
    extra: str = "",
) -> Variant:
    """The shipped ridge with one part changed (the defaults reproduce it)."""

    def variant(t: Any, train: np.ndarray, cols: np.ndarray, i: int) -> np.ndarray:
        q = _zscores(t) if hist == "z" else t.target
        y = _zscores(t) if target == "z" else t.target
        f = _zfeats(t._raw) if feats == "z" else t.feats
        if extra == "delta":
            f = np.concatenate([f, _delta_feats(t)], axis=2)
        k_extra = f.shape[2] - len(t.metrics)
        cols2 = np.r_[cols, np.ones(k_extra, dtype=bool)]
        rw = t.row_w
        if rows == "flat":
            rw = np.where(t.has, 1.0, 0.0) / np.maximum(t.has.sum(1, keepdims=True), 1)
        sel = R._select_metrics(t, train, cols)
        w0 = np.r_[sel[:-1], np.zeros(k_extra), 0.0]

        def normal(tr: np.ndarray, c: float) -> tuple:
            tr = tr & t.labelled
            new, own = _hist(t, tr, q, c, eb)
            x = np.concatenate([f[tr][:, :, cols2], own[tr][:, :, None]], axis=2)
            x = x.reshape(-1, x.shape[2])
            xv = x * rw[tr].reshape(-1, 1)
            ns = max(int(tr.sum()), 1)
            return xv.T @ x / ns, xv.T @ y[tr].reshape(-1) / ns, new

        idx = np.flatnonzero(train & t.labelled)
        grid = sorted(lams, reverse=True)
        choice = (grid[0], cs[0])
        if idx.size >= 3:
            nf = min(idx.size, V3_INNER_FOLDS)
            best = -np.inf
            for c in cs:
                pred = np.zeros((len(grid), idx.size, t.target.shape[1]))
                for fo in range(nf):
                    inner = train & t.labelled
                    inner[idx[fo::nf]] = False
                    a, b, new = normal(inner, c)
                    for g, lam in enumerate(grid):
                        w = R._solve(a, b, cols2, lam, w0)
                        pred[g, fo::nf] = f[idx[fo::nf]] @ w[:-1] + new * w[-1]
                for g, p in enumerate(pred):
                    s = round(float(_wt(t, idx, p).mean()), 12)
                    if s > best:
                        best, choice = s, (grid[g], c)
        a, b, new = normal(train, choice[1])
        w = R._solve(a, b, cols2, choice[0], w0)
        return f[i] @ w[:-1] + new * w[-1]

    return variant


def shipped(t: Any, train: np.ndarray, cols: np.ndarray, i: int) -> np.ndarray:
    drop = np.zeros(len(t.names), dtype=bool)
    drop[i] = True
    w, _, new, _ = R._fit_weights(t, train, drop)
    return t.feats[i] @ w[:-1] + new * w[-1]


def _plain_history(t: Any, train: np.ndarray) -> np.ndarray:
    """(M,) version 3's history: the mean outcome rank shrunk by one pseudo-observation."""
    return np.asarray(_hist(t, train, t.target, 1.0)[0])


def _v3_fit(t: Any, train: np.ndarray, cols: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Version 3's weights (K + 1,) and the (M,) history they apply to (``ridge()``)."""
    w0 = R._select_metrics(t, train, cols)
    idx = np.flatnonzero(train & t.labelled)
    grid = sorted(R.LAMBDA_GRID, reverse=True)
    lam = grid[0]
    if idx.size >= 3:
        nf = min(idx.size, V3_INNER_FOLDS)
        pred = np.zeros((len(grid), idx.size, t.target.shape[1]))
        for fo in range(nf):
            inner = train & t.labelled
            inner[idx[fo::nf]] = False
            a, b, new = _v3_normal(t, inner, cols)
            for g, lm in enumerate(grid):
                w = R._solve(a, b, cols, lm, w0)
                pred[g, fo::nf] = t.feats[idx[fo::nf]] @ w[:-1] + new * w[-1]
        lam = grid[int(np.argmax(np.round([_wt(t, idx, p).mean() for p in pred], 12)))]
    a, b, new = _v3_normal(t, train, cols)
    return R._solve(a, b, cols, lam, w0), new


def _v3_normal(t: Any, train: np.ndarray, cols: np.ndarray) -> tuple:
    tr = train & t.labelled
    new, own = _hist(t, tr, t.target, 1.0)
    x = np.concatenate([t.feats[tr][:, :, cols], own[tr][:, :, None]], axis=2)
    x = x.reshape(-1, x.shape[2])
    xv = x * t.row_w[tr].reshape(-1, 1)
    ns = max(int(tr.sum()), 1)
    return xv.T @ x / ns, xv.T @ t.target[tr].reshape(-1) / ns, new


def v3(t: Any, train: np.ndarray, cols: np.ndarray, i: int) -> np.ndarray:
    """Version 3 as it shipped: the ridge on metric ranks + plain history."""
    w, new = _v3_fit(t, train, cols)
    return t.feats[i] @ w[:-1] + new * w[-1]


def metric_only(t: Any, train: np.ndarray, cols: np.ndarray, i: int) -> np.ndarray:
    return t.feats[i] @ R._select_metrics(t, train, cols)[:-1]


def history_only(t: Any, train: np.ndarray, cols: np.ndarray, i: int) -> np.ndarray:
    return _plain_history(t, train)


def _blend(t: Any, train: np.ndarray, cols: np.ndarray, i: int, a: float, q: str = "rank"):
    ms = R._centred_ranks(t.feats[i] @ R._select_metrics(t, train, cols)[:-1])
    new, _ = _hist(t, train, _zscores(t) if q == "z" else t.target, 1.0)
    return (1 - a) * ms + a * new


def blend(q: str = "rank") -> Variant:
    """(1 - a) * rank of the metric-only order + a * history, a chosen inside."""
    return nested(lambda t, tr, c, i, a: _blend(t, tr, c, i, a, q), list(ALPHAS))


def metric_plus_history() -> Variant:
    """The metric-only order + beta * history, beta chosen inside by weighted tau."""

    def fn(t: Any, train: np.ndarray, cols: np.ndarray, i: int, beta: float) -> np.ndarray:
        return metric_only(t, train, cols, i) + beta * _plain_history(t, train)

    return nested(fn, [float(b) for b in np.arange(0.0, 3.01, 0.25)])


def ridge_history_rescaled() -> Variant:
    """The shipped ridge with its history weight times m, m chosen inside."""

    def fn(t: Any, train: np.ndarray, cols: np.ndarray, i: int, m: float) -> np.ndarray:
        w, new = _v3_fit(t, train, cols)
        return t.feats[i] @ w[:-1] + m * new * w[-1]

    return nested(fn, [1.0, 0.5, 0.75, 1.5, 2.0, 3.0])


def pairwise(scale: float, lams: Sequence[float] = (1e-3, 1e-2, 1e-1, 1.0)) -> Variant:
    """Non-negative weights minimising a pairwise logistic loss (pairs weighted as weighted tau
    weighs them) + lam |w - w0|^2, lam chosen inside."""

    def pairs(t: Any, tr: np.ndarray, cols: np.ndarray) -> tuple:
        tr = tr & t.labelled
        _, own = _hist(t, tr, t.target, 1.0)
        xs, ws = [], []
        for d in np.flatnonzero(tr):
            ok = np.flatnonzero(t.has[d])
            x = np.concatenate([t.feats[d][ok][:, cols], own[d][ok][:, None]], 1)
            y = t.outcomes[d, ok]
            v = 1 / (1 + y.size - R._average_ranks(y))
            a, b = np.nonzero(y[:, None] > y[None, :])
            xs.append(x[a] - x[b])
            ws.append((v[a] + v[b]) / (v[a] + v[b]).sum())
        return np.concatenate(xs), np.concatenate(ws) / max(len(xs), 1)

    def solve(x: np.ndarray, w8: np.ndarray, lam: float, w0: np.ndarray) -> np.ndarray:
        def f(w: np.ndarray) -> tuple:
            m = scale * x @ w
            g = -scale * x.T @ (w8 * expit(-m))
            return w8 @ np.logaddexp(0, -m) + lam * ((w - w0) ** 2).sum(), g + 2 * lam * (w - w0)

        bounds = [(0.0, None)] * w0.size
        return optimize.minimize(f, w0.copy(), jac=True, method="L-BFGS-B", bounds=bounds).x

    def fn(t: Any, train: np.ndarray, cols: np.ndarray, i: int, lam: float) -> np.ndarray:
        w0 = np.r_[R._select_metrics(t, train, cols)[:-1][cols], 0.0]
        x, w8 = pairs(t, train, cols)
        w = solve(x, w8, lam, w0)
        return t.feats[i][:, cols] @ w[:-1] + _plain_history(t, train) * w[-1]

    return nested(fn, sorted(lams, reverse=True))


def similarity_history(gammas: Sequence[float]) -> Variant:
    """The ridge with history weighted by max(0, r)^gamma, r the correlation of the dataset's
    metric-only order with a training dataset's outcome ranks; gamma chosen inside."""

    def hist_sim(t: Any, pool: np.ndarray, comp: np.ndarray, gamma: float) -> np.ndarray:
        out = np.zeros_like(t.target)
        members = np.flatnonzero(pool & t.labelled)
        for d in range(t.target.shape[0]):
            num = np.zeros(t.target.shape[1])
            den = np.zeros(t.target.shape[1])
            for e in members:
                if e == d:
                    continue
                ok = t.has[e]
                a, b = comp[d][ok], t.target[e][ok]
                r = float(np.corrcoef(a, b)[0, 1]) if a.std() > 0 and b.std() > 0 else 0.0
                s = max(r, 0.0) ** gamma if gamma > 0 else 1.0
                num += s * t.target[e] * ok
                den += s * ok
            out[d] = num / (den + 1.0)
        return out

    def fn(t: Any, train: np.ndarray, cols: np.ndarray, i: int, gamma: float) -> np.ndarray:
        w0 = R._select_metrics(t, train, cols)
        h = hist_sim(t, train, t.feats @ w0[:-1], gamma)
        tr = train & t.labelled
        x = np.concatenate([t.feats[tr][:, :, cols], h[tr][:, :, None]], 2)
        x = x.reshape(-1, x.shape[2])
        xv = x * t.row_w[tr].reshape(-1, 1)
        a, b = xv.T @ x / tr.sum(), xv.T @ t.target[tr].reshape(-1) / tr.sum()
        w = R._solve(a, b, cols, R.LAMBDA_GRID[0], w0)
        return t.feats[i] @ w[:-1] + h[i] * w[-1]

    return nested(fn, list(gammas))


def select(nested_blend: bool = False) -> Variant:
    """The ridge or the blend, whichever the inner cross-validation ranks better (ties: ridge);
    the blend's share a is one candidate each (``nested_blend``: chosen inside the blend)."""
    if nested_blend:
        inner_blend = blend()
        return nested(
            lambda t, tr, c, i, p: v3(t, tr, c, i) if p == "ridge" else inner_blend(t, tr, c, i),
            ["ridge", "blend"],
        )
    return nested(
        lambda t, tr, c, i, p: v3(t, tr, c, i) if p == "ridge" else _blend(t, tr, c, i, p),
        ["ridge", *ALPHAS],
    )


def joint(eb: bool = False, alphas: Sequence[float] = ALPHAS, c: float = 1.0) -> Variant:
    """One inner cross-validation over the ridge's lam grid and the linear blends
    (1 - a) w0 + a history (no ranking of the metric-only order); ``eb``: the history
    shrunk by consistency (``_hist``)."""
    cands = [("ridge", lam) for lam in sorted(R.LAMBDA_GRID, reverse=True)]
    cands += [("blend", a) for a in alphas]

    def fn(t: Any, train: np.ndarray, cols: np.ndarray, i: int, cand: tuple) -> np.ndarray:
        w0 = R._select_metrics(t, train, cols)
        tr = train & t.labelled
        new, own = _hist(t, tr, t.target, c, eb)
        if cand[0] == "ridge":
            x = np.concatenate([t.feats[tr][:, :, cols], own[tr][:, :, None]], axis=2)
            x = x.reshape(-1, x.shape[2])
            xv = x * t.row_w[tr].reshape(-1, 1)
            ns = max(int(tr.sum()), 1)
            a, b = xv.T @ x / ns, xv.T @ t.target[tr].reshape(-1) / ns
            w = R._solve(a, b, cols, cand[1], w0)
        else:
            w = np.r_[(1 - cand[1]) * w0[:-1], cand[1]]
        return t.feats[i] @ w[:-1] + new * w[-1]

    return nested(fn, cands)


def ridge_to_blend(alphas: Sequence[float]) -> Variant:
    """The ridge shrunk towards (1 - a) w0 + a history instead of w0; lam (and a) inside."""
    cands = [(lam, a) for a in alphas for lam in sorted(R.LAMBDA_GRID, reverse=True)]

    def fn(t: Any, train: np.ndarray, cols: np.ndarray, i: int, cand: tuple) -> np.ndarray:
        w0 = R._select_metrics(t, train, cols)
        a, b, new = _v3_normal(t, train, cols)
        w = R._solve(a, b, cols, cand[0], np.r_[(1 - cand[1]) * w0[:-1], cand[1]])
        return t.feats[i] @ w[:-1] + new * w[-1]

    return nested(fn, cands)


#: name -> (what it is, factory); "shipped" first.
VARIANTS: dict[str, tuple[str, Callable[[], Variant]]] = {
    "shipped": ("scoring.recommend as shipped (version 4: joint_consistency)", lambda: shipped),
    "v3": ("version 3: ridge on metric ranks + plain history", lambda: v3),
    "metric_only": ("the metric-only order (no history)", lambda: metric_only),
    "history_only": ("history alone (mean outcome rank elsewhere)", lambda: history_only),
    "shrink_c0.25": ("history pseudo-count 0.25 instead of 1", lambda: ridge(cs=(0.25,))),
    "shrink_c4": ("history pseudo-count 4", lambda: ridge(cs=(4.0,))),
    "shrink_c_inner": ("pseudo-count from {1, 0.25, 4} chosen inside", lambda: ridge(cs=(1.0, 0.25, 4.0))),
    "shrink_consistency": ("empirical-Bayes shrink by consistency", lambda: ridge(eb=True)),
    "history_z": ("history from standardised outcomes", lambda: ridge(hist="z")),
    "target_z": ("target: standardised outcomes", lambda: ridge(target="z")),
    "history_target_z": ("history and target standardised", lambda: ridge(hist="z", target="z")),
    "metric_z": ("metric z-scores instead of ranks", lambda: ridge(feats="z")),
    "rows_flat": ("rows not top-weighted", lambda: ridge(rows="flat")),
    "lambda_wide": ("penalty grid down to 0", lambda: ridge(lams=(0.0, 1e-5, 1e-4, *R.LAMBDA_GRID))),
    "metric_deviation": ("+ each metric's deviation from the model's mean", lambda: ridge(extra="delta")),
    "pairwise_s3": ("pairwise logistic, scale 3", lambda: pairwise(3.0)),
    "pairwise_s10": ("pairwise logistic, scale 10", lambda: pairwise(10.0)),
    "blend_rank": ("rank of metric-only order blended with history", lambda: blend("rank")),
    "blend_z": ("as blend_rank, history from standardised outcomes", lambda: blend("z")),
    "metric_plus_history": ("metric-only + beta history, beta by weighted tau", metric_plus_history),
    "ridge_history_rescaled": ("ridge's history weight rescaled inside", ridge_history_rescaled),
    "ridge_to_blend": ("ridge shrunk towards the 50/50 blend", lambda: ridge_to_blend((0.5,))),
    "similarity_history": ("similarity-weighted history, gamma inside", lambda: similarity_history((0.0, 1.0, 2.0, 4.0))),
    "select": ("ridge or blend(a) chosen inside", lambda: select()),
    "select_nested": ("ridge or blend (a chosen within) chosen inside", lambda: select(True)),
    "joint": ("one grid: ridge lams and linear blends", joint),
    "joint_c0.25": ("joint, history pseudo-count 0.25", lambda: joint(c=0.25)),
    "joint_consistency": ("joint, history shrunk by consistency", lambda: joint(eb=True)),
    "joint_fine": ("joint, blend shares 0.1 to 0.9", lambda: joint(alphas=tuple(np.round(np.arange(0.1, 0.91, 0.1), 1)))),
}  # fmt: skip


def lodo(datasets: Mapping[str, Any], variant: Variant) -> dict[str, float]:
    """Mean figures of ``variant`` leave-one-dataset-out over ``datasets``."""
    dirs = R._resolve_directions({m for r in datasets.values() for m in r.scores}, None)
    t = R._table(datasets, dirs)
    object.__setattr__(t, "_raw", _raw(t, datasets, dirs))
    got = []
    for i in np.flatnonzero(t.labelled):
        train = t.labelled.copy()
        train[i] = False
        pred = variant(t, train, _cols_without(t, [i]), int(i))
        ok = t.has[i]
        got.append(rank_quality(t.outcomes[i, ok], pred[ok]))
    return {f: float(np.nanmean([g[f] for g in got])) for f in FIGS}


def _records(rows: Sequence[Mapping[str, str]], outcome: str, keep: str | None) -> dict:
    if keep is not None:
        rows = [
            {k: v for k, v in r.items() if k in ("dataset", "model", outcome, keep)} for r in rows
        ]
    return scoring.datasets_from_rows(rows, outcome=outcome)


def subsamples(
    rows: Sequence[Mapping[str, str]], n: int, seed: int, cell_drop: float
) -> list[list[Mapping[str, str]]]:
    """``n`` copies of the table without 1 to 3 random models and 0 to 2 random datasets
    (and each remaining row dropped with probability ``cell_drop``)."""
    models = sorted({r["model"] for r in rows})
    sets = sorted({r["dataset"] for r in rows})
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        dm = set(rng.choice(models, size=int(rng.integers(1, 4)), replace=False))
        dd = set(rng.choice(sets, size=int(rng.integers(0, 3)), replace=False))
        kept = [r for r in rows if r["model"] not in dm and r["dataset"] not in dd]
        out.append([r for r in kept if not cell_drop or rng.random() >= cell_drop])
    return out


def evaluate(
    rows: Sequence[Mapping[str, str]],
    *,
    outcome: str,
    single: str | None,
    names: Sequence[str],
    n_subsamples: int = 0,
    subsampled: Sequence[str] = (),
    seed: int = 1,
) -> dict[str, Any]:
    """Per variant: ``table``, ``single_metric`` (only the column ``single``) and, for those in
    ``subsampled``, ``subsample`` / ``subsample_cells`` means over ``n_subsamples`` copies."""
    out: dict[str, Any] = {}
    shapes = {"table": [list(rows)]}
    if single is not None:
        shapes["single_metric"] = [list(rows)]
    if n_subsamples:
        shapes["subsample"] = subsamples(rows, n_subsamples, seed, 0.0)
        shapes["subsample_cells"] = subsamples(rows, n_subsamples, seed, 0.15)
    for name in names:
        what, make = VARIANTS[name]
        res: dict[str, Any] = {"what": what}
        for shape, tables in shapes.items():
            if shape.startswith("subsample") and name not in subsampled:
                continue
            keeps: list[tuple[str, str | None]] = [("", None)]
            if shape.startswith("subsample") and single is not None:
                keeps.append(("_single_metric", single))
            if shape == "single_metric":
                keeps = [("", single)]
            for suffix, keep in keeps:
                vals = [lodo(_records(tb, outcome, keep), make()) for tb in tables]
                res[shape + suffix] = {f: float(np.mean([v[f] for v in vals])) for f in FIGS}
        out[name] = res
    return out
