"""The dashboard's pages under /dashboard: server-rendered HTML, readable without
JavaScript, that ``static/dashboard.js`` enhances with charts (plotly.js, served here from the
plotly package) and live progress (each running ranking's event stream, then the jobs table
fetched again from ``/dashboard/partials/jobs``).

Pages read through ``app.services`` (``views`` shapes the figures, ``queries`` has the few
reads the services lack); their forms post to ``forms``. Authentication is the API's keys,
held by the browser as a signed session cookie: see ``sessions``. ``install`` mounts it all.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.staticfiles import StaticFiles
from sqlalchemy.orm import Session

from app.errors import Invalid, NotFound
from app.services import datasets as dataset_service
from app.services import models as model_service
from app.services import recommender
from app.web import sessions
from app.web.api.deps import SessionDep, SettingsDep

from . import assets, forms, queries, views
from .web import PREFIX, DatabaseDep, ViewerDep, gather, make_router, render

router = make_router()


@router.get("")
def overview(request: Request, viewer: ViewerDep, session: SessionDep) -> Response:
    datasets = dataset_service.list_datasets(session, viewer.tenant)
    scored, outcomes = queries.scored_model_counts(session), queries.outcome_counts(session)
    context = {
        "viewer": viewer,
        "datasets": [
            {"row": d, "models": scored.get(d.id, 0), "outcomes": outcomes.get(d.id, 0)}
            for d in datasets
        ],
        "models": model_service.list_models(session, viewer.tenant),
        "jobs": views.recent_jobs(session, viewer.tenant),
    }
    return render(request, "overview.html", context)


@router.get("/partials/jobs")
def jobs_partial(
    request: Request, viewer: ViewerDep, session: SessionDep, dataset_id: str | None = None
) -> Response:
    """The jobs table's body, for the pages' live refresh."""
    context = {
        "viewer": viewer,
        "jobs": views.recent_jobs(session, viewer.tenant, dataset_id),
        "show_dataset": not dataset_id,
    }
    return render(request, "_jobs_rows.html", context)


@router.get("/datasets/{dataset_id}")
def dataset_page(
    request: Request,
    viewer: ViewerDep,
    db: DatabaseDep,
    dataset_id: str,
    metric: str | None = None,
    measure: str = recommender.DEFAULT_MEASURE,
) -> Response:
    context = gather(
        db, lambda s: views.dataset_page(s, dataset_id, metric, measure, viewer.tenant)
    )
    return render(request, "dataset.html", {"viewer": viewer, **context})


@router.get("/models/{model_id}")
def model_page(request: Request, viewer: ViewerDep, db: DatabaseDep, model_id: str) -> Response:
    def build(session: Session) -> dict[str, Any]:
        model = model_service.get(session, model_id, viewer.tenant)
        return {
            "viewer": viewer,
            "model": model,
            **views.model_page(session, model, viewer.tenant),
        }

    return render(request, "model.html", gather(db, build))


@router.get("/metrics")
def metrics_page(
    request: Request, viewer: ViewerDep, session: SessionDep, scope: str | None = None
) -> Response:
    scopes = queries.scopes_with_outcomes(session, viewer.tenant)
    chosen = next((s for s in scopes if s.key == scope), scopes[0] if scopes else None)
    context: dict[str, Any] = {"viewer": viewer, "scopes": scopes, "scope": chosen}
    if chosen is not None:
        try:
            body = recommender.evaluation(session, chosen)
            context["evaluation"] = views.evaluation_page(chosen, body)
        except Invalid as exc:
            context["note"] = exc.detail
    context["figures"] = views.FIGURE_LABELS
    return render(request, "metrics.html", context)


@router.get("/upload")
def upload_page(request: Request, viewer: ViewerDep, settings: SettingsDep) -> Response:
    context = {
        "viewer": viewer,
        "max_mb": settings.max_upload_mb,
        "suffixes": dataset_service.SUFFIXES,
    }
    return render(request, "upload.html", context)


# ---- forms (post, redirect, get) ---------------------------------------------------------


@router.get("/vendor/plotly-{version}.min.js")
def plotly_js(request: Request, version: str) -> Response:
    if assets.plotly_path() is None or version != assets.plotly_version():
        raise NotFound("the charting library (the plotly package) is not installed here")
    headers = {"Cache-Control": assets.IMMUTABLE, "Vary": "Accept-Encoding"}
    if "gzip" in request.headers.get("accept-encoding", ""):
        headers["Content-Encoding"] = "gzip"
        return Response(assets.plotly_gzip(), media_type="text/javascript", headers=headers)
    path = assets.plotly_path()
    assert path is not None
    return Response(path.read_bytes(), media_type="text/javascript", headers=headers)


def install(app: FastAPI) -> None:
    """Serve the dashboard from ``app``: its pages, its static files, its session secret."""
    # TB_SESSION_SECRET, once the settings have it (a str or a pydantic SecretStr)
    configured = getattr(app.state.settings, "session_secret", None)
    if configured is not None and hasattr(configured, "get_secret_value"):
        configured = configured.get_secret_value()
    app.state.session_secret = sessions.new_secret(configured)
    app.include_router(router)
    app.include_router(forms.router)
    app.mount(
        f"{PREFIX}/static", StaticFiles(directory=str(assets.STATIC_DIR)), name="dashboard-static"
    )
