"""parse_contract / parse_contracts: real captures parse, corrupt records are refused with safe messages."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import orjson
import pytest

from tokenwatch.domain.contracts import (
    METADATA_KEYS,
    REQUIRED,
    InvalidContract,
    ParseMemo,
    contract_list,
    parse_contract,
    parse_contracts,
)

FIXTURES = Path(__file__).resolve().parents[2].parent / "shared" / "fixtures" / "kucoin"
YEAR_1900_MS = -2_208_988_800_000


NO_FIXTURES = f"KuCoin fixture captures not found at {FIXTURES} (the shared fixtures are not checked out)"


def kucoin_fixture_files() -> list[Path]:
    if not FIXTURES.is_dir():
        return []
    return sorted(FIXTURES.glob("*.json"))


def fixture_params() -> list[Any]:
    """One parameter per capture, or a single skipped one that says why there are none."""
    files = kucoin_fixture_files()
    if not files:
        return [pytest.param(None, marks=pytest.mark.skip(reason=NO_FIXTURES))]
    return [pytest.param(path, id=path.name) for path in files]


def fixture_items(path: Path) -> list[Any]:
    """The contract objects of a capture: the data list, or the one object of contracts/{symbol}."""
    envelope = json.loads(path.read_text(encoding="utf-8"))
    assert envelope["code"] == "200000"
    data = envelope["data"]
    return data if isinstance(data, list) else [data]


def valid_contract(**overrides: Any) -> dict[str, Any]:
    """A complete, valid USDT perpetual shaped like KuCoin's 2025 answer."""
    obj: dict[str, Any] = {
        "symbol": "XBTUSDTM", "rootSymbol": "USDT", "type": "FFWCSX", "firstOpenDate": 1585555200000,
        "expireDate": None, "settleDate": None, "baseCurrency": "XBT", "quoteCurrency": "USDT",
        "settleCurrency": "USDT", "maxOrderQty": 1000000, "maxPrice": 1000000.0, "lotSize": 1,
        "tickSize": 0.1, "indexPriceTickSize": 0.01, "multiplier": 0.001, "initialMargin": 0.008,
        "maintainMargin": 0.004, "maxRiskLimit": 100000, "minRiskLimit": 100000, "riskStep": 50000,
        "makerFeeRate": 0.0002, "takerFeeRate": 0.0006, "makerFixFee": 0.0, "takerFixFee": 0.0,
        "isDeleverage": True, "isQuanto": True, "isInverse": False, "markMethod": "FairPrice",
        "fairMethod": "FundingRate", "indexSymbol": ".KXBTUSDT", "status": "Open", "maxLeverage": 125,
        "fundingRateGranularity": 28800000, "sourceExchanges": ["okex", "binance", "kucoin"],
        "markPrice": 91000.5, "openInterest": "8724443", "supportCross": True,
    }
    obj.update(overrides)
    return obj


def assert_refused(obj: Any, *, hides: str | None = None) -> str:
    """parse_contract refuses obj with a one-line message that never echoes `hides`; returns the message."""
    with pytest.raises(InvalidContract) as info:
        parse_contract(obj)
    message = str(info.value)
    assert message
    assert "\n" not in message
    if hides is not None:
        assert hides not in message
    # parse_contracts counts the same object as invalid instead of raising.
    result = parse_contracts([obj])
    assert result.invalid == 1
    assert result.contracts == {}
    # So does the path the sync takes, JSON texts sliced from the answer, with the same reason.
    text = orjson.dumps(obj)
    if orjson.loads(text) == obj:  # NaN and infinity have no JSON spelling
        from_text = parse_contracts(texts_of([obj]))
        assert (from_text.invalid, from_text.contracts) == (1, {})
        assert from_text.reasons == (f"item 0: {message}",)
    return message


def texts_of(items: list[Any], *, option: int = 0) -> list[Any]:
    """The items as the sync sees them: JSON texts sliced out of a success envelope."""
    texts = contract_list(orjson.dumps({"code": "200000", "data": items}, option=option))
    assert texts is not None
    return list(texts)


# ---- real captures -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("path", fixture_params())
def test_every_kucoin_capture_parses_without_invalid(path: Path) -> None:
    items = fixture_items(path)
    result = parse_contracts(items)
    assert result.invalid == 0, result.reasons
    assert result.reasons == ()
    assert sorted(result.contracts) == sorted(item["symbol"] for item in items)
    for item in items:
        contract = result.contracts[item["symbol"]]
        assert contract.status == item["status"]
        assert contract.contract_type == item["type"]
        assert contract.first_open_date == item["firstOpenDate"]


