"""Periodic upkeep and health tasks, thin wrappers over db.maintenance and tokenwatch.health.

The database writes (optimize, vacuum, prune) are routed to the ``db`` queue (tasks/names.py), so the single
writer runs them between syncs; check_alerts only reads and goes to ``fetch``. Also here: the worker signal
hooks that let worker processes report their memory and keep Prometheus's multiprocess files tidy.
"""

from __future__ import annotations

import os
from typing import Any

from celery.signals import worker_init, worker_process_shutdown
from celery.utils.log import get_task_logger

from tokenwatch import health, metrics, process, worker_memory
from tokenwatch.clock import DAY_MS, now_ms
from tokenwatch.db import maintenance
from tokenwatch.db.engine import is_sqlite, sqlite_path
from tokenwatch.settings import get_settings
from tokenwatch.tasks.names import CHECK_ALERTS, DB_OPTIMIZE, DB_VACUUM, PRUNE_SYNC_RUNS
from tokenwatch.workers.app import app

log = get_task_logger(__name__)

@worker_init.connect
def _report_memory_from_this_worker(sender: Any = None, **_kwargs: Any) -> None:
    # Before the pool forks: every pool process inherits the name and reports as <hostname>-<its pid>.
    process.current().worker_name = str(getattr(sender, "hostname", None) or "worker")


@worker_process_shutdown.connect
def _forget_pool_process(pid: int | None = None, **_kwargs: Any) -> None:
    metrics.mark_process_dead(pid or os.getpid())


@app.task(name=CHECK_ALERTS, ignore_result=True)
def check_alerts() -> list[str]:
    """Evaluate the alerts and log those raised or cleared since the last evaluation; returns those standing."""
    settings = get_settings()
    state = process.current()
    worker_memory.report(settings, state)
    return [alert.name for alert in health.check(settings, state).alerts]


@app.task(name=DB_OPTIMIZE)
def db_optimize() -> dict[str, Any]:
    """ANALYZE and PRAGMA optimize: fresh planner statistics."""
    settings = get_settings()
    result = maintenance.optimize(process.current().engine(settings.database_url, writer=True))
    log.info("database analysed in %.1f ms", result["ms"])
    worker_memory.report(settings, process.current())
    return result


@app.task(name=DB_VACUUM)
def db_vacuum() -> dict[str, Any]:
    """VACUUM if there are free pages, then truncate the WAL (SQLite); VACUUM the registry's tables (PostgreSQL)."""
    settings = get_settings()
    path = sqlite_path(settings.database_url)
    if path is None and is_sqlite(settings.database_url):
        return {"vacuumed": False, "reason": "in-memory database"}
    result = maintenance.vacuum(process.current().engine(settings.database_url, writer=True), path)
    if path is None:
        log.info("database vacuum (PostgreSQL): %d -> %d bytes in %.1f ms", result["before"]["db"],
                 result["after"]["db"], result["ms"])
        worker_memory.report(settings, process.current())
        return result
    log.info("database vacuum: %s free pages given back, %d -> %d bytes (wal %d -> %d) in %.1f ms",
             result["free_pages_before"] if result["vacuumed"] else "no", result["before"]["db"],
             result["after"]["db"], result["before"]["wal"], result["after"]["wal"], result["ms"])
    worker_memory.report(settings, process.current())
    return result


@app.task(name=PRUNE_SYNC_RUNS)
def prune_sync_runs() -> dict[str, Any]:
    """Delete sync_runs rows older than TOKENWATCH_RETENTION_DAYS; token_history is kept."""
    settings = get_settings()
    cutoff = int(now_ms() - settings.retention_days * DAY_MS)
    deleted = maintenance.prune_sync_runs(process.current().engine(settings.database_url, writer=True), cutoff)
    log.info("pruned %d sync_runs rows older than %g days", deleted, settings.retention_days)
    worker_memory.report(settings, process.current())
    return {"deleted": deleted, "cutoff_ms": cutoff}
