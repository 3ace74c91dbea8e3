"""The benchmark's reference writers write exactly the rows the pipeline writes (real SQLite files)."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import fakeredis
import orjson
import pytest
from sqlalchemy import Engine

from benchmarks import references
from tokenwatch.clock import HOUR_MS
from tokenwatch.db import migrate
from tokenwatch.db.engine import make_engine
from tokenwatch.db.queries import load_registry
from tokenwatch.db.writer import apply_plan
from tokenwatch.domain.contracts import parse_contracts
from tokenwatch.domain.diff import Plan, build_plan
from tokenwatch.domain.registry import RegistryHead, RegistryState
from tokenwatch.simulator import generate_contracts, new_contract

WINDOW_MS = 72 * HOUR_MS
T0 = 1_793_491_200_000 + 5 * 24 * HOUR_MS  # five days after the generator's reference time
T1 = T0 + 60_000

Writer = Callable[[sqlite3.Connection, references.Rows], object]
REFERENCES: dict[str, Writer] = {
    "a": references.before_per_token, "b": references.after_row_by_row, "c": references.floor_db,
}


def _plan(sync_id: str, items: list[dict[str, Any]], registry: RegistryState, now: int, **kwargs: Any) -> Plan:
    parsed = parse_contracts(items)
    return build_plan(
        sync_id, parsed.contracts, registry, now_ms=now, window_ms=WINDOW_MS, fetched=len(items),
        invalid=parsed.invalid, **kwargs,
    )


def _engine(path: Path) -> Engine:
    engine = make_engine(f"sqlite:///{path}", writer=True)
    migrate.upgrade(engine)
    return engine


def _table(path: Path, sql: str) -> list[tuple[Any, ...]]:
    with sqlite3.connect(path) as conn:
        return list(conn.execute(sql))


@pytest.fixture
def engines(tmp_path: Path) -> Iterator[dict[str, Engine]]:
    made = {name: _engine(tmp_path / f"{name}.db") for name in ("pipeline", *REFERENCES)}
    yield made
    for engine in made.values():
        engine.dispose()


def test_references_write_the_pipelines_rows(engines: dict[str, Engine], tmp_path: Path) -> None:
    items = generate_contracts(60, seed=3)
    baseline = _plan("sync-0", items, RegistryState(RegistryHead(0), {}), T0)
    assert baseline.status == "baseline"
    for engine in engines.values():
        apply_plan(engine, baseline, batch_size=25, started_at=T0, timings={})

    # Churn with every write path: 2 listed, 2 delisted, 1 absent and unconfirmed (pending), 1 absent but
    # still listed (kept), 1 with changed parameters, 1 paused.
    gone = [c["symbol"] for c in items[10:14]]
    kept = [c for c in items if c["symbol"] not in gone]
    kept[20] = {**kept[20], "tickSize": kept[20]["tickSize"] * 10, "takerFeeRate": 0.0009}
    kept[21] = {**kept[21], "status": "Paused"}
    fresh = [new_contract(f"NEWCOIN{i}", T1) for i in range(2)]
    before = load_registry(engines["pipeline"])
    plan = _plan("sync-1", kept + fresh, before, T1, still_listed=[gone[0]], unconfirmed=[gone[1]])
    assert plan.counts["listed"] == 2 and plan.counts["delisted"] == 2 and plan.counts["params_changed"] == 1
    assert plan.counts["status_changed"] == 1 and sorted(plan.missing) == sorted(gone[:2])

    apply_plan(engines["pipeline"], plan, batch_size=25, started_at=T1, timings={})
    cache = {c["symbol"]: orjson.dumps(c) for c in kept + fresh}
    with sqlite3.connect(tmp_path / "pipeline.db") as conn:
        rows = references.rows_from_db(conn, plan, [c["symbol"] for c in kept + fresh], cache)
    assert len(rows.tokens) >= 58 and len(rows.changed) >= len(plan.upserts) + 2 and len(rows.history) == 6
    for name, write in REFERENCES.items():
        conn = references.connect(str(tmp_path / f"{name}.db"))
        try:
            write(conn, rows)
        finally:
            conn.close()

    expected = _table(tmp_path / "pipeline.db", "SELECT * FROM tokens ORDER BY symbol")
    history = _table(tmp_path / "pipeline.db", "SELECT * FROM token_history ORDER BY id")
    state = _table(tmp_path / "pipeline.db", "SELECT * FROM registry_state")
    assert len(expected) == 62 and len(history) == 6
    for name in REFERENCES:
        path = tmp_path / f"{name}.db"
        assert _table(path, "SELECT * FROM tokens ORDER BY symbol") == expected, name
        assert _table(path, "SELECT * FROM token_history ORDER BY id") == history, name
        assert _table(path, "SELECT * FROM registry_state") == state, name


def test_floor_cache_replaces_the_hash_with_the_entries() -> None:
    client = fakeredis.FakeRedis()
    client.hset("live", mapping={"OLD": b"1", "KEPT": b"0"})
    entries = {f"S{i}": orjson.dumps({"i": i}) for i in range(2_500)} | {"KEPT": b"2"}
    references.floor_cache(client, "temp", "live", entries)
    assert client.hgetall("live") == {k.encode(): v for k, v in entries.items()}
    assert not client.exists("temp")
    references.floor_cache(client, "temp", "live", {})
    assert not client.exists("live")
