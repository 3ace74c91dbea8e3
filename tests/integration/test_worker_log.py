"""What a real worker's log says after syncs: each change by name, and no task result spelled out whole.

Real processes: a Celery worker (prefork) logging at INFO, the Redis server, a SQLite file, the simulator.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator

import pytest

from tests.conftest import Stack
from tokenwatch.simulator import Simulator

pytestmark = pytest.mark.integration


@pytest.fixture
def sim() -> Iterator[Simulator]:
    with Simulator(port=0, contracts=200, seed=13) as simulator:
        yield simulator


def worker_log(stack: Stack, text: str, timeout: float = 20) -> str:
    """The worker's log once it holds text (the last lines of a task may come a moment after the outcome)."""
    log = stack.workdir / "worker.log"
    deadline = time.monotonic() + timeout
    while True:
        content = log.read_text(errors="replace")
        if text in content or time.monotonic() > deadline:
            return content
        time.sleep(0.2)


def test_the_log_names_every_change_and_keeps_task_results_short(stack: Stack, sim: Simulator) -> None:
    stack.env["TOKENWATCH_KUCOIN_URL"] = sim.url
    stack.env["TOKENWATCH_MAX_DROP_PCT"] = "50"
    stack.start_worker()
    assert stack.sync()["status"] == "baseline"
    perpetuals = [s for s in sim.symbols() if sim.contract(s)["type"] == "FFWCSX"]
    delisted, paused, scheduled = perpetuals[:12], perpetuals[12:14], perpetuals[14:25]
    sim.delist(delisted)
    sim.pause(paused)
    sim.schedule_delisting(scheduled)
    (listed,) = sim.list_new(1)

    outcome = stack.sync()

    assert outcome["status"] == "ok", outcome
    counts = outcome["counts"]
    assert (counts["delisted"], counts["status_changed"], counts["delisting_scheduled"]) == (12, 2, 11)
    log = worker_log(stack, "more (delisting scheduled)")
    assert f"NEW LISTING: {listed}" in log
    named_delisted = re.findall(r"DELISTED: (\w+)", log)
    assert len(named_delisted) == 10 and set(named_delisted) <= set(delisted)
    assert "... and 2 more (delisted)" in log
    assert set(re.findall(r"STATUS CHANGED: (\w+)", log)) == set(paused)
    assert len(re.findall(r"DELISTING SCHEDULED: (\w+)", log)) == 10
    assert "... and 1 more (delisting scheduled)" in log

    succeeded = [line for line in log.splitlines() if " succeeded in " in line]
    assert len(succeeded) >= 6  # fetch, diff and write of both syncs
    for line in succeeded:
        assert len(line) < 250, line
        assert "'counts'" not in line and "'timings'" not in line, line
    assert any(f"sync {outcome['sync_id']} ok" in line for line in succeeded)
    assert "PERFORMANCE: total sync time" in log
