"""`tokenwatch run` supervises what it starts and refuses what would collide, through the real processes: the
run, its embedded redis-server, worker, beat and Flower. Children are killed with SIGKILL, two runs are started
at once, ports are taken; each test says what the run, its children and the registry must show afterwards."""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis
from sqlalchemy.engine.url import make_url

from tests.conftest import ROOT, wait_until
from tests.databases import postgres_database, query
from tokenwatch.embedded import EmbeddedRedis
from tokenwatch.preflight import LEFTOVER_WAIT_S, start_time
from tokenwatch.simulator import Simulator
from tokenwatch.supervise import MAX_RESTARTS

pytestmark = pytest.mark.integration

CONTRACTS = 40
REDIS = "embedded Redis"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def descendants(pid: int) -> set[int]:
    """Every live process below pid (children, grandchildren...)."""
    found: set[int] = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            child = int(stat.parent.name)
            found |= {child} | descendants(child)
    return found


def alive(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return "zombie" not in status.lower()



@dataclass
class Run:
    """One `tokenwatch run` in its own folder, with its log and the helpers to look at it."""

    folder: Path
    env: dict[str, str]
    process: subprocess.Popen[bytes] | None = None
    seen: set[int] = field(default_factory=set)  # every pid ever below the run, for the teardown

    @property
    def log_path(self) -> Path:
        return self.folder / f"run-{id(self)}.log"

    def start(self) -> Run:
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen([sys.executable, "-m", "tokenwatch.cli", "run"], cwd=self.folder,
                                            env=self.env, stdout=log, stderr=subprocess.STDOUT)
        return self

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def record(self) -> dict[str, Any]:
        """What the run wrote in its lock file: its pid and its children's."""
        path = self.folder / "data" / "run.lock"
        text = path.read_text() if path.exists() else ""
        return dict(json.loads(text)) if text else {}

    def child(self, name: str) -> int:
        return int(self.record()["children"][name][0])

    def tree(self) -> set[int]:
        found = descendants(self.pid)
        self.seen |= found
        return found

    def cli(self, *args: str, timeout: float = 90) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "tokenwatch.cli", *args], cwd=self.folder, env=self.env,
                              capture_output=True, text=True, timeout=timeout, check=False)

    def tokens(self) -> int:
        db = self.folder / "data" / "tokens.db"
        if not db.exists():
            return 0
        with closing(sqlite3.connect(db, timeout=5)) as conn:
            try:
                return int(conn.execute("SELECT count(*) FROM tokens WHERE status = 'active'").fetchone()[0])
            except sqlite3.OperationalError:
                return 0

    def wait_ready(self, tokens: int = CONTRACTS, timeout: float = 60, children: int = 4) -> None:
        """Until the first sync filled the registry and every child runs (3 without an embedded Redis)."""
        def ready() -> bool:
            assert self.process is not None and self.process.poll() is None, self.log()[-3000:]
            record = self.record()
            started = record.get("children", {})
            return (record.get("pid") == self.pid and len(started) == children
                    and all(alive(pid) for pid, _ in started.values()) and self.tokens() == tokens)
        wait_until(ready, timeout, "the run's first sync")
        self.tree()

    def wait_log(self, text: str, timeout: float = 30) -> None:
        wait_until(lambda: text in self.log(), timeout, f"{text!r} in the run's log")

    def sync(self) -> dict[str, Any]:
        result = self.cli("sync", "--json", "--timeout", "60")
        assert result.returncode == 0, result.stdout + result.stderr
        return dict(json.loads(result.stdout))

    def kill_everything(self) -> None:
        for pid in {*self.seen, *(self.tree() if self.process and self.process.poll() is None else set())}:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)


@pytest.fixture
def sim() -> Iterator[Simulator]:
    with Simulator(port=0, contracts=CONTRACTS, seed=23) as simulator:
        yield simulator


