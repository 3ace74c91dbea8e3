"""Deterministic, realistic KuCoin futures contract objects for the local simulator and tests.

The shape follows the 2025 `contracts/active` capture: linear USDT and USDC perpetuals, inverse
coin-margined perpetuals and quarterly `FFICSX` futures, with listing metadata and market data.
"""

from __future__ import annotations

import calendar
import datetime as dt
import math
import random
from collections.abc import Callable, Iterator
from typing import Any, Literal

from tokenwatch.clock import DAY_MS, HOUR_MS, paused_gc

Kind = Literal["USDT", "USDC", "INVERSE", "QUARTERLY"]

# Used when no `now_ms` is given so the same seed gives byte-identical output on any day.
REFERENCE_NOW_MS = 1_793_491_200_000  # 2026-11-01T00:00:00Z
MIN_AGE_MS = 30 * DAY_MS
MAX_AGE_MS = 6 * 365 * DAY_MS

# A few real coins first (rough prices), so small lists look like the real exchange.
REAL_BASES: tuple[tuple[str, float], ...] = (
    ("XBT", 91000.0), ("ETH", 3100.0), ("SOL", 140.0), ("XRP", 2.1), ("DOGE", 0.16), ("ADA", 0.45),
    ("TRX", 0.28), ("AVAX", 14.0), ("LINK", 13.5), ("DOT", 2.4), ("BCH", 520.0), ("LTC", 88.0),
    ("TON", 1.6), ("SUI", 1.7), ("NEAR", 2.1), ("APT", 3.2), ("ARB", 0.22), ("OP", 0.35),
    ("UNI", 6.2), ("AAVE", 190.0), ("ATOM", 2.6), ("FIL", 1.6), ("ETC", 13.0), ("XLM", 0.25),
    ("HBAR", 0.15), ("INJ", 6.0), ("WIF", 0.4), ("PEPE", 0.0000045), ("1000BONK", 0.011),
    ("SHIB", 0.0000085), ("SEI", 0.15), ("TIA", 0.7), ("ENA", 0.28), ("WLD", 0.6), ("JUP", 0.25),
    ("FET", 0.25), ("RENDER", 1.8), ("ORDI", 4.5), ("STX", 0.3), ("ALGO", 0.14),
)
# Extra contract kinds the real exchange lists for its largest coins.
_REAL_EXTRAS: dict[str, tuple[Kind, ...]] = {
    "XBT": ("USDC", "INVERSE", "QUARTERLY", "QUARTERLY"),
    "ETH": ("USDC", "INVERSE", "QUARTERLY"),
    "SOL": ("USDC", "INVERSE"),
    "XRP": ("USDC", "INVERSE"),
    "DOGE": ("USDC",),
    "DOT": ("INVERSE",),
    "LTC": ("INVERSE",),
    "SUI": ("USDC",),
}
_SYNTH_PREFIX = "TKN"
_SYNTH_DIGITS = 5
_ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"
_SYNTH_SPACE: int = len(_ALPHABET) ** _SYNTH_DIGITS
# Two base-36 digits per lookup: name generation is on the hot path of 100k-contract lists.
_PAIRS = tuple(a + b for a in _ALPHABET for b in _ALPHABET)
_PAIRS_SPACE_2 = len(_PAIRS)
_PAIRS_SPACE: int = _PAIRS_SPACE_2 * _PAIRS_SPACE_2
# Quarterly month codes, as in XBTMH27 (March 2027).
_MONTH_CODES = {3: "H", 6: "M", 9: "U", 12: "Z"}
_EXCHANGES = ("binance", "okex", "bybit", "gateio", "kucoin", "bitget", "mexc", "htx", "bitmart", "coinbase")
_LEVERAGES = (75, 50, 50, 30, 20, 20, 20, 10, 8, 5)


