"""Feature extraction: batched forward passes of several models over one dataset.

- Every image is decoded once per job; each distinct geometry (resize + crop) is computed once
  per image, and all models sharing it read the same uint8 batch. On a CPU a thread decodes
  the next batches while the current one runs; on a GPU, worker processes do, in chunks,
  through page-locked shared memory (:mod:`workers.pipeline.loader`).
- Texts go longest first in tokens, in batches capped in texts and, on a CPU, in tokens.
  Models sharing an encoder (``CandidateModel.trunk``) run it once per batch.
- Features ``(N, D)`` float32 and, with a head, probs ``(N, Z)`` float32 go to the feature
  cache; a model whose key is cached does no forward pass.
- Batch size: from free memory unless given; an out-of-memory error halves it and retries.
- Layers (``layers=``): the other layers a model is asked for come from the same forward
  pass as its features (hooks, hidden states, one multi-output ONNX graph); each is cached
  as its own entry, keyed by its name; the last layer keeps the key it always had.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import queue
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np
import torch

from workers.pipeline.cache import FeatureCache, feature_key
from workers.pipeline.datasets.base import Dataset
from workers.pipeline.device_input import device_batches
from workers.pipeline.errors import PipelineError
from workers.pipeline.loader import decoded_batches, in_process_batches
from workers.pipeline.models.base import CandidateModel, ModelOutput
from workers.pipeline.models.preprocessing import ImageRecipe
from workers.pipeline.models.text_tasks import (
    sample_lengths,
    sample_tokens,
    sentence_lengths,
    word_features,
)
from workers.pipeline.runtime import configure, default_threads

log = logging.getLogger(__name__)
ProgressFn = Callable[[int, int], None]
T = TypeVar("T")

# Decoded batches a background thread keeps ready on a CPU. PIL's decode and resize and ONNX
# Runtime all release the GIL, so decoding overlaps the forward pass: MobileNetV2 on ONNX
# Runtime over 1024-px JPEGs on 2 cores, 106 images/s decoding in turn, 132 with this thread,
# 94 and 87 with 1 and 2 worker processes (which also compete for the cores).
PREFETCH_BATCHES = 2

# Tokens (padded) per text batch on a CPU. MiniLM on 2 cores over fortunes sorted by tokens:
# 110 texts/s in batches of <= 512 tokens, 102 at 1024, 99 at 256, 76 in batches of 32 texts
# (up to 8192 tokens: a 32 x 256 batch's attention maps no longer fit the caches).
CPU_BATCH_TOKENS = 512


@dataclass(frozen=True)
class FeatureSet:
    """One model's arrays on one dataset: ``features`` ``(N, D)`` float32, ``probs``
    ``(N, Z)`` float32 or None, and whether they came from the cache.

    With layers asked for: ``layers``, layer index -> ``(N, D_i)`` float32 features of each
    one asked (the last layer's are ``features``), and ``layer_names``, every layer's name
    by index (``CandidateModel.layer_names``)."""

    model: str
    features: np.ndarray
    probs: np.ndarray | None
    from_cache: bool = False
    cache_key: str | None = None
    layers: Mapping[int, np.ndarray] = field(default_factory=dict)
    layer_names: tuple[str, ...] = ()
    #: layer index -> the cache key of its features, for each of ``layers``
    layer_keys: Mapping[int, str] = field(default_factory=dict)


@dataclass
class ExtractionStats:
    """Counters for one :func:`extract` call (tests, the benchmarks and the log read them).

    ``input_wait_s``: time the forward loop waited for the next decoded batch; a large share
    of ``total_s`` means decode, not the model, sets the pace. ``forward_s``: each model's
    time in its forward calls (on a GPU including the wait for its features).
    """

    forward_calls: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    images_decoded: int = 0
    cache_hits: list[str] = field(default_factory=list)
    input_wait_s: float = 0.0
    forward_s: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    total_s: float = 0.0


def _available_memory(device: torch.device) -> int:
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 4 * 1024**3


def pick_batch_size(models: Sequence[CandidateModel], device: torch.device) -> int:
    """A batch size that fits free memory: a rough per-sample activation estimate (~100 float
    maps of the input size per image, 2 MB per text), capped at 8 images / 32 texts on CPU
    (larger CPU batches were slower per image on a 2-core machine) and 512 on GPU (on an H200
    in bf16, 512 gave ResNet-50 4% and MobileNetV2 6% more images/s than 256)."""
    sizes = [m.recipe.size for m in models if isinstance(m.recipe, ImageRecipe)]
    per_sample = (max(sizes) ** 2 * 3 * 4 * 100) if sizes else 2 * 1024**2
    budget = _available_memory(device) // 4
    cap = 512 if device.type == "cuda" else (8 if sizes else 32)
    return int(max(1, min(cap, budget // per_sample)))


def _is_oom(exc: BaseException) -> bool:
    if isinstance(exc, torch.OutOfMemoryError):
        return True
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and ("out of memory" in text or "can't allocate" in text)


def _slice(batch: Any, start: int, stop: int) -> Any:
    if isinstance(batch, dict):
        return {k: v[start:stop] for k, v in batch.items()}
    return batch[start:stop]


def _batch_len(batch: Any) -> int:
    if isinstance(batch, dict):
        return len(next(iter(batch.values())))
    return len(batch)


class _Runner:
    """Runs models on batches in micro-batches, halving a model's micro-batch on OOM;
    ``extra``: model name -> the other layers its forward pass also gives."""

    def __init__(
        self,
        batch_size: int,
        stats: ExtractionStats,
        extra: Mapping[str, tuple[int, ...]] | None = None,
    ) -> None:
        self.micro: dict[str, int] = defaultdict(lambda: batch_size)
        self.stats = stats
        self.extra = dict(extra or {})

    def __call__(self, model: CandidateModel, batch: Any) -> list[ModelOutput]:
        outputs, start, total = [], 0, _batch_len(batch)
        while start < total:
            size = self.micro[model.name]
            began = time.perf_counter()
            extra = self.extra.get(model.name, ())
            try:
                part = _slice(batch, start, start + size)
                out = model.forward_layers(part, extra) if extra else model.forward(part)
            except (torch.OutOfMemoryError, RuntimeError) as exc:
                if not _is_oom(exc):
                    raise
                if size == 1:
                    raise PipelineError(
                        f"{model.name}: out of memory even with a batch of 1; free memory or "
                        "use TB_DEVICE=cpu"
                    ) from exc
                self.micro[model.name] = size // 2
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
                continue
            self.stats.forward_calls[model.name] += 1
            self.stats.forward_s[model.name] += time.perf_counter() - began
            outputs.append(out)
            start += size
        return outputs


def _collect(
    outputs: list[ModelOutput],
) -> tuple[np.ndarray, np.ndarray | None, list[np.ndarray]]:
    """Features, probs and each extra layer's features, all batches joined."""
    features = np.concatenate([o.features for o in outputs]).astype(np.float32, copy=False)
    layers = [
        np.concatenate([o.layers[j] for o in outputs]).astype(np.float32, copy=False)
        for j in range(len(outputs[0].layers))
    ]
    if outputs[0].probs is None:
        return features, None, layers
    probs = [o.probs for o in outputs if o.probs is not None]
    return features, np.concatenate(probs).astype(np.float32, copy=False), layers


def _group(models: Sequence[CandidateModel]) -> dict[tuple[Any, ...], list[CandidateModel]]:
    """Models fed the same uint8 batch: equal geometry, decoded the same way."""
    groups: dict[tuple[Any, ...], list[CandidateModel]] = defaultdict(list)
    for model in models:
        groups[(model.decode, *model.recipe.geometry_key())].append(model)
    return groups


def _lockstep(sources: Sequence[Iterator[tuple[torch.Tensor, ...]]]) -> Iterator[tuple[Any, ...]]:
    """The batches of several sources over the same samples, joined; closing this closes them."""
    try:
        for batches in zip(*sources, strict=True):
            yield tuple(tensor for batch in batches for tensor in batch)
    finally:
        for source in sources:
            close = getattr(source, "close", None)
            if close is not None:
                close()


def prefetched(items: Iterable[T], depth: int) -> Iterator[T]:
    """``items`` in order, produced by a background thread up to ``depth`` ahead; an error
    there is raised here, and leaving the loop early stops the thread."""
    slots: queue.Queue[tuple[bool, Any]] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(entry: tuple[bool, Any]) -> bool:
        while not stop.is_set():
            try:
                slots.put(entry, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if not put((False, item)):
                    return
        except BaseException as exc:  # handed to the consumer, raised there
            put((True, exc))
            return
        finally:
            close = getattr(items, "close", None)
            if close is not None:  # a generator's own clean-up runs here, not at collection
                close()
        put((True, None))

    thread = threading.Thread(target=produce, name="tb-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            last, value = slots.get()
            if last:
                if value is not None:
                    raise value
                return
            yield value
    finally:
        stop.set()
        thread.join()


def _extract_images(
    models: Sequence[CandidateModel],
    dataset: Dataset,
    runner: _Runner,
    batch_size: int,
    device: torch.device,
    num_workers: int,
    progress: ProgressFn | None,
) -> dict[str, list[ModelOutput]]:
    by_decode: dict[str, list[list[CandidateModel]]] = defaultdict(list)
    for group in _group(models).values():
        by_decode[group[0].decode].append(group)
    # A thread of this process prepares the next batches while this one runs: it decodes them
    # itself, or, with worker processes decoding, gathers their chunks and issues the copies
    # (on an H200, gathering between forward passes left ResNet-50 in bf16 at 59-64% of its
    # pure forward pass), or, with TB_DECODE=device, decodes and resizes on the device.
    sources = []
    groups: list[list[CandidateModel]] = []
    for decode, decode_groups in by_decode.items():
        recipes = [r for g in decode_groups if isinstance(r := g[0].recipe, ImageRecipe)]
        assert len(recipes) == len(decode_groups)
        groups += decode_groups
        if decode == "device":
            sources.append(device_batches(dataset.samples, recipes, batch_size, device))
        elif num_workers == 0:
            sources.append(in_process_batches(dataset.samples, recipes, batch_size, device))
        else:
            sources.append(
                decoded_batches(dataset.samples, recipes, batch_size, num_workers, device)
            )
    source = sources[0] if len(sources) == 1 else _lockstep(sources)
    outputs: dict[str, list[ModelOutput]] = defaultdict(list)
    done = 0
    pending = prefetched(source, PREFETCH_BATCHES)
    while True:
        began = time.perf_counter()
        tensors = next(pending, None)
        runner.stats.input_wait_s += time.perf_counter() - began
        if tensors is None:
            break
        for group, tensor in zip(groups, tensors, strict=True):
            for model in group:
                outputs[model.name].extend(runner(model, tensor))
        done += len(tensors[0])
        runner.stats.images_decoded += len(tensors[0])
        if progress:
            progress(done, len(dataset))
    return outputs


def text_batches(lengths: Sequence[int], batch_size: int, max_tokens: int | None) -> list[slice]:
    """Consecutive batches over ``lengths`` (tokens per text, longest first): at most
    ``batch_size`` texts, and at most ``max_tokens`` tokens once padded to the longest."""
    batches, start = [], 0
    while start < len(lengths):
        size = batch_size
        if max_tokens is not None:
            size = max(1, min(batch_size, max_tokens // max(1, lengths[start])))
        batches.append(slice(start, start + size))
        start += size
    return batches


def _extract_texts(
    models: Sequence[CandidateModel],
    dataset: Dataset,
    runner: _Runner,
    batch_size: int,
    max_tokens: int | None,
    progress: ProgressFn | None,
) -> tuple[dict[str, list[ModelOutput]], np.ndarray]:
    # texts, or text pairs encoded by the tokenizer's own pair encoding (text_tasks)
    texts = list(dataset.samples) if dataset.kind == "pairs" else [str(t) for t in dataset.samples]
    groups = list(_group(models).values())
    # Longest first, in tokens: batches of similar length pad less (by characters, a batch of
    # 32 fortunes carried 39% padding; by tokens, 4%), and an OOM shows up on batch one.
    lengths = sample_lengths(groups[0][0], texts)
    order = np.argsort([-n for n in lengths], kind="stable")
    outputs: dict[str, list[ModelOutput]] = defaultdict(list)
    for batch in text_batches([lengths[i] for i in order], batch_size, max_tokens):
        chunk = [texts[i] for i in order[batch]]
        for group in groups:
            tokens = sample_tokens(group[0], chunk)
            ran: dict[tuple[str, tuple[int, ...]], list[ModelOutput]] = {}
            for model in group:
                shared = (model.trunk or "", runner.extra.get(model.name, ()))
                if model.trunk is not None and shared in ran:
                    # A shared encoder ran already on these tokens: only this model's head.
                    outputs[model.name].extend(
                        dataclasses.replace(
                            model.finish(torch.from_numpy(o.features), None), layers=o.layers
                        )
                        for o in ran[shared]
                    )
                    continue
                outputs[model.name].extend(out := runner(model, tokens))
                if model.trunk is not None:
                    ran[shared] = out
        if progress:
            progress(min(batch.stop, len(texts)), len(texts))
    return outputs, np.argsort(order)


@dataclass
class _Plan:
    """What one model of an :func:`extract` call gives and under which cache keys: ``model``
    runs it (``for_layers`` may hand it to another), ``asked`` are the layer indices asked
    for, ``keys`` index -> key of each asked layer but the last (whose key is ``key``)."""

    model: CandidateModel
    names: tuple[str, ...]
    asked: tuple[int, ...]
    key: str
    keys: dict[int, str]

    @property
    def last(self) -> int:
        return len(self.names) - 1

    def layer_keys(self) -> dict[int, str]:
        return {i: self.keys.get(i, self.key) for i in self.asked}


def _plan(model: CandidateModel, asked: tuple[int, ...] | None, dataset_hash: str) -> _Plan:
    names = model.layer_names() if asked is not None else ()
    last = len(names) - 1
    keys = {i: feature_key(model, dataset_hash, names[i]) for i in asked or () if i != last}
    return _Plan(model, names, asked or (), feature_key(model, dataset_hash), keys)


def _extract_words(
    models: Sequence[CandidateModel],
    dataset: Dataset,
    batch_size: int,
    max_tokens: int | None,
    stats: ExtractionStats,
    progress: ProgressFn | None,
    extra: Mapping[str, tuple[int, ...]] | None = None,
) -> dict[str, list[ModelOutput]]:
    """Token classification: each sentence among the samples (words) runs once per model
    (once per shared encoder), longest first in batches; each word's row is its subwords'
    mean (:func:`~workers.pipeline.models.text_tasks.word_features`), in sample order.
    ``extra``: model name -> the other layers asked for, pooled per word from the same pass.

    Per-token hidden states come from the PyTorch module only (an exported graph returns
    sentence features), so an ONNX Runtime model's word features are its PyTorch reference's;
    they are cached under the model as loaded, as every caller keys them (the dataset's kind
    is in its content hash, so they never mix with sentence features)."""
    sentences: list[Sequence[str]] = []
    first: dict[int, int] = {}  # id(sentence) -> its position in ``sentences``
    rows: list[tuple[int, int]] = []  # each sample's (sentence, word)
    wanted: list[int] = []  # samples (words) of each sentence
    for sample in dataset.samples:
        sentence = sample.sentence  # type: ignore[attr-defined]
        at = first.setdefault(id(sentence), len(sentences))
        if at == len(sentences):
            sentences.append(sentence.tokens)
            wanted.append(0)
        wanted[at] += 1
        rows.append((at, sample.index))  # type: ignore[attr-defined]
    lengths = sentence_lengths(models[0], sentences)
    order = np.argsort([-n for n in lengths], kind="stable")
    words: dict[str, list[torch.Tensor | None]] = {m.name: [None] * len(sentences) for m in models}
    done = 0
    for batch in text_batches([lengths[i] for i in order], batch_size, max_tokens):
        chunk = order[batch].tolist()
        ran: dict[tuple[str, tuple[int, ...]], list[torch.Tensor]] = {}
        for model in models:
            layers = (extra or {}).get(model.name, ())
            shared = (model.trunk or "", layers)
            if model.trunk is not None and shared in ran:
                features = ran[shared]  # a shared encoder ran already: its head only
            else:
                began = time.perf_counter()
                features = word_features(model, [sentences[i] for i in chunk], layers)
                stats.forward_calls[model.name] += 1
                stats.forward_s[model.name] += time.perf_counter() - began
                if model.trunk is not None:
                    ran[shared] = features
            for i, feats in zip(chunk, features, strict=True):
                words[model.name][i] = feats
        done += sum(wanted[i] for i in chunk)
        if progress:
            progress(done, len(dataset))
    outputs: dict[str, list[ModelOutput]] = {}
    for model in models:
        per_sentence = [f for f in words[model.name] if f is not None]
        layered = bool((extra or {}).get(model.name))
        sizes = [f.shape[-2] for f in per_sentence]  # words: (n, D), or (S, n, D) with layers
        starts = np.cumsum([0, *sizes[:-1]])
        positions = torch.as_tensor([starts[s] + w for s, w in rows])
        if not layered:
            outputs[model.name] = [model.finish(torch.cat(per_sentence)[positions], None)]
            continue
        picked = torch.cat(per_sentence, dim=1)[:, positions]  # (S, N, D)
        done_output = model.finish(picked[-1], None)
        outputs[model.name] = [
            dataclasses.replace(done_output, layers=tuple(p.numpy() for p in picked[:-1]))
        ]
    return outputs


def extract(
    models: Sequence[CandidateModel],
    dataset: Dataset,
    *,
    layers: Mapping[str, Sequence[int]] | None = None,
    cache: FeatureCache | None = None,
    batch_size: int | None = None,
    device: torch.device | None = None,
    precision: str = "auto",
    num_workers: int | None = None,
    num_threads: int | None = None,
    progress: ProgressFn | None = None,
    stats: ExtractionStats | None = None,
) -> dict[str, FeatureSet]:
    """Features of every model on ``dataset``, from the cache where possible.

    Returns model name -> :class:`FeatureSet` with ``features`` ``(N, D)`` float32 and
    ``probs`` ``(N, Z)`` float32 for models with a head. ``progress(done, total)`` is called
    after every batch with samples done out of ``N``.

    ``layers``: model name -> layer indices (``CandidateModel.select_layers``) whose features
    come in ``FeatureSet.layers``, from the same forward pass as its features, each cached
    under its own key (a model whose every asked layer is cached runs no forward pass); a
    model not named gives its features alone, as always.

    ``device``: move every model there first, in ``precision`` (``TB_PRECISION``); None keeps
    each model where it was loaded (``load_model`` places it by ``TB_DEVICE``). Cache keys are
    taken after the move: they name the runtime and precision the features come from.
    """
    if dataset.modality == "features":
        raise PipelineError("this dataset already holds features; rank it without models")
    names = [m.name for m in models]
    if len(set(names)) != len(names):
        raise PipelineError(f"a model is listed twice: {', '.join(names)}")
    for model in models:
        if model.modality != dataset.modality:
            raise PipelineError(
                f"{model.name} is a {model.modality} model but {dataset.name} is a "
                f"{dataset.modality} dataset"
            )
    configure(num_threads)
    stats = stats if stats is not None else ExtractionStats()
    if device is not None:
        for model in models:
            model.to(device, precision)
    results: dict[str, FeatureSet] = {}
    pending: list[CandidateModel] = []
    plans: dict[str, _Plan] = {}
    hits: dict[str, dict[int, np.ndarray]] = {}
    extra: dict[str, tuple[int, ...]] = {}
    for model in models:
        asked = None
        if layers is not None and model.name in layers:
            asked = tuple(sorted(set(layers[model.name])))
        plan = plans[model.name] = _plan(model, asked, dataset.content_hash)
        hit = cache.get(plan.key) if cache else None
        if hit is not None and len(hit.features) != len(dataset):
            hit = None
        found = {}
        for index, key in plan.keys.items():
            entry = cache.get(key) if cache else None
            if entry is not None and len(entry.features) == len(dataset):
                found[index] = entry.features
        if hit is not None and len(found) == len(plan.keys):
            by_index = {**found, plan.last: hit.features} if plan.asked else {}
            results[model.name] = FeatureSet(
                model.name, hit.features, hit.probs, True, plan.key,
                {i: by_index[i] for i in plan.asked}, plan.names, plan.layer_keys(),
            )  # fmt: skip
            stats.cache_hits.append(model.name)
            continue
        missing = tuple(i for i in plan.keys if i not in found)
        runs = model.for_layers(missing) if missing else model
        if runs is not model:  # another runtime: its own keys, nothing of the cache reused
            plan = plans[model.name] = _plan(runs, asked, dataset.content_hash)
            found, missing = {}, tuple(plan.keys)
        hits[model.name] = found
        if missing:
            extra[model.name] = missing
        pending.append(runs)
    if not pending:
        if progress:
            progress(len(dataset), len(dataset))
        return {name: results[name] for name in names}

    # The loader feeds the GPU when any model runs there; each model moves a batch to its own
    # device (an ONNX Runtime model beside GPU models reads it back on the CPU).
    device = next((m.device for m in pending if m.device.type != "cpu"), torch.device("cpu"))
    size = batch_size or pick_batch_size(pending, device)
    runner = _Runner(size, stats, extra)
    if num_workers is None:
        # On CPU the forward pass already uses every core: decode in a thread of this process
        # (see PREFETCH_BATCHES). On GPU, decode in worker processes on every core but the one
        # that drives the GPU (16 cores, ResNet-50 bf16: 16 workers fed it 26% more than 8).
        num_workers = max(1, default_threads() - 1) if device.type == "cuda" else 0
    began = time.perf_counter()
    with torch.inference_mode() if dataset.modality == "text" else contextlib.nullcontext():
        if dataset.kind == "tokens":
            max_tokens = CPU_BATCH_TOKENS if device.type == "cpu" else None
            outputs = _extract_words(pending, dataset, size, max_tokens, stats, progress, extra)
            inverse = None
        elif dataset.modality == "image":
            outputs = _extract_images(pending, dataset, runner, size, device, num_workers, progress)
            inverse = None
        else:
            # On a CPU a text batch also stops at CPU_BATCH_TOKENS: a long text's attention
            # maps then stay in cache (see the constant).
            max_tokens = CPU_BATCH_TOKENS if device.type == "cpu" else None
            outputs, inverse = _extract_texts(pending, dataset, runner, size, max_tokens, progress)
    stats.total_s = time.perf_counter() - began
    waiting = ""
    if dataset.modality == "image":  # texts are tokenised in line: nothing to wait for
        waiting = f"; {100 * stats.input_wait_s / max(stats.total_s, 1e-9):.0f}% of it waiting "
        waiting += "for decoded images"
    log.info(
        "extracted %d %s samples through %s in %.1f s on %s%s",
        len(dataset),
        dataset.modality,
        ", ".join(m.name for m in pending),
        stats.total_s,
        device,
        waiting,
    )
    for model in pending:
        plan = plans[model.name]
        features, probs, computed = _collect(outputs[model.name])
        if inverse is not None:
            features = features[inverse]
            probs = probs[inverse] if probs is not None else None
            computed = [c[inverse] for c in computed]
        made = dict(zip(extra.get(model.name, ()), computed, strict=True))
        by_index = {**hits[model.name], **made}
        if cache:
            meta = {**model.describe(), "dataset": dataset.content_hash, "n": len(dataset)}
            cache.put(plan.key, features, probs, meta)
            for index in extra.get(model.name, ()):
                layer_meta = {**meta, "layer": plan.names[index], "layer_index": index}
                cache.put(plan.keys[index], by_index[index], None, layer_meta)
        if plan.asked:
            by_index[plan.last] = features
        results[model.name] = FeatureSet(
            model.name, features, probs, False, plan.key,
            {i: by_index[i] for i in plan.asked}, plan.names, plan.layer_keys(),
        )  # fmt: skip
    return {name: results[name] for name in names}
