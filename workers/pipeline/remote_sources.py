"""What a remote client may name as a model source (the API checks it; the worker confines it
again when it loads the weights, on its own view of the disk).

- Which source is which kind is declared once, in :data:`workers.pipeline.specs.SOURCE_TABLE`.
- The zoo by name, and hub models by name: ``torchvision:NAME``, ``timm:NAME`` (or
  ``timm:hf-hub:ORG/NAME``), ``hf:ORG/NAME``, ``st:ORG/NAME``. A ``hub`` source is open to
  remote clients only with a rule for its names in :data:`HUB_NAMES`.
- Local files (``file`` sources, and ``hub_or_dir`` directories) only by a path relative to
  the operator's ``TB_MODEL_DIR``, never outside it (no ``..``, no
  absolute path, no symbolic link out of it). Without ``TB_MODEL_DIR``, no local file at all:
  a file a caller managed to place anywhere on the server never gets loaded (loading a
  TorchScript or pickled state dict runs code).
- The spec is read by the loader's parser (:mod:`workers.pipeline.specs`): the check judges
  the parsed values, and the worker loads that same parse, written back.
- Error messages never show a server path: ``redact`` replaces them.

Torch-free: the API imports it.
"""

from __future__ import annotations

import os
import re
from pathlib import Path, PurePosixPath

from workers.pipeline.specs import ModelSpec, SpecError, parse_spec, sources_of_kind

FILE_SOURCES = sources_of_kind("file")
HUB_OR_DIR_SOURCES = sources_of_kind("hub_or_dir")
_HUB_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,95}(/[A-Za-z0-9][A-Za-z0-9._-]{0,95})?")
_TORCHVISION = re.compile(r"[a-z][a-z0-9_]{0,63}")
_TIMM = re.compile(r"(hf-hub:[A-Za-z0-9][\w.-]{0,95}/)?[A-Za-z0-9][\w.-]{0,127}", re.ASCII)
#: each ``hub`` source -> the names a remote client may give it, and what to name instead
HUB_NAMES: dict[str, tuple[re.Pattern[str], str]] = {
    "torchvision": (_TORCHVISION, "name a torchvision architecture"),
    "timm": (_TIMM, "name a timm model (or hf-hub:ORG/NAME), not a local directory"),
}
_REMOTE_HUBS = ", ".join(
    f"{s}:"
    for s in sources_of_kind("hub", "hub_or_dir")
    if s in HUB_NAMES or s in HUB_OR_DIR_SOURCES
)
_REMOTE_FILES = ", ".join(f"{s}:" for s in FILE_SOURCES)
_ABSOLUTE_PATH = re.compile(r"(?<![\w:/])(?:/[^\s/'\"<>:]+)+/?")


class SourceRefused(ValueError):
    """A source a remote client may not name; the message says what is allowed."""


def _relative(ref: str, source: str) -> PurePosixPath:
    path = PurePosixPath(ref)
    if (
        not ref
        or "\\" in ref
        or "\x00" in ref
        or path.is_absolute()
        or ref.startswith("~")
        or any(part in ("..", "") for part in ref.split("/"))
    ):
        raise SourceRefused(
            f"{source}: sources name a file by its path relative to the server's model "
            "directory (TB_MODEL_DIR), e.g. 'onnx:team/net.onnx'; absolute paths, '~' and '..' "
            "are not accepted"
        )
    return path


_ZOO_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")


