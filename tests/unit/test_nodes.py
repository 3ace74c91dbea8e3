"""Who may join a deployment (tokenwatch.nodes): the rules, on fakeredis."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator

import fakeredis
import pytest
import redis

from tokenwatch.cache import keys
from tokenwatch.clock import now_ms
from tokenwatch.errors import RunRefusedError
from tokenwatch.nodes import NODE_TTL_S, Node, join, leave, live_nodes


@pytest.fixture
def client() -> Iterator[redis.Redis]:
    yield fakeredis.FakeRedis()


def node(name: str, registry: str = "reg-1", backend: str = "postgresql", host: str = "host-a",
         pid: int = 1) -> Node:
    return Node(name, host, pid, registry, backend)


def test_postgresql_nodes_of_one_registry_join_one_another(client: redis.Redis) -> None:
    join(client, node("a"))
    join(client, node("b", host="host-b"))
    assert sorted(n.name for n in live_nodes(client)) == ["a", "b"]


@pytest.mark.parametrize(("first", "second"), [("sqlite", "sqlite"), ("sqlite", "postgresql"),
                                               ("postgresql", "sqlite")])
def test_an_sqlite_registry_has_one_node(client: redis.Redis, first: str, second: str) -> None:
    join(client, node("a", backend=first))
    with pytest.raises(RunRefusedError, match="an SQLite registry has one node"):
        join(client, node("b", backend=second, host="host-b"))
    assert [n.name for n in live_nodes(client)] == ["a"]


def test_two_registries_never_share_a_redis(client: redis.Redis) -> None:
    join(client, node("a", registry="reg-1"))
    with pytest.raises(RunRefusedError, match="this Redis already serves another registry"):
        join(client, node("b", registry="reg-2", host="host-b"))


def test_a_registry_not_made_yet_is_checked_by_backend_only(client: redis.Redis) -> None:
    join(client, node("a", registry="reg-1"))
    join(client, node("b", registry="", host="host-b"))  # the pre-check before the registry exists
    with pytest.raises(RunRefusedError, match="one node"):
        join(client, node("c", registry="", backend="sqlite", host="host-c"))


def test_a_name_taken_by_a_live_node_is_refused(client: redis.Redis) -> None:
    join(client, node("a", host="host-a"))
    with pytest.raises(RunRefusedError, match="another TOKENWATCH_NODE_NAME"):
        join(client, node("a", host="host-b"))


def test_a_nodes_own_entry_from_before_its_restart_does_not_block_it(client: redis.Redis) -> None:
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True)
    join(client, node("a", backend="sqlite", pid=int(dead.stdout)))  # that process has exited
    join(client, node("a", backend="sqlite", pid=2 ** 22 + 7))  # the same node, restarted
    assert [n.pid for n in live_nodes(client)] == [2 ** 22 + 7]


def test_a_node_not_heard_of_for_the_ttl_is_gone(client: redis.Redis) -> None:
    stale = {"name": "a", "host": "host-a", "pid": 1, "registry_id": "reg-1", "backend": "sqlite",
             "seen_ms": now_ms() - int(NODE_TTL_S * 1000) - 1}
    client.hset(keys.NODES, "a", json.dumps(stale))
    client.hset(keys.NODES, "junk", b"not json")
    assert live_nodes(client) == []
    join(client, node("b", backend="sqlite"))


def test_a_node_that_leaves_frees_its_place(client: redis.Redis) -> None:
    first = node("a", backend="sqlite")
    join(client, first)
    leave(client, first)
    join(client, node("b", backend="sqlite", host="host-b"))
