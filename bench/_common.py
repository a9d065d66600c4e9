"""Helpers the benchmarks share: timing, the machine's name, writing a report, test JPEGs,
and how far two feature matrices agree."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np


def best_of(fn: Callable[[], object], repeats: int, warmup: bool = False) -> float:
    """The shortest wall time of ``repeats`` calls of ``fn`` (after one untimed call with
    ``warmup``)."""
    if warmup:
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def cpu_name() -> str:
    """The CPU's model name as ``lscpu`` gives it (the Python platform's guess without it)."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    return platform.processor() or platform.machine()


def machine() -> str:
    """``"<CPU model>, <N> cores"``: what a result was measured on."""
    return f"{cpu_name()}, {os.cpu_count()} cores"


def write_report(path: Path, report: dict[str, Any], note: str = "") -> None:
    """``report`` as indented JSON at ``path`` (folders made), and a line saying so."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwrote {path}{f' ({note})' if note else ''}")


def transferbench_json(argv: list[str], env: dict[str, str]) -> tuple[float, Any]:
    """Seconds of one whole ``transferbench ARGV --format json --quiet`` process (start-up and
    imports included), from this interpreter's environment, and its parsed output; exits
    with its stderr when it fails."""
    import sys

    start = time.perf_counter()
    done = subprocess.run(
        [str(Path(sys.executable).parent / "transferbench"), *argv, "--format", "json", "--quiet"],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    seconds = time.perf_counter() - start
    if done.returncode:
        raise SystemExit(f"transferbench {' '.join(argv)} failed:\n{done.stderr}")
    return seconds, json.loads(done.stdout)


def print_stages(
    title: str,
    seconds: dict[str, dict[str, float]],
    stages: tuple[str, ...],
    ratio: tuple[str, str],
) -> None:
    """A table of seconds, a row per dataset and a column per stage, and the ratio of the
    stage ``ratio[0]`` to ``ratio[1]``."""
    width = max(len(s) for s in stages) + 2
    label = f"{ratio[0].split()[0]} / {ratio[1].split()[0]}"
    print(f"\n{title}")
    print("dataset".ljust(16) + "".join(s.rjust(width) for s in stages) + label.rjust(18))
    for name, t in seconds.items():
        row = "".join(f"{t[s]:{width}.1f}" for s in stages)
        print(name.ljust(16) + row + f"{t[ratio[0]] / t[ratio[1]]:18.2f}")


def make_jpegs(root: Path, count: int) -> Path:
    """``count`` 1024-px JPEGs (quality 90) cut from scikit-learn's two sample photos with
    random crops and flips, two classes: a realistic decode load."""
    from PIL import Image
    from sklearn.datasets import load_sample_images

    photos = [Image.fromarray(p) for p in load_sample_images().images]
    rng = np.random.default_rng(0)
    folder = root / "photos"
    for i in range(count):
        photo = photos[i % len(photos)]
        w, h = photo.size
        cw, ch = int(w * rng.uniform(0.6, 1.0)), int(h * rng.uniform(0.6, 1.0))
        x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        image = photo.crop((x, y, x + cw, y + ch))
        if rng.random() < 0.5:
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        scale = 1024 / min(image.size)
        image = image.resize((round(image.size[0] * scale), round(image.size[1] * scale)))
        target = folder / f"class{i % 2}" / f"{i:04d}.jpg"
        target.parent.mkdir(parents=True, exist_ok=True)
        image.save(target, quality=90)
    return folder


def agreement(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    """Features ``a`` against reference ``b`` ``(N, D)``, per sample: max and median relative
    error (L2), min cosine."""
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    rel = np.linalg.norm(a64 - b64, axis=1) / np.maximum(np.linalg.norm(b64, axis=1), 1e-30)
    cos = np.sum(a64 * b64, axis=1) / np.maximum(
        np.linalg.norm(a64, axis=1) * np.linalg.norm(b64, axis=1), 1e-30
    )
    return {
        "max_rel": float(rel.max()),
        "median_rel": float(np.median(rel)),
        "min_cosine": float(cos.min()),
    }
