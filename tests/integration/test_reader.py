"""tokenwatch.reader after real syncs against the simulator: a real Redis server, a real SQLite file."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
import redis

from tests.conftest import Stack
from tokenwatch.cache import keys
from tokenwatch.embedded import EmbeddedRedis
from tokenwatch.reader import Registry
from tokenwatch.simulator import Simulator

pytestmark = pytest.mark.integration

DEAD_REDIS = "redis://127.0.0.1:1/0"


def _cache(stack: Stack) -> dict[str, dict[str, Any]]:
    raw: dict[bytes, bytes] = stack.redis.hgetall(keys.TOKENS)  # type: ignore[assignment]
    return {k.decode(): json.loads(v) for k, v in raw.items()}


def _commands_processed(stack: Stack) -> int:
    return int(stack.redis.info("stats")["total_commands_processed"])


def _per_call_us(action: Any, rounds: int) -> float:
    started = time.perf_counter()
    for _ in range(rounds):
        action()
    return (time.perf_counter() - started) / rounds * 1e6


@pytest.mark.usefixtures("database_url")  # on SQLite and PostgreSQL
def test_registry_reads_the_synced_cache_and_the_database(stack: Stack) -> None:
    with Simulator(port=0, contracts=100, seed=11) as sim:
        stack.env["TOKENWATCH_KUCOIN_URL"] = sim.url
        assert stack.sync("--inline")["status"] == "baseline"
        listed = sim.list_new(1)[0]
        second = stack.sync("--inline")
        assert second["status"] == "ok"
        assert second["counts"]["listed"] == 1
    cache = _cache(stack)
    assert len(cache) == 101
    database_url = stack.env["TOKENWATCH_DATABASE_URL"]

    with Registry(redis_url=stack.env["TOKENWATCH_REDIS_URL"], database_url=database_url) as registry:
        contract = registry.get(listed)
        assert contract == cache[listed]
        assert contract is not None and isinstance(contract["markPrice"], float)
        assert registry.version == 2
        assert registry.active() == cache
        assert registry.get("NOSUCHUSDTM") is None

        new = registry.new_listings()
        assert [row["symbol"] for row in new] == [listed]
        assert new[0]["contract"] == cache[listed]
        events = registry.recent_events()
        assert [(e["symbol"], e["event_type"], e["sync_id"]) for e in events] == [
            (listed, "listed", second["sync_id"])]
        assert registry.recent_events(symbol="XBTUSDTM") == []

        # Cached reads within the refresh interval send nothing to Redis.
        before = _commands_processed(stack)
        cached_us = _per_call_us(lambda: registry.get(listed), 10_000)
        assert _commands_processed(stack) - before <= 2  # the two INFO calls themselves at most
        stats = registry.stats()
        assert stats["snapshot"]["hits"] >= 10_002
        assert stats["redis"] == {"hits": 0, "misses": 1}
        assert stats["database"] == {"hits": 3, "misses": 0}  # new_listings and both recent_events

    # The same read when every call asks Redis for the version: a round trip each time.
    with Registry(redis_url=stack.env["TOKENWATCH_REDIS_URL"], database_url=database_url,
                  refresh_interval_s=0.0) as checking:
        checked_us = _per_call_us(lambda: checking.get(listed), 2_000)
    print(f"\nRegistry.get on a real Redis: {cached_us:.2f} µs from the snapshot, "
          f"{checked_us:.1f} µs with a version check on every read")
    assert cached_us < checked_us

    # Redis unreachable from the start: every answer comes from the database.
    with Registry(redis_url=DEAD_REDIS, database_url=database_url) as fallback:
        from_db = fallback.get(listed)
        assert from_db is not None
        assert {k: from_db[k] for k in ("symbol", "status", "baseCurrency", "tickSize", "firstOpenDate")} == {
            k: cache[listed][k] for k in ("symbol", "status", "baseCurrency", "tickSize", "firstOpenDate")}
        assert "markPrice" not in from_db
        assert set(fallback.active()) == set(cache)
        assert fallback.get("NOSUCHUSDTM") is None
        assert fallback.version is None
        assert fallback.stats() == {
            "snapshot": {"hits": 0, "misses": 3}, "redis": {"hits": 0, "misses": 3},
            "database": {"hits": 2, "misses": 1},
        }


@pytest.mark.usefixtures("database_url")  # on SQLite and PostgreSQL
def test_registry_survives_redis_stopping_and_coming_back_empty(stack: Stack, tmp_path: Path) -> None:
    own = EmbeddedRedis(str(tmp_path / "r" / "redis.sock"), str(tmp_path / "r")).start()
    try:
        stack.env["TOKENWATCH_REDIS_URL"] = own.url
        with Simulator(port=0, contracts=100, seed=12) as sim:
            stack.env["TOKENWATCH_KUCOIN_URL"] = sim.url
            assert stack.sync("--inline")["status"] == "baseline"
            symbol = sim.symbols()[0]
            registry = Registry(redis_url=own.url, database_url=stack.env["TOKENWATCH_DATABASE_URL"],
                                refresh_interval_s=0.0, redis_retry_s=0.3)
            live = registry.get(symbol)
            assert live is not None and "markPrice" in live

            own.stop()
            from_db = registry.get(symbol)
            assert from_db is not None
            assert from_db["baseCurrency"] == live["baseCurrency"]
            assert "markPrice" not in from_db
            assert len(registry.active()) == 100
            assert registry.stats()["database"] == {"hits": 2, "misses": 0}
            assert registry.stats()["redis"] == {"hits": 0, "misses": 2}

            # Back, but empty (a restart without persistence): nothing published, so still the database.
            own.start()
            own_client = redis.Redis(unix_socket_path=own.socket_path)
            own_client.flushall()
            time.sleep(0.35)
            again = registry.get(symbol)
            assert again is not None and "markPrice" not in again
            assert registry.version is None
            assert registry.stats()["database"]["hits"] == 3

            # The next sync publishes the cache again: the snapshot serves with market data.
            assert stack.sync("--inline")["status"] == "ok"
            back = registry.get(symbol)
            assert back is not None and "markPrice" in back
            assert back == json.loads(own_client.hget(keys.TOKENS, symbol) or b"null")
            assert registry.version == int(own_client.get(keys.VERSION) or 0) == 2
            assert registry.stats()["snapshot"]["hits"] == 2
            own_client.close()
            registry.close()
    finally:
        own.stop()
