"""Image datasets: a folder or zip of one subfolder per class, or images plus a manifest.

Every image's header is checked when the dataset is read (format, pixel cap, structure) and
its bytes are hashed. With ``decode=True`` (uploads) every image is also decoded in full, so a
corrupt one fails when the dataset is read, never later in the extraction: JPEGs at 1/8 scale,
which still reads every byte of their compressed data but skips most of the pixel work.

Caps: ``MAX_PIXELS`` per image and ``MAX_JPEG_SCANS`` per JPEG (checked before decoding), and
``MAX_TOTAL_PIXELS`` decoded per dataset (with ``decode=True``).
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np
from PIL import Image, UnidentifiedImageError

from workers.pipeline.datasets.archive import ZipReader, list_members, read_member
from workers.pipeline.datasets.base import Dataset, class_name, label_array, sha256_bytes
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
#: decoded pixels per dataset, JPEGs counted at the 1/8 scale they are checked at: 200,000
#: images (the zip's entry cap) of ~280 x 280 each
MAX_TOTAL_PIXELS = 16_000_000_000
#: a progressive JPEG is decoded once per scan; encoders write about 10 (a baseline JPEG's
#: decoder stops after its first complete scan, so its markers are not counted)
MAX_JPEG_SCANS = 100
FILE_COLUMNS = ("file", "path", "image", "filename")


def _open(data: bytes, origin: str) -> Image.Image:
    """The image's header: JPEG, PNG or WebP (no other parser sees the bytes), within the caps."""
    if not data:
        raise PipelineError(f"{origin}: empty file")
    try:
        with warnings.catch_warnings():
            # Pillow warns above ~89M pixels; our own cap is lower and raises below.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image: Image.Image = Image.open(io.BytesIO(data), formats=sorted(FORMATS))
    except Image.DecompressionBombError as exc:
        raise PipelineError(
            f"{origin}: over Pillow's pixel limit (a decompression bomb?); downscale the image"
        ) from exc
    except UnidentifiedImageError as exc:
        raise PipelineError(
            f"{origin}: not a readable image: not JPEG, PNG or WebP, or its header is corrupt; "
            "re-save it as JPEG, PNG or WebP"
        ) from exc
    except Exception as exc:  # any parser error on hostile bytes means the same
        raise PipelineError(
            f"{origin}: not a readable image ({exc.__class__.__name__}: {exc})"
        ) from exc
    if image.format not in FORMATS:
        image.close()
        raise PipelineError(
            f"{origin}: {image.format} images are not supported; use JPEG, PNG or WebP"
        )
    # Only a progressive JPEG decodes once per scan: a baseline one stops at the end of its
    # first complete scan. Counting markers costs ~200 us for a 1024-px photo, so only there.
    progressive = image.format == "JPEG" and image.info.get("progressive")
    scans = data.count(b"\xff\xda") if progressive else 0
    if scans > MAX_JPEG_SCANS:
        image.close()
        raise PipelineError(
            f"{origin}: a JPEG of {scans} scans, over the {MAX_JPEG_SCANS}-scan "
            "cap (MAX_JPEG_SCANS; each scan decodes the whole image again); re-save it as a "
            "baseline JPEG"
        )
    width, height = image.size
    if width * height > MAX_PIXELS:
        image.close()
        raise PipelineError(
            f"{origin}: {width}x{height} pixels is over the {MAX_PIXELS}-pixel cap "
            "(MAX_PIXELS; a decompression bomb?); downscale the image"
        )
    return image


#: Greyscale modes wider than 8 bits (16-bit PNGs and TIFFs; Pillow opens some as 32-bit
#: ``I``): their 0..65535 range is scaled to 0..255. Pillow's own conversion clips at 255, so
#: a 16-bit image came out nearly all white.
WIDE_GREY = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I"})


