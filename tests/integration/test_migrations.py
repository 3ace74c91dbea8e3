"""Upgrades in place: the schema through Alembic migrations, from a registry tokenwatch 0.1.0 wrote.

tests/fixtures/registry-0.1.0.sqlite was written by 0.1.0 itself (see tests/fixtures/README.md). The upgrade is
tested on both backends: on PostgreSQL, from a database shaped as 0.1.0's schema (the first migration, without
a version table) holding the fixture's rows.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import JSON, Boolean, MetaData, text

from tests import databases
from tests.conftest import ROOT, Stack
from tokenwatch.db import migrate
from tokenwatch.db.engine import make_engine
from tokenwatch.reader import contract_from_row
from tokenwatch.simulator import Simulator

pytestmark = pytest.mark.integration

FIXTURE = ROOT / "tests" / "fixtures" / "registry-0.1.0.sqlite"
TABLES = ("tokens", "token_history", "sync_runs", "registry_state")


def query(url: str | Path, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    return databases.query(url if isinstance(url, str) else f"sqlite:///{url}", sql, *params)


def shape(path: Path) -> dict[str, Any]:
    """Every table's columns (name, type, not null, default, key) and every index's columns, order and filter."""
    found: dict[str, Any] = {}
    with closing(sqlite3.connect(path)) as conn:
        for table in (*TABLES, "tokens_live"):
            found[table] = [row[1:] for row in conn.execute(f"PRAGMA table_info({table})")]
        for name, sql in conn.execute("SELECT name, sql FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL"):
            columns = [row[2:] for row in conn.execute(f"PRAGMA index_xinfo({name})") if row[5]]
            found[name] = (columns, sql.split(" WHERE ", 1)[1] if " WHERE " in sql else None)
    return found


def load_0_1_0_into_postgres(url: str) -> None:
    """The fixture's registry on PostgreSQL as 0.1.0's schema would hold it: the tables of the first migration
    (no version table: 0.1.0 kept none), every row of the fixture, the history id sequence past its last id."""
    engine = make_engine(url, writer=True)
    try:
        with engine.begin() as connection:
            migrate.command.upgrade(migrate._config(connection), migrate.RELEASE_0_1_0)
            connection.execute(text("DROP TABLE alembic_version"))
            connection.execute(text("DELETE FROM registry_state"))
            tables = MetaData()
            tables.reflect(connection, only=TABLES)
            with closing(sqlite3.connect(FIXTURE)) as source:
                source.row_factory = sqlite3.Row
                for name in TABLES:
                    table = tables.tables[name]
                    rows = [dict(row) for row in source.execute(f"SELECT * FROM {name}")]  # noqa: S608
                    for column in table.columns:  # sqlite3 gives booleans as 0/1 and JSON as its text
                        convert = bool if isinstance(column.type, Boolean) else json.loads if isinstance(
                            column.type, JSON) else None
                        for row in rows if convert else ():
                            row[column.name] = None if row[column.name] is None else convert(row[column.name])
                    if rows:
                        connection.execute(table.insert(), rows)
            connection.execute(text(
                "SELECT setval('token_history_id_seq', (SELECT max(id) FROM token_history))"))
    finally:
        engine.dispose()


@pytest.fixture
def old_registry(tmp_path: Path, database_url: str) -> str:
    """The 0.1.0 registry of the fixture, on each backend in turn; its URL."""
    if databases.is_sqlite(database_url):
        shutil.copyfile(FIXTURE, databases.sqlite_file(database_url))
    else:
        load_0_1_0_into_postgres(database_url)
    return database_url


def test_the_first_migration_is_the_schema_0_1_0_created(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'fresh.db'}", writer=True)
    with engine.begin() as connection:
        migrate.command.upgrade(migrate._config(connection), migrate.RELEASE_0_1_0)
    engine.dispose()
    assert shape(tmp_path / "fresh.db") == shape(FIXTURE)


def test_a_0_1_0_registry_is_refused_until_upgraded_then_keeps_everything(stack: Stack, old_registry: str) -> None:
    assert stack.database_url == old_registry
    for table in ("tokens", "token_history", "sync_runs"):  # on PostgreSQL too: every row of the fixture is there
        assert query(old_registry, f"SELECT count(*) FROM {table}") == query(  # noqa: S608
            FIXTURE, f"SELECT count(*) FROM {table}") != [(0,)], table  # noqa: S608
    before = {table: query(old_registry, f"SELECT * FROM {table} ORDER BY 1") for table in TABLES}  # noqa: S608

    refused = stack.tokenwatch("tokens")
    assert refused.returncode == 1
    assert refused.stderr.splitlines() == [
        "tokenwatch: the registry's schema is at 0001 (written by tokenwatch 0.1.0), this release needs "
        f"{migrate.head()}: run `tokenwatch db upgrade`"]
    assert query(old_registry, "SELECT * FROM tokens ORDER BY 1") == before["tokens"]  # nothing written

    upgraded = stack.tokenwatch("db", "upgrade")
    assert upgraded.returncode == 0, upgraded.stderr
    assert upgraded.stdout.strip() == f"registry schema upgraded 0001 -> {migrate.head()}"
    again = stack.tokenwatch("db", "upgrade")
    assert again.returncode == 0
    assert again.stdout.strip() == f"registry schema already at {migrate.head()}: nothing to do"

    for table in ("tokens", "token_history", "sync_runs"):
        assert query(old_registry, f"SELECT * FROM {table} ORDER BY 1") == before[table], table  # noqa: S608
    (old_state,) = before["registry_state"]
    ((*kept, registry_id, pending),) = query(old_registry, "SELECT * FROM registry_state")
    assert tuple(kept) == old_state and len(registry_id) == 16 and pending is None
    assert query(old_registry, "SELECT version_num FROM alembic_version") == [(migrate.head(),)]
    listed = stack.tokenwatch("tokens", "--json")
    assert listed.returncode == 0 and listed.stdout.count('"symbol"') == 26


def test_the_next_sync_of_the_unchanged_exchange_writes_no_event(stack: Stack, old_registry: str) -> None:
    assert stack.database_url == old_registry
    assert stack.tokenwatch("db", "upgrade").returncode == 0
    active = [contract_from_row(row)
              for row in databases.dict_rows(old_registry, "SELECT * FROM tokens WHERE status = 'active'")]
    events_before = query(old_registry, "SELECT count(*) FROM token_history")
    with Simulator(port=0, contracts=0) as sim:
        assert sim.load(active) == 26  # the exchange as the registry last saw it
        stack.env["TOKENWATCH_KUCOIN_URL"] = sim.url
        outcome = stack.sync("--inline")
    assert outcome["status"] == "ok", outcome["error"]
    assert outcome["counts"]["unchanged"] == 26
    changes = ("listed", "delisted", "relisted", "delisting_scheduled", "status_changed", "params_changed", "invalid")
    assert {k: outcome["counts"][k] for k in changes} == dict.fromkeys(changes, 0)
    assert query(old_registry, "SELECT count(*) FROM token_history") == events_before
    assert query(old_registry, "SELECT revision FROM registry_state") == [(6,)]
    runs_0_1_0 = len(query(FIXTURE, "SELECT * FROM sync_runs"))
    assert query(old_registry, "SELECT count(*) FROM sync_runs") == [(runs_0_1_0 + 1,)]  # every run kept, one more