def _synthetic_perm(seed: int) -> tuple[int, int]:
    """An affine permutation of the synthetic name space: distinct names, scrambled by the seed."""
    rng = random.Random(f"names:{seed}")
    step = rng.randrange(1, _SYNTH_SPACE)
    # The space is 36**5 = 2**10 * 3**10: a step coprime with 2 and 3 makes the map a bijection.
    while step % 2 == 0 or step % 3 == 0:
        step += 1
    return step, rng.randrange(_SYNTH_SPACE)


def base_name(index: int, seed: int = 0) -> str:
    """The base currency of base number `index`: a real coin first, then synthetic `TKNxxxxx` names."""
    if index < 0:
        raise ValueError("base index must be >= 0")
    if index < len(REAL_BASES):
        return REAL_BASES[index][0]
    return _synthetic_name(index - len(REAL_BASES), *_synthetic_perm(seed))


def _synthetic_name(i: int, step: int, offset: int) -> str:
    if i >= _SYNTH_SPACE:
        raise ValueError(f"at most {_SYNTH_SPACE} synthetic base names")
    value = (i * step + offset) % _SYNTH_SPACE
    high, low = divmod(value, _PAIRS_SPACE)
    mid, low = divmod(low, _PAIRS_SPACE_2)
    return _SYNTH_PREFIX + _ALPHABET[high] + _PAIRS[mid] + _PAIRS[low]


def _quarter_expiries(now_ms: int, count: int = 2) -> list[tuple[str, int]]:
    """The next quarterly expiries after now: (suffix like 'H27', last Friday of the month 12:00 UTC)."""
    now = dt.datetime.fromtimestamp(now_ms / 1000, tz=dt.UTC)
    year, month = now.year, now.month
    found: list[tuple[str, int]] = []
    while len(found) < count:
        if month in _MONTH_CODES:
            last_day = calendar.monthrange(year, month)[1]
            day = dt.datetime(year, month, last_day, 12, tzinfo=dt.UTC)
            day -= dt.timedelta(days=(day.weekday() - calendar.FRIDAY) % 7)
            expiry_ms = int(day.timestamp() * 1000)
            # Skip an expiry less than a week away: KuCoin lists the next one by then.
            if expiry_ms > now_ms + 7 * DAY_MS:
                found.append((f"{_MONTH_CODES[month]}{year % 100:02d}", expiry_ms))
        month += 1
        if month > 12:
            month, year = 1, year + 1
    return found


# Powers of ten as the exchange prints them (0.001, not 0.0010000000000000002).
_POW10: dict[int, float] = {e: float(f"1e{e}") for e in range(-22, 23)}
_QUOTE: dict[str, str] = {"USDT": "USDT", "USDC": "USDC", "INVERSE": "USD", "QUARTERLY": "USD"}
_FUNDING_8H = 8 * HOUR_MS
_FUNDING_4H = 4 * HOUR_MS
# A handful of index-source sets, picked per contract (cheaper than sampling each time).
_SOURCE_SETS: tuple[tuple[str, ...], ...] = tuple(
    tuple(random.Random(i).sample(_EXCHANGES, 4 + i % 3)) for i in range(16)
)
_RISK_K = (490.0, 300.0, 200.0, 100.0)
_RISK_M = (300.0, 200.0, 150.0, 300.0)
# round(x, d) goes through decimal strings and costs ~300 ns; floor(x * 10**d + 0.5) / 10**d gives the
# same short float for these magnitudes several times faster, which matters at 100k contracts.
_floor = math.floor


class _Level:
    """Sizes that depend only on a coin's price magnitude (shared by every coin of that magnitude)."""

    __slots__ = ("decimals", "index_tick", "max_price", "multiplier", "s0", "s1", "s2", "tick")

    def __init__(self, magnitude: int) -> None:
        # Tick of five significant digits and a contract worth about 10-100 USD, as KuCoin sizes them.
        self.decimals = d = max(0, 5 - magnitude)
        self.s0, self.s1, self.s2 = _POW10[d], _POW10[d + 1], _POW10[d + 2]
        self.tick = _POW10[magnitude - 5]
        self.index_tick = _POW10[magnitude - 6]
        self.max_price = 1_000_000.0 if magnitude < 5 else _POW10[magnitude + 2]
        self.multiplier = _POW10[1 - magnitude]


