"""Hand data between pipeline steps through Redis keys with a TTL, not through the broker."""

from __future__ import annotations

from typing import cast

import redis

from tokenwatch.errors import StagingError

# Large payloads are read back in slices of this size: reading megabytes in one reply makes the reply
# parser hold the payload twice more while it builds the result.
READ_CHUNK = 1 << 20

Payload = bytes | bytearray


def put(client: redis.Redis, key: str, payload: Payload, ttl_s: int) -> None:
    """Store payload under key for ttl_s seconds."""
    client.set(key, payload if isinstance(payload, bytes) else memoryview(payload), ex=ttl_s)


def take(client: redis.Redis, key: str) -> Payload:
    """The payload under key; StagingError when it expired or was never written."""
    pipe = client.pipeline(transaction=False)
    pipe.strlen(key)
    pipe.getrange(key, 0, READ_CHUNK - 1)
    size, head = pipe.execute()
    if not size:
        raise StagingError(f"staged data {key} is gone (expired or flushed)")
    payload = bytearray(size)
    payload[:len(head)] = head
    offset = len(head)
    del head
    while offset < size:
        part = cast("bytes", client.getrange(key, offset, offset + READ_CHUNK - 1))
        if not part:
            raise StagingError(f"staged data {key} expired while it was read")
        payload[offset:offset + len(part)] = part
        offset += len(part)
    return payload
