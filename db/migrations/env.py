"""Alembic's entry point: migrations run on the connection tokenwatch/db/migrate.py hands over, never on a URL of
their own, so they share its transaction (and, on SQLite, its write lock)."""

from __future__ import annotations

from alembic import context

from tokenwatch.db.schema import metadata

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=metadata, transaction_per_migration=False)
with context.begin_transaction():
    context.run_migrations()
