"""Fine-tuning jobs as the API sees them: a validated request becomes a job (its runs' tasks
go out when the request commits), a job is described with each run's progress, curve and
result, a client cancels it, and a ranking that asked to be verified gets its job when its
scores are in. The lifecycle itself (states, rounds, the end) is ``app.lifecycle``'s."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session, selectinload

import scoring
from app import schemas
from app.db.models import DatasetRow, FineTuneJobRow, FineTuneRunRow, JobRow, ModelRow, now
from app.errors import Conflict, Invalid, NotFound, TooManyRequests
from app.lifecycle import (
    METHOD_EACH,
    METHOD_HALVING,
    Dispatcher,
    FineTuneStatus,
    JobStatus,
    RunStatus,
    create_finetune,
    move_finetune,
    move_run,
)
from app.services import datasets as dataset_service
from app.services import models as model_service
from app.services import pages
from app.states import ModelState
from app.tenancy import can_change, owned
from workers.pipeline.errors import PipelineError
from workers.pipeline.finetune.recipe import FineTuneRecipe

#: the recipe's fields a request may set, and the defaults it leaves out
RECIPE_FIELDS = tuple(schemas.RecipeIn.model_fields)


def recipe_of(body: schemas.RecipeIn) -> dict[str, Any]:
    """The fields a request set (the rest stay the documented defaults), checked by the
    fine-tuner's own recipe (one set of rules for the API, the CLI and the worker)."""
    given = body.model_dump(include=set(RECIPE_FIELDS), exclude_unset=True)
    try:
        recipe = FineTuneRecipe(**{**given, "epochs": given.get("epochs", body.epochs)})
    except PipelineError as exc:
        raise Invalid(f"recipe: {exc}") from None
    return {**given, "epochs": recipe.epochs}


def trainable_dataset(session: Session, dataset_id: str, tenant: str | None) -> DatasetRow:
    """The tenant's own dataset, if it has samples and class labels to train on."""
    dataset = dataset_service.get(session, dataset_id, tenant)
    can_change(dataset.tenant, tenant, f"dataset {dataset.name!r}")
    if dataset.reference:
        raise Invalid(
            f"{dataset.name} is a dataset of an imported benchmark table: it has no samples to "
            "fine-tune on; fine-tune on an uploaded dataset"
        )
    if dataset.modality not in ("image", "text"):
        raise Invalid(
            f"{dataset.name} holds precomputed features, not images or texts, so no model can "
            "be fine-tuned on it; upload the dataset the features came from"
        )
    if scoring.target_kind(dataset.task) != "classification":
        raise Invalid(
            f"{dataset.name} has numeric targets; fine-tuning trains a classifier: upload it "
            "with class labels"
        )
    return dataset


def check_split(dataset: DatasetRow, per_class: int | None, recipe: dict[str, Any]) -> None:
    """What the worker would refuse about the held-out split, refused now from what the
    dataset row records (its classes' sizes) and its table's header: ``per_class`` beside the
    table's own ``split`` column, a class too small to hold a sample out, or a held-out count
    that leaves a class nothing to train on. (Identical samples count once in the worker's
    split, so a class of repeats can still fail there, with its reason.)"""
    from workers.pipeline.datasets.tables import HEAD_ROWS, TABLE_SUFFIXES, iter_rows
    from workers.pipeline.errors import PipelineError as ReadError

    path = Path(dataset.path)
    if path.suffix.lower() in TABLE_SUFFIXES:
        try:
            head = [row for _, row in zip(range(HEAD_ROWS), iter_rows(path), strict=False)]
        except (ReadError, OSError):
            head = []  # validated at upload: the worker says what changed
        if any("split" in row for row in head):
            if per_class is not None:
                raise Invalid(
                    f"{dataset.name} has its own 'split' column, which fixes which samples train "
                    "and which validate; leave per_class out, or upload it without the column "
                    "to have a split drawn"
                )
            return
    sizes = {str(c["name"]): int(c["count"]) for c in dataset.classes or []}
    if not sizes:
        return
    if per_class is not None:
        sizes = {name: min(n, per_class) for name, n in sizes.items()}
    name, smallest = min(sizes.items(), key=lambda item: item[1])
    drawn = f" (at most per_class={per_class})" if per_class is not None else ""
    if smallest < 2:
        fix = (
            "raise per_class"
            if per_class is not None and per_class < 2
            else "upload more samples of it, or a dataset without it"
        )
        raise Invalid(
            f"class {name!r} of {dataset.name} has {smallest} sample{drawn}: a held-out split "
            f"needs at least 2 per class, one to train on and one to validate; {fix}"
        )
    validation = recipe.get("validation", FineTuneRecipe().validation)
    if isinstance(validation, int) and not isinstance(validation, bool) and validation >= smallest:
        raise Invalid(
            f"recipe.validation={validation} per class holds out every one of the {smallest} "
            f"samples of class {name!r}{drawn}, leaving none to train on; give a smaller count "
            "or a fraction such as 0.2"
        )


