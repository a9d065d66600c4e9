"""Image models in ONNX files, run by onnxruntime, with features from a named graph value."""

from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch

from workers.pipeline.errors import PipelineError
from workers.pipeline.models.base import CandidateModel, ModelOutput, pool, random_images, softmax
from workers.pipeline.models.fingerprint import file_sha256
from workers.pipeline.models.onnxrt import (
    FOLD_VERSION,
    ORT_VERSION,
    GraphStore,
    disagreement,
    graph_key,
    make_session,
    note_fallback,
    optimise_native,
)
from workers.pipeline.models.preprocessing import ImageRecipe


def penultimate_value(graph: onnx.GraphProto) -> str:
    """The input of the last MatMul/Gemm node: the pooled features a linear head reads."""
    for node in reversed(graph.node):
        if node.op_type in {"MatMul", "Gemm"}:
            return str(node.input[0])
    raise PipelineError(
        "the ONNX graph has no MatMul/Gemm node to take features from; name one with ?layer=VALUE"
    )


class OnnxImageModel(CandidateModel):
    """An ONNX classifier. The feature value is added as an extra graph output.

    The graph's first output is taken as the head: probabilities when the graph ends in a
    Softmax, logits otherwise (a softmax is applied).

    With a ``store`` (the optimised runtime is on) the graph is first made cheaper for the
    CPU (:func:`~workers.pipeline.models.onnxrt.optimise_native`: batch norms exported as
    arithmetic folded into the convolutions), checked against the graph as it is, and kept in
    the store; without one, or if that fails, the graph runs as it is.
    """

    def __init__(
        self,
        *,
        name: str,
        source: str,
        path: Path,
        recipe: ImageRecipe,
        layer: str = "auto",
        head_classes: tuple[str, ...] | None = None,
        num_threads: int = 1,
        store: GraphStore | None = None,
    ) -> None:
        if not path.is_file():
            raise PipelineError(f"ONNX file not found: {path}")
        try:
            graph_model = onnx.load(str(path))
        except Exception as exc:
            raise PipelineError(f"{path}: not a readable ONNX model ({exc})") from exc
        graph = graph_model.graph
        value = penultimate_value(graph) if layer == "auto" else layer
        known = {out for node in graph.node for out in node.output}
        if value not in known:
            raise PipelineError(f"{path}: the graph has no value named {value!r}")
        self._ends_in_softmax = bool(graph.node) and graph.node[-1].op_type == "Softmax"
        self._head_name = graph.output[0].name
        if value != self._head_name:
            graph.output.append(onnx.helper.make_empty_tensor_value_info(value))
        self._value = value
        self.name = name
        self.source = source
        self.recipe: ImageRecipe = recipe
        self.layer = value
        self.fingerprint = file_sha256(path)
        self.head_classes = head_classes if value != self._head_name else None
        self.runtime = f"onnxruntime-{ORT_VERSION}"
        optimised = self._optimised(graph_model, store, num_threads) if store else None
        self._session = optimised or make_session(graph_model.SerializeToString(), num_threads)
        self._input = self._session.get_inputs()[0].name

    def _optimised(
        self, graph: onnx.ModelProto, store: GraphStore, threads: int
    ) -> ort.InferenceSession | None:
        """A session on the optimised graph from the store, or built, checked and stored (a
        stored file that does not load is built again); None on failure (logged once)."""
        key = graph_key(
            {
                "kind": "onnx-file-optimised",
                "file": self.fingerprint,
                "outputs": [self._value, self._head_name],
                "fold": FOLD_VERSION,
                "onnxruntime": ORT_VERSION,
                "onnx": onnx.__version__,
            }
        )
        path = store.path(key)
        try:
            session = None
            if path.is_file():
                with contextlib.suppress(Exception):  # damaged: built again below
                    session = make_session(path.read_bytes(), threads)
            if session is None:
                data = optimise_native(graph)
                x = random_images(self.recipe, 3, seed=1).numpy()
                names = [self._value, self._head_name]
                feed = {graph.graph.input[0].name: x}
                reference = make_session(graph.SerializeToString(), threads).run(names, feed)
                session = make_session(data, threads)
                reason = disagreement(reference, session.run(names, feed))
                if reason:
                    raise PipelineError(reason)
                store.put(key, data)
        except Exception as exc:
            note_fallback(key, f"{self.name}: running its ONNX graph unoptimised: {exc}")
            return None
        self.runtime = f"onnxruntime-{ORT_VERSION}+fold{FOLD_VERSION}"
        return session

    def layers_unsupported(self) -> str | None:
        return (
            f"{self.name} is an ONNX file: it gives only its feature value ({self.layer}); "
            "rank it with layers=last, or load another value with ?layer=VALUE"
        )

    def forward(self, batch: torch.Tensor) -> ModelOutput:
        """``batch``: ``(B, 3, H, W)`` uint8 -> features ``(B, D)``, probs ``(B, Z)``."""
        x = self.recipe.normalize(batch.cpu()).numpy()
        names = [self._value] if self.head_classes is None else [self._value, self._head_name]
        outputs = self._session.run(names, {self._input: x})
        feats = pool(torch.from_numpy(np.asarray(outputs[0]))).numpy().astype(np.float32)
        probs = None
        if self.head_classes is not None:
            head = np.asarray(outputs[1], dtype=np.float32)
            probs = head if self._ends_in_softmax else softmax(torch.from_numpy(head))
        return ModelOutput(feats, probs)
