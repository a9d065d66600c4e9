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
  training dataset's outcomes (similarity), or by the likeness of two datasets' score levels
  (``level_history``).
- round 2 (``joint_x`` and after): other history features (residual against the metric-only
  order, top-weighted, Bradley-Terry, median, trimmed mean, per-model spread), more ridge
  features or fewer, row-weight powers, weighted Borda, averaging or bagging instead of
  selection, a two-stage residual correction, history scaled by metric agreement, ensemble
  selection with history as a member, and a paired one-standard-error choice rule.

``evaluate(rows, ...)`` gives, per variant, the mean figures on the table, on the table
with one metric column only (a stand-in for a table that has LogME alone) and, optionally,
the mean over random subsamples (models and datasets dropped, and the same with 15% of the
cells dropped too). ``bench/evaluation.py --variants`` writes them into its JSON.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping, Sequence
from itertools import combinations
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


def nested_se(
    fn: Callable[..., np.ndarray], grid: Sequence[Any], preferred: Callable[[Any], bool], k: float
) -> Variant:
    """As ``nested``, but the choice is the best ``preferred`` candidate unless the best other
    one beats it on the inner datasets by more than ``k`` standard errors of the paired
    per-dataset differences (a paired one-standard-error rule)."""

    def variant(t: Any, train: np.ndarray, cols: np.ndarray, i: int) -> np.ndarray:
        idx = np.flatnonzero(train & t.labelled)
        if idx.size < 3:
            return fn(t, train, cols, i, grid[0])
        per = []
        for p in grid:
            preds = []
            for j in idx:
                inner = train.copy()
                inner[j] = False
                preds.append(fn(t, inner, _cols_without(t, [i, j]), j, p))
            per.append(_wt(t, idx, np.array(preds)))
        per_a = np.array(per)
        mean = np.round(per_a.mean(1), 12)
        fam = np.array([preferred(p) for p in grid])
        if fam.all() or not fam.any():
            return fn(t, train, cols, i, grid[int(np.argmax(mean))])
        gp = int(np.flatnonzero(fam)[np.argmax(mean[fam])])
        go = int(np.flatnonzero(~fam)[np.argmax(mean[~fam])])
        diff = per_a[go] - per_a[gp]
        g = go if diff.mean() > k * diff.std(ddof=1) / math.sqrt(diff.size) else gp
        return fn(t, train, cols, i, grid[g])

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


def probe_likeness(embeddings: Mapping[str, np.ndarray], names: Sequence[str]) -> np.ndarray:
    """(D, D) likeness of the datasets ``names`` from their probe embeddings (a fixed probe
    model's mean L2-normalised feature of each dataset's training samples,
    ``bench/probe_similarity.py``): exp(-(d / s)^2), d the Euclidean distance of two
    embeddings, s the median distance between two different datasets (read from the
    embeddings only, never from outcomes). A dataset without an embedding is equally like
    every other (1), so its history is the plain one."""
    n = len(names)
    like = np.ones((n, n))
    have = [i for i, name in enumerate(names) if name in embeddings]
    if len(have) < 2:
        return like
    emb = np.array([np.asarray(embeddings[names[i]], dtype=np.float64) for i in have])
    dist = np.linalg.norm(emb[:, None, :] - emb[None, :, :], axis=2)
    scale = float(np.median(dist[np.triu_indices(len(have), 1)]))
    if scale <= 0:
        return like
    like[np.ix_(have, have)] = np.exp(-((dist / scale) ** 2))
    return like


def _likeness_history(t: Any, pool: np.ndarray, like: np.ndarray, strength: float) -> np.ndarray:
    """(D, M): for every dataset x, the history from the labelled datasets of ``pool`` other
    than x, each weighted by like[x, e] ** strength, shrunk as version 4 shrinks (the pool's
    within-model variance and between-model variance, the count replaced by the effective
    count (sum w)^2 / sum w^2). Strength 0 is version 4's history exactly (``own`` for pool
    datasets, ``new`` for the others)."""
    p = pool & t.labelled
    q = t.target
    _, _, pooled, tau2 = R._history_variances(t, pool)
    out = np.zeros_like(q)
    for x in range(q.shape[0]):
        w = np.where(p, like[x] ** strength if strength else 1.0, 0.0)
        w[x] = 0.0
        wm = w[:, None] * t.has
        sw, sw2 = wm.sum(axis=0), (wm**2).sum(axis=0)
        m = np.divide((wm * q).sum(axis=0), sw, out=np.zeros(q.shape[1]), where=sw > 0)
        n_eff = np.divide(sw**2, sw2, out=np.zeros(q.shape[1]), where=sw2 > 0)
        out[x] = np.where(sw > 0, m * tau2 / (tau2 + pooled / np.maximum(n_eff, 1)), 0.0)
    return out