def trainable_models(
    session: Session, dataset: DatasetRow, model_ids: Sequence[str], tenant: str | None
) -> list[ModelRow]:
    """The models named (ids or names the tenant can see), once each, in the order given;
    each must be registered (or one of the zoo still loading), have weights, and read the
    dataset's modality. Whether PyTorch can train it is known only once loaded: a model that
    cannot (an ONNX file) fails alone, with the reason."""
    found, unknown = model_service.resolve(session, model_ids, tenant)
    if unknown:
        raise Invalid(
            f"no model with id or name {', '.join(map(repr, unknown))} among this tenant's own "
            "and the shared models; list them at GET /v1/models"
        )
    models = list({found[key].id: found[key] for key in model_ids}.values())
    problems = []
    for m in models:
        if m.reference:
            problems.append(f"{m.name} comes from an imported benchmark table and has no weights")
        elif m.status != ModelState.READY and not model_service.is_loading(m):
            problems.append(f"{m.name} is {m.status}: a model trains once it is ready")
        elif m.modality != dataset.modality:
            problems.append(f"{m.name} is a {m.modality} model and the dataset holds "
                            f"{dataset.modality} data")  # fmt: skip
    if problems:
        raise Invalid("; ".join(problems) + "; pick other models")
    return models


def create(
    session: Session,
    queue: Dispatcher,
    body: schemas.FineTuneIn,
    *,
    tenant: str | None,
    max_active_jobs: int | None = None,
) -> FineTuneJobRow:
    """A job fine-tuning each model named on the tenant's dataset with the recipe."""
    dataset = trainable_dataset(session, body.dataset_id, tenant)
    recipe = recipe_of(body.recipe)
    check_split(dataset, body.per_class, recipe)
    models = trainable_models(session, dataset, body.model_ids, tenant)
    check_limit(session, tenant, max_active_jobs, "retry when one finishes")
    return create_finetune(
        session, queue, dataset, models, recipe, epochs=recipe["epochs"], method=METHOD_EACH,
        per_class=body.per_class, keep_weights=body.keep_weights,
    )  # fmt: skip


def check_verify(
    session: Session,
    dataset_id: str,
    verify: schemas.VerifyIn,
    tenant: str | None,
    max_active_jobs: int | None = None,
    per_class: int | None = None,
) -> dict[str, Any]:
    """A ranking's ``verify`` request, checked before the ranking starts (bad input fails
    before minutes of scoring): what the ranking job keeps to start the verification with.
    The fine-tuning job it will start counts against the tenant's limit now, with those its
    other rankings will start: a verification is a fine-tuning job, and asking for one
    through a ranking must not be a way round ``POST /v1/finetunes``'s 429."""
    dataset = trainable_dataset(session, dataset_id, tenant)
    recipe = recipe_of(verify)
    check_split(dataset, per_class, recipe)
    check_limit(session, tenant, max_active_jobs, "rank without verify, or retry when one finishes")
    return {"top_k": verify.top_k, "recipe": recipe}


def check_limit(session: Session, tenant: str | None, limit: int | None, then: str) -> None:
    """``TooManyRequests`` when ``tenant`` has ``limit`` fine-tuning jobs queued or running,
    counting those its unfinished rankings will start (``verify``); the operator has none."""
    if tenant is None or limit is None:
        return
    running = session.scalar(
        select(func.count()).where(
            FineTuneJobRow.tenant == tenant, FineTuneJobRow.status.in_(FineTuneStatus.active())
        )
    )
    asked = select(JobRow.verify).where(
        JobRow.tenant == tenant,
        JobRow.status.in_(JobStatus.active()),
        JobRow.finetune_id.is_(None),
    )
    to_start = sum(1 for verify in session.scalars(asked) if verify)
    if (running or 0) + to_start >= limit:
        raise TooManyRequests(
            f"tenant {tenant!r} has {running or 0} fine-tuning jobs queued or running and "
            f"{to_start} to start when its rankings finish, its limit "
            f"(TB_TENANT_MAX_ACTIVE_JOBS); {then}",
            headers={"Retry-After": "60"},
        )


