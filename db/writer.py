"""Apply a plan to the registry in one transaction: chunked upserts, delisting marks, history, sync_runs.

One code path for SQLite and PostgreSQL: both speak INSERT ... ON CONFLICT, whose statement each dialect builds
(_Dialect). Two writes never interleave: SQLite's BEGIN IMMEDIATE takes the file's write lock, and on PostgreSQL
the transaction first locks the registry row (SELECT ... FOR UPDATE, which SQLite's compiler leaves out)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from sqlalchemy import Connection, Engine, and_, bindparam, case, func, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import DBAPIError

from tokenwatch.clock import now_ms
from tokenwatch.db.locking import describe, with_lock_retry
from tokenwatch.db.schema import registry_state, sync_runs, token_history, tokens
from tokenwatch.domain.diff import Plan
from tokenwatch.domain.registry import ACTIVE, DELISTED, TOKEN_COLUMNS
from tokenwatch.errors import StaleSnapshotError, WriteError
from tokenwatch.outcome import COUNT_KEYS, PHASES

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class WriteResult:
    """What the write did: the new revision, and whether this sync had already been applied."""

    revision: int
    duplicate: bool
    upserted: int
    batches: int


def _chunks(items: Sequence[T], size: int) -> Iterator[Sequence[T]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def _upsert_statement(insert: Any) -> Any:
    stmt = insert(tokens)
    excluded = stmt.excluded
    updatable = [c for c in TOKEN_COLUMNS if c != "symbol"]
    # DO UPDATE ... WHERE any column differs: a replayed or identical row costs no page write.
    return stmt.on_conflict_do_update(
        index_elements=[tokens.c.symbol],
        set_={c: excluded[c] for c in updatable},
        where=or_(*(tokens.c[c].is_distinct_from(excluded[c]) for c in updatable)),
    )


# last_seen is not rewritten on every row each sync (that would cost more than the whole diff): an active,
# present token was seen by the last applied sync (registry_state.last_fetched_at, see the tokens_live view).
# It is stored when a row is written, and frozen when a token goes missing or is delisted.
_LAST_SIGHTING = case(
    (tokens.c.missing_since.is_(None), func.coalesce(bindparam("b_prev"), tokens.c.last_seen)),
    else_=tokens.c.last_seen,
)
_DELIST = (
    update(tokens)
    .where(and_(tokens.c.symbol == bindparam("b_symbol"), tokens.c.status == ACTIVE))
    .values(status=DELISTED, delisted_at=bindparam("b_now"), is_new=False, missing_since=None,
            last_seen=_LAST_SIGHTING)
)
_PENDING = (
    update(tokens)
    .where(and_(tokens.c.symbol == bindparam("b_symbol"), tokens.c.missing_since.is_(None)))
    .values(missing_since=bindparam("b_now"), last_seen=_LAST_SIGHTING)
)
# Statements are built once: building one costs more than executing it.
# FOR UPDATE: on PostgreSQL a second writer waits here, before reading anything, until the first commits; it then
# sees that commit (READ COMMITTED, db/engine.py). History ids are so given out in commit order, which the outbox
# relies on. SQLite renders no FOR UPDATE: BEGIN IMMEDIATE already holds the whole file.
_REVISION = select(registry_state.c.revision).where(registry_state.c.id == 1).with_for_update()
_APPLIED = select(sync_runs.c.revision).where(
    sync_runs.c.sync_id == bindparam("b_sync_id"), sync_runs.c.revision.is_not(None),
)
_ADVANCE = (
    update(registry_state).where(registry_state.c.id == 1)
    .values(revision=bindparam("b_revision"), last_sync_id=bindparam("b_sync_id"),
            last_fetched_at=bindparam("b_fetched_at"), pending_change=bindparam("b_pending"))
)
_RUN_COLUMNS = tuple(c.name for c in sync_runs.c)
_NEW_RUN = sync_runs.insert()


def _record_statement(insert: Any) -> Any:
    stmt = insert(sync_runs)
    keep = {"sync_id", "started_at", "revision"}
    return stmt.on_conflict_do_update(
        index_elements=[sync_runs.c.sync_id],
        set_={c: stmt.excluded[c] for c in _RUN_COLUMNS if c not in keep},
        # An applied sync's row is only ever completed by its own outcome, never replaced by a late
        # failure of a redelivered copy.
        where=or_(sync_runs.c.revision.is_(None), stmt.excluded.revision.is_not(None)),
    )


@dataclass(frozen=True, slots=True)
class _Dialect:
    """The ON CONFLICT statements as one dialect's insert builds them."""

    upsert: Any
    history: Any
    record: Any

    @classmethod
    def build(cls, insert: Any) -> _Dialect:
        history = insert(token_history).on_conflict_do_nothing(index_elements=["symbol", "event_type", "sync_id"])
        return cls(_upsert_statement(insert), history, _record_statement(insert))


