"""Prometheus metrics of the registry itself; Flower's /metrics covers tasks only.

Two sources, each used where it is exact:

* **State, read at scrape time** by :class:`RegistryCollector` from SQLite and Redis: tokens by status, new
  tokens, history events by type, the last good sync's time and invalid count, queue depths, worker memory,
  standing alerts. These numbers live in the database already, so reading them there is right whichever
  process or host did the sync (a pool child, another worker, ``tokenwatch sync --inline``), survives every
  restart and needs no aggregation. token_history is append-only and never pruned, so its per-type counts are
  true counters; the collector counts only rows above the last id it saw, so a scrape stays cheap.
* **Events, counted where they happen** with prometheus_client's multiprocess mode: per-phase sync durations
  (histograms), syncs by outcome, cache hits and misses by layer. sync_runs is pruned after
  TOKENWATCH_RETENTION_DAYS, so counting its rows would go backwards (a false counter reset), and cache reads
  are never stored. Syncs run in Celery's prefork pool children, so each process writes its samples to its
  own file in PROMETHEUS_MULTIPROC_DIR, which ``tokenwatch run`` creates empty for the worker; the endpoint
  merges the files with MultiProcessCollector, and worker_process_shutdown calls mark_process_dead. In a
  process without that variable (a bot using the read API, the CLI) the same metrics are ordinary in-process
  ones.

``tokenwatch run`` serves both on http://127.0.0.1:TOKENWATCH_METRICS_PORT/metrics (default 9808).
"""

from __future__ import annotations

import glob
import logging
import os
import threading
from collections.abc import Iterator, Mapping
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.multiprocess import mark_process_dead as _mark_process_dead
from prometheus_client.registry import Collector

from tokenwatch import alerts, health
from tokenwatch.db.engine import sqlite_path
from tokenwatch.domain.diff import EVENT_TYPES
from tokenwatch.outcome import PHASES, SyncStatus
from tokenwatch.process import ProcessState
from tokenwatch.settings import Settings
from tokenwatch.worker_memory import worker_rss

log = logging.getLogger(__name__)

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
ADDRESS = "127.0.0.1"
LAYERS = ("snapshot", "redis", "database")  # the read API's cache layers (tokenwatch.reader)

SYNCS = Counter("tokenwatch_syncs", "Syncs finished, by outcome", ["outcome"])
PHASE_SECONDS = Histogram(
    "tokenwatch_sync_phase_seconds", "Time of each sync phase (syncs that were not skipped)", ["phase"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0),
)
CACHE_HITS = Counter("tokenwatch_cache_hits", "Reads served by a cache layer of the read API", ["layer"])
CACHE_MISSES = Counter("tokenwatch_cache_misses", "Reads a cache layer of the read API could not serve", ["layer"])
_cache_children = {
    (layer, hit): (CACHE_HITS if hit else CACHE_MISSES).labels(layer) for layer in LAYERS for hit in (True, False)
}


def record_sync(outcome: SyncStatus, timings_ms: Mapping[str, float]) -> None:
    """Count one finished sync and its phase times. Never raises."""
    try:
        SYNCS.labels(outcome.value).inc()
        if outcome is not SyncStatus.SKIPPED:
            for phase in PHASES:
                value = timings_ms.get(phase)
                if value is not None:
                    PHASE_SECONDS.labels(phase).observe(value / 1000.0)
    except Exception as exc:  # metrics must never fail a sync
        log.warning("could not record sync metrics: %s", exc)


def record_cache_access(layer: str, hit: bool) -> None:
    """Called by tokenwatch.reader for each layer a read passed: a hit where it was served, misses before."""
    child = _cache_children.get((layer, hit))
    if child is None:
        child = (CACHE_HITS if hit else CACHE_MISSES).labels(layer)
    child.inc()


def mark_process_dead(pid: int) -> None:
    """Forget a finished worker process's live gauges (worker_process_shutdown); counters are kept."""
    path = os.environ.get(MULTIPROC_ENV)
    if path and os.path.isdir(path):
        _mark_process_dead(pid, path)  # type: ignore[no-untyped-call]


def prepare_multiproc_dir(data_dir: str) -> str:
    """An empty data_dir/prometheus for this run's worker (files of a previous run would be merged in)."""
    path = os.path.abspath(os.path.join(data_dir, "prometheus"))
    os.makedirs(path, exist_ok=True)
    for leftover in glob.glob(os.path.join(path, "*.db")):
        os.remove(leftover)
    return path


