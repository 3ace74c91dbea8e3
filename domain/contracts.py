"""Parse and validate KuCoin futures contract objects: lenient on unknown keys, strict on the ones we use."""

from __future__ import annotations

import math
import operator
import re
import sys
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import msgspec
import orjson
from xxhash import xxh3_128_digest

FieldKind = Literal["str", "int", "float", "bool", "ms", "list"]

SYMBOL_RE = re.compile(r"^[A-Za-z0-9]{1,40}$")
# Currency codes, contract types and statuses: short identifiers, never free text.
IDENT_RE = re.compile(r"^[A-Za-z0-9_.\-]{1,40}$")
REQUIRED = ("symbol", "type", "status", "baseCurrency", "quoteCurrency", "settleCurrency")

# Milliseconds since the epoch between 2000 and 2200: anything outside is a corrupted date.
_MIN_MS = 946_684_800_000
_MAX_MS = 7_258_118_400_000
# What a date of a listed contract can plausibly be (tests/unit/test_contract_dates.py). No crypto futures
# contract of KuCoin's (or anyone's) opened before 2015. Relative to when the answer was fetched: a contract
# opens at most 90 days after it is listed (pre-market included), expires or settles within 5 years, and
# leaves pre-market within a year. These bounds only widen as time passes, so a contract found plausible
# stays plausible, which is what lets the validation memo reuse a result.
EARLIEST_MS = 1_420_070_400_000  # 2015-01-01
_DAY_MS = 86_400_000
_FUTURE_LIMITS_MS = {"firstOpenDate": 90 * _DAY_MS, "expireDate": 5 * 365 * _DAY_MS,
                     "settleDate": 5 * 365 * _DAY_MS, "preMarketToPerpDate": 365 * _DAY_MS}
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


# One contract object's JSON text: a zero-copy slice of the exchange's answer (msgspec's, or our own), or bytes.
RawJson = msgspec.Raw | bytes | memoryview


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
    values, raw = _fields(obj, _DEFAULT)
    return _validated(values[0], values[1], values[2:], raw)


def _validated(symbol: Any, status: Any, raw_meta: tuple[Any, ...], raw: RawJson, now_ms: int | None = None,
               floats: dict[float, float] | None = None) -> Contract:
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
    _check_dates(meta, now_ms)
    if floats is not None:
        meta = _shared(meta, floats)
    return Contract(symbol=symbol, status=status, meta=meta, raw=raw)


def _shared(meta: Meta, floats: dict[float, float]) -> Meta:
    """meta with its strings interned and each non-zero float replaced by an equal one met before (in floats):
    a registry holds one copy of "USDT" or of a fee rate, not one per contract (half its memory)."""
    return tuple(
        sys.intern(value) if type(value) is str else floats.setdefault(value, value) if type(value) is float and value
        else value  # a zero stays itself: 0.0 and -0.0 are equal as keys
        for value in meta
    )


def _check_dates(meta: Meta, now_ms: int | None) -> None:
    """InvalidContract for a date a listed contract cannot have (see EARLIEST_MS); None: no clock to judge by."""
    for key, at in _DATES_AT:
        value = meta[at]
        if value is None:
            continue
        if value < EARLIEST_MS:
            raise InvalidContract(f"{key} is before 2015: not a plausible date")
        if now_ms is not None and value > now_ms + _FUTURE_LIMITS_MS[key]:
            raise InvalidContract(f"{key} is too far ahead to be plausible")
    opened, expires = meta[_FIRST_OPEN_AT], meta[_EXPIRE_AT]
    if opened is not None and expires is not None and expires < opened:
        raise InvalidContract("expireDate is before firstOpenDate")


_CURRENCIES_AT = tuple(METADATA_KEYS.index(k) for k in ("baseCurrency", "quoteCurrency", "settleCurrency"))
_POSITIVE_AT = tuple(sorted(METADATA_KEYS.index(k) for k in _POSITIVE))
_RATES_AT = tuple(sorted(METADATA_KEYS.index(k) for k in _RATES))
_LEVERAGE_AT = METADATA_KEYS.index("maxLeverage")
_DATES_AT = tuple((key, METADATA_KEYS.index(key)) for key in _FUTURE_LIMITS_MS)

