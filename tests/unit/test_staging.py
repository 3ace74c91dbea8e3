"""cache.staging against fakeredis: payloads read back exactly, in slices, and handed over in-process."""

from __future__ import annotations

import os
from typing import Any

import fakeredis
import pytest
import redis

from tokenwatch.cache import staging
from tokenwatch.errors import StagingError

TTL_S = 60


class CountingRedis(fakeredis.FakeRedis):
    """fakeredis that counts the commands it receives, pipelined or not."""

    commands = 0

    def execute_command(self, *args: Any, **options: Any) -> Any:
        type(self).commands += 1
        return super().execute_command(*args, **options)

    def pipeline(self, transaction: bool = True, shard_hint: Any = None) -> Any:
        type(self).commands += 1
        return super().pipeline(transaction, shard_hint)


@pytest.fixture
def client() -> redis.Redis:
    CountingRedis.commands = 0
    return CountingRedis()


def payload(size: int) -> bytes:
    return bytes(range(256)) * (size // 256) + b"x" * (size % 256)


@pytest.mark.parametrize("size", [1, staging.READ_CHUNK - 1, staging.READ_CHUNK, 3 * staging.READ_CHUNK + 7])
def test_payloads_come_back_exactly_whatever_their_size(client: redis.Redis, size: int) -> None:
    data = payload(size)
    staging.put(client, "k", data, TTL_S)
    assert staging.take(client, "k") == data
    staging.put(client, "k2", bytearray(data), TTL_S)  # what the fetch step reads into
    assert staging.take(client, "k2") == data


def test_a_missing_payload_is_a_staging_error(client: redis.Redis) -> None:
    with pytest.raises(StagingError, match="is gone"):
        staging.take(client, "never-written")


def test_the_put_sets_the_ttl(client: redis.Redis) -> None:
    staging.put(client, "k", b"data", TTL_S)
    assert 0 < client.ttl("k") <= TTL_S


def test_a_kept_payload_is_taken_without_asking_redis(client: redis.Redis) -> None:
    data = payload(1000)
    staging.put(client, "k", data, TTL_S, keep=True)
    before = CountingRedis.commands
    assert staging.take(client, "k") is data
    assert CountingRedis.commands == before
    # Taken once: a second take (a redelivered message) reads Redis, the source of truth.
    client.delete("k")
    with pytest.raises(StagingError):
        staging.take(client, "k")


def test_only_the_latest_payload_is_kept(client: redis.Redis) -> None:
    staging.put(client, "a", b"first", TTL_S, keep=True)
    staging.put(client, "b", b"second", TTL_S, keep=True)
    client.delete("a")
    with pytest.raises(StagingError):
        staging.take(client, "a")  # no longer kept, and gone from Redis


def test_a_kept_payload_past_its_ttl_is_not_used(client: redis.Redis, monkeypatch: pytest.MonkeyPatch) -> None:
    staging.put(client, "k", b"old", TTL_S, keep=True)
    client.delete("k")  # Redis expired it
    real = staging.time.monotonic
    monkeypatch.setattr(staging.time, "monotonic", lambda: real() + TTL_S + 1)
    with pytest.raises(StagingError):
        staging.take(client, "k")


def test_a_payload_kept_by_the_parent_is_not_used_after_fork(
    client: redis.Redis, monkeypatch: pytest.MonkeyPatch,
) -> None:
    staging.put(client, "k", b"parent", TTL_S, keep=True)
    client.set("k", b"redis")
    child = os.getpid() + 1
    monkeypatch.setattr(staging.os, "getpid", lambda: child)
    assert staging.take(client, "k") == b"redis"
