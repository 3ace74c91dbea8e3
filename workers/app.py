"""The Celery app, and nothing else: settings come from celeryconfig, tasks from tasks/."""

from __future__ import annotations

from celery import Celery

app = Celery("tokenwatch", include=["tasks.sync", "tasks.maintenance"])
app.config_from_object("celeryconfig")
