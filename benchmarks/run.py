"""Benchmark the sync: ``python -m benchmarks.run [--sizes ...] [--runs N] [--json] [--skip-chain] [--soak [N]]
[--database postgresql+psycopg://...]``.

Starts a private Redis (unix socket, temp dir) and, per size, the local simulator; every measured sync runs in
a fresh spawned child (benchmarks/scenarios.py). Progress goes to stderr; stdout gets the table, or with
--json one JSON object and nothing else.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import platform
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis

from benchmarks import chain, coldwarm, exchange, nodes_soak, postgres, report, soak
from benchmarks.child import in_child
from benchmarks.render import render
from benchmarks.scenarios import REFERENCES, SCENARIOS, Job, Measurement, measure, remove_db, snapshot_file
from tokenwatch.cache import keys
from tokenwatch.embedded import EmbeddedRedis
from tokenwatch.simulator import Simulator

DEFAULT_SIZES = (100, 530, 1000, 5000, 50_000, 100_000)
SEED = 20261126
SMALL = 5000  # up to this size: 5 runs per scenario
MEDIUM = 50_000  # up to this size: 3 runs; above: 2
REF_BUDGET_S = 25.0  # seconds one reference may take per size (see plan_references)
EVERY_RUN = "every run"
FIRST_RUNS = "first run of each scenario"
FIRST_STEADY = "first steady run only"
SKIPPED = "skipped (too slow)"
SLOW_REFERENCES = ("a", "b")
CHAIN_MAX_SIZE = 5000
# Syncs through the chain per size: each takes well under a second up to 5,000 contracts, and its median is
# the figure the targets compare, so it gets more samples than the in-process scenarios.
CHAIN_RUNS = 15
TWO_NODES_SYNCS = 60  # per run of --database's one node against two (about 1 min on 2 cores)
TWO_NODES_SIZE = 5000
BASE_TOKENS = "bench:baseline:tokens"
REFERENCE_NOTES = {
    "(a),(b)": "DB writes as the source system described them, then the same cache written the floor's way (one "
               "pipelined stream; the source system updated its cache every sync too): the same work as our "
               "batch_write+cache",
    "(c)": "the rows our sync changed (its upserts, and its delisting and missing marks as full-row upserts), its "
           "history rows and state, raw executemany in one transaction; then the same hash written to Redis in one "
           "pipelined stream, packed as our staging packs it (cache.redis_client.pack_hset and stream)",
    "budget": f"a reference runs in every run when its time estimated from the previous size fits {REF_BUDGET_S:g} s "
              "per size, else in the first run of each scenario, else in the first steady run, else not",
    "same rows": "each reference's tokens table (and history for (c)) is compared with ours, row for row, in the "
                 "first run of each scenario (above 5,000 contracts: the first steady run)",
}

_START = time.monotonic()


def progress(message: str) -> None:
    """One line on stderr (stdout is for the table or the JSON)."""
    print(f"[{time.monotonic() - _START:6.1f} s] {message}", file=sys.stderr, flush=True)


def reset_cache(client: redis.Redis) -> None:
    """No hot cache and no version: what an empty registry has."""
    client.unlink(keys.TOKENS, keys.VERSION, keys.SYNC_LOCK)


def default_runs(size: int) -> int:
    """Runs per scenario: 5 up to 5,000 contracts, 3 up to 50,000, 2 above (the ten-minute budget)."""
    return 5 if size <= SMALL else 3 if size <= MEDIUM else 2


def plan_references(done: list[report.SizeResult], size: int, runs: int) -> dict[str, str]:
    """Which references run at this size, from their time at the largest size measured so far.

    Every run when that fits REF_BUDGET_S, else the first run of each scenario, else the first steady run,
    else none ("skipped (too slow)"): the default run must stay within ten minutes on two cores.
    """
    plan: dict[str, str] = {}
    previous = done[-1] if done else None
    for name in REFERENCES:
        times = [r.db_ms + r.cache_ms for ms in previous.measurements.values() for m in ms
                 if (r := m.refs.get(name)) is not None] if previous else []
        if previous is None or not times:
            plan[name] = EVERY_RUN if previous is None or name not in SLOW_REFERENCES else SKIPPED
            continue
        estimate_s = max(times) / 1000 * size / previous.size
        if estimate_s * runs * len(SCENARIOS) <= REF_BUDGET_S:
            plan[name] = EVERY_RUN
        elif estimate_s * len(SCENARIOS) <= REF_BUDGET_S:
            plan[name] = FIRST_RUNS
        elif estimate_s <= REF_BUDGET_S / 2:
            plan[name] = FIRST_STEADY
        else:
            plan[name] = f"skipped (too slow: ~{estimate_s:.0f} s a run)"
    return plan


class Bench:
    """One benchmark run: a private Redis, a temp dir, and the sizes measured one after the other."""

    def __init__(self, workdir: Path, server: EmbeddedRedis, with_chain: bool, chain_max: int,
                 chain_runs: int = CHAIN_RUNS, postgres: postgres.Server | None = None) -> None:
        self.workdir = workdir
        self.postgres = postgres
        self.redis_url = server.url
        self.client = redis.Redis(unix_socket_path=server.socket_path)
        self.with_chain = with_chain
        self.chain_max = chain_max
        self.chain_runs = chain_runs
        self.results: list[report.SizeResult] = []

    def _job(self, size: int, scenario: str, sim: Simulator, db: Path, run: int, plan: dict[str, str]) -> Job:
        refs = tuple(n for n, p in plan.items() if p == EVERY_RUN or (
            run == 0 and (p == FIRST_RUNS or (p == FIRST_STEADY and scenario == "steady"))))
        # Row-for-row checks cost a full read of both tables: every scenario's first run up to SMALL, above
        # it the first steady run only.
        verify = run == 0 and (size <= SMALL or scenario == "steady")
        return Job(size, scenario, sim.url, self.redis_url, str(db), str(db.parent), refs, verify=verify)

    def _measure(self, job: Job, run: int, runs: int, between: Callable[[], None] | None = None) -> Measurement:
        m = in_child(measure, job, between)
        progress(f"{job.size:>7,} {job.scenario:<6} run {run + 1}/{runs}: total {m.phases['total']:,.0f} ms, "
                 f"api {m.phases['api']:,.0f}, process {m.phases['process']:,.0f}, write "
                 f"{m.phases['batch_write']:,.0f}, cache {m.phases['cache']:,.0f}, refs "
                 + ", ".join(f"{k} {r.db_ms + r.cache_ms:,.0f}" for k, r in m.refs.items())
                 + "; harness " + ", ".join(f"{k} {v / 1000:.1f} s" for k, v in m.harness_ms.items()))
        return m

    def size(self, size: int, runs: int) -> report.SizeResult:
        """Cold, steady and churn runs at one size, then the Celery chain."""
        started = time.monotonic()
        folder = self.workdir / f"n{size}"
        folder.mkdir()
        plan = plan_references(self.results, size, runs)
        result = report.SizeResult(size, runs, {s: [] for s in SCENARIOS}, plan)
        with Simulator(port=0, contracts=size, seed=SEED) as sim:
            exchange.warm_body(sim)
            base = folder / "baseline.db"
            version: bytes | None = None
            for run in range(runs):
                reset_cache(self.client)
                db = folder / f"cold-{run}.db"
                job = self._job(size, "cold", sim, db, run, plan)
                result.measurements["cold"].append(self._measure(job, run, runs))
                if run == 0:
                    snapshot_file(str(db), str(base))
                    self.client.copy(keys.TOKENS, BASE_TOKENS, replace=True)
                    found = self.client.get(keys.VERSION)
                    version = found if isinstance(found, bytes) else None
                remove_db(str(db))
            changes: dict[str, exchange.SteadyChange | exchange.ChurnChange] = {
                "steady": exchange.SteadyChange(sim, SEED), "churn": exchange.ChurnChange(sim, SEED),
            }
            for scenario, change in changes.items():
                for run in range(runs):
                    self.client.copy(BASE_TOKENS, keys.TOKENS, replace=True)
                    self.client.set(keys.VERSION, version or b"0")
                    self.client.unlink(keys.SYNC_LOCK)
                    db = folder / f"{scenario}-{run}.db"
                    shutil.copyfile(base, db)

                    def script(change: exchange.SteadyChange | exchange.ChurnChange = change, run: int = run) -> None:
                        change.apply(run)
                        exchange.warm_body(sim)

                    result.measurements[scenario].append(self._measure(
                        self._job(size, scenario, sim, db, run, plan), run, runs, script))
                    change.revert()
                    remove_db(str(db))
                if scenario == "steady" and self.postgres is not None:
                    self._postgres_steady(result, sim, runs, version, change)
            self.client.unlink(BASE_TOKENS)
            self._chain(result, sim, folder)
        result.seconds = time.monotonic() - started
        self.results.append(result)
        return result

    def _postgres_steady(self, result: report.SizeResult, sim: Simulator, runs: int, version: bytes | None,
                         change: exchange.SteadyChange | exchange.ChurnChange) -> None:
        """The steady runs again on PostgreSQL, in the same run: each from a copy of a PostgreSQL baseline made
        by one cold sync (CREATE DATABASE ... TEMPLATE, the counterpart of the file copy)."""
        assert self.postgres is not None
        folder = self.workdir / f"n{result.size}"
        base = self.postgres.create(f"b{result.size}")
        reset_cache(self.client)
        cold = Job(result.size, "cold", sim.url, self.redis_url, str(folder / "pg"), str(folder), (), verify=False,
                   database_url=base)
        in_child(measure, cold, None)
        measured: list[Measurement] = []
        for run in range(runs):
            self.client.copy(BASE_TOKENS, keys.TOKENS, replace=True)
            self.client.set(keys.VERSION, version or b"0")
            self.client.unlink(keys.SYNC_LOCK)
            url = self.postgres.create(f"s{result.size}", template=base)

            def script(run: int = run) -> None:
                change.apply(run)
                exchange.warm_body(sim)

            job = Job(result.size, "steady", sim.url, self.redis_url, str(folder / "pg"), str(folder), (),
                      verify=False, database_url=url)
            m = in_child(measure, job, script)
            progress(f"{result.size:>7,} steady on PostgreSQL run {run + 1}/{runs}: total {m.phases['total']:,.0f} "
                     f"ms, write {m.phases['batch_write']:,.0f}, db_load {m.phases['db_load']:,.0f}")
            measured.append(m)
            change.revert()
            self.postgres.drop(url)
        self.postgres.drop(base)
        result.extra["postgresql"] = postgres.summary(measured, result.measurements["steady"])

    def _chain(self, result: report.SizeResult, sim: Simulator, folder: Path) -> None:
        if not self.with_chain:
            result.chain_note = "skipped (--skip-chain)"
            return
        if result.size > self.chain_max:
            steady = report.stat(m.phases["total"] for m in result.measurements["steady"])
            estimate = (steady["median"] if steady else 0.0) / 1000
            result.chain_note = (
                f"skipped above {self.chain_max:,} contracts (too slow for the time budget: an in-process steady "
                f"sync alone takes {estimate:.1f} s here; --chain-max-size to include)")
            return
        reset_cache(self.client)
        change = exchange.SteadyChange(sim, SEED)

        def step(run: int) -> None:
            change.apply(run)
            exchange.warm_body(sim)

        db_url = f"sqlite:///{folder / 'chain.db'}"
        with chain.Worker(folder, self.redis_url, db_url, sim.url, f"bench{result.size}") as worker:
            result.chain = chain.measure_chain(worker, self.chain_runs, step)
        change.revert()
        e2e = report.stat(result.chain.e2e_ms)
        progress(f"{result.size:>7,} celery chain: e2e median {e2e['median'] if e2e else 0:,.1f} ms, "
                 f"pool child peak {result.chain.pool_hwm_mb:.0f} MB")
        result.chain_note = (f"a fresh worker: one baseline sync, {chain.WARMUP_SYNCS} unmeasured steady syncs, "
                             "then the measured steady syncs (warm worker)")

    def cold_warm(self, size: int, runs: int) -> coldwarm.ColdWarm:
        """Fresh processes' first syncs against their later ones (benchmarks/coldwarm.py)."""
        folder = self.workdir / "coldwarm"
        folder.mkdir()
        reset_cache(self.client)
        with Simulator(port=0, contracts=size, seed=SEED) as sim:
            exchange.warm_body(sim)
            progress(f"cold vs warm: {size:,} contracts, {runs} fresh processes with the shared snapshot and "
                     f"{runs} without")
            found = coldwarm.measure(sim, self.redis_url, str(folder / "coldwarm.db"), runs, SEED)
        for name, results in (("shared", found.shared), ("database", found.database)):
            cold = [coldwarm.work(r.cold) for r in results]
            progress(f"cold vs warm: cold ({name}) work {sorted(cold)[len(cold) // 2]:,.0f} ms, warm "
                     f"{sorted(coldwarm.work(r.warm) for r in results)[len(results) // 2]:,.0f} ms")
        return found

    def soak(self, syncs: int) -> soak.SoakResult:
        """`syncs` consecutive steady syncs of 5,000 contracts in one child process."""
        folder = self.workdir / "soak"
        folder.mkdir()
        reset_cache(self.client)
        with Simulator(port=0, contracts=SMALL, seed=SEED) as sim:
            change = exchange.SteadyChange(sim, SEED)
            changes = {s: next(iter(f.items())) for s, f in change.original.items()}
            job = soak.SoakJob(syncs, sim.url, self.redis_url, str(folder / "soak.db"), changes)
            progress(f"soak: {syncs} steady syncs of {SMALL:,} contracts in one process")
            return in_child(soak.soak, job)


