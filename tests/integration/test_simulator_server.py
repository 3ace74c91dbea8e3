"""The simulator over real HTTP on 127.0.0.1: KuCoin's envelope, scripted changes, control API and faults."""

from __future__ import annotations

import http.client
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import requests

from tokenwatch.domain.contracts import parse_contract, parse_contracts
from tokenwatch.simulator import Simulator, SimulatorError

pytestmark = pytest.mark.integration

ACTIVE = "/api/v1/contracts/active"
N = 60
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def sim() -> Iterator[Simulator]:
    with Simulator(contracts=N, seed=3) as simulator:
        yield simulator


@pytest.fixture
def client() -> Iterator[requests.Session]:
    with requests.Session() as session:
        yield session


def get_active(client: requests.Session, sim: Simulator) -> list[dict[str, Any]]:
    response = client.get(sim.url + ACTIVE, timeout=10)
    assert response.status_code == 200
    envelope = response.json()
    assert envelope["code"] == "200000"
    data = envelope["data"]
    assert isinstance(data, list)
    return data


def by_symbol(data: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {c["symbol"]: c for c in data}


def sim_body(sim: Simulator) -> bytes:
    return requests.get(sim.url + ACTIVE, timeout=10).content


def get_contract(client: requests.Session, sim: Simulator, symbol: str) -> dict[str, Any]:
    response = client.get(f"{sim.url}/api/v1/contracts/{symbol}", timeout=10)
    assert response.status_code == 200
    body: dict[str, Any] = response.json()
    return body


def control(client: requests.Session, sim: Simulator, action: str, body: Any) -> requests.Response:
    return client.post(f"{sim.url}/_sim/{action}", data=orjson.dumps(body), timeout=10)


# -- endpoints -------------------------------------------------------------------------------------


def test_active_list_has_kucoins_envelope_and_headers(sim: Simulator, client: requests.Session) -> None:
    response = client.get(sim.url + ACTIVE, timeout=10)
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "application/json"
    assert int(response.headers["Content-Length"]) == len(response.content)
    for name in ("gw-ratelimit-limit", "gw-ratelimit-remaining", "gw-ratelimit-reset"):
        assert response.headers[name].isdigit()
    assert int(response.headers["gw-ratelimit-remaining"]) < int(response.headers["gw-ratelimit-limit"])
    envelope = orjson.loads(response.content)
    assert envelope["code"] == "200000"
    assert len(envelope["data"]) == N
    result = parse_contracts(envelope["data"])
    assert result.invalid == 0 and len(result.contracts) == N
    assert sim.symbols() == [c["symbol"] for c in envelope["data"]]
    assert re.fullmatch(r"http://127\.0\.0\.1:\d+", sim.url) and sim.port > 0


def test_active_list_is_stable_until_tick(sim: Simulator, client: requests.Session) -> None:
    first = client.get(sim.url + ACTIVE, timeout=10).content
    assert client.get(sim.url + ACTIVE, timeout=10).content == first
    assert sim.tick() == N
    after = by_symbol(get_active(client, sim))
    before = by_symbol(orjson.loads(first)["data"])
    assert after.keys() == before.keys()
    for symbol, contract in after.items():
        assert contract["lastTradePrice"] != before[symbol]["lastTradePrice"]
        assert parse_contract(contract).meta == parse_contract(before[symbol]).meta


def test_tick_fraction_changes_that_many_contracts(sim: Simulator, client: requests.Session) -> None:
    before = by_symbol(get_active(client, sim))
    assert sim.tick(0.5) == N // 2
    after = by_symbol(get_active(client, sim))
    moved = [s for s in after if after[s]["lastTradePrice"] != before[s]["lastTradePrice"]]
    assert len(moved) == N // 2
    assert sim.tick(0.0) == 0
    with pytest.raises(SimulatorError):
        sim.tick(1.5)


def test_contract_endpoint_and_unknown_symbol(sim: Simulator, client: requests.Session) -> None:
    body = get_contract(client, sim, "XBTUSDTM")
    assert body["code"] == "200000"
    assert body["data"]["symbol"] == "XBTUSDTM"
    assert body["data"] == sim.contract("XBTUSDTM")
    unknown = get_contract(client, sim, "NOSUCHUSDTM")
    assert unknown == {"code": "100003", "msg": "Contract parameter invalid"}


def test_status_endpoint_and_unknown_path(sim: Simulator, client: requests.Session) -> None:
    status = client.get(sim.url + "/api/v1/status", timeout=10)
    assert status.json() == {"code": "200000", "data": {"status": "open", "msg": ""}}
    sim.set_status("cancelonly", "maintenance")
    assert client.get(sim.url + "/api/v1/status", timeout=10).json()["data"] == {
        "status": "cancelonly", "msg": "maintenance",
    }
    missing = client.get(sim.url + "/api/v2/nothing", timeout=10)
    assert missing.status_code == 404
    assert missing.json() == {"code": "404000", "msg": "Url Not Found"}
    assert missing.headers["Content-Type"] == "application/json"
    assert sim.requests("/api/v2/nothing") == 1
    assert sim.requests("/api/v1/status") == 2


# -- scripted changes ------------------------------------------------------------------------------


def test_list_new_appears_with_a_fresh_listing_time(sim: Simulator, client: requests.Session) -> None:
    before_ms = int(time.time() * 1000)
    added = sim.list_new(3)
    assert len(added) == 3 and len(set(added)) == 3
    chosen = sim.list_new(symbols=["NEWCOINUSDTM", "NEWCOINUSDCM", "ODDNAME"])
    assert chosen == ["NEWCOINUSDTM", "NEWCOINUSDCM", "ODDNAME"]
    data = by_symbol(get_active(client, sim))
    assert len(data) == N + 6
    for symbol in added + chosen:
        assert before_ms <= data[symbol]["firstOpenDate"] <= int(time.time() * 1000)
        assert data[symbol]["status"] == "Open"
        parse_contract(data[symbol])
    assert data["NEWCOINUSDTM"]["baseCurrency"] == "NEWCOIN"
    assert data["NEWCOINUSDCM"]["settleCurrency"] == "USDC"
    with pytest.raises(SimulatorError, match="already listed"):
        sim.list_new(symbols=["XBTUSDTM"])
    assert len(get_active(client, sim)) == N + 6


def test_delist_relist_and_contract_endpoint(sim: Simulator, client: requests.Session) -> None:
    original = get_contract(client, sim, "ETHUSDTM")["data"]
    sim.delist(["ETHUSDTM", "SOLUSDTM"])
    symbols = {c["symbol"] for c in get_active(client, sim)}
    assert "ETHUSDTM" not in symbols and "SOLUSDTM" not in symbols
    assert len(symbols) == N - 2
    assert get_contract(client, sim, "ETHUSDTM")["code"] == "100003"
    assert sim.delisted() == ["ETHUSDTM", "SOLUSDTM"]
    sim.relist(["ETHUSDTM"])
    assert by_symbol(get_active(client, sim))["ETHUSDTM"] == original
    assert get_contract(client, sim, "ETHUSDTM")["data"] == original
    with pytest.raises(SimulatorError, match="not listed"):
        sim.delist(["NOSUCHUSDTM"])
    with pytest.raises(SimulatorError, match="not delisted"):
        sim.relist(["XBTUSDTM"])


def test_pause_and_resume_keep_the_contract_listed(sim: Simulator, client: requests.Session) -> None:
    sim.pause(["XBTUSDTM"])
    data = by_symbol(get_active(client, sim))
    assert len(data) == N
    assert data["XBTUSDTM"]["status"] == "Paused"
    assert get_contract(client, sim, "XBTUSDTM")["data"]["status"] == "Paused"
    sim.resume(["XBTUSDTM"])
    assert by_symbol(get_active(client, sim))["XBTUSDTM"]["status"] == "Open"


def test_schedule_delisting_sets_dates_and_stays_open(sim: Simulator, client: requests.Session) -> None:
    at = sim.schedule_delisting(["DOGEUSDTM"])
    now = time.time() * 1000
    assert 6.9 * 86_400_000 < at - now <= 7 * 86_400_000
    contract = by_symbol(get_active(client, sim))["DOGEUSDTM"]
    assert contract["expireDate"] == contract["settleDate"] == at
    assert contract["status"] == "Open" and contract["type"] == "FFWCSX"
    assert contract["settlementSymbol"]
    assert parse_contract(contract).expire_date == at
    assert sim.schedule_delisting(["ADAUSDTM"], at_ms=1_800_000_000_000) == 1_800_000_000_000
    quarterly = next(s for s in sim.symbols() if s.startswith("XBTM") and not s.endswith("USDM"))
    with pytest.raises(SimulatorError, match="not a perpetual"):
        sim.schedule_delisting([quarterly])


def test_set_params_changes_listing_metadata(sim: Simulator, client: requests.Session) -> None:
    before = parse_contract(by_symbol(get_active(client, sim))["XRPUSDTM"])
    applied = sim.set_params("XRPUSDTM", tickSize=0.001, maxLeverage=20, takerFeeRate=0.0005)
    assert applied == {"tickSize": 0.001, "maxLeverage": 20, "takerFeeRate": 0.0005}
    after_raw = by_symbol(get_active(client, sim))["XRPUSDTM"]
    after = parse_contract(after_raw)
    assert (after_raw["tickSize"], after_raw["maxLeverage"], after_raw["takerFeeRate"]) == (0.001, 20, 0.0005)
    assert after.meta != before.meta
    with pytest.raises(SimulatorError):
        sim.set_params("XRPUSDTM")
    with pytest.raises(SimulatorError, match="not listed"):
        sim.set_params("NOSUCHUSDTM", tickSize=1)


# -- control API -----------------------------------------------------------------------------------


def test_control_api_scripts_the_exchange(sim: Simulator, client: requests.Session) -> None:
    listed = control(client, sim, "list_new", {"count": 2})
    assert listed.status_code == 200 and listed.json()["ok"] is True
    new_symbols = listed.json()["result"]
    assert len(new_symbols) == 2
    assert control(client, sim, "delist", {"symbols": ["XBTUSDTM"]}).json() == {"ok": True, "result": None}
    assert control(client, sim, "pause", {"symbols": ["ETHUSDTM"]}).status_code == 200
    params = control(client, sim, "set_params", {"symbol": "SOLUSDTM", "maxLeverage": 10})
    assert params.json()["result"] == {"maxLeverage": 10}
    nested = control(client, sim, "set_params", {"symbol": "SOLUSDTM", "fields": {"makerFeeRate": 0.0001}})
    assert nested.json()["result"] == {"makerFeeRate": 0.0001}
    scheduled = control(client, sim, "schedule_delisting", {"symbols": ["ADAUSDTM"], "at_ms": 1_800_000_000_000})
    assert scheduled.json()["result"] == 1_800_000_000_000
    assert control(client, sim, "tick", {"fraction": 0.5}).json()["result"] == (N + 2 - 1) // 2

    data = by_symbol(get_active(client, sim))
    assert set(new_symbols) <= data.keys()
    assert "XBTUSDTM" not in data
    assert data["ETHUSDTM"]["status"] == "Paused"
    assert data["SOLUSDTM"]["maxLeverage"] == 10 and data["SOLUSDTM"]["makerFeeRate"] == 0.0001
    assert data["ADAUSDTM"]["expireDate"] == 1_800_000_000_000

    assert control(client, sim, "relist", {"symbols": ["XBTUSDTM"]}).status_code == 200
    assert control(client, sim, "resume", {"symbols": ["ETHUSDTM"]}).status_code == 200
    state = client.get(sim.url + "/_sim/state", timeout=10).json()
    assert state["ok"] is True
    assert state["result"]["listed"] == N + 2
    assert state["result"]["paused"] == 0 and state["result"]["delisted"] == 0
    assert state["result"]["requests"][ACTIVE] == 1

    injected = control(client, sim, "inject", {"fault": "empty", "count": 1})
    assert injected.json()["result"]["fault"] == "empty"
    assert get_active(client, sim) == []
    assert control(client, sim, "inject", {"fault": "empty"}).status_code == 200
    assert control(client, sim, "clear_faults", {}).json()["result"] == 1
    assert len(get_active(client, sim)) == N + 2


@pytest.mark.parametrize(
    ("action", "body", "status"),
    [
        ("delist", {"symbols": ["NOSUCHUSDTM"]}, 400),
        ("delist", {"symbols": "XBTUSDTM"}, 400),
        ("list_new", {"count": 0}, 400),
        ("list_new", {"bogus": 1}, 400),
        ("tick", {"fraction": "all"}, 400),
        ("inject", {"fault": "meteor"}, 400),
        ("inject", {"fault": "delay", "seconds": -1}, 400),
        ("set_params", {"symbol": "XBTUSDTM"}, 400),
        # Plausible but wrong: a misspelt key, a number as text, a field beside "fields", an unknown option.
        ("set_params", {"symbol": "XBTUSDTM", "tick_size": 0.5}, 400),
        ("set_params", {"symbol": "XBTUSDTM", "tickSize": "0.5"}, 400),
        ("set_params", {"symbol": "XBTUSDTM", "maxLeverage": True}, 400),
        ("set_params", {"symbol": "XBTUSDTM", "fields": {"tickSize": 0.5}, "maxLeverage": 5}, 400),
        ("set_params", {"symbol": "XBTUSDTM", "fields": {"tickSize": 0.5, "lot": 1}}, 400),
        ("list_new", {"count": 2, "symbols": ["FOOUSDTM"]}, 400),
        ("tick", {"fraction": 0.5, "seed": 1}, 400),
        ("set_status", {"status": "open", "msg": 5}, 400),
        ("schedule_delisting", {"symbols": ["SOLUSDTM"], "at": 1_800_000_000_000}, 400),
        ("inject", {"fault": "http_status", "status": 503, "times": 2}, 400),
        ("delist", ["XBTUSDTM"], 400),
        ("explode", {}, 404),
    ],
)
def test_control_api_rejects_bad_input(
    sim: Simulator, client: requests.Session, action: str, body: Any, status: int,
) -> None:
    before = get_active(client, sim)
    response = control(client, sim, action, body)
    assert response.status_code == status
    payload = response.json()
    assert payload["ok"] is False
    assert payload["error"] and "\n" not in payload["error"]
    assert get_active(client, sim) == before  # nothing changed
    assert sim.faults() == []


def test_control_api_rejects_invalid_json(sim: Simulator, client: requests.Session) -> None:
    response = client.post(sim.url + "/_sim/delist", data=b"{not json", timeout=10)
    assert response.status_code == 400
    assert response.json() == {"ok": False, "error": "the body is not valid JSON"}


# -- faults ----------------------------------------------------------------------------------------


def test_http_status_fault_for_the_next_n_requests(sim: Simulator, client: requests.Session) -> None:
    sim.inject("http_status", count=2, status=503)
    for _ in range(2):
        response = client.get(sim.url + ACTIVE, timeout=10)
        assert response.status_code == 503
        assert response.json() == {"code": "503000", "msg": "Service Unavailable"}
    assert len(get_active(client, sim)) == N
    assert sim.requests(ACTIVE) == 3
    assert sim.faults() == []


def test_rate_limit_fault_returns_kucoin_headers(sim: Simulator, client: requests.Session) -> None:
    sim.inject("http_status", count=1, status=429, headers={"gw-ratelimit-reset": 1500, "Retry-After": "2"})
    response = client.get(sim.url + ACTIVE, timeout=10)
    assert response.status_code == 429
    assert response.json()["code"] == "429000"
    assert response.headers["gw-ratelimit-reset"] == "1500"
    assert response.headers["gw-ratelimit-remaining"] == "0"
    assert response.headers["Retry-After"] == "2"
    assert response.headers["gw-ratelimit-limit"] == "2000"


def test_error_code_fault_is_http_200(sim: Simulator, client: requests.Session) -> None:
    sim.inject("error_code", count=1, code="400100", msg="Parameter error")
    response = client.get(sim.url + ACTIVE, timeout=10)
    assert response.status_code == 200
    assert response.json() == {"code": "400100", "msg": "Parameter error"}
    assert len(get_active(client, sim)) == N


def test_delay_fault_sleeps_before_answering(sim: Simulator, client: requests.Session) -> None:
    sim.inject("delay", count=1, seconds=0.4)
    started = time.perf_counter()
    assert len(get_active(client, sim)) == N
    assert time.perf_counter() - started >= 0.4
    sim.inject("delay", count=1, seconds=3)
    with pytest.raises(requests.exceptions.ReadTimeout):
        client.get(sim.url + ACTIVE, timeout=0.3)


def test_truncate_fault_cuts_the_body_short(sim: Simulator) -> None:
    sim.inject("truncate", count=1, bytes=500)
    with pytest.raises(requests.exceptions.ChunkedEncodingError):
        requests.get(sim.url + ACTIVE, timeout=10)
    sim.inject("truncate", count=1)
    # http.client reports exactly what arrived before the hang-up: half the promised body by default.
    connection = http.client.HTTPConnection("127.0.0.1", sim.port, timeout=10)
    try:
        connection.request("GET", ACTIVE)
        response = connection.getresponse()
        declared = int(response.headers["Content-Length"])
        with pytest.raises(http.client.IncompleteRead) as cut:
            response.read()
        assert len(cut.value.partial) == declared // 2
        assert cut.value.partial == sim_body(sim)[: declared // 2]
    finally:
        connection.close()
    assert len(requests.get(sim.url + ACTIVE, timeout=10).json()["data"]) == N


def test_html_and_not_json_faults(sim: Simulator, client: requests.Session) -> None:
    sim.inject("html", count=1)
    page = client.get(sim.url + ACTIVE, timeout=10)
    assert page.status_code == 502
    assert page.headers["Content-Type"] == "text/html"
    assert page.text.startswith("<html>") and "502 Bad Gateway" in page.text
    sim.inject("not_json", count=1)
    garbage = client.get(sim.url + ACTIVE, timeout=10)
    assert garbage.status_code == 200
    assert int(garbage.headers["Content-Length"]) == len(garbage.content)
    with pytest.raises(orjson.JSONDecodeError):
        orjson.loads(garbage.content)


def test_partial_and_empty_faults(sim: Simulator, client: requests.Session) -> None:
    sim.inject("partial", count=1, keep=0.5)
    half = get_active(client, sim)
    assert len(half) == N // 2
    assert [c["symbol"] for c in half] == sim.symbols()[: N // 2]
    sim.inject("empty", count=1)
    assert get_active(client, sim) == []
    assert len(get_active(client, sim)) == N


def test_omit_hides_a_symbol_only_from_the_list(sim: Simulator, client: requests.Session) -> None:
    sim.inject("omit", symbols=["ETHUSDTM"])
    for _ in range(2):  # count None: until cleared
        symbols = {c["symbol"] for c in get_active(client, sim)}
        assert "ETHUSDTM" not in symbols and len(symbols) == N - 1
    single = get_contract(client, sim, "ETHUSDTM")
    assert single["code"] == "200000" and single["data"]["status"] == "Open"
    assert "ETHUSDTM" in sim.symbols()
    assert sim.clear_faults() == 1
    assert "ETHUSDTM" in {c["symbol"] for c in get_active(client, sim)}


def test_bad_records_are_appended(sim: Simulator, client: requests.Session) -> None:
    records: list[Any] = [{"symbol": "BROKEN"}, "not an object", {"symbol": "XBTUSDTM", "type": 5}]
    sim.inject("bad_records", count=1, records=records)
    data = get_active(client, sim)
    assert len(data) == N + 3
    assert data[-3:] == records
    result = parse_contracts(data)
    # The broken XBTUSDTM makes the real one ambiguous too: both copies invalid, the symbol held as registered.
    assert result.invalid == 4 and len(result.contracts) == N - 1
    assert result.duplicated == {"XBTUSDTM"} and result.unusable == {"XBTUSDTM", "BROKEN"}


def test_faults_on_another_path_and_bad_injections(sim: Simulator, client: requests.Session) -> None:
    sim.inject("http_status", count=1, status=500, path="/api/v1/contracts/XBTUSDTM")
    assert client.get(sim.url + "/api/v1/contracts/XBTUSDTM", timeout=10).status_code == 500
    assert len(get_active(client, sim)) == N  # the list was not affected
    assert get_contract(client, sim, "XBTUSDTM")["code"] == "200000"
    with pytest.raises(SimulatorError, match="only applies"):
        sim.inject("omit", symbols=["XBTUSDTM"], path="/api/v1/status")
    with pytest.raises(SimulatorError, match="unknown fault"):
        sim.inject("meteor")
    with pytest.raises(SimulatorError, match="no parameter"):
        sim.inject("partial", keep=0.5, keeep=0.2)
    with pytest.raises(SimulatorError):
        sim.inject("error_code", code="200000")


def test_combined_faults_apply_together(sim: Simulator, client: requests.Session) -> None:
    sim.inject("omit", symbols=["XBTUSDTM"], count=1)
    sim.inject("bad_records", records=[{"symbol": "X"}], count=1)
    data = get_active(client, sim)
    assert len(data) == N - 1 + 1
    assert "XBTUSDTM" not in {c.get("symbol") for c in data[:-1]}
    assert len(get_active(client, sim)) == N


# -- lifecycle and concurrency ---------------------------------------------------------------------


def test_stop_closes_the_socket() -> None:
    with Simulator(contracts=5) as simulator, requests.Session() as session:
        url = simulator.url
        assert session.get(url + ACTIVE, timeout=5).status_code == 200
    with pytest.raises(requests.exceptions.ConnectionError):
        requests.get(url + ACTIVE, timeout=5)
    simulator.stop()  # idempotent


def test_concurrent_reads_during_changes(sim: Simulator) -> None:
    errors: list[str] = []
    sizes: list[int] = []

    def reader() -> None:
        with requests.Session() as session:
            for _ in range(15):
                response = session.get(sim.url + ACTIVE, timeout=10)
                data = orjson.loads(response.content)["data"]
                if parse_contracts(data).invalid:
                    errors.append("invalid contract in a concurrent read")
                sizes.append(len(data))

    threads = [threading.Thread(target=reader) for _ in range(4)]
    for thread in threads:
        thread.start()
    for _ in range(10):
        sim.tick(0.3)
        sim.list_new(1)
    for thread in threads:
        thread.join(timeout=30)
    assert not errors
    assert len(sizes) == 60
    assert all(N <= size <= N + 10 for size in sizes)
    assert sim.requests(ACTIVE) == 60


def test_serve_forever_cli_prints_url_and_stops_on_sigterm() -> None:
    code = "from tokenwatch.simulator import serve_forever_cli; serve_forever_cli(0, 20, 1)"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with subprocess.Popen(
        [sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    ) as process:
        try:
            assert process.stdout is not None
            line = process.stdout.readline()
            match = re.search(r"(http://127\.0\.0\.1:\d+)", line)
            assert match, line
            assert "curl -X POST" in line and "/_sim/list_new" in line
            url = match.group(1)
            assert len(requests.get(url + ACTIVE, timeout=5).json()["data"]) == 20
            process.send_signal(signal.SIGTERM)
            _, stderr = process.communicate(timeout=10)
            assert process.returncode == 0, stderr
            assert "Traceback" not in stderr
        finally:
            if process.poll() is None:
                process.kill()
    with pytest.raises(requests.exceptions.ConnectionError):
        requests.get(url + ACTIVE, timeout=5)
