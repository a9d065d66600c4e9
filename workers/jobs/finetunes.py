"""The step of a fine-tuning job: train one run (one model, one round) on the job's dataset,
report its progress and per-epoch curve as it goes, store what it reached on the held-out
samples as an outcome of the dataset, and move the job on (``app.lifecycle.round_over``).

Like the ranking steps (``workers.jobs.steps``) it is idempotent and claims its run first:
a task that arrives twice (a re-delivery after its worker died, the scheduler's re-send) is
trained once at a time. A run found ``training`` by a new delivery lost its worker: it trains
again from the start (the same recipe and seed), at most ``MAX_ATTEMPTS`` times, then fails
with the reason. Its outcome is written once, when it ends done, as an upsert: never two.

The run stops at its next optimiser step when its job is cancelled or deleted, or when the
job's time (``TB_JOB_TIMEOUT_S`` from its creation) runs out.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import select
from sqlalchemy.exc import OperationalError

from app.db.models import DatasetRow, FineTuneJobRow, FineTuneRunRow, ModelRow, now
from app.lifecycle import (
    METHOD_HALVING,
    FineTuneStatus,
    RunStatus,
    Task,
    defer,
    move_finetune,
    move_run,
    round_over,
)
from app.services import outcomes
from workers.pipeline import remote_sources
from workers.pipeline.errors import PipelineError

if TYPE_CHECKING:
    from torch import nn

    from workers.jobs.steps import JobRunner

log = logging.getLogger("transferbench.worker")

#: deliveries of one run (its worker died each time) before it fails instead
MAX_ATTEMPTS = 3
#: the outcome measure fine-tuning stores (as ``transferbench outcomes add`` does by default)
MEASURE = "finetune_top1"
#: seconds between two looks at the database for a cancellation, and two progress writes
POLL_S = 1.0


class FineTuneSteps:
    """Fine-tuning on a runner's database, settings, queue and claims."""

    def __init__(self, runner: JobRunner) -> None:
        self.runner = runner
        self.db, self.settings, self.queue = runner.db, runner.settings, runner.queue
        self._models: dict[str, Any] = {}

    def run(self, run_id: int) -> None:
        """Train one run, or nothing when another worker is training it now."""
        with self.runner.claims.claim(Task.FINETUNE, "finetune", str(run_id)) as mine:
            if mine:
                self._run(int(run_id))
            else:
                log.info("fine-tuning run %s is being trained elsewhere; skipped", run_id)

    def _run(self, run_id: int) -> None:
        with self.db.session() as s:
            run = s.get(FineTuneRunRow, run_id, with_for_update=True)
            if run is None or RunStatus(run.status).terminal:
                return
            job = run.job
            if FineTuneStatus(job.status).terminal:  # cancelled or expired meanwhile
                move_run(run, RunStatus.CANCELLED)
                return
            if run.attempts >= MAX_ATTEMPTS:
                move_run(run, RunStatus.FAILED)
                run.error = (
                    f"the worker training it stopped {run.attempts} times before it finished "
                    "(killed, or out of host memory); fine-tune it head-only, with a smaller "
                    "batch, or on a larger worker"
                )
                round_over(s, self.queue, job.id)
                return
            if job.status == FineTuneStatus.QUEUED:
                move_finetune(job, FineTuneStatus.RUNNING)
            move_run(run, RunStatus.TRAINING)
            run.attempts += 1
            run.step, run.train_loss, run.val_top1 = 0, [], []
            dataset = s.get(DatasetRow, job.dataset_id)
            model = s.get(ModelRow, run.model_id)
            if dataset is None or model is None:
                return
            plan: dict[str, Any] = {
                "job_id": job.id,
                "model_id": model.id,
                "model": model.name,
                "source": dict(model.source),
                "fingerprint": model.fingerprint,
                "path": dataset.path,
                "dataset_id": dataset.id,
                "per_class": job.per_class,
                "recipe": {**job.recipe, "epochs": run.epochs},
                "budget": int(job.recipe["epochs"]),
                "method": job.method,
                "keep_weights": job.keep_weights,
                "round": run.round,
                "position": run.position,
                "deadline": job.created_at + timedelta(seconds=self.settings.job_timeout_s),
            }
        unloadable = self.runner._await_registration(plan["model_id"])
        if unloadable is not None:
            self._end(run_id, error=unloadable)
            return
        try:
            result, weights = self._train(run_id, plan)
        except Exception as exc:  # any reason at all: this model's, not the job's
            from workers.pipeline.finetune import Stopped

            if isinstance(exc, Stopped) and not self._wanted(run_id):
                return  # cancelled: the run says so already
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            self._end(run_id, error=reason)
            return
        self._end(run_id, result=result, weights=weights, plan=plan)

    # -- training ----------------------------------------------------------------------
    def _train(self, run_id: int, plan: dict[str, Any]) -> tuple[dict[str, Any], Path | None]:
        from workers.pipeline.finetune import (
            FineTuneRecipe,
            Limits,
            finetune_model,
            open_for_finetune,
            stratified_split,
        )
        from workers.pipeline.runtime import configure, resolve_device

        recipe = FineTuneRecipe(**plan["recipe"])
        configure(self.settings.num_threads)
        device = resolve_device(self.settings.device)
        spec = self.runner.loadable(plan["source"])
        model = self._load(spec, str(device))
        if model.fingerprint != plan["fingerprint"]:
            raise PipelineError(
                f"the weights of {plan['model']} changed since it was registered (fingerprint "
                "mismatch); register it again under a new name"
            )
        dataset, split = open_for_finetune(plan["path"], plan["per_class"], recipe.seed)
        if split is None:
            split = stratified_split(
                dataset.labels, dataset.digests, recipe.validation, recipe.seed
            )
        left = (plan["deadline"] - now()).total_seconds()
        limits = Limits(should_stop=self._stop_check(run_id), deadline=time.monotonic() + left)
        kept: list[Path] = []

        def keep(net: nn.Module, classes: list[str]) -> None:
            if plan["keep_weights"] and self._keeps(plan):
                kept.append(self._save(run_id, plan, spec, net, classes))

        with dataset:  # trained: no handle on the upload outlives the run
            result = finetune_model(
                model, dataset, split, recipe, device=device, precision=self.settings.precision,
                limits=limits, progress=self._progress(run_id), epoch_done=self._epoch(run_id),
                trained=keep,
            )  # fmt: skip
        result.model = plan["model"]
        weights: Path | None = kept[0] if kept else None
        return result.to_dict(), weights

    def _load(self, spec: str, device: str) -> Any:
        """The model on PyTorch (training needs the module itself, not an ONNX export), kept
        for the life of the worker process."""
        from workers.pipeline.models.zoo import load_model

        if spec not in self._models:
            settings = self.settings.model_copy(update={"runtime": "torch", "device": device})
            self._models[spec] = load_model(spec, settings)
        return self._models[spec]

    @staticmethod
    def _keeps(plan: dict[str, Any]) -> bool:
        """Whether this run's weights are kept: every model of an ``each`` job; in successive
        halving, only runs of the full budget (the winner's is one of them; the others are
        removed when the job ends)."""
        return bool(plan["method"] != METHOD_HALVING or plan["recipe"]["epochs"] == plan["budget"])

    def _save(
        self, run_id: int, plan: dict[str, Any], spec: str, net: nn.Module, classes: list[str]
    ) -> Path:
        """The fine-tuned weights, in one ``torch.save`` file: ``state_dict``, the backbone's
        weights under its source architecture's own names (``statedict:FILE?arch=...`` loads
        them for a torchvision model), ``head`` (the new linear layer's ``weight`` and
        ``bias``), ``classes`` (the head's outputs, in order) and ``source``."""
        import torch

        backbone: Any = net.backbone
        inner: Any = getattr(backbone, "module", backbone)  # a tapped image model: its module
        head: Any = net.head
        payload = {
            "format": "transferbench-finetuned/1",
            "source": spec,
            "classes": classes,
            "state_dict": {k: v.detach().cpu() for k, v in inner.state_dict().items()},
            "head": {k: v.detach().cpu() for k, v in head.state_dict().items()},
        }
        folder: Path = self.settings.data_dir / "finetuned" / str(plan["job_id"])
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{run_id}.pt"
        partial = path.with_suffix(".partial")
        torch.save(payload, partial)
        partial.replace(path)
        return path

    # -- reporting ---------------------------------------------------------------------
    def _progress(self, run_id: int) -> Callable[[str, int, int], None]:
        last = [0.0]

        def progress(_: str, done: int, total: int) -> None:
            t = time.monotonic()
            if t - last[0] < POLL_S and done < total:
                return
            last[0] = t
            self._update(run_id, step=done, steps_total=total)

        return progress

    def _epoch(self, run_id: int) -> Callable[[int, float, float], None]:
        def epoch_done(epoch: int, loss: float, top1: float) -> None:
            # best effort, as progress is: a database blip must not fail the run (the curves
            # are a view of it; the run's result carries them whole when it ends)
            try:
                with self.db.session() as s:
                    run = s.get(FineTuneRunRow, run_id)
                    if run is not None and run.status == RunStatus.TRAINING:
                        run.train_loss = [*run.train_loss, loss]
                        run.val_top1 = [*run.val_top1, top1]
                        run.heartbeat_at = now()
            except OperationalError as exc:
                log.warning("fine-tuning run %s: epoch %s not recorded: %s", run_id, epoch, exc)

        return epoch_done

    def _update(self, run_id: int, **fields: Any) -> None:
        """Progress and the heartbeat, best effort (a database restart does not cost the run)."""
        try:
            with self.db.session() as s:
                run = s.get(FineTuneRunRow, run_id)
                if run is None or run.status != RunStatus.TRAINING:
                    return
                for k, v in fields.items():
                    setattr(run, k, v)
                run.heartbeat_at = now()
        except OperationalError as exc:
            log.warning("fine-tuning run %s: progress not recorded: %s", run_id, exc)

    def _stop_check(self, run_id: int) -> Callable[[], bool]:
        """Asked before every step: True once the run is no longer wanted (looked up at most
        once a second)."""
        state = {"at": 0.0, "stop": False}

        def should_stop() -> bool:
            t = time.monotonic()
            if not state["stop"] and t - float(state["at"]) >= POLL_S:
                state["at"] = t
                with contextlib.suppress(OperationalError):  # the database is away: ask later
                    state["stop"] = not self._wanted(run_id)
            return bool(state["stop"])

        return should_stop

    def _wanted(self, run_id: int) -> bool:
        with self.db.session() as s:
            row = s.execute(
                select(FineTuneRunRow.status, FineTuneJobRow.status)
                .join(FineTuneJobRow, FineTuneJobRow.id == FineTuneRunRow.job_id)
                .where(FineTuneRunRow.id == run_id)
            ).first()
        return (
            row is not None and row[0] == RunStatus.TRAINING and not FineTuneStatus(row[1]).terminal
        )

    # -- the end of a run --------------------------------------------------------------
    def _end(
        self,
        run_id: int,
        *,
        error: str | None = None,
        result: dict[str, Any] | None = None,
        weights: Path | None = None,
        plan: dict[str, Any] | None = None,
    ) -> None:
        """Close the run: done with its measurement (stored as an outcome, the recommender
        refits) or failed with the reason; then move its job on."""
        with self.db.session() as s:
            # the job first, then the run: the order a cancel (and round_over) takes them in;
            # the run first deadlocked with a cancel, and one side's transaction was lost
            job_id = s.scalar(select(FineTuneRunRow.job_id).where(FineTuneRunRow.id == run_id))
            if job_id is not None:
                s.get(FineTuneJobRow, job_id, with_for_update=True)
            run = s.get(FineTuneRunRow, run_id, with_for_update=True)
            if run is None or RunStatus(run.status) is not RunStatus.TRAINING:
                if weights is not None:  # cancelled meanwhile: nobody will download them
                    weights.unlink(missing_ok=True)
                return
            job_id = run.job_id
            if result is None:
                log.warning("fine-tuning run %s (job %s) failed: %s", run_id, job_id, error)
                move_run(run, RunStatus.FAILED)
                run.error = remote_sources.redact(
                    error or "failed",
                    (str(self.settings.model_dir or ""), "$TB_MODEL_DIR"),
                    (str(self.settings.data_dir), "$TB_DATA_DIR"),
                )
            else:
                assert plan is not None
                move_run(run, RunStatus.DONE)
                run.top1, run.result = result["top1"], result
                run.train_loss, run.val_top1 = result["train_loss"], result["val_top1"]
                run.step = run.steps_total = max(run.steps_total, run.step)
                if weights is not None:
                    run.weights_path, run.weights_bytes = str(weights), weights.stat().st_size
                outcomes.store(s, [_outcome(plan, result)], runs=True)
                defer(s, self.queue, Task.REFIT_RECOMMENDER)
            if round_over(s, self.queue, job_id) is not None:
                self._drop_losers(s, job_id)

    def _drop_losers(self, session: Any, job_id: str) -> None:
        """A finished halving keeps the winner's weights only."""
        job = session.get(FineTuneJobRow, job_id)
        if job is None or job.method != METHOD_HALVING or not job.keep_weights:
            return
        winner = (job.result or {}).get("winner")
        for run in job.runs:
            if run.weights_path and (run.model_id != winner or run.round != _last(job, winner)):
                Path(run.weights_path).unlink(missing_ok=True)
                run.weights_path, run.weights_bytes = None, 0


