"""The read API for bots: the registry from an in-process snapshot, Redis, or SQLite when Redis is down.

A bot imports this module and keeps one :class:`Registry` per process::

    from tokenwatch.reader import Registry

    registry = Registry()              # URLs from TOKENWATCH_REDIS_URL and TOKENWATCH_DATABASE_URL
    contract = registry.get("XBTUSDTM")  # the contract as KuCoin gives it, market data included

Where a read is served from, in order:

1. ``snapshot``: a dictionary in this process holding the whole hot cache (``tokenwatch:tokens``). Whether it
   is still current is asked of Redis (``tokenwatch:tokens:version``) at most once per ``refresh_interval_s``,
   so a read between two checks costs a dictionary lookup: microseconds, no network. When the version moved,
   the whole hash is loaded again in one round trip. A snapshot is at most ``refresh_interval_s`` older than
   the cache, which a sync replaces once a minute.
2. ``redis``: a symbol absent from the snapshot is asked of Redis (it may have been listed since the last
   check). Once the cache has been published, Redis is authoritative: a symbol it does not hold is not listed.
3. ``database``: the ``tokens`` table (SQLite or PostgreSQL), read-only, when Redis is unreachable or has no
   published cache yet. Contracts read from it carry the listing metadata only: the market data keys
   (``markPrice``, ...) are absent. Redis is not asked again for ``redis_retry_s`` after a failure, so an
   outage costs one timeout, not one per read. ``new_listings`` and ``recent_events`` always read the database.

Every read counts a hit at the layer that served it and a miss at each layer it passed; :meth:`Registry.stats`
returns the counts, and ``on_access(layer, hit)`` is called for each when given (pass
``tokenwatch.metrics.record_cache_access`` to count them in Prometheus). A symbol found nowhere is a miss,
and ``get`` returns None; when neither Redis nor the database can answer, reads raise :class:`RegistryUnavailableError`.

Contracts returned by ``get`` are copies; ``active()`` returns a new dictionary whose contract dictionaries
are shared with the snapshot: treat them as read-only. Create the Registry in the process that uses it (after
a fork, not before); it may be shared by that process's threads.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, Literal, TypeVar, cast
from urllib.parse import quote

import redis
from sqlalchemy import Engine, create_engine, event, select
from sqlalchemy.exc import SQLAlchemyError

from tokenwatch.cache import hot, keys
from tokenwatch.cache.redis_client import RedisConfig, make_redis
from tokenwatch.clock import HOUR_MS, now_ms
from tokenwatch.db.engine import BUSY_TIMEOUT_MS, is_sqlite, make_engine, sqlite_path
from tokenwatch.db.queries import history, list_tokens
from tokenwatch.db.schema import tokens
from tokenwatch.domain.contracts import METADATA_COLUMNS
from tokenwatch.domain.registry import ACTIVE, stored_contract
from tokenwatch.errors import ConfigError, TokenwatchError
from tokenwatch.settings import get_settings, redact_url

log = logging.getLogger(__name__)

Layer = Literal["snapshot", "redis", "database"]
SNAPSHOT: Layer = "snapshot"
REDIS: Layer = "redis"
DATABASE: Layer = "database"
LAYERS: tuple[Layer, ...] = (SNAPSHOT, REDIS, DATABASE)

MAX_EVENTS = 10_000
Contract = dict[str, Any]
Hook = Callable[[str, bool], object]
T = TypeVar("T")


class RegistryUnavailableError(TokenwatchError):
    """Neither Redis nor the database could answer a read (the message names the database error)."""


def contract_from_row(row: Mapping[Any, Any]) -> Contract:
    """A tokens-table row in KuCoin's shape (camelCase keys); without market data, which SQLite does not keep."""
    meta = [row[column] for column in METADATA_COLUMNS]
    return stored_contract(str(row["symbol"]), str(row["contract_status"]), meta)


def _read_only_engine(database_url: str) -> Engine:
    """An engine that opens the SQLite file read-only, or PostgreSQL in read-only transactions: a reader never
    creates or writes the registry."""
    if not is_sqlite(database_url):
        return make_engine(database_url).execution_options(postgresql_readonly=True)
    path = sqlite_path(database_url)
    if path is None:
        raise ConfigError("the reader needs an sqlite file URL; an in-memory database is private to its process")
    uri = "file:" + quote(os.path.abspath(path)) + "?mode=ro"

    def connect() -> sqlite3.Connection:
        return sqlite3.connect(uri, uri=True, check_same_thread=False)

    engine = create_engine("sqlite:///" + os.path.abspath(path), creator=connect)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: sqlite3.Connection, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA query_only=ON")
        cursor.close()

    return engine


