"""``transferbench rank DATASET --verify K [--epochs N] [--head-only]``: after ranking, check the
answer by fine-tuning the top ``K`` of the recommended order here, by successive halving
(:mod:`workers.pipeline.finetune.verify`), store each measured top-1 as an outcome of the
dataset (as ``transferbench outcomes add`` would, so the recommender refits), and say whether
the measured winner is the predicted first. With ``--server`` the service does the same on its
workers (``verify`` on ``POST /v1/rankings``): :func:`request` is what it is asked, and
:func:`from_server` reads its fine-tuning job back into the summary :func:`block` prints."""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from workers.cli.exits import err as _err
from workers.cli.report import number
from workers.pipeline.errors import PipelineError
from workers.settings import Settings

if TYPE_CHECKING:
    from app.client import FineTune
    from workers.pipeline.datasets import Dataset
    from workers.pipeline.finetune import FineTuneRecipe, Split
    from workers.pipeline.finetune.verify import Verification
    from workers.pipeline.ranking import RankedModel

#: the fine-tuning budget when --verify is given without --epochs (the recipe's default)
DEFAULT_EPOCHS = 3


def add_arguments(rank: argparse.ArgumentParser) -> None:
    """The ``rank`` subcommand's verification flags."""
    rank.add_argument(
        "--verify",
        type=int,
        metavar="K",
        help="then fine-tune the top K here by successive halving, store what they reach as "
        "outcomes, and say whether the predicted first won",
    )
    rank.add_argument("--epochs", type=int,
                      help=f"--verify's budget: epochs the winner trains for (default "
                      f"{DEFAULT_EPOCHS}); the first rounds get fewer")  # fmt: skip
    rank.add_argument("--head-only", action="store_true",
                      help="--verify trains a new head on frozen backbones (cheaper)")  # fmt: skip


@dataclass
class Plan:
    """What ``--verify`` will fine-tune on, opened before the ranking so bad input fails
    before minutes of scoring: the dataset as fine-tuning reads it, its split when the
    manifest brings one, and the recipe."""

    k: int
    dataset: Dataset
    split: Split | None
    recipe: FineTuneRecipe


def plan(args: argparse.Namespace, server: str | None) -> Plan | None:
    """The verification ``args`` ask for (None: no ``--verify``, or a ``server`` verifies);
    raises PipelineError for flags that cannot be honoured, saying what to do instead."""
    if args.verify is None:
        for flag, given in (("--epochs", args.epochs is not None), ("--head-only", args.head_only)):
            if given:
                raise PipelineError(
                    f"{flag} sets how --verify fine-tunes and does nothing without it; add "
                    "--verify K to fine-tune the top K, or drop it"
                )
        return None
    if args.verify < 1:
        raise PipelineError(f"--verify K needs K >= 1 models to fine-tune, got {args.verify}")
    if args.epochs is not None and args.epochs < 1:
        raise PipelineError(f"--epochs needs at least 1 epoch, got {args.epochs}")
    if server:
        return None  # the server fine-tunes: ``remote.run`` sends it ``request(args)``
    from workers.pipeline.finetune import FineTuneRecipe, open_for_finetune

    recipe = FineTuneRecipe(
        mode="head" if args.head_only else "full",
        epochs=DEFAULT_EPOCHS if args.epochs is None else args.epochs,
        seed=0 if args.seed is None else args.seed,
    )
    dataset, split = open_for_finetune(args.dataset, args.per_class, recipe.seed)
    return Plan(args.verify, dataset, split, recipe)


def request(args: argparse.Namespace) -> dict[str, Any] | None:
    """``verify`` on ``POST /v1/rankings`` for ``args`` (None: no ``--verify``): the top K and
    the recipe fields given, the rest the service's defaults (the same as here)."""
    if args.verify is None:
        return None
    body: dict[str, Any] = {"top_k": args.verify}
    if args.epochs is not None:
        body["epochs"] = args.epochs
    if args.head_only:
        body["mode"] = "head"
    if args.seed is not None:
        body["seed"] = args.seed
    return body


