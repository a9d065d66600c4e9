"""The Python client, the remote CLI and the HTTP features for dashboards built elsewhere
(conditional GETs, CORS, cursor pagination, the progress event stream), against a real server:
uvicorn on a free localhost port running the embedded default (SQLite, the in-process worker),
real zoo models and real Fashion-MNIST images."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import json
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from app.client import (
    AsyncClient,
    Client,
    DatasetEvaluation,
    Evaluation,
    Ranking,
    TransferbenchError,
)
from app.db.models import DatasetRow, ModelRow
from app.db.session import Database
from app.lifecycle import Task, Trigger, create_job
from app.web.main import create_app
from workers.cli import main
from workers.jobs.embedded import LocalQueue
from workers.settings import Settings

from ..conftest import fashion_zip
from .helpers import embedded, free_port, serve

MODELS = ["mobilenet-v2", "open-nsfw", "mnv2-copy"]  # the copy: same weights, cached features
METRICS = ["logme", "leep", "hscore_shrinkage"]
DASHBOARD = "http://dash.example"


@dataclass
class Live:
    url: str
    db: Database
    queue: LocalQueue
    reads: Any
    settings: Settings


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    data_dir = tmp_path_factory.mktemp("client")
    with pytest.MonkeyPatch.context() as env:
        env.setenv("TB_DATA_DIR", str(data_dir))
        env.setenv("HF_HUB_OFFLINE", "1")
        for name in ("TB_SERVER", "TB_API_KEY", "TB_CORS_ORIGINS"):
            env.delenv(name, raising=False)
        settings = Settings(data_dir=data_dir, scheduler_tick_s=3600, cors_origins=[DASHBOARD])
        with embedded(settings, auth_required=False) as service, serve(service.app) as url:
            with Client(url) as tb:
                for name in MODELS:
                    tb.register_model(name, "mobilenet-v2" if name == "mnv2-copy" else name)
            yield Live(url, service.db, service.queue, service.app.state.reads, settings)


@pytest.fixture(scope="module")
def zip_path(tmp_path_factory: pytest.TempPathFactory, small_zip: bytes) -> Path:
    path = tmp_path_factory.mktemp("zip") / "fashion.zip"
    path.write_bytes(small_zip)
    return path


@pytest.fixture(scope="module")
def ranked(live: Live, zip_path: Path) -> tuple[Any, Ranking]:
    """One upload and one ranking through the client, shared by the tests that read them."""
    with Client(live.url) as tb:
        dataset = tb.upload_dataset(zip_path)
        ranking = tb.rank(dataset, models=MODELS, metrics=METRICS, progress=False)
    return dataset, ranking


@pytest.fixture(scope="module")
def with_outcomes(live: Live, ranked) -> None:
    """Outcomes on the ranked dataset, and other datasets of the same scope (image
    classification) with outcomes, from a benchmark table; the recommender refitted."""
    dataset, _ = ranked
    table = ["dataset,model,finetune_top1,LogME"] + [
        f"set{d},net{m},{60 + 5 * m + d},{0.1 * m + 0.01 * d}" for d in range(4) for m in range(4)
    ]
    r = httpx.post(
        f"{live.url}/v1/benchmarks",
        files={"file": ("table.csv", "\n".join(table).encode())},
        data={"outcome": "finetune_top1"},
    )
    assert r.status_code == 201, r.text
    with Client(live.url) as tb:
        stored = tb.add_outcomes(dataset, {"mobilenet-v2": 91.0, "open-nsfw": 85.5})
        assert {(o.measure, o.value) for o in stored} == {
            ("finetune_top1", 91.0),
            ("finetune_top1", 85.5),
        }
        stored = tb.add_outcomes(dataset, [{"model_id": "mnv2-copy", "value": 90.0}])
        assert len(stored) == 3
    assert live.queue.wait_idle(60)


def _csv(i: int) -> bytes:
    rows = [f"sample {i} number {j},{'ab'[j % 2]}" for j in range(6)]
    return ("text,label\n" + "\n".join(rows)).encode()


@pytest.mark.slow
def test_client_uploads_ranks_and_reads_back(live: Live, ranked, zip_path: Path, tmp_path, capsys):
    dataset, ranking = ranked
    assert (dataset.name, dataset.n_samples, dataset.modality) == ("fashion", 40, "image")
    assert ranking.status == "done" and ranking.metrics == METRICS
    assert {r.model for r in ranking.results} == set(MODELS)
    assert ranking.recommendation is not None and "weights" in ranking.recommendation
    assert all(p.samples_done == 40 for p in ranking.progress)
    # the typed ranking is exactly the server's JSON
    raw = httpx.get(f"{live.url}/v1/rankings/{ranking.id}").json()
    assert json.loads(ranking.model_dump_json()) == raw

    with Client(live.url) as tb:
        # the same content again, as a folder zipped on the fly: the existing dataset
        folder = tmp_path / "clothes"
        zipfile.ZipFile(zip_path).extractall(folder)
        assert tb.upload_dataset(folder, name="other name").id == dataset.id
        assert tb.find_dataset(dataset.content_hash).id == dataset.id
        assert tb.find_dataset("0" * 64) is None
        assert dataset.id in {d.id for d in tb.datasets()}
        assert {m.name for m in tb.models()} >= set(MODELS)

        board = tb.leaderboard(dataset)
        assert board.metric == "recommended"
        # the same order (tied models, the copy and its original, share a rank)
        assert {e.model: e.rank for e in board.entries} == {
            r.model: r.rank for r in ranking.results
        }
        logme = tb.leaderboard(dataset.id, metric="logme")
        assert {e.model: e.value for e in logme.entries} == {
            r.model: r.scores["logme"] for r in ranking.results
        }

        # a second ranking on cached features, waited for on the event stream with a bar
        again = tb.rank(dataset, models=MODELS[:2], metrics=["logme"], progress=True)
    assert again.status == "done" and len(again.results) == 2
    assert "sample" in capsys.readouterr().err  # tqdm's bar went to stderr


@pytest.mark.slow
def test_outcomes_and_evaluation(live: Live, ranked, with_outcomes):
    dataset, _ = ranked
    with Client(live.url) as tb:
        assert len(tb.outcomes(dataset)) == 3
        assert tb.outcomes(dataset, measure="other") == []
        one = tb.evaluation(dataset)
        assert isinstance(one, DatasetEvaluation)
        assert one.models == 3 and {"logme", "recommended"} <= set(one.methods)
        assert one.compared == {m: 3 for m in one.methods}  # every model scored by every one
        overall = tb.evaluation()
        assert isinstance(overall, Evaluation)
        assert overall.datasets >= 4
        assert set(overall.coverage) == set(overall.mean)
        assert all(0 <= share <= 1 for share in overall.coverage.values())
        assert overall.coverage["recommended"] == 1.0
        assert overall.scope == "default:image/classification/finetune_top1"  # tenant:scope


@pytest.mark.slow
def test_errors_carry_the_problem_fields(live: Live, ranked, tmp_path: Path):
    dataset, _ = ranked
    with Client(live.url) as tb:
        with pytest.raises(TransferbenchError) as caught:
            tb.dataset("no-such-dataset")
        err = caught.value
        assert (err.status, err.title, err.type) == (404, "Not found", "about:blank")
        assert "no dataset with id" in err.detail and "404" in str(err)

        with pytest.raises(TransferbenchError) as caught:
            tb.rank(dataset, metrics=["nope"], progress=False)
        assert caught.value.status == 422 and "unknown metric" in caught.value.detail

        with pytest.raises(TransferbenchError) as caught:
            tb.rank(dataset, models=["no-such-model"], progress=False)
        assert caught.value.status == 422 and "'no-such-model'" in caught.value.detail
        with pytest.raises(TransferbenchError) as caught:  # one name, not its letters
            tb.rank(dataset, models="no-such-model", progress=False)
        assert "'no-such-model'" in caught.value.detail and "'n', 'o'" not in caught.value.detail

        # checked before sending, as the service would: its error type, never pydantic's
        for bad in ({"mobilenet-v2": float("nan")}, {"mobilenet-v2": "91.2%"}):
            with pytest.raises(TransferbenchError) as caught:
                tb.add_outcomes(dataset, bad)
            assert caught.value.title == "Invalid outcome" and "value" in caught.value.detail
        with pytest.raises(TransferbenchError, match="measure"):
            tb.add_outcomes(dataset, {"mobilenet-v2": 91.0}, measure="top 1")

        # a stream that outlasts the caller's timeout ends it, as polling did
        started = tb.rank(dataset, models=["mobilenet-v2"], metrics=["logme"], wait=False)
        with pytest.raises(TransferbenchError, match="did not finish in time"):
            tb.wait(started, progress=False, timeout=0.0)
        assert live.queue.wait_idle(60)

        bad = tmp_path / "notes.txt"
        bad.write_text("hello")
        with pytest.raises(TransferbenchError) as caught:
            tb.upload_dataset(bad)
        assert caught.value.status == 422 and "cannot tell the format" in caught.value.detail

        with pytest.raises(TransferbenchError) as caught:
            tb.evaluation(dataset, measure="never-measured")
        assert caught.value.status == 422 and caught.value.detail

    nowhere = Client(f"http://127.0.0.1:{free_port()}", timeout=2)
    with nowhere, pytest.raises(TransferbenchError) as caught:
        nowhere.models()
    assert caught.value.status is None and "cannot reach" in caught.value.detail


@pytest.mark.slow
def test_async_client_has_the_same_calls(live: Live, ranked):
    dataset, ranking = ranked

    async def scenario() -> tuple[Any, ...]:
        async with AsyncClient(live.url) as tb:
            datasets, models, board = await asyncio.gather(
                tb.datasets(), tb.models(), tb.leaderboard(dataset, "logme")
            )
            again = await tb.rank(dataset.id, models=MODELS, metrics=METRICS, progress=False)
            with pytest.raises(TransferbenchError) as caught:
                await tb.ranking("missing")
            return datasets, models, board, again, caught.value

    datasets, models, board, again, error = asyncio.run(scenario())
    assert dataset.id in {d.id for d in datasets} and len(models) >= 3
    assert board.metric == "logme" and len(board.entries) == 3
    metric_scores = lambda r: {m: r.scores[m] for m in METRICS}  # noqa: E731
    assert {r.model: metric_scores(r) for r in again.results} == {
        r.model: metric_scores(r) for r in ranking.results
    }  # the same stored scores (the recommended one may have been refitted since)
    assert error.status == 404


@pytest.mark.slow
def test_conditional_gets_answer_304_while_nothing_changed(live: Live, ranked, with_outcomes):
    dataset, ranking = ranked
    urls = [
        f"/v1/rankings/{ranking.id}",
        f"/v1/datasets/{dataset.id}/leaderboard?metric=logme",
        f"/v1/datasets/{dataset.id}/leaderboard?metric=recommended",
        f"/v1/datasets/{dataset.id}/evaluation",
        "/v1/evaluation?measure=finetune_top1",
    ]
    with httpx.Client(base_url=live.url) as http:
        for url in urls:
            first = http.get(url)
            assert first.status_code == 200, (url, first.text)
            tag = first.headers["etag"]
            digest = hashlib.sha256(first.content).hexdigest()[:32]
            assert tag == f'"{digest}"', url
            assert first.headers["cache-control"] == "no-cache"
            again = http.get(url, headers={"If-None-Match": tag})
            assert again.status_code == 304 and again.content == b"", url
            assert again.headers["etag"] == tag
            assert http.get(url, headers={"If-None-Match": f'"x", W/{tag}'}).status_code == 304
            assert http.get(url, headers={"If-None-Match": "*"}).status_code == 304
            other = http.get(url, headers={"If-None-Match": '"something-else"'})
            assert other.status_code == 200 and other.content == first.content


@pytest.mark.slow
def test_cors_headers_only_for_configured_origins(live: Live):
    with httpx.Client(base_url=live.url) as http:
        allowed = http.get("/v1/models", headers={"Origin": DASHBOARD})
        assert allowed.headers["access-control-allow-origin"] == DASHBOARD
        exposed = {
            h.strip().lower() for h in allowed.headers["access-control-expose-headers"].split(",")
        }
        assert {"etag", "location", "link", "x-next-cursor"} <= exposed
        preflight = http.options(
            "/v1/rankings",
            headers={
                "Origin": DASHBOARD,
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "authorization, content-type, if-none-match",
            },
        )
        assert preflight.status_code == 200
        assert preflight.headers["access-control-allow-origin"] == DASHBOARD
        assert "authorization" in preflight.headers["access-control-allow-headers"].lower()
        other = http.get("/v1/models", headers={"Origin": "http://evil.example"})
        assert other.status_code == 200 and "access-control-allow-origin" not in other.headers
    # TB_CORS_ORIGINS unset: no CORS headers at all
    settings = Settings(data_dir=live.settings.data_dir)
    plain = create_app(settings, queue=live.queue, db=live.db, auth_required=False)
    with TestClient(plain) as client:
        r = client.get("/v1/models", headers={"Origin": DASHBOARD})
        assert r.status_code == 200
        assert not [h for h in r.headers if h.startswith("access-control-")]


def _walk(http: httpx.Client, path: str, limit: int, **params: str) -> list[dict]:
    items, cursor, pages = [], None, 0
    while True:
        query = {**params, "limit": str(limit), **({"cursor": cursor} if cursor else {})}
        r = http.get(path, params=query)
        assert r.status_code == 200, r.text
        page = r.json()
        assert isinstance(page, list) and len(page) <= limit
        items += page
        pages += 1
        cursor = r.headers.get("x-next-cursor")
        if cursor is None:
            assert "link" not in r.headers
            return items
        link = r.headers["link"]
        assert link.endswith('>; rel="next"') and f"cursor={cursor}" in link
        assert pages < 100


@pytest.mark.slow
def test_pagination_walks_every_item_once(live: Live, ranked, with_outcomes):
    dataset, _ = ranked
    with httpx.Client(base_url=live.url) as http:
        for i in range(5):
            r = http.post(
                "/v1/datasets", files={"file": (f"t{i}.csv", _csv(i))}, data={"name": f"t{i}"}
            )
            assert r.status_code == 201, r.text
        everything = http.get("/v1/datasets").json()
        assert len(everything) >= 6 and "x-next-cursor" not in http.get("/v1/datasets").headers
        walked = _walk(http, "/v1/datasets", 2)
        assert [d["id"] for d in walked] == [d["id"] for d in everything]  # same order, once each

        # a dataset added during the walk (newest first: before the cursor) changes nothing
        first = http.get("/v1/datasets", params={"limit": 3})
        http.post("/v1/datasets", files={"file": ("late.csv", _csv(99))}, data={"name": "late"})
        rest = http.get(
            "/v1/datasets", params={"limit": 100, "cursor": first.headers["x-next-cursor"]}
        )
        assert [d["id"] for d in first.json() + rest.json()] == [d["id"] for d in everything]
        # following the Link header itself works too
        link = first.headers["link"].split(";")[0].strip("<>")
        assert http.get(link).json()[0]["id"] == everything[3]["id"]

        models = _walk(http, "/v1/models", 1)
        assert [m["name"] for m in models] == [m["name"] for m in http.get("/v1/models").json()]
        assert len({m["id"] for m in models}) == len(models) >= 3
        held = [_held_job(live, dataset.id) for _ in range(2)]  # two more rankings, queued
        rankings = _walk(http, "/v1/rankings", 1)
        assert len({r["id"] for r in rankings}) == len(rankings) >= 3
        assert [r["id"] for r in rankings] == [r["id"] for r in http.get("/v1/rankings").json()]
        queued = _walk(http, "/v1/rankings", 1, status="queued")
        assert {r["id"] for r in queued} >= {job_id for job_id, _ in held}
        assert {r["status"] for r in queued} == {"queued"}
        for _, tasks in held:
            tasks.release(live.queue)
        outcomes = _walk(http, f"/v1/datasets/{dataset.id}/outcomes", 2)
        assert outcomes == http.get(f"/v1/datasets/{dataset.id}/outcomes").json()

        models_cursor = http.get("/v1/models", params={"limit": 1}).headers["x-next-cursor"]
        bad_cursors = [
            "garbage!",
            base64.urlsafe_b64encode(b'{"l":"datasets","k":[1]}').decode(),
            models_cursor,  # another list's cursor
        ]
        for cursor in bad_cursors:
            r = http.get("/v1/datasets", params={"cursor": cursor})
            assert r.status_code == 422, (cursor, r.text)
            assert r.headers["content-type"] == "application/problem+json"
            assert "cursor" in r.json()["detail"]
        assert http.get("/v1/models", params={"limit": 0}).status_code == 422
    with Client(live.url) as tb, httpx.Client(base_url=live.url) as http:
        # the client follows the cursors (pages of 1000)
        assert [d.id for d in tb.datasets()] == [d["id"] for d in _walk(http, "/v1/datasets", 7)]


class _Held:
    """A dispatcher that keeps the tasks of a new job until ``release`` (so that a test can
    watch a job that is still queued); the real in-process queue runs them after."""

    def __init__(self) -> None:
        self.tasks: list[tuple[Task, list[Any]]] = []

    def enqueue(self, task: Task, args: Any) -> None:
        self.tasks.append((task, list(args)))

    def release(self, queue: LocalQueue) -> None:
        for task, args in self.tasks:
            queue.enqueue(task, args)


def _held_job(live: Live, dataset_id: str) -> tuple[str, _Held]:
    held = _Held()
    with live.db.session() as s:
        dataset = s.get(DatasetRow, dataset_id)
        models = list(s.scalars(select(ModelRow).where(ModelRow.name.in_(MODELS[:2]))))
        job_id = create_job(s, held, dataset, models, ["logme"], trigger=Trigger.API).id
    return job_id, held


def _events(response: httpx.Response) -> Iterator[tuple[str, str]]:
    name, data = "message", []
    for line in response.iter_lines():
        if not line:
            if data:
                yield name, "\n".join(data)
            name, data = "message", []
        elif line.startswith("event:"):
            name = line[6:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].strip())


@pytest.mark.slow
def test_event_stream_sends_progress_then_the_final_ranking(live: Live, ranked):
    dataset, _ = ranked
    job_id, held = _held_job(live, dataset.id)
    seen: list[tuple[str, str]] = []
    with httpx.Client(base_url=live.url, timeout=60) as http:
        with http.stream("GET", f"/v1/rankings/{job_id}/events") as r:
            assert r.status_code == 200
            assert r.headers["content-type"].startswith("text/event-stream")
            for name, data in _events(r):
                seen.append((name, data))
                if len(seen) == 1:
                    held.release(live.queue)  # now let the worker run it
        names = [name for name, _ in seen]
        assert names[0] == "progress" and names[-1] == "done" and names.count("done") == 1
        first = json.loads(seen[0][1])
        assert set(first) == {"id", "status", "error", "progress"}
        assert first["status"] == "queued" and len(first["progress"]) == 2
        assert len({data for name, data in seen if name == "progress"}) == names.count("progress")
        final = Ranking.model_validate_json(seen[-1][1])
        assert final.status == "done" and len(final.results) == 2
        assert json.loads(seen[-1][1]) == http.get(f"/v1/rankings/{job_id}").json()

        # a finished ranking: its final event at once, then the stream ends
        start = time.monotonic()
        with http.stream("GET", f"/v1/rankings/{job_id}/events") as r:
            again = list(_events(r))
        assert [name for name, _ in again] == ["done"] and time.monotonic() - start < 2
        missing = http.get("/v1/rankings/nope/events")
        assert missing.status_code == 404
        assert missing.headers["content-type"] == "application/problem+json"


@pytest.mark.slow
def test_event_stream_stops_polling_when_the_client_leaves(live: Live, ranked, monkeypatch):
    dataset, _ = ranked
    job_id, held = _held_job(live, dataset.id)  # stays queued: the stream would go on forever
    polls = []
    original = live.reads.ranking

    def counting(job: str, tenant: str | None) -> bytes:
        polls.append(time.monotonic())
        return original(job, tenant)

    monkeypatch.setattr(live.reads, "ranking", counting)
    with httpx.Client(base_url=live.url, timeout=30) as http:
        with http.stream("GET", f"/v1/rankings/{job_id}/events") as r:
            events = _events(r)  # (kept: dropping the generator would close the stream)
            name, _ = next(events)
            assert name == "progress"
            time.sleep(1.2)  # a couple of polls while connected
        left = time.monotonic()
    assert len(polls) >= 2
    time.sleep(1.5)
    assert len([t for t in polls if t > left + 0.6]) == 0  # at most the poll in flight
    held.release(live.queue)


def _newest_ranking(live: Live) -> dict:
    (summary,) = httpx.get(f"{live.url}/v1/rankings", params={"limit": 1}).json()
    return httpx.get(f"{live.url}/v1/rankings/{summary['id']}").json()


def _count_datasets(live: Live) -> int:
    return len(httpx.get(f"{live.url}/v1/datasets", params={"limit": 1000}).json())


@pytest.mark.slow
def test_remote_cli_prints_the_servers_ranking(
    live: Live, ranked, zip_path: Path, capsys, monkeypatch
):
    dataset, _ = ranked
    n_datasets = _count_datasets(live)
    args = ["rank", str(zip_path), "--server", live.url, "--models", ",".join(MODELS),
            "--metrics", ",".join(METRICS), "--quiet"]  # fmt: skip
    assert main([*args, "--format", "json"]) == 0, capsys.readouterr().err
    rows = json.loads(capsys.readouterr().out)
    server = _newest_ranking(live)
    assert server["dataset_id"] == dataset.id and server["metrics"] == METRICS
    assert rows == [{k: r[k] for k in ("model", "rank", "scores")} for r in server["results"]]
    assert list(rows[0]["scores"]) == ["recommended", *METRICS]
    assert _count_datasets(live) == n_datasets  # the server held the content: no upload

    monkeypatch.setenv("TB_SERVER", live.url)  # the server from the environment
    assert main([a for a in args if a not in ("--server", live.url)] + ["--format", "csv"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == ",".join(["rank", "model", "recommended", *METRICS])
    server = _newest_ranking(live)
    assert [line.split(",")[:2] for line in lines[1:]] == [
        [str(r["rank"]), r["model"]] for r in server["results"]
    ]
    assert main(["rank", dataset.id, "--models", "open-nsfw", "--metrics", "logme"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == ["rank", "model", "recommended", "logme"]
    assert table[2].split()[:2] == ["1", "open-nsfw"]

    # a folder the server lacks: zipped on the fly and uploaded
    folder = zip_path.parent / "folder" / "shoes"
    zipfile.ZipFile(io.BytesIO(fashion_zip(per_class=3, classes=2, seed=3))).extractall(folder)
    code = main(["rank", str(folder), "--models", "mobilenet-v2", "--metrics", "logme",
                 "--format", "json", "--quiet"])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    assert [r["model"] for r in json.loads(capsys.readouterr().out)] == ["mobilenet-v2"]
    assert _count_datasets(live) == n_datasets + 1

    # errors: one line on stderr, exit 2
    assert main(["rank", str(zip_path), "--metrics", "nope", "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("transferbench: error: unknown metric")
    assert main(["rank", str(zip_path), "--seed", "3", "--quiet"]) == 2
    assert "--seed" in capsys.readouterr().err
    monkeypatch.setenv("TB_SERVER", f"http://127.0.0.1:{free_port()}")
    assert main(["rank", str(zip_path), "--quiet"]) == 2
    assert capsys.readouterr().err.startswith("transferbench: error: cannot reach")


def test_the_client_needs_no_server_code():
    """Importable with httpx and pydantic alone: no database, web framework, torch or CLI."""
    import subprocess
    import sys

    code = (
        "import sys, app.client;"
        "print(sorted({m.split('.')[0] for m in sys.modules} & "
        "{'sqlalchemy', 'fastapi', 'starlette', 'torch', 'workers', 'scoring', 'numpy'}))"
    )
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=root)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_the_clients_public_surface_is_its_all():
    import inspect

    import app.client as client

    public = {  # the classes it defines or hands out
        name
        for name, value in vars(client).items()
        if not name.startswith("_")
        and isinstance(value, type)
        and value.__module__ in {"app.client", "app.schemas"}
    }
    assert public == set(client.__all__)
    assert client.__all__ == sorted(client.__all__)
    assert all(inspect.getdoc(getattr(client, name)) for name in client.__all__)
    sync = {n for n in vars(client.Client) if not n.startswith("_")} - {"close"}
    aio = {n for n in vars(client.AsyncClient) if not n.startswith("_")} - {"aclose"}
    assert sync == aio  # the same calls, sync and async


def test_a_failed_rankings_error_names_each_models_reason() -> None:
    """The job's own error says only "every model failed; see the per-model errors", which
    the caller of ``wait`` could not see: each model's reason is in the message, and the
    ranking in ``extra``."""
    import json

    from app.client import _final

    progress = [{"model_id": "m1", "model": "minilm-l6", "error": "no 'text' column"}]
    body = {"id": "r1", "status": "failed", "error": "every model failed", "progress": progress}
    with pytest.raises(TransferbenchError) as caught:
        _final("r1", "failed", json.dumps(body))
    assert "minilm-l6: no 'text' column" in caught.value.detail
    assert caught.value.extra["ranking"]["id"] == "r1"