class Registry:
    """Read the contract registry; see the module docstring for where each read is served from.

    redis_url and database_url default to the settings (TOKENWATCH_REDIS_URL, TOKENWATCH_DATABASE_URL).
    refresh_interval_s bounds how often the cache version is checked (and so how stale the snapshot can be);
    0 checks on every read. redis_retry_s is how long Redis is left alone after it failed. redis_timeout_s
    bounds each Redis call. redis_client replaces the client made from redis_url (tests pass fakeredis).
    on_access(layer, hit) is called for every layer a read passes (tokenwatch.metrics.record_cache_access).
    """

    def __init__(
        self,
        redis_url: str | None = None,
        database_url: str | None = None,
        *,
        refresh_interval_s: float = 1.0,
        redis_retry_s: float = 5.0,
        redis_timeout_s: float = 1.0,
        new_listing_window_h: float | None = None,
        redis_client: redis.Redis | None = None,
        on_access: Hook | None = None,
    ) -> None:
        if refresh_interval_s < 0 or redis_retry_s < 0 or redis_timeout_s <= 0:
            raise ValueError("refresh_interval_s and redis_retry_s must be >= 0, redis_timeout_s > 0")
        config: RedisConfig | None = None if redis_url is None else RedisConfig(redis_url)
        if (redis_client is None and redis_url is None) or database_url is None or new_listing_window_h is None:
            settings = get_settings()
            if config is None:
                config = settings.redis_config()
                redis_url = config.url
            database_url = database_url or settings.database_url
            if new_listing_window_h is None:
                new_listing_window_h = settings.new_listing_window_h
        self.database_url: str = database_url
        self.redis_url = redis_url
        self.refresh_interval_s = refresh_interval_s
        self.redis_retry_s = redis_retry_s
        self._window_ms = int(new_listing_window_h * HOUR_MS)
        self._own_client = redis_client is None
        if redis_client is None:
            assert config is not None  # resolved from the settings above
            redis_client = make_redis(config, timeout_s=redis_timeout_s)
        self._client = redis_client
        self._cache = hot.HotCache(redis_client)
        self._redis_up = True  # until a call fails
        self._next_check = 0.0  # monotonic time of the next version check
        self._refreshing = threading.Lock()
        self._engine: Engine | None = None
        self._engine_lock = threading.Lock()
        self._hits = dict.fromkeys(LAYERS, 0)
        self._misses = dict.fromkeys(LAYERS, 0)
        self._hook = on_access

    # ---- public reads ------------------------------------------------------------------------------------

    def get(self, symbol: str) -> Contract | None:
        """One listed contract (a copy), market data included when served from the cache; None if not listed."""
        self._check_version()
        contract = self._cache.get(symbol)
        if contract is not None:
            self._count(SNAPSHOT, True)
            return dict(contract)
        self._count(SNAPSHOT, False)
        answered, found = self._redis_get(symbol)
        return found if answered else self._database_get(symbol)

    def _redis_get(self, symbol: str) -> tuple[bool, Contract | None]:
        """(True, the contract or None if not listed) when Redis's cache can answer; (False, None) when the
        database must: Redis unreachable, nothing published yet, or the symbol's cached text unreadable."""
        if symbol in self._cache.unreadable or not self._redis_up:
            self._count(REDIS, False)
            return False, None
        try:
            raw = self._client.hget(keys.TOKENS, symbol)
        except redis.RedisError as exc:
            self._redis_failed(exc)
            self._count(REDIS, False)
            return False, None
        found = None if raw is None else hot.decode_entry(cast("bytes", raw))
        self._count(REDIS, found is not None)
        if found is not None:
            self._next_check = 0.0  # the cache moved since the last check: reload on the next read
            return True, found
        if raw is not None:
            log.warning("the cached entry of %s cannot be read: reading the database", symbol)
            return False, None
        # Once the cache is published it holds every listed contract; before (first sync pending, or Redis
        # restarted empty), the database answers.
        return self._cache.version is not None, None

    def active(self) -> dict[str, Contract]:
        """Every listed contract by symbol (a new dict; the contracts are shared with the snapshot: read-only)."""
        if self._check_version() and self._cache.version is not None:
            self._count(SNAPSHOT, True)
            contracts = dict(self._cache.all())
            if self._cache.unreadable:  # entries whose text cannot be read: the database's rows instead
                contracts.update(self._database_rows(sorted(self._cache.unreadable)))
            return contracts
        self._count(SNAPSHOT, False)
        self._count(REDIS, False)
        rows = self._database(lambda engine: list_tokens(engine, ACTIVE, now_ms=now_ms(), window_ms=self._window_ms))
        return {row["symbol"]: contract_from_row(row) for row in rows}

    def new_listings(self) -> list[dict[str, Any]]:
        """Tokens listed within the new-listing window, newest first, from the database.

        Each item is the tokens row (as ``tokenwatch tokens --status new --json`` prints it) with ``contract``:
        the live contract with market data from the snapshot, or the row in KuCoin's shape when the cache
        cannot be used.
        """
        rows = self._database(lambda engine: list_tokens(engine, "new", now_ms=now_ms(), window_ms=self._window_ms))
        live = self._cache.all() if self._check_version() else {}
        for row in rows:
            cached = live.get(row["symbol"])
            row["contract"] = dict(cached) if cached is not None else contract_from_row(row)
        return rows

    def recent_events(self, limit: int = 50, symbol: str | None = None) -> list[dict[str, Any]]:
        """History events (listed, delisted, relisted, ...), newest first, for one symbol or all."""
        if not 1 <= limit <= MAX_EVENTS:
            raise ValueError(f"limit must be between 1 and {MAX_EVENTS}")
        return self._database(lambda engine: history(engine, symbol, limit))

    def stats(self) -> dict[str, dict[str, int]]:
        """Hits and misses per layer since this Registry was made (approximate under many threads)."""
        return {layer: {"hits": self._hits[layer], "misses": self._misses[layer]} for layer in LAYERS}

    @property
    def version(self) -> int | None:
        """The cache revision the snapshot shows (None when empty or while Redis is unreachable)."""
        return self._cache.version

    def close(self) -> None:
        """Release the database connections and the Redis client this Registry made."""
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None
        if self._own_client:
            self._client.close()

    def __enter__(self) -> Registry:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    # ---- layers --------------------------------------------------------------------------------------------

    def _check_version(self) -> bool:
        """Reload the snapshot if its check is due and the version moved; True while Redis is usable."""
        now = time.monotonic()
        if now < self._next_check or not self._refreshing.acquire(blocking=False):
            return self._redis_up  # not due, or another thread is checking: serve the snapshot as it is
        try:
            self._cache.refresh()
        except redis.RedisError as exc:
            self._redis_failed(exc)
            return False
        finally:
            self._refreshing.release()
        if not self._redis_up:
            log.info("Redis at %s answers again: reading the hot cache", redact_url(self.redis_url))
        self._redis_up = True
        self._next_check = now + self.refresh_interval_s
        return True

    def _redis_failed(self, exc: redis.RedisError) -> None:
        if self._redis_up:
            log.warning("Redis at %s unreachable (%s): reading the database for %.1f s",
                        redact_url(self.redis_url), type(exc).__name__, self.redis_retry_s)
        self._redis_up = False
        self._cache = hot.HotCache(self._client)  # the snapshot cannot be checked: stop serving it
        self._next_check = time.monotonic() + self.redis_retry_s

    def _database_rows(self, symbols: list[str]) -> dict[str, Contract]:
        query = select(tokens).where(tokens.c.symbol.in_(symbols), tokens.c.status == ACTIVE)

        def rows(engine: Engine) -> dict[str, Contract]:
            with engine.connect() as conn:
                return {row.symbol: contract_from_row(row._mapping) for row in conn.execute(query)}

        try:
            return self._database(rows, count=False)
        except RegistryUnavailableError as exc:
            log.warning("%s: %d contracts whose cached text cannot be read are left out", exc, len(symbols))
            return {}

    def _database_get(self, symbol: str) -> Contract | None:
        query = select(tokens).where(tokens.c.symbol == symbol, tokens.c.status == ACTIVE)

        def one(engine: Engine) -> Contract | None:
            with engine.connect() as conn:
                row = conn.execute(query).first()
            return None if row is None else contract_from_row(row._mapping)

        contract = self._database(one, count=False)
        self._count(DATABASE, contract is not None)
        return contract

    def _database(self, read: Callable[[Engine], T], *, count: bool = True) -> T:
        """Run read against the read-only engine; a database error is a miss and RegistryUnavailableError."""
        try:
            result = read(self._get_engine())
        except SQLAlchemyError as exc:
            self._count(DATABASE, False)
            detail = str(getattr(exc, "orig", None) or exc).splitlines()[0]
            raise RegistryUnavailableError(
                f"registry database {redact_url(self.database_url)} unreadable: {detail}") from exc
        if count:
            self._count(DATABASE, True)
        return result

    def _get_engine(self) -> Engine:
        engine = self._engine
        if engine is None:
            with self._engine_lock:
                if self._engine is None:
                    self._engine = _read_only_engine(self.database_url)
                engine = self._engine
        return engine

    def _count(self, layer: Layer, hit: bool) -> None:
        if hit:
            self._hits[layer] += 1
        else:
            self._misses[layer] += 1
        hook = self._hook
        if hook is not None:
            try:
                hook(layer, hit)
            except Exception as exc:  # a hook must never break a read: report once, then stop calling it
                self._hook = None
                log.warning("the on_access hook failed (%s); not called again", exc)

