"""A typed Python client of the transferbench service: ``Client`` (sync) and ``AsyncClient``
(async), with the same methods.

    from app.client import Client

    with Client("http://localhost:8000") as tb:  # key: api_key=... or TB_API_KEY
        dataset = tb.upload_dataset("photos/")  # a folder is zipped on the fly
        ranking = tb.rank(dataset, metrics=["logme", "leep"])  # waits, with a progress bar
        best = ranking.results[0].model
        tb.add_outcomes(dataset, {best: 91.2})
        tb.leaderboard(dataset).entries
        job = tb.finetune(dataset, [best], mode="head", epochs=1)  # measured on held-out samples
        checked = tb.rank(dataset, verify=3)  # then fine-tunes the top 3: checked.verification

Answers are the service's own response models (``app.schemas``). Every answer other than
2xx, a failed ranking or fine-tuning job and an unreachable server raise one exception,
``TransferbenchError``, with the problem+json fields (``status``, ``title``, ``detail``,
``type``).

This module imports httpx, pydantic and ``app.schemas`` only: no database, FastAPI or torch.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import tempfile
import time
import zipfile
from collections.abc import AsyncIterator, Callable, Generator, Iterable, Mapping, Sequence
from contextlib import ExitStack
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Self, TypedDict, TypeVar, Unpack, overload

import httpx
from pydantic import BaseModel, ValidationError

from app import schemas

__all__ = [
    "AsyncClient",
    "Client",
    "Dataset",
    "DatasetEvaluation",
    "Evaluation",
    "FineTune",
    "FineTuneSummary",
    "Leaderboard",
    "Model",
    "Outcome",
    "Ranking",
    "RankingProgress",
    "RecipeFields",
    "TransferbenchError",
]

Dataset = schemas.DatasetOut
Model = schemas.ModelOut
Ranking = schemas.RankingOut
RankingProgress = schemas.RankingProgress
Leaderboard = schemas.Leaderboard
Outcome = schemas.OutcomeOut
DatasetEvaluation = schemas.DatasetEvaluation
Evaluation = schemas.Evaluation
FineTune = schemas.FineTuneOut
FineTuneSummary = schemas.FineTuneSummary

DEFAULT_TIMEOUT_S = 30.0
DEFAULT_MEASURE: str = schemas.OutcomeIn.model_fields["measure"].default
POLL_S = 0.5
PAGE = 1000  # the service's largest page
_SLOW = httpx.Timeout(DEFAULT_TIMEOUT_S, read=None, write=None)  # uploads, loading weights
_TERMINAL = {"done", "failed"}
#: a fine-tuning job's (and a run's) end states
_ENDED = {"done", "failed", "cancelled"}

T = TypeVar("T")
M = TypeVar("M", bound=BaseModel)
HasId = schemas.DatasetOut | schemas.ModelOut | schemas.RankingSummary | schemas.FineTuneSummary
# One operation, written once for both clients: it yields requests and is sent their responses.
Op = Generator[httpx.Request, httpx.Response, T]

#: how a wait shows a fine-tuning job's progress: True, one tqdm bar per model on stderr;
#: False, none; None, bars when stderr is a terminal; a callable, given each state polled
FineTuneProgress = bool | Callable[[schemas.FineTuneOut], object] | None


class RecipeFields(TypedDict, total=False):
    """The recipe's fields ``finetune`` and ``rank(verify=...)`` take one by one (each
    defaults to the service's documented recipe: ``schemas.RecipeIn``, docs/finetuning.md):
    ``mode`` (``"full"`` or ``"head"``: the backbone frozen), ``epochs``, ``time_budget_s``
    (seconds per model), ``learning_rate``, ``batch_size``, ``weight_decay``, ``seed`` (the
    split, the head, the order), ``validation`` (held out: a fraction of each class, or a
    count per class) and ``augment`` (images: random crop and flip)."""

    mode: Literal["full", "head"]
    epochs: int
    time_budget_s: float
    learning_rate: float
    batch_size: int
    weight_decay: float
    seed: int
    validation: float | int
    augment: bool


class TransferbenchError(Exception):
    """What went wrong, as the service's problem+json says it: ``status`` (None when no
    answer came: the server could not be reached, or a ranking failed), ``title``,
    ``detail`` (a sentence to act on), ``type``, and any other fields in ``extra``."""

    def __init__(
        self,
        detail: str,
        *,
        status: int | None = None,
        title: str = "Error",
        type: str = "about:blank",
        extra: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(detail)
        self.detail, self.status, self.title, self.type = detail, status, title, type
        self.extra = dict(extra or {})

    def __str__(self) -> str:
        return f"{self.status} {self.title}: {self.detail}" if self.status else self.detail

    @classmethod
    def from_response(cls, response: httpx.Response) -> TransferbenchError:
        """The problem+json of a non-2xx answer (or what can be made of another body)."""
        try:
            body = response.json()
        except ValueError:
            body = None
        if not isinstance(body, dict):
            text = response.text.strip()[:300] or response.reason_phrase
            return cls(text, status=response.status_code, title=response.reason_phrase)
        known = {"status", "title", "detail", "type"}
        return cls(
            str(body.get("detail") or response.reason_phrase),
            status=response.status_code,
            title=str(body.get("title") or response.reason_phrase),
            type=str(body.get("type") or "about:blank"),
            extra={k: v for k, v in body.items() if k not in known},
        )


def _id(item: HasId | str) -> str:
    return item if isinstance(item, str) else item.id


def _unexpected(response: httpx.Response, why: str) -> TransferbenchError:
    return TransferbenchError(
        f"{response.request.method} {response.request.url.path}: the answer does not have the "
        f"expected shape (is {response.request.url.host} a transferbench server of this "
        f"version?): {why}",
        status=response.status_code,
        title="Unexpected answer",
    )


def _parse(model: type[M], response: httpx.Response) -> M:
    try:
        return model.model_validate_json(response.content)
    except ValidationError as exc:
        raise _unexpected(response, str(exc.errors()[0]["msg"])) from exc


def _parse_list(model: type[M], response: httpx.Response) -> list[M]:
    try:
        items = response.json()
        if not isinstance(items, list):
            raise _unexpected(response, "not a list")
        return [model.model_validate(item) for item in items]
    except (ValueError, ValidationError) as exc:
        raise _unexpected(response, str(exc)) from exc


def _check_deadline(ranking_id: str, deadline: float | None) -> None:
    if deadline is not None and time.monotonic() > deadline:
        raise TransferbenchError(f"ranking {ranking_id} did not finish in time")


def _checked(kind: type[schemas.RecipeIn], given: Mapping[str, Any], what: str) -> dict[str, Any]:
    """``given`` checked against the service's own model of it (``RecipeIn``, ``VerifyIn``),
    as the body to send: the fields given only, so the service's defaults fill the rest."""
    try:
        checked = kind.model_validate(dict(given))
    except ValidationError as exc:
        error = exc.errors()[0]
        field = ".".join(str(part) for part in error["loc"]) or what
        if error["type"] == "extra_forbidden":
            known = ", ".join(kind.model_fields)
            detail = f"{what}: no field {field!r}; the fields are {known}"
        else:
            detail = f"{what}: {field}: {error['msg']}"
        raise TransferbenchError(detail, title="Invalid recipe") from None
    return checked.model_dump(mode="json", exclude_unset=True)


