"""Benchmark of the scoring library: how long each transferability metric takes, and LogME
against a plain one-class-at-a-time implementation.

What it measures, for every (N samples, D feature dimensions, C classes) point of a grid, on
synthetic but structured data (class-dependent Gaussian means in a low-dimensional latent
space, mapped to D dimensions, plus noise; float32 features, int labels; for LEEP and NCE,
(N, 1000) float64 source probabilities, a softmax of a random linear map of the features):

* seconds for each metric run on its own through its public function (``scoring.logme``,
  ``scoring.leep``, ...), each one validating its inputs and forming its own Gram matrix;
* seconds for ``scoring.compute`` of all the chosen metrics together (shared work), against
  the sum of the separate runs;
* seconds for a plain LogME in the style of the widely used reference implementation: the
  truncated SVD basis U: (N, k) formed once (eigendecomposition of F^T F in float64,
  U = F V / s), then MacKay's fixed point run for one class at a time over that basis, with
  the same maths as ``scoring.logme.fit_evidence``. Its score must agree with ``scoring.logme``
  to 1e-8 (absolute, per sample); the largest difference is printed for every point.

Each time is the best of ``--repeat`` runs. Where torch sees a GPU every point is also run
with ``device="cuda"`` (metrics without a device option run on the CPU there too).
Results go to ``OUT/scoring.json`` (with the machine's description), ``OUT/scoring.png`` and,
with a GPU, ``OUT/scoring_cuda.png``; a table and PASS/FAIL against the targets at
N=50,000, D=2,048, C=100 are printed:

* LogME at least 5x faster than the plain baseline, and equal to it within 1e-8;
* every metric but the linear probe and NLEEP under 10 s on its own;
* all the metrics together (``scoring.compute``) faster than the sum of the separate runs.

Run from the repository root:

    .venv/bin/python -m bench.scoring --grid quick            # smoke run, under a minute
    .venv/bin/python bench/scoring.py --grid quick            # the same
    .venv/bin/python -m bench.scoring --grid full             # < 15 minutes on 2 idle CPU cores
    .venv/bin/python -m bench.scoring --metrics logme,hscore --repeat 3 --out /tmp/bench
    .venv/bin/python -m bench.scoring --grid full --with-slow # adds linear_probe and nleep
    .venv/bin/python -m bench.scoring --threads 1             # on a machine busy with other work
    .venv/bin/python -m bench.scoring --grid new --name scoring_new \
        --metrics etran_energy,etran_lda,ncti_seli,ncti_ncc,ncti_vc,parc,pactran_gauss

On a machine where other processes occupy the cores, multi-threaded BLAS waits on them and
small eigendecompositions get tens of times slower; the load average is printed and recorded,
and ``--threads 1`` gives stable (single-core) numbers there. The exit status is 1 when LogME
and the baseline disagree (> 1e-8) at any point, else 0 (the targets are reported, not enforced).

Grids. quick: N in {1000, 5000}, D = 256, C = 10. new: the one point N=20,000, D=1,024,
C=100 at which the metrics of issue 23 are timed (``--name`` keeps their results apart).
regression: N in {2000, 20,000}, D = 1,024, and C = 1 or 10 real target columns (a random
linear map of the latent point plus noise) scored by the metrics for real targets
(``logme_regression``, ``knn_regression``, ``linear_probe_r2``):

    .venv/bin/python -m bench.scoring --grid regression --name scoring_regression \
        --metrics knn_regression,linear_probe_r2 full: N in {1000, 10000, 50000},
D in {256, 2048}, C in {10, 100}, all 12 points; none is redundant (N <= D exercises the
N x N kernel path, N > D the D x D Gram path, and C changes the per-class work of LogME's
baseline, TransRate, GBC and SFDA). The cost is dominated by the two N=50,000, D=2,048
points (a Gram matrix there is ~2e11 flops, formed once per metric in the separate runs),
so ``--repeat`` defaults to 3 for the quick grid and 1 for the full one. The slow baselines
(linear probe: five logistic regressions; NLEEP: a Gaussian mixture of 5C components) are
left out unless ``--with-slow`` or ``--metrics`` names them; with them the full grid takes
far longer than 15 minutes.
"""

