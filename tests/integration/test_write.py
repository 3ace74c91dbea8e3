"""db.engine and db.writer against real databases: chunked writes, atomicity and serialised writers on SQLite and
PostgreSQL alike (the engine fixture runs each test on both); SQLite's schema text, pragmas and file locking."""

from __future__ import annotations

import logging
import math
import re
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from sqlalchemy import Engine, event, text
from sqlalchemy.exc import DBAPIError, IntegrityError

import tokenwatch.db.engine
import tokenwatch.db.locking
from tests import databases
from tokenwatch.db import migrate
from tokenwatch.db.engine import BUSY_TIMEOUT_MS, CACHE_KIB, MMAP_BYTES, make_engine, sqlite_path
from tokenwatch.db.queries import load_registry
from tokenwatch.db.writer import WriteResult, apply_plan
from tokenwatch.domain.contracts import Contract, parse_contracts
from tokenwatch.domain.diff import Event, Plan, build_plan
from tokenwatch.domain.registry import ACTIVE, DELISTED, RegistryHead, RegistryState
from tokenwatch.errors import StaleSnapshotError, WriteError
from tokenwatch.simulator.generator import generate_contracts, new_contract

pytestmark = pytest.mark.integration

NOW = 1_764_000_000_000
MINUTE_MS = 60_000
WINDOW_MS = 72 * 3_600_000
TABLES = ("tokens", "token_history", "sync_runs", "registry_state")
NULL: Any = None


# ---- helpers -----------------------------------------------------------------------------------------------

def make(tmp_path: Any, url: str | None = None) -> Engine:
    engine = make_engine(url or f"sqlite:///{tmp_path}/t.db", writer=True)
    migrate.upgrade(engine)
    return engine


@pytest.fixture
def engine(tmp_path: Any, database_url: str) -> Iterator[Engine]:
    """A writer's engine on a fresh registry, on each backend in turn."""
    eng = make(tmp_path, database_url)
    yield eng
    eng.dispose()


@pytest.fixture
def sqlite_engine(tmp_path: Any) -> Iterator[Engine]:
    """A writer's engine on a fresh SQLite file, for what only SQLite has (its schema text, pragmas, file lock)."""
    eng = make(tmp_path)
    yield eng
    eng.dispose()


def url_of(engine: Engine) -> str:
    return engine.url.render_as_string(hide_password=False)


def path_of(engine: Engine) -> str:
    path = sqlite_path(str(engine.url))
    assert path is not None
    return path


def raw_connect(engine: Engine, timeout_s: float = 5.0) -> sqlite3.Connection:
    """A plain sqlite3 connection to the same file, outside SQLAlchemy."""
    return sqlite3.connect(path_of(engine), timeout=timeout_s, isolation_level=None, check_same_thread=False)