# What the cache keeps of a contract is its JSON text exactly as the exchange sent it, unknown keys and market data
# included, and every reader decodes it: so the whole text is checked before it is kept, not only the keys we
# use. A contract is refused (counted invalid) when it is larger than MAX_CONTRACT_BYTES, nests deeper than
# MAX_DEPTH, holds a number outside a double's range, a string that is not valid UTF-8, or is no JSON at all.
MAX_CONTRACT_BYTES = 64 * 1024
MAX_DEPTH = 16  # a contract is an object holding a list of strings (sourceExchanges): depth 2

# The fast path: one typed decode of the whole object. The keys we validate are decoded with wide types (a
# number may come as a string); market data and every other key the answer's first contract has are declared
# too (scalars; containers as Any, checked for depth after), and any other key fails the decode. A contract
# that fails it for whatever reason is decoded whole on the slow path, which accepts what is within bounds and
# names what is not.
_NUMBER = int | float | str | None
_SCALAR = str | int | float | bool | None
_DECODED_TYPE: dict[FieldKind, Any] = {
    "str": str | None, "bool": bool | None, "list": list[str] | None, "float": _NUMBER, "int": _NUMBER, "ms": _NUMBER,
}
# The keys validation reads, in the order of the values tuple it uses, with their types.
_TYPES: dict[str, Any] = {
    "symbol": str | None, "status": str | None, **{key: _DECODED_TYPE[kind] for key, _, kind in METADATA_FIELDS},
}
_CANONICAL = tuple(_TYPES)
_values = operator.attrgetter(*_CANONICAL)  # (symbol, status, *raw metadata values) of any fields struct
_KNOWN = {**_TYPES, **dict.fromkeys(sorted(MARKET_KEYS), _SCALAR)}


class FieldsDecoder:
    """Decodes one contract's JSON text whole into a struct of its fields (validating every value), fastest for
    the key order it was made for; raises msgspec.DecodeError (or RecursionError) when the text is not a
    contract of that shape within bounds."""

    __slots__ = ("containers", "decode")

    def __init__(self, fields: list[tuple[str, Any]]) -> None:
        struct = msgspec.defstruct("_ContractFields", [(key, kind, None) for key, kind in fields],
                                   forbid_unknown_fields=True)
        self.decode = msgspec.json.Decoder(struct).decode
        self.containers = tuple(key for key, kind in fields if kind is Any)

    def __call__(self, raw: RawJson) -> Any:
        fields = self.decode(raw)
        for key in self.containers:
            value = getattr(fields, key)
            if value is not None:
                check_bounds(value, key)
        return fields


_DEFAULT = FieldsDecoder(list(_KNOWN.items()))
# A decoder per key order seen (a few at most); the least recent goes when there are more.
_MAX_ORDERS = 8


def fields_decoder(sample: Any, decoders: dict[tuple[tuple[str, bool], ...], FieldsDecoder] | None = None,
                   ) -> FieldsDecoder:
    """A decoder of whole contracts shaped like sample (its keys, in its key order: msgspec matches each key
    against the fields starting after the last match, so the exchange's own order finds each at the first try);
    the fixed one when sample is no JSON object. decoders keeps those made for the shapes seen before."""
    try:
        text = type(sample) is msgspec.Raw or isinstance(sample, bytes | memoryview)
        decoded = orjson.loads(memoryview(sample)) if text else None
    except orjson.JSONDecodeError:
        decoded = None
    if not isinstance(decoded, dict):
        return _DEFAULT
    shape = tuple((key, isinstance(value, list | dict)) for key, value in decoded.items())
    shape += tuple((key, False) for key in _CANONICAL if key not in decoded)
    decoders = {} if decoders is None else decoders
    found = decoders.get(shape)
    if found is None:
        if len(decoders) >= _MAX_ORDERS:
            decoders.pop(next(iter(decoders)))
        fields = [(key, _KNOWN.get(key, Any if container else _SCALAR)) for key, container in shape]
        found = decoders[shape] = FieldsDecoder(fields)
    return found


