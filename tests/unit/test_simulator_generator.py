"""The contract generator: deterministic, distinct, parseable, realistic mix; market ticks touch market data only."""

from __future__ import annotations

import copy
import random
import re
from collections import Counter
from typing import Any

import orjson
import pytest

from tokenwatch.domain.contracts import MARKET_KEYS, parse_contract, parse_contracts
from tokenwatch.simulator import generate_contracts, market_tick, new_contract
from tokenwatch.simulator.generator import DAY_MS, REFERENCE_NOW_MS, base_name

NOW_MS = 1_795_000_000_000  # 2026-11-18, a fixed clock for the tests

# Every key of the 2025 contract shape the brief asks for.
EXPECTED_KEYS = {
    "symbol", "rootSymbol", "type", "firstOpenDate", "expireDate", "settleDate", "baseCurrency",
    "quoteCurrency", "settleCurrency", "maxOrderQty", "maxPrice", "lotSize", "tickSize", "indexPriceTickSize",
    "multiplier", "initialMargin", "maintainMargin", "maxRiskLimit", "minRiskLimit", "riskStep",
    "makerFeeRate", "takerFeeRate", "takerFixFee", "makerFixFee", "settlementFee", "isDeleverage", "isQuanto",
    "isInverse", "markMethod", "fairMethod", "fundingBaseSymbol", "fundingQuoteSymbol", "fundingRateSymbol",
    "indexSymbol", "settlementSymbol", "status", "fundingFeeRate", "predictedFundingFeeRate",
    "fundingRateGranularity", "openInterest", "turnoverOf24h", "volumeOf24h", "markPrice", "indexPrice",
    "lastTradePrice", "nextFundingRateTime", "nextFundingRateDateTime", "maxLeverage", "sourceExchanges",
    "premiumsSymbol1M", "premiumsSymbol8H", "fundingBaseSymbol1M", "fundingQuoteSymbol1M", "lowPrice",
    "highPrice", "priceChgPct", "priceChg", "k", "m", "f", "mmrLimit", "mmrLevConstant", "supportCross",
    "buyLimit", "sellLimit", "marketStage", "displaySymbol",
}
QUARTERLY_RE = re.compile(r"^[A-Z0-9]+M[HMUZ]\d\d$")


@pytest.fixture(scope="module")
def contracts() -> list[dict[str, Any]]:
    return generate_contracts(5000, seed=11, now_ms=NOW_MS)


def _by_kind(items: list[dict[str, Any]]) -> Counter[str]:
    kinds: Counter[str] = Counter()
    for c in items:
        if c["type"] == "FFICSX":
            kinds["quarterly"] += 1
        elif c["isInverse"]:
            kinds["inverse"] += 1
        else:
            kinds[c["quoteCurrency"]] += 1
    return kinds


def test_same_seed_gives_identical_output_and_another_seed_does_not() -> None:
    first = generate_contracts(800, seed=5, now_ms=NOW_MS)
    again = generate_contracts(800, seed=5, now_ms=NOW_MS)
    other = generate_contracts(800, seed=6, now_ms=NOW_MS)
    assert orjson.dumps(first) == orjson.dumps(again)
    assert orjson.dumps(first) != orjson.dumps(other)
    # Without now_ms a fixed reference clock is used: no dependency on the wall clock.
    assert generate_contracts(50, seed=5) == generate_contracts(50, seed=5)
    assert all(c["firstOpenDate"] <= REFERENCE_NOW_MS - 30 * DAY_MS for c in generate_contracts(50, seed=5))


def test_n_distinct_symbols(contracts: list[dict[str, Any]]) -> None:
    assert len(contracts) == 5000
    assert len({c["symbol"] for c in contracts}) == 5000
    assert generate_contracts(0) == []
    assert len(generate_contracts(1)) == 1
    with pytest.raises(ValueError):
        generate_contracts(-1)


def test_every_contract_passes_the_parser(contracts: list[dict[str, Any]]) -> None:
    result = parse_contracts(contracts)
    assert result.invalid == 0, result.reasons
    assert len(result.contracts) == len(contracts)
    for c in contracts[:200]:
        assert parse_contract(c).symbol == c["symbol"]


def test_shape_matches_the_2025_capture(contracts: list[dict[str, Any]]) -> None:
    for c in contracts:
        assert set(c) >= EXPECTED_KEYS, EXPECTED_KEYS - set(c)
        assert isinstance(c["openInterest"], str) and c["openInterest"].isdigit()
        assert c["status"] == "Open"
        assert c["marketStage"] == "NORMAL"
        assert isinstance(c["sourceExchanges"], list) and c["sourceExchanges"]
        assert c["baseCurrency"] != "BTC"
        if c["type"] == "FFWCSX":
            granularity = c["fundingRateGranularity"]
            assert granularity in (4 * 3_600_000, 8 * 3_600_000)
            # nextFundingRateTime is a countdown, nextFundingRateDateTime the absolute time.
            assert 0 < c["nextFundingRateTime"] <= granularity
            assert c["nextFundingRateDateTime"] == NOW_MS + c["nextFundingRateTime"]
    # Every contract owns its list: mutating one must not leak into another.
    contracts_copy = copy.deepcopy(contracts[:2])
    contracts_copy[0]["sourceExchanges"].append("x")
    assert "x" not in contracts_copy[1]["sourceExchanges"]
    assert contracts[0]["symbol"] == "XBTUSDTM"
    assert contracts[0]["baseCurrency"] == "XBT"


