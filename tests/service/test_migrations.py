"""Migrations on real PostgreSQL: the schema goes up and down again, and 0007 drops the stored
leaderboards (derived data built by rules that changed), which the next read builds anew."""

from __future__ import annotations

from sqlalchemy import create_engine, text

from app.db.migrate import downgrade, upgrade


def test_every_migration_goes_up_and_down(pg_url: str) -> None:
    upgrade(pg_url)
    downgrade(pg_url, "base")
    upgrade(pg_url)


def test_0007_drops_the_stored_boards(pg_url: str) -> None:
    upgrade(pg_url, "0006")
    engine = create_engine(pg_url)
    try:
        with engine.begin() as conn:
            conn.execute(
                text(
                    "INSERT INTO datasets (id, name, modality, task, content_hash, tenant, "
                    "size_bytes, n_samples, classes, path, created_at) VALUES ('d1', 'd', "
                    "'image', 'classification', 'h', 'default', 1, 1, '[]', '/x', now())"
                )
            )
            conn.execute(
                text(
                    "INSERT INTO leaderboards (dataset_id, metric, body, updated_at) "
                    "VALUES ('d1', 'recommended', 'old', now())"
                )
            )
        upgrade(pg_url, "0007")
        with engine.connect() as conn:
            assert conn.scalar(text("SELECT count(*) FROM leaderboards")) == 0
            assert conn.scalar(text("SELECT count(*) FROM datasets")) == 1
    finally:
        engine.dispose()
