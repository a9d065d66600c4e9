"""The dashboard's forms: log in and out, upload a dataset, start a ranking, record outcomes,
set a schedule. Each posts here with its page's CSRF token and, done, redirects to a page
(post, redirect, get); a problem shows the page again with the message beside the form."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import File, Form, Request, Response, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import RedirectResponse
from sqlalchemy.orm import Session

from app import schemas
from app.errors import Invalid, NotFound, ProblemError
from app.lifecycle import Task, defer
from app.services import datasets as dataset_service
from app.services import outcomes as outcome_service
from app.services import rankings as ranking_service
from app.services import recommender
from app.tenancy import DEFAULT_TENANT, Role
from app.web import sessions, timeouts
from app.web.api import deps
from app.web.api.datasets import register_upload
from app.web.api.deps import QueueDep, SessionDep, SettingsDep

from . import queries, views
from .web import (
    PREFIX,
    Viewer,
    ViewerDep,
    check_csrf,
    gather,
    make_router,
    render,
    safe_next,
    secret_of,
)

router = make_router()


@router.get("/login")
def login_form(request: Request, next: str | None = None) -> Response:
    if not request.app.state.auth_required:
        return RedirectResponse(PREFIX, status_code=303)
    nonce = request.cookies.get(sessions.LOGIN_COOKIE) or sessions.new_login_nonce()
    viewer = Viewer(sessions.login_token(secret_of(request), nonce), session=False)
    response = render(request, "login.html", {"viewer": viewer, "next": safe_next(next)})
    _set_login_cookie(request, response, nonce)
    return response


def _set_login_cookie(request: Request, response: Response, nonce: str) -> None:
    response.set_cookie(
        sessions.LOGIN_COOKIE,
        nonce,
        max_age=sessions.LOGIN_TTL_S,
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
        path=f"{PREFIX}/login",
    )


@router.post("/login")
async def login(
    request: Request,
    key: Annotated[str, Form(max_length=500)] = "",
    next: Annotated[str, Form(max_length=2000)] = PREFIX,
    csrf_token: Annotated[str, Form(max_length=200)] = "",
) -> Response:
    secret = secret_of(request)
    if not request.app.state.auth_required:
        return RedirectResponse(PREFIX, status_code=303)
    nonce = request.cookies.get(sessions.LOGIN_COOKIE)
    if not sessions.login_ok(secret, nonce, csrf_token):
        raise sessions.Forbidden(
            "the login form's security token is missing or out of date, or the form was sent "
            "from another site; open the login page and log in again"
        )
    anonymous = Viewer(sessions.login_token(secret, nonce or ""), session=False)

    def find() -> str | None:
        with deps.get_db(request).session() as session:
            return queries.key_id(session, key.strip())

    key_id = await run_in_threadpool(find) if key.strip() else None
    if key_id is None:
        context = {
            "viewer": anonymous,
            "next": safe_next(next),
            "error": "That API key is unknown or revoked. Create one with "
            "`transferbench apikey create NAME`.",
        }
        return render(request, "login.html", context, status_code=401)
    response = RedirectResponse(safe_next(next), status_code=303)
    response.set_cookie(
        sessions.COOKIE,
        sessions.issue(secret, key_id),
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
        path="/",
    )
    response.delete_cookie(sessions.LOGIN_COOKIE, path=f"{PREFIX}/login")
    return response


@router.post("/logout")
async def logout(
    request: Request, viewer: ViewerDep, csrf_token: Annotated[str, Form()] = ""
) -> Response:
    check_csrf(request, viewer, csrf_token)
    response = RedirectResponse(f"{PREFIX}/login", status_code=303)
    response.delete_cookie(sessions.COOKIE, path="/", httponly=True, samesite="strict")
    return response


# ---- pages -------------------------------------------------------------------------------


@router.post("/upload")
async def upload(
    request: Request,
    viewer: ViewerDep,
    settings: SettingsDep,
    file: Annotated[UploadFile, File()],
    name: Annotated[str, Form(max_length=200)] = "",
    modality: Annotated[str, Form()] = "",
    task: Annotated[str, Form()] = "",
    csrf_token: Annotated[str, Form()] = "",
) -> Response:
    """The upload page's form without JavaScript (its script posts to /v1/datasets)."""
    check_csrf(request, viewer, csrf_token)
    try:
        if modality not in ("", "image", "text", "features") or task not in (
            "",
            "classification",
            "regression",
        ):
            raise Invalid("choose a modality and task from the lists, or leave them to be detected")
        viewer.principal.require(Role.WRITE, "uploading a dataset")
        timeouts.lift(request.scope)  # validation grows with the upload, which the cap bounds
        tmp = await dataset_service.save_upload(file, settings)
        row, _ = await register_upload(
            request, settings, tmp, tenant=viewer.tenant or DEFAULT_TENANT,
            name=dataset_service.dataset_name(name, file.filename),
            modality=modality or None, task=task or None,
        )  # fmt: skip
    except ProblemError as exc:
        context = {
            "viewer": viewer,
            "max_mb": settings.max_upload_mb,
            "suffixes": dataset_service.SUFFIXES,
            "error": exc.detail,
        }
        return render(request, "upload.html", context, status_code=exc.status)
    return RedirectResponse(f"{PREFIX}/datasets/{row.id}", status_code=303)


