"""`tokenwatch status`, the check_alerts task and the Prometheus endpoint, after real syncs.

Real processes throughout: a Celery worker (prefork), the Redis server, SQLite files, the simulator, and for
the metrics `tokenwatch run` itself, scraped over HTTP.
"""

from __future__ import annotations

import json
import math
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import Stack
from tokenwatch.simulator import Simulator

pytestmark = pytest.mark.integration

TINY = "0.000001"  # seconds: every sync is slower than this


@pytest.fixture
def sim() -> Iterator[Simulator]:
    with Simulator(port=0, contracts=120, seed=11) as simulator:
        yield simulator


def status(stack: Stack, *args: str, **env: str) -> tuple[int, dict[str, Any], str]:
    """`tokenwatch status --json` with extra env: (exit status, report, stderr)."""
    saved = dict(stack.env)
    stack.env.update(env)
    try:
        result = stack.tokenwatch("status", "--json", *args)
    finally:
        stack.env.clear()
        stack.env.update(saved)
    assert result.stdout.strip(), result.stderr[-2000:]
    return result.returncode, json.loads(result.stdout), result.stderr


def nearest_rank(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[max(math.ceil(q / 100 * len(ordered)), 1) - 1]


def wait_for_log(stack: Stack, name: str, text: str, count: int, timeout: float = 30) -> str:
    log = stack.workdir / f"{name}.log"
    deadline = time.monotonic() + timeout
    content = ""
    while time.monotonic() < deadline:
        content = log.read_text(errors="replace")
        if content.count(text) >= count:
            return content
        time.sleep(0.2)
    raise AssertionError(f"{text!r} not seen {count} times in {name}.log:\n{content[-3000:]}")


def celery_call(stack: Stack, task: str) -> None:
    stack.start("call", "call", task)
    assert stack.processes[-1].wait(30) == 0


@pytest.mark.usefixtures("database_url")  # on SQLite and PostgreSQL
def test_status_after_real_syncs_and_alerts_raised_and_cleared_once(stack: Stack, sim: Simulator) -> None:
    stack.env["TOKENWATCH_KUCOIN_URL"] = sim.url
    # The worker's own thresholds: its check_alerts task sees every write as slow.
    stack.env["TOKENWATCH_ALERT_WRITE_S"] = TINY
    stack.start_worker()
    del stack.env["TOKENWATCH_ALERT_WRITE_S"]

    assert stack.sync()["status"] == "baseline"
    listed = sim.list_new(2)
    gone = next(s for s in sim.symbols() if sim.contract(s)["type"] == "FFWCSX")  # a perpetual
    sim.delist([gone])
    assert stack.sync()["counts"]["listed"] == 2
    last = stack.sync()
    assert last["status"] == "ok"

    code, report, stderr = status(stack)
    assert code == 0, (report["alerts"], stderr)
    assert report["alerts"] == []
    db_counts = dict(stack.query("SELECT status, count(*) FROM tokens GROUP BY status"))
    new = stack.query("SELECT count(*) FROM tokens WHERE is_new")[0][0]
    assert report["tokens"] == {"active": db_counts["active"], "delisted": db_counts["delisted"], "new": new}
    assert new == len(listed) == 2
    assert (report["tokens"]["active"], report["tokens"]["delisted"]) == (121, 1)
    runs = stack.query("SELECT sync_id, status, total_ms FROM sync_runs ORDER BY finished_at DESC")
    assert [r["sync_id"] for r in report["recent"]] == [r[0] for r in runs]
    assert [r["status"] for r in report["recent"]] == ["ok", "ok", "baseline"]
    assert set(report["recent"][0]["timings_ms"]) == {"api", "db_load", "process", "batch_write", "cache", "total"}
    assert report["recent"][0]["timings_ms"]["total"] == runs[0][2]
    totals = [r[2] for r in runs]
    hour = report["last_hour"]
    assert hour.pop("from_ms") == report["now_ms"] - 3_600_000 and hour.pop("acked_at") is None
    assert hour == {"syncs": 3, "good": 3, "failed": 0, "skipped": 0, "success_pct": 100.0,
                    "p50_ms": nearest_rank(totals, 50), "p95_ms": nearest_rank(totals, 95)}
    assert report["last_good"]["sync_id"] == last["sync_id"]
    assert 0 <= report["last_good"]["age_ms"] < 60_000
    assert report["queues"] == {"fetch": 0, "db": 0}
    (worker, rss), = report["workers"]["rss_bytes"].items()  # the pool process that ran the writes
    assert worker.startswith("worker@")
    assert 20 * 2**20 < rss < 2**31
    assert report["redis_error"] is None

    text = stack.tokenwatch("status")
    assert text.returncode == 0
    assert "tokens: 121 active, 2 new, 1 delisted" in text.stdout
    assert "last hour: 3 syncs (3 good, 0 failed, 0 skipped), success 100.0%" in text.stdout
    assert "queues: fetch 0, db 0" in text.stdout
    assert text.stdout.count(last["sync_id"]) == 2  # the last good sync, and the first row of the table
    assert "alerts: none" in text.stdout

    # The beat task, run twice by the worker with its tiny write threshold: raised once, in the worker's log.
    celery_call(stack, "tokenwatch.check_alerts")
    celery_call(stack, "tokenwatch.check_alerts")
    log = wait_for_log(stack, "worker", "Task tokenwatch.check_alerts[", 4)  # received + succeeded, twice
    assert log.count("ALERT raised: write_slow: last database write took") == 1
    assert set(stack.redis.hgetall("tokenwatch:alerts")) == {b"write_slow"}
    # The CLI, with the default thresholds, sees it clear and says so once.
    code, report, stderr = status(stack)
    assert (code, report["alerts"]) == (0, [])
    assert stderr.count("ALERT cleared: write_slow") == 1

    code, report, stderr = status(stack, TOKENWATCH_ALERT_SYNC_S=TINY)
    assert code == 2
    assert [a["name"] for a in report["alerts"]] == ["sync_slow"]
    assert report["alerts"][0]["value"] == pytest.approx(runs[0][2] / 1000)
    since = report["alerts"][0]["since"]
    assert stderr.count("ALERT raised: sync_slow") == 1
    code, report, stderr = status(stack, TOKENWATCH_ALERT_SYNC_S=TINY)
    assert code == 2
    assert report["alerts"][0]["since"] == since
    assert "ALERT" not in stderr  # still standing: nothing logged again
    code, report, stderr = status(stack)
    assert (code, report["alerts"]) == (0, [])
    assert stderr.count("ALERT cleared: sync_slow") == 1
    assert stack.redis.hgetall("tokenwatch:alerts") == {}

    # A failed sync: one in four of the last hour, above 5%.
    sim.inject("not_json", count=1)
    assert stack.sync()["status"] == "failed"
    code, report, stderr = status(stack)
    assert code == 2
    assert report["last_hour"]["failed"] == 1
    assert report["last_hour"]["success_pct"] == 75.0
    assert [a["name"] for a in report["alerts"]] == ["failure_rate"]
    assert "ALERT raised: failure_rate: 25.0% of syncs failed in the last hour (1 of 4; threshold 5%)" in stderr


def test_status_shows_queue_depths_and_survives_an_unreachable_redis(stack: Stack, sim: Simulator) -> None:
    stack.env["TOKENWATCH_KUCOIN_URL"] = sim.url
    celery_call(stack, "tokenwatch.sync")  # no worker: the messages wait
    celery_call(stack, "tokenwatch.sync")
    assert stack.tokenwatch("db", "upgrade").returncode == 0  # the registry, created as `tokenwatch run` does
    code, report, _ = status(stack)
    assert code == 0  # nothing recorded yet: no alert
    assert report["queues"] == {"fetch": 2, "db": 0}
    assert report["recent"] == []
    assert report["last_good"] is None
    assert report["workers"] == {"live": [], "rss_bytes": {}, "max_rss_bytes": None}

    gone = str(stack.workdir / "no-redis.sock")
    code, report, stderr = status(stack, TOKENWATCH_REDIS_URL="unix://" + gone)
    assert code == 2, stderr  # no broker, no cache: an alert, though the registry never synced
    assert [a["name"] for a in report["alerts"]] == ["redis_unreachable"]
    assert report["queues"] is None
    assert report["workers"] is None
    assert report["redis_error"].startswith(f"Redis unreachable at unix://{gone}")
    stack.env["TOKENWATCH_REDIS_URL"] = "unix://" + gone
    text = stack.tokenwatch("status")
    assert text.returncode == 2
    assert "Redis unreachable" in text.stdout
    assert "queue depths and worker memory unknown" in text.stdout


# ---- metrics --------------------------------------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def scrape(port: int) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
        text = answer.read().decode()
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def sample(samples: dict[tuple[str, frozenset[tuple[str, str]]], float], metric: str, /, **labels: str) -> float:
    return samples[(metric, frozenset(labels.items()))]


def test_tokenwatch_run_serves_the_registry_metrics(stack: Stack, sim: Simulator) -> None:
    port = _free_port()
    stack.env.update({"TOKENWATCH_KUCOIN_URL": sim.url, "TOKENWATCH_METRICS_PORT": str(port),
                      "TOKENWATCH_FLOWER_PORT": str(_free_port())})
    log = (stack.workdir / "run.log").open("wb")
    run = subprocess.Popen([sys.executable, "-m", "tokenwatch.cli", "run"], cwd=stack.workdir, env=stack.env,
                           stdout=log, stderr=subprocess.STDOUT)
    stack.processes.append(run)
    try:
        # tokenwatch run starts one sync at once; wait for it, then make changes and sync again.
        rows = stack.wait_for("SELECT status FROM sync_runs", lambda rows: len(rows) >= 1, timeout=60)
        assert rows == [("baseline",)], (stack.workdir / "run.log").read_text()[-3000:]
        listed = sim.list_new(3)
        assert stack.sync()["counts"]["listed"] == 3

        first = scrape(port)
        assert sample(first, "tokenwatch_registry_up") == 1
        assert sample(first, "tokenwatch_redis_up") == 1
        assert sample(first, "tokenwatch_tokens", status="active") == 123
        assert sample(first, "tokenwatch_tokens", status="delisted") == 0
        assert sample(first, "tokenwatch_tokens_new") == 3
        assert sample(first, "tokenwatch_events_total", type="listed") == 3
        assert sample(first, "tokenwatch_events_total", type="delisted") == 0
        # Counted in the worker's pool process, merged from the multiprocess files by the endpoint.
        assert sample(first, "tokenwatch_syncs_total", outcome="baseline") == 1
        assert sample(first, "tokenwatch_syncs_total", outcome="ok") == 1
        runs = stack.query("SELECT total_ms, api_ms, finished_at, invalid FROM sync_runs ORDER BY finished_at")
        assert sample(first, "tokenwatch_sync_phase_seconds_count", phase="total") == 2
        assert sample(first, "tokenwatch_sync_phase_seconds_sum", phase="total") == pytest.approx(
            sum(r[0] for r in runs) / 1000)
        assert sample(first, "tokenwatch_sync_phase_seconds_sum", phase="api") == pytest.approx(
            sum(r[1] for r in runs) / 1000)
        assert sample(first, "tokenwatch_sync_phase_seconds_bucket", phase="total", le="+Inf") == 2
        assert sample(first, "tokenwatch_last_success_timestamp_seconds") == runs[-1][2] / 1000
        assert sample(first, "tokenwatch_invalid_contracts") == runs[-1][3]
        assert sample(first, "tokenwatch_queue_messages", queue="fetch") == 0
        assert sample(first, "tokenwatch_queue_messages", queue="db") == 0
        workers = [v for (name, _), v in first.items() if name == "tokenwatch_worker_rss_bytes"]
        assert len(workers) == 1
        assert workers[0] > 20 * 2**20
        assert all(sample(first, "tokenwatch_alert", name=n) == 0 for n in ("sync_slow", "stale", "worker_memory"))
        assert list((stack.workdir / "data" / "prometheus").glob("counter_*.db"))

        # The next scrape counts only what is new.
        sim.delist(listed[:1])
        assert stack.sync()["counts"]["delisted"] == 1
        second = scrape(port)
        assert sample(second, "tokenwatch_events_total", type="listed") == 3
        assert sample(second, "tokenwatch_events_total", type="delisted") == 1
        assert sample(second, "tokenwatch_tokens", status="delisted") == 1
        assert sample(second, "tokenwatch_syncs_total", outcome="ok") == 2
        assert sample(second, "tokenwatch_sync_phase_seconds_count", phase="batch_write") == 3
    finally:
        run.terminate()
        assert run.wait(15) == 0
        log.close()
    with pytest.raises(OSError):
        scrape(port)  # stopped with everything else


def test_queue_depths_count_every_priority_level(stack: Stack) -> None:
    from kombu import Connection, Queue

    from tokenwatch.cache.redis_client import to_kombu_url

    with Connection(to_kombu_url(stack.env["TOKENWATCH_REDIS_URL"])) as connection:
        producer = connection.Producer()
        for queue, priority in (("fetch", 0), ("fetch", 0), ("fetch", 9), ("db", 3)):
            producer.publish({"n": 1}, routing_key=queue, declare=[Queue(queue)], priority=priority)
    assert len(stack.redis.keys("fetch*")) == 2  # kombu keeps each priority level in a list of its own
    assert stack.tokenwatch("db", "upgrade").returncode == 0
    code, report, _ = status(stack)
    assert code == 0
    assert report["queues"] == {"fetch": 3, "db": 1}