def test_type_mix_is_like_the_real_exchange(contracts: list[dict[str, Any]]) -> None:
    kinds = _by_kind(contracts)
    total = len(contracts)
    assert kinds["USDT"] / total > 0.85
    assert 0.02 < kinds["USDC"] / total < 0.12
    assert 3 <= kinds["inverse"] < total * 0.03
    assert 3 <= kinds["quarterly"] < total * 0.02
    for c in contracts:
        symbol, base = c["symbol"], c["baseCurrency"]
        assert re.fullmatch(r"[A-Z0-9]+", base)
        if c["type"] == "FFICSX":
            assert QUARTERLY_RE.fullmatch(symbol)
            assert c["expireDate"] == c["settleDate"] and c["expireDate"] > NOW_MS
            assert c["isInverse"] and c["settleCurrency"] == base
        elif c["isInverse"]:
            assert symbol == f"{base}USDM"
            assert c["multiplier"] == -1 and c["settleCurrency"] == base and c["rootSymbol"] == base
            assert c["expireDate"] is None
        else:
            assert symbol == f"{base}{c['quoteCurrency']}M"
            assert c["rootSymbol"] == c["settleCurrency"] == c["quoteCurrency"]
            assert c["multiplier"] > 0 and c["expireDate"] is None and c["settleDate"] is None
    symbols = {c["symbol"] for c in contracts}
    assert {"XBTUSDTM", "XBTUSDCM", "XBTUSDM", "ETHUSDTM"} <= symbols
    assert any(s.startswith("XBTM") and QUARTERLY_RE.fullmatch(s) for s in symbols)


def test_listing_dates_are_spread_and_older_than_30_days(contracts: list[dict[str, Any]]) -> None:
    opens = [c["firstOpenDate"] for c in contracts]
    assert max(opens) <= NOW_MS - 30 * DAY_MS
    assert min(opens) >= NOW_MS - 7 * 365 * DAY_MS
    # Spread over years, not bunched: at least four distinct calendar years.
    assert len({o // (365 * DAY_MS) for o in opens}) >= 4


def test_market_tick_changes_only_market_keys(contracts: list[dict[str, Any]]) -> None:
    rng = random.Random(3)
    sample = [copy.deepcopy(c) for c in contracts[:300]]
    for c in sample:
        before_meta = parse_contract(copy.deepcopy(c)).meta
        before = copy.deepcopy(c)
        market_tick(c, rng, NOW_MS + 60_000)
        after_meta = parse_contract(c).meta
        assert after_meta == before_meta
        changed = {k for k in c if c[k] != before[k]}
        assert changed <= MARKET_KEYS, changed - MARKET_KEYS
        assert "lastTradePrice" in changed
        assert c["lowPrice"] <= c["lastTradePrice"] <= c["highPrice"]
        assert isinstance(c["openInterest"], str)
        if c["fundingRateGranularity"] is not None:
            assert c["nextFundingRateTime"] == c["nextFundingRateDateTime"] - (NOW_MS + 60_000)


def test_market_tick_without_clock_runs_the_countdown_down() -> None:
    c = generate_contracts(1, seed=2, now_ms=NOW_MS)[0]
    countdown = c["nextFundingRateTime"]
    market_tick(c, random.Random(1))
    assert 0 <= c["nextFundingRateTime"] < countdown


def test_new_contract_is_a_fresh_listing() -> None:
    fresh = new_contract(12345, NOW_MS, seed=4)
    assert fresh["firstOpenDate"] == NOW_MS
    assert fresh["symbol"] == f"{base_name(12345, 4)}USDTM"
    assert parse_contract(fresh).first_open_date == NOW_MS
    usdc = new_contract("NEWCOIN", NOW_MS, quote="USDC")
    assert (usdc["symbol"], usdc["settleCurrency"]) == ("NEWCOINUSDCM", "USDC")
    inverse = new_contract("NEWCOIN", NOW_MS, quote="USD")
    assert inverse["isInverse"] and inverse["multiplier"] == -1 and inverse["settleCurrency"] == "NEWCOIN"
    custom = new_contract("ABC", NOW_MS, symbol="ABCXUSDTM")
    assert custom["symbol"] == "ABCXUSDTM" and custom["baseCurrency"] == "ABC"
    assert new_contract("ABC", NOW_MS) == new_contract("ABC", NOW_MS)
    for c in (usdc, inverse, custom):
        parse_contract(c)
    with pytest.raises(ValueError):
        new_contract("ABC", NOW_MS, quote="EUR")
    with pytest.raises(ValueError):
        new_contract("BAD-NAME", NOW_MS)


def test_base_names_are_distinct_uppercase_and_seeded() -> None:
    names = [base_name(i, seed=9) for i in range(20_000)]
    assert len(set(names)) == len(names)
    assert all(re.fullmatch(r"[A-Z0-9]{1,12}", n) for n in names)
    assert names[0] == "XBT"
    assert base_name(500, seed=1) != base_name(500, seed=2)


def test_100k_contracts_are_distinct_and_valid() -> None:
    big = generate_contracts(100_000, seed=1)  # how fast: benchmarks.run's 100,000 row, not a timed unit test
    assert len(big) == 100_000
    assert len({c["symbol"] for c in big}) == 100_000
    result = parse_contracts(big[::10])
    assert result.invalid == 0, result.reasons
    kinds = _by_kind(big)
    assert kinds["quarterly"] > 100 and kinds["inverse"] > 300 and kinds["USDC"] > 3000
