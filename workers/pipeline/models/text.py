"""Text encoders: Hugging Face transformers and sentence-transformers, with an optional
linear head (weights as plain arrays) on top."""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np
import torch
from torch import nn

from workers.pipeline.models.base import CandidateModel, ExportSpec, ModelOutput, softmax
from workers.pipeline.models.fingerprint import module_sha256, tensors_sha256
from workers.pipeline.models.preprocessing import TextRecipe


@dataclass(frozen=True)
class LinearHead:
    """A source classifier as plain arrays: ``probs = softmax(x @ weight.T + bias)``.

    - ``weight``: ``(Z, D)`` float32, ``bias``: ``(Z,)`` float32, ``classes``: Z names.
    - ``normalize_input``: L2-normalise ``x`` first (the head was fitted on unit embeddings).
    """

    weight: np.ndarray
    bias: np.ndarray
    classes: tuple[str, ...]
    normalize_input: bool = False

    def __call__(self, features: torch.Tensor) -> np.ndarray:
        """``features``: ``(B, D)`` -> ``(B, Z)`` float32 probabilities."""
        x = features.float().cpu()
        if self.normalize_input:
            x = torch.nn.functional.normalize(x, dim=-1)
        logits = x @ torch.from_numpy(self.weight).T + torch.from_numpy(self.bias)
        return softmax(logits)

    def fingerprint(self) -> str:
        return tensors_sha256({"weight": self.weight, "bias": self.bias}, salt=str(self.classes))


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``hidden``: ``(B, T, D)``, ``mask``: ``(B, T)`` -> ``(B, D)`` mean over real tokens."""
    weights = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1e-9)


# Export and verification inputs: lengths that differ within a batch (padding) and between
# the two batches, so a traced constant batch size or length cannot pass the check.
EXAMPLE_TEXTS = ["a short one", "a noticeably longer sentence, so that this batch needs padding"]
CHECK_TEXTS = [
    "compilers turn source code into programs that machines can run, one pass after another",
    "hi",
    "the weather is nice today",
]


def tensor_names(tokens: dict[str, Any]) -> tuple[str, ...]:
    """The names of a tokenizer's tensor outputs, in its order: the encoder's inputs."""
    return tuple(name for name, value in tokens.items() if isinstance(value, torch.Tensor))


class MeanPooled(nn.Module):
    """A transformers encoder: token tensors (positionally, in ``names`` order) ->
    ``(features (B, D),)``, the mask-weighted mean of the last hidden state. With ``extra``
    (hidden-state indices), the mean of each of those hidden states comes first, from the
    same forward pass: ``(*extra, features)``."""

    def __init__(
        self, model: nn.Module, names: tuple[str, ...], extra: tuple[int, ...] = ()
    ) -> None:
        super().__init__()
        self.model, self.names, self.extra = model, names, extra

    def forward(self, *tokens: torch.Tensor) -> tuple[torch.Tensor, ...]:
        inputs = dict(zip(self.names, tokens, strict=True))
        mask = inputs["attention_mask"]
        if not self.extra:
            return (mean_pool(self.model(**inputs).last_hidden_state, mask),)
        out = self.model(**inputs, output_hidden_states=True)
        layers = tuple(mean_pool(out.hidden_states[i], mask) for i in self.extra)
        return (*layers, mean_pool(out.last_hidden_state, mask))


class SentenceEmbedding(nn.Module):
    """A sentence-transformers pipeline: token tensors -> ``(sentence_embedding (B, D),)``.
    With ``extra`` (hidden-state indices of its transformer), the mask-weighted mean of each
    of those hidden states comes first, from the same forward pass: ``(*extra, embedding)``;
    the embedding is still the pipeline's own (its pooling and normalisation)."""

    def __init__(
        self, model: nn.Module, names: tuple[str, ...], extra: tuple[int, ...] = ()
    ) -> None:
        super().__init__()
        self.model, self.names, self.extra = model, names, extra

    def forward(self, *tokens: torch.Tensor) -> tuple[torch.Tensor, ...]:
        features = dict(zip(self.names, tokens, strict=True))
        if not self.extra:
            return (self.model(features)["sentence_embedding"],)
        first, *rest = list(self.model.children())
        with _hidden_states(_encoder(self.model)):
            features = first(features, output_hidden_states=True)
        hidden = features.pop("all_layer_embeddings")
        mask = features["attention_mask"]
        layers = tuple(mean_pool(hidden[i], mask) for i in self.extra)
        for module in rest:
            features = module(features)
        return (*layers, features["sentence_embedding"])


