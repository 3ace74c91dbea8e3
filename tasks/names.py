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

ROUTES = {
    FETCH: {"queue": Queue.FETCH.value},
    DIFF: {"queue": Queue.FETCH.value},
    WRITE: {"queue": Queue.DB.value},
    SYNC: {"queue": Queue.FETCH.value},
}
