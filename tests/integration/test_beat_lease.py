"""Several beats on one Redis, as several nodes run them: exactly one schedules (redbeat's lease), another takes
over when the holder dies, and a beat that loses Redis waits for it instead of dying. Real beat processes, a real
redis-server; no worker runs, so every tick beat sends stays in the queue to be counted."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from tests.conftest import Stack
from tokenwatch.embedded import EmbeddedRedis
from tokenwatch.tasks.names import SYNC, Queue

pytestmark = pytest.mark.integration

INTERVAL_S = 3  # the lease is one interval (3 s here), renewed every second


def sync_ticks(client: redis.Redis) -> int:
    """How many sync messages beat has queued (no worker consumes them here)."""
    messages: list[bytes] = client.lrange(Queue.FETCH.value, 0, -1)  # type: ignore[assignment]
    return sum(1 for m in messages if json.loads(m)["headers"]["task"] == SYNC)


def start_beat(stack: Stack, name: str) -> subprocess.Popen[bytes]:
    stack.start(name, "beat", "--loglevel=INFO", ready="beat: Starting...")
    return stack.processes[-1]


def beat_health(stack: Stack) -> int:
    """Exit status of the beat container's health check."""
    return subprocess.run([sys.executable, "-m", "tokenwatch.workers.beat"], env=stack.env, check=False,
                          timeout=30).returncode


def log_of(stack: Stack, name: str) -> str:
    return (stack.workdir / f"{name}.log").read_text(errors="replace")


def wait_for(predicate: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")


@pytest.fixture
def beats(stack: Stack) -> Iterator[Stack]:
    stack.env["TOKENWATCH_SYNC_INTERVAL_S"] = str(INTERVAL_S)
    yield stack
    for process in stack.processes:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)


def test_two_beats_schedule_once_and_the_second_takes_over_when_the_holder_dies(
    beats: Stack, redis_client: redis.Redis,
) -> None:
    first = start_beat(beats, "beat-a")
    wait_for(lambda: "beat: Acquired lock" in log_of(beats, "beat-a"), 15, "the first beat's lease")
    second = start_beat(beats, "beat-b")
    time.sleep(1)
    start = sync_ticks(redis_client)
    time.sleep(4 * INTERVAL_S)
    both_running = sync_ticks(redis_client) - start
    assert 3 <= both_running <= 5, both_running  # one tick an interval, not two
    assert "beat: Acquired lock" not in log_of(beats, "beat-b")

    os.killpg(first.pid, signal.SIGKILL)
    killed_at = time.monotonic()
    before = sync_ticks(redis_client)
    wait_for(lambda: sync_ticks(redis_client) > before, 3 * INTERVAL_S, "a tick from the second beat")
    takeover_s = time.monotonic() - killed_at
    assert "beat: Acquired lock" in log_of(beats, "beat-b")
    start = sync_ticks(redis_client)
    time.sleep(4 * INTERVAL_S)
    alone = sync_ticks(redis_client) - start
    assert 3 <= alone <= 5, alone
    assert second.poll() is None
    assert beat_health(beats) == 0  # the container health check: some beat holds the lease
    os.killpg(second.pid, signal.SIGKILL)
    time.sleep(INTERVAL_S + 1)
    assert beat_health(beats) == 1  # nobody schedules
    print(f"\nsecond beat scheduling {takeover_s:.1f} s after the holder was killed (interval {INTERVAL_S} s)")


def test_a_beat_that_loses_redis_waits_for_it_and_schedules_again(beats: Stack, tmp_path: Path) -> None:
    # A Redis of this test's own, to take away and bring back.
    server = EmbeddedRedis(str(tmp_path / "own.sock"), str(tmp_path / "own")).start()
    try:
        beats.env["TOKENWATCH_REDIS_URL"] = server.url
        beat = start_beat(beats, "beat")
        client = redis.Redis(unix_socket_path=server.socket_path)
        wait_for(lambda: sync_ticks(client) >= 1, 3 * INTERVAL_S, "the first tick")
        assert server.process is not None
        server.process.kill()  # no save: the lease is gone with it
        server.process.wait()
        time.sleep(2 * INTERVAL_S)  # longer than the lease
        server.start()
        client = redis.Redis(unix_socket_path=server.socket_path)
        before = sync_ticks(client)
        wait_for(lambda: sync_ticks(client) > before, 4 * INTERVAL_S, "ticks after Redis came back")
        assert beat.poll() is None, log_of(beats, "beat")[-3000:]
        log = log_of(beats, "beat")
        assert log.count("beat: Redis unreachable") == 1, log[-3000:]  # one line for the outage, not one a tick
        assert "Traceback" not in log, log[-3000:]
    finally:
        server.stop()