def from_server(job: FineTune) -> dict[str, Any]:
    """The service's successive-halving job in the shape of a local verification's
    ``Verification.to_dict()`` (what :func:`block` prints and JSON carries), with the job's
    id as ``finetune_id``."""
    summary = job.verification or {}
    last: dict[str, Any] = {}
    for run in sorted(job.runs, key=lambda r: r.round):
        last[run.model] = run
    measured = next((r for r in job.runs if r.n_validation is not None), None)
    out_in: dict[str, int] = summary.get("out_in_round") or {}
    candidates = [
        {
            "model": r.model,
            "predicted_rank": r.predicted_rank,
            "measured_rank": r.measured_rank,
            "top1": r.top1,
            "epochs": r.epochs if r.epochs is not None else float(last[r.model].epoch),
            "seconds": r.seconds,
            "device": r.device,
            "out_in_round": out_in.get(r.model),
            "error": r.error,
        }
        for r in sorted(job.results, key=lambda r: r.predicted_rank or 0)
    ]
    rounds = []
    numbers = sorted({r.round for r in job.runs})
    for i, at in enumerate(numbers):
        runs = [r for r in job.runs if r.round == at]
        if i + 1 < len(numbers):  # those that went on: the next round's
            after = [r.model for r in job.runs if r.round == numbers[i + 1]]
        else:
            after = [summary["winner"]] if summary.get("winner") else []
        rounds.append({
            "epochs": runs[0].epochs,
            "models": [r.model for r in runs],
            "trained": [r.model for r in runs if r.repeats_round is None],
            "kept": after,
        })  # fmt: skip
    return {
        "method": "successive halving",
        "measure": "finetune_top1",
        "epochs": int(job.recipe.get("epochs", DEFAULT_EPOCHS)),
        "mode": str(job.recipe.get("mode", "full")),
        "held_out": {
            "samples": measured.n_validation if measured else 0,
            "split": job.held_out or "",
        },
        "trained_on": measured.n_train if measured else 0,
        "candidates": candidates,
        "rounds": rounds,
        "winner": summary.get("winner"),
        "winner_top1": summary.get("winner_top1"),
        "agrees_with_predicted_first": summary.get("agrees_with_predicted_first"),
        "measured_order": list(summary.get("measured_order") or []),
        "kendall_tau": summary.get("kendall_tau"),
        "finetune_id": job.id,
    }


def candidates(rows: list[RankedModel], k: int) -> list[str]:
    """The first ``k`` models of the recommended order that were ranked (ties in the order of
    ``rows``); says on stderr when fewer than ``k`` were."""
    ranked = [r for r in rows if r.rank is not None and not r.error]
    chosen = [r.model for r in sorted(ranked, key=lambda r: r.rank or 0)][:k]
    if not chosen:
        raise PipelineError("--verify has nothing to fine-tune: no model was ranked (see above)")
    if len(chosen) < k:
        _err(f"--verify {k}: only {len(chosen)} model(s) were ranked; verifying those")
    return chosen


def verify(
    chosen: Plan,
    rows: list[RankedModel],
    recorded: tuple[str, str, list[str]] | None,
    quiet: bool,
) -> tuple[Verification, dict[str, Any]]:
    """Fine-tune the top candidates of ``rows`` by successive halving, with a progress bar per
    model and round on stderr, then store their outcomes in the dataset ``recorded`` (as
    ``_record`` kept it; None: not kept, nothing stored). Returns the verification and what
    was stored (``dataset_id``, ``stored``, ``not_stored`` with reasons)."""
    from tqdm import tqdm

    from workers.pipeline.finetune.verify import successive_halving

    models = candidates(rows, chosen.k)
    bars: list[Any] = []

    def progress(model: str, done: int, total: int) -> None:
        if done == 1 or not bars:  # a model's run starts: each round is a run of its own
            if bars:
                bars[-1].close()
            bars.append(tqdm(total=total, desc=f"fine-tune {model}", unit="step",
                             file=sys.stderr, disable=quiet, leave=True))  # fmt: skip
        bars[-1].update(done - bars[-1].n)

    try:
        result = successive_halving(chosen.dataset, models, chosen.recipe, split=chosen.split,
                                    progress=progress)  # fmt: skip
    finally:
        for bar in bars:
            bar.close()
    for c in result.candidates:
        if c.result.error:
            _err(f"{c.model}: fine-tuning failed: {c.result.error}")
    return result, _store(result, recorded)


