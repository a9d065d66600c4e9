"""Request and response bodies (pydantic v2).

No database and no FastAPI here: the Python client (``app.client``) parses its answers with
these same models."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt

from app.states import FineTuneStatus, JobStatus, ModelState, ModelStatus, RunStatus

#: An outcome measure's name: letters, digits, '.', '_' and '-' (a CLI and a query string
#: carry it as written), at most ``MEASURE_MAX`` characters.
MEASURE_PATTERN = r"^[A-Za-z0-9._-]+$"
MEASURE_MAX = 64
_MEASURE = re.compile(MEASURE_PATTERN)


def is_measure(name: object) -> bool:
    """Whether ``name`` is a measure's name as ``OutcomeIn`` takes it (the same rule for the
    services and forms that take one without that model)."""
    return isinstance(name, str) and len(name) <= MEASURE_MAX and bool(_MEASURE.fullmatch(name))


#: Bounds of whole numbers a request may give: a database integer column, and a seed (32-bit,
#: as numpy's legacy generators and the CLI's ``--seed`` take it). Past them a request was a
#: 500 (an integer too large for the database) or a job that failed later.
MAX_INT = 2**31 - 1
MAX_SEED = 2**32 - 1


class ClassCount(BaseModel):
    name: str
    count: int


class DatasetOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    name: str
    modality: str
    task: str
    n_samples: int
    classes: list[ClassCount]
    content_hash: str
    tenant: str | None = Field(description="its tenant; null: shared by every tenant")
    size_bytes: int = Field(description="stored on disk, counted against the tenant's quota")
    schedule: str | None
    created_at: datetime


class ModelIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9._:/@+-]+$")
    source: str = Field(
        min_length=3,
        max_length=2000,
        description="a zoo name or SOURCE:REF spec, e.g. timm:resnet50.a1_in1k",
    )
    aliases: list[str] = Field(
        default_factory=list,
        max_length=100,
        description="models of imported benchmark tables (NAME or ref:NAME) that are this model: "
        "their fine-tuning outcomes count as its history; never inferred from a name",
    )


class ModelOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    name: str
    status: ModelState = Field(
        description="pending until a worker has loaded the weights, then ready or failed"
    )
    error: str | None = Field(None, description="why the weights could not be loaded")
    tenant: str | None = Field(description="its tenant; null: shared by every tenant")
    modality: str | None = Field(description="null while pending")
    source: dict[str, str]
    has_head: bool | None
    num_source_classes: int | None
    fingerprint: str | None
    builtin: bool
    created_at: datetime


class RankingIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    dataset_id: str
    model_ids: list[str] | None = Field(
        default=None,
        min_length=1,
        description="ids or names of models (a name: the tenant's own model, else a shared "
        "one); default: every ready model for the dataset's modality",
    )
    metrics: list[str] | None = Field(default=None, min_length=1)
    per_class: int | None = Field(
        default=None, ge=1, le=MAX_INT, description="at most K samples per class"
    )
    verify: VerifyIn | None = Field(
        default=None,
        description="once scored, fine-tune the top_k of the recommended order by successive "
        "halving (a fine-tuning job: see /v1/finetunes) and say which model won",
    )
    layers: Literal["last", "all"] | list[StrictInt] = Field(
        default="last",
        description="which layers to score: last (the features every ranking uses), all, or "
        "indices (0: a text encoder's embeddings or an image model's first stage; -1: the "
        "last); every layer comes from one forward pass. Models are ordered by the mean with "
        "layer_mean, else by the last layer when chosen, else by the first index given",
    )
    layer_mean: bool = Field(
        default=False,
        description="also score the mean of the chosen layers' features (layers of one "
        "width), and order models by it",
    )


class ModelProgress(BaseModel):
    model_id: str
    model: str
    status: ModelStatus
    samples_done: int
    samples_total: int
    metrics_done: list[str]
    errors: dict[str, str]
    error: str | None


class PooledScore(BaseModel):
    """A score defined over the models of one ranking (ETran, NCTI): computed when the
    ranking is read, from its models' stored components, never stored."""

    value: float | None
    models: int = Field(description="how many models of this ranking it is pooled over")
    components: list[str]
    note: str