def _encoder(pipeline: Any) -> Any:
    """The transformers model inside a sentence-transformers pipeline's first module, or
    None when it has none (a pipeline of word embeddings, say)."""
    first = pipeline[0] if len(pipeline) else None
    for attribute in ("auto_model", "model"):
        encoder = getattr(first, attribute, None)
        if hasattr(getattr(encoder, "config", None), "output_hidden_states"):
            return encoder
    return None


@contextlib.contextmanager
def _hidden_states(encoder: Any) -> Iterator[None]:
    """The encoder's config asking for its hidden states while inside: the sentence-
    transformers module hands them on (``all_layer_embeddings``) only when it does."""
    before = encoder.config.output_hidden_states
    encoder.config.output_hidden_states = True
    try:
        yield
    finally:
        encoder.config.output_hidden_states = before


@contextlib.contextmanager
def eager_attention(encoder: Any) -> Iterator[None]:
    """A transformers encoder with its attention as plain MatMul/Softmax ops while inside.

    For the export: the exporter's graph of ``scaled_dot_product_attention`` guards every
    softmax with Where/IsNaN, ~15% of ONNX Runtime's time on MiniLM; eager attention is the
    same arithmetic (the export's check compares it with the SDPA the PyTorch path runs).
    """
    config = getattr(encoder, "config", None)
    before = getattr(config, "_attn_implementation", None)
    setter = getattr(encoder, "set_attn_implementation", None)
    if before in (None, "eager") or setter is None:
        yield
        return
    setter("eager")
    try:
        yield
    finally:
        setter(before)


def _text_export_spec(
    model: CandidateModel,
    module: nn.Module,
    weights: str,
    kind: str,
    encoder: Any,
    extra: tuple[int, ...] = (),
) -> ExportSpec:
    example = model.feeds(model.tokenize(EXAMPLE_TEXTS))
    axes = {0: "batch", 1: "tokens"}
    identity: dict[str, Any] = {"kind": kind, "layer": model.layer, "inputs": list(example)}
    pipeline = getattr(model, "pipeline_identity", None)
    if pipeline is not None:
        identity["pipeline"] = pipeline
    if extra:
        identity["hidden_states"] = list(extra)
    return ExportSpec(
        module=module,
        example=example,
        check=model.feeds(model.tokenize(CHECK_TEXTS)),
        dynamic={name: axes for name in example},
        outputs=(*(f"layer{i}" for i in extra), "features"),
        weights=weights,
        identity=identity,
        tracing=partial(eager_attention, encoder),
    )


