"""Classify a snapshot against the registry and build everything the write step needs: no I/O here."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from tokenwatch.domain.contracts import METADATA_KEYS, Contract
from tokenwatch.domain.registry import ACTIVE, DELISTED, Registry, RegistryRow

EVENT_TYPES = (
    "listed", "delisted", "relisted", "delisting_scheduled", "status_changed", "params_changed",
)
COUNT_KEYS = (
    "fetched", "active", "listed", "delisted", "relisted", "delisting_scheduled", "status_changed",
    "params_changed", "unchanged", "invalid",
)
PERPETUAL = "FFWCSX"
_EXPIRE_AT = METADATA_KEYS.index("expireDate")
_FIRST_OPEN_AT = METADATA_KEYS.index("firstOpenDate")
# Fields that move together when a perpetual's delisting is scheduled; reported once, as that event.
_SCHEDULE_KEYS = frozenset({"expireDate", "settleDate", "settlementSymbol"})
_SCHEDULE_AT = frozenset(METADATA_KEYS.index(k) for k in _SCHEDULE_KEYS)


@dataclass(frozen=True, slots=True)
class Event:
    """One history event; (symbol, event_type, sync_id) is its unique key."""

    symbol: str
    event_type: str
    details: dict[str, Any]


@dataclass(slots=True)
class Plan:
    """What one sync changes: rows to upsert, symbols to mark delisted, events, counts."""

    sync_id: str
    now_ms: int
    base_revision: int
    status: str  # ok | baseline | suspect
    upserts: list[RegistryRow] = field(default_factory=list)
    delist: list[str] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)  # absent but kept active: suspect, flaky or unconfirmed
    pending: list[str] = field(default_factory=list)  # absent for the first time: mark missing_since
    seen_before: int | None = None  # when the previous snapshot was taken: the missing ones' last sighting
    warning: str | None = None

    def to_json(self) -> dict[str, Any]:
        """A JSON-able form, for staging the plan in Redis between tasks."""
        return {
            "sync_id": self.sync_id, "now_ms": self.now_ms, "base_revision": self.base_revision,
            "status": self.status, "upserts": [row.as_row() for row in self.upserts],
            "delist": self.delist, "events": [[e.symbol, e.event_type, e.details] for e in self.events],
            "counts": self.counts, "missing": self.missing, "pending": self.pending, "warning": self.warning,
            "seen_before": self.seen_before,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Plan:
        """Inverse of to_json."""
        return cls(
            sync_id=data["sync_id"], now_ms=int(data["now_ms"]), base_revision=int(data["base_revision"]),
            status=data["status"], upserts=[RegistryRow.from_row(r) for r in data["upserts"]],
            delist=list(data["delist"]), events=[Event(s, t, d) for s, t, d in data["events"]],
            counts=dict(data["counts"]), missing=list(data["missing"]), pending=list(data["pending"]),
            warning=data.get("warning"), seen_before=data.get("seen_before"),
        )

    def apply_to(self, registry: Registry) -> Registry:
        """The registry as it will be once this plan is committed (for the in-process snapshot)."""
        rows = dict(registry.rows)
        for row in self.upserts:
            rows[row.symbol] = row
        for symbol in self.delist:
            rows[symbol] = _delisted(rows[symbol], self.now_ms, self.seen_before)
        for symbol in self.pending:
            rows[symbol] = dataclasses.replace(
                rows[symbol], missing_since=self.now_ms, last_seen=self.seen_before or rows[symbol].last_seen)
        return Registry(revision=registry.revision + 1, rows=rows, last_fetched_at=self.now_ms)


def _delisted(old: RegistryRow, now_ms: int, seen_before: int | None) -> RegistryRow:
    last_seen = old.last_seen if old.missing_since is not None or seen_before is None else seen_before
    return dataclasses.replace(
        old, status=DELISTED, is_new=False, delisted_at=now_ms, missing_since=None, last_seen=last_seen)


def is_new(listed_at: int | None, now_ms: int, window_ms: int) -> bool:
    """True while the listing time is within the new-listing window."""
    return listed_at is not None and now_ms - listed_at < window_ms


def _param_changes(old: tuple[Any, ...], new: tuple[Any, ...], skip: frozenset[int]) -> dict[str, list[Any]]:
    return {
        METADATA_KEYS[i]: [a, b]
        for i, (a, b) in enumerate(zip(old, new, strict=True))
        if a != b and i not in skip
    }


def is_suspect(present: int, missing: int, active_before: int, max_drop_pct: float) -> bool:
    """A snapshot is suspect when it is empty or lacks more than max_drop_pct percent of the active tokens."""
    if active_before == 0:
        return False
    return present == 0 or 100.0 * missing / active_before > max_drop_pct


def missing_symbols(contracts: Mapping[str, Contract], registry: Registry) -> list[str]:
    """Active symbols of the registry that the snapshot lacks, sorted."""
    active = {s for s, row in registry.rows.items() if row.status == ACTIVE}
    return sorted(active.difference(contracts))


def build_plan(
    sync_id: str,
    contracts: Mapping[str, Contract],
    registry: Registry,
    *,
    now_ms: int,
    window_ms: int,
    fetched: int,
    invalid: int,
    max_drop_pct: float = 20.0,
    still_listed: Iterable[str] = (),
    unconfirmed: Iterable[str] = (),
) -> Plan:
    """Classify every symbol and build the rows and events of one sync.

    Of the missing symbols, ``still_listed`` ones were found open by a per-symbol check and stay active;
    ``unconfirmed`` ones could not be checked and are delisted only on their second consecutive absence.
    """
    rows = registry.rows
    baseline = registry.empty
    active_before = sum(1 for row in rows.values() if row.status == ACTIVE)
    missing = missing_symbols(contracts, registry)
    plan = Plan(sync_id=sync_id, now_ms=now_ms, base_revision=registry.revision, status="ok",
                seen_before=registry.last_fetched_at)
    counts = dict.fromkeys(COUNT_KEYS, 0)
    counts["fetched"] = fetched
    counts["invalid"] = invalid

    suspect = is_suspect(len(contracts), len(missing), active_before, max_drop_pct)
    drop_pct = 100.0 * len(missing) / active_before if active_before else 0.0
    if baseline:
        plan.status = "baseline"
    elif suspect:
        plan.status = "suspect"
        plan.warning = (
            f"suspect snapshot: {len(missing)} of {active_before} active contracts missing "
            f"({drop_pct:.0f}% > {max_drop_pct:g}%); nothing delisted"
        )
    keep = set(still_listed)
    unchecked = set(unconfirmed)
    added = 0
    events = plan.events
    upserts = plan.upserts

    for symbol, contract in contracts.items():
        old = rows.get(symbol)
        meta = contract.meta
        # Nearly every contract is unchanged: active, same status and metadata, nothing to refresh. Exactly the
        # conditions under which the full classification below writes nothing; checked first, without calls.
        if (
            old is not None and old.status == ACTIVE and old.missing_since is None
            and contract.status == old.contract_status and meta == old.meta
            and (meta[_FIRST_OPEN_AT] is None or meta[_FIRST_OPEN_AT] == old.listed_at)
            and (old.listed_at is not None and now_ms - old.listed_at < window_ms) == old.is_new
        ):
            counts["unchanged"] += 1
            continue
        first_open = contract.first_open_date
        if old is None:
            added += 1
            first_seen = now_ms
            # In a baseline we cannot know when a contract without firstOpenDate was listed.
            listed_at = first_open if first_open is not None or baseline else now_ms
            upserts.append(RegistryRow(
                symbol, ACTIVE, contract.status, is_new(listed_at, now_ms, window_ms), listed_at,
                first_seen, now_ms, None, meta,
            ))
            if not baseline:
                counts["listed"] += 1
                events.append(Event(symbol, "listed", {
                    "type": contract.contract_type, "status": contract.status,
                    "baseCurrency": contract.base_currency,
                    "quoteCurrency": contract.quote_currency, "firstOpenDate": first_open,
                }))
            continue

        listed_at = first_open if first_open is not None else old.listed_at
        new_flag = is_new(listed_at, now_ms, window_ms)
        if old.status == DELISTED:
            counts["relisted"] += 1
            events.append(Event(symbol, "relisted", {"delisted_at": old.delisted_at, "status": contract.status}))
            upserts.append(RegistryRow(
                symbol, ACTIVE, contract.status, new_flag, listed_at, old.first_seen, now_ms, None, meta,
            ))
            continue

        changed = False
        skip: frozenset[int] = frozenset()
        if (
            contract.contract_type == PERPETUAL and old.meta[_EXPIRE_AT] is None
            and meta[_EXPIRE_AT] is not None
        ):
            counts["delisting_scheduled"] += 1
            events.append(Event(symbol, "delisting_scheduled", {"expireDate": meta[_EXPIRE_AT]}))
            skip = _SCHEDULE_AT
            changed = True
        if contract.status != old.contract_status:
            counts["status_changed"] += 1
            events.append(Event(symbol, "status_changed", {"from": old.contract_status, "to": contract.status}))
            changed = True
        if meta != old.meta:
            diffs = _param_changes(old.meta, meta, skip)
            if diffs:
                counts["params_changed"] += 1
                events.append(Event(symbol, "params_changed", {"changes": diffs}))
            changed = True
        if not changed:
            counts["unchanged"] += 1
        if changed or new_flag != old.is_new or listed_at != old.listed_at or old.missing_since is not None:
            upserts.append(RegistryRow(
                symbol, ACTIVE, contract.status, new_flag, listed_at, old.first_seen, now_ms, None, meta,
            ))

    if not suspect:
        for symbol in missing:
            old = rows[symbol]
            if symbol in keep or (symbol in unchecked and old.missing_since is None):
                plan.missing.append(symbol)
                continue
            plan.delist.append(symbol)
            counts["delisted"] += 1
            events.append(Event(symbol, "delisted", {"last_status": old.contract_status}))
    else:
        plan.missing.extend(missing)
    # Kept although absent: remember since when, which freezes their last_seen (see db/writer.py).
    plan.pending = [s for s in plan.missing if rows[s].missing_since is None]

    counts["active"] = active_before + added + counts["relisted"] - counts["delisted"]
    plan.counts = counts
    return plan
