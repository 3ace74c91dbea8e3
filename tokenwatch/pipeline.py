"""The sync's stages as plain functions: fetch → diff-and-build → batch-write → cache. No Celery here.

Tasks (tasks/sync.py) and ``tokenwatch sync --inline`` call the same functions; tasks hand data between
stages through Redis keys, the inline path in memory.
"""

from __future__ import annotations

import gc
import logging
import os
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import redis
from sqlalchemy.exc import SQLAlchemyError

from tokenwatch import metrics
from tokenwatch.cache import events, hot, keys, lock
from tokenwatch.db.engine import get_engine
from tokenwatch.db.queries import load_registry, sync_run
from tokenwatch.db.schema import PHASES
from tokenwatch.db.writer import WriteResult, apply_plan, record_outcome, sync_run_row
from tokenwatch.domain.contracts import Memo, RawJson, contract_list, parse_contracts
from tokenwatch.domain.diff import COUNT_KEYS, Plan, build_plan, is_suspect, missing_symbols
from tokenwatch.domain.registry import Registry
from tokenwatch.errors import BadResponseError, FetchError, StaleSnapshotError, TokenwatchError
from tokenwatch.fetch import kucoin
from tokenwatch.settings import Settings

log = logging.getLogger("tokenwatch.sync")

STATUSES = ("ok", "baseline", "suspect", "skipped", "failed")
NEW_LISTINGS_LOGGED = 10
# At most this many absent symbols are checked one by one per sync; the rest wait for a second absence.
MAX_CONFIRMATIONS = 50


def now_ms() -> int:
    """Wall-clock milliseconds since the epoch."""
    return int(time.time() * 1000)


def new_sync_id() -> str:
    """A unique, time-ordered sync id such as 20261126T140501Z-1a2b3c."""
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ-") + secrets.token_hex(3)


