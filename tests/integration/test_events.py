"""The event stream tokenwatch:events: committed events appear once, in order, and never for a baseline."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import redis

from tests.conftest import Stack
from tests.steps_support import run_steps, step_context
from tokenwatch import pipeline, steps
from tokenwatch.cache import keys, lock
from tokenwatch.db.queries import load_head
from tokenwatch.db.writer import apply_plan
from tokenwatch.embedded import EmbeddedRedis
from tokenwatch.outbox import publish_pending
from tokenwatch.settings import Settings
from tokenwatch.simulator import Simulator
from tokenwatch.syncstate import SyncState

pytestmark = pytest.mark.integration


def _stream(client: redis.Redis) -> list[tuple[str, dict[str, str]]]:
    return [(i.decode(), {k.decode(): v.decode() for k, v in f.items()}) for i, f in client.xrange(keys.EVENTS)]


def test_events_reach_the_stream_through_the_worker_and_the_cli(stack: Stack) -> None:
    with Simulator(port=0, contracts=120, seed=5) as sim:
        stack.env["TOKENWATCH_KUCOIN_URL"] = sim.url
        stack.start_worker()
        assert stack.sync()["status"] == "baseline"
        assert _stream(stack.redis) == []
        listed = sim.list_new(2)
        gone = sim.symbols()[0]
        sim.delist([gone])
        outcome = stack.sync()
    entries = _stream(stack.redis)
    assert sorted((f["symbol"], f["event_type"]) for _, f in entries) == sorted(
        [(s, "listed") for s in listed] + [(gone, "delisted")])
    assert {f["sync_id"] for _, f in entries} == {outcome["sync_id"]}
    assert all(set(f) == {"symbol", "event_type", "event_time", "sync_id", "details", "registry", "history_id"}
               for _, f in entries)
    history_ids = [str(r[0]) for r in stack.query("SELECT id FROM token_history ORDER BY id")]
    assert [f["history_id"] for _, f in entries] == history_ids
    (registry_id,) = stack.query("SELECT registry_id FROM registry_state")[0]
    assert {f["registry"] for _, f in entries} == {registry_id}

    printed = stack.tokenwatch("events", "--json")
    assert printed.returncode == 0, printed.stderr
    assert [json.loads(line)["symbol"] for line in printed.stdout.splitlines()] == [f["symbol"] for _, f in entries]


def _settings(tmp_path: Path, sim: Simulator, server: EmbeddedRedis) -> Settings:
    return Settings(kucoin_url=sim.url, database_url=f"sqlite:///{tmp_path / 't.db'}", redis_url=server.url,
                    data_dir=str(tmp_path / "data"))


def test_exactly_once_after_a_crash_between_commit_and_publish(
    tmp_path: Path, redis_server: EmbeddedRedis, redis_client: redis.Redis,
) -> None:
    with Simulator(port=0, contracts=60, seed=9) as sim:
        settings = _settings(tmp_path, sim, redis_server)
        assert pipeline.sync_inline(settings).status == "baseline"
        sim.list_new(3)
        # The write commits, then the process "dies" before the cache swap and the publish (its lock lapses).
        ctx = step_context(settings, redis_client)
        state = run_steps(ctx, SyncState.new(), steps.fetch, steps.diff)
        engine = ctx.engine(writer=True)
        apply_plan(engine, ctx.handoff.take_plan(state.sync_id), batch_size=100, started_at=state.started_at,
                   timings={})
        lock.release(redis_client, state.sync_id)
        assert _stream(redis_client) == []

        registry_id = load_head(engine).registry_id
        assert registry_id is not None
        assert publish_pending(engine, redis_client, registry_id) == 3  # the redelivered or next write does it
        assert publish_pending(engine, redis_client, registry_id) == 0  # and a second publisher adds nothing
        assert len(_stream(redis_client)) == 3

        # The stream lost (Redis flushed): the database's own cursor stops old events from going out again.
        redis_client.delete(keys.EVENTS, keys.EVENTS_CURSOR)
        assert publish_pending(engine, redis_client, registry_id) == 0
        sim.list_new(1)
        assert pipeline.sync_inline(settings).counts["listed"] == 1
        assert [f["event_type"] for _, f in _stream(redis_client)] == ["listed"]


def test_commit_to_consumer_delay(tmp_path: Path, redis_server: EmbeddedRedis, redis_client: redis.Redis) -> None:
    received: list[tuple[float, list[Any]]] = []
    consumer = redis.Redis(unix_socket_path=redis_server.socket_path)

    def consume() -> None:
        answer = consumer.xread({keys.EVENTS: "$"}, block=10_000, count=100)
        received.append((time.perf_counter(), answer))

    with Simulator(port=0, contracts=60, seed=11) as sim:
        settings = _settings(tmp_path, sim, redis_server)
        assert pipeline.sync_inline(settings).status == "baseline"
        listed = sim.list_new(1)
        ctx = step_context(settings, redis_client)
        state = run_steps(ctx, SyncState.new(), steps.fetch, steps.diff)
        thread = threading.Thread(target=consume)
        thread.start()
        time.sleep(0.2)  # the consumer is blocked in XREAD before the commit
        started = time.perf_counter()
        assert run_steps(ctx, state, steps.write).status == "ok"  # commit, cache swap, publish
        thread.join(15)
    consumer.close()
    assert received, "the consumer never received the event"
    at, answer = received[0]
    ((_stream_key, entries),) = answer
    assert [fields[b"symbol"].decode() for _id, fields in entries] == listed
    print(f"\nwrite step start to consumer: {(at - started) * 1000:.2f} ms")
