"""A local KuCoin-futures-compatible HTTP server whose listings, delistings and faults are scripted.

Serves `/api/v1/contracts/active`, `/api/v1/contracts/{symbol}` and `/api/v1/status` with KuCoin's
envelope, plus a control API under `/_sim/` so tests, the CLI or a shell can change the exchange while it runs.
"""

from __future__ import annotations

import contextlib
import copy
import errno
import http
import inspect
import logging
import math
import random
import re
import signal
import socket
import socketserver
import sys
import threading
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import FrameType, TracebackType
from typing import Any, cast
from urllib.parse import urlsplit

import orjson

from tokenwatch.clock import DAY_MS, now_ms
from tokenwatch.simulator.generator import generate_contracts, market_tick, new_contract

log = logging.getLogger(__name__)

ACTIVE_PATH = "/api/v1/contracts/active"
CONTRACT_PREFIX = "/api/v1/contracts/"
STATUS_PATH = "/api/v1/status"
CONTROL_PREFIX = "/_sim/"
OK_CODE = "200000"
JSON_TYPE = "application/json"

# KuCoin's public pool: 2000 weight per 30 s, `contracts/*` weighs 3. Reported in headers, never enforced:
# rate limiting is scripted with the http_status fault so tests stay deterministic.
RATE_LIMIT = 2000
RATE_WINDOW_MS = 30_000
CONTRACTS_WEIGHT = 3

FAULTS = frozenset({
    "http_status", "error_code", "delay", "truncate", "trickle", "html", "not_json",
    "partial", "empty", "omit", "bad_records", "raw_records",
})
# Faults that shape the contract list rather than the HTTP answer: only meaningful on the active list.
_LIST_FAULTS = frozenset({"partial", "empty", "omit", "bad_records", "raw_records"})
_FAULT_PARAMS: dict[str, frozenset[str]] = {
    "http_status": frozenset({"status", "headers", "code", "msg"}),
    "error_code": frozenset({"code", "msg"}),
    "delay": frozenset({"seconds"}),
    "truncate": frozenset({"bytes"}),
    "trickle": frozenset({"bytes_per_s"}),
    "html": frozenset({"status"}),
    "not_json": frozenset({"body", "content_type"}),
    "partial": frozenset({"keep"}),
    "empty": frozenset(),
    "omit": frozenset({"symbols"}),
    "bad_records": frozenset({"records"}),
    "raw_records": frozenset({"texts"}),
}
_HTML_PAGE = (
    "<html>\r\n<head><title>{status} {phrase}</title></head>\r\n<body>\r\n"
    "<center><h1>{status} {phrase}</h1></center>\r\n<hr><center>cloudflare</center>\r\n</body>\r\n</html>\r\n"
)
_GARBAGE = "upstream connect error or disconnect/reset before headers. reset reason: connection termination"
_PHRASES = frozenset(s.value for s in http.HTTPStatus)
_SYMBOL_RE = re.compile(r"^[A-Za-z0-9]{1,40}$")
_EXCHANGE_STATUSES = frozenset({"open", "close", "cancelonly"})
_MAX_CONTROL_BODY = 64 * 1024 * 1024
CONTROL_ACTIONS = frozenset({
    "list_new", "delist", "relist", "pause", "resume", "schedule_delisting", "set_params", "tick",
    "inject", "clear_faults", "set_status", "load",
})


class SimulatorError(ValueError):
    """A scripted action was given bad input; the message is one line."""


@dataclass
class _Fault:
    kind: str
    path: str
    params: dict[str, Any]
    remaining: int | None

    def describe(self) -> dict[str, Any]:
        params = {k: [t.decode("utf-8", "replace") for t in v] if k == "texts" else v for k, v in self.params.items()}
        return {"fault": self.kind, "path": self.path, "remaining": self.remaining, **params}


@dataclass
class _Answer:
    status: int
    body: bytes
    content_type: str = JSON_TYPE
    headers: dict[str, str] = field(default_factory=dict)
    truncate_at: int | None = None
    trickle_bytes_per_s: float | None = None


def _dumps(obj: Any) -> bytes:
    return orjson.dumps(obj)


