"""Database upkeep through a real worker on the db queue, and `tokenwatch db check` on a real registry."""

from __future__ import annotations

import json
import re
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests import databases
from tests.conftest import Stack
from tokenwatch.settings import redact_url
from tokenwatch.simulator import Simulator

DAY_MS = 86_400_000
# Every query the CLI, the read API, status and the metrics run (the deliberate full reads included).
PROBES = {
    "tokens --status active", "tokens --status delisted", "tokens --status new", "tokens --status all",
    "history SYMBOL", "history (recent)", "recent sync_runs", "diff: load the registry", "prune sync_runs",
    "read API: get SYMBOL (database layer)", "read API: active (database layer)", "read API: new_listings",
    "read API: recent_events SYMBOL", "read API: recent_events",
    "status: tokens by status", "status: last good sync", "status: syncs of the last hour", "status: first sync",
    "status: last timing of each phase", "metrics: new history events by type",
}
WHOLE_TABLE = re.compile(r"^(SCAN (TABLE )?|(->\s+)?Seq Scan on )(tokens|token_history)$")  # SQLite, PostgreSQL


@pytest.fixture
def sim() -> Iterator[Simulator]:
    with Simulator(port=0, contracts=150, seed=5) as simulator:
        yield simulator


def fill(stack: Stack, sim: Simulator) -> None:
    """Three inline syncs with listings and a delisting: every table has rows."""
    stack.env["TOKENWATCH_KUCOIN_URL"] = sim.url
    assert stack.sync("--inline")["status"] == "baseline"
    listed = sim.list_new(4)
    assert stack.sync("--inline")["counts"]["listed"] == 4
    sim.delist(listed[:1])
    assert stack.sync("--inline")["counts"]["delisted"] == 1


def db_check(stack: Stack) -> dict[str, Any]:
    result = stack.tokenwatch("db", "check", "--json")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    report: dict[str, Any] = json.loads(result.stdout)
    return report


def assert_every_query_uses_an_index(report: dict[str, Any]) -> None:
    assert {q["probe"] for q in report["queries"]} == PROBES
    deliberate = {"diff: load the registry", "tokens --status all"}
    for query in report["queries"]:
        whole = [line for line in query["plan"] if WHOLE_TABLE.match(line)]
        if query["probe"] in deliberate:
            assert query["verdict"] == "full read (deliberate)"
        else:
            assert whole == [], query
            assert query["verdict"] in ("index", "small table"), query
    diff_load = [q["plan"] for q in report["queries"] if q["probe"] == "diff: load the registry"]
    # Listed as what it is: the one full read per sync.
    assert ["SCAN tokens"] in diff_load or ["Seq Scan on tokens"] in diff_load
    assert report["full_scans"] == []


@pytest.mark.integration
@pytest.mark.usefixtures("database_url")  # on SQLite and PostgreSQL
def test_db_check_reports_integrity_sizes_rows_and_the_plan_of_every_query(stack: Stack, sim: Simulator) -> None:
    fill(stack, sim)
    report = db_check(stack)
    assert report["ok"] is True
    assert report["integrity"] == ["ok"]
    if stack.sqlite:
        assert report["database"] == str(stack.db_path)
        assert report["files"]["db"] == stack.db_path.stat().st_size > 0
        wal = stack.db_path.with_name("tokens.db-wal")
        assert report["files"]["wal"] == (wal.stat().st_size if wal.exists() else 0)
        assert report["pages"]["page_size"] * report["pages"]["page_count"] == report["files"]["db"]
    else:
        assert report["database"] == redact_url(stack.database_url)
        assert report["files"]["db"] == stack.query("SELECT pg_database_size(current_database())")[0][0] > 0
    assert report["rows"] == {
        "tokens": stack.query("SELECT count(*) FROM tokens")[0][0],
        "token_history": stack.query("SELECT count(*) FROM token_history")[0][0],
        "sync_runs": 3,
    }
    assert report["rows"]["tokens"] == 154
    assert_every_query_uses_an_index(report)

    text = stack.tokenwatch("db", "check")
    assert text.returncode == 0
    assert "integrity: ok" in text.stdout
    scan = "SCAN tokens" if stack.sqlite else "Seq Scan on tokens"
    assert f"[full read (deliberate)] diff: load the registry: {scan}" in text.stdout
    assert "FULL SCAN" not in text.stdout
    assert text.stdout.rstrip().endswith("ok")

    stack.env["TOKENWATCH_DATABASE_URL"] = f"sqlite:///{stack.workdir / 'absent.db'}"
    missing = stack.tokenwatch("db", "check")
    assert missing.returncode == 1
    assert "no registry database" in missing.stderr
    assert not (stack.workdir / "absent.db").exists()  # a check never creates the file


def _old_runs(stack: Stack, count: int, age_days: float) -> list[tuple[Any, ...]]:
    finished = int(time.time() * 1000 - age_days * DAY_MS)
    padding = "x" * 400  # big rows: their deletion leaves free pages for the vacuum
    return [(f"old-{age_days}-{i:05d}", finished - i, finished - i, "ok", padding) for i in range(count)]


