"""The dataset type every reader returns: samples, labels and a content hash."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Literal

import numpy as np

from workers.pipeline.errors import PipelineError

Modality = Literal["image", "text", "features"]
Target = Literal["classification", "regression"]
#: What one text sample is: a text (``plain``), a text pair (``pairs``: the tokenizer's own pair
#: encoding) or one word of a tokenized sentence (``tokens``: token classification, one sample
#: per word, its features pooled from the sentence's subword features).
Kind = Literal["plain", "pairs", "tokens"]

#: A class label is a name; a longer one would make every row of the label array that wide
#: (numpy strings are fixed-width), so one long label in a big file would expand hugely.
MAX_LABEL_CHARS = 256


@dataclass(frozen=True)
class PrecomputedModel:
    """Features a user computed elsewhere: ``features`` ``(N, D)`` float32 and optionally
    source-class ``probs`` ``(N, Z)`` float32."""

    features: np.ndarray
    probs: np.ndarray | None = None
    #: what the content hash names it by: the model's name in a file of several models, ""
    #: for the one model of a plain ``features`` array, whose shown name is the file's (so the
    #: same file hashes alike whatever it is called, e.g. an upload under a temporary name)
    hash_name: str = ""


class ContentHash:
    """A dataset's content hash, fed rows in order: a reader that streams a file (and never
    holds its samples) hashes it exactly as :attr:`Dataset.content_hash` does."""

    def __init__(self, modality: Modality, target: Target, kind: Kind = "plain") -> None:
        seed = f"transferbench-dataset-v1|{modality}|{target}"
        # a plain dataset's seed is as it always was: its hashes (and cached features) stay valid
        seed += "" if kind == "plain" else f"|{kind}"
        self._digest = hashlib.sha256(seed.encode())

    def add(self, sample_digests: Sequence[bytes], labels: Sequence[object]) -> None:
        """The next rows: each sample's digest and its label (a Python value, ``.tolist()``)."""
        for sample_digest, label in zip(sample_digests, labels, strict=True):
            self._digest.update(sample_digest)
            self._digest.update(repr(label).encode())

    def hexdigest(self, model_names: Iterable[str] = ()) -> str:
        """The hash, after every row; ``model_names``: the models of a features dataset."""
        for name in sorted(model_names):
            self._digest.update(name.encode())
        return self._digest.hexdigest()


@dataclass(frozen=True)
class Summary:
    """What storing an upload needs to know of it: its kind, size, classes and content hash.
    A streaming check returns it without ever holding the samples."""

    modality: Modality
    target: Target
    content_hash: str
    n_samples: int
    #: ``(label, count)`` in sorted label order; empty for regression targets
    classes: list[tuple[object, int]]
    kind: Kind = "plain"

    def validate(self, where: str) -> Summary:
        """Raise :class:`PipelineError` unless the labels can be ranked on."""
        if self.n_samples == 0:
            raise PipelineError(f"{where}: no samples found")
        if self.target == "classification":
            require_two_classes(where, [label for label, _ in self.classes])
        return self

    @classmethod
    def of(cls, dataset: Dataset) -> Summary:
        classes: list[tuple[object, int]] = []
        if dataset.target == "classification":
            names, counts = np.unique(dataset.labels, return_counts=True)
            classes = list(zip(names.tolist(), counts.tolist(), strict=True))
        return cls(
            dataset.modality,
            dataset.target,
            dataset.content_hash,
            len(dataset),
            classes,
            dataset.kind,
        )