@pytest.mark.parametrize("path", fixture_params())
def test_every_kucoin_capture_parses_alike_from_json_texts(path: Path) -> None:
    items = fixture_items(path)
    from_texts = parse_contracts(texts_of(items))
    from_objects = parse_contracts(items)
    assert from_texts.invalid == 0
    assert {s: (c.status, c.meta) for s, c in from_texts.contracts.items()} == {
        s: (c.status, c.meta) for s, c in from_objects.contracts.items()}
    for item in items:
        assert orjson.loads(bytes(from_texts.contracts[item["symbol"]].raw)) == item


def test_fixture_folder_holds_list_and_single_contract_captures() -> None:
    files = kucoin_fixture_files()
    if not files:
        pytest.skip(NO_FIXTURES)
    shapes = {type(json.loads(p.read_text(encoding="utf-8"))["data"]).__name__ for p in files}
    assert shapes == {"list", "dict"}


def test_unknown_keys_are_kept_in_raw() -> None:
    files = kucoin_fixture_files()
    if not files:
        pytest.skip(NO_FIXTURES)
    item = fixture_items(files[0])[0]
    unknown = set(item) - set(METADATA_KEYS)
    assert "premiumsSymbol8H" in unknown  # a key tokenwatch does not model
    contract = parse_contract(item)
    for key in unknown:
        assert orjson.loads(bytes(contract.raw))[key] == item[key]


def test_unknown_keys_of_a_future_api_version_are_kept() -> None:
    contract = parse_contract(valid_contract(brandNewKey={"nested": [1, 2]}, anotherOne=None))
    raw = orjson.loads(bytes(contract.raw))
    assert raw["brandNewKey"] == {"nested": [1, 2]}
    assert "anotherOne" in raw


# ---- required keys and types -------------------------------------------------------------------------------

@pytest.mark.parametrize("key", REQUIRED)
def test_each_missing_required_key_is_invalid(key: str) -> None:
    obj = valid_contract()
    del obj[key]
    message = assert_refused(obj)
    assert key in message


@pytest.mark.parametrize("key", REQUIRED)
def test_each_required_key_given_as_empty_or_null_is_invalid(key: str) -> None:
    assert_refused(valid_contract(**{key: ""}))
    assert_refused(valid_contract(**{key: None}))


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("symbol", 12345, "symbol"),  # a number where the symbol string belongs
        ("status", ["Open"], "status"),  # a list where a str belongs
        ("baseCurrency", {"c": "XBT"}, "baseCurrency"),
        ("rootSymbol", ["USDT"], "rootSymbol"),  # optional metadata key, still typed
        ("markMethod", 7, "markMethod"),
        ("lotSize", True, "lotSize"),  # a bool where a number belongs
        ("tickSize", False, "tickSize"),
        ("maxLeverage", [125], "maxLeverage"),
        ("isInverse", "false", "isInverse"),  # a string where a bool belongs
        ("sourceExchanges", "binance", "sourceExchanges"),
        ("sourceExchanges", ["binance", 3], "sourceExchanges"),
        ("firstOpenDate", "soon", "firstOpenDate"),
        ("fundingRateGranularity", 28800000.5, "fundingRateGranularity"),
    ],
)
def test_wrong_types_are_invalid(key: str, value: Any, expected: str) -> None:
    message = assert_refused(valid_contract(**{key: value}))
    assert expected in message


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("lotSize", -1),
        ("lotSize", 0),
        ("tickSize", -0.1),
        ("maxPrice", 0),
        ("maxOrderQty", -5),
        ("lotSize", float("nan")),
        ("tickSize", float("inf")),
        ("multiplier", float("-inf")),
        ("initialMargin", 3.5),
        ("takerFeeRate", -2),
        ("maxLeverage", 0),
        ("maxLeverage", -10),
        ("maxLeverage", 1_000_000),
        ("maxRiskLimit", 1e30),
        ("firstOpenDate", YEAR_1900_MS),
        ("expireDate", 0),
        ("settleDate", 99_999_999_999_999),  # year 5138
    ],
)
def test_absurd_values_are_invalid(key: str, value: Any) -> None:
    message = assert_refused(valid_contract(**{key: value}))
    assert key in message


def test_market_data_is_not_validated() -> None:
    # Prices change every call and only feed the cache: a null or odd value must not drop the contract.
    contract = parse_contract(valid_contract(markPrice=None, openInterest="n/a"))
    raw = orjson.loads(bytes(contract.raw))
    assert raw["markPrice"] is None
    assert raw["openInterest"] == "n/a"


