"""A cache or an event stream left by another registry, or by a newer revision of this one, is told apart and
replaced or re-based: never trusted. Redis keeps its data across the database's replacement, as the embedded
Redis (data/redis.rdb) and any real Redis do."""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Stack
from tokenwatch.cache import keys
from tokenwatch.simulator import Simulator

pytestmark = pytest.mark.integration


@pytest.fixture
def sim() -> Iterator[Simulator]:
    with Simulator(port=0, contracts=40, seed=23) as simulator:
        yield simulator


def stream(stack: Stack) -> list[dict[str, str]]:
    return [{k.decode(): v.decode() for k, v in fields.items()} for _id, fields in stack.redis.xrange(keys.EVENTS)]


def history(stack: Stack) -> list[tuple[Any, ...]]:
    return stack.query("SELECT id, symbol, event_type, sync_id FROM token_history ORDER BY id")


def cache(stack: Stack) -> tuple[int, set[str]]:
    return int(stack.redis.get(keys.VERSION) or -1), {k.decode() for k in stack.redis.hkeys(keys.TOKENS)}


def state(stack: Stack) -> tuple[int, set[str]]:
    revision = int(stack.query("SELECT revision FROM registry_state")[0][0])
    return revision, {s for (s,) in stack.query("SELECT symbol FROM tokens WHERE status = 'active'")}


def said(stack: Stack, result: subprocess.CompletedProcess[str], path: str) -> str:
    """What the sync logged: the CLI's stderr inline, the worker's whole log through the worker."""
    return result.stderr if path == "--inline" else (stack.workdir / "worker.log").read_text()


def remove(db: Path) -> None:
    for suffix in ("", "-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)


def backup(db: Path, to: Path) -> None:
    with closing(sqlite3.connect(db)) as source, closing(sqlite3.connect(to)) as target:
        source.backup(target)


@pytest.mark.parametrize("path", ["--inline", "worker"])
def test_a_recreated_database_gets_its_events_published_and_its_cache_shown(stack: Stack, sim: Simulator,
                                                                             path: str) -> None:
    stack.env["TOKENWATCH_KUCOIN_URL"] = sim.url
    args = ("--inline",) if path == "--inline" else ()
    if path == "worker":  # a worker that runs on while its file is replaced
        stack.start_worker()
    assert stack.sync(*args)["status"] == "baseline"
    first = sim.list_new(2)
    assert stack.sync(*args)["counts"]["listed"] == 2
    assert [e["symbol"] for e in stream(stack)] == first

    remove(stack.db_path)  # deleted (or recreated): Redis keeps the old registry's cache and stream
    again = stack.tokenwatch("sync", "--json", *args)
    assert json.loads(again.stdout)["status"] == "baseline"
    assert cache(stack) == state(stack)  # the new registry shows at once, not frozen behind the old version
    assert said(stack, again, path).count("the hot cache belonged to another registry") == 1
    assert said(stack, again, path).count("the event stream belonged to another registry") == 1
    later = sim.list_new(1)
    quiet = stack.tokenwatch("sync", "--json", *args)
    outcome = json.loads(quiet.stdout)
    # Said once: the cache and the stream are this registry's now.
    assert said(stack, quiet, path).count("belonged to another registry") == (0 if path == "--inline" else 2)
    assert outcome["counts"]["listed"] == 1
    assert [e["symbol"] for e in stream(stack)] == [*first, *later]  # the new registry's event went out
    assert stream(stack)[-1]["sync_id"] == outcome["sync_id"]
    assert cache(stack) == state(stack)


@pytest.mark.parametrize("path", ["--inline", "worker"])
def test_a_restored_backup_rebases_the_stream_and_replaces_a_cache_from_its_lost_future(
    stack: Stack, sim: Simulator, path: str, tmp_path: Path,
) -> None:
    stack.env["TOKENWATCH_KUCOIN_URL"] = sim.url
    args = ("--inline",) if path == "--inline" else ()
    if path == "worker":  # a worker that runs on while its file is replaced
        stack.start_worker()
    assert stack.sync(*args)["status"] == "baseline"
    early = sim.list_new(1)
    assert stack.sync(*args)["counts"]["listed"] == 1
    saved = tmp_path / "backup.db"
    backup(stack.db_path, saved)  # revision 2, one event
    lost: list[str] = []
    for _ in range(2):  # two more syncs, each with a listing: the future the restore will lose
        lost += sim.list_new(1)
        assert stack.sync(*args)["counts"]["listed"] == 1
    assert len(history(stack)) == 3 and cache(stack)[0] == 4

    remove(stack.db_path)
    shutil.copyfile(saved, stack.db_path)  # the backup restored: revision 2; Redis still shows the lost future
    restored = stack.tokenwatch("sync", "--json", *args)
    outcome = json.loads(restored.stdout)
    assert (outcome["status"], outcome["counts"]["listed"]) == ("ok", 2)  # the restored registry sees them anew
    assert cache(stack) == state(stack)  # not frozen on the lost revisions
    assert "newer revision" in said(stack, restored, path) and "re-based" in said(stack, restored, path)
    events = stream(stack)
    assert [e["symbol"] for e in events] == [*early, *lost, *lost]  # the lost timeline's, then the restored one's
    ids = history(stack)
    assert [(int(e["history_id"]), e["sync_id"]) for e in events[-2:]] == [(row[0], row[3]) for row in ids[1:]]


def test_redis_back_from_an_older_save_gets_the_events_it_lost(stack: Stack, sim: Simulator) -> None:
    stack.env["TOKENWATCH_KUCOIN_URL"] = sim.url
    assert stack.sync("--inline")["status"] == "baseline"
    kept = sim.list_new(1)
    assert stack.sync("--inline")["counts"]["listed"] == 1
    saved = {key: stack.redis.dump(key) for key in (keys.EVENTS, keys.EVENTS_CURSOR)}  # an RDB save
    forgotten = sim.list_new(1)
    assert stack.sync("--inline")["counts"]["listed"] == 1
    for key, value in saved.items():  # Redis restarts from that save: the last event is gone from it
        stack.redis.restore(key, 0, value, replace=True)
    assert [e["symbol"] for e in stream(stack)] == kept

    later = sim.list_new(1)
    assert stack.sync("--inline")["counts"]["listed"] == 1
    assert [e["symbol"] for e in stream(stack)] == [*kept, *forgotten, *later]  # nothing lost, nothing twice
    assert [int(e["history_id"]) for e in stream(stack)] == [row[0] for row in history(stack)]
