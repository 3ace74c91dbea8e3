"""The registry's two backends in tests: a fresh PostgreSQL database per test, and plain reads of either backend.

PostgreSQL is the machine's cluster (127.0.0.1:5432, trust auth; TOKENWATCH_TEST_POSTGRES overrides the
maintenance database's URL). A test that needs it fails when it cannot reach it: CI must not go green by skipping.
"""

from __future__ import annotations

import os
import sqlite3
import uuid
from collections.abc import Iterator
from contextlib import closing, contextmanager
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row
from psycopg.types.string import TextLoader
from sqlalchemy.engine.url import make_url

BACKENDS = ("sqlite", "postgresql")
MAINTENANCE_URL = os.environ.get("TOKENWATCH_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres")


def _libpq(url: str) -> str:
    """A SQLAlchemy URL as libpq reads it (without the +psycopg driver name)."""
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def is_sqlite(url: str) -> bool:
    return url.startswith("sqlite")


def sqlite_file(url: str) -> str:
    database = make_url(url).database
    assert database, url
    return database


@contextmanager
def postgres_database() -> Iterator[str]:
    """A new, empty database on the cluster (tw_test_<random>), dropped afterwards; yields its URL."""
    name = f"tw_test_{uuid.uuid4().hex[:16]}"
    try:
        admin = psycopg.connect(MAINTENANCE_URL, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        pytest.fail(f"PostgreSQL unreachable at {MAINTENANCE_URL} ({str(exc).splitlines()[0]}): start it with "
                    "`pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start`", pytrace=False)
    with admin:
        admin.execute(f'CREATE DATABASE "{name}"')
        try:
            yield str(make_url(MAINTENANCE_URL).set(drivername="postgresql+psycopg", database=name))
        finally:
            # FORCE: a worker the test started may still hold a connection.
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def query(url: str, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    """Rows of one query on either backend, through the plain driver; "?" placeholders on both."""
    if is_sqlite(url):
        with closing(sqlite3.connect(sqlite_file(url))) as conn:
            return list(conn.execute(sql, params))
    with connect(url) as conn:
        return [tuple(row) for row in conn.execute(sql.replace("%", "%%").replace("?", "%s"), params)]


def registry_exists(url: str) -> bool:
    """True when the database holds the registry's tables (an SQLite file: when it exists at all)."""
    if is_sqlite(url):
        return os.path.exists(sqlite_file(url))
    rows = query(url, "SELECT count(*) FROM information_schema.tables WHERE table_name = 'registry_state'")
    return bool(rows[0][0])


def connect(url: str, **kwargs: Any) -> psycopg.Connection[Any]:
    """A plain psycopg connection to a PostgreSQL registry (autocommit off). JSON columns read as the text they
    hold, as sqlite3 reads them, so a test compares the same values on both backends."""
    conn = psycopg.connect(_libpq(url), **kwargs)
    conn.adapters.register_loader("json", TextLoader)
    return conn


def dict_rows(url: str, sql: str) -> list[dict[str, Any]]:
    """Rows of one query as column -> value, on either backend."""
    if is_sqlite(url):
        with closing(sqlite3.connect(sqlite_file(url))) as conn:
            conn.row_factory = sqlite3.Row
            return [dict(row) for row in conn.execute(sql)]
    with connect(url, row_factory=dict_row) as conn:
        return list(conn.execute(sql.replace("%", "%%")))


def as_text(url: str, tables: tuple[str, ...]) -> str:
    """Everything the tables hold, as text (SQLite: its own dump of the whole file)."""
    if is_sqlite(url):
        with closing(sqlite3.connect(sqlite_file(url))) as conn:
            return "\n".join(conn.iterdump())
    return "\n".join(repr(row) for table in tables for row in query(url, f"SELECT * FROM {table}"))  # noqa: S608


class WriteLock:
    """A write transaction held from outside tokenwatch: BEGIN IMMEDIATE on SQLite (a backup, an operator's
    sqlite3 shell); on PostgreSQL the registry row FOR UPDATE, as another host's writer holds it."""

    def __init__(self, url: str) -> None:
        self._sqlite: sqlite3.Connection | None = None
        self._pg: psycopg.Connection[tuple[Any, ...]] | None = None
        if is_sqlite(url):
            self._sqlite = sqlite3.connect(sqlite_file(url), timeout=10, isolation_level=None,
                                           check_same_thread=False)
            self._sqlite.execute("BEGIN IMMEDIATE")
        else:
            self._pg = connect(url)
            self._pg.execute("SELECT revision FROM registry_state WHERE id = 1 FOR UPDATE")

    def release(self) -> None:
        """Roll the transaction back and close the connection."""
        if self._sqlite is not None:
            self._sqlite.execute("ROLLBACK")
            self._sqlite.close()
        if self._pg is not None:
            self._pg.rollback()
            self._pg.close()


def insert_many(url: str, sql: str, rows: list[tuple[Any, ...]]) -> None:
    """Run one INSERT ("?" placeholders) for every row, in one transaction, on either backend."""
    if is_sqlite(url):
        with closing(sqlite3.connect(sqlite_file(url))) as conn, conn:
            conn.executemany(sql, rows)
        return
    with connect(url) as conn, conn.cursor() as cursor:
        cursor.executemany(sql.replace("?", "%s"), rows)
