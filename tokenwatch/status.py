"""`tokenwatch status` and `tokenwatch db check`: health numbers loaded from SQLite and Redis, and their report.

Loading lives here; judging is tokenwatch.alerts.evaluate (pure). Worker processes report their resident
memory into ``tokenwatch:workers:rss:<hostname>-<pid>`` (expiring after a few sync intervals) after every
sync and maintenance task; status reads every such key and alerts on the largest.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry
from sqlalchemy import Connection, Engine, desc, func, select
from sqlalchemy.exc import SQLAlchemyError

from tokenwatch import alerts
from tokenwatch.cache.redis_client import get_redis
from tokenwatch.db import maintenance
from tokenwatch.db.engine import get_engine, make_engine, sqlite_path
from tokenwatch.db.queries import recent_syncs
from tokenwatch.db.schema import PHASES, sync_runs, token_history, tokens
from tokenwatch.domain.diff import COUNT_KEYS
from tokenwatch.settings import Settings, redact_url
from tokenwatch.tasks.names import Queue

log = logging.getLogger("tokenwatch.status")

T = TypeVar("T")

WORKER_RSS_PREFIX = "tokenwatch:workers:rss:"
RSS_TTL_INTERVALS = 3  # a worker that has not reported for this many sync intervals is no longer counted
GOOD = ("ok", "baseline", "suspect")
QUEUES = tuple(queue.value for queue in Queue)
# kombu's Redis transport keeps priorities 3, 6 and 9 of a queue in sibling lists "<queue>\x06\x16<priority>".
_PRIORITY_SUFFIXES = ("", "\x06\x163", "\x06\x166", "\x06\x169")
RECENT = 10
HOUR_MS = 3_600_000


# ---- worker memory (written by worker processes) ---------------------------------------------------------

_worker_name: str | None = None


def set_worker_name(name: str) -> None:
    """Mark this process as a Celery worker named name: from now on it reports its memory."""
    global _worker_name  # noqa: PLW0603 - one per process, set once at worker start
    _worker_name = name


def rss_bytes() -> int:
    """Resident memory of this process (Linux: current; elsewhere: the peak)."""
    try:
        with open("/proc/self/statm", encoding="ascii") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        import resource  # noqa: PLC0415 - the fallback only

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return int(peak if sys.platform == "darwin" else peak * 1024)


def report_worker_rss(settings: Settings) -> None:
    """Store this worker process's RSS in Redis with a TTL; does nothing outside a worker, never raises."""
    name = _worker_name
    if name is None:
        return
    ttl_s = max(int(settings.sync_interval_s * RSS_TTL_INTERVALS), 60)
    try:
        get_redis(settings.effective_redis_url()).set(f"{WORKER_RSS_PREFIX}{name}-{os.getpid()}", rss_bytes(),
                                                      ex=ttl_s)
    except (redis.RedisError, OSError) as exc:
        log.debug("could not report worker memory: %s", exc)


# ---- loading ---------------------------------------------------------------------------------------------

def token_counts(conn: Connection) -> dict[str, int]:
    """Tokens by status, and how many are flagged new."""
    counts = {"active": 0, "delisted": 0}
    for status, count in conn.execute(select(tokens.c.status, func.count()).group_by(tokens.c.status)):
        counts[str(status)] = int(count)
    # "is_new = 1" as the partial index ix_tokens_new says it ("IS 1" would read the whole table).
    new = select(func.count()).select_from(tokens).where(tokens.c.is_new == 1)
    counts["new"] = int(conn.execute(new).scalar_one())
    return counts


def last_good(conn: Connection) -> dict[str, Any] | None:
    """The newest ok, baseline or suspect sync: sync_id, status, finished_at, invalid."""
    query = (select(sync_runs.c.sync_id, sync_runs.c.status, sync_runs.c.finished_at, sync_runs.c.invalid)
             .where(sync_runs.c.status.in_(GOOD)).order_by(desc(sync_runs.c.finished_at)).limit(1))
    row = conn.execute(query).first()
    return None if row is None else dict(row._mapping)


def runs_since(conn: Connection, since_ms: int) -> list[tuple[str, float | None]]:
    """(status, total_ms) of every sync that finished since since_ms."""
    query = select(sync_runs.c.status, sync_runs.c.total_ms).where(sync_runs.c.finished_at >= since_ms)
    return [(str(status), None if total is None else float(total)) for status, total in conn.execute(query)]


