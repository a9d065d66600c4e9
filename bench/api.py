"""Load benchmark of the API against a deployment it starts itself.

The deployment: a PostgreSQL database created for the run (dropped after), Redis,
``transferbench serve --workers N`` as a subprocess (uvicorn processes, API keys required)
and one Celery worker (``--concurrency 1``) for the rankings the writes queue. The load
generator is a process of its own (asyncio + httpx, keep-alive connections), pinned with
``os.sched_setaffinity`` to a core the API processes are not pinned to when the machine has
more cores than API processes; otherwise it shares a core with them, and the output says so.
PostgreSQL, Redis and the Celery worker are not pinned.

(a) reads: ``GET /v1/datasets/{id}/leaderboard`` (logme and recommended) and
    ``GET /v1/rankings/{id}`` of a finished ranking, 50 concurrent clients, with
    ``--workers 1`` and ``--workers 2``: p50 / p95 / p99 latency and requests per second.
    First the same reads through the full stack (``TB_FAST_READS=off``, ``--workers 1``),
    so the fast reads' gain is a ratio measured side by side in one run.
(b) mixed: 200 concurrent clients reading leaderboards, rankings and lists, posting
    outcomes (each client group on its own datasets), uploading small text datasets and
    asking for rankings (``--workers 2``): errors (must be 0) and p99, per operation and
    overall.

Before each measurement the machine must be quiet (the worker's leftover work done); each
row reports ``steal``, the share of CPU time the hypervisor gave to other machines meanwhile:
on a shared virtual machine, compare rows of one run, not figures of different days.

Each group of 10 clients sends its own API key. ``TB_RATE_LIMIT_PER_MIN`` and
``TB_TENANT_MAX_ACTIVE_JOBS`` are set far above what the run reaches (the limiter still
counts every request in Redis), so a 429 would be a failure of the service, not of the plan.

Run from the repository root (PostgreSQL and Redis must be up: ``make services``):

    .venv/bin/python bench/api.py           # the full run (about 4 minutes on 2 cores)
    .venv/bin/python bench/api.py --quick   # a short smoke run

Prints a table and writes ``bench/results/api.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import platform
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
PG_ADMIN = os.environ.get(
    "TB_BENCH_PG_ADMIN", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)
REDIS = os.environ.get("TB_BENCH_REDIS", "redis://127.0.0.1:6379/14")
TEXT_MODELS = ("minilm-l6", "minilm-intent")
GROUP = 10  # clients per API key
IDLE_S = 4.0  # a keep-alive connection idle this long is replaced before it is used
LIMITS = {"TB_RATE_LIMIT_PER_MIN": "100000000", "TB_TENANT_MAX_ACTIVE_JOBS": "100000"}

TOPICS = {
    "sport": "the {} team won the match after a late goal in the {} half",
    "weather": "expect {} rain and strong wind across the coast on {} morning",
    "cooking": "simmer the {} sauce for ten minutes and then add {} and stir gently",
}
WORDS = ("home", "away", "heavy", "light", "tomato", "garlic", "first", "second", "cold", "warm")


def texts_csv(tag: str, per_class: int = 10) -> bytes:
    """A small text classification CSV (30 rows); ``tag`` makes its content new."""
    lines = ["text,label"]
    for label, template in TOPICS.items():
        for i in range(per_class):
            a, b = (
                WORDS[(i + len(tag)) % len(WORDS)],
                WORDS[(3 * i + sum(map(ord, tag))) % len(WORDS)],
            )
            lines.append(f"{template.format(a, b)} ({tag}.{i}),{label}")
    return "\n".join(lines).encode()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


# -- the load generator (a process of its own) -------------------------------------------------


class Connection:
    """One keep-alive HTTP/1.1 connection, requests one at a time (a closed-loop client).

    Not httpx: on this kind of machine its AsyncClient spends about 3 ms of CPU per request
    and, with 50 connections, tops out near 70 requests/s on its core, so it measured itself
    rather than the API. This client writes each request in one call and reads the answer by
    its Content-Length (or chunks): tens of microseconds per request.
    """

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.used = 0.0

    async def request(
        self, method: str, path: str, headers: dict[str, str], body: bytes = b""
    ) -> tuple[int, bytes]:
        if self.writer is not None and time.monotonic() - self.used > IDLE_S:
            self.close()  # the server may be closing it (uvicorn keeps idle ones 5 s)
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        assert self.reader is not None
        lines = [f"{method} {path} HTTP/1.1", f"Host: {self.host}:{self.port}"]
        lines += [f"{k}: {v}" for k, v in headers.items()]
        if body or method != "GET":
            lines.append(f"Content-Length: {len(body)}")
        try:
            self.writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
            head = await self.reader.readuntil(b"\r\n\r\n")
            status_line, *header_lines = head.decode("latin-1").split("\r\n")
            status = int(status_line.split(" ", 2)[1])
            fields = {}
            for line in header_lines:
                if line:
                    name, _, value = line.partition(":")
                    fields[name.strip().lower()] = value.strip()
            if "content-length" in fields:
                data = await self.reader.readexactly(int(fields["content-length"]))
            elif fields.get("transfer-encoding") == "chunked":
                data = b""
                while size := int((await self.reader.readuntil(b"\r\n")).strip(), 16):
                    data += (await self.reader.readexactly(size + 2))[:-2]
                await self.reader.readuntil(b"\r\n")
            else:
                data = b""  # 204, 304
            if fields.get("connection") == "close":
                self.close()
            self.used = time.monotonic()
            return status, data
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


def multipart(fields: dict[str, str], filename: str, content: bytes) -> tuple[str, bytes]:
    """(content type, body) of a form with text ``fields`` and one ``file``."""
    boundary = uuid.uuid4().hex
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
        for k, v in fields.items()
    ]
    parts.append(
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{filename}"'
        f"\r\nContent-Type: text/csv\r\n\r\n".encode()
        + content
        + b"\r\n"
    )
    parts.append(f"--{boundary}--\r\n".encode())
    return f"multipart/form-data; boundary={boundary}", b"".join(parts)


def _generate(spec: dict[str, Any], out: Any) -> None:
    """Run ``spec`` (closed-loop clients for ``seconds``) and put what was measured on ``out``."""
    if spec["core"] is not None:
        os.sched_setaffinity(0, {spec["core"]})
    try:
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    except ImportError:
        pass
    host, port = spec["base"].removeprefix("http://").rsplit(":", 1)
    keys: list[str] = spec["keys"]
    known: dict[str, list[str]] = {k: list(v) for k, v in spec.get("known", {}).items()}
    made = Counter[str]()
    JSON = {"Content-Type": "application/json"}

    def headers(i: int) -> dict[str, str]:
        return {"Authorization": f"Bearer {keys[(i // GROUP) % len(keys)]}"}

    async def get(conn: Connection, i: int, rng: random.Random) -> tuple[str, int]:
        path = spec["paths"][i % len(spec["paths"])]
        return path, (await conn.request("GET", path, headers(i)))[0]

    async def mixed(conn: Connection, i: int, rng: random.Random) -> tuple[str, int]:
        h = headers(i)
        op = rng.choices(list(spec["mix"]), weights=list(spec["mix"].values()))[0]
        if op == "GET leaderboard":
            metric = rng.choice(("logme", "leep", "recommended"))
            path = f"/v1/datasets/{rng.choice(known['datasets'])}/leaderboard?metric={metric}"
            return op, (await conn.request("GET", path, h))[0]
        if op == "GET ranking":
            path = f"/v1/rankings/{rng.choice(known['jobs'])}"
            return op, (await conn.request("GET", path, h))[0]
        if op == "GET list":
            path = rng.choice(("/v1/datasets?limit=20", "/v1/models", "/v1/rankings?limit=20"))
            return op, (await conn.request("GET", path, h))[0]
        if op == "POST outcomes":
            # a client records fine-tuning results of its own group's datasets
            path = f"/v1/datasets/{rng.choice(known[f'group-{i // GROUP}'])}/outcomes"
            body = [{"model_id": m, "value": round(rng.uniform(50, 95), 2)} for m in TEXT_MODELS]
            return op, (await conn.request("POST", path, {**h, **JSON}, json.dumps(body).encode()))[
                0
            ]
        if op == "POST dataset":
            made["uploads"] += 1
            tag = f"{os.getpid()}-{i}-{made['uploads']}-{rng.random()}"
            kind, form = multipart({"name": tag}, "texts.csv", texts_csv(tag))
            status, data = await conn.request(
                "POST", "/v1/datasets", {**h, "Content-Type": kind}, form
            )
            if status == 201:
                known["datasets"].append(json.loads(data)["id"])
                known[f"group-{i // GROUP}"].append(known["datasets"][-1])
            return op, status
        # POST ranking: one model, one metric
        ds = rng.choice(known["datasets"])
        rank = {"dataset_id": ds, "model_ids": [spec["ranking_model"]], "metrics": ["logme"]}
        status, data = await conn.request(
            "POST", "/v1/rankings", {**h, **JSON}, json.dumps(rank).encode()
        )
        if status == 202:
            known["jobs"].append(json.loads(data)["id"])
        return op, status

    pick: Callable[..., Any] = mixed if spec.get("mix") else get

    async def main() -> tuple[dict[str, list[float]], Counter[str], float]:
        n = spec["clients"]
        conns = [Connection(host, int(port)) for _ in range(n)]
        latencies: dict[str, list[float]] = defaultdict(list)
        errors = Counter[str]()

        async def one(i: int, start: float, stop: float) -> None:
            """Requests back to back until ``stop``; those begun after ``start`` are measured
            (no pause between the warm-up and the measurement: every connection stays busy)."""
            rng = random.Random(i * 7919)
            while (t := time.perf_counter()) < stop:
                try:
                    op, status = await asyncio.wait_for(pick(conns[i], i, rng), 60)
                except (OSError, asyncio.IncompleteReadError, TimeoutError) as exc:
                    op, status = "transport", type(exc).__name__
                if t >= start:
                    latencies[op].append(time.perf_counter() - t)
                    if not isinstance(status, int) or status >= 400:
                        errors[f"{op}: {status}"] += 1

        start = time.perf_counter() + spec["warmup"]  # connections open, caches filled
        stop = start + spec["seconds"]
        await asyncio.gather(*(one(i, start, stop) for i in range(n)))
        elapsed = stop - start
        for conn in conns:
            conn.close()
        return latencies, errors, elapsed

    cpu = time.process_time()
    started = time.perf_counter()
    latencies, errors, elapsed = asyncio.run(main())
    cpu_share = (time.process_time() - cpu) / (time.perf_counter() - started)
    out.put(
        {
            "latencies": dict(latencies),
            "errors": dict(errors),
            "elapsed": elapsed,
            "client_cpu": cpu_share,
            "known": known,
        }
    )


def _cpu_times() -> tuple[float, float]:
    with open("/proc/stat") as f:
        fields = [float(x) for x in f.readline().split()[1:]]
    idle = fields[3] + fields[4]  # idle, iowait
    return sum(fields), idle


def _steal() -> tuple[float, float]:
    """(all CPU time, time stolen by the hypervisor) since boot, in ticks."""
    with open("/proc/stat") as f:
        fields = [float(x) for x in f.readline().split()[1:]]
    return sum(fields), fields[7] if len(fields) > 7 else 0.0


def wait_quiet(limit_s: float = 300.0, busy_below: float = 0.15, for_s: int = 3) -> float:
    """Wait until the machine is quiet (under ``busy_below`` of its CPU busy for ``for_s``
    seconds in a row): the worker's leftover work (registering the zoo, refits after the
    setup's outcomes) would otherwise share the cores with the measured API. Returns the
    seconds waited."""
    started, quiet = time.time(), 0
    total, idle = _cpu_times()
    while time.time() - started < limit_s and quiet < for_s:
        time.sleep(1.0)
        total2, idle2 = _cpu_times()
        busy = 1.0 - (idle2 - idle) / max(total2 - total, 1e-9)
        total, idle = total2, idle2
        quiet = quiet + 1 if busy < busy_below else 0
    return time.time() - started


def generate(spec: dict[str, Any]) -> dict[str, Any]:
    """Run the load generator; adds ``steal``: the share of CPU time the hypervisor took
    meanwhile (a virtual machine's neighbours; high values make a run incomparable)."""
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=_generate, args=(spec, q))
    total, stolen = _steal()
    p.start()
    result: dict[str, Any] = q.get()
    p.join()
    total2, stolen2 = _steal()
    result["steal"] = round((stolen2 - stolen) / max(total2 - total, 1e-9), 3)
    return result