def _last(job: FineTuneJobRow, model_id: str | None) -> int:
    return max((r.round for r in job.runs if r.model_id == model_id), default=0)


def _outcome(plan: dict[str, Any], result: dict[str, Any]) -> dict[str, Any]:
    """The run's measurement as an outcome row of the dataset: the held-out top-1, with the
    recipe, epochs, seconds, device and seed as its details, its standard error, and the job
    that measured it."""
    from workers.pipeline.finetune.recipe import top1_outcome

    details = {
        "recipe": result["recipe"],
        "epochs": result["epochs"],
        "seconds": result["seconds"],
        "device": result["device"],
        "seed": result["seed"],
        "n_train": result["n_train"],
        "n_validation": result["n_validation"],
        "finetune_id": plan["job_id"],
    }
    value, se = top1_outcome(float(result["top1"]), int(result["n_validation"]))
    if se is not None:
        details["se"] = se
    if plan["method"] == METHOD_HALVING:
        details["verification"] = {
            "method": "successive halving",
            "round": plan["round"],
            "budget_epochs": plan["budget"],
            "predicted_rank": plan["position"] + 1,
        }
    return {
        "dataset_id": plan["dataset_id"],
        "model_id": plan["model_id"],
        "measure": MEASURE,
        "value": value,
        "higher_is_better": True,
        "details": details,
        "created_at": now(),
    }
