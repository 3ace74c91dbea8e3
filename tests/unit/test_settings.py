"""tokenwatch.settings: defaults, TOKENWATCH_* overrides, one-line ConfigErrors, password redaction."""

from __future__ import annotations

import os

import pytest

from tokenwatch.errors import ConfigError
from tokenwatch.settings import ENV_PREFIX, Settings, load_settings, redact_url


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No TOKENWATCH_* variable of the developer's shell leaks into a test."""
    for name in list(os.environ):
        if name.upper().startswith(ENV_PREFIX):
            monkeypatch.delenv(name)


def test_defaults() -> None:
    settings = load_settings()
    assert settings.kucoin_url == "https://api-futures.kucoin.com"
    assert settings.database_url == "sqlite:///data/tokens.db"
    assert settings.redis_url is None
    assert settings.sync_interval_s == 60
    assert settings.batch_size == 100
    assert settings.new_listing_window_h == 72
    assert settings.http_timeout_s == 10
    assert settings.flower_port == 5555


def test_environment_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TOKENWATCH_KUCOIN_URL", "http://127.0.0.1:8080/")
    monkeypatch.setenv("TOKENWATCH_DATABASE_URL", "sqlite:////var/lib/tokenwatch/tokens.db")
    monkeypatch.setenv("TOKENWATCH_REDIS_URL", "redis://localhost:6379/2")
    monkeypatch.setenv("TOKENWATCH_SYNC_INTERVAL_S", "15")
    monkeypatch.setenv("TOKENWATCH_BATCH_SIZE", "500")
    monkeypatch.setenv("TOKENWATCH_NEW_LISTING_WINDOW_H", "24")
    monkeypatch.setenv("TOKENWATCH_HTTP_TIMEOUT_S", "2.5")
    monkeypatch.setenv("TOKENWATCH_FLOWER_PORT", "5566")
    settings = load_settings()
    assert settings.kucoin_url == "http://127.0.0.1:8080"  # trailing slash dropped: paths are appended
    assert settings.database_url == "sqlite:////var/lib/tokenwatch/tokens.db"
    assert settings.redis_url == "redis://localhost:6379/2"
    assert (settings.sync_interval_s, settings.batch_size, settings.new_listing_window_h) == (15, 500, 24)
    assert (settings.http_timeout_s, settings.flower_port) == (2.5, 5566)


def test_blank_redis_url_means_the_embedded_server(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TOKENWATCH_REDIS_URL", "  ")
    settings = load_settings()
    assert settings.redis_url is None
    assert settings.effective_redis_url().startswith("unix://")


def test_settings_are_frozen() -> None:
    settings = load_settings()
    with pytest.raises(ValueError, match="frozen"):
        settings.batch_size = 1  # type: ignore[misc]
    assert isinstance(settings, Settings)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("TOKENWATCH_BATCH_SIZE", "abc"),
        ("TOKENWATCH_BATCH_SIZE", "0"),
        ("TOKENWATCH_FLOWER_PORT", "70000"),
        ("TOKENWATCH_FLOWER_PORT", "0"),
        ("TOKENWATCH_KUCOIN_URL", "ftp://x"),
        ("TOKENWATCH_KUCOIN_URL", "api-futures.kucoin.com"),
        ("TOKENWATCH_DATABASE_URL", "postgresql://db/tokens"),
        ("TOKENWATCH_REDIS_URL", "http://cache:6379"),
        ("TOKENWATCH_SYNC_INTERVAL_S", "-1"),
        ("TOKENWATCH_HTTP_TIMEOUT_S", "0"),
        ("TOKENWATCH_MAX_DROP_PCT", "101"),
    ],
)
def test_bad_value_is_a_one_line_config_error_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str,
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError) as info:
        load_settings()
    message = str(info.value)
    assert message.startswith(f"invalid {name}: ")
    assert "\n" not in message


def test_database_url_is_sqlite_or_postgresql_through_psycopg(monkeypatch: pytest.MonkeyPatch) -> None:
    url = "postgresql+psycopg://tw:secret@db.internal:5432/tokens"
    monkeypatch.setenv("TOKENWATCH_DATABASE_URL", url)
    assert load_settings().database_url == url
    monkeypatch.setenv("TOKENWATCH_DATABASE_URL", "mysql://tw:secret@db/tokens")
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert str(info.value) == ("invalid TOKENWATCH_DATABASE_URL: Value error, must be an sqlite:/// or "
                               "postgresql+psycopg:// URL")


def test_config_error_does_not_echo_a_password(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TOKENWATCH_REDIS_URL", "http://user:secret@cache:6379/0")
    with pytest.raises(ConfigError, match="TOKENWATCH_REDIS_URL") as info:
        load_settings()
    assert "secret" not in str(info.value)


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("redis://user:secret@host:6379/0", "redis://user:***@host:6379/0"),
        ("rediss://:secret@cache.internal:6380/1?ssl_cert_reqs=none", "rediss://***@cache.internal:6380/1?ssl_cert_reqs=none"),
        ("redis://user@host/0", "redis://user:***@host/0"),
        ("redis://host:6379/0", "redis://host:6379/0"),
        ("unix:///tmp/redis.sock", "unix:///tmp/redis.sock"),
        ("sqlite:///data/tokens.db", "sqlite:///data/tokens.db"),
    ],
)
def test_redact_url(url: str, expected: str) -> None:
    redacted = redact_url(url)
    assert redacted == expected
    assert "secret" not in redacted


def test_redact_url_of_nothing() -> None:
    assert redact_url(None) == "None"
    assert redact_url("") == ""
