"""One measured sync, run in a fresh child process, then the references on the same rows.

The sync is tokenwatch.pipeline.run_inline: the chain's own steps (fetch, diff, write, in tokenwatch/steps.py)
run in this process, with the phase timings the sync reports itself.

The parent (benchmarks/run.py) prepares the pre-state (database file, Redis hash, simulator) and starts
``measure`` in a spawned process (benchmarks/child.py), so the peak RSS read here is this sync's alone.

For steady and churn the child first runs one unmeasured sync of the unchanged exchange, as the worker's
previous sync: it leaves what a running worker holds (engines, the registry snapshot, the parse memo, an open
HTTP connection). Then it pauses while the parent scripts the exchange, and runs the measured sync.
"""

from __future__ import annotations

import logging
import os
import shutil
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import redis

from benchmarks import references
from benchmarks.child import Pause
from benchmarks.warm import CallTimer, JsonTimer, vm_status, warm_writer
from tokenwatch import pipeline, process
from tokenwatch.cache import keys
from tokenwatch.clock import Timer
from tokenwatch.db import migrate
from tokenwatch.db.engine import make_engine
from tokenwatch.db.queries import load_head
from tokenwatch.domain import contracts
from tokenwatch.domain.diff import Plan
from tokenwatch.fetch import kucoin
from tokenwatch.handoff import MemoryHandoff
from tokenwatch.outcome import Outcome
from tokenwatch.settings import Settings

SCENARIOS = ("cold", "steady", "churn")
PHASES = ("api", "db_load", "process", "batch_write", "cache", "total")
REFERENCES = ("a", "b", "c")
FLOOR_LIVE = "bench:floor:live"
FLOOR_TEMP = "bench:floor:temp"

_WRITERS: dict[str, Callable[[sqlite3.Connection, references.Rows], object]] = {
    "a": references.before_per_token, "b": references.after_row_by_row, "c": references.floor_db,
}


@dataclass(frozen=True, slots=True)
class Job:
    """One measured sync: where its pre-state lives and which references to run after it."""

    size: int
    scenario: str
    sim_url: str
    redis_url: str
    db_path: str  # the registry to sync into: absent (cold) or a fresh copy of the baseline
    workdir: str
    references: tuple[str, ...] = REFERENCES
    verify: bool = True
    # A PostgreSQL registry to sync into instead of the file at db_path (prepared by the parent; no references).
    database_url: str | None = None

    @property
    def previous_sync(self) -> bool:
        """Whether a worker would have synced this registry before (not for the initial load)."""
        return self.scenario != "cold"


@dataclass(slots=True)
class RefResult:
    """One reference's time on the same rows, and whether it left the same tables as the pipeline."""

    db_ms: float
    cache_ms: float = 0.0
    same_rows: bool | None = None


@dataclass(slots=True)
class Measurement:
    """Everything one child measured."""

    phases: dict[str, float]
    decode_ms: dict[str, float]  # time in JSON decoders within the api phase (the fetch) and the process phase
    db_load_cold_ms: float | None  # the previous sync's db_load: a full load_registry (None for cold)
    db_load_warm: bool  # the diff step could trust the in-process registry (ProcessState.trusted_registry)
    warmup_ms: float  # the rolled-back first use of the write statements
    counts: dict[str, int]
    status: str
    upserts: int
    history: int
    pending: int
    rss_before_mb: float
    peak_rss_mb: float  # this child's whole life: its previous sync (the first, loading the registry) too
    sync_peak_rss_mb: float  # the measured sync's own
    db_bytes: int
    wal_bytes: int
    redis_used_bytes: int
    redis_hash_bytes: int
    refs: dict[str, RefResult] = field(default_factory=dict)
    harness_ms: dict[str, float] = field(default_factory=dict)  # time this child spent around the sync


@dataclass(slots=True)
class _Synced:
    phases: dict[str, float]
    plan: Plan
    outcome: Outcome


def reset_peak() -> None:
    """Start this process's VmHWM over from its RSS now (Linux's clear_refs), so that it measures what follows.

    Peaks are read from VmHWM, not getrusage's ru_maxrss: Linux carries ru_maxrss over an exec, so a child the
    benchmark spawns starts with the parent's peak (its simulator holds the whole exchange: 680 MB at 100,000).
    """
    with open("/proc/self/clear_refs", "w", encoding="ascii") as refs:
        refs.write("5")


def _size(path: str) -> int:
    return os.path.getsize(path) if os.path.exists(path) else 0


def _int(value: Any) -> int:
    return int(value) if isinstance(value, int | float | str | bytes) else 0


def remove_db(path: str) -> None:
    """Delete an SQLite file and its WAL and shared-memory files."""
    for suffix in ("", "-wal", "-shm"):
        if os.path.exists(path + suffix):
            os.unlink(path + suffix)


def snapshot_file(source: str, target: str) -> None:
    """Copy a live SQLite database (WAL folded in first) to target."""
    conn = sqlite3.connect(source)
    try:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()
    shutil.copyfile(source, target)


def _table(path: str, sql: str) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(path)
    try:
        return list(conn.execute(sql))
    finally:
        conn.close()


class KeepingHandoff(MemoryHandoff):
    """The inline path's memory handoff, keeping the last plan it handed over (the references need it)."""

    def __init__(self) -> None:
        super().__init__()
        self.last: Plan | None = None

    def take_plan(self, sync_id: str) -> Plan:
        self.last = super().take_plan(sync_id)
        return self.last


