"""cache.snapshot against fakeredis: the shared registry comes back exactly for its own head, and is refused for
any other (stale, another registry, cut short); its validations let parsing skip what was validated elsewhere."""

from __future__ import annotations

from typing import Any

import fakeredis
import msgspec
import orjson
import pytest

from tokenwatch.cache import snapshot
from tokenwatch.domain.contracts import ParseMemo, parse_contracts
from tokenwatch.domain.diff import build_plan
from tokenwatch.domain.registry import RegistryHead, RegistryState

NOW = 1_764_000_000_000
HOUR_MS = 3_600_000


def item(symbol: str, **overrides: Any) -> bytes:
    """One contract's JSON text as the exchange sends it (market data included)."""
    obj: dict[str, Any] = {
        "symbol": symbol, "rootSymbol": "USDT", "type": "FFWCSX", "firstOpenDate": NOW - 400 * 86_400_000,
        "expireDate": None, "settleDate": None, "baseCurrency": symbol[:3], "quoteCurrency": "USDT",
        "settleCurrency": "USDT", "maxOrderQty": 1_000_000, "lotSize": 1, "tickSize": 0.1,
        "multiplier": 0.001, "initialMargin": 0.01, "maintainMargin": 0.005, "makerFeeRate": 0.0002,
        "takerFeeRate": 0.0006, "maxLeverage": 100, "isInverse": False, "sourceExchanges": ["b", "a"],
        "status": "Open", "markPrice": 100.0,
    }
    obj.update(overrides)
    return orjson.dumps(obj)


SYMBOLS = ("XBTUSDTM", "ETHUSDTM", "SOLUSDTM")


def synced(memo: ParseMemo, items: list[bytes], *, registry_id: str = "reg-a") -> RegistryState:
    """The registry a baseline diff of items expects its commit to leave (as the diff step holds it)."""
    parsed = parse_contracts(items, memo=memo, now_ms=NOW)
    empty = RegistryState(RegistryHead(1, None, None, registry_id), {})
    plan = build_plan("sync-1", parsed.contracts, empty, now_ms=NOW, window_ms=72 * HOUR_MS,
                      fetched=len(items), invalid=0)
    return plan.apply_to(empty)


@pytest.fixture
def client() -> fakeredis.FakeRedis:
    return fakeredis.FakeRedis()


@pytest.fixture
def shared(client: fakeredis.FakeRedis) -> tuple[RegistryState, ParseMemo]:
    memo = ParseMemo()
    registry = synced(memo, [item(s) for s in SYMBOLS])
    assert snapshot.publish(client, registry, memo)
    return registry, memo


def test_the_registry_comes_back_exactly_for_its_own_head(
    client: fakeredis.FakeRedis, shared: tuple[RegistryState, ParseMemo],
) -> None:
    registry, memo = shared
    loaded = snapshot.load(client, registry.head)
    assert loaded is not None
    state, validations = loaded
    assert state.rows == registry.rows
    assert state.head == registry.head and state.pending_change == registry.pending_change
    assert {(s, meta, digest) for s, meta, digest in validations} == {
        (s, memo.validated[s][1], memo.validated[s][0]) for s in SYMBOLS}


@pytest.mark.parametrize("head", [
    RegistryHead(1, "sync-1", NOW, "reg-a"),  # the head before: the plan's commit is not in the database (yet)
    RegistryHead(3, "sync-9", NOW + 1, "reg-a"),  # a later commit made by another process's plan
    RegistryHead(2, "sync-9", NOW, "reg-a"),  # the same revision written by another sync (another writer)
    RegistryHead(2, "sync-1", NOW + 1, "reg-a"),  # the same sync, another snapshot time: not this commit
    RegistryHead(2, "sync-1", NOW, None),  # a registry without an identity
    RegistryHead(2, None, NOW, "reg-a"),
], ids=["before-commit", "later", "other-writer", "other-time", "no-identity", "no-sync"])
def test_a_stale_snapshot_is_not_trusted(
    client: fakeredis.FakeRedis, shared: tuple[RegistryState, ParseMemo], head: RegistryHead,
) -> None:
    assert shared[0].head == RegistryHead(2, "sync-1", NOW, "reg-a")
    assert snapshot.load(client, head) is None


