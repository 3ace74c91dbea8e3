"""One sync at a time: a Redis lock shared by beat-triggered and manual syncs, owned by the sync id, with a
heartbeat that tells a sync still running from one whose worker died.

``tokenwatch:sync:lock`` holds the sync id, with a long TTL (the most a sync may take). Beside it,
``tokenwatch:sync:lock:beat`` lives only while the holder shows signs of life: taking the lock sets it, the
step that runs renews it every few seconds (tokenwatch/steps.py), and a step handing the sync to the next one
sets it for as long as a message may wait in its queue. A sync that finds the lock held without a beat takes it
over at once instead of waiting out the TTL: its holder is not running. Every change is one script that checks
the holder first, so no sync renews, breaks or releases another's lock by mistake.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

import redis

from tokenwatch.cache import keys

# The most a sync may take (each step renews it): the bound when no heartbeat is to be had at all.
LOCK_TTL_S = 300
BEAT_TTL_S = 15.0  # a running step renews the beat three times within this
# How long a sync's next step may wait in its queue before the sync counts as dead. A free worker takes a message
# within milliseconds; a message can also vanish (a node cut off while it held one, or while Redis answered its
# pending BRPOP), and then every sync is skipped until this window ends. Longer waits (the single writer busy
# with weekly upkeep) only let the next tick's sync go first: a write applies only on the head it was built on.
HANDOFF_TTL_S = 10.0

_BEAT = keys.SYNC_LOCK + ":beat"

# KEYS: lock, beat. ARGV: sync id, lock TTL ms, beat TTL ms. Replies: 1 taken (or held already by sync id),
# 0 held by a live sync, or the id of a holder without a beat, now replaced.
_ACQUIRE = """
local holder = redis.call('GET', KEYS[1])
if holder and holder ~= ARGV[1] and redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[3])
if holder and holder ~= ARGV[1] then return holder end
return 1
"""
_RENEW = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[3])
return 1
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1], KEYS[2])
return 1
"""


@dataclass(frozen=True, slots=True)
class Taken:
    """The lock was taken; broken is the sync id of a holder that was not running, when it had one."""

    broken: str | None = None


def acquire(client: redis.Redis, sync_id: str, ttl_s: float = LOCK_TTL_S) -> Taken | None:
    """Take the lock for sync_id (also when sync_id holds it: a redelivered step), breaking it when its holder
    has no beat; None when a running sync holds it."""
    reply = client.eval(_ACQUIRE, 2, keys.SYNC_LOCK, _BEAT, sync_id, int(ttl_s * 1000), int(BEAT_TTL_S * 1000))
    if reply == 0:
        return None
    if isinstance(reply, bytes):
        return Taken(broken=reply.decode(errors="replace"))
    return Taken()


def beat(client: redis.Redis, sync_id: str, for_s: float = BEAT_TTL_S) -> bool:
    """Sync_id is alive for for_s more seconds (and its lock's TTL starts over); False when it lost the lock."""
    return bool(cast("int", client.eval(_RENEW, 2, keys.SYNC_LOCK, _BEAT, sync_id, LOCK_TTL_S * 1000,
                                        int(for_s * 1000))))


def rearm(client: redis.Redis, sync_id: str) -> bool:
    """Renew the lock and the beat if sync_id still holds the lock; False when it does not."""
    return beat(client, sync_id)


def release(client: redis.Redis, sync_id: str) -> bool:
    """Release the lock if sync_id holds it; never releases another sync's lock."""
    return bool(cast("int", client.eval(_RELEASE, 2, keys.SYNC_LOCK, _BEAT, sync_id)))


def holder(client: redis.Redis) -> str | None:
    """The sync id holding the lock, if any."""
    value = client.get(keys.SYNC_LOCK)
    return value.decode() if isinstance(value, bytes) else None
