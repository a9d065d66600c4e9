"""Fine-tuning on this machine: seconds and held-out top-1 for one epoch, head-only and full.

- MobileNetV2 and EfficientNet-Lite0 on 500 Fashion-MNIST images (50 per class, seed 0; 400
  train, 100 held out), one epoch, head-only and full, on the CPU. The target: MobileNetV2
  head-only in under a minute, at 70% or better.
- MiniLM-L6 on fortunes by topic (``--text-per-class`` per class), one epoch, head-only and full.

    python bench/finetune.py [--epochs 1] [--text-per-class 20] [--device cpu]

Prints a table; writes bench/results/finetune.json (with the machine it ran on).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _common import machine, write_report

from workers.pipeline.datasets.builtin import fashion_mnist, fortunes
from workers.pipeline.finetune import FineTuneRecipe, finetune

RESULTS = Path(__file__).resolve().parent / "results"
IMAGE_MODELS = ("mobilenet-v2", "efficientnet-lite0")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--text-per-class", type=int, default=20)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    tasks = [
        ("fashion-mnist 50/class", fashion_mnist().subsample(50, seed=0), IMAGE_MODELS),
        (
            f"fortunes {args.text_per_class}/class",
            fortunes().subsample(args.text_per_class, seed=0),
            ("minilm-l6",),
        ),
    ]
    rows = []
    for task, dataset, models in tasks:
        for mode in ("head", "full"):
            recipe = FineTuneRecipe(mode=mode, epochs=args.epochs)
            began = time.perf_counter()
            for result in finetune(dataset, models, recipe, device=args.device):
                row = {"task": task, **result.to_dict()}
                rows.append(row)
                top1 = "failed" if result.top1 is None else f"{result.top1:.3f}"
                print(f"{task:<24} {result.model:<20} {mode:<5} top1 {top1:<7} "
                      f"{result.seconds:6.1f} s  train {result.n_train} / held out "
                      f"{result.n_validation}  {result.error or ''}", flush=True)  # fmt: skip
            print(f"  ({time.perf_counter() - began:.1f} s with loading)")
    write_report(
        RESULTS / "finetune.json",
        {
            "machine": machine(),
            "date": time.strftime("%Y-%m-%d"),
            "device": args.device,
            "epochs": args.epochs,
            "note": "seconds: training and validation of one model, its loading excluded",
            "rows": rows,
        },
    )


if __name__ == "__main__":
    main()
