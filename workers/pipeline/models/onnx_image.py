"""Image models in ONNX files, run by onnxruntime, with features from a named graph value."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch

from workers.pipeline.errors import PipelineError
from workers.pipeline.models.base import CandidateModel, ModelOutput, pool, softmax
from workers.pipeline.models.fingerprint import file_sha256
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
        options = ort.SessionOptions()
        options.intra_op_num_threads = num_threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        self._session = ort.InferenceSession(
            graph_model.SerializeToString(), options, providers=["CPUExecutionProvider"]
        )
        self._input = self._session.get_inputs()[0].name
        self._value = value
        self.name = name
        self.source = source
        self.recipe: ImageRecipe = recipe
        self.layer = value
        self.fingerprint = file_sha256(path)
        self.head_classes = head_classes if value != self._head_name else None

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