def stats(latencies_s: list[float], elapsed: float, errors: int) -> dict[str, Any]:
    lat = np.asarray(latencies_s) * 1000.0
    if lat.size == 0:
        return {"requests": 0, "errors": errors}
    return {
        "requests": int(lat.size),
        "errors": errors,
        "rps": round(lat.size / elapsed, 1),
        "p50_ms": round(float(np.percentile(lat, 50)), 2),
        "p95_ms": round(float(np.percentile(lat, 95)), 2),
        "p99_ms": round(float(np.percentile(lat, 99)), 2),
        "max_ms": round(float(lat.max()), 2),
    }


# -- the deployment ----------------------------------------------------------------------------


class Deployment:
    """A database, the Celery worker and ``serve`` processes; everything torn down at the end."""

    def __init__(self) -> None:
        import redis
        from sqlalchemy import create_engine, text

        self.name = f"tb_bench_{uuid.uuid4().hex[:8]}"
        self.admin = create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
        with self.admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{self.name}"'))
        self.pg_url = PG_ADMIN.rsplit("/", 1)[0] + f"/{self.name}"
        redis.Redis.from_url(REDIS).flushdb()
        self.tmp = Path(tempfile.mkdtemp(prefix="tb-bench-"))
        self.env = {
            **os.environ,
            "TB_DATABASE_URL": self.pg_url,
            "TB_BROKER_URL": REDIS,
            "TB_DATA_DIR": str(self.tmp),
            "TB_AUTH": "required",
            "TB_NUM_THREADS": "1",
            "HF_HUB_OFFLINE": "1",
            **LIMITS,
        }
        self.procs: list[subprocess.Popen[bytes]] = []
        self.api: subprocess.Popen[bytes] | None = None

    def spawn(self, *cmd: str, cores: list[int] | None = None) -> subprocess.Popen[bytes]:
        log = open(self.tmp / f"{cmd[0]}-{len(self.procs)}.log", "wb")

        def pin() -> None:
            if cores is not None:
                os.sched_setaffinity(0, set(cores))

        proc = subprocess.Popen(
            [sys.executable, "-m", "workers.cli", *cmd], cwd=ROOT, env=self.env, stdout=log,
            stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=pin,
        )  # fmt: skip
        self.procs.append(proc)
        return proc

    def serve(self, workers: int, cores: list[int] | None, fast_reads: bool = True) -> str:
        import httpx

        self.stop_api()
        port = free_port()
        self.env["TB_FAST_READS"] = "true" if fast_reads else "false"
        self.api = self.spawn(
            "serve", "--workers", str(workers), "--host", "127.0.0.1", "--port", str(port),
            cores=cores,
        )  # fmt: skip
        base = f"http://127.0.0.1:{port}"
        deadline = time.time() + 120
        while time.time() < deadline:
            if self.api.poll() is not None:
                raise SystemExit(f"serve exited; see {self.tmp}")
            try:
                if httpx.get(base + "/readyz", timeout=5).status_code == 200:
                    return base
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        raise SystemExit(f"serve did not come up; see {self.tmp}")

    def stop_api(self) -> None:
        if self.api is not None:
            self._stop(self.api)
            self.procs.remove(self.api)
            self.api = None

    @staticmethod
    def _stop(proc: subprocess.Popen[bytes]) -> None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=20)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()

    def close(self, keep_logs: bool) -> None:
        from sqlalchemy import text

        for proc in list(self.procs):
            self._stop(proc)
        with self.admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)'))
        self.admin.dispose()
        if keep_logs:
            print(f"the processes' logs are in {self.tmp}", file=sys.stderr)
        else:
            shutil.rmtree(self.tmp, ignore_errors=True)


