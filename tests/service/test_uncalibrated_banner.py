"""The dashboard's note above the recommended order: uncalibrated, it describes the weights
actually served with the order; calibrated, it quotes the expected quality with its spread.

Rendered with the dashboard's own template environment from a recommendation the real
recommender made (no database is needed for the note itself)."""

from __future__ import annotations

import csv
import re
from pathlib import Path
from typing import Any

import scoring
from app.services import recommender
from app.web.dashboard.web import templates

TABLE = Path(__file__).resolve().parents[2] / "app" / "reference" / "model_spider_image_zoo.csv"


def _served(rec: scoring.Recommendation) -> dict[str, Any]:
    return {
        "calibrated": rec.calibrated,
        "weights": dict(rec.weights),
        "metrics_used": list(rec.metrics_used),
        "dropped_metrics": dict(rec.dropped_metrics),
    }


def _note(rec: scoring.Recommendation) -> str:
    return _render(_served(rec))


def _render(served: dict[str, Any]) -> str:
    html = templates.env.get_template("_recommendation_note.html").render(rec=served)
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", html)).strip()


def test_uncalibrated_note_names_the_weights_served() -> None:
    """The default metrics: only LogME and shrinkage H-score carry weight (0.5 each); LEEP and
    the linear probe are shown but not weighed, which the old note called 'equally'."""
    scores = {
        "logme": {"a": 1.0, "b": 2.0, "c": 3.0},
        "leep": {"a": -1.0, "b": -2.0, "c": -3.0},
        "hscore_shrinkage": {"a": 3.0, "b": 1.0, "c": 2.0},
        "linear_probe": {"a": 0.5, "b": 0.7, "c": 0.6},
    }
    rec = scoring.fit_recommender({"t": scoring.DatasetRecord(scores)}).recommend(scores)
    assert rec.weights["logme"] == rec.weights["hscore_shrinkage"] == 0.5
    note = _note(rec)
    assert "hscore_shrinkage 0.500, logme 0.500" in note
    assert "leep, linear_probe are shown but not weighed" in note
    assert "equally" not in note
    assert note.startswith("Uncalibrated: no outcomes yet, so the recommended order weighs")
    why = "the 4 datasets with fine-tuning outcomes of this kind cannot measure an order"
    assert _render({**_served(rec), "uncalibrated_reason": why}).startswith(
        f"Uncalibrated: {why}, so the recommended order weighs"
    )


def test_calibrated_note_states_the_spread_of_its_expected_quality() -> None:
    """A calibrated note quotes the leave-one-dataset-out weighted tau with its standard
    error and its range over the held-out datasets (a quality recorded before these were
    stored is quoted without them)."""
    with TABLE.open(newline="") as fh:
        table = scoring.datasets_from_rows(csv.DictReader(fh), outcome="finetune_top1")
    quality = recommender.quality_of(scoring.evaluate_lodo(table))
    served = {"calibrated": True, "learned_from_datasets": 8, "weights": {}, "metrics_used": []}
    tau, se, (low, high) = (
        quality["weighted_tau"],
        quality["weighted_tau_se"],
        quality["weighted_tau_range"],
    )
    note = _render({**served, "expected_quality": quality})
    regret, regret_se = quality["top1_regret"], quality["top1_regret_se"]
    # the figures as the API's statement and the CLI give them: two decimals, ± each s.e.
    assert (
        f"weighted τ {tau:.2f} ± {se:.2f} (one standard error; single datasets "
        f"{low:.2f} to {high:.2f}) and a top-1 regret of {regret:.2f} ± {regret_se:.2f} points"
    ) in " ".join(note.split())
    assert f"weighted tau {tau:.2f} ± {se:.2f}" in quality["statement"]
    old = {k: v for k, v in quality.items() if k not in ("weighted_tau_se", "weighted_tau_range")}
    note = _render({**served, "expected_quality": old})
    assert f"weighted τ {tau:.2f} and a top-1 regret of" in note
