"""What the cache may keep: every contract's whole JSON text is checked before it is kept, unknown keys included.

A reader decodes each cached text; one that no JSON decoder takes (a number past a double's range, nesting
past the decoders' limits, bad UTF-8) would fail every read. Such a contract is counted invalid instead, and
the rest of the answer is parsed as usual.
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from tokenwatch.domain.contracts import (
    MAX_CONTRACT_BYTES,
    MAX_DEPTH,
    ParseMemo,
    contract_list,
    parse_contracts,
    split_data_list,
)
from tokenwatch.simulator import generate_contracts

GOOD = generate_contracts(6, seed=4)


def text(contract: dict[str, Any]) -> bytes:
    return orjson.dumps(contract)


def with_key(contract: dict[str, Any], key: str, raw_value: bytes) -> bytes:
    """The contract's JSON with one more key whose value is written as given (what no encoder writes)."""
    return text(contract)[:-1] + b',"' + key.encode() + b'":' + raw_value + b"}"


def answer(*items: bytes) -> bytes:
    return b'{"code":"200000","data":[' + b",".join(items) + b"]}"


def parse(body: bytes, memo: ParseMemo | None = None) -> Any:
    items = contract_list(body)
    assert items is not None
    return parse_contracts(items, memo=memo)


HOSTILE = {
    "a number past a double": b"1e400",
    "a negative one": b"-2.5e999",
    "nesting past the bound": b"[" * (MAX_DEPTH + 2) + b"]" * (MAX_DEPTH + 2),
    "an object nested past it": b'{"a":' * (MAX_DEPTH + 2) + b"1" + b"}" * (MAX_DEPTH + 2),
    "a lone surrogate": rb'"\ud800"',
    "bad UTF-8": b'"\xff\xfe"',
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
@pytest.mark.parametrize("where", ["first", "later"])
def test_a_hostile_value_in_an_unknown_key_makes_that_contract_invalid(case: str, where: str) -> None:
    items = [text(c) for c in GOOD]
    at = 0 if where == "first" else 3  # the first contract shapes the fast decoder: both must refuse it
    items[at] = with_key(GOOD[at], "futureField", HOSTILE[case])
    parsed = parse(answer(*items))
    assert parsed.invalid == 1, parsed.reasons
    assert set(parsed.contracts) == {c["symbol"] for i, c in enumerate(GOOD) if i != at}
    (reason,) = parsed.reasons
    assert reason.startswith(f"item {at}: ")
    for contract in parsed.contracts.values():
        orjson.loads(bytes(contract.raw))  # everything kept can be read back


@pytest.mark.parametrize("key", ["markPrice", "openInterest", "lotSize"])
def test_a_number_past_a_double_in_a_known_key_is_refused_too(key: str) -> None:
    items = [text(c) for c in GOOD]
    items[2] = text({k: v for k, v in GOOD[2].items() if k != key})[:-1] + f',"{key}":1e400}}'.encode()
    parsed = parse(answer(*items))
    assert parsed.invalid == 1 and GOOD[2]["symbol"] not in parsed.contracts


def test_ten_thousand_levels_deep_leave_the_rest_of_the_answer_parsed() -> None:
    deep = b"[" * 10_000 + b"]" * 10_000
    items = [text(c) for c in GOOD]
    items[1] = with_key(GOOD[1], "futureField", deep)
    body = answer(*items)
    assert len(split_data_list(body) or []) == len(GOOD)  # the decoder's recursion gives up; the cut by hand not
    parsed = parse(body)
    assert parsed.invalid == 1
    assert set(parsed.contracts) == {c["symbol"] for i, c in enumerate(GOOD) if i != 1}


def test_a_contract_past_the_size_bound_is_refused() -> None:
    items = [text(c) for c in GOOD]
    items[0] = with_key(GOOD[0], "futureField", orjson.dumps("x" * MAX_CONTRACT_BYTES))
    parsed = parse(answer(*items))
    assert parsed.invalid == 1 and "larger than" in parsed.reasons[0]


def test_unknown_keys_within_bounds_are_kept_as_sent_whatever_contract_has_them() -> None:
    items = [text(c) for c in GOOD]
    items[0] = with_key(GOOD[0], "riskTiers", b'[{"level":1,"maxLeverage":100},{"level":2}]')
    items[4] = with_key(GOOD[4], "newThing", b'{"x":[1,2,{"y":null}]}')  # a key the first contract lacks
    parsed = parse(answer(*items))
    assert parsed.invalid == 0
    assert bytes(parsed.contracts[GOOD[0]["symbol"]].raw) == items[0]
    assert bytes(parsed.contracts[GOOD[4]["symbol"]].raw) == items[4]


def test_the_memo_still_serves_unchanged_contracts_and_never_a_hostile_one() -> None:
    memo = ParseMemo()
    first = parse(answer(*(text(c) for c in GOOD)), memo)
    moved = [{**c, "markPrice": 1.5} for c in GOOD]  # market data moves every call
    items = [text(c) for c in moved]
    items[5] = with_key(moved[5], "futureField", b"1e400")
    again = parse(answer(*items), memo)
    assert again.invalid == 1 and GOOD[5]["symbol"] not in again.contracts
    assert {s: c.meta for s, c in again.contracts.items()} == {
        s: c.meta for s, c in first.contracts.items() if s != GOOD[5]["symbol"]}
    assert GOOD[5]["symbol"] not in memo.validated


def test_cutting_by_hand_finds_the_items_the_decoder_finds() -> None:
    body = answer(*(text(c) for c in GOOD), b'{"symbol":"A\\"]}[{","x":[1,{"y":"]"}]}')
    by_hand = split_data_list(body)
    decoded = contract_list(body)
    assert by_hand is not None and decoded is not None
    assert [bytes(item) for item in by_hand] == [bytes(item) for item in decoded]
    assert split_data_list(b'{"code":"400100","msg":"no"}') is None
