"""`tokenwatch status` after a restart: only live workers, and failures an operator acknowledged stop counting.

Real processes: Celery workers (prefork) killed with SIGKILL, the Redis server, SQLite, the simulator, the CLI.
"""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Iterator
from typing import Any

import pytest

from tests.conftest import Stack
from tokenwatch.health import ACK_KEY
from tokenwatch.simulator import Simulator
from tokenwatch.worker_memory import WORKER_RSS_PREFIX

pytestmark = pytest.mark.integration


@pytest.fixture
def sim() -> Iterator[Simulator]:
    with Simulator(port=0, contracts=40, seed=17) as simulator:
        yield simulator


def status(stack: Stack, *args: str) -> tuple[int, dict[str, Any], str]:
    result = stack.tokenwatch("status", "--json", *args)
    assert result.stdout.strip(), result.stderr[-2000:]
    return result.returncode, json.loads(result.stdout), result.stderr


def test_status_lists_live_workers_only(stack: Stack, sim: Simulator) -> None:
    stack.env["TOKENWATCH_KUCOIN_URL"] = sim.url
    stack.start_worker(name="first")
    assert stack.sync()["status"] == "baseline"
    code, report, _ = status(stack)
    assert code == 0
    (live,) = report["workers"]["live"]
    assert live.startswith("first@")
    assert [name.rsplit("-", 1)[0] for name in report["workers"]["rss_bytes"]] == [live]

    # The previous run's worker dies outright: its memory report stays in Redis for minutes.
    os.killpg(stack.processes[-1].pid, signal.SIGKILL)
    stack.processes[-1].wait(10)
    assert list(stack.redis.scan_iter(match=WORKER_RSS_PREFIX + "first@*"))
    stack.start_worker(name="second")
    assert stack.sync()["status"] == "ok"

    code, report, _ = status(stack)
    assert code == 0
    (live,) = report["workers"]["live"]
    assert live.startswith("second@")
    assert {name.rsplit("-", 1)[0] for name in report["workers"]["rss_bytes"]} == {live}
    text = stack.tokenwatch("status")
    assert f"workers: 1 live ({live})" in text.stdout
    assert "first@" not in text.stdout


def test_status_ack_restarts_the_failure_window(stack: Stack, sim: Simulator) -> None:
    stack.env["TOKENWATCH_KUCOIN_URL"] = sim.url
    assert stack.sync("--inline")["status"] == "baseline"
    sim.inject("not_json", count=1)
    assert stack.sync("--inline")["status"] == "failed"
    code, report, _ = status(stack)
    assert code == 2
    assert [a["name"] for a in report["alerts"]] == ["failure_rate"]
    assert report["last_hour"]["syncs"] == 2 and report["last_hour"]["acked_at"] is None

    code, report, stderr = status(stack, "--ack")
    assert code == 0, report["alerts"]
    assert "failures acknowledged at" in stderr
    acked = int(stack.redis.get(ACK_KEY) or 0)
    assert report["last_hour"]["acked_at"] == acked == report["last_hour"]["from_ms"]
    assert report["last_hour"]["syncs"] == 0  # the window says how many syncs it counted
    text = stack.tokenwatch("status")
    assert text.returncode == 0
    assert "since the ack at" in text.stdout and ": 0 syncs" in text.stdout

    assert stack.sync("--inline")["status"] == "ok"
    sim.inject("not_json", count=1)
    assert stack.sync("--inline")["status"] == "failed"
    code, report, _ = status(stack)  # a failure after the ack counts again
    assert code == 2
    assert report["last_hour"]["syncs"] == 2 and report["last_hour"]["failed"] == 1
    (alert,) = report["alerts"]
    assert "since the ack" in alert["message"] and "(1 of 2;" in alert["message"]

    stack.env["TOKENWATCH_REDIS_URL"] = "redis://127.0.0.1:9/0"  # nothing there: nowhere to keep the ack
    refused = stack.tokenwatch("status", "--ack")
    assert refused.returncode == 1
    assert refused.stderr.strip().splitlines() == [
        "tokenwatch: cannot acknowledge: Redis unreachable at redis://127.0.0.1:9/0 (ConnectionError)"]