def check(spec: str, *, model_dir_set: bool) -> ModelSpec | None:
    """The parsed spec a remote client may register (None for a bare name: a zoo name, which
    the worker refuses when the zoo lacks it); ``SourceRefused`` for one it may not. The spec
    is parsed by the loader's own parser and its parsed values checked, so what passes here
    is exactly what gets loaded."""
    if ":" not in spec:
        if _ZOO_NAME.fullmatch(spec):
            return None
        raise SourceRefused(
            f"unknown model {spec!r}: give a zoo name or SOURCE:REF ({_REMOTE_HUBS}, and with "
            f"TB_MODEL_DIR set {_REMOTE_FILES})"
        )
    try:
        parsed = parse_spec(spec)
    except SpecError as exc:
        raise SourceRefused(str(exc)) from exc
    source, ref = parsed.source, parsed.ref
    arch = parsed.options.get("arch")
    if arch is not None and not (
        _TORCHVISION.fullmatch(arch) or (arch.startswith("timm:") and _TIMM.fullmatch(arch[5:]))
    ):
        raise SourceRefused(
            f"arch={arch!r}: name a torchvision architecture (mobilenet_v2) or a timm "
            "architecture (timm:resnet18), not a path or another source"
        )
    if source in HUB_NAMES:
        pattern, instead = HUB_NAMES[source]
        if not pattern.fullmatch(ref):
            raise SourceRefused(f"{source}:{ref}: {instead}")
    elif source in HUB_OR_DIR_SOURCES:
        if not _HUB_NAME.fullmatch(ref) or ".." in ref:
            _relative(ref, source)  # the message for a path
            raise SourceRefused(f"{source}:{ref}: name a hub model as ORG/NAME")
        _relative(ref, source)
    elif source in FILE_SOURCES:
        if not model_dir_set:
            raise SourceRefused(
                f"{source}: this server takes no model files from remote clients (its operator "
                f"has not set TB_MODEL_DIR); name a hub model ({_REMOTE_HUBS})"
            )
        _relative(ref, source)
    else:  # a hub source with no rule for its names: nothing a remote client gives is checked
        raise SourceRefused(f"{source}: not open to remote clients; name one of {_REMOTE_HUBS}")
    return parsed


def confine(ref: str, model_dir: Path | None, source: str) -> Path | None:
    """The real path of ``ref`` inside ``model_dir`` when it exists there; None when it does
    not (a hub name). ``SourceRefused`` when it resolves outside (a symbolic link out)."""
    _relative(ref, source)
    if model_dir is None:
        return None
    root = Path(os.path.realpath(model_dir))
    real = Path(os.path.realpath(root / ref))
    if not real.exists():
        return None
    if os.path.commonpath([root, real]) != str(root):
        raise SourceRefused(f"{source}:{ref} leads outside the model directory; not loaded")
    return real


def redact(message: str, *known: tuple[str, str]) -> str:
    """``message`` without server paths: each (path, shown-as) pair first, then any other
    absolute path as ``<server path>``."""
    for path, shown in known:
        if path:
            message = message.replace(path, shown)
    return _ABSOLUTE_PATH.sub("<server path>", message)


def resolve(spec: str, model_dir: Path | None) -> str:
    """The spec a worker loads for a remote client's ``spec``: ``check``'s parse of it written
    back, file references made real paths inside ``model_dir`` (checked again here: the file
    may have changed since)."""
    parsed = check(spec, model_dir_set=model_dir is not None)
    if parsed is None:
        return spec
    source, ref = parsed.source, parsed.ref
    if source not in FILE_SOURCES + HUB_OR_DIR_SOURCES:
        return str(parsed)
    real = confine(ref, model_dir, source)
    if real is None:
        if source in FILE_SOURCES:
            raise SourceRefused(
                f"{source}:{ref}: no such file in the server's model directory (TB_MODEL_DIR)"
            )
        if os.path.lexists(ref):  # a hub name that is also a directory here: never load it
            raise SourceRefused(f"{source}:{ref} is ambiguous on this server; name ORG/NAME")
        return str(parsed)
    loaded = ModelSpec(source, str(real), parsed.options)
    try:
        same = parse_spec(str(loaded)) == loaded
    except SpecError:
        same = False
    if not same:  # e.g. a '?' or '%' in the model directory's own path
        raise SourceRefused(
            f"{source}:{ref}: its path on the server cannot be written as a model spec; "
            "the operator should move the model directory to a plain path"
        )
    return str(loaded)
