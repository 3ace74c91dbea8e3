"""Redis over TLS with a password: a real redis-server with only a TLS port, a throwaway CA made with openssl,
a real Celery worker and the CLI configured with rediss:// and TOKENWATCH_REDIS_CA_CERT. A server whose
certificate the given CA did not sign is refused, in one line that never shows the password."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis

from tests.conftest import ROOT, Stack
from tests.invariants import check_invariants
from tests.redis_servers import PASSWORD, Server, free_port, wait_until
from tokenwatch.cache import keys
from tokenwatch.cache.redis_client import RedisConfig, make_redis
from tokenwatch.simulator import Simulator

pytestmark = pytest.mark.integration


@dataclass(frozen=True)
class Certificates:
    ca: Path
    cert: Path
    key: Path
    other_ca: Path  # a CA that signed nothing this server shows


def openssl(*args: str, cwd: Path) -> None:
    binary = shutil.which("openssl")
    assert binary is not None  # the certificates fixture skips without it
    subprocess.run([binary, *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def make_ca(folder: Path, name: str) -> Path:
    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "1",
            "-keyout", f"{name}.key", "-out", f"{name}.pem", "-subj", f"/CN=tokenwatch test {name}", cwd=folder)
    return folder / f"{name}.pem"


@pytest.fixture
def certificates(tmp_path: Path) -> Certificates:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    folder = tmp_path / "tls"
    folder.mkdir()
    ca = make_ca(folder, "ca")
    other = make_ca(folder, "other-ca")
    openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", "server.key",
            "-out", "server.csr", "-subj", "/CN=127.0.0.1", cwd=folder)
    (folder / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
            "-out", "server.pem", "-days", "1", "-extfile", "san.ext", cwd=folder)
    return Certificates(ca, folder / "server.pem", folder / "server.key", other)


@pytest.fixture
def tls_server(tmp_path: Path, certificates: Certificates) -> Iterator[Server]:
    """redis-server with a password, listening on a TLS port only (no plain port)."""
    port = free_port()
    server = Server("tls", port, tmp_path, [
        "port 0", f"tls-port {port}", f"tls-cert-file {certificates.cert}", f"tls-key-file {certificates.key}",
        f"tls-ca-cert-file {certificates.ca}", "tls-auth-clients no", f"requirepass {PASSWORD}",
    ]).start()
    yield server
    server.stop()


@pytest.fixture
def node(tls_server: Server, certificates: Certificates, tmp_path: Path) -> Iterator[Stack]:
    sim = Simulator(port=0, contracts=40, seed=5).start()
    url = f"rediss://:{PASSWORD}@127.0.0.1:{tls_server.port}/0"
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOKENWATCH_")}
    env.update({
        "TOKENWATCH_REDIS_URL": url,
        "TOKENWATCH_REDIS_CA_CERT": str(certificates.ca),
        "TOKENWATCH_DATABASE_URL": f"sqlite:///{tmp_path / 'tokens.db'}",
        "TOKENWATCH_DATA_DIR": str(tmp_path / "data"),
        "TOKENWATCH_KUCOIN_URL": sim.url,
        "TOKENWATCH_HTTP_RETRIES": "1",
        "PYTHONPATH": str(ROOT),
    })
    client = make_redis(RedisConfig(url, ca_cert=str(certificates.ca)))
    wait_until(client.ping, 10, "the TLS server")
    stack = Stack(env=env, workdir=tmp_path, redis=client)
    yield stack
    for process in stack.processes:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)
    client.close()
    sim.stop()


def test_syncs_through_a_worker_over_tls_with_a_password(node: Stack, tls_server: Server) -> None:
    # Nothing answers in plain text: every byte the worker and the CLI exchange with Redis went over TLS.
    with pytest.raises(redis.ConnectionError):
        redis.Redis(port=tls_server.port, password=PASSWORD, socket_timeout=2).ping()
    node.start_worker()
    assert node.sync("--timeout", "30")["status"] == "baseline"
    assert node.sync("--timeout", "30")["status"] == "ok"
    revision = node.query("SELECT revision FROM registry_state")[0][0]
    assert int(node.redis.get(keys.VERSION) or -1) == revision == 2
    check_invariants(node.db_path, node.redis)
    status = node.tokenwatch("status", "--json")
    assert status.returncode == 0, status.stderr
    worker_log = (node.workdir / "worker.log").read_text(errors="replace")
    assert "transport:   rediss://:**@127.0.0.1" in worker_log  # Celery's banner names the broker, masked
    assert PASSWORD not in worker_log + status.stdout + status.stderr


def test_a_server_the_given_ca_did_not_sign_is_refused_in_one_line_without_the_password(
    node: Stack, certificates: Certificates,
) -> None:
    assert node.sync("--inline")["status"] == "baseline"  # a registry for status to show
    node.env["TOKENWATCH_REDIS_CA_CERT"] = str(certificates.other_ca)
    status = node.tokenwatch("status")
    assert "Redis unreachable at rediss://***@127.0.0.1" in status.stdout, status.stdout + status.stderr
    sync = node.tokenwatch("sync", "--timeout", "10")
    assert sync.returncode == 1
    assert "broker unreachable" in sync.stdout, sync.stdout + sync.stderr
    for output in (status, sync):
        assert PASSWORD not in output.stdout + output.stderr
        assert "Traceback" not in output.stderr
