"""cache.hot against fakeredis: staging, the versioned swap, and the in-process snapshot."""

from __future__ import annotations

from typing import Any

import fakeredis
import orjson
import pytest
import redis

from tokenwatch.cache import hot, keys

TTL_S = 600


@pytest.fixture
def client() -> redis.Redis:
    return fakeredis.FakeRedis()


def entry(symbol: str, mark: float) -> bytes:
    return orjson.dumps({"symbol": symbol, "status": "Open", "markPrice": mark})


def live(client: redis.Redis) -> dict[Any, Any]:
    return dict(client.hgetall(keys.TOKENS))


def publish_entries(client: redis.Redis, revision: int, entries: dict[str, bytes]) -> bool:
    """Stage entries under this revision's key and publish them."""
    staged = keys.cache_key(f"sync-{revision}")
    size = hot.stage_entries(client, staged, entries, [], TTL_S)
    return hot.publish(client, staged, revision, size)


def as_bytes(entries: dict[str, bytes]) -> dict[bytes, bytes]:
    return {k.encode(): v for k, v in entries.items()}


# ---- staging -----------------------------------------------------------------------------------------------

def test_stage_entries_builds_a_fresh_hash_with_a_ttl(client: redis.Redis) -> None:
    staged = keys.cache_key("sync-1")
    client.hset(staged, "LEFTOVERUSDTM", b"from a crashed attempt")
    entries = {"XBTUSDTM": entry("XBTUSDTM", 1.0), "ETHUSDTM": entry("ETHUSDTM", 2.0)}
    assert hot.stage_entries(client, staged, entries, [], TTL_S) == 2
    assert client.hgetall(staged) == as_bytes(entries)
    assert 0 < client.ttl(staged) <= TTL_S
    assert client.exists(keys.TOKENS) == 0  # the live hash is not touched by staging


def test_stage_entries_writes_large_snapshots_in_chunks(client: redis.Redis) -> None:
    entries = {f"C{i}USDTM": entry(f"C{i}USDTM", float(i)) for i in range(hot.HSET_CHUNK * 2 + 5)}
    staged = keys.cache_key("sync-big")
    assert hot.stage_entries(client, staged, entries, [], TTL_S) == len(entries)
    assert client.hlen(staged) == len(entries)


@pytest.mark.parametrize("count", [0, 3, hot.HSET_CHUNK, hot.HSET_CHUNK * 2 + 5])
def test_stage_entries_replaces_a_leftover_whatever_the_count(client: redis.Redis, count: int) -> None:
    entries = {f"C{i}USDTM": entry(f"C{i}USDTM", float(i)) for i in range(count)}
    staged = keys.cache_key("sync-again")
    client.hset(staged, "LEFTOVERUSDTM", b"from a crashed attempt")
    assert hot.stage_entries(client, staged, entries, [], TTL_S) == count
    assert client.hgetall(staged) == as_bytes(entries)


def test_keep_live_keeps_the_live_entries_of_listed_symbols(client: redis.Redis) -> None:
    old = {"AUSDTM": entry("AUSDTM", 1.0), "BUSDTM": entry("BUSDTM", 2.0)}
    assert publish_entries(client, 1, old)
    staged = keys.cache_key("sync-2")
    size = hot.stage_entries(client, staged, {"CUSDTM": entry("CUSDTM", 3.0)}, ["AUSDTM", "ZUSDTM"], TTL_S)
    assert size == 2  # ZUSDTM has no live entry to keep
    assert client.hgetall(staged) == {b"AUSDTM": old["AUSDTM"], b"CUSDTM": entry("CUSDTM", 3.0)}


# ---- publishing --------------------------------------------------------------------------------------------

def test_publish_replaces_the_live_hash_and_sets_the_version(client: redis.Redis) -> None:
    first = {"AUSDTM": entry("AUSDTM", 1.0), "BUSDTM": entry("BUSDTM", 2.0)}
    assert publish_entries(client, 1, first) is True
    assert live(client) == as_bytes(first)
    assert hot.cache_version(client) == 1

    second = {"BUSDTM": entry("BUSDTM", 2.5), "CUSDTM": entry("CUSDTM", 3.0)}
    assert publish_entries(client, 2, second) is True
    assert live(client) == as_bytes(second)  # AUSDTM is gone: a swap, not a merge
    assert hot.cache_version(client) == 2
    assert client.exists(keys.cache_key("sync-2")) == 0
    assert client.ttl(keys.TOKENS) == -1  # the staging TTL does not follow the hash into service


