"""Outcomes (real fine-tuning results), evaluations of the metrics and the recommender
against them, and imported benchmark tables."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict
from pathlib import PurePath
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, File, Form, Query, Request, Response, UploadFile
from fastapi.concurrency import run_in_threadpool

from app import schemas
from app.db.models import OutcomeRow
from app.errors import Invalid, TooLarge
from app.lifecycle import Task, defer
from app.services import benchmarks, outcomes, recommender, reference
from app.services import datasets as dataset_service
from app.tenancy import Role
from app.web.api.deps import Authorized, PageDep, PrincipalDep, QueueDep, SessionDep, SettingsDep
from app.web.api.http import CONDITIONAL, conditional

router = APIRouter(tags=["evaluation"], dependencies=[Authorized])
Measure = Annotated[str, Query(min_length=1, max_length=64)]


@router.post("/v1/datasets/{dataset_id}/outcomes", response_model=list[schemas.OutcomeOut])
def add_outcomes(
    dataset_id: str,
    body: Annotated[list[schemas.OutcomeIn], Body(min_length=1, max_length=10_000)],
    principal: PrincipalDep,
    session: SessionDep,
    queue: QueueDep,
) -> list[OutcomeRow]:
    """Record real fine-tuning results; one value per (dataset, model, measure), a later post
    replaces it. All or nothing: one bad entry stores none. The recommender refits after."""
    rows = outcomes.record(session, dataset_id, [o.model_dump() for o in body], principal.tenant)
    defer(session, queue, Task.REFIT_RECOMMENDER)
    return rows


@router.get("/v1/datasets/{dataset_id}/outcomes", response_model=list[schemas.OutcomeOut])
def list_outcomes(
    dataset_id: str,
    principal: PrincipalDep,
    session: SessionDep,
    page: PageDep,
    response: Response,
    measure: Measure | None = None,
) -> Sequence[OutcomeRow]:
    """By measure, best value first, ``limit`` at a time (the next page: ``X-Next-Cursor``)."""
    found = outcomes.page(session, dataset_id, principal.tenant, measure, page.limit, page.cursor)
    return page.respond(response, found)


@router.get(
    "/v1/datasets/{dataset_id}/evaluation", response_model=schemas.DatasetEvaluation, **CONDITIONAL
)
def dataset_evaluation(
    dataset_id: str,
    request: Request,
    principal: PrincipalDep,
    session: SessionDep,
    measure: Measure = recommender.DEFAULT_MEASURE,
) -> Response:
    """Every metric scored on the dataset and the recommender (fitted without this dataset)
    against its outcomes: Kendall tau, weighted tau, Pearson, top-1 hit and regret. With
    ``If-None-Match: <its ETag>``, 304 while nothing changed."""
    dataset = dataset_service.get(session, dataset_id, principal.tenant)
    scope = recommender.Scope.of(dataset, measure, tenant=principal.tenant)
    found = recommender.evaluation(session, scope, dataset.id)
    body = schemas.DatasetEvaluation.model_validate(found).model_dump_json().encode()
    return conditional(request, body)


@router.get("/v1/evaluation", response_model=schemas.Evaluation, **CONDITIONAL)
def evaluation(
    request: Request,
    principal: PrincipalDep,
    session: SessionDep,
    modality: Literal["image", "text"] = "image",
    task: Literal["classification", "regression"] = "classification",
    measure: Measure = recommender.DEFAULT_MEASURE,
) -> Response:
    """The same figures over every dataset with outcomes (mean, median, datasets), the
    recommender's leave-one-dataset-out. With ``If-None-Match: <its ETag>``, 304 while
    nothing changed."""
    scope = recommender.Scope(modality, task, measure, tenant=principal.tenant)
    found = recommender.evaluation(session, scope)
    return conditional(request, schemas.Evaluation.model_validate(found).model_dump_json().encode())


@router.get("/v1/benchmarks", response_model=list[schemas.ReferenceTableOut])
def list_benchmarks(principal: PrincipalDep, session: SessionDep) -> list[dict[str, Any]]:
    """The reference tables that ship with transferbench as imported here (shared by every
    tenant): name, version, scope, source and licence, datasets and models; then the tables
    imported since that the caller can see (the operator's and its tenant's own)."""
    return reference.listed(session, principal.tenant)


@router.post("/v1/benchmarks", status_code=201, response_model=schemas.BenchmarkImported)
async def import_benchmark(
    principal: PrincipalDep,
    session: SessionDep,
    queue: QueueDep,
    settings: SettingsDep,
    file: Annotated[UploadFile, File(description="the wide table as CSV")],
    outcome: Annotated[str, Form(min_length=1, max_length=64)],
    modality: Annotated[Literal["image", "text"], Form()] = "image",
    task: Annotated[Literal["classification", "regression"], Form()] = "classification",
    lower_is_better: Annotated[str, Form(description="comma-separated column names")] = "",
    name: Annotated[str | None, Form(max_length=200)] = None,
    dataset_column: Annotated[
        str, Form(min_length=1, max_length=200, description="the column naming each row's dataset")
    ] = "dataset",
    model_column: Annotated[
        str, Form(min_length=1, max_length=200, description="the column naming each row's model")
    ] = "model",
) -> dict[str, Any]:
    """A published table as the tenant's reference datasets (admin keys): its scores and
    outcomes inform the tenant's recommender."""
    principal.require(Role.ADMIN, "importing a benchmark table")
    data = await file.read(settings.max_upload_bytes + 1)
    if len(data) > settings.max_upload_bytes:
        raise TooLarge(f"the table is larger than the {settings.max_upload_mb} MiB limit")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise Invalid("the table is not UTF-8 text; upload a CSV file") from exc
    table = name or PurePath(file.filename or "table.csv").stem
    imported = await run_in_threadpool(
        benchmarks.import_table, session, text, table=table, outcome=outcome,
        modality=modality, task=task,
        lower_is_better=[c.strip() for c in lower_is_better.split(",") if c.strip()],
        tenant=principal.tenant, dataset_column=dataset_column, model_column=model_column,
    )  # fmt: skip
    defer(session, queue, Task.REFIT_RECOMMENDER)
    return asdict(imported)
