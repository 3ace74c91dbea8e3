"""The event stream ``tokenwatch:events``: committed history events appended, each exactly once.

Each event's stream id is ``<ms>-<history id>``, so Redis itself refuses a second append of the same event;
the stream's last id says where to resume (tokenwatch/outbox.py reads the events to append from the database).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import orjson
import redis

from tokenwatch.cache import keys

STREAM_MAXLEN = 100_000


def stream_top(client: redis.Redis) -> tuple[int, int]:
    """The stream's last id as (ms, sequence); (0, 0) before the first append."""
    try:
        info = client.xinfo_stream(keys.EVENTS)
    except redis.ResponseError:  # no stream yet
        return 0, 0
    raw = info["last-generated-id"]
    text = raw.decode() if isinstance(raw, bytes) else str(raw)
    ms, seq = text.split("-")
    return int(ms), int(seq)


def append(client: redis.Redis, rows: Sequence[Mapping[str, Any]], top_ms: int, maxlen: int = STREAM_MAXLEN) -> int:
    """Append history rows (id, symbol, event_type, event_time, sync_id, details) in one round trip; rows already
    in the stream are refused by Redis and not counted. Returns how many were appended."""
    pipe = client.pipeline(transaction=False)
    for row in rows:
        # Stream ids must grow; event times do (no time travel), and the history id breaks ties.
        top_ms = max(top_ms, int(row["event_time"]))
        pipe.xadd(keys.EVENTS, {
            "symbol": row["symbol"], "event_type": row["event_type"], "event_time": str(row["event_time"]),
            "sync_id": row["sync_id"], "details": orjson.dumps(row["details"]),
        }, id=f"{top_ms}-{row['id']}", maxlen=maxlen, approximate=True)
    appended = 0
    for result in pipe.execute(raise_on_error=False):
        if isinstance(result, redis.ResponseError):
            if "equal or smaller" not in str(result):
                raise result
        else:
            appended += 1
    return appended
