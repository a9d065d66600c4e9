"""Extraction speed: PyTorch against ONNX Runtime, the pipeline against the pure forward pass.

In one run, on the same machine state (measurements interleaved, best of ``--repeats``):

- every zoo image model on ``--n`` Fashion-MNIST images, each runtime (``TB_RUNTIME=torch``,
  the reference, and ``onnx``, the optimised CPU runtime): images/s of the whole pipeline
  (``extract``: decode, resize/crop, normalise, forward; no cache) and of the pure forward
  over ready uint8 batches; the load time with the export (first load, empty graph store);
  and "before": PyTorch with decode and forward in turn, the pipeline as it was before;
- the text zoo models on fortunes: texts/s of the loop as it was before (PyTorch, batches of
  32 by character length), of each runtime's pipeline, and of pure forwards; then both text
  models in one job (they share MiniLM);
- decode: a temp folder of real photos re-encoded as 1024-px JPEGs: ms/image to decode in
  full, with PIL's reduced-size ``draft``, and for the resize/crop; then the pipeline's
  images/s on those files decoding in turn, in a prefetch thread, in DataLoader workers;
- three models sharing a recipe, with the shared decode and without.

    python bench/extraction.py [--n 256] [--batch-size 8] [--models a,b] [--repeats 3]

Prints tables; writes bench/results/extraction.json and extraction.png.

``--layers`` measures instead every layer against the last layer alone: for each zoo model on
its default runtime (ONNX Runtime on a CPU), ``extract`` with ``layers=all`` against plain
``extract``, no cache, interleaved, best of ``--repeats`` (target: at most 1.3x); writes
bench/results/extraction_layers.json.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _common import best_of, cpu_name, make_jpegs

from workers.pipeline import extraction
from workers.pipeline.datasets import open_dataset
from workers.pipeline.datasets.builtin import fashion_mnist
from workers.pipeline.datasets.images import read_image_folder
from workers.pipeline.extraction import CPU_BATCH_TOKENS, extract, text_batches
from workers.pipeline.models import load_model, zoo_names
from workers.pipeline.runtime import configure
from workers.settings import Settings

RESULTS = Path(__file__).resolve().parent / "results"
SHARED = ["efficientnet-lite0", "mobilenet-v2", "open-nsfw"]


def _forward_all(model, batches) -> None:
    for batch in batches:
        model.forward(batch)


def _timed_load(name: str, settings: Settings):
    start = time.perf_counter()
    model = load_model(name, settings)
    return model, time.perf_counter() - start


def _extract_in_turn(models, data, bs):
    """``extract`` as before this runtime: decode a batch, then run it, in one thread."""
    original = extraction.prefetched
    extraction.prefetched = lambda items, depth: items
    try:
        return extract(models, data, batch_size=bs)
    finally:
        extraction.prefetched = original


def bench_images(names, data, bs, repeats, settings) -> list[dict]:
    rows = []
    n = len(data)
    for name in names:
        ref, torch_load = _timed_load(name, settings["torch"])
        fast, onnx_load = _timed_load(name, settings["onnx"])
        tensors = [
            torch.stack([ref.recipe.geometry(s.load()) for s in data.samples[i : i + bs]])
            for i in range(0, n, bs)
        ]
        for model in (ref, fast):
            model.forward(tensors[0])  # warm-up
        t = {"before": [], "torch": [], "onnx": [], "torch_fwd": [], "onnx_fwd": []}
        for _ in range(repeats):  # interleaved: both runtimes see the same machine state
            t["before"].append(best_of(lambda m=ref, d=data: _extract_in_turn([m], d, bs), 1))
            for key, model in (("torch", ref), ("onnx", fast)):
                t[key].append(best_of(lambda m=model, d=data: extract([m], d, batch_size=bs), 1))
                t[f"{key}_fwd"].append(best_of(lambda m=model, b=tensors: _forward_all(m, b), 1))
        row = {
            "model": name,
            "torch_runtime": ref.runtime,
            "onnx_runtime": fast.runtime,
            "before_img_s": n / min(t["before"]),
            "torch_pipeline_img_s": n / min(t["torch"]),
            "onnx_pipeline_img_s": n / min(t["onnx"]),
            "torch_forward_img_s": n / min(t["torch_fwd"]),
            "onnx_forward_img_s": n / min(t["onnx_fwd"]),
            "torch_load_s": torch_load,
            "onnx_first_load_s": onnx_load,
        }
        row["speedup"] = row["onnx_pipeline_img_s"] / row["torch_pipeline_img_s"]
        row["speedup_vs_before"] = row["onnx_pipeline_img_s"] / row["before_img_s"]
        row["onnx_pipeline_vs_forward"] = row["onnx_pipeline_img_s"] / row["onnx_forward_img_s"]
        rows.append(row)
        print(
            f"  {name}: before {row['before_img_s']:.1f}, torch "
            f"{row['torch_pipeline_img_s']:.1f}, onnx "
            f"{row['onnx_pipeline_img_s']:.1f} img/s (x{row['speedup']:.2f})",
            flush=True,
        )
    return rows


def _todays_text_loop(model, texts: list[str], bs: int) -> None:
    """The text loop as it was before this runtime: PyTorch, batches by character length."""
    order = np.argsort([-len(t) for t in texts], kind="stable")
    for start in range(0, len(texts), bs):
        model.forward(model.tokenize([texts[i] for i in order[start : start + bs]]))


def bench_texts(names, data, bs, repeats, settings) -> list[dict]:
    rows = []
    texts = [str(t) for t in data.samples]
    n = len(texts)
    for name in names:
        ref, torch_load = _timed_load(name, settings["torch"])
        fast, onnx_load = _timed_load(name, settings["onnx"])
        lengths = ref.token_lengths(texts)
        order = np.argsort([-x for x in lengths], kind="stable")
        spans = text_batches([lengths[i] for i in order], bs, CPU_BATCH_TOKENS)
        batches = [ref.tokenize([texts[i] for i in order[span]]) for span in spans]
        for model in (ref, fast):
            model.forward(batches[-1])  # warm-up
        t = {"today": [], "torch": [], "onnx": [], "torch_fwd": [], "onnx_fwd": []}
        for _ in range(repeats):
            t["today"].append(best_of(lambda r=ref, x=texts: _todays_text_loop(r, x, bs), 1))
            for key, model in (("torch", ref), ("onnx", fast)):
                t[key].append(best_of(lambda m=model, d=data: extract([m], d, batch_size=bs), 1))
                t[f"{key}_fwd"].append(best_of(lambda m=model, b=batches: _forward_all(m, b), 1))
        real = int(np.sum(lengths))
        by_chars = np.asarray(lengths)[np.argsort([-len(x) for x in texts], kind="stable")]
        by_tokens = np.asarray(lengths)[order]
        padded_chars = sum(
            int(by_chars[s : s + bs].max()) * len(by_chars[s : s + bs]) for s in range(0, n, bs)
        )
        padded_tokens = sum(int(by_tokens[span].max()) * len(by_tokens[span]) for span in spans)
        row = {
            "model": name,
            "onnx_runtime": fast.runtime,
            "today_torch_text_s": n / min(t["today"]),
            "torch_pipeline_text_s": n / min(t["torch"]),
            "onnx_pipeline_text_s": n / min(t["onnx"]),
            "torch_forward_text_s": n / min(t["torch_fwd"]),
            "onnx_forward_text_s": n / min(t["onnx_fwd"]),
            "torch_load_s": torch_load,
            "onnx_first_load_s": onnx_load,
            "tokens_real": real,
            "tokens_padded_by_chars": padded_chars,
            "tokens_padded_by_tokens": padded_tokens,
        }
        row["speedup_vs_today"] = row["onnx_pipeline_text_s"] / row["today_torch_text_s"]
        row["speedup_vs_torch_pipeline"] = (
            row["onnx_pipeline_text_s"] / row["torch_pipeline_text_s"]
        )
        rows.append(row)
        print(
            f"  {name}: today {row['today_torch_text_s']:.1f}, torch "
            f"{row['torch_pipeline_text_s']:.1f}, onnx {row['onnx_pipeline_text_s']:.1f} texts/s",
            flush=True,
        )
    return rows


def bench_text_pair(names, data, bs, repeats, settings) -> dict:
    """Both text models in one job, as ``transferbench rank`` runs them: before, each ran its
    own forward passes; now models sharing an encoder run it once per batch."""
    texts = [str(t) for t in data.samples]
    refs = [load_model(n, settings["torch"]) for n in names]
    fasts = [load_model(n, settings["onnx"]) for n in names]
    t = {"today": [], "torch": [], "onnx": []}
    for _ in range(repeats):
        t["today"].append(best_of(lambda: [_todays_text_loop(m, texts, bs) for m in refs], 1))
        t["torch"].append(best_of(lambda: extract(refs, data, batch_size=bs), 1))
        t["onnx"].append(best_of(lambda: extract(fasts, data, batch_size=bs), 1))
    n = len(texts)
    row = {
        "models": list(names),
        "today_torch_text_s": n / min(t["today"]),
        "torch_pipeline_text_s": n / min(t["torch"]),
        "onnx_pipeline_text_s": n / min(t["onnx"]),
    }
    row["speedup_vs_today"] = row["onnx_pipeline_text_s"] / row["today_torch_text_s"]
    return row


def bench_decode(count: int, bs: int, repeats: int, settings) -> dict:
    with tempfile.TemporaryDirectory(prefix="tb-jpegs-") as tmp:
        dataset = read_image_folder(make_jpegs(Path(tmp), count))
        model = load_model("mobilenet-v2", settings["onnx"])
        recipe = model.recipe
        samples = dataset.samples

        def decode(draft):
            for sample in samples:
                sample.load(draft=draft)

        def geometry():
            for sample in samples:
                recipe.geometry(sample.load(draft=recipe.resize))

        full = best_of(lambda: decode(None), repeats)
        drafted = best_of(lambda: decode(recipe.resize), repeats)
        with_geometry = best_of(geometry, repeats)
        size = samples[0].load().size
        extract([model], dataset.select(np.arange(bs)), batch_size=bs, num_workers=0)
        pipeline = {}
        for workers in ("in turn", 0, 1, 2):
            if workers == "in turn":  # as before: decode, then forward, in one thread
                original = extraction.prefetched
                extraction.prefetched = lambda items, depth: items
            seconds = best_of(
                lambda w=workers: extract(
                    [model], dataset, batch_size=bs, num_workers=0 if w == "in turn" else w
                ),
                repeats,
            )
            if workers == "in turn":
                extraction.prefetched = original
            label = {0: "in a prefetch thread", 1: "in 1 worker", 2: "in 2 workers"}.get(
                workers, str(workers)
            )
            pipeline[label] = count / seconds
        tensors = [
            torch.stack([recipe.geometry(s.load(draft=recipe.resize)) for s in samples[i : i + bs]])
            for i in range(0, count, bs)
        ]
        forward = count / best_of(lambda: _forward_all(model, tensors), repeats)
    return {
        "images": count,
        "size": list(size),
        "decode_full_ms": 1000 * full / count,
        "decode_draft_ms": 1000 * drafted / count,
        "decode_draft_and_geometry_ms": 1000 * with_geometry / count,
        "model": "mobilenet-v2",
        "onnx_forward_img_s": forward,
        "onnx_pipeline_img_s_by_workers": pipeline,
    }


def bench_shared(data, bs, repeats, settings) -> dict:
    models = [load_model(m, settings["onnx"]) for m in SHARED]
    extract(models, data.select(np.arange(bs)), batch_size=bs)  # warm-up
    with_shared, without = [], []
    for _ in range(repeats):
        with_shared.append(best_of(lambda: extract(models, data, batch_size=bs), 1))
        without.append(best_of(lambda: [extract([m], data, batch_size=bs) for m in models], 1))
    return {
        "models": SHARED,
        "runtime": "onnx",
        "with_shared_decode_s": min(with_shared),
        "without_shared_decode_s": min(without),
    }


def _geomean(values: list[float]) -> float:
    return math.exp(sum(math.log(v) for v in values) / len(values)) if values else float("nan")


def _plot(report: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    images, texts = report["image_models"], report["text_models"]
    fig, axes = plt.subplots(
        1, 2, figsize=(11, 4), gridspec_kw={"width_ratios": [max(len(images), 1), 2]}
    )
    x = np.arange(len(images))
    ax = axes[0]
    ax.bar(x - 0.3, [r["before_img_s"] for r in images], 0.2, label="before (torch)")
    ax.bar(x - 0.1, [r["torch_pipeline_img_s"] for r in images], 0.2, label="torch pipeline")
    ax.bar(x + 0.1, [r["onnx_pipeline_img_s"] for r in images], 0.2, label="onnx pipeline")
    ax.bar(x + 0.3, [r["onnx_forward_img_s"] for r in images], 0.2, label="onnx forward")
    for i, r in enumerate(images):
        ax.annotate(f"x{r['speedup']:.1f}", (i + 0.1, r["onnx_pipeline_img_s"]), ha="center",
                    va="bottom", fontsize=8)  # fmt: skip
    ax.set_xticks(x, [r["model"] for r in images], rotation=15, fontsize=8)
    ax.set_ylabel("images / s")
    ax.set_title(f"images, {report['threads']} threads, {report['cpu']}", fontsize=9)
    ax.legend(fontsize=7)
    ax = axes[1]
    x = np.arange(len(texts))
    ax.bar(x - 0.25, [r["today_torch_text_s"] for r in texts], 0.25, label="before (torch)")
    ax.bar(x, [r["torch_pipeline_text_s"] for r in texts], 0.25, label="torch pipeline")
    ax.bar(x + 0.25, [r["onnx_pipeline_text_s"] for r in texts], 0.25, label="onnx pipeline")
    ax.set_xticks(x, [r["model"] for r in texts], fontsize=8)
    ax.set_ylabel("texts / s")
    ax.set_title("text (fortunes)", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(RESULTS / "extraction.png", dpi=100)


def bench_layers(names, data_by_modality, bs, text_bs, repeats, settings) -> list[dict]:
    """All layers against the last alone, per model: seconds, their ratio, and what one
    forward pass per layer would cost instead (the layer count x the last layer's time)."""
    rows = []
    for name in names:
        model = load_model(name, settings)
        data = data_by_modality[model.modality]
        size = bs if model.modality == "image" else text_bs
        reason = model.layers_unsupported()
        if reason is not None:
            rows.append({"model": name, "runtime": model.runtime, "refused": reason})
            print(f"  {name}: only its last layer ({reason})", flush=True)
            continue
        chosen = model.select_layers("all")
        layers = {name: chosen}
        extract([model], data, layers=layers, batch_size=size)  # warm-up (and the export)
        extract([model], data, batch_size=size)
        last, every = [], []
        for _ in range(repeats):  # interleaved: both see the same machine state
            last.append(best_of(lambda m=model, d=data, s=size: extract([m], d, batch_size=s), 1))
            every.append(
                best_of(
                    lambda m=model, d=data, s=size, ly=layers: extract(
                        [m], d, layers=ly, batch_size=s
                    ),
                    1,
                )
            )
        runs = model.for_layers(tuple(chosen[:-1]))
        row = {
            "model": name,
            "runtime": runs.runtime,
            "layers": len(chosen),
            "samples": len(data),
            "last_s": min(last),
            "all_s": min(every),
        }
        row["ratio"] = row["all_s"] / row["last_s"]
        rows.append(row)
        print(
            f"  {name}: last {row['last_s']:.2f} s, all {row['layers']} layers "
            f"{row['all_s']:.2f} s (x{row['ratio']:.2f})",
            flush=True,
        )
    return rows


def main_layers(args: argparse.Namespace) -> int:
    threads = configure()
    images = fashion_mnist("t10k").subsample(args.n // 10 + 1, seed=0)
    images = images.select(np.arange(min(args.n, len(images))))
    texts = open_dataset("fortunes").subsample(args.texts_per_class, seed=0)
    names = [*args.models.split(","), *args.text_models.split(",")]
    with tempfile.TemporaryDirectory(prefix="tb-bench-") as tmp:
        settings = Settings(data_dir=Path(tmp))  # the default runtime: what a ranking gets
        rows = bench_layers(
            names,
            {"image": images, "text": texts},
            args.batch_size,
            args.text_batch_size,
            args.repeats,
            settings,
        )
    report = {
        "date": time.strftime("%Y-%m-%d"),
        "cpu": cpu_name(),
        "threads": threads,
        "torch": torch.__version__,
        "n_images": len(images),
        "n_texts": len(texts),
        "batch_size": args.batch_size,
        "text_batch_size": args.text_batch_size,
        "repeats": args.repeats,
        "target_ratio": 1.3,
        "models": rows,
    }
    print(f"\n{report['cpu']}, {threads} threads, torch {torch.__version__}")
    head = f"{'model':<20} {'runtime':<12} {'layers':>6} {'last s':>7} {'all s':>7} {'all/last':>8}"
    print(f"\nall layers against the last, {len(images)} images / {len(texts)} texts\n{head}")
    print("-" * len(head))
    for r in rows:
        if "refused" in r:
            print(f"{r['model']:<20} only its last layer: {r['refused']}")
            continue
        runtime = "onnxruntime" if r["runtime"].startswith("onnx") else r["runtime"]
        print(
            f"{r['model']:<20} {runtime:<12} {r['layers']:>6} {r['last_s']:>7.2f} "
            f"{r['all_s']:>7.2f} {r['ratio']:>7.2f}x"
        )
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "extraction_layers.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {RESULTS / 'extraction_layers.json'}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=256, help="images per measurement")
    parser.add_argument("--batch-size", type=int, default=8, help="image batch size")
    parser.add_argument("--text-batch-size", type=int, default=32)
    parser.add_argument("--texts-per-class", type=int, default=13, help="fortunes per class")
    parser.add_argument("--jpegs", type=int, default=64, help="1024-px JPEGs for the decode part")
    parser.add_argument("--models", default=",".join(zoo_names("image")))
    parser.add_argument("--text-models", default=",".join(zoo_names("text")))
    parser.add_argument("--repeats", type=int, default=3, help="best of this many runs")
    parser.add_argument("--skip", default="", help="comma list of: images,texts,decode,shared")
    parser.add_argument(
        "--layers", action="store_true", help="only all layers against the last (see above)"
    )
    args = parser.parse_args(argv)
    if args.layers:
        return main_layers(args)
    skip = set(filter(None, args.skip.split(",")))
    threads = configure()
    with tempfile.TemporaryDirectory(prefix="tb-bench-") as tmp:
        # A fresh graph store: the first ONNX load of each model includes its export.
        settings = {
            "torch": Settings(runtime="torch", data_dir=Path(tmp)),
            "onnx": Settings(runtime="onnx", data_dir=Path(tmp)),
        }
        images = fashion_mnist("t10k").subsample(args.n // 10 + 1, seed=0)
        images = images.select(np.arange(min(args.n, len(images))))
        texts = open_dataset("fortunes").subsample(args.texts_per_class, seed=0)
        report: dict = {
            "cpu": cpu_name(),
            "threads": threads,
            "torch": torch.__version__,
            "n_images": len(images),
            "batch_size": args.batch_size,
            "n_texts": len(texts),
            "text_batch_size": args.text_batch_size,
            "image_models": [],
            "text_models": [],
        }
        if "images" not in skip:
            print(f"images: {len(images)} Fashion-MNIST t10k, batch {args.batch_size}", flush=True)
            report["image_models"] = bench_images(
                args.models.split(","), images, args.batch_size, args.repeats, settings
            )
        if "texts" not in skip:
            print(f"texts: {len(texts)} fortunes, batch {args.text_batch_size}", flush=True)
            report["text_models"] = bench_texts(
                args.text_models.split(","), texts, args.text_batch_size, args.repeats, settings
            )
            report["text_pair"] = bench_text_pair(
                args.text_models.split(","), texts, args.text_batch_size, args.repeats, settings
            )
        if "decode" not in skip:
            print(f"decode: {args.jpegs} JPEGs at 1024 px", flush=True)
            report["decode"] = bench_decode(args.jpegs, args.batch_size, args.repeats, settings)
        if "shared" not in skip:
            report["shared_recipe"] = bench_shared(images, args.batch_size, args.repeats, settings)

    rows, trows = report["image_models"], report["text_models"]
    report["image_geomean_speedup"] = _geomean([r["speedup"] for r in rows])
    report["image_geomean_speedup_vs_before"] = _geomean([r["speedup_vs_before"] for r in rows])
    # open-nsfw ships as ONNX: its "torch" column is its original graph on ONNX Runtime.
    on_torch = [r for r in rows if r["torch_runtime"] == "torch"]
    report["image_geomean_speedup_pytorch_models"] = _geomean([r["speedup"] for r in on_torch])
    print(f"\n{report['cpu']}, {threads} threads, torch {torch.__version__}")
    if rows:
        head = (
            f"{'model':<20} {'before':>7} {'torch pipe':>10} {'onnx pipe':>10} {'speedup':>8} "
            f"{'vs before':>9} {'torch fwd':>10} {'onnx fwd':>9} {'onnx pipe/fwd':>13} "
            f"{'export s':>9}"
        )
        print(f"\nimages/s, {report['n_images']} images, batch {args.batch_size}\n{head}")
        print("-" * len(head))
        for r in rows:
            export = r["onnx_first_load_s"] - r["torch_load_s"]
            print(
                f"{r['model']:<20} {r['before_img_s']:>7.1f} {r['torch_pipeline_img_s']:>10.1f} "
                f"{r['onnx_pipeline_img_s']:>10.1f} {r['speedup']:>7.2f}x "
                f"{r['speedup_vs_before']:>8.2f}x "
                f"{r['torch_forward_img_s']:>10.1f} {r['onnx_forward_img_s']:>9.1f} "
                f"{r['onnx_pipeline_vs_forward']:>12.0%} {export:>9.1f}"
            )
        print(
            f"geometric mean speedup: {report['image_geomean_speedup']:.2f}x over the torch "
            f"pipeline ({report['image_geomean_speedup_pytorch_models']:.2f}x over the models "
            f"that run on PyTorch), {report['image_geomean_speedup_vs_before']:.2f}x over before"
        )
        print("before: PyTorch, decode then forward in one thread, as before the optimised runtime")
    if trows:
        head = (
            f"{'model':<15} {'before':>7} {'torch pipe':>10} {'onnx pipe':>10} "
            f"{'vs before':>9} {'vs torch':>8} {'torch fwd':>9} {'onnx fwd':>9}"
        )
        print(f"\ntexts/s, {report['n_texts']} fortunes, batch {args.text_batch_size}\n{head}")
        print("-" * len(head))
        for r in trows:
            print(
                f"{r['model']:<15} {r['today_torch_text_s']:>7.1f} "
                f"{r['torch_pipeline_text_s']:>10.1f} {r['onnx_pipeline_text_s']:>10.1f} "
                f"{r['speedup_vs_today']:>8.2f}x {r['speedup_vs_torch_pipeline']:>7.2f}x "
                f"{r['torch_forward_text_s']:>9.1f} {r['onnx_forward_text_s']:>9.1f}"
            )
        r = trows[0]
        print(
            f"tokens: {r['tokens_real']} real; padded {r['tokens_padded_by_chars']} in batches "
            f"by characters (before), {r['tokens_padded_by_tokens']} by tokens (now)"
        )
        p = report["text_pair"]
        print(
            f"{' + '.join(p['models'])} in one job: before {p['today_torch_text_s']:.1f}, torch "
            f"{p['torch_pipeline_text_s']:.1f}, onnx {p['onnx_pipeline_text_s']:.1f} texts/s "
            f"(x{p['speedup_vs_today']:.2f} over before)"
        )
    if "decode" in report:
        d = report["decode"]
        print(
            f"\ndecode, {d['images']} JPEGs {d['size'][0]}x{d['size'][1]}: full "
            f"{d['decode_full_ms']:.1f} ms/img, draft {d['decode_draft_ms']:.1f} ms/img, draft + "
            f"resize/crop {d['decode_draft_and_geometry_ms']:.1f} ms/img; {d['model']} onnx "
            f"forward {d['onnx_forward_img_s']:.1f} img/s; pipeline img/s decoding "
            + ", ".join(f"{w}: {v:.1f}" for w, v in d["onnx_pipeline_img_s_by_workers"].items())
        )
    if "shared_recipe" in report:
        s = report["shared_recipe"]
        print(
            f"\n{' + '.join(SHARED)} (onnx) on {report['n_images']} images: "
            f"{s['with_shared_decode_s']:.2f} s with the shared decode, "
            f"{s['without_shared_decode_s']:.2f} s without"
        )
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "extraction.json").write_text(json.dumps(report, indent=2) + "\n")
    _plot(report)
    print(f"wrote {RESULTS / 'extraction.json'} and extraction.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
