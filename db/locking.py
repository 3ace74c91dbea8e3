"""SQLite's "database is locked" (and PostgreSQL's serialization failures and deadlocks): recognised, described
in one line, and retried with a bounded backoff."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar

from sqlalchemy.exc import DBAPIError, OperationalError

log = logging.getLogger(__name__)

T = TypeVar("T")
# PostgreSQL's SQLSTATEs of a transaction that may simply run again: a lock held past lock_timeout (another
# writer, like SQLite's "database is locked"), a serialization failure, a deadlock.
PG_LOCK_TIMEOUT = "55P03"
RETRYABLE_SQLSTATES = frozenset({PG_LOCK_TIMEOUT, "40001", "40P01"})
LOCK_RETRIES = 5
LOCK_BACKOFF_S = 0.25


def describe(exc: DBAPIError) -> str:
    """A database error as one short line, without SQL or parameters."""
    sqlstate = getattr(exc.orig, "sqlstate", None)
    if sqlstate == PG_LOCK_TIMEOUT or (sqlstate is None and is_locked_error(exc)):
        return "database is locked"
    lines = str(exc.orig).splitlines()
    return lines[0] if lines else type(exc.orig).__name__


def is_locked_error(exc: BaseException) -> bool:
    """True for SQLite's 'database is locked' / 'database is busy', and PostgreSQL's transaction rollbacks."""
    orig = getattr(exc, "orig", exc)
    if getattr(orig, "sqlstate", None) in RETRYABLE_SQLSTATES:
        return True
    message = str(orig).lower()
    return "database is locked" in message or "database is busy" in message


def with_lock_retry(action: Callable[[], T], retries: int | None = None) -> T:
    """Run action, retrying 'database is locked' with bounded exponential backoff."""
    retries = LOCK_RETRIES if retries is None else retries
    for attempt in range(retries + 1):
        try:
            return action()
        except OperationalError as exc:
            if not is_locked_error(exc) or attempt == retries:
                raise
            delay = LOCK_BACKOFF_S * 2**attempt
            log.warning("database is locked, retrying in %.2f s (attempt %d of %d)", delay, attempt + 1, retries)
            time.sleep(delay)
    raise AssertionError("unreachable")
