"""The health numbers of `tokenwatch status`, the alert task and the metrics endpoint, loaded from the registry
database and from Redis. Judging them is tokenwatch.alerts.evaluate (pure); showing them, tokenwatch.status."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import redis
from kombu.connection import Connection as BrokerConnection
from kombu.exceptions import ChannelError
from kombu.exceptions import OperationalError as KombuOperationalError
from sqlalchemy import Connection, desc, func, select, true

from tokenwatch import alerts, clock
from tokenwatch.cache.redis_client import celery_redis
from tokenwatch.clock import HOUR_MS
from tokenwatch.db.queries import recent_syncs
from tokenwatch.db.schema import sync_runs, token_history, tokens
from tokenwatch.outcome import COUNT_KEYS, GOOD, PHASES
from tokenwatch.process import ProcessState
from tokenwatch.settings import Settings, redact_url
from tokenwatch.tasks.names import Queue
from tokenwatch.worker_memory import worker_rss

QUEUES = tuple(queue.value for queue in Queue)
RECENT = 10


def token_counts(conn: Connection) -> dict[str, int]:
    """Tokens by status, and how many are flagged new."""
    counts = {"active": 0, "delisted": 0}
    for status, count in conn.execute(select(tokens.c.status, func.count()).group_by(tokens.c.status)):
        counts[str(status)] = int(count)
    # "is_new = 1" on SQLite as the partial index ix_tokens_new says it ("IS 1" would read the whole table);
    # true() renders 1 there and true on PostgreSQL, where boolean = integer is no operator.
    new = select(func.count()).select_from(tokens).where(tokens.c.is_new == true())
    counts["new"] = int(conn.execute(new).scalar_one())
    return counts


def last_good(conn: Connection) -> dict[str, Any] | None:
    """The newest ok, baseline or suspect sync: sync_id, status, finished_at, invalid."""
    query = (select(sync_runs.c.sync_id, sync_runs.c.status, sync_runs.c.finished_at, sync_runs.c.invalid)
             .where(sync_runs.c.status.in_(sorted(GOOD))).order_by(desc(sync_runs.c.finished_at)).limit(1))
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


def queue_lengths(settings: Settings) -> dict[str, int]:
    """Messages waiting in each Celery queue on the broker, asked through kombu (all priority levels)."""
    lengths: dict[str, int] = {}
    options = celery_redis(settings.redis_config())
    broker = BrokerConnection(options.broker_url, connect_timeout=5, ssl=options.use_ssl or False,  # type: ignore[no-untyped-call]
                              transport_options=options.transport_options)
    with broker as connection:
        channel = connection.default_channel
        for queue in QUEUES:
            try:
                lengths[queue] = int(channel.queue_declare(queue=queue, passive=True).message_count)
            except ChannelError:  # the broker keeps no empty queue
                lengths[queue] = 0
    return lengths


ACK_KEY = "tokenwatch:alerts:ack"  # when an operator last ran `tokenwatch status --ack` (ms)


def acked_at(client: redis.Redis) -> int | None:
    """When failures were last acknowledged, or None."""
    value: Any = client.get(ACK_KEY)
    try:
        return None if value is None else int(value)
    except ValueError:
        return None  # not ours: as if never acknowledged


def acknowledge(client: redis.Redis, now_ms: int) -> None:
    """From now on the failure window starts here: syncs that failed before no longer raise failure_rate."""
    client.set(ACK_KEY, now_ms)


PING_S = 0.5  # a live worker answers a ping in milliseconds; one that does not in this time is not counted


def live_workers(expected: int) -> list[str]:
    """The Celery workers answering a broadcast ping now (waits PING_S at most, less once `expected` answered)."""
    from tokenwatch.workers.app import app  # noqa: PLC0415 - Celery's app only where a ping is asked for

    replies = app.control.ping(timeout=PING_S, limit=expected or None)
    return sorted({name for reply in replies for name in reply})


def alive_only(rss: dict[str, int], live: list[str]) -> dict[str, int]:
    """The memory reports of live workers' processes (`NAME-PID`); a dead worker's last report is dropped."""
    return {process: value for process, value in rss.items() if process.rsplit("-", 1)[0] in live}


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
        "timings_ms": {phase: None if row[f"{phase}_ms"] is None else round(float(row[f"{phase}_ms"]), 2)
                       for phase in PHASES},
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
    live: list[str] | None = None  # workers that answered a ping (None: not asked)
    redis_error: str | None = None
    alerts: list[alerts.Alert] = field(default_factory=list)
    since: dict[str, int] = field(default_factory=dict)
    tracked: bool = False


def connect_redis(settings: Settings, process: ProcessState) -> tuple[redis.Redis | None, str | None]:
    """This process's Redis client if it answers, else (None, a one-line reason)."""
    url = settings.effective_redis_url()
    client = process.redis(settings.redis_config())
    try:
        client.ping()
    except (redis.RedisError, OSError) as exc:
        return None, f"Redis unreachable at {redact_url(url)} ({type(exc).__name__})"
    return client, None


