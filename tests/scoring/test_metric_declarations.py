"""A metric is its module, its registry entry and its test: the entry carries the public
function and the properties the registry-wide tests check, and those tests read the registry,
so a newly registered metric is covered with no list of names to extend."""

from __future__ import annotations

import inspect
import os
import re
import subprocess
import sys
from pathlib import Path

import scoring

ROOT = Path(__file__).resolve().parents[2]

#: Registered before pytest collects ``tests/scoring``: clones of a feature metric and of a
#: probability metric under new names, and one whose function checks nothing at all.
THROWAWAY_PLUGIN = '''
import dataclasses

import scoring


def unchecked(x, labels, **options):
    """Accepts anything: the registry-wide bad-input checks must catch it."""
    return 0.0


scoring.REGISTRY["throwaway_features"] = dataclasses.replace(
    scoring.REGISTRY["hscore_shrinkage"], name="throwaway_features"
)
scoring.REGISTRY["throwaway_probs"] = dataclasses.replace(
    scoring.REGISTRY["leep"], name="throwaway_probs"
)
scoring.REGISTRY["throwaway_unchecked"] = dataclasses.replace(
    scoring.REGISTRY["hscore_shrinkage"], name="throwaway_unchecked", function=unchecked
)
'''


def _pytest_with_throwaways(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    (tmp_path / "throwaway_metrics.py").write_text(THROWAWAY_PLUGIN)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT)])}
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-p",
            "throwaway_metrics",
            "-p",
            "no:cacheprovider",
            *args,
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_every_entry_s_function_is_exported_under_its_own_name() -> None:
    for name, spec in scoring.REGISTRY.items():
        exported = spec.function.__name__
        assert exported in scoring.__all__, f"{name}: scoring.{exported} is not exported"
        assert getattr(scoring, exported) is spec.function, name


def test_every_public_function_of_a_metric_module_is_registered() -> None:
    """A second public function in a metric's module (``hscore_shrinkage`` beside ``hscore``)
    is a metric of its own and needs an entry."""
    modules = {spec.function.__module__ for spec in scoring.REGISTRY.values()}
    registered = {spec.function for spec in scoring.REGISTRY.values()}
    for name in scoring.__all__:
        member = getattr(scoring, name)
        if inspect.isfunction(member) and member.__module__ in modules:
            assert member in registered, f"scoring.{name} has no registry entry"


def _swap(node_id: str, old: str, new: str) -> str:
    """``node_id`` with the parameter ``old`` (a whole one, not part of another) as ``new``."""
    return re.sub(rf"(?<=[\[-]){re.escape(old)}(?=[\]-])", new, node_id)


def test_a_newly_registered_metric_is_in_every_registry_wide_parametrisation(
    tmp_path: Path,
) -> None:
    """Wherever a test is parametrised over hscore_shrinkage or leep, it is parametrised over
    a new metric declared like them too."""
    result = _pytest_with_throwaways(tmp_path, "--collect-only", "-q", "tests/scoring")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    ids = {line for line in result.stdout.splitlines() if "::" in line}
    for original, clone in (
        ("hscore_shrinkage", "throwaway_features"),
        ("leep", "throwaway_probs"),
    ):
        over_original = {i for i in ids if _swap(i, original, "@") != i}
        assert over_original, original
        missing = {_swap(i, original, clone) for i in over_original} - ids
        assert not missing, f"not parametrised over a new metric: {sorted(missing)}"


def test_a_newly_registered_metric_that_checks_nothing_fails_the_bad_input_tests(
    tmp_path: Path,
) -> None:
    result = _pytest_with_throwaways(
        tmp_path, "-q", "-rf", "-k", "throwaway_unchecked", "tests/scoring/test_bad_input.py"
    )
    failed = {
        line.split("::")[1].split("[")[0]
        for line in result.stdout.splitlines()
        if line.startswith("FAILED")
    }
    assert result.returncode == 1, result.stdout[-3000:] + result.stderr[-3000:]
    assert {
        "test_non_finite_values",
        "test_single_class",
        "test_mismatched_lengths",
        "test_fewer_than_two_samples",
        "test_missing_labels",
        "test_constant_features",
    } <= failed, failed
