"""Task names and queues, named in one place.

Queues and who consumes them:
- ``fetch``: the fetch and diff-and-build tasks; any number of worker processes.
- ``db``: the batch-write task; exactly one single-process worker, so SQLite has one writer.
"""

from __future__ import annotations

from enum import StrEnum


class Queue(StrEnum):
    """Celery queues."""

    FETCH = "fetch"
    DB = "db"


FETCH = "tokenwatch.fetch_contracts"
DIFF = "tokenwatch.diff_and_build"
WRITE = "tokenwatch.write_batch"
SYNC = "tokenwatch.sync"  # sends the chain; what beat and `celery call` trigger
CHECK_ALERTS = "tokenwatch.check_alerts"  # reads only: evaluates alerts, logs their transitions
DB_OPTIMIZE = "tokenwatch.db_optimize"  # ANALYZE + PRAGMA optimize (daily)
DB_VACUUM = "tokenwatch.db_vacuum"  # VACUUM + WAL truncate (weekly)
PRUNE_SYNC_RUNS = "tokenwatch.prune_sync_runs"  # sync_runs older than TOKENWATCH_RETENTION_DAYS (daily)

ROUTES = {
    FETCH: {"queue": Queue.FETCH.value},
    DIFF: {"queue": Queue.FETCH.value},
    WRITE: {"queue": Queue.DB.value},
    SYNC: {"queue": Queue.FETCH.value},
    CHECK_ALERTS: {"queue": Queue.FETCH.value},
    # Maintenance writes go to the single writer, like the sync's writes.
    DB_OPTIMIZE: {"queue": Queue.DB.value},
    DB_VACUUM: {"queue": Queue.DB.value},
    PRUNE_SYNC_RUNS: {"queue": Queue.DB.value},
}
