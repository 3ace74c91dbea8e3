"""The event stream ``tokenwatch:events``: committed history events appended, each exactly once.

Each entry carries the event's fields (symbol, event_type, event_time, sync_id, details) and where it comes
from: the registry's identity and the event's history id. The cursor ``tokenwatch:events:cursor`` says which
registry's event was appended last; appending moves it in the same script, and only from the position the
caller read, so two publishers never append the same event twice. Which events to append is the outbox's
business (tokenwatch/outbox.py).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

import orjson
import redis

from tokenwatch.cache import keys

STREAM_MAXLEN = 100_000

# KEYS: stream, cursor. ARGV: the cursor's expected registry and history id ("" for none), maxlen, the new
# cursor (registry, history id, sync id), then 7 fields per event. -1: the cursor moved meanwhile.
_APPEND = """
local registry = redis.call('HGET', KEYS[2], 'registry') or ''
local position = redis.call('HGET', KEYS[2], 'history_id') or ''
if registry ~= ARGV[1] or position ~= ARGV[2] then return -1 end
for i = 7, #ARGV, 7 do
  redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[3], '*', 'symbol', ARGV[i], 'event_type', ARGV[i + 1],
             'event_time', ARGV[i + 2], 'sync_id', ARGV[i + 3], 'details', ARGV[i + 4], 'registry', ARGV[i + 5],
             'history_id', ARGV[i + 6])
end
redis.call('HSET', KEYS[2], 'registry', ARGV[4], 'history_id', ARGV[5], 'sync_id', ARGV[6])
return (#ARGV - 6) / 7
"""


@dataclass(frozen=True, slots=True)
class Cursor:
    """The last event appended: of which registry, its history id and the sync that made it."""

    registry: str
    history_id: int
    sync_id: str


def read_cursor(client: redis.Redis) -> Cursor | None:
    """The stream's cursor, or None when there is none (a new or flushed Redis, or a stream 0.1.0 wrote)."""
    raw = cast("dict[bytes, bytes]", client.hgetall(keys.EVENTS_CURSOR))
    try:
        return Cursor(raw[b"registry"].decode(), int(raw[b"history_id"]), raw[b"sync_id"].decode())
    except (KeyError, ValueError):
        return None


def append(client: redis.Redis, rows: Sequence[Mapping[str, Any]], expected: Cursor | None, position: Cursor,
           maxlen: int = STREAM_MAXLEN) -> bool:
    """Append history rows (id, symbol, event_type, event_time, sync_id, details) of position's registry and move
    the cursor to position (the last row's, or a new starting point when there are none), if the cursor is still
    expected; False, with nothing appended, when it moved meanwhile."""
    args: list[Any] = [
        expected.registry if expected else "", str(expected.history_id) if expected else "", maxlen,
        position.registry, position.history_id, position.sync_id,
    ]
    for row in rows:
        args += (row["symbol"], row["event_type"], str(row["event_time"]), row["sync_id"],
                 orjson.dumps(row["details"]), position.registry, int(row["id"]))
    done = int(cast("int", client.register_script(_APPEND)(keys=[keys.EVENTS, keys.EVENTS_CURSOR], args=args)))
    return done >= 0


def entries_newest_first(client: redis.Redis, page: int = 500) -> Iterator[tuple[str, int, str]]:
    """(registry, history id, sync id) of each stream entry, newest first (entries without them are skipped)."""
    last = "+"
    while True:
        batch = cast("list[tuple[bytes, dict[bytes, bytes]]]",
                     client.xrevrange(keys.EVENTS, max=last, min="-", count=page + (last != "+")))
        if last != "+":
            batch = batch[1:]  # the page's first entry was the last one of the page before
        if not batch:
            return
        for _entry_id, fields in batch:
            try:
                yield fields[b"registry"].decode(), int(fields[b"history_id"]), fields[b"sync_id"].decode()
            except (KeyError, ValueError):
                continue
        last = batch[-1][0].decode()
