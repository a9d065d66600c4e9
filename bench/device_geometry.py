"""What decoding and resizing on the device (``TB_DECODE=device``) changes, measured on the CPU:
pixels, features, every default metric's score and the ranking.

On a GPU, photos are bound by the CPU's JPEG decode (``bench/gpu.py``: 1024-px JPEGs fed
ResNet-50 in bf16 at 9% of its pure forward pass, while nvJPEG on the same GPU decoded 5,981
images/s). Decoding there means resizing there too, with tensor arithmetic rather than PIL's
fixed-point resize, and from the full-size image rather than PIL's reduced-scale (``draft``)
JPEG decode. ``TB_DECODE=device`` does this; this script measures what it changes:

- ``recipe``: the pipeline as it is (``sample.load(draft=...)`` then ``recipe.geometry``), the
  reference;
- ``draft 2x``: PIL's reduced-scale decode to at least twice the resize, then the geometry;
- ``full decode``: PIL without ``draft``, then the same geometry: how far the reduced-scale
  decode the pipeline uses moves the answer;
- ``tensor``: ``TB_DECODE=device`` on this CPU: ``torchvision.io.decode_jpeg`` (libjpeg-turbo
  here; nvJPEG's IDCT may differ by a grey level), then the resize in float32 with
  antialiasing, rounding and the centre crop, as a GPU computes them.

Each image zoo model (default runtime) runs on each variant's pixels, on Fashion-MNIST
re-encoded as 28-px JPEGs (labelled: scores and rankings) and on photos re-encoded as 1024-px
JPEGs (features only). Each variant's decode and geometry is timed per image (one thread).

    python bench/device_geometry.py [--per-class 40] [--photos 64]

Prints tables; writes bench/results/device_geometry.json.
"""

from __future__ import annotations

import argparse
import io
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torchvision.io import decode_jpeg

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from _common import agreement, machine, make_jpegs, write_report  # noqa: E402

from workers.pipeline.datasets.builtin import fashion_mnist  # noqa: E402
from workers.pipeline.datasets.images import decode  # noqa: E402
from workers.pipeline.device_input import resize_crop  # noqa: E402
from workers.pipeline.models import load_model, zoo_names  # noqa: E402
from workers.pipeline.models.base import CandidateModel  # noqa: E402
from workers.pipeline.models.preprocessing import ImageRecipe  # noqa: E402
from workers.pipeline.ranking import ModelArrays, rank_models, resolve_metrics  # noqa: E402
from workers.pipeline.runtime import configure  # noqa: E402
from workers.settings import Settings  # noqa: E402

RESULTS = HERE / "results"
Geometry = Callable[[bytes, ImageRecipe], torch.Tensor]


def recipe_geometry(data: bytes, recipe: ImageRecipe) -> torch.Tensor:
    """The pipeline's own: reduced-scale JPEG decode where the recipe allows, PIL resize."""
    return recipe.geometry(decode(data, "bench", draft=recipe.resize)).contiguous()


def draft2x_geometry(data: bytes, recipe: ImageRecipe) -> torch.Tensor:
    """Reduced-scale decode to at least twice the resize, so PIL's antialiased resize still
    does the last halving (libjpeg's reduced scale alone is a box filter, sharper)."""
    return recipe.geometry(decode(data, "bench", draft=2 * recipe.resize)).contiguous()


def full_decode_geometry(data: bytes, recipe: ImageRecipe) -> torch.Tensor:
    """PIL's full-size decode, then the same geometry."""
    return recipe.geometry(decode(data, "bench")).contiguous()


def tensor_geometry(data: bytes, recipe: ImageRecipe) -> torch.Tensor:
    """``TB_DECODE=device`` on this CPU: torchvision's decode, then the float32 resize and crop
    of :func:`workers.pipeline.device_input.resize_crop` (a GPU computes the same)."""
    pixels = decode_jpeg(torch.frombuffer(bytearray(data), dtype=torch.uint8))
    return resize_crop(pixels.unsqueeze(0), recipe)[0].contiguous()


VARIANTS: dict[str, Geometry] = {
    "recipe": recipe_geometry,
    "draft 2x": draft2x_geometry,
    "full decode": full_decode_geometry,
    "tensor": tensor_geometry,
}


def features(
    model: CandidateModel, blobs: Sequence[bytes], geometry: Geometry, batch: int = 8
) -> tuple[np.ndarray, np.ndarray | None, torch.Tensor, float]:
    """The model's features and probabilities on ``blobs`` through ``geometry``, the pixels,
    and ms per image of the decode and geometry."""
    recipe = model.recipe
    assert isinstance(recipe, ImageRecipe)
    began = time.perf_counter()
    pixels = torch.stack([geometry(b, recipe) for b in blobs])
    ms = 1e3 * (time.perf_counter() - began) / len(blobs)
    feats, probs = [], []
    for start in range(0, len(pixels), batch):
        out = model.forward(pixels[start : start + batch].contiguous())
        feats.append(out.features)
        if out.probs is not None:
            probs.append(out.probs)
    return np.concatenate(feats), (np.concatenate(probs) if probs else None), pixels, ms