def check_bounds(value: Any, key: str = "contract") -> None:
    """Raise InvalidContract when a decoded value nests deeper than MAX_DEPTH or holds a number that is not
    finite (strings and UTF-8 were checked by the decoder); the message names the contract's key it is under."""
    pending: list[tuple[Any, int, str]] = [(value, 1, key)]
    while pending:
        item, depth, under = pending.pop()
        if isinstance(item, dict):
            if depth > MAX_DEPTH:
                raise InvalidContract(f"{under} nests deeper than {MAX_DEPTH} levels")
            top = depth == 1 and under == "contract"
            pending.extend((child, depth + 1, str(name)[:40] if top else under) for name, child in item.items())
        elif isinstance(item, list):
            if depth > MAX_DEPTH:
                raise InvalidContract(f"{under} nests deeper than {MAX_DEPTH} levels")
            pending.extend((child, depth + 1, under) for child in item)
        elif isinstance(item, float) and not math.isfinite(item):
            raise InvalidContract(f"{under} holds a number out of range")


@dataclass(frozen=True, slots=True)
class ParseResult:
    """Valid contracts by symbol, and how many were skipped with the first reasons.

    unusable: symbols the answer lists but that could not be used (an invalid record whose symbol could be
    read, or a symbol listed twice): they are in the answer, so the registry keeps their rows as they are
    rather than taking them for absent. duplicated: those listed more than once.
    """

    contracts: dict[str, Contract]
    invalid: int
    reasons: tuple[str, ...]
    unusable: frozenset[str] = frozenset()
    duplicated: frozenset[str] = frozenset()


# One validation remembered: (the fingerprint of the values it was given, the normalised meta).
Validated = tuple[bytes, Meta]

_pack = msgspec.msgpack.Encoder().encode


def fingerprint(values: tuple[Any, ...]) -> bytes | None:
    """A contract's values as received, packed (msgpack: equal only for values equal in type too, so 1, 1.0 and
    True differ) and digested to 16 bytes (xxh3-128: 70 ns, where the packed values would keep 400 bytes a
    contract, 40 MB at 100,000); None when they cannot be packed."""
    try:
        return xxh3_128_digest(_pack(values))
    except (msgspec.EncodeError, OverflowError, TypeError, ValueError):
        return None


@dataclass(slots=True)
class ParseMemo:
    """What parsing keeps between syncs in one process: each symbol's last validation (Validated), and the
    decoders made for the answer shapes seen."""

    validated: dict[str, Validated] = field(default_factory=dict)
    decoders: dict[tuple[tuple[str, bool], ...], FieldsDecoder] = field(default_factory=dict)

    def seed(self, known: Iterable[tuple[str, Meta, bytes]], *, newer: bool = False) -> None:
        """Remember validations made elsewhere (symbol, meta, fingerprint of the values) for the symbols this
        memo has none of, or for every symbol when they are newer than this memo's: a validation depends on the
        values alone (see parse_contracts)."""
        validated = self.validated
        for symbol, meta, digest in known:
            if newer or symbol not in validated:
                validated[symbol] = (digest, meta)