@pytest.fixture
def make_run(tmp_path: Path, sim: Simulator) -> Iterator[Callable[..., Run]]:
    runs: list[Run] = []

    def make(folder: str = "a", **settings: str) -> Run:
        (tmp_path / folder).mkdir(exist_ok=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith("TOKENWATCH_")}
        env.update({"TOKENWATCH_KUCOIN_URL": sim.url, "TOKENWATCH_FLOWER_PORT": str(free_port()),
                    "TOKENWATCH_METRICS_PORT": str(free_port()), "PYTHONPATH": str(ROOT)})
        env.update({f"TOKENWATCH_{k.upper()}": v for k, v in settings.items()})
        run = Run(tmp_path / folder, env)
        runs.append(run)
        return run

    yield make
    for run in runs:
        run.kill_everything()


def test_the_embedded_redis_killed_is_restarted_in_one_line_and_syncs_resume(
    make_run: Callable[..., Run], sim: Simulator,
) -> None:
    run = make_run().start()
    run.wait_ready()
    old = run.child(REDIS)
    logged = len(run.log())

    os.kill(old, signal.SIGKILL)

    run.wait_log(f"{REDIS} exited (killed by SIGKILL); restarting it (1 of {MAX_RESTARTS} restarts allowed")
    new = wait_until(lambda: run.child(REDIS) != old and run.child(REDIS), 15, "the new Redis in the run record")
    assert alive(new) and not alive(old)
    new_listing = sim.list_new(1)[0]
    outcome = run.sync()  # through the broker: the worker reconnected by itself
    assert (outcome["status"], outcome["counts"]["listed"]) == ("ok", 1), outcome
    assert run.process is not None and run.process.poll() is None
    assert new_listing in run.cli("tokens").stdout
    after = run.log()[logged:]
    assert "Traceback" not in after, after[-3000:]
    assert "In Celery 5.1" not in after, after[-3000:]  # the deliberate default's seven-line warning
    assert after.count("\n") < 80, after  # the restart is a few lines, not a flood


def test_a_child_that_keeps_dying_stops_the_run_with_one_line_and_leaves_nothing(make_run: Callable[..., Run]) -> None:
    run = make_run().start()
    run.wait_ready()
    everything = run.tree()
    for attempt in range(MAX_RESTARTS + 1):
        pid = run.child(REDIS)
        os.kill(pid, signal.SIGKILL)
        if attempt < MAX_RESTARTS:
            wait_until(lambda pid=pid: run.child(REDIS) != pid, 15, "the restarted Redis")  # type: ignore[misc]
            run.tree()

    assert run.process is not None and run.process.wait(30) == 1
    assert (f"{REDIS} died {MAX_RESTARTS + 1} times within 60 s (last: killed by SIGKILL); giving up: "
            "see data/redis.log; stopping everything") in run.log()
    wait_until(lambda: not [p for p in everything | run.seen if alive(p)], 15, "every child gone")
    assert not (run.folder / "data" / "redis.sock").exists()


def test_a_killed_worker_is_restarted_and_its_pool_goes_with_it(make_run: Callable[..., Run], sim: Simulator) -> None:
    run = make_run().start()
    run.wait_ready()
    worker = run.child("worker")
    pool = descendants(worker)
    assert pool, "the worker has no pool process"

    os.kill(worker, signal.SIGKILL)

    wait_until(lambda: not [p for p in pool if alive(p)], 10, "the killed worker's pool process gone")
    run.wait_log("worker exited (killed by SIGKILL); restarting it")
    sim.delist([sim.symbols()[0]])
    outcome = run.sync()
    assert (outcome["status"], outcome["counts"]["delisted"]) == ("ok", 1), outcome


def test_a_killed_run_takes_every_child_with_it_and_the_next_run_starts(make_run: Callable[..., Run]) -> None:
    run = make_run().start()
    run.wait_ready()
    children = run.tree()
    assert len(children) >= 5  # redis-server, worker and its pool process, beat, Flower

    started = time.monotonic()
    os.kill(run.pid, signal.SIGKILL)

    wait_until(lambda: not [p for p in children if alive(p)], 15, "the dead run's children gone")
    gone_in = time.monotonic() - started
    again = Run(run.folder, run.env).start()
    try:
        again.wait_ready()
        assert again.sync()["status"] == "ok"
    finally:
        again.kill_everything()
    print(f"\nchildren of a SIGKILLed run gone in {gone_in:.1f} s")


