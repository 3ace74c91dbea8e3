"""Orderings nobody named: a write that fails while another writer commits the same revision number, and two
builds on one base revision in one process. The in-process registry must never stand in for a commit that
did not happen: no invented event, no listing lost."""

from __future__ import annotations

import re
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from tests.conftest import Stack
from tests.steps_support import run_steps, step_context
from tokenwatch import pipeline, steps
from tokenwatch.cache import keys, lock
from tokenwatch.process import ProcessState
from tokenwatch.settings import Settings
from tokenwatch.simulator import Simulator
from tokenwatch.syncstate import SyncState

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("invariants_checked")]

LOCK_RETRY_LOG = r"database is locked, retrying in (\d\.\d\d) s \(attempt (\d) of 5\)"


@pytest.fixture
def sim() -> Iterator[Simulator]:
    with Simulator(port=0, contracts=50, seed=31) as simulator:
        yield simulator


def history(stack: Stack) -> list[tuple[str, str]]:
    return [(s, e) for s, e in stack.query("SELECT symbol, event_type FROM token_history ORDER BY id")]


def wait_log(stack: Stack, pattern: str, count: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if len(re.findall(pattern, (stack.workdir / "worker.log").read_text(errors="replace"))) >= count:
            return
        time.sleep(0.1)
    raise AssertionError(f"{count} x {pattern!r} not seen in the worker's log")


def test_a_failed_write_then_another_writers_same_revision_invents_no_relisting(stack: Stack,
                                                                                sim: Simulator) -> None:
    stack.env["TOKENWATCH_KUCOIN_URL"] = sim.url
    stack.start_worker()
    assert stack.sync()["status"] == "baseline"  # the worker's process keeps the registry it committed
    gone = next(s for s in sim.symbols() if sim.contract(s)["type"] == "FFWCSX")
    sim.delist([gone])

    holder = sqlite3.connect(stack.db_path, timeout=10, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # a backup, an operator's shell: the worker's write cannot commit
    failing = subprocess.Popen([sys.executable, "-m", "tokenwatch.cli", "sync", "--json"], env=stack.env,
                               cwd=stack.workdir, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_log(stack, LOCK_RETRY_LOG, count=6, timeout=40)  # both retry windows spent: the write failed
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    out, err = failing.communicate(timeout=60)
    assert '"status": "failed"' in out, out + err

    sim.relist([gone])  # it was never delisted, as far as the registry knows
    other = stack.sync("--inline")  # another writer commits revision 2
    assert (other["status"], sum(other["counts"][k] for k in ("listed", "delisted", "relisted"))) == ("ok", 0)

    again = stack.sync()  # the worker again: it must not trust what it built for the write that failed
    assert again["status"] == "ok"
    assert again["counts"]["relisted"] == 0
    assert history(stack) == []
    assert stack.query("SELECT status FROM tokens WHERE symbol = ?", gone) == [("active",)]


def settings_of(stack: Stack) -> Settings:
    values = {k.removeprefix("TOKENWATCH_").lower(): v for k, v in stack.env.items() if k.startswith("TOKENWATCH_")}
    return Settings(**values)


@pytest.mark.parametrize("first", ["later build", "earlier build"])
def test_two_builds_on_one_base_in_one_process_lose_no_listing(stack: Stack, sim: Simulator,
                                                               process_state: ProcessState, first: str) -> None:
    stack.env["TOKENWATCH_KUCOIN_URL"] = sim.url
    settings = settings_of(stack)
    ctx = step_context(settings, stack.redis)
    assert pipeline.run_inline(ctx).status == "baseline"
    listed = sim.list_new(1)
    # Build A holds the lock; its write waits in a stalled db queue past the lock's TTL (the lock lapses)...
    a = run_steps(ctx, SyncState.new(), steps.fetch, steps.diff)
    assert lock.release(stack.redis, a.sync_id)
    time.sleep(0.01)
    # ... and build B, in the same process, starts from the same base revision.
    b = run_steps(ctx, SyncState.new(), steps.fetch, steps.diff)
    order = (b, a) if first == "later build" else (a, b)

    done = [run_steps(ctx, state, steps.write) for state in order]

    assert [state.status for state in done] == ["ok", "skipped"]
    assert done[1].error == "plan built on revision 1, registry is at 2"
    assert history(stack) == [(listed[0], "listed")]
    assert stack.query("SELECT status FROM tokens WHERE symbol = ?", listed[0]) == [("active",)]
    assert listed[0] in {k.decode() for k in stack.redis.hkeys(keys.TOKENS)}
    following = pipeline.run_inline(ctx)  # whatever this process keeps in memory, the next sync agrees
    assert (following.status, following.counts["listed"], following.counts["relisted"]) == ("ok", 0, 0)
    assert history(stack) == [(listed[0], "listed")]

