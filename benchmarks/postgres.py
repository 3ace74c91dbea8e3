"""PostgreSQL beside SQLite in the benchmark (``--database URL``): scratch databases, and the comparison."""

from __future__ import annotations

import secrets
from typing import Any

from sqlalchemy import create_engine, text
from sqlalchemy.engine.url import make_url

from benchmarks import report
from benchmarks.scenarios import Measurement


class Server:
    """The server of the URL given: scratch databases named <its database>_<what>_<random>, made and dropped
    through a connection to the URL's own database."""

    def __init__(self, url: str) -> None:
        self.url = make_url(url)
        self.engine = create_engine(self.url, isolation_level="AUTOCOMMIT")  # CREATE DATABASE: no transaction

    def create(self, what: str, template: str | None = None) -> str:
        """A new database (a copy of template's when given); its URL."""
        name = f"{self.url.database}_{what}_{secrets.token_hex(4)}"
        copy = f" TEMPLATE {make_url(template).database}" if template else ""
        with self.engine.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"{copy}'))
        return self.url.set(database=name).render_as_string(hide_password=False)

    def drop(self, url: str) -> None:
        """Drop a database create() made (WITH FORCE: a child's pooled connection may linger)."""
        with self.engine.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{make_url(url).database}" WITH (FORCE)'))


def summary(postgresql: list[Measurement], sqlite: list[Measurement]) -> dict[str, Any]:
    """The steady runs on PostgreSQL beside SQLite's: per phase median [min-max], and the ratio of the totals."""
    phases = ("db_load", "process", "batch_write", "cache", "total")
    pg = {p: report.stat(m.phases[p] for m in postgresql) for p in phases}
    lite = {p: report.stat(m.phases[p] for m in sqlite) for p in phases}
    pg_total, lite_total = pg["total"], lite["total"]
    ratio = pg_total["median"] / lite_total["median"] if pg_total and lite_total else None
    return {"steady_phases": pg, "sqlite_steady_phases": lite, "steady_total_ratio": ratio}
