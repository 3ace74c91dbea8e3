"""The sync's Celery tasks: thin wrappers that hand staged data along and call tokenwatch.pipeline."""

from __future__ import annotations

from typing import Any

import orjson
import redis
from celery import Task, chain
from celery.exceptions import SoftTimeLimitExceeded
from celery.result import AsyncResult
from celery.utils.log import get_task_logger

from tokenwatch import pipeline
from tokenwatch.cache import keys, lock, staging
from tokenwatch.cache.redis_client import get_redis
from tokenwatch.domain.diff import Plan
from tokenwatch.errors import StagingError, StaleSnapshotError, TokenwatchError, TransientFetchError
from tokenwatch.fetch import kucoin
from tokenwatch.settings import get_settings
from tokenwatch.tasks.names import DIFF, FETCH, SYNC, WRITE
from tokenwatch.workers.app import app

log = get_task_logger(__name__)

Meta = dict[str, Any]


def _redis() -> redis.Redis:
    return get_redis(get_settings().effective_redis_url())


def _failed(meta: Meta, status: str, error: str) -> Meta:
    return {**meta, "status": status, "error": error}


def sync_chain(sync_id: str | None = None) -> Any:
    """The signature of one sync: fetch → diff-and-build → batch-write."""
    # Inside the chain each step's result travels in the next message; storing it in the result backend as
    # well would cost a round trip per hop for nobody. Called by hand, the steps still store theirs. A step
    # that crashes still stores its error (store_errors_even_if_ignored below): the caller waiting on the
    # outcome follows the parents and reports it at once, instead of waiting out its timeout.
    return chain(
        fetch_contracts.s(sync_id).set(ignore_result=True), diff_and_build.s().set(ignore_result=True),
        write_batch.s(),
    )


def wait_for_outcome(result: AsyncResult, timeout_s: float) -> dict[str, Any]:
    """The outcome of a chain sent with sync_chain; a step that crashed before the write is raised at once."""

    def raise_crashed_step() -> None:
        # Called each time the wait wakes up: every half second, and once the outcome has arrived. Celery's own
        # follow_parents reads every step's result then too, two more round trips after the outcome is here.
        if result.ready():
            return
        steps: list[AsyncResult] = []
        node = result.parent
        while node is not None:
            steps.append(node)
            node = node.parent
        for step in reversed(steps):  # the first step that failed is the cause
            step.maybe_throw()

    outcome: dict[str, Any] = result.get(timeout=timeout_s, follow_parents=False, on_interval=raise_crashed_step)
    return outcome


@app.task(name=SYNC, ignore_result=True)
def sync() -> str:
    """Start one sync (what beat and `celery call tokenwatch.sync` trigger); returns its sync id."""
    sync_id = pipeline.new_sync_id()
    sync_chain(sync_id).apply_async()
    return sync_id


@app.task(name=FETCH, bind=True, max_retries=None, store_errors_even_if_ignored=True)  # retries: see below
def fetch_contracts(self: Task, sync_id: str | None = None, started_at: int | None = None) -> Meta:
    """Fetch the active contracts and stage the raw answer in Redis; pass its key on."""
    settings = get_settings()
    sync_id = sync_id or pipeline.new_sync_id()
    started_at = started_at or pipeline.now_ms()
    meta: Meta = {"sync_id": sync_id, "started_at": started_at, "status": "running", "error": None}
    try:
        if not lock.acquire(_redis(), sync_id):
            return _failed(meta, "skipped", f"another sync ({lock.holder(_redis())}) is running")
    except redis.RedisError as exc:
        return _failed(meta, "failed", f"Redis unreachable: {pipeline.one_line(exc)}")
    try:
        snapshot = pipeline.fetch_snapshot(settings, sync_id, started_at, retry=False)
    except TransientFetchError as exc:
        if self.request.retries < settings.http_retries:
            delay = kucoin.backoff_delay(self.request.retries, exc.retry_after_s)
            log.warning("fetch failed (%s), retry %d of %d in %.1f s",
                        exc, self.request.retries + 1, settings.http_retries, delay)
            raise self.retry(args=(sync_id, started_at), countdown=delay, exc=exc) from None
        return _failed(meta, "failed", f"fetch failed after {settings.http_retries} retries: {exc}")
    except TokenwatchError as exc:
        return _failed(meta, "failed", f"fetch failed: {pipeline.one_line(exc)}")
    key = keys.snapshot_key(sync_id)
    try:
        staging.put(_redis(), key, snapshot.body, settings.staging_ttl_s, keep=True)
    except redis.RedisError as exc:
        return _failed(meta, "failed", f"could not stage the snapshot in Redis: {pipeline.one_line(exc)}")
    return {**meta, "snapshot_key": key, "fetched_at_ms": snapshot.fetched_at_ms, "api_ms": snapshot.api_ms}


