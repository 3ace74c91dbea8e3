"""KuCoin futures REST client: one pooled session per process, timeouts always, envelopes checked."""

from __future__ import annotations

import contextlib
import logging
import random
import re
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import orjson
import requests
from requests.adapters import HTTPAdapter

from tokenwatch.clock import now_ms
from tokenwatch.errors import BadResponseError, FetchError, TransientFetchError
from tokenwatch.fetch.spool import Spool

log = logging.getLogger(__name__)

ACTIVE_PATH = "/api/v1/contracts/active"
CONTRACT_PATH = "/api/v1/contracts/{symbol}"
OK_CODE = "200000"
RATE_LIMIT_CODE = "429000"
# Codes that say "no such contract" when asking about one symbol; others (404000, 500000...) prove nothing.
UNKNOWN_CONTRACT_CODES = frozenset({"100001", "100003", "200003", "400100"})
MAX_RETRY_AFTER_S = 30.0
BACKOFF_BASE_S = 0.5
BACKOFF_CAP_S = 8.0
_CHUNK = 256 * 1024

def make_session() -> requests.Session:
    """A pooled HTTP session for the exchange; one per process (tokenwatch.process keeps it)."""
    session = requests.Session()
    session.headers["Accept"] = "application/json"
    session.headers["User-Agent"] = "tokenwatch/0.1"
    session.mount("http://", HTTPAdapter(pool_connections=2, pool_maxsize=4))
    session.mount("https://", HTTPAdapter(pool_connections=2, pool_maxsize=4))
    return session


@dataclass(frozen=True, slots=True)
class Fetched:
    """The data of a successful call, its size and how long it took."""

    data: Any
    body: bytes | bytearray | Spool  # a Spool only for an undecoded answer larger than spool_bytes
    fetched_at_ms: int
    elapsed_ms: float


def _retry_after(response: requests.Response, rate_limited: bool) -> float | None:
    # gw-ratelimit-reset is the time until the rate pool refills: it only says when to retry a 429;
    # on a 5xx it would make us wait for a window that has nothing to do with the failure.
    reset_ms = response.headers.get("gw-ratelimit-reset") if rate_limited else None
    retry_after = response.headers.get("Retry-After")
    try:
        if reset_ms is not None:
            return min(max(float(reset_ms) / 1000.0, 0.0), MAX_RETRY_AFTER_S)
        if retry_after is not None:
            return min(max(float(retry_after), 0.0), MAX_RETRY_AFTER_S)
    except ValueError:
        return None
    return None


def _read_body(response: requests.Response, max_bytes: int, spool_bytes: int) -> Spool:
    declared = response.headers.get("Content-Length")
    size = int(declared) if declared is not None and declared.isdigit() else None
    if size is not None and size > max_bytes:
        raise BadResponseError(f"response of {size} bytes exceeds the {max_bytes}-byte bound")
    # One buffer grown in place, not parts joined at the end (joining held the answer twice); past spool_bytes,
    # an unnamed temporary file, so that the largest answers are never held whole in memory. An answer that says
    # it is larger than the limit goes to the file from its first byte.
    body = Spool(0 if size is not None and size > spool_bytes else spool_bytes)
    try:
        _read_into(body, response, max_bytes)
        if size is not None and body.size < size:
            raise BadResponseError(f"truncated response body: {body.size} of {size} bytes")
    except BaseException:
        body.close()
        raise
    return body


def _read_into(body: Spool, response: requests.Response, max_bytes: int) -> None:
    try:
        for part in response.iter_content(_CHUNK):
            if body.size + len(part) > max_bytes:
                raise BadResponseError(f"response exceeds the {max_bytes}-byte bound")
            body.write(part)
    except (requests.exceptions.ChunkedEncodingError, requests.exceptions.ContentDecodingError) as exc:
        raise BadResponseError(f"truncated response body after {body.size} bytes") from exc
    except requests.exceptions.ConnectionError as exc:
        # requests reports a read timeout mid-body as a ConnectionError; both may pass on a retry.
        if "timed out" in str(exc).lower():
            raise TransientFetchError(f"timeout reading the body after {body.size} bytes") from exc
        raise TransientFetchError(f"connection dropped after {body.size} bytes of the body") from exc


