"""Leaderboards stored as served: one JSON body per (dataset, metric) in ``leaderboards``.

A board changes only when its dataset's scores do, so it is written where they are, in the
same transaction: every score write goes through ``store_scores`` (the worker's score step,
imported benchmark tables), and deleting a model rewrites the boards its scores were on
(``scored_by`` before the delete, ``rewrite`` after). Deleting a dataset deletes its boards
(foreign key). A read is then one primary-key lookup, and every API process sees a new score
as soon as its transaction commits.

The ``recommended`` board also depends on its scope's recommender fit, which the datasets of
the scope (modality, task, tenant) with outcomes feed (the others only by the names of their
metrics: scoring a new dataset moves no other board). It is rewritten with the dataset's own
scores (with the fit current then), and by the REFIT_RECOMMENDER task for every dataset whose
stored fit is no longer its scope's current one (``stale_recommended``): that task runs after
outcomes are recorded, a table is imported or a ranking finishes, and on the scheduler's tick
(``TB_SCHEDULER_TICK_S``), which bounds how long any other change of the scope (scores written
outside a ranking, a deleted dataset or model) takes to reach the other datasets' recommended
boards.

Concurrency: two transactions writing scores of one dataset (two workers scoring two models
of a job) would each compute the board from what they see and the later commit would drop
the other's score. On PostgreSQL a writer therefore takes a transaction-scoped advisory lock
per dataset (in id order) before it writes; under READ COMMITTED each statement after the lock
sees every score committed before it. SQLite serialises writers on its own. A board missing on
a read (a dataset older than the table, or with no scores) is computed then and inserted only
if no writer stored one meanwhile, so a read never overwrites a writer's board.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from sqlalchemy import Connection, bindparam, select, text
from sqlalchemy.orm import Session

import scoring
from app.db.locks import advisory_key
from app.db.models import DatasetRow, LeaderboardRow, OutcomeRow, ScoreRow, now
from app.db.scores import insert_ignore, upsert, upsert_scores
from app.services import datasets as dataset_service
from app.services import rankings, recommender
from scoring.recommend import RECOMMENDED

#: dataset id -> the metrics whose boards a write changes
Boards = Mapping[str, Iterable[str]]


def stored(conn: Connection, dataset_id: str, metric: str) -> bytes | None:
    """The stored body, or None: one primary-key lookup on a plain connection."""
    return conn.scalar(BODY, {"dataset_id": dataset_id, "metric": metric})


def load(session: Session, dataset_id: str, metric: str, tenant: str | None) -> bytes:
    """The stored body of the dataset's board under ``metric``: one primary-key lookup. The
    caller has checked that ``tenant`` may see the dataset; a board not stored yet is computed
    (``Invalid`` for an unknown metric, ``NotFound`` for a dataset the tenant cannot see or
    that is gone) and stored."""
    body = session.scalar(BODY, {"dataset_id": dataset_id, "metric": metric})
    if body is not None:
        return body
    dataset = dataset_service.get(session, dataset_id, tenant)
    body, fit = _build(session, dataset, metric)
    row = {"dataset_id": dataset.id, "metric": metric, "body": body, "fit": fit}
    insert_ignore(session, LeaderboardRow, {**row, "updated_at": now()}, key=_KEY)
    return body


def store_scores(session: Session, rows: Sequence[dict[str, Any]]) -> None:
    """Upsert score rows (``app.db.scores.upsert_scores``) and rewrite the boards they change:
    each written metric's and the recommended one of every dataset in ``rows``."""
    if not rows:
        return
    boards: dict[str, set[str]] = {}
    for r in rows:
        boards.setdefault(str(r["dataset_id"]), set()).add(str(r["metric"]))
    lock(session, boards)
    upsert_scores(session, rows)
    rewrite(session, boards)


def scored_by(session: Session, model_id: str) -> dict[str, set[str]]:
    """The boards a model's scores are on (before deleting the model: ``rewrite`` them after
    the delete is flushed), their datasets locked."""
    boards: dict[str, set[str]] = {}
    pairs = select(ScoreRow.dataset_id, ScoreRow.metric).where(ScoreRow.model_id == model_id)
    for dataset_id, metric in session.execute(pairs.distinct()):
        boards.setdefault(dataset_id, set()).add(metric)
    lock(session, boards)
    return boards


