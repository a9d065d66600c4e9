"""A typed Python client of the transferbench service: ``Client`` (sync) and ``AsyncClient``
(async), with the same methods.

    from app.client import Client

    with Client("http://localhost:8000") as tb:  # key: api_key=... or TB_API_KEY
        dataset = tb.upload_dataset("photos/")  # a folder is zipped on the fly
        ranking = tb.rank(dataset, metrics=["logme", "leep"])  # waits, with a progress bar
        best = ranking.results[0].model
        tb.add_outcomes(dataset, {best: 91.2})
        tb.leaderboard(dataset).entries

Answers are the service's own response models (``app.schemas``). Every answer other than
2xx, a failed ranking and an unreachable server raise one exception, ``TransferbenchError``,
with the problem+json fields (``status``, ``title``, ``detail``, ``type``).

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
from collections.abc import AsyncIterator, Generator, Iterable, Mapping, Sequence
from contextlib import ExitStack
from pathlib import Path
from types import TracebackType
from typing import Any, Self, TypeVar, overload

import httpx
from pydantic import BaseModel, ValidationError

from app import schemas

__all__ = [
    "AsyncClient",
    "Client",
    "Dataset",
    "DatasetEvaluation",
    "Evaluation",
    "Leaderboard",
    "Model",
    "Outcome",
    "Ranking",
    "RankingProgress",
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

DEFAULT_TIMEOUT_S = 30.0
DEFAULT_MEASURE: str = schemas.OutcomeIn.model_fields["measure"].default
POLL_S = 0.5
PAGE = 1000  # the service's largest page
_SLOW = httpx.Timeout(DEFAULT_TIMEOUT_S, read=None, write=None)  # uploads, loading weights
_TERMINAL = {"done", "failed"}

T = TypeVar("T")
M = TypeVar("M", bound=BaseModel)
HasId = schemas.DatasetOut | schemas.ModelOut | schemas.RankingSummary
# One operation, written once for both clients: it yields requests and is sent their responses.
Op = Generator[httpx.Request, httpx.Response, T]


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
    def _model_keys(models: Sequence[Model | str]) -> list[str]:
        """Models given as Model, id or name, as the service takes them: ids or names (it
        answers 422 naming any it does not know)."""
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
    ) -> Op[Ranking]:
        body: dict[str, Any] = {"dataset_id": _id(dataset)}
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
        if isinstance(outcomes, Mapping):
            entries = [
                schemas.OutcomeIn(
                    model_id=model, value=value, measure=measure, higher_is_better=higher_is_better
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


def _final(ranking_id: str, name: str, data: str) -> Ranking:
    """The ranking of a ``done`` event; a ``failed`` one raises."""
    if name == "done":
        return Ranking.model_validate_json(data)
    error = json.loads(data).get("error") or "no reason was recorded"
    raise TransferbenchError(f"ranking {ranking_id} failed: {error}", title="Ranking failed")


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
    ) -> Ranking:
        """Start ranking ``models`` (names or ids; default: every model for the dataset's
        modality) on ``dataset`` with ``metrics`` (default: the service's). With ``wait``,
        return the finished ranking (results best first, and its ``recommendation``),
        showing a progress bar on stderr when ``progress``; a failed ranking raises.
        ``layers``: ``"last"``, ``"all"`` or indices; each result then has its scores per
        layer and its best layer (``layer_mean``: and the mean of the chosen layers)."""
        started = self._run(self._start(dataset, models, metrics, per_class, layers, layer_mean))
        return self.wait(started, progress=progress) if wait else started

    def ranking(self, ranking: Ranking | str) -> Ranking:
        return self._run(self._ranking(ranking))

    def rankings(self, status: str | None = None) -> list[schemas.RankingSummary]:
        """Every ranking (or those in ``status``), newest first."""
        return self._run(self._rankings(status))

    def wait(
        self, ranking: Ranking | str, *, progress: bool = True, timeout: float | None = None
    ) -> Ranking:
        """Wait for the ranking to finish (its event stream; polling if the stream breaks)."""
        ranking_id = _id(ranking)
        deadline = None if timeout is None else time.monotonic() + timeout
        bar = _Bar(progress, ranking_id)
        try:
            final = self._stream(ranking_id, bar)
            if final is not None:
                return _final(ranking_id, *final)
            return _finished(self._poll(ranking_id, bar, deadline))
        finally:
            bar.close()

    def _stream(self, ranking_id: str, bar: _Bar) -> tuple[str, str] | None:
        """The final event, or None when the stream could not be followed to its end."""
        try:
            response = self._http.send(self._events_request(ranking_id), stream=True)
        except httpx.TransportError:
            return None
        try:
            if response.status_code in (404, 405):  # no stream here (or no such ranking)
                return None
            if response.is_error:
                response.read()
                raise TransferbenchError.from_response(response)
            parser = _Events()
            for line in response.iter_lines():
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
            if deadline is not None and time.monotonic() > deadline:
                raise TransferbenchError(f"ranking {ranking_id} did not finish in time")
            time.sleep(POLL_S)

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
    ) -> Ranking:
        started = await self._run(
            self._start(dataset, models, metrics, per_class, layers, layer_mean)
        )
        return await self.wait(started, progress=progress) if wait else started

    async def ranking(self, ranking: Ranking | str) -> Ranking:
        return await self._run(self._ranking(ranking))

    async def rankings(self, status: str | None = None) -> list[schemas.RankingSummary]:
        return await self._run(self._rankings(status))

    async def wait(
        self, ranking: Ranking | str, *, progress: bool = True, timeout: float | None = None
    ) -> Ranking:
        ranking_id = _id(ranking)
        deadline = None if timeout is None else time.monotonic() + timeout
        bar = _Bar(progress, ranking_id)
        try:
            final = await self._stream(ranking_id, bar)
            if final is not None:
                return _final(ranking_id, *final)
            return _finished(await self._poll(ranking_id, bar, deadline))
        finally:
            bar.close()

    async def _stream(self, ranking_id: str, bar: _Bar) -> tuple[str, str] | None:
        try:
            response = await self._http.send(self._events_request(ranking_id), stream=True)
        except httpx.TransportError:
            return None
        try:
            if response.status_code in (404, 405):
                return None
            if response.is_error:
                await response.aread()
                raise TransferbenchError.from_response(response)
            parser = _Events()
            lines: AsyncIterator[str] = response.aiter_lines()
            async for line in lines:
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
            if deadline is not None and time.monotonic() > deadline:
                raise TransferbenchError(f"ranking {ranking_id} did not finish in time")
            await asyncio.sleep(POLL_S)

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
