"""Time as tokenwatch counts it: integer milliseconds since the Unix epoch (UTC), like KuCoin's own dates."""

from __future__ import annotations

import gc
import time
from collections.abc import Iterator
from contextlib import contextmanager

SECOND_MS = 1_000
HOUR_MS = 3_600 * SECOND_MS
DAY_MS = 24 * HOUR_MS


def now_ms() -> int:
    """Wall-clock milliseconds since the epoch."""
    return int(time.time() * SECOND_MS)


class Timer:
    """Milliseconds since construction, on the monotonic performance counter."""

    def __init__(self) -> None:
        self.start = time.perf_counter()

    def ms(self) -> float:
        """Milliseconds elapsed so far."""
        return (time.perf_counter() - self.start) * 1000.0


@contextmanager
def paused_gc() -> Iterator[None]:
    """Pause the cyclic garbage collector for the block (restored as it was, also on an exception).

    Decoding an answer makes hundreds of thousands of fresh, acyclic objects, which the collector would walk
    again and again without finding anything to free.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()
