"""Successive halving's bookkeeping when a run fails after its model was measured, or the job
expires between rounds, on real PostgreSQL: what each run measured is written as the worker
writes it, and ``round_over`` and the scheduler do the rest.

Before: a model whose last-round run failed lost its earlier measurement from the measured
order and from ``results`` (though its outcome was stored); an expired halving opened its
next round (a queued run and a task) before it was marked failed; and a repeated
measurement named the repeat it copied rather than the round that measured it."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import select

from app.db.models import DatasetRow, FineTuneJobRow, FineTuneRunRow, ModelRow, now
from app.lifecycle import METHOD_HALVING, RunStatus, Task, create_finetune, move_run, round_over
from app.services.finetunes import describe

from .harness import Harness


def _models(h: Harness, n: int) -> list[str]:
    with h.db.session() as s:
        rows = [ModelRow(name=f"net-{i}", source={"spec": f"net-{i}"}, modality="image",
                         has_head=False, fingerprint=f"{i}" * 64) for i in range(n)]  # fmt: skip
        s.add_all(rows)
        s.flush()
        return [r.id for r in rows]


def _halving(h: Harness, models: list[str], epochs: int) -> str:
    with h.db.session() as s:
        ds = s.get(DatasetRow, h.dataset_id)
        rows = [s.get(ModelRow, m) for m in models]
        job = create_finetune(s, h, ds, rows, {"mode": "head"}, epochs=epochs,
                              method=METHOD_HALVING)  # fmt: skip
        return job.id


def _end(h: Harness, job_id: str, round_: int, outcome: dict[str, float | str]) -> None:
    """End the runs of ``round_`` as the worker does: a top-1, or a failure's reason."""
    with h.db.session() as s:
        runs = s.scalars(
            select(FineTuneRunRow).where(
                FineTuneRunRow.job_id == job_id, FineTuneRunRow.round == round_
            )
        )
        for run in runs:
            if run.model_id not in outcome:
                continue
            move_run(run, RunStatus.TRAINING)
            value = outcome[run.model_id]
            if isinstance(value, str):
                move_run(run, RunStatus.FAILED)
                run.error = value
            else:
                move_run(run, RunStatus.DONE)
                run.top1 = value
                run.result = {"epochs": float(run.epochs), "seconds": 1.0, "device": "cpu",
                              "n_train": 80, "n_validation": 200}  # fmt: skip


def test_a_model_whose_last_round_fails_keeps_what_it_measured(harness: Harness) -> None:
    a, b = _models(harness, 2)
    job_id = _halving(harness, [a, b], epochs=4)  # round 1: 2 epochs each; round 2: 4
    _end(harness, job_id, 1, {a: 0.50, b: 0.60})
    with harness.db.session() as s:
        assert round_over(s, harness, job_id) is None  # round 2 for b
    _end(harness, job_id, 2, {b: "CUDA out of memory"})
    with harness.db.session() as s:
        assert round_over(s, harness, job_id) == "failed"
        job = s.get(FineTuneJobRow, job_id)
        assert job.result["winner"] is None
        # b beat a in round 1 and reached round 2: it stays above a
        assert job.result["measured_order"] == [b, a]
        assert job.result["out_in_round"] == {a: 1, b: 2}
        assert "without a winner" in job.error and "last round failed" in job.error
        out = describe(job)
    shown = {r.model: (r.top1, r.epochs, r.measured_rank, r.error) for r in out.results}
    assert shown == {
        "net-1": (0.60, 2.0, 1, "round 2 failed: CUDA out of memory"),
        "net-0": (0.50, 2.0, 2, None),
    }
    assert [r.model for r in out.results] == ["net-1", "net-0"]


def test_a_failure_below_the_last_round_is_placed_under_those_measured_there(
    harness: Harness,
) -> None:
    a, b, c, d = _models(harness, 4)
    job_id = _halving(harness, [a, b, c, d], epochs=4)  # rounds of 1, 2 and 4 epochs
    _end(harness, job_id, 1, {a: 0.50, b: 0.60, c: 0.40, d: 0.30})
    with harness.db.session() as s:
        round_over(s, harness, job_id)  # round 2: b and a
    _end(harness, job_id, 2, {b: 0.70, a: "worker lost"})
    with harness.db.session() as s:
        round_over(s, harness, job_id)  # round 3: b alone
    _end(harness, job_id, 3, {b: 0.75})
    with harness.db.session() as s:
        assert round_over(s, harness, job_id) == "done"
        job = s.get(FineTuneJobRow, job_id)
        # a went out in round 2 (its run failed) but beat c and d in round 1
        assert job.result["winner"] == b and job.result["measured_order"] == [b, a, c, d]
        assert job.result["winner_top1"] == 0.75


def test_an_expired_halving_opens_no_further_round(harness: Harness) -> None:
    a, b, c = _models(harness, 3)
    job_id = _halving(harness, [a, b, c], epochs=4)
    _end(harness, job_id, 1, {a: 0.50, b: 0.60})  # c still queued when the time runs out
    with harness.db.session() as s:
        s.get(FineTuneJobRow, job_id).created_at = now() - timedelta(
            seconds=harness.runner.settings.job_timeout_s + 1
        )
    harness.tasks.clear()
    assert harness.scheduler.expire_overdue_finetunes() == [job_id]
    assert [t for t, _ in harness.tasks if t == Task.FINETUNE] == []
    with harness.db.session() as s:
        job = s.get(FineTuneJobRow, job_id)
        assert job.status == "failed" and "TB_JOB_TIMEOUT_S" in job.error
        assert "stored as outcomes" in job.error
        assert {(r.round, r.status) for r in job.runs} == {(1, "done"), (1, "failed")}
        assert job.result["winner"] is None and job.result["measured_order"] == [b, a]


