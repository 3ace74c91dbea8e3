"""Cold against warm: a fresh process's first sync beside the same process's later ones.

With several processes on several nodes the diff lands on any of them, so most diffs run in a process that did
not make the last commit. Each child here is such a process: fresh (spawned), it syncs a registry another
process wrote, once with the registry snapshot that process's diff shared in Redis (cache/snapshot.py) and
once with that snapshot deleted (the database is read, as before the snapshot existed). Then it syncs again,
warm. Market data moves on every call, and 1% of the contracts change listing metadata (exchange.SteadyChange).
The figure compared is the sync's work: db_load + process + batch_write (network and cache excluded).
"""

from __future__ import annotations

import logging
import statistics
import time
from dataclasses import dataclass, field
from typing import Any

import redis

from benchmarks import exchange
from benchmarks.child import Pause, in_child
from tokenwatch import pipeline, prepare, process
from tokenwatch.cache import snapshot
from tokenwatch.db.engine import make_engine
from tokenwatch.db.queries import load_head
from tokenwatch.settings import Settings
from tokenwatch.simulator import Simulator

SIZE = 5000
RUNS = 7
WARM_SYNCS = 2  # syncs after the cold one; the last is the warm figure (the first fills what the cold one began)
WORK = ("db_load", "process", "batch_write")
PHASES = ("api", *WORK, "cache")
TARGET = 1.5


@dataclass(frozen=True, slots=True)
class ColdJob:
    """One fresh process: the registry to sync, and whether the shared snapshot is left for it."""

    sim_url: str
    redis_url: str
    db_path: str
    shared: bool
    prepared: bool = True


@dataclass(slots=True)
class ColdResult:
    """The phases of the cold sync and of the last warm one, and where the cold one found the registry."""

    source: str  # "snapshot" or "database"
    cold: dict[str, float]
    warm: dict[str, float]


def _settings(job: ColdJob) -> Settings:
    return Settings(kucoin_url=job.sim_url, database_url=f"sqlite:///{job.db_path}", redis_url=job.redis_url,
                    http_retries=0)


def _phases(settings: Settings) -> dict[str, float]:
    cpu = time.process_time()
    outcome = pipeline.sync_inline(settings)
    cpu_ms = (time.process_time() - cpu) * 1000.0
    if outcome.status != "ok":
        raise RuntimeError(f"the sync was {outcome.status}: {outcome.error}")
    # The process's CPU time over the whole sync (network waits excluded, its own HTTP and Redis work included):
    # steadier than wall time on a host shared with other work.
    return {**{phase: float(outcome.timings_ms.get(phase, 0.0)) for phase in PHASES}, "cpu": cpu_ms}


def _head_source(job: ColdJob, settings: Settings) -> str:
    """Whether the registry's current head has a snapshot to trust (read with a throwaway engine and client,
    so that the measured sync opens its own as a fresh process does)."""
    engine = make_engine(settings.database_url)
    try:
        head = load_head(engine)
    finally:
        engine.dispose()
    client = redis.Redis.from_url(job.redis_url)
    try:
        if not job.shared and head.registry_id is not None:
            client.unlink(snapshot.snapshot_key(head.registry_id))
        return "snapshot" if snapshot.load(client, head) is not None else "database"
    finally:
        client.close()


def cold_then_warm(job: ColdJob, pause: Pause) -> ColdResult:
    """In a fresh process: one cold sync, then WARM_SYNCS more; the exchange moves before each."""
    logging.getLogger("tokenwatch").setLevel(logging.ERROR)
    settings = _settings(job)
    source = _head_source(job, settings)
    if job.prepared:
        prepare.prepare(settings, process.current())  # what a worker's pool process does when it starts
    pause()
    cold = _phases(settings)
    warm: dict[str, float] = {}
    for _ in range(WARM_SYNCS):
        pause()
        warm = _phases(settings)
    process.current().close()
    return ColdResult(source, cold, warm)


def _baseline(job: ColdJob, pause: Pause) -> str:
    logging.getLogger("tokenwatch").setLevel(logging.ERROR)
    outcome = pipeline.sync_inline(_settings(job))
    process.current().close()
    return str(outcome.status)


def work(phases: dict[str, float]) -> float:
    """The sync's own work: network and cache excluded."""
    return sum(phases[p] for p in WORK)


@dataclass(slots=True)
class ColdWarm:
    """Every child's result, by whether the snapshot was left for it."""

    size: int
    shared: list[ColdResult] = field(default_factory=list)
    database: list[ColdResult] = field(default_factory=list)


def measure(sim: Simulator, redis_url: str, db_path: str, runs: int, seed: int) -> ColdWarm:
    """A baseline, then per run two fresh children (snapshot shared, snapshot deleted) alternating."""
    job = ColdJob(sim.url, redis_url, db_path, shared=True)
    status = in_child(_baseline, job)
    if status != "baseline":
        raise RuntimeError(f"the first sync was {status}")
    change = exchange.SteadyChange(sim, seed)
    step = 0

    def move() -> None:
        nonlocal step
        change.apply(step)
        exchange.warm_body(sim)
        step += 1

    result = ColdWarm(len(sim.symbols()))
    for _ in range(runs):
        for shared in (True, False):
            found = in_child(cold_then_warm, ColdJob(sim.url, redis_url, db_path, shared), move)
            (result.shared if shared else result.database).append(found)
    change.revert()
    return result


def _stat(values: list[float]) -> dict[str, float] | None:
    if not values:
        return None
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def summary(result: ColdWarm) -> dict[str, Any]:
    """Medians of the work (db_load + process + batch_write) and of each phase, and the ratios to warm."""
    warm = [work(r.warm) for r in (*result.shared, *result.database)]
    out: dict[str, Any] = {"size": result.size, "runs": len(result.shared), "warm_ms": _stat(warm)}
    warm_median = statistics.median(warm) if warm else None
    for name, runs in (("shared", result.shared), ("database", result.database)):
        cold = [work(r.cold) for r in runs]
        out[name] = {
            "cold_ms": _stat(cold), "sources": sorted({r.source for r in runs}),
            "phases": {p: _stat([r.cold[p] for r in runs]) for p in (*PHASES, "cpu")},
            "ratio": statistics.median(cold) / warm_median if cold and warm_median else None,
            "cpu_ratio": statistics.median(r.cold["cpu"] for r in runs) / statistics.median(
                r.warm["cpu"] for r in (*result.shared, *result.database)) if runs else None,
        }
    out["warm_phases"] = {p: _stat([r.warm[p] for r in (*result.shared, *result.database)]) for p in (*PHASES, "cpu")}
    return out