def first_run_ms(conn: Connection) -> int | None:
    """When the oldest recorded sync finished."""
    value = conn.execute(select(func.min(sync_runs.c.finished_at))).scalar()
    return None if value is None else int(value)


def last_phase_ms(conn: Connection) -> dict[str, float]:
    """Per phase, its time in the newest sync that was not skipped and recorded that phase."""
    result: dict[str, float] = {}
    for phase in PHASES:
        column = sync_runs.c[f"{phase}_ms"]
        query = (select(column).where(sync_runs.c.status != "skipped", column.is_not(None))
                 .order_by(desc(sync_runs.c.finished_at)).limit(1))
        value = conn.execute(query).scalar()
        if value is not None:
            result[phase] = float(value)
    return result


def events_since(conn: Connection, after_id: int) -> tuple[int, dict[str, int]]:
    """History events with an id above after_id, counted by type, and the highest id seen."""
    query = (select(token_history.c.event_type, func.count(), func.max(token_history.c.id))
             .where(token_history.c.id > after_id).group_by(token_history.c.event_type))
    rows = conn.execute(query).all()
    return max((int(r[2]) for r in rows), default=after_id), {str(r[0]): int(r[1]) for r in rows}


def queue_lengths(client: redis.Redis) -> dict[str, int]:
    """Messages waiting in each Celery queue on the broker (all priority levels)."""
    pipe = client.pipeline(transaction=False)
    for queue in QUEUES:
        for suffix in _PRIORITY_SUFFIXES:
            pipe.llen(queue + suffix)
    values = pipe.execute()
    step = len(_PRIORITY_SUFFIXES)
    return {queue: int(sum(values[i * step:(i + 1) * step])) for i, queue in enumerate(QUEUES)}


def worker_rss(client: redis.Redis) -> dict[str, int]:
    """RSS bytes by worker process, as last reported (expired reports are gone)."""
    names = sorted(client.scan_iter(match=WORKER_RSS_PREFIX + "*", count=200))
    if not names:
        return {}
    values = client.mget(names)
    return {name.decode()[len(WORKER_RSS_PREFIX):]: int(value)
            for name, value in zip(names, values, strict=True) if value is not None}


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0-100) of values; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(math.ceil(q / 100.0 * len(ordered)), 1) - 1]


def hour_stats(runs: list[tuple[str, float | None]]) -> dict[str, Any]:
    """Counts, success rate and p50/p95 total time (good syncs) of a window's runs; skipped ones apart."""
    good = [total for status, total in runs if status in GOOD]
    failed = sum(1 for status, _ in runs if status == "failed")
    skipped = sum(1 for status, _ in runs if status == "skipped")
    failure = alerts.failure_pct(len(good), failed)
    totals = [total for total in good if total is not None]
    return {"syncs": len(runs), "good": len(good), "failed": failed, "skipped": skipped,
            "success_pct": None if failure is None else round(100.0 - failure, 2),
            "p50_ms": percentile(totals, 50), "p95_ms": percentile(totals, 95)}


def _run_json(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "sync_id": row["sync_id"], "status": row["status"], "started_at": row["started_at"],
        "finished_at": row["finished_at"], "error": row["error"], "revision": row["revision"],
        "counts": {key: row[key] for key in COUNT_KEYS},
        "timings_ms": {phase: row[f"{phase}_ms"] for phase in PHASES},
    }


@dataclass(slots=True)
class Status:
    """Everything `tokenwatch status` shows."""

    now_ms: int
    tokens: dict[str, int]
    recent: list[dict[str, Any]]
    hour: dict[str, Any]
    last_good: dict[str, Any] | None
    health: alerts.Health
    queues: dict[str, int] | None = None
    workers: dict[str, int] | None = None
    redis_error: str | None = None
    alerts: list[alerts.Alert] = field(default_factory=list)
    since: dict[str, int] = field(default_factory=dict)
    tracked: bool = False


