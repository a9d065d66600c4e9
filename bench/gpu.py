"""Extraction on a GPU: the pipeline against the pure forward pass, precisions, batch sizes,
decode, the FLOP roofline, and the GPU's features against the CPU's.

In one run on a CUDA machine:

- ceilings: a large bf16 and float32 (TF32 off) matrix product, and host-to-device copies from
  pinned memory;
- per model (torchvision ResNet-50, EfficientNet-Lite0 and MobileNetV2 from the zoo): FLOPs
  per image (counted by PyTorch's FLOP counter), then images/s of the pure forward pass
  (``model.forward`` on uint8 batches already on the GPU: normalise, forward, features back to
  the host) in float32 (TF32 off) and bf16 autocast at several batch sizes, and the share of
  the FLOP roofline the best one reaches;
- the whole pipeline (``extract``: decode, resize/crop in worker processes, copies to the GPU
  from page-locked rings, forward, features to the host) at the best batch size, on
  Fashion-MNIST and on 1024-px JPEGs, with the default and 8 worker processes, as a share of the
  pure forward pass and with the share of its time spent waiting for input; beside it the input
  side alone (no model), which says whether decode can keep up at all; for the JPEGs also
  ``TB_DECODE=device`` (nvJPEG and the resize on the GPU); CPU decode per image and nvJPEG
  decode on the GPU;
- equality: each model's features and probabilities on the GPU (fp32 and bf16) against the
  same model on this machine's CPU, and every default metric's score and the ranking;
- ``torch.compile`` of ResNet-50's module against the same module eager (time to compile too).

ResNet-50's weights are torchvision's initialisation with a fixed seed: this machine has no
network, and the speed of a forward pass does not depend on the weight values. The other two
are the zoo's real pretrained weights.

    python bench/gpu.py [--n 30000] [--jpegs 2048] [--out DIR] [--smoke]

``--smoke`` runs every section at toy sizes on whatever device there is (a check of the script
on a CPU). Prints tables; writes bench/results/gpu.json (and a copy under ``--out``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterable, Iterator
from multiprocessing import Pool
from pathlib import Path
from typing import Any

import numpy as np
import torch

# The repository first: bench/scoring.py must not shadow the scoring package.
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _common import agreement

from workers.pipeline.datasets.base import Dataset
from workers.pipeline.datasets.builtin import fashion_mnist
from workers.pipeline.datasets.images import read_image_folder
from workers.pipeline.device_input import device_batches
from workers.pipeline.extraction import PREFETCH_BATCHES, ExtractionStats, extract, prefetched
from workers.pipeline.loader import decoded_batches
from workers.pipeline.models import load_model
from workers.pipeline.models.preprocessing import ImageRecipe
from workers.pipeline.models.sources import imagenet_classes
from workers.pipeline.models.torch_image import TorchImageModel
from workers.pipeline.ranking import ModelArrays, rank_models, resolve_metrics
from workers.pipeline.runtime import default_threads
from workers.settings import Settings

RESULTS = Path(__file__).resolve().parent / "results"
REPORT: dict[str, Any] = {}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _best(fn: Callable[[], object], repeats: int, device: torch.device) -> float:
    times = []
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return min(times)


def _save(out: Path | None) -> None:
    """Write the report so far to ``out`` and, unless it is a smoke run, to bench/results (a
    smoke run's toy figures must not replace a GPU's)."""
    text = json.dumps(REPORT, indent=2, default=str)
    if not REPORT.get("smoke"):
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / "gpu.json").write_text(text)
    if out is not None:
        (out / "gpu.json").write_text(text)


def _section(name: str, out: Path | None, fn: Callable[[], Any]) -> Any:
    """Run one section; a failure is recorded and the next section still runs."""
    start = time.perf_counter()
    print(f"== {name}", flush=True)
    try:
        REPORT[name] = fn()
    except Exception as exc:  # a benchmark reports what broke and goes on
        traceback.print_exc()
        REPORT[name] = {"error": f"{exc.__class__.__name__}: {exc}"}
    REPORT.setdefault("section_seconds", {})[name] = round(time.perf_counter() - start, 1)
    _save(out)
    return REPORT[name]


def environment(device: torch.device) -> dict[str, Any]:
    info: dict[str, Any] = {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cpus": len(os.sched_getaffinity(0)),
        "device": str(device),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info |= {
            "gpu": props.name,
            "multiprocessors": props.multi_processor_count,
            "memory_gib": round(props.total_memory / 2**30, 1),
            "capability": f"{props.major}.{props.minor}",
            "cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version(),
        }
    print(json.dumps(info), flush=True)
    return info


def _median_ms(fn: Callable[[], object], device: torch.device, iters: int) -> float:
    for _ in range(3):
        fn()
    _sync(device)
    times = []
    for _ in range(iters):
        if device.type == "cuda":
            start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            stop.record()
            stop.synchronize()
            times.append(start.elapsed_time(stop))
        else:
            t = time.perf_counter()
            fn()
            times.append(1000 * (time.perf_counter() - t))
    return statistics.median(times)


def ceilings(device: torch.device, smoke: bool) -> dict[str, Any]:
    n = 1024 if smoke else 8192
    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    out: dict[str, Any] = {"matmul_n": n}
    for label, dtype in (("bf16", torch.bfloat16), ("fp32", torch.float32)):
        x, y = a.to(dtype), b.to(dtype)
        if device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = False
        ms = _median_ms(lambda x=x, y=y: x @ y, device, 3 if smoke else 10)
        out[f"{label}_matmul_tflops"] = 2 * n**3 / (ms / 1000) / 1e12
    if device.type == "cuda":
        host = torch.empty(256 * 2**20, dtype=torch.uint8).pin_memory()
        target = torch.empty_like(host, device=device)
        ms = _median_ms(lambda: target.copy_(host, non_blocking=True), device, 10)
        out["h2d_pinned_gb_s"] = host.numel() / (ms / 1000) / 1e9
    print(json.dumps({k: round(v, 1) for k, v in out.items()}), flush=True)
    return out


def resnet50(seed: int = 0) -> TorchImageModel:
    import torchvision

    torch.manual_seed(seed)
    module = torchvision.models.resnet50()
    return TorchImageModel(
        name="resnet50",
        source="torchvision:resnet50 (seeded initialisation)",
        module=module,
        recipe=ImageRecipe(),
        head_classes=imagenet_classes(),
    )


def load_models() -> dict[str, TorchImageModel]:
    settings = Settings(device="cpu", runtime="torch")
    models: dict[str, Any] = {"resnet50": resnet50()}
    for name in ("efficientnet-lite0", "mobilenet-v2"):
        models[name] = load_model(name, settings)
    return models


def count_flops(model: TorchImageModel) -> float:
    """FLOPs of one image's forward pass (2 per multiply-add), counted on the CPU."""
    from torch.utils.flop_counter import FlopCounterMode

    model.to(torch.device("cpu"), "fp32")
    x = torch.zeros(1, 3, model.recipe.size, model.recipe.size, dtype=torch.uint8)
    with FlopCounterMode(display=False) as counter:
        model.forward(x)
    return float(counter.get_total_flops())


