"""The whole pipeline through a real Celery worker, a real Redis server, a real SQLite file and the simulator."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from tests.conftest import Stack
from tokenwatch.simulator import Simulator

pytestmark = pytest.mark.integration


@pytest.fixture
def sim() -> Iterator[Simulator]:
    with Simulator(port=0, contracts=530, seed=7) as simulator:
        yield simulator


def _perpetuals(sim: Simulator, count: int) -> list[str]:
    symbols = [s for s in sim.symbols() if sim.contract(s)["type"] == "FFWCSX"]
    assert len(symbols) >= count
    return symbols[:count]


def _events(stack: Stack, sync_id: str) -> set[tuple[str, str]]:
    rows = stack.query("SELECT symbol, event_type FROM token_history WHERE sync_id = ?", sync_id)
    return {(symbol, event_type) for symbol, event_type in rows}


def _cache(stack: Stack) -> dict[str, dict[str, object]]:
    return {k.decode(): json.loads(v) for k, v in stack.redis.hgetall("tokenwatch:tokens").items()}


def test_scripted_scenario_on_530_contracts(stack: Stack, sim: Simulator) -> None:
    stack.env["TOKENWATCH_KUCOIN_URL"] = sim.url
    stack.start_worker()

    baseline = stack.sync()
    assert baseline["status"] == "baseline"
    assert baseline["counts"]["fetched"] == 530
    assert baseline["counts"]["active"] == 530
    assert baseline["error"] is None
    assert set(baseline["timings_ms"]) == {"api", "db_load", "process", "batch_write", "cache", "total"}
    assert stack.query("SELECT count(*) FROM tokens WHERE status = 'active'") == [(530,)]
    assert stack.query("SELECT count(*) FROM token_history") == [(0,)]
    assert len(_cache(stack)) == 530
    assert int(stack.redis.get("tokenwatch:tokens:version") or 0) == 1

    gone, paused, scheduled = _perpetuals(sim, 2), _perpetuals(sim, 3)[2], _perpetuals(sim, 4)[3]
    listed = sim.list_new(3)
    sim.delist(gone)
    sim.pause([paused])
    sim.schedule_delisting([scheduled])

    changed = stack.sync()
    assert changed["status"] == "ok"
    counts = changed["counts"]
    assert (counts["listed"], counts["delisted"], counts["status_changed"], counts["delisting_scheduled"]) == (
        3, 2, 1, 1)
    assert counts["relisted"] == counts["params_changed"] == counts["invalid"] == 0
    assert counts["unchanged"] == 530 - 2 - 2
    assert counts["active"] == 531
    assert _events(stack, changed["sync_id"]) == (
        {(s, "listed") for s in listed} | {(s, "delisted") for s in gone}
        | {(paused, "status_changed"), (scheduled, "delisting_scheduled")}
    )
    cache = _cache(stack)
    assert set(cache) == set(sim.symbols())
    assert len(cache) == 531
    assert cache[paused]["status"] == "Paused"
    assert cache[scheduled]["expireDate"] is not None
    assert int(stack.redis.get("tokenwatch:tokens:version") or 0) == 2
    assert stack.query("SELECT status, contract_status FROM tokens WHERE symbol = ?", paused) == [("active", "Paused")]
    assert {row[0] for row in stack.query("SELECT symbol FROM tokens WHERE status = 'delisted'")} == set(gone)
    assert {row[0] for row in stack.query("SELECT symbol FROM tokens WHERE is_new = 1")} == set(listed)

    sim.relist([gone[0]])
    back = stack.sync()
    assert back["status"] == "ok"
    assert back["counts"]["relisted"] == 1
    assert back["counts"]["listed"] == back["counts"]["delisted"] == 0
    assert back["counts"]["active"] == 532
    assert _events(stack, back["sync_id"]) == {(gone[0], "relisted")}
    assert stack.query("SELECT status, delisted_at FROM tokens WHERE symbol = ?", gone[0]) == [("active", None)]
    assert gone[0] in _cache(stack)
    runs = stack.query("SELECT status FROM sync_runs ORDER BY finished_at")
    assert [r[0] for r in runs] == ["baseline", "ok", "ok"]


def test_the_chain_stores_only_its_outcome_and_caches_the_exchange_json(stack: Stack, sim: Simulator) -> None:
    stack.env["TOKENWATCH_KUCOIN_URL"] = sim.url
    stack.start_worker()
    answer = stack.celery_script(
        "from tokenwatch.tasks.sync import sync_chain\n"
        "result = sync_chain().apply_async()\n"
        "outcome = result.get(timeout=60)\n"
        "steps = (result.parent.parent, result.parent, result)\n"
        "stored = [app.backend.get(app.backend.get_key_for_task(step.id)) is not None for step in steps]\n"
        "print(json.dumps({'outcome': outcome, 'stored': stored}))\n"
    )
    assert answer["outcome"]["status"] == "baseline"
    # Inside the chain each result travels in the next message; only the outcome is kept for the caller.
    assert answer["stored"] == [False, False, True]
    # Each cached value is the contract exactly as the exchange sent it, unknown keys and market data included.
    cache = _cache(stack)
    assert set(cache) == set(sim.symbols())
    assert all(cache[symbol] == sim.contract(symbol) for symbol in sim.symbols())


def test_a_step_that_crashes_inside_the_chain_is_reported_to_the_caller(stack: Stack) -> None:
    stack.start_worker()
    answer = stack.celery_script(
        "from celery import chain\n"
        "from tokenwatch.tasks.sync import diff_and_build, wait_for_outcome, write_batch\n"
        # A message the task cannot even read as a sync's state: an error no step catches, as a bug would raise.
        "broken = {'status': 'running', 'sync_id': 'crash-test'}\n"
        "steps = chain(diff_and_build.s(broken).set(ignore_result=True), write_batch.s())\n"
        "try:\n"
        "    wait_for_outcome(steps.apply_async(), 30)\n"
        "    error = None\n"
        "except Exception as exc:\n"
        "    error = f'{type(exc).__name__}: {exc}'\n"
        "print(json.dumps({'error': error}))\n"
    )
    # Not a TimeoutError after 30 s: the stored failure of the step reaches the caller (as tokenwatch sync waits).
    assert answer["error"] == "KeyError: 'started_at'"


def test_cli_history_and_tokens_read_the_registry(stack: Stack, sim: Simulator) -> None:
    stack.env["TOKENWATCH_KUCOIN_URL"] = sim.url
    assert stack.sync("--inline")["status"] == "baseline"
    new = sim.list_new(1)[0]
    assert stack.sync("--inline")["counts"]["listed"] == 1

    history = stack.tokenwatch("history", new, "--json")
    assert history.returncode == 0, history.stderr
    assert [e["event_type"] for e in json.loads(history.stdout)] == ["listed"]
    new_tokens = json.loads(stack.tokenwatch("tokens", "--status", "new", "--json").stdout)
    assert [t["symbol"] for t in new_tokens] == [new]
    active = json.loads(stack.tokenwatch("tokens", "--json").stdout)
    assert len(active) == 531


def test_beat_triggers_syncs_on_a_short_interval(stack: Stack, sim: Simulator) -> None:
    stack.env["TOKENWATCH_KUCOIN_URL"] = sim.url
    stack.env["TOKENWATCH_SYNC_INTERVAL_S"] = "1"
    stack.start_worker()
    stack.start("beat", "beat", "--loglevel=INFO", "-s", str(stack.workdir / "beat-schedule"))
    rows = stack.wait_for("SELECT status FROM sync_runs ORDER BY finished_at", lambda rows: len(rows) >= 3)
    statuses = [r[0] for r in rows]
    assert statuses[:1] == ["baseline"]
    assert len(statuses) >= 3
    assert set(statuses[1:]) == {"ok"}


def test_celery_call_runs_a_sync(stack: Stack, sim: Simulator) -> None:
    stack.env["TOKENWATCH_KUCOIN_URL"] = sim.url
    stack.start_worker()
    stack.start("call", "call", "tokenwatch.sync")
    rows = stack.wait_for("SELECT status, active FROM sync_runs", lambda rows: len(rows) >= 1)
    assert rows == [("baseline", 530)]


def test_sync_without_workers_fails_in_one_line(stack: Stack, sim: Simulator) -> None:
    stack.env["TOKENWATCH_KUCOIN_URL"] = sim.url
    result = stack.tokenwatch("sync", "--json", "--timeout", "2")
    assert result.returncode == 1
    outcome = json.loads(result.stdout)
    assert outcome["status"] == "failed"
    assert "worker" in outcome["error"]
    assert "\n" not in outcome["error"]
