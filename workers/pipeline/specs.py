"""The model-spec grammar: ``SOURCE:REF[?KEY=VALUE&...]`` strings naming a model outside the zoo.

One parser for everyone who reads a spec: the API's check of what a remote client may name
(:mod:`workers.pipeline.remote_sources`), the worker's confinement of it to ``TB_MODEL_DIR``,
and the loader (:mod:`workers.pipeline.models.sources`). What the check approves is the very
``ModelSpec`` the loader loads, so no reading of a spec can differ between them.

The grammar, read literally (a spec is not a URL):

- ``SOURCE`` is one of :data:`SOURCES`, in lower case.
- ``REF`` is everything up to the first ``?``: a model name, a hub repo id or a path.
- The query is ``KEY=VALUE`` pairs joined by ``&``; each key is an option of that source
  (:data:`OPTIONS`), at most once, with a non-empty value (split at its first ``=``).
- No ``%`` anywhere: nothing is %-decoded, so ``%74imm`` would be neither ``timm`` nor
  anything a reader could turn into it; a spec with ``%`` is refused rather than read two ways.
  Likewise ``+`` is a plus sign, and ``;`` and ``#`` are characters of the value they sit in.
- No control characters (a newline would forge lines in logs and messages).

Sources, their kinds and their options: :data:`SOURCE_TABLE`, the one declaration of them
(the loaders of :mod:`workers.pipeline.models.sources` and the remote check read it too).

Image options: ``size``, ``resize``, ``resize_mode`` (shorter|square), ``interpolation``,
``mean``/``std`` (three numbers in 0..255 units, comma separated), ``order`` (RGB|BGR),
``layout`` (NCHW|NHWC); ``layer`` picks a module name for torch models.

Torch-free: the API imports it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal

from workers.pipeline.errors import PipelineError

IMAGE_OPTIONS = ("size", "resize", "resize_mode", "interpolation", "mean", "std", "order", "layout")

#: What a source's REF names, which decides what a remote client may give as one: ``hub``, a
#: model name its library fetches (never a path); ``hub_or_dir``, a hub repo id or a local
#: directory (remote clients: a directory only inside ``TB_MODEL_DIR``); ``file``, a local file
#: (remote clients: only inside ``TB_MODEL_DIR``, and only where it is set).
SourceKind = Literal["hub", "hub_or_dir", "file"]


@dataclass(frozen=True)
class Source:
    """A model source: its name in a spec, what its REF names and the options it reads."""

    name: str
    kind: SourceKind
    options: tuple[str, ...]


#: Every model source, declared once; a new source is a row here and a loader in
#: :data:`workers.pipeline.models.sources.LOADERS`.
SOURCE_TABLE: tuple[Source, ...] = (
    # torchvision:resnet18?weights=IMAGENET1K_V1: architecture + weights enum name (default
    # DEFAULT)
    Source("torchvision", "hub", ("weights", "layer", *IMAGE_OPTIONS)),
    # timm:resnet50.a1_in1k: any timm model name with pretrained weights
    Source("timm", "hub", ("layer", *IMAGE_OPTIONS)),
    # hf:REPO_ID_OR_DIR?max_length=256: transformers AutoModel, mean-pooled last hidden state
    Source("hf", "hub_or_dir", ("max_length",)),
    # st:REPO_ID_OR_DIR: a sentence-transformers pipeline
    Source("st", "hub_or_dir", ()),
    # onnx:FILE?layer=VALUE&size=224: onnxruntime; features from the graph value ``layer``
    # (default: the input of the last MatMul/Gemm)
    Source("onnx", "file", ("layer", "head", *IMAGE_OPTIONS)),
    # torchscript:FILE?head=1&size=224: a TorchScript file returning features or
    # (features, logits)
    Source("torchscript", "file", ("head", *IMAGE_OPTIONS)),
    # statedict:FILE?arch=mobilenet_v2 (torchvision) or ?arch=timm:resnet18; num_classes=
    Source("statedict", "file", ("arch", "num_classes", "layer", *IMAGE_OPTIONS)),
)
#: each source -> the options it reads
OPTIONS: dict[str, tuple[str, ...]] = {s.name: s.options for s in SOURCE_TABLE}
SOURCES = tuple(OPTIONS)


def sources_of_kind(*kinds: SourceKind) -> tuple[str, ...]:
    """The names of the sources of the given kinds, in declaration order."""
    return tuple(s.name for s in SOURCE_TABLE if s.kind in kinds)


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class SpecError(PipelineError):
    """A string that is not a model spec; the message says what is wrong and how to write it."""


@dataclass(frozen=True)
class ModelSpec:
    """A parsed spec: ``source``, ``ref`` (name, repo id or path) and string ``options``.
    ``str()`` writes it back in the grammar, options sorted, so a parsed spec reads back equal."""

    source: str
    ref: str
    options: dict[str, str] = field(default_factory=dict)

    def __str__(self) -> str:
        query = "&".join(f"{k}={v}" for k, v in sorted(self.options.items()))
        return f"{self.source}:{self.ref}" + (f"?{query}" if query else "")

    def option_int(self, key: str, default: int) -> int:
        raw = self.options.get(key)
        if raw is None:
            return default
        try:
            return int(raw)
        except ValueError as exc:
            raise PipelineError(f"{self}: option {key}={raw!r} must be an integer") from exc

    def option_triple(self, key: str, default: tuple[float, float, float]) -> tuple[float, ...]:
        raw = self.options.get(key)
        if raw is None:
            return default
        try:
            values = tuple(float(v) for v in raw.split(","))
        except ValueError:
            values = ()
        if len(values) != 3:
            raise PipelineError(
                f"{self}: option {key}={raw!r} must be three comma-separated numbers"
            )
        return values


def parse_spec(text: str) -> ModelSpec:
    """``"onnx:/m.onnx?layer=x"`` -> ``ModelSpec("onnx", "/m.onnx", {"layer": "x"})``; a
    ``SpecError`` for anything outside the grammar (see the module's docstring)."""
    if "%" in text:
        raise SpecError(
            f"model spec {text!r} contains '%': specs are read literally, never %-decoded; "
            "write the characters themselves (a path with '%' in it: rename or link it)"
        )
    if _CONTROL.search(text):
        raise SpecError(f"model spec {text!r} contains a control character; remove it")
    source, sep, rest = text.partition(":")
    if not sep or source not in SOURCES:
        hint = f" (sources are lower case: {source.lower()}:)" if source.lower() in SOURCES else ""
        raise SpecError(
            f"unknown model {text!r}{hint}: give a zoo name (see `transferbench models`) or "
            f"SOURCE:REF with SOURCE one of {', '.join(SOURCES)}"
        )
    ref, _, query = rest.partition("?")
    if not ref:
        raise SpecError(f"model spec {text!r} names no model after {source}:")
    return ModelSpec(source, ref, _options(text, source, query))


def _options(text: str, source: str, query: str) -> dict[str, str]:
    allowed = OPTIONS[source]
    known = ", ".join(allowed) if allowed else "none"
    options: dict[str, str] = {}
    for pair in query.split("&") if query else ():
        key, _, value = pair.partition("=")
        if key not in allowed:
            raise SpecError(
                f"model spec {text!r}: {source}: takes no option {key!r} (its options: {known})"
            )
        if key in options:
            raise SpecError(f"model spec {text!r}: option {key!r} is given twice; give it once")
        if not value:
            raise SpecError(f"model spec {text!r}: option {key!r} has no value; write {key}=...")
        options[key] = value
    return options


__all__ = [
    "IMAGE_OPTIONS",
    "OPTIONS",
    "SOURCES",
    "SOURCE_TABLE",
    "ModelSpec",
    "Source",
    "SourceKind",
    "SpecError",
    "parse_spec",
    "sources_of_kind",
]