_LEVELS: dict[int, _Level] = {m: _Level(m) for m in range(-12, 8)}
_MARGINS: dict[int, tuple[float, float]] = {}


def _margins(leverage: int) -> tuple[float, float]:
    """(initialMargin, maintainMargin) for a max leverage, cached: few distinct leverages exist."""
    found = _MARGINS.get(leverage)
    if found is None:
        initial = round(1.0 / leverage, 6)
        found = _MARGINS[leverage] = (initial, round(initial / 2, 6))
    return found


class _Base:
    """Per-coin parameters shared by all of its contracts, drawn once."""

    __slots__ = ("display", "initial", "level", "leverage", "maintain", "name", "price")

    def __init__(self, name: str, price: float, leverage: int, magnitude: int | None = None) -> None:
        self.name = name
        self.display = "BTC" if name == "XBT" else name
        self.price = price
        if magnitude is None:
            magnitude = math.floor(math.log10(price))
        self.level = _LEVELS[min(7, max(-12, magnitude))]
        self.leverage = leverage
        self.initial, self.maintain = _margins(leverage)


# Every key of a 2025 contract object, in the exchange's order. Copying a prepared template and then
# setting the varying keys is several times faster than a 68-key dict literal.
_COMMON: dict[str, Any] = {
    "symbol": "", "rootSymbol": "USDT", "type": "FFWCSX", "firstOpenDate": 0, "expireDate": None,
    "settleDate": None, "baseCurrency": "", "quoteCurrency": "USDT", "settleCurrency": "USDT",
    "maxOrderQty": 1_000_000, "maxPrice": 1_000_000.0, "lotSize": 1, "tickSize": 1.0,
    "indexPriceTickSize": 0.1, "multiplier": 1.0, "initialMargin": 0.05, "maintainMargin": 0.025,
    "maxRiskLimit": 25_000, "minRiskLimit": 25_000, "riskStep": 12_500, "makerFeeRate": 0.0002,
    "takerFeeRate": 0.0006, "takerFixFee": 0.0, "makerFixFee": 0.0, "settlementFee": None,
    "isDeleverage": True, "isQuanto": True, "isInverse": False, "markMethod": "FairPrice",
    "fairMethod": "FundingRate", "fundingBaseSymbol": None, "fundingQuoteSymbol": None,
    "fundingRateSymbol": None, "indexSymbol": "", "settlementSymbol": "", "status": "Open",
    "fundingFeeRate": None, "predictedFundingFeeRate": None, "fundingRateGranularity": None,
    "openInterest": "0", "turnoverOf24h": 0.0, "volumeOf24h": 0.0, "markPrice": 0.0, "indexPrice": 0.0,
    "lastTradePrice": 0.0, "nextFundingRateTime": None, "nextFundingRateDateTime": None,
    "maxLeverage": 20, "sourceExchanges": [], "premiumsSymbol1M": "", "premiumsSymbol8H": "",
    "fundingBaseSymbol1M": None, "fundingQuoteSymbol1M": None, "lowPrice": 0.0, "highPrice": 0.0,
    "priceChgPct": 0.0, "priceChg": 0.0, "k": 490.0, "m": 300.0, "f": 1.3, "mmrLimit": 0.3,
    "mmrLevConstant": 20.0, "supportCross": True, "buyLimit": 0.0, "sellLimit": 0.0,
    "marketStage": "NORMAL", "preMarketToPerpDate": None, "displaySymbol": "",
}


