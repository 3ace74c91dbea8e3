"""Classify a snapshot against the registry and build everything the write step needs: no I/O here."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import msgspec
import orjson

from tokenwatch.domain.contracts import METADATA_KEYS, Contract
from tokenwatch.domain.registry import ACTIVE, DELISTED, RegistryHead, RegistryRow, RegistryState
from tokenwatch.outcome import SyncStatus, zero_counts

EVENT_TYPES = (
    "listed", "delisted", "relisted", "delisting_scheduled", "status_changed", "params_changed",
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
    status: SyncStatus  # ok | baseline | suspect
    upserts: list[RegistryRow] = field(default_factory=list)
    delist: list[str] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)  # absent but kept active: suspect, flaky or unconfirmed
    held: list[str] = field(default_factory=list)  # listed but unusable (invalid, or twice): kept as they are
    pending: list[str] = field(default_factory=list)  # absent for the first time: mark missing_since
    seen_before: int | None = None  # when the previous snapshot was taken: the missing ones' last sighting
    warning: str | None = None
    pending_change: str | None = None  # a mass change held back (JSON), for the next sync to confirm

    def to_json(self) -> dict[str, Any]:
        """A JSON-able form, for staging the plan in Redis between tasks."""
        return {
            "sync_id": self.sync_id, "now_ms": self.now_ms, "base_revision": self.base_revision,
            "status": str(self.status), "upserts": [row.as_row() for row in self.upserts],
            "delist": self.delist, "events": [[e.symbol, e.event_type, e.details] for e in self.events],
            "counts": self.counts, "missing": self.missing, "pending": self.pending, "warning": self.warning,
            "seen_before": self.seen_before, "held": self.held, "pending_change": self.pending_change,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Plan:
        """Inverse of to_json."""
        return cls(
            sync_id=data["sync_id"], now_ms=int(data["now_ms"]), base_revision=int(data["base_revision"]),
            status=SyncStatus(data["status"]), upserts=[RegistryRow.from_row(r) for r in data["upserts"]],
            delist=list(data["delist"]), events=[Event(s, t, d) for s, t, d in data["events"]],
            counts=dict(data["counts"]), missing=list(data["missing"]), pending=list(data["pending"]),
            warning=data.get("warning"), seen_before=data.get("seen_before"), held=list(data.get("held", [])),
            pending_change=data.get("pending_change"),
        )

    def apply_to(self, registry: RegistryState, contracts: Mapping[str, Contract] | None = None) -> RegistryState:
        """The registry as it will be once this plan is committed (for the in-process snapshot). A row whose
        metadata equals that of its contract in contracts (the answer the plan was built from) takes the
        contract's tuple: the registry and the parse memo then hold one copy of it, not two."""
        rows = dict(registry.rows)
        for symbol, contract in (contracts or {}).items():
            row = rows.get(symbol)
            if row is not None and row.meta is not contract.meta and row.meta == contract.meta:
                rows[symbol] = msgspec.structs.replace(row, meta=contract.meta)
        for row in self.upserts:
            rows[row.symbol] = row
        for symbol in self.delist:
            rows[symbol] = _delisted(rows[symbol], self.now_ms, self.seen_before)
        for symbol in self.pending:
            rows[symbol] = msgspec.structs.replace(
                rows[symbol], missing_since=self.now_ms, last_seen=self.seen_before or rows[symbol].last_seen)
        head = RegistryHead(registry.revision + 1, self.sync_id, self.now_ms, registry.head.registry_id)
        return RegistryState(head=head, rows=rows, pending_change=self.pending_change)


def _delisted(old: RegistryRow, now_ms: int, seen_before: int | None) -> RegistryRow:
    last_seen = old.last_seen if old.missing_since is not None or seen_before is None else seen_before
    return msgspec.structs.replace(
        old, status=DELISTED, is_new=False, delisted_at=now_ms, missing_since=None, last_seen=last_seen)


def is_new(listed_at: int | None, now_ms: int, window_ms: int) -> bool:
    """True while the listing time is within the new-listing window."""
    return listed_at is not None and now_ms - listed_at < window_ms


def is_suspect(present: int, missing: int, active_before: int, max_drop_pct: float) -> bool:
    """A snapshot is suspect when it is empty or lacks more than max_drop_pct percent of the active tokens."""
    if active_before == 0:
        return False
    return present == 0 or 100.0 * missing / active_before > max_drop_pct


