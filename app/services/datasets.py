"""Uploading a target dataset: stream to disk under a cap, validate with the pipeline's
readers (which need no torch), and store it once per content hash."""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path, PurePath
from typing import TYPE_CHECKING, Protocol

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.db.models import DatasetRow, FineTuneJobRow, FineTuneRunRow, now
from app.errors import Invalid, NotFound, TooLarge, TooManyRequests
from app.services import pages
from app.tenancy import can_change, can_see, visible
from workers.settings import Settings

if TYPE_CHECKING:
    from workers.pipeline.datasets import Summary

CHUNK = 1 << 20
SUFFIXES = (".zip", ".csv", ".jsonl", ".npz", ".npy", ".parquet")
#: uploads validated at once in this process; the rest wait their turn. A feature file is
#: streamed a few rows at a time (tens of MiB); images decode one at a time; two together keep
#: validation's share of the API's memory near 256 MiB whatever the uploads expand to.
VALIDATIONS_AT_ONCE = 2
_validating = threading.BoundedSemaphore(VALIDATIONS_AT_ONCE)
#: uploads admitted to validation at once in this process, validating or waiting their turn:
#: each waits in a thread of the API's pool, so past this many an upload is refused (429)
#: rather than let uploads take the threads every other request needs.
UPLOADS_ADMITTED = 8
_admitted = threading.BoundedSemaphore(UPLOADS_ADMITTED)


@contextmanager
def validation_slot(tmp: Path) -> Iterator[None]:
    """A place among the uploads being validated, or ``TooManyRequests`` (the saved upload
    ``tmp`` removed): the API's routes validate inside one, and open their database session
    only after, so that no session waits on a validation."""
    if not _admitted.acquire(blocking=False):
        tmp.unlink(missing_ok=True)
        raise TooManyRequests(
            f"this server is validating {UPLOADS_ADMITTED} uploads already; retry in a few seconds",
            headers={"Retry-After": "10"},
        )
    try:
        yield
    finally:
        _admitted.release()


#: newest first
ORDER = pages.Order("datasets", ((DatasetRow.created_at, True), (DatasetRow.id, True)))


def _suffix(filename: str) -> str:
    name = PurePath(filename).name.lower()
    for suffix in SUFFIXES:
        if name.endswith(suffix):
            return suffix
    raise Invalid(
        f"cannot tell the format of {filename!r}: upload a .zip of images (one folder per "
        "class), a .csv/.jsonl text table, or .npz/.npy/.parquet features"
    )


class Upload(Protocol):
    """An upload as it arrives: its client-side file name and its body, read in chunks (the
    web side passes its own upload object; the domain needs no web framework)."""

    @property
    def filename(self) -> str | None: ...

    async def read(self, size: int = -1) -> bytes: ...


def dataset_name(given: str | None, filename: str | None) -> str:
    """An upload's name: the one given (stripped), else its file's name without the suffix,
    as the upload page promises (``cats.v2.npz`` -> ``cats.v2``)."""
    if given and given.strip():
        return given.strip()
    name = PurePath(filename or "").name
    for suffix in SUFFIXES:
        if name.lower().endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)][:200]
    return name[:200] or "dataset"


async def save_upload(upload: Upload, settings: Settings) -> Path:
    """Stream the upload to a temporary file, refusing past the size cap (nothing is kept)."""
    suffix = _suffix(upload.filename or "")
    settings.uploads_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=settings.uploads_dir, suffix=suffix)
    size = 0
    try:
        with os.fdopen(fd, "wb") as out:
            while chunk := await upload.read(CHUNK):
                size += len(chunk)
                if size > settings.max_upload_bytes:
                    raise TooLarge(
                        f"the upload is larger than the {settings.max_upload_mb} MiB limit "
                        "(TB_MAX_UPLOAD_MB); subsample it or raise the limit"
                    )
                out.write(chunk)
        if size == 0:
            raise Invalid(f"{upload.filename} is empty")
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return Path(tmp)


