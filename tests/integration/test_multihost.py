"""Two nodes on two hosts, nothing to lose but the shared stores: a real multi-host run in network namespaces.

The store host runs Redis (with a password), a PostgreSQL cluster of the test's own and the simulator; hosts a
and b each run `tokenwatch run` as a node. One node's whole process tree is killed, later the other's cable is
pulled and plugged back. Through all of it: one sync per tick (skipped ones at most a quarter), every scripted
listing and delisting recorded exactly once and nothing else, the event stream equal to the history, and the
hot cache equal to the active rows.
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests import multihost
from tests.conftest import ROOT, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.multihost]

INTERVAL_S = 3.0
REDIS_PORT = 6390
PG_PORT = 5440
PASSWORD = "tw-multihost"


class Store:
    """The agent on the store host (tests/multihost_agent.py): the simulator and what the stores hold."""

    def __init__(self, hosts: multihost.Hosts, redis_url: str, database_url: str) -> None:
        self.process = hosts.start(hosts.store, [sys.executable, "-m", "tests.multihost_agent",
                                                 multihost.STORE_ADDRESS, redis_url, database_url],
                                   {**os.environ, "PYTHONPATH": str(ROOT)}, hosts.folder / "agent.log",
                                   stdin=subprocess.PIPE, stdout=subprocess.PIPE)

    def ask(self, op: str, **fields: Any) -> Any:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write((json.dumps({"op": op, **fields}) + "\n").encode())
        self.process.stdin.flush()
        line = self.process.stdout.readline()
        assert line, "the store agent stopped"
        return json.loads(line)



@pytest.fixture
def hosts() -> Iterator[multihost.Hosts]:
    reason = multihost.available()
    if reason is not None:
        pytest.skip(reason)
    made = multihost.Hosts(["a", "b"])
    try:
        yield made
    finally:
        made.close()


def test_two_nodes_survive_a_dead_host_and_a_cut_cable(hosts: multihost.Hosts) -> None:
    redis_url = f"redis://:{PASSWORD}@{multihost.STORE_ADDRESS}:{REDIS_PORT}/0"
    database_url = f"postgresql+psycopg://postgres@{multihost.STORE_ADDRESS}:{PG_PORT}/tokenwatch"
    hosts.start_redis(REDIS_PORT, PASSWORD)
    hosts.start_postgres(PG_PORT)
    store = Store(hosts, redis_url, database_url)
    exchange_url = store.ask("url")

    def start_node(name: str) -> Path:
        folder = hosts.folder / name
        folder.mkdir(exist_ok=True)
        env = {**os.environ, "TOKENWATCH_REDIS_URL": redis_url, "TOKENWATCH_DATABASE_URL": database_url,
               "TOKENWATCH_KUCOIN_URL": exchange_url, "TOKENWATCH_SYNC_INTERVAL_S": str(INTERVAL_S),
               "TOKENWATCH_NODE_NAME": name, "TOKENWATCH_DATA_DIR": str(folder / "data"),
               "TOKENWATCH_METRICS_PORT": "0", "TOKENWATCH_HTTP_TIMEOUT_S": "2", "TOKENWATCH_HTTP_RETRIES": "1"}
        log = folder / "run.log"
        seen = log.stat().st_size if log.exists() else 0  # a restarted node appends to its log
        hosts.start(hosts.nodes[name], [sys.executable, "-m", "tokenwatch.cli", "run"], env, log)
        # The worker's own " ready." line: a node counts once it can take syncs, not when its processes exist.
        wait_until(lambda: " ready." in log.read_bytes()[seen:].decode(errors="replace"), 90,
                   f"node {name}'s worker", poll=0.5)
        return log

    def syncs_after(count: int) -> Callable[[], bool]:
        return lambda: len(store.ask("state")["syncs"]) >= count

    def good_syncs() -> int:
        return sum(1 for sync in store.ask("state")["syncs"] if sync[2] in ("ok", "baseline"))

    def tick_over(ticks: int) -> None:
        """Let some beat ticks pass, and wait for a good sync after them: the scripted change is in."""
        time.sleep(ticks * INTERVAL_S)
        before = good_syncs()
        try:
            wait_until(lambda: good_syncs() > before, 12 * INTERVAL_S, "a good sync", poll=0.5)
        except AssertionError as exc:  # what the syncs said meanwhile is the whole story of a failure here
            recent = store.ask("state")["syncs"][-12:]
            raise AssertionError(f"{exc}; the last syncs (start ms, status, error): {recent}") from None

    start_node("a")
    start_node("b")
    wait_until(syncs_after(1), 60, "the baseline sync", poll=0.5)
    started_at = time.time() * 1000
    listed: list[str] = []
    delisted: list[str] = []

    listed += store.ask("list_new", count=3)
    tick_over(3)

    marks = {"killed a": time.time() * 1000}
    killed = hosts.kill_host("a")
    assert killed >= 4, f"node a ran only {killed} processes"
    delisted += store.ask("delist", symbols=store.ask("state")["exchange"][:2])
    tick_over(4)

    start_node("a")
    marks["restarted a"] = time.time() * 1000
    hosts.cut("b")
    marks["cut b"] = time.time() * 1000
    listed += store.ask("list_new", count=2)
    tick_over(4)
    delisted += store.ask("delist", symbols=[listed[0]])
    tick_over(2)
    hosts.heal("b")
    marks["healed b"] = time.time() * 1000
    listed += store.ask("list_new", count=1)
    tick_over(4)
    finished_at = time.time() * 1000

    state = store.ask("state")
    history, syncs = state["history"], state["syncs"]
    during = [sync for sync in syncs if started_at <= sync[1] <= finished_at]
    statuses = Counter(sync[2] for sync in during)
    ticks = (finished_at - started_at) / 1000 / INTERVAL_S
    print(f"\n{len(during)} syncs over {ticks:.0f} ticks: {dict(statuses)}; events {len(history)}")
    assert statuses["skipped"] <= len(during) / 4, f"too many skipped syncs: {dict(statuses)}"
    assert len(during) <= ticks * 1.25 + 2, f"more syncs than ticks: {len(during)} over {ticks:.0f} ticks"
    assert statuses["ok"] >= ticks / 2, f"too few good syncs: {dict(statuses)} over {ticks:.0f} ticks"
    timeline = sorted([(sync[1], f"{sync[2]} {sync[3] or ''}"[:90]) for sync in during] +
                      [(at, f"--- {what}") for what, at in marks.items()])
    print("\n".join(f"{(at - started_at) / 1000:6.1f} {what}" for at, what in timeline))
    starts = sorted(sync[1] for sync in during)
    gaps = [(b - a) / 1000 for a, b in itertools.pairwise(starts)]
    print(f"longest gap between syncs {max(gaps):.1f} s (interval {INTERVAL_S:g} s)")
    assert max(gaps) <= 3 * INTERVAL_S + 3, f"no sync for {max(gaps):.1f} s"

    events = Counter((row[1], row[2]) for row in history)
    assert {key: n for key, n in events.items() if key[1] in ("listed", "delisted", "relisted")} == \
        {**{(symbol, "listed"): 1 for symbol in listed}, **{(symbol, "delisted"): 1 for symbol in delisted}}
    assert [entry[1] for entry in state["stream"]] == [row[0] for row in history]
    assert {entry[0] for entry in state["stream"]} <= {state["registry"]}
    assert state["cache"] == state["active"] == state["exchange"]
