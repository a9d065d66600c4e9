"""The database the service commands work on, migrated to head, without migration chatter."""

from __future__ import annotations

import logging

from app.db.migrate import upgrade
from app.db.session import Database
from workers.settings import Settings


def local_database(settings: Settings) -> Database:
    """``TB_DATABASE_URL``'s database (default: SQLite under ``TB_DATA_DIR``), at head."""
    if not settings.database_url:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
    logging.getLogger("alembic").setLevel(logging.WARNING)
    upgrade(settings.db_url)
    return Database(settings.db_url)
