"""Pooled scores (ETran, NCTI) in a local ranking: ``rank --metrics etran,ncti`` asks for
their components, and the table, the JSON and the CSV show each pooled score, computed over
the models of that ranking by ``scoring.etran_pool`` / ``scoring.ncti_pool``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import scoring
from scoring.pool import ETRAN_WEIGHTS, NCTI_WEIGHTS, expand, pool_scores
from workers.cli.main import main
from workers.pipeline.errors import PipelineError
from workers.pipeline.ranking import resolve_metrics


@pytest.fixture
def three_models(tmp_path: Path) -> Path:
    """A feature file of three models whose class means sit 0.2, 0.5 and 1.0 apart (in units
    of the within-class spread): none of the components saturates on them."""
    rng = np.random.default_rng(0)
    labels = np.array(["a", "b", "c", "d"] * 40)
    codes = np.unique(labels, return_inverse=True)[1]
    arrays = {}
    for name, offset in {"near": 0.2, "mid": 0.5, "far": 1.0}.items():
        means = rng.normal(size=(4, 12))
        arrays[f"{name}.features"] = rng.normal(size=(len(labels), 12)) + offset * means[codes]
    path = tmp_path / "three.npz"
    np.savez(path, labels=labels, **arrays)
    return path


def test_pooled_names_stand_for_their_components() -> None:
    assert expand(["ETran", "logme", "etran_lda"]) == ["etran_energy", "etran_lda", "logme"]
    assert resolve_metrics(["ncti"], "classification") == list(NCTI_WEIGHTS)
    with pytest.raises(PipelineError, match=r"or a pooled score \(etran, ncti\)"):
        resolve_metrics(["bogus"], "classification")


def test_json_carries_each_pooled_score(three_models: Path, capsys) -> None:
    argv = ["rank", str(three_models), "--metrics", "etran,ncti,logme", "--format", "json"]
    assert main([*argv, "--quiet"]) == 0
    rows = json.loads(capsys.readouterr().out)
    scores = {row["model"]: row["scores"] for row in rows}
    assert set(scores["far"]) == {"recommended", *ETRAN_WEIGHTS, *NCTI_WEIGHTS, "logme"}
    etran = scoring.etran_pool({m: {c: s[c] for c in ETRAN_WEIGHTS} for m, s in scores.items()})
    ncti = scoring.ncti_pool({m: {c: s[c] for c in NCTI_WEIGHTS} for m, s in scores.items()})
    for row in rows:
        assert row["pooled"]["etran"]["value"] == pytest.approx(etran[row["model"]], rel=1e-12)
        assert row["pooled"]["ncti"]["value"] == pytest.approx(ncti[row["model"]], rel=1e-12)
        assert row["pooled"]["etran"]["models"] == 3
        assert row["pooled"]["ncti"]["components"] == list(NCTI_WEIGHTS)
        assert "pooled over the 3 models of this ranking" in row["pooled"]["etran"]["note"]
    assert max(etran, key=etran.__getitem__) == "far"  # the best separated model


def test_table_and_csv_show_the_pooled_columns(three_models: Path, capsys) -> None:
    assert main(["rank", str(three_models), "--metrics", "etran", "--quiet"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ["rank", "model", "recommended", "etran_energy", "etran_lda", "etran"]
    note = next(line for line in out if line.startswith("etran: "))
    assert "pooled over the 3 models of this ranking" in note and "never stored" in note
    argv = ["rank", str(three_models), "--metrics", "etran", "--format", "csv", "--quiet"]
    assert main(argv) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "rank,model,recommended,etran_energy,etran_lda,etran"
    assert all(line.count(",") == 5 and line.split(",")[-1] for line in lines[1:])


def test_no_pooled_score_without_its_components(three_models: Path, capsys) -> None:
    argv = ["rank", str(three_models), "--metrics", "etran_energy,logme", "--format", "json"]
    assert main([*argv, "--quiet"]) == 0
    assert all("pooled" not in row for row in json.loads(capsys.readouterr().out))


def test_a_model_without_every_component_is_left_out_of_the_pool() -> None:
    scores = {
        "a": {"etran_energy": 1.0, "etran_lda": 0.2},
        "b": {"etran_energy": 3.0, "etran_lda": 0.6},
        "c": {"etran_energy": 2.0, "etran_lda": None},  # degenerate: not computed
    }
    (etran,) = pool_scores(scores, list(ETRAN_WEIGHTS)).values()
    assert etran.models == 2 and etran.error is None
    assert etran.values == {"a": 0.0, "b": 1.0, "c": None}
    lone = pool_scores({k: scores[k] for k in "ac"}, list(ETRAN_WEIGHTS))["etran"]
    assert lone.values == {"a": None, "c": None} and lone.models == 1
    assert "needs at least 2 models with all of them; 1 of the 2 here" in lone.note
