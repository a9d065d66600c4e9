"""Text models on text pairs and on the words of tokenized sentences.

- Pairs: :func:`tokenize_pairs` encodes ``(text, text_pair)`` with the model's tokenizer's own
  pair encoding (``tokenizer(texts, text_pairs)``: its separator tokens and segment ids), so the
  model's usual forward pass (PyTorch or the exported graph) gives one feature row per pair.
- Words: :func:`word_features` runs each sentence once, split into words
  (``is_split_into_words``), and gives every word the mean of its subwords' vectors in the same
  hidden state the model's sentence features come from (a transformers encoder's last hidden
  state, a sentence-transformers pipeline's ``token_embeddings``), grouped by the fast
  tokenizer's ``word_ids``. Special tokens belong to no word. A sentence longer than the
  model's maximum length is encoded in consecutive chunks of whole words, each within it.

These run the PyTorch module: an ONNX Runtime model's exported graph returns pooled sentence
features only, so word features come from its reference PyTorch model (:func:`torch_model`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from workers.pipeline.errors import PipelineError
from workers.pipeline.models.base import CandidateModel
from workers.pipeline.models.text import HFTextModel, SentenceTransformerModel


def torch_model(model: CandidateModel) -> CandidateModel:
    """The PyTorch model behind ``model`` (an ONNX Runtime model's reference), else itself."""
    reference = getattr(model, "reference", None)
    return reference if isinstance(reference, CandidateModel) else model


def _tokenizer(model: CandidateModel) -> tuple[Any, int]:
    """The model's (fast) tokenizer and the maximum length it encodes to."""
    model = torch_model(model)
    if isinstance(model, HFTextModel):
        return model.tokenizer, int(model.recipe.max_length)
    if isinstance(model, SentenceTransformerModel):
        limit = int(model.model.max_seq_length or model.recipe.max_length)
        return model.model.tokenizer, limit
    raise PipelineError(
        f"{model.name}: text pairs and token classification need a transformers or "
        "sentence-transformers text model (its tokenizer and hidden states)"
    )


def tokenize_pairs(
    model: CandidateModel, texts: Sequence[str], pairs: Sequence[str]
) -> dict[str, torch.Tensor]:
    """``tokenizer(texts, pairs)``, padded and truncated to the model's maximum length (the
    longer text of a pair loses tokens first): the token tensors ``(B, T)`` its forward takes."""
    tokenizer, limit = _tokenizer(model)
    encoded = tokenizer(
        list(texts),
        list(pairs),
        padding=True,
        truncation="longest_first",
        max_length=limit,
        return_tensors="pt",
    )
    return dict(encoded)


def pair_token_lengths(
    model: CandidateModel, texts: Sequence[str], pairs: Sequence[str]
) -> list[int]:
    """Each pair's length in tokens once encoded and truncated (for batching)."""
    tokenizer, limit = _tokenizer(model)
    ids = tokenizer(list(texts), list(pairs), truncation="longest_first", max_length=limit)
    return [len(row) for row in ids["input_ids"]]


def _fast(tokenizer: Any, name: str) -> None:
    if not getattr(tokenizer, "is_fast", False):
        raise PipelineError(
            f"{name}: token classification maps subwords to words through a fast tokenizer's "
            "word ids; this model's tokenizer is a slow (Python) one"
        )


def word_chunks(
    model: CandidateModel, sentences: Sequence[Sequence[str]]
) -> list[list[tuple[int, int]]]:
    """For each sentence, the ``(start, stop)`` word ranges it is encoded in: the whole
    sentence when its subwords fit the model's maximum length, else consecutive runs of whole
    words that each fit (a word longer than that on its own is one run, truncated)."""
    tokenizer, limit = _tokenizer(model)
    _fast(tokenizer, model.name)
    budget = max(1, limit - tokenizer.num_special_tokens_to_add(pair=False))
    encoded = tokenizer(
        [list(words) for words in sentences], is_split_into_words=True, add_special_tokens=False
    )
    chunks: list[list[tuple[int, int]]] = []
    for row, words in enumerate(sentences):
        counts = np.bincount(
            [w for w in encoded.word_ids(row) if w is not None], minlength=len(words)
        )
        runs, start, used = [], 0, 0
        for index, count in enumerate(counts.tolist()):
            if used and used + count > budget:
                runs.append((start, index))
                start, used = index, 0
            used += count
        runs.append((start, len(words)))
        chunks.append(runs)
    return chunks


def _hidden(
    model: CandidateModel, tokens: dict[str, torch.Tensor], extra: tuple[int, ...] = ()
) -> torch.Tensor:
    """The per-token hidden states ``(S, B, T, D)`` the model's features pool: the hidden
    states ``extra`` (indices into a transformers encoder's ``hidden_states``) and last the
    one its sentence features pool, all from one forward pass."""
    feeds = model.feeds(tokens)
    with model.computing():
        if isinstance(model, HFTextModel):
            if extra:
                out = model.model(**feeds, output_hidden_states=True)
                states = [out.hidden_states[i] for i in extra] + [out.last_hidden_state]
            else:
                states = [model.model(**feeds).last_hidden_state]
        else:
            assert isinstance(model, SentenceTransformerModel)
            if extra and model.layers_unsupported():
                raise PipelineError(model.layers_unsupported() or f"{model.name}: no layers")
            states = model.token_states(feeds, extra)
    return torch.stack([state.float() for state in states])


def pool_words(
    hidden: torch.Tensor, word_ids: Sequence[Sequence[int | None]], n_words: Sequence[int]
) -> tuple[list[torch.Tensor], torch.Tensor]:
    """``hidden`` ``(S, B, T, D)`` (S hidden states) and each row's word id per token -> per
    row ``(S, n_words, D)``, each word's mean over its tokens (tokens of no word, padding and
    specials, left out), and ``(B, max n_words)`` how many tokens each word had."""
    _, batch, length, _ = hidden.shape
    width = max(n_words)
    assign = torch.zeros(batch, width, length, dtype=hidden.dtype, device=hidden.device)
    for row, ids in enumerate(word_ids):
        for position, word in enumerate(ids):
            if word is not None:
                assign[row, word, position] = 1.0
    counts = assign.sum(dim=2, keepdim=True)
    pooled = (assign @ hidden) / counts.clamp(min=1.0)  # (S, B, W, D)
    return [pooled[:, row, : n_words[row]] for row in range(batch)], counts.squeeze(-1)


def word_features(
    model: CandidateModel, sentences: Sequence[Sequence[str]], extra: tuple[int, ...] = ()
) -> list[torch.Tensor]:
    """Each sentence's word features ``(n_words, D)`` float32 (on the CPU), from one forward
    pass over ``sentences`` as a batch (chunks of a long sentence are rows of it). With
    ``extra`` (hidden-state indices), ``(len(extra) + 1, n_words, D)``: those hidden states'
    word features first, the last hidden state's last, from the same pass. A word the
    tokenizer gives no token is an error naming it."""
    model = torch_model(model)
    tokenizer, limit = _tokenizer(model)
    _fast(tokenizer, model.name)
    pieces: list[list[str]] = []
    owners: list[tuple[int, int]] = []  # (sentence, first word) of each piece
    for index, runs in enumerate(word_chunks(model, sentences)):
        for start, stop in runs:
            pieces.append(list(sentences[index][start:stop]))
            owners.append((index, start))
    encoded = tokenizer(
        pieces,
        is_split_into_words=True,
        padding=True,
        truncation=True,
        max_length=limit,
        return_tensors="pt",
    )
    word_ids = [encoded.word_ids(row) for row in range(len(pieces))]
    tokens = {name: value for name, value in encoded.items() if isinstance(value, torch.Tensor)}
    hidden = _hidden(model, tokens, extra)
    pooled, counts = pool_words(hidden, word_ids, [len(p) for p in pieces])
    out: list[list[torch.Tensor]] = [[] for _ in sentences]
    for row, (piece, (index, start)) in enumerate(zip(pieces, owners, strict=True)):
        empty = (counts[row, : len(piece)] == 0).nonzero().flatten().tolist()
        if empty:
            word = piece[empty[0]]
            raise PipelineError(
                f"{model.name}: its tokenizer gives no token for the word {word!r} (word "
                f"{start + empty[0]} of the sentence {' '.join(sentences[index][:8])!r}...); "
                "remove or replace that word"
            )
        out[index].append(pooled[row].cpu())
    joined = [torch.cat(parts, dim=1) for parts in out]  # (S, n_words, D) each
    return joined if extra else [states[0] for states in joined]


def sentence_lengths(model: CandidateModel, sentences: Sequence[Sequence[str]]) -> list[int]:
    """Each tokenized sentence's length in tokens once encoded and truncated (for batching)."""
    tokenizer, limit = _tokenizer(model)
    ids = tokenizer(
        [list(words) for words in sentences],
        is_split_into_words=True,
        truncation=True,
        max_length=limit,
    )
    return [len(row) for row in ids["input_ids"]]


def _is_pairs(samples: Sequence[object]) -> bool:
    return bool(samples) and isinstance(samples[0], tuple)


def sample_lengths(model: CandidateModel, samples: Sequence[Any]) -> list[int]:
    """Texts or text pairs (``(text, text_pair)`` tuples) -> their lengths in tokens."""
    if _is_pairs(samples):
        return pair_token_lengths(model, [s[0] for s in samples], [s[1] for s in samples])
    return model.token_lengths([str(s) for s in samples])


def sample_tokens(model: CandidateModel, samples: Sequence[Any]) -> dict[str, torch.Tensor]:
    """Texts (``model.tokenize``) or text pairs (:func:`tokenize_pairs`) -> token tensors."""
    if _is_pairs(samples):
        return tokenize_pairs(model, [s[0] for s in samples], [s[1] for s in samples])
    return model.tokenize([str(s) for s in samples])
