"""Worker memory: each worker process reports its resident memory to Redis after every sync and maintenance
task, under ``tokenwatch:workers:rss:<hostname>-<pid>`` (expiring after a few sync intervals); status reads
every such key and alerts on the largest."""

from __future__ import annotations

import logging
import os
import sys

import redis

from tokenwatch.process import ProcessState
from tokenwatch.settings import Settings

log = logging.getLogger(__name__)

WORKER_RSS_PREFIX = "tokenwatch:workers:rss:"
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
    """Store this worker process's RSS in Redis with a TTL; does nothing outside a worker, never raises."""
    name = process.worker_name
    if name is None:
        return
    ttl_s = max(int(settings.sync_interval_s * RSS_TTL_INTERVALS), 60)
    try:
        process.redis(settings.redis_config()).set(f"{WORKER_RSS_PREFIX}{name}-{os.getpid()}", rss_bytes(),
                                                          ex=ttl_s)
    except (redis.RedisError, OSError) as exc:
        log.debug("could not report worker memory: %s", exc)


def worker_rss(client: redis.Redis) -> dict[str, int]:
    """RSS bytes by worker process, as last reported (expired reports are gone)."""
    names = sorted(client.scan_iter(match=WORKER_RSS_PREFIX + "*", count=200))
    if not names:
        return {}
    values = client.mget(names)
    return {name.decode()[len(WORKER_RSS_PREFIX):]: int(value)
            for name, value in zip(names, values, strict=True) if value is not None}
