"""The dashboard's "uncalibrated" note describes the weights actually served with the order.

Rendered with the dashboard's own template environment from a recommendation the real
recommender made (no database is needed for the note itself)."""

from __future__ import annotations

import re

import scoring
from app.web.dashboard.web import templates


def _note(rec: scoring.Recommendation) -> str:
    served = {
        "calibrated": rec.calibrated,
        "weights": dict(rec.weights),
        "metrics_used": list(rec.metrics_used),
        "dropped_metrics": dict(rec.dropped_metrics),
    }
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