def load(settings: Settings, process: ProcessState, client: redis.Redis | None, *, now_ms: int | None = None,
         redis_error: str | None = None, ping: bool = False) -> Status:
    """Read the registry's numbers from SQLite and, when client is given, the broker's from Redis."""
    now = clock.now_ms() if now_ms is None else now_ms
    acked = None
    if client is not None:
        try:
            acked = acked_at(client)
        except (redis.RedisError, OSError) as exc:
            redis_error, client = f"Redis failed ({type(exc).__name__}: {exc})", None
    # The failure window is the last hour, or less: failures an operator acknowledged no longer count.
    window_from = max(now - HOUR_MS, acked or 0)
    engine = process.engine(settings.database_url)
    with engine.connect() as conn:
        counts = token_counts(conn)
        good = last_good(conn)
        hour = hour_stats(runs_since(conn, window_from))
        hour["from_ms"], hour["acked_at"] = window_from, acked
        first = first_run_ms(conn)
        phases = last_phase_ms(conn)
    recent = [_run_json(row) for row in recent_syncs(engine, RECENT)]
    streak = next((at for at, run in enumerate(recent) if run["status"] != "skipped"), len(recent))
    queues = workers = None
    live: list[str] | None = None
    if client is not None:
        try:
            queues, workers = queue_lengths(settings), worker_rss(client)
            if ping:
                # Memory reports outlive their worker by minutes; a ping says who is there now.
                live = live_workers(len({name.rsplit("-", 1)[0] for name in workers}))
                workers = alive_only(workers, live)
        except (redis.RedisError, OSError, KombuOperationalError) as exc:
            redis_error = f"Redis failed ({type(exc).__name__}: {exc})"
    if good is not None:
        good["age_ms"] = now - int(good["finished_at"])
    health = alerts.Health(
        now_ms=now, last_phase_ms=phases, hour_good=hour["good"], hour_failed=hour["failed"],
        last_good_ms=None if good is None else int(good["finished_at"]), first_run_ms=first, worker_rss=workers,
        skipped_streak=streak, redis_error=redis_error,
        failure_window="the last hour" if window_from != acked else "the syncs since the ack "
        f"({(now - window_from) // 60_000} min ago)",
    )
    return Status(now, counts, recent, hour, good, health, queues, workers, live, redis_error)


def check(settings: Settings, process: ProcessState, *, now_ms: int | None = None, ping: bool = False) -> Status:
    """Load, evaluate the alerts, and record (and log) their transitions in Redis when it answers."""
    client, error = connect_redis(settings, process)
    status = load(settings, process, client, now_ms=now_ms, redis_error=error, ping=ping)
    status.alerts = alerts.evaluate(status.health, alerts.Thresholds.from_settings(settings))
    if client is not None and status.redis_error is None:
        try:
            tracked = alerts.track(client, status.alerts, status.now_ms)
        except (redis.RedisError, OSError) as exc:
            status.redis_error = f"Redis failed ({type(exc).__name__}: {exc})"
        else:
            status.since, status.tracked = tracked.since, True
    return status
