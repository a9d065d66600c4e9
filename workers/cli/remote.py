"""``transferbench rank DATASET --server URL`` (and ``finetune ... --server URL``): the same
ranking (or fine-tuning), computed by a service.

The dataset is read and validated here first (so a bad one fails before any upload) and
looked up on the server by its content hash; only a dataset the server lacks is uploaded: a
file as it is, a folder zipped on the fly, a built-in (subsampled here, as the local command
does) or an image manifest exported to a zip of class folders. The server's progress feeds
the bar, and the result prints exactly as the local command prints its own. ``rank --verify K``
asks the service to fine-tune the top K after scoring (``verify`` on ``POST /v1/rankings``);
``finetune`` starts ``POST /v1/finetunes``; both show a bar per model from the job's runs.
"""

from __future__ import annotations

import argparse
import csv
import io
import sys
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from app.client import Client, Dataset, FineTune, Model, Ranking, TransferbenchError
from workers.cli import verify
from workers.cli.exits import EXIT_BAD_INPUT, EXIT_MODEL_FAILED
from workers.cli.exits import err as _err
from workers.cli.report import emit
from workers.pipeline.datasets import BUILTINS, open_dataset
from workers.pipeline.datasets import Dataset as LocalDataset
from workers.pipeline.datasets.archive import read_member
from workers.pipeline.datasets.images import ArrayImage, FileImage, ZipImage
from workers.pipeline.ranking import RankedModel

#: options of the local pipeline that a server decides for itself
LOCAL_ONLY = {"save_features": "--save-features", "batch_size": "--batch-size"}


def run(args: argparse.Namespace, server: str, api_key: str | None) -> int:
    """Rank ``args.dataset`` on ``server`` and print it like ``_cmd_rank``. The server's
    errors (and an unreachable server) print one line, in the command's own terms, and
    return 2; a ranking in which a model failed prints the others' results and returns 1,
    as does a ranking that failed as a whole."""
    try:
        return _run(args, server, api_key)
    except TransferbenchError as exc:
        _err(_for_the_shell(exc, server, api_key))
        return EXIT_MODEL_FAILED if exc.title == "Ranking failed" else EXIT_BAD_INPUT


def _for_the_shell(exc: TransferbenchError, server: str, api_key: str | None) -> str:
    """The error as a user of this command acts on it: the server's refusal of a missing or
    wrong API key names ``--api-key`` and ``TB_API_KEY``, not the HTTP header."""
    if exc.status != 401:
        return exc.detail
    if not api_key:
        return (
            f"the server at {server} needs an API key: give --api-key KEY or set TB_API_KEY "
            "(its operator creates one with `transferbench apikey create NAME --tenant TENANT`)"
        )
    return (
        f"the server at {server} refused the API key given by --api-key or TB_API_KEY "
        f"({exc.detail}); check the key, or ask the server's operator for a new one"
    )


