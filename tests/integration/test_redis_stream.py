"""cache.redis_client.stream and the cache staging it carries, against a real Redis server."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from tokenwatch.cache import hot
from tokenwatch.cache.redis_client import make_redis, stream
from tokenwatch.embedded import EmbeddedRedis

pytestmark = pytest.mark.integration


def _kill_other_clients(admin: redis.Redis) -> None:
    admin.execute_command("CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes")


def test_a_large_cache_staged_through_our_client_arrives_whole(
    redis_server: EmbeddedRedis, redis_client: redis.Redis,
) -> None:
    client = make_redis(redis_server.url)
    blob = memoryview(b"".join(b'{"symbol":"C%dUSDTM","pad":"%s"}' % (i, b"x" * 1500) for i in range(5_000)))
    step = len(blob) // 5_000
    entries = {f"C{i}USDTM": blob[i * step:(i + 1) * step] for i in range(5_000)}
    assert hot.stage_entries(client, "staged", entries, {}, 60) == 5_000
    stored = redis_client.hgetall("staged")
    assert len(stored) == 5_000
    assert all(stored[k.encode()] == bytes(v) for k, v in entries.items())
    assert 0 < redis_client.ttl("staged") <= 60


def test_a_connection_lost_mid_stream_is_sent_again_when_the_client_retries(
    redis_server: EmbeddedRedis, redis_client: redis.Redis,
) -> None:
    client = redis.Redis(unix_socket_path=redis_server.socket_path, retry=Retry(NoBackoff(), 1))
    calls = 0

    def commands() -> Iterator[list[Any]]:
        nonlocal calls
        calls += 1
        yield ["DEL", "h"]
        if calls == 1:
            _kill_other_clients(redis_client)
        yield ["HSET", "h", "a", b"1", "b", b"2"]

    replies = stream(client, commands)
    assert calls == 2
    assert replies == [0, 2]  # the repeated stream: DEL found nothing, both fields are new
    assert redis_client.hgetall("h") == {b"a": b"1", b"b": b"2"}


def test_without_retries_a_lost_connection_is_raised_and_the_client_recovers(
    redis_server: EmbeddedRedis, redis_client: redis.Redis,
) -> None:
    client = make_redis(redis_server.url)  # the project's clients do not retry: the caller reports it
    client.ping()

    def commands() -> Iterator[list[Any]]:
        yield ["SET", "k", b"v"]
        _kill_other_clients(redis_client)
        yield ["SET", "k2", b"v2"]

    with pytest.raises(redis.ConnectionError):
        stream(client, commands)
    assert client.ping() is True