def _store(result: Verification, recorded: tuple[str, str, list[str]] | None) -> dict[str, Any]:
    """Store each measured top-1 as an outcome of the recorded dataset; what was stored, what
    not and why (a model the database does not know, a database that cannot be written)."""
    from sqlalchemy.exc import SQLAlchemyError

    from workers.cli.database import store_outcomes

    entries = result.outcomes()
    if recorded is None:
        reason = "the ranking was not kept in the local database"
        return {"dataset_id": None, "stored": [],
                "not_stored": {e["model_id"]: reason for e in entries}}  # fmt: skip
    _, dataset_id, unknown = recorded
    kept = [e for e in entries if e["model_id"] not in unknown]
    not_stored = {e["model_id"]: "not in the zoo or the database" for e in entries if e not in kept}
    if kept:
        try:
            store_outcomes(Settings.load(), dataset_id, kept)
        except (SQLAlchemyError, OSError) as exc:
            reason = f"the local database cannot be written: {str(exc).splitlines()[0]}"
            not_stored |= {e["model_id"]: reason for e in kept}
            kept = []
    stored = [e["model_id"] for e in kept]
    if stored:
        print(f"stored {len(stored)} fine-tuning outcome(s) (finetune_top1) for dataset "
              f"{dataset_id}; the recommender refitted", file=sys.stderr)  # fmt: skip
    for model, reason in not_stored.items():
        _err(f"{model}: outcome not stored: {reason}")
    return {"dataset_id": dataset_id, "stored": stored, "not_stored": not_stored}


def block(result: dict[str, Any], where: str = "here") -> str:
    """The "verified" block printed after the ranking, from a verification's summary
    (``Verification.to_dict()``, or :func:`from_server`'s): each candidate's measured top-1
    (with the held-out count), the round it went out in, the winner, whether it is the
    predicted first, and Kendall's tau between the predicted and the measured order.
    ``where``: where the fine-tuning ran ("here", "on the server at URL")."""
    mode = "head only" if result["mode"] == "head" else "full fine-tuning"
    held = int(result["held_out"]["samples"])
    lines = [
        f"verified by fine-tuning the top {len(result['candidates'])} {where} (successive "
        f"halving, {result['epochs']} epoch(s) for the winner, {mode}; top-1 on {held} "
        f"held-out samples, {result['held_out']['split']}; trained on {result['trained_on']}):"
    ]
    header = ["predicted", "measured", "model", "top1", "correct", "epochs", "out in round"]
    body = []
    for c in result["candidates"]:
        top1 = c["top1"]
        body.append([
            str(c["predicted_rank"]),
            "-" if c["measured_rank"] is None else str(c["measured_rank"]),
            c["model"],
            "failed" if top1 is None else number(top1),
            "" if top1 is None else f"{round(top1 * held)}/{held}",
            "-" if c["epochs"] is None else f"{c['epochs']:g}",
            _out(c, result["winner"]),
        ])  # fmt: skip
    widths = [max(len(line[i]) for line in [header, *body]) for i in range(len(header))]
    for line in [header, *body]:
        cells = [
            c.ljust(w) if i == 2 else c.rjust(w)
            for i, (c, w) in enumerate(zip(line, widths, strict=True))
        ]
        lines.append("  " + "  ".join(cells).rstrip())
    lines.append(_verdict(result))
    return "\n".join(lines) + "\n"


def _out(candidate: dict[str, Any], winner: str | None) -> str:
    """The "out in round" cell: the winner, the round, and whether its run failed there
    (after an earlier measurement, the one shown)."""
    if candidate["model"] == winner:
        return "winner"
    out = str(candidate["out_in_round"] or "")
    failed = candidate["top1"] is not None and candidate.get("error")
    return f"{out} (failed)" if failed else out


def _verdict(result: dict[str, Any]) -> str:
    winner = result["winner"]
    if winner is None:
        if any(c["top1"] is not None for c in result["candidates"]):
            return (
                "No winner: the halving's last round did not finish (see the reasons above); "
                "the measured order is what the earlier rounds found, and their top-1 stands."
            )
        return "No candidate could be fine-tuned (see the reasons above): nothing verified."
    top1 = next(c["top1"] for c in result["candidates"] if c["model"] == winner)
    first = result["candidates"][0]["model"]
    said = (
        f"confirms the predicted first: {winner} won"
        if result["agrees_with_predicted_first"]
        else f"disagrees with the predicted first ({first}): {winner} won"
    )
    tau = (
        f"{number(result['kendall_tau'], '.2f')} (1: the same order)"
        if result["kendall_tau"] is not None
        else "undefined below 3 models measured"
    )
    return (
        f"Fine-tuning {said}, top-1 {number(top1 or 0.0)}; Kendall's tau between the predicted "
        f"and the measured order: {tau}."
    )
