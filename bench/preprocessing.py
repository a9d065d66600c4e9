"""Image input cost: decode, geometry and normalisation, alone and inside extraction, with an
optional A/B against another checkout of transferbench in the same run.

Measured for the checkout this script imports ``workers`` from:

- ``geometry``: ms/image to decode, resize, crop and place images in a batch in one thread
  (``in_process_batches``), for Fashion-MNIST (28-px greyscale, upscaled) and for 1024-px
  colour JPEGs (``draft`` decode, downscaled);
- ``loader``: images/s of the worker-process loader (``decoded_batches``, 224 px, batches of
  512 as on a GPU) with 1 and 2 workers, on Fashion-MNIST: what feeds a GPU;
- ``normalize``: ms per batch of 8 for each zoo model's input (uint8 batch -> its float input);
- ``extract``: images/s of the whole CPU pipeline per image zoo model (default runtime) on
  Fashion-MNIST, and of the whole image zoo in one job.

``--baseline DIR`` runs the same measurements against the checkout in ``DIR`` (e.g. a ``git
worktree`` of an earlier commit) in subprocesses, alternating with this one, ``--rounds``
times, and prints both with their ratio; each figure is the best over rounds.

    python bench/preprocessing.py [--baseline DIR] [--rounds 3] [--n 256] [--sections a,b]

Prints a table; writes bench/results/preprocessing.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _common import best_of, machine, make_jpegs, write_report  # noqa: E402

RESULTS = HERE / "results"


SECTIONS = ("geometry", "loader", "normalize", "extract")


def measure(n: int, jpegs: int, data_dir: Path, sections: set[str]) -> dict[str, float]:
    """Every figure for the ``workers`` package on ``sys.path`` (imported here, not above)."""
    import numpy as np
    import torch

    from workers.pipeline.datasets.builtin import fashion_mnist
    from workers.pipeline.datasets.images import read_image_folder
    from workers.pipeline.extraction import extract
    from workers.pipeline.loader import decoded_batches, in_process_batches
    from workers.pipeline.models import load_model, zoo_names
    from workers.pipeline.models.preprocessing import ImageRecipe
    from workers.pipeline.runtime import configure
    from workers.settings import Settings

    configure()
    cpu = torch.device("cpu")
    out: dict[str, float] = {}
    fmnist = fashion_mnist("t10k")
    images = fmnist.subsample(n // 10 + 1, seed=0).select(np.arange(n))
    recipe = ImageRecipe()

    def run_in_process(samples: Any, size: int) -> None:
        for _ in in_process_batches(samples, [recipe], size, cpu):
            pass

    if "geometry" in sections:
        out["geometry fashion-mnist ms/img"] = (
            1e3 * best_of(lambda: run_in_process(images.samples, 8), 3) / n
        )
        with tempfile.TemporaryDirectory(prefix="tb-bench-jpegs-") as tmp:
            photos = read_image_folder(make_jpegs(Path(tmp), jpegs))
            out["geometry 1024px jpeg ms/img"] = (
                1e3 * best_of(lambda: run_in_process(photos.samples, 8), 3) / jpegs
            )
            # one job of four models of different input sizes (EfficientNet-Lite0 to 3's):
            # each recipe's pixels are decoded for its own resize (drafted JPEGs differ)
            sizes = ((224, 256), (240, 274), (260, 297), (280, 320))
            four = [ImageRecipe(size=size, resize=resize) for size, resize in sizes]

            def four_recipes() -> None:
                for _ in in_process_batches(photos.samples, four, 8, cpu):
                    pass

            out["geometry 1024px jpeg, 4 recipes ms/img"] = 1e3 * best_of(four_recipes, 3) / jpegs
    many = fmnist.samples[:4096]
    for workers in (1, 2) if "loader" in sections else ():

        def run_workers(workers: int = workers) -> None:
            for _ in decoded_batches(many, [recipe], 512, workers, cpu):
                pass

        out[f"loader {workers} worker img/s"] = len(many) / best_of(run_workers, 2)

    settings = Settings(data_dir=data_dir)
    models = [load_model(name, settings) for name in zoo_names("image")]
    batch = next(in_process_batches(images.samples[:8], [recipe], 8, cpu))[0]
    for model in models if "normalize" in sections else []:
        # the uint8 batch -> the model's float input (the same call on either checkout)
        feed = lambda m=model: m.recipe.normalize(batch)  # noqa: E731
        out[f"normalize {model.name} ms/batch"] = 1e3 * best_of(feed, 50)
    if "extract" not in sections:
        return out
    for model in models:
        extract([model], images.select(np.arange(16)), batch_size=8)  # warm-up
        seconds = best_of(lambda m=model: extract([m], images, batch_size=8), 2)
        out[f"extract {model.name} img/s"] = n / seconds
    seconds = best_of(lambda: extract(models, images, batch_size=8), 2)
    out["extract whole image zoo img/s"] = n / seconds
    return out


def _child(args: argparse.Namespace) -> None:
    # the checkout's packages, not this folder's scripts: bench/scoring.py shadowed the
    # ``scoring`` package (the script's folder comes first on sys.path)
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]
    figures = measure(args.n, args.jpegs, Path(args.data_dir), set(args.sections.split(",")))
    print("RESULT " + json.dumps(figures), flush=True)


def _run(checkout: Path, args: argparse.Namespace, data_dir: Path) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": str(checkout), "PYTHONWARNINGS": "ignore"}
    command = [sys.executable, str(Path(__file__).resolve()), "--child"]
    command += ["--n", str(args.n), "--jpegs", str(args.jpegs), "--data-dir", str(data_dir)]
    command += ["--sections", args.sections]
    done = subprocess.run(
        command, env=env, cwd=checkout, capture_output=True, text=True, check=False
    )
    lines = [x for x in done.stdout.splitlines() if x.startswith("RESULT ")]
    if done.returncode != 0 or not lines:
        sys.exit(f"the measurement failed in {checkout}:\n{done.stderr[-3000:]}")
    result: dict[str, float] = json.loads(lines[-1][len("RESULT ") :])
    return result


def _better(name: str) -> str:
    return "higher" if name.endswith("img/s") else "lower"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", type=Path, help="another checkout to compare against")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--n", type=int, default=256, help="Fashion-MNIST images per job")
    parser.add_argument("--jpegs", type=int, default=32, help="1024-px JPEGs for the geometry")
    parser.add_argument("--sections", default=",".join(SECTIONS), help="comma list of: %(default)s")
    parser.add_argument("--out", type=Path, default=RESULTS / "preprocessing.json")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--data-dir", default="", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    unknown = set(args.sections.split(",")) - set(SECTIONS)
    if unknown:
        parser.error(f"unknown sections {sorted(unknown)}; choose from {', '.join(SECTIONS)}")
    if args.child:
        _child(args)
        return 0
    here = HERE.parent
    checkouts = {"this": here}
    if args.baseline is not None:
        if not (args.baseline / "workers" / "pipeline").is_dir():
            parser.error(f"{args.baseline} is not a transferbench checkout (no workers/pipeline)")
        checkouts = {"baseline": args.baseline.resolve(), "this": here}
    runs: dict[str, list[dict[str, float]]] = {k: [] for k in checkouts}
    with tempfile.TemporaryDirectory(prefix="tb-bench-") as data_dir:
        for r in range(args.rounds):
            for label, checkout in checkouts.items():
                print(f"round {r + 1}/{args.rounds}: {label} ({checkout})", flush=True)
                runs[label].append(_run(checkout, args, Path(data_dir)))
    best: dict[str, dict[str, float]] = {}
    for label, results in runs.items():
        best[label] = {
            k: (max if _better(k) == "higher" else min)(r[k] for r in results) for k in results[0]
        }
    report: dict[str, Any] = {
        "machine": machine(),
        "rounds": args.rounds,
        "n_images": args.n,
        "jpegs": args.jpegs,
        "checkouts": {k: str(v) for k, v in checkouts.items()},
        "best": best,
        "runs": runs,
    }
    head = f"{'figure':42s}" + "".join(f"{k:>12s}" for k in checkouts)
    if "baseline" in best:
        head += f"{'ratio':>9s}"
        report["ratio"] = {}
    print(f"\n{report['machine']}; best of {args.rounds} rounds\n{head}")
    for key in best["this"]:
        row = f"{key:42s}" + "".join(f"{best[k].get(key, float('nan')):12.3f}" for k in checkouts)
        if "baseline" in best and key in best["baseline"]:
            this, base = best["this"][key], best["baseline"][key]
            ratio = this / base if _better(key) == "higher" else base / this
            report["ratio"][key] = ratio
            row += f"{ratio:8.2f}x"
        print(row)
    write_report(
        args.out, report, "ratio > 1: this checkout is better" if "ratio" in report else ""
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
