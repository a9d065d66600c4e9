"""Uploading a target dataset: stream to disk under a cap, validate with the pipeline's
readers (which need no torch), and store it once per content hash."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path, PurePath

import numpy as np
from fastapi import UploadFile
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.db.models import DatasetRow
from app.errors import Invalid, NotFound, TooLarge
from app.services import pages
from workers.settings import Settings

CHUNK = 1 << 20
SUFFIXES = (".zip", ".csv", ".jsonl", ".npz", ".npy", ".parquet")
#: newest first
ORDER = pages.Order("datasets", ((DatasetRow.created_at, True), (DatasetRow.id, True)))


def _suffix(filename: str) -> str:
    name = PurePath(filename).name.lower()
    for suffix in SUFFIXES:
        if name.endswith(suffix):
            return suffix
    raise Invalid(
        f"cannot tell the format of {filename!r}: upload a .zip of images (one folder per "
        "class, or images plus a manifest), a .csv/.jsonl table, or .npz/.npy/.parquet features"
    )


async def save_upload(upload: UploadFile, settings: Settings) -> Path:
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
    name: str,
    modality: str | None,
    task: str | None,
) -> tuple[DatasetRow, bool]:
    """Validate the saved file and store it; returns (row, created). Same content, same row."""
    from workers.pipeline.datasets import open_dataset
    from workers.pipeline.errors import PipelineError

    try:
        dataset = open_dataset(str(tmp))
        dataset.validate()
    except PipelineError as exc:
        tmp.unlink(missing_ok=True)
        raise Invalid(str(exc).replace(str(tmp), "the upload")) from exc
    if modality and modality != dataset.modality:
        tmp.unlink(missing_ok=True)
        raise Invalid(
            f"modality={modality!r} was given, but the upload holds {dataset.modality} data"
        )
    if task and task != dataset.target:
        tmp.unlink(missing_ok=True)
        raise Invalid(f"task={task!r} was given, but the upload's labels make it {dataset.target}")
    digest = dataset.content_hash
    existing = session.scalar(select(DatasetRow).where(DatasetRow.content_hash == digest))
    if existing is not None:
        tmp.unlink(missing_ok=True)
        return existing, False
    final_dir = settings.datasets_dir / digest
    final_dir.mkdir(parents=True, exist_ok=True)
    final = final_dir / f"data{tmp.suffix}"
    os.replace(tmp, final)
    classes: list[dict[str, object]] = []
    if dataset.target == "classification":
        names, counts = np.unique(dataset.labels, return_counts=True)
        classes = [{"name": str(c), "count": int(k)} for c, k in zip(names, counts, strict=True)]
    row = DatasetRow(
        name=name,
        modality=dataset.modality,
        task=dataset.target,
        content_hash=digest,
        n_samples=len(dataset),
        classes=classes,
        path=str(final),
    )
    session.add(row)
    session.flush()
    return row, True


def get(session: Session, dataset_id: str) -> DatasetRow:
    row = session.get(DatasetRow, dataset_id)
    if row is None:
        raise NotFound(f"no dataset with id {dataset_id!r}; list them at GET /v1/datasets")
    return row


def list_datasets(session: Session) -> list[DatasetRow]:
    return list(session.scalars(select(DatasetRow).order_by(*ORDER.clauses)))


def page(
    session: Session, limit: int, cursor: str | None, *, content_hash: str | None = None
) -> pages.Page[DatasetRow]:
    """Newest first; ``content_hash`` finds the dataset holding that content, if any."""
    query = select(DatasetRow)
    if content_hash is not None:
        query = query.where(DatasetRow.content_hash == content_hash)
    return pages.fetch(session, query, ORDER, limit, cursor)


def set_schedule(session: Session, dataset_id: str, schedule: str | None) -> DatasetRow:
    """Set (or with None clear) a dataset's cron schedule for re-ranking."""
    from croniter import croniter

    row = get(session, dataset_id)
    if schedule is not None and not croniter.is_valid(schedule):
        raise Invalid(f"{schedule!r} is not a cron expression (e.g. '0 3 * * *': daily at 03:00)")
    row.schedule = schedule
    return row


def delete(session: Session, dataset_id: str) -> None:
    row = get(session, dataset_id)
    session.delete(row)
    session.flush()
    if not row.reference:  # an imported table's dataset has no files
        shutil.rmtree(Path(row.path).parent, ignore_errors=True)
