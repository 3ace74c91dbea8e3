"""Every error tokenwatch raises on purpose.

    TokenwatchError
     ├── ConfigError          a TOKENWATCH_* variable has a bad value
     ├── FetchError           the exchange answer could not be used
     │    ├── TransientFetchError   timeout, connection error, 5xx, 429: worth retrying
     │    └── BadResponseError      HTML, truncated or non-JSON body, error code, oversized body
     ├── StagingError         a staged snapshot or plan is gone from Redis (expired or flushed)
     ├── StaleSnapshotError   the snapshot is older than the one already applied
     ├── WriteError           the database transaction failed and was rolled back
     ├── RegistryMissingError a command that only reads found no registry where it was pointed
     ├── SchemaError          the registry's schema is not this release's (behind: upgrade; ahead: newer release)
     └── RunRefusedError      `tokenwatch run` cannot start: its folder or registry is in use, a port is taken,
                              or an earlier run's processes live on; or a child it supervises keeps dying
"""

from __future__ import annotations


class TokenwatchError(Exception):
    """Base of all tokenwatch errors; the message is one readable line."""


class ConfigError(TokenwatchError):
    """A setting read from the environment is invalid."""


class FetchError(TokenwatchError):
    """The exchange could not give a usable contract list."""


class TransientFetchError(FetchError):
    """A failure that may pass: timeout, connection error, HTTP 5xx or rate limit."""

    def __init__(self, message: str, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class BadResponseError(FetchError):
    """The exchange answered, but not with a usable envelope; code is KuCoin's error code if it gave one."""

    def __init__(self, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.code = code


class StagingError(TokenwatchError):
    """A staged snapshot or plan is missing from Redis."""


class StaleSnapshotError(TokenwatchError):
    """The snapshot is not newer than the registry's last applied one."""


class WriteError(TokenwatchError):
    """The registry write failed; the transaction was rolled back."""


class RegistryMissingError(TokenwatchError):
    """There is no registry at the configured database URL (only a writer creates one)."""


class SchemaError(TokenwatchError):
    """The registry's schema is behind this release's (run `tokenwatch db upgrade`) or unknown to it."""


class RunRefusedError(TokenwatchError):
    """`tokenwatch run` will not start (or go on): the message says what stands in the way and what to do."""


def one_line(exc: BaseException) -> str:
    """An exception as one readable line: its message's first line, or its type's name."""
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
