"""The fault suite: one test per fault, each against the real stack, asserting the exact registry state after.

Real Redis server (session fixture), real Celery worker processes where the fault concerns the task path,
a real SQLite file or PostgreSQL database (every test runs on each), the simulator as the exchange.
``tests/invariants.py`` checks the registry after every test. Setups that are not under test (a baseline, a
staged plan) run the same pipeline functions in this process.
"""

from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import msgspec
import pytest
import redis
import requests

from tests import databases
from tests.conftest import ROOT, Stack
from tests.invariants import check_invariants
from tests.steps_support import run_steps, step_context
from tokenwatch import pipeline, steps
from tokenwatch.cache import keys, lock
from tokenwatch.clock import now_ms
from tokenwatch.domain.diff import Plan
from tokenwatch.embedded import EmbeddedRedis
from tokenwatch.outcome import Outcome
from tokenwatch.settings import Settings
from tokenwatch.simulator import Simulator
from tokenwatch.simulator import server as sim_server
from tokenwatch.syncstate import SyncState, new_sync_id

# After every test body the registry invariants are checked (tests/invariants.py) and the test's processes
# killed (conftest.invariants_checked).
pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("database_url", "invariants_checked")]
# The checker's own test breaks a copy of an SQLite file: it tests the checker, not the backend.
SQLITE_ONLY = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)

CONTRACTS = 100
ACTIVE_PATH = "/api/v1/contracts/active"
TABLES = ("tokens", "token_history", "registry_state", "sync_runs")
REGISTRY = ("tokens", "token_history", "registry_state")
ZERO_COUNTS = dict.fromkeys(
    ("fetched", "active", "listed", "delisted", "relisted", "delisting_scheduled", "status_changed",
     "params_changed", "unchanged", "invalid"), 0)


# ---- fixtures ---------------------------------------------------------------------------------------------

@pytest.fixture
def sim() -> Iterator[Simulator]:
    with Simulator(port=0, contracts=CONTRACTS, seed=11) as simulator:
        yield simulator


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """In-process pipeline calls read only the settings we pass (each test's process state is fresh: conftest)."""
    for name in list(os.environ):
        if name.startswith("TOKENWATCH_"):
            monkeypatch.delenv(name)


# ---- helpers ----------------------------------------------------------------------------------------------

def settings_of(stack: Stack) -> Settings:
    """The Settings a process started with stack.env would read."""
    values = {k.removeprefix("TOKENWATCH_").lower(): v for k, v in stack.env.items() if k.startswith("TOKENWATCH_")}
    return Settings(**values)


def inline_sync(stack: Stack) -> Outcome:
    """One whole sync in this process (setup, not the fault under test)."""
    return pipeline.sync_inline(settings_of(stack))


def baseline(stack: Stack, sim: Simulator) -> None:
    stack.env["TOKENWATCH_KUCOIN_URL"] = sim.url
    outcome = inline_sync(stack)
    assert (outcome.status, outcome.counts["active"]) == ("baseline", len(sim.symbols())), outcome


def dump(stack: Stack, tables: tuple[str, ...] = TABLES) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of the tables, in a stable order (by key)."""
    return {t: stack.query(f"SELECT * FROM {t} ORDER BY 1") for t in tables}  # noqa: S608


def cache(stack: Stack) -> tuple[int | None, dict[str, bytes]]:
    """The hot cache: (version, the whole hash)."""
    version = stack.redis.get(keys.VERSION)
    return (None if version is None else int(version),
            {k.decode(): v for k, v in stack.redis.hgetall(keys.TOKENS).items()})


def revision(stack: Stack) -> int:
    return int(stack.query("SELECT revision FROM registry_state")[0][0])


def events(stack: Stack, sync_id: str) -> set[tuple[str, str]]:
    rows = stack.query("SELECT symbol, event_type FROM token_history WHERE sync_id = ?", sync_id)
    return {(s, e) for s, e in rows}


def run_row(stack: Stack, sync_id: str) -> tuple[Any, ...]:
    rows = stack.query("SELECT status, error, revision FROM sync_runs WHERE sync_id = ?", sync_id)
    assert len(rows) == 1, f"sync_runs rows of {sync_id}: {rows}"
    return rows[0]


def perpetuals(sim: Simulator, count: int) -> list[str]:
    """Perpetuals of the initial list (never one that a test has just listed)."""
    symbols = [s for s in sim.symbols()[:CONTRACTS] if sim.contract(s)["type"] == "FFWCSX"]
    return symbols[-count:]


def log_text(stack: Stack, name: str = "worker") -> str:
    return (stack.workdir / f"{name}.log").read_text(errors="replace")


def wait_until(done: Callable[[], Any], timeout: float = 30, what: str = "condition") -> Any:
    """Poll done() until it returns something truthy; that value is returned."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = done()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")


def wait_log(stack: Stack, pattern: str, count: int = 1, name: str = "worker", timeout: float = 30) -> list[str]:
    regex = re.compile(pattern)
    return wait_until(lambda: (found := regex.findall(log_text(stack, name))) and len(found) >= count and found,
                      timeout, f"{count} x {pattern!r} in {name}.log")


