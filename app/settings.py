"""Service settings from ``TB_``-prefixed environment variables (pydantic-settings).

With nothing set, transferbench runs as the embedded default: SQLite and a local folder
under ``TB_DATA_DIR`` (database file, uploads and the feature cache), and an in-process worker.
Setting ``TB_DATABASE_URL`` (postgresql+psycopg://...) and ``TB_BROKER_URL`` (redis://...)
moves the same code onto Postgres and Celery workers.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


def default_data_dir() -> Path:
    """The per-user default: ``$XDG_CACHE_HOME/transferbench`` or ``~/.cache/transferbench``."""
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "transferbench"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TB_", env_nested_delimiter="__", extra="ignore")

    data_dir: Path = Field(default_factory=default_data_dir)
    database_url: str | None = None
    broker_url: str | None = None
    result_backend_url: str | None = None
    max_upload_mb: int = Field(default=1024, ge=1)
    auth: Literal["auto", "required", "off"] = "auto"
    heartbeat_timeout_s: int = Field(default=600, ge=5)
    visibility_timeout_s: int = Field(default=3600, ge=1)
    rerank_interval_s: int = Field(default=300, ge=5)
    scheduler_tick_s: int = Field(default=60, ge=1)
    model_resolve_timeout_s: int = Field(default=300, ge=1)

    @property
    def embedded(self) -> bool:
        """True without a broker: one process runs the API, a worker and the scheduler."""
        return not self.broker_url

    @property
    def db_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{self.data_dir / 'transferbench.db'}"

    @property
    def backend_url(self) -> str | None:
        return self.result_backend_url or self.broker_url

    @property
    def uploads_dir(self) -> Path:
        return self.data_dir / "uploads"

    @property
    def datasets_dir(self) -> Path:
        return self.data_dir / "datasets"

    @property
    def max_upload_bytes(self) -> int:
        return self.max_upload_mb * 1024 * 1024


@lru_cache
def get_settings() -> Settings:
    return Settings()