@router.post("/datasets/{dataset_id}/rankings")
async def start_ranking(
    request: Request,
    viewer: ViewerDep,
    session: SessionDep,
    queue: QueueDep,
    settings: SettingsDep,
    dataset_id: str,
) -> Response:
    form = await request.form()
    check_csrf(request, viewer, _text(form.get(sessions.CSRF_FIELD)))
    model_ids = [str(v) for v in form.getlist("model_ids")]
    metrics = [str(v) for v in form.getlist("metrics")]
    per_class_text = _text(form.get("per_class")).strip()

    def create() -> str:
        if not model_ids:
            raise Invalid("choose at least one model to rank")
        if not metrics:
            raise Invalid("choose at least one metric")
        per_class = None
        if per_class_text:
            if not per_class_text.isdigit() or int(per_class_text) < 1:
                raise Invalid("samples per class must be a whole number of at least 1")
            per_class = int(per_class_text)
        viewer.principal.require(Role.WRITE, "starting a ranking")
        job = ranking_service.create(
            session,
            queue,
            dataset_id,
            model_ids,
            metrics,
            per_class,
            tenant=viewer.tenant,
            max_active_jobs=settings.tenant_max_active_jobs,
        )
        return job.id

    posted = {"model_ids": model_ids, "metrics": metrics, "per_class": per_class_text}
    return await _post_then_redirect(
        request, viewer, session, dataset_id, create, anchor="rankings", section="rank",
        posted=posted,
    )  # fmt: skip


@router.post("/datasets/{dataset_id}/outcomes")
async def add_outcomes(
    request: Request,
    viewer: ViewerDep,
    session: SessionDep,
    queue: QueueDep,
    dataset_id: str,
) -> Response:
    """One value per model (blank: not recorded), under one measure."""
    form = await request.form()
    check_csrf(request, viewer, _text(form.get(sessions.CSRF_FIELD)))
    measure = _text(form.get("measure")).strip() or recommender.DEFAULT_MEASURE
    higher = _text(form.get("direction")) != "lower"
    values = {
        key.removeprefix("value:"): _text(raw).strip()
        for key, raw in form.multi_items()
        if key.startswith("value:")
    }

    def record() -> str:
        entries = []
        for model_id, text in values.items():
            if not text:
                continue
            try:
                value = float(text)
            except ValueError as exc:
                raise Invalid(f"{text!r} is not a number; enter outcomes like 91.2") from exc
            entries.append(
                {
                    "model_id": model_id,
                    "value": value,
                    "measure": measure,
                    "higher_is_better": higher,
                    "details": {"source": "dashboard"},
                }
            )
        if not entries:
            raise Invalid("enter at least one model's outcome")
        viewer.principal.require(Role.WRITE, "recording outcomes")
        outcome_service.record(session, dataset_id, entries, viewer.tenant)
        defer(session, queue, Task.REFIT_RECOMMENDER)
        return measure

    posted = {"measure": measure, "direction": "higher" if higher else "lower",
              "values": values}  # fmt: skip
    return await _post_then_redirect(
        request, viewer, session, dataset_id, record, anchor="outcomes", section="outcomes",
        measure=measure, posted=posted,
    )  # fmt: skip


@router.post("/datasets/{dataset_id}/schedule")
async def set_schedule(
    request: Request, viewer: ViewerDep, session: SessionDep, dataset_id: str
) -> Response:
    form = await request.form()
    check_csrf(request, viewer, _text(form.get(sessions.CSRF_FIELD)))
    cron = _text(form.get("schedule")).strip() or None

    def update() -> str:
        viewer.principal.require(Role.WRITE, "scheduling re-rankings")
        dataset_service.set_schedule(session, dataset_id, cron, viewer.tenant)
        return cron or ""

    return await _post_then_redirect(
        request, viewer, session, dataset_id, update, anchor="schedule", section="schedule",
        posted={"schedule": cron or ""},
    )  # fmt: skip


async def _post_then_redirect(
    request: Request,
    viewer: Viewer,
    session: Session,
    dataset_id: str,
    action: Callable[[], str],
    *,
    anchor: str,
    section: str,
    measure: str | None = None,
    posted: dict[str, Any] | None = None,
) -> Response:
    """Run a form's action; on success redirect to the dataset page (its section; showing
    ``measure`` when the form was about one), on a problem show the page again with the
    message beside the form and what was typed in it (``posted``) kept: before, it came back
    with the defaults, and a measure typed as lower-is-better went back to higher."""
    try:
        await run_in_threadpool(action)
    except NotFound:
        raise
    except ProblemError as exc:
        session.rollback()
        problem = {"section": section, "detail": exc.detail}
        status = exc.status

        shown = measure if schemas.is_measure(measure) else None

        def page(fresh: Session) -> dict[str, Any]:
            figures = views.dataset_page(
                fresh, dataset_id, None, shown or recommender.DEFAULT_MEASURE, viewer.tenant
            )
            return {"viewer": viewer, "form_error": problem, "posted": posted or {}, **figures}

        context = await run_in_threadpool(gather, deps.get_db(request), page)
        return render(request, "dataset.html", context, status_code=status)
    query = f"?measure={quote(measure)}" if measure else ""
    return RedirectResponse(f"{PREFIX}/datasets/{dataset_id}{query}#{anchor}", status_code=303)


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""


# ---- assets ------------------------------------------------------------------------------