def test_nan_given_as_a_string_is_invalid() -> None:
    assert "lotSize" in assert_refused(valid_contract(lotSize="NaN"), hides="NaN")


def test_numbers_given_as_strings_are_accepted_and_normalised() -> None:
    contract = parse_contract(valid_contract(tickSize="0.5", firstOpenDate="1585555200000"))
    assert contract.meta[METADATA_KEYS.index("tickSize")] == 0.5
    assert contract.first_open_date == 1585555200000


@pytest.mark.parametrize(
    "symbol",
    [
        "BTC-USDT",
        "A" * 41,
        "X'; DROP TABLE tokens;--",
        "ÄÖÜUSDTM",
        "XBT\u200bUSDTM",  # zero-width space
        "\uff38\uff22\uff34USDTM",  # fullwidth letters XBT
        "XBTUSDTM\n",
        "<script>alert(1)</script>",
    ],
)
def test_symbol_outside_the_pattern_is_invalid_and_not_echoed(symbol: str) -> None:
    message = assert_refused(valid_contract(symbol=symbol), hides=symbol)
    assert "symbol" in message


def test_forty_character_symbol_is_the_longest_accepted() -> None:
    assert parse_contract(valid_contract(symbol="A" * 40)).symbol == "A" * 40


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("status", "Open'; DELETE FROM tokens;--"),
        ("type", "FF WC SX"),
        ("quoteCurrency", "U" * 41),
        ("settleCurrency", "ÜSDT"),
    ],
)
def test_identifier_fields_outside_the_pattern_are_invalid_and_not_echoed(key: str, value: str) -> None:
    message = assert_refused(valid_contract(**{key: value}), hides=value)
    assert key in message


def test_overlong_free_text_is_invalid_and_not_echoed() -> None:
    secret = "Z" * 201
    assert "markMethod" in assert_refused(valid_contract(markMethod=secret), hides=secret)


# ---- lists of contracts ------------------------------------------------------------------------------------

def test_a_symbol_listed_twice_is_ambiguous_every_copy_invalid_and_none_used() -> None:
    first = valid_contract(tickSize=0.1)
    second = valid_contract(tickSize=0.5)
    other = valid_contract(symbol="ETHUSDTM", baseCurrency="ETH")
    for order in ([first, other, second], [second, other, first]):  # whichever comes first
        result = parse_contracts(order)
        assert result.invalid == 2
        assert sorted(result.contracts) == ["ETHUSDTM"]
        assert (result.unusable, result.duplicated) == (frozenset({"XBTUSDTM"}), frozenset({"XBTUSDTM"}))
        assert result.reasons == ("duplicate symbol XBTUSDTM (2 copies): kept as registered",)


def test_an_invalid_record_with_a_readable_symbol_is_unusable_not_absent() -> None:
    broken = valid_contract(lotSize=-1)
    raw = orjson.dumps(valid_contract(symbol="ETHUSDTM", baseCurrency="ETH"))[:-1] + b',"x":1e400}'
    result = parse_contracts([orjson.dumps(broken), raw, orjson.dumps({"no": "symbol"})])
    assert (result.invalid, result.contracts) == (3, {})
    assert result.unusable == {"XBTUSDTM", "ETHUSDTM"} and result.duplicated == frozenset()


def test_junk_items_never_raise_and_are_counted() -> None:
    junk: list[Any] = [None, 1, "x", [], {}, 3.5, True, {"symbol": None}]
    result = parse_contracts([*junk, valid_contract()])
    assert result.invalid == len(junk)
    assert list(result.contracts) == ["XBTUSDTM"]


def test_reasons_are_bounded_and_name_the_item_index() -> None:
    result = parse_contracts([None] * 10, keep_reasons=3)
    assert result.invalid == 10
    assert result.reasons == (
        "item 0: contract is a NoneType, expected an object",
        "item 1: contract is a NoneType, expected an object",
        "item 2: contract is a NoneType, expected an object",
    )


def test_empty_list_parses_to_nothing() -> None:
    result = parse_contracts([])
    assert (result.contracts, result.invalid, result.reasons) == ({}, 0, ())