class HFTextModel(CandidateModel):
    """A transformers encoder (``AutoModel``); features: mean-pooled last hidden state."""

    def __init__(
        self,
        *,
        name: str,
        source: str,
        model: Any,
        tokenizer: Any,
        recipe: TextRecipe,
        head: LinearHead | None = None,
    ) -> None:
        self.name = name
        self.source = source
        self.model = model.eval()
        # padding on the right, whatever the folder's tokenizer says: a left-padded batch
        # shifted each text's positions by the padding before it, so its features changed
        # with the lengths of the texts it was batched with (mean pooling skips the padding
        # on either side)
        tokenizer.padding_side = "right"
        self.tokenizer = tokenizer
        self.recipe: TextRecipe = recipe
        self.head = head
        self.layer = "last_hidden_state:mean"
        self.encoder_fingerprint = module_sha256(model)
        self.fingerprint = tensors_sha256(
            {}, salt=f"{self.encoder_fingerprint}|{head.fingerprint() if head else ''}"
        )
        self.head_classes = head.classes if head else None
        self.net = MeanPooled(self.model, tensor_names(self.tokenize(EXAMPLE_TEXTS)))
        self.trunk = f"torch:{self.encoder_fingerprint}:{self.layer}"
        self._hidden_states: int | None = None

    def to(self, device: torch.device, precision: str = "auto") -> HFTextModel:
        self.place(device, precision)
        self.model.to(device)
        return self

    def tokenize(self, texts: list[str]) -> dict[str, torch.Tensor]:
        encoded = self.tokenizer(
            texts,
            padding=True,
            truncation=True,
            max_length=self.recipe.max_length,
            return_tensors="pt",
        )
        return dict(encoded)

    def token_lengths(self, texts: list[str]) -> list[int]:
        ids = self.tokenizer(texts, truncation=True, max_length=self.recipe.max_length)
        return [len(row) for row in ids["input_ids"]]

    def feeds(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {name: batch[name].to(self.device) for name in self.net.names}

    def finish(self, features: torch.Tensor, logits: torch.Tensor | None = None) -> ModelOutput:
        feats = features.float()
        probs = self.head(feats) if self.head is not None else None
        return ModelOutput(feats.cpu().numpy().astype(np.float32), probs)

    def forward(self, batch: dict[str, torch.Tensor]) -> ModelOutput:
        """``batch``: token tensors ``(B, T)`` -> features ``(B, D)``, probs ``(B, Z)``."""
        with self.computing():
            (features,) = self.net(*self.feeds(batch).values())
        return self.finish(features)

    def export_spec(self, extra: tuple[int, ...] = ()) -> ExportSpec:
        """Batch and token axes dynamic; the head stays outside the graph (see :meth:`finish`),
        so models sharing this encoder share the exported file. With ``extra`` (hidden-state
        indices) the graph also gives those layers, first (:meth:`forward_layers`)."""
        net = self._layer_net(extra) if extra else self.net
        return _text_export_spec(self, net, self.encoder_fingerprint, "hf-mean", self.model, extra)

    # -- layers: every hidden state, mean-pooled over real tokens as the last one is ---------
    def layers_unsupported(self) -> str | None:
        return None

    def layer_names(self) -> tuple[str, ...]:
        """``hidden_states.0:mean`` (the embeddings) ... one per transformer layer; the last
        is the last hidden state, :attr:`layer`. Counted once on an example batch."""
        if self._hidden_states is None:
            with self.computing():
                out = self.model(**self.feeds(self.tokenize(EXAMPLE_TEXTS)),
                                 output_hidden_states=True)  # fmt: skip
            self._hidden_states = len(out.hidden_states)
        count = self._hidden_states
        return (*(f"hidden_states.{i}:mean" for i in range(count - 1)), self.layer)

    def _layer_net(self, extra: tuple[int, ...]) -> MeanPooled:
        return MeanPooled(self.model, self.net.names, extra)

    def forward_layers(self, batch: dict[str, torch.Tensor], extra: tuple[int, ...]) -> ModelOutput:
        if not extra:
            return self.forward(batch)
        with self.computing():
            out = self._layer_net(extra)(*self.feeds(batch).values())
        result = self.finish(out[-1])
        layers = tuple(t.float().cpu().numpy().astype(np.float32) for t in out[:-1])
        return ModelOutput(result.features, result.probs, layers)


def _pipeline_identity(model: Any) -> str:
    """sha256 of a sentence-transformers pipeline's configuration: each module's class and
    its ``get_config_dict()``, its ``max_seq_length`` and whether it lower-cases."""
    parts: list[Any] = []
    for module in model:
        config = getattr(module, "get_config_dict", None)
        parts.append([type(module).__name__, config() if callable(config) else None])
    tokenizer = getattr(model, "tokenizer", None)
    parts.append(["max_seq_length", getattr(model, "max_seq_length", None)])
    parts.append(["do_lower_case", getattr(tokenizer, "do_lower_case", None)])
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


class SentenceTransformerModel(CandidateModel):
    """A sentence-transformers pipeline; features: its ``sentence_embedding`` (its own
    pooling and normalisation)."""

    def __init__(self, *, name: str, source: str, model: Any, recipe: TextRecipe) -> None:
        self.name = name
        self.source = source
        self.model = model.eval()
        self.recipe: TextRecipe = recipe
        self.layer = "sentence_embedding"
        self.fingerprint = module_sha256(model)
        tokenizer = getattr(model, "tokenizer", None)
        if tokenizer is not None:  # as for HFTextModel: a text's features never its batch's
            tokenizer.padding_side = "right"
        #: what decides its features besides its weights: each module's configuration (a
        #: pooling mode, a Normalize step) and its length limit. Two pipelines of the same
        #: weights pooled differently shared a feature-cache entry and an exported graph.
        self.pipeline_identity = _pipeline_identity(model)
        self.head_classes = None
        self.net = SentenceEmbedding(self.model, tensor_names(self.tokenize(EXAMPLE_TEXTS)))
        self._hidden_states: int | None = None

    def to(self, device: torch.device, precision: str = "auto") -> SentenceTransformerModel:
        self.place(device, precision)
        self.model.to(device)
        return self

    def tokenize(self, texts: list[str]) -> dict[str, torch.Tensor]:
        # sentence-transformers 6 renamed tokenize() to preprocess().
        prepare = getattr(self.model, "preprocess", None) or self.model.tokenize
        return dict(prepare(texts))

    def token_lengths(self, texts: list[str]) -> list[int]:
        limit = int(self.model.max_seq_length or self.recipe.max_length)
        ids = self.model.tokenizer(texts, truncation=True, max_length=limit)
        return [len(row) for row in ids["input_ids"]]

    def feeds(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {name: batch[name].to(self.device) for name in self.net.names}

    def finish(self, features: torch.Tensor, logits: torch.Tensor | None = None) -> ModelOutput:
        return ModelOutput(features.float().cpu().numpy().astype(np.float32), None)

    def forward(self, batch: dict[str, torch.Tensor]) -> ModelOutput:
        with self.computing():
            (features,) = self.net(*self.feeds(batch).values())
        return self.finish(features)

    # -- layers: its transformer's hidden states, mean-pooled; the last its own embedding ----
    def layers_unsupported(self) -> str | None:
        if _encoder(self.model) is not None:
            return None
        return (
            f"{self.name} is a sentence-transformers pipeline without a transformer first: it "
            "gives its sentence embedding only; rank it with layers=last"
        )

    def layer_names(self) -> tuple[str, ...]:
        """``hidden_states.0:mean`` (the embeddings) ... one per transformer layer but the
        last, whose place is the pipeline's own ``sentence_embedding`` (its pooling and
        normalisation of the last hidden state), :attr:`layer`. Counted once."""
        if _encoder(self.model) is None:
            return (self.layer,)
        if self._hidden_states is None:
            features = self.feeds(self.tokenize(EXAMPLE_TEXTS))
            with self.computing(), _hidden_states(_encoder(self.model)):
                out = self.model[0](features, output_hidden_states=True)
            self._hidden_states = len(out["all_layer_embeddings"])
        count = self._hidden_states
        return (*(f"hidden_states.{i}:mean" for i in range(count - 1)), self.layer)

    def token_states(
        self, feeds: dict[str, torch.Tensor], extra: tuple[int, ...] = ()
    ) -> list[torch.Tensor]:
        """Per-token states ``(B, T, D)`` from one pass of its first module: the transformer's
        hidden states ``extra``, then ``token_embeddings`` (what its pooling reads). Call it
        inside :meth:`computing`."""
        if not extra:
            return [self.model[0](dict(feeds))["token_embeddings"]]
        with _hidden_states(_encoder(self.model)):
            out = self.model[0](dict(feeds), output_hidden_states=True)
        hidden = out["all_layer_embeddings"]
        return [hidden[i] for i in extra] + [out["token_embeddings"]]

    def forward_layers(self, batch: dict[str, torch.Tensor], extra: tuple[int, ...]) -> ModelOutput:
        if not extra:
            return self.forward(batch)
        with self.computing():
            out = SentenceEmbedding(self.model, self.net.names, extra)(*self.feeds(batch).values())
        layers = tuple(t.float().cpu().numpy().astype(np.float32) for t in out[:-1])
        return ModelOutput(self.finish(out[-1]).features, None, layers)

    def export_spec(self, extra: tuple[int, ...] = ()) -> ExportSpec | None:
        if extra:
            return None
        encoder = getattr(self.model[0], "auto_model", None) if len(self.model) else None
        return _text_export_spec(self, self.net, self.fingerprint, "st-embedding", encoder)