def test_a_repeated_measurement_names_the_round_that_took_it(harness: Harness) -> None:
    a, b, c = _models(harness, 3)
    job_id = _halving(harness, [a, b, c], epochs=1)  # every round is 1 epoch: all repeats
    _end(harness, job_id, 1, {a: 0.50, b: 0.60, c: 0.40})
    with harness.db.session() as s:
        assert round_over(s, harness, job_id) == "done"
        job = s.get(FineTuneJobRow, job_id)
        assert job.result["winner"] == b and job.result["measured_order"] == [b, a, c]
        out = describe(job)
    repeats = {(r.model, r.round): r.repeats_round for r in out.runs if r.round > 1}
    assert repeats == {("net-0", 2): 1, ("net-1", 2): 1, ("net-1", 3): 1}


def test_an_epoch_the_database_cannot_record_does_not_fail_the_run(harness: Harness) -> None:
    """The end-of-epoch record is best effort, as progress is: with the database unreachable
    it logs and training goes on (it raised, and the run failed with an SQL error as its
    reason, which in a halving knocked the model out); reachable, it records the epoch."""
    from app.db.session import Database
    from workers.jobs.finetunes import FineTuneSteps

    (a,) = _models(harness, 1)
    job_id = _halving(harness, [a], epochs=1)
    with harness.db.session() as s:
        run = s.scalars(select(FineTuneRunRow).where(FineTuneRunRow.job_id == job_id)).one()
        move_run(run, RunStatus.TRAINING)
        run_id = run.id
    steps = FineTuneSteps(harness.runner)
    steps.db = Database("postgresql+psycopg://postgres@127.0.0.1:1/nowhere")
    try:
        steps._epoch(run_id)(1, 0.9, 0.5)  # no exception
    finally:
        steps.db.dispose()
    steps.db = harness.db
    steps._epoch(run_id)(1, 0.8, 0.6)
    with harness.db.session() as s:
        run = s.get(FineTuneRunRow, run_id)
        assert (run.train_loss, run.val_top1) == ([0.8], [0.6])


def test_a_shorter_run_never_replaces_a_longer_ones_outcome(harness: Harness) -> None:
    """Successive halving measures the candidates it drops after a fraction of its budget, and
    that measurement replaced the model's outcome from an earlier, longer run on the same
    held-out split. A run's outcome now replaces one measured with as many epochs or fewer, in
    another mode or on another split, or typed in; never one a run measured for longer."""
    from app.db.models import OutcomeRow
    from app.services import outcomes

    (a,) = _models(harness, 1)

    def run(value: float, epochs: float, mode: str = "full", split: str = "s0") -> dict:
        details = {"recipe": {"mode": mode, "split": split}, "epochs": epochs}
        return {"dataset_id": harness.dataset_id, "model_id": a, "measure": "finetune_top1",
                "value": value, "higher_is_better": True, "details": details,
                "created_at": now()}  # fmt: skip

    def stored() -> float:
        with harness.db.session() as s:
            return s.scalars(select(OutcomeRow.value).where(OutcomeRow.model_id == a)).one()

    steps = [
        (run(91.0, 10), 91.0),  # the first
        (run(70.0, 1), 91.0),  # a halving's first round: kept out
        (run(92.0, 10), 92.0),  # as long: replaces
        (run(60.0, 2, mode="head"), 60.0),  # another mode: replaces
        (run(65.0, 2, mode="head", split="s1"), 65.0),  # another split
        (run(95.0, 20, mode="head", split="s1"), 95.0),  # longer
    ]
    for row, expected in steps:
        with harness.db.session() as s:
            outcomes.store(s, [row], runs=True)
        assert stored() == expected, row
    typed = {**run(50.0, 1), "details": {}}
    with harness.db.session() as s:
        outcomes.store(s, [typed])  # typed in: a later value replaces, as before
    assert stored() == 50.0
    with harness.db.session() as s:
        outcomes.store(s, [run(70.0, 1)], runs=True)  # a run replaces what says no budget
    assert stored() == 70.0


def test_a_model_being_fine_tuned_cannot_be_deleted_and_a_job_left_without_runs_closes(
    harness: Harness,
) -> None:
    """Deleting a model took its fine-tuning runs with it (a cascade): the job stayed running
    with none, and the scheduler's expiry of it raised on every tick (``max()`` of no rounds),
    which stopped every other job's expiry and the file sweep with it."""
    import pytest

    from app.errors import Conflict
    from app.services import models as model_service
    from app.tenancy import Principal, Role

    a, b = _models(harness, 2)
    job_id = _halving(harness, [a, b], epochs=2)
    with harness.db.session() as s, pytest.raises(Conflict, match="being fine-tuned"):
        model_service.deletable(s, a, Principal(None, Role.ADMIN))
    with harness.db.session() as s:  # as a cascade would leave it
        for run in s.scalars(select(FineTuneRunRow).where(FineTuneRunRow.job_id == job_id)):
            s.delete(run)
    with harness.db.session() as s:
        s.get(FineTuneJobRow, job_id).created_at = now() - timedelta(
            seconds=harness.runner.settings.job_timeout_s + 1
        )
    assert harness.scheduler.expire_overdue_finetunes() == [job_id]  # no exception
    with harness.db.session() as s:
        assert s.get(FineTuneJobRow, job_id).status == "failed"
