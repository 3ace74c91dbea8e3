"""An answer too large to hold whole: spooled as it is read (fetch/spool.py), cut into batches of whole contracts
(domain.contracts.contract_batches) and parsed a batch at a time (ContractParser), with the same result as the
answer taken whole, whatever the answer's spacing, its strings, or where its parts happen to end."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tokenwatch.domain.contracts import ContractParser, ParseMemo, contract_batches, contract_list, parse_contracts
from tokenwatch.fetch.spool import Spool
from tokenwatch.simulator.generator import generate_contracts

NOW = 1_764_000_000_000


def parts_of(body: bytes, size: int) -> list[bytes]:
    return [body[at:at + size] for at in range(0, len(body), size)]


def texts(items: Any) -> list[bytes]:
    return [bytes(item) for item in items]


def batched(body: bytes, part: int, batch: int) -> list[list[bytes]]:
    return [texts(items) for items in contract_batches(parts_of(body, part), batch)]


# ---- the spool -----------------------------------------------------------------------------------------------

def test_a_spool_keeps_a_small_answer_in_memory_and_a_large_one_in_a_file() -> None:
    body = bytes(range(256)) * 64  # 16 KiB
    small, large = Spool(len(body)), Spool(1000)
    for spool in (small, large):
        for part in parts_of(body, 700):
            spool.write(part)
    assert not small.spooled and large.spooled
    for spool in (small, large):
        assert spool.size == len(body)
        assert (spool.head(10), spool.tail(10)) == (body[:10], body[-10:])
        assert b"".join(spool.parts(3000)) == body == bytes(spool.whole())
        spool.close()
        assert (spool.size, spool.spooled) == (0, False)


# ---- cutting an answer into batches ---------------------------------------------------------------------------

def envelope(items: list[Any], separators: tuple[str, str] = (",", ":")) -> bytes:
    return json.dumps({"code": "200000", "data": items}, separators=separators).encode()


def test_a_real_shaped_answer_comes_in_several_batches_of_whole_contracts() -> None:
    body = envelope(generate_contracts(300, seed=3, now_ms=NOW))
    batches = batched(body, part=4096, batch=16 * 1024)
    assert len(batches) > 5
    assert [item for batch in batches for item in batch] == texts(contract_list(body))


text = st.text(alphabet='{}[],:" \\ab\u00e9\n', max_size=12)
scalar = st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6), st.floats(allow_nan=False,
                   allow_infinity=False), text)
value = st.recursive(scalar, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(text, inner, max_size=3),
                     max_leaves=8)
item = st.dictionaries(text, value, max_size=5)


@settings(max_examples=300, deadline=None)
@given(items=st.lists(item, max_size=30), part=st.integers(1, 300), batch=st.integers(1, 400),
       spaced=st.booleans())
def test_batches_hold_exactly_the_items_of_the_whole_answer(items: list[Any], part: int, batch: int,
                                                             spaced: bool) -> None:
    # Strings full of braces, commas and quotes, objects and lists inside items, spacing or none, parts and
    # batches of any size: the batches, put together, are the list the whole answer decodes to.
    body = envelope(items, (", ", ": ") if spaced else (",", ":"))
    whole = texts(contract_list(body))
    assert [json.loads(text) for text in whole] == items
    assert [item for batch in batched(body, part, batch) for item in batch] == whole


def test_an_item_the_decoder_refuses_leaves_the_rest_to_the_whole_answer_cut() -> None:
    deep = "[" * 10_000 + "]" * 10_000
    body = (b'{"code":"200000","data":[' + b",".join(
        [json.dumps({"symbol": f"A{i}"}).encode() for i in range(50)]
        + [b'{"symbol":"DEEP","x":' + deep.encode() + b"}"]
        + [json.dumps({"symbol": f"B{i}"}).encode() for i in range(50)]) + b"]}")
    batches = batched(body, part=512, batch=256)
    assert len(batches) > 2
    items = [item for batch in batches for item in batch]
    # The deep item is there (the parser refuses it alone), and every other item with it.
    assert [json.loads(i)["symbol"] for i in items if b"DEEP" not in i] == [f"A{i}" for i in range(50)] + [
        f"B{i}" for i in range(50)]
    assert sum(b"DEEP" in i for i in items) == 1


@pytest.mark.parametrize("body", [
    b'{"msg":"","code":"200000","data":[{"symbol":"A"},{"symbol":"B"}]}' + b" " * 300,  # keys in another order
    b'{"code":"200000","data":[]}',
    b'{"code":"200000","data":[' + b'{"symbol":"A"},' * 100 + b'{"symbol":"B"}],"msg":"ok"}',
])
def test_answers_of_other_shapes_give_what_the_whole_answer_gives(body: bytes) -> None:
    assert [item for batch in batched(body, part=7, batch=20) for item in batch] == texts(contract_list(body))


@pytest.mark.parametrize("body", [b"<html>" + b" " * 300 + b"</html>", b'{"code":"200000","data":[{"symbol":"A"},'
                                  + b'{"symbol":"B"},' * 100])
def test_an_answer_with_no_contract_list_is_refused_after_its_batches(body: bytes) -> None:
    with pytest.raises(ValueError, match="no contract list"):
        batched(body, part=64, batch=128)


# ---- parsing a batch at a time ---------------------------------------------------------------------------------

def test_parsing_in_batches_gives_the_whole_parse_duplicates_across_batches_included() -> None:
    contracts = generate_contracts(120, seed=5, now_ms=NOW)
    contracts.insert(100, dict(contracts[3]))  # listed twice, far apart: in two batches
    contracts.insert(50, {"symbol": "BROKENUSDTM", "status": 7})
    body = envelope(contracts)
    whole_memo, parts_memo = ParseMemo(), ParseMemo()
    whole = parse_contracts(contract_list(body) or [], memo=whole_memo, now_ms=NOW)
    parser = ContractParser(parts_memo, NOW)
    added: list[tuple[str, bytes]] = []
    for batch in contract_batches(parts_of(body, 1024), 4096):
        added += [(symbol, bytes(raw)) for symbol, raw in parser.add(batch, keep_raw=False)]
    parts = parser.result()
    assert parser.items == len(contracts)
    assert (parts.invalid, parts.reasons, parts.unusable, parts.duplicated) == (
        whole.invalid, whole.reasons, whole.unusable, whole.duplicated)
    assert whole.duplicated == {contracts[3]["symbol"]}
    assert {s: (c.status, c.meta) for s, c in parts.contracts.items()} == {
        s: (c.status, c.meta) for s, c in whole.contracts.items()}
    assert all(c.raw == b"" for c in parts.contracts.values())  # the text went with its batch ...
    texts_by_symbol = dict(added)  # ... after the parser handed it over, once per symbol
    assert len(added) == len(texts_by_symbol) == len(parts.contracts) + 1  # the duplicate's first copy too
    assert {s: texts_by_symbol[s] for s in parts.contracts} == {s: bytes(c.raw) for s, c in whole.contracts.items()}
    assert parts_memo.validated == whole_memo.validated