def verify_ranking(session: Session, queue: Dispatcher, job: JobRow) -> FineTuneJobRow | None:
    """A finished ranking that asked to be verified: fine-tune the top ``top_k`` of its
    recommended order (the models it ranked) by successive halving. Returns the job, or None
    when it asked nothing or nothing was ranked (then the ranking's verification says so)."""
    if not job.verify or job.finetune_id is not None:
        return None
    combined = (job.recommendation or {}).get("scores", {})
    order = [m for m, rank in scoring.rank_best_first(combined) if rank is not None]
    chosen = order[: int(job.verify["top_k"])]
    dataset = session.get(DatasetRow, job.dataset_id)
    if not chosen or dataset is None:
        job.verify = {**job.verify, "error": "no model was ranked, so none could be verified"}
        return None
    models = [session.get(ModelRow, m) for m in chosen]
    recipe = dict(job.verify["recipe"])
    finetune = create_finetune(
        session, queue, dataset, [m for m in models if m is not None], recipe,
        epochs=int(recipe["epochs"]), method=METHOD_HALVING, per_class=job.per_class,
        ranking_id=job.id,
    )  # fmt: skip
    job.finetune_id = finetune.id
    return finetune


#: newest first
ORDER = pages.Order("finetunes", ((FineTuneJobRow.created_at, True), (FineTuneJobRow.id, True)))


def page(
    session: Session,
    tenant: str | None,
    status: FineTuneStatus | None,
    dataset_id: str | None,
    limit: int,
    cursor: str | None,
) -> pages.Page[FineTuneJobRow]:
    """The tenant's fine-tuning jobs, newest first, optionally in one status or of one dataset."""
    query = select(FineTuneJobRow).where(owned(FineTuneJobRow.tenant, tenant))
    if status is not None:
        query = query.where(FineTuneJobRow.status == status)
    if dataset_id is not None:
        query = query.where(FineTuneJobRow.dataset_id == dataset_id)
    return pages.fetch(session, query, ORDER, limit, cursor)


def get(session: Session, job_id: str, tenant: str | None) -> FineTuneJobRow:
    job = session.get(
        FineTuneJobRow,
        job_id,
        options=[selectinload(FineTuneJobRow.runs).selectinload(FineTuneRunRow.model)],
    )
    if job is None or (tenant is not None and job.tenant != tenant):
        raise NotFound(f"no fine-tuning job with id {job_id!r}; list them at GET /v1/finetunes")
    return job


def cancel(session: Session, job_id: str, tenant: str | None) -> FineTuneJobRow | None:
    """Cancel a job still queued or running (a worker training one of its models stops at its
    next step; what was measured stays, outcomes included) and return it; a job that has
    ended is deleted instead, with its kept weights (None)."""
    job = get(session, job_id, tenant)
    job = session.get(FineTuneJobRow, job.id, with_for_update=True, populate_existing=True) or job
    if FineTuneStatus(job.status).terminal:
        paths = [r.weights_path for r in job.runs if r.weights_path]
        session.delete(job)
        session.flush()
        for path in paths:
            Path(path).unlink(missing_ok=True)
        return None
    for run in job.runs:
        if not RunStatus(run.status).terminal:
            move_run(run, RunStatus.CANCELLED)
            run.error = "cancelled by a client"
    move_finetune(job, FineTuneStatus.CANCELLED)
    job.error = "cancelled by a client (DELETE /v1/finetunes/{id})"
    return job


def weights(session: Session, job_id: str, model: str, tenant: str | None) -> tuple[Path, str]:
    """The kept weights of ``model`` (its id or name) in the job, and a file name for them."""
    job = get(session, job_id, tenant)
    runs = [r for r in job.runs if model in (r.model_id, r.model.name)]
    if not runs:
        raise NotFound(f"model {model!r} was not fine-tuned in job {job_id}")
    kept = [r for r in runs if r.weights_path and Path(r.weights_path).is_file()]
    if not kept:
        why = (
            'the job did not ask to keep them ("keep_weights": true)'
            if not job.keep_weights
            else "the model has not finished, failed, or lost the halving (only the winner's "
            "are kept)"
        )
        raise Conflict(f"no weights kept for {runs[0].model.name} in job {job_id}: {why}")
    run = max(kept, key=lambda r: r.round)
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in run.model.name)
    return Path(str(run.weights_path)), f"{safe}-finetuned-{job.id[:8]}.pt"


# -- descriptions ---------------------------------------------------------------------------


def _elapsed(run: FineTuneRunRow) -> float | None:
    if run.started_at is None:
        return None
    end: datetime = run.finished_at or now()
    return round((end - run.started_at).total_seconds(), 3)