def layout(workers: int) -> tuple[list[int] | None, int | None, str]:
    """(the API's cores or None: not pinned, the load generator's core, what that means)."""
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) == 1:
        return None, None, "one core: the load generator, the API and everything else share it"
    load = cores[-1]
    if len(cores) > workers:
        api = cores[:workers]
        return api, load, f"API pinned to cores {api}, load generator to core {load}"
    return (
        None,
        load,
        (
            f"{len(cores)} cores for {workers} API processes: the API is not pinned and the load "
            f"generator (pinned to core {load}) shares a core with an API process"
        ),
    )


def setup(base: str, keys: list[str]) -> dict[str, Any]:
    """A text dataset ranked by both text models of the zoo, with outcomes: the objects read."""
    import httpx

    h = {"Authorization": f"Bearer {keys[0]}"}
    with httpx.Client(base_url=base, timeout=120, headers=h) as client:
        deadline = time.time() + 300
        while True:
            models = {m["name"]: m["id"] for m in client.get("/v1/models").json()}
            if all(m in models for m in TEXT_MODELS):
                break
            if time.time() > deadline:
                raise SystemExit("the worker did not register the zoo's text models in time")
            time.sleep(1)
        datasets, jobs = [], []
        for tag in ("setup-a", "setup-b"):
            r = client.post("/v1/datasets", files={"file": ("t.csv", texts_csv(tag))},
                            data={"name": tag})  # fmt: skip
            r.raise_for_status()
            datasets.append(r.json()["id"])
            r = client.post(
                "/v1/rankings",
                json={"dataset_id": datasets[-1], "model_ids": [models[m] for m in TEXT_MODELS]},
            )
            r.raise_for_status()
            jobs.append(r.json()["id"])
        for job in jobs:
            while (body := client.get(f"/v1/rankings/{job}").json())["status"] not in (
                "done",
                "failed",
            ):
                time.sleep(0.3)
            if body["status"] != "done":
                raise SystemExit(f"the setup ranking failed: {body}")
        outcomes = [
            {"model_id": m, "value": v} for m, v in zip(TEXT_MODELS, (81.5, 88.0), strict=True)
        ]
        client.post(f"/v1/datasets/{datasets[1]}/outcomes", json=outcomes).raise_for_status()
        groups = {}
        for g, key in enumerate(keys):  # each client group's own dataset
            r = client.post(
                "/v1/datasets",
                files={"file": ("t.csv", texts_csv(f"group-{g}"))},
                data={"name": f"group-{g}"},
                headers={"Authorization": f"Bearer {key}"},
            )
            r.raise_for_status()
            groups[f"group-{g}"] = [r.json()["id"]]
    return {"datasets": datasets, "jobs": jobs, "models": models, "groups": groups}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--quick", action="store_true", help="a short smoke run (under a minute of load)"
    )
    ap.add_argument("--clients", type=int, default=50, help="(a): concurrent clients")
    ap.add_argument("--mixed-clients", type=int, default=200, help="(b): concurrent clients")
    ap.add_argument("--seconds", type=float, default=None, help="(a): per endpoint and --workers")
    ap.add_argument("--mixed-seconds", type=float, default=None, help="(b): its length")
    ap.add_argument("--skip-reads", action="store_true", help="only (b), the mixed load")
    ap.add_argument("--skip-mixed", action="store_true", help="only (a), the reads")
    ap.add_argument(
        "--skip-full",
        action="store_true",
        help="(a): without the run of the full stack (TB_FAST_READS=off) beside the fast reads",
    )
    ap.add_argument(
        "--workers", default="1,2", help="(a): the API process counts to run, comma-separated"
    )
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = ap.parse_args(argv)
    seconds = args.seconds or (3.0 if args.quick else 10.0)
    mixed_seconds = args.mixed_seconds or (8.0 if args.quick else 30.0)
    warmup = 1.0 if args.quick else 2.0

    from app.db.migrate import upgrade
    from app.db.session import Database
    from app.services import apikeys

    started = time.time()
    results: dict[str, Any] = {
        "machine": {
            "cpu": cpu_model(),
            "cores": os.cpu_count(),
            "python": platform.python_version(),
            "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
        },
        "quick": args.quick,
        "clients": args.clients,
        "settings": {
            **LIMITS,
            "TB_AUTH": "required",
            "clients_per_key": GROUP,
            "celery_worker": "--queues gpu,cpu --concurrency 1, TB_NUM_THREADS=1",
        },  # fmt: skip
        "reads": {},
    }
    dep = Deployment()
    try:
        upgrade(dep.pg_url)
        n_keys = max(args.clients, args.mixed_clients) // GROUP
        db = Database(dep.pg_url)
        with db.session() as s:
            keys = [
                apikeys.create(s, f"group-{i}", tenant="bench", role="write") for i in range(n_keys)
            ]
        db.dispose()
        dep.spawn("worker", "--queues", "gpu,cpu", "--concurrency", "1")
        base = dep.serve(1, layout(1)[0])
        objects = setup(base, keys)
        ds, job = objects["datasets"][1], objects["jobs"][1]
        endpoints = {
            "GET leaderboard?metric=logme": f"/v1/datasets/{ds}/leaderboard?metric=logme",
            "GET leaderboard?metric=recommended": f"/v1/datasets/{ds}/leaderboard?metric=recommended",
            "GET rankings/{id} (finished)": f"/v1/rankings/{job}",
        }
        notes, waited = [], []
        configs = [(int(w), True) for w in args.workers.split(",")]
        if not args.skip_full:  # the full stack beside it, side by side in this run
            configs.insert(0, (configs[0][0], False))
        for workers, fast in () if args.skip_reads else configs:
            api_cores, load_core, note = layout(workers)
            notes.append(f"--workers {workers}: {note}")
            base = dep.serve(workers, api_cores, fast_reads=fast)
            runs: dict[str, Any] = {"layout": note, "fast_reads": fast}
            for label, path in endpoints.items():
                waited.append(round(wait_quiet(), 1))
                got = generate({"base": base, "clients": args.clients, "seconds": seconds,
                                "warmup": warmup, "keys": keys, "paths": [path], "core": load_core})  # fmt: skip
                lat = [x for v in got["latencies"].values() for x in v]
                runs[label] = {**stats(lat, got["elapsed"], sum(got["errors"].values())),
                               "client_cpu": round(got["client_cpu"], 2), "steal": got["steal"],
                               "error_kinds": got["errors"]}  # fmt: skip
            name = f"workers={workers}" + ("" if fast else ", TB_FAST_READS=off")
            results["reads"][name] = runs

        # (b) the mixed load, on the two-process API
        for _ in () if args.skip_mixed else (1,):
            api_cores, load_core, note = layout(2)
            base = dep.serve(2, api_cores)
            waited.append(round(wait_quiet(), 1))
            mix = {"GET leaderboard": 35, "GET ranking": 20, "GET list": 15, "POST outcomes": 15,
                   "POST dataset": 10, "POST ranking": 5}  # fmt: skip
            got = generate({
                "base": base, "clients": args.mixed_clients, "seconds": mixed_seconds,
                "warmup": warmup, "keys": keys, "mix": mix, "core": load_core,
                "known": {"datasets": objects["datasets"], "jobs": objects["jobs"], **objects["groups"]},
                "ranking_model": objects["models"][TEXT_MODELS[0]],
            })  # fmt: skip
            errors_by_op = Counter[str]()
            for kind, n in got["errors"].items():
                errors_by_op[kind.split(":")[0]] += n
            every = [x for v in got["latencies"].values() for x in v]
            results["mixed"] = {
                "workers": 2,
                "clients": args.mixed_clients,
                "seconds": mixed_seconds,
                "layout": note,
                "mix_percent": mix,
                "total": {
                    **stats(every, got["elapsed"], sum(got["errors"].values())),
                    "client_cpu": round(got["client_cpu"], 2),
                },  # fmt: skip
                "ops": {
                    op: stats(v, got["elapsed"], errors_by_op[op])
                    for op, v in sorted(got["latencies"].items())
                },
                "error_kinds": got["errors"],
                "created": {
                    "datasets": len(got["known"]["datasets"]) - len(objects["datasets"]),
                    "rankings": len(got["known"]["jobs"]) - len(objects["jobs"]),
                },  # fmt: skip
            }
        results["machine"]["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
        results["layout_notes"] = notes
        results["quiet_wait_s"] = waited  # before each read measurement
        results["wall_s"] = round(time.time() - started, 1)
    finally:
        failed = sys.exc_info()[0] is not None or bool(results.get("mixed", {}).get("error_kinds"))
        dep.close(keep_logs=failed)

    print_report(results, seconds)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "api.json").write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nwrote {args.out / 'api.json'}")
    bad = results.get("mixed", {}).get("total", {}).get("errors", 0) + sum(
        r["errors"]
        for runs in results["reads"].values()
        for k, r in runs.items()
        if k not in ("layout", "fast_reads")
    )
    return 1 if bad else 0