def jpeg_bytes(pixels: np.ndarray, quality: int = 90) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def run_set(
    label: str,
    models: Sequence[CandidateModel],
    blobs: Sequence[bytes],
    labels: np.ndarray | None,
) -> dict[str, Any]:
    out: dict[str, Any] = {"images": len(blobs), "models": {}}
    got: dict[str, dict[str, tuple[np.ndarray, np.ndarray | None]]] = {v: {} for v in VARIANTS}
    for model in models:
        ref_pixels: torch.Tensor | None = None
        entry: dict[str, Any] = {}
        for variant, geometry in VARIANTS.items():
            feats, probs, pixels, ms = features(model, blobs, geometry)
            got[variant][model.name] = (feats, probs)
            if ref_pixels is None:
                ref_pixels = pixels
                entry[variant] = {"decode_geometry_ms": ms}
                continue
            diff = (pixels.int() - ref_pixels.int()).abs()
            ref_feats, ref_probs = got["recipe"][model.name]
            entry[variant] = {
                "decode_geometry_ms": ms,
                "pixels_max_abs": int(diff.max()),
                "pixels_mean_abs": float(diff.float().mean()),
                "features": agreement(feats, ref_feats),
                "probs_max_abs": (
                    float(np.abs(probs - ref_probs).max())
                    if probs is not None and ref_probs is not None
                    else None
                ),
            }
            f = entry[variant]["features"]
            print(
                f"  {label:13s} {model.name:20s} {variant:12s} {ms:5.2f} ms/img, pixels max {entry[variant]['pixels_max_abs']:3d} "
                f"mean {entry[variant]['pixels_mean_abs']:.2f} | features max rel {f['max_rel']:.1e} "
                f"median {f['median_rel']:.1e} min cosine {f['min_cosine']:.6f}",
                flush=True,
            )
        out["models"][model.name] = entry
    if labels is None:
        return out
    metrics = resolve_metrics(None, "classification")
    rankings: dict[str, dict[str, Any]] = {}
    for variant in VARIANTS:
        arrays = {n: ModelArrays(f, p) for n, (f, p) in got[variant].items()}
        rows = rank_models(arrays, labels, metrics)
        rankings[variant] = {r.model: {"rank": r.rank, "scores": r.scores} for r in rows}
    order = {
        v: sorted(rankings[v], key=lambda m, v=v: rankings[v][m]["rank"] or 99) for v in rankings
    }
    out["metrics"] = metrics
    out["rankings"] = {}
    for variant in VARIANTS:
        diffs = {}
        for name in rankings[variant]:
            for metric in metrics:
                g = rankings[variant][name]["scores"].get(metric)
                c = rankings["recipe"][name]["scores"].get(metric)
                if g is not None and c is not None:
                    diffs[f"{name}/{metric}"] = abs(g - c) / max(abs(c), 1e-12)
        worst = max(diffs, key=lambda k: diffs[k]) if diffs else None
        out["rankings"][variant] = {
            "order": order[variant],
            "ranking_identical": order[variant] == order["recipe"],
            "max_score_rel_diff": diffs[worst] if worst else None,
            "worst": worst,
            "score_rel_diff": diffs,
        }
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--per-class", type=int, default=40, help="Fashion-MNIST images per class")
    parser.add_argument("--photos", type=int, default=64, help="1024-px JPEGs")
    parser.add_argument("--out", type=Path, default=RESULTS / "device_geometry.json")
    args = parser.parse_args(argv)
    configure()
    settings = Settings(data_dir=Path(tempfile.mkdtemp(prefix="tb-bench-")))
    models = [load_model(name, settings) for name in zoo_names("image")]
    report: dict[str, Any] = {"machine": machine(), "torch": torch.__version__, "sets": {}}

    fmnist = fashion_mnist("t10k").subsample(args.per_class, seed=0)
    blobs = [jpeg_bytes(np.asarray(s.load())) for s in fmnist.samples]
    report["sets"]["fashion-mnist"] = run_set("fashion-mnist", models, blobs, fmnist.labels)
    with tempfile.TemporaryDirectory(prefix="tb-bench-jpegs-") as tmp:
        folder = make_jpegs(Path(tmp), args.photos)
        photos = [p.read_bytes() for p in sorted(folder.rglob("*.jpg"))]
        report["sets"]["jpeg-1024"] = run_set("jpeg-1024", models, photos, None)

    print(
        "\n| data | model | variant | decode+geometry ms/img | pixels max / mean abs "
        "| features median / max rel | min cosine |"
    )
    print("|---|---|---|---|---|---|---|")
    for data, result in report["sets"].items():
        for name, entry in result["models"].items():
            for variant, e in entry.items():
                if "features" not in e:
                    print(f"| {data} | {name} | {variant} | {e['decode_geometry_ms']:.2f} | | | |")
                    continue
                f = e["features"]
                print(
                    f"| {data} | {name} | {variant} | {e['decode_geometry_ms']:.2f} "
                    f"| {e['pixels_max_abs']} / {e['pixels_mean_abs']:.2f} "
                    f"| {f['median_rel']:.1e} / {f['max_rel']:.1e} | {f['min_cosine']:.6f} |"
                )
    ranked = report["sets"]["fashion-mnist"]["rankings"]
    print("\n| variant | ranking | same as the recipe's | largest score change |")
    print("|---|---|---|---|")
    for variant, r in ranked.items():
        change = "" if r["worst"] is None else f"{r['max_score_rel_diff']:.1e} ({r['worst']})"
        print(f"| {variant} | {', '.join(r['order'])} | {r['ranking_identical']} | {change} |")
    write_report(args.out, report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
