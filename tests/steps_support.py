"""Running the sync's own steps by hand in a test: a context, and a few steps of one sync."""

from __future__ import annotations

import time

import redis

from tokenwatch import process
from tokenwatch.handoff import Handoff, MemoryHandoff
from tokenwatch.settings import Settings
from tokenwatch.steps import RetryLater, Step, StepContext, run_step
from tokenwatch.syncstate import SyncState


def step_context(settings: Settings, client: redis.Redis | None, handoff: Handoff | None = None) -> StepContext:
    """The steps' context in this process: client None runs them as the inline path does without Redis."""
    return StepContext(settings, process.current(), handoff or MemoryHandoff(), client)


def run_steps(ctx: StepContext, state: SyncState, *steps: Step) -> SyncState:
    """Run the given steps of one sync through run_step, waiting out any retry a step asks for."""
    for step in steps:
        while True:
            try:
                state = run_step(step, ctx, state)
            except RetryLater as wait:
                time.sleep(wait.delay_s)
                state = wait.state
                continue
            break
    return state
