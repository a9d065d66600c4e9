"""ONNX Runtime on the CPU: sessions, the on-disk store of optimised graphs, and the checks.

- :func:`make_session`: every ONNX graph transferbench runs goes through here: all graph
  optimisations (``ORT_ENABLE_ALL``: constant folding, fusions, the NCHWc conv layout),
  ``TB_NUM_THREADS`` intra-op threads, one inter-op thread, no spinning between runs.
- :class:`GraphStore`: graphs built once (exported from PyTorch, or cleaned up) live under
  ``TB_GRAPH_DIR/<key>.onnx`` (default ``TB_DATA_DIR/runtimes/onnx``), keyed by the sha256 of
  everything that decides them, written atomically, so a reader sees a whole file or none and
  any number of processes may share one folder.
- :func:`fold_affine_into_conv`: ``Conv -> Sub/Mul/Add`` chains with per-channel constants (a
  batch norm exported as arithmetic) folded into the convolution's weights and bias.
- :func:`disagreement`: the test a new graph passes before it is stored or used: per sample
  cosine at least 0.99999 and the largest difference within 1e-4 of the reference's scale.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper

log = logging.getLogger(__name__)
_FALLBACKS: set[str] = set()

ORT_VERSION = ort.__version__
FOLD_VERSION = 1  # bump when fold_affine_into_conv changes what it produces
MIN_COSINE = 0.99999
MAX_RELATIVE = 1e-4


def make_session(model: bytes | Path, threads: int) -> ort.InferenceSession:
    """A CPU session with every graph optimisation on and ``threads`` intra-op threads.

    Spinning is off: the pipeline decodes on the same cores meanwhile, and threads that spin
    while waiting take them (the same reason ``workers/__init__.py`` sets
    ``OMP_WAIT_POLICY=PASSIVE`` for torch). Three zoo models over Fashion-MNIST on 2 cores ran
    at 31-37 images/s without spinning, 25.5 with it, though a lone forward pass spins faster.
    """
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 3
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    source = str(model) if isinstance(model, Path) else model
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


def graph_key(identity: dict[str, Any]) -> str:
    """sha256 (hex) of a JSON-able identity."""
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()


class GraphStore:
    """ONNX files under ``root/<key>.onnx`` (``root`` is ``TB_GRAPH_DIR``)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def path(self, key: str) -> Path:
        return self.root / f"{key}.onnx"

    def put(self, key: str, data: bytes) -> Path | None:
        """Write ``data`` via a temp file in the same folder and a rename; None, logged once
        per folder, when the folder cannot be written (a read-only shared store, a full disk):
        the graph still runs from memory, it is only not kept."""
        path = self.path(key)
        tmp: str | None = None
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{key}.", suffix=".tmp")
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, path)
        except OSError as exc:
            if tmp is not None:
                Path(tmp).unlink(missing_ok=True)
            note_fallback(
                f"store:{self.root}",
                f"exported graphs are not kept: {self.root} cannot be written ({exc}); set "
                "TB_GRAPH_DIR to a writable folder to keep them",
            )
            return None
        except BaseException:
            if tmp is not None:
                Path(tmp).unlink(missing_ok=True)
            raise
        return path


def disagreement(reference: list[np.ndarray], candidate: list[np.ndarray]) -> str | None:
    """None when every ``candidate`` output matches its ``reference`` (``(B, D)`` arrays): per
    row cosine >= 0.99999 and max |difference| <= 1e-4 * max |reference|; else the reason."""
    for i, (ref, out) in enumerate(zip(reference, candidate, strict=True)):
        ref = np.asarray(ref, dtype=np.float64).reshape(len(ref), -1)
        out = np.asarray(out, dtype=np.float64).reshape(len(out), -1)
        if ref.shape != out.shape:
            return f"output {i} has shape {out.shape}, PyTorch's {ref.shape}"
        if not np.isfinite(out).all():
            return f"output {i} is not finite"
        scale = max(float(np.abs(ref).max()), 1e-12)
        worst = float(np.abs(ref - out).max()) / scale
        norms = np.linalg.norm(ref, axis=1) * np.linalg.norm(out, axis=1)
        cosine = np.where(norms > 0, (ref * out).sum(1) / np.maximum(norms, 1e-300), 1.0)
        if worst > MAX_RELATIVE or float(cosine.min()) < MIN_COSINE:
            return (
                f"output {i} differs from the reference (max relative difference {worst:.1e}, "
                f"min cosine {float(cosine.min()):.7f})"
            )
    return None