def test_another_registrys_snapshot_is_not_trusted(
    client: fakeredis.FakeRedis, shared: tuple[RegistryState, ParseMemo],
) -> None:
    registry, _ = shared
    other = RegistryHead(registry.revision, registry.head.last_sync_id, registry.last_fetched_at, "reg-b")
    assert snapshot.load(client, other) is None  # nothing under reg-b's key
    # Even under reg-b's key (a copied key, a recreated database reusing names), it says whose it is.
    payload = client.get(snapshot.snapshot_key("reg-a"))
    client.set(snapshot.snapshot_key("reg-b"), payload)
    assert snapshot.load(client, other) is None


@pytest.mark.parametrize("damage", ["half", "one-byte-short", "trailing", "garbage", "empty-struct"])
def test_a_half_written_or_foreign_snapshot_is_not_trusted(
    client: fakeredis.FakeRedis, shared: tuple[RegistryState, ParseMemo], damage: str,
) -> None:
    registry, _ = shared
    key = snapshot.snapshot_key("reg-a")
    payload = bytes(client.get(key) or b"")
    damaged = {
        "half": payload[: len(payload) // 2], "one-byte-short": payload[:-1], "trailing": payload + b"\x00",
        "garbage": b"not a snapshot", "empty-struct": b"\x90",
    }[damage]
    client.set(key, damaged)
    assert snapshot.load(client, registry.head) is None


def test_rows_count_and_fingerprints_must_agree(
    client: fakeredis.FakeRedis, shared: tuple[RegistryState, ParseMemo],
) -> None:
    registry, _ = shared
    found = msgspec.msgpack.decode(client.get(snapshot.snapshot_key("reg-a")) or b"")
    found[7] = found[7][:-1]  # one fingerprint fewer than rows: not what publish writes
    client.set(snapshot.snapshot_key("reg-a"), msgspec.msgpack.encode(found))
    assert snapshot.load(client, registry.head) is None


def test_seeded_validations_skip_revalidation_only_for_the_same_values(
    client: fakeredis.FakeRedis, shared: tuple[RegistryState, ParseMemo],
) -> None:
    registry, _ = shared
    loaded = snapshot.load(client, registry.head)
    assert loaded is not None
    fresh = ParseMemo()  # a process that never validated these contracts
    fresh.seed(loaded[1])
    items = [
        item("XBTUSDTM", markPrice=101.5),  # market data moved: the same listing values
        item("ETHUSDTM", tickSize=0.5),  # listing metadata changed
        item("SOLUSDTM", lotSize=1.0),  # 1 and 1.0 are equal in Python, not as values received
    ]
    parsed = parse_contracts(items, memo=fresh, now_ms=NOW + 1)
    rows = loaded[0].rows
    assert parsed.contracts["XBTUSDTM"].meta is rows["XBTUSDTM"].meta  # taken from the snapshot, not rebuilt
    assert parsed.contracts["ETHUSDTM"].meta != rows["ETHUSDTM"].meta
    assert parsed.contracts["SOLUSDTM"].meta is not rows["SOLUSDTM"].meta  # validated again
    assert set(fresh.validated) == {"XBTUSDTM", "ETHUSDTM", "SOLUSDTM"}


def test_a_seeded_fingerprint_never_admits_an_invalid_contract(
    client: fakeredis.FakeRedis, shared: tuple[RegistryState, ParseMemo],
) -> None:
    registry, _ = shared
    loaded = snapshot.load(client, registry.head)
    assert loaded is not None
    fresh = ParseMemo()
    fresh.seed(loaded[1])
    parsed = parse_contracts([item("XBTUSDTM", lotSize=True)], memo=fresh, now_ms=NOW + 1)
    assert parsed.invalid == 1 and not parsed.contracts


def test_no_identity_nothing_shared(client: fakeredis.FakeRedis) -> None:
    memo = ParseMemo()
    registry = synced(memo, [item("XBTUSDTM")])
    anonymous = RegistryState(RegistryHead(2, "sync-1", NOW, None), registry.rows)
    assert not snapshot.publish(client, anonymous, memo)
    assert client.keys("*") == []


def test_a_registry_larger_than_max_rows_is_not_shared(client: fakeredis.FakeRedis,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    memo = ParseMemo()
    registry = synced(memo, [item(s) for s in SYMBOLS])
    monkeypatch.setattr(snapshot, "MAX_ROWS", len(SYMBOLS) - 1)
    assert not snapshot.publish(client, registry, memo)
    assert client.keys("*") == []
    monkeypatch.setattr(snapshot, "MAX_ROWS", len(SYMBOLS))
    assert snapshot.publish(client, registry, memo)
    assert snapshot.load(client, registry.head) is not None
