"""Reference writers the pipeline is measured against: plain sqlite3 and redis-py, fed the same rows.

- (a) ``before_per_token``: the source system before batching. For every token of the snapshot (and every one
  marked delisted or missing) one SELECT of that token and one upsert of it, each statement its own
  transaction (autocommit).
- (b) ``after_row_by_row``: the source system after batching. One SELECT of all tokens, then one ``execute``
  per row, committed every 100 rows.
- (c) ``floor_db`` + ``floor_cache``: a floor for exactly what our pipeline writes: ``executemany`` of the rows
  it changes (the plan's upserts, delisting and missing marks) and of its history rows, and the revision bump,
  in one transaction; and one pipelined Redis write of the same cache entries (HSET into a temporary key, UNLINK
  the live one, RENAME), packed and streamed on one connection as our staging is.

The benchmark times ``floor_cache`` after each of the three database writers: the source system updated its
cache every sync too, and the floor's way is the cheapest, so (a) and (b) are compared on the same work as ours.

Every function takes a ``Rows``: ``rows_from_db`` reads them back from the pipeline's database after its
write, so the references write the same rows as the pipeline (tests/unit/test_benchmark_references.py proves
it table for table).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import redis

from tokenwatch.cache.redis_client import pack_hset, stream
from tokenwatch.db.engine import PRAGMAS
from tokenwatch.domain.diff import Plan
from tokenwatch.domain.registry import TOKEN_COLUMNS

COMMIT_EVERY = 100  # (b): the source system's batch
HSET_CHUNK = 1_000  # (c): fields per HSET command, as our stage_entries sends them

Row = tuple[Any, ...]

_COLUMNS = ", ".join(TOKEN_COLUMNS)
_MARKS = ", ".join("?" * len(TOKEN_COLUMNS))
_SET = ", ".join(f"{c} = excluded.{c}" for c in TOKEN_COLUMNS if c != "symbol")
_DIFFERS = " OR ".join(f"tokens.{c} IS NOT excluded.{c}" for c in TOKEN_COLUMNS if c != "symbol")
UPSERT_SQL = f"INSERT INTO tokens ({_COLUMNS}) VALUES ({_MARKS}) ON CONFLICT (symbol) DO UPDATE SET {_SET}"
# Our pipeline's upsert (db/writer.py): a row equal to the stored one is not rewritten.
UPSERT_IF_CHANGED_SQL = f"{UPSERT_SQL} WHERE {_DIFFERS}"
SELECT_ONE_SQL = "SELECT * FROM tokens WHERE symbol = ?"
SELECT_ALL_SQL = "SELECT * FROM tokens"
HISTORY_SQL = (
    "INSERT INTO token_history (symbol, event_type, event_time, sync_id, details) VALUES (?, ?, ?, ?, ?) "
    "ON CONFLICT (symbol, event_type, sync_id) DO NOTHING"
)


@dataclass(frozen=True, slots=True)
class Rows:
    """What one sync writes, as plain values."""

    tokens: list[Row]  # every token of the snapshot, and those marked delisted or missing: what (a), (b) write
    changed: list[Row]  # the rows our pipeline writes: the plan's upserts, delisting and missing marks
    history: list[Row]  # (symbol, event_type, event_time, sync_id, details JSON text)
    state: dict[str, Any]  # registry_state after the sync (revision, last sync, event cursor...), by column
    cache: Mapping[str, bytes]  # the hot-cache hash after the sync


def rows_from_db(conn: sqlite3.Connection, plan: Plan, seen: Iterable[str], cache: Mapping[str, bytes]) -> Rows:
    """The rows of one plan as the pipeline stored them, read back from its database after its write.

    Reading them back, rather than deriving them again, keeps the references on the pipeline's exact values
    (its last_seen and delisting rules included) whatever those rules become.
    """
    stored = {row[0]: row for row in conn.execute(f"SELECT {_COLUMNS} FROM tokens")}
    marked = [*plan.delist, *plan.pending]
    tokens = [stored[s] for s in dict.fromkeys([*seen, *marked])]
    changed = [stored[s] for s in dict.fromkeys([*(r.symbol for r in plan.upserts), *marked])]
    history = list(conn.execute(
        "SELECT symbol, event_type, event_time, sync_id, details FROM token_history WHERE sync_id = ? ORDER BY id",
        (plan.sync_id,),
    ))
    cursor = conn.execute("SELECT * FROM registry_state WHERE id = 1")
    names = [d[0] for d in cursor.description]
    state = {k: v for k, v in zip(names, cursor.fetchone(), strict=True) if k != "id"}
    return Rows(tokens=tokens, changed=changed, history=history, state=state, cache=cache)


def _set_state(conn: sqlite3.Connection, rows: Rows) -> None:
    assignments = ", ".join(f"{column} = ?" for column in rows.state)
    conn.execute(f"UPDATE registry_state SET {assignments} WHERE id = 1", tuple(rows.state.values()))


def connect(path: str) -> sqlite3.Connection:
    """A plain sqlite3 connection with the pipeline's pragmas, in autocommit mode (each statement commits)."""
    conn = sqlite3.connect(path, isolation_level=None)
    for pragma in PRAGMAS:
        conn.execute(pragma)
    return conn


def before_per_token(conn: sqlite3.Connection, rows: Rows) -> None:
    """(a) One SELECT and one upsert per token, every statement committed on its own."""
    for row in rows.tokens:
        conn.execute(SELECT_ONE_SQL, (row[0],)).fetchone()
        conn.execute(UPSERT_SQL, row)
    for event in rows.history:
        conn.execute(HISTORY_SQL, event)
    _set_state(conn, rows)


def after_row_by_row(conn: sqlite3.Connection, rows: Rows) -> list[Row]:
    """(b) One SELECT of all tokens, then an ``execute`` per row, a commit every 100 rows; returns the SELECT."""
    stored: list[Row] = conn.execute(SELECT_ALL_SQL).fetchall()
    statements: list[tuple[str, Row]] = [(UPSERT_SQL, row) for row in rows.tokens]
    statements += [(HISTORY_SQL, event) for event in rows.history]
    conn.execute("BEGIN")
    for done, (sql, params) in enumerate(statements, start=1):
        conn.execute(sql, params)
        if done % COMMIT_EVERY == 0:
            conn.execute("COMMIT")
            conn.execute("BEGIN")
    _set_state(conn, rows)
    conn.execute("COMMIT")
    return stored


def floor_db(conn: sqlite3.Connection, rows: Rows) -> None:
    """(c) The rows our pipeline writes through raw ``executemany``, in one transaction."""
    conn.execute("BEGIN IMMEDIATE")
    conn.executemany(UPSERT_IF_CHANGED_SQL, rows.changed)
    conn.executemany(HISTORY_SQL, rows.history)
    _set_state(conn, rows)
    conn.execute("COMMIT")


def floor_cache(client: redis.Redis, temp_key: str, live_key: str, entries: Mapping[str, bytes]) -> None:
    """(c) One pipelined write: HSET the entries into temp_key (1,000 fields a command), UNLINK live_key and
    RENAME temp_key to it; packed and streamed as our staging is (each command packed while Redis runs the one
    before)."""
    items = list(entries.items())

    def commands() -> Iterator[list[Any] | bytes]:
        yield ["DEL", temp_key]
        for start in range(0, len(items), HSET_CHUNK):
            yield pack_hset(temp_key, items[start:start + HSET_CHUNK])
        yield ["UNLINK", live_key]  # as our publish does: Redis frees the old hash in its background thread
        if items:
            yield ["RENAME", temp_key, live_key]

    stream(client, commands)
