"""Redis connections: one client per process and configuration, made lazily after fork.

Every client tokenwatch opens (hot cache, sync lock, event stream, node table, health checks) is built by
make_redis, and Celery's broker, result backend and beat's schedule store are configured by celery_redis, both
from one RedisConfig: a single server (redis://, rediss:// with TLS, unix://) or a master found through Redis
Sentinel (sentinel://host:26379;sentinel://host2:26379, Celery's spelling, with the master's name).
"""

from __future__ import annotations

import ssl
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urlsplit

import redis
import redis.sentinel
from typing_extensions import Buffer

SOCKET_TIMEOUT_S = 5.0
SENTINEL_PORT = 26379


@dataclass(frozen=True, slots=True)
class RedisConfig:
    """Where Redis is: url, and for a sentinel:// url the master's name; ca_cert verifies a TLS server (the
    system's CAs when None)."""

    url: str
    sentinel_master: str | None = None
    ca_cert: str | None = None

    @property
    def sentinel(self) -> bool:
        """Whether the master is found through Sentinel."""
        return self.url.startswith("sentinel://")

    @property
    def tls(self) -> bool:
        """Whether the connections to the data server use TLS."""
        return self.url.startswith("rediss://")


@dataclass(frozen=True, slots=True)
class SentinelNodes:
    """A sentinel:// URL taken apart: the sentinels, and the master's credentials and database (from the first
    part that has them, as Celery reads them)."""

    hosts: list[tuple[str, int]]
    username: str | None = None
    password: str | None = None
    db: int = 0


def sentinel_nodes(url: str) -> SentinelNodes:
    """Parse sentinel://[:password@]host:port[/db];sentinel://host2:port...; raises ValueError on a bad part."""
    hosts: list[tuple[str, int]] = []
    username = password = None
    db: int | None = None
    for part in url.split(";"):
        parts = urlsplit(part.strip())
        if parts.scheme != "sentinel" or not parts.hostname:
            raise ValueError("each ;-separated part must be sentinel://host:port")
        hosts.append((parts.hostname, parts.port or SENTINEL_PORT))
        if parts.password is not None and password is None:
            username, password = (unquote(parts.username) if parts.username else None), unquote(parts.password)
        path = parts.path.strip("/")
        if path and db is None:
            if not path.isdigit():
                raise ValueError("the database after the sentinel's address must be a number")
            db = int(path)
    return SentinelNodes(hosts, username, password, db or 0)


def make_redis(config: RedisConfig | str, timeout_s: float = SOCKET_TIMEOUT_S) -> redis.Redis:
    """A client for config (bytes responses, timeouts always, health checks on); one per process
    (tokenwatch.process keeps it). Through Sentinel, each new connection goes to the master of the moment."""
    if isinstance(config, str):
        config = RedisConfig(config)
    options: dict[str, Any] = {
        "socket_timeout": timeout_s, "socket_connect_timeout": timeout_s, "health_check_interval": 30,
        "retry_on_timeout": False,
    }
    if config.sentinel:
        nodes = sentinel_nodes(config.url)
        if not config.sentinel_master:
            raise ValueError("a sentinel:// URL needs the master's name (TOKENWATCH_REDIS_SENTINEL_MASTER)")
        # Typed as Any: redis-py left Sentinel untyped before 8.2 and types it since; either way it type-checks.
        sentinel_type: Any = redis.sentinel.Sentinel
        sentinels = sentinel_type(
            nodes.hosts, sentinel_kwargs={"socket_timeout": timeout_s, "socket_connect_timeout": timeout_s},
        )
        master: redis.Redis = sentinels.master_for(
            config.sentinel_master, db=nodes.db, username=nodes.username, password=nodes.password, **options,
        )
        return master
    if config.tls:
        options |= _ssl_options(config)
    pool = redis.ConnectionPool.from_url(to_redis_py_url(config.url), **options)
    return redis.Redis(connection_pool=pool)


def _ssl_options(config: RedisConfig) -> dict[str, Any]:
    """redis-py's (and kombu's, Celery's, redbeat's) TLS options: the server's certificate is always verified."""
    options: dict[str, Any] = {"ssl_cert_reqs": ssl.CERT_REQUIRED}
    if config.ca_cert:
        options["ssl_ca_certs"] = config.ca_cert
    return options


@dataclass(frozen=True, slots=True)
class CeleryRedis:
    """Celery's and redbeat's settings for one RedisConfig (celeryconfig.py puts them in place)."""

    broker_url: str
    result_backend: str
    transport_options: dict[str, Any] = field(default_factory=dict)  # broker and result backend alike
    use_ssl: dict[str, Any] | None = None  # broker_use_ssl, redis_backend_use_ssl, redbeat_redis_use_ssl
    redbeat_url: str = ""
    redbeat_options: dict[str, Any] = field(default_factory=dict)


def celery_redis(config: RedisConfig) -> CeleryRedis:
    """Broker, result backend and beat's schedule store on the Redis of config.

    Celery's sentinel:// transport and result backend take the master's name from their transport options;
    redbeat finds it through its own Sentinel client (https://github.com/sibson/redbeat#configuration).
    """
    if config.sentinel:
        nodes = sentinel_nodes(config.url)
        transport = {"master_name": config.sentinel_master}
        redbeat = {"sentinels": nodes.hosts, "service_name": config.sentinel_master, "db": nodes.db,
                   "socket_timeout": SOCKET_TIMEOUT_S}
        if nodes.password is not None:
            redbeat |= {"password": nodes.password, "username": nodes.username}
        # redbeat reads only the scheme (its sentinels come from redbeat_options), and prints the URL, which
        # must parse as one address.
        host, port = nodes.hosts[0]
        return CeleryRedis(config.url, config.url, transport, None, f"redis-sentinel://{host}:{port}/{nodes.db}",
                           redbeat)
    use_ssl = _ssl_options(config) if config.tls else None
    return CeleryRedis(to_kombu_url(config.url), to_kombu_url(config.url), {}, use_ssl,
                       to_redis_py_url(config.url))


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
