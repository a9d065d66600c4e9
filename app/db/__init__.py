"""Persistence: SQLAlchemy 2 models and sessions. The schema comes from Alembic migrations."""
