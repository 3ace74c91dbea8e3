"""``tokenwatch sync --inline``: the chain's steps (tokenwatch/steps.py), run in order in this process, with the
data handed over in memory instead of through Redis."""

from __future__ import annotations

import logging
import time

import redis

from tokenwatch import process as process_module
from tokenwatch.errors import one_line
from tokenwatch.handoff import Handoff, MemoryHandoff
from tokenwatch.outcome import Outcome
from tokenwatch.process import ProcessState
from tokenwatch.settings import Settings
from tokenwatch.steps import STEPS, RetryLater, StepContext, after_write, run_step
from tokenwatch.syncstate import SyncState

log = logging.getLogger("tokenwatch.sync")


def inline_context(
    settings: Settings, process: ProcessState | None = None, handoff: Handoff | None = None,
) -> StepContext:
    """The context of an inline sync: memory handoff, and Redis when it answers (else no lock, no cache)."""
    process = process or process_module.current()
    client = process.redis(settings.redis_config())
    try:
        client.ping()
    except (redis.RedisError, OSError) as exc:
        log.warning("Redis unreachable (%s): syncing without the sync lock and without the hot cache",
                    one_line(exc))
        return StepContext(settings, process, handoff or MemoryHandoff(), None)
    return StepContext(settings, process, handoff or MemoryHandoff(), client)


def run_inline(ctx: StepContext, state: SyncState | None = None) -> SyncState:
    """Every step of one sync, in order; a step that asks to be retried is retried after its delay."""
    state = state or SyncState.new()
    for step in STEPS:
        while True:
            try:
                state = run_step(step, ctx, state)
            except RetryLater as wait:
                time.sleep(wait.delay_s)
                state = wait.state
                continue
            break
    return state


def sync_inline(settings: Settings, process: ProcessState | None = None) -> Outcome:
    """One whole sync in this process, then what a worker does after a write (steps.after_write); never raises
    for a sync-level failure."""
    ctx = inline_context(settings, process)
    outcome = run_inline(ctx).outcome()
    after_write(ctx)
    return outcome
