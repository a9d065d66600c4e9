"""A repeat ``rank``: what the feature cache and the score cache each save, side by side.

Runs each of ``make demo``'s rankings three times in one fresh ``TB_DATA_DIR``:

- ``first``: nothing cached (extraction and scoring);
- ``features cached``: the score cache emptied first, so the features are read and every
  metric computed again (a repeat ranking before the score cache);
- ``both cached``: features and scores read (a repeat ranking now).

Each is a whole ``transferbench rank`` process, so interpreter start-up and imports count.
The figures of one run compare with each other only (the machine changes from day to day).

    python bench/repeat_rank.py [--per-class 200]

Prints a table; writes bench/results/repeat_rank.json.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
from pathlib import Path

from _common import machine, print_stages, transferbench_json, write_report

RESULTS = Path(__file__).resolve().parent / "results"

STAGES = ("first", "features cached", "both cached")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-class", type=int, default=200, help="images a class (demo: 200)")
    args = parser.parse_args()
    commands = {
        "fashion-mnist": ["rank", "fashion-mnist", "--per-class", str(args.per_class)],
        "fortunes": ["rank", "fortunes", "--per-class", "50"],
    }
    runs: dict[str, dict[str, float]] = {}
    for name, argv in commands.items():
        with tempfile.TemporaryDirectory(prefix="tb-repeat-") as data_dir:
            env = {**os.environ, "TB_DATA_DIR": data_dir}
            env.pop("TB_DATABASE_URL", None)
            runs[name] = {}
            outputs = []
            for stage in STAGES:
                if stage == "features cached":
                    shutil.rmtree(Path(data_dir) / "scores")
                runs[name][stage], rows = transferbench_json([*argv, "--seed", "0"], env)
                outputs.append([{k: r[k] for k in ("model", "scores")} for r in rows])
            # the cache changes the time, never an answer
            if not outputs[0] == outputs[1] == outputs[2]:
                raise SystemExit(f"{name}: the three rankings differ")
    print_stages(
        f"repeat rank on {machine()} (seconds, whole process)",
        runs,
        STAGES,
        ("both cached", "features cached"),
    )
    out = RESULTS / "repeat_rank.json"
    report = {
        "machine": machine(),
        "per_class": args.per_class,
        "seconds": runs,
        "ratio_both_to_features": {
            n: t["both cached"] / t["features cached"] for n, t in runs.items()
        },
    }
    write_report(out, report)


if __name__ == "__main__":
    main()