def test_memo_gives_the_same_result_as_a_full_parse() -> None:
    from tokenwatch.simulator.generator import generate_contracts

    items = generate_contracts(50, seed=4)
    memo = ParseMemo()
    first = parse_contracts(items, memo=memo)
    assert len(memo.validated) == 50
    changed = [dict(item) for item in items]
    changed[0]["tickSize"] = 123.0  # a metadata change: must be parsed again, not reused
    changed[1]["lotSize"] = -1  # now invalid: the memo must not keep it valid
    changed[2]["status"] = "Paused"
    changed[3]["markPrice"] = 1.0  # market data only: reused
    with_memo = parse_contracts(changed, memo=memo)
    without = parse_contracts(changed)
    assert with_memo.invalid == without.invalid == 1
    assert {s: (c.status, c.meta) for s, c in with_memo.contracts.items()} == {
        s: (c.status, c.meta) for s, c in without.contracts.items()}
    assert orjson.loads(bytes(with_memo.contracts[items[3]["symbol"]].raw))["markPrice"] == 1.0
    assert first.contracts[items[0]["symbol"]].meta != with_memo.contracts[items[0]["symbol"]].meta
    assert items[1]["symbol"] not in memo.validated  # only valid symbols of the latest snapshot are remembered


def test_memo_gives_the_same_result_from_json_texts() -> None:
    from tokenwatch.simulator.generator import generate_contracts

    items = generate_contracts(30, seed=5)
    memo = ParseMemo()
    parse_contracts(texts_of(items), memo=memo)
    items[0]["tickSize"] = 7.0
    items[1]["maxLeverage"] = "many"
    again = parse_contracts(texts_of(items), memo=memo)
    fresh = parse_contracts(items)
    assert again.invalid == fresh.invalid == 1
    assert again.reasons == fresh.reasons
    assert {s: c.meta for s, c in again.contracts.items()} == {s: c.meta for s, c in fresh.contracts.items()}


def _shuffled(item: dict[str, Any], seed: int) -> dict[str, Any]:
    keys = list(item)
    random.Random(seed).shuffle(keys)
    return {key: item[key] for key in keys}


def test_any_key_order_parses_the_same_and_a_new_order_is_validated_afresh() -> None:
    from tokenwatch.simulator.generator import generate_contracts

    items = generate_contracts(40, seed=6)
    expected = parse_contracts(items)
    memo = ParseMemo()
    # Each list in one key order (the decoder follows the first contract's), then mixed orders.
    for seed in (1, 2):
        same_order = [_shuffled(items[0], seed) | item for item in items]  # items[0]'s order for every key
        parsed = parse_contracts(texts_of(same_order), memo=memo)
        assert {s: (c.status, c.meta) for s, c in parsed.contracts.items()} == {
            s: (c.status, c.meta) for s, c in expected.contracts.items()}
    mixed = [_shuffled(item, index) for index, item in enumerate(items)]
    mixed[3]["tickSize"] = -1.0  # invalid, whatever the order
    parsed = parse_contracts(texts_of(mixed), memo=memo)
    assert parsed.invalid == 1 and len(parsed.contracts) == len(items) - 1
    assert all(parsed.contracts[s].meta == c.meta for s, c in expected.contracts.items() if s in parsed.contracts)


def test_a_first_item_that_is_no_object_still_leaves_the_rest_parsed() -> None:
    from tokenwatch.simulator.generator import generate_contracts

    items = generate_contracts(5, seed=7)
    texts = [b"[1, 2]", b"not json", *texts_of(items)]
    parsed = parse_contracts(texts)
    assert parsed.invalid == 2 and set(parsed.contracts) == {item["symbol"] for item in items}


# ---- slicing the answer into one JSON text per contract ----------------------------------------------------

def test_contract_list_slices_exactly_whatever_the_spacing() -> None:
    items = [valid_contract(), {"symbol": "A},{\"B", "x": [1, {"y": "}, {"}]}, 3, None]
    for option in (0, orjson.OPT_INDENT_2):
        texts = texts_of(items, option=option)
        assert [orjson.loads(bytes(text)) for text in texts] == items
    body = b'{"code":"200000","msg":"", "data" : [ {"a":1} , {"b":"]}"} ], "extra": {"data": 5}}'
    texts = contract_list(body)
    assert texts is not None
    assert [bytes(t) for t in texts] == [b'{"a":1}', b'{"b":"]}"}']


@pytest.mark.parametrize("body", [
    b'{"code":"200000","data":{"symbol":"XBTUSDTM"}}',  # one contract, not a list
    b'{"code":"200000"}',
    b'{"code":"200000","data":[{"a":1},]}',  # malformed
    b'{"code":"200000","data":[{"a":1}]',  # truncated
    b'[{"a":1}]',
    b'<html>busy</html>',
    b'',
])
def test_contract_list_is_none_for_anything_but_a_list_envelope(body: bytes) -> None:
    assert contract_list(body) is None
