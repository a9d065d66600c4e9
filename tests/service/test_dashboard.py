"""The dashboard in a real browser against a real server.

Headless Chromium (Debian's ``chromium`` package) driven by Playwright's Python API loads
every page from uvicorn on 127.0.0.1, serving the embedded default (SQLite, a folder, the
in-process worker) with two real zoo models (and a second registration of one of them, so a
dataset has the three outcomes an evaluation needs) and a real upload of Fashion-MNIST PNGs.
Screenshots of every page at desktop width are taken and checked for size; they are written
to the folder ``TB_SCREENSHOTS`` names (``TB_SCREENSHOTS=docs/screenshots`` refreshes the
docs' screenshots), else to a temporary folder, so a test run leaves the checkout as it was.

Without /usr/bin/chromium or the ``playwright`` package the browser tests skip, saying what
is missing; under CI=true they fail instead.
"""

from __future__ import annotations

import io
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.db.session import Database
from app.services import apikeys
from app.web import sessions
from workers.settings import Settings

from ..conftest import fashion_zip
from .helpers import embedded, register_model, serve, wait_for_job

CHROMIUM = Path("/usr/bin/chromium")
SCREENSHOTS = Path(
    os.environ.get("TB_SCREENSHOTS") or tempfile.mkdtemp(prefix="tb-screenshots-")
).resolve()
SCREENSHOT_MAX_BYTES = 300_000
DESKTOP = {"width": 1280, "height": 900}
PHONE = {"width": 375, "height": 812}
PHONE_SHOTS = os.environ.get("TB_PHONE_SCREENSHOTS")  # a folder: phone-width shots to look at
MODELS = {
    "mobilenet-v2": "mobilenet-v2",
    "open-nsfw": "open-nsfw",
    "mobilenet-v2-b": "mobilenet-v2",
}
#: fine-tuning outcomes the test records (made up: the test checks the plumbing, not them)
OUTCOMES = {"mobilenet-v2": "91.5", "open-nsfw": "84.0", "mobilenet-v2-b": "89.25"}
EARLIER_OUTCOMES = {"mobilenet-v2": 78.0, "open-nsfw": 71.5, "mobilenet-v2-b": 80.25}


def _missing_browser() -> str | None:
    missing = []
    if not CHROMIUM.exists():
        missing.append(f"{CHROMIUM} (apt-get install chromium)")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        missing.append("the playwright package (pip install playwright; no browser download)")
    return "the browser tests need " + " and ".join(missing) if missing else None


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    reason = _missing_browser()
    if reason:
        if os.environ.get("CI", "").lower() in {"1", "true", "yes"}:
            pytest.fail(reason)
        pytest.skip(reason)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        yield chromium
        chromium.close()


@dataclass
class Server:
    url: str
    db: Database
    app: Any

    def api(self, **kwargs: Any) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=60, **kwargs)


def _serve(data_dir: Path, *, auth_required: bool) -> Iterator[Server]:
    """uvicorn on a free port in a thread, serving the embedded default."""
    settings = Settings(data_dir=data_dir, scheduler_tick_s=3600)
    with embedded(settings, auth_required=auth_required) as service, serve(service.app) as url:
        yield Server(url, service.db, service.app)


@pytest.fixture(scope="module")
def open_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The embedded default on localhost: no API keys, so no login."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        data_dir = tmp_path_factory.mktemp("open")
        mp.setenv("TB_DATA_DIR", str(data_dir))
        yield from _serve(data_dir, auth_required=False)


@pytest.fixture(scope="module")
def keyed_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        data_dir = tmp_path_factory.mktemp("keyed")
        mp.setenv("TB_DATA_DIR", str(data_dir))
        yield from _serve(data_dir, auth_required=True)


@pytest.fixture(scope="module")
def zip_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("upload") / "fashion-40.zip"
    path.write_bytes(fashion_zip(per_class=10))
    return path


def _watch(page: Any) -> list[str]:
    """Collect the page's console errors and failed requests (a CSP violation is one)."""
    problems: list[str] = []
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: problems.append(str(e)))
    return problems


