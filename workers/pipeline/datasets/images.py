"""Image datasets: a folder or zip of one subfolder per class, or images plus a manifest.

Headers are checked when the dataset is read (format, size caps, readability) and every file's
bytes are hashed; pixels are decoded later, once per batch, by the extraction.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np
from PIL import Image, UnidentifiedImageError

from workers.pipeline.datasets.archive import list_members, read_member
from workers.pipeline.datasets.base import Dataset, sha256_bytes
from workers.pipeline.datasets.tables import (
    cell,
    columns,
    first_line,
    label_column,
    parse_target,
    read_rows,
)
from workers.pipeline.errors import PipelineError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")
FORMATS = {"JPEG", "PNG", "WEBP"}
MAX_PIXELS = 40_000_000  # ~ 6300 x 6300; larger is treated as a decompression bomb
FILE_COLUMNS = ("file", "path", "image", "filename")


def check_image(data: bytes, origin: str) -> None:
    """Header-level validation: a JPEG/PNG/WebP under the pixel cap whose structure verifies."""
    if not data:
        raise PipelineError(f"{origin}: empty file")
    try:
        with warnings.catch_warnings():
            # Pillow warns above ~89M pixels; our own cap is lower and raises below.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image: Image.Image = Image.open(io.BytesIO(data))
        with image:
            if image.format not in FORMATS:
                raise PipelineError(
                    f"{origin}: {image.format} images are not supported; use JPEG, PNG or WebP"
                )
            width, height = image.size
            if width * height > MAX_PIXELS:
                raise PipelineError(
                    f"{origin}: {width}x{height} pixels is over the {MAX_PIXELS}-pixel cap "
                    "(a decompression bomb?); downscale the image"
                )
            image.verify()
    except PipelineError:
        raise
    except Image.DecompressionBombError as exc:
        raise PipelineError(
            f"{origin}: over Pillow's pixel limit (a decompression bomb?); downscale the image"
        ) from exc
    except (
        UnidentifiedImageError,
        OSError,
        SyntaxError,
        ValueError,
    ) as exc:
        raise PipelineError(
            f"{origin}: not a readable image ({exc.__class__.__name__}: {exc})"
        ) from exc


def decode(data: bytes, origin: str, draft: int | None = None) -> Image.Image:
    """Bytes -> RGB image (greyscale, palette and RGBA converted). ``draft``: the smallest side
    the consumer needs, so large JPEGs decode at reduced scale."""
    try:
        image: Image.Image = Image.open(io.BytesIO(data))
        if draft and image.format == "JPEG":
            image.draft("RGB", (draft, draft))
        if image.mode in {"RGBA", "LA"} or (image.mode == "P" and "transparency" in image.info):
            image = image.convert("RGBA")
        return image.convert("RGB")
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise PipelineError(
            f"{origin}: cannot decode image ({exc.__class__.__name__}: {exc})"
        ) from exc


class ImageSample:
    """One image; :meth:`load` decodes it to RGB."""

    origin: str

    def load(self, draft: int | None = None) -> Image.Image:
        raise NotImplementedError


@dataclass(frozen=True)
class FileImage(ImageSample):
    path: Path

    @property
    def origin(self) -> str:  # type: ignore[override]
        return str(self.path)

    def load(self, draft: int | None = None) -> Image.Image:
        try:
            data = self.path.read_bytes()
        except OSError as exc:
            raise PipelineError(f"{self.path}: cannot read ({exc.strerror})") from exc
        return decode(data, self.origin, draft)


@dataclass(frozen=True)
class ZipImage(ImageSample):
    archive: Path
    member: str

    @property
    def origin(self) -> str:  # type: ignore[override]
        return f"{self.archive}!{self.member}"

    def load(self, draft: int | None = None) -> Image.Image:
        return decode(read_member(self.archive, self.member), self.origin, draft)


@dataclass(frozen=True, eq=False)
class ArrayImage(ImageSample):
    """An in-memory ``(H, W)`` or ``(H, W, 3)`` uint8 image (built-in datasets)."""

    pixels: np.ndarray
    origin: str = "array"

    def load(self, draft: int | None = None) -> Image.Image:
        return Image.fromarray(self.pixels).convert("RGB")


def _is_image_name(name: str) -> bool:
    return name.lower().endswith(IMAGE_SUFFIXES)


def _hidden(part: str) -> bool:
    return part.startswith(".") or part == "__MACOSX"


def read_image_folder(root: Path) -> Dataset:
    """``root/<class>/<image>``: one subfolder per class."""
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not _hidden(p.name))
    if not class_dirs:
        raise PipelineError(
            f"{root}: no class subfolders; lay images out as {root}/<class>/<image>"
        )
    samples, labels, digests = [], [], []
    for class_dir in class_dirs:
        files = sorted(p for p in class_dir.rglob("*") if p.is_file() and not _hidden(p.name))
        if not files:
            raise PipelineError(f"{class_dir}: class {class_dir.name!r} has no samples")
        for path in files:
            if not _is_image_name(path.name):
                raise PipelineError(f"{path}: not a .jpg/.jpeg/.png/.webp image")
            data = path.read_bytes()
            check_image(data, str(path))
            samples.append(FileImage(path))
            labels.append(class_dir.name)
            digests.append(sha256_bytes(data))
    return Dataset(
        root.name, "image", samples, np.asarray(labels), digests, origin=str(root)
    ).validate()


def read_image_zip(archive: Path) -> Dataset:
    """A zip holding ``<class>/<image>`` (optionally under one top folder)."""
    members = [
        m
        for m in list_members(archive)
        if not any(_hidden(p) for p in PurePosixPath(m.filename).parts)
    ]
    paths = [PurePosixPath(m.filename) for m in members]
    tops = {p.parts[0] for p in paths if len(p.parts) > 1}
    strip = 1 if len(tops) == 1 and all(len(p.parts) >= 3 for p in paths) else 0
    samples, labels, digests = [], [], []
    for info, path in zip(members, paths, strict=True):
        parts = path.parts[strip:]
        origin = f"{archive}!{info.filename}"
        if len(parts) < 2:
            raise PipelineError(f"{origin}: not inside a class folder; lay out <class>/<image>")
        if not _is_image_name(path.name):
            raise PipelineError(f"{origin}: not a .jpg/.jpeg/.png/.webp image")
        data = read_member(archive, info.filename)
        check_image(data, origin)
        samples.append(ZipImage(archive, info.filename))
        labels.append(parts[0])
        digests.append(sha256_bytes(data))
    if not samples:
        raise PipelineError(f"{archive}: no images in the zip")
    order = np.argsort(np.asarray([s.member for s in samples]), kind="stable")
    dataset = Dataset(
        archive.stem, "image", samples, np.asarray(labels), digests, origin=str(archive)
    )
    return dataset.select(order).validate()


def read_image_manifest(manifest: Path) -> Dataset:
    """CSV/JSONL rows ``file,label`` (class) or ``file,target`` (number, regression); files are
    relative to the manifest's folder and must stay inside it."""
    rows = read_rows(manifest)
    cols = columns(rows)
    file_col = next((c for c in FILE_COLUMNS if c in cols), None)
    if file_col is None:
        raise PipelineError(f"{manifest}: no file column (one of {', '.join(FILE_COLUMNS)})")
    label_col, target = label_column(cols, manifest)
    root = manifest.parent.resolve()
    samples, labels, digests = [], [], []
    for line, row in enumerate(rows, start=first_line(manifest)):
        name = str(cell(row, file_col, manifest, line))
        path = (root / name).resolve()
        if not path.is_relative_to(root):
            raise PipelineError(
                f"{manifest}: row {line}: {name!r} is outside the manifest's folder"
            )
        if not path.is_file():
            raise PipelineError(f"{manifest}: row {line}: image {name!r} not found")
        value = cell(row, label_col, manifest, line)
        labels.append(parse_target(value, manifest, line) if target == "regression" else str(value))
        data = path.read_bytes()
        check_image(data, str(path))
        samples.append(FileImage(path))
        digests.append(sha256_bytes(data))
    label_array = np.asarray(labels, dtype=np.float64 if target == "regression" else None)
    return Dataset(
        manifest.stem, "image", samples, label_array, digests, target=target, origin=str(manifest)
    ).validate()