def test_publishing_the_same_revision_again_changes_nothing(client: redis.Redis) -> None:
    first = {"AUSDTM": entry("AUSDTM", 1.0)}
    assert publish_entries(client, 3, first)
    staged = keys.cache_key("sync-replayed")
    size = hot.stage_entries(client, staged, {"XUSDTM": entry("XUSDTM", 9.0)}, [], TTL_S)
    assert hot.publish(client, staged, 3, size) is False
    assert live(client) == as_bytes(first)
    assert hot.cache_version(client) == 3


def test_an_older_revision_never_overwrites(client: redis.Redis) -> None:
    newer = {"AUSDTM": entry("AUSDTM", 5.0)}
    assert publish_entries(client, 5, newer)
    assert publish_entries(client, 4, {"AUSDTM": entry("AUSDTM", 4.0), "OLDUSDTM": entry("OLDUSDTM", 0.1)}) is False
    assert live(client) == as_bytes(newer)
    assert hot.cache_version(client) == 5


def test_publish_refuses_when_the_staged_hash_is_gone(client: redis.Redis) -> None:
    assert publish_entries(client, 1, {"AUSDTM": entry("AUSDTM", 1.0)})
    with pytest.raises(LookupError, match="gone"):
        hot.publish(client, keys.cache_key("sync-expired"), 2, size=10)
    assert hot.cache_version(client) == 1
    assert client.hlen(keys.TOKENS) == 1


def test_publish_drops_the_consumed_staging_keys_unless_it_refused(client: redis.Redis) -> None:
    plan = keys.plan_key("sync-1")
    client.set(plan, b"applied plan")
    staged = keys.cache_key("sync-1")
    size = hot.stage_entries(client, staged, {"AUSDTM": entry("AUSDTM", 1.0)}, [], TTL_S)
    assert hot.publish(client, staged, 1, size, consumed=[plan]) is True
    assert client.exists(plan) == 0
    assert live(client) == {b"AUSDTM": entry("AUSDTM", 1.0)}

    client.set(plan, b"a redelivered copy's plan")  # the cache already shows revision 1
    assert hot.publish(client, keys.cache_key("sync-1"), 1, 0, consumed=[plan]) is False
    assert client.exists(plan) == 0

    client.set(plan, b"plan of a sync whose staged cache expired")
    with pytest.raises(LookupError):
        hot.publish(client, keys.cache_key("sync-2"), 2, 10, consumed=[plan])
    assert client.exists(plan) == 1  # kept: nothing was applied to the cache


def test_publishing_an_empty_registry_clears_the_live_hash(client: redis.Redis) -> None:
    assert publish_entries(client, 1, {"AUSDTM": entry("AUSDTM", 1.0)})
    assert publish_entries(client, 2, {}) is True
    assert client.exists(keys.TOKENS) == 0
    assert hot.cache_version(client) == 2


# ---- the in-process snapshot -------------------------------------------------------------------------------

class CountingRedis(fakeredis.FakeRedis):
    """Counts pipelines, i.e. reloads of the whole hash by HotCache.refresh."""

    pipelines = 0

    def pipeline(self, *args: Any, **kwargs: Any) -> Any:
        self.pipelines += 1
        return super().pipeline(*args, **kwargs)


def test_refresh_reloads_only_when_the_version_moved() -> None:
    client = CountingRedis()
    cache = hot.HotCache(client)
    assert cache.refresh() is False  # nothing published yet
    assert cache.all() == {} and cache.version is None

    assert publish_entries(client, 1, {"AUSDTM": entry("AUSDTM", 1.0), "BUSDTM": entry("BUSDTM", 2.0)})
    reloads_before = client.pipelines
    assert cache.refresh() is True
    assert client.pipelines == reloads_before + 1
    assert cache.version == 1
    snapshot = cache.all()
    assert cache.get("AUSDTM") == {"symbol": "AUSDTM", "status": "Open", "markPrice": 1.0}
    assert cache.get("NOPEUSDTM") is None

    assert cache.refresh() is False
    assert cache.refresh() is False
    assert client.pipelines == reloads_before + 1  # no reload while the version stands still
    assert cache.all() is snapshot

    assert publish_entries(client, 2, {"BUSDTM": entry("BUSDTM", 2.5)})
    assert cache.refresh() is True
    assert cache.version == 2
    assert cache.all() is not snapshot
    assert set(cache.all()) == {"BUSDTM"}
    assert cache.get("BUSDTM") == {"symbol": "BUSDTM", "status": "Open", "markPrice": 2.5}
    # A reader still holding the old snapshot sees it whole, never a mix.
    assert set(snapshot) == {"AUSDTM", "BUSDTM"}
    assert snapshot["BUSDTM"]["markPrice"] == 2.0