def start_cli_sync(stack: Stack, *args: str) -> subprocess.Popen[str]:
    """`tokenwatch sync --json` in the background (the test does something while it runs)."""
    return subprocess.Popen([sys.executable, "-m", "tokenwatch.cli", "sync", "--json", *args], env=stack.env,
                            cwd=stack.workdir, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish_cli_sync(process: subprocess.Popen[str], timeout: float = 60) -> dict[str, Any]:
    out, err = process.communicate(timeout=timeout)
    assert out.strip(), f"no output; stderr: {err[-2000:]}"
    outcome: dict[str, Any] = json.loads(out)
    assert process.returncode == (1 if outcome["status"] == "failed" else 0), err[-2000:]
    return outcome


def hold_write_lock(stack: Stack) -> databases.WriteLock:
    """A write transaction held from outside tokenwatch (tests/databases.py says what, per backend)."""
    return databases.WriteLock(stack.database_url)


def staged_plans(stack: Stack) -> list[bytes]:
    return list(stack.redis.scan_iter(match="tokenwatch:staging:*:plan"))


def rows(stack: Stack, table: str = "tokens") -> dict[str, dict[str, Any]]:
    """Token rows by symbol, as column -> value (table "tokens_live" resolves last_seen)."""
    return {r["symbol"]: r for r in databases.dict_rows(stack.database_url, f"SELECT * FROM {table}")}  # noqa: S608


def last_fetched_at(stack: Stack) -> int:
    return int(stack.query("SELECT last_fetched_at FROM registry_state")[0][0])


# ---- 1. suspect snapshots ---------------------------------------------------------------------------------

def test_empty_snapshot_is_suspect_and_delists_nothing(stack: Stack, sim: Simulator) -> None:
    baseline(stack, sim)
    before, cache_before, seen_before = rows(stack), cache(stack), last_fetched_at(stack)
    sim.inject("empty")

    outcome = stack.sync("--inline")

    warning = "suspect snapshot: 100 of 100 active contracts missing (100% > 20%); nothing delisted"
    assert outcome["status"] == "suspect"
    assert outcome["error"] == warning
    assert outcome["counts"] == {**ZERO_COUNTS, "active": CONTRACTS}
    now = last_fetched_at(stack)
    # Every token stays active; each is marked absent since this sync, its last sighting frozen.
    assert rows(stack) == {s: {**row, "missing_since": now} for s, row in before.items()}
    assert {row["last_seen"] for row in rows(stack, "tokens_live").values()} == {seen_before}
    assert stack.query("SELECT count(*) FROM token_history") == [(0,)]
    assert revision(stack) == 2
    assert run_row(stack, outcome["sync_id"]) == ("suspect", warning, 2)
    assert cache(stack) == (2, cache_before[1])  # every active token kept its cached entry


def test_partial_list_is_suspect_and_refreshes_only_present_rows(stack: Stack, sim: Simulator) -> None:
    baseline(stack, sim)
    before, cache_before, seen_before = rows(stack), cache(stack), last_fetched_at(stack)
    present = set(sim.symbols()[:75])
    sim.inject("partial", keep=0.75)  # 25 of 100 missing: over the 20% bound

    outcome = stack.sync("--inline")

    warning = "suspect snapshot: 25 of 100 active contracts missing (25% > 20%); nothing delisted"
    assert outcome["status"] == "suspect"
    assert outcome["error"] == warning
    assert outcome["counts"] == {**ZERO_COUNTS, "fetched": 75, "active": CONTRACTS, "unchanged": 75}
    now = last_fetched_at(stack)
    assert rows(stack) == {
        s: row if s in present else {**row, "missing_since": now} for s, row in before.items()}
    live = rows(stack, "tokens_live")
    assert {s for s, row in live.items() if row["last_seen"] == now} == present  # refreshed: the present ones
    assert {row["last_seen"] for s, row in live.items() if s not in present} == {seen_before}
    assert {row["status"] for row in live.values()} == {"active"}
    assert stack.query("SELECT count(*) FROM token_history") == [(0,)]
    assert run_row(stack, outcome["sync_id"]) == ("suspect", warning, 2)
    assert cache(stack) == (2, cache_before[1])


# ---- 2. absent symbols are confirmed one by one ----------------------------------------------------------------

def test_symbol_omitted_but_still_open_stays_active(stack: Stack, sim: Simulator) -> None:
    baseline(stack, sim)
    symbol = perpetuals(sim, 1)[0]
    before, seen_before = rows(stack), last_fetched_at(stack)
    sim.inject("omit", symbols=[symbol])

    outcome = stack.sync("--inline")

    assert outcome["status"] == "ok"
    assert outcome["error"] is None
    assert outcome["counts"] == {**ZERO_COUNTS, "fetched": 99, "active": 100, "unchanged": 99}
    assert sim.requests(f"/api/v1/contracts/{symbol}") == 1  # the check said Open
    now = last_fetched_at(stack)
    assert rows(stack) == {**before, symbol: {**before[symbol], "missing_since": now}}  # active, absent since now
    assert rows(stack, "tokens_live")[symbol]["last_seen"] == seen_before
    assert stack.query("SELECT count(*) FROM token_history") == [(0,)]
    assert run_row(stack, outcome["sync_id"]) == ("ok", None, 2)
    version, hashed = cache(stack)
    assert (version, len(hashed), symbol in hashed) == (2, 100, True)

    sim.clear_faults()  # back in the list: the mark is cleared, still no event
    again = stack.sync("--inline")
    assert (again["status"], again["counts"]["active"], again["counts"]["listed"]) == ("ok", 100, 0)
    assert rows(stack)[symbol]["missing_since"] is None
    assert stack.query("SELECT count(*) FROM token_history") == [(0,)]


def test_truly_delisted_symbol_is_delisted_after_the_check(stack: Stack, sim: Simulator) -> None:
    baseline(stack, sim)
    symbol = perpetuals(sim, 1)[0]
    before, seen_before = rows(stack), last_fetched_at(stack)
    sim.delist([symbol])

    outcome = stack.sync("--inline")

    assert outcome["status"] == "ok"
    assert outcome["counts"] == {**ZERO_COUNTS, "fetched": 99, "active": 99, "delisted": 1, "unchanged": 99}
    assert sim.requests(f"/api/v1/contracts/{symbol}") == 1  # answered code 100003
    now = last_fetched_at(stack)
    assert rows(stack) == {**before, symbol: {
        **before[symbol], "status": "delisted", "delisted_at": now, "is_new": 0, "last_seen": seen_before}}
    assert stack.query("SELECT symbol, event_type, sync_id, details FROM token_history") == [
        (symbol, "delisted", outcome["sync_id"], '{"last_status": "Open"}')]
    version, hashed = cache(stack)
    assert (version, len(hashed), symbol in hashed) == (2, 99, False)


def test_absent_symbol_whose_check_fails_is_delisted_on_the_second_absence(stack: Stack, sim: Simulator) -> None:
    baseline(stack, sim)
    symbol = perpetuals(sim, 1)[0]
    before, seen_before = rows(stack), last_fetched_at(stack)
    sim.delist([symbol])
    sim.inject("http_status", status=500, path=f"/api/v1/contracts/{symbol}")

    first = stack.sync("--inline")

    assert first["status"] == "ok"
    assert first["counts"] == {**ZERO_COUNTS, "fetched": 99, "active": 100, "unchanged": 99}
    first_at = last_fetched_at(stack)
    assert rows(stack) == {**before, symbol: {**before[symbol], "missing_since": first_at}}
    assert stack.query("SELECT count(*) FROM token_history") == [(0,)]
    version, hashed = cache(stack)
    assert (version, len(hashed), symbol in hashed) == (2, 100, True)

    second = stack.sync("--inline")

    assert second["status"] == "ok"
    assert second["counts"] == {**ZERO_COUNTS, "fetched": 99, "active": 99, "delisted": 1, "unchanged": 99}
    assert sim.requests(f"/api/v1/contracts/{symbol}") == 2  # checked again, failed again: second absence
    second_at = last_fetched_at(stack)
    assert rows(stack) == {**before, symbol: {
        **before[symbol], "status": "delisted", "delisted_at": second_at, "is_new": 0, "last_seen": seen_before}}
    assert stack.query("SELECT symbol, event_type, sync_id FROM token_history") == [
        (symbol, "delisted", second["sync_id"])]
    version, hashed = cache(stack)
    assert (version, len(hashed), symbol in hashed) == (3, 99, False)


# ---- 3. one sync at a time ---------------------------------------------------------------------------------

def test_sync_while_another_holds_the_lock_is_skipped_fast(stack: Stack, sim: Simulator) -> None:
    baseline(stack, sim)
    stack.start_worker()
    sim.list_new(2)  # a change that a sync would apply if it ran
    before, cache_before = dump(stack, REGISTRY), cache(stack)
    assert lock.acquire(stack.redis, "someone-else")
    requests_before = sim.requests(ACTIVE_PATH)

    started = time.monotonic()
    outcome = stack.sync()
    elapsed = time.monotonic() - started
    inline = stack.sync("--inline")

    busy = "another sync (someone-else) is running"
    assert (outcome["status"], outcome["error"], outcome["counts"]) == ("skipped", busy, ZERO_COUNTS)
    assert (inline["status"], inline["error"], inline["counts"]) == ("skipped", busy, ZERO_COUNTS)
    # Skipped at once: the sync itself (fetch step to recorded outcome) well under 2 s; the wall clock also
    # counts the CLI's interpreter start (1-2 s here, up to 8 s on a host at load 8), so it gets a bound that
    # waiting out the holder's heartbeat (lock.BEAT_TTL_S, 15 s) could not meet.
    assert outcome["timings_ms"]["total"] < 2000
    assert inline["timings_ms"]["total"] < 2000
    assert elapsed < lock.BEAT_TTL_S - 3, f"a skipped sync took {elapsed:.2f} s"
    assert sim.requests(ACTIVE_PATH) == requests_before  # it never fetched
    assert dump(stack, REGISTRY) == before
    assert cache(stack) == cache_before
    assert run_row(stack, outcome["sync_id"]) == ("skipped", busy, None)
    assert run_row(stack, inline["sync_id"]) == ("skipped", busy, None)
    # Neither sync released a lock it does not own: still someone-else's, with its TTL still running.
    assert lock.holder(stack.redis) == "someone-else"
    assert 0 < stack.redis.ttl(keys.SYNC_LOCK) <= lock.LOCK_TTL_S
    assert lock.release(stack.redis, "someone-else")

    after = stack.sync()  # the lock freed, the next sync runs and applies the change
    assert (after["status"], after["counts"]["listed"]) == ("ok", 2)
    assert lock.holder(stack.redis) is None


# ---- 4. redelivery -------------------------------------------------------------------------------------------

def test_replayed_write_of_the_same_plan_applies_once(stack: Stack, sim: Simulator) -> None:
    baseline(stack, sim)
    settings = settings_of(stack)
    gone = perpetuals(sim, 1)[0]
    listed = sim.list_new(2)
    sim.delist([gone])
    ctx = step_context(settings, stack.redis)
    state = run_steps(ctx, SyncState.new(), steps.fetch, steps.diff)
    sync_id = state.sync_id
    staged_json = ctx.handoff.take_plan(sync_id).to_json()  # what the diff step stages for the write step
    ctx.handoff.put_plan(sync_id, Plan.from_json(staged_json))
    message = state.to_json()  # the write message, delivered twice

    first = steps.run_step(steps.write, ctx, SyncState.from_json(message))
    after_first, cache_first = dump(stack), cache(stack)
    ctx.handoff.put_plan(sync_id, Plan.from_json(staged_json))  # the plan still staged for the second copy
    second = steps.run_step(steps.write, ctx, SyncState.from_json(message))

    assert (first.status, first.revision, first.replayed) == ("ok", 2, False)
    assert (second.status, second.revision, second.replayed) == ("ok", 2, True)
    assert second.outcome().counts == first.outcome().counts
    assert dump(stack) == after_first  # the replay changed no row of any table
    assert cache(stack) == cache_first
    assert cache_first[0] == 2
    assert set(cache_first[1]) == set(sim.symbols())
    assert sorted(stack.query("SELECT symbol, event_type, sync_id FROM token_history")) == sorted(
        [(s, "listed", sync_id) for s in listed] + [(gone, "delisted", sync_id)])
    assert run_row(stack, sync_id) == ("ok", None, 2)


def test_write_message_delivered_twice_through_the_worker_applies_once(stack: Stack, sim: Simulator) -> None:
    baseline(stack, sim)
    stack.start_worker()
    listed = sim.list_new(2)
    sync_id = new_sync_id()
    # The chain's steps by hand; the write message is delivered twice with the same state, as a lost ack does.
    outcomes = stack.celery_script(
        "from tokenwatch.syncstate import SyncState\n"
        f"state = app.send_task(FETCH, args=[SyncState.new({sync_id!r}).to_json()]).get(timeout=30)\n"
        "state = app.send_task(DIFF, args=[state]).get(timeout=30)\n"
        "first = app.send_task(WRITE, args=[state]).get(timeout=30)\n"
        "second = app.send_task(WRITE, args=[state]).get(timeout=30)\n"
        "print(json.dumps([first, second]))\n"
    )

    assert outcomes[0]["status"] == "ok"
    assert outcomes[0]["counts"]["listed"] == 2
    assert revision(stack) == 2
    assert cache(stack)[0] == 2
    assert set(cache(stack)[1]) == set(sim.symbols())
    assert sorted(stack.query("SELECT symbol, event_type, sync_id FROM token_history")) == sorted(
        (s, "listed", sync_id) for s in listed)
    assert stack.redis.xlen(keys.EVENTS) == 2
    assert run_row(stack, sync_id) == ("ok", None, 2)  # the replay must not rewrite what the sync did
    assert (outcomes[1]["status"], outcomes[1]["counts"]) == ("ok", outcomes[0]["counts"])  # the applied outcome


# ---- 5. no time travel ------------------------------------------------------------------------------------

def test_older_snapshot_after_a_newer_one_is_skipped(stack: Stack, sim: Simulator) -> None:
    baseline(stack, sim)
    settings = settings_of(stack)
    gone = perpetuals(sim, 1)[0]
    # Two slow syncs fetch the exchange as it was, without the lock (as a sync on another host might) ...
    slow = step_context(settings, None)
    older = [run_steps(slow, SyncState.new(), steps.fetch) for _ in range(2)]
    wait_until(lambda: now_ms() > max(s.fetched_at_ms or 0 for s in older), what="the clock to move")
    old_plan = run_steps(slow, older[0], steps.diff)  # one builds its plan on revision 1 at once
    listed = sim.list_new(1)
    sim.delist([gone])
    # ... while a newer one runs whole and commits first.
    newer = pipeline.run_inline(step_context(settings, stack.redis))
    before, cache_before = dump(stack, REGISTRY), cache(stack)

    # The older answer is refused by the diff step (fetched_at) and the older plan by the writer (revision).
    at_diff = run_steps(slow, older[1], steps.diff)
    at_write = run_steps(slow, old_plan, steps.write)

    assert (newer.status, newer.revision) == ("ok", 2)
    assert (at_diff.status, at_diff.error) == ("skipped", (
        f"snapshot fetched at {older[1].fetched_at_ms} is not newer than the applied one ({newer.fetched_at_ms})"))
    assert (at_write.status, at_write.error) == ("skipped", "plan built on revision 1, registry is at 2")
    assert dump(stack, REGISTRY) == before
    assert cache(stack) == cache_before
    assert (revision(stack), last_fetched_at(stack)) == (2, newer.fetched_at_ms)
    assert rows(stack)[gone]["status"] == "delisted"
    assert rows(stack)[listed[0]]["status"] == "active"
    assert run_row(stack, older[1].sync_id) == ("skipped", at_diff.error, None)
    assert run_row(stack, old_plan.sync_id) == ("skipped", at_write.error, None)
    assert run_row(stack, newer.sync_id) == ("ok", None, 2)


# ---- 6. fetch faults through the worker ------------------------------------------------------------------------

@pytest.fixture
def short_rate_window(monkeypatch: pytest.MonkeyPatch) -> None:
    """The simulator sends gw-ratelimit-reset (time left in its 30 s rate window) on every answer, and the
    client honours it when rate limited (429, or code 429000 in a 200): a 1 s window keeps that retry under a
    second. A 5xx ignores it (test_server_error_backs_off_exponentially_not_until_the_rate_window_resets)."""
    monkeypatch.setattr(sim_server, "RATE_WINDOW_MS", 1000)


def _oversized_error(sim: Simulator) -> str:
    size = len(requests.get(sim.url + ACTIVE_PATH, timeout=5).content)
    return f"fetch failed: response of {size} bytes exceeds the 4096-byte bound"


# (fault and its parameters, extra settings, the one-line reason, requests of the active list, retry log pattern)
Reason = str | re.Pattern[str] | Callable[[Simulator], str]
FETCH_FAULTS: dict[str, tuple[dict[str, Any], dict[str, str], Reason, int, str | None]] = {
    "timeout": ({"fault": "delay", "seconds": 3.0}, {"TOKENWATCH_HTTP_TIMEOUT_S": "0.5"},
                "fetch failed after 1 retries: 127.0.0.1: timed out after 0.5 s", 2, r"retry 1 of 1 in 0\.[0-5] s"),
    "http_503": ({"fault": "http_status", "status": 503}, {},
                 "fetch failed after 1 retries: HTTP 503", 2, r"retry 1 of 1 in 0\.[0-5] s"),
    "http_503_with_retry_after": ({"fault": "http_status", "status": 503, "headers": {"Retry-After": "1"}}, {},
                                  "fetch failed after 1 retries: HTTP 503", 2, r"retry 1 of 1 in 1\.[01] s"),
    "http_429_with_reset": ({"fault": "http_status", "status": 429, "headers": {"gw-ratelimit-reset": "1500"}}, {},
                            "fetch failed after 1 retries: HTTP 429", 2, r"retry 1 of 1 in 1\.[56] s"),
    "code_429000_in_http_200": ({"fault": "error_code", "code": "429000", "msg": "Too Many Requests"}, {},
                                "fetch failed after 1 retries: rate limited (code 429000)", 2,
                                r"retry 1 of 1 in [01]\.\d s"),
    "html_error_page_502": ({"fault": "html", "status": 502}, {},
                            "fetch failed after 1 retries: HTTP 502", 2, r"retry 1 of 1 in 0\.[0-5] s"),
    "html_page_with_200": ({"fault": "html", "status": 200}, {},
                           "fetch failed: HTTP 200 with an HTML page", 1, None),
    "truncated_body": ({"fault": "truncate", "bytes": 1000}, {},
                       re.compile(r"fetch failed: truncated response body after \d+ bytes"), 1, None),
    "not_json": ({"fault": "not_json", "body": "upstream connect error or disconnect/reset before headers"}, {},
                 "fetch failed: HTTP 200 with 57 bytes that are not JSON", 1, None),
    "error_code_in_http_200": ({"fault": "error_code", "code": "400100", "msg": "Parameter error"}, {},
                               "fetch failed: HTTP 200 with error code '400100': Parameter error", 1, None),
    "body_over_max_bytes": ({}, {"TOKENWATCH_MAX_RESPONSE_BYTES": "4096"}, _oversized_error, 1, None),
}
# The server's hint the retry must have waited for, in ms.
HINTED_WAIT_MS = {"http_503_with_retry_after": 1000, "http_429_with_reset": 1500}


@pytest.mark.usefixtures("short_rate_window")
@pytest.mark.parametrize("case", list(FETCH_FAULTS))
def test_fetch_fault_fails_the_sync_and_touches_nothing(stack: Stack, sim: Simulator, case: str) -> None:
    fault, extra_env, reason, attempts, retry_log = FETCH_FAULTS[case]
    baseline(stack, sim)
    stack.env.update(extra_env)
    stack.env["TOKENWATCH_HTTP_RETRIES"] = "1"
    stack.start_worker()
    sim.list_new(1)  # a change the failed sync must not apply
    if callable(reason):
        reason = reason(sim)  # asks the simulator, so before its requests are counted
    before, cache_before = dump(stack, REGISTRY), cache(stack)
    runs_before = stack.query("SELECT * FROM sync_runs")
    requests_before = sim.requests(ACTIVE_PATH)
    if fault:
        sim.inject(**fault)

    outcome = stack.sync()

    error = outcome["error"]
    if isinstance(reason, re.Pattern):
        assert reason.fullmatch(error), error
    else:
        assert error == reason
    assert (outcome["status"], outcome["counts"]) == ("failed", ZERO_COUNTS)
    assert sim.requests(ACTIVE_PATH) - requests_before == attempts
    assert dump(stack, REGISTRY) == before
    assert cache(stack) == cache_before
    assert stack.query("SELECT * FROM sync_runs WHERE sync_id != ?", outcome["sync_id"]) == runs_before
    assert run_row(stack, outcome["sync_id"]) == ("failed", error, None)
    assert lock.holder(stack.redis) is None  # a failed sync does not block the next one
    assert staged_plans(stack) == []
    if retry_log:
        assert len(re.findall(retry_log, log_text(stack))) == 1, log_text(stack)[-3000:]
    if case in HINTED_WAIT_MS:
        assert outcome["timings_ms"]["total"] >= HINTED_WAIT_MS[case]  # the retry waited as the server asked

    sim.clear_faults()
    stack.env.pop("TOKENWATCH_MAX_RESPONSE_BYTES", None)
    recovered = inline_sync(stack)  # the registry is intact: the next good sync applies the change
    assert (recovered.status, recovered.counts["listed"], recovered.counts["active"]) == ("ok", 1, CONTRACTS + 1)


@pytest.mark.usefixtures("short_rate_window")
def test_transient_fetch_fault_that_clears_before_the_retries_run_out(stack: Stack, sim: Simulator) -> None:
    baseline(stack, sim)
    stack.env["TOKENWATCH_HTTP_RETRIES"] = "1"
    stack.start_worker()
    listed = sim.list_new(1)
    requests_before = sim.requests(ACTIVE_PATH)
    sim.inject("http_status", count=1, status=503)

    outcome = stack.sync()

    assert (outcome["status"], outcome["error"]) == ("ok", None)
    assert outcome["counts"] == {**ZERO_COUNTS, "fetched": 101, "active": 101, "listed": 1, "unchanged": 100}
    assert sim.requests(ACTIVE_PATH) - requests_before == 2
    assert len(re.findall(r"fetch failed \(HTTP 503\), retry 1 of 1", log_text(stack))) == 1
    assert events(stack, outcome["sync_id"]) == {(listed[0], "listed")}
    assert run_row(stack, outcome["sync_id"]) == ("ok", None, 2)
    assert cache(stack)[0] == 2
    assert set(cache(stack)[1]) == set(sim.symbols())


def test_server_error_backs_off_exponentially_not_until_the_rate_window_resets(
        stack: Stack, sim: Simulator) -> None:
    baseline(stack, sim)  # opens the simulator's real 30 s rate window
    stack.start_worker()
    before, cache_before = dump(stack, REGISTRY), cache(stack)
    # The answer also carries gw-ratelimit-reset (about 28 s left in the window) and a pool far from empty.
    sim.inject("http_status", status=503)

    outcome = stack.sync()

    delays = re.findall(r"fetch failed \(HTTP 503\), retry 1 of 1 in (\d+\.\d) s", log_text(stack))
    assert len(delays) == 1
    assert float(delays[0]) <= 0.5, f"first retry of a 503 scheduled in {delays[0]} s"
    assert (outcome["status"], outcome["error"]) == ("failed", "fetch failed after 1 retries: HTTP 503")
    assert outcome["timings_ms"]["total"] < 5000
    assert dump(stack, REGISTRY) == before
    assert cache(stack) == cache_before


# ---- 7. bad records --------------------------------------------------------------------------------------

SQL_SYMBOL = "X'); DROP TABLE tokens;--"
ANSI_SYMBOL = "EVIL\n\x1b[31mUSDTM\x1b[0m"


SNAPSHOT_PREFIX = b"tokenwatch:registry:"


def snapshot_text(payload: bytes) -> bytes:
    """Every string and number a registry snapshot holds (cache/snapshot.py): the snapshot is binary msgpack,
    whose framing bytes may equal any one character searched for. Its only bytes are the 16-byte digests of
    validated values (domain.contracts.fingerprint), which hold no text."""
    leaves: list[str] = []

    def walk(item: Any) -> None:
        if isinstance(item, bytes):
            assert len(item) == 16, "a snapshot holds no bytes but digests"
        elif isinstance(item, list | tuple):
            for child in item:
                walk(child)
        elif isinstance(item, dict):
            for key, child in item.items():
                walk(key)
                walk(child)
        elif item is not None:
            leaves.append(str(item))

    walk(msgspec.msgpack.decode(payload))
    return "\n".join(leaves).encode()


def redis_text(client: redis.Redis) -> bytes:
    """Every key and value in Redis, concatenated (to search for text that must not be stored)."""
    parts: list[bytes] = []
    for key in client.scan_iter():
        parts.append(key)
        kind = client.type(key).decode()
        if kind == "string" and key.startswith(SNAPSHOT_PREFIX):
            parts.append(snapshot_text(client.get(key) or b""))
        elif kind == "string":
            parts.append(client.get(key) or b"")
        elif kind == "hash":
            parts.extend(k + v for k, v in client.hgetall(key).items())
        elif kind == "list":
            parts.extend(client.lrange(key, 0, -1))
        elif kind == "set":
            parts.extend(client.smembers(key))
        elif kind == "zset":
            parts.extend(client.zrange(key, 0, -1))
        elif kind == "stream":
            parts.extend(k + v for _, fields in client.xrange(key) for k, v in fields.items())
    return b"\n".join(parts)


def test_bad_records_are_skipped_and_counted_and_never_echoed(stack: Stack, sim: Simulator) -> None:
    baseline(stack, sim)
    stack.start_worker()
    template = sim.contract(perpetuals(sim, 1)[0])

    def variant(symbol: str, **changes: Any) -> dict[str, Any]:
        return {**template, "symbol": symbol, **changes}

    no_base = variant("NOBASEUSDTM")
    del no_base["baseCurrency"]
    bad = [
        no_base,  # a required key missing
        variant("WRONGTYPEUSDTM", tickSize=[0.01]),  # a wrong type
        variant("ABSURDUSDTM", firstOpenDate=10**17),  # an absurd value: the year 5138
        variant(SQL_SYMBOL),
        variant(ANSI_SYMBOL),
    ]
    good = variant("GOODNEWUSDTM")
    listed = sim.list_new(1)
    sim.inject("bad_records", records=[*bad, good])

    outcome = stack.sync()

    assert (outcome["status"], outcome["error"]) == ("ok", None)
    assert outcome["counts"] == {
        **ZERO_COUNTS, "fetched": 107, "active": 102, "listed": 2, "unchanged": 100, "invalid": 5}
    assert events(stack, outcome["sync_id"]) == {(listed[0], "listed"), ("GOODNEWUSDTM", "listed")}
    assert set(rows(stack)) == {*sim.symbols(), "GOODNEWUSDTM"}
    assert {row["status"] for row in rows(stack).values()} == {"active"}
    assert cache(stack)[0] == 2
    assert set(cache(stack)[1]) == {*sim.symbols(), "GOODNEWUSDTM"}
    log = log_text(stack)
    assert (
        "skipped 5 invalid contracts, first: item 101: required key baseCurrency is missing or not a string; "
        "item 102: tickSize has type list, expected a number; item 103: firstOpenDate is not a plausible timestamp; "
        "item 104: symbol is not 1-40 letters and digits; item 105: symbol is not 1-40 letters and digits"
    ) in log
    for raw in (SQL_SYMBOL, "DROP TABLE", "\x1b", "EVIL", "NOBASEUSDTM", "WRONGTYPEUSDTM", "ABSURDUSDTM"):
        assert raw not in log, f"{raw!r} in the worker log"
    database = databases.as_text(stack.database_url, TABLES)
    for raw in (SQL_SYMBOL, "DROP TABLE", "\x1b", "EVIL", "NOBASEUSDTM", "WRONGTYPEUSDTM", "ABSURDUSDTM"):
        assert raw not in database, f"{raw!r} in the database"
        assert raw.encode() not in redis_text(stack.redis), f"{raw!r} in Redis"


# ---- 8. infrastructure ------------------------------------------------------------------------------------

LOCK_RETRY_LOG = r"database is locked, retrying in (\d\.\d\d) s \(attempt (\d) of 5\)"


def test_database_locked_for_a_few_seconds_the_write_retries_and_succeeds(stack: Stack, sim: Simulator) -> None:
    stack.env["TOKENWATCH_KUCOIN_URL"] = sim.url
    stack.start_worker()
    assert stack.sync()["status"] == "baseline"  # the worker has written once: its engine is set up
    listed = sim.list_new(1)
    gone = perpetuals(sim, 1)[0]
    sim.delist([gone])
    holder = hold_write_lock(stack)
    locked_at = time.monotonic()
    process = start_cli_sync(stack)
    try:
        wait_log(stack, LOCK_RETRY_LOG)  # the write waited out the 2 s busy timeout once, and retries
    finally:
        holder.release()
        held = time.monotonic() - locked_at
    outcome = finish_cli_sync(process)

    assert 2.0 < held < 10.0
    assert (outcome["status"], outcome["error"]) == ("ok", None)
    assert outcome["counts"] == {**ZERO_COUNTS, "fetched": 100, "active": 100, "listed": 1, "delisted": 1,
                                 "unchanged": 99}
    assert outcome["timings_ms"]["batch_write"] >= 2000
    assert re.findall(LOCK_RETRY_LOG, log_text(stack)) == [("0.25", "1")]  # one retry was enough
    assert events(stack, outcome["sync_id"]) == {(listed[0], "listed"), (gone, "delisted")}
    assert run_row(stack, outcome["sync_id"]) == ("ok", None, 2)
    assert cache(stack)[0] == 2
    assert set(cache(stack)[1]) == set(sim.symbols())


def test_database_locked_past_the_retry_bound_fails_the_sync_and_leaves_nothing_partial(
        stack: Stack, sim: Simulator) -> None:
    stack.env["TOKENWATCH_KUCOIN_URL"] = sim.url
    stack.start_worker()
    assert stack.sync()["status"] == "baseline"
    sim.list_new(1)
    before, cache_before = dump(stack, REGISTRY), cache(stack)
    holder = hold_write_lock(stack)
    process = start_cli_sync(stack)
    try:
        # The write's five retries (about 20 s: 2 s busy (lock) timeout each, 0.25..4 s backoff) all meet the
        # lock. On SQLite the failure is then recorded through the same retry loop, which starts over at
        # attempt 1; on PostgreSQL the holder locks only the registry row, so the failure is recorded at once.
        attempts = ["1", "2", "3", "4", "5", "1"] if stack.sqlite else ["1", "2", "3", "4", "5"]
        wait_log(stack, LOCK_RETRY_LOG, count=len(attempts), timeout=120)
        if stack.sqlite:
            assert stack.query("SELECT count(*) FROM sync_runs") == [(1,)]  # nothing recorded while locked
        else:
            wait_until(lambda: stack.query("SELECT count(*) FROM sync_runs") == [(2,)], what="the failure recorded")
        assert [a for _, a in re.findall(LOCK_RETRY_LOG, log_text(stack))] == attempts
    finally:
        holder.release()
    outcome = finish_cli_sync(process)

    error = "registry write failed and was rolled back: database is locked"
    assert (outcome["status"], outcome["error"], outcome["counts"]) == ("failed", error, ZERO_COUNTS)
    assert run_row(stack, outcome["sync_id"]) == ("failed", error, None)  # recorded once the lock was gone
    assert dump(stack, REGISTRY) == before
    assert cache(stack) == cache_before
    assert lock.holder(stack.redis) is None
    # What the failed sync staged in Redis expires by itself; nothing without a TTL is left behind.
    staged = list(stack.redis.scan_iter(match="tokenwatch:staging:*"))
    assert all(stack.redis.ttl(key) > 0 for key in staged), staged


def test_database_locked_at_a_fresh_worker_s_first_write_is_retried_too(stack: Stack, sim: Simulator) -> None:
    baseline(stack, sim)  # the registry exists; this worker process has not written yet
    stack.start_worker()
    listed = sim.list_new(1)
    holder = hold_write_lock(stack)
    process = start_cli_sync(stack)
    try:
        # Retried like any write (or, before the fix, the task raised: then release and fail below).
        wait_log(stack, LOCK_RETRY_LOG + "|raised unexpected: OperationalError")
    finally:
        holder.release()
    outcome = finish_cli_sync(process)

    assert (outcome["status"], outcome["error"]) == ("ok", None)
    assert re.findall(LOCK_RETRY_LOG, log_text(stack)) == [("0.25", "1")]
    assert run_row(stack, outcome["sync_id"]) == ("ok", None, 2)
    assert events(stack, outcome["sync_id"]) == {(listed[0], "listed")}
    assert cache(stack)[0] == 2


def _children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def test_worker_child_killed_mid_write_is_redelivered_and_applied_once(stack: Stack, sim: Simulator) -> None:
    stack.env["TOKENWATCH_KUCOIN_URL"] = sim.url
    stack.start_worker()
    assert stack.sync()["status"] == "baseline"
    worker = stack.processes[0]
    listed = sim.list_new(2)
    gone = perpetuals(sim, 1)[0]
    sim.delist([gone])
    holder = hold_write_lock(stack)
    process = start_cli_sync(stack)
    try:
        wait_log(stack, LOCK_RETRY_LOG)  # the write task is inside apply_plan, blocked on the lock
        (child,) = _children(worker.pid)
        os.kill(child, signal.SIGKILL)
        wait_log(stack, r"signal 9 \(SIGKILL\)")
    finally:
        holder.release()
    outcome = finish_cli_sync(process)

    received = re.findall(r"Task tokenwatch\.write_batch\[([0-9a-f-]+)\] received", log_text(stack))
    assert len(received) == 3 and received[1] == received[2], received  # the killed write, delivered again
    assert f"Task tokenwatch.write_batch[{received[2]}] succeeded" in log_text(stack)
    assert (outcome["status"], outcome["error"]) == ("ok", None)
    assert outcome["counts"] == {**ZERO_COUNTS, "fetched": 101, "active": 101, "listed": 2, "delisted": 1,
                                 "unchanged": 99}
    # Exactly what a clean run leaves: each event once, one revision, one sync_runs row, the cache swapped once.
    assert sorted(stack.query("SELECT symbol, event_type, sync_id FROM token_history")) == sorted(
        [(s, "listed", outcome["sync_id"]) for s in listed] + [(gone, "delisted", outcome["sync_id"])])
    assert stack.query("SELECT status, revision FROM sync_runs ORDER BY revision") == [("baseline", 1), ("ok", 2)]
    assert revision(stack) == 2
    assert {s: r["status"] for s, r in rows(stack).items() if r["status"] != "active"} == {gone: "delisted"}
    assert cache(stack)[0] == 2
    assert set(cache(stack)[1]) == set(sim.symbols())
    assert stack.redis.xlen(keys.EVENTS) == 3
    assert lock.holder(stack.redis) is None
    assert len(_children(worker.pid)) == 1  # the pool replaced its child


def test_redis_restart_while_workers_run_the_next_sync_succeeds(
        stack: Stack, sim: Simulator, redis_server: EmbeddedRedis) -> None:
    stack.env["TOKENWATCH_KUCOIN_URL"] = sim.url
    stack.start_worker()
    assert stack.sync()["status"] == "baseline"
    listed = sim.list_new(1)
    try:
        redis_server.stop()
        redis_server.start()
    finally:
        if redis_server.process is None:
            redis_server.start()
    stack.redis.connection_pool.disconnect()

    outcome = stack.sync()

    assert (outcome["status"], outcome["error"]) == ("ok", None)
    assert outcome["counts"] == {**ZERO_COUNTS, "fetched": 101, "active": 101, "listed": 1, "unchanged": 100}
    assert events(stack, outcome["sync_id"]) == {(listed[0], "listed")}
    assert run_row(stack, outcome["sync_id"]) == ("ok", None, 2)
    assert cache(stack)[0] == 2
    assert set(cache(stack)[1]) == set(sim.symbols())
    log = log_text(stack)
    assert "consumer: Connection to broker lost" in log
    assert log.count(f"Connected to {redis_server.url.replace('unix://', 'redis+socket://')}") == 2


def queued(stack: Stack, queue: str, task: str) -> list[dict[str, Any]]:
    """The messages of one task waiting in a queue (kombu's Redis transport keeps a queue as a list)."""
    messages = [json.loads(raw) for raw in stack.redis.lrange(queue, 0, -1)]
    return [m for m in messages if m["headers"]["task"] == task]


def test_beat_backlog_while_workers_are_down_does_not_replay_on_recovery(stack: Stack, sim: Simulator) -> None:
    stack.env["TOKENWATCH_KUCOIN_URL"] = sim.url
    stack.env["TOKENWATCH_SYNC_INTERVAL_S"] = "1"
    stack.start("beat", "beat", "--loglevel=INFO", "-s", str(stack.workdir / "beat-schedule"))
    # Five ticks with no worker consuming them: a backlog of five syncs.
    wait_until(lambda: len(queued(stack, "fetch", "tokenwatch.sync")) >= 5, timeout=15, what="five queued ticks")
    beat = stack.processes[0]
    os.killpg(beat.pid, signal.SIGKILL)  # beat stops here, so every tick below was sent while workers were down
    beat.wait(10)
    backlog = [m["headers"]["id"] for m in queued(stack, "fetch", "tokenwatch.sync")]
    assert len(backlog) >= 5

    stack.start_worker()  # recovery

    def fate(task_id: str) -> str | None:
        log = log_text(stack)
        if f"Discarding revoked task: tokenwatch.sync[{task_id}]" in log:
            return "discarded"
        return "ran" if f"Task tokenwatch.sync[{task_id}] succeeded" in log else None
    fates = wait_until(lambda: all(map(fate, backlog)) and [fate(t) for t in backlog], what="every tick handled")
    runs = fates.count("ran")
    statuses = [r[0] for r in stack.wait_for("SELECT status FROM sync_runs", lambda rows: len(rows) >= runs)] if (
        runs) else []

    # Each tick expires 1 s after beat sent it, and the worker takes longer than that to start: the backlog
    # is discarded. At most one tick could still be young enough (one sent just before beat stopped).
    assert runs <= 1, f"{runs} of {len(backlog)} queued ticks ran: {fates}"
    assert fates.count("discarded") >= len(backlog) - 1
    assert len(statuses) == runs
    # No sync ran, so none recorded a run. The database itself may exist: a check-alerts tick sent just before
    # beat stopped can still be young enough to run, and reading the status creates the schema.
    if not runs and stack.registry_exists():
        wait_until(lambda: re.search(r"Task tokenwatch\.check_alerts\[[^]]+\] succeeded", log_text(stack)),
                   timeout=15, what="the check-alerts tick that created the database")
        assert stack.query("SELECT count(*) FROM sync_runs") == [(0,)]
    assert queued(stack, "fetch", "tokenwatch.sync") == []
    after = stack.sync()  # the recovered worker runs syncs as usual
    assert after["status"] == ("ok" if runs else "baseline")
    assert stack.query("SELECT count(*) FROM sync_runs") == [(runs + 1,)]


# ---- 9. security ---------------------------------------------------------------------------------------------

def test_pickled_task_message_is_refused_by_the_worker(stack: Stack, sim: Simulator) -> None:
    stack.env["TOKENWATCH_KUCOIN_URL"] = sim.url
    stack.start_worker()
    marker = stack.workdir / "unpickled"
    # Unpickling this argument would create the marker file: proof that the payload was never deserialised.
    sent = stack.celery_script(
        "from tokenwatch.tasks.names import SYNC\n"
        "class Payload:\n"
        f"    def __reduce__(self): return (open, ({str(marker)!r}, 'w'))\n"
        "result = app.send_task(SYNC, args=(Payload(),), serializer='pickle')\n"
        "print(json.dumps(result.id))\n"
    )

    wait_log(stack, r"Received invalid task message: Refusing to deserialize untrusted content of type pickle")
    log = log_text(stack)
    assert "kombu.exceptions.ContentDisallowed: Refusing to deserialize untrusted content of type pickle" in log
    assert "The message has been ignored and discarded." in log
    assert isinstance(sent, str)
    assert not marker.exists()
    assert stack.redis.llen("fetch") == 0  # dropped, not requeued in a loop
    assert not stack.registry_exists()  # nothing ran: no sync touched the registry
    assert "Task tokenwatch.sync[" not in log_text(stack)
    assert stack.sync()["status"] == "baseline"  # the worker is alive and runs JSON tasks
    assert stack.query("SELECT count(*) FROM sync_runs") == [(1,)]


PASSWORD_URL = "redis://:s3cret@127.0.0.1:1/0"  # unreachable


def test_redis_password_never_appears_in_sync_output(stack: Stack, sim: Simulator) -> None:
    stack.env["TOKENWATCH_KUCOIN_URL"] = sim.url
    stack.env["TOKENWATCH_REDIS_URL"] = PASSWORD_URL

    started = time.monotonic()
    through_broker = stack.tokenwatch("sync", "--json", "--timeout", "3")
    elapsed = time.monotonic() - started
    inline = stack.tokenwatch("sync", "--json", "--inline")
    config = subprocess.run([sys.executable, "-m", "tokenwatch.celeryconfig"], env=stack.env, cwd=ROOT,
                            capture_output=True, text=True, timeout=30, check=False)

    for result in (through_broker, inline, config):
        assert "s3cret" not in result.stdout + result.stderr, result.stdout + result.stderr
    broker = json.loads(through_broker.stdout)
    assert (through_broker.returncode, broker["status"]) == (1, "failed")
    assert broker["error"] == "broker unreachable (ConnectionError): start tokenwatch run, or use --inline"
    assert elapsed < 8.0, f"an unreachable broker took {elapsed:.1f} s to report with --timeout 3"
    outcome = json.loads(inline.stdout)
    assert (inline.returncode, outcome["status"], outcome["counts"]["active"]) == (0, "baseline", CONTRACTS)
    assert re.search(r"Redis unreachable \(.*Connection refused.*\): syncing without the sync lock and without the "
                     r"hot cache", inline.stderr), inline.stderr
    assert config.returncode == 0, config.stderr
    assert "broker_url = 'redis://***@127.0.0.1:1/0'" in config.stdout


# ---- the invariant checker itself --------------------------------------------------------------------------

# (SQL run on a copy of a healthy registry, a change to a copy of its cache, the complaint expected)
BROKEN: dict[str, tuple[str, str | None, str]] = {
    "healthy": ("", None, ""),
    "cache_lacks_an_active_token": ("", "hdel", "1 active tokens missing from tokenwatch:tokens at version 1"),
    "cache_ahead_of_registry": ("", "version", "cache version 7 is ahead of the registry revision 1"),
    "two_open_listings": (
        "INSERT INTO token_history (symbol, event_type, event_time, sync_id, details) "
        "SELECT 'XBTUSDTM', e, 1, last_sync_id, '{}' FROM registry_state, (SELECT 'listed' AS e UNION ALL "
        "SELECT 'relisted')", None, "symbols with two open listings"),
    "status_disagrees_with_history": (
        "INSERT INTO token_history (symbol, event_type, event_time, sync_id, details) "
        "SELECT 'XBTUSDTM', 'delisted', 1, last_sync_id, '{}' FROM registry_state", None,
        "tokens whose status disagrees with their last lifecycle event"),
    "event_of_no_applied_sync": (
        "INSERT INTO token_history (symbol, event_type, event_time, sync_id, details) "
        "VALUES ('XBTUSDTM', 'status_changed', 1, 'nope', '{}')", None,
        "history events of syncs with no applied sync_runs row: 'nope'"),
    "unknown_sync_status": (
        "INSERT INTO sync_runs (sync_id, started_at, finished_at, status) VALUES ('x', 1, 1, 'weird')", None,
        "sync_runs rows with an unknown status: ('x', 'weird')"),
    "failed_without_one_line_error": (
        "INSERT INTO sync_runs (sync_id, started_at, finished_at, status, error) VALUES ('x', 1, 1, 'failed', "
        "'first' || char(10) || 'second')", None, "failed sync_runs rows without a one-line error"),
    "applied_rows_do_not_match_revision": (
        "UPDATE registry_state SET revision = 3", None,
        "1 applied sync_runs rows but registry_state.revision is 3"),
    "cache_holds_a_token_that_is_not_active": (
        "", "stray", "1 symbols in tokenwatch:tokens are not active tokens: 'GONEUSDTM'"),
    "event_missing_from_the_stream": (
        "INSERT INTO token_history (symbol, event_type, event_time, sync_id, details) "
        "SELECT 'XBTUSDTM', 'params_changed', 1, last_sync_id, '{}' FROM registry_state", "unpublished",
        "the event stream is not the history: 1 events missing"),
    "stream_invents_an_event": ("", "invented", "the event stream is not the history: 0 events missing"),
}


@SQLITE_ONLY
@pytest.mark.parametrize("case", list(BROKEN))
def test_invariant_checker_names_each_broken_invariant(stack: Stack, sim: Simulator, case: str,
                                                         redis_server: EmbeddedRedis, tmp_path: Path) -> None:
    sql, cache_change, complaint = BROKEN[case]
    baseline(stack, sim)
    copy = tmp_path / "broken.db"
    with closing(sqlite3.connect(stack.db_path)) as source, closing(sqlite3.connect(copy)) as target:
        source.backup(target)
        if sql:
            target.execute(sql)
            target.commit()
    other = redis.Redis(unix_socket_path=redis_server.socket_path, db=1)
    try:
        version, hashed = cache(stack)
        other.hset(keys.TOKENS, mapping=hashed)
        other.set(keys.VERSION, version or 0)
        other.set(keys.ORIGIN, stack.redis.get(keys.ORIGIN) or b"")
        (registry_id,) = stack.query("SELECT registry_id FROM registry_state")[0]
        with closing(sqlite3.connect(copy)) as broken_db:  # the stream as a publisher would have it
            rows = list(broken_db.execute("SELECT id, symbol, event_type, sync_id FROM token_history ORDER BY id"))
        for event_id, symbol, event_type, sync_id in rows if cache_change != "unpublished" else ():
            other.xadd(keys.EVENTS, {"symbol": symbol, "event_type": event_type, "sync_id": sync_id,
                                     "registry": registry_id, "history_id": event_id})
        if cache_change == "hdel":
            other.hdel(keys.TOKENS, "XBTUSDTM")
        elif cache_change == "version":
            other.set(keys.VERSION, 7)
        elif cache_change == "stray":
            other.hset(keys.TOKENS, "GONEUSDTM", b"{}")
        elif cache_change == "invented":
            other.xadd(keys.EVENTS, {"symbol": "XBTUSDTM", "event_type": "delisted", "sync_id": "made-up",
                                     "registry": registry_id, "history_id": 99})
        if not complaint:
            check_invariants(copy, other)
            return
        with pytest.raises(AssertionError) as broken:
            check_invariants(copy, other)
        assert complaint in str(broken.value)
        assert str(broken.value).count("\n- ") == 1  # that invariant only
    finally:
        other.flushdb()
        other.close()
