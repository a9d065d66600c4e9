"""One model ordering from several transferability metrics and each model's track record.

Single metrics disagree and none is reliable everywhere (Agostinelli et al., "How stable are
transferability metrics evaluations?", ECCV 2022). This module combines, for one target
dataset, (a) the metric scores of the candidate models, rank-normalised within the dataset,
and (b) each model's *history*: how it ranked after real fine-tuning on other datasets. The
combination weights are fitted on stored outcomes and are checked leave-one-dataset-out.

Data model. A dataset is a ``DatasetRecord``: ``scores[metric][model]`` (NaN or absent when a
metric was not computed for a model) and ``outcomes[model]`` (the fine-tuned accuracy, or any
higher-is-better quality; may be empty). Metric directions: higher is better unless the caller
says otherwise (``directions={"otce": False}``) or the metric is a registered one whose
``MetricSpec.higher_is_better`` is False.

The method (version ``VERSION``), for M models and K metrics:

1. Rank normalisation (Hazen positions). Within one dataset, a vector of n finite values
   gets q_i = (r_i - 1/2) / n - 1/2 in (-1/2, 1/2), r_i its average rank (ties share one:
   values equal up to ``TIE_RTOL`` of the largest magnitude among them, ``tie_groups``);
   NaN stays missing. Ranks make scales comparable across metrics and datasets, and the
   Hazen form shrinks towards 0 when few models were scored.
2. Features of (dataset d, model m): the K metric ranks (sign-flipped where lower is better;
   a missing value is imputed with 0, the within-dataset median rank, so it neither helps nor
   hurts the model) and the history h_m = qbar_m * tau2 / (tau2 + s2 / n_m) over the other
   datasets d' with >= ``MIN_OUTCOMES`` outcomes: qbar_m the mean of the model's n_m outcome
   ranks q_{d'm}, shrunk towards the neutral value 0 by how consistent outcomes are (an
   empirical-Bayes, method-of-moments shrink: Efron and Morris, JASA 1975). s2 is the
   within-model variance of outcome ranks pooled over the models (n_m - 1 degrees of freedom
   each), tau2 the variance of the means qbar_m across models less their mean sampling
   variance s2 / n_m, at least ``MIN_HISTORY_VARIANCE``. Where a model's outcomes swing from
   dataset to dataset its history says little and is shrunk hard; where they persist it is
   kept; a model seen on fewer datasets is shrunk more; a model never seen gets 0.
3. Target: the outcome rank q_{dm}. Rows are weighted by weightedtau's hyperbolic weight
   1 / (1 + position from the top) of the true outcome, normalised so each dataset weighs
   g_d = r_d * I(n_d): its reliability r_d (``reliability``; 1 for outcomes without standard
   errors) times the information in the order of its n_d models with outcomes
   (``order_information``: the inverse of Kendall's tau's variance, as a meta-analysis
   weighs each study by its precision). The figures that matter (weighted tau, top-1 regret)
   are decided at the top; a dataset whose outcomes were measured on few held-out samples
   teaches in proportion to the share of their spread that is not noise, and one of four
   models a quarter of what one of ten does. Datasets of equal size and exact outcomes weigh
   equally, as before. Where r_d is 0 (outcomes no more spread than their
   standard errors) the dataset is not learned from, nor held out by ``evaluate_lodo``:
   its order is a draw of the noise. Every mean over training datasets below (steps 4, 5
   and 7) weighs each by g_d; the history (step 2) counts every dataset with r_d > 0 alike
   (weighing it too was measured and did worse: docs/recommender.md).
4. Weights w: (K + 1,) >= 0 minimise
   (1 / sum_d g_d) sum_rows g_d v (x . w - q)^2 + lam ||w - w0||^2, a non-negative ridge
   regression shrunk towards w0: the metric-only weights of step 7 (history 0), solved
   exactly with ``scipy.optimize.nnls`` on the Cholesky factor of the normal equations.
   Non-negativity keeps the combination a consensus (a metric whose ranks disagree with
   outcomes is dropped, never turned upside down on 3 datasets' evidence).
5. The combiner is chosen by an inner cross-validation over the training datasets only
   (leave-one-dataset-out up to ``MAX_INNER_FOLDS`` folds, then datasets dealt round-robin
   into that many folds in the order of a fingerprint of their contents, never of their
   names: the same tables give the same choice on every installation, whatever ids its
   database drew), maximising the mean weighted tau on the held-out datasets, from
   the ridge of step 4 with each lam of ``LAMBDA_GRID`` and the blends
   w = ((1 - a) w0, a) (the metric-only weights of step 7 and history share a) for each a of
   ``BLEND_SHARES``. Each inner fit selects its own metric-only weights and history from its
   own training datasets. Ties go to the ridge with the larger lam, then the smaller share.
   With fewer than 3 training datasets the ridge with the largest lam is used. The blend
   is the robust choice where the ridge has few metrics to weigh (a table with LogME alone).
6. Leakage: when a training dataset's rows are built, its history uses the *other*
   training datasets only (nested leave-one-out), exactly as the history of a new dataset
   uses none of its own outcomes; otherwise the fit would learn to over-trust history.
   (The shrink's s2 and tau2 for those rows are the training pool's.)
7. Metric-only weights (``Fit.metric_weights``: what candidates get when none of them has a
   history, since a model the training datasets do not hold learns nothing from theirs): the
   equal-weight mean of the ranks of a subset of at most ``MAX_SUBSET`` metrics, the subset
   whose mean weighted tau over the training datasets is highest (every subset is tried
   while there are at most ``MAX_EXHAUSTIVE_SUBSETS``, i.e. up to 24 metrics; a tie goes to
   the smaller subset, then to the metrics with the larger uncalibrated weight, then to name
   order; with more metrics, such as a table of hundreds of score columns, the subset is
   grown forward one best metric at a time, ``_forward_subsets``). Equal weights over a
   chosen few are hard to over-fit on a handful of datasets, where a free least-squares
   weight per metric is not (the "forecast combination puzzle": Clemen, "Combining
   forecasts", Int. J. Forecasting 1989; Smith and Wallis 2009): on the published image
   table the subset reaches a leave-one-dataset-out weighted tau of 0.754 where the ridge of
   step 4 without history reaches 0.714. A metric no training dataset scored keeps its
   uncalibrated weight (its share of the present metrics in the fallback below), and the
   subset's weights fill the rest.

History weighted by similarity (the datasets most like this one counting most, the likeness
taken from the agreement of the metric score profiles) was measured and left out: on the
published image table, with its strength chosen by the inner cross-validation, it lowered
the leave-one-dataset-out weighted tau (0.818 against 0.838 for plain history) or raised it
slightly at the cost of top-1 regret (0.839, regret 0.225 against 0.075). A fixed probe
model's likeness of datasets with samples (``bench/probe_similarity.py``, on the zoo's
ground truth) helps only with a strength chosen in hindsight: chosen inside, it stays at 0;
see docs/recommender.md.

Fallback (no dataset with >= ``MIN_OUTCOMES`` outcomes more spread than their errors): the
equal-weight mean of the ranks of whichever of ``RELIABLE_METRICS`` are present. LogME (You
et al., ICML 2021) is the reference every later metric is compared with; in the 715k-setup
study of Agostinelli et al. (ECCV 2022) LogME, NLEEP (Li et al., CVPR 2021) and GBC (Pandy et
al., CVPR 2022) each came out best in one scenario, and no metric in all; shrinkage H-score
(Ibrahim et al., ICLR 2023)
repairs plain H-score's unstable covariance estimate; SFDA (Shao et al., ECCV 2022) and
TransRate (Huang et al., ICML 2022) are the other feature-based metrics of that generation.
LEEP, NCE and plain H-score are left out: each of those papers improves on them. An equal
mean is used because no outcome is there to weigh them, and averaging the ranks of partly
independent estimators lowers the variance of any one. If none of them is present, every
metric gets an equal weight. History weight 0. This default is a prior, not a finding: on a
given zoo it can be worse than its best member (see ``bench/evaluation.py``).
Names are matched ignoring case and punctuation ("LogME" is "logme").

Degenerate metrics. A metric whose value says nothing on an input raises ``DegenerateScore``
in ``scoring.registry`` and so never reaches the recommender. ``Fit.recommend`` also drops a
metric whose finite scores are all equal (up to ``TIE_RTOL``) across two or more candidates:
it cannot order them, and it is named with the reason in ``Recommendation.dropped_metrics``
rather than averaged in. Combined scores equal up to ``TIE_RTOL`` are made exactly equal
(ties share a rank and keep the models' name order), and a combined score within that
tolerance of 0 is 0.0, never -0.0.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import re
import threading
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from itertools import combinations
from types import MappingProxyType
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy import optimize

from scoring.errors import MissingColumn, TransferabilityError
from scoring.evaluation import rank_quality
from scoring.registry import REGISTRY

F64 = npt.NDArray[np.float64]
Bool = npt.NDArray[np.bool_]

#: Bumped whenever the numbers a fit or a recommendation produces change.
#: 2: ties up to ``TIE_RTOL``; metrics with all candidates equal dropped.
#: 3: metric-only weights by ensemble selection; the ridge shrunk towards them.
#: 4: history shrunk by consistency; the ridge or a metric/history blend chosen inside.
#: 5: each dataset weighed by the reliability of its outcomes and the information in its
#: order (step 3); the same numbers as 4 where every dataset has as many exact outcomes.
#: 6: the inner cross-validation leave-one-dataset-out up to 20 training datasets (was 10),
#: its folds dealt by content beyond: the same numbers as 5 up to 11 datasets with outcomes.
#: 7: the leave-one-dataset-out figures measure the order served, tied as it is tied (the
#: sums' rounding broke ties there, and a tie with the best model counted as a hit); a
#: dataset whose outcomes are all equal has reliability 0 (exact, it counted 1); otherwise
#: the weights and the orders are 6's.
VERSION = 7
#: Scores within this fraction of the largest magnitude among them are tied: sums of the same
#: rank contributions in another order differ by rounding (-2.8e-17 against 0.0).
TIE_RTOL = 1e-9
#: The name of the history feature in weights and evidence (not allowed as a metric name).
HISTORY = "history"
#: The name of the combined method in an ``Evaluation`` (not allowed as a metric name).
RECOMMENDED = "recommended"
#: The metric-only calibrated order in an ``Evaluation`` (not allowed as a metric name).
METRIC_ONLY = "metric_only"
#: The metric-only weights (step 7) average at most this many metrics.
MAX_SUBSET = 4
#: Step 7 tries every subset while there are at most this many (24 metrics give 12,950; 25
#: give 15,275); beyond, it selects forward (``_forward_subsets``): a table with hundreds of
#: score columns would otherwise ask for millions of subsets (300 columns: 335 million).
MAX_EXHAUSTIVE_SUBSETS = 15_000
#: A dataset teaches the recommender only with at least this many outcomes.
MIN_OUTCOMES = 3
#: Metrics the uncalibrated default averages (matched after ``_canonical``): those the
#: registry declares ``reliable``.
RELIABLE_METRICS: tuple[str, ...] = tuple(n for n, spec in REGISTRY.items() if spec.reliable)
#: Shrinkage strengths the inner cross-validation chooses from (per unit of dataset weight;
#: a rank feature has variance ~1/12, so 1e-3 barely regularises and 10 pins w to w0).
LAMBDA_GRID: tuple[float, ...] = (1e-3, 1e-2, 1e-1, 1.0, 10.0)
#: The inner cross-validation uses at most this many folds of training datasets: up to this
#: many, it is leave-one-dataset-out, which no order of the datasets changes.
MAX_INNER_FOLDS = 20
#: The floor of the between-model variance of history means (step 2): with one model seen,
#: or means no more spread than their noise, every history shrinks to about 0.
MIN_HISTORY_VARIANCE = 1e-6
#: History shares a of the blends (1 - a) * metric-only + a * history (step 5).
BLEND_SHARES: tuple[float, ...] = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8)
#: The combiners step 5 chooses between.
RIDGE = "ridge"
BLEND = "blend"

FIGURES: tuple[str, ...] = ("kendall_tau", "weighted_tau", "pearson", "top1_hit", "top1_regret")


@dataclass(frozen=True)
class DatasetRecord:
    """One target dataset: metric scores of the candidate models and, maybe, their outcomes.

    scores: metric -> model -> score (NaN or absent: not computed for that model);
    outcomes: model -> quality after fine-tuning, higher is better (may be empty);
    outcome_se: model -> the standard error of its outcome, in the outcome's unit (for an
    accuracy measured on n held-out samples, sqrt(p (1 - p) / n)); absent: measured exactly,
    or not known. It sets how much the dataset teaches (``reliability``).
    """

    scores: Mapping[str, Mapping[str, float]]
    outcomes: Mapping[str, float] = field(default_factory=dict)
    outcome_se: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class HistoryEntry:
    """A model's track record: ``mean`` is h_m (step 2 of the method), ``count`` is n_m."""

    mean: float
    count: int


