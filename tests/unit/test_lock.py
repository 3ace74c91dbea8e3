"""cache.lock against fakeredis: one owner at a time, re-entrant for its own sync id, owner-only release."""

from __future__ import annotations

import fakeredis
import pytest
import redis

from tokenwatch.cache import keys, lock


@pytest.fixture
def client() -> redis.Redis:
    return fakeredis.FakeRedis()


def test_a_free_lock_is_taken_with_its_ttl(client: redis.Redis) -> None:
    assert lock.acquire(client, "sync-a", ttl_s=30)
    assert lock.holder(client) == "sync-a"
    assert 0 < client.pttl(keys.SYNC_LOCK) <= 30_000


def test_a_lock_held_by_another_sync_is_refused_and_left_alone(client: redis.Redis) -> None:
    assert lock.acquire(client, "sync-a", ttl_s=30)
    assert not lock.acquire(client, "sync-b", ttl_s=300)
    assert lock.holder(client) == "sync-a"
    assert client.pttl(keys.SYNC_LOCK) <= 30_000


def test_the_holder_taking_it_again_rearms_it(client: redis.Redis) -> None:
    assert lock.acquire(client, "sync-a", ttl_s=5)
    assert lock.acquire(client, "sync-a", ttl_s=300)  # a redelivered fetch step
    assert lock.holder(client) == "sync-a"
    assert client.pttl(keys.SYNC_LOCK) > 5_000


def test_only_the_owner_releases(client: redis.Redis) -> None:
    assert lock.acquire(client, "sync-a")
    assert not lock.release(client, "sync-b")
    assert lock.holder(client) == "sync-a"
    assert lock.release(client, "sync-a")
    assert lock.holder(client) is None
    assert lock.acquire(client, "sync-b")


def test_rearm_fails_for_a_sync_that_lost_the_lock(client: redis.Redis) -> None:
    assert lock.acquire(client, "sync-a")
    assert lock.release(client, "sync-a")
    assert not lock.rearm(client, "sync-a")
    assert lock.holder(client) is None


def test_taking_the_lock_starts_its_heartbeat_and_release_ends_both(client: redis.Redis) -> None:
    assert lock.acquire(client, "sync-a") == lock.Taken()
    assert 0 < client.pttl(keys.SYNC_LOCK + ":beat") <= lock.BEAT_TTL_S * 1000
    assert lock.beat(client, "sync-a", 120)
    assert client.pttl(keys.SYNC_LOCK + ":beat") > lock.BEAT_TTL_S * 1000
    assert not lock.beat(client, "sync-b")  # only the holder beats
    assert lock.release(client, "sync-a")
    assert not client.exists(keys.SYNC_LOCK, keys.SYNC_LOCK + ":beat")


def test_a_lock_whose_holder_stopped_beating_is_taken_over_and_its_holder_named(client: redis.Redis) -> None:
    assert lock.acquire(client, "sync-a")
    assert lock.acquire(client, "sync-b") is None  # sync-a is alive
    client.delete(keys.SYNC_LOCK + ":beat")  # its worker died: nobody renews the beat
    assert lock.acquire(client, "sync-b") == lock.Taken(broken="sync-a")
    assert lock.holder(client) == "sync-b"
    assert not lock.release(client, "sync-a")  # the dead sync cannot take back what it lost
