"""Several hosts on one machine for the multi-host test: network namespaces joined by a bridge.

The store host (Redis, a PostgreSQL cluster of the test's own, the simulator) and each node host get a namespace;
every host reaches the others over its own veth cable into a bridge in the store namespace, so cutting a host's
cable partitions exactly that host. Everything made here is removed by name and pid in ``close``. Needs root.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

STORE_ADDRESS = "10.77.0.1"
PG_BIN = Path("/usr/lib/postgresql/15/bin")
IP = shutil.which("ip") or "/usr/sbin/ip"


def available() -> str | None:
    """Why namespaces cannot be used here, or None when they can."""
    if os.geteuid() != 0:
        return "network namespaces need root (CI runs as root)"
    for tool in ("ip", "su", "redis-server"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    if not (PG_BIN / "initdb").exists():
        return f"PostgreSQL server binaries not found in {PG_BIN}"
    return None


def _run(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True, timeout=60)


class Hosts:
    """A store namespace with a bridge, plus node namespaces each on its own cable into it."""

    def __init__(self, nodes: Sequence[str]) -> None:
        self.tag = f"{os.getpid() % 65536:04x}"
        self.store = f"tw{self.tag}s"
        self.nodes = {name: f"tw{self.tag}{name}" for name in nodes}
        self.folder = Path(tempfile.mkdtemp(prefix="tw-multihost-"))
        self.folder.chmod(0o755)  # the PostgreSQL cluster runs as the postgres user beneath it
        self.processes: list[subprocess.Popen[bytes]] = []
        self._pg_data: Path | None = None
        _run(IP, "netns", "add", self.store)
        self._in(self.store, "ip", "link", "set", "lo", "up")
        bridge = f"tw{self.tag}br"
        self._in(self.store, "ip", "link", "add", bridge, "type", "bridge")
        self._in(self.store, "ip", "addr", "add", f"{STORE_ADDRESS}/24", "dev", bridge)
        self._in(self.store, "ip", "link", "set", bridge, "up")
        for number, (name, namespace) in enumerate(self.nodes.items(), start=2):
            _run(IP, "netns", "add", namespace)
            host_end, store_end = self.cable(name), f"tw{self.tag}{name}s"
            _run(IP, "link", "add", host_end, "type", "veth", "peer", "name", store_end)
            _run(IP, "link", "set", host_end, "netns", namespace)
            _run(IP, "link", "set", store_end, "netns", self.store)
            self._in(self.store, "ip", "link", "set", store_end, "master", bridge)
            self._in(self.store, "ip", "link", "set", store_end, "up")
            self._in(namespace, "ip", "link", "set", "lo", "up")
            self._in(namespace, "ip", "addr", "add", f"10.77.0.{number}/24", "dev", host_end)
            self._in(namespace, "ip", "link", "set", host_end, "up")

    def cable(self, node: str) -> str:
        """The name of a node host's end of its cable."""
        return f"tw{self.tag}{node}0"

    def _in(self, namespace: str, *argv: str) -> None:
        _run(IP, "netns", "exec", namespace, *argv)

    def start(self, namespace: str, argv: Sequence[str], env: dict[str, str], log: Path,
              stdin: int | IO[Any] | None = None, stdout: int | IO[Any] | None = None) -> subprocess.Popen[bytes]:
        """A process on a host: its output in log (unless stdout is given)."""
        out: int | IO[Any] = stdout if stdout is not None else log.open("ab")
        process = subprocess.Popen([IP, "netns", "exec", namespace, *argv], env=env, stdin=stdin, stdout=out,
                                   stderr=log.open("ab") if stdout is not None else subprocess.STDOUT,
                                   cwd=self.folder)
        self.processes.append(process)
        return process

    def pids(self, namespace: str) -> list[int]:
        """Every process running in a namespace."""
        listed = subprocess.run([IP, "netns", "pids", namespace], capture_output=True, text=True, check=False)
        return [int(pid) for pid in listed.stdout.split()]

    def kill_host(self, node: str) -> int:
        """SIGKILL every process of a node host, as if it lost power; how many there were."""
        pids = self.pids(self.nodes[node])
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while self.pids(self.nodes[node]) and time.monotonic() < deadline:
            time.sleep(0.1)
        for process in self.processes:
            process.poll()  # reap what was killed
        return len(pids)

    def cut(self, node: str) -> None:
        """Pull a node host's cable: its connections fail at once, its processes live on."""
        self._in(self.nodes[node], "ip", "link", "set", self.cable(node), "down")

    def heal(self, node: str) -> None:
        """Plug the cable back in."""
        self._in(self.nodes[node], "ip", "link", "set", self.cable(node), "up")

    def start_redis(self, port: int, password: str) -> None:
        """A Redis on the store host that keeps nothing on disk; protected mode wants a password."""
        self.start(self.store, ["redis-server", "--bind", STORE_ADDRESS, "--port", str(port), "--requirepass",
                                password, "--save", "", "--appendonly", "no", "--dir", str(self.folder)],
                   dict(os.environ), self.folder / "redis.log")

    def start_postgres(self, port: int) -> None:
        """A PostgreSQL cluster of this test's own on the store host, trusting the hosts' subnet."""
        pg = self.folder / "pg"
        pg.mkdir()
        shutil.chown(pg, "postgres")
        self._pg_data = pg / "data"
        _run("su", "postgres", "-c", f"{PG_BIN}/initdb -D {self._pg_data} -A trust -U postgres")
        with (self._pg_data / "pg_hba.conf").open("a") as hba:
            hba.write("host all all 10.77.0.0/24 trust\n")
        options = f"-c listen_addresses={STORE_ADDRESS} -p {port} -k {pg} -c fsync=off"
        self._in(self.store, "su", "postgres", "-c",
                 f"{PG_BIN}/pg_ctl -D {self._pg_data} -o '{options}' -l {pg}/log start -w")
        self._in(self.store, "su", "postgres", "-c",
                 f"{PG_BIN}/psql -h {STORE_ADDRESS} -p {port} -U postgres -qc "
                 "'CREATE DATABASE tokenwatch'")

    def close(self) -> None:
        """Stop every process started here and remove every namespace and file."""
        if self._pg_data is not None:
            subprocess.run([IP, "netns", "exec", self.store, "su", "postgres", "-c",
                            f"{PG_BIN}/pg_ctl -D {self._pg_data} stop -m immediate"], capture_output=True,
                           check=False, timeout=60)
        for namespace in [*self.nodes.values(), self.store]:
            for pid in self.pids(namespace):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        for process in self.processes:
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
        for namespace in [*self.nodes.values(), self.store]:
            subprocess.run([IP, "netns", "del", namespace], capture_output=True, check=False)
        shutil.rmtree(self.folder, ignore_errors=True)
