"""The registry a diff shares through Redis (cache/snapshot.py), with a real Redis, real SQLite files and the
simulated exchange: a process that did not make the last commit diffs from it exactly as from the database, and
falls back to the database whenever the snapshot is not the registry's head."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from tokenwatch import pipeline
from tokenwatch.cache import snapshot
from tokenwatch.clock import now_ms
from tokenwatch.db.queries import load_head, load_registry
from tokenwatch.embedded import EmbeddedRedis
from tokenwatch.handoff import MemoryHandoff
from tokenwatch.process import ProcessState
from tokenwatch.settings import Settings
from tokenwatch.simulator import Simulator
from tokenwatch.steps import StepContext, _build, load_state
from tokenwatch.syncstate import SyncState

pytestmark = pytest.mark.integration


@pytest.fixture
def sim() -> Iterator[Simulator]:
    with Simulator(port=0, contracts=60, seed=41) as simulator:
        yield simulator


@pytest.fixture
def settings(sim: Simulator, redis_server: EmbeddedRedis, redis_client: redis.Redis, tmp_path: Path) -> Settings:
    return Settings(kucoin_url=sim.url, database_url=f"sqlite:///{tmp_path / 'tokens.db'}",
                    redis_url=redis_server.url, http_retries=0)


def fresh(settings: Settings) -> StepContext:
    """A process that has never synced: its own state, the real Redis."""
    state = ProcessState()
    return StepContext(settings, state, MemoryHandoff(), state.redis(settings.redis_url))


def answer(ctx: StepContext) -> bytes:
    response = ctx.process.http_session().get(ctx.settings.kucoin_url + "/api/v1/contracts/active", timeout=10)
    response.raise_for_status()
    return response.content


def seeded(ctx: StepContext) -> int:
    """How many validations this process holds (before its first parse: only those of a shared snapshot)."""
    return len(ctx.process.memo.validated)


def test_a_fresh_process_diffs_from_the_snapshot_as_from_the_database(
    settings: Settings, sim: Simulator, redis_client: redis.Redis,
) -> None:
    writer = ProcessState()
    for _ in range(2):
        assert pipeline.sync_inline(settings, writer).status in ("baseline", "ok")
    symbols = sim.symbols()
    sim.set_params(symbols[0], tickSize=0.5)
    sim.delist([symbols[1]])
    sim.list_new(2)
    sim.tick(1.0)

    shared, read = fresh(settings), fresh(settings)
    body = answer(shared)
    registry = load_state(shared)
    assert seeded(shared) == len(registry.rows)  # it took the snapshot, and its validations
    head = registry.head
    redis_client.unlink(snapshot.snapshot_key(head.registry_id or ""))
    from_db = load_state(read)
    assert seeded(read) == 0 and from_db.head == head
    stored = load_registry(writer.engine(settings.database_url)).rows
    assert {s: (r.status, r.contract_status, r.meta) for s, r in registry.rows.items()} == {
        s: (r.status, r.contract_status, r.meta) for s, r in stored.items()}

    fetched_at = now_ms()
    plans = []
    for ctx in (shared, read):
        state = SyncState.new("20261203T000000Z-abcdef")
        state.fetched_at_ms = fetched_at
        plan, entries, kept = _build(ctx, state, body)
        plans.append((plan.to_json(), set(entries), kept))
    assert plans[0] == plans[1]
    assert plans[0][0]["counts"]["listed"] == 2 and plans[0][0]["counts"]["params_changed"] == 1
    for state in (writer, shared.process, read.process):
        state.close()


def test_alternating_processes_each_take_the_others_snapshot(
    settings: Settings, sim: Simulator, redis_client: redis.Redis,
) -> None:
    processes = [ProcessState(), ProcessState()]
    assert pipeline.sync_inline(settings, processes[0]).status == "baseline"
    listed: list[str] = []
    for turn in range(4):
        listed += sim.list_new(1)
        sim.tick(1.0)
        ctx = StepContext(settings, processes[(turn + 1) % 2], MemoryHandoff(),
                          processes[(turn + 1) % 2].redis(settings.redis_url))
        head = load_head(ctx.engine())
        assert ctx.process.trusted_registry(head) is None  # the other process made the last commit
        assert snapshot.load(redis_client, head) is not None  # ... and shared what it left
        outcome = pipeline.run_inline(ctx).outcome()
        assert outcome.status == "ok" and outcome.counts["listed"] == 1, outcome
    engine = processes[0].engine(settings.database_url)
    rows = load_registry(engine).rows
    assert {s for s, r in rows.items() if r.status == "active"} == set(sim.symbols())
    for state in processes:
        state.close()


def test_a_commit_that_shared_nothing_leaves_the_snapshot_untrusted(
    settings: Settings, sim: Simulator, redis_client: redis.Redis,
) -> None:
    first = ProcessState()
    assert pipeline.sync_inline(settings, first).status == "baseline"
    old_head = load_head(first.engine(settings.database_url))
    kept = redis_client.get(snapshot.snapshot_key(old_head.registry_id or ""))
    sim.list_new(1)
    sim.tick(1.0)
    assert pipeline.sync_inline(settings, first).status == "ok"
    # The later commit's snapshot is lost (Redis restarted from an older dump, say): the older one is back.
    redis_client.set(snapshot.snapshot_key(old_head.registry_id or ""), kept or b"")
    ctx = fresh(settings)
    registry = load_state(ctx)
    assert seeded(ctx) == 0  # not trusted: the database was read
    assert registry.head == load_head(ctx.engine()) != old_head
    assert len(registry.rows) == len(sim.symbols())
    ctx.process.close()
    first.close()