class RankedModel(BaseModel):
    rank: int | None
    model_id: str
    model: str
    scores: dict[str, float | None]
    pooled: dict[str, PooledScore] | None = Field(
        default=None,
        description="pooled scores (etran, ncti) when the ranking computed their components: "
        "min-max scaled across this ranking's models when read, never stored",
    )
    layers: dict[str, dict[str, float | None]] | None = Field(
        default=None,
        description="a ranking by layers: each layer's scores, by index (and mean)",
    )
    layer: str | None = Field(
        default=None, description="a ranking by layers: the layer scores are of and ordered by"
    )
    best_layer: str | None = Field(
        default=None,
        description="a ranking by layers: the layer the first metric scores best (not mean)",
    )
    layer_names: list[str] | None = Field(
        default=None, description="a ranking by layers: every layer's name, by index"
    )


class RankingSummary(BaseModel):
    id: str
    dataset_id: str
    status: JobStatus
    metrics: list[str]
    trigger: str
    created_at: datetime
    finished_at: datetime | None


class RankingProgress(BaseModel):
    """The data of a ``progress`` event of ``GET /v1/rankings/{id}/events``: the ranking's
    status and per-model progress, as in ``RankingOut``."""

    id: str
    status: JobStatus
    error: str | None
    progress: list[ModelProgress]


class RankingOut(RankingSummary):
    started_at: datetime | None
    error: str | None
    progress: list[ModelProgress]
    results: list[RankedModel] | None = Field(
        description="best first: by the recommended score when there is one, else by the "
        "first metric; tied models share a rank"
    )
    recommendation: dict[str, Any] | None = Field(
        default=None,
        description="the recommender's ordering: the fit behind it (fingerprint, version), "
        "whether it is calibrated on outcomes and its expected quality (or, uncalibrated, why: "
        "uncalibrated_reason), weights, and per-model evidence",
    )
    verification: RankingVerification | None = Field(
        default=None,
        description="the answer checked by fine-tuning, when the request asked to verify it",
    )
    layers: Literal["last", "all"] | list[int] = Field(
        default="last", description="the layers it scores, as requested"
    )
    layer_mean: bool = False


#: What a leaderboard orders by when a request names no metric: the recommender's combined
#: score (``scoring.RECOMMENDED``, spelled out here because the client must not import
#: ``scoring``), the ordering a ranking's results lead with. The route, its fast reads and
#: the client all take this one default.
LEADERBOARD_DEFAULT_METRIC = "recommended"


class LeaderboardEntry(BaseModel):
    rank: int
    model_id: str
    model: str
    value: float
    metric_version: int
    scored_at: datetime
    metrics: list[str] | None = Field(
        default=None,
        description="with metric=recommended: the metrics this value is computed from, the "
        "same for every model ranked (recommendation.metrics_used)",
    )
    missing_metrics: list[str] = Field(
        default_factory=list,
        description="with metric=recommended: metrics other models of the dataset have and "
        "this one lacks; the order uses none of them (recommendation.left_out_metrics)",
    )


class Leaderboard(BaseModel):
    dataset_id: str
    metric: str
    higher_is_better: bool
    entries: list[LeaderboardEntry]
    recommendation: dict[str, Any] | None = Field(
        default=None, description="with metric=recommended: the fit behind the ordering"
    )


class ScheduleIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    schedule: str | None = Field(
        max_length=100,
        description="a 5-field cron expression (minute hour day month weekday) that fires at "
        "some time, or null to clear; a due run waits while the dataset has a ranking queued or "
        "running",
    )


class OutcomeIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model_id: str = Field(min_length=1, max_length=200, description="a model's id or name")
    value: float = Field(
        allow_inf_nan=False,
        description="what fine-tuning reached; finetune_top1: the top-1 accuracy in percent, 0 "
        "to 100 (as the reference tables and fine-tuning jobs record it)",
    )
    measure: str = Field(
        default="finetune_top1",
        min_length=1,
        max_length=MEASURE_MAX,
        pattern=MEASURE_PATTERN,
        description="what was measured (default finetune_top1)",
    )
    higher_is_better: bool = True
    details: dict[str, Any] = Field(
        default_factory=dict,
        description="free-form: learning rate, epochs, ...; se: the standard error of value in "
        "its unit (for a top-1 of p percent on n held-out samples, sqrt(p (100 - p) / n)), which "
        "sets how "
        "much the dataset teaches the recommender",
    )


class OutcomeOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    dataset_id: str
    model_id: str
    measure: str
    value: float
    higher_is_better: bool
    details: dict[str, Any]
    created_at: datetime


class ReferenceTableOut(BaseModel):
    """A reference table: one shipped with transferbench as imported into this database, or
    one imported since (``POST /v1/benchmarks``, ``benchmark import``)."""

    name: str
    kind: Literal["shipped", "imported"] = Field(
        description="shipped with transferbench, or imported by the operator or a tenant"
    )
    shared: bool = Field(description="every tenant's (shipped, or the operator's import)")
    version: str | None = Field(
        description="sha256 of the shipped table's file as imported (None: an imported table)"
    )
    shipped_version: str | None = Field(
        description="the version the installed package ships (imported at the next start)"
    )
    modality: str | None
    task: str | None
    outcome: str | None
    source: str | None = Field(description="where the numbers come from, and their licence")
    datasets: int
    models: int = Field(description="models with an outcome")
    imported_at: str


class BenchmarkImported(BaseModel):
    table: str
    datasets: int
    models: int = Field(description="models with an outcome, as GET /v1/benchmarks counts them")
    rows: int
    metrics: list[str]
    external: list[str]


class DatasetEvaluation(BaseModel):
    """How each metric and the recommender ordered one dataset's models against its outcomes."""

    dataset_id: str
    measure: str
    models: int = Field(description="models with an outcome under this measure")
    methods: dict[str, dict[str, float | None]] = Field(
        description="method (each metric, and recommended) -> figure (kendall_tau, "
        "weighted_tau, pearson, top1_hit, top1_regret) -> value; null where undefined"
    )
    compared: dict[str, int] = Field(
        default_factory=dict,
        description="method -> how many of the models with an outcome its figures are over: a "
        "metric is compared on the models it scored, the recommender ranks them all",
    )


class Evaluation(BaseModel):
    """The same figures over every dataset of a scope with outcomes."""

    scope: str = Field(description="modality/task/measure")
    measure: str
    datasets: int
    left_out: dict[str, str] = Field(
        default_factory=dict,
        description="dataset id -> why a dataset with enough outcomes was not evaluated (its "
        "outcomes are no more spread than their standard errors)",
    )
    mean: dict[str, dict[str, float | None]]
    median: dict[str, dict[str, float | None]]
    count: dict[str, dict[str, int]] = Field(
        description="method -> figure -> the number of datasets where it is finite"
    )
    sem: dict[str, dict[str, float | None]] = Field(
        default_factory=dict,
        description="method -> figure -> the standard error of the mean (sample standard "
        "deviation over the datasets / sqrt(count)); null with fewer than 2 datasets",
    )
    min: dict[str, dict[str, float | None]] = Field(
        default_factory=dict,
        description="method -> figure -> its lowest value on one held-out dataset",
    )
    max: dict[str, dict[str, float | None]] = Field(
        default_factory=dict,
        description="method -> figure -> its highest value on one held-out dataset",
    )
    coverage: dict[str, float] = Field(
        default_factory=dict,
        description="method -> the share of the held-out datasets' models with an outcome that "
        "its figures are over (1.0: all of them): a metric is compared only on the models it "
        "scored, so below 1.0 its figures are not over the same models as the recommender's",
    )


# -- fine-tuning ------------------------------------------------------------------------------


