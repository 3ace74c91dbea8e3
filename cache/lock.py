"""One sync at a time: a Redis lock shared by beat-triggered and manual syncs, owned by the sync id.

redis-py's Lock gives a token, a TTL and owner-only release; the token is the sync id, so the write step,
in another process, can release the lock that the fetch step took.
"""

from __future__ import annotations

import redis
from redis.exceptions import LockError
from redis.lock import Lock

from tokenwatch.cache import keys

# Longer than the longest sync (each step re-arms it): a crashed worker blocks syncs for at most this long.
LOCK_TTL_S = 300


def _lock(client: redis.Redis, ttl_s: float) -> Lock:
    lock = Lock(client, keys.SYNC_LOCK, timeout=ttl_s, blocking=False, thread_local=False)
    return lock


def acquire(client: redis.Redis, sync_id: str, ttl_s: float = LOCK_TTL_S) -> bool:
    """Take the lock for sync_id; True also when sync_id already holds it (a redelivered step)."""
    # The lock is usually free: one SET NX, and the holder is read only when that fails.
    if _lock(client, ttl_s).acquire(blocking=False, token=sync_id):
        return True
    return holder(client) == sync_id and rearm(client, sync_id, ttl_s)


def rearm(client: redis.Redis, sync_id: str, ttl_s: float = LOCK_TTL_S) -> bool:
    """Reset the TTL if sync_id still owns the lock; False when it does not."""
    lock = _lock(client, ttl_s)
    lock.local.token = sync_id.encode()
    try:
        return bool(lock.extend(ttl_s, replace_ttl=True))
    except LockError:
        return False


def release(client: redis.Redis, sync_id: str) -> bool:
    """Release the lock if sync_id owns it; never releases another sync's lock."""
    lock = _lock(client, LOCK_TTL_S)
    lock.local.token = sync_id.encode()
    try:
        lock.release()
    except LockError:
        return False
    return True


def holder(client: redis.Redis) -> str | None:
    """The sync id holding the lock, if any."""
    value = client.get(keys.SYNC_LOCK)
    return value.decode() if isinstance(value, bytes) else None
