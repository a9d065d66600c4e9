"""Loading code for each model source. Weights are never unpickled as arbitrary objects:
``torch.load(..., weights_only=True)`` or safetensors."""

from __future__ import annotations

import hashlib
import json
import os
import socket
from collections.abc import Callable, Iterable
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import torch
from torch import nn

from workers.pipeline.errors import PipelineError
from workers.pipeline.models.base import CandidateModel
from workers.pipeline.models.exported import choose_runtime, store_for
from workers.pipeline.models.onnx_image import OnnxImageModel
from workers.pipeline.models.preprocessing import ImageRecipe, TextRecipe
from workers.pipeline.models.spec import image_recipe
from workers.pipeline.models.text import HFTextModel, SentenceTransformerModel
from workers.pipeline.models.torch_image import PENULTIMATE, TorchImageModel
from workers.pipeline.models.torchscript_image import TorchScriptImageModel
from workers.pipeline.specs import ModelSpec
from workers.settings import Settings


@cache
def imagenet_classes() -> tuple[str, ...]:
    """The 1000 ImageNet-1k class names, in the standard index order (class 698 = palace)."""
    import torchvision

    return tuple(torchvision.models.MobileNet_V2_Weights.IMAGENET1K_V1.meta["categories"])


def _class_names(count: int) -> tuple[str, ...]:
    return imagenet_classes() if count == 1000 else tuple(str(i) for i in range(count))