def probe_history(
    embeddings: Mapping[str, np.ndarray], strengths: Sequence[float] = (0.0, 1.0, 2.0, 4.0)
) -> Variant:
    """Version 4 with each model's history weighted by the likeness of datasets
    (``probe_likeness``) raised to a strength; the strength and version 4's combiner are
    chosen together by the inner leave-one-dataset-out (ties: strength 0, i.e. version 4)."""
    likeness = functools.cache(lambda names: probe_likeness(embeddings, names))

    def fn(t: Any, train: np.ndarray, cols: np.ndarray, i: int, p: tuple) -> np.ndarray:
        strength, cand = p
        like = likeness(t.names)  # once per set of datasets, not per inner fit
        w0 = R._select_metrics(t, train, cols)
        tr = train & t.labelled
        h = _likeness_history(t, tr, like, strength)
        x = np.concatenate([t.feats[tr][:, :, cols], h[tr][:, :, None]], axis=2)
        x = x.reshape(-1, x.shape[2])
        xv = x * t.row_w[tr].reshape(-1, 1)
        n_sets = max(int(tr.sum()), 1)
        a, b = xv.T @ x / n_sets, xv.T @ t.target[tr].reshape(-1) / n_sets
        w = R._combine(a, b, cols, w0, cand)
        return t.feats[i] @ w[:-1] + h[i] * w[-1]

    return nested(fn, [(g, c) for g in strengths for c in R._candidates()])


def score_levels(t: Any) -> dict[str, np.ndarray]:
    """Each dataset's embedding from its metric scores alone: per metric, the mean score over
    the dataset's models, standardised over the datasets (a metric no dataset varies on is
    left out). It carries what a dataset's level of score says about it (how separable its
    classes are to these models, how many classes it has), never an outcome."""
    with np.errstate(all="ignore"):
        level = np.nanmean(t._raw, axis=1)  # (D, K)
    keep = np.isfinite(level).all(axis=0) & (np.nanstd(level, axis=0) > 0)
    z = (level[:, keep] - level[:, keep].mean(axis=0)) / level[:, keep].std(axis=0)
    return {name: z[i] for i, name in enumerate(t.names)}


def level_history(strengths: Sequence[float] = (0.0, 1.0, 2.0, 4.0)) -> Variant:
    """``probe_history`` with the likeness of two datasets taken from their score levels
    (``score_levels``) instead of a probe model's view of their samples: for tables without
    samples. The strength and the combiner are chosen together inside, as there."""

    def variant(t: Any, train: np.ndarray, cols: np.ndarray, i: int) -> np.ndarray:
        return probe_history(score_levels(t), strengths)(t, train, cols, i)

    return variant


def direct_tau(step: float = 0.1) -> Variant:
    """Weights that maximise the mean weighted tau on the training datasets directly: every
    point of a grid of the simplex (``step``) over the metric-only subset's metrics and the
    history, the best one on the training datasets kept (ties: the first). No inner
    cross-validation: the search itself is the fit, the held-out dataset never in it."""
    n = round(1 / step)

    def fn(t: Any, train: np.ndarray, cols: np.ndarray, i: int) -> np.ndarray:
        tr = train & t.labelled
        idx = np.flatnonzero(tr)
        new, own, _ = R._history_arrays(t, tr)
        w0 = R._select_metrics(t, train, cols)
        chosen = [int(k) for k in np.flatnonzero(cols) if w0[k] > 0]
        grid = (
            np.array([(*c, n - sum(c)) for c in np.ndindex(*(n + 1,) * len(chosen)) if sum(c) <= n])
            / n
        )
        x = np.concatenate([t.feats[idx][:, :, chosen], own[idx][:, :, None]], axis=2)
        preds = np.einsum("dmk,sk->sdm", x, grid)
        truth = np.nan_to_num(t.outcomes[idx], nan=0.0)
        score = [float(R._weighted_tau(truth, p, t.has[idx]).mean()) for p in preds]
        w = grid[int(np.argmax(np.round(score, 12)))]
        return t.feats[i][:, chosen] @ w[:-1] + new * w[-1]

    return fn


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


# ------------------------------------------------------------------ round 2 (new ideas)


def _ms_ranks(t: Any, w0: np.ndarray) -> np.ndarray:
    """(D, M) the centred rank of the metric-only order among each dataset's outcome models."""
    out = np.zeros_like(t.target)
    for d in np.flatnonzero(t.labelled):
        ok = t.has[d]
        out[d, ok] = R._centred_ranks(t.feats[d][ok] @ w0[:-1])
    return out


def _q_rank(t: Any, w0: np.ndarray) -> np.ndarray:
    return t.target


def _q_resid(t: Any, w0: np.ndarray) -> np.ndarray:
    """A model's outcome rank less its rank in the metric-only order (0 where absent)."""
    return np.where(t.has, t.target - _ms_ranks(t, w0), 0.0)


def _q_top(t: Any, w0: np.ndarray) -> np.ndarray:
    """Top-weighted outcome score: weighted tau's weight 1/(1 + position from the top),
    centred within the dataset and scaled to a centred rank's spread."""
    out = np.zeros_like(t.target)
    for d in np.flatnonzero(t.labelled):
        y = t.outcomes[d, t.has[d]]
        v = 1.0 / (1.0 + y.size - R._average_ranks(y))
        v = v - v.mean()
        out[d, t.has[d]] = v / v.std() / math.sqrt(12) if v.std() > 0 else 0.0
    return out