def _narrow(image: Image.Image) -> Image.Image:
    """A greyscale image wider than 8 bits as 8-bit ``L`` (0..65535 scaled to 0..255, values
    outside clipped); any other image as it is."""
    if image.mode not in WIDE_GREY:
        return image
    wide = np.asarray(image).astype(np.float64)
    grey = np.rint(np.clip(wide, 0, 65535) / 257.0).astype(np.uint8)
    return Image.fromarray(grey, "L")


def _rgb(image: Image.Image) -> Image.Image:
    """Greyscale (8- or 16-bit), palette and RGBA converted to RGB, as the extraction sees
    them."""
    image = _narrow(image)
    if image.mode in {"RGBA", "LA"} or (image.mode == "P" and "transparency" in image.info):
        image = image.convert("RGBA")
    return image.convert("RGB")


def check_image(data: bytes, origin: str, *, decode: bool = False) -> int:
    """Validate one image; returns the pixels decoded (0 without ``decode``).

    Header checks always; without ``decode``, also the structure Pillow can verify cheaply;
    with it, a full decode (JPEGs at 1/8 scale) and the conversion to RGB.
    """
    image = _open(data, origin)
    try:
        with image:
            if not decode:
                image.verify()
                return 0
            if image.format == "JPEG":
                image.draft("RGB", (1, 1))  # the smallest scale libjpeg offers: 1/8
            image.load()
            _rgb(image.crop((0, 0, 1, 1)))
            return image.width * image.height
    except Exception as exc:  # a decoder's error on hostile bytes, whatever its class
        raise PipelineError(
            f"{origin}: not a readable image ({exc.__class__.__name__}: {exc})"
        ) from exc


class _Budget:
    """Decoded pixels so far, against ``MAX_TOTAL_PIXELS``."""

    def __init__(self, where: object) -> None:
        self.where = where
        self.pixels = 0

    def add(self, pixels: int) -> None:
        self.pixels += pixels
        if self.pixels > MAX_TOTAL_PIXELS:
            raise PipelineError(
                f"{self.where}: the images hold more than {MAX_TOTAL_PIXELS:,} pixels in all, "
                "over the cap (MAX_TOTAL_PIXELS; decompression bombs?); downscale the images or "
                "split the dataset"
            )


def _for_geometry(image: Image.Image) -> Image.Image:
    """8-bit greyscale as it is (wider greyscale narrowed to it), everything else as RGB
    (:func:`_rgb`).

    A resize works on each band alone with the same weights, so resizing one grey band and
    repeating it gives the pixels of converting to RGB first, at a third of the work (Fashion-
    MNIST upscaled to 256 px: 155 us against 333 us per image); the recipe repeats the band
    (:meth:`~workers.pipeline.models.preprocessing.ImageRecipe.geometry`).
    """
    image = _narrow(image)
    return image if image.mode == "L" else _rgb(image)


def decode(data: bytes, origin: str, draft: int | None = None) -> Image.Image:
    """Bytes -> RGB image, or ``L`` for 8-bit greyscale (palette, RGBA and other modes
    converted to RGB). ``draft``: the smallest side the consumer needs, so large JPEGs decode
    at reduced scale."""
    image = _open(data, origin)
    try:
        if draft and image.format == "JPEG":
            image.draft("RGB", (draft, draft))
        image.load()  # here, so a broken file fails as one whatever its mode (L stays lazy)
        return _for_geometry(image)
    except Exception as exc:  # a decoder's error on hostile bytes, whatever its class
        raise PipelineError(
            f"{origin}: cannot decode image ({exc.__class__.__name__}: {exc})"
        ) from exc


