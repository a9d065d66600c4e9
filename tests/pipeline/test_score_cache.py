"""The score cache: a repeat ranking reads each metric's result, equal to computing it; any
change to what a score depends on (an array, a label, the metric's code) misses it; a bad
entry is computed again; ``--no-cache`` neither reads nor writes it."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import scoring
from workers.cli.main import main
from workers.pipeline import score_cache
from workers.pipeline.score_cache import ScoreCache, compute_cached

METRICS = ["logme", "linear_probe", "nleep", "hscore_shrinkage", "gbc"]


def _inputs(per_class: int = 8, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Features with some class structure, four classes of ``per_class`` samples."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.array(["bag", "coat", "shoe", "shirt"]), per_class)
    codes = np.unique(labels, return_inverse=True)[1]
    features = rng.normal(size=(labels.size, 12)) + 1.5 * np.eye(12)[codes]
    return features.astype(np.float32), labels


def _entries(root: Path) -> list[Path]:
    return sorted(root.rglob("*.json"))


def test_cached_results_equal_computed_ones_and_are_read_back(tmp_path: Path) -> None:
    features, labels = _inputs()
    cache = ScoreCache(tmp_path)
    expected = scoring.compute_detailed(METRICS, labels, features=features)
    first = compute_cached(
        cache, METRICS, labels, features=features, probs=None, target="classification"
    )
    assert first == expected
    assert len(_entries(tmp_path)) == len(METRICS)
    # the second call reads every entry: a value written into one is what it returns
    key = cache.key(cache.inputs_key(features, None, labels, "classification"), "logme")
    cache.path(key).write_text(json.dumps({"value": 123.5}))
    again = compute_cached(
        cache, METRICS, labels, features=features, probs=None, target="classification"
    )
    assert again.values == {**expected.values, "logme": 123.5}
    assert again.errors == expected.errors and again.degenerate == expected.degenerate


def test_a_metric_that_refused_its_inputs_is_kept_with_why(tmp_path: Path) -> None:
    """Two samples a class: metrics that need more say so, and say so again from the cache."""
    features, labels = _inputs(per_class=2)
    cache = ScoreCache(tmp_path)
    expected = scoring.compute_detailed(METRICS, labels, features=features)
    assert expected.errors  # the case this test is about
    for _ in range(2):
        got = compute_cached(
            cache, METRICS, labels, features=features, probs=None, target="classification"
        )
        assert got == expected
    assert len(_entries(tmp_path)) == len(METRICS)


@pytest.mark.parametrize(
    "change", ["a feature", "a label", "the labels' order", "probs", "the code"]
)
def test_anything_a_score_depends_on_gives_another_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, change: str
) -> None:
    features, labels = _inputs()
    cache = ScoreCache(tmp_path)
    compute_cached(cache, ["logme"], labels, features=features, probs=None, target="classification")
    (entry,) = _entries(tmp_path)
    entry.write_text(json.dumps({"value": 123.5}))  # what a read of the old key would give
    probs = None
    if change == "a feature":
        features = features.copy()
        features[3, 4] += 1e-3
    elif change == "a label":
        labels = labels.copy()
        labels[0] = "coat"
    elif change == "the labels' order":
        order = np.random.default_rng(1).permutation(labels.size)
        features, labels = features[order], labels[order]
    elif change == "probs":
        probs = np.full((labels.size, 3), 1 / 3)
    else:
        monkeypatch.setattr(score_cache, "code_fingerprint", lambda: "another version of scoring")
    got = compute_cached(
        cache, ["logme"], labels, features=features, probs=probs, target="classification"
    )
    assert got.values["logme"] == scoring.compute(["logme"], labels, features=features)["logme"]
    assert len(_entries(tmp_path)) == 2


def test_the_code_fingerprint_changes_with_any_scoring_source_file(tmp_path: Path) -> None:
    package = tmp_path / "scoring"
    shutil.copytree(Path(scoring.__file__).parent, package, ignore=shutil.ignore_patterns("*.pyc"))
    base = score_cache.source_fingerprint(package)
    assert base == score_cache.code_fingerprint()  # the copy is the package
    seen = {base}
    edited = sorted(package.rglob("*.py"))[::5]  # a few of its files, one at a time
    for edit in edited:
        original = edit.read_bytes()
        edit.write_bytes(original + b"\n")
        seen.add(score_cache.source_fingerprint(package))
        edit.write_bytes(original)
    (package / "new_metric.py").write_text("VALUE = 1\n")
    seen.add(score_cache.source_fingerprint(package))
    assert len(seen) == 2 + len(edited)


@pytest.mark.parametrize("content", ["", "{not json", '{"value": "high"}', '{"value": NaN}', "[]"])
def test_an_unreadable_entry_is_removed_and_computed_again(tmp_path: Path, content: str) -> None:
    features, labels = _inputs()
    cache = ScoreCache(tmp_path)
    key = cache.key(cache.inputs_key(features, None, labels, "classification"), "logme")
    cache.path(key).parent.mkdir(parents=True)
    cache.path(key).write_text(content)
    got = compute_cached(
        cache, ["logme"], labels, features=features, probs=None, target="classification"
    )
    assert got.values["logme"] == scoring.compute(["logme"], labels, features=features)["logme"]
    assert json.loads(cache.path(key).read_text()) == {"value": got.values["logme"]}


def test_bad_inputs_raise_and_store_nothing(tmp_path: Path) -> None:
    features, labels = _inputs()
    features[0, 0] = np.nan
    with pytest.raises(scoring.TransferabilityError, match="NaN"):
        compute_cached(ScoreCache(tmp_path), METRICS, labels, features=features, probs=None,
                       target="classification")  # fmt: skip
    assert not _entries(tmp_path)


def test_a_repeat_rank_reads_the_scores_and_no_cache_reads_none(
    tmp_path: Path, data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The CLI: a second `rank` on the same file shows what the score cache holds (here a
    value written into it, so the read is visible); `--no-cache` computes and stores nothing."""
    features, labels = _inputs()
    path = tmp_path / "two.npz"
    np.savez(path, labels=labels, **{"a.features": features, "b.features": features[:, ::-1] * 0.5})
    argv = ["rank", str(path), "--metrics", "logme,linear_probe", "--format", "json", "--quiet"]
    assert main(argv) == 0

    def scores(out: str) -> dict[str, dict[str, float]]:  # the metrics' (not the order's)
        return {r["model"]: {m: r["scores"][m] for m in ("logme", "linear_probe")}
                for r in json.loads(out)}  # fmt: skip

    first = scores(capsys.readouterr().out)
    root = data_dir / "scores"
    assert len(_entries(root)) == 4  # two models x two metrics
    cache = ScoreCache(root)
    key = cache.key(cache.inputs_key(features, None, labels, "classification"), "logme")
    cache.path(key).write_text(json.dumps({"value": 123.5}))
    assert main(argv) == 0
    second = scores(capsys.readouterr().out)
    assert second == {"a": {**first["a"], "logme": 123.5}, "b": first["b"]}
    assert main([*argv, "--no-cache"]) == 0
    assert scores(capsys.readouterr().out) == first
    assert len(_entries(root)) == 4


