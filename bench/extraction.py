"""Extraction speed: the whole pipeline beside a pure forward pass, and shared decoding.

For each zoo image model, in the same run:
- pipeline: images/s of ``extract`` from dataset samples (read, decode, resize/crop, normalise,
  forward), no cache;
- forward: images/s of the model's forward over ready uint8 tensors at the same batch size.
Then the time for three models sharing a recipe, with the shared decode (one ``extract``
call) and without it (one ``extract`` call per model).

    python bench/extraction.py [--n 64] [--batch-size 8] [--models a,b] [--png]

Prints a table; writes bench/results/extraction.json (and .png with --png).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from workers.pipeline.datasets.builtin import fashion_mnist
from workers.pipeline.extraction import extract
from workers.pipeline.models import load_model, zoo_names
from workers.pipeline.runtime import configure

RESULTS = Path(__file__).resolve().parent / "results"
SHARED = ["efficientnet-lite0", "mobilenet-v2", "open-nsfw"]


def _pure_forward(model, tensors: list[torch.Tensor]) -> float:
    start = time.perf_counter()
    for batch in tensors:
        model.forward(batch)
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=64, help="images per measurement")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--models", default=",".join(zoo_names("image")))
    parser.add_argument("--repeats", type=int, default=2, help="best of this many runs")
    parser.add_argument("--png", action="store_true")
    args = parser.parse_args(argv)
    threads = configure()
    data = fashion_mnist("t10k").subsample(args.n // 10 + 1, seed=0)
    data = data.select(np.arange(min(args.n, len(data))))
    n, bs = len(data), args.batch_size

    rows = []
    for name in args.models.split(","):
        model = load_model(name)
        tensors = [
            torch.stack([model.recipe.geometry(s.load()) for s in data.samples[i : i + bs]])
            for i in range(0, n, bs)
        ]
        model.forward(tensors[0])  # warm-up
        pipeline_s, forward_s = [], []
        for _ in range(args.repeats):  # interleaved, so both see the same machine state
            start = time.perf_counter()
            extract([model], data, batch_size=bs)
            pipeline_s.append(time.perf_counter() - start)
            forward_s.append(_pure_forward(model, tensors))
        pipe, fwd = n / min(pipeline_s), n / min(forward_s)
        rows.append(
            {"model": name, "pipeline_img_s": pipe, "forward_img_s": fwd, "ratio": pipe / fwd}
        )

    shared_models = [load_model(m) for m in SHARED]
    extract(shared_models, data.select(np.arange(bs)), batch_size=bs)  # warm-up
    with_shared, without = [], []
    for _ in range(args.repeats):
        start = time.perf_counter()
        extract(shared_models, data, batch_size=bs)
        with_shared.append(time.perf_counter() - start)
        start = time.perf_counter()
        for model in shared_models:
            extract([model], data, batch_size=bs)
        without.append(time.perf_counter() - start)
    shared = {
        "models": SHARED,
        "with_shared_decode_s": min(with_shared),
        "without_shared_decode_s": min(without),
    }

    header = f"{'model':<20} {'pipeline img/s':>15} {'forward img/s':>14} {'ratio':>7}"
    print(f"N={n} images (Fashion-MNIST t10k), batch {bs}, {threads} torch threads, CPU")
    print(header)
    print("-" * len(header))
    for r in rows:
        print(
            f"{r['model']:<20} {r['pipeline_img_s']:>15.1f} {r['forward_img_s']:>14.1f} "
            f"{r['ratio']:>6.0%}"
        )
    print(
        f"\n{' + '.join(SHARED)} on {n} images: {shared['with_shared_decode_s']:.2f} s with the "
        f"shared decode, {shared['without_shared_decode_s']:.2f} s without"
    )
    RESULTS.mkdir(parents=True, exist_ok=True)
    report = {
        "n": n,
        "batch_size": bs,
        "threads": threads,
        "machine": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "models": rows,
        "shared_recipe": shared,
    }
    (RESULTS / "extraction.json").write_text(json.dumps(report, indent=2) + "\n")
    if args.png:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(7, 3.5))
        x = np.arange(len(rows))
        ax.bar(x - 0.2, [r["pipeline_img_s"] for r in rows], 0.4, label="pipeline")
        ax.bar(x + 0.2, [r["forward_img_s"] for r in rows], 0.4, label="pure forward")
        ax.set_xticks(x, [r["model"] for r in rows], rotation=15)
        ax.set_ylabel("images / s")
        ax.legend()
        fig.tight_layout()
        fig.savefig(RESULTS / "extraction.png", dpi=100)
    print(f"wrote {RESULTS / 'extraction.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