def _screenshot(page: Any, name: str) -> None:
    """A full-page PNG at desktop width, kept under SCREENSHOT_MAX_BYTES (256 colours when
    the plain PNG is larger: the pages are flat colours and text)."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    data = page.screenshot(full_page=True, animations="disabled", caret="hide")
    if len(data) > SCREENSHOT_MAX_BYTES:
        from PIL import Image

        image = Image.open(io.BytesIO(data)).convert("RGB")
        out = io.BytesIO()
        image.quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(
            out, format="PNG", optimize=True
        )
        data = out.getvalue()
    (SCREENSHOTS / f"{name}.png").write_bytes(data)
    assert len(data) <= SCREENSHOT_MAX_BYTES * 1.5, f"{name}.png is {len(data)} bytes"


def _fits_phone(page: Any) -> None:
    """At 375 px nothing widens the page: wide tables scroll inside their own box (the
    charts redraw at the new width within a moment of the resize)."""
    page.set_viewport_size(PHONE)
    fits = (
        "() => Math.max(document.documentElement.scrollWidth, document.body.scrollWidth)"
        " <= window.innerWidth"
    )
    try:
        page.wait_for_function(fits, timeout=3000)
    except Exception:
        widths = page.evaluate("() => [document.documentElement.scrollWidth, window.innerWidth]")
        pytest.fail(f"{page.url} overflows at 375 px: {widths}")
    if PHONE_SHOTS:
        name = page.url.split("/dashboard", 1)[1].strip("/").split("/")[0] or "overview"
        page.screenshot(path=f"{PHONE_SHOTS}/{name}.png", full_page=True)
    page.set_viewport_size(DESKTOP)


def _earlier_dataset(api: httpx.Client) -> None:
    """Another dataset, ranked and with outcomes, through the API: the recommender then has
    another dataset to learn from, and the metrics page figures over two."""
    files = {"file": ("earlier.zip", fashion_zip(per_class=10, seed=1), "application/zip")}
    r = api.post("/v1/datasets", files=files, data={"name": "fashion-40-b"})
    assert r.status_code == 201, r.text
    dataset_id = r.json()["id"]
    r = api.post("/v1/rankings", json={"dataset_id": dataset_id})
    assert r.status_code == 202, r.text
    assert wait_for_job(api, r.json()["id"], timeout=120)["status"] == "done"
    outcomes = [{"model_id": m, "value": v} for m, v in EARLIER_OUTCOMES.items()]
    r = api.post(f"/v1/datasets/{dataset_id}/outcomes", json=outcomes)
    assert r.status_code == 200, r.text


@pytest.mark.slow
def test_dashboard_end_to_end(open_server: Server, browser: Any, zip_file: Path) -> None:
    """Upload from the browser, start a ranking, watch it finish live, record outcomes, see
    the evaluation; every page at desktop and phone width; a page without JavaScript."""
    with open_server.api() as api:
        for name, source in MODELS.items():
            assert register_model(api, name, source)["status"] == "ready"
        _earlier_dataset(api)

    context = browser.new_context(viewport=DESKTOP, base_url=open_server.url)
    page = context.new_page()
    problems = _watch(page)

    # No login without API keys: the overview straight away.
    page.goto("/dashboard/login")
    assert page.url.endswith("/dashboard")
    assert page.locator("h1").inner_text() == "Overview"
    _fits_phone(page)

    # A refused upload shows the server's problem+json as a sentence.
    page.goto("/dashboard/upload")
    page.set_input_files(
        "#file", {"name": "notes.txt", "mimeType": "text/plain", "buffer": b"not a dataset"}
    )
    page.click("[data-upload-submit]")
    alert = page.locator("[data-upload-error]")
    alert.wait_for(state="visible")
    assert "cannot tell the format of 'notes.txt'" in alert.inner_text()
    assert "Invalid request" in alert.inner_text()
    assert problems == ["Failed to load resource: the server responded with a status of 422 "
                        "(Unprocessable Entity)"]  # fmt: skip
    problems.clear()
    _fits_phone(page)

    # A real upload, with its progress bar, lands on the dataset's page.
    page.set_input_files("#file", str(zip_file))
    page.fill("#name", "fashion-40")
    page.click("[data-upload-submit]")
    page.wait_for_url("**/dashboard/datasets/*")
    dataset_id = page.url.rsplit("/", 1)[1]
    assert page.locator("h1").inner_text() == "fashion-40"
    assert "40" in page.locator(".stats").inner_text()
    assert page.locator(".chip").count() == 4  # four classes of ten
    assert "No scores yet" in page.locator("#leaderboard").inner_text()

    # The overview, opened before the ranking exists, shows it finish without a reload.
    watcher = context.new_page()
    watcher_problems = _watch(watcher)
    watcher.goto("/dashboard")
    watcher.evaluate("() => { window.__loaded_once = true; }")

    page.click("#rank button[type=submit]")
    page.wait_for_url(f"**/dashboard/datasets/{dataset_id}#rankings")
    page.evaluate("() => { window.__loaded_once = true; }")
    job_id = page.locator("#rankings tr[data-job]").first.get_attribute("data-job")
    page.locator(f'#rankings tr[data-job="{job_id}"][data-status="done"]').wait_for(timeout=120_000)
    finished = watcher.locator(f'tr[data-job="{job_id}"][data-status="done"]')
    finished.wait_for(timeout=30_000)
    assert watcher.evaluate("() => window.__loaded_once") is True  # updated in place
    assert "100%" in finished.inner_text()
    assert watcher.locator("[data-running-count]").inner_text() == "0"

    # The finished ranking's sections swap in without a reload: leaderboard, chart, heat-map.
    page.locator("[data-leaderboard-table]").wait_for(timeout=30_000)
    assert page.evaluate("() => window.__loaded_once") is True
    page.locator("#leaderboard-chart .main-svg").first.wait_for()
    assert page.locator("#metric").input_value() == "recommended"
    rows = page.locator("[data-leaderboard-table] tbody tr")
    assert rows.count() == 3
    heat = page.locator(".heatmap tbody tr")
    assert heat.count() == 3
    assert page.locator(".heatmap thead th").count() == 2 + 1 + 4  # model, rec, 4 metrics, spread
    # Switching the metric fetches /v1/datasets/{id}/leaderboard and redraws, no reload.
    page.select_option("#metric", "logme")
    page.wait_for_function(
        "() => document.querySelector('[data-leaderboard-table] thead th:nth-child(3)')"
        ".textContent === 'logme'"
    )
    assert "metric=logme" in page.url
    page.select_option("#metric", "recommended")
    # a page opened on another metric shows the trust note once the recommended order is
    # picked (it was never rendered, so switching could not show it)
    page.goto(f"/dashboard/datasets/{dataset_id}?metric=logme")
    note = page.locator("[data-recommendation-note]")
    assert note.count() == 1 and note.is_hidden()
    page.select_option("#metric", "recommended")
    note.wait_for(state="visible", timeout=10_000)

    # Outcomes through the form; the evaluation and the scatter appear.
    for i, model in enumerate(page.locator(".outcome-grid label").all_inner_texts(), start=1):
        page.fill(f"#value-{i}", OUTCOMES[model])
    page.click("[data-outcomes-form] button[type=submit]")
    # back on the dataset, showing the measure just saved
    saved = f"/dashboard/datasets/{dataset_id}?measure=finetune_top1#outcomes"
    page.wait_for_url(lambda url: url.endswith(saved))
    assert page.locator("[data-outcomes-table] tbody tr").count() == 3
    evaluation = page.locator("[data-evaluation-table]")
    assert "recommended" in evaluation.inner_text()
    assert evaluation.locator("tbody tr").count() == 6  # recommended, metric_only + 4 metrics
    page.locator("#scatter-chart .main-svg").first.wait_for()
    assert "weighted τ" in page.locator("#scatter-chart").inner_text()
    page.wait_for_timeout(300)  # let the charts settle before the screenshot
    _fits_phone(page)
    _screenshot(page, "dataset")

    # The metrics page: the evaluation across datasets, as a table and a chart.
    page.goto("/dashboard/metrics")
    table = page.locator("[data-metrics-table]")
    assert table.locator("tbody tr").count() == 6
    assert table.locator("tbody tr").first.inner_text().startswith("recommended")
    page.locator("#metrics-chart .main-svg").first.wait_for()
    page.select_option("#figure", "kendall_tau")
    _fits_phone(page)
    page.select_option("#figure", "weighted_tau")
    page.wait_for_timeout(300)
    _screenshot(page, "metrics")

    # The winner's model page: where it was ranked, and that it won there.
    winner = page.evaluate(
        f"async () => (await (await fetch('/v1/datasets/{dataset_id}/leaderboard"
        "?metric=recommended')).json()).entries[0]"
    )
    page.goto(f"/dashboard/models/{winner['model_id']}")
    assert page.locator("h1").inner_text() == winner["model"]
    ranked = page.locator("table").first
    assert "fashion-40" in ranked.inner_text() and "won" in ranked.inner_text().lower()
    _fits_phone(page)
    _screenshot(page, "model")

    page.goto("/dashboard")
    assert "fashion-40" in page.locator("#datasets-title + *, section").nth(1).inner_text()
    _fits_phone(page)
    _screenshot(page, "overview")

    page.goto("/dashboard/upload")
    _screenshot(page, "upload")

    # The charting library comes from this server (the plotly package), gzipped, cached.
    assert not [r for r in problems + watcher_problems if "plotly" in r or "Refused" in r]
    assert problems == [] and watcher_problems == [], problems + watcher_problems
    context.close()

    # Without JavaScript the same pages are server-rendered tables and working forms.
    plain = browser.new_context(viewport=PHONE, base_url=open_server.url, java_script_enabled=False)
    nojs = plain.new_page()
    nojs.goto(f"/dashboard/datasets/{dataset_id}?metric=logme")
    assert nojs.locator("[data-leaderboard-table] tbody tr").count() == 3
    assert nojs.locator("#leaderboard-chart").is_hidden()
    assert nojs.locator("#leaderboard button[type=submit]").is_visible()  # the "Show" button
    _fits_phone(nojs)
    nojs.goto("/dashboard/upload")  # the form posts to /dashboard/upload instead of /v1
    nojs.set_input_files("#file", str(zip_file))
    nojs.click("button[type=submit]")
    nojs.wait_for_url(f"**/dashboard/datasets/{dataset_id}")  # same content: the same dataset
    plain.close()
    with open_server.api() as api:
        html = api.get(f"/dashboard/datasets/{dataset_id}").text
    assert "<table" in html and "mobilenet-v2-b" in html and "data-leaderboard-table" in html


def test_dashboard_pages_explain_problems(open_server: Server) -> None:
    """Unknown ids are HTML pages that say what is wrong; forms refuse a missing token."""
    with open_server.api(follow_redirects=False) as api:
        r = api.get("/dashboard/datasets/no-such-id")
        assert r.status_code == 404
        assert r.headers["content-type"].startswith("text/html")
        assert "no dataset with id" in r.text
        r = api.post("/dashboard/datasets/no-such-id/schedule", data={"schedule": "0 3 * * *"})
        assert r.status_code == 403 and "security token" in r.text
        assert api.get("/dashboard/vendor/plotly-0.0.min.js").status_code == 404
        page = api.get("/dashboard/metrics").text  # a page with charts
        src = page.split('src="/dashboard/vendor/', 1)[1].split('"', 1)[0]
        js = api.get(f"/dashboard/vendor/{src}", headers={"accept-encoding": "gzip"})
        assert js.status_code == 200 and "plotly.js" in js.text[:200]
        assert (
            js.headers["content-encoding"] == "gzip" and "immutable" in js.headers["cache-control"]
        )
        assert "frame-ancestors 'none'" in api.get("/dashboard").headers["content-security-policy"]


@pytest.mark.slow
def test_a_refused_form_keeps_what_was_typed(open_server: Server, zip_file: Path) -> None:
    """A form refused came back with its defaults: a measure typed as lower-is-better went
    back to finetune_top1, higher, and its values were gone, so fixing one cell and saving
    stored a loss as a top-1 accuracy. It keeps what was typed; a saved measure is the one
    the page then shows, and its stored direction is preselected."""
    import re

    with open_server.api(follow_redirects=False) as api:
        assert register_model(api, "forms-net", "mobilenet-v2")["status"] == "ready"
        r = api.post("/v1/datasets", files={"file": ("forms.zip", zip_file.read_bytes())},
                     data={"name": "forms"})  # fmt: skip
        assert r.status_code in (200, 201), r.text
        page_url = f"/dashboard/datasets/{r.json()['id']}"
        page = api.get(page_url).text
        token = re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)
        model = re.search(r'name="value:([^"]+)"', page).group(1)
        form = {"csrf_token": token, "measure": "val_loss", "direction": "lower"}
        r = api.post(f"{page_url}/outcomes", data={**form, f"value:{model}": "abc"})
        assert r.status_code == 422 and "is not a number" in r.text
        assert 'value="val_loss"' in r.text and 'value="abc"' in r.text
        assert '<option value="lower" selected>' in r.text
        r = api.post(f"{page_url}/outcomes", data={**form, f"value:{model}": "0.15"})
        assert r.status_code == 303 and r.headers["location"].endswith(
            f"{page_url}?measure=val_loss#outcomes"
        )
        again = api.get(r.headers["location"].split("#")[0]).text
        assert '<option value="lower" selected>' in again and 'value="val_loss"' in again
        r = api.post(f"{page_url}/schedule", data={"csrf_token": token, "schedule": "every day"})
        assert r.status_code == 422 and 'value="every day"' in r.text


@pytest.mark.slow
def test_dashboard_with_api_keys(keyed_server: Server, browser: Any, zip_file: Path) -> None:
    """A key entered once becomes an HttpOnly, SameSite=Strict session cookie that holds
    neither the key nor its hash; it authorises the pages and their /v1 calls, state changes
    need its CSRF token, and a Bearer header is still judged on its own."""
    with keyed_server.db.session() as session:
        key = apikeys.create(session, "dashboard-test")
    context = browser.new_context(viewport=DESKTOP, base_url=keyed_server.url)
    page = context.new_page()
    problems = _watch(page)

    page.goto("/dashboard/metrics")
    assert "/dashboard/login?next=/dashboard/metrics" in page.url
    _screenshot(page, "login")
    page.fill("#key", "tb_not-a-key")
    page.click("button[type=submit]")
    assert "unknown or revoked" in page.locator("[role=alert]").inner_text()
    _fits_phone(page)
    page.fill("#key", key)
    page.click("button[type=submit]")
    page.wait_for_url("**/dashboard/metrics")

    (cookie,) = [c for c in context.cookies() if c["name"] == "tb_session"]
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    assert key not in cookie["value"] and apikeys.hash_key(key) not in cookie["value"]
    assert key not in page.content()
    assert page.evaluate("() => document.cookie") == ""

    # The page's own fetches: GETs ride on the cookie, a POST also needs the CSRF header.
    status = page.evaluate("async () => (await fetch('/v1/datasets')).status")
    assert status == 200
    no_token = page.evaluate(
        "async () => (await fetch('/v1/rankings', {method: 'POST', headers: "
        "{'content-type': 'application/json'}, body: '{}'})).status"
    )
    assert no_token == 403
    with_token = page.evaluate(
        "async () => (await window.transferbench.api('/v1/rankings', {method: 'POST', headers: "
        "{'content-type': 'application/json'}, body: JSON.stringify({dataset_id: 'nope'})})"
        ".catch(e => e)).status"
    )
    assert with_token == 404  # authorised; the dataset is what is missing
    assert len(problems) == 3  # the browser logged the refused login, the 403 and the 404
    problems.clear()

    # Uploading through the page: XHR to /v1/datasets on the cookie and the CSRF header.
    page.goto("/dashboard/upload")
    page.set_input_files("#file", str(zip_file))
    page.click("[data-upload-submit]")
    page.wait_for_url("**/dashboard/datasets/*")
    assert page.locator("h1").inner_text() == "fashion-40"
    assert problems == [], problems

    # The Bearer path is untouched: a wrong header fails even beside a valid cookie.
    cookies = {"tb_session": cookie["value"]}
    with keyed_server.api(cookies=cookies) as api:
        assert api.get("/v1/datasets").status_code == 200
        bad = api.get("/v1/datasets", headers={"authorization": "Bearer tb_wrong"})
        assert bad.status_code == 401
        assert (
            api.get("/v1/datasets", headers={"authorization": f"Bearer {key}"}).status_code == 200
        )
    with keyed_server.api(cookies={"tb_session": cookie["value"][:-2] + "xx"}) as forged:
        assert forged.get("/v1/datasets").status_code == 401
    with keyed_server.api() as api:
        assert api.get("/v1/datasets").status_code == 401

    # Revoking the key ends its sessions on their next request.
    from sqlalchemy import update

    from app.db.models import ApiKeyRow, now

    with keyed_server.db.session() as session:
        session.execute(update(ApiKeyRow).values(revoked_at=now()))
    with keyed_server.api(cookies=cookies, follow_redirects=False) as api:
        assert api.get("/v1/datasets").status_code == 401
        assert api.get("/dashboard").status_code == 303

    # Logging out drops the cookie.
    with keyed_server.db.session() as session:
        session.execute(update(ApiKeyRow).values(revoked_at=None))
    page.goto("/dashboard")
    page.click("text=Log out")
    page.wait_for_url("**/dashboard/login")
    assert not [c for c in context.cookies() if c["name"] == "tb_session"]
    context.close()


def test_session_tokens_are_signed_scoped_and_expire() -> None:
    secret = sessions.new_secret()
    token = sessions.issue(secret, "key-row-id")
    assert sessions.key_of(secret, token) == "key-row-id"
    assert sessions.key_of(sessions.new_secret(), token) is None  # another server's secret
    assert sessions.key_of(secret, token.replace("key-row-id", "other-rowid")) is None
    assert sessions.key_of(secret, sessions.issue(secret, "key-row-id", ttl_s=-1)) is None
    assert sessions.key_of(secret, "v1.x") is None and sessions.key_of(secret, "") is None
    assert sessions.new_secret("configured") == sessions.new_secret("configured")
    csrf = sessions.csrf_token(secret, token)
    assert sessions.csrf_ok(secret, token, csrf)
    assert not sessions.csrf_ok(secret, sessions.issue(secret, "key-row-id", ttl_s=60), csrf)
    assert not sessions.csrf_ok(secret, token, "") and not sessions.csrf_ok(secret, token, None)