def _recipe(recipe: Mapping[str, Any] | None, fields: Mapping[str, Any]) -> dict[str, Any]:
    """A recipe from a dict and fields given one by one (those win)."""
    return _checked(schemas.RecipeIn, {**(recipe or {}), **fields}, "recipe")


def _verify(verify: int | Mapping[str, Any]) -> dict[str, Any]:
    """``rank``'s ``verify``: a top k (``3``), or ``{"top_k": 3, ...recipe fields}``."""
    if isinstance(verify, bool) or not isinstance(verify, int | Mapping):
        raise TransferbenchError(
            f"verify: give how many of the top models to fine-tune (verify=3) or a dict "
            f'({{"top_k": 3, "epochs": 1, ...}}), not {verify!r}',
            title="Invalid recipe",
        )
    given = {"top_k": verify} if isinstance(verify, int) else dict(verify)
    return _checked(schemas.VerifyIn, given, "verify")


def _weights_file(path: Path, response: httpx.Response) -> Path:
    """Where downloaded weights go: ``path``, or in the folder ``path`` under the name the
    service gives them (``<model>-finetuned-<job>.pt``)."""
    if not path.is_dir():
        return path
    disposition = response.headers.get("content-disposition", "")
    name = disposition.partition("filename=")[2].split(";")[0].strip().strip('"')
    return path / (Path(name).name or "finetuned.pt")


def _ended(job: FineTune) -> FineTune:
    """A fine-tuning job that ended: done comes back (a model in it may have failed: its
    ``error``); failed or cancelled raises, the job in ``extra["finetune"]``."""
    if job.status == "done":
        return job
    title = "Fine-tuning failed" if job.status == "failed" else "Fine-tuning cancelled"
    raise TransferbenchError(
        f"fine-tuning job {job.id} {job.status}: {job.error or 'no reason was recorded'}",
        title=title,
        extra={"finetune": job},
    )


def _zip_folder(folder: Path, into: Path) -> Path:
    """``folder``'s files (its class subfolders, or images and a manifest) in a zip. Stored,
    not deflated: images are compressed already."""
    archive = into / f"{folder.name or 'dataset'}.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_STORED) as z:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                z.write(path, path.relative_to(folder).as_posix())
    return archive