@dataclass(frozen=True)
class ModelEvidence:
    """Why a model got its combined score.

    values: feature -> rank-normalised value (None for a missing metric, imputed 0);
    contributions: feature -> weight * value (imputed), summing to ``score``;
    available: the metrics with a finite score for this model; history_count: the number of
    datasets its history comes from (0: neutral history); notes: plain-language remarks.
    """

    model: str
    score: float
    values: Mapping[str, float | None]
    contributions: Mapping[str, float]
    available: tuple[str, ...]
    history_count: int
    notes: tuple[str, ...]


@dataclass(frozen=True)
class Recommendation:
    """A ranking of the candidate models of one dataset, best first, with its evidence.

    dropped_metrics: metric -> why it was left out of this order (it could not tell the
    candidates apart); such a metric is not in ``metrics_used`` and contributes 0.
    """

    order: tuple[str, ...]
    scores: Mapping[str, float]
    evidence: Mapping[str, ModelEvidence]
    weights: Mapping[str, float]
    metrics_used: tuple[str, ...]
    ignored_metrics: tuple[str, ...]
    calibrated: bool
    fingerprint: str
    dropped_metrics: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Fit:
    """Fitted combination weights and the outcome history they are applied with.

    weights: feature (each of ``metrics`` and ``HISTORY``) -> weight >= 0;
    metric_weights: metric -> weight >= 0 of the metric-only order (step 7), for candidates
    none of which has a history;
    directions: metric -> higher_is_better; history: model -> ``HistoryEntry`` over all
    datasets learned from; outcome_ranks: dataset -> model -> outcome rank (so a dataset can
    be left out of the history); n_datasets: datasets with >= ``MIN_OUTCOMES`` outcomes;
    regularisation: the chosen lam when step 5 chose the ridge (NaN when it chose a blend or
    when uncalibrated); history_share: the chosen blend's a (NaN otherwise); reliability:
    dataset learned from -> what it counts for (``reliability``: 1 unless its outcomes carry
    standard errors); fingerprint:
    sha256 of ``version`` and every input the fit depends on (the datasets with outcomes in
    full, the others by the names of their metrics: ``_fitted``), so a stored ranking can
    name the fit behind it.
    """

    weights: Mapping[str, float]
    metrics: tuple[str, ...]
    directions: Mapping[str, bool]
    history: Mapping[str, HistoryEntry]
    outcome_ranks: Mapping[str, Mapping[str, float]]
    n_datasets: int
    regularisation: float
    calibrated: bool
    fingerprint: str
    version: int = VERSION
    metric_weights: Mapping[str, float] = field(default_factory=dict)
    history_share: float = math.nan
    reliability: Mapping[str, float] = field(default_factory=dict)

    def recommend(
        self,
        scores: Mapping[str, Mapping[str, float]],
        *,
        exclude_dataset: str | None = None,
        models: Iterable[str] | None = None,
        metric_only: bool = False,
    ) -> Recommendation:
        """Rank the models of one dataset, best first.

        scores: metric -> model -> score for the target dataset (NaN/absent: missing);
        exclude_dataset: a dataset learned from whose outcomes must not enter the history
        (the weights still saw it: use ``evaluate_lodo`` for honest figures);
        models: extra candidates (e.g. models with history but no scores yet);
        metric_only: use ``metric_weights`` and no history (history weight 0), the order for
        candidates the training datasets do not hold.
        Metrics the fit does not know are ignored and listed in ``ignored_metrics``; metrics
        equal for every scored candidate are dropped and listed in ``dropped_metrics``.
        Combined scores equal up to ``TIE_RTOL`` are tied and keep the models' name order.
        """
        _check_scores(scores, "scores")
        candidates = sorted({m for per in scores.values() for m in per} | set(models or ()))
        if not candidates:
            raise TransferabilityError("no models to rank: scores name no model")
        ignored = tuple(sorted(set(scores) - set(self.metrics)))
        ranks = self.outcome_ranks
        if exclude_dataset is not None:
            if exclude_dataset not in ranks:
                raise TransferabilityError(
                    f"exclude_dataset={exclude_dataset!r} is not among the datasets this fit "
                    f"learned from ({', '.join(sorted(ranks)) or 'none'}); drop the argument"
                )
            ranks = {d: r for d, r in ranks.items() if d != exclude_dataset}
        history = {} if metric_only else _history(ranks)
        weights = self.weights
        if metric_only:
            weights = MappingProxyType({**dict(self.metric_weights), HISTORY: 0.0})
        raw = {
            metric: _signed([scores.get(metric, {}).get(m, math.nan) for m in candidates], sign)
            for metric, sign in ((k, 1.0 if self.directions[k] else -1.0) for k in self.metrics)
        }
        dropped = {
            metric: (
                f"{metric} is equal for all {int(np.isfinite(v).sum())} scored models, so it "
                "cannot order them; it is left out of this order"
            )
            for metric, v in raw.items()
            if np.isfinite(v).sum() >= 2 and len(tie_groups(v[np.isfinite(v)])) == 1
        }
        feats = {
            metric: np.full(len(candidates), np.nan) if metric in dropped else _centred_ranks(v)
            for metric, v in raw.items()
        }
        if not any(np.isfinite(v).any() for v in raw.values()) and not any(
            m in history for m in candidates
        ):
            raise TransferabilityError(
                "nothing to rank on: none of the fitted metrics "
                f"({', '.join(self.metrics)}) has a finite score and no candidate has an "
                "outcome history; compute at least one of those metrics"
            )
        total: dict[str, float] = {}
        evidence: dict[str, ModelEvidence] = {}
        for i, model in enumerate(candidates):
            entry = history.get(model, HistoryEntry(0.0, 0))
            values: dict[str, float | None] = {
                k: float(v[i]) if np.isfinite(v[i]) else None for k, v in feats.items()
            }
            values[HISTORY] = entry.mean
            # + 0.0 turns a -0.0 (a zero weight times a negative rank) into 0.0.
            contrib = {k: weights[k] * (v or 0.0) + 0.0 for k, v in values.items()}
            available = tuple(k for k in self.metrics if values[k] is not None)
            missing = [k for k in self.metrics if k not in available and k not in dropped]
            notes = []
            if missing:
                notes.append(f"missing {', '.join(missing)}: the median rank (0) is used")
            if dropped:
                notes.append(f"{', '.join(dropped)} equal for every model: left out")
            if metric_only:
                notes.append("metric-only weights: no candidate has an outcome history")
            elif entry.count == 0:
                notes.append("no outcome history: the neutral history value 0 is used")
            total[model] = math.fsum(contrib.values())
            evidence[model] = ModelEvidence(
                model=model,
                score=total[model],
                values=MappingProxyType(values),
                contributions=MappingProxyType(contrib),
                available=available,
                history_count=entry.count,
                notes=tuple(notes),
            )
        scale = max(math.fsum(abs(c) for c in e.contributions.values()) for e in evidence.values())
        total = _snap_ties(total, scale)
        evidence = {m: replace(e, score=total[m]) for m, e in evidence.items()}
        order = tuple(sorted(candidates, key=lambda m: -total[m]))
        return Recommendation(
            order=order,
            scores=MappingProxyType(total),
            evidence=MappingProxyType(evidence),
            weights=weights,
            metrics_used=tuple(k for k in self.metrics if np.isfinite(feats[k]).any()),
            ignored_metrics=ignored,
            calibrated=self.calibrated,
            fingerprint=self.fingerprint,
            dropped_metrics=MappingProxyType(dropped),
        )


