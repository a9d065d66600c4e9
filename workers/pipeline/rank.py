"""The rank job as one plain function: dataset -> models -> features -> ranking.

The CLI calls it directly; the service runs the same pipeline one model at a time
(``workers.jobs.steps``).
"""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from workers.pipeline.cache import FeatureCache, write_npz_atomic
from workers.pipeline.datasets import BUILTINS, Dataset, open_dataset
from workers.pipeline.errors import PipelineError
from workers.pipeline.extraction import FeatureSet, extract
from workers.pipeline.layers import MEAN, LayerChoice, LayerError, is_default, order_label
from workers.pipeline.models.base import CandidateModel
from workers.pipeline.models.zoo import check_names, load_model, zoo_names
from workers.pipeline.ranking import (
    ModelArrays,
    RankedModel,
    failed_row,
    rank_models,
    resolve_metrics,
)
from workers.pipeline.runtime import configure, resolve_device
from workers.pipeline.score_cache import ScoreCache
from workers.settings import Settings


@dataclass(frozen=True)
class RankRequest:
    dataset: str
    models: Sequence[str] | None = None
    metrics: Sequence[str] | None = None
    per_class: int | None = None
    seed: int = 0
    batch_size: int | None = None
    use_cache: bool = True
    save_features: Path | None = None
    show_progress: bool = False
    #: token-classification datasets: tags as given ("bio") or merged to entity types
    tags: str | None = None
    #: which layers to score (``workers.pipeline.layers``); with ``layer_mean`` their mean too
    layers: LayerChoice = "last"
    layer_mean: bool = False


@dataclass(frozen=True)
class RankResult:
    dataset_name: str
    n: int
    metrics: list[str]
    rows: list[RankedModel]
    features: dict[str, FeatureSet]
    modality: str = "image"
    target: str = "classification"
    #: of the ranked samples (after subsampling): the dataset's identity in the database
    content_hash: str = ""


def _log(request: RankRequest, message: str) -> None:
    if request.show_progress:
        print(message, file=sys.stderr, flush=True)


def write_text_atomic(path: Path, text: str) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:
        raise PipelineError(f"cannot write {path} ({exc.strerror or exc})") from exc
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise PipelineError(f"cannot write {path} ({exc.strerror})") from exc


def load_dataset(request: RankRequest) -> Dataset:
    """Open and (when asked, or by a built-in's default) subsample the dataset."""
    dataset = open_dataset(request.dataset, tags=request.tags)
    per_class = request.per_class
    if per_class is None and request.dataset in BUILTINS:
        per_class = BUILTINS[request.dataset].default_per_class
        if per_class:
            _log(request, f"{request.dataset}: using {per_class} per class (set --per-class)")
    if per_class is not None:
        dataset = dataset.subsample(per_class, request.seed).validate()
    return dataset


def _progress_bar(request: RankRequest, total: int, description: str):  # type: ignore[no-untyped-def]
    from tqdm import tqdm

    return tqdm(total=total, desc=description, unit="sample", disable=not request.show_progress,
                file=sys.stderr, leave=True)  # fmt: skip


def load_models(
    request: RankRequest, names: Sequence[str], settings: Settings
) -> tuple[list[CandidateModel], dict[str, str]]:
    """The models of ``names`` that load, and for each one that does not, why (the first line
    of its error): a model that cannot be loaded fails alone, as in the service, and the
    others are still ranked. A name that is neither a zoo name nor a spec is refused first,
    before anything loads (the service refuses a model it does not know up front too)."""
    check_names(names)
    models: list[CandidateModel] = []
    failed: dict[str, str] = {}
    for name in names:
        _log(request, f"loading {name}")
        try:
            models.append(load_model(name, settings))
        except Exception as exc:  # any reason at all: that model's, not the run's
            failed[name] = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    if failed and not models:
        reasons = "; ".join(f"{name}: {reason}" for name, reason in failed.items())
        raise PipelineError(f"no model could be loaded ({reasons})")
    return models, failed


