"""`tokenwatch db check`: integrity, sizes, row counts, and the query plan of every query the CLI, the read API,
status and metrics run (db/maintenance.py explains them)."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry
from sqlalchemy import Connection, Engine, inspect, select
from sqlalchemy.exc import SQLAlchemyError

from tokenwatch.clock import HOUR_MS, now_ms
from tokenwatch.db import maintenance
from tokenwatch.db.engine import is_sqlite, make_engine, sqlite_path
from tokenwatch.db.schema import tokens
from tokenwatch.health import events_since, first_run_ms, last_good, last_phase_ms, runs_since, token_counts
from tokenwatch.reader import Registry
from tokenwatch.settings import Settings, redact_url

T = TypeVar("T")


def _with(engine: Engine, read: Callable[[Connection], T]) -> T:
    with engine.connect() as conn:
        return read(conn)


STATUS_PROBES: tuple[maintenance.Probe, ...] = (
    maintenance.Probe("status: tokens by status", lambda e, c: _with(e, token_counts)),
    maintenance.Probe("status: last good sync", lambda e, c: _with(e, last_good)),
    maintenance.Probe("status: syncs of the last hour",
                      lambda e, c: _with(e, lambda conn: runs_since(conn, c.now_ms - HOUR_MS))),
    maintenance.Probe("status: first sync", lambda e, c: _with(e, first_run_ms)),
    maintenance.Probe("status: last timing of each phase", lambda e, c: _with(e, last_phase_ms)),
    maintenance.Probe("metrics: new history events by type", lambda e, c: _with(e, lambda conn: events_since(conn, 0))),
)


@contextlib.contextmanager
def _reader(context: maintenance.ProbeContext) -> Iterator[Registry]:
    # Redis pointed nowhere: every read goes down to the database layer, whose queries are the ones to check.
    quiet = logging.getLogger("tokenwatch.reader")
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    nowhere = redis.Redis(unix_socket_path="/nonexistent/tokenwatch.sock", retry=Retry(NoBackoff(), 0))
    registry = Registry(redis_client=nowhere, database_url=context.database_url,
                        new_listing_window_h=context.window_ms / HOUR_MS)
    try:
        yield registry
    finally:
        registry.close()
        nowhere.close()
        quiet.setLevel(level)


def _read_api(call: Callable[[Registry, maintenance.ProbeContext], object]) -> Callable[[Engine, Any], object]:
    def run(_engine: Engine, context: maintenance.ProbeContext) -> object:
        with _reader(context) as registry:
            return call(registry, context)
    return run


READ_API_PROBES: tuple[maintenance.Probe, ...] = (
    maintenance.Probe("read API: get SYMBOL (database layer)", _read_api(lambda r, c: r.get(c.symbol))),
    maintenance.Probe("read API: active (database layer)", _read_api(lambda r, c: r.active())),
    maintenance.Probe("read API: new_listings", _read_api(lambda r, c: r.new_listings())),
    maintenance.Probe("read API: recent_events SYMBOL", _read_api(lambda r, c: r.recent_events(symbol=c.symbol))),
    maintenance.Probe("read API: recent_events", _read_api(lambda r, c: r.recent_events())),
)


PROBES = (*maintenance.REGISTRY_PROBES, *READ_API_PROBES, *STATUS_PROBES)


def db_check(settings: Settings) -> dict[str, Any]:
    """Integrity, sizes, pages, row counts, and the plan of every query the CLI, read API and status run."""
    path = sqlite_path(settings.database_url)
    if is_sqlite(settings.database_url) and (path is None or not os.path.exists(path)):
        raise FileNotFoundError(f"no registry database at {path}")
    engine = make_engine(settings.database_url)
    try:
        with engine.connect() as conn:
            if not inspect(conn).has_table(tokens.name):
                raise FileNotFoundError(f"no registry at {redact_url(settings.database_url)}")
            symbol = conn.execute(select(tokens.c.symbol).limit(1)).scalar() or "XBTUSDTM"
        context = maintenance.ProbeContext(settings.database_url, str(symbol), now_ms(),
                                           int(settings.new_listing_window_h * HOUR_MS))
        plans = maintenance.explain(engine, PROBES, context)
        report: dict[str, Any] = {
            "database": os.path.abspath(path) if path else redact_url(settings.database_url),
            "backend": engine.dialect.name, "integrity": maintenance.integrity(engine),
            "files": maintenance.file_sizes(engine, path), "pages": maintenance.page_stats(engine),
            "rows": maintenance.row_counts(engine), "queries": [plan.to_json() for plan in plans],
        }
    finally:
        engine.dispose()
    report["full_scans"] = sorted({p.probe for p in plans if p.verdict == "FULL SCAN"})
    report["ok"] = report["integrity"] == ["ok"] and not report["full_scans"]
    return report


def render_db_check(report: dict[str, Any]) -> str:
    """The plain-text db check report."""
    files, pages, rows = report["files"], report["pages"], report["rows"]
    lines = [
        f"database: {report['database']}",
        f"integrity: {'; '.join(report['integrity'])}",
        f"files: db {files['db']:,} bytes, wal {files['wal']:,} bytes, shm {files['shm']:,} bytes"
        if report.get("backend", "sqlite") == "sqlite" else f"size: {files['db']:,} bytes",
        f"pages: {pages['page_count']:,} of {pages['page_size']} bytes, {pages['freelist_count']:,} free",
        "rows: " + ", ".join(f"{table} {count:,}" for table, count in rows.items()),
        "", "query plans:",
    ]
    for query in report["queries"]:
        lines.append(f"  [{query['verdict']}] {query['probe']}: {' | '.join(query['plan'])}")
    lines.append("")
    if report["full_scans"]:
        lines.append("FULL SCAN in: " + ", ".join(report["full_scans"]))
    lines.append("ok" if report["ok"] else "problems found")
    return "\n".join(lines)


def run_db_check(settings: Settings, *, as_json: bool) -> int:
    """`tokenwatch db check`: 0 when the file is sound and every query uses an index, else 1."""
    try:
        report = db_check(settings)
    except (FileNotFoundError, SQLAlchemyError) as exc:
        print(f"tokenwatch: {str(getattr(exc, 'orig', None) or exc).splitlines()[0]}", file=sys.stderr)
        return 1
    print(json.dumps(report, default=str) if as_json else render_db_check(report))
    return 0 if report["ok"] else 1
