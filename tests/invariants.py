"""Invariants of the registry that must hold after every sync, whatever fault it met.

``check_invariants(db_path, redis_client)`` reads the SQLite file (or the PostgreSQL database a
``postgresql+psycopg://`` URL names) and the hot cache and raises AssertionError
naming every broken invariant:

1. The hot cache of this registry (``tokenwatch:tokens:origin`` names it) holds active tokens only, and all of
   them when it shows the registry's revision; its version is never ahead of the registry revision.
2. No symbol has two open listings: no two ``listed``/``relisted`` events without a ``delisted`` between them
   (history read per symbol in insertion order); a symbol's status agrees with its last lifecycle event.
3. History has no duplicate (symbol, event_type, sync_id), and every event belongs to an applied sync.
4. ``sync_runs`` tells every sync's outcome: each status is one of ok/baseline/suspect/skipped/failed, failed
   rows carry a one-line error, and the applied rows (those with a revision) number exactly
   ``registry_state.revision``, with revisions 1..revision each used once.
5. The event stream equals the history: every history event is in ``tokenwatch:events`` exactly once, in
   history order, and every entry the stream holds for this registry is one of its history events.
"""

from __future__ import annotations

import sqlite3
from collections import defaultdict
from pathlib import Path

import psycopg
import redis

from tests import databases

TOKENS_KEY = "tokenwatch:tokens"
VERSION_KEY = "tokenwatch:tokens:version"
ORIGIN_KEY = "tokenwatch:tokens:origin"
EVENTS_KEY = "tokenwatch:events"
STATUSES = frozenset({"ok", "baseline", "suspect", "skipped", "failed"})
OPENING = frozenset({"listed", "relisted"})
CLOSING = "delisted"
SHOWN = 5  # offending items named per broken invariant


_QUERIES = {
    "state": "SELECT revision, registry_id FROM registry_state",
    "active": "SELECT symbol FROM tokens WHERE status = 'active'",
    "status": "SELECT symbol, status FROM tokens",
    "events": "SELECT id, symbol, event_type, sync_id FROM token_history ORDER BY id",
    "runs": "SELECT sync_id, status, error, revision FROM sync_runs",
}


