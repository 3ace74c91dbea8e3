"""A sync lock held by a sync that no longer runs is noticed and broken well before its TTL, the dead sync is
recorded, and skipped syncs past a threshold are an alert of their own."""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator

import pytest

from tests.conftest import Stack
from tokenwatch.cache import keys, lock
from tokenwatch.simulator import Simulator
from tokenwatch.steps import ABANDONED
from tokenwatch.tasks.names import Queue

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("invariants_checked")]


@pytest.fixture
def sim() -> Iterator[Simulator]:
    with Simulator(port=0, contracts=40, seed=29) as simulator:
        yield simulator


def wait_until(done: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if done():  # type: ignore[operator]
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def test_a_lock_left_by_a_dead_sync_is_broken_and_that_sync_recorded(stack: Stack, sim: Simulator) -> None:
    stack.env["TOKENWATCH_KUCOIN_URL"] = sim.url
    assert stack.sync("--inline")["status"] == "baseline"
    # What a sync whose worker was killed leaves behind: the lock, with most of its TTL to run, and nothing else.
    stack.redis.set(keys.SYNC_LOCK, "dead-sync", ex=lock.LOCK_TTL_S)

    result = stack.tokenwatch("sync", "--inline", "--json")

    outcome = json.loads(result.stdout)
    assert outcome["status"] == "ok", outcome["error"]
    assert "sync lock held by dead-sync, which is not running (no heartbeat): broken" in result.stderr
    assert stack.query("SELECT status, error FROM sync_runs WHERE sync_id = 'dead-sync'") == [
        ("failed", "abandoned: the sync stopped running (its worker died?) and its lock was broken")]
    assert lock.holder(stack.redis) is None


def test_a_sync_whose_worker_is_killed_does_not_block_the_next_for_the_lock_ttl(stack: Stack, sim: Simulator) -> None:
    stack.env["TOKENWATCH_KUCOIN_URL"] = sim.url
    stack.start_worker()
    assert stack.sync()["status"] == "baseline"
    sim.inject("delay", seconds=60)  # the next fetch hangs: its worker is killed in the middle
    stack.start("call", "call", "tokenwatch.sync")
    wait_until(lambda: lock.holder(stack.redis) is not None, 20, "the sync to take the lock")
    victim = lock.holder(stack.redis)
    worker = stack.processes[0]
    os.killpg(worker.pid, signal.SIGKILL)  # the whole worker: main process and pool child
    worker.wait(10)
    sim.clear_faults()
    assert stack.redis.ttl(keys.SYNC_LOCK) > 200  # left behind with most of its TTL

    stack.start_worker(name="second")
    started = time.monotonic()
    outcome = stack.sync()
    while outcome["status"] == "skipped" and time.monotonic() - started < 60:
        time.sleep(2)
        outcome = stack.sync()
    waited = time.monotonic() - started

    assert outcome["status"] == "ok", outcome
    assert waited < 60, f"the next sync waited {waited:.0f} s"  # not the lock's 300 s
    assert stack.query("SELECT status FROM sync_runs WHERE sync_id = ?", victim) == [("failed",)]


def test_skipped_syncs_past_the_threshold_raise_an_alert(stack: Stack, sim: Simulator) -> None:
    stack.env["TOKENWATCH_KUCOIN_URL"] = sim.url
    assert stack.sync("--inline")["status"] == "baseline"
    assert lock.acquire(stack.redis, "someone-else")  # a live holder: it beats, so it is not broken
    for _ in range(3):
        assert stack.sync("--inline")["status"] == "skipped"
    result = stack.tokenwatch("status", "--json")
    report = json.loads(result.stdout)
    assert result.returncode == 2
    assert [a["name"] for a in report["alerts"]] == ["sync_skipped"]
    assert report["alerts"][0]["message"].startswith("the last 3 syncs were skipped")
    assert lock.release(stack.redis, "someone-else")
    assert stack.sync("--inline")["status"] == "ok"
    assert json.loads(stack.tokenwatch("status", "--json").stdout)["alerts"] == []


def test_a_sync_whose_next_step_is_lost_holds_the_lock_one_handoff_window(stack: Stack, sim: Simulator) -> None:
    """A handed-off message can vanish: a node cut off from Redis while it held one, or the reply to its
    pending BRPOP. Its sync is then dead, and the next syncs are skipped only until its handoff window ends."""
    stack.env["TOKENWATCH_KUCOIN_URL"] = sim.url
    assert stack.sync("--inline")["status"] == "baseline"
    stack.start_worker(queues="fetch")  # nobody consumes db: the sync's write waits there...
    stack.start("call", "call", "tokenwatch.sync")
    wait_until(lambda: stack.redis.llen(Queue.DB.value) == 1, 30, "the sync's write message")
    lost = lock.holder(stack.redis)
    assert lost is not None
    stack.redis.delete(Queue.DB.value)  # ...and is lost, as if the cut-off node had taken it
    started = time.monotonic()

    outcome = stack.sync("--inline")
    while outcome["status"] == "skipped" and time.monotonic() - started < 90:
        time.sleep(0.5)
        outcome = stack.sync("--inline")
    waited = time.monotonic() - started

    assert outcome["status"] == "ok", outcome
    # A few ticks of a short interval, not the minute a message used to be allowed to wait.
    assert waited < 15, f"the next good sync waited {waited:.0f} s"
    assert stack.query("SELECT status, error FROM sync_runs WHERE sync_id = ?", lost) == [("failed", ABANDONED)]