def load_weights_file(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from ``.safetensors`` or a torch file, without running pickled code."""
    if not path.is_file():
        raise PipelineError(f"weights file not found: {path}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise PipelineError(
            f"{path}: cannot read weights ({exc.__class__.__name__}: {str(exc)[:200]}); "
            "give a state dict saved with torch.save(model.state_dict()) or safetensors"
        ) from exc
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise PipelineError(f"{path}: not a state dict of tensors")
    return state


#: how long the hub may take to accept a connection before it counts as unreachable
HUB_PROBE_TIMEOUT_S = 3.0


def hub_reachable(timeout: float = HUB_PROBE_TIMEOUT_S) -> bool:
    """Whether the Hugging Face hub (``HF_ENDPOINT``) accepts a connection within ``timeout``
    seconds. Without network its client retries for about a minute before it gives up; this
    answers at once, so a hub spec that cannot be fetched fails fast (cached ones still load)."""
    from huggingface_hub import constants

    url = urlsplit(constants.ENDPOINT)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname or "", port), timeout=timeout):
            return True
    except OSError:
        return False


#: weight files ``from_pretrained`` reads from a repository's root, in its order of preference
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".h5", ".msgpack")


def weights_bytes(siblings: Iterable[Any]) -> int | None:
    """What loading a hub repository downloads, from its file list (``rfilename``, ``size``):
    its root-level weight files of the first kind it holds (safetensors before ``.bin``, as
    ``from_pretrained`` prefers them); None when the list does not give their sizes."""
    root = [s for s in siblings if "/" not in s.rfilename]
    for suffix in WEIGHT_SUFFIXES:
        files = [s for s in root if s.rfilename.endswith(suffix)]
        if files:
            sizes = [s.size for s in files]
            return None if any(size is None for size in sizes) else int(sum(sizes))
    return 0


def check_hub_size(spec: ModelSpec, repo: str, settings: Settings) -> None:
    """Refuse a hub repository whose weights are larger than ``TB_MAX_MODEL_MB`` before a byte
    of them is downloaded: a registration names any repository, and a worker would otherwise
    fetch hundreds of gigabytes onto its disk. A repository the hub does not describe (no
    network, private, unknown) is left to the loader, which says what is wrong."""
    from huggingface_hub import HfApi

    try:
        info = HfApi().model_info(repo, files_metadata=True, timeout=3 * HUB_PROBE_TIMEOUT_S)
    except Exception:  # the loader's own error says it better
        return
    size = weights_bytes(info.siblings or [])
    if size is not None and size > settings.max_model_mb * 2**20:
        raise PipelineError(
            f"{spec}: its weights are {size / 2**30:.1f} GiB, more than the "
            f"{settings.max_model_mb} MiB a model may download (TB_MAX_MODEL_MB); pick a "
            "smaller model, or ask the operator to raise the limit"
        )


def _local_only(settings: Settings) -> bool:
    """Read hub models from the local cache alone: offline mode, or a hub out of reach."""
    return settings.offline or not hub_reachable()


def _fetch_failed(spec: ModelSpec, exc: BaseException, settings: Settings) -> PipelineError:
    if settings.offline:
        hint = "offline mode is on (HF_HUB_OFFLINE/TB_OFFLINE) and the weights are not cached"
    elif not hub_reachable():
        hint = "the hub cannot be reached from here and the weights are not cached"
    else:
        hint = "no network or the name is wrong"
    return PipelineError(
        f"cannot fetch weights for {spec} ({hint}: {exc.__class__.__name__}); fetch them once "
        "where there is network, or pass a local file, e.g. statedict:FILE?arch=NAME"
    )


def _torchvision(spec: ModelSpec, name: str, settings: Settings) -> CandidateModel:
    import torchvision

    try:
        weights_enum = torchvision.models.get_model_weights(spec.ref)
    except ValueError as exc:
        raise PipelineError(f"{spec}: torchvision has no architecture {spec.ref!r}") from exc
    weights_name = spec.options.get("weights", "DEFAULT")
    try:
        weights = weights_enum[weights_name] if weights_name != "DEFAULT" else weights_enum.DEFAULT
    except KeyError as exc:
        options = ", ".join(w.name for w in weights_enum)
        raise PipelineError(f"{spec}: no weights {weights_name!r}; one of {options}") from exc
    cached = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(weights.url)
    if settings.offline and not cached.is_file():
        raise _fetch_failed(spec, FileNotFoundError(str(cached)), settings)
    try:
        state = weights.get_state_dict(progress=False, check_hash=True)
    except Exception as exc:
        raise _fetch_failed(spec, exc, settings) from exc
    module = torchvision.models.get_model(spec.ref, weights=None)
    module.load_state_dict(state, strict=True)
    tf = weights.transforms()
    recipe = image_recipe(
        spec,
        ImageRecipe(
            size=tf.crop_size[0],
            resize=tf.resize_size[0],
            interpolation=tf.interpolation.value,
            mean=tuple(m * 255 for m in tf.mean),
            std=tuple(s * 255 for s in tf.std),
        ),
    )
    return TorchImageModel(
        name=name,
        source=str(spec),
        module=module,
        recipe=recipe,
        layer=spec.options.get("layer", PENULTIMATE),
        head_classes=tuple(weights.meta["categories"]),
    )


def _timm_recipe(module: nn.Module) -> ImageRecipe:
    from timm.data.config import resolve_data_config

    cfg = resolve_data_config({}, model=module)
    size = int(cfg["input_size"][-1])
    interpolation = cfg.get("interpolation", "bilinear")
    return ImageRecipe(
        size=size,
        resize=int(size / cfg.get("crop_pct", 0.875)),
        interpolation=interpolation if interpolation in {"bilinear", "bicubic"} else "bilinear",
        mean=tuple(m * 255 for m in cfg["mean"]),
        std=tuple(s * 255 for s in cfg["std"]),
    )


def _timm(spec: ModelSpec, name: str, settings: Settings) -> CandidateModel:
    import timm

    if not timm.is_model(spec.ref.split(".")[0]):
        raise PipelineError(f"{spec}: timm has no model {spec.ref!r} (see timm.list_models())")
    if spec.ref.startswith("hf-hub:") and not _local_only(settings):
        check_hub_size(spec, spec.ref.removeprefix("hf-hub:"), settings)
    try:
        module = timm.create_model(spec.ref, pretrained=True)
    except Exception as exc:
        raise _fetch_failed(spec, exc, settings) from exc
    classes = getattr(module, "num_classes", 0) or 0
    return TorchImageModel(
        name=name,
        source=str(spec),
        module=module,
        recipe=image_recipe(spec, _timm_recipe(module)),
        layer=spec.options.get("layer", PENULTIMATE),
        head_classes=_class_names(classes) if classes else None,
    )


def _state_dict(spec: ModelSpec, name: str, settings: Settings) -> CandidateModel:
    arch = spec.options.get("arch")
    if not arch:
        raise PipelineError(f"{spec}: say which architecture the weights are for, ?arch=NAME")
    state = load_weights_file(Path(spec.ref).expanduser())
    num_classes = spec.option_int("num_classes", 1000)
    base = ImageRecipe()
    try:
        if arch.startswith("timm:"):
            import timm

            module = timm.create_model(arch[5:], pretrained=False, num_classes=num_classes)
            base = _timm_recipe(module)
        else:
            import torchvision

            module = torchvision.models.get_model(arch, weights=None, num_classes=num_classes)
    except (ValueError, RuntimeError, KeyError) as exc:
        raise PipelineError(f"{spec}: unknown architecture {arch!r} ({exc})") from exc
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise PipelineError(
            f"{spec}: the weights do not fit {arch} ({str(exc).splitlines()[0]}); "
            "check ?arch= and ?num_classes="
        ) from exc
    return TorchImageModel(
        name=name,
        source=str(spec),
        module=module,
        recipe=image_recipe(spec, base),
        layer=spec.options.get("layer", PENULTIMATE),
        head_classes=_class_names(num_classes) if num_classes else None,
    )


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """sha256 of a fast tokenizer's full JSON (vocab, normaliser, special tokens), without its
    padding and truncation state: every call with ``padding=True`` rewrites that state, and a
    fingerprint taken after one must equal one taken before."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        text = repr(sorted(tokenizer.get_vocab().items()))
    else:
        state = json.loads(backend.to_str())
        state.pop("padding", None)
        state.pop("truncation", None)
        text = json.dumps(state, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def load_hf_encoder(ref: str, settings: Settings, spec: ModelSpec) -> tuple[Any, Any]:
    """``(AutoModel, AutoTokenizer)`` from a repo id or a local folder."""
    from transformers import AutoModel, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()

    local = Path(ref).expanduser()
    if (ref.startswith((".", "/", "~")) or local.exists()) and not local.is_dir():
        raise PipelineError(f"{spec}: model folder not found: {local}")
    target = str(local) if local.is_dir() else ref
    local_only = local.is_dir() or _local_only(settings)  # a folder: never the hub
    if not local_only:
        check_hub_size(spec, ref, settings)
    try:
        tokenizer = AutoTokenizer.from_pretrained(target, local_files_only=local_only)
        model = AutoModel.from_pretrained(target, local_files_only=local_only)
    except Exception as exc:
        raise _fetch_failed(spec, exc, settings) from exc
    return model, tokenizer


def position_limit(model: Any) -> int | None:
    """The most tokens ``model`` numbers positions for (its config's
    ``max_position_embeddings``, less RoBERTa's offset for its padding index); None when it
    does not say."""
    config = getattr(model, "config", None)
    limit = getattr(config, "max_position_embeddings", None)
    if not isinstance(limit, int) or limit <= 0:
        return None
    if getattr(config, "model_type", "") in {"roberta", "xlm-roberta", "camembert", "longformer"}:
        limit -= int(getattr(config, "pad_token_id", 1) or 0) + 1
    return limit


def _hf(spec: ModelSpec, name: str, settings: Settings) -> CandidateModel:
    model, tokenizer = load_hf_encoder(spec.ref, settings, spec)
    limit = position_limit(model)
    default = min(512, tokenizer.model_max_length, limit or 512)
    max_length = spec.option_int("max_length", default)
    if limit is not None and max_length > limit:
        raise PipelineError(
            f"{spec}: max_length={max_length} is over the {limit} positions the model has "
            f"(its max_position_embeddings); give max_length={limit} or less"
        )
    recipe = TextRecipe(
        tokenizer=spec.ref,
        max_length=max_length,
        tokenizer_fingerprint=tokenizer_fingerprint(tokenizer),
    )
    return HFTextModel(name=name, source=str(spec), model=model, tokenizer=tokenizer, recipe=recipe)


def _sentence_transformers(spec: ModelSpec, name: str, settings: Settings) -> CandidateModel:
    from sentence_transformers import SentenceTransformer

    local = Path(spec.ref).expanduser()
    target = str(local) if local.is_dir() else spec.ref
    local_only = local.is_dir() or _local_only(settings)  # a folder: never the hub
    if not local_only:
        check_hub_size(spec, spec.ref, settings)
    try:
        model = SentenceTransformer(target, device="cpu", local_files_only=local_only)
    except Exception as exc:
        raise _fetch_failed(spec, exc, settings) from exc
    recipe = TextRecipe(
        tokenizer=spec.ref,
        max_length=int(model.max_seq_length or 256),
        tokenizer_fingerprint=tokenizer_fingerprint(model.tokenizer),
    )
    return SentenceTransformerModel(name=name, source=str(spec), model=model, recipe=recipe)


def _onnx(spec: ModelSpec, name: str, settings: Settings) -> CandidateModel:
    from workers.pipeline.runtime import configure

    head = spec.options.get("head", "1") not in {"0", "false", "no"}
    return OnnxImageModel(
        name=name,
        source=str(spec),
        path=Path(spec.ref).expanduser(),
        recipe=image_recipe(spec),
        layer=spec.options.get("layer", "auto"),
        head_classes=_onnx_head_classes(Path(spec.ref).expanduser()) if head else None,
        num_threads=configure(settings.num_threads),
        store=store_for(settings) if choose_runtime(settings) == "onnx" else None,
    )


def _onnx_head_classes(path: Path) -> tuple[str, ...] | None:
    import onnx

    try:
        graph = onnx.load(str(path), load_external_data=False).graph
    except Exception:
        return None  # OnnxImageModel reports the unreadable file
    dims = graph.output[0].type.tensor_type.shape.dim if graph.output else []
    if len(dims) == 2 and dims[1].dim_value > 1:
        return tuple(str(i) for i in range(dims[1].dim_value))
    return None


def _torchscript(spec: ModelSpec, name: str, settings: Settings) -> CandidateModel:
    return TorchScriptImageModel(
        name=name,
        source=str(spec),
        path=Path(spec.ref).expanduser(),
        recipe=image_recipe(spec),
        has_head=spec.options.get("head", "0") in {"1", "true", "yes"},
    )


#: each source of :data:`workers.pipeline.specs.SOURCE_TABLE` -> its loader, in that order
LOADERS: dict[str, Callable[[ModelSpec, str, Settings], CandidateModel]] = {
    "torchvision": _torchvision,
    "timm": _timm,
    "hf": _hf,
    "st": _sentence_transformers,
    "onnx": _onnx,
    "torchscript": _torchscript,
    "statedict": _state_dict,
}


def load_spec(spec: ModelSpec, settings: Settings, name: str | None = None) -> CandidateModel:
    """Load a model from a spec; ``name`` defaults to the spec string."""
    return LOADERS[spec.source](spec, name or str(spec), settings)
