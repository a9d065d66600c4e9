"""Fast reads: the two endpoints dashboards poll, answered on the event loop.

``GET /v1/datasets/{id}/leaderboard`` and ``GET /v1/rankings/{id}`` (finished) are most of a
shared service's traffic. Through the full stack (routing, dependencies, three hops to the
thread pool, an ORM session with its BEGIN, COMMIT and pre-ping) one such read costs several
milliseconds of CPU; this ASGI middleware answers the common case with one SQL statement, one
round trip (the key's row with the board, or the job's model count) and one Redis call (the
rate limit), on the event loop, with no thread.

It answers only what it can answer exactly as the full stack would, byte for byte
(``tests/service/test_fastreads.py`` compares them): a GET with a Bearer key that is valid, for
a dataset or job this process has already seen the tenant may see, whose board is stored or
whose finished ranking is cached and unchanged. Everything else goes to the full stack
unchanged: no key or an unknown one (its 401), a dashboard cookie, an id not seen yet (the full
stack learns its owner, so the next read is fast), a board not stored, a ranking not finished
or changed, any database error (a restarted server: the full stack's pre-ping reconnects). A
request that was counted against its key's rate limit carries its principal on, so the full
stack neither checks nor counts it twice.

PostgreSQL only (psycopg's asyncio connections); SQLite, the embedded default, takes the full
stack. ``TB_FAST_READS=off`` turns it off. Its connections (at most ``POOL_MAX`` per API
process, beside ``TB_DB_POOL_SIZE``) carry the same statement and lock timeouts, and the whole
read is bounded by ``TB_REQUEST_TIMEOUT_S`` (then 503, as the full stack would answer).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

from sqlalchemy import ClauseElement, select
from sqlalchemy.dialects.postgresql import psycopg as pg_psycopg
from sqlalchemy.engine import make_url
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app import schemas
from app.errors import ProblemError
from app.services import apikeys, leaderboards
from app.services.reads import MODEL_COUNT, Reads
from app.tenancy import LOCAL, Principal
from app.web import timeouts
from app.web.api import datasets as datasets_api
from app.web.api import rankings as rankings_api
from app.web.api.deps import count_request
from app.web.api.http import JSON, etag, none_match
from app.web.observability import Meter
from app.web.problems import problem
from app.web.ratelimit import RateLimiter
from app.web.timeouts import answer

log = logging.getLogger("transferbench.api")

#: connections of the fast path per API process (each is held for one round trip)
POOL_MAX = 4
APPLICATION_NAME = "transferbench-fastreads"  # in pg_stat_activity


def _sql(statement: ClauseElement) -> str:
    """A statement of the services' own, as psycopg's SQL (named %(...)s parameters)."""
    return str(statement.compile(dialect=pg_psycopg.dialect()))  # type: ignore[no-untyped-call]


#: the stored board, or the job's model count: alone (no key checks), or as one more column of
#: the key's row (no row: an unknown key), so that a read is one statement and one round trip
_BOARD = leaderboards.BODY.scalar_subquery().label("value")
_COUNT = MODEL_COUNT.scalar_subquery().label("value")
_SQL = {
    ("board", False): _sql(select(_BOARD)),
    ("board", True): _sql(apikeys.BY_HASH.add_columns(_BOARD)),
    ("ranking", False): _sql(select(_COUNT)),
    ("ranking", True): _sql(apikeys.BY_HASH.add_columns(_COUNT)),
}


def supported(db_url: str) -> bool:
    return make_url(db_url).get_backend_name() == "postgresql"


class _Pool:
    """A psycopg connection pool of the running event loop (a pool belongs to the loop that
    opened it; a test client's new loop gets a new one)."""

    def __init__(self, db_url: str, statement_timeout_s: float, lock_timeout_s: float) -> None:
        url = make_url(db_url).set(drivername="postgresql")
        self.conninfo = url.render_as_string(hide_password=False)
        self.options = (
            f"-c statement_timeout={int(statement_timeout_s * 1000)} "
            f"-c lock_timeout={int(lock_timeout_s * 1000)}"
        )
        self.timeout_s = statement_timeout_s
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pool: Any = None

    async def get(self) -> Any:
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            from psycopg_pool import AsyncConnectionPool

            self._loop = loop
            self._pool = AsyncConnectionPool(
                self.conninfo,
                min_size=1,
                max_size=POOL_MAX,
                timeout=self.timeout_s,
                kwargs={
                    "autocommit": True,
                    "prepare_threshold": 0,  # prepared on first use
                    "options": self.options,
                    "application_name": APPLICATION_NAME,
                },
                open=False,
                name="transferbench-fastreads",
            )
            await self._pool.open(wait=False)
        return self._pool

    async def close(self) -> None:
        if self._pool is not None and self._loop is asyncio.get_running_loop():
            await self._pool.close()
        self._loop = self._pool = None


@dataclass
class Counts:
    """Requests this path answered, and those it passed on to the full stack."""

    answered: int = 0
    passed: int = 0


class _Pass(Exception):
    """Not ours to answer: the full stack takes the request."""


class FastReads:
    """ASGI middleware in front of the full stack (see the module's docstring)."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        reads: Reads,
        limiter: RateLimiter,
        meter: Meter,
        counts: Counts,
        auth_required: bool,
        db_url: str,
        timeout_s: float,
        lock_timeout_s: float,
    ) -> None:
        self.app, self.reads, self.limiter, self.meter = app, reads, limiter, meter
        self.auth_required, self.timeout_s = auth_required, timeout_s
        self.pool = _Pool(db_url, timeout_s, lock_timeout_s)
        self.counts = counts  # (tests read them)
        self._board: Any = None  # the two routes (resolved on first use)
        self._ranking: Any = None

    def _resolve(self) -> None:
        routes = [*datasets_api.router.routes, *rankings_api.router.routes]
        by_endpoint = {getattr(r, "endpoint", None): r for r in routes}
        self._board = by_endpoint[datasets_api.leaderboard]
        self._ranking = by_endpoint[rankings_api.get_ranking]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self.app(scope, receive, self._on_shutdown(send))
            return
        if scope["type"] != "http" or scope["method"] != "GET":
            await self.app(scope, receive, send)
            return
        if self._board is None:
            self._resolve()
        path = scope["path"]
        if path.endswith("/leaderboard") and (m := self._board.path_regex.match(path)):
            route, ids = self._board, ("board", m.group("dataset_id"))
        elif path.startswith("/v1/rankings/") and (m := self._ranking.path_regex.match(path)):
            route, ids = self._ranking, ("ranking", m.group("job_id"))
        else:
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        try:
            async with asyncio.timeout(self.timeout_s):
                status, headers, body = await self._answer(scope, *ids)
        except _Pass:
            self.counts.passed += 1
            await self.app(scope, receive, send)
            return
        except ProblemError as exc:  # the rate limit's 429: the full stack's own rendering
            self.counts.answered += 1
            response = problem(exc.status, exc.title, exc.detail, exc.headers, **exc.extra)
            await response(scope, receive, send)
            self.meter.observe("GET", route.path, exc.status, time.perf_counter() - start)
            return
        except TimeoutError:
            self.counts.answered += 1
            await answer(scope, send, timeouts.timed_out(self.timeout_s))
            self.meter.observe("GET", route.path, 503, time.perf_counter() - start)
            return
        self.counts.answered += 1
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})
        self.meter.observe("GET", route.path, status, time.perf_counter() - start)

    async def _answer(
        self, scope: Scope, kind: str, object_id: str
    ) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        """(status, headers, body) of a read this path can answer; ``_Pass`` otherwise."""
        if not self.reads.known(object_id):
            raise _Pass  # the full stack learns who owns it
        query = _query(scope)
        if kind == "board":
            metric = query.pop("metric", schemas.LEADERBOARD_DEFAULT_METRIC)
            if query or not metric or len(metric) > 64:
                raise _Pass  # the full stack validates (or ignores) what is unusual
            params = {"dataset_id": object_id, "metric": metric}
            cached = None
        else:
            cached = self.reads.finished_ranking(object_id)
            if query or cached is None:
                raise _Pass
            params = {"job_id": object_id}
        headers = _headers(scope)
        key = None
        if self.auth_required:
            scheme, _, key = headers.get(b"authorization", b"").decode("latin-1").partition(" ")
            key = key.strip()
            if scheme.lower() != "bearer" or not key:
                raise _Pass  # a cookie session, or the full stack's 401
        if key is not None:
            params["key_hash"] = apikeys.hash_key(key)
        row = await self._fetch(_SQL[kind, key is not None], params)
        if row is None:
            raise _Pass  # an unknown key: the full stack's 401
        *found, value = row
        principal = apikeys.principal_of_fields(tuple(found)) if key is not None else LOCAL
        if principal is None or not self.reads.visible(object_id, principal.tenant):
            raise _Pass  # the full stack's 401 or 404 (it checks again)
        if key is not None:
            await count_request(self.limiter, principal)
        if kind == "board":
            body = value
        else:
            assert cached is not None
            body = cached[1] if value == cached[0] else None
        if body is None:
            _carry(scope, principal)
            raise _Pass  # not stored yet, or changed: the full stack builds it
        return _conditional(headers, bytes(body))

    async def _fetch(self, sql: str, params: dict[str, str]) -> tuple[Any, ...] | None:
        """The statement's one row (None: no row), in one round trip; a database error passes
        the request on."""
        import psycopg

        try:
            pool = await self.pool.get()
            async with pool.connection() as conn:
                cur = await conn.execute(sql, params)
                row = await cur.fetchone()
        except (psycopg.Error, OSError) as exc:
            # psycopg_pool's timeout is a psycopg.Error too; a cancelled read raises TimeoutError
            log.debug("fast read passed on: %s", exc)
            raise _Pass from None
        return None if row is None else tuple(row)

    def _on_shutdown(self, send: Send) -> Send:
        async def wrapped(message: Message) -> None:
            if message["type"] == "lifespan.shutdown.complete":
                await self.pool.close()
            await send(message)

        return wrapped


def _query(scope: Scope) -> dict[str, str]:
    """The query string's fields; a repeated one passes the request on."""
    raw = scope.get("query_string", b"")
    if not raw:
        return {}
    pairs = parse_qsl(raw.decode("latin-1"), keep_blank_values=True)
    fields = dict(pairs)
    if len(fields) != len(pairs):
        raise _Pass
    return fields


def _headers(scope: Scope) -> dict[bytes, bytes]:
    """The request's headers by lower-case name (the first of a repeated one, as Starlette)."""
    out: dict[bytes, bytes] = {}
    for name, value in scope["headers"]:
        out.setdefault(name, value)
    return out


def _carry(scope: Scope, principal: Principal) -> None:
    """The full stack's ``require_key`` takes this principal instead of checking (and counting)
    the request again."""
    scope.setdefault("state", {})["principal"] = principal


def _conditional(
    headers: dict[bytes, bytes], body: bytes
) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    """``app.web.api.http.conditional``'s answer, as ASGI messages' parts."""
    tag = etag(body)
    sent = headers.get(b"if-none-match")
    out = [(b"etag", tag.encode()), (b"cache-control", b"no-cache")]
    if sent is not None and none_match(sent.decode("latin-1"), tag):
        return 304, out, b""
    out += [(b"content-length", str(len(body)).encode()), (b"content-type", JSON.encode())]
    return 200, out, body
