"""`tokenwatch sync --inline` and the Celery chain run the same steps: for the same scripted exchange they leave
the same rows, events, stream and hot cache.

Two registries side by side, each with its own SQLite file and its own real Redis server: one synced with
`tokenwatch sync --inline`, the other through a real worker (`tokenwatch sync`). After every scripted change of
the simulator both sync the unchanged answer, and everything they stored is compared. The times a sync stamps
(its fetch time) differ between the two by construction, so each is replaced by the sync's ordinal first.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
import redis

from tests.conftest import Stack
from tokenwatch.cache import keys
from tokenwatch.embedded import EmbeddedRedis
from tokenwatch.simulator import Simulator

pytestmark = pytest.mark.integration


class Side:
    """One registry and the Redis that serves it, synced one way."""

    def __init__(self, stack: Stack, database: Path, redis_url: str, *cli_args: str) -> None:
        self.stack, self.database, self.redis_url, self.cli_args = stack, database, redis_url, cli_args
        self.client = redis.Redis.from_url(redis_url)
        self.fetched: list[int] = []  # registry_state.last_fetched_at after each sync
        self.registry_id = ""
        self.sync_ids: list[str] = []

    def sync(self) -> dict[str, Any]:
        saved = dict(self.stack.env)
        self.stack.env.update({"TOKENWATCH_DATABASE_URL": f"sqlite:///{self.database}",
                               "TOKENWATCH_REDIS_URL": self.redis_url})
        try:
            outcome = self.stack.sync(*self.cli_args)
        finally:
            self.stack.env.clear()
            self.stack.env.update(saved)
        self.fetched.append(int(self.query("SELECT last_fetched_at FROM registry_state")[0][0]))
        self.sync_ids.append(outcome["sync_id"])
        return outcome

    def query(self, sql: str) -> list[tuple[Any, ...]]:
        with closing(sqlite3.connect(self.database)) as conn:
            return list(conn.execute(sql))

    def normalise(self, value: Any) -> Any:
        """A value with each sync's fetch time and sync id replaced by that sync's ordinal."""
        if isinstance(value, int) and value in self.fetched:
            return f"T{self.fetched.index(value)}"
        if isinstance(value, str) and value in self.sync_ids:
            return f"S{self.sync_ids.index(value)}"
        if isinstance(value, str) and value == self.registry_id:
            return "this registry"
        if isinstance(value, list | tuple):
            return [self.normalise(v) for v in value]
        if isinstance(value, dict):
            return {k: self.normalise(v) for k, v in value.items()}
        return value

    def stored(self) -> dict[str, Any]:
        """Everything this side's sync left, normalised (each registry's random identity included)."""
        self.registry_id = str(self.query("SELECT registry_id FROM registry_state")[0][0])
        rows = self.query("SELECT * FROM tokens ORDER BY symbol")
        history = [(*row[:3], json.loads(row[3])) for row in
                   self.query("SELECT symbol, event_type, sync_id, details, event_time FROM token_history ORDER BY id")]
        runs = self.query("SELECT sync_id, status, error, revision, fetched, active, listed, delisted, relisted, "
                          "delisting_scheduled, status_changed, params_changed, unchanged, invalid FROM sync_runs "
                          "ORDER BY started_at")
        stream = [{k.decode(): v.decode() for k, v in fields.items()} for _id, fields in
                  self.client.xrange(keys.EVENTS)]
        for entry in stream:
            entry["details"] = json.loads(entry["details"])
            entry["event_time"] = int(entry["event_time"])
        return self.normalise({
            "tokens": rows, "history": history, "runs": runs, "stream": stream,
            "state": self.query("SELECT revision, last_sync_id, last_fetched_at, last_event_id FROM registry_state"),
            "cache version": self.client.get(keys.VERSION),
            "cache origin": self.client.get(keys.ORIGIN).decode().split(" "),
            "cache": {k.decode(): v.decode() for k, v in self.client.hgetall(keys.TOKENS).items()},
        })


@pytest.fixture
def second_redis(tmp_path: Path) -> Iterator[EmbeddedRedis]:
    folder = tmp_path / "redis-inline"
    with EmbeddedRedis(str(folder / "redis.sock"), str(folder)) as server:
        yield server


@pytest.mark.parametrize("answer", ["whole", "in parts"])
def test_inline_and_chain_store_the_same_for_the_same_exchange(
    stack: Stack, second_redis: EmbeddedRedis, tmp_path: Path, answer: str,
) -> None:
    with Simulator(port=0, contracts=60, seed=21) as sim:
        stack.env["TOKENWATCH_KUCOIN_URL"] = sim.url
        stack.env["TOKENWATCH_MAX_DROP_PCT"] = "50"
        if answer == "in parts":  # the chain's worker spools every answer and diffs it 16 KiB at a time
            stack.env["TOKENWATCH_ANSWER_IN_MEMORY_BYTES"] = "0"
        stack.start_worker()
        stack.env.pop("TOKENWATCH_ANSWER_IN_MEMORY_BYTES", None)  # the inline side takes each answer whole
        inline = Side(stack, tmp_path / "inline.db", second_redis.url, "--inline")
        chain = Side(stack, stack.db_path, stack.env["TOKENWATCH_REDIS_URL"])
        perps = [s for s in sim.symbols() if sim.contract(s)["type"] == "FFWCSX"]
        script: list[Callable[[], object]] = [
            lambda: None,  # the baseline
            lambda: sim.list_new(3),
            lambda: (sim.delist(perps[:2]), sim.pause(perps[2:4]), sim.schedule_delisting([perps[4]])),
            lambda: (sim.set_params(perps[5], maxLeverage=7, tickSize=0.5), sim.tick()),
            lambda: (sim.relist([perps[0]]), sim.resume([perps[2]])),
            lambda: sim.inject("omit", symbols=[perps[6]], count=2),  # absent, checked, still Open: kept
            sim.tick,
        ]
        statuses = []
        for change in script:
            change()
            first, second = inline.sync(), chain.sync()
            assert first["counts"] == second["counts"]
            assert first["status"] == second["status"]
            assert first["error"] == second["error"]
            statuses.append(first["status"])
    assert statuses == ["baseline", "ok", "ok", "ok", "ok", "ok", "ok"]
    left, right = inline.stored(), chain.stored()
    assert left == right
    # Not vacuously equal: the script made every kind of event, and the cache holds the listed contracts.
    assert {event[1] for event in left["history"]} == {
        "listed", "delisted", "relisted", "status_changed", "delisting_scheduled", "params_changed"}
    assert len(left["stream"]) == len(left["history"])
    assert len(left["cache"]) == sum(1 for row in left["tokens"] if row[1] == "active")
