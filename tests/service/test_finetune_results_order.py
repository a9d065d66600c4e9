"""A successive-halving job's ``results`` ("best first") follow its measured order, not each
model's last top-1 alone: a model out after a short round may have measured more than the
winner measured in its last, longer one, and listing it first contradicted ``winner`` and
``measured_order`` beside it."""

from __future__ import annotations

from datetime import UTC, datetime

from app.db.models import FineTuneJobRow, FineTuneRunRow, ModelRow
from app.services.finetunes import describe
from app.states import FineTuneStatus, RunStatus
from app.web.dashboard.views import measured_ranks


def _run(model: ModelRow, position: int, round_: int, epochs: int, top1: float) -> FineTuneRunRow:
    return FineTuneRunRow(
        id=round_ * 10 + position, model_id=model.id, model=model, position=position,
        round=round_, epochs=epochs, status=RunStatus.DONE, step=10, steps_total=10,
        train_loss=[1.0], val_top1=[top1], top1=top1, same_as=None, error=None,
        weights_path=None, result={"epochs": epochs, "seconds": 1.0, "device": "cpu"},
    )  # fmt: skip


def _job() -> FineTuneJobRow:
    a, b, c = (ModelRow(id=n, name=f"net-{n}") for n in "abc")
    when = datetime(2026, 12, 7, tzinfo=UTC)
    job = FineTuneJobRow(
        id="j", dataset_id="d", ranking_id=None, method="halving", status=FineTuneStatus.DONE,
        recipe={"epochs": 4}, per_class=None, keep_weights=False, error=None,
        created_at=when, started_at=when, finished_at=when,
        runs=[
            _run(a, 0, 1, 1, 0.60), _run(b, 1, 1, 1, 0.64), _run(c, 2, 1, 1, 0.40),
            _run(a, 0, 2, 2, 0.66), _run(b, 1, 2, 2, 0.63),  # c out after round 1
            _run(a, 0, 3, 4, 0.61),  # b out after round 2, at 0.63 after 2 epochs
        ],
        # (rounds survived, then the top-1 there): a, then b, then c
        result={"winner": "a", "measured_order": ["a", "b", "c"], "out_in_round": {"b": 2, "c": 1}},
    )  # fmt: skip
    return job


def test_results_follow_the_measured_order_not_the_last_top1() -> None:
    out = describe(_job())
    assert [r.model for r in out.results] == ["net-a", "net-b", "net-c"]
    assert [r.measured_rank for r in out.results] == [1, 2, 3]
    assert out.verification is not None and out.verification["winner"] == "net-a"
    # the last top-1 alone would have put b (0.63, 2 epochs) above the winner (0.61, 4)
    assert {r.model: r.top1 for r in out.results} == {"net-a": 0.61, "net-b": 0.63, "net-c": 0.40}


def test_the_dashboard_ranks_one_halving_job_by_its_measured_order() -> None:
    out = describe(_job())
    newest: dict = {}
    for run in sorted(out.runs, key=lambda r: -r.round):
        newest.setdefault(run.model_id, (run, out))
    assert measured_ranks(newest) == {"a": 1, "b": 2, "c": 3}  # by top-1 alone: b, a, c