def has_history(fit: Fit, models: Iterable[str], *, exclude_dataset: str | None = None) -> bool:
    """Whether one of ``models`` has an outcome on a dataset ``fit`` learned from, other than
    ``exclude_dataset``: the one rule for which order a ranking gets. True: the full order
    (``fit.recommend(...)``); False: no candidate has a history, so a history says nothing
    and the order is the metric-only one (``fit.recommend(..., metric_only=True)``, with
    ``metric_weights`` fitted on the metrics the ranking computed). The service's
    recommendations and the CLI's local ranking both decide by it."""
    wanted = set(models)
    return any(
        wanted.intersection(per) for ds, per in fit.outcome_ranks.items() if ds != exclude_dataset
    )


def has_history_in(
    datasets: Mapping[str, DatasetRecord],
    models: Iterable[str],
    *,
    exclude_dataset: str | None = None,
) -> bool:
    """``has_history(fit(datasets), models, exclude_dataset=...)`` without fitting: whether
    one of ``models`` has a finite outcome on a dataset the fit would learn from (``_teaches``:
    at least ``MIN_OUTCOMES`` finite outcomes more spread than their errors). A local ranking
    asks this first, and a fit of the whole scope took a second of it."""
    wanted = set(models)
    return any(
        wanted.intersection(_finite_outcomes(rec))
        for ds, rec in datasets.items()
        if ds != exclude_dataset and _teaches(rec)
    )


#: ``why_uncalibrated`` without counts: what every scope no dataset of which teaches has in common
NOTHING_TEACHES = (
    "no dataset of this kind has fine-tuning outcomes that can measure an order of models "
    f"(outcomes for at least {MIN_OUTCOMES} models of a dataset, more spread than their "
    "standard errors)"
)


def why_uncalibrated(
    datasets: Mapping[str, DatasetRecord],
    metrics: Iterable[str] | None = None,
    *,
    counts: bool = True,
) -> str | None:
    """Why an order of ``metrics`` (None: any metric) fitted on ``datasets`` is uncalibrated,
    in words a user can act on; None when it is calibrated (a dataset the fit learns from,
    ``_teaches``, scores one of the metrics).

    A scope may hold fine-tuning outcomes and still calibrate nothing: outcomes for fewer than
    ``MIN_OUTCOMES`` models of a dataset (no order to measure), outcomes no more spread than
    their standard errors (``noise_only``), or outcomes only on datasets that score none of
    the metrics computed. Saying "no outcomes yet" there would send the user to record what
    is already recorded.

    ``counts`` False: where no dataset teaches, ``NOTHING_TEACHES`` rather than how many
    datasets hold which outcomes. What a fit's fingerprint covers (``fit``) decides it then,
    as it must for text stored with an order keyed by that fingerprint (the service's
    boards): outcomes that teach nothing move no fit, so they must move no stored text.
    """
    with_outcomes = {n: r for n, r in datasets.items() if _finite_outcomes(r)}
    teaching = {n: r for n, r in with_outcomes.items() if _teaches(r)}
    if teaching:
        wanted = None if metrics is None else set(metrics)
        if wanted is None or any(wanted & set(r.scores) for r in teaching.values()):
            return None
        which = (
            "the dataset with fine-tuning outcomes of this kind scores none"
            if len(teaching) == 1
            else f"none of the {len(teaching)} datasets with fine-tuning outcomes of this "
            "kind scores any"
        )
        return f"{which} of the metrics computed here ({', '.join(sorted(wanted))})"
    if not counts:
        return NOTHING_TEACHES
    if not with_outcomes:
        return "no fine-tuning outcomes are recorded for datasets of this kind yet"
    n = len(with_outcomes)
    few = sum(len(_finite_outcomes(r)) < MIN_OUTCOMES for r in with_outcomes.values())

    def part(k: int, what: str) -> str:
        who = ("it" if n == 1 else "all") if k == n else str(k)
        return f"{who} {'has' if who == 'it' or k == 1 else 'have'} outcomes {what}"

    why = [
        part(k, what)
        for k, what in (
            (few, f"for fewer than {MIN_OUTCOMES} models"),
            (n - few, "no more spread than their standard errors"),
        )
        if k
    ]
    return (
        f"the {n} dataset{'s' if n != 1 else ''} with fine-tuning outcomes of this kind cannot "
        f"measure an order of models ({' and '.join(why)})"
    )


@dataclass(frozen=True)
class Evaluation:
    """Leave-one-dataset-out figures of every metric and of the recommender.

    per_dataset: dataset -> method -> figure -> value (figures as in ``rank_quality``;
    methods: each metric and ``RECOMMENDED``); mean / median: method -> figure -> value over
    the datasets where it is finite; count: method -> figure -> that number of datasets;
    sem: method -> figure -> the standard error of that mean (the sample standard deviation
    over the datasets / sqrt(count); NaN with fewer than 2), i.e. how far the mean itself is
    to be trusted; low / high: the figure's least and greatest value on one held-out dataset,
    i.e. how far one new dataset may land from the mean;
    weights: dataset -> the recommender's weights fitted without it; predictions: dataset ->
    model -> the combined score it was evaluated on; metric_weights: dataset -> the
    metric-only weights (``METRIC_ONLY``) fitted without it;
    compared: dataset -> method -> how many of its models with an outcome the method's
    figures are over (a metric is compared on the models it scored, ``nan_policy="omit"``;
    the recommender and the metric-only order rank them all); coverage: method -> that
    number summed over the held-out datasets / the number of their models with an outcome
    (1.0: every model everywhere; a metric that scored half of them is measured on that half,
    so its figures and the recommender's are not over the same models).
    """

    datasets: tuple[str, ...]
    methods: tuple[str, ...]
    per_dataset: Mapping[str, Mapping[str, Mapping[str, float]]]
    mean: Mapping[str, Mapping[str, float]]
    median: Mapping[str, Mapping[str, float]]
    count: Mapping[str, Mapping[str, int]]
    weights: Mapping[str, Mapping[str, float]]
    predictions: Mapping[str, Mapping[str, float]]
    metric_weights: Mapping[str, Mapping[str, float]] = field(default_factory=dict)
    sem: Mapping[str, Mapping[str, float]] = field(default_factory=dict)
    low: Mapping[str, Mapping[str, float]] = field(default_factory=dict)
    high: Mapping[str, Mapping[str, float]] = field(default_factory=dict)
    compared: Mapping[str, Mapping[str, int]] = field(default_factory=dict)
    coverage: Mapping[str, float] = field(default_factory=dict)


# ----------------------------------------------------------------------------- helpers


def _canonical(name: str) -> str:
    return re.sub(r"[^0-9a-z]", "", name.lower())


def _centred_ranks(values: Sequence[float] | F64) -> F64:
    """(n,) values, NaN = missing -> (n,) Hazen ranks (r - 1/2)/n' - 1/2, n' the finite count."""
    x = np.asarray(values, dtype=np.float64)
    out = np.full(x.shape, np.nan)
    ok = np.isfinite(x)
    n = int(ok.sum())
    if n:
        out[ok] = (_average_ranks(x[ok]) - 0.5) / n - 0.5
    return out


def _signed(values: Sequence[float], sign: float) -> F64:
    return sign * np.asarray(values, dtype=np.float64)


def _number(value: Any, what: str) -> float:
    """``value`` as a float; a ``TransferabilityError`` naming ``what`` when it is none."""
    try:
        return float(value)
    except (TypeError, ValueError):
        raise TransferabilityError(f"{what} is {value!r}, not a number") from None


def _check_scores(scores: Mapping[str, Mapping[str, float]], where: str) -> None:
    for metric, per in scores.items():
        if metric in (HISTORY, RECOMMENDED, METRIC_ONLY):
            raise TransferabilityError(
                f"{where}: {metric!r} is reserved for the recommender; rename that metric"
            )
        for model, value in per.items():
            v = _number(value, f"{where}: {metric} of {model!r}")
            if math.isinf(v):
                raise TransferabilityError(
                    f"{where}: {metric} of {model!r} is {v}; an infinite score is a failed "
                    "computation: recompute it or pass NaN to mark it missing"
                )


def _check_outcomes(outcomes: Mapping[str, float], where: str) -> None:
    for model, value in outcomes.items():
        v = _number(value, f"{where}: outcome of {model!r}")
        if math.isinf(v):
            raise TransferabilityError(
                f"{where}: outcome of {model!r} is {v}; pass NaN (or leave it out) if unknown"
            )


def _check_se(outcome_se: Mapping[str, float], where: str) -> None:
    for model, value in outcome_se.items():
        v = _number(value, f"{where}: standard error of {model!r}'s outcome")
        if math.isinf(v) or v < 0:
            raise TransferabilityError(
                f"{where}: standard error of {model!r}'s outcome is {v}; it must be a finite "
                "number >= 0 (NaN, or leaving it out: not known)"
            )


def _finite_outcomes(record: DatasetRecord) -> dict[str, float]:
    return {m: float(v) for m, v in record.outcomes.items() if math.isfinite(float(v))}


def binomial_se(accuracy: float, n: int, *, scale: float = 100.0) -> float:
    """The standard error of an accuracy measured on ``n`` held-out samples: scale *
    sqrt(p (1 - p) / n), p = accuracy / scale (``scale`` 100: an accuracy in percent). NaN
    when ``n`` < 1 or the accuracy is not within [0, scale]."""
    p = float(accuracy) / scale
    if n < 1 or not 0.0 <= p <= 1.0:
        return math.nan
    return scale * math.sqrt(p * (1.0 - p) / n)


def noise_only(record: DatasetRecord) -> bool:
    """True for a dataset with >= ``MIN_OUTCOMES`` finite outcomes that are no more spread
    than their standard errors (``reliability`` 0): enough outcomes, but no order to learn
    from or to measure."""
    return len(_finite_outcomes(record)) >= MIN_OUTCOMES and reliability(record) == 0.0


def _teaches(record: DatasetRecord) -> bool:
    """The recommender learns from a dataset (and holds it out) when it has >=
    ``MIN_OUTCOMES`` finite outcomes more spread than their standard errors."""
    return len(_finite_outcomes(record)) >= MIN_OUTCOMES and reliability(record) > 0.0


