"""Redis through Sentinel: the master is killed, a replica is promoted, syncs go on, and nothing is lost or doubled.

Real redis-server processes on loopback (a password-protected master and replica, three sentinels, quorum 2), a
real Celery worker and the CLI configured with sentinel:// only, the simulator as the exchange. Before the kill
the replica is cut off (stopped, its link closed), so the sync that follows exists on the master alone: its
events, the stream's cursor and the cache are lost with the master. The registry keeps its history, the next
sync re-publishes the lost tail (tokenwatch/outbox.py), and tests/invariants.py holds at the end.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from tests.conftest import ROOT, Stack
from tests.invariants import check_invariants
from tests.redis_servers import MASTER_NAME, PASSWORD, SentinelCluster, wait_until
from tokenwatch.cache import keys
from tokenwatch.cache.redis_client import RedisConfig, make_redis
from tokenwatch.simulator import Simulator
from tokenwatch.tasks.names import SYNC, Queue

pytestmark = pytest.mark.integration

CONTRACTS = 60
GOOD = ("ok", "baseline")
BEAT_INTERVAL_S = 3


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[SentinelCluster]:
    cluster = SentinelCluster(tmp_path / "redis").start()
    yield cluster
    cluster.stop()


@pytest.fixture
def sim() -> Iterator[Simulator]:
    with Simulator(port=0, contracts=CONTRACTS, seed=23) as simulator:
        yield simulator


@pytest.fixture
def node(cluster: SentinelCluster, sim: Simulator, tmp_path: Path) -> Iterator[Stack]:
    """One node's environment, configured with the sentinels only (never a data node's address)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOKENWATCH_")}
    env.update({
        "TOKENWATCH_REDIS_URL": cluster.url,
        "TOKENWATCH_REDIS_SENTINEL_MASTER": MASTER_NAME,
        "TOKENWATCH_DATABASE_URL": f"sqlite:///{tmp_path / 'tokens.db'}",
        "TOKENWATCH_DATA_DIR": str(tmp_path / "data"),
        "TOKENWATCH_KUCOIN_URL": sim.url,
        "TOKENWATCH_HTTP_RETRIES": "1",
        "PYTHONPATH": str(ROOT),
    })
    client = make_redis(RedisConfig(cluster.url, MASTER_NAME))
    stack = Stack(env=env, workdir=tmp_path, redis=client)
    yield stack
    for process in stack.processes:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)
    client.close()


class Script:
    """The exchange's scripted changes: one listing and one delisting a step, each to be recorded once."""

    def __init__(self, sim: Simulator) -> None:
        self.sim = sim
        self.listed: list[str] = []
        self.delisted: list[str] = []
        self._to_delist = [s for s in sim.symbols() if sim.contract(s)["type"] == "FFWCSX"]

    def step(self) -> None:
        self.listed += self.sim.list_new(1)
        symbol = self._to_delist.pop()
        self.sim.delist([symbol])
        self.delisted.append(symbol)


def history(stack: Stack, event_type: str) -> list[str]:
    return [row[0] for row in stack.query("SELECT symbol FROM token_history WHERE event_type = ?", event_type)]


def scripted_sync(stack: Stack, script: Script) -> dict[str, Any]:
    script.step()
    outcome = stack.sync("--timeout", "30")
    assert outcome["status"] == "ok", outcome
    assert (outcome["counts"]["listed"], outcome["counts"]["delisted"]) == (1, 1), outcome
    return outcome


def stream_length(client: redis.Redis) -> int:
    return int(client.xlen(keys.EVENTS))