def test_two_runs_at_once_on_one_folder_one_is_refused_naming_the_other(make_run: Callable[..., Run]) -> None:
    first = make_run()
    second = make_run()  # the same folder, "a"; made by the fixture, so that it is stopped whichever survives
    first.start()
    second.start()

    refused = wait_until(lambda: next((r for r in (first, second) if r.process and r.process.poll() is not None),
                                      None), 30, "one of the two runs to quit")
    survivor = second if refused is first else first
    assert refused.process is not None and refused.process.returncode == 1
    lines = refused.log().strip().splitlines()
    assert lines == [f"tokenwatch: the data folder 'data' is in use by another tokenwatch run (pid {survivor.pid}): "
                     "stop that run first, or give this one its own TOKENWATCH_DATA_DIR and "
                     "TOKENWATCH_DATABASE_URL"], lines
    survivor.wait_ready()
    status = survivor.cli("status")
    assert status.returncode == 0, status.stdout + status.stderr


def test_a_second_run_on_the_same_registry_is_refused_before_it_starts_anything(
    make_run: Callable[..., Run],
) -> None:
    first = make_run(sync_interval_s="3600").start()  # no beat tick during the test: only the first sync
    first.wait_ready()
    database = first.folder / "data" / "tokens.db"

    def sync_runs() -> int:
        with closing(sqlite3.connect(database)) as conn:
            return int(conn.execute("SELECT count(*) FROM sync_runs").fetchone()[0])

    before = sync_runs()
    second = make_run("b", database_url=f"sqlite:///{database}", sync_interval_s="3600")

    second.start()

    assert second.process is not None and second.process.wait(30) == 1
    assert second.log().strip() == (
        f"tokenwatch: the registry 'tokens.db' is in use by another tokenwatch run (pid {first.pid}): stop that "
        "run first, or give this one its own TOKENWATCH_DATA_DIR and TOKENWATCH_DATABASE_URL")
    assert not (second.folder / "data" / "redis.sock").exists()
    assert not (second.folder / "data" / "redis.log").exists()  # no Redis was ever started
    time.sleep(2)  # a worker it had started would have synced by now
    assert sync_runs() == before


def test_a_taken_port_is_named_with_its_holder_and_nothing_is_started(make_run: Callable[..., Run]) -> None:
    run = make_run()
    port = int(run.env["TOKENWATCH_METRICS_PORT"])
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", port))
        taken.listen()
        run.start()
        assert run.process is not None and run.process.wait(30) == 1
    [line] = run.log().strip().splitlines()
    assert line.startswith(f"tokenwatch: port {port} on 127.0.0.1 for the metrics endpoint is taken by pid "
                           f"{os.getpid()} ("), line  # the holder: this test's own process
    assert line.endswith("): stop what holds it, or set TOKENWATCH_METRICS_PORT to a free port"), line
    assert not (run.folder / "data" / "tokens.db").exists()  # the registry was not even created


def test_a_redis_left_by_an_earlier_run_is_reported_with_what_to_do(make_run: Callable[..., Run]) -> None:
    run = make_run()
    data = run.folder / "data"
    with EmbeddedRedis(str(data / "redis.sock"), str(data)) as leftover:
        assert leftover.process is not None
        run.start()
        assert run.process is not None and run.process.wait(30) == 1
        pid = leftover.process.pid
        assert run.log().strip() == (
            f"tokenwatch: a Redis left by an earlier run (pid {pid}) still listens on data/redis.sock: "
            f"stop it (`kill {pid}`) and start again")