def order_information(n: int) -> float:
    """How much the order of ``n`` models tells: 1 / Var(Kendall's tau) when the two orders
    compared are independent, 9 n (n - 1) / (2 (2 n + 5)) (Kendall, Biometrika 1938), the
    precision of one dataset's evidence on which metric orders models well. 10 models tell
    3.9 times what 4 do (16.2 against 4.2); equal counts weigh equally."""
    return 9.0 * n * (n - 1) / (2.0 * (2 * n + 5))


def reliability(record: DatasetRecord) -> float:
    """How much of the spread of a dataset's finite outcomes is not measurement noise:
    1 - mean(se^2) / var(outcomes), the sample variance over its models, in [0, 1].

    The observed outcomes' variance is the true differences' variance plus the noise's
    (independent errors), so this is the classical reliability coefficient, estimated by
    moments as step 2's between-model variance is. 1 when no outcome has a standard error
    (``DatasetRecord.outcome_se``: outcomes taken as exact, as a published table's are); 0
    when the outcomes are no more spread than their noise: their order is a draw of the
    noise, and the dataset teaches the recommender nothing (``_table``). A model without a
    standard error counts as measured exactly. Outcomes all equal are 0 whatever their
    errors: there is no order to learn or to measure (exact and equal, they once counted 1,
    and a held-out dataset with no order scored a hit and no regret for any order).
    """
    out = _finite_outcomes(record)
    spread = float(np.var(list(out.values()), ddof=1)) if len(out) > 1 else 0.0
    if spread <= 0.0:
        return 0.0
    se = [float(record.outcome_se.get(m, math.nan)) for m in out]
    noise = math.fsum(x * x for x in se if math.isfinite(x)) / max(len(out), 1)
    if noise == 0.0:
        return 1.0
    return min(1.0, max(0.0, 1.0 - noise / spread))


def _history(ranks: Mapping[str, Mapping[str, float]]) -> dict[str, HistoryEntry]:
    """model -> its history over ``ranks`` (dataset -> model -> outcome rank): step 2, the
    same numbers as ``_history_arrays`` gives a dataset outside its pool."""
    per_model: dict[str, list[float]] = {}
    for per in ranks.values():
        for model, q in per.items():
            per_model.setdefault(model, []).append(float(q))
    if not per_model:
        return {}
    names = sorted(per_model)
    n = np.array([len(per_model[m]) for m in names], dtype=np.float64)
    mean = np.array([math.fsum(per_model[m]) for m in names]) / n
    ss = math.fsum(
        float(((np.array(per_model[m]) - mu) ** 2).sum()) for m, mu in zip(names, mean, strict=True)
    )
    pooled = ss / max(float(np.maximum(n - 1, 0).sum()), 1.0)
    se2 = pooled / n
    tau2 = MIN_HISTORY_VARIANCE
    if len(names) > 1:
        tau2 = max(float(np.var(mean) - se2.mean()), MIN_HISTORY_VARIANCE)
    shrunk = mean * tau2 / (tau2 + se2)
    return {m: HistoryEntry(float(h), int(c)) for m, h, c in zip(names, shrunk, n, strict=True)}


def _resolve_directions(
    metrics: Iterable[str], directions: Mapping[str, bool] | None
) -> dict[str, bool]:
    metrics = sorted(metrics)
    given = dict(directions or {})
    unknown = sorted(set(given) - set(metrics))
    if unknown:
        raise TransferabilityError(
            f"directions name metric(s) no dataset has: {', '.join(unknown)}; "
            f"the metrics are: {', '.join(metrics) or 'none'}"
        )
    out = {}
    for m in metrics:
        if m in given:
            out[m] = bool(given[m])
        elif m in REGISTRY:
            out[m] = REGISTRY[m].higher_is_better
        else:
            out[m] = True
    return out


def default_weights(metrics: Iterable[str]) -> dict[str, float]:
    """The uncalibrated combination (module docstring, "Fallback"): feature -> weight.

    Equal weights summing to 1 over the present ``RELIABLE_METRICS`` (matched ignoring case
    and punctuation), else over all metrics; ``HISTORY`` gets 0.
    """
    metrics = sorted(metrics)
    reliable = {_canonical(r) for r in RELIABLE_METRICS}
    chosen = [m for m in metrics if _canonical(m) in reliable] or metrics
    out = {m: (1.0 / len(chosen) if m in chosen else 0.0) for m in metrics}
    out[HISTORY] = 0.0
    return out


def _content(r: DatasetRecord) -> dict[str, Any]:
    """What a fit reads of one dataset, exactly (floats as hex), for fingerprints."""
    out: dict[str, Any] = {
        "scores": {k: {m: _hex(v) for m, v in per.items()} for k, per in r.scores.items()},
        "outcomes": {m: _hex(v) for m, v in r.outcomes.items()},
    }
    if r.outcome_se:
        out["outcome_se"] = {m: _hex(v) for m, v in r.outcome_se.items()}
    return out


def _values(r: DatasetRecord) -> dict[str, Any]:
    """One dataset's values without its models' names (each metric's scores, its outcomes and
    their errors, each sorted, as hex): the same for the same table on every installation,
    whatever ids its database gave the models."""
    return {
        "scores": {k: sorted(_hex(v) for v in per.values()) for k, per in r.scores.items()},
        "outcomes": sorted(_hex(v) for v in r.outcomes.values()),
        "outcome_se": sorted(_hex(v) for v in r.outcome_se.values()),
    }


def _fingerprint(payload: Any) -> str:
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), allow_nan=True)
    return hashlib.sha256(text.encode()).hexdigest()


def _hex(v: float) -> str:
    return float(v).hex()


# ------------------------------------------------------------------------- array core


def _tie_starts(xs: F64, scale: float | None = None) -> npt.NDArray[np.intp]:
    """Indices where a new group of tied values starts in (n,) ascending finite values."""
    if scale is None:
        scale = float(np.abs(xs).max()) if xs.size else 0.0
    return np.flatnonzero(np.r_[True, np.diff(xs) > TIE_RTOL * scale])


def tie_groups(values: Sequence[float] | F64, scale: float | None = None) -> list[list[int]]:
    """(n,) finite values -> groups of indices of tied values, highest group first.

    Values tie when, sorted, each is within ``TIE_RTOL`` times ``scale`` of the next; the
    scale is by default the largest magnitude among them (the one tolerance of the
    recommender and of ``rank_best_first``). Within a group indices keep their input order.
    """
    x = np.asarray(values, dtype=np.float64)
    order = np.argsort(x, kind="stable")
    starts = _tie_starts(x[order], scale)
    groups = [sorted(int(i) for i in g) for g in np.split(order, starts[1:])]
    return groups[::-1]


def _snap_ties(total: Mapping[str, float], scale: float) -> dict[str, float]:
    """Tied combined scores made exactly equal (the group's highest), those tied with 0 made
    0.0: rounding in a sum must not order models, nor print as -0.0. ``scale``: the largest
    sum of the magnitudes of one model's terms, what the rounding of a sum is relative to
    (totals that cancel to about 0 have no magnitude of their own to be relative to)."""
    names = list(total)
    values = [total[m] for m in names]
    out: dict[str, float] = {}
    for group in tie_groups([*values, 0.0], scale):  # the last index is the 0.0
        members = [i for i in group if i < len(names)]
        value = 0.0 if len(names) in group else max(values[i] for i in members)
        out.update((names[i], value) for i in members)
    return {m: out[m] for m in names}


def _snapped_sums(terms: F64) -> F64:
    """(M, K) each model's terms -> (M,) their sums, tied as ``Fit.recommend`` ties the order
    it serves (``_snap_ties``): the leave-one-dataset-out figures must measure that order,
    not one that rounding in a sum breaks ties in (two models tied in the served order, one of
    them the best, is a miss by the pessimistic rule of ``rank_quality``, not a hit)."""
    sums = terms.sum(axis=1)
    if not sums.size:
        return np.zeros(0, dtype=np.float64)
    scale = float(np.abs(terms).sum(axis=1).max())
    snapped = _snap_ties({str(j): float(v) for j, v in enumerate(sums)}, scale)
    return np.array([snapped[str(j)] for j in range(sums.size)], dtype=np.float64)


def _average_ranks(x: F64) -> F64:
    """(n,) finite values -> (n,) 1-based ranks, ties (``tie_groups``) sharing their average
    rank."""
    order = np.argsort(x, kind="stable")
    xs = x[order]
    starts = _tie_starts(xs)
    ends = np.r_[starts[1:], xs.size]
    ranks = np.empty(x.size)
    ranks[order] = np.repeat((starts + ends + 1) / 2.0, ends - starts)
    return ranks


#: ``_weighted_tau`` compares every pair of a row's models at once up to this many models in
#: a row (a row's pairs then fit one batch), and sorts (``scipy.stats.weightedtau``, O(n log n)
#: per row, in a Python loop: 3 to 5 times slower at 256 to 2,048 models,
#: ``bench/wide_tables.py``) beyond, where one row's pairs would need gigabytes (10,000
#: models: 10^8 pairs a row).
PAIRWISE_MAX_MODELS = 2048
#: ``_weighted_tau`` batches rows so that each batch holds at most this many pairs.
PAIRWISE_BATCH = 4_000_000


