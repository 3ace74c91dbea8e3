"""A worker's pool process made ready before its first sync: it opens its registry engines (schema checked)
and compiles the write statements at start, as a process that has synced before holds them.

A pool process starts long before the task that lands on it, and with several processes on several nodes most
syncs land on one that has not synced yet; without this its first sync pays both (benchmarks/coldwarm.py).
"""

from __future__ import annotations

import logging

from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from tokenwatch.clock import now_ms
from tokenwatch.db.queries import load_head
from tokenwatch.db.writer import _apply
from tokenwatch.domain.contracts import METADATA_COLUMNS
from tokenwatch.domain.diff import Event, Plan
from tokenwatch.domain.registry import ACTIVE, RegistryRow
from tokenwatch.errors import TokenwatchError, one_line
from tokenwatch.outcome import SyncStatus, zero_counts
from tokenwatch.process import ProcessState
from tokenwatch.settings import Settings

log = logging.getLogger(__name__)

_ABSENT = "TOKENWATCHPREPARE"  # never a listed symbol: written only inside a transaction rolled back


def compile_writes(engine: Engine, batch_size: int) -> None:
    """Run every statement of the write once, in transactions rolled back (SQLAlchemy compiles a statement on
    its first use in an engine; the upsert alone has 54 columns)."""
    row = RegistryRow(_ABSENT, ACTIVE, "Open", False, None, 0, 0, None, (None,) * len(METADATA_COLUMNS))
    revision = load_head(engine).revision
    for missing in ([], [_ABSENT]):
        plan = Plan(
            sync_id=f"prepare-{_ABSENT}", now_ms=now_ms(), base_revision=revision, status=SyncStatus.OK,
            upserts=[row], delist=[_ABSENT], pending=[_ABSENT], missing=missing,
            events=[Event(_ABSENT, "listed", {})], counts=zero_counts(),
        )
        with engine.connect() as conn:
            transaction = conn.begin()
            try:
                _apply(conn, plan, batch_size, plan.now_ms, {})
            finally:
                transaction.rollback()


def prepare(settings: Settings, process: ProcessState) -> bool:
    """Open the registry's engines and compile the write statements; False (and nothing created) when the
    registry does not exist yet or cannot be reached now: the first sync then does it, as before."""
    try:
        process.engine(settings.database_url, create=False)
        compile_writes(process.engine(settings.database_url, writer=True, create=False), settings.batch_size)
    except (TokenwatchError, SQLAlchemyError) as exc:
        log.debug("process not prepared (%s): its first sync opens the registry", one_line(exc))
        return False
    return True