def test_a_killed_master_is_replaced_and_syncs_go_on_with_nothing_lost_or_doubled(
    node: Stack, cluster: SentinelCluster, sim: Simulator,
) -> None:
    node.start_worker()
    script = Script(sim)
    assert node.sync("--timeout", "30")["status"] == "baseline"
    for _ in range(2):
        scripted_sync(node, script)

    # Cut the replica off: what the next sync writes to Redis exists on the master only.
    cluster.replica.kill(signal.SIGSTOP)
    cluster.client(cluster.master.port).client_kill_filter(_type="replica")
    scripted_sync(node, script)
    events = len(node.query("SELECT id FROM token_history"))
    assert stream_length(node.redis) == events

    cluster.master.kill()  # SIGKILL: no goodbye to anyone
    killed = time.monotonic()
    cluster.replica.kill(signal.SIGCONT)
    wait_until(lambda: cluster.master_port() == cluster.replica.port, 60, "the sentinels to promote the replica")
    promoted_s = time.monotonic() - killed
    # The promoted replica never got the last sync's events: the stream's tail is lost.
    lost = events - wait_until(lambda: stream_length(node.redis) or -1, 30, "the new master to answer")
    assert lost >= 2, lost

    # Syncs resume on the new master, found through the sentinels by the worker and the CLI alike.
    script.step()
    outcomes = []
    deadline = time.monotonic() + 120
    while not outcomes or outcomes[-1]["status"] not in GOOD:
        assert time.monotonic() < deadline, f"no good sync within 120 s of the promotion: {outcomes}"
        outcomes.append(node.sync("--timeout", "20"))
    resumed_s = time.monotonic() - killed
    for _ in range(2):
        scripted_sync(node, script)

    # Nothing lost, nothing doubled: every scripted change recorded once, the stream is the history again, and
    # the cache holds the active rows of the registry's revision.
    listed, delisted = history(node, "listed"), history(node, "delisted")
    assert sorted(listed) == sorted(script.listed), (listed, script.listed)
    assert sorted(delisted) == sorted(script.delisted), (delisted, script.delisted)
    active = {row[0] for row in node.query("SELECT symbol FROM tokens WHERE status = 'active'")}
    assert active == set(sim.symbols())
    revision = node.query("SELECT revision FROM registry_state")[0][0]
    assert int(node.redis.get(keys.VERSION) or -1) == revision
    check_invariants(node.db_path, node.redis)
    worker_log = (node.workdir / "worker.log").read_text(errors="replace")
    assert PASSWORD not in worker_log
    print(f"\npromoted {promoted_s:.1f} s after the kill; first good sync {resumed_s:.1f} s after it, "
          f"{len(outcomes)} attempts ({[o['status'] for o in outcomes]}); {lost} stream entries re-published")


def sync_ticks(client: redis.Redis) -> int:
    """How many sync messages beat has queued (no worker consumes them here)."""
    messages: list[bytes] = client.lrange(Queue.FETCH.value, 0, -1)  # type: ignore[assignment]
    return sum(1 for m in messages if json.loads(m)["headers"]["task"] == SYNC)


def beat_health(stack: Stack) -> int:
    """Exit status of the beat container's health check (some beat holds the schedule lease)."""
    return subprocess.run([sys.executable, "-m", "tokenwatch.workers.beat"], env=stack.env, check=False,
                          timeout=30).returncode


def test_beat_holds_its_lease_through_sentinel_and_schedules_again_after_a_failover(
    node: Stack, cluster: SentinelCluster,
) -> None:
    node.env["TOKENWATCH_SYNC_INTERVAL_S"] = str(BEAT_INTERVAL_S)
    node.start("beat", "beat", "--loglevel=INFO", ready="beat: Starting...")
    beat = node.processes[-1]
    wait_until(lambda: sync_ticks(node.redis) >= 1, 4 * BEAT_INTERVAL_S, "beat's first tick")
    assert beat_health(node) == 0

    cluster.master.kill()
    killed = time.monotonic()
    wait_until(lambda: cluster.master_port() == cluster.replica.port, 60, "the sentinels to promote the replica")
    before = wait_until(lambda: sync_ticks(node.redis) + 1, 30, "the new master to answer") - 1
    wait_until(lambda: sync_ticks(node.redis) > before, 10 * BEAT_INTERVAL_S, "a tick on the new master")
    scheduling_s = time.monotonic() - killed
    assert beat.poll() is None, (node.workdir / "beat.log").read_text(errors="replace")[-3000:]
    assert beat_health(node) == 0
    log = (node.workdir / "beat.log").read_text(errors="replace")
    assert "Traceback" not in log, log[-3000:]
    assert PASSWORD not in log
    print(f"\nbeat scheduling on the new master {scheduling_s:.1f} s after the kill")
