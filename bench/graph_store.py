"""What a shared ONNX graph store (``TB_GRAPH_DIR``) saves a ranking on a new data directory.

On a CPU every zoo model runs on ONNX Runtime from a graph exported from its PyTorch module,
checked against it, and kept in the graph store (by default ``TB_DATA_DIR/runtimes/onnx``). A
new worker, a new ``TB_DATA_DIR`` or a test run otherwise pays that export once per model;
with ``TB_GRAPH_DIR`` pointing at a store another process filled, it reads the graphs.

For each of ``make demo``'s rankings, each a whole ``transferbench rank`` process (so start-up
and imports count) on a new, empty ``TB_DATA_DIR``:

- ``own store``: the graph store inside the new data directory, empty (what every new data
  directory paid before ``TB_GRAPH_DIR``);
- ``shared store``: ``TB_GRAPH_DIR`` at a store filled by an earlier, untimed ranking.

The two alternate, ``--repeats`` times each; the table gives the median of each and their
ratio, side by side in one run (the machine changes from day to day). The rankings must be
equal: where the graph comes from changes the time, never an answer.

    .venv/bin/python bench/graph_store.py [--per-class 20] [--repeats 3]

Prints a table; writes bench/results/graph_store.json.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
from pathlib import Path

from _common import machine, print_stages, transferbench_json, write_report

RESULTS = Path(__file__).resolve().parent / "results"
STAGES = ("own store", "shared store")


def rank(argv: list[str], env: dict[str, str]) -> tuple[float, list[dict[str, object]]]:
    """Seconds of one whole ``transferbench rank`` process, and its rows (model, scores)."""
    seconds, rows = transferbench_json(argv, env)
    return seconds, [{k: r[k] for k in ("model", "scores")} for r in rows]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-class", type=int, default=20, help="images a class")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each, alternating")
    args = parser.parse_args()
    commands = {
        "fashion-mnist": ["rank", "fashion-mnist", "--per-class", str(args.per_class)],
        "fortunes": ["rank", "fortunes", "--per-class", "10"],
    }
    base = {k: v for k, v in os.environ.items() if k not in ("TB_DATABASE_URL", "TB_GRAPH_DIR")}
    seconds: dict[str, dict[str, list[float]]] = {}
    with tempfile.TemporaryDirectory(prefix="tb-graphs-") as root:
        shared = Path(root) / "graphs"
        for name, argv in commands.items():
            argv = [*argv, "--seed", "0"]
            # fill the shared store (untimed), and the answer every run must give
            _, expected = rank(argv, {**base, "TB_DATA_DIR": f"{root}/fill-{name}",
                                      "TB_GRAPH_DIR": str(shared)})  # fmt: skip
            seconds[name] = {stage: [] for stage in STAGES}
            for i in range(args.repeats):
                for stage in STAGES:
                    env = {**base, "TB_DATA_DIR": f"{root}/{name}-{stage[:3]}-{i}"}
                    if stage == "shared store":
                        env["TB_GRAPH_DIR"] = str(shared)
                    took, rows = rank(argv, env)
                    if rows != expected:
                        raise SystemExit(f"{name}, {stage}: the ranking differs")
                    seconds[name][stage].append(took)
    medians = {n: {s: statistics.median(t[s]) for s in STAGES} for n, t in seconds.items()}
    print_stages(
        f"ranking on a new data directory, {machine()} (median seconds, whole process)",
        medians,
        STAGES,
        ("shared store", "own store"),
    )
    report = {
        "machine": machine(),
        "per_class": {"fashion-mnist": args.per_class, "fortunes": 10},
        "repeats": args.repeats,
        "seconds": seconds,
        "median_seconds": medians,
        "ratio_shared_to_own": {n: m["shared store"] / m["own store"] for n, m in medians.items()},
    }
    write_report(RESULTS / "graph_store.json", report)


if __name__ == "__main__":
    main()