def _template(kind: Kind, granularity: int | None) -> dict[str, Any]:
    quote = _QUOTE[kind]
    template = dict(_COMMON, quoteCurrency=quote)
    if kind in ("USDT", "USDC"):
        template.update(rootSymbol=quote, settleCurrency=quote)
    else:
        template.update(
            maxOrderQty=10_000_000, multiplier=-1.0, maxRiskLimit=40, minRiskLimit=40, riskStep=20,
            isQuanto=False, isInverse=True, settlementSymbol=None,
        )
    if kind == "QUARTERLY":
        template.update(type="FFICSX", fairMethod="InterestRate")
    else:
        period = "8H" if granularity == _FUNDING_8H else "4H"
        template.update(
            fundingQuoteSymbol=f".{quote}INT{period}", fundingQuoteSymbol1M=f".{quote}INT",
            fundingRateGranularity=granularity,
        )
    return template


_TEMPLATES: dict[tuple[str, int | None], dict[str, Any]] = {
    (kind, granularity): _template(kind, granularity)
    for kind in ("USDT", "USDC", "INVERSE")
    for granularity in (_FUNDING_4H, _FUNDING_8H)
}
_TEMPLATES["QUARTERLY", None] = _template("QUARTERLY", None)


def _build(
    base: _Base, kind: Kind, rnd: Callable[[], float], now_ms: int, first_open_ms: int,
    expiry: tuple[str, int] | None = None, symbol: str | None = None,
) -> dict[str, Any]:
    """One contract object of the given kind, with fresh market data: the generator's hot path."""
    name = base.name
    quote = _QUOTE[kind]
    floor = _floor
    if kind == "QUARTERLY":
        if expiry is None:
            raise ValueError("a quarterly contract needs an expiry")
        symbol = symbol or f"{name}M{expiry[0]}"
        c = _TEMPLATES[kind, None].copy()
        c["expireDate"] = c["settleDate"] = expiry[1]
    else:
        symbol = symbol or f"{name}{quote}M"
        granularity = _FUNDING_8H if rnd() < 0.7 else _FUNDING_4H
        period = "8H" if granularity == _FUNDING_8H else "4H"
        c = _TEMPLATES[kind, granularity].copy()
        c["fundingBaseSymbol"] = f".{name}INT{period}"
        c["fundingRateSymbol"] = f".{symbol}FPI{period}"
        c["fundingBaseSymbol1M"] = f".{name}INT"
        c["fundingFeeRate"] = floor(900.0 * rnd() - 299.5) / 1e6
        c["predictedFundingFeeRate"] = floor(900.0 * rnd() - 299.5) / 1e6
        # Funding settles on UTC multiples of the granularity; KuCoin's "time" is the countdown.
        next_funding = (now_ms // granularity + 1) * granularity
        c["nextFundingRateTime"] = next_funding - now_ms
        c["nextFundingRateDateTime"] = next_funding
    inverse = kind in {"QUARTERLY", "INVERSE"}
    c["symbol"] = symbol
    c["firstOpenDate"] = first_open_ms
    c["baseCurrency"] = name
    level = base.level
    c["maxPrice"] = level.max_price
    c["tickSize"] = level.tick
    c["indexPriceTickSize"] = level.index_tick
    if kind == "USDT":
        leverage = base.leverage
        c["initialMargin"] = base.initial
        c["maintainMargin"] = base.maintain
    else:
        leverage = max(5, base.leverage // 2)
        c["initialMargin"], c["maintainMargin"] = _margins(leverage)
    c["maxLeverage"] = leverage
    c["mmrLevConstant"] = float(leverage)
    if inverse:
        c["rootSymbol"] = c["settleCurrency"] = name
        c["indexSymbol"] = index_symbol = ".BXBT" if name == "XBT" else f".K{name}USD"
        if kind == "QUARTERLY":
            c["settlementSymbol"] = index_symbol + "30"
    else:
        c["multiplier"] = level.multiplier
        c["indexSymbol"] = f".K{name}{quote}"
        if base.leverage >= 100:
            c["maxRiskLimit"] = c["minRiskLimit"] = 100_000
            c["riskStep"] = 50_000
    c["sourceExchanges"] = list(_SOURCE_SETS[int(rnd() * 16)])
    c["premiumsSymbol1M"] = f".{symbol}PI"
    c["premiumsSymbol8H"] = f".{symbol}PI8H"
    c["k"] = _RISK_K[int(rnd() * 4)]
    c["m"] = _RISK_M[int(rnd() * 4)]
    c["displaySymbol"] = base.display + symbol[len(name):]

    s0, s1, s2 = level.s0, level.s1, level.s2
    last = base.price * (0.98 + 0.04 * rnd())
    c["priceChgPct"] = pct = floor(1600.0 * rnd() - 799.5) / 10_000.0
    open_price = last / (1.0 + pct)
    mark = last * (0.9995 + 0.001 * rnd())
    c["markPrice"] = floor(mark * s0 + 0.5) / s0
    c["indexPrice"] = floor(mark * (0.9997 + 0.0006 * rnd()) * s1 + 0.5) / s1
    c["lastTradePrice"] = floor(last * s0 + 0.5) / s0
    c["lowPrice"] = floor(min(last, open_price) * (1.0 - 0.04 * rnd()) * s0 + 0.5) / s0
    c["highPrice"] = floor(max(last, open_price) * (1.0 + 0.04 * rnd()) * s0 + 0.5) / s0
    c["priceChg"] = floor((last - open_price) * s0 + 0.5) / s0
    c["buyLimit"] = floor(mark * 1.05 * s2 + 0.5) / s2
    c["sellLimit"] = floor(mark * 0.95 * s2 + 0.5) / s2
    # Open interest spans 10 to 10 million lots: a long tail of small coins and a few big ones.
    lots = int(10.0 ** (1.0 + 6.0 * rnd() * rnd()))
    c["openInterest"] = str(lots)
    traded = lots * (0.5 + 3.5 * rnd())
    if inverse:
        # Inverse: volume in contracts of 1 USD, turnover in the base coin.
        c["volumeOf24h"] = float(int(traded))
        c["turnoverOf24h"] = floor(traded / last * 1e8 + 0.5) / 1e8
    else:
        c["volumeOf24h"] = volume = floor(traded * level.multiplier * 1e4 + 0.5) / 1e4
        c["turnoverOf24h"] = floor(volume * last * 1e4 + 0.5) / 1e4
    return c


def _set_prices(
    contract: dict[str, Any], d: int, last: float, open_price: float, low: float, high: float,
    rnd: Callable[[], float],
) -> None:
    s0, s1, s2 = _POW10[d], _POW10[d + 1], _POW10[d + 2]
    mark = last * (0.9995 + 0.001 * rnd())
    contract["markPrice"] = _floor(mark * s0 + 0.5) / s0
    contract["indexPrice"] = _floor(mark * (0.9997 + 0.0006 * rnd()) * s1 + 0.5) / s1
    contract["lastTradePrice"] = _floor(last * s0 + 0.5) / s0
    contract["lowPrice"] = _floor(min(low, last) * s0 + 0.5) / s0
    contract["highPrice"] = _floor(max(high, last) * s0 + 0.5) / s0
    contract["priceChgPct"] = _floor((last / open_price - 1.0) * 10_000.0 + 0.5) / 10_000.0
    contract["priceChg"] = _floor((last - open_price) * s0 + 0.5) / s0
    contract["buyLimit"] = _floor(mark * 1.05 * s2 + 0.5) / s2
    contract["sellLimit"] = _floor(mark * 0.95 * s2 + 0.5) / s2


def _set_volume(contract: dict[str, Any], traded_lots: float, price: float, multiplier: float) -> None:
    if contract["isInverse"]:
        contract["volumeOf24h"] = float(int(traded_lots))
        contract["turnoverOf24h"] = _floor(traded_lots / price * 1e8 + 0.5) / 1e8
    else:
        volume = _floor(traded_lots * multiplier * 1e4 + 0.5) / 1e4
        contract["volumeOf24h"] = volume
        contract["turnoverOf24h"] = _floor(volume * price * 1e4 + 0.5) / 1e4


def _set_funding_time(contract: dict[str, Any], now_ms: int) -> None:
    granularity = int(contract["fundingRateGranularity"])
    next_at = (now_ms // granularity + 1) * granularity
    contract["nextFundingRateDateTime"] = next_at
    contract["nextFundingRateTime"] = next_at - now_ms


_DECIMALS: dict[float, int] = {}


def _tick_decimals(tick: float) -> int:
    """Decimals of a tick size (0.05 -> 2), so prices stay as short as the exchange prints them."""
    found = _DECIMALS.get(tick)
    if found is None:
        found = max(0, math.ceil(-math.log10(tick) - 1e-9)) if tick > 0 else 8
        found = _DECIMALS[tick] = min(found, 18)
    return found


def _plan(n: int, rng: random.Random) -> Iterator[tuple[int, Kind]]:
    """(base index, kind) in listing order: each coin's USDT perpetual, then its extras."""
    index = 0
    emitted = 0
    while emitted < n:
        if index < len(REAL_BASES):
            kinds: tuple[Kind, ...] = ("USDT", *_REAL_EXTRAS.get(REAL_BASES[index][0], ()))
        else:
            draw = rng.random()
            # About 6 % of synthetic coins get a USDC perpetual, 1 % an inverse one, 0.5 % a quarterly.
            if draw < 0.005:
                kinds = ("USDT", "QUARTERLY")
            elif draw < 0.015:
                kinds = ("USDT", "INVERSE")
            elif draw < 0.075:
                kinds = ("USDT", "USDC")
            else:
                kinds = ("USDT",)
        for kind in kinds:
            if emitted >= n:
                return
            yield index, kind
            emitted += 1
        index += 1


def _make_base(index: int, rng: random.Random, step: int, offset: int) -> _Base:
    if index < len(REAL_BASES):
        name, price = REAL_BASES[index]
        leverage = 125 if name == "XBT" else 100 if name == "ETH" else 75 if index < 10 else 50
    else:
        name = _synthetic_name(index - len(REAL_BASES), step, offset)
        exponent = 10.0 * rng.random() - 6.0
        leverage = _LEVERAGES[int(rng.random() * len(_LEVERAGES))]
        return _Base(name, 10.0**exponent, leverage, _floor(exponent))
    return _Base(name, price, leverage)


def generate_contracts(n: int, *, seed: int = 0, now_ms: int | None = None) -> list[dict[str, Any]]:
    """n distinct contract objects shaped like KuCoin's 2025 `contracts/active` data; same seed, same list.

    Without `now_ms` a fixed reference time is used, so the output never depends on the clock.
    """
    if n < 0:
        raise ValueError("n must be >= 0")
    now = REFERENCE_NOW_MS if now_ms is None else now_ms
    with paused_gc():  # only new, acyclic dicts are made here
        return _generate(n, seed, now)


def _generate(n: int, seed: int, now: int) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    rnd = rng.random
    step, offset = _synthetic_perm(seed)
    expiries = _quarter_expiries(now)
    contracts: list[dict[str, Any]] = []
    append = contracts.append
    base: _Base | None = None
    base_index = -1
    quarterlies = 0
    for index, kind in _plan(n, rng):
        if base is None or index != base_index:
            base, base_index = _make_base(index, rng, step, offset), index
            quarterlies = 0
        # Listing times on the hour, between 30 days and 6 years ago: nothing looks freshly listed.
        age = MIN_AGE_MS + int(rnd() * (MAX_AGE_MS - MIN_AGE_MS))
        first_open = (now - age) // HOUR_MS * HOUR_MS
        expiry = None
        if kind == "QUARTERLY":
            expiry = expiries[quarterlies % len(expiries)]
            quarterlies += 1
        append(_build(base, kind, rnd, now, first_open, expiry))
    return contracts


def new_contract(
    index_or_base: int | str, now_ms: int, *, seed: int = 0, quote: str = "USDT", symbol: str | None = None,
) -> dict[str, Any]:
    """A freshly listed perpetual (firstOpenDate = now_ms) for base number `index_or_base` or that coin.

    `quote` is USDT, USDC or USD (inverse); `symbol` overrides the usual `<BASE><QUOTE>M` symbol.
    """
    kinds: dict[str, Kind] = {"USDT": "USDT", "USDC": "USDC", "USD": "INVERSE"}
    if quote not in kinds:
        raise ValueError(f"quote must be one of {sorted(kinds)}")
    name = base_name(index_or_base, seed) if isinstance(index_or_base, int) else index_or_base
    if not name or not name.isalnum() or not name.isascii():
        raise ValueError("base currency must be letters and digits")
    # Seeded by coin name so the same listing looks the same in every run.
    rng = random.Random(f"new:{seed}:{name}:{quote}")
    real = dict(REAL_BASES)
    price = real.get(name) or 10.0 ** rng.uniform(-6.0, 4.0)
    base = _Base(name, price, rng.choice(_LEVERAGES))
    return _build(base, kinds[quote], rng.random, now_ms, now_ms, symbol=symbol)


def market_tick(contract: dict[str, Any], rng: random.Random, now_ms: int | None = None) -> None:
    """Move one contract's market data (the keys of domain.contracts.MARKET_KEYS) in place; nothing else.

    With `now_ms` the funding countdown is recomputed from the clock, otherwise it just runs down a bit.
    """
    rnd = rng.random
    last = float(contract["lastTradePrice"] or 0.0)
    if not last > 0:
        return
    d = _tick_decimals(float(contract["tickSize"] or 0.0))
    # The open price is implied by the last price and the 24 h change: keep it so the change stays coherent.
    pct_old = float(contract["priceChgPct"] or 0.0)
    open_price = last / (1.0 + pct_old) if pct_old > -0.99 else last
    new_last = last * (0.99 + 0.02 * rnd())
    # A tick always moves the price by at least one tick, so a changed contract is visibly changed.
    step = _POW10[-d]
    if abs(new_last - last) < step:
        new_last = last + step
    low = float(contract["lowPrice"] or new_last)
    high = float(contract["highPrice"] or new_last)
    _set_prices(contract, d, new_last, open_price, low, high, rnd)
    try:
        lots = int(contract["openInterest"])
    except (TypeError, ValueError):
        lots = 0
    lots = max(1, int(lots * (0.98 + 0.04 * rnd())) + 1)
    contract["openInterest"] = str(lots)
    multiplier = abs(float(contract["multiplier"] or 1.0)) or 1.0
    traded = float(contract["volumeOf24h"] or 0.0) / (1.0 if contract["isInverse"] else multiplier)
    _set_volume(contract, traded + lots * 0.05 * rnd(), new_last, multiplier)
    if contract.get("fundingRateGranularity") is not None:
        rate = float(contract["fundingFeeRate"] or 0.0)
        rate = min(0.003, max(-0.003, rate + 0.00004 * rnd() - 0.00002))
        contract["fundingFeeRate"] = _floor(rate * 1e6 + 0.5) / 1e6
        predicted = min(0.003, max(-0.003, rate + 0.0001 * rnd() - 0.00005))
        contract["predictedFundingFeeRate"] = _floor(predicted * 1e6 + 0.5) / 1e6
        if now_ms is not None:
            _set_funding_time(contract, now_ms)
        else:
            countdown = int(contract["nextFundingRateTime"] or 0) - 1000 - int(59_000 * rnd())
            contract["nextFundingRateTime"] = max(0, countdown)
