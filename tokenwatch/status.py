"""`tokenwatch status`: the health numbers (tokenwatch/health.py) and the standing alerts, as text or JSON."""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from typing import Any

from sqlalchemy.exc import SQLAlchemyError

from tokenwatch import alerts, clock
from tokenwatch.health import Status, acknowledge, check, connect_redis
from tokenwatch.process import ProcessState
from tokenwatch.settings import Settings


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
            "live": status.live, "rss_bytes": status.workers,
            "max_rss_bytes": max(status.workers.values(), default=None)},
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
                     f"{alerts.human_s(int(good['age_ms']) / 1000.0)} ago")
    success = "-" if h["success_pct"] is None else f"{h['success_pct']:.1f}%"
    window = "last hour" if h.get("acked_at") is None or h["from_ms"] != h["acked_at"] else (
        f"since the ack at {_utc(h['acked_at'])} UTC")
    lines.append(f"{window}: {h['syncs']} syncs ({h['good']} good, {h['failed']} failed, {h['skipped']} skipped), "
                 f"success {success}, total time p50 {_ms(h['p50_ms'])} ms, p95 {_ms(h['p95_ms'])} ms")
    if status.queues is not None:
        lines.append("queues: " + ", ".join(f"{name} {depth}" for name, depth in status.queues.items()))
    if status.live is not None:
        lines.append(f"workers: {len(status.live)} live" + (f" ({', '.join(status.live)})" if status.live else
                                                             ": none answered a ping"))
    if status.workers:
        name, rss = max(status.workers.items(), key=lambda item: item[1])
        lines.append(f"worker memory: {len(status.workers)} processes reporting, max RSS {rss / alerts.MIB:.0f} MiB "
                     f"({name})")
    elif status.workers is not None:
        lines.append("worker memory: no live worker reported it recently")
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


def run_status(settings: Settings, process: ProcessState, *, as_json: bool, ack: bool = False) -> int:
    """`tokenwatch status`: 2 while an alert stands, 1 when the registry cannot be read, else 0.

    ack: first acknowledge the failures so far, so failure_rate counts only the syncs after now.
    """
    if ack:
        client, error = connect_redis(settings, process)
        if client is None:
            print(f"tokenwatch: cannot acknowledge: {error}", file=sys.stderr)
            return 1
        now = clock.now_ms()
        acknowledge(client, now)
        print(f"tokenwatch: failures acknowledged at {_utc(now)} UTC: failure_rate counts the syncs after it",
              file=sys.stderr)
    try:
        status = check(settings, process, ping=True)
    except SQLAlchemyError as exc:
        print(f"tokenwatch: registry database unreadable: {str(getattr(exc, 'orig', exc)).splitlines()[0]}",
              file=sys.stderr)
        return 1
    print(json.dumps(to_json(status), default=str) if as_json else render(status))
    return 2 if status.alerts else 0