class RegistryCollector(Collector):
    """Reads the registry's state from SQLite and Redis at each scrape (see the module docstring)."""

    def __init__(self, settings: Settings, process: ProcessState) -> None:
        self.settings = settings
        self.process = process
        self._lock = threading.Lock()
        self._events = dict.fromkeys(EVENT_TYPES, 0)
        self._events_after = 0  # highest token_history id already counted

    def collect(self) -> Iterator[Metric]:
        yield from self._database()
        yield from self._redis()

    def _database(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("tokenwatch_registry_up", "1 when the registry database answered this scrape")
        path = sqlite_path(self.settings.database_url)
        if path is not None and not os.path.exists(path):  # not created yet: a scrape must not create it
            up.add_metric([], 0)
            yield up
            return
        try:
            with self.process.engine(self.settings.database_url).connect() as conn:
                counts = health.token_counts(conn)
                good = health.last_good(conn)
                with self._lock:
                    self._events_after, new = health.events_since(conn, self._events_after)
                    for kind, count in new.items():
                        self._events[kind] = self._events.get(kind, 0) + count
                    events = dict(self._events)
        except Exception as exc:  # a scrape reports the failure, it does not fail
            log.warning("metrics: registry database unreadable: %s", exc)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        tokens = GaugeMetricFamily("tokenwatch_tokens", "Tokens in the registry by status", labels=["status"])
        for name in ("active", "delisted"):
            tokens.add_metric([name], counts.get(name, 0))
        yield tokens
        yield GaugeMetricFamily("tokenwatch_tokens_new", "Tokens flagged new (listed within the window)",
                                value=counts["new"])
        history = CounterMetricFamily("tokenwatch_events", "History events recorded, by type", labels=["type"])
        for kind, count in sorted(events.items()):
            history.add_metric([kind], count)
        yield history
        if good is not None:
            yield GaugeMetricFamily("tokenwatch_last_success_timestamp_seconds",
                                    "When the last ok, baseline or suspect sync finished (Unix time)",
                                    value=int(good["finished_at"]) / 1000.0)
            yield GaugeMetricFamily("tokenwatch_invalid_contracts",
                                    "Contracts the last good sync skipped as invalid", value=int(good["invalid"]))

    def _redis(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("tokenwatch_redis_up", "1 when Redis answered this scrape")
        client, _error = health.connect_redis(self.settings, self.process)
        try:
            if client is None:
                raise ConnectionError("unreachable")
            queues, workers = health.queue_lengths(self.settings), worker_rss(client)
            standing = alerts.standing(client)
        except Exception:  # a scrape reports the failure, it does not fail
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        depth = GaugeMetricFamily("tokenwatch_queue_messages", "Messages waiting in a Celery queue",
                                  labels=["queue"])
        for name, count in queues.items():
            depth.add_metric([name], count)
        yield depth
        rss = GaugeMetricFamily("tokenwatch_worker_rss_bytes", "Resident memory of each worker process, as reported",
                                labels=["worker"])
        for name, value in workers.items():
            rss.add_metric([name], value)
        yield rss
        alert = GaugeMetricFamily("tokenwatch_alert", "1 while the alert stands (tokenwatch status)", labels=["name"])
        for name in alerts.NAMES:
            alert.add_metric([name], 1 if name in standing else 0)
        yield alert


def build_registry(settings: Settings, process: ProcessState, multiproc_dir: str | None) -> CollectorRegistry:
    """The endpoint's registry: the worker's multiprocess files (if any) plus the registry's own state."""
    registry = CollectorRegistry(auto_describe=False)
    if multiproc_dir:
        MultiProcessCollector(registry, path=multiproc_dir)  # type: ignore[no-untyped-call]
    registry.register(RegistryCollector(settings, process))
    return registry


def serve(settings: Settings, process: ProcessState, multiproc_dir: str | None) -> WSGIServer | None:
    """Serve /metrics on 127.0.0.1:TOKENWATCH_METRICS_PORT in a thread; None when off or the port is taken."""
    if settings.metrics_port == 0:
        return None
    try:
        server, _thread = start_http_server(settings.metrics_port, addr=ADDRESS,
                                            registry=build_registry(settings, process, multiproc_dir))
    except OSError as exc:
        log.warning("metrics endpoint not started on %s:%d: %s", ADDRESS, settings.metrics_port, exc)
        return None
    log.info("Prometheus metrics on http://%s:%d/metrics", ADDRESS, settings.metrics_port)
    return server