def _error_body(code: str, msg: str) -> bytes:
    return _dumps({"code": code, "msg": msg})


def _symbol_list(symbols: Any, what: str = "symbols") -> list[str]:
    """Validate a list of symbols from Python or JSON callers."""
    if isinstance(symbols, str) or not isinstance(symbols, list | tuple) or not symbols:
        raise SimulatorError(f"{what} must be a non-empty list of symbols")
    for symbol in symbols:
        if not isinstance(symbol, str) or not _SYMBOL_RE.fullmatch(symbol):
            raise SimulatorError(f"{what} holds an invalid symbol: {str(symbol)[:50]!r}")
    if len(set(symbols)) != len(symbols):
        raise SimulatorError(f"{what} holds a symbol twice")
    return list(symbols)


def _int_param(value: Any, name: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise SimulatorError(f"{name} must be an integer between {low} and {high}")
    return value


def _float_param(value: Any, name: str, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        raise SimulatorError(f"{name} must be a number between {low:g} and {high:g}")
    return float(value)


def _json_kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    return "a list" if isinstance(value, list | tuple) else "an object"


def _same_json_kind(current: Any, value: Any) -> bool:
    """Whether value may replace current: the same JSON type, or either side null (KuCoin's unset dates)."""
    return current is None or value is None or _json_kind(current) == _json_kind(value)


def _check_fault(kind: str, params: dict[str, Any]) -> dict[str, Any]:
    """Validate and complete one fault's parameters, so a bad injection fails now, not on a request."""
    if kind not in FAULTS:
        raise SimulatorError(f"unknown fault {kind[:40]!r}; known: {', '.join(sorted(FAULTS))}")
    unknown = set(params) - _FAULT_PARAMS[kind]
    if unknown:
        raise SimulatorError(f"fault {kind} takes no parameter {sorted(unknown)[0][:40]!r}")
    out = dict(params)
    if kind == "http_status":
        status = _int_param(params.get("status", 503), "status", 400, 599)
        headers = params.get("headers", {})
        if not isinstance(headers, dict) or not all(isinstance(k, str) for k in headers):
            raise SimulatorError("headers must be an object of header names to values")
        out["status"] = status
        out["headers"] = {str(k): str(v) for k, v in headers.items()}
        out["code"] = str(params.get("code", "429000" if status == 429 else f"{status}000"))
        out["msg"] = str(params.get("msg", http.HTTPStatus(status).phrase if status in _PHRASES else "error"))
    elif kind == "error_code":
        code = params.get("code")
        if not isinstance(code, str | int) or isinstance(code, bool) or str(code) in ("", "200000"):
            raise SimulatorError("error_code needs a code other than 200000")
        out["code"] = str(code)
        out["msg"] = str(params.get("msg", "error"))
    elif kind == "delay":
        out["seconds"] = _float_param(params.get("seconds"), "seconds", 0.0, 600.0)
    elif kind == "truncate" and "bytes" in params:
        out["bytes"] = _int_param(params["bytes"], "bytes", 0, 2**40)
    elif kind == "trickle":
        # Headers at once, then the body a few bytes a second: each read succeeds, the answer never ends.
        out["bytes_per_s"] = _float_param(params.get("bytes_per_s", 1.0), "bytes_per_s", 0.1, 1e6)
    elif kind == "html":
        out["status"] = _int_param(params.get("status", 502), "status", 200, 599)
    elif kind == "not_json":
        out["body"] = str(params.get("body", _GARBAGE))
        out["content_type"] = str(params.get("content_type", JSON_TYPE))
    elif kind == "partial":
        out["keep"] = _float_param(params.get("keep", 0.5), "keep", 0.0, 1.0)
    elif kind == "omit":
        out["symbols"] = _symbol_list(params.get("symbols"))
    elif kind == "bad_records":
        records = params.get("records")
        if not isinstance(records, list) or not records:
            raise SimulatorError("bad_records needs a non-empty list of records")
        try:
            _dumps(records)
        except TypeError as exc:
            raise SimulatorError(f"records are not JSON-encodable: {exc}") from None
        out["records"] = copy.deepcopy(records)
    elif kind == "raw_records":
        # Texts spliced into the list as they are, for what no encoder writes (1e400, deep nesting, bad UTF-8).
        texts = params.get("texts")
        if not isinstance(texts, list) or not texts or not all(isinstance(t, str | bytes) for t in texts):
            raise SimulatorError("raw_records needs a non-empty list of texts")
        out["texts"] = [t.encode() if isinstance(t, str) else t for t in texts]
    return out


class Simulator:
    """A scriptable stand-in for KuCoin's futures REST API, served on a local port.

    `with Simulator(contracts=530, seed=0) as sim: requests.get(sim.url + "/api/v1/contracts/active")`
    """

    def __init__(self, port: int = 0, contracts: int = 530, seed: int = 0, host: str = "127.0.0.1") -> None:
        if isinstance(contracts, bool) or not isinstance(contracts, int) or contracts < 0:
            raise SimulatorError("contracts must be an integer >= 0")
        self.host = host
        self._requested_port = port
        self._seed = seed
        self._lock = threading.RLock()
        self._stopping = threading.Event()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        # Market ticks draw from their own seeded stream, so a scripted run replays identically.
        self._rng = random.Random(seed + 1)
        now = now_ms()
        self._active: dict[str, dict[str, Any]] = {c["symbol"]: c for c in generate_contracts(
            contracts, seed=seed, now_ms=now,
        )}
        self._delisted: dict[str, dict[str, Any]] = {}
        # Fresh listings continue the generator's base numbering; names already used are skipped.
        self._next_base = contracts
        self._faults: list[_Fault] = []
        self._requests: Counter[str] = Counter()
        self._active_body: bytes | None = None
        self._exchange_status = ("open", "")
        self._rate_window_start = 0
        self._rate_used = 0

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self) -> Simulator:
        """Bind the port and serve in a background thread; returns self."""
        with self._lock:
            if self._server is not None:
                raise RuntimeError("simulator already started")
            self._stopping.clear()
            server = _Server((self.host, self._requested_port), self)
            thread = threading.Thread(
                target=server.serve_forever, kwargs={"poll_interval": 0.05},
                name=f"kucoin-sim-{server.server_address[1]}", daemon=True,
            )
            self._server, self._thread = server, thread
        thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the listening socket; safe to call twice."""
        with self._lock:
            server, thread = self._server, self._thread
            self._server = self._thread = None
        # Wake requests sleeping in a delay fault so they finish instead of holding threads.
        self._stopping.set()
        if server is None:
            return
        server.shutdown()
        server.server_close()
        server.close_connections()
        if thread is not None:
            thread.join(timeout=5)

    def __enter__(self) -> Simulator:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def port(self) -> int:
        """The bound port once started (the requested one before)."""
        server = self._server
        return int(server.server_address[1]) if server is not None else self._requested_port

    @property
    def url(self) -> str:
        """Base URL, e.g. http://127.0.0.1:54321 (no trailing slash)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    # -- scripting ------------------------------------------------------------------------------

    def _changed(self) -> None:
        self._active_body = None

    def _listed(self, symbols: Any) -> list[str]:
        names = _symbol_list(symbols)
        missing = [s for s in names if s not in self._active]
        if missing:
            raise SimulatorError(f"not listed: {', '.join(missing[:5])}")
        return names

    def list_new(self, count: int = 1, symbols: list[str] | None = None) -> list[str]:
        """List brand-new perpetuals (firstOpenDate = now); named by `symbols` or `count` fresh coins."""
        now = now_ms()
        if symbols is not None and count != 1:
            raise SimulatorError("list_new takes count or symbols, not both")
        with self._lock:
            fresh: list[dict[str, Any]] = []
            if symbols is not None:
                for symbol in _symbol_list(symbols):
                    if symbol in self._active:
                        raise SimulatorError(f"already listed: {symbol}")
                    fresh.append(_contract_for_symbol(symbol, now, self._seed))
            else:
                count = _int_param(count, "count", 1, 1_000_000)
                taken = self._active.keys() | self._delisted.keys()
                while len(fresh) < count:
                    contract = new_contract(self._next_base, now, seed=self._seed)
                    self._next_base += 1
                    if contract["symbol"] not in taken:
                        fresh.append(contract)
            for contract in fresh:
                # A new listing of a once-delisted symbol replaces the old record.
                self._delisted.pop(contract["symbol"], None)
                self._active[contract["symbol"]] = contract
            self._changed()
            return [c["symbol"] for c in fresh]

    def load(self, contracts: list[dict[str, Any]]) -> int:
        """List exactly these contracts (a registry's, a capture's), replacing every listed one; returns how many."""
        if not isinstance(contracts, list) or not all(isinstance(c, dict) and _SYMBOL_RE.fullmatch(
                str(c.get("symbol", ""))) for c in contracts):
            raise SimulatorError("contracts must be a list of objects, each with a symbol of letters and digits")
        with self._lock:
            self._active = {c["symbol"]: copy.deepcopy(c) for c in contracts}
            self._delisted.clear()
            self._changed()
            return len(self._active)

    def delist(self, symbols: list[str]) -> None:
        """Remove listed contracts from the active list (kept aside for `relist`)."""
        with self._lock:
            for symbol in self._listed(symbols):
                self._delisted[symbol] = self._active.pop(symbol)
            self._changed()

    def relist(self, symbols: list[str]) -> None:
        """Bring delisted contracts back into the active list, unchanged."""
        with self._lock:
            names = _symbol_list(symbols)
            missing = [s for s in names if s not in self._delisted]
            if missing:
                raise SimulatorError(f"not delisted: {', '.join(missing[:5])}")
            for symbol in names:
                self._active[symbol] = self._delisted.pop(symbol)
            self._changed()

    def _set_status(self, symbols: list[str], status: str) -> None:
        with self._lock:
            for symbol in self._listed(symbols):
                self._active[symbol]["status"] = status
            self._changed()

    def pause(self, symbols: list[str]) -> None:
        """Set status Paused: the contracts stay in the active list, as on the real exchange."""
        self._set_status(symbols, "Paused")

    def resume(self, symbols: list[str]) -> None:
        """Set status Open again."""
        self._set_status(symbols, "Open")

    def schedule_delisting(self, symbols: list[str], at_ms: int | None = None) -> int:
        """Set expireDate/settleDate on perpetuals (default now + 7 days), status stays Open; returns at_ms."""
        at = now_ms() + 7 * DAY_MS if at_ms is None else _int_param(at_ms, "at_ms", 0, 7_258_118_400_000)
        with self._lock:
            names = self._listed(symbols)
            not_perpetual = [s for s in names if self._active[s].get("type") != "FFWCSX"]
            if not_perpetual:
                raise SimulatorError(f"not a perpetual: {', '.join(not_perpetual[:5])}")
            for symbol in names:
                contract = self._active[symbol]
                contract["expireDate"] = contract["settleDate"] = at
                # KuCoin names a settlement index once a delisting is scheduled.
                contract["settlementSymbol"] = f"{contract.get('indexSymbol') or '.K' + symbol}30"
            self._changed()
        return at

    def set_params(self, symbol: str, **fields: Any) -> dict[str, Any]:
        """Change fields the contract has (e.g. tickSize, maxLeverage), each to a value of its type; returns them.

        A key the contract lacks (`tick_size`) or a value of another type is refused, not quietly added: a
        script that misspells a field would otherwise test nothing. Malformed records: inject bad_records.
        """
        if not fields:
            raise SimulatorError("set_params needs at least one field")
        try:
            _dumps(fields)
        except TypeError as exc:
            raise SimulatorError(f"fields are not JSON-encodable: {exc}") from None
        with self._lock:
            self._listed([symbol])
            contract = self._active[symbol]
            for key, value in fields.items():
                if key not in contract:
                    raise SimulatorError(f"{symbol} has no field {key[:40]!r} (a KuCoin contract's keys, "
                                         "e.g. tickSize, maxLeverage, makerFeeRate)")
                if not _same_json_kind(contract[key], value):
                    raise SimulatorError(f"{key} must be {_json_kind(contract[key])}, not {_json_kind(value)}")
            contract.update(copy.deepcopy(fields))
            self._changed()
        return dict(fields)

    def tick(self, fraction: float = 1.0) -> int:
        """Move market data on that fraction of listed contracts; returns how many changed."""
        fraction = _float_param(fraction, "fraction", 0.0, 1.0)
        now = now_ms()
        with self._lock:
            contracts = list(self._active.values())
            chosen = round(len(contracts) * fraction)
            picked = contracts if chosen == len(contracts) else self._rng.sample(contracts, chosen)
            for contract in picked:
                market_tick(contract, self._rng, now)
            if picked:
                self._changed()
            return len(picked)

    def set_status(self, status: str, msg: str = "") -> None:
        """Set what `/api/v1/status` reports: open, close or cancelonly."""
        if status not in _EXCHANGE_STATUSES:
            raise SimulatorError(f"status must be one of {', '.join(sorted(_EXCHANGE_STATUSES))}")
        if not isinstance(msg, str):
            raise SimulatorError("msg must be a string")
        with self._lock:
            self._exchange_status = (status, str(msg))

    def inject(self, fault: str, count: int | None = None, **params: Any) -> dict[str, Any]:
        """Make the next `count` requests (all, if None) of a path misbehave; returns the fault's description.

        `path` defaults to the active list; list-shaping faults (partial, empty, omit, bad_records) only
        apply there. Injecting a fault kind again on the same path replaces it.
        """
        path = params.pop("path", ACTIVE_PATH)
        if not isinstance(path, str) or not path.startswith("/") or path.startswith(CONTROL_PREFIX):
            raise SimulatorError("path must be an API path such as /api/v1/contracts/active")
        if fault in _LIST_FAULTS and path != ACTIVE_PATH:
            raise SimulatorError(f"fault {fault} only applies to {ACTIVE_PATH}")
        if count is not None:
            count = _int_param(count, "count", 1, 1_000_000_000)
        checked = _check_fault(str(fault), params)
        entry = _Fault(kind=fault, path=path, params=checked, remaining=count)
        with self._lock:
            self._faults = [f for f in self._faults if (f.kind, f.path) != (fault, path)]
            self._faults.append(entry)
            return entry.describe()

    def clear_faults(self) -> int:
        """Remove every injected fault; returns how many were active."""
        with self._lock:
            cleared = len(self._faults)
            self._faults = []
            return cleared

    def faults(self) -> list[dict[str, Any]]:
        """The faults still active, in injection order."""
        with self._lock:
            return [f.describe() for f in self._faults]

    def symbols(self) -> list[str]:
        """Symbols currently listed (paused ones included), in listing order."""
        with self._lock:
            return list(self._active)

    def delisted(self) -> list[str]:
        """Symbols delisted and kept for `relist`."""
        with self._lock:
            return list(self._delisted)

    def contract(self, symbol: str) -> dict[str, Any]:
        """A copy of one contract, listed or delisted; KeyError if unknown."""
        with self._lock:
            found = self._active.get(symbol) or self._delisted.get(symbol)
            if found is None:
                raise KeyError(symbol)
            return copy.deepcopy(found)

    def requests(self, path: str) -> int:
        """How many requests this path has received (query string ignored)."""
        with self._lock:
            return self._requests[path]

    def state(self) -> dict[str, Any]:
        """Counts for `/_sim/state`: listed, paused, delisted, active faults and requests per path."""
        with self._lock:
            paused = sum(1 for c in self._active.values() if c.get("status") == "Paused")
            return {
                "listed": len(self._active), "paused": paused, "delisted": len(self._delisted),
                "faults": [f.describe() for f in self._faults], "requests": dict(self._requests),
                "exchange_status": self._exchange_status[0],
            }

    # -- serving --------------------------------------------------------------------------------

    def _take_faults(self, path: str) -> list[_Fault]:
        """The faults that apply to this request; each one used counts down and expires at zero."""
        applied: list[_Fault] = []
        kept: list[_Fault] = []
        for fault in self._faults:
            if fault.path == path:
                applied.append(fault)
                if fault.remaining is not None:
                    fault.remaining -= 1
                    if fault.remaining <= 0:
                        continue
            kept.append(fault)
        self._faults = kept
        return applied

    def _rate_headers(self, path: str) -> dict[str, str]:
        now = now_ms()
        if now - self._rate_window_start >= RATE_WINDOW_MS:
            self._rate_window_start, self._rate_used = now, 0
        self._rate_used += CONTRACTS_WEIGHT if path.startswith(CONTRACT_PREFIX) else 1
        return {
            "gw-ratelimit-limit": str(RATE_LIMIT),
            "gw-ratelimit-remaining": str(max(0, RATE_LIMIT - self._rate_used)),
            "gw-ratelimit-reset": str(max(0, self._rate_window_start + RATE_WINDOW_MS - now)),
        }

    def _active_list_body(self, list_faults: list[_Fault]) -> bytes:
        if not list_faults:
            # Encoding 100k contracts costs a few hundred ms: done once per change, not per request.
            if self._active_body is None:
                self._active_body = _dumps({"code": OK_CODE, "data": list(self._active.values())})
            return self._active_body
        data: list[Any] = list(self._active.values())
        by_kind = {f.kind: f.params for f in list_faults}
        if "omit" in by_kind:
            hidden = set(by_kind["omit"]["symbols"])
            data = [c for c in data if c.get("symbol") not in hidden]
        if "partial" in by_kind:
            data = data[: math.floor(len(data) * by_kind["partial"]["keep"])]
        if "empty" in by_kind:
            data = []
        if "bad_records" in by_kind:
            data = [*data, *by_kind["bad_records"]["records"]]
        body = _dumps({"code": OK_CODE, "data": data})
        if "raw_records" in by_kind:
            spliced = b",".join(by_kind["raw_records"]["texts"])
            body = body[:-2] + (b"," if data else b"") + spliced + b"]}"
        return body

    def _answer(self, path: str) -> tuple[_Answer, float]:
        """The answer to a GET of an API path and how long to wait before sending it."""
        with self._lock:
            faults = self._take_faults(path)
            headers = self._rate_headers(path)
            delay = sum(f.params["seconds"] for f in faults if f.kind == "delay")
            answer = self._fault_answer(faults) or self._normal_answer(path, faults)
            for fault in faults:
                if fault.kind == "truncate":
                    answer.truncate_at = fault.params.get("bytes", len(answer.body) // 2)
                elif fault.kind == "trickle":
                    answer.trickle_bytes_per_s = fault.params["bytes_per_s"]
        answer.headers = {**headers, **answer.headers}
        return answer, delay

    def _fault_answer(self, faults: list[_Fault]) -> _Answer | None:
        # Faults that replace the whole answer: the first one injected wins when several are active.
        for fault in faults:
            params = fault.params
            if fault.kind == "http_status":
                extra: dict[str, str] = {}
                if params["status"] == 429:
                    extra = {"gw-ratelimit-remaining": "0", "gw-ratelimit-reset": "1000"}
                return _Answer(
                    params["status"], _error_body(params["code"], params["msg"]),
                    headers={**extra, **params["headers"]},
                )
            if fault.kind == "error_code":
                return _Answer(200, _error_body(params["code"], params["msg"]))
            if fault.kind == "html":
                status = params["status"]
                phrase = http.HTTPStatus(status).phrase if status in _PHRASES else "Error"
                page = _HTML_PAGE.format(status=status, phrase=phrase).encode()
                return _Answer(status, page, content_type="text/html")
            if fault.kind == "not_json":
                return _Answer(200, params["body"].encode(), content_type=params["content_type"])
        return None

    def _normal_answer(self, path: str, faults: list[_Fault]) -> _Answer:
        if path == ACTIVE_PATH:
            return _Answer(200, self._active_list_body([f for f in faults if f.kind in _LIST_FAULTS]))
        if path == STATUS_PATH:
            status, msg = self._exchange_status
            return _Answer(200, _dumps({"code": OK_CODE, "data": {"status": status, "msg": msg}}))
        if path.startswith(CONTRACT_PREFIX) and "/" not in path[len(CONTRACT_PREFIX):]:
            contract = self._active.get(path[len(CONTRACT_PREFIX):])
            if contract is None:
                # KuCoin answers an unknown or delisted symbol with HTTP 200 and an error code.
                return _Answer(200, _error_body("100003", "Contract parameter invalid"))
            return _Answer(200, _dumps({"code": OK_CODE, "data": contract}))
        return _Answer(404, _error_body("404000", "Url Not Found"))

    def _count(self, path: str) -> None:
        with self._lock:
            self._requests[path] += 1

    def _control(self, action: str, body: Any) -> Any:
        """Run one control-API action with the JSON body as keyword arguments."""
        if action not in CONTROL_ACTIONS:
            raise SimulatorError(f"unknown action {action[:40]!r}")
        if not isinstance(body, dict):
            raise SimulatorError("the body must be a JSON object")
        if action == "set_params":
            symbol = body.get("symbol")
            # Either {"symbol", "fields": {...}} or the fields beside the symbol; "fields" with others is neither.
            fields = body.get("fields") if "fields" in body else {k: v for k, v in body.items() if k != "symbol"}
            if "fields" in body and set(body) != {"symbol", "fields"}:
                extra = sorted(set(body) - {"symbol", "fields"})[0]
                raise SimulatorError(f"set_params takes symbol and fields, or fields beside symbol; not {extra[:40]!r}")
            if not isinstance(symbol, str) or not isinstance(fields, dict):
                raise SimulatorError("set_params needs a symbol and fields")
            return self.set_params(symbol, **fields)
        if action == "inject":
            kind = body.get("fault")
            if not isinstance(kind, str):
                raise SimulatorError("inject needs a fault name")
            params = {k: v for k, v in body.items() if k != "fault"}
            return self.inject(kind, **params)
        method = getattr(self, action)
        known = [name for name in inspect.signature(method).parameters if name != "self"]
        unknown = sorted(set(body) - set(known))
        if unknown:
            takes = ", ".join(known) or "nothing (send {})"
            raise SimulatorError(f"{action} takes no {unknown[0][:40]!r}; it takes: {takes}")
        return method(**body)


def _contract_for_symbol(symbol: str, now_ms: int, seed: int) -> dict[str, Any]:
    """A new perpetual for a chosen symbol: the quote comes from the usual suffix, else USDT."""
    for suffix, quote in (("USDTM", "USDT"), ("USDCM", "USDC"), ("USDM", "USD")):
        base = symbol[: -len(suffix)]
        if symbol.endswith(suffix) and base:
            return new_contract(base, now_ms, seed=seed, quote=quote, symbol=symbol)
    return new_contract(symbol, now_ms, seed=seed, symbol=symbol)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    # Leave room for many polling clients and test threads hitting the server at once.
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], simulator: Simulator) -> None:
        self.simulator = simulator
        # Open client connections, so stop() can hang up keep-alive ones instead of serving them on.
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._connections_lock:
            self._connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._connections_lock:
            self._connections.discard(request)
        super().shutdown_request(request)

    def close_connections(self) -> None:
        """Hang up every open client connection (their handler threads then end)."""
        with self._connections_lock:
            connections = list(self._connections)
        for connection in connections:
            # OSError: already closed by the client or by its handler.
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)

    def server_bind(self) -> None:
        # HTTPServer.server_bind calls getfqdn(), a reverse DNS lookup that can stall for seconds.
        socketserver.TCPServer.server_bind(self)
        self.server_name = str(self.server_address[0])
        self.server_port = int(self.server_address[1])

    def handle_error(self, request: Any, client_address: Any) -> None:
        exc = sys.exc_info()[1]
        if isinstance(exc, ConnectionError | TimeoutError):
            log.debug("client %s went away: %s", client_address, exc)
            return
        log.exception("simulator request from %s failed", client_address)


