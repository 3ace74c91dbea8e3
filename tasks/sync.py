"""The sync's Celery tasks: each runs one step of tokenwatch/steps.py on the SyncState it is handed, and hands
the state on as JSON. What a step does, and how a sync ends, lives there; here only queues and retries."""

from __future__ import annotations

from typing import Any

from celery import Task, chain, signals
from celery.result import AsyncResult

from tokenwatch import process, steps
from tokenwatch.handoff import RedisHandoff
from tokenwatch.settings import get_settings
from tokenwatch.syncstate import SyncState, new_sync_id
from tokenwatch.tasks.names import DIFF, FETCH, SYNC, WRITE
from tokenwatch.workers.app import app

State = dict[str, Any]


def worker_context() -> steps.StepContext:
    """The steps' context in a worker process: its Redis for the lock, the cache and the handoff."""
    settings = get_settings()
    state = process.current()
    client = state.redis(settings.redis_config())
    handoff = RedisHandoff(client, state, settings.staging_ttl_s, settings.answer_in_memory_bytes)
    return steps.StepContext(settings, state, handoff, client)


def sync_chain(sync_id: str | None = None) -> Any:
    """The signature of one sync: fetch → diff-and-build → batch-write."""
    # Inside the chain each step's state travels in the next message; storing it in the result backend as well
    # would cost a round trip per hop for nobody. A step that crashes still stores its error
    # (store_errors_even_if_ignored below), so a caller waiting on the outcome hears of it at once.
    return chain(
        fetch_contracts.s(SyncState.new(sync_id).to_json()).set(ignore_result=True),
        diff_and_build.s().set(ignore_result=True),
        write_batch.s(),
    )


def wait_for_outcome(result: AsyncResult, timeout_s: float) -> dict[str, Any]:
    """The outcome of a chain sent with sync_chain; a step that crashed before the write is raised at once."""

    def raise_crashed_step() -> None:
        # Called each time the wait wakes up: every half second, and once the outcome has arrived. Celery's own
        # follow_parents reads every step's result then too, two more round trips after the outcome is here.
        if result.ready():
            return
        steps_before: list[AsyncResult] = []
        node = result.parent
        while node is not None:
            steps_before.append(node)
            node = node.parent
        for step in reversed(steps_before):  # the first step that failed is the cause
            step.maybe_throw()

    outcome: dict[str, Any] = result.get(timeout=timeout_s, follow_parents=False, on_interval=raise_crashed_step)
    return outcome


@app.task(name=SYNC, ignore_result=True)
def sync() -> str:
    """Start one sync (what beat and `celery call tokenwatch.sync` trigger); returns its sync id."""
    sync_id = new_sync_id()
    sync_chain(sync_id).apply_async()
    return sync_id


# Transient failures of the exchange are retried by the task (never by sleeping in it): the step says when.
@app.task(name=FETCH, bind=True, max_retries=None, store_errors_even_if_ignored=True)
def fetch_contracts(self: Task, state: State | None = None) -> State:
    """Take the sync lock, fetch the active contracts and stage the answer."""
    try:
        return steps.run_step(steps.fetch, worker_context(), SyncState.from_json(state) if state else SyncState.new()
                              ).to_json()
    except steps.RetryLater as wait:
        raise self.retry(args=(wait.state.to_json(),), countdown=wait.delay_s) from None


@app.task(name=DIFF, store_errors_even_if_ignored=True)
def diff_and_build(state: State) -> State:
    """Classify the staged answer against the registry; stage the plan and the next hot cache."""
    return steps.run_step(steps.diff, worker_context(), SyncState.from_json(state)).to_json()


# acks_late + reject_on_worker_lost: a write killed mid-way is redelivered, and a replay changes nothing
# (db/writer.py checks the sync id and the base revision inside the transaction).
@app.task(name=WRITE, acks_late=True, reject_on_worker_lost=True)
def write_batch(state: State) -> dict[str, Any]:
    """Commit the staged plan in one transaction and swap the staged cache in; returns the outcome."""
    return steps.run_step(steps.write, worker_context(), SyncState.from_json(state)).outcome().to_json()


def _after_write(task: Task | None = None, **_: Any) -> None:
    # task_postrun comes after the write's outcome is stored and its lock released: sharing the registry, or
    # taking the one the next diff needs, is off the sync's time (steps.after_write).
    if task is not None and task.name == WRITE:
        steps.after_write(worker_context())


signals.task_postrun.connect(_after_write, weak=False)
