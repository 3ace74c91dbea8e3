"""Parse and validate KuCoin futures contract objects: lenient on unknown keys, strict on the ones we use."""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

import msgspec
import orjson

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


# One contract object's JSON text: a zero-copy slice of the exchange's answer, or bytes.
RawJson = msgspec.Raw | bytes


class Contract(msgspec.Struct, frozen=True):
    """A validated contract: its key fields, normalised metadata and its JSON text for the cache."""

    symbol: str
    status: str
    meta: Meta
    raw: RawJson

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

    @property
    def base_currency(self) -> str:
        return str(self.meta[_BASE_AT])

    @property
    def quote_currency(self) -> str:
        return str(self.meta[_QUOTE_AT])


_TYPE_AT = METADATA_KEYS.index("type")
_BASE_AT = METADATA_KEYS.index("baseCurrency")
_QUOTE_AT = METADATA_KEYS.index("quoteCurrency")
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
    """Validate one decoded contract object; raise InvalidContract with a message safe to log."""
    if not isinstance(obj, dict):
        raise InvalidContract(f"contract is a {type(obj).__name__}, expected an object")
    return _validated(obj.get("symbol"), obj.get("status"), tuple(map(obj.get, METADATA_KEYS)), _json(obj))


def _validated(symbol: Any, status: Any, raw_meta: tuple[Any, ...], raw: RawJson) -> Contract:
    required = (symbol, raw_meta[_TYPE_AT], status, *(raw_meta[i] for i in _CURRENCIES_AT))  # REQUIRED's order
    for key, value in zip(REQUIRED, required, strict=True):
        if not isinstance(value, str) or not value:
            raise InvalidContract(f"required key {key} is missing or not a string")
    if not SYMBOL_RE.fullmatch(symbol):
        raise InvalidContract("symbol is not 1-40 letters and digits")
    for key, value in zip(REQUIRED[1:], required[1:], strict=True):
        if not IDENT_RE.fullmatch(value):
            raise InvalidContract(f"{key} is not a short identifier")
    meta = tuple(_normalise(key, kind, value) for (key, _, kind), value in zip(METADATA_FIELDS, raw_meta, strict=True))
    for at in _POSITIVE_AT:
        if meta[at] is not None and meta[at] <= 0:
            raise InvalidContract(f"{METADATA_KEYS[at]} must be positive")
    for at in _RATES_AT:
        if meta[at] is not None and not -1 <= meta[at] <= 1:
            raise InvalidContract(f"{METADATA_KEYS[at]} is not a plausible rate")
    leverage = meta[_LEVERAGE_AT]
    if leverage is not None and not 0 < leverage <= 10_000:
        raise InvalidContract("maxLeverage is not plausible")
    return Contract(symbol=symbol, status=status, meta=meta, raw=raw)


_CURRENCIES_AT = tuple(METADATA_KEYS.index(k) for k in ("baseCurrency", "quoteCurrency", "settleCurrency"))
_POSITIVE_AT = tuple(sorted(METADATA_KEYS.index(k) for k in _POSITIVE))
_RATES_AT = tuple(sorted(METADATA_KEYS.index(k) for k in _RATES))
_LEVERAGE_AT = METADATA_KEYS.index("maxLeverage")

# Only the keys we validate are decoded; market data and unknown keys stay in the raw text for the cache.
# The types are wide (a number may come as a string); a value of any other type fails the fast decode and
# the object is then decoded whole, so parse_contract can say which key is wrong.
_NUMBER = int | float | str | None
_DECODED_TYPE: dict[FieldKind, Any] = {
    "str": str | None, "bool": bool | None, "list": list[str] | None, "float": _NUMBER, "int": _NUMBER, "ms": _NUMBER,
}
# The keys decoded, in the order of the values tuple that validation uses, with their types.
_TYPES: dict[str, Any] = {
    "symbol": str | None, "status": str | None, **{key: _DECODED_TYPE[kind] for key, _, kind in METADATA_FIELDS},
}
_CANONICAL = tuple(_TYPES)
_Fields = msgspec.defstruct("_Fields", [(key, kind, None) for key, kind in _TYPES.items()])
_decode_fields = msgspec.json.Decoder(_Fields).decode
_values = operator.attrgetter(*_CANONICAL)  # (symbol, status, *raw metadata values) of any fields struct

FieldsDecoder = Callable[[RawJson], Any]

# msgspec matches each key of an object against a struct's fields starting after the field it matched last:
# with the fields in the order the exchange sends them, each key is found at the first try, while one out of
# that order is looked for among all of them. So a struct of the same fields is made in the key order of the
# answer's first contract (a few orders at most are ever seen; each is kept). Objects in another order still
# decode the same, only slower.
_MAX_ORDERS = 8


