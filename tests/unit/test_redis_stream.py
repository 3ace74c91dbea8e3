"""cache.redis_client.stream against fakeredis: replies in order, error replies, and an interrupted stream."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import fakeredis
import pytest
import redis

from tokenwatch.cache.redis_client import stream


@pytest.fixture
def client() -> redis.Redis:
    return fakeredis.FakeRedis()


def test_every_reply_comes_back_in_order(client: redis.Redis) -> None:
    replies = stream(client, lambda: iter([["SET", "a", b"1"], ["INCR", "a"], ["GET", "a"], ["HSET", "h", "k", b"v"]]))
    assert replies == [b"OK", 2, b"2", 1]  # as Redis sent them: no response callbacks


def test_an_error_reply_is_raised_after_the_rest_ran_and_the_connection_stays_usable(client: redis.Redis) -> None:
    client.set("text", b"not a hash")
    with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
        stream(client, lambda: iter([["HSET", "text", "k", b"v"], ["SET", "after", b"ran"]]))
    assert client.get("after") == b"ran"
    assert client.ping() is True


def test_a_stream_interrupted_mid_way_leaves_no_reply_for_the_next_command(client: redis.Redis) -> None:
    def commands() -> Iterator[list[Any]]:
        yield ["SET", "first", b"sent"]
        yield ["INCR", "counter"]
        raise RuntimeError("the caller gave up")

    with pytest.raises(RuntimeError, match="gave up"):
        stream(client, commands)
    # Replies to the two sent commands were never read; a reused connection would hand them to this GET.
    assert client.get("first") == b"sent"
    assert client.get("counter") == b"1"
