"""What follows a finished ranking (its recommended order, the verification it asked for, the
refit) follows it however it finished. Only the last model *scoring* did it: a ranking whose
last model failed, or that expired with some models scored, ended done with no recommended
order, and a verification it asked for never started. Real PostgreSQL, real MobileNetV2 on
real Fashion-MNIST images, the job logic driven as the workers run it."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import func, select

from app import schemas
from app.db.models import FineTuneJobRow, JobRow, ModelRow, now
from app.lifecycle import Task
from app.services import rankings

from .harness import Harness

pytestmark = pytest.mark.slow


def _ranking(h: Harness, models: list[str]) -> str:
    with h.db.session() as s:
        job = rankings.create(s, h, h.dataset_id, models, None, None, tenant="default",
                              verify=schemas.VerifyIn(top_k=1, epochs=1, mode="head"))  # fmt: skip
        return job.id


def _finished_with_its_follow_ups(h: Harness, job_id: str) -> None:
    with h.db.session() as s:
        job = s.get(JobRow, job_id)
        assert job.status == "done", job.status
        assert job.recommendation and job.recommendation.get("scores"), job.recommendation
        assert job.finetune_id is not None  # the verification started
        assert s.scalar(select(func.count()).select_from(FineTuneJobRow)) == 1


def test_a_ranking_whose_last_model_fails_is_still_recommended_and_verified(
    harness: Harness,
) -> None:
    good = harness.register("mobilenet-v2")
    bad = harness.register("changed-net", "mobilenet-v2")
    with harness.db.session() as s:  # its weights changed since it was registered: it fails
        s.get(ModelRow, bad).fingerprint = "f" * 64
    job_id = _ranking(harness, [good, bad])
    sent = list(harness.tasks)
    harness.tasks = [t for t in sent if t[1][1] == good]
    harness.drain()  # the good model extracted and scored first
    harness.tasks = [t for t in sent if t[1][1] == bad]
    harness.drain()  # then the other fails: the last to end
    with harness.db.session() as s:
        models = {m.model_id: m.status for m in s.get(JobRow, job_id).models}
    assert models == {good: "done", bad: "failed"}
    _finished_with_its_follow_ups(harness, job_id)


def test_a_ranking_that_expires_with_a_model_scored_is_recommended_and_verified(
    harness: Harness,
) -> None:
    good = harness.register("mobilenet-v2")
    slow = harness.register("never-started", "mobilenet-v2")
    job_id = _ranking(harness, [good, slow])
    sent = list(harness.tasks)
    harness.tasks = [t for t in sent if t[1][1] == good]
    harness.drain()
    harness.tasks = []  # the other model's task never ran
    with harness.db.session() as s:
        s.get(JobRow, job_id).created_at = now() - timedelta(
            seconds=harness.runner.settings.job_timeout_s + 1
        )
    assert harness.scheduler.expire_overdue() == [job_id]
    _finished_with_its_follow_ups(harness, job_id)
    assert {Task.REFIT_RECOMMENDER, Task.FINETUNE} <= {task for task, _ in harness.tasks}


def test_a_model_whose_extraction_keeps_killing_its_worker_fails_after_three_tries(
    harness: Harness,
) -> None:
    """Every redelivery extracted it again, with no limit (fine-tuning runs stop at three): a
    model that is killed for memory blocked its queue until the job expired, then again."""
    from app.db.models import JobModelRow
    from app.lifecycle import Trigger, create_job

    with harness.db.session() as s:
        model = ModelRow(name="killer", source={"spec": "killer"}, modality="image",
                         has_head=False, fingerprint="0" * 64)  # fmt: skip
        s.add(model)
        s.flush()
        from app.db.models import DatasetRow

        job = create_job(s, harness, s.get(DatasetRow, harness.dataset_id), [model], ["logme"],
                         trigger=Trigger.API)  # fmt: skip
        job_id, model_id = job.id, model.id
    for attempt in (1, 2, 3):  # three deliveries whose worker died: the count they left
        with harness.db.session() as s:
            s.get(JobModelRow, (job_id, model_id)).attempts = attempt
    harness.tasks.clear()
    harness.runner.extract(job_id, model_id)
    with harness.db.session() as s:
        jm = s.get(JobModelRow, (job_id, model_id))
        assert jm.status == "failed" and "stopped 3 times" in jm.error, jm.error
        assert jm.attempts == 3 and s.get(JobRow, job_id).status == "failed"


def test_a_dataset_deleted_while_its_model_is_scored_ends_the_task_quietly(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The scores were stored before the job's model was looked up: with the dataset (and by
    cascade its job) deleted meanwhile, their foreign key failed the task's transaction."""
    from app.db.models import DatasetRow, ScoreRow

    good = harness.register("mobilenet-v2")
    with harness.db.session() as s:
        job = rankings.create(s, harness, harness.dataset_id, [good], None, None,
                              tenant="default")  # fmt: skip
        job_id = job.id
    (extract,) = harness.tasks
    harness.tasks.clear()
    harness.runner.extract(*extract[1])  # features cached; its SCORE task queued
    assert [task for task, _ in harness.tasks] == [Task.SCORE]
    import scoring

    compute = scoring.compute_detailed

    def deleted_meanwhile(*args: object, **kwargs: object) -> object:
        with harness.db.session() as s:  # another request deletes it while this one scores
            s.delete(s.get(DatasetRow, harness.dataset_id))
        return compute(*args, **kwargs)

    monkeypatch.setattr(scoring, "compute_detailed", deleted_meanwhile)
    harness.runner.score(job_id, good)  # no exception
    with harness.db.session() as s:
        assert s.scalar(select(func.count()).select_from(ScoreRow)) == 0
        assert s.get(JobRow, job_id) is None