def _describe(body: bytes | bytearray) -> str:
    head = body[:200].lstrip().lower()
    if head.startswith((b"<!doctype", b"<html")) or b"<html" in head:
        return "an HTML page"
    return f"{len(body)} bytes that are not JSON"


# A success answer is recognised by its envelope alone, so the fetch step does not decode megabytes only to look
# at "code" (the diff step decodes each contract once, and refuses the bad ones one by one: one bad contract must
# not fail the whole answer here). Anything else is decoded and checked.
# (domain.contracts.OK_LIST_HEAD is the same head: the diff step cuts such an answer into parts after it.)
_OK_LIST_HEAD = re.compile(rb'\A\s*\{\s*"code"\s*:\s*"200000"\s*,\s*"data"\s*:\s*\[')
_OK_LIST_TAIL = re.compile(rb'\]\s*\}\s*\Z')


def _plain_success_list(status: int, body: Spool) -> bool:
    return (
        status == 200 and _OK_LIST_HEAD.match(body.head(256)) is not None
        and _OK_LIST_TAIL.search(body.tail(64)) is not None
    )


def get_json(
    session: requests.Session, url: str, *, timeout_s: float, max_bytes: int, decode: bool = True,
    spool_bytes: int | None = None,
) -> Fetched:
    """One GET of a KuCoin endpoint: the envelope's data, or a FetchError that says why in one line.

    timeout_s bounds the whole answer, headers and body: requests' own timeout is per read, so an answer that
    trickles in a byte at a time would never time out; here the socket is shut down at the deadline. With
    decode=False a plainly successful list is returned undecoded (data None) for a later step, in memory, or as
    a Spool when it is larger than spool_bytes (never, when None).
    """
    started = time.perf_counter()
    deadline = time.monotonic() + timeout_s
    fetched_at_ms = now_ms()
    host = urlsplit(url).hostname or url
    try:
        response = session.get(url, timeout=(min(timeout_s, 5.0), timeout_s), stream=True)
    except requests.exceptions.RequestException as exc:
        reason = cause(exc)
        after = f" after {timeout_s:g} s" if reason == "timed out" else ""
        raise TransientFetchError(f"{host}: {reason}{after}") from exc
    with response, _cut_at(response, deadline) as cut:
        status = response.status_code
        if status == 429 or status >= 500:
            raise TransientFetchError(f"HTTP {status}", retry_after_s=_retry_after(response, status == 429))
        try:
            spool = _read_body(response, max_bytes, max_bytes if spool_bytes is None else spool_bytes)
        except (FetchError, requests.exceptions.RequestException) as exc:
            if cut.is_set():
                raise TransientFetchError(f"{host}: answer not complete within {timeout_s:g} s") from exc
            if isinstance(exc, FetchError):
                raise
            raise TransientFetchError(f"{host}: {cause(exc)} reading the body") from exc
    if not decode and _plain_success_list(status, spool):
        return Fetched(data=None, body=spool if spool.spooled else spool.whole(), fetched_at_ms=fetched_at_ms,
                       elapsed_ms=(time.perf_counter() - started) * 1000.0)
    body = spool.whole()
    spool.close()  # its file, if any: body holds every byte now
    try:
        envelope = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise BadResponseError(f"HTTP {status} with {_describe(body)}") from None
    if not isinstance(envelope, dict):
        raise BadResponseError(f"HTTP {status} with a JSON {type(envelope).__name__}, expected an object")
    code = str(envelope.get("code"))
    if code != OK_CODE:
        msg = str(envelope.get("msg", ""))[:120].encode("unicode_escape").decode("ascii")
        if code == RATE_LIMIT_CODE:
            raise TransientFetchError(f"rate limited (code {code})", retry_after_s=_retry_after(response, True))
        raise BadResponseError(f"HTTP {status} with error code {code[:20]!r}: {msg}", code=code[:20])
    if status != 200:
        raise BadResponseError(f"HTTP {status}")
    return Fetched(
        data=envelope.get("data"), body=body, fetched_at_ms=fetched_at_ms,
        elapsed_ms=(time.perf_counter() - started) * 1000.0,
    )