def _gpu_batches(model: TorchImageModel, bs: int, device: torch.device, sets: int = 4):
    g = torch.Generator().manual_seed(bs)
    size = model.recipe.size
    return [
        torch.randint(0, 256, (bs, 3, size, size), dtype=torch.uint8, generator=g).to(device)
        for _ in range(sets)
    ]


def pure_forward(
    models: dict[str, TorchImageModel],
    device: torch.device,
    sizes: list[int],
    images: int,
    flops: dict[str, float],
    peaks: dict[str, float],
) -> dict[str, Any]:
    """Images/s of ``model.forward`` on uint8 batches already on the device, best of 3."""
    rows = []
    for name, model in models.items():
        for precision in ("fp32", "bf16") if device.type == "cuda" else ("fp32",):
            if precision == "fp32" and device.type == "cuda" and name != "resnet50":
                continue  # float32 on the GPU: ResNet-50 only (the equality check covers all)
            model.to(device, precision)
            for bs in sizes if precision == "bf16" or device.type != "cuda" else sizes[-1:]:
                batches = _gpu_batches(model, bs, device)
                steps = max(2, images // bs)
                for b in batches[:2]:
                    model.forward(b)  # warm-up (and cuDNN's algorithm search)

                def run(batches=batches, steps=steps, model=model) -> None:
                    for i in range(steps):
                        model.forward(batches[i % len(batches)])

                seconds = _best(run, 2, device)
                img_s = steps * bs / seconds
                tflops = img_s * flops[name] / 1e12
                peak = peaks.get(precision)
                rows.append(
                    {
                        "model": name,
                        "precision": precision,
                        "batch": bs,
                        "img_s": img_s,
                        "tflops": tflops,
                        "of_matmul_ceiling": tflops / peak if peak else None,
                    }
                )
                print(
                    f"  {name:20s} {precision} bs {bs:4d}: {img_s:9.0f} img/s "
                    f"{tflops:7.1f} TFLOP/s",
                    flush=True,
                )
                del batches
    return {"rows": rows}


def best_batches(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    best: dict[str, dict[str, Any]] = {}
    for row in rows:
        key = f"{row['model']}/{row['precision']}"
        if key not in best or row["img_s"] > best[key]["img_s"]:
            best[key] = row
    return best


def repeated(dataset: Dataset, times: int) -> Dataset:
    """``dataset`` ``times`` over, one sample list (a longer job with the same images)."""
    return Dataset(
        f"{dataset.name}x{times}",
        dataset.modality,
        list(dataset.samples) * times,
        np.concatenate([dataset.labels] * times),
        list(dataset.digests) * times,
        origin=dataset.origin,
    )


def before(model: TorchImageModel, data: Dataset, bs: int, workers: int, device) -> None:
    """The GPU path as it was before the shared-memory ring: torch's DataLoader (a whole batch
    per worker, pinned copies), then the same forward pass."""
    from torch.utils.data import DataLoader
    from torch.utils.data import Dataset as TorchDataset

    recipe = model.recipe

    class Items(TorchDataset):  # type: ignore[type-arg]
        def __len__(self) -> int:
            return len(data)

        def __getitem__(self, i: int) -> torch.Tensor:
            return recipe.geometry(data.samples[i].load(draft=recipe.resize))

    loader = DataLoader(Items(), batch_size=bs, num_workers=workers, pin_memory=True)
    for batch in loader:
        model.forward(batch.to(device, non_blocking=True))


def input_only(
    data: Dataset,
    recipe: ImageRecipe,
    bs: int,
    workers: int | None,
    device: torch.device,
    decode: str = "pil",
) -> None:
    """The input side of ``extract`` with no model, at batch size ``bs``: worker decode,
    gathering and copies to ``device``, or with ``decode="device"`` decode and resize there.
    Faster than the pure forward pass, or decode sets the pace."""
    if decode == "device":
        batches = device_batches(data.samples, [recipe], bs, device)
    else:
        count = max(1, default_threads() - 1) if workers is None else workers
        batches = decoded_batches(data.samples, [recipe], bs, count, device)
    for _ in prefetched(batches, PREFETCH_BATCHES):
        pass


@contextlib.contextmanager
def decoding(models: Iterable[TorchImageModel], decode: str) -> Iterator[None]:
    """``models`` take their input decoded as ``TB_DECODE=decode`` says, for the block."""
    models = list(models)
    for model in models:
        model.decode = decode
    try:
        yield
    finally:
        for model in models:
            model.decode = "pil"


def pipeline(
    models: dict[str, TorchImageModel],
    data: Dataset,
    device: torch.device,
    best: dict[str, dict[str, Any]],
    workers: list[int | None],
    label: str,
    which: list[tuple[str, str]],
    before_workers: int | None = None,
    device_decode: bool = False,
) -> list[dict[str, Any]]:
    """``extract`` at the default batch size and worker count (None) or the given ones, as a
    share of the best pure forward; with ``before_workers``, the old loader beside it; with
    ``device_decode``, ``TB_DECODE=device`` beside it too."""
    rows = []
    n = len(data)
    last: list[ExtractionStats] = []  # the latest run's stats: where its time went

    def ring(m: TorchImageModel, w: int | None) -> None:
        last[:] = [ExtractionStats()]
        extract([m], data, num_workers=w, stats=last[0])

    def on_device(m: TorchImageModel) -> None:
        with decoding([m], "device"):
            ring(m, None)

    for name, precision in which:
        key = f"{name}/{precision}"
        if key not in best:
            continue
        model = models[name]
        model.to(device, precision)
        runs: list[tuple[str, Any, Callable[[], object]]] = []
        for w in workers if precision == which[0][1] else workers[:1]:
            runs.append(("ring", w, lambda m=model, w=w: ring(m, w)))
        if precision == which[0][1] and name == which[0][0]:
            bs = best[key]["batch"]
            if device_decode:
                runs.append(("device decode", "none", lambda m=model: on_device(m)))
                runs.append(
                    (
                        "input only, device decode",
                        "none",
                        lambda m=model, bs=bs: input_only(
                            data, m.recipe, bs, None, device, "device"
                        ),
                    )
                )
            for w in workers:
                runs.append(
                    (
                        "input only (no forward)",
                        w,
                        lambda m=model, w=w, bs=bs: input_only(data, m.recipe, bs, w, device),
                    )
                )
        if before_workers and name == "resnet50" and precision == which[0][1]:
            bs = best[key]["batch"]
            runs.append(
                (
                    "before (DataLoader)",
                    before_workers,
                    lambda m=model, bs=bs: before(m, data, bs, before_workers, device),
                )
            )
        for loader, w, fn in runs:
            last.clear()
            seconds = _best(fn, 2, device)
            row = {
                "data": label,
                "model": name,
                "precision": precision,
                "loader": loader,
                "workers": "default" if w is None else w,
                "images": n,
                "img_s": n / seconds,
                "of_pure_forward": n / seconds / best[key]["img_s"],
            }
            wait = ""
            if last:  # the forward loop's time waiting for decoded batches, and in forward
                stats = last[0]
                row["input_wait_share"] = stats.input_wait_s / stats.total_s
                row["forward_share"] = sum(stats.forward_s.values()) / stats.total_s
                wait = f", {100 * row['input_wait_share']:.0f}% waiting for input"
            rows.append(row)
            print(
                f"  {label} {name:20s} {precision} {loader} workers {row['workers']}: "
                f"{row['img_s']:8.0f} img/s = {100 * row['of_pure_forward']:.0f}% of forward"
                f"{wait}",
                flush=True,
            )
    return rows


def _jpeg(args: tuple[int, str]) -> None:
    from PIL import Image
    from sklearn.datasets import load_sample_images

    i, folder = args
    photos = load_sample_images().images
    rng = np.random.default_rng(i)
    photo = Image.fromarray(photos[i % len(photos)])
    w, h = photo.size
    cw, ch = int(w * rng.uniform(0.6, 1.0)), int(h * rng.uniform(0.6, 1.0))
    x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
    image = photo.crop((x, y, x + cw, y + ch))
    scale = 1024 / min(image.size)
    image = image.resize((round(image.size[0] * scale), round(image.size[1] * scale)))
    target = Path(folder) / f"class{i % 2}" / f"{i:05d}.jpg"
    target.parent.mkdir(parents=True, exist_ok=True)
    image.save(target, quality=90)


def jpegs(
    models: dict[str, TorchImageModel],
    device: torch.device,
    best: dict[str, dict[str, Any]],
    count: int,
    workers: list[int],
) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="tb-jpegs-") as tmp:
        folder = Path(tmp) / "photos"
        with Pool(min(16, os.cpu_count() or 1)) as pool:
            pool.map(_jpeg, [(i, str(folder)) for i in range(count)])
        data = read_image_folder(folder)
        recipe = models["resnet50"].recipe
        sample = data.samples[: min(200, count)]
        start = time.perf_counter()
        for s in sample:
            s.load()
        full = (time.perf_counter() - start) / len(sample)
        start = time.perf_counter()
        for s in sample:
            recipe.geometry(s.load(draft=recipe.resize))
        drafted = (time.perf_counter() - start) / len(sample)
        out: dict[str, Any] = {
            "images": count,
            "cpu_decode_full_ms": 1000 * full,
            "cpu_decode_draft_and_geometry_ms": 1000 * drafted,
        }
        if device.type == "cuda":
            from torchvision.io import decode_jpeg

            blobs = [
                torch.frombuffer(bytearray(Path(p).read_bytes()), dtype=torch.uint8)
                for p in sorted(folder.rglob("*.jpg"))[:512]
            ]
            decode_jpeg(blobs[:8], device=device)
            seconds = _best(lambda: decode_jpeg(blobs, device=device), 3, device)
            out["gpu_nvjpeg_decode_img_s"] = len(blobs) / seconds
        precision = "bf16" if device.type == "cuda" else "fp32"
        out["pipeline"] = pipeline(
            models,
            data,
            device,
            best,
            workers,
            "jpeg-1024",
            [("resnet50", precision)],
            before_workers=16 if device.type == "cuda" else 2,
            device_decode=True,
        )
        print(json.dumps({k: v for k, v in out.items() if k != "pipeline"}), flush=True)
    return out


RUNS: dict[str, dict[str, Any]] = {}


def equality(
    models: dict[str, TorchImageModel], data: Dataset, device: torch.device
) -> dict[str, Any]:
    """Every model on the CPU (float32, the reference) and on the GPU in fp32 and bf16, and in
    bf16 with ``TB_DECODE=device``: feature and probability agreement, per sample. (Scores and
    rankings: :func:`ranking_equality`, a section of its own so these numbers are saved first.)"""
    places = [("cpu", torch.device("cpu"), "fp32", "pil")]
    if device.type == "cuda":
        places += [("gpu-fp32", device, "fp32", "pil"), ("gpu-bf16", device, "bf16", "pil")]
    fastest = "bf16" if device.type == "cuda" else "fp32"  # a smoke run's CPU: float32
    places.append((f"{device.type}-{fastest}-device-decode", device, fastest, "device"))
    for label, where, precision, decode in places:
        with decoding(models.values(), decode):
            RUNS[label] = extract(list(models.values()), data, device=where, precision=precision)
    out: dict[str, Any] = {"images": len(data)}
    for label, got in RUNS.items():
        if label == "cpu":
            continue
        out[label] = {}
        for name in models:
            gpu, cpu = got[name], RUNS["cpu"][name]
            entry: dict[str, Any] = {"features": agreement(gpu.features, cpu.features)}
            if gpu.probs is not None and cpu.probs is not None:
                entry["probs_max_abs"] = float(np.abs(gpu.probs - cpu.probs).max())
            out[label][name] = entry
            print(
                f"  {label} {name}: max rel {entry['features']['max_rel']:.1e}, min cosine "
                f"{entry['features']['min_cosine']:.7f}, probs max abs "
                f"{entry.get('probs_max_abs', float('nan')):.1e}",
                flush=True,
            )
    return out


def ranking_equality(models: dict[str, TorchImageModel], labels: np.ndarray) -> dict[str, Any]:
    """Every default metric on each placement's features: relative score differences against
    the CPU's, and whether the ranking is the same."""
    metrics = resolve_metrics(None, "classification")
    rankings = {}
    for label, got in RUNS.items():
        arrays = {n: ModelArrays(f.features, f.probs) for n, f in got.items()}
        rows = rank_models(arrays, labels, metrics)
        rankings[label] = {r.model: {"rank": r.rank, "scores": r.scores} for r in rows}
    out: dict[str, Any] = {"metrics": metrics, "rankings": rankings}
    order = {
        lbl: sorted(models, key=lambda m, lbl=lbl: rankings[lbl][m]["rank"] or 99)
        for lbl in rankings
    }
    for label in rankings:
        if label == "cpu":
            continue
        diffs = {}
        for name in models:
            for metric in metrics:
                g = rankings[label][name]["scores"].get(metric)
                c = rankings["cpu"][name]["scores"].get(metric)
                if g is not None and c is not None:
                    diffs[f"{name}/{metric}"] = abs(g - c) / max(abs(c), 1e-12)
        out[label] = {
            "max_score_rel_diff": max(diffs.values()) if diffs else None,
            "score_rel_diff": diffs,
            "ranking_identical": order[label] == order["cpu"],
            "order": order[label],
        }
        print(
            f"  {label}: ranking identical {out[label]['ranking_identical']}, max score rel "
            f"diff {out[label]['max_score_rel_diff']:.1e}",
            flush=True,
        )
    return out


def compiled(model: TorchImageModel, device: torch.device, bs: int, images: int) -> dict:
    """ResNet-50's module eager against ``torch.compile`` (default mode), bf16 autocast, on
    normalised channels_last batches already on the device."""
    module = model.module.to(device).eval()
    batches = [
        model.recipe.normalize(b).contiguous(memory_format=torch.channels_last)
        for b in _gpu_batches(model, bs, device)
    ]
    steps = max(2, images // bs)

    def run(fn: Callable[[torch.Tensor], Any]) -> None:
        with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16):
            for i in range(steps):
                fn(batches[i % len(batches)])

    run(module)
    eager = steps * bs / _best(lambda: run(module), 3, device)
    start = time.perf_counter()
    fast = torch.compile(module)
    with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16):
        fast(batches[0])
    _sync(device)
    compile_s = time.perf_counter() - start
    run(fast)
    comp = steps * bs / _best(lambda: run(fast), 3, device)
    out = {"batch": bs, "eager_img_s": eager, "compiled_img_s": comp, "compile_s": compile_s}
    print(json.dumps(out), flush=True)
    return out