from __future__ import annotations

import argparse
import functools
import gc
import inspect
import json
import math
import os
import platform
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a file: this file's folder would shadow `scoring`
    _here = Path(__file__).resolve().parent
    sys.path[:] = [str(_here.parent)] + [p for p in sys.path if Path(p or ".").resolve() != _here]

import numpy as np
import numpy.typing as npt

import scoring
from scoring import _linalg
from scoring._context import FeatureStats
from scoring._validation import check_features, check_labels
from scoring.logme import _logme_classification

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]

LOG_2PI = float(np.log(2.0 * np.pi))
EPS = float(np.finfo(np.float64).eps)
_TINY = 1e-300  # the same guard as scoring.logme
N_SOURCE = 1000  # Z: source classes of the synthetic source model (LEEP, NCE)
LATENT = 64  # dimension of the latent space the class means live in
AGREEMENT_TOL = 1e-8

#: Metrics that fit a model per call, left out unless asked for (``--with-slow``).
SLOW: tuple[str, ...] = tuple(n for n, spec in scoring.REGISTRY.items() if spec.slow)
GRIDS: dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]] = {
    "quick": ((1000, 5000), (256,), (10,)),
    "full": ((1000, 10000, 50000), (256, 2048), (10, 100)),
    "target": ((50_000,), (2048,), (100,)),
    # The metrics added for issue 23 (ETran, NCTI, PARC, PACTran) are timed at this point.
    "new": ((20_000,), (1024,), (100,)),
    # Regression targets: here C is the number of real target columns (see make_data).
    "regression": ((2000, 20_000), (1024,), (1, 10)),
}
#: the grids whose points have real targets instead of classes
REGRESSION_GRIDS = frozenset({"regression"})
TARGET_POINT = (50_000, 2048, 100)
TARGET_SPEEDUP = 5.0
TARGET_SECONDS = 10.0


# --------------------------------------------------------------------------------------------
# Synthetic data


@dataclass(frozen=True)
class Data:
    features: F32  # (N, D)
    labels: I64  # (N,) in 0..C-1, every class with at least N // C samples
    probs: F64 | None  # (N, Z) rows summing to 1, or None when no metric needs them
    #: regression grids: real targets, (N,) for one column, else (N, C)
    targets: F64 | None = None

    @property
    def target(self) -> scoring.Target:
        return "classification" if self.targets is None else "regression"

    @property
    def y(self) -> Any:
        """What a metric is scored against: the class labels, or the real targets."""
        return self.labels if self.targets is None else self.targets


def make_data(
    n: int, d: int, c: int, need_probs: bool, seed: int = 0, regression: bool = False
) -> Data:
    """Class-dependent Gaussian means in a LATENT-dimensional space, mapped linearly to D
    dimensions, plus isotropic noise; balanced classes in random order. ``regression``: also
    C real target columns, each a random linear function of the latent point plus noise of
    half its spread (one column: shape (N,))."""
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.arange(n, dtype=np.int64) % c)
    r = min(LATENT, d)
    means = rng.standard_normal((c, r), dtype=np.float32)
    latent = means[labels] + rng.standard_normal((n, r), dtype=np.float32)
    mixing = rng.standard_normal((r, d), dtype=np.float32) / np.float32(math.sqrt(r))
    x = latent @ mixing
    x += np.float32(0.5) * rng.standard_normal((n, d), dtype=np.float32)
    probs = None
    if need_probs:
        w = rng.standard_normal((d, N_SOURCE), dtype=np.float32)
        logits = (x @ w).astype(np.float64)
        logits *= 3.0 / max(float(logits.std()), _TINY)  # a peaked but not one-hot softmax
        logits -= logits.max(axis=1, keepdims=True)
        np.exp(logits, out=logits)
        logits /= logits.sum(axis=1, keepdims=True)
        probs = logits
    targets = None
    if regression:
        coef = rng.standard_normal((r, c)) / math.sqrt(r)
        targets = latent.astype(np.float64) @ coef + 0.5 * rng.standard_normal((n, c))
        targets = targets[:, 0] if c == 1 else targets
    return Data(np.ascontiguousarray(x), labels, probs, targets)


