"""Private servers and the service's own processes for the fault tests (``jobs/test_faults.py``)
and the tests that run ``transferbench serve`` in a process of its own.

Each fault test stops and starts its servers, so it never touches the shared PostgreSQL and
Redis on 5432 and 6379: it gets a PostgreSQL cluster of its own (Debian's ``initdb`` and
``pg_ctl``, run as the ``postgres`` user when the tests run as root) and a ``redis-server``
with nothing persisted, each on a free port under a temporary directory, removed afterwards.
A server that cannot be made fails the test under CI=true and skips it elsewhere.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[1]


def unavailable(message: str) -> None:
    """Fail under CI=true, skip elsewhere."""
    if os.environ.get("CI", "").lower() in {"1", "true", "yes"}:
        pytest.fail(message)
    pytest.skip(message)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(check: Callable[[], bool], timeout: float, what: str, log: str = "") -> None:
    """Poll ``check`` every 0.1 s until it holds, or fail naming ``what``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.1)
    raise AssertionError(f"{what} (waited {timeout:.0f} s)\n{log}")


def _tail(path: Path, chars: int = 3000) -> str:
    try:
        return f"--- {path.name}\n" + path.read_text(errors="replace")[-chars:]
    except OSError:
        return ""


class RedisServer:
    """A ``redis-server`` on a free port that persists nothing: a restart loses every queue."""

    def __init__(self, workdir: Path) -> None:
        self.binary = shutil.which("redis-server")
        if self.binary is None:
            unavailable("redis-server is not installed (apt-get install redis-server)")
        self.port = 0
        self.dir = workdir / "redis"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        """Start on a free port the first time (another port if that one was taken by then),
        on the same port after a stop."""
        if self.port:
            self._start()
            return
        for _ in range(3):
            self.port = free_port()
            try:
                self._start()
                return
            except AssertionError as exc:
                problem = str(exc)
        unavailable(problem)

    def _start(self) -> None:
        log = open(self.dir / "redis.log", "a")  # noqa: SIM115  # the server owns it
        self.proc = subprocess.Popen(
            [str(self.binary), "--port", str(self.port), "--bind", "127.0.0.1",
             "--save", "", "--appendonly", "no", "--dir", str(self.dir)],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        log.close()
        try:
            wait_until(self.ping, 15, f"redis-server on port {self.port} did not start")
        except AssertionError as exc:
            self.stop()
            raise AssertionError(f"{exc}\n{self.log()}") from None

    def ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self) -> None:
        """Stop the server; with nothing persisted, every queue and unacknowledged task goes."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.proc = None

    def log(self) -> str:
        return _tail(self.dir / "redis.log")


class PostgresServer:
    """A PostgreSQL cluster of its own: initdb into a temporary directory, trust auth, a free
    port, its unix socket in that directory. Run as ``postgres`` when we are root."""

    def __init__(self) -> None:
        self.bindir = self._bindir()
        self.port = 0
        self.root = Path(tempfile.mkdtemp(prefix="tb-faults-pg-"))
        self.data = self.root / "data"
        self.logfile = self.root / "postgres.log"
        self.as_postgres: list[str] = []
        if os.geteuid() == 0:
            import pwd

            try:
                user = pwd.getpwnam("postgres")
            except KeyError:
                shutil.rmtree(self.root, ignore_errors=True)
                unavailable("we run as root and there is no postgres user to run PostgreSQL as")
            os.chown(self.root, user.pw_uid, user.pw_gid)
            self.as_postgres = ["runuser", "-u", "postgres", "--"]

    @property
    def admin(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    @staticmethod
    def _bindir() -> Path:
        found = sorted(
            Path("/usr/lib/postgresql").glob("*/bin/initdb"),
            key=lambda p: int(p.parts[-3]) if p.parts[-3].isdigit() else 0,
        )
        if found:
            return found[-1].parent
        initdb = shutil.which("initdb")
        if initdb is None:
            unavailable(
                "PostgreSQL's initdb and pg_ctl are not installed (apt-get install postgresql)"
            )
        return Path(str(initdb)).parent

    def _run(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*self.as_postgres, *args], capture_output=True, text=True, timeout=timeout
        )

    def init(self) -> None:
        done = self._run(
            str(self.bindir / "initdb"), "-D", str(self.data), "-U", "postgres", "-A", "trust",
            "-E", "UTF8", "--locale=C", "--no-sync",
        )  # fmt: skip
        if done.returncode != 0:
            self.destroy()
            unavailable(f"initdb failed: {done.stdout}{done.stderr}")

    def start(self) -> None:
        """Start on a free port the first time (another port if that one was taken by then),
        on the same port after a stop."""
        if self.port:
            self._start()
            return
        for _ in range(3):
            self.port = free_port()
            try:
                self._start()
                return
            except AssertionError as exc:
                problem = str(exc)
        self.destroy()
        unavailable(problem)

    def _start(self) -> None:
        options = (
            f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c max_connections=200 "
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        )
        done = self._run(
            str(self.bindir / "pg_ctl"), "-D", str(self.data), "-l", str(self.logfile),
            "-o", options, "-w", "-t", "60", "start",
        )  # fmt: skip
        if done.returncode != 0:
            raise AssertionError(f"pg_ctl start failed: {done.stdout}{done.stderr}\n{self.log()}")

    def stop(self, mode: str = "fast") -> None:
        """Stop the server; ``fast`` disconnects every client at once."""
        self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop")

    def url(self, database: str) -> str:
        return self.admin.rsplit("/", 1)[0] + f"/{database}"

    def create_database(self, name: str) -> str:
        from sqlalchemy import create_engine, text

        engine = create_engine(self.admin, isolation_level="AUTOCOMMIT")
        try:
            with engine.connect() as conn:
                conn.execute(text(f'CREATE DATABASE "{name}"'))
        finally:
            engine.dispose()
        return self.url(name)

    def destroy(self) -> None:
        if (self.data / "postmaster.pid").exists():
            self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)

    def log(self) -> str:
        return _tail(self.logfile)


class Service:
    """The service's real processes (``transferbench serve | worker | beat``), each in its
    own process group with its own log."""

    def __init__(self, env: dict[str, str], logs: Path) -> None:
        self.env, self.logs = env, logs
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, name: str, *command: str, env: dict[str, str] | None = None) -> None:
        log = open(self.logs / f"{name}.log", "a")  # noqa: SIM115  # the process owns it
        self.procs[name] = subprocess.Popen(
            [sys.executable, "-m", "workers.cli", *command],
            cwd=ROOT,
            env={**self.env, **(env or {})},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()

    def serve(self, port: int, env: dict[str, str] | None = None, timeout: float = 90) -> str:
        """Start the API on ``port`` and wait until it answers; returns its base URL."""
        self.start("api", "serve", "--host", "127.0.0.1", "--port", str(port), env=env)
        base = f"http://127.0.0.1:{port}"

        def up() -> bool:
            if self.procs["api"].poll() is not None:
                raise AssertionError("the API exited at start\n" + self.log())
            try:
                return httpx.get(f"{base}/healthz", timeout=2).status_code == 200
            except httpx.TransportError:
                return False

        wait_until(up, timeout, "the API did not answer", self.log())
        return base

    def pid(self, name: str) -> int:
        return self.procs[name].pid

    def kill(self, name: str) -> None:
        """SIGKILL the process and its children."""
        proc = self.procs[name]
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)

    def stop_all(self) -> None:
        """SIGKILL every process group: the test is over, and its servers go next (a warm
        Celery shutdown alone takes seconds)."""
        for proc in self.procs.values():
            with contextlib.suppress(ProcessLookupError):  # the whole group is gone already
                os.killpg(proc.pid, signal.SIGKILL)
        for proc in self.procs.values():
            proc.wait(timeout=30)

    def log(self) -> str:
        return "\n".join(_tail(p) for p in sorted(self.logs.glob("*.log")))


def env_for(database_url: str, broker_url: str, data_dir: Path, **extra: Any) -> dict[str, str]:
    """The environment every process of one fault test shares: short timers, one thread."""
    return {
        **os.environ,
        "TB_DATABASE_URL": database_url,
        "TB_BROKER_URL": broker_url,
        "TB_DATA_DIR": str(data_dir),
        "TB_AUTH": "off",
        "TB_HEARTBEAT_TIMEOUT_S": "5",
        "TB_SCHEDULER_TICK_S": "1",
        "TB_RERANK_INTERVAL_S": "3600",
        "TB_NUM_THREADS": "1",
        "TB_BATCH_SIZE": "8",
        "TB_RUNTIME": "torch",
        # the shipped reference tables' datasets and scores would mix with the ones each
        # fault test counts (their import has tests of its own)
        "TB_REFERENCE_TABLES": "off",
        "HF_HUB_OFFLINE": "1",
        **{k: str(v) for k, v in extra.items()},
    }