def _q_bt(t: Any, pool: np.ndarray, iters: int = 200, prior: float = 1.0) -> np.ndarray:
    """(M,) Bradley-Terry log-strengths (centred, scaled to a rank's spread) from the pairwise
    outcomes on ``pool``, each model given ``prior`` virtual draws against an average one."""
    m = t.target.shape[1]
    wins = np.zeros((m, m))
    for d in np.flatnonzero(pool & t.labelled):
        y = np.where(t.has[d], t.outcomes[d], np.nan)
        ok = t.has[d]
        beat = (y[:, None] > y[None, :]) & ok[:, None] & ok[None, :]
        tie = (y[:, None] == y[None, :]) & ok[:, None] & ok[None, :] & ~np.eye(m, dtype=bool)
        wins += beat + 0.5 * tie
    games = wins + wins.T
    seen = games.sum(1) > 0
    p = np.ones(m)
    for _ in range(iters):  # MM algorithm (Hunter 2004) with a prior of draws vs strength 1
        w = wins.sum(1) + prior
        den = (games / np.maximum(p[:, None] + p[None, :], 1e-12)).sum(1) + 2 * prior / (p + 1)
        p = np.where(seen, w / den, 1.0)
        p = p / np.exp(np.log(p[seen]).mean()) if seen.any() else p
    s = np.where(seen, np.log(p), 0.0)
    sd = s[seen].std() if seen.sum() > 1 else 0.0
    return s / sd / math.sqrt(12) if sd > 0 else s


def _hist_feats(t: Any, tr: np.ndarray, w0: np.ndarray, kinds: Sequence[str]) -> tuple:
    """(M, H) the new dataset's and (D, M, H) each pool row's own (nested leave-one-out)
    history features, each shrunk by consistency."""
    news, owns = [], []
    for k in kinds:
        if k in ("median", "trim"):  # robust: median / trimmed mean, shrunk by n / (n + 1)

            def med(pool: np.ndarray, kind: str = k) -> np.ndarray:
                ds = np.flatnonzero(pool & t.labelled)
                q = np.where(t.has[ds], t.target[ds], np.nan)
                n = t.has[ds].sum(0)
                m = np.zeros(q.shape[1])
                for j in np.flatnonzero(n > 0):
                    v = np.sort(q[:, j][np.isfinite(q[:, j])])
                    if kind == "trim" and v.size >= 5:
                        v = v[1:-1]
                    m[j] = np.median(v) if kind == "median" else v.mean()
                return m * n / (n + 1.0)

            news.append(med(tr))
            own = np.zeros_like(t.target)
            for d in np.flatnonzero(tr & t.labelled):
                p = tr.copy()
                p[d] = False
                own[d] = med(p)
            owns.append(own)
            continue
        if k == "hetero":  # each model shrunk by its own outcome spread (half pooled)

            def het(pool: np.ndarray) -> np.ndarray:
                p = (pool & t.labelled)[:, None]
                hp = t.has & p
                n = hp.sum(0).astype(float)
                mean = np.divide((t.target * p).sum(0), n, out=np.zeros(n.size), where=n > 0)
                dev2 = np.where(hp, (t.target - mean[None]) ** 2, 0.0)
                pooled = float(dev2.sum()) / max(float(np.maximum(n - 1, 0).sum()), 1.0)
                own_v = np.divide(dev2.sum(0), n - 1, out=np.full(n.size, pooled), where=n > 1)
                s2 = 0.5 * pooled + 0.5 * own_v
                se2 = s2 / np.maximum(n, 1)
                seen = n > 0
                tau2 = 1e-6
                if seen.sum() > 1:
                    tau2 = max(
                        float(np.var(mean[seen]) - (pooled / np.maximum(n, 1))[seen].mean()), 1e-6
                    )
                return np.where(seen, mean * tau2 / (tau2 + se2), 0.0)

            news.append(het(tr))
            own = np.zeros_like(t.target)
            for d in np.flatnonzero(tr & t.labelled):
                p2 = tr.copy()
                p2[d] = False
                own[d] = het(p2)
            owns.append(own)
            continue
        if k == "bt":
            news.append(_q_bt(t, tr))
            own = np.zeros_like(t.target)
            for d in np.flatnonzero(tr & t.labelled):
                p = tr.copy()
                p[d] = False
                own[d] = _q_bt(t, p)
            owns.append(own)
            continue
        q = {"rank": _q_rank, "resid": _q_resid, "top": _q_top}[k](t, w0)
        new, own = _hist(t, tr, q, 1.0, eb=True)
        news.append(new)
        owns.append(own)
    return np.stack(news, -1), np.stack(owns, -1)


def _top_feats(t: Any) -> np.ndarray:
    """(D, M, K) each metric's top-weighted score: 1/(1 + position from the top) among the
    scored models, centred and scaled to a centred rank's spread (0 where missing)."""
    out = np.zeros_like(t.feats)
    for d, k in zip(*np.nonzero(t.scored.any(axis=1)), strict=True):
        ok = t.scored[d, :, k]
        q = t.feats[d, ok, k]
        v = 1.0 / (1.0 + q.size - R._average_ranks(q))
        v = v - v.mean()
        out[d, ok, k] = v / v.std() / math.sqrt(12) if v.std() > 0 else 0.0
    return out