class _Calls:
    """Everything but the transport: how each call becomes requests and its answer a value."""

    #: the connection pool, which holds the headers (the API key among them) every request gets
    _http: httpx.Client | httpx.AsyncClient

    def __init__(self, url: str, api_key: str | None, timeout: float) -> None:
        self.url = url.rstrip("/")
        key = api_key if api_key is not None else os.environ.get("TB_API_KEY")
        self.headers = {"User-Agent": "transferbench-client", "Accept": "application/json"}
        if key:
            self.headers["Authorization"] = f"Bearer {key}"
        self.timeout = timeout

    def _request(
        self,
        method: str,
        path: str,
        *,
        timeout: httpx.Timeout | None = None,
        **kwargs: Any,
    ) -> httpx.Request:
        """A request built by the pool, so that it carries the pool's headers, the API key
        among them (``send`` adds the pool's timeout to a request built without it, but not
        its headers); ``timeout`` replaces the pool's for this request."""
        if timeout is None:
            return self._http.build_request(method, self.url + path, **kwargs)
        return self._http.build_request(method, self.url + path, timeout=timeout, **kwargs)

    def _pages(
        self, path: str, model: type[M], params: Mapping[str, str] | None = None
    ) -> Op[list[M]]:
        """Every item of a list endpoint, following its cursors."""
        items: list[M] = []
        cursor: str | None = None
        while True:
            query = {**(params or {}), "limit": str(PAGE), **({"cursor": cursor} if cursor else {})}
            response = yield self._request("GET", path, params=query)
            items.extend(_parse_list(model, response))
            cursor = response.headers.get("x-next-cursor")
            if not cursor:
                return items

    # -- datasets and models
    def _datasets(self) -> Op[list[Dataset]]:
        return (yield from self._pages("/v1/datasets", Dataset))

    def _dataset(self, dataset: Dataset | str) -> Op[Dataset]:
        response = yield self._request("GET", f"/v1/datasets/{_id(dataset)}")
        return _parse(Dataset, response)

    def _find_dataset(self, content_hash: str) -> Op[Dataset | None]:
        found = yield from self._pages("/v1/datasets", Dataset, {"content_hash": content_hash})
        return found[0] if found else None

    def _upload(
        self,
        path: str | os.PathLike[str],
        name: str | None,
        modality: str | None,
        task: str | None,
        tags: str | None = None,
    ) -> Op[Dataset]:
        source = Path(path).expanduser()
        if not source.exists():
            raise TransferbenchError(f"{source}: no such file or folder", title="Not found")
        with ExitStack() as stack:
            upload = source
            if source.is_dir():
                tmp = Path(stack.enter_context(tempfile.TemporaryDirectory()))
                upload = _zip_folder(source, tmp)
            handle = stack.enter_context(upload.open("rb"))
            form = {"name": name or source.stem or "dataset"}
            given = (("modality", modality), ("task", task), ("tags", tags))
            form |= {k: v for k, v in given if v}
            response = yield self._request(
                "POST",
                "/v1/datasets",
                timeout=_SLOW,
                data=form,
                files={"file": (upload.name, handle, "application/octet-stream")},
            )
        return _parse(Dataset, response)

    def _models(self) -> Op[list[Model]]:
        return (yield from self._pages("/v1/models", Model))

    def _register_model(self, name: str, source: str | None) -> Op[Model]:
        body = {"name": name, "source": source or name}
        response = yield self._request("POST", "/v1/models", json=body)
        return _parse(Model, response)

    def _model(self, model_id: str) -> Op[Model]:
        response = yield self._request("GET", f"/v1/models/{model_id}")
        return _parse(Model, response)

    @staticmethod
    def _registered(model: Model, deadline: float) -> bool:
        """True once the registration is ready; raises when it failed or time ran out."""
        if model.status == "ready":
            return True
        if model.status == "failed":
            raise TransferbenchError(
                model.error or f"model {model.name} could not be loaded", title="Model failed"
            )
        if time.monotonic() > deadline:
            raise TransferbenchError(
                f"model {model.name} was still pending after the wait; a worker loads it: "
                f"poll GET /v1/models/{model.id}"
            )
        return False

    @staticmethod
    def _model_keys(models: Sequence[Model | str] | Model | str) -> list[str]:
        """Models given as Model, id or name, as the service takes them: ids or names (it
        answers 422 naming any it does not know). One model alone is a list of one (a name
        was sent as its letters: "no model with id or name 'm', 'o', ...")."""
        if isinstance(models, str | Model):
            models = [models]
        return [m if isinstance(m, str) else m.id for m in models]

    # -- rankings
    def _start(
        self,
        dataset: Dataset | str,
        models: Sequence[Model | str] | None,
        metrics: Sequence[str] | None,
        per_class: int | None,
        layers: str | Sequence[int] = "last",
        layer_mean: bool = False,
        verify: int | Mapping[str, Any] | None = None,
    ) -> Op[Ranking]:
        body: dict[str, Any] = {"dataset_id": _id(dataset)}
        if verify is not None:
            body["verify"] = _verify(verify)  # checked before anything is sent
        if models is not None:
            body["model_ids"] = self._model_keys(models)
        if metrics is not None:
            body["metrics"] = list(metrics)
        if per_class is not None:
            body["per_class"] = per_class
        if layers != "last":
            body["layers"] = layers if isinstance(layers, str) else list(layers)
        if layer_mean:
            body["layer_mean"] = True
        response = yield self._request("POST", "/v1/rankings", json=body)
        return _parse(Ranking, response)

    # -- fine-tuning
    def _start_finetune(
        self,
        dataset: Dataset | str,
        models: Sequence[Model | str],
        recipe: dict[str, Any],
        per_class: int | None,
        keep_weights: bool,
    ) -> Op[FineTune]:
        if isinstance(models, str):  # one name is not a list of its letters
            models = [models]
        body: dict[str, Any] = {
            "dataset_id": _id(dataset),
            "model_ids": self._model_keys(models),
            "recipe": recipe,
        }
        if per_class is not None:
            body["per_class"] = per_class
        if keep_weights:
            body["keep_weights"] = True
        response = yield self._request("POST", "/v1/finetunes", json=body)
        return _parse(FineTune, response)

    def _finetune_job(self, job: FineTuneSummary | str) -> Op[FineTune]:
        response = yield self._request("GET", f"/v1/finetunes/{_id(job)}")
        return _parse(FineTune, response)

    def _finetunes(
        self, status: str | None, dataset: Dataset | str | None
    ) -> Op[list[FineTuneSummary]]:
        params = {"status": status} if status else {}
        if dataset is not None:
            params["dataset_id"] = _id(dataset)
        return (yield from self._pages("/v1/finetunes", FineTuneSummary, params))

    def _cancel_finetune(self, job: FineTuneSummary | str) -> Op[FineTune | None]:
        response = yield self._request("DELETE", f"/v1/finetunes/{_id(job)}")
        return None if response.status_code == 204 else _parse(FineTune, response)

    def _weights_request(self, job: FineTuneSummary | str, model: Model | str) -> httpx.Request:
        key = model if isinstance(model, str) else model.id
        path = f"/v1/finetunes/{_id(job)}/models/{key}/weights"
        return self._request("GET", path, timeout=_SLOW, headers={"Accept": "*/*"})

    def _time_left(self, what: str, deadline: float | None) -> None:
        if deadline is not None and time.monotonic() > deadline:
            raise TransferbenchError(
                f"{what} did not end in time; it goes on on the server (wait again, or cancel it)",
                title="Timed out",
            )

    def _ranking(self, ranking: Ranking | str) -> Op[Ranking]:
        response = yield self._request("GET", f"/v1/rankings/{_id(ranking)}")
        return _parse(Ranking, response)

    def _rankings(self, status: str | None) -> Op[list[schemas.RankingSummary]]:
        params = {"status": status} if status else None
        return (yield from self._pages("/v1/rankings", schemas.RankingSummary, params))

    # -- outcomes and evaluation
    def _leaderboard(self, dataset: Dataset | str, metric: str) -> Op[Leaderboard]:
        response = yield self._request(
            "GET", f"/v1/datasets/{_id(dataset)}/leaderboard", params={"metric": metric}
        )
        return _parse(Leaderboard, response)

    def _add_outcomes(
        self,
        dataset: Dataset | str,
        outcomes: Mapping[str, float] | Iterable[schemas.OutcomeIn | Mapping[str, Any]],
        measure: str,
        higher_is_better: bool,
    ) -> Op[list[Outcome]]:
        try:  # checked here as the service would: its error type, never pydantic's
            if isinstance(outcomes, Mapping):
                entries = [
                    schemas.OutcomeIn(
                        model_id=model,
                        value=value,
                        measure=measure,
                        higher_is_better=higher_is_better,
                    )
                    for model, value in outcomes.items()
                ]
            else:
                entries = [
                    o
                    if isinstance(o, schemas.OutcomeIn)
                    else schemas.OutcomeIn.model_validate(
                        {"measure": measure, "higher_is_better": higher_is_better, **o}
                    )
                    for o in outcomes
                ]
        except ValidationError as exc:
            error = exc.errors()[0]
            field = ".".join(str(part) for part in error["loc"]) or "outcome"
            raise TransferbenchError(
                f"outcome {field}: {error['msg']} (given {error.get('input')!r})",
                title="Invalid outcome",
            ) from None
        body = [o.model_dump(mode="json") for o in entries]
        response = yield self._request("POST", f"/v1/datasets/{_id(dataset)}/outcomes", json=body)
        return _parse_list(Outcome, response)

    def _outcomes(self, dataset: Dataset | str, measure: str | None) -> Op[list[Outcome]]:
        params = {"measure": measure} if measure else None
        path = f"/v1/datasets/{_id(dataset)}/outcomes"
        return (yield from self._pages(path, Outcome, params))

    def _evaluation(
        self, dataset: Dataset | str | None, measure: str, modality: str, task: str
    ) -> Op[DatasetEvaluation | Evaluation]:
        if dataset is not None:
            response = yield self._request(
                "GET", f"/v1/datasets/{_id(dataset)}/evaluation", params={"measure": measure}
            )
            return _parse(DatasetEvaluation, response)
        params = {"measure": measure, "modality": modality, "task": task}
        response = yield self._request("GET", "/v1/evaluation", params=params)
        return _parse(Evaluation, response)

    # -- waiting
    def _events_request(self, ranking_id: str) -> httpx.Request:
        return self._request(
            "GET",
            f"/v1/rankings/{ranking_id}/events",
            headers={"Accept": "text/event-stream"},
            timeout=httpx.Timeout(self.timeout, read=60.0),  # a comment comes every 15 s at most
        )

    def _transport_error(self, exc: httpx.TransportError) -> TransferbenchError:
        if isinstance(exc, httpx.TimeoutException):
            detail = f"the transferbench server at {self.url} did not answer in time ({exc!r})"
        else:
            detail = f"cannot reach the transferbench server at {self.url}: {exc}"
        return TransferbenchError(detail, title="Connection failed")