def _read_db(db_path: Path) -> dict[str, list[tuple[object, ...]]]:
    """Everything the checks need, read in one transaction so a concurrent commit cannot split the view."""
    con = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=10, isolation_level=None)
    try:
        con.execute("BEGIN")
        tables = {row[0] for row in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if not {"tokens", "token_history", "sync_runs", "registry_state"} <= tables:
            return {}
        data = {name: con.execute(sql).fetchall() for name, sql in _QUERIES.items()}
        con.execute("COMMIT")
        return data
    finally:
        con.close()


def _read_postgres(url: str) -> dict[str, list[tuple[object, ...]]]:
    """As _read_db, on PostgreSQL: one REPEATABLE READ transaction is one snapshot."""
    if not databases.registry_exists(url):
        return {}
    with databases.connect(url) as con:
        con.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        return {name: [tuple(row) for row in con.execute(sql)] for name, sql in _QUERIES.items()}


def _read_cache(client: redis.Redis) -> tuple[int | None, str | None, set[str]]:
    """The cache version, its origin's registry and the hash's fields, read atomically (publish swaps all three
    in one script)."""
    pipe = client.pipeline(transaction=True)
    pipe.get(VERSION_KEY)
    pipe.get(ORIGIN_KEY)
    pipe.hkeys(TOKENS_KEY)
    raw_version, origin, fields = pipe.execute()
    version = None if raw_version is None else int(raw_version)
    registry = None if origin is None else origin.decode().split(" ", 1)[0]
    return version, registry, {f.decode() if isinstance(f, bytes) else str(f) for f in fields}


def _read_stream(client: redis.Redis) -> list[dict[str, str]]:
    return [{k.decode(): v.decode() for k, v in fields.items()} for _id, fields in client.xrange(EVENTS_KEY)]


def _show(items: list[object] | set[object]) -> str:
    listed = sorted(items, key=repr) if isinstance(items, set) else list(items)
    more = f" (and {len(listed) - SHOWN} more)" if len(listed) > SHOWN else ""
    return ", ".join(repr(i) for i in listed[:SHOWN]) + more


def check_invariants(db_path: Path | str, redis_client: redis.Redis) -> None:
    """Raise AssertionError listing every broken invariant of the registry at db_path (a file, or a PostgreSQL
    URL) and its hot cache."""
    if isinstance(db_path, str) and db_path.startswith("postgresql"):
        data = _read_postgres(db_path)
    else:
        db_path = Path(db_path.removeprefix("sqlite:///") if isinstance(db_path, str) else db_path)
        if not db_path.exists():
            return  # nothing was ever written: nothing to check
        data = _read_db(db_path)
    if not data:
        return  # the schema was never created
    problems: list[str] = []

    # -- registry_state and sync_runs -------------------------------------------------------------------
    if len(data["state"]) != 1:
        problems.append(f"registry_state has {len(data['state'])} rows, expected exactly 1")
        revision, registry_id = 0, None
    else:
        revision, registry_id = int(data["state"][0][0]), data["state"][0][1]
    bad_status = [(sid, st) for sid, st, _, _ in data["runs"] if st not in STATUSES]
    if bad_status:
        problems.append(f"sync_runs rows with an unknown status: {_show(bad_status)}")
    bad_error = [
        (sid, err) for sid, st, err, _ in data["runs"]
        if st == "failed" and (not isinstance(err, str) or not err.strip() or "\n" in err or "\r" in err)
    ]
    if bad_error:
        problems.append(f"failed sync_runs rows without a one-line error: {_show(bad_error)}")
    applied = sorted(int(rev) for _, _, _, rev in data["runs"] if rev is not None)
    if len(applied) != revision:
        problems.append(f"{len(applied)} applied sync_runs rows but registry_state.revision is {revision}")
    elif applied != list(range(1, revision + 1)):
        problems.append(f"applied sync_runs revisions are {_show(applied)}, expected 1..{revision} once each")
    applied_ids = {sid for sid, _, _, rev in data["runs"] if rev is not None}

    # -- history ------------------------------------------------------------------------------------------
    seen: dict[tuple[str, str, str], int] = defaultdict(int)
    per_symbol: dict[str, list[tuple[int, str]]] = defaultdict(list)
    orphans: set[object] = set()
    for event_id, symbol, event_type, sync_id in data["events"]:
        seen[(str(symbol), str(event_type), str(sync_id))] += 1
        per_symbol[str(symbol)].append((int(event_id), str(event_type)))
        if sync_id not in applied_ids:
            orphans.add(sync_id)
    duplicates = [key for key, n in seen.items() if n > 1]
    if duplicates:
        problems.append(f"duplicate history events (symbol, event_type, sync_id): {_show(duplicates)}")
    if orphans:
        problems.append(f"history events of syncs with no applied sync_runs row: {_show(orphans)}")
    status_of = {str(s): str(st) for s, st in data["status"]}
    double_open: list[object] = []
    disagree: list[object] = []
    for symbol, events in per_symbol.items():
        is_open: bool | None = None  # unknown before the first lifecycle event (baseline tokens have none)
        last: str | None = None
        for event_id, event_type in events:
            if event_type in OPENING:
                if is_open:
                    double_open.append((symbol, event_id, event_type))
                is_open, last = True, event_type
            elif event_type == CLOSING:
                is_open, last = False, event_type
        if last is not None:
            expected = "delisted" if last == CLOSING else "active"
            if status_of.get(symbol) != expected:
                disagree.append((symbol, last, status_of.get(symbol)))
    if double_open:
        problems.append(f"symbols with two open listings (symbol, event id, event): {_show(double_open)}")
    if disagree:
        problems.append(
            f"tokens whose status disagrees with their last lifecycle event (symbol, event, status): "
            f"{_show(disagree)}")

    # -- hot cache ------------------------------------------------------------------------------------------
    version, cache_registry, cached = _read_cache(redis_client)
    active = {str(row[0]) for row in data["active"]}
    if cache_registry == registry_id and version is not None:
        if version > revision:
            problems.append(f"cache version {version} is ahead of the registry revision {revision}")
        stray = cached - active
        if stray:
            problems.append(f"{len(stray)} symbols in {TOKENS_KEY} are not active tokens: {_show(set(stray))}")
        absent = active - cached
        if version == revision and absent:
            problems.append(
                f"{len(absent)} active tokens missing from {TOKENS_KEY} at version {version}: {_show(set(absent))}")

    # -- event stream -------------------------------------------------------------------------------------------
    entries = [(e.get("registry"), e.get("history_id"), e.get("sync_id"), e.get("symbol"), e.get("event_type"))
               for e in _read_stream(redis_client)]
    ours = [(int(h), s, sym, kind) for reg, h, s, sym, kind in entries if reg == registry_id and h is not None]
    expected = [(int(i), str(s), str(sym), str(kind)) for i, sym, kind, s in data["events"]]
    if ours != expected:
        missing = set(expected) - set(ours)
        extra = [e for e in ours if e not in set(expected)]
        doubled = {e for e in ours if ours.count(e) > 1}
        problems.append(f"the event stream is not the history: {len(missing)} events missing {_show(missing)}, "
                        f"{len(extra)} not in the history {_show(extra)}, {len(doubled)} twice {_show(doubled)}")

    if problems:
        raise AssertionError(f"registry invariants broken in {db_path}:\n- " + "\n- ".join(problems))
