"""The Celery app, and nothing else: settings come from celeryconfig, tasks from tasks/."""

from __future__ import annotations

import gc
from typing import Any

from celery import Celery, signals

app = Celery("tokenwatch", include=["tokenwatch.tasks.sync", "tokenwatch.tasks.maintenance"])
app.config_from_object("tokenwatch.celeryconfig")


def _freeze_imports(**_: Any) -> None:
    """Keep what a pool process inherits (modules, the app) out of the cyclic collector's passes."""
    # Otherwise a full collection walks every inherited object inside whichever sync triggered it.
    gc.freeze()


signals.worker_process_init.connect(_freeze_imports)