class _Events:
    """Server-sent events from lines: feed lines, get (event, data) at each blank line."""

    def __init__(self) -> None:
        self.name = "message"
        self.data: list[str] = []

    def feed(self, line: str) -> tuple[str, str] | None:
        if not line:
            event = (self.name, "\n".join(self.data)) if self.data else None
            self.name, self.data = "message", []
            return event
        if line.startswith(":"):
            return None
        field, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if field == "event":
            self.name = value
        elif field == "data":
            self.data.append(value)
        return None


class _Bar:
    """A tqdm bar on stderr, counting samples extracted across the ranking's models (none
    when ``progress`` is False or tqdm is not installed)."""

    def __init__(self, enabled: bool, ranking_id: str) -> None:
        self.bar: Any = None
        if enabled:
            try:
                from tqdm import tqdm
            except ImportError:  # the client needs only httpx and pydantic
                return
            self.bar = tqdm(
                total=0, file=sys.stderr, unit="sample", desc=f"ranking {ranking_id[:8]}"
            )

    def update(self, state: RankingProgress | Ranking) -> None:
        if self.bar is None:
            return
        models = state.progress
        self.bar.total = sum(m.samples_total for m in models) or self.bar.total
        self.bar.n = sum(m.samples_done for m in models)
        done = sum(m.status in _TERMINAL for m in models)
        self.bar.set_postfix_str(f"{state.status}, {done}/{len(models)} models", refresh=False)
        self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class _RunBars:
    """A fine-tuning job's progress: one tqdm bar per run on stderr (a model; in successive
    halving, a model and round), counting its optimiser steps, from the states polled; or
    the caller's callable, given each state (see ``FineTuneProgress``)."""

    def __init__(self, progress: FineTuneProgress) -> None:
        self.call = None if isinstance(progress, bool) or progress is None else progress
        self.bars: dict[tuple[str, int], Any] = {}
        self.tqdm: Any = None
        show = progress if isinstance(progress, bool) else progress is None and _on_terminal()
        if show and self.call is None:
            try:
                from tqdm import tqdm
            except ImportError:  # the client needs only httpx and pydantic
                return
            self.tqdm = tqdm

    def update(self, job: FineTune) -> None:
        if self.call is not None:
            self.call(job)
        if self.tqdm is None:
            return
        rounds = job.method == "halving"
        for run in job.runs:
            key = (run.model_id, run.round)
            bar = self.bars.get(key)
            if bar is None:
                if run.status == "queued" and not run.steps_total:
                    continue  # not started: its bar comes when it does
                desc = f"{run.model} (round {run.round})" if rounds else run.model
                ended = run.status in _ENDED  # seen first at its end (or not trained again)
                bar = self.bars[key] = self.tqdm(
                    total=run.steps_total or None,
                    initial=run.step if ended else 0,  # no rate for steps not watched
                    desc=desc,
                    unit="step",
                    file=sys.stderr,
                )
            if bar.disable:  # closed: its run ended
                continue
            bar.total = run.steps_total or bar.total
            bar.n = run.step
            state = str(run.status)
            if run.status == "training":
                state = f"epoch {run.epoch:.2f}/{run.epochs}"
            if run.repeats_round is not None:  # not trained again: that round's result
                state += f" as in round {run.repeats_round}"
            if run.top1 is not None:
                state += f", top-1 {run.top1:.4f}"
            bar.set_postfix_str(state, refresh=False)
            bar.refresh()
            if run.status in _ENDED:
                bar.close()

    def close(self) -> None:
        for bar in self.bars.values():
            bar.close()