def compute_features(
    request: RankRequest, dataset: Dataset, settings: Settings
) -> tuple[dict[str, FeatureSet], dict[str, str]]:
    """Features of the requested models (default: the zoo for the dataset's modality), and
    why each model that could not be loaded failed."""
    if dataset.modality == "features":
        if request.models:
            raise PipelineError("a feature file is ranked as it is; drop --models")
        if not is_default(request.layers, request.layer_mean):
            raise PipelineError("a feature file holds one layer per model; drop --layers")
        precomputed = {
            name: FeatureSet(name, arrays.features, arrays.probs)
            for name, arrays in dataset.precomputed.items()
        }
        return precomputed, {}
    names = list(request.models) if request.models else zoo_names(dataset.modality)
    configure(settings.num_threads)
    models, failed = load_models(request, names, settings)
    chosen: dict[str, tuple[int, ...]] | None = None
    if not is_default(request.layers, request.layer_mean):
        chosen = {}
        for model in list(models):
            try:  # a model that cannot give these layers fails alone, with the reason
                chosen[model.name] = model.select_layers(request.layers)
            except LayerError as exc:
                failed[model.name] = str(exc)
                models.remove(model)
        if not models:
            reasons = "; ".join(failed.values())
            raise PipelineError(f"no model can give the layers asked for ({reasons})")
    cache = FeatureCache(settings.feature_cache_dir) if request.use_cache else None
    device = resolve_device(settings.device)
    with _progress_bar(request, len(dataset), f"features x{len(models)} models") as bar:

        def progress(done: int, total: int) -> None:
            bar.update(done - bar.n)

        features = extract(
            models,
            dataset,
            layers=chosen,
            cache=cache,
            batch_size=request.batch_size or settings.batch_size,
            device=device,
            precision=settings.precision,
            num_threads=settings.num_threads,
            progress=progress,
        )
    return features, failed


def save_features(directory: Path, features: dict[str, FeatureSet], labels: np.ndarray) -> None:
    """``directory/<model>.npz`` with ``features``, ``labels`` and (with a head) ``probs``."""
    for name, fs in features.items():
        arrays = {"features": fs.features, "labels": labels}
        if fs.probs is not None:
            arrays["probs"] = fs.probs
        safe = name.replace("/", "_").replace(":", "_").replace("?", "_")
        write_npz_atomic(directory / f"{safe}.npz", arrays)


def model_arrays(fs: FeatureSet, choice: LayerChoice, layer_mean: bool) -> ModelArrays:
    """What the metrics see of one model: its features, or with layers each chosen layer's
    (labelled by index) and, with ``layer_mean``, their mean (``mean``); ordered by
    :func:`workers.pipeline.layers.order_label`. The mean needs layers of one width: a
    ``LayerError`` says so otherwise."""
    if not fs.layers:
        return ModelArrays(fs.features, fs.probs)
    chosen = sorted(fs.layers)
    layers = {str(i): fs.layers[i] for i in chosen}
    if layer_mean:
        widths = sorted({fs.layers[i].shape[1] for i in chosen})
        if len(widths) > 1:
            raise LayerError(
                f"{fs.model}: its layers {chosen} have different widths ({widths[0]} to "
                f"{widths[-1]}), so their features have no mean; rank them without "
                "layer_mean, or choose layers of one width"
            )
        stacked = np.stack([fs.layers[i] for i in chosen]).astype(np.float64)
        layers[MEAN] = stacked.mean(axis=0).astype(np.float32)
    order = order_label(choice, chosen, len(fs.layer_names), layer_mean)
    return ModelArrays(fs.features, fs.probs, layers, order)


def run_rank(request: RankRequest, settings: Settings | None = None) -> RankResult:
    """Open the dataset, extract (or read cached) features, score and rank the models; a
    model that cannot be loaded comes last, unranked, with its reason (``RankedModel.error``)."""
    settings = settings or Settings.load()
    if request.batch_size is not None and request.batch_size < 1:
        raise PipelineError("--batch-size must be at least 1")
    dataset = load_dataset(request)
    metrics = resolve_metrics(request.metrics, dataset.target)
    with dataset:  # read: no handle on the dataset's file outlives the extraction
        features, failed = compute_features(request, dataset, settings)
    if request.save_features:
        save_features(request.save_features, features, dataset.labels)
    arrays: dict[str, ModelArrays] = {}
    for name, fs in features.items():
        try:
            arrays[name] = model_arrays(fs, request.layers, request.layer_mean)
        except LayerError as exc:
            failed[name] = str(exc)
    # a repeat ranking reads the scores of arrays it scored before (``use_cache`` as features)
    scores = ScoreCache(settings.score_cache_dir) if request.use_cache else None
    rows = rank_models(arrays, dataset.labels, metrics, dataset.target, scores) if arrays else []
    rows += [failed_row(name, reason, metrics) for name, reason in failed.items()]
    return RankResult(
        dataset.name, len(dataset), metrics, rows, features, dataset.modality, dataset.target,
        dataset.content_hash,
    )  # fmt: skip