def _fields(item: Any, decode: FieldsDecoder) -> tuple[tuple[Any, ...], RawJson]:
    """(symbol, status and raw metadata values; the JSON text to keep) of one list item, every part of it checked;
    InvalidContract if it is no contract within bounds."""
    if type(item) is msgspec.Raw or isinstance(item, bytes | memoryview):
        if memoryview(item).nbytes > MAX_CONTRACT_BYTES:
            raise InvalidContract(f"contract is larger than {MAX_CONTRACT_BYTES // 1024} KiB")
        try:
            return _values(decode(item)), item
        except (msgspec.DecodeError, RecursionError):  # another shape, or out of bounds: the slow path says which
            pass
        try:
            decoded = orjson.loads(memoryview(item))
        except (orjson.JSONDecodeError, RecursionError):
            raise InvalidContract("contract is not JSON within bounds (depth, number range, UTF-8)") from None
        if not isinstance(decoded, dict):
            raise InvalidContract(f"contract is a {type(decoded).__name__}, expected an object")
        check_bounds(decoded)
        return (decoded.get("symbol"), decoded.get("status"), *map(decoded.get, METADATA_KEYS)), item
    if not isinstance(item, dict):
        raise InvalidContract(f"contract is a {type(item).__name__}, expected an object")
    check_bounds(item)
    raw = _json(item)
    if len(raw) > MAX_CONTRACT_BYTES:
        raise InvalidContract(f"contract is larger than {MAX_CONTRACT_BYTES // 1024} KiB")
    return (item.get("symbol"), item.get("status"), *map(item.get, METADATA_KEYS)), raw


def _json(obj: dict[str, Any]) -> bytes:
    # orjson 3.12+ over-allocates each output about 8x; an exact-size copy keeps many of them small.
    try:
        return memoryview(orjson.dumps(obj)).tobytes()
    except orjson.JSONEncodeError:
        raise InvalidContract("contract cannot be written as JSON (a number out of range?)") from None


def parse_contracts(
    items: Iterable[Any], keep_reasons: int = 5, memo: ParseMemo | None = None, now_ms: int | None = None,
) -> ParseResult:
    """Parse a contract list (JSON texts or decoded objects); bad records are counted as invalid, never raised.
    now_ms, when the answer was fetched, bounds the dates a contract may have.

    A symbol listed more than once is ambiguous (which copy is the exchange's?): every copy counts invalid and
    none is used. With a memo (kept between syncs by the caller), a contract whose status and raw metadata values
    equal last time's reuses last time's result: validation depends on nothing else, and most never change.
    """
    parser = ContractParser(memo, now_ms, keep_reasons)
    parser.add(items)
    return parser.result()


