"""Parse and validate KuCoin futures contract objects: lenient on unknown keys, strict on the ones we use."""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

FieldKind = Literal["str", "int", "float", "bool", "ms", "list"]

SYMBOL_RE = re.compile(r"^[A-Za-z0-9]{1,40}$")
# Currency codes, contract types and statuses: short identifiers, never free text.
IDENT_RE = re.compile(r"^[A-Za-z0-9_.\-]{1,40}$")
REQUIRED = ("symbol", "type", "status", "baseCurrency", "quoteCurrency", "settleCurrency")

# Milliseconds since the epoch between 2000 and 2200: anything outside is a corrupted date.
_MIN_MS = 946_684_800_000
_MAX_MS = 7_258_118_400_000
_ABS_LIMIT = 1e18

# Listing metadata: rarely changes and a change is worth a history event. (json key, column, kind)
# Order matters: it is the order of Contract.meta and of the metadata columns in the tokens table.
METADATA_FIELDS: tuple[tuple[str, str, FieldKind], ...] = (
    ("rootSymbol", "root_symbol", "str"),
    ("type", "contract_type", "str"),
    ("firstOpenDate", "first_open_date", "ms"),
    ("expireDate", "expire_date", "ms"),
    ("settleDate", "settle_date", "ms"),
    ("baseCurrency", "base_currency", "str"),
    ("quoteCurrency", "quote_currency", "str"),
    ("settleCurrency", "settle_currency", "str"),
    ("maxOrderQty", "max_order_qty", "float"),
    ("maxPrice", "max_price", "float"),
    ("lotSize", "lot_size", "float"),
    ("tickSize", "tick_size", "float"),
    ("indexPriceTickSize", "index_price_tick_size", "float"),
    ("multiplier", "multiplier", "float"),
    ("initialMargin", "initial_margin", "float"),
    ("maintainMargin", "maintain_margin", "float"),
    ("maxRiskLimit", "max_risk_limit", "float"),
    ("minRiskLimit", "min_risk_limit", "float"),
    ("riskStep", "risk_step", "float"),
    ("makerFeeRate", "maker_fee_rate", "float"),
    ("takerFeeRate", "taker_fee_rate", "float"),
    ("makerFixFee", "maker_fix_fee", "float"),
    ("takerFixFee", "taker_fix_fee", "float"),
    ("settlementFee", "settlement_fee", "float"),
    ("maxLeverage", "max_leverage", "float"),
    ("isDeleverage", "is_deleverage", "bool"),
    ("isQuanto", "is_quanto", "bool"),
    ("isInverse", "is_inverse", "bool"),
    ("supportCross", "support_cross", "bool"),
    ("markMethod", "mark_method", "str"),
    ("fairMethod", "fair_method", "str"),
    ("fundingBaseSymbol", "funding_base_symbol", "str"),
    ("fundingQuoteSymbol", "funding_quote_symbol", "str"),
    ("fundingRateSymbol", "funding_rate_symbol", "str"),
    ("indexSymbol", "index_symbol", "str"),
    ("settlementSymbol", "settlement_symbol", "str"),
    ("fundingRateGranularity", "funding_rate_granularity", "int"),
    ("sourceExchanges", "source_exchanges", "list"),
    ("k", "risk_k", "float"),
    ("m", "risk_m", "float"),
    ("f", "risk_f", "float"),
    ("mmrLimit", "mmr_limit", "float"),
    ("mmrLevConstant", "mmr_lev_constant", "float"),
    ("marketStage", "market_stage", "str"),
    ("preMarketToPerpDate", "pre_market_to_perp_date", "ms"),
    ("displaySymbol", "display_symbol", "str"),
)
METADATA_KEYS: tuple[str, ...] = tuple(key for key, _, _ in METADATA_FIELDS)
METADATA_COLUMNS: tuple[str, ...] = tuple(col for _, col, _ in METADATA_FIELDS)

# Market data changes on every call: cached, never an event. Unknown keys are kept in the cache too.
MARKET_KEYS = frozenset({
    "markPrice", "indexPrice", "lastTradePrice", "lowPrice", "highPrice", "priceChg", "priceChgPct",
    "fundingFeeRate", "predictedFundingFeeRate", "nextFundingRateTime", "nextFundingRateDateTime",
    "openInterest", "volumeOf24h", "turnoverOf24h", "buyLimit", "sellLimit",
})

# Bounds that only a corrupted record can break.
_POSITIVE = frozenset({"lotSize", "tickSize", "maxOrderQty", "maxPrice"})
_RATES = frozenset({"initialMargin", "maintainMargin", "makerFeeRate", "takerFeeRate"})

Meta = tuple[Any, ...]


@dataclass(frozen=True, slots=True)
class Contract:
    """A validated contract: its key fields, normalised metadata and the raw object for the cache."""

    symbol: str
    status: str
    meta: Meta
    raw: Mapping[str, Any]

    @property
    def contract_type(self) -> str:
        return str(self.meta[_TYPE_AT])

    @property
    def expire_date(self) -> int | None:
        value = self.meta[_EXPIRE_AT]
        return None if value is None else int(value)

    @property
    def first_open_date(self) -> int | None:
        value = self.meta[_FIRST_OPEN_AT]
        return None if value is None else int(value)


_TYPE_AT = METADATA_KEYS.index("type")
_EXPIRE_AT = METADATA_KEYS.index("expireDate")
_FIRST_OPEN_AT = METADATA_KEYS.index("firstOpenDate")