def decode_each(data: bytes, origin: str, drafts: Sequence[int]) -> list[Image.Image]:
    """``data`` decoded for each of ``drafts``, each exactly as ``decode(data, origin, d)``
    gives it, so an image's pixels for one consumer never depend on which others share the
    decode (a JPEG drafted for the largest of several sizes gave a smaller one other pixels,
    about 6% of its features apart, than decoding for it alone). A JPEG is decoded once per
    distinct reduced size its drafts come to (read from its header; most often one), any other
    format once."""
    wanted = list(dict.fromkeys(drafts))
    reduced: dict[int, tuple[int, int] | None] = dict.fromkeys(wanted)
    if len(wanted) > 1 and data[:3] == b"\xff\xd8\xff":
        for d in wanted:
            with _open(data, origin) as probe:
                probe.draft("RGB", (d, d))  # sets the reduced size; decodes nothing
                reduced[d] = probe.size
    decoded: dict[tuple[int, int] | None, Image.Image] = {}
    for d in wanted:
        if reduced[d] not in decoded:
            decoded[reduced[d]] = decode(data, origin, d)
    return [decoded[reduced[d]] for d in drafts]


def plain_jpeg(data: bytes, origin: str) -> bool:
    """Whether ``data`` is a JPEG another decoder may take as it is: 8-bit greyscale or
    YCbCr/RGB (CMYK and other modes go through :func:`decode`). The header is checked against
    the same caps as :func:`decode` (a :class:`PipelineError` otherwise); nothing is decoded."""
    image = _open(data, origin)
    with image:
        return image.format == "JPEG" and image.mode in {"L", "RGB"}


class ImageSample:
    """One image; :meth:`load` decodes it to RGB, or ``L`` when it is 8-bit greyscale."""

    origin: str

    def load(self, draft: int | None = None) -> Image.Image:
        raise NotImplementedError

    def load_each(self, drafts: Sequence[int]) -> list[Image.Image]:
        """The image as :meth:`load` gives it for each of ``drafts``, decoding as few times as
        that allows (:func:`decode_each`)."""
        data = self.read()
        if data is None:
            image = self.load()
            return [image] * len(drafts)
        return decode_each(data, self.origin, drafts)

    def read(self) -> bytes | None:
        """The encoded bytes, or None for an image held decoded in memory."""
        return None


@dataclass(frozen=True)
class FileImage(ImageSample):
    path: Path

    @property
    def origin(self) -> str:  # type: ignore[override]
        return str(self.path)

    def read(self) -> bytes:
        try:
            return self.path.read_bytes()
        except OSError as exc:
            raise PipelineError(f"{self.path}: cannot read ({exc.strerror})") from exc

    def load(self, draft: int | None = None) -> Image.Image:
        return decode(self.read(), self.origin, draft)


@dataclass(frozen=True)
class ZipImage(ImageSample):
    """One entry of a zip; the samples of one dataset share ``reader``, so its handle is
    opened once and closed with the dataset."""

    archive: Path
    member: str
    reader: ZipReader | None = field(default=None, compare=False, repr=False)

    @property
    def origin(self) -> str:  # type: ignore[override]
        return f"{self.archive}!{self.member}"

    def read(self) -> bytes:
        if self.reader is None:
            return read_member(self.archive, self.member)
        return self.reader.read(self.member)

    def load(self, draft: int | None = None) -> Image.Image:
        return decode(self.read(), self.origin, draft)


@dataclass(frozen=True, eq=False)
class ArrayImage(ImageSample):
    """An in-memory ``(H, W)`` or ``(H, W, 3)`` uint8 image (built-in datasets)."""

    pixels: np.ndarray
    origin: str = "array"

    def load(self, draft: int | None = None) -> Image.Image:
        return _for_geometry(Image.fromarray(self.pixels))


def _is_image_name(name: str) -> bool:
    return name.lower().endswith(IMAGE_SUFFIXES)


def _hidden(part: str) -> bool:
    return part.startswith(".") or part == "__MACOSX"


