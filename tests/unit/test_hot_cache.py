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
    """Stage entries under this revision's key and publish them as registry R's revision (made by sync-<rev>)."""
    return publish_as(client, "R", revision, entries) != hot.KEPT


def publish_as(client: redis.Redis, registry_id: str, revision: int, entries: dict[str, bytes], *,
               sync_id: str | None = None, head: int | None = None) -> int:
    sync_id = sync_id or f"sync-{revision}"
    staged = keys.cache_key(sync_id)
    size = hot.stage_entries(client, staged, entries, {}, TTL_S)
    return hot.publish(client, staged, revision, size, registry_id=registry_id, sync_id=sync_id,
                       head=revision if head is None else head)


def as_bytes(entries: dict[str, bytes]) -> dict[bytes, bytes]:
    return {k.encode(): v for k, v in entries.items()}


# ---- staging -----------------------------------------------------------------------------------------------

def test_stage_entries_builds_a_fresh_hash_with_a_ttl(client: redis.Redis) -> None:
    staged = keys.cache_key("sync-1")
    client.hset(staged, "LEFTOVERUSDTM", b"from a crashed attempt")
    entries = {"XBTUSDTM": entry("XBTUSDTM", 1.0), "ETHUSDTM": entry("ETHUSDTM", 2.0)}
    assert hot.stage_entries(client, staged, entries, {}, TTL_S) == 2
    assert client.hgetall(staged) == as_bytes(entries)
    assert 0 < client.ttl(staged) <= TTL_S
    assert client.exists(keys.TOKENS) == 0  # the live hash is not touched by staging


def test_stage_entries_writes_large_snapshots_in_chunks(client: redis.Redis) -> None:
    entries = {f"C{i}USDTM": entry(f"C{i}USDTM", float(i)) for i in range(hot.HSET_CHUNK * 2 + 5)}
    staged = keys.cache_key("sync-big")
    assert hot.stage_entries(client, staged, entries, {}, TTL_S) == len(entries)
    assert client.hlen(staged) == len(entries)


@pytest.mark.parametrize("count", [0, 3, hot.HSET_CHUNK, hot.HSET_CHUNK * 2 + 5])
def test_stage_entries_replaces_a_leftover_whatever_the_count(client: redis.Redis, count: int) -> None:
    entries = {f"C{i}USDTM": entry(f"C{i}USDTM", float(i)) for i in range(count)}
    staged = keys.cache_key("sync-again")
    client.hset(staged, "LEFTOVERUSDTM", b"from a crashed attempt")
    assert hot.stage_entries(client, staged, entries, {}, TTL_S) == count
    assert client.hgetall(staged) == as_bytes(entries)


def test_keep_live_keeps_the_live_entries_of_listed_symbols(client: redis.Redis) -> None:
    old = {"AUSDTM": entry("AUSDTM", 1.0), "BUSDTM": entry("BUSDTM", 2.0)}
    assert publish_entries(client, 1, old)
    staged = keys.cache_key("sync-2")
    fallback = {"AUSDTM": b'{"from":"the registry"}', "ZUSDTM": b'{"from":"the registry"}'}
    size = hot.stage_entries(client, staged, {"CUSDTM": entry("CUSDTM", 3.0)}, fallback, TTL_S)
    assert size == 3  # ZUSDTM has no live entry: its registry row's text stands in
    assert client.hgetall(staged) == {b"AUSDTM": old["AUSDTM"], b"CUSDTM": entry("CUSDTM", 3.0),
                                      b"ZUSDTM": b'{"from":"the registry"}'}


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


def test_publishing_the_same_commit_again_changes_nothing(client: redis.Redis) -> None:
    first = {"AUSDTM": entry("AUSDTM", 1.0)}
    assert publish_entries(client, 3, first)
    assert publish_as(client, "R", 3, {"XUSDTM": entry("XUSDTM", 9.0)}) == hot.KEPT  # a redelivered write
    assert live(client) == as_bytes(first)
    assert hot.cache_version(client) == 3