class ContractParser:
    """parse_contracts a batch at a time, for an answer read in parts: add each batch in the answer's order, then
    take the result. With keep_raw=False a contract keeps no JSON text (add returns it instead), so a batch's
    text can go once it is staged."""

    def __init__(self, memo: ParseMemo | None = None, now_ms: int | None = None, keep_reasons: int = 5) -> None:
        self.memo = memo
        self.now_ms = now_ms
        self.keep_reasons = keep_reasons
        self.contracts: dict[str, Contract] = {}
        self.invalid = 0
        self.reasons: list[str] = []
        self.items = 0
        self.fresh: dict[str, Validated] = {}
        self.seen: dict[str, int] = {}  # copies of each readable symbol, valid or not
        self.valid_copies: dict[str, int] = {}
        self.unusable: set[str] = set()
        self.decode: FieldsDecoder | None = None
        self.floats: dict[float, float] = {}  # the floats of this parse's metadata, one object per value

    def add(self, items: Iterable[Any], *, keep_raw: bool = True) -> list[tuple[str, RawJson]]:
        """Parse the next batch; returns (symbol, JSON text) of each contract it adds (first copies only)."""
        memo, contracts, seen, valid_copies = self.memo, self.contracts, self.seen, self.valid_copies
        validated = None if memo is None else memo.validated
        added: list[tuple[str, RawJson]] = []
        index = self.items - 1
        for index, item in enumerate(items, self.items):
            if self.decode is None:
                self.decode = fields_decoder(item, None if memo is None else memo.decoders)
            values: tuple[Any, ...] | None = None
            try:
                values, raw = _fields(item, self.decode)
                symbol = values[0]
                digest = fingerprint(values) if validated is not None else None
                known = validated.get(symbol) if validated is not None and type(symbol) is str else None
                kept = raw if keep_raw else b""
                if known is not None and digest is not None and known[0] == digest:  # one comparison of bytes
                    contract = Contract(symbol, values[1], known[1], kept)
                    remembered: Validated | None = known
                else:
                    contract = _validated(symbol, values[1], values[2:], kept, self.now_ms, self.floats)
                    remembered = (digest, contract.meta) if digest is not None else None
            except InvalidContract as exc:
                self.invalid += 1
                if len(self.reasons) < self.keep_reasons:
                    self.reasons.append(f"item {index}: {exc}")
                readable = _readable_symbol(item, values)
                if readable is not None:
                    seen[readable] = seen.get(readable, 0) + 1
                    self.unusable.add(readable)
                continue
            seen[symbol] = seen.get(symbol, 0) + 1
            valid_copies[symbol] = valid_copies.get(symbol, 0) + 1
            if symbol in contracts:
                continue  # a second copy: judged in result(), with the first
            contracts[symbol] = contract
            added.append((symbol, raw))
            if remembered is not None:
                self.fresh[symbol] = remembered
        self.items = index + 1
        return added

    def result(self) -> ParseResult:
        """Every batch's contracts, the duplicated symbols set aside; the memo now remembers this answer."""
        contracts, reasons, invalid = self.contracts, self.reasons, self.invalid
        duplicated = {symbol for symbol, copies in self.seen.items() if copies > 1}
        for symbol in sorted(duplicated):
            invalid += self.valid_copies.get(symbol, 0)  # the invalid copies are counted already
            contracts.pop(symbol, None)
            self.fresh.pop(symbol, None)
            if len(reasons) < self.keep_reasons:
                reasons.append(f"duplicate symbol {symbol} ({self.seen[symbol]} copies): kept as registered")
        if self.memo is not None:
            # Only this snapshot's symbols stay remembered, so the memo never outgrows the exchange.
            self.memo.validated = self.fresh
        return ParseResult(contracts=contracts, invalid=invalid, reasons=tuple(reasons),
                           unusable=frozenset(self.unusable | duplicated), duplicated=frozenset(duplicated))


_SYMBOL_IN_TEXT = re.compile(rb'"symbol"\s*:\s*"([A-Za-z0-9]{1,40})"')


def _readable_symbol(item: Any, values: tuple[Any, ...] | None) -> str | None:
    """The symbol of an invalid record, when one can be read from it with confidence; else None."""
    if values is not None:
        symbol = values[0]
    elif isinstance(item, dict):
        symbol = item.get("symbol")
    elif type(item) is msgspec.Raw or isinstance(item, bytes | memoryview):
        match = _SYMBOL_IN_TEXT.search(memoryview(item))  # the record did not decode: its text, searched
        symbol = match.group(1).decode() if match else None
    else:
        symbol = None
    return symbol if isinstance(symbol, str) and SYMBOL_RE.fullmatch(symbol) else None


def contract_list(body: bytes | bytearray | memoryview) -> Sequence[RawJson] | None:
    """The data list of a success envelope as one JSON text per contract (zero-copy slices of body);
    None when body is not such an envelope."""
    try:
        return _decode_envelope(body).data
    except (msgspec.DecodeError, RecursionError):
        # One item the decoder cannot even skip over (nested past its recursion limit, a string it refuses):
        # cut the list by hand, so that the item alone is refused. No list at all: None.
        return split_data_list(body)


# The tokens that matter for cutting a JSON text by hand: a whole string (escapes included), a bracket, a colon.
_TOKENS = re.compile(rb'"(?:[^"\\]|\\.)*"|[\[\]{}:]')


