"""Redis beyond one server: sentinel:// and rediss:// settings, the clients and Celery options built from them,
and passwords that never show (no server: the clients are built, not connected)."""

from __future__ import annotations

import os
import ssl
import subprocess
import sys
from pathlib import Path

import pytest
import redis
import redis.sentinel

from tests.conftest import ROOT
from tokenwatch.cache.redis_client import RedisConfig, celery_redis, make_redis, sentinel_nodes
from tokenwatch.errors import ConfigError
from tokenwatch.settings import ENV_PREFIX, load_settings, redact_url

SENTINELS = "sentinel://:s3cret@10.0.0.1:26379/2;sentinel://10.0.0.2:26380;sentinel://10.0.0.3"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.upper().startswith(ENV_PREFIX):
            monkeypatch.delenv(name)


def test_sentinel_url_and_master_are_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TOKENWATCH_REDIS_URL", SENTINELS)
    monkeypatch.setenv("TOKENWATCH_REDIS_SENTINEL_MASTER", "tokens")
    config = load_settings().redis_config()
    assert config == RedisConfig(SENTINELS, "tokens", None)
    assert config.sentinel and not config.tls
    nodes = sentinel_nodes(config.url)
    assert nodes.hosts == [("10.0.0.1", 26379), ("10.0.0.2", 26380), ("10.0.0.3", 26379)]
    assert (nodes.username, nodes.password, nodes.db) == (None, "s3cret", 2)


def test_sentinel_url_without_master_is_one_line_naming_the_missing_variable(monkeypatch: pytest.MonkeyPatch,
                                                                            ) -> None:
    monkeypatch.setenv("TOKENWATCH_REDIS_URL", SENTINELS)
    with pytest.raises(ConfigError) as info:
        load_settings()
    message = str(info.value)
    assert message.startswith("invalid TOKENWATCH_REDIS_SENTINEL_MASTER: ")
    assert "sentinel://" in message and "\n" not in message and "s3cret" not in message


@pytest.mark.parametrize("url", ["sentinel://:s3cret@h1:26379;redis://h2:6379", "sentinel://:s3cret@:26379",
                                 "sentinel://:s3cret@h1:26379/zero"])
def test_bad_sentinel_url_is_one_line_without_the_password(monkeypatch: pytest.MonkeyPatch, url: str) -> None:
    monkeypatch.setenv("TOKENWATCH_REDIS_URL", url)
    monkeypatch.setenv("TOKENWATCH_REDIS_SENTINEL_MASTER", "tokens")
    with pytest.raises(ConfigError) as info:
        load_settings()
    message = str(info.value)
    assert message.startswith("invalid TOKENWATCH_REDIS_URL: ")
    assert "\n" not in message and "s3cret" not in message