def _run(args: argparse.Namespace, server: str, api_key: str | None) -> int:
    for option, flag in LOCAL_ONLY.items():
        if getattr(args, option) is not None:
            raise TransferbenchError(f"{flag} applies to local ranking only; drop it or --server")
    if args.no_cache:
        raise TransferbenchError("--no-cache applies to local ranking only; drop it or --server")
    checking = verify.request(args)
    with Client(server, api_key=api_key) as tb, tempfile.TemporaryDirectory() as tmp:
        if args.models is not None:
            _check_models(args.models, tb.models(), server)  # before any upload
        dataset, per_class = _dataset_on(tb, args, Path(tmp))
        layers = getattr(args, "layers", "last")
        started = tb.rank(
            dataset,
            args.models,
            args.metrics,
            per_class=per_class,
            wait=False,
            layers=layers if isinstance(layers, str) else list(layers),
            layer_mean=bool(getattr(args, "layer_mean", False)),
            verify=checking,
        )
        ranking = tb.wait(started, progress=not args.quiet, verification=False)
        n = max((p.samples_total for p in ranking.progress), default=dataset.n_samples)
        title, rows = f"{dataset.name} (N={n})", _rows(ranking)
        failed = any(p.status == "failed" for p in ranking.progress)
        if checking is None or args.format != "json":  # JSON waits to carry the verification
            emit(rows, ranking.metrics, args, title, ranking.recommendation)
        if checking is None:
            return EXIT_MODEL_FAILED if failed else 0
        sys.stdout.flush()  # the ranking shows while the server fine-tunes
        ranking = tb.wait(ranking, progress=not args.quiet)  # now its fine-tuning too
        checked = ranking.verification
        job = tb.finetune_job(checked.finetune_id) if checked and checked.finetune_id else None
    if job is None:  # nothing was fine-tuned: the service says why
        reason = checked.error if checked else None
        _err(f"--verify: nothing was fine-tuned: {reason or 'the server did not verify'}")
        if args.format == "json":
            emit(rows, ranking.metrics, args, title, ranking.recommendation)
        return EXIT_MODEL_FAILED
    summary = verify.from_server(job)
    for c in summary["candidates"]:
        if c["error"]:
            _err(f"{c['model']}: fine-tuning failed: {c['error']}")
    stored = [c["model"] for c in summary["candidates"] if c["top1"] is not None]
    if stored:
        print(f"the server stored {len(stored)} fine-tuning outcome(s) (finetune_top1) for "
              f"dataset {dataset.id}; its recommender refits", file=sys.stderr)  # fmt: skip
    if job.status != "done":
        _err(f"fine-tuning job {job.id} {job.status}: {job.error or 'no reason was recorded'}")
    if args.format == "json":
        outcomes = {
            "dataset_id": dataset.id,
            "stored": stored,
            "not_stored": {c["model"]: c["error"] for c in summary["candidates"] if c["error"]},
        }
        extra = {"verification": {**summary, "outcomes": outcomes}}
        emit(rows, ranking.metrics, args, title, ranking.recommendation, extra)
    else:  # where the closing line went: after a table on stdout, else on stderr
        on_stdout = not args.output and args.format == "table"
        text = verify.block(summary, where=f"on the server at {server}")
        print(text, end="", file=sys.stdout if on_stdout else sys.stderr)
    failed = failed or job.status != "done" or any(c["error"] for c in summary["candidates"])
    return EXIT_MODEL_FAILED if failed else 0


def run_finetune(
    args: argparse.Namespace,
    server: str,
    api_key: str | None,
    show: Callable[[list[dict[str, Any]], str], None],
) -> int:
    """``transferbench finetune ... --server URL``: the service fine-tunes each model on its
    workers (``POST /v1/finetunes``), a bar per model shows its steps, and ``show`` prints the
    rows (and a title) as the local command prints its own. Exit 1 when a model (or the job)
    failed, 2 for bad input or a refusal by the server."""
    try:
        return _finetune(args, server, api_key, show)
    except TransferbenchError as exc:
        _err(_for_the_shell(exc, server, api_key))
        return EXIT_BAD_INPUT