def _mbar(t: Any, cols: np.ndarray, w0: np.ndarray | None) -> np.ndarray:
    """(D, M, K) or (D, M, 1): each model's metric ranks averaged over every dataset that
    scored it (metric scores only, no outcomes: known for a new dataset too), the same for
    every row; with ``w0``: that average's metric-only score."""
    s = (t.feats * t.scored).sum(0)
    n = t.scored.sum(0)
    mean = np.divide(s, n, out=np.zeros_like(s), where=n > 0)
    mean = mean * cols[None, :]
    out = np.broadcast_to(mean, t.feats.shape).copy()
    return out if w0 is None else (out @ w0[:-1])[:, :, None]


def joint_x(
    kinds: Sequence[str] = ("rank",),
    blends: Sequence[tuple] = tuple((1 - a, (a,)) for a in ALPHAS),
    lams: Sequence[float] = R.LAMBDA_GRID,
    rowpow: float = 1.0,
    target: str = "rank",
    extra: str = "",
    modes: Sequence[str] = ("ridge",),
    se: float | None = None,
) -> Variant:
    """``joint_consistency`` with the history features ``kinds`` (rank: mean outcome rank;
    resid: mean outcome rank less metric-only rank; top: top-weighted outcome score; bt:
    Bradley-Terry strength) and the fixed mixes ``blends``: (metric share, history weights);
    ``rowpow``: the ridge's row weights raised to this power (renormalised per dataset);
    ``target``: the ridge's target, outcome ranks or the top-weighted score (``_q_top``);
    ``extra``: more metric features for the ridge (z: metric z-scores; top: top-weighted
    metric scores, ``_top_feats``); ``modes``: the ridge candidates: ridge (every metric),
    sub (the metric-only subset's metrics only), two (two features: the metric-only score and
    the history), ridge_r2 (every metric, rows weighted v^2), free (every metric, weights
    of either sign); ``se``: choose by the paired rule of ``nested_se`` with k = ``se``."""
    cands: list[tuple] = [(m, lam) for m in modes for lam in sorted(lams, reverse=True)]
    cands += [("blend", b) for b in blends]
    nh = len(kinds)

    def fn(t: Any, train: np.ndarray, cols: np.ndarray, i: int, cand: tuple) -> np.ndarray:
        w0 = R._select_metrics(t, train, cols)
        tr = train & t.labelled
        new, own = _hist_feats(t, tr, w0, kinds)
        if cand[0] == "two":
            f = np.concatenate([(t.feats[tr] @ w0[:-1])[:, :, None], own[tr]], axis=2)
            x = f.reshape(-1, f.shape[2])
            xv = x * t.row_w[tr].reshape(-1, 1)
            ns = max(int(tr.sum()), 1)
            a, b = xv.T @ x / ns, xv.T @ t.target[tr].reshape(-1) / ns
            w = R._solve(a, b, np.ones(1, dtype=bool), cand[1], np.r_[1.0, np.zeros(nh)])
            return w[0] * (t.feats[i] @ w0[:-1]) + new @ w[1:]
        if cand[0] == "sub":
            cols = cols & (w0[:-1] > 0)
        if cand[0] in ("ridge", "sub", "ridge_r2", "free"):
            feats = t.feats
            if extra in ("z", "top"):
                ex = _zfeats(t._raw) if extra == "z" else _top_feats(t)
                feats = np.concatenate([t.feats, ex], axis=2)
            if extra == "mbar":
                feats = np.concatenate([t.feats, _mbar(t, cols, None)], axis=2)
            if extra == "mbar1":
                feats = np.concatenate([t.feats, _mbar(t, cols, w0)], axis=2)
            ccols = {
                "z": np.r_[cols, cols],
                "top": np.r_[cols, cols],
                "mbar": np.r_[cols, cols],
                "mbar1": np.r_[cols, True],
                "": cols,
            }[extra]
            cols2 = np.r_[ccols, np.ones(nh - 1, dtype=bool)]
            f = np.concatenate([feats[tr][:, :, ccols], own[tr]], axis=2)
            x = f.reshape(-1, f.shape[2])
            rw = t.row_w[tr] ** (2.0 if cand[0] == "ridge_r2" else rowpow)
            rw = rw / np.maximum(rw.sum(1, keepdims=True), 1e-300)
            xv = x * rw.reshape(-1, 1)
            ns = max(int(tr.sum()), 1)
            y = t.target if target == "rank" else _q_top(t, w0)
            a, b = xv.T @ x / ns, xv.T @ y[tr].reshape(-1) / ns
            w0x = np.r_[w0[:-1], np.zeros(feats.shape[2] - len(cols) + nh)]
            if cand[0] == "free":  # no sign constraint
                keep = np.r_[cols2, np.ones(nh, dtype=bool)]
                w = np.zeros(w0x.size)
                w[keep] = np.linalg.solve(a + cand[1] * np.eye(b.size), b + cand[1] * w0x[keep])
            else:
                w = R._solve(a, b, cols2, cand[1], w0x)
            return feats[i] @ w[:-nh] + new @ w[-nh:]
        share, hw = cand[1]
        return share * (t.feats[i] @ w0[:-1]) + new @ np.asarray(hw, dtype=float)

    if se is not None:
        return nested_se(fn, cands, lambda c: c[0] != "blend", se)
    return nested(fn, cands)


