"""SQLite engines tuned for one writer and many readers: WAL, busy timeout, a bounded page cache."""

from __future__ import annotations

import os
import sqlite3
from typing import Any

from sqlalchemy import Engine, create_engine, event, insert, select
from sqlalchemy.engine.url import make_url
from sqlalchemy.exc import DBAPIError

from tokenwatch.db.locking import describe, with_lock_retry
from tokenwatch.db.schema import metadata, registry_state, tokens
from tokenwatch.errors import WriteError

BUSY_TIMEOUT_MS = 2_000
# SQLite's default page cache and no memory map: each sync appends history and sync-run pages, and a larger
# cache or a map would keep them resident, so a worker's memory would grow (benchmarks/README.md).
CACHE_KIB = 2_048
MMAP_BYTES = 0

PRAGMAS = (
    "PRAGMA journal_mode=WAL",
    "PRAGMA synchronous=NORMAL",  # durable at checkpoints; safe against corruption in WAL mode
    f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}",
    f"PRAGMA cache_size=-{CACHE_KIB}",
    f"PRAGMA mmap_size={MMAP_BYTES}",
    "PRAGMA temp_store=MEMORY",
    "PRAGMA foreign_keys=ON",
)


def sqlite_path(database_url: str) -> str | None:
    """The file path of an sqlite URL, or None for an in-memory database."""
    database = make_url(database_url).database
    return None if not database or database == ":memory:" else database


def make_engine(database_url: str, *, writer: bool = False) -> Engine:
    """An engine whose connections use our pragmas; a writer's transactions start with BEGIN IMMEDIATE."""
    path = sqlite_path(database_url)
    if path:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    engine = create_engine(database_url, connect_args={"check_same_thread": False})

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: sqlite3.Connection, _record: Any) -> None:
        # Let SQLAlchemy's begin event issue BEGIN itself, instead of pysqlite's implicit deferred one.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        for pragma in PRAGMAS:
            cursor.execute(pragma)
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Any) -> None:
        # IMMEDIATE takes the write lock up front, so a busy database fails at BEGIN, not mid-sync;
        # readers begin deferred and never block the writer in WAL mode.
        connection.exec_driver_sql("BEGIN IMMEDIATE" if writer else "BEGIN")

    return engine


def _live_view() -> str:
    columns = ",\n  ".join(
        "CASE WHEN t.status = 'active' AND t.missing_since IS NULL AND s.last_fetched_at > t.last_seen "
        "THEN s.last_fetched_at ELSE t.last_seen END AS last_seen" if column == "last_seen" else f"t.{column}"
        for column in (c.name for c in tokens.columns)
    )
    return (
        "CREATE VIEW IF NOT EXISTS tokens_live AS\nSELECT\n  " + columns
        + "\nFROM tokens AS t CROSS JOIN registry_state AS s WHERE s.id = 1"
    )


def init_db(engine: Engine) -> None:
    """Create tables, indices and the tokens_live view if missing, and the single registry_state row."""
    metadata.create_all(engine)
    with engine.begin() as conn:
        # tokens with last_seen resolved: the stored value is only rewritten when a row changes.
        conn.exec_driver_sql(_live_view())
        if conn.execute(select(registry_state.c.id)).first() is None:
            conn.execute(insert(registry_state).values(id=1, revision=0))


def open_engine(database_url: str, *, writer: bool = False) -> Engine:
    """An engine for the URL with the schema in place (created if missing; a locked file is retried)."""
    engine = make_engine(database_url, writer=writer)
    try:
        with_lock_retry(lambda: init_db(engine))
    except DBAPIError as exc:
        engine.dispose()
        raise WriteError(f"database unavailable: {describe(exc)}") from exc
    return engine
