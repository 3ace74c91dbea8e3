"""fetch.kucoin against a real HTTP server on 127.0.0.1: envelopes, HTTP errors, bad bodies, timeouts, retries."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis

from tests.steps_support import run_steps, step_context
from tokenwatch import steps
from tokenwatch.cache import keys, lock
from tokenwatch.errors import BadResponseError, FetchError, TransientFetchError
from tokenwatch.fetch import kucoin
from tokenwatch.fetch.kucoin import make_session
from tokenwatch.fetch.spool import Spool
from tokenwatch.settings import Settings
from tokenwatch.simulator.generator import generate_contracts
from tokenwatch.steps import StepContext
from tokenwatch.syncstate import SyncState

pytestmark = pytest.mark.integration

FIXTURES = Path(__file__).resolve().parents[2].parent / "shared" / "fixtures" / "kucoin"
ACTIVE = kucoin.ACTIVE_PATH
TIMEOUT_S = 2.0
MAX_BYTES = 1 << 20

Responder = Callable[[BaseHTTPRequestHandler], None]


class _Handler(BaseHTTPRequestHandler):
    server: LocalServer

    def do_GET(self) -> None:
        self.server.record(self)
        self.server.next_responder(self.path)(self)

    def log_message(self, format: str, *args: Any) -> None:
        pass


class LocalServer(ThreadingHTTPServer):
    """Answers each path with a script of responders; the last one repeats."""

    daemon_threads = True
    block_on_close = False  # a deliberately slow handler must not hold up the teardown

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self._lock = threading.Lock()
        self._scripts: dict[str, list[Responder]] = {}
        self.hits: Counter[str] = Counter()
        self.headers_seen: list[dict[str, str]] = []

    @property
    def base_url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host!s}:{port}"

    def route(self, path: str, *responders: Responder) -> None:
        with self._lock:
            self._scripts[path] = list(responders)

    def record(self, handler: BaseHTTPRequestHandler) -> None:
        with self._lock:
            self.hits[handler.path] += 1
            self.headers_seen.append(dict(handler.headers.items()))

    def next_responder(self, path: str) -> Responder:
        with self._lock:
            script = self._scripts.get(path)
            if not script:
                return reply(404, b'{"code":"404000","msg":"URL not found"}')
            return script.pop(0) if len(script) > 1 else script[0]

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # the client hung up on a slow or truncated answer: expected in these tests


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[LocalServer]:
    # A proxy from the environment must not intercept calls to our own loopback server.
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    srv = LocalServer()
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield srv
    finally:
        srv.shutdown()
        srv.server_close()
        thread.join(timeout=5)


# ---- responders --------------------------------------------------------------------------------------------

def reply(
    status: int = 200, body: bytes = b"", headers: dict[str, str] | None = None, *,
    content_type: str = "application/json", content_length: int | None = None,
) -> Responder:
    """A complete answer; content_length=-1 sends no Content-Length (the body ends when the socket closes)."""
    def respond(h: BaseHTTPRequestHandler) -> None:
        h.send_response(status)
        h.send_header("Content-Type", content_type)
        if content_length != -1:
            h.send_header("Content-Length", str(len(body) if content_length is None else content_length))
        for name, value in (headers or {}).items():
            h.send_header(name, value)
        h.end_headers()
        h.wfile.write(body)
        h.wfile.flush()
        h.close_connection = True
    return respond


def envelope(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> Responder:
    return reply(status, json.dumps({"code": "200000", "data": data}).encode(), headers)


def error_code(code: str, msg: str, status: int = 200, headers: dict[str, str] | None = None) -> Responder:
    return reply(status, json.dumps({"code": code, "msg": msg}).encode(), headers)


def delayed(delay_s: float, then: Responder) -> Responder:
    def respond(h: BaseHTTPRequestHandler) -> None:
        time.sleep(delay_s)
        then(h)
    return respond


def stalls_mid_body(body: bytes, delay_s: float) -> Responder:
    """Headers and half the body at once, the rest after delay_s."""
    def respond(h: BaseHTTPRequestHandler) -> None:
        h.send_response(200)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        h.wfile.write(body[: len(body) // 2])
        h.wfile.flush()
        time.sleep(delay_s)
        h.wfile.write(body[len(body) // 2:])
        h.close_connection = True
    return respond


CONTRACTS = [{"symbol": "XBTUSDTM", "status": "Open"}, {"symbol": "ETHUSDTM", "status": "Open"}]


def fetch(server: LocalServer, *, timeout_s: float = TIMEOUT_S, max_bytes: int = MAX_BYTES) -> kucoin.Fetched:
    return kucoin.fetch_active(make_session(), server.base_url, timeout_s=timeout_s, max_bytes=max_bytes)


def fetch_error(server: LocalServer, kind: type[FetchError], **kwargs: Any) -> FetchError:
    """The error fetch raises, checked to be of `kind` and one line."""
    with pytest.raises(kind) as info:
        fetch(server, **kwargs)
    message = str(info.value)
    assert message and "\n" not in message and "\r" not in message
    return info.value


# ---- success -----------------------------------------------------------------------------------------------

def test_success_returns_the_data_list_and_the_body(server: LocalServer) -> None:
    server.route(ACTIVE, envelope(CONTRACTS))
    before = int(time.time() * 1000)
    fetched = fetch(server)
    assert fetched.data == CONTRACTS
    assert json.loads(fetched.body) == {"code": "200000", "data": CONTRACTS}
    assert before <= fetched.fetched_at_ms <= int(time.time() * 1000)
    assert fetched.elapsed_ms > 0
    assert server.hits[ACTIVE] == 1
    assert server.headers_seen[0]["Accept"] == "application/json"


def test_success_with_a_real_capture(server: LocalServer) -> None:
    capture = FIXTURES / "contracts_active_kucoin-universal-sdk_doc-example.json"
    if not capture.is_file():
        pytest.skip(f"KuCoin fixture capture not found at {capture} (the shared fixtures are not checked out)")
    body = capture.read_bytes()
    server.route(ACTIVE, reply(200, body))
    fetched = fetch(server)
    assert fetched.body == body
    assert [c["symbol"] for c in fetched.data] == ["XBTUSDTM"]


def test_data_that_is_not_a_list_is_refused(server: LocalServer) -> None:
    server.route(ACTIVE, envelope({"symbol": "XBTUSDTM"}))
    assert "expected a list" in str(fetch_error(server, BadResponseError))


# ---- error envelopes and HTTP errors -----------------------------------------------------------------------

def test_http_200_with_an_error_code_names_the_code(server: LocalServer) -> None:
    server.route(ACTIVE, error_code("400100", "x"))
    message = str(fetch_error(server, BadResponseError))
    assert "400100" in message
    assert "HTTP 200" in message


def test_error_message_from_the_exchange_stays_on_one_line(server: LocalServer) -> None:
    server.route(ACTIVE, error_code("100001", "bad\nparams\r\n" + "y" * 500))
    message = str(fetch_error(server, BadResponseError))
    assert "100001" in message
    assert len(message) < 250


@pytest.mark.parametrize("status", [500, 502, 503])
def test_server_errors_are_transient(server: LocalServer, status: int) -> None:
    server.route(ACTIVE, reply(status, b"<html>maintenance</html>", content_type="text/html"))
    error = fetch_error(server, TransientFetchError)
    assert str(error) == f"HTTP {status}"
    assert isinstance(error, TransientFetchError) and error.retry_after_s is None


def test_429_is_transient_with_the_gateway_reset_hint(server: LocalServer) -> None:
    server.route(ACTIVE, error_code("429000", "Too Many Requests", 429, {"gw-ratelimit-reset": "1500"}))
    error = fetch_error(server, TransientFetchError)
    assert isinstance(error, TransientFetchError)
    assert error.retry_after_s == 1.5
    assert "429" in str(error)


def test_rate_limit_code_inside_http_200_is_transient(server: LocalServer) -> None:
    server.route(ACTIVE, error_code("429000", "Too Many Requests", 200, {"gw-ratelimit-reset": "250"}))
    error = fetch_error(server, TransientFetchError)
    assert isinstance(error, TransientFetchError)
    assert error.retry_after_s == 0.25


def test_absurd_rate_limit_hint_is_capped(server: LocalServer) -> None:
    server.route(ACTIVE, reply(429, b"", {"gw-ratelimit-reset": "86400000"}))
    error = fetch_error(server, TransientFetchError)
    assert isinstance(error, TransientFetchError)
    assert error.retry_after_s == kucoin.MAX_RETRY_AFTER_S


# ---- bodies that are not a usable envelope -----------------------------------------------------------------

def test_invalid_json_is_a_bad_response(server: LocalServer) -> None:
    server.route(ACTIVE, reply(200, b'{"code": "200000", "data": [}'))
    assert "not JSON" in str(fetch_error(server, BadResponseError))


def test_html_page_is_named_as_html(server: LocalServer) -> None:
    page = b"<!DOCTYPE html>\n<html><head><title>Just a moment...</title></head><body>cf</body></html>"
    server.route(ACTIVE, reply(200, page, content_type="text/html"))
    message = str(fetch_error(server, BadResponseError))
    assert "HTML" in message
    assert "Just a moment" not in message


def test_json_that_is_not_an_object_is_a_bad_response(server: LocalServer) -> None:
    server.route(ACTIVE, reply(200, b"[1, 2, 3]"))
    assert "list" in str(fetch_error(server, BadResponseError))


def test_truncated_body_is_a_bad_response(server: LocalServer) -> None:
    body = json.dumps({"code": "200000", "data": CONTRACTS}).encode()
    server.route(ACTIVE, reply(200, body[:20], content_length=len(body) + 1000))
    assert "truncated" in str(fetch_error(server, BadResponseError))


def test_declared_body_over_max_bytes_is_refused(server: LocalServer) -> None:
    body = json.dumps({"code": "200000", "data": ["x" * 5000]}).encode()
    server.route(ACTIVE, reply(200, body))
    message = str(fetch_error(server, BadResponseError, max_bytes=1024))
    assert "1024-byte bound" in message


def test_undeclared_body_over_max_bytes_is_refused_while_streaming(server: LocalServer) -> None:
    body = json.dumps({"code": "200000", "data": ["x" * 5000]}).encode()
    server.route(ACTIVE, reply(200, body, content_length=-1))
    assert "1024-byte bound" in str(fetch_error(server, BadResponseError, max_bytes=1024))


# ---- timeouts and connection failures ----------------------------------------------------------------------

def test_slow_server_beyond_the_timeout_is_transient(server: LocalServer) -> None:
    server.route(ACTIVE, delayed(1.0, envelope(CONTRACTS)))
    started = time.perf_counter()
    assert str(fetch_error(server, TransientFetchError, timeout_s=0.2)) == "127.0.0.1: timed out after 0.2 s"
    assert time.perf_counter() - started < 0.9


def test_server_stalling_mid_body_beyond_the_timeout_is_transient(server: LocalServer) -> None:
    body = json.dumps({"code": "200000", "data": CONTRACTS}).encode()
    server.route(ACTIVE, stalls_mid_body(body, 1.0))
    assert str(fetch_error(server, TransientFetchError, timeout_s=0.2)) == (
        "127.0.0.1: answer not complete within 0.2 s")


def test_connection_refused_is_transient() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(TransientFetchError, match=r"^127\.0\.0\.1: connection refused$"):
        kucoin.fetch_active(make_session(), f"http://127.0.0.1:{port}", timeout_s=TIMEOUT_S, max_bytes=MAX_BYTES)


# ---- retries -----------------------------------------------------------------------------------------------

def fetch_step(server: LocalServer, retries: int) -> tuple[SyncState, list[float], StepContext]:
    """The sync's fetch step against the server, retried as the chain would, without waiting: (its state, the
    delays it asked for, its context)."""
    settings = Settings(kucoin_url=server.base_url, http_retries=retries, http_timeout_s=TIMEOUT_S,
                        max_response_bytes=MAX_BYTES)
    ctx = step_context(settings, None)
    state, delays = SyncState.new(), []
    while True:
        try:
            return steps.run_step(steps.fetch, ctx, state), delays, ctx
        except steps.RetryLater as wait:
            delays.append(wait.delay_s)
            state = wait.state


def test_the_fetch_step_retries_transient_errors_then_succeeds(server: LocalServer) -> None:
    server.route(
        ACTIVE,
        reply(500, b"oops"),
        error_code("429000", "Too Many Requests", 429, {"gw-ratelimit-reset": "1500"}),
        envelope(CONTRACTS),
    )
    state, delays, ctx = fetch_step(server, retries=3)
    assert (state.done, state.attempts) == (False, 3)  # running: the answer waits for the diff step
    assert orjson.loads(ctx.handoff.take_answer(state.sync_id))["data"] == CONTRACTS
    assert server.hits[ACTIVE] == 3
    assert len(delays) == 2
    assert 0 <= delays[0] <= kucoin.BACKOFF_BASE_S
    assert 1.5 <= delays[1] <= 1.6  # the gateway's reset hint wins over the exponential backoff
    assert state.timings["api"] >= 1500  # waiting to retry is counted as the exchange's time


def test_the_fetch_step_gives_up_after_its_retries(server: LocalServer) -> None:
    server.route(ACTIVE, reply(503, b"maintenance"))
    state, delays, _ = fetch_step(server, retries=2)
    assert (state.status, state.error) == ("failed", "fetch failed after 2 retries: HTTP 503")
    assert server.hits[ACTIVE] == 3
    assert len(delays) == 2


def test_the_fetch_step_does_not_retry_a_bad_response(server: LocalServer) -> None:
    server.route(ACTIVE, error_code("400100", "x"), envelope(CONTRACTS))
    state, delays, _ = fetch_step(server, retries=3)
    assert state.status == "failed"
    assert state.error is not None and "400100" in state.error
    assert server.hits[ACTIVE] == 1
    assert delays == []


def test_backoff_delay_is_bounded() -> None:
    for attempt in range(12):
        assert 0 <= kucoin.backoff_delay(attempt) <= kucoin.BACKOFF_CAP_S


# ---- single-contract status --------------------------------------------------------------------------------

def contract_path(symbol: str) -> str:
    return kucoin.CONTRACT_PATH.format(symbol=symbol)


@pytest.mark.parametrize("code", ["100003", "200003"])
def test_contract_status_is_none_when_the_exchange_says_the_contract_is_gone(server: LocalServer, code: str) -> None:
    server.route(contract_path("LUNAUSDTM"), error_code(code, "Contract parameter invalid"))
    assert kucoin.contract_status(make_session(), server.base_url, "LUNAUSDTM", timeout_s=TIMEOUT_S) is None
    assert server.hits[contract_path("LUNAUSDTM")] == 1


@pytest.mark.parametrize("status", ["Open", "Paused", "CancelOnly"])
def test_contract_status_returns_the_status(server: LocalServer, status: str) -> None:
    server.route(contract_path("XBTUSDTM"), envelope({"symbol": "XBTUSDTM", "status": status}))
    assert kucoin.contract_status(make_session(), server.base_url, "XBTUSDTM", timeout_s=TIMEOUT_S) == status


def test_contract_status_raises_on_a_transient_failure(server: LocalServer) -> None:
    server.route(contract_path("XBTUSDTM"), reply(503, b"maintenance"))
    with pytest.raises(TransientFetchError):
        kucoin.contract_status(make_session(), server.base_url, "XBTUSDTM", timeout_s=TIMEOUT_S)


@pytest.mark.parametrize("code", ["500000", "404000"])
def test_contract_status_does_not_call_other_error_codes_gone(server: LocalServer, code: str) -> None:
    # An internal error or a wrong URL proves nothing about the contract: None would confirm a delisting.
    server.route(contract_path("XBTUSDTM"), error_code(code, "Internal Server Error"))
    with pytest.raises(BadResponseError) as info:
        kucoin.contract_status(make_session(), server.base_url, "XBTUSDTM", timeout_s=TIMEOUT_S)
    assert info.value.code == code


BIG = [{"symbol": f"SYM{i}USDTM", "status": "Open", "pad": "x" * 100} for i in range(1_000)]


def test_undecoded_fetch_passes_a_large_success_list_through_undecoded(server: LocalServer) -> None:
    server.route(ACTIVE, envelope(BIG))
    fetched = kucoin.fetch_active(make_session(), server.base_url, timeout_s=TIMEOUT_S, max_bytes=MAX_BYTES,
                                  decode=False)
    assert fetched.data is None
    assert json.loads(fetched.body)["data"] == BIG


def test_undecoded_fetch_still_checks_anything_but_a_plain_success(server: LocalServer) -> None:
    server.route(ACTIVE, reply(200, json.dumps({"data": BIG, "code": "200000"}).encode()))
    reordered = kucoin.fetch_active(make_session(), server.base_url, timeout_s=TIMEOUT_S, max_bytes=MAX_BYTES,
                                  decode=False)
    assert reordered.data == BIG  # not the fast path's shape: decoded and checked as usual
    big_error = json.dumps({"code": "500000", "msg": "x" * 70_000}).encode()
    server.route(ACTIVE, reply(200, big_error))
    with pytest.raises(BadResponseError, match="500000"):
        kucoin.fetch_active(make_session(), server.base_url, timeout_s=TIMEOUT_S, max_bytes=MAX_BYTES,
                                  decode=False)


def test_a_name_that_does_not_resolve_is_named_as_such() -> None:
    with pytest.raises(TransientFetchError) as failed:
        kucoin.fetch_active(make_session(), "http://name-that-does-not-exist.invalid", timeout_s=TIMEOUT_S,
                            max_bytes=MAX_BYTES)
    assert str(failed.value) == "name-that-does-not-exist.invalid: name resolution failed"


def test_the_cause_of_a_tls_failure_is_named() -> None:
    import ssl

    import requests

    wrapped = requests.exceptions.SSLError(ssl.SSLError(1, "[SSL: WRONG_VERSION_NUMBER] wrong version number"))
    assert kucoin.cause(wrapped).startswith("TLS failed")


# ---- answers too large to hold whole -------------------------------------------------------------------------

@pytest.mark.parametrize("content_length", [None, -1])  # declared, or the body ends when the socket closes
def test_a_large_answer_is_spooled_to_a_file_and_a_small_one_kept_in_memory(server: LocalServer,
                                                                            content_length: int | None) -> None:
    body = json.dumps({"code": "200000", "data": BIG}).encode()
    server.route(ACTIVE, *[reply(200, body, content_length=content_length)] * 2)
    large = kucoin.fetch_active(make_session(), server.base_url, timeout_s=TIMEOUT_S, max_bytes=MAX_BYTES,
                                decode=False, spool_bytes=len(body) - 1)
    small = kucoin.fetch_active(make_session(), server.base_url, timeout_s=TIMEOUT_S, max_bytes=MAX_BYTES,
                                decode=False, spool_bytes=len(body))
    assert isinstance(large.body, Spool) and large.body.spooled
    assert bytes(large.body.whole()) == body
    large.body.close()
    assert isinstance(small.body, bytearray) and small.body == body


def test_a_spooled_answer_that_ends_badly_fails_the_sync_and_leaves_no_staged_cache(
    server: LocalServer, tmp_path: Path, redis_client: redis.Redis,
) -> None:
    # Plain head and tail, so the fetch step passes it on; an item cut short near the end: the diff finds out
    # after it has parsed and staged the batches before.
    valid = generate_contracts(100, seed=2, now_ms=int(time.time() * 1000))
    body = json.dumps({"code": "200000", "data": valid}).encode()[:-2] + b', {"symbol": ]}'
    server.route(ACTIVE, reply(200, body))
    settings = Settings(kucoin_url=server.base_url, http_retries=0, http_timeout_s=TIMEOUT_S,
                        database_url=f"sqlite:///{tmp_path / 'tokens.db'}", answer_in_memory_bytes=0)
    state = run_steps(step_context(settings, redis_client), SyncState.new(), steps.fetch, steps.diff)
    assert (state.status, state.error) == ("failed", "staged snapshot holds no contract list")
    assert redis_client.keys(keys.cache_key("*")) == []
    assert lock.holder(redis_client) is None
