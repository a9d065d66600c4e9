"""The optimised CPU runtime: PyTorch models exported to ONNX and run by ONNX Runtime.

:func:`accelerate` is the one entry (``load_model`` calls it). Per model it:

1. picks the runtime (:func:`choose_runtime`: ``TB_RUNTIME=auto`` is ONNX Runtime when the
   extraction device is a CPU and PyTorch on CUDA; ``onnx`` and ``torch`` force one);
2. exports the module the PyTorch path runs (:meth:`CandidateModel.export_spec`: the tapped
   feature layer and the source head, exactly as ``forward`` computes them) with a dynamic batch
   axis (and token axis for text), once per weights fingerprint, layer, input, opset and
   exporter/ONNX Runtime versions, into ``TB_GRAPH_DIR/<key>.onnx``;
3. checks the exported graph against PyTorch on inputs of another batch size (and length)
   before storing it (:func:`~workers.pipeline.models.onnxrt.disagreement`);
4. wraps the model in :class:`OnnxRuntimeModel`, whose ``runtime`` names ONNX Runtime, so its
   features get their own cache keys.

PyTorch stays the reference: a model that cannot be exported, whose graph disagrees, or whose
session cannot be built runs on PyTorch, with the reason logged once per process.
"""

from __future__ import annotations

import contextlib
import tempfile
import threading
import warnings
from collections import OrderedDict
from pathlib import Path
from typing import Any, Literal

import numpy as np
import onnx
import onnxruntime as ort
import torch

from workers.pipeline.errors import PipelineError
from workers.pipeline.models.base import CandidateModel, ExportSpec, ModelOutput
from workers.pipeline.models.onnxrt import (
    ORT_VERSION,
    GraphStore,
    disagreement,
    graph_key,
    make_session,
    note_fallback,
)
from workers.pipeline.runtime import configure, resolve_device
from workers.settings import Settings

OPSET = 17
EXPORT_FORMAT = 1  # bump when what an exported graph computes changes
RUNTIME = f"onnxruntime-{ORT_VERSION}/torch-{torch.__version__}-opset{OPSET}-v{EXPORT_FORMAT}"

# Sessions by (graph file, threads): models sharing a trunk (minilm-l6 and minilm-intent) and
# repeated loads of one model share one session and its weights. The most recently used
# MAX_SESSIONS are kept: a long-lived worker that meets many models over its life would
# otherwise hold every one's weights for ever (a model still in use keeps its own session).
MAX_SESSIONS = 4
_SESSIONS: OrderedDict[tuple[str, int], ort.InferenceSession] = OrderedDict()
_SESSIONS_LOCK = threading.Lock()  # the embedded service loads models on several threads
_FAILED: dict[str, str] = {}


def store_for(settings: Settings) -> GraphStore:
    """The graph store: ``TB_GRAPH_DIR``, by default ``TB_DATA_DIR/runtimes/onnx``."""
    return GraphStore(settings.graph_store_dir)


def choose_runtime(settings: Settings) -> Literal["onnx", "torch"]:
    """``TB_RUNTIME``: ``torch``; ``onnx``; ``auto`` = ONNX Runtime unless the device is CUDA."""
    if settings.runtime != "auto":
        return settings.runtime
    try:
        device = resolve_device(settings.device)
    except PipelineError:  # TB_DEVICE=cuda without a GPU: extraction reports it
        return "torch"
    return "torch" if device.type == "cuda" else "onnx"