def missing_symbols(
    contracts: Mapping[str, Contract], registry: RegistryState, unusable: Iterable[str] = (),
) -> list[str]:
    """Active symbols of the registry that the snapshot lacks, sorted (a symbol listed but unusable is not
    missing: it is there)."""
    active = {s for s, row in registry.rows.items() if row.status == ACTIVE}
    return sorted(active.difference(contracts, unusable))


def is_unchanged(old: RegistryRow, contract: Contract, now_ms: int, window_ms: int) -> bool:
    """True when classify() would write nothing for this contract: checked first, inline, because nearly every
    contract is unchanged (tests/unit/test_diff_property.py holds the two to the same answer)."""
    meta = contract.meta
    return (
        old.status == ACTIVE and old.missing_since is None
        and contract.status == old.contract_status and meta == old.meta
        and (meta[_FIRST_OPEN_AT] is None or meta[_FIRST_OPEN_AT] == old.listed_at)
        and (old.listed_at is not None and now_ms - old.listed_at < window_ms) == old.is_new
    )


class Change(NamedTuple):
    """What one present contract does to the registry: the row to write (if any), its events, its counts."""

    row: RegistryRow | None
    events: list[Event]
    counted: tuple[str, ...]


def classify(
    old: RegistryRow | None, contract: Contract, *, now_ms: int, window_ms: int, baseline: bool,
) -> Change:
    """The full classification of one contract present in the snapshot against its stored row (if any)."""
    symbol, meta = contract.symbol, contract.meta
    first_open = contract.first_open_date
    if old is None:
        # In a baseline we cannot know when a contract without firstOpenDate was listed.
        listed_at = first_open if first_open is not None or baseline else now_ms
        row = RegistryRow(symbol, ACTIVE, contract.status, is_new(listed_at, now_ms, window_ms), listed_at,
                          now_ms, now_ms, None, meta)
        if baseline:
            return Change(row, [], ())
        details = {"type": contract.contract_type, "status": contract.status,
                   "baseCurrency": contract.base_currency, "quoteCurrency": contract.quote_currency,
                   "firstOpenDate": first_open}
        return Change(row, [Event(symbol, "listed", details)], ("listed",))

    listed_at = first_open if first_open is not None else old.listed_at
    new_flag = is_new(listed_at, now_ms, window_ms)
    row = RegistryRow(symbol, ACTIVE, contract.status, new_flag, listed_at, old.first_seen, now_ms, None, meta)
    if old.status == DELISTED:
        details = {"delisted_at": old.delisted_at, "status": contract.status}
        return Change(row, [Event(symbol, "relisted", details)], ("relisted",))

    events: list[Event] = []
    counted: list[str] = []
    skip: frozenset[int] = frozenset()
    if contract.contract_type == PERPETUAL and old.meta[_EXPIRE_AT] is None and meta[_EXPIRE_AT] is not None:
        events.append(Event(symbol, "delisting_scheduled", {"expireDate": meta[_EXPIRE_AT]}))
        counted.append("delisting_scheduled")
        skip = _SCHEDULE_AT
    if contract.status != old.contract_status:
        events.append(Event(symbol, "status_changed", {"from": old.contract_status, "to": contract.status}))
        counted.append("status_changed")
    changed = bool(events) or meta != old.meta
    if meta != old.meta:
        diffs = _param_changes(old.meta, meta, skip)
        if diffs:
            events.append(Event(symbol, "params_changed", {"changes": diffs}))
            counted.append("params_changed")
    if not changed:
        counted.append("unchanged")
    refresh = new_flag != old.is_new or listed_at != old.listed_at or old.missing_since is not None
    return Change(row if changed or refresh else None, events, tuple(counted))


def _param_changes(old: tuple[Any, ...], new: tuple[Any, ...], skip: frozenset[int]) -> dict[str, list[Any]]:
    return {
        METADATA_KEYS[i]: [a, b]
        for i, (a, b) in enumerate(zip(old, new, strict=True))
        if a != b and i not in skip
    }


