"""Alert evaluation (pure), its once-only transitions (fakeredis), and the status and metrics helpers."""

from __future__ import annotations

import logging

import fakeredis
import pytest
import redis
from prometheus_client import REGISTRY

from tokenwatch import alerts, health, metrics, worker_memory
from tokenwatch.alerts import Alert, Health, Thresholds
from tokenwatch.outcome import SyncStatus
from tokenwatch.process import ProcessState
from tokenwatch.settings import load_settings

NOW = 1_800_000_000_000
LIMITS = Thresholds(sync_s=10, api_s=5, write_s=3, failure_pct=5, stale_s=180, worker_mb=500)
MIB = 1024 * 1024


def healthy(**changes: object) -> Health:
    """Numbers that raise nothing, with changes applied."""
    values: dict[str, object] = {
        "now_ms": NOW, "last_phase_ms": {"total": 900.0, "api": 300.0, "batch_write": 200.0},
        "hour_good": 60, "hour_failed": 0, "last_good_ms": NOW - 30_000, "first_run_ms": NOW - 86_400_000,
        "worker_rss": {"tokenwatch@host-101": 120 * MIB},
    }
    values.update(changes)
    return Health(**values)  # type: ignore[arg-type]


def names(health: Health) -> list[str]:
    return [alert.name for alert in alerts.evaluate(health, LIMITS)]


def test_healthy_numbers_raise_nothing() -> None:
    assert alerts.evaluate(healthy(), LIMITS) == []


@pytest.mark.parametrize(("name", "raised", "cleared"), [
    ("sync_slow", {"last_phase_ms": {"total": 10_001.0}}, {"last_phase_ms": {"total": 10_000.0}}),
    ("api_slow", {"last_phase_ms": {"api": 5_200.0}}, {"last_phase_ms": {"api": 4_800.0}}),
    ("write_slow", {"last_phase_ms": {"batch_write": 3_500.0}}, {"last_phase_ms": {"batch_write": 2_900.0}}),
    ("failure_rate", {"hour_good": 18, "hour_failed": 2}, {"hour_good": 19, "hour_failed": 1}),
    ("stale", {"last_good_ms": NOW - 181_000}, {"last_good_ms": NOW - 179_000}),
    ("stale", {"last_good_ms": None, "first_run_ms": NOW - 200_000},
     {"last_good_ms": None, "first_run_ms": NOW - 100_000}),
    ("worker_memory", {"worker_rss": {"a-1": 100 * MIB, "b-2": 501 * MIB}},
     {"worker_rss": {"a-1": 100 * MIB, "b-2": 499 * MIB}}),
])
def test_each_threshold_raises_above_and_clears_at_or_below(
        name: str, raised: dict[str, object], cleared: dict[str, object]) -> None:
    assert names(healthy(**raised)) == [name]
    assert names(healthy(**cleared)) == []


def test_alert_messages_name_the_value_and_the_threshold() -> None:
    (slow,) = alerts.evaluate(healthy(last_phase_ms={"total": 12_345.0}), LIMITS)
    assert slow == Alert("sync_slow", "last sync took 12.3 s (threshold 10 s)", 12.345, 10)
    (rate,) = alerts.evaluate(healthy(hour_good=9, hour_failed=1), LIMITS)
    assert rate.message == "10.0% of syncs failed in the last hour (1 of 10; threshold 5%)"
    (memory,) = alerts.evaluate(healthy(worker_rss={"w@h-7": 600 * MIB, "w@h-8": 10 * MIB}), LIMITS)
    assert memory.message == "worker w@h-7 uses 600 MiB (threshold 500 MiB)"
    (stale,) = alerts.evaluate(healthy(last_good_ms=NOW - 600_000), LIMITS)
    assert stale.message == "last good sync 10 min ago (threshold 3 min)"


def test_no_data_raises_nothing() -> None:
    # A fresh install: no sync recorded, nothing timed, Redis not asked.
    empty = Health(now_ms=NOW)
    assert alerts.evaluate(empty, LIMITS) == []
    # Unknown worker memory (Redis unreachable) is not an alert; missing phases are not either.
    assert names(healthy(worker_rss=None, last_phase_ms={})) == []


