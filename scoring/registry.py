"""Which metrics exist, what each needs, and one entry point that runs several of them.

A metric is its module, its entry here and its test. Each entry declares the metric's name, its
public function, a version (bumped whenever its numbers change, so stored scores can be
recomputed), what it needs (features, source probabilities, or both), whether higher is better,
which target kinds it supports, and the properties its maths guarantees (invariances, the range
of its values). The registry-wide tests and the benchmark read those declarations, so they cover
a new entry without a list of names of their own. ``compute`` validates the inputs once and runs
the requested metrics on one shared ``FeatureStats``, so the Gram matrix and its
eigendecompositions are formed once for LogME, H-score, shrinkage H-score, TransRate and SFDA.

Each spec also states ``degenerate_when``: the regime in which the metric's value would be the
same for any features (it then raises ``DegenerateScore``, which ``compute_detailed`` reports
in ``errors`` and names in ``degenerate``), or why it has none.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from scoring._context import FeatureStats
from scoring._validation import Labels, check_features, check_labels, check_probs, check_targets
from scoring.errors import DegenerateScore, TransferabilityError
from scoring.etran import _etran_energy, _etran_lda, etran_energy, etran_lda
from scoring.gbc import _gbc, gbc
from scoring.hscore import _hscore, _hscore_shrinkage, hscore, hscore_shrinkage
from scoring.knn import _knn_accuracy, _knn_regression, knn_accuracy, knn_regression
from scoring.leep import expected_log_prediction, leep
from scoring.linear_probe import (
    _linear_probe,
    _linear_probe_r2,
    linear_probe_accuracy,
    linear_probe_r2,
)
from scoring.logme import _logme_classification, _logme_regression, logme, logme_regression
from scoring.nce import _nce, nce
from scoring.ncti import ncti_ncc, ncti_parts, ncti_seli, ncti_vc
from scoring.nleep import _nleep, nleep
from scoring.pactran import _pactran_gauss, pactran_gauss
from scoring.parc import _parc, parc
from scoring.sfda import _sfda, sfda
from scoring.transrate import _transrate, transrate

Need = Literal["features", "probs"]
Target = Literal["classification", "regression"]
#: What a metric's value does not depend on: the order of the samples, the names of the
#: classes, duplicating every sample, a common offset added to the features, or a positive
#: factor they are scaled by.
Invariance = Literal["sample_order", "label_names", "duplication", "offset", "scale"]


@dataclass
class Inputs:
    """Validated inputs shared by the metrics of one ``compute`` call."""

    labels: Labels | None = None
    targets: np.ndarray[Any, Any] | None = None
    stats: FeatureStats | None = None
    probs: np.ndarray[Any, Any] | None = None

    def need_stats(self) -> FeatureStats:
        assert self.stats is not None
        return self.stats

    def need_labels(self) -> Labels:
        assert self.labels is not None
        return self.labels


@dataclass(frozen=True)
class MetricSpec:
    """A metric's declaration. ``run`` computes it from validated, shared inputs; ``function``
    is the public ``f(x, labels, **options) -> float`` it equals, with x the (N, D) features,
    or the (N, Z) source probabilities for a metric that needs only those.

    The rest states what the maths guarantees, for the registry-wide tests to check:
    ``invariances``; ``bounds``, the closed range its values lie in; ``slow`` for a metric
    that fits a model per call (the benchmark and the many-example property tests leave it
    out); ``reliable`` for one the recommender's uncalibrated default averages.
    """

    name: str
    version: int
    needs: frozenset[Need]
    higher_is_better: bool
    targets: frozenset[Target]
    reference: str
    run: Callable[[Inputs, Mapping[str, Any]], float] = field(repr=False)
    function: Callable[..., float] = field(repr=False)
    min_per_class: int = 1
    degenerate_when: str = ""
    invariances: frozenset[Invariance] = frozenset()
    bounds: tuple[float, float] = (-math.inf, math.inf)
    slow: bool = False
    reliable: bool = False

    @property
    def can_degenerate(self) -> bool:
        """Whether some inputs put it in a regime where it raises ``DegenerateScore``."""
        return not self.degenerate_when.startswith("never")


def _spec(
    name: str,
    function: Callable[..., float],
    run: Callable[[Inputs, Mapping[str, Any]], float],
    needs: Iterable[Need],
    reference: str,
    *,
    version: int = 1,
    targets: Iterable[Target] = ("classification",),
    min_per_class: int = 1,
    degenerate_when: str,
    invariances: Iterable[Invariance] = (),
    bounds: tuple[float, float] = (-math.inf, math.inf),
    slow: bool = False,
    reliable: bool = False,
) -> MetricSpec:
    return MetricSpec(
        name=name,
        version=version,
        needs=frozenset(needs),
        higher_is_better=True,
        targets=frozenset(targets),
        reference=reference,
        run=run,
        function=function,
        min_per_class=min_per_class,
        degenerate_when=degenerate_when,
        invariances=frozenset(invariances),
        bounds=bounds,
        slow=slow,
        reliable=reliable,
    )


def _run_logme_regression(inp: Inputs, _: Mapping[str, Any]) -> float:
    assert inp.targets is not None
    return _logme_regression(inp.need_stats(), inp.targets).score


def _with_x(fn: Callable[..., float]) -> Callable[[Inputs, Mapping[str, Any]], float]:
    """Adapt a (features, labels, **options) helper to the shared inputs."""

    def run(inp: Inputs, opts: Mapping[str, Any]) -> float:
        return fn(inp.need_stats().x, inp.need_labels(), **opts)

    return run


def _with_targets(fn: Callable[..., float]) -> Callable[[Inputs, Mapping[str, Any]], float]:
    """Adapt a (features, targets, **options) helper of real-valued targets."""

    def run(inp: Inputs, opts: Mapping[str, Any]) -> float:
        assert inp.targets is not None
        return fn(inp.need_stats().x, inp.targets, **opts)

    return run


def _with_probs(fn: Callable[..., float]) -> Callable[[Inputs, Mapping[str, Any]], float]:
    def run(inp: Inputs, opts: Mapping[str, Any]) -> float:
        assert inp.probs is not None
        return fn(inp.probs, inp.need_labels(), **opts)

    return run


_NEVER_LOGME = "never: the evidence is maximised over the prior's strength, for any N and D"
#: Deterministic functions of the samples as a set, whatever the classes are called.
_EXCHANGEABLE: tuple[Invariance, ...] = ("sample_order", "label_names")
#: Defined by empirical distributions alone (means, covariances, joint frequencies).
_DISTRIBUTIONAL: tuple[Invariance, ...] = (*_EXCHANGEABLE, "duplication")
_NON_POSITIVE: tuple[float, float] = (-math.inf, 0.0)
_FRACTION: tuple[float, float] = (0.0, 1.0)
_AT_MOST_ONE: tuple[float, float] = (-math.inf, 1.0)
_NCTI_DEGENERATE = (
    "its LDA unshrunk (the 32 leading variances sum past 23) with class means off the "
    "within-class span (N - C < k, k <= 64 components): perfect in-sample separation"
)
_CONSTANT_TARGET = "a target column constant on the scored samples: R^2 is undefined"

REGISTRY: dict[str, MetricSpec] = {
    s.name: s
    for s in (
        _spec(
            "logme",
            logme,
            lambda inp, _: _logme_classification(inp.need_stats()).score,
            ["features"],
            "You et al., ICML 2021",
            version=2,  # 2: log|A| over all D eigenvalues (1 matched the thin-SVD shortcut)
            degenerate_when=_NEVER_LOGME,
            invariances=[*_EXCHANGEABLE, "scale"],
            reliable=True,
        ),
        _spec(
            "logme_regression",
            logme_regression,
            _run_logme_regression,
            ["features"],
            "You et al., ICML 2021",
            version=2,
            targets=["regression"],
            degenerate_when=_NEVER_LOGME,
            reliable=True,
        ),
        _spec(
            "leep",
            leep,
            _with_probs(lambda p, lab: expected_log_prediction(p, lab)),
            ["probs"],
            "Nguyen et al., ICML 2020",
            degenerate_when="never: the source probabilities are the model's own, not fitted here",
            invariances=_DISTRIBUTIONAL,
            bounds=_NON_POSITIVE,
        ),
        _spec(
            "nce",
            nce,
            _with_probs(lambda p, lab: _nce(p.argmax(axis=1), p.shape[1], lab)),
            ["probs"],
            "Tran et al., ICCV 2019",
            degenerate_when="never: the source labels are the model's own, not fitted here",
            invariances=_DISTRIBUTIONAL,
            bounds=_NON_POSITIVE,
        ),
        _spec(
            "nleep",
            nleep,
            _with_x(_nleep),
            ["features"],
            "Li et al., CVPR 2021",
            degenerate_when="5 C >= N: a mixture component per sample, the labels alone decide",
            slow=True,
            reliable=True,
        ),
        _spec(
            "hscore",
            hscore,
            lambda inp, _: _hscore(inp.need_stats()),
            ["features"],
            "Bao et al., ICIP 2019",
            degenerate_when="N - C < D (class means off the within-class span): C - 1 for all",
            invariances=[*_DISTRIBUTIONAL, "offset", "scale"],
        ),
        _spec(
            "hscore_shrinkage",
            hscore_shrinkage,
            lambda inp, _: _hscore_shrinkage(inp.need_stats()),
            ["features"],
            "Ibrahim et al., ICLR 2023",
            degenerate_when="never: the Ledoit-Wolf shrinkage keeps the covariance invertible",
            invariances=[*_EXCHANGEABLE, "offset", "scale"],
            reliable=True,
        ),
        _spec(
            "transrate",
            transrate,
            lambda inp, o: _transrate(inp.need_stats(), **o),
            ["features"],
            "Huang et al., ICML 2022",
            degenerate_when="never: the coding rates are finite and vary with the features",
            invariances=[*_DISTRIBUTIONAL, "offset"],
            reliable=True,
        ),
        _spec(
            "gbc",
            gbc,
            lambda inp, o: _gbc(inp.need_stats(), **o),
            ["features"],
            "Pandy et al., CVPR 2022",
            min_per_class=2,
            degenerate_when="|GBC| <= eps C (C - 1): zero at working precision, no order",
            invariances=[*_DISTRIBUTIONAL, "offset", "scale"],
            bounds=_NON_POSITIVE,
            reliable=True,
        ),
        _spec(
            "sfda",
            sfda,
            lambda inp, _: _sfda(inp.need_stats()),
            ["features"],
            "Shao et al., ECCV 2022",
            degenerate_when="N - C < D, or within 1e-9 of 1: saturated near 1 for any features",
            invariances=[*_DISTRIBUTIONAL, "offset"],
            bounds=_FRACTION,
            reliable=True,
        ),
        _spec(
            "knn",
            knn_accuracy,
            _with_x(_knn_accuracy),
            ["features"],
            "leave-one-out k-NN accuracy",
            min_per_class=2,
            degenerate_when="never: a held-out accuracy, not fitted to the samples it scores",
            invariances=["scale"],
            bounds=_FRACTION,
        ),
        _spec(
            "linear_probe",
            linear_probe_accuracy,
            _with_x(_linear_probe),
            ["features"],
            "Kornblith et al., CVPR 2019",
            min_per_class=2,
            degenerate_when="never: a cross-validated accuracy on held-out folds",
            bounds=_FRACTION,
            slow=True,
        ),
        _spec(
            "etran_energy",
            etran_energy,
            lambda inp, o: _etran_energy(inp.need_stats(), **o),
            ["features"],
            "Gholami et al., ICCV 2023",
            degenerate_when="never: a label-free statistic of the features, finite for any",
            invariances=_EXCHANGEABLE,
        ),
        _spec(
            "etran_lda",
            etran_lda,
            lambda inp, _: _etran_lda(inp.need_stats()),
            ["features"],
            "Gholami et al., ICCV 2023",
            degenerate_when="within 1e-9 of 1: every sample given its own class with certainty",
            invariances=[*_DISTRIBUTIONAL, "offset"],
            bounds=_FRACTION,
        ),
        _spec(
            "ncti_seli",
            ncti_seli,
            lambda inp, _: ncti_parts(inp.need_stats()).seli,
            ["features"],
            "Wang et al., ICCV 2023",
            degenerate_when=_NCTI_DEGENERATE,
            invariances=[*_EXCHANGEABLE, "offset"],
            bounds=(0.0, math.inf),
        ),
        _spec(
            "ncti_ncc",
            ncti_ncc,
            lambda inp, _: ncti_parts(inp.need_stats()).ncc,
            ["features"],
            "Wang et al., ICCV 2023",
            degenerate_when=_NCTI_DEGENERATE,
            invariances=[*_EXCHANGEABLE, "offset"],
            bounds=_FRACTION,
        ),
        _spec(
            "ncti_vc",
            ncti_vc,
            lambda inp, _: ncti_parts(inp.need_stats()).vc,
            ["features"],
            "Wang et al., ICCV 2023",
            degenerate_when=_NCTI_DEGENERATE,
            invariances=[*_EXCHANGEABLE, "offset"],
        ),
        _spec(
            "parc",
            parc,
            lambda inp, o: _parc(inp.need_stats(), **o),
            ["features"],
            "Bolya et al., NeurIPS 2021",
            degenerate_when="no two samples share a class, or every pair is equally dissimilar",
            invariances=["label_names", "offset", "scale"],
            bounds=(-100.0, 100.0),
        ),
        _spec(
            "pactran_gauss",
            pactran_gauss,
            lambda inp, o: _pactran_gauss(inp.need_stats(), **o),
            ["features"],
            "Ding et al., ECCV 2022",
            degenerate_when="never: the L2 prior keeps the fitted head and the bound finite",
            invariances=[*_EXCHANGEABLE, "offset"],
            bounds=_NON_POSITIVE,
            slow=True,
        ),
        _spec(
            "knn_regression",
            knn_regression,
            _with_targets(_knn_regression),
            ["features"],
            "leave-one-out k-NN regression R^2",
            targets=["regression"],
            degenerate_when=_CONSTANT_TARGET,
            invariances=["scale"],
            bounds=_AT_MOST_ONE,
        ),
        _spec(
            "linear_probe_r2",
            linear_probe_r2,
            _with_targets(_linear_probe_r2),
            ["features"],
            "k-fold cross-validated ridge regression R^2",
            targets=["regression"],
            degenerate_when=_CONSTANT_TARGET,
            bounds=_AT_MOST_ONE,
            slow=True,
        ),
    )
}

#: Metrics a ranking uses when none are named (leep only where the model has a head).
DEFAULT_METRICS: tuple[str, ...] = ("logme", "leep", "hscore_shrinkage", "linear_probe")


def target_kind(value: str) -> Target:
    """``value`` as a target kind, or an error naming the kinds (for strings read from files
    or a database)."""
    if value == "classification":
        return "classification"
    if value == "regression":
        return "regression"
    raise TransferabilityError(f"unknown target kind {value!r}; use classification or regression")


def default_metrics(target: Target = "classification") -> list[str]:
    """The metrics a ranking uses when none are named: ``DEFAULT_METRICS`` for class labels,
    every metric that supports the target otherwise."""
    if target == "classification":
        return list(DEFAULT_METRICS)
    return [n for n, spec in REGISTRY.items() if target in spec.targets]


def get(name: str) -> MetricSpec:
    """The spec of one metric, or an error listing the known names."""
    try:
        return REGISTRY[name]
    except KeyError:
        raise TransferabilityError(
            f"unknown metric {name!r}; known metrics: {', '.join(sorted(REGISTRY))}"
        ) from None


def applicable(
    metrics: Iterable[str] | None = None,
    *,
    has_features: bool,
    has_probs: bool,
    target: Target = "classification",
) -> list[str]:
    """The metrics among ``metrics`` (default: all) whose needs the given inputs meet."""
    have: set[Need] = set()
    if has_features:
        have.add("features")
    if has_probs:
        have.add("probs")
    names = list(REGISTRY) if metrics is None else list(metrics)
    return [n for n in names if get(n).needs <= have and target in get(n).targets]


@dataclass(frozen=True)
class Scores:
    """Results of ``compute_detailed``: a value per metric that ran, a message per one that
    could not (what is wrong and what to do); ``degenerate`` names the metrics among
    ``errors`` that ran but whose value would have said nothing (``DegenerateScore``)."""

    values: dict[str, float]
    errors: dict[str, str]
    degenerate: frozenset[str] = frozenset()


def compute_detailed(
    metrics: Sequence[str],
    labels: Any,
    *,
    features: Any = None,
    probs: Any = None,
    target: Target = "classification",
    device: str = "auto",
    options: Mapping[str, Mapping[str, Any]] | None = None,
) -> Scores:
    """Run several metrics on the same inputs, sharing their common work.

    features: (N, D) or None; probs: (N, Z) source-class probabilities or None;
    labels: (N,) class labels (classification) or (N,) / (N, K) real targets (regression).
    Bad inputs shared by every metric (NaN features, mismatched lengths) raise
    ``TransferabilityError``; a problem specific to one metric (a class too small for it, a
    missing input) is reported in ``errors`` and the other metrics still run.
    """
    if not metrics:
        raise TransferabilityError("no metrics were asked for; name at least one")
    specs = [get(m) for m in dict.fromkeys(metrics)]
    options = options or {}
    for unknown in set(options) - {s.name for s in specs}:
        raise TransferabilityError(f"options were given for {unknown!r}, which is not computed")
    x = check_features(features) if features is not None else None
    p = check_probs(probs) if probs is not None else None
    n = x.shape[0] if x is not None else p.shape[0] if p is not None else None
    if n is None:
        raise TransferabilityError("pass features, probs or both")
    if x is not None and p is not None and p.shape[0] != n:
        raise TransferabilityError(
            f"features have {n} rows but probs have {p.shape[0]}; both describe the same samples"
        )
    inp = Inputs(probs=p)
    if target == "regression":
        inp.targets = check_targets(labels, n)
    elif target == "classification":
        inp.labels = check_labels(labels, n)
    else:
        raise TransferabilityError(
            f"unknown target kind {target!r}; use classification or regression"
        )
    if x is not None:
        inp.stats = FeatureStats(x, inp.labels, device)

    values: dict[str, float] = {}
    errors: dict[str, str] = {}
    degenerate: set[str] = set()
    for spec in specs:
        missing = sorted(
            spec.needs - {k for k, v in (("features", x), ("probs", p)) if v is not None}
        )
        if target not in spec.targets:
            errors[spec.name] = f"{spec.name} does not support {target} targets"
            continue
        if missing:
            errors[spec.name] = f"{spec.name} needs {' and '.join(missing)}, which were not given"
            continue
        try:
            if inp.labels is not None and spec.min_per_class > 1:
                check_labels(labels, n, spec.min_per_class, spec.name)
            value = float(spec.run(inp, options.get(spec.name, {})))
        except TransferabilityError as exc:
            errors[spec.name] = str(exc)
            if isinstance(exc, DegenerateScore):
                degenerate.add(spec.name)
            continue
        # The one rule for a non-finite result, for every caller: it is not a score.
        if math.isfinite(value):
            values[spec.name] = value
        else:
            errors[spec.name] = (
                f"{spec.name} gave a non-finite value ({value}) on these inputs; "
                "check the features for near-duplicate or degenerate columns"
            )
    return Scores(values, errors, frozenset(degenerate))


def compute(
    metrics: Sequence[str],
    labels: Any,
    *,
    features: Any = None,
    probs: Any = None,
    target: Target = "classification",
    device: str = "auto",
    options: Mapping[str, Mapping[str, Any]] | None = None,
) -> dict[str, float]:
    """Like ``compute_detailed``, but any metric that cannot run raises TransferabilityError
    (``DegenerateScore`` where its value would have said nothing)."""
    result = compute_detailed(
        metrics,
        labels,
        features=features,
        probs=probs,
        target=target,
        device=device,
        options=options,
    )
    if result.errors:
        name, message = next(iter(result.errors.items()))
        error = DegenerateScore if name in result.degenerate else TransferabilityError
        raise error(message if message.startswith(name) else f"{name}: {message}")
    return result.values


def canonical(name: str) -> str:
    """A name compared ignoring case and punctuation: ``H-Score`` is ``hscore``."""
    return re.sub(r"[^0-9a-z]", "", name.lower())


def metric_name(name: str) -> str:
    """The registry name ``name`` stands for, ignoring case and punctuation (``LogME``,
    ``H-Score_Shrinkage``), the rule a ranking's metrics and a table's columns follow alike;
    otherwise ``name`` as written (stripped): an external score, or a name to refuse."""
    return _CANONICAL.get(canonical(name), name.strip())


_CANONICAL = {canonical(n): n for n in REGISTRY}
