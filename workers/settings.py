"""transferbench's one settings object, read from ``TB_``-prefixed environment variables.

The CLI, the pipeline, the API and the workers all read this class, so one environment
configures every process. With nothing set, transferbench runs as the embedded default: SQLite
and a local folder under ``TB_DATA_DIR`` (database file, uploads, the feature cache) and an
in-process worker. Setting ``TB_DATABASE_URL`` (postgresql+psycopg://...) and
``TB_BROKER_URL`` (redis://...) moves the same code onto Postgres and Celery workers.

This module is the bottom of the ``workers`` package: it imports nothing from the project.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

TRUE = {"1", "true", "yes", "on"}


def default_data_dir() -> Path:
    """The per-user default: ``$XDG_CACHE_HOME/transferbench`` or ``~/.cache/transferbench``."""
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "transferbench"


class SettingsError(ValueError):
    """A ``TB_`` variable holds a value transferbench cannot use; the message names it."""


class Settings(BaseSettings):
    """Where transferbench keeps its files, what it connects to, how it uses the machine.

    Pipeline: ``data_dir`` (``TB_DATA_DIR``), ``device`` (``TB_DEVICE``: auto, cpu, cuda),
    ``precision`` (``TB_PRECISION``: auto, fp32, bf16, fp16 on CUDA), ``decode``
    (``TB_DECODE``: pil, device),
    ``batch_size`` (``TB_BATCH_SIZE``; unset picks one from free memory), ``num_threads``
    (``TB_NUM_THREADS``), ``offline`` (``TB_OFFLINE`` or ``HF_HUB_OFFLINE``: never download).
    Service: the database, broker, auth, upload cap, the scheduler's clocks, CORS origins.
    Remote CLI: ``server`` (``TB_SERVER``) and ``api_key`` (``TB_API_KEY``).
    """

    model_config = SettingsConfigDict(env_prefix="TB_", env_nested_delimiter="__", extra="ignore")

    # the pipeline
    data_dir: Path = Field(default_factory=default_data_dir)
    device: str = "auto"
    batch_size: int | None = Field(default=None, ge=1)
    num_threads: int | None = Field(default=None, ge=1)
    runtime: Literal["auto", "onnx", "torch"] = "auto"
    #: the forward pass's arithmetic on a CUDA device: ``auto`` (bf16 autocast, fp16 where
    #: the GPU has no bf16), ``fp32`` (TF32 off: features equal the CPU's to 1e-4), ``bf16``,
    #: ``fp16``; a CPU always computes in float32
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    #: where images are decoded and resized: ``pil`` (PIL on the CPU, the recipe's reference
    #: arithmetic, large JPEGs at reduced scale) or ``device`` (JPEGs decoded on the device the
    #: models run on, nvJPEG on a GPU, and resized there in float32; features differ slightly
    #: and have their own cache key)
    decode: Literal["pil", "device"] = "pil"
    offline: bool = False
    # the service
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
    #: local model files (statedict:, onnx:, torchscript:, hf: paths) a remote client may
    #: name, relative to this directory; unset: remote clients may name hub models only
    model_dir: Path | None = None
    #: per API key; 0: no limit
    rate_limit_per_min: int = Field(default=1200, ge=0)
    #: per tenant: bytes of stored datasets, and ranking jobs queued or running at once
    tenant_max_stored_mb: int = Field(default=20_480, ge=1)
    tenant_max_active_jobs: int = Field(default=20, ge=1)
    #: an API process's database connections, and how long a request waits for one
    db_pool_size: int = Field(default=30, ge=2)
    db_pool_timeout_s: float = Field(default=30, gt=0)
    #: the API's bound on a request: its work before the response starts, not counting the
    #: wait for the client's body (then 503); each wait for a body chunk (then 408); and, on
    #: PostgreSQL, each statement it runs and each wait for a row lock
    request_timeout_s: float = Field(default=30, gt=0)
    lock_timeout_s: float = Field(default=10, gt=0)
    #: on PostgreSQL, answer the leaderboard and finished-ranking reads on the event loop in
    #: one database round trip (``app.fastreads``); off: every request takes the full stack
    fast_reads: bool = True
    #: a ranking job still queued or running this long after it was created fails, saying so
    job_timeout_s: int = Field(default=86_400, ge=60)
    #: browser origins allowed to call the API (``TB_CORS_ORIGINS``, comma-separated; none: no
    #: CORS headers at all)
    cors_origins: Annotated[list[str], NoDecode] = Field(default_factory=list)
    # the remote CLI: the server to drive (``TB_SERVER``) and its key (``TB_API_KEY``)
    server: str | None = None
    api_key: SecretStr | None = None
    # the dashboard: signs its session cookies; the same value on every API replica
    # (unset: a random secret per process, so a restart logs browsers out)
    session_secret: SecretStr | None = None

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _comma_separated(cls, value: object) -> object:
        if isinstance(value, str):
            return [o.strip().rstrip("/") for o in value.split(",") if o.strip()]
        return value

    @model_validator(mode="after")
    def _hub_offline(self) -> Settings:
        """The Hugging Face hub's own switch counts too."""
        if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in TRUE:
            self.offline = True
        self.data_dir = self.data_dir.expanduser()
        return self

    @classmethod
    def load(cls) -> Settings:
        """The settings of this environment, or a ``SettingsError`` naming the bad variable."""
        try:
            return cls()
        except ValidationError as exc:
            problems = []
            for err in exc.errors():
                name = "TB_" + "__".join(str(p) for p in err["loc"]).upper()
                raw = os.environ.get(name)
                problems.append(f"{name}={raw!r}: {err['msg']}")
            raise SettingsError(
                "; ".join(problems) + "; unset the variable or give a valid value"
            ) from exc

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
    def feature_cache_dir(self) -> Path:
        return self.data_dir / "features"

    @property
    def uploads_dir(self) -> Path:
        return self.data_dir / "uploads"

    @property
    def datasets_dir(self) -> Path:
        return self.data_dir / "datasets"

    @property
    def max_upload_bytes(self) -> int:
        return self.max_upload_mb * 1024 * 1024
