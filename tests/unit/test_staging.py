"""cache.staging against fakeredis: payloads read back exactly, in slices."""

from __future__ import annotations

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