class InvalidContract(ValueError):
    """One contract object failed validation; the message never echoes its raw value."""


def _number(key: str, value: Any) -> float:
    if isinstance(value, bool):
        raise InvalidContract(f"{key} is a boolean, expected a number")
    if isinstance(value, int | float):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            raise InvalidContract(f"{key} is not numeric") from None
    else:
        raise InvalidContract(f"{key} has type {type(value).__name__}, expected a number")
    if not math.isfinite(number) or abs(number) > _ABS_LIMIT:
        raise InvalidContract(f"{key} is out of range")
    return number


def _normalise(key: str, kind: FieldKind, value: Any) -> Any:
    if value is None:
        return None
    if kind == "str":
        if not isinstance(value, str):
            raise InvalidContract(f"{key} has type {type(value).__name__}, expected a string")
        if len(value) > 200:
            raise InvalidContract(f"{key} is longer than 200 characters")
        return value
    if kind == "bool":
        if not isinstance(value, bool):
            raise InvalidContract(f"{key} has type {type(value).__name__}, expected a boolean")
        return value
    if kind == "list":
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise InvalidContract(f"{key} is not a list of strings")
        # Order carries no meaning for index sources; sorting stops reorders from looking like changes.
        return ",".join(sorted(value))
    number = _number(key, value)
    if kind == "float":
        return number
    if not number.is_integer():
        raise InvalidContract(f"{key} is not an integer")
    if kind == "ms" and not _MIN_MS <= number <= _MAX_MS:
        raise InvalidContract(f"{key} is not a plausible timestamp")
    return int(number)


def parse_contract(obj: Any) -> Contract:
    """Validate one contract object; raise InvalidContract with a message safe to log."""
    if not isinstance(obj, dict):
        raise InvalidContract(f"contract is a {type(obj).__name__}, expected an object")
    for key in REQUIRED:
        value = obj.get(key)
        if not isinstance(value, str) or not value:
            raise InvalidContract(f"required key {key} is missing or not a string")
    symbol = obj["symbol"]
    if not SYMBOL_RE.fullmatch(symbol):
        raise InvalidContract("symbol is not 1-40 letters and digits")
    for key in ("type", "status", "baseCurrency", "quoteCurrency", "settleCurrency"):
        if not IDENT_RE.fullmatch(obj[key]):
            raise InvalidContract(f"{key} is not a short identifier")
    meta = tuple(_normalise(key, kind, obj.get(key)) for key, _, kind in METADATA_FIELDS)
    for key in _POSITIVE:
        at = METADATA_KEYS.index(key)
        if meta[at] is not None and meta[at] <= 0:
            raise InvalidContract(f"{key} must be positive")
    for key in _RATES:
        at = METADATA_KEYS.index(key)
        if meta[at] is not None and not -1 <= meta[at] <= 1:
            raise InvalidContract(f"{key} is not a plausible rate")
    leverage = meta[METADATA_KEYS.index("maxLeverage")]
    if leverage is not None and not 0 < leverage <= 10_000:
        raise InvalidContract("maxLeverage is not plausible")
    return Contract(symbol=symbol, status=obj["status"], meta=meta, raw=obj)


@dataclass(frozen=True, slots=True)
class ParseResult:
    """Valid contracts by symbol, and how many were skipped with the first reasons."""

    contracts: dict[str, Contract]
    invalid: int
    reasons: tuple[str, ...]


# What validation concluded about one symbol's raw metadata: (status, raw metadata values, normalised meta).
Memo = dict[str, tuple[str, tuple[Any, ...], Meta]]


def parse_contracts(items: Iterable[Any], keep_reasons: int = 5, memo: Memo | None = None) -> ParseResult:
    """Parse a contract list; bad records and repeated symbols are counted as invalid, never raised.

    With a memo (kept between syncs by the caller), a contract whose status and raw metadata values equal
    last time's reuses last time's result: validation depends on nothing else, and most never change.
    """
    contracts: dict[str, Contract] = {}
    invalid = 0
    reasons: list[str] = []
    fresh: Memo = {}
    for index, item in enumerate(items):
        if memo is not None and type(item) is dict:
            symbol = item.get("symbol")
            known = memo.get(symbol) if type(symbol) is str else None
            if (
                known is not None and known[0] == item.get("status")
                and known[1] == tuple(map(item.get, METADATA_KEYS))
            ):
                assert isinstance(symbol, str)
                if symbol in contracts:
                    invalid += 1
                    continue
                contracts[symbol] = Contract(symbol=symbol, status=known[0], meta=known[2], raw=item)
                fresh[symbol] = known
                continue
        try:
            contract = parse_contract(item)
        except InvalidContract as exc:
            invalid += 1
            if len(reasons) < keep_reasons:
                reasons.append(f"item {index}: {exc}")
            continue
        if contract.symbol in contracts:
            invalid += 1
            if len(reasons) < keep_reasons:
                reasons.append(f"item {index}: duplicate symbol {contract.symbol}")
            continue
        contracts[contract.symbol] = contract
        if memo is not None:
            fresh[contract.symbol] = (contract.status, tuple(map(item.get, METADATA_KEYS)), contract.meta)
    if memo is not None:
        # Only this snapshot's symbols stay remembered, so the memo never outgrows the exchange.
        memo.clear()
        memo.update(fresh)
    return ParseResult(contracts=contracts, invalid=invalid, reasons=tuple(reasons))