def compare_nodes(database: str, syncs: int, workdir: Path) -> dict[str, Any]:
    """One node against two on PostgreSQL (benchmarks/nodes_soak.py --compare-nodes), in a process of its own:
    its Celery app, its nodes and its private Redis are not this benchmark's."""
    progress(f"one node against two: {syncs} steady syncs of {TWO_NODES_SIZE:,} contracts each")
    out = workdir / "two_nodes.json"
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.nodes_soak", "--compare-nodes", "--syncs", str(syncs), "--contracts",
         str(TWO_NODES_SIZE), "--database", database, "--json-out", str(out)],
        capture_output=True, text=True, check=False,
    )
    if not out.exists():
        last = (result.stderr.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"the one-node-against-two comparison failed (exit {result.returncode}): {last}")
    found: dict[str, Any] = json.loads(out.read_text())
    return found


def code_state() -> str:
    """The commit measured, and how many files differ from it in the working tree (read-only git calls)."""
    root = Path(__file__).resolve().parents[1]
    git = shutil.which("git")
    if git is None:
        return "unknown (no git)"
    try:
        head = subprocess.run([git, "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True,
                              check=True, timeout=10).stdout.strip()
        # --no-optional-locks: status must not even refresh the index.
        dirty = subprocess.run([git, "--no-optional-locks", "status", "--porcelain"], cwd=root,
                               capture_output=True, text=True, check=True, timeout=10).stdout.splitlines()
    except (OSError, subprocess.SubprocessError):
        return "unknown (git failed)"
    return f"{head} + {len(dirty)} uncommitted files" if dirty else head


def machine(client: redis.Redis, elapsed: float) -> dict[str, object]:
    """What the figures were measured on."""
    server = client.info("server")
    return {
        "code": code_state(),
        "cpus": os.cpu_count(), "python": platform.python_version(), "sqlite": sqlite3.sqlite_version,
        "redis": server.get("redis_version"), "celery": importlib.metadata.version("celery"),
        "platform": platform.platform(), "elapsed_s": elapsed, "seed": SEED, "reference_notes": REFERENCE_NOTES,
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default=",".join(map(str, DEFAULT_SIZES)),
                        help="comma-separated contract counts, or 'none' (with --soak) (default: %(default)s)")
    parser.add_argument("--runs", type=int, default=None,
                        help=f"runs per scenario (default: 5 up to {SMALL:,} contracts, 3 up to {MEDIUM:,}, 2 above)")
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout instead of the table")
    parser.add_argument("--skip-chain", action="store_true", help="do not time the Celery chain")
    parser.add_argument("--chain-runs", type=int, default=CHAIN_RUNS,
                        help="measured syncs through the Celery chain per size (default: %(default)s)")
    parser.add_argument("--chain-max-size", type=int, default=CHAIN_MAX_SIZE,
                        help="largest size timed through the Celery chain (default: %(default)s)")
    parser.add_argument("--cold-warm-size", type=int, default=coldwarm.SIZE, metavar="N",
                        help="contracts in the cold-vs-warm section, 0 to skip it (default: %(default)s)")
    parser.add_argument("--cold-warm-runs", type=int, default=coldwarm.RUNS, metavar="N",
                        help="fresh processes per kind in the cold-vs-warm section (default: %(default)s)")
    parser.add_argument("--soak", type=int, nargs="?", const=500, default=None, metavar="N",
                        help="also run N consecutive steady syncs of 5,000 contracts in one process (default N: 500)")
    parser.add_argument("--database", default=None, metavar="URL",
                        help="also run the steady scenario on this PostgreSQL (postgresql+psycopg://...), beside "
                             "SQLite, and one node against two on it; it creates and drops databases named after "
                             "URL's")
    parser.add_argument("--two-nodes-syncs", type=int, default=TWO_NODES_SYNCS, metavar="N",
                        help="with --database: steady syncs of 5,000 contracts through one node, then two "
                             "(benchmarks.nodes_soak --compare-nodes), 0 to skip (default: %(default)s)")
    args = parser.parse_args(argv)
    if args.database is not None and not args.database.startswith("postgresql+psycopg://"):
        parser.error("--database takes a postgresql+psycopg:// URL (SQLite is always measured)")
    try:
        text = "" if args.sizes.strip().lower() == "none" else args.sizes
        args.sizes = sorted({int(s) for s in text.split(",") if s.strip()})
    except ValueError:
        parser.error("--sizes takes comma-separated integers")
    if not args.sizes and not args.soak and not args.cold_warm_size and not (args.database and args.two_nodes_syncs):
        parser.error("nothing to run: give --sizes, --soak, --cold-warm-size or --database")
    if args.cold_warm_size and (args.cold_warm_size < 60 or args.cold_warm_runs < 1):
        parser.error("the cold-vs-warm size must be >= 60 (or 0) and its runs >= 1")
    if args.two_nodes_syncs and args.two_nodes_syncs <= nodes_soak.WARMUP:
        parser.error(f"--two-nodes-syncs must be 0 or more than the {nodes_soak.WARMUP} warm-up syncs")
    if (args.sizes and min(args.sizes) < 60) or (args.runs is not None and args.runs < 1) or args.chain_runs < 1:
        parser.error("sizes must be >= 60, and runs and chain runs >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="twbench-"))
    soak_result: soak.SoakResult | None = None
    cold_warm: coldwarm.ColdWarm | None = None
    two_nodes: dict[str, Any] | None = None
    try:
        with EmbeddedRedis(str(workdir / "redis.sock"), str(workdir / "redis")) as server:
            pg = postgres.Server(args.database) if args.database else None
            bench = Bench(workdir, server, not args.skip_chain, args.chain_max_size, args.chain_runs, pg)
            # The embedded server snapshots every minute by default: a fork and an RDB write mid-measurement.
            bench.client.config_set("save", "")
            if not args.skip_chain:
                chain.configure_sender(server.url)
            for size in args.sizes:
                runs = args.runs or default_runs(size)
                progress(f"{size:,} contracts, {runs} run{'s' if runs > 1 else ''} per scenario")
                bench.size(size, runs)
            if args.cold_warm_size:
                cold_warm = bench.cold_warm(args.cold_warm_size, args.cold_warm_runs)
            if args.database and args.two_nodes_syncs:
                two_nodes = compare_nodes(args.database, args.two_nodes_syncs, workdir)
            if args.soak:
                soak_result = bench.soak(args.soak)
            meta = machine(bench.client, time.monotonic() - _START)
            bench.client.close()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    built = report.build(bench.results, soak_result, args.soak or 0, meta,
                         coldwarm.summary(cold_warm) if cold_warm else None, two_nodes)
    print(json.dumps(built) if args.json else render(built))
    return 0


if __name__ == "__main__":
    sys.exit(main())
