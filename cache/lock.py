"""One sync at a time: a Redis lock shared by beat-triggered and manual syncs, owned by the sync id.

The lock is the key ``tokenwatch:sync:lock`` holding the sync id, with a TTL. Taking it is one SET NX; renewing
and releasing it compare the holder first, in one script each, so a step in another process (the write step
releases what the fetch step took) never renews or releases another sync's lock.
"""

from __future__ import annotations

import redis

from tokenwatch.cache import keys

# Longer than the longest sync (each step re-arms it): a crashed worker blocks syncs for at most this long.
LOCK_TTL_S = 300

# KEYS[1]: the lock; ARGV[1]: the sync id that must hold it; ARGV[2]: the new TTL in ms (renew only).
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


def acquire(client: redis.Redis, sync_id: str, ttl_s: float = LOCK_TTL_S) -> bool:
    """Take the lock for sync_id; True also when sync_id already holds it (a redelivered step)."""
    if client.set(keys.SYNC_LOCK, sync_id, nx=True, px=int(ttl_s * 1000)):
        return True
    return rearm(client, sync_id, ttl_s)


def rearm(client: redis.Redis, sync_id: str, ttl_s: float = LOCK_TTL_S) -> bool:
    """Reset the TTL if sync_id still holds the lock; False when it does not."""
    return bool(client.eval(_RENEW, 1, keys.SYNC_LOCK, sync_id, int(ttl_s * 1000)))


def release(client: redis.Redis, sync_id: str) -> bool:
    """Release the lock if sync_id holds it; never releases another sync's lock."""
    return bool(client.eval(_RELEASE, 1, keys.SYNC_LOCK, sync_id))


def holder(client: redis.Redis) -> str | None:
    """The sync id holding the lock, if any."""
    value = client.get(keys.SYNC_LOCK)
    return value.decode() if isinstance(value, bytes) else None
