"""Engines for the registry: SQLite tuned for one writer and many readers (WAL, busy timeout, a bounded page
cache), or PostgreSQL (writers serialise on the registry row, see db/writer.py)."""

from __future__ import annotations

import os
import sqlite3
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine.url import make_url
from sqlalchemy.exc import DBAPIError

from tokenwatch.db import migrate
from tokenwatch.db.locking import describe, with_lock_retry
from tokenwatch.errors import RegistryMissingError, TokenwatchError, WriteError

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


# PostgreSQL: a server that does not answer fails a command in seconds, not after the OS's TCP timeout.
PG_CONNECT_TIMEOUT_S = 10
# A node cut off inside a write transaction would hold the registry row until the server noticed the dead
# connection (hours, by the OS's TCP defaults): the server ends a session idle inside a transaction after this,
# and probes an idle connection's peer every few seconds, so the row is free again within half a minute.
PG_IDLE_IN_TRANSACTION_MS = 20_000
# The server probes an idle connection's peer (session settings, so no server configuration is needed).
PG_KEEPALIVE_OPTIONS = "-c tcp_keepalives_idle=10 -c tcp_keepalives_interval=5 -c tcp_keepalives_count=3"
# PostgreSQL's counterpart of the busy timeout: a writer waits this long for the registry row another transaction
# holds, then fails with a lock timeout that is retried like SQLite's "database is locked" (db/locking.py).
PG_LOCK_TIMEOUT_MS = BUSY_TIMEOUT_MS


def is_sqlite(database_url: str) -> bool:
    """True for an SQLite URL, False for PostgreSQL (the only other backend settings accept)."""
    return make_url(database_url).get_backend_name() == "sqlite"


def sqlite_path(database_url: str) -> str | None:
    """The file path of an sqlite URL; None for an in-memory database or another backend."""
    url = make_url(database_url)
    database = url.database
    if url.get_backend_name() != "sqlite" or not database or database == ":memory:":
        return None
    return database


def make_engine(database_url: str, *, writer: bool = False) -> Engine:
    """An engine for the URL: SQLite connections use our pragmas and a writer's transactions start with BEGIN
    IMMEDIATE; PostgreSQL readers see one snapshot per transaction (REPEATABLE READ), writers READ COMMITTED."""
    if not is_sqlite(database_url):
        # A writer serialises on the registry row first (FOR UPDATE), then must see what the previous holder
        # committed: READ COMMITTED. A reader's several statements (head, then rows) must see one commit.
        connect_args: dict[str, Any] = {"connect_timeout": PG_CONNECT_TIMEOUT_S, "application_name": "tokenwatch",
                                        "options": f"-c idle_in_transaction_session_timeout="
                                                   f"{PG_IDLE_IN_TRANSACTION_MS} {PG_KEEPALIVE_OPTIONS}",
                                        # ...and this side notices a server gone silent the same way.
                                        "keepalives": 1, "keepalives_idle": 10, "keepalives_interval": 5,
                                        "keepalives_count": 3}
        if writer:
            connect_args["options"] += f" -c lock_timeout={PG_LOCK_TIMEOUT_MS}"
        return create_engine(
            database_url, isolation_level="READ COMMITTED" if writer else "REPEATABLE READ", connect_args=connect_args,
        )
    path = sqlite_path(database_url)
    if path and writer:
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


def open_engine(database_url: str, *, writer: bool = False, create: bool | None = None) -> Engine:
    """An engine for the URL whose registry has this release's schema. A missing registry is created when create
    (default: for a writer), else refused (RegistryMissingError); a schema behind or ahead is SchemaError; a
    locked file is retried."""
    create = writer if create is None else create
    if not writer and create:
        upgrade_registry(database_url, only_if_missing=True)  # created under a writer's lock, then read
    elif not writer and (path := sqlite_path(database_url)) is not None and not os.path.exists(path):
        # SQLite would create an empty file (and its folder) on connecting: a reader must leave no trace.
        raise RegistryMissingError(f"no registry at {path}: run `tokenwatch run` or `tokenwatch sync` first")
    engine = make_engine(database_url, writer=writer)
    try:
        with_lock_retry(lambda: migrate.check(engine, create=create))
    except DBAPIError as exc:
        engine.dispose()
        raise WriteError(f"registry database unavailable: {describe(exc)}") from exc
    except TokenwatchError:
        engine.dispose()
        raise
    return engine


def upgrade_registry(database_url: str, *, only_if_missing: bool = False) -> tuple[str | None, str]:
    """Create or upgrade the registry at the URL to this release's schema (tokenwatch db upgrade, tokenwatch run);
    returns (the revision before, the revision after). only_if_missing creates a missing registry and leaves an
    existing one as it is. A locked database is retried, then WriteError."""
    engine = make_engine(database_url, writer=True)
    try:
        return with_lock_retry(lambda: migrate.upgrade(engine, only_if_missing=only_if_missing))
    except DBAPIError as exc:
        raise WriteError(f"registry database unavailable: {describe(exc)}") from exc
    finally:
        engine.dispose()
