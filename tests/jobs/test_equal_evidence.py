"""A dataset's recommended order compares its models on equal evidence, on real PostgreSQL
with the workers' steps run as plain functions (``tests/jobs/harness.py``):
real models, real features, real scores.

The finding: a dataset ranked on logme alone for two models while the scheduler ranked the
others on the default metrics kept two models with one metric and the rest with four, and
the recommended order counted each missing metric as a neutral rank.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import pytest
from sqlalchemy import select

import scoring
from app.db.models import DatasetRow, JobRow, ScoreRow
from app.lifecycle import Task
from app.services import leaderboards, rankings, recommender
from scoring.recommend import RECOMMENDED
from workers.jobs.tasks import handlers

from .harness import Harness

MODELS = ("efficientnet-lite0", "mobilenet-v2", "open-nsfw")
TENANT = "default"  # the harness dataset's tenant


def run_all_but_reranks(h: Harness) -> list[tuple[Task, list]]:
    """Run the queued tasks, holding back re-rankings: the moment before the scheduler gets
    to them (on another worker, or at its next tick). Returns the held-back tasks."""
    table, held = handlers(h.runner, h.scheduler), []
    while h.tasks:
        task, args = h.tasks.pop(0)
        if task is Task.RERANK_MISSING:
            held.append((task, args))
        else:
            table[task](*args)
    return held


def stored_metrics(h: Harness) -> dict[str, set[str]]:
    """model id -> the metrics stored for it on the harness dataset."""
    with h.db.session() as s:
        rows = s.execute(
            select(ScoreRow.model_id, ScoreRow.metric).where(ScoreRow.dataset_id == h.dataset_id)
        ).all()
    out: dict[str, set[str]] = {}
    for model_id, metric in rows:
        out.setdefault(model_id, set()).add(metric)
    return out


def recommended_board(h: Harness) -> dict[str, Any]:
    with h.db.session() as s:
        return json.loads(leaderboards.load(s, h.dataset_id, RECOMMENDED, TENANT))


def logme_only_then_rerank(h: Harness) -> tuple[list[str], str]:
    """Two models ranked on logme alone through the API's service; while that job is queued
    the scheduler re-ranks the dataset: the third model, on the default metrics. Returns
    the two models' ids and the third's."""
    *pair, third = (h.register(name) for name in MODELS)
    with h.db.session() as s:
        rankings.create(s, h, h.dataset_id, pair, ["logme"], None, tenant=TENANT)
    (rerank,) = h.scheduler.rerank_missing()
    with h.db.session() as s:
        # the pair is busy in the logme job: the re-ranking leaves it out
        assert [m.model_id for m in s.get(JobRow, rerank).models] == [third]
    return pair, third


@pytest.mark.slow
def test_the_scheduler_fills_the_default_metrics_a_logme_ranking_left_out(
    harness: Harness,
):
    pair, third = logme_only_then_rerank(harness)
    held = run_all_but_reranks(harness)
    assert stored_metrics(harness) == {
        **{m: {"logme"} for m in pair},
        third: set(scoring.DEFAULT_METRICS),
    }
    # the logme job, once done, asked for a re-ranking ...
    assert held, "the finished logme-only ranking did not ask the scheduler to fill its models"
    forward_before = harness.forward_calls
    harness.tasks.extend(held)
    harness.drain()
    # ... which scored the pair on the metrics it lacked, from the cached features
    assert stored_metrics(harness) == {m: set(scoring.DEFAULT_METRICS) for m in (*pair, third)}
    assert harness.forward_calls == forward_before
    assert harness.scheduler.rerank_missing() == []
    board = recommended_board(harness)
    assert board["recommendation"]["metrics_used"] == sorted(scoring.DEFAULT_METRICS)
    assert board["recommendation"]["missing_metrics"] == {}
    assert board["recommendation"]["unranked"] == []
    assert [(e["metrics"], e["missing_metrics"]) for e in board["entries"]] == [
        (sorted(scoring.DEFAULT_METRICS), [])
    ] * len(MODELS)


@pytest.mark.slow
def test_the_recommended_order_never_counts_a_missing_metric_as_neutral(
    harness: Harness,
):
    pair, third = logme_only_then_rerank(harness)
    run_all_but_reranks(harness)
    others = sorted(set(scoring.DEFAULT_METRICS) - {"logme"})
    assert stored_metrics(harness) == {**{m: {"logme"} for m in pair}, third: {"logme", *others}}
    board = recommended_board(harness)
    rec = board["recommendation"]
    # compared on what all three have; the rest named, and who lacks it
    assert rec["metrics_used"] == ["logme"]
    assert rec["left_out_metrics"] == others
    assert rec["missing_metrics"] == {m: others for m in sorted(pair)}
    assert rec["unranked"] == []
    # each row of the board says the same
    assert {e["model_id"]: (e["metrics"], e["missing_metrics"]) for e in board["entries"]} == {
        **{m: (["logme"], others) for m in pair},
        third: (["logme"], []),
    }
    # so the order is logme's: no model sinks or rises for scores nobody computed
    with harness.db.session() as s:
        dataset = s.get(DatasetRow, harness.dataset_id)
        logme = rankings.leaderboard(s, dataset, "logme")
        job_rec = recommender.recommend(s, dataset)
    assert [e["model_id"] for e in board["entries"]] == [e.model_id for e in logme.entries]
    assert job_rec is not None
    for model_id, evidence in job_rec["evidence"].items():
        assert evidence["metrics"] == ["logme"]
        assert set(evidence["values"]) == {"logme", "history"}
        assert evidence["missing_metrics"] == (others if model_id in pair else [])
        assert not any(note.startswith("missing") for note in evidence["notes"])


def test_no_metric_shared_by_all_leaves_the_odd_models_unranked():
    """The fallback of ``recommender.compared``: the models that have the metric most models
    have, on what they all have; a model without it stays out of the order."""
    held = {"a": {"logme"}, "b": {"leep", "sfda"}, "c": {"leep", "logme", "sfda"}}
    # logme and leep are each had by two models: name order picks leep
    assert recommender.compared(held) == (["b", "c"], {"leep", "sfda"})
    assert recommender.compared({"a": {"logme", "leep"}, "b": {"logme"}}) == (
        ["a", "b"],
        {"logme"},
    )


@pytest.mark.slow
def test_a_rankings_results_and_its_leaderboard_agree_on_the_current_score(
    harness: Harness,
    monkeypatch: pytest.MonkeyPatch,
):
    """After a metric's version moves on, a score of the old version is current nowhere:
    not in the ranking's results, not on the metric's leaderboard."""
    model = harness.register("mobilenet-v2")
    (job_id,) = harness.scheduler.rerank_missing()
    harness.drain()
    spec = scoring.REGISTRY["logme"]
    bumped = dataclasses.replace(spec, version=spec.version + 1)
    monkeypatch.setitem(scoring.REGISTRY, "logme", bumped)
    with harness.db.session() as s:
        job = s.get(JobRow, job_id)
        (row,) = rankings.describe(s, job).results or []
        board = rankings.leaderboard(s, s.get(DatasetRow, harness.dataset_id), "logme")
    assert row.model_id == model and row.scores["logme"] is None
    assert board.entries == []
