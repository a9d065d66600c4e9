"""Helpers the CPU benchmarks share: timing, the machine's name, writing a report."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any


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
