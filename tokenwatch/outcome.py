"""What a sync ends as: its status, counts, per-phase timings and one line of error; the CLI's --json object."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

COUNT_KEYS = (
    "fetched", "active", "listed", "delisted", "relisted", "delisting_scheduled", "status_changed",
    "params_changed", "unchanged", "invalid",
)
PHASES = ("api", "db_load", "process", "batch_write", "cache", "total")


class SyncStatus(StrEnum):
    """How a sync ended (``running`` until it has)."""

    RUNNING = "running"
    OK = "ok"  # applied
    BASELINE = "baseline"  # the first sync into an empty registry: applied, no per-token events
    SUSPECT = "suspect"  # applied, but an implausible change in it was held back (see the warning)
    SKIPPED = "skipped"  # not run or not applied: another sync held the lock, or the snapshot was stale
    FAILED = "failed"  # nothing applied; the error says why

    @property
    def good(self) -> bool:
        """Whether a sync with this status was applied."""
        return self in GOOD


GOOD = frozenset({SyncStatus.OK, SyncStatus.BASELINE, SyncStatus.SUSPECT})
OUTCOMES = tuple(status.value for status in SyncStatus if status is not SyncStatus.RUNNING)


def zero_counts() -> dict[str, int]:
    """Every count at zero."""
    return dict.fromkeys(COUNT_KEYS, 0)


@dataclass(slots=True)
class Outcome:
    """What one sync did: the JSON the CLI prints and the task chain returns."""

    sync_id: str
    status: SyncStatus
    counts: dict[str, int] = field(default_factory=zero_counts)
    timings_ms: dict[str, float] = field(default_factory=dict)
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        """The CLI's --json object."""
        return {
            "sync_id": self.sync_id, "status": self.status.value, "counts": self.counts,
            "timings_ms": {k: round(self.timings_ms[k], 2) for k in PHASES if k in self.timings_ms},
            "error": self.error,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Outcome:
        """Inverse of to_json."""
        return cls(
            sync_id=data["sync_id"], status=SyncStatus(data["status"]), counts=dict(data["counts"]),
            timings_ms=dict(data["timings_ms"]), error=data.get("error"),
        )