def _sync(settings: Settings, keep: KeepingHandoff) -> _Synced:
    """One whole sync through tokenwatch.pipeline: the steps the chain runs, in order, in this process."""
    keep.last = None
    total = Timer()
    outcome = pipeline.run_inline(pipeline.inline_context(settings, handoff=keep)).outcome()
    elapsed = total.ms()
    if outcome.status not in ("ok", "baseline") or keep.last is None:
        raise RuntimeError(f"the sync was {outcome.status}: {outcome.error}")
    phases = {phase: float(outcome.timings_ms.get(phase, 0.0)) for phase in PHASES}
    phases["total"] = elapsed  # the outcome's total has millisecond resolution
    return _Synced(phases, keep.last, outcome)


def _reference(job: Job, name: str, rows: references.Rows, client: redis.Redis, prestate: str | None) -> RefResult:
    path = os.path.join(job.workdir, f"ref-{name}.db")
    remove_db(path)
    if prestate is None:
        engine = make_engine(f"sqlite:///{path}")
        migrate.upgrade(engine)
        engine.dispose()
    else:
        shutil.copyfile(prestate, path)
    conn = references.connect(path)
    try:
        timer = Timer()
        _WRITERS[name](conn, rows)
        result = RefResult(db_ms=timer.ms())
    finally:
        conn.close()
    # Every reference also updates the hot cache, as the source system did each sync too: all three the floor's
    # way (one pipelined stream), so they cover the same work as our batch_write + cache. The live copy has the
    # size of ours, so its UNLINK costs what our publish's does.
    if prestate is not None:
        client.copy(keys.TOKENS, FLOOR_LIVE, replace=True)
    timer = Timer()
    references.floor_cache(client, FLOOR_TEMP, FLOOR_LIVE, rows.cache)
    result.cache_ms = timer.ms()
    client.unlink(FLOOR_LIVE)
    if job.verify:
        same = True
        for table in ("tokens ORDER BY symbol", "token_history ORDER BY id", "registry_state"):
            sql = f"SELECT * FROM {table}"
            same = same and _table(path, sql) == _table(job.db_path, sql)
        result.same_rows = same
    remove_db(path)
    return result


def _published_cache(client: redis.Redis) -> dict[str, bytes]:
    """The hash the sync published: its new entries, and the live ones it kept for absent-but-kept symbols."""
    raw: dict[bytes, bytes] = client.hgetall(keys.TOKENS)  # type: ignore[assignment]
    return {symbol.decode(): value for symbol, value in raw.items()}


def measure(job: Job, pause: Pause) -> Measurement:
    """Reach a running worker's state, pause for the parent to script the exchange, time one sync, references."""
    clock = Timer()
    logging.getLogger("tokenwatch").setLevel(logging.ERROR)
    settings = Settings(
        kucoin_url=job.sim_url, database_url=job.database_url or f"sqlite:///{job.db_path}", redis_url=job.redis_url,
        http_retries=0,
    )
    state = process.current()
    client = state.redis(job.redis_url)  # the client the workers use
    json_timers: dict[str, JsonTimer | CallTimer] = {
        "api": JsonTimer.install(kucoin),
        "process": CallTimer.install(contracts, "_decode_envelope", factories=("fields_decoder",)),
    }
    keep = KeepingHandoff()
    db_load_cold: float | None = None
    prestate: str | None = None
    if job.previous_sync:
        db_load_cold = _sync(settings, keep).phases["db_load"]
        if job.database_url is None:  # the references start from this state
            prestate = os.path.join(job.workdir, "prestate.db")
            snapshot_file(job.db_path, prestate)
    engine = state.engine(settings.database_url, create=True)  # as the sync steps open it: cold creates it
    before = state.trusted_registry(load_head(engine))  # what the diff step will take (steps.load_state)
    warm = before is not None
    warmup = warm_writer(settings, state)
    rss_before = vm_status()["VmRSS"] / 1024
    harness = {"prepare": clock.ms()}
    pause()
    for json_timer in json_timers.values():
        json_timer.ms = 0.0

    life_peak = vm_status()["VmHWM"] / 1024
    reset_peak()
    synced = _sync(settings, keep)
    sync_peak = vm_status()["VmHWM"] / 1024
    decode_ms = {phase: json_timer.ms for phase, json_timer in json_timers.items()}
    plan = synced.plan
    info = client.info("memory")
    measurement = Measurement(
        phases=synced.phases, decode_ms=decode_ms, db_load_cold_ms=db_load_cold, db_load_warm=warm,
        warmup_ms=warmup, counts=dict(synced.outcome.counts), status=synced.outcome.status,
        upserts=len(plan.upserts), history=len(plan.events), pending=len(plan.pending), rss_before_mb=rss_before,
        peak_rss_mb=max(life_peak, sync_peak), sync_peak_rss_mb=sync_peak, db_bytes=_size(job.db_path),
        wal_bytes=_size(job.db_path + "-wal"),
        redis_used_bytes=_int(info.get("used_memory")),
        redis_hash_bytes=_int(client.memory_usage(keys.TOKENS, samples=0)),
    )
    state.close()
    if job.references:
        timer = Timer()
        conn = sqlite3.connect(job.db_path)
        try:
            cache = _published_cache(client)
            rows = references.rows_from_db(conn, plan, [s for s in cache if s not in plan.missing], cache)
        finally:
            conn.close()
        del synced
        harness["read_back"] = timer.ms()
        timer = Timer()
        for name in job.references:
            measurement.refs[name] = _reference(job, name, rows, client, prestate)
        harness["references"] = timer.ms()
    if prestate is not None:
        remove_db(prestate)
    measurement.harness_ms = harness
    return measurement
