"""Run a measurement in a fresh spawned process, with one pause in the middle for the parent to act.

The child calls ``pause()`` when its warm-up is done; the parent then runs ``between()`` (it scripts the
simulated exchange) and lets the child go on. The child's result comes back pickled; its peak RSS is its own.
"""

from __future__ import annotations

import os
import traceback
from collections.abc import Callable
from multiprocessing import get_context
from multiprocessing.connection import Connection
from typing import Any, TypeVar, cast

T = TypeVar("T")
R = TypeVar("R")
Pause = Callable[[], None]

_READY = "ready"
_GO = "go"


def _main(function: Callable[[T, Pause], R], job: T, conn: Connection) -> None:
    def pause() -> None:
        conn.send((_READY, None))
        if conn.recv() != _GO:
            raise RuntimeError("the parent did not let the measurement go on")

    try:
        conn.send(("result", (True, function(job, pause))))
    except BaseException:  # the parent raises it again, with the traceback of this process
        conn.send(("result", (False, traceback.format_exc())))
    finally:
        conn.close()
        # Skip freeing a gigabyte of objects one by one at 100,000 contracts: nothing is left to flush.
        os._exit(0)


def in_child(function: Callable[[T, Pause], R], job: T, between: Callable[[], None] | None = None) -> R:
    """function(job, pause) in a fresh spawned process; ``between`` runs here while the child is paused."""
    context = get_context("spawn")
    conn, child_end = context.Pipe(duplex=True)
    process = context.Process(target=_main, args=(function, job, child_end), daemon=True)
    process.start()
    child_end.close()
    try:
        while True:
            try:
                kind, payload = cast(tuple[str, Any], conn.recv())
            except EOFError:
                process.join()
                raise RuntimeError(f"the measuring child died (exit code {process.exitcode})") from None
            if kind == _READY:
                if between is not None:
                    between()
                conn.send(_GO)
                continue
            ok, value = payload
            break
    finally:
        conn.close()
    process.join()
    if not ok:
        raise RuntimeError(f"the measuring child failed:\n{value}")
    return cast(R, value)
