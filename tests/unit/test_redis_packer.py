"""cache.redis_client.pack_hset: byte for byte the protocol redis-py's own packer writes for the same HSET."""

from __future__ import annotations

from typing import Any

import pytest
import redis
from redis.connection import PythonRespSerializer

from tokenwatch.cache.redis_client import pack_hset

BIG = b"x" * (64 * 1024 + 1)


def _encode(value: Any) -> bytes | memoryview:
    return redis.ConnectionPool().get_encoder().encode(value)


def _wire(pieces: list[Any]) -> bytes:
    return b"".join(bytes(piece) for piece in pieces)


@pytest.mark.parametrize("pairs", [
    [],
    [("XBTUSDTM", b'{"symbol":"XBTUSDTM"}')],
    [("\u00e9USDTM", memoryview(b'..{"a":1}..')[2:9]), ("B", bytearray(b"")), ("C", BIG)],
    [(f"S{i}", b'{"k":%d}' % i) for i in range(2000)],
])
def test_pack_hset_writes_what_redis_py_writes_for_the_same_hset(pairs: list[tuple[str, Any]]) -> None:
    args = ("HSET", "tokenwatch:tokens:staged", *[x for symbol, value in pairs for x in (symbol, bytes(value))])
    assert pack_hset("tokenwatch:tokens:staged", pairs) == _wire(PythonRespSerializer(6000, _encode).pack(*args))
