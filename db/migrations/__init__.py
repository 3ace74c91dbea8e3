"""The registry's schema history: Alembic migrations, applied by `tokenwatch db upgrade` (db/migrate.py)."""
