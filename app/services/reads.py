"""The read-heavy endpoints (dashboards poll them), served as pre-serialised JSON.

- A finished ranking never changes: its response is cached until evicted.
- A leaderboard changes only when a score row for its (dataset, metric) is written. Its entry
  carries a validator (row count and newest row id) that is checked against the scores table
  at most every ``max_age_s``, by one request per key at a time; concurrent clients meanwhile
  get the previous body. A new score therefore shows within ``max_age_s``.
"""

from __future__ import annotations

import time

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.cache import ResponseCache
from app.db.models import OutcomeRow, ScoreRow
from app.db.session import Database
from app.lifecycle import JobStatus
from app.services import datasets, rankings
from scoring.recommend import RECOMMENDED

LEADERBOARD_MAX_AGE_S = 1.0


class Reads:
    """Cached bodies of rankings and leaderboards for one database."""

    def __init__(self, db: Database, *, max_age_s: float = LEADERBOARD_MAX_AGE_S) -> None:
        self.db = db
        self.max_age_s = max_age_s
        self.cache = ResponseCache()
        self._revalidating: set[tuple[str, ...]] = set()

    def ranking(self, job_id: str) -> bytes:
        """A ranking's JSON body; 404 (``NotFound``) when there is none."""
        hit = self.cache.peek(("ranking", job_id))
        body = hit[1] if hit else None
        if body is None:
            with self.db.session() as session:
                out = rankings.describe(session, rankings.get(session, job_id))
            body = out.model_dump_json().encode()
            if JobStatus(out.status).terminal:
                # the validator slot names the dataset, so forget_dataset finds it
                self.cache.put(("ranking", job_id), body, out.dataset_id)
        return body

    def fresh_leaderboard(self, dataset_id: str, metric: str) -> bytes | None:
        """The cached body if it was validated within ``max_age_s``, or another request is
        revalidating it right now; else None (call ``leaderboard``). Never touches the database,
        so the event loop can call it."""
        key = ("leaderboard", dataset_id, metric)
        seen = self.cache.peek(("fresh", *key))
        if seen is not None and (seen[0] == self._bucket() or key in self._revalidating):
            return seen[1]
        return None

    def leaderboard(self, dataset_id: str, metric: str) -> bytes:
        """Revalidate against the scores table and return the current body (blocking)."""
        key = ("leaderboard", dataset_id, metric)
        self._revalidating.add(key)
        try:
            with self.db.session() as session:
                validator = self._validator(session, dataset_id, metric)
                body = self.cache.get(key, validator)
                if body is None:  # a score for this (dataset, metric) was written since
                    dataset = datasets.get(session, dataset_id)
                    board = rankings.leaderboard(session, dataset, metric)
                    body = board.model_dump_json().encode()
                    self.cache.put(key, body, validator)
            self.cache.put(("fresh", *key), body, self._bucket())
            return body
        finally:
            self._revalidating.discard(key)

    @staticmethod
    def _validator(session: Session, dataset_id: str, metric: str) -> tuple[object, ...]:
        """What changes when the leaderboard does: its (dataset, metric) scores; for the
        recommended board, any score or outcome (other datasets inform the fit)."""
        if metric != RECOMMENDED:
            where = (ScoreRow.dataset_id == dataset_id, ScoreRow.metric == metric)
            return tuple(
                session.execute(
                    select(func.count(ScoreRow.id), func.max(ScoreRow.id)).where(*where)
                ).one()
            )
        scores = session.execute(select(func.count(ScoreRow.id), func.max(ScoreRow.id))).one()
        outcomes = session.execute(
            select(func.count(OutcomeRow.id), func.max(OutcomeRow.created_at))
        ).one()
        return (*scores, *outcomes)

    def forget_dataset(self, dataset_id: str) -> None:
        """Drop everything cached about a dataset (it was deleted)."""
        self.cache.drop(
            lambda key, validator: (
                validator == dataset_id or (isinstance(key, tuple) and dataset_id in key)
            )
        )

    def _bucket(self) -> int:
        return int(time.monotonic() / self.max_age_s)
