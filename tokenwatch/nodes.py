"""The nodes of one deployment: each `tokenwatch run` announces itself in Redis, and refuses to join a deployment
it cannot be part of.

Several nodes may share one Redis only when they share one registry that several hosts can write: PostgreSQL. A
node with an SQLite registry must be alone on its Redis (its file is on its own disk: a second node would be a
second registry behind one cache and one event stream), and nodes of two different registries must never share a
Redis. The announcements live in the hash ``tokenwatch:nodes`` (field: node name), renewed every few seconds;
one not renewed for NODE_TTL_S is a node that is gone.
"""

from __future__ import annotations

import json
import os
import socket
from dataclasses import asdict, dataclass
from pathlib import Path

import redis

from tokenwatch.cache import keys
from tokenwatch.clock import now_ms
from tokenwatch.errors import RunRefusedError

NODE_TTL_S = 15.0
RENEW_S = 5.0


@dataclass(frozen=True)
class Node:
    """What a node says of itself."""

    name: str
    host: str
    pid: int
    registry_id: str
    backend: str  # the database dialect: sqlite or postgresql
    seen_ms: int = 0

    @classmethod
    def this(cls, name: str, registry_id: str, backend: str) -> Node:
        """This process, as a node."""
        return cls(name, socket.gethostname(), os.getpid(), registry_id, backend)


def live_nodes(client: redis.Redis | redis.client.Pipeline, now: int | None = None) -> list[Node]:
    """Every node announced within NODE_TTL_S."""
    now = now_ms() if now is None else now
    nodes = []
    raw: dict[bytes, bytes] = client.hgetall(keys.NODES)  # type: ignore[assignment]
    for value in raw.values():
        try:
            node = Node(**json.loads(value))
        except (ValueError, TypeError):
            continue  # an entry this release cannot read: not a node it can reason about
        if now - node.seen_ms <= NODE_TTL_S * 1000:
            nodes.append(node)
    return nodes


def check_join(client: redis.Redis | redis.client.Pipeline, me: Node) -> None:
    """Raise RunRefusedError when this node cannot join the nodes already on this Redis."""
    for other in live_nodes(client):
        if other.name == me.name:
            if other.host == me.host and other.pid != me.pid and not _alive(other.pid):
                continue  # this node's own entry from before a restart
            raise RunRefusedError(
                f"a live node named {other.name!r} (host {other.host}, pid {other.pid}) already uses this Redis: "
                "give this one another TOKENWATCH_NODE_NAME"
            )
        if me.registry_id and other.registry_id != me.registry_id:  # unknown before the registry exists
            raise RunRefusedError(
                f"this Redis already serves another registry (node {other.name!r} on {other.host}): nodes share "
                "one Redis only with one registry; point TOKENWATCH_REDIS_URL or TOKENWATCH_DATABASE_URL elsewhere"
            )
        if "sqlite" in (me.backend, other.backend):
            raise RunRefusedError(
                f"node {other.name!r} on {other.host} already serves this registry, and an SQLite registry has one "
                "node: stop that node, or move the registry to PostgreSQL (TOKENWATCH_DATABASE_URL="
                "postgresql+psycopg://...) to run several"
            )


def join(client: redis.Redis, me: Node) -> None:
    """Check and announce in one transaction: two nodes starting at the same moment cannot both get in."""
    def attempt(pipe: redis.client.Pipeline) -> None:
        check_join(pipe, me)  # the watched reads run at once, before MULTI
        pipe.multi()
        pipe.hset(keys.NODES, me.name, _entry(me))

    client.transaction(attempt, keys.NODES)


def announce(client: redis.Redis, me: Node) -> None:
    """Say (again) that this node is alive."""
    client.hset(keys.NODES, me.name, _entry(me))


def leave(client: redis.Redis, me: Node) -> None:
    """Take this node's announcement back (a node that dies leaves it to expire)."""
    client.hdel(keys.NODES, me.name)


def _entry(me: Node) -> str:
    return json.dumps(asdict(me) | {"seen_ms": now_ms()})


def _alive(pid: int) -> bool:
    """Whether pid runs on this host; a zombie (killed, not yet reaped) does not."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    except OSError:  # no /proc: ask the kernel
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")
