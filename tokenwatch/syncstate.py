"""One sync as it moves through its steps: the typed state every step takes and returns.

It crosses the broker between the chain's tasks as JSON (to_json / from_json); the inline path passes the
object itself. Large data (the exchange's answer, the plan) never rides in it: the steps hand those over
through a Handoff (tokenwatch/handoff.py).
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from tokenwatch.clock import now_ms
from tokenwatch.outcome import Outcome, SyncStatus, zero_counts


def new_sync_id() -> str:
    """A unique, time-ordered sync id such as 20261126T140501Z-1a2b3c."""
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ-") + secrets.token_hex(3)


@dataclass(slots=True)
class SyncState:
    """Where one sync stands: running until a step ends it with an outcome."""

    sync_id: str
    started_at: int
    status: SyncStatus = SyncStatus.RUNNING
    error: str | None = None
    attempts: int = 0  # calls of the active-contracts endpoint so far
    fetched_at_ms: int | None = None  # when the answer in the handoff was fetched
    cache_size: int | None = None  # entries staged for the hot cache; None when none could be staged
    cache_error: str | None = None  # why the hot cache was not (or will not be) replaced
    revision: int | None = None  # the registry revision this sync's write committed
    replayed: bool = False  # a redelivered write found this sync applied already: nothing more to record
    counts: dict[str, int] = field(default_factory=zero_counts)
    timings: dict[str, float] = field(default_factory=dict)
    # The symbols an operator wants named in the log, by event type (the first few of each).
    named: dict[str, list[str]] = field(default_factory=dict)

    @classmethod
    def new(cls, sync_id: str | None = None) -> SyncState:
        """A sync that starts now."""
        return cls(sync_id or new_sync_id(), now_ms())

    @property
    def done(self) -> bool:
        """Whether the sync has ended (no step runs on it any more)."""
        return self.status is not SyncStatus.RUNNING

    def end(self, status: SyncStatus, error: str | None = None) -> SyncState:
        """End the sync with status and a one-line error; returns self."""
        self.status = status
        self.error = error
        return self

    def add_time(self, phase: str, ms: float) -> None:
        """Count ms more in phase."""
        self.timings[phase] = self.timings.get(phase, 0.0) + ms

    def outcome(self) -> Outcome:
        """The outcome the CLI prints and the chain returns; a sync that applied nothing counts nothing."""
        if not self.status.good:
            return Outcome(self.sync_id, self.status, zero_counts(), dict(self.timings), self.error)
        error = self.error
        if self.cache_error:
            error = f"{error}; {self.cache_error}" if error else self.cache_error
        return Outcome(self.sync_id, self.status, dict(self.counts), dict(self.timings), error)

    def to_json(self) -> dict[str, Any]:
        """The message form, between the chain's tasks."""
        return {
            "sync_id": self.sync_id, "started_at": self.started_at, "status": self.status.value,
            "error": self.error, "attempts": self.attempts, "fetched_at_ms": self.fetched_at_ms,
            "cache_size": self.cache_size, "cache_error": self.cache_error, "revision": self.revision,
            "replayed": self.replayed, "counts": self.counts, "timings": self.timings, "named": self.named,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SyncState:
        """Inverse of to_json."""
        return cls(
            sync_id=str(data["sync_id"]), started_at=int(data["started_at"]), status=SyncStatus(data["status"]),
            error=data.get("error"), attempts=int(data.get("attempts", 0)), fetched_at_ms=data.get("fetched_at_ms"),
            cache_size=data.get("cache_size"), cache_error=data.get("cache_error"), revision=data.get("revision"),
            replayed=bool(data.get("replayed", False)), counts={**zero_counts(), **data.get("counts", {})},
            timings=dict(data.get("timings", {})), named={k: list(v) for k, v in data.get("named", {}).items()},
        )