def connect_redis(settings: Settings) -> tuple[redis.Redis | None, str | None]:
    """This process's Redis client if it answers, else (None, a one-line reason)."""
    url = settings.effective_redis_url()
    client = get_redis(url)
    try:
        client.ping()
    except (redis.RedisError, OSError) as exc:
        return None, f"Redis unreachable at {redact_url(url)} ({type(exc).__name__})"
    return client, None


def load(settings: Settings, client: redis.Redis | None, *, now_ms: int | None = None,
         redis_error: str | None = None) -> Status:
    """Read the registry's numbers from SQLite and, when client is given, the broker's from Redis."""
    now = int(time.time() * 1000) if now_ms is None else now_ms
    engine = get_engine(settings.database_url)
    with engine.connect() as conn:
        counts = token_counts(conn)
        good = last_good(conn)
        hour = hour_stats(runs_since(conn, now - HOUR_MS))
        first = first_run_ms(conn)
        phases = last_phase_ms(conn)
    recent = [_run_json(row) for row in recent_syncs(engine, RECENT)]
    queues = workers = None
    if client is not None:
        try:
            queues, workers = queue_lengths(client), worker_rss(client)
        except (redis.RedisError, OSError) as exc:
            redis_error = f"Redis failed ({type(exc).__name__}: {exc})"
    if good is not None:
        good["age_s"] = round((now - int(good["finished_at"])) / 1000.0, 1)
    health = alerts.Health(
        now_ms=now, last_phase_ms=phases, hour_good=hour["good"], hour_failed=hour["failed"],
        last_good_ms=None if good is None else int(good["finished_at"]), first_run_ms=first, worker_rss=workers,
    )
    return Status(now, counts, recent, hour, good, health, queues, workers, redis_error)


def check(settings: Settings, *, now_ms: int | None = None) -> Status:
    """Load, evaluate the alerts, and record (and log) their transitions in Redis when it answers."""
    client, error = connect_redis(settings)
    status = load(settings, client, now_ms=now_ms, redis_error=error)
    status.alerts = alerts.evaluate(status.health, alerts.Thresholds.from_settings(settings))
    if client is not None and status.redis_error is None:
        try:
            tracked = alerts.track(client, status.alerts, status.now_ms)
        except (redis.RedisError, OSError) as exc:
            status.redis_error = f"Redis failed ({type(exc).__name__}: {exc})"
        else:
            status.since, status.tracked = tracked.since, True
    return status


# ---- the report ------------------------------------------------------------------------------------------

def _utc(ms: int | None) -> str:
    return "-" if ms is None else datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S")


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def to_json(status: Status) -> dict[str, Any]:
    """The --json object."""
    return {
        "now_ms": status.now_ms, "tokens": status.tokens, "last_good": status.last_good, "last_hour": status.hour,
        "queues": status.queues,
        "workers": None if status.workers is None else {
            "rss_bytes": status.workers, "max_rss_bytes": max(status.workers.values(), default=None)},
        "redis_error": status.redis_error, "recent": status.recent,
        "alerts": [{**alert.to_json(), "since": status.since.get(alert.name)} for alert in status.alerts],
    }


