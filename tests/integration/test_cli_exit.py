"""Exit statuses and one-line failures of the CLI, run as a subprocess against real Redis, SQLite and the simulator.

The table is README's "Exit status": 0 healthy or done, 1 failed (registry missing or unreadable), 2 an alert
stands (status only), 64 a wrong command line, 78 a bad TOKENWATCH_* setting.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import ROOT, Stack
from tokenwatch.simulator import Simulator

pytestmark = pytest.mark.integration

NOWHERE = "redis://127.0.0.1:9/0"  # the discard port: nothing answers Redis there


@pytest.fixture
def sim() -> Iterator[Simulator]:
    with Simulator(port=0, contracts=40, seed=7) as simulator:
        yield simulator


def run(stack: Stack, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    saved = dict(stack.env)
    stack.env.update(env)
    try:
        return stack.tokenwatch(*args)
    finally:
        stack.env.clear()
        stack.env.update(saved)


def assert_one_line(result: subprocess.CompletedProcess[str]) -> str:
    """stderr is one line starting `tokenwatch:`, no traceback."""
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    return lines[0]


def test_status_exit_statuses(stack: Stack, sim: Simulator, tmp_path: Path) -> None:
    stack.env["TOKENWATCH_KUCOIN_URL"] = sim.url
    # A registry that never synced, Redis unreachable: not healthy.
    assert run(stack, "db", "upgrade").returncode == 0
    never = run(stack, "status", "--json", TOKENWATCH_REDIS_URL=NOWHERE)
    assert never.returncode == 2, never.stderr[-2000:]
    assert [a["name"] for a in json.loads(never.stdout)["alerts"]] == ["redis_unreachable"]

    assert stack.sync("--inline")["status"] == "baseline"
    healthy = run(stack, "status")
    assert healthy.returncode == 0, healthy.stdout + healthy.stderr[-2000:]
    assert "alerts: none" in healthy.stdout

    down = run(stack, "status", TOKENWATCH_REDIS_URL=NOWHERE)
    assert down.returncode == 2
    assert "ALERT redis_unreachable: Redis unreachable at redis://127.0.0.1:9/0" in down.stdout

    for command in (("status",), ("tokens",), ("history",), ("status", "--json")):
        missing = run(stack, *command, TOKENWATCH_DATABASE_URL=f"sqlite:///{tmp_path / 'elsewhere' / 'none.db'}")
        assert missing.returncode == 1, command
        assert "no registry at" in assert_one_line(missing)
        assert missing.stdout == ""
        assert not (tmp_path / "elsewhere").exists()  # a read command creates nothing

    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"not a database " * 400)
    for command in (("status",), ("tokens",), ("history",), ("sync", "--inline")):
        broken = run(stack, *command, TOKENWATCH_DATABASE_URL=f"sqlite:///{garbage}")
        assert broken.returncode == 1, command
        if command[0] != "sync":
            assert "registry database unavailable" in assert_one_line(broken)
        else:
            assert "Traceback" not in broken.stderr and "registry database unavailable" in broken.stdout

    for command in (("status",), ("tokens",), ("sync", "--inline"), ("events",)):
        config = run(stack, *command, TOKENWATCH_SYNC_INTERVAL_S="soon")
        assert config.returncode == 78, command
        assert "TOKENWATCH_SYNC_INTERVAL_S" in assert_one_line(config)
    assert run(stack, "status", "--bogus").returncode == 64


def test_simulate_on_a_taken_port_is_one_line(stack: Stack) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run(stack, "simulate", "--port", str(port))
    assert result.returncode == 1
    line = assert_one_line(result)
    assert f"port {port}" in line and "taken" in line


def test_bad_setting_through_celery_call_is_one_line(stack: Stack) -> None:
    """`celery -A tokenwatch.workers.app call ...` with a bad TOKENWATCH_* value: the README's one line."""
    stack.env["TOKENWATCH_HTTP_RETRIES"] = "many"
    for command in (("call", "tokenwatch.sync"), ("worker", "-Q", "fetch,db", "-c", "1"), ("beat",)):
        started = time.monotonic()
        result = subprocess.run(
            [sys.executable, "-m", "celery", "-A", "tokenwatch.workers.app", *command],
            env=stack.env, cwd=ROOT, capture_output=True, text=True, timeout=60, check=False,
        )
        assert result.returncode == 78, command
        assert time.monotonic() - started < 30
        line = assert_one_line(result)
        assert line.startswith("tokenwatch: invalid TOKENWATCH_HTTP_RETRIES"), line
