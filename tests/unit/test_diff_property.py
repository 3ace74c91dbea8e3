"""The diff's shortcut for unchanged contracts agrees with its full classification (hypothesis).

build_plan asks is_unchanged first, because nearly every contract is unchanged; only when it says no does
classify run. The two are kept in step here: whenever the shortcut says unchanged, the full path writes no row,
makes no event and counts the contract unchanged.
"""

from __future__ import annotations

from typing import Any

from hypothesis import find, given, settings
from hypothesis import strategies as st

from tokenwatch.clock import DAY_MS, HOUR_MS
from tokenwatch.domain.contracts import METADATA_KEYS, Contract, parse_contract
from tokenwatch.domain.diff import classify, is_unchanged
from tokenwatch.domain.registry import ACTIVE, DELISTED, RegistryRow

NOW = 1_764_000_000_000
BASE = parse_contract({
    "symbol": "XBTUSDTM", "rootSymbol": "USDT", "type": "FFWCSX", "firstOpenDate": NOW - 400 * DAY_MS,
    "baseCurrency": "XBT", "quoteCurrency": "USDT", "settleCurrency": "USDT", "lotSize": 1, "tickSize": 0.1,
    "multiplier": 0.001, "maxLeverage": 100, "status": "Open",
})
FIRST_OPEN = METADATA_KEYS.index("firstOpenDate")
EXPIRE = METADATA_KEYS.index("expireDate")
TICK = METADATA_KEYS.index("tickSize")
TYPE = METADATA_KEYS.index("type")

times = st.one_of(st.none(), st.sampled_from([NOW - 400 * DAY_MS, NOW - 2 * DAY_MS, NOW - HOUR_MS, NOW]))


@st.composite
def metas(draw: st.DrawFn) -> tuple[Any, ...]:
    """BASE's metadata with some of the fields the classification looks at moved."""
    meta = list(BASE.meta)
    meta[FIRST_OPEN] = draw(times)
    meta[EXPIRE] = draw(st.sampled_from([None, NOW + 7 * DAY_MS]))
    meta[TICK] = draw(st.sampled_from([0.1, 0.5]))
    meta[TYPE] = draw(st.sampled_from(["FFWCSX", "FFICSX"]))
    return tuple(meta)


@st.composite
def cases(draw: st.DrawFn) -> tuple[RegistryRow, Contract, int]:
    """A stored row, the contract as the exchange now lists it, and the new-listing window."""
    old_meta = draw(metas())
    new_meta = old_meta if draw(st.booleans()) else draw(metas())
    status = draw(st.sampled_from(["Open", "Paused"]))
    old = RegistryRow(
        symbol="XBTUSDTM", status=draw(st.sampled_from([ACTIVE, DELISTED])),
        contract_status=status if draw(st.booleans()) else draw(st.sampled_from(["Open", "Paused", "Closed"])),
        is_new=draw(st.booleans()), listed_at=draw(times), first_seen=NOW - 500 * DAY_MS, last_seen=NOW - 60_000,
        delisted_at=draw(st.one_of(st.none(), st.just(NOW - DAY_MS))), meta=old_meta,
        missing_since=draw(st.one_of(st.none(), st.just(NOW - 60_000))),
    )
    contract = Contract(symbol="XBTUSDTM", status=status, meta=new_meta, raw=b"{}")
    return old, contract, draw(st.sampled_from([HOUR_MS, 72 * HOUR_MS, 30 * DAY_MS]))


@settings(max_examples=1_000, deadline=None)
@given(cases())
def test_whenever_the_shortcut_says_unchanged_the_full_path_writes_nothing(
    case: tuple[RegistryRow, Contract, int],
) -> None:
    old, contract, window = case
    change = classify(old, contract, now_ms=NOW, window_ms=window, baseline=False)
    if is_unchanged(old, contract, NOW, window):
        assert change.row is None
        assert change.events == []
        assert change.counted == ("unchanged",)


def test_the_cases_reach_both_answers_of_the_shortcut() -> None:
    # A property that never met an unchanged contract would prove nothing: find one of each (else this raises).
    def shortcut(case: tuple[RegistryRow, Contract, int]) -> bool:
        return is_unchanged(case[0], case[1], NOW, case[2])

    assert shortcut(find(cases(), shortcut, settings=settings(max_examples=5_000)))
    assert not shortcut(find(cases(), lambda case: not shortcut(case)))