def _feature_orders(t: Any, train: np.ndarray, cols: np.ndarray, kinds: Sequence[str]) -> tuple:
    """Per feature (metric-only order, then each history kind): (M,) its value on a new
    dataset and (D, M) its value on each pool dataset left out of its own history."""
    w0 = R._select_metrics(t, train, cols)
    tr = train & t.labelled
    new, own = _hist_feats(t, tr, w0, kinds)
    ms_all = t.feats @ w0[:-1]
    return [ms_all] + [own[..., h] for h in range(len(kinds))], [None] + [
        new[:, h] for h in range(len(kinds))
    ]


def borda(kinds: Sequence[str] = ("rank",), powers: Sequence[float] = (1.0, 2.0, 4.0)) -> Variant:
    """Weighted Borda: the centred ranks of the metric-only order and of each history feature,
    each weighted by max(0, its mean weighted tau on the training datasets)^p (history
    features measured leave-one-out), p chosen inside."""

    def fn(t: Any, train: np.ndarray, cols: np.ndarray, i: int, p: float) -> np.ndarray:
        idx = np.flatnonzero(train & t.labelled)
        owns, news = _feature_orders(t, train, cols, kinds)
        out = np.zeros(t.target.shape[1])
        for own, new in zip(owns, news, strict=True):
            score = float(_wt(t, idx, own[idx]).mean()) if idx.size else 1.0
            vec = own[i] if new is None else new
            out += max(score, 0.0) ** p * R._centred_ranks(vec)
        return out

    return nested(fn, list(powers))


def averaged(
    kinds: Sequence[str] = ("rank",),
    temps: Sequence[float] = (0.0,),
    top: int = 3,
    blends: Sequence[tuple] = tuple((1 - a, (a,)) for a in ALPHAS),
) -> Variant:
    """Model averaging instead of selection: the centred ranks of the ``top`` candidates of
    ``joint_x`` by inner weighted tau, averaged (temp 0) or weighted exp(score / temp)."""
    cands: list[tuple] = [("ridge", lam) for lam in sorted(R.LAMBDA_GRID, reverse=True)]
    cands += [("blend", b) for b in blends]
    nh = len(kinds)

    def one(t: Any, train: np.ndarray, cols: np.ndarray, i: int, cand: tuple) -> np.ndarray:
        w0 = R._select_metrics(t, train, cols)
        tr = train & t.labelled
        new, own = _hist_feats(t, tr, w0, kinds)
        if cand[0] == "ridge":
            cols2 = np.r_[cols, np.ones(nh - 1, dtype=bool)]
            f = np.concatenate([t.feats[tr][:, :, cols], own[tr]], axis=2)
            x = f.reshape(-1, f.shape[2])
            xv = x * t.row_w[tr].reshape(-1, 1)
            ns = max(int(tr.sum()), 1)
            w = R._solve(
                xv.T @ x / ns,
                xv.T @ t.target[tr].reshape(-1) / ns,
                cols2,
                cand[1],
                np.r_[w0[:-1], np.zeros(nh)],
            )
            return t.feats[i] @ w[:-nh] + new @ w[-nh:]
        return cand[1][0] * (t.feats[i] @ w0[:-1]) + new @ np.asarray(cand[1][1], dtype=float)

    def variant(t: Any, train: np.ndarray, cols: np.ndarray, i: int) -> np.ndarray:
        idx = np.flatnonzero(train & t.labelled)
        if idx.size < 3:
            return one(t, train, cols, i, cands[0])
        scores = []
        for c in cands:
            preds = []
            for j in idx:
                inner = train.copy()
                inner[j] = False
                preds.append(one(t, inner, _cols_without(t, [i, j]), j, c))
            scores.append(float(_wt(t, idx, np.array(preds)).mean()))
        scores = np.round(scores, 12)
        best = np.argsort(-scores, kind="stable")[:top]
        out = np.zeros(t.target.shape[1])
        for b in best:
            wgt = 1.0 if temps[0] == 0 else math.exp((scores[b] - scores[best[0]]) / temps[0])
            out += wgt * R._centred_ranks(one(t, train, cols, i, cands[b]))
        return out

    return variant


def _agreement(t: Any, d: int, cols: np.ndarray) -> float:
    """Mean weighted tau between the metric columns in ``cols`` on dataset ``d`` over its
    outcome models (NaN with fewer than two scored metrics)."""
    ks = [k for k in np.flatnonzero(cols) if t.scored[d][:, k].any()]
    if len(ks) < 2:
        return math.nan
    ok = t.has[d] if t.has[d].any() else np.ones(t.feats.shape[1], dtype=bool)
    vals = []
    for a in range(len(ks)):
        for b in range(a + 1, len(ks)):
            x, y = t.feats[d][:, ks[a]], t.feats[d][:, ks[b]]
            vals.append(float(R._weighted_tau(x[None], y[None], ok[None])[0]))
            vals.append(float(R._weighted_tau(y[None], x[None], ok[None])[0]))
    return float(np.mean(vals))


