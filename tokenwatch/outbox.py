"""token_history is the outbox of the event stream: what is committed there is appended to Redis once."""

from __future__ import annotations

import logging

import redis
from sqlalchemy import Engine

from tokenwatch.cache import events, keys
from tokenwatch.db.queries import events_after
from tokenwatch.db.writer import set_event_cursor

log = logging.getLogger(__name__)

PUBLISH_BATCH = 5_000


def publish_pending(engine: Engine, client: redis.Redis, maxlen: int = events.STREAM_MAXLEN) -> int:
    """Append every committed event not yet in the stream; returns how many were appended.

    The cursor is the stream's last id, or registry_state.last_event_id when the stream was lost.
    """
    top_ms, cursor = events.stream_top(client)  # events_after also skips what registry_state's cursor covers
    appended = 0
    while True:
        rows = events_after(engine, cursor, PUBLISH_BATCH)
        if not rows:
            break
        appended += events.append(client, rows, top_ms, maxlen)
        top_ms = max(top_ms, *(int(row["event_time"]) for row in rows))
        cursor = int(rows[-1]["id"])
        if len(rows) < PUBLISH_BATCH:
            break
    if appended:
        set_event_cursor(engine, cursor)
        log.info("published %d events to %s", appended, keys.EVENTS)
    return appended
