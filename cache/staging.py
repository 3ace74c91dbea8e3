"""Hand data between pipeline steps through Redis keys with a TTL, not through the broker."""

from __future__ import annotations

import redis

from tokenwatch.errors import StagingError


def put(client: redis.Redis, key: str, payload: bytes, ttl_s: int) -> None:
    """Store payload under key for ttl_s seconds."""
    client.set(key, payload, ex=ttl_s)


def take(client: redis.Redis, key: str) -> bytes:
    """The payload under key; StagingError when it expired or was never written."""
    payload = client.get(key)
    if payload is None:
        raise StagingError(f"staged data {key} is gone (expired or flushed)")
    assert isinstance(payload, bytes)
    return payload