def rewrite(session: Session, boards: Boards) -> None:
    """Compute and store the named boards of each dataset, and its recommended board (the
    caller holds the datasets' locks: ``lock``). Scores that are not registry metrics (an
    imported table's external columns) have no board."""
    _expire(session)
    for dataset_id in sorted(boards):
        dataset = session.get(DatasetRow, dataset_id)
        if dataset is None:  # deleted in this transaction: its boards went with it
            continue
        metrics = {m for m in boards[dataset_id] if m in scoring.REGISTRY} | {RECOMMENDED}
        for metric in sorted(metrics):
            body, fit = _build(session, dataset, metric)
            row = {"dataset_id": dataset.id, "metric": metric, "body": body, "fit": fit}
            upsert(
                session,
                LeaderboardRow,
                [{**row, "updated_at": now()}],
                key=_KEY,
                update=("body", "fit", "updated_at"),
            )


def rewrite_recommended(session: Session, dataset_id: str) -> None:
    """Recompute one dataset's recommended board (its scope's fit moved on)."""
    lock(session, [dataset_id])
    rewrite(session, {dataset_id: ()})


def stale_recommended(session: Session) -> list[str]:
    """Datasets whose stored recommended board was computed with another fit than their
    scope's current one (recording that fit, as a ranking or a read of the board would)."""
    rows = session.execute(
        select(
            LeaderboardRow.dataset_id,
            LeaderboardRow.fit,
            DatasetRow.modality,
            DatasetRow.task,
            DatasetRow.tenant,
        )
        .join(DatasetRow, DatasetRow.id == LeaderboardRow.dataset_id)
        .where(LeaderboardRow.metric == RECOMMENDED)
        .order_by(LeaderboardRow.dataset_id)
    ).all()
    current: dict[recommender.Scope, str | None] = {}
    stale = []
    for dataset_id, fit, modality, task, tenant in rows:
        scope = recommender.Scope(modality, task, recommender.DEFAULT_MEASURE, tenant)
        if scope not in current:
            found = recommender.current_fit(session, scope)
            current[scope] = found[1].fingerprint if found else None
        if fit != current[scope]:
            stale.append(dataset_id)
    return stale


def lock(session: Session, dataset_ids: Iterable[str]) -> None:
    """Serialise the transactions that write these datasets' scores and boards (PostgreSQL:
    advisory locks held until commit, taken in id order so two writers never deadlock)."""
    if session.get_bind().dialect.name != "postgresql":
        return
    for dataset_id in sorted(set(dataset_ids)):
        key = advisory_key(f"transferbench.leaderboard:{dataset_id}")
        session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": key})


_KEY = ("dataset_id", "metric")
#: a stored board's body, by ``:dataset_id`` and ``:metric`` (also run by ``app.web.fastreads``)
BODY = select(LeaderboardRow.body).where(
    LeaderboardRow.dataset_id == bindparam("dataset_id"),
    LeaderboardRow.metric == bindparam("metric"),
)


def _build(session: Session, dataset: DatasetRow, metric: str) -> tuple[bytes, str | None]:
    """The board's body, and for the recommended board the fingerprint of the scope's fit it
    was computed with (None when the scope has no scores at all)."""
    board = rankings.leaderboard(session, dataset, metric)
    fit = None
    if metric == RECOMMENDED:
        if board.recommendation is not None:
            fit = str(board.recommendation["fit"])
        else:  # nothing to recommend here yet; remember which fit said so
            found = recommender.current_fit(session, recommender.Scope.of(dataset))
            fit = found[1].fingerprint if found else None
    return board.model_dump_json().encode(), fit


def _expire(session: Session) -> None:
    """Forget score and outcome rows this session loaded before: the upserts rewrote them
    behind the ORM's back, and the boards must be computed from what is stored."""
    session.flush()
    for obj in list(session.identity_map.values()):
        if isinstance(obj, ScoreRow | OutcomeRow):
            session.expire(obj)
