"""Redis connections: one client per process and URL, made lazily after fork."""

from __future__ import annotations

import os
from urllib.parse import urlsplit

import redis

SOCKET_TIMEOUT_S = 5.0

_clients: dict[tuple[int, str], redis.Redis] = {}


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


def get_redis(url: str) -> redis.Redis:
    """This process's client for url (bytes responses, timeouts always, health checks on)."""
    key = (os.getpid(), url)
    client = _clients.get(key)
    if client is None:
        client = redis.Redis.from_url(
            to_redis_py_url(url), socket_timeout=SOCKET_TIMEOUT_S, socket_connect_timeout=SOCKET_TIMEOUT_S,
            health_check_interval=30, retry_on_timeout=False,
        )
        _clients[key] = client
    return client


def is_unix_socket(url: str) -> bool:
    """True when the URL points at a unix socket."""
    return urlsplit(to_redis_py_url(url)).scheme == "unix"
