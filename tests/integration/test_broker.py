"""workers.broker against a real redis-server: kombu's transport, one client per channel, messages intact."""

from __future__ import annotations

import pytest
import redis
from kombu import Connection

from tokenwatch.cache.redis_client import to_kombu_url
from tokenwatch.embedded import EmbeddedRedis
from tokenwatch.workers import broker

pytestmark = pytest.mark.integration


@pytest.fixture
def connection(redis_server: EmbeddedRedis) -> Connection:
    broker.install()
    with Connection(to_kombu_url(redis_server.url)) as conn:
        yield conn


def test_broker_urls_resolve_to_this_transport(connection: Connection) -> None:
    assert isinstance(connection.transport, broker.Transport)
    assert isinstance(connection.default_channel, broker.Channel)


def test_a_channel_reuses_its_client_until_its_pool_changes(connection: Connection) -> None:
    channel = connection.default_channel
    first = channel._create_client()
    assert channel._create_client() is first
    assert first.connection_pool is channel.pool
    channel._disconnect_pools()  # what kombu does when the channel reconnects
    second = channel._create_client()
    assert second is not first
    assert second.connection_pool is channel.pool
    assert second.ping()


def test_messages_round_trip_through_the_reused_client(connection: Connection, redis_client: redis.Redis) -> None:
    queue = connection.SimpleQueue("tokenwatch-broker-test")
    try:
        for n in range(5):
            queue.put({"n": n})
        got = [queue.get(timeout=5) for _ in range(5)]
        for message in got:
            message.ack()
        assert [m.payload for m in got] == [{"n": n} for n in range(5)]
        assert redis_client.llen("tokenwatch-broker-test") == 0
    finally:
        queue.clear()
        queue.close()