def adaptive(gs: Sequence[float] = (0.0, -2.0, -1.0, 1.0, 2.0), on: str = "all") -> Variant:
    """The shipped combination with its history weight times exp(g (A_i - mean A_train)),
    A the agreement of the metric columns on a dataset (``on``: all of them, or the chosen
    subset's), g chosen inside; no agreement (one metric): g has no effect."""

    def fn(t: Any, train: np.ndarray, cols: np.ndarray, i: int, g: float) -> np.ndarray:
        drop_d = np.zeros(len(t.names), dtype=bool)
        drop_d[~train] = True
        w, _, new, w0 = R._fit_weights(t, train, drop_d)
        use = cols if on == "all" else (w0[:-1] > 0) & cols
        a_i = _agreement(t, i, use)
        a_tr = [_agreement(t, d, use) for d in np.flatnonzero(train & t.labelled)]
        a_tr = [a for a in a_tr if math.isfinite(a)]
        m = 1.0
        if math.isfinite(a_i) and a_tr and g != 0.0:
            m = math.exp(g * (a_i - float(np.mean(a_tr))))
        return t.feats[i] @ w[:-1] + m * new * w[-1]

    return nested(fn, list(gs))


def boosted(betas: Sequence[float] = (0.0, 0.25, 0.5, 1.0)) -> Variant:
    """Two-stage residual history: the rank of the shipped order plus beta times each model's
    mean residual (outcome rank less the rank of the shipped order fitted without that
    dataset) over the training datasets, shrunk by consistency; beta chosen inside."""

    def base(t: Any, train: np.ndarray, i: int) -> np.ndarray:
        drop = np.zeros(len(t.names), dtype=bool)
        drop[~train] = True
        drop[i] = True
        w, _, new, _ = R._fit_weights(t, train, drop)
        return t.feats[i] @ w[:-1] + new * w[-1]

    def resid(t: Any, train: np.ndarray) -> np.ndarray:
        idx = np.flatnonzero(train & t.labelled)
        q = np.zeros_like(t.target)
        for d in idx:
            inner = train.copy()
            inner[d] = False
            ok = t.has[d]
            q[d, ok] = t.target[d, ok] - R._centred_ranks(base(t, inner, d)[ok])
        return _hist(t, train & t.labelled, q, 1.0, eb=True)[0]

    def fn(t: Any, train: np.ndarray, cols: np.ndarray, i: int, beta: float) -> np.ndarray:
        out = R._centred_ranks(base(t, train, i))
        if beta == 0.0 or np.flatnonzero(train & t.labelled).size < 3:
            return out
        return out + beta * resid(t, train)

    return nested(fn, list(betas))