# --------------------------------------------------------------------------------------------
# The plain baseline: one class at a time over an N x k basis


def baseline_basis(features: npt.NDArray[Any]) -> tuple[F64, F64]:
    """sigma: (k,) the non-zero eigenvalues of F^T F and U: (N, k) = F V / s, in float64,
    computed as the widely used reference does (its ``truncated_svd``): the Gram matrix by a
    general matrix product and its SVD by ``np.linalg.svd``.

    Non-zero means above scoring's rank rule (max eigenvalue * max(N, D) * eps) rather than
    the reference's absolute 1e-10 on s, so that both keep the same directions.
    """
    f = np.asarray(features, dtype=np.float64)
    n, d = f.shape
    v, sigma, _ = np.linalg.svd(f.T @ f)  # the Gram is PSD: singular values = eigenvalues
    sigma = np.clip(sigma, 0.0, None)
    keep = sigma > max(float(sigma.max()), 0.0) * max(n, d) * EPS
    sigma, v = sigma[keep], v[:, keep]
    u = (f @ v) / np.sqrt(sigma)[None, :]
    return sigma, u


def baseline_evidence(
    sigma: F64, x: F64, yty: float, n: int, d: int, tol: float = 1e-12, max_iter: int = 10_000
) -> float:
    """MacKay's fixed point for one target alone, the maths of scoring.logme.fit_evidence
    with scalars: the maximised log evidence per sample.

    sigma: (k,) non-zero eigenvalues of F^T F; x: (k,) = U^T y; yty = ||y||^2.
    """
    x2 = x * x
    res_outside = max(yty - float(x2.sum()), 0.0)
    # t is kept within [t_lo, t_hi] as in fit_evidence: beyond either end the evidence is within
    # rounding of its limit (prior swamps the data / noiseless interpolation when N <= D).
    scale = max(float(sigma.max(initial=0.0)), 1.0)
    t_lo, t_hi = 1e-12 * scale, 1e12 * scale
    t = 1.0  # alpha = beta = 1
    for _ in range(max_iter):
        denom = sigma + t
        gamma = float((sigma / denom).sum())
        m2 = float((sigma * x2 / denom**2).sum())
        res2 = float((x2 * (t / denom) ** 2).sum()) + res_outside
        alpha = gamma / max(m2, _TINY)
        beta = (n - gamma) / max(res2, _TINY)
        t_new = min(max(alpha / beta, t_lo), t_hi)
        change = abs(t_new - t) / max(t, _TINY)
        t = t_new
        if change <= tol or t in (t_lo, t_hi):
            break
    else:
        warnings.warn("baseline LogME did not converge", RuntimeWarning, stacklevel=2)
    denom = sigma + t
    m2 = float((sigma * x2 / denom**2).sum())
    res2 = float((x2 * (t / denom) ** 2).sum()) + res_outside
    beta = n / max(res2 + t * m2, _TINY)
    alpha = t * beta
    # log|A| over all D eigenvalues of A = alpha I + beta F^T F: the D - k zero ones give alpha.
    logdet = float(np.log(alpha + beta * sigma).sum()) + (d - sigma.shape[0]) * math.log(alpha)
    evidence = (
        0.5 * n * math.log(beta)
        + 0.5 * d * math.log(alpha)
        - 0.5 * n * LOG_2PI
        - 0.5 * beta * res2
        - 0.5 * alpha * m2
        - 0.5 * logdet
    ) / n
    limit = 0.5 * (math.log(n / max(yty, _TINY)) - LOG_2PI - 1.0)  # alpha -> infinity
    return float(max(evidence, limit))


