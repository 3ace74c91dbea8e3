"""The hot cache: a Redis hash of every active contract, swapped in whole after each commit."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Mapping, Sequence
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
    client: redis.Redis, staged_key: str, entries: Mapping[str, Buffer], keep_live: Mapping[str, Buffer], ttl_s: int,
) -> int:
    """Build the next cache hash under staged_key. keep_live: symbols that stay listed without an entry from this
    answer (absent but kept, or held); each keeps its live entry, or gets the one given when the cache has none
    (Redis lost it). Returns the hash's size.

    Entries may be any buffer (slices of the exchange's answer): each chunk is copied only into the command
    that sends it, so the whole hash never exists twice in this process.
    """
    staging = Staging(client, staged_key, ttl_s)
    staging.add(list(entries.items()))
    kept = {symbol: entry for symbol, entry in keep_live.items() if symbol not in entries}
    staging.finish(kept, ())
    return len(entries) + len(kept)


class Staging:
    """The next cache hash, built under its staged key a batch at a time, as the answer is parsed (add), then
    completed with the symbols that keep their live entry (finish)."""

    def __init__(self, client: redis.Redis, staged_key: str, ttl_s: int) -> None:
        self.client = client
        self.staged_key = staged_key
        self.ttl_s = ttl_s
        self.started = False

    def add(self, entries: Sequence[tuple[str, Buffer]]) -> None:
        """Stage these entries (symbol, the contract's JSON text), sent a chunk at a time."""
        key, ttl_s, first = self.staged_key, self.ttl_s, not self.started

        def commands() -> Iterator[list[Any] | bytes]:
            if first:
                yield ["DEL", key]  # a repeated stream (redis-py's retry after a lost connection) starts again
            pairs = iter(entries)
            while chunk := list(islice(pairs, HSET_CHUNK)):
                yield redis_client.pack_hset(key, chunk)
                yield ["EXPIRE", key, ttl_s]  # from the first chunk on: a crash leaves nothing behind

        if entries or first:
            redis_client.stream(self.client, commands)
        self.started = True

    def finish(self, keep_live: Mapping[str, Buffer], remove: Iterable[str]) -> None:
        """Give each keep_live symbol its live entry, or the one given when the cache has none (Redis lost it),
        in place of any staged; take out the remove symbols that are not kept (staged, but not to be cached)."""
        if not self.started:
            self.add([])
        symbols = list(keep_live)
        live = self.client.hmget(keys.TOKENS, symbols) if symbols else []
        kept = [(s, v if isinstance(v, bytes) else keep_live[s]) for s, v in zip(symbols, live, strict=True)]
        gone = [symbol for symbol in remove if symbol not in keep_live]
        if kept:
            self.add(kept)
        if gone:
            self.client.hdel(self.staged_key, *gone)


# One round trip, atomic: readers see the old hash and version or the new ones, never a mix. UNLINK frees the
# old hash in Redis's background thread instead of inside the swap, where a large hash would take long to free.
# KEYS: version, staged hash, live hash, origin. ARGV: revision, staged size, registry id, sync id, and the
# registry's head revision now. Replies: 0 left as it was, 1 replaced, 2 replaced another registry's cache,
# 3 replaced a cache of this registry that was ahead of its head (a restored backup) or from another commit
# of the same revision; -1 the staged hash is gone.
_PUBLISH = """
local current = tonumber(redis.call('GET', KEYS[1]) or '-1')
local origin = redis.call('GET', KEYS[4])
local revision = tonumber(ARGV[1])
local ours = ARGV[3] .. ' ' .. ARGV[4]
local reply = 1
if origin then
  if string.match(origin, '^(%S+)') ~= ARGV[3] then
    reply = 2
  elseif current > revision then
    if tonumber(ARGV[5]) > revision then return 0 end
    reply = 3
  elseif current == revision then
    if origin == ours then return 0 end
    reply = 3
  end
elseif current >= 0 then
  reply = 2
end
local staged = redis.call('EXISTS', KEYS[2]) == 1
if tonumber(ARGV[2]) > 0 and not staged then return -1 end
redis.call('UNLINK', KEYS[3])
if staged then
  redis.call('RENAME', KEYS[2], KEYS[3])
  redis.call('PERSIST', KEYS[3])
end
redis.call('SET', KEYS[1], ARGV[1])
redis.call('SET', KEYS[4], ours)
return reply
"""

KEPT, REPLACED, OTHER_REGISTRY, AHEAD = 0, 1, 2, 3


def publish(client: redis.Redis, staged_key: str, revision: int, size: int, *, registry_id: str, sync_id: str,
            head: int) -> int:
    """Atomically replace the live hash with the staged one, as revision of registry registry_id made by sync_id;
    head is the registry's revision now. Returns KEPT when the cache already shows this commit or a newer one of
    this registry (and leaves it), REPLACED, or OTHER_REGISTRY / AHEAD when what it replaced was not to be
    trusted (another registry's, or ahead of this registry's head: a restored backup)."""
    done = int(cast("int", client.register_script(_PUBLISH)(
        keys=[keys.VERSION, staged_key, keys.TOKENS, keys.ORIGIN], args=[revision, size, registry_id, sync_id, head],
    )))
    if done < 0:
        raise LookupError(f"staged cache {staged_key} is gone (expired or flushed)")
    return done


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
    origin: bytes | None = None  # which registry and commit the snapshot shows (keys.ORIGIN)
    unreadable: frozenset[str] = frozenset()
    _data: dict[str, dict[str, Any]] = field(default_factory=dict)

    def refresh(self) -> bool:
        """Reload if the version or its origin moved; True when a new snapshot was swapped in."""
        raw_version, origin = self.client.mget(keys.VERSION, keys.ORIGIN)
        version = None if raw_version is None else int(raw_version)
        if version == self.version and origin == self.origin:
            return False
        pipe = self.client.pipeline(transaction=True)
        pipe.get(keys.VERSION)
        pipe.get(keys.ORIGIN)
        pipe.hgetall(keys.TOKENS)
        raw_version, origin, raw = pipe.execute()
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
        self.origin = origin
        return True

    def get(self, symbol: str) -> dict[str, Any] | None:
        """One contract from the snapshot."""
        return self._data.get(symbol)

    def all(self) -> dict[str, dict[str, Any]]:
        """Every cached contract (the snapshot itself; do not mutate)."""
        return self._data
