"""The hot cache: a Redis hash of every active contract, swapped in whole after each commit."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import islice
from typing import Any, cast

import orjson
import redis
from typing_extensions import Buffer

from tokenwatch.cache import keys, redis_client

log = logging.getLogger(__name__)

HSET_CHUNK = 1_000


def stage_entries(
    client: redis.Redis, staged_key: str, entries: Mapping[str, Buffer], keep_live: Sequence[str], ttl_s: int,
) -> int:
    """Build the next cache hash under staged_key; keep_live symbols keep their live entry. Returns its size.

    Entries may be any buffer (slices of the exchange's answer): each chunk is copied only into the command
    that sends it, so the whole hash never exists twice in this process.
    """
    kept: dict[str, bytes] = {}
    if keep_live:
        live = client.hmget(keys.TOKENS, list(keep_live))
        kept = {s: v for s, v in zip(keep_live, live, strict=True) if isinstance(v, bytes) and s not in entries}

    def commands() -> Iterator[list[Any] | bytes]:
        # DEL first: a repeated stream (redis-py's retry after a lost connection) starts the hash again.
        yield ["DEL", staged_key]
        for source in (entries, kept):
            pairs = iter(source.items())
            while chunk := list(islice(pairs, HSET_CHUNK)):
                yield redis_client.pack_hset(staged_key, chunk)
                yield ["EXPIRE", staged_key, ttl_s]  # from the first chunk on: a crash leaves nothing behind

    redis_client.stream(client, commands)
    return len(entries) + len(kept)


# One round trip, atomic: readers see the old hash and version or the new ones, never a mix. UNLINK frees the
# old hash in Redis's background thread instead of inside the swap, where a large hash would take long to free.
# KEYS[4..]: staging keys the caller has consumed (the applied plan), dropped in the same round trip.
_PUBLISH = """
local function swap()
  local current = redis.call('GET', KEYS[1])
  if current and tonumber(current) >= tonumber(ARGV[1]) then return 0 end
  local staged = redis.call('EXISTS', KEYS[2]) == 1
  if tonumber(ARGV[2]) > 0 and not staged then return -1 end
  redis.call('UNLINK', KEYS[3])
  if staged then
    redis.call('RENAME', KEYS[2], KEYS[3])
    redis.call('PERSIST', KEYS[3])
  end
  redis.call('SET', KEYS[1], ARGV[1])
  return 1
end
local done = swap()
if done >= 0 and #KEYS > 3 then redis.call('UNLINK', unpack(KEYS, 4)) end
return done
"""


def publish(client: redis.Redis, staged_key: str, revision: int, size: int, *, consumed: Sequence[str] = ()) -> bool:
    """Atomically replace the live hash with the staged one and set the version to revision, and drop the
    ``consumed`` staging keys (also when the cache already showed this revision).

    Returns False, leaving the cache as it was, when it already shows this revision or a newer one.
    """
    done = int(cast("int", client.register_script(_PUBLISH)(
        keys=[keys.VERSION, staged_key, keys.TOKENS, *consumed], args=[revision, size],
    )))
    if done < 0:
        raise LookupError(f"staged cache {staged_key} is gone (expired or flushed)")
    return done == 1


def cache_version(client: redis.Redis) -> int | None:
    """The revision the live cache shows, or None before the first publish."""
    value = client.get(keys.VERSION)
    return None if value is None else int(value)


def decode_entry(value: bytes) -> dict[str, Any] | None:
    """One cached contract, or None when its text cannot be read (written by something that did not check it)."""
    try:
        contract = orjson.loads(value)
    except orjson.JSONDecodeError:
        return None
    return contract if isinstance(contract, dict) else None


@dataclass(slots=True)
class HotCache:
    """An in-process dictionary snapshot of the Redis hash, refreshed only when the version moves.

    An entry that cannot be decoded is left out of the snapshot and its symbol kept in ``unreadable``, so that
    one bad entry costs that symbol its cached copy, not every read.
    """

    client: redis.Redis
    version: int | None = None
    unreadable: frozenset[str] = frozenset()
    _data: dict[str, dict[str, Any]] = field(default_factory=dict)

    def refresh(self) -> bool:
        """Reload if the version moved; True when a new snapshot was swapped in."""
        version = cache_version(self.client)
        if version == self.version:
            return False
        pipe = self.client.pipeline(transaction=True)
        pipe.get(keys.VERSION)
        pipe.hgetall(keys.TOKENS)
        raw_version, raw = pipe.execute()
        data: dict[str, dict[str, Any]] = {}
        unreadable: set[str] = set()
        for symbol, value in raw.items():
            contract = decode_entry(value)
            if contract is None:
                unreadable.add(symbol.decode(errors="replace"))
            else:
                data[symbol.decode()] = contract
        if unreadable:
            shown = ", ".join(sorted(unreadable)[:10])
            log.warning("%d entries of %s cannot be read and are left out (%s); those symbols are read from the "
                        "database", len(unreadable), keys.TOKENS, shown)
        # One assignment each: readers see the old snapshot or the new one, never a mix.
        self._data = data
        self.unreadable = frozenset(unreadable)
        self.version = None if raw_version is None else int(raw_version)
        return True

    def get(self, symbol: str) -> dict[str, Any] | None:
        """One contract from the snapshot."""
        return self._data.get(symbol)

    def all(self) -> dict[str, dict[str, Any]]:
        """Every cached contract (the snapshot itself; do not mutate)."""
        return self._data