def _finetune(
    args: argparse.Namespace,
    server: str,
    api_key: str | None,
    show: Callable[[list[dict[str, Any]], str], None],
) -> int:
    if args.device is not None:
        raise TransferbenchError(
            "--device applies to local fine-tuning only; the server's workers use their own "
            "(TB_DEVICE there): drop --device"
        )
    recipe: dict[str, object] = {
        "mode": "head" if args.head_only else "full",
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "seed": args.seed,
        "validation": args.validation,
    }
    given = (("time_budget_s", args.time_budget), ("learning_rate", args.lr),
             ("weight_decay", args.weight_decay))  # fmt: skip
    recipe |= {k: v for k, v in given if v is not None}
    with Client(server, api_key=api_key) as tb, tempfile.TemporaryDirectory() as tmp:
        _check_models(args.models, tb.models(), server)  # before any upload
        dataset, per_class = _dataset_on(tb, args, Path(tmp), seeded_there=True)
        started = tb.finetune(dataset, args.models, recipe=recipe, per_class=per_class, wait=False)
        if not args.quiet:
            print(f"fine-tuning job {started.id} on {tb.url}", file=sys.stderr)
        try:
            job = tb.wait_finetune(started, progress=not args.quiet)
        except TransferbenchError as exc:
            ended = exc.extra.get("finetune")
            if not isinstance(ended, FineTune):
                raise
            job = ended  # failed or cancelled: what it measured still prints
            _err(exc.detail)
    rows = finetune_rows(job)
    for row in rows:
        if row["error"]:
            _err(f"{row['model']}: failed: {row['error']}")
    n = next((r["n_train"] + r["n_validation"] for r in rows if r["n_train"]), None)
    show(rows, f"{dataset.name} (N={n if n is not None else dataset.n_samples})")
    failed = job.status != "done" or any(row["error"] for row in rows)
    return EXIT_MODEL_FAILED if failed else 0


def finetune_rows(job: FineTune) -> list[dict[str, Any]]:
    """A fine-tuning job's models, in the order asked, as the rows the local ``finetune``
    prints (``FineTuneResult.to_dict()``'s keys; ``recipe``: the fields the job was given and
    its held-out ``split``; a model that never ran has no numbers, only its ``error``)."""
    last: dict[str, Any] = {}
    for run in sorted(job.runs, key=lambda r: r.round):
        last[run.model] = run
    mode, seed = job.recipe.get("mode", "full"), job.recipe.get("seed", 0)
    rows = []
    for name, run in last.items():
        error = run.error
        if error is None and run.status != "done":
            error = f"{run.status} ({job.error or 'the job ended first'})"
        rows.append(
            {
                "model": name,
                "top1": run.top1 if run.status == "done" else None,
                "epochs": run.epoch,
                "seconds": run.seconds if run.seconds is not None else run.elapsed_s or 0.0,
                "device": run.device,
                "mode": mode,
                "seed": seed,
                "n_train": run.n_train or 0,
                "n_validation": run.n_validation or 0,
                "train_loss": list(run.train_loss),
                "val_top1": list(run.val_top1),
                "recipe": {**job.recipe, "split": job.held_out},
                "micro_batch": None,
                "accumulation": None,
                "error": error,
            }
        )
    return rows


def _check_models(wanted: list[str], known: list[Model], server: str) -> None:
    """Refuse ``--models`` naming a model the server does not have, listing those it has."""
    keys = {m.name for m in known} | {m.id for m in known}
    missing = [m for m in wanted if m not in keys]
    if missing:
        ready = sorted(  # not an imported table's models: they have no weights to run
            {m.name for m in known if m.status == "ready" and m.modality
             and "reference" not in m.source}
        )  # fmt: skip
        raise TransferbenchError(
            f"--models: the server at {server} has no model {', '.join(map(repr, missing))}; "
            f"it has {', '.join(ready) or 'none ready yet'} (or drop --models to rank with "
            "every model it has for the dataset)"
        )


def _rows(ranking: Ranking) -> list[RankedModel]:
    """The server's results as the local command's rows; why a metric is missing goes to
    stderr once, as locally."""
    progress = {p.model_id: p for p in ranking.progress}
    rows = []
    for result in ranking.results or []:
        state = progress.get(result.model_id)
        if state and state.error:
            _err(f"{result.model}: failed: {state.error}")
        errors = dict(state.errors) if state else {}
        for metric, reason in errors.items():
            _err(f"{result.model}: {metric} not computed: {reason}")
        error = state.error if state else None
        rows.append(
            RankedModel(
                result.model, result.rank, dict(result.scores), errors, error,
                result.layers, result.layer, result.best_layer,
            )
        )  # fmt: skip
    return rows


