"""Worker memory: each worker process reports its resident memory to Redis after every sync and maintenance
task, under ``tokenwatch:workers:rss:<hostname>-<pid>`` (expiring after a few sync intervals); status reads
every such key and alerts on the largest. The same reports, and one at each diff, keep the sorted set
``tokenwatch:workers:live`` of the worker processes seen lately: a diff shares its registry only when another
may run the next one (steps._others_may_diff)."""

from __future__ import annotations

import logging
import os
import sys

import redis

from tokenwatch.clock import now_ms
from tokenwatch.process import ProcessState
from tokenwatch.settings import Settings

log = logging.getLogger(__name__)

WORKER_RSS_PREFIX = "tokenwatch:workers:rss:"
LIVE_WORKERS = "tokenwatch:workers:live"  # sorted set: worker process -> when it last reported (ms)
RSS_TTL_INTERVALS = 3  # a worker that has not reported for this many sync intervals is no longer counted


def rss_bytes() -> int:
    """Resident memory of this process (Linux: current; elsewhere: the peak)."""
    try:
        with open("/proc/self/statm", encoding="ascii") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        import resource  # noqa: PLC0415 - the fallback only

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return int(peak if sys.platform == "darwin" else peak * 1024)


def report(settings: Settings, process: ProcessState) -> None:
    """Store this worker process's RSS in Redis with a TTL, and note it among the live worker processes; does
    nothing outside a worker, never raises."""
    key = _own_key(process)
    if key is None:
        return
    ttl_s = _ttl_s(settings)
    now = now_ms()
    try:
        pipe = process.redis(settings.redis_config()).pipeline(transaction=False)
        pipe.set(WORKER_RSS_PREFIX + key, rss_bytes(), ex=ttl_s)
        pipe.zadd(LIVE_WORKERS, {key: now})
        pipe.zremrangebyscore(LIVE_WORKERS, "-inf", now - ttl_s * 1000)
        pipe.expire(LIVE_WORKERS, ttl_s)
        pipe.execute()
    except (redis.RedisError, OSError) as exc:
        log.debug("could not report worker memory: %s", exc)


def forget(settings: Settings, process: ProcessState) -> None:
    """This worker process is stopping: its report goes with it (status and the others stop counting it)."""
    key = _own_key(process)
    if key is None:
        return
    try:
        pipe = process.redis(settings.redis_config()).pipeline(transaction=False)
        pipe.delete(WORKER_RSS_PREFIX + key)
        pipe.zrem(LIVE_WORKERS, key)
        pipe.execute()
    except (redis.RedisError, OSError) as exc:
        log.debug("could not withdraw the worker memory report: %s", exc)


def others_reported(client: redis.Redis, settings: Settings, process: ProcessState) -> bool:
    """Whether a worker process other than this one has reported lately (any at all, outside a worker)."""
    own = _own_key(process)
    since = now_ms() - _ttl_s(settings) * 1000
    live: list[bytes] = client.zrangebyscore(LIVE_WORKERS, since, "+inf")  # type: ignore[assignment]
    return any(name.decode() != own for name in live)


def _own_key(process: ProcessState) -> str | None:
    """This worker process's name in the reports; None outside a worker."""
    return None if process.worker_name is None else f"{process.worker_name}-{os.getpid()}"


def _ttl_s(settings: Settings) -> int:
    return max(int(settings.sync_interval_s * RSS_TTL_INTERVALS), 60)


def worker_rss(client: redis.Redis) -> dict[str, int]:
    """RSS bytes by worker process, as last reported (expired reports are gone)."""
    names = sorted(client.scan_iter(match=WORKER_RSS_PREFIX + "*", count=200))
    if not names:
        return {}
    values = client.mget(names)
    return {name.decode()[len(WORKER_RSS_PREFIX):]: int(value)
            for name, value in zip(names, values, strict=True) if value is not None}