def baseline_logme(features: npt.NDArray[Any], labels: npt.NDArray[Any]) -> F64:
    """Per-class evidences (C,), classes in sorted order; LogME is their mean."""
    n, d = features.shape
    sigma, u = baseline_basis(features)
    out = []
    for c in np.unique(labels):
        y = (labels == c).astype(np.float64)
        out.append(baseline_evidence(sigma, u.T @ y, float(y @ y), n, d))
    return np.asarray(out)


def library_class_evidence(features: npt.NDArray[Any], labels: npt.NDArray[Any]) -> F64:
    """scoring's per-class evidences (C,), untimed, for the per-class agreement check."""
    x = check_features(features)
    lab = check_labels(labels, x.shape[0])
    return _logme_classification(FeatureStats(x, lab, "cpu")).evidence


# --------------------------------------------------------------------------------------------
# Timing


@dataclass
class Timed:
    seconds: float
    value: Any
    warnings: list[str] = field(default_factory=list)


def best_of(repeat: int, fn: Callable[[], Any]) -> Timed:
    """Best wall time of ``repeat`` calls of ``fn``; the value of the last call, and the
    distinct warnings raised (e.g. a ConvergenceWarning), recorded in the JSON."""
    best = math.inf
    value: Any = None
    seen: list[str] = []
    for _ in range(repeat):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            gc.disable()  # no collector pauses inside the timing (arrays are freed by refcount)
            try:
                start = time.perf_counter()
                value = fn()
                best = min(best, time.perf_counter() - start)
            finally:
                gc.enable()
        seen.extend(str(w.message) for w in caught if str(w.message) not in seen)
    return Timed(best, value, seen)


def _accepts_device(fn: Callable[..., Any]) -> bool:
    return "device" in inspect.signature(fn).parameters


def run_metric(name: str, data: Data, device: str) -> float:
    fn = scoring.REGISTRY[name].function
    x: Any = data.probs if scoring.REGISTRY[name].needs == {"probs"} else data.features
    kwargs = {"device": device} if _accepts_device(fn) else {}
    return float(fn(x, data.y, **kwargs))


@dataclass
class DeviceResult:
    device: str
    separate: dict[str, float]  # seconds per metric on its own
    values: dict[str, float]  # each metric's value from its own run
    together: float  # seconds for scoring.compute of all of them
    together_values: dict[str, float]
    warnings: dict[str, list[str]]

    @property
    def separate_sum(self) -> float:
        return float(sum(self.separate.values()))


@dataclass
class PointResult:
    n: int
    d: int
    c: int
    devices: list[DeviceResult]
    baseline_seconds: float | None
    baseline_score: float | None
    max_abs_diff: float | None  # |baseline - scoring| over every LogME score of this point
    max_abs_diff_per_class: float | None

    @property
    def label(self) -> str:
        return f"{self.n}x{self.d}x{self.c}"

    def speedup(self, device: str = "cpu") -> float | None:
        dev = next((r for r in self.devices if r.device == device), None)
        if self.baseline_seconds is None or dev is None or "logme" not in dev.separate:
            return None
        return self.baseline_seconds / dev.separate["logme"]


def run_device(metrics: Sequence[str], data: Data, device: str, repeat: int) -> DeviceResult:
    separate: dict[str, float] = {}
    values: dict[str, float] = {}
    caught: dict[str, list[str]] = {}
    ran: list[str] = []
    for name in metrics:
        try:
            t = best_of(repeat, functools.partial(run_metric, name, data, device))
        except scoring.TransferabilityError as exc:
            # Not defined at this shape (the plain H-score when N <= D): left out of the
            # point, and out of its together/separate comparison.
            caught[name] = [f"not applicable: {exc}"]
            continue
        ran.append(name)
        separate[name], values[name] = t.seconds, t.value
        if t.warnings:
            caught[name] = t.warnings
    t = best_of(
        repeat,
        lambda: scoring.compute(
            ran,
            data.y,
            features=data.features,
            probs=data.probs,
            target=data.target,
            device=device,
        ),  # fmt: skip
    )
    if t.warnings:
        caught["compute"] = t.warnings
    return DeviceResult(device, separate, values, t.seconds, dict(t.value), caught)