def print_report(results: dict[str, Any], seconds: float) -> None:
    m = results["machine"]
    print(f"\nmachine: {m['cpu']}, {m['cores']} cores, Python {m['python']}; load average at "
          f"start {m['loadavg_at_start']}, at end {m.get('loadavg_at_end')}")  # fmt: skip
    print(f"TB_RATE_LIMIT_PER_MIN={LIMITS['TB_RATE_LIMIT_PER_MIN']} and TB_TENANT_MAX_ACTIVE_JOBS="
          f"{LIMITS['TB_TENANT_MAX_ACTIVE_JOBS']} for the run; one API key per {GROUP} clients")  # fmt: skip
    for note in results.get("layout_notes", []):
        print("layout: " + note)
    head = f"{'':<38} {'requests':>9} {'req/s':>8} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'max ms':>8} {'errors':>7} {'client cpu':>10} {'steal':>6}"
    for config, runs in results["reads"].items():
        print(f"\n(a) reads, {seconds:.0f} s each, {results['clients']} clients, {config}")
        print(head)
        for label, s in runs.items():
            if label in ("layout", "fast_reads"):
                continue
            print(f"{label:<38} {s['requests']:>9} {s['rps']:>8.0f} {s['p50_ms']:>8.1f} {s['p95_ms']:>8.1f} "
                  f"{s['p99_ms']:>8.1f} {s['max_ms']:>8.1f} {s['errors']:>7} {s['client_cpu']:>10.0%} {s.get('steal', 0):>6.0%}")  # fmt: skip
    mixed = results.get("mixed")
    if mixed is None:
        return
    print(f"\n(b) mixed, {mixed['seconds']:.0f} s, {mixed['clients']} clients, --workers 2 "
          f"(created {mixed['created']['datasets']} datasets, {mixed['created']['rankings']} rankings)")  # fmt: skip
    print(head)
    rows = [*mixed["ops"].items(), ("all", mixed["total"])]
    for label, s in rows:
        if not s.get("requests"):
            continue
        cpu = f"{s['client_cpu']:>10.0%}" if "client_cpu" in s else f"{'':>10}"
        print(f"{label:<38} {s['requests']:>9} {s['rps']:>8.0f} {s['p50_ms']:>8.1f} {s['p95_ms']:>8.1f} "
              f"{s['p99_ms']:>8.1f} {s['max_ms']:>8.1f} {s['errors']:>7} {cpu}")  # fmt: skip
    if mixed["error_kinds"]:
        print("errors: " + ", ".join(f"{k} x{n}" for k, n in mixed["error_kinds"].items()))
    print(
        ("PASS" if mixed["total"]["errors"] == 0 else "FAIL")
        + f"  mixed load: {mixed['total']['errors']} errors"
    )


if __name__ == "__main__":
    sys.exit(main())
