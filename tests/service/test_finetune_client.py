"""Fine-tuning from the user's side: the remote CLI (``finetune --server``, ``rank --verify
--server``), the Python client (``finetune``, ``rank(verify=...)``, the job helpers) and the
plain API give the same results, and the dashboard's dataset page shows them with each
model's learning curve. The embedded service on uvicorn (real HTTP) with its real worker
thread, real Fashion-MNIST images, the zoo's pretrained MobileNetV2 and the same architecture
randomly initialised (the pretrained one must win a verification)."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch
from fastapi.testclient import TestClient

from app.client import AsyncClient, Client, Dataset, TransferbenchError
from tests.conftest import fashion_zip
from workers.cli import main
from workers.cli.exits import EXIT_BAD_INPUT
from workers.cli.finetune import COLUMNS
from workers.settings import Settings

from .helpers import embedded, register_model, serve
from .test_dashboard import CHROMIUM, DESKTOP, SCREENSHOTS, _missing_browser, _watch
from .test_finetunes import random_mobilenet, wait_finetune

pytestmark = pytest.mark.slow

MODELS = ["mobilenet-v2", "random"]
#: head only, one epoch, 5 of each class held out, batch 16: seconds per model on a CPU
RECIPE = {"mode": "head", "epochs": 1, "validation": 5, "batch_size": 16}
CLI_RECIPE = ["--head-only", "--epochs", "1", "--validation", "5", "--batch-size", "16"]


@dataclass
class Live:
    url: str
    app: Any
    queue: Any
    zip_path: Path


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    """One embedded service on uvicorn for the module, the two models registered, and a zip
    of 4 classes x 25 real Fashion-MNIST images on disk."""
    data_dir = tmp_path_factory.mktemp("finetune-client")
    model_dir = data_dir / "models"
    model_dir.mkdir()
    zip_path = data_dir / "clothes.zip"
    zip_path.write_bytes(fashion_zip(per_class=25, classes=4, seed=11))
    with pytest.MonkeyPatch.context() as env:
        env.setenv("TB_DATA_DIR", str(data_dir / "cli"))  # the CLI's own, not the server's
        env.setenv("HF_HUB_OFFLINE", "1")
        for name in ("TB_SERVER", "TB_API_KEY"):
            env.delenv(name, raising=False)
        settings = Settings(data_dir=data_dir, model_dir=model_dir, scheduler_tick_s=3600)
        with embedded(settings, auth_required=False) as svc, serve(svc.app) as url:
            with httpx.Client(base_url=url, timeout=60) as http:
                for name, source in (("mobilenet-v2", "mobilenet-v2"),
                                     ("random", random_mobilenet(model_dir))):  # fmt: skip
                    assert register_model(http, name, source)["status"] == "ready"
            yield Live(url, svc.app, svc.queue, zip_path)


@pytest.fixture(scope="module")
def dataset(live: Live) -> Dataset:
    """The zip, uploaded (the CLI finds it there by its content)."""
    with Client(live.url) as tb:
        return tb.upload_dataset(live.zip_path, name="clothes")


def test_the_cli_the_api_and_the_client_give_the_same_results(
    live: Live, dataset: Dataset, capsys, tmp_path
):
    # the CLI: uploads the zip, fine-tunes on the server, prints the local command's JSON
    argv = ["finetune", str(live.zip_path), "--models", ",".join(MODELS), *CLI_RECIPE,
            "--format", "json", "--quiet", "--server", live.url]  # fmt: skip
    assert main(argv) == 0, capsys.readouterr().err
    rows = json.loads(capsys.readouterr().out)
    assert [r["model"] for r in rows] == MODELS  # in the order asked, as locally
    for row in rows:
        assert set(COLUMNS) <= set(row) and row["error"] is None
        assert row["epochs"] == 1 and row["device"] == "cpu" and row["seconds"] > 0
        assert (row["n_train"], row["n_validation"]) == (80, 20) and row["mode"] == "head"
        assert len(row["train_loss"]) == len(row["val_top1"]) == 1
    cli = {r["model"]: r["top1"] for r in rows}
    assert cli["mobilenet-v2"] > max(0.25, cli["random"])  # pretrained beats chance and noise

    with Client(live.url) as tb:
        assert [d.id for d in tb.datasets()] == [dataset.id]  # found, not uploaded again
        # the API, by hand
        with httpx.Client(base_url=live.url, timeout=60) as http:
            body = {"dataset_id": dataset.id, "model_ids": MODELS, "recipe": RECIPE}
            r = http.post("/v1/finetunes", json=body)
            assert r.status_code == 202, r.text
            api = wait_finetune(http, r.json()["id"])
        assert api["status"] == "done"
        # the client: recipe fields one by one, weights kept, each state polled handed over
        seen: list[Any] = []
        job = tb.finetune(dataset, MODELS, mode="head", epochs=1, validation=5,
                          recipe={"batch_size": 16}, keep_weights=True,
                          progress=seen.append)  # fmt: skip
        assert job.status == "done" and job.recipe == RECIPE
        assert seen[-1] == job and {s.status for s in seen} - {"done"} <= {"queued", "running"}
        path = tb.download_weights(job, "mobilenet-v2", tmp_path)
    saved = torch.load(path, weights_only=True)
    assert path.name.startswith("mobilenet-v2-finetuned") and len(saved["classes"]) == 4

    client = {r.model: r.top1 for r in job.results}
    assert {r["model"]: r["top1"] for r in api["results"]} == client == cli  # deterministic

    async def later() -> tuple[Any, ...]:
        async with AsyncClient(live.url) as tb:
            listed = await tb.finetunes(dataset=dataset)
            one = await tb.finetune_job(job.id)
            gone = await tb.cancel_finetune(job.id)  # an ended job is deleted
            with pytest.raises(TransferbenchError) as missing:
                await tb.finetune_job(job.id)
            return listed, one, gone, missing.value

    listed, one, gone, missing = asyncio.run(later())
    assert job.id in [j.id for j in listed] and {j.status for j in listed} == {"done"}
    assert one.results == job.results and gone is None and missing.status == 404


def test_bad_input_fails_before_anything_runs(live: Live, capsys):
    base = ["finetune", str(live.zip_path), "--quiet", "--server", live.url]
    assert main([*base, "--models", "mobilenet-v2,nope"]) == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert "--models" in err and "'nope'" in err and "mobilenet-v2" in err
    assert main([*base, "--models", "random", "--device", "cpu"]) == EXIT_BAD_INPUT
    assert "--device applies to local fine-tuning only" in capsys.readouterr().err
    with Client(live.url) as tb:
        for kwargs, words in (
            ({"epochs": 0}, "epochs"),
            ({"recipe": {"optimizer": "sgd"}}, "no field 'optimizer'"),
        ):
            with pytest.raises(TransferbenchError) as caught:
                tb.finetune("any", MODELS, **kwargs)
            assert words in caught.value.detail and caught.value.status is None  # not sent
        with pytest.raises(TransferbenchError) as caught:
            tb.rank("any", verify={"top_k": 0})
        assert "top_k" in caught.value.detail
    assert live.queue.wait_idle(30)


def test_rank_verify_on_the_server_stores_two_outcomes_and_names_the_winner(
    live: Live, dataset: Dataset, capsys
):
    argv = ["rank", str(live.zip_path), "--models", "random,mobilenet-v2", "--metrics", "logme",
            "--verify", "2", "--epochs", "1", "--head-only", "--format", "json", "--quiet",
            "--server", live.url]  # fmt: skip
    assert main(argv) == 0, capsys.readouterr().err
    out = json.loads(capsys.readouterr().out)
    assert {r["model"] for r in out["ranking"]} == set(MODELS)
    v = out["verification"]
    assert v["winner"] == "mobilenet-v2" and v["mode"] == "head" and v["epochs"] == 1
    assert v["held_out"]["samples"] == 20 and v["trained_on"] == 80
    assert [c["predicted_rank"] for c in v["candidates"]] == [1, 2]
    assert v["winner_top1"] == next(c["top1"] for c in v["candidates"] if c["model"] == v["winner"])
    assert sorted(v["outcomes"]["stored"]) == sorted(MODELS) and v["outcomes"]["not_stored"] == {}
    assert v["outcomes"]["dataset_id"] == dataset.id
    with Client(live.url) as tb:
        outcomes = tb.outcomes(dataset, "finetune_top1")
        job = tb.finetune_job(v["finetune_id"])
        names = {m.id: m.name for m in tb.models()}
    assert job.method == "halving" and job.status == "done"
    # two outcomes, both this verification's, each what it measured
    assert len(outcomes) == 2
    assert {o.details["finetune_id"] for o in outcomes} == {v["finetune_id"]}
    measured = {c["model"]: pytest.approx(100 * c["top1"]) for c in v["candidates"]}
    assert {names[o.model_id]: o.value for o in outcomes} == measured  # in percent


def test_the_client_waits_for_the_verification_and_the_table_names_the_winner(
    live: Live, dataset: Dataset, capsys
):
    with Client(live.url) as tb:
        ranking = tb.rank(dataset, MODELS, ["logme"], progress=False,
                          verify={"top_k": 2, **RECIPE})  # fmt: skip
    v = ranking.verification
    assert v is not None and v.status == "done" and v.winner == "mobilenet-v2"
    assert set(v.measured_order) == set(MODELS) and v.winner_top1 and v.winner_top1 > 0.25
    # the same verification again, as the CLI's table: the winner named, after the ranking;
    # on stderr a bar per model and round, counting its steps
    argv = ["rank", str(live.zip_path), "--models", "random,mobilenet-v2", "--metrics", "logme",
            "--verify", "2", "--epochs", "1", "--head-only", "--server", live.url]  # fmt: skip
    assert main(argv) == 0
    captured = capsys.readouterr()
    for model in MODELS:
        assert re.search(
            rf"{model} \(round 1\).*\| (\d+)/\1 \[.*done, top-1 0\.\d+", captured.err
        ), captured.err
    out = captured.out.splitlines()
    start = next(i for i, line in enumerate(out) if line.startswith("verified by fine-tuning"))
    assert f"on the server at {live.url}" in out[start] and "20 held-out samples" in out[start]
    assert re.search(r"Fine-tuning (confirms|disagrees).*mobilenet-v2 won", out[-1]), out[-1]


def test_the_dataset_page_shows_the_results_and_each_learning_curve(live: Live, dataset: Dataset):
    with Client(live.url) as tb:
        job = tb.finetune(dataset, ["mobilenet-v2"], recipe=RECIPE, epochs=2, progress=False)
        tuned = {j.id for j in tb.finetunes(dataset=dataset)}
    with TestClient(live.app) as client:
        page = client.get(f"/dashboard/datasets/{dataset.id}")
    assert page.status_code == 200
    html = page.text
    section = html[html.index('id="finetunes"') :]
    section = section[: section.index("</section>")]
    (run,) = job.runs
    row = next(r for r in section.split("<tr>") if ">mobilenet-v2</a>" in r)
    # in percent, as the outcome it stored beside it (it was the fraction: 1.000 beside 100.0)
    assert f"{100 * run.top1:.1f}%" in row and ">2<" in row and ">cpu<" in row and ">done<" in row
    assert job.id[:8] in row  # its newest run: this job's
    # a curve per model fine-tuned here (mobilenet-v2's: two epochs), its values beside it
    assert section.count("<svg") == section.count("data-curve") >= 1
    curve = section[section.index('data-curve="mobilenet-v2"') :]
    curve = curve[: curve.index("</li>")]
    assert curve.count("<polyline") == 2 and curve.count("<circle") == 4
    for loss, top1 in zip(run.train_loss, run.val_top1, strict=True):
        assert f"{loss:.3f}" in curve and f"{100 * top1:.1f}%" in curve
    assert all(j[:8] in section for j in tuned)  # every job listed


def test_the_curves_draw_in_a_browser(live: Live, dataset: Dataset):
    """Headless Chromium (skipped without it, as in ``test_dashboard.py``): the section and
    its curves render, with no console error (the page's CSP allows inline SVG)."""
    reason = _missing_browser()
    if reason:
        pytest.skip(reason)
    from playwright.sync_api import sync_playwright

    with Client(live.url) as tb:
        if not tb.finetunes(dataset=dataset):  # run alone: fine-tune something first
            tb.finetune(dataset, MODELS, recipe=RECIPE, progress=False)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        page = browser.new_page(viewport=DESKTOP)
        problems = _watch(page)
        page.goto(f"{live.url}/dashboard/datasets/{dataset.id}#finetunes")
        curves = page.locator("#finetunes svg")
        assert curves.count() == len(MODELS)
        box = curves.first.bounding_box()
        assert box is not None and box["width"] >= 150 and box["height"] >= 40
        assert page.locator("#finetunes [data-finetune-table] tbody tr").count() == len(MODELS)
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        page.locator("#finetunes").screenshot(path=str(SCREENSHOTS / "finetunes.png"))
        browser.close()
    assert problems == []
