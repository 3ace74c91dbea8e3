"""`tokenwatch run`: Redis (embedded if needed), a worker on all queues, beat and Flower, stopped together."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from types import FrameType
from wsgiref.simple_server import WSGIServer

from tokenwatch import metrics, process
from tokenwatch.db.engine import upgrade_registry
from tokenwatch.embedded import EmbeddedRedis
from tokenwatch.errors import ConfigError
from tokenwatch.settings import ENV_PREFIX, Settings, redact_url

log = logging.getLogger(__name__)

LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})
STOP_GRACE_S = 7.0  # children get this long after SIGTERM; everything is gone well within 10 s


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
        "worker": _celery("worker", "-Q", "fetch,db", "-c", "1", "-n", "tokenwatch@%h", "-E",
                          "--loglevel=INFO", "--without-mingle", "--without-gossip"),
        "beat": _celery("beat", "--loglevel=INFO",
                        "-s", os.path.join(settings.data_dir, "celerybeat-schedule")),
        "flower": flower,
    }


class Runner:
    """Starts the children, watches them, and stops everything it started on a signal or a death."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.redis: EmbeddedRedis | None = None
        self.children: dict[str, subprocess.Popen[bytes]] = {}
        self.metrics_server: WSGIServer | None = None
        self.stopping = False

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        log.info("received %s, stopping", signal.Signals(signum).name)
        self.stopping = True

    def run(self) -> int:
        """Run until SIGINT/SIGTERM or a child's death; returns the exit status."""
        signal.signal(signal.SIGINT, self._on_signal)
        signal.signal(signal.SIGTERM, self._on_signal)
        env = dict(os.environ)
        try:
            # Before any worker starts: the registry created, or upgraded in place (under its write lock).
            upgrade_registry(self.settings.database_url)
            if self.settings.redis_url is None:
                self.redis = EmbeddedRedis(self.settings.embedded_socket(), self.settings.data_dir).start()
                env[ENV_PREFIX + "REDIS_URL"] = self.redis.url
            log.info("using Redis at %s", redact_url(env.get(ENV_PREFIX + "REDIS_URL")))
            if self.settings.flower_basic_auth:
                env["FLOWER_BASIC_AUTH"] = self.settings.flower_basic_auth
            # Only the worker writes multiprocess metric files (tokenwatch/metrics.py); Flower keeps its own.
            env.pop(metrics.MULTIPROC_ENV, None)
            multiproc_dir = metrics.prepare_multiproc_dir(self.settings.data_dir)
            worker_env = {**env, metrics.MULTIPROC_ENV: multiproc_dir}
            for name, argv in commands(self.settings).items():
                # Own process group: a Ctrl-C reaches them through us, in order, not all at once.
                self.children[name] = subprocess.Popen(argv, env=worker_env if name == "worker" else env,
                                                       start_new_session=True)
            self.metrics_server = metrics.serve(self.settings, process.current(), multiproc_dir)
            log.info("worker, beat and Flower started; Flower on http://%s:%d",
                     self.settings.flower_address, self.settings.flower_port)
            self._kick_first_sync(env)
            while not self.stopping:
                for name, child in self.children.items():
                    if child.poll() is not None:
                        log.error("%s exited with status %s; stopping everything", name, child.returncode)
                        self.stopping = True
                        return_code = 1
                        break
                else:
                    time.sleep(0.2)
                    continue
                break
            else:
                return_code = 0
            return return_code
        finally:
            self.stop()

    def _kick_first_sync(self, env: dict[str, str]) -> None:
        # Beat's first tick comes one interval after start; a newcomer should see the registry fill now.
        subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "tokenwatch.workers.app", "call", "tokenwatch.sync"],
            env=env, stdout=subprocess.DEVNULL, start_new_session=True,
        )

    def stop(self) -> None:
        """SIGTERM every child, wait, SIGKILL stragglers, then stop the embedded Redis."""
        if self.metrics_server is not None:
            self.metrics_server.shutdown()
            self.metrics_server.server_close()
            self.metrics_server = None
        for child in self.children.values():
            if child.poll() is None:
                child.terminate()
        deadline = time.monotonic() + STOP_GRACE_S
        for name, child in self.children.items():
            try:
                child.wait(max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                log.warning("%s did not stop in time; killing it", name)
                os.killpg(child.pid, signal.SIGKILL)
                child.wait()
        self.children.clear()
        if self.redis is not None:
            self.redis.stop(timeout_s=2.0)
            self.redis = None
