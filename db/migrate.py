"""The registry's schema, brought to this release's: create a new registry, recognise one that tokenwatch 0.1.0
wrote (it kept no version), upgrade in place with the Alembic migrations in db/migrations. Downgrades are not
supported: a newer release's registry is refused, and going back means restoring a backup."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import resources

from sqlalchemy import Connection, Engine, inspect, text

from tokenwatch.errors import RegistryMissingError, SchemaError

# Alembic logs every plugin it sets up at INFO when it is imported: noise in a worker's log, not an event.
logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)

from alembic import command  # noqa: E402
from alembic.config import Config  # noqa: E402
from alembic.runtime.migration import MigrationContext  # noqa: E402
from alembic.script import ScriptDirectory  # noqa: E402

log = logging.getLogger(__name__)

# The revision a registry that 0.1.0 wrote is at: it has the tables and no alembic_version.
RELEASE_0_1_0 = "0001"
# PostgreSQL: one upgrade at a time per database, whoever runs it (the key is arbitrary, fixed).
_PG_UPGRADE_LOCK = 0x746F6B656E77  # "tokenw"


@contextmanager
def _quiet_alembic() -> Iterator[None]:
    """Alembic's own INFO lines (plugins, one per migration) are not the operator's: the one line is ours."""
    quiet = logging.getLogger("alembic")
    level = quiet.level
    quiet.setLevel(logging.WARNING)
    try:
        yield
    finally:
        quiet.setLevel(level)


def _config(connection: Connection | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(resources.files("tokenwatch.db") / "migrations"))
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def head() -> str:
    """The schema revision this release writes."""
    current = ScriptDirectory.from_config(_config()).get_current_head()
    assert current is not None, "no migrations ship with this release"
    return current


def revisions() -> list[str]:
    """Every known revision, oldest first."""
    script = ScriptDirectory.from_config(_config())
    return [s.revision for s in reversed(list(script.walk_revisions()))]


@dataclass(frozen=True, slots=True)
class SchemaState:
    """Where a database stands: whether it holds a registry, and its schema revision (None: no registry)."""

    exists: bool
    revision: str | None
    head: str

    @property
    def current(self) -> bool:
        return self.revision == self.head


def schema_state(connection: Connection) -> SchemaState:
    """The registry's schema revision as stored (0001 for a registry 0.1.0 wrote, which stored none)."""
    tables = set(inspect(connection).get_table_names())
    if "registry_state" not in tables:
        return SchemaState(False, None, head())
    revision = MigrationContext.configure(connection).get_current_revision()
    return SchemaState(True, revision or RELEASE_0_1_0, head())


def describe(state: SchemaState) -> str:
    """A schema revision as an operator reads it."""
    return f"{state.revision} (written by tokenwatch 0.1.0)" if state.revision == RELEASE_0_1_0 else str(
        state.revision)


def check(engine: Engine, *, create: bool) -> None:
    """Make sure engine's database holds a registry of this release's schema.

    With create, a database without a registry gets one (only the writer creates it); otherwise its absence is
    RegistryMissingError. A schema behind this release's, or unknown to it, is SchemaError naming what to run.
    """
    with engine.connect() as connection, _quiet_alembic():
        state = schema_state(connection)
    if not state.exists:
        if not create:
            raise RegistryMissingError(
                f"no registry at {engine.url.render_as_string(hide_password=True)}: "
                "run `tokenwatch run` or `tokenwatch sync` first")
        upgrade(engine)
        return
    if state.current:
        return
    if state.revision in revisions():
        raise SchemaError(
            f"the registry's schema is at {describe(state)}, this release needs {state.head}: "
            "run `tokenwatch db upgrade`")
    raise SchemaError(
        f"the registry's schema is at {state.revision}, which this release does not know: it was written by a "
        "newer tokenwatch (downgrades are not supported)")


def upgrade(engine: Engine, *, only_if_missing: bool = False) -> tuple[str | None, str]:
    """Create or upgrade the registry to this release's schema, in one transaction under the database's write
    lock; returns (the revision before, the revision after). Upgrading twice is a no-op. only_if_missing leaves
    an existing registry as it is, whatever its schema."""
    with engine.begin() as connection, _quiet_alembic():  # a writer engine: BEGIN IMMEDIATE on SQLite
        if connection.dialect.name == "postgresql":
            connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_UPGRADE_LOCK})
        before = schema_state(connection)
        if only_if_missing and before.exists:
            return before.revision, before.revision or head()
        if before.revision is None or not before.current:
            config = _config(connection)
            if before.exists and MigrationContext.configure(connection).get_current_revision() is None:
                command.stamp(config, RELEASE_0_1_0)  # 0.1.0 wrote these tables and no version
            if before.exists and before.revision not in revisions():
                raise SchemaError(f"the registry's schema is at {before.revision}, which this release does not "
                                  "know: it was written by a newer tokenwatch (downgrades are not supported)")
            command.upgrade(config, "head")
    after = head()
    if before.revision != after:
        log.info("registry schema %s -> %s", "created" if not before.exists else describe(before), after)
    return before.revision, after