def split_data_list(body: bytes | bytearray | memoryview) -> list[memoryview] | None:
    """The object and list items of an envelope's top-level "data" list as slices of body, found without
    recursion (a slow pass, for the answer the decoder could not take; other items are left out); None when
    there is no such list, or the answer is no valid JSON once each item is set aside."""
    view = memoryview(body)
    depth = 0
    key: bytes | None = None
    start = -1
    spans: list[tuple[int, int]] = []
    in_data = False
    for match in _TOKENS.finditer(view):
        token = match.group()
        if token[:1] == b'"':
            if depth == 1 and not in_data:
                key = token
            continue
        if token == b":":
            continue
        if token in (b"[", b"{"):
            depth += 1
            if in_data and depth == 3:
                start = match.start()
            elif depth == 2 and key == b'"data"' and token == b"[":
                in_data = True
            continue
        depth -= 1
        if in_data and depth == 2 and start >= 0:
            spans.append((start, match.end()))
            start = -1
        elif in_data and depth == 1:
            return [view[a:b] for a, b in spans] if _well_formed_around(view, spans) else None
    return None


def _well_formed_around(view: memoryview, spans: list[tuple[int, int]]) -> bool:
    """Whether the answer is valid JSON once each item is replaced by 0 (the items are judged one by one)."""
    parts: list[bytes | memoryview] = []
    offset = 0
    for start, end in spans:
        parts += (view[offset:start], b"0")
        offset = end
    parts.append(view[offset:])
    try:
        msgspec.json.decode(b"".join(parts))
    except (msgspec.DecodeError, RecursionError):
        return False
    return True


class _Envelope(msgspec.Struct):
    data: list[msgspec.Raw]


_decode_envelope = msgspec.json.Decoder(_Envelope).decode

# The head of a plainly successful answer: the fetch step recognises one by it without decoding (fetch/kucoin.py),
# and contract_batches cuts one into parts after it.
OK_LIST_HEAD = re.compile(rb'\A\s*\{\s*"code"\s*:\s*"200000"\s*,\s*"data"\s*:\s*\[')
_ITEM_END = re.compile(rb"\}\s*,")
_decode_items = msgspec.json.Decoder(list[msgspec.Raw]).decode
_CUTS_TRIED = 4


def contract_batches(parts: Iterable[bytes], batch_bytes: int) -> Iterator[Sequence[RawJson]]:
    """contract_list of an answer read a part at a time: its contracts' JSON texts, in batches of about
    batch_bytes, so that only one batch of the answer is held at a time. Raises ValueError, after the batches
    before, when the answer is no success envelope.

    A batch ends after an item's closing brace that a comma follows, and only where the text up to it decodes as
    a list of whole items: inside a string, or inside an item, it would not. Where no such end is found (an
    answer of another shape, an item the decoder refuses), the rest is read whole and cut by contract_list.
    """
    pending = bytearray()
    started = False
    parts = iter(parts)
    for part in parts:
        pending += part
        if not started:
            if len(pending) < 256:
                continue
            head = OK_LIST_HEAD.match(pending)
            if head is None:
                break  # another shape: decoded whole below
            del pending[:head.end()]
            started = True
        if len(pending) >= batch_bytes:
            cut = _cut(pending)
            if cut is not None:
                items, end = cut
                del pending[:end]
                yield items
    if started:  # the loop read every part: the rest of the list follows a head of its own
        pending[:0] = b'{"data":['
    else:
        pending += b"".join(parts)  # what the loop left unread, if it stopped at a head of another shape
    rest = contract_list(pending)
    if rest is None:
        raise ValueError("the answer holds no contract list")
    yield rest


def _cut(pending: bytearray) -> tuple[Sequence[RawJson], int] | None:
    """The whole items at the start of pending (the text after the list's opening bracket or a comma), and where
    the next item starts; None when no end of an item is found near the end of pending."""
    at = len(pending)
    for _ in range(_CUTS_TRIED):
        at = pending.rfind(b"}", 0, at)
        if at < 0:
            return None
        comma = _ITEM_END.match(pending, at)
        if comma is None:
            continue
        with memoryview(pending) as view:
            piece = b"".join((b"[", view[:at + 1], b"]"))
        try:
            return _decode_items(piece), comma.end()
        except (msgspec.DecodeError, RecursionError):
            continue
    return None
