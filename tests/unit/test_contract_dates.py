"""Which dates a listed contract can plausibly have (domain.contracts.EARLIEST_MS and the bounds after it)."""

from __future__ import annotations

from typing import Any

import pytest

from tokenwatch.clock import DAY_MS
from tokenwatch.domain.contracts import EARLIEST_MS, InvalidContract, ParseMemo, parse_contracts

NOW = 1_796_300_000_000  # 2026-12
YEAR_MS = 365 * DAY_MS


def contract(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "symbol": "XBTUSDTM", "type": "FFWCSX", "status": "Open", "baseCurrency": "XBT", "quoteCurrency": "USDT",
        "settleCurrency": "USDT", "firstOpenDate": NOW - 400 * DAY_MS, "expireDate": None, "settleDate": None,
    }
    return {**base, **overrides}


def judged(item: dict[str, Any], now: int | None = NOW) -> str | None:
    """None when the contract is accepted, else the reason it is refused."""
    result = parse_contracts([item], now_ms=now)
    return None if result.contracts else result.reasons[0]


@pytest.mark.parametrize(("overrides", "reason"), [
    ({"expireDate": 978_307_200_000}, "expireDate is before 2015"),  # 2001: no delisting_scheduled out of it
    ({"firstOpenDate": EARLIEST_MS - 1}, "firstOpenDate is before 2015"),
    ({"firstOpenDate": NOW + 10 * YEAR_MS}, "firstOpenDate is too far ahead"),  # would be "new" for ten years
    ({"firstOpenDate": NOW + 91 * DAY_MS}, "firstOpenDate is too far ahead"),
    ({"expireDate": NOW + 6 * YEAR_MS}, "expireDate is too far ahead"),
    ({"settleDate": NOW + 6 * YEAR_MS}, "settleDate is too far ahead"),
    ({"preMarketToPerpDate": NOW + 2 * YEAR_MS}, "preMarketToPerpDate is too far ahead"),
    ({"firstOpenDate": NOW - 10 * DAY_MS, "expireDate": NOW - 20 * DAY_MS}, "expireDate is before firstOpenDate"),
])
def test_implausible_dates_are_refused(overrides: dict[str, Any], reason: str) -> None:
    refused = judged(contract(**overrides))
    assert refused is not None and reason in refused


@pytest.mark.parametrize("overrides", [
    {"firstOpenDate": EARLIEST_MS},
    {"firstOpenDate": NOW + 89 * DAY_MS},  # announced, opening within three months
    {"expireDate": NOW + 7 * DAY_MS, "settleDate": NOW + 7 * DAY_MS},  # a scheduled delisting
    {"type": "FFICSX", "expireDate": NOW + 180 * DAY_MS},  # a quarterly future
    {"expireDate": NOW - DAY_MS},  # expired yesterday, still settling
    {"firstOpenDate": None},
])
def test_plausible_dates_are_accepted(overrides: dict[str, Any]) -> None:
    assert judged(contract(**overrides)) is None


def test_without_a_clock_only_the_fixed_bounds_apply() -> None:
    assert judged(contract(firstOpenDate=NOW + 10 * YEAR_MS), now=None) is None
    assert judged(contract(expireDate=978_307_200_000), now=None) is not None


def test_a_contract_found_plausible_stays_so_as_time_passes() -> None:
    # What lets the memo reuse a result: the bounds only widen with time.
    memo = ParseMemo()
    ahead = contract(firstOpenDate=NOW + 80 * DAY_MS)
    assert parse_contracts([ahead], memo=memo, now_ms=NOW).contracts
    assert parse_contracts([ahead], memo=memo, now_ms=NOW + 30 * DAY_MS).contracts
    assert not parse_contracts([ahead], now_ms=NOW - 30 * DAY_MS).contracts  # a month earlier, it would not be


def test_invalid_contract_is_what_the_parser_raises_for_a_date() -> None:
    from tokenwatch.domain.contracts import parse_contract

    with pytest.raises(InvalidContract, match="before 2015"):
        parse_contract(contract(settleDate=EARLIEST_MS - DAY_MS))
