"""`tokenwatch run` as a user starts it: embedded Redis, worker, beat and Flower, stopped by one signal."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import ROOT
from tokenwatch.simulator import Simulator

pytestmark = pytest.mark.integration


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _descendants(pid: int) -> set[int]:
    children: set[int] = set()
    for status in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = status.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            child = int(status.parent.name)
            children |= {child} | _descendants(child)
    return children


def test_run_starts_everything_with_an_embedded_redis_and_stops_on_sigterm(tmp_path: Path) -> None:
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOKENWATCH_")}
    with Simulator(port=0, contracts=100, seed=3) as sim:
        env.update({"TOKENWATCH_KUCOIN_URL": sim.url, "TOKENWATCH_FLOWER_PORT": str(port),
                    "PYTHONPATH": str(ROOT)})
        log = (tmp_path / "run.log").open("wb")
        run = subprocess.Popen([sys.executable, "-m", "tokenwatch.cli", "run"], cwd=tmp_path, env=env,
                               stdout=log, stderr=subprocess.STDOUT)
        try:
            db = tmp_path / "data" / "tokens.db"
            deadline = time.monotonic() + 60
            synced = flower = False
            while time.monotonic() < deadline and not (synced and flower):
                time.sleep(0.5)
                assert run.poll() is None, (tmp_path / "run.log").read_text()[-3000:]
                if not synced and db.exists():
                    check = subprocess.run([sys.executable, "-m", "tokenwatch.cli", "tokens", "--json"], cwd=tmp_path,
                                           env=env, capture_output=True, text=True, check=False)
                    synced = check.returncode == 0 and check.stdout.count('"symbol"') == 100
                if not flower:
                    try:
                        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthcheck", timeout=2) as answer:
                            flower = answer.status == 200
                    except OSError:
                        pass
            assert synced, "the registry did not fill: " + (tmp_path / "run.log").read_text()[-3000:]
            assert flower, "Flower did not answer on 127.0.0.1"
            assert (tmp_path / "data" / "redis.sock").exists()
            children = _descendants(run.pid)
            assert len(children) >= 4  # redis-server, worker (and its pool child), beat, Flower

            started = time.monotonic()
            run.send_signal(signal.SIGTERM)
            assert run.wait(10) == 0
            assert time.monotonic() - started < 10
            time.sleep(0.5)
            assert not [pid for pid in children if Path(f"/proc/{pid}").exists()
                        and "zombie" not in Path(f"/proc/{pid}/status").read_text().lower()]
            assert not (tmp_path / "data" / "redis.sock").exists()
        finally:
            if run.poll() is None:
                run.kill()
            log.close()
