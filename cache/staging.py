"""Hand data between pipeline steps through Redis keys with a TTL, not through the broker."""

from __future__ import annotations

from typing import cast

import redis

from tokenwatch.errors import StagingError

# Large payloads are written and read back in slices of this size: one command or reply of megabytes makes
# the packer or the reply parser hold another copy or two of the whole payload.
READ_CHUNK = 1 << 20

Payload = bytes | bytearray


def put(client: redis.Redis, key: str, payload: Payload, ttl_s: int) -> None:
    """Store payload under key for ttl_s seconds, sent in slices so that packing a command never copies it whole."""
    view = memoryview(payload)
    pipe = client.pipeline(transaction=True)  # readers see the whole payload or none of it
    pipe.delete(key)
    for offset in range(0, len(view), READ_CHUNK):
        pipe.append(key, view[offset:offset + READ_CHUNK])
    pipe.expire(key, ttl_s)
    pipe.execute()


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
