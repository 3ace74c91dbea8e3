"""Hand data between pipeline steps through Redis keys with a TTL, not through the broker."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any, cast

import redis

from tokenwatch.cache import redis_client
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


def put_parts(client: redis.Redis, key: str, parts: Callable[[], Iterable[bytes]], ttl_s: int) -> None:
    """Store the concatenated parts under key for ttl_s seconds, one part in this process at a time: written under
    a key of its own and renamed at the end, so readers see the whole payload or none of it. parts is a factory:
    a lost connection sends everything again."""
    partial = key + ":partial"

    def commands() -> Iterator[list[Any]]:
        yield ["DEL", partial]
        for part in parts():
            yield ["APPEND", partial, part]
            yield ["EXPIRE", partial, ttl_s]  # from the first part on: a crash leaves nothing behind for long
        yield ["RENAME", partial, key]

    redis_client.stream(client, commands)


class StagedParts:
    """A large payload left in Redis, read back a slice at a time (parts()): never held whole in this process."""

    def __init__(self, client: redis.Redis, key: str, size: int) -> None:
        self.client = client
        self.key = key
        self.size = size

    def parts(self) -> Iterator[bytes]:
        """Every byte, in order; StagingError when the payload expires while it is read."""
        for offset in range(0, self.size, READ_CHUNK):
            part = cast("bytes", self.client.getrange(self.key, offset, offset + READ_CHUNK - 1))
            if not part:
                raise StagingError(f"staged data {self.key} expired while it was read")
            yield part

    def close(self) -> None:
        """Nothing to free: the payload stays in Redis until its handoff is discarded."""


def take(client: redis.Redis, key: str) -> Payload:
    """The payload under key; StagingError when it expired or was never written."""
    return cast("Payload", take_or_parts(client, key, None))


def take_or_parts(client: redis.Redis, key: str, limit: int | None) -> Payload | StagedParts:
    """take, but a payload larger than limit bytes is left in Redis, to be read a slice at a time."""
    pipe = client.pipeline(transaction=False)
    pipe.strlen(key)
    pipe.getrange(key, 0, READ_CHUNK - 1)
    size, head = pipe.execute()
    if not size:
        raise StagingError(f"staged data {key} is gone (expired or flushed)")
    if limit is not None and size > limit:
        return StagedParts(client, key, size)
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