def run_point(
    n: int,
    d: int,
    c: int,
    metrics: Sequence[str],
    devices: Sequence[str],
    repeat: int,
    regression: bool = False,
) -> PointResult:
    need_probs = any("probs" in scoring.REGISTRY[m].needs for m in metrics)
    data = make_data(n, d, c, need_probs, regression=regression)
    gc.collect()
    dev_results = [run_device(metrics, data, dev, repeat) for dev in devices]
    base_s = base_score = diff = diff_class = None
    if "logme" in metrics:
        t = best_of(repeat, lambda: baseline_logme(data.features, data.labels))
        base_s, base_score = t.seconds, float(t.value.mean())
        ours = [r.values["logme"] for r in dev_results]
        ours += [r.together_values["logme"] for r in dev_results]
        diff = max(abs(v - base_score) for v in ours)
        per_class = library_class_evidence(data.features, data.labels)
        diff_class = float(np.abs(per_class - t.value).max())
    return PointResult(n, d, c, dev_results, base_s, base_score, diff, diff_class)


def warm_up(metrics: Sequence[str], devices: Sequence[str], regression: bool = False) -> None:
    """Untimed: imports, BLAS thread start-up, CUDA context."""
    data = make_data(200, 16, 4, need_probs=True, seed=1, regression=regression)
    for dev in devices:
        for name in metrics:
            run_metric(name, data, dev)
        scoring.compute(
            list(metrics), data.y, features=data.features, probs=data.probs,
            target=data.target, device=dev,
        )  # fmt: skip
    baseline_logme(data.features, data.labels)


# --------------------------------------------------------------------------------------------
# Machine description


