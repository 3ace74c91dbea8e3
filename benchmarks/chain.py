"""The same sync end to end through the real Celery chain: a worker subprocess, timed from this process.

``tasks.sync`` reads its settings (the broker URL) from the environment at import, so ``configure_sender``
sets TOKENWATCH_REDIS_URL before the first import; the worker gets the database and exchange URLs in its own
environment.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.warm import vm_status

ROOT = Path(__file__).resolve().parents[1]
READY_TIMEOUT_S = 60.0
SYNC_TIMEOUT_S = 300.0
NOOP_RUNS = 10
# Unmeasured steady syncs after the baseline: a fresh worker's first ones compile the steady write statements
# and fill its caches, which a running worker did long ago.
WARMUP_SYNCS = 2


@dataclass(slots=True)
class ChainResult:
    """End-to-end times of syncs through the chain and the worker's memory."""

    cold_ms: float  # the first sync: a baseline into an empty registry, in a fresh worker
    e2e_ms: list[float] = field(default_factory=list)  # steady syncs, sender's view: apply_async() to get()
    outcomes: list[dict[str, Any]] = field(default_factory=list)  # the chain's own Outcome JSON of each
    pool_hwm_mb: float = 0.0  # VmHWM of the prefork pool child that ran the tasks: the whole run
    pool_hwm_steady_mb: float | None = None  # the same over the steady syncs only (None: could not reset it)
    main_hwm_mb: float = 0.0  # VmHWM of the worker's main process
    noop_ms: list[float] = field(default_factory=list)  # a three-task chain of Celery's no-op task, same route


def configure_sender(redis_url: str) -> None:
    """Point this process's Celery client at the benchmark's Redis (before tasks.sync is imported)."""
    if "tasks.sync" in sys.modules and os.environ.get("TOKENWATCH_REDIS_URL") != redis_url:
        raise RuntimeError("tasks.sync was imported with another broker URL")
    os.environ["TOKENWATCH_REDIS_URL"] = redis_url


def _children(pid: int) -> list[int]:
    found: list[int] = []
    task_dir = Path(f"/proc/{pid}/task")
    for task in task_dir.iterdir() if task_dir.exists() else []:
        children = task / "children"
        if children.exists():
            found += [int(p) for p in children.read_text().split()]
    return found


class Worker:
    """`celery -A tokenwatch.workers.app worker -Q fetch,db -c 1` with the benchmark's environment."""

    def __init__(self, workdir: Path, redis_url: str, database_url: str, kucoin_url: str, name: str) -> None:
        self.log_path = workdir / f"{name}.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith("TOKENWATCH_")}
        env.update({
            "TOKENWATCH_REDIS_URL": redis_url, "TOKENWATCH_DATABASE_URL": database_url,
            "TOKENWATCH_KUCOIN_URL": kucoin_url, "TOKENWATCH_DATA_DIR": str(workdir / "data"),
            "TOKENWATCH_HTTP_RETRIES": "0", "PYTHONPATH": str(ROOT),
        })
        self.argv = [
            sys.executable, "-m", "celery", "-A", "tokenwatch.workers.app", "worker", "-Q", "fetch,db", "-c", "1",
            "--without-mingle", "--without-gossip", "--loglevel=INFO", "-n", f"{name}@%h",
        ]
        self.env = env
        self.process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Worker:
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                self.argv, env=self.env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if " ready." in self.log_path.read_text(errors="replace"):
                return self
            if self.process.poll() is not None:
                break
            time.sleep(0.1)
        self.__exit__()
        raise RuntimeError(f"the worker did not start:\n{self.log_path.read_text(errors='replace')[-2000:]}")

    def memory(self) -> tuple[float, float]:
        """(VmHWM of the pool child, VmHWM of the main process) in MB."""
        if self.process is None:
            return 0.0, 0.0
        children = [vm_status(pid).get("VmHWM", 0) for pid in _children(self.process.pid)]
        return max(children, default=0) / 1024, vm_status(self.process.pid).get("VmHWM", 0) / 1024

    def reset_pool_peak(self) -> bool:
        """Reset the pool children's VmHWM to their current RSS (Linux clear_refs 5); False if not allowed."""
        if self.process is None:
            return False
        try:
            for pid in _children(self.process.pid):
                Path(f"/proc/{pid}/clear_refs").write_text("5")
        except OSError:
            return False
        return True

    def __exit__(self, *exc: object) -> None:
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def timed_sync() -> tuple[float, dict[str, Any]]:
    """One sync through the chain: (milliseconds from apply_async to the outcome, the outcome)."""
    from tokenwatch.syncstate import new_sync_id
    from tokenwatch.tasks.sync import sync_chain, wait_for_outcome

    sync_id = new_sync_id()
    started = time.perf_counter()
    outcome = wait_for_outcome(sync_chain(sync_id).apply_async(), SYNC_TIMEOUT_S)
    return (time.perf_counter() - started) * 1000.0, outcome


def timed_noop_chain() -> float:
    """Milliseconds of a chain of three ``celery.accumulate`` tasks (they return their argument) on the fetch
    queue: what three hops through this broker, result backend and worker cost with no work in them."""
    from celery import chain

    from tokenwatch.workers.app import app

    hop = app.signature("celery.accumulate", queue="fetch")
    started = time.perf_counter()
    chain(hop.clone(args=(1,)), hop.clone(), hop.clone()).apply_async().get(timeout=SYNC_TIMEOUT_S)
    return (time.perf_counter() - started) * 1000.0


def measure_chain(worker: Worker, runs: int, change: Callable[[int], None]) -> ChainResult:
    """A baseline sync, WARMUP_SYNCS unmeasured steady ones, then ``runs`` measured steady syncs, each after
    ``change(step)`` scripted the exchange."""
    cold_ms, outcome = timed_sync()
    if outcome["status"] != "baseline":
        raise RuntimeError(f"the chain's first sync was {outcome['status']}: {outcome['error']}")
    result = ChainResult(cold_ms=cold_ms)
    cold_peak, _ = worker.memory()
    reset = worker.reset_pool_peak()
    for step in range(WARMUP_SYNCS + runs):
        change(step)
        e2e, outcome = timed_sync()
        if outcome["status"] != "ok":
            raise RuntimeError(f"a chain sync was {outcome['status']}: {outcome['error']}")
        if step >= WARMUP_SYNCS:
            result.e2e_ms.append(e2e)
            result.outcomes.append(outcome)
    result.noop_ms = [timed_noop_chain() for _ in range(max(runs, NOOP_RUNS))]
    steady_peak, result.main_hwm_mb = worker.memory()
    result.pool_hwm_mb = max(cold_peak, steady_peak)
    result.pool_hwm_steady_mb = steady_peak if reset else None
    return result
