"""Every `--json` output of every command, read as a program would: each point in time an integer of ms.

Real processes: the CLI as a subprocess, the Redis server, a SQLite file, the simulator.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from tests.conftest import Stack
from tokenwatch.simulator import Simulator

pytestmark = pytest.mark.integration

# Durations are ms with decimals (`timings_ms`, `p50_ms`); these name points in time.
TIME_KEYS = frozenset({"event_time", "now_ms", "since", "first_seen", "last_seen", "missing_since", "age_ms"})
TIME_SUFFIXES = ("_at", "_time", "_date", "Date")


@pytest.fixture
def sim() -> Iterator[Simulator]:
    with Simulator(port=0, contracts=60, seed=5) as simulator:
        yield simulator


def times(value: Any, path: str = "") -> Iterator[tuple[str, Any]]:
    """(path, value) of every key that names a point in time, at any depth."""
    if isinstance(value, dict):
        for key, inner in value.items():
            where = f"{path}.{key}"
            if key in TIME_KEYS or key.endswith(TIME_SUFFIXES):
                yield where, inner
            yield from times(inner, where)
    elif isinstance(value, list):
        for at, inner in enumerate(value):
            yield from times(inner, f"{path}[{at}]")


def json_of(stack: Stack, *args: str) -> list[Any]:
    """The JSON a command printed (one document, or one per line for `events`)."""
    result = stack.tokenwatch(*args)
    assert result.returncode in (0, 2), result.stderr[-2000:]
    lines = [line for line in result.stdout.splitlines() if line.strip()]
    assert lines, result.stderr[-2000:]
    return [json.loads(result.stdout)] if args[0] != "events" else [json.loads(line) for line in lines]


def test_every_time_in_every_json_output_is_integer_ms(stack: Stack, sim: Simulator) -> None:
    stack.env["TOKENWATCH_KUCOIN_URL"] = sim.url
    assert stack.sync("--inline")["status"] == "baseline"
    perpetuals = [s for s in sim.symbols() if sim.contract(s)["type"] == "FFWCSX"]
    sim.delist(perpetuals[:1])
    sim.pause(perpetuals[1:2])
    sim.schedule_delisting(perpetuals[2:3])
    sim.list_new(2)
    assert stack.sync("--inline")["status"] == "ok"
    stack.env["TOKENWATCH_ALERT_WRITE_S"] = "0.000001"  # an alert stands, so `since` is shown too

    outputs = {
        "sync": json_of(stack, "sync", "--inline", "--json"),
        "tokens": json_of(stack, "tokens", "--status", "all", "--json"),
        "history": json_of(stack, "history", "--json"),
        "events": json_of(stack, "events", "--json"),
        "status": json_of(stack, "status", "--json"),
        "db check": json_of(stack, "db", "check", "--json"),
    }
    seen: dict[str, set[str]] = {}
    for command, documents in outputs.items():
        for path, value in times(documents):
            assert value is None or (isinstance(value, int) and not isinstance(value, bool)), (
                f"{command}: {path} = {value!r} is not an integer of ms")
            if value is not None:
                assert value > 0, (command, path, value)
                seen.setdefault(command, set()).add(path.rsplit(".", 1)[-1])
    assert {"event_time"} <= seen["events"] and {"event_time"} <= seen["history"]
    assert {"listed_at", "first_seen", "last_seen", "delisted_at"} <= seen["tokens"]
    assert {"now_ms", "started_at", "finished_at", "since", "age_ms"} <= seen["status"]
    # The same event, the same number, whichever command shows it.
    newest_history = outputs["history"][0][0]
    newest_event = next(e for e in reversed(outputs["events"]) if e["history_id"] == newest_history["id"])
    assert newest_event["event_time"] == newest_history["event_time"]
    # Durations are milliseconds too, as numbers.
    assert all(isinstance(v, int | float) for v in outputs["sync"][0]["timings_ms"].values())