def _weighted_tau(truth: F64, pred: F64, mask: Bool) -> F64:
    """Weighted tau of ``pred`` against ``truth``, both (B, M), over the models in ``mask``.

    The same figure as ``scipy.stats.weightedtau(truth, pred, rank=None)`` (Vigna, "A
    weighted correlation index for rankings with ties", WWW 2015: hyperbolic weights 1/(r+1)
    of the rank r by decreasing (truth, pred), an exchange weighing the sum of its two
    weights, tau-b denominator); 0 where undefined. Each row is first packed to its own
    models (M is every model of a scope, a row holds one dataset's), then rows are compared
    pair by pair in batches of at most ``PAIRWISE_BATCH`` pairs, O(n^2) per row of n models;
    rows of more than ``PAIRWISE_MAX_MODELS`` models are sorted instead.
    """
    b, _ = truth.shape
    n = mask.sum(axis=1)
    width = int(n.max()) if b else 0
    if width < 2:
        return np.zeros(b)
    # pack: a row's own models first, in their order (ties break as before: by position)
    order = np.argsort(~mask, axis=1, kind="stable")[:, :width]
    truth = np.take_along_axis(truth, order, 1)
    pred = np.take_along_axis(pred, order, 1)
    mask = np.take_along_axis(mask, order, 1)
    out = np.zeros(b)
    many = n > PAIRWISE_MAX_MODELS
    if many.any():
        from scipy import stats

        for i in np.flatnonzero(many):
            got = stats.weightedtau(truth[i, : n[i]], pred[i, : n[i]], rank=None).statistic
            out[i] = got if np.isfinite(got) else 0.0
    few = np.flatnonzero(~many & (n >= 2))
    if few.size:
        width = int(n[few].max())
        step = max(1, PAIRWISE_BATCH // (width * width))
        for start in range(0, few.size, step):
            rows = few[start : start + step]
            out[rows] = _pairwise_tau(truth[rows, :width], pred[rows, :width], mask[rows, :width])
    return out


def _pairwise_tau(truth: F64, pred: F64, mask: Bool) -> F64:
    """``_weighted_tau`` of (B, M) rows, every pair at once: O(B M^2) time and memory."""
    b, m = truth.shape
    t = np.where(mask, truth, -np.inf)
    p = np.where(mask, pred, -np.inf)
    order = np.lexsort((-p, -t), axis=-1)
    rank = np.empty((b, m))
    np.put_along_axis(rank, order, np.broadcast_to(np.arange(m, dtype=np.float64), (b, m)), -1)
    w = np.where(mask, 1.0 / (rank + 1.0), 0.0)
    upper = np.triu(np.ones((m, m), dtype=bool), 1)
    pair = np.where(upper & mask[:, :, None] & mask[:, None, :], w[:, :, None] + w[:, None, :], 0)
    t, p = np.where(mask, truth, 0.0), np.where(mask, pred, 0.0)
    st = np.sign(t[:, :, None] - t[:, None, :])
    sp = np.sign(p[:, :, None] - p[:, None, :])
    num = np.einsum("bij,bij,bij->b", pair, st, sp)
    den = np.sqrt(np.einsum("bij,bij->b", pair, st * st) * np.einsum("bij,bij->b", pair, sp * sp))
    out = np.zeros(b)
    np.divide(num, den, out=out, where=den > 0)
    return out


@dataclass(frozen=True)
class _Table:
    """Dense arrays over D datasets (sorted names), M models, K metrics.

    feats: (D, M, K) signed metric ranks, missing imputed 0; scored: (D, M, K) bool finite;
    keyed: (D, K) bool the dataset names the metric; target: (D, M) outcome ranks, 0 where
    absent; outcomes: (D, M) raw outcomes, NaN where absent; has: (D, M) bool outcome present
    (only datasets with >= MIN_OUTCOMES and a reliability above 0); row_w: (D, M) fitting
    weights (step 3), each labelled dataset summing to 1; labelled: (D,) bool; weight: (D,)
    each labelled dataset's ``reliability`` times the ``order_information`` of its models
    with outcomes (0 elsewhere): what it counts for in the means over datasets of steps 4, 5
    and 7 (step 2's history counts every labelled one alike).
    """

    names: tuple[str, ...]
    models: tuple[str, ...]
    metrics: tuple[str, ...]
    feats: F64
    scored: Bool
    keyed: Bool
    target: F64
    outcomes: F64
    has: Bool
    row_w: F64
    labelled: Bool
    weight: F64
    #: (D,) a fingerprint of each dataset's values, not its names nor its models' (``_values``):
    #: the order the inner cross-validation deals datasets into folds in (step 5)
    keys: tuple[str, ...]
    #: subset of metric indices -> (D,) the weighted tau of its equal-weight mean on each
    #: labelled dataset (0 elsewhere): step 7's search, computed once per table and subset
    subset_tau: dict[tuple[int, ...], F64] = field(default_factory=dict, compare=False, repr=False)
    #: candidate metric indices -> (their subsets, (S, D) taus): ``_subset_grid``
    subset_grid: dict[tuple[int, ...], tuple[list[tuple[int, ...]], F64]] = field(
        default_factory=dict, compare=False, repr=False
    )


def _table(datasets: Mapping[str, DatasetRecord], directions: Mapping[str, bool]) -> _Table:
    names = tuple(sorted(datasets))
    metrics = tuple(sorted(directions))
    models = tuple(
        sorted(
            {m for r in datasets.values() for per in r.scores.values() for m in per}
            | {m for r in datasets.values() for m in r.outcomes}
        )
    )
    index = {m: j for j, m in enumerate(models)}
    d_, m_, k_ = len(names), len(models), len(metrics)
    raw = np.full((d_, m_, k_), np.nan)
    keyed = np.zeros((d_, k_), dtype=bool)
    outcomes = np.full((d_, m_), np.nan)
    weight = np.zeros(d_)
    for i, name in enumerate(names):
        rec = datasets[name]
        for k, metric in enumerate(metrics):
            per = rec.scores.get(metric)
            if per is None:
                continue
            keyed[i, k] = True
            sign = 1.0 if directions[metric] else -1.0
            for model, value in per.items():
                raw[i, index[model], k] = sign * float(value)
        out = _finite_outcomes(rec)
        if _teaches(rec):
            outcomes[i, [index[m] for m in out]] = list(out.values())
            weight[i] = reliability(rec) * order_information(len(out))
    scored = np.isfinite(raw)
    feats = np.zeros((d_, m_, k_))
    for di, ki in zip(*np.nonzero(scored.any(axis=1)), strict=True):
        feats[di, :, ki] = np.nan_to_num(_centred_ranks(raw[di, :, ki]), nan=0.0)
    has = np.isfinite(outcomes)
    target = np.zeros((d_, m_))
    row_w = np.zeros((d_, m_))
    for di in np.flatnonzero(has.any(axis=1)):
        y = outcomes[di, has[di]]
        target[di, has[di]] = _centred_ranks(y)
        v = 1.0 / (1.0 + y.size - _average_ranks(y))  # 1/(1 + position from the top)
        row_w[di, has[di]] = v / v.sum()
    return _Table(
        names, models, metrics, feats, scored, keyed, target, outcomes, has, row_w,
        has.any(axis=1), weight, tuple(_fingerprint(_values(datasets[n])) for n in names),
    )  # fmt: skip


def _history_variances(t: _Table, pool: Bool) -> tuple[F64, F64, float, float]:
    """Step 2's statistics over the labelled datasets in ``pool`` (D,) bool: (M,) each
    model's mean outcome rank and (M,) its number of outcomes, the pooled within-model
    variance s2 and the between-model variance tau2 (at least ``MIN_HISTORY_VARIANCE``)."""
    p = (pool & t.labelled)[:, None]
    q = t.target
    n = (t.has & p).sum(axis=0).astype(np.float64)
    mean = np.divide((q * p).sum(axis=0), n, out=np.zeros(q.shape[1]), where=n > 0)
    dev = np.where(t.has & p, q - mean[None, :], 0.0)
    pooled = float((dev**2).sum()) / max(float(np.maximum(n - 1, 0).sum()), 1.0)
    seen = n > 0
    tau2 = MIN_HISTORY_VARIANCE
    if seen.sum() > 1:
        se2 = pooled / np.maximum(n, 1)
        tau2 = max(float(np.var(mean[seen]) - se2[seen].mean()), MIN_HISTORY_VARIANCE)
    return mean, n, pooled, tau2


def _history_arrays(t: _Table, pool: Bool) -> tuple[F64, F64, F64]:
    """History from the labelled datasets in ``pool`` (D,) bool (step 2's consistency shrink).

    Returns (M,) the history of a dataset outside the pool, (D, M) the history of each pool
    dataset's rows leaving that dataset out (nested leave-one-out, with the pool's variances;
    other rows: as outside), and (M,) the number of pool datasets with an outcome for each
    model.
    """
    p = (pool & t.labelled)[:, None]
    q = t.target
    s = (q * p).sum(axis=0)
    mean, n, pooled, tau2 = _history_variances(t, pool)
    new = np.where(n > 0, mean * tau2 / (tau2 + pooled / np.maximum(n, 1)), 0.0)
    n_own = n[None, :] - (t.has & p)
    m_own = np.divide(s[None, :] - q * p, n_own, out=np.zeros_like(q), where=n_own > 0)
    own = m_own * tau2 / (tau2 + pooled / np.maximum(n_own, 1))
    return new, own, n


def _normal_equations(t: _Table, train: Bool, cols: Bool) -> tuple[F64, F64, F64]:
    """Step 4's data terms on the labelled datasets in ``train`` (D,), metrics in ``cols``.

    Returns a: (K' + 1, K' + 1) and b: (K' + 1,), K' = cols.sum(), history last, each the
    weighted mean over datasets; and (M,) the history a dataset outside ``train`` gets.
    """
    train = train & t.labelled
    new, own, _ = _history_arrays(t, train)
    x = np.concatenate([t.feats[train][:, :, cols], own[train][:, :, None]], axis=2)
    x = x.reshape(-1, x.shape[2])
    xv = x * (t.row_w[train] * t.weight[train, None]).reshape(-1, 1)
    n_sets = max(float(t.weight[train].sum()), 1e-12)
    return xv.T @ x / n_sets, xv.T @ t.target[train].reshape(-1) / n_sets, new


def _solve(a: F64, b: F64, cols: Bool, lam: float, w0: F64) -> F64:
    """Step 4: (K + 1,) weights >= 0 minimising w'aw - 2b'w + lam |w - w0|^2 over the
    features in ``cols`` (+ history), 0 elsewhere; exact NNLS on the Cholesky factor."""
    keep = np.r_[cols, True]
    chol = np.linalg.cholesky(a + lam * np.eye(b.size))
    sol, _ = optimize.nnls(chol.T, np.linalg.solve(chol, b + lam * w0[keep]))
    w = np.zeros(w0.size)
    w[keep] = sol
    return w


def _candidates() -> list[tuple[str, float]]:
    """Step 5's combiners in tie-break order: the ridge by decreasing lam, then the blends by
    increasing history share."""
    return [(RIDGE, lam) for lam in sorted(LAMBDA_GRID, reverse=True)] + [
        (BLEND, a) for a in BLEND_SHARES
    ]


def _combine(a: F64, b: F64, cols: Bool, w0: F64, cand: tuple[str, float]) -> F64:
    """(K + 1,) weights of one combiner: the ridge (step 4) with lam ``cand[1]``, or the
    blend (1 - a) w0 + a history with a = ``cand[1]``."""
    if cand[0] == RIDGE:
        return _solve(a, b, cols, cand[1], w0)
    blend: F64 = np.r_[(1.0 - cand[1]) * w0[:-1], cand[1]]
    return blend


def _cols(t: _Table, drop: Bool) -> Bool:
    """(K,) the metrics some dataset outside ``drop`` (D,) names."""
    return np.asarray(t.keyed[~drop].any(axis=0), dtype=bool)


def _choose(t: _Table, train: Bool, drop: Bool) -> tuple[str, float]:
    """Step 5: the combiner the inner cross-validation over the labelled datasets in
    ``train`` ranks best (``_inner_taus``), each inner dataset counting its weight."""
    cands = _candidates()
    idx, taus = _inner_taus(t, train, drop, cands)
    if not idx.size:
        return cands[0]
    w = t.weight[idx]
    score = (taus * w).sum(axis=1) / w.sum()
    return cands[int(np.argmax(np.round(score, 12)))]


def _inner_taus(
    t: _Table, train: Bool, drop: Bool, cands: Sequence[tuple[str, float]]
) -> tuple[npt.NDArray[np.intp], F64]:
    """Step 5's inner cross-validation: the labelled datasets of ``train`` (none where fewer
    than 3) and (C, n) the weighted tau each combiner of ``cands`` reaches on each of them
    held out; each inner fit selects its own metric-only weights and history on its inner
    training datasets, its metrics those named outside ``drop`` and the fold."""
    idx = _dealt(t, np.flatnonzero(train & t.labelled))
    if idx.size < 3:
        return idx[:0], np.zeros((len(cands), 0))
    n_folds = min(idx.size, MAX_INNER_FOLDS)
    pred = np.zeros((len(cands), idx.size, t.target.shape[1]))
    for f in range(n_folds):
        out = idx[f::n_folds]
        inner = train & t.labelled
        inner[out] = False
        inner_drop = drop.copy()
        inner_drop[out] = True
        cols = _cols(t, inner_drop)
        w0 = _select_metrics(t, inner, cols)
        a, b, new = _normal_equations(t, inner, cols)
        for g, cand in enumerate(cands):
            w = _combine(a, b, cols, w0, cand)
            pred[g, f::n_folds] = t.feats[out] @ w[:-1] + new * w[-1]
    truth = np.nan_to_num(t.outcomes[idx], nan=0.0)
    return idx, np.array([_weighted_tau(truth, p, t.has[idx]) for p in pred])


def _dealt(t: _Table, idx: npt.NDArray[np.intp]) -> npt.NDArray[np.intp]:
    """The dataset indices ``idx`` in the order step 5 deals them into folds: by
    ``t.keys`` (their contents), then by index (equal contents give equal folds)."""
    return idx[np.argsort([t.keys[i] for i in idx], kind="stable")]


def _select_metrics(t: _Table, train: Bool, cols: Bool) -> F64:
    """Step 7: (K + 1,) metric-only weights over the metrics in ``cols`` (history last, 0): the
    equal-weight subset best on the labelled datasets in ``train``; the prior where none is."""
    prior = _prior(t, cols)
    idx = np.flatnonzero(train & t.labelled)
    covered = cols & t.scored[idx].any(axis=(0, 1)) if idx.size else np.zeros_like(cols)
    if not covered.any():
        return prior
    # candidates in tie-break order: the larger uncalibrated weight first, then name order;
    # subsets by size, so a tie goes to the smaller subset, then to the earlier candidates
    cands = sorted(
        (int(k) for k in np.flatnonzero(covered)), key=lambda k: (-prior[k], t.metrics[k])
    )
    if _n_subsets(len(cands)) <= MAX_EXHAUSTIVE_SUBSETS:
        subsets, taus = _subset_grid(t, tuple(cands))
        score = (taus[:, idx] * t.weight[idx]).sum(axis=1) / t.weight[idx].sum()
        best = subsets[int(np.argmax(np.round(score, 12)))]
    else:
        best = _forward_subsets(t, cands, idx)
    w: F64 = np.zeros(prior.size)
    w[list(best)] = 1.0 / len(best)
    uncovered = cols & ~covered
    if uncovered.any():  # a metric no training dataset scored keeps its prior share
        share = float(prior[:-1][uncovered].sum())
        w = w * (1.0 - share)
        w[:-1][uncovered] = prior[:-1][uncovered]
    return w


def _n_subsets(k: int) -> int:
    """How many subsets of at most ``MAX_SUBSET`` of ``k`` metrics there are."""
    return sum(math.comb(k, r) for r in range(1, min(MAX_SUBSET, k) + 1))


def _forward_subsets(t: _Table, cands: Sequence[int], idx: npt.NDArray[np.intp]) -> tuple[int, ...]:
    """Step 7 for many metrics: forward selection. From the empty set, add the candidate whose
    addition gives the best mean weighted tau over the training datasets ``idx`` (ties: the
    earlier candidate), up to ``MAX_SUBSET`` metrics; keep the best of the subsets visited
    (ties: the smaller). 4K subsets are scored instead of every one; the result is the
    exhaustive one's whenever the best subset grows one best metric at a time."""
    order = {k: pos for pos, k in enumerate(cands)}
    chosen: tuple[int, ...] = ()
    best, best_score = chosen, -math.inf
    for _ in range(min(MAX_SUBSET, len(cands))):
        trials = [
            tuple(sorted((*chosen, k), key=order.__getitem__)) for k in cands if k not in chosen
        ]
        taus = _subset_taus(t, trials)
        score = np.round((taus[:, idx] * t.weight[idx]).sum(axis=1) / t.weight[idx].sum(), 12)
        pick = int(np.argmax(score))
        chosen = trials[pick]
        if score[pick] > best_score:
            best, best_score = chosen, float(score[pick])
    return best


def _subset_grid(t: _Table, cands: tuple[int, ...]) -> tuple[list[tuple[int, ...]], F64]:
    """Step 7's search space over the metric indices ``cands`` (in tie-break order): every
    subset of at most ``MAX_SUBSET`` of them, by size, and (S, D) their ``_subset_taus``;
    made once per table and ``cands`` (``t.subset_grid``: the inner folds ask again and
    again)."""
    grid = t.subset_grid.get(cands)
    if grid is None:
        subsets = [
            c for r in range(1, min(MAX_SUBSET, len(cands)) + 1) for c in combinations(cands, r)
        ]
        grid = t.subset_grid[cands] = (subsets, _subset_taus(t, subsets))
    return grid


def _subset_taus(t: _Table, subsets: Sequence[tuple[int, ...]]) -> F64:
    """(S, D) the weighted tau of each subset's equal-weight mean of metric ranks on each
    labelled dataset (0 elsewhere), from ``t.subset_tau`` where it was computed before."""
    missing = [c for c in subsets if c not in t.subset_tau]
    if missing:
        lab = np.flatnonzero(t.labelled)
        grid = np.zeros((len(missing), t.feats.shape[2]))
        for row, chosen in enumerate(missing):
            grid[row, list(chosen)] = 1.0 / len(chosen)
        truth = np.nan_to_num(t.outcomes[lab], nan=0.0)
        # (chunk, D, M) predictions at a time; ``_weighted_tau`` batches its pairs itself
        chunk = max(1, PAIRWISE_BATCH // max(1, lab.size * t.feats.shape[1]))
        for start in range(0, len(missing), chunk):
            part = grid[start : start + chunk]
            tau = _weighted_tau(
                np.broadcast_to(truth, (len(part), *truth.shape)).reshape(-1, truth.shape[1]),
                np.einsum("dmk,sk->sdm", t.feats[lab], part).reshape(-1, truth.shape[1]),
                np.broadcast_to(t.has[lab], (len(part), *truth.shape)).reshape(-1, truth.shape[1]),
            ).reshape(len(part), lab.size)
            for chosen, row_tau in zip(missing[start : start + chunk], tau, strict=True):
                full = np.zeros(t.feats.shape[0])
                full[lab] = row_tau
                t.subset_tau[chosen] = full
    return np.array([t.subset_tau[c] for c in subsets])


def _fit_weights(
    t: _Table, train: Bool, drop: Bool
) -> tuple[F64, tuple[str, float] | None, F64, F64]:
    """Weights (K + 1,), the chosen combiner (step 5; None when uncalibrated), the (M,)
    history for a dataset outside ``train`` and the metric-only weights (K + 1,) (step 7,
    history 0), over the metrics some dataset outside ``drop`` (D,) names.

    Falls back to the prior when ``train`` has no labelled dataset.
    """
    cols = _cols(t, drop)
    w0 = _select_metrics(t, train, cols)
    if not (train & t.labelled).any():
        return w0, None, np.zeros(t.target.shape[1]), w0
    cand = _choose(t, train, drop)
    a, b, new = _normal_equations(t, train, cols)
    return _combine(a, b, cols, w0, cand), cand, new, w0


def _prior(t: _Table, cols: Bool) -> F64:
    """(K + 1,) the default weights over the metrics in ``cols``, history last (0)."""
    named = default_weights([k for k, c in zip(t.metrics, cols, strict=True) if c])
    return np.array([named.get(k, 0.0) for k in t.metrics] + [0.0])


# ----------------------------------------------------------------------------- public


def _check_datasets(
    datasets: Mapping[str, DatasetRecord], directions: Mapping[str, bool] | None
) -> dict[str, bool]:
    for name, rec in datasets.items():
        if not isinstance(rec, DatasetRecord):
            raise TransferabilityError(
                f"dataset {name!r} is a {type(rec).__name__}; wrap it as "
                "DatasetRecord(scores=..., outcomes=...)"
            )
        _check_scores(rec.scores, f"dataset {name!r}")
        _check_outcomes(rec.outcomes, f"dataset {name!r}")
        _check_se(rec.outcome_se, f"dataset {name!r}")
    dirs = _resolve_directions({m for r in datasets.values() for m in r.scores}, directions)
    if not dirs:
        raise TransferabilityError("no metric scores were given; pass at least one metric")
    return dirs


def _fitted(datasets: Mapping[str, DatasetRecord]) -> dict[str, DatasetRecord]:
    """What fitting reads of ``datasets``: a dataset with fewer than ``MIN_OUTCOMES`` finite
    outcomes teaches the fit only the names of its metrics (which metrics it weighs: step 7's
    prior share), so it is kept as those names alone. Scoring such a dataset (a user's new
    ranking) then leaves the fit, its fingerprint and every other dataset's recommended
    order as they were; only a new metric name or a new outcome moves them."""
    return {
        name: rec if _teaches(rec) else DatasetRecord(scores={metric: {} for metric in rec.scores})
        for name, rec in datasets.items()
    }


#: The most recent fits kept in memory by fingerprint (``fit``): a fit is a pure function of
#: its inputs, and the service asks for the same scope's fit once per board it builds
MAX_CACHED_FITS = 16
_FITS: OrderedDict[str, Fit] = OrderedDict()
_FITS_LOCK = threading.Lock()


def _key(fitted: Mapping[str, DatasetRecord], dirs: Mapping[str, bool]) -> str:
    """The fingerprint of what ``fit`` and ``evaluate_lodo`` read: ``_fitted`` datasets,
    checked directions, the method's version and parameters."""
    payload = {
        "version": VERSION,
        "params": [
            MIN_OUTCOMES,
            list(LAMBDA_GRID),
            MAX_INNER_FOLDS,
            MIN_HISTORY_VARIANCE,
            list(BLEND_SHARES),
            MAX_SUBSET,
            MAX_EXHAUSTIVE_SUBSETS,
        ],
        "directions": dict(dirs),
        "datasets": {n: _content(r) for n, r in fitted.items()},
    }
    return _fingerprint(payload)


def fit_fingerprint(
    datasets: Mapping[str, DatasetRecord], *, directions: Mapping[str, bool] | None = None
) -> str:
    """The fingerprint of these inputs: ``fit(datasets, directions=directions).fingerprint``,
    without fitting. ``evaluate_lodo`` of the same inputs reads exactly what it covers, so it
    keys a kept evaluation too. Raises as ``fit`` does."""
    return _key(_fitted(datasets), _check_datasets(datasets, directions))


def fit(
    datasets: Mapping[str, DatasetRecord],
    *,
    directions: Mapping[str, bool] | None = None,
) -> Fit:
    """Learn the combination from every dataset with >= ``MIN_OUTCOMES`` finite outcomes
    that are not all noise (``reliability`` above 0), each counting its reliability
    times the information in its order (``order_information``).

    datasets: name -> ``DatasetRecord`` (scores: metric -> model -> float, NaN = missing;
    outcomes: model -> float, may be empty); directions: metric -> higher_is_better, needed
    only where lower is better (default: the registry's declaration, else True).
    With no such dataset, returns the uncalibrated default (``default_weights``).
    Raises ``TransferabilityError`` for infinite or non-numeric values, a reserved metric
    name, or directions naming a metric no dataset has.
    """
    dirs = _check_datasets(datasets, directions)
    datasets = _fitted(datasets)
    fingerprint = _key(datasets, dirs)
    with _FITS_LOCK:
        cached = _FITS.get(fingerprint)
        if cached is not None:
            _FITS.move_to_end(fingerprint)
            return cached
    made = _fit(datasets, dirs, fingerprint)
    with _FITS_LOCK:
        _FITS[fingerprint] = made
        while len(_FITS) > MAX_CACHED_FITS:
            _FITS.popitem(last=False)
    return made


def _fit(datasets: Mapping[str, DatasetRecord], dirs: dict[str, bool], fingerprint: str) -> Fit:
    """``fit`` on checked inputs whose fingerprint is ``fingerprint``."""
    t = _table(datasets, dirs)
    w, cand, _, w_metric = _fit_weights(t, t.labelled, np.zeros(len(t.names), dtype=bool))
    calibrated = bool(t.labelled.any())
    ranks = {
        t.names[i]: MappingProxyType(
            {t.models[j]: float(t.target[i, j]) for j in np.flatnonzero(t.has[i])}
        )
        for i in np.flatnonzero(t.labelled)
    }
    names = (*t.metrics, HISTORY)
    counts = {t.names[i]: reliability(datasets[t.names[i]]) for i in np.flatnonzero(t.labelled)}
    return Fit(
        weights=MappingProxyType({k: float(x) for k, x in zip(names, w, strict=True)}),
        metrics=t.metrics,
        directions=MappingProxyType(dirs),
        history=MappingProxyType(_history(ranks)),
        outcome_ranks=MappingProxyType(ranks),
        n_datasets=len(ranks),
        regularisation=cand[1] if cand is not None and cand[0] == RIDGE else math.nan,
        history_share=cand[1] if cand is not None and cand[0] == BLEND else math.nan,
        calibrated=calibrated,
        fingerprint=fingerprint,
        metric_weights=MappingProxyType(
            {k: float(x) for k, x in zip(t.metrics, w_metric[:-1], strict=True)}
        ),
        reliability=MappingProxyType(counts),
    )


def evaluate_lodo(
    datasets: Mapping[str, DatasetRecord],
    *,
    directions: Mapping[str, bool] | None = None,
) -> Evaluation:
    """Leave-one-dataset-out figures for every metric and for the recommender.

    For each dataset with >= ``MIN_OUTCOMES`` finite outcomes, over its models with an
    outcome: ``rank_quality(outcomes, sign * scores, nan_policy="omit")`` per metric (sign -1
    where lower is better; all NaN when the metric scored none of them), and
    ``rank_quality(outcomes, combined)`` for the recommender fitted on all the *other*
    datasets, its history leaving this dataset out too: the same numbers as
    ``fit(others).recommend(scores, models=...)``, computed on one shared table; and
    ``rank_quality(outcomes, metric-only)`` for ``METRIC_ONLY``, the same fit's
    ``metric_weights`` (``recommend(..., metric_only=True)``: no history at all).
    The recommender's figures are NaN where it has nothing to rank on. Inputs as for ``fit``.
    """
    dirs = _check_datasets(datasets, directions)
    t = _table(_fitted(datasets), dirs)
    held_out = np.flatnonzero(t.labelled)
    if not held_out.size:
        noise = [n for n, r in datasets.items() if noise_only(r)]
        if noise:
            raise TransferabilityError(
                f"the outcomes of {', '.join(map(repr, sorted(noise)))} are no more spread than "
                "their standard errors (reliability 0), so no order can be measured on them and "
                "nothing can be evaluated; measure them on more held-out samples"
            )
        raise TransferabilityError(
            f"no dataset has {MIN_OUTCOMES} or more finite outcomes, so nothing can be evaluated"
        )
    methods = (*t.metrics, METRIC_ONLY, RECOMMENDED)
    per_dataset: dict[str, Mapping[str, Mapping[str, float]]] = {}
    weights: dict[str, Mapping[str, float]] = {}
    metric_weights: dict[str, Mapping[str, float]] = {}
    predictions: dict[str, Mapping[str, float]] = {}
    compared: dict[str, Mapping[str, int]] = {}
    nan_row = MappingProxyType(dict.fromkeys(FIGURES, math.nan))
    for i in held_out:
        name = t.names[i]
        ok = t.has[i]
        gt = t.outcomes[i, ok]
        rows: dict[str, Mapping[str, float]] = {}
        ranked: dict[str, int] = {}
        for metric in t.metrics:
            sign = 1.0 if dirs[metric] else -1.0
            per = datasets[name].scores.get(metric, {})
            sc = [sign * float(per.get(t.models[j], math.nan)) for j in np.flatnonzero(ok)]
            ranked[metric] = sum(math.isfinite(s) for s in sc)
            rows[metric] = (
                MappingProxyType(rank_quality(gt, sc, nan_policy="omit"))
                if ranked[metric]
                else nan_row
            )
        train = t.labelled.copy()
        train[i] = False
        drop = np.zeros(len(t.names), dtype=bool)
        drop[i] = True
        cols = _cols(t, drop)
        w, _, new, w_metric = _fit_weights(t, train, drop)
        _, _, seen = _history_arrays(t, train)
        if (t.scored[i][:, cols]).any():
            only = _snapped_sums(t.feats[i][ok] * w_metric[:-1])
            rows[METRIC_ONLY] = MappingProxyType(rank_quality(gt, only))
            ranked[METRIC_ONLY] = int(ok.sum())
        else:
            rows[METRIC_ONLY] = nan_row
            ranked[METRIC_ONLY] = 0
        if (t.scored[i][:, cols]).any() or (seen[ok] > 0).any():
            pred = _snapped_sums(np.column_stack([t.feats[i] * w[:-1], new * w[-1]])[ok])
            rows[RECOMMENDED] = MappingProxyType(rank_quality(gt, pred))
            ranked[RECOMMENDED] = int(ok.sum())
            predictions[name] = MappingProxyType(
                {t.models[j]: float(p) for j, p in zip(np.flatnonzero(ok), pred, strict=True)}
            )
        else:
            rows[RECOMMENDED] = nan_row
            ranked[RECOMMENDED] = 0
            predictions[name] = MappingProxyType({})
        per_dataset[name] = MappingProxyType(rows)
        compared[name] = MappingProxyType(ranked)
        features = (*t.metrics, HISTORY)
        weights[name] = MappingProxyType(
            {k: float(x) for k, x, c in zip(features, w, np.r_[cols, True], strict=True) if c}
        )
        metric_weights[name] = MappingProxyType(
            {k: float(x) for k, x, c in zip(t.metrics, w_metric[:-1], cols, strict=True) if c}
        )
    mean: dict[str, Mapping[str, float]] = {}
    median: dict[str, Mapping[str, float]] = {}
    count: dict[str, Mapping[str, int]] = {}
    sem: dict[str, Mapping[str, float]] = {}
    low: dict[str, Mapping[str, float]] = {}
    high: dict[str, Mapping[str, float]] = {}
    for method in methods:
        mm, md, cc, ss, lo, hi = {}, {}, {}, {}, {}, {}
        for fig in FIGURES:
            vals = np.array([per_dataset[n][method][fig] for n in per_dataset])
            vals = vals[np.isfinite(vals)]
            cc[fig] = int(vals.size)
            mm[fig] = float(vals.mean()) if vals.size else math.nan
            md[fig] = float(np.median(vals)) if vals.size else math.nan
            ss[fig] = float(vals.std(ddof=1) / math.sqrt(vals.size)) if vals.size > 1 else math.nan
            lo[fig] = float(vals.min()) if vals.size else math.nan
            hi[fig] = float(vals.max()) if vals.size else math.nan
        mean[method] = MappingProxyType(mm)
        median[method] = MappingProxyType(md)
        count[method] = MappingProxyType(cc)
        sem[method] = MappingProxyType(ss)
        low[method] = MappingProxyType(lo)
        high[method] = MappingProxyType(hi)
    return Evaluation(
        datasets=tuple(per_dataset),
        methods=methods,
        per_dataset=MappingProxyType(per_dataset),
        mean=MappingProxyType(mean),
        median=MappingProxyType(median),
        count=MappingProxyType(count),
        weights=MappingProxyType(weights),
        predictions=MappingProxyType(predictions),
        metric_weights=MappingProxyType(metric_weights),
        sem=MappingProxyType(sem),
        low=MappingProxyType(low),
        high=MappingProxyType(high),
        compared=MappingProxyType(compared),
        coverage=MappingProxyType(
            {
                method: sum(compared[n][method] for n in compared)
                / sum(int(t.has[i].sum()) for i in held_out)
                for method in methods
            }
        ),
    )


def table_rows(text: str) -> list[dict[str, str]]:
    """The rows of a wide table's text, for ``datasets_from_rows``: comma-, tab- or
    semicolon-separated (whichever splits the header line into the most columns), a
    leading byte-order mark (as spreadsheet programs write one) dropped, and the header's
    names stripped of surrounding spaces.

    Raises ``TransferabilityError`` where a cell would be lost or misread unseen: two columns
    of the same name (one would hide the other), a row with more non-empty cells than the
    header names, or a value in a column without a name (a trailing empty column, as
    spreadsheets write one, is fine)."""
    text = text.removeprefix("\ufeff")
    header = text.split("\n", 1)[0]
    delimiter = max((",", "\t", ";"), key=lambda d: len(next(csv.reader([header], delimiter=d))))
    reader = csv.reader(io.StringIO(text), delimiter=delimiter)
    names = [c.strip() for c in next(reader, [])]
    seen: dict[str, int] = {}
    for i, name in enumerate(names):
        if name and name in seen:
            raise TransferabilityError(
                f"the table has two columns named {name!r} (columns {seen[name] + 1} and "
                f"{i + 1}): one would hide the other; rename one, or remove the one that "
                "should not count"
            )
        seen[name] = i
    rows = []
    for n, row in enumerate(reader, start=1):
        if not any(c.strip() for c in row):
            continue
        if any(c.strip() for c in row[len(names) :]):
            raise TransferabilityError(
                f"row {n} of the table (after its header) has {len(row)} cells but the header "
                f"names {len(names)} columns: give the extra cells a column name, or remove them"
            )
        unnamed = [i for i, c in enumerate(row[: len(names)]) if c.strip() and not names[i]]
        if unnamed:
            raise TransferabilityError(
                f"column {unnamed[0] + 1} of the table has no name in the header but holds "
                f"{row[unnamed[0]].strip()!r} in row {n}: name the column, or remove it"
            )
        rows.append(dict(zip(names, row, strict=False)))
    return rows


#: cells a table may write for a missing value (``datasets_from_rows``; compared stripped and
#: in lower case)
MISSING_CELLS = frozenset({"", "-", "\u2013", "\u2014", "n/a", "na", "nan", "none", "null", "?"})


#: what each column ``datasets_from_rows`` needs holds, as its errors say it
_COLUMN_ROLES = {
    "dataset": "naming each row's dataset",
    "model": "naming each row's model",
    "outcome": "of outcomes",
}


def table_column(columns: Sequence[str], wanted: str, role: str) -> str:
    """The column of ``columns`` that ``wanted`` names for ``role`` (a key of
    ``_COLUMN_ROLES``): itself, else the one column equal to it ignoring case and punctuation
    ("Dataset" or "DATASET" for ``dataset``; two such columns are ambiguous). Raises
    ``MissingColumn`` listing the table's columns."""
    if wanted in columns:
        return wanted
    alike = [c for c in columns if _canonical(c) == _canonical(wanted)]
    if len(alike) == 1:
        return alike[0]
    listed = ", ".join(repr(c) for c in columns)
    what = f"the table has no column {wanted!r} {_COLUMN_ROLES[role]}"
    if alike:
        raise MissingColumn(
            f"{what}, and {len(alike)} columns that differ from it only in case or punctuation "
            f"({', '.join(repr(c) for c in alike)}): name one of them exactly; its columns "
            f"are: {listed}",
            role=role, wanted=wanted,
        )  # fmt: skip
    raise MissingColumn(f"{what}; its columns are: {listed}", role=role, wanted=wanted)


def datasets_from_rows(
    rows: Iterable[Mapping[str, Any]],
    *,
    outcome: str,
    dataset_column: str = "dataset",
    model_column: str = "model",
    se_column: str | None = None,
) -> dict[str, DatasetRecord]:
    """Parse a wide table (one row per (dataset, model)) into ``DatasetRecord``s.

    rows: mappings column -> value (e.g. ``csv.DictReader``); outcome: the outcome column;
    dataset_column, model_column: the columns naming each row's dataset and model (each
    column named as written or ignoring case and punctuation: ``table_column``);
    se_column (default ``OUTCOME_se``, used when the table has it): the standard error of
    each outcome (``DatasetRecord.outcome_se``; empty: not known). Every other column whose
    values are numbers is a metric; a column with no number at all (a note, an architecture)
    is ignored. A cell that is empty or one of ``MISSING_CELLS`` (``-``, ``N/A``, ``nan``, as
    published tables write a missing value) is missing; a number may end in ``%`` (read as
    written: "85.3%" is 85.3). Repeated (dataset, model) rows are averaged per column over
    their finite values (a standard error: the root of the mean of the squares, over the
    repeats, divided by the root of their number: the error of their mean).

    Raises ``TransferabilityError`` naming the column, the cell and its row when a column
    mixes numbers with other text (a metric would otherwise be dropped unseen), and when the
    outcome column has no number.
    """
    rows = list(rows)
    if not rows:
        raise TransferabilityError("the table has no rows")
    columns = list(dict.fromkeys(c for r in rows for c in r))
    dataset_column = table_column(columns, dataset_column, "dataset")
    model_column = table_column(columns, model_column, "model")
    outcome = table_column(columns, outcome, "outcome")

    def number(v: Any) -> float | None:
        if v is None:
            return math.nan
        text = str(v).strip()
        if text.lower() in MISSING_CELLS:
            return math.nan
        try:
            return float(text[:-1] if text.endswith("%") else text)
        except ValueError:
            return None

    numeric = []
    for c in columns:
        if c in (dataset_column, model_column):
            continue
        values = [number(r.get(c)) for r in rows]
        bad = [r for r, v in zip(rows, values, strict=True) if v is None]
        given = any(v is not None and not math.isnan(v) for v in values)
        if bad and (given or c == outcome):
            r = bad[0]
            plus_minus = re.fullmatch(
                r"\s*[-+.\d eE]+\s*(\u00b1|\+/-|\+-)\s*[.\d eE]+%?\s*", str(r.get(c))
            )
            fix = (
                f"write the mean in {c!r} and its standard error in a column {c + '_se'!r}"
                if plus_minus and c == outcome
                else "write a missing value as an empty cell, - or N/A"
                + ("" if c == outcome else ", or leave the column out")
            )
            raise TransferabilityError(
                f"column {c!r} has a non-numeric value {r.get(c)!r}"
                f"{' among numbers' if given else ''} (dataset {r.get(dataset_column)!r}, "
                f"model {r.get(model_column)!r}): {fix}"
            )
        if not bad:
            numeric.append(c)
    if not any(
        v is not None and math.isfinite(v) for v in map(number, (r.get(outcome) for r in rows))
    ):
        raise TransferabilityError(f"the outcome column {outcome!r} has no value")
    if se_column is None:  # optional: OUTCOME_se as the table writes it, if it has one
        wanted = _canonical(f"{outcome}_se")
        se_column = next((c for c in columns if _canonical(c) == wanted), f"{outcome}_se")
    if se_column in columns and se_column not in numeric:
        raise TransferabilityError(
            f"the standard-error column {se_column!r} has non-numeric values"
        )
    sums: dict[tuple[str, str, str], list[float]] = {}
    names: list[str] = []
    for i, r in enumerate(rows):
        # names as written, without the spaces around them: "resnet50 " is resnet50
        key = (str(r.get(dataset_column) or "").strip(), str(r.get(model_column) or "").strip())
        for column, value in zip((dataset_column, model_column), key, strict=True):
            if not value:
                raise TransferabilityError(
                    f"row {i + 1} of the table (after its header) has no {column!r}; every "
                    f"row names its {dataset_column} and {model_column}"
                )
        names.append(key[0])
        for c in numeric:
            v = number(r.get(c))
            if v is not None and math.isfinite(v):
                sums.setdefault((*key, c), []).append(v)
    out: dict[str, DatasetRecord] = {}
    for name in dict.fromkeys(names):
        scores: dict[str, dict[str, float]] = {}
        outcomes: dict[str, float] = {}
        errors: dict[str, float] = {}
        for (d, m, c), vals in sums.items():
            if d != name:
                continue
            if c == outcome:
                outcomes[m] = float(np.mean(vals))
            elif c == se_column:
                _check_se({m: min(vals)}, f"dataset {name!r}")
                errors[m] = float(np.sqrt(np.mean(np.square(vals)) / len(vals)))
            else:
                scores.setdefault(c, {})[m] = float(np.mean(vals))
        errors = {m: v for m, v in errors.items() if m in outcomes}
        out[name] = DatasetRecord(scores=scores, outcomes=outcomes, outcome_se=errors)
    return out