def _dataset_on(
    tb: Client, args: argparse.Namespace, tmp: Path, *, seeded_there: bool = False
) -> tuple[Dataset, int | None]:
    """The server's dataset for ``args.dataset`` (uploaded if it lacks it), and the
    per-class cap the server should still apply (``seeded_there``: with the seed the request
    carries, as fine-tuning does; a ranking subsamples with seed 0)."""
    spec: str = args.dataset
    per_class: int | None = args.per_class
    tags = getattr(args, "tags", None)
    if spec in BUILTINS:  # subsampled here, with the local command's defaults and seed
        builtin = BUILTINS[spec]
        local = open_dataset(spec, tags=tags)  # a built-in: refuses --tags, as locally
        cap = per_class or builtin.default_per_class
        if cap:
            local = local.subsample(cap, args.seed or 0)
        upload, per_class = _export(local, tmp), None
    elif not Path(spec).expanduser().exists() and _looks_like_id(spec):
        try:
            return tb.dataset(spec), per_class
        except TransferbenchError as exc:
            if exc.status != 404:
                raise
            raise TransferbenchError(
                f"{spec}: no such file or folder here, and no dataset with this id on the "
                f"server at {tb.url}; give the dataset's file or folder to upload it"
            ) from exc
    else:
        if args.seed and not seeded_there:
            raise TransferbenchError(
                "--seed: the server subsamples --per-class with seed 0; drop --seed, or rank "
                "locally (without --server)"
            )
        upload = Path(spec).expanduser()
        local = open_dataset(str(upload), tags=tags)  # validates here, before any upload
        if upload.is_file() and local.modality == "image" and upload.suffix.lower() != ".zip":
            upload = _export(local, tmp)  # a manifest: its images must travel with it
    # the hash the server will compute: of the file it gets, where that is not the original
    digest = local.content_hash if upload.parent != tmp else open_dataset(str(upload)).content_hash
    found = tb.find_dataset(digest)
    if found is None:
        if not args.quiet:
            print(f"uploading {local.name} ({len(local)} samples) to {tb.url}", file=sys.stderr)
        found = tb.upload_dataset(upload, name=local.name, tags=tags)
    return found, per_class


def _looks_like_id(spec: str) -> bool:
    return len(spec) == 32 and all(c in "0123456789abcdef" for c in spec)


def _export(dataset: LocalDataset, tmp: Path) -> Path:
    """A file the server can read holding ``dataset``: text as ``text,label`` CSV, images as a
    zip of ``<class>/<image>`` (a class name's slashes become underscores)."""
    if dataset.modality == "text":
        path = tmp / "dataset.csv"
        with path.open("w", newline="", encoding="utf-8") as out:
            writer = csv.writer(out)
            writer.writerow(["text", "label"])
            writer.writerows(zip(dataset.samples, dataset.labels.tolist(), strict=True))
        return path
    if dataset.modality != "image" or dataset.target != "classification":
        raise TransferbenchError(
            f"{dataset.origin or dataset.name}: only class-labelled image, text and feature "
            "datasets can be uploaded; give the file itself, or rank locally"
        )
    path = tmp / "dataset.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        for i, (sample, label) in enumerate(zip(dataset.samples, dataset.labels, strict=True)):
            name, data = _image_bytes(sample)
            folder = str(label).replace("/", "_").replace("\\", "_").lstrip(".") or "_"
            z.writestr(f"{folder}/{i:06d}{Path(name).suffix.lower()}", data)
    return path


def _image_bytes(sample: object) -> tuple[str, bytes]:
    """(a file name, the image's bytes): a file's own bytes, or an array encoded as PNG."""
    if isinstance(sample, FileImage):
        return sample.path.name, sample.path.read_bytes()
    if isinstance(sample, ZipImage):
        return sample.member, read_member(sample.archive, sample.member)
    if isinstance(sample, ArrayImage):
        from PIL import Image

        buffer = io.BytesIO()
        Image.fromarray(sample.pixels).save(buffer, format="PNG")
        return "image.png", buffer.getvalue()
    raise TransferbenchError(f"cannot upload a sample of type {type(sample).__name__}")