def machine_info() -> dict[str, Any]:
    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info: dict[str, Any] = {
        "cpu_model": cpu,
        "logical_cpus": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "numpy": np.__version__,
        "load_average_at_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }
    try:
        import scipy

        info["scipy"] = scipy.__version__
    except ImportError:  # pragma: no cover
        pass
    try:
        from threadpoolctl import threadpool_info

        info["blas"] = [
            {k: p.get(k) for k in ("internal_api", "version", "num_threads", "architecture")}
            for p in threadpool_info()
            if p.get("user_api") == "blas"
        ]
    except ImportError:  # pragma: no cover - comes with scikit-learn
        info["blas"] = None
    try:
        import torch

        info["torch"] = torch.__version__
        info["torch_threads"] = torch.get_num_threads()
        if _linalg.cuda_available():
            info["torch_device"] = f"cuda: {torch.cuda.get_device_name(0)}"
        else:
            info["torch_device"] = "cpu (no GPU visible to torch)"
    except ImportError:  # pragma: no cover
        info["torch_device"] = None
    return info


# --------------------------------------------------------------------------------------------
# Report


def _fmt_s(s: float | None) -> str:
    if s is None:
        return "-"
    return f"{s:.3f}" if s < 10 else f"{s:.1f}"


def _fmt_x(r: float | None) -> str:
    return "-" if r is None else f"{r:.1f}x"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    fmt = "  ".join(f"{{:<{w}}}" if i == 0 else f"{{:>{w}}}" for i, w in enumerate(widths))
    lines = [fmt.format(*header), "  ".join("-" * w for w in widths)]
    lines += [fmt.format(*r) for r in rows]
    return "\n".join(lines)


def report(points: Sequence[PointResult], metrics: Sequence[str], devices: Sequence[str]) -> str:
    out: list[str] = []
    for dev in devices:
        res = [(p, next(r for r in p.devices if r.device == dev)) for p in points]
        out.append(f"\nSeconds per metric run on its own (device={dev}, best of repeats)")
        out.append(
            _table(
                ["N x D x C", *metrics],
                [[p.label, *(_fmt_s(r.separate.get(m)) for m in metrics)] for p, r in res],
            )
        )
        out.append(f"\nTogether vs separately, and LogME vs the plain baseline (device={dev})")
        header = ["N x D x C", "sum sep", "compute", "sum/comp", "baseline", "logme"]
        header += ["base/logme", "max|diff|", "agree"]
        rows = []
        for p, r in res:
            logme_s = r.separate.get("logme")
            ok = None if p.max_abs_diff is None else p.max_abs_diff <= AGREEMENT_TOL
            rows.append(
                [
                    p.label,
                    _fmt_s(r.separate_sum),
                    _fmt_s(r.together),
                    _fmt_x(r.separate_sum / r.together),
                    _fmt_s(p.baseline_seconds),
                    _fmt_s(logme_s),
                    _fmt_x(p.speedup(dev)),
                    "-" if p.max_abs_diff is None else f"{p.max_abs_diff:.1e}",
                    "-" if ok is None else ("yes" if ok else "NO"),
                ]
            )
        out.append(_table(header, rows))
    return "\n".join(out)


def targets(points: Sequence[PointResult], device: str) -> list[dict[str, Any]]:
    """PASS/FAIL/n/a for the three targets at TARGET_POINT."""
    n, d, c = TARGET_POINT
    p = next((q for q in points if (q.n, q.d, q.c) == TARGET_POINT), None)
    name = f"N={n:,} D={d:,} C={c}"
    checks: list[dict[str, Any]] = []

    def add(what: str, ok: bool | None, detail: str) -> None:
        checks.append({"target": what, "status": _status(ok), "detail": detail})

    r = None if p is None else next((x for x in p.devices if x.device == device), None)
    if p is None or r is None:
        why = f"{name} is not in this grid (run --grid full)"
        add(f"LogME >= {TARGET_SPEEDUP:g}x faster than baseline, |diff| <= 1e-8", None, why)
        add(f"every metric but {' and '.join(SLOW)} < {TARGET_SECONDS:g} s", None, why)
        add("compute(all) faster than the sum of separate runs", None, why)
        return checks
    sp = p.speedup(device)
    if sp is None or p.max_abs_diff is None:
        add(f"LogME >= {TARGET_SPEEDUP:g}x faster than baseline", None, "logme not run")
    else:
        ok = sp >= TARGET_SPEEDUP and p.max_abs_diff <= AGREEMENT_TOL
        add(
            f"LogME >= {TARGET_SPEEDUP:g}x faster than baseline, |diff| <= 1e-8",
            ok,
            f"{sp:.1f}x, |diff| {p.max_abs_diff:.1e}",
        )
    timed = {m: s for m, s in r.separate.items() if m not in SLOW}
    slowest = max(timed, key=lambda m: timed[m])
    add(
        f"every metric but {' and '.join(SLOW)} < {TARGET_SECONDS:g} s",
        all(s < TARGET_SECONDS for s in timed.values()),
        f"slowest {slowest} {timed[slowest]:.2f} s",
    )
    add(
        "compute(all) faster than the sum of separate runs",
        r.together < r.separate_sum,
        f"{r.together:.2f} s vs {r.separate_sum:.2f} s",
    )
    return checks


def _status(ok: bool | None) -> str:
    return "n/a" if ok is None else ("PASS" if ok else "FAIL")


def plot(points: Sequence[PointResult], metrics: Sequence[str], device: str, path: Path) -> None:
    """One panel per (D, C): seconds against N for each metric, compute and the baseline."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = sorted({(p.d, p.c) for p in points})
    cols = min(2, len(panels))
    rows = math.ceil(len(panels) / cols)
    size = (6.0 * cols + 2.0, 4.5 * rows)  # 2 inches on the right for the legend
    fig, axes = plt.subplots(rows, cols, figsize=size, squeeze=False)
    for ax, (d, c) in zip(axes.flat, panels, strict=False):
        sub = sorted((p for p in points if (p.d, p.c) == (d, c)), key=lambda p: p.n)
        ns = [p.n for p in sub]
        res = [next(r for r in p.devices if r.device == device) for p in sub]
        for m in metrics:
            ax.plot(ns, [r.separate.get(m, float("nan")) for r in res], marker="o", lw=1, label=m)
        ax.plot(ns, [r.separate_sum for r in res], "k:", marker="s", label="sum of separate")
        ax.plot(ns, [r.together for r in res], "k-", lw=2.5, marker="s", label="compute(all)")
        if all(p.baseline_seconds is not None for p in sub):
            base = [p.baseline_seconds for p in sub]
            ax.plot(ns, base, "r--", lw=2, marker="^", label="plain LogME baseline")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("N (samples)")
        ax.set_ylabel("seconds (best of repeats)")
        ax.set_title(f"D={d}, C={c}, device={device}")
        ax.grid(True, which="both", alpha=0.3)
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    handles, names = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, names, loc="center right", fontsize=8, frameon=False)
    fig.suptitle("transferbench scoring: seconds per metric")
    fig.tight_layout(rect=(0, 0, 1 - 2.0 / fig.get_figwidth(), 1))
    fig.savefig(path, dpi=120)
    plt.close(fig)


# --------------------------------------------------------------------------------------------
# CLI


def choose_metrics(
    arg: str | None, with_slow: bool, target: scoring.Target = "classification"
) -> list[str]:
    feasible = scoring.applicable(has_features=True, has_probs=True, target=target)
    if arg:
        names = [m.strip() for m in arg.split(",") if m.strip()]
        unknown = [m for m in names if m not in feasible]
        if unknown:
            raise SystemExit(f"unknown metric(s) {unknown}; choose from {', '.join(feasible)}")
        return list(dict.fromkeys(names))
    return [m for m in feasible if with_slow or m not in SLOW]


_LIMITS: list[Any] = []  # keeps the thread limit alive for the whole run


def set_threads(n: int) -> None:
    """Cap the threads of every BLAS and OpenMP runtime loaded so far, and torch's."""
    if n < 1:
        raise SystemExit("--threads must be at least 1")
    import scipy.linalg  # noqa: F401 - load scipy's own BLAS so that it is capped too
    import sklearn  # noqa: F401 - and its OpenMP runtime
    import torch
    from threadpoolctl import threadpool_limits

    _LIMITS.append(threadpool_limits(limits=n))
    torch.set_num_threads(n)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog="python -m bench.scoring",
        description="Time every scoring metric over an (N, D, C) grid; LogME vs a plain baseline.",
    )
    ap.add_argument("--grid", choices=sorted(GRIDS), default="quick")
    ap.add_argument(
        "--repeat", type=int, default=None, help="best of R runs (default: 3 quick, 1 full)"
    )
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    ap.add_argument(
        "--name", default="scoring", help="results go to OUT/NAME.json and OUT/NAME.png"
    )
    ap.add_argument("--metrics", default=None, help="comma-separated names (default: all fast)")
    ap.add_argument(
        "--with-slow", action="store_true", help=f"also time the slow metrics ({', '.join(SLOW)})"
    )
    ap.add_argument(
        "--threads",
        type=int,
        default=None,
        help="cap BLAS/OpenMP/torch threads (default: the libraries' own choice); "
        "on a busy machine --threads 1 avoids BLAS threads waiting on occupied cores",
    )
    return ap.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    regression = args.grid in REGRESSION_GRIDS
    target: scoring.Target = "regression" if regression else "classification"
    metrics = choose_metrics(args.metrics, args.with_slow, target)
    repeat = args.repeat if args.repeat is not None else (3 if args.grid == "quick" else 1)
    if repeat < 1:
        raise SystemExit("--repeat must be at least 1")
    if args.threads is not None:
        set_threads(args.threads)
    devices = ["cpu", "cuda"] if _linalg.cuda_available() else ["cpu"]
    ns, ds, cs = GRIDS[args.grid]
    grid = [(n, d, c) for d in ds for c in cs for n in ns]
    info = machine_info()
    info["threads_cap"] = args.threads

    print(f"transferbench scoring benchmark: grid={args.grid}, repeat={repeat}")
    print(f"machine: {info['cpu_model']}, {info['usable_cpus']} usable CPUs; ", end="")
    print(f"torch device: {info['torch_device']}")
    print(f"metrics: {', '.join(metrics)}; devices: {', '.join(devices)}", flush=True)
    load = info["load_average_at_start"]
    if load and info["usable_cpus"] and load[0] > 0.5 * info["usable_cpus"]:
        print(
            f"note: load average {load[0]:.1f} on {info['usable_cpus']} CPUs: other work is ",
            end="",
        )
        print("running, so timings will be noisy (BLAS threads wait on busy cores)", flush=True)
    warm_up(metrics, devices, regression)

    started = time.perf_counter()
    points: list[PointResult] = []
    for i, (n, d, c) in enumerate(grid, 1):
        t0 = time.perf_counter()
        p = run_point(n, d, c, metrics, devices, repeat, regression)
        points.append(p)
        diff = "-" if p.max_abs_diff is None else f"{p.max_abs_diff:.1e}"
        print(
            f"[{i}/{len(grid)}] N={n} D={d} C={c}: {time.perf_counter() - t0:.1f} s "
            f"(baseline/logme {_fmt_x(p.speedup())}, max|diff| {diff})",
            flush=True,
        )
    total = time.perf_counter() - started

    print(report(points, metrics, devices))
    all_targets = {dev: targets(points, dev) for dev in devices}
    for dev, checks in all_targets.items():
        n, d, c = TARGET_POINT
        print(f"\nTargets at N={n:,} D={d:,} C={c} (device={dev})")
        for t in checks:
            print(f"  {t['status']:<4}  {t['target']}: {t['detail']}")
    agree = all(p.max_abs_diff is None or p.max_abs_diff <= AGREEMENT_TOL for p in points)
    print(f"\nLogME agreement with the baseline (<= {AGREEMENT_TOL:g}) at every point: ", end="")
    print("PASS" if agree else "FAIL")

    args.out.mkdir(parents=True, exist_ok=True)
    json_path, png_path = args.out / f"{args.name}.json", args.out / f"{args.name}.png"
    payload = {
        "benchmark": "bench.scoring",
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "grid": args.grid,
        "repeat": repeat,
        "metrics": metrics,
        "devices": devices,
        "machine": info,
        "data": {
            "features": f"float32; latent class means N(0, I_{LATENT}) + N(0, I) noise, "
            "mapped to D dims, + 0.5 N(0, I_D)",
            "labels": "int64, balanced, shuffled",
            "targets": "regression grids: C float64 columns, each a random linear map of the "
            "latent point plus 0.5 N(0, 1) noise",
            "probs": f"float64 (N, {N_SOURCE}) softmax of a random linear map of the features",
        },
        "total_seconds": total,
        "load_average_at_end": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "agreement_tol": AGREEMENT_TOL,
        "agreement_pass": agree,
        "targets": {"point": list(TARGET_POINT), **all_targets},
        "points": [
            {
                **{k: v for k, v in asdict(p).items() if k != "devices"},
                "speedup_baseline_over_logme": p.speedup(),
                "devices": [
                    {
                        **asdict(r),
                        "separate_sum": r.separate_sum,
                        "sum_over_together": (r.separate_sum / r.together),
                    }
                    for r in p.devices
                ],
            }
            for p in points
        ],
    }
    json_path.write_text(json.dumps(payload, indent=2, default=float) + "\n")
    written = [json_path]
    for dev in devices:
        path = png_path if dev == "cpu" else args.out / f"{args.name}_{dev}.png"
        plot(points, metrics, dev, path)
        written.append(path)
    print(f"wrote {', '.join(map(str, written))} (total {total:.1f} s)")
    return 0 if agree else 1


if __name__ == "__main__":
    raise SystemExit(main())
