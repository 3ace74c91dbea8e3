"""build_plan against small hand-built registries: one test per diff class, plus Plan's own helpers."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from tokenwatch.clock import DAY_MS, HOUR_MS
from tokenwatch.domain.contracts import METADATA_KEYS, Contract, parse_contract
from tokenwatch.domain.diff import Plan, build_plan, is_new, is_suspect, missing_symbols
from tokenwatch.domain.registry import ACTIVE, DELISTED, RegistryHead, RegistryRow, RegistryState

WINDOW_MS = 72 * HOUR_MS
NOW = 1_764_000_000_000  # 2025-11-24, a fixed clock
LONG_AGO = NOW - 400 * DAY_MS
EXPIRY = NOW + 7 * DAY_MS


def contract(symbol: str = "XBTUSDTM", **overrides: Any) -> Contract:
    """A valid USDT perpetual; keyword arguments override KuCoin keys (None removes nothing, it sets null)."""
    base = symbol.removesuffix("USDTM") or "XBT"
    obj: dict[str, Any] = {
        "symbol": symbol, "rootSymbol": "USDT", "type": "FFWCSX", "firstOpenDate": LONG_AGO,
        "expireDate": None, "settleDate": None, "baseCurrency": base, "quoteCurrency": "USDT",
        "settleCurrency": "USDT", "maxOrderQty": 1_000_000, "maxPrice": 1_000_000.0, "lotSize": 1,
        "tickSize": 0.1, "indexPriceTickSize": 0.01, "multiplier": 0.001, "initialMargin": 0.01,
        "maintainMargin": 0.005, "makerFeeRate": 0.0002, "takerFeeRate": 0.0006, "maxLeverage": 100,
        "isInverse": False, "indexSymbol": f".K{base}USDT", "settlementSymbol": None, "status": "Open",
        "markPrice": 100.0, "indexPrice": 100.1, "lastTradePrice": 100.2, "fundingFeeRate": 0.0001,
        "openInterest": "1000", "volumeOf24h": 12.5, "nextFundingRateTime": 1_000_000,
    }
    obj.update(overrides)
    return parse_contract(obj)


def stored(
    c: Contract, *, status: str = ACTIVE, is_new: bool = False, listed_at: int | None = LONG_AGO,
    delisted_at: int | None = None, first_seen: int = LONG_AGO, last_seen: int = NOW - 60_000,
    missing_since: int | None = None,
) -> RegistryRow:
    """The registry row a previous sync would have written for c."""
    return RegistryRow(
        symbol=c.symbol, status=status, contract_status=c.status, is_new=is_new, listed_at=listed_at,
        first_seen=first_seen, last_seen=last_seen, delisted_at=delisted_at, meta=c.meta,
        missing_since=missing_since,
    )


def registry(*rows: RegistryRow, revision: int = 5) -> RegistryState:
    return RegistryState(RegistryHead(revision, "sync-0", NOW - 60_000), {row.symbol: row for row in rows})


def plan_for(contracts: list[Contract], reg: RegistryState, *, now: int = NOW, **kwargs: Any) -> Plan:
    return build_plan(
        "sync-1", {c.symbol: c for c in contracts}, reg, now_ms=now, window_ms=WINDOW_MS,
        fetched=len(contracts), invalid=0, **kwargs,
    )


def events(plan: Plan) -> list[tuple[str, str]]:
    return [(e.symbol, e.event_type) for e in plan.events]


def assert_active_count_matches(plan: Plan, reg: RegistryState) -> None:
    """counts['active'] is the number of active rows once the plan is applied."""
    after = plan.apply_to(reg)
    assert plan.counts["active"] == sum(1 for row in after.rows.values() if row.status == ACTIVE)


def meta_of(row: RegistryRow, key: str) -> Any:
    return row.meta[METADATA_KEYS.index(key)]


SYMBOLS = ("XBTUSDTM", "ETHUSDTM", "SOLUSDTM", "XRPUSDTM", "ADAUSDTM")


# ---- baseline ----------------------------------------------------------------------------------------------

def test_baseline_upserts_everything_and_records_no_events() -> None:
    contracts = [contract(s) for s in SYMBOLS]
    reg = RegistryState(RegistryHead(0), {})
    plan = build_plan(
        "sync-0", {c.symbol: c for c in contracts}, reg, now_ms=NOW, window_ms=WINDOW_MS, fetched=7, invalid=2,
    )
    assert plan.status == "baseline"
    assert plan.base_revision == 0
    assert plan.events == []
    assert plan.delist == [] and plan.missing == [] and plan.warning is None
    assert [row.symbol for row in plan.upserts] == list(SYMBOLS)
    for row in plan.upserts:
        assert (row.status, row.contract_status, row.delisted_at) == (ACTIVE, "Open", None)
        assert (row.first_seen, row.last_seen, row.listed_at) == (NOW, NOW, LONG_AGO)
        assert row.is_new is False
    assert plan.counts["active"] == 5
    assert (plan.counts["fetched"], plan.counts["invalid"], plan.counts["listed"]) == (7, 2, 0)
    assert_active_count_matches(plan, reg)


def test_baseline_contract_without_first_open_date_is_not_new() -> None:
    plan = plan_for([contract(firstOpenDate=None)], registry(revision=0))
    (row,) = plan.upserts
    assert row.listed_at is None
    assert row.is_new is False


def test_baseline_contract_opened_within_the_window_is_new() -> None:
    plan = plan_for([contract(firstOpenDate=NOW - HOUR_MS)], registry(revision=0))
    assert plan.upserts[0].is_new is True
    assert plan.events == []


# ---- listed, delisted, relisted ----------------------------------------------------------------------------

def test_listed_records_an_event_and_upserts_only_the_new_row() -> None:
    old = contract("XBTUSDTM")
    new = contract("PEPEUSDTM", firstOpenDate=NOW - HOUR_MS)
    reg = registry(stored(old))
    plan = plan_for([old, new], reg)
    assert plan.status == "ok"
    assert events(plan) == [("PEPEUSDTM", "listed")]
    assert plan.events[0].details == {
        "type": "FFWCSX", "status": "Open", "baseCurrency": "PEPE", "quoteCurrency": "USDT",
        "firstOpenDate": NOW - HOUR_MS,
    }
    (row,) = plan.upserts
    assert (row.symbol, row.status, row.is_new, row.listed_at, row.first_seen) == (
        "PEPEUSDTM", ACTIVE, True, NOW - HOUR_MS, NOW,
    )
    assert (plan.counts["listed"], plan.counts["unchanged"], plan.counts["active"]) == (1, 1, 2)
    assert_active_count_matches(plan, reg)


def test_listed_without_first_open_date_counts_as_listed_now() -> None:
    plan = plan_for([contract("XBTUSDTM"), contract("NEWUSDTM", firstOpenDate=None)], registry(stored(contract())))
    (row,) = plan.upserts
    assert (row.listed_at, row.is_new) == (NOW, True)
    assert plan.events[0].details["firstOpenDate"] is None


def test_delisted_marks_the_missing_symbol_and_records_its_last_status() -> None:
    rows = [stored(contract(s)) for s in SYMBOLS]
    rows[-1] = stored(contract(SYMBOLS[-1], status="Paused"))
    reg = registry(*rows)
    plan = plan_for([contract(s) for s in SYMBOLS[:-1]], reg)  # 1 of 5 gone: 20 %, not above the bound
    assert plan.status == "ok"
    assert plan.delist == ["ADAUSDTM"]
    assert events(plan) == [("ADAUSDTM", "delisted")]
    assert plan.events[0].details == {"last_status": "Paused"}
    assert plan.upserts == []
    assert (plan.counts["delisted"], plan.counts["active"], plan.counts["unchanged"]) == (1, 4, 4)
    assert_active_count_matches(plan, reg)


def test_relisted_brings_a_delisted_row_back() -> None:
    c = contract("LUNAUSDTM")
    gone = stored(c, status=DELISTED, delisted_at=NOW - 10 * DAY_MS, first_seen=LONG_AGO)
    reg = registry(stored(contract()), gone)
    plan = plan_for([contract(), c], reg)
    assert events(plan) == [("LUNAUSDTM", "relisted")]
    assert plan.events[0].details == {"delisted_at": NOW - 10 * DAY_MS, "status": "Open"}
    (row,) = plan.upserts
    assert (row.status, row.delisted_at, row.first_seen, row.last_seen) == (ACTIVE, None, LONG_AGO, NOW)
    assert (plan.counts["relisted"], plan.counts["listed"], plan.counts["active"]) == (1, 0, 2)
    assert_active_count_matches(plan, reg)


def test_missing_symbols_ignores_rows_already_delisted() -> None:
    reg = registry(stored(contract("AUSDTM")), stored(contract("BUSDTM"), status=DELISTED, delisted_at=NOW))
    assert missing_symbols({}, reg) == ["AUSDTM"]


# ---- scheduled delisting -----------------------------------------------------------------------------------

def scheduled(symbol: str = "XBTUSDTM", **overrides: Any) -> Contract:
    return contract(
        symbol, expireDate=EXPIRY, settleDate=EXPIRY, settlementSymbol=".KXBTUSDT30", **overrides,
    )


def test_perpetual_with_a_new_expire_date_is_delisting_scheduled_without_params_changed() -> None:
    reg = registry(stored(contract()))
    plan = plan_for([scheduled()], reg)
    assert events(plan) == [("XBTUSDTM", "delisting_scheduled")]
    assert plan.events[0].details == {"expireDate": EXPIRY}
    assert (plan.counts["delisting_scheduled"], plan.counts["params_changed"]) == (1, 0)
    (row,) = plan.upserts
    assert (meta_of(row, "expireDate"), meta_of(row, "settleDate")) == (EXPIRY, EXPIRY)
    assert meta_of(row, "settlementSymbol") == ".KXBTUSDT30"
    assert row.status == ACTIVE  # scheduled, not gone


def test_other_param_changes_in_the_scheduling_sync_are_still_reported() -> None:
    plan = plan_for([scheduled(tickSize=0.5)], registry(stored(contract())))
    assert events(plan) == [("XBTUSDTM", "delisting_scheduled"), ("XBTUSDTM", "params_changed")]
    assert plan.events[1].details == {"changes": {"tickSize": [0.1, 0.5]}}


def test_a_scheduled_delisting_is_reported_once() -> None:
    plan = plan_for([scheduled()], registry(stored(scheduled())))
    assert plan.events == []
    assert plan.upserts == []
    assert plan.counts["unchanged"] == 1


def test_expiring_future_with_expire_date_is_not_delisting_scheduled() -> None:
    quarterly = contract("XBTMH26", type="FFICSX", expireDate=EXPIRY, settleDate=EXPIRY)
    listed = plan_for([contract(), quarterly], registry(stored(contract())))
    assert events(listed) == [("XBTMH26", "listed")]
    assert listed.counts["delisting_scheduled"] == 0

    unchanged = plan_for([quarterly], registry(stored(quarterly)))
    assert unchanged.events == []
    assert unchanged.counts["unchanged"] == 1

    no_expiry_before = contract("XBTMH26", type="FFICSX")
    changed = plan_for([quarterly], registry(stored(no_expiry_before)))
    assert events(changed) == [("XBTMH26", "params_changed")]
    assert changed.counts["delisting_scheduled"] == 0


# ---- status and parameter changes --------------------------------------------------------------------------

def test_status_change_open_to_paused() -> None:
    reg = registry(stored(contract()))
    plan = plan_for([contract(status="Paused")], reg, max_drop_pct=100)  # one of one is a mass change otherwise
    assert events(plan) == [("XBTUSDTM", "status_changed")]
    assert plan.events[0].details == {"from": "Open", "to": "Paused"}
    (row,) = plan.upserts
    assert (row.contract_status, row.status) == ("Paused", ACTIVE)
    assert (plan.counts["status_changed"], plan.counts["params_changed"], plan.counts["unchanged"]) == (1, 0, 0)
    assert_active_count_matches(plan, reg)


def test_params_changed_records_old_and_new_value() -> None:
    plan = plan_for([contract(tickSize=0.05)], registry(stored(contract(tickSize=0.1))))
    assert events(plan) == [("XBTUSDTM", "params_changed")]
    assert plan.events[0].details["changes"] == {"tickSize": [0.1, 0.05]}
    (row,) = plan.upserts
    assert meta_of(row, "tickSize") == 0.05
    assert row.first_seen == LONG_AGO
    assert plan.counts["params_changed"] == 1


def test_reordered_index_sources_are_not_a_change() -> None:
    before = contract(sourceExchanges=["okex", "binance"])
    plan = plan_for([contract(sourceExchanges=["binance", "okex"])], registry(stored(before)))
    assert plan.events == [] and plan.upserts == []


def test_unchanged_contract_is_neither_upserted_nor_reported() -> None:
    plan = plan_for([contract()], registry(stored(contract())))
    assert (plan.status, plan.events, plan.upserts, plan.delist) == ("ok", [], [], [])
    assert plan.counts["unchanged"] == 1


def test_market_data_changes_are_unchanged() -> None:
    moved = contract(
        markPrice=250.0, indexPrice=251.0, lastTradePrice=249.5, fundingFeeRate=-0.0003, openInterest="99",
        volumeOf24h=1e6, nextFundingRateTime=5, priceChgPct=0.12,
    )
    plan = plan_for([moved], registry(stored(contract())))
    assert plan.events == [] and plan.upserts == []
    assert plan.counts["unchanged"] == 1


# ---- the new-listing window --------------------------------------------------------------------------------

def test_is_new_within_the_window_only() -> None:
    assert is_new(NOW - HOUR_MS, NOW, WINDOW_MS) is True
    assert is_new(NOW - WINDOW_MS + 1, NOW, WINDOW_MS) is True
    assert is_new(NOW - WINDOW_MS, NOW, WINDOW_MS) is False
    assert is_new(None, NOW, WINDOW_MS) is False


def test_is_new_flips_false_after_the_window_with_an_upsert_and_no_event() -> None:
    listed_at = NOW - 73 * HOUR_MS
    c = contract(firstOpenDate=listed_at)
    plan = plan_for([c], registry(stored(c, is_new=True, listed_at=listed_at)))
    assert plan.events == []
    (row,) = plan.upserts
    assert row.is_new is False
    assert row.meta == c.meta
    assert plan.counts["unchanged"] == 1


def test_is_new_stays_true_within_the_window_without_an_upsert() -> None:
    listed_at = NOW - HOUR_MS
    c = contract(firstOpenDate=listed_at)
    plan = plan_for([c], registry(stored(c, is_new=True, listed_at=listed_at)))
    assert plan.upserts == [] and plan.events == []


def test_a_wider_window_makes_an_unchanged_contract_new_again() -> None:
    listed_at = NOW - 100 * HOUR_MS  # outside the 72 h window, inside a week
    c = contract(firstOpenDate=listed_at)
    reg = registry(stored(c, is_new=False, listed_at=listed_at))
    plan = build_plan("sync-1", {c.symbol: c}, reg, now_ms=NOW, window_ms=168 * HOUR_MS, fetched=1, invalid=0)
    (row,) = plan.upserts
    assert row.is_new is True and plan.events == []
    assert plan.counts["unchanged"] == 1


def test_a_stored_listing_time_that_disagrees_with_first_open_date_is_corrected() -> None:
    c = contract(firstOpenDate=LONG_AGO)
    plan = plan_for([c], registry(stored(c, listed_at=LONG_AGO - DAY_MS)))  # e.g. written by an older build
    (row,) = plan.upserts
    assert row.listed_at == LONG_AGO and plan.events == []


# ---- suspect snapshots -------------------------------------------------------------------------------------

def test_empty_snapshot_is_suspect_and_delists_nothing() -> None:
    reg = registry(*(stored(contract(s)) for s in SYMBOLS[:3]))
    plan = plan_for([], reg)
    assert plan.status == "suspect"
    assert plan.delist == [] and plan.events == []
    assert plan.missing == sorted(SYMBOLS[:3])
    assert plan.warning is not None
    assert "3 of 3" in plan.warning
    assert (plan.counts["delisted"], plan.counts["active"]) == (0, 3)
    assert_active_count_matches(plan, reg)


def test_too_many_missing_is_suspect() -> None:
    symbols = [f"C{i}USDTM" for i in range(10)]
    reg = registry(*(stored(contract(s)) for s in symbols))
    plan = plan_for([contract(s) for s in symbols[3:]], reg)  # 30 % gone, bound is 20 %
    assert plan.status == "suspect"
    assert plan.delist == []
    assert plan.missing == symbols[:3]
    assert plan.warning is not None
    assert "3 of 10" in plan.warning and "30%" in plan.warning
    assert plan.counts["active"] == 10
    assert_active_count_matches(plan, reg)


def test_max_drop_pct_raises_the_bound() -> None:
    symbols = [f"C{i}USDTM" for i in range(10)]
    reg = registry(*(stored(contract(s)) for s in symbols))
    plan = plan_for([contract(s) for s in symbols[3:]], reg, max_drop_pct=50.0)
    assert plan.status == "ok"
    assert plan.delist == symbols[:3]
    assert plan.missing == []


def test_still_listed_keeps_a_missing_symbol_active() -> None:
    reg = registry(*(stored(contract(s)) for s in SYMBOLS))
    plan = plan_for([contract(s) for s in SYMBOLS[:-1]], reg, still_listed=["ADAUSDTM"])
    assert plan.status == "ok"
    assert plan.delist == [] and plan.events == []
    assert plan.missing == ["ADAUSDTM"]
    assert (plan.counts["delisted"], plan.counts["active"]) == (0, 5)
    assert plan.apply_to(reg).rows["ADAUSDTM"].status == ACTIVE


def test_is_suspect_bounds() -> None:
    assert is_suspect(present=0, missing=0, active_before=0, max_drop_pct=20.0) is False  # baseline
    assert is_suspect(present=0, missing=3, active_before=3, max_drop_pct=20.0) is True
    assert is_suspect(present=8, missing=2, active_before=10, max_drop_pct=20.0) is False
    assert is_suspect(present=7, missing=3, active_before=10, max_drop_pct=20.0) is True


# ---- absences that the per-symbol check could not confirm --------------------------------------------------

def test_first_unconfirmed_absence_is_pending_not_delisted() -> None:
    reg = registry(*(stored(contract(s)) for s in SYMBOLS))
    plan = plan_for([contract(s) for s in SYMBOLS[:-1]], reg, unconfirmed=["ADAUSDTM"])
    assert plan.status == "ok"
    assert plan.delist == [] and plan.events == []
    assert plan.missing == ["ADAUSDTM"]
    assert plan.pending == ["ADAUSDTM"]
    assert (plan.counts["delisted"], plan.counts["active"]) == (0, 5)
    after = plan.apply_to(reg).rows["ADAUSDTM"]
    assert (after.status, after.missing_since) == (ACTIVE, NOW)


def test_second_unconfirmed_absence_is_a_delisting() -> None:
    rows = [stored(contract(s)) for s in SYMBOLS[:-1]]
    reg = registry(*rows, stored(contract("ADAUSDTM"), missing_since=NOW - 60_000))
    plan = plan_for([contract(s) for s in SYMBOLS[:-1]], reg, unconfirmed=["ADAUSDTM"])
    assert plan.delist == ["ADAUSDTM"]
    assert plan.pending == [] and plan.missing == []
    assert events(plan) == [("ADAUSDTM", "delisted")]
    after = plan.apply_to(reg).rows["ADAUSDTM"]
    assert (after.status, after.delisted_at, after.missing_since) == (DELISTED, NOW, None)


def test_reappearing_after_an_unconfirmed_absence_clears_missing_since() -> None:
    reg = registry(stored(contract(), missing_since=NOW - 60_000))
    plan = plan_for([contract()], reg)
    assert plan.events == []
    (row,) = plan.upserts
    assert row.missing_since is None
    assert row.status == ACTIVE


# ---- Plan helpers ------------------------------------------------------------------------------------------

def busy_plan() -> tuple[Plan, RegistryState]:
    """A plan with one of each row-changing class (2 of 7 absent, under a 50 % bound), on revision 5."""
    reg = registry(
        stored(contract("XBTUSDTM")), stored(contract("ETHUSDTM")), stored(contract("SOLUSDTM")),
        stored(contract("XRPUSDTM")), stored(contract("ADAUSDTM")), stored(contract("DOGEUSDTM")),
        stored(contract("LUNAUSDTM"), status=DELISTED, delisted_at=NOW - DAY_MS), stored(contract("BNBUSDTM")),
    )
    snapshot = [
        scheduled("XBTUSDTM"), contract("ETHUSDTM", tickSize=0.01), contract("SOLUSDTM", status="Paused"),
        contract("XRPUSDTM"), contract("ADAUSDTM"), contract("LUNAUSDTM"),
        contract("NEWUSDTM", firstOpenDate=NOW - HOUR_MS),
    ]
    return plan_for(snapshot, reg, unconfirmed=["BNBUSDTM"], max_drop_pct=50.0), reg


def test_busy_plan_classifies_every_symbol() -> None:
    plan, reg = busy_plan()
    assert sorted(events(plan)) == [
        ("DOGEUSDTM", "delisted"), ("ETHUSDTM", "params_changed"), ("LUNAUSDTM", "relisted"),
        ("NEWUSDTM", "listed"), ("SOLUSDTM", "status_changed"), ("XBTUSDTM", "delisting_scheduled"),
    ]
    assert plan.counts["unchanged"] == 2
    assert plan.pending == ["BNBUSDTM"]
    assert_active_count_matches(plan, reg)


def test_plan_round_trips_through_json() -> None:
    plan, _ = busy_plan()
    assert plan.delist and plan.pending and plan.missing and len(plan.events) == 6
    again = Plan.from_json(orjson.loads(orjson.dumps(plan.to_json())))
    assert again == plan
    assert all(isinstance(row.is_new, bool) and isinstance(row.meta, tuple) for row in again.upserts)


@pytest.mark.parametrize("warning", [None, "suspect snapshot: 3 of 10"])
def test_plan_round_trip_keeps_missing_and_warning(warning: str | None) -> None:
    plan = Plan("s", NOW, 3, "suspect", missing=["AUSDTM"], warning=warning, counts={"active": 1})
    assert Plan.from_json(orjson.loads(orjson.dumps(plan.to_json()))) == plan


def test_apply_to_gives_the_next_revision_with_delisted_rows() -> None:
    plan, reg = busy_plan()
    after = plan.apply_to(reg)
    assert after.revision == reg.revision + 1
    assert after.last_fetched_at == NOW
    gone = after.rows["DOGEUSDTM"]
    assert (gone.status, gone.delisted_at, gone.is_new) == (DELISTED, NOW, False)
    assert gone.meta == reg.rows["DOGEUSDTM"].meta
    assert after.rows["LUNAUSDTM"].status == ACTIVE
    assert after.rows["SOLUSDTM"].contract_status == "Paused"
    assert after.rows["NEWUSDTM"].is_new is True
    assert after.rows["XRPUSDTM"] is reg.rows["XRPUSDTM"]
    assert after.rows["BNBUSDTM"].missing_since == NOW
    # The registry the plan was built on is left as it was.
    assert reg.rows["DOGEUSDTM"].status == ACTIVE
    assert "NEWUSDTM" not in reg.rows


def test_a_listed_but_unusable_symbol_is_held_as_it_is_not_missing() -> None:
    held, gone = contract("XBTUSDTM"), contract("ETHUSDTM")
    reg = registry(stored(held), stored(gone), stored(contract("SOLUSDTM")))
    plan = plan_for([contract("SOLUSDTM")], reg, unusable=["XBTUSDTM"], max_drop_pct=50)
    assert plan.held == ["XBTUSDTM"]
    assert plan.delist == ["ETHUSDTM"] and "XBTUSDTM" not in plan.missing + plan.pending
    assert events(plan) == [("ETHUSDTM", "delisted")]
    assert all(row.symbol != "XBTUSDTM" for row in plan.upserts)
    assert plan.apply_to(reg).rows["XBTUSDTM"] == reg.rows["XBTUSDTM"]


def test_a_mass_status_flip_is_held_then_applied_when_the_next_sync_sees_the_same() -> None:
    reg = registry(*(stored(contract(s)) for s in SYMBOLS))
    paused = [contract(s, status="Paused") for s in SYMBOLS]
    held = plan_for(paused, reg)
    assert (held.status, held.events, held.upserts, held.held) == ("suspect", [], [], sorted(SYMBOLS))
    assert held.counts["status_changed"] == 0 and held.pending_change is not None
    assert held.warning == ("suspect snapshot: 5 of 5 active contracts change status (100% > 20%); held back "
                            "until the next sync sees the same")
    after = held.apply_to(reg)
    assert {row.contract_status for row in after.rows.values()} == {"Open"}
    applied = plan_for(paused, after)
    assert (applied.status, applied.counts["status_changed"], applied.pending_change) == ("ok", 5, None)
    assert {row.contract_status for row in applied.apply_to(after).rows.values()} == {"Paused"}
    other = plan_for([contract(s, status="Closed") for s in SYMBOLS], after)  # another change: held afresh
    assert (other.status, other.counts["status_changed"]) == ("suspect", 0)
    assert other.pending_change != held.pending_change


def test_a_status_flip_under_the_bound_is_applied_at_once() -> None:
    reg = registry(*(stored(contract(s)) for s in SYMBOLS))
    plan = plan_for([contract(SYMBOLS[0], status="Paused"), *(contract(s) for s in SYMBOLS[1:])], reg)
    assert (plan.status, plan.counts["status_changed"], plan.pending_change) == ("ok", 1, None)