_DIALECTS = {"sqlite": _Dialect.build(sqlite.insert), "postgresql": _Dialect.build(postgresql.insert)}


def _statements(conn: Connection) -> _Dialect:
    return _DIALECTS[conn.dialect.name]


def sync_run_row(
    sync_id: str, *, started_at: int, status: str, counts: Mapping[str, int],
    timings: Mapping[str, float], error: str | None = None, revision: int | None = None,
) -> dict[str, Any]:
    """A sync_runs row from an outcome's parts."""
    row: dict[str, Any] = {
        "sync_id": sync_id, "started_at": started_at, "finished_at": now_ms(),
        "status": status, "error": error, "revision": revision,
    }
    row.update({key: int(counts.get(key, 0)) for key in COUNT_KEYS})
    row.update({f"{phase}_ms": timings.get(phase) for phase in PHASES})
    return row


def _apply(
    conn: Connection, plan: Plan, batch_size: int, started_at: int, timings: Mapping[str, float],
) -> WriteResult:
    statements = _statements(conn)
    state = conn.execute(_REVISION).one()
    done = conn.execute(_APPLIED, {"b_sync_id": plan.sync_id}).first()
    if done is not None:
        # A redelivered message: the first delivery committed; change nothing.
        return WriteResult(revision=int(done.revision), duplicate=True, upserted=0, batches=0)
    if state.revision != plan.base_revision:
        raise StaleSnapshotError(
            f"plan built on revision {plan.base_revision}, registry is at {state.revision}"
        )
    batches = 0
    for chunk in _chunks(plan.upserts, batch_size):
        conn.execute(statements.upsert, [dict(zip(TOKEN_COLUMNS, row.as_row(), strict=True)) for row in chunk])
        batches += 1
    for statement, symbols in ((_DELIST, plan.delist), (_PENDING, plan.pending)):
        for names in _chunks(symbols, batch_size):
            conn.execute(statement, [{"b_symbol": s, "b_now": plan.now_ms, "b_prev": plan.seen_before}
                                     for s in names])
            batches += 1
    events = [
        {"symbol": e.symbol, "event_type": e.event_type, "event_time": plan.now_ms, "sync_id": plan.sync_id,
         "details": e.details}
        for e in plan.events
    ]
    for rows in _chunks(events, batch_size):
        conn.execute(statements.history, list(rows))
        batches += 1
    revision = int(state.revision) + 1
    conn.execute(_ADVANCE, {"b_revision": revision, "b_sync_id": plan.sync_id, "b_fetched_at": plan.now_ms,
                            "b_pending": plan.pending_change})
    conn.execute(_NEW_RUN, sync_run_row(
        plan.sync_id, started_at=started_at, status=plan.status, counts=plan.counts, timings=timings,
        error=plan.warning, revision=revision,
    ))
    return WriteResult(revision=revision, duplicate=False, upserted=len(plan.upserts), batches=batches)


def apply_plan(
    engine: Engine, plan: Plan, *, batch_size: int, started_at: int, timings: Mapping[str, float],
) -> WriteResult:
    """Commit the whole plan or nothing; WriteError (or StaleSnapshotError) says why it did not."""

    def attempt() -> WriteResult:
        with engine.begin() as conn:
            return _apply(conn, plan, batch_size, started_at, timings)

    try:
        return with_lock_retry(attempt)
    except StaleSnapshotError:
        raise
    except DBAPIError as exc:
        raise WriteError(f"registry write failed and was rolled back: {describe(exc)}") from exc


def record_outcome(engine: Engine, row: Mapping[str, Any]) -> None:
    """Insert or complete a sync_runs row (a failed or skipped sync, or the cache timing of a good one)."""
    params = {column: row.get(column) for column in _RUN_COLUMNS}
    with_lock_retry(lambda: _execute(engine, lambda conn: _statements(conn).record, params))


def _execute(engine: Engine, statement: Callable[[Connection], Any], params: Mapping[str, Any] | None = None) -> None:
    """Run the statement picked for the connection's dialect in a transaction of its own."""
    with engine.begin() as conn:
        conn.execute(statement(conn), params)


def set_event_cursor(engine: Engine, event_id: int) -> None:
    """Remember the last history id appended to the stream (never moves backwards)."""
    with_lock_retry(lambda: _execute(engine, lambda _conn: _CURSOR, {"b_event_id": event_id}))


_CURSOR = (
    update(registry_state)
    .where(registry_state.c.id == 1, registry_state.c.last_event_id < bindparam("b_event_id"))
    .values(last_event_id=bindparam("b_event_id"))
)
