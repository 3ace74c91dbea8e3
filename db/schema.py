"""The registry schema as this release reads and writes it. Table, column and index names are part of
tokenwatch's interface. Schema changes go through a migration (db/migrations/versions), never only here."""

from __future__ import annotations

from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    Float,
    Index,
    Integer,
    MetaData,
    Table,
    Text,
    UniqueConstraint,
    false,
    text,
)
from sqlalchemy.types import TypeEngine

from tokenwatch.domain.contracts import METADATA_FIELDS, FieldKind
from tokenwatch.outcome import COUNT_KEYS, PHASES

metadata = MetaData()

_TYPES: dict[FieldKind, type[TypeEngine[Any]]] = {
    "str": Text, "int": BigInteger, "float": Float, "bool": Boolean, "ms": BigInteger, "list": Text,
}

# All times are integer milliseconds since the Unix epoch (UTC), like KuCoin's own dates.
tokens = Table(
    "tokens",
    metadata,
    Column("symbol", Text, primary_key=True),
    Column("status", Text, nullable=False),  # active | delisted
    Column("contract_status", Text, nullable=False),  # as KuCoin says: Open, Paused, ...
    Column("is_new", Boolean, nullable=False, server_default=false()),
    Column("listed_at", BigInteger),
    Column("first_seen", BigInteger, nullable=False),
    Column("last_seen", BigInteger, nullable=False),
    Column("delisted_at", BigInteger),
    Column("missing_since", BigInteger),  # absent once, check failed: the next absence confirms
    *(Column(column, _TYPES[kind]) for _, column, kind in METADATA_FIELDS),
    Index("ix_tokens_status_last_seen", "status", text("last_seen DESC")),
    Index("ix_tokens_new", text("first_seen DESC"), sqlite_where=text("is_new = 1"), postgresql_where=text("is_new")),
    Index("ix_tokens_active", "symbol", sqlite_where=text("status = 'active'"),
          postgresql_where=text("status = 'active'")),
    Index("ix_tokens_base_currency", "base_currency"),
)

token_history = Table(
    "token_history",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("symbol", Text, nullable=False),
    Column("event_type", Text, nullable=False),
    Column("event_time", BigInteger, nullable=False),
    Column("sync_id", Text, nullable=False),
    Column("details", JSON, nullable=False),
    # One event of a kind per symbol per sync: a redelivered write cannot duplicate history.
    UniqueConstraint("symbol", "event_type", "sync_id", name="uq_token_history_event"),
    Index("ix_token_history_symbol_time", "symbol", text("event_time DESC")),
    Index("ix_token_history_time", text("event_time DESC")),
)

sync_runs = Table(
    "sync_runs",
    metadata,
    Column("sync_id", Text, primary_key=True),
    Column("started_at", BigInteger, nullable=False),
    Column("finished_at", BigInteger, nullable=False),
    Column("status", Text, nullable=False),  # ok | baseline | suspect | skipped | failed
    Column("error", Text),
    Column("revision", Integer),
    *(Column(key, Integer, nullable=False, server_default=text("0")) for key in COUNT_KEYS),
    *(Column(f"{phase}_ms", Float) for phase in PHASES),
    Index("ix_sync_runs_finished", text("finished_at DESC")),
)

# One row: which registry this is, its revision and the sync (and snapshot) that made it.
registry_state = Table(
    "registry_state",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("revision", Integer, nullable=False),
    Column("last_sync_id", Text),
    Column("last_fetched_at", BigInteger),
    # token_history.id of the last event appended to the Redis stream (the outbox cursor).
    Column("last_event_id", Integer, nullable=False, server_default=text("0")),
    # Random, made with the registry: the cache and the stream carry it, so another registry's are told apart.
    Column("registry_id", Text),
    # A mass change held back as suspect, as JSON: applied when the next sync sees the same (domain/diff.py).
    Column("pending_change", Text),
)
