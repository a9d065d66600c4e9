"""transferbench's one settings object, read from ``TB_``-prefixed environment variables.

The CLI, the pipeline, the API and the workers all read this class, so one environment
configures every process. With nothing set, transferbench runs as the embedded default: SQLite
and a local folder under ``TB_DATA_DIR`` (database file, uploads, feature and score caches) and an
in-process worker. Setting ``TB_DATABASE_URL`` (postgresql+psycopg://...) and
``TB_BROKER_URL`` (redis://...) moves the same code onto Postgres and Celery workers.

This module is the bottom of the ``workers`` package: it imports nothing from the project.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Literal

from pydantic import (
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
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

    Pipeline: ``data_dir`` (``TB_DATA_DIR``), ``graph_dir`` (``TB_GRAPH_DIR``), ``device``
    (``TB_DEVICE``: auto, cpu, cuda), ``precision`` (``TB_PRECISION``: auto, fp32, bf16, fp16
    on CUDA), ``decode`` (``TB_DECODE``: pil, device),
    ``batch_size`` (``TB_BATCH_SIZE``; unset picks one from free memory), ``num_threads``
    (``TB_NUM_THREADS``), ``offline`` (``TB_OFFLINE`` or ``HF_HUB_OFFLINE``: never download).
    Service: the database, broker, auth, upload cap, the scheduler's clocks, CORS origins.
    Remote CLI: ``server`` (``TB_SERVER``) and ``api_key`` (``TB_API_KEY``).
    """

    model_config = SettingsConfigDict(env_prefix="TB_", env_nested_delimiter="__", extra="ignore")

    # Each field's description is its documentation: docs/operations.md's settings table is
    # generated from them (scripts/settings_table.py; a test keeps the two equal).

    # the pipeline
    data_dir: Path = Field(
        default_factory=default_data_dir,
        description="the embedded database, uploads, stored datasets, the feature cache and a "
        "local ranking's score cache "
        "(default: `$XDG_CACHE_HOME/transferbench` or `~/.cache/transferbench`)",
    )
    graph_dir: Path | None = Field(
        default=None,
        description="the exported ONNX Runtime graphs, each named by the sha256 of the weights "
        "and versions that decide it, so workers, data directories and hosts may share one "
        "folder, read-only included (a graph it lacks is then built in memory and not kept); "
        "a stored graph is trusted by its name, so only processes trusted to run models may "
        "write there; unset: `TB_DATA_DIR/runtimes/onnx`",
    )
    device: str = Field(
        default="auto", description="extraction device: `auto` (a GPU if any), `cpu`, `cuda`"
    )
    batch_size: int | None = Field(
        default=None, ge=1, description="extraction batch; unset: chosen from free memory"
    )
    num_threads: int | None = Field(
        default=None, ge=1, description="CPU threads of the forward pass; unset: every core"
    )
    runtime: Literal["auto", "onnx", "torch"] = Field(
        default="auto",
        description="the CPU forward pass: `auto` and `onnx` run ONNX Runtime, `torch` turns it "
        "off",
    )
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        default="auto",
        description="the forward pass's arithmetic on a CUDA device: `auto` (bf16 autocast, fp16 "
        "where the GPU has no bf16), `fp32` (TF32 off: features equal the CPU's to 1e-4), "
        "`bf16`, `fp16`; a CPU always computes in float32",
    )
    decode: Literal["pil", "device"] = Field(
        default="pil",
        description="where images are decoded and resized: `pil` (PIL on the CPU, the recipe's "
        "reference arithmetic, large JPEGs at reduced scale) or `device` (JPEGs decoded on the "
        "models' device, nvJPEG on a GPU, and resized there in float32; features differ "
        "slightly and have their own cache key)",
    )
    offline: bool = Field(
        default=False,
        description="never download weights (`HF_HUB_OFFLINE=1` sets it too)",
    )
    # the service
    database_url: str | None = Field(
        default=None,
        description="`postgresql+psycopg://user:pass@host/db`; unset: SQLite in `TB_DATA_DIR`",
    )
    broker_url: str | None = Field(
        default=None,
        description="`redis://host:6379/0`: Celery workers; unset: the embedded worker thread",
    )
    result_backend_url: str | None = Field(
        default=None, description="Celery's result backend; unset: the broker"
    )
    max_upload_mb: int = Field(
        default=1024, ge=1, description="upload size cap (413 past it, from the headers)"
    )
    max_model_mb: int = Field(
        default=8192,
        ge=1,
        description="the largest weights a hub model (hf:, st:, timm:hf-hub:) may download, "
        "read from the hub's file list before any download (the model fails past it)",
    )
    max_body_kb: int = Field(
        default=1024,
        ge=16,
        description="size cap of every other request body (JSON and forms: rankings, outcomes, "
        "models, schedules, logins; 413 past it)",
    )
    auth: Literal["auto", "required", "off"] = Field(
        default="auto",
        description="API keys: `required`, `off`, or `auto` (required unless embedded on "
        "localhost)",
    )
    heartbeat_timeout_s: int = Field(
        default=600,
        ge=5,
        description="a model with no progress, or a registration still pending, for this long "
        "is sent again",
    )
    visibility_timeout_s: int = Field(
        default=3600, ge=1, description="Redis re-delivery of unacknowledged tasks"
    )
    rerank_interval_s: int = Field(
        default=300, ge=5, description="how often the scheduler re-ranks missing scores"
    )
    scheduler_tick_s: int = Field(default=60, ge=1, description="the scheduler's tick")
    model_dir: Path | None = Field(
        default=None,
        description="the one directory whose model files (`statedict:`, `onnx:`, "
        "`torchscript:`, `hf:`/`st:` directories) remote clients may name, by a relative "
        "path; unset: remote clients may name hub models only",
    )
    rate_limit_per_min: int = Field(
        default=1200,
        ge=0,
        description="requests per API key per clock minute (429 past it); 0: no limit",
    )
    max_event_streams: int = Field(
        default=8,
        ge=1,
        description="ranking event streams (GET /v1/rankings/{id}/events) one API key holds "
        "open at once per API process (429 past it; clients then poll)",
    )
    event_stream_max_s: int = Field(
        default=3600,
        ge=1,
        description="how long one event stream stays open before it ends (an EventSource "
        "reconnects)",
    )
    tenant_max_stored_mb: int = Field(
        default=20_480, ge=1, description="a tenant's stored datasets (413 past it)"
    )
    tenant_max_active_jobs: int = Field(
        default=20,
        ge=1,
        description="a tenant's rankings queued or running at once, and as many fine-tuning "
        "jobs, counting those its rankings will start (429 past it; schedules wait)",
    )
    db_pool_size: int = Field(default=30, ge=2, description="database connections per API process")
    db_pool_timeout_s: float = Field(
        default=30, gt=0, description="how long a request waits for a database connection"
    )
    request_timeout_s: float = Field(
        default=30,
        gt=0,
        description="the API's work on a request, not counting the wait for its body (503 "
        "past it, nothing kept); each wait for a body chunk (408); on PostgreSQL, each "
        "statement",
    )
    lock_timeout_s: float = Field(
        default=10, gt=0, description="on PostgreSQL, the API's wait for a row lock (503 past it)"
    )
    fast_reads: bool = Field(
        default=True,
        description="on PostgreSQL, answer leaderboard and finished-ranking reads on the event "
        "loop in one database round trip (`app/web/fastreads.py`); `false`: the full stack",
    )
    reference_tables: bool = Field(
        default=True,
        description="import the reference tables that ship with transferbench (the published "
        "image table, the zoo's ground truth) as shared benchmarks when the database is created "
        "or migrated, a new version replacing the old rows; `off`: import none (those already "
        "imported stay until removed)",
    )
    job_timeout_s: int = Field(
        default=86_400,
        ge=60,
        description="a ranking still queued or running this long after it was created fails, "
        "saying so",
    )
    cors_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="comma-separated browser origins allowed to call the API; unset: no CORS "
        "headers",
    )
    # the remote CLI
    server: str | None = Field(
        default=None,
        description="the service `transferbench rank` drives instead of the local pipeline",
    )
    api_key: SecretStr | None = Field(
        default=None, description="the key the remote CLI and the Python client send"
    )
    # the dashboard
    session_secret: SecretStr | None = Field(
        default=None,
        description="signs the dashboard's session cookies: set the same value on every API "
        "replica (unset: a random secret per process, so a restart logs browsers out)",
    )

    @field_validator("data_dir", "graph_dir", "model_dir", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object, info: ValidationInfo) -> object:
        """An empty folder setting (``TB_MODEL_DIR=``) means unset, its default, never the
        working directory (``Path("")`` is ``.``)."""
        if isinstance(value, str) and not value.strip():
            return default_data_dir() if info.field_name == "data_dir" else None
        return value

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
        if self.graph_dir is not None:
            self.graph_dir = self.graph_dir.expanduser()
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
    def graph_store_dir(self) -> Path:
        """Where exported ONNX Runtime graphs are kept (``TB_GRAPH_DIR``)."""
        return self.graph_dir or self.data_dir / "runtimes" / "onnx"

    @property
    def score_cache_dir(self) -> Path:
        return self.data_dir / "scores"

    @property
    def uploads_dir(self) -> Path:
        return self.data_dir / "uploads"

    @property
    def datasets_dir(self) -> Path:
        return self.data_dir / "datasets"

    @property
    def max_upload_bytes(self) -> int:
        return self.max_upload_mb * 1024 * 1024

    @property
    def max_body_bytes(self) -> int:
        return self.max_body_kb * 1024


def settings_table() -> str:
    """Every setting as a Markdown table (variable, default, meaning), from the fields'
    descriptions: ``docs/operations.md`` holds it, written by ``scripts/settings_table.py``."""
    rows = ["| setting | default | meaning |", "|---|---|---|"]
    for name, field in Settings.model_fields.items():
        if field.default_factory is not None:
            default = "see meaning" if field.default_factory is default_data_dir else "none"
        elif field.default is None:
            default = "unset"
        elif isinstance(field.default, bool):
            default = f"`{str(field.default).lower()}`"
        else:
            default = f"`{field.default}`"
        rows.append(f"| `TB_{name.upper()}` | {default} | {field.description} |")
    return "\n".join(rows) + "\n"