def render(status: Status) -> str:
    """The plain-text report."""
    t, h, good = status.tokens, status.hour, status.last_good
    lines = [f"tokenwatch status at {_utc(status.now_ms)} UTC",
             f"tokens: {t['active']} active, {t['new']} new, {t['delisted']} delisted"]
    if good is None:
        lines.append("last good sync: none recorded")
    else:
        lines.append(f"last good sync: {good['sync_id']} ({good['status']}), "
                     f"{alerts.human_s(float(good['age_s']))} ago")
    success = "-" if h["success_pct"] is None else f"{h['success_pct']:.1f}%"
    lines.append(f"last hour: {h['syncs']} syncs ({h['good']} good, {h['failed']} failed, {h['skipped']} skipped), "
                 f"success {success}, total time p50 {_ms(h['p50_ms'])} ms, p95 {_ms(h['p95_ms'])} ms")
    if status.queues is not None:
        lines.append("queues: " + ", ".join(f"{name} {depth}" for name, depth in status.queues.items()))
    if status.workers is not None:
        if status.workers:
            name, rss = max(status.workers.items(), key=lambda item: item[1])
            lines.append(f"workers: {len(status.workers)} reporting, max RSS {rss / alerts.MIB:.0f} MiB ({name})")
        else:
            lines.append("workers: none reported memory recently")
    if status.redis_error:
        lines.append(f"{status.redis_error}: queue depths and worker memory unknown, alert changes not recorded")
    lines.append("")
    lines.append("recent syncs, newest first (times in ms):")
    lines.append(f"{'FINISHED (UTC)':<20} {'STATUS':<9} {'TOTAL':>9} {'API':>8} {'DB_LOAD':>8} {'PROCESS':>8} "
                 f"{'WRITE':>8} {'CACHE':>8}  SYNC ID")
    for run in status.recent:
        tm = run["timings_ms"]
        line = (f"{_utc(run['finished_at']):<20} {run['status']:<9} {_ms(tm['total']):>9} {_ms(tm['api']):>8} "
                f"{_ms(tm['db_load']):>8} {_ms(tm['process']):>8} {_ms(tm['batch_write']):>8} "
                f"{_ms(tm['cache']):>8}  {run['sync_id']}")
        lines.append(line + (f"  {run['error']}" if run["error"] else ""))
    if not status.recent:
        lines.append("(none yet)")
    lines.append("")
    if not status.alerts:
        lines.append("alerts: none")
    for alert in status.alerts:
        since = status.since.get(alert.name)
        lines.append(f"ALERT {alert.name}: {alert.message}" + (f", since {_utc(since)} UTC" if since else ""))
    return "\n".join(lines)


def run_status(settings: Settings, *, as_json: bool) -> int:
    """`tokenwatch status`: 2 while an alert stands, 1 when the registry cannot be read, else 0."""
    try:
        status = check(settings)
    except SQLAlchemyError as exc:
        print(f"tokenwatch: registry database unreadable: {str(getattr(exc, 'orig', exc)).splitlines()[0]}",
              file=sys.stderr)
        return 1
    print(json.dumps(to_json(status), default=str) if as_json else render(status))
    return 2 if status.alerts else 0


# ---- db check ----------------------------------------------------------------------------------------------

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
def _reader(context: maintenance.ProbeContext) -> Iterator[Any]:
    from tokenwatch.reader import Registry  # noqa: PLC0415 - the read API is optional here

    # Redis pointed nowhere: every read goes down to the database layer, whose queries are the ones to check.
    quiet = logging.getLogger("tokenwatch.reader")
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    nowhere = redis.Redis(unix_socket_path="/nonexistent/tokenwatch.sock", retry=Retry(NoBackoff(), 0))
    registry = Registry(redis_client=nowhere, database_url=context.database_url,
                        new_listing_window_h=context.window_ms / 3_600_000)
    try:
        yield registry
    finally:
        registry.close()
        nowhere.close()
        quiet.setLevel(level)


def _read_api(call: Callable[[Any, maintenance.ProbeContext], object]) -> Callable[[Engine, Any], object]:
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


def _probes() -> tuple[maintenance.Probe, ...]:
    try:
        import tokenwatch.reader  # noqa: F401, PLC0415
    except ImportError:
        log.warning("tokenwatch.reader is not importable: the read API's queries are not checked")
        return (*maintenance.REGISTRY_PROBES, *STATUS_PROBES)
    return (*maintenance.REGISTRY_PROBES, *READ_API_PROBES, *STATUS_PROBES)


def db_check(settings: Settings) -> dict[str, Any]:
    """Integrity, file sizes, pages, row counts, and the plan of every query the CLI, read API and status run."""
    path = sqlite_path(settings.database_url)
    if path is None or not os.path.exists(path):
        raise FileNotFoundError(f"no registry database at {path}")
    engine = make_engine(settings.database_url)
    try:
        with engine.connect() as conn:
            symbol = conn.execute(select(tokens.c.symbol).limit(1)).scalar() or "XBTUSDTM"
        context = maintenance.ProbeContext(settings.database_url, str(symbol), int(time.time() * 1000),
                                           int(settings.new_listing_window_h * 3_600_000))
        plans = maintenance.explain(engine, _probes(), context)
        report: dict[str, Any] = {
            "database": os.path.abspath(path), "integrity": maintenance.integrity(engine),
            "files": maintenance.file_sizes(path), "pages": maintenance.page_stats(engine),
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
        f"files: db {files['db']:,} bytes, wal {files['wal']:,} bytes, shm {files['shm']:,} bytes",
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