def bagged(how: str = "score", reps: int = 0, seed: int = 0) -> Variant:
    """Jackknife (``reps`` 0: every training dataset left out once) or bootstrap averaging of
    the shipped combination: its scores (``how`` score) or their centred ranks (rank) averaged
    over fits on subsets of the training datasets; no hyper-parameter."""

    def one(t: Any, train: np.ndarray, i: int) -> np.ndarray:
        drop = np.zeros(len(t.names), dtype=bool)
        drop[~train] = True
        drop[i] = True
        w, _, new, _ = R._fit_weights(t, train, drop)
        p = t.feats[i] @ w[:-1] + new * w[-1]
        return R._centred_ranks(p) if how == "rank" else p

    def variant(t: Any, train: np.ndarray, cols: np.ndarray, i: int) -> np.ndarray:
        idx = np.flatnonzero(train & t.labelled)
        if idx.size < 4:
            return one(t, train, i)
        outs = [one(t, train, i)]
        if reps == 0:
            for d in idx:
                sub = train.copy()
                sub[d] = False
                outs.append(one(t, sub, i))
        else:
            rng = np.random.default_rng(seed + i)
            for _ in range(reps):
                keep = rng.choice(idx, size=idx.size - max(1, idx.size // 4), replace=False)
                sub = np.zeros_like(train)
                sub[keep] = True
                outs.append(one(t, sub, i))
        return np.mean(outs, axis=0)

    return variant


def ensemble_history(
    mults: Sequence[int] = (0, 1, 2, 3, 4), ranked: bool = False, max_subset: int = R.MAX_SUBSET
) -> Variant:
    """Ensemble selection with history as a member: the equal-weight mean of a subset of at
    most ``max_subset`` metric ranks and h copies of the history (h in ``mults``), the one
    whose mean weighted tau over the training datasets is highest (history leave-one-out on
    each; ties: fewer members, then fewer history copies); ``ranked``: the history's centred
    rank instead of its value. No inner cross-validation: like step 7, an in-sample choice
    among a few equal-weight candidates."""

    def variant(t: Any, train: np.ndarray, cols: np.ndarray, i: int) -> np.ndarray:
        tr = train & t.labelled
        idx = np.flatnonzero(tr)
        new, own, _ = R._history_arrays(t, tr)
        if ranked:
            new = R._centred_ranks(new)
            own = np.array([R._centred_ranks(o) for o in own])
        ks = (
            [int(k) for k in np.flatnonzero(cols & t.scored[idx].any(axis=(0, 1)))]
            if idx.size
            else []
        )
        if idx.size < 2 or not ks:
            return shipped(t, train, cols, i)
        cands = []
        for r in range(0, min(max_subset, len(ks)) + 1):
            for sub in combinations(ks, r):
                for h in mults:
                    if r + h == 0:
                        continue
                    cands.append((r + h, h, sub))
        cands.sort(key=lambda c: (c[0], c[1]))
        truth = np.nan_to_num(t.outcomes[idx], nan=0.0)
        preds = []
        for n, h, sub in cands:
            w = np.zeros(t.feats.shape[2])
            w[list(sub)] = 1.0 / n
            preds.append(t.feats[idx] @ w + own[idx] * (h / n))
        preds = np.array(preds)
        c_, d_, m_ = preds.shape
        s = (
            R._weighted_tau(
                np.broadcast_to(truth, (c_, d_, m_)).reshape(-1, m_),
                preds.reshape(-1, m_),
                np.broadcast_to(t.has[idx], (c_, d_, m_)).reshape(-1, m_),
            )
            .reshape(c_, d_)
            .mean(1)
        )
        best = cands[int(np.argmax(np.round(s, 12)))]
        n, h, sub = best
        w = np.zeros(t.feats.shape[2])
        w[list(sub)] = 1.0 / n
        return t.feats[i] @ w + new * (h / n)

    return variant


def paired_se(k: float = 1.0, prefer: str = "ridge") -> Variant:
    """The shipped candidates (ridge lams, blends), chosen by a paired one-standard-error
    rule: the best candidate of the ``prefer`` family unless the other family's best beats it
    on the inner datasets by more than ``k`` standard errors of the paired differences
    (Breiman et al. 1984's 1-SE rule, made paired); within a family, the best by mean."""
    cands = R._candidates()

    def variant(t: Any, train: np.ndarray, cols: np.ndarray, i: int) -> np.ndarray:
        drop = np.zeros(len(t.names), dtype=bool)
        drop[~train] = True
        drop[i] = True
        idx = R._dealt(t, np.flatnonzero(train & t.labelled))  # the shipped fold order
        c_cols = R._cols(t, drop)
        w0 = R._select_metrics(t, train, c_cols)
        a, b, new = R._normal_equations(t, train, c_cols)
        if idx.size < 3:
            w = R._combine(a, b, c_cols, w0, cands[0])
            return t.feats[i] @ w[:-1] + new * w[-1]
        n_folds = min(idx.size, R.MAX_INNER_FOLDS)
        pred = np.zeros((len(cands), idx.size, t.target.shape[1]))
        for f in range(n_folds):
            out = idx[f::n_folds]
            inner = train & t.labelled
            inner[out] = False
            inner_drop = drop.copy()
            inner_drop[out] = True
            icols = R._cols(t, inner_drop)
            iw0 = R._select_metrics(t, inner, icols)
            ia, ib, inew = R._normal_equations(t, inner, icols)
            for g, cand in enumerate(cands):
                w = R._combine(ia, ib, icols, iw0, cand)
                pred[g, f::n_folds] = t.feats[out] @ w[:-1] + inew * w[-1]
        per = np.array([_wt(t, idx, p) for p in pred])  # (C, n)
        mean = np.round(per.mean(1), 12)
        fam = np.array([c[0] == prefer for c in cands])
        gp = int(np.flatnonzero(fam)[np.argmax(mean[fam])])
        go = int(np.flatnonzero(~fam)[np.argmax(mean[~fam])])
        diff = per[go] - per[gp]
        se = diff.std(ddof=1) / math.sqrt(diff.size)
        g = go if diff.mean() > k * se else gp
        w = R._combine(a, b, c_cols, w0, cands[g])
        return t.feats[i] @ w[:-1] + new * w[-1]

    return variant


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
    "jx_rank": ("joint_x with rank history (= joint_consistency)", lambda: joint_x(("rank",))),
    "jx_resid": ("joint, history = mean residual vs metric-only order", lambda: joint_x(("resid",), tuple((1.0, (a,)) for a in ALPHAS))),
    "jx_rank_resid": ("joint, rank history + residual history", lambda: joint_x(("rank", "resid"), tuple((1 - a, (a, 0.0)) for a in ALPHAS) + tuple((1.0, (0.0, a)) for a in ALPHAS))),
    "jx_top": ("joint, top-weighted outcome history", lambda: joint_x(("top",))),
    "jx_bt": ("joint, Bradley-Terry history", lambda: joint_x(("bt",))),
    "borda_rank": ("weighted Borda of metric-only order and history", lambda: borda(("rank",))),
    "borda_rank_resid": ("weighted Borda, + residual history", lambda: borda(("rank", "resid"))),
    "avg_top3": ("average of the 3 best joint candidates' ranks", lambda: averaged(("rank",))),
    "jx_rank_top": ("joint, rank + top-weighted history", lambda: joint_x(("rank", "top"), tuple((1 - a, (a, 0.0)) for a in ALPHAS))),
    "jx_rank_bt": ("joint, rank + Bradley-Terry history", lambda: joint_x(("rank", "bt"), tuple((1 - a, (a, 0.0)) for a in ALPHAS))),
    "jx_rows2": ("joint, ridge rows weighted v^2", lambda: joint_x(rowpow=2.0)),
    "jx_rows0.5": ("joint, ridge rows weighted v^0.5", lambda: joint_x(rowpow=0.5)),
    "jx_target_top": ("joint, ridge target the top-weighted score", lambda: joint_x(target="top")),
    "adaptive_all": ("history weight scaled by metric agreement on the dataset, g inside", lambda: adaptive()),
    "adaptive_sel": ("as adaptive_all, agreement of the selected metrics", lambda: adaptive(on="sel")),
    "boosted": ("shipped + beta x mean residual of shipped elsewhere, beta inside", lambda: boosted()),
    "jx_plus_z": ("joint, ridge on metric ranks + metric z-scores", lambda: joint_x(extra="z")),
    "jx_plus_top": ("joint, ridge on metric ranks + top-weighted metric scores", lambda: joint_x(extra="top")),
    "jx_sub": ("joint, the ridge over the metric-only subset's metrics", lambda: joint_x(modes=("sub",))),
    "jx_two": ("joint, the ridge on two features: metric-only score, history", lambda: joint_x(modes=("two",))),
    "jx_all3": ("joint, ridge / subset ridge / two-feature ridge / blends", lambda: joint_x(modes=("ridge", "sub", "two"))),
    "bag_jack": ("shipped averaged over jackknife fits (scores)", lambda: bagged("score")),
    "bag_jack_rank": ("shipped averaged over jackknife fits (ranks)", lambda: bagged("rank")),
    "bag_sub20": ("shipped averaged over 20 random 3/4 subsets (scores)", lambda: bagged("score", 20)),
    "ens_hist": ("ensemble selection over metric subsets + h copies of history", lambda: ensemble_history()),
    "ens_hist_ranked": ("as ens_hist, the history's rank", lambda: ensemble_history(ranked=True)),
    "se_ridge_k0": ("paired rule, k=0 (= shipped but family-wise)", lambda: paired_se(0.0)),
    "se_ridge_k0.5": ("ridge unless the best blend wins by > 0.5 paired SE", lambda: paired_se(0.5)),
    "se_ridge_k1": ("ridge unless the best blend wins by > 1 paired SE", lambda: paired_se(1.0)),
    "se_blend_k1": ("blend unless the best ridge wins by > 1 paired SE", lambda: paired_se(1.0, "blend")),
    "jx_mbar": ("joint, + each model's metric ranks averaged over all datasets", lambda: joint_x(extra="mbar")),
    "jx_mbar1": ("joint, + each model's averaged metric-only score", lambda: joint_x(extra="mbar1")),
    "jx_free": ("joint, the ridge without the sign constraint", lambda: joint_x(modes=("free",))),
    "jx_median": ("joint, history the median outcome rank", lambda: joint_x(("median",))),
    "jx_rank_median": ("joint, mean and median outcome rank histories", lambda: joint_x(("rank", "median"), tuple((1 - a, (a, 0.0)) for a in ALPHAS))),
    "direct_tau_0.1": ("weights maximising weighted tau on the training datasets (simplex grid 0.1)", lambda: direct_tau(0.1)),
    "direct_tau_0.2": ("as direct_tau_0.1, grid 0.2", lambda: direct_tau(0.2)),
    "jx_trim": ("joint, history the trimmed mean outcome rank", lambda: joint_x(("trim",))),
    "jx_rank_trim": ("joint, mean and trimmed-mean histories", lambda: joint_x(("rank", "trim"), tuple((1 - a, (a, 0.0)) for a in ALPHAS))),
    "jx_rank_median_se0.5": ("jx_rank_median chosen by the 0.5 paired-SE rule", lambda: joint_x(("rank", "median"), tuple((1 - a, (a, 0.0)) for a in ALPHAS), se=0.5)),
    "jx_se0.5": ("joint_consistency chosen by the 0.5 paired-SE rule (check = se_ridge_k0.5)", lambda: joint_x(se=0.5)),
    "jx_se1": ("joint_consistency chosen by the 1 paired-SE rule", lambda: joint_x(se=1.0)),
    "jx_hetero": ("joint, each model's history shrunk by its own spread", lambda: joint_x(("hetero",))),
    "level_history": ("history weighted by the likeness of datasets' score levels, strength inside", level_history),
    "jx_rows12": ("joint, ridge rows v^1 or v^2 chosen inside with lam", lambda: joint_x(modes=("ridge", "ridge_r2"))),
}  # fmt: skip


def lodo_per_dataset(datasets: Mapping[str, Any], variant: Variant) -> dict[str, dict[str, float]]:
    """dataset -> ``rank_quality`` of ``variant`` fitted without that dataset."""
    dirs = R._resolve_directions({m for r in datasets.values() for m in r.scores}, None)
    t = R._table(datasets, dirs)
    object.__setattr__(t, "_raw", _raw(t, datasets, dirs))
    got = {}
    for i in np.flatnonzero(t.labelled):
        train = t.labelled.copy()
        train[i] = False
        pred = variant(t, train, _cols_without(t, [i]), int(i))
        ok = t.has[i]
        # tied as the served order ties them (``Fit.recommend``), as ``evaluate_lodo`` does
        got[t.names[i]] = rank_quality(t.outcomes[i, ok], R._snapped_sums(pred[ok][:, None]))
    return got


def lodo(datasets: Mapping[str, Any], variant: Variant) -> dict[str, float]:
    """Mean figures of ``variant`` leave-one-dataset-out over ``datasets``."""
    got = lodo_per_dataset(datasets, variant).values()
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