def _on_terminal() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):  # replaced, or closed
        return False


def _final(ranking_id: str, name: str, data: str) -> Ranking:
    """The ranking of a ``done`` event; a ``failed`` one raises."""
    if name == "done":
        return Ranking.model_validate_json(data)
    body = json.loads(data)
    error = body.get("error") or "no reason was recorded"
    # each model's own reason: the job's says only "every model failed; see the per-model
    # errors", which a caller could not see
    reasons = [
        f"{p.get('model') or p.get('model_id')}: {p['error']}"
        for p in body.get("progress") or []
        if p.get("error")
    ]
    detail = f"ranking {ranking_id} failed: {error}" + (
        f" ({'; '.join(reasons)})" if reasons else ""
    )
    raise TransferbenchError(detail, title="Ranking failed", extra={"ranking": body})


def _finished(ranking: Ranking) -> Ranking:
    if ranking.status == "failed":
        return _final(ranking.id, "failed", ranking.model_dump_json())
    return ranking


class Client(_Calls):
    """The service at ``url`` (``http://host:8000``), over one connection pool; close it
    (or use ``with``). ``api_key``: sent as a Bearer key; default ``TB_API_KEY``.
    ``timeout``: seconds per request (uploads and model registration wait longer)."""

    _http: httpx.Client

    def __init__(
        self, url: str, api_key: str | None = None, timeout: float = DEFAULT_TIMEOUT_S
    ) -> None:
        super().__init__(url, api_key, timeout)
        self._http = httpx.Client(headers=self.headers, timeout=timeout)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _send(self, request: httpx.Request) -> httpx.Response:
        try:
            response = self._http.send(request)
        except httpx.TransportError as exc:
            raise self._transport_error(exc) from exc
        if response.is_error:
            raise TransferbenchError.from_response(response)
        return response

    def _run(self, op: Op[T]) -> T:
        try:
            request = next(op)
            while True:
                request = op.send(self._send(request))
        except StopIteration as stop:
            result: T = stop.value
            return result
        finally:
            op.close()

    def datasets(self) -> list[Dataset]:
        """Every dataset on the server, newest first."""
        return self._run(self._datasets())

    def dataset(self, dataset: Dataset | str) -> Dataset:
        return self._run(self._dataset(dataset))

    def find_dataset(self, content_hash: str) -> Dataset | None:
        """The dataset holding this content (``Dataset.content_hash``), if the server has it."""
        return self._run(self._find_dataset(content_hash))

    def upload_dataset(
        self,
        path: str | os.PathLike[str],
        name: str | None = None,
        *,
        modality: str | None = None,
        task: str | None = None,
        tags: str | None = None,
    ) -> Dataset:
        """Upload a .zip/.csv/.jsonl/.npz/.npy/.parquet file, or a folder (zipped on the fly).
        Content the server already holds comes back as the existing dataset. ``tags``: a
        token-classification JSONL's tags as given (``"bio"``) or merged to entity types
        (``"entity"``)."""
        return self._run(self._upload(path, name, modality, task, tags))

    def models(self) -> list[Model]:
        """Every registered model, by modality and name."""
        return self._run(self._models())

    def register_model(
        self, name: str, source: str | None = None, *, wait: bool = True, timeout: float = 600
    ) -> Model:
        """Register a model: ``source`` a zoo name or ``SOURCE:REF`` spec (default: ``name``).
        A worker loads its weights; ``wait`` returns once it is ready (raising if it failed),
        else at once with the ``pending`` model."""
        model = self._run(self._register_model(name, source))
        deadline = time.monotonic() + timeout
        while wait and not self._registered(model, deadline):
            time.sleep(POLL_S)
            model = self._run(self._model(model.id))
        return model

    def rank(
        self,
        dataset: Dataset | str,
        models: Sequence[Model | str] | None = None,
        metrics: Sequence[str] | None = None,
        *,
        per_class: int | None = None,
        wait: bool = True,
        progress: bool = True,
        layers: str | Sequence[int] = "last",
        layer_mean: bool = False,
        verify: int | Mapping[str, Any] | None = None,
    ) -> Ranking:
        """Start ranking ``models`` (names or ids; default: every model for the dataset's
        modality) on ``dataset`` with ``metrics`` (default: the service's). With ``wait``,
        return the finished ranking (results best first, and its ``recommendation``),
        showing a progress bar on stderr when ``progress``; a failed ranking raises.
        ``layers``: ``"last"``, ``"all"`` or indices; each result then has its scores per
        layer and its best layer (``layer_mean``: and the mean of the chosen layers).
        ``verify``: once scored, fine-tune the top k of the recommended order by successive
        halving and store what each reached as an outcome: ``3``, or ``{"top_k": 3,
        "epochs": 1, "mode": "head", ...}`` (``RecipeFields``); ``wait`` then waits for the
        fine-tuning too (a bar per model), and ``verification`` names the winner."""
        started = self._run(
            self._start(dataset, models, metrics, per_class, layers, layer_mean, verify)
        )
        return self.wait(started, progress=progress) if wait else started

    def ranking(self, ranking: Ranking | str) -> Ranking:
        return self._run(self._ranking(ranking))

    def rankings(self, status: str | None = None) -> list[schemas.RankingSummary]:
        """Every ranking (or those in ``status``), newest first."""
        return self._run(self._rankings(status))

    def wait(
        self,
        ranking: Ranking | str,
        *,
        progress: bool = True,
        timeout: float | None = None,
        verification: bool = True,
    ) -> Ranking:
        """Wait for the ranking to finish (its event stream; polling if the stream breaks);
        with ``verification``, for the fine-tuning that verifies it too, when it asked for
        one (its ``verification`` then says what fine-tuning measured)."""
        ranking_id = _id(ranking)
        deadline = None if timeout is None else time.monotonic() + timeout
        bar = _Bar(progress, ranking_id)
        try:
            final = self._stream(ranking_id, bar, deadline)
            if final is not None:
                done = _final(ranking_id, *final)
            else:
                done = _finished(self._poll(ranking_id, bar, deadline))
        finally:
            bar.close()
        checking = done.verification.finetune_id if done.verification else None
        if not verification or checking is None:
            return done
        self._until_ended(checking, progress, deadline)
        return self.ranking(ranking_id)

    def _stream(
        self, ranking_id: str, bar: _Bar, deadline: float | None = None
    ) -> tuple[str, str] | None:
        """The final event, or None when the stream could not be followed to its end; past
        ``deadline`` (checked on every line: the server sends one at least every 15 s), the
        error a poll raises."""
        try:
            response = self._http.send(self._events_request(ranking_id), stream=True)
        except httpx.TransportError:
            return None
        try:
            if response.status_code in (404, 405, 429):  # no stream here, or none free: poll
                return None
            if response.is_error:
                response.read()
                raise TransferbenchError.from_response(response)
            parser = _Events()
            for line in response.iter_lines():
                _check_deadline(ranking_id, deadline)
                event = parser.feed(line)
                if event and event[0] == "progress":
                    bar.update(RankingProgress.model_validate_json(event[1]))
                elif event and event[0] in _TERMINAL:
                    return event
        except httpx.TransportError:
            pass
        finally:
            response.close()
        return None

    def _poll(self, ranking_id: str, bar: _Bar, deadline: float | None) -> Ranking:
        tag = None
        while True:
            headers: dict[str, str] = {"If-None-Match": tag} if tag else {}
            request = self._request("GET", f"/v1/rankings/{ranking_id}", headers=headers)
            response = self._send(request)
            if response.status_code != 304:
                tag = response.headers.get("etag")
                state = _parse(Ranking, response)
                bar.update(state)
                if state.status in _TERMINAL:
                    return state
            _check_deadline(ranking_id, deadline)
            time.sleep(POLL_S)

    def finetune(
        self,
        dataset: Dataset | str,
        models: Sequence[Model | str],
        *,
        recipe: Mapping[str, Any] | None = None,
        per_class: int | None = None,
        keep_weights: bool = False,
        wait: bool = True,
        progress: FineTuneProgress = None,
        timeout: float | None = None,
        **fields: Unpack[RecipeFields],
    ) -> FineTune:
        """Fine-tune each of ``models`` (names or ids) on ``dataset`` and measure its top-1 on
        held-out samples; the service stores each as an outcome (``finetune_top1``) and the
        recommender refits. The recipe: the service's default, overridden by ``recipe`` (a
        dict) and then by the fields given here (``mode="head", epochs=1, seed=0, ...``:
        ``RecipeFields``). ``per_class``: at most K samples per class, drawn with the seed.
        ``keep_weights``: keep the fine-tuned weights (``download_weights``). With ``wait``,
        return the ended job (``results``: each model's top-1, best first; a model that
        failed has its ``error``), showing its progress as ``progress`` says
        (``FineTuneProgress``); a job that failed or was cancelled raises."""
        body = _recipe(recipe, fields)  # checked before anything is sent
        job = self._run(self._start_finetune(dataset, models, body, per_class, keep_weights))
        return self.wait_finetune(job, progress=progress, timeout=timeout) if wait else job

    def finetune_job(self, job: FineTuneSummary | str) -> FineTune:
        """A fine-tuning job: its status, each run's progress and curve, the results."""
        return self._run(self._finetune_job(job))

    def finetunes(
        self, status: str | None = None, dataset: Dataset | str | None = None
    ) -> list[FineTuneSummary]:
        """Every fine-tuning job (in ``status``, of ``dataset``), newest first."""
        return self._run(self._finetunes(status, dataset))

    def wait_finetune(
        self,
        job: FineTuneSummary | str,
        *,
        progress: FineTuneProgress = None,
        timeout: float | None = None,
    ) -> FineTune:
        """Wait for a fine-tuning job to end (polling it); a failed or cancelled one raises,
        the job in the error's ``extra["finetune"]``."""
        deadline = None if timeout is None else time.monotonic() + timeout
        return _ended(self._until_ended(_id(job), progress, deadline))

    def _until_ended(
        self, job_id: str, progress: FineTuneProgress, deadline: float | None
    ) -> FineTune:
        bars = _RunBars(progress)
        try:
            while True:
                state = self._run(self._finetune_job(job_id))
                bars.update(state)
                if state.status in _ENDED:
                    return state
                self._time_left(f"fine-tuning job {job_id}", deadline)
                time.sleep(POLL_S)
        finally:
            bars.close()

    def cancel_finetune(self, job: FineTuneSummary | str) -> FineTune | None:
        """Cancel a job still queued or running (a model in training stops at its next step;
        what was measured stays) and return it; a job that has ended is deleted instead,
        with its kept weights (None; its outcomes stay with the dataset)."""
        return self._run(self._cancel_finetune(job))

    def download_weights(
        self, job: FineTuneSummary | str, model: Model | str, path: str | os.PathLike[str]
    ) -> Path:
        """Save the weights a job kept (``keep_weights``) for ``model`` (its name or id) to
        ``path`` (a file, or a folder: under the service's file name); returns the file. One
        ``torch.save`` dict: ``state_dict`` (the backbone under its source's own names),
        ``head``, ``classes``, ``source``."""
        request = self._weights_request(job, model)
        try:
            response = self._http.send(request, stream=True)
        except httpx.TransportError as exc:
            raise self._transport_error(exc) from exc
        try:
            if response.is_error:
                response.read()
                raise TransferbenchError.from_response(response)
            target = _weights_file(Path(path).expanduser(), response)
            partial = target.with_name(target.name + ".partial")
            with partial.open("wb") as out:
                for chunk in response.iter_bytes():
                    out.write(chunk)
            partial.replace(target)
        except httpx.TransportError as exc:
            raise self._transport_error(exc) from exc
        finally:
            response.close()
        return target

    def leaderboard(
        self, dataset: Dataset | str, metric: str = schemas.LEADERBOARD_DEFAULT_METRIC
    ) -> Leaderboard:
        """The dataset's models best first by ``metric`` (``recommended`` or a metric name)."""
        return self._run(self._leaderboard(dataset, metric))

    def add_outcomes(
        self,
        dataset: Dataset | str,
        outcomes: Mapping[str, float] | Iterable[schemas.OutcomeIn | Mapping[str, Any]],
        *,
        measure: str = DEFAULT_MEASURE,
        higher_is_better: bool = True,
    ) -> list[Outcome]:
        """Record fine-tuning results: ``{model name or id: value}``, or a list of
        ``OutcomeIn`` (or dicts with ``model_id``, ``value``, ...). Returns all the
        dataset's outcomes. All or nothing: one bad entry stores none."""
        return self._run(self._add_outcomes(dataset, outcomes, measure, higher_is_better))

    def outcomes(self, dataset: Dataset | str, measure: str | None = None) -> list[Outcome]:
        return self._run(self._outcomes(dataset, measure))

    @overload
    def evaluation(
        self, dataset: None = None, *, measure: str = ..., modality: str = ..., task: str = ...
    ) -> Evaluation: ...
    @overload
    def evaluation(
        self, dataset: Dataset | str, *, measure: str = ..., modality: str = ..., task: str = ...
    ) -> DatasetEvaluation: ...
    def evaluation(
        self,
        dataset: Dataset | str | None = None,
        *,
        measure: str = DEFAULT_MEASURE,
        modality: str = "image",
        task: str = "classification",
    ) -> DatasetEvaluation | Evaluation:
        """How well each metric and the recommender ordered models against real outcomes:
        on one dataset, or (without one) across the ``modality``/``task`` scope."""
        return self._run(self._evaluation(dataset, measure, modality, task))