def test_several_alerts_come_in_a_fixed_order() -> None:
    health = healthy(last_phase_ms={"total": 20_000.0, "api": 9_000.0, "batch_write": 4_000.0},
                     hour_good=1, hour_failed=1, last_good_ms=NOW - 3_600_000, worker_rss={"w-1": 900 * MIB},
                     skipped_streak=5, redis_error="Redis unreachable at redis://h:6379/0 (ConnectionError)")
    assert names(health) == list(alerts.NAMES)


def test_thresholds_come_from_the_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TOKENWATCH_ALERT_SYNC_S", "0.000001")
    monkeypatch.setenv("TOKENWATCH_SYNC_INTERVAL_S", "20")
    monkeypatch.setenv("TOKENWATCH_ALERT_STALE_INTERVALS", "4")
    limits = Thresholds.from_settings(load_settings())
    assert limits.sync_s == 0.000001
    assert limits.stale_s == 80
    assert (limits.api_s, limits.write_s, limits.failure_pct, limits.worker_mb) == (5, 3, 5, 500)


def test_transitions_are_the_differences() -> None:
    slow = Alert("sync_slow", "m", 11, 10)
    stale = Alert("stale", "m", 200, 180)
    assert alerts.transitions([], [slow]) == ([slow], [])
    assert alerts.transitions(["sync_slow"], [slow]) == ([], [])
    assert alerts.transitions(["sync_slow", "api_slow"], [stale]) == ([stale], ["api_slow", "sync_slow"])
    assert alerts.transitions(["stale"], []) == ([], ["stale"])


@pytest.fixture
def client() -> redis.Redis:
    return fakeredis.FakeRedis()


def transition_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "tokenwatch.alerts"]


def test_a_standing_alert_is_logged_once_when_raised_and_once_when_cleared(
        client: redis.Redis, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="tokenwatch.alerts")
    slow = alerts.evaluate(healthy(last_phase_ms={"total": 12_000.0}), LIMITS)

    first = alerts.track(client, slow, NOW)
    assert (first.raised, first.cleared, first.since) == (["sync_slow"], [], {"sync_slow": NOW})
    for minute in range(1, 4):  # still slow: evaluated every minute, logged never again
        again = alerts.track(client, slow, NOW + minute * 60_000)
        assert (again.raised, again.cleared, again.since) == ([], [], {"sync_slow": NOW})
    assert set(alerts.standing(client)) == {"sync_slow"}

    cleared = alerts.track(client, [], NOW + 300_000)
    assert (cleared.raised, cleared.cleared) == ([], ["sync_slow"])
    assert alerts.track(client, [], NOW + 360_000).cleared == []
    assert alerts.standing(client) == {}

    assert transition_lines(caplog) == [
        "ALERT raised: sync_slow: last sync took 12 s (threshold 10 s)",
        "ALERT cleared: sync_slow (stood 5 min)",
    ]


def test_two_evaluators_log_a_transition_once_between_them(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="tokenwatch.alerts")
    server = fakeredis.FakeServer()
    cli, beat = fakeredis.FakeRedis(server=server), fakeredis.FakeRedis(server=server)
    stale = alerts.evaluate(healthy(last_good_ms=NOW - 900_000), LIMITS)
    assert alerts.track(cli, stale, NOW).raised == ["stale"]
    assert alerts.track(beat, stale, NOW + 1).raised == []
    assert alerts.track(beat, [], NOW + 2).cleared == ["stale"]
    assert alerts.track(cli, [], NOW + 3).cleared == []
    assert [line.split(":")[0] for line in transition_lines(caplog)] == ["ALERT raised", "ALERT cleared"]