@contextmanager
def _cut_at(response: requests.Response, deadline: float) -> Iterator[threading.Event]:
    """Shut the answer's socket down at the deadline (urllib3's HTTPResponse.shutdown), unblocking any read; the
    event says it happened."""
    cut = threading.Event()

    def shut() -> None:
        cut.set()
        with contextlib.suppress(ValueError, RuntimeError, OSError):  # already released or closed: nothing to cut
            response.raw.shutdown()

    timer = threading.Timer(max(deadline - time.monotonic(), 0.0), shut)
    timer.daemon = True
    timer.start()
    try:
        yield cut
    finally:
        timer.cancel()


# Exceptions found in a failure's chain, and words in its message, and the cause each names.
_CAUSES: tuple[tuple[type[BaseException] | tuple[type[BaseException], ...], str], ...] = (
    (socket.gaierror, "name resolution failed"), (ConnectionRefusedError, "connection refused"),
    (ConnectionResetError, "connection reset"), ((TimeoutError, requests.exceptions.Timeout), "timed out"),
)
_CAUSE_WORDS = (
    ("timed out", "timed out"), ("name or service not known", "name resolution failed"),
    ("failed to resolve", "name resolution failed"), ("nodename nor servname", "name resolution failed"),
    ("temporary failure in name resolution", "name resolution failed"), ("connection refused", "connection refused"),
)


def cause(exc: BaseException) -> str:
    """What went wrong with a connection, in a few words: name resolution, refused, reset, timed out, TLS."""
    current: BaseException | None = exc
    for _ in range(10):
        if current is None:
            break
        if isinstance(current, ssl.SSLError):
            return f"TLS failed ({getattr(current, 'reason', None) or 'handshake'})"
        found = next((words for kinds, words in _CAUSES if isinstance(current, kinds)), None)
        if found:
            return found
        current = current.__cause__ or current.__context__ or next(
            (arg for arg in getattr(current, "args", ()) if isinstance(arg, BaseException)), None)
    text = str(exc).lower()
    return next((words for needle, words in _CAUSE_WORDS if needle in text), "connection failed")


def backoff_delay(attempt: int, retry_after_s: float | None = None) -> float:
    """Exponential backoff with full jitter, bounded; a server's own hint wins when it gives one."""
    if retry_after_s is not None:
        return retry_after_s + random.uniform(0, 0.1)
    return random.uniform(0, min(BACKOFF_CAP_S, BACKOFF_BASE_S * 2**attempt))


def fetch_active(
    session: requests.Session, base_url: str, *, timeout_s: float, max_bytes: int, decode: bool = True,
    spool_bytes: int | None = None,
) -> Fetched:
    """One call of the active-contracts endpoint; data is checked to be a list (when decoded)."""
    fetched = get_json(session, base_url + ACTIVE_PATH, timeout_s=timeout_s, max_bytes=max_bytes, decode=decode,
                       spool_bytes=spool_bytes)
    if fetched.data is None and not decode:
        return fetched
    if not isinstance(fetched.data, list):
        raise BadResponseError(f"data is a {type(fetched.data).__name__}, expected a list of contracts")
    return fetched


def contract_status(session: requests.Session, base_url: str, symbol: str, *, timeout_s: float) -> str | None:
    """The contract's status from the single-contract endpoint; None when the exchange says it is gone."""
    try:
        fetched = get_json(session, base_url + CONTRACT_PATH.format(symbol=symbol), timeout_s=timeout_s,
                           max_bytes=1 << 20)
    except BadResponseError as exc:
        if exc.code in UNKNOWN_CONTRACT_CODES:
            return None
        raise
    data = fetched.data
    if not isinstance(data, dict):
        return None
    status = data.get("status")
    return status if isinstance(status, str) else None
