"""The registry a diff shares through Redis (cache/snapshot.py), with a real Redis, real SQLite files and the
simulated exchange: a process that did not make the last commit diffs from it exactly as from the database, and
falls back to the database whenever the snapshot is not the registry's head."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from tokenwatch import pipeline, process
from tokenwatch.cache import keys, snapshot
from tokenwatch.clock import now_ms
from tokenwatch.db.queries import load_head, load_registry
from tokenwatch.embedded import EmbeddedRedis
from tokenwatch.handoff import MemoryHandoff, RedisHandoff
from tokenwatch.process import ProcessState
from tokenwatch.settings import Settings, get_settings
from tokenwatch.simulator import Simulator
from tokenwatch.steps import StepContext, _build, after_write, diff, fetch, load_state, run_step, warm_up, write
from tokenwatch.syncstate import SyncState
from tokenwatch.worker_memory import LIVE_WORKERS

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
        plan = _build(ctx, state, body)
        staged = redis_client.hgetall(keys.cache_key(state.sync_id))
        plans.append((plan.to_json(), staged, state.cache_size))
    assert plans[0] == plans[1]
    assert plans[0][0]["counts"]["listed"] == 2 and plans[0][0]["counts"]["params_changed"] == 1
    for state in (writer, shared.process, read.process):
        state.close()


def test_alternating_processes_each_take_the_others_snapshot(
    settings: Settings, sim: Simulator, redis_client: redis.Redis,
) -> None:
    # Two worker processes: each reports in after its syncs (worker_memory), so each knows it is not alone.
    processes = [ProcessState(worker_name="a"), ProcessState(worker_name="b")]
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


def test_a_lone_process_shares_after_its_write_not_during_its_sync(
    settings: Settings, sim: Simulator, redis_client: redis.Redis,
) -> None:
    alone = ProcessState()
    assert pipeline.sync_inline(settings, alone).status == "baseline"
    sim.list_new(1)
    sim.tick(1.0)
    ctx = StepContext(settings, alone, MemoryHandoff(), alone.redis(settings.redis_url))
    assert pipeline.run_inline(ctx).outcome().status == "ok"
    head = load_head(ctx.engine())
    assert snapshot.load(redis_client, head) is None  # no other process reported in: nobody else diffs next
    after_write(ctx)  # what a worker does once the write is done, off the sync's time
    assert snapshot.load(redis_client, head) is not None  # a process started later begins warm

    redis_client.zadd(LIVE_WORKERS, {"elsewhere-1": now_ms()})  # another worker process reports in
    sim.list_new(1)
    sim.tick(1.0)
    assert pipeline.run_inline(ctx).outcome().status == "ok"
    assert snapshot.load(redis_client, load_head(ctx.engine())) is not None  # shared by the diff itself
    alone.close()


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


_NAMES = itertools.count()


def worker(settings: Settings) -> StepContext:
    """A worker's pool process: its own state, the handoff through the real Redis, and a name of its own (with
    it, each reports in after its syncs, as worker processes do, and so knows it is not alone)."""
    state = ProcessState(worker_name=f"worker{next(_NAMES)}")
    client = state.redis(settings.redis_url)
    return StepContext(settings, state, RedisHandoff(client, state, settings.staging_ttl_s), client)


def two_workers(settings: Settings, sim: Simulator) -> tuple[StepContext, StepContext]:
    """Two pool processes of workers on both queues: b's baseline, a sync whose diff a ran, the exchange moved
    since (one listing, market data)."""
    a, b = worker(settings), worker(settings)
    assert pipeline.sync_inline(settings, b.process).status == "baseline"
    sim.tick(1.0)
    assert alternate(b, a).outcome().status == "ok"
    sim.list_new(1)
    sim.tick(1.0)
    return a, b


def alternate(first: StepContext, second: StepContext) -> SyncState:
    """One sync as two idle workers run it: fetch and write on first, the diff on second."""
    state = run_step(fetch, first, SyncState.new())
    state = run_step(diff, second, state)
    return run_step(write, first, state)


def test_a_write_leaves_its_process_holding_the_registry_for_the_next_diff(
    settings: Settings, sim: Simulator, redis_client: redis.Redis,
) -> None:
    # Two idle workers take the steps in turn, so the next diff lands on the process that ran this write, not
    # on the one that ran this diff: after warm_up it holds the head's registry and reads nothing to diff.
    a, b = two_workers(settings, sim)
    assert alternate(a, b).outcome().status == "ok"
    head = load_head(a.engine())
    assert a.process.trusted_registry(head) is None  # a committed a plan b built
    assert warm_up(a) is True
    held = a.process.trusted_registry(head)
    assert held is not None and held.head == head
    stored = load_registry(a.engine()).rows
    assert {s: (r.status, r.meta) for s, r in held.rows.items()} == {s: (r.status, r.meta) for s, r in stored.items()}
    # The memo took the snapshot's (newer) validations, the very tuples the rows hold: one copy of each.
    validated = a.process.memo.validated
    assert all(validated[s][1] is row.meta for s, row in held.rows.items() if row.status == "active")
    assert warm_up(a) is False  # holding it already: nothing read again

    redis_client.unlink(snapshot.snapshot_key(head.registry_id or ""))
    assert load_state(a) is held  # the next diff on a: no database read, no snapshot needed
    listed = sim.list_new(1)
    sim.tick(1.0)
    outcome = alternate(b, a).outcome()
    assert outcome.status == "ok" and outcome.counts["listed"] == 1, outcome
    assert listed[0] in load_registry(a.engine()).rows

    # a has parsed an answer of its own now; after its next write it takes the newer validations all the same.
    sim.tick(1.0)
    assert alternate(a, b).outcome().status == "ok"
    assert warm_up(a) is True
    held = a.process.trusted_registry(load_head(a.engine()))
    assert held is not None
    validated = a.process.memo.validated
    assert all(validated[s][1] is row.meta for s, row in held.rows.items() if row.status == "active")
    for ctx in (a, b):
        ctx.process.close()


def test_warm_up_takes_nothing_that_is_not_the_head(
    settings: Settings, sim: Simulator, redis_client: redis.Redis,
) -> None:
    a, b = two_workers(settings, sim)
    old = load_head(b.engine())
    kept = redis_client.get(snapshot.snapshot_key(old.registry_id or ""))
    assert alternate(a, b).outcome().status == "ok"
    # The commit's snapshot is replaced by the older head's (Redis restored from an older dump, say).
    redis_client.set(snapshot.snapshot_key(old.registry_id or ""), kept or b"")
    assert warm_up(a) is False
    assert a.process.registry is None
    head = load_head(a.engine())
    assert load_state(a).head == head != old  # read from the database
    for ctx in (a, b):
        ctx.process.close()


def test_the_write_task_warms_its_process_after_its_outcome(
    settings: Settings, sim: Simulator, redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The task's own trace (Celery's, run eagerly): task_postrun calls warm_up once the outcome is stored.
    from tokenwatch.tasks.sync import write_batch

    for name, value in (("KUCOIN_URL", sim.url), ("DATABASE_URL", settings.database_url),
                        ("REDIS_URL", settings.redis_url), ("HTTP_RETRIES", "0")):
        monkeypatch.setenv(f"TOKENWATCH_{name}", value)
    get_settings.cache_clear()
    a, b = two_workers(settings, sim)
    state = run_step(diff, b, run_step(fetch, a, SyncState.new()))
    try:
        with process.use(a.process):
            outcome = write_batch.apply(args=(state.to_json(),)).get()
    finally:
        get_settings.cache_clear()
    assert outcome["status"] == "ok"
    head = load_head(a.engine())
    assert a.process.trusted_registry(head) is not None
    for ctx in (a, b):
        ctx.process.close()


def test_a_process_that_never_diffs_takes_nothing_after_its_writes(
    settings: Settings, sim: Simulator, redis_client: redis.Redis,
) -> None:
    # A worker on the db queue alone: it writes every sync and never diffs, so holding the registry (and
    # decoding it after each write) would be work and memory for nothing.
    writer, differ = worker(settings), worker(settings)
    assert pipeline.sync_inline(settings, differ.process).status == "baseline"
    for _ in range(2):
        sim.list_new(1)
        sim.tick(1.0)
        state = run_step(diff, differ, run_step(fetch, differ, SyncState.new()))
        assert run_step(write, writer, state).outcome().status == "ok"
        assert warm_up(writer) is False
        assert writer.process.registry is None and not writer.process.memo.validated
    for ctx in (writer, differ):
        ctx.process.close()