def test_a_raise_lost_to_another_evaluator_logs_nothing(
        client: redis.Redis, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    caplog.set_level(logging.INFO, logger="tokenwatch.alerts")
    slow = alerts.evaluate(healthy(last_phase_ms={"total": 12_000.0}), LIMITS)
    # The other evaluator writes between our read of the standing set and our HSETNX.
    real_standing = alerts.standing

    def racing(c: redis.Redis) -> dict[str, dict[str, object]]:
        seen = real_standing(c)
        c.hset(alerts.ALERTS_KEY, "sync_slow", b'{"since": 1}')
        return seen

    monkeypatch.setattr(alerts, "standing", racing)
    assert alerts.track(client, slow, NOW).raised == []
    assert transition_lines(caplog) == []


def test_an_unreadable_record_still_counts_as_standing(client: redis.Redis) -> None:
    client.hset(alerts.ALERTS_KEY, "api_slow", b"not json")
    assert alerts.standing(client) == {"api_slow": {}}
    assert alerts.track(client, [], NOW).cleared == ["api_slow"]


def test_percentiles_and_the_hour_summary() -> None:
    assert health.percentile([], 50) is None
    values = [float(v) for v in range(1, 21)]  # 1..20
    assert health.percentile(values, 50) == 10.0
    assert health.percentile(values, 95) == 19.0
    assert health.percentile([7.0], 95) == 7.0
    runs = [("ok", 100.0), ("baseline", 300.0), ("suspect", 200.0), ("failed", 9_000.0), ("skipped", 1.0)]
    assert health.hour_stats(runs) == {
        "syncs": 5, "good": 3, "failed": 1, "skipped": 1, "success_pct": 75.0, "p50_ms": 200.0, "p95_ms": 300.0,
    }
    assert health.hour_stats([])["success_pct"] is None


def test_only_a_worker_reports_its_memory_with_a_ttl(process_state: ProcessState, client: redis.Redis) -> None:
    settings = load_settings()
    process_state.redis_clients[settings.redis_config()] = client
    worker_memory.report(settings, process_state)
    assert worker_memory.worker_rss(client) == {}  # the CLI is no worker
    process_state.worker_name = "tokenwatch@box"
    worker_memory.report(settings, process_state)
    (name, rss), = worker_memory.worker_rss(client).items()
    assert name.startswith("tokenwatch@box-")
    assert 10 * MIB < rss < 4096 * MIB
    ttl = client.ttl(worker_memory.WORKER_RSS_PREFIX + name)
    assert 0 < ttl <= settings.sync_interval_s * worker_memory.RSS_TTL_INTERVALS


def test_sync_and_cache_metrics_count_in_process() -> None:
    def value(name: str, labels: dict[str, str]) -> float:
        return REGISTRY.get_sample_value(name, labels) or 0.0

    before = (value("tokenwatch_syncs_total", {"outcome": "ok"}),
              value("tokenwatch_syncs_total", {"outcome": "skipped"}),
              value("tokenwatch_sync_phase_seconds_count", {"phase": "total"}),
              value("tokenwatch_sync_phase_seconds_sum", {"phase": "api"}),
              value("tokenwatch_cache_hits_total", {"layer": "snapshot"}),
              value("tokenwatch_cache_misses_total", {"layer": "redis"}))
    metrics.record_sync(SyncStatus.OK, {"api": 250.0, "total": 900.0})
    metrics.record_sync(SyncStatus.SKIPPED, {"total": 3.0})  # counted, but its times are not observed
    metrics.record_cache_access("snapshot", True)
    metrics.record_cache_access("redis", False)
    after = (value("tokenwatch_syncs_total", {"outcome": "ok"}),
             value("tokenwatch_syncs_total", {"outcome": "skipped"}),
             value("tokenwatch_sync_phase_seconds_count", {"phase": "total"}),
             value("tokenwatch_sync_phase_seconds_sum", {"phase": "api"}),
             value("tokenwatch_cache_hits_total", {"layer": "snapshot"}),
             value("tokenwatch_cache_misses_total", {"layer": "redis"}))
    assert [round(a - b, 6) for a, b in zip(after, before, strict=True)] == [1, 1, 1, 0.25, 1, 1]


def test_skipped_syncs_in_a_row_raise_their_own_alert() -> None:
    assert names(healthy(skipped_streak=2)) == []
    (alert,) = alerts.evaluate(healthy(skipped_streak=3), LIMITS)
    assert (alert.name, alert.value, alert.threshold) == ("sync_skipped", 3, 3)
    assert alert.message == ("the last 3 syncs were skipped: another sync held the lock each time (threshold 3)")