def read_image_folder(root: Path, *, decode: bool = False) -> Dataset:
    """``root/<class>/<image>``: one subfolder per class. ``decode``: see :func:`check_image`."""
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not _hidden(p.name))
    if not class_dirs:
        raise PipelineError(
            f"{root}: no class subfolders; lay images out as {root}/<class>/<image>"
        )
    samples: list[ImageSample] = []
    labels: list[object] = []
    digests: list[bytes] = []
    budget = _Budget(root)
    for class_dir in class_dirs:
        files = sorted(p for p in class_dir.rglob("*") if p.is_file() and not _hidden(p.name))
        if not files:
            raise PipelineError(f"{class_dir}: class {class_dir.name!r} has no samples")
        for path in files:
            if not _is_image_name(path.name):
                raise PipelineError(f"{path}: not a .jpg/.jpeg/.png/.webp image")
            data = path.read_bytes()
            budget.add(check_image(data, str(path), decode=decode))
            samples.append(FileImage(path))
            labels.append(class_dir.name)
            digests.append(sha256_bytes(data))
    return Dataset(
        root.name,
        "image",
        samples,
        label_array(labels, "classification", str(root)),
        digests,
        origin=str(root),
    ).validate()


def read_image_zip(archive: Path, *, decode: bool = False) -> Dataset:
    """A zip holding ``<class>/<image>`` (optionally under one top folder). Read through one
    handle, closed when this returns; the samples reopen it on demand (see :class:`ZipReader`).
    ``decode``: see :func:`check_image`."""
    members = [
        m
        for m in list_members(archive)
        if not any(_hidden(p) for p in PurePosixPath(m.filename).parts)
    ]
    paths = [PurePosixPath(m.filename) for m in members]
    tops = {p.parts[0] for p in paths if len(p.parts) > 1}
    strip = 1 if len(tops) == 1 and all(len(p.parts) >= 3 for p in paths) else 0
    samples: list[ZipImage] = []
    labels: list[object] = []
    digests: list[bytes] = []
    budget = _Budget(archive)
    with ZipReader(archive) as reader:
        for info, path in zip(members, paths, strict=True):
            parts = path.parts[strip:]
            origin = f"{archive}!{info.filename}"
            if len(parts) < 2:
                raise PipelineError(f"{origin}: not inside a class folder; lay out <class>/<image>")
            if not _is_image_name(path.name):
                raise PipelineError(f"{origin}: not a .jpg/.jpeg/.png/.webp image")
            data = reader.read(info.filename)
            budget.add(check_image(data, origin, decode=decode))
            samples.append(ZipImage(archive, info.filename, reader))
            labels.append(parts[0])
            digests.append(sha256_bytes(data))
    if not samples:
        raise PipelineError(f"{archive}: no images in the zip")
    order = np.argsort(np.asarray([s.member for s in samples]), kind="stable")
    dataset = Dataset(
        archive.stem,
        "image",
        samples,
        label_array(labels, "classification", str(archive)),
        digests,
        origin=str(archive),
    )
    return dataset.select(order).validate()


def read_image_manifest(manifest: Path, *, decode: bool = False) -> Dataset:
    """CSV/JSONL rows ``file,label`` (class) or ``file,target`` (number, regression); files are
    relative to the manifest's folder and must stay inside it. ``decode``: see
    :func:`check_image`."""
    rows = read_rows(manifest)
    cols = columns(rows)
    file_col = next((c for c in FILE_COLUMNS if c in cols), None)
    if file_col is None:
        raise PipelineError(f"{manifest}: no file column (one of {', '.join(FILE_COLUMNS)})")
    label_col, target = label_column(cols, manifest)
    root = manifest.parent.resolve()
    samples: list[ImageSample] = []
    labels: list[object] = []
    digests: list[bytes] = []
    budget = _Budget(manifest)
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
        labels.append(
            parse_target(value, manifest, line) if target == "regression" else class_name(value)
        )
        data = path.read_bytes()
        budget.add(check_image(data, str(path), decode=decode))
        samples.append(FileImage(path))
        digests.append(sha256_bytes(data))
    return Dataset(
        manifest.stem,
        "image",
        samples,
        label_array(labels, target, str(manifest)),
        digests,
        target=target,
        origin=str(manifest),
    ).validate()