def test_missing_ca_file_is_one_line_without_its_path(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("TOKENWATCH_REDIS_URL", "rediss://:s3cret@cache:6380/0")
    monkeypatch.setenv("TOKENWATCH_REDIS_CA_CERT", str(tmp_path / "ca.pem"))
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert str(info.value).startswith("invalid TOKENWATCH_REDIS_CA_CERT: Value error, no such file")
    assert str(tmp_path) not in str(info.value)


def test_a_ca_file_with_sentinel_is_refused_not_ignored(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / "ca.pem").write_text("")
    monkeypatch.setenv("TOKENWATCH_REDIS_URL", SENTINELS)
    monkeypatch.setenv("TOKENWATCH_REDIS_SENTINEL_MASTER", "tokens")
    monkeypatch.setenv("TOKENWATCH_REDIS_CA_CERT", str(tmp_path / "ca.pem"))
    with pytest.raises(ConfigError, match=r"^invalid TOKENWATCH_REDIS_CA_CERT: .*Sentinel over TLS is not supported"):
        load_settings()


def test_the_sentinel_client_asks_the_sentinels_for_the_named_master() -> None:
    client = make_redis(RedisConfig(SENTINELS, "tokens"))
    pool = client.connection_pool
    assert isinstance(pool, redis.sentinel.SentinelConnectionPool)
    assert pool.service_name == "tokens"
    kwargs = pool.connection_kwargs
    assert (kwargs["password"], kwargs["db"], kwargs["socket_timeout"]) == ("s3cret", 2, 5.0)
    sentinels = [(c.connection_pool.connection_kwargs["host"], c.connection_pool.connection_kwargs["port"])
                 for c in pool.sentinel_manager.sentinels]
    assert sentinels == [("10.0.0.1", 26379), ("10.0.0.2", 26380), ("10.0.0.3", 26379)]
    assert "s3cret" not in repr(client)


def test_a_sentinel_client_without_a_master_name_is_refused() -> None:
    with pytest.raises(ValueError, match="TOKENWATCH_REDIS_SENTINEL_MASTER"):
        make_redis(RedisConfig(SENTINELS))


def test_the_tls_client_verifies_the_server_against_the_given_ca() -> None:
    client = make_redis(RedisConfig("rediss://:s3cret@cache:6380/1", ca_cert="/etc/ca.pem"))
    pool = client.connection_pool
    assert pool.connection_class is redis.SSLConnection
    kwargs = pool.connection_kwargs
    assert (kwargs["password"], kwargs["db"], kwargs["ssl_ca_certs"]) == ("s3cret", 1, "/etc/ca.pem")
    assert kwargs["ssl_cert_reqs"] == ssl.CERT_REQUIRED


def test_celery_options_through_sentinel() -> None:
    options = celery_redis(RedisConfig(SENTINELS, "tokens"))
    assert options.broker_url == options.result_backend == SENTINELS  # Celery's own sentinel:// spelling
    assert options.transport_options == {"master_name": "tokens"}
    assert options.use_ssl is None
    assert options.redbeat_url == "redis-sentinel://10.0.0.1:26379/2"  # must parse: redbeat prints it
    assert options.redbeat_options["sentinels"] == [("10.0.0.1", 26379), ("10.0.0.2", 26380), ("10.0.0.3", 26379)]
    assert (options.redbeat_options["service_name"], options.redbeat_options["db"]) == ("tokens", 2)
    assert options.redbeat_options["password"] == "s3cret"


def test_celery_options_over_tls() -> None:
    options = celery_redis(RedisConfig("rediss://:s3cret@cache:6380/0", ca_cert="/etc/ca.pem"))
    assert options.broker_url == options.result_backend == options.redbeat_url == "rediss://:s3cret@cache:6380/0"
    assert options.use_ssl == {"ssl_cert_reqs": ssl.CERT_REQUIRED, "ssl_ca_certs": "/etc/ca.pem"}
    assert options.transport_options == {}


def test_redact_every_part_of_a_sentinel_list() -> None:
    redacted = redact_url("sentinel://:s3cret@h1:26379/0;sentinel://:s3cret@h2:26379/0")
    assert redacted == "sentinel://***@h1:26379/0;sentinel://***@h2:26379/0"


def run_celeryconfig(**env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(ENV_PREFIX)}
    return subprocess.run([sys.executable, "-m", "tokenwatch.celeryconfig"], env={**clean, **env}, cwd=ROOT,
                          capture_output=True, text=True, timeout=60, check=False)


def test_printed_celery_configuration_through_sentinel_hides_the_password() -> None:
    result = run_celeryconfig(TOKENWATCH_REDIS_URL=SENTINELS, TOKENWATCH_REDIS_SENTINEL_MASTER="tokens")
    assert result.returncode == 0, result.stderr
    assert "s3cret" not in result.stdout + result.stderr
    assert "broker_url = 'sentinel://***@10.0.0.1:26379/2;sentinel://10.0.0.2:26380;sentinel://10.0.0.3'" \
        in result.stdout
    assert "'master_name': 'tokens'" in result.stdout
    assert "'password': '***'" in result.stdout  # redbeat's own Sentinel client


def test_printed_celery_configuration_over_tls_hides_the_password(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("not read here")
    result = run_celeryconfig(TOKENWATCH_REDIS_URL="rediss://:s3cret@cache:6380/0", TOKENWATCH_REDIS_CA_CERT=str(ca))
    assert result.returncode == 0, result.stderr
    assert "s3cret" not in result.stdout + result.stderr
    assert "broker_url = 'rediss://***@cache:6380/0'" in result.stdout
    assert "broker_use_ssl = {" in result.stdout and "redis_backend_use_ssl = {" in result.stdout
