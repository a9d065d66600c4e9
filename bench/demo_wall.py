"""``make demo``'s wall time with the optimised CPU runtime and without it, side by side.

Runs the demo's two rankings (the image zoo on 2,000 Fashion-MNIST images, the text zoo on
fortunes) as ``make demo`` does, once with ``TB_RUNTIME=torch`` (the PyTorch forward pass, as
before the optimised runtime) and once with the default, each in a fresh ``TB_DATA_DIR`` (no
feature cache, no exported graph: a first ``make demo`` on a new machine, exports included).
The order alternates over ``--rounds``; the figure is each configuration's best round.

    python bench/demo_wall.py [--rounds 1]

Prints a table; writes bench/results/demo_wall.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
BIN = Path(sys.executable).parent
COMMANDS = [
    ["rank", "fashion-mnist", "--per-class", "200", "--seed", "0"],
    ["rank", "fortunes", "--per-class", "50", "--seed", "0"],
]
RUNTIMES = {"torch": "torch", "default": "auto"}


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def demo(runtime: str) -> dict[str, float]:
    """Seconds for each demo command, in a fresh data directory."""
    with tempfile.TemporaryDirectory(prefix="tb-demo-") as data_dir:
        env = {**os.environ, "TB_RUNTIME": runtime, "TB_DATA_DIR": data_dir}
        env.pop("TB_DATABASE_URL", None)
        times = {}
        for command in COMMANDS:
            start = time.perf_counter()
            subprocess.run(
                [str(BIN / "transferbench"), *command],
                env=env,
                check=True,
                stdout=subprocess.DEVNULL,
            )
            times[command[1]] = time.perf_counter() - start
        times["total"] = sum(times.values())
        return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=1)
    args = parser.parse_args()
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in RUNTIMES}
    for round_ in range(args.rounds):
        order = list(RUNTIMES) if round_ % 2 == 0 else list(reversed(RUNTIMES))
        for name in order:
            runs[name].append(demo(RUNTIMES[name]))
            print(f"round {round_ + 1}, {name}: {runs[name][-1]['total']:.1f} s", flush=True)
    best = {name: min(r, key=lambda t: t["total"]) for name, r in runs.items()}
    print("\n| demo step | TB_RUNTIME=torch (s) | default (s) | ratio |")
    print("|---|---|---|---|")
    for step in [c[1] for c in COMMANDS] + ["total"]:
        before, after = best["torch"][step], best["default"][step]
        print(f"| {step} | {before:.1f} | {after:.1f} | {after / before:.2f} |")
    RESULTS.mkdir(exist_ok=True)
    out = {
        "machine": {
            "cpu": cpu_model(),
            "cores": os.cpu_count(),
            "python": platform.python_version(),
        },
        "rounds": args.rounds,
        "runs": runs,
        "best": best,
        "ratio_total": best["default"]["total"] / best["torch"]["total"],
    }
    (RESULTS / "demo_wall.json").write_text(json.dumps(out, indent=2) + "\n")
    print(f"\nwrote {RESULTS / 'demo_wall.json'}")


if __name__ == "__main__":
    main()
