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
    with psycopg.connect(_libpq(url)) as conn:
        return [tuple(row) for row in conn.execute(sql.replace("%", "%%").replace("?", "%s"), params)]


def registry_exists(url: str) -> bool:
    """True when the database holds the registry's tables (an SQLite file: when it exists at all)."""
    if is_sqlite(url):
        return os.path.exists(sqlite_file(url))
    rows = query(url, "SELECT count(*) FROM information_schema.tables WHERE table_name = 'registry_state'")
    return bool(rows[0][0])


def connect(url: str) -> psycopg.Connection[tuple[Any, ...]]:
    """A plain psycopg connection to a PostgreSQL registry (autocommit off)."""
    return psycopg.connect(_libpq(url))
