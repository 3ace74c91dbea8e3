"""Flower as `tokenwatch run` starts it, watching a real worker run a real sync; its API with and without auth."""

from __future__ import annotations

import json
import socket
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
import requests

from tests.conftest import Stack
from tokenwatch.runner import commands
from tokenwatch.settings import Settings
from tokenwatch.simulator import Simulator
from tokenwatch.tasks.names import DIFF, FETCH, WRITE

pytestmark = pytest.mark.integration

CHAIN = {FETCH, DIFF, WRITE}
LISTEN = "0A"  # TCP state in /proc/net/tcp
T = TypeVar("T")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _request(url: str, auth: tuple[str, str] | None = None) -> tuple[int, bytes]:
    try:
        answer = requests.get(url, auth=auth, timeout=10)
    except requests.ConnectionError:
        return 0, b""
    return answer.status_code, answer.content


def _json(url: str, auth: tuple[str, str] | None = None) -> Any:
    status, body = _request(url, auth)
    assert status == 200, (url, status, body[:300])
    return json.loads(body)


def _poll(probe: Callable[[], T | None], timeout: float = 30.0) -> T | None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = probe()
        if result:
            return result
        time.sleep(0.3)
    return None


def _listeners(port: int) -> set[str]:
    """Local addresses listening on TCP port, IPv4 and IPv6, read from /proc/net."""
    found: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            address, hex_port = fields[1].rsplit(":", 1)
            if int(hex_port, 16) == port and fields[3] == LISTEN:
                if len(address) == 8:
                    found.add(socket.inet_ntop(socket.AF_INET, bytes.fromhex(address)[::-1]))
                else:
                    words = bytes.fromhex(address)
                    raw = b"".join(words[i:i + 4][::-1] for i in range(0, 16, 4))
                    found.add(socket.inet_ntop(socket.AF_INET6, raw))
    return found


def _start_flower(stack: Stack, port: int) -> str:
    """Start Flower with the very argv `tokenwatch run` uses; returns its base URL once it answers."""
    settings = Settings(flower_port=port, flower_address="127.0.0.1", data_dir=str(stack.workdir / "data"))
    argv = commands(settings)["flower"]
    assert argv[:6] == [sys.executable, "-m", "celery", "-A", "tokenwatch.workers.app", "flower"]
    assert "--address=127.0.0.1" in argv
    stack.start("flower", *argv[5:], ready="Visit me at")
    base = f"http://127.0.0.1:{port}"
    assert _poll(lambda: _request(base + "/healthcheck")[0] == 200), "Flower did not answer /healthcheck"
    return base


@pytest.fixture
def sim() -> Iterator[Simulator]:
    with Simulator(port=0, contracts=50, seed=21) as simulator:
        yield simulator


def test_flower_lists_the_worker_and_the_three_chain_tasks_of_a_sync(stack: Stack, sim: Simulator) -> None:
    stack.env["TOKENWATCH_KUCOIN_URL"] = sim.url
    stack.env["FLOWER_UNAUTHENTICATED_API"] = "true"
    stack.env.pop("FLOWER_BASIC_AUTH", None)
    port = _free_port()
    stack.start_worker()
    base = _start_flower(stack, port)
    assert _listeners(port) == {"127.0.0.1"}

    worker = f"worker@{socket.gethostname()}"
    # The worker's heartbeat reaching Flower proves the event receiver runs before the sync is sent.
    alive = _poll(lambda: _json(base + "/api/workers?status=1").get(worker))
    assert alive is True, _json(base + "/api/workers?status=1")
    workers = _json(base + "/api/workers?refresh=1")
    assert worker in workers
    queues = {q["name"] for q in workers[worker]["active_queues"]}
    assert queues == {"fetch", "db"}
    assert set(workers[worker]["registered"]) >= CHAIN

    outcome = stack.sync()
    assert outcome["status"] == "baseline"

    def chain_tasks() -> dict[str, dict[str, Any]] | None:
        tasks = _json(base + "/api/tasks").values()
        done = {t["name"]: t for t in tasks if t["name"] in CHAIN and t["state"] == "SUCCESS"}
        return done if set(done) == CHAIN else None

    tasks = _poll(chain_tasks)
    assert tasks is not None, _json(base + "/api/tasks")
    assert {t["worker"] for t in tasks.values()} == {worker}
    assert outcome["sync_id"] in tasks[FETCH]["args"]
    assert tasks[WRITE]["result"] is not None and outcome["sync_id"] in tasks[WRITE]["result"]
    for name in CHAIN:
        assert _json(base + f"/api/tasks?taskname={name}"), name


def test_flower_basic_auth_guards_the_api_but_not_the_healthcheck(stack: Stack) -> None:
    stack.env.pop("FLOWER_UNAUTHENTICATED_API", None)
    stack.env["FLOWER_BASIC_AUTH"] = "user:pass"
    port = _free_port()
    base = _start_flower(stack, port)
    assert _listeners(port) == {"127.0.0.1"}

    for path in ("/api/workers", "/api/tasks", "/workers"):
        assert _request(base + path)[0] == 401, path
        assert _request(base + path, ("user", "wrong"))[0] == 401, path
        assert _request(base + path, ("user", "pass"))[0] == 200, path
    assert _request(base + "/healthcheck") == (200, b"OK")  # what a container health check calls


def test_flower_without_auth_refuses_the_api(stack: Stack) -> None:
    stack.env.pop("FLOWER_UNAUTHENTICATED_API", None)
    stack.env.pop("FLOWER_BASIC_AUTH", None)
    base = _start_flower(stack, _free_port())
    status, body = _request(base + "/api/workers")
    assert status == 401
    assert b"FLOWER_UNAUTHENTICATED_API" in body
