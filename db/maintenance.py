"""Database upkeep and checks: ANALYZE, VACUUM, pruning sync_runs, integrity, sizes, and query plans.

Plain functions over an Engine. The writes (optimize, vacuum, prune) run as tasks on the ``db`` queue, so the
single writer does them (tasks/maintenance.py); the reads serve ``tokenwatch db check``.

Query plans are checked on the statements the code really runs: a probe calls a real read function while a
``before_cursor_execute`` listener on every Engine records what it sends, then each recorded SELECT is run
again under ``EXPLAIN QUERY PLAN`` with the same parameters (bound parameters can change SQLite's choice of a
partial index, so literals would not prove the same thing). On PostgreSQL the same statements run under
``EXPLAIN`` with sequential scans disabled for that transaction: a small table would be read whole whatever its
indexes, so the check asks whether an index *can* serve the query, and a Seq Scan that remains means none can.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Delete, Engine, delete, event, func, select
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.elements import ClauseElement

from tokenwatch.db.locking import with_lock_retry
from tokenwatch.db.queries import history, list_tokens, load_registry, recent_syncs
from tokenwatch.db.schema import sync_runs, token_history, tokens

PRUNE_STEP_MS = 86_400_000  # one day of sync_runs per delete transaction: a backlog never holds the lock long
# A plan line that reads a whole table, not through an index: "SCAN tokens" (SQLite < 3.36: "SCAN TABLE tokens");
# PostgreSQL: "Seq Scan on tokens", perhaps under "->  " and with an alias.
_FULL_SCAN = re.compile(r"^(?:SCAN (?:TABLE )?(\w+)(?: AS \w+)?|(?:->\s+)?(?:Parallel )?Seq Scan on (\w+)(?: \w+)?)$")
# Tables that grow with the registry; registry_state is one row and may be scanned.
WATCHED_TABLES = frozenset({"tokens", "token_history", "sync_runs"})


def _ms_since(start: float) -> float:
    return round((time.perf_counter() - start) * 1000.0, 1)


# ---- upkeep (writes: run them on the db queue) -------------------------------------------------------------

def _sqlite(engine: Engine) -> bool:
    return engine.dialect.name == "sqlite"


def optimize(engine: Engine) -> dict[str, Any]:
    """ANALYZE (then, on SQLite, PRAGMA optimize): fresh statistics for the query planner.

    On SQLite before 3.46, PRAGMA optimize in a new connection analyses nothing, hence the explicit ANALYZE.
    """
    start = time.perf_counter()

    def run() -> None:
        with engine.begin() as conn:
            conn.exec_driver_sql("ANALYZE")
            if _sqlite(engine):
                conn.exec_driver_sql("PRAGMA optimize")

    with_lock_retry(run)
    return {"analyzed": True, "ms": _ms_since(start)}


def vacuum(engine: Engine, path: str | None) -> dict[str, Any]:
    """SQLite (the file at path): VACUUM when there are free pages to give back, then truncate the WAL.
    PostgreSQL: a plain VACUUM of the registry's tables (dead rows made reusable; the server's WAL is its own).
    Sizes before and after."""
    start = time.perf_counter()
    if path is None:
        before = file_sizes(engine, None)
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:  # VACUUM: no transaction
            conn.exec_driver_sql("VACUUM " + ", ".join(t.name for t in (tokens, token_history, sync_runs)))
        return {"vacuumed": True, "free_pages_before": None, "before": before, "after": file_sizes(engine, None),
                "ms": _ms_since(start)}
    before = file_sizes(engine, path)
    free = page_stats(engine)["freelist_count"]
    raw = engine.raw_connection()
    try:
        # Outside any transaction: the engine's connections run in autocommit (isolation_level None).
        cursor = raw.cursor()
        if free:
            cursor.execute("VACUUM")
        cursor.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        cursor.close()
    finally:
        raw.close()
    return {"vacuumed": bool(free), "free_pages_before": free, "before": before, "after": file_sizes(engine, path),
            "ms": _ms_since(start)}


def prune_statement(before_ms: int) -> Delete:
    """Delete the sync_runs rows that finished before before_ms: a range of ix_sync_runs_finished.

    A plain range, not "sync_id IN (SELECT ... LIMIT n)": with statistics of a small table SQLite answers
    that form with a full scan.
    """
    return delete(sync_runs).where(sync_runs.c.finished_at < before_ms)


def prune_sync_runs(engine: Engine, older_than_ms: int, step_ms: int = PRUNE_STEP_MS) -> int:
    """Delete every sync_runs row that finished before older_than_ms, step_ms of them per transaction."""
    total = 0
    while True:
        with engine.connect() as conn:
            oldest = conn.execute(select(func.min(sync_runs.c.finished_at))).scalar()
        if oldest is None or int(oldest) >= older_than_ms:
            return total
        bound = min(int(oldest) + step_ms, older_than_ms)

        def run(bound: int = bound) -> int:
            with engine.begin() as conn:
                return int(conn.execute(prune_statement(bound)).rowcount or 0)

        total += with_lock_retry(run)


# ---- checks (reads) --------------------------------------------------------------------------------------

def integrity(engine: Engine) -> list[str]:
    """PRAGMA integrity_check: ["ok"] for a sound file, else SQLite's list of problems. PostgreSQL checks its
    own pages as it reads them: ["ok"] when the server answers."""
    with engine.connect() as conn:
        if not _sqlite(engine):
            conn.exec_driver_sql("SELECT 1").scalar_one()
            return ["ok"]
        return [str(row[0]) for row in conn.exec_driver_sql("PRAGMA integrity_check")]


def file_sizes(engine: Engine, path: str | None) -> dict[str, int]:
    """Bytes of the SQLite file at path and its -wal and -shm companions (0 when absent); on PostgreSQL (path
    None) the database's size, as pg_database_size gives it."""
    if path is None:
        with engine.connect() as conn:
            size = conn.exec_driver_sql("SELECT pg_database_size(current_database())").scalar_one()
        return {"db": int(size), "wal": 0, "shm": 0}
    sizes: dict[str, int] = {}
    for name, suffix in (("db", ""), ("wal", "-wal"), ("shm", "-shm")):
        try:
            sizes[name] = os.path.getsize(path + suffix)
        except OSError:
            sizes[name] = 0
    return sizes