def table(report: dict[str, Any]) -> None:
    print("\n| model | precision | best batch | pure forward img/s | TFLOP/s | of matmul ceiling |")
    print("|---|---|---|---|---|---|")
    for row in report.get("best", {}).values():
        share = row.get("of_matmul_ceiling")
        print(
            f"| {row['model']} | {row['precision']} | {row['batch']} | {row['img_s']:.0f} | "
            f"{row['tflops']:.1f} | {'' if share is None else f'{100 * share:.0f}%'} |"
        )
    rows = list(report.get("pipeline", []) or [])
    jpeg = report.get("jpegs", {})
    if isinstance(jpeg, dict):
        rows += jpeg.get("pipeline", [])
    print(
        "\n| data | model | precision | loader | workers | pipeline img/s | of pure forward "
        "| waiting for input |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for row in rows:
        if isinstance(row, dict) and "img_s" in row:
            wait = row.get("input_wait_share")
            print(
                f"| {row['data']} | {row['model']} | {row['precision']} | {row['loader']} | "
                f"{row['workers']} | {row['img_s']:.0f} | {100 * row['of_pure_forward']:.0f}% "
                f"| {'' if wait is None else f'{100 * wait:.0f}%'} |"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=30000, help="Fashion-MNIST images per job")
    parser.add_argument("--jpegs", type=int, default=2048)
    parser.add_argument("--equality-n", type=int, default=1000)
    parser.add_argument("--forward-images", type=int, default=4096)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--smoke", action="store_true", help="toy sizes, any device")
    parser.add_argument("--skip-compile", action="store_true")
    parser.add_argument(
        "--compile-if-under", type=float, default=1e9, help="skip compile past this many seconds"
    )
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type != "cuda" and not args.smoke:
        parser.error("no CUDA device: this benchmark is for a GPU machine (or use --smoke)")
    if args.smoke:
        args.n, args.jpegs, args.equality_n, args.forward_images = 64, 16, 120, 16
    sizes = [8] if args.smoke else [512, 1024]
    workers: list[int | None] = [None, 2] if args.smoke else [None, 8]
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed shapes: pick the fastest kernels once
    out = args.out
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    REPORT["smoke"] = args.smoke
    REPORT["environment"] = environment(device)
    REPORT["cudnn_benchmark"] = torch.backends.cudnn.benchmark
    peaks = _section("ceilings", out, lambda: ceilings(device, args.smoke))
    models = load_models()
    flops = _section("flops_per_image", out, lambda: {n: count_flops(m) for n, m in models.items()})
    peak_tflops = {
        "bf16": peaks.get("bf16_matmul_tflops"),
        "fp32": peaks.get("fp32_matmul_tflops"),
    }
    forward = _section(
        "pure_forward",
        out,
        lambda: pure_forward(models, device, sizes, args.forward_images, flops, peak_tflops),
    )
    best = best_batches(forward.get("rows", []))
    REPORT["best"] = best
    fmnist = repeated(fashion_mnist("t10k"), max(1, args.n // 10000))
    fmnist = fmnist if len(fmnist) <= args.n else _head(fmnist, args.n)
    which = [(n, "bf16") for n in models] + [("resnet50", "fp32")]
    if device.type != "cuda":
        which = [(n, "fp32") for n in models]
    _section(
        "pipeline",
        out,
        lambda: pipeline(
            models,
            fmnist,
            device,
            best,
            workers,
            "fashion-mnist",
            which,
            before_workers=16 if device.type == "cuda" else 2,
        ),
    )
    if device.type == "cuda" or args.smoke:
        _section("jpegs", out, lambda: jpegs(models, device, best, args.jpegs, workers))
    sample = _head(fashion_mnist("t10k"), args.equality_n)
    _section("equality", out, lambda: equality(models, sample, device))
    _section("ranking_equality", out, lambda: ranking_equality(models, sample.labels))
    elapsed = time.perf_counter() - start
    if device.type == "cuda" and not args.skip_compile and elapsed < args.compile_if_under:
        bs = best.get("resnet50/bf16", {}).get("batch", 256)
        _section(
            "compile",
            out,
            lambda: compiled(models["resnet50"], device, bs, args.forward_images),
        )
    REPORT["total_seconds"] = round(time.perf_counter() - start, 1)
    _save(out)
    table(REPORT)


def _head(dataset: Dataset, n: int) -> Dataset:
    """The first ``n`` samples, stratification ignored (a speed run, not a ranking)."""
    return Dataset(
        dataset.name,
        dataset.modality,
        list(dataset.samples)[:n],
        dataset.labels[:n],
        list(dataset.digests)[:n],
        origin=dataset.origin,
    )


if __name__ == "__main__":
    main()
