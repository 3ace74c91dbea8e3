"""cache.redis_client.CommandPacker and pack_hset: byte-for-byte the protocol redis-py's own packer writes."""

from __future__ import annotations

from typing import Any

import pytest
import redis
from redis.connection import PythonRespSerializer

from tokenwatch.cache.redis_client import SEND_AS_IS, CommandPacker, pack_hset


def _encode(value: Any) -> bytes | memoryview:
    return redis.ConnectionPool().get_encoder().encode(value)


def _wire(pieces: list[Any]) -> bytes:
    return b"".join(bytes(piece) for piece in pieces)


BIG = b"x" * (SEND_AS_IS + 1)


@pytest.mark.parametrize("args", [
    ("PING",),
    ("SET", "key", b"value", "EX", 30),
    ("CONFIG GET", "maxmemory"),  # a subcommand inside the name
    (b"CLIENT SETNAME", b"tw"),
    ("HSET", "h", "a", b"1", "b", 2.5, "c", 3, "\u00e9", "\u00e9"),
    ("SET", "big", BIG),
    ("SET", "view", memoryview(bytearray(BIG))),
    ("HSET", "h", *[x for i in range(2000) for x in (f"S{i}", b'{"k":%d}' % i)]),
    ("SET", "empty", b""),
])
@pytest.mark.parametrize("str_encoding", ["utf-8", None])  # None: every str goes through the encoder
def test_the_same_bytes_as_redis_py(args: tuple[Any, ...], str_encoding: str | None) -> None:
    ours = CommandPacker(_encode, str_encoding).pack(*args)
    theirs = PythonRespSerializer(6000, _encode).pack(*args)
    assert _wire(ours) == _wire(theirs)


def test_large_arguments_are_sent_as_they_are() -> None:
    view = memoryview(bytearray(BIG))
    pieces = CommandPacker(_encode).pack("SET", "k", BIG, view)
    assert any(piece is BIG for piece in pieces)
    assert any(piece is view for piece in pieces)
    assert all(len(piece) <= SEND_AS_IS + 64 for piece in pieces if piece is not BIG and piece is not view)


@pytest.mark.parametrize("pairs", [
    [],
    [("XBTUSDTM", b'{"symbol":"XBTUSDTM"}')],
    [("\u00e9USDTM", memoryview(b'..{"a":1}..')[2:9]), ("B", bytearray(b"")), ("C", BIG)],
    [(f"S{i}", b'{"k":%d}' % i) for i in range(2000)],
])
def test_pack_hset_writes_what_redis_py_writes_for_the_same_hset(pairs: list[tuple[str, Any]]) -> None:
    args = ("HSET", "tokenwatch:tokens:staged", *[x for symbol, value in pairs for x in (symbol, bytes(value))])
    assert pack_hset("tokenwatch:tokens:staged", pairs) == _wire(PythonRespSerializer(6000, _encode).pack(*args))