def fields_decoder(sample: Any, decoders: dict[tuple[str, ...], FieldsDecoder] | None = None) -> FieldsDecoder:
    """A decoder of one contract's JSON text into its key fields, fastest for sample's key order (the fixed
    order when sample is no JSON object); decoders keeps those made for the orders seen before."""
    try:
        decoded = orjson.loads(memoryview(sample)) if type(sample) is msgspec.Raw or isinstance(sample, bytes) else None
    except orjson.JSONDecodeError:
        decoded = None
    if not isinstance(decoded, dict):
        return _decode_fields
    order = tuple(key for key in decoded if key in _TYPES)
    order += tuple(key for key in _CANONICAL if key not in order)
    decoders = {} if decoders is None else decoders
    found = decoders.get(order)
    if found is None:
        if len(decoders) >= _MAX_ORDERS:
            decoders.clear()
        struct = msgspec.defstruct("_OrderedFields", [(key, _TYPES[key], None) for key in order])
        found = decoders[order] = msgspec.json.Decoder(struct).decode
    return found


@dataclass(frozen=True, slots=True)
class ParseResult:
    """Valid contracts by symbol, and how many were skipped with the first reasons."""

    contracts: dict[str, Contract]
    invalid: int
    reasons: tuple[str, ...]


@dataclass(slots=True)
class ParseMemo:
    """What parsing keeps between syncs in one process: each symbol's last validation, (the key fields it was
    given, normalised meta), and the decoders made for the key orders seen."""

    validated: dict[str, tuple[Any, Meta]] = field(default_factory=dict)
    decoders: dict[tuple[str, ...], FieldsDecoder] = field(default_factory=dict)


def _fields(item: Any, decode: FieldsDecoder) -> tuple[Any, RawJson]:
    """(key fields: symbol, status and raw metadata values, as a struct; JSON text) of one list item;
    InvalidContract if it is no object."""
    if type(item) is msgspec.Raw or isinstance(item, bytes):
        try:
            return decode(item), item
        except msgspec.DecodeError:  # includes ValidationError: a key of an unexpected type, or no object
            try:
                decoded = orjson.loads(memoryview(item))  # decoded whole only so that parse_contract names the key
            except orjson.JSONDecodeError:
                raise InvalidContract("contract is not valid JSON") from None
            parse_contract(decoded)
            raise InvalidContract("contract has a value of an unexpected type") from None
    if not isinstance(item, dict):
        raise InvalidContract(f"contract is a {type(item).__name__}, expected an object")
    return _Fields(item.get("symbol"), item.get("status"), *map(item.get, METADATA_KEYS)), _json(item)


def _json(obj: dict[str, Any]) -> bytes:
    # orjson 3.12+ over-allocates each output about 8x; an exact-size copy keeps many of them small.
    return memoryview(orjson.dumps(obj)).tobytes()


def parse_contracts(items: Iterable[Any], keep_reasons: int = 5, memo: ParseMemo | None = None) -> ParseResult:
    """Parse a contract list (JSON texts or decoded objects); bad records and repeated symbols are counted as
    invalid, never raised.

    With a memo (kept between syncs by the caller), a contract whose status and raw metadata values equal
    last time's reuses last time's result: validation depends on nothing else, and most never change.
    """
    contracts: dict[str, Contract] = {}
    invalid = 0
    reasons: list[str] = []
    validated = None if memo is None else memo.validated
    fresh: dict[str, tuple[Any, Meta]] = {}
    decode: FieldsDecoder | None = None
    for index, item in enumerate(items):
        if decode is None:
            decode = fields_decoder(item, None if memo is None else memo.decoders)
        try:
            fields, raw = _fields(item, decode)
            symbol = fields.symbol
            known = validated.get(symbol) if validated is not None and type(symbol) is str else None
            # Struct equality runs in C, field by field (and is False across key orders): no tuple of the
            # values is built for an unchanged contract.
            if known is not None and known[0] == fields:
                contract = Contract(symbol, fields.status, known[1], raw)
                remembered = known
            else:
                values = _values(fields)
                contract = _validated(symbol, values[1], values[2:], raw)
                remembered = (fields, contract.meta)
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
        if validated is not None:
            fresh[contract.symbol] = remembered
    if memo is not None:
        # Only this snapshot's symbols stay remembered, so the memo never outgrows the exchange.
        memo.validated = fresh
    return ParseResult(contracts=contracts, invalid=invalid, reasons=tuple(reasons))


def contract_list(body: bytes | bytearray | memoryview) -> list[msgspec.Raw] | None:
    """The data list of a success envelope as one JSON text per contract (zero-copy slices of body);
    None when body is not such an envelope."""
    try:
        return _decode_envelope(body).data
    except msgspec.DecodeError:
        return None


class _Envelope(msgspec.Struct):
    data: list[msgspec.Raw]


_decode_envelope = msgspec.json.Decoder(_Envelope).decode