@dataclass(slots=True)
class Outcome:
    """What one sync did: the JSON the CLI prints and the task chain returns."""

    sync_id: str
    status: str
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(COUNT_KEYS, 0))
    timings_ms: dict[str, float] = field(default_factory=dict)
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        """The CLI's --json object."""
        return {
            "sync_id": self.sync_id, "status": self.status, "counts": self.counts,
            "timings_ms": {k: round(self.timings_ms[k], 2) for k in PHASES if k in self.timings_ms},
            "error": self.error,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Outcome:
        """Inverse of to_json."""
        return cls(
            sync_id=data["sync_id"], status=data["status"], counts=dict(data["counts"]),
            timings_ms=dict(data["timings_ms"]), error=data.get("error"),
        )


@dataclass(slots=True)
class Snapshot:
    """The raw answer of the exchange, as fetched."""

    sync_id: str
    started_at: int
    fetched_at_ms: int
    body: bytes | bytearray
    api_ms: float


@dataclass(slots=True)
class Built:
    """The diff's product: the plan, the next cache entries and the timings so far."""

    plan: Plan
    entries: dict[str, RawJson]  # symbol -> its JSON text, sliced from the exchange's answer
    started_at: int
    timings: dict[str, float]


class Timer:
    """Milliseconds since construction."""

    def __init__(self) -> None:
        self.start = time.perf_counter()

    def ms(self) -> float:
        return (time.perf_counter() - self.start) * 1000.0


# ---- fetch ---------------------------------------------------------------------------------------------

def fetch_snapshot(settings: Settings, sync_id: str, started_at: int, *, retry: bool = True) -> Snapshot:
    """Call the active-contracts endpoint (with bounded retries when retry is set); the body stays undecoded
    when its envelope plainly says success (build() decodes it, once)."""
    def call() -> kucoin.Fetched:
        return kucoin.fetch_active(
            settings.kucoin_url, timeout_s=settings.http_timeout_s, max_bytes=settings.max_response_bytes,
            decode=False,
        )

    timer = Timer()
    paused = gc.isenabled()
    gc.disable()  # see build(): decoding makes many fresh objects
    try:
        fetched = kucoin.fetch_with_retries(call, retries=settings.http_retries if retry else 0)
    finally:
        if paused:
            gc.enable()
    return Snapshot(sync_id, started_at, fetched.fetched_at_ms, fetched.body, timer.ms())


# ---- diff and build ------------------------------------------------------------------------------------

_registry_snapshot: tuple[int, Registry] | None = None  # (pid, post-state of the last plan built here)


def load_registry_state(settings: Settings, client: redis.Redis | None) -> Registry:
    """The registry from the in-process snapshot when its revision matches Redis's version, else one query."""
    global _registry_snapshot  # noqa: PLW0603 - one per process, replaced in one assignment
    cached = _registry_snapshot
    if cached is not None and cached[0] == os.getpid() and client is not None:
        try:
            if hot.cache_version(client) == cached[1].revision:
                return cached[1]
        except redis.RedisError:
            pass
    registry = load_registry(get_engine(settings.database_url))
    _registry_snapshot = (os.getpid(), registry)
    return registry


_memo: tuple[int, Memo] | None = None


def _parse_memo() -> Memo:
    """This process's validation memo (see domain.contracts.parse_contracts)."""
    global _memo  # noqa: PLW0603 - one per process
    if _memo is None or _memo[0] != os.getpid():
        _memo = (os.getpid(), {})
    return _memo[1]


def remember_registry(registry: Registry) -> None:
    """Keep the registry as it will be after this plan commits, for the next sync in this process."""
    global _registry_snapshot  # noqa: PLW0603
    _registry_snapshot = (os.getpid(), registry)


def decode_contract_list(body: bytes | bytearray) -> Sequence[RawJson]:
    """One JSON text per contract out of an active-contracts envelope already checked by the fetch step."""
    data = contract_list(body)
    if data is None:
        raise BadResponseError("staged snapshot holds no contract list")
    return data


def confirm_missing(settings: Settings, missing: list[str]) -> tuple[list[str], list[str]]:
    """Ask the exchange about each absent symbol: (still listed and Open, could not be checked)."""
    still_listed: list[str] = []
    unconfirmed = list(missing[MAX_CONFIRMATIONS:])
    for symbol in missing[:MAX_CONFIRMATIONS]:
        try:
            status = kucoin.contract_status(settings.kucoin_url, symbol, timeout_s=settings.http_timeout_s)
        except FetchError as exc:
            log.warning("could not confirm that %s is gone (%s): waiting for a second absence", symbol, exc)
            unconfirmed.append(symbol)
            continue
        if status == "Open":
            log.warning("%s was missing from the list but is still Open: a flaky omission, kept active", symbol)
            still_listed.append(symbol)
    return still_listed, unconfirmed


def build(settings: Settings, snapshot: Snapshot, client: redis.Redis | None) -> Built:
    """Parse, load the registry once, classify, and build the plan and the next cache entries."""
    # Decoding a snapshot makes hundreds of thousands of fresh, acyclic objects; the cyclic collector
    # would walk them again and again (most of the per-contract slowdown at 100,000). Pause it here.
    paused = gc.isenabled()
    gc.disable()
    try:
        return _build(settings, snapshot, client)
    finally:
        if paused:
            gc.enable()


def _build(settings: Settings, snapshot: Snapshot, client: redis.Redis | None) -> Built:
    timer = Timer()
    registry = load_registry_state(settings, client)
    db_load_ms = timer.ms()
    timer = Timer()
    if registry.last_fetched_at is not None and snapshot.fetched_at_ms <= registry.last_fetched_at:
        raise StaleSnapshotError(
            f"snapshot fetched at {snapshot.fetched_at_ms} is not newer than the applied one "
            f"({registry.last_fetched_at})"
        )
    items = decode_contract_list(snapshot.body)
    parsed = parse_contracts(items, memo=_parse_memo())
    if parsed.invalid:
        log.warning("skipped %d invalid contracts, first: %s", parsed.invalid, "; ".join(parsed.reasons))
    missing = missing_symbols(parsed.contracts, registry)
    active = sum(1 for row in registry.rows.values() if row.status == "active")
    still_listed: list[str] = []
    unconfirmed: list[str] = []
    confirm_ms = 0.0
    if missing and not is_suspect(len(parsed.contracts), len(missing), active, settings.max_drop_pct):
        check = Timer()
        still_listed, unconfirmed = confirm_missing(settings, missing)
        confirm_ms = check.ms()
        snapshot.api_ms += confirm_ms
    plan = build_plan(
        snapshot.sync_id, parsed.contracts, registry, now_ms=snapshot.fetched_at_ms,
        window_ms=int(settings.new_listing_window_h * 3_600_000), fetched=len(items),
        invalid=parsed.invalid, max_drop_pct=settings.max_drop_pct, still_listed=still_listed,
        unconfirmed=unconfirmed,
    )
    # The cache holds each contract's JSON exactly as the exchange sent it: no re-encoding, and no copy
    # until stage_cache sends it.
    entries = {symbol: c.raw for symbol, c in parsed.contracts.items()}
    remember_registry(plan.apply_to(registry))
    # The per-symbol checks are network time: counted in api, not in process.
    timings = {"api": snapshot.api_ms, "db_load": db_load_ms, "process": timer.ms() - confirm_ms}
    return Built(plan=plan, entries=entries, started_at=snapshot.started_at, timings=timings)


# ---- write and cache ------------------------------------------------------------------------------------

def write(settings: Settings, plan: Plan, started_at: int, timings: dict[str, float]) -> WriteResult:
    """Commit the plan in one transaction; timings gains batch_write."""
    timer = Timer()
    engine = get_engine(settings.database_url, writer=True)
    result = apply_plan(engine, plan, batch_size=settings.batch_size, started_at=started_at, timings=timings)
    timings["batch_write"] = timer.ms()
    return result


def stage_cache(settings: Settings, client: redis.Redis, built: Built) -> int:
    """Build the next cache hash beside the live one; returns its size."""
    return hot.stage_entries(
        client, keys.cache_key(built.plan.sync_id), built.entries, built.plan.missing, settings.staging_ttl_s,
    )


def publish_cache(client: redis.Redis, sync_id: str, revision: int, size: int, *, consumed: Sequence[str] = ()) -> bool:
    """Swap the staged cache in and drop the consumed staging keys; False when the cache already shows this
    revision."""
    return hot.publish(client, keys.cache_key(sync_id), revision, size, consumed=consumed)


def publish_events(settings: Settings, client: redis.Redis) -> None:
    """Append committed events to the stream; on failure they go out after the next commit."""
    try:
        events.publish_pending(get_engine(settings.database_url, writer=True), client)
    except (redis.RedisError, SQLAlchemyError) as exc:
        log.warning("events not published yet (%s): they follow after the next commit", one_line(exc))


def finish(
    settings: Settings, plan: Plan, result: WriteResult, started_at: int, timings: dict[str, float],
    cache_error: str | None,
) -> Outcome:
    """Complete the sync_runs row with the cache and total timings, log, and return the outcome."""
    timings["total"] = float(now_ms() - started_at)
    error = plan.warning
    if cache_error:
        error = f"{error}; {cache_error}" if error else cache_error
    outcome = Outcome(plan.sync_id, plan.status, dict(plan.counts), dict(timings), error)
    if not result.duplicate:
        record_outcome(get_engine(settings.database_url, writer=True), sync_run_row(
            plan.sync_id, started_at=started_at, status=plan.status, counts=plan.counts, timings=timings,
            error=error, revision=result.revision,
        ))
        log_outcome(outcome, plan)
        metrics.record_sync(settings, outcome.status, outcome.timings_ms)  # and the worker's RSS
    return outcome


def fail(settings: Settings, sync_id: str, started_at: int, status: str, error: str,
         timings: dict[str, float] | None = None, counts: dict[str, int] | None = None) -> Outcome:
    """Record a failed or skipped sync in sync_runs (best effort) and return its outcome."""
    timings = dict(timings or {})
    timings["total"] = float(now_ms() - started_at)
    outcome = Outcome(sync_id, status, dict(counts or dict.fromkeys(COUNT_KEYS, 0)), timings, error)
    try:
        record_outcome(get_engine(settings.database_url, writer=True), sync_run_row(
            sync_id, started_at=started_at, status=status, counts=outcome.counts, timings=timings, error=error,
        ))
    except Exception as exc:  # the outcome must still reach the operator when the database is the problem
        log.error("could not record sync %s in sync_runs: %s", sync_id, one_line(exc))
    if status == "failed":
        log.error("sync %s failed: %s", sync_id, error)
    else:
        log.warning("sync %s %s: %s", sync_id, status, error)
    metrics.record_sync(settings, status, timings)  # and the worker's RSS
    return outcome


def applied_outcome(settings: Settings, sync_id: str) -> Outcome | None:
    """The recorded outcome of a sync that was applied (has a revision), else None."""
    row = sync_run(get_engine(settings.database_url), sync_id)
    if row is None or row["revision"] is None:
        return None
    return Outcome(
        sync_id, row["status"], {k: int(row[k]) for k in COUNT_KEYS},
        {p: float(row[f"{p}_ms"]) for p in PHASES if row[f"{p}_ms"] is not None}, row["error"],
    )


def one_line(exc: BaseException) -> str:
    """An exception as one readable line."""
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def log_outcome(outcome: Outcome, plan: Plan) -> None:
    """The operator's lines: PERFORMANCE, the warning if any, and new listings (first 10)."""
    t = outcome.timings_ms
    log.info(
        "PERFORMANCE: total sync time %.1f ms (api %.1f, db %.1f, process %.1f, batch %.1f, cache %.1f)",
        t.get("total", 0.0), t.get("api", 0.0), t.get("db_load", 0.0), t.get("process", 0.0),
        t.get("batch_write", 0.0), t.get("cache", 0.0),
    )
    c = outcome.counts
    log.info(
        "sync %s %s: %d fetched, %d active, %d listed, %d delisted, %d relisted, %d delisting scheduled, "
        "%d status changed, %d params changed, %d invalid",
        outcome.sync_id, outcome.status, c["fetched"], c["active"], c["listed"], c["delisted"], c["relisted"],
        c["delisting_scheduled"], c["status_changed"], c["params_changed"], c["invalid"],
    )
    if outcome.error:
        log.warning("sync %s: %s", outcome.sync_id, outcome.error)
    listed = [e.symbol for e in plan.events if e.event_type == "listed"]
    for symbol in listed[:NEW_LISTINGS_LOGGED]:
        log.info("NEW LISTING: %s", symbol)
    if len(listed) > NEW_LISTINGS_LOGGED:
        log.info("... and %d more", len(listed) - NEW_LISTINGS_LOGGED)


# ---- inline: every stage in this process -----------------------------------------------------------------

def sync_inline(settings: Settings, client: redis.Redis | None) -> Outcome:
    """One whole sync in this process; never raises for a sync-level failure."""
    sync_id, started_at = new_sync_id(), now_ms()
    if client is not None:
        try:
            if not lock.acquire(client, sync_id):
                busy = f"another sync ({lock.holder(client)}) is running"
                return fail(settings, sync_id, started_at, "skipped", busy)
        except redis.RedisError as exc:
            log.warning("Redis unreachable, syncing without the lock: %s", one_line(exc))
            client = None
    try:
        return _sync_inline(settings, client, sync_id, started_at)
    finally:
        if client is not None:
            try:
                lock.release(client, sync_id)
            except redis.RedisError:
                log.warning("could not release the sync lock; it expires by itself")


def _sync_inline(settings: Settings, client: redis.Redis | None, sync_id: str, started_at: int) -> Outcome:
    timings: dict[str, float] = {}
    try:
        snapshot = fetch_snapshot(settings, sync_id, started_at)
        built = build(settings, snapshot, client)
        timings = built.timings
        result = write(settings, built.plan, started_at, timings)
    except StaleSnapshotError as exc:
        return fail(settings, sync_id, started_at, "skipped", one_line(exc), timings)
    except TokenwatchError as exc:
        return fail(settings, sync_id, started_at, "failed", one_line(exc), timings)
    cache_error = None
    timer = Timer()
    if result.duplicate:
        pass
    elif client is None:
        cache_error = "cache stale: no Redis configured"
    else:
        try:
            size = stage_cache(settings, client, built)
            publish_cache(client, sync_id, result.revision, size)
        except (redis.RedisError, LookupError) as exc:
            cache_error = f"cache stale: Redis unavailable ({one_line(exc)})"
        else:
            publish_events(settings, client)
    timings["cache"] = timer.ms()
    return finish(settings, built.plan, result, started_at, timings, cache_error)
