"""The registry as the diff sees it: one row per symbol ever seen, and the head they were read at."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import msgspec

from tokenwatch.domain.contracts import METADATA_COLUMNS, METADATA_FIELDS, Meta

ACTIVE = "active"
DELISTED = "delisted"

# Columns of the tokens table in row order; metadata columns follow (domain.contracts.METADATA_COLUMNS).
STATE_COLUMNS: tuple[str, ...] = (
    "symbol", "status", "contract_status", "is_new", "listed_at", "first_seen", "last_seen", "delisted_at",
    "missing_since",
)
TOKEN_COLUMNS: tuple[str, ...] = STATE_COLUMNS + METADATA_COLUMNS


class RegistryRow(msgspec.Struct, frozen=True, array_like=True, gc=False):
    """One token as stored: lifecycle fields and normalised listing metadata.

    A struct (not a dataclass) so that a registry snapshot decodes straight into rows (cache/snapshot.py); gc=False
    because a row holds only scalars and a tuple of scalars, and 100,000 of them need not be tracked by the GC.
    """

    symbol: str
    status: str
    contract_status: str
    is_new: bool
    listed_at: int | None
    first_seen: int
    last_seen: int
    delisted_at: int | None
    meta: Meta
    # Set when the symbol was absent and the check of it failed: a second absence then confirms the delisting.
    missing_since: int | None = None

    def as_row(self) -> tuple[object, ...]:
        """The row in tokens-table column order."""
        return (
            self.symbol, self.status, self.contract_status, int(self.is_new), self.listed_at,
            self.first_seen, self.last_seen, self.delisted_at, self.missing_since, *self.meta,
        )

    def as_contract(self) -> dict[str, Any]:
        """The row in KuCoin's shape (camelCase keys): the listing metadata, no market data."""
        return stored_contract(self.symbol, self.contract_status, self.meta)

    @classmethod
    def from_row(cls, row: Sequence[Any]) -> RegistryRow:
        """Rebuild from a row in tokens-table column order."""
        symbol, status, contract_status, is_new, listed_at, first_seen, last_seen, delisted_at, missing = row[:9]
        return cls(
            symbol=str(symbol), status=str(status), contract_status=str(contract_status),
            is_new=bool(is_new), listed_at=_opt_int(listed_at), first_seen=_int(first_seen),
            last_seen=_int(last_seen), delisted_at=_opt_int(delisted_at), meta=tuple(row[9:]),
            missing_since=_opt_int(missing),
        )


def stored_contract(symbol: str, contract_status: str, meta: Sequence[Any]) -> dict[str, Any]:
    """A contract in KuCoin's shape (camelCase keys) from its stored listing metadata, in METADATA_FIELDS order."""
    contract: dict[str, Any] = {"symbol": symbol, "status": contract_status}
    for (key, _, kind), stored in zip(METADATA_FIELDS, meta, strict=True):
        if kind == "list" and isinstance(stored, str):
            contract[key] = stored.split(",") if stored else []  # stored sorted and comma-joined
        elif kind == "bool" and stored is not None:
            contract[key] = bool(stored)
        else:
            contract[key] = stored
    return contract


def _int(value: object) -> int:
    if isinstance(value, int | float | str):
        return int(value)
    raise TypeError(f"expected an integer, got {type(value).__name__}")


def _opt_int(value: object) -> int | None:
    return None if value is None else _int(value)


@dataclass(frozen=True, slots=True)
class RegistryHead:
    """Which registry, and which commit of it: its revision, the sync that made it, when that sync fetched."""

    revision: int
    last_sync_id: str | None = None
    last_fetched_at: int | None = None
    registry_id: str | None = None


@dataclass(frozen=True, slots=True)
class RegistryState:
    """Every token row by symbol, and the head they were read at (or will be at, once a plan commits)."""

    head: RegistryHead
    rows: dict[str, RegistryRow]
    pending_change: str | None = None  # a mass change held back by the sync that made this head (diff.py)

    @property
    def revision(self) -> int:
        return self.head.revision

    @property
    def last_fetched_at(self) -> int | None:
        return self.head.last_fetched_at

    @property
    def empty(self) -> bool:
        return not self.rows

    def active_count(self) -> int:
        """How many rows are active."""
        return sum(1 for row in self.rows.values() if row.status == ACTIVE)
