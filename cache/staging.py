"""Hand data between pipeline steps through Redis keys with a TTL, not through the broker.

The process that stages a payload also keeps it (one payload, until its TTL) so that the next step, when it
runs in the same process (a single worker, as ``tokenwatch run`` starts), skips reading it back. Redis stays
the source of truth for any other process, and for a redelivered message.
"""

from __future__ import annotations

import os
import time
from typing import cast

import redis

from tokenwatch.errors import StagingError

# Large payloads are read back in slices of this size: reading megabytes in one reply makes the reply
# parser hold the payload twice more while it builds the result.
READ_CHUNK = 1 << 20

Payload = bytes | bytearray

# (pid, key, monotonic deadline, payload): at most one, so a process whose payloads are taken elsewhere
# holds one snapshot at most.
_kept: tuple[int, str, float, Payload] | None = None


def put(client: redis.Redis, key: str, payload: Payload, ttl_s: int, *, keep: bool = False) -> None:
    """Store payload under key for ttl_s seconds; keep=True also keeps it in this process for take()."""
    global _kept  # noqa: PLW0603 - one slot per process, replaced in one assignment
    client.set(key, payload if isinstance(payload, bytes) else memoryview(payload), ex=ttl_s)
    _kept = (os.getpid(), key, time.monotonic() + ttl_s, payload) if keep else None


def take(client: redis.Redis, key: str) -> Payload:
    """The payload under key; StagingError when it expired or was never written."""
    global _kept
    kept, _kept = _kept, None
    if kept is not None and kept[:2] == (os.getpid(), key) and time.monotonic() < kept[2]:
        return kept[3]
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
