"""Beat's scheduler: redbeat's, which keeps the schedule in Redis and schedules only while it holds a lease, made
to ride out a Redis outage and a lost lease instead of dying.

Stock redbeat lets an unreachable Redis or a lapsed lease escape its tick, which kills beat; a node cut off from
Redis for a minute would crash-loop its beat (and `tokenwatch run` would give up on it). Here a beat that cannot
reach Redis waits for it, and a beat whose lease lapsed (another node's beat may hold it now) waits to take it
again; in both cases it schedules nothing until it holds the lease.
"""

from __future__ import annotations

import logging
import sys
from types import SimpleNamespace
from typing import Any

import redis
from redbeat import RedBeatScheduler
from redbeat.schedulers import acquire_distributed_beat_lock

log = logging.getLogger("tokenwatch.beat")

LEASE_PREFIX = "tokenwatch:beat"  # redbeat's keys: the schedule and the lease (celeryconfig.redbeat_key_prefix)
RETRY_S = 1.0  # how soon beat looks again after Redis failed it


class LeasedScheduler(RedBeatScheduler):  # type: ignore[misc]  # redbeat ships no type hints
    """RedBeatScheduler whose tick waits out a Redis outage or a lost lease (module docstring)."""

    lock: Any = None  # redis-py's Lock while this beat holds the lease
    _redis_down = False

    def tick(self, *args: Any, **kwargs: Any) -> float:
        """Renew the lease and send what is due; without the lease, wait for it (a blocking acquire)."""
        try:
            if self.lock_key and self.lock is None:
                if not self._redis_down:
                    log.info("beat: waiting for the schedule lease (another node's beat may hold it)")
                acquire_distributed_beat_lock(sender=SimpleNamespace(scheduler=self))
                # A Redis that lost its data lost the schedule too: store it again (last run times are kept).
                self.setup_schedule()
            interval = float(super().tick(*args, **kwargs))
        except redis.exceptions.LockError:
            # LockNotOwnedError included: the lease lapsed while we could not renew it.
            log.warning("beat: lost the schedule lease; scheduling nothing until it holds it again")
            self.lock = None
            return RETRY_S
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            if not self._redis_down:
                log.warning("beat: Redis unreachable (%s); scheduling nothing until it is back", exc)
                self._redis_down = True
            return RETRY_S
        if self._redis_down:
            log.info("beat: Redis is back")
            self._redis_down = False
        return interval

    def close(self) -> None:
        """Release the lease if Redis can be told; a lease it cannot be told about lapses by itself."""
        try:
            super().close()
        except redis.RedisError as exc:
            log.warning("beat: could not release the schedule lease (%s); it lapses by itself", exc)


def lease_holder_alive() -> bool:
    """Whether some beat holds the schedule lease now (a healthy deployment has exactly one that does)."""
    from tokenwatch.cache.redis_client import make_redis  # noqa: PLC0415 - only the health check needs it
    from tokenwatch.settings import get_settings  # noqa: PLC0415

    client = make_redis(get_settings().redis_config())
    try:
        return bool(client.exists(f"{LEASE_PREFIX}:lock"))
    except redis.RedisError:
        return False
    finally:
        client.close()


if __name__ == "__main__":
    # The container health check of a beat: healthy while some beat (this one, or another node's) schedules.
    sys.exit(0 if lease_holder_alive() else 1)