class OnnxRuntimeModel(CandidateModel):
    """A PyTorch model whose forward pass runs on ONNX Runtime (CPU).

    Only the middle of ``forward`` changes: the reference model still turns a batch into
    input tensors (:meth:`feeds`) and the graph's outputs into features and probabilities
    (:meth:`finish`: softmax, or its own linear head). Every other attribute is the reference
    model's (``name``, ``recipe``, ``layer``, ``fingerprint``, ``module``, ...).
    """

    def __init__(
        self,
        reference: CandidateModel,
        session: ort.InferenceSession,
        graph: str,
        store: GraphStore | None = None,
        threads: int = 1,
    ) -> None:
        self.reference = reference
        self.runtime = RUNTIME
        # Models sharing a trunk share the exported graph, so its key names the trunk here.
        self.trunk = f"onnx:{graph}" if reference.trunk is not None else None
        self._session = session
        self._inputs = [i.name for i in session.get_inputs()]
        self._outputs = [o.name for o in session.get_outputs()]
        self._store, self._threads = store, threads
        #: multi-layer graphs (:meth:`for_layers`), by the extra layers they give
        self._layered: dict[tuple[int, ...], ort.InferenceSession] = {}

    def __getattr__(self, name: str) -> Any:
        if name == "reference":  # not set yet (copy, unpickling): no recursion
            raise AttributeError(name)
        return getattr(self.reference, name)

    @property
    def modality(self) -> str:
        return self.reference.modality

    @property
    def has_head(self) -> bool:
        return self.reference.has_head

    def tokenize(self, texts: list[str]) -> dict[str, torch.Tensor]:
        return self.reference.tokenize(texts)

    def token_lengths(self, texts: list[str]) -> list[int]:
        return self.reference.token_lengths(texts)

    def feeds(self, batch: Any) -> dict[str, torch.Tensor]:
        return self.reference.feeds(batch)

    def finish(self, features: torch.Tensor, logits: torch.Tensor | None) -> ModelOutput:
        return self.reference.finish(features, logits)

    def to(self, device: torch.device, precision: str = "auto") -> OnnxRuntimeModel:
        return self  # ONNX Runtime's CPU provider; the reference stays on the CPU too

    def _run(self, session: ort.InferenceSession, batch: Any) -> list[torch.Tensor]:
        feeds = self.reference.feeds(batch)
        inputs = [i.name for i in session.get_inputs()]
        arrays = {name: np.ascontiguousarray(feeds[name].cpu().numpy()) for name in inputs}
        try:
            outputs = session.run([o.name for o in session.get_outputs()], arrays)
        except Exception as exc:  # onnxruntime raises its own exception types
            if "allocat" in str(exc).lower():
                raise RuntimeError(f"{self.name}: out of memory in ONNX Runtime") from exc
            raise PipelineError(
                f"{self.name}: ONNX Runtime failed ({exc.__class__.__name__}: {exc}); "
                "TB_RUNTIME=torch runs it on PyTorch"
            ) from exc
        return [torch.from_numpy(np.asarray(o)) for o in outputs]

    def forward(self, batch: Any) -> ModelOutput:
        tensors = self._run(self._session, batch)
        return self.reference.finish(tensors[0], tensors[1] if len(tensors) > 1 else None)

    # -- layers: the reference's, from one graph that gives them all -----------------------
    def layers_unsupported(self) -> str | None:
        return self.reference.layers_unsupported()

    def layer_names(self) -> tuple[str, ...]:
        return self.reference.layer_names()

    def for_layers(self, extra: tuple[int, ...]) -> CandidateModel:
        """This model, with a graph exported from the reference's multi-layer module (checked
        against it as the single-layer one is); the PyTorch reference when that fails (the
        reason logged once), whose ``runtime`` then keys the features."""
        if not extra or extra in self._layered:
            return self
        spec = self.reference.export_spec(extra)
        if spec is None or self._store is None:
            return self.reference
        key = graph_key(export_identity(self.reference, spec))
        if key in _FAILED:
            return self.reference
        try:
            self._layered[extra] = exported_session(spec, key, self._store, self._threads)
        except Exception as exc:
            _FAILED[key] = f"{exc.__class__.__name__}: {str(exc)[:300]}"
            note_fallback(key, f"{self.name}: its layers run on PyTorch: {_FAILED[key]}")
            return self.reference
        return self

    def forward_layers(self, batch: Any, extra: tuple[int, ...]) -> ModelOutput:
        if not extra:
            return self.forward(batch)
        if extra not in self._layered and self.for_layers(extra) is not self:
            return self.reference.forward_layers(batch, extra)
        tensors = self._run(self._layered[extra], batch)
        n = len(extra)
        result = self.reference.finish(tensors[n], tensors[n + 1] if len(tensors) > n + 1 else None)
        layers = tuple(t.numpy().astype(np.float32, copy=False) for t in tensors[:n])
        return ModelOutput(result.features, result.probs, layers)


