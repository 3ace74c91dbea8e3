"""token_history is the outbox of the event stream: what is committed there is appended to Redis once.

Where to resume is the stream's cursor (cache/events.py) when it is this registry's and agrees with the
registry's history. A cursor of another registry (the database was deleted or recreated) is not trusted: the
stream is re-based on this registry's own record of what it published (registry_state.last_event_id). A
cursor of this registry that its history contradicts (a backup was restored: the stream holds events of a
future that is gone) is re-based after the newest entry the history still has. Either is logged once: the
cursor is this registry's afterwards.
"""

from __future__ import annotations

import logging
from itertools import islice

import redis
from sqlalchemy import Engine

from tokenwatch.cache import events, keys
from tokenwatch.db.queries import event_sync_ids, events_after, outbox_cursor
from tokenwatch.db.writer import set_event_cursor

log = logging.getLogger(__name__)

PUBLISH_BATCH = 1_000
REBASE_SEARCH = 10_000  # stream entries looked at, newest first, for the last one this registry still has
ATTEMPTS = 3  # another publisher moving the cursor meanwhile: start over from where it left it


def publish_pending(engine: Engine, client: redis.Redis, registry_id: str, maxlen: int = events.STREAM_MAXLEN,
                    ) -> int:
    """Append every event of this registry not yet in the stream; returns how many were appended."""
    appended = 0
    for _ in range(ATTEMPTS):
        cursor = events.read_cursor(client)
        start = resume_point(engine, client, registry_id, cursor)
        same = cursor is not None and cursor.registry == registry_id and cursor.history_id == start
        position = cursor if same and cursor is not None else events.Cursor(registry_id, start, "")
        finished, count, position = _append_after(engine, client, cursor, position, maxlen)
        appended += count
        if finished:
            break
    if appended:
        set_event_cursor(engine, position.history_id)
        log.info("published %d events to %s", appended, keys.EVENTS)
    return appended


def _append_after(
    engine: Engine, client: redis.Redis, cursor: events.Cursor | None, position: events.Cursor, maxlen: int,
) -> tuple[bool, int, events.Cursor]:
    """Append the events after position, a batch at a time, moving the cursor from where it was read; returns
    (finished: False when another publisher moved it meanwhile, how many were appended, the last position)."""
    appended = 0
    while True:
        rows = events_after(engine, position.history_id, PUBLISH_BATCH)
        if not rows and cursor == position:
            return True, appended, position
        # With no rows, a re-based cursor is still written: the re-basing is then logged once, not every sync.
        target = events.Cursor(position.registry, int(rows[-1]["id"]), str(rows[-1]["sync_id"])) if rows else position
        if not events.append(client, rows, cursor, target, maxlen):
            return False, appended, position
        appended += len(rows)
        cursor = position = target
        if len(rows) < PUBLISH_BATCH:
            return True, appended, position


def resume_point(engine: Engine, client: redis.Redis, registry_id: str, cursor: events.Cursor | None) -> int:
    """The history id after which this registry's events are not yet in the stream."""
    if cursor is not None and cursor.registry == registry_id:
        if cursor.history_id == 0 or event_sync_ids(engine, [cursor.history_id]).get(cursor.history_id) == \
                cursor.sync_id:
            return cursor.history_id
        point = rebase_point(engine, client, registry_id)
        log.warning("the event stream holds a newer revision of this registry than the database (a restored "
                    "backup?): re-based after event %d, the newest the database still has", point)
        return point
    point = outbox_cursor(engine)
    if cursor is not None:
        log.warning("the event stream belonged to another registry (%s): re-based on this registry's after its "
                    "event %d", cursor.registry, point)
    return point


def rebase_point(engine: Engine, client: redis.Redis, registry_id: str) -> int:
    """The history id of the newest stream entry of this registry that its history still has (same id, same
    sync); the registry's own outbox cursor when none is found among the newest entries."""
    entries = (entry for entry in events.entries_newest_first(client) if entry[0] == registry_id)
    looked_at = 0
    while looked_at < REBASE_SEARCH and (page := list(islice(entries, 500))):
        looked_at += len(page)
        known = event_sync_ids(engine, [history_id for _, history_id, _ in page])
        for _, history_id, sync_id in page:
            if known.get(history_id) == sync_id:
                return history_id
    return outbox_cursor(engine)
