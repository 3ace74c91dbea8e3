"""Alerts: a pure evaluation of health numbers against thresholds, and the standing set kept in Redis.

``evaluate`` and ``transitions`` do no I/O (tests call them with plain data). ``track`` records the standing
alerts in the Redis hash ``tokenwatch:alerts`` (field: alert name, value: JSON with ``since`` and the message
at the time it was raised) and logs a transition only when its own HSETNX / HDEL changed the hash, so an alert
is logged once when raised and once when cleared, however many evaluators (``tokenwatch status``, the
``tokenwatch.check_alerts`` beat task) run and however often.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson
import redis

from tokenwatch.settings import Settings

log = logging.getLogger("tokenwatch.alerts")

ALERTS_KEY = "tokenwatch:alerts"
MIB = 1024 * 1024

SYNC_SLOW = "sync_slow"
API_SLOW = "api_slow"
WRITE_SLOW = "write_slow"
FAILURE_RATE = "failure_rate"
STALE = "stale"
WORKER_MEMORY = "worker_memory"
SYNC_SKIPPED = "sync_skipped"
REDIS_UNREACHABLE = "redis_unreachable"
NAMES = (SYNC_SLOW, API_SLOW, WRITE_SLOW, FAILURE_RATE, STALE, WORKER_MEMORY, SYNC_SKIPPED, REDIS_UNREACHABLE)


@dataclass(frozen=True, slots=True)
class Thresholds:
    """When each alert is raised (strictly above the threshold)."""

    sync_s: float = 10.0
    api_s: float = 5.0
    write_s: float = 3.0
    failure_pct: float = 5.0
    stale_s: float = 180.0
    worker_mb: float = 500.0
    skipped_syncs: int = 3

    @classmethod
    def from_settings(cls, settings: Settings) -> Thresholds:
        """The TOKENWATCH_ALERT_* settings; staleness is counted in sync intervals."""
        return cls(
            sync_s=settings.alert_sync_s, api_s=settings.alert_api_s, write_s=settings.alert_write_s,
            failure_pct=settings.alert_failure_pct,
            stale_s=settings.alert_stale_intervals * settings.sync_interval_s, worker_mb=settings.alert_worker_mb,
            skipped_syncs=settings.alert_skipped_syncs,
        )


@dataclass(frozen=True, slots=True)
class Health:
    """What the alerts look at; tokenwatch/health.py loads it from SQLite and Redis.

    last_phase_ms: per phase (api, batch_write, total, ...), the time of the newest sync that is not skipped
    and recorded that phase. hour_good / hour_failed: syncs of the last hour (skipped ones are not counted).
    last_good_ms: when the newest ok, baseline or suspect sync finished; first_run_ms: when the oldest
    recorded sync finished (None: no sync recorded at all). worker_rss: bytes by worker process, None when
    unknown (Redis unreachable). skipped_streak: how many of the newest syncs in a row were skipped.
    redis_error: why Redis did not answer the evaluator (None: it did).
    """

    now_ms: int
    last_phase_ms: Mapping[str, float] = field(default_factory=dict)
    hour_good: int = 0
    hour_failed: int = 0
    last_good_ms: int | None = None
    first_run_ms: int | None = None
    worker_rss: Mapping[str, int] | None = None
    skipped_streak: int = 0
    redis_error: str | None = None
    failure_window: str = "the last hour"  # or since an operator's acknowledgement (`tokenwatch status --ack`)


@dataclass(frozen=True, slots=True)
class Alert:
    """One crossed threshold: value and threshold in the unit the message uses."""

    name: str
    message: str
    value: float
    threshold: float

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "message": self.message, "value": self.value, "threshold": self.threshold}


def human_s(seconds: float) -> str:
    """A duration for people: 42 s, 7 min, 2.5 h, 3.0 d."""
    if seconds < 120:
        return f"{seconds:.3g} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 172_800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86_400:.1f} d"


def failure_pct(good: int, failed: int) -> float | None:
    """Failed syncs as a percentage of good plus failed; None when there were none."""
    total = good + failed
    return None if total == 0 else 100.0 * failed / total


def evaluate(health: Health, limits: Thresholds) -> list[Alert]:
    """Every alert the numbers raise, in NAMES order. Pure: no I/O, no clock."""
    alerts: list[Alert] = []
    for name, phase, limit_s, what in (
        (SYNC_SLOW, "total", limits.sync_s, "sync"),
        (API_SLOW, "api", limits.api_s, "API fetch"),
        (WRITE_SLOW, "batch_write", limits.write_s, "database write"),
    ):
        ms = health.last_phase_ms.get(phase)
        if ms is not None and ms / 1000.0 > limit_s:
            alerts.append(Alert(name, f"last {what} took {ms / 1000.0:.3g} s (threshold {limit_s:g} s)",
                                ms / 1000.0, limit_s))
    pct = failure_pct(health.hour_good, health.hour_failed)
    if pct is not None and pct > limits.failure_pct:
        total = health.hour_good + health.hour_failed
        alerts.append(Alert(
            FAILURE_RATE, f"{pct:.1f}% of syncs failed in {health.failure_window} ({health.hour_failed} of {total}; "
            f"threshold {limits.failure_pct:g}%)", pct, limits.failure_pct))
    stale = _stale(health, limits)
    if stale is not None:
        alerts.append(stale)
    if health.worker_rss:
        worker, rss = max(health.worker_rss.items(), key=lambda item: item[1])
        if rss / MIB > limits.worker_mb:
            alerts.append(Alert(WORKER_MEMORY, f"worker {worker} uses {rss / MIB:.0f} MiB "
                                f"(threshold {limits.worker_mb:g} MiB)", rss / MIB, limits.worker_mb))
    if health.skipped_streak >= limits.skipped_syncs:
        alerts.append(Alert(
            SYNC_SKIPPED, f"the last {health.skipped_streak} syncs were skipped: another sync held the lock each time "
            f"(threshold {limits.skipped_syncs})", health.skipped_streak, limits.skipped_syncs))
    if health.redis_error is not None:
        # No broker, no syncs, no cache for the bots: whatever the registry says, this is not healthy.
        alerts.append(Alert(REDIS_UNREACHABLE, f"{health.redis_error}: no sync can run and the hot cache is not "
                            "served (is `tokenwatch run` running?)", 1.0, 0.0))
    return alerts


def _stale(health: Health, limits: Thresholds) -> Alert | None:
    if health.last_good_ms is not None:
        age_s = (health.now_ms - health.last_good_ms) / 1000.0
        if age_s > limits.stale_s:
            return Alert(STALE, f"last good sync {human_s(age_s)} ago (threshold {human_s(limits.stale_s)})",
                         age_s, limits.stale_s)
        return None
    if health.first_run_ms is None:
        return None  # nothing recorded yet: a fresh install, not a stale one
    age_s = (health.now_ms - health.first_run_ms) / 1000.0
    if age_s > limits.stale_s:
        return Alert(STALE, f"no good sync since the first recorded attempt {human_s(age_s)} ago "
                     f"(threshold {human_s(limits.stale_s)})", age_s, limits.stale_s)
    return None


def transitions(standing: Iterable[str], current: Iterable[Alert]) -> tuple[list[Alert], list[str]]:
    """(raised, cleared): alerts not standing yet, and standing names no longer current."""
    before = set(standing)
    now = {alert.name: alert for alert in current}
    raised = [alert for name, alert in now.items() if name not in before]
    cleared = sorted(before - set(now))
    return raised, cleared


@dataclass(frozen=True, slots=True)
class Tracked:
    """What track did: transitions it logged, and since when each current alert stands (ms)."""

    raised: list[str]
    cleared: list[str]
    since: dict[str, int]


def standing(client: redis.Redis) -> dict[str, dict[str, Any]]:
    """The standing alerts in Redis: name -> {"since": ms, "message": ...}."""
    raw = client.hgetall(ALERTS_KEY)
    result: dict[str, dict[str, Any]] = {}
    for name, value in raw.items():
        try:
            record = orjson.loads(value)
        except orjson.JSONDecodeError:
            record = {}
        result[name.decode() if isinstance(name, bytes) else str(name)] = record if isinstance(record, dict) else {}
    return result


def track(client: redis.Redis, current: list[Alert], now_ms: int) -> Tracked:
    """Bring the standing set in Redis to current; log each transition this call made, once."""
    before = standing(client)
    raised_candidates, cleared_candidates = transitions(before, current)
    raised: list[str] = []
    cleared: list[str] = []
    since = {name: int(record.get("since", now_ms)) for name, record in before.items()}
    for alert in raised_candidates:
        record = orjson.dumps({"since": now_ms, "message": alert.message})
        if client.hsetnx(ALERTS_KEY, alert.name, record):  # another evaluator may have raised it meanwhile
            raised.append(alert.name)
            since[alert.name] = now_ms
            log.warning("ALERT raised: %s: %s", alert.name, alert.message)
    for name in cleared_candidates:
        if client.hdel(ALERTS_KEY, name):
            cleared.append(name)
            stood = (now_ms - since.get(name, now_ms)) / 1000.0
            log.info("ALERT cleared: %s (stood %s)", name, human_s(stood))
    current_names = {alert.name for alert in current}
    return Tracked(raised, cleared, {name: ms for name, ms in since.items() if name in current_names})
