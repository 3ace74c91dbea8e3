"""The event stream: every committed history event appended to ``tokenwatch:events`` exactly once.

token_history is the outbox. Each event's stream id is ``<ms>-<history id>``, so Redis itself refuses a
second append of the same event, and the cursor (the stream's last id, or registry_state.last_event_id when
the stream was lost) says where to resume after a crash between commit and publish.
"""

from __future__ import annotations

import logging

import orjson
import redis
from sqlalchemy import Engine

from tokenwatch.cache import keys
from tokenwatch.db.queries import events_after
from tokenwatch.db.writer import set_event_cursor

log = logging.getLogger(__name__)

STREAM_MAXLEN = 100_000
PUBLISH_BATCH = 5_000


def _stream_top(client: redis.Redis) -> tuple[int, int]:
    try:
        info = client.xinfo_stream(keys.EVENTS)
    except redis.ResponseError:  # no stream yet
        return 0, 0
    raw = info["last-generated-id"]
    text = raw.decode() if isinstance(raw, bytes) else str(raw)
    ms, seq = text.split("-")
    return int(ms), int(seq)


def publish_pending(engine: Engine, client: redis.Redis, maxlen: int = STREAM_MAXLEN) -> int:
    """Append every committed event not yet in the stream; returns how many were appended."""
    top_ms, cursor = _stream_top(client)  # events_after also skips what registry_state's cursor covers
    appended = 0
    while True:
        rows = events_after(engine, cursor, PUBLISH_BATCH)
        if not rows:
            break
        pipe = client.pipeline(transaction=False)
        for row in rows:
            # Stream ids must grow; event times do (no time travel), and the history id breaks ties.
            top_ms = max(top_ms, int(row["event_time"]))
            pipe.xadd(keys.EVENTS, {
                "symbol": row["symbol"], "event_type": row["event_type"], "event_time": str(row["event_time"]),
                "sync_id": row["sync_id"], "details": orjson.dumps(row["details"]),
            }, id=f"{top_ms}-{row['id']}", maxlen=maxlen, approximate=True)
        results = pipe.execute(raise_on_error=False)
        for result in results:
            if isinstance(result, redis.ResponseError):
                if "equal or smaller" not in str(result):
                    raise result
            else:
                appended += 1
        cursor = int(rows[-1]["id"])
        if len(rows) < PUBLISH_BATCH:
            break
    if appended:
        set_event_cursor(engine, cursor)
        log.info("published %d events to %s", appended, keys.EVENTS)
    return appended