def test_an_older_revision_of_the_same_registry_never_overwrites(client: redis.Redis) -> None:
    newer = {"AUSDTM": entry("AUSDTM", 5.0)}
    assert publish_entries(client, 5, newer)
    # Revision 4 committed before 5 but published after it: the registry's head is 5.
    older = {"AUSDTM": entry("AUSDTM", 4.0), "OLDUSDTM": entry("OLDUSDTM", 0.1)}
    assert publish_as(client, "R", 4, older, head=5) == hot.KEPT
    assert live(client) == as_bytes(newer)
    assert hot.cache_version(client) == 5


def test_another_registrys_cache_is_replaced_whatever_its_revision(client: redis.Redis) -> None:
    assert publish_as(client, "OLD", 9, {"AUSDTM": entry("AUSDTM", 1.0)}) == hot.REPLACED
    fresh = {"BUSDTM": entry("BUSDTM", 2.0)}
    assert publish_as(client, "NEW", 1, fresh) == hot.OTHER_REGISTRY  # a recreated database
    assert (live(client), hot.cache_version(client)) == (as_bytes(fresh), 1)
    assert client.get(keys.ORIGIN) == b"NEW sync-1"


def test_a_cache_ahead_of_its_registrys_head_is_replaced(client: redis.Redis) -> None:
    assert publish_entries(client, 7, {"AUSDTM": entry("AUSDTM", 7.0)})
    restored = {"AUSDTM": entry("AUSDTM", 3.0)}
    # A backup at revision 2 restored, and its next commit is 3: the cache shows a future that is gone.
    assert publish_as(client, "R", 3, restored, sync_id="sync-after-restore") == hot.AHEAD
    assert (live(client), hot.cache_version(client)) == (as_bytes(restored), 3)


def test_the_same_revision_made_by_another_commit_is_replaced(client: redis.Redis) -> None:
    assert publish_entries(client, 3, {"AUSDTM": entry("AUSDTM", 1.0)})
    other = {"AUSDTM": entry("AUSDTM", 2.0)}
    assert publish_as(client, "R", 3, other, sync_id="sync-other-writer") == hot.AHEAD
    assert live(client) == as_bytes(other)


def test_a_cache_without_origin_is_not_trusted(client: redis.Redis) -> None:
    client.set(keys.VERSION, 40)  # written by 0.1.0, which kept no origin
    client.hset(keys.TOKENS, "OLDUSDTM", b"{}")
    assert publish_as(client, "R", 2, {"AUSDTM": entry("AUSDTM", 1.0)}) == hot.OTHER_REGISTRY
    assert hot.cache_version(client) == 2


def test_publish_refuses_when_the_staged_hash_is_gone(client: redis.Redis) -> None:
    assert publish_entries(client, 1, {"AUSDTM": entry("AUSDTM", 1.0)})
    with pytest.raises(LookupError, match="gone"):
        hot.publish(client, keys.cache_key("sync-expired"), 2, size=10, registry_id="R", sync_id="sync-expired",
                    head=2)
    assert hot.cache_version(client) == 1
    assert client.hlen(keys.TOKENS) == 1


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
    assert cache.origin == b"R sync-2"
    assert cache.all() is not snapshot
    assert set(cache.all()) == {"BUSDTM"}
    assert cache.get("BUSDTM") == {"symbol": "BUSDTM", "status": "Open", "markPrice": 2.5}
    # A reader still holding the old snapshot sees it whole, never a mix.
    assert set(snapshot) == {"AUSDTM", "BUSDTM"}
    assert snapshot["BUSDTM"]["markPrice"] == 2.0


def test_refresh_reloads_when_another_registry_shows_the_same_revision() -> None:
    client = CountingRedis()
    cache = hot.HotCache(client)
    assert publish_as(client, "OLD", 1, {"AUSDTM": entry("AUSDTM", 1.0)}) == hot.REPLACED
    assert cache.refresh() is True
    assert publish_as(client, "NEW", 1, {"BUSDTM": entry("BUSDTM", 2.0)}) == hot.OTHER_REGISTRY
    assert cache.refresh() is True  # same version number, another registry: not the same cache
    assert set(cache.all()) == {"BUSDTM"}