def build_plan(
    sync_id: str,
    contracts: Mapping[str, Contract],
    registry: RegistryState,
    *,
    now_ms: int,
    window_ms: int,
    fetched: int,
    invalid: int,
    max_drop_pct: float = 20.0,
    still_listed: Iterable[str] = (),
    unconfirmed: Iterable[str] = (),
    unusable: Iterable[str] = (),
) -> Plan:
    """Classify every symbol and build the rows and events of one sync.

    Of the missing symbols, ``still_listed`` ones were found open by a per-symbol check and stay active;
    ``unconfirmed`` ones could not be checked and are delisted only on their second consecutive absence.
    ``unusable`` ones are listed but could not be used (an invalid record, a symbol twice): their rows stay as
    they are.
    """
    rows = registry.rows
    baseline = registry.empty
    active_before = registry.active_count()
    unusable = frozenset(unusable)
    missing = missing_symbols(contracts, registry, unusable)
    suspect = is_suspect(len(contracts), len(missing), active_before, max_drop_pct)
    plan = Plan(sync_id=sync_id, now_ms=now_ms, base_revision=registry.revision, status=SyncStatus.OK,
                seen_before=registry.last_fetched_at, held=sorted(unusable.intersection(rows)))
    warnings: list[str] = []
    if suspect:
        warnings.append(
            f"suspect snapshot: {len(missing)} of {active_before} active contracts missing "
            f"({100.0 * len(missing) / active_before:.0f}% > {max_drop_pct:g}%); nothing delisted"
        )
    contracts, held_flips = _hold_mass_status_flip(plan, contracts, registry, max_drop_pct, warnings)
    if baseline:
        plan.status = SyncStatus.BASELINE
    elif warnings:
        plan.status = SyncStatus.SUSPECT
        plan.warning = "; ".join(warnings)
    plan.held = sorted({*plan.held, *held_flips})
    counts = zero_counts()
    counts["fetched"] = fetched
    counts["invalid"] = invalid
    added = 0
    for symbol, contract in contracts.items():
        old = rows.get(symbol)
        if old is not None and is_unchanged(old, contract, now_ms, window_ms):
            counts["unchanged"] += 1
            continue
        change = classify(old, contract, now_ms=now_ms, window_ms=window_ms, baseline=baseline)
        added += old is None
        if change.row is not None:
            plan.upserts.append(change.row)
        plan.events.extend(change.events)
        for key in change.counted:
            counts[key] += 1
    _absent(plan, counts, missing, rows, suspect=suspect, keep=set(still_listed), unchecked=set(unconfirmed))
    counts["active"] = active_before + added + counts["relisted"] - counts["delisted"]
    plan.counts = counts
    return plan


def _hold_mass_status_flip(
    plan: Plan, contracts: Mapping[str, Contract], registry: RegistryState, max_drop_pct: float,
    warnings: list[str],
) -> tuple[Mapping[str, Contract], list[str]]:
    """Like a mass disappearance, a change of status of more than max_drop_pct percent of the active contracts
    in one answer is suspect: held back (the rows and the cache keep their status) and remembered in
    plan.pending_change; the same change seen by the next sync too is real and applied. Returns the contracts to
    classify (the held ones with their registered status) and the symbols held."""
    rows = registry.rows
    flips = sorted(
        (symbol, old.contract_status, contract.status) for symbol, contract in contracts.items()
        if (old := rows.get(symbol)) is not None and old.status == ACTIVE and contract.status != old.contract_status
    )
    active = registry.active_count()
    if not active or 100.0 * len(flips) / active <= max_drop_pct:
        return contracts, []
    change = orjson.dumps({"kind": "status", "digest": hashlib.sha256(orjson.dumps(flips)).hexdigest()[:16],
                           "count": len(flips)}).decode()
    if change == registry.pending_change:
        return contracts, []  # seen twice in a row: real
    plan.pending_change = change
    warnings.append(
        f"suspect snapshot: {len(flips)} of {active} active contracts change status "
        f"({100.0 * len(flips) / active:.0f}% > {max_drop_pct:g}%); held back until the next sync sees the same"
    )
    held = {symbol: old_status for symbol, old_status, _ in flips}
    kept = {symbol: msgspec.structs.replace(contract, status=held[symbol]) if symbol in held else contract
            for symbol, contract in contracts.items()}
    return kept, list(held)


def _absent(
    plan: Plan, counts: dict[str, int], missing: list[str], rows: Mapping[str, RegistryRow], *, suspect: bool,
    keep: set[str], unchecked: set[str],
) -> None:
    """Delist the missing symbols that may be delisted; keep the others, marking since when they are absent."""
    if suspect:
        plan.missing.extend(missing)
    else:
        for symbol in missing:
            old = rows[symbol]
            if symbol in keep or (symbol in unchecked and old.missing_since is None):
                plan.missing.append(symbol)
                continue
            plan.delist.append(symbol)
            counts["delisted"] += 1
            plan.events.append(Event(symbol, "delisted", {"last_status": old.contract_status}))
    # Kept although absent: remember since when, which freezes their last_seen (see db/writer.py).
    plan.pending = [s for s in plan.missing if rows[s].missing_since is None]