def page_stats(engine: Engine) -> dict[str, int]:
    """page_size, page_count and freelist_count (free pages a VACUUM would give back; PostgreSQL: 0, its VACUUM
    makes dead rows reusable in place)."""
    with engine.connect() as conn:
        if not _sqlite(engine):
            block = int(conn.exec_driver_sql("SELECT current_setting('block_size')").scalar_one())
            size = int(conn.exec_driver_sql("SELECT pg_database_size(current_database())").scalar_one())
            return {"page_size": block, "page_count": size // block, "freelist_count": 0}
        return {name: int(conn.exec_driver_sql(f"PRAGMA {name}").scalar_one())
                for name in ("page_size", "page_count", "freelist_count")}


def row_counts(engine: Engine) -> dict[str, int]:
    """Rows per table of the registry."""
    with engine.connect() as conn:
        return {table.name: int(conn.execute(select(func.count()).select_from(table)).scalar_one())
                for table in (tokens, token_history, sync_runs)}


@dataclass(frozen=True, slots=True)
class ProbeContext:
    """What probes need to run their query: a symbol that exists (if any), the clock, the new-listing window."""

    database_url: str
    symbol: str
    now_ms: int
    window_ms: int


@dataclass(frozen=True, slots=True)
class Probe:
    """A query the code runs: run calls the real function, or statement gives a statement to explain unrun.

    full_read marks a deliberate read of a whole table (the diff's load, `tokens --status all`).
    """

    name: str
    run: Callable[[Engine, ProbeContext], object] | None = None
    statement: Callable[[ProbeContext], ClauseElement] | None = None
    full_read: bool = False


@dataclass(slots=True)
class QueryPlan:
    """EXPLAIN QUERY PLAN of one statement a probe ran."""

    probe: str
    sql: str
    plan: list[str]
    full_read: bool
    full_scans: list[str] = field(default_factory=list)

    @property
    def verdict(self) -> str:
        """index; small table (a one-row table read whole); full read (deliberate); FULL SCAN."""
        if self.full_read:
            return "full read (deliberate)"
        if self.full_scans:
            return "FULL SCAN"
        if any(_FULL_SCAN.match(line.strip()) for line in self.plan):
            return "small table"
        return "index"

    def to_json(self) -> dict[str, Any]:
        return {"probe": self.probe, "verdict": self.verdict, "plan": self.plan, "full_scans": self.full_scans,
                "sql": self.sql}


def full_scans(plan: Iterable[str]) -> list[str]:
    """Watched tables a plan reads whole (a SCAN without USING INDEX / COVERING INDEX)."""
    scanned = []
    for line in plan:
        match = _FULL_SCAN.match(line.strip())
        table = match and (match.group(1) or match.group(2))
        if table and table in WATCHED_TABLES:
            scanned.append(table)
    return scanned


def _capture(probe: Probe, engine: Engine, context: ProbeContext) -> list[tuple[str, Any]]:
    if probe.statement is not None:
        compiled = probe.statement(context).compile(dialect=engine.dialect,
                                                    compile_kwargs={"render_postcompile": True})
        assert isinstance(compiled, SQLCompiler)
        params = compiled.construct_params() or {}
        if compiled.positiontup is None:  # a named paramstyle (psycopg): the parameters as they are
            return [(str(compiled), params)]
        return [(str(compiled), tuple(params[name] for name in compiled.positiontup))]
    assert probe.run is not None, f"probe {probe.name} has neither run nor statement"
    seen: list[tuple[str, Any]] = []

    def record(_conn: Any, _cursor: Any, statement: str, parameters: Any, _context: Any, _many: bool) -> None:
        if statement.lstrip()[:6].upper() in ("SELECT", "WITH "):  # reads only: probes never write
            seen.append((statement, parameters))

    # On the Engine class: probes may use engines of their own (the read API opens the file read-only).
    event.listen(Engine, "before_cursor_execute", record)
    try:
        probe.run(engine, context)
    finally:
        event.remove(Engine, "before_cursor_execute", record)
    return seen


def explain(engine: Engine, probes: Iterable[Probe], context: ProbeContext) -> list[QueryPlan]:
    """The query plan of every statement each probe runs."""
    plans: list[QueryPlan] = []
    sqlite = _sqlite(engine)
    for probe in probes:
        for sql, params in _capture(probe, engine, context):
            with engine.connect() as conn:
                if sqlite:
                    rows = conn.exec_driver_sql("EXPLAIN QUERY PLAN " + sql, params or ()).all()
                else:
                    conn.exec_driver_sql("SET LOCAL enable_seqscan = off")  # see the module docstring
                    rows = conn.exec_driver_sql("EXPLAIN (COSTS OFF) " + sql, params or {}).all()
            lines = [str(row[-1]) for row in rows]
            plans.append(QueryPlan(probe.name, " ".join(sql.split()), lines, probe.full_read, full_scans(lines)))
    return plans


REGISTRY_PROBES: tuple[Probe, ...] = (
    Probe("tokens --status active", lambda e, c: list_tokens(e, "active", now_ms=c.now_ms, window_ms=c.window_ms)),
    Probe("tokens --status delisted",
          lambda e, c: list_tokens(e, "delisted", now_ms=c.now_ms, window_ms=c.window_ms)),
    Probe("tokens --status new", lambda e, c: list_tokens(e, "new", now_ms=c.now_ms, window_ms=c.window_ms)),
    Probe("tokens --status all", lambda e, c: list_tokens(e, "all", now_ms=c.now_ms, window_ms=c.window_ms),
          full_read=True),
    Probe("history SYMBOL", lambda e, c: history(e, c.symbol, 50)),
    Probe("history (recent)", lambda e, c: history(e, None, 50)),
    Probe("recent sync_runs", lambda e, c: recent_syncs(e, 10)),
    Probe("diff: load the registry", lambda e, c: load_registry(e), full_read=True),
    Probe("prune sync_runs", statement=lambda c: prune_statement(c.now_ms)),
)