def _run_out(run: FineTuneRunRow, rounds: dict[int, int], job_id: str) -> schemas.FineTuneRunOut:
    result = run.result or {}
    epochs_done = (
        run.epochs * run.step / run.steps_total if run.steps_total else 0.0
    ) if run.status != RunStatus.DONE else float(result.get("epochs", run.epochs))  # fmt: skip
    return schemas.FineTuneRunOut(
        model_id=run.model_id,
        model=run.model.name,
        round=run.round,
        epochs=run.epochs,
        status=RunStatus(run.status),
        step=run.step,
        steps_total=run.steps_total,
        epoch=round(epochs_done, 4),
        elapsed_s=_elapsed(run),
        train_loss=list(run.train_loss or []),
        val_top1=list(run.val_top1 or []),
        top1=run.top1,
        seconds=result.get("seconds"),
        device=result.get("device"),
        n_train=result.get("n_train"),
        n_validation=result.get("n_validation"),
        repeats_round=rounds.get(run.same_as) if run.same_as is not None else None,
        error=run.error,
        weights=(
            f"/v1/finetunes/{job_id}/models/{run.model_id}/weights" if run.weights_path else None
        ),
    )


def describe(job: FineTuneJobRow) -> schemas.FineTuneOut:
    rounds = {r.id: r.round for r in job.runs}
    names = {r.model_id: r.model.name for r in job.runs}
    # each model's last run, and the last that measured it: a run that failed after a
    # measurement (a later round of a halving) leaves that measurement standing
    last: dict[str, FineTuneRunRow] = {}
    shown: dict[str, FineTuneRunRow] = {}
    for run in sorted(job.runs, key=lambda r: r.round):
        last[run.model_id] = run
        if run.status == RunStatus.DONE or run.model_id not in shown:
            shown[run.model_id] = run
    summary = None
    measured: dict[str, int] = {}
    if job.result:
        summary = {
            **job.result,
            "winner": names.get(job.result.get("winner") or ""),
            "measured_order": [names[m] for m in job.result.get("measured_order", [])],
            "out_in_round": {names[m]: r for m, r in job.result.get("out_in_round", {}).items()},
        }
        measured = {m: i + 1 for i, m in enumerate(job.result.get("measured_order", []))}
    results = [
        schemas.FineTuneResultOut(
            model_id=m,
            model=names[m],
            top1=run.top1,
            epochs=(run.result or {}).get("epochs"),
            seconds=(run.result or {}).get("seconds"),
            device=(run.result or {}).get("device"),
            error=(
                f"round {last[m].round} failed: {last[m].error}"
                if last[m] is not run and last[m].status == RunStatus.FAILED
                else run.error
            ),
            predicted_rank=run.position + 1 if job.method == METHOD_HALVING else None,
            measured_rank=measured.get(m),
        )
        for m, run in shown.items()
    ]
    # best first: successive halving's measured order (the rounds a model survived, then its
    # top-1 there), never the last top-1 alone, which mixes budgets: a model out after 2 of
    # 8 epochs may have measured more than the winner's last round
    results.sort(
        key=lambda r: (
            r.measured_rank is None,
            r.measured_rank or 0,
            r.top1 is None,
            -(r.top1 or 0.0),
            r.predicted_rank or 0,
        )
    )
    held = next((str(r.result["recipe"].get("split")) for r in job.runs
                 if r.result and r.result.get("recipe")), None)  # fmt: skip
    return schemas.FineTuneOut(
        id=job.id,
        dataset_id=job.dataset_id,
        ranking_id=job.ranking_id,
        method=job.method,
        status=FineTuneStatus(job.status),
        created_at=job.created_at,
        finished_at=job.finished_at,
        recipe=dict(job.recipe),
        per_class=job.per_class,
        keep_weights=job.keep_weights,
        started_at=job.started_at,
        error=job.error,
        held_out=held,
        runs=[_run_out(r, rounds, job.id) for r in job.runs],
        results=results,
        verification=summary,
    )


def ranking_verification(session: Session, job: JobRow) -> schemas.RankingVerification | None:
    """What a ranking's verification found so far (None: it asked for none)."""
    if not job.verify:
        return None
    combined = (job.recommendation or {}).get("scores", {})
    order = [m for m, rank in scoring.rank_best_first(combined) if rank is not None]
    top = order[: int(job.verify["top_k"])]
    names = model_service.names_of(session, top)
    out = schemas.RankingVerification(
        top_k=int(job.verify["top_k"]),
        finetune_id=job.finetune_id,
        status=None,
        predicted_order=[names[m] for m in top],
        error=job.verify.get("error"),
    )
    finetune = session.get(FineTuneJobRow, job.finetune_id) if job.finetune_id else None
    if finetune is None:
        return out
    out.status = FineTuneStatus(finetune.status)
    out.error = finetune.error
    if finetune.result:
        result = finetune.result
        out.winner = names.get(result.get("winner") or "")
        out.winner_top1 = result.get("winner_top1")
        out.agrees_with_predicted_first = result.get("agrees_with_predicted_first")
        out.kendall_tau = result.get("kendall_tau")
        out.measured_order = [names.get(m, m) for m in result.get("measured_order", [])]
    return out
