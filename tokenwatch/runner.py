"""`tokenwatch run`: Redis (embedded if needed), a worker on all queues, beat and Flower, supervised and stopped
together."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from functools import partial
from types import FrameType
from wsgiref.simple_server import WSGIServer

import redis
from sqlalchemy.engine import make_url

from tokenwatch import lifeline, metrics, nodes, preflight, process
from tokenwatch.db.engine import upgrade_registry
from tokenwatch.db.queries import load_head
from tokenwatch.embedded import EmbeddedRedis
from tokenwatch.errors import ConfigError, RunRefusedError, one_line
from tokenwatch.settings import ENV_PREFIX, Settings, redact_url
from tokenwatch.supervise import Supervisor

log = logging.getLogger("tokenwatch.run")

LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})
STOP_GRACE_S = 7.0  # children get this long after SIGTERM; everything is gone well within 10 s
JOIN_WAIT_S = 10.0  # a Redis started beside the run (compose, systemd) may need a moment


def _celery(*args: str) -> list[str]:
    return [sys.executable, "-m", "celery", "-A", "tokenwatch.workers.app", *args]


def commands(settings: Settings) -> dict[str, list[str]]:
    """The child processes of `tokenwatch run`, by name."""
    os.makedirs(settings.data_dir, exist_ok=True)
    flower = _celery(
        "flower", f"--address={settings.flower_address}", f"--port={settings.flower_port}",
        "--max_tasks=10000", "--persistent=False",
    )
    # Basic auth reaches Flower through FLOWER_BASIC_AUTH (see Runner.run), never argv, which `ps` shows.
    if not settings.flower_basic_auth and settings.flower_address not in LOOPBACK:
        raise ConfigError(
            f"Flower would listen on {settings.flower_address} without a password: set TOKENWATCH_FLOWER_BASIC_AUTH"
        )
    return {
        # One process consumes both queues: the db queue must have a single writer.
        "worker": _celery("worker", "-Q", "fetch,db", "-c", "1", "-n", f"tokenwatch@{settings.node_name}", "-E",
                          "--loglevel=INFO", "--without-mingle", "--without-gossip"),
        # Every node runs a beat; the schedule's lease in Redis lets one schedule (celeryconfig, workers/beat.py).
        "beat": _celery("beat", "--loglevel=INFO"),
        "flower": flower,
    }


class Runner:
    """Checks what it needs, starts the children, restarts one that dies, and stops everything it started."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.supervisor = Supervisor()
        self.embedded: EmbeddedRedis | None = None
        self.metrics_server: WSGIServer | None = None
        self.node: nodes.Node | None = None
        self.redis_lost = False
        self.stopping = False

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        log.info("received %s, stopping", signal.Signals(signum).name)
        self.stopping = True

    def run(self) -> int:
        """Run until SIGINT/SIGTERM, or until a child keeps dying; returns the exit status."""
        signal.signal(signal.SIGINT, self._on_signal)
        signal.signal(signal.SIGTERM, self._on_signal)
        # Nothing is started, and the registry not touched, until the settings are sound and the folder, the
        # registry and the ports are ours.
        argvs = commands(self.settings)
        claim = preflight.claim(self.settings)
        try:
            preflight.check_ports(self.settings)
            self._start(claim, argvs)
            renewed = time.monotonic()
            while not self.stopping:
                if self.supervisor.check():
                    claim.note_children(self.supervisor.pids())
                if time.monotonic() - renewed >= nodes.RENEW_S:
                    self._announce()
                    renewed = time.monotonic()
                time.sleep(0.2)
            return 0
        except RunRefusedError as exc:
            if not self.supervisor.children:
                raise  # refused before anything started: the CLI prints the line
            log.error("%s; stopping everything", exc)
            return 1
        finally:
            self.stop()
            claim.release()

    def _start(self, claim: preflight.Claim, argvs: dict[str, list[str]]) -> None:
        env = dict(os.environ)
        if self.settings.redis_url is None:
            self.embedded = EmbeddedRedis(self.settings.embedded_socket(), self.settings.data_dir)
            self.embedded.check_free()
        if self.settings.redis_url is not None:
            # Before the registry is touched: a node that may not join this Redis must not create one either.
            self._check_join(nodes.Node.this(self.settings.node_name, "", _backend(self.settings.database_url)))
        # Before any worker starts: the registry created, or upgraded in place (under its write lock).
        upgrade_registry(self.settings.database_url)
        if (embedded := self.embedded) is not None:
            self.supervisor.add("embedded Redis", lambda: _started(embedded.start()), hint=f"see {embedded.log_file()}")
            env[ENV_PREFIX + "REDIS_URL"] = embedded.url
        log.info("using Redis at %s", redact_url(env.get(ENV_PREFIX + "REDIS_URL")))
        self._join()
        if self.settings.flower_basic_auth:
            env["FLOWER_BASIC_AUTH"] = self.settings.flower_basic_auth
        # Only the worker writes multiprocess metric files (tokenwatch/metrics.py); Flower keeps its own.
        env.pop(metrics.MULTIPROC_ENV, None)
        multiproc_dir = metrics.prepare_multiproc_dir(self.settings.data_dir)
        worker_env = {**env, metrics.MULTIPROC_ENV: multiproc_dir}
        for name, argv in argvs.items():
            self.supervisor.add(name, partial(_spawn, argv, worker_env if name == "worker" else env))
        claim.note_children(self.supervisor.pids())
        self.metrics_server = metrics.serve(self.settings, process.current(), multiproc_dir)
        log.info("worker, beat and Flower started; Flower on http://%s:%d",
                 self.settings.flower_address, self.settings.flower_port)
        self._kick_first_sync(env)

    def _redis(self) -> redis.Redis:
        return process.current().redis(self.settings.redis_config())

    def _join(self) -> None:
        """Join the nodes on this Redis as this registry's node, or refuse (tokenwatch.nodes)."""
        engine = process.current().engine(self.settings.database_url)
        node = nodes.Node.this(self.settings.node_name, load_head(engine).registry_id or "",
                               _backend(self.settings.database_url))
        self._with_redis(lambda client: nodes.join(client, node))
        self.node = node

    def _check_join(self, node: nodes.Node) -> None:
        self._with_redis(lambda client: nodes.check_join(client, node))

    def _with_redis(self, action: Callable[[redis.Redis], None]) -> None:
        """action on this run's Redis, waiting up to JOIN_WAIT_S for one that is not up yet."""
        deadline = time.monotonic() + JOIN_WAIT_S
        while True:
            try:
                action(self._redis())
                return
            except redis.RedisError as exc:
                if time.monotonic() > deadline:
                    raise RunRefusedError(
                        f"Redis at {redact_url(self.settings.effective_redis_url())} unreachable: {one_line(exc)}"
                    ) from None
                time.sleep(0.5)

    def _announce(self) -> None:
        if self.node is None:
            return
        try:
            nodes.announce(self._redis(), self.node)
            self.redis_lost = False
        except redis.RedisError as exc:
            if not self.redis_lost:  # once per outage: the workers say the rest
                log.warning("cannot announce this node: Redis unreachable (%s)", one_line(exc))
                self.redis_lost = True

    def _kick_first_sync(self, env: dict[str, str]) -> None:
        # Beat's first tick comes one interval after start; a newcomer should see the registry fill now.
        subprocess.Popen(lifeline.wrap(_celery("call", "tokenwatch.sync")), env=env, stdout=subprocess.DEVNULL,
                         start_new_session=True)

    def stop(self) -> None:
        """SIGTERM every child, wait, SIGKILL stragglers; the embedded Redis last, once the others are gone."""
        if self.metrics_server is not None:
            self.metrics_server.shutdown()
            self.metrics_server.server_close()
            self.metrics_server = None
        if self.node is not None:
            with contextlib.suppress(redis.RedisError):
                nodes.leave(self._redis(), self.node)
            self.node = None
        self.supervisor.stop(STOP_GRACE_S, last="embedded Redis")
        if self.embedded is not None:
            self.embedded.remove_stale_socket()


def _backend(database_url: str) -> str:
    """The registry's database dialect: sqlite or postgresql."""
    return make_url(database_url).get_backend_name()


def _spawn(argv: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    # Own process group: a Ctrl-C reaches them through us, in order, not all at once. The lifeline takes them
    # down with us if we are killed.
    return subprocess.Popen(lifeline.wrap(argv), env=env, start_new_session=True)


def _started(server: EmbeddedRedis) -> subprocess.Popen[bytes]:
    assert server.process is not None  # start() returned: the server answers
    return server.process
