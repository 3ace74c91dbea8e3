"""tokenwatch.reader against fakeredis and a real SQLite file, filled by the pipeline's own plain functions."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import fakeredis
import pytest
import redis
from sqlalchemy import Engine
from sqlalchemy.exc import OperationalError

from tokenwatch import process
from tokenwatch.cache import hot, keys
from tokenwatch.clock import HOUR_MS
from tokenwatch.db.queries import load_registry
from tokenwatch.db.writer import apply_plan
from tokenwatch.domain.contracts import METADATA_COLUMNS, METADATA_KEYS, parse_contracts
from tokenwatch.domain.diff import build_plan
from tokenwatch.reader import Registry, RegistryUnavailableError, contract_from_row
from tokenwatch.settings import get_settings
from tokenwatch.simulator import generate_contracts, new_contract

WINDOW_H = 72.0
NOW_MS = int(time.time() * 1000)


class World:
    """A registry file and a fake Redis, synced like the pipeline does: commit, then stage and publish."""

    def __init__(self, tmp_path: Path) -> None:
        self.url = f"sqlite:///{tmp_path / 'tokens.db'}"
        self.engine: Engine = process.current().engine(self.url, writer=True)
        self.server = fakeredis.FakeServer()
        self.client = fakeredis.FakeRedis(server=self.server)
        self.syncs = 0
        self.contracts: dict[str, dict[str, Any]] = {}

    def sync(self, contracts: list[dict[str, Any]]) -> str:
        self.syncs += 1
        sync_id = f"sync-{self.syncs}"
        parsed = parse_contracts(contracts)
        assert parsed.invalid == 0, parsed.reasons
        plan = build_plan(sync_id, parsed.contracts, load_registry(self.engine), now_ms=NOW_MS + self.syncs,
                          window_ms=int(WINDOW_H * HOUR_MS), fetched=len(contracts), invalid=0)
        result = apply_plan(self.engine, plan, batch_size=100, started_at=NOW_MS, timings={})
        entries = {symbol: bytes(c.raw) for symbol, c in parsed.contracts.items()}
        staged = keys.cache_key(sync_id)
        size = hot.stage_entries(self.client, staged, entries, {}, 600)
        assert hot.publish(self.client, staged, result.revision, size, registry_id="R", sync_id=sync_id,
                           head=result.revision) == hot.REPLACED
        self.contracts = {c["symbol"]: c for c in contracts}
        return sync_id

    def registry(self, **kwargs: Any) -> Registry:
        kwargs.setdefault("refresh_interval_s", 3600.0)
        return Registry(database_url=self.url, new_listing_window_h=WINDOW_H, redis_client=self.client, **kwargs)


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    current = World(tmp_path)
    current.sync(generate_contracts(20, seed=5, now_ms=NOW_MS))
    yield current


def some_symbol(world: World) -> str:
    return sorted(world.contracts)[0]


def count_commands(monkeypatch: pytest.MonkeyPatch, client: redis.Redis) -> list[Any]:
    """Record every command the client sends outside pipelines (GET, HGET, ...)."""
    calls: list[Any] = []
    original: Any = client.execute_command

    def counting(*args: Any, **options: Any) -> Any:
        calls.append(args[0])
        return original(*args, **options)

    monkeypatch.setattr(client, "execute_command", counting)
    return calls


# ---- snapshot and Redis --------------------------------------------------------------------------------

def test_get_serves_the_cached_contract_with_market_data_from_the_snapshot(world: World) -> None:
    symbol = some_symbol(world)
    registry = world.registry()
    contract = registry.get(symbol)
    assert contract == world.contracts[symbol]
    assert contract is not None and "markPrice" in contract
    assert registry.version == 1
    assert registry.get(symbol) == contract
    assert registry.stats() == {
        "snapshot": {"hits": 2, "misses": 0}, "redis": {"hits": 0, "misses": 0},
        "database": {"hits": 0, "misses": 0},
    }


def test_get_returns_a_copy_so_a_bot_cannot_corrupt_the_snapshot(world: World) -> None:
    symbol = some_symbol(world)
    registry = world.registry()
    mine = registry.get(symbol)
    assert mine is not None
    mine["markPrice"] = -1.0
    again = registry.get(symbol)
    assert again is not None and again["markPrice"] == world.contracts[symbol]["markPrice"]


def test_cached_reads_send_no_command_until_the_refresh_interval_passes(
    world: World, monkeypatch: pytest.MonkeyPatch,
) -> None:
    symbol = some_symbol(world)
    registry = world.registry(refresh_interval_s=0.2)
    assert registry.get(symbol) is not None
    calls = count_commands(monkeypatch, world.client)
    for _ in range(1_000):
        registry.get(symbol)
    assert calls == []
    time.sleep(0.25)
    registry.get(symbol)
    assert calls == ["MGET"]  # the version check (and its origin); it did not move, so no reload


def test_the_snapshot_follows_the_version_after_the_interval(world: World) -> None:
    symbol = some_symbol(world)
    # An interval a loaded machine's sync fits in: the read right after the sync must still fall within it.
    registry = world.registry(refresh_interval_s=1.0)
    before = registry.get(symbol)
    assert before is not None
    ticked = [dict(c) for c in world.contracts.values()]
    for c in ticked:
        c["markPrice"] = round(float(c["markPrice"]) * 1.5 + 1.0, 6)
    world.sync(ticked)
    assert registry.get(symbol) == before  # within the interval: the snapshot as it was
    time.sleep(1.05)
    after = registry.get(symbol)
    assert after is not None and after["markPrice"] == world.contracts[symbol]["markPrice"] != before["markPrice"]
    assert registry.version == 2


def test_a_symbol_listed_since_the_last_check_comes_from_redis_then_the_snapshot(world: World) -> None:
    registry = world.registry()
    assert registry.get(some_symbol(world)) is not None
    listing = new_contract("NEWCOIN", NOW_MS)
    world.sync([*world.contracts.values(), listing])
    assert registry.get(listing["symbol"]) == listing
    assert registry.stats()["redis"] == {"hits": 1, "misses": 0}
    assert registry.get(listing["symbol"]) == listing  # the Redis hit forced a reload
    assert registry.version == 2
    stats = registry.stats()
    assert stats["snapshot"] == {"hits": 2, "misses": 1}
    assert stats["redis"] == {"hits": 1, "misses": 0}


def test_an_unknown_symbol_is_a_miss_and_never_reaches_the_database(world: World) -> None:
    registry = world.registry()
    assert registry.get("NOSUCHUSDTM") is None
    assert registry.stats() == {
        "snapshot": {"hits": 0, "misses": 1}, "redis": {"hits": 0, "misses": 1},
        "database": {"hits": 0, "misses": 0},
    }


def test_active_is_the_snapshot(world: World) -> None:
    registry = world.registry()
    active = registry.active()
    assert active == world.contracts
    active.pop(some_symbol(world))
    assert len(registry.active()) == 20  # a new dict each call
    assert registry.stats()["snapshot"] == {"hits": 2, "misses": 0}


def test_a_delisted_symbol_disappears_once_the_version_moves(world: World) -> None:
    registry = world.registry(refresh_interval_s=0.05)
    gone = some_symbol(world)
    assert registry.get(gone) is not None
    world.sync([c for s, c in world.contracts.items() if s != gone])
    time.sleep(0.1)
    assert registry.get(gone) is None
    assert gone not in registry.active()


# ---- the database ------------------------------------------------------------------------------------------

def test_contract_from_row_rebuilds_the_listing_metadata_in_kucoins_shape(world: World) -> None:
    registry = world.registry()
    world.server.connected = False
    for symbol, raw in world.contracts.items():
        contract = registry.get(symbol)
        assert contract is not None
        assert contract["symbol"] == symbol
        assert contract["status"] == raw["status"]
        for key in METADATA_KEYS:
            expected = raw.get(key)
            if key == "sourceExchanges" and expected is not None:
                expected = sorted(expected)
            if isinstance(expected, str) and key.endswith("Date"):
                expected = int(expected)
            assert contract[key] == expected, key
        assert "markPrice" not in contract
    empty = contract_from_row({"symbol": "X", "contract_status": "Open", **dict.fromkeys(METADATA_COLUMNS)})
    assert empty["sourceExchanges"] is None
    assert contract_from_row({"symbol": "X", "contract_status": "Open", **dict.fromkeys(METADATA_COLUMNS, None),
                              "source_exchanges": ""})["sourceExchanges"] == []


def test_redis_down_falls_back_to_the_database_and_counts_it(world: World) -> None:
    symbol = some_symbol(world)
    gone = sorted(world.contracts)[1]
    world.sync([c for s, c in world.contracts.items() if s != gone])
    registry = world.registry(refresh_interval_s=0.0, redis_retry_s=60.0)
    world.server.connected = False

    contract = registry.get(symbol)
    assert contract is not None
    assert contract["baseCurrency"] == world.contracts[symbol]["baseCurrency"]
    assert "markPrice" not in contract
    assert registry.get(gone) is None  # delisted in the database: a miss there too
    assert set(registry.active()) == set(world.contracts)
    assert registry.version is None
    assert registry.stats() == {
        "snapshot": {"hits": 0, "misses": 3}, "redis": {"hits": 0, "misses": 3},
        "database": {"hits": 2, "misses": 1},
    }


def test_redis_is_left_alone_for_the_retry_interval_then_used_again(
    world: World, monkeypatch: pytest.MonkeyPatch,
) -> None:
    symbol = some_symbol(world)
    registry = world.registry(refresh_interval_s=0.0, redis_retry_s=0.3)
    assert registry.get(symbol) is not None
    world.server.connected = False
    assert registry.get(symbol) is not None  # the failed version check: database
    calls = count_commands(monkeypatch, world.client)
    for _ in range(50):
        assert registry.get(symbol) is not None
    assert calls == []  # an outage costs one failed call per retry interval, not one per read
    world.server.connected = True
    time.sleep(0.35)
    contract = registry.get(symbol)
    assert contract is not None and "markPrice" in contract
    assert registry.version == 1
    assert registry.stats()["database"] == {"hits": 51, "misses": 0}


def test_redis_with_nothing_published_reads_the_database(tmp_path: Path) -> None:
    world = World(tmp_path)
    world.sync(generate_contracts(5, seed=2, now_ms=NOW_MS))
    world.client.flushall()  # Redis restarted empty: no version, no hash
    registry = world.registry()
    symbol = sorted(world.contracts)[0]
    contract = registry.get(symbol)
    assert contract is not None and contract["symbol"] == symbol
    assert len(registry.active()) == 5
    assert registry.stats()["database"] == {"hits": 2, "misses": 0}
    assert registry.stats()["redis"]["misses"] == 2



def test_new_listings_join_the_database_rows_with_the_live_contract(world: World) -> None:
    listing = new_contract("FRESH", NOW_MS)
    world.sync([*world.contracts.values(), listing])
    registry = world.registry()
    rows = registry.new_listings()
    assert [r["symbol"] for r in rows] == [listing["symbol"]]
    assert rows[0]["is_new"] is True
    assert rows[0]["listed_at"] == listing["firstOpenDate"]
    assert rows[0]["contract"] == listing  # market data from the snapshot
    assert registry.stats()["database"] == {"hits": 1, "misses": 0}

    world.server.connected = False
    down = world.registry(refresh_interval_s=0.0)
    rows = down.new_listings()
    assert [r["symbol"] for r in rows] == [listing["symbol"]]
    assert rows[0]["contract"]["baseCurrency"] == "FRESH"
    assert "markPrice" not in rows[0]["contract"]


def test_recent_events_come_from_the_history_newest_first(world: World) -> None:
    listing = new_contract("FRESH", NOW_MS)
    gone = some_symbol(world)
    world.sync([*(c for s, c in world.contracts.items() if s != gone), listing])
    registry = world.registry()
    events = registry.recent_events()
    assert {(e["symbol"], e["event_type"]) for e in events} == {(listing["symbol"], "listed"), (gone, "delisted")}
    assert all(e["sync_id"] == "sync-2" for e in events)
    assert [e["event_type"] for e in registry.recent_events(symbol=gone)] == ["delisted"]
    assert len(registry.recent_events(limit=1)) == 1
    with pytest.raises(ValueError, match="limit"):
        registry.recent_events(limit=0)


def test_no_redis_and_no_database_raises_and_creates_no_file(tmp_path: Path) -> None:
    server = fakeredis.FakeServer()
    server.connected = False
    missing = tmp_path / "absent" / "tokens.db"
    registry = Registry(database_url=f"sqlite:///{missing}", new_listing_window_h=WINDOW_H,
                        redis_client=fakeredis.FakeRedis(server=server))
    with pytest.raises(RegistryUnavailableError, match="unreadable"):
        registry.get("XBTUSDTM")
    with pytest.raises(RegistryUnavailableError):
        registry.recent_events()
    assert not missing.exists()
    assert not missing.parent.exists()
    assert registry.stats()["database"] == {"hits": 0, "misses": 2}


def test_the_reader_never_writes_the_database(world: World) -> None:
    registry = world.registry()
    engine = registry._get_engine()
    with engine.connect() as conn, pytest.raises(OperationalError, match="attempt to write a readonly database"):
        conn.exec_driver_sql("DELETE FROM tokens")
    assert len(registry.active()) == 20
    registry.close()


# ---- settings, metrics and cost ------------------------------------------------------------------------------

def test_urls_default_to_the_settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("TOKENWATCH_DATABASE_URL", f"sqlite:///{tmp_path / 'x.db'}")
    monkeypatch.setenv("TOKENWATCH_REDIS_URL", "redis://127.0.0.1:1/3")
    monkeypatch.setenv("TOKENWATCH_NEW_LISTING_WINDOW_H", "2")
    get_settings.cache_clear()
    try:
        registry = Registry()
        assert registry.database_url == f"sqlite:///{tmp_path / 'x.db'}"
        assert registry.redis_url == "redis://127.0.0.1:1/3"
        assert registry._window_ms == 2 * HOUR_MS
        registry.close()
    finally:
        get_settings.cache_clear()


def test_bad_intervals_are_refused(world: World) -> None:
    with pytest.raises(ValueError, match="refresh_interval_s"):
        world.registry(refresh_interval_s=-1)


def test_the_on_access_hook_sees_every_access(world: World) -> None:
    seen: list[tuple[str, bool]] = []
    registry = world.registry(on_access=lambda layer, hit: seen.append((layer, hit)))
    registry.get(some_symbol(world))
    registry.get("NOSUCHUSDTM")
    assert seen == [("snapshot", True), ("snapshot", False), ("redis", False)]


def test_a_failing_on_access_hook_is_dropped_and_reads_go_on(world: World) -> None:
    calls: list[str] = []

    def broken(layer: str, _hit: bool) -> None:
        calls.append(layer)
        raise RuntimeError("registry full")

    registry = world.registry(on_access=broken)
    assert registry.get(some_symbol(world)) is not None
    assert registry.get(some_symbol(world)) is not None
    assert calls == ["snapshot"]
    assert registry.stats()["snapshot"]["hits"] == 2


def test_the_metrics_module_counts_reads_through_the_hook(world: World) -> None:
    from tokenwatch import metrics

    before = metrics.CACHE_HITS.labels("snapshot")._value.get()
    registry = world.registry(on_access=metrics.record_cache_access)
    registry.get(some_symbol(world))
    assert metrics.CACHE_HITS.labels("snapshot")._value.get() == before + 1


def test_a_cached_get_sends_nothing_to_redis(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    symbol = some_symbol(world)
    registry = world.registry()
    registry.get(symbol)  # the first read loads the snapshot
    calls = count_commands(monkeypatch, world.client)
    for _ in range(1_000):
        assert registry.get(symbol) is not None
    assert calls == []  # served from this process's snapshot: no round trip per read


def test_one_unreadable_cache_entry_costs_that_symbol_its_copy_not_every_read(
    world: World, caplog: pytest.LogCaptureFixture,
) -> None:
    # Written by something that did not check it (an older release, a hand edit): a number past a double.
    bad, good = sorted(world.contracts)[:2]
    world.client.hset(keys.TOKENS, bad, b'{"symbol":"' + bad.encode() + b'","futureField":1e400}')
    world.client.incr(keys.VERSION)  # a new version: readers reload the snapshot
    registry = world.registry()
    with caplog.at_level(logging.WARNING, logger="tokenwatch.cache.hot"):
        assert registry.get(good) == world.contracts[good]  # every other read is served as before
    assert any("cannot be read" in r.getMessage() and bad in r.getMessage() for r in caplog.records)
    from_db = registry.get(bad)  # the database's row: listing metadata, no market data
    assert from_db is not None and from_db["symbol"] == bad and "markPrice" not in from_db
    active = registry.active()
    assert set(active) == set(world.contracts)
    assert active[good] == world.contracts[good] and "markPrice" not in active[bad]