def register(
    session: Session,
    settings: Settings,
    tmp: Path,
    *,
    tenant: str,
    name: str,
    modality: str | None,
    task: str | None,
    tags: str | None = None,
) -> tuple[DatasetRow, bool]:
    """Validate the saved file and store it as the tenant's; returns (row, created). The same
    content uploaded again by the same tenant is the same row. ``tags``: a token-classification
    upload's tags as given (``bio``) or merged to entity types (``entity``: stored merged).
    The API's routes call the two halves apart (:func:`validate`, then :func:`store`), so that
    no database session waits on a validation."""
    dataset = validate(tmp, modality=modality, task=task, tags=tags)
    return store(session, settings, tmp, dataset, tenant=tenant, name=name)


def _as_the_upload(message: str, tmp: Path) -> str:
    """A reader's message about the temporary file, in the client's words: its path is "the
    upload", a member of it "the upload's NAME", and the name a single array file gives its
    model (the temporary file's stem, meaningless to the client) is left out."""
    message = message.replace(f"{tmp}!", "the upload's ").replace(str(tmp), "the upload")
    return message.replace(f"{tmp.stem} ", "")


def validate(
    tmp: Path, *, modality: str | None, task: str | None, tags: str | None = None
) -> Summary:
    """The saved upload checked whole (every image decoded and every row parsed, within the
    readers' caps; at most ``VALIDATIONS_AT_ONCE`` at a time in this process) against the
    modality and task it was declared with; refused (``Invalid``), it is removed."""
    from workers.pipeline.datasets import check_upload
    from workers.pipeline.errors import PipelineError

    try:
        with _validating:
            dataset = check_upload(tmp, tags=tags)
    except PipelineError as exc:
        tmp.unlink(missing_ok=True)
        raise Invalid(_as_the_upload(str(exc), tmp)) from exc
    except BaseException:  # unforeseen: a 500, but the upload is not left behind either
        tmp.unlink(missing_ok=True)
        raise
    if modality and modality != dataset.modality:
        tmp.unlink(missing_ok=True)
        raise Invalid(
            f"modality={modality!r} was given, but the upload holds {dataset.modality} data"
        )
    if task and task != dataset.target:
        tmp.unlink(missing_ok=True)
        raise Invalid(f"task={task!r} was given, but the upload's labels make it {dataset.target}")
    return dataset


def store(
    session: Session, settings: Settings, tmp: Path, dataset: Summary, *, tenant: str, name: str
) -> tuple[DatasetRow, bool]:
    """Keep the validated upload ``tmp`` as the tenant's dataset ``name``: (row, created)."""
    digest = dataset.content_hash
    existing = session.scalar(
        select(DatasetRow).where(DatasetRow.content_hash == digest, DatasetRow.tenant == tenant)
    )
    if existing is not None:
        tmp.unlink(missing_ok=True)
        return existing, False
    size = tmp.stat().st_size
    used = stored_bytes(session, tenant)
    if used + size > settings.tenant_max_stored_mb * 1024 * 1024:
        tmp.unlink(missing_ok=True)
        raise TooLarge(
            f"storing this {size / 2**20:.1f} MiB dataset would take tenant {tenant!r} past its "
            f"{settings.tenant_max_stored_mb} MiB quota ({used / 2**20:.1f} MiB in use; "
            "TB_TENANT_MAX_STORED_MB); delete datasets you no longer need"
        )
    # per tenant: deleting one tenant's copy never touches another's
    final_dir = settings.datasets_dir / tenant / digest
    final_dir.mkdir(parents=True, exist_ok=True)
    final = final_dir / f"data{tmp.suffix}"
    os.replace(tmp, final)
    classes = [{"name": str(label), "count": count} for label, count in dataset.classes]
    row = DatasetRow(
        name=name,
        modality=dataset.modality,
        task=dataset.target,
        content_hash=digest,
        tenant=tenant,
        size_bytes=size,
        n_samples=dataset.n_samples,
        classes=classes,
        path=str(final),
    )
    try:
        with session.begin_nested():  # the same content uploaded twice at the same moment
            session.add(row)
    except IntegrityError:
        existing = session.scalar(
            select(DatasetRow).where(DatasetRow.content_hash == digest, DatasetRow.tenant == tenant)
        )
        if existing is None:
            raise
        return existing, False  # the other upload's row; the file at ``final`` is the same
    return row, True