def export_identity(model: CandidateModel, spec: ExportSpec) -> dict[str, Any]:
    """Everything that decides the exported graph; its sha256 names the file."""
    return {
        "format": EXPORT_FORMAT,
        "class": type(model).__name__,
        "weights": spec.weights,
        **spec.identity,
        "outputs": list(spec.outputs),
        "opset": OPSET,
        "torch": torch.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": ORT_VERSION,
    }


def export_onnx(spec: ExportSpec) -> bytes:
    """Trace ``spec.module`` on ``spec.example`` into an ONNX graph (bytes)."""
    names = list(spec.example)
    axes: dict[str, dict[int, str]] = {**spec.dynamic}
    axes.update({name: {0: "batch"} for name in spec.outputs})
    with (
        tempfile.TemporaryDirectory(prefix="tb-export-") as folder,
        warnings.catch_warnings(),
        torch.no_grad(),
        spec.tracing(),
    ):
        # The TorchScript-based exporter: it needs no onnxscript, and it warns that it is
        # deprecated and about traced Python conditions; the check below is the real test.
        warnings.simplefilter("ignore")
        target = Path(folder) / "model.onnx"
        torch.onnx.export(
            spec.module.eval(),
            tuple(spec.example.values()),
            target,
            input_names=names,
            output_names=list(spec.outputs),
            dynamic_axes=axes,
            opset_version=OPSET,
            do_constant_folding=True,
            dynamo=False,
        )
        return target.read_bytes()


def check(spec: ExportSpec, session: ort.InferenceSession) -> None:
    """Raise ``PipelineError`` unless the session reproduces ``spec.module`` on ``spec.check``."""
    with torch.no_grad():
        out = spec.module(*spec.check.values())
    reference = [t.float().numpy() for t in (out if isinstance(out, tuple | list) else (out,))]
    inputs = [i.name for i in session.get_inputs()]
    candidate = session.run(None, {n: spec.check[n].numpy() for n in inputs})
    reason = disagreement(reference, candidate)
    if reason:
        raise PipelineError(f"the exported graph disagrees with PyTorch: {reason}")


def exported_session(
    spec: ExportSpec, key: str, store: GraphStore, threads: int
) -> ort.InferenceSession:
    """The graph named ``key`` from the store (exported from ``spec``, checked and stored the
    first time) in a session; raises on any failure."""
    path = store.path(key)
    with _SESSIONS_LOCK:
        cached = _SESSIONS.get((str(path), threads))
        if cached is not None:
            _SESSIONS.move_to_end((str(path), threads))
            return cached
    session = None
    if path.is_file():
        try:
            session = make_session(path, threads)
        except Exception:  # a damaged file: export again (and replace it, where it may)
            with contextlib.suppress(OSError):
                path.unlink(missing_ok=True)
    if session is None:
        data = export_onnx(spec)
        session = make_session(data, threads)
        check(spec, session)
        store.put(key, data)
    with _SESSIONS_LOCK:
        _SESSIONS[(str(path), threads)] = session
        while len(_SESSIONS) > MAX_SESSIONS:
            _SESSIONS.popitem(last=False)
    return session


def accelerate(model: CandidateModel, settings: Settings) -> CandidateModel:
    """``model`` on ONNX Runtime when the runtime says so and it exports; else ``model``."""
    if choose_runtime(settings) != "onnx":
        return model
    spec = model.export_spec()
    if spec is None:
        return model
    key = graph_key(export_identity(model, spec))
    if key in _FAILED:
        return model
    try:
        session = exported_session(spec, key, store_for(settings), configure(settings.num_threads))
    except Exception as exc:
        _FAILED[key] = f"{exc.__class__.__name__}: {str(exc)[:300]}"
        note_fallback(key, f"{model.name}: running on PyTorch, not ONNX Runtime: {_FAILED[key]}")
        return model
    return OnnxRuntimeModel(
        model, session, key, store_for(settings), configure(settings.num_threads)
    )