@pytest.mark.integration
@pytest.mark.usefixtures("database_url")  # on SQLite and PostgreSQL
def test_maintenance_tasks_run_on_the_db_queue_and_prune_old_sync_runs(stack: Stack, sim: Simulator) -> None:
    fill(stack, sim)
    history = stack.query("SELECT count(*) FROM token_history")[0][0]
    assert history == 5
    databases.insert_many(stack.database_url, "INSERT INTO sync_runs (sync_id, started_at, finished_at, status, "
                          "error) VALUES (?, ?, ?, ?, ?)", _old_runs(stack, 3_000, 40) + _old_runs(stack, 2, 10))
    assert stack.query("SELECT count(*) FROM sync_runs") == [(3_005,)]

    # Sent with no worker running: all three wait on the db queue, none on fetch.
    for task in ("tokenwatch.prune_sync_runs", "tokenwatch.db_vacuum", "tokenwatch.db_optimize"):
        stack.start("call", "call", task)
        assert stack.processes[-1].wait(30) == 0
    assert (stack.redis.llen("db"), stack.redis.llen("fetch")) == (3, 0)

    stack.start_worker(queues="db", name="writer")
    done = re.compile(r"Task tokenwatch\.db_optimize\[[^]]+\] succeeded")
    deadline = time.monotonic() + 30
    log = ""
    while not done.search(log):
        assert time.monotonic() < deadline, log[-3000:]
        time.sleep(0.2)
        log = (stack.workdir / "writer.log").read_text()

    # Pruned: the 40-day-old rows; kept: the 10-day-old ones, the real syncs, and every history event.
    assert stack.query("SELECT count(*) FROM sync_runs WHERE sync_id LIKE 'old-40%'") == [(0,)]
    assert stack.query("SELECT count(*) FROM sync_runs") == [(5,)]
    assert stack.query("SELECT count(*) FROM token_history") == [(history,)]
    assert "pruned 3000 sync_runs rows older than 30 days" in log
    if stack.sqlite:
        vacuum = re.search(r"database vacuum: (\d+) free pages given back", log)
        assert vacuum is not None and int(vacuum.group(1)) > 50, log[-3000:]
        assert stack.query("PRAGMA freelist_count") == [(0,)]
        assert stack.query("SELECT count(*) FROM sqlite_stat1 WHERE tbl = 'tokens'")[0][0] >= 1
    else:
        assert re.search(r"database vacuum \(PostgreSQL\): \d+ -> \d+ bytes", log), log[-3000:]
        # Vacuumed (the pruned rows' space reusable) and analysed: statistics of the registry's tables.
        assert stack.query("SELECT count(*) FROM pg_stat_user_tables WHERE relname = 'sync_runs' AND "
                           "last_vacuum IS NOT NULL") == [(1,)]
        assert stack.query("SELECT count(*) FROM pg_stats WHERE tablename = 'tokens'")[0][0] >= 1
    assert "database analysed in" in log
    assert (stack.redis.llen("db"), stack.redis.llen("fetch")) == (0, 0)

    # With planner statistics in place, every query still uses its index.
    report = db_check(stack)
    assert report["rows"]["sync_runs"] == 5
    assert_every_query_uses_an_index(report)


def test_every_periodic_entry_expires_before_its_next_run() -> None:
    from tokenwatch import celeryconfig
    from tokenwatch.tasks.names import ROUTES

    entries = celeryconfig.beat_schedule
    assert set(entries) == {"sync-contracts", "check-alerts", "prune-sync-runs", "db-vacuum", "db-optimize"}
    for name, entry in entries.items():
        schedule = entry["schedule"]
        period = schedule if isinstance(schedule, float | int) else 86_400  # crontabs here: daily or weekly
        assert 0 < entry["options"]["expires"] < period, name
    assert {ROUTES[entries[n]["task"]]["queue"] for n in ("prune-sync-runs", "db-vacuum", "db-optimize")} == {"db"}
    assert ROUTES[entries["check-alerts"]["task"]]["queue"] == "fetch"


@pytest.mark.integration
def test_prune_walks_a_long_backlog_a_day_at_a_time_and_vacuum_only_runs_when_pages_are_free(
        tmp_path: Path) -> None:
    from sqlalchemy import event

    from tokenwatch import process
    from tokenwatch.db import maintenance

    url = f"sqlite:///{tmp_path / 'tokens.db'}"
    engine = process.current().engine(url, writer=True)
    now = int(time.time() * 1000)
    rows = [(f"r{i:04d}", now - i * DAY_MS // 4, now - i * DAY_MS // 4, "ok") for i in range(400)]  # 100 days
    with sqlite3.connect(tmp_path / "tokens.db") as conn:
        conn.executemany("INSERT INTO sync_runs (sync_id, started_at, finished_at, status) VALUES (?, ?, ?, ?)",
                         rows)
    deletes: list[str] = []
    event.listen(engine, "before_cursor_execute",
                 lambda _c, _cur, sql, *_: deletes.append(sql) if sql.startswith("DELETE") else None)
    cutoff = now - 30 * DAY_MS
    assert maintenance.prune_sync_runs(engine, cutoff) == sum(1 for r in rows if r[2] < cutoff)
    with sqlite3.connect(tmp_path / "tokens.db") as conn:
        left = [r[0] for r in conn.execute("SELECT finished_at FROM sync_runs")]
    assert len(left) == sum(1 for r in rows if r[2] >= cutoff)
    assert min(left) >= cutoff
    assert 69 <= len(deletes) <= 71  # one transaction per day of backlog
    assert maintenance.prune_sync_runs(engine, cutoff) == 0

    pages = maintenance.page_stats(engine)
    vacuumed = maintenance.vacuum(engine, str(tmp_path / "tokens.db"))
    assert (vacuumed["vacuumed"], vacuumed["free_pages_before"]) == (True, pages["freelist_count"])
    assert pages["freelist_count"] > 0
    after = maintenance.page_stats(engine)
    assert after["freelist_count"] == 0
    assert after["page_count"] == pages["page_count"] - pages["freelist_count"]
    again = maintenance.vacuum(engine, str(tmp_path / "tokens.db"))
    assert (again["vacuumed"], again["free_pages_before"]) == (False, 0)
    assert again["after"]["wal"] == 0  # the checkpoint truncated the WAL