class RecipeIn(BaseModel):
    """How each model is fine-tuned; every field has a documented default (docs/finetuning.md):
    AdamW, linear warm-up over 10% of the steps then cosine decay, label smoothing 0.1, the
    model's own preprocessing, light augmentation for images, autocast on a GPU."""

    model_config = ConfigDict(extra="forbid")

    mode: Literal["full", "head"] = Field(
        default="full", description="full: every weight trains; head: the backbone is frozen"
    )
    epochs: int = Field(default=3, ge=1, le=1000, description="passes over the training samples")
    time_budget_s: float | None = Field(
        default=None, gt=0, description="seconds of training per model; it stops at the next step"
    )
    learning_rate: float | None = Field(
        default=None, gt=0, description="default: 1e-4 (images), 5e-5 (text), 1e-2 head only"
    )
    batch_size: int = Field(default=32, ge=1, le=4096, description="samples per optimiser step")
    weight_decay: float | None = Field(
        default=None, ge=0, description="AdamW's; default 0.05 (images), 0.01 (text)"
    )
    seed: int = Field(
        default=0, ge=0, le=MAX_SEED, description="the split, the head's weights, the order"
    )
    validation: float | int = Field(
        default=0.2,
        description="held out of training when the dataset brings no split column: a fraction "
        "of each class (0 < v < 1) or a count per class (>= 1)",
    )
    augment: bool = Field(default=True, description="images: random crop and flip in training")


class VerifyIn(RecipeIn):
    top_k: int = Field(default=3, ge=1, le=16, description="how many of the top models to verify")


class FineTuneIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    dataset_id: str
    model_ids: list[str] = Field(
        min_length=1, max_length=16, description="ids or names of the models to fine-tune"
    )
    recipe: RecipeIn = Field(default_factory=RecipeIn)
    per_class: int | None = Field(
        default=None,
        ge=1,
        le=MAX_INT,
        description="at most K samples per class (drawn with the seed)",
    )
    keep_weights: bool = Field(
        default=False,
        description="keep the fine-tuned weights (counted in the tenant's quota) for download",
    )


class FineTuneRunOut(BaseModel):
    """One model fine-tuned once (one round of a successive halving)."""

    model_id: str
    model: str
    round: int
    epochs: int = Field(description="the epochs this run trains for")
    status: RunStatus
    step: int
    steps_total: int
    epoch: float = Field(description="epochs done so far")
    elapsed_s: float | None
    train_loss: list[float] = Field(description="per epoch: the mean training loss")
    val_top1: list[float] = Field(description="per epoch: top-1 on the held-out samples")
    top1: float | None = Field(description="held-out top-1 after the last epoch")
    seconds: float | None
    device: str | None
    n_train: int | None
    n_validation: int | None
    repeats_round: int | None = Field(
        default=None,
        description="not trained again: the same model, budget, recipe and data were measured "
        "in this earlier round",
    )
    error: str | None
    weights: str | None = Field(description="where to download the kept weights")


class FineTuneResultOut(BaseModel):
    """One model's last measurement: what ``transferbench finetune --format json`` prints."""

    model_id: str
    model: str
    top1: float | None
    epochs: float | None
    seconds: float | None
    device: str | None
    error: str | None = None
    predicted_rank: int | None = None
    measured_rank: int | None = None


class FineTuneSummary(BaseModel):
    id: str
    dataset_id: str
    ranking_id: str | None
    method: str
    status: FineTuneStatus
    created_at: datetime
    finished_at: datetime | None


class FineTuneOut(FineTuneSummary):
    recipe: dict[str, Any] = Field(description="the recipe's fields as given (defaults aside)")
    per_class: int | None
    keep_weights: bool
    started_at: datetime | None
    error: str | None
    held_out: str | None = Field(description="how the validation samples were chosen")
    runs: list[FineTuneRunOut]
    results: list[FineTuneResultOut] = Field(
        description="each model's last measurement, best first (failed models last): by "
        "successive halving's measured order where it ran (the rounds a model survived, then "
        "its top-1 there; a model out early may have measured more in its shorter round than "
        "the winner in its last), else by top-1"
    )
    verification: dict[str, Any] | None = Field(
        default=None,
        description="successive halving's summary once it ends: the winner, its top-1, the "
        "measured order, whether the predicted first won, Kendall's tau",
    )


class RankingVerification(BaseModel):
    top_k: int
    finetune_id: str | None = Field(description="the fine-tuning job, once the ranking is done")
    status: FineTuneStatus | None
    winner: str | None = None
    winner_top1: float | None = None
    agrees_with_predicted_first: bool | None = None
    kendall_tau: float | None = None
    predicted_order: list[str] = Field(default_factory=list)
    measured_order: list[str] = Field(default_factory=list)
    error: str | None = None