def dump(engine: Engine) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every table (by its key), read through a separate connection."""
    return {t: databases.query(url_of(engine), f"SELECT * FROM {t} ORDER BY 1") for t in TABLES}  # noqa: S608


def count(engine: Engine, table: str) -> int:
    return len(dump(engine)[table])


def snapshot(n: int, *, seed: int = 0, now: int = NOW) -> dict[str, Contract]:
    parsed = parse_contracts(generate_contracts(n, seed=seed, now_ms=now))
    assert parsed.invalid == 0
    return parsed.contracts


def plan_on(engine: Engine, contracts: dict[str, Contract], sync_id: str, now: int) -> Plan:
    """The plan a sync fetched at `now` would build against what the database holds."""
    return build_plan(
        sync_id, contracts, load_registry(engine), now_ms=now, window_ms=WINDOW_MS,
        fetched=len(contracts), invalid=0,
    )


def apply(engine: Engine, plan: Plan, batch_size: int = 100) -> WriteResult:
    return apply_plan(engine, plan, batch_size=batch_size, started_at=plan.now_ms - 500, timings={"api": 12.5})


def baseline(engine: Engine, n: int = 30) -> tuple[dict[str, Contract], Plan]:
    contracts = snapshot(n)
    plan = plan_on(engine, contracts, "sync-0", NOW)
    assert plan.status == "baseline"
    apply(engine, plan)
    return contracts, plan


def changed_snapshot(contracts: dict[str, Contract], *, listed: int, delisted: int, now: int) -> dict[str, Contract]:
    """The baseline minus `delisted` symbols, plus `listed` fresh listings."""
    kept = dict(list(contracts.items())[delisted:])
    fresh = parse_contracts([new_contract(f"NEW{i}", now) for i in range(listed)])
    assert fresh.invalid == 0
    return {**kept, **fresh.contracts}


@contextmanager
def executemany_log(engine: Engine) -> Iterator[list[tuple[str, int]]]:
    """(statement head, number of parameter sets) of every executemany on the engine."""
    seen: list[tuple[str, int]] = []

    def listener(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, many: bool) -> None:
        if many:
            seen.append((" ".join(statement.split()[:3]), len(parameters)))

    event.listen(engine, "before_cursor_execute", listener)
    try:
        yield seen
    finally:
        event.remove(engine, "before_cursor_execute", listener)


@contextmanager
def write_lock_held(engine: Engine, *, release_after_s: float) -> Iterator[threading.Event]:
    """Another connection holds the write lock until release_after_s or until released: BEGIN IMMEDIATE on SQLite,
    the registry row FOR UPDATE on PostgreSQL (what another host's writer holds)."""
    locked, release = threading.Event(), threading.Event()

    def hold() -> None:
        if not databases.is_sqlite(url_of(engine)):
            with databases.connect(url_of(engine)) as pg:
                pg.execute("SELECT revision FROM registry_state WHERE id = 1 FOR UPDATE")
                locked.set()
                release.wait(release_after_s)
            return
        con = raw_connect(engine)
        try:
            con.execute("BEGIN IMMEDIATE")
            locked.set()
            release.wait(release_after_s)
            con.execute("COMMIT")
        finally:
            con.close()

    thread = threading.Thread(target=hold, daemon=True)
    thread.start()
    assert locked.wait(5), "the lock holder never got the lock"
    try:
        yield release
    finally:
        release.set()
        thread.join(10)


def short_busy_timeout(monkeypatch: pytest.MonkeyPatch, ms: int) -> None:
    """Connections made from now on wait at most `ms` for a lock, so the retry loop is reached quickly."""
    monkeypatch.setattr(tokenwatch.db.engine, "PG_LOCK_TIMEOUT_MS", ms)
    pragmas = tuple(
        f"PRAGMA busy_timeout={ms}" if p.startswith("PRAGMA busy_timeout") else p for p in tokenwatch.db.engine.PRAGMAS
    )
    monkeypatch.setattr(tokenwatch.db.engine, "PRAGMAS", pragmas)


def lock_retries_logged(caplog: pytest.LogCaptureFixture) -> int:
    return sum(1 for r in caplog.records
               if r.name == "tokenwatch.db.locking" and "database is locked" in r.getMessage())


# ---- schema and connection settings ------------------------------------------------------------------------

def test_tables_and_named_indices_exist(sqlite_engine: Engine) -> None:
    engine = sqlite_engine
    con = raw_connect(engine)
    try:
        objects = dict(con.execute("SELECT name, sql FROM sqlite_master WHERE type IN ('table', 'index')"))
        state = con.execute("SELECT id, revision, last_sync_id FROM registry_state").fetchall()
    finally:
        con.close()
    assert set(TABLES) <= set(objects)
    for name in ("ix_tokens_status_last_seen", "ix_tokens_new", "ix_tokens_active", "ix_token_history_symbol_time"):
        assert name in objects, name
    assert "WHERE is_new = 1" in objects["ix_tokens_new"]
    assert "WHERE status = 'active'" in objects["ix_tokens_active"]
    assert "last_seen DESC" in objects["ix_tokens_status_last_seen"]
    assert "WHERE" not in objects["ix_token_history_symbol_time"]
    assert "uq_token_history_event" in objects["token_history"]
    assert state == [(1, 0, None)]


def test_upgrading_twice_is_a_no_op(engine: Engine) -> None:
    before = dump(engine)
    assert migrate.upgrade(engine) == (migrate.head(), migrate.head())
    assert dump(engine) == before
    ((state_id, revision, last_sync, fetched, cursor, identity, pending),) = before["registry_state"]
    assert (state_id, revision, last_sync, fetched, cursor, pending) == (1, 0, None, None, 0, None)
    assert re.fullmatch(r"[0-9a-f]{16}", identity)


@pytest.mark.parametrize("writer", [True, False])
def test_pragmas_are_in_force_on_every_connection(tmp_path: Any, writer: bool) -> None:
    eng = make_engine(f"sqlite:///{tmp_path}/p.db", writer=writer)
    migrate.upgrade(eng)
    try:
        with eng.connect() as conn:
            def pragma(name: str) -> Any:
                return conn.exec_driver_sql(f"PRAGMA {name}").scalar()

            assert pragma("journal_mode") == "wal"
            assert pragma("busy_timeout") == BUSY_TIMEOUT_MS
            assert pragma("cache_size") == -CACHE_KIB < 0
            assert pragma("mmap_size") == MMAP_BYTES
            assert pragma("synchronous") == 1  # NORMAL
            assert pragma("foreign_keys") == 1
            assert pragma("temp_store") == 2  # MEMORY
    finally:
        eng.dispose()


def test_writer_transactions_take_the_write_lock_up_front(sqlite_engine: Engine) -> None:
    engine = sqlite_engine
    with engine.begin() as conn:
        conn.exec_driver_sql("SELECT 1")  # nothing written yet: only BEGIN IMMEDIATE can hold the lock
        other = raw_connect(engine, timeout_s=0)
        try:
            with pytest.raises(sqlite3.OperationalError, match="locked"):
                other.execute("BEGIN IMMEDIATE")
        finally:
            other.close()


# ---- applying plans ----------------------------------------------------------------------------------------

def test_baseline_plan_is_written_whole(engine: Engine) -> None:
    contracts = snapshot(30)
    plan = plan_on(engine, contracts, "sync-0", NOW)
    result = apply(engine, plan)
    assert result == WriteResult(revision=1, duplicate=False, upserted=30, batches=1)

    tables = dump(engine)
    assert len(tables["tokens"]) == 30
    assert tables["token_history"] == []
    assert [row[:5] for row in tables["registry_state"]] == [(1, 1, "sync-0", NOW, 0)]
    assert len(tables["sync_runs"]) == 1
    with engine.connect() as conn:
        run = dict(conn.exec_driver_sql("SELECT * FROM sync_runs").one()._mapping)
        statuses = conn.exec_driver_sql("SELECT DISTINCT status FROM tokens").all()
    assert (run["sync_id"], run["status"], run["revision"]) == ("sync-0", "baseline", 1)
    assert (run["fetched"], run["active"], run["listed"], run["invalid"]) == (30, 30, 0, 0)
    assert run["api_ms"] == 12.5
    assert [tuple(s) for s in statuses] == [(ACTIVE,)]
    # What was written reads back exactly as the plan said the registry would be.
    expected = plan.apply_to(RegistryState(RegistryHead(0), {}))
    loaded = load_registry(engine)
    assert loaded.revision == expected.revision == 1
    assert loaded.rows == expected.rows


def test_follow_up_sync_writes_events_and_delistings(engine: Engine) -> None:
    contracts, _ = baseline(engine)
    later = NOW + MINUTE_MS
    plan = plan_on(engine, changed_snapshot(contracts, listed=4, delisted=2, now=later), "sync-1", later)
    assert (plan.counts["listed"], plan.counts["delisted"]) == (4, 2)
    result = apply(engine, plan)
    assert (result.revision, result.duplicate, result.upserted) == (2, False, 4)

    registry = load_registry(engine)
    gone = list(contracts)[:2]
    for symbol in gone:
        row = registry.rows[symbol]
        assert (row.status, row.delisted_at, row.last_seen) == (DELISTED, later, NOW)
    assert sum(1 for r in registry.rows.values() if r.status == ACTIVE) == plan.counts["active"] == 32
    assert all(r.last_seen == later for r in registry.rows.values() if r.status == ACTIVE)
    history = databases.query(url_of(engine), "SELECT symbol, event_type, event_time, sync_id FROM token_history")
    assert sorted((s, t) for s, t, _, _ in history) == sorted(
        [(f"NEW{i}USDTM", "listed") for i in range(4)] + [(s, "delisted") for s in gone]
    )
    assert {(when, sync) for _, _, when, sync in history} == {(later, "sync-1")}


def test_upserts_are_chunked_by_batch_size(engine: Engine) -> None:
    plan = plan_on(engine, snapshot(30), "sync-0", NOW)
    with executemany_log(engine) as seen:
        result = apply(engine, plan, batch_size=7)
    assert result.batches == math.ceil(30 / 7) == 5
    assert seen == [("INSERT INTO tokens", n) for n in (7, 7, 7, 7, 2)]
    assert count(engine, "tokens") == 30


def test_delistings_and_history_are_chunked_too(engine: Engine) -> None:
    contracts, _ = baseline(engine)
    later = NOW + MINUTE_MS
    plan = plan_on(engine, changed_snapshot(contracts, listed=10, delisted=3, now=later), "sync-1", later)
    with executemany_log(engine) as seen:
        result = apply(engine, plan, batch_size=7)
    assert seen == [
        ("INSERT INTO tokens", 7), ("INSERT INTO tokens", 3), ("UPDATE tokens SET", 3),
        ("INSERT INTO token_history", 7), ("INSERT INTO token_history", 6),
    ]
    assert result.batches == 5
    assert count(engine, "token_history") == 13


def test_applying_the_same_plan_twice_changes_nothing(engine: Engine) -> None:
    contracts, _ = baseline(engine)
    later = NOW + MINUTE_MS
    plan = plan_on(engine, changed_snapshot(contracts, listed=3, delisted=1, now=later), "sync-1", later)
    first = apply(engine, plan)
    after_first = dump(engine)
    second = apply(engine, plan)
    assert first == WriteResult(revision=2, duplicate=False, upserted=3, batches=3)
    assert second == WriteResult(revision=2, duplicate=True, upserted=0, batches=0)
    assert dump(engine) == after_first
    assert len(after_first["token_history"]) == 4


def test_stale_base_revision_is_refused_and_changes_nothing(engine: Engine) -> None:
    contracts, _ = baseline(engine)
    stale = build_plan(
        "sync-late", contracts, RegistryState(RegistryHead(0), {}), now_ms=NOW + MINUTE_MS, window_ms=WINDOW_MS,
        fetched=30, invalid=0,
    )
    before = dump(engine)
    with pytest.raises(StaleSnapshotError, match="revision 0"):
        apply(engine, stale)
    assert dump(engine) == before


# ---- failures in the middle of a write ---------------------------------------------------------------------

def busy_plan(engine: Engine) -> Plan:
    """A follow-up plan with 17 upserts, 2 delistings and 17 events: many statements at batch size 5."""
    contracts, _ = baseline(engine)
    later = NOW + MINUTE_MS
    return plan_on(engine, changed_snapshot(contracts, listed=15, delisted=2, now=later), "sync-1", later)


def test_failure_after_some_chunks_rolls_everything_back(engine: Engine) -> None:
    plan = busy_plan(engine)
    before = dump(engine)
    calls: list[str] = []

    def fail_on_sixth(conn: Any, cursor: Any, statement: str, params: Any, context: Any, many: bool) -> None:
        if many:
            calls.append(" ".join(statement.split()[:3]))
            if len(calls) == 6:  # the backend's own driver error, as a failing disk would raise it
                raise engine.dialect.loaded_dbapi.OperationalError("disk I/O error")

    event.listen(engine, "before_cursor_execute", fail_on_sixth)
    try:
        with pytest.raises(WriteError) as info:
            apply(engine, plan, batch_size=5)
    finally:
        event.remove(engine, "before_cursor_execute", fail_on_sixth)
    # Upserts, the delisting and a first history chunk all ran before the failing second history chunk.
    assert calls == [
        "INSERT INTO tokens", "INSERT INTO tokens", "INSERT INTO tokens", "UPDATE tokens SET",
        "INSERT INTO token_history", "INSERT INTO token_history",
    ]
    message = str(info.value)
    assert "disk I/O error" in message and "rolled back" in message and "\n" not in message
    assert dump(engine) == before
    # The same plan still applies cleanly afterwards: the failed attempt left no trace.
    assert apply(engine, plan, batch_size=5).revision == 2


def plan_with_a_bad_last_event(engine: Engine) -> Plan:
    plan = busy_plan(engine)
    plan.events.append(Event("XBTUSDTM", NULL, {"note": "event_type is NOT NULL"}))
    return plan


def test_constraint_violation_in_a_late_history_row_rolls_everything_back(engine: Engine) -> None:
    plan = plan_with_a_bad_last_event(engine)
    before = dump(engine)
    with executemany_log(engine) as seen, pytest.raises((WriteError, IntegrityError)):
        apply(engine, plan, batch_size=5)
    assert ("INSERT INTO token_history", 5) in seen  # earlier history chunks were written first
    assert dump(engine) == before


def test_constraint_violation_is_reported_as_write_error(engine: Engine) -> None:
    plan = plan_with_a_bad_last_event(engine)
    with pytest.raises(WriteError, match="rolled back"):
        apply(engine, plan, batch_size=5)


# ---- a database locked by another connection ---------------------------------------------------------------

def test_short_lock_is_absorbed_by_the_busy_timeout(sqlite_engine: Engine, caplog: pytest.LogCaptureFixture,
                                                    ) -> None:
    engine = sqlite_engine
    plan = plan_on(engine, snapshot(10), "sync-0", NOW)
    caplog.set_level(logging.WARNING, logger="tokenwatch.db.locking")
    with write_lock_held(engine, release_after_s=0.5):
        result = apply(engine, plan)
    assert result.revision == 1
    assert lock_retries_logged(caplog) == 0
    assert count(engine, "tokens") == 10


def test_lock_longer_than_the_busy_timeout_succeeds_after_retrying(
    tmp_path: Any, database_url: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
) -> None:
    short_busy_timeout(monkeypatch, 100)
    eng = make(tmp_path, database_url)
    try:
        plan = plan_on(eng, snapshot(10), "sync-0", NOW)
        caplog.set_level(logging.WARNING, logger="tokenwatch.db.locking")
        with write_lock_held(eng, release_after_s=1.0):
            result = apply(eng, plan)
        assert result == WriteResult(revision=1, duplicate=False, upserted=10, batches=1)
        assert lock_retries_logged(caplog) >= 1
        assert count(eng, "tokens") == 10
    finally:
        eng.dispose()


def test_lock_held_beyond_the_retry_bound_fails_cleanly(
    tmp_path: Any, database_url: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
) -> None:
    short_busy_timeout(monkeypatch, 100)
    monkeypatch.setattr(tokenwatch.db.locking, "LOCK_BACKOFF_S", 0.01)
    eng = make(tmp_path, database_url)
    try:
        contracts, _ = baseline(eng)
        later = NOW + MINUTE_MS
        plan = plan_on(eng, changed_snapshot(contracts, listed=2, delisted=1, now=later), "sync-1", later)
        before = dump(eng)
        caplog.set_level(logging.WARNING, logger="tokenwatch.db.locking")
        started = time.perf_counter()
        with write_lock_held(eng, release_after_s=10.0) as release:
            with pytest.raises(WriteError, match="locked") as info:
                apply(eng, plan)
            elapsed = time.perf_counter() - started
            release.set()
        assert "\n" not in str(info.value)
        assert lock_retries_logged(caplog) == tokenwatch.db.locking.LOCK_RETRIES
        assert elapsed < 5.0
        assert dump(eng) == before
    finally:
        eng.dispose()


def test_lock_retries_follow_the_module_setting(
    tmp_path: Any, database_url: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
) -> None:
    short_busy_timeout(monkeypatch, 50)
    monkeypatch.setattr(tokenwatch.db.locking, "LOCK_RETRIES", 1)
    monkeypatch.setattr(tokenwatch.db.locking, "LOCK_BACKOFF_S", 0.01)
    eng = make(tmp_path, database_url)
    try:
        plan = plan_on(eng, snapshot(5), "sync-0", NOW)
        caplog.set_level(logging.WARNING, logger="tokenwatch.db.locking")
        with write_lock_held(eng, release_after_s=10.0) as release:
            with pytest.raises(WriteError, match="locked"):
                apply(eng, plan)
            release.set()
        assert lock_retries_logged(caplog) == 1
    finally:
        eng.dispose()


def test_last_seen_is_derived_for_present_tokens_and_frozen_for_missing_ones(engine: Engine) -> None:
    contracts, _ = baseline(engine)
    later = NOW + MINUTE_MS
    symbols = list(contracts)
    kept = {s: c for s, c in contracts.items() if s != symbols[0]}
    registry = load_registry(engine)
    plan = build_plan("sync-1", kept, registry, now_ms=later, window_ms=WINDOW_MS, fetched=len(kept), invalid=0,
                      unconfirmed=[symbols[0]])
    assert plan.pending == [symbols[0]]
    apply(engine, plan)
    with engine.connect() as conn:
        stored = dict(conn.exec_driver_sql("SELECT symbol, last_seen FROM tokens").all())
        live = dict(conn.exec_driver_sql("SELECT symbol, last_seen FROM tokens_live").all())
    assert stored[symbols[1]] == NOW  # not rewritten by a sync in which it did not change
    assert live[symbols[1]] == later  # but seen by it, as the view and load_registry say
    assert load_registry(engine).rows[symbols[1]].last_seen == later
    assert live[symbols[0]] == stored[symbols[0]] == NOW  # missing: frozen at its last sighting


# ---- two writers (several db workers, on PostgreSQL on several hosts) -----------------------------------

def test_two_writes_built_on_one_base_never_interleave(engine: Engine) -> None:
    contracts, _ = baseline(engine)
    later = NOW + MINUTE_MS
    plans = [plan_on(engine, {**contracts, **parse_contracts([new_contract(f"ONLY{n}", later)]).contracts},
                     f"sync-{n}", later) for n in (1, 2)]
    assert [p.base_revision for p in plans] == [1, 1]
    start, outcomes = threading.Barrier(2), {}

    def write(plan: Plan) -> None:
        start.wait()
        try:
            outcomes[plan.sync_id] = apply(engine, plan).revision
        except StaleSnapshotError:
            outcomes[plan.sync_id] = "stale"

    threads = [threading.Thread(target=write, args=(plan,)) for plan in plans]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert sorted(outcomes.values(), key=str) == [2, "stale"]
    (winner,) = (sync_id for sync_id, outcome in outcomes.items() if outcome == 2)
    assert databases.query(url_of(engine), "SELECT symbol, sync_id FROM token_history") == [
        (f"ONLY{winner[-1]}USDTM", winner)]
    assert databases.query(url_of(engine), "SELECT revision, last_sync_id FROM registry_state") == [(2, winner)]


def test_a_write_waits_for_the_transaction_holding_the_registry(engine: Engine) -> None:
    """SQLite: another connection's BEGIN IMMEDIATE. PostgreSQL: another transaction (another host's db worker)
    holding the registry row FOR UPDATE, as every write transaction does first."""
    plan = plan_on(engine, snapshot(10), "sync-0", NOW)
    held, release = threading.Event(), threading.Event()

    def hold() -> None:
        if databases.is_sqlite(url_of(engine)):
            con = raw_connect(engine)
            con.execute("BEGIN IMMEDIATE")
            held.set()
            release.wait(10)
            con.execute("COMMIT")
            con.close()
            return
        with databases.connect(url_of(engine)) as pg:
            pg.execute("SELECT revision FROM registry_state WHERE id = 1 FOR UPDATE")
            held.set()
            release.wait(10)

    holder = threading.Thread(target=hold)
    holder.start()
    assert held.wait(5)
    results: list[WriteResult] = []
    writer = threading.Thread(target=lambda: results.append(apply(engine, plan)))
    writer.start()
    writer.join(0.5)
    assert writer.is_alive() and results == []  # waiting for the lock, nothing written
    assert count(engine, "tokens") == 0
    release.set()
    holder.join(10)
    writer.join(10)
    assert results == [WriteResult(revision=1, duplicate=False, upserted=10, batches=1)]


def test_on_postgresql_a_writer_silent_inside_its_transaction_frees_the_registry_row(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A node cut off mid-write must not hold the registry row until the server's TCP timeout (hours)."""
    monkeypatch.setattr(tokenwatch.db.engine, "PG_IDLE_IN_TRANSACTION_MS", 1000)
    with databases.postgres_database() as url:
        silent, other = make(None, url), make_engine(url, writer=True)
        try:
            held = silent.connect()
            held.begin()
            held.execute(text("SELECT id FROM registry_state FOR UPDATE"))  # what a write takes first
            time.sleep(2.5)  # its client says nothing more, as a node whose cable was pulled
            with other.begin() as connection:  # within lock_timeout, or it raises
                assert connection.execute(text("SELECT id FROM registry_state FOR UPDATE")).all()
            with pytest.raises(DBAPIError, match="idle-in-transaction timeout"):
                held.execute(text("SELECT 1"))
        finally:
            silent.dispose()
            other.dispose()
