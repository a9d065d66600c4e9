"""The read-heavy endpoints (dashboards poll them), served as pre-serialised JSON.

- A finished ranking never changes: its response is cached in this process until evicted.
- A leaderboard is stored as served, written with the scores it shows
  (``app.services.leaderboards``): a read is one primary-key lookup, so every API process
  serves a new score as soon as its transaction has committed.

Who owns a dataset or job never changes, so the ownership check is cached too (dropped when
the dataset is deleted, or found gone).
"""

from __future__ import annotations

from sqlalchemy import Connection, bindparam, func, select

from app.cache import ResponseCache
from app.db.models import JobModelRow
from app.db.session import Database
from app.errors import NotFound
from app.lifecycle import JobStatus
from app.services import datasets, leaderboards, rankings
from app.tenancy import can_see

#: how many models the job ``:job_id`` holds: a cached finished ranking's validator (also run
#: by ``app.web.fastreads``)
MODEL_COUNT = (
    select(func.count()).select_from(JobModelRow).where(JobModelRow.job_id == bindparam("job_id"))
)


def _model_count(conn: Connection, job_id: str) -> int:
    return int(conn.scalar(MODEL_COUNT, {"job_id": job_id}) or 0)


class Reads:
    """Cached bodies of finished rankings, stored leaderboards, for one database."""

    def __init__(self, db: Database) -> None:
        self.db = db
        #: leaderboard lookups: one statement each, no transaction around it
        self._autocommit = db.engine.execution_options(isolation_level="AUTOCOMMIT")
        self.cache = ResponseCache()
        #: dataset or job id -> its tenant (never changes; dropped when the dataset goes)
        self._owners: dict[str, str | None] = {}

    def known(self, object_id: str) -> bool:
        """Whether this process has seen the dataset or job (so ``visible`` can answer)."""
        return object_id in self._owners

    def visible(self, object_id: str, tenant: str | None) -> bool:
        """Whether the tenant may see the dataset or job, from what was cached (False: ask
        the database)."""
        return object_id in self._owners and can_see(self._owners[object_id], tenant)

    def finished_ranking(self, job_id: str) -> tuple[int, bytes] | None:
        """A cached finished ranking: (its job's model count when cached, its body)."""
        hit = self.cache.peek(("ranking", job_id))
        if hit is None:
            return None
        validator, body = hit
        assert isinstance(validator, tuple)
        return int(validator[1]), body

    def ranking(self, job_id: str, tenant: str | None) -> bytes:
        """A ranking's JSON body; 404 (``NotFound``) when there is none the tenant may see.

        A finished ranking's body is cached with how many models the job holds, checked on
        every hit with one index lookup: a deletion through any API process (of the dataset,
        which takes its jobs, or of a model, which takes its rows) is seen on the next read."""
        hit = self.cache.peek(("ranking", job_id)) if self.visible(job_id, tenant) else None
        if hit is not None:
            validator, body = hit
            assert isinstance(validator, tuple)
            with self._autocommit.connect() as conn:
                if _model_count(conn, job_id) == validator[1]:
                    return body
        try:
            with self.db.session() as session:
                job = rankings.get(session, job_id, tenant)
                self._owners[job_id] = job.tenant
                out = rankings.describe(session, job)
                count = _model_count(session.connection(), job_id)
        except NotFound:
            self._owners.pop(job_id, None)  # deleted, maybe by another process
            self.cache.drop(lambda key, _: key == ("ranking", job_id))
            raise
        body = out.model_dump_json().encode()
        checking = (
            out.verification is not None
            and (out.verification.status is None or not out.verification.status.terminal)
            and out.verification.error is None
        )
        if JobStatus(out.status).terminal and not checking:
            # (a verification still running changes the body: not cached until it ends)
            # the validator names the dataset, so forget_dataset finds it
            self.cache.put(("ranking", job_id), body, (out.dataset_id, count))
        return body

    def leaderboard(self, dataset_id: str, metric: str, tenant: str | None) -> bytes:
        """The dataset's stored board under ``metric`` (blocking); 404 (``NotFound``) when
        there is no dataset the tenant may see, 422 (``Invalid``) for an unknown metric."""
        if self.visible(dataset_id, tenant):  # the usual case: one primary-key lookup
            with self._autocommit.connect() as conn:
                body = leaderboards.stored(conn, dataset_id, metric)
            if body is not None:
                return body
        try:
            with self.db.session() as session:
                if not self.visible(dataset_id, tenant):
                    self._owners[dataset_id] = datasets.get(session, dataset_id, tenant).tenant
                return leaderboards.load(session, dataset_id, metric, tenant)
        except NotFound:
            self._owners.pop(dataset_id, None)  # deleted, maybe by another process
            raise

    def forget_dataset(self, dataset_id: str) -> None:
        """Drop everything cached about a dataset (it was deleted)."""
        self._owners.pop(dataset_id, None)
        self.cache.drop(
            lambda key, validator: (
                (isinstance(validator, tuple) and validator[0] == dataset_id)
                or (isinstance(key, tuple) and dataset_id in key)
            )
        )

    def forget_rankings(self) -> None:
        """Drop every cached ranking (a model they may name was deleted)."""
        self.cache.drop(lambda key, validator: isinstance(key, tuple) and key[0] == "ranking")