class _Handler(BaseHTTPRequestHandler):
    # HTTP/1.1 keeps connections alive like the real API; every answer carries a Content-Length.
    protocol_version = "HTTP/1.1"
    server_version = "kucoin-futures-sim/1.0"
    # Idle keep-alive connections are closed after this, so handler threads do not pile up.
    timeout = 30
    # Headers and body go out in separate writes; with Nagle on, the body waits for a delayed ACK (~40 ms).
    disable_nagle_algorithm = True

    @property
    def sim(self) -> Simulator:
        return cast(_Server, self.server).simulator

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s - " + format, self.address_string(), *args)

    def do_GET(self) -> None:
        path = urlsplit(self.path).path
        sim = self.sim
        sim._count(path)
        if path.startswith(CONTROL_PREFIX):
            if path == CONTROL_PREFIX + "state":
                self._send(_Answer(200, _dumps({"ok": True, "result": sim.state()})))
            else:
                self._send(_Answer(404, _dumps({"ok": False, "error": "unknown control path"})))
            return
        answer, delay = sim._answer(path)
        if delay > 0:
            sim._stopping.wait(delay)
        self._send(answer)

    def do_POST(self) -> None:
        path = urlsplit(self.path).path
        sim = self.sim
        sim._count(path)
        body = self._read_body()
        if body is None:
            return
        if not path.startswith(CONTROL_PREFIX):
            self._send(_Answer(404, _error_body("404000", "Url Not Found")))
            return
        action = path[len(CONTROL_PREFIX):]
        if action not in CONTROL_ACTIONS:
            self._send(_Answer(404, _dumps({"ok": False, "error": f"unknown action {action[:40]!r}"})))
            return
        try:
            payload = orjson.loads(body) if body.strip() else {}
            result = sim._control(action, payload)
        except orjson.JSONDecodeError:
            self._send(_Answer(400, _dumps({"ok": False, "error": "the body is not valid JSON"})))
            return
        except (SimulatorError, TypeError, KeyError) as exc:
            message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            self._send(_Answer(400, _dumps({"ok": False, "error": message[:300]})))
            return
        self._send(_Answer(200, _dumps({"ok": True, "result": result})))

    def _read_body(self) -> bytes | None:
        length_header = self.headers.get("Content-Length")
        if length_header is None:
            return b""
        if not length_header.isdigit() or int(length_header) > _MAX_CONTROL_BODY:
            self.close_connection = True
            self._send(_Answer(413, _dumps({"ok": False, "error": "missing or oversized body"})))
            return None
        return self.rfile.read(int(length_header))

    def _send(self, answer: _Answer) -> None:
        try:
            self.send_response(answer.status)
            self.send_header("Content-Type", answer.content_type)
            self.send_header("Content-Length", str(len(answer.body)))
            for name, value in answer.headers.items():
                self.send_header(name, value)
            if answer.truncate_at is not None:
                # Promise the whole body, send part of it and hang up: what a dropped proxy connection does.
                self.send_header("Connection", "close")
                self.close_connection = True
            self.end_headers()
            body = answer.body if answer.truncate_at is None else answer.body[: answer.truncate_at]
            if answer.trickle_bytes_per_s is None:
                self.wfile.write(body)
                self.wfile.flush()
            else:
                self._trickle(body, answer.trickle_bytes_per_s)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True


    def _trickle(self, body: bytes, bytes_per_s: float) -> None:
        """Send the body slowly, until it is sent, the client hangs up or the simulator stops."""
        self.wfile.flush()
        step = max(1, int(bytes_per_s / 10))
        for start in range(0, len(body), step):
            self.wfile.write(body[start:start + step])
            self.wfile.flush()
            if self.sim._stopping.wait(step / bytes_per_s):
                self.close_connection = True
                return


def serve_forever_cli(port: int, contracts: int, seed: int) -> None:
    """Run a simulator in the foreground for `tokenwatch simulate` until SIGINT or SIGTERM."""
    stop = threading.Event()

    def _on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, _on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    simulator = Simulator(port=port, contracts=contracts, seed=seed)
    try:
        try:
            simulator.start()
        except OSError as exc:
            cause = "taken" if exc.errno == errno.EADDRINUSE else f"unusable ({exc.strerror or exc})"
            raise SimulatorError(f"port {port} on {simulator.host} is {cause}: pick another with --port "
                                 "(and point TOKENWATCH_KUCOIN_URL at it)") from None
        print(
            f"KuCoin futures simulator with {contracts} contracts on {simulator.url} "
            f"(GET {simulator.url}{ACTIVE_PATH}); script it with: "
            f"curl -X POST {simulator.url}/_sim/list_new -d '{{\"count\": 1}}'",
            flush=True,
        )
        # Waiting with a timeout lets the signal handler run promptly on every platform.
        while not stop.wait(0.5):
            pass
    finally:
        simulator.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