class AsyncClient(_Calls):
    """``Client``'s methods as coroutines (``async with AsyncClient(url) as tb: await
    tb.rank(...)``). Zipping a folder for ``upload_dataset`` happens on the calling thread."""

    _http: httpx.AsyncClient

    def __init__(
        self, url: str, api_key: str | None = None, timeout: float = DEFAULT_TIMEOUT_S
    ) -> None:
        super().__init__(url, api_key, timeout)
        self._http = httpx.AsyncClient(headers=self.headers, timeout=timeout)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _send(self, request: httpx.Request) -> httpx.Response:
        try:
            response = await self._http.send(request)
        except httpx.TransportError as exc:
            raise self._transport_error(exc) from exc
        if response.is_error:
            await response.aread()
            raise TransferbenchError.from_response(response)
        return response

    async def _run(self, op: Op[T]) -> T:
        try:
            request = next(op)
            while True:
                request = op.send(await self._send(request))
        except StopIteration as stop:
            result: T = stop.value
            return result
        finally:
            op.close()

    async def datasets(self) -> list[Dataset]:
        return await self._run(self._datasets())

    async def dataset(self, dataset: Dataset | str) -> Dataset:
        return await self._run(self._dataset(dataset))

    async def find_dataset(self, content_hash: str) -> Dataset | None:
        return await self._run(self._find_dataset(content_hash))

    async def upload_dataset(
        self,
        path: str | os.PathLike[str],
        name: str | None = None,
        *,
        modality: str | None = None,
        task: str | None = None,
        tags: str | None = None,
    ) -> Dataset:
        return await self._run(self._upload(path, name, modality, task, tags))

    async def models(self) -> list[Model]:
        return await self._run(self._models())

    async def register_model(
        self, name: str, source: str | None = None, *, wait: bool = True, timeout: float = 600
    ) -> Model:
        model = await self._run(self._register_model(name, source))
        deadline = time.monotonic() + timeout
        while wait and not self._registered(model, deadline):
            await asyncio.sleep(POLL_S)
            model = await self._run(self._model(model.id))
        return model

    async def rank(
        self,
        dataset: Dataset | str,
        models: Sequence[Model | str] | None = None,
        metrics: Sequence[str] | None = None,
        *,
        per_class: int | None = None,
        wait: bool = True,
        progress: bool = True,
        layers: str | Sequence[int] = "last",
        layer_mean: bool = False,
        verify: int | Mapping[str, Any] | None = None,
    ) -> Ranking:
        started = await self._run(
            self._start(dataset, models, metrics, per_class, layers, layer_mean, verify)
        )
        return await self.wait(started, progress=progress) if wait else started

    async def ranking(self, ranking: Ranking | str) -> Ranking:
        return await self._run(self._ranking(ranking))

    async def rankings(self, status: str | None = None) -> list[schemas.RankingSummary]:
        return await self._run(self._rankings(status))

    async def wait(
        self,
        ranking: Ranking | str,
        *,
        progress: bool = True,
        timeout: float | None = None,
        verification: bool = True,
    ) -> Ranking:
        ranking_id = _id(ranking)
        deadline = None if timeout is None else time.monotonic() + timeout
        bar = _Bar(progress, ranking_id)
        try:
            final = await self._stream(ranking_id, bar, deadline)
            if final is not None:
                done = _final(ranking_id, *final)
            else:
                done = _finished(await self._poll(ranking_id, bar, deadline))
        finally:
            bar.close()
        checking = done.verification.finetune_id if done.verification else None
        if not verification or checking is None:
            return done
        await self._until_ended(checking, progress, deadline)
        return await self.ranking(ranking_id)

    async def _stream(
        self, ranking_id: str, bar: _Bar, deadline: float | None = None
    ) -> tuple[str, str] | None:
        try:
            response = await self._http.send(self._events_request(ranking_id), stream=True)
        except httpx.TransportError:
            return None
        try:
            if response.status_code in (404, 405, 429):  # no stream here, or none free: poll
                return None
            if response.is_error:
                await response.aread()
                raise TransferbenchError.from_response(response)
            parser = _Events()
            lines: AsyncIterator[str] = response.aiter_lines()
            async for line in lines:
                _check_deadline(ranking_id, deadline)
                event = parser.feed(line)
                if event and event[0] == "progress":
                    bar.update(RankingProgress.model_validate_json(event[1]))
                elif event and event[0] in _TERMINAL:
                    return event
        except httpx.TransportError:
            pass
        finally:
            await response.aclose()
        return None

    async def _poll(self, ranking_id: str, bar: _Bar, deadline: float | None) -> Ranking:
        tag = None
        while True:
            headers: dict[str, str] = {"If-None-Match": tag} if tag else {}
            request = self._request("GET", f"/v1/rankings/{ranking_id}", headers=headers)
            response = await self._send(request)
            if response.status_code != 304:
                tag = response.headers.get("etag")
                state = _parse(Ranking, response)
                bar.update(state)
                if state.status in _TERMINAL:
                    return state
            _check_deadline(ranking_id, deadline)
            await asyncio.sleep(POLL_S)

    async def finetune(
        self,
        dataset: Dataset | str,
        models: Sequence[Model | str],
        *,
        recipe: Mapping[str, Any] | None = None,
        per_class: int | None = None,
        keep_weights: bool = False,
        wait: bool = True,
        progress: FineTuneProgress = None,
        timeout: float | None = None,
        **fields: Unpack[RecipeFields],
    ) -> FineTune:
        body = _recipe(recipe, fields)
        job = await self._run(self._start_finetune(dataset, models, body, per_class, keep_weights))
        if not wait:
            return job
        return await self.wait_finetune(job, progress=progress, timeout=timeout)

    async def finetune_job(self, job: FineTuneSummary | str) -> FineTune:
        return await self._run(self._finetune_job(job))

    async def finetunes(
        self, status: str | None = None, dataset: Dataset | str | None = None
    ) -> list[FineTuneSummary]:
        return await self._run(self._finetunes(status, dataset))

    async def wait_finetune(
        self,
        job: FineTuneSummary | str,
        *,
        progress: FineTuneProgress = None,
        timeout: float | None = None,
    ) -> FineTune:
        deadline = None if timeout is None else time.monotonic() + timeout
        return _ended(await self._until_ended(_id(job), progress, deadline))

    async def _until_ended(
        self, job_id: str, progress: FineTuneProgress, deadline: float | None
    ) -> FineTune:
        bars = _RunBars(progress)
        try:
            while True:
                state = await self._run(self._finetune_job(job_id))
                bars.update(state)
                if state.status in _ENDED:
                    return state
                self._time_left(f"fine-tuning job {job_id}", deadline)
                await asyncio.sleep(POLL_S)
        finally:
            bars.close()

    async def cancel_finetune(self, job: FineTuneSummary | str) -> FineTune | None:
        return await self._run(self._cancel_finetune(job))

    async def download_weights(
        self, job: FineTuneSummary | str, model: Model | str, path: str | os.PathLike[str]
    ) -> Path:
        request = self._weights_request(job, model)
        try:
            response = await self._http.send(request, stream=True)
        except httpx.TransportError as exc:
            raise self._transport_error(exc) from exc
        try:
            if response.is_error:
                await response.aread()
                raise TransferbenchError.from_response(response)
            target = _weights_file(Path(path).expanduser(), response)
            partial = target.with_name(target.name + ".partial")
            with partial.open("wb") as out:
                async for chunk in response.aiter_bytes():
                    out.write(chunk)
            partial.replace(target)
        except httpx.TransportError as exc:
            raise self._transport_error(exc) from exc
        finally:
            await response.aclose()
        return target

    async def leaderboard(
        self, dataset: Dataset | str, metric: str = schemas.LEADERBOARD_DEFAULT_METRIC
    ) -> Leaderboard:
        return await self._run(self._leaderboard(dataset, metric))

    async def add_outcomes(
        self,
        dataset: Dataset | str,
        outcomes: Mapping[str, float] | Iterable[schemas.OutcomeIn | Mapping[str, Any]],
        *,
        measure: str = DEFAULT_MEASURE,
        higher_is_better: bool = True,
    ) -> list[Outcome]:
        return await self._run(self._add_outcomes(dataset, outcomes, measure, higher_is_better))

    async def outcomes(self, dataset: Dataset | str, measure: str | None = None) -> list[Outcome]:
        return await self._run(self._outcomes(dataset, measure))

    @overload
    async def evaluation(
        self, dataset: None = None, *, measure: str = ..., modality: str = ..., task: str = ...
    ) -> Evaluation: ...
    @overload
    async def evaluation(
        self, dataset: Dataset | str, *, measure: str = ..., modality: str = ..., task: str = ...
    ) -> DatasetEvaluation: ...
    async def evaluation(
        self,
        dataset: Dataset | str | None = None,
        *,
        measure: str = DEFAULT_MEASURE,
        modality: str = "image",
        task: str = "classification",
    ) -> DatasetEvaluation | Evaluation:
        return await self._run(self._evaluation(dataset, measure, modality, task))