def ort_basic_passes(model: onnx.ModelProto) -> onnx.ModelProto:
    """ONNX Runtime's hardware-independent passes (constant folding, no-op casts and identities
    removed, Conv+Add fused), saved back as a graph."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    options.log_severity_level = 3
    with tempfile.TemporaryDirectory(prefix="tb-ort-") as folder:
        options.optimized_model_filepath = str(Path(folder) / "basic.onnx")
        ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        return onnx.load(options.optimized_model_filepath)


def _per_channel(value: np.ndarray, channels: int, rank: int) -> np.ndarray | None:
    """A constant that broadcasts over a ``(B, C, ...)`` conv output one value per channel,
    as ``(C,)``; None when it varies along another axis."""
    if value.size == 1:
        return np.full(channels, float(value.reshape(())))
    shape = (1,) * (rank - value.ndim) + tuple(value.shape)
    if len(shape) != rank or shape[1] != channels:
        return None
    if any(d != 1 for axis, d in enumerate(shape) if axis != 1):
        return None
    return value.reshape(channels)


def fold_affine_into_conv(model: onnx.ModelProto) -> tuple[onnx.ModelProto, int]:
    """Fold each ``Conv`` followed by ``Sub``/``Mul``/``Add`` of per-channel constants into the
    Conv: ``((W x + b) - s) * m + a == (m W) x + ((b - s) m + a)``. Returns the graph and the
    number of convolutions folded. Arithmetic in float64, stored as float32."""
    graph = model.graph
    constants = {init.name: init for init in graph.initializer}
    consumers: dict[str, list[onnx.NodeProto]] = defaultdict(list)
    for node in graph.node:
        for name in node.input:
            consumers[name].append(node)
    graph_outputs = {o.name for o in graph.output}
    removed: set[int] = set()
    new_constants: list[onnx.TensorProto] = []
    folded = 0
    for conv in graph.node:
        if conv.op_type != "Conv" or conv.input[1] not in constants:
            continue
        weight = numpy_helper.to_array(constants[conv.input[1]]).astype(np.float64)
        channels, rank = weight.shape[0], weight.ndim
        has_bias = len(conv.input) > 2 and bool(conv.input[2])
        if has_bias and conv.input[2] not in constants:
            continue
        bias = (
            numpy_helper.to_array(constants[conv.input[2]]).astype(np.float64)
            if has_bias
            else np.zeros(channels)
        )
        value, steps = conv.output[0], 0
        while value not in graph_outputs and len(consumers[value]) == 1:
            node = consumers[value][0]
            if node.op_type not in {"Sub", "Mul", "Add"} or len(node.input) != 2:
                break
            other = node.input[1] if node.input[0] == value else node.input[0]
            if other not in constants or (node.op_type == "Sub" and node.input[0] != value):
                break
            if constants[other].data_type != onnx.TensorProto.FLOAT:
                break
            c = _per_channel(numpy_helper.to_array(constants[other]), channels, rank)
            if c is None:
                break
            if node.op_type == "Sub":
                bias = bias - c
            elif node.op_type == "Add":
                bias = bias + c
            else:
                weight = weight * c.reshape((channels,) + (1,) * (rank - 1))
                bias = bias * c
            removed.add(id(node))
            value, steps = node.output[0], steps + 1
        if not steps:
            continue
        folded += 1
        names = (f"{conv.output[0]}__folded_w", f"{conv.output[0]}__folded_b")
        new_constants.append(numpy_helper.from_array(weight.astype(np.float32), names[0]))
        new_constants.append(numpy_helper.from_array(bias.astype(np.float32), names[1]))
        del conv.input[1:]
        conv.input.extend(names)
        conv.output[0] = value
    kept = [node for node in graph.node if id(node) not in removed]
    del graph.node[:]
    graph.node.extend(kept)
    graph.initializer.extend(new_constants)
    used = {name for node in graph.node for name in node.input} | graph_outputs
    unused = [init for init in graph.initializer if init.name not in used]
    for init in unused:
        graph.initializer.remove(init)
    return model, folded


def optimise_native(model: onnx.ModelProto) -> bytes:
    """An ONNX file's graph made cheaper for the CPU: ORT's basic passes, then affine chains
    folded into convolutions."""
    folded, _ = fold_affine_into_conv(ort_basic_passes(model))
    return bytes(folded.SerializeToString())


def note_fallback(key: str, message: str) -> None:
    """Log ``message`` (why a model runs on its reference path) once per process per ``key``."""
    if key not in _FALLBACKS:
        _FALLBACKS.add(key)
        log.warning(message)
