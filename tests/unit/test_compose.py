"""docker-compose.yml and docker/Dockerfile: checked by `docker compose config` where it can run, and by structure.

The structural checks read the YAML with PyYAML and skip, saying so, where it is not installed.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import tomllib
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from tokenwatch.settings import Settings
from tokenwatch.tasks.names import ROUTES, Queue

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "docker" / "Dockerfile"
SERVICES = {"redis", "fetch", "db", "beat", "flower"}
APP_SERVICES = SERVICES - {"redis"}
WORKERS = {"fetch": Queue.FETCH.value, "db": Queue.DB.value}
EXPECTED_ENV = {
    "TOKENWATCH_REDIS_URL": "redis://redis:6379/0",
    "TOKENWATCH_DATABASE_URL": "sqlite:////data/tokens.db",
    "TOKENWATCH_DATA_DIR": "/data",
}
FLOWER_PORT = 5555


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    yaml = pytest.importorskip("yaml", reason="PyYAML is not installed: the compose file's structure is unchecked")
    loaded: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return loaded


def service(compose: dict[str, Any], name: str) -> dict[str, Any]:
    found: dict[str, Any] = compose["services"][name]
    return found


def option(argv: list[str], *names: str) -> str | None:
    """The value of a command-line option, given as `-c 1`, `--concurrency 1` or `--concurrency=1`."""
    for i, arg in enumerate(argv):
        for name in names:
            if arg == name and i + 1 < len(argv):
                return argv[i + 1]
            if arg.startswith(name + "="):
                return arg.split("=", 1)[1]
    return None


def replicas(spec: dict[str, Any]) -> int:
    """How many containers compose starts for the service by default."""
    return int((spec.get("deploy") or {}).get("replicas", spec.get("scale", 1)))


# ---- docker compose itself ------------------------------------------------------------------------------------

def _compose_cli() -> list[str]:
    docker = shutil.which("docker")
    if docker is None:
        pytest.skip("the docker binary is not installed: `docker compose config` not run")
    probe = subprocess.run([docker, "compose", "version"], capture_output=True, text=True, check=False)
    if probe.returncode != 0:
        said = (probe.stderr or probe.stdout).strip().splitlines()
        pytest.skip(f"the docker compose plugin is not installed ({said[0] if said else probe.returncode})")
    return [docker, "compose", "-f", str(COMPOSE)]


def test_docker_compose_accepts_the_file() -> None:
    cli = _compose_cli()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TOKENWATCH_", "COMPOSE_"))}
    result = subprocess.run([*cli, "config", "-q"], capture_output=True, text=True, check=False, cwd=ROOT,
                            env={**env, "TOKENWATCH_FLOWER_BASIC_AUTH": "admin:secret"})
    assert result.returncode == 0, result.stderr
    missing = subprocess.run([*cli, "config", "-q"], capture_output=True, text=True, check=False, env=env, cwd=ROOT)
    assert missing.returncode != 0
    assert "TOKENWATCH_FLOWER_BASIC_AUTH" in missing.stderr


# ---- structure ------------------------------------------------------------------------------------------------

def test_the_five_services_and_the_two_volumes(compose: dict[str, Any]) -> None:
    assert set(compose["services"]) == SERVICES
    assert set(compose["volumes"]) == {"data", "redis-data"}


def test_every_service_has_a_health_check(compose: dict[str, Any]) -> None:
    for name in SERVICES:
        check = service(compose, name).get("healthcheck")
        assert check, name
        assert not check.get("disable"), name
        assert check["test"][0] in ("CMD", "CMD-SHELL"), name
        assert len(check["test"]) > 1, name


def test_redis_persists_to_a_volume_with_append_only(compose: dict[str, Any]) -> None:
    redis = service(compose, "redis")
    assert option(redis["command"], "--appendonly") == "yes"
    assert option(redis["command"], "--appendfsync") in ("everysec", "always")
    assert "redis-data:/data" in redis["volumes"]
    assert "redis-cli ping" in " ".join(redis["healthcheck"]["test"])
    assert "ports" not in redis  # the broker is reachable from the compose network only


def test_the_workers_consume_every_routed_queue_with_the_right_concurrency(compose: dict[str, Any]) -> None:
    consumed: set[str] = set()
    for name, queue in WORKERS.items():
        argv = service(compose, name)["command"]
        assert argv[:4] == ["celery", "-A", "tokenwatch.workers.app", "worker"], name
        assert option(argv, "-Q", "--queues") == queue, name
        assert "-E" in argv or "--task-events" in argv, f"{name}: Flower needs task events"
        consumed.add(queue)
    assert {route["queue"] for route in ROUTES.values()} <= consumed
    assert option(service(compose, "fetch")["command"], "-c", "--concurrency") == "2"


def test_exactly_one_single_process_db_worker_and_one_beat(compose: dict[str, Any]) -> None:
    db = service(compose, "db")
    assert option(db["command"], "-c", "--concurrency") == "1"
    assert option(db["command"], "-P", "--pool") in (None, "prefork", "solo")
    assert replicas(db) == 1
    beat = service(compose, "beat")
    assert beat["command"][:4] == ["celery", "-A", "tokenwatch.workers.app", "beat"]
    assert replicas(beat) == 1
    others = [n for n in APP_SERVICES - {"beat"} if "beat" in service(compose, n)["command"] or
              "-B" in service(compose, n)["command"]]
    assert others == []  # no worker embeds a second beat


def test_worker_health_checks_ping_their_own_node(compose: dict[str, Any]) -> None:
    for name in WORKERS:
        spec = service(compose, name)
        node = option(spec["command"], "-n", "--hostname")
        assert node == f"{name}@%h", name
        check = " ".join(spec["healthcheck"]["test"][1:])
        assert "inspect ping" in check, name
        # %h is the container's hostname; $$ is compose's escape for a literal $ (the shell expands it).
        assert f"-d {name}@$${{HOSTNAME}}" in check, name


def test_flower_is_published_on_loopback_only_and_needs_a_password(compose: dict[str, Any]) -> None:
    flower = service(compose, "flower")
    argv = flower["command"]
    assert argv[:4] == ["celery", "-A", "tokenwatch.workers.app", "flower"]
    assert option(argv, "--port") == str(FLOWER_PORT)
    for port in flower["ports"]:
        if isinstance(port, dict):
            assert port["host_ip"] == "127.0.0.1", port
            assert int(port["target"]) == FLOWER_PORT
        else:
            parts = str(port).split("/", 1)[0].rsplit(":", 2)  # [HOST_IP:][PUBLISHED:]TARGET[/PROTOCOL]
            assert len(parts) == 3 and parts[0] == "127.0.0.1", f"{port} is published on every interface"
            assert int(parts[2]) == FLOWER_PORT
    assert flower["ports"]
    for name in SERVICES - {"flower"}:
        assert "ports" not in service(compose, name), name
    auth = flower["environment"]["FLOWER_BASIC_AUTH"]
    # ${VAR:?message}: compose refuses to start without it.
    assert re.fullmatch(r"\$\{TOKENWATCH_FLOWER_BASIC_AUTH:\?[^}]+\}", auth), auth
    assert "FLOWER_UNAUTHENTICATED_API" not in flower["environment"]
    assert "/healthcheck" in " ".join(flower["healthcheck"]["test"])


def test_the_app_services_share_the_settings_and_the_data_volume(compose: dict[str, Any]) -> None:
    for name in APP_SERVICES:
        spec = service(compose, name)
        env = spec["environment"]
        for key, value in EXPECTED_ENV.items():
            assert env[key] == value, (name, key)
        assert spec["build"] == {"context": ".", "dockerfile": "docker/Dockerfile"}, name
        assert spec["depends_on"]["redis"]["condition"] == "service_healthy", name
    for name in ("fetch", "db", "beat"):
        assert "data:/data" in service(compose, name)["volumes"], name
    # The values are ones tokenwatch's own settings accept.
    settings = Settings(redis_url=EXPECTED_ENV["TOKENWATCH_REDIS_URL"],
                        database_url=EXPECTED_ENV["TOKENWATCH_DATABASE_URL"], data_dir="/data")
    assert settings.effective_redis_url() == "redis://redis:6379/0"


def test_the_health_check_scripts_are_valid_python(compose: dict[str, Any]) -> None:
    test = service(compose, "flower")["healthcheck"]["test"]
    assert test[:3] == ["CMD", "python", "-c"]
    compile(test[3], "flower healthcheck", "exec")


def test_the_beat_health_check_is_a_module_of_the_package(compose: dict[str, Any]) -> None:
    test = service(compose, "beat")["healthcheck"]["test"]
    assert test[:3] == ["CMD", "python", "-m"]
    assert importlib.util.find_spec(test[3]) is not None, test[3]


# ---- the image ------------------------------------------------------------------------------------------------

def test_the_dockerfile_installs_every_package_the_project_ships() -> None:
    text = DOCKERFILE.read_text()
    assert re.search(r"^FROM python:3\.11-slim$", text, re.MULTILINE)
    assert re.search(r"^RUN pip install \.", text, re.MULTILINE)
    assert re.search(r"^USER (?!root)\S+$", text, re.MULTILINE)
    copied = {source for line in re.findall(r"^COPY (.+)$", text, re.MULTILINE) for source in line.split()[:-1]}
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert project["tool"]["setuptools"]["packages"]["find"]["include"] == ["tokenwatch", "tokenwatch.*"]
    # tokenwatch.db and its siblings are links inside tokenwatch/ to the folders at the top: the image needs both.
    linked = {os.path.relpath(link.resolve(), ROOT) for link in (ROOT / "tokenwatch").iterdir() if link.is_symlink()}
    assert linked >= {"db", "cache", "domain", "fetch", "tasks", "workers", "celeryconfig.py"}
    assert linked | {"tokenwatch", "pyproject.toml", "README.md"} <= copied


# ---- docker-compose.nodes.yml: PostgreSQL and two nodes ---------------------------------------------------------

NODES_COMPOSE = ROOT / "docker-compose.nodes.yml"


@pytest.fixture(scope="module")
def nodes_compose() -> dict[str, Any]:
    yaml = pytest.importorskip("yaml", reason="PyYAML is not installed: the compose file's structure is unchecked")
    loaded: dict[str, Any] = yaml.safe_load(NODES_COMPOSE.read_text())
    return loaded


def test_docker_compose_accepts_the_nodes_file() -> None:
    cli = _compose_cli()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TOKENWATCH_", "COMPOSE_"))}
    result = subprocess.run([cli[0], "compose", "-f", str(NODES_COMPOSE), "config", "-q"], capture_output=True,
                            text=True, check=False, cwd=ROOT, env=env)
    assert result.returncode == 0, result.stderr


def test_two_nodes_share_postgres_and_redis_and_nothing_else(nodes_compose: dict[str, Any]) -> None:
    services = nodes_compose["services"]
    nodes = {name: spec for name, spec in services.items() if spec.get("command") == ["tokenwatch", "run"]}
    assert len(nodes) >= 2
    assert set(services) - set(nodes) == {"postgres", "redis"}
    names = set()
    for name, spec in nodes.items():
        # Compose's ${VAR:-default}, with every variable unset: the file must work as it stands.
        env = {key: re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", str(value)) for key, value in spec["environment"].items()}
        settings = Settings(redis_url=env["TOKENWATCH_REDIS_URL"], database_url=env["TOKENWATCH_DATABASE_URL"],
                            node_name=env["TOKENWATCH_NODE_NAME"])
        assert settings.database_url.startswith("postgresql+psycopg://"), name
        assert urlsplit(env["TOKENWATCH_DATABASE_URL"]).hostname == "postgres", name
        assert urlsplit(env["TOKENWATCH_REDIS_URL"]).hostname == "redis", name
        names.add(settings.node_name)
        assert spec["depends_on"]["postgres"]["condition"] == "service_healthy", name
        assert spec["depends_on"]["redis"]["condition"] == "service_healthy", name
        assert spec["healthcheck"]["test"][:3] == ["CMD", "python", "-m"], name
        assert "ports" not in spec, name
        own = [volume.split(":")[0] for volume in spec["volumes"]]
        assert own == [f"{name}-data"], name  # each node its own data folder: run.lock is per node
    assert len(names) == len(nodes), "every node needs its own TOKENWATCH_NODE_NAME"
    for store in ("postgres", "redis"):
        assert "ports" not in services[store], store
        assert services[store]["healthcheck"]["test"][0] in ("CMD", "CMD-SHELL"), store
    assert "--requirepass" in services["redis"]["command"]  # Redis reached over a network wants a password
    assert "--appendonly" in services["redis"]["command"]