def test_an_earlier_runs_child_still_alive_is_named_and_the_run_waits_for_it_first(
    make_run: Callable[..., Run],
) -> None:
    run = make_run()
    (run.folder / "data").mkdir()
    stubborn = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    leaving = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(2)"])
    try:
        record = {"pid": 1, "children": {"worker": [stubborn.pid, start_time(stubborn.pid)],
                                         "beat": [leaving.pid, start_time(leaving.pid)]}}
        (run.folder / "data" / "run.lock").write_text(json.dumps(record))
        started = time.monotonic()
        run.start()
        assert run.process is not None and run.process.wait(LEFTOVER_WAIT_S + 30) == 1
        assert time.monotonic() - started >= LEFTOVER_WAIT_S  # it gave them time to go
        assert run.log().strip() == (
            f"tokenwatch: processes of an earlier tokenwatch run on this data folder are still alive: worker (pid "
            f"{stubborn.pid}); stop them (`kill {stubborn.pid}`) and start again")  # beat exited while it waited
    finally:
        stubborn.kill()
        leaving.kill()
        stubborn.wait()
        leaving.wait()


def test_a_second_node_with_its_own_sqlite_registry_on_one_redis_is_refused_before_it_makes_one(
    make_run: Callable[..., Run], redis_server: EmbeddedRedis, redis_client: redis.Redis,
) -> None:
    first = make_run("a", redis_url=redis_server.url, node_name="node-a").start()
    first.wait_ready(tokens=CONTRACTS, children=3)
    announced = json.loads(redis_client.hget("tokenwatch:nodes", "node-a") or b"{}")
    assert (announced["pid"], announced["backend"]) == (first.pid, "sqlite")
    second = make_run("b", redis_url=redis_server.url, node_name="node-b")

    second.start()

    assert second.process is not None and second.process.wait(30) == 1
    assert second.log().strip() == (
        f"tokenwatch: node 'node-a' on {socket.gethostname()} already serves this registry, and an SQLite "
        "registry has one node: stop that node, or move the registry to PostgreSQL "
        "(TOKENWATCH_DATABASE_URL=postgresql+psycopg://...) to run several")
    assert not (second.folder / "data" / "tokens.db").exists()
    assert first.process is not None
    first.process.send_signal(signal.SIGTERM)
    assert first.process.wait(15) == 0
    assert redis_client.hget("tokenwatch:nodes", "node-a") is None  # a node that stops leaves


def test_on_postgresql_a_run_with_an_embedded_redis_shares_its_registry_with_no_one(
    make_run: Callable[..., Run], redis_server: EmbeddedRedis,
) -> None:
    with postgres_database() as url:
        name = make_url(url).database
        where = f"tokenwatch: the registry {name!r} on 127.0.0.1:5432 is in use by"

        def active() -> int:
            try:
                return int(query(url, "SELECT count(*) FROM tokens WHERE status = 'active'")[0][0])
            except Exception:
                return 0

        node = make_run("a", redis_url=redis_server.url, database_url=url, node_name="node-a").start()
        wait_until(lambda: active() == CONTRACTS, 60, "the node's first sync")
        alone = make_run("b", database_url=url).start()  # an embedded Redis: its sync lock is its own
        assert alone.process is not None and alone.process.wait(30) == 1
        assert alone.log().strip() == (
            f"{where} another tokenwatch run, and a run with an embedded Redis must have its registry to itself: "
            "to run several nodes, set TOKENWATCH_REDIS_URL to one Redis that every node shares")
        assert not (alone.folder / "data" / "redis.log").exists()  # refused before a Redis was started

        assert node.process is not None
        node.process.send_signal(signal.SIGTERM)
        assert node.process.wait(15) == 0
        alone = make_run("b", database_url=url).start()
        wait_until(lambda: "worker, beat and Flower started" in alone.log(), 60, "the embedded run's start")
        late = make_run("c", redis_url=redis_server.url, database_url=url, node_name="node-c").start()
        assert late.process is not None and late.process.wait(30) == 1
        assert late.log().strip() == (
            f"{where} a tokenwatch run with an embedded Redis, whose sync lock no node can see: set "
            "TOKENWATCH_REDIS_URL on that run too, to the Redis this node uses")
        assert alone.process is not None
        alone.process.send_signal(signal.SIGTERM)
        assert alone.process.wait(15) == 0
