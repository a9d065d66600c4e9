"""Engines and sessions. One engine per process (reset after a fork)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.orm import Session, sessionmaker


def make_engine(
    url: str,
    *,
    pool_size: int = 30,
    pool_timeout_s: float = 30,
    statement_timeout_s: float | None = None,
    lock_timeout_s: float | None = None,
) -> Engine:
    """An engine for ``url``. On PostgreSQL, ``statement_timeout_s`` and ``lock_timeout_s``
    bound every statement of the engine's connections (the server cancels it with SQLSTATE
    57014 or 55P03), so a request never waits without end behind another's row lock."""
    if url.startswith("sqlite"):
        # a file's pool is bounded like PostgreSQL's (app.db.permits counts on it); an
        # in-memory database keeps SQLAlchemy's one connection per thread
        in_memory = url in ("sqlite://", "sqlite:///:memory:") or "mode=memory" in url
        pool = {} if in_memory else {
            "pool_size": pool_size, "max_overflow": 0, "pool_timeout": pool_timeout_s
        }  # fmt: skip
        engine = create_engine(
            url, connect_args={"check_same_thread": False, "timeout": 30}, **pool
        )

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(conn, _record):  # type: ignore[no-untyped-def]
            cur = conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()

        return engine
    options = []
    if statement_timeout_s:
        options.append(f"-c statement_timeout={int(statement_timeout_s * 1000)}")
    if lock_timeout_s:
        options.append(f"-c lock_timeout={int(lock_timeout_s * 1000)}")
    return create_engine(
        url,
        pool_pre_ping=True,
        pool_size=pool_size,
        max_overflow=0,
        pool_timeout=pool_timeout_s,
        connect_args={"options": " ".join(options)} if options else {},
    )


class Database:
    """An engine and its session factory. ``pool_size`` is the most connections the process
    opens (an in-memory SQLite database keeps one per thread instead)."""

    def __init__(
        self,
        url: str,
        *,
        pool_size: int = 30,
        pool_timeout_s: float = 30,
        statement_timeout_s: float | None = None,
        lock_timeout_s: float | None = None,
    ) -> None:
        self.url = url
        self.pool_size = pool_size
        self.engine = make_engine(
            url,
            pool_size=pool_size,
            pool_timeout_s=pool_timeout_s,
            statement_timeout_s=statement_timeout_s,
            lock_timeout_s=lock_timeout_s,
        )
        self.sessions = sessionmaker(self.engine, expire_on_commit=False)

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A session committed once at the end of the block, rolled back on error."""
        with self.sessions() as session:
            try:
                yield session
                session.commit()
            except BaseException:
                session.rollback()
                raise

    def dispose(self) -> None:
        self.engine.dispose()