def stored_bytes(session: Session, tenant: str) -> int:
    """Bytes the tenant keeps on disk: its datasets, and the fine-tuned weights it asked to
    keep (``keep_weights``)."""
    query = select(func.coalesce(func.sum(DatasetRow.size_bytes), 0))
    datasets = int(session.scalar(query.where(DatasetRow.tenant == tenant)) or 0)
    weights = (
        select(func.coalesce(func.sum(FineTuneRunRow.weights_bytes), 0))
        .join(FineTuneJobRow, FineTuneJobRow.id == FineTuneRunRow.job_id)
        .where(FineTuneJobRow.tenant == tenant)
    )
    return datasets + int(session.scalar(weights) or 0)


def get(session: Session, dataset_id: str, tenant: str | None) -> DatasetRow:
    """The dataset, if the tenant may see it (its own or a shared one); else ``NotFound``."""
    row = session.get(DatasetRow, dataset_id)
    if row is None or not can_see(row.tenant, tenant):
        raise NotFound(f"no dataset with id {dataset_id!r}; list them at GET /v1/datasets")
    return row


def get_own(session: Session, dataset_id: str, tenant: str | None) -> DatasetRow:
    """The dataset, to change it: ``Forbidden`` for a shared one."""
    row = get(session, dataset_id, tenant)
    can_change(row.tenant, tenant, f"dataset {row.name!r}")
    return row


def list_datasets(session: Session, tenant: str | None) -> list[DatasetRow]:
    query = select(DatasetRow).where(visible(DatasetRow.tenant, tenant))
    return list(session.scalars(query.order_by(*ORDER.clauses)))


def page(
    session: Session,
    tenant: str | None,
    limit: int,
    cursor: str | None,
    *,
    content_hash: str | None = None,
) -> pages.Page[DatasetRow]:
    """Newest first; ``content_hash`` finds the dataset holding that content, if any."""
    query = select(DatasetRow).where(visible(DatasetRow.tenant, tenant))
    if content_hash is not None:
        query = query.where(DatasetRow.content_hash == content_hash)
    return pages.fetch(session, query, ORDER, limit, cursor)


def next_run(schedule: str, after: datetime) -> datetime | None:
    """The first time after ``after`` that the cron expression ``schedule`` fires, or None
    when it never does: '0 0 31 2 *' is well-formed but names a date that does not exist."""
    from croniter import CroniterError, croniter

    try:
        return croniter(schedule, after).get_next(datetime)  # type: ignore[no-any-return]
    except (CroniterError, ValueError):
        return None


def check_schedule(schedule: str) -> str:
    """``schedule`` as stored: a 5-field cron expression (minute hour day month weekday) that
    fires at some time, or ``Invalid`` saying what is wrong with it."""
    from croniter import croniter

    expr = " ".join(schedule.split())
    example = "e.g. '0 3 * * *': daily at 03:00"
    if len(expr.split()) != 5 or not croniter.is_valid(expr):
        raise Invalid(
            f"{schedule!r} is not a 5-field cron expression (minute hour day month weekday; "
            f"{example})"
        )
    if next_run(expr, now()) is None:
        raise Invalid(
            f"{schedule!r} never fires: it names no date that exists (such as 31 February); "
            f"{example}"
        )
    return expr


def set_schedule(
    session: Session, dataset_id: str, schedule: str | None, tenant: str | None
) -> DatasetRow:
    """Set (or with None clear) a dataset's cron schedule for re-ranking."""
    row = get_own(session, dataset_id, tenant)
    row.schedule = None if schedule is None else check_schedule(schedule)
    return row


def delete(session: Session, dataset_id: str, tenant: str | None) -> None:
    row = get_own(session, dataset_id, tenant)
    session.delete(row)
    session.flush()
    if not row.reference:  # an imported table's dataset has no files
        shutil.rmtree(Path(row.path).parent, ignore_errors=True)
