"""Redis connections: one client per process and URL, made lazily after fork."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import redis
from typing_extensions import Buffer

SOCKET_TIMEOUT_S = 5.0


def to_redis_py_url(url: str) -> str:
    """redis-py spells a unix socket unix:///path; kombu spells it redis+socket:///path."""
    if url.startswith("redis+socket://"):
        return "unix://" + url[len("redis+socket://"):]
    return url


def to_kombu_url(url: str) -> str:
    """The broker spelling of a Redis URL."""
    if url.startswith("unix://"):
        return "redis+socket://" + url[len("unix://"):]
    return url


def make_redis(url: str) -> redis.Redis:
    """A client for url (bytes responses, timeouts always, health checks on); one per process
    (tokenwatch.process keeps it)."""
    pool = redis.ConnectionPool.from_url(
        to_redis_py_url(url), socket_timeout=SOCKET_TIMEOUT_S, socket_connect_timeout=SOCKET_TIMEOUT_S,
        health_check_interval=30, retry_on_timeout=False,
    )
    return redis.Redis(connection_pool=pool)


def pack_hset(key: str, pairs: Sequence[tuple[str, Buffer]]) -> bytes:
    """One HSET of pairs as RESP, in one join: the cache staging's hot loop, without the generic packer's
    per-argument checks and the copy of each value to bytes."""
    name = key.encode()
    parts: list[Buffer] = [b"*%d\r\n$4\r\nHSET\r\n$%d\r\n%s\r\n" % (2 + 2 * len(pairs), len(name), name)]
    for field_name, value in pairs:
        text = field_name.encode()
        size = value.nbytes if isinstance(value, memoryview) else len(memoryview(value))
        parts += (b"$%d\r\n%s\r\n$%d\r\n" % (len(text), text, size), value, b"\r\n")
    return b"".join(parts)


def stream(client: redis.Redis, commands: Callable[[], Iterable[Sequence[Any] | bytes]]) -> list[Any]:
    """Send commands on one connection without waiting for replies, then read them all; returns the raw replies.

    A pipeline packs every command before it sends the first; here each is packed while Redis runs the one
    before it, and only one is held in this process at a time. This is the one shortcut past redis-py's
    pipeline that tokenwatch keeps: without it the steady 5,000-contract write misses its target against the
    source system (benchmarks/README.md). It uses only the public methods of redis-py's ConnectionPool and
    Connection, from 5.3 (get_connection without arguments) to 8.x, and the tests run at both ends.
    The first error reply is raised once every reply is read. On a lost connection redis-py's retry policy
    sends the whole stream again, so commands is a factory and the stream must be safe to repeat. A command
    given as bytes is sent as it is (already packed, as pack_hset does).
    """
    pool = client.connection_pool
    conn: Any = pool.get_connection()  # redis-py leaves Connection's methods untyped

    def attempt() -> list[Any]:
        sent = 0
        for args in commands():
            packed = [args] if isinstance(args, bytes) else conn.pack_command(*args)
            conn.send_packed_command(packed, check_health=not sent)
            sent += 1
        replies: list[Any] = []
        error: redis.ResponseError | None = None
        for _ in range(sent):
            try:
                replies.append(conn.read_response())
            except redis.ResponseError as exc:
                error = error or exc
                replies.append(exc)
        if error is not None:
            raise error
        return replies

    try:
        replies: list[Any] = conn.retry.call_with_retry(attempt, lambda _error: conn.disconnect())
        return replies
    except redis.ResponseError:
        raise  # every reply was read: the connection is clean
    except BaseException:
        conn.disconnect()  # replies may be left unread: the next user must not read them as its own
        raise
    finally:
        pool.release(conn)