@dataclass(frozen=True, eq=False)
class Dataset:
    """A validated target dataset.

    - ``samples``: ``N`` items: :class:`~workers.pipeline.datasets.images.ImageSample` for images,
      ``str`` for text, :class:`~workers.pipeline.datasets.pairs.TextPair` for text pairs,
      :class:`~workers.pipeline.datasets.tokens.WordSample` for the words of a token
      classification dataset, row indices for precomputed features.
    - ``labels``: ``(N,)`` class labels (any hashable) or float regression targets.
    - ``digests``: ``N`` sha256 digests of the samples' content (bytes, pixels or text).
    - ``precomputed``: model name -> arrays, for ``modality == "features"`` only.
    - ``kind``: text datasets, what a sample is (:data:`Kind`).
    """

    name: str
    modality: Modality
    samples: Sequence[object]
    labels: np.ndarray
    digests: Sequence[bytes]
    target: Target = "classification"
    precomputed: dict[str, PrecomputedModel] = field(default_factory=dict)
    origin: str = ""
    kind: Kind = "plain"

    def __len__(self) -> int:
        return len(self.samples)

    def close(self) -> None:
        """Close the file handles the samples share (a zip's :class:`ZipReader`) now, rather
        than when the last sample is garbage collected: a job that has read its samples closes
        them before it reports, so a finished job holds no upload open. A later read reopens
        the handle."""
        closed: set[int] = set()
        for sample in self.samples:
            reader = getattr(sample, "reader", None)
            if reader is not None and id(reader) not in closed:
                closed.add(id(reader))
                reader.close()

    def __enter__(self) -> Dataset:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @cached_property
    def content_hash(self) -> str:
        """sha256 (hex) of every sample's content and label, in order: keys the feature cache."""
        content = ContentHash(self.modality, self.target, self.kind)
        content.add(self.digests, self.labels.tolist())
        return content.hexdigest(m.hash_name for m in self.precomputed.values())

    @property
    def classes(self) -> list[object]:
        classes: list[object] = np.unique(self.labels).tolist()
        return classes

    def validate(self) -> Dataset:
        """Raise :class:`PipelineError` unless the labels can be ranked on."""
        where = self.origin or self.name
        if len(self) == 0:
            raise PipelineError(f"{where}: no samples found")
        if len(self.labels) != len(self.samples):
            raise PipelineError(
                f"{where}: {len(self.samples)} samples but {len(self.labels)} labels"
            )
        if self.target == "classification":
            classes, counts = np.unique(self.labels, return_counts=True)
            require_two_classes(where, classes.tolist())
            if counts.min() < 1:  # pragma: no cover - np.unique never returns empty classes
                raise PipelineError(f"{where}: a class has no samples")
        elif not np.all(np.isfinite(self.labels.astype(np.float64))):
            raise PipelineError(f"{where}: regression targets must be finite numbers")
        return self

    def select(self, indices: np.ndarray, *, suffix: str = "") -> Dataset:
        """A new dataset of the rows ``indices`` (in that order)."""
        return Dataset(
            name=self.name + suffix,
            modality=self.modality,
            samples=[self.samples[i] for i in indices],
            labels=self.labels[indices],
            digests=[self.digests[i] for i in indices],
            target=self.target,
            precomputed={
                name: PrecomputedModel(
                    arrays.features[indices],
                    None if arrays.probs is None else arrays.probs[indices],
                )
                for name, arrays in self.precomputed.items()
            },
            origin=self.origin,
            kind=self.kind,
        )

    def subsample(self, per_class: int, seed: int = 0) -> Dataset:
        """Seeded stratified subsample: at most ``per_class`` samples of each class, drawn
        without replacement, kept in their original order."""
        if per_class < 1:
            raise PipelineError(f"--per-class must be at least 1, got {per_class}")
        if self.target != "classification":
            raise PipelineError("--per-class applies to class labels, not regression targets")
        rng = np.random.default_rng(seed)
        _, inverse = np.unique(self.labels, return_inverse=True)
        keep: list[np.ndarray] = []
        for code in range(int(inverse.max()) + 1):
            members = np.flatnonzero(inverse == code)
            if len(members) > per_class:
                members = rng.choice(members, size=per_class, replace=False)
            keep.append(members)
        indices = np.sort(np.concatenate(keep))
        return self.select(indices, suffix=f"[{per_class}/class,seed={seed}]")


def require_two_classes(where: str, classes: Sequence[object]) -> None:
    """Ranking tells classes apart: a dataset needs two at least (``classes``: its distinct
    labels, at least one)."""
    if len(classes) < 2:
        raise PipelineError(
            f"{where}: only one class ({classes[0]!r}) - ranking needs at least two"
        )


def label_array(labels: Sequence[object], target: Target, where: str) -> np.ndarray:
    """``labels`` as an array: float targets, or class names of at most ``MAX_LABEL_CHARS``."""
    if target == "regression":
        return np.asarray(labels, dtype=np.float64)
    for label in labels:
        check_label(str(label), where)
    return np.asarray(labels)


def class_name(value: object) -> str:
    """A table cell's class label as the class's name: text without the spaces around it
    (" pos" and "pos" were two classes), and a whole number given as a number written as one
    (JSON's 1 and 1.0 were two classes)."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).strip()


def check_label(text: str, where: str) -> None:
    """Refuse a class name over ``MAX_LABEL_CHARS``, or holding a control character (a
    trailing NUL was dropped by one reader and kept by another: the same upload gave two
    class lists and two content hashes)."""
    if any(ord(c) < 32 or ord(c) == 127 for c in text):
        raise PipelineError(
            f"{where}: the label {text[:40]!r} holds a control character; class names are "
            "text: remove it"
        )
    if len(text) > MAX_LABEL_CHARS:
        raise PipelineError(
            f"{where}: the label {text[:40]!r}... is {len(text)} characters long, over the "
            f"{MAX_LABEL_CHARS}-character cap (MAX_LABEL_CHARS); labels are class names: "
            "shorten them"
        )


def sha256_bytes(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()