@app.task(name=DIFF, store_errors_even_if_ignored=True)
def diff_and_build(meta: Meta) -> Meta:
    """Classify the staged snapshot against the registry; stage the plan and the next cache."""
    if meta["status"] != "running":
        return meta
    settings = get_settings()
    client = _redis()
    try:
        lock.rearm(client, meta["sync_id"])
        body = staging.take(client, meta["snapshot_key"])
        snapshot = pipeline.Snapshot(
            meta["sync_id"], meta["started_at"], meta["fetched_at_ms"], body, meta["api_ms"],
        )
        built = pipeline.build(settings, snapshot, client)
        timer = pipeline.Timer()
        size = pipeline.stage_cache(settings, client, built)
        # The plan and the consumed snapshot's deletion share one round trip.
        pipe = client.pipeline(transaction=False)
        staging.put(pipe, keys.plan_key(meta["sync_id"]), orjson.dumps(built.plan.to_json()),
                    settings.staging_ttl_s, keep=True)
        pipe.delete(meta["snapshot_key"])
        pipe.execute()
        built.timings["cache"] = timer.ms()
    except StaleSnapshotError as exc:
        return _failed(meta, "skipped", pipeline.one_line(exc))
    except (TokenwatchError, redis.RedisError, SoftTimeLimitExceeded) as exc:
        return _failed(meta, "failed", f"diff failed: {pipeline.one_line(exc)}")
    return {**meta, "plan_key": keys.plan_key(meta["sync_id"]), "cache_size": size, "timings": built.timings}


# acks_late + reject_on_worker_lost: a write killed mid-way is redelivered, and a replay changes nothing
# (db/writer.py checks the sync id and the base revision inside the transaction).
@app.task(name=WRITE, acks_late=True, reject_on_worker_lost=True)
def write_batch(meta: Meta) -> dict[str, Any]:
    """Commit the staged plan in one transaction, then swap the staged cache in; returns the outcome."""
    try:
        return _write(meta)
    finally:
        try:
            lock.release(_redis(), meta["sync_id"])
        except redis.RedisError as exc:
            log.warning("could not release the sync lock (it expires by itself): %s", pipeline.one_line(exc))


def _write(meta: Meta) -> dict[str, Any]:
    settings = get_settings()
    sync_id, started_at = meta["sync_id"], meta["started_at"]
    timings: dict[str, float] = dict(meta.get("timings") or {})
    if meta["status"] != "running":
        return pipeline.fail(settings, sync_id, started_at, meta["status"], meta["error"], timings).to_json()
    client = _redis()
    try:
        plan = Plan.from_json(orjson.loads(staging.take(client, meta["plan_key"])))
        result = pipeline.write(settings, plan, started_at, timings)
    except StagingError as exc:
        # A copy redelivered after the first finished: the plan is gone because it was applied.
        applied = pipeline.applied_outcome(settings, sync_id)
        if applied is not None:
            pipeline.publish_events(settings, client)
            return applied.to_json()
        return pipeline.fail(settings, sync_id, started_at, "failed", pipeline.one_line(exc), timings).to_json()
    except StaleSnapshotError as exc:
        return pipeline.fail(settings, sync_id, started_at, "skipped", pipeline.one_line(exc), timings).to_json()
    except (TokenwatchError, redis.RedisError) as exc:
        return pipeline.fail(settings, sync_id, started_at, "failed", pipeline.one_line(exc), timings).to_json()
    cache_error = None
    timer = pipeline.Timer()
    try:
        pipeline.publish_cache(client, sync_id, result.revision, meta["cache_size"], consumed=[meta["plan_key"]])
    except (redis.RedisError, LookupError) as exc:
        cache_error = f"cache stale: {pipeline.one_line(exc)}"
    else:
        # Also on a redelivered write: events committed by a first copy that died before publishing.
        pipeline.publish_events(settings, client)
    timings["cache"] = timings.get("cache", 0.0) + timer.ms()
    return pipeline.finish(settings, plan, result, started_at, timings, cache_error).to_json()