def test_a_cache_that_cannot_be_written_costs_the_ranking_nothing_and_says_so_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    features, labels = _inputs()
    blocked = tmp_path / "scores"
    blocked.write_text("a file where the cache's folder would be")
    expected = scoring.compute_detailed(METRICS, labels, features=features)
    with caplog.at_level("WARNING", logger=score_cache.__name__):
        got = compute_cached(
            ScoreCache(blocked), METRICS, labels, features=features, probs=None,
            target="classification",
        )  # fmt: skip
    assert got == expected
    (warning,) = [r for r in caplog.records if r.levelname == "WARNING"]
    assert "scores are not cached" in warning.getMessage() and str(blocked) in warning.getMessage()
    assert blocked.read_text().startswith("a file")
    assert not list(tmp_path.glob("**/*.tmp"))


def test_the_cli_ranks_with_an_unwritable_score_cache(
    tmp_path: Path,
    data_dir: Path,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    features, labels = _inputs()
    path = tmp_path / "one.npz"
    np.savez(path, labels=labels, **{"a.features": features, "b.features": features[:, ::-1]})
    (data_dir / "scores").write_text("not a folder")
    argv = ["rank", str(path), "--metrics", "logme", "--format", "json", "--quiet"]
    assert main(argv) == 0
    out = capsys.readouterr()
    assert {r["model"] for r in json.loads(out.out)} == {"a", "b"}
    said = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert sum("scores are not cached" in m for m in said) == 1


def test_the_score_cache_keeps_the_cli_light() -> None:
    """The CLI's entry point, its report and the remote client import the ranking module and
    through it the score cache; none of them may pull in torch (seconds at every start)."""
    modules = ["workers.cli.main", "workers.cli.remote", "workers.pipeline.score_cache"]
    code = f"import sys\nfor m in {modules!r}: __import__(m)\nprint('torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"
