"""What a process keeps between syncs, in one object: its clients and engines, the registry its last commit
left, the parse memo, and the payload it handed to itself.

Everything here belongs to one process: a forked child (Celery's pool) starts with a new, empty
ProcessState (``os.register_at_fork``), keeping only the worker name its parent was given. Code that syncs
takes the state as an argument; ``current()`` is where a task or the CLI gets it, and tests swap in a fresh
one with ``use()``.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import redis
import requests
from sqlalchemy import Engine

from tokenwatch.cache.redis_client import RedisConfig, make_redis
from tokenwatch.db.engine import open_engine, sqlite_path
from tokenwatch.domain.contracts import ParseMemo
from tokenwatch.domain.registry import RegistryHead, RegistryState
from tokenwatch.fetch.kucoin import make_session

log = logging.getLogger(__name__)


@dataclass(slots=True)
class Kept:
    """A payload this process staged for its own next step, with the key it has in Redis."""

    key: str
    deadline: float  # time.monotonic() after which Redis's copy has expired too
    payload: Any


@dataclass
class ProcessState:
    """One process's state between syncs (see the module docstring)."""

    worker_name: str | None = None  # set in a Celery worker: its pool processes report their memory
    engines: dict[tuple[str, bool], Engine] = field(default_factory=dict)
    files: dict[tuple[str, bool], tuple[int, int] | None] = field(default_factory=dict)  # SQLite (device, inode)
    redis_clients: dict[RedisConfig | str, redis.Redis] = field(default_factory=dict)
    http: requests.Session | None = None
    # The registry as this process's last commit left it (or a write here found: steps.warm_up), and one built
    # here whose plan is not committed yet.
    registry: RegistryState | None = None
    expected: tuple[str, RegistryState] | None = None
    shared: RegistryHead | None = None  # the head of the last registry snapshot this process shared
    memo: ParseMemo = field(default_factory=ParseMemo)  # what parsing remembers (domain.contracts.parse_contracts)
    kept: Kept | None = None
    # What the last answer held that was not usable, so that the same is warned about once, not every sync.
    duplicated: frozenset[str] = frozenset()
    invalid_reasons: tuple[str, ...] = ()

    # ---- connections, made lazily ---------------------------------------------------------------------------

    def engine(self, database_url: str, *, writer: bool = False, create: bool | None = None) -> Engine:
        """This process's engine for the URL (a writer's transactions begin IMMEDIATE); create makes a missing
        registry (default: for a writer only; see db.engine.open_engine).

        An SQLite file that was replaced or deleted since the engine opened it (a restored backup, a recreated
        registry) is opened afresh: the old engine would go on reading and writing the file that is gone.
        """
        key = (database_url, writer)
        engine = self.engines.get(key)
        if engine is not None and self.files.get(key) != file_identity(database_url):
            log.info("the registry file was replaced or removed: opening it afresh")
            engine.dispose()
            engine = None
        if engine is None:
            engine = self.engines[key] = open_engine(database_url, writer=writer, create=create)
            self.files[key] = file_identity(database_url)
        return engine

    def redis(self, config: RedisConfig | str) -> redis.Redis:
        """This process's Redis client for the configuration (Settings.redis_config()) or a plain URL."""
        client = self.redis_clients.get(config)
        if client is None:
            client = self.redis_clients[config] = make_redis(config)
        return client

    def http_session(self) -> requests.Session:
        """This process's pooled HTTP session for the exchange."""
        if self.http is None:
            self.http = make_session()
        return self.http

    def close(self) -> None:
        """Close every connection this state opened (at shutdown and in tests)."""
        for engine in self.engines.values():
            engine.dispose()
        for client in self.redis_clients.values():
            client.close()
        if self.http is not None:
            self.http.close()
        self.engines.clear()
        self.redis_clients.clear()
        self.http = None

    # ---- the in-process registry ------------------------------------------------------------------------------

    def expect(self, sync_id: str, registry: RegistryState) -> None:
        """Hold the registry a plan built here will leave, until that plan's commit (committed) says so."""
        self.expected = (sync_id, registry)

    def committed(self, sync_id: str) -> None:
        """sync_id's plan was committed by this process: the registry it was expected to leave is now current."""
        expected, self.expected = self.expected, None
        if expected is not None and expected[0] == sync_id:
            self.registry = expected[1]

    def trusted_registry(self, head: RegistryHead) -> RegistryState | None:
        """The in-process registry, when it may stand in for reading the database; else None.

        It may only when it is what a commit made by this very process left (it is remembered after the commit,
        never before), or the snapshot another process shared for exactly the head a write here found
        (steps.warm_up), and the database is still at that commit: the same revision, written by the same sync.
        A sync id is never reused, so another writer that commits the same revision number, a restored backup,
        a recreated file or a write that failed all leave another head, and the registry is read again.
        """
        registry = self.registry
        if registry is None or head.last_sync_id is None or registry.head != head:
            return None
        return registry

    # ---- payloads handed to this process's own next step --------------------------------------------------------

    def keep(self, key: str, payload: Any, ttl_s: float) -> None:
        """Keep payload (also staged in Redis under key) for this process's next step; one at a time."""
        self.kept = Kept(key, time.monotonic() + ttl_s, payload)

    def take_kept(self, key: str) -> Any | None:
        """The payload kept under key (once), or None."""
        kept, self.kept = self.kept, None
        if kept is not None and kept.key == key and time.monotonic() < kept.deadline:
            return kept.payload
        return None


def file_identity(database_url: str) -> tuple[int, int] | None:
    """(device, inode) of an SQLite registry's file; None for another database or no file."""
    path = sqlite_path(database_url) if database_url.startswith("sqlite") else None
    if path is None:
        return None
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return stat.st_dev, stat.st_ino


_current = ProcessState()


def current() -> ProcessState:
    """This process's state."""
    return _current


@contextmanager
def use(state: ProcessState) -> Iterator[ProcessState]:
    """Make state this process's state for the block, then close it and restore the previous one (tests)."""
    global _current  # noqa: PLW0603 - the one per-process object, swapped whole
    previous, _current = _current, state
    try:
        yield state
    finally:
        _current = previous
        state.close()


def _reset_after_fork() -> None:
    global _current  # noqa: PLW0603
    parent = _current
    # The parent's pooled connections are the parent's: drop them unclosed (closing would touch its sockets
    # and database locks), and start empty.
    for engine in parent.engines.values():
        engine.dispose(close=False)
    _current = ProcessState(worker_name=parent.worker_name)


os.register_at_fork(after_in_child=_reset_after_fork)
