"""The waits between retried fetches are counted in the sync's `api` time, so `api_slow` sees a retry storm.

Real processes: the simulator answering two 503s (each asking, by Retry-After, for 0.6 s), the CLI as a
subprocess, and for the chain a real Celery worker and Redis server.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from tests.conftest import Stack
from tokenwatch.simulator import Simulator

pytestmark = pytest.mark.integration

WAIT_S = 0.6


@pytest.fixture
def sim() -> Iterator[Simulator]:
    with Simulator(port=0, contracts=40, seed=9) as simulator:
        yield simulator


@pytest.mark.parametrize("path", ["inline", "workers"])
def test_two_retried_503s_count_their_waits_in_api(stack: Stack, sim: Simulator, path: str) -> None:
    stack.env["TOKENWATCH_KUCOIN_URL"] = sim.url
    stack.env["TOKENWATCH_HTTP_RETRIES"] = "3"
    args = ("--inline",) if path == "inline" else ()
    if path == "workers":
        stack.start_worker()
    assert stack.sync(*args)["status"] == "baseline"
    sim.inject("http_status", status=503, count=2, headers={"Retry-After": str(WAIT_S)})

    outcome = stack.sync(*args)

    assert outcome["status"] == "ok", outcome
    assert sim.faults() == []  # both 503s were served
    timings = outcome["timings_ms"]
    assert timings["api"] >= 2 * WAIT_S * 1000, timings  # before: a few ms, the waits nowhere
    assert timings["api"] <= timings["total"]
    assert timings["api"] / timings["total"] > 0.5, timings
    # What sync_runs keeps and api_slow judges is the same time.
    stack.env["TOKENWATCH_ALERT_API_S"] = "1"
    result = stack.tokenwatch("status", "--json")
    assert result.returncode == 2, result.stderr[-2000:]
    report = json.loads(result.stdout)
    assert report["recent"][0]["timings_ms"]["api"] == pytest.approx(timings["api"], abs=0.01)
    assert "api_slow" in [alert["name"] for alert in report["alerts"]]
