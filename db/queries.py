"""Read queries of the registry: the diff's one load, and what the CLI and bots ask for."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import msgspec
from sqlalchemy import Connection, Engine, bindparam, desc, select, true

from tokenwatch.db.schema import registry_state, sync_runs, token_history, tokens
from tokenwatch.domain.contracts import Contract
from tokenwatch.domain.diff import is_new
from tokenwatch.domain.registry import ACTIVE, DELISTED, TOKEN_COLUMNS, RegistryHead, RegistryRow, RegistryState

_ALL_TOKENS = select(*(tokens.c[c] for c in TOKEN_COLUMNS))
_HEAD = select(
    registry_state.c.revision, registry_state.c.last_sync_id, registry_state.c.last_fetched_at,
    registry_state.c.registry_id, registry_state.c.pending_change,
).where(registry_state.c.id == 1)


def _head(conn: Connection) -> tuple[RegistryHead, str | None]:
    revision, last_sync_id, last_fetched_at, registry_id, pending_change = conn.execute(_HEAD).one()
    return RegistryHead(int(revision), last_sync_id, last_fetched_at, registry_id), pending_change


def load_head(engine: Engine) -> RegistryHead:
    """Which commit the registry is at (one row)."""
    with engine.connect() as conn:
        return _head(conn)[0]


def load_registry(engine: Engine, like: Mapping[str, Contract] | None = None) -> RegistryState:
    """Every token row and the head, read in one transaction. A row whose metadata equals that of its contract in
    like (the answer just parsed) takes the contract's tuple, as it is read: the registry and the parse memo then
    hold one copy of it, and the copy read is freed before the next row is (no second registry, no holes)."""
    like = like or {}
    rows: dict[str, RegistryRow] = {}
    with engine.connect() as conn:
        head, pending_change = _head(conn)
        for row in conn.execute(_ALL_TOKENS):
            read = RegistryRow.from_row(resolve_last_seen(row, head.last_fetched_at))
            contract = like.get(read.symbol)
            if contract is not None and contract.meta == read.meta:
                read = msgspec.structs.replace(read, meta=contract.meta)
            rows[read.symbol] = read
    return RegistryState(head=head, rows=rows, pending_change=pending_change)


_STATUS_AT = TOKEN_COLUMNS.index("status")
_LAST_SEEN_AT = TOKEN_COLUMNS.index("last_seen")
_MISSING_AT = TOKEN_COLUMNS.index("missing_since")


def resolve_last_seen(row: Sequence[Any], last_sync: int | None) -> Sequence[Any]:
    """The row with last_seen resolved: an active token not missing was seen by the last applied sync."""
    if (
        last_sync is not None and row[_STATUS_AT] == ACTIVE and row[_MISSING_AT] is None
        and row[_LAST_SEEN_AT] < last_sync
    ):
        resolved = list(row)
        resolved[_LAST_SEEN_AT] = last_sync
        return resolved
    return row


def list_tokens(engine: Engine, status: str, *, now_ms: int, window_ms: int) -> list[dict[str, Any]]:
    """Tokens by status (active, delisted, new, all), newest listing first for 'new'."""
    query = select(tokens)
    if status in (ACTIVE, DELISTED):
        query = query.where(tokens.c.status == status).order_by(tokens.c.symbol)
    elif status == "new":
        # "is_new = 1" on SQLite (true() renders 1 there), exactly as the partial index ix_tokens_new says it, so
        # SQLite can use it; "is_new = true" on PostgreSQL, which its planner matches to the index's "is_new".
        query = query.where(tokens.c.is_new == true()).order_by(desc(tokens.c.first_seen))
    elif status == "all":
        query = query.order_by(tokens.c.symbol)
    else:
        raise ValueError(f"unknown status {status!r}: use active, delisted, new or all")
    with engine.connect() as conn:
        last_sync = conn.execute(select(registry_state.c.last_fetched_at)).scalar_one_or_none()
        rows = [dict(row._mapping) for row in conn.execute(query)]
    for row in rows:
        if row["status"] == ACTIVE and row["missing_since"] is None and last_sync and row["last_seen"] < last_sync:
            row["last_seen"] = last_sync
    if status == "new":
        # is_new is refreshed each sync; between syncs the window may already have closed.
        rows = [r for r in rows if is_new(r["listed_at"], now_ms, window_ms)]
    return rows


def history(engine: Engine, symbol: str | None = None, limit: int = 50) -> list[dict[str, Any]]:
    """History events, newest first, for one symbol or all."""
    query = select(token_history).order_by(desc(token_history.c.event_time), desc(token_history.c.id))
    if symbol:
        query = query.where(token_history.c.symbol == symbol)
    with engine.connect() as conn:
        return [dict(row._mapping) for row in conn.execute(query.limit(limit))]


def recent_syncs(engine: Engine, limit: int = 10) -> list[dict[str, Any]]:
    """The last sync_runs rows, newest first."""
    query = select(sync_runs).order_by(desc(sync_runs.c.finished_at)).limit(limit)
    with engine.connect() as conn:
        return [dict(row._mapping) for row in conn.execute(query)]


# The outbox read runs after every sync: built once (building costs more than running it). It starts after
# the later of the caller's cursor and the one stored with the registry, in one query.
_EVENTS_AFTER = (
    select(token_history).where(token_history.c.id > bindparam("b_after"))
    .order_by(token_history.c.id).limit(bindparam("b_limit"))
)


def events_after(engine: Engine, after_id: int, limit: int) -> list[dict[str, Any]]:
    """History events with an id above after_id, oldest first (the outbox read)."""
    with engine.connect() as conn:
        return [dict(row._mapping) for row in conn.execute(_EVENTS_AFTER, {"b_after": after_id, "b_limit": limit})]


def event_sync_ids(engine: Engine, ids: Sequence[int]) -> dict[int, str]:
    """The sync id of each history event among ids that exists."""
    query = select(token_history.c.id, token_history.c.sync_id).where(token_history.c.id.in_(list(ids)))
    with engine.connect() as conn:
        return {int(event_id): str(sync_id) for event_id, sync_id in conn.execute(query)}


def outbox_cursor(engine: Engine) -> int:
    """The history id of the last event this registry recorded as appended to the stream."""
    with engine.connect() as conn:
        return int(conn.execute(select(registry_state.c.last_event_id)).scalar_one() or 0)


def sync_run(engine: Engine, sync_id: str) -> dict[str, Any] | None:
    """One sync_runs row by id."""
    with engine.connect() as conn:
        row = conn.execute(select(sync_runs).where(sync_runs.c.sync_id == sync_id)).first()
    return None if row is None else dict(row._mapping)
