"""Which layers of a model a ranking scores: the request's choice, resolved per model.

A model's layers are numbered in forward order from 0: a text encoder's hidden states
(0: the embeddings, then one per transformer layer; the last is its last hidden state), an
image model's main stages or blocks (the last is the layer its features always came from,
its penultimate). A choice is ``"last"`` (the default: the features rankings always used),
``"all"``, or indices (negative ones count from the end: -1 is the last). With
``layer_mean`` the mean of the chosen layers' pooled features is scored too, as the layer
``"mean"``.

Models are ordered by one layer: ``"mean"`` with ``layer_mean``, else the last layer when it
is chosen, else the first one listed. Each model's best layer is the one its first metric
scores best. Torch-free: the API validates requests with it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal

import scoring
from workers.pipeline.errors import PipelineError

LayerChoice = Literal["last", "all"] | tuple[int, ...]

#: the label of the mean of the chosen layers' features
MEAN = "mean"
#: indices a request may name: far beyond any real model's depth, small enough to print
MAX_INDEX = 4096


class LayerError(PipelineError):
    """A layer choice that is malformed, or that a model cannot give (out of its range)."""


class LayersUnsupported(LayerError):
    """The model gives only its last layer (an exported file, a fixed pipeline)."""


def parse_layers(text: str) -> LayerChoice:
    """``last``, ``all`` or comma-separated indices (``0,3,5``, ``-1``) -> a choice."""
    word = text.strip().lower()
    if word in ("last", "all"):
        return "last" if word == "last" else "all"
    try:
        indices = [int(part) for part in word.split(",") if part.strip()]
    except ValueError:
        raise LayerError(
            f"--layers {text!r}: use last, all, or layer indices separated by commas "
            "(0,3,5; -1 is the last layer)"
        ) from None
    return check_choice(indices)


def check_choice(value: object) -> LayerChoice:
    """A choice from JSON or the CLI (``"last"``, ``"all"``, a list of ints) -> the choice, or
    a ``LayerError`` saying what is wrong."""
    if value in ("last", "all"):
        return "last" if value == "last" else "all"
    if isinstance(value, str) or not isinstance(value, Sequence):
        raise LayerError(f"layers: {value!r} is not last, all or a list of layer indices")
    if not value:
        raise LayerError("layers: the list is empty; name at least one index, or use last/all")
    if not all(isinstance(i, int) and not isinstance(i, bool) for i in value):
        raise LayerError(f"layers: {list(value)!r} holds something other than whole numbers")
    big = [i for i in value if abs(i) > MAX_INDEX]
    if big:
        raise LayerError(f"layers: index {big[0]} is beyond any model's depth ({MAX_INDEX})")
    if len(set(value)) != len(value):
        raise LayerError(f"layers: {list(value)!r} names a layer twice")
    return tuple(value)


def is_default(choice: LayerChoice, layer_mean: bool) -> bool:
    """The ranking every request made before layers existed: the last layer alone."""
    return choice == "last" and not layer_mean


def resolve(choice: LayerChoice, count: int, model: str) -> tuple[int, ...]:
    """The absolute indices ``choice`` names for a model of ``count`` layers, in forward
    order; a ``LayerError`` naming the model and its range for an index beyond it."""
    if choice == "last":
        return (count - 1,)
    if choice == "all":
        return tuple(range(count))
    out = []
    for index in choice:
        absolute = index + count if index < 0 else index
        if not 0 <= absolute < count:
            raise LayerError(
                f"{model} has {count} layers (0 to {count - 1}, or -1 to -{count}); "
                f"there is no layer {index}"
            )
        out.append(absolute)
    if len(set(out)) != len(out):
        raise LayerError(f"{model}: layers {list(choice)} name the same layer twice")
    return tuple(sorted(out))


def order_label(choice: LayerChoice, chosen: Sequence[int], count: int, layer_mean: bool) -> str:
    """The layer a model is ordered by: ``mean`` with ``layer_mean``, else the last layer
    when chosen, else the first index the request listed."""
    if layer_mean:
        return MEAN
    if count - 1 in chosen:
        return str(count - 1)
    if isinstance(choice, tuple):
        first = choice[0]
        return str(first + count if first < 0 else first)
    return str(chosen[0])


def best_layer(
    per_layer: Mapping[str, Mapping[str, float | None]], metrics: Sequence[str]
) -> str | None:
    """The layer (not ``mean``) the first metric scores best; None when it scored none.
    Ties go to the earlier layer (a cheaper one to probe or fine-tune from)."""
    if not metrics:
        return None
    metric = metrics[0]
    up = scoring.REGISTRY[metric].higher_is_better if metric in scoring.REGISTRY else True
    best: tuple[float, int] | None = None
    label = None
    for name, scores in per_layer.items():
        value = scores.get(metric)
        if name == MEAN or value is None:
            continue
        key = (value if up else -value, -int(name))
        if best is None or key > best:
            best, label = key, name
    return label
