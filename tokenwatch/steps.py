"""The sync's steps, written once: fetch → diff → write, plain functions over one SyncState.

The Celery chain (tasks/sync.py) runs each step in a task of its own and hands the data over through Redis;
``tokenwatch sync --inline`` (tokenwatch/pipeline.py) runs the very same steps in one process and hands it over
in memory. ``run_step`` is the only way a step runs: whichever way a step ends (an outcome, a known error, a
crash), a sync that ended is recorded in sync_runs, its lock released and its outcome logged in ``finish``,
once, there and nowhere else.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import orjson
import redis
from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from tokenwatch import handoff, metrics, worker_memory
from tokenwatch.cache import hot, keys, lock, snapshot
from tokenwatch.clock import HOUR_MS, Timer, now_ms, paused_gc
from tokenwatch.db.queries import load_head, load_registry, sync_run
from tokenwatch.db.writer import apply_plan, record_outcome, sync_run_row
from tokenwatch.domain.contracts import ContractParser, ParseResult, RawJson, contract_batches, contract_list
from tokenwatch.domain.diff import Plan, build_plan, is_suspect, missing_symbols
from tokenwatch.domain.registry import ACTIVE, RegistryHead, RegistryState
from tokenwatch.errors import (
    BadResponseError,
    FetchError,
    StagingError,
    StaleSnapshotError,
    TokenwatchError,
    TransientFetchError,
    one_line,
)
from tokenwatch.fetch import kucoin
from tokenwatch.handoff import Handoff
from tokenwatch.outbox import publish_pending
from tokenwatch.outcome import COUNT_KEYS, PHASES, SyncStatus, zero_counts
from tokenwatch.process import ProcessState
from tokenwatch.settings import Settings
from tokenwatch.syncstate import SyncState

log = logging.getLogger("tokenwatch.sync")

NAMED = 10  # symbols named per kind of event in the log; the rest are counted
# At most this many absent symbols are checked one by one per sync; the rest wait for a second absence.
MAX_CONFIRMATIONS = 50
# What the one-contract endpoint says of a contract that is gone; any other status (Open, Paused, CancelOnly,
# ...) means it is still listed and only the list left it out.
GONE_STATUSES = frozenset({"Settled", "Closed"})


@dataclass(frozen=True, slots=True)
class StepContext:
    """What the steps work with: the settings, this process's state, the handoff, and Redis.

    redis is None only on the inline path when Redis does not answer: the sync then runs without the lock and
    without the hot cache (the database's own checks still refuse a stale or repeated write).
    """

    settings: Settings
    process: ProcessState
    handoff: Handoff
    redis: redis.Redis | None

    def engine(self, *, writer: bool = False) -> Engine:
        """This process's engine for the registry; a sync creates the registry it is the first to write."""
        return self.process.engine(self.settings.database_url, writer=writer, create=True)


class RetryLater(Exception):
    """The step wants to run again after delay_s: the chain retries its task, the inline path waits."""

    def __init__(self, state: SyncState, delay_s: float) -> None:
        super().__init__(f"retry sync {state.sync_id} in {delay_s:.1f} s")
        self.state = state
        self.delay_s = delay_s


Step = Callable[[StepContext, SyncState], SyncState]


# ---- running a step ----------------------------------------------------------------------------------------

def run_step(step: Step, ctx: StepContext, state: SyncState) -> SyncState:
    """Run step on a sync that is still running; a sync that ends here is finished (recorded, unlocked, logged).

    RetryLater passes through: the sync goes on. Everything else a step raises ends the sync as an outcome.
    """
    if state.done:
        return state
    try:
        with _alive(ctx, state.sync_id):
            state = step(ctx, state)
    except RetryLater as wait:
        _hand_off(ctx, wait.state, wait.delay_s)
        raise
    except StaleSnapshotError as exc:
        state.end(SyncStatus.SKIPPED, one_line(exc))
    except TokenwatchError as exc:
        state.end(SyncStatus.FAILED, one_line(exc))
    except redis.RedisError as exc:
        state.end(SyncStatus.FAILED, f"Redis unavailable: {one_line(exc)}")
    except SQLAlchemyError as exc:
        state.end(SyncStatus.FAILED, f"registry database error: {one_line(getattr(exc, 'orig', None) or exc)}")
    except Exception as exc:  # a bug, or a failure nobody named: still an outcome, never a held lock
        log.debug("sync %s: the %s step crashed", state.sync_id, step.__name__, exc_info=True)
        state.end(SyncStatus.FAILED, f"{step.__name__} step crashed: {type(exc).__name__}: {one_line(exc)}")
    if state.done:
        finish(ctx, state)
    else:
        _hand_off(ctx, state, 0.0)
    return state


@contextmanager
def _alive(ctx: StepContext, sync_id: str) -> Iterator[None]:
    """While a step runs, renew its sync's heartbeat, so that the lock is not taken for a dead sync's."""
    client = ctx.redis
    if client is None:
        yield
        return
    stop = threading.Event()

    def renew() -> None:
        while not stop.wait(lock.BEAT_TTL_S / 3):
            try:
                lock.beat(client, sync_id)
            except redis.RedisError:
                continue  # the step itself meets Redis's failure, and says so

    beating = threading.Thread(target=renew, name=f"heartbeat {sync_id}", daemon=True)
    beating.start()
    try:
        yield
    finally:
        stop.set()
        beating.join(timeout=1.0)


def _hand_off(ctx: StepContext, state: SyncState, delay_s: float) -> None:
    """The sync waits for its next step (in a queue, or after a retry's delay): alive that long, and no longer."""
    if ctx.redis is not None:
        with contextlib.suppress(redis.RedisError):  # the next step renews it, or the lock lapses by itself
            lock.beat(ctx.redis, state.sync_id, delay_s + lock.HANDOFF_TTL_S)


def finish(ctx: StepContext, state: SyncState) -> None:
    """What every ended sync gets, once: its sync_runs row completed, its lock released, its lines logged."""
    if not state.replayed:
        state.timings["total"] = float(now_ms() - state.started_at)
    if ctx.redis is not None:
        try:
            lock.release(ctx.redis, state.sync_id)
        except redis.RedisError as exc:
            log.warning("could not release the sync lock (it expires by itself): %s", one_line(exc))
    if state.replayed:
        return  # a redelivered write: the first delivery recorded and logged this sync
    outcome = state.outcome()
    try:
        record_outcome(ctx.engine(writer=True), sync_run_row(
            state.sync_id, started_at=state.started_at, status=outcome.status, counts=outcome.counts,
            timings=outcome.timings_ms, error=outcome.error, revision=state.revision,
        ))
    except Exception as exc:  # the outcome must still reach the operator when the database is the problem
        log.error("could not record sync %s in sync_runs: %s", state.sync_id, one_line(exc))
    log_outcome(state)
    metrics.record_sync(outcome.status, outcome.timings_ms)
    worker_memory.report(ctx.settings, ctx.process)


def log_outcome(state: SyncState) -> None:
    """The operator's lines: PERFORMANCE, the counts, the warning or error, and the symbols that changed."""
    outcome = state.outcome()
    if not outcome.status.good:
        if outcome.status is SyncStatus.FAILED:
            log.error("sync %s failed: %s", outcome.sync_id, outcome.error)
        else:
            log.warning("sync %s %s: %s", outcome.sync_id, outcome.status, outcome.error)
        return
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
    for event_type, label in LOGGED.items():
        symbols = state.named.get(event_type, [])
        for symbol in symbols:
            log.info("%s: %s", label, symbol)
        more = c.get(event_type, 0) - len(symbols)
        if more > 0:
            log.info("... and %d more (%s)", more, label.lower())


# The events whose symbols the log names, with the label it names them by.
LOGGED = {
    "listed": "NEW LISTING", "delisted": "DELISTED", "relisted": "RELISTED",
    "delisting_scheduled": "DELISTING SCHEDULED", "status_changed": "STATUS CHANGED",
}


def named_symbols(plan: Plan) -> dict[str, list[str]]:
    """The first few symbols of each kind of event the log names."""
    named: dict[str, list[str]] = {}
    for event in plan.events:
        symbols = named.setdefault(event.event_type, [])
        if event.event_type in LOGGED and len(symbols) < NAMED:
            symbols.append(event.symbol)
    return {kind: symbols for kind, symbols in named.items() if symbols}


# ---- the lock ----------------------------------------------------------------------------------------------

ABANDONED = "abandoned: the sync stopped running (its worker died?) and its lock was broken"


def _take_lock(ctx: StepContext, state: SyncState) -> bool:
    """Take the sync lock for state's sync; when another sync holds it and is running, end this one as skipped.
    A lock held by a sync that is not running (no heartbeat) is broken, and that sync recorded as failed."""
    if ctx.redis is None:
        return True
    taken = lock.acquire(ctx.redis, state.sync_id)
    if taken is None:
        state.end(SyncStatus.SKIPPED, f"another sync ({lock.holder(ctx.redis)}) is running")
        return False
    if taken.broken is not None:
        log.warning("sync lock held by %s, which is not running (no heartbeat): broken", taken.broken)
        try:
            record_outcome(ctx.engine(writer=True), sync_run_row(
                taken.broken, started_at=now_ms(), status=SyncStatus.FAILED, counts=zero_counts(), timings={},
                error=ABANDONED))  # an applied sync's own row is never replaced (db/writer.py)
        except Exception as exc:  # its record is a courtesy: this sync goes on
            log.warning("could not record the abandoned sync %s: %s", taken.broken, one_line(exc))
    return True


def _rearm(ctx: StepContext, state: SyncState) -> None:
    if ctx.redis is not None:
        lock.rearm(ctx.redis, state.sync_id)


# ---- fetch ---------------------------------------------------------------------------------------------------

def fetch(ctx: StepContext, state: SyncState) -> SyncState:
    """Take the lock (on the first attempt), call the active-contracts endpoint once, hand the answer on.

    A transient failure raises RetryLater while retries are left; the answer stays undecoded when its envelope
    plainly says success (the diff step decodes it, once).
    """
    if state.attempts == 0:
        if not _take_lock(ctx, state):
            return state
    else:
        _rearm(ctx, state)
    settings = ctx.settings
    state.attempts += 1
    timer = Timer()
    try:
        with paused_gc():
            fetched = kucoin.fetch_active(
                ctx.process.http_session(), settings.kucoin_url, timeout_s=settings.http_timeout_s,
                max_bytes=settings.max_response_bytes, decode=False, spool_bytes=settings.answer_in_memory_bytes,
            )
    except TransientFetchError as exc:
        state.add_time("api", timer.ms())
        retries = settings.http_retries
        if state.attempts <= retries:
            delay = kucoin.backoff_delay(state.attempts - 1, exc.retry_after_s)
            log.warning("fetch failed (%s), retry %d of %d in %.1f s", exc, state.attempts, retries, delay)
            state.add_time("api", delay * 1000.0)  # waiting to retry is the exchange's time too
            raise RetryLater(state, delay) from None
        after = f" after {retries} retries" if retries else ""
        return state.end(SyncStatus.FAILED, f"fetch failed{after}: {exc}")
    except FetchError as exc:
        state.add_time("api", timer.ms())
        return state.end(SyncStatus.FAILED, f"fetch failed: {one_line(exc)}")
    state.add_time("api", timer.ms())
    state.fetched_at_ms = fetched.fetched_at_ms
    ctx.handoff.put_answer(state.sync_id, fetched.body)
    return state


# ---- diff ------------------------------------------------------------------------------------------------------

def diff(ctx: StepContext, state: SyncState) -> SyncState:
    """Classify the answer against the registry, stage the next hot cache, hand the plan on."""
    _rearm(ctx, state)
    body = ctx.handoff.take_answer(state.sync_id)
    try:
        with paused_gc():
            plan = _build(ctx, state, body)
    finally:
        handoff.close(body)
    del body
    timer = Timer()
    if _others_may_diff(ctx):
        _share_registry(ctx, state)
    ctx.handoff.put_plan(state.sync_id, plan)
    state.add_time("cache", timer.ms())
    state.counts = dict(plan.counts)
    state.named = named_symbols(plan)
    return state


# An answer too large to hold whole (Settings.answer_in_memory_bytes) is parsed and its contracts staged for the
# cache a batch at a time, of this size at most (or of answer_in_memory_bytes, at least MIN_BATCH_BYTES): a batch's
# text goes once it is staged.
BATCH_BYTES = 4 << 20
MIN_BATCH_BYTES = 16 << 10


class _CacheStager:
    """Stages the next hot cache as the answer is parsed, timing itself as cache time; on a Redis failure it
    stops, and the sync goes on with its cache stale (state.cache_error)."""

    def __init__(self, ctx: StepContext, state: SyncState) -> None:
        self.state = state
        self.ms = 0.0
        self.staging: hot.Staging | None = None
        if ctx.redis is None:
            state.cache_error = "cache stale: Redis unreachable"
        else:
            self.staging = hot.Staging(ctx.redis, keys.cache_key(state.sync_id), ctx.settings.staging_ttl_s)

    def add(self, entries: list[tuple[str, RawJson]]) -> None:
        """Stage a batch's contracts (hot.Staging.add)."""
        if self.staging is not None:
            self._run(lambda staging: staging.add(entries))

    def finish(self, keep_live: dict[str, bytes], remove: set[str]) -> None:
        """Complete the staged hash (hot.Staging.finish)."""
        if self.staging is not None:
            self._run(lambda staging: staging.finish(keep_live, remove))

    def discard(self) -> None:
        """Drop what was staged (the sync ends without a plan); the key would expire by itself."""
        if self.staging is not None:
            with contextlib.suppress(redis.RedisError):
                self.staging.client.unlink(self.staging.staged_key)

    def _run(self, stage: Callable[[hot.Staging], None]) -> None:
        assert self.staging is not None
        timer = Timer()
        try:
            stage(self.staging)
        except redis.RedisError as exc:
            self.staging = None
            self.state.cache_error = f"cache stale: Redis unavailable ({one_line(exc)})"
        self.ms += timer.ms()


def _build(ctx: StepContext, state: SyncState, body: handoff.Answer) -> Plan:
    """Parse the answer (staging each contract's JSON for the next cache as it goes), load the registry, confirm
    absences, classify: the plan. The registry is read from the database only when this process holds none it
    may trust and none was shared, and after the parse, so that its rows take the parse's metadata."""
    settings = ctx.settings
    timer = Timer()
    engine = ctx.engine()
    head = load_head(engine)
    registry = held_registry(ctx, head)
    state.add_time("db_load", timer.ms())
    fetched_at = state.fetched_at_ms or now_ms()
    _check_newer(fetched_at, head)
    timer = Timer()
    parser = ContractParser(ctx.process.memo, fetched_at)
    stager = _CacheStager(ctx, state)
    batch_bytes = min(BATCH_BYTES, max(settings.answer_in_memory_bytes, MIN_BATCH_BYTES))
    loading = 0.0
    try:
        for batch in _batches(body, batch_bytes):
            added = parser.add(batch, keep_raw=False)
            stager.add(added)
            del added, batch
        parsed = parser.result()
        warn_invalid(ctx.process, parsed)
        if registry is None:
            load = Timer()
            registry = load_registry(engine, like=parsed.contracts)
            loading = load.ms()
            state.add_time("db_load", loading)
            _check_newer(fetched_at, registry.head)
    except BaseException:
        stager.discard()  # an answer cut short, a newer sync applied meanwhile: no plan will use it
        raise
    missing = missing_symbols(parsed.contracts, registry, parsed.unusable)
    still_listed: list[str] = []
    unconfirmed: list[str] = []
    confirm_ms = 0.0
    if missing and not is_suspect(len(parsed.contracts), len(missing), registry.active_count(),
                                  settings.max_drop_pct):
        check = Timer()
        still_listed, unconfirmed = confirm_missing(ctx, missing)
        confirm_ms = check.ms()
    plan = build_plan(
        state.sync_id, parsed.contracts, registry, now_ms=fetched_at,
        window_ms=int(settings.new_listing_window_h * HOUR_MS), fetched=parser.items,
        invalid=parsed.invalid, max_drop_pct=settings.max_drop_pct, still_listed=still_listed,
        unconfirmed=unconfirmed, unusable=parsed.unusable,
    )
    ctx.process.expect(plan.sync_id, plan.apply_to(registry, parsed.contracts))
    # The cache holds each contract's JSON exactly as the exchange sent it: no re-encoding. A symbol kept or held
    # keeps the entry the cache has; a held one that is delisted in the registry stays out, as it stays delisted,
    # and so does a symbol listed twice (its first copy was staged).
    rows = registry.rows
    kept = {symbol: orjson.dumps(rows[symbol].as_contract())
            for symbol in (*plan.missing, *plan.held) if rows[symbol].status == ACTIVE}
    stager.finish(kept, {*parsed.duplicated, *plan.held})
    if stager.staging is not None:
        held = parsed.contracts.keys() & set(plan.held)
        state.cache_size = len(parsed.contracts) - len(held) + len(kept)
    # The per-symbol checks are network time: counted in api, not in process; staging is cache time.
    state.add_time("api", confirm_ms)
    state.add_time("cache", stager.ms)
    state.add_time("process", timer.ms() - confirm_ms - stager.ms - loading)
    return plan


def _batches(body: handoff.Answer, batch_bytes: int) -> Iterator[Sequence[RawJson]]:
    """The answer's contracts as JSON texts: all at once when it is held whole, else a batch at a time."""
    try:
        if isinstance(body, bytes | bytearray):
            data = contract_list(body)
            if data is None:
                raise ValueError("no contract list")
            yield data
        else:
            yield from contract_batches(body.parts(), batch_bytes)
    except ValueError:
        raise BadResponseError("staged snapshot holds no contract list") from None


def _check_newer(fetched_at: int, head: RegistryHead) -> None:
    """StaleSnapshotError when the registry holds an answer fetched as late as this one, or later."""
    if head.last_fetched_at is not None and fetched_at <= head.last_fetched_at:
        raise StaleSnapshotError(
            f"snapshot fetched at {fetched_at} is not newer than the applied one ({head.last_fetched_at})"
        )


def warn_invalid(process: ProcessState, parsed: ParseResult) -> None:
    """A WARNING when the answer's invalid records change (not each sync while the same ones stay), and one
    when symbols start being listed twice; the count is in every sync's outcome."""
    if parsed.invalid and parsed.reasons != process.invalid_reasons:
        log.warning("skipped %d invalid contracts, first: %s", parsed.invalid, "; ".join(parsed.reasons))
    process.invalid_reasons = parsed.reasons
    new = parsed.duplicated - process.duplicated
    if new:
        log.warning("the exchange lists %s more than once: ambiguous, kept as registered until it lists them once",
                    ", ".join(sorted(new)[:NAMED]) + (f" and {len(new) - NAMED} more" if len(new) > NAMED else ""))
    process.duplicated = parsed.duplicated


def load_state(ctx: StepContext) -> RegistryState:
    """The registry a diff would take now: held_registry, else one read of the database (the diff step reads
    it only after its parse, to give the rows the parse's metadata)."""
    engine = ctx.engine()
    return held_registry(ctx, load_head(engine)) or load_registry(engine)


def held_registry(ctx: StepContext, head: RegistryHead) -> RegistryState | None:
    """The registry at head without reading the database: this process's own when it may be trusted, else the
    one another process shared for this very head; None when neither is."""
    return ctx.process.trusted_registry(head) or _shared_registry(ctx, head)


def _shared_registry(ctx: StepContext, head: RegistryHead, *, newer: bool = False) -> RegistryState | None:
    """The registry another process's diff shared for exactly this head (cache/snapshot.py), its validations
    handed to this process's parse memo (replacing its own when newer); None when there is none to trust or
    Redis does not answer."""
    if ctx.redis is None:
        return None
    try:
        shared = snapshot.load(ctx.redis, head)
    except redis.RedisError as exc:
        log.debug("registry snapshot not read (%s): reading the database", one_line(exc))
        return None
    if shared is None:
        return None
    registry, validations = shared
    ctx.process.memo.seed(validations, newer=newer)
    return registry


def warm_up(ctx: StepContext, head: RegistryHead | None = None) -> bool:
    """After a write, hold the registry at the database's head when this process does not: the one the diff
    that led there shared, trusted under the same rule (its exact head). True when it took one; never raises.

    The steps of a sync land on whichever process is free, and with two workers they alternate: the diff after
    this write runs here, and would otherwise read and decode the snapshot on the sync's own time. A process that
    has never run a diff (a worker on the db queue alone) is not one a diff lands on: it takes nothing.
    """
    if not ctx.process.memo.validated:
        return False
    try:
        head = head or load_head(ctx.engine())
        if ctx.process.trusted_registry(head) is not None:
            return False
        # The snapshot's validations are of the last answer, newer than this process's: taking them all also
        # makes the registry's rows and the memo share their metadata tuples, as after a commit made here (the
        # next plan's apply_to then compares by identity, not 48 values a row).
        shared = _shared_registry(ctx, head, newer=True)
    except (TokenwatchError, SQLAlchemyError) as exc:  # the next diff reads what it needs itself
        log.debug("registry not taken after the write (%s)", one_line(exc))
        return False
    if shared is None:
        return False
    ctx.process.registry = shared
    return True


def after_write(ctx: StepContext) -> None:
    """Off the sync's time, once its write is done: share the registry this process committed if its diff did
    not (a process started later begins warm), or else take the one another process shared (warm_up)."""
    registry = ctx.process.registry
    try:
        head = load_head(ctx.engine())
    except (TokenwatchError, SQLAlchemyError) as exc:
        log.debug("no registry head after the write (%s)", one_line(exc))
        return
    if registry is not None and ctx.process.trusted_registry(head) is registry:
        if ctx.process.shared != head:
            _publish(ctx, registry)
        return
    warm_up(ctx, head)  # the head just read, not read again


def _others_may_diff(ctx: StepContext) -> bool:
    """Whether the next diff may run in another process: then this one shares its registry at once. Alone (one
    worker process, the default node), sharing would only lengthen the sync: after_write shares it instead."""
    if ctx.redis is None:
        return False
    worker_memory.report(ctx.settings, ctx.process)  # this process diffs: the others see it as it sees them
    try:
        return worker_memory.others_reported(ctx.redis, ctx.settings, ctx.process)
    except redis.RedisError:
        return True  # the share will say what is wrong, if anything


def _share_registry(ctx: StepContext, state: SyncState) -> None:
    """Share the registry this sync's plan will leave, for whichever process runs the next diff."""
    expected = ctx.process.expected
    if expected is not None and expected[0] == state.sync_id:
        _publish(ctx, expected[1])


def _publish(ctx: StepContext, registry: RegistryState) -> None:
    if ctx.redis is None:
        return
    try:
        if snapshot.publish(ctx.redis, registry, ctx.process.memo):
            ctx.process.shared = registry.head
    except redis.RedisError as exc:  # the next diff elsewhere reads the database instead
        log.debug("registry snapshot not shared (%s)", one_line(exc))


def confirm_missing(ctx: StepContext, missing: list[str]) -> tuple[list[str], list[str]]:
    """Ask the exchange about each absent symbol: (still listed and Open, could not be checked). All the checks
    share one deadline of HTTP_TIMEOUT_S; what is left unchecked waits for a second absence."""
    settings = ctx.settings
    still_listed: list[str] = []
    unconfirmed = list(missing[MAX_CONFIRMATIONS:])
    deadline = time.monotonic() + settings.http_timeout_s
    for at, symbol in enumerate(missing[:MAX_CONFIRMATIONS]):
        left = deadline - time.monotonic()
        if left <= 0:
            unconfirmed += missing[at:MAX_CONFIRMATIONS]
            log.warning("%d absent symbols not checked within %g s: waiting for a second absence",
                        len(missing[at:MAX_CONFIRMATIONS]), settings.http_timeout_s)
            break
        try:
            status = kucoin.contract_status(ctx.process.http_session(), settings.kucoin_url, symbol,
                                            timeout_s=left)
        except FetchError as exc:
            log.warning("could not confirm that %s is gone (%s): waiting for a second absence", symbol, exc)
            unconfirmed.append(symbol)
            continue
        if status is not None and status not in GONE_STATUSES:
            log.warning("%s was missing from the list but is still listed (%s): a flaky omission, kept", symbol,
                        status)
            still_listed.append(symbol)
    return still_listed, unconfirmed


# ---- write -----------------------------------------------------------------------------------------------------

def write(ctx: StepContext, state: SyncState) -> SyncState:
    """Commit the plan in one transaction, swap the staged cache in, publish the committed events.

    A redelivered write finds its sync applied (the plan consumed, or its sync id recorded in the transaction)
    and changes nothing; it still completes what a first delivery that died may have left undone.
    """
    _rearm(ctx, state)
    engine = ctx.engine(writer=True)
    try:
        plan = ctx.handoff.take_plan(state.sync_id)
    except StagingError:
        applied = recorded_state(engine, state.sync_id)
        if applied is None:
            raise
        _publish_events(ctx, engine, load_head(engine))
        return applied
    timer = Timer()
    result = apply_plan(engine, plan, batch_size=ctx.settings.batch_size, started_at=state.started_at,
                        timings=state.timings)
    state.add_time("batch_write", timer.ms())
    state.revision = result.revision
    if not result.duplicate:
        ctx.process.committed(plan.sync_id)
    timer = Timer()
    if ctx.redis is not None and state.cache_size is not None:
        head = load_head(engine)  # which registry this is, and its revision now (another writer may be ahead)
        try:
            _publish_cache(ctx.redis, state, result.revision, head)
        except (redis.RedisError, LookupError) as exc:
            state.cache_error = f"cache stale: {one_line(exc)}"
        else:
            # Also on a redelivered write: events committed by a first delivery that died before publishing.
            _publish_events(ctx, engine, head)
        with contextlib.suppress(redis.RedisError):  # the staging keys expire by themselves
            ctx.handoff.discard(state.sync_id)
    state.add_time("cache", timer.ms())
    if result.duplicate:
        return recorded_state(engine, state.sync_id) or state.end(plan.status, plan.warning)
    return state.end(plan.status, plan.warning)


def _publish_cache(client: redis.Redis, state: SyncState, revision: int, head: RegistryHead) -> None:
    """Swap the staged cache in as this commit's; say so once when what it replaced was not to be trusted."""
    registry_id = head.registry_id or ""
    done = hot.publish(client, keys.cache_key(state.sync_id), revision, state.cache_size or 0,
                       registry_id=registry_id, sync_id=state.sync_id, head=head.revision)
    if done == hot.OTHER_REGISTRY:
        log.warning("the hot cache belonged to another registry (a recreated database, or an older release's "
                    "cache): replaced with this registry's revision %d", revision)
    elif done == hot.AHEAD:
        log.warning("the hot cache showed a newer revision of this registry than the database has (a restored "
                    "backup?): replaced with revision %d", revision)


def _publish_events(ctx: StepContext, engine: Engine, head: RegistryHead) -> None:
    """Append committed events to the stream; on failure they go out after the next commit."""
    if ctx.redis is None or head.registry_id is None:
        return
    try:
        publish_pending(engine, ctx.redis, head.registry_id)
    except (redis.RedisError, SQLAlchemyError) as exc:
        log.warning("events not published yet (%s): they follow after the next commit", one_line(exc))


def recorded_state(engine: Engine, sync_id: str) -> SyncState | None:
    """The state of a sync that was applied, as its sync_runs row recorded it (replayed); else None."""
    row = sync_run(engine, sync_id)
    if row is None or row["revision"] is None:
        return None
    return SyncState(
        sync_id, int(row["started_at"]), SyncStatus(row["status"]), row["error"], revision=int(row["revision"]),
        replayed=True, counts={k: int(row[k]) for k in COUNT_KEYS},
        timings={p: float(row[f"{p}_ms"]) for p in PHASES if row[f"{p}_ms"] is not None},
    )


STEPS: tuple[Step, ...] = (fetch, diff, write)
